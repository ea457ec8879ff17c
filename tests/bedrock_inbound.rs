//! Amazon Bedrock inbound (`/bedrock/model/{modelId}/invoke`) end to end: a real gateway in
//! this process, Titan/Nova and Stability `InvokeModel` bodies signed with SigV4 as boto3 signs
//! them (the access key id a virtual key's id, the secret the key), served by a strict mock
//! (OpenAI multipart out, Gemini JSON out, Bedrock out: every image compared byte for byte)
//! and by the built-in simulator; answers in Bedrock's shapes, errors as Bedrock answers them.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::*;
use refract::imaging::{decode_png, encode_png, solid};
use refract::providers::bedrock::sigv4;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::time::{SystemTime, UNIX_EPOCH};

const GEMINI_KEY: &str = "AIza-gemini-upstream-KEY-bedrock";
const GEMINI_MODEL: &str = "gemini-2.5-flash-image";
const NOVA: &str = "amazon.nova-canvas-v1:0";
const BEDROCK_API_KEY: &str = "ABSK-upstream-bedrock-API-KEY";
/// The id of the virtual key [`VK`] (what boto3 sends as the access key id).
const VK_ID: &str = "team-a";
/// A virtual key configured only by its digest.
const VAULT_KEY: &str = "sk-bf-vault-DIGEST-ONLY-4";

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(text).expect("base64")
}

/// A gateway in front of `mock` (providers `openai`, `other`, `gem` of kind gemini and `br`
/// of kind bedrock serving Nova Canvas), with the simulator as `demo` when `simulator`, and a
/// digest-only key `vault`.
fn gateway(mock: &MockUpstream, simulator: bool) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.simulator = simulator;
    setup.extra_providers = format!(
        "  - name: gem\n    kind: gemini\n    base_url: http://{addr}/v1beta\n    keys:\n      - {{name: g, value: {GEMINI_KEY}}}\n\
         \x20 - name: br\n    kind: bedrock\n    region: us-east-1\n    base_url: http://{addr}/br\n    keys:\n      - name: apikey\n        value: {BEDROCK_API_KEY}\n        models: ['{NOVA}']\n",
        addr = mock.addr
    );
    let digest = hex::encode(Sha256::digest(VAULT_KEY.as_bytes()));
    setup.key_settings = format!("  - id: vault\n    key_sha256: '{digest}'\n");
    Gateway::start(&setup)
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// The SigV4 headers boto3 adds for `body` POSTed to `path` on host `gateway.test`:
/// `X-Amz-Date` and `Authorization`, signed by `key_id` with `secret` at `unix_time`.
fn sigv4_headers(path: &str, key_id: &str, secret: &str, body: &[u8], unix_time: u64) -> Vec<(String, String)> {
    let hash = hex::encode(Sha256::digest(body));
    let signed = sigv4::sign(&sigv4::SigningInput {
        access_key_id: key_id,
        secret_access_key: secret,
        session_token: None,
        region: "us-west-2",
        service: "bedrock",
        method: "POST",
        host: "gateway.test",
        path,
        headers: &[("accept", "application/json"), ("content-type", "application/json")],
        payload_sha256: &hash,
        unix_time,
    });
    vec![
        ("x-amz-date".into(), signed.amz_date),
        ("authorization".into(), signed.authorization),
    ]
}

/// POSTs `body` to `path` with `headers` (plus `Host`, `Content-Type`, `Accept` as boto3
/// sends them) and reads the answer.
fn post(gw: &Gateway, path: &str, headers: &[(String, String)], body: &[u8]) -> Response {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nAccept: application/json\r\nContent-Type: application/json\r\nContent-Length: {}\r\nUser-Agent: Boto3/1.35.0\r\n",
        body.len()
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut c = gw.connect();
    c.send(head.as_bytes());
    c.send(body);
    c.read_response()
}

/// POSTs `body` to `path`, signed by the virtual key [`VK`] as boto3 signs it.
fn signed_post(gw: &Gateway, path: &str, body: &Value) -> Response {
    let body = body.to_string().into_bytes();
    post(gw, path, &sigv4_headers(path, VK_ID, VK, &body, now()), &body)
}

/// Checks Bedrock's error answer (`x-amzn-ErrorType` and `{"message"}`) and returns the message.
fn assert_bedrock_error(r: &Response, status: u16, exception: &str) -> String {
    assert_eq!(r.status, status, "{}", r.text());
    let error_type = r.header("x-amzn-errortype").expect("x-amzn-ErrorType");
    assert_eq!(
        error_type.split(':').next(),
        Some(exception),
        "{error_type}: {}",
        r.text()
    );
    let body = r.json();
    assert!(body.get("error").is_none(), "{body}");
    body["message"].as_str().expect("a message").to_string()
}

