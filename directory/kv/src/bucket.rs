//! The bucket itself: opened, or created with Baker's settings when absent;
//! created again when someone deleted it; its settings read again when a
//! write is refused.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use baker_adapter_api::Backoff;
use baker_adapter_nats::async_nats::{
    self,
    connection::State,
    jetstream::{
        self,
        context::{CreateKeyValueErrorKind, GetStreamErrorKind},
        kv, ErrorCode,
    },
};

use crate::{BucketError, Inner, BUCKET_MAX_AGE, MARKER_TTL};

/// The bucket, once opened.
#[derive(Clone)]
pub(crate) struct Bucket {
    pub(crate) store: kv::Store,
    pub(crate) js: jetstream::Context,
    /// Whether writes carry a per-message TTL (the bucket allows them).
    pub(crate) ttl_headers: bool,
}

/// True when the server has per-message TTLs (nats-server 2.11+).
fn server_has_message_ttl(client: &async_nats::Client) -> bool {
    let version = client.server_info().version;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 11)
}

/// Opens the bucket, creating it when absent, retrying until it succeeds.
pub(crate) async fn open_bucket(inner: Arc<Inner>) {
    let js = jetstream::new(inner.client.clone());
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut reported = false;
    loop {
        let opened = match js.get_key_value(&inner.settings.bucket).await {
            Ok(store) => Ok(store),
            Err(_) if inner.client.connection_state() == State::Connected => {
                create_bucket(&js, &inner).await
            }
            Err(error) => Err(BucketError::nats("opening the bucket", error)),
        };
        match opened {
            Ok(store) => {
                let ttl_headers = store.stream.cached_info().config.allow_message_ttl;
                tracing::info!(url = %inner.url, bucket = %inner.settings.bucket, per_key_ttl = ttl_headers,
                    "directory bucket open");
                inner.bucket.send_replace(Some(Bucket {
                    store,
                    js,
                    ttl_headers,
                }));
                return;
            }
            Err(error) => {
                if !reported {
                    tracing::warn!(url = %inner.url, bucket = %inner.settings.bucket, %error,
                        "cannot open the directory bucket; retrying");
                    reported = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

async fn create_bucket(js: &jetstream::Context, inner: &Inner) -> Result<kv::Store, BucketError> {
    let mut config = kv::Config {
        bucket: inner.settings.bucket.clone(),
        description: "Baker directory: one key per instance, <service>.<instance>".to_owned(),
        history: 1,
        max_age: BUCKET_MAX_AGE,
        num_replicas: inner.settings.replicas,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    if server_has_message_ttl(&inner.client) {
        config.limit_markers = Some(MARKER_TTL);
    }
    match js.create_key_value(config.clone()).await {
        Err(error) if error.kind() == CreateKeyValueErrorKind::LimitMarkersNotSupported => {
            config.limit_markers = None;
            js.create_key_value(config)
                .await
                .map_err(|e| BucketError::nats("creating the bucket", e))
        }
        other => other.map_err(|e| BucketError::nats("creating the bucket", e)),
    }
}

/// Whether the bucket's stream no longer exists (someone deleted the
/// bucket), as opposed to a server that does not answer.
async fn bucket_deleted(bucket: &Bucket) -> bool {
    match bucket.js.get_stream(&bucket.store.stream_name).await {
        Ok(_) => false,
        Err(error) => matches!(error.kind(),
            GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND),
    }
}

/// Creates the bucket again if it was deleted while this process ran, so the
/// directory heals without a restart: agents write their records into the
/// new bucket at their next renewal. Routers keep their last view meanwhile.
/// Returns whether the bucket was found deleted.
pub(crate) async fn recreate_if_deleted(inner: Arc<Inner>, bucket: Bucket) -> bool {
    if !bucket_deleted(&bucket).await {
        return false;
    }
    if inner.recreating.swap(true, Ordering::AcqRel) {
        return true;
    }
    tracing::warn!(url = %inner.url, bucket = %inner.settings.bucket,
        "the directory bucket was deleted; creating it again");
    inner.bucket.send_replace(None);
    open_bucket(inner.clone()).await;
    inner.recreating.store(false, Ordering::Release);
    true
}

/// After a refused write: creates the bucket again if it was deleted, and
/// otherwise reads its settings again, in case someone re-created it with
/// others (a bucket that allows no per-key TTL refuses writes that carry one).
pub(crate) async fn heal_after_refused_write(inner: Arc<Inner>, bucket: Bucket) {
    if recreate_if_deleted(inner.clone(), bucket.clone()).await {
        return;
    }
    let mut stream = bucket.store.stream.clone();
    let Ok(info) = stream.info().await else {
        return;
    };
    let ttl_headers = info.config.allow_message_ttl;
    if ttl_headers != bucket.ttl_headers {
        tracing::warn!(url = %inner.url, bucket = %inner.settings.bucket, per_key_ttl = ttl_headers,
            "the directory bucket's settings changed; writing to match them");
        inner.bucket.send_modify(|open| {
            if let Some(open) = open {
                open.ttl_headers = ttl_headers;
            }
        });
    }
}
