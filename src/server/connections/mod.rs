//! Client connections: what the gateway listeners run, in front of Pingora's HTTP app.
//!
//! Pingora bounds each read of a request head by itself (60 s, or nothing at all between two
//! requests of a kept-alive HTTP/1.1 connection), never the head as a whole, and accepts heads
//! up to 1 MiB; and it holds any number of idle connections. [`ClientConnections`] runs the
//! HTTP/1.x keep-alive loop itself instead, around Pingora's request processing:
//!
//! 1. **Wait for a request** (the first one too): the first bytes of the next head must come
//!    within `limits.keepalive_timeout_ms`, else the connection is closed silently. While it
//!    waits, the connection is *idle*: at the connection cap, the longest-idle connection is
//!    closed to make room for a new one.
//! 2. **Read the head** from its first byte until the blank line that ends it, within
//!    `limits.head_timeout_ms` for the whole head and `limits.max_head_bytes` in all. Past the
//!    deadline the connection is closed without an answer (as nginx does at
//!    `client_header_timeout`: the client is still sending, so an answer would race the close,
//!    and one that trickles its head is rarely a client that reads answers); past the size, a
//!    431 in Bifrost's shape, then a close.
//! 3. **Hand the bytes read** (the head and whatever came with it) to Pingora as a pipelined
//!    prefix: Pingora parses them without reading again, runs the request, and returns the
//!    connection if it may be reused; its persistent settings go to the next round.
//!
//! h2 connections (TLS with ALPN h2) go to Pingora as they are: its h2 server bounds a decoded
//! header list at 64 KiB and 100 concurrent streams, and closes a connection with no stream
//! open for `limits.keepalive_timeout_ms` (`h2_idle_timeout`); a HEADERS frame that never
//! completes opens no stream, so that timeout bounds it too.
//!
//! Every client connection, h1 or h2, holds one of `limits.max_connections` slots (by default
//! derived from the descriptor limit, [`default_cap`]). With every slot taken by a connection
//! that is not idle, a new one is refused: a 503 in Bifrost's shape with `Connection: close`
//! and `Retry-After`, then a close (an h2 client is closed without an answer: it would not read
//! an HTTP/1.1 one). Refusals are counted and logged at most once a second.
//!
//! Answers written here are followed by a bounded lingering close: the write side is shut,
//! and what the client still sends is read and dropped for a short while, so the close does not
//! reset the connection before the client has read the answer.

use crate::error::{ErrorContext, GatewayError};
use crate::metrics::{ConnectionClose, Metrics};
use async_trait::async_trait;
use bytes::BytesMut;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::{Stream, ALPN};
use pingora::server::ShutdownWatch;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

mod head;
mod registry;

use head::{read_head, Head};
use registry::{Slots, TrackedSlot};

/// The first read of a request head goes into a buffer of this size, allocated when the
/// connection starts waiting for a request and held for as long as it waits idle: small,
/// since an idle connection holds it (most request heads fit; a longer one is read on in
/// [`head::read_head`]).
const IDLE_HEAD_BUFFER: usize = 1024;
/// A head longer than [`IDLE_HEAD_BUFFER`] is read on into a buffer grown by at least this
/// much (as Pingora's own head buffer), then by doubling, up to `max_head_bytes`.
const INITIAL_HEAD_BUFFER: usize = 4096;
/// Descriptors kept out of the default connection cap: listeners, log files, the runtime's
/// event and timer descriptors, resolver sockets.
const RESERVED_DESCRIPTORS: u64 = 128;
/// The default connection cap is never below this.
const MIN_DEFAULT_CAP: usize = 16;
/// The soft descriptor limit is raised at most to this (a hard limit may be "unlimited").
const MAX_DESCRIPTORS: u64 = 1 << 24;
/// An answer written here (431, 503) must be taken by the client within this long.
const ANSWER_WRITE_LIMIT: Duration = Duration::from_secs(5);
/// After such an answer, what the client still sends is read and dropped for at most this
/// long…
const LINGER_TIME: Duration = Duration::from_secs(2);
/// …and at most this many bytes; then the connection is closed.
const LINGER_BYTES: usize = 256 * 1024;
/// At most this many refused connections linger at once (each holds a descriptor beyond the
/// cap); past it a refused connection is closed right after its answer.
const MAX_LINGERING: usize = 256;
/// Suggested wait before a refused client tries again, in seconds (`Retry-After`).
const RETRY_AFTER_SECONDS: u32 = 1;

