//! Decisions of a provider that asks a service (introspection, external authorization),
//! kept by a digest of what they were made on, with one call in flight per digest:
//! concurrent requests with the same credential wait for that call instead of each
//! making one.

use pingora_memory_cache::MemoryCache;
use prometheus::IntCounter;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Decisions kept per provider.
const ENTRIES: usize = 65_536;

#[derive(Clone)]
struct Entry<T> {
    /// The cache hashes keys to 64 bits; the full digest rules out a collision.
    digest: [u8; 32],
    value: T,
}

pub struct Decisions<T: Clone + Send + Sync + 'static> {
    cache: MemoryCache<[u8; 32], Entry<T>>,
    /// Calls in flight. Taken only on a cache miss, and only to find, add or remove a call.
    inflight: Inflight<T>,
    hits: IntCounter,
    coalesced: IntCounter,
}

impl<T: Clone + Send + Sync + 'static> Decisions<T> {
    pub fn new(provider: &str) -> Self {
        Decisions {
            cache: MemoryCache::new(ENTRIES),
            inflight: parking_lot::Mutex::new(HashMap::new()),
            hits: crate::observe::metrics::auth_call_counter(provider, "cache_hit"),
            coalesced: crate::observe::metrics::auth_call_counter(provider, "coalesced"),
        }
    }

    /// The kept decision for `digest`, else the one `call` makes (which says how long it
    /// may be kept; zero: not at all). A caller that finds a call in flight waits for it;
    /// if the caller making it goes away, a waiter makes it instead.
    pub async fn get<F, Fut>(&self, digest: [u8; 32], call: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = (T, Duration)>,
    {
        if let (Some(hit), _) = self.cache.get(&digest) {
            if hit.digest == digest {
                self.hits.inc();
                return hit.value;
            }
        }
        let (cell, joined) = {
            let mut inflight = self.inflight.lock();
            match inflight.get(&digest) {
                Some(cell) => (cell.clone(), true),
                None => {
                    let cell = Arc::new(OnceCell::new());
                    inflight.insert(digest, cell.clone());
                    (cell, false)
                }
            }
        };
        if joined {
            self.coalesced.inc();
        }
        // Leaves the in-flight map tidy however this caller ends, cancelled included.
        let _leave = Leave {
            inflight: &self.inflight,
            digest,
            cell: &cell,
        };
        cell.get_or_init(|| async {
            let (value, keep) = call().await;
            if !keep.is_zero() {
                let entry = Entry {
                    digest,
                    value: value.clone(),
                };
                self.cache.put(&digest, entry, Some(keep));
            }
            value
        })
        .await
        .clone()
    }
}

type Inflight<T> = parking_lot::Mutex<HashMap<[u8; 32], Arc<OnceCell<T>>>>;

/// A caller's hold on a call in flight. The call leaves the map once it has an answer, or
/// once its last caller is gone without one (clients that hang up cannot fill the map).
struct Leave<'a, T> {
    inflight: &'a Inflight<T>,
    digest: [u8; 32],
    cell: &'a Arc<OnceCell<T>>,
}

impl<T> Drop for Leave<'_, T> {
    fn drop(&mut self) {
        let mut inflight = self.inflight.lock();
        let ours = inflight
            .get(&self.digest)
            .is_some_and(|c| Arc::ptr_eq(c, self.cell));
        // Under the lock nobody can join: the map's and this caller's are the only
        // references when no other caller waits.
        if ours && (self.cell.initialized() || Arc::strong_count(self.cell) <= 2) {
            inflight.remove(&self.digest);
        }
    }
}

/// How a provider's calls to its service went, resolved once per provider.
pub struct CallCounters {
    pub call: IntCounter,
    pub timeout: IntCounter,
    pub error: IntCounter,
    /// Requests let through unchecked (`on_failure: allow`).
    pub waived: IntCounter,
}

impl CallCounters {
    pub fn new(provider: &str) -> Self {
        let c = |outcome| crate::observe::metrics::auth_call_counter(provider, outcome);
        CallCounters {
            call: c("call"),
            timeout: c("timeout"),
            error: c("error"),
            waived: c("waived"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test]
    async fn concurrent_misses_make_one_call_and_later_ones_hit() {
        let d = Arc::new(Decisions::<u32>::new("unit"));
        let calls = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(tokio::sync::Notify::new());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (d, calls, gate) = (d.clone(), calls.clone(), gate.clone());
            tasks.push(tokio::spawn(async move {
                d.get([7; 32], || async {
                    calls.fetch_add(1, Ordering::SeqCst);
                    gate.notified().await;
                    (42, Duration::from_secs(60))
                })
                .await
            }));
        }
        // Every task has either made the call or joined it once the in-flight map is
        // the only place left to look.
        while d.coalesced.get() < 19 {
            tokio::task::yield_now().await;
        }
        gate.notify_one();
        for t in tasks {
            assert_eq!(t.await.unwrap(), 42);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert!(d.inflight.lock().is_empty(), "the call left the map");
        let again = d.get([7; 32], || async { (0, Duration::ZERO) }).await;
        assert_eq!(again, 42, "kept for its ttl");
        let other = d.get([8; 32], || async { (5, Duration::ZERO) }).await;
        assert_eq!(other, 5);
        let not_kept = d.get([8; 32], || async { (6, Duration::ZERO) }).await;
        assert_eq!(not_kept, 6, "a zero ttl is not kept");
    }

    #[tokio::test]
    async fn a_call_whose_callers_all_hang_up_leaves_the_map() {
        let d = Decisions::<u32>::new("unit-cancel");
        let pending = d.get([9; 32], std::future::pending::<(u32, Duration)>);
        let polled = tokio::time::timeout(Duration::from_millis(10), pending).await;
        assert!(polled.is_err(), "the call never answers");
        assert!(d.inflight.lock().is_empty(), "nobody waits for it any more");
        let v = d.get([9; 32], || async { (3, Duration::ZERO) }).await;
        assert_eq!(v, 3, "a new caller makes a new call");
    }
}
