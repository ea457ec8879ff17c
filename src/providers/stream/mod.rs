//! The convert plugin for `stream=true`: turns a provider's image-edit stream into the unified
//! stream, event by event, as bytes arrive.
//!
//! [`StreamPipeline`] is the one SSE decoder (any chunk boundary) in front of a per-request
//! [`OpenAiStreamConverter`] state machine; it emits encoded SSE bytes in the client's framing.
//! Providers that cannot stream are served by [`synthesize_stream`], which turns a complete
//! answer into a well-formed stream of one `image_edit.completed` event per image.
//!
//! Unified events (`image_edit.partial_image`, `image_edit.completed`) keep every field the
//! provider sent (the base64 image is copied once, never re-escaped) and gain
//! `sequence_number` (monotonic per stream, starting at 0 and always present) and
//! `extra_fields` (`request_type: "image_edit_stream"`, provider, models, latency, chunk_index).
//! With n > 1 every image gets its `completed` event (Bifrost stops at the first).
//!
//! An image event larger than [`passthrough::PASS_THROUGH_BYTES`] is forwarded while it arrives
//! (see [`passthrough`] for how, and for the one failure it cannot report in band: the stream
//! is then [`OpenAiStreamConverter::broken`] and the client's response is aborted).
//!
//! Unknown upstream events are dropped (policy: the unified stream carries only the spec's
//! event types; each drop is logged at debug level). An upstream `error` event ends the
//! stream: before anything was sent it becomes an ordinary HTTP error, after it an `error`
//! event. A stream that ends before its last image completed is an error too.

pub mod passthrough;

use super::rawjson::RawObject;
use super::{adapter_for, StreamTranslator};
use crate::codec::sse::{encode_event_into, SseDecoder, SseEvent};
use crate::config::ProviderKind;
use crate::error::{ErrorContext, GatewayError};
use passthrough::{PassThrough, PASS_THROUGH_BYTES};
use serde_json::{json, Map, Value};
use std::time::Instant;

/// How events are framed for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// `/v1/images/edits`: `event:` + `data:` lines; errors as `event: error`; no `[DONE]`.
    Bifrost,
    /// `/openai/v1/images/edits`: image events as above, errors as `data:`-only JSON, and a
    /// final `data: [DONE]`, so the OpenAI SDKs' stream iterators work unchanged.
    OpenAi,
}

/// Request facts every event reports.
#[derive(Debug, Clone)]
pub struct StreamContext {
    /// Provider name.
    pub provider: String,
    /// Bare model name requested.
    pub model_requested: String,
    /// Model the provider ran.
    pub model_deployment: String,
    /// Request id (error events' `event_id`).
    pub request_id: String,
    /// Images requested (`n`); the stream is complete after this many `completed` events.
    pub images: u32,
    /// When the request started (for `latency`).
    pub start: Instant,
    /// The wall time the stream began, in seconds since the Unix epoch (`created_at` of the
    /// events a translator makes up), passed in by the gateway.
    pub created: u64,
    /// The client's framing.
    pub framing: Framing,
    /// The provider's kind (whose stream events are converted).
    pub kind: ProviderKind,
}

/// What the converter made of one upstream event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Keep reading.
    More,
    /// The stream is over (all images completed, `[DONE]`, or an error was emitted).
    Done,
}

/// How a stream that had begun failed: the status and error code its in-band `error` event
/// carried (or of the break that aborted it). The client's status line said 200; the access
/// log and `refract_requests_total` report this instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamFailure {
    /// The error's HTTP status (`status_code` of the error event).
    pub status: u16,
    /// The error's code ([`GatewayError::code`]).
    pub reason: &'static str,
}

impl StreamFailure {
    fn of(err: &GatewayError) -> Self {
        StreamFailure {
            status: err.status(),
            reason: err.code(),
        }
    }
}

/// The unified name of an upstream image event, `None` for every other event.
fn image_event_kind(name: &str) -> Option<&'static str> {
    match name {
        "image_edit.partial_image" | "image_generation.partial_image" => Some(PARTIAL_IMAGE),
        "image_edit.completed" | "image_generation.completed" => Some(COMPLETED),
        _ => None,
    }
}

const PARTIAL_IMAGE: &str = "image_edit.partial_image";
const COMPLETED: &str = "image_edit.completed";

