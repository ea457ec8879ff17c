//! End-to-end bad inputs, one test each: every one checks the status, the error body's
//! `error.param` / `error.type` / `is_bifrost_error`, and that the gateway then still serves a
//! valid request.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::*;

/// A gateway with small limits (256 KiB body, 64 KiB part, 3 images, 4 KiB field).
fn start() -> (MockUpstream, Gateway) {
    let mock = MockUpstream::start();
    let mut setup = Setup::new(&mock.base_url());
    setup.limits =
        "  max_body_bytes: 262144\n  max_part_bytes: 65536\n  max_images: 3\n  max_field_bytes: 4096\n".into();
    let gw = Gateway::start(&setup);
    (mock, gw)
}

/// Sends `form` with a valid key and returns the answer.
fn send(gw: &Gateway, form: &Form) -> Response {
    gw.edit(form, &[("x-bf-vk", VK)])
}

/// `valid_form()` plus one more text field.
fn with_field(name: &str, value: &str) -> Form {
    valid_form().text(name, value)
}

/// Sends `valid_form()` plus `name=value` and expects a 400 naming `name`; nothing goes upstream.
fn rejects_field(name: &str, value: &str) {
    let (mock, gw) = start();
    let r = send(&gw, &with_field(name, value));
    let v = assert_invalid(&r, name);
    assert!(
        v["error"]["message"].as_str().unwrap().contains(name),
        "the message should name {name}: {v}"
    );
    assert!(mock.requests().is_empty());
    gw.assert_still_serves();
}

