//! One send of a journey to one instance: through the reply proxy where a
//! request needs it, then counted, with the instance ejected after failures
//! in a row and readmitted after its ejection; and the send of a shadow
//! copy once its original is settled.

use std::sync::atomic::Ordering;

use baker_adapter_api::{Destination, Message, SendError};

use super::journey::Journey;
use super::outlier::Transition;
use super::reply::ReplyProxy;
use super::shadow::ShadowCopy;
use super::table::InstanceRoute;

impl Journey {
    /// Sends `message` to `instance`, counting the result.
    pub(super) async fn send(
        &self,
        instance: &InstanceRoute,
        destination: &Destination,
        message: &Message,
    ) -> Result<(), SendError> {
        let stats = &instance.stats;
        if self.traces.is_some() {
            crate::traces::sending(&instance.record.id);
        }
        stats.outstanding.fetch_add(1, Ordering::Relaxed);
        let result = match self.proxy_for(instance, message) {
            Some(proxy) => Box::pin(send_proxied(proxy, instance, destination, message)).await,
            None => instance.target.send(destination, message).await,
        };
        stats.outstanding.fetch_sub(1, Ordering::Relaxed);
        self.sent(instance, &result);
        result
    }

    /// Sends `copy` to one of its shadow instances, once; counts what
    /// became of it.
    pub(super) async fn send_shadow(&self, copy: Box<ShadowCopy>) {
        let (Some(route), Some(instance)) = (copy.route(), copy.instance()) else {
            return;
        };
        let sent = self.send(instance, &copy.destination, &copy.message).await;
        route.count(sent.is_ok());
    }

    /// Counts a send's result for `instance` and ejects or readmits it.
    pub(super) fn sent(&self, instance: &InstanceRoute, result: &Result<(), SendError>) {
        let stats = &instance.stats;
        let transition = match result {
            Ok(()) => {
                stats.delivered();
                if let Some(crossed) = &instance.crossed {
                    crossed.increment(1);
                }
                stats.outlier.succeeded()
            }
            // The message's fault, not the instance's.
            Err(SendError::Rejected(_)) => {
                stats.failed();
                Transition::None
            }
            Err(_) => {
                stats.failed();
                stats.outlier.failed(&self.config.outlier)
            }
        };
        match transition {
            Transition::None => {}
            Transition::Ejected(length) => {
                stats.ejected();
                tracing::warn!(service = %instance.record.service, id = %instance.record.id,
                    failures = self.config.outlier.consecutive_failures, ejection_secs = length.as_secs_f64(),
                    "instance ejected from routing after failed sends in a row");
            }
            Transition::Recovered => {
                tracing::info!(service = %instance.record.service, id = %instance.record.id,
                    "instance takes messages again after its ejection");
            }
        }
    }

    /// The reply proxy, when `message` is a request that `instance` cannot
    /// answer directly because it is on another broker than the requester.
    pub(super) fn proxy_for(
        &self,
        instance: &InstanceRoute,
        message: &Message,
    ) -> Option<&ReplyProxy> {
        let proxy = self.replies.as_deref()?;
        let endpoint = &instance.record.endpoint;
        (message.reply_to.is_some() && proxy.needed_for(&endpoint.adapter, &endpoint.broker))
            .then_some(proxy)
    }
}

/// Sends a request with its reply address pointed at the router's proxy.
async fn send_proxied(
    proxy: &ReplyProxy,
    instance: &InstanceRoute,
    destination: &Destination,
    message: &Message,
) -> Result<(), SendError> {
    let endpoint = &instance.record.endpoint;
    let stamped = proxy
        .stamp(&endpoint.adapter, &endpoint.broker, message)
        .await?;
    let sent = instance.target.send(destination, &stamped.message).await;
    if sent.is_err() {
        proxy.forget(stamped);
    }
    sent
}
