//! Google GenAI inbound (`/genai/…`) end to end: a real gateway in this process, Gemini's
//! `generateContent` / `streamGenerateContent` and Imagen's Vertex `:predict` bodies sent as
//! google-genai sends them, served by a strict mock (OpenAI multipart out, Gemini JSON out:
//! every image compared byte for byte) and by the built-in simulator; answers and errors in
//! Google's shapes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::*;
use refract::codec::sse::SseDecoder;
use refract::imaging::{decode_png, encode_png, solid};
use serde_json::{json, Value};

const GEMINI_KEY: &str = "AIza-gemini-upstream-KEY-genai";
const GEMINI_MODEL: &str = "gemini-2.5-flash-image";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

/// A gateway in front of `mock` (providers `openai`, `other`, and `gem` of kind gemini), with
/// the simulator as `demo` when `simulator`.
fn gateway(mock: &MockUpstream, simulator: bool) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.simulator = simulator;
    setup.extra_providers = format!(
        "  - name: gem\n    kind: gemini\n    base_url: http://{}/v1beta\n    keys:\n      - {{name: g, value: {GEMINI_KEY}}}\n",
        mock.addr
    );
    Gateway::start(&setup)
}

/// POSTs the JSON `body` to `path` with `headers` and reads the answer.
fn post_json(gw: &Gateway, path: &str, headers: &[(&str, &str)], body: &Value) -> Response {
    let body = body.to_string();
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut c = gw.connect();
    c.send(head.as_bytes());
    c.send(body.as_bytes());
    c.read_response()
}

/// A `generateContent` body as google-genai sends it: the images as `inlineData`, then the prompt.
fn generate_body(images: &[&[u8]], prompt: &str) -> Value {
    let mut parts: Vec<Value> = images
        .iter()
        .map(|i| json!({"inlineData": {"mimeType": "image/png", "data": b64(i)}}))
        .collect();
    parts.push(json!({"text": prompt}));
    json!({"contents": [{"role": "user", "parts": parts}],
           "generationConfig": {"responseModalities": ["IMAGE"]}})
}

/// Checks Google's error envelope and returns it.
fn assert_google_error(r: &Response, status: u16, name: &str) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["error"]["code"], status, "{body}");
    assert_eq!(body["error"]["status"], name, "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert!(body.get("is_bifrost_error").is_none(), "{body}");
    body
}

