//! Request and response fixtures of kind `vertex`.

use super::*;
use crate::config::from_yaml_str_with_env;
use crate::form::EditType;
use crate::form::FilePart;
use crate::imaging::{decode_png, encode_png, solid, ImageKind};
use crate::providers::capabilities::Streaming;
use crate::providers::test_support::spool_with;
use crate::providers::test_support::{build, build_from_spool};
use crate::providers::test_support::{rendered, unified_mask};
use crate::providers::BodySegment;
use crate::route::Router;
use base64::Engine;
use serde_json::{json, Value};

fn target(key_lines: &str, model: &str) -> Target {
    let yaml = format!(
        "providers:\n  - name: vx\n    kind: vertex\n    project: my-proj\n    location: us-central1\n    keys:\n      - name: k\n{key_lines}"
    );
    let cfg = from_yaml_str_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Router::new(&cfg).select("vx", model, 0.0).unwrap()
}

fn bearer(model: &str) -> Target {
    target("        value: ya29.static-token\n", model)
}

fn header<'a>(req: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
    req.headers
        .iter()
        .find(|(n, _)| n.as_str() == name)
        .map(|(_, v)| v.as_str())
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap())
        .unwrap()
}

fn base_form(images: Vec<FilePart>, mask: Option<FilePart>) -> EditForm {
    EditForm {
        provider: "vx".into(),
        model: "imagen-3.0-capability-001".into(),
        prompt: Some("a \"red\" hat\n".into()),
        images,
        mask,
        ..Default::default()
    }
}

#[test]
fn full_request_with_two_images_and_a_converted_mask() {
    let png = encode_png(&solid(4, 3, [1, 2, 3, 255])).unwrap();
    let jpeg = vec![0xFF, 0xD8, 0xFF, 0xE0, 1, 2, 3, 4, 5];
    let (spool, parts) = spool_with(&[
        ("image[]", ImageKind::Png, png.clone()),
        ("image[]", ImageKind::Jpeg, jpeg.clone()),
        ("mask", ImageKind::Png, unified_mask()),
    ]);
    let form = EditForm {
        edit_type: Some(EditType::Inpainting),
        n: Some(3),
        seed: Some(42),
        negative_prompt: Some("blurry".into()),
        num_inference_steps: Some(30),
        output_format: Some("jpeg".into()),
        output_compression: Some(75),
        ..base_form(parts[..2].to_vec(), Some(parts[2].clone()))
    };
    let t = bearer("imagen-3.0-capability-001");
    let req = build_from_spool(&VertexAdapter, &form, &spool, &t, "rid-9").unwrap();
    assert_eq!(req.method, http::Method::POST);
    assert_eq!(
        req.path,
        "/v1/projects/my-proj/locations/us-central1/publishers/google/models/imagen-3.0-capability-001:predict"
    );
    assert_eq!(header(&req, "authorization"), Some("Bearer ya29.static-token"));
    assert_eq!(header(&req, "content-type"), Some("application/json"));
    assert_eq!(header(&req, "x-request-id"), Some("rid-9"));
    // Images stream from the spool as base64; only the mask is inline.
    let spooled: Vec<&BodySegment> = req
        .body
        .iter()
        .filter(|s| matches!(s, BodySegment::Base64(_)))
        .collect();
    assert_eq!(
        spooled,
        [
            &BodySegment::Base64(parts[0].range),
            &BodySegment::Base64(parts[1].range)
        ]
    );

    let v = rendered(&req, &spool);
    let inst = &v["instances"][0];
    assert_eq!(inst["prompt"], "a \"red\" hat\n");
    let refs = inst["referenceImages"].as_array().unwrap();
    assert_eq!(refs.len(), 3);
    assert_eq!(refs[0]["referenceType"], "REFERENCE_TYPE_RAW");
    assert_eq!(refs[0]["referenceId"], 1);
    assert_eq!(refs[0]["referenceImage"]["mimeType"], "image/png");
    assert_eq!(b64(&refs[0]["referenceImage"]["bytesBase64Encoded"]), png);
    assert_eq!(refs[1]["referenceId"], 2);
    assert_eq!(refs[1]["referenceImage"]["mimeType"], "image/jpeg");
    assert_eq!(b64(&refs[1]["referenceImage"]["bytesBase64Encoded"]), jpeg);
    assert_eq!(refs[2]["referenceType"], "REFERENCE_TYPE_MASK");
    assert_eq!(refs[2]["referenceId"], 3);
    assert_eq!(
        refs[2]["maskImageConfig"],
        json!({"maskMode": "MASK_MODE_USER_PROVIDED", "dilation": 0.01})
    );
    assert_eq!(refs[2]["referenceImage"]["mimeType"], "image/png");
    let mask_png = b64(&refs[2]["referenceImage"]["bytesBase64Encoded"]);
    assert!(!crate::imaging::png_info(&mask_png).unwrap().alpha, "opaque");
    let mask = decode_png(&mask_png).unwrap();
    assert_eq!((mask.width, mask.height), (4, 3));
    for y in 0..3 {
        for x in 0..4 {
            let want = if x == 0 { 255 } else { 0 };
            assert_eq!(mask.pixel(x, y), [want, want, want, 255], "({x},{y})");
        }
    }
    assert_eq!(
        v["parameters"],
        json!({
            "editMode": "EDIT_MODE_INPAINT_INSERTION",
            "sampleCount": 3,
            "includeRaiReason": true,
            "seed": 42,
            "negativePrompt": "blurry",
            "editConfig": {"baseSteps": 30},
            "outputOptions": {"mimeType": "image/jpeg", "compressionQuality": 75}
        })
    );
}

