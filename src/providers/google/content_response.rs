//! `GenerateContentResponse` → the unified answer, whole ([`convert_generate_content`]) or as
//! a stream ([`GenerateContentStream`]); shared by kind `gemini` and Vertex AI Gemini models.
//!
//! The JSON is read into borrowing structs: each image's base64 stays a [`RawValue`] slice of
//! the provider's body, and the unified answer shares it with that body (never copied).

use super::google_error;
use crate::codec::sse::SseEvent;
use crate::error::GatewayError;
use crate::providers::kernel::errors::no_image_error;
use crate::providers::kernel::unified::{output_format, write_images_response, zero_usage, AnswerImage};
use crate::providers::stream::StreamContext;
use crate::providers::{ResponseContext, StreamTranslator, UnifiedAnswer, UpstreamResponse};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};
use std::borrow::Cow;

/// One `GenerateContentResponse` (a whole answer, or one chunk of a stream).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct GenerateContentResponse<'a> {
    #[serde(borrow, default)]
    candidates: Vec<Candidate<'a>>,
    #[serde(borrow, default, alias = "prompt_feedback")]
    prompt_feedback: Option<PromptFeedback<'a>>,
    #[serde(default, alias = "usage_metadata")]
    usage_metadata: Option<UsageMetadata>,
    /// An error reported inside a stream (`{"error":{…}}`).
    #[serde(borrow, default)]
    error: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Candidate<'a> {
    #[serde(borrow, default)]
    content: Option<Content<'a>>,
    #[serde(borrow, default, alias = "finish_reason")]
    finish_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Deserialize)]
