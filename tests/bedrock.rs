//! Kind `bedrock` end to end: a real gateway and a strict mock Bedrock that verifies every
//! request's SigV4 signature with its own implementation (canonical request, HMAC-SHA256 built
//! here from `sha2`, key derivation), with and without a session token; Bedrock API keys
//! (Bearer); the Titan/Nova body of every task (images byte for byte, the converted mask pixel
//! by pixel); Stability on Bedrock; error and filter mapping; synthesized streams; refusals
//! before any call; and the built-in simulator's edited pixels.
//! The cases every kind shares (basic edit, two images, mask, a refused capability, stream,
//! upstream error, fallback) are stamped on it in `tests/conformance`; this file keeps what is
//! specific to its wire.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::wire::assert_converted_mask as assert_mask;
use common::wire::bedrock::{body_json, verify_sigv4, ACCESS_KEY, SECRET};
use common::*;
use refract::codec::sse::SseDecoder;
use refract::imaging::{decode_png, encode_png, paint_colour, solid};
use serde_json::{json, Value};

const NOVA: &str = "amazon.nova-canvas-v1:0";
const NOVA_PATH: &str = "/model/amazon.nova-canvas-v1%3A0/invoke";
const TOKEN: &str = "IQoJb3JpZ2luX2VjE-session-TOKEN";
const API_KEY: &str = "bedrock-api-key-E2E";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// The independent SigV4 verifier (`common::wire::bedrock::verify_sigv4`)
// ---------------------------------------------------------------------------------------------

#[test]
fn the_verifier_reproduces_botocores_vector() {
    let vector = include_str!("fixtures/sigv4-bedrock-vector.txt");
    let line = |p: &str| vector.lines().find_map(|l| l.strip_prefix(p)).unwrap().to_string();
    let host = "bedrock-runtime.us-east-1.amazonaws.com";
    let r = Recorded {
        method: "POST".into(),
        path: NOVA_PATH.into(),
        headers: vec![
            ("Host".into(), host.into()),
            ("Content-Type".into(), b"application/json".to_vec()),
            ("Accept".into(), b"application/json".to_vec()),
            ("X-Amz-Date".into(), line("X-Amz-Date: ").into_bytes()),
            (
                "Authorization".into(),
                line("Authorization: ").replace("AKIDEXAMPLE", ACCESS_KEY).into_bytes(),
            ),
        ],
        body: line("body = ").into_bytes(),
        connection: 0,
        first_byte_at: std::time::Instant::now(),
        head_at: std::time::Instant::now(),
        complete: true,
    };
    verify_sigv4(&r, "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "us-east-1");
}

// ---------------------------------------------------------------------------------------------
// Fixtures
// ---------------------------------------------------------------------------------------------

/// A gateway with providers `bedrock` (AWS keys), `bedrock-tmp` (temporary credentials) and
/// `bedrock-key` (a Bedrock API key), all sending to `mock`.
fn gateway(mock: &MockUpstream) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    let base = format!("http://{}/br", mock.addr);
    setup.extra_providers = format!(
        "  - name: bedrock\n    kind: bedrock\n    region: us-east-1\n    base_url: {base}\n    keys:\n      - name: iam\n        aws_access_key_id: {ACCESS_KEY}\n        aws_secret_access_key: {SECRET}\n\
         \x20 - name: bedrock-tmp\n    kind: bedrock\n    region: eu-west-1\n    base_url: {base}\n    keys:\n      - name: sts\n        aws_access_key_id: {ACCESS_KEY}\n        aws_secret_access_key: {SECRET}\n        aws_session_token: {TOKEN}\n\
         \x20 - name: bedrock-key\n    kind: bedrock\n    region: us-east-1\n    base_url: {base}\n    keys:\n      - name: apikey\n        value: {API_KEY}\n"
    );
    Gateway::start(&setup)
}

