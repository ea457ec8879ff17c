//! Request and response fixtures of kind `bedrock`.

use super::*;
use crate::config::from_yaml_str_with_env;
use crate::form::FilePart;
use crate::imaging::ImageKind;
use crate::imaging::{decode_png, encode_png, png_info, solid};
use crate::providers::test_support::rendered;
use crate::providers::test_support::spool_with;
use crate::providers::test_support::unified_mask;
use crate::providers::test_support::{build, build_from_spool};
use crate::providers::BodySegment;
use crate::route::Router;
use crate::route::Target;
use base64::Engine;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const AWS_KEY: &str =
    "        aws_access_key_id: AKIDEXAMPLE\n        aws_secret_access_key: wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY\n";

fn target(key_lines: &str, model: &str) -> Target {
    let yaml = format!(
        "providers:\n  - name: br\n    kind: bedrock\n    region: us-east-1\n    keys:\n      - name: k\n{key_lines}"
    );
    let cfg = from_yaml_str_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
    Router::new(&cfg).select("br", model, 0.0).unwrap()
}

fn image() -> Vec<u8> {
    encode_png(&solid(4, 3, [10, 20, 30, 255])).unwrap()
}

fn b64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .unwrap()
}

fn form(model: &str, images: Vec<FilePart>, mask: Option<FilePart>) -> EditForm {
    EditForm {
        provider: "br".into(),
        model: model.into(),
        prompt: Some("a \"red\" ball".into()),
        images,
        mask,
        ..Default::default()
    }
}

const NOVA: &str = "amazon.nova-canvas-v1:0";

/// Asserts the converted mask: opaque 8-bit RGB, `edit` in the left column, the opposite
/// elsewhere.
fn assert_mask(png: &[u8], edit: u8) {
    let info = png_info(png).unwrap();
    assert!(!info.alpha, "opaque");
    let mut dec = ::png::Decoder::new(std::io::Cursor::new(png));
    dec.set_transformations(::png::Transformations::IDENTITY);
    let reader = dec.read_info().unwrap();
    assert_eq!(reader.info().color_type, ::png::ColorType::Rgb);
    assert_eq!(reader.info().bit_depth, ::png::BitDepth::Eight);
    let m = decode_png(png).unwrap();
    assert_eq!((m.width, m.height), (4, 3));
    for y in 0..3 {
        for x in 0..4 {
            let want = if x == 0 { edit } else { 255 - edit };
            assert_eq!(m.pixel(x, y), [want, want, want, 255], "mask pixel ({x},{y})");
        }
    }
}

#[test]
fn inpainting_request_is_signed_and_carries_a_black_is_edit_mask() {
    let (spool, parts) = spool_with(&[
        ("image", ImageKind::Png, image()),
        ("mask", ImageKind::Png, unified_mask()),
    ]);
    let f = EditForm {
        n: Some(2),
        size: Some("1024x768".into()),
        seed: Some(42),
        quality: Some("high".into()),
        negative_prompt: Some("blurry".into()),
        extra_text: vec![("cfg_scale".into(), "6.5".into())],
        ..form(NOVA, vec![parts[0].clone()], Some(parts[1].clone()))
    };
    let t = target(AWS_KEY, NOVA);
    let req = build_from_spool(&BedrockAdapter, &f, &spool, &t, "rid-1").unwrap();
    assert_eq!(req.method, http::Method::POST);
    assert_eq!(req.path, "/model/amazon.nova-canvas-v1%3A0/invoke");
    assert_eq!(req.header("content-type"), Some("application/json"));
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(req.header("x-request-id"), Some("rid-1"));
    assert!(req.header("x-amz-security-token").is_none());
    let date = req.header("x-amz-date").unwrap();
    assert_eq!(date.len(), 16);
    let auth = req.header("authorization").unwrap();
    assert!(
        auth.starts_with(&format!(
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/{}/us-east-1/bedrock/aws4_request, SignedHeaders=accept;content-type;host;x-amz-date, Signature=",
            &date[..8]
        )),
        "{auth}"
    );
    assert!(!format!("{req:?}").contains("EXAMPLEKEY"), "no secret in the request");
    // The image goes out from the spool as base64; only the mask is inline.
    assert_eq!(
        req.body.iter().filter(|s| matches!(s, BodySegment::Base64(_))).count(),
        1
    );
    let v = rendered(&req, &spool);
    assert_eq!(v["taskType"], "INPAINTING");
    let p = &v["inPaintingParams"];
    assert_eq!(b64(&p["image"]), image());
    assert_eq!(p["text"], "a \"red\" ball");
    assert_eq!(p["negativeText"], "blurry");
    assert_mask(&b64(&p["maskImage"]), 0);
    assert_eq!(
        v["imageGenerationConfig"],
        json!({"numberOfImages": 2, "width": 1024, "height": 768, "seed": 42, "quality": "premium", "cfgScale": 6.5})
    );
    // The signature covers exactly the rendered body.
    let body = req.render(&spool).unwrap();
    assert_eq!(
        sigv4::payload_sha256(&req.body, &spool).unwrap(),
        hex::encode(Sha256::digest(&body))
    );
}

