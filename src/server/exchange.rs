//! The exchange plugin: one upstream request/response through Pingora's pooled connector.
//!
//! Runs after translation, once per attempt. It resolves the provider's host without blocking,
//! sends the head and the body plan (literal bytes, and spool ranges read chunk by chunk, so a
//! 20 MB image never sits in memory twice), reads the whole answer, and returns the connection
//! to the pool only when the answer was read to its end. A pooled connection that the provider
//! had closed is retried once on a fresh one, since nothing was answered yet. An upstream that
//! answers early (401, 413) while the body is still being sent is read as that answer.
//!
//! Every wait has its provider's limit: connecting (`connect_timeout_ms`), the answer's head
//! after the request (`first_byte_timeout_ms`), each further read and each body write
//! (`idle_timeout_ms`), and the whole exchange (`total_timeout_ms`); a passed one is an
//! [`GatewayError::UpstreamTimeout`] naming its [`TimeoutKind`].

use crate::codec::base64::Base64Stream;
use crate::error::{GatewayError, TimeoutKind};
use crate::providers::{BodySegment, UpstreamRequest, UpstreamResponse};
use crate::route::Target;
use crate::spool::Spool;
use bytes::{Bytes, BytesMut};
use pingora::connectors::http::Connector;
use pingora::http::RequestHeader;
use pingora::protocols::http::client::HttpSession;
use pingora::upstreams::peer::{HttpPeer, Peer};
use pingora::{Error, ErrorType};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

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

/// Resolves the provider's address without blocking the worker (Pingora's `HttpPeer::new`
/// would resolve synchronously and panic on failure).
async fn resolve(target: &Target) -> Result<SocketAddr, GatewayError> {
    let url = &target.provider.base_url;
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, url.port));
    }
    let mut addrs = tokio::net::lookup_host((url.host.as_str(), url.port))
        .await
        .map_err(|e| GatewayError::UpstreamConnect {
            provider: target.provider.name.clone(),
            detail: format!("cannot resolve {}: {e}", url.host),
        })?;
    addrs.next().ok_or_else(|| GatewayError::UpstreamConnect {
        provider: target.provider.name.clone(),
        detail: format!("{} resolves to no address", url.host),
    })
}

