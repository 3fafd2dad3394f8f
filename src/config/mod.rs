//! The one YAML config file: schema, loading, and faults that name their YAML path and line.

mod checks;
pub mod duration;
pub mod json_schema;
mod load;
mod positions;
pub mod schema;
pub mod size;

pub use checks::AdminSettings;
pub use duration::{parse_duration, Dur};
pub use load::{parse, ConfigError, Fault, Parsed, Unparsed};
pub use positions::Positions;
pub use schema::*;
pub use size::ByteSize;

/// A secret from a file (a systemd credential, a mounted secret): its text without the
/// final line break; an empty file is refused.
pub fn read_secret(path: &str) -> Result<String, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let secret = text.strip_suffix('\n').unwrap_or(&text);
    let secret = secret.strip_suffix('\r').unwrap_or(secret);
    if secret.is_empty() {
        return Err(format!("{path:?} is empty"));
    }
    Ok(secret.to_string())
}

/// A duration that must not be zero.
pub fn positive(d: Dur, path: String, faults: &mut Vec<Fault>) {
    if d.0.is_zero() {
        faults.push(Fault::new(path, "must be longer than 0s"));
    }
}
