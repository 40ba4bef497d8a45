//! The directory on a JetStream key-value bucket, for deployments that
//! outgrow one embedded directory: the bucket is replicated by the NATS
//! cluster (Raft), and every router watches the keys of the services it
//! routes to.
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
//! The reader keeps the live records of the services it follows in memory,
//! fed by a watch of their keys (of the whole bucket for a reader of the
//! whole catalog); the watch is made again (a full reload) when it fails
//! and every [`RELOAD`] as a safety net, and the view is replaced only once
//! a reload is complete.
//!
//! - [`settings`]: the directory URL
//! - `view`: the leases a reader holds
//! - `bucket`: opening, creating and healing the bucket
//! - `follow`: the watch that keeps the view in step
//! - `write`: writing a record on the revision this agent owns

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use baker_adapter_api::BrokerAccess;
use baker_adapter_nats::async_nats::{self, connection::State};
use baker_directory_api::{Catalog, Changes, ClientError, Directory, InstanceRecord};
use tokio::sync::watch;

mod bucket;
mod follow;
mod owner;
pub mod settings;
mod view;
mod write;

use bucket::Bucket;
pub use settings::{KvSettings, SettingsError, DEFAULT_BUCKET};
pub use view::{key, KV_EPOCH};
use view::{Filter, View};
use write::Written;

/// Safety net against a watch that silently stopped: the whole bucket is
/// read again this often.
pub const RELOAD: Duration = Duration::from_secs(60);

/// The bucket's own limit, collecting keys that nothing removed (servers
/// without per-message TTL). Longer than any lease's renewal period.
pub(crate) const BUCKET_MAX_AGE: Duration = Duration::from_secs(2 * 3600);

/// How long the server keeps the marker it leaves for a key whose TTL ran
/// out, and the marker of a deregistration.
pub(crate) const MARKER_TTL: Duration = Duration::from_secs(60);

/// Time between two catalogs built for a reader under a burst of changes:
/// ten times what building one took, within these bounds, so a burst costs
/// a router at most about a tenth of a core.
pub(crate) const MIN_REBUILD_INTERVAL: Duration = Duration::from_millis(10);
pub(crate) const MAX_REBUILD_INTERVAL: Duration = Duration::from_millis(500);

/// How long a first read of the catalog waits for a first connection.
pub(crate) const FIRST_CONNECT_WAIT: Duration = Duration::from_secs(2);

/// How long a first read of the catalog waits for the bucket to load.
pub(crate) const FIRST_LOAD_WAIT: Duration = Duration::from_secs(5);

/// How long a read of the bucket's history may go without an entry before
/// the bucket is checked for being empty.
pub(crate) const STALLED_HISTORY: Duration = Duration::from_secs(2);

/// Timeout of a write.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(3);

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

/// What a directory's tasks share.
struct Inner {
    settings: KvSettings,
    url: String,
    client: async_nats::Client,
    /// The bucket, once it is opened (or created).
    bucket: watch::Sender<Option<Bucket>>,
    view: Mutex<View>,
    /// The view's index, bumped on every change of the live records.
    changes: watch::Sender<u64>,
    /// Set once a reader asked for the catalog: the bucket is followed from
    /// then on (an agent alone never follows it).
    watching: AtomicBool,
    /// The services the reader follows; `None`: the whole bucket.
    filter: watch::Sender<Filter>,
    /// Set while the bucket, found deleted, is being created again.
    recreating: AtomicBool,
    /// The SHA-256 (hex) of this agent's owner id, on every write.
    owner: String,
    /// The revision of each key this agent last wrote: its next write is
    /// made on it.
    revisions: Mutex<HashMap<String, u64>>,
}