#[test]
fn titan_variation_in_openai_out_byte_for_byte() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false);
    mock.always(Reply::json(200, &default_success()));
    let (first, second) = (big_png_like(300_000, 5), tiny_png());
    let body = json!({
        "taskType": "IMAGE_VARIATION",
        "imageVariationParams": {"images": [b64(&first), b64(&second)], "text": "make it blue"},
        "imageGenerationConfig": {"numberOfImages": 2, "width": 1024, "height": 1024, "seed": 5}
    });
    // boto3 percent-encodes the model id's `/`; `provider/model` and a deployment-style name.
    let path = "/bedrock/model/openai%2Fgpt-image-1/invoke";
    let r = signed_post(&gw, path, &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(
        r.json(),
        json!({"images": ["aW1hZ2UtMA==", "aW1hZ2UtMQ=="], "error": null})
    );
    let rec = mock.only_request();
    assert_eq!(rec.path, "/v1/images/edits");
    assert_eq!(rec.header("authorization"), Some(format!("Bearer {PROVIDER_KEY}")));
    assert_eq!(
        rec.header("x-amz-date"),
        None,
        "the client's signature is not forwarded"
    );
    let parts = rec.parts();
    let field = |name: &str| parts.iter().find(|p| p.name == name).map(|p| p.data.clone());
    assert_eq!(field("model").as_deref(), Some(&b"gpt-image-1"[..]));
    assert_eq!(field("prompt").as_deref(), Some(&b"make it blue"[..]));
    assert_eq!(field("n").as_deref(), Some(&b"2"[..]));
    assert_eq!(field("size").as_deref(), Some(&b"1024x1024"[..]));
    let images: Vec<&Part> = parts.iter().filter(|p| p.name.starts_with("image")).collect();
    assert_eq!(images.len(), 2);
    assert!(images[0].data == first, "the first image differs from the upload");
    assert!(images[1].data == second, "the second image differs from the upload");
    // Counted as any edit: by provider, model and status.
    wait_until("the Bedrock edit counted", || {
        gw.metrics_text().lines().any(|l| {
            l.starts_with("refract_requests_total{")
                && l.contains(r#"provider="openai""#)
                && l.contains(r#"model="gpt-image-1""#)
                && l.contains(r#"status="200""#)
                && l.ends_with(" 1")
        })
    });
}

#[test]
fn stability_in_gemini_out_byte_for_byte_with_a_bearer_key() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false);
    mock.push(Reply::json(
        200,
        &common::wire::gemini::gemini_answer(GEMINI_MODEL, &["SU1BR0UtMA=="]),
    ));
    let image = big_png_like(100_000, 9);
    let body = json!({"prompt": "a hat", "image": b64(&image), "seed": 11, "output_format": "png"}).to_string();
    let path = format!("/bedrock/model/gem%2F{GEMINI_MODEL}/invoke");
    let r = post(
        &gw,
        &path,
        &[("authorization".into(), format!("Bearer {VK}"))],
        body.as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json(),
        json!({"images": ["SU1BR0UtMA=="], "seeds": [11], "finish_reasons": [null]})
    );
    let rec = mock.only_request();
    let sent = common::wire::gemini::check_gemini_request(
        &rec,
        &mock,
        &format!("/v1beta/models/{GEMINI_MODEL}:generateContent"),
        GEMINI_KEY,
        &[&image],
    );
    assert!(sent.to_string().contains("a hat"), "{sent}");
}

#[test]
fn a_bedrock_model_id_names_the_bedrock_provider_that_serves_it() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false);
    let out = encode_png(&solid(2, 2, [1, 2, 3, 255])).unwrap();
    mock.push(Reply::json(200, &json!({"images": [b64(&out)], "error": null})));
    let image = tiny_png();
    let body = json!({"taskType": "BACKGROUND_REMOVAL", "backgroundRemovalParams": {"image": b64(&image)}});
    let r = signed_post(&gw, "/bedrock/model/amazon.nova-canvas-v1%3A0/invoke", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(unb64(r.json()["images"][0].as_str().unwrap()), out);
    let rec = mock.only_request();
    assert_eq!(rec.path, "/br/model/amazon.nova-canvas-v1%3A0/invoke");
    assert_eq!(rec.header("authorization"), Some(format!("Bearer {BEDROCK_API_KEY}")));
    let sent: Value = serde_json::from_slice(&rec.body).unwrap();
    assert_eq!(sent["taskType"], "BACKGROUND_REMOVAL");
    assert_eq!(unb64(sent["backgroundRemovalParams"]["image"].as_str().unwrap()), image);
}

