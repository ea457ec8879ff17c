//! Kind `openai`: any OpenAI-compatible `images/edits` endpoint (OpenAI itself, the built-in
//! simulator, self-hosted servers speaking the same API).
//!
//! Request: a new multipart body with the provider prefix removed from `model`, small fields
//! first (so size-limited upstreams see `model` before the images), then the images (`image`
//! for one, `image[]` for several, each typed from its magic bytes with a matching file name),
//! the mask, and any unknown parts the client sent (OpenAI adds fields faster than gateways).
//! Gateway-only fields (`type`, `fallbacks`, `seed`, `negative_prompt`, `num_inference_steps`)
//! are not sent. Auth is the provider key as `Authorization: Bearer`.
//!
//! Response: OpenAI's `ImagesResponse`, kept field for field, with `data[].index` filled in and
//! Bifrost's `extra_fields` added. Errors keep OpenAI's status and `error` object.

use super::answer::AnswerWriter;
use super::capabilities::{any_model, Capabilities, ModelFamily, Streaming};
use super::rawjson::{ExpandedObject, JsonOut, RawObject};
use super::{
    auth_header, BodySegment, ProviderAdapter, RequestEncoder, ResponseContext, UnifiedAnswer, UpstreamRequest,
    UpstreamResponse,
};
use crate::error::GatewayError;
use crate::form::{is_image_field, EditForm, EditType, FilePart};
use crate::imaging::ImageKind;
use crate::route::Target;
use bytes::{BufMut, Bytes, BytesMut};
use serde_json::{json, Map, Value};

/// The adapter for kind `openai`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiAdapter;

/// Escapes a multipart field or file name the way browsers do (HTML spec): `"`, CR and LF are
/// percent-encoded, so a hostile name cannot break out of the header.
fn escape_name(name: &str) -> String {
    name.replace('"', "%22").replace('\r', "%0D").replace('\n', "%0A")
}

/// Builds a multipart body as a list of segments: literal bytes, and spool ranges for files.
pub(super) struct MultipartWriter {
    boundary: String,
    segments: Vec<BodySegment>,
    pending: BytesMut,
}

impl MultipartWriter {
    /// A writer for a body delimited by `boundary`.
    pub(super) fn new(boundary: String) -> Self {
        MultipartWriter {
            boundary,
            segments: Vec::new(),
            pending: BytesMut::with_capacity(1024),
        }
    }

    /// A text part.
    pub(super) fn text(&mut self, name: &str, value: &str) {
        self.pending.put_slice(b"--");
        self.pending.put_slice(self.boundary.as_bytes());
        self.pending.put_slice(b"\r\nContent-Disposition: form-data; name=\"");
        self.pending.put_slice(escape_name(name).as_bytes());
        self.pending.put_slice(b"\"\r\n\r\n");
        self.pending.put_slice(value.as_bytes());
        self.pending.put_slice(b"\r\n");
    }

    /// A file part whose content is the upload `part`, streamed from the spool.
    pub(super) fn file(&mut self, name: &str, filename: &str, content_type: &str, part: &FilePart) {
        self.file_head(name, filename, content_type);
        self.flush();
        self.segments.push(BodySegment::Spool(part.range));
        self.pending.put_slice(b"\r\n");
    }

    /// A file part whose content the adapter made (e.g. a converted mask).
    pub(super) fn file_bytes(&mut self, name: &str, filename: &str, content_type: &str, content: Bytes) {
        self.file_head(name, filename, content_type);
        self.flush();
        self.segments.push(BodySegment::Bytes(content));
        self.pending.put_slice(b"\r\n");
    }

    fn file_head(&mut self, name: &str, filename: &str, content_type: &str) {
        self.pending.put_slice(b"--");
        self.pending.put_slice(self.boundary.as_bytes());
        self.pending.put_slice(b"\r\nContent-Disposition: form-data; name=\"");
        self.pending.put_slice(escape_name(name).as_bytes());
        self.pending.put_slice(b"\"; filename=\"");
        self.pending.put_slice(escape_name(filename).as_bytes());
        self.pending.put_slice(b"\"\r\nContent-Type: ");
        self.pending.put_slice(content_type.as_bytes());
        self.pending.put_slice(b"\r\n\r\n");
    }

