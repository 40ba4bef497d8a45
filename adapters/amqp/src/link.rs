//! One connection to a broker with a confirm channel, re-established on
//! demand; further channels (the ingress's) open on the same connection.
//!
//! lapin reports a lost connection as errors on its channel; whoever finds
//! the channel unusable asks for a new one, and the first such caller
//! reconnects while the others wait for its result.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use baker_adapter_api::BrokerAccess;
use lapin::options::ConfirmSelectOptions;
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties};

use crate::AmqpError;

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel to one broker with publisher confirms on.
pub struct Link {
    /// Connection name shown by the broker (`rabbitmqctl list_connections name`).
    name: &'static str,
    url: String,
    current: ArcSwapOption<(Connection, Channel)>,
    reconnecting: tokio::sync::Mutex<()>,
    was_connected: AtomicBool,
    /// Credentials from the configuration, over the URL's.
    access: Option<BrokerAccess>,
    /// The last connection error, while it says the broker refuses this
    /// client (credentials, TLS identity).
    refused: std::sync::Mutex<Option<String>>,
}

impl Link {
    /// A link to `url`, not yet connected; `access` holds the credentials
    /// the configuration gives for its broker.
    pub fn new(url: &str, name: &'static str, access: Option<BrokerAccess>) -> Self {
        Self {
            name,
            access,
            url: url.to_owned(),
            current: ArcSwapOption::empty(),
            reconnecting: tokio::sync::Mutex::new(()),
            was_connected: AtomicBool::new(false),
            refused: std::sync::Mutex::default(),
        }
    }

    /// The broker URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the link has ever been connected (and so should be kept up).
    pub fn was_connected(&self) -> bool {
        self.was_connected.load(Ordering::Relaxed)
    }

    /// Why the broker refuses this sidecar, while it does.
    pub fn refused(&self) -> Option<String> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Whether the channel is up.
    pub fn connected(&self) -> bool {
        self.current
            .load()
            .as_ref()
            .is_some_and(|c| c.1.status().connected())
    }

    /// The channel, if it is up; never connects.
    pub fn usable(&self) -> Option<Channel> {
        let current = self.current.load();
        let (_, channel) = current.as_deref()?;
        channel.status().connected().then(|| channel.clone())
    }

    /// A usable channel, connecting first if needed.
    pub async fn channel(&self) -> Result<Channel, AmqpError> {
        if let Some(channel) = self.usable() {
            return Ok(channel);
        }
        let _one_at_a_time = self.reconnecting.lock().await;
        if let Some(channel) = self.usable() {
            return Ok(channel);
        }
        let uri = self.uri()?;
        let tls = self.tls()?;
        let runtime = lapin::runtime::default_runtime().map_err(|source| AmqpError::Connect {
            broker: redact(&self.url),
            source,
        })?;
        let connect = async {
            let properties = ConnectionProperties::default().with_connection_name(self.name.into());
            let connection =
                Connection::connect_uri_with_config(uri, properties, tls, runtime).await?;
            let channel = connection.create_channel().await?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await?;
            Ok::<_, lapin::Error>((connection, channel))
        };
        let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect)
            .await
            .map_err(|_| AmqpError::ConnectTimeout {
                broker: redact(&self.url),
            })
            .and_then(|result| {
                result.map_err(|source| AmqpError::Connect {
                    broker: redact(&self.url),
                    source,
                })
            });
        let refusal = connected.as_ref().err().and_then(|error| {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            baker_adapter_api::is_refusal(&text).then_some(text)
        });
        *self.refused.lock().unwrap_or_else(|e| e.into_inner()) = refusal;
        let (connection, channel) = connected?;
        tracing::info!(broker = %redact(&self.url), "connected to AMQP broker");
        self.current
            .store(Some(Arc::new((connection, channel.clone()))));
        self.was_connected.store(true, Ordering::Relaxed);
        Ok(channel)
    }

    /// TLS for the connection (used when the URI is `amqps://`): the
    /// configuration's CA file (else the system's roots) and client
    /// certificate.
    fn tls(&self) -> Result<OwnedTLSConfig, AmqpError> {
        let Some(files) = self.access.as_ref().and_then(|a| a.tls.as_ref()) else {
            return Ok(OwnedTLSConfig::default());
        };
        baker_adapter_api::tls::install_crypto_provider();
        let read = |path: &std::path::Path| {
            std::fs::read(path).map_err(|e| AmqpError::Url {
                broker: redact(&self.url),
                reason: format!("{}: {e}", path.display()),
            })
        };
        let cert_chain = match &files.ca_file {
            Some(path) => Some(String::from_utf8_lossy(&read(path)?).into_owned()),
            None => None,
        };
        let identity = match (&files.cert_file, &files.key_file) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read(cert)?,
                key: read(key)?,
            }),
            _ => None,
        };
        Ok(OwnedTLSConfig {
            identity,
            cert_chain,
        })
    }

    /// The URL to connect to, with the configuration's credentials (and
    /// `amqps` when the configuration asks for TLS).
    fn uri(&self) -> Result<AMQPUri, AmqpError> {
        let mut uri: AMQPUri = self.url.parse().map_err(|reason| AmqpError::Url {
            broker: redact(&self.url),
            reason,
        })?;
        if self.access.as_ref().is_some_and(|a| a.tls.is_some()) {
            uri.scheme = lapin::uri::AMQPScheme::AMQPS;
        }
        if let Some(access) = &self.access {
            if let Some(username) = &access.username {
                uri.authority.userinfo.username.clone_from(username);
                uri.authority.userinfo.password = access
                    .password
                    .as_ref()
                    .map_or_else(String::new, |p| p.expose().to_owned());
            }
        }
        Ok(uri)
    }

    /// A further channel on the link's connection (for consuming), connecting
    /// first if needed.
    pub async fn open_channel(&self) -> Result<Channel, AmqpError> {
        self.channel().await?;
        let current = self.current.load_full().ok_or(AmqpError::ConnectionLost)?;
        current
            .0
            .create_channel()
            .await
            .map_err(|source| AmqpError::Channel {
                broker: redact(&self.url),
                source,
            })
    }

    /// Forgets the channel after an error, so the next caller reconnects;
    /// unless the current channel is up, in which case the error came from an
    /// older one (a confirm that failed with the connection it was sent on)
    /// and the new channel must not be torn down for it.
    pub fn reset(&self) {
        if self.usable().is_none() {
            self.current.store(None);
        }
    }

    /// Gives up on the current connection even though lapin still thinks it
    /// is up (the broker stopped answering without closing it), so the next
    /// caller connects anew.
    pub fn abandon(&self) {
        if let Some(current) = self.current.swap(None) {
            tokio::spawn(async move {
                let _ = current.0.close(320, "unresponsive".into()).await;
            });
        }
    }
}

pub use baker_adapter_api::redact_url as redact;
