//! Kind `vertex`: Vertex AI. Imagen editing (`imagen-*` capability models) through
//! `:predict` (the request body is built in [`imagen`]), and Gemini image models through
//! `generateContent` (the Gemini API's body, [`super::gemini::generate_content_request`], with
//! Vertex's `imageConfig.outputMimeType`/`outputCompressionQuality`; answers and streams as on
//! the Gemini API).
//!
//! - Path: `POST {base}/projects/{project}/locations/{location}/publishers/google/models/{model}:predict`
//!   (`:generateContent`, `:streamGenerateContent?alt=sse` for Gemini models)
//!   with `Authorization: Bearer <token>`: a static OAuth token (`value`, `auth: bearer`, the
//!   default) or one obtained for a service account (`service_account_file`, see
//!   `server::credentials`). With `auth: api_key` (Vertex "express mode") the key goes in
//!   `x-goog-api-key` and the path is `{base}/publishers/google/models/{model}:predict`.
//! - Answer: `{"predictions":[{"bytesBase64Encoded","mimeType"}…]}` → `data[i].b64_json`, the
//!   base64 copied once from the provider's JSON. Filtered images are dropped by Vertex (or
//!   replaced by `{"raiFilteredReason"}` items, which refract asks for); an answer without any
//!   image is a 400 `moderation_blocked` carrying the reason. Errors come in Google's envelope
//!   ([`super::google::google_error`]).
//! - No streaming: `stream=true` is synthesized by the gateway from the complete answer.

pub mod imagen;

use super::azure::percent_encode_segment;
use super::capabilities::{Capabilities, ModelFamily, Streaming};
use super::gemini::{
    convert_generate_content, generate_content_request, is_generate_content_model, GenerateContentStream,
    GEMINI_IMAGE_CAPABILITIES,
};
use super::google::{google_error, json_post, no_image_error, unix_now, write_images_response, AnswerImage};
use super::stream::StreamContext;
use super::{
    auth_header, Prepared, ProviderAdapter, ResponseContext, StreamTranslator, UpstreamRequest, UpstreamResponse,
};
use crate::config::KeyAuth;
use crate::error::GatewayError;
use crate::form::{EditForm, EditType};
use crate::imaging::{ConvertedMask, MaskConvention};
use crate::providers::UnifiedAnswer;
use crate::route::Target;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use std::borrow::Cow;

/// The adapter for kind `vertex`.
#[derive(Debug, Clone, Copy, Default)]
pub struct VertexAdapter;

/// Whether `model` is an Imagen model.
pub fn is_imagen(model: &str) -> bool {
    model.starts_with("imagen-")
}

/// Imagen capability models (`imagen-3.0-capability-001`). Limits: `sampleCount` 1–4 and four
/// RAW references (google-genai's documented ranges); 10 MB per image is a conservative bound
/// (providers.md gives no Imagen figure; Vertex's inline request budget is about 20 MB).
pub static IMAGEN_CAPABILITIES: Capabilities = Capabilities {
    mask: true,
    max_n: 4,
    n_by_calls: None,
    max_images: 4,
    max_image_bytes: 10_000_000,
    edit_types: &[EditType::Inpainting, EditType::Outpainting, EditType::BackgroundRemoval],
    url_output: false,
    sizes: "ignored (edits keep the input size)",
    streaming: Streaming::Synthesized,
    extra_fields: "seed, negative_prompt, num_inference_steps, output_format (png, jpeg), output_compression",
    max_prompt_chars: None,
    input_formats: &[],
    allowed_sizes: &[],
};

static FAMILIES: [ModelFamily; 2] = [
    ModelFamily {
        name: "Imagen (imagen-*, e.g. imagen-3.0-capability-001)",
        matches: is_imagen,
        capabilities: IMAGEN_CAPABILITIES,
    },
    ModelFamily {
        name: "Gemini image models (gemini-2.5-flash-image, …) through generateContent",
        matches: is_generate_content_model,
        capabilities: GEMINI_IMAGE_CAPABILITIES,
    },
];

/// The model's path for `target` (the method, e.g. `:predict`, is appended): regional
/// (project and location from the config), or the express-mode path for API keys.
fn model_path(target: &Target) -> Result<String, GatewayError> {
    let base = &target.provider.base_url.path;
    let model = percent_encode_segment(&target.model);
    if target.key().auth == KeyAuth::ApiKey {
        return Ok(format!("{base}/publishers/google/models/{model}"));
    }
    let options = &target.provider.options;
    match (&options.project, &options.location) {
        (Some(project), Some(location)) => Ok(format!(
            "{base}/projects/{project}/locations/{location}/publishers/google/models/{model}"
        )),
        _ => Err(GatewayError::Internal(format!(
            "provider '{}' has no project or location",
            target.provider.name
        ))),
    }
}

