//! The Google family: what kinds `gemini` and `vertex` share, which is most of both. Each serves
//! two dialects, chosen by model: Gemini image models through `generateContent`
//! ([`content_request`], [`content_response`]) and Imagen models through `:predict`
//! ([`imagen`]); the two adapters differ only in paths, auth and Vertex's output options.
//! Errors come in Google's envelope ([`google_error`]).
//!
//! This is not an adapter (no `ProviderAdapter` here) but a family module: it depends on the
//! kernel only, and both adapters depend on it, never on each other. It is not in the kernel
//! because nothing in it is of use to a provider outside Google's APIs.

pub mod content_request;
pub mod content_response;
pub mod imagen;

use super::capabilities::{Capabilities, Streaming};
use super::kernel::errors::provider_error;
use super::stream::StreamContext;
use super::{ResponseContext, StreamTranslator, UnifiedAnswer, UpstreamResponse};
use crate::error::GatewayError;
use crate::form::EditType;
use content_response::{convert_generate_content, GenerateContentStream};
use serde_json::{json, Map, Value};

/// Whether `model` is an Imagen model.
pub fn is_imagen(model: &str) -> bool {
    model.starts_with("imagen-")
}

/// Whether `model` is served by `generateContent` (every model but Imagen's).
pub fn is_generate_content_model(model: &str) -> bool {
    !model.starts_with("imagen")
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

/// A Google error answer (`{"error":{"code":400,"message":…,"status":"INVALID_ARGUMENT",
/// "details":[…]}}`) as a provider error in OpenAI's shape: `message` kept, `type` and `code`
/// from `status` (or the first `details[].reason`), `param` null; the provider's HTTP status
/// kept. Anything else is handled like an OpenAI error body.
pub fn google_error(provider: &str, resp: &UpstreamResponse) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let Some(google) = parsed
        .as_ref()
        .and_then(|v| v.get("error"))
        .and_then(Value::as_object)
        .filter(|e| e.contains_key("status") || e.get("code").is_some_and(Value::is_number))
    else {
        return provider_error(provider, resp);
    };
    let status = google.get("status").and_then(Value::as_str);
    let reason = google
        .get("details")
        .and_then(Value::as_array)
        .and_then(|d| d.iter().find_map(|x| x.get("reason").and_then(Value::as_str)));
    let mut error = Map::new();
    error.insert(
        "message".into(),
        google
            .get("message")
            .cloned()
            .unwrap_or_else(|| json!(format!("provider '{provider}' answered HTTP {}", resp.status))),
    );
    error.insert("type".into(), json!(status));
    error.insert("code".into(), json!(reason.or(status)));
    error.insert("param".into(), Value::Null);
    GatewayError::Provider {
        provider: provider.to_string(),
        status: resp.status,
        error,
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
    imagen::convert_predictions(&resp.body, cx)
}

/// The stream translator for a Google model: Gemini models stream `generateContent` chunks;
/// Imagen cannot stream (`None`: the gateway synthesizes the stream).
pub fn google_stream_translator(cx: &StreamContext) -> Option<Box<dyn StreamTranslator>> {
    (!is_imagen(&cx.model_deployment)).then(|| Box::new(GenerateContentStream::new(cx)) as Box<dyn StreamTranslator>)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::providers::test_support::json_text as resp;

    #[test]
    fn google_envelope_becomes_openai_shape() {
        let e = google_error(
            "g",
            &resp(
                400,
                r#"{"error":{"code":400,"message":"API key not valid.","status":"INVALID_ARGUMENT","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"API_KEY_INVALID"}]}}"#,
            ),
        );
        assert_eq!(e.status(), 400);
        let j = e.to_json(&crate::error::ErrorContext::default());
        assert_eq!(j["error"]["message"], "API key not valid.");
        assert_eq!(j["error"]["type"], "INVALID_ARGUMENT");
        assert_eq!(j["error"]["code"], "API_KEY_INVALID");
        assert_eq!(j["is_bifrost_error"], false);
        let e = google_error(
            "g",
            &resp(
                429,
                r#"{"error":{"code":429,"message":"quota","status":"RESOURCE_EXHAUSTED"}}"#,
            ),
        );
        assert_eq!(e.status(), 429);
        assert_eq!(
            e.to_json(&crate::error::ErrorContext::default())["error"]["code"],
            "RESOURCE_EXHAUSTED"
        );
        // Not Google's envelope: handled as an OpenAI-style error.
        let e = google_error("g", &resp(502, "upstream connect error"));
        assert_eq!(e.status(), 502);
        assert!(e.to_json(&crate::error::ErrorContext::default())["error"]["message"]
            .as_str()
            .unwrap()
            .contains("upstream connect error"));
    }
}
