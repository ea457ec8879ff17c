//! The `generateContent` request body, shared by kind `gemini` and Vertex AI Gemini models.
//!
//! The body is a plan of segments: literal JSON (built here, the prompt escaped by serde_json)
//! around one [`BodySegment::Base64`] per image, which the exchange encodes from the spool
//! straight into the outgoing buffers. No image byte is copied into a string here.

use crate::error::GatewayError;
use crate::form::EditForm;
use crate::providers::kernel::post::json_post;
use crate::providers::kernel::size::image_config_for_size;
use crate::providers::{BodySegment, UpstreamRequest};
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// The MIME type Vertex's `imageConfig.outputMimeType` takes for an `output_format`.
fn output_mime(format: &str) -> &'static str {
    match format {
        "jpeg" | "jpg" => "image/jpeg",
        "webp" => "image/webp",
        _ => "image/png",
    }
}

/// The `generationConfig` object for `form`; `vertex` adds the Vertex-only output options.
fn generation_config(form: &EditForm, provider: &str, vertex: bool) -> Result<Value, GatewayError> {
    let mut config = Map::new();
    config.insert("responseModalities".into(), json!(["TEXT", "IMAGE"]));
    config.insert("candidateCount".into(), json!(form.n.unwrap_or(1)));
    if let Some(seed) = form.seed {
        let seed = i32::try_from(seed).map_err(|_| GatewayError::Unsupported {
            provider: provider.to_string(),
            param: "seed".into(),
            message: format!("seed={seed} (Gemini takes a 32-bit seed)"),
        })?;
        config.insert("seed".into(), json!(seed));
    }
    let mut image = Map::new();
    if let Some((ratio, size)) = image_config_for_size(form.size.as_deref(), provider)? {
        image.insert("aspectRatio".into(), json!(ratio));
        image.insert("imageSize".into(), json!(size));
    }
    if vertex {
        if let Some(format) = &form.output_format {
            image.insert("outputMimeType".into(), json!(output_mime(format)));
        }
        if let Some(q) = form.output_compression {
            image.insert("outputCompressionQuality".into(), json!(q));
        }
    }
    if !image.is_empty() {
        config.insert("imageConfig".into(), Value::Object(image));
    }
    Ok(Value::Object(config))
}

/// Builds a `generateContent` request for `form`. Called once per upstream attempt.
///
/// `path` is the model's resource path (`{base}/models/{model}`, or Vertex's
/// `…/publishers/google/models/{model}`); `:generateContent` is appended, or
/// `:streamGenerateContent?alt=sse` when `form.stream`. `auth` is the credential header. With
/// `vertex`, `output_format` / `output_compression` are sent as `imageConfig.outputMimeType` /
/// `outputCompressionQuality` (the Gemini API has no such options: they are dropped).
///
/// `Err` is a 400 for a `size` or `seed` Gemini cannot take, or an internal error for an image
/// part without a detected type (the form parser always sets it).
pub fn generate_content_request(
    form: &EditForm,
    path: String,
    auth: (http::HeaderName, String),
    request_id: &str,
    vertex: bool,
) -> Result<UpstreamRequest, GatewayError> {
    let internal = |e: serde_json::Error| GatewayError::Internal(e.to_string());
    let mut body = Vec::with_capacity(2 * form.images.len() + 2);
    let mut pending: Vec<u8> = Vec::with_capacity(512);
    pending.extend_from_slice(br#"{"contents":[{"role":"user","parts":["#);
    for (i, image) in form.images.iter().enumerate() {
        let kind = image
            .kind
            .ok_or_else(|| GatewayError::Internal("image part without a detected type".into()))?;
        if i > 0 {
            pending.push(b',');
        }
        pending.extend_from_slice(br#"{"inlineData":{"mimeType":""#);
        pending.extend_from_slice(kind.mime().as_bytes());
        pending.extend_from_slice(br#"","data":""#);
        body.push(BodySegment::Bytes(Bytes::from(std::mem::take(&mut pending))));
        body.push(BodySegment::Base64(image.range));
        pending.extend_from_slice(br#""}}"#);
    }
    if let Some(prompt) = &form.prompt {
        if !form.images.is_empty() {
            pending.push(b',');
        }
        pending.extend_from_slice(br#"{"text":"#);
        serde_json::to_writer(&mut pending, prompt).map_err(internal)?;
        pending.push(b'}');
    }
    pending.extend_from_slice(br#"]}],"generationConfig":"#);
    serde_json::to_writer(&mut pending, &generation_config(form, &form.provider, vertex)?).map_err(internal)?;
    pending.push(b'}');
    body.push(BodySegment::Bytes(Bytes::from(pending)));
    let method = if form.stream {
        ":streamGenerateContent?alt=sse"
    } else {
        ":generateContent"
    };
    let accept = if form.stream {
        "text/event-stream"
    } else {
        "application/json"
    };
    Ok(json_post(format!("{path}{method}"), auth, accept, request_id, body))
}
