//! Provider adapters: pure, synchronous translation between the unified image-edit request and
//! each provider's wire format.
//!
//! The translate plugin calls [`ProviderAdapter::build`] once per upstream attempt with a
//! [`BuildScope`] (form, spool, prepared mask, target, request id, wall time) to get the
//! upstream head and a body plan (literal bytes plus ranges of the request spool, so image
//! bytes are streamed from the spool, never copied into a new buffer). The convert plugin
//! calls [`ProviderAdapter::convert_response`] on the provider's complete answer, and gets the
//! unified answer as pieces ([`UnifiedAnswer`]: the images shared with the provider's buffer,
//! literals around them). Neither does I/O nor reads the clock; `server::exchange` and the
//! gateway do, and pass the time in, so the same inputs always build the same bytes.
//!
//! Layout: one module per kind (the adapters: `openai`, `azure`, `gemini`, `vertex`, `bedrock`,
//! `stability`, `bfl`, `fireworks`, `replicate`, `huggingface`, `xai`), which import from
//! [`kernel`] (the wire helpers two or more adapters share), from [`google`] (the family module
//! of `gemini` and `vertex`) and from the unified side ([`answer`], [`rawjson`], [`stream`],
//! [`capabilities`], [`model_id`], [`merge`]), never from each other. A new kind is one adapter
//! module plus its row in `crate::kind` (its static facts) and its line in [`adapter_for`].

pub mod answer;
pub mod azure;
pub mod bedrock;
pub mod bfl;
pub mod capabilities;
pub mod fireworks;
pub mod gemini;
pub mod google;
pub mod huggingface;
pub mod kernel;
pub mod merge;
pub mod model_id;
pub mod openai;
pub mod rawjson;
pub mod replicate;
pub mod stability;
pub mod stream;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
pub mod test_support;
pub mod vertex;
pub mod xai;

use crate::codec::sse::SseEvent;
use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::{ConvertedMask, ImageKind, MaskConvention};
use crate::route::Target;
use crate::spool::{Spool, SpoolRange};
pub use answer::UnifiedAnswer;
use bytes::Bytes;
pub use capabilities::{Capabilities, ModelFamily};
use std::time::SystemTime;

/// One piece of an upstream request body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodySegment {
    /// Bytes produced by the adapter (multipart headers, text fields).
    Bytes(Bytes),
    /// A range of the request spool (an uploaded file's content), sent as is.
    Spool(SpoolRange),
    /// A range of the request spool sent as padded standard base64 (an image inlined in a
    /// JSON body), encoded on the fly.
    Base64(SpoolRange),
}

impl BodySegment {
    /// Length in bytes.
    pub fn len(&self) -> u64 {
        match self {
            BodySegment::Bytes(b) => b.len() as u64,
            BodySegment::Spool(r) => r.len,
            BodySegment::Base64(r) => crate::codec::base64::encoded_len(r.len),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What to send upstream for one attempt.
#[derive(Debug, Clone)]
pub struct UpstreamRequest {
    /// HTTP method.
    pub method: http::Method,
    /// Path and query, starting with `/`.
    pub path: String,
    /// Headers besides `host` and `content-length`, which the exchange sets.
    pub headers: Vec<(http::HeaderName, String)>,
    /// The body, in order.
    pub body: Vec<BodySegment>,
}

impl UpstreamRequest {
    /// Exact body length.
    pub fn content_length(&self) -> u64 {
        self.body.iter().map(BodySegment::len).sum()
    }

    /// The value of header `name` (tests and fixtures).
    #[cfg(test)]
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.as_str())
    }

    /// The whole body in one buffer, as the exchange sends it (tests and fixtures; the proxy
    /// streams the segments instead).
    pub fn render(&self, spool: &Spool) -> std::io::Result<Vec<u8>> {
        let mut body = Vec::with_capacity(self.content_length() as usize);
        for seg in &self.body {
            match seg {
                BodySegment::Bytes(b) => body.extend_from_slice(b),
                BodySegment::Spool(r) => body.extend(spool.read_all(*r)?),
                BodySegment::Base64(r) => crate::codec::base64::encode_append(&spool.read_all(*r)?, &mut body),
            }
        }
        Ok(body)
    }
}

/// Everything an adapter builds one upstream request from: the form and its spool, what the
/// gateway prepared from them off the async threads (the mask converted to the adapter's
/// [`ProviderAdapter::mask_convention`]), where the request goes, and the wall time. Made by
/// the translate step once per attempt, just before the request is sent.
#[derive(Debug, Clone, Copy)]
pub struct BuildScope<'a> {
    /// The validated form.
    pub form: &'a EditForm,
    /// The form's file parts.
    pub spool: &'a Spool,
    /// The mask in the adapter's convention; `None` when the form has no mask, the adapter
    /// asked for none (an adapter that wanted one refuses the build), or the mask goes as
    /// uploaded, from the spool (an alpha mask for [`MaskConvention::Alpha`]).
    pub mask: Option<&'a ConvertedMask>,
    /// Provider, key and model.
    pub target: &'a Target,
    /// Forwarded for correlation.
    pub request_id: &'a str,
    /// The wall time of the attempt (SigV4 dates and anything else time-stamped); adapters
    /// never read the clock themselves.
    pub now: SystemTime,
    /// Random bits the gateway draws for the attempt (multipart boundaries); adapters never
    /// draw their own, so the same scope builds the same bytes.
    pub nonce: u128,
}