/// The limits of client connections, from the config's `limits` section.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// The longest a request head may take from its first byte to its end.
    pub head_timeout: Duration,
    /// Largest request head, in bytes.
    pub max_head_bytes: usize,
    /// The longest a connection may wait for its next request (its first one included).
    pub keepalive_timeout: Duration,
    /// Most open client connections.
    pub max_connections: usize,
}

/// The connection cap derived from the process's descriptor limit `nofile`: what is left after
/// 128 (listeners, log files, the runtime's descriptors), halved (each client connection's
/// request may open about one descriptor more: an upstream connection or a spool file), at
/// least 16.
pub fn default_cap(nofile: u64) -> usize {
    let half = nofile.min(MAX_DESCRIPTORS).saturating_sub(RESERVED_DESCRIPTORS) / 2;
    usize::try_from(half).unwrap_or(usize::MAX).max(MIN_DEFAULT_CAP)
}

/// Runs once when the server is built: raises the soft descriptor limit (`RLIMIT_NOFILE`) to
/// the hard one, as Go's runtime and most nginx set-ups do, and logs what it did. Returns the
/// soft limit in force afterwards (`None` when it cannot be read or is unlimited).
pub fn raise_descriptor_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let before = getrlimit(Resource::Nofile);
    let hard = before.maximum.unwrap_or(MAX_DESCRIPTORS).min(MAX_DESCRIPTORS);
    match before.current {
        Some(soft) if soft < hard => {
            let raised = Rlimit {
                current: Some(hard),
                maximum: before.maximum,
            };
            match setrlimit(Resource::Nofile, raised) {
                Ok(()) => {
                    log::info!("descriptor limit (RLIMIT_NOFILE) raised from {soft} to {hard}");
                    Some(hard)
                }
                Err(e) => {
                    log::warn!("descriptor limit (RLIMIT_NOFILE) {soft} could not be raised to {hard}: {e}");
                    Some(soft)
                }
            }
        }
        other => other,
    }
}

/// The connection cap in force: `configured`, or [`default_cap`] of the descriptor limit
/// (raised first, [`raise_descriptor_limit`]). Logs the result.
pub fn connection_cap(configured: Option<usize>) -> usize {
    let nofile = raise_descriptor_limit();
    let derived = default_cap(nofile.unwrap_or(MAX_DESCRIPTORS));
    match configured {
        Some(cap) => {
            if cap > derived {
                log::warn!(
                    "limits.max_connections {cap} is more than the descriptor limit ({}) leaves room for ({derived}): \
                     at that many connections, accept() and upstream connections may fail",
                    nofile.map_or("unlimited".to_string(), |n| n.to_string())
                );
            }
            cap
        }
        None => {
            log::info!(
                "at most {derived} open client connections (from the descriptor limit {}; set limits.max_connections to change)",
                nofile.map_or("unlimited".to_string(), |n| n.to_string())
            );
            derived
        }
    }
}

/// The gateway listeners' app: Pingora's HTTP app `A` behind the keep-alive loop, head limits
/// and connection cap described in the module docs.
pub struct ClientConnections<A> {
    app: Arc<A>,
    limits: ConnectionLimits,
    slots: Slots,
}

impl<A> ClientConnections<A> {
    /// Wraps `app`; `limits.max_connections` is the cap in force (see [`connection_cap`]).
    pub fn new(app: Arc<A>, limits: ConnectionLimits, metrics: Arc<Metrics>) -> Self {
        metrics.connections.set_max(limits.max_connections);
        ClientConnections {
            app,
            slots: Slots::new(limits.max_connections, metrics),
            limits,
        }
    }
}