/// Builds the request; `mask` is the mask already converted to Imagen's convention (`None`
/// when the form has none).
fn build(
    form: &EditForm,
    mask: Option<&ConvertedMask>,
    target: &Target,
    request_id: &str,
) -> Result<UpstreamRequest, GatewayError> {
    let auth = auth_header(target, "x-goog-api-key")?;
    if !is_imagen(&target.model) {
        return generate_content_request(form, model_path(target)?, auth, request_id, true);
    }
    let body = imagen::body(form, mask, &target.provider.name)?;
    Ok(json_post(
        format!("{}:predict", model_path(target)?),
        auth,
        "application/json",
        request_id,
        body,
    ))
}

impl ProviderAdapter for VertexAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    fn stream_translator(&self, cx: &StreamContext) -> Option<Box<dyn StreamTranslator>> {
        google_stream_translator(cx)
    }

    /// Without the converted mask: a form with a mask is refused (the gateway always calls
    /// [`ProviderAdapter::build_prepared`]).
    fn build_request(
        &self,
        form: &EditForm,
        target: &Target,
        request_id: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        if form.mask.is_some() && is_imagen(&target.model) {
            return Err(GatewayError::Internal(
                "kind vertex needs the spool to convert the mask".into(),
            ));
        }
        build(form, None, target, request_id)
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
        if inputs.mask.is_none() {
            return self.build_request(form, target, request_id);
        }
        build(form, inputs.mask, target, request_id)
    }

    fn convert_response(
        &self,
        resp: &UpstreamResponse,
        cx: &ResponseContext<'_>,
    ) -> Result<UnifiedAnswer, GatewayError> {
        convert_google_answer(resp, cx)
    }
}

/// A Google answer of either dialect, by model: Imagen `:predict` predictions, or a Gemini
/// `generateContent` answer (both kinds `gemini` and `vertex` serve both).
pub fn convert_google_answer(resp: &UpstreamResponse, cx: &ResponseContext<'_>) -> Result<UnifiedAnswer, GatewayError> {
    if !is_imagen(cx.model_deployment) {
        return convert_generate_content(resp, cx);
    }
    if !(200..300).contains(&resp.status) {
        return Err(google_error(cx.provider, resp));
    }
    convert_predictions(&resp.body, cx)
}

/// The stream translator for a Google model: Gemini models stream `generateContent` chunks;
/// Imagen cannot stream (`None`: the gateway synthesizes the stream).
pub fn google_stream_translator(cx: &StreamContext) -> Option<Box<dyn StreamTranslator>> {
    (!is_imagen(&cx.model_deployment)).then(|| Box::new(GenerateContentStream::new(cx)) as Box<dyn StreamTranslator>)
}

/// Imagen's answer, borrowed from the body (the base64 is never copied into a `String`).
#[derive(Deserialize)]
struct PredictResponse<'a> {
    #[serde(borrow, default)]
    predictions: Option<Vec<Prediction<'a>>>,
}

#[derive(Deserialize)]
struct Prediction<'a> {
    #[serde(borrow, rename = "bytesBase64Encoded")]
    b64: Option<&'a RawValue>,
    #[serde(borrow, rename = "mimeType")]
    mime: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "raiFilteredReason")]
    filtered: Option<Cow<'a, str>>,
}

/// A 2xx `:predict` answer → the unified answer, or `moderation_blocked` when every image was
/// filtered, or 502 when the body is not Imagen's JSON.
pub fn convert_predictions(body: &Bytes, cx: &ResponseContext<'_>) -> Result<UnifiedAnswer, GatewayError> {
    let protocol = |detail: String| GatewayError::UpstreamProtocol {
        provider: cx.provider.to_string(),
        detail,
    };
    let parsed: PredictResponse<'_> =
        serde_json::from_slice(body).map_err(|e| protocol(format!("not an Imagen :predict answer: {e}")))?;
    let predictions = parsed.predictions.unwrap_or_default();
    let mut images = Vec::with_capacity(predictions.len());
    for p in &predictions {
        if let Some(b64) = p.b64 {
            if !b64.get().starts_with('"') {
                return Err(protocol("bytesBase64Encoded is not a string".into()));
            }
            images.push(AnswerImage {
                b64: b64.get(),
                mime: p.mime.as_deref(),
            });
        }
    }
    if images.is_empty() {
        let reasons: Vec<&str> = predictions.iter().filter_map(|p| p.filtered.as_deref()).collect();
        let why = if reasons.is_empty() {
            "every image was filtered (no predictions)".to_string()
        } else {
            reasons.join("; ")
        };
        return Err(no_image_error(cx.provider, &why));
    }
    write_images_response(std::slice::from_ref(body), &images, None, unix_now(), cx)
}

#[cfg(test)]
pub(crate) mod tests;
