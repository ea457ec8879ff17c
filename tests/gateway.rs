//! End-to-end happy paths and upstream failures: a real gateway in this process in front of a
//! scripted mock upstream (or the built-in simulator), driven by a raw HTTP/1.1 client.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::*;
use serde_json::json;
use std::time::{Duration, Instant};

const TWENTY_MB: usize = 20 * 1024 * 1024;

/// Checks what every upstream request must look like: route, Host, provider key (never a
/// virtual key), exact Content-Length, a well-formed multipart body with the prefix-free model.
fn check_upstream_request(rec: &Recorded, mock: &MockUpstream) -> Vec<Part> {
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path, "/v1/images/edits");
    assert_eq!(rec.header("host"), Some(mock.addr.to_string()));
    assert_eq!(rec.header("authorization"), Some(format!("Bearer {PROVIDER_KEY}")));
    // Framing: an exact Content-Length when the body was built from the spool, chunked when it
    // was streamed upstream while the client was still uploading (`model` sent first).
    match rec.header("content-length") {
        Some(len) => {
            assert_eq!(
                len.parse::<usize>().unwrap(),
                rec.body.len(),
                "Content-Length must equal the body length"
            );
            assert_eq!(rec.header("transfer-encoding"), None);
        }
        None => assert_eq!(rec.header("transfer-encoding").as_deref(), Some("chunked")),
    }
    assert_eq!(rec.header("x-bf-vk"), None);
    assert_eq!(rec.header("x-api-key"), None);
    assert_eq!(rec.header("expect"), None);
    for (name, value) in &rec.headers {
        let v = String::from_utf8_lossy(value);
        assert!(!v.contains("sk-bf-"), "header {name} carries a virtual key: {v}");
    }
    assert!(
        !rec.body.windows(6).any(|w| w == b"sk-bf-"),
        "the body carries a virtual key"
    );
    let ct = rec.header("content-type").expect("content type");
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    let boundary = multer::parse_boundary(&ct).unwrap();
    assert!(
        rec.body.ends_with(format!("--{boundary}--\r\n").as_bytes()),
        "the body must end with its closing boundary"
    );
    let parts = rec.parts();
    let models = parts_named(&parts, "model");
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].text(), "gpt-image-1", "the provider prefix must be removed");
    for gateway_only in ["type", "seed", "negative_prompt", "num_inference_steps", "fallbacks"] {
        assert!(
            parts_named(&parts, gateway_only).is_empty(),
            "gateway-only field {gateway_only} was forwarded"
        );
    }
    parts
}

/// Sends a ~20 MB image with `model` before or after it and checks the upstream got it byte for byte.
fn twenty_mb_round_trip(model_first: bool) {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let image = big_png_like(TWENTY_MB, 7 + model_first as u64);
    let mut form = Form::new();
    if model_first {
        form = form.text("model", "openai/gpt-image-1");
    }
    form = form
        .text("prompt", "a prompt")
        .file("image", "photo.bin", "application/octet-stream", &image);
    if !model_first {
        form = form.text("model", "openai/gpt-image-1");
    }
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    let parts = check_upstream_request(&rec, &mock);
    let images = parts_named(&parts, "image");
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].filename.as_deref(), Some("image.png"));
    assert_eq!(images[0].content_type.as_deref(), Some("image/png"));
    assert_eq!(images[0].data.len(), image.len());
    assert!(images[0].data == image, "the image must arrive byte for byte");
    assert_eq!(parts_named(&parts, "prompt")[0].text(), "a prompt");
}

/// A 20 MB image after `model` reaches the provider byte-identical (spool spilled to disk).
#[test]
fn twenty_mb_image_model_first() {
    twenty_mb_round_trip(true);
}

/// A 20 MB image before `model` reaches the provider byte-identical.
#[test]
fn twenty_mb_image_model_last() {
    twenty_mb_round_trip(false);
}

