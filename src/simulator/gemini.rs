//! The simulator's Gemini API: `POST …/models/{model}:generateContent` and
//! `…:streamGenerateContent?alt=sse`, strict like Gemini.
//!
//! - Auth: an `x-goog-api-key` header or a `key=` query parameter (any non-empty value), or,
//!   on Vertex AI's paths (`…/projects/{p}/locations/{l}/publishers/google/models/…`), an
//!   `Authorization: Bearer` token; else 403 `PERMISSION_DENIED`. Errors use Google's envelope
//!   (`{"error":{"code","message","status"}}`).
//! - Body: a JSON `GenerateContentRequest`. Both spellings of the keys (`inlineData` /
//!   `inline_data`, `mimeType` / `mime_type`) and both base64 alphabets (standard, URL-safe;
//!   padded or not) are accepted, as Google does. Anything malformed is a 400
//!   `INVALID_ARGUMENT`: no `contents`, no image, undecodable base64, bytes that are not a
//!   PNG/JPEG/WebP (or a corrupt PNG), a `candidateCount` outside 1..=8, an unknown
//!   `aspectRatio` or `imageSize`, `responseModalities` without `IMAGE`, or a stream request
//!   without `alt=sse`.
//! - Edit: the same deterministic edit as the OpenAI simulator ([`simulate_edit`] without mask,
//!   the prompt being the text parts joined), on the first image, `candidateCount` times (image
//!   `i` painted with [`crate::imaging::paint_colour`]`(prompt, i)`). Models named `gemini-3…`
//!   also send a thought image (the unedited input, `"thought": true`) first, as Gemini 3 does.
//! - Answer: a `GenerateContentResponse` with one candidate per image and `usageMetadata`
//!   (prompt: text tokens + 258 per input image; candidates: 1290 per image). Streamed, one
//!   `data: {…}\r\n\r\n` chunk with the text part and the prompt usage, then one chunk per image
//!   with the cumulative usage.
//!
//! Prompt hooks: `simulate-error:<status>` answers that status with Google's envelope;
//! `simulate-image-safety` answers 200 with `finishReason: IMAGE_SAFETY` and no image.

use super::render::{self, Fault, Marks, Paint, Picture, RenderPlace};
use super::stream::PendingFrame;
use super::{simulated_error_status, unix_now, Blob, SimAnswer, SimRequest, SimResponse, SimStream, StreamSettings};
use crate::imaging::{sniff, ImageKind};
use base64::alphabet;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;
use serde_json::{json, Value};

/// Aspect ratios and image sizes Gemini's `imageConfig` accepts.
const ASPECT_RATIOS: [&str; 14] = [
    "1:1", "1:4", "4:1", "1:8", "8:1", "2:3", "3:2", "3:4", "4:3", "4:5", "5:4", "9:16", "16:9", "21:9",
];
const IMAGE_SIZES: [&str; 4] = ["512", "1K", "2K", "4K"];

/// Tokens the simulator counts per input image and per output image.
const INPUT_IMAGE_TOKENS: u64 = 258;
const OUTPUT_IMAGE_TOKENS: u64 = 1290;

/// Google's canonical status name for an HTTP status.
fn status_name(status: u16) -> &'static str {
    match status {
        400 => "INVALID_ARGUMENT",
        401 => "UNAUTHENTICATED",
        403 => "PERMISSION_DENIED",
        404 => "NOT_FOUND",
        409 => "ABORTED",
        429 => "RESOURCE_EXHAUSTED",
        499 => "CANCELLED",
        501 => "NOT_IMPLEMENTED",
        503 => "UNAVAILABLE",
        504 => "DEADLINE_EXCEEDED",
        s if s < 500 => "FAILED_PRECONDITION",
        _ => "INTERNAL",
    }
}

/// An answer in Google's error envelope.
fn google_error(status: u16, message: &str) -> SimResponse {
    SimResponse::json(status, &error_json(status, message))
}

