//! The built-in provider simulator: an OpenAI-compatible `POST …/images/edits` that performs a
//! real, deterministic edit (see [`crate::imaging::simulate_edit`]), so the demo, the tests and
//! the benchmarks need no provider account.
//!
//! It speaks OpenAI's wire format: multipart in (`image` or `image[]`, `mask`, `prompt`, `n`,
//! `size`, `response_format`, `stream`, `partial_images`, …), `ImagesResponse` JSON out, OpenAI's
//! error object on failure. It requires an `Authorization: Bearer` header (any value) as OpenAI
//! does.
//!
//! Memory is bounded whatever the images' size: the listener reads each body as it arrives into
//! a spool ([`body`]: files and base64 images go to the spool, decoded), and every answer is
//! rendered row by row from the spool into another one ([`render`]). The handlers here are pure
//! CPU work with no I/O but the spools': the listener runs [`route`] on the decode pool.
//!
//! With `stream=true` the answer is a [`SimStream`]: OpenAI's server-sent events, for each output
//! image in turn `partial_images` (0..=3) `image_edit.partial_image` events, then one
//! `image_edit.completed` event whose image is the one the non-streamed answer has at that index.
//! Partial `k` of `P` is the input with the edit painted over its first `height·(k+1)/(P+1)`
//! rows. [`SimStream`] only renders the events, one per call (no I/O); the listener
//! (`server::simulator_app`) renders each on the decode pool and writes it, waiting
//! [`SimStream::interval`] before each.
//!
//! Test hooks, driven by the prompt: `simulate-error:<status>` answers with that status and an
//! OpenAI error object; `simulate-garbage` answers 200 with a body that is not JSON. With
//! `stream=true` also: `simulate-stream-error:<K>` sends K events then an `error` event and ends
//! the stream; `simulate-stream-truncate:<K>` sends K events (at most all but one) then the first
//! half of the next event's bytes and ends the body; `simulate-stream-unknown` sends an
//! `image_edit.debug` event before the others.

mod bedrock;
pub mod body;
mod gemini;
mod huggingface;
mod json_split;
mod polling;
pub mod render;
mod stability;
mod vertex;
mod xai;

use crate::config::SimulatorSettings;
use crate::imaging::{ImageHeader, ImagingError};
pub use body::{read_body, Blob, BodyError, SimBody, SpoolPlace};
pub use render::{Body, RenderPlace};
use render::{Fault, Marks, MaskRule, Picture};
use serde_json::{json, Value};
use std::time::Duration;

/// The simulator's answer when it is written in one piece.
#[derive(Debug, Clone)]
pub struct SimResponse {
    /// HTTP status.
    pub status: u16,
    /// `content-type`.
    pub content_type: &'static str,
    /// Body.
    pub body: Body,
}

impl SimResponse {
    /// A JSON answer of `value`.
    pub fn json(status: u16, value: &Value) -> SimResponse {
        SimResponse {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(value).unwrap_or_default().into(),
        }
    }

    /// A 200 JSON answer of `doc`, its image slots rendered from `pictures` into a spooled body
    /// ([`render::json_body`]).
    pub(crate) fn rendered(doc: &Value, pictures: &[Picture], place: &RenderPlace) -> Result<SimResponse, Fault> {
        Ok(SimResponse {
            status: 200,
            content_type: "application/json",
            body: render::json_body(doc, pictures, place)?,
        })
    }
}

/// The simulator's answer to one request.
pub enum SimAnswer {
    /// A complete response (JSON, an image, or an error).
    Whole(SimResponse),
    /// A `200 text/event-stream` answer, rendered and written frame by frame.
    Stream(Box<SimStream>),
}

/// One request to the simulator, as the listener read it.
#[derive(Debug, Clone)]
pub struct SimRequest {
    /// Path without the query.
    pub path: String,
    /// The query string, if any.
    pub query: Option<String>,
    /// Request headers.
    pub headers: http::HeaderMap,
    /// The body, as read ([`read_body`]).
    pub body: SimBody,
    /// The pixel budget of every image the answer decodes (`limits.max_image_pixels`), and
    /// where answers are spooled.
    pub place: RenderPlace,
}

impl SimRequest {
    /// A header's value, if present and text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The image a base64 JSON string holds: a long one the listener decoded into the spool, or
    /// a short one decoded by `inline` (each provider's own base64 rules); `None` when it is not
    /// base64.
    pub fn base64_blob(&self, text: &str, inline: impl FnOnce(&str) -> Option<Vec<u8>>) -> Option<Blob> {
        match self.body.spooled(text) {
            Some(blob) => blob.ok(),
            None => inline(text).map(|bytes| Blob::Inline(bytes.into())),
        }
    }
}

