//! The built-in provider simulator's listener: reads the whole request (it is a test double,
//! bounded to 256 MiB) and answers with [`crate::simulator::route`]: in one piece, or, for
//! `stream=true`, as a chunked `text/event-stream` written one event per chunk.
//!
//! The answer is made on the gateway's decode pool (blocking threads, at most
//! `limits.decode_concurrency` at once, images within `limits.max_image_pixels`): decoding and
//! editing images never runs on the threads that serve connections.

use crate::config::SimulatorSettings;
use crate::imaging::DecodePool;
use crate::simulator::{self, Frame, SimAnswer, SimRequest, SimStream, StreamSettings};
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

/// Largest request the simulator reads.
const MAX_SIM_BODY: usize = 256 * 1024 * 1024;

/// The simulator service.
pub struct SimulatorApp {
    stream: StreamSettings,
    decoder: DecodePool,
}

impl SimulatorApp {
    /// The simulator configured by the `simulator:` section, decoding on `decoder`.
    pub fn new(settings: &SimulatorSettings, decoder: DecodePool) -> Self {
        SimulatorApp {
            stream: StreamSettings::from(settings),
            decoder,
        }
    }
}

async fn respond(session: &mut Session, status: u16, content_type: &str, body: Vec<u8>) -> Result<bool> {
    let mut resp = ResponseHeader::build(status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(Bytes::from(body)), true).await?;
    Ok(true)
}

/// Writes a streamed answer: the head, then each frame as its own chunk after the configured
/// wait. A client that goes away only ends the stream: the first failed write stops it, quietly.
async fn respond_stream(session: &mut Session, mut stream: SimStream) -> Result<bool> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    if let Err(e) = session.write_response_header(Box::new(resp), false).await {
        return Ok(client_gone(session, &e));
    }
    let interval = stream.interval();
    while let Some(frame) = stream.next_frame() {
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        let (bytes, end) = match frame {
            Frame::Event(event) => (event.to_bytes(), false),
            Frame::Truncated(half) => {
                // the truncate hook: half an event, then the end of the body, then close
                session.set_keepalive(None);
                (half, true)
            }
        };
        if let Err(e) = session.write_response_body(Some(Bytes::from(bytes)), end).await {
            return Ok(client_gone(session, &e));
        }
        if end {
            return Ok(true);
        }
    }
    if let Err(e) = session.write_response_body(None, true).await {
        return Ok(client_gone(session, &e));
    }
    Ok(true)
}

/// Writes a `text/event-stream` answer given as chunks, one per stream interval.
async fn respond_chunks(session: &mut Session, chunks: Vec<Bytes>, interval: std::time::Duration) -> Result<bool> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    if let Err(e) = session.write_response_header(Box::new(resp), false).await {
        return Ok(client_gone(session, &e));
    }
    for chunk in chunks {
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        if let Err(e) = session.write_response_body(Some(chunk), false).await {
            return Ok(client_gone(session, &e));
        }
    }
    if let Err(e) = session.write_response_body(None, true).await {
        return Ok(client_gone(session, &e));
    }
    Ok(true)
}

/// A write to the client failed (it went away): stop, and never reuse the connection.
fn client_gone(session: &mut Session, e: &Error) -> bool {
    log::debug!("simulator: stream ended early, client gone: {e}");
    session.set_keepalive(None);
    true
}

#[async_trait]
impl ProxyHttp for SimulatorApp {
    type CTX = ();

    fn new_ctx(&self) {}

    /// Answers every request: a `POST` or `GET` (polls, result images) the simulator knows
    /// ([`simulator::route`]), anything else with a 404.
    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> Result<bool> {
        let req = session.req_header();
        if req.method != http::Method::POST && req.method != http::Method::GET {
            session.set_keepalive(None);
            return respond(
                session,
                404,
                "application/json",
                br#"{"error":{"message":"not found","type":"invalid_request_error","param":null,"code":"not_found"}}"#
                    .to_vec(),
            )
            .await;
        }
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let headers = req.headers.clone();
        let mut body = BytesMut::new();
        while let Some(chunk) = session.read_request_body().await? {
            if body.len() + chunk.len() > MAX_SIM_BODY {
                session.set_keepalive(None);
                return respond(session, 413, "application/json", br#"{"error":{"message":"request too large","type":"invalid_request_error","param":null,"code":"too_large"}}"#.to_vec()).await;
            }
            body.extend_from_slice(&chunk);
        }
        let request = SimRequest {
            path,
            query,
            headers,
            body: body.freeze(),
            max_image_pixels: self.decoder.max_pixels(),
        };
        let settings = self.stream;
        let runtime = tokio::runtime::Handle::current();
        let answer = self
            .decoder
            .run(move || runtime.block_on(simulator::route(request, &settings)))
            .await;
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                log::error!("simulator: {e}");
                return respond(session, 500, "application/json", br#"{"error":{"message":"the simulator failed","type":"server_error","param":null,"code":"internal_error"}}"#.to_vec()).await;
            }
        };
        match answer {
            SimAnswer::Whole(answer) => respond(session, answer.status, answer.content_type, answer.body).await,
            SimAnswer::Stream(stream) => respond_stream(session, *stream).await,
            SimAnswer::Chunks(chunks) => respond_chunks(session, chunks, self.stream.interval).await,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "the simulator has no upstream",
        ))
    }
}