/// Google's error envelope.
fn error_json(status: u16, message: &str) -> Value {
    json!({"error": {"code": status, "message": message, "status": status_name(status)}})
}

/// A 400 `INVALID_ARGUMENT`.
fn invalid(message: &str) -> SimResponse {
    google_error(400, message)
}

/// A request that passed every check.
struct Request {
    model: String,
    prompt: String,
    /// The first image (its header was read).
    image: Blob,
    input_images: u64,
    candidates: u32,
    stream: bool,
    place: RenderPlace,
}

/// Decodes base64 in either alphabet, padded or not.
fn decode_base64(data: &str) -> Option<Vec<u8>> {
    let config = GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent);
    let alphabet = if data.contains(['-', '_']) {
        &alphabet::URL_SAFE
    } else {
        &alphabet::STANDARD
    };
    GeneralPurpose::new(alphabet, config).decode(data).ok()
}

/// The value of `a` or, if absent, `b` in `obj`.
fn either<'v>(obj: &'v Value, a: &str, b: &str) -> Option<&'v Value> {
    obj.get(a).or_else(|| obj.get(b))
}

/// Checks auth, the path and the body; `Err` is the answer to send instead.
fn read_request(req: &SimRequest) -> Result<Request, SimResponse> {
    let query_key = req
        .query
        .as_deref()
        .unwrap_or_default()
        .split('&')
        .any(|p| p.strip_prefix("key=").is_some_and(|k| !k.is_empty()));
    let header_key = req.header("x-goog-api-key").is_some_and(|k| !k.trim().is_empty());
    let vertex_token = req.path.contains("/projects/")
        && req
            .header("authorization")
            .and_then(|a| a.strip_prefix("Bearer "))
            .is_some_and(|t| !t.trim().is_empty());
    if !header_key && !query_key && !vertex_token {
        return Err(google_error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity). Please use API Key or other form of API consumer identity to call this API.",
        ));
    }
    let (prefix, stream) = match req.path.rsplit_once(':') {
        Some((prefix, "generateContent")) => (prefix, false),
        Some((prefix, "streamGenerateContent")) => (prefix, true),
        _ => return Err(google_error(404, "not found")),
    };
    let model = prefix
        .rsplit_once("/models/")
        .map(|(_, m)| m.to_string())
        .filter(|m| !m.is_empty() && !m.contains('/'))
        .ok_or_else(|| google_error(404, "expected …/models/{model}:generateContent"))?;
    if stream
        && !req
            .query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .any(|p| p == "alt=sse")
    {
        return Err(invalid("the simulator streams only with alt=sse"));
    }
    let body: Value = serde_json::from_slice(req.body.bytes())
        .map_err(|e| invalid(&format!("Invalid JSON payload received. {e}")))?;
    let parts: Vec<&Value> = body
        .get("contents")
        .and_then(Value::as_array)
        .filter(|c| !c.is_empty())
        .ok_or_else(|| invalid("* GenerateContentRequest.contents: contents is not specified"))?
        .iter()
        .flat_map(|c| c.get("parts").and_then(Value::as_array).into_iter().flatten())
        .collect();
    let mut prompt = Vec::new();
    let mut images = Vec::new();
    for part in parts {
        if let Some(text) = part.get("text").and_then(Value::as_str) {
            prompt.push(text);
        } else if let Some(blob) = either(part, "inlineData", "inline_data") {
            let mime = either(blob, "mimeType", "mime_type")
                .and_then(Value::as_str)
                .unwrap_or_default();
            if !mime.starts_with("image/") {
                return Err(invalid(&format!("Unsupported MIME type: {mime}")));
            }
            let data = blob
                .get("data")
                .and_then(Value::as_str)
                .and_then(|text| req.base64_blob(text, decode_base64))
                .ok_or_else(|| {
                    invalid(
                        "Invalid value at 'contents[0].parts[0].inline_data.data' (TYPE_BYTES), Base64 decoding failed",
                    )
                })?;
            if sniff(&data.head(ImageKind::SNIFF_LEN)).is_none() {
                return Err(invalid("Unable to process input image: not a PNG, JPEG or WebP image"));
            }
            images.push(data);
        } else {
            return Err(invalid("a part has neither text nor inlineData"));
        }
    }
    let image = images
        .first()
        .cloned()
        .ok_or_else(|| invalid("the simulator needs an image to edit"))?;
    render::inspect(&image, req.place.max_image_pixels).map_err(|e| fault_response(Fault::Image(e)))?;
    let config = body.get("generationConfig").cloned().unwrap_or(Value::Null);
    let candidates = match config.get("candidateCount") {
        None => 1,
        Some(v) => v
            .as_u64()
            .filter(|n| (1..=8).contains(n))
            .ok_or_else(|| invalid("candidateCount must be between 1 and 8"))? as u32,
    };
    if let Some(modalities) = config.get("responseModalities") {
        if !modalities.as_array().is_some_and(|m| m.iter().any(|v| v == "IMAGE")) {
            return Err(invalid("responseModalities must include IMAGE for an image edit"));
        }
    }
    if let Some(image_config) = config.get("imageConfig") {
        if let Some(ratio) = image_config.get("aspectRatio") {
            if !ratio.as_str().is_some_and(|r| ASPECT_RATIOS.contains(&r)) {
                return Err(invalid(&format!("Unsupported aspect ratio: {ratio}")));
            }
        }
        if let Some(size) = image_config.get("imageSize") {
            if !size.as_str().is_some_and(|s| IMAGE_SIZES.contains(&s)) {
                return Err(invalid(&format!("Unsupported image size: {size}")));
            }
        }
    }
    Ok(Request {
        model,
        prompt: prompt.join("\n"),
        image,
        input_images: images.len() as u64,
        candidates,
        stream,
        place: req.place.clone(),
    })
}