#[test]
fn generate_content_in_openai_out_byte_for_byte() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false);
    mock.always(Reply::json(200, &default_success()));
    let first = big_png_like(300_000, 5);
    let second = tiny_png();
    let mut body = generate_body(&[&first, &second], "make it blue");
    body["generationConfig"]["candidateCount"] = json!(2);
    // The model as google-genai sends `provider/model` (its `/` raw), then percent-encoded.
    for path in [
        "/genai/v1beta/models/openai/gpt-image-1:generateContent",
        "/genai/v1beta/models/openai%2Fgpt-image-1:generateContent",
    ] {
        let r = post_json(&gw, path, &[("x-goog-api-key", VK)], &body);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
        let answer = r.json();
        let candidates = answer["candidates"].as_array().expect("candidates");
        assert_eq!(candidates.len(), 2, "{answer}");
        for (i, want) in ["aW1hZ2UtMA==", "aW1hZ2UtMQ=="].iter().enumerate() {
            let part = &candidates[i]["content"]["parts"][0]["inlineData"];
            assert_eq!(part["data"], *want);
            assert_eq!(part["mimeType"], "image/png");
            assert_eq!(candidates[i]["finishReason"], "STOP");
        }
        assert_eq!(answer["usageMetadata"]["promptTokenCount"], 10);
        assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 20);
        assert_eq!(answer["usageMetadata"]["totalTokenCount"], 30);
        assert_eq!(answer["modelVersion"], "openai/gpt-image-1");
    }
    for rec in mock.requests() {
        assert_eq!(rec.path, "/v1/images/edits");
        assert_eq!(rec.header("authorization"), Some(format!("Bearer {PROVIDER_KEY}")));
        let parts = rec.parts();
        let field = |name: &str| parts.iter().find(|p| p.name == name).map(|p| p.data.clone());
        assert_eq!(field("model").as_deref(), Some(&b"gpt-image-1"[..]));
        assert_eq!(field("prompt").as_deref(), Some(&b"make it blue"[..]));
        assert_eq!(field("n").as_deref(), Some(&b"2"[..]));
        let images: Vec<&Part> = parts.iter().filter(|p| p.name.starts_with("image")).collect();
        assert_eq!(images.len(), 2);
        assert!(images[0].data == first, "the first image differs from the upload");
        assert!(images[1].data == second, "the second image differs from the upload");
    }
    assert_eq!(mock.requests().len(), 2);
    // Counted as any edit: by provider, model and status.
    wait_until("both GenAI edits counted", || {
        gw.metrics_text().lines().any(|l| {
            l.starts_with("refract_requests_total{")
                && l.contains(r#"provider="openai""#)
                && l.contains(r#"model="gpt-image-1""#)
                && l.contains(r#"status="200""#)
                && l.ends_with(" 2")
        })
    });
}

#[test]
fn generate_content_in_gemini_out_byte_for_byte_with_the_key_as_a_query_parameter() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false);
    mock.push(Reply::json(
        200,
        &common::wire::gemini::gemini_answer(GEMINI_MODEL, &["SU1BR0UtMA=="]),
    ));
    let image = big_png_like(100_000, 9);
    let mut body = generate_body(&[&image], "a hat");
    body["generationConfig"]["imageConfig"] = json!({"aspectRatio": "16:9"});
    let path = format!("/genai/v1beta/models/gem%2F{GEMINI_MODEL}:generateContent?key={VK}");
    let r = post_json(&gw, &path, &[], &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    assert_eq!(
        answer["candidates"][0]["content"]["parts"][0]["inlineData"]["data"],
        "SU1BR0UtMA=="
    );
    assert_eq!(answer["usageMetadata"]["promptTokenCount"], 265);
    assert_eq!(answer["usageMetadata"]["candidatesTokenCount"], 1290);
    let rec = mock.only_request();
    let sent = common::wire::gemini::check_gemini_request(
        &rec,
        &mock,
        &format!("/v1beta/models/{GEMINI_MODEL}:generateContent"),
        GEMINI_KEY,
        &[&image],
    );
    assert_eq!(sent["generationConfig"]["imageConfig"]["aspectRatio"], "16:9", "{sent}");
    assert_eq!(sent["contents"][0]["parts"][1]["text"], "a hat");
}

#[test]
fn stream_generate_content_answers_one_gemini_sse_event() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false);
    mock.always(Reply::json(200, &default_success()));
    let body = generate_body(&[&tiny_png()], "p");
    let r = post_json(
        &gw,
        "/genai/v1beta/models/openai%2Fgpt-image-1:streamGenerateContent?alt=sse",
        &[("x-goog-api-key", VK)],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r
        .header("content-type")
        .unwrap_or_default()
        .starts_with("text/event-stream"));
    let mut events = Vec::new();
    let mut decoder = SseDecoder::new();
    decoder.feed(&r.body, &mut events).expect("SSE");
    assert_eq!(events.len(), 1, "{}", r.text());
    let chunk: Value = serde_json::from_str(&events[0].data).expect("JSON");
    assert_eq!(
        chunk["candidates"][0]["content"]["parts"][0]["inlineData"]["data"],
        "aW1hZ2UtMA=="
    );
    assert_eq!(chunk["candidates"][0]["finishReason"], "STOP");
}

#[test]
fn errors_come_in_googles_envelope() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false);
    let body = generate_body(&[&tiny_png()], "p");
    let path = "/genai/v1beta/models/openai%2Fgpt-image-1:generateContent";
    assert_google_error(&post_json(&gw, path, &[], &body), 401, "UNAUTHENTICATED");
    assert_google_error(
        &post_json(&gw, path, &[("x-goog-api-key", "sk-bf-nobody")], &body),
        401,
        "UNAUTHENTICATED",
    );
    // The restricted key may not use `other`.
    assert_google_error(
        &post_json(
            &gw,
            "/genai/v1beta/models/other%2Fgpt-image-1:generateContent",
            &[("x-goog-api-key", VK_RESTRICTED)],
            &body,
        ),
        403,
        "PERMISSION_DENIED",
    );
    assert_google_error(
        &post_json(
            &gw,
            "/genai/v1beta/models/nope%2Fm:generateContent",
            &[("x-goog-api-key", VK)],
            &body,
        ),
        400,
        "INVALID_ARGUMENT",
    );
    let e = assert_google_error(
        &post_json(
            &gw,
            path,
            &[("x-goog-api-key", VK)],
            &json!({"contents": [{"parts": [{"text": "p"}]}]}),
        ),
        400,
        "INVALID_ARGUMENT",
    );
    assert!(e["error"]["message"].as_str().unwrap().contains("image"), "{e}");
    // A provider's error, in Google's envelope too.
    mock.push(Reply::json(
        429,
        &json!({"error": {"message": "slow down", "type": "rate_limit", "code": "rate_limit_exceeded"}}),
    ));
    let e = assert_google_error(
        &post_json(&gw, path, &[("x-goog-api-key", VK)], &body),
        429,
        "RESOURCE_EXHAUSTED",
    );
    assert!(e["error"]["message"].as_str().unwrap().contains("slow down"), "{e}");
    let r = Gateway::call(gw.addr, "GET", path, &[("x-goog-api-key", VK)]);
    assert_eq!(r.status, 405);
    assert_eq!(mock.received(), 1, "only the valid request went upstream");
}

