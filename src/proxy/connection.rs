//! Client connections: how long each may take to send a request header, and a short linger
//! at shutdown. Pingora bounds each read of a header, not the whole header, so a client that
//! trickles one byte at a time holds its connection for ever; here every HTTP/1 connection
//! runs under a watch that closes it when a request header is not complete in time. The
//! watch is per connection, around Pingora's own request loop: a wrapper per request would
//! box (and copy) the whole request future once more for every request.

use crate::config::ServerSection;
use crate::lifecycle;
use crate::proxy::Gateway;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::ServerApp;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::{HttpProxy, Session};
use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::time::Instant;

tokio::task_local! {
    /// The header deadline of the connection this task serves.
    static HEADER_WATCH: HeaderWatch;
}

/// When the request header being waited for is due, shared between the connection's watch
/// and the proxy phases of its requests.
struct HeaderWatch {
    /// `None` while a request is being handled (its header is in).
    due: Cell<Option<Instant>>,
    /// A later request's header is due this long after the one before it ended: the
    /// keep-alive wait for its first byte plus the header timeout.
    next: Duration,
    /// A request header has come in on this connection.
    seen: Cell<bool>,
}

/// Called by the first proxy phase: the header is in, the watch is off until it ends.
pub fn header_read() {
    let _ = HEADER_WATCH.try_with(|w| {
        w.due.set(None);
        w.seen.set(true);
    });
}

/// Called when a request ends: the next header on this connection is due.
pub fn request_done() {
    let _ = HEADER_WATCH.try_with(|w| w.due.set(Some(Instant::now() + w.next)));
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

/// Run a connection's requests; `None` (and the connection dropped) when a request header
/// does not come in by the time it is due. Once a header is in, its request runs as long as
/// it needs.
async fn watched<F: Future<Output = Option<Stream>>>(
    connection: F,
    first_due: Instant,
    fresh: &Fresh<'_>,
) -> Option<Stream> {
    let mut connection = std::pin::pin!(connection);
    let mut timer = std::pin::pin!(tokio::time::sleep_until(first_due));
    let mut armed = first_due;
    std::future::poll_fn(|cx| {
        if let Poll::Ready(out) = connection.as_mut().poll(cx) {
            return Poll::Ready(out);
        }
        let (due, seen) = HEADER_WATCH.with(|w| (w.due.get(), w.seen.get()));
        if seen {
            fresh.done();
        }
        let Some(due) = due else {
            return Poll::Pending;
        };
        if due != armed {
            timer.as_mut().reset(due);
            armed = due;
        }
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Poll::Pending
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
        // The first header is due `header_timeout` after the connection opened; a later one
        // may first wait up to `keepalive_timeout` for its first byte.
        let fresh = Fresh::new(&self.waiting_first);
        let first_due = Instant::now() + header;
        let watch = HeaderWatch {
            due: Cell::new(Some(first_due)),
            next: keepalive + header,
            seen: Cell::new(false),
        };
        let requests = self.inner.process_new(stream, shutdown);
        HEADER_WATCH
            .scope(watch, watched(requests, first_due, &fresh))
            .await
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
