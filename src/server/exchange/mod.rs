//! The exchange plugin: one upstream request/response through Pingora's pooled connector.
//!
//! Runs after translation, once per attempt. It resolves the provider's host without blocking,
//! sends the head and the body plan ([`send`]: literal bytes, and spool ranges read chunk by
//! chunk, so a 20 MB image never sits in memory twice; over HTTP/1.1 gathered into vectored
//! writes), reads the whole answer, and returns the connection
//! to the pool only when the answer was read to its end. A pooled connection that the provider
//! had closed is retried once on a fresh one, since nothing was answered yet. An upstream that
//! answers early (401, 413) while the body is still being sent is read as that answer.
//!
//! Every wait has its provider's limit: connecting (`connect_timeout_ms`), the answer's head
//! after the request (`first_byte_timeout_ms`), each further read and each body write
//! (`idle_timeout_ms`), and the whole exchange (`total_timeout_ms`); a passed one is an
//! [`GatewayError::UpstreamTimeout`] naming its [`TimeoutKind`]. The total has no timer of its
//! own: each wait's limit is cut to what is left of it (`Clock`), so it is enforced by the
//! timer of each read and write (a tokio timer per exchange would wake a parked worker thread
//! on every request).

use crate::error::{GatewayError, TimeoutKind};
use crate::providers::{UpstreamRequest, UpstreamResponse};
use crate::route::Target;
use crate::server::resolver::Resolver;
use crate::server::upstreams::Connector;
use crate::spool::Spool;
use bytes::{Bytes, BytesMut};
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tracing::Instrument;

mod send;

/// Where an answer's body goes: collected whole (the default, [`Collect`]), or handed over
/// chunk by chunk as it arrives (streams).
#[async_trait::async_trait]
pub trait AnswerSink: Send {
    /// The answer's head arrived: `true` to receive the body through [`AnswerSink::chunk`]
    /// (the returned answer then has an empty body), `false` to have it collected.
    fn wants_chunks(&mut self, _status: u16, _content_type: Option<&str>) -> bool {
        false
    }
    /// The next chunk of a body being handed over. An error (the client went away, or the
    /// stream cannot be converted) ends the exchange: the connection is closed, not pooled.
    async fn chunk(&mut self, _bytes: Bytes) -> Result<(), GatewayError> {
        Ok(())
    }
    /// The body being handed over ended normally.
    async fn end(&mut self) -> Result<(), GatewayError> {
        Ok(())
    }
}

/// The sink that collects every answer whole.
#[derive(Debug, Default)]
pub struct Collect;

impl AnswerSink for Collect {}

/// Largest provider answer read into memory (512 MiB): ten 4K images in base64 fit easily.
pub const MAX_RESPONSE_BYTES: usize = 512 * 1024 * 1024;

/// The clock of one exchange, started when it starts: ends at `total_timeout_ms`. Also the
/// clock of a client's upload (`limits.upload_timeout_ms`), whose reads it limits the same way.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    /// `None` when the total is too far away to be represented (never reached).
    deadline: Option<Instant>,
}

/// The limit of one wait, and whether the total (rather than the wait's own limit) set it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub(crate) wait: Duration,
    pub(crate) by_total: bool,
}

impl Clock {
    fn start(target: &Target) -> Clock {
        Clock::ending(Instant::now(), target.provider.timeouts.total)
    }

    /// A clock whose total ends `total` after `start`.
    pub(crate) fn ending(start: Instant, total: Duration) -> Clock {
        Clock {
            deadline: start.checked_add(total),
        }
    }

    /// A clock without a total: each wait has only its own limit.
    fn unbounded() -> Clock {
        Clock { deadline: None }
    }

    /// `own`, or what is left of the total when that is shorter.
    pub(crate) fn limit(&self, own: Duration) -> Limit {
        match self.deadline.map(|d| d.saturating_duration_since(Instant::now())) {
            Some(left) if left < own => Limit {
                wait: left,
                by_total: true,
            },
            _ => Limit {
                wait: own,
                by_total: false,
            },
        }
    }
}

