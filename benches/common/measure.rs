//! One measured run of one path, the same for every protocol.
//!
//! A protocol's bench describes a path by implementing [`Route`]: how to
//! start consuming a run's messages ([`Consumer`]) and how to publish them
//! ([`Publisher`]); a [`Path`] adds its name and hop process. [`measure`]
//! does the rest: it starts the consumer, then publishes `count` stamped
//! messages from a thread of its own (paced, or with a window of messages
//! published but not yet received), counts what arrives until all did or
//! nothing did for a quiet time once publishing is done, and gives back an
//! [`Outcome`]: how many were sent, confirmed, received, lost and
//! duplicated, how fast, and every latency.
//!
//! Two traits rather than one, because the two sides run in different
//! places: the consumer as a task on the bench's multi-threaded runtime
//! (so it must be `Send`), the publisher on a thread of its own with a
//! current-thread runtime, where pacing can sleep finer than tokio's timer
//! and what the client spawns stays off the consumer's threads.
//!
//! Everything a broker confirms must arrive: where the protocol confirms
//! publishes (JetStream acks, AMQP confirms, MQTT PUBACKs), what is lost is
//! counted against what was confirmed; where it does not (core NATS), the
//! publisher counts what a final flush handed to the server as confirmed.

use std::fmt::Display;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::report::{per_second, percentile_us};
use super::stamp::{now_ns, pace, publish_on_own_thread, read_stamp, read_tag, stamped_payload};
use super::{READY_TIMEOUT, RUN_DEADLINE};

/// How long the consumer waits for one message before it looks at the
/// clock again.
const POLL: Duration = Duration::from_millis(100);

/// One way from a publisher to a consumer, as a protocol's bench builds it.
/// Each run has a tag of its own, carried in every payload; a route may also
/// use it in its names (subjects, consumers) to keep runs apart.
pub trait Route {
    type Consumer: Consumer;
    type Publisher: Publisher;

    /// Starts consuming what run `tag` publishes; once it returns, every
    /// message published arrives.
    fn consume(&self, tag: u64) -> impl Future<Output = Self::Consumer>;

    /// A publisher for run `tag`, handed to the publishing thread.
    fn publisher(&self, tag: u64) -> Self::Publisher;
}

/// A path of a bench: a route, its name in the report, and the process
/// between publisher and consumer (a relay, a sidecar), if any, for its CPU
/// time.
pub struct Path<R> {
    pub name: &'static str,
    pub hop: Option<u32>,
    pub route: R,
}

/// What [`Consumer::receive`] got.
pub enum Next {
    /// A message: when it arrived ([`now_ns`]), its payload, and whether the
    /// broker flags it as redelivered.
    Message {
        at: u64,
        payload: Bytes,
        redelivered: bool,
    },
    /// Nothing within the wait.
    Idle,
    /// The consumer ended: why.
    Ended(String),
}

/// How a consumer's run ended, besides what it received.
#[derive(Default)]
pub struct Closed {
    /// What went wrong (acks that failed, say).
    pub error: Option<String>,
    /// Something for the record, printed once the path works (the headers
    /// a delivered message carried, say).
    pub note: Option<String>,
}

/// The consuming side of one run; it runs on the bench's tokio runtime.
pub trait Consumer: Send + 'static {
    /// The next message, waiting at most `wait`. Acks what it returns (or
    /// batches the acks) as the protocol wants.
    fn receive(&mut self, wait: Duration) -> impl Future<Output = Next> + Send;

    /// Ends the run: settles what is unacknowledged and closes or deletes
    /// what [`Route::consume`] made for it.
    fn close(self) -> impl Future<Output = Closed>;
}

