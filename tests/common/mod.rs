//! Test harness: real `baker-mq` processes and a real NATS server.
#![allow(dead_code)]

use std::collections::HashMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;

pub const BIN: &str = env!("CARGO_BIN_EXE_baker-mq");

pub fn nats_url() -> String {
    std::env::var("BAKER_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".to_owned())
}

/// A name no other test (or earlier run) uses.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}{:x}", fastrand::u64(..) & 0xffff_ffff)
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn log_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("baker-logs");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// The `name` binary of a broker a test starts processes of its own: the
/// path in `var` when it is set, else the first of `places` that exists,
/// else `name` on PATH. Without one it panics with one message saying where
/// it looked and `how` to get one.
pub fn broker_binary(name: &str, var: &str, places: &[&str], how: &str) -> PathBuf {
    if let Ok(path) = std::env::var(var) {
        assert!(
            is_executable(Path::new(&path)),
            "this test starts {name} processes of its own, but {var}={path} is not an \
             executable file; {how}"
        );
        return path.into();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    places
        .iter()
        .map(PathBuf::from)
        .chain(std::env::split_paths(&path).map(|dir| dir.join(name)))
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!(
                "this test starts {name} processes of its own and found no {name} binary: \
                 {var} is unset, there is none at {}, and none on PATH ({}); {how}",
                places.join(" or "),
                path.to_string_lossy()
            )
        })
}

