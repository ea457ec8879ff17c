//! `Gateway`: the `ProxyHttp` implementation. Pingora decides when things run; this file only
//! calls the plugins in order and writes what they decide.
//!
//! | phase | work |
//! |---|---|
//! | `early_request_filter` | request id, start timer, in-flight gauge |
//! | `request_filter` | the whole request: route by path → auth → 100-continue → parse (with the model check) → route → translate → exchange → convert → respond; returns `Ok(true)` |
//! | `logging` | account: metrics and the access log line, once per request, every outcome |
//!
//! `upstream_peer` is required by the trait but never reached: every request is answered in
//! `request_filter`, because Pingora's own proxy loop replays only 64 KiB of body and cannot
//! retry after a response head (see the README's design notes).

use super::exchange::{exchange, exchange_streamed, AnswerSink, Piece, Streamed};
use super::AppState;
use crate::auth::Identity;
use crate::error::{ErrorContext, GatewayError};
use crate::form::{parse_edit_form, BodySource, FormSink};
use crate::imaging::ImageKind;
use crate::metrics::RequestRecord;
use crate::providers::stream::{synthesize_stream, Framing, StreamContext, StreamPipeline};
use crate::providers::{adapter_for, ResponseContext};
use crate::providers::{RequestEncoder, UpstreamRequest};
use crate::route::{Router, Target};
use crate::spool::Spool;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorType, Result};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Uploads at least this large (or of unknown length) are streamed upstream while they arrive;
/// smaller ones are read whole and sent from the spool with an exact Content-Length, which costs
/// less than chunked streaming when there is little upload time to overlap.
const STREAM_MIN_BYTES: u64 = 256 * 1024;

/// Body pieces buffered between the upload and the provider while streaming (each at most one
/// client read): a slow provider slows the client down instead of filling memory.
const STREAM_AHEAD: usize = 8;

/// Converted stream chunks buffered for a slow client (each holds at most the events completed
/// by one upstream read, i.e. about one image): past that the provider is paused, so memory per
/// stream stays bounded however slowly the client reads.
const EVENTS_AHEAD: usize = 2;

/// Longest pause allowed between two reads of a client's upload.
const CLIENT_READ_TIMEOUT: Duration = Duration::from_secs(60);

/// Per-request state, read by `logging`.
#[derive(Debug)]
pub struct RequestCtx {
    request_id: String,
    start: Instant,
    counted: bool,
    provider: Option<String>,
    model: Option<String>,
    status: u16,
    reason: Option<&'static str>,
    upstream: Option<Duration>,
    request_bytes: u64,
    response_bytes: u64,
}

/// The gateway service.
pub struct Gateway {
    state: Arc<AppState>,
}

impl Gateway {
    /// A gateway over shared state.
    pub fn new(state: Arc<AppState>) -> Self {
        Gateway { state }
    }
}

/// The downstream request body as a [`BodySource`], counting bytes.
struct SessionBody<'a> {
    session: &'a mut Session,
    bytes: &'a mut u64,
}

#[async_trait]
impl BodySource for SessionBody<'_> {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        match self.session.read_request_body().await {
            Ok(Some(b)) => {
                *self.bytes += b.len() as u64;
                Ok(Some(b))
            }
            Ok(None) => Ok(None),
            Err(e) => Err(std::io::Error::other(e.etype().as_str())),
        }
    }
}

