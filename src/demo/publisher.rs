//! The demo's application publishing to the service at a steady rate; each
//! message's payload is its sequence number, so the instances can tell what
//! arrived.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baker_adapter_api::{Adapter, Destination, Message};
use bytes::Bytes;
use tokio::task::JoinHandle;

use crate::shutdown::Shutdown;

/// Publishes until stopped.
pub(super) struct Publisher {
    stop: Shutdown,
    task: JoinHandle<()>,
    /// Messages the broker took.
    sent: Arc<AtomicU64>,
    /// Messages the broker refused at publish.
    refused: Arc<AtomicU64>,
}

impl Publisher {
    /// Starts publishing `rate` messages a second (at least 10) for
    /// `destination` to the ingress under `prefix` on `broker`, in batches
    /// every 10 ms, counting in `sent` what the broker took.
    pub(super) fn start(
        adapter: Arc<dyn Adapter>,
        broker: String,
        prefix: String,
        destination: Destination,
        rate: u64,
        sent: Arc<AtomicU64>,
    ) -> Self {
        let (stop, refused) = (Shutdown::new(), Arc::default());
        let task = {
            let (stop, sent, refused): (Shutdown, Arc<AtomicU64>, Arc<AtomicU64>) =
                (stop.clone(), Arc::clone(&sent), Arc::clone(&refused));
            tokio::spawn(async move {
                let Some(app) = adapter.app_client() else {
                    return;
                };
                let mut tick = tokio::time::interval(Duration::from_millis(10));
                let per_tick = (rate.max(10) / 100).max(1);
                let mut seq = 0u64;
                while stop.run_until(tick.tick()).await.is_some() {
                    let batch = (seq..seq + per_tick).map(|n| {
                        let message = Message {
                            payload: Bytes::from(n.to_string()),
                            ..Default::default()
                        };
                        let (broker, prefix, destination) = (&broker, &prefix, &destination);
                        async move {
                            app.publish_to_ingress(broker, prefix, destination, &message)
                                .await
                        }
                    });
                    seq += per_tick;
                    for result in futures::future::join_all(batch).await {
                        match result {
                            Ok(()) => sent.fetch_add(1, Ordering::Relaxed),
                            Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                }
            })
        };
        Self {
            stop,
            task,
            sent,
            refused,
        }
    }

    /// Stops publishing; returns how many messages the broker took and how
    /// many it refused.
    pub(super) async fn stop(self) -> (u64, u64) {
        self.stop.trigger();
        let _ = self.task.await;
        (
            self.sent.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed),
        )
    }
}
