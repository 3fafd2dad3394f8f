//! Client connections: how long each may take to send a request header, and a short linger
//! at shutdown. Pingora bounds each read of a header, not the whole header, so a client that
//! trickles one byte at a time holds its connection for ever; here every HTTP/1 connection
//! runs under a watch that closes it when a request header is not complete in time. The
//! watch is per connection, around the connection's request loop: a wrapper per request
//! would box (and copy) the whole request future once more for every request.
//!
//! The loop is ours rather than Pingora's so that a kept-alive connection waiting for its
//! next request holds only its socket: Pingora's loop waits inside the boxed request future,
//! whose size is the largest state of every phase, for as long as the client stays idle.

use crate::config::ServerSection;
use crate::lifecycle;
use crate::proxy::Gateway;
use crate::runtime::Runtime;
use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora_core::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora_core::protocols::http::ServerSession;
use pingora_core::protocols::{Stream, ALPN};
use pingora_core::server::ShutdownWatch;
use pingora_proxy::{HttpProxy, Session};
use std::cell::Cell;
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::sync::Notify;
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
    /// Set when the service stops: idle kept-alive connections close instead of waiting.
    closed: AtomicBool,
    closing: Notify,
}

impl ClientConnections {
    pub fn new(inner: HttpProxy<Gateway>, runtime: Arc<ArcSwap<Runtime>>, h2c: bool) -> Self {
        ClientConnections {
            inner: Arc::new(inner),
            runtime,
            h2c,
            waiting_first: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            closing: Notify::new(),
        }
    }

    /// The HTTP/1 requests of one connection, one after another, as Pingora's own loop runs
    /// them, except that between two requests nothing but the socket is held until the next
    /// request's first byte arrives.
    async fn requests(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
        keepalive: Duration,
    ) -> Option<Stream> {
        let mut session = ServerSession::new_http1(stream);
        // What Pingora sets on a new connection; our phases then set the configured values.
        session.set_keepalive((!*shutdown.borrow()).then_some(60));
        session.set_keepalive_reuses_remaining(
            self.inner
                .server_options()
                .and_then(|o| o.keepalive_request_limit),
        );
        let mut reused = self.inner.process_new_http(session, shutdown).await;
        while let Some(next) = reused {
            let (mut stream, settings) = next.consume();
            // Bytes of a pipelined request that Pingora read ahead are not in the socket any
            // more: the next session must start at once and parse them.
            if !settings.as_ref().is_some_and(may_hold_pipelined_bytes)
                && !self.next_request_arrives(&mut stream, keepalive).await
            {
                return None;
            }
            let mut session = ServerSession::new_http1(stream);
            if let Some(settings) = settings {
                settings.apply_to_session(&mut session);
            }
            reused = self.inner.process_new_http(session, shutdown).await;
        }
        None
    }

    /// Wait until the client sends the first byte of its next request: `false` when it
    /// closes, stays silent past the keep-alive timeout, or the service stops.
    async fn next_request_arrives(&self, stream: &mut Stream, keepalive: Duration) -> bool {
        let closing = self.closing.notified();
        let mut closing = std::pin::pin!(closing);
        closing.as_mut().enable();
        if self.closed.load(Ordering::SeqCst) {
            return false;
        }
        let mut first = [0u8; 1];
        tokio::select! {
            biased;
            // `try_peek` puts the byte back for the session's parser; a stream that cannot
            // peek (TLS) answers `false` at once and the session waits as Pingora's does.
            peeked = stream.try_peek(&mut first) => peeked.is_ok(),
            () = tokio::time::sleep(keepalive) => false,
            () = &mut closing => false,
        }
    }
}

/// Whether the previous request left bytes of the next one in Pingora's buffer. Pingora
/// keeps them in a private field of the settings it hands over; its `Debug` output is the
/// only view of it. Anything but a plain `pipelined_prefix: None` counts as "may hold", so a
/// change in Pingora costs the idle saving, never a pipelined request.
fn may_hold_pipelined_bytes(settings: &HttpPersistentSettings) -> bool {
    /// Follows the field-by-field writes of a derived `Debug` and stops at the prefix's value.
    #[derive(PartialEq)]
    enum Seen {
        Nothing,
        Name,
        Separator,
        Empty,
        Bytes,
    }
    struct Probe(Seen);
    impl std::fmt::Write for Probe {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 = match (&self.0, s) {
                (Seen::Nothing, "pipelined_prefix") => Seen::Name,
                (Seen::Name, ": ") => Seen::Separator,
                (Seen::Separator, "None") => Seen::Empty,
                (Seen::Separator, _) => Seen::Bytes,
                (Seen::Name, _) => Seen::Nothing,
                _ => return Ok(()),
            };
            // Stop formatting once the answer is known.
            match self.0 {
                Seen::Empty | Seen::Bytes => Err(std::fmt::Error),
                _ => Ok(()),
            }
        }
    }
    let mut probe = Probe(Seen::Nothing);
    let _ = write!(probe, "{settings:?}");
    probe.0 != Seen::Empty
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
        let requests = self.requests(stream, shutdown, keepalive);
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
        self.closed.store(true, Ordering::SeqCst);
        self.closing.notify_waiters();
        self.inner.cleanup().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::BytesMut;

    async fn settings() -> HttpPersistentSettings {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let stream: Stream = Box::new(pingora_core::protocols::l4::stream::Stream::from(client));
        let mut session = ServerSession::new_http1(stream);
        session.set_keepalive(Some(60));
        HttpPersistentSettings::for_session(&session)
    }

    /// Read through Pingora's `Debug`: if a Pingora update changes it, this fails, and until
    /// then the gateway only loses the idle saving (the "may hold" side is the default).
    #[tokio::test]
    async fn pipelined_bytes_are_seen_in_the_settings() {
        let empty = settings().await;
        assert!(!may_hold_pipelined_bytes(&empty));
        let mut held = settings().await;
        held.set_pipelined_prefix(BytesMut::from(&b"GET / HTTP/1.1\r\n"[..]));
        assert!(may_hold_pipelined_bytes(&held));
    }
}