/// The translate plugin's streaming side: a [`FormSink`] that checks `model` as soon as it
/// arrives (unknown provider → 400, not allowed → 403) and, when `model` came before any file
/// part and the provider's adapter can translate incrementally, starts the upstream request at
/// once and feeds it each part as it passes validation.
struct UpstreamFeed<'a> {
    router: &'a Router,
    identity: &'a Identity,
    request_id: &'a str,
    start: Option<tokio::sync::oneshot::Sender<(Target, UpstreamRequest)>>,
    pieces: Option<tokio::sync::mpsc::Sender<Piece>>,
    encoder: Option<Box<dyn RequestEncoder>>,
    /// Whether to stream at all (large or chunked uploads; see [`STREAM_MIN_BYTES`]).
    stream_upload: bool,
    saw_file: bool,
    /// Text fields that came before `model`, replayed to the encoder once it exists.
    early_text: Vec<(String, String)>,
    /// `(provider, model)` once `model` passed its checks (for metrics on later errors).
    routed: Option<(String, String)>,
}

impl UpstreamFeed<'_> {
    /// Sends body bytes upstream; if the upstream side is gone (it answered early or failed),
    /// streaming stops and the upload is only spooled.
    async fn send(&mut self, piece: Piece) {
        // An empty chunk would end a chunked body early: never send one.
        if matches!(&piece, Piece::Data(b) if b.is_empty()) {
            return;
        }
        if let Some(tx) = &self.pieces {
            if tx.send(piece).await.is_err() {
                self.pieces = None;
                self.encoder = None;
            }
        }
    }

    /// The form was complete and valid: end the upstream body.
    async fn finish(&mut self) {
        if let Some(end) = self.encoder.as_mut().map(|e| e.finish()) {
            self.send(Piece::Data(end)).await;
            self.send(Piece::End).await;
        }
    }
}