/// Why a read or a creation of the bucket failed.
#[derive(Debug, thiserror::Error)]
enum BucketError {
    /// The server refused or failed a request.
    #[error("{what}: {source}")]
    Nats {
        what: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The watch ended.
    #[error("the watch ended")]
    WatchEnded,
    /// The watch missed a renewal: it is behind the bucket.
    #[error("the watch is behind the bucket: it missed a renewal of {0}")]
    Behind(String),
}

impl BucketError {
    fn nats(what: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Nats {
            what,
            source: Box::new(source),
        }
    }
}

impl KvDirectory {
    /// A directory in the bucket `settings` names, connecting in the
    /// background (retrying for as long as the process runs) with the
    /// credentials and TLS of `access`; its writes are `owner`'s (an id
    /// kept secret: the bucket holds its digest).
    pub async fn new(
        settings: KvSettings,
        access: Option<&BrokerAccess>,
        owner: &str,
    ) -> Result<Self, ClientError> {
        let url = baker_adapter_api::redact_url(&settings.display_url());
        let unreachable = |reason: String| ClientError::Unreachable {
            url: url.clone(),
            source: reason.into(),
        };
        let servers = baker_adapter_nats::server_addrs(&settings.servers)
            .map_err(|reason| unreachable(reason.to_string()))?;
        let options = baker_adapter_nats::connect_options(access, &settings.servers)
            .map_err(|e| unreachable(e.to_string()))?
            .name("baker-mq directory")
            .event_callback(|event| async move { report_event(event) })
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
            filter: watch::Sender::new(None),
            recreating: AtomicBool::new(false),
            owner: hex_sha256(owner),
            revisions: Mutex::default(),
        });
        tokio::spawn(bucket::open_bucket(inner.clone()));
        Ok(Self { inner })
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

    /// True while connected to a server.
    fn connected(&self) -> bool {
        self.inner.client.connection_state() == State::Connected
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.inner.lock_view()
    }
}

#[async_trait]
impl Directory for KvDirectory {
    fn url(&self) -> &str {
        &self.inner.url
    }

    /// Writes `record`, starting or extending its lease: on the revision
    /// this agent last wrote, else (first write, or someone wrote since)
    /// after checking that no other owner's lease is live.
    async fn register(&self, record: &InstanceRecord) -> Result<(), ClientError> {
        let bucket = self.bucket(CALL_TIMEOUT).await?;
        let key = key(&record.service, &record.id);
        let known = self.inner.lock_revisions().get(&key).copied();
        match self.write(&bucket, record, &key, known).await {
            Err(Written::Stale) if known.is_some() => {
                self.inner.lock_revisions().remove(&key);
                self.write(&bucket, record, &key, None).await
            }
            other => other,
        }
        .map_err(|written| match written {
            Written::Stale => self.unreachable("the key changed while it was written; retrying"),
            Written::Owned => ClientError::Owned(format!(
                "{}/{} is registered by another owner until its lease ends",
                record.service, record.id
            )),
            Written::Failed(error) => error,
        })
    }

    /// A bucket entry carries its own lease: renewing is writing it again.
    async fn renew(&self, record: &InstanceRecord) -> Result<(), ClientError> {
        self.register(record).await
    }

    /// Deletes the instance's key, on the revision this agent last wrote
    /// (a key another owner wrote since is left alone).
    async fn deregister(&self, service: &str, id: &str) -> Result<(), ClientError> {
        let bucket = self.bucket(CALL_TIMEOUT).await?;
        let key = key(service, id);
        let Some(revision) = self.inner.lock_revisions().remove(&key) else {
            return Ok(());
        };
        let delete = async {
            if bucket.ttl_headers {
                // The marker leaves by itself too.
                (bucket.store)
                    .purge_expect_revision_with_ttl(&key, revision, MARKER_TTL)
                    .await
            } else {
                bucket
                    .store
                    .purge_expect_revision(&key, Some(revision))
                    .await
            }
        };
        match tokio::time::timeout(CALL_TIMEOUT, delete).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(self.unreachable(error)),
            Err(_) => Err(self.unreachable("no acknowledgement from the bucket")),
        }
    }

    /// True while connected to a server.
    async fn ping(&self) -> bool {
        self.connected()
    }

    /// The live records; with `after`, waits up to `wait` for a change from
    /// that position. Fails while disconnected or before the bucket was read
    /// once, so that the watcher keeps its last known view.
    async fn catalog(
        &self,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Catalog, ClientError> {
        self.read(None, after, wait, View::catalog).await
    }

    /// The records of `services` only: the reader follows their keys alone,
    /// so that a renewal or change of another service never reaches it.
    /// Each answer is in full (the records of a router's services).
    async fn watch(
        &self,
        services: &BTreeSet<String>,
        after: Option<(u64, u64)>,
        wait: Duration,
    ) -> Result<Changes, ClientError> {
        let filter = Some(Arc::new(services.clone()));
        self.read(filter, after, wait, |view| view.changes_since(after))
            .await
    }
}