/// The process's cache of provider addresses.
static RESOLVER: std::sync::LazyLock<Resolver> = std::sync::LazyLock::new(Resolver::system);

/// After a failed connection to a provider named by host name: its address is looked up again
/// by the next request (the host may have moved).
async fn forget_address(target: &Target) {
    let url = &target.provider.base_url;
    if url.host.parse::<IpAddr>().is_err() {
        RESOLVER.forget(&url.host, url.port).await;
    }
}

/// Resolves the provider's address without blocking the worker (Pingora's `HttpPeer::new`
/// would resolve synchronously and panic on failure), within the connect limit, through the
/// process's address cache ([`Resolver`]).
async fn resolve(target: &Target, limit: Limit) -> Result<SocketAddr, GatewayError> {
    let url = &target.provider.base_url;
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, url.port));
    }
    pingora::prelude::timeout(limit.wait, RESOLVER.resolve(&url.host, url.port))
        .await
        .map_err(|_| timed_out(target, Stage::Connect, limit))?
        .map_err(|e| GatewayError::UpstreamConnect {
            provider: target.provider.name.clone(),
            detail: format!("cannot resolve {}: {e}", url.host),
        })
}

/// The peer for `target` at `addr`, connecting within `connect` (the connect limit, cut by the
/// total).
fn peer_for(target: &Target, addr: SocketAddr, connect: Duration) -> HttpPeer {
    let p = &target.provider;
    let mut peer = HttpPeer::new(addr, p.base_url.https, p.base_url.host.clone());
    peer.options.connection_timeout = Some(connect);
    peer.options.total_connection_timeout = Some(connect);
    peer.options.idle_timeout = Some(p.timeouts.pool_idle);
    peer
}

/// What an exchange was doing when it failed: decides which timeout a timed-out wait passed.
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Connecting (TCP, TLS).
    Connect,
    /// Building or sending the request.
    Send,
    /// Waiting for the answer's head.
    Head,
    /// Reading the answer's body.
    Body,
}

impl Stage {
    fn as_str(self) -> &'static str {
        match self {
            Stage::Connect => "connect",
            Stage::Send => "send",
            Stage::Head => "read head",
            Stage::Body => "read body",
        }
    }
}

/// The error for a wait of `stage` that passed `limit`: the total's, when the total set it;
/// otherwise the stage's own (connect, first byte, or idle).
fn timed_out(target: &Target, stage: Stage, limit: Limit) -> GatewayError {
    if limit.by_total {
        return deadline_passed(target);
    }
    let timeouts = &target.provider.timeouts;
    let (kind, what, key, own) = match stage {
        Stage::Connect => (
            TimeoutKind::Connect,
            "no connection",
            "connect_timeout_ms",
            timeouts.connect,
        ),
        Stage::Head => (
            TimeoutKind::FirstByte,
            "no answer head",
            "first_byte_timeout_ms",
            timeouts.first_byte,
        ),
        Stage::Body => (TimeoutKind::Idle, "no answer bytes", "idle_timeout_ms", timeouts.idle),
        Stage::Send => (
            TimeoutKind::Idle,
            "the request body could not be sent",
            "idle_timeout_ms",
            timeouts.idle,
        ),
    };
    GatewayError::UpstreamTimeout {
        provider: target.provider.name.clone(),
        kind,
        detail: format!("{what} within {key} ({} ms)", own.as_millis()),
    }
}

/// Maps a Pingora error of a wait of `stage` under `limit` to the gateway's, naming the
/// provider and never a key.
fn upstream_error(target: &Target, stage: Stage, limit: Limit, e: &Error) -> GatewayError {
    let provider = target.provider.name.clone();
    let detail = format!("{}: {}", stage.as_str(), e.etype().as_str());
    match e.etype() {
        ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout => timed_out(target, Stage::Connect, limit),
        // A read that timed out while sending is the provider not taking the body.
        ErrorType::ReadTimedout | ErrorType::WriteTimedout => timed_out(target, stage, limit),
        ErrorType::ConnectRefused
        | ErrorType::ConnectNoRoute
        | ErrorType::ConnectError
        | ErrorType::TLSHandshakeFailure
        | ErrorType::InvalidCert
        | ErrorType::HandshakeError => GatewayError::UpstreamConnect { provider, detail },
        _ => GatewayError::UpstreamProtocol { provider, detail },
    }
}