#[test]
fn edit_mode_follows_type_and_mask() {
    let png = encode_png(&solid(4, 3, [1, 2, 3, 255])).unwrap();
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, png), ("mask", ImageKind::Png, unified_mask())]);
    let t = bearer("imagen-3.0-capability-001");
    let cases = [
        (
            Some(EditType::Inpainting),
            true,
            "EDIT_MODE_INPAINT_INSERTION",
            Some("MASK_MODE_USER_PROVIDED"),
        ),
        (
            Some(EditType::Outpainting),
            true,
            "EDIT_MODE_OUTPAINT",
            Some("MASK_MODE_USER_PROVIDED"),
        ),
        (
            Some(EditType::BackgroundRemoval),
            false,
            "EDIT_MODE_BGSWAP",
            Some("MASK_MODE_BACKGROUND"),
        ),
        (
            Some(EditType::BackgroundRemoval),
            true,
            "EDIT_MODE_BGSWAP",
            Some("MASK_MODE_USER_PROVIDED"),
        ),
        (
            None,
            true,
            "EDIT_MODE_INPAINT_INSERTION",
            Some("MASK_MODE_USER_PROVIDED"),
        ),
        (None, false, "EDIT_MODE_DEFAULT", None),
    ];
    for (edit_type, with_mask, mode, mask_mode) in cases {
        let form = EditForm {
            edit_type,
            ..base_form(vec![parts[0].clone()], with_mask.then(|| parts[1].clone()))
        };
        let req = build_from_spool(&VertexAdapter, &form, &spool, &t, "r").unwrap();
        let v = rendered(&req, &spool);
        assert_eq!(v["parameters"]["editMode"], mode, "{edit_type:?} {with_mask}");
        assert_eq!(v["parameters"]["sampleCount"], 1);
        let refs = v["instances"][0]["referenceImages"].as_array().unwrap();
        let mask_ref = refs.iter().find(|r| r["referenceType"] == "REFERENCE_TYPE_MASK");
        assert_eq!(
            mask_ref.map(|r| r["maskImageConfig"]["maskMode"].as_str().unwrap()),
            mask_mode,
            "{edit_type:?} {with_mask}"
        );
        if mask_mode == Some("MASK_MODE_BACKGROUND") {
            assert_eq!(mask_ref.unwrap()["referenceId"], 2);
            assert!(mask_ref.unwrap().get("referenceImage").is_none(), "auto mask: no image");
        }
    }
    // background_removal without a prompt describes the new background.
    let form = EditForm {
        edit_type: Some(EditType::BackgroundRemoval),
        prompt: None,
        ..base_form(vec![parts[0].clone()], None)
    };
    let v = rendered(&build(&VertexAdapter, &form, &t, "r").unwrap(), &spool);
    assert_eq!(v["instances"][0]["prompt"], imagen::BACKGROUND_PROMPT);
    // inpainting and outpainting need a mask.
    for edit_type in [EditType::Inpainting, EditType::Outpainting] {
        let form = EditForm {
            edit_type: Some(edit_type),
            ..base_form(vec![parts[0].clone()], None)
        };
        let e = build_from_spool(&VertexAdapter, &form, &spool, &t, "r").unwrap_err();
        assert_eq!((e.status(), e.param()), (400, Some("mask")), "{e}");
    }
}

