//! A circuit breaker per upstream: closed while most attempts succeed; open (every request
//! refused at once) when the failure rate over a rolling window passes the threshold;
//! half-open after a while, letting a few probe requests decide whether to close again.

use super::failure::{Failure, FailureSet};
use super::window::RollingCounts;
use crate::config::{self, Fault};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};

pub struct BreakerPolicy {
    pub error_rate: u32,
    pub min_requests: u32,
    pub window_ms: u64,
    pub open_ms: u64,
    pub probes: u32,
    pub on: FailureSet,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    Pass,
    /// One of the half-open breaker's probes: its outcome decides.
    Probe,
    /// Refused; the breaker lets probes through in this many milliseconds.
    Refused(u64),
}

pub struct Breaker {
    pub policy: BreakerPolicy,
    /// The upstream's name, for the log.
    upstream: Box<str>,
    state: AtomicU8,
    open_until: AtomicU64,
    probes_started: AtomicU32,
    probes_passed: AtomicU32,
    window: RollingCounts,
    pub opened: AtomicU64,
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

impl Breaker {
    pub fn new(policy: BreakerPolicy, upstream: &str) -> Breaker {
        Breaker {
            upstream: upstream.into(),
            window: RollingCounts::new(policy.window_ms),
            policy,
            state: AtomicU8::new(CLOSED),
            open_until: AtomicU64::new(0),
            probes_started: AtomicU32::new(0),
            probes_passed: AtomicU32::new(0),
            opened: AtomicU64::new(0),
        }
    }

    pub fn state(&self) -> State {
        match self.state.load(Relaxed) {
            OPEN => State::Open,
            HALF_OPEN => State::HalfOpen,
            _ => State::Closed,
        }
    }

    /// Milliseconds until an open breaker lets probes through.
    pub fn opens_in(&self, now_ms: u64) -> u64 {
        self.open_until.load(Relaxed).saturating_sub(now_ms)
    }

    /// Attempts and failures in the current window.
    pub fn window(&self, now_ms: u64) -> (u64, u64) {
        self.window.sums(now_ms)
    }

    pub fn admit(&self, now_ms: u64) -> Admission {
        match self.state.load(Relaxed) {
            CLOSED => return Admission::Pass,
            OPEN => {
                let until = self.open_until.load(Relaxed);
                if now_ms < until {
                    return Admission::Refused(until - now_ms);
                }
                if self
                    .state
                    .compare_exchange(OPEN, HALF_OPEN, Relaxed, Relaxed)
                    .is_ok()
                {
                    self.probes_passed.store(0, Relaxed);
                    self.probes_started.store(0, Relaxed);
                    log::info!(
                        "upstream {:?}: circuit breaker half-open, letting {} probes through",
                        self.upstream,
                        self.policy.probes
                    );
                }
            }
            _ => {}
        }
        if self.probes_started.fetch_add(1, Relaxed) < self.policy.probes {
            Admission::Probe
        } else {
            self.probes_started.fetch_sub(1, Relaxed);
            Admission::Refused(1000)
        }
    }

    /// A probe ended without an outcome (the client left): another may take its place.
    pub fn release_probe(&self) {
        if self.state.load(Relaxed) == HALF_OPEN {
            self.probes_started.fetch_sub(1, Relaxed);
        }
    }

