//! Test support shared by the adapters' unit tests: targets, spools, forms and answers, the
//! body rendered and parsed back, a unified mask, and [`build`] / [`build_from_spool`], which
//! run an adapter's one build entry with a fixed clock ([`CLOCK_SECS`]) and, for the latter,
//! the mask converted on the calling thread as the gateway converts it on its decode pool.

use crate::error::GatewayError;
use crate::form::{EditForm, FilePart};
use crate::imaging::{encode_png, solid, ImageKind};
use crate::providers::kernel::images_api::convert_images_response;
use crate::providers::kernel::masks;
use crate::providers::kernel::polling::{FollowContext, FollowUp};
use crate::providers::{
    BuildScope, ProviderAdapter, ResponseContext, UnifiedAnswer, UpstreamRequest, UpstreamResponse,
};
use crate::route::Target;
use crate::spool::{Spool, SpoolRange};
use bytes::Bytes;
use serde_json::Value;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The wall time of every test build, in seconds since the epoch (2023-11-14T22:13:20Z).
pub const CLOCK_SECS: u64 = 1_700_000_000;

/// The random bits of every test build (multipart boundaries).
pub const NONCE: u128 = 0x5eed_0000_0000_0000_0000_0000_0000_0001;

/// The wall time of every test build.
pub fn clock() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(CLOCK_SECS)
}

/// `adapter`'s build for `form` to `target` with an empty spool and no converted mask (a form
/// whose mask the adapter wants converted is refused, as the gateway never builds it so).
pub fn build(
    adapter: &dyn ProviderAdapter,
    form: &EditForm,
    target: &Target,
    request_id: &str,
) -> Result<UpstreamRequest, GatewayError> {
    build_from_spool(adapter, form, &Spool::new(0, None), target, request_id)
}

/// `adapter`'s build for `form` (its files in `spool`) to `target`, the mask converted first
/// when the adapter asks for it, on this thread.
pub fn build_from_spool(
    adapter: &dyn ProviderAdapter,
    form: &EditForm,
    spool: &Spool,
    target: &Target,
    request_id: &str,
) -> Result<UpstreamRequest, GatewayError> {
    let mask = match adapter.mask_convention(form, &target.model) {
        Some(convention) if !spool.is_empty() => masks::convert_now(form, spool, convention)?,
        _ => None,
    };
    adapter.build(&BuildScope {
        form,
        spool,
        mask: mask.as_ref(),
        target,
        request_id,
        now: clock(),
        nonce: NONCE,
    })
}

/// The answer context of the OpenAI fixtures: provider `openai`, model `gpt-image-1`, 12 ms,
/// two input images, created at [`CLOCK_SECS`].
pub fn openai_cx() -> ResponseContext<'static> {
    ResponseContext {
        provider: "openai",
        model_requested: "gpt-image-1",
        model_deployment: "gpt-image-1",
        latency_ms: 12,
        num_input_images: 2,
        created: CLOCK_SECS,
    }
}

/// A 4×3 unified mask whose left column is fully transparent (edit).
pub fn unified_mask() -> Vec<u8> {
    let mut m = solid(4, 3, [0, 0, 0, 255]);
    for y in 0..3 {
        m.pixels[(y * 4 * 4 + 3) as usize] = 0;
    }
    encode_png(&m).unwrap()
}