/// Where an attempt failed: before the provider answered anything (safe to retry on a fresh
/// connection), or after.
enum AttemptError {
    BeforeAnswer(GatewayError),
    AfterAnswer(GatewayError),
}

/// A pooled or new connection to `peer` (connecting within the connect limit `limit`, which
/// the peer carries). Returns whether the connection was reused from the pool. A failed
/// connection has the provider's address looked up again by the next request.
async fn connect(
    connector: &Connector,
    peer: &HttpPeer,
    target: &Target,
    limit: Limit,
) -> Result<(HttpSession, bool), GatewayError> {
    match connector.get_http_session(peer).await {
        Ok(connected) => Ok(connected),
        Err(e) => {
            forget_address(target).await;
            Err(upstream_error(target, Stage::Connect, limit, &e))
        }
    }
}

/// Arms the next write to the provider: within `idle_timeout_ms`, cut by the total.
fn arm_write(session: &mut HttpSession, target: &Target, clock: &Clock) -> Limit {
    let limit = clock.limit(target.provider.timeouts.idle);
    session.set_write_timeout(Some(limit.wait));
    limit
}

/// Returns a connection whose answer was read to its end to the pool; closes any other.
async fn release(connector: &Connector, mut session: HttpSession, peer: &HttpPeer) {
    if session.response_done() {
        connector.release_http_session(session, peer).await;
    } else {
        session.shutdown().await;
    }
}

/// The error for an exchange that passed its provider's `total_timeout_ms`.
fn deadline_passed(target: &Target) -> GatewayError {
    GatewayError::UpstreamTimeout {
        provider: target.provider.name.clone(),
        kind: TimeoutKind::Total,
        detail: format!(
            "no complete answer within total_timeout_ms ({} ms)",
            target.provider.timeouts.total.as_millis()
        ),
    }
}

/// Sends `req` to `target` and reads the complete answer, within the provider's total timeout
/// (each wait also within its connect, first-byte or idle timeout).
pub async fn exchange(
    connector: &Connector,
    target: &Target,
    req: &UpstreamRequest,
    spool: &Spool,
    sink: &mut dyn AnswerSink,
) -> Result<UpstreamResponse, GatewayError> {
    let span = exchange_span(target);
    exchange_within(connector, target, req, spool, sink)
        .instrument(span)
        .await
}

/// The span of one upstream exchange (a child of the current one: the attempt's); its
/// `status` is recorded once the answer's head arrived, and its `retry` says whether the
/// exchange was sent again on a fresh connection (a pooled one had been closed).
fn exchange_span(target: &Target) -> tracing::Span {
    tracing::info_span!(
        target: crate::telemetry::SPAN_TARGET,
        "exchange",
        provider = %target.provider.name,
        status = tracing::field::Empty,
        retry = 0u32,
    )
}

/// Adds the W3C `traceparent` of the current span (the exchange's) to an upstream request's
/// head, when spans are recorded: the provider's trace continues the request's.
fn add_traceparent(head: &mut RequestHeader) -> Result<(), Box<Error>> {
    match crate::telemetry::traceparent(&tracing::Span::current()) {
        Some(value) => head.insert_header("traceparent", value),
        None => Ok(()),
    }
}

/// [`exchange`], within its span.
async fn exchange_within(
    connector: &Connector,
    target: &Target,
    req: &UpstreamRequest,
    spool: &Spool,
    sink: &mut dyn AnswerSink,
) -> Result<UpstreamResponse, GatewayError> {
    let clock = Clock::start(target);
    let addr = resolve(target, clock.limit(target.provider.timeouts.connect)).await?;
    let provider = target.provider.name.as_str();
    let scope = send::SendScope {
        target,
        clock: &clock,
        req,
        spool,
    };
    let mut tries = 0;
    loop {
        tries += 1;
        let limit = clock.limit(target.provider.timeouts.connect);
        let peer = peer_for(target, addr, limit.wait);
        let (session, reused) = connect(connector, &peer, target, limit).await?;
        let (mut session, answer) = attempt(session, &peer, scope, sink).await;
        match answer {
            Ok(resp) => {
                release(connector, session, &peer).await;
                return Ok(resp);
            }
            Err(AttemptError::BeforeAnswer(e)) if reused && tries < 2 => {
                log::debug!("pooled connection to {provider} failed before an answer ({e}); retrying on a fresh one");
                tracing::Span::current().record("retry", tries);
                session.shutdown().await;
            }
            Err(AttemptError::BeforeAnswer(e)) | Err(AttemptError::AfterAnswer(e)) => {
                session.shutdown().await;
                return Err(e);
            }
        }
    }
}

