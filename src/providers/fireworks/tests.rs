//! Request fixtures and follow-up decisions of kind `fireworks`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::imaging::{encode_png, solid, ImageKind};
use crate::providers::test_support::build_from_spool;
use crate::providers::test_support::*;

fn png() -> Vec<u8> {
    encode_png(&solid(2, 2, [1, 1, 1, 255])).unwrap()
}

#[test]
fn request_and_polls() {
    let t = target("fireworks", "flux-kontext-pro", "");
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, png())]);
    let mut f = form("flux-kontext-pro", parts, None);
    f.output_format = Some("jpeg".into());
    let req = build_from_spool(&FireworksAdapter, &f, &spool, &t, "rid").unwrap();
    assert_eq!(
        req.path,
        "/inference/v1/workflows/accounts/fireworks/models/flux-kontext-pro"
    );
    assert_eq!(req.header("authorization"), Some("Bearer secret-key"));
    let body = rendered(&req, &spool);
    assert!(body["input_image"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));
    assert_eq!(unb64(&body["input_image"]), png());
    assert_eq!(body["output_format"], "jpeg");
    let full = target("fireworks", "accounts/me/models/my-flux", "");
    assert_eq!(
        build_from_spool(&FireworksAdapter, &f, &spool, &full, "r")
            .unwrap()
            .path,
        "/inference/v1/workflows/accounts/me/models/my-flux"
    );

    let c = cx(&t, false);
    let mut st = FollowState::default();
    let (poll, to, after) = request(
        FireworksAdapter
            .follow_up(&answer(200, json!({"request_id": "r1"})), &mut st, &c)
            .unwrap(),
    );
    assert_eq!((poll.method.clone(), to), (http::Method::POST, None));
    assert_eq!(
        poll.path,
        "/inference/v1/workflows/accounts/fireworks/models/flux-kontext-pro/get_result"
    );
    assert_eq!(rendered(&poll, &spool), json!({"id": "r1"}));
    assert_eq!(after, std::time::Duration::from_millis(250));
    let (again, _, _) = request(
        FireworksAdapter
            .follow_up(&answer(200, json!({"status": "Pending", "result": null})), &mut st, &c)
            .unwrap(),
    );
    assert_eq!(again.path, poll.path);
    // A raw base64 sample is used as is.
    let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png());
    let out = final_answer(
        FireworksAdapter
            .follow_up(
                &answer(200, json!({"status": "Ready", "result": {"sample": b64}})),
                &mut st,
                &c,
            )
            .unwrap(),
    );
    assert_eq!(unb64(&out["data"][0]["b64_json"]), png());
    // A URL sample is downloaded.
    let mut st = FollowState {
        stage: Stage::Polling,
        ..Default::default()
    };
    let ready = answer(
        200,
        json!({"status": "Ready", "result": {"sample": "https://x.fireworks.ai/s.png"}}),
    );
    let (_, to, _) = request(FireworksAdapter.follow_up(&ready, &mut st, &c).unwrap());
    assert_eq!(to.as_deref(), Some("https://x.fireworks.ai/s.png"));
    let mut st = FollowState {
        stage: Stage::Polling,
        ..Default::default()
    };
    let e = FireworksAdapter
        .follow_up(&answer(200, json!({"status": "Content Moderated"})), &mut st, &c)
        .unwrap_err();
    assert_eq!(e.status(), 400);
    let e = FireworksAdapter
        .follow_up(&answer(200, json!({"status": "Error"})), &mut st, &c)
        .unwrap_err();
    assert_eq!(e.status(), 502);
    let e = FireworksAdapter
        .convert_response(&answer(401, json!({"error": {"message": "bad key"}})), &c.response)
        .unwrap_err();
    assert_eq!(e.status(), 401);
}
