//! Kind `vertex`: Vertex AI. Imagen editing (`imagen-*` capability models) through
//! `:predict` (the request body is built in [`super::google::imagen`]), and Gemini image models
//! through `generateContent` (the Gemini API's body,
//! [`super::google::content_request::generate_content_request`], with
//! Vertex's `imageConfig.outputMimeType`/`outputCompressionQuality`; answers and streams as on
//! the Gemini API). Both dialects come from the Google family module, [`super::google`],
//! shared with kind `gemini`; this adapter adds Vertex's paths and auth.
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

use super::capabilities::ModelFamily;
use super::google::content_request::generate_content_request;
use super::google::{
    convert_google_answer, google_stream_translator, imagen, is_generate_content_model, is_imagen,
    GEMINI_IMAGE_CAPABILITIES, IMAGEN_CAPABILITIES,
};
use super::kernel::percent::percent_encode_segment;
use super::kernel::post::auth_header;
use super::model_id::plain;
use super::stream::StreamContext;
use super::{
    BuildScope, ProviderAdapter, ResponseContext, StreamTranslator, UnifiedAnswer, UpstreamRequest, UpstreamResponse,
};
use crate::config::KeyAuth;
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::MaskConvention;
use crate::route::Target;

/// The adapter for kind `vertex`.
#[derive(Debug, Clone, Copy, Default)]
pub struct VertexAdapter;

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

impl ProviderAdapter for VertexAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    /// One name, `@` allowed (versioned publisher models, `imagegeneration@006`).
    fn model_id_shape(&self, model: &str) -> Result<(), &'static str> {
        (!model.contains('/') && plain(model, b"@"))
            .then_some(())
            .ok_or("expected one model name of letters, digits, '.', '_', '-', '@'")
    }

    fn stream_translator(&self, cx: &StreamContext) -> Option<Box<dyn StreamTranslator>> {
        google_stream_translator(cx)
    }

    /// Gemini models through `generateContent` with Vertex's output options; Imagen through
    /// `:predict`, its mask converted by the gateway (`scope.mask`).
    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        let BuildScope {
            form,
            target,
            request_id,
            ..
        } = *scope;
        let auth = auth_header(target, "x-goog-api-key")?;
        if !is_imagen(&target.model) {
            return generate_content_request(form, model_path(target)?, auth, request_id, true);
        }
        imagen::predict_request(form, scope.mask, target, model_path(target)?, request_id)
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