/// A chunked upload (no Content-Length) is read to its end and forwarded with a Content-Length.
#[test]
fn chunked_upload() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let image = big_png_like(1_500_000, 3);
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "p")
        .file("image", "x.png", "image/png", &image);
    let head = format!(
        "POST /v1/images/edits HTTP/1.1\r\nHost: gw\r\nx-bf-vk: {VK}\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        form.content_type()
    );
    let mut c = gw.connect();
    c.send(head.as_bytes());
    c.send(&chunked(&form.body()));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = check_upstream_request(&mock.only_request(), &mock);
    assert!(parts_named(&parts, "image")[0].data == image);
    // the connection is still usable after a chunked request
    let second = valid_form();
    c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &second, None));
    c.send(&second.body());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
}

/// `Expect: 100-continue` is answered with a 100 before the client sends the body.
#[test]
fn expect_100_continue() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let form = valid_form();
    let mut c = gw.connect();
    c.send(&post_head(
        "/v1/images/edits",
        &[("x-bf-vk", VK), ("Expect", "100-continue")],
        &form,
        None,
    ));
    // nothing of the body has been sent: the gateway must speak first
    let interim = c.read_response();
    assert_eq!(interim.status, 100);
    assert!(mock.requests().is_empty());
    c.send(&form.body());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = check_upstream_request(&mock.only_request(), &mock);
    assert!(parts_named(&parts, "image")[0].data == tiny_png());
}

/// The unversioned path `/images/edits` is served like `/v1/images/edits`.
#[test]
fn unversioned_path() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let form = valid_form();
    let mut c = gw.connect();
    c.send(&post_head("/images/edits", &[("x-bf-vk", VK)], &form, None));
    c.send(&form.body());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    check_upstream_request(&mock.only_request(), &mock);
}

/// Several images go upstream as `image[]`, named and typed from their magic bytes, in order.
#[test]
fn several_images() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let png = tiny_png();
    let jpg = jpeg_like();
    let webp = b"RIFF\x24\0\0\0WEBPVP8 \x18\0\0\0some-webp-bytes-here....".to_vec();
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "combine")
        .file("image[]", "first.dat", "application/octet-stream", &png)
        .file("image[]", "second.png", "image/png", &jpg)
        .file("image[]", "third", "text/plain", &webp);
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = check_upstream_request(&mock.only_request(), &mock);
    assert!(parts_named(&parts, "image").is_empty());
    let images = parts_named(&parts, "image[]");
    let got: Vec<_> = images
        .iter()
        .map(|p| (p.filename.as_deref().unwrap(), p.content_type.as_deref().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("image_0.png", "image/png"),
            ("image_1.jpg", "image/jpeg"),
            ("image_2.webp", "image/webp")
        ]
    );
    assert!(images[0].data == png && images[1].data == jpg && images[2].data == webp);
    assert_eq!(r.json()["usage"]["num_input_images"], 3);
}

/// The mask goes upstream as `mask` (`mask.png`, `image/png`), byte for byte, after the image.
#[test]
fn mask_is_forwarded() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let mask = refract::imaging::encode_png(&refract::imaging::solid(4, 4, [0, 0, 0, 0])).unwrap();
    let form = Form::new()
        .file("mask", "m.bin", "application/octet-stream", &mask)
        .text("model", "openai/gpt-image-1")
        .text("prompt", "fill")
        .file("image", "a.png", "image/png", &tiny_png());
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = check_upstream_request(&mock.only_request(), &mock);
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["model", "prompt", "image", "mask"]);
    let m = parts_named(&parts, "mask")[0];
    assert_eq!(m.filename.as_deref(), Some("mask.png"));
    assert_eq!(m.content_type.as_deref(), Some("image/png"));
    assert!(m.data == mask);
}

