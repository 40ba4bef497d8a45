//! One delivery's attempts: which instance the next one goes to, what the
//! failed ones said, and the `baker-attempt` header.

use baker_adapter_api::{HeaderText, SendError};

use super::journey::Failure;
use super::policy::PolicyKind;
use super::table::{InstanceRoute, ServiceRoute};
use super::undelivered::Cause;

/// What the failed attempts of one delivery said.
pub(super) struct FailedAttempts {
    /// The last failure, as `instance: reason`.
    last_error: String,
    /// Every failure was an unreachable broker (the message goes back to the
    /// ingress rather than to the dead letters).
    only_unreachable: bool,
}

impl Default for FailedAttempts {
    fn default() -> Self {
        Self {
            last_error: String::new(),
            only_unreachable: true,
        }
    }
}

impl FailedAttempts {
    /// Records a failed send; a rejection ends the delivery at once, since
    /// any other instance would refuse the message as well.
    pub(super) fn record(
        &mut self,
        instance: &InstanceRoute,
        error: SendError,
        attempt: u32,
    ) -> Result<(), Failure> {
        let reason = match error {
            SendError::Rejected(reason) => {
                return Err(Failure::new(
                    Cause::Rejected,
                    format!("rejected by {}: {reason}", instance.record.id),
                    attempt,
                ))
            }
            SendError::Unavailable(reason) => {
                self.only_unreachable = false;
                reason.to_string()
            }
            SendError::Unreachable(reason) => reason.to_string(),
        };
        self.last_error = format!("{}: {reason}", instance.record.id);
        Ok(())
    }

    /// The failure once every attempt failed.
    pub(super) fn exhausted(self, what: String, attempts: u32) -> Failure {
        let cause = if self.only_unreachable {
            Cause::Unreachable
        } else {
            Cause::Unavailable
        };
        Failure::new(
            cause,
            format!("{what}; last error from {}", self.last_error),
            attempts,
        )
    }
}

/// The first instance from `from` on (in ring order) that may take the
/// message: not ejected, and under the weighted policy not of weight 0 (a
/// retry must not reach an instance its policy never picks). If none may,
/// `from` itself: an ejected instance is still a better chance than none.
pub(super) fn admitted_from(service: &ServiceRoute, from: usize) -> usize {
    let n = service.instances.len();
    (0..n)
        .map(|k| (from + k) % n)
        .find(|&i| admits(service, &service.instances[i]))
        .unwrap_or(from % n)
}

/// Whether `instance` of `service` may take a message: not ejected, and
/// under the weighted policy not of weight 0.
pub(super) fn admits(service: &ServiceRoute, instance: &InstanceRoute) -> bool {
    let never_picked = service.kind == PolicyKind::Weighted && instance.record.weight == 0;
    !instance.stats.outlier.is_ejected() && !never_picked
}

/// The `baker-attempt` value; small numbers are constants, so the first
/// attempt allocates nothing.
pub(super) fn attempt_text(attempt: u32) -> HeaderText {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(attempt as usize) {
        Some(text) => HeaderText::Borrowed(text),
        None => HeaderText::Owned(attempt.to_string()),
    }
}
