//! Retries: which failed attempts a route tries again, the back-off between them, and the
//! upstream's budget that caps retries at a share of its traffic.

use super::failure::{Failure, FailureSet};
use super::window::RollingCounts;
use crate::config::{self, Fault};
use std::time::Duration;

pub struct RetryPolicy {
    /// Tries in all, the first included.
    pub attempts: usize,
    pub on: FailureSet,
    pub try_timeout: Option<Duration>,
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl RetryPolicy {
    /// What a route without a `retry` section does: a failed connect goes to another
    /// target at once, up to the upstream's `retries`.
    /// The upstream's `retries`, for routes without a `retry` section: refused connects
    /// on any method, dropped connections on idempotent ones.
    pub fn upstream_default(retries: usize) -> RetryPolicy {
        RetryPolicy {
            attempts: retries.saturating_add(1),
            on: FailureSet::CONNECT_AND_RESET,
            try_timeout: None,
            backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
        }
    }

    pub fn retries(&self, f: Failure) -> bool {
        self.on.contains(f)
    }

    /// The wait before retry `n` (1 for the first): "full jitter", a random share of
    /// `backoff` x 2^(n-1) capped at `max_backoff`, so clients that failed together do
    /// not come back together.
    pub fn backoff(&self, n: u32) -> Duration {
        if self.backoff.is_zero() {
            return Duration::ZERO;
        }
        let ceiling = self
            .backoff
            .saturating_mul(1 << n.saturating_sub(1).min(16))
            .min(self.max_backoff);
        let nanos = ceiling.as_nanos() as u64;
        Duration::from_nanos(crate::random::u64() % nanos.max(1))
    }
}

/// The budget is judged over this window.
pub const BUDGET_WINDOW_MS: u64 = 10_000;

pub struct RetryBudget {
    percent: u64,
    /// Retries the window allows whatever the traffic.
    floor: u64,
    /// Requests and retries in the window.
    counts: RollingCounts,
}

/// The budget's state for `/status` and the metrics.
pub struct BudgetUse {
    pub requests: u64,
    pub retries: u64,
    pub allowed: u64,
}

impl RetryBudget {
    pub fn new(percent: u32, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            percent: u64::from(percent),
            floor: u64::from(min_per_second) * BUDGET_WINDOW_MS / 1000,
            counts: RollingCounts::new(BUDGET_WINDOW_MS),
        }
    }

    /// Count a request (its first attempt).
    pub fn request(&self, now_ms: u64) {
        self.counts.add(now_ms, 1, 0);
    }

    /// Take one retry from the budget, if it has one left.
    pub fn try_retry(&self, now_ms: u64) -> bool {
        let u = self.usage(now_ms);
        if u.retries >= u.allowed {
            return false;
        }
        self.counts.add(now_ms, 0, 1);
        true
    }

    pub fn usage(&self, now_ms: u64) -> BudgetUse {
        let (requests, retries) = self.counts.sums(now_ms);
        BudgetUse {
            requests,
            retries,
            allowed: self.floor + requests * self.percent / 100,
        }
    }
}

impl RetryPolicy {
    /// `retry` of a route.
    pub fn from_config(path: &str, r: &config::RetrySpec, faults: &mut Vec<Fault>) -> RetryPolicy {
        if r.attempts == 0 || r.attempts > 10 {
            faults.push(Fault::new(
                format!("{path}.attempts"),
                format!("{} is not between 1 and 10", r.attempts),
            ));
        }
        if let Some(t) = r.try_timeout {
            config::positive(t, format!("{path}.try_timeout"), faults);
        }
        if r.max_backoff < r.backoff {
            faults.push(Fault::new(
                format!("{path}.max_backoff"),
                format!("{} is shorter than backoff {}", r.max_backoff, r.backoff),
            ));
        }
        RetryPolicy {
            attempts: r.attempts,
            on: FailureSet::from_config(format!("{path}.on"), &r.on, faults),
            try_timeout: r.try_timeout.map(|t| t.0),
            backoff: r.backoff.0,
            max_backoff: r.max_backoff.0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_stop_at_the_share_of_requests() {
        let b = RetryBudget::new(10, 0);
        for _ in 0..50 {
            b.request(5);
        }
        let granted = (0..50).filter(|_| b.try_retry(6)).count();
        assert_eq!(granted, 5);
        // The window moves on: old requests and retries no longer count.
        assert!(!b.try_retry(6 + BUDGET_WINDOW_MS + 100));
        let quiet = RetryBudget::new(10, 1);
        assert_eq!((0..20).filter(|_| quiet.try_retry(1)).count(), 10);
    }

    #[test]
    fn backoff_is_jittered_and_capped() {
        let p = RetryPolicy {
            attempts: 5,
            on: FailureSet::CONNECT_ONLY,
            try_timeout: None,
            backoff: Duration::from_millis(10),
            max_backoff: Duration::from_millis(25),
        };
        for _ in 0..100 {
            assert!(p.backoff(1) < Duration::from_millis(10));
            assert!(p.backoff(4) < Duration::from_millis(25));
        }
        let spread: std::collections::HashSet<_> = (0..20).map(|_| p.backoff(2)).collect();
        assert!(spread.len() > 1);
        assert_eq!(RetryPolicy::upstream_default(2).backoff(1), Duration::ZERO);
    }
}