    /// The bytes written since the last call (streaming use).
    fn take(&mut self) -> Bytes {
        self.pending.split().freeze()
    }

    fn end(&mut self) {
        self.pending.put_slice(b"--");
        self.pending.put_slice(self.boundary.as_bytes());
        self.pending.put_slice(b"--\r\n");
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.segments.push(BodySegment::Bytes(self.pending.split().freeze()));
        }
    }

    /// Ends the body; its segments in order.
    pub(super) fn finish(mut self) -> Vec<BodySegment> {
        self.end();
        self.flush();
        self.segments
    }
}

/// A declared content type is passed through only when it is a plain `type/subtype` token.
fn safe_content_type(declared: Option<&str>) -> &str {
    match declared {
        Some(ct)
            if !ct.is_empty()
                && ct.len() < 128
                && ct.bytes().all(|b| b.is_ascii_alphanumeric() || b"/.+-_".contains(&b)) =>
        {
            ct
        }
        _ => "application/octet-stream",
    }
}

/// Fields the gateway understands but OpenAI does not take.
const GATEWAY_ONLY: &[&str] = &[
    "type",
    "fallbacks",
    "fallbacks[]",
    "seed",
    "negative_prompt",
    "num_inference_steps",
];

/// The upstream head for a multipart body with `boundary`, sent to `path` with the credential
/// header `auth` (the body is left empty).
pub(super) fn multipart_head(
    path: String,
    auth: (http::HeaderName, String),
    request_id: &str,
    boundary: &str,
) -> UpstreamRequest {
    UpstreamRequest {
        method: http::Method::POST,
        path,
        headers: vec![
            auth,
            (
                http::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            ),
            (http::header::ACCEPT, "application/json".to_string()),
            (http::header::ACCEPT_ENCODING, "identity".to_string()),
            (http::HeaderName::from_static("x-request-id"), request_id.to_string()),
        ],
        body: Vec::new(),
    }
}

/// OpenAI's head: `{base}/images/edits` with a Bearer key.
fn head(target: &Target, request_id: &str, boundary: &str) -> Result<UpstreamRequest, GatewayError> {
    Ok(multipart_head(
        format!("{}/images/edits", target.provider.base_url.path),
        auth_header(target, "authorization")?,
        request_id,
        boundary,
    ))
}

/// A new random multipart boundary.
pub(super) fn new_boundary() -> String {
    format!("refract-{}", uuid::Uuid::new_v4().simple())
}

/// The streaming encoder of kind `openai`: parts are forwarded in arrival order; an image keeps
/// the client's choice of `image` or `image[]` (the count is not known yet), typed from its
/// magic bytes.
struct OpenAiEncoder {
    head: UpstreamRequest,
    w: MultipartWriter,
    images: usize,
}

impl RequestEncoder for OpenAiEncoder {
    fn head(&self) -> UpstreamRequest {
        self.head.clone()
    }

    fn text(&mut self, name: &str, value: &str) -> Option<Bytes> {
        // `fallbacks[0]`, `fallbacks[][provider]`…: the SDKs' list and dict encodings.
        if GATEWAY_ONLY.contains(&name) || name.starts_with("fallbacks[") {
            return None;
        }
        self.w.text(name, value);
        Some(self.w.take())
    }

    fn file_begin(
        &mut self,
        field: &str,
        filename: Option<&str>,
        kind: Option<ImageKind>,
        declared: Option<&str>,
    ) -> Bytes {
        let (name, filename, content_type) = match kind {
            Some(kind) if field == "mask" => ("mask".to_string(), format!("mask.{}", kind.extension()), kind.mime()),
            Some(kind) if is_image_field(field) => {
                let name = if field == "image" { "image" } else { "image[]" };
                let filename = if name == "image" && self.images == 0 {
                    format!("image.{}", kind.extension())
                } else {
                    format!("image_{}.{}", self.images, kind.extension())
                };
                self.images += 1;
                (name.to_string(), filename, kind.mime())
            }
            Some(kind) => (field.to_string(), filename.unwrap_or("file").to_string(), kind.mime()),
            None => (
                field.to_string(),
                filename.unwrap_or("file").to_string(),
                safe_content_type(declared),
            ),
        };
        self.w.file_head(&name, &filename, content_type);
        self.w.take()
    }

