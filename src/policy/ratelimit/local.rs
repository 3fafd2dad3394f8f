//! Local rate limiting with GCRA (the generic cell rate algorithm), in one process.
//!
//! Why GCRA: it is a token bucket kept as a single timestamp per key, the "theoretical
//! arrival time" (TAT). A request at time `now` is admitted when `max(TAT, now) - now <= τ`
//! with `τ = (burst - 1) · T` and `T = per / requests`, and then `TAT = max(TAT, now) + T`.
//! The guarantee is exact, with no estimate involved: over any interval of length `t`, at
//! most `burst + t / T` requests are admitted, and a client that keeps to the rate is never
//! refused. Unlike a fixed window there is no boundary at which twice the limit gets through,
//! and unlike `pingora-limits`' count-min sketch there are no collisions that over-count.
//!
//! Memory: one `u64` per active key. A key whose TAT has passed holds no information (its
//! bucket is full) and is dropped by the sweep a shard runs when it reaches its share of
//! `max_keys`; if every key is still active, the keys whose buckets are fullest (TAT nearest
//! to now) are dropped. A client being limited has its TAT furthest ahead, so a flood of new
//! keys (each one request in) cannot reset it.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const SHARDS: usize = 64;

/// One limit's parameters in nanoseconds.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    /// T: the time one request "costs".
    pub interval: u64,
    /// τ: how far ahead of `now` the TAT may run, `(burst - 1) · T`.
    pub tolerance: u64,
}

impl Gcra {
    pub fn new(requests: u64, per: Duration, burst: u64) -> Gcra {
        let interval = (per.as_nanos() / u128::from(requests.max(1))).max(1) as u64;
        Gcra {
            interval,
            tolerance: interval.saturating_mul(burst.max(1) - 1),
        }
    }
}

/// The outcome for one key and limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    pub allowed: bool,
    /// Requests that could still be made right now.
    pub remaining: u64,
    /// Until the bucket is full again.
    pub reset_after: Duration,
    /// Until the next request would be admitted (zero when allowed).
    pub retry_after: Duration,
}

pub struct GcraStore {
    shards: Box<[Mutex<HashMap<u64, u64>>]>,
    hasher: ahash::RandomState,
    shard_cap: usize,
    epoch: Instant,
}

impl GcraStore {
    pub fn new(max_keys: usize) -> GcraStore {
        GcraStore {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            hasher: ahash::RandomState::new(),
            shard_cap: (max_keys / SHARDS).max(16),
            epoch: Instant::now(),
        }
    }

