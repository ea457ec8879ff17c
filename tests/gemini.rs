//! Kind `gemini` end to end: a real gateway in front of a strict mock of the Gemini API (it
//! checks the path, the key header, the JSON shape, and every inlined image byte for byte), and
//! in front of the built-in simulator (checking the edited pixels).
//! The cases every kind shares (basic edit, two images, mask, a refused capability, stream,
//! upstream error, fallback) are stamped on it in `tests/conformance`; this file keeps what is
//! specific to its wire.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::*;
use refract::codec::sse::SseDecoder;
use refract::imaging::{decode_png, encode_png, paint_colour, solid, Rgba};
use serde_json::{json, Value};
use std::time::Duration;

const GEMINI_KEY: &str = "AIza-gemini-upstream-KEY-42";
const MODEL: &str = "gemini-2.5-flash-image";

/// A gateway with provider `gem` (kind gemini) pointing at `mock`'s `/v1beta`.
fn gateway(mock: &MockUpstream) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.extra_providers = format!(
        "  - name: gem\n    kind: gemini\n    base_url: http://{}/v1beta\n    keys:\n      - {{name: g, value: {GEMINI_KEY}}}\n",
        mock.addr
    );
    Gateway::start(&setup)
}

/// A form editing `png` with `prompt` on `provider`'s Gemini model.
fn one_image_form(provider: &str, prompt: &str, png: &[u8]) -> Form {
    Form::new()
        .text("model", &format!("{provider}/{MODEL}"))
        .text("prompt", prompt)
        .file("image", "a.png", "image/png", png)
}

/// A GenerateContentResponse with one candidate per image.
fn gemini_answer(images: &[&str]) -> Value {
    common::wire::gemini::gemini_answer(MODEL, images)
}

/// Checks what Gemini requires of every request and returns the body as JSON, after checking
/// each inlined image against `uploads` byte for byte (`common::wire::gemini`).
fn check_gemini_request(rec: &Recorded, mock: &MockUpstream, method: &str, uploads: &[&[u8]]) -> Value {
    let path = format!("/v1beta/models/{MODEL}:{method}");
    common::wire::gemini::check_gemini_request(rec, mock, &path, GEMINI_KEY, uploads)
}

#[test]
fn edit_is_translated_to_generate_content_and_back() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    mock.push(Reply::json(200, &gemini_answer(&["SU1BR0UtMA==", "SU1BR0UtMQ=="])));
    let first = big_png_like(300_000, 3);
    let second = tiny_png();
    let form = Form::new()
        .text("model", &format!("gem/{MODEL}"))
        .text("prompt", "make the \"sky\" green")
        .text("n", "2")
        .text("size", "1536x1024")
        .text("seed", "42")
        .text("quality", "high")
        .file("image[]", "a.bin", "application/octet-stream", &first)
        .file("image[]", "b.png", "image/png", &second);
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    let v = check_gemini_request(&rec, &mock, "generateContent", &[&first, &second]);
    assert_eq!(v["contents"][0]["parts"][2]["text"], "make the \"sky\" green");
    assert_eq!(
        v["generationConfig"],
        json!({"responseModalities":["TEXT","IMAGE"],"candidateCount":2,"seed":42,
               "imageConfig":{"aspectRatio":"3:2","imageSize":"2K"}})
    );
    let out = r.json();
    assert_eq!(out["data"][0]["b64_json"], "SU1BR0UtMA==");
    assert_eq!(out["data"][1]["b64_json"], "SU1BR0UtMQ==");
    assert_eq!(out["data"][1]["index"], 1);
    assert_eq!(out["output_format"], "png");
    assert_eq!(out["usage"]["input_tokens"], 265);
    assert_eq!(out["usage"]["output_tokens_details"]["image_tokens"], 1290);
    assert_eq!(out["extra_fields"]["provider"], "gem");
    assert_eq!(out["extra_fields"]["model_requested"], MODEL);
}

#[test]
fn stream_true_gives_completed_events() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let chunk = |i: u32, data: &str, output: u32| {
        format!(
            "data: {}\r\n\r\n",
            json!({"candidates":[{"content":{"role":"model","parts":[{"inlineData":{"mimeType":"image/png","data":data}}]},"finishReason":"STOP","index":i}],
                   "usageMetadata":{"promptTokenCount":265,"candidatesTokenCount":output,"totalTokenCount":265 + output}})
        )
    };
    let mut body = format!(
        "data: {}\r\n\r\n",
        json!({"candidates":[{"content":{"role":"model","parts":[{"text":"Here you go"}]},"index":0}],"usageMetadata":{"promptTokenCount":265,"totalTokenCount":265}})
    );
    body += &chunk(0, "SU1HMA==", 1290);
    body += &chunk(1, "SU1HMQ==", 2580);
    mock.push(Reply::Chunked {
        status: 200,
        content_type: "text/event-stream".into(),
        body: body.into_bytes(),
        piece: 13,
        pause: Duration::ZERO,
    });
    let upload = tiny_png();
    let form = Form::new()
        .text("model", &format!("gem/{MODEL}"))
        .text("prompt", "p")
        .text("n", "2")
        .text("stream", "true")
        .file("image", "a.png", "image/png", &upload);
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
    check_gemini_request(&mock.only_request(), &mock, "streamGenerateContent?alt=sse", &[&upload]);
    let mut d = SseDecoder::new();
    let mut evs = Vec::new();
    d.feed(&r.body, &mut evs).unwrap();
    assert_eq!(d.finish(), 0);
    assert_eq!(evs.len(), 2, "{}", r.text());
    for (i, ev) in evs.iter().enumerate() {
        assert_eq!(ev.event.as_deref(), Some("image_edit.completed"));
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(v["type"], "image_edit.completed");
        assert_eq!(v["sequence_number"], i);
        assert_eq!(v["b64_json"], format!("SU1HM{}==", ["A", "Q"][i]));
        assert_eq!(v["extra_fields"]["request_type"], "image_edit_stream");
    }
    let last: Value = serde_json::from_str(&evs[1].data).unwrap();
    assert_eq!(last["usage"]["output_tokens"], 2580);
}

