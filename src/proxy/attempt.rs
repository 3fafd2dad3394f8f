//! The upstream attempts of a request: choosing the target and its peer, counting each
//! attempt's outcome for outlier detection and the breaker, and deciding retries.

use super::ctx::{Ctx, Parts};
use super::failures::*;
use crate::clock;
use crate::upstream::failure::Failure;
use crate::upstream::retry::RetryPolicy;
use crate::upstream::Pool;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_error::{Error, ErrorSource, ErrorType, Result, RetryType};
use pingora_http::ResponseHeader;
use pingora_proxy::Session;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

/// A target not in `exclude`, by the pool's algorithm and hash key.
fn select(
    pool: &Pool,
    session: &Session,
    ip: Option<IpAddr>,
    exclude: &[SocketAddr],
) -> Option<SocketAddr> {
    let mut scratch = [0u8; 16];
    let key = match &pool.hash_key {
        Some(k) => k.extract(session.req_header(), ip, &mut scratch),
        None => b"",
    };
    pool.select(key, exclude)
}

impl Parts<'_> {
    fn retry_policy(&self) -> &RetryPolicy {
        self.route
            .retry
            .as_ref()
            .unwrap_or(&self.pool.default_retry)
    }

    /// Count the current attempt's outcome for outlier detection and the breaker.
    fn record(&mut self, outcome: std::result::Result<(), Failure>) {
        let probe = self.attempt.probe.take();
        self.pool.record(self.attempt.target, outcome, probe);
    }

    /// The current attempt failed: its target is not the first choice again.
    fn failed(&mut self) {
        if let Some(t) = self.attempt.target.take() {
            self.attempt.failed.push(t);
        }
    }

    /// After a failed attempt (whose target is already in `failed`): whether to try again,
    /// with the back-off to wait first set. Connect failures never reached the upstream;
    /// anything else is tried again only for idempotent requests whose body is still at
    /// hand and whose response has not started.
    fn retry(&mut self, session: &Session, failure: Failure) -> bool {
        let policy = self.retry_policy();
        if self.attempt.count as usize >= policy.attempts || !policy.retries(failure) {
            return false;
        }
        if failure != Failure::Connect {
            let safe = session.req_header().method.is_idempotent()
                && !session.as_ref().retry_buffer_truncated()
                && session.response_written().is_none();
            if !safe {
                return false;
            }
        }
        // A refused connect goes to another target or nowhere; other failures may try the
        // same target again when it is the only one.
        let pool = self.pool;
        if failure == Failure::Connect
            && select(pool, session, self.client_ip, &self.attempt.failed).is_none()
        {
            return false;
        }
        let backoff = policy.backoff(self.attempt.count);
        if self
            .attempt
            .deadline
            .is_some_and(|d| Instant::now() + backoff >= d)
        {
            return false;
        }
        if !pool.budget.try_retry(clock::now_ms()) {
            pool.metrics.budget_exhausted.inc();
            log::debug!(
                "request {}: retry budget of upstream {:?} used up",
                self.request_id,
                pool.name
            );
            return false;
        }
        pool.metrics.retries.inc();
        self.attempt.backoff = backoff;
        true
    }
}

/// `upstream_peer`: the next attempt's target and its peer, bounded by the try timeout and
/// the route's deadline; or why there is none to try.
pub async fn peer(session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
    let Some(p) = ctx.parts() else {
        return Error::e_explain(ErrorType::InternalError, "no route selected");
    };
    if !p.attempt.backoff.is_zero() {
        tokio::time::sleep(std::mem::take(&mut p.attempt.backoff)).await;
    }
    let now = Instant::now();
    p.times.connect_start = Some(now);
    let (route, pool) = (p.route, p.pool);
    let a = &mut *p.attempt;
    let first = a.count == 0;
    a.count += 1;
    match pool.breaker_admit(first) {
        Ok(probe) => a.probe = probe,
        Err(ms) => {
            a.breaker_retry_after = ms.div_ceil(1000).max(1);
            pool.metrics.breaker_rejections.inc();
            return Error::e_explain(ErrorType::Custom(BREAKER_OPEN), "not tried");
        }
    }
    if first {
        if let Some(limit) = &route.limit {
            a.route_slot = limit.acquire();
            if a.route_slot.is_none() {
                route.metrics.overloaded();
                return Error::e_explain(
                    ErrorType::Custom(ROUTE_AT_CAPACITY),
                    "every max_concurrent slot of the route is taken",
                );
            }
        }
        match pool.admit() {
            Ok(slot) => a.upstream_slot = slot,
            Err(_at_capacity) => {
                pool.metrics.overloaded.inc();
                return Error::e_explain(
                    ErrorType::Custom(AT_CAPACITY),
                    "every max_concurrent slot is taken",
                );
            }
        }
        a.deadline = route.deadline.map(|d| p.times.start + d);
        pool.budget.request(clock::now_ms());
    }
    // Each wait of this attempt ends by the try timeout and by the route's deadline.
    let try_timeout = route
        .retry
        .as_ref()
        .unwrap_or(&pool.default_retry)
        .try_timeout;
    let mut bound = try_timeout;
    if let Some(deadline) = a.deadline {
        let left = deadline.saturating_duration_since(now);
        if left.is_zero() {
            return Error::e_explain(ErrorType::Custom(DEADLINE), "before an attempt");
        }
        bound = Some(bound.map_or(left, |b| b.min(left)));
    }
    let ip = p.client_ip;
    let addr = select(pool, session, ip, &a.failed).or_else(|| {
        // Every target failed once already: a failure worth retrying may pass on a second
        // try at the same one.
        (!a.failed.is_empty())
            .then(|| select(pool, session, ip, &[]))
            .flatten()
    });
    let Some(addr) = addr else {
        return Error::e_explain(ErrorType::Custom(NO_TARGET), "every target is out");
    };
    let (mut peer, host) = pool
        .peer(&addr)
        .ok_or_else(|| Error::explain(ErrorType::InternalError, "selected target has no peer"))?;
    if session.is_upgrade_req() {
        // The service's side of an upgraded connection: the route's idle limit.
        peer.options.read_timeout = Some(route.upgrade_idle);
    }
    if let Some(b) = bound {
        let o = &mut peer.options;
        for t in [
            &mut o.connection_timeout,
            &mut o.read_timeout,
            &mut o.write_timeout,
        ] {
            *t = Some(t.map_or(b, |t| t.min(b)));
        }
    }
    a.upstream_host = Some(host.clone());
    a.target = Some(addr);
    // A retry's target counts instead of the failed one's.
    a.active = pool.track(&addr);
    Ok(peer)
}