#[cfg(test)]
impl SimRequest {
    /// A request as the listener reads it (tests): its body, of the type its `content-type`
    /// header says, read by [`read_body`] from memory; the default pixel budget; spools that keep
    /// 1000 bytes in memory.
    pub(crate) fn for_test(path: String, query: Option<String>, headers: http::HeaderMap, body: bytes::Bytes) -> Self {
        use std::future::Future;
        struct Whole(Option<bytes::Bytes>);
        #[async_trait::async_trait]
        impl crate::form::BodySource for Whole {
            async fn next_chunk(&mut self) -> std::io::Result<Option<bytes::Bytes>> {
                Ok(self.0.take())
            }
        }
        let place = RenderPlace {
            max_image_pixels: crate::imaging::DEFAULT_MAX_PIXELS,
            spool: SpoolPlace {
                memory_bytes: 1000,
                directory: None,
            },
        };
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        // An in-memory body is read without waiting: polled until it is.
        let mut source = Whole(Some(body));
        let body = {
            let mut read = std::pin::pin!(read_body(&mut source, content_type.as_deref(), &place.spool));
            let mut cx = std::task::Context::from_waker(futures_util::task::noop_waker_ref());
            loop {
                if let std::task::Poll::Ready(body) = read.as_mut().poll(&mut cx) {
                    break body.expect("a readable body");
                }
            }
        };
        SimRequest {
            path,
            query,
            headers,
            body,
            place,
        }
    }
}

/// Answers one request: OpenAI and Azure `…/images/edits` (multipart), xAI `…/images/edits`
/// (JSON), Stability `…/v2beta/stable-image/edit/…`, Hugging Face `…/hf-inference/models/…`,
/// Gemini `…:generateContent` / `…:streamGenerateContent`, Imagen `…:predict`, Bedrock
/// `…/model/{id}/invoke`, the fake OAuth token endpoint `/token`, and the asynchronous
/// providers (BFL, Fireworks, Replicate, fal through the Hugging Face router: submit, polls and
/// result `GET`s, see `polling`);
/// anything else is a 404. CPU work (images are rendered here): the listener runs it on the
/// decode pool.
pub fn route(req: SimRequest, settings: &StreamSettings) -> SimAnswer {
    let json_body = req
        .header("content-type")
        .is_some_and(|ct| ct.starts_with("application/json"));
    if req.path.ends_with("/images/edits") && json_body {
        return xai::handle(&req);
    }
    if req.path.contains("/v2beta/stable-image/edit/") {
        return stability::handle(&req);
    }
    if req.path.contains("/hf-inference/models/") {
        return huggingface::handle(&req);
    }
    if req.path.ends_with("/images/edits") {
        return handle(&req, settings);
    }
    if req.path.ends_with(":generateContent") || req.path.ends_with(":streamGenerateContent") {
        return gemini::handle(&req, settings);
    }
    if req.path.ends_with(":predict") {
        return vertex::handle(&req);
    }
    if req.path.ends_with("/invoke") && req.path.contains("/model/") {
        return bedrock::handle(&req);
    }
    if req.path == "/token" {
        return vertex::token(&req);
    }
    if let Some(answer) = polling::handle(&req) {
        return answer;
    }
    SimAnswer::Whole(error(404, "invalid_request_error", "not_found", None, "not found"))
}

/// How the simulator streams: the `simulator:` settings that matter per request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamSettings {
    /// Wait before each event (`stream_interval_ms`).
    pub interval: Duration,
    /// Pad each partial image's PNG to about this many bytes; 0 = no padding
    /// (`partial_image_bytes`).
    pub partial_image_bytes: usize,
}

impl From<&SimulatorSettings> for StreamSettings {
    fn from(s: &SimulatorSettings) -> Self {
        StreamSettings {
            interval: s.stream_interval,
            partial_image_bytes: s.partial_image_bytes,
        }
    }
}

fn error(status: u16, kind: &str, code: &str, param: Option<&str>, message: &str) -> SimResponse {
    SimResponse::json(
        status,
        &json!({
            "error": {"message": message, "type": kind, "param": param, "code": code}
        }),
    )
}

#[derive(Default)]
struct SimForm {
    model: Option<String>,
    prompt: Option<String>,
    images: Vec<Blob>,
    mask: Option<Blob>,
    n: u32,
    size: Option<String>,
    response_format: Option<String>,
    quality: Option<String>,
    background: Option<String>,
    stream: bool,
    /// As sent; checked only when streaming (a non-streamed request ignores it).
    partial_images: Option<String>,
}

