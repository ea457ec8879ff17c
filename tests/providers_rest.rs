//! Kinds `stability`, `huggingface` (hf-inference and fal-ai through the router) and `xai` end
//! to end: a real gateway in front of strict
//! mocks (path, auth, accept, body shape, every image byte for byte, Stability's converted mask
//! pixel by pixel), synthesized streams, refusals before any upstream call, provider errors,
//! and each kind in front of the built-in simulator (checking the edited pixels).
//! The cases every kind shares (basic edit, two images, mask, a refused capability, stream,
//! upstream error, fallback) are stamped on them in `tests/conformance`; this file keeps what is
//! specific to their wires.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::wire::stability::{assert_stability_mask, stability_answer};
use common::*;
use refract::codec::sse::SseDecoder;
use refract::imaging::{decode_png, encode_png, paint_colour, solid, Rgba};
use serde_json::{json, Value};

const STABILITY_KEY: &str = "sk-stability-upstream-1";
const HF_KEY: &str = "hf_upstream_token_2";
const XAI_KEY: &str = "xai-upstream-key-3";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// Providers `stab`, `hf` and `xai` at `base` (`{sim}` for the simulator).
fn providers(base: &str) -> String {
    format!(
        "  - name: stab\n    kind: stability\n    base_url: http://{base}\n    keys:\n      - {{name: s, value: {STABILITY_KEY}}}\n\
         \x20 - name: hf\n    kind: huggingface\n    base_url: http://{base}\n    keys:\n      - {{name: h, value: {HF_KEY}}}\n\
         \x20 - name: xai\n    kind: xai\n    base_url: http://{base}/v1\n    keys:\n      - {{name: x, value: {XAI_KEY}}}\n"
    )
}

fn gateway(mock: &MockUpstream) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.extra_providers = providers(&mock.addr.to_string());
    Gateway::start(&setup)
}

fn form(model: &str, prompt: Option<&str>, image: &[u8]) -> Form {
    let f = Form::new().text("model", model);
    let f = match prompt {
        Some(p) => f.text("prompt", p),
        None => f,
    };
    f.file("image", "in.png", "image/png", image)
}

/// The `image_edit.completed` events of a streamed answer.
fn completed_events(r: &Response) -> Vec<Value> {
    let mut d = SseDecoder::new();
    let mut evs = Vec::new();
    d.feed(&r.body, &mut evs).unwrap();
    evs.iter()
        .filter_map(|e| serde_json::from_str::<Value>(&e.data).ok())
        .filter(|v| v["type"] == "image_edit.completed")
        .collect()
}

fn text_part(parts: &[Part], name: &str) -> String {
    let p = parts_named(parts, name);
    assert_eq!(p.len(), 1, "part {name}");
    p[0].text()
}

/// What Stability requires of every request (`common::wire::stability`); returns the parts.
fn check_stability(rec: &Recorded, service: &str) -> Vec<Part> {
    common::wire::stability::check_stability(rec, service, STABILITY_KEY, &gradient_png())
}

