//! Answer writing: the unified answer (OpenAI's `ImagesResponse` with Bifrost's
//! `extra_fields`) written from images an adapter found in the provider's answer, as base64
//! strings inside its JSON ([`write_images_response`]: Google, Bedrock, Stability, the polled
//! providers) or as raw bytes ([`write_raw_image_response`]: Hugging Face). Runs in
//! `convert_response` (and in a polled job's last follow-up), once per answer.

use crate::error::GatewayError;
use crate::providers::answer::AnswerWriter;
use crate::providers::rawjson::JsonOut;
use crate::providers::{ResponseContext, UnifiedAnswer};
use bytes::Bytes;
use serde_json::{json, Value};

/// One image of an answer: its base64 as the raw JSON string the provider sent (quotes
/// included, sent as is: standard base64 needs no escaping), and its MIME type.
#[derive(Debug, Clone, Copy)]
pub struct AnswerImage<'a> {
    /// The JSON string holding the base64 (valid JSON, quotes included).
    pub b64: &'a str,
    /// e.g. `image/png`.
    pub mime: Option<&'a str>,
}

/// Writes the unified (OpenAI `ImagesResponse` + `extra_fields`) answer:
/// `{"created", "data":[{"b64_json","index"}…], "output_format", "usage", "extra_fields"}`.
/// Each image's base64 is written unparsed, shared with the buffer of `sources` that holds it
/// (the provider's body) rather than copied ([`AnswerWriter`]). `usage` is OpenAI-shaped
/// (zeros when the provider reports none).
pub fn write_images_response(
    sources: &[Bytes],
    images: &[AnswerImage<'_>],
    usage: Option<Value>,
    created: u64,
    cx: &ResponseContext<'_>,
) -> Result<UnifiedAnswer, GatewayError> {
    let mut out = AnswerWriter::new(sources.to_vec());
    write_answer(&mut out, images, usage, created, cx)?;
    Ok(out.finish())
}

/// Writes the unified answer for one image the provider sent as raw bytes (Hugging Face):
/// the bytes are base64-encoded once, into a buffer the answer shares. `mime` gives
/// `output_format`.
pub fn write_raw_image_response(
    image: &[u8],
    mime: Option<&str>,
    created: u64,
    cx: &ResponseContext<'_>,
) -> Result<UnifiedAnswer, GatewayError> {
    let mut quoted = Vec::with_capacity(crate::codec::base64::encoded_len(image.len() as u64) as usize + 2);
    quoted.push(b'"');
    crate::codec::base64::encode_append(image, &mut quoted);
    quoted.push(b'"');
    let quoted = Bytes::from(quoted);
    // Standard base64 in quotes: ASCII.
    let b64 = std::str::from_utf8(&quoted).map_err(|e| GatewayError::Internal(e.to_string()))?;
    write_images_response(
        std::slice::from_ref(&quoted),
        &[AnswerImage { b64, mime }],
        None,
        created,
        cx,
    )
}

/// The unified answer of [`write_images_response`], written into `out`.
fn write_answer<O: JsonOut>(
    out: &mut O,
    images: &[AnswerImage<'_>],
    usage: Option<Value>,
    created: u64,
    cx: &ResponseContext<'_>,
) -> Result<(), GatewayError> {
    let internal = |e: serde_json::Error| GatewayError::Internal(e.to_string());
    out.put(format!("{{\"created\":{created},\"data\":[").as_bytes());
    for (i, image) in images.iter().enumerate() {
        if i > 0 {
            out.put(b",");
        }
        out.put(b"{\"b64_json\":");
        out.put_string(image.b64.as_bytes());
        out.put(format!(",\"index\":{i}}}").as_bytes());
    }
    out.put(b"]");
    if let Some(format) = images.first().and_then(|i| i.mime).and_then(output_format) {
        out.put(format!(",\"output_format\":\"{format}\"").as_bytes());
    }
    out.put(b",\"usage\":");
    serde_json::to_writer(&mut *out, &usage.unwrap_or_else(zero_usage)).map_err(internal)?;
    out.put(b",\"extra_fields\":");
    serde_json::to_writer(&mut *out, &ExtraFields::of(cx)).map_err(internal)?;
    out.put(b"}");
    Ok(())
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

/// Bifrost's `extra_fields` for a successful image edit.
pub fn extra_fields(cx: &ResponseContext<'_>) -> Value {
    serde_json::to_value(ExtraFields::of(cx)).unwrap_or(Value::Null)
}

/// [`extra_fields`] serialized, written without building a `Value` (the answer path's: one
/// allocation, the buffer).
pub fn extra_fields_json(cx: &ResponseContext<'_>) -> Result<Vec<u8>, serde_json::Error> {
    let mut out = Vec::with_capacity(160 + cx.provider.len() + cx.model_requested.len() + cx.model_deployment.len());
    serde_json::to_writer(&mut out, &ExtraFields::of(cx))?;
    Ok(out)
}

/// Bifrost's `extra_fields` members, in Bifrost's order.
#[derive(serde::Serialize)]
struct ExtraFields<'a> {
    request_type: &'static str,
    provider: &'a str,
    model_requested: &'a str,
    model_deployment: &'a str,
    latency: u64,
    chunk_index: u32,
}

impl<'a> ExtraFields<'a> {
    fn of(cx: &ResponseContext<'a>) -> Self {
        ExtraFields {
            request_type: "image_edit",
            provider: cx.provider,
            model_requested: cx.model_requested,
            model_deployment: cx.model_deployment,
            latency: cx.latency_ms,
            chunk_index: 0,
        }
    }
}

/// OpenAI usage with every count zero.
pub fn zero_usage() -> Value {
    json!({"total_tokens":0,"input_tokens":0,"output_tokens":0,"input_tokens_details":{"text_tokens":0,"image_tokens":0}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::kernel::errors::no_image_error;

    fn cx() -> ResponseContext<'static> {
        ResponseContext {
            provider: "g",
            model_requested: "m",
            model_deployment: "m",
            latency_ms: 5,
            num_input_images: 1,
            created: crate::providers::test_support::CLOCK_SECS,
        }
    }

    /// Differential: for images of every size around the splice threshold, the answer written
    /// over the provider's body is byte for byte the one written into one buffer, and shares
    /// exactly the long images with the body.
    #[test]
    fn spliced_answers_equal_the_copied_ones() {
        let min = crate::providers::answer::SPLICE_MIN_BYTES;
        let mut rng = fastrand::Rng::with_seed(19);
        for round in 0..100 {
            let sizes: Vec<usize> = (0..rng.usize(1..4))
                .map(|_| [0, 7, min - 2, min, min + rng.usize(0..40_000)][rng.usize(0..5)])
                .collect();
            let mut body = String::from("{\"images\":[");
            let mut spans = Vec::new();
            for (i, len) in sizes.iter().enumerate() {
                if i > 0 {
                    body.push(',');
                }
                let start = body.len();
                body.push('"');
                body.extend((0..*len).map(|_| ['Q', 'x', '+', '/', '9'][rng.usize(0..5)]));
                body.push('"');
                spans.push(start..body.len());
            }
            body.push_str("]}");
            let source = Bytes::from(body);
            let text = std::str::from_utf8(&source).unwrap();
            let mimes = [Some("image/png"), Some("image/webp"), None, Some("text/plain")];
            let images: Vec<AnswerImage<'_>> = spans
                .iter()
                .map(|r| AnswerImage {
                    b64: &text[r.clone()],
                    mime: mimes[round % 4],
                })
                .collect();
            let usage = (round % 2 == 0).then(|| json!({"total_tokens": round}));
            let answer =
                write_images_response(std::slice::from_ref(&source), &images, usage.clone(), 5, &cx()).unwrap();
            let mut copied = Vec::new();
            write_answer(&mut copied, &images, usage, 5, &cx()).unwrap();
            assert_eq!(answer.to_bytes(), copied);
            let long: usize = spans.iter().map(|r| r.len()).filter(|l| *l >= min).sum();
            assert_eq!(answer.shared_len(), long);
            serde_json::from_slice::<Value>(&copied).unwrap();
        }
    }

    #[test]
    fn images_response_copies_base64_once() {
        let images = [
            AnswerImage {
                b64: "\"QUJD\"",
                mime: Some("image/png"),
            },
            AnswerImage {
                b64: "\"REVG\"",
                mime: None,
            },
        ];
        let out = write_images_response(&[], &images, None, 7, &cx()).unwrap().to_bytes();
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