#[test]
fn masks_in_either_convention_go_white_edit_and_broken_ones_are_refused() {
    let png = encode_png(&solid(4, 3, [1, 2, 3, 255])).unwrap();
    let opaque_mask = encode_png(&solid(4, 3, [255, 255, 255, 255])).unwrap();
    let gray = crate::imaging::convert_mask(&unified_mask(), 255, 0).unwrap().png;
    let mut small = solid(2, 2, [0, 0, 0, 255]);
    small.pixels[3] = 0;
    let small = encode_png(&small).unwrap();
    let (spool, parts) = spool_with(&[
        ("image", ImageKind::Png, png),
        ("mask", ImageKind::Jpeg, vec![0xFF, 0xD8, 0xFF, 0]),
        ("mask", ImageKind::Png, gray.clone()),
        ("mask", ImageKind::Png, small),
        ("mask", ImageKind::Png, b"\x89PNG\r\n\x1a\ngarbage".to_vec()),
        ("mask", ImageKind::Png, opaque_mask),
        ("mask", ImageKind::Png, unified_mask()),
    ]);
    let t = bearer("imagen-3.0-capability-001");
    for (i, fragment) in [
        (1, "cannot decode JPEG"),
        (3, "the mask is 2x2 but the first image is 4x3"),
        (4, "cannot decode PNG"),
    ] {
        let form = base_form(vec![parts[0].clone()], Some(parts[i].clone()));
        let e = build_from_spool(&VertexAdapter, &form, &spool, &t, "r").unwrap_err();
        assert_eq!((e.status(), e.param()), (400, Some("mask")), "{e}");
        assert!(e.to_string().contains(fragment), "{i}: {e}");
    }
    let sent_mask = |part: usize| {
        let form = base_form(vec![parts[0].clone()], Some(parts[part].clone()));
        let req = build_from_spool(&VertexAdapter, &form, &spool, &t, "r").unwrap();
        let v = rendered(&req, &spool);
        decode_png(&b64(
            &v["instances"][0]["referenceImages"][1]["referenceImage"]["bytesBase64Encoded"]
        ))
        .unwrap()
    };
    // An opaque mask is Imagen's own convention (white = edit): the same pixels; an RGBA mask
    // without a transparent pixel is opaque too (all white: all edited); OpenAI's alpha mask
    // gives the same edit area as its white-edit twin.
    assert_eq!(sent_mask(2), decode_png(&gray).unwrap());
    assert!(sent_mask(5).pixels.chunks_exact(4).all(|p| p == [255, 255, 255, 255]));
    assert_eq!(sent_mask(6), sent_mask(2));
    // Without the spool a mask cannot be converted.
    let form = base_form(vec![parts[0].clone()], Some(parts[2].clone()));
    assert_eq!(build(&VertexAdapter, &form, &t, "r").unwrap_err().status(), 500);
}

#[test]
fn express_mode_path_and_api_key_header() {
    let t = target(
        "        value: AIza-express\n        auth: api_key\n",
        "imagen-3.0-capability-001",
    );
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, encode_png(&solid(1, 1, [0; 4])).unwrap())]);
    let req = build_from_spool(&VertexAdapter, &base_form(parts, None), &spool, &t, "r").unwrap();
    assert_eq!(
        req.path,
        "/v1/publishers/google/models/imagen-3.0-capability-001:predict"
    );
    assert_eq!(header(&req, "x-goog-api-key"), Some("AIza-express"));
    assert_eq!(header(&req, "authorization"), None);
}

#[test]
fn gemini_models_go_to_generate_content_with_vertex_options() {
    let png = encode_png(&solid(2, 2, [9, 8, 7, 255])).unwrap();
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, png.clone())]);
    let form = EditForm {
        output_format: Some("jpeg".into()),
        output_compression: Some(80),
        ..base_form(parts, None)
    };
    let t = bearer("gemini-2.5-flash-image");
    let req = build_from_spool(&VertexAdapter, &form, &spool, &t, "r").unwrap();
    assert!(
        req.path
            .ends_with("/publishers/google/models/gemini-2.5-flash-image:generateContent"),
        "{}",
        req.path
    );
    assert!(req.path.contains("/projects/"), "{}", req.path);
    assert_eq!(
        header(&req, "authorization").map(|a| a.starts_with("Bearer ")),
        Some(true)
    );
    let body: serde_json::Value = serde_json::from_slice(&req.render(&spool).unwrap()).unwrap();
    let inline = &body["contents"][0]["parts"][0]["inlineData"];
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(inline["data"].as_str().unwrap())
            .unwrap(),
        png
    );
    assert_eq!(body["generationConfig"]["imageConfig"]["outputMimeType"], "image/jpeg");
    assert_eq!(body["generationConfig"]["imageConfig"]["outputCompressionQuality"], 80);
    assert!(VertexAdapter
        .stream_translator(&stream_cx("gemini-2.5-flash-image"))
        .is_some());
    assert!(VertexAdapter
        .stream_translator(&stream_cx("imagen-3.0-capability-001"))
        .is_none());
}