/// Google's answer to an image that cannot be edited (or an answer that cannot be written).
fn fault_response(fault: Fault) -> SimResponse {
    match fault {
        Fault::Image(e) => invalid(&format!("Unable to process input image: {e}")),
        other => google_error(500, &other.to_string()),
    }
}

impl Request {
    /// `usageMetadata` after `images` output images.
    fn usage(&self, images: u32) -> Value {
        let text = (self.prompt.len() as u64).div_ceil(4);
        let image = INPUT_IMAGE_TOKENS * self.input_images;
        let output = OUTPUT_IMAGE_TOKENS * u64::from(images);
        let mut usage = json!({
            "promptTokenCount": text + image,
            "totalTokenCount": text + image + output,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": text}, {"modality": "IMAGE", "tokenCount": image}],
        });
        if images > 0 {
            usage["candidatesTokenCount"] = json!(output);
            usage["candidatesTokensDetails"] = json!([{"modality": "IMAGE", "tokenCount": output}]);
        }
        usage
    }

    /// The parts of candidate `index`: a thought image first for Gemini 3 models, then the
    /// edited image; their pictures are added to `pictures` (the parts hold their slots).
    fn parts(&self, index: u32, pictures: &mut Vec<Picture>) -> Vec<Value> {
        let mut parts = Vec::new();
        if self.model.starts_with("gemini-3") {
            let mut thought = Picture::edit(self.image.clone(), Marks::Blend, &self.prompt, index);
            thought.paint = Paint::Input;
            parts.push(
                json!({"inlineData": {"mimeType": "image/png", "data": render::slot(pictures.len())}, "thought": true}),
            );
            pictures.push(thought);
        }
        parts.push(json!({"inlineData": {"mimeType": "image/png", "data": render::slot(pictures.len())}}));
        pictures.push(Picture::edit(self.image.clone(), Marks::Blend, &self.prompt, index));
        parts
    }

    /// A `GenerateContentResponse` around `candidates` and `usage`.
    fn response(&self, candidates: Vec<Value>, usage: Value) -> Value {
        json!({
            "candidates": candidates,
            "usageMetadata": usage,
            "modelVersion": self.model,
            "responseId": format!("sim-{}", unix_now()),
        })
    }
}