    fn file_end(&mut self) -> Bytes {
        self.w.pending.put_slice(b"\r\n");
        self.w.take()
    }

    fn finish(&mut self) -> Bytes {
        self.w.end();
        self.w.take()
    }
}

/// The streaming encoder for an OpenAI multipart body under `head` (made with `boundary`),
/// `model` being what the provider receives in the `model` part.
pub(super) fn multipart_encoder(head: UpstreamRequest, boundary: String, model: &str) -> Box<dyn RequestEncoder> {
    let mut w = MultipartWriter::new(boundary);
    w.text("model", model);
    Box::new(OpenAiEncoder { head, w, images: 0 })
}

/// What OpenAI's image edits support (also Azure's: the same API).
pub(super) static OPENAI_CAPABILITIES: Capabilities = Capabilities {
    mask: true,
    max_n: 10,
    n_by_calls: None,
    max_images: 16,
    max_image_bytes: 50_000_000,
    // A mask is OpenAI's inpainting; it has no outpainting or background-removal mode.
    edit_types: &[EditType::Inpainting],
    url_output: true,
    sizes: "`WxH` as the model allows, `auto`",
    streaming: Streaming::Native,
    extra_fields:
        "quality, background, input_fidelity, output_format, output_compression, partial_images, user, unknown fields",
    max_prompt_chars: None,
    input_formats: &[],
    allowed_sizes: &[],
};

static FAMILIES: [ModelFamily; 1] = [ModelFamily {
    name: "any (gpt-image-*, dall-e-2, compatible servers)",
    matches: any_model,
    capabilities: OPENAI_CAPABILITIES,
}];

impl ProviderAdapter for OpenAiAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    fn request_encoder(&self, target: &Target, request_id: &str) -> Option<Box<dyn RequestEncoder>> {
        let boundary = new_boundary();
        let head = head(target, request_id, &boundary).ok()?;
        Some(multipart_encoder(head, boundary, &target.model))
    }

    fn build_request(
        &self,
        form: &EditForm,
        target: &Target,
        request_id: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        let boundary = new_boundary();
        let head = head(target, request_id, &boundary)?;
        build_multipart(form, head, boundary, &target.model)
    }

    fn convert_response(
        &self,
        resp: &UpstreamResponse,
        cx: &ResponseContext<'_>,
    ) -> Result<UnifiedAnswer, GatewayError> {
        convert_images_response(resp, cx)
    }
}