#[async_trait]
impl FormSink for UpstreamFeed<'_> {
    async fn model(&mut self, provider: &str, model: &str) -> std::result::Result<(), GatewayError> {
        self.router.provider(provider)?;
        self.identity.check(provider, model)?;
        self.routed = Some((provider.to_string(), model.to_string()));
        if self.saw_file || !self.stream_upload {
            return Ok(());
        }
        let target = self.router.select(provider, model, fastrand::f64())?;
        if let Some(encoder) = adapter_for(target.provider.kind).request_encoder(&target, self.request_id) {
            if let Some(start) = self.start.take() {
                let head = encoder.head();
                if start.send((target, head)).is_ok() {
                    self.encoder = Some(encoder);
                    for (name, value) in std::mem::take(&mut self.early_text) {
                        self.text(&name, &value).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn text(&mut self, name: &str, value: &str) -> std::result::Result<(), GatewayError> {
        match self.encoder.as_mut() {
            Some(encoder) => {
                if let Some(bytes) = encoder.text(name, value) {
                    self.send(Piece::Data(bytes)).await;
                }
            }
            None if self.routed.is_none() && self.stream_upload && !self.saw_file => {
                self.early_text.push((name.to_string(), value.to_string()));
            }
            None => {}
        }
        Ok(())
    }

    async fn file_begin(
        &mut self,
        field: &str,
        filename: Option<&str>,
        kind: Option<ImageKind>,
        declared: Option<&str>,
    ) -> std::result::Result<(), GatewayError> {
        self.saw_file = true;
        if let Some(bytes) = self
            .encoder
            .as_mut()
            .map(|e| e.file_begin(field, filename, kind, declared))
        {
            self.send(Piece::Data(bytes)).await;
        }
        Ok(())
    }

    async fn file_data(&mut self, chunk: Bytes) -> std::result::Result<(), GatewayError> {
        if self.encoder.is_some() {
            self.send(Piece::Data(chunk)).await;
        }
        Ok(())
    }

    async fn file_end(&mut self) -> std::result::Result<(), GatewayError> {
        if let Some(bytes) = self.encoder.as_mut().map(|e| e.file_end()) {
            self.send(Piece::Data(bytes)).await;
        }
        Ok(())
    }
}

/// Reads what follows the closing multipart boundary (usually a CRLF, at most 64 KiB) so the
/// connection can serve the next request; past that, or on a read error, it is closed instead.
async fn drain_epilogue(session: &mut Session) -> u64 {
    let mut left: u64 = 64 * 1024;
    let mut read = 0;
    while !session.is_body_done() {
        match session.read_request_body().await {
            Ok(Some(b)) if (b.len() as u64) <= left => {
                left -= b.len() as u64;
                read += b.len() as u64;
            }
            Ok(None) => break,
            _ => {
                session.set_keepalive(None);
                break;
            }
        }
    }
    read
}

/// A request id from the client is kept if it is short and printable; otherwise one is made.
fn request_id(session: &Session) -> String {
    session
        .req_header()
        .headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_string)
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
}

/// What the request asked for, decided from method and path alone.
enum Endpoint {
    Health,
    ImageEdit(Framing),
    WrongMethod,
    Unknown,
}

fn endpoint(method: &http::Method, path: &str) -> Endpoint {
    match path {
        "/health" if method == http::Method::GET || method == http::Method::HEAD => Endpoint::Health,
        "/v1/images/edits" | "/images/edits" if method == http::Method::POST => Endpoint::ImageEdit(Framing::Bifrost),
        "/openai/v1/images/edits" if method == http::Method::POST => Endpoint::ImageEdit(Framing::OpenAi),
        "/health" | "/v1/images/edits" | "/images/edits" | "/openai/v1/images/edits" => Endpoint::WrongMethod,
        _ => Endpoint::Unknown,
    }
}

impl Gateway {
    /// Writes a complete JSON answer.
    async fn send_json(&self, session: &mut Session, ctx: &mut RequestCtx, status: u16, body: Bytes) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(4))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        ctx.status = status;
        ctx.response_bytes = body.len() as u64;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(())
    }

    /// Writes a gateway or provider error in Bifrost's shape. If the request body was not read
    /// to its end the connection is closed after the answer, rather than drained.
    async fn send_error(&self, session: &mut Session, ctx: &mut RequestCtx, err: &GatewayError) -> Result<()> {
        if let GatewayError::Internal(detail) = err {
            log::error!("request {}: {detail}", ctx.request_id);
        }
        if !session.is_body_done() {
            session.set_keepalive(None);
        }
        ctx.reason = Some(err.code());
        let body = err.to_body(&ErrorContext {
            request_id: Some(&ctx.request_id),
            provider: ctx.provider.as_deref(),
            model_requested: ctx.model.as_deref(),
        });
        self.send_json(session, ctx, err.status(), Bytes::from(body)).await
    }

    /// The image-edit request, from auth to the converted answer.
    async fn image_edit(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        framing: Framing,
    ) -> std::result::Result<Reply, GatewayError> {
        let state = &self.state;
        let headers = session.req_header().headers.clone();
        let identity = state.keys.authenticate(&headers)?;
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        if !content_type.to_ascii_lowercase().starts_with("multipart/form-data") {
            return Err(GatewayError::UnsupportedMediaType(
                "the body must be multipart/form-data (as the OpenAI SDKs send it)".into(),
            ));
        }
        let boundary = multer::parse_boundary(&content_type)
            .map_err(|_| GatewayError::MalformedMultipart("the Content-Type has no multipart boundary".into()))?;
        let declared_len = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared_len.is_some_and(|len| len > state.config.limits.max_body_bytes) {
            return Err(GatewayError::PayloadTooLarge {
                param: None,
                what: "request body".into(),
                limit: state.config.limits.max_body_bytes,
            });
        }
        if headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"))
        {
            session
                .as_downstream_mut()
                .write_continue_response()
                .await
                .map_err(|e| {
                    GatewayError::MalformedMultipart(format!("cannot answer Expect: {}", e.etype().as_str()))
                })?;
        }

        // A client that stops sending mid-upload must not hold a request forever.
        session.as_downstream_mut().set_read_timeout(Some(CLIENT_READ_TIMEOUT));
        let mut spool = Spool::new(state.config.spool.memory_bytes, state.config.spool.directory.clone());
        let router = &state.router;
        let (piece_tx, piece_rx) = tokio::sync::mpsc::channel::<Piece>(STREAM_AHEAD);
        let (start_tx, start_rx) = tokio::sync::oneshot::channel::<(Target, UpstreamRequest)>();
        let (down_tx, mut down_rx) = tokio::sync::mpsc::channel::<Bytes>(EVENTS_AHEAD);
        let stream_config = Arc::new(OnceLock::new());
        let mut sink = StreamSink {
            config: stream_config.clone(),
            pipeline: None,
            down: Some(down_tx),
        };
        let request_id = ctx.request_id.clone();
        let request_start = ctx.start;
        let mut source = SessionBody {
            session: &mut *session,
            bytes: &mut ctx.request_bytes,
        };
        let upload = async {
            let mut feed = UpstreamFeed {
                router,
                identity: &identity,
                request_id: &request_id,
                start: Some(start_tx),
                pieces: Some(piece_tx),
                encoder: None,
                stream_upload: declared_len.is_none_or(|len| len >= STREAM_MIN_BYTES),
                saw_file: false,
                early_text: Vec::new(),
                routed: None,
            };
            let parsed = parse_edit_form(&mut source, &boundary, &state.config.limits, &mut spool, &mut feed).await;
            if let Ok(form) = &parsed {
                if form.stream {
                    // Set before the upstream body ends, so the answer finds it.
                    let _ = stream_config.set(StreamContext {
                        provider: form.provider.clone(),
                        model_requested: form.model.clone(),
                        model_deployment: form.model.clone(),
                        request_id: request_id.clone(),
                        images: form.n.unwrap_or(1),
                        start: request_start,
                        framing,
                    });
                }
                feed.finish().await;
            }
            // Dropping the feed closes the stream: without its end marker, the provider's
            // request is abandoned.
            let routed = feed.routed.take();
            drop(feed);
            (parsed, routed)
        };
        let upstream_start = Instant::now();
        let mut upload = Box::pin(upload);
        // The streamed attempt borrows the sink and hands it back with its outcome.
        let sink_ref = &mut sink;
        let mut streamed = Box::pin(async move {
            match start_rx.await {
                Ok((target, head)) => {
                    let outcome = exchange_streamed(&state.connector, &target, head, piece_rx, &mut *sink_ref).await;
                    (Some((target, outcome)), sink_ref)
                }
                Err(_) => (None, sink_ref),
            }
        });
        // Read the upload to its end while the streamed attempt (if any) runs; the attempt may
        // finish first (an early answer).
        let mut streamed_early = None;
        let (parsed, routed) = loop {
            tokio::select! {
                r = &mut upload => break r,
                r = &mut streamed, if streamed_early.is_none() => streamed_early = Some(r),
            }
        };
        drop(upload);
        let form = match parsed {
            Ok(form) => form,
            Err(e) => {
                // Report what was asked for, when it got that far.
                if let Some((provider, model)) = routed {
                    ctx.provider = Some(provider);
                    ctx.model = Some(model);
                } else if let GatewayError::ProviderBlocked(p) = &e {
                    ctx.provider = Some(p.clone());
                }
                return Err(e);
            }
        };
        ctx.provider = Some(form.provider.clone());
        ctx.model = Some(form.model.clone());

        // The upstream side: the streamed attempt, or the request from the spool; a streamed
        // answer goes to the downstream writer through `down`, a collected one is returned.
        let upstream = async {
            let (first, sink) = match streamed_early {
                Some(r) => r,
                None => streamed.await,
            };
            let result = match first {
                Some((target, Streamed::Answered(resp))) => Ok((target, resp)),
                Some((_, Streamed::Failed(e))) => Err(e),
                other => {
                    // Not streamed (small upload, or model after the images), or the streamed
                    // attempt never reached the provider whole: send it from the spool.
                    if let Some((_, Streamed::NotSent(e))) = &other {
                        log::debug!("request {request_id}: streamed attempt not sent ({e}); sending from the spool");
                    }
                    async {
                        let target = match other {
                            Some((target, _)) => target,
                            None => router.select(&form.provider, &form.model, fastrand::f64())?,
                        };
                        let request = adapter_for(target.provider.kind).build_request(&form, &target, &request_id)?;
                        let total = target.provider.read_timeout + target.provider.connect_timeout;
                        let exchanged = tokio::time::timeout(
                            total,
                            exchange(&state.connector, &target, &request, &spool, &mut *sink),
                        )
                        .await
                        .map_err(|_| GatewayError::UpstreamTimeout {
                            provider: target.provider.name.clone(),
                            detail: format!("no complete answer within {} ms", total.as_millis()),
                        })?;
                        Ok((target, exchanged?))
                    }
                    .await
                }
            };
            if let Err(e) = &result {
                // Mid-stream failure: tell the client in-band (no-op if nothing was sent).
                sink.abort(e).await;
            }
            // Closing the channel ends the downstream writer.
            sink.down = None;
            result
        };
        let writer = write_event_stream(session, &mut down_rx, &request_id);
        let (result, written) = tokio::join!(upstream, writer);
        ctx.upstream = Some(upstream_start.elapsed());
        if let Some(sent) = written.sent {
            ctx.status = 200;
            ctx.response_bytes = sent;
            ctx.reason = match (&result, written.client_gone) {
                (_, true) => Some(GatewayError::ClientClosed.code()),
                (Err(e), false) => Some(e.code()),
                _ => None,
            };
            return Ok(Reply::Streamed);
        }
        let (target, response) = result?;
        let adapter = adapter_for(target.provider.kind);
        if form.stream {
            // The provider answered a stream request with a complete answer (it cannot
            // stream, or it answered an error): one event per image, or the error.
            if !(200..300).contains(&response.status) {
                return Err(super::super::providers::openai::provider_error(
                    &target.provider.name,
                    &response,
                ));
            }
            let mut out = Vec::new();
            let cx = StreamContext {
                provider: target.provider.name.clone(),
                model_requested: form.model.clone(),
                model_deployment: target.model.clone(),
                request_id: request_id.clone(),
                images: form.n.unwrap_or(1),
                start: request_start,
                framing,
            };
            let trailer = framing == Framing::OpenAi;
            synthesize_stream(&response.body, cx, &mut out)?;
            if trailer {
                crate::codec::sse::encode_event_into(&mut out, None, b"[DONE]");
            }
            return Ok(Reply::Events(Bytes::from(out)));
        }
        adapter
            .convert_response(
                &response,
                &ResponseContext {
                    provider: &target.provider.name,
                    model_requested: &form.model,
                    model_deployment: &target.model,
                    latency_ms: ctx.start.elapsed().as_millis() as u64,
                    num_input_images: form.images.len(),
                },
            )
            .map(Reply::Json)
    }
}

/// What `image_edit` produced.
enum Reply {
    /// A JSON body to send.
    Json(Bytes),
    /// A complete event stream to send (synthesized from a complete answer).
    Events(Bytes),
    /// The answer was already streamed to the client.
    Streamed,
}

/// The convert plugin's streaming side, as the exchange's [`AnswerSink`]: a `text/event-stream`
/// success answer to a `stream=true` request is converted event by event and handed to the
/// downstream writer; anything else is collected.
struct StreamSink {
    /// Set by the upload once the form is valid and asks for a stream.
    config: Arc<OnceLock<StreamContext>>,
    pipeline: Option<StreamPipeline>,
    down: Option<tokio::sync::mpsc::Sender<Bytes>>,
}

impl StreamSink {
    async fn send(&mut self, out: Vec<u8>) -> std::result::Result<(), GatewayError> {
        if out.is_empty() {
            return Ok(());
        }
        let down = self.down.as_ref().ok_or(GatewayError::ClientClosed)?;
        down.send(Bytes::from(out))
            .await
            .map_err(|_| GatewayError::ClientClosed)
    }

    /// After a failure: an in-band error event if the stream had begun.
    async fn abort(&mut self, err: &GatewayError) {
        let mut out = Vec::new();
        match self.pipeline.as_mut() {
            Some(p) if p.emitted() && !matches!(err, GatewayError::ClientClosed) => p.abort(err, &mut out),
            _ => return,
        }
        let _ = self.send(out).await;
    }
}

#[async_trait]
impl AnswerSink for StreamSink {
    fn wants_chunks(&mut self, status: u16, content_type: Option<&str>) -> bool {
        let sse = content_type.is_some_and(|ct| ct.trim_start().to_ascii_lowercase().starts_with("text/event-stream"));
        match self.config.get() {
            Some(cx) if (200..300).contains(&status) && sse => {
                self.pipeline = Some(StreamPipeline::new(cx.clone()));
                true
            }
            _ => false,
        }
    }

    async fn chunk(&mut self, bytes: Bytes) -> std::result::Result<(), GatewayError> {
        let mut out = Vec::new();
        if let Some(p) = self.pipeline.as_mut() {
            p.feed(&bytes, &mut out)?;
        }
        self.send(out).await
    }

    async fn end(&mut self) -> std::result::Result<(), GatewayError> {
        let mut out = Vec::new();
        if let Some(p) = self.pipeline.as_mut() {
            p.finish(&mut out)?;
        }
        self.send(out).await
    }
}

/// How the downstream writer ended.
struct Written {
    /// Bytes sent, if a stream was started.
    sent: Option<u64>,
    /// The client went away mid-stream.
    client_gone: bool,
}

/// The downstream writer of streamed answers: sends the `text/event-stream` head with the first
/// event (so a failure before any event is still an ordinary HTTP error), then each chunk as it
/// comes; a slow client slows the provider down through the bounded channel. Ends when the
/// channel closes, or when the client goes away (dropping the receiver cancels the upstream).
async fn write_event_stream(
    session: &mut Session,
    down: &mut tokio::sync::mpsc::Receiver<Bytes>,
    request_id: &str,
) -> Written {
    let mut sent: Option<u64> = None;
    while let Some(bytes) = down.recv().await {
        if sent.is_none() {
            drain_epilogue(session).await;
            if let Err(e) = write_stream_head(session, request_id).await {
                log::debug!(
                    "request {request_id}: client gone before the stream head: {}",
                    e.etype().as_str()
                );
                return Written {
                    sent: Some(0),
                    client_gone: true,
                };
            }
            sent = Some(0);
        }
        let len = bytes.len() as u64;
        if session.write_response_body(Some(bytes), false).await.is_err() {
            down.close();
            return Written {
                sent,
                client_gone: true,
            };
        }
        sent = sent.map(|s| s + len);
    }
    if sent.is_some() && session.write_response_body(None, true).await.is_err() {
        return Written {
            sent,
            client_gone: true,
        };
    }
    Written {
        sent,
        client_gone: false,
    }
}

/// The head of an event stream.
async fn write_stream_head(session: &mut Session, request_id: &str) -> Result<()> {
    let mut resp = ResponseHeader::build(200, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, "text/event-stream")?;
    resp.insert_header(http::header::CACHE_CONTROL, "no-cache")?;
    resp.insert_header("x-request-id", request_id)?;
    if !session.is_http2() {
        resp.insert_header(http::header::TRANSFER_ENCODING, "chunked")?;
    }
    session.write_response_header(Box::new(resp), false).await
}

#[async_trait]
impl ProxyHttp for Gateway {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            request_id: String::new(),
            start: Instant::now(),
            counted: false,
            provider: None,
            model: None,
            status: 0,
            reason: None,
            upstream: None,
            request_bytes: 0,
            response_bytes: 0,
        }
    }

    /// Runs first for every request: assigns the request id and starts the clock.
    async fn early_request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<()> {
        ctx.request_id = request_id(session);
        ctx.start = Instant::now();
        ctx.counted = true;
        self.state.metrics.request_started();
        Ok(())
    }

    /// Answers every request here; always returns `Ok(true)` ("a response was written").
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let method = session.req_header().method.clone();
        let path = session.req_header().uri.path().to_string();
        match endpoint(&method, &path) {
            Endpoint::Health => {
                self.send_json(session, ctx, 200, Bytes::from_static(br#"{"status":"ok"}"#))
                    .await?;
            }
            Endpoint::ImageEdit(framing) => match self.image_edit(session, ctx, framing).await {
                Ok(Reply::Json(body)) => {
                    ctx.request_bytes += drain_epilogue(session).await;
                    self.send_json(session, ctx, 200, body).await?;
                }
                Ok(Reply::Events(body)) => {
                    ctx.request_bytes += drain_epilogue(session).await;
                    write_stream_head(session, &ctx.request_id).await?;
                    ctx.status = 200;
                    ctx.response_bytes = body.len() as u64;
                    session.write_response_body(Some(body), true).await?;
                }
                Ok(Reply::Streamed) => {}
                Err(e) => self.send_error(session, ctx, &e).await?,
            },
            Endpoint::WrongMethod => {
                self.send_error(session, ctx, &GatewayError::MethodNotAllowed(method.to_string()))
                    .await?;
            }
            Endpoint::Unknown => {
                let e = GatewayError::NotFound {
                    method: method.to_string(),
                    path: path.chars().take(200).collect(),
                };
                self.send_error(session, ctx, &e).await?;
            }
        }
        Ok(true)
    }

    /// Never reached (see the module docs); refuses if it ever is.
    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut RequestCtx) -> Result<Box<HttpPeer>> {
        Err(Error::explain(
            ErrorType::InternalError,
            "refract answers every request in request_filter",
        ))
    }

    /// Runs once per request, whatever happened: metrics and the access log.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if !ctx.counted {
            return;
        }
        if ctx.status == 0 && e.is_some() {
            ctx.reason = Some("client_error");
        }
        self.state.metrics.request_finished(&RequestRecord {
            provider: ctx.provider.as_deref(),
            model: ctx.model.as_deref(),
            status: ctx.status,
            reason: ctx.reason,
            duration: ctx.start.elapsed(),
            upstream: ctx.upstream,
            request_bytes: ctx.request_bytes,
            response_bytes: ctx.response_bytes,
        });
        log::info!(
            "request_id={} method={} path={} status={} provider={} model={} reason={} ms={:.2}",
            ctx.request_id,
            session.req_header().method,
            session.req_header().uri.path(),
            ctx.status,
            ctx.provider.as_deref().unwrap_or("-"),
            ctx.model
                .as_deref()
                .map(|m| m.chars().take(64).flat_map(char::escape_default).collect::<String>())
                .unwrap_or_else(|| "-".into()),
            ctx.reason.unwrap_or("-"),
            ctx.start.elapsed().as_secs_f64() * 1000.0,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_by_method_and_path() {
        assert!(matches!(
            endpoint(&http::Method::POST, "/v1/images/edits"),
            Endpoint::ImageEdit(Framing::Bifrost)
        ));
        assert!(matches!(
            endpoint(&http::Method::POST, "/images/edits"),
            Endpoint::ImageEdit(Framing::Bifrost)
        ));
        assert!(matches!(
            endpoint(&http::Method::GET, "/v1/images/edits"),
            Endpoint::WrongMethod
        ));
        assert!(matches!(endpoint(&http::Method::GET, "/health"), Endpoint::Health));
        assert!(matches!(endpoint(&http::Method::POST, "/v1/chat"), Endpoint::Unknown));
    }
}
