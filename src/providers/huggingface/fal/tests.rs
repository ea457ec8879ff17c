//! Request building and queue decisions of the router provider `fal-ai`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::imaging::{decode_png, encode_png, solid, ImageKind, MaskConvention};
use crate::providers::huggingface::HuggingFaceAdapter;
use crate::providers::test_support::*;
use crate::providers::ProviderAdapter;

fn png(shade: u8) -> Vec<u8> {
    encode_png(&solid(4, 3, [shade, 1, 1, 255])).unwrap()
}

#[test]
fn submit_maps_the_form_to_fal_fields() {
    let t = target("huggingface", "fal-ai/flux-kontext/dev", "");
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, png(1))]);
    let mut f = form("fal-ai/flux-kontext/dev", parts, None);
    f.n = Some(2);
    f.size = Some("512x256".into());
    f.seed = Some(7);
    f.num_inference_steps = Some(28);
    f.output_format = Some("jpeg".into());
    f.negative_prompt = Some("dropped".into());
    let req = build_from_spool(&HuggingFaceAdapter, &f, &spool, &t, "rid").unwrap();
    assert_eq!(req.method, http::Method::POST);
    assert_eq!(req.path, "/fal-ai/fal-ai/flux-kontext/dev?_subdomain=queue");
    assert_eq!(req.header("authorization"), Some("Bearer secret-key"));
    assert_eq!(req.header("accept"), Some("application/json"));
    assert_eq!(req.header("content-type"), Some("application/json"));
    let body = req.render(&spool).unwrap();
    let text = String::from_utf8(body).unwrap();
    let data_url = format!(
        "data:image/png;base64,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, png(1))
    );
    // Exactly these fields, in this order.
    assert_eq!(
        text,
        format!(
            r#"{{"prompt":"make it \"red\"","image_url":"{data_url}","num_images":2,"image_size":{{"width":512,"height":256}},"seed":7,"output_format":"jpeg","num_inference_steps":28}}"#
        )
    );
    // `b64_json` asks fal for data URLs; `webp` is not fal's: `png`; `auto` has no size.
    f.response_format = Some("b64_json".into());
    f.output_format = Some("webp".into());
    f.size = Some("auto".into());
    f.n = None;
    let v = rendered(
        &build_from_spool(&HuggingFaceAdapter, &f, &spool, &t, "r").unwrap(),
        &spool,
    );
    assert_eq!(v["sync_mode"], true);
    assert_eq!(v["output_format"], "png");
    assert!(v.get("image_size").is_none() && v.get("num_images").is_none(), "{v}");
}

#[test]
fn multi_image_endpoints_take_image_urls_and_the_router_cap_is_a_413() {
    let t = target("huggingface", "fal-ai/flux-2/edit", "");
    let jpeg = [0xFF, 0xD8, 0xFF, 0xE0, 0, 0x10, b'J', b'F', b'I', b'F', 0, 1, 2];
    let (spool, parts) = spool_with(&[
        ("image[]", ImageKind::Png, png(1)),
        ("image[]", ImageKind::Jpeg, jpeg.to_vec()),
    ]);
    let f = form("fal-ai/flux-2/edit", parts, None);
    let req = build_from_spool(&HuggingFaceAdapter, &f, &spool, &t, "rid").unwrap();
    assert_eq!(req.path, "/fal-ai/fal-ai/flux-2/edit?_subdomain=queue");
    let v = rendered(&req, &spool);
    let urls = v["image_urls"].as_array().unwrap();
    assert_eq!(urls.len(), 2);
    assert!(urls[0].as_str().unwrap().starts_with("data:image/png;base64,"));
    assert!(urls[1].as_str().unwrap().starts_with("data:image/jpeg;base64,"));
    assert_eq!((unb64(&urls[0]), unb64(&urls[1])), (png(1), jpeg.to_vec()));
    assert!(v.get("image_url").is_none());
    // Two images of 1.2 MB: over the router's 2 MB as data URLs, refused while building.
    let big = vec![7u8; 1_200_000];
    let (spool, parts) = spool_with(&[
        ("image[]", ImageKind::Png, big.clone()),
        ("image[]", ImageKind::Png, big),
    ]);
    let f = form("fal-ai/flux-2/edit", parts, None);
    let e = build_from_spool(&HuggingFaceAdapter, &f, &spool, &t, "rid").unwrap_err();
    assert_eq!(e.status(), 413);
    let caps = HuggingFaceAdapter.capabilities("fal-ai/flux-2/edit");
    assert_eq!((caps.max_images, caps.mask, caps.max_n), (4, false, 4));
}

