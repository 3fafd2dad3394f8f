//! A concurrency limit: requests hold a slot while in flight; with every slot taken the
//! next one is refused at once rather than queued.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

pub struct ConcurrencyLimit {
    pub max: usize,
    in_flight: AtomicUsize,
}

/// A held slot; freed when dropped.
pub struct Slot(Arc<ConcurrencyLimit>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

impl ConcurrencyLimit {
    pub fn new(max: usize) -> Arc<ConcurrencyLimit> {
        Arc::new(ConcurrencyLimit {
            max,
            in_flight: AtomicUsize::new(0),
        })
    }

    /// A slot, or `None` when all `max` are taken.
    pub fn acquire(self: &Arc<Self>) -> Option<Slot> {
        if self.in_flight.fetch_add(1, Ordering::AcqRel) >= self.max {
            self.in_flight.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(Slot(self.clone()))
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }
}
