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

use super::exchange::{exchange_streamed, Piece, Streamed};
use super::AppState;
use crate::error::{ErrorContext, GatewayError};
use crate::form::parse_edit_form;
use crate::metrics::{ClientPhase, RequestRecord};
use crate::providers::stream::{synthesize_stream, Framing, StreamContext};
use crate::providers::UpstreamRequest;
use crate::providers::{adapter_for, capabilities, ResponseContext, UnifiedAnswer};
use crate::route::Target;
use crate::spool::Spool;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::ResponseHeader;
use pingora::proxy::{ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use std::sync::Arc;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

mod answer;
mod fallback;
pub use fallback::retry_reason;
mod follow;
mod linger;
mod prepare;
mod repeat;
mod upload;

use super::exchange::Clock;
use super::slots::Slot;
use answer::{close_quietly, run_with_writer, write_event_stream, write_stream_head, Down, StreamSink, EVENTS_AHEAD};
use linger::{discard_rest, BodyRest};
use upload::{drain_epilogue, SessionBody, UpstreamFeed, STREAM_AHEAD, STREAM_MIN_BYTES};

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
    /// An event stream was sent (its status line said 200 whatever `status` records).
    streamed: bool,
    /// The failed fallback candidates, listed in the error answer when every candidate failed.
    fallback_errors: Vec<serde_json::Value>,
    /// The `Retry-After` of the latest provider answer that reached `finish`, taken by the
    /// retry loop after a failed attempt.
    retry_after: Option<Duration>,
    /// When the request goes on after its answer was complete (lingering after an early
    /// answer): the time to the answer, reported as the request's duration.
    answered_after: Option<Duration>,
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
    /// A known path, a method it does not take; the methods it takes, for `Allow`.
    WrongMethod(&'static str),
    Unknown,
}

fn endpoint(method: &http::Method, path: &str) -> Endpoint {
    match path {
        "/health" if method == http::Method::GET || method == http::Method::HEAD => Endpoint::Health,
        "/v1/images/edits" | "/images/edits" if method == http::Method::POST => Endpoint::ImageEdit(Framing::Bifrost),
        "/openai/v1/images/edits" if method == http::Method::POST => Endpoint::ImageEdit(Framing::OpenAi),
        "/health" => Endpoint::WrongMethod("GET, HEAD"),
        "/v1/images/edits" | "/images/edits" | "/openai/v1/images/edits" => Endpoint::WrongMethod("POST"),
        _ => Endpoint::Unknown,
    }
}

impl Gateway {
    /// Writes a complete JSON answer: its head with the `Content-Length`, then its pieces in
    /// order, each as it is (a converted answer's images straight from the provider's
    /// buffer; see [`UnifiedAnswer`]).
    async fn send_json(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        body: UnifiedAnswer,
    ) -> Result<()> {
        self.send_json_allow(session, ctx, status, body, None).await
    }

    /// [`Gateway::send_json`], with an `Allow` header when `allow` is set (a 405).
    async fn send_json_allow(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        status: u16,
        body: UnifiedAnswer,
        allow: Option<&'static str>,
    ) -> Result<()> {
        let mut resp = ResponseHeader::build(status, Some(5))?;
        resp.insert_header(http::header::CONTENT_TYPE, "application/json")?;
        resp.insert_header(http::header::CONTENT_LENGTH, body.len().to_string())?;
        resp.insert_header("x-request-id", ctx.request_id.as_str())?;
        if let Some(allow) = allow {
            resp.insert_header(http::header::ALLOW, allow)?;
        }
        ctx.status = status;
        ctx.response_bytes = body.len() as u64;
        session.write_response_header(Box::new(resp), false).await?;
        let mut pieces = body.into_pieces().into_iter().peekable();
        if pieces.peek().is_none() {
            session.write_response_body(Some(Bytes::new()), true).await?;
        }
        while let Some(piece) = pieces.next() {
            let last = pieces.peek().is_none();
            session.write_response_body(Some(piece), last).await?;
        }
        Ok(())
    }

    /// Writes a gateway or provider error in Bifrost's shape. If the request body was not read
    /// to its end, the answer says `Connection: close` and the rest of the body is then read and
    /// discarded within `limits.linger_*` (see [`linger`]), so that a client still sending
    /// gets the answer; a body that could not be read closes the connection at once.
    async fn send_error(&self, session: &mut Session, ctx: &mut RequestCtx, err: &GatewayError) -> Result<()> {
        if let GatewayError::Internal(detail) = err {
            log::error!("request {}: {detail}", ctx.request_id);
        }
        let rest = BodyRest::decide(session, err);
        ctx.reason = Some(err.code());
        let mut body = err.to_json(&ErrorContext {
            request_id: Some(&ctx.request_id),
            provider: ctx.provider.as_deref(),
            model_requested: ctx.model.as_deref(),
            request_type: None,
        });
        if !ctx.fallback_errors.is_empty() {
            body["extra_fields"]["fallback_errors"] =
                serde_json::Value::Array(std::mem::take(&mut ctx.fallback_errors));
        }
        let body = serde_json::to_vec(&body).unwrap_or_else(|_| b"{}".to_vec());
        let allow = match err {
            GatewayError::MethodNotAllowed { allow, .. } => Some(*allow),
            _ => None,
        };
        self.send_json_allow(session, ctx, err.status(), UnifiedAnswer::from(body), allow)
            .await?;
        if rest == BodyRest::Linger {
            ctx.answered_after = Some(ctx.start.elapsed());
            let lingered = discard_rest(session, &self.state.config.limits).await;
            ctx.request_bytes += lingered.bytes;
            self.state.metrics.linger(lingered.outcome);
        }
        Ok(())
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

        let mut spool = Spool::new(state.config.spool.memory_bytes, state.config.spool.directory.clone());
        let router = &state.router;
        let (piece_tx, piece_rx) = tokio::sync::mpsc::channel::<Piece>(STREAM_AHEAD);
        let (start_tx, start_rx) = tokio::sync::oneshot::channel::<(Target, UpstreamRequest, Slot<'_>)>();
        let (down_tx, mut down_rx) = tokio::sync::mpsc::channel::<Down>(EVENTS_AHEAD);
        let stream_config = Arc::new(OnceLock::new());
        let mut sink = StreamSink {
            config: stream_config.clone(),
            pipeline: None,
            down: Some(down_tx),
            used: false,
            failure_told: false,
        };
        let request_id = ctx.request_id.clone();
        let request_start = ctx.start;
        // A client that stops sending, or trickles, must not hold a request (and an upstream
        // slot) for long: each read within body_read_timeout_ms, the whole upload within
        // upload_timeout_ms of the head.
        let limits = &state.config.limits;
        let mut source = SessionBody {
            session: &mut *session,
            bytes: &mut ctx.request_bytes,
            client_gone: false,
            pause: limits.body_read_timeout,
            upload: Clock::ending(request_start, limits.upload_timeout),
            timed_out: None,
        };
        // Small uploads are sent from the spool once complete; larger or chunked ones stream.
        let stream_upload = declared_len.is_none_or(|len| len >= STREAM_MIN_BYTES);
        let upload = async {
            let mut feed = UpstreamFeed {
                router,
                state,
                identity: &identity,
                request_id: &request_id,
                start: Some(start_tx),
                pieces: Some(piece_tx),
                encoder: None,
                stream_upload,
                saw_file: false,
                early_text: Vec::new(),
                routed: None,
            };
            let parsed = parse_edit_form(&mut source, &boundary, &state.config.limits, &mut spool, &mut feed)
                .await
                .and_then(|form| {
                    // What the model cannot do is refused before the upstream body is complete.
                    let provider = router.provider(&form.provider)?;
                    let kind = provider.kind;
                    // No fallback may reach a provider with an id outside its grammar.
                    router.check_fallbacks(&form)?;
                    capabilities::check(
                        &form,
                        adapter_for(kind).capabilities(&form.model),
                        provider.options.rules_for(&form.model),
                        &form.provider,
                    )?;
                    Ok((form, kind))
                });
            let parsed = parsed.map(|(form, kind)| {
                if form.stream {
                    // Set before the upstream body ends, so the answer finds it.
                    let _ = stream_config.set(StreamContext {
                        provider: form.provider.clone(),
                        model_requested: form.model.clone(),
                        model_deployment: form.model.clone(),
                        request_id: request_id.clone(),
                        images: form.n.unwrap_or(1),
                        start: request_start,
                        created: crate::providers::kernel::time::unix_seconds(std::time::SystemTime::now()),
                        framing,
                        kind,
                    });
                }
                form
            });
            if parsed.is_ok() {
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
                Ok((target, head, slot)) => {
                    let outcome = exchange_streamed(&state.connector, &target, head, piece_rx, &mut *sink_ref).await;
                    // The exchange is over (answered, or abandoned): its slot is free.
                    drop(slot);
                    (Some((target, outcome)), sink_ref)
                }
                Err(_) => (None, sink_ref),
            }
        });
        // Read the upload to its end while the streamed attempt (if any) runs; the attempt may
        // finish first (an early answer). An upload that cannot stream never starts one, and
        // leaving the attempt unpolled spares the task a wake-up of its own when the upload
        // ends (tokio answers a task waking itself with a yield that rouses a parked worker).
        let mut streamed_early = None;
        let (parsed, routed) = loop {
            tokio::select! {
                r = &mut upload => break r,
                r = &mut streamed, if stream_upload && streamed_early.is_none() => streamed_early = Some(r),
            }
        };
        drop(upload);
        if source.client_gone {
            state.metrics.client_disconnect(ClientPhase::Upload);
        }
        let mut form = match parsed {
            Ok(form) => form,
            Err(e) => {
                // A read that passed an upload limit: the 408 (the streamed request, if any, is
                // abandoned unfinished when `streamed` is dropped).
                let e = source.timed_out.map_or(e, |limit| limit.error(limits));
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
        if form.fallbacks.is_empty() {
            // The model's configured fallback chain, when the request names none.
            if let Some(rules) = router.provider(&form.provider)?.options.rules_for(&form.model) {
                form.fallbacks.clone_from(&rules.fallbacks);
            }
        }

        // The upstream side: the streamed attempt, or the request from the spool; a streamed
        // answer goes to the downstream writer through `down`, a collected one is returned.
        // The key of the primary attempt, for its circuit breaker and retries.
        let mut used_key = None;
        let used_key_ref = &mut used_key;
        let upstream = async {
            let (first, sink) = match streamed_early {
                Some(r) => r,
                None => streamed.await,
            };
            if let Some((target, _)) = &first {
                *used_key_ref = Some(target.key_index);
                state.breakers.begin(&form.provider, target.key_index, Instant::now());
            }
            let result = match first {
                Some((target, Streamed::Answered(resp))) => Ok((target, repeat::Answered::One(resp))),
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
                            None => state.pick(&form.provider, &form.model, None)?,
                        };
                        *used_key_ref = Some(target.key_index);
                        let target = state.credentials.prepare(&state.connector, target).await?;
                        let call = repeat::Call {
                            state,
                            target: &target,
                            form: &form,
                            spool: &spool,
                            request_id: &request_id,
                            start: request_start,
                        };
                        let answered = repeat::send(&call, &mut *sink).await?;
                        Ok((target, answered))
                    }
                    .await
                }
            };
            if let Err(e) = &result {
                // Mid-stream failure: tell the client in-band (no-op if nothing was sent).
                sink.abort(e).await;
            }
            let idle = sink.finish();
            (result, idle)
        };
        let writer = write_event_stream(session, &mut down_rx, &request_id);
        let (result, written, idle) = run_with_writer(&state.metrics, upstream, writer).await;
        close_quietly(&mut down_rx, idle);
        ctx.upstream = Some(upstream_start.elapsed());
        if let Some(reply) = streamed_reply(ctx, result.as_ref().err(), &written) {
            if let Some(key) = used_key {
                state.record(&form.provider, key, result.as_ref().map(|_| ()));
            }
            return Ok(reply);
        }
        let primary = match result {
            Ok((target, response)) => {
                self.finish(session, ctx, &form, &spool, &target, response, stream_config.get())
                    .await
            }
            Err(e) => Err(e),
        };
        if let Some(key) = used_key {
            state.record(&form.provider, key, primary.as_ref().map(|_| ()));
        }
        let primary = fallback::retry(self, session, ctx, &form, &spool, framing, &identity, primary, used_key).await;
        if form.fallbacks.is_empty() {
            return primary;
        }
        fallback::run(
            self,
            fallback::Attempt {
                session,
                ctx,
                form: &form,
                spool: &spool,
                framing,
                identity: &identity,
            },
            primary,
        )
        .await
    }

    /// The end of an attempt whose provider answered: follow-ups (asynchronous providers), then
    /// the conversion into the unified answer (or, for a stream request the provider answered
    /// whole, the synthesized event stream). `form` is the attempt's own (its provider/model).
    /// The n calls of a repeated attempt come followed up, converted and merged already.
    #[allow(clippy::too_many_arguments)]
    async fn finish(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        form: &crate::form::EditForm,
        spool: &Spool,
        target: &Target,
        answered: repeat::Answered,
        stream_cx: Option<&StreamContext>,
    ) -> std::result::Result<Reply, GatewayError> {
        let state = &self.state;
        let response = match answered {
            repeat::Answered::One(response) => response,
            repeat::Answered::Merged { result, retry_after } => {
                ctx.retry_after = retry_after;
                return reply(result?, stream_cx);
            }
        };
        ctx.retry_after = response.retry_after;
        let request_id = ctx.request_id.clone();
        let adapter = adapter_for(target.provider.kind);
        let response_cx = ResponseContext {
            provider: &target.provider.name,
            model_requested: &form.model,
            model_deployment: &target.model,
            latency_ms: ctx.start.elapsed().as_millis() as u64,
            num_input_images: form.images.len(),
            created: crate::providers::kernel::time::unix_seconds(std::time::SystemTime::now()),
        };
        // Asynchronous providers: poll and download until the adapter has the answer; the
        // adapter converts it: a success into the unified JSON, an error status (stream
        // request or not) into the provider's error.
        let unified = follow::run(
            adapter,
            follow::Request {
                connector: &state.connector,
                slots: &state.slots,
                target,
                spool,
                request_id: &request_id,
                want_url: form.response_format.as_deref() == Some("url") && !form.stream,
                response: response_cx,
                start: ctx.start,
            },
            response,
            session,
        )
        .await?;
        reply(unified, stream_cx)
    }
}

