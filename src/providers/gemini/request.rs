//! The `generateContent` request body, shared by kind `gemini` and Vertex AI Gemini models.
//!
//! The body is a plan of segments: literal JSON (built here, the prompt escaped by serde_json)
//! around one [`BodySegment::Base64`] per image, which the exchange encodes from the spool
//! straight into the outgoing buffers. No image byte is copied into a string here.

use super::super::google::json_post;
use super::super::{BodySegment, UpstreamRequest};
use crate::error::GatewayError;
use crate::form::EditForm;
use bytes::Bytes;
use serde_json::{json, Map, Value};

/// `imageConfig.aspectRatio` values Gemini accepts, with their width/height ratio.
const ASPECT_RATIOS: [(&str, f64); 14] = [
    ("1:1", 1.0),
    ("1:4", 0.25),
    ("4:1", 4.0),
    ("1:8", 0.125),
    ("8:1", 8.0),
    ("2:3", 2.0 / 3.0),
    ("3:2", 1.5),
    ("3:4", 0.75),
    ("4:3", 4.0 / 3.0),
    ("4:5", 0.8),
    ("5:4", 1.25),
    ("9:16", 9.0 / 16.0),
    ("16:9", 16.0 / 9.0),
    ("21:9", 21.0 / 9.0),
];

/// How far (relative) a requested ratio may be from the nearest supported one.
const RATIO_TOLERANCE: f64 = 0.05;

/// The `imageConfig` entries for `size`: `(aspectRatio, imageSize)`, `None` for `auto` or no
/// size. Called when the request is built; `Err` (400 naming `size`) when `WxH` is not within
/// 5 % of a supported ratio.
pub fn image_config_for_size(
    size: Option<&str>,
    provider: &str,
) -> Result<Option<(&'static str, &'static str)>, GatewayError> {
    let Some(size) = size.filter(|s| *s != "auto") else {
        return Ok(None);
    };
    let refuse = |why: &str| GatewayError::Unsupported {
        provider: provider.to_string(),
        param: "size".into(),
        message: format!("size={size}: {why}"),
    };
    let (w, h) = size
        .split_once('x')
        .and_then(|(w, h)| Some((w.parse::<u32>().ok()?, h.parse::<u32>().ok()?)))
        .filter(|(w, h)| *w > 0 && *h > 0)
        .ok_or_else(|| refuse("expected WxH or auto"))?;
    let ratio = f64::from(w) / f64::from(h);
    let (name, nearest) = nearest_ratio(ratio, &ASPECT_RATIOS);
    if (ratio / nearest).ln().abs() > RATIO_TOLERANCE.ln_1p() {
        let names: Vec<&str> = ASPECT_RATIOS.iter().map(|r| r.0).collect();
        return Err(refuse(&format!(
            "the aspect ratio is not within 5 % of a Gemini ratio ({})",
            names.join(", ")
        )));
    }
    let long = w.max(h);
    let image_size = match long {
        0..=1024 => "1K",
        1025..=2048 => "2K",
        _ => "4K",
    };
    Ok(Some((name, image_size)))
}