#[test]
fn outpainting_mask_is_white_is_edit_and_no_type_with_mask_is_inpainting() {
    let (spool, parts) = spool_with(&[
        ("image", ImageKind::Png, image()),
        ("mask", ImageKind::Png, unified_mask()),
    ]);
    let t = target(AWS_KEY, "us.amazon.titan-image-generator-v2:0");
    let f = EditForm {
        edit_type: Some(EditType::Outpainting),
        quality: Some("medium".into()),
        ..form(&t.model, vec![parts[0].clone()], Some(parts[1].clone()))
    };
    let req = build_from_spool(&BedrockAdapter, &f, &spool, &t, "r").unwrap();
    assert_eq!(req.path, "/model/us.amazon.titan-image-generator-v2%3A0/invoke");
    let v = rendered(&req, &spool);
    assert_eq!(v["taskType"], "OUTPAINTING");
    let p = &v["outPaintingParams"];
    assert_eq!(p["outPaintingMode"], "DEFAULT");
    assert_eq!(b64(&p["image"]), image());
    assert_mask(&b64(&p["maskImage"]), 255);
    assert_eq!(
        v["imageGenerationConfig"],
        json!({"numberOfImages": 1, "quality": "standard"})
    );
    let untyped = EditForm { edit_type: None, ..f };
    let v = rendered(
        &build_from_spool(&BedrockAdapter, &untyped, &spool, &t, "r").unwrap(),
        &spool,
    );
    assert_eq!(v["taskType"], "INPAINTING");
    assert_mask(&b64(&v["inPaintingParams"]["maskImage"]), 0);
}

#[test]
fn background_removal_and_image_variation() {
    let second = encode_png(&solid(2, 2, [1, 1, 1, 255])).unwrap();
    let (spool, parts) = spool_with(&[
        ("image[]", ImageKind::Png, image()),
        ("image[]", ImageKind::Png, second.clone()),
    ]);
    let t = target(AWS_KEY, NOVA);
    let bg = EditForm {
        edit_type: Some(EditType::BackgroundRemoval),
        prompt: None,
        ..form(NOVA, vec![parts[0].clone()], None)
    };
    let req = build_from_spool(&BedrockAdapter, &bg, &spool, &t, "r").unwrap();
    let v = rendered(&req, &spool);
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["taskType", "backgroundRemovalParams"]
    );
    assert_eq!(v["taskType"], "BACKGROUND_REMOVAL");
    assert_eq!(v["backgroundRemovalParams"].as_object().unwrap().len(), 1, "image only");
    assert_eq!(b64(&v["backgroundRemovalParams"]["image"]), image());

    let var = EditForm {
        seed: Some(7),
        ..form(NOVA, parts.clone(), None)
    };
    let v = rendered(
        &build_from_spool(&BedrockAdapter, &var, &spool, &t, "r").unwrap(),
        &spool,
    );
    assert_eq!(v["taskType"], "IMAGE_VARIATION");
    let p = &v["imageVariationParams"];
    assert_eq!(b64(&p["images"][0]), image());
    assert_eq!(b64(&p["images"][1]), second);
    assert_eq!(p["text"], "a \"red\" ball");
    assert_eq!(v["imageGenerationConfig"], json!({"numberOfImages": 1, "seed": 7}));
}

