//! A cap on log lines that clients can cause at will (a reset HTTP/2 stream, a dropped
//! connection): a few per second are written, the rest are counted and reported in one
//! line, so an attacker cannot fill the disk through the error log.

use crate::clock;
use std::sync::atomic::{AtomicU64, Ordering};

pub struct LogBudget {
    per_second: u64,
    /// The second the count is for, and how many lines were allowed in it.
    second: AtomicU64,
    used: AtomicU64,
    suppressed: AtomicU64,
}

impl LogBudget {
    pub const fn new(per_second: u64) -> Self {
        LogBudget {
            per_second,
            second: AtomicU64::new(0),
            used: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether one more line may be written now. The first allowed line of a second first
    /// reports how many were left out before it.
    pub fn allow(&self, what: &str) -> bool {
        self.allow_at(clock::now_ms() / 1000, what)
    }

    fn allow_at(&self, now: u64, what: &str) -> bool {
        let second = self.second.load(Ordering::Relaxed);
        if now != second
            && self
                .second
                .compare_exchange(second, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.used.store(0, Ordering::Relaxed);
            let left_out = self.suppressed.swap(0, Ordering::Relaxed);
            if left_out > 0 {
                log::warn!(
                    "{left_out} more {what} were not logged (at most {} a second)",
                    self.per_second
                );
            }
        }
        if self.used.fetch_add(1, Ordering::Relaxed) < self.per_second {
            return true;
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_few_a_second() {
        let b = LogBudget::new(3);
        let allowed = (0..100).filter(|_| b.allow_at(10, "x")).count();
        assert_eq!(allowed, 3);
        assert_eq!(b.suppressed.load(Ordering::Relaxed), 97);
        assert!(b.allow_at(11, "x"));
        assert_eq!(b.suppressed.load(Ordering::Relaxed), 0);
    }
}
