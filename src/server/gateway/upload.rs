//! The parse step, and the streamed upload: [`read`] reads and validates the request body
//! into the spool and, for a large upload whose `model` comes first, starts the primary's
//! first attempt while the client is still uploading (its own channels, and the select
//! between the upload and an early answer, live here and nowhere else). Also the downstream
//! body as a [`BodySource`], the translate plugin's streaming [`FormSink`], and the epilogue
//! drain that keeps connections reusable.

use super::super::exchange::{exchange_streamed, Clock, Piece, Streamed};
use super::super::slots::Slot;
use super::answer::{Down, StreamSink};
use super::attempt::{check_candidate, ended, route_candidate, settle, stream_context, Admitted, Start, Tried};
use super::RequestCtx;
use crate::admission::{AdmissionRequest, AttemptIndex};
use crate::auth::Identity;
use crate::config::Limits;
use crate::error::GatewayError;
use crate::form::{parse_edit_form, BodySource, EditForm, FormSink};
use crate::imaging::ImageKind;
use crate::metrics::ClientPhase;
use crate::providers::stream::Framing;
use crate::providers::{adapter_for, RequestEncoder, UpstreamRequest};
use crate::route::Target;
use crate::server::AppState;
use crate::spool::Spool;
use async_trait::async_trait;
use bytes::Bytes;
use pingora::proxy::Session;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// What the parse step needs besides the session: the request's head, checked.
pub(super) struct Upload<'a> {
    pub(super) state: &'a AppState,
    pub(super) identity: &'a Identity,
    pub(super) request_id: &'a str,
    pub(super) framing: Framing,
    /// The multipart boundary.
    pub(super) boundary: &'a str,
    /// The `Content-Length`, if any.
    pub(super) declared_len: Option<u64>,
    /// The request only stores the upload (an async job's submission): nothing goes upstream
    /// while it is read.
    pub(super) store_only: bool,
    /// `(provider, model)` when the path names the model (Azure's deployment route): the
    /// form's `model` field is ignored.
    pub(super) preset_model: Option<(&'a str, &'a str)>,
}

/// The upload, read and valid.
pub(super) struct Uploaded<'a> {
    /// The client's form.
    pub(super) form: EditForm,
    /// How the primary's first attempt begins: from its streamed exchange, or from the spool.
    pub(super) first: Start<'a>,
}

/// The end of the streamed exchange: its key, its outcome, and the sink it wrote to; `None`
/// when it never started.
pub(super) type ExchangeEnd = Option<(Target, Streamed, StreamSink)>;

/// The streamed exchange: ended during the upload (an early answer), or still running.
pub(super) enum StreamedEnd<'a> {
    /// It ended before the upload did (an early answer: rare, so boxed).
    Early(Box<ExchangeEnd>),
    /// It runs on (the provider is reading the body, or answering).
    Running(Pin<Box<dyn Future<Output = ExchangeEnd> + Send + 'a>>),
}

impl StreamedEnd<'_> {
    /// The exchange's end, waiting for it if need be.
    pub(super) async fn wait(self) -> ExchangeEnd {
        match self {
            StreamedEnd::Early(end) => *end,
            StreamedEnd::Running(exchange) => exchange.await,
        }
    }
}

/// The primary's first attempt, begun while the client uploaded.
pub(super) struct StreamedAttempt<'a> {
    /// Its admission.
    pub(super) permit: Admitted,
    /// Its exchange.
    pub(super) end: StreamedEnd<'a>,
    /// The downstream channel its sink writes a streamed answer to.
    pub(super) down: tokio::sync::mpsc::Receiver<Down>,
}

