use super::*;
use crate::config::from_yaml_str_with_env;
use crate::form::FilePart;
use crate::imaging::{decode_png, encode_png, solid, Rgba};
use crate::providers::test_support::{build, build_from_spool};
use crate::route::Router;
use crate::route::Target;

fn target() -> Target {
    let yaml =
        "providers:\n  - name: stab\n    kind: stability\n    keys:\n      - { name: k, value: sk-stab-secret }\n";
    let cfg = from_yaml_str_with_env(yaml, &|_| None).unwrap();
    Router::new(&cfg).select("stab", "sd3", 0.0).unwrap()
}

fn cx() -> ResponseContext<'static> {
    ResponseContext {
        provider: "stab",
        model_requested: "sd3",
        model_deployment: "sd3",
        latency_ms: 4,
        num_input_images: 1,
        created: crate::providers::test_support::CLOCK_SECS,
    }
}

/// A 6×4 PNG input and a unified mask (top two rows alpha 0 = edit, the rest half opaque) in
/// a spool, with their parts.
fn uploads() -> (Spool, Vec<u8>, Vec<u8>, FilePart, FilePart) {
    let image = encode_png(&solid(6, 4, [10, 20, 30, 255])).unwrap();
    let mut m = solid(6, 4, [0, 0, 0, 128]);
    for i in 0..12 {
        m.pixels[i * 4 + 3] = 0;
    }
    let mask = encode_png(&m).unwrap();
    let mut spool = Spool::new(1 << 16, None);
    spool.append(Bytes::from(image.clone())).unwrap();
    spool.append(Bytes::from(mask.clone())).unwrap();
    let part = |field: &str, start: u64, len: usize| FilePart {
        field: field.into(),
        filename: Some("x".into()),
        kind: Some(ImageKind::Png),
        declared_type: None,
        range: SpoolRange { start, len: len as u64 },
    };
    let ip = part("image", 0, image.len());
    let mp = part("mask", image.len() as u64, mask.len());
    (spool, image, mask, ip, mp)
}

/// One rendered part: name, filename, content type, bytes.
type Part = (String, Option<String>, Option<String>, Vec<u8>);

/// The rendered multipart body's parts (checked against the planned length).
async fn parts(req: &UpstreamRequest, spool: &Spool) -> Vec<Part> {
    assert_eq!(req.render(spool).unwrap().len() as u64, req.content_length());
    crate::providers::test_support::render(req, spool).await
}

/// The outpainting border parts of the request for `form`.
async fn sides_of(form: &EditForm, spool: &Spool) -> Vec<String> {
    let req = build_from_spool(&StabilityAdapter, form, spool, &target(), "r").unwrap();
    let p = parts(&req, spool).await;
    ["left", "right", "up", "down"]
        .iter()
        .map(|s| text(&p, s).unwrap().to_string())
        .collect()
}

fn text<'a>(parts: &'a [Part], name: &str) -> Option<&'a str> {
    parts
        .iter()
        .find(|p| p.0 == name)
        .map(|p| std::str::from_utf8(&p.3).unwrap())
}

fn names(parts: &[Part]) -> Vec<&str> {
    parts.iter().map(|p| p.0.as_str()).collect()
}