    /// Hash a limit id and key bytes to the store's key.
    pub fn key(&self, limit: u64, parts: &[&[u8]]) -> u64 {
        let mut h = self.hasher.build_hasher();
        h.write_u64(limit);
        for p in parts {
            h.write(p);
            h.write_u8(0xff);
        }
        h.finish()
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Decide for `key`; when `commit` and admitted, the request is counted in the same
    /// step (under the shard's lock), so concurrent requests can never both take the last
    /// unit.
    pub fn check(&self, key: u64, gcra: Gcra, commit: bool) -> Verdict {
        let now = self.now();
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        let tat = map.get(&key).copied().unwrap_or(now).max(now);
        let ahead = tat - now;
        if ahead > gcra.tolerance {
            return Verdict {
                allowed: false,
                remaining: 0,
                reset_after: Duration::from_nanos(ahead),
                retry_after: Duration::from_nanos(ahead - gcra.tolerance),
            };
        }
        let new_tat = tat.saturating_add(gcra.interval);
        if commit {
            if map.len() >= self.shard_cap && !map.contains_key(&key) {
                sweep(&mut map, now, self.shard_cap);
            }
            map.insert(key, new_tat);
        }
        let capacity = gcra.tolerance.saturating_add(gcra.interval);
        Verdict {
            allowed: true,
            remaining: capacity.saturating_sub(new_tat - now) / gcra.interval,
            reset_after: Duration::from_nanos(new_tat - now),
            retry_after: Duration::ZERO,
        }
    }

    /// Give back a unit counted by an admitting [`GcraStore::check`] for a request that
    /// another limit then refused.
    pub fn refund(&self, key: u64, gcra: Gcra) {
        let shard = &self.shards[(key as usize) % SHARDS];
        let mut map = shard.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tat) = map.get_mut(&key) {
            *tat = tat.saturating_sub(gcra.interval);
        }
    }

    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| s.lock().map_or(0, |m| m.len()))
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Drop keys whose bucket is full again; if that is not enough, drop the keys whose buckets
/// are fullest (lowest TAT) down to 90% of the cap, so limited clients are kept.
fn sweep(map: &mut HashMap<u64, u64>, now: u64, cap: usize) {
    map.retain(|_, tat| *tat > now);
    if map.len() >= cap {
        let excess = map.len() - cap * 9 / 10;
        let mut tats: Vec<u64> = map.values().copied().collect();
        let (_, &mut threshold, _) = tats.select_nth_unstable(excess - 1);
        let mut dropped = 0;
        map.retain(|_, tat| {
            let drop = *tat < threshold || (*tat == threshold && dropped < excess);
            dropped += usize::from(drop);
            !drop
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admits_the_burst_then_the_rate() {
        let store = GcraStore::new(1000);
        let g = Gcra::new(5, Duration::from_secs(10), 5);
        let k = store.key(1, &[b"client"]);
        for i in 0..5 {
            let v = store.check(k, g, true);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 4 - i);
        }
        let v = store.check(k, g, true);
        assert!(!v.allowed);
        // One request every 2 s: the next is due in just under 2 s.
        assert!(
            v.retry_after > Duration::from_millis(1900) && v.retry_after <= Duration::from_secs(2)
        );
        assert!(store.check(store.key(1, &[b"other"]), g, true).allowed);
        assert!(store.check(store.key(2, &[b"client"]), g, true).allowed);
    }

    #[test]
    fn a_peek_does_not_count() {
        let store = GcraStore::new(1000);
        let g = Gcra::new(1, Duration::from_secs(60), 1);
        let k = store.key(0, &[b"x"]);
        assert!(store.check(k, g, false).allowed);
        assert!(store.check(k, g, true).allowed);
        assert!(!store.check(k, g, false).allowed);
    }

    #[test]
    fn a_limited_client_stays_limited_under_a_flood_of_new_keys() {
        let store = GcraStore::new(64 * 16);
        let strict = Gcra::new(1, Duration::from_secs(3600), 1);
        let limited = store.key(0, &[b"limited"]);
        assert!(store.check(limited, strict, true).allowed);
        assert!(!store.check(limited, strict, true).allowed);
        let loose = Gcra::new(1000, Duration::from_secs(1), 1000);
        for i in 0u64..1_100_000 {
            store.check(store.key(1, &[&i.to_le_bytes()]), loose, true);
        }
        assert!(store.len() <= 64 * 16);
        assert!(!store.check(limited, strict, true).allowed);
    }

    #[test]
    fn huge_bursts_do_not_overflow() {
        let store = GcraStore::new(1000);
        let g = Gcra::new(1, Duration::from_secs(3600), u64::MAX);
        let k = store.key(0, &[b"x"]);
        for _ in 0..3 {
            assert!(store.check(k, g, true).allowed);
        }
    }

    #[test]
    fn a_refund_gives_the_unit_back() {
        let store = GcraStore::new(1000);
        let g = Gcra::new(1, Duration::from_secs(60), 1);
        let k = store.key(0, &[b"x"]);
        assert!(store.check(k, g, true).allowed);
        store.refund(k, g);
        assert!(store.check(k, g, true).allowed);
        assert!(!store.check(k, g, true).allowed);
    }

    #[test]
    fn memory_stays_bounded() {
        let store = GcraStore::new(64 * 100);
        let g = Gcra::new(1, Duration::from_secs(3600), 1);
        for i in 0u64..100_000 {
            store.check(store.key(0, &[&i.to_le_bytes()]), g, true);
        }
        assert!(store.len() <= 64 * 100, "{} keys kept", store.len());
    }
}