#[test]
fn the_body_limit_applies() {
    let mock = MockUpstream::start();
    let mut setup = Setup::new(&mock.base_url());
    setup.limits = "  max_body_bytes: 200000\n".into();
    let gw = Gateway::start(&setup);
    let body = generate_body(&[&big_png_like(300_000, 1)], "p");
    let r = post_json(
        &gw,
        "/genai/v1beta/models/openai%2Fgpt-image-1:generateContent",
        &[("x-goog-api-key", VK)],
        &body,
    );
    assert_google_error(&r, 413, "INVALID_ARGUMENT");
    assert_eq!(mock.received(), 0);
}

#[test]
fn imagen_predict_through_the_simulator() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, true);
    let image = encode_png(&solid(16, 16, [255, 255, 255, 255])).unwrap();
    // A mask in Imagen's convention (opaque, white = edit): the left half. The simulator
    // speaks OpenAI's wire: it receives it converted to alpha 0 = edit.
    let mut mask = solid(16, 16, [0, 0, 0, 255]);
    for y in 0..16 {
        for x in 0..8 {
            let i = (y * 16 + x) * 4;
            mask.pixels[i..i + 3].copy_from_slice(&[255, 255, 255]);
        }
    }
    let mask = encode_png(&mask).unwrap();
    let body = json!({
        "instances": [{"prompt": "paint it", "referenceImages": [
            {"referenceType": "REFERENCE_TYPE_RAW", "referenceId": 1,
             "referenceImage": {"bytesBase64Encoded": b64(&image), "mimeType": "image/png"}},
            {"referenceType": "REFERENCE_TYPE_MASK", "referenceId": 2,
             "referenceImage": {"bytesBase64Encoded": b64(&mask), "mimeType": "image/png"},
             "maskImageConfig": {"maskMode": "MASK_MODE_USER_PROVIDED", "dilation": 0.01}},
        ]}],
        "parameters": {"sampleCount": 1, "editMode": "EDIT_MODE_INPAINT_INSERTION"},
    });
    // google-genai's Vertex mode sends `demo/sim-image-1` as publisher `demo`, model `sim-image-1`;
    // a `google` publisher names the model as the Gemini route does.
    for path in [
        "/genai/v1beta1/projects/p/locations/us-central1/publishers/demo/models/sim-image-1:predict",
        "/genai/v1beta1/projects/p/locations/us-central1/publishers/google/models/demo%2Fsim-image-1:predict",
    ] {
        let r = post_json(&gw, path, &[("authorization", &format!("Bearer {VK}"))], &body);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let answer = r.json();
        let predictions = answer["predictions"].as_array().expect("predictions");
        assert_eq!(predictions.len(), 1, "{answer}");
        assert_eq!(predictions[0]["mimeType"], "image/png");
        let out = decode_png(&unb64(predictions[0]["bytesBase64Encoded"].as_str().unwrap())).expect("a PNG");
        assert_eq!((out.width, out.height), (16, 16));
        let px = |x: usize, y: usize| out.pixels[(y * 16 + x) * 4..(y * 16 + x) * 4 + 3].to_vec();
        // Painted where the mask is white, kept where it is black.
        assert_ne!(px(2, 8), vec![255, 255, 255], "the masked half is edited");
        assert_eq!(px(13, 8), vec![255, 255, 255], "the other half is kept");
    }
}

#[test]
fn generate_content_through_the_simulator() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, true);
    let image = encode_png(&solid(8, 8, [10, 20, 30, 255])).unwrap();
    let r = post_json(
        &gw,
        "/genai/v1beta/models/demo/sim-image-1:generateContent",
        &[("x-goog-api-key", VK)],
        &generate_body(&[&image], "paint it"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let data = answer["candidates"][0]["content"]["parts"][0]["inlineData"]["data"]
        .as_str()
        .expect("an image");
    let out = decode_png(&unb64(data)).expect("a PNG");
    assert_eq!((out.width, out.height), (8, 8));
    // Vertex mode's `generate_content`: the same, on the publisher path, the key as a bearer.
    let r = post_json(
        &gw,
        "/genai/v1beta1/projects/p/locations/l/publishers/demo/models/sim-image-1:generateContent",
        &[("authorization", &format!("Bearer {VK}"))],
        &generate_body(&[&image], "paint it"),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["modelVersion"], "demo/sim-image-1");
}

/// `Expect: 100-continue` (curl's, for bodies over 1 KiB) is answered before the body is sent.
#[test]
fn expect_100_continue() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false);
    mock.always(Reply::json(200, &default_success()));
    let body = generate_body(&[&tiny_png()], "p").to_string();
    let mut c = gw.connect();
    c.send(
        format!(
            "POST /genai/v1beta/models/openai%2Fgpt-image-1:generateContent HTTP/1.1\r\nHost: gateway.test\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\nx-goog-api-key: {VK}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    assert_eq!(c.read_response().status, 100);
    c.send(body.as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["candidates"][0]["content"]["parts"][0]["inlineData"]["data"],
        "aW1hZ2UtMA=="
    );
}