/// A child process killed (SIGKILL) when dropped.
pub struct Proc {
    pub name: String,
    child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        let log = log_dir().join(format!("{}.log", unique(&format!("{name}-"))));
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(BIN)
            .args(args)
            .env(
                "BAKER_LOG",
                std::env::var("BAKER_TEST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn baker-mq");
        Proc {
            name: name.to_owned(),
            child,
            log,
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn signal(&self, sig: &str) {
        let _ = Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status();
    }

    /// SIGKILL, no cleanup.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for exit (SIGKILL after `timeout`).
    pub fn terminate(&mut self, timeout: Duration) -> Option<i32> {
        self.signal("-TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill();
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How much longer than on a quiet machine every bound of the suite may
/// take: `BAKER_TEST_TIME_FACTOR` (default 1), for slow or loaded machines.
pub fn time_factor() -> f64 {
    match std::env::var("BAKER_TEST_TIME_FACTOR") {
        Ok(v) => v
            .parse::<f64>()
            .ok()
            .filter(|f| *f >= 1.0)
            .unwrap_or_else(|| {
                panic!("BAKER_TEST_TIME_FACTOR={v:?} is not a number of at least 1")
            }),
        Err(_) => 1.0,
    }
}

/// `bound` scaled by [`time_factor`].
pub fn scaled(bound: Duration) -> Duration {
    bound.mul_f64(time_factor())
}

/// Waits until `check` holds, polling every 25 ms; fails the test after
/// `timeout` (scaled by [`time_factor`]).
pub async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let timeout = scaled(timeout);
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

pub async fn http_ok(url: &str) -> bool {
    matches!(reqwest::get(url).await, Ok(r) if r.status().is_success())
}

/// A `baker-mq directory` on a free port.
pub struct Directory {
    pub port: u16,
    pub proc: Proc,
}

impl Directory {
    pub async fn start() -> Directory {
        Self::start_on(free_port()).await
    }

    pub async fn start_on(port: u16) -> Directory {
        let listen = format!("127.0.0.1:{port}");
        let proc = Proc::spawn("directory", &["directory", "--listen", &listen]);
        let dir = Directory { port, proc };
        let health = format!("{}/healthz", dir.url());
        wait_until("directory up", Duration::from_secs(10), || http_ok(&health)).await;
        dir
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub async fn instances(&self, service: &str) -> Vec<String> {
        let url = format!("{}/v1/services/{service}", self.url());
        let Ok(resp) = reqwest::get(&url).await else {
            return vec![];
        };
        let Ok(doc) = resp.json::<serde_json::Value>().await else {
            return vec![];
        };
        doc["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// One test's isolated ingress: a unique prefix and queue group.
#[derive(Clone)]
pub struct Ingress {
    pub prefix: String,
    pub group: String,
}

impl Ingress {
    pub fn new() -> Self {
        Ingress {
            prefix: unique("t"),
            group: unique("g"),
        }
    }

    pub fn subject(&self, service: &str, topic: &str) -> String {
        format!("{}.{service}.{topic}", self.prefix)
    }
}

/// A `baker-mq` router process.
pub struct Router {
    pub admin: String,
    pub proc: Proc,
}

impl Router {
    /// A NATS router on `ingress`.
    pub async fn start(directory: &str, ingress: &Ingress, extra: &[&str]) -> Router {
        let url = nats_url();
        let mut args = vec![
            "--adapter",
            "nats",
            "--broker",
            &url,
            "--ingress-prefix",
            &ingress.prefix,
            "--queue-group",
            &ingress.group,
        ];
        args.extend_from_slice(extra);
        Self::spawn(directory, &args).await
    }

    /// A router with `args`, on its own admin port, once it is ready.
    pub async fn spawn(directory: &str, args: &[&str]) -> Router {
        let admin = format!("127.0.0.1:{}", free_port());
        let mut all = vec!["--directory", directory, "--admin", &admin];
        all.extend_from_slice(args);
        let proc = Proc::spawn("router", &all);
        let router = Router { admin, proc };
        let ready = format!("http://{}/readyz", router.admin);
        wait_until("router ready", Duration::from_secs(20), || http_ok(&ready)).await;
        router
    }

    pub async fn status(&self) -> serde_json::Value {
        let url = format!("http://{}/v1/status", self.admin);
        match reqwest::get(&url).await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// Ids of the instances of `service` this router sends to.
    pub async fn routed(&self, service: &str) -> Vec<String> {
        let status = self.status().await;
        let mut ids: Vec<String> = status["services"][service]["instances"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter(|i| i["routed"].as_bool() == Some(true))
                    .filter_map(|i| i["id"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        ids.sort();
        ids
    }

    pub async fn wait_routed(&self, service: &str, ids: &[&str], timeout: Duration) {
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        wait_until(
            &format!("router to route {service} to {want:?}"),
            timeout,
            || {
                let want = want.clone();
                async move { self.routed(service).await == want }
            },
        )
        .await;
    }

    pub async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.admin);
        reqwest::get(&url).await.unwrap().text().await.unwrap()
    }
}

/// A `baker-mq --no-router` agent registering one instance on NATS.
pub fn agent(directory: &str, service: &str, id: &str, extra: &[&str]) -> Proc {
    agent_on("nats", &nats_url(), directory, service, id, extra)
}

/// A `baker-mq --no-router` agent registering one instance whose inbox is on
/// `broker`, through `adapter`.
pub fn agent_on(
    adapter: &str,
    broker: &str,
    directory: &str,
    service: &str,
    id: &str,
    extra: &[&str],
) -> Proc {
    let spec = format!("service={service},id={id}");
    spawn_agent(adapter, broker, directory, &spec, extra)
}

/// An agent registering `spec` (a full `--register` value) through `adapter`
/// on `broker`.
pub fn agent_registering(adapter: &str, broker: &str, directory: &str, spec: &str) -> Proc {
    spawn_agent(adapter, broker, directory, spec, &[])
}

fn spawn_agent(adapter: &str, broker: &str, directory: &str, spec: &str, extra: &[&str]) -> Proc {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut args = vec![
        "--no-router",
        "--adapter",
        adapter,
        "--broker",
        broker,
        "--directory",
        directory,
        "--admin",
        &admin,
        "--register",
        spec,
    ];
    args.extend_from_slice(extra);
    Proc::spawn(&format!("agent-{adapter}"), &args)
}

/// Resident memory of process `pid`, in KiB (0 when unknown).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// What one instance's inbox received: sequence numbers with arrival times.
#[derive(Clone, Default)]
pub struct Inbox {
    pub received: Arc<Mutex<Vec<(u64, Instant)>>>,
}

impl Inbox {
    pub fn count(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    pub fn last_arrival(&self) -> Option<Instant> {
        self.received.lock().unwrap().last().map(|(_, t)| *t)
    }

    pub fn first_arrival_after(&self, t: Instant) -> Option<Instant> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(_, a)| *a)
            .find(|a| *a >= t)
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.received
            .lock()
            .unwrap()
            .iter()
            .map(|(s, _)| *s)
            .collect()
    }
}

/// Consumes `_baker.<service>.<id>.>` on NATS, like an instance would.
pub async fn consume_inbox(client: &async_nats::Client, service: &str, id: &str) -> Inbox {
    let mut sub = client
        .subscribe(format!("_baker.{service}.{id}.>"))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let inbox = Inbox::default();
    let received = inbox.received.clone();
    tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let seq = std::str::from_utf8(&msg.payload)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(u64::MAX);
            received.lock().unwrap().push((seq, Instant::now()));
        }
    });
    inbox
}

pub async fn connect() -> async_nats::Client {
    async_nats::connect(nats_url()).await.unwrap_or_else(|e| {
        panic!(
            "NATS must answer at {} (integration/run.sh starts it): {e}",
            nats_url()
        )
    })
}

/// Publishes `count` messages with payloads `start..start+count`, `per_batch`
/// then a pause of `pause`, so the rate stays below what NATS core drops.
pub async fn publish_paced(
    client: &async_nats::Client,
    subject: &str,
    start: u64,
    count: u64,
    per_batch: u64,
    pause: Duration,
) {
    for seq in start..start + count {
        client
            .publish(subject.to_owned(), seq.to_string().into())
            .await
            .unwrap();
        if (seq - start + 1).is_multiple_of(per_batch) {
            client.flush().await.unwrap();
            tokio::time::sleep(pause).await;
        }
    }
    client.flush().await.unwrap();
}

/// Every sequence number received across inboxes, with duplicates counted.
pub fn tally(inboxes: &[&Inbox]) -> (usize, HashMap<u64, usize>) {
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for inbox in inboxes {
        for seq in inbox.seqs() {
            *seen.entry(seq).or_default() += 1;
        }
    }
    let duplicates = seen.values().map(|c| c - 1).sum();
    (duplicates, seen)
}

/// [`publish_paced`] in the background, for traffic that runs while the test
/// changes things.
pub fn spawn_publisher(
    client: &async_nats::Client,
    subject: String,
    count: u64,
    per_batch: u64,
    pause: Duration,
) -> tokio::task::JoinHandle<()> {
    let client = client.clone();
    tokio::spawn(async move { publish_paced(&client, &subject, 0, count, per_batch, pause).await })
}

/// Steady traffic for the rolling-upgrade tests: a batch of [`BATCH`]
/// sequence numbers every 20 ms, published by `publish(start, count)` (which
/// returns once the broker has the batch), until stopped.
pub struct SteadyTraffic {
    published: Arc<std::sync::atomic::AtomicU64>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<()>,
}

/// Messages per batch of [`SteadyTraffic`].
pub const BATCH: u64 = 50;

impl SteadyTraffic {
    pub fn start<F, Fut>(mut publish: F) -> SteadyTraffic
    where
        F: FnMut(u64, u64) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        use std::sync::atomic::Ordering;
        let published = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let task = {
            let (published, stop) = (published.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let start = published.load(Ordering::Relaxed);
                    publish(start, BATCH).await;
                    published.store(start + BATCH, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            })
        };
        SteadyTraffic {
            published,
            stop,
            task,
        }
    }

    /// Messages published so far.
    pub fn published(&self) -> u64 {
        self.published.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// A sequence number no message published before this call reaches:
    /// the batch going out now may be out already, the next one is not.
    pub fn cutoff(&self) -> u64 {
        self.published() + BATCH
    }

    /// Stops after the current batch; returns how many were published.
    pub async fn stop(self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let published = self.published.clone();
        self.task.await.unwrap();
        published.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Starts draining the instance `id` of `agent` (SIGTERM) and waits until
/// `router` no longer routes to it. Returns the cutoff: no message from it
/// on may reach the instance.
pub async fn begin_drain(
    router: &Router,
    service: &str,
    id: &str,
    agent: &Proc,
    traffic: &SteadyTraffic,
) -> u64 {
    Command::new("kill")
        .args(["-TERM", &agent.pid().to_string()])
        .status()
        .unwrap();
    wait_until(
        "the router stops routing to the draining instance",
        Duration::from_secs(10),
        || async { !router.routed(service).await.iter().any(|r| r == id) },
    )
    .await;
    traffic.cutoff()
}

/// The checks of a rolling upgrade once the traffic stopped at `total`:
/// every message delivered, and none published after an old instance's
/// drain began reached it (`old[i]` drained from `cutoffs[i]`). Returns the
/// duplicates.
pub async fn assert_rolling_upgrade(
    all: &[&Inbox],
    old: &[&Inbox],
    cutoffs: &[u64],
    total: u64,
) -> usize {
    wait_until(
        "every message delivered",
        Duration::from_secs(30),
        || async { tally(all).1.len() as u64 >= total },
    )
    .await;
    let (duplicates, seen) = tally(all);
    assert_eq!(seen.len() as u64, total, "none lost");
    for (i, (inbox, cutoff)) in old.iter().zip(cutoffs).enumerate() {
        let late = inbox.seqs().into_iter().filter(|s| s >= cutoff).count();
        assert_eq!(
            late, 0,
            "old instance {i} got messages published after its drain began"
        );
    }
    duplicates
}

/// The second half of a rolling upgrade whose old instances (`inboxes[..n]`,
/// `old_agents`) need nothing but their drain: drains and stops them one at
/// a time, stops the traffic, and checks what [`assert_rolling_upgrade`]
/// checks, and that everything after the last drain went to the new ones.
/// Returns the messages published and the duplicates.
pub async fn drain_old_instances(
    router: &Router,
    service: &str,
    old_agents: &mut [Proc],
    traffic: SteadyTraffic,
    inboxes: &[Inbox],
) -> (u64, usize) {
    let mut cutoffs = Vec::new();
    for (i, agent) in old_agents.iter_mut().enumerate() {
        let id = format!("v1-{i}");
        cutoffs.push(begin_drain(router, service, &id, agent, &traffic).await);
        assert_eq!(
            agent.terminate(Duration::from_secs(40)),
            Some(0),
            "{id}'s agent drains and exits 0: {}",
            agent.log_text()
        );
    }
    let after_old = traffic.published();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let total = traffic.stop().await;
    let all: Vec<&Inbox> = inboxes.iter().collect();
    let old = old_agents.len();
    let duplicates = assert_rolling_upgrade(&all, &all[..old], &cutoffs, total).await;
    let to_new_after: usize = inboxes[old..]
        .iter()
        .map(|inbox| inbox.seqs().iter().filter(|s| **s >= after_old).count())
        .sum();
    assert!(
        to_new_after as u64 >= total - after_old,
        "everything after the last drain went to the new instances"
    );
    (total, duplicates)
}

/// Consumes a durable inbox's stream (`BAKER_INBOX_<inbox>`) as its
/// instance would, acking each message, into an [`Inbox`].
pub async fn consume_durable_inbox(js: &async_nats::jetstream::Context, inbox: &str) -> Inbox {
    consume_durable_inbox_paced(js, inbox, None).await
}

/// [`consume_durable_inbox`], pausing 1 ms after every `pace` messages
/// (a slow instance) when given.
pub async fn consume_durable_inbox_paced(
    js: &async_nats::jetstream::Context,
    inbox: &str,
    pace: Option<u64>,
) -> Inbox {
    let name = format!("BAKER_INBOX_{}", inbox.replace('.', "_"));
    let stream = loop {
        match js.get_stream(&name).await {
            Ok(stream) => break stream,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // Durable, so the consumer has the stream's replicas and outlives the
    // loss of a cluster node; a failed pull is made again.
    let consumer = stream
        .create_consumer(async_nats::jetstream::consumer::pull::Config {
            durable_name: Some(unique("inbox-")),
            ack_policy: async_nats::jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await
        .unwrap();
    let inbox = Inbox::default();
    let received = inbox.received.clone();
    tokio::spawn(async move {
        let mut taken = 0u64;
        loop {
            let Ok(mut messages) = consumer.messages().await else {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            while let Some(next) = messages.next().await {
                let Ok(message) = next else { continue };
                taken += 1;
                if pace.is_some_and(|every| taken.is_multiple_of(every)) {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let seq = std::str::from_utf8(&message.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                received
                    .lock()
                    .unwrap()
                    .push((seq, std::time::Instant::now()));
                let _ = message.ack().await;
            }
        }
    });
    inbox
}

pub mod amqp;
pub mod mqtt;
pub mod nats_server;
pub mod protocols;
