//! Observability: the error log, access log, metrics, request ids and trace context.

pub mod access_log;
pub mod log_budget;
pub mod logger;
pub mod metrics;
pub mod otel;
pub mod request_id;
pub mod spans;
pub mod trace;