#[tokio::test]
async fn inpaint_sends_the_image_as_is_and_the_mask_converted() {
    let (spool, image, _, ip, mp) = uploads();
    let form = EditForm {
        model: "sd3".into(),
        prompt: Some("a red ball".into()),
        negative_prompt: Some("blurry".into()),
        seed: Some(42),
        output_format: Some("webp".into()),
        quality: Some("high".into()),
        images: vec![ip],
        mask: Some(mp),
        ..Default::default()
    };
    let req = build_from_spool(&StabilityAdapter, &form, &spool, &target(), "rid-1").unwrap();
    assert_eq!(req.path, "/v2beta/stable-image/edit/inpaint");
    assert_eq!(req.header("authorization"), Some("Bearer sk-stab-secret"));
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(req.header("x-request-id"), Some("rid-1"));
    let p = parts(&req, &spool).await;
    assert_eq!(
        names(&p),
        ["image", "mask", "prompt", "negative_prompt", "seed", "output_format"]
    );
    assert_eq!(p[0].1.as_deref(), Some("image.png"));
    assert_eq!(p[0].2.as_deref(), Some("image/png"));
    assert_eq!(p[0].3, image, "the image byte for byte");
    assert_eq!(p[1].2.as_deref(), Some("image/png"));
    let mask: Rgba = decode_png(&p[1].3).unwrap();
    assert!(!imaging::png_info(&p[1].3).unwrap().alpha, "opaque");
    for y in 0..4 {
        for x in 0..6 {
            let want = if y < 2 { 255 } else { 0 };
            assert_eq!(mask.pixel(x, y), [want, want, want, 255], "mask pixel ({x},{y})");
        }
    }
    assert_eq!(text(&p, "prompt"), Some("a red ball"));
    assert_eq!(text(&p, "negative_prompt"), Some("blurry"));
    assert_eq!(text(&p, "seed"), Some("42"));
    assert_eq!(text(&p, "output_format"), Some("webp"));
    // Without the spool a mask cannot be converted.
    assert_eq!(
        build(&StabilityAdapter, &form, &target(), "r").unwrap_err().status(),
        500
    );
}

#[tokio::test]
async fn outpaint_border_from_size_or_fields() {
    let (spool, _, _, ip, mp) = uploads();
    let form = EditForm {
        prompt: Some("more sky".into()),
        edit_type: Some(EditType::Outpainting),
        size: Some("16x16".into()),
        images: vec![ip],
        ..Default::default()
    };
    let req = build_from_spool(&StabilityAdapter, &form, &spool, &target(), "r").unwrap();
    assert_eq!(req.path, "/v2beta/stable-image/edit/outpaint");
    let p = parts(&req, &spool).await;
    assert_eq!(names(&p), ["image", "prompt", "left", "right", "up", "down"]);
    // 16-6 = 10 → 5 + 5; 16-4 = 12 → 6 + 6
    let got: Vec<&str> = ["left", "right", "up", "down"]
        .iter()
        .map(|s| text(&p, s).unwrap())
        .collect();
    assert_eq!(got, ["5", "5", "6", "6"]);
    let odd = EditForm {
        size: Some("9x5".into()),
        ..form.clone()
    };
    assert_eq!(sides_of(&odd, &spool).await, ["1", "2", "0", "1"]);
    // Explicit fields win over size.
    let explicit = EditForm {
        size: None,
        extra_text: vec![("left".into(), "100".into()), ("down".into(), "7".into())],
        ..form.clone()
    };
    assert_eq!(sides_of(&explicit, &spool).await, ["100", "0", "0", "7"]);
    // Refusals, all 400 before any call.
    let refusals: Vec<(EditForm, &str)> = vec![
        (
            EditForm {
                size: None,
                ..form.clone()
            },
            "size",
        ),
        (
            EditForm {
                size: Some("4x4".into()),
                ..form.clone()
            },
            "size",
        ),
        (
            EditForm {
                size: Some("6x4".into()),
                ..form.clone()
            },
            "size",
        ),
        (
            EditForm {
                size: Some("4100x4".into()),
                ..form.clone()
            },
            "size",
        ),
        (
            EditForm {
                extra_text: vec![("up".into(), "-1".into())],
                ..form.clone()
            },
            "up",
        ),
        (
            EditForm {
                mask: Some(mp.clone()),
                ..form.clone()
            },
            "mask",
        ),
        (
            EditForm {
                images: vec![FilePart {
                    kind: Some(ImageKind::Jpeg),
                    ..form.images[0].clone()
                }],
                ..form.clone()
            },
            "size",
        ),
    ];
    for (f, param) in refusals {
        let e = build_from_spool(&StabilityAdapter, &f, &spool, &target(), "r").unwrap_err();
        assert_eq!(e.status(), 400, "{e}");
        assert_eq!(e.param(), Some(param), "{e}");
    }
}