/// The provider's complete answer.
#[derive(Debug, Clone)]
pub struct UpstreamResponse {
    /// HTTP status.
    pub status: u16,
    /// `content-type`, if sent.
    pub content_type: Option<String>,
    /// The whole body.
    pub body: Bytes,
    /// The provider's `Retry-After` (delta seconds, or an HTTP date turned into the time
    /// left), read by the exchange; honoured between retries of the same candidate.
    pub retry_after: Option<std::time::Duration>,
}

/// Facts about the request that the converted response reports in `extra_fields`.
#[derive(Debug, Clone)]
pub struct ResponseContext<'a> {
    /// Provider name as configured.
    pub provider: &'a str,
    /// Bare model name the client asked for.
    pub model_requested: &'a str,
    /// The model or deployment the provider ran.
    pub model_deployment: &'a str,
    /// Milliseconds from request start to the provider's complete answer.
    pub latency_ms: u64,
    /// Number of images the client uploaded.
    pub num_input_images: usize,
    /// The answer's `created` (seconds since the Unix epoch): the wall time the gateway passes
    /// in, so conversions never read the clock.
    pub created: u64,
}

/// Incremental translation of a form while it is still being uploaded: each validated part in,
/// upstream body bytes out (file contents themselves are passed on by the caller unchanged).
/// The upstream body ends with [`RequestEncoder::finish`]; a request whose form turns out
/// invalid is abandoned instead, so the provider never sees a complete body.
pub trait RequestEncoder: Send {
    /// The upstream head (its body is empty; the exchange sends the body chunked).
    fn head(&self) -> UpstreamRequest;
    /// A text field; `None` when the provider does not take it.
    fn text(&mut self, name: &str, value: &str) -> Option<Bytes>;
    /// The bytes that precede a file part's content.
    fn file_begin(
        &mut self,
        field: &str,
        filename: Option<&str>,
        kind: Option<ImageKind>,
        declared: Option<&str>,
    ) -> Bytes;
    /// The bytes that follow a file part's content.
    fn file_end(&mut self) -> Bytes;
    /// The bytes that end the body.
    fn finish(&mut self) -> Bytes;
}

/// Turns one provider's stream events into OpenAI-shaped image events (`type`,
/// `b64_json`, `created_at`, `size`, …, `usage`), which the unified stream converter numbers
/// and frames. One per request; pure.
pub trait StreamTranslator: Send {
    /// One upstream event in, OpenAI-shaped events (maybe none) out; `Err` when the provider
    /// reported an error or sent something unreadable.
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<SseEvent>) -> Result<(), GatewayError>;
}

/// Translation for one provider kind. Implementations are stateless and pure.
pub trait ProviderAdapter: Send + Sync {
    /// What each model family of this kind supports; the first family whose `matches` accepts
    /// a model applies to it. Checked before any upstream call, and printed by
    /// `refract providers`.
    fn families(&self) -> &'static [ModelFamily];