/// Known fields are forwarded as sent, gateway-only ones dropped, unknown ones passed through.
#[test]
fn fields_forwarded_dropped_and_passed_through() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let form = valid_form()
        .text("n", "2")
        .text("size", "1024x1536")
        .text("quality", "high")
        .text("background", "transparent")
        .text("output_format", "webp")
        .text("output_compression", "80")
        .text("input_fidelity", "high")
        .text("response_format", "b64_json")
        .text("user", "user-42")
        .text("type", "inpainting")
        .text("seed", "42")
        .text("negative_prompt", "no cats")
        .text("num_inference_steps", "30")
        .text("fallbacks", "other/gpt-image-1")
        .text("safety_identifier", "safe-1")
        .text("moderation", "low");
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let parts = check_upstream_request(&mock.only_request(), &mock);
    for (name, value) in [
        ("prompt", "make it blue"),
        ("n", "2"),
        ("size", "1024x1536"),
        ("quality", "high"),
        ("background", "transparent"),
        ("output_format", "webp"),
        ("output_compression", "80"),
        ("input_fidelity", "high"),
        ("response_format", "b64_json"),
        ("user", "user-42"),
        ("safety_identifier", "safe-1"),
        ("moderation", "low"),
    ] {
        let found = parts_named(&parts, name);
        assert_eq!(found.len(), 1, "{name}");
        assert_eq!(found[0].text(), value, "{name}");
        assert!(found[0].filename.is_none(), "{name} is a text part");
    }
}

/// A client's `x-request-id` is echoed on the answer and forwarded upstream.
#[test]
fn request_id_echoed() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK), ("x-request-id", "client-req-7f3a")]);
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-request-id").as_deref(), Some("client-req-7f3a"));
    assert_eq!(
        mock.only_request().header("x-request-id").as_deref(),
        Some("client-req-7f3a")
    );
}

/// Without an `x-request-id` one is generated (a UUID), returned and forwarded; each differs.
#[test]
fn request_id_generated() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let a = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let b = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let (ida, idb) = (a.header("x-request-id").unwrap(), b.header("x-request-id").unwrap());
    assert!(uuid::Uuid::parse_str(&ida).is_ok(), "{ida}");
    assert!(uuid::Uuid::parse_str(&idb).is_ok(), "{idb}");
    assert_ne!(ida, idb);
    let upstream: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.header("x-request-id").unwrap())
        .collect();
    assert_eq!(upstream, [ida, idb]);
    // error answers carry it too, as event_id
    let e = gw.edit(&valid_form(), &[]);
    let v = assert_gateway_error(&e, 401, "virtual_key_required", "authentication_error", None);
    assert!(uuid::Uuid::parse_str(v["event_id"].as_str().unwrap()).is_ok());
}

/// Two requests on one client connection are both answered (keep-alive).
#[test]
fn keep_alive_two_requests_one_connection() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let mut c = gw.connect();
    for prompt in ["first", "second"] {
        let form = Form::new()
            .text("model", "openai/gpt-image-1")
            .text("prompt", prompt)
            .file("image", "a.png", "image/png", &tiny_png());
        c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &form, None));
        c.send(&form.body());
        let r = c.read_response();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_ne!(r.header("connection").as_deref(), Some("close"));
    }
    let prompts: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| parts_named(&r.parts(), "prompt")[0].text())
        .collect();
    assert_eq!(prompts, ["first", "second"]);
    // the upstream connection was pooled, too
    assert_eq!(mock.connections(), 1);
}

