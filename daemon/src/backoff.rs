//! Requeue delays for controllers whose apply failed for a reason a retry
//! can fix (a map or netlink error), in the way kube-runtime's controllers
//! requeue: doubling from a floor to a ceiling, reset by a clean apply.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    pub fn new(min: Duration, max: Duration) -> Self {
        Self { min, max, next: min }
    }

    /// The controllers' default: 200 ms doubling to 30 s.
    pub fn controller() -> Self {
        Self::new(Duration::from_millis(200), Duration::from_secs(30))
    }

    /// After a failure: how long to wait before the retry.
    pub fn failed(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(self.max);
        wait
    }

    /// After a clean apply: the next failure waits the floor again.
    pub fn succeeded(&mut self) {
        self.next = self.min;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_ceiling_and_resets_on_success() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(500));
        let waits: Vec<u128> = (0..5).map(|_| b.failed().as_millis()).collect();
        assert_eq!(waits, [100, 200, 400, 500, 500]);
        b.succeeded();
        assert_eq!(b.failed(), Duration::from_millis(100));
    }
}
