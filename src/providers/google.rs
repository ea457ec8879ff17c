//! What the Google kinds (`gemini`, `vertex`) share: the Google error envelope, and the
//! unified answer written from images that arrive as base64 strings inside Google's JSON.

use super::openai::{extra_fields, provider_error};
use super::{BodySegment, ResponseContext, UpstreamRequest, UpstreamResponse};
use crate::error::GatewayError;
use bytes::Bytes;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

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

/// A JSON `POST` (Google endpoints, and the other JSON providers): `path`, the credential header `auth`, the answer type
/// `accept` (`application/json`, or `text/event-stream` for streams), and the body plan.
pub fn json_post(
    path: String,
    auth: (http::HeaderName, String),
    accept: &str,
    request_id: &str,
    body: Vec<BodySegment>,
) -> UpstreamRequest {
    UpstreamRequest {
        method: http::Method::POST,
        path,
        headers: vec![
            auth,
            (http::header::CONTENT_TYPE, "application/json".to_string()),
            (http::header::ACCEPT, accept.to_string()),
            (http::header::ACCEPT_ENCODING, "identity".to_string()),
            (http::HeaderName::from_static("x-request-id"), request_id.to_string()),
        ],
        body,
    }
}

/// The content moderation refusal for an answer that carries no image (a safety filter, a
/// block reason): 400 `moderation_blocked`, with the provider's reason in the message.
pub fn no_image_error(provider: &str, why: &str) -> GatewayError {
    let mut error = Map::new();
    error.insert(
        "message".into(),
        json!(format!("provider '{provider}' returned no image: {why}")),
    );
    error.insert("type".into(), json!("image_generation_user_error"));
    error.insert("code".into(), json!("moderation_blocked"));
    error.insert("param".into(), Value::Null);
    GatewayError::Provider {
        provider: provider.to_string(),
        status: 400,
        error,
    }
}

/// One image of an answer: its base64 as the raw JSON string the provider sent (quotes
/// included, copied as is: standard base64 needs no escaping), and its MIME type.
#[derive(Debug, Clone, Copy)]
pub struct AnswerImage<'a> {
    /// The JSON string holding the base64.
    pub b64: &'a RawValue,
    /// e.g. `image/png`.
    pub mime: Option<&'a str>,
}

/// Writes the unified (OpenAI `ImagesResponse` + `extra_fields`) answer:
/// `{"created", "data":[{"b64_json","index"}…], "output_format", "usage", "extra_fields"}`.
/// Each image's base64 is copied once, unparsed. `usage` is OpenAI-shaped (zeros when the
/// provider reports none).
pub fn write_images_response(
    images: &[AnswerImage<'_>],
    usage: Option<Value>,
    created: u64,
    cx: &ResponseContext<'_>,
) -> Result<Bytes, GatewayError> {
    let size: usize = images.iter().map(|i| i.b64.get().len() + 32).sum();
    write_answer(
        size,
        images.len(),
        |i, out| out.extend_from_slice(images[i].b64.get().as_bytes()),
        images.first().and_then(|i| i.mime),
        usage,
        created,
        cx,
    )
}

/// Writes the unified answer for one image the provider sent as raw bytes (Hugging Face):
/// the bytes are base64-encoded once, straight into the answer. `mime` gives `output_format`.
pub fn write_raw_image_response(
    image: &[u8],
    mime: Option<&str>,
    created: u64,
    cx: &ResponseContext<'_>,
) -> Result<Bytes, GatewayError> {
    let size = crate::codec::base64::encoded_len(image.len() as u64) as usize + 2;
    write_answer(
        size,
        1,
        |_, out| {
            out.push(b'"');
            crate::codec::base64::encode_append(image, out);
            out.push(b'"');
        },
        mime,
        None,
        created,
        cx,
    )
}

/// The unified answer with `count` images, `write_b64(i, out)` appending image `i`'s base64
/// as a JSON string; `size` is about how many bytes those strings take.
fn write_answer(
    size: usize,
    count: usize,
    mut write_b64: impl FnMut(usize, &mut Vec<u8>),
    mime: Option<&str>,
    usage: Option<Value>,
    created: u64,
    cx: &ResponseContext<'_>,
) -> Result<Bytes, GatewayError> {
    let internal = |e: serde_json::Error| GatewayError::Internal(e.to_string());
    let mut out = Vec::with_capacity(size + 512);
    out.extend_from_slice(format!("{{\"created\":{created},\"data\":[").as_bytes());
    for i in 0..count {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"b64_json\":");
        write_b64(i, &mut out);
        out.extend_from_slice(format!(",\"index\":{i}}}").as_bytes());
    }
    out.extend_from_slice(b"]");
    if let Some(format) = mime.and_then(output_format) {
        out.extend_from_slice(format!(",\"output_format\":\"{format}\"").as_bytes());
    }
    out.extend_from_slice(b",\"usage\":");
    serde_json::to_writer(&mut out, &usage.unwrap_or_else(zero_usage)).map_err(internal)?;
    out.extend_from_slice(b",\"extra_fields\":");
    serde_json::to_writer(&mut out, &extra_fields(cx)).map_err(internal)?;
    out.push(b'}');
    Ok(Bytes::from(out))
}

/// OpenAI's `output_format` for a MIME type.
pub fn output_format(mime: &str) -> Option<&'static str> {
    match mime {
        "image/png" => Some("png"),
        "image/jpeg" => Some("jpeg"),
        "image/webp" => Some("webp"),
        _ => None,
    }
}

/// OpenAI usage with every count zero.
pub fn zero_usage() -> Value {
    json!({"total_tokens":0,"input_tokens":0,"output_tokens":0,"input_tokens_details":{"text_tokens":0,"image_tokens":0}})
}

/// Seconds since the Unix epoch (`created`).
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resp(status: u16, body: &'static str) -> UpstreamResponse {
        UpstreamResponse {
            retry_after: None,
            status,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(body.as_bytes()),
        }
    }

    fn cx() -> ResponseContext<'static> {
        ResponseContext {
            provider: "g",
            model_requested: "m",
            model_deployment: "m",
            latency_ms: 5,
            num_input_images: 1,
        }
    }

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

    #[test]
    fn images_response_copies_base64_once() {
        let a: Box<RawValue> = RawValue::from_string("\"QUJD\"".into()).unwrap();
        let b: Box<RawValue> = RawValue::from_string("\"REVG\"".into()).unwrap();
        let images = [
            AnswerImage {
                b64: &a,
                mime: Some("image/png"),
            },
            AnswerImage { b64: &b, mime: None },
        ];
        let out = write_images_response(&images, None, 7, &cx()).unwrap();
        let v: Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["created"], 7);
        assert_eq!(v["data"][0]["b64_json"], "QUJD");
        assert_eq!(v["data"][1]["b64_json"], "REVG");
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["output_format"], "png");
        assert_eq!(v["usage"]["total_tokens"], 0);
        assert_eq!(v["extra_fields"]["provider"], "g");
        assert_eq!(no_image_error("g", "IMAGE_SAFETY").status(), 400);
    }
}
