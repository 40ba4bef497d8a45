//! A rolling upgrade on RabbitMQ with instances that consume the way real
//! applications do (a prefetch, acks, a slow moment as the drain begins):
//! each drain waits out the instance's backlog, so nothing is stranded.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const TEST_TIMEOUT: Duration = Duration::from_secs(120);

/// An instance's application on RabbitMQ: consumes its inbox queue with a
/// prefetch of 20 and acks each message, can be slowed down, and stops the
/// way a well-behaved consumer does (cancel, finish what it holds).
struct InstanceApp {
    _connection: lapin::Connection,
    channel: lapin::Channel,
    queue: String,
    /// The consumer's tag, to cancel it.
    tag: lapin::types::ShortString,
    paused: Arc<AtomicBool>,
    finished: tokio::task::JoinHandle<()>,
}

impl InstanceApp {
    async fn start(vhost: &common::amqp::Vhost, queue: &str) -> (Inbox, InstanceApp) {
        use futures::StreamExt;
        let (connection, channel) = vhost.channel().await;
        common::amqp::declare_queue(&channel, queue).await;
        channel.basic_qos(20, Default::default()).await.unwrap();
        let mut consumer = common::amqp::consumer(&channel, queue).await;
        let tag = consumer.tag();
        let inbox = Inbox::default();
        let paused = Arc::new(AtomicBool::new(false));
        let (received, hold) = (inbox.received.clone(), paused.clone());
        let finished = tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                while hold.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                let seq = std::str::from_utf8(&delivery.data)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(u64::MAX);
                received.lock().unwrap().push((seq, Instant::now()));
                delivery.ack(Default::default()).await.unwrap();
            }
        });
        let app = InstanceApp {
            _connection: connection,
            channel,
            queue: queue.to_owned(),
            tag,
            paused,
            finished,
        };
        (inbox, app)
    }

    fn pause_for(&self, pause: Duration) {
        self.paused.store(true, Ordering::Relaxed);
        let paused = self.paused.clone();
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            paused.store(false, Ordering::Relaxed);
        });
    }

    /// Stops consuming, finishes the messages already delivered, and
    /// returns how many are left in the queue.
    async fn stop(&self) -> u32 {
        self.channel
            .basic_cancel(self.tag.clone(), Default::default())
            .await
            .unwrap();
        while !self.finished.is_finished() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.channel
            .queue_declare(
                self.queue.as_str().into(),
                lapin::options::QueueDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                Default::default(),
            )
            .await
            .unwrap()
            .message_count()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_amqp_rolling_upgrade_under_load_loses_nothing() {
    use common::amqp::{self, Vhost};

    bounded(TEST_TIMEOUT, async {
        let vhost = Vhost::create();
        let dir = Directory::start().await;
        let (_conn, channel) = vhost.channel().await;
        let url = vhost.url();
        let mut inboxes = Vec::new();
        let mut v1_apps = Vec::new();
        for i in 0..3 {
            let (inbox, app) = InstanceApp::start(&vhost, &format!("_baker.up.v1-{i}")).await;
            inboxes.push(inbox);
            v1_apps.push(app);
        }
        for id in ["v2-0", "v2-1", "v2-2"] {
            inboxes.push(amqp::consume(&channel, &format!("_baker.up.{id}")).await.0);
        }
        let mut v1_agents: Vec<Proc> = (0..3)
            .map(|i| {
                agent_registering(
                    "amqp",
                    &url,
                    &dir.url(),
                    &format!("service=up,id=v1-{i},version=1"),
                )
            })
            .collect();
        let router = Router::spawn(&dir.url(), &["--adapter", "amqp", "--broker", &url]).await;
        router
            .wait_routed("up", &["v1-0", "v1-1", "v1-2"], Duration::from_secs(15))
            .await;

        let traffic = {
            let channel = channel.clone();
            SteadyTraffic::start(move |start, count| {
                let channel = channel.clone();
                async move { amqp::publish(&channel, "baker", "up.work", start, count, 50).await }
            })
        };

        let _v2_agents: Vec<Proc> = (0..3)
            .map(|i| {
                agent_registering(
                    "amqp",
                    &url,
                    &dir.url(),
                    &format!("service=up,id=v2-{i},version=2"),
                )
            })
            .collect();
        router
            .wait_routed(
                "up",
                &["v1-0", "v1-1", "v1-2", "v2-0", "v2-1", "v2-2"],
                Duration::from_secs(15),
            )
            .await;
        tokio::time::sleep(Duration::from_secs(1)).await;

        // Drain and stop v1, one instance at a time.
        let mut cutoffs = Vec::new();
        for (i, (agent, app)) in v1_agents.iter_mut().zip(&v1_apps).enumerate() {
            let id = format!("v1-{i}");
            // The instance is slow for a moment as its drain begins, so its
            // inbox holds a backlog that the drain has to wait out.
            app.pause_for(Duration::from_millis(1500));
            cutoffs.push(begin_drain(&router, "up", &id, agent, &traffic).await);
            assert_eq!(
                agent.terminate(Duration::from_secs(40)),
                Some(0),
                "{id}'s agent drains and exits 0: {}",
                agent.log_text()
            );
            assert!(
                agent.log_text().contains("drained: the inbox is empty"),
                "{}",
                agent.log_text()
            );
            // Drained and deregistered: the instance finishes what it holds
            // and exits. Anything still in its queue now would be stranded.
            let stranded = app.stop().await;
            assert_eq!(stranded, 0, "{id}'s inbox was empty when it left");
        }
        let after_v1 = traffic.published();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let total = traffic.stop().await;
        let all: Vec<&Inbox> = inboxes.iter().collect();
        let duplicates = assert_rolling_upgrade(&all, &all[..3], &cutoffs, total).await;
        let to_v2_after: usize = inboxes[3..]
            .iter()
            .map(|inbox| inbox.seqs().iter().filter(|s| **s >= after_v1).count())
            .sum();
        assert!(
            to_v2_after as u64 >= total - after_v1,
            "everything after the last v1 drained went to v2"
        );
        eprintln!("rolling upgrade: {total} messages, none lost, {duplicates} delivered twice");
    })
    .await;
}
