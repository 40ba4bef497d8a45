//! What an agent does on an instance's broker rather than in the
//! directory: prepares its inbox before registering it, follows what its
//! consumer refuses, and shows it in the broker's own service discovery.
//! Each is retried with backoff until the broker takes it, its first
//! failure logged once.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use baker_adapter_api::{Announced, Backoff, Endpoint};

use crate::adapters::AdapterRegistry;
use crate::directory::InstanceRecord;

/// Where `record`'s inbox is.
pub(super) fn endpoint_of(record: &InstanceRecord) -> Endpoint {
    Endpoint {
        adapter: record.endpoint.adapter.clone(),
        broker: record.endpoint.broker.clone(),
        inbox: record.endpoint.inbox.clone(),
    }
}

/// Runs `attempt` until it succeeds, waiting with backoff (from 200 ms up to
/// `max`) between tries; the first failure is logged as failing to `what`
/// for instance `id` of `service`.
async fn until_taken<T, E: Display, F: Future<Output = Result<T, E>>>(
    (service, id): (&str, &str),
    what: &str,
    max: Duration,
    mut attempt: impl FnMut() -> F,
) -> T {
    let mut backoff = Backoff::new(Duration::from_millis(200), max);
    let mut reported = false;
    loop {
        match attempt().await {
            Ok(taken) => return taken,
            Err(error) => {
                if !reported {
                    tracing::warn!(%service, %id, %error, "cannot {what}; retrying");
                    reported = true;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Creates what the instance's inbox needs on its broker (an AMQP queue, for
/// instance), retrying until it succeeds: registering an instance whose inbox
/// does not exist would send its messages nowhere.
pub(super) async fn prepare_inbox(
    adapters: &AdapterRegistry,
    record: &InstanceRecord,
    prefix: &str,
) {
    // Config validation refuses unknown adapters; an adapter without
    // provisioning needs nothing.
    let Some(adapter) = (adapters.get(&record.endpoint.adapter)).and_then(|a| a.provisioning())
    else {
        return;
    };
    let endpoint = endpoint_of(record);
    let what = "prepare the instance's inbox before registering it";
    until_taken(
        (&record.service, &record.id),
        what,
        Duration::from_secs(10),
        || adapter.prepare_inbox(&endpoint, &record.metadata, prefix),
    )
    .await;
}

/// Shows `announced` in its broker's own service discovery, retrying with
/// backoff until the broker takes it, then holds it until aborted. Nothing
/// to do where the adapter has no such discovery.
pub(super) async fn announce(adapters: AdapterRegistry, announced: Announced) {
    let Some(announcing) = (adapters.get(&announced.endpoint.adapter)).and_then(|a| a.announcing())
    else {
        return;
    };
    let what = "show the instance in its broker's service discovery";
    let who = (announced.service.as_str(), announced.id.as_str());
    let _announcement = until_taken(who, what, Duration::from_secs(30), || {
        announcing.announce(announced.clone())
    })
    .await;
    std::future::pending().await
}

/// Keeps what `record`'s inbox needs while it is registered (see
/// `Provisioning::follow_inbox`), retrying with backoff until the broker
/// takes it, then holds it until aborted.
pub(super) async fn follow_inbox(adapters: AdapterRegistry, record: InstanceRecord) {
    let Some(provisioning) =
        (adapters.get(&record.endpoint.adapter)).and_then(|a| a.provisioning())
    else {
        return;
    };
    let endpoint = endpoint_of(&record);
    let what = "follow the instance's inbox for what its consumer refuses";
    let following = until_taken(
        (&record.service, &record.id),
        what,
        Duration::from_secs(30),
        || provisioning.follow_inbox(&endpoint, &record.service),
    )
    .await;
    if let Some(_following) = following {
        std::future::pending().await
    }
}