/// Sends raw `body` under `content_type` with a valid key.
fn send_raw(gw: &Gateway, content_type: &str, body: &[u8]) -> Response {
    let mut c = gw.connect();
    c.send(
        format!(
            "POST /v1/images/edits HTTP/1.1\r\nHost: gw\r\nx-bf-vk: {VK}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    );
    c.send(body);
    c.read_response()
}

/// A body that is not multipart at all is a 400 `malformed_multipart`.
#[test]
fn garbage_body() {
    let (mock, gw) = start();
    let r = send_raw(
        &gw,
        "multipart/form-data; boundary=abc123",
        b"this is not multipart at all\r\n\x00\xff",
    );
    assert_gateway_error(&r, 400, "malformed_multipart", "invalid_request_error", None);
    assert!(mock.requests().is_empty());
    gw.assert_still_serves();
}

/// `multipart/form-data` without a boundary parameter is a 400 `malformed_multipart`.
#[test]
fn missing_boundary() {
    let (_mock, gw) = start();
    let body = valid_form().body();
    let r = send_raw(&gw, "multipart/form-data", &body);
    let v = assert_gateway_error(&r, 400, "malformed_multipart", "invalid_request_error", None);
    assert!(v["error"]["message"].as_str().unwrap().contains("boundary"), "{v}");
    gw.assert_still_serves();
}

/// A part whose Content-Disposition has no name is a 400 `malformed_multipart`.
#[test]
fn part_without_name() {
    let (_mock, gw) = start();
    let form = valid_form();
    let nameless = format!("--{}\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n", form.boundary);
    let form = form.raw(nameless.as_bytes());
    let r = send(&gw, &form);
    let v = assert_gateway_error(&r, 400, "malformed_multipart", "invalid_request_error", None);
    assert!(v["error"]["message"].as_str().unwrap().contains("name"), "{v}");
    gw.assert_still_serves();
}

/// A body shorter than its Content-Length (client closes) is a 400; nothing goes upstream.
#[test]
fn truncated_body() {
    let (mock, gw) = start();
    let form = valid_form();
    let body = form.body();
    let mut c = gw.connect();
    c.send(&post_head(
        "/v1/images/edits",
        &[("x-bf-vk", VK)],
        &form,
        Some(body.len() + 1000),
    ));
    c.send(&body[..body.len() - 20]);
    c.shutdown_write();
    let r = c.read_response();
    assert_gateway_error(&r, 400, "malformed_multipart", "invalid_request_error", None);
    assert!(c.is_closed());
    assert!(mock.requests().is_empty());
    gw.assert_still_serves();
}

/// `n=abc` is a 400 naming `n`.
#[test]
fn n_not_an_integer() {
    rejects_field("n", "abc");
}

/// `stream=maybe` is a 400 naming `stream`.
#[test]
fn stream_not_a_boolean() {
    rejects_field("stream", "maybe");
}

/// `n=0` is a 400 naming `n`.
#[test]
fn n_zero() {
    rejects_field("n", "0");
}

/// `n=11` is a 400 naming `n`.
#[test]
fn n_eleven() {
    rejects_field("n", "11");
}

/// `partial_images=4` is a 400 naming `partial_images`.
#[test]
fn partial_images_four() {
    rejects_field("partial_images", "4");
}

/// `output_compression=101` is a 400 naming `output_compression`.
#[test]
fn output_compression_101() {
    rejects_field("output_compression", "101");
}

/// `size=999x999` is a 400 naming `size`.
#[test]
fn size_999() {
    rejects_field("size", "999x999");
}

/// An image part over `max_part_bytes` is a 413 naming `image`, and the rest is not read.
#[test]
fn oversized_part() {
    let (mock, gw) = start();
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "p")
        .file("image", "a.png", "image/png", &big_png_like(100_000, 5));
    let r = send(&gw, &form);
    assert_gateway_error(&r, 413, "payload_too_large", "invalid_request_error", Some("image"));
    assert!(mock.requests().is_empty());
    gw.assert_still_serves();
}

/// A text field over `max_field_bytes` is a 413 naming the field.
#[test]
fn oversized_field() {
    let (_mock, gw) = start();
    let r = send(&gw, &with_field("user", &"u".repeat(5000)));
    assert_gateway_error(&r, 413, "payload_too_large", "invalid_request_error", Some("user"));
    gw.assert_still_serves();
}

/// A declared Content-Length over `max_body_bytes` is a 413 answered before any body byte is sent.
#[test]
fn body_over_limit_declared() {
    let (_mock, gw) = start();
    let form = valid_form();
    let mut c = gw.connect();
    c.send(&post_head(
        "/v1/images/edits",
        &[("x-bf-vk", VK)],
        &form,
        Some(1_000_000),
    ));
    // no body sent at all: the answer must come anyway
    let r = c.read_response();
    assert_gateway_error(&r, 413, "payload_too_large", "invalid_request_error", None);
    assert!(c.is_closed());
    gw.assert_still_serves();
}

/// A chunked body that grows past `max_body_bytes` is a 413 and the connection is closed.
#[test]
fn body_over_limit_chunked() {
    let (mock, gw) = start();
    // three 60 KB images stay under the part limit but not under the body limit (twice)
    let mut form = Form::new().text("model", "openai/gpt-image-1").text("prompt", "p");
    for i in 0..3 {
        form = form.file("image[]", "a.png", "image/png", &big_png_like(60_000, i));
    }
    form = form.text("filler", &"f".repeat(4000));
    for i in 0..40 {
        form = form.text(&format!("x{i}"), &"y".repeat(4000));
    }
    let body = form.body();
    assert!(body.len() > 262_144);
    let head = format!(
        "POST /v1/images/edits HTTP/1.1\r\nHost: gw\r\nx-bf-vk: {VK}\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        form.content_type()
    );
    let (r, _sent, mut conn) = send_racing(gw.addr, head.into_bytes(), chunked(&body));
    assert_gateway_error(&r, 413, "payload_too_large", "invalid_request_error", None);
    assert!(conn.is_closed());
    assert!(mock.requests().is_empty());
    gw.assert_still_serves();
}

/// More images than `max_images` is a 400 naming `image`.
#[test]
fn too_many_images() {
    let (_mock, gw) = start();
    let mut form = Form::new().text("model", "openai/gpt-image-1").text("prompt", "p");
    for _ in 0..4 {
        form = form.file("image[]", "a.png", "image/png", &tiny_png());
    }
    let v = assert_invalid(&send(&gw, &form), "image");
    assert!(v["error"]["message"].as_str().unwrap().contains("at most 3"), "{v}");
    gw.assert_still_serves();
}

/// A text file sent as the image (declared image/png) is a 400 naming `image`.
#[test]
fn text_file_as_image() {
    let (_mock, gw) = start();
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "p")
        .file(
            "image",
            "a.png",
            "image/png",
            b"hello, I am plain text pretending to be a PNG",
        );
    assert_invalid(&send(&gw, &form), "image");
    gw.assert_still_serves();
}

