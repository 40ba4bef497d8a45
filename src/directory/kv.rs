//! The directory on a JetStream key-value bucket, for deployments that
//! outgrow one embedded directory: the bucket is replicated by the NATS
//! cluster (Raft), and every router watches it.
//!
//! Each instance is one key, `<service>.<instance>`, whose value is the
//! instance record as JSON. Registering and renewing both write the record
//! again; deregistering deletes the key.
//!
//! Leases: a key that is not written again within its record's TTL is
//! expired, judged from the entry's timestamp (the server's clock) and the
//! record's `ttl_secs`, by every reader on its own. That works with every
//! server, and even when no event arrives: a key removed by the bucket's max
//! age sends watchers nothing. Where the server has per-message TTLs
//! (nats-server 2.11+), each write also carries the record's TTL, so the
//! server removes the key itself and leaves a delete marker that watchers
//! see, and a bucket created by Baker has them switched on.
//!
//! The reader keeps the bucket's live records in memory, fed by a watch of
//! the whole bucket; the watch is made again (a full reload) when it fails
//! and every [`RELOAD`] as a safety net, and the view is replaced only once
//! a reload is complete.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use baker_adapter_nats::async_nats::{
    self,
    connection::State,
    jetstream::{
        self,
        context::{CreateKeyValueErrorKind, GetStreamErrorKind},
        kv, ErrorCode,
    },
    HeaderMap,
};
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::watch;

use super::client::ClientError;
use super::record::{Catalog, InstanceRecord};
use crate::backoff::Backoff;
use crate::config::KvSettings;

/// Epoch of the catalogs read from a bucket. The bucket outlives its
/// readers, so unlike the embedded directory it does not restart empty,
/// unless someone deletes it: each re-creation is a new epoch, so that
/// routers keep the records the new bucket does not have yet for one lease,
/// as they do for a restarted embedded directory.
pub const KV_EPOCH: u64 = 1;

/// Safety net against a watch that silently stopped: the whole bucket is
/// read again this often.
pub const RELOAD: Duration = Duration::from_secs(60);

/// The bucket's own limit, collecting keys that nothing removed (servers
/// without per-message TTL). Longer than any lease's renewal period.
const BUCKET_MAX_AGE: Duration = Duration::from_secs(2 * 3600);

/// How long the server keeps the marker it leaves for a key whose TTL ran
/// out, and the marker of a deregistration.
const MARKER_TTL: Duration = Duration::from_secs(60);

/// Time between two catalogs built for a reader under a burst of changes:
/// ten times what building one took, within these bounds, so a burst costs
/// a router at most about a tenth of a core.
const MIN_REBUILD_INTERVAL: Duration = Duration::from_millis(10);
const MAX_REBUILD_INTERVAL: Duration = Duration::from_millis(500);

/// How long a first read of the catalog waits for a first connection.
const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// How long a first read of the catalog waits for the bucket to load.
const FIRST_LOAD_WAIT: Duration = Duration::from_secs(5);

/// How long a read of the bucket's history may go without an entry before
/// the bucket is checked for being empty.
const STALLED_HISTORY: Duration = Duration::from_secs(2);

/// Timeout of a write.
const CALL_TIMEOUT: Duration = Duration::from_secs(3);

/// A directory held in a JetStream key-value bucket.
#[derive(Clone)]
pub struct KvDirectory {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KvDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvDirectory")
            .field("url", &self.inner.url)
            .finish()
    }
}

struct Inner {
    settings: KvSettings,
    url: String,
    client: async_nats::Client,
    /// The bucket, once it is opened (or created).
    bucket: watch::Sender<Option<Bucket>>,
    view: Mutex<View>,
    /// The view's index, bumped on every change of the live records.
    changes: watch::Sender<u64>,
    watching: AtomicBool,
    /// Set while the bucket, found deleted, is being created again.
    recreating: AtomicBool,
    /// Creation time (ns since the epoch) of the bucket's stream at the last
    /// read: a different one means the bucket was deleted and created again,
    /// by this process or another.
    created_ns: Mutex<Option<i128>>,
    /// When the last catalog was built, and how long that took.
    built: Mutex<(tokio::time::Instant, Duration)>,
}

