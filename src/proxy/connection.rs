//! Client connections: how long each may take to send a request header, and a short linger
//! at shutdown. Pingora bounds each read of a header, not the whole header, so a client that
//! trickles one byte at a time holds its connection for ever; here every HTTP/1 request runs
//! under a watch that closes the connection when its header is not complete in time.

use crate::config::ServerSection;
use crate::lifecycle;
use crate::proxy::Gateway;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::{HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::{HttpProxy, Session};
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

tokio::task_local! {
    /// Set once the current request's header has been read (by the first proxy phase).
    static HEADER_READ: Cell<bool>;
}

/// Called by the first proxy phase: the header is in, the watch is over.
pub fn header_read() {
    let _ = HEADER_READ.try_with(|done| done.set(true));
}

/// The server's connection settings for this request: keep-alive (none while draining),
/// the wait between body reads, pipelining.
pub fn apply_server_settings(session: &mut Session, server: &ServerSection) {
    if lifecycle::state() == lifecycle::State::Draining {
        // Answer with `Connection: close` while draining, so that keep-alive clients move
        // to the new process (or away) before idle connections are closed under them,
        // which would fail a request sent at that moment.
        session.set_keepalive(None);
    } else if session.get_keepalive().is_some() {
        // Pingora waits forever for the next request on a kept-alive connection.
        session.set_keepalive(Some(server.keepalive_timeout.ceil_secs()));
    }
    // Bounds each wait for more of the request body.
    session.set_read_timeout(Some(server.body_timeout.0));
    if server.pipelining {
        session.set_pipelining_enabled(true);
    }
}

/// How connections accepted just before the listeners stopped get to send their request
/// before Pingora closes every connection still waiting for one.
const LINGER: Duration = Duration::from_millis(250);

/// How long, after the linger, a stop or an upgrade waits for connections that have not sent
/// their first request yet (a client that connected and is about to send it).
const FIRST_REQUEST_WAIT: Duration = Duration::from_secs(2);

/// Counts connections that have not sent a whole first request header; each one counted
/// once, until its header is in or the connection ends.
struct Fresh<'a> {
    waiting: &'a AtomicUsize,
    counted: AtomicBool,
}

impl<'a> Fresh<'a> {
    fn new(waiting: &'a AtomicUsize) -> Self {
        waiting.fetch_add(1, Ordering::SeqCst);
        Fresh {
            waiting,
            counted: AtomicBool::new(true),
        }
    }

    fn done(&self) {
        if self.counted.swap(false, Ordering::SeqCst) {
            self.waiting.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl Drop for Fresh<'_> {
    fn drop(&mut self) {
        self.done();
    }
}

/// The proxy, under header deadlines, with a short pause between the end of accepting and
/// Pingora's closing of connections that wait for a request header. Without the pause, a
/// connection accepted a moment before a stop or an upgrade is closed before its request
/// arrives, and that request fails; with it, such requests are answered (with
/// `Connection: close`).
pub struct ClientConnections {
    inner: Arc<HttpProxy<Gateway>>,
    runtime: Arc<ArcSwap<Runtime>>,
    h2c: bool,
    /// HTTP/1 connections still to send their first request header.
    waiting_first: AtomicUsize,
}

impl ClientConnections {
    pub fn new(inner: HttpProxy<Gateway>, runtime: Arc<ArcSwap<Runtime>>, h2c: bool) -> Self {
        ClientConnections {
            inner: Arc::new(inner),
            runtime,
            h2c,
            waiting_first: AtomicUsize::new(0),
        }
    }
}

/// Run one request's processing; `None` (and the connection dropped) when its header was
/// not read within `limit`. Once the header is in, the request runs as long as it needs.
async fn within<F: Future>(
    limit: Duration,
    request: F,
    fresh: Option<&Fresh<'_>>,
) -> Option<F::Output> {
    HEADER_READ
        .scope(Cell::new(false), async move {
            let mut request = std::pin::pin!(request);
            let mut deadline = std::pin::pin!(tokio::time::sleep(limit));
            std::future::poll_fn(|cx| {
                if let Poll::Ready(out) = request.as_mut().poll(cx) {
                    return Poll::Ready(Some(out));
                }
                let done = HEADER_READ.try_with(Cell::get).unwrap_or(true);
                if done {
                    if let Some(f) = fresh {
                        f.done();
                    }
                } else if deadline.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
        })
        .await
}

#[async_trait]
impl ServerApp for ClientConnections {
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let (keepalive, header) = {
            let rt = self.runtime.load();
            (rt.server.keepalive_timeout.0, rt.server.header_timeout.0)
        };
        let tls = stream.get_ssl_digest().is_some();
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        if !tls && self.h2c {
            // HTTP/2 prior knowledge starts with "PRI"; an HTTP/1 request never does.
            let mut start = [0u8; 3];
            match tokio::time::timeout(header, stream.try_peek(&mut start)).await {
                Ok(Ok(true)) if &start == b"PRI" => {
                    return self.inner.process_new(stream, shutdown).await
                }
                Ok(Ok(_)) => {}
                _ => return None,
            }
        }
        let mut session = ServerSession::new_http1(stream);
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(keepalive.as_secs().max(1)));
        }
        let limit = self
            .inner
            .server_options()
            .and_then(|o| o.keepalive_request_limit);
        session.set_keepalive_reuses_remaining(limit);
        // The first header is due `header_timeout` after the connection opened; a later one
        // may first wait up to `keepalive_timeout` for its first byte.
        let mut deadline = header;
        let fresh = Fresh::new(&self.waiting_first);
        let mut first = Some(&fresh);
        loop {
            let request = self.inner.process_new_http(session, shutdown);
            let reused = within(deadline, request, first.take()).await.flatten();
            fresh.done();
            let reused = reused?;
            let (stream, settings) = reused.consume();
            session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            deadline = keepalive + header;
        }
    }

    async fn cleanup(&self) {
        tokio::time::sleep(LINGER).await;
        // A client that connected just before the listeners stopped and has not sent its
        // request yet would otherwise lose it: Pingora closes every session still waiting
        // for a request. Idle kept-alive connections are not waited for.
        let until = tokio::time::Instant::now() + FIRST_REQUEST_WAIT;
        while self.waiting_first.load(Ordering::SeqCst) > 0 && tokio::time::Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        self.inner.cleanup().await;
    }
}