/// `fail_to_connect`: counted against the target, and maybe tried elsewhere.
pub fn connect_failed(session: &Session, ctx: &mut Ctx, mut e: Box<Error>) -> Box<Error> {
    let Some(mut p) = ctx.parts() else {
        return e;
    };
    p.record(Err(Failure::Connect));
    p.failed();
    p.pool.metrics.connect_failures.inc();
    if e.etype() == &ErrorType::ConnectTimedout {
        p.pool.metrics.timeouts.inc();
    }
    let retry = p.retry(session, Failure::Connect);
    e.set_retry(retry);
    e
}

/// `error_while_proxy`: an attempt that broke off after connecting.
pub fn proxy_failed(
    session: &Session,
    ctx: &mut Ctx,
    mut e: Box<Error>,
    client_reused: bool,
) -> Box<Error> {
    if e.etype() == &ErrorType::Custom(RETRY_STATUS) {
        // Recorded and decided when the response header came.
        return e;
    }
    let Some(mut p) = ctx.parts() else {
        e.set_retry(false);
        return e;
    };
    if matches!(e.retry, RetryType::ReusedOnly) && client_reused {
        // A kept-alive connection the upstream had closed meanwhile: no fault of the
        // target's, but another attempt all the same, counted like any other (Pingora alone
        // would try up to 16 times).
        p.failed();
        let retry = p.retry(session, Failure::Reset);
        e.set_retry(retry);
        return e;
    }
    if e.esource() != &ErrorSource::Upstream {
        e.set_retry(false);
        return e;
    }
    let failure = match e.etype() {
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => Failure::Timeout,
        _ => Failure::Reset,
    };
    if failure == Failure::Timeout {
        p.pool.metrics.timeouts.inc();
    }
    p.attempt.answered = false;
    p.record(Err(failure));
    p.failed();
    let retry = p.retry(session, failure);
    e.set_retry(retry);
    e
}

/// `upstream_response_filter`: a status the route retries ends the attempt as an error.
pub fn answered(session: &Session, ctx: &mut Ctx, resp: &ResponseHeader) -> Result<()> {
    ctx.times.response = Some(Instant::now());
    let status = resp.status.as_u16();
    if status < 200 {
        return Ok(());
    }
    let Some(mut p) = ctx.parts() else {
        return Ok(());
    };
    if status < 500 {
        p.attempt.answered = true;
        return Ok(());
    }
    let failure = Failure::Status(status);
    p.record(Err(failure));
    p.failed();
    if p.retry(session, failure) {
        let mut e = Error::explain(
            ErrorType::Custom(RETRY_STATUS),
            format!("upstream answered {status}"),
        );
        e.set_retry(true);
        return Err(e);
    }
    Ok(())
}

/// `connected_to_upstream`.
pub fn connected(ctx: &mut Ctx, reused: bool) {
    ctx.times.connected = Some(Instant::now());
    if let Some(pool) = ctx.pool() {
        if reused {
            pool.metrics.reused_connections.inc();
        } else {
            pool.metrics.new_connections.inc();
        }
    }
}

/// The request is over: an attempt that got its answer succeeded.
pub fn finished(ctx: &mut Ctx) {
    if !std::mem::take(&mut ctx.attempt.answered) {
        return;
    }
    if let Some(mut p) = ctx.parts() {
        p.record(Ok(()));
    }
}