#[tokio::test]
async fn background_removal_sends_only_image_and_format_and_no_type_needs_a_mask() {
    let (spool, image, _, ip, mp) = uploads();
    let form = EditForm {
        prompt: Some("ignored".into()),
        seed: Some(1),
        edit_type: Some(EditType::BackgroundRemoval),
        output_format: Some("png".into()),
        images: vec![ip.clone()],
        ..Default::default()
    };
    let req = build_from_spool(&StabilityAdapter, &form, &spool, &target(), "r").unwrap();
    assert_eq!(req.path, "/v2beta/stable-image/edit/remove-background");
    let p = parts(&req, &spool).await;
    assert_eq!(names(&p), ["image", "output_format"]);
    assert_eq!(p[0].3, image);
    // No type: inpaint with a mask, a 400 naming `type` without.
    let plain = EditForm {
        prompt: Some("p".into()),
        images: vec![ip],
        ..Default::default()
    };
    let e = build_from_spool(&StabilityAdapter, &plain, &spool, &target(), "r").unwrap_err();
    assert_eq!((e.status(), e.param()), (400, Some("type")));
    assert!(e.to_string().contains("type=inpainting"), "{e}");
    let masked = EditForm {
        mask: Some(mp),
        ..plain
    };
    let req = build_from_spool(&StabilityAdapter, &masked, &spool, &target(), "r").unwrap();
    assert_eq!(req.path, "/v2beta/stable-image/edit/inpaint");
    // Out-of-range seed, unknown output format.
    for (f, param) in [
        (
            EditForm {
                seed: Some(-1),
                ..masked.clone()
            },
            "seed",
        ),
        (
            EditForm {
                seed: Some(MAX_SEED + 1),
                ..masked.clone()
            },
            "seed",
        ),
        (
            EditForm {
                output_format: Some("gif".into()),
                ..masked.clone()
            },
            "output_format",
        ),
    ] {
        let e = build_from_spool(&StabilityAdapter, &f, &spool, &target(), "r").unwrap_err();
        assert_eq!((e.status(), e.param()), (400, Some(param)), "{e}");
    }
}

use crate::providers::test_support::json_text as resp;

#[test]
fn answers_filters_and_errors() {
    let png = encode_png(&solid(2, 2, [1, 2, 3, 255])).unwrap();
    let b64 = base64::engine::general_purpose::STANDARD.encode(&png);
    let out = StabilityAdapter
        .convert_response(
            &resp(
                200,
                &format!(r#"{{"image":"{b64}","finish_reason":"SUCCESS","seed":42}}"#),
            ),
            &cx(),
        )
        .unwrap();
    let v: Value = serde_json::from_slice(&out.to_bytes()).unwrap();
    assert_eq!(v["data"][0]["b64_json"], b64.as_str());
    assert_eq!(v["data"][0]["index"], 0);
    assert_eq!(v["output_format"], "png");
    assert_eq!(v["extra_fields"]["provider"], "stab");

    let e = StabilityAdapter
        .convert_response(
            &resp(
                200,
                &format!(r#"{{"image":"{b64}","finish_reason":"CONTENT_FILTERED","seed":1}}"#),
            ),
            &cx(),
        )
        .unwrap_err();
    assert_eq!(e.status(), 400);
    assert_eq!(e.to_json(&Default::default())["error"]["code"], "moderation_blocked");

    for body in ["{}", "not json", r#"{"image":5}"#] {
        assert_eq!(
            StabilityAdapter
                .convert_response(&resp(200, body), &cx())
                .unwrap_err()
                .status(),
            502
        );
    }

    let e = StabilityAdapter
        .convert_response(
            &resp(
                422,
                r#"{"id":"abc","name":"invalid_prompt","errors":["prompt: too long","mask: wrong size"]}"#,
            ),
            &cx(),
        )
        .unwrap_err();
    assert_eq!(e.status(), 422);
    let j = e.to_json(&Default::default());
    assert_eq!(j["error"]["message"], "prompt: too long; mask: wrong size");
    assert_eq!(j["error"]["code"], "invalid_prompt");
    assert_eq!(j["is_bifrost_error"], false);
    let e = StabilityAdapter
        .convert_response(&resp(500, "upstream exploded"), &cx())
        .unwrap_err();
    assert_eq!(e.status(), 500);
    assert!(
        e.to_string().contains("upstream exploded")
            || e.to_json(&Default::default()).to_string().contains("upstream exploded")
    );
}