#[test]
fn refusals_before_any_call() {
    let (spool, parts) = spool_with(&[
        ("image[]", ImageKind::Png, image()),
        ("image[]", ImageKind::Png, image()),
        ("mask", ImageKind::Png, unified_mask()),
    ]);
    let t = target(AWS_KEY, NOVA);
    let cases = [
        (
            form(NOVA, parts[..2].to_vec(), Some(parts[2].clone())),
            "image",
            "unsupported_operation",
        ),
        (
            EditForm {
                edit_type: Some(EditType::Outpainting),
                ..form(NOVA, parts[..1].to_vec(), None)
            },
            "mask",
            "invalid_request",
        ),
        (
            EditForm {
                edit_type: Some(EditType::BackgroundRemoval),
                ..form(NOVA, parts[..1].to_vec(), Some(parts[2].clone()))
            },
            "mask",
            "unsupported_operation",
        ),
        (
            EditForm {
                quality: Some("ultra".into()),
                ..form(NOVA, parts[..1].to_vec(), None)
            },
            "quality",
            "unsupported_operation",
        ),
        (
            EditForm {
                size: Some("big".into()),
                ..form(NOVA, parts[..1].to_vec(), None)
            },
            "size",
            "invalid_request",
        ),
        (
            EditForm {
                seed: Some(-1),
                ..form(NOVA, parts[..1].to_vec(), None)
            },
            "seed",
            "invalid_request",
        ),
        (
            EditForm {
                extra_text: vec![("cfg_scale".into(), "11".into())],
                ..form(NOVA, parts[..1].to_vec(), None)
            },
            "cfg_scale",
            "invalid_request",
        ),
    ];
    for (f, param, code) in cases {
        let e = build_from_spool(&BedrockAdapter, &f, &spool, &t, "r").unwrap_err();
        assert_eq!((e.status(), e.code(), e.param()), (400, code, Some(param)), "{e}");
    }
    let other = target(AWS_KEY, "stability.stable-outpaint-v1:0");
    let e = build_from_spool(
        &BedrockAdapter,
        &form(&other.model, parts[..1].to_vec(), None),
        &spool,
        &other,
        "r",
    )
    .unwrap_err();
    assert_eq!(e.param(), Some("model"));
    assert!(build(&BedrockAdapter, &form(NOVA, vec![], None), &t, "r").is_err());
}