/// The state machine converting an OpenAI-compatible image-edit stream.
#[derive(Debug)]
pub struct OpenAiStreamConverter {
    cx: StreamContext,
    sequence: u64,
    completed: u32,
    emitted: bool,
    done: bool,
    dropped: u64,
    /// The event being passed through, if any.
    passing: Option<PassThrough>,
    /// A passed-through event failed half-sent: the client's stream must be aborted.
    broken: bool,
    /// Set when the stream ended in an `error` event, or broke.
    failure: Option<StreamFailure>,
}

impl OpenAiStreamConverter {
    /// A converter for one request.
    pub fn new(cx: StreamContext) -> Self {
        OpenAiStreamConverter {
            cx,
            sequence: 0,
            completed: 0,
            emitted: false,
            done: false,
            dropped: 0,
            passing: None,
            broken: false,
            failure: None,
        }
    }

    /// How the stream failed, once it ended in an `error` event or broke; `None` otherwise.
    pub fn failure(&self) -> Option<StreamFailure> {
        self.failure
    }

    /// Whether the stream broke inside a half-sent event (it cannot be ended cleanly: the
    /// caller aborts the client's response instead).
    pub fn broken(&self) -> bool {
        self.broken
    }

    /// Starts passing through the pending event (type `event`, data so far `head`) if it
    /// qualifies (see [`passthrough`]); returns whether it did.
    pub fn begin_pass_through(&mut self, event: Option<&str>, head: &[u8], out: &mut Vec<u8>) -> bool {
        if self.done || self.passing.is_some() {
            return false;
        }
        self.passing = PassThrough::begin(event, head, image_event_kind, out);
        self.emitted |= self.passing.is_some();
        self.passing.is_some()
    }

    /// More data of the passed-through event.
    pub fn pass_fragment(&mut self, bytes: &[u8], out: &mut Vec<u8>) -> Result<(), GatewayError> {
        match self.passing.as_mut().map(|p| p.fragment(bytes, out)) {
            Some(Err(why)) => Err(self.break_stream(why)),
            _ => Ok(()),
        }
    }

    /// The passed-through event's blank line.
    pub fn end_pass_through(&mut self, out: &mut Vec<u8>) -> Result<Progress, GatewayError> {
        let Some(pass) = self.passing.take() else {
            return Ok(Progress::More);
        };
        let kind = pass.kind();
        let sequence = self.sequence.to_string();
        let extra = self.extra_fields();
        if let Err(why) = pass.end(
            &[("sequence_number", sequence.as_bytes()), ("extra_fields", &extra)],
            out,
        ) {
            return Err(self.break_stream(why));
        }
        self.sequence += 1;
        self.image_done(kind, out)
    }

    /// Marks the stream broken inside a half-sent event; the error says why.
    fn break_stream(&mut self, why: String) -> GatewayError {
        self.broken = true;
        self.done = true;
        self.passing = None;
        let err = GatewayError::UpstreamProtocol {
            provider: self.cx.provider.clone(),
            detail: format!("the stream broke inside an event already being forwarded: {why}"),
        };
        self.failure = Some(StreamFailure::of(&err));
        err
    }

    /// After an image event of `kind`: the stream ends with the last `completed` image.
    fn image_done(&mut self, kind: &str, out: &mut Vec<u8>) -> Result<Progress, GatewayError> {
        if kind == COMPLETED {
            self.completed += 1;
            if self.completed >= self.cx.images.max(1) {
                return self.end(out);
            }
        }
        Ok(Progress::More)
    }

    /// Whether any event was emitted (after that, errors must be sent in-band).
    pub fn emitted(&self) -> bool {
        self.emitted
    }