/// After a burst, a trickle of requests reuses the provider connection released last, not
/// each pooled connection in turn (Pingora's pool handed out its oldest idle connection, so
/// one connection at a time rotated over all of them and kept them all alive).
#[test]
fn after_a_burst_a_trickle_reuses_one_provider_connection() {
    let mock = MockUpstream::start();
    let gate = Gate::new();
    for _ in 0..4 {
        mock.push(gate.hold(Reply::json(200, &default_success())));
    }
    mock.always(Reply::json(200, &default_success()));
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let addr = gw.addr;
    let burst: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let f = valid_form();
                c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &f, None));
                c.send(&f.body());
                c.read_response()
            })
        })
        .collect();
    wait_until("four requests held upstream at once", || mock.received() == 4);
    gate.open();
    for r in burst {
        assert_eq!(r.join().unwrap().status, 200);
    }
    assert_eq!(mock.connections(), 4);
    for _ in 0..6 {
        let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let trickle: Vec<usize> = mock.requests()[4..].iter().map(|r| r.connection).collect();
    assert_eq!(mock.connections(), 4, "no new connection: {trickle:?}");
    assert!(
        trickle.iter().all(|c| *c == trickle[0]),
        "one connection reused, not one after another: {trickle:?}"
    );
}

/// `GET /health` answers 200 `{"status":"ok"}` without a key.
#[test]
fn health() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let r = Gateway::get(gw.addr, "/health");
    assert_eq!(r.status, 200);
    assert_eq!(r.json(), json!({"status": "ok"}));
    assert!(r.header("x-request-id").is_some());
    assert!(mock.requests().is_empty());
}

/// The unified answer keeps the provider's fields and adds `data[].index` and `extra_fields`.
#[test]
fn unified_response_shape() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
    let v = r.json();
    assert_eq!(v["created"], 1_713_833_628);
    assert_eq!(v["data"][0]["index"], 0);
    assert_eq!(v["data"][1]["index"], 1);
    assert_eq!(v["data"][0]["b64_json"], "aW1hZ2UtMA==");
    assert_eq!(v["data"][0]["revised_prompt"], "r0");
    assert_eq!(v["size"], "1024x1024");
    assert_eq!(v["usage"]["total_tokens"], 30);
    assert_eq!(v["usage"]["num_input_images"], 1);
    let x = &v["extra_fields"];
    assert_eq!(x["request_type"], "image_edit");
    assert_eq!(x["provider"], "openai");
    assert_eq!(x["model_requested"], "gpt-image-1");
    assert_eq!(x["model_deployment"], "gpt-image-1");
    assert!(x["latency"].is_u64(), "{x}");
    assert_eq!(x["chunk_index"], 0);
    assert!(v.get("is_bifrost_error").is_none());
}

/// The simulator paints mask-transparent pixels with `paint_colour(prompt, i)`, others unchanged.
#[test]
fn simulator_paints_the_masked_area() {
    let mut setup = Setup::new("http://127.0.0.1:9/v1");
    setup.simulator = true;
    let gw = Gateway::start(&setup);
    let (w, h) = (16u32, 12u32);
    let mut image = refract::imaging::solid(w, h, [0, 0, 0, 255]);
    for (i, px) in image.pixels.chunks_exact_mut(4).enumerate() {
        px.copy_from_slice(&[(i % 251) as u8, (i * 3 % 256) as u8, 77, 255]);
    }
    let mut mask = refract::imaging::solid(w, h, [0, 0, 0, 255]);
    for y in 0..h {
        for x in 0..w / 2 {
            mask.pixels[((y * w + x) * 4 + 3) as usize] = 0;
        }
    }
    let prompt = "paint the left half";
    let form = Form::new()
        .text("model", "demo/sim-image-1")
        .text("prompt", prompt)
        .text("n", "2")
        .file(
            "image",
            "in.png",
            "image/png",
            &refract::imaging::encode_png(&image).unwrap(),
        )
        .file(
            "mask",
            "mask.png",
            "image/png",
            &refract::imaging::encode_png(&mask).unwrap(),
        );
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["extra_fields"]["provider"], "demo");
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    for index in 0..2u32 {
        let item = &v["data"][index as usize];
        assert_eq!(item["index"], index);
        let png = base64::engine::general_purpose::STANDARD
            .decode(item["b64_json"].as_str().unwrap())
            .unwrap();
        let out = refract::imaging::decode_png(&png).unwrap();
        assert_eq!((out.width, out.height), (w, h));
        let colour = refract::imaging::paint_colour(prompt, index);
        for y in 0..h {
            for x in 0..w {
                let want = if x < w / 2 { colour } else { image.pixel(x, y) };
                assert_eq!(out.pixel(x, y), want, "image {index} pixel ({x},{y})");
            }
        }
    }
}