/// Answers `…/models/{model}:generateContent` and `…:streamGenerateContent?alt=sse`.
pub(super) fn handle(req: &SimRequest, settings: &StreamSettings) -> SimAnswer {
    let request = match read_request(req) {
        Ok(r) => r,
        Err(resp) => return SimAnswer::Whole(resp),
    };
    if let Some(status) = simulated_error_status(&request.prompt) {
        return SimAnswer::Whole(google_error(status, &format!("simulated error {status}")));
    }
    if request.prompt == "simulate-image-safety" {
        let blocked = request.response(
            vec![json!({"finishReason": "IMAGE_SAFETY", "index": 0})],
            request.usage(0),
        );
        return if request.stream {
            request.stream_of(vec![PendingFrame::gemini(blocked, Vec::new())], settings)
        } else {
            SimAnswer::Whole(SimResponse::json(200, &blocked))
        };
    }
    answer(&request, settings)
}

/// The edited images, whole (rendered into the body) or as a stream of chunks (each rendered
/// when its turn comes).
fn answer(request: &Request, settings: &StreamSettings) -> SimAnswer {
    let text = json!({"text": "Here is the edited image."});
    if !request.stream {
        let mut pictures = Vec::new();
        let mut candidates = Vec::new();
        for i in 0..request.candidates {
            let mut parts = vec![text.clone()];
            parts.extend(request.parts(i, &mut pictures));
            candidates.push(json!({
                "content": {"role": "model", "parts": parts},
                "finishReason": "STOP",
                "index": i,
            }));
        }
        let doc = request.response(candidates, request.usage(request.candidates));
        return SimAnswer::Whole(SimResponse::rendered(&doc, &pictures, &request.place).unwrap_or_else(fault_response));
    }
    let mut frames = vec![PendingFrame::gemini(
        request.response(
            vec![json!({"content": {"role": "model", "parts": [text]}, "index": 0})],
            request.usage(0),
        ),
        Vec::new(),
    )];
    for i in 0..request.candidates {
        let mut pictures = Vec::new();
        let candidate = json!({
            "content": {"role": "model", "parts": request.parts(i, &mut pictures)},
            "finishReason": "STOP",
            "index": i,
        });
        frames.push(PendingFrame::gemini(
            request.response(vec![candidate], request.usage(i + 1)),
            pictures,
        ));
    }
    request.stream_of(frames, settings)
}