#[derive(Clone)]
struct Bucket {
    store: kv::Store,
    js: jetstream::Context,
    /// Whether writes carry a per-message TTL (the bucket allows them).
    ttl_headers: bool,
}

#[derive(Default)]
struct View {
    /// Live records by key.
    leases: HashMap<String, Lease>,
    /// True once a whole read of the bucket has completed.
    loaded: bool,
    index: u64,
    /// Times the bucket was found deleted and created again.
    recreations: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct Lease {
    record: InstanceRecord,
    value: Bytes,
    expires: SystemTime,
}

impl Lease {
    /// The lease of `value` written at `written`, or why it is no record.
    fn parse(value: &Bytes, written: SystemTime) -> Result<Lease, serde_json::Error> {
        let record: InstanceRecord = serde_json::from_slice(value)?;
        Ok(Lease {
            expires: written + Duration::from_secs(record.ttl_secs),
            record,
            value: value.clone(),
        })
    }
}

/// The key of an instance.
pub fn key(service: &str, id: &str) -> String {
    format!("{service}.{id}")
}

/// When an entry was written, from its server timestamp.
fn written_at(entry: &kv::Entry) -> SystemTime {
    let nanos = entry.created.unix_timestamp_nanos();
    UNIX_EPOCH + Duration::from_nanos(nanos.clamp(0, u64::MAX as i128) as u64)
}

impl View {
    /// Applies one entry of the bucket; true when the live records changed
    /// (a renewal that only moves a lease is no change).
    fn apply(&mut self, key: &str, lease: Option<Lease>, now: SystemTime) -> bool {
        match lease.filter(|l| l.expires > now) {
            Some(lease) => match self.leases.get_mut(key) {
                Some(held) if held.value == lease.value => {
                    held.expires = lease.expires;
                    false
                }
                _ => {
                    self.leases.insert(key.to_owned(), lease);
                    true
                }
            },
            None => self.leases.remove(key).is_some(),
        }
    }

    /// The keys whose lease ran out by `now`.
    fn due(&self, now: SystemTime) -> Vec<String> {
        self.leases
            .iter()
            .filter(|(_, lease)| lease.expires <= now)
            .map(|(key, _)| key.clone())
            .collect()
    }

    /// Drops the leases that ran out; true when any did.
    fn expire(&mut self, now: SystemTime) -> bool {
        let before = self.leases.len();
        self.leases.retain(|_, lease| lease.expires > now);
        self.leases.len() != before
    }

    fn next_expiry(&self) -> Option<SystemTime> {
        self.leases.values().map(|l| l.expires).min()
    }

