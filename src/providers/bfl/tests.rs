//! Request fixtures and follow-up decisions of kind `bfl`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::imaging::{decode_png, encode_png, solid, ImageKind};
use crate::providers::kernel::polling::FollowUp;
use crate::providers::test_support::*;
use crate::providers::test_support::{build, build_from_spool};

fn png() -> Vec<u8> {
    encode_png(&solid(4, 3, [9, 8, 7, 255])).unwrap()
}

#[test]
fn kontext_request_inlines_the_image_as_bare_base64() {
    let t = target("bfl", "flux-kontext-pro", "");
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, png())]);
    let mut f = form("flux-kontext-pro", parts, None);
    f.seed = Some(42);
    f.size = Some("1536x1024".into());
    f.output_format = Some("webp".into());
    let req = build_from_spool(&BflAdapter, &f, &spool, &t, "rid").unwrap();
    assert_eq!(req.method, http::Method::POST);
    assert_eq!(req.path, "/v1/flux-kontext-pro");
    assert_eq!(req.header("x-key"), Some("secret-key"));
    assert_eq!(req.header("authorization"), None);
    assert!(req
        .body
        .iter()
        .any(|s| matches!(s, crate::providers::BodySegment::Base64(_))));
    let body = rendered(&req, &spool);
    assert_eq!(unb64(&body["input_image"]), png());
    assert!(!body["input_image"].as_str().unwrap().starts_with("data:"));
    assert_eq!(body["prompt"], "make it \"red\"");
    assert_eq!(body["seed"], 42);
    assert_eq!(body["aspect_ratio"], "3:2");
    assert_eq!(body["output_format"], "png");
    assert!(body.get("mask").is_none());
}

#[test]
fn fill_request_converts_the_mask_pixel_by_pixel() {
    let t = target("bfl", "flux-pro-1.0-fill", "");
    let mut mask = solid(4, 3, [0, 0, 0, 255]);
    for y in 0..3u32 {
        mask.pixels[(y * 16 + 3) as usize] = 0; // left column transparent = edit
    }
    let (spool, parts) = spool_with(&[
        ("image", ImageKind::Png, png()),
        ("mask", ImageKind::Png, encode_png(&mask).unwrap()),
    ]);
    let mut f = form("flux-pro-1.0-fill", vec![parts[0].clone()], Some(parts[1].clone()));
    f.num_inference_steps = Some(30);
    f.size = Some("1536x1024".into());
    f.seed = Some(7);
    let req = build_from_spool(&BflAdapter, &f, &spool, &t, "rid").unwrap();
    let body = rendered(&req, &spool);
    assert_eq!(unb64(&body["image"]), png());
    assert_eq!(body["steps"], 30);
    assert_eq!(body["seed"], 7);
    assert!(
        body.get("aspect_ratio").is_none(),
        "Fill's schema has no aspect_ratio: {body}"
    );
    let converted = decode_png(&unb64(&body["mask"])).unwrap();
    for y in 0..3 {
        for x in 0..4 {
            let want = if x == 0 { 255 } else { 0 };
            assert_eq!(converted.pixel(x, y)[0], want, "({x},{y})");
        }
    }
    // Without the spool a mask cannot be converted.
    assert!(build(&BflAdapter, &f, &t, "rid").is_err());
    // Capabilities: masks only for fill models.
    assert!(BflAdapter.capabilities("flux-pro-1.0-fill").mask);
    assert!(!BflAdapter.capabilities("flux-kontext-pro").mask);
}