impl KvDirectory {
    /// What `answer` makes of the view of `filter`'s services (all without
    /// one), following them from now on; with `after`, waits up to `wait`
    /// for a change from that position first.
    async fn read<T>(
        &self,
        filter: Filter,
        after: Option<(u64, u64)>,
        wait: Duration,
        answer: impl Fn(&View) -> T,
    ) -> Result<T, ClientError> {
        self.inner.filter.send_if_modified(|current| {
            let changed = *current != filter;
            if changed {
                *current = filter.clone();
            }
            changed
        });
        if !self.inner.watching.swap(true, Ordering::Relaxed) {
            tokio::spawn(follow::follow_bucket(self.inner.clone()));
        }
        if self.inner.client.connection_state() == State::Pending {
            // Never connected yet: give the first connection a moment (as
            // long as an HTTP connect may take) before calling it an outage.
            let deadline = tokio::time::Instant::now() + FIRST_CONNECT_WAIT.min(wait);
            while !self.connected() && tokio::time::Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if !self.connected() {
            return Err(self.unreachable("not connected to any NATS server"));
        }
        let mut changes = self.inner.changes.subscribe();
        let loaded = |view: &View| view.loaded && view.filter == filter;
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
            return Ok(answer(&self.lock_view()));
        }
        if let Some((epoch, index)) = after {
            if epoch == KV_EPOCH + self.lock_view().recreations {
                let changed = tokio::time::timeout(wait, changes.wait_for(|i| *i != index))
                    .await
                    .is_ok_and(|r| r.is_ok());
                // Under a burst of changes (many instances registering at
                // once), a catalog (and the router's table after it) is built
                // once per interval rather than once per change.
                let built = self.lock_view().built;
                if let (true, Some((built_at, took))) = (changed, built) {
                    let interval = (took * 10).clamp(MIN_REBUILD_INTERVAL, MAX_REBUILD_INTERVAL);
                    let since = built_at.elapsed();
                    if since < interval {
                        tokio::time::sleep(interval - since).await;
                    }
                }
            }
        }
        if !self.connected() {
            return Err(self.unreachable("not connected to any NATS server"));
        }
        let started = tokio::time::Instant::now();
        let mut view = self.lock_view();
        let answered = answer(&view);
        view.built = Some((started, started.elapsed()));
        Ok(answered)
    }
}

/// Logs what the server refused (a permission the user lacks: writing
/// another service's key, creating the bucket) and connection failures, each
/// kind at most every 30 s.
fn report_event(event: async_nats::Event) {
    static SERVER: baker_adapter_api::Every =
        baker_adapter_api::Every::new(Duration::from_secs(30));
    static CLIENT: baker_adapter_api::Every =
        baker_adapter_api::Every::new(Duration::from_secs(30));
    match event {
        async_nats::Event::ServerError(error) => {
            if let Some(more) = SERVER.check() {
                tracing::warn!(%error, more, "the directory's NATS server refused a request (permissions?)");
            }
        }
        async_nats::Event::ClientError(error) => {
            if let Some(more) = CLIENT.check() {
                tracing::warn!(%error, more, "cannot connect to the directory's NATS servers; retrying");
            }
        }
        _ => {}
    }
}

/// The SHA-256 of `text`, in hex.
fn hex_sha256(text: &str) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Inner {
    fn lock_revisions(&self) -> std::sync::MutexGuard<'_, HashMap<String, u64>> {
        self.revisions.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Makes a change of the view known to readers.
    fn bump(&self, view: &mut View) {
        view.index += 1;
        view.log_pending();
        self.changes.send_replace(view.index);
    }
}