    /// Every record held. A lease that ran out stays until the bucket
    /// confirms it ([`end_leases`]), which takes one request.
    fn catalog(&self) -> Catalog {
        let mut instances: Vec<InstanceRecord> =
            self.leases.values().map(|l| l.record.clone()).collect();
        instances.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
        Catalog {
            epoch: KV_EPOCH + self.recreations,
            index: self.index,
            instances,
        }
    }
}

impl KvDirectory {
    /// A directory in the bucket `settings` names, connecting in the
    /// background (retrying for as long as the process runs).
    pub async fn new(settings: KvSettings) -> Result<Self, ClientError> {
        let url = baker_adapter_api::redact_url(&settings.display_url());
        let servers = baker_adapter_nats::server_addrs(&settings.servers).map_err(|reason| {
            ClientError::Unreachable {
                url: url.clone(),
                source: reason.into(),
            }
        })?;
        let options = async_nats::ConnectOptions::new()
            .name("baker-mq directory")
            .retry_on_initial_connect()
            .max_reconnects(None);
        // With retry_on_initial_connect the client is made at once and
        // connects in the background.
        let client = options
            .connect(servers)
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.clone(),
                source: e.into(),
            })?;
        let inner = Arc::new(Inner {
            settings,
            url,
            client,
            bucket: watch::Sender::new(None),
            view: Mutex::new(View::default()),
            changes: watch::Sender::new(0),
            watching: AtomicBool::new(false),
            recreating: AtomicBool::new(false),
            created_ns: Mutex::new(None),
            built: Mutex::new((tokio::time::Instant::now(), Duration::ZERO)),
        });
        tokio::spawn(open_bucket(inner.clone()));
        Ok(Self { inner })
    }

    /// The directory's URL.
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    fn unreachable(
        &self,
        reason: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> ClientError {
        ClientError::Unreachable {
            url: self.inner.url.clone(),
            source: reason.into(),
        }
    }

    /// The bucket, waiting up to `wait` for it to be opened.
    async fn bucket(&self, wait: Duration) -> Result<Bucket, ClientError> {
        let mut opened = self.inner.bucket.subscribe();
        let bucket = tokio::time::timeout(wait, async {
            opened
                .wait_for(Option::is_some)
                .await
                .ok()
                .and_then(|bucket| bucket.clone())
        })
        .await;
        match bucket {
            Ok(Some(bucket)) => Ok(bucket),
            _ => Err(self.unreachable(format!(
                "bucket {:?} not open yet (is the NATS server up, with JetStream?)",
                self.inner.settings.bucket
            ))),
        }
    }

    /// Writes `record`, starting or extending its lease.
    pub async fn register(&self, record: &InstanceRecord) -> Result<(), ClientError> {
        let bucket = self.bucket(CALL_TIMEOUT).await?;
        let value = serde_json::to_vec(record).map_err(|e| self.unreachable(e))?;
        let subject = format!(
            "{}{}",
            bucket
                .store
                .put_prefix
                .as_ref()
                .unwrap_or(&bucket.store.prefix),
            key(&record.service, &record.id)
        );
        let mut headers = HeaderMap::new();
        if bucket.ttl_headers {
            headers.insert("Nats-TTL", record.ttl_secs.to_string().as_str());
        }
        let write = async {
            bucket
                .js
                .publish_with_headers(subject, headers, value.into())
                .await?
                .await
        };
        match tokio::time::timeout(CALL_TIMEOUT, write).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => {
                // Agents without a router follow no bucket: a bucket deleted
                // or replaced under them is noticed here.
                tokio::spawn(heal_after_refused_write(self.inner.clone(), bucket));
                Err(self.unreachable(error))
            }
            Err(_) => Err(self.unreachable("no acknowledgement from the bucket")),
        }
    }

    /// Deletes the instance's key.
    pub async fn deregister(&self, service: &str, id: &str) -> Result<(), ClientError> {
        let bucket = self.bucket(CALL_TIMEOUT).await?;
        let key = key(service, id);
        let delete = async {
            if bucket.ttl_headers {
                // The marker leaves by itself too.
                bucket.store.purge_with_ttl(&key, MARKER_TTL).await
            } else {
                bucket.store.purge(&key).await
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, delete).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(self.unreachable(error)),
            Err(_) => Err(self.unreachable("no acknowledgement from the bucket")),
        }
    }

    /// True while connected to a server.
    pub fn ping(&self) -> bool {
        self.inner.client.connection_state() == State::Connected
    }

    /// The live records; with `after`, waits up to `wait` for a change from
    /// that position. Fails while disconnected or before the bucket was read
    /// once, so that the watcher keeps its last known view.
    pub async fn catalog(
        &self,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Catalog, ClientError> {
        if !self.inner.watching.swap(true, Ordering::Relaxed) {
            tokio::spawn(follow_bucket(self.inner.clone()));
        }
        if self.inner.client.connection_state() == State::Pending {
            // Never connected yet: give the first connection a moment (as
            // long as an HTTP connect may take) before calling it an outage.
            let deadline = tokio::time::Instant::now() + FIRST_CONNECT_WAIT.min(wait);
            while !self.ping() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if !self.ping() {
            return Err(self.unreachable("not connected to any NATS server"));
        }
        let mut changes = self.inner.changes.subscribe();
        let loaded = |view: &View| view.loaded;
        if !loaded(&self.lock_view()) {
            let first = tokio::time::timeout(FIRST_LOAD_WAIT.min(wait), async {
                loop {
                    if changes.changed().await.is_err() || loaded(&self.lock_view()) {
                        return;
                    }
                }
            });
            if first.await.is_err() || !loaded(&self.lock_view()) {
                return Err(self.unreachable(format!(
                    "bucket {:?} not read yet",
                    self.inner.settings.bucket
                )));
            }
            return Ok(self.lock_view().catalog());
        }
        if let Some((epoch, index)) = after {
            if epoch == KV_EPOCH + self.lock_view().recreations {
                let changed = tokio::time::timeout(wait, changes.wait_for(|i| *i != index))
                    .await
                    .is_ok_and(|r| r.is_ok());
                // Under a burst of changes (many instances registering at
                // once), a catalog (and the router's table after it) is built
                // once per interval rather than once per change.
                let (built_at, took) = *self.lock_built();
                let interval = (took * 10).clamp(MIN_REBUILD_INTERVAL, MAX_REBUILD_INTERVAL);
                let since = built_at.elapsed();
                if changed && since < interval {
                    tokio::time::sleep(interval - since).await;
                }
            }
        }
        if !self.ping() {
            return Err(self.unreachable("not connected to any NATS server"));
        }
        let started = tokio::time::Instant::now();
        let catalog = self.lock_view().catalog();
        *self.lock_built() = (started, started.elapsed());
        Ok(catalog)
    }

    fn lock_built(&self) -> std::sync::MutexGuard<'_, (tokio::time::Instant, Duration)> {
        self.inner.built.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.inner.lock_view()
    }
}

