//! A monotonic millisecond clock for the resilience state kept in atomics. Read several
//! times per request, so it uses the kernel's coarse clock (a few ns from the vDSO, ticking
//! every few ms), which is plenty for windows and back-offs counted in seconds.

/// Milliseconds on a monotonic clock, never 0 (0 means "never" in the callers' atomics).
pub fn now_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the call only fills it in.
    let ok = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) } == 0;
    if !ok {
        return fallback_ms();
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000 + 1
}

fn fallback_ms() -> u64 {
    use std::sync::OnceLock;
    use std::time::Instant;
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Seconds since the Unix epoch (0 before it), for token lifetimes (`exp`, `nbf`).
pub fn unix_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    #[test]
    fn moves_forward_in_milliseconds() {
        let a = super::now_ms();
        std::thread::sleep(std::time::Duration::from_millis(50));
        let b = super::now_ms();
        assert!(b >= a + 40 && b < a + 500, "{a} {b}");
    }
}
