//! What each provider kind's wire looks like, for the conformance suite (`tests/conformance`)
//! and the per-kind tests: one [`Wire`] per kind (and model family) that knows how to configure
//! a provider of that kind in front of a [`MockUpstream`], how to script the mock's answers
//! (polls and downloads included), what the upstream must receive for an edit (checked byte for
//! byte: method, path, every header, the whole body), what the model can and cannot do, and
//! how the provider reports an error.
//!
//! [`for_kind`] picks the description; `tests/conformance/main.rs` stamps the same cases on each.

pub mod azure;
pub mod bedrock;
pub mod gemini;
pub mod google;
pub mod huggingface;
pub mod openai;
pub mod polled;
pub mod stability;
pub mod vertex;
pub mod xai;

use super::{MockUpstream, Recorded};
use base64::Engine;
use refract::config::ProviderKind;
use refract::imaging::{encode_png, solid};

/// What the client sent for one edit, as the upstream must see it.
#[derive(Debug, Clone)]
pub struct Sent {
    /// `model` without the provider prefix.
    pub model: String,
    /// `prompt`.
    pub prompt: String,
    /// The images in order, byte for byte.
    pub images: Vec<Vec<u8>>,
    /// The mask as the client sends it, byte for byte: OpenAI's convention (alpha 0 = edit) or
    /// opaque white = edit ([`crate::common::white_edit_mask_png`]), the same edit area.
    pub mask: Option<Vec<u8>>,
    /// `stream=true`.
    pub stream: bool,
}

/// Whether a model serves a feature, or refuses it before any upstream call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capability {
    /// Served.
    Served,
    /// Refused with a 400 `unsupported_operation` naming `param`.
    Refused {
        /// The field the refusal names.
        param: &'static str,
    },
}

/// How a kind serves `stream=true`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// The provider streams: partial images then the completed one (OpenAI's events).
    NativePartials,
    /// The provider streams completed images only (Gemini's chunks).
    NativeCompleted,
    /// The provider cannot stream: the gateway asks for a whole answer and synthesizes
    /// `completed` events from it.
    Synthesized,
}

/// A form field the model cannot honour.
#[derive(Debug, Clone, Copy)]
pub struct Refusal {
    /// Field name.
    pub field: &'static str,
    /// Its value.
    pub value: &'static str,
    /// The `param` the 400 names.
    pub param: &'static str,
}

/// An error answer the provider gives, and what the client must get from it.
#[derive(Debug, Clone)]
pub struct UpstreamError {
    /// The provider's (and so the client's) status.
    pub status: u16,
    /// `error.message` the client must see.
    pub message: String,
}

/// What a model can and cannot do, as the conformance cases ask it.
#[derive(Debug, Clone, Copy)]
pub struct Abilities {
    /// Two images in one request.
    pub multi_image: Capability,
    /// A mask.
    pub mask: Capability,
    /// How `stream=true` is served.
    pub streams: Streams,
    /// Something the model cannot do.
    pub refusal: Refusal,
}

/// One provider kind's wire, as the conformance cases use it.
pub trait Wire {
    /// The kind.
    fn kind(&self) -> ProviderKind;
    /// The model the cases ask for (without the provider prefix).
    fn model(&self) -> &str;
    /// The `providers:` list entry for a provider `name` of this kind sending to `mock`.
    fn provider(&self, name: &str, mock: &MockUpstream) -> String;
    /// Form fields an edit needs besides `model`, `prompt` and the images (Stability has no
    /// mask-free prompt edit: it needs `type`).
    fn basic_fields(&self) -> Vec<(&'static str, &'static str)> {
        Vec::new()
    }
    /// Scripts `mock` to serve one edit whose result is `images` (a polled kind's submit,
    /// polls and downloads included).
    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]);
    /// Scripts `mock` to serve one `stream=true` edit whose result is `images`: a native stream
    /// where the kind streams, else the whole answer of [`Wire::serve`].
    fn serve_stream(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        self.serve(mock, images);
    }
    /// Asserts that `recs` (everything `mock` received) is exactly what this wire expects for
    /// one edit of `sent` answered by [`Wire::serve`] or [`Wire::serve_stream`].
    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent);
    /// What the model can and cannot do.
    fn abilities(&self) -> Abilities;
    /// Scripts `mock` to answer one edit with an error in the provider's own shape.
    fn serve_error(&self, mock: &MockUpstream) -> UpstreamError;
}