/// The reply for a unified answer: the JSON, or for a stream request (the provider cannot
/// stream, or answered whole) one `completed` event per image, in the client's framing.
fn reply(unified: UnifiedAnswer, stream_cx: Option<&StreamContext>) -> std::result::Result<Reply, GatewayError> {
    match stream_cx {
        Some(cx) => {
            let mut out = Vec::new();
            synthesize_stream(&unified.to_bytes(), cx.clone(), &mut out)?;
            Ok(Reply::Events(Bytes::from(out)))
        }
        None => Ok(Reply::Json(unified)),
    }
}

/// After an attempt's upstream side and downstream writer ended: when a stream was started
/// downstream (`written.sent`), records it in `ctx` and returns the reply that ends the
/// request; `None` when nothing was sent. The status line said 200, but a stream that ended in
/// an `error` event or was aborted (`err`, the attempt's failure, or the failure the stream
/// reported) is accounted with that error's status and code, and one the client left with 499
/// `client_closed`; only a complete stream counts as a 200.
fn streamed_reply(ctx: &mut RequestCtx, err: Option<&GatewayError>, written: &answer::Written) -> Option<Reply> {
    let sent = written.sent?;
    ctx.response_bytes = sent;
    ctx.streamed = true;
    let failure = err
        .map(|e| (e.status(), e.code()))
        .or(written.failure.map(|f| (f.status, f.reason)));
    (ctx.status, ctx.reason) = match (written.client_gone, failure) {
        (true, _) => (
            GatewayError::ClientClosed.status(),
            Some(GatewayError::ClientClosed.code()),
        ),
        (false, Some((status, reason))) => (status, Some(reason)),
        (false, None) => (200, None),
    };
    Some(if written.broken {
        Reply::Aborted
    } else {
        Reply::Streamed
    })
}

