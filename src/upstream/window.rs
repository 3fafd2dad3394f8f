//! Two counters over a rolling time window, kept in per-slice atomics: adding is a few
//! atomic operations, no lock.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

const SLICES: u64 = 10;

struct Slice {
    /// Which slice of time (`now / width`) the counts belong to.
    epoch: AtomicU64,
    a: AtomicU64,
    b: AtomicU64,
}

pub struct RollingCounts {
    width_ms: u64,
    slices: [Slice; SLICES as usize],
}

impl RollingCounts {
    pub fn new(window_ms: u64) -> RollingCounts {
        RollingCounts {
            width_ms: (window_ms / SLICES).max(1),
            slices: std::array::from_fn(|_| Slice {
                epoch: AtomicU64::new(0),
                a: AtomicU64::new(0),
                b: AtomicU64::new(0),
            }),
        }
    }

    /// Add to the counts of the slice `now` falls in. A slice reused for a new epoch is
    /// zeroed first; an add racing with that reset may be lost, which a rate can afford.
    pub fn add(&self, now_ms: u64, a: u64, b: u64) {
        let epoch = now_ms / self.width_ms;
        let s = &self.slices[(epoch % SLICES) as usize];
        let seen = s.epoch.load(Relaxed);
        if seen != epoch
            && s.epoch
                .compare_exchange(seen, epoch, Relaxed, Relaxed)
                .is_ok()
        {
            s.a.store(0, Relaxed);
            s.b.store(0, Relaxed);
        }
        if a > 0 {
            s.a.fetch_add(a, Relaxed);
        }
        if b > 0 {
            s.b.fetch_add(b, Relaxed);
        }
    }

    /// Both counts over the window ending at `now`.
    pub fn sums(&self, now_ms: u64) -> (u64, u64) {
        let epoch = now_ms / self.width_ms;
        self.slices
            .iter()
            .filter(|s| epoch.saturating_sub(s.epoch.load(Relaxed)) < SLICES)
            .fold((0, 0), |(a, b), s| {
                (a + s.a.load(Relaxed), b + s.b.load(Relaxed))
            })
    }

    pub fn clear(&self) {
        for s in &self.slices {
            s.epoch.store(0, Relaxed);
            s.a.store(0, Relaxed);
            s.b.store(0, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_age_out_of_the_window() {
        let w = RollingCounts::new(1000);
        w.add(5_000, 1, 0);
        w.add(5_050, 1, 1);
        w.add(5_950, 1, 0);
        assert_eq!(w.sums(5_990), (3, 1));
        // 1 s later the first two slices have left the window.
        assert_eq!(w.sums(6_060), (1, 0));
        assert_eq!(w.sums(9_000), (0, 0));
        w.add(9_000, 2, 2);
        assert_eq!(w.sums(9_001), (2, 2));
        w.clear();
        assert_eq!(w.sums(9_001), (0, 0));
    }
}