/// The wire of `kind` for `model`; panics for a (kind, model) no wire describes.
pub fn for_kind(kind: ProviderKind, model: &str) -> Box<dyn Wire> {
    match kind {
        ProviderKind::OpenAi => Box::new(openai::OpenAi::new(model)),
        ProviderKind::Azure => Box::new(azure::Azure::new(model)),
        ProviderKind::Gemini | ProviderKind::Vertex => {
            let host = google::GoogleHost::of(kind);
            if model.starts_with("imagen-") {
                Box::new(vertex::Imagen::new(model, host))
            } else {
                Box::new(gemini::Gemini::new(model, host))
            }
        }
        ProviderKind::Bedrock if model.contains("stability.") => Box::new(bedrock::BedrockStability::new(model)),
        ProviderKind::Bedrock => Box::new(bedrock::Bedrock::new(model)),
        ProviderKind::Stability => Box::new(stability::Stability::new(model)),
        ProviderKind::Bfl => Box::new(polled::Bfl::new(model)),
        ProviderKind::Fireworks => Box::new(polled::Fireworks::new(model)),
        ProviderKind::Replicate => Box::new(polled::Replicate::new(model)),
        ProviderKind::HuggingFace if model.starts_with("fal-ai/") => Box::new(huggingface::FalAi::new(model)),
        ProviderKind::HuggingFace => Box::new(huggingface::HuggingFace::new(model)),
        ProviderKind::Xai => Box::new(xai::Xai::new(model)),
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers the wires share
// ---------------------------------------------------------------------------------------------

/// Standard base64 with padding.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decodes standard base64, or the base64 of a `data:` URL.
pub fn unb64(s: &str) -> Vec<u8> {
    let s = s.split_once(";base64,").map_or(s, |(_, b)| b);
    base64::engine::general_purpose::STANDARD
        .decode(s)
        .unwrap_or_else(|e| panic!("not base64 ({e}): {}", &s[..s.len().min(60)]))
}

/// A `data:image/png;base64,…` URL.
pub fn png_data_url(png: &[u8]) -> String {
    format!("data:image/png;base64,{}", b64(png))
}

/// Result image `i` a mock answers with: a 2×2 PNG that says which it is.
pub fn result_png(i: usize) -> Vec<u8> {
    encode_png(&solid(2, 2, [(i * 40 + 10) as u8, 1, 2, 255])).expect("png")
}

/// A second input image (6×4, the size of `gradient_png`).
pub fn second_png() -> Vec<u8> {
    encode_png(&solid(6, 4, [9, 9, 9, 255])).expect("png")
}

/// Asserts that `rec` carried exactly the headers `expected` (names in any order, each once;
/// a value where one is given), that a `Content-Length` is the body's length, and that no
/// virtual key went upstream, in a header or in the body.
pub fn assert_headers(rec: &Recorded, expected: &[(&str, Option<&str>)]) {
    let mut got: Vec<&str> = rec.headers.iter().map(|(k, _)| k.as_str()).collect();
    got.sort_unstable();
    let mut want: Vec<&str> = expected.iter().map(|(k, _)| *k).collect();
    want.sort_unstable();
    assert_eq!(got, want, "header names of {} {}", rec.method, rec.path);
    for (name, value) in expected {
        if let Some(v) = value {
            assert_eq!(rec.header(name).as_deref(), Some(*v), "header {name} of {}", rec.path);
        }
    }
    if let Some(len) = rec.header("content-length") {
        assert_eq!(
            len.parse::<usize>().expect("a length"),
            rec.body.len(),
            "Content-Length"
        );
    }
    for (name, value) in &rec.headers {
        assert!(
            !String::from_utf8_lossy(value).contains("sk-bf-"),
            "virtual key leaked in {name}"
        );
    }
    assert!(
        !rec.body.windows(6).any(|w| w == b"sk-bf-"),
        "virtual key leaked in the body"
    );
}

/// As [`assert_headers`], with the headers the gateway adds to every provider request:
/// `Accept: accept`, `Accept-Encoding: identity` and its `x-request-id` (checked against the
/// client's answer by the cases).
pub fn assert_wire_headers(rec: &Recorded, accept: &str, expected: &[(&str, Option<&str>)]) {
    let mut all = expected.to_vec();
    all.extend([
        ("accept", Some(accept)),
        ("accept-encoding", Some("identity")),
        ("x-request-id", None),
    ]);
    assert_headers(rec, &all);
}

/// The body of `rec` as JSON, after checking it is compact JSON as the gateway writes it (the
/// parsed value written back gives the very bytes received: no stray white space, no duplicate
/// member, no odd escape).
pub fn json_body(rec: &Recorded) -> serde_json::Value {
    let v: serde_json::Value =
        serde_json::from_slice(&rec.body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&rec.body)));
    assert!(
        serde_json::to_vec(&v).expect("json") == rec.body,
        "the body is not compact JSON: {}",
        String::from_utf8_lossy(&rec.body[..rec.body.len().min(300)])
    );
    v
}