/// The entry of `table` (name, width/height) nearest to `ratio` on a log scale (`1:1` when the
/// table is empty).
pub fn nearest_ratio(ratio: f64, table: &[(&'static str, f64)]) -> (&'static str, f64) {
    table
        .iter()
        .copied()
        .min_by(|a, b| (ratio / a.1).ln().abs().total_cmp(&(ratio / b.1).ln().abs()))
        .unwrap_or(("1:1", 1.0))
}

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

#[cfg(test)]
mod tests {
    use super::super::GeminiAdapter;
    use super::*;
    use crate::config::from_yaml_str_with_env;
    use crate::form::FilePart;
    use crate::imaging::ImageKind;
    use crate::providers::ProviderAdapter;
    use crate::route::{Router, Target};
    use crate::spool::{Spool, SpoolRange};
    use base64::Engine;

    fn target(base_url: &str, model: &str) -> Target {
        let yaml = format!(
            "providers:\n  - name: gem\n    kind: gemini\n    base_url: {base_url}\n    keys: [{{ name: k, value: gm-key }}]\n"
        );
        let cfg = from_yaml_str_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        Router::new(&cfg).select("gem", model, 0.0).unwrap()
    }

    fn part(kind: ImageKind, start: u64, len: u64) -> FilePart {
        FilePart {
            field: "image[]".into(),
            filename: None,
            kind: Some(kind),
            declared_type: Some("application/octet-stream".into()),
            range: SpoolRange { start, len },
        }
    }

    /// A spool holding a PNG-like and a JPEG-like file of awkward lengths, and their parts.
    fn spool() -> (Spool, Vec<Vec<u8>>, Vec<FilePart>) {
        let a: Vec<u8> = b"\x89PNG\r\n\x1a\n"
            .iter()
            .copied()
            .chain((0..1000u32).map(|i| (i * 31) as u8))
            .collect();
        let b: Vec<u8> = [0xFF, 0xD8, 0xFF]
            .into_iter()
            .chain((0..77u32).map(|i| (i * 7 + 3) as u8))
            .collect();
        let mut spool = Spool::new(64, None);
        spool.append(Bytes::from(a.clone())).unwrap();
        spool.append(Bytes::from(b.clone())).unwrap();
        let parts = vec![
            part(ImageKind::Png, 0, a.len() as u64),
            part(ImageKind::Jpeg, a.len() as u64, b.len() as u64),
        ];
        (spool, vec![a, b], parts)
    }

    fn form(images: Vec<FilePart>) -> EditForm {
        EditForm {
            provider: "gem".into(),
            model: "gemini-2.5-flash-image".into(),
            prompt: Some("make it \"blue\"\n<script>".into()),
            images,
            ..Default::default()
        }
    }

    fn rendered(req: &UpstreamRequest, spool: &Spool) -> Value {
        let body = req.render(spool).unwrap();
        assert_eq!(body.len() as u64, req.content_length());
        serde_json::from_slice(&body).unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&body)))
    }

    #[test]
    fn body_inlines_every_image_then_the_prompt() {
        let (spool, files, parts) = spool();
        let f = EditForm {
            n: Some(3),
            seed: Some(-7),
            size: Some("1536x1024".into()),
            quality: Some("high".into()),
            background: Some("transparent".into()),
            output_format: Some("webp".into()),
            output_compression: Some(50),
            negative_prompt: Some("no".into()),
            ..form(parts)
        };
        let req = GeminiAdapter
            .build_request(
                &f,
                &target(
                    "https://generativelanguage.googleapis.com/v1beta",
                    "gemini-2.5-flash-image",
                ),
                "rid-9",
            )
            .unwrap();
        assert_eq!(req.method, http::Method::POST);
        assert_eq!(req.path, "/v1beta/models/gemini-2.5-flash-image:generateContent");
        assert_eq!(req.header("x-goog-api-key"), Some("gm-key"));
        assert_eq!(req.header("authorization"), None);
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(req.header("x-request-id"), Some("rid-9"));
        assert!(
            req.body.iter().filter(|s| matches!(s, BodySegment::Base64(_))).count() == 2,
            "images go out as Base64 segments"
        );
        let v = rendered(&req, &spool);
        let parts = v["contents"][0]["parts"].as_array().unwrap();
        assert_eq!(v["contents"][0]["role"], "user");
        assert_eq!(parts.len(), 3);
        for (i, (mime, want)) in ["image/png", "image/jpeg"].iter().zip(&files).enumerate() {
            assert_eq!(parts[i]["inlineData"]["mimeType"], *mime);
            let data = parts[i]["inlineData"]["data"].as_str().unwrap();
            assert_eq!(&base64::engine::general_purpose::STANDARD.decode(data).unwrap(), want);
        }
        assert_eq!(parts[2]["text"], "make it \"blue\"\n<script>");
        assert_eq!(
            v["generationConfig"],
            json!({"responseModalities":["TEXT","IMAGE"],"candidateCount":3,"seed":-7,"imageConfig":{"aspectRatio":"3:2","imageSize":"2K"}}),
            "quality, background, output options and negative_prompt are dropped on the Gemini API"
        );
    }

    #[test]
    fn v1_path_stream_path_and_defaults() {
        let (spool, _, parts) = spool();
        let t = target("http://127.0.0.1:9/genai/v1", "gemini-3-pro-image-preview");
        let req = GeminiAdapter
            .build_request(&form(parts[..1].to_vec()), &t, "r")
            .unwrap();
        assert_eq!(req.path, "/genai/v1/models/gemini-3-pro-image-preview:generateContent");
        let v = rendered(&req, &spool);
        assert_eq!(
            v["generationConfig"],
            json!({"responseModalities":["TEXT","IMAGE"],"candidateCount":1})
        );
        let streamed = EditForm {
            stream: true,
            size: Some("auto".into()),
            ..form(parts)
        };
        let req = GeminiAdapter.build_request(&streamed, &t, "r").unwrap();
        assert_eq!(
            req.path,
            "/genai/v1/models/gemini-3-pro-image-preview:streamGenerateContent?alt=sse"
        );
        assert!(rendered(&req, &spool)["generationConfig"].get("imageConfig").is_none());
    }

    #[test]
    fn vertex_sends_output_options() {
        let (spool, _, parts) = spool();
        let f = EditForm {
            output_format: Some("jpeg".into()),
            output_compression: Some(80),
            ..form(parts)
        };
        let auth = (http::header::AUTHORIZATION, "Bearer t".to_string());
        let req = generate_content_request(
            &f,
            "/v1/projects/p/locations/l/publishers/google/models/m".into(),
            auth,
            "r",
            true,
        )
        .unwrap();
        assert_eq!(
            req.path,
            "/v1/projects/p/locations/l/publishers/google/models/m:generateContent"
        );
        let v = rendered(&req, &spool);
        assert_eq!(
            v["generationConfig"]["imageConfig"],
            json!({"outputMimeType":"image/jpeg","outputCompressionQuality":80})
        );
    }

    #[test]
    fn sizes_map_to_ratio_and_image_size() {
        let cases = [
            ("1024x1024", "1:1", "1K"),
            ("1024x1536", "2:3", "2K"),
            ("1920x1088", "16:9", "2K"),
            ("3840x2160", "16:9", "4K"),
            ("768x1024", "3:4", "1K"),
            ("2048x2560", "4:5", "4K"),
            ("512x2048", "1:4", "2K"),
            ("2560x1088", "21:9", "4K"),
            ("256x256", "1:1", "1K"),
        ];
        for (size, ratio, image_size) in cases {
            assert_eq!(
                image_config_for_size(Some(size), "g").unwrap(),
                Some((ratio, image_size)),
                "{size}"
            );
        }
        assert_eq!(image_config_for_size(Some("auto"), "g").unwrap(), None);
        assert_eq!(image_config_for_size(None, "g").unwrap(), None);
        for bad in ["1008x608", "1024x1664", "512x3072", "3840x16"] {
            let e = image_config_for_size(Some(bad), "g").unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
            assert_eq!(e.code(), "unsupported_operation");
            assert_eq!(e.param(), Some("size"));
        }
    }

    #[test]
    fn seeds_beyond_32_bits_are_refused() {
        let (_, _, parts) = spool();
        let f = EditForm {
            seed: Some(1 << 40),
            ..form(parts)
        };
        let e = GeminiAdapter
            .build_request(&f, &target("https://g.example/v1beta", "gemini-2.5-flash-image"), "r")
            .unwrap_err();
        assert_eq!(e.param(), Some("seed"));
    }

    #[test]
    fn imagen_models_use_predict() {
        use super::super::is_generate_content_model;
        assert!(is_generate_content_model("gemini-2.5-flash-image"));
        assert!(!is_generate_content_model("imagen-3.0-capability-001"));
        let caps = GeminiAdapter.capabilities("gemini-3-pro-image-preview");
        assert!(!caps.mask);
        assert_eq!(caps.max_n, 4);
        assert_eq!(caps.max_images, 14);
        let imagen = GeminiAdapter.capabilities("imagen-3.0-capability-001");
        assert!(imagen.mask);
        // The request: Vertex's Imagen body on the Gemini API's path, with the API key.
        let (spool, files, parts) = spool();
        let t = target(
            "https://generativelanguage.googleapis.com/v1beta",
            "imagen-3.0-capability-001",
        );
        let req = GeminiAdapter
            .build_request_from_spool(&form(parts), &spool, &t, "r")
            .unwrap();
        assert_eq!(req.path, "/v1beta/models/imagen-3.0-capability-001:predict");
        assert_eq!(req.header("x-goog-api-key"), Some("gm-key"));
        let body = rendered(&req, &spool);
        let refs = body["instances"][0]["referenceImages"].as_array().unwrap();
        assert_eq!(refs.len(), 2);
        for (r, file) in refs.iter().zip(&files) {
            assert_eq!(r["referenceType"], "REFERENCE_TYPE_RAW");
            let b64 = r["referenceImage"]["bytesBase64Encoded"].as_str().unwrap();
            assert_eq!(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap(), file);
        }
        // Imagen answers are converted as on Vertex.
        let answer = crate::providers::UpstreamResponse {
            retry_after: None,
            status: 200,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(br#"{"predictions":[{"bytesBase64Encoded":"QUJD","mimeType":"image/png"}]}"#),
        };
        let cx = crate::providers::ResponseContext {
            provider: "gem",
            model_requested: "imagen-3.0-capability-001",
            model_deployment: "imagen-3.0-capability-001",
            latency_ms: 1,
            num_input_images: 2,
        };
        let unified: Value =
            serde_json::from_slice(&GeminiAdapter.convert_response(&answer, &cx).unwrap().to_bytes()).unwrap();
        assert_eq!(unified["data"][0]["b64_json"], "QUJD");
    }
}