struct Content<'a> {
    #[serde(borrow, default)]
    parts: Vec<Part<'a>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Part<'a> {
    #[serde(borrow, default, alias = "inline_data")]
    inline_data: Option<Blob<'a>>,
    #[serde(default)]
    thought: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Blob<'a> {
    #[serde(borrow, default, alias = "mime_type")]
    mime_type: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct PromptFeedback<'a> {
    #[serde(borrow, default, alias = "block_reason")]
    block_reason: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct UsageMetadata {
    #[serde(default, alias = "prompt_token_count")]
    prompt_token_count: u64,
    #[serde(default, alias = "candidates_token_count")]
    candidates_token_count: u64,
    #[serde(default, alias = "total_token_count")]
    total_token_count: Option<u64>,
    #[serde(default, alias = "prompt_tokens_details")]
    prompt_tokens_details: Vec<ModalityTokenCount>,
    #[serde(default, alias = "candidates_tokens_details")]
    candidates_tokens_details: Vec<ModalityTokenCount>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ModalityTokenCount {
    #[serde(default)]
    modality: String,
    #[serde(default, alias = "token_count")]
    token_count: u64,
}

impl UsageMetadata {
    /// OpenAI's usage object: input ← prompt, output ← candidates, details by modality.
    fn to_openai(&self) -> Value {
        let by = |details: &[ModalityTokenCount], modality: &str| -> u64 {
            details
                .iter()
                .filter(|d| d.modality == modality)
                .map(|d| d.token_count)
                .sum()
        };
        json!({
            "total_tokens": self.total_token_count.unwrap_or(self.prompt_token_count + self.candidates_token_count),
            "input_tokens": self.prompt_token_count,
            "output_tokens": self.candidates_token_count,
            "input_tokens_details": {
                "text_tokens": by(&self.prompt_tokens_details, "TEXT"),
                "image_tokens": by(&self.prompt_tokens_details, "IMAGE"),
            },
            "output_tokens_details": {
                "text_tokens": by(&self.candidates_tokens_details, "TEXT"),
                "image_tokens": by(&self.candidates_tokens_details, "IMAGE"),
            },
        })
    }
}

/// A `finishReason` that says the candidate ended normally.
fn finished_normally(reason: &str) -> bool {
    matches!(reason, "STOP" | "FINISH_REASON_UNSPECIFIED")
}

impl<'a> GenerateContentResponse<'a> {
    /// Every final (non-thought) image of every candidate, in order. `Err` (502) when an
    /// image's `data` is not a JSON string.
    fn images(&self, provider: &str) -> Result<Vec<AnswerImage<'_>>, GatewayError> {
        let mut out = Vec::new();
        let parts = self
            .candidates
            .iter()
            .filter_map(|c| c.content.as_ref())
            .flat_map(|c| c.parts.iter())
            .filter(|p| p.thought != Some(true));
        for blob in parts.filter_map(|p| p.inline_data.as_ref()) {
            let mime = blob.mime_type.as_deref();
            if mime.is_some_and(|m| !m.starts_with("image/")) {
                continue;
            }
            let Some(b64) = blob.data else { continue };
            if !b64.get().starts_with('"') {
                return Err(GatewayError::UpstreamProtocol {
                    provider: provider.to_string(),
                    detail: "an inlineData.data is not a string".into(),
                });
            }
            out.push(AnswerImage { b64: b64.get(), mime });
        }
        Ok(out)
    }

    /// Why the provider sent no image, if it said: the prompt's block reason, or a candidate's
    /// `finishReason` other than `STOP`.
    fn no_image_reason(&self) -> Option<String> {
        if let Some(block) = self.prompt_feedback.as_ref().and_then(|f| f.block_reason.as_deref()) {
            return Some(format!("the prompt was blocked ({block})"));
        }
        self.candidates
            .iter()
            .filter_map(|c| c.finish_reason.as_deref())
            .find(|r| !finished_normally(r))
            .map(|r| format!("finishReason {r}"))
    }
}

/// An error object sent inside a 2xx body or a stream chunk, as a provider error (its status
/// from `error.code`, else 502).
fn embedded_error(provider: &str, body: &str, error: &RawValue) -> GatewayError {
    let status = serde_json::from_str::<Value>(error.get())
        .ok()
        .and_then(|e| e.get("code").and_then(Value::as_u64))
        .and_then(|c| u16::try_from(c).ok())
        .filter(|c| (400..600).contains(c))
        .unwrap_or(502);
    google_error(
        provider,
        &UpstreamResponse {
            retry_after: None,
            status,
            content_type: Some("application/json".into()),
            body: Bytes::copy_from_slice(body.as_bytes()),
        },
    )
}

/// Parses a whole answer or a chunk; `Err` (502) when it is not a `GenerateContentResponse`,
/// or the provider error it carries.
fn parse<'a>(provider: &str, body: &'a str) -> Result<GenerateContentResponse<'a>, GatewayError> {
    let doc: GenerateContentResponse<'a> = serde_json::from_str(body).map_err(|e| GatewayError::UpstreamProtocol {
        provider: provider.to_string(),
        detail: format!("the answer is not a GenerateContentResponse ({e})"),
    })?;
    match doc.error {
        Some(error) => Err(embedded_error(provider, body, error)),
        None => Ok(doc),
    }
}

/// Converts Gemini's complete answer, when it has arrived: a success into the unified JSON
/// (`data[i].b64_json` per final image, OpenAI usage), an error status into the provider's
/// error ([`google_error`]). A success without images is a 400 `moderation_blocked` when the
/// answer gives a reason ([`no_image_error`]), else a 502.
pub fn convert_generate_content(
    resp: &UpstreamResponse,
    cx: &ResponseContext<'_>,
) -> Result<UnifiedAnswer, GatewayError> {
    if !(200..300).contains(&resp.status) {
        return Err(google_error(cx.provider, resp));
    }
    let body = std::str::from_utf8(&resp.body).map_err(|e| GatewayError::UpstreamProtocol {
        provider: cx.provider.to_string(),
        detail: format!("the answer is not UTF-8 ({e})"),
    })?;
    let doc = parse(cx.provider, body)?;
    let images = doc.images(cx.provider)?;
    if images.is_empty() {
        return Err(match doc.no_image_reason() {
            Some(why) => no_image_error(cx.provider, &why),
            None => GatewayError::UpstreamProtocol {
                provider: cx.provider.to_string(),
                detail: "the answer has no image and gives no reason".into(),
            },
        });
    }
    let usage = doc.usage_metadata.as_ref().map(UsageMetadata::to_openai);
    write_images_response(std::slice::from_ref(&resp.body), &images, usage, cx.created, cx)
}