#[async_trait]
impl<A> ServerApp for ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// Runs for each accepted connection (after its TLS handshake) until it closes; always
    /// returns `None` (the keep-alive loop is this function's own).
    async fn process_new(self: &Arc<Self>, stream: Stream, shutdown: &ShutdownWatch) -> Option<Stream> {
        let h2 = matches!(stream.selected_alpn_proto(), Some(ALPN::H2));
        let Some(slot) = self.slots.acquire() else {
            self.slots.refused();
            if !h2 {
                let lingering = self.slots.lingering.fetch_add(1, Ordering::Relaxed) < MAX_LINGERING;
                let err = GatewayError::TooManyConnections { limit: self.slots.cap };
                answer_and_close(stream, &err, lingering).await;
                self.slots.lingering.fetch_sub(1, Ordering::Relaxed);
            }
            return None;
        };
        if h2 {
            let _slot = slot;
            return ServerApp::process_new(&self.app, stream, shutdown).await;
        }
        let conn = slot.track();
        self.serve_h1(stream, &conn, shutdown).await;
        drop(conn);
        None
    }

    async fn cleanup(&self) {
        self.app.http_cleanup().await;
    }
}

/// How the wait for a request ended.
enum Waited {
    /// Bytes of a head arrived.
    Data,
    /// The client closed the connection, or reading failed.
    Gone,
    /// Nothing came within the keep-alive timeout.
    IdleTimeout,
    /// Closed to make room for a new connection (counted by the evictor).
    Evicted,
    /// The server is shutting down.
    Shutdown,
}

impl<A> ClientConnections<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// The HTTP/1.x keep-alive loop of one connection (module docs, steps 1–3).
    async fn serve_h1(&self, mut stream: Stream, conn: &TrackedSlot<'_>, shutdown: &ShutdownWatch) {
        let metrics = &self.slots.metrics.connections;
        let mut watch = shutdown.clone();
        let mut carried: Option<HttpPersistentSettings> = None;
        // Pingora's keep-alive value only matters if it ever read a head itself (the scan
        // below saw an end Pingora does not): then each of its reads gets this long.
        let head_seconds = self.limits.head_timeout.as_secs().max(1);
        loop {
            let mut buf = BytesMut::with_capacity(IDLE_HEAD_BUFFER.min(self.limits.max_head_bytes));
            match self.wait_for_request(&mut stream, &mut buf, conn, &mut watch).await {
                Waited::Data => {}
                Waited::IdleTimeout => {
                    metrics.closed(ConnectionClose::IdleTimeout);
                    return;
                }
                Waited::Gone | Waited::Evicted | Waited::Shutdown => return,
            }
            match read_head(&mut stream, &mut buf, &self.limits).await {
                Head::Complete => {}
                Head::TooLarge => {
                    metrics.closed(ConnectionClose::HeadTooLarge);
                    let err = GatewayError::HeadTooLarge {
                        limit: self.limits.max_head_bytes,
                    };
                    answer_and_close(stream, &err, true).await;
                    return;
                }
                Head::TimedOut => {
                    metrics.closed(ConnectionClose::HeadTimeout);
                    return;
                }
                Head::Gone => return,
            }
            let mut session = ServerSession::new_http1(stream);
            match carried.take() {
                Some(settings) => settings.apply_to_session(&mut session),
                None => session
                    .set_keepalive_reuses_remaining(self.app.server_options().and_then(|o| o.keepalive_request_limit)),
            }
            // Shutting down: this request is the connection's last.
            session.set_keepalive((!*watch.borrow()).then_some(head_seconds));
            // Pipelining is off (Pingora closes a connection whose client sent past the end of
            // its request), so Pingora hands no prefix of the next request back; the next head
            // is read from the stream by the next round.
            session.set_pipelined_prefix(buf);
            let Some(reused) = self.app.process_new_http(session, shutdown).await else {
                return;
            };
            let (next, settings) = reused.consume();
            stream = next;
            carried = settings;
        }
    }

    /// Waits for the first bytes of the next request head (read into `buf`), at most
    /// `keepalive_timeout`; meanwhile the connection is idle, and may be evicted.
    async fn wait_for_request(
        &self,
        stream: &mut Stream,
        buf: &mut BytesMut,
        conn: &TrackedSlot<'_>,
        watch: &mut ShutdownWatch,
    ) -> Waited {
        if *watch.borrow() {
            return Waited::Shutdown;
        }
        let idle = conn.enter_idle();
        let limit = self.limits.max_head_bytes as u64;
        let mut limited = (&mut *stream).take(limit);
        let waited = pingora::time::timeout(self.limits.keepalive_timeout, async {
            tokio::select! {
                biased;
                read = limited.read_buf(buf) => match read {
                    Ok(n) if n > 0 => Waited::Data,
                    _ => Waited::Gone,
                },
                _ = conn.evicted() => Waited::Evicted,
                _ = shutdown_started(watch) => Waited::Shutdown,
            }
        })
        .await
        .unwrap_or(Waited::IdleTimeout);
        if !conn.leave_idle(idle) {
            // Evicted while the bytes arrived: its slot belongs to the new connection now.
            return Waited::Evicted;
        }
        waited
    }
}

