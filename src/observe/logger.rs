//! The human-readable error log: to stderr (or a file), level from config or `RUST_LOG`.

use std::io::Write;

/// Install the logger once per process; later calls do nothing. Under systemd (JOURNAL_STREAM
/// set) timestamps are left to the journal.
pub fn init(level: &str, file: Option<&str>) -> std::io::Result<()> {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(level);
    if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    builder.format(move |buf, record| {
        if journald {
            writeln!(
                buf,
                "{} {}: {}",
                record.level(),
                record.target(),
                record.args()
            )
        } else {
            writeln!(
                buf,
                "{} {} {}: {}",
                buf.timestamp_millis(),
                record.level(),
                record.target(),
                record.args()
            )
        }
    });
    if let Some(path) = file {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        builder.target(env_logger::Target::Pipe(Box::new(f)));
    }
    let _ = builder.try_init();
    Ok(())
}