/// The parse step: reads the body to its end into `spool`, validating every field as it
/// arrives (`model` checked at once), then checks the form as the primary candidate
/// ([`check_candidate`]; its fallbacks' ids too). Uploads of at least [`STREAM_MIN_BYTES`] (or
/// chunked) whose `model` comes before the first file part start the primary's first attempt
/// as soon as `model` passed its checks: the body streams upstream while it arrives, and is
/// ended only once the whole form proved valid (else abandoned unfinished, so the provider
/// never acts on it). An error is the request's answer (a 408 for an upload past its limits).
pub(super) async fn read<'a>(
    up: &Upload<'a>,
    session: &mut Session,
    ctx: &mut RequestCtx,
    spool: &mut Spool,
) -> Result<Uploaded<'a>, GatewayError> {
    let state = up.state;
    let limits = &state.config.limits;
    // A client that stops sending, or trickles, must not hold a request (and an upstream
    // slot) for long: each read within body_read_timeout_ms, the whole upload within
    // upload_timeout_ms of the head.
    let mut source = SessionBody::new(session, &mut ctx.request_bytes, ctx.start, limits);
    // Small uploads are sent from the spool once complete; larger or chunked ones stream.
    let stream_upload = !up.store_only && up.declared_len.is_none_or(|len| len >= STREAM_MIN_BYTES);
    let mut feed = UpstreamFeed {
        state,
        identity: up.identity,
        request_id: up.request_id,
        start: None,
        pieces: None,
        encoder: None,
        stream_upload,
        saw_file: false,
        early_text: Vec::new(),
        routed: None,
        admission: None,
        started_key: None,
        rehost_urls: false,
        preset_model: up.preset_model,
    };
    // The streamed attempt: waits for its start (the feed sends it once `model` passed), then
    // exchanges while the feed hands it the body.
    let mut streamed = None;
    let mut stream_config = None;
    if stream_upload {
        let (piece_tx, piece_rx) = tokio::sync::mpsc::channel::<Piece>(STREAM_AHEAD);
        let (start_tx, start_rx) = tokio::sync::oneshot::channel::<(Target, UpstreamRequest, Slot<'a>)>();
        let config = Arc::new(OnceLock::new());
        let (mut sink, down) = StreamSink::new(config.clone());
        let connector = &state.connector;
        let exchange: Pin<Box<dyn Future<Output = ExchangeEnd> + Send + 'a>> = Box::pin(async move {
            let (target, head, slot) = start_rx.await.ok()?;
            let outcome = exchange_streamed(connector, &target, head, piece_rx, &mut sink).await;
            // The exchange is over (answered, or abandoned): its slot is free.
            drop(slot);
            Some((target, outcome, sink))
        });
        feed.start = Some(start_tx);
        feed.pieces = Some(piece_tx);
        streamed = Some((exchange, down));
        stream_config = Some(config);
    }
    let request_start = ctx.start;
    let upload = async {
        let parsed = parse_edit_form(&mut source, up.boundary, limits, spool, &mut feed)
            .await
            .and_then(|form| {
                // No fallback may reach a provider with an id outside its grammar, and what
                // the model cannot do is refused before the upstream body is complete.
                state.router.check_fallbacks(&form)?;
                let kind = check_candidate(state, up.identity, &form)?.kind;
                Ok((form, kind))
            });
        if let Ok((form, kind)) = &parsed {
            if let Some(config) = stream_config.as_ref().filter(|_| form.stream) {
                // Set before the upstream body ends, so the answer finds it.
                let _ = config.set(stream_context(form, *kind, up.request_id, request_start, up.framing));
            }
            // A mask the provider must get converted: the streamed body is abandoned (and sent
            // again from the spool).
            if feed.encoder.is_none() || super::prepare::streamed_mask_fits(state, form, spool, *kind).await {
                feed.finish().await;
            }
        }
        // Dropping the feed's sender closes the stream: without its end marker, the
        // provider's request is abandoned.
        feed.start = None;
        feed.pieces = None;
        feed.encoder = None;
        parsed.map(|(form, _)| form)
    };
    // Read the upload to its end while the streamed attempt (if any) runs; the attempt may
    // finish first (an early answer). An upload that cannot stream never starts one, and
    // leaving the attempt unpolled spares the task a wake-up of its own when the upload ends
    // (tokio answers a task waking itself with a yield that rouses a parked worker).
    let (parsed, end) = match &mut streamed {
        None => (upload.await, None),
        Some((exchange, _)) => {
            tokio::pin!(upload);
            let mut early = None;
            let parsed = loop {
                tokio::select! {
                    r = &mut upload => break r,
                    r = exchange.as_mut(), if early.is_none() => early = Some(r),
                }
            };
            (parsed, early)
        }
    };
    if source.client_gone {
        state.metrics.client_disconnect(ClientPhase::Upload);
    }
    let admission = feed.admission.take();
    let started_key = feed.started_key;
    let routed = feed.routed.take();
    let form = match parsed {
        Ok(form) => form,
        Err(e) => {
            // A read that passed an upload limit: the 408 (the streamed request, if any, is
            // abandoned unfinished when its exchange is dropped).
            let e = source.timed_out.map_or(e, |limit| limit.error(limits));
            if let (Some(Ok(admitted)), Some((provider, model))) = (&admission, &routed) {
                // The streamed attempt was admitted: it ends with the request's error.
                let key = state
                    .router
                    .provider(provider)
                    .ok()
                    .and_then(|p| Some(p.keys.get(started_key?)?.name.as_str()));
                let tried = Tried {
                    virtual_key: up.identity.key_id.as_deref(),
                    provider,
                    model,
                    key,
                };
                settle(state, admitted, tried, ended(Err(&e), None)).await;
            }
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
    let first = match (admission, streamed, started_key) {
        (Some(Ok(permit)), Some((exchange, down)), Some(_)) => Start::Streamed(StreamedAttempt {
            permit,
            end: match end {
                Some(end) => StreamedEnd::Early(Box::new(end)),
                None => StreamedEnd::Running(exchange),
            },
            down,
        }),
        (decided, _, _) => Start::FromSpool { avoid: None, decided },
    };
    Ok(Uploaded { form, first })
}

/// Uploads at least this large (or of unknown length) are streamed upstream while they arrive;
/// smaller ones are read whole and sent from the spool with an exact Content-Length, which costs
/// less than chunked streaming when there is little upload time to overlap.
pub(super) const STREAM_MIN_BYTES: u64 = 256 * 1024;

/// Body pieces buffered between the upload and the provider while streaming (each at most one
/// client read): a slow provider slows the client down instead of filling memory.
pub(super) const STREAM_AHEAD: usize = 8;

/// Whether a downstream read failed because the client closed or reset its connection (or its
/// h2 stream), rather than stalling or sending something invalid.
pub(super) fn client_went_away(e: &pingora::Error) -> bool {
    matches!(
        e.etype(),
        pingora::ErrorType::ConnectionClosed | pingora::ErrorType::ReadError | pingora::ErrorType::H2Error
    )
}

/// Which limit of the upload a read passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum UploadLimit {
    /// No bytes for `limits.body_read_timeout_ms`.
    Pause,
    /// The body not complete `limits.upload_timeout_ms` after the head.
    Whole,
}

