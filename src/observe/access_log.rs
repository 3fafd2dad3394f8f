//! The access log: one JSON line per request, written by a thread of its own so the request
//! path never waits on the disk. Each worker thread serializes its lines straight into a
//! buffer of its own (no allocation per line, and no lock another request thread takes);
//! the writer swaps the buffers out every 20 ms. A buffer that the writer cannot keep up
//! with stops growing at 4 MiB: further lines are dropped and counted rather than stalling
//! a request. `reopen()` (on SIGUSR1) lets logrotate move the file away.

use parking_lot::Mutex;
use std::cell::RefCell;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Bytes a thread's buffer may hold before lines are dropped.
const MAX_PENDING: usize = 4 << 20;
/// Buffered lines reach the file at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How often the writer takes the threads' buffers.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

type Buffer = Arc<Mutex<Vec<u8>>>;

struct Shared {
    /// One buffer per thread that has logged.
    buffers: Mutex<Vec<Buffer>>,
    sink: Mutex<Sink>,
    reopen: AtomicBool,
    dropped: AtomicU64,
}

pub struct AccessLog {
    shared: Arc<Shared>,
}

thread_local! {
    /// This thread's buffer, and the log it belongs to.
    static MINE: RefCell<Option<(Weak<Shared>, Buffer)>> = const { RefCell::new(None) };
}

enum Sink {
    Stdout(std::io::Stdout),
    File(String, BufWriter<File>),
}

fn open(path: &str) -> std::io::Result<BufWriter<File>> {
    let f = OpenOptions::new().create(true).append(true).open(path)?;
    Ok(BufWriter::with_capacity(64 * 1024, f))
}

impl Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.write_all(bytes),
            Sink::File(_, w) => w.write_all(bytes),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::File(_, w) => w.flush(),
        }
    }
}

impl Shared {
    /// Move every thread's lines to the sink; `spare` is swapped in so that buffers keep
    /// their capacity.
    fn drain(&self, spare: &mut Vec<u8>) {
        let buffers: Vec<Buffer> = self.buffers.lock().clone();
        let mut sink = self.sink.lock();
        if self.reopen.swap(false, Ordering::Relaxed) {
            let _ = sink.flush();
            if let Sink::File(path, w) = &mut *sink {
                match open(path) {
                    Ok(new) => *w = new,
                    Err(e) => log::error!("cannot reopen access log {path}: {e}"),
                }
            }
        }
        for b in buffers {
            std::mem::swap(&mut *b.lock(), spare);
            if !spare.is_empty() {
                if let Err(e) = sink.write(spare) {
                    log::error!("access log write failed: {e}");
                }
                spare.clear();
            }
        }
    }
}

impl AccessLog {
    /// `stdout` or a file path (appended to). The file is opened here, so a bad path is a
    /// start-up error.
    pub fn start(target: &str) -> std::io::Result<AccessLog> {
        let sink = match target {
            "stdout" | "-" => Sink::Stdout(std::io::stdout()),
            path => Sink::File(path.to_string(), open(path)?),
        };
        let shared = Arc::new(Shared {
            buffers: Mutex::new(Vec::new()),
            sink: Mutex::new(sink),
            reopen: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&shared);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                // The writer works on a clock instead of being woken per line (a futex call
                // on each side for every request).
                let mut spare = Vec::with_capacity(64 * 1024);
                let mut flushed = std::time::Instant::now();
                loop {
                    std::thread::sleep(DRAIN_EVERY);
                    let Some(shared) = weak.upgrade() else { return };
                    shared.drain(&mut spare);
                    if flushed.elapsed() >= FLUSH_EVERY {
                        let _ = shared.sink.lock().flush();
                        flushed = std::time::Instant::now();
                    }
                }
            })?;
        Ok(AccessLog { shared })
    }

    fn thread_buffer(&self) -> Buffer {
        MINE.with(|mine| {
            let mut mine = mine.borrow_mut();
            match &*mine {
                Some((log, buf)) if std::ptr::eq(log.as_ptr(), Arc::as_ptr(&self.shared)) => {
                    buf.clone()
                }
                _ => {
                    let buf: Buffer = Arc::new(Mutex::new(Vec::with_capacity(64 * 1024)));
                    self.shared.buffers.lock().push(buf.clone());
                    *mine = Some((Arc::downgrade(&self.shared), buf.clone()));
                    buf
                }
            }
        })
    }

    /// Append one line that `fill` writes (a newline is added); never blocks on the disk.
    pub fn write_with(&self, fill: impl FnOnce(&mut Vec<u8>)) {
        let buf = self.thread_buffer();
        let mut b = buf.lock();
        if b.len() >= MAX_PENDING {
            drop(b);
            self.shared.dropped.fetch_add(1, Ordering::Relaxed);
            crate::observe::metrics::access_log_dropped(1);
            return;
        }
        fill(&mut b);
        b.push(b'\n');
    }

    /// Append one line.
    pub fn write(&self, line: &[u8]) {
        self.write_with(|b| b.extend_from_slice(line));
    }

    /// Write out everything logged so far, now (at shutdown).
    pub fn flush(&self) {
        let mut spare = Vec::new();
        self.shared.drain(&mut spare);
        let _ = self.shared.sink.lock().flush();
    }

    /// Open the file again by its name (after logrotate moved it).
    pub fn reopen(&self) {
        self.shared.reopen.store(true, Ordering::Relaxed);
    }

    pub fn dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }
}

/// An access log started on first use: the writer thread must be born after Pingora has
/// daemonized (a fork keeps no threads).
pub struct LazyAccessLog {
    target: String,
    log: std::sync::OnceLock<Option<AccessLog>>,
}

impl LazyAccessLog {
    pub fn new(target: String) -> Self {
        LazyAccessLog {
            target,
            log: std::sync::OnceLock::new(),
        }
    }

    pub fn get(&self) -> Option<&AccessLog> {
        self.log
            .get_or_init(|| match AccessLog::start(&self.target) {
                Ok(l) => Some(l),
                Err(e) => {
                    log::error!("cannot open the access log {}: {e}", self.target);
                    None
                }
            })
            .as_ref()
    }

    /// The log, if it has been started (never starts it).
    pub fn started(&self) -> Option<&AccessLog> {
        self.log.get().and_then(|l| l.as_ref())
    }

    /// Check at start-up that the target can be opened, so a bad path stops the start.
    pub fn check(target: &str) -> std::io::Result<()> {
        match target {
            "stdout" | "-" => Ok(()),
            path => open(path).map(drop),
        }
    }
}

/// RFC 3339 UTC with milliseconds, e.g. `2026-11-28T19:33:54.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    Rfc3339::new(t).as_str().to_string()
}

/// A UTC time as `2026-11-30T20:47:15.894Z`, formatted on the stack without `fmt`: it is
/// made once per access-log line.
pub struct Rfc3339([u8; 24]);

impl Rfc3339 {
    pub fn new(t: SystemTime) -> Rfc3339 {
        let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
        let secs = d.as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = doy - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999) as u64;
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, width: usize, mut v: u64| {
            for i in (at..at + width).rev() {
                b[i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, 4, year);
        put(5, 2, month as u64);
        put(8, 2, day as u64);
        put(11, 2, rem / 3600);
        put(14, 2, rem % 3600 / 60);
        put(17, 2, rem % 60);
        put(20, 3, u64::from(d.subsec_millis()));
        Rfc3339(b)
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_795_894_434_123);
        assert_eq!(rfc3339(t), "2026-11-28T19:33:54.123Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400);
        assert_eq!(rfc3339(leap), "2000-02-29T00:00:00.000Z");
    }
}
