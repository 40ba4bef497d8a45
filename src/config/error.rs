//! Configuration errors: each says which key, where it was set, and why.

use std::fmt;
use std::path::PathBuf;

/// Where a setting came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file at this path.
    File(PathBuf),
    /// A flag or `BAKER_*` variable.
    CommandLine,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "config file {}", path.display()),
            Origin::CommandLine => f.write_str("command line or environment"),
        }
    }
}

/// A configuration error; says which key, where, and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file cannot be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or has an unknown or mistyped key.
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    /// A value is out of range or inconsistent.
    #[error("{origin}: key `{key}`: {reason}")]
    Invalid {
        origin: Origin,
        key: String,
        reason: String,
    },
}