/// One try of an exchange on a connection: sends the request (see [`send`]) and reads the
/// answer; returns the session it ended on, to be pooled or closed.
async fn attempt(
    session: HttpSession,
    peer: &HttpPeer,
    scope: send::SendScope<'_>,
    sink: &mut dyn AnswerSink,
) -> (HttpSession, Result<UpstreamResponse, AttemptError>) {
    let send::SendScope { target, clock, req, .. } = scope;
    let prepared = match send::prepare(target, clock, req) {
        Ok(p) => p,
        Err(e) => return (session, Err(e)),
    };
    let (mut session, sent) = send::send(session, peer, prepared, scope).await;
    let answer = async {
        if let Err(send_err) = sent {
            // The provider may have answered early and closed: read that answer if there is one.
            return match read_head(&mut session, target, clock).await {
                Ok(status) => read_body(&mut session, target, clock, status, sink)
                    .await
                    .map_err(AttemptError::AfterAnswer),
                Err(_) => Err(send_err),
            };
        }
        let status = read_head(&mut session, target, clock).await.map_err(|e| match e {
            // A timeout means the provider may be working on it: never send it twice.
            GatewayError::UpstreamTimeout { .. } => AttemptError::AfterAnswer(e),
            other => AttemptError::BeforeAnswer(other),
        })?;
        read_body(&mut session, target, clock, status, sink)
            .await
            .map_err(AttemptError::AfterAnswer)
    }
    .await;
    (session, answer)
}

/// Reads the answer's head (each read within `first_byte_timeout_ms`, cut by the total),
/// skipping informational (1xx) heads; returns the status.
async fn read_head(session: &mut HttpSession, target: &Target, clock: &Clock) -> Result<u16, GatewayError> {
    loop {
        match session.response_header().map(|h| h.status.as_u16()) {
            Some(s) if s >= 200 => {
                tracing::Span::current().record("status", s);
                return Ok(s);
            }
            _ => {
                let limit = clock.limit(target.provider.timeouts.first_byte);
                session.set_read_timeout(Some(limit.wait));
                session
                    .read_response_header()
                    .await
                    .map_err(|e| upstream_error(target, Stage::Head, limit, &e))?
            }
        }
    }
}

/// Reads the next chunk of the answer's body (within `idle_timeout_ms`, cut by the total);
/// `None` at its end.
async fn read_chunk(session: &mut HttpSession, target: &Target, clock: &Clock) -> Result<Option<Bytes>, GatewayError> {
    let limit = clock.limit(target.provider.timeouts.idle);
    session.set_read_timeout(Some(limit.wait));
    session
        .read_response_body()
        .await
        .map_err(|e| upstream_error(target, Stage::Body, limit, &e))
}