/// The answer the mock gives: `n` distinct small PNGs.
fn answer(n: usize) -> (Value, Vec<Vec<u8>>) {
    let pngs: Vec<Vec<u8>> = (0..n)
        .map(|i| encode_png(&solid(2, 2, [i as u8 * 40, 1, 2, 255])).unwrap())
        .collect();
    let items: Vec<String> = pngs.iter().map(|p| b64(p)).collect();
    (json!({"images": items, "error": null}), pngs)
}

fn form(provider_model: &str, prompt: &str) -> Form {
    Form::new().text("model", provider_model).text("prompt", prompt).file(
        "image",
        "in.png",
        "image/png",
        &gradient_png(),
    )
}

// ---------------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------------

#[test]
fn signed_inpainting_with_and_without_a_session_token_and_with_an_api_key() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let (reply, pngs) = answer(2);
    for provider in ["bedrock", "bedrock-tmp", "bedrock-key"] {
        mock.push(Reply::json(200, &reply));
        let f = form(&format!("{provider}/{NOVA}"), "a \"red\" ball")
            .file("mask", "mask.png", "image/png", &unified_mask_png())
            .text("n", "2")
            .text("size", "1024x1024")
            .text("seed", "42")
            .text("quality", "high")
            .text("negative_prompt", "blurry");
        let r = gw.edit(&f, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{provider}: {}", r.text());
        let v = r.json();
        for (k, png) in pngs.iter().enumerate() {
            assert_eq!(&unb64(&v["data"][k]["b64_json"]), png);
        }
        assert_eq!(v["extra_fields"]["provider"], provider);
    }
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        assert_eq!(r.path, format!("/br{NOVA_PATH}"));
        assert_eq!(r.header("host"), Some(mock.addr.to_string()));
        let v = body_json(r);
        assert_eq!(v["taskType"], "INPAINTING");
        let p = &v["inPaintingParams"];
        assert_eq!(unb64(&p["image"]), gradient_png());
        assert_eq!(p["text"], "a \"red\" ball");
        assert_eq!(p["negativeText"], "blurry");
        assert_mask(&unb64(&p["maskImage"]), 0);
        assert_eq!(
            v["imageGenerationConfig"],
            json!({"numberOfImages": 2, "width": 1024, "height": 1024, "seed": 42, "quality": "premium"})
        );
    }
    let signed = verify_sigv4(&requests[0], SECRET, "us-east-1");
    assert_eq!(signed, ["accept", "content-type", "host", "x-amz-date"]);
    assert!(requests[0].header("x-amz-security-token").is_none());
    let signed = verify_sigv4(&requests[1], SECRET, "eu-west-1");
    assert_eq!(
        signed,
        ["accept", "content-type", "host", "x-amz-date", "x-amz-security-token"]
    );
    assert_eq!(requests[1].header("x-amz-security-token").as_deref(), Some(TOKEN));
    assert_eq!(
        requests[2].header("authorization").as_deref(),
        Some(&*format!("Bearer {API_KEY}"))
    );
    assert!(requests[2].header("x-amz-date").is_none());
}