#[test]
fn n_and_size_are_refused_before_any_upstream_request() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let base = || one_image_form("gem", "p", &tiny_png());
    // A mask and `type`: `conformance` (gemini::mask, gemini::refused_capability).
    let r = gw.edit(&base().text("n", "5"), &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 400, "unsupported_operation", "invalid_request_error", Some("n"));
    let r = gw.edit(&base().text("size", "1024x1664"), &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 400, "unsupported_operation", "invalid_request_error", Some("size"));
    assert!(mock.requests().is_empty(), "the mock saw nothing");
    assert!(mock.incomplete().is_empty(), "the mock saw nothing");
}

#[test]
fn image_safety_and_google_errors() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock);
    let form = || one_image_form("gem", "p", &tiny_png());
    mock.push(Reply::json(
        200,
        &json!({"candidates":[{"finishReason":"IMAGE_SAFETY","index":0}],"usageMetadata":{"promptTokenCount":10}}),
    ));
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "moderation_blocked");
    assert!(v["error"]["message"].as_str().unwrap().contains("IMAGE_SAFETY"), "{v}");

    mock.push(Reply::json(
        429,
        &json!({"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}),
    ));
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["message"], "Resource has been exhausted (e.g. check quota).");
    assert_eq!(v["error"]["code"], "RESOURCE_EXHAUSTED");
    assert_eq!(v["is_bifrost_error"], false);
    assert_eq!(mock.requests().len(), 2);
}

/// A gateway whose provider `gsim` (kind gemini) is the built-in simulator.
fn simulated() -> Gateway {
    let mut setup = Setup::new("http://127.0.0.1:9/v1");
    setup.simulator = true;
    setup.extra_providers =
        "  - name: gsim\n    kind: gemini\n    base_url: http://{sim}/v1beta\n    keys:\n      - {name: g, value: sim-gemini-key}\n"
            .into();
    Gateway::start(&setup)
}

fn image_of(v: &Value) -> Rgba {
    let png = base64::engine::general_purpose::STANDARD
        .decode(v["b64_json"].as_str().unwrap())
        .unwrap();
    decode_png(&png).unwrap()
}

/// The simulator's edit without a mask: each channel averaged with the paint colour.
fn blended(input: [u8; 4], prompt: &str, index: u32) -> [u8; 4] {
    let c = paint_colour(prompt, index);
    let mix = |k: usize| ((u16::from(input[k]) + u16::from(c[k])) / 2) as u8;
    [mix(0), mix(1), mix(2), input[3]]
}

#[test]
fn simulator_edits_through_the_gateway() {
    let gw = simulated();
    let input = [200, 100, 50, 255];
    let png = encode_png(&solid(6, 4, input)).unwrap();
    let form = |model: &str, extra: &[(&str, &str)]| {
        let mut f = Form::new()
            .text("model", &format!("gsim/{model}"))
            .text("prompt", "green sky")
            .text("n", "2")
            .text("size", "1024x1024");
        for (k, v) in extra {
            f = f.text(k, v);
        }
        f.file("image", "a.png", "image/png", &png)
    };
    // Gemini 3 sends a thought image first: it must not show up.
    for model in [MODEL, "gemini-3-pro-image-preview"] {
        let r = gw.edit(&form(model, &[]), &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 2, "{model}");
        for (i, item) in data.iter().enumerate() {
            let img = image_of(item);
            assert_eq!((img.width, img.height), (6, 4));
            assert_eq!(
                img.pixel(5, 3),
                blended(input, "green sky", i as u32),
                "{model} image {i}"
            );
        }
        assert_eq!(v["usage"]["output_tokens"], 2 * 1290);
        assert_eq!(v["usage"]["input_tokens_details"]["image_tokens"], 258);
    }
    // Streamed: one completed event per image, the same pixels.
    let r = gw.edit(&form(MODEL, &[("stream", "true")]), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let mut d = SseDecoder::new();
    let mut evs = Vec::new();
    d.feed(&r.body, &mut evs).unwrap();
    assert_eq!(evs.len(), 2, "{}", r.text());
    for (i, ev) in evs.iter().enumerate() {
        let v: Value = serde_json::from_str(&ev.data).unwrap();
        assert_eq!(v["type"], "image_edit.completed");
        assert_eq!(image_of(&v).pixel(0, 0), blended(input, "green sky", i as u32));
    }
    // The safety hook, whole and streamed; an error hook.
    for stream in ["false", "true"] {
        let f = one_image_form("gsim", "simulate-image-safety", &png).text("stream", stream);
        let r = gw.edit(&f, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 400, "stream={stream}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "moderation_blocked");
    }
    let r = gw.edit(&one_image_form("gsim", "simulate-error:503", &png), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "UNAVAILABLE");
}