/// One multipart part as the checks compare it: name, file name, content type, bytes.
pub type PartView = (String, Option<String>, Option<String>, Vec<u8>);

/// A text part.
pub fn text_part(name: &str, value: &str) -> PartView {
    (name.into(), None, None, value.as_bytes().to_vec())
}

/// A file part.
pub fn file_part(name: &str, filename: &str, content_type: &str, data: &[u8]) -> PartView {
    (
        name.into(),
        Some(filename.into()),
        Some(content_type.into()),
        data.to_vec(),
    )
}

/// Asserts that `rec`'s body is, byte for byte, the multipart body of `want` in order, with
/// the boundary its `Content-Type` names (each part `--boundary`, `Content-Disposition`, a
/// `Content-Type` for files, a blank line, the content; then the closing boundary).
pub fn assert_multipart_exact(rec: &Recorded, want: &[PartView]) {
    let ct = rec.header("content-type").expect("Content-Type");
    let boundary = ct
        .strip_prefix("multipart/form-data; boundary=")
        .unwrap_or_else(|| panic!("not multipart: {ct}"));
    let names: Vec<(&str, Option<&str>)> = want.iter().map(|p| (p.0.as_str(), p.1.as_deref())).collect();
    let got: Vec<(String, Option<String>)> = super::parse_multipart(&ct, &rec.body)
        .into_iter()
        .map(|p| (p.name, p.filename))
        .collect();
    let got: Vec<(&str, Option<&str>)> = got.iter().map(|(n, f)| (n.as_str(), f.as_deref())).collect();
    assert_eq!(got, names, "the parts, in order");
    let mut body = Vec::new();
    for (name, filename, content_type, data) in want {
        body.extend_from_slice(format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"").as_bytes());
        if let Some(f) = filename {
            body.extend_from_slice(format!("; filename=\"{f}\"").as_bytes());
        }
        if let Some(t) = content_type {
            body.extend_from_slice(format!("\r\nContent-Type: {t}").as_bytes());
        }
        body.extend_from_slice(b"\r\n\r\n");
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    assert!(body == rec.body, "the multipart body differs from the expected bytes");
}

/// Asserts a request with no body (a poll, a download): method, path, `Content-Length: 0`,
/// `Accept-Encoding: identity`, `Accept: accept` where given, and exactly the other headers
/// `expected`.
pub fn assert_bodiless(
    rec: &Recorded,
    method: &str,
    path: &str,
    accept: Option<&str>,
    expected: &[(&str, Option<&str>)],
) {
    assert_eq!((rec.method.as_str(), rec.path.as_str()), (method, path));
    let mut all = expected.to_vec();
    all.extend([("content-length", Some("0")), ("accept-encoding", Some("identity"))]);
    if let Some(a) = accept {
        all.push(("accept", Some(a)));
    }
    assert_headers(rec, &all);
    assert!(rec.body.is_empty(), "{method} {path} has a body");
}

/// Whether `png` is a mask in OpenAI's convention: some pixel's alpha below 255.
pub fn is_alpha_mask(png: &[u8]) -> bool {
    let m = refract::imaging::decode_png(png).expect("the mask is a PNG");
    m.pixels.chunks_exact(4).any(|p| p[3] < 255)
}

/// Asserts a mask converted to OpenAI's convention: an RGBA PNG whose top two rows (the
/// fixtures' edit area) are fully transparent and the rest opaque.
pub fn assert_alpha_mask(png: &[u8]) {
    assert!(
        refract::imaging::png_info(png).expect("a PNG").alpha,
        "the mask has an alpha channel"
    );
    let m = refract::imaging::decode_png(png).expect("the mask is a PNG");
    assert_eq!((m.width, m.height), (6, 4));
    for y in 0..4 {
        for x in 0..6 {
            let want = if y < 2 { 0 } else { 255 };
            assert_eq!(m.pixel(x, y)[3], want, "mask alpha at ({x},{y})");
        }
    }
}

/// Asserts a converted mask: opaque, the unified mask's top two rows (its edit area) `edit`,
/// the rest `255 - edit`, every pixel gray.
pub fn assert_converted_mask(png: &[u8], edit: u8) {
    let m = refract::imaging::decode_png(png).expect("the mask is a PNG");
    assert_eq!((m.width, m.height), (6, 4));
    for y in 0..4 {
        for x in 0..6 {
            let want = if y < 2 { edit } else { 255 - edit };
            assert_eq!(m.pixel(x, y), [want, want, want, 255], "mask pixel ({x},{y})");
        }
    }
}