/// Resolves once the server starts shutting down.
async fn shutdown_started(watch: &mut ShutdownWatch) {
    loop {
        if *watch.borrow() {
            return;
        }
        if watch.changed().await.is_err() {
            // The server is gone: nothing will ever say so; wait for the other branches.
            std::future::pending::<()>().await;
        }
    }
}

/// Writes `err` as a complete HTTP/1.1 answer in Bifrost's shape with `Connection: close`
/// (and `Retry-After` for a 503), shuts the write side, then, when `linger`, reads and drops
/// what the client still sends (at most [`LINGER_TIME`] and [`LINGER_BYTES`]) before the
/// stream is dropped, so that the close does not reset the answer away.
async fn answer_and_close(mut stream: Stream, err: &GatewayError, linger: bool) {
    let request_id = uuid::Uuid::new_v4().to_string();
    let answer = error_answer(err, &request_id);
    let written = pingora::time::timeout(ANSWER_WRITE_LIMIT, async {
        stream.write_all(&answer).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await
    })
    .await;
    if !matches!(written, Ok(Ok(()))) || !linger {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut sink = vec![0u8; 16 * 1024];
    let mut drained = 0;
    while drained < LINGER_BYTES {
        let left = deadline.saturating_duration_since(Instant::now());
        match pingora::time::timeout(left, stream.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => drained += n,
            _ => return,
        }
    }
}

/// The bytes of an HTTP/1.1 answer carrying `err` in Bifrost's shape.
fn error_answer(err: &GatewayError, request_id: &str) -> Vec<u8> {
    let body = err.to_body(&ErrorContext {
        request_id: Some(request_id),
        ..Default::default()
    });
    let status = err.status();
    let reason = http::StatusCode::from_u16(status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("Error");
    let retry_after = if status == 503 {
        format!("Retry-After: {RETRY_AFTER_SECONDS}\r\n")
    } else {
        String::new()
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         x-request-id: {request_id}\r\n{retry_after}Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_cap_follows_the_descriptor_limit() {
        assert_eq!(default_cap(1024), 448);
        assert_eq!(default_cap(20_000), 9_936);
        assert_eq!(default_cap(1_048_576), 524_224);
        assert_eq!(default_cap(100), MIN_DEFAULT_CAP);
        assert_eq!(default_cap(u64::MAX), default_cap(MAX_DESCRIPTORS));
    }

    #[test]
    fn error_answers_are_complete_http_in_bifrost_shape() {
        let answer = error_answer(&GatewayError::TooManyConnections { limit: 20 }, "req-1");
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut resp = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = resp.parse(&answer).unwrap() else {
            panic!("incomplete head");
        };
        assert_eq!(resp.code, Some(503));
        let header = |name: &str| {
            resp.headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
        };
        assert_eq!(header("connection").as_deref(), Some("close"));
        assert_eq!(header("retry-after").as_deref(), Some("1"));
        assert_eq!(header("x-request-id").as_deref(), Some("req-1"));
        let body: serde_json::Value = serde_json::from_slice(&answer[head..]).unwrap();
        assert_eq!(header("content-length"), Some((answer.len() - head).to_string()));
        assert_eq!(body["error"]["code"], "too_many_connections");
        assert_eq!(body["event_id"], "req-1");

        let answer = error_answer(&GatewayError::HeadTooLarge { limit: 8192 }, "req-2");
        let text = String::from_utf8_lossy(&answer);
        assert!(
            text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{text}"
        );
        assert!(!text.contains("Retry-After"), "{text}");
    }
}
