//! How a request that could not be proxied ends: the errors the gateway raises itself,
//! and the status and message a client gets for each error.

use pingora_error::{Error, ErrorSource, ErrorType};

/// The error of a request refused by an upstream's `max_concurrent`.
pub const AT_CAPACITY: &str = "upstream at capacity";
/// The error of a request refused by its route's `max_concurrent`.
pub const ROUTE_AT_CAPACITY: &str = "route at capacity";
/// The error of a request whose upstream has no target to try (all failing checks or out).
pub const NO_TARGET: &str = "no healthy target";
/// The error of a request refused because the upstream's circuit breaker is open.
pub const BREAKER_OPEN: &str = "circuit breaker open";
/// The error of a request whose route deadline passed.
pub const DEADLINE: &str = "route deadline passed";
/// A response status the route retries: the attempt is ended as an error to try again.
pub const RETRY_STATUS: &str = "retryable status";

/// Errors that refuse a request without trying the upstream: cheap, counted in the
/// metrics, answered by the route's fallback when it has one, and not logged one by one.
pub fn fast_fail(e: &Error) -> bool {
    matches!(
        e.etype(),
        ErrorType::Custom(AT_CAPACITY | ROUTE_AT_CAPACITY | BREAKER_OPEN | NO_TARGET)
    )
}

/// Status and message for an error that ended a request.
pub fn describe(e: &Error, upstream: &str) -> (u16, String) {
    use ErrorType::*;
    match e.etype() {
        Custom(NO_TARGET) => (503, format!("no healthy target in upstream {upstream:?}")),
        Custom(AT_CAPACITY) => (
            503,
            format!("upstream {upstream:?} is at its concurrency limit"),
        ),
        Custom(ROUTE_AT_CAPACITY) => (503, "the route is at its concurrency limit".into()),
        Custom(BREAKER_OPEN) => (
            503,
            format!("upstream {upstream:?} is failing: its circuit breaker is open"),
        ),
        Custom(DEADLINE) => (
            504,
            format!("upstream {upstream:?} did not answer within the route's timeout"),
        ),
        HTTPStatus(code) => (*code, e.reason_str().to_string()),
        ConnectTimedout => (
            504,
            format!("connecting to upstream {upstream:?} timed out"),
        ),
        ReadTimedout | WriteTimedout if e.esource() == &ErrorSource::Upstream => {
            (504, format!("upstream {upstream:?} timed out"))
        }
        ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure | SocketError
        | BindError | TLSHandshakeFailure | TLSHandshakeTimedout | InvalidCert => {
            (502, format!("could not connect to upstream {upstream:?}"))
        }
        _ => match e.esource() {
            ErrorSource::Upstream => (502, format!("upstream {upstream:?} failed")),
            ErrorSource::Downstream => match e.etype() {
                WriteError | ReadError | ConnectionClosed => (0, String::new()),
                ReadTimedout => (408, "request timed out".into()),
                _ => (400, "bad request".into()),
            },
            _ => (500, "internal error".into()),
        },
    }
}