fn read_form(req: &SimRequest) -> Result<SimForm, SimResponse> {
    let bad = |m: String| error(400, "invalid_request_error", "invalid_multipart", None, &m);
    let parts = req.body.parts().map_err(bad)?;
    let mut f = SimForm {
        n: 1,
        ..Default::default()
    };
    for part in parts {
        let text = || part.data.text().unwrap_or_default();
        match part.name.as_str() {
            "model" => f.model = Some(text()),
            "prompt" => f.prompt = Some(text()),
            "image" | "image[]" => f.images.push(part.data.clone()),
            "mask" => f.mask = Some(part.data.clone()),
            "n" => {
                f.n = text().parse().ok().filter(|n| (1..=10).contains(n)).ok_or_else(|| {
                    error(
                        400,
                        "invalid_request_error",
                        "invalid_value",
                        Some("n"),
                        "n must be 1..10",
                    )
                })?
            }
            "size" => f.size = Some(text()),
            "response_format" => f.response_format = Some(text()),
            "quality" => f.quality = Some(text()),
            "background" => f.background = Some(text()),
            "stream" => f.stream = matches!(text().trim().to_ascii_lowercase().as_str(), "true" | "1"),
            "partial_images" => f.partial_images = Some(text()),
            _ => {}
        }
    }
    Ok(f)
}

/// A request that passed every check: what both the whole and the streamed answers are made of.
struct Edit {
    form: SimForm,
    prompt: String,
    /// The first image, and its header.
    image: Blob,
    header: ImageHeader,
    mask: Option<Blob>,
    place: RenderPlace,
}

/// Token counts of one request (the same for both answers).
#[derive(Debug, Clone, Copy)]
struct Usage {
    text_tokens: u64,
    image_tokens: u64,
    output_tokens: u64,
}

impl Usage {
    fn input_tokens(&self) -> u64 {
        self.text_tokens + self.image_tokens
    }

    fn total_tokens(&self) -> u64 {
        self.input_tokens() + self.output_tokens
    }

    /// As the non-streamed `ImagesResponse` carries it.
    fn whole_json(&self) -> Value {
        json!({
            "input_tokens": self.input_tokens(),
            "input_tokens_details": {"text_tokens": self.text_tokens, "image_tokens": self.image_tokens},
            "output_tokens": self.output_tokens,
            "output_tokens_details": {"text_tokens": 0, "image_tokens": self.output_tokens},
            "total_tokens": self.total_tokens(),
        })
    }

    /// As the `image_edit.completed` event carries it (OpenAI's field order).
    fn stream_json(&self) -> Value {
        json!({
            "total_tokens": self.total_tokens(),
            "input_tokens": self.input_tokens(),
            "output_tokens": self.output_tokens,
            "input_tokens_details": {"text_tokens": self.text_tokens, "image_tokens": self.image_tokens},
            "output_tokens_details": {"text_tokens": 0, "image_tokens": self.output_tokens},
        })
    }
}

impl Edit {
    /// Output image `index`, the same for both answers.
    fn picture(&self, index: u32) -> Picture {
        let marks = match &self.mask {
            Some(m) => Marks::Mask(m.clone(), MaskRule::Alpha),
            None => Marks::Blend,
        };
        Picture::edit(self.image.clone(), marks, &self.prompt, index)
    }

    fn usage(&self) -> Usage {
        let text_tokens = (self.prompt.len() as u64).div_ceil(4);
        let image_tokens = 65 * self.form.images.len() as u64 + if self.mask.is_some() { 65 } else { 0 };
        Usage {
            text_tokens,
            image_tokens,
            output_tokens: 272 * self.form.n as u64,
        }
    }

    fn size(&self) -> String {
        self.form
            .size
            .clone()
            .unwrap_or_else(|| format!("{}x{}", self.header.width, self.header.height))
    }

    fn quality(&self) -> String {
        self.form.quality.clone().unwrap_or_else(|| "auto".into())
    }

    fn background(&self) -> String {
        self.form.background.clone().unwrap_or_else(|| "opaque".into())
    }
}

/// OpenAI's answer to an image or mask that cannot be edited.
fn fault_response(fault: Fault) -> SimResponse {
    let message = fault.to_string();
    match fault {
        Fault::Image(_) => error(400, "invalid_request_error", "invalid_image", Some("image"), &message),
        Fault::Mask(ImagingError::MaskSize { .. }) | Fault::MaskContent(_) => {
            error(400, "invalid_request_error", "invalid_value", Some("mask"), &message)
        }
        Fault::Mask(_) => error(400, "invalid_request_error", "invalid_image", Some("mask"), &message),
        Fault::Output(_) => error(500, "server_error", "internal_error", None, &message),
    }
}

pub(super) fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The status a `simulate-error:<status>` prompt asks for (500 when it names no error status),
/// `None` for any other prompt.
pub(super) fn simulated_error_status(prompt: &str) -> Option<u16> {
    let rest = prompt.strip_prefix("simulate-error:")?;
    Some(
        rest.get(..3)
            .and_then(|s| s.parse::<u16>().ok())
            .filter(|s| (400..600).contains(s))
            .unwrap_or(500),
    )
}