    /// The capabilities that apply to `model`.
    fn capabilities(&self, model: &str) -> &'static Capabilities {
        let families = self.families();
        families
            .iter()
            .find(|f| (f.matches)(model))
            .or(families.last())
            .map_or(&capabilities::NOTHING, |f| &f.capabilities)
    }

    /// A translator for the provider's `text/event-stream` answers, or `None` when they are
    /// OpenAI image-edit events already.
    fn stream_translator(&self, _cx: &stream::StreamContext) -> Option<Box<dyn StreamTranslator>> {
        None
    }

    /// An encoder that translates the form part by part while it arrives, for providers whose
    /// format allows it (the streaming variant of [`ProviderAdapter::build`], for the upload
    /// sent upstream while it arrives; `nonce` as [`BuildScope::nonce`]); `None` means the
    /// request is built from the complete form instead.
    fn request_encoder(&self, _target: &Target, _request_id: &str, _nonce: u128) -> Option<Box<dyn RequestEncoder>> {
        None
    }

    /// Builds the upstream request for one attempt from `scope` (the one build entry; the
    /// streamed upload uses [`ProviderAdapter::request_encoder`] instead, when the adapter has
    /// one). Pure: the same scope gives the same request, byte for byte. `Err` is a 400 for what the provider
    /// cannot take, or an internal error for a scope the gateway never makes (a mask the
    /// adapter asked for, not converted).
    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError>;

    /// Whether `model` (which passed the rules every kind shares,
    /// [`model_id::check_common`]) has this kind's model-id shape; `Err` says what is expected.
    /// Checked in the route step for every candidate, before any request is built with it. The
    /// default takes one name of `A-Za-z0-9._-`.
    fn model_id_shape(&self, model: &str) -> Result<(), &'static str> {
        model_id::one_name(model)
    }

    /// The convention the adapter wants the form's mask in for `model`, or `None` when the
    /// request cannot use one (the build then refuses it). The gateway reads how the client's
    /// mask marks its edit area ([`crate::imaging::mask`]) and converts it once per request and
    /// convention, on its decode pool, handing it to [`ProviderAdapter::build`] in
    /// [`BuildScope::mask`]; an alpha mask for [`MaskConvention::Alpha`] goes as uploaded
    /// instead.
    fn mask_convention(&self, _form: &EditForm, _model: &str) -> Option<MaskConvention> {
        None
    }

    /// Converts the provider's answer: a success into the unified JSON body (its large strings
    /// shared with `resp.body`, see [`answer`]), an error status into a
    /// [`GatewayError::Provider`] that keeps the provider's status and message.
    fn convert_response(
        &self,
        resp: &UpstreamResponse,
        cx: &ResponseContext<'_>,
    ) -> Result<UnifiedAnswer, GatewayError>;

    /// Called by the server after every upstream answer, before converting it: what happens
    /// next ([`kernel::polling::FollowUp`]: convert it, send another request such as a poll or a result
    /// download, or the assembled answer). `state` persists across the steps of one request.
    /// Pure; the default converts every answer (synchronous providers).
    fn follow_up(
        &self,
        _resp: &UpstreamResponse,
        _state: &mut kernel::polling::FollowState,
        _cx: &kernel::polling::FollowContext<'_>,
    ) -> Result<kernel::polling::FollowUp, GatewayError> {
        Ok(kernel::polling::FollowUp::Done)
    }

    /// Host suffixes (such as `.bfl.ai`) that follow-up URLs may point to besides the
    /// provider's own `base_url` host (the server's SSRF guard); empty for synchronous kinds.
    fn follow_domains(&self) -> &'static [&'static str] {
        &[]
    }
}

/// The adapter for a provider kind: the registry of kinds, one line each (an exhaustive
/// match: a new kind does not compile until it is wired here).
pub fn adapter_for(kind: ProviderKind) -> &'static dyn ProviderAdapter {
    match kind {
        ProviderKind::OpenAi => &openai::OpenAiAdapter,
        ProviderKind::Azure => &azure::AzureAdapter,
        ProviderKind::Gemini => &gemini::GeminiAdapter,
        ProviderKind::Vertex => &vertex::VertexAdapter,
        ProviderKind::Bedrock => &bedrock::BedrockAdapter,
        ProviderKind::Stability => &stability::StabilityAdapter,
        ProviderKind::Bfl => &bfl::BflAdapter,
        ProviderKind::Fireworks => &fireworks::FireworksAdapter,
        ProviderKind::Replicate => &replicate::ReplicateAdapter,
        ProviderKind::HuggingFace => &huggingface::HuggingFaceAdapter,
        ProviderKind::Xai => &xai::XaiAdapter,
    }
}