/// A GIF is a 400 naming `image` (only PNG, JPEG and WebP are accepted).
#[test]
fn gif_as_image() {
    let (_mock, gw) = start();
    let gif = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\xff\xff\xff\x00\x00\x00!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;";
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "p")
        .file("image", "a.gif", "image/gif", gif);
    assert_invalid(&send(&gw, &form), "image");
    gw.assert_still_serves();
}

/// A non-image mask is a 400 naming `mask`.
#[test]
fn text_file_as_mask() {
    let (_mock, gw) = start();
    let form = valid_form().file("mask", "m.png", "image/png", b"not a mask, just some words");
    assert_invalid(&send(&gw, &form), "mask");
    gw.assert_still_serves();
}

/// A provider that is not configured is a 400 `unknown_provider` naming `model`.
#[test]
fn unknown_provider() {
    let (_mock, gw) = start();
    let form = Form::new()
        .text("model", "nosuchprovider/gpt-image-1")
        .text("prompt", "p")
        .file("image", "a.png", "image/png", &tiny_png());
    let v = assert_gateway_error(
        &send(&gw, &form),
        400,
        "unknown_provider",
        "invalid_request_error",
        Some("model"),
    );
    assert!(
        v["error"]["message"].as_str().unwrap().contains("nosuchprovider"),
        "{v}"
    );
    gw.assert_still_serves();
}

/// `model` without `provider/` is a 400 naming `model`.
#[test]
fn model_without_slash() {
    let (_mock, gw) = start();
    let form =
        Form::new()
            .text("model", "gpt-image-1")
            .text("prompt", "p")
            .file("image", "a.png", "image/png", &tiny_png());
    assert_invalid(&send(&gw, &form), "model");
    gw.assert_still_serves();
}

/// A missing `model` is a 400 naming `model`.
#[test]
fn missing_model() {
    let (_mock, gw) = start();
    let form = Form::new()
        .text("prompt", "p")
        .file("image", "a.png", "image/png", &tiny_png());
    assert_invalid(&send(&gw, &form), "model");
    gw.assert_still_serves();
}

/// A missing `prompt` is a 400 naming `prompt`.
#[test]
fn missing_prompt() {
    let (_mock, gw) = start();
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .file("image", "a.png", "image/png", &tiny_png());
    assert_invalid(&send(&gw, &form), "prompt");
    gw.assert_still_serves();
}

/// A request without any image is a 400 naming `image`.
#[test]
fn missing_image() {
    let (_mock, gw) = start();
    let form = Form::new().text("model", "openai/gpt-image-1").text("prompt", "p");
    assert_invalid(&send(&gw, &form), "image");
    gw.assert_still_serves();
}

/// An empty image file is a 400 naming `image`.
#[test]
fn empty_image_file() {
    let (_mock, gw) = start();
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "p")
        .file("image", "a.png", "image/png", b"");
    assert_invalid(&send(&gw, &form), "image");
    gw.assert_still_serves();
}

/// `model` sent twice is a 400 naming `model`.
#[test]
fn duplicate_model() {
    let (_mock, gw) = start();
    let form = valid_form().text("model", "openai/dall-e-2");
    let v = assert_invalid(&send(&gw, &form), "model");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("more than once"),
        "{v}"
    );
    gw.assert_still_serves();
}

/// A body neither multipart nor JSON (OpenAI's JSON form is served since issue 18 item 6:
/// tests/json_edits.rs) is a 400 `unsupported_media_type`: Bifrost answers it with a 400, and
/// the seed spec documents no 415 (schemathesis ST103).
#[test]
fn not_multipart_is_a_400() {
    let (_mock, gw) = start();
    for (content_type, body) in [
        (
            "application/x-www-form-urlencoded",
            &b"model=openai/gpt-image-1&prompt=p"[..],
        ),
        ("text/plain", &b"model=openai/gpt-image-1"[..]),
        (
            "application/jsonl",
            &br#"{"model":"openai/gpt-image-1","prompt":"p"}"#[..],
        ),
    ] {
        let r = send_raw(&gw, content_type, body);
        assert_gateway_error(&r, 400, "unsupported_media_type", "invalid_request_error", None);
    }
    gw.assert_still_serves();
}

