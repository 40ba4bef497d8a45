//! HTTP client of the embedded directory.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use baker_adapter_api::Secret;
use reqwest::header::{HeaderMap, HeaderValue};

use super::{Catalog, Changes, ClientError, Directory, InstanceRecord};

/// Talks to one directory over HTTP/JSON.
#[derive(Clone, Debug)]
pub struct HttpDirectory {
    base: String,
    http: reqwest::Client,
    /// Set once the directory turned out to be of a release without
    /// `/v1/watch`: watches read the whole catalog then.
    legacy: Arc<AtomicBool>,
}

/// Who a client is to the directory: its token (if the directory needs
/// one) and the owner id its registrations carry.
#[derive(Clone, Debug, Default)]
pub struct Identity {
    /// `Authorization: Bearer` token.
    pub token: Option<Secret>,
    /// The agent's owner id (see [`super::owner`]).
    pub owner: String,
}

/// Timeout of the short calls (register, renew, deregister, list).
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

impl HttpDirectory {
    /// A client of the directory at `base` (e.g. `http://127.0.0.1:7070`),
    /// sending `identity` with every request.
    pub fn new(base: &str, identity: &Identity) -> Self {
        let mut headers = HeaderMap::new();
        if let Some(token) = &identity.token {
            if let Ok(mut bearer) = HeaderValue::from_str(&format!("Bearer {}", token.expose())) {
                bearer.set_sensitive(true);
                headers.insert(reqwest::header::AUTHORIZATION, bearer);
            }
        }
        if let Ok(owner) = HeaderValue::from_str(&identity.owner) {
            headers.insert(super::server::OWNER_HEADER, owner);
        }
        Self {
            base: base.trim_end_matches('/').to_owned(),
            http: crate::http_tls::client()
                .connect_timeout(Duration::from_secs(2))
                .default_headers(headers)
                .build()
                .unwrap_or_default(),
            legacy: Arc::default(),
        }
    }

    fn unreachable(&self, source: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            url: self.base.clone(),
            source: crate::http_tls::describe(&source).into(),
        }
    }

    async fn check(&self, response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = response.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(ClientError::LeaseUnknown);
        }
        if status == reqwest::StatusCode::CONFLICT {
            let body = response.text().await.unwrap_or_default();
            return Err(ClientError::Owned(body));
        }
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            return Err(ClientError::Refused {
                status: status.as_u16(),
                body,
            });
        }
        Ok(response)
    }

    fn instance_url(&self, service: &str, id: &str) -> String {
        format!("{}/v1/services/{service}/instances/{id}", self.base)
    }
}

#[async_trait]
impl Directory for HttpDirectory {
    /// The directory's base URL.
    fn url(&self) -> &str {
        &self.base
    }

    /// Registers `record`, starting its lease.
    async fn register(&self, record: &InstanceRecord) -> Result<(), ClientError> {
        let response = self
            .http
            .put(self.instance_url(&record.service, &record.id))
            .timeout(CALL_TIMEOUT)
            .json(record)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check(response).await.map(drop)
    }

    /// Extends a lease. [`ClientError::LeaseUnknown`] means: register again.
    async fn renew(&self, record: &InstanceRecord) -> Result<(), ClientError> {
        let response = self
            .http
            .post(format!(
                "{}/renew",
                self.instance_url(&record.service, &record.id)
            ))
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check(response).await.map(drop)
    }

    /// Removes a registration.
    async fn deregister(&self, service: &str, id: &str) -> Result<(), ClientError> {
        let response = self
            .http
            .delete(self.instance_url(service, id))
            .timeout(CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        match self.check(response).await {
            Ok(_) | Err(ClientError::LeaseUnknown) => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The whole catalog; when `after` is given, waits up to `wait` for it to
    /// change from that (epoch, index).
    async fn catalog(
        &self,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Catalog, ClientError> {
        let (epoch, index) = after.unwrap_or((0, 0));
        let response = self
            .http
            .get(format!("{}/v1/catalog", self.base))
            .query(&[("epoch", epoch), ("index", index), ("wait", wait.as_secs())])
            .timeout(wait + CALL_TIMEOUT)
            .send()
            .await
            .map_err(|e| self.unreachable(e))?;
        self.check(response)
            .await?
            .json()
            .await
            .map_err(|e| self.unreachable(e))
    }

    /// What changed in `services`, from `/v1/watch`; from the whole catalog
    /// when the directory is of a release without it.
    async fn watch(
        &self,
        services: &BTreeSet<String>,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Changes, ClientError> {
        if !self.legacy.load(Ordering::Relaxed) {
            let (epoch, index) = after.unzip();
            let body = serde_json::json!({
                "services": services,
                "epoch": epoch,
                "index": index,
                "wait": wait.as_secs(),
            });
            let response = self
                .http
                .post(format!("{}/v1/watch", self.base))
                .json(&body)
                .timeout(wait + CALL_TIMEOUT)
                .send()
                .await
                .map_err(|e| self.unreachable(e))?;
            match self.check(response).await {
                Ok(response) => return response.json().await.map_err(|e| self.unreachable(e)),
                Err(ClientError::LeaseUnknown) => {
                    tracing::warn!(url = %self.base, "the directory has no /v1/watch (an older release): \
                        following its whole catalog until it is upgraded");
                    self.legacy.store(true, Ordering::Relaxed);
                }
                Err(error) => return Err(error),
            }
        }
        let catalog = self.catalog(after, wait).await?;
        Ok(Changes::full_from(catalog, services))
    }

    /// True when the directory answers its health endpoint.
    async fn ping(&self) -> bool {
        matches!(
            self.http
                .get(format!("{}/healthz", self.base))
                .timeout(Duration::from_secs(1))
                .send()
                .await,
            Ok(r) if r.status().is_success()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baker_directory_api::testing::record;

    /// A directory of a release before `/v1/watch`: only the catalog.
    async fn old_directory(catalog: Catalog) -> String {
        let app = axum::Router::new().route(
            "/v1/catalog",
            axum::routing::get(move || {
                let catalog = catalog.clone();
                async move { axum::Json(catalog) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        url
    }

    #[tokio::test]
    async fn a_directory_without_the_watch_is_followed_through_its_catalog() {
        let catalog = Catalog {
            epoch: 7,
            index: 3,
            instances: vec![record("a", "1", 5), record("b", "1", 5)],
        };
        let directory = HttpDirectory::new(&old_directory(catalog).await, &Identity::default());
        let services = BTreeSet::from(["b".to_owned()]);
        for _ in 0..2 {
            let changes = (directory.watch(&services, None, Duration::ZERO).await).unwrap();
            assert!(changes.full);
            assert_eq!((changes.epoch, changes.index), (7, 3));
            assert_eq!(changes.instances, [record("b", "1", 5)]);
        }
        assert!(directory.legacy.load(Ordering::Relaxed));
    }
}