/// A provider error keeps the provider's status and error object, with `is_bifrost_error:false`.
#[test]
fn provider_errors_pass_through() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));

    mock.push(Reply::json(
        400,
        &json!({"error": {"message": "Invalid value for 'size': must be square", "type": "invalid_request_error", "param": "size", "code": "invalid_value"}}),
    ));
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let v = r.json();
    assert_eq!(r.status, 400, "{v}");
    assert_eq!(v["is_bifrost_error"], false);
    assert_eq!(v["status_code"], 400);
    assert_eq!(v["error"]["message"], "Invalid value for 'size': must be square");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "size");
    assert_eq!(v["error"]["code"], "invalid_value");
    assert_eq!(v["extra_fields"]["provider"], "openai");
    assert_eq!(v["extra_fields"]["model_requested"], "gpt-image-1");

    mock.push(Reply::raw(
        500,
        "text/html",
        b"<html><body><h1>500 Internal Server Error</h1>\n</body></html>",
    ));
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let v = r.json();
    assert_eq!(r.status, 500, "{v}");
    assert_eq!(v["is_bifrost_error"], false);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("500 Internal Server Error"), "{msg}");
    assert!(!msg.contains('\n'), "control characters must be removed: {msg:?}");

    mock.push(Reply::json(
        429,
        &json!({"error": {"message": "Rate limit reached for gpt-image-1", "type": "rate_limit_error", "param": null, "code": "rate_limit_exceeded"}}),
    ));
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let v = r.json();
    assert_eq!(r.status, 429, "{v}");
    assert_eq!(v["is_bifrost_error"], false);
    assert_eq!(v["error"]["message"], "Rate limit reached for gpt-image-1");
    assert_eq!(v["error"]["code"], "rate_limit_exceeded");

    assert_eq!(mock.requests().len(), 3, "a provider error is not retried");
    gw.assert_still_serves();
}

/// An upstream that refuses connections gives a 502 gateway error naming the provider.
#[test]
fn upstream_down_is_502() {
    let dead = free_addr();
    let gw = Gateway::start(&Setup::new(&format!("http://{dead}/v1")));
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let v = assert_gateway_error(&r, 502, "upstream_connect_error", "upstream_error", None);
    assert_eq!(v["extra_fields"]["provider"], "openai");
    assert!(v["error"]["message"].as_str().unwrap().contains("openai"), "{v}");
    assert!(!r.text().contains(PROVIDER_KEY));
}

/// An upstream that stalls past `first_byte_timeout_ms` gives a 504 naming that timeout, sent
/// once, promptly.
#[test]
fn upstream_stall_is_504() {
    let mock = MockUpstream::start();
    let mut setup = Setup::new(&mock.base_url());
    setup.provider_settings = "    first_byte_timeout_ms: 300\n    total_timeout_ms: 60000\n".into();
    let gw = Gateway::start(&setup);
    mock.push(Reply::Stall);
    let start = Instant::now();
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let elapsed = start.elapsed();
    let v = assert_gateway_error(&r, 504, "upstream_timeout", "upstream_error", None);
    assert_eq!(v["extra_fields"]["provider"], "openai");
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("(first_byte)") && message.contains("first_byte_timeout_ms (300 ms)"),
        "{message}"
    );
    // the first-byte limit (300 ms), well before the total limit (60 s) would cut it off
    assert!(elapsed >= Duration::from_millis(250), "{elapsed:?}");
    assert!(
        elapsed < Duration::from_millis(1500),
        "first_byte_timeout_ms not applied: {elapsed:?}"
    );
    assert_eq!(mock.requests().len(), 1, "a timed-out request must not be sent twice");
    gw.assert_still_serves();
}

