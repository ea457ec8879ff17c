//! Kind `gemini`: the Gemini Developer API (`generativelanguage.googleapis.com`), image models
//! through `generateContent` (`gemini-2.5-flash-image`, `gemini-3-pro-image-preview`, …).
//!
//! Request ([`request::generate_content_request`], shared with Vertex AI Gemini models):
//! `POST {base_url.path}/models/{model}:generateContent`, or
//! `:streamGenerateContent?alt=sse` when the client asked for `stream=true`; the base path is
//! used as configured, so `/v1beta` (the default) and `/v1` (google-genai's default) both
//! work. The key goes in `x-goog-api-key`. The JSON body carries every uploaded image as an
//! `inlineData` part (its MIME type from the magic bytes, its standard base64 encoded on the fly
//! from the spool by the exchange), then the prompt as a `text` part, and a `generationConfig`
//! with `responseModalities: ["TEXT","IMAGE"]`, `candidateCount` = `n`, `seed`, and
//! `imageConfig` from `size` (`WxH` → the nearest supported `aspectRatio` and an `imageSize` of
//! `1K`/`2K`/`4K` by the long side; `auto` → nothing; a ratio more than 5 % away from every
//! supported one is refused with a 400 naming `size`).
//!
//! Dropped, having no Gemini equivalent: `quality`, `background`, `input_fidelity`,
//! `negative_prompt`, `num_inference_steps`, `partial_images`, `user`, unknown fields, and
//! `output_format` / `output_compression` (Vertex only). `mask` and `type` are refused by the
//! capability check before the adapter runs.
//!
//! Response ([`response::convert_generate_content`]): every non-thought `inlineData` image of
//! every candidate becomes `data[i].b64_json` (copied once, unparsed), `usageMetadata` becomes
//! OpenAI usage. An answer without images that carries a reason (`finishReason` other than
//! `STOP`, such as `IMAGE_SAFETY`, or `promptFeedback.blockReason`) is a 400
//! `moderation_blocked`; one without images or reason is a 502. Error statuses keep Google's
//! message and status ([`super::google::google_error`]).
//!
//! Streaming ([`response::GenerateContentStream`]): each `data:` chunk's final image parts
//! become `image_edit.completed` events.
//!
//! Imagen models (`imagen-*`) go to `POST {base}/models/{model}:predict` with the body Vertex
//! AI takes ([`super::vertex::imagen`]: references, the mask converted to white = edit), and
//! their answers are converted as on Vertex. (Google documents Imagen *editing* on Vertex only;
//! the route is there for deployments and proxies that serve it on the Gemini API's paths.)

pub mod request;
pub mod response;

use super::capabilities::{Capabilities, ModelFamily, Streaming};
use super::google::json_post;
use super::stream::StreamContext;
use super::vertex::{convert_google_answer, google_stream_translator, imagen, is_imagen, IMAGEN_CAPABILITIES};
use super::{
    auth_header, Prepared, ProviderAdapter, ResponseContext, StreamTranslator, UpstreamRequest, UpstreamResponse,
};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::{ConvertedMask, MaskConvention};
use crate::providers::UnifiedAnswer;
use crate::route::Target;
pub use request::generate_content_request;
pub use response::{convert_generate_content, GenerateContentStream};

/// The adapter for kind `gemini`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeminiAdapter;

/// What Gemini image models do through `generateContent` (the Gemini API and Vertex AI).
pub static GEMINI_IMAGE_CAPABILITIES: Capabilities = Capabilities {
    mask: false,
    max_n: 4,
    n_by_calls: None,
    max_images: 14,
    max_image_bytes: 20 * 1024 * 1024,
    edit_types: &[],
    url_output: false,
    sizes: "`WxH` → nearest `aspectRatio` + `imageSize` 1K/2K/4K, `auto`",
    streaming: Streaming::NativeCompletedOnly,
    extra_fields: "seed",
    max_prompt_chars: None,
    input_formats: &[],
    allowed_sizes: &[],
};

/// Whether `model` is served by `generateContent` (every model but Imagen's).
pub fn is_generate_content_model(model: &str) -> bool {
    !model.starts_with("imagen")
}

static FAMILIES: [ModelFamily; 2] = [
    ModelFamily {
        name: "Gemini image models (gemini-2.5-flash-image, gemini-3-pro-image-preview, …)",
        matches: is_generate_content_model,
        capabilities: GEMINI_IMAGE_CAPABILITIES,
    },
    ModelFamily {
        name: "Imagen (imagen-*) through :predict",
        matches: is_imagen,
        capabilities: IMAGEN_CAPABILITIES,
    },
];

/// The model's path on the Gemini API (the method is appended).
fn model_path(target: &Target) -> String {
    format!(
        "{}/models/{}",
        target.provider.base_url.path,
        super::azure::percent_encode_segment(&target.model)
    )
}

impl ProviderAdapter for GeminiAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    fn stream_translator(&self, cx: &StreamContext) -> Option<Box<dyn StreamTranslator>> {
        google_stream_translator(cx)
    }

    /// Gemini models only: an Imagen request needs the spool (its mask is converted).
    fn build_request(
        &self,
        form: &EditForm,
        target: &Target,
        request_id: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        if is_imagen(&target.model) {
            return imagen_request(form, None, target, request_id);
        }
        generate_content_request(
            form,
            model_path(target),
            auth_header(target, "x-goog-api-key")?,
            request_id,
            false,
        )
    }

    /// Imagen takes an opaque greyscale mask, white = edit.
    fn mask_convention(&self, form: &EditForm, model: &str) -> Option<MaskConvention> {
        (form.mask.is_some() && is_imagen(model)).then_some(MaskConvention::GrayWhiteEdit)
    }

    fn build_prepared(
        &self,
        form: &EditForm,
        inputs: &Prepared<'_>,
        target: &Target,
        request_id: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        if !is_imagen(&target.model) {
            return self.build_request(form, target, request_id);
        }
        imagen_request(form, inputs.mask, target, request_id)
    }

    fn convert_response(
        &self,
        resp: &UpstreamResponse,
        cx: &ResponseContext<'_>,
    ) -> Result<UnifiedAnswer, GatewayError> {
        convert_google_answer(resp, cx)
    }
}

/// An Imagen `:predict` request on the Gemini API's paths; `mask` is the converted mask (a
/// form with a mask and no converted mask is an internal error: the gateway converts it).
fn imagen_request(
    form: &EditForm,
    mask: Option<&ConvertedMask>,
    target: &Target,
    request_id: &str,
) -> Result<UpstreamRequest, GatewayError> {
    if form.mask.is_some() && mask.is_none() {
        return Err(GatewayError::Internal(
            "an Imagen mask must be converted from the spool".into(),
        ));
    }
    Ok(json_post(
        format!("{}:predict", model_path(target)),
        auth_header(target, "x-goog-api-key")?,
        "application/json",
        request_id,
        imagen::body(form, mask, &target.provider.name)?,
    ))
}