/// The OpenAI multipart body for `form` under `head` (made with `boundary`), `model` being
/// what the provider receives in the `model` part.
pub(super) fn build_multipart(
    form: &EditForm,
    head: UpstreamRequest,
    boundary: String,
    model: &str,
) -> Result<UpstreamRequest, GatewayError> {
    let mut w = MultipartWriter::new(boundary);
    w.text("model", model);
    if let Some(p) = &form.prompt {
        w.text("prompt", p);
    }
    let n = form.n.map(|v| v.to_string());
    let partial = form.partial_images.map(|v| v.to_string());
    let compression = form.output_compression.map(|v| v.to_string());
    let fields: [(&str, Option<&str>); 10] = [
        ("n", n.as_deref()),
        ("size", form.size.as_deref()),
        ("response_format", form.response_format.as_deref()),
        ("quality", form.quality.as_deref()),
        ("background", form.background.as_deref()),
        ("input_fidelity", form.input_fidelity.as_deref()),
        ("output_format", form.output_format.as_deref()),
        ("output_compression", compression.as_deref()),
        ("partial_images", partial.as_deref()),
        ("user", form.user.as_deref()),
    ];
    for (name, value) in fields {
        if let Some(v) = value {
            w.text(name, v);
        }
    }
    if form.stream {
        w.text("stream", "true");
    }
    for (name, value) in &form.extra_text {
        w.text(name, value);
    }
    let image_field = if form.images.len() == 1 { "image" } else { "image[]" };
    for (i, img) in form.images.iter().enumerate() {
        let kind = img
            .kind
            .ok_or_else(|| GatewayError::Internal("image part without a detected type".into()))?;
        let filename = if form.images.len() == 1 {
            format!("image.{}", kind.extension())
        } else {
            format!("image_{i}.{}", kind.extension())
        };
        w.file(image_field, &filename, kind.mime(), img);
    }
    if let Some(mask) = &form.mask {
        let kind = mask
            .kind
            .ok_or_else(|| GatewayError::Internal("mask part without a detected type".into()))?;
        w.file("mask", &format!("mask.{}", kind.extension()), kind.mime(), mask);
    }
    for part in &form.extra_files {
        let content_type = match part.kind {
            Some(kind) => kind.mime(),
            None => safe_content_type(part.declared_type.as_deref()),
        };
        let filename = part.filename.clone().unwrap_or_else(|| "file".to_string());
        w.file(&part.field, &filename, content_type, part);
    }
    let mut req = head;
    req.body = w.finish();
    Ok(req)
}

/// Converts an OpenAI `ImagesResponse` (or error) into the unified answer: the provider's
/// members as sent (its `extra_fields` replaced), `data[].index` filled in,
/// `usage.num_input_images` added. The images are shared with the provider's body, not copied
/// ([`AnswerWriter`]).
pub(super) fn convert_images_response(
    resp: &UpstreamResponse,
    cx: &ResponseContext<'_>,
) -> Result<UnifiedAnswer, GatewayError> {
    if !(200..300).contains(&resp.status) {
        return Err(provider_error(cx.provider, resp));
    }
    let doc = parse_images_response(&resp.body, cx)?;
    let mut out = AnswerWriter::new(vec![resp.body.clone()]);
    write_images_response(&doc, cx, &mut out)?;
    Ok(out.finish())
}

/// A success body as an `ImagesResponse` object with its `data` array expanded, or a 502.
fn parse_images_response<'a>(body: &'a [u8], cx: &ResponseContext<'_>) -> Result<ExpandedObject<'a>, GatewayError> {
    let bad = |detail: String| GatewayError::UpstreamProtocol {
        provider: cx.provider.to_string(),
        detail,
    };
    let doc = ExpandedObject::parse(body, "data")
        .map_err(|e| bad(format!("the success body is not an ImagesResponse object ({e})")))?;
    if doc.position.is_none() {
        return Err(bad("the success body has no 'data' array".into()));
    }
    Ok(doc)
}

/// The unified answer of [`convert_images_response`] for `doc`, written into `out`.
fn write_images_response<'a, O: JsonOut>(
    doc: &ExpandedObject<'a>,
    cx: &ResponseContext<'_>,
    out: &mut O,
) -> Result<(), GatewayError> {
    let extra = serde_json::to_vec(&extra_fields(cx)).map_err(|e| GatewayError::Internal(e.to_string()))?;
    let images = cx.num_input_images.to_string();
    doc.write(
        out,
        "data",
        &mut |items, out| {
            out.put(b"[");
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.put(b",");
                }
                let index = i.to_string();
                let add: &[(&str, &[u8])] = if item.get("index").is_some() {
                    &[]
                } else {
                    &[("index", index.as_bytes())]
                };
                item.write(out, &[], &mut |_, _, _| Ok(false), add)?;
            }
            out.put(b"]");
            Ok(())
        },
        &["extra_fields"],
        &mut |key, value, out| match key {
            "usage" => match RawObject::parse(value.get().as_bytes()) {
                Ok(usage) if usage.get("num_input_images").is_none() => {
                    usage.write(
                        out,
                        &[],
                        &mut |_, _, _| Ok(false),
                        &[("num_input_images", images.as_bytes())],
                    )?;
                    Ok(true)
                }
                _ => Ok(false),
            },
            _ => Ok(false),
        },
        &[("extra_fields", &extra)],
    )
    .map_err(|e| GatewayError::Internal(e.to_string()))
}