impl UploadLimit {
    /// The 408 answered for it (the connection is then closed, the body unread).
    pub(super) fn error(self, limits: &Limits) -> GatewayError {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        match self {
            UploadLimit::Pause => GatewayError::RequestTimeout {
                what: "no request body bytes arrived",
                key: "body_read_timeout_ms",
                limit_ms: ms(limits.body_read_timeout),
            },
            UploadLimit::Whole => GatewayError::RequestTimeout {
                what: "the request body was not complete",
                key: "upload_timeout_ms",
                limit_ms: ms(limits.upload_timeout),
            },
        }
    }
}

/// The downstream request body as a [`BodySource`], counting bytes. Each read waits at most
/// `limits.body_read_timeout_ms`, cut to what is left of `limits.upload_timeout_ms` since the
/// head arrived (`upload`): on HTTP/1 only the length of the timer Pingora arms for each read is
/// set, so bounding the whole upload costs no timer of its own; h2 streams, which Pingora reads
/// without a timer, get one per read that has to wait.
pub(super) struct SessionBody<'a> {
    pub(super) session: &'a mut Session,
    pub(super) bytes: &'a mut u64,
    /// Set when a read failed because the client closed or reset its connection (or stream)
    /// mid-upload; a read timeout (a client that stalls) does not set it.
    pub(super) client_gone: bool,
    /// The longest pause between two reads (`limits.body_read_timeout_ms`).
    pub(super) pause: Duration,
    /// Ends at `limits.upload_timeout_ms` after the request head.
    pub(super) upload: Clock,
    /// Set when a read passed one of the limits: the request is answered with its 408.
    pub(super) timed_out: Option<UploadLimit>,
}