#[test]
fn every_task_type_and_stability() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let (reply, _) = answer(1);
    let second = encode_png(&solid(3, 3, [7, 7, 7, 255])).unwrap();
    let cases: Vec<(Form, &str, &str)> = vec![
        (
            form(&format!("bedrock/{NOVA}"), "sea")
                .text("type", "outpainting")
                .file("mask", "m.png", "image/png", &unified_mask_png()),
            "OUTPAINTING",
            "outPaintingParams",
        ),
        (
            form(&format!("bedrock/{NOVA}"), "").text("type", "background_removal"),
            "BACKGROUND_REMOVAL",
            "backgroundRemovalParams",
        ),
        (
            form("bedrock/us.amazon.titan-image-generator-v2:0", "vary").file("image[]", "b.png", "image/png", &second),
            "IMAGE_VARIATION",
            "imageVariationParams",
        ),
        (
            form(&format!("bedrock/{NOVA}"), "fill")
                .text("type", "inpainting")
                .file("mask", "m.png", "image/png", &unified_mask_png()),
            "INPAINTING",
            "inPaintingParams",
        ),
    ];
    for (i, (f, task, params)) in cases.into_iter().enumerate() {
        mock.push(Reply::json(200, &reply));
        let r = gw.edit(&f, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{task}: {}", r.text());
        let rec = &mock.requests()[i];
        verify_sigv4(rec, SECRET, "us-east-1");
        let v = body_json(rec);
        assert_eq!(v["taskType"], task);
        let p = &v[params];
        match task {
            "OUTPAINTING" => {
                assert_eq!(p["outPaintingMode"], "DEFAULT");
                assert_mask(&unb64(&p["maskImage"]), 255);
            }
            "INPAINTING" => assert_mask(&unb64(&p["maskImage"]), 0),
            "BACKGROUND_REMOVAL" => {
                assert!(v.get("imageGenerationConfig").is_none());
                assert_eq!(p.as_object().unwrap().len(), 1);
            }
            _ => {
                assert_eq!(rec.path, "/br/model/us.amazon.titan-image-generator-v2%3A0/invoke");
                assert_eq!(unb64(&p["images"][1]), second);
            }
        }
        let image = if task == "IMAGE_VARIATION" {
            &p["images"][0]
        } else {
            &p["image"]
        };
        assert_eq!(unb64(image), gradient_png());
    }
    // Stability inpaint on Bedrock: flat body, white = edit mask.
    mock.push(Reply::json(
        200,
        &json!({"images": [b64(&second)], "seeds": [9], "finish_reasons": [null]}),
    ));
    let f = form("bedrock/stability.stable-image-inpaint-v1:0", "cat")
        .file("mask", "m.png", "image/png", &unified_mask_png())
        .text("seed", "9");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(unb64(&r.json()["data"][0]["b64_json"]), second);
    let rec = mock.requests().pop().unwrap();
    verify_sigv4(&rec, SECRET, "us-east-1");
    assert_eq!(rec.path, "/br/model/stability.stable-image-inpaint-v1%3A0/invoke");
    let v = body_json(&rec);
    assert_eq!(unb64(&v["image"]), gradient_png());
    assert_eq!((v["prompt"].as_str(), v["seed"].as_u64()), (Some("cat"), Some(9)));
    assert_eq!(v["output_format"], "png");
    assert_mask(&unb64(&v["mask"]), 255);
}