#[test]
fn signatures_are_verified() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false);
    mock.always(Reply::json(200, &default_success()));
    let path = "/bedrock/model/openai%2Fgpt-image-1/invoke";
    let body =
        json!({"taskType": "IMAGE_VARIATION", "imageVariationParams": {"images": [b64(&tiny_png())], "text": "p"}})
            .to_string()
            .into_bytes();
    // The wrong secret.
    let h = sigv4_headers(path, VK_ID, VK_RESTRICTED, &body, now());
    let m = assert_bedrock_error(&post(&gw, path, &h, &body), 403, "InvalidSignatureException");
    assert!(m.contains("signature"), "{m}");
    assert!(
        !m.contains(VK) && !m.contains(VK_RESTRICTED),
        "no secret in the message"
    );
    // An access key id that is no virtual key's id (the key itself, say).
    let h = sigv4_headers(path, VK, VK, &body, now());
    assert_bedrock_error(&post(&gw, path, &h, &body), 403, "UnrecognizedClientException");
    // Signed 20 minutes ago.
    let h = sigv4_headers(path, VK_ID, VK, &body, now() - 20 * 60);
    assert_bedrock_error(&post(&gw, path, &h, &body), 403, "InvalidSignatureException");
    // The body changed after signing (same length).
    let h = sigv4_headers(path, VK_ID, VK, &body, now());
    let mut changed = body.clone();
    let at = changed.len() - 3;
    changed[at] = b'q';
    assert_bedrock_error(&post(&gw, path, &h, &changed), 403, "InvalidSignatureException");
    // Signed for another path.
    let h = sigv4_headers("/bedrock/model/other%2Fgpt-image-1/invoke", VK_ID, VK, &body, now());
    assert_bedrock_error(&post(&gw, path, &h, &body), 403, "InvalidSignatureException");
    // A digest-only key cannot sign; the same key as a bearer token works.
    let h = sigv4_headers(path, "vault", VAULT_KEY, &body, now());
    let m = assert_bedrock_error(&post(&gw, path, &h, &body), 403, "AccessDeniedException");
    assert!(m.contains("cannot sign") && m.contains("key_sha256"), "{m}");
    let r = post(
        &gw,
        path,
        &[("authorization".into(), format!("Bearer {VAULT_KEY}"))],
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    // A disabled key's signature: refused as the key is.
    let h = sigv4_headers(path, "off", VK_DISABLED, &body, now());
    assert_bedrock_error(&post(&gw, path, &h, &body), 401, "AccessDeniedException");
    // No credential at all.
    assert_bedrock_error(&post(&gw, path, &[], &body), 401, "MissingAuthenticationTokenException");
    // The good signature.
    let h = sigv4_headers(path, VK_ID, VK, &body, now());
    assert_eq!(post(&gw, path, &h, &body).status, 200);
    assert_eq!(
        mock.received(),
        2,
        "only the verified and the bearer requests went upstream"
    );
}

#[test]
fn errors_come_as_bedrock_answers_them() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false);
    let img = b64(&tiny_png());
    let variation = json!({"taskType": "IMAGE_VARIATION", "imageVariationParams": {"images": [img], "text": "p"}});
    // The restricted key's id and secret may not use `other`.
    let path = "/bedrock/model/other%2Fgpt-image-1/invoke";
    let body = variation.to_string().into_bytes();
    let h = sigv4_headers(path, "restricted", VK_RESTRICTED, &body, now());
    assert_bedrock_error(&post(&gw, path, &h, &body), 403, "AccessDeniedException");
    // An unknown provider, an unknown Bedrock model id.
    let r = signed_post(&gw, "/bedrock/model/nope%2Fm/invoke", &variation);
    assert_bedrock_error(&r, 400, "ValidationException");
    let r = signed_post(
        &gw,
        "/bedrock/model/amazon.titan-image-generator-v9%3A0/invoke",
        &variation,
    );
    assert_bedrock_error(&r, 404, "ResourceNotFoundException");
    // Bodies the gateway cannot serve.
    let path = "/bedrock/model/openai%2Fgpt-image-1/invoke";
    let m = assert_bedrock_error(
        &signed_post(
            &gw,
            path,
            &json!({"taskType": "INPAINTING", "inPaintingParams": {"image": img, "maskPrompt": "the cat", "text": "a dog"}}),
        ),
        400,
        "ValidationException",
    );
    assert!(m.contains("maskPrompt"), "{m}");
    let m = assert_bedrock_error(
        &signed_post(
            &gw,
            path,
            &json!({"taskType": "TEXT_IMAGE", "textToImageParams": {"text": "x"}}),
        ),
        400,
        "ValidationException",
    );
    assert!(m.contains("TEXT_IMAGE"), "{m}");
    assert_bedrock_error(
        &signed_post(&gw, path, &json!({"prompt": "x"})),
        400,
        "ValidationException",
    );
    // A provider's error, with its status.
    mock.push(Reply::json(
        429,
        &json!({"error": {"message": "slow down", "type": "rate_limit", "code": "rate_limit_exceeded"}}),
    ));
    let m = assert_bedrock_error(&signed_post(&gw, path, &variation), 429, "ThrottlingException");
    assert!(m.contains("slow down"), "{m}");
    // Other methods and paths.
    let r = Gateway::call(gw.addr, "GET", path, &[("authorization", &format!("Bearer {VK}"))]);
    assert_eq!(r.status, 405);
    let r = Gateway::call(
        gw.addr,
        "POST",
        "/bedrock/model/openai%2Fgpt-image-1/invoke-with-response-stream",
        &[("authorization", &format!("Bearer {VK}"))],
    );
    assert_eq!(r.status, 404);
    assert_eq!(mock.received(), 1, "only the valid request went upstream");
}