/// Renders the body plan against a spool, and parses it back with multer: (name, filename,
/// content type, bytes) per part.
pub async fn render(req: &UpstreamRequest, spool: &Spool) -> Vec<(String, Option<String>, Option<String>, Vec<u8>)> {
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

/// A target of provider `p` of `kind` with key `secret-key` and extra provider lines.
pub fn target(kind: &str, model: &str, extra: &str) -> Target {
    let yaml = format!(
            "providers:\n  - name: p\n    kind: {kind}\n    poll_interval_ms: 250\n{extra}    keys:\n      - {{name: k, value: secret-key}}\n"
        );
    let cfg = crate::config::from_yaml_str_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    crate::route::Router::new(&cfg).select("p", model, 0.0).unwrap()
}

/// A spool holding `files` in order, and their parts.
pub fn spool_with(files: &[(&str, ImageKind, Vec<u8>)]) -> (Spool, Vec<FilePart>) {
    let mut spool = Spool::new(1 << 20, None);
    let mut parts = Vec::new();
    for (field, kind, bytes) in files {
        let start = spool.append(Bytes::from(bytes.clone())).unwrap();
        parts.push(FilePart {
            field: field.to_string(),
            filename: None,
            kind: Some(*kind),
            declared_type: None,
            range: SpoolRange {
                start,
                len: bytes.len() as u64,
            },
        });
    }
    (spool, parts)
}

/// A form for `model` with `images`, `mask` and a prompt.
pub fn form(model: &str, images: Vec<FilePart>, mask: Option<FilePart>) -> EditForm {
    EditForm {
        provider: "p".into(),
        model: model.into(),
        prompt: Some("make it \"red\"".into()),
        images,
        mask,
        ..Default::default()
    }
}

/// The rendered JSON body.
pub fn rendered(req: &UpstreamRequest, spool: &Spool) -> Value {
    let body = req.render(spool).unwrap();
    assert_eq!(body.len() as u64, req.content_length());
    serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)))
}

/// Decodes standard base64 (after a `data:` prefix, if any).
pub fn unb64(v: &Value) -> Vec<u8> {
    let s = v.as_str().unwrap();
    let s = s.split_once(";base64,").map_or(s, |(_, b)| b);
    base64::Engine::decode(&base64::engine::general_purpose::STANDARD, s).unwrap()
}

/// A follow-up context for `target`.
pub fn cx(target: &Target, want_url: bool) -> FollowContext<'_> {
    FollowContext {
        target,
        request_id: "rid",
        want_url,
        poll_interval: Duration::from_millis(250),
        response: ResponseContext {
            provider: "p",
            model_requested: "m",
            model_deployment: "m",
            latency_ms: 1,
            num_input_images: 1,
            created: 1_700_000_000,
        },
    }
}

/// A JSON answer.
pub fn answer(status: u16, body: Value) -> UpstreamResponse {
    UpstreamResponse {
        retry_after: None,
        status,
        content_type: Some("application/json".into()),
        body: Bytes::from(serde_json::to_vec(&body).unwrap()),
    }
}

/// A JSON answer given as text (kept byte for byte, valid or not).
pub fn json_text(status: u16, body: &str) -> UpstreamResponse {
    UpstreamResponse {
        retry_after: None,
        status,
        content_type: Some("application/json".into()),
        body: Bytes::from(body.to_string()),
    }
}

/// An image answer.
pub fn image(bytes: &[u8]) -> UpstreamResponse {
    UpstreamResponse {
        retry_after: None,
        status: 200,
        content_type: Some("image/png".into()),
        body: Bytes::from(bytes.to_vec()),
    }
}

/// The request, target URL and wait of a [`FollowUp::Request`].
pub fn request(f: FollowUp) -> (UpstreamRequest, Option<String>, Duration) {
    match f {
        FollowUp::Request { request, to, after } => (request, to, after),
        other => panic!("expected a request, got {other:?}"),
    }
}

/// The JSON of a [`FollowUp::Answer`].
pub fn final_answer(f: FollowUp) -> Value {
    match f {
        FollowUp::Answer(b) => serde_json::from_slice(&b.to_bytes()).unwrap(),
        other => panic!("expected an answer, got {other:?}"),
    }
}

/// A 200 answer with `body`.
pub fn success(body: String) -> UpstreamResponse {
    UpstreamResponse {
        retry_after: None,
        status: 200,
        content_type: None,
        body: Bytes::from(body),
    }
}

/// [`convert_images_response`], unwrapped.
pub fn convert(resp: &UpstreamResponse, cx: &ResponseContext<'_>) -> UnifiedAnswer {
    convert_images_response(resp, cx).unwrap()
}

/// A random `ImagesResponse`-like answer: members in random order with random spacing,
/// images of every size around the splice threshold, escapes, nested values, `index`,
/// `usage` and `extra_fields` present or not. Returns the body and how many of its bytes
/// are long strings the answer should share (top-level and `data` item values).
pub fn random_images_response(rng: &mut fastrand::Rng) -> (String, usize) {
    let min = crate::providers::answer::SPLICE_MIN_BYTES;
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
