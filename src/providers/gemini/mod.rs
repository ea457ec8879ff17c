//! Kind `gemini`: the Gemini Developer API (`generativelanguage.googleapis.com`), image models
//! through `generateContent` (`gemini-2.5-flash-image`, `gemini-3-pro-image-preview`, …).
//!
//! Request ([`super::google::content_request::generate_content_request`], shared with Vertex AI
//! Gemini models through the Google family module, [`super::google`]):
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
//! Response ([`super::google::content_response::convert_generate_content`]): every non-thought `inlineData` image of
//! every candidate becomes `data[i].b64_json` (copied once, unparsed), `usageMetadata` becomes
//! OpenAI usage. An answer without images that carries a reason (`finishReason` other than
//! `STOP`, such as `IMAGE_SAFETY`, or `promptFeedback.blockReason`) is a 400
//! `moderation_blocked`; one without images or reason is a 502. Error statuses keep Google's
//! message and status ([`super::google::google_error`]).
//!
//! Streaming ([`super::google::content_response::GenerateContentStream`]): each `data:` chunk's final image parts
//! become `image_edit.completed` events.
//!
//! Imagen models (`imagen-*`) go to `POST {base}/models/{model}:predict` with the body Vertex
//! AI takes ([`super::google::imagen`]: references, the mask converted to white = edit), and
//! their answers are converted as on Vertex. (Google documents Imagen *editing* on Vertex only;
//! the route is there for deployments and proxies that serve it on the Gemini API's paths.)

use super::capabilities::ModelFamily;
use super::google::content_request::generate_content_request;
use super::google::{
    convert_google_answer, google_stream_translator, imagen, is_generate_content_model, is_imagen,
    GEMINI_IMAGE_CAPABILITIES, IMAGEN_CAPABILITIES,
};
use super::kernel::percent::percent_encode_segment;
use super::kernel::post::auth_header;
use super::stream::StreamContext;
use super::{
    BuildScope, ProviderAdapter, ResponseContext, StreamTranslator, UnifiedAnswer, UpstreamRequest, UpstreamResponse,
};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::MaskConvention;
use crate::route::Target;

/// The adapter for kind `gemini`.
#[derive(Debug, Clone, Copy, Default)]
pub struct GeminiAdapter;

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
        percent_encode_segment(&target.model)
    )
}

impl ProviderAdapter for GeminiAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    fn stream_translator(&self, cx: &StreamContext) -> Option<Box<dyn StreamTranslator>> {
        google_stream_translator(cx)
    }

    /// Gemini models through `generateContent`; Imagen through `:predict`, its mask converted
    /// by the gateway (`scope.mask`).
    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        let BuildScope {
            form,
            target,
            request_id,
            ..
        } = *scope;
        if is_imagen(&target.model) {
            return imagen::predict_request(form, scope.mask, target, model_path(target), request_id);
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
        imagen::mask_convention(form, model)
    }

    fn convert_response(
        &self,
        resp: &UpstreamResponse,
        cx: &ResponseContext<'_>,
    ) -> Result<UnifiedAnswer, GatewayError> {
        convert_google_answer(resp, cx)
    }
}

#[cfg(test)]
mod tests;