#[test]
fn the_body_limit_applies() {
    let mock = MockUpstream::start();
    let mut setup = Setup::new(&mock.base_url());
    setup.limits = "  max_body_bytes: 200000\n".into();
    let gw = Gateway::start(&setup);
    let body = json!({"prompt": "p", "image": "A".repeat(300_000)});
    let r = signed_post(&gw, "/bedrock/model/openai%2Fgpt-image-1/invoke", &body);
    assert_bedrock_error(&r, 413, "ValidationException");
    assert_eq!(mock.received(), 0);
}

/// A 16×16 white image and a Titan inpainting mask (opaque, black = edit) of its left half.
fn white_and_left_half_black_mask() -> (Vec<u8>, Vec<u8>) {
    let image = encode_png(&solid(16, 16, [255, 255, 255, 255])).unwrap();
    let mut mask = solid(16, 16, [255, 255, 255, 255]);
    for y in 0..16 {
        for x in 0..8 {
            let i = (y * 16 + x) * 4;
            mask.pixels[i..i + 3].copy_from_slice(&[0, 0, 0]);
        }
    }
    (image, encode_png(&mask).unwrap())
}

#[test]
fn titan_variation_through_the_simulator() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, true);
    let (image, _) = white_and_left_half_black_mask();
    let body =
        json!({"taskType": "IMAGE_VARIATION", "imageVariationParams": {"images": [b64(&image)], "text": "paint it"}});
    let r = signed_post(&gw, "/bedrock/model/demo%2Fsim-image-1/invoke", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let images = r.json()["images"].as_array().unwrap().clone();
    assert_eq!(images.len(), 1);
    let out = decode_png(&unb64(images[0].as_str().unwrap())).expect("a PNG");
    assert_eq!((out.width, out.height), (16, 16));
}

#[test]
fn titan_inpainting_mask_black_means_edit_through_the_simulator() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, true);
    let (image, mask) = white_and_left_half_black_mask();
    let body = json!({"taskType": "INPAINTING",
        "inPaintingParams": {"image": b64(&image), "maskImage": b64(&mask), "text": "paint it"}});
    let r = signed_post(&gw, "/bedrock/model/demo%2Fsim-image-1/invoke", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let out = decode_png(&unb64(r.json()["images"][0].as_str().unwrap())).expect("a PNG");
    let px = |x: usize, y: usize| out.pixels[(y * 16 + x) * 4..(y * 16 + x) * 4 + 3].to_vec();
    assert_ne!(px(2, 8), vec![255, 255, 255], "the black half is edited");
    assert_eq!(px(13, 8), vec![255, 255, 255], "the white half is kept");
}

#[test]
fn stability_mask_white_means_edit_through_the_simulator() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, true);
    let (image, black_left) = white_and_left_half_black_mask();
    // Stability's convention is the reverse: white = edit, so this mask edits the right half.
    let body = json!({"prompt": "paint it", "image": b64(&image), "mask": b64(&black_left)});
    let r = signed_post(&gw, "/bedrock/model/demo%2Fsim-image-1/invoke", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let out = decode_png(&unb64(r.json()["images"][0].as_str().unwrap())).expect("a PNG");
    let px = |x: usize, y: usize| out.pixels[(y * 16 + x) * 4..(y * 16 + x) * 4 + 3].to_vec();
    assert_eq!(px(2, 8), vec![255, 255, 255], "the black half is kept");
    assert_ne!(px(13, 8), vec![255, 255, 255], "the white half is edited");
}