#[test]
fn fill_endpoints_take_the_mask_as_white_means_edit() {
    let model = "fal-ai/flux-pro/v1/fill";
    let t = target("huggingface", model, "");
    let (spool, mut parts) = spool_with(&[
        (
            "image",
            ImageKind::Png,
            encode_png(&solid(4, 3, [9, 9, 9, 255])).unwrap(),
        ),
        ("mask", ImageKind::Png, unified_mask()),
    ]);
    let mask = parts.pop();
    let f = form(model, parts, mask);
    assert_eq!(
        HuggingFaceAdapter.mask_convention(&f, model),
        Some(MaskConvention::GrayWhiteEdit)
    );
    assert_eq!(HuggingFaceAdapter.mask_convention(&f, "fal-ai/flux-kontext/dev"), None);
    assert!(HuggingFaceAdapter.capabilities(model).mask);
    assert!(!HuggingFaceAdapter.capabilities("fal-ai/flux-kontext/dev").mask);
    let v = rendered(
        &build_from_spool(&HuggingFaceAdapter, &f, &spool, &t, "rid").unwrap(),
        &spool,
    );
    assert!(v["mask_url"].as_str().unwrap().starts_with("data:image/png;base64,"));
    let m = decode_png(&unb64(&v["mask_url"])).unwrap();
    // The unified mask's transparent left column (edit) is white, the rest black.
    assert_eq!(m.pixel(0, 1)[0], 255);
    assert_eq!(m.pixel(2, 1)[0], 0);
    // Without the converted mask the build refuses (the gateway always converts it first).
    let e = crate::providers::test_support::build(&HuggingFaceAdapter, &f, &t, "rid").unwrap_err();
    assert_eq!(e.status(), 500);
}

#[test]
fn model_ids_name_the_router_provider() {
    let shape = |m: &str| HuggingFaceAdapter.model_id_shape(m);
    for ok in [
        "fal-ai/flux-kontext/dev",
        "fal-ai/qwen-image-edit",
        "fal-ai/flux-pro/v1/fill",
        "timbrooks/instruct-pix2pix",
        "name",
        "hf-inference/timbrooks/instruct-pix2pix",
        "hf-inference/name",
    ] {
        assert_eq!(shape(ok), Ok(()), "{ok}");
    }
    for bad in [
        "fal-ai/a/b/c/d/e/f",
        "fal-ai/a:b",
        "owner/name/more",
        "hf-inference/a/b/c",
    ] {
        assert!(shape(bad).is_err(), "{bad}");
    }
    // `hf-inference/` is the same model as without it.
    let t = target("huggingface", "hf-inference/o/m", "");
    let (spool, parts) = spool_with(&[("image", ImageKind::Png, png(1))]);
    let req = build_from_spool(&HuggingFaceAdapter, &form("o/m", parts, None), &spool, &t, "r").unwrap();
    assert_eq!(req.path, "/hf-inference/models/o/m");
}

#[test]
fn the_queue_is_polled_on_the_router_then_the_result_fetched_and_downloaded() {
    let t = target("huggingface", "fal-ai/flux-kontext/dev", "");
    let c = cx(&t, false);
    let mut st = FollowState::default();
    let submitted = answer(
        200,
        json!({"request_id": "r-1", "status": "IN_QUEUE",
            "response_url": "https://queue.fal.run/fal-ai/flux-kontext/requests/r-1",
            "status_url": "https://queue.fal.run/fal-ai/flux-kontext/requests/r-1/status"}),
    );
    let (poll, to, after) = request(HuggingFaceAdapter.follow_up(&submitted, &mut st, &c).unwrap());
    assert_eq!(
        (poll.method.clone(), to, after),
        (http::Method::GET, None, Duration::from_millis(250))
    );
    assert_eq!(
        poll.path,
        "/fal-ai/fal-ai/flux-kontext/requests/r-1/status?_subdomain=queue"
    );
    assert_eq!(poll.header("authorization"), Some("Bearer secret-key"));
    assert_eq!(poll.header("accept"), Some("application/json"));
    assert!(poll.body.is_empty());
    let (again, _, _) = request(
        HuggingFaceAdapter
            .follow_up(&answer(202, json!({"status": "IN_PROGRESS"})), &mut st, &c)
            .unwrap(),
    );
    assert_eq!(again.path, poll.path);
    let (fetch, to, after) = request(
        HuggingFaceAdapter
            .follow_up(&answer(200, json!({"status": "COMPLETED"})), &mut st, &c)
            .unwrap(),
    );
    assert_eq!((to, after), (None, Duration::ZERO));
    assert_eq!(fetch.path, "/fal-ai/fal-ai/flux-kontext/requests/r-1?_subdomain=queue");
    assert_eq!(fetch.header("authorization"), Some("Bearer secret-key"));
    assert_eq!(st.polls, 2);
    let result = answer(
        200,
        json!({"images": [{"url": "https://v3.fal.media/files/a.png", "content_type": "image/png"},
                          {"url": "https://fal.media/files/b.png"}], "seed": 3}),
    );
    let (download, to, _) = request(HuggingFaceAdapter.follow_up(&result, &mut st, &c).unwrap());
    assert_eq!(to.as_deref(), Some("https://v3.fal.media/files/a.png"));
    assert!(
        download.header("authorization").is_none(),
        "the token stays on the router"
    );
    let (_, to, _) = request(HuggingFaceAdapter.follow_up(&image(&png(1)), &mut st, &c).unwrap());
    assert_eq!(to.as_deref(), Some("https://fal.media/files/b.png"));
    let out = final_answer(HuggingFaceAdapter.follow_up(&image(&png(2)), &mut st, &c).unwrap());
    assert_eq!(unb64(&out["data"][0]["b64_json"]), png(1));
    assert_eq!(unb64(&out["data"][1]["b64_json"]), png(2));

    // response_format=url: fal's URLs answered as they are.
    let cu = cx(&t, true);
    let mut st = FollowState {
        stage: Stage::Fetching,
        poll_url: Some("/fal-ai/fal-ai/flux-kontext/requests/r-1".into()),
        ..Default::default()
    };
    let out = final_answer(HuggingFaceAdapter.follow_up(&result, &mut st, &cu).unwrap());
    assert_eq!(out["data"][1]["url"], "https://fal.media/files/b.png");
    // sync_mode's data URLs are used as they are.
    let mut st = FollowState {
        stage: Stage::Fetching,
        ..Default::default()
    };
    let inline = answer(200, json!({"images": [{"url": png_data_url(&png(3))}]}));
    let out = final_answer(HuggingFaceAdapter.follow_up(&inline, &mut st, &c).unwrap());
    assert_eq!(unb64(&out["data"][0]["b64_json"]), png(3));
}