    /// Unknown upstream events dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn extra_fields(&self) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "request_type": "image_edit_stream",
            "provider": self.cx.provider,
            "model_requested": self.cx.model_requested,
            "model_deployment": self.cx.model_deployment,
            "latency": self.cx.start.elapsed().as_millis() as u64,
            "chunk_index": self.sequence,
        }))
        .unwrap_or_default()
    }

    /// Writes one unified image event built from the upstream event's fields.
    fn image_event(&mut self, kind: &str, fields: &RawObject<'_>, out: &mut Vec<u8>) -> Result<(), GatewayError> {
        let sequence = self.sequence.to_string();
        let extra = self.extra_fields();
        let mut data = Vec::with_capacity(fields.0.iter().map(|(_, v)| v.get().len() + 16).sum::<usize>() + 256);
        let type_json = serde_json::to_vec(kind).unwrap_or_default();
        fields
            .write(
                &mut data,
                &["type", "sequence_number", "extra_fields"],
                &mut |_, _, _| Ok(false),
                &[
                    ("type", &type_json),
                    ("sequence_number", sequence.as_bytes()),
                    ("extra_fields", &extra),
                ],
            )
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        encode_event_into(out, Some(kind), &data);
        self.sequence += 1;
        self.emitted = true;
        Ok(())
    }

    /// Writes the in-band error event for `err` and ends the stream.
    pub fn error_event(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        let body = err.to_body(&ErrorContext {
            request_id: Some(&self.cx.request_id),
            provider: Some(&self.cx.provider),
            model_requested: Some(&self.cx.model_requested),
            request_type: Some("image_edit_stream"),
        });
        match self.cx.framing {
            Framing::Bifrost => encode_event_into(out, Some("error"), &body),
            Framing::OpenAi => encode_event_into(out, None, &body),
        }
        self.emitted = true;
        self.done = true;
        self.failure = Some(StreamFailure::of(err));
    }

    /// The end-of-stream marker of the framing, if any.
    pub fn trailer(&self, out: &mut Vec<u8>) {
        if self.cx.framing == Framing::OpenAi {
            encode_event_into(out, None, b"[DONE]");
        }
    }

    /// One upstream event in; encoded unified events appended to `out`. An upstream error
    /// before anything was emitted is returned as `Err` (the caller answers with an HTTP
    /// error); after, it is written in-band and the stream ends.
    pub fn on_event(&mut self, ev: &SseEvent, out: &mut Vec<u8>) -> Result<Progress, GatewayError> {
        if self.done {
            return Ok(Progress::Done);
        }
        let data = ev.data.trim();
        if data == "[DONE]" {
            return self.end(out);
        }
        let fields = match RawObject::parse(data.as_bytes()) {
            Ok(f) => f,
            Err(_) if data.is_empty() => return Ok(Progress::More),
            Err(e) => {
                return self.fail(
                    GatewayError::UpstreamProtocol {
                        provider: self.cx.provider.clone(),
                        detail: format!("a stream event is not a JSON object ({e})"),
                    },
                    out,
                )
            }
        };
        let declared: Option<String> = fields.get("type").and_then(|t| serde_json::from_str(t.get()).ok());
        let kind = declared
            .as_deref()
            .or(ev.event.as_deref())
            .unwrap_or_default()
            .to_string();
        if let Some(kind) = image_event_kind(&kind) {
            self.image_event(kind, &fields, out)?;
            return self.image_done(kind, out);
        }
        match kind.as_str() {
            "error" => {
                let error = match fields.get("error").map(|e| serde_json::from_str::<Value>(e.get())) {
                    Some(Ok(Value::Object(o))) => o,
                    _ => {
                        let mut o = Map::new();
                        o.insert("message".into(), json!("the provider reported an error in its stream"));
                        o
                    }
                };
                let status = stream_error_status(&error);
                self.fail(
                    GatewayError::Provider {
                        provider: self.cx.provider.clone(),
                        status,
                        error,
                    },
                    out,
                )
            }
            other => {
                self.dropped += 1;
                log::debug!("dropping unknown stream event '{}'", other.escape_default());
                Ok(Progress::More)
            }
        }
    }

    /// The upstream stream ended (`truncated` bytes of an unfinished event were pending).
    pub fn finish(&mut self, truncated: usize, out: &mut Vec<u8>) -> Result<Progress, GatewayError> {
        if self.done {
            return Ok(Progress::Done);
        }
        if self.passing.is_some() {
            return Err(self.break_stream(format!(
                "the stream was cut off ({truncated} bytes of the event pending)"
            )));
        }
        if truncated > 0 || self.completed < self.cx.images.max(1) {
            let detail = if truncated > 0 {
                format!("the stream was cut off inside an event ({truncated} bytes pending)")
            } else {
                format!(
                    "the stream ended after {} of {} images",
                    self.completed,
                    self.cx.images.max(1)
                )
            };
            return self.fail(
                GatewayError::UpstreamProtocol {
                    provider: self.cx.provider.clone(),
                    detail,
                },
                out,
            );
        }
        self.end(out)
    }

    fn end(&mut self, out: &mut Vec<u8>) -> Result<Progress, GatewayError> {
        self.done = true;
        self.trailer(out);
        Ok(Progress::Done)
    }

    fn fail(&mut self, err: GatewayError, out: &mut Vec<u8>) -> Result<Progress, GatewayError> {
        if !self.emitted {
            self.done = true;
            return Err(err);
        }
        self.error_event(&err, out);
        self.trailer(out);
        Ok(Progress::Done)
    }
}