/// Checks the request and reads its images' headers; `Err` is the answer to send instead (an
/// error, or a test hook's answer).
fn prepare(req: &SimRequest, authorization: Option<&str>) -> Result<Edit, SimResponse> {
    if !authorization.is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7) {
        return Err(error(
            401,
            "invalid_request_error",
            "invalid_api_key",
            None,
            "missing bearer token",
        ));
    }
    let form = read_form(req)?;
    let prompt = form.prompt.clone().unwrap_or_default();
    if let Some(status) = simulated_error_status(&prompt) {
        return Err(error(
            status,
            "simulated_error",
            "simulated",
            None,
            &format!("simulated error {status}"),
        ));
    }
    if prompt == "simulate-garbage" {
        return Err(SimResponse {
            status: 200,
            content_type: "application/json",
            body: Body::from(&b"{not json"[..]),
        });
    }
    if form.model.as_deref().is_none_or(str::is_empty) {
        return Err(error(
            400,
            "invalid_request_error",
            "missing_required_parameter",
            Some("model"),
            "model is required",
        ));
    }
    let Some(image) = form.images.first().cloned() else {
        return Err(error(
            400,
            "invalid_request_error",
            "missing_required_parameter",
            Some("image"),
            "image is required",
        ));
    };
    let max_pixels = req.place.max_image_pixels;
    let header = render::inspect(&image, max_pixels).map_err(|e| fault_response(Fault::Image(e)))?;
    if let Some(mask) = &form.mask {
        render::inspect_mask(mask, MaskRule::Alpha, &header, max_pixels).map_err(fault_response)?;
    }
    Ok(Edit {
        mask: form.mask.clone(),
        form,
        prompt,
        image,
        header,
        place: req.place.clone(),
    })
}

/// Answers one `images/edits` request: a whole JSON answer, or (with `stream=true`) a stream.
/// Azure sends its key in `api-key`; the simulator takes it as OpenAI's Bearer.
fn handle(req: &SimRequest, settings: &StreamSettings) -> SimAnswer {
    let authorization = match (req.header("authorization"), req.header("api-key")) {
        (Some(a), _) => Some(a.to_string()),
        (None, Some(key)) => Some(format!("Bearer {key}")),
        (None, None) => None,
    };
    let edit = match prepare(req, authorization.as_deref()) {
        Ok(edit) => edit,
        Err(resp) => return SimAnswer::Whole(resp),
    };
    if !edit.form.stream {
        return SimAnswer::Whole(whole(&edit).unwrap_or_else(fault_response));
    }
    match SimStream::openai(edit, settings, unix_now()) {
        Ok(stream) => SimAnswer::Stream(Box::new(stream)),
        Err(resp) => SimAnswer::Whole(resp),
    }
}

/// The non-streamed `ImagesResponse`, its images rendered straight into the body.
fn whole(edit: &Edit) -> Result<SimResponse, Fault> {
    let url = edit.form.response_format.as_deref() == Some("url");
    let data: Vec<Value> = (0..edit.form.n as usize)
        .map(|i| {
            if url {
                json!({"url": format!("data:image/png;base64,{}", render::slot(i))})
            } else {
                json!({"b64_json": render::slot(i)})
            }
        })
        .collect();
    let pictures: Vec<Picture> = (0..edit.form.n).map(|i| edit.picture(i)).collect();
    let doc = json!({
        "created": unix_now(),
        "data": data,
        "background": edit.background(),
        "output_format": "png",
        "quality": edit.quality(),
        "size": edit.size(),
        "usage": edit.usage().whole_json(),
    });
    SimResponse::rendered(&doc, &pictures, &edit.place)
}

mod stream;