/// What `image_edit` produced.
enum Reply {
    /// A JSON body to send.
    Json(UnifiedAnswer),
    /// A complete event stream to send (synthesized from a complete answer).
    Events(Bytes),
    /// The answer was already streamed to the client.
    Streamed,
    /// The stream broke inside a half-sent event: the response must be aborted, not ended.
    Aborted,
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
            streamed: false,
            fallback_errors: Vec::new(),
            retry_after: None,
            answered_after: None,
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
                let ok = UnifiedAnswer::from(Bytes::from_static(br#"{"status":"ok"}"#));
                self.send_json(session, ctx, 200, ok).await?;
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
                    ctx.streamed = true;
                    ctx.response_bytes = body.len() as u64;
                    session.write_response_body(Some(body), true).await?;
                }
                Ok(Reply::Streamed) => {}
                // Returning an error after the head was sent makes Pingora drop the connection
                // (HTTP/1.1) or reset the stream (HTTP/2) without ending the body.
                Ok(Reply::Aborted) => {
                    return Err(Error::create(
                        ErrorType::ConnectionClosed,
                        ErrorSource::Downstream,
                        Some("upstream stream broke inside a half-sent event; response aborted".into()),
                        None,
                    ))
                }
                Err(e) => self.send_error(session, ctx, &e).await?,
            },
            Endpoint::WrongMethod(allow) => {
                let e = GatewayError::MethodNotAllowed {
                    method: method.to_string(),
                    allow,
                };
                self.send_error(session, ctx, &e).await?;
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
        let duration = ctx.answered_after.unwrap_or_else(|| ctx.start.elapsed());
        self.state.metrics.request_finished(&RequestRecord {
            provider: ctx.provider.as_deref(),
            model: ctx.model.as_deref(),
            status: ctx.status,
            reason: ctx.reason,
            duration,
            upstream: ctx.upstream,
            request_bytes: ctx.request_bytes,
            response_bytes: ctx.response_bytes,
        });
        // A stream that failed after its head: `status` is the failure's, `stream=failed`
        // says the status line was a 200.
        let stream = match (ctx.streamed, ctx.status) {
            (false, _) => "-",
            (true, 200) => "complete",
            (true, _) => "failed",
        };
        log::info!(
            "request_id={} method={} path={} status={} stream={stream} provider={} model={} reason={} ms={:.2}",
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
            duration.as_secs_f64() * 1000.0,
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
            Endpoint::WrongMethod("POST")
        ));
        assert!(matches!(
            endpoint(&http::Method::POST, "/health"),
            Endpoint::WrongMethod("GET, HEAD")
        ));
        assert!(matches!(endpoint(&http::Method::GET, "/health"), Endpoint::Health));
        assert!(matches!(endpoint(&http::Method::POST, "/v1/chat"), Endpoint::Unknown));
    }
}