/// The HTTP status for an error a provider reported inside its stream (such events carry none):
/// the provider blamed the request → 400, anything else → 502.
fn stream_error_status(error: &Map<String, Value>) -> u16 {
    let kind = error.get("type").and_then(Value::as_str).unwrap_or_default();
    if kind.contains("user_error") || kind.contains("invalid_request") {
        400
    } else {
        502
    }
}

/// The SSE decoder and the converter, fed upstream bytes at any boundary.
#[derive(Debug)]
pub struct StreamPipeline {
    decoder: SseDecoder,
    converter: OpenAiStreamConverter,
    events: Vec<SseEvent>,
    /// Data of a passed-through event from one read (reused).
    fragment: Vec<u8>,
    /// The provider's events → OpenAI-shaped ones, for providers that speak another dialect.
    translator: Option<Box<dyn StreamTranslator>>,
    /// Translated events (reused).
    translated: Vec<SseEvent>,
    /// The pending event was found not to qualify for pass-through (it is not looked at again
    /// until it is dispatched, so a large event is scanned once, not once per read).
    declined: bool,
}

impl std::fmt::Debug for dyn StreamTranslator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StreamTranslator")
    }
}

impl StreamPipeline {
    /// A pipeline for one request.
    pub fn new(cx: StreamContext) -> Self {
        StreamPipeline {
            translator: adapter_for(cx.kind).stream_translator(&cx),
            translated: Vec::new(),
            declined: false,
            decoder: SseDecoder::new(),
            converter: OpenAiStreamConverter::new(cx),
            events: Vec::new(),
            fragment: Vec::new(),
        }
    }

    /// Whether the stream broke inside a half-sent event (see [`OpenAiStreamConverter::broken`]).
    pub fn broken(&self) -> bool {
        self.converter.broken()
    }

    /// Whether anything was emitted yet.
    pub fn emitted(&self) -> bool {
        self.converter.emitted()
    }

    /// How the stream failed, if it ended in an `error` event or broke.
    pub fn failure(&self) -> Option<StreamFailure> {
        self.converter.failure()
    }

    /// Upstream bytes in, client bytes appended to `out`.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<u8>) -> Result<Progress, GatewayError> {
        if self.converter.done {
            return Ok(Progress::Done);
        }
        self.fragment.clear();
        let decoded = self.decoder.feed_split(chunk, &mut self.events, &mut self.fragment);
        if !self.fragment.is_empty() {
            self.converter.pass_fragment(&self.fragment, out)?;
        }
        let passed_end = match decoded {
            Ok(ended) => ended,
            Err(e) if self.converter.passing.is_some() => return Err(self.converter.break_stream(e.to_string())),
            Err(e) => {
                let err = GatewayError::UpstreamProtocol {
                    provider: self.converter.cx.provider.clone(),
                    detail: format!("unreadable stream: {e}"),
                };
                self.events.clear();
                return self.converter.fail(err, out);
            }
        };
        if passed_end || !self.events.is_empty() {
            // The pending event (if any) is a new one.
            self.declined = false;
        }
        if passed_end && self.converter.end_pass_through(out)? == Progress::Done {
            self.events.clear();
            return Ok(Progress::Done);
        }
        for ev in std::mem::take(&mut self.events) {
            let Some(translator) = self.translator.as_mut() else {
                if self.converter.on_event(&ev, out)? == Progress::Done {
                    return Ok(Progress::Done);
                }
                continue;
            };
            self.translated.clear();
            if let Err(e) = translator.event(&ev, &mut self.translated) {
                return self.converter.fail(e, out);
            }
            for ev in std::mem::take(&mut self.translated) {
                if self.converter.on_event(&ev, out)? == Progress::Done {
                    return Ok(Progress::Done);
                }
            }
        }
        // A large image event still arriving: forward what is here and the rest as it comes
        // (OpenAI-shaped events only: translated ones are converted whole).
        if let Some((event, head)) = self.decoder.pending_data().filter(|_| self.translator.is_none()) {
            if head.len() >= PASS_THROUGH_BYTES && !self.declined {
                if self.converter.begin_pass_through(event, head, out) {
                    // The buffered head was written; its allocation serves the fragments.
                    self.fragment = self.decoder.pass_through_data();
                } else {
                    self.declined = true;
                }
            }
        }
        Ok(Progress::More)
    }

    /// The upstream body ended.
    pub fn finish(&mut self, out: &mut Vec<u8>) -> Result<Progress, GatewayError> {
        let pending = self.decoder.finish();
        self.converter.finish(pending, out)
    }

    /// Writes an in-band error (e.g. the provider connection broke mid-stream) and the trailer.
    pub fn abort(&mut self, err: &GatewayError, out: &mut Vec<u8>) {
        self.converter.error_event(err, out);
        self.converter.trailer(out);
    }
}