pub use stream::*;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::imaging::{self, decode_png, encode_png, paint_colour, simulate_edit, solid, Rgba};
    use base64::Engine;
    use bytes::Bytes;

    const B: &str = "simb";

    fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Bytes {
        let mut v = Vec::new();
        for (name, fname, data) in parts {
            v.extend(format!("--{B}\r\nContent-Disposition: form-data; name=\"{name}\"").bytes());
            if let Some(f) = fname {
                v.extend(format!("; filename=\"{f}\"\r\nContent-Type: image/png").bytes());
            }
            v.extend(b"\r\n\r\n");
            v.extend_from_slice(data);
            v.extend(b"\r\n");
        }
        v.extend(format!("--{B}--\r\n").bytes());
        Bytes::from(v)
    }

    fn ct() -> String {
        format!("multipart/form-data; boundary={B}")
    }

    /// Answers `body` as the listener would: read, then routed.
    async fn handle_full(
        content_type: Option<&str>,
        authorization: Option<&str>,
        body: Bytes,
        settings: &StreamSettings,
        max_pixels: u64,
    ) -> SimAnswer {
        let mut headers = http::HeaderMap::new();
        if let Some(ct) = content_type {
            headers.insert("content-type", ct.parse().unwrap());
        }
        if let Some(a) = authorization {
            headers.insert("authorization", a.parse().unwrap());
        }
        let mut req = SimRequest::for_test("/v1/images/edits".into(), None, headers, body);
        req.place.max_image_pixels = max_pixels;
        route(req, settings)
    }

    async fn handle_with(body: Bytes, settings: &StreamSettings) -> SimAnswer {
        handle_full(
            Some(&ct()),
            Some("Bearer k"),
            body,
            settings,
            imaging::DEFAULT_MAX_PIXELS,
        )
        .await
    }

    async fn whole_answer(content_type: &str, authorization: Option<&str>, body: Bytes) -> SimResponse {
        match handle_full(
            Some(content_type),
            authorization,
            body,
            &StreamSettings::default(),
            imaging::DEFAULT_MAX_PIXELS,
        )
        .await
        {
            SimAnswer::Whole(r) => r,
            SimAnswer::Stream(_) => panic!("expected a whole answer"),
        }
    }

    async fn stream_of(body: Bytes, settings: &StreamSettings) -> SimStream {
        match handle_with(body, settings).await {
            SimAnswer::Stream(s) => *s,
            SimAnswer::Whole(r) => panic!(
                "expected a stream, got {} {}",
                r.status,
                String::from_utf8_lossy(&r.body.to_vec())
            ),
        }
    }

    fn frames(mut s: SimStream) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(f) = s.next_frame() {
            out.push(f);
        }
        assert!(s.next_frame().is_none(), "a finished stream stays finished");
        out
    }

    /// One server-sent event as written: its name, its data, its bytes.
    #[derive(Debug)]
    struct SseEvent {
        name: String,
        data: Value,
        bytes: Vec<u8>,
    }

    impl SseEvent {
        fn parse(bytes: Vec<u8>) -> SseEvent {
            let text = String::from_utf8(bytes.clone()).unwrap();
            let rest = text.strip_prefix("event: ").unwrap();
            let (name, rest) = rest.split_once("\ndata: ").unwrap();
            let data = rest.strip_suffix("\n\n").unwrap();
            SseEvent {
                name: name.to_string(),
                data: serde_json::from_str(data).unwrap(),
                bytes,
            }
        }

        fn to_bytes(&self) -> Vec<u8> {
            self.bytes.clone()
        }
    }

    fn events(s: SimStream) -> Vec<SseEvent> {
        frames(s)
            .into_iter()
            .map(|f| match f {
                Frame::Event(e) => SseEvent::parse(e.to_vec()),
                Frame::Truncated(..) => panic!("unexpected truncation"),
            })
            .collect()
    }

    fn decode_b64_png(v: &Value) -> (Vec<u8>, Rgba) {
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["b64_json"].as_str().unwrap())
            .unwrap();
        let img = decode_png(&png).unwrap();
        (png, img)
    }

    fn keys(v: &Value) -> Vec<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    /// A 6×5 image with a different colour per row, so partial rows are easy to tell apart.
    fn striped() -> Rgba {
        let mut img = solid(6, 5, [0, 0, 0, 255]);
        for (i, px) in img.pixels.chunks_exact_mut(4).enumerate() {
            let row = (i / 6) as u8;
            px.copy_from_slice(&[row * 40, 255 - row * 40, row, 255]);
        }
        img
    }

    #[tokio::test]
    async fn edits_jpeg_and_webp_inputs_at_their_size() {
        use crate::imaging::header::tests::{jpeg, webp};
        let mut input = solid(96, 64, [0, 0, 0, 255]);
        for (i, px) in input.pixels.chunks_exact_mut(4).enumerate() {
            px[0] = (i % 96) as u8 * 2;
            px[2] = 200;
        }
        let mut m = solid(96, 64, [0, 0, 0, 255]);
        for y in 0..8 {
            for x in 0..8 {
                m.pixels[((y * 96 + x) * 4 + 3) as usize] = 0; // top-left 8×8 edited
            }
        }
        let mask = encode_png(&m).unwrap();
        for (name, file) in [("a.jpg", jpeg(&input)), ("a.webp", webp(&input))] {
            let body = form(&[
                ("model", None, b"sim"),
                ("prompt", None, b"paint"),
                ("image", Some(name), &file),
                ("mask", Some("m.png"), &mask),
            ]);
            let r = whole_answer(&ct(), Some("Bearer k"), body).await;
            assert_eq!(r.status, 200, "{name}: {}", String::from_utf8_lossy(&r.body.to_vec()));
            let v: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
            let png = base64::engine::general_purpose::STANDARD
                .decode(v["data"][0]["b64_json"].as_str().unwrap())
                .unwrap();
            let out = decode_png(&png).unwrap();
            assert_eq!((out.width, out.height), (96, 64), "{name}");
            assert_eq!(v["size"], "96x64", "{name}");
            let colour = paint_colour("paint", 0);
            assert_eq!(out.pixel(3, 3), colour, "{name}: the masked area is painted");
            // Outside the mask the input's pixels (up to JPEG's loss).
            let kept = out.pixel(50, 40);
            assert!(
                kept[0].abs_diff(100) < 30 && kept[2].abs_diff(200) < 30,
                "{name}: {kept:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_image_over_the_budget_is_refused_before_decoding() {
        use crate::imaging::header::tests::png_declaring;
        let bomb = png_declaring(8192, 8192);
        let body = form(&[
            ("model", None, b"sim"),
            ("prompt", None, b"paint"),
            ("n", None, b"10"),
            ("image", Some("a.png"), &bomb),
            ("mask", Some("m.png"), &bomb),
        ]);
        let r = whole_answer(&ct(), Some("Bearer k"), body).await;
        assert_eq!(r.status, 400);
        let v: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
        assert_eq!(v["error"]["param"], "image", "{v}");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("8192x8192") && message.contains("over the limit"),
            "{message}"
        );
        // A smaller budget refuses a real image the same way.
        let img = encode_png(&solid(100, 100, [1, 2, 3, 255])).unwrap();
        let body = form(&[
            ("model", None, b"sim"),
            ("prompt", None, b"p"),
            ("image", Some("a.png"), &img),
        ]);
        let r = handle_full(Some(&ct()), Some("Bearer k"), body, &StreamSettings::default(), 9_999).await;
        let SimAnswer::Whole(r) = r else {
            panic!("expected a whole answer")
        };
        assert_eq!(r.status, 400);
    }

    #[tokio::test]
    async fn paints_the_masked_area() {
        let img = encode_png(&solid(8, 8, [1, 2, 3, 255])).unwrap();
        let mut m = solid(8, 8, [0, 0, 0, 255]);
        m.pixels[3] = 0; // pixel (0,0) transparent
        let mask = encode_png(&m).unwrap();
        let body = form(&[
            ("model", None, b"sim"),
            ("prompt", None, b"paint"),
            ("n", None, b"2"),
            ("image", Some("a.png"), &img),
            ("mask", Some("m.png"), &mask),
        ]);
        let r = whole_answer(&ct(), Some("Bearer k"), body).await;
        assert_eq!(r.status, 200);
        let v: serde_json::Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        let png = base64::engine::general_purpose::STANDARD
            .decode(v["data"][1]["b64_json"].as_str().unwrap())
            .unwrap();
        let out: Rgba = decode_png(&png).unwrap();
        assert_eq!(out.pixel(0, 0), paint_colour("paint", 1));
        assert_eq!(out.pixel(1, 0), [1, 2, 3, 255]);
        assert_eq!(v["size"], "8x8");
        assert_eq!(
            keys(&v),
            [
                "created",
                "data",
                "background",
                "output_format",
                "quality",
                "size",
                "usage"
            ]
        );
        assert_eq!(
            keys(&v["usage"]),
            [
                "input_tokens",
                "input_tokens_details",
                "output_tokens",
                "output_tokens_details",
                "total_tokens"
            ]
        );
    }

    #[tokio::test]
    async fn auth_and_error_hooks() {
        let ct = ct();
        let body = form(&[("model", None, b"sim"), ("prompt", None, b"simulate-error:429")]);
        assert_eq!(whole_answer(&ct, None, body.clone()).await.status, 401);
        let r = whole_answer(&ct, Some("Bearer k"), body).await;
        assert_eq!(r.status, 429);
        let v: serde_json::Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
        assert_eq!(v["error"]["code"], "simulated");
        let r = whole_answer(
            &ct,
            Some("Bearer k"),
            form(&[("model", None, b"sim"), ("prompt", None, b"x")]),
        )
        .await;
        assert_eq!(r.status, 400);
    }

    #[tokio::test]
    async fn streams_partials_then_completed_per_image() {
        let input = striped();
        let png = encode_png(&input).unwrap();
        let parts = |stream: &'static [u8]| {
            form(&[
                ("model", None, b"sim"),
                ("prompt", None, b"stripes"),
                ("n", None, b"2"),
                ("quality", None, b"high"),
                ("stream", None, stream),
                ("partial_images", None, b"2"),
                ("image", Some("a.png"), &png),
            ])
        };
        let settings = StreamSettings {
            interval: Duration::from_millis(50),
            partial_image_bytes: 0,
        };
        let stream = stream_of(parts(b"true"), &settings).await;
        assert_eq!(stream.interval(), Duration::from_millis(50));
        let events = events(stream);

        // The non-streamed answer to the same form (stream=false), for comparison.
        let r = match handle_with(parts(b"false"), &settings).await {
            SimAnswer::Whole(r) => r,
            SimAnswer::Stream(_) => panic!("stream=false must not stream"),
        };
        assert_eq!(r.status, 200);
        let whole: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();

        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "image_edit.partial_image",
                "image_edit.partial_image",
                "image_edit.completed",
                "image_edit.partial_image",
                "image_edit.partial_image",
                "image_edit.completed"
            ]
        );
        for (n, e) in events.iter().enumerate() {
            let image = (n / 3) as u32;
            let d = &e.data;
            assert_eq!(d["type"], e.name);
            assert_eq!(d["size"], "6x5");
            assert_eq!(d["quality"], "high");
            assert_eq!(d["background"], "opaque");
            assert_eq!(d["output_format"], "png");
            assert!(d["created_at"].as_u64().unwrap() > 1_600_000_000);
            let (_, img) = decode_b64_png(d);
            let fin = simulate_edit(&input, None, "stripes", image).unwrap();
            if n % 3 < 2 {
                let k = (n % 3) as u32;
                assert_eq!(
                    keys(d),
                    [
                        "type",
                        "b64_json",
                        "partial_image_index",
                        "created_at",
                        "size",
                        "quality",
                        "background",
                        "output_format"
                    ]
                );
                assert_eq!(d["partial_image_index"], k);
                // partial k of 2 is painted over the first 5·(k+1)/3 rows: 1, then 3
                let rows = [1, 3][k as usize];
                for y in 0..5 {
                    for x in 0..6 {
                        let want = if y < rows { fin.pixel(x, y) } else { input.pixel(x, y) };
                        assert_eq!(img.pixel(x, y), want, "image {image} partial {k} at ({x},{y})");
                    }
                }
                assert_ne!(fin.pixel(0, 4), input.pixel(0, 4));
            } else {
                assert_eq!(
                    keys(d),
                    [
                        "type",
                        "b64_json",
                        "created_at",
                        "size",
                        "quality",
                        "background",
                        "output_format",
                        "usage"
                    ]
                );
                assert_eq!(img, fin);
                let (_, from_whole) = decode_b64_png(&whole["data"][image as usize]);
                assert_eq!(img, from_whole);
                assert_eq!(d["b64_json"], whole["data"][image as usize]["b64_json"]);
                let u = &d["usage"];
                assert_eq!(
                    keys(u),
                    [
                        "total_tokens",
                        "input_tokens",
                        "output_tokens",
                        "input_tokens_details",
                        "output_tokens_details"
                    ]
                );
                for key in ["total_tokens", "input_tokens", "output_tokens"] {
                    assert_eq!(u[key], whole["usage"][key], "{key}");
                }
                assert_eq!(u["input_tokens_details"], whole["usage"]["input_tokens_details"]);
                assert_eq!(u["output_tokens_details"], whole["usage"]["output_tokens_details"]);
            }
        }
        assert!(String::from_utf8(events[0].to_bytes()).unwrap().starts_with(
            "event: image_edit.partial_image\ndata: {\"type\":\"image_edit.partial_image\",\"b64_json\":\""
        ));
    }

    #[tokio::test]
    async fn without_partials_only_completed_events() {
        let png = encode_png(&solid(4, 4, [1, 2, 3, 255])).unwrap();
        let body = form(&[
            ("model", None, b"sim"),
            ("prompt", None, b"p"),
            ("stream", None, b"true"),
            ("image", Some("a.png"), &png),
        ]);
        let events = events(stream_of(body, &StreamSettings::default()).await);
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].name, "image_edit.completed");
        assert_eq!(events[0].data["size"], "4x4");
    }

    fn hook_form(prompt: &[u8], partials: &[u8], png: &[u8]) -> Bytes {
        form(&[
            ("model", None, b"sim"),
            ("prompt", None, prompt),
            ("stream", None, b"true"),
            ("partial_images", None, partials),
            ("image", Some("a.png"), png),
        ])
    }

    #[tokio::test]
    async fn error_hook_sends_k_events_then_an_error_event() {
        let png = encode_png(&solid(4, 4, [1, 2, 3, 255])).unwrap();
        let s = stream_of(
            hook_form(b"simulate-stream-error:2", b"3", &png),
            &StreamSettings::default(),
        )
        .await;
        let events = events(s);
        let names: Vec<&str> = events.iter().map(|e| e.name.as_str()).collect();
        assert_eq!(names, ["image_edit.partial_image", "image_edit.partial_image", "error"]);
        assert_eq!(
            serde_json::to_string(&events[2].data).unwrap(),
            r#"{"type":"error","error":{"type":"image_generation_server_error","code":"simulated","message":"simulated mid-stream error","param":null}}"#
        );
        assert_eq!(
            events[2].to_bytes(),
            b"event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"image_generation_server_error\",\"code\":\"simulated\",\"message\":\"simulated mid-stream error\",\"param\":null}}\n\n"
        );
        // K = 0: the error is the only event; K past the end: every event, then the error.
        let s = stream_of(
            hook_form(b"simulate-stream-error:0", b"1", &png),
            &StreamSettings::default(),
        )
        .await;
        assert_eq!(events_names(s), ["error"]);
        let s = stream_of(
            hook_form(b"simulate-stream-error:9", b"1", &png),
            &StreamSettings::default(),
        )
        .await;
        assert_eq!(
            events_names(s),
            ["image_edit.partial_image", "image_edit.completed", "error"]
        );
    }

    fn events_names(s: SimStream) -> Vec<String> {
        events(s).into_iter().map(|e| e.name).collect()
    }

    #[tokio::test]
    async fn unknown_hook_adds_a_debug_event_first() {
        let png = encode_png(&solid(4, 4, [1, 2, 3, 255])).unwrap();
        let s = stream_of(
            hook_form(b"simulate-stream-unknown", b"1", &png),
            &StreamSettings::default(),
        )
        .await;
        let events = events(s);
        assert_eq!(
            events.iter().map(|e| e.name.as_str()).collect::<Vec<_>>(),
            ["image_edit.debug", "image_edit.partial_image", "image_edit.completed"]
        );
        assert_eq!(
            events[0].to_bytes(),
            b"event: image_edit.debug\ndata: {\"type\":\"image_edit.debug\"}\n\n"
        );
    }

    #[tokio::test]
    async fn truncate_hook_ends_mid_event() {
        let png = encode_png(&solid(4, 4, [1, 2, 3, 255])).unwrap();
        let s = stream_of(
            hook_form(b"simulate-stream-truncate:1", b"1", &png),
            &StreamSettings::default(),
        )
        .await;
        let got = frames(s);
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], Frame::Event(e) if e.to_vec().starts_with(b"event: image_edit.partial_image\n")));
        let Frame::Truncated(event, len) = &got[1] else {
            panic!("expected a truncated frame, got {:?}", got[1]);
        };
        assert_eq!(*len, event.len() / 2);
        let half: Vec<u8> = event.chunks(*len).flat_map(|c| c.unwrap().to_vec()).collect();
        let half = String::from_utf8(half).unwrap();
        assert!(half.starts_with("event: image_edit.completed\ndata: {\"type\":\"image_edit.completed\""));
        assert!(!half.contains("\n\n"));
        // K past the end still leaves one event to cut: the last one.
        let s = stream_of(
            hook_form(b"simulate-stream-truncate:7", b"0", &png),
            &StreamSettings::default(),
        )
        .await;
        let got = frames(s);
        assert_eq!(got.len(), 1);
        assert!(matches!(&got[0], Frame::Truncated(b, _) if b.to_vec().starts_with(b"event: image_edit.completed\n")));
    }

    #[tokio::test]
    async fn padding_grows_partials_only_and_keeps_them_valid() {
        let input = striped();
        let png = encode_png(&input).unwrap();
        let settings = StreamSettings {
            interval: Duration::ZERO,
            partial_image_bytes: 20_000,
        };
        let events = events(stream_of(hook_form(b"pad", b"3", &png), &settings).await);
        assert_eq!(events.len(), 4);
        let fin = simulate_edit(&input, None, "pad", 0).unwrap();
        for (k, e) in events[..3].iter().enumerate() {
            let (bytes, img) = decode_b64_png(&e.data);
            assert!(bytes.len() >= 20_000 && bytes.len() < 20_012, "{}", bytes.len());
            assert_eq!(&bytes[37..41], b"rfPd");
            let rows = partial_rows(5, k as u32, 3);
            assert_eq!(rows, [1, 2, 3][k]);
            assert_eq!(img.pixel(5, rows - 1), fin.pixel(5, rows - 1));
            assert_eq!(img.pixel(5, rows), input.pixel(5, rows));
        }
        let (bytes, img) = decode_b64_png(&events[3].data);
        assert!(bytes.len() < 1000);
        assert_eq!(img, fin);
    }

    #[tokio::test]
    async fn stream_request_errors_are_http_errors() {
        let png = encode_png(&solid(4, 4, [1, 2, 3, 255])).unwrap();
        let bad_mask = encode_png(&solid(2, 2, [0, 0, 0, 0])).unwrap();
        let settings = StreamSettings::default();
        let status = |a: SimAnswer| match a {
            SimAnswer::Whole(r) => r.status,
            SimAnswer::Stream(_) => 200,
        };
        // partial_images is checked only when streaming
        assert_eq!(status(handle_with(hook_form(b"p", b"4", &png), &settings).await), 400);
        let body = form(&[
            ("model", None, b"sim"),
            ("prompt", None, b"p"),
            ("partial_images", None, b"4"),
            ("image", Some("a.png"), &png),
        ]);
        assert_eq!(status(handle_with(body, &settings).await), 200);
        // a mask of the wrong size is a 400 before any event
        let body = form(&[
            ("model", None, b"sim"),
            ("prompt", None, b"p"),
            ("stream", None, b"true"),
            ("image", Some("a.png"), &png),
            ("mask", Some("m.png"), &bad_mask),
        ]);
        match handle_with(body, &settings).await {
            SimAnswer::Whole(r) => {
                assert_eq!(r.status, 400);
                let v: Value = serde_json::from_slice(&r.body.to_vec()).unwrap();
                assert_eq!(v["error"]["param"], "mask");
            }
            SimAnswer::Stream(_) => panic!("expected a 400"),
        }
        // the plain error hooks apply before streaming
        assert_eq!(
            status(handle_with(hook_form(b"simulate-error:503", b"1", &png), &settings).await),
            503
        );
    }
}