#[test]
fn stability_serves_every_edit_type() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let out = encode_png(&solid(2, 2, [7, 8, 9, 255])).unwrap();

    // Inpainting: the mask converted to white = edit, opaque grayscale.
    mock.push(Reply::json(200, &stability_answer(&out)));
    let f = form("stab/sd3", Some("a red ball"), &gradient_png())
        .text("type", "inpainting")
        .text("seed", "42")
        .text("negative_prompt", "blurry")
        .text("output_format", "png")
        .text("quality", "high")
        .file("mask", "m.png", "image/png", &unified_mask_png());
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(unb64(v["data"][0]["b64_json"].as_str().unwrap()), out);
    assert_eq!(v["output_format"], "png");
    assert_eq!(v["extra_fields"]["provider"], "stab");
    let rec = mock.only_request();
    let parts = check_stability(&rec, "inpaint");
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(
        names,
        ["image", "mask", "prompt", "negative_prompt", "seed", "output_format"]
    );
    assert_stability_mask(&parts_named(&parts, "mask")[0].data);
    assert_eq!(text_part(&parts, "prompt"), "a red ball");
    assert_eq!(text_part(&parts, "seed"), "42");

    // Outpainting: the border from size.
    mock.push(Reply::json(200, &stability_answer(&out)));
    let f = form("stab/sd3", Some("more sky"), &gradient_png())
        .text("type", "outpainting")
        .text("size", "16x16");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = check_stability(&mock.requests()[1], "outpaint");
    let sides: Vec<String> = ["left", "right", "up", "down"]
        .iter()
        .map(|s| text_part(&parts, s))
        .collect();
    assert_eq!(sides, ["5", "5", "6", "6"]);

    // Background removal: no prompt needed, only image and output_format sent.
    mock.push(Reply::json(200, &stability_answer(&out)));
    let f = form("stab/sd3", None, &gradient_png())
        .text("type", "background_removal")
        .text("output_format", "webp");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = check_stability(&mock.requests()[2], "remove-background");
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["image", "output_format"]);

    // stream=true: one synthesized completed event.
    mock.push(Reply::json(200, &stability_answer(&out)));
    let f = form("stab/sd3", Some("a red ball"), &gradient_png())
        .file("mask", "m.png", "image/png", &unified_mask_png())
        .text("stream", "true");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
    let completed = completed_events(&r);
    assert_eq!(completed.len(), 1, "{}", r.text());
    assert_eq!(unb64(completed[0]["b64_json"].as_str().unwrap()), out);
    let parts = check_stability(&mock.requests()[3], "inpaint");
    assert!(parts_named(&parts, "stream").is_empty());
    assert_eq!(mock.requests().len(), 4);
}