impl<'a> SessionBody<'a> {
    /// The body of the request on `session` that started at `start`, each read within
    /// `limits.body_read_timeout_ms` and all of it within `limits.upload_timeout_ms` of the head;
    /// the bytes read are added to `bytes`.
    pub(super) fn new(
        session: &'a mut Session,
        bytes: &'a mut u64,
        start: std::time::Instant,
        limits: &Limits,
    ) -> Self {
        SessionBody {
            session,
            bytes,
            client_gone: false,
            pause: limits.body_read_timeout,
            upload: Clock::ending(start, limits.upload_timeout),
            timed_out: None,
        }
    }

    /// The next piece of the body, or a `ReadTimedout` error after `wait`.
    async fn read_within(&mut self, wait: Duration) -> pingora::Result<Option<Bytes>> {
        if wait.is_zero() {
            return Err(pingora::Error::new(pingora::ErrorType::ReadTimedout));
        }
        if self.session.is_http2() {
            return pingora::prelude::timeout(wait, self.session.read_request_body())
                .await
                .unwrap_or_else(|_| Err(pingora::Error::new(pingora::ErrorType::ReadTimedout)));
        }
        self.session.set_read_timeout(Some(wait));
        self.session.read_request_body().await
    }
}

#[async_trait]
impl BodySource for SessionBody<'_> {
    async fn next_chunk(&mut self) -> std::io::Result<Option<Bytes>> {
        let limit = self.upload.limit(self.pause);
        match self.read_within(limit.wait).await {
            Ok(Some(b)) => {
                *self.bytes += b.len() as u64;
                Ok(Some(b))
            }
            Ok(None) => Ok(None),
            Err(e) if matches!(e.etype(), pingora::ErrorType::ReadTimedout) => {
                self.timed_out = Some(if limit.by_total {
                    UploadLimit::Whole
                } else {
                    UploadLimit::Pause
                });
                Err(std::io::Error::new(std::io::ErrorKind::TimedOut, e.etype().as_str()))
            }
            Err(e) => {
                self.client_gone |= client_went_away(&e);
                Err(std::io::Error::other(e.etype().as_str()))
            }
        }
    }
}

/// The translate plugin's streaming side: a [`FormSink`] that checks `model` as soon as it
/// arrives (unknown provider or an id outside the kind's grammar → 400, not allowed → 403) and, when `model` came before any file
/// part and the provider's adapter can translate incrementally, starts the upstream request at
/// once and feeds it each part as it passes validation, holding one of the provider's upstream
/// slots, taken only when free at once ([`crate::server::slots::Slots::try_stream`]).
///
/// `'s` is the shared state's borrow, which that slot keeps.
pub(super) struct UpstreamFeed<'a, 's> {
    /// For key selection through the circuit breaker, and the upstream slots.
    pub(super) state: &'s crate::server::AppState,
    pub(super) identity: &'a Identity,
    pub(super) request_id: &'a str,
    /// Starts the streamed attempt: its target, its request head, and the upstream slot it
    /// holds until it ends.
    pub(super) start: Option<tokio::sync::oneshot::Sender<(Target, UpstreamRequest, Slot<'s>)>>,
    pub(super) pieces: Option<tokio::sync::mpsc::Sender<Piece>>,
    pub(super) encoder: Option<Box<dyn RequestEncoder>>,
    /// Whether to stream at all (large or chunked uploads; see [`STREAM_MIN_BYTES`]).
    pub(super) stream_upload: bool,
    pub(super) saw_file: bool,
    /// Text fields that came before `model`, replayed to the encoder once it exists.
    pub(super) early_text: Vec<(String, String)>,
    /// `(provider, model)` once `model` passed its checks (for metrics on later errors).
    pub(super) routed: Option<(String, String)>,
    /// Admission's answer for the streamed attempt, when it was asked (right before the
    /// attempt would start).
    pub(super) admission: Option<Result<Admitted, GatewayError>>,
    /// The streamed attempt's key, once it started.
    pub(super) started_key: Option<usize>,
    /// The gateway makes the URLs for the streamed attempt's provider: `response_format=url`
    /// goes upstream as `b64_json` (`super::rehost`).
    pub(super) rehost_urls: bool,
    /// The model the request's path names, if it does ([`Upload::preset_model`]).
    pub(super) preset_model: Option<(&'a str, &'a str)>,
}

impl UpstreamFeed<'_, '_> {
    /// Sends body bytes upstream; if the upstream side is gone (it answered early or failed),
    /// streaming stops and the upload is only spooled.
    pub(super) async fn send(&mut self, piece: Piece) {
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
    pub(super) async fn finish(&mut self) {
        if let Some(end) = self.encoder.as_mut().map(|e| e.finish()) {
            self.send(Piece::Data(end)).await;
            self.send(Piece::End).await;
        }
    }
}

#[async_trait]
impl FormSink for UpstreamFeed<'_, '_> {
    fn preset_model(&self) -> Option<(&str, &str)> {
        self.preset_model
    }