#[test]
fn stability_bodies_are_flat_and_the_mask_is_white_is_edit() {
    let (spool, parts) = spool_with(&[
        ("image", ImageKind::Png, image()),
        ("mask", ImageKind::Png, unified_mask()),
    ]);
    let model = "arn:aws:bedrock:us-west-2::foundation-model/stability.stable-image-inpaint-v1:0";
    let t = target(AWS_KEY, model);
    let f = EditForm {
        seed: Some(5),
        negative_prompt: Some("dark".into()),
        output_format: Some("webp".into()),
        ..form(model, vec![parts[0].clone()], Some(parts[1].clone()))
    };
    let req = build_from_spool(&BedrockAdapter, &f, &spool, &t, "r").unwrap();
    assert_eq!(
        req.path,
        "/model/arn%3Aaws%3Abedrock%3Aus-west-2%3A%3Afoundation-model%2Fstability.stable-image-inpaint-v1%3A0/invoke"
    );
    let v = rendered(&req, &spool);
    assert_eq!(b64(&v["image"]), image());
    assert_eq!(v["prompt"], "a \"red\" ball");
    assert_eq!(v["negative_prompt"], "dark");
    assert_eq!(v["seed"], 5);
    assert_eq!(v["output_format"], "webp");
    let mask = decode_png(&b64(&v["mask"])).unwrap();
    assert!(!png_info(&b64(&v["mask"])).unwrap().alpha);
    for y in 0..3 {
        for x in 0..4 {
            let want = if x == 0 { 255 } else { 0 };
            assert_eq!(mask.pixel(x, y), [want, want, want, 255], "({x},{y})");
        }
    }
    let t = target(AWS_KEY, "stability.stable-image-remove-background-v1:0");
    let f = EditForm {
        prompt: None,
        seed: Some(3),
        ..form(&t.model, vec![parts[0].clone()], None)
    };
    let v = rendered(&build_from_spool(&BedrockAdapter, &f, &spool, &t, "r").unwrap(), &spool);
    assert_eq!(v, json!({"image": v["image"], "output_format": "png"}));
    assert_eq!(b64(&v["image"]), image());
}

#[test]
fn families_and_capabilities() {
    let a = BedrockAdapter;
    assert_eq!(a.capabilities("amazon.nova-canvas-v1:0").max_n, 5);
    assert_eq!(
        a.capabilities("us.amazon.nova-canvas-v1:0").max_prompt_chars,
        Some(1024)
    );
    assert_eq!(a.capabilities("stability.stable-image-inpaint-v1:0").max_n, 1);
    assert_eq!(
        a.capabilities("us.stability.stable-image-remove-background-v1:0")
            .edit_types,
        &[EditType::BackgroundRemoval]
    );
    assert!(a.capabilities("meta.llama3").edit_types.is_empty());
    assert_eq!(
        base_model("apac.amazon.titan-image-generator-v2:0"),
        "amazon.titan-image-generator-v2:0"
    );
    assert_eq!(base_model("custom.model"), "custom.model");
}

#[test]
fn bearer_api_keys_are_not_signed() {
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, image())]);
    let t = target("        value: bedrock-api-key-123\n", NOVA);
    let req = build_from_spool(&BedrockAdapter, &form(NOVA, parts, None), &spool, &t, "r").unwrap();
    assert_eq!(req.header("authorization"), Some("Bearer bedrock-api-key-123"));
    assert!(req.header("x-amz-date").is_none());
}

#[test]
fn session_tokens_are_sent_and_signed() {
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, image())]);
    let t = target(&format!("{AWS_KEY}        aws_session_token: sess-tok\n"), NOVA);
    let req = build_from_spool(&BedrockAdapter, &form(NOVA, parts, None), &spool, &t, "r").unwrap();
    assert_eq!(req.header("x-amz-security-token"), Some("sess-tok"));
    assert!(req
        .header("authorization")
        .unwrap()
        .contains("SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token,"));
}

use crate::providers::test_support::json_text as resp;

fn cx() -> ResponseContext<'static> {
    ResponseContext {
        provider: "br",
        model_requested: NOVA,
        model_deployment: NOVA,
        latency_ms: 3,
        num_input_images: 1,
        created: crate::providers::test_support::CLOCK_SECS,
    }
}