/// Bifrost's `extra_fields` for a successful image edit.
pub fn extra_fields(cx: &ResponseContext<'_>) -> Value {
    json!({
        "request_type": "image_edit",
        "provider": cx.provider,
        "model_requested": cx.model_requested,
        "model_deployment": cx.model_deployment,
        "latency": cx.latency_ms,
        "chunk_index": 0,
    })
}

/// An OpenAI-style error answer as a provider error: the `error` object is kept as sent (an
/// error given as a bare string becomes its message); a body that is not JSON becomes a short,
/// printable excerpt.
pub fn provider_error(provider: &str, resp: &UpstreamResponse) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let error = match parsed {
        Some(Value::Object(mut o)) => match o.remove("error") {
            Some(Value::Object(e)) => e,
            Some(Value::String(s)) => {
                let mut e = Map::new();
                e.insert("message".into(), json!(s));
                e
            }
            _ => match o.remove("message") {
                Some(Value::String(s)) => {
                    let mut e = Map::new();
                    e.insert("message".into(), json!(s));
                    e
                }
                _ => Map::new(),
            },
        },
        _ => Map::new(),
    };
    let mut error = error;
    if !error.contains_key("message") {
        let excerpt: String = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        let msg = if excerpt.trim().is_empty() {
            format!("provider '{provider}' answered HTTP {}", resp.status)
        } else {
            format!("provider '{provider}' answered HTTP {}: {excerpt}", resp.status)
        };
        error.insert("message".into(), json!(msg));
    }
    GatewayError::Provider {
        provider: provider.to_string(),
        status: resp.status,
        error,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use crate::config::from_yaml_str_with_env;
    use crate::form::EditType;
    use crate::imaging::ImageKind;
    use crate::route::Router;
    use crate::spool::{Spool, SpoolRange};

    fn target(model: &str) -> Target {
        let yaml = "providers:\n  - name: openai\n    kind: openai\n    base_url: https://api.example.com/v1\n    keys:\n      - { name: k, value: sk-upstream }\n";
        let cfg = from_yaml_str_with_env(yaml, &|_| None).expect("config");
        Router::new(&cfg).select("openai", model, 0.0).expect("target")
    }

    fn part(field: &str, kind: ImageKind, start: u64, len: u64) -> FilePart {
        FilePart {
            field: field.into(),
            filename: Some("x".into()),
            kind: Some(kind),
            declared_type: Some("application/octet-stream".into()),
            range: SpoolRange { start, len },
        }
    }

    /// Renders the body plan against a spool, and parses it back with multer: (name, filename,
    /// content type, bytes) per part.
    pub(crate) async fn render(
        req: &UpstreamRequest,
        spool: &Spool,
    ) -> Vec<(String, Option<String>, Option<String>, Vec<u8>)> {
        let body = req.render(spool).unwrap();
        let ct = req
            .headers
            .iter()
            .find(|(k, _)| k == http::header::CONTENT_TYPE)
            .unwrap()
            .1
            .clone();
        let boundary = multer::parse_boundary(ct).unwrap();
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(Bytes::from(body)) });
        let mut mp = multer::Multipart::new(stream, boundary);
        let mut out = Vec::new();
        while let Some(f) = mp.next_field().await.unwrap() {
            let name = f.name().unwrap().to_string();
            let fname = f.file_name().map(str::to_string);
            let ct = f.content_type().map(|m| m.to_string());
            out.push((name, fname, ct, f.bytes().await.unwrap().to_vec()));
        }
        out
    }

    #[tokio::test]
    async fn one_image_with_mask_and_gateway_fields_dropped() {
        let mut spool = Spool::new(16, None);
        spool
            .append(Bytes::from_static(b"\x89PNG\r\n\x1a\nimage-bytes"))
            .unwrap();
        spool
            .append(Bytes::from_static(b"\x89PNG\r\n\x1a\nmask-bytes"))
            .unwrap();
        let form = EditForm {
            provider: "openai".into(),
            model: "gpt-image-1".into(),
            prompt: Some("make it blue".into()),
            images: vec![part("image[]", ImageKind::Png, 0, 19)],
            mask: Some(part("mask", ImageKind::Png, 19, 18)),
            edit_type: Some(EditType::Inpainting),
            n: Some(2),
            size: Some("1024x1024".into()),
            seed: Some(7),
            negative_prompt: Some("no".into()),
            num_inference_steps: Some(3),
            extra_text: vec![("safety_identifier".into(), "s\"1".into())],
            ..Default::default()
        };
        let req = OpenAiAdapter
            .build_request(&form, &target("gpt-image-1"), "rid-1")
            .unwrap();
        assert_eq!(req.path, "/v1/images/edits");
        let auth = &req
            .headers
            .iter()
            .find(|(k, _)| k == http::header::AUTHORIZATION)
            .unwrap()
            .1;
        assert_eq!(auth, "Bearer sk-upstream");
        let parts = render(&req, &spool).await;
        let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            names,
            ["model", "prompt", "n", "size", "safety_identifier", "image", "mask"]
        );
        assert_eq!(parts[0].3, b"gpt-image-1");
        assert_eq!(parts[4].3, b"s\"1");
        assert_eq!(parts[5].1.as_deref(), Some("image.png"));
        assert_eq!(parts[5].2.as_deref(), Some("image/png"));
        assert_eq!(parts[5].3, b"\x89PNG\r\n\x1a\nimage-bytes");
        assert_eq!(parts[6].3, b"\x89PNG\r\n\x1a\nmask-bytes");
    }

    #[tokio::test]
    async fn several_images_use_the_array_name() {
        let mut spool = Spool::new(1024, None);
        spool
            .append(Bytes::from_static(b"\xFF\xD8\xFFjpegRIFF\0\0\0\0WEBPwebp"))
            .unwrap();
        let form = EditForm {
            provider: "openai".into(),
            model: "m".into(),
            prompt: Some("p".into()),
            images: vec![
                part("image", ImageKind::Jpeg, 0, 7),
                part("image", ImageKind::Webp, 7, 16),
            ],
            stream: false,
            ..Default::default()
        };
        let parts = render(&OpenAiAdapter.build_request(&form, &target("m"), "r").unwrap(), &spool).await;
        assert_eq!(parts[2].0, "image[]");
        assert_eq!(parts[2].1.as_deref(), Some("image_0.jpg"));
        assert_eq!(parts[2].2.as_deref(), Some("image/jpeg"));
        assert_eq!(parts[3].1.as_deref(), Some("image_1.webp"));
        assert_eq!(parts[3].3, b"RIFF\0\0\0\0WEBPwebp");
    }

    #[test]
    fn hostile_names_are_escaped() {
        assert_eq!(escape_name("a\"\r\nb"), "a%22%0D%0Ab");
    }

    /// A 200 answer with `body`.
    pub(crate) fn success(body: String) -> UpstreamResponse {
        UpstreamResponse {
            retry_after: None,
            status: 200,
            content_type: None,
            body: Bytes::from(body),
        }
    }

    /// [`convert_images_response`] (for other modules' tests).
    pub(crate) fn convert(resp: &UpstreamResponse, cx: &ResponseContext<'_>) -> UnifiedAnswer {
        convert_images_response(resp, cx).unwrap()
    }

    fn cx() -> ResponseContext<'static> {
        ResponseContext {
            provider: "openai",
            model_requested: "gpt-image-1",
            model_deployment: "gpt-image-1",
            latency_ms: 12,
            num_input_images: 2,
        }
    }

    #[test]
    fn success_gets_index_and_extra_fields() {
        let resp = UpstreamResponse {
            retry_after: None,
            status: 200,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(
                br#"{"created":1,"data":[{"b64_json":"AAA"},{"b64_json":"BBB"}],"usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3},"future_field":true}"#,
            ),
        };
        let out: Value =
            serde_json::from_slice(&OpenAiAdapter.convert_response(&resp, &cx()).unwrap().to_bytes()).unwrap();
        assert_eq!(out["data"][1]["index"], 1);
        assert_eq!(out["data"][1]["b64_json"], "BBB");
        assert_eq!(out["future_field"], true);
        assert_eq!(out["usage"]["num_input_images"], 2);
        assert_eq!(out["extra_fields"]["request_type"], "image_edit");
        assert_eq!(out["extra_fields"]["provider"], "openai");
        assert_eq!(out["extra_fields"]["latency"], 12);
    }

    /// The converted answer, byte for byte: the provider's members in order and as sent,
    /// `index` added, `usage.num_input_images` added, `extra_fields` replaced and last.
    #[test]
    fn converted_answer_bytes_are_exact() {
        let image = format!("\"{}\"", "QUJD".repeat(super::super::answer::SPLICE_MIN_BYTES));
        let body = format!(
            r#"{{"created":1,"extra_fields":{{"old":true}},"data":[{{"b64_json":{image},"revised_prompt":"a \"cat\""}},{{"url":"u","index":7}}],"usage":{{"total_tokens":3}},"z":[1, 2]}}"#
        );
        let resp = success(body);
        let answer = OpenAiAdapter.convert_response(&resp, &cx()).unwrap();
        let extra = serde_json::to_string(&extra_fields(&cx())).unwrap();
        let expected = format!(
            r#"{{"created":1,"data":[{{"b64_json":{image},"revised_prompt":"a \"cat\"","index":0}},{{"url":"u","index":7}}],"usage":{{"total_tokens":3,"num_input_images":2}},"z":[1, 2],"extra_fields":{extra}}}"#
        );
        assert_eq!(String::from_utf8(answer.to_bytes().to_vec()).unwrap(), expected);
        assert_eq!(answer.len(), expected.len());
        // The image is the provider's own bytes, not a copy.
        assert_eq!(answer.shared_len(), image.len());
        let at = resp
            .body
            .windows(image.len())
            .position(|w| w == image.as_bytes())
            .unwrap();
        let shared = answer.pieces().find(|p| p.len() == image.len()).unwrap();
        assert_eq!(shared.as_ptr(), resp.body[at..].as_ptr());
    }

    /// A random `ImagesResponse`-like answer: members in random order with random spacing,
    /// images of every size around the splice threshold, escapes, nested values, `index`,
    /// `usage` and `extra_fields` present or not. Returns the body and how many of its bytes
    /// are long strings the answer should share (top-level and `data` item values).
    pub(crate) fn random_images_response(rng: &mut fastrand::Rng) -> (String, usize) {
        let min = super::super::answer::SPLICE_MIN_BYTES;
        let sp = |rng: &mut fastrand::Rng| [" ", "", "\n", "\t"][rng.usize(0..4)].to_string();
        let mut shared = 0;
        let string = |rng: &mut fastrand::Rng, shared: &mut usize| {
            let len = [0, 1, 100, min - 3, min - 2, min, min + rng.usize(0..50_000)][rng.usize(0..7)];
            let mut s = String::with_capacity(len + 2);
            s.push('"');
            let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
            for _ in 0..len {
                s.push(alphabet[rng.usize(0..64)] as char);
            }
            if rng.bool() {
                s.push_str(r#"\\\"\u00e9é="#);
            }
            s.push('"');
            if s.len() >= min {
                *shared += s.len();
            }
            s
        };
        let mut items = Vec::new();
        for _ in 0..rng.usize(0..4) {
            let mut members = vec![format!("\"b64_json\":{}{}", sp(rng), string(rng, &mut shared))];
            if rng.bool() {
                members.push(r#""revised_prompt":"a \"b\" \u2028 😀""#.to_string());
            }
            if rng.bool() {
                members.push(format!("\"index\":{}", rng.u8(..)));
            }
            if rng.bool() {
                members.push("\"nested\":{\"a\":[1,{\"b\":null}],\"extra_fields\":{}}".into());
            }
            rng.shuffle(&mut members);
            items.push(format!("{{{}}}", members.join(&format!(",{}", sp(rng)))));
        }
        let mut members = vec![
            format!("\"created\":{}", rng.u32(..)),
            format!("\"data\":{}[{}]", sp(rng), items.join(",")),
        ];
        if rng.bool() {
            members.push(format!("\"note\":{}", string(rng, &mut shared)));
        }
        match rng.u8(0..3) {
            0 => members.push("\"usage\":{\"total_tokens\":3, \"input_tokens_details\":{\"image_tokens\":1}}".into()),
            1 => members.push("\"usage\":{\"num_input_images\":9}".into()),
            _ => {}
        }
        if rng.bool() {
            members.push("\"extra_fields\":{\"provider\":\"upstream\"}".into());
        }
        if rng.bool() {
            members.push(format!("\"long_array\":[{}]", vec!["1234567890"; min / 8].join(",")));
        }
        rng.shuffle(&mut members);
        let body = format!("{}{{{}{}}}{}", sp(rng), sp(rng), members.join(","), sp(rng));
        (body, shared)
    }

    /// Differential: over varied answers, the spliced answer is byte for byte what the
    /// converter writes into one buffer (the output before answers were spliced), and shares
    /// exactly the long strings.
    #[test]
    fn spliced_answers_equal_the_copied_ones() {
        let mut rng = fastrand::Rng::with_seed(12);
        let mut shared_seen = 0;
        for _ in 0..300 {
            let (body, shared) = random_images_response(&mut rng);
            let resp = success(body);
            let answer = OpenAiAdapter.convert_response(&resp, &cx()).unwrap();
            let doc = parse_images_response(&resp.body, &cx()).unwrap();
            let mut copied = Vec::new();
            write_images_response(&doc, &cx(), &mut copied).unwrap();
            assert_eq!(
                answer.to_bytes(),
                copied,
                "{}",
                String::from_utf8_lossy(&resp.body[..200.min(resp.body.len())])
            );
            assert_eq!(answer.len(), copied.len());
            assert_eq!(answer.shared_len(), shared);
            assert!(answer.pieces().all(|p| !p.is_empty()));
            serde_json::from_slice::<Value>(&copied).unwrap();
            shared_seen += shared;
        }
        assert!(shared_seen > 0);
    }

    #[test]
    fn errors_keep_status_and_object() {
        let resp = UpstreamResponse {
            retry_after: None,
            status: 400,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(
                br#"{"error":{"message":"Invalid value for 'size'","type":"invalid_request_error","param":"size","code":"invalid_value"}}"#,
            ),
        };
        let e = OpenAiAdapter.convert_response(&resp, &cx()).unwrap_err();
        assert_eq!(e.status(), 400);
        let v = e.to_json(&Default::default());
        assert_eq!(v["is_bifrost_error"], false);
        assert_eq!(v["error"]["param"], "size");
        assert_eq!(v["error"]["code"], "invalid_value");

        let html = UpstreamResponse {
            retry_after: None,
            status: 503,
            content_type: Some("text/html".into()),
            body: Bytes::from_static(b"<html>\nService Unavailable\n</html>"),
        };
        let v = OpenAiAdapter
            .convert_response(&html, &cx())
            .unwrap_err()
            .to_json(&Default::default());
        assert_eq!(v["status_code"], 503);
        assert!(v["error"]["message"].as_str().unwrap().contains("Service Unavailable"));
    }

    #[test]
    fn malformed_success_is_502() {
        for body in [&b"not json"[..], b"[1,2]", b"{\"created\":1}"] {
            let resp = UpstreamResponse {
                retry_after: None,
                status: 200,
                content_type: None,
                body: Bytes::copy_from_slice(body),
            };
            assert_eq!(OpenAiAdapter.convert_response(&resp, &cx()).unwrap_err().status(), 502);
        }
    }
}