/// The publishing side of one run. It runs on a thread of its own with a
/// current-thread runtime (see [`publish_on_own_thread`]); what a protocol's
/// client spawns there runs on that thread.
pub trait Publisher: Send + 'static {
    /// Set-up that needs the publishing thread's runtime (a task it
    /// spawns), before the first publish.
    fn start(&mut self) -> impl Future<Output = ()> {
        async {}
    }

    /// Hands one message to the broker, waiting where the protocol's flow
    /// control says so (a window of unconfirmed publishes); `false` stops
    /// the run's publishing, with why in `out`.
    fn publish(&mut self, payload: Vec<u8>, out: &mut Published) -> impl Future<Output = bool>;

    /// Waits for the confirms still due (at most [`RUN_DEADLINE`]) and sets
    /// `out.confirmed`.
    fn finish(self, out: &mut Published) -> impl Future<Output = ()>;
}

/// What a run's publishing did.
#[derive(Default)]
pub struct Published {
    /// Handed to the publisher.
    pub sent: u64,
    /// Confirmed (kept) by the broker: what must arrive.
    pub confirmed: u64,
    /// Confirmed but returned as unroutable (AMQP's mandatory publish).
    pub returned: u64,
    /// Refused by the broker.
    pub nacked: u64,
    /// Publishes or confirms that failed.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Publishing gave up waiting for room in a window.
    pub stalled: bool,
}

impl Published {
    /// Counts an error, keeping the first one's text.
    pub fn error(&mut self, error: impl Display) {
        self.errors += 1;
        self.first_error.get_or_insert_with(|| error.to_string());
    }
}

/// How a run publishes.
#[derive(Clone, Copy)]
pub enum Mode {
    /// As fast as the publisher goes (within its own flow control, if any).
    Burst,
    /// At this many messages per second.
    Paced(u64),
    /// As fast as possible with at most this many published but not yet
    /// received (closed loop: the rate the path sustains).
    Window(u64),
}

/// When a run ends.
#[derive(Clone, Copy)]
pub struct Timing {
    /// Time with no message, once publishing is done, after which a run
    /// ends (and counts what did not arrive as lost).
    pub quiet: Duration,
    /// How long consuming goes on once every message arrived, to count
    /// duplicates that come late.
    pub linger: Duration,
}

/// What one measured run of one path gave.
#[derive(Default)]
pub struct Outcome {
    pub sent: u64,
    pub confirmed: u64,
    pub returned: u64,
    pub nacked: u64,
    /// Publishes, confirms, acks or consuming that failed.
    pub errors: u64,
    pub first_error: Option<String>,
    /// Distinct messages of this run received.
    pub received: u64,
    pub duplicates: u64,
    /// Deliveries flagged redelivered by the broker.
    pub redelivered: u64,
    /// Messages of another run (or not ours) that showed up in this one.
    pub stale: u64,
    /// From the first publish to the last message received.
    pub elapsed: Duration,
    /// From the first publish to the last confirm (or final flush).
    pub publish_elapsed: Duration,
    /// Latencies in ns, sorted.
    pub latencies: Vec<u64>,
    /// The run hit a deadline (or a window that never reopened).
    pub timed_out: bool,
    /// The consumer's note (see [`Closed::note`]).
    pub note: Option<String>,
}

impl Outcome {
    pub fn lost(&self) -> u64 {
        self.confirmed.saturating_sub(self.received)
    }

    pub fn rate(&self) -> f64 {
        per_second(self.received, self.elapsed)
    }

    /// Confirmed publishes per second of publishing.
    pub fn publish_rate(&self) -> f64 {
        self.confirmed as f64 / self.publish_elapsed.as_secs_f64().max(1e-9)
    }

    pub fn percentile_us(&self, p: f64) -> f64 {
        percentile_us(&self.latencies, p)
    }