/// Turns a `:streamGenerateContent?alt=sse` stream into OpenAI-shaped events, one `data:`
/// chunk at a time: one `image_edit.completed` per final image part (thought images are
/// skipped; Gemini sends no partial images). Usage: Gemini's `usageMetadata` is cumulative, so
/// the latest one seen goes on the `n`-th (last) image event and zeros on the others, as for
/// synthesized streams, so totals add up. `size` is `auto` (the event reports no dimensions).
#[derive(Debug)]
pub struct GenerateContentStream {
    provider: String,
    images: u32,
    completed: u32,
    created: u64,
    usage: Option<Value>,
}

impl GenerateContentStream {
    /// A translator for one stream request described by `cx`.
    pub fn new(cx: &StreamContext) -> Self {
        GenerateContentStream {
            provider: cx.provider.clone(),
            images: cx.images.max(1),
            completed: 0,
            created: cx.created,
            usage: None,
        }
    }
}

impl StreamTranslator for GenerateContentStream {
    /// One chunk in. `Err` for a chunk that carries `{"error":…}` (a provider error keeping
    /// Google's message and status), for a chunk without images that gives a reason (a
    /// safety block: 400 `moderation_blocked`), or for one that is not JSON (502).
    fn event(&mut self, ev: &SseEvent, out: &mut Vec<SseEvent>) -> Result<(), GatewayError> {
        let data = ev.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let doc = parse(&self.provider, data)?;
        if let Some(usage) = &doc.usage_metadata {
            self.usage = Some(usage.to_openai());
        }
        let images = doc.images(&self.provider)?;
        if images.is_empty() {
            return match doc.no_image_reason() {
                Some(why) => Err(no_image_error(&self.provider, &why)),
                None => Ok(()),
            };
        }
        let internal = |e: serde_json::Error| GatewayError::Internal(e.to_string());
        for image in images {
            self.completed += 1;
            let usage = match &self.usage {
                Some(u) if self.completed >= self.images => u.clone(),
                _ => zero_usage(),
            };
            let format = image.mime.and_then(output_format).unwrap_or("png");
            let b64 = image.b64;
            let mut event = String::with_capacity(b64.len() + 512);
            event.push_str(r#"{"type":"image_edit.completed","b64_json":"#);
            event.push_str(b64);
            event.push_str(&format!(
                r#","created_at":{},"size":"auto","quality":"auto","background":"auto","output_format":"{format}","usage":{}}}"#,
                self.created,
                serde_json::to_string(&usage).map_err(internal)?
            ));
            out.push(SseEvent {
                event: Some("image_edit.completed".into()),
                data: event,
                ..Default::default()
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::sse::SseDecoder;
    use crate::config::ProviderKind;
    use crate::providers::stream::{Framing, Progress, StreamPipeline};
    use std::time::Instant;

    fn cx() -> ResponseContext<'static> {
        ResponseContext {
            provider: "gem",
            model_requested: "gemini-2.5-flash-image",
            model_deployment: "gemini-2.5-flash-image",
            latency_ms: 3,
            num_input_images: 1,
            created: crate::providers::test_support::CLOCK_SECS,
        }
    }

    use crate::providers::test_support::json_text as resp;

    fn convert(status: u16, body: &str) -> Result<Value, GatewayError> {
        convert_generate_content(&resp(status, body), &cx()).map(|b| serde_json::from_slice(&b.to_bytes()).unwrap())
    }

    const ANSWER: &str = r#"{"candidates":[{"content":{"role":"model","parts":[
        {"text":"Here you go"},
        {"inlineData":{"mimeType":"image/png","data":"VEhPVUdIVA=="},"thought":true},
        {"inlineData":{"mimeType":"image/png","data":"SU1BR0UtMA=="}}]},"finishReason":"STOP","index":0},
      {"content":{"role":"model","parts":[{"inline_data":{"mime_type":"image/png","data":"SU1BR0UtMQ=="}}]},"finishReason":"STOP","index":1}],
     "usageMetadata":{"promptTokenCount":265,"candidatesTokenCount":1290,"totalTokenCount":1555,
        "promptTokensDetails":[{"modality":"TEXT","tokenCount":7},{"modality":"IMAGE","tokenCount":258}],
        "candidatesTokensDetails":[{"modality":"IMAGE","tokenCount":1290}],"thoughtsTokenCount":0},
     "modelVersion":"gemini-2.5-flash-image","responseId":"abc"}"#;

    #[test]
    fn final_images_of_every_candidate_with_usage() {
        let v = convert(200, ANSWER).unwrap();
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2, "the thought image is skipped");
        assert_eq!(data[0]["b64_json"], "SU1BR0UtMA==");
        assert_eq!(data[1]["b64_json"], "SU1BR0UtMQ==");
        assert_eq!(data[1]["index"], 1);
        assert_eq!(v["output_format"], "png");
        assert_eq!(
            v["usage"],
            json!({"total_tokens":1555,"input_tokens":265,"output_tokens":1290,
                   "input_tokens_details":{"text_tokens":7,"image_tokens":258},
                   "output_tokens_details":{"text_tokens":0,"image_tokens":1290}})
        );
        assert_eq!(v["extra_fields"]["provider"], "gem");
        // No usage: zeros.
        let v = convert(
            200,
            r#"{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/jpeg","data":"QQ=="}}]}}]}"#,
        )
        .unwrap();
        assert_eq!(v["usage"]["total_tokens"], 0);
        assert_eq!(v["output_format"], "jpeg");
    }

    /// A large image goes into the unified answer as the provider's own bytes (shared, not
    /// copied), and the answer is byte for byte the one written into one buffer.
    #[test]
    fn large_images_are_shared_with_the_answer() {
        let image = "iVBORw0KGgo".repeat(20_000);
        let body = format!(
            r#"{{"candidates":[{{"content":{{"parts":[{{"inlineData":{{"mimeType":"image/png","data":"{image}"}}}}]}},"finishReason":"STOP"}}]}}"#
        );
        let response = resp(200, &body);
        let answer = convert_generate_content(&response, &cx()).unwrap();
        let quoted = image.len() + 2;
        assert_eq!(answer.shared_len(), quoted);
        let at = body.find(&image).unwrap() - 1;
        let shared = answer.pieces().find(|p| p.len() == quoted).unwrap();
        assert_eq!(shared.as_ptr(), response.body[at..].as_ptr(), "the body's own memory");
        let v: Value = serde_json::from_slice(&answer.to_bytes()).unwrap();
        assert_eq!(v["data"][0]["b64_json"], image.as_str());
        assert_eq!(v["output_format"], "png");
    }

    #[test]
    fn no_image_with_a_reason_is_moderation_blocked() {
        for (body, reason) in [
            (
                r#"{"candidates":[{"finishReason":"IMAGE_SAFETY","index":0}]}"#,
                "IMAGE_SAFETY",
            ),
            (
                r#"{"candidates":[{"content":{"parts":[{"text":"no"}]},"finishReason":"NO_IMAGE"}]}"#,
                "NO_IMAGE",
            ),
            (
                r#"{"candidates":[{"finishReason":"PROHIBITED_CONTENT"}]}"#,
                "PROHIBITED_CONTENT",
            ),
            (r#"{"promptFeedback":{"blockReason":"SAFETY"}}"#, "SAFETY"),
        ] {
            let e = convert(200, body).unwrap_err();
            assert_eq!(e.status(), 400, "{body}");
            let j = e.to_json(&Default::default());
            assert_eq!(j["error"]["code"], "moderation_blocked");
            assert!(j["error"]["message"].as_str().unwrap().contains(reason), "{j}");
        }
        // No image and no reason: the provider broke the protocol.
        for body in [
            r#"{"candidates":[{"content":{"parts":[{"text":"only words"}]},"finishReason":"STOP"}]}"#,
            r#"{}"#,
            r#"{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":"VA=="},"thought":true}]}}]}"#,
        ] {
            assert_eq!(convert(200, body).unwrap_err().status(), 502, "{body}");
        }
    }

    #[test]
    fn google_errors_and_malformed_answers() {
        let e = convert(
            429,
            r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#,
        )
        .unwrap_err();
        assert_eq!(e.status(), 429);
        let j = e.to_json(&Default::default());
        assert_eq!(j["error"]["message"], "Resource has been exhausted (e.g. check quota).");
        assert_eq!(j["error"]["code"], "RESOURCE_EXHAUSTED");
        for body in [
            "not json",
            "[1]",
            r#"{"candidates":{}}"#,
            r#"{"candidates":[{"content":{"parts":[{"inlineData":{"mimeType":"image/png","data":12}}]}}]}"#,
        ] {
            assert_eq!(convert(200, body).unwrap_err().status(), 502, "{body}");
        }
    }

    fn stream_cx(images: u32) -> StreamContext {
        StreamContext {
            provider: "gem".into(),
            model_requested: "gemini-2.5-flash-image".into(),
            model_deployment: "gemini-2.5-flash-image".into(),
            request_id: "r".into(),
            images,
            start: Instant::now(),
            created: crate::providers::test_support::CLOCK_SECS,
            framing: Framing::Bifrost,
            kind: ProviderKind::Gemini,
        }
    }

    fn chunk(data: &str) -> SseEvent {
        SseEvent {
            data: data.into(),
            ..Default::default()
        }
    }

    const TEXT_CHUNK: &str = r#"{"candidates":[{"content":{"role":"model","parts":[{"text":"Here you go"}]},"index":0}],"usageMetadata":{"promptTokenCount":265,"totalTokenCount":265},"modelVersion":"gemini-2.5-flash-image","responseId":"abc123"}"#;

    fn image_chunk(index: u32, b64: &str, output: u64) -> String {
        format!(
            r#"{{"candidates":[{{"content":{{"role":"model","parts":[{{"inlineData":{{"mimeType":"image/png","data":"{b64}"}}}}]}},"finishReason":"STOP","index":{index}}}],"usageMetadata":{{"promptTokenCount":265,"candidatesTokenCount":{output},"totalTokenCount":{},"promptTokensDetails":[{{"modality":"IMAGE","tokenCount":258}}],"candidatesTokensDetails":[{{"modality":"IMAGE","tokenCount":{output}}}]}}}}"#,
            265 + output
        )
    }

    #[test]
    fn translator_emits_one_completed_event_per_final_image() {
        let mut t = GenerateContentStream::new(&stream_cx(2));
        let mut out = Vec::new();
        t.event(&chunk(TEXT_CHUNK), &mut out).unwrap();
        t.event(&chunk(""), &mut out).unwrap();
        assert!(out.is_empty(), "text-only chunks give no event");
        t.event(&chunk(&image_chunk(0, "SU1HMA==", 1290)), &mut out).unwrap();
        t.event(&chunk(&image_chunk(1, "SU1HMQ==", 2580)), &mut out).unwrap();
        assert_eq!(out.len(), 2);
        let first: Value = serde_json::from_str(&out[0].data).unwrap();
        let last: Value = serde_json::from_str(&out[1].data).unwrap();
        assert_eq!(out[0].event.as_deref(), Some("image_edit.completed"));
        assert_eq!(first["type"], "image_edit.completed");
        assert_eq!(first["b64_json"], "SU1HMA==");
        assert_eq!(first["size"], "auto");
        assert_eq!(first["quality"], "auto");
        assert_eq!(first["background"], "auto");
        assert_eq!(first["output_format"], "png");
        assert!(first["created_at"].as_u64().unwrap() > 0);
        assert_eq!(first["usage"], zero_usage(), "usage goes on the last image only");
        assert_eq!(last["b64_json"], "SU1HMQ==");
        assert_eq!(last["usage"]["output_tokens"], 2580);
        assert_eq!(last["usage"]["total_tokens"], 2845);
        assert_eq!(last["usage"]["input_tokens_details"]["image_tokens"], 258);
    }

    #[test]
    fn translator_errors() {
        let mut out = Vec::new();
        let e = GenerateContentStream::new(&stream_cx(1))
            .event(
                &chunk(r#"{"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}"#),
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e.status(), 503);
        assert_eq!(
            e.to_json(&Default::default())["error"]["message"],
            "The model is overloaded."
        );
        let e = GenerateContentStream::new(&stream_cx(1))
            .event(
                &chunk(r#"{"candidates":[{"finishReason":"IMAGE_SAFETY","index":0}]}"#),
                &mut out,
            )
            .unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.to_json(&Default::default())["error"]["code"], "moderation_blocked");
        let e = GenerateContentStream::new(&stream_cx(1))
            .event(&chunk("{oops"), &mut out)
            .unwrap_err();
        assert_eq!(e.status(), 502);
        assert!(out.is_empty());
    }

    /// Gemini's framing: `data: ` + JSON + CRLF CRLF, no event names, no terminator.
    fn gemini_stream(chunks: &[&str]) -> Vec<u8> {
        chunks
            .iter()
            .flat_map(|c| format!("data: {c}\r\n\r\n").into_bytes())
            .collect()
    }

    /// Runs the whole pipeline over `input` split at `split`; the client's events without
    /// `extra_fields` (whose latency varies).
    fn pipeline(input: &[u8], split: usize, images: u32) -> Result<Vec<(Option<String>, Value)>, GatewayError> {
        let mut p = StreamPipeline::new(stream_cx(images));
        let mut out = Vec::new();
        let (a, b) = input.split_at(split);
        let mut done = false;
        for part in [a, b] {
            if p.feed(part, &mut out)? == Progress::Done {
                done = true;
                break;
            }
        }
        if !done {
            p.finish(&mut out)?;
        }
        let mut d = SseDecoder::new();
        let mut evs = Vec::new();
        d.feed(&out, &mut evs).unwrap();
        Ok(evs
            .into_iter()
            .map(|e| {
                let mut v: Value = serde_json::from_str(&e.data).unwrap();
                if let Some(o) = v.as_object_mut() {
                    o.remove("extra_fields");
                }
                (e.event, v)
            })
            .collect())
    }

    #[test]
    fn pipeline_gives_the_same_events_at_every_split() {
        let one = image_chunk(0, "SU1HMA==", 1290);
        let two = image_chunk(1, "SU1HMQ==", 2580);
        let input = gemini_stream(&[TEXT_CHUNK, &one, &two]);
        let whole = pipeline(&input, input.len(), 2).unwrap();
        assert_eq!(whole.len(), 2);
        for (i, (name, v)) in whole.iter().enumerate() {
            assert_eq!(name.as_deref(), Some("image_edit.completed"));
            assert_eq!(v["sequence_number"], i as u64);
        }
        assert_eq!(whole[1].1["usage"]["output_tokens"], 2580);
        for split in 0..=input.len() {
            let got = pipeline(&input, split, 2).unwrap();
            let strip_time = |evs: &[(Option<String>, Value)]| -> Vec<(Option<String>, Value)> {
                evs.iter()
                    .map(|(n, v)| {
                        let mut v = v.clone();
                        v["created_at"] = json!(0);
                        (n.clone(), v)
                    })
                    .collect()
            };
            assert_eq!(strip_time(&got), strip_time(&whole), "split at {split}");
        }
    }

    #[test]
    fn pipeline_reports_short_and_blocked_streams() {
        let one = image_chunk(0, "SU1HMA==", 1290);
        let input = gemini_stream(&[TEXT_CHUNK, &one]);
        // n=2 but one image: an in-band error after the first event.
        let evs = pipeline(&input, 7, 2).unwrap();
        assert_eq!(evs.len(), 2);
        assert_eq!(evs[1].0.as_deref(), Some("error"));
        // Blocked before any image: an HTTP error.
        let input = gemini_stream(&[
            TEXT_CHUNK,
            r#"{"candidates":[{"finishReason":"IMAGE_SAFETY","index":0}]}"#,
        ]);
        let e = pipeline(&input, 3, 1).unwrap_err();
        assert_eq!(e.status(), 400);
    }
}