/// A complete (non-streaming) OpenAI-shaped answer as a stream: one `image_edit.completed`
/// event per image. `usage` (zeros when the provider reported none) goes on the last event,
/// zero usage on the others, so totals add up.
pub fn synthesize_stream(answer: &[u8], cx: StreamContext, out: &mut Vec<u8>) -> Result<(), GatewayError> {
    let bad = |detail: String| GatewayError::UpstreamProtocol {
        provider: cx.provider.clone(),
        detail,
    };
    let doc: Value = serde_json::from_slice(answer).map_err(|e| bad(format!("the answer is not JSON ({e})")))?;
    let items = doc
        .get("data")
        .and_then(Value::as_array)
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad("the answer has no images".into()))?;
    let zero = json!({"total_tokens":0,"input_tokens":0,"output_tokens":0,"input_tokens_details":{"text_tokens":0,"image_tokens":0}});
    let usage = doc.get("usage").cloned().unwrap_or_else(|| zero.clone());
    let created = doc.get("created").cloned().unwrap_or(json!(0));
    let images = items.len() as u32;
    let mut converter = OpenAiStreamConverter::new(StreamContext { images, ..cx });
    for (i, item) in items.iter().enumerate() {
        let mut event = Map::new();
        event.insert("type".into(), json!("image_edit.completed"));
        for key in ["b64_json", "url", "revised_prompt"] {
            if let Some(v) = item.get(key) {
                event.insert(key.into(), v.clone());
            }
        }
        event.insert("created_at".into(), created.clone());
        for key in ["size", "quality", "background", "output_format"] {
            event.insert(key.into(), doc.get(key).cloned().unwrap_or(json!("auto")));
        }
        event.insert(
            "usage".into(),
            if i + 1 == items.len() {
                usage.clone()
            } else {
                zero.clone()
            },
        );
        let data = serde_json::to_string(&Value::Object(event)).map_err(|e| GatewayError::Internal(e.to_string()))?;
        converter.on_event(
            &SseEvent {
                event: Some("image_edit.completed".into()),
                data,
                ..Default::default()
            },
            out,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(images: u32, framing: Framing) -> StreamContext {
        StreamContext {
            provider: "openai".into(),
            model_requested: "gpt-image-1".into(),
            model_deployment: "gpt-image-1".into(),
            request_id: "req-1".into(),
            images,
            start: Instant::now(),
            created: 1,
            framing,
            kind: ProviderKind::OpenAi,
        }
    }

    const PARTIAL: &str = r#"{"type":"image_edit.partial_image","b64_json":"UEFSVA==","partial_image_index":0,"created_at":1,"size":"1024x1024","quality":"high","background":"opaque","output_format":"png"}"#;
    const COMPLETED: &str = r#"{"type":"image_edit.completed","b64_json":"RklOQUw=","created_at":2,"size":"1024x1024","quality":"high","background":"opaque","output_format":"png","usage":{"total_tokens":100,"input_tokens":50,"output_tokens":50,"input_tokens_details":{"text_tokens":10,"image_tokens":40},"output_tokens_details":{"text_tokens":0,"image_tokens":50}}}"#;

    fn upstream(events: &[(&str, &str)]) -> Vec<u8> {
        let mut v = Vec::new();
        for (name, data) in events {
            encode_event_into(&mut v, Some(name), data.as_bytes());
        }
        v
    }

    /// Decodes a client stream into (event name, JSON or raw data).
    fn client_events(bytes: &[u8]) -> Vec<(Option<String>, String)> {
        let mut d = SseDecoder::new();
        let mut evs = Vec::new();
        d.feed(bytes, &mut evs).unwrap();
        assert_eq!(d.finish(), 0, "the client stream must end on an event boundary");
        evs.into_iter().map(|e| (e.event, e.data)).collect()
    }

    fn run(input: &[u8], split: usize, cx: StreamContext) -> Result<Vec<u8>, GatewayError> {
        let mut p = StreamPipeline::new(cx);
        let mut out = Vec::new();
        let (a, b) = input.split_at(split.min(input.len()));
        for part in [a, b] {
            if p.feed(part, &mut out)? == Progress::Done {
                return Ok(out);
            }
        }
        p.finish(&mut out)?;
        Ok(out)
    }

    #[test]
    fn partials_then_completed_with_sequence_and_extra_fields() {
        let input = upstream(&[
            ("image_edit.partial_image", PARTIAL),
            (
                "image_edit.partial_image",
                &PARTIAL.replace("\"partial_image_index\":0", "\"partial_image_index\":1"),
            ),
            ("image_edit.completed", COMPLETED),
        ]);
        let out = run(&input, input.len(), cx(1, Framing::Bifrost)).unwrap();
        let evs = client_events(&out);
        assert_eq!(evs.len(), 3);
        let names: Vec<_> = evs.iter().map(|e| e.0.clone().unwrap()).collect();
        assert_eq!(
            names,
            [
                "image_edit.partial_image",
                "image_edit.partial_image",
                "image_edit.completed"
            ]
        );
        for (i, (_, data)) in evs.iter().enumerate() {
            let v: Value = serde_json::from_str(data).unwrap();
            assert_eq!(v["sequence_number"], i as u64);
            assert_eq!(v["extra_fields"]["request_type"], "image_edit_stream");
            assert_eq!(v["extra_fields"]["provider"], "openai");
        }
        let done: Value = serde_json::from_str(&evs[2].1).unwrap();
        assert_eq!(done["b64_json"], "RklOQUw=");
        assert_eq!(done["usage"]["output_tokens_details"]["image_tokens"], 50);
        assert_eq!(done["usage"]["input_tokens_details"]["text_tokens"], 10);
        let p1: Value = serde_json::from_str(&evs[1].1).unwrap();
        assert_eq!(p1["partial_image_index"], 1);
    }

    #[test]
    fn every_split_gives_the_same_events() {
        let input = upstream(&[
            ("image_edit.partial_image", PARTIAL),
            ("image_edit.debug", r#"{"type":"image_edit.debug"}"#),
            ("image_edit.completed", COMPLETED),
        ]);
        let whole = client_events(&run(&input, input.len(), cx(1, Framing::OpenAi)).unwrap());
        for split in 0..input.len() {
            let got = client_events(&run(&input, split, cx(1, Framing::OpenAi)).unwrap());
            // latency may differ by a millisecond between runs: compare without extra_fields
            let strip = |evs: &[(Option<String>, String)]| -> Vec<(Option<String>, Value)> {
                evs.iter()
                    .map(|(n, d)| {
                        let mut v: Value = serde_json::from_str(d).unwrap_or(Value::String(d.clone()));
                        if let Some(o) = v.as_object_mut() {
                            o.remove("extra_fields");
                        }
                        (n.clone(), v)
                    })
                    .collect()
            };
            assert_eq!(strip(&got), strip(&whole), "split at {split}");
        }
        assert_eq!(whole.len(), 3, "unknown event dropped, [DONE] appended");
        assert_eq!(whole[2], (None, "[DONE]".to_string()));
    }

    #[test]
    fn n_two_yields_two_completed_events() {
        let input = upstream(&[
            ("image_edit.completed", COMPLETED),
            ("image_edit.partial_image", PARTIAL),
            ("image_edit.completed", COMPLETED),
        ]);
        let evs = client_events(&run(&input, 5, cx(2, Framing::Bifrost)).unwrap());
        let completed = evs
            .iter()
            .filter(|e| e.0.as_deref() == Some("image_edit.completed"))
            .count();
        assert_eq!(completed, 2);
    }

    #[test]
    fn error_before_anything_is_an_http_error() {
        let input = upstream(&[(
            "error",
            r#"{"type":"error","error":{"type":"image_generation_user_error","code":"moderation_blocked","message":"no","param":null}}"#,
        )]);
        let e = run(&input, 3, cx(1, Framing::Bifrost)).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(!e.is_bifrost_error());
    }

    #[test]
    fn error_after_a_partial_is_in_band() {
        let input = upstream(&[
            ("image_edit.partial_image", PARTIAL),
            (
                "error",
                r#"{"type":"error","error":{"type":"image_generation_server_error","code":"simulated","message":"boom","param":null}}"#,
            ),
            ("image_edit.completed", COMPLETED),
        ]);
        let evs = client_events(&run(&input, 10, cx(1, Framing::Bifrost)).unwrap());
        assert_eq!(evs.len(), 2, "nothing after the error");
        assert_eq!(evs[1].0.as_deref(), Some("error"));
        let v: Value = serde_json::from_str(&evs[1].1).unwrap();
        assert_eq!(v["is_bifrost_error"], false);
        assert_eq!(v["error"]["message"], "boom");
        assert_eq!(v["status_code"], 502);
        assert_eq!(v["extra_fields"]["request_type"], "image_edit_stream");
        // OpenAI framing: data-only error then [DONE]
        let evs = client_events(&run(&input, 10, cx(1, Framing::OpenAi)).unwrap());
        assert_eq!(evs[1].0, None);
        assert_eq!(evs[2].1, "[DONE]");
    }

    #[test]
    fn a_stream_that_ends_in_an_error_reports_its_failure() {
        let feed_all = |input: &[u8]| {
            let mut p = StreamPipeline::new(cx(1, Framing::Bifrost));
            let mut out = Vec::new();
            if p.feed(input, &mut out).unwrap() == Progress::More {
                p.finish(&mut out).unwrap();
            }
            p.failure()
        };
        let ok = upstream(&[
            ("image_edit.partial_image", PARTIAL),
            ("image_edit.completed", COMPLETED),
        ]);
        assert_eq!(feed_all(&ok), None);
        let provider_error = upstream(&[
            ("image_edit.partial_image", PARTIAL),
            (
                "error",
                r#"{"type":"error","error":{"type":"image_generation_server_error","message":"boom"}}"#,
            ),
        ]);
        assert_eq!(
            feed_all(&provider_error),
            Some(StreamFailure {
                status: 502,
                reason: "provider_error"
            })
        );
        let short = upstream(&[("image_edit.partial_image", PARTIAL)]);
        assert_eq!(
            feed_all(&short),
            Some(StreamFailure {
                status: 502,
                reason: "upstream_protocol_error"
            })
        );
    }

    #[test]
    fn truncated_or_short_streams_are_errors() {
        let mut input = upstream(&[("image_edit.partial_image", PARTIAL)]);
        input.extend_from_slice(b"event: image_edit.completed\ndata: {\"type\":");
        let evs = client_events(&run(&input, input.len(), cx(1, Framing::Bifrost)).unwrap());
        assert_eq!(evs.last().unwrap().0.as_deref(), Some("error"));
        // nothing emitted and the stream ends: an HTTP error
        let e = run(b"", 0, cx(1, Framing::Bifrost)).unwrap_err();
        assert_eq!(e.status(), 502);
    }

    #[test]
    fn a_complete_answer_becomes_one_completed_event_per_image() {
        let answer = br#"{"created":5,"data":[{"b64_json":"QQ=="},{"b64_json":"Qg=="}],"size":"1024x1024","quality":"low","usage":{"total_tokens":9,"input_tokens":4,"output_tokens":5,"input_tokens_details":{"text_tokens":1,"image_tokens":3}}}"#;
        let mut out = Vec::new();
        synthesize_stream(answer, cx(1, Framing::Bifrost), &mut out).unwrap();
        let evs = client_events(&out);
        assert_eq!(evs.len(), 2);
        let last: Value = serde_json::from_str(&evs[1].1).unwrap();
        assert_eq!(last["b64_json"], "Qg==");
        assert_eq!(last["usage"]["total_tokens"], 9);
        assert_eq!(last["sequence_number"], 1);
        assert_eq!(last["created_at"], 5);
        let first: Value = serde_json::from_str(&evs[0].1).unwrap();
        assert_eq!(first["usage"]["total_tokens"], 0);
        assert!(synthesize_stream(b"{\"data\":[]}", cx(1, Framing::Bifrost), &mut out).is_err());
    }

    /// An image event with a `len`-byte base64 string.
    fn big(kind: &str, len: usize) -> String {
        let b64 = "QUJD".repeat(len / 4);
        format!(
            r#"{{"type":"{kind}","b64_json":"{b64}","created_at":1,"size":"1024x1024","usage":{{"total_tokens":3}}}}"#
        )
    }

    /// Client events without `extra_fields` (its latency differs between runs).
    fn stripped(out: &[u8]) -> Vec<(Option<String>, Value)> {
        client_events(out)
            .into_iter()
            .map(|(n, d)| {
                let mut v: Value = serde_json::from_str(&d).unwrap_or(Value::String(d));
                if let Some(o) = v.as_object_mut() {
                    assert!(o.remove("extra_fields").is_some() || n.as_deref() == Some("error"));
                }
                (n, v)
            })
            .collect()
    }

    #[test]
    fn large_events_are_forwarded_while_they_arrive() {
        let partial = big("image_edit.partial_image", 200_000);
        let completed = big("image_edit.completed", 150_000);
        let input = upstream(&[
            ("image_edit.partial_image", &partial),
            ("image_edit.completed", &completed),
        ]);
        // In one read every event is whole: converted the ordinary way.
        let whole = stripped(&run(&input, input.len(), cx(1, Framing::OpenAi)).unwrap());
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[0].1["b64_json"].as_str().unwrap().len(), 200_000);
        for step in [777, 4096, 65_536, 65_537, 131_072, 199_999] {
            let mut p = StreamPipeline::new(cx(1, Framing::OpenAi));
            let mut out = Vec::new();
            let mut fed = 0;
            for chunk in input.chunks(step) {
                fed += chunk.len();
                let before = out.len();
                let progress = p.feed(chunk, &mut out).unwrap();
                if fed >= 2 * PASS_THROUGH_BYTES + step && fed < partial.len() {
                    assert!(
                        out.len() > before,
                        "step {step}: the partial image is forwarded as it arrives"
                    );
                }
                if progress == Progress::Done {
                    break;
                }
            }
            assert_eq!(stripped(&out), whole, "step {step}");
            assert!(!p.broken());
        }
    }

    #[test]
    fn a_stream_cut_inside_a_forwarded_event_is_broken() {
        let partial = big("image_edit.partial_image", 200_000);
        let input = upstream(&[("image_edit.partial_image", &partial)]);
        let mut p = StreamPipeline::new(cx(1, Framing::Bifrost));
        let mut out = Vec::new();
        assert_eq!(p.feed(&input[..150_000], &mut out).unwrap(), Progress::More);
        assert!(out.len() > 100_000, "forwarding began");
        assert!(p.emitted());
        let e = p.finish(&mut out).unwrap_err();
        assert!(p.broken());
        assert!(e.to_string().contains("already being forwarded"), "{e}");
        // Bad bytes inside the forwarded string break it too.
        let mut p = StreamPipeline::new(cx(1, Framing::Bifrost));
        p.feed(&input[..150_000], &mut out).unwrap();
        assert!(p.feed(b"A\\x", &mut out).is_err());
        assert!(p.broken());
        assert_eq!(p.feed(b"more", &mut out).unwrap(), Progress::Done, "nothing after");
    }

    #[test]
    fn large_events_that_are_not_images_are_converted_whole() {
        let message = "x".repeat(100_000);
        let error = format!(r#"{{"type":"error","error":{{"type":"server_error","message":"{message}"}}}}"#);
        let input = upstream(&[("image_edit.partial_image", PARTIAL), ("error", &error)]);
        let mut p = StreamPipeline::new(cx(1, Framing::Bifrost));
        let mut out = Vec::new();
        for chunk in input.chunks(10_000) {
            if p.feed(chunk, &mut out).unwrap() == Progress::Done {
                break;
            }
        }
        let evs = stripped(&out);
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1].0.as_deref(), Some("error"));
        assert_eq!(evs[1].1["error"]["message"].as_str().unwrap().len(), 100_000);
        assert!(!p.broken());
    }
}
