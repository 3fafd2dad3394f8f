//! The access log: one JSON line per request, written by a thread of its own so the request
//! path never waits on the disk. Lines are handed over through a bounded channel; when it is
//! full a line is dropped and counted rather than stalling a request. `reopen()` (on
//! SIGUSR1) lets logrotate move the file away.

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TryRecvError, TrySendError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Lines waiting for the writer at most.
const QUEUE: usize = 65_536;
/// Buffered lines reach the file at least this often.
const FLUSH_EVERY: Duration = Duration::from_millis(500);
/// How often the writer takes what is queued.
const DRAIN_EVERY: Duration = Duration::from_millis(20);

enum Msg {
    Line(Vec<u8>),
    Reopen,
}

pub struct AccessLog {
    tx: SyncSender<Msg>,
    dropped: AtomicU64,
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
    fn write(&mut self, line: &[u8]) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.write_all(line),
            Sink::File(_, w) => w.write_all(line),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        match self {
            Sink::Stdout(s) => s.flush(),
            Sink::File(_, w) => w.flush(),
        }
    }
}

impl AccessLog {
    /// `stdout` or a file path (appended to). The file is opened here, so a bad path is a
    /// start-up error.
    pub fn start(target: &str) -> std::io::Result<AccessLog> {
        let mut sink = match target {
            "stdout" | "-" => Sink::Stdout(std::io::stdout()),
            path => Sink::File(path.to_string(), open(path)?),
        };
        let (tx, rx) = sync_channel::<Msg>(QUEUE);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || {
                // The writer drains the queue on a clock instead of waiting on it: a blocked
                // receiver would be woken (a futex call on each side) for every line.
                let mut flushed = std::time::Instant::now();
                loop {
                    std::thread::sleep(DRAIN_EVERY);
                    loop {
                        match rx.try_recv() {
                            Ok(Msg::Line(line)) => {
                                if let Err(e) = sink.write(&line) {
                                    log::error!("access log write failed: {e}");
                                }
                            }
                            Ok(Msg::Reopen) => {
                                let _ = sink.flush();
                                if let Sink::File(path, w) = &mut sink {
                                    match open(path) {
                                        Ok(new) => *w = new,
                                        Err(e) => {
                                            log::error!("cannot reopen access log {path}: {e}")
                                        }
                                    }
                                }
                            }
                            Err(TryRecvError::Empty) => break,
                            Err(TryRecvError::Disconnected) => {
                                let _ = sink.flush();
                                return;
                            }
                        }
                    }
                    if flushed.elapsed() >= FLUSH_EVERY {
                        let _ = sink.flush();
                        flushed = std::time::Instant::now();
                    }
                }
            })?;
        Ok(AccessLog {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Queue one line (a newline is added); never blocks.
    pub fn write(&self, mut line: Vec<u8>) {
        line.push(b'\n');
        if let Err(TrySendError::Full(_)) = self.tx.try_send(Msg::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            crate::observe::metrics::access_log_dropped(1);
        }
    }

    /// Open the file again by its name (after logrotate moved it).
    pub fn reopen(&self) {
        let _ = self.tx.try_send(Msg::Reopen);
    }

    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
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
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
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