/// `GET /v1/images/edits` is a 405.
#[test]
fn wrong_method_is_405() {
    let (_mock, gw) = start();
    let mut c = gw.connect();
    c.send(format!("GET /v1/images/edits HTTP/1.1\r\nHost: gw\r\nx-bf-vk: {VK}\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_gateway_error(&r, 405, "method_not_allowed", "invalid_request_error", None);
    gw.assert_still_serves();
}

/// An unknown path is a 404.
#[test]
fn unknown_path_is_404() {
    let (_mock, gw) = start();
    let form = valid_form();
    let mut c = gw.connect();
    c.send(&post_head("/v1/chat/completions", &[("x-bf-vk", VK)], &form, None));
    c.send(&form.body());
    let r = c.read_response();
    let v = assert_gateway_error(&r, 404, "not_found", "not_found_error", None);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("/v1/chat/completions"),
        "{v}"
    );
    gw.assert_still_serves();
}

/// A 10 KB `x-request-id` is replaced by a generated id, on the answer and upstream.
#[test]
fn huge_request_id_is_replaced() {
    let (mock, gw) = start();
    let huge = "r".repeat(10 * 1024);
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK), ("x-request-id", &huge)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.header("x-request-id").unwrap();
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");
    assert_eq!(mock.only_request().header("x-request-id"), Some(id));
    gw.assert_still_serves();
}

/// Non-UTF-8 bytes in `x-bf-vk` are an unknown key: 401.
#[test]
fn non_utf8_virtual_key_is_401() {
    let (mock, gw) = start();
    let form = valid_form();
    let mut head = format!(
        "POST /v1/images/edits HTTP/1.1\r\nHost: gw\r\nContent-Type: {}\r\nContent-Length: {}\r\nx-bf-vk: sk-bf-",
        form.content_type(),
        form.body().len()
    )
    .into_bytes();
    head.extend_from_slice(b"\xff\xfe\x80caf\xe9\r\n\r\n");
    let mut c = gw.connect();
    c.send(&head);
    c.send(&form.body());
    let r = c.read_response();
    assert_gateway_error(&r, 401, "virtual_key_not_found", "authentication_error", None);
    assert!(mock.requests().is_empty());
    gw.assert_still_serves();
}

/// Unknown fields whose names carry escaped quotes are not forwarded (only plain ASCII token
/// names are: issue 12, finding 8); a file name with quotes passes through percent-encoded;
/// upstream parses all parts.
#[test]
fn quoted_field_names_pass_through_escaped() {
    let (mock, gw) = start();
    let form = Form::new();
    let b = form.boundary.clone();
    let form = form
        .text("model", "openai/gpt-image-1")
        .raw(format!("--{b}\r\nContent-Disposition: form-data; name=\"we\\\"ird\"\r\n\r\nvalue-1\r\n").as_bytes())
        .raw(format!("--{b}\r\nContent-Disposition: form-data; name=\"a\\\"b\\\"c\"\r\n\r\nvalue-2\r\n").as_bytes())
        .raw(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"note\"; filename=\"my\\\"file.txt\"\r\nContent-Type: text/plain\r\n\r\nfile-3\r\n"
            )
            .as_bytes(),
        )
        .text("prompt", "p")
        .file("image", "a.png", "image/png", &tiny_png());
    let r = send(&gw, &form);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    let parts = rec.parts();
    let names: Vec<&str> = parts.iter().map(|p| p.name.as_str()).collect();
    // A small body is sent from the spool: small fields first, then images, then other files.
    assert_eq!(names, ["model", "prompt", "image", "note"]);
    assert!(parts[2].data == tiny_png());
    assert_eq!(parts[3].filename.as_deref(), Some("my%22file.txt"));
    assert_eq!(parts[3].content_type.as_deref(), Some("text/plain"));
    assert_eq!(parts[3].text(), "file-3");
    let text = String::from_utf8_lossy(&rec.body);
    assert!(!text.contains("\\\""), "no backslash-escaped quote is forwarded");
    gw.assert_still_serves();
}