    /// Count one attempt; `probe` when it was admitted as one. Returns true when this
    /// outcome opened the breaker.
    pub fn record(&self, outcome: Result<(), Failure>, probe: bool, now_ms: u64) -> bool {
        let failed = outcome.is_err_and(|f| self.policy.on.contains(f));
        match self.state.load(Relaxed) {
            CLOSED => {
                self.window.add(now_ms, 1, u64::from(failed));
                if !failed {
                    return false;
                }
                let (total, failures) = self.window.sums(now_ms);
                if total >= u64::from(self.policy.min_requests)
                    && failures * 100 >= u64::from(self.policy.error_rate) * total
                {
                    return self.open(CLOSED, now_ms);
                }
                false
            }
            HALF_OPEN if probe => {
                if failed {
                    return self.open(HALF_OPEN, now_ms);
                }
                if self.probes_passed.fetch_add(1, Relaxed) + 1 >= self.policy.probes
                    && self
                        .state
                        .compare_exchange(HALF_OPEN, CLOSED, Relaxed, Relaxed)
                        .is_ok()
                {
                    self.window.clear();
                    log::info!(
                        "upstream {:?}: circuit breaker closed, the probes succeeded",
                        self.upstream
                    );
                }
                false
            }
            // Open, or an attempt let in before the breaker left the closed state.
            _ => false,
        }
    }

    fn open(&self, from: u8, now_ms: u64) -> bool {
        self.open_until.store(now_ms + self.policy.open_ms, Relaxed);
        if self
            .state
            .compare_exchange(from, OPEN, Relaxed, Relaxed)
            .is_err()
        {
            return false;
        }
        self.window.clear();
        self.opened.fetch_add(1, Relaxed);
        true
    }
}

impl BreakerPolicy {
    /// `circuit_breaker` of an upstream.
    pub fn from_config(
        path: &str,
        b: &config::CircuitBreaker,
        faults: &mut Vec<Fault>,
    ) -> BreakerPolicy {
        if b.error_rate == 0 || b.error_rate > 100 {
            faults.push(Fault::new(
                format!("{path}.error_rate"),
                "must be between 1 and 100 (percent)",
            ));
        }
        if b.probes == 0 {
            faults.push(Fault::new(format!("{path}.probes"), "must be at least 1"));
        }
        config::positive(b.window, format!("{path}.window"), faults);
        config::positive(b.open_for, format!("{path}.open_for"), faults);
        BreakerPolicy {
            error_rate: b.error_rate,
            min_requests: b.min_requests.max(1),
            window_ms: b.window.0.as_millis() as u64,
            open_ms: b.open_for.0.as_millis() as u64,
            probes: b.probes,
            on: FailureSet::from_config(format!("{path}.on"), &b.on, faults),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(
            BreakerPolicy {
                error_rate: 50,
                min_requests: 4,
                window_ms: 10_000,
                open_ms: 1_000,
                probes: 2,
                on: FailureSet::CONNECT_ONLY,
            },
            "test",
        )
    }

    #[test]
    fn opens_fails_fast_half_opens_and_closes() {
        let b = breaker();
        let fail = Err(Failure::Connect);
        // 2 failures in 3 attempts: under min_requests, stays closed.
        assert!(!b.record(Ok(()), false, 10));
        assert!(!b.record(fail, false, 11));
        assert!(!b.record(fail, false, 12));
        assert_eq!(b.state(), State::Closed);
        assert!(b.record(fail, false, 13));
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(500), Admission::Refused(513));
        // After open_for: two probes, a third request is refused meanwhile.
        assert_eq!(b.admit(1013), Admission::Probe);
        assert_eq!(b.admit(1014), Admission::Probe);
        assert_eq!(b.admit(1015), Admission::Refused(1000));
        b.record(Ok(()), true, 1020);
        assert_eq!(b.state(), State::HalfOpen);
        b.record(Ok(()), true, 1021);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(1022), Admission::Pass);
        assert_eq!(b.window(1022), (0, 0));
    }

    #[test]
    fn a_failed_probe_opens_again_and_a_lost_probe_is_replaced() {
        let b = breaker();
        for t in 0..4 {
            b.record(Err(Failure::Connect), false, t);
        }
        assert_eq!(b.admit(1003), Admission::Probe);
        assert_eq!(b.admit(1003), Admission::Probe);
        b.release_probe();
        assert_eq!(b.admit(1004), Admission::Probe);
        assert!(b.record(Err(Failure::Connect), true, 1005));
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.opens_in(1005), 1000);
        assert_eq!(b.opened.load(Relaxed), 2);
    }
}