#[test]
fn follow_ups_for_every_status() {
    let t = target("bfl", "flux-kontext-pro", "");
    let c = cx(&t, false);
    let mut st = FollowState::default();
    let submit = answer(
        200,
        json!({"id": "j1", "polling_url": "https://api.eu.bfl.ai/v1/get_result?id=j1"}),
    );
    let (req, to, after) = request(BflAdapter.follow_up(&submit, &mut st, &c).unwrap());
    assert_eq!(
        (req.method.clone(), to.as_deref()),
        (http::Method::GET, Some("https://api.eu.bfl.ai/v1/get_result?id=j1"))
    );
    assert_eq!(req.header("x-key"), Some("secret-key"));
    assert_eq!(after, std::time::Duration::from_millis(250));
    let pending = answer(200, json!({"id": "j1", "status": "Pending"}));
    let (_, to, _) = request(BflAdapter.follow_up(&pending, &mut st, &c).unwrap());
    assert_eq!(to.as_deref(), Some("https://api.eu.bfl.ai/v1/get_result?id=j1"));
    let ready = answer(
        200,
        json!({"status": "Ready", "result": {"sample": "https://delivery-eu1.bfl.ai/r/x.png?sig=1"}}),
    );
    let (req, to, after) = request(BflAdapter.follow_up(&ready, &mut st, &c).unwrap());
    assert_eq!(to.as_deref(), Some("https://delivery-eu1.bfl.ai/r/x.png?sig=1"));
    assert_eq!(req.header("x-key"), None, "the signed URL gets no key");
    assert_eq!(after, std::time::Duration::ZERO);
    let out = final_answer(BflAdapter.follow_up(&image(&png()), &mut st, &c).unwrap());
    assert_eq!(unb64(&out["data"][0]["b64_json"]), png());
    assert_eq!(out["output_format"], "png");
    // URL output: no download.
    let c_url = cx(&t, true);
    let mut st = FollowState {
        stage: Stage::Polling,
        ..Default::default()
    };
    let out = final_answer(BflAdapter.follow_up(&ready, &mut st, &c_url).unwrap());
    assert_eq!(out["data"][0]["url"], "https://delivery-eu1.bfl.ai/r/x.png?sig=1");
    // Moderated → 400; failures → 502; error statuses → converted with the detail.
    for (status, code) in [
        ("Content Moderated", 400),
        ("Request Moderated", 400),
        ("Error", 502),
        ("Failed", 502),
        ("Task not found", 502),
    ] {
        let mut st = FollowState {
            stage: Stage::Polling,
            ..Default::default()
        };
        let e = BflAdapter
            .follow_up(&answer(200, json!({"status": status})), &mut st, &c)
            .unwrap_err();
        assert_eq!(e.status(), code, "{status}");
        if code == 400 {
            assert_eq!(e.code(), "provider_error");
        }
    }
    let mut st = FollowState::default();
    let err = answer(402, json!({"detail": "Insufficient credits"}));
    assert!(matches!(
        BflAdapter.follow_up(&err, &mut st, &c).unwrap(),
        FollowUp::Done
    ));
    let e = BflAdapter.convert_response(&err, &c.response).unwrap_err();
    assert_eq!(e.status(), 402);
    // A failed download is a 502.
    let mut st = FollowState {
        stage: Stage::Downloading,
        ..Default::default()
    };
    assert_eq!(
        BflAdapter
            .follow_up(&answer(403, json!({})), &mut st, &c)
            .unwrap_err()
            .code(),
        "upstream_protocol_error"
    );
}

#[test]
fn expand_keeps_the_input_size_and_takes_its_borders() {
    let t = target("bfl", "flux-pro-1.0-expand", "");
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, png())]);
    let mut f = form("flux-pro-1.0-expand", parts, None);
    f.size = Some("1536x1024".into());
    f.extra_text = vec![("top".into(), "64".into())];
    let req = build_from_spool(&BflAdapter, &f, &spool, &t, "rid").unwrap();
    let body = rendered(&req, &spool);
    assert_eq!(body["top"], 64);
    assert!(
        body.get("aspect_ratio").is_none(),
        "Expand's schema has no aspect_ratio: {body}"
    );
    // A size no ratio fits is not refused where size is ignored.
    f.size = Some("3840x16".into());
    assert!(build_from_spool(&BflAdapter, &f, &spool, &t, "rid").is_ok());
    let kontext = target("bfl", "flux-kontext-pro", "");
    f.model = "flux-kontext-pro".into();
    let e = build_from_spool(&BflAdapter, &f, &spool, &kontext, "rid").unwrap_err();
    assert_eq!(e.param(), Some("size"));
    // What size does, per family, in `refract providers`.
    let table = crate::providers::capabilities::markdown_table();
    assert!(
        table.contains("| `bfl` | FLUX.1 Fill (flux-pro-1.0-fill*) |"),
        "{table}"
    );
    assert!(table.contains("ignored (the output keeps the input's size)"), "{table}");
}