impl Request {
    /// A stream of `frames`; one that fails to render ends it with Google's error chunk.
    fn stream_of(&self, frames: Vec<PendingFrame>, settings: &StreamSettings) -> SimAnswer {
        SimAnswer::Stream(Box::new(SimStream::new(
            (frames, None),
            settings.interval,
            self.place.clone(),
            |message| {
                let mut out = b"data: ".to_vec();
                out.extend(serde_json::to_vec(&error_json(500, message)).unwrap_or_default());
                out.extend_from_slice(b"\r\n\r\n");
                out
            },
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::sse::SseDecoder;
    use crate::imaging::{decode_png, encode_png, paint_colour, solid, Rgba};
    use bytes::Bytes;

    fn request(path: &str, query: Option<&str>, key: Option<&str>, body: &Value) -> SimRequest {
        let mut headers = http::HeaderMap::new();
        if let Some(k) = key {
            headers.insert("x-goog-api-key", k.parse().unwrap());
        }
        SimRequest::for_test(
            path.into(),
            query.map(str::to_string),
            headers,
            Bytes::from(serde_json::to_vec(body).unwrap()),
        )
    }

    fn png() -> Vec<u8> {
        encode_png(&solid(4, 3, [10, 20, 30, 255])).unwrap()
    }

    fn body(prompt: &str, data: &str, config: Value) -> Value {
        json!({"contents":[{"role":"user","parts":[
            {"inline_data":{"mime_type":"image/png","data":data}},
            {"text":prompt}]}],
            "generationConfig": config})
    }

    fn std_b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn whole(answer: SimAnswer) -> SimResponse {
        match answer {
            SimAnswer::Whole(r) => r,
            _ => panic!("expected a whole answer"),
        }
    }

    fn image_at(v: &Value) -> Rgba {
        let data = v["inlineData"]["data"].as_str().unwrap();
        decode_png(&decode_base64(data).unwrap()).unwrap()
    }

    const PATH: &str = "/v1beta/models/gemini-2.5-flash-image:generateContent";

    #[test]
    fn edits_each_candidate_with_usage() {
        let b = body(
            "paint",
            &std_b64(&png()),
            json!({"candidateCount": 2, "responseModalities": ["TEXT","IMAGE"], "imageConfig": {"aspectRatio": "4:3", "imageSize": "1K"}}),
        );
        let r = whole(handle(&request(PATH, None, Some("k"), &b), &StreamSettings::default()));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body.to_vec()));
        let v: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
        let candidates = v["candidates"].as_array().unwrap();
        assert_eq!(candidates.len(), 2);
        for (i, c) in candidates.iter().enumerate() {
            assert_eq!(c["finishReason"], "STOP");
            let img = image_at(&c["content"]["parts"][1]);
            let colour = paint_colour("paint", i as u32);
            let want: Vec<u8> = (0..3)
                .map(|k| ((u16::from([10u8, 20, 30][k]) + u16::from(colour[k])) / 2) as u8)
                .collect();
            assert_eq!(img.pixel(0, 0)[..3], want[..]);
        }
        assert_eq!(v["usageMetadata"]["candidatesTokenCount"], 2 * OUTPUT_IMAGE_TOKENS);
        assert_eq!(
            v["usageMetadata"]["promptTokensDetails"][1]["tokenCount"],
            INPUT_IMAGE_TOKENS
        );
    }

    #[test]
    fn url_safe_base64_query_key_and_thought_images() {
        // An image whose standard base64 has '+' or '/' characters.
        let mut img = solid(9, 7, [251, 255, 254, 255]);
        img.pixels[0] = 0xfb;
        let bytes = encode_png(&img).unwrap();
        let url_safe = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&bytes);
        let b = body("x", &url_safe, json!({}));
        let path = "/v1/models/gemini-3-pro-image-preview:generateContent";
        let r = whole(handle(
            &request(path, Some("key=abc"), None, &b),
            &StreamSettings::default(),
        ));
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body.to_vec()));
        let v: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
        let parts = v["candidates"][0]["content"]["parts"].as_array().unwrap();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[1]["thought"], true);
        assert_eq!(image_at(&parts[1]), img, "the thought image is the input");
        assert_ne!(image_at(&parts[2]), img);
    }

    #[test]
    fn auth_and_malformed_requests_use_googles_envelope() {
        let good = body("p", &std_b64(&png()), json!({}));
        let r = whole(handle(&request(PATH, None, None, &good), &StreamSettings::default()));
        assert_eq!(r.status, 403);
        let v: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
        assert_eq!(v["error"]["status"], "PERMISSION_DENIED");
        // A Bearer token counts on Vertex's paths only.
        let vertex_path = "/v1/projects/p/locations/l/publishers/google/models/gemini-2.5-flash-image:generateContent";
        for (path, status) in [(PATH, 403), (vertex_path, 200)] {
            let mut r = request(path, None, None, &good);
            r.headers.insert("authorization", "Bearer tok".parse().unwrap());
            assert_eq!(whole(handle(&r, &StreamSettings::default())).status, status, "{path}");
        }
        let bad_bodies = [
            json!({}),
            json!({"contents": []}),
            json!({"contents":[{"parts":[{"text":"only text"}]}]}),
            body("p", "!!!not base64!!!", json!({})),
            body("p", &std_b64(b"GIF89a not an image we take"), json!({})),
            body("p", &std_b64(b"\x89PNG\r\n\x1a\ncorrupt"), json!({})),
            body("p", &std_b64(&png()), json!({"candidateCount": 9})),
            body("p", &std_b64(&png()), json!({"imageConfig": {"aspectRatio": "7:5"}})),
            body("p", &std_b64(&png()), json!({"imageConfig": {"imageSize": "3K"}})),
            body("p", &std_b64(&png()), json!({"responseModalities": ["TEXT"]})),
        ];
        for b in bad_bodies {
            let r = whole(handle(&request(PATH, None, Some("k"), &b), &StreamSettings::default()));
            assert_eq!(r.status, 400, "{b}");
            let v: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
            assert_eq!(v["error"]["status"], "INVALID_ARGUMENT", "{b}");
            assert_eq!(v["error"]["code"], 400);
        }
        let mut not_json = request(PATH, None, Some("k"), &good);
        not_json.body = crate::simulator::SimBody::from_bytes(
            Some("application/json"),
            Bytes::from_static(b"{nope"),
            &not_json.place.spool,
        )
        .unwrap();
        assert_eq!(whole(handle(&not_json, &StreamSettings::default())).status, 400);
        // A stream without alt=sse.
        let stream_path = PATH.replace(":generateContent", ":streamGenerateContent");
        let r = whole(handle(
            &request(&stream_path, None, Some("k"), &good),
            &StreamSettings::default(),
        ));
        assert_eq!(r.status, 400);
    }

    #[test]
    fn hooks() {
        let b = body("simulate-error:429", &std_b64(&png()), json!({}));
        let r = whole(handle(&request(PATH, None, Some("k"), &b), &StreamSettings::default()));
        assert_eq!(r.status, 429);
        let v: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
        assert_eq!(v["error"]["status"], "RESOURCE_EXHAUSTED");
        let b = body("simulate-image-safety", &std_b64(&png()), json!({}));
        let r = whole(handle(&request(PATH, None, Some("k"), &b), &StreamSettings::default()));
        assert_eq!(r.status, 200);
        let v: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
        assert_eq!(v["candidates"][0]["finishReason"], "IMAGE_SAFETY");
        assert!(v["candidates"][0].get("content").is_none());
    }

    #[test]
    fn streams_one_chunk_per_image_after_a_text_chunk() {
        let b = body("s", &std_b64(&png()), json!({"candidateCount": 2}));
        let path = PATH.replace(":generateContent", ":streamGenerateContent");
        let chunks = match handle(
            &request(&path, Some("alt=sse"), Some("k"), &b),
            &StreamSettings::default(),
        ) {
            SimAnswer::Stream(mut s) => {
                let mut chunks = Vec::new();
                while let Some(frame) = s.next_frame() {
                    match frame {
                        crate::simulator::Frame::Event(body) => chunks.push(body.to_vec()),
                        crate::simulator::Frame::Truncated(..) => panic!("no truncation"),
                    }
                }
                chunks
            }
            _ => panic!("expected chunks"),
        };
        assert_eq!(chunks.len(), 3);
        let mut decoder = SseDecoder::new();
        let mut events = Vec::new();
        for c in &chunks {
            assert!(c.starts_with(b"data: ") && c.ends_with(b"\r\n\r\n"));
            decoder.feed(c, &mut events).unwrap();
        }
        assert_eq!(events.len(), 3);
        let first: Value = serde_json::from_str(&events[0].data).unwrap();
        assert!(first["candidates"][0]["content"]["parts"][0]["text"].is_string());
        for (i, ev) in events[1..].iter().enumerate() {
            let v: Value = serde_json::from_str(&ev.data).unwrap();
            assert_eq!(v["candidates"][0]["index"], i);
            assert_eq!(
                v["usageMetadata"]["candidatesTokenCount"],
                OUTPUT_IMAGE_TOKENS * (i as u64 + 1)
            );
            image_at(&v["candidates"][0]["content"]["parts"][0]);
        }
    }
}
