//! The built-in provider simulator's listener: reads each request body as it arrives into a
//! spool ([`simulator::read_body`]: files and base64 images go to the spool, at most
//! `spool.memory_bytes` of them in memory, the whole body at most 256 MiB), answers it with
//! [`simulator::route`], and writes the answer from its spool in 64 KiB chunks: in one piece
//! with its `Content-Length`, or, for streams, one frame after another.
//!
//! The async side only moves bytes. The CPU work (reading the images, editing, encoding,
//! base64) runs on the gateway's decode pool (blocking threads, at most
//! `limits.decode_concurrency` jobs at once, images within `limits.max_image_pixels`): a whole
//! answer is one job, a stream one job per frame, so a slow reader of a stream holds no place
//! in the pool between frames.

use crate::config::{SimulatorSettings, SpoolSettings};
use crate::form::BodySource;
use crate::imaging::DecodePool;
use crate::simulator::{self, Body, BodyError, Frame, RenderPlace, SimAnswer, SimRequest, SimStream, StreamSettings};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};

/// The simulator service.
pub struct SimulatorApp {
    stream: StreamSettings,
    decoder: DecodePool,
    place: RenderPlace,
}

impl SimulatorApp {
    /// The simulator configured by the `simulator:` section, decoding on `decoder` (within its
    /// pixel budget), spooling uploads and answers as `spool:` says.
    pub fn new(settings: &SimulatorSettings, decoder: DecodePool, spool: &SpoolSettings) -> Self {
        SimulatorApp {
            stream: StreamSettings::from(settings),
            place: RenderPlace {
                max_image_pixels: decoder.max_pixels(),
                spool: spool.into(),
            },
            decoder,
        }
    }
}

/// The request body as a [`BodySource`], keeping Pingora's error of a failed read.
struct SessionBody<'a> {
    session: &'a mut Session,
    error: Option<Box<Error>>,
}

#[async_trait]
impl BodySource for SessionBody<'_> {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        self.session.read_request_body().await.map_err(|e| {
            let io = std::io::Error::other(e.etype().as_str());
            self.error = Some(e);
            io
        })
    }
}

/// An OpenAI-shaped error answer, in memory.
fn small_error(status: u16, code: &str, message: &str) -> simulator::SimResponse {
    simulator::SimResponse::json(
        status,
        &serde_json::json!({"error": {"message": message, "type": "invalid_request_error", "param": null, "code": code}}),
    )
}

/// Writes a whole answer: its head with the body's length, then the body from its spool.
async fn respond(session: &mut Session, answer: simulator::SimResponse) -> Result<bool> {
    let mut resp = ResponseHeader::build(answer.status, Some(3))?;
    resp.insert_header(http::header::CONTENT_TYPE, answer.content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, answer.body.len().to_string())?;
    if let Err(e) = session.write_response_header(Box::new(resp), false).await {
        return Ok(client_gone(session, &e));
    }
    if !write_body(session, &answer.body, u64::MAX).await {
        return Ok(true);
    }
    if let Err(e) = session.write_response_body(None, true).await {
        return Ok(client_gone(session, &e));
    }
    Ok(true)
}

/// Writes the first `limit` bytes of `body`, 64 KiB at a time; `false` when the client went
/// away or the spool could not be read (the connection is then not reused).
async fn write_body(session: &mut Session, body: &Body, limit: u64) -> bool {
    for chunk in body.chunks(limit) {
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                log::error!("simulator: cannot read an answer's spool: {e}");
                session.set_keepalive(None);
                return false;
            }
        };
        if let Err(e) = session.write_response_body(Some(chunk), false).await {
            client_gone(session, &e);
            return false;
        }
    }
    true
}

/// Writes a streamed answer: the head, then each frame, rendered on the decode pool, after the
/// configured wait. A client that goes away only ends the stream: the first failed write stops
/// it, quietly.
async fn respond_stream(session: &mut Session, mut stream: Box<SimStream>, decoder: &DecodePool) -> Result<bool> {
    let mut resp = ResponseHeader::build(200, Some(4))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    if let Err(e) = session.write_response_header(Box::new(resp), false).await {
        return Ok(client_gone(session, &e));
    }
    let interval = stream.interval();
    loop {
        let rendered = decoder
            .run(move || {
                let frame = stream.next_frame();
                (stream, frame)
            })
            .await;
        let frame = match rendered {
            Ok((back, Some(frame))) => {
                stream = back;
                frame
            }
            Ok((_, None)) => break,
            Err(e) => {
                log::error!("simulator: {e}");
                session.set_keepalive(None);
                return Ok(true);
            }
        };
        if !interval.is_zero() {
            tokio::time::sleep(interval).await;
        }
        let (body, limit, end) = match frame {
            Frame::Event(body) => (body, u64::MAX, false),
            Frame::Truncated(body, half) => {
                // the truncate hook: half an event, then the end of the body, then close
                session.set_keepalive(None);
                (body, half, true)
            }
        };
        if !write_body(session, &body, limit).await {
            return Ok(true);
        }
        if end {
            break;
        }
    }
    if let Err(e) = session.write_response_body(None, true).await {
        return Ok(client_gone(session, &e));
    }
    Ok(true)
}

/// A write to the client failed (it went away): stop, and never reuse the connection.
fn client_gone(session: &mut Session, e: &Error) -> bool {
    log::debug!("simulator: answer ended early, client gone: {e}");
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
            return respond(session, small_error(404, "not_found", "not found")).await;
        }
        let path = req.uri.path().to_string();
        let query = req.uri.query().map(str::to_string);
        let headers = req.headers.clone();
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let mut source = SessionBody { session, error: None };
        let read = simulator::read_body(&mut source, content_type.as_deref(), &self.place.spool).await;
        let failed_read = source.error.take();
        let body = match read {
            Ok(body) => body,
            Err(BodyError::TooLarge(what)) => {
                session.set_keepalive(None);
                return respond(
                    session,
                    small_error(413, "too_large", &format!("request {what} too large")),
                )
                .await;
            }
            Err(BodyError::Io(e)) => {
                session.set_keepalive(None);
                return match failed_read {
                    Some(read_error) => Err(read_error),
                    None => Err(Error::explain(
                        ErrorType::InternalError,
                        format!("simulator spool: {e}"),
                    )),
                };
            }
        };
        let request = SimRequest {
            path,
            query,
            headers,
            body,
            place: self.place.clone(),
        };
        let settings = self.stream;
        let answer = match self.decoder.run(move || simulator::route(request, &settings)).await {
            Ok(answer) => answer,
            Err(e) => {
                log::error!("simulator: {e}");
                let failed = simulator::SimResponse::json(
                    500,
                    &serde_json::json!({"error": {"message": "the simulator failed", "type": "server_error", "param": null, "code": "internal_error"}}),
                );
                return respond(session, failed).await;
            }
        };
        match answer {
            SimAnswer::Whole(answer) => respond(session, answer).await,
            SimAnswer::Stream(stream) => respond_stream(session, stream, &self.decoder).await,
        }
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "the simulator has no upstream",
        ))
    }
}
