//! Observability: the error log, request ids and trace context.

pub mod access_log;
pub mod logger;
pub mod request_id;
pub mod trace;
