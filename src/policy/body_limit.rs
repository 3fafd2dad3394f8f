//! A route's `max_request_body`: a declared length over it is refused before the body is
//! read, and a body that turns out longer is cut off when it passes the limit.

use super::pipeline::{Build, Decision, Exchange, Respond, RoutePolicy};
use crate::request_parts::declared_length;
use bytes::Bytes;
use pingora_error::{Error, ErrorType, Result};

pub struct BodyLimit {
    max: u64,
}

impl BodyLimit {
    pub fn from_config(b: &mut Build<'_>) -> Option<Self> {
        b.route.max_request_body.map(|m| BodyLimit { max: m.0 })
    }
}

impl RoutePolicy for BodyLimit {
    const NAME: &'static str = "body_limit";

    fn describe(&self) -> String {
        format!("a body of at most {} bytes", self.max)
    }

    async fn request(&self, x: &mut Exchange<'_>) -> Decision {
        if declared_length(&x.session.req_header().headers).is_none_or(|l| l <= self.max) {
            return Decision::Continue;
        }
        let message = format!("request body over {} bytes", self.max);
        // The body is left unread: the connection cannot carry another request.
        Decision::Respond(Respond::new(413, "too_large", message).closing())
    }

    fn request_body(
        &self,
        x: &mut Exchange<'_>,
        body: &mut Option<Bytes>,
        _end: bool,
    ) -> Result<()> {
        let seen = &mut x.state.body_bytes;
        *seen = seen.saturating_add(body.as_ref().map_or(0, |b| b.len() as u64));
        if *seen > self.max {
            return Error::e_explain(
                ErrorType::HTTPStatus(413),
                format!("request body over {} bytes", self.max),
            );
        }
        Ok(())
    }
}
