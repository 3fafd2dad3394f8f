//! A monotonic millisecond clock for the resilience state kept in atomics.

use std::sync::OnceLock;
use std::time::Instant;

/// Milliseconds since the first call in this process, from 1 (0 means "never").
pub fn now_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    base.elapsed().as_millis() as u64 + 1
}