fn peer_for(target: &Target, addr: SocketAddr) -> HttpPeer {
    let p = &target.provider;
    let mut peer = HttpPeer::new(addr, p.base_url.https, p.base_url.host.clone());
    peer.options.connection_timeout = Some(p.timeouts.connect);
    peer.options.total_connection_timeout = Some(p.timeouts.connect);
    peer.options.read_timeout = Some(p.timeouts.first_byte);
    peer.options.write_timeout = Some(p.timeouts.idle);
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

/// Maps a Pingora error to the gateway's, naming the provider and never a key.
fn upstream_error(target: &Target, stage: Stage, e: &Error) -> GatewayError {
    let provider = target.provider.name.clone();
    let detail = format!("{}: {}", stage.as_str(), e.etype().as_str());
    let timeouts = &target.provider.timeouts;
    let timed_out = |kind: TimeoutKind, what: &str, key: &str, limit: Duration| GatewayError::UpstreamTimeout {
        provider: provider.clone(),
        kind,
        detail: format!("{what} within {key} ({} ms)", limit.as_millis()),
    };
    match (e.etype(), stage) {
        (ErrorType::ConnectTimedout | ErrorType::TLSHandshakeTimedout, _) => timed_out(
            TimeoutKind::Connect,
            "no connection",
            "connect_timeout_ms",
            timeouts.connect,
        ),
        (ErrorType::ReadTimedout, Stage::Head) => timed_out(
            TimeoutKind::FirstByte,
            "no answer head",
            "first_byte_timeout_ms",
            timeouts.first_byte,
        ),
        (ErrorType::ReadTimedout, Stage::Body) => {
            timed_out(TimeoutKind::Idle, "no answer bytes", "idle_timeout_ms", timeouts.idle)
        }
        (ErrorType::ReadTimedout | ErrorType::WriteTimedout, _) => timed_out(
            TimeoutKind::Idle,
            "the request body could not be sent",
            "idle_timeout_ms",
            timeouts.idle,
        ),
        (
            ErrorType::ConnectRefused
            | ErrorType::ConnectNoRoute
            | ErrorType::ConnectError
            | ErrorType::TLSHandshakeFailure
            | ErrorType::InvalidCert
            | ErrorType::HandshakeError,
            _,
        ) => GatewayError::UpstreamConnect { provider, detail },
        _ => GatewayError::UpstreamProtocol { provider, detail },
    }
}

/// Where an attempt failed: before the provider answered anything (safe to retry on a fresh
/// connection), or after.
enum AttemptError {
    BeforeAnswer(GatewayError),
    AfterAnswer(GatewayError),
}

/// A pooled or new connection to `peer`, with the peer's per-write timeout set on it (the
/// connector leaves that to Pingora's proxy loop, which refract does not use); reads get theirs
/// in [`read_head`] and [`read_body`].
/// Returns whether the connection was reused from the pool.
async fn connect(connector: &Connector, peer: &HttpPeer, target: &Target) -> Result<(HttpSession, bool), GatewayError> {
    let (mut session, reused) = connector
        .get_http_session(peer)
        .await
        .map_err(|e| upstream_error(target, Stage::Connect, &e))?;
    session.set_write_timeout(peer.options.write_timeout);
    Ok((session, reused))
}

/// Returns a connection whose answer was read to its end to the pool; closes any other.
async fn release(connector: &Connector, mut session: HttpSession, peer: &HttpPeer) {
    if session.response_done() {
        connector.release_http_session(session, peer, peer.idle_timeout()).await;
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
    tokio::time::timeout(
        target.provider.timeouts.total,
        exchange_untimed(connector, target, req, spool, sink),
    )
    .await
    .map_err(|_| deadline_passed(target))?
}

async fn exchange_untimed(
    connector: &Connector,
    target: &Target,
    req: &UpstreamRequest,
    spool: &Spool,
    sink: &mut dyn AnswerSink,
) -> Result<UpstreamResponse, GatewayError> {
    let addr = resolve(target).await?;
    let peer = peer_for(target, addr);
    let provider = target.provider.name.as_str();
    let mut tries = 0;
    loop {
        tries += 1;
        let (mut session, reused) = connect(connector, &peer, target).await?;
        match attempt(&mut session, target, req, spool, sink).await {
            Ok(resp) => {
                release(connector, session, &peer).await;
                return Ok(resp);
            }
            Err(AttemptError::BeforeAnswer(e)) if reused && tries < 2 => {
                log::debug!("pooled connection to {provider} failed before an answer ({e}); retrying on a fresh one");
                session.shutdown().await;
            }
            Err(AttemptError::BeforeAnswer(e)) | Err(AttemptError::AfterAnswer(e)) => {
                session.shutdown().await;
                return Err(e);
            }
        }
    }
}

async fn attempt(
    session: &mut HttpSession,
    target: &Target,
    req: &UpstreamRequest,
    spool: &Spool,
    sink: &mut dyn AnswerSink,
) -> Result<UpstreamResponse, AttemptError> {
    let before = |e: &Error| AttemptError::BeforeAnswer(upstream_error(target, Stage::Send, e));
    let mut head = RequestHeader::build(req.method.clone(), req.path.as_bytes(), None).map_err(|e| before(&e))?;
    let set = |head: &mut RequestHeader, name: http::HeaderName, value: String| {
        head.insert_header(name, value).map_err(|e| before(&e))
    };
    set(&mut head, http::header::HOST, target.provider.base_url.authority())?;
    set(
        &mut head,
        http::header::CONTENT_LENGTH,
        req.content_length().to_string(),
    )?;
    for (name, value) in &req.headers {
        set(&mut head, name.clone(), value.clone())?;
    }
    session
        .write_request_header(Box::new(head))
        .await
        .map_err(|e| before(&e))?;
    if let Err(send_err) = send_body(session, target, req, spool).await {
        // The provider may have answered early and closed: read that answer if there is one.
        return match read_head(session, target).await {
            Ok(status) => read_body(session, target, status, sink)
                .await
                .map_err(AttemptError::AfterAnswer),
            Err(_) => Err(send_err),
        };
    }
    let status = read_head(session, target).await.map_err(|e| match e {
        // A timeout means the provider may be working on it: never send it twice.
        GatewayError::UpstreamTimeout { .. } => AttemptError::AfterAnswer(e),
        other => AttemptError::BeforeAnswer(other),
    })?;
    read_body(session, target, status, sink)
        .await
        .map_err(AttemptError::AfterAnswer)
}

async fn send_body(
    session: &mut HttpSession,
    target: &Target,
    req: &UpstreamRequest,
    spool: &Spool,
) -> Result<(), AttemptError> {
    let send_err = |e: &Error| AttemptError::BeforeAnswer(upstream_error(target, Stage::Send, e));
    for segment in &req.body {
        match segment {
            BodySegment::Bytes(b) => session
                .write_request_body(b.clone(), false)
                .await
                .map_err(|e| send_err(&e))?,
            BodySegment::Base64(range) => {
                let mut encoder = Base64Stream::new();
                let mut chunks = spool.chunks(*range);
                loop {
                    let chunk = chunks.next().transpose().map_err(|e| {
                        AttemptError::AfterAnswer(GatewayError::Internal(format!("spool read failed: {e}")))
                    })?;
                    let mut out = Vec::with_capacity(chunk.as_ref().map_or(4, |c| c.len() / 3 * 4 + 8));
                    match &chunk {
                        Some(c) => encoder.push(c, &mut out),
                        None => encoder.finish(&mut out),
                    }
                    if !out.is_empty() {
                        session
                            .write_request_body(Bytes::from(out), false)
                            .await
                            .map_err(|e| send_err(&e))?;
                    }
                    if chunk.is_none() {
                        break;
                    }
                }
            }
            BodySegment::Spool(range) => {
                for chunk in spool.chunks(*range) {
                    let chunk: Bytes = chunk.map_err(|e| {
                        AttemptError::AfterAnswer(GatewayError::Internal(format!("spool read failed: {e}")))
                    })?;
                    session
                        .write_request_body(chunk, false)
                        .await
                        .map_err(|e| send_err(&e))?;
                }
            }
        }
    }
    session.finish_request_body().await.map_err(|e| send_err(&e))
}

/// Reads the answer's head (each read within `first_byte_timeout_ms`), skipping informational
/// (1xx) heads; returns the status.
async fn read_head(session: &mut HttpSession, target: &Target) -> Result<u16, GatewayError> {
    session.set_read_timeout(Some(target.provider.timeouts.first_byte));
    loop {
        match session.response_header().map(|h| h.status.as_u16()) {
            Some(s) if s >= 200 => return Ok(s),
            _ => session
                .read_response_header()
                .await
                .map_err(|e| upstream_error(target, Stage::Head, &e))?,
        }
    }
}

/// Reads the body of an answer whose head has arrived (each read within `idle_timeout_ms`):
/// whole, or into `sink` chunk by chunk.
async fn read_body(
    session: &mut HttpSession,
    target: &Target,
    status: u16,
    sink: &mut dyn AnswerSink,
) -> Result<UpstreamResponse, GatewayError> {
    session.set_read_timeout(Some(target.provider.timeouts.idle));
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
        while let Some(chunk) = session
            .read_response_body()
            .await
            .map_err(|e| upstream_error(target, Stage::Body, &e))?
        {
            if !chunk.is_empty() {
                sink.chunk(chunk).await?;
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
    // One allocation of the announced size (bounded), instead of growing and copying.
    let announced = session
        .response_header()
        .and_then(|h| h.headers.get(http::header::CONTENT_LENGTH))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = BytesMut::with_capacity(announced.min(MAX_RESPONSE_BYTES));
    while let Some(chunk) = session
        .read_response_body()
        .await
        .map_err(|e| upstream_error(target, Stage::Body, &e))?
    {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            return Err(GatewayError::UpstreamProtocol {
                provider: provider.to_string(),
                detail: format!("answer larger than {MAX_RESPONSE_BYTES} bytes"),
            });
        }
        body.extend_from_slice(&chunk);
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
    mut pieces: tokio::sync::mpsc::Receiver<Piece>,
    sink: &mut dyn AnswerSink,
) -> Streamed {
    let addr = match resolve(target).await {
        Ok(a) => a,
        Err(e) => return Streamed::Failed(e),
    };
    let peer = peer_for(target, addr);
    let (mut session, reused) = match connect(connector, &peer, target).await {
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
        Err(e) => return Streamed::Failed(upstream_error(target, Stage::Send, &e)),
    };
    let mut headers_ok = req
        .insert_header(http::header::HOST, target.provider.base_url.authority())
        .is_ok()
        && req.insert_header(http::header::TRANSFER_ENCODING, "chunked").is_ok();
    for (name, value) in &head.headers {
        headers_ok &= req.insert_header(name.clone(), value.clone()).is_ok();
    }
    if !headers_ok {
        return Streamed::Failed(GatewayError::Internal("invalid upstream header".into()));
    }
    if let Err(e) = session.write_request_header(Box::new(req)).await {
        session.shutdown().await;
        return Streamed::NotSent(upstream_error(target, Stage::Send, &e));
    }
    let mut complete = false;
    while let Some(piece) = pieces.recv().await {
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
            let answered = match read_head(&mut session, target).await {
                Ok(status) => read_body(&mut session, target, status, sink).await.ok(),
                Err(_) => None,
            };
            session.shutdown().await;
            return match answered {
                Some(resp) => Streamed::Answered(resp),
                // The body never reached its end upstream, so the provider did not act on it.
                None => Streamed::NotSent(upstream_error(target, Stage::Send, &e)),
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
    let answer = tokio::time::timeout(target.provider.timeouts.total, async {
        let status = read_head(&mut session, target).await.map_err(|e| match e {
            GatewayError::UpstreamTimeout { .. } => Streamed::Failed(e),
            other => not_sent(other),
        })?;
        read_body(&mut session, target, status, sink)
            .await
            .map_err(Streamed::Failed)
    })
    .await;
    match answer {
        Ok(Ok(resp)) => {
            release(connector, session, &peer).await;
            Streamed::Answered(resp)
        }
        Ok(Err(outcome)) => {
            session.shutdown().await;
            outcome
        }
        Err(_) => {
            session.shutdown().await;
            Streamed::Failed(deadline_passed(target))
        }
    }
}
