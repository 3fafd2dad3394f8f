//! The one YAML config file: schema, loading, and faults that name their YAML path and line.

pub mod duration;
mod load;
mod positions;
pub mod schema;
pub mod size;

pub use duration::{parse_duration, Dur};
pub use load::{parse, ConfigError, Fault, Parsed, Unparsed};
pub use positions::Positions;
pub use schema::*;
pub use size::ByteSize;