#[test]
fn answers_are_converted() {
    let out = BedrockAdapter
        .convert_response(
            &resp(200, r#"{"images":["iVBORw0KGgoAAAA","iVBORw0KGgoBBBB"],"error":null}"#),
            &cx(),
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out.to_bytes()).unwrap();
    assert_eq!(v["data"][0]["b64_json"], "iVBORw0KGgoAAAA");
    assert_eq!(v["data"][1]["b64_json"], "iVBORw0KGgoBBBB");
    assert_eq!(v["output_format"], "png");
    assert_eq!(v["extra_fields"]["provider"], "br");
    let out = BedrockAdapter
        .convert_response(
            &resp(200, r#"{"images":["/9j/AAAA"],"seeds":[1],"finish_reasons":[null]}"#),
            &cx(),
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out.to_bytes()).unwrap();
    assert_eq!(v["output_format"], "jpeg");
}

#[test]
fn filters_and_errors() {
    let cases = [
        (
            200,
            r#"{"images":[],"error":"This request has been blocked by our content filters."}"#,
            400,
            "moderation_blocked",
        ),
        (
            200,
            r#"{"images":["iVBOR"],"finish_reasons":["Filter reason: prompt"]}"#,
            400,
            "moderation_blocked",
        ),
        (200, r#"{"images":[]}"#, 400, "moderation_blocked"),
        (
            400,
            r#"{"message":"This request has been blocked by our content filters."}"#,
            400,
            "moderation_blocked",
        ),
        (
            400,
            r#"{"message":"Malformed input request: width must be a multiple of 16"}"#,
            400,
            "ValidationException",
        ),
        (
            429,
            r#"{"message":"Too many requests, please wait."}"#,
            429,
            "rate_limit_exceeded",
        ),
        (
            403,
            r#"{"__type":"com.amazon.coral#AccessDeniedException","message":"denied"}"#,
            403,
            "AccessDeniedException",
        ),
        (
            408,
            r#"{"message":"Model has timed out"}"#,
            504,
            "ModelTimeoutException",
        ),
        (
            503,
            r#"{"message":"Service unavailable"}"#,
            503,
            "ServiceUnavailableException",
        ),
        (500, "<html>oops</html>", 500, ""),
    ];
    for (status, body, want, code) in cases {
        let e = BedrockAdapter.convert_response(&resp(status, body), &cx()).unwrap_err();
        assert_eq!(e.status(), want, "{body}");
        let GatewayError::Provider { error, .. } = &e else {
            panic!("{e:?}")
        };
        if !code.is_empty() {
            assert_eq!(error["code"], code, "{body}");
        }
        assert!(error["message"].as_str().is_some());
    }
    let e = BedrockAdapter
        .convert_response(&resp(200, r#"{"images":[],"error":"internal model failure"}"#), &cx())
        .unwrap_err();
    assert_eq!(e.status(), 502);
    let e = BedrockAdapter
        .convert_response(&resp(200, "not json"), &cx())
        .unwrap_err();
    assert_eq!(e.status(), 502);
}

/// The build is pure: two builds from the same scope are the same request, byte for byte
/// (SigV4's date and signature come from `scope.now`, not from the clock), and another `now`
/// signs differently.
#[test]
fn same_scope_same_signed_bytes() {
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, image())]);
    let t = target(AWS_KEY, NOVA);
    let f = form(NOVA, parts, None);
    let scope = |now: std::time::SystemTime| BuildScope {
        form: &f,
        spool: &spool,
        mask: None,
        target: &t,
        request_id: "rid",
        now,
        nonce: 1,
    };
    let at = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_795_486_854);
    let bytes = |req: &UpstreamRequest| {
        (
            req.method.clone(),
            req.path.clone(),
            req.headers.clone(),
            req.render(&spool).unwrap(),
        )
    };
    let first = BedrockAdapter.build(&scope(at)).unwrap();
    let second = BedrockAdapter.build(&scope(at)).unwrap();
    assert_eq!(bytes(&first), bytes(&second));
    assert_eq!(first.header("x-amz-date"), Some("20261124T022054Z"));
    let later = BedrockAdapter
        .build(&scope(at + std::time::Duration::from_secs(1)))
        .unwrap();
    assert_eq!(later.header("x-amz-date"), Some("20261124T022055Z"));
    assert_ne!(first.header("authorization"), later.header("authorization"));
}
