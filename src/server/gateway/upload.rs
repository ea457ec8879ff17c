//! The upload side of a request: the downstream body as a [`BodySource`], the translate
//! plugin's streaming [`FormSink`] that starts the provider request while the client is still
//! uploading, and the epilogue drain that keeps connections reusable.

use super::super::exchange::{Clock, Piece};
use super::super::slots::Slot;
use crate::auth::Identity;
use crate::config::Limits;
use crate::error::GatewayError;
use crate::form::{BodySource, FormSink};
use crate::imaging::ImageKind;
use crate::providers::{adapter_for, RequestEncoder, UpstreamRequest};
use crate::route::{Router, Target};
use async_trait::async_trait;
use bytes::Bytes;
use pingora::proxy::Session;
use std::time::Duration;

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

impl SessionBody<'_> {
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
    pub(super) router: &'a Router,
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
    async fn model(&mut self, provider: &str, model: &str) -> std::result::Result<(), GatewayError> {
        self.router.candidate(provider, model, "model")?;
        self.identity.check(provider, model)?;
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
        if let Some(start) = self.start.take() {
            let head = encoder.head();
            if start.send((target, head, slot)).is_ok() {
                self.encoder = Some(encoder);
                for (name, value) in std::mem::take(&mut self.early_text) {
                    self.text(&name, &value).await?;
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