fn stream_cx(model: &str) -> crate::providers::stream::StreamContext {
    crate::providers::stream::StreamContext {
        provider: "vx".into(),
        model_requested: model.into(),
        model_deployment: model.into(),
        request_id: "r".into(),
        images: 1,
        start: std::time::Instant::now(),
        created: crate::providers::test_support::CLOCK_SECS,
        framing: crate::providers::stream::Framing::Bifrost,
        kind: crate::config::ProviderKind::Vertex,
    }
}

#[test]
fn unsupported_output_format_is_refused() {
    let form = base_form(Vec::new(), None);
    let form = EditForm {
        output_format: Some("webp".into()),
        ..form
    };
    let e = build(&VertexAdapter, &form, &bearer("imagen-3.0-capability-001"), "r").unwrap_err();
    assert_eq!((e.status(), e.param()), (400, Some("output_format")));
}

#[test]
fn capabilities_are_declared() {
    let caps = VertexAdapter.capabilities("imagen-3.0-capability-001");
    assert!(caps.mask);
    assert_eq!((caps.max_n, caps.max_images), (4, 4));
    assert_eq!(caps.streaming, Streaming::Synthesized);
    assert!(!caps.url_output);
}

use crate::providers::test_support::json_text as resp;

fn cx() -> ResponseContext<'static> {
    ResponseContext {
        provider: "vx",
        model_requested: "imagen-3.0-capability-001",
        model_deployment: "imagen-3.0-capability-001",
        latency_ms: 3,
        num_input_images: 1,
        created: crate::providers::test_support::CLOCK_SECS,
    }
}

#[test]
fn predictions_become_unified_images() {
    let body = r#"{"predictions":[{"bytesBase64Encoded":"QUJD","mimeType":"image/png"},{"raiFilteredReason":"x"},{"mimeType":"image/png","bytesBase64Encoded":"REVG"}],"deployedModelId":"1"}"#;
    let out = VertexAdapter.convert_response(&resp(200, body), &cx()).unwrap();
    let v: Value = serde_json::from_slice(&out.to_bytes()).unwrap();
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert_eq!(v["data"][0], json!({"b64_json": "QUJD", "index": 0}));
    assert_eq!(v["data"][1], json!({"b64_json": "REVG", "index": 1}));
    assert_eq!(v["output_format"], "png");
    assert_eq!(v["usage"]["total_tokens"], 0);
    assert_eq!(v["extra_fields"]["provider"], "vx");
    assert_eq!(v["extra_fields"]["model_requested"], "imagen-3.0-capability-001");
}

#[test]
fn filtered_errors_and_garbage() {
    for (body, fragment) in [
        (
            r#"{"predictions":[{"raiFilteredReason":"Your current safety filter threshold filtered out the image."}]}"#,
            "filtered out the image",
        ),
        ("{}", "no predictions"),
        (r#"{"predictions":[]}"#, "no predictions"),
    ] {
        let e = VertexAdapter.convert_response(&resp(200, body), &cx()).unwrap_err();
        assert_eq!(e.status(), 400);
        let j = e.to_json(&crate::error::ErrorContext::default());
        assert_eq!(j["error"]["code"], "moderation_blocked");
        assert!(j["error"]["message"].as_str().unwrap().contains(fragment), "{j}");
    }
    let e = VertexAdapter
        .convert_response(
            &resp(
                403,
                r#"{"error":{"code":403,"message":"Permission denied on resource project my-proj.","status":"PERMISSION_DENIED"}}"#,
            ),
            &cx(),
        )
        .unwrap_err();
    assert_eq!(e.status(), 403);
    let j = e.to_json(&crate::error::ErrorContext::default());
    assert_eq!(j["error"]["code"], "PERMISSION_DENIED");
    assert_eq!(j["is_bifrost_error"], false);
    for garbage in [
        "<html>",
        r#"{"predictions":{}}"#,
        r#"{"predictions":[{"bytesBase64Encoded":7}]}"#,
    ] {
        let e = VertexAdapter.convert_response(&resp(200, garbage), &cx()).unwrap_err();
        assert_eq!((e.status(), e.code()), (502, "upstream_protocol_error"), "{garbage}");
    }
}