fn png_data_url(bytes: &[u8]) -> String {
    format!(
        "data:image/png;base64,{}",
        base64::Engine::encode(&base64::engine::general_purpose::STANDARD, bytes)
    )
}

#[test]
fn request_paths_come_from_the_answer_or_the_endpoint() {
    let t = target("huggingface", "fal-ai/flux-kontext/dev", "");
    let c = cx(&t, false);
    let first_poll = |body: Value| {
        let mut st = FollowState::default();
        HuggingFaceAdapter
            .follow_up(&answer(200, body), &mut st, &c)
            .map(|f| request(f).0.path)
    };
    // Without response_url: the endpoint's app (its first two segments).
    assert_eq!(
        first_poll(json!({"request_id": "abc"})).unwrap(),
        "/fal-ai/fal-ai/flux-kontext/requests/abc/status?_subdomain=queue"
    );
    for bad in [
        json!({"status": "IN_QUEUE"}),
        json!({"request_id": "../x"}),
        json!({"request_id": "abc", "response_url": "https://queue.fal.run/fal-ai/../../api/whoami-v2/requests/abc"}),
        json!({"request_id": "abc", "response_url": "https://queue.fal.run/fal-ai/flux/requests/other"}),
        json!({"request_id": "abc", "response_url": "not a url"}),
    ] {
        let e = first_poll(bad.clone()).unwrap_err();
        assert_eq!(e.status(), 502, "{bad}");
    }
}

#[test]
fn failed_jobs_and_errors() {
    let t = target("huggingface", "fal-ai/flux-kontext/dev", "");
    let c = cx(&t, false);
    let polling = || FollowState {
        stage: Stage::Polling,
        poll_url: Some("/fal-ai/fal-ai/flux-kontext/requests/r".into()),
        ..Default::default()
    };
    let e = HuggingFaceAdapter
        .follow_up(
            &answer(
                200,
                json!({"status": "COMPLETED", "error": "Image could not be processed"}),
            ),
            &mut polling(),
            &c,
        )
        .unwrap_err();
    assert_eq!(e.status(), 502);
    let j = e.to_json(&Default::default());
    assert!(
        j["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Image could not be processed"),
        "{j}"
    );
    assert_eq!(j["error"]["code"], "job_failed");
    let e = HuggingFaceAdapter
        .follow_up(&answer(200, json!({"status": "CANCELLED"})), &mut polling(), &c)
        .unwrap_err();
    assert_eq!(e.status(), 502);
    // Every image flagged: moderation.
    let mut st = FollowState {
        stage: Stage::Fetching,
        ..Default::default()
    };
    let e = HuggingFaceAdapter
        .follow_up(
            &answer(
                200,
                json!({"images": [{"url": "https://fal.media/x.png"}], "has_nsfw_concepts": [true]}),
            ),
            &mut st,
            &c,
        )
        .unwrap_err();
    assert_eq!(e.status(), 400);
    // An error status is converted, keeping fal's status and detail.
    let refused = answer(
        422,
        json!({"detail": [{"loc": ["body", "image_url"], "msg": "Could not load the image", "type": "value_error"}]}),
    );
    assert!(matches!(
        HuggingFaceAdapter.follow_up(&refused, &mut polling(), &c).unwrap(),
        FollowUp::Done
    ));
    let rcx = crate::providers::ResponseContext {
        model_deployment: "fal-ai/flux-kontext/dev",
        ..c.response.clone()
    };
    let e = HuggingFaceAdapter.convert_response(&refused, &rcx).unwrap_err();
    assert_eq!(e.status(), 422);
    assert_eq!(
        e.to_json(&Default::default())["error"]["message"],
        "Could not load the image"
    );
    // The router's own error shape.
    let e = HuggingFaceAdapter
        .convert_response(&answer(401, json!({"error": "Invalid credentials"})), &rcx)
        .unwrap_err();
    assert_eq!(e.status(), 401);
    assert_eq!(
        e.to_json(&Default::default())["error"]["message"],
        "Invalid credentials"
    );
}