#[test]
fn stability_filters_and_errors() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let f = || {
        form("stab/sd3", Some("p"), &gradient_png())
            .text("type", "inpainting")
            .file("mask", "m.png", "image/png", &unified_mask_png())
    };
    mock.push(Reply::json(
        200,
        &json!({"image": b64(&gradient_png()), "finish_reason": "CONTENT_FILTERED", "seed": 1}),
    ));
    let r = gw.edit(&f(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "moderation_blocked");
    mock.push(Reply::json(
        403,
        &json!({"id": "x1", "name": "content_moderation", "errors": ["Your request was flagged"]}),
    ));
    let r = gw.edit(&f(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 403, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["message"], "Your request was flagged");
    assert_eq!(v["error"]["code"], "content_moderation");
    assert_eq!(v["is_bifrost_error"], false);
    assert!(!r.text().contains(STABILITY_KEY));
}

// ---------------------------------------------------------------------------------------------
// n > 1 on Stability: n calls of one image each
// ---------------------------------------------------------------------------------------------

/// A 2×2 PNG that says which seed it answers.
fn seed_png(seed: u64) -> Vec<u8> {
    encode_png(&solid(2, 2, [(seed % 251) as u8, (seed / 251 % 251) as u8, 9, 255])).unwrap()
}

/// The `seed` part of a recorded Stability request.
fn seed_of(rec: &Recorded) -> Option<u64> {
    let parts = rec.parts();
    parts_named(&parts, "seed").first().map(|p| p.text().parse().unwrap())
}

/// A Stability mock answering each edit with [`seed_png`] of its seed (after `pause`), or a
/// 500 for seed `fail`; OpenAI-compatible edits (a fallback) get three images.
fn respond_by_seed(mock: &MockUpstream, pause: std::time::Duration, fail: Option<u64>) {
    mock.respond_with(move |rec| {
        if rec.path == "/v1/images/edits" {
            let data: Vec<Value> = (0..3).map(|i| json!({"b64_json": b64(&seed_png(900 + i))})).collect();
            return Reply::json(200, &json!({"created": 1, "data": data}));
        }
        let seed = seed_of(rec).unwrap_or(0);
        let (status, body) = if Some(seed) == fail {
            (
                500,
                json!({"id": "e1", "name": "internal_error", "errors": [format!("seed {seed} failed")]}),
            )
        } else {
            (200, stability_answer(&seed_png(seed)))
        };
        Reply::json_after(pause, status, &body)
    });
}

fn inpaint_form(model: &str, n: u32) -> Form {
    form(model, Some("a red ball"), &gradient_png())
        .text("type", "inpainting")
        .text("n", &n.to_string())
        .file("mask", "m.png", "image/png", &unified_mask_png())
}

#[test]
fn stability_n_is_served_by_n_calls_with_seeds_seed_plus_i() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    respond_by_seed(&mock, std::time::Duration::ZERO, None);
    let r = gw.edit(&inpaint_form("stab/sd3", 3).text("seed", "42"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), 3, "{v}");
    for (i, item) in data.iter().enumerate() {
        assert_eq!(item["index"], i, "{item}");
        let png = unb64(item["b64_json"].as_str().unwrap());
        assert_eq!(
            png,
            seed_png(42 + i as u64),
            "image {i} answers call {i} (seed 42 + {i})"
        );
        assert_eq!(decode_png(&png).unwrap().width, 2);
    }
    assert_eq!(v["output_format"], "png");
    assert_eq!(v["extra_fields"]["provider"], "stab");
    assert!(v["created"].as_u64().unwrap() > 0);
    assert_eq!(r.text().matches("\"extra_fields\"").count(), 1);
    // Exactly three upstream calls, each a valid single-image Stability request.
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    let mut seeds = Vec::new();
    for rec in &requests {
        let parts = check_stability(rec, "inpaint");
        let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["image", "mask", "prompt", "seed"]);
        assert_stability_mask(&parts_named(&parts, "mask")[0].data);
        assert_eq!(text_part(&parts, "prompt"), "a red ball");
        seeds.push(seed_of(rec).unwrap());
    }
    seeds.sort_unstable();
    assert_eq!(seeds, [42, 43, 44]);

    // Without a seed, and with 0 (random for Stability), every call sends the same.
    for (seed, sent) in [(None, None), (Some("0"), Some(0))] {
        let before = mock.requests().len();
        let f = match seed {
            Some(s) => inpaint_form("stab/sd3", 2).text("seed", s),
            None => inpaint_form("stab/sd3", 2),
        };
        let r = gw.edit(&f, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.json()["data"].as_array().unwrap().len(), 2);
        let sent_seeds: Vec<Option<u64>> = mock.requests()[before..].iter().map(seed_of).collect();
        assert_eq!(sent_seeds, [sent, sent]);
    }

    // stream=true: the merged answer as one `completed` event per image.
    let r = gw.edit(
        &inpaint_form("stab/sd3", 2).text("seed", "7").text("stream", "true"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
    let completed = completed_events(&r);
    assert_eq!(completed.len(), 2, "{}", r.text());
    for (i, ev) in completed.iter().enumerate() {
        assert_eq!(unb64(ev["b64_json"].as_str().unwrap()), seed_png(7 + i as u64));
    }
    assert_eq!(mock.requests().len(), 3 + 4 + 2);
}

#[test]
fn stability_calls_run_at_most_repeat_concurrency_at_once() {
    let mock = MockUpstream::start();
    let mut setup = Setup::new(&mock.base_url());
    setup.extra_providers = format!(
        "{}  - name: stab2\n    kind: stability\n    base_url: http://{}\n    repeat_concurrency: 2\n    keys:\n      - {{name: s, value: {STABILITY_KEY}}}\n",
        providers(&mock.addr.to_string()),
        mock.addr
    );
    let gw = Gateway::start(&setup);
    // Each answer takes a second, so calls that may overlap do.
    respond_by_seed(&mock, std::time::Duration::from_secs(1), None);
    let r = gw.edit(&inpaint_form("stab2/sd3", 5).text("seed", "100"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let data = r.json()["data"].as_array().unwrap().clone();
    let images: Vec<Vec<u8>> = data.iter().map(|d| unb64(d["b64_json"].as_str().unwrap())).collect();
    let want: Vec<Vec<u8>> = (100..105).map(seed_png).collect();
    assert_eq!(images, want, "in call order");
    assert_eq!(mock.requests().len(), 5);
    assert_eq!(
        mock.most_concurrent(),
        2,
        "at most repeat_concurrency calls at once, and that many"
    );
}

#[test]
fn one_failing_stability_call_fails_the_attempt_and_the_fallback_serves_it_whole() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    respond_by_seed(&mock, std::time::Duration::ZERO, Some(43));
    let r = gw.edit(&inpaint_form("stab/sd3", 3).text("seed", "42"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 500, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["message"], "seed 43 failed");
    assert_eq!(v["is_bifrost_error"], false);
    assert!(v.get("data").is_none(), "no half answer");
    let calls = mock.requests();
    assert!((1..=3).contains(&calls.len()), "{} calls", calls.len());
    assert!(calls.iter().any(|c| seed_of(c) == Some(43)));

    // With a fallback, the fallback serves the whole request (all three images).
    let r = gw.edit(
        &inpaint_form("stab/sd3", 3)
            .text("seed", "42")
            .text("fallbacks", "openai/gpt-image-1"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["extra_fields"]["provider"], "openai");
    assert_eq!(v["extra_fields"]["fallback_index"], 1);
    let images: Vec<Vec<u8>> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| unb64(d["b64_json"].as_str().unwrap()))
        .collect();
    assert_eq!(images, (900..903).map(seed_png).collect::<Vec<_>>());
    let openai: Vec<Recorded> = mock
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v1/images/edits")
        .collect();
    assert_eq!(openai.len(), 1);
    assert_eq!(text_part(&openai[0].parts(), "n"), "3");
}

#[test]
fn requests_beyond_the_capabilities_never_reach_the_provider() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let png = gradient_png();
    let unsupported = |r: &Response, param: &str| {
        assert_gateway_error(r, 400, "unsupported_operation", "invalid_request_error", Some(param));
    };
    // Stability: no type and no mask; outpainting without size; a mask with removal. (n > 1
    // is served by n calls: `stability_n_is_served_by_n_calls_with_seeds_seed_plus_i`.)
    let r = gw.edit(&form("stab/sd3", Some("p"), &png), &[("x-bf-vk", VK)]);
    assert_invalid(&r, "type");
    let r = gw.edit(
        &form("stab/sd3", Some("p"), &png).text("type", "outpainting"),
        &[("x-bf-vk", VK)],
    );
    assert_invalid(&r, "size");
    let r = gw.edit(
        &form("stab/sd3", None, &png).text("type", "background_removal").file(
            "mask",
            "m.png",
            "image/png",
            &unified_mask_png(),
        ),
        &[("x-bf-vk", VK)],
    );
    assert_invalid(&r, "mask");
    // A mask of another size than the image (in either convention: an opaque white = edit
    // mask is Stability's own, and served: `conformance`, stability::white_edit_mask).
    let other_size = encode_png(&solid(5, 4, [255, 255, 255, 255])).unwrap();
    let r = gw.edit(
        &form("stab/sd3", Some("p"), &png).file("mask", "m.png", "image/png", &other_size),
        &[("x-bf-vk", VK)],
    );
    assert_invalid(&r, "mask");
    // xAI: four images (a mask and a type: `conformance`, xai::mask and
    // xai::refused_capability).
    let mut four = form("xai/grok-imagine-image", Some("p"), &png);
    for _ in 0..3 {
        four = four.file("image[]", "x.png", "image/png", &png);
    }
    let r = gw.edit(&four, &[("x-bf-vk", VK)]);
    unsupported(&r, "image");
    // Hugging Face: a 3 MB image (the router caps bodies at 2 MB). Two images and url output:
    // `conformance` (huggingface::multi_image, huggingface::refused_capability).
    let big = big_png_like(3_000_000, 7);
    let r = gw.edit(&form("hf/owner/model", Some("p"), &big), &[("x-bf-vk", VK)]);
    unsupported(&r, "image");
    assert!(mock.requests().is_empty(), "the mock saw nothing");
    assert!(mock.incomplete().is_empty(), "the mock saw nothing");
}

#[test]
fn huggingface_sends_json_and_answers_raw_bytes() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let out = encode_png(&solid(3, 3, [1, 2, 3, 255])).unwrap();
    mock.push(Reply::raw(200, "image/png", &out));
    let f = form("hf/timbrooks/instruct-pix2pix", Some("make it blue"), &gradient_png())
        .text("negative_prompt", "blurry")
        .text("num_inference_steps", "20")
        .text("size", "512x256")
        .text("seed", "3");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(unb64(v["data"][0]["b64_json"].as_str().unwrap()), out);
    assert_eq!(v["output_format"], "png");
    let rec = mock.only_request();
    assert_eq!(rec.path, "/hf-inference/models/timbrooks/instruct-pix2pix");
    assert_eq!(rec.header("authorization"), Some(format!("Bearer {HF_KEY}")));
    assert_eq!(rec.header("accept").as_deref(), Some("image/png"));
    assert_eq!(rec.header("content-type").as_deref(), Some("application/json"));
    let body: Value = serde_json::from_slice(&rec.body).unwrap();
    assert_eq!(unb64(body["inputs"].as_str().unwrap()), gradient_png());
    assert_eq!(
        body["parameters"],
        json!({"prompt": "make it blue", "negative_prompt": "blurry", "num_inference_steps": 20,
            "target_size": {"width": 512, "height": 256}})
    );

    // stream=true: synthesized.
    mock.push(Reply::raw(200, "image/png", &out));
    let r = gw.edit(
        &form("hf/o/m", Some("p"), &gradient_png()).text("stream", "true"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let completed = completed_events(&r);
    assert_eq!(completed.len(), 1, "{}", r.text());
    assert_eq!(unb64(completed[0]["b64_json"].as_str().unwrap()), out);

    // A loading model: 503 kept, with the wait.
    mock.push(Reply::json(
        503,
        &json!({"error": "Model o/m is currently loading", "estimated_time": 42.0}),
    ));
    let r = gw.edit(&form("hf/o/m", Some("p"), &gradient_png()), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert!(
        v["error"]["message"].as_str().unwrap().contains("currently loading"),
        "{v}"
    );
    assert_eq!(v["error"]["estimated_time"], 42.0);
}

#[test]
fn xai_sends_data_urls_in_json() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let second = encode_png(&solid(2, 2, [5, 5, 5, 255])).unwrap();
    let jpeg = jpeg_like();
    mock.push(Reply::json(
        200,
        &json!({"data": [{"b64_json": "aW1hZ2UtMA=="}, {"b64_json": "aW1hZ2UtMQ=="}]}),
    ));
    let f = form("xai/grok-imagine-image", Some("make the car red"), &gradient_png())
        .file("image[]", "b.png", "image/png", &second)
        .file("image[]", "c.jpg", "image/jpeg", &jpeg)
        .text("n", "2")
        .text("size", "1024x576")
        .text("seed", "5")
        .text("quality", "high");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["data"][1]["b64_json"], "aW1hZ2UtMQ==");
    assert_eq!(v["data"][1]["index"], 1);
    let rec = mock.only_request();
    assert_eq!(rec.path, "/v1/images/edits");
    assert_eq!(rec.header("authorization"), Some(format!("Bearer {XAI_KEY}")));
    assert_eq!(rec.header("content-type").as_deref(), Some("application/json"));
    let body: Value = serde_json::from_slice(&rec.body).unwrap();
    let images = body["images"].as_array().unwrap();
    let expect = [
        ("image/png", gradient_png()),
        ("image/png", second.clone()),
        ("image/jpeg", jpeg.clone()),
    ];
    for (img, (mime, bytes)) in images.iter().zip(&expect) {
        let url = img["url"].as_str().unwrap();
        let data = url
            .strip_prefix(&format!("data:{mime};base64,"))
            .unwrap_or_else(|| panic!("{}", &url[..40]));
        assert_eq!(&unb64(data), bytes);
    }
    assert_eq!(images.len(), 3);
    let mut keys: Vec<&str> = body.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        [
            "aspect_ratio",
            "images",
            "model",
            "n",
            "prompt",
            "resolution",
            "response_format"
        ]
    );
    assert_eq!(body["model"], "grok-imagine-image");
    assert_eq!(body["n"], 2);
    assert_eq!(body["response_format"], "b64_json");
    assert_eq!(
        (body["aspect_ratio"].as_str(), body["resolution"].as_str()),
        (Some("16:9"), Some("1k"))
    );

    // One image → `image`; url output passes through; errors keep the status.
    mock.push(Reply::json(
        200,
        &json!({"data": [{"url": "https://imgen.x.ai/tmp/1.png"}]}),
    ));
    let r = gw.edit(
        &form("xai/grok-imagine-image", Some("p"), &gradient_png()).text("response_format", "url"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["url"], "https://imgen.x.ai/tmp/1.png");
    let body: Value = serde_json::from_slice(&mock.requests()[1].body).unwrap();
    assert!(body.get("images").is_none());
    assert!(body["image"]["url"]
        .as_str()
        .unwrap()
        .starts_with("data:image/png;base64,"));
    assert_eq!(body["response_format"], "url");
    mock.push(Reply::json(
        429,
        &json!({"code": "Some resource has been exhausted", "error": "rate limited"}),
    ));
    let r = gw.edit(
        &form("xai/grok-imagine-image", Some("p"), &gradient_png()),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["message"], "rate limited");
}

/// The simulator's edit without a mask: each channel averaged with the paint colour.
fn blended(input: [u8; 4], prompt: &str, index: u32) -> [u8; 4] {
    let c = paint_colour(prompt, index);
    let mix = |k: usize| ((u16::from(input[k]) + u16::from(c[k])) / 2) as u8;
    [mix(0), mix(1), mix(2), input[3]]
}

fn image_of(v: &Value) -> Rgba {
    decode_png(&unb64(v["b64_json"].as_str().unwrap())).unwrap()
}

#[test]
fn each_kind_edits_through_the_simulator() {
    let mut setup = Setup::new("http://127.0.0.1:9/v1");
    setup.simulator = true;
    setup.extra_providers = providers("{sim}");
    let gw = Gateway::start(&setup);
    let input = [200, 100, 50, 255];
    let png = encode_png(&solid(6, 4, input)).unwrap();

    // Stability inpainting: the top two rows (transparent in the unified mask) painted.
    let f = form("stab/sd3", Some("red ball"), &png).file("mask", "m.png", "image/png", &unified_mask_png());
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let img = image_of(&r.json()["data"][0]);
    for y in 0..4 {
        let want = if y < 2 { paint_colour("red ball", 0) } else { input };
        assert_eq!(img.pixel(3, y), want, "row {y}");
    }
    // Outpainting grows the canvas to `size`; background removal clears the corner colour.
    let r = gw.edit(
        &form("stab/sd3", Some("sky"), &png)
            .text("type", "outpainting")
            .text("size", "16x16"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let img = image_of(&r.json()["data"][0]);
    assert_eq!((img.width, img.height), (16, 16));
    assert_eq!(img.pixel(0, 0), paint_colour("sky", 0));
    assert_eq!(img.pixel(5, 6), input);
    let r = gw.edit(
        &form("stab/sd3", None, &png).text("type", "background_removal"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(image_of(&r.json()["data"][0]).pixel(1, 1), [0, 0, 0, 0]);
    // The filtered and error hooks.
    let hook = |prompt: &str| {
        form("stab/sd3", Some(prompt), &png).text("type", "inpainting").file(
            "mask",
            "m.png",
            "image/png",
            &unified_mask_png(),
        )
    };
    let r = gw.edit(&hook("simulate-filtered"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "moderation_blocked");
    let r = gw.edit(&hook("simulate-error:429"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 429, "{}", r.text());

    // Hugging Face: raw PNG back, blended.
    let r = gw.edit(&form("hf/owner/model", Some("blue"), &png), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let img = image_of(&r.json()["data"][0]);
    assert_eq!(img.pixel(5, 3), blended(input, "blue", 0));
    let r = gw.edit(
        &form("hf/owner/model", Some("simulate-error:503"), &png),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 503, "{}", r.text());
    // fal-ai through the router: queued, polled, fetched and downloaded, n images listed.
    let r = gw.edit(
        &form("hf/fal-ai/flux-kontext/dev", Some("blue"), &png).text("n", "2"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["data"].as_array().unwrap().len(), 2, "{v}");
    assert_eq!(image_of(&v["data"][1]).pixel(5, 3), blended(input, "blue", 0));

    // xAI: two images in, two out, streamed too.
    let f = form("xai/grok-imagine-image", Some("green"), &png)
        .file("image[]", "b.png", "image/png", &tiny_png())
        .text("n", "2")
        .text("size", "1024x1024");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    for i in 0..2 {
        assert_eq!(image_of(&v["data"][i]).pixel(0, 0), blended(input, "green", i as u32));
    }
    let r = gw.edit(&f.text("stream", "true"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let completed = completed_events(&r);
    assert_eq!(completed.len(), 2, "{}", r.text());
    assert_eq!(image_of(&completed[1]).pixel(0, 0), blended(input, "green", 1));
    // The OpenAI simulator route still answers multipart on the same path.
    let r = gw.edit(&form("demo/sim", Some("p"), &png), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
}

/// A gateway whose provider `fal` (kind `huggingface`, polling every 20 ms) sends to `mock`.
fn fal_gateway(mock: &MockUpstream) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.extra_providers = format!(
        "  - name: fal\n    kind: huggingface\n    base_url: http://{}\n    poll_interval_ms: 20\n    keys:\n      - {{name: h, value: {HF_KEY}}}\n",
        mock.addr
    );
    Gateway::start(&setup)
}

/// fal's submit answer for request `id` of app `fal-ai/flux-kontext`.
fn fal_submitted(id: &str) -> Reply {
    let url = format!("https://queue.fal.run/fal-ai/flux-kontext/requests/{id}");
    Reply::json(
        200,
        &json!({"request_id": id, "status": "IN_QUEUE", "response_url": url, "status_url": format!("{url}/status")}),
    )
}

#[test]
fn huggingface_fal_ai_is_queued_polled_and_fetched_through_the_router() {
    let mock = MockUpstream::start();
    let gw = fal_gateway(&mock);
    let (one, two) = (
        encode_png(&solid(2, 2, [10, 20, 30, 255])).unwrap(),
        encode_png(&solid(2, 2, [40, 50, 60, 255])).unwrap(),
    );
    mock.push(fal_submitted("q1"));
    mock.push(Reply::json(202, &json!({"status": "IN_QUEUE", "queue_position": 1})));
    mock.push(Reply::json(202, &json!({"status": "IN_PROGRESS"})));
    mock.push(Reply::json(200, &json!({"status": "COMPLETED"})));
    let file = |name: &str| format!("http://{}/files/{name}", mock.addr);
    mock.push(Reply::json(
        200,
        &json!({"images": [{"url": file("a.png")}, {"url": file("b.png")}], "has_nsfw_concepts": [false, false]}),
    ));
    mock.push(Reply::raw(200, "image/png", &one));
    mock.push(Reply::raw(200, "image/png", &two));
    let f = form("fal/fal-ai/flux-kontext/dev", Some("make it \"blue\""), &gradient_png())
        .text("n", "2")
        .text("size", "512x256")
        .text("seed", "9")
        .text("num_inference_steps", "30")
        .text("output_format", "jpeg");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(unb64(v["data"][0]["b64_json"].as_str().unwrap()), one);
    assert_eq!(unb64(v["data"][1]["b64_json"].as_str().unwrap()), two);
    assert_eq!(v["extra_fields"]["provider"], "fal", "{v}");
    let recs = mock.requests();
    let paths: Vec<(&str, &str)> = recs.iter().map(|r| (r.method.as_str(), r.path.as_str())).collect();
    let queued = "/fal-ai/fal-ai/flux-kontext/requests/q1";
    assert_eq!(
        paths,
        [
            ("POST", "/fal-ai/fal-ai/flux-kontext/dev?_subdomain=queue"),
            ("GET", &*format!("{queued}/status?_subdomain=queue")),
            ("GET", &*format!("{queued}/status?_subdomain=queue")),
            ("GET", &*format!("{queued}/status?_subdomain=queue")),
            ("GET", &*format!("{queued}?_subdomain=queue")),
            ("GET", "/files/a.png"),
            ("GET", "/files/b.png"),
        ]
    );
    let bearer = format!("Bearer {HF_KEY}");
    for rec in &recs[..5] {
        assert_eq!(rec.header("authorization"), Some(bearer.clone()), "{}", rec.path);
    }
    for rec in &recs[5..] {
        assert_eq!(rec.header("authorization"), None, "the token never leaves the router");
    }
    let body: Value = serde_json::from_slice(&recs[0].body).unwrap();
    let image_url = body["image_url"].as_str().unwrap();
    assert_eq!(
        image_url.strip_prefix("data:image/png;base64,").map(unb64),
        Some(gradient_png())
    );
    assert_eq!(
        body,
        json!({"prompt": "make it \"blue\"", "image_url": image_url, "num_images": 2,
            "image_size": {"width": 512, "height": 256}, "seed": 9, "output_format": "jpeg",
            "num_inference_steps": 30})
    );

    // response_format=b64_json: sync_mode, and fal's data URLs need no download.
    mock.push(fal_submitted("q2"));
    mock.push(Reply::json(200, &json!({"status": "COMPLETED"})));
    mock.push(Reply::json(
        200,
        &json!({"images": [{"url": format!("data:image/png;base64,{}", b64(&one))}]}),
    ));
    let f = form("fal/fal-ai/flux-kontext/dev", Some("p"), &gradient_png()).text("response_format", "b64_json");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(unb64(r.json()["data"][0]["b64_json"].as_str().unwrap()), one);
    let recs = mock.requests();
    assert_eq!(recs.len(), 7 + 3, "submit, one poll, the result");
    let body: Value = serde_json::from_slice(&recs[7].body).unwrap();
    assert_eq!(body["sync_mode"], true);
}

#[test]
fn huggingface_fal_ai_failures() {
    let mock = MockUpstream::start();
    let gw = fal_gateway(&mock);
    let edit = || {
        gw.edit(
            &form("fal/fal-ai/flux-kontext/dev", Some("p"), &gradient_png()),
            &[("x-bf-vk", VK)],
        )
    };
    // A job fal reports failed: 502 job_failed with its reason.
    mock.push(fal_submitted("f1"));
    mock.push(Reply::json(
        200,
        &json!({"status": "COMPLETED", "error": "Image could not be processed", "error_type": "image_load_error"}),
    ));
    let r = edit();
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "job_failed", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("Image could not be processed"),
        "{v}"
    );
    assert_eq!(mock.requests().len(), 2, "no result fetched for a failed job");
    // A job whose result fal refuses (422 with a detail): status and detail kept.
    mock.push(fal_submitted("f2"));
    mock.push(Reply::json(200, &json!({"status": "COMPLETED"})));
    mock.push(Reply::json(
        422,
        &json!({"detail": [{"loc": ["body", "prompt"], "msg": "prompt is too long", "type": "value_error"}]}),
    ));
    let r = edit();
    assert_eq!(r.status, 422, "{}", r.text());
    assert_eq!(r.json()["error"]["message"], "prompt is too long");
    assert_eq!(mock.requests().len(), 5);
    // A result URL off the router and off fal's delivery hosts: refused, never fetched.
    for url in [
        "https://evil.example/files/x.png",
        "https://fal.media.evil.example/x.png",
        "https://169.254.169.254/latest/meta-data",
    ] {
        let before = mock.requests().len();
        mock.push(fal_submitted("s1"));
        mock.push(Reply::json(200, &json!({"status": "COMPLETED"})));
        mock.push(Reply::json(200, &json!({"images": [{"url": url}]})));
        let r = edit();
        assert_eq!(r.status, 502, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "upstream_protocol_error", "{v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains("refusing to follow"),
            "{v}"
        );
        assert_eq!(mock.requests().len(), before + 3, "{url} was fetched");
    }
    // Over the router's 2 MB: two 1.2 MB images as data URLs, a 413 before any upstream call.
    let before = mock.requests().len();
    let big = big_png_like(1_200_000, 3);
    let f = Form::new()
        .text("model", "fal/fal-ai/flux-2/edit")
        .text("prompt", "p")
        .file("image[]", "a.png", "image/png", &big)
        .file("image[]", "b.png", "image/png", &big);
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(mock.requests().len(), before, "the router saw nothing");
    assert!(mock.incomplete().is_empty(), "the router saw nothing");
}
