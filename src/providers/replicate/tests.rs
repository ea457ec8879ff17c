//! Request fixtures and follow-up decisions of kind `replicate`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::imaging::{encode_png, solid, ImageKind};
use crate::providers::test_support::build_from_spool;
use crate::providers::test_support::*;

fn png() -> Vec<u8> {
    encode_png(&solid(2, 2, [5, 5, 5, 255])).unwrap()
}

#[test]
fn requests_per_model_and_image_key() {
    let rules = "    model_rules:\n      - { match: \"black-forest-labs/flux-fill-*\", image_key: image }\n      - { match: \"x/multi\", image_key: input_images }\n";
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, png())]);
    let mut f = form("black-forest-labs/flux-kontext-pro", parts, None);
    f.seed = Some(7);
    f.output_format = Some("jpeg".into());
    f.size = Some("1024x1024".into());
    let t = target("replicate", "black-forest-labs/flux-kontext-pro", rules);
    let req = build_from_spool(&ReplicateAdapter, &f, &spool, &t, "rid").unwrap();
    assert_eq!(req.path, "/v1/models/black-forest-labs/flux-kontext-pro/predictions");
    assert_eq!(req.header("authorization"), Some("Bearer secret-key"));
    assert_eq!(req.header("prefer"), Some("wait=60"));
    let body = rendered(&req, &spool);
    assert_eq!(unb64(&body["input"]["input_image"]), png());
    assert_eq!(body["input"]["seed"], 7);
    assert_eq!(body["input"]["output_format"], "jpg");
    assert_eq!(body["input"]["aspect_ratio"], "1:1");
    assert!(body.get("version").is_none());
    let t = target("replicate", "black-forest-labs/flux-fill-pro", rules);
    let body = rendered(
        &build_from_spool(&ReplicateAdapter, &f, &spool, &t, "r").unwrap(),
        &spool,
    );
    assert_eq!(unb64(&body["input"]["image"]), png());
    let t = target("replicate", "x/multi", rules);
    let body = rendered(
        &build_from_spool(&ReplicateAdapter, &f, &spool, &t, "r").unwrap(),
        &spool,
    );
    assert_eq!(unb64(&body["input"]["input_images"][0]), png());
    let t = target("replicate", "owner/name:abc123", rules);
    let req = build_from_spool(&ReplicateAdapter, &f, &spool, &t, "r").unwrap();
    assert_eq!(req.path, "/v1/predictions");
    assert_eq!(rendered(&req, &spool)["version"], "abc123");
}

#[test]
fn follow_ups_for_every_status() {
    let t = target("replicate", "a/b", "");
    let c = cx(&t, false);
    let get = "https://api.replicate.com/v1/predictions/q1";
    let mut st = FollowState::default();
    let (req, to, after) = request(
        ReplicateAdapter
            .follow_up(
                &answer(201, json!({"status": "starting", "urls": {"get": get}})),
                &mut st,
                &c,
            )
            .unwrap(),
    );
    assert_eq!((req.method.clone(), to.as_deref()), (http::Method::GET, Some(get)));
    assert_eq!(req.header("authorization"), Some("Bearer secret-key"));
    assert_eq!(after, std::time::Duration::from_millis(250));
    let (_, to, _) = request(
        ReplicateAdapter
            .follow_up(&answer(200, json!({"status": "processing"})), &mut st, &c)
            .unwrap(),
    );
    assert_eq!(to.as_deref(), Some(get));
    let done = answer(
        200,
        json!({"status": "succeeded", "output": ["https://replicate.delivery/a.png", "https://replicate.delivery/b.png"]}),
    );
    let (_, to, _) = request(ReplicateAdapter.follow_up(&done, &mut st, &c).unwrap());
    assert_eq!(to.as_deref(), Some("https://replicate.delivery/a.png"));
    let (_, to, _) = request(ReplicateAdapter.follow_up(&image(&png()), &mut st, &c).unwrap());
    assert_eq!(to.as_deref(), Some("https://replicate.delivery/b.png"));
    let out = final_answer(ReplicateAdapter.follow_up(&image(&png()), &mut st, &c).unwrap());
    assert_eq!(out["data"].as_array().unwrap().len(), 2);
    assert_eq!(unb64(&out["data"][1]["b64_json"]), png());
    // URLs returned as they are.
    let mut st = FollowState::default();
    let single = answer(
        200,
        json!({"status": "succeeded", "output": "https://replicate.delivery/a.png"}),
    );
    let out = final_answer(ReplicateAdapter.follow_up(&single, &mut st, &cx(&t, true)).unwrap());
    assert_eq!(out["data"][0]["url"], "https://replicate.delivery/a.png");
    // Failures.
    for (body, status) in [
        (json!({"status": "failed", "error": "NSFW content detected"}), 400),
        (json!({"status": "failed", "error": "CUDA out of memory"}), 502),
        (json!({"status": "canceled"}), 502),
    ] {
        let mut st = FollowState::default();
        let e = ReplicateAdapter.follow_up(&answer(200, body), &mut st, &c).unwrap_err();
        assert_eq!(e.status(), status);
    }
    let problem = answer(
        422,
        json!({"title": "Invalid input", "detail": "input.prompt is required", "status": 422}),
    );
    let mut st = FollowState::default();
    assert!(matches!(
        ReplicateAdapter.follow_up(&problem, &mut st, &c).unwrap(),
        FollowUp::Done
    ));
    let e = ReplicateAdapter.convert_response(&problem, &c.response).unwrap_err();
    let j = e.to_json(&crate::error::ErrorContext::default());
    assert_eq!(
        (e.status(), j["error"]["message"].clone()),
        (422, json!("input.prompt is required"))
    );
}
