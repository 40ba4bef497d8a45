//! Where the directory is: the embedded directory's URL, or an engine of
//! its own (see [`DirectoryEngine`]).

use std::net::SocketAddr;

use crate::adapters::DirectoryEngine;
use crate::directory::interest::{InterestConfig, DEFAULT_IDLE};
use crate::directory::record::valid_name;

use super::{invalid, Config, ConfigError, Origin};

/// Where the directory is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectoryTarget {
    /// None configured: the local default, served here when nothing answers.
    Auto(SocketAddr),
    /// An explicit embedded directory's URL.
    Url(String),
    /// Another engine.
    Engine(DirectoryEngine),
}

impl DirectoryTarget {
    /// Parses a `--directory` URL.
    pub fn parse(url: &str) -> Result<Self, String> {
        if let Some(rest) = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
        {
            if rest.trim_end_matches('/').is_empty() {
                return Err(format!("{url:?} names no host; expected http://HOST:PORT"));
            }
            return Ok(DirectoryTarget::Url(url.trim_end_matches('/').to_owned()));
        }
        match DirectoryEngine::for_url(url) {
            Some(engine) => engine.map(DirectoryTarget::Engine),
            None => {
                let mut forms = vec!["http://HOST:PORT (embedded directory)"];
                forms.extend(DirectoryEngine::url_forms());
                Err(format!(
                    "{url:?} is not a directory URL; expected {}",
                    forms.join(" or ")
                ))
            }
        }
    }

    /// The directory's URL.
    pub fn url(&self) -> String {
        match self {
            DirectoryTarget::Auto(addr) => format!("http://{addr}"),
            DirectoryTarget::Url(url) => url.clone(),
            DirectoryTarget::Engine(engine) => engine.url(),
        }
    }
}

impl Config {
    /// The services the router follows: the file's `watch`, then the
    /// command line's; `*` for all of them.
    pub(super) fn interest(&self) -> Result<InterestConfig, ConfigError> {
        let mut config = InterestConfig::default();
        let layers = [
            (&self.file.watch, self.file_origin.clone()),
            (&self.cli.watch, Origin::CommandLine),
        ];
        for (services, origin) in layers {
            for service in services {
                if service == "*" {
                    config.all = true;
                } else if valid_name(service) {
                    config.declared.insert(service.clone());
                } else {
                    let reason = format!(
                        "{service:?} is not a service name (letters, digits, '-' and '_'), nor '*'"
                    );
                    return Err(invalid(origin, "watch", reason));
                }
            }
        }
        let (idle, origin) = self.get_or(|o| &o.watch_idle_secs, DEFAULT_IDLE.as_secs());
        if idle == 0 {
            return Err(invalid(origin, "watch_idle_secs", "must be at least 1"));
        }
        config.idle = std::time::Duration::from_secs(idle);
        Ok(config)
    }
}