/// Reads the body of an answer whose head has arrived: whole, or into `sink` chunk by chunk
/// (a chunk the sink cannot take before the total passes is the total's timeout).
async fn read_body(
    session: &mut HttpSession,
    target: &Target,
    clock: &Clock,
    status: u16,
    sink: &mut dyn AnswerSink,
) -> Result<UpstreamResponse, GatewayError> {
    let provider = target.provider.name.as_str();
    let content_type = session
        .response_header()
        .and_then(|h| h.headers.get(http::header::CONTENT_TYPE))
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let retry_after = session
        .response_header()
        .and_then(|h| h.headers.get(http::header::RETRY_AFTER))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| crate::server::breaker::parse_retry_after(v, std::time::SystemTime::now()));
    if sink.wants_chunks(status, content_type.as_deref()) {
        while let Some(chunk) = read_chunk(session, target, clock).await? {
            if !chunk.is_empty() {
                let limit = clock.limit(target.provider.timeouts.total);
                pingora::prelude::timeout(limit.wait, sink.chunk(chunk))
                    .await
                    .map_err(|_| deadline_passed(target))??;
            }
        }
        sink.end().await?;
        return Ok(UpstreamResponse {
            retry_after,
            status,
            content_type,
            body: Bytes::new(),
        });
    }
    let too_large = || GatewayError::UpstreamProtocol {
        provider: provider.to_string(),
        detail: format!("answer larger than {MAX_RESPONSE_BYTES} bytes"),
    };
    // One allocation of the announced size (bounded), instead of growing and copying; an
    // answer announced larger than the bound is refused before any of it is read.
    let announced = session
        .response_header()
        .and_then(|h| h.headers.get(http::header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    if announced > MAX_RESPONSE_BYTES {
        return Err(too_large());
    }
    let mut body = BytesMut::with_capacity(announced);
    let mut append = |chunk: &[u8]| {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(too_large());
        }
        body.extend_from_slice(chunk);
        Ok(())
    };
    match session {
        // HTTP/1: straight from the session's read buffer into the answer's (one copy, not
        // two through a `Bytes` per chunk); the timeouts as in `read_chunk`.
        HttpSession::H1(h1) => loop {
            let limit = clock.limit(target.provider.timeouts.idle);
            h1.read_timeout = Some(limit.wait);
            match h1.read_body_ref().await {
                Ok(Some(chunk)) => append(chunk)?,
                Ok(None) => break,
                Err(e) => return Err(upstream_error(target, Stage::Body, limit, &e)),
            }
        },
        _ => {
            while let Some(chunk) = read_chunk(session, target, clock).await? {
                append(&chunk)?;
            }
        }
    }
    Ok(UpstreamResponse {
        retry_after,
        status,
        content_type,
        body: body.freeze(),
    })
}

/// One piece of a request body streamed upstream while the client is still uploading.
#[derive(Debug)]
pub enum Piece {
    /// Body bytes, in order.
    Data(Bytes),
    /// The form was complete and valid: end the body and read the answer.
    End,
}

/// How a streamed attempt ended.
#[derive(Debug)]
pub enum Streamed {
    /// The provider answered (possibly early, before the body was complete).
    Answered(UpstreamResponse),
    /// Nothing was answered and the body was not complete upstream (a pooled connection had
    /// been closed, or the client's form turned out invalid): the caller may send the request
    /// again from the spool.
    NotSent(GatewayError),
    /// The attempt failed after the provider may have acted on it.
    Failed(GatewayError),
}

/// Sends a request whose body arrives through `pieces` while the client uploads: the head
/// goes out at once (body chunked), each piece as it comes. Closing `pieces` without
/// [`Piece::End`] abandons the request, so the provider never sees a complete body. Dropping
/// the receiver (when this returns early) tells the sender to stop streaming.
pub async fn exchange_streamed(
    connector: &Connector,
    target: &Target,
    head: UpstreamRequest,
    pieces: tokio::sync::mpsc::Receiver<Piece>,
    sink: &mut dyn AnswerSink,
) -> Streamed {
    let span = exchange_span(target);
    exchange_streamed_within(connector, target, head, pieces, sink)
        .instrument(span)
        .await
}

