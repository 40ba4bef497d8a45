//! The demo's story, step by step: discovery, a failing health check, a
//! canary, the rollout, the drain of v1, with messages flowing throughout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use baker_adapter_api::{Adapter, Destination, Topic};
use tokio::task::JoinHandle;

use super::display::{self, Display};
use super::instances::Fleet;
use super::publisher::Publisher;
use super::{DemoError, DemoOptions};
use crate::directory::DirectoryClient;
use crate::sidecar::RouterParts;

/// Everything the story acts on.
pub(super) struct Demo {
    pub(super) fleet: Fleet,
    pub(super) client: DirectoryClient,
    pub(super) router: RouterParts,
    pub(super) service: String,
    /// Messages the broker took from the publisher.
    pub(super) sent: Arc<AtomicU64>,
    pub(super) display: Display,
}

/// Where the publisher publishes.
pub(super) struct Traffic {
    pub(super) adapter: Arc<dyn Adapter>,
    pub(super) broker: String,
    pub(super) prefix: String,
}

const V1: [&str; 3] = ["greeter-v1-a", "greeter-v1-b", "greeter-v1-c"];

impl Demo {
    /// Tells the story; returns how many messages the broker took from the
    /// publisher and how many it refused.
    pub(super) async fn tell(
        &mut self,
        options: &DemoOptions,
        traffic: Traffic,
    ) -> Result<(u64, u64), DemoError> {
        // 1. Discovery: three v1 instances register and share the load.
        for id in V1 {
            self.fleet.add(id, "1", 30, true).await?;
        }
        let title = "1/6 discovery: three v1 instances register; the router finds them";
        self.wait_routed(&V1, title).await?;
        self.wait_subscribed(&traffic.broker).await?;
        let publisher = Publisher::start(
            traffic.adapter,
            traffic.broker,
            traffic.prefix,
            Destination {
                service: self.service.clone(),
                topic: Topic::new("hello", '.'),
            },
            options.rate,
            self.sent.clone(),
        );
        self.step(options.phase, title).await;

        // 2. Health: one v1 instance fails its check; its share moves.
        let title =
            "2/6 health: greeter-v1-b fails its health check; its share moves to the others";
        self.fleet.set_healthy("greeter-v1-b", false);
        self.wait_routed(&["greeter-v1-a", "greeter-v1-c"], title)
            .await?;
        self.step(options.phase, title).await;
        self.fleet.set_healthy("greeter-v1-b", true);
        let title = "   greeter-v1-b passes again and takes its share back";
        self.wait_routed(&V1, title).await?;
        self.step(options.phase / 2, title).await;

        // 3. Canary: v2 joins with a tenth of the weight.
        let title =
            "3/6 canary: greeter-v2-a (v2) joins with weight 10 against 3 x 30: 10% of traffic";
        self.fleet.add("greeter-v2-a", "2", 10, false).await?;
        let with_canary = [V1[0], V1[1], V1[2], "greeter-v2-a"];
        self.wait_routed(&with_canary, title).await?;
        let before = self.counts();
        self.run_for(options.phase * 2, title).await;
        let during: Vec<u64> = (self.counts().iter().zip(&before))
            .map(|(now, before)| now - before)
            .collect();
        let canary_share = during[3] as f64 / during.iter().sum::<u64>().max(1) as f64;
        self.refresh(title, true);
        println!(
            "   the canary took {:.1}% of this step's messages\n",
            100.0 * canary_share
        );

        // 4. Rollout: more v2, and the canary promoted to a full weight.
        let title = "4/6 rollout: greeter-v2-b and -c join; the canary is promoted to weight 30 in the directory";
        self.fleet.add("greeter-v2-b", "2", 30, false).await?;
        self.fleet.add("greeter-v2-c", "2", 30, false).await?;
        let all = [
            V1[0],
            V1[1],
            V1[2],
            "greeter-v2-a",
            "greeter-v2-b",
            "greeter-v2-c",
        ];
        self.wait_routed(&all, title).await?;
        self.promote("greeter-v2-a", 30).await?;
        self.step(options.phase, title).await;

        // 5. Drain: v1 leaves one instance at a time, losing nothing.
        let title = "5/6 drain: each v1 instance is marked draining, empties its inbox, and leaves";
        for id in V1 {
            self.drain(id, title).await;
        }
        self.step(options.phase / 2, title).await;

        // 6. Done: v2 alone; stop publishing and let the last messages land.
        let title = "6/6 done: v2 serves alone; publishing stops";
        self.run_for(options.phase / 2, title).await;
        let (sent, refused) = publisher.stop().await;
        let settle = Instant::now() + Duration::from_secs(10);
        while self.fleet.distinct() < sent && Instant::now() < settle {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.refresh(title, true);
        Ok((sent, refused))
    }

    /// Each instance's count so far.
    fn counts(&self) -> Vec<u64> {
        (self.fleet.instances.iter())
            .map(|i| i.received.load(Ordering::Relaxed))
            .collect()
    }

    /// Waits until the router routes to exactly `ids`.
    async fn wait_routed(&mut self, ids: &[&str], title: &str) -> Result<(), DemoError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut want: Vec<String> = ids.iter().map(|s| s.to_string()).collect();
        want.sort();
        loop {
            let table = self.router.table.load();
            let mut routed: Vec<String> = table
                .service(&self.service)
                .map(|s| s.instances.iter().map(|i| i.record.id.clone()).collect())
                .unwrap_or_default();
            routed.sort();
            if routed == want {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(DemoError::Setup(format!(
                    "{title}: the router routes to {routed:?}, not {want:?}, after 10 s"
                )));
            }
            self.refresh(title, false);
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the router's ingress is subscribed on `broker`.
    async fn wait_subscribed(&self, broker: &str) -> Result<(), DemoError> {
        let ready = Instant::now() + Duration::from_secs(20);
        while !self.router.ingress.is_subscribed() {
            if Instant::now() > ready {
                return Err(DemoError::Setup(format!(
                    "the router could not subscribe to the ingress on {} within 20 s",
                    baker_adapter_api::redact_url(broker)
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Gives instance `id` another weight in the directory.
    async fn promote(&self, id: &str, weight: u32) -> Result<(), DemoError> {
        let table = self.router.table.load();
        let Some(mut record) = (table.catalog.instances.iter())
            .find(|r| r.service == self.service && r.id == id)
            .cloned()
        else {
            return Ok(());
        };
        record.weight = weight;
        (self.client.register(&record).await)
            .map_err(|error| DemoError::Setup(format!("promoting {id}: {error}")))
    }

    /// Lets traffic flow for `length`, then prints the step's table.
    async fn step(&mut self, length: Duration, title: &str) {
        self.run_for(length, title).await;
        self.refresh(title, true);
    }

    /// Lets traffic flow for `length`, redrawing the table.
    async fn run_for(&mut self, length: Duration, title: &str) {
        let end = Instant::now() + length;
        while Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.refresh(title, false);
        }
    }

    /// Drains an instance (its agent marks it draining, waits for its inbox
    /// to empty, deregisters it), then stops it.
    async fn drain(&mut self, id: &str, title: &str) {
        let mut agent = self.fleet.begin_drain(id);
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.refresh(title, false);
            if agent.as_ref().is_none_or(JoinHandle::is_finished) {
                break;
            }
        }
        if let Some(agent) = agent.take() {
            let _ = agent.await;
        }
        self.fleet.finish_drain(id).await;
    }

    /// Redraws the table.
    fn refresh(&mut self, title: &str, step_done: bool) {
        let table = self.router.table.load_full();
        display::update_rates(&mut self.fleet.instances);
        let text = display::render(
            title,
            &self.service,
            &self.fleet.instances,
            &table,
            self.sent.load(Ordering::Relaxed),
            self.fleet.distinct(),
        );
        self.display.show(&text, step_done);
    }
}