    async fn model(&mut self, provider: &str, model: &str) -> std::result::Result<(), GatewayError> {
        route_candidate(self.state, self.identity, provider, model)?;
        self.routed = Some((provider.to_string(), model.to_string()));
        if self.saw_file || !self.stream_upload {
            return Ok(());
        }
        let target = match self.state.choose(provider, model, None) {
            Ok(target) => target,
            // Every key's circuit is open: the request is not streamed, and the attempt from
            // the spool reports it (so that fallbacks may answer).
            Err(GatewayError::KeysDisabled { .. }) => return Ok(()),
            Err(e) => return Err(e),
        };
        // A provider whose keys have quotas chooses its key once the form is complete (the
        // quota counts the images asked).
        if target.provider.keys.iter().any(|k| k.quota.is_some()) {
            return Ok(());
        }
        let Some(encoder) =
            adapter_for(target.provider.kind).request_encoder(&target, self.request_id, uuid::Uuid::new_v4().as_u128())
        else {
            return Ok(());
        };
        // An upload still arriving takes an upstream slot only if one is free at once, and
        // only up to half of the provider's: else it is sent from the spool once complete, so
        // that slow clients cannot hold the provider's slots.
        let Some(slot) = self.state.slots.try_stream(provider) else {
            return Ok(());
        };
        let Some(start) = self.start.take() else {
            return Ok(());
        };
        // The admit step, once for this attempt, right before it goes upstream: a refusal
        // is the attempt's outcome (the request goes on from the spool to its fallbacks).
        let early = |name: &str| self.early_text.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        let request = AdmissionRequest {
            request_id: self.request_id,
            virtual_key: self.identity.key_id.as_deref(),
            provider,
            model,
            n: early("n").and_then(|n| n.trim().parse().ok()).unwrap_or(1),
            size: early("size"),
            quality: early("quality"),
            stream: early("stream").is_some_and(|s| s.trim().eq_ignore_ascii_case("true")),
            attempt: AttemptIndex { candidate: 0, retry: 0 },
            form_complete: false,
        };
        let admitted = match Admitted::ask(self.state, &request).await {
            Ok(admitted) => admitted,
            Err(e) => {
                self.admission = Some(Err(e));
                return Ok(());
            }
        };
        let key = target.key_index;
        let caps = adapter_for(target.provider.kind).capabilities(model);
        self.rehost_urls = super::rehost::gateway_rehosts(&target.provider, caps);
        let head = encoder.head();
        if start.send((target, head, slot)).is_ok() {
            self.started_key = Some(key);
            self.encoder = Some(encoder);
        }
        self.admission = Some(Ok(admitted));
        if self.encoder.is_some() {
            for (name, value) in std::mem::take(&mut self.early_text) {
                self.text(&name, &value).await?;
            }
        }
        Ok(())
    }

    async fn text(&mut self, name: &str, value: &str) -> std::result::Result<(), GatewayError> {
        match self.encoder.as_mut() {
            Some(encoder) => {
                let value = match (name, value) {
                    ("response_format", "url") if self.rehost_urls => "b64_json",
                    _ => value,
                };
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
pub(super) async fn drain_epilogue(session: &mut Session) -> u64 {
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