/// [`exchange_streamed`], within its span.
async fn exchange_streamed_within(
    connector: &Connector,
    target: &Target,
    head: UpstreamRequest,
    mut pieces: tokio::sync::mpsc::Receiver<Piece>,
    sink: &mut dyn AnswerSink,
) -> Streamed {
    // The upload is paced by the client: the total starts when it is complete.
    let uploading = Clock::unbounded();
    let connect_limit = uploading.limit(target.provider.timeouts.connect);
    let addr = match resolve(target, connect_limit).await {
        Ok(a) => a,
        Err(e) => return Streamed::Failed(e),
    };
    let peer = peer_for(target, addr, connect_limit.wait);
    let (mut session, reused) = match connect(connector, &peer, target, connect_limit).await {
        Ok(s) => s,
        Err(e) => return Streamed::Failed(e),
    };
    // Before an answer: a reused connection may just have been closed by the provider.
    let not_sent = |e: GatewayError| {
        if reused {
            Streamed::NotSent(e)
        } else {
            Streamed::Failed(e)
        }
    };
    let mut req = match RequestHeader::build(head.method.clone(), head.path.as_bytes(), None) {
        Ok(r) => r,
        Err(_) => return Streamed::Failed(GatewayError::Internal("invalid upstream request line".into())),
    };
    let mut headers_ok = req
        .insert_header(http::header::HOST, target.provider.base_url.authority())
        .is_ok()
        && req.insert_header(http::header::TRANSFER_ENCODING, "chunked").is_ok();
    for (name, value) in &head.headers {
        headers_ok &= req.insert_header(name.clone(), value.clone()).is_ok();
    }
    headers_ok &= add_traceparent(&mut req).is_ok();
    if !headers_ok {
        return Streamed::Failed(GatewayError::Internal("invalid upstream header".into()));
    }
    let limit = arm_write(&mut session, target, &uploading);
    if let Err(e) = session.write_request_header(Box::new(req)).await {
        session.shutdown().await;
        return Streamed::NotSent(upstream_error(target, Stage::Send, limit, &e));
    }
    let mut complete = false;
    while let Some(piece) = pieces.recv().await {
        let limit = arm_write(&mut session, target, &uploading);
        let written = match piece {
            Piece::Data(b) => session.write_request_body(b, false).await,
            Piece::End => {
                complete = true;
                session.finish_request_body().await
            }
        };
        if let Err(e) = written {
            // An early answer (401, 413…) shows up as a failed write: read it if it is there.
            drop(pieces);
            let answering = Clock::start(target);
            let answered = match read_head(&mut session, target, &answering).await {
                Ok(status) => read_body(&mut session, target, &answering, status, sink).await.ok(),
                Err(_) => None,
            };
            session.shutdown().await;
            return match answered {
                Some(resp) => Streamed::Answered(resp),
                // The body never reached its end upstream, so the provider did not act on it.
                None => Streamed::NotSent(upstream_error(target, Stage::Send, limit, &e)),
            };
        }
        if complete {
            break;
        }
    }
    drop(pieces);
    if !complete {
        session.shutdown().await;
        return Streamed::NotSent(GatewayError::Internal("request abandoned before its end".into()));
    }
    let answering = Clock::start(target);
    let answer = async {
        let status = read_head(&mut session, target, &answering).await.map_err(|e| match e {
            GatewayError::UpstreamTimeout { .. } => Streamed::Failed(e),
            other => not_sent(other),
        })?;
        read_body(&mut session, target, &answering, status, sink)
            .await
            .map_err(Streamed::Failed)
    }
    .await;
    match answer {
        Ok(resp) => {
            release(connector, session, &peer).await;
            Streamed::Answered(resp)
        }
        Err(outcome) => {
            session.shutdown().await;
            outcome
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_gets_its_own_limit_until_the_total_is_nearer() {
        let far = Clock {
            deadline: Some(Instant::now() + Duration::from_secs(600)),
        };
        let own = far.limit(Duration::from_secs(60));
        assert_eq!((own.wait, own.by_total), (Duration::from_secs(60), false));

        let near = Clock {
            deadline: Some(Instant::now() + Duration::from_millis(300)),
        };
        let cut = near.limit(Duration::from_secs(60));
        assert!(cut.by_total && cut.wait <= Duration::from_millis(300), "{cut:?}");

        let passed = Clock {
            deadline: Some(Instant::now() - Duration::from_millis(1)),
        };
        let none_left = passed.limit(Duration::from_secs(60));
        assert_eq!((none_left.wait, none_left.by_total), (Duration::ZERO, true));

        let unbounded = Clock::unbounded().limit(Duration::from_secs(60));
        assert_eq!((unbounded.wait, unbounded.by_total), (Duration::from_secs(60), false));
    }
}