impl Inner {
    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a change of the view known to readers.
    fn bump(&self, view: &mut View) {
        view.index += 1;
        self.changes.send_replace(view.index);
    }
}

/// True when the server has per-message TTLs (nats-server 2.11+).
fn server_has_message_ttl(client: &async_nats::Client) -> bool {
    let version = client.server_info().version;
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    (major, minor) >= (2, 11)
}

/// Opens the bucket, creating it when absent, retrying until it succeeds.
async fn open_bucket(inner: Arc<Inner>) {
    let js = jetstream::new(inner.client.clone());
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let mut reported = false;
    loop {
        let opened = match js.get_key_value(&inner.settings.bucket).await {
            Ok(store) => Ok(store),
            Err(_) if inner.client.connection_state() == State::Connected => {
                create_bucket(&js, &inner).await
            }
            Err(error) => Err(error.to_string()),
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

async fn create_bucket(js: &jetstream::Context, inner: &Inner) -> Result<kv::Store, String> {
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
            js.create_key_value(config).await.map_err(|e| e.to_string())
        }
        other => other.map_err(|e| e.to_string()),
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
async fn recreate_if_deleted(inner: Arc<Inner>, bucket: Bucket) -> bool {
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
async fn heal_after_refused_write(inner: Arc<Inner>, bucket: Bucket) {
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

/// Keeps the view in step with the bucket for as long as the process runs.
async fn follow_bucket(inner: Arc<Inner>) {
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    loop {
        let mut opened = inner.bucket.subscribe();
        let bucket = opened
            .wait_for(Option::is_some)
            .await
            .ok()
            .and_then(|bucket| bucket.clone());
        let Some(bucket) = bucket else { return };
        match read_bucket(&inner, &bucket).await {
            Ok(()) => backoff.reset(),
            Err(_) if recreate_if_deleted(inner.clone(), bucket).await => {
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Err(error) => {
                tracing::warn!(url = %inner.url, bucket = %inner.settings.bucket, %error,
                    "directory bucket watch failed; reading it again");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// One watch of the whole bucket: reads every key, then follows changes
/// until the watch fails or [`RELOAD`] passes.
async fn read_bucket(inner: &Inner, bucket: &Bucket) -> Result<(), String> {
    let mut watch = bucket
        .store
        .watch_with_history(">")
        .await
        .map_err(|e| e.to_string())?;
    // Until the history is read, changes go to a fresh view; it replaces the
    // live one once complete, so readers never see half a bucket.
    let mut fresh: Option<View> = Some(View::default());
    let mut stream = bucket.store.stream.clone();
    let info = stream.info().await.map_err(|e| e.to_string())?;
    let created = info.created.unix_timestamp_nanos();
    let previous = inner
        .created_ns
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .replace(created);
    // The first complete read of a new bucket starts a new epoch.
    let new_bucket = previous.is_some_and(|previous| previous != created);
    if new_bucket {
        tracing::warn!(url = %inner.url, bucket = %inner.settings.bucket,
            "the directory bucket is a new one (it was deleted); keeping the records it lacks for one lease");
    }
    let empty = info.state.messages == 0;
    if empty {
        adopt(inner, fresh.take().expect("not adopted yet"), new_bucket);
    }
    let reload_at = tokio::time::Instant::now() + RELOAD;
    let mut reported_bad_keys = false;
    loop {
        let next_expiry = inner.lock_view().next_expiry();
        let expiry_in = next_expiry.map_or(RELOAD, |t| {
            t.duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
        });
        tokio::select! {
            entry = watch.next() => {
                let entry = match entry {
                    Some(Ok(entry)) => entry,
                    Some(Err(error)) => return Err(error.to_string()),
                    None => return Err("watch ended".to_owned()),
                };
                let now = SystemTime::now();
                let lease = match entry.operation {
                    kv::Operation::Put => match Lease::parse(&entry.value, written_at(&entry)) {
                        Ok(lease) => Some(lease),
                        Err(error) => {
                            if !reported_bad_keys {
                                tracing::warn!(bucket = %inner.settings.bucket, key = %entry.key, %error,
                                    "bucket entry is not an instance record; ignoring it (and others like it)");
                                reported_bad_keys = true;
                            }
                            None
                        }
                    },
                    kv::Operation::Delete | kv::Operation::Purge => None,
                };
                match fresh.as_mut() {
                    Some(view) => {
                        view.apply(&entry.key, lease, now);
                        if entry.delta == 0 {
                            adopt(inner, fresh.take().expect("checked"), new_bucket);
                        }
                    }
                    None => {
                        let mut view = inner.lock_view();
                        if view.apply(&entry.key, lease, now) {
                            inner.bump(&mut view);
                        }
                    }
                }
            }
            _ = tokio::time::sleep(expiry_in), if next_expiry.is_some() => {
                end_leases(inner, bucket).await?;
            }
            // Keys present when the watch began can leave before it
            // delivers them; then no entry ends the history.
            _ = tokio::time::sleep(STALLED_HISTORY), if fresh.is_some() => {
                if stream.info().await.map_err(|e| e.to_string())?.state.messages == 0 {
                    adopt(inner, fresh.take().expect("checked"), new_bucket);
                }
            }
            _ = tokio::time::sleep_until(reload_at) => return Ok(()),
        }
    }
}

/// Ends the leases that ran out, once the bucket confirms each: the watch
/// can be behind it (a server lost under a watch is noticed only after
/// missed heartbeats), and renewals it missed must not end a lease. A
/// renewal found this way means the watch is behind: the error makes it
/// read the bucket again. While the bucket does not answer, a lease stays
/// (the last known view) and is asked about again a second later.
async fn end_leases(inner: &Inner, bucket: &Bucket) -> Result<(), String> {
    let due = inner.lock_view().due(SystemTime::now());
    for key in due {
        let latest = tokio::time::timeout(CALL_TIMEOUT, bucket.store.entry(key.clone())).await;
        let now = SystemTime::now();
        let renewed = match latest {
            Ok(Ok(Some(entry))) if entry.operation == kv::Operation::Put => {
                Lease::parse(&entry.value, written_at(&entry))
                    .ok()
                    .filter(|lease| lease.expires > now)
            }
            Ok(Ok(_)) => None,
            Ok(Err(_)) | Err(_) => {
                if let Some(lease) = inner.lock_view().leases.get_mut(&key) {
                    lease.expires = now + Duration::from_secs(1);
                }
                continue;
            }
        };
        let behind = renewed.is_some();
        let mut view = inner.lock_view();
        if view.apply(&key, renewed, now) {
            inner.bump(&mut view);
        }
        if behind {
            return Err(format!(
                "the watch is behind the bucket: it missed a renewal of {key}"
            ));
        }
    }
    Ok(())
}

/// Replaces the live view with a complete read of the bucket.
fn adopt(inner: &Inner, mut fresh: View, new_bucket: bool) {
    let now = SystemTime::now();
    fresh.expire(now);
    let mut view = inner.lock_view();
    let changed = new_bucket || !view.loaded || view.leases != fresh.leases;
    if new_bucket {
        view.recreations += 1;
    }
    view.leases = fresh.leases;
    view.loaded = true;
    if changed {
        inner.bump(&mut view);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::directory::store::tests::record;

    fn lease(id: &str, ttl: u64, written: SystemTime) -> Lease {
        let value = Bytes::from(serde_json::to_vec(&record("s", id, ttl)).unwrap());
        Lease::parse(&value, written).unwrap()
    }

    #[test]
    fn a_lease_runs_out_ttl_after_its_write_even_with_no_event() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut view = View::default();
        assert!(view.apply("s.a", Some(lease("a", 10, t0)), t0));
        assert!(view.apply("s.b", Some(lease("b", 30, t0)), t0));
        assert_eq!(view.next_expiry(), Some(t0 + Duration::from_secs(10)));

        // No event for a: at 10 s its lease is due (to be confirmed with
        // the bucket), b's is not.
        let at = t0 + Duration::from_secs(10);
        assert_eq!(view.due(at), ["s.a"]);
        assert!(view.due(at - Duration::from_millis(1)).is_empty());
        assert!(view.apply("s.a", None, at));
        let ids: Vec<_> = view.catalog().instances.into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["b"]);
    }

    #[test]
    fn a_renewal_moves_the_lease_without_changing_the_view() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut view = View::default();
        assert!(view.apply("s.a", Some(lease("a", 10, t0)), t0));
        let later = t0 + Duration::from_secs(5);
        assert!(!view.apply("s.a", Some(lease("a", 10, later)), later));
        assert_eq!(view.next_expiry(), Some(later + Duration::from_secs(10)));

        // A changed record is a change; so is a delete.
        let mut draining = record("s", "a", 10);
        draining.status = crate::directory::Status::Draining;
        let value = Bytes::from(serde_json::to_vec(&draining).unwrap());
        assert!(view.apply("s.a", Some(Lease::parse(&value, later).unwrap()), later));
        assert!(view.apply("s.a", None, later));
        assert!(!view.apply("s.a", None, later));
    }

    #[test]
    fn an_entry_written_longer_ago_than_its_ttl_is_not_taken() {
        // Read at start from a bucket whose server never removed it.
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let mut view = View::default();
        let now = t0 + Duration::from_secs(60);
        assert!(!view.apply("s.a", Some(lease("a", 10, t0)), now));
        assert!(view.catalog().instances.is_empty());
    }
}