    /// What broke the run or the promise that everything confirmed
    /// arrives, listed; losses left out where `loss_ok` (core NATS drops
    /// what a slow consumer cannot take).
    pub fn problems(&self, loss_ok: bool) -> Vec<String> {
        let mut p = Vec::new();
        if self.lost() > 0 && !loss_ok {
            p.push(format!("{} lost", self.lost()));
        }
        if self.returned > 0 {
            p.push(format!("{} returned unroutable", self.returned));
        }
        if self.nacked > 0 {
            p.push(format!("{} nacked", self.nacked));
        }
        if self.errors > 0 {
            p.push(format!(
                "{} errors (first: {})",
                self.errors,
                self.first_error.as_deref().unwrap_or("?")
            ));
        }
        if self.confirmed + self.returned + self.nacked + self.errors < self.sent {
            p.push("unconfirmed publishes".to_owned());
        }
        if self.timed_out {
            p.push("timed out".to_owned());
        }
        p
    }
}

/// A tag for each run, so that messages of one run are never counted in
/// another.
pub fn next_tag() -> u64 {
    static TAG: AtomicU64 = AtomicU64::new(1);
    TAG.fetch_add(1, Ordering::Relaxed)
}

/// Publishes `count` messages of `size` bytes on `route` as `mode` says and
/// counts what arrives until all did, or nothing did for `timing.quiet`
/// once publishing is done.
pub async fn measure<R: Route>(
    route: &R,
    count: u64,
    size: usize,
    mode: Mode,
    timing: Timing,
) -> Outcome {
    let tag = next_tag();
    let consumer = route.consume(tag).await;
    let publisher = route.publisher(tag);
    let done = Arc::new(AtomicBool::new(false));
    let received = Arc::new(AtomicU64::new(0));
    let started = now_ns();
    let consuming = tokio::spawn(consume(
        consumer,
        tag,
        count,
        timing,
        done.clone(),
        received.clone(),
    ));
    let publishing = publish_on_own_thread(done, move || {
        publish(publisher, tag, count, size, mode, received)
    });
    let (published, publish_elapsed) = tokio::time::timeout(RUN_DEADLINE * 2, publishing)
        .await
        .expect("publishing timed out")
        .expect("publisher thread failed");
    let (consumer, tally) = tokio::time::timeout(
        RUN_DEADLINE + timing.quiet + timing.linger + POLL * 10,
        consuming,
    )
    .await
    .expect("consumer timed out")
    .expect("consumer task failed");
    let closed = consumer.close().await;

    let mut out = Outcome {
        sent: published.sent,
        confirmed: published.confirmed,
        returned: published.returned,
        nacked: published.nacked,
        errors: published.errors,
        first_error: published.first_error,
        received: tally.received,
        duplicates: tally.duplicates,
        redelivered: tally.redelivered,
        stale: tally.stale,
        elapsed: Duration::from_nanos(tally.last_ns.saturating_sub(started)),
        publish_elapsed,
        latencies: tally.latencies,
        timed_out: published.stalled || tally.timed_out,
        note: closed.note,
    };
    for error in [tally.error, closed.error].into_iter().flatten() {
        out.errors += 1;
        out.first_error.get_or_insert(error);
    }
    out.latencies.sort_unstable();
    out
}

/// Publishes run `tag`'s `count` messages; what it did and how long it took
/// (to the last confirm).
pub async fn publish<P: Publisher>(
    mut publisher: P,
    tag: u64,
    count: u64,
    size: usize,
    mode: Mode,
    received: Arc<AtomicU64>,
) -> (Published, Duration) {
    let mut out = Published::default();
    publisher.start().await;
    let t0 = Instant::now();
    'publish: for seq in 0..count {
        match mode {
            Mode::Burst => {}
            Mode::Paced(rate) => pace(t0, rate, seq),
            Mode::Window(window) => {
                let waiting = Instant::now();
                while seq.saturating_sub(received.load(Ordering::Acquire)) >= window {
                    if waiting.elapsed() > READY_TIMEOUT {
                        out.stalled = true;
                        break 'publish;
                    }
                    std::thread::sleep(Duration::from_micros(50));
                }
            }
        }
        out.sent += 1;
        let payload = stamped_payload(seq, &tag.to_le_bytes(), size);
        if !publisher.publish(payload, &mut out).await {
            break;
        }
    }
    publisher.finish(&mut out).await;
    (out, t0.elapsed())
}

