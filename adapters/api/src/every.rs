//! Rate-limited events: a warning that could come once per message or per
//! request is logged at most once per period, with how many were held back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets an event through at most once per period and counts the others.
#[derive(Debug)]
pub struct Every {
    period: Duration,
    state: Mutex<(Option<Instant>, u64)>,
}

impl Every {
    /// At most once per `period`.
    pub const fn new(period: Duration) -> Self {
        Self {
            period,
            state: Mutex::new((None, 0)),
        }
    }

    /// `Some(held back)` when this event may be logged (with how many were
    /// held back since the last one that was), `None` when it is held back.
    pub fn check(&self) -> Option<u64> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (last, held) = &mut *state;
        match last {
            Some(at) if at.elapsed() < self.period => {
                *held += 1;
                None
            }
            _ => {
                *last = Some(Instant::now());
                Some(std::mem::take(held))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_event_passes_and_the_next_are_counted() {
        let every = Every::new(Duration::from_secs(60));
        assert_eq!(every.check(), Some(0));
        assert_eq!(every.check(), None);
        assert_eq!(every.check(), None);
        let now = Every::new(Duration::ZERO);
        assert_eq!(now.check(), Some(0));
        assert_eq!(now.check(), Some(0));
    }
}