/// An upstream 200 whose body is not JSON gives a 502 gateway error.
#[test]
fn upstream_garbage_is_502() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    mock.push(Reply::raw(200, "application/json", b"{not json at all"));
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 502, "upstream_protocol_error", "upstream_error", None);
    mock.push(Reply::json(200, &json!({"created": 1})));
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 502, "upstream_protocol_error", "upstream_error", None);
    gw.assert_still_serves();
}

/// Metrics count requests by status and rejections by reason, and never show a key.
#[test]
fn metrics_after_requests() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    assert_eq!(gw.edit(&valid_form(), &[("x-bf-vk", VK)]).status, 200);
    assert_eq!(
        gw.edit(&valid_form(), &[("Authorization", &format!("Bearer {VK}"))])
            .status,
        200
    );
    assert_eq!(gw.edit(&valid_form(), &[]).status, 401);
    assert_eq!(gw.edit(&valid_form(), &[("x-bf-vk", "sk-bf-wrong-key")]).status, 401);
    // accounting runs just after each answer is written: poll until all four are counted
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        let text = gw.metrics_text();
        let counted = text.contains(r#"refract_rejected_requests_total{reason="virtual_key_required"} 1"#)
            && text.contains(r#"refract_rejected_requests_total{reason="virtual_key_not_found"} 1"#)
            && text.contains("refract_requests_in_flight 0")
            && text.lines().any(|l| {
                l.starts_with("refract_requests_total{") && l.contains(r#"status="200""#) && l.ends_with(" 2")
            });
        if counted || Instant::now() > deadline {
            break text;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let ok_line = text
        .lines()
        .find(|l| l.starts_with("refract_requests_total{") && l.contains(r#"status="200""#))
        .unwrap_or_else(|| panic!("no 200 series:\n{text}"));
    assert!(ok_line.contains(r#"provider="openai""#), "{ok_line}");
    assert!(ok_line.contains(r#"model="gpt-image-1""#), "{ok_line}");
    assert!(ok_line.ends_with(" 2"), "{ok_line}");
    assert!(
        text.contains(r#"refract_rejected_requests_total{reason="virtual_key_required"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"refract_rejected_requests_total{reason="virtual_key_not_found"} 1"#),
        "{text}"
    );
    assert!(text.contains("refract_requests_in_flight 0"), "{text}");
    for secret in [
        VK,
        VK_RESTRICTED,
        VK_DISABLED,
        PROVIDER_KEY,
        OTHER_PROVIDER_KEY,
        "sk-bf-wrong-key",
    ] {
        assert!(!text.contains(secret), "metrics show a key");
    }
    assert!(!text.contains("sk-bf-") && !text.contains("sk-upstream"), "{text}");
    // anything but GET /metrics is a 404 on the metrics listener
    assert_eq!(Gateway::get(gw.metrics, "/other").status, 404);
}

/// A provider named by host name: the gateway resolves it (once, then from its address cache),
/// sends the name in `Host`, and serves request after request over the pooled connection.
#[test]
fn a_provider_named_by_host_name_is_resolved_and_served() {
    use std::net::ToSocketAddrs;
    // Listen where `localhost` resolves to first, which is where the gateway connects.
    let first = ("localhost", 0).to_socket_addrs().unwrap().next().unwrap().ip();
    let mock = MockUpstream::start_on(first);
    let gw = Gateway::start(&Setup::new(&format!("http://localhost:{}/v1", mock.addr.port())));
    for _ in 0..3 {
        let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let hosts: Vec<String> = mock.requests().iter().map(|r| r.header("host").unwrap()).collect();
    assert_eq!(hosts, vec![format!("localhost:{}", mock.addr.port()); 3]);
    assert_eq!(mock.connections(), 1);
}