/// What the consumer counted.
#[derive(Default)]
struct Tally {
    /// By sequence number: whether it arrived.
    seen: Vec<bool>,
    received: u64,
    duplicates: u64,
    redelivered: u64,
    stale: u64,
    /// When the last new message arrived ([`now_ns`]).
    last_ns: u64,
    latencies: Vec<u64>,
    timed_out: bool,
    error: Option<String>,
}

impl Tally {
    fn record(&mut self, tag: u64, at: u64, payload: &[u8], redelivered: bool) {
        self.redelivered += u64::from(redelivered);
        let stamp = read_stamp(payload).filter(|_| read_tag(payload) == Some(tag));
        let Some((sent, seq)) = stamp else {
            self.stale += 1;
            return;
        };
        match self.seen.get_mut(seq as usize) {
            Some(seen) if !*seen => {
                *seen = true;
                self.received += 1;
                self.latencies.push(at.saturating_sub(sent));
                self.last_ns = at;
            }
            _ => self.duplicates += 1,
        }
    }
}

/// Counts what run `tag` receives until all `count` arrived (and
/// `timing.linger` passed), the consumer ends, or nothing came for
/// `timing.quiet` once `done` is set; `received` follows the count for the
/// publisher's window.
async fn consume<C: Consumer>(
    mut consumer: C,
    tag: u64,
    count: u64,
    timing: Timing,
    done: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
) -> (C, Tally) {
    let mut tally = Tally {
        seen: vec![false; count as usize],
        latencies: Vec::with_capacity(count as usize),
        ..Tally::default()
    };
    let deadline = Instant::now() + RUN_DEADLINE;
    let mut idle_since = Instant::now();
    let mut complete: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now > deadline {
            tally.timed_out = true;
            break;
        }
        let wait = match complete {
            Some(at) if now >= at + timing.linger => break,
            Some(at) => (at + timing.linger - now).min(POLL),
            None => POLL,
        };
        match consumer.receive(wait).await {
            Next::Message {
                at,
                payload,
                redelivered,
            } => {
                idle_since = Instant::now();
                tally.record(tag, at, &payload, redelivered);
                received.store(tally.received, Ordering::Release);
                if tally.received == count && complete.is_none() {
                    complete = Some(Instant::now());
                }
            }
            Next::Idle => {
                if done.load(Ordering::Acquire) && idle_since.elapsed() >= timing.quiet {
                    break;
                }
            }
            Next::Ended(why) => {
                tally.error = Some(why);
                break;
            }
        }
    }
    (consumer, tally)
}

/// Sends single messages until one makes it through `path`, then a burst
/// of 2,000 to warm connections and caches; `Err` when the path does not
/// work.
pub async fn warm_up<R: Route>(path: &Path<R>, size: usize, timing: Timing) -> Result<(), String> {
    let route = &path.route;
    let probe_timing = Timing {
        quiet: Duration::from_millis(500),
        linger: Duration::ZERO,
    };
    let deadline = Instant::now() + READY_TIMEOUT * 2;
    loop {
        let probe = measure(route, 1, size, Mode::Burst, probe_timing).await;
        if probe.received == 1 {
            let note = probe.note.map(|n| format!("; {n}")).unwrap_or_default();
            eprintln!("[{}] path works{note}", path.name);
            break;
        }
        if probe.errors > 0 || probe.returned > 0 || probe.nacked > 0 {
            let problems = probe.problems(false).join(", ");
            return Err(format!("probe message failed: {problems}"));
        }
        if Instant::now() > deadline {
            return Err(format!(
                "nothing arrives through it within {:?}",
                READY_TIMEOUT * 2
            ));
        }
    }
    let burst = measure(route, 2_000, size, Mode::Burst, timing).await;
    let problems = burst.problems(false);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(format!("warm-up burst: {}", problems.join(", ")))
    }
}