#[test]
fn errors_filters_and_streams() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let nova = format!("bedrock/{NOVA}");
    mock.push(Reply::json(
        400,
        &json!({"message": "This request has been blocked by our content filters."}),
    ));
    let r = gw.edit(&form(&nova, "x"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "moderation_blocked");
    mock.push(Reply::json(
        429,
        &json!({"message": "Too many requests, please wait before trying again."}),
    ));
    let r = gw.edit(&form(&nova, "x"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    assert_eq!(
        v["error"]["message"],
        "Too many requests, please wait before trying again."
    );
    mock.push(Reply::json(
        200,
        &json!({"images": [], "error": "This request has been blocked by our content filters."}),
    ));
    let r = gw.edit(&form(&nova, "x"), &[("x-bf-vk", VK)]);
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("moderation_blocked"))
    );
    // stream=true: one synthesized completed event per image.
    let (reply, pngs) = answer(2);
    mock.push(Reply::json(200, &reply));
    let r = gw.edit(
        &form(&nova, "x").text("n", "2").text("stream", "true"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
    let mut d = SseDecoder::new();
    let mut evs = Vec::new();
    d.feed(&r.body, &mut evs).unwrap();
    let completed: Vec<Value> = evs
        .iter()
        .filter(|e| e.event.as_deref() == Some("image_edit.completed"))
        .map(|e| serde_json::from_str(&e.data).unwrap())
        .collect();
    assert_eq!(completed.len(), 2, "{evs:?}");
    for (ev, png) in completed.iter().zip(&pngs) {
        assert_eq!(&unb64(&ev["b64_json"]), png);
    }
    let last = mock.requests().pop().unwrap();
    verify_sigv4(&last, SECRET, "us-east-1");
    assert!(body_json(&last).get("stream").is_none());
    for secret in [SECRET, TOKEN, API_KEY] {
        assert!(!gw.metrics_text().contains(secret));
    }
}

/// A 2×2 PNG that says which seed it answers.
fn seed_png(seed: u64) -> Vec<u8> {
    encode_png(&solid(2, 2, [(seed % 251) as u8, 3, 9, 255])).unwrap()
}

const STABILITY_INPAINT_PATH: &str = "/br/model/stability.stable-image-inpaint-v1%3A0/invoke";

/// Bedrock answering each Stability inpaint call with [`seed_png`] of its seed after `pause`
/// (a 500 for seed `fail`), and OpenAI-compatible edits (a fallback) with three images.
fn respond_by_seed(mock: &MockUpstream, pause: std::time::Duration, fail: Option<u64>) {
    mock.respond_with(move |rec| {
        if rec.path == "/v1/images/edits" {
            let data: Vec<Value> = (0..3).map(|i| json!({"b64_json": b64(&seed_png(200 + i))})).collect();
            return Reply::json(200, &json!({"created": 1, "data": data}));
        }
        assert_eq!(rec.path, STABILITY_INPAINT_PATH);
        let seed = body_json(rec)["seed"].as_u64().unwrap_or(0);
        let (status, body) = if Some(seed) == fail {
            (500, json!({"message": format!("seed {seed} failed")}))
        } else {
            (
                200,
                json!({"images": [b64(&seed_png(seed))], "seeds": [seed], "finish_reasons": [null]}),
            )
        };
        Reply::json_after(pause, status, &body)
    });
}

fn stability_form(n: u32, seed: u64) -> Form {
    form("bedrock/stability.stable-image-inpaint-v1:0", "cat")
        .file("mask", "m.png", "image/png", &unified_mask_png())
        .text("n", &n.to_string())
        .text("seed", &seed.to_string())
}

/// The images of a unified answer, checking `index` runs 0..n.
fn answer_images(v: &Value) -> Vec<Vec<u8>> {
    let data = v["data"].as_array().unwrap_or_else(|| panic!("no data: {v}"));
    data.iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!(d["index"], i, "{d}");
            unb64(&d["b64_json"])
        })
        .collect()
}

