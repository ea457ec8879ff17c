//! Request fixtures of kind `gemini` (the `generateContent` body, sizes, Imagen on the Gemini
//! API's paths).

use super::*;
use crate::config::from_yaml_str_with_env;
use crate::form::FilePart;
use crate::imaging::ImageKind;
use crate::providers::kernel::size::*;
use crate::providers::test_support::rendered;
use crate::providers::test_support::{build, build_from_spool};
use crate::providers::BodySegment;
use crate::providers::ProviderAdapter;
use crate::route::{Router, Target};
use crate::spool::{Spool, SpoolRange};
use base64::Engine;
use bytes::Bytes;
use serde_json::{json, Value};

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
    let req = build(
        &GeminiAdapter,
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
    let req = build(&GeminiAdapter, &form(parts[..1].to_vec()), &t, "r").unwrap();
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
    let req = build(&GeminiAdapter, &streamed, &t, "r").unwrap();
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
    let e = build(
        &GeminiAdapter,
        &f,
        &target("https://g.example/v1beta", "gemini-2.5-flash-image"),
        "r",
    )
    .unwrap_err();
    assert_eq!(e.param(), Some("seed"));
}

#[test]
fn imagen_models_use_predict() {
    use crate::providers::google::is_generate_content_model;
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
    let req = build_from_spool(&GeminiAdapter, &form(parts), &spool, &t, "r").unwrap();
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
        created: crate::providers::test_support::CLOCK_SECS,
    };
    let unified: Value =
        serde_json::from_slice(&GeminiAdapter.convert_response(&answer, &cx).unwrap().to_bytes()).unwrap();
    assert_eq!(unified["data"][0]["b64_json"], "QUJD");
}
