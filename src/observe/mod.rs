//! Observability: the error log and request ids.

pub mod logger;
pub mod request_id;
