//! One delivery's attempts: which instance the next one goes to, what the
//! failed ones said, and the `baker-attempt` header.

use baker_adapter_api::{HeaderText, SendError};

use super::table::InstanceRoute;
use super::undelivered::{Cause, Failure};

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

/// The `baker-attempt` value; small numbers are constants, so the first
/// attempt allocates nothing.
pub(super) fn attempt_text(attempt: u32) -> HeaderText {
    const SMALL: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];
    match SMALL.get(attempt as usize) {
        Some(text) => HeaderText::Borrowed(text),
        None => HeaderText::Owned(attempt.to_string()),
    }
}
