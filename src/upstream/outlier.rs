//! Passive health: a target that keeps failing real requests is ejected (not selected) for
//! a back-off period that doubles with each ejection in a row.

use super::failure::{Failure, FailureSet};
use crate::config::{self, Fault};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

pub struct OutlierPolicy {
    pub consecutive: u32,
    pub on: FailureSet,
    pub base_ms: u64,
    pub max_ms: u64,
    pub max_ejected_percent: u32,
}

/// One target's record of real requests.
#[derive(Default)]
pub struct TargetRecord {
    failures: AtomicU32,
    /// Millisecond (see `clock`) the current or last ejection ends.
    ejected_until: AtomicU64,
    /// Ejections in a row: the next one lasts `base << level`.
    level: AtomicU32,
    pub ejections: AtomicU64,
    /// Requests in flight to the target (kept for `least_request` pools only).
    active: AtomicUsize,
}

/// One request in flight to a target; counted until dropped.
pub struct InFlight(Arc<TargetRecord>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Relaxed);
    }
}

impl TargetRecord {
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.active.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    pub fn in_flight(&self) -> usize {
        self.active.load(Relaxed)
    }

    pub fn ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Relaxed) > now_ms
    }

    /// Milliseconds left of the current ejection.
    pub fn ejected_for(&self, now_ms: u64) -> u64 {
        self.ejected_until.load(Relaxed).saturating_sub(now_ms)
    }
}

/// What an attempt's outcome did to its target.
#[derive(Debug, PartialEq, Eq)]
pub enum Ejection {
    Kept,
    /// Taken out for this many milliseconds.
    Ejected(u64),
    /// Over the threshold, but the pool already has its share of targets out.
    Spared,
}

pub struct Outlier {
    pub policy: OutlierPolicy,
    /// Every target's record, to count how many are out.
    records: Vec<Arc<TargetRecord>>,
    /// Ejections are rare; deciding one under a lock keeps the share exact.
    ejecting: parking_lot::Mutex<()>,
}

impl Outlier {
    pub fn new(policy: OutlierPolicy, records: Vec<Arc<TargetRecord>>) -> Outlier {
        Outlier {
            policy,
            records,
            ejecting: parking_lot::Mutex::new(()),
        }
    }

    /// Count one attempt's outcome against its target.
    pub fn record(
        &self,
        target: &TargetRecord,
        outcome: Result<(), Failure>,
        now_ms: u64,
    ) -> Ejection {
        let failed = outcome.is_err_and(|f| self.policy.on.contains(f));
        if !failed {
            if target.failures.load(Relaxed) != 0 {
                target.failures.store(0, Relaxed);
            }
            return Ejection::Kept;
        }
        let n = target.failures.fetch_add(1, Relaxed) + 1;
        if n < self.policy.consecutive || target.ejected(now_ms) {
            return Ejection::Kept;
        }
        let _guard = self.ejecting.lock();
        if target.ejected(now_ms) {
            return Ejection::Kept;
        }
        let out = self.records.iter().filter(|r| r.ejected(now_ms)).count();
        let allowed = self.records.len() * self.policy.max_ejected_percent as usize / 100;
        if out >= allowed {
            return Ejection::Spared;
        }
        // A target that stayed in for a whole max_ejection since its last return starts over.
        let last_end = target.ejected_until.load(Relaxed);
        let mut level = target.level.load(Relaxed);
        if last_end == 0 || now_ms.saturating_sub(last_end) > self.policy.max_ms {
            level = 0;
        }
        let length = (self.policy.base_ms << level.min(20)).min(self.policy.max_ms);
        target.ejected_until.store(now_ms + length, Relaxed);
        target.level.store(level + 1, Relaxed);
        target.failures.store(0, Relaxed);
        target.ejections.fetch_add(1, Relaxed);
        Ejection::Ejected(length)
    }
}

impl OutlierPolicy {
    /// `outlier_detection` of an upstream.
    pub fn from_config(
        path: &str,
        o: &config::OutlierDetection,
        faults: &mut Vec<Fault>,
    ) -> OutlierPolicy {
        if o.consecutive_failures == 0 {
            faults.push(Fault::new(
                format!("{path}.consecutive_failures"),
                "must be at least 1",
            ));
        }
        config::positive(o.base_ejection, format!("{path}.base_ejection"), faults);
        if o.max_ejection < o.base_ejection {
            faults.push(Fault::new(
                format!("{path}.max_ejection"),
                format!(
                    "{} is shorter than base_ejection {}",
                    o.max_ejection, o.base_ejection
                ),
            ));
        }
        if o.max_ejected_percent > 100 {
            faults.push(Fault::new(
                format!("{path}.max_ejected_percent"),
                "must be between 0 and 100",
            ));
        }
        OutlierPolicy {
            consecutive: o.consecutive_failures,
            on: FailureSet::from_config(format!("{path}.on"), &o.on, faults),
            base_ms: o.base_ejection.0.as_millis() as u64,
            max_ms: o.max_ejection.0.as_millis() as u64,
            max_ejected_percent: o.max_ejected_percent,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outlier(targets: usize) -> (Outlier, Vec<Arc<TargetRecord>>) {
        let records: Vec<_> = (0..targets)
            .map(|_| Arc::new(TargetRecord::default()))
            .collect();
        let policy = OutlierPolicy {
            consecutive: 3,
            on: FailureSet::CONNECT_ONLY,
            base_ms: 1000,
            max_ms: 4000,
            max_ejected_percent: 50,
        };
        (Outlier::new(policy, records.clone()), records)
    }

    #[test]
    fn consecutive_failures_eject_with_growing_back_off() {
        let (o, r) = outlier(4);
        let fail = Err(Failure::Connect);
        assert_eq!(o.record(&r[0], fail, 10), Ejection::Kept);
        assert_eq!(o.record(&r[0], Ok(()), 11), Ejection::Kept);
        for t in 12..14 {
            assert_eq!(o.record(&r[0], fail, t), Ejection::Kept);
        }
        assert_eq!(o.record(&r[0], fail, 14), Ejection::Ejected(1000));
        assert!(r[0].ejected(500) && !r[0].ejected(1014));
        // Failures that do not count (a 500 here) reset the run like a success.
        for t in 1100..1102 {
            o.record(&r[0], fail, t);
        }
        o.record(&r[0], Err(Failure::Status(500)), 1102);
        assert_eq!(o.record(&r[0], fail, 1103), Ejection::Kept);
        o.record(&r[0], fail, 1104);
        assert_eq!(o.record(&r[0], fail, 1105), Ejection::Ejected(2000));
        for t in 3200..3203 {
            o.record(&r[0], fail, t);
        }
        assert_eq!(r[0].ejected_for(3202), 4000);
        // Back in for longer than max_ejection: the back-off starts over.
        for t in 20_000..20_003 {
            o.record(&r[0], fail, t);
        }
        assert!(r[0].ejected(20_999) && !r[0].ejected(21_002));
    }

    #[test]
    fn never_more_than_the_share() {
        let (o, r) = outlier(4);
        for t in 0..3 {
            o.record(&r[0], Err(Failure::Connect), t);
            o.record(&r[1], Err(Failure::Connect), t);
            o.record(&r[2], Err(Failure::Connect), t);
        }
        let out: Vec<bool> = r.iter().map(|t| t.ejected(10)).collect();
        assert_eq!(out, [true, true, false, false]);
        assert_eq!(o.record(&r[2], Err(Failure::Connect), 11), Ejection::Spared);
    }
}