#[test]
fn stability_on_bedrock_n_is_served_by_n_signed_calls() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    respond_by_seed(&mock, std::time::Duration::ZERO, None);
    let r = gw.edit(&stability_form(3, 9), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(answer_images(&v), [seed_png(9), seed_png(10), seed_png(11)]);
    assert_eq!(v["extra_fields"]["provider"], "bedrock");
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    let mut seeds = Vec::new();
    for rec in &requests {
        verify_sigv4(rec, SECRET, "us-east-1");
        let v = body_json(rec);
        let mut keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            ["image", "mask", "output_format", "prompt", "seed"],
            "one image asked"
        );
        assert_eq!(unb64(&v["image"]), gradient_png());
        assert_mask(&unb64(&v["mask"]), 255);
        assert_eq!(
            (v["prompt"].as_str(), v["output_format"].as_str()),
            (Some("cat"), Some("png"))
        );
        seeds.push(v["seed"].as_u64().unwrap());
    }
    seeds.sort_unstable();
    assert_eq!(seeds, [9, 10, 11]);

    // stream=true, n=2: two `completed` events, the merged answer's images.
    let r = gw.edit(&stability_form(2, 20).text("stream", "true"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
    let completed = completed_events(&r.body);
    assert_eq!(completed.len(), 2, "{}", r.text());
    for (i, ev) in completed.iter().enumerate() {
        assert_eq!(unb64(&ev["b64_json"]), seed_png(20 + i as u64));
    }
    assert_eq!(mock.requests().len(), 5);
}

#[test]
fn stability_on_bedrock_calls_default_to_four_at_once() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    respond_by_seed(&mock, std::time::Duration::from_secs(1), None);
    let r = gw.edit(&stability_form(6, 30), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let want: Vec<Vec<u8>> = (30..36).map(seed_png).collect();
    assert_eq!(answer_images(&r.json()), want);
    assert_eq!(mock.requests().len(), 6);
    assert_eq!(mock.most_concurrent(), 4, "repeat_concurrency defaults to 4");
}

#[test]
fn a_failing_stability_call_on_bedrock_fails_the_attempt_and_falls_back() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    respond_by_seed(&mock, std::time::Duration::ZERO, Some(10));
    let r = gw.edit(&stability_form(3, 9), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 500, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["message"], "seed 10 failed");
    assert!(v.get("data").is_none(), "no half answer");
    let r = gw.edit(
        &stability_form(3, 9).text("fallbacks", "openai/gpt-image-1"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["extra_fields"]["provider"], "openai");
    assert_eq!(answer_images(&v), (200..203).map(seed_png).collect::<Vec<_>>());
}

#[test]
fn requests_beyond_the_capabilities_never_reach_bedrock() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let nova = format!("bedrock/{NOVA}");
    let two = form(&nova, "x")
        .file("image[]", "b.png", "image/png", &gradient_png())
        .file("mask", "m.png", "image/png", &unified_mask_png());
    let r = gw.edit(&two, &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 400, "unsupported_operation", "invalid_request_error", Some("image"));
    let r = gw.edit(&form(&nova, "x").text("n", "6"), &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 400, "unsupported_operation", "invalid_request_error", Some("n"));
    let r = gw.edit(&form(&nova, &"p".repeat(1025)), &[("x-bf-vk", VK)]);
    assert_gateway_error(
        &r,
        400,
        "unsupported_operation",
        "invalid_request_error",
        Some("prompt"),
    );
    let r = gw.edit(
        &form("bedrock/stability.stable-image-remove-background-v1:0", "x").text("type", "inpainting"),
        &[("x-bf-vk", VK)],
    );
    assert_gateway_error(&r, 400, "unsupported_operation", "invalid_request_error", Some("type"));
    let r = gw.edit(&form(&nova, "x").text("type", "outpainting"), &[("x-bf-vk", VK)]);
    assert_invalid(&r, "mask");
    assert!(mock.requests().is_empty(), "no upstream call");
}

#[test]
fn simulator_edits_through_the_gateway() {
    let mut setup = Setup::new("http://127.0.0.1:9/v1");
    setup.simulator = true;
    setup.extra_providers = format!(
        "  - name: bsim\n    kind: bedrock\n    region: us-east-1\n    base_url: http://{{sim}}\n    keys:\n      - name: iam\n        aws_access_key_id: {ACCESS_KEY}\n        aws_secret_access_key: {SECRET}\n"
    );
    let gw = Gateway::start(&setup);
    let f = form(&format!("bsim/{NOVA}"), "paint").text("type", "inpainting").file(
        "mask",
        "m.png",
        "image/png",
        &unified_mask_png(),
    );
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let out = decode_png(&unb64(&r.json()["data"][0]["b64_json"])).unwrap();
    let input = decode_png(&gradient_png()).unwrap();
    for y in 0..4 {
        for x in 0..6 {
            let want = if y < 2 {
                paint_colour("paint", 0)
            } else {
                input.pixel(x, y)
            };
            assert_eq!(out.pixel(x, y), want, "({x},{y})");
        }
    }
    let r = gw.edit(&form(&format!("bsim/{NOVA}"), "simulate-filtered"), &[("x-bf-vk", VK)]);
    assert_eq!(
        (r.status, r.json()["error"]["code"].clone()),
        (400, json!("moderation_blocked"))
    );
    let r = gw.edit(&form(&format!("bsim/{NOVA}"), "simulate-error:503"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 503, "{}", r.text());
}
