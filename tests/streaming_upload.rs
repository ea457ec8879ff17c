//! Streaming the upload upstream while the client is still sending it: which uploads are
//! streamed (chunked upstream) and which are built from the spool (exact Content-Length,
//! canonical order), that every byte arrives, that an invalid form abandons the upstream
//! request, and that an early upstream answer is the one the client gets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::*;
use serde_json::json;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// The gateway's streaming threshold (`STREAM_MIN_BYTES` in `src/server/gateway.rs`).
const STREAM_MIN_BYTES: usize = 256 * 1024;

/// The upstream request's multipart boundary.
fn boundary_of(rec: &Recorded) -> String {
    let ct = rec.header("content-type").expect("upstream request has a Content-Type");
    assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
    multer::parse_boundary(&ct).expect("boundary")
}

/// Checks what every complete upstream request must look like (route, Host, provider key, a
/// body that ends with its closing boundary and parses whole, the prefix-free model) and
/// returns its parts.
fn upstream_parts(rec: &Recorded, mock: &MockUpstream) -> Vec<Part> {
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path, "/v1/images/edits");
    assert_eq!(rec.header("host"), Some(mock.addr.to_string()));
    assert_eq!(rec.header("authorization"), Some(format!("Bearer {PROVIDER_KEY}")));
    assert!(rec.complete, "the upstream body must be complete");
    let closing = format!("--{}--\r\n", boundary_of(rec));
    assert!(
        rec.body.ends_with(closing.as_bytes()),
        "the upstream body must end with its closing boundary; it ends with {:?}",
        String::from_utf8_lossy(&rec.body[rec.body.len().saturating_sub(80)..])
    );
    assert_eq!(
        rec.body
            .windows(closing.len())
            .filter(|w| *w == closing.as_bytes())
            .count(),
        1,
        "exactly one closing boundary"
    );
    let parts = rec.parts();
    let models = parts_named(&parts, "model");
    assert_eq!(models.len(), 1);
    assert_eq!(models[0].text(), "gpt-image-1", "the provider prefix must be removed");
    parts
}

/// Asserts the request was streamed: chunked, no Content-Length.
fn assert_streamed(rec: &Recorded) {
    assert_eq!(rec.header("transfer-encoding").as_deref(), Some("chunked"));
    assert_eq!(
        rec.header("content-length"),
        None,
        "a streamed request has no Content-Length"
    );
}

/// Asserts the request was built from the spool: an exact Content-Length, not chunked.
fn assert_exact_length(rec: &Recorded) {
    assert_eq!(
        rec.header("transfer-encoding"),
        None,
        "a spooled request is not chunked"
    );
    let len = rec
        .header("content-length")
        .expect("a spooled request has a Content-Length");
    assert_eq!(
        len.parse::<usize>().unwrap(),
        rec.body.len(),
        "Content-Length must be exact"
    );
}

/// The parts' names, in order.
fn names(parts: &[Part]) -> Vec<&str> {
    parts.iter().map(|p| p.name.as_str()).collect()
}

/// The one part named `name`.
fn one<'a>(parts: &'a [Part], name: &str) -> &'a Part {
    let found = parts_named(parts, name);
    assert_eq!(found.len(), 1, "expected one part {name}, got {}", found.len());
    found[0]
}

/// Asserts a file part's upstream name, file name, type and exact bytes.
fn assert_file(part: &Part, filename: &str, content_type: &str, data: &[u8]) {
    assert_eq!(part.filename.as_deref(), Some(filename), "file name of {}", part.name);
    assert_eq!(
        part.content_type.as_deref(),
        Some(content_type),
        "type of {}",
        part.name
    );
    assert_eq!(part.data.len(), data.len(), "length of {}", part.name);
    assert!(part.data == data, "{} must arrive byte for byte", part.name);
}

/// A POST head announcing a chunked body for `form`.
fn chunked_head(form: &Form) -> Vec<u8> {
    format!(
        "POST /v1/images/edits HTTP/1.1\r\nHost: gateway.test\r\nx-bf-vk: {VK}\r\nContent-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        form.content_type()
    )
    .into_bytes()
}

/// Sends `head`, then `body` in `piece`-byte writes `pause` apart on a writer thread, while this
/// thread reads the answer. Returns the answer and when the last write began.
fn send_paced(addr: SocketAddr, head: &[u8], body: Vec<u8>, piece: usize, pause: Duration) -> (Response, Instant) {
    let mut conn = Conn::open(addr);
    conn.send(head);
    let mut writer = conn.stream.try_clone().expect("clone stream");
    writer.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
    let handle = std::thread::spawn(move || {
        let mut last = Instant::now();
        for (i, chunk) in body.chunks(piece).enumerate() {
            if i > 0 {
                std::thread::sleep(pause);
            }
            last = Instant::now();
            if writer.write_all(chunk).is_err() {
                panic!("the gateway stopped reading the upload after {} bytes", i * piece);
            }
        }
        last
    });
    let resp = conn.read_response();
    let last_write = handle.join().expect("writer thread");
    (resp, last_write)
}

/// The OpenAI SDK's field order (text fields, `model` in the middle, then files): streamed
/// chunked, with the fields sent before `model` replayed, and every byte there.
#[test]
fn sdk_field_order_streams_every_field() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let image = big_png_like(1_000_000, 11);
    let mask = big_png_like(40_000, 12);
    let form = Form::new()
        .text("prompt", "make the sky purple")
        .text("background", "transparent")
        .text("input_fidelity", "high")
        .text("model", "openai/gpt-image-1")
        .text("n", "2")
        .text("size", "1024x1536")
        .file("image", "photo.png", "image/png", &image)
        .file("mask", "mask.png", "image/png", &mask);
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    assert_streamed(&rec);
    let parts = upstream_parts(&rec, &mock);
    assert_eq!(
        names(&parts),
        [
            "model",
            "prompt",
            "background",
            "input_fidelity",
            "n",
            "size",
            "image",
            "mask"
        ]
    );
    assert_eq!(one(&parts, "prompt").text(), "make the sky purple");
    assert_eq!(one(&parts, "background").text(), "transparent");
    assert_eq!(one(&parts, "input_fidelity").text(), "high");
    assert_eq!(one(&parts, "n").text(), "2");
    assert_eq!(one(&parts, "size").text(), "1024x1536");
    assert_file(one(&parts, "image"), "image.png", "image/png", &image);
    assert_file(one(&parts, "mask"), "mask.png", "image/png", &mask);
}

/// A 20 MB image after `model`, sent with a Content-Length, is streamed chunked and arrives
/// byte for byte.
#[test]
fn twenty_mb_model_first_is_streamed() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let image = big_png_like(20 * 1024 * 1024, 21);
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "a prompt")
        .file("image", "photo.bin", "application/octet-stream", &image);
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    assert_streamed(&rec);
    let parts = upstream_parts(&rec, &mock);
    assert_eq!(names(&parts), ["model", "prompt", "image"]);
    assert_file(one(&parts, "image"), "image.png", "image/png", &image);
}

/// Where the last file part's data ends in `form`'s body (before its CRLF and the closing
/// boundary).
fn last_file_end(form: &Form) -> usize {
    form.body().len() - format!("--{}--\r\n", form.boundary).len() - 2
}

/// Sends `form` with a Content-Length in two writes split at `split`, `pause` apart, so the
/// gateway's reads end exactly there; returns the answer.
fn send_split(gw: &Gateway, form: &Form, split: usize, pause: Duration) -> Response {
    let body = form.body();
    let mut c = gw.connect();
    c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], form, None));
    c.send(&body[..split]);
    std::thread::sleep(pause);
    c.send(&body[split..]);
    c.read_response()
}

/// Twenty streamed ~600 KB uploads in a row on one gateway (pooled upstream connection), each
/// split so a client read ends at a different byte around the image's end and its following
/// boundary: every upstream body is whole and ends with its closing boundary (guards against an
/// empty piece ending the chunked body early).
#[test]
fn repeated_streamed_uploads_are_never_truncated() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    for i in 0..20usize {
        let image = big_png_like(600_000 + i * 4_099, 100 + i as u64);
        let form = Form::new()
            .text("model", "openai/gpt-image-1")
            .text("prompt", &format!("edit number {i}"))
            .text("seed", "7")
            .file("image", "photo.png", "image/png", &image);
        // From 3 bytes before the image's end to inside the boundary line after it.
        let split = last_file_end(&form) + i - 3;
        let r = send_split(&gw, &form, split, Duration::from_millis(30));
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        let all = mock.requests();
        assert_eq!(all.len(), i + 1, "request {i}: one upstream request each");
        let rec = &all[i];
        assert_streamed(rec);
        let parts = upstream_parts(rec, &mock);
        assert_eq!(names(&parts), ["model", "prompt", "image"], "request {i}");
        assert_eq!(one(&parts, "prompt").text(), format!("edit number {i}"));
        assert_file(one(&parts, "image"), "image.png", "image/png", &image);
    }
    assert!(mock.incomplete().is_empty(), "no upstream body may be cut short");
}

/// Encodes `body` as HTTP/1.1 chunks of 1, 7 and 4096 bytes in turn, also cutting a chunk at
/// each offset in `cuts`.
fn chunked_with_cuts(body: &[u8], cuts: &[usize]) -> Vec<u8> {
    let sizes = [1usize, 7, 4096];
    let mut out = Vec::with_capacity(body.len() + body.len() / 100 + 16);
    let (mut i, mut k) = (0, 0);
    while i < body.len() {
        let mut end = (i + sizes[k % sizes.len()]).min(body.len());
        if let Some(&cut) = cuts.iter().filter(|&&c| c > i && c < end).min() {
            end = cut;
        }
        out.extend_from_slice(format!("{:x}\r\n", end - i).as_bytes());
        out.extend_from_slice(&body[i..end]);
        out.extend_from_slice(b"\r\n");
        i = end;
        k += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A chunked client upload (chunks of 1, 7 and 4096 bytes, some ending inside the boundary line
/// after an image) of a 1 MB image after `model` is streamed upstream and arrives byte for byte.
#[test]
fn chunked_client_upload_is_streamed() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let image = big_png_like(1_000_000, 31);
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "p")
        .file("image[]", "a.png", "image/png", &image)
        .file("image[]", "b.jpg", "image/jpeg", &jpeg_like());
    let body = form.body();
    let tail = &image[image.len() - 32..];
    let first_end = body.windows(32).position(|w| w == tail).expect("image in body") + 32;
    let last_end = last_file_end(&form);
    let cuts: Vec<usize> = [first_end, last_end]
        .iter()
        .flat_map(|&e| [e, e + 1, e + 2, e + 5])
        .collect();
    let mut c = gw.connect();
    c.send(&chunked_head(&form));
    c.send(&chunked_with_cuts(&body, &cuts));
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    assert_streamed(&rec);
    let parts = upstream_parts(&rec, &mock);
    assert_eq!(names(&parts), ["model", "prompt", "image[]", "image[]"]);
    let images = parts_named(&parts, "image[]");
    assert_file(images[0], "image_0.png", "image/png", &image);
    assert_file(images[1], "image_1.jpg", "image/jpeg", &jpeg_like());
}

/// The upstream request starts while the client is still uploading: its head reaches the
/// provider before the client's last write.
#[test]
fn upstream_starts_before_the_upload_ends() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let image = big_png_like(2 * 1024 * 1024, 41);
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "slowly")
        .file("image", "slow.png", "image/png", &image);
    let head = post_head("/v1/images/edits", &[("x-bf-vk", VK)], &form, None);
    let started = Instant::now();
    let (r, last_write) = send_paced(gw.addr, &head, form.body(), 64 * 1024, Duration::from_millis(20));
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    assert!(
        rec.first_byte_at < last_write && rec.head_at < last_write,
        "the upstream head arrived {:?} after the start, the client's last write began {:?} after it",
        rec.head_at - started,
        last_write - started
    );
    assert_streamed(&rec);
    let parts = upstream_parts(&rec, &mock);
    assert_file(one(&parts, "image"), "image.png", "image/png", &image);
}

/// An invalid field after a streamed image gives the client its 400 and abandons the upstream
/// request: the provider never sees a complete body and answers nothing.
#[test]
fn invalid_field_after_the_image_abandons_the_upstream_request() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let image = big_png_like(1_000_000, 51);
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "p")
        .file("image", "a.png", "image/png", &image)
        .text("n", "11");
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_invalid(&r, "n");

    // The mock records an abandoned request once the gateway has closed its connection.
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.incomplete().is_empty() && mock.connections() > 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(
        mock.requests().is_empty(),
        "the provider must not receive a complete request"
    );
    let incomplete = mock.incomplete();
    if mock.connections() > 0 {
        assert_eq!(incomplete.len(), 1, "the abandoned request must be seen as incomplete");
        let rec = &incomplete[0];
        assert_streamed(rec);
        assert!(!rec.complete, "no terminating chunk may be sent");
        let boundary = boundary_of(rec);
        let closing = format!("--{boundary}--");
        assert!(
            !rec.body.windows(closing.len()).any(|w| w == closing.as_bytes()),
            "an abandoned body must not carry its closing boundary"
        );
        assert!(
            !rec.body.windows(10).any(|w| w == b"name=\"n\"\r\n"),
            "the invalid field must not be forwarded"
        );
    }

    gw.assert_still_serves();
    let all = mock.requests();
    assert_eq!(all.len(), 1, "only the follow-up request is complete");
    let parts = upstream_parts(&all[0], &mock);
    assert_file(one(&parts, "image"), "image.png", "image/png", &tiny_png());
}

/// A provider that answers 401 right after the head, without reading the body, while the
/// client is still uploading 5 MB: the client gets that 401, and the gateway serves on.
#[test]
fn early_upstream_answer_is_used() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let message = "Incorrect API key provided: sk-upstr**************3210.";
    let body = serde_json::to_vec(&json!({"error": {
        "message": message,
        "type": "invalid_request_error",
        "param": null,
        "code": "invalid_api_key"
    }}))
    .unwrap();
    mock.push(Reply::EarlyAnswer {
        status: 401,
        content_type: "application/json".into(),
        body,
    });
    let image = big_png_like(5 * 1024 * 1024, 61);
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "p")
        .file("image", "big.png", "image/png", &image);
    let head = post_head("/v1/images/edits", &[("x-bf-vk", VK)], &form, None);
    let (r, last_write) = send_paced(gw.addr, &head, form.body(), 256 * 1024, Duration::from_millis(10));
    let v = r.json();
    assert_eq!(r.status, 401, "{v}");
    assert_eq!(v["is_bifrost_error"], false, "{v}");
    assert_eq!(v["status_code"], 401, "{v}");
    assert_eq!(v["error"]["message"], message, "{v}");
    assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
    assert_eq!(v["extra_fields"]["provider"], "openai", "{v}");

    let rec = mock.only_request();
    assert_streamed(&rec);
    assert!(!rec.complete);
    assert!(
        rec.head_at < last_write,
        "the provider answered before the upload ended"
    );
    assert!(mock.incomplete().is_empty());

    gw.assert_still_serves();
    let all = mock.requests();
    assert_eq!(all.len(), 2, "the early answer is not retried");
    upstream_parts(&all[1], &mock);
}

/// A small upload (< 256 KiB with a Content-Length) with `model` first is built from the
/// spool: exact Content-Length, canonical order.
#[test]
fn small_upload_is_sent_with_exact_length_in_canonical_order() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let image = big_png_like(150_000, 71);
    let mask = big_png_like(20_000, 72);
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("user", "u-1")
        .text("safety_identifier", "s-1")
        .text("background", "opaque")
        .text("prompt", "p")
        .file("notes", "notes.txt", "text/plain", b"hello notes")
        .file("image", "a.png", "image/png", &image)
        .text("size", "1024x1024")
        .file("mask", "m.png", "image/png", &mask)
        .text("n", "2")
        .text("quality", "high");
    assert!(form.body().len() < STREAM_MIN_BYTES);
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    assert_exact_length(&rec);
    let parts = upstream_parts(&rec, &mock);
    assert_eq!(
        names(&parts),
        [
            "model",
            "prompt",
            "n",
            "size",
            "quality",
            "background",
            "user",
            "safety_identifier",
            "image",
            "mask",
            "notes"
        ]
    );
    assert_eq!(one(&parts, "user").text(), "u-1");
    assert_eq!(one(&parts, "safety_identifier").text(), "s-1");
    assert_file(one(&parts, "image"), "image.png", "image/png", &image);
    assert_file(one(&parts, "mask"), "mask.png", "image/png", &mask);
    assert_file(one(&parts, "notes"), "notes.txt", "text/plain", b"hello notes");
}

/// `model` after the image on a 1 MB upload: built from the spool, exact Content-Length,
/// canonical order.
#[test]
fn model_after_the_image_is_sent_with_exact_length_in_canonical_order() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let image = big_png_like(1_000_000, 81);
    let mask = big_png_like(30_000, 82);
    let form = Form::new()
        .text("prompt", "p")
        .file("image", "a.png", "image/png", &image)
        .text("model", "openai/gpt-image-1")
        .file("mask", "m.png", "image/png", &mask)
        .text("n", "3");
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    assert_exact_length(&rec);
    let parts = upstream_parts(&rec, &mock);
    assert_eq!(names(&parts), ["model", "prompt", "n", "image", "mask"]);
    assert_eq!(one(&parts, "n").text(), "3");
    assert_file(one(&parts, "image"), "image.png", "image/png", &image);
    assert_file(one(&parts, "mask"), "mask.png", "image/png", &mask);
}

/// The threshold by Content-Length: one byte under 256 KiB is sent with a Content-Length,
/// exactly 256 KiB is streamed.
#[test]
fn stream_threshold_is_256_kib() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let form_of = |len: usize| {
        let overhead = Form::new()
            .text("model", "openai/gpt-image-1")
            .text("prompt", "p")
            .file("image", "a.png", "image/png", &[])
            .body()
            .len();
        let image = big_png_like(len - overhead, len as u64);
        let form = Form::new()
            .text("model", "openai/gpt-image-1")
            .text("prompt", "p")
            .file("image", "a.png", "image/png", &image);
        assert_eq!(form.body().len(), len);
        (form, image)
    };
    for (len, streamed) in [(STREAM_MIN_BYTES - 1, false), (STREAM_MIN_BYTES, true)] {
        let (form, image) = form_of(len);
        let r = gw.edit(&form, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{len} bytes: {}", r.text());
        let rec = mock.requests().pop().expect("an upstream request");
        if streamed {
            assert_streamed(&rec);
        } else {
            assert_exact_length(&rec);
        }
        let parts = upstream_parts(&rec, &mock);
        assert_file(one(&parts, "image"), "image.png", "image/png", &image);
    }
    assert_eq!(mock.requests().len(), 2);
}

/// A large upload whose mask is opaque (white = edit) to an OpenAI-compatible provider: the
/// streamed request is abandoned unfinished (the provider never acts on it) and the edit is
/// sent again from the spool, its mask converted to OpenAI's alpha (the same edit area). An
/// alpha mask in the same upload streams through as sent.
#[test]
fn an_opaque_mask_is_converted_and_sent_from_the_spool() {
    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let image = big_png_like(1_000_000, 61);
    let form = |mask: &[u8]| {
        Form::new()
            .text("model", "openai/gpt-image-1")
            .text("prompt", "p")
            .file("image", "a.png", "image/png", &image)
            .file("mask", "mask.png", "image/png", mask)
    };
    let r = gw.edit(&form(&white_edit_mask_png()), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let all = mock.requests();
    assert_eq!(all.len(), 1, "one complete upstream request");
    assert_exact_length(&all[0]);
    let parts = upstream_parts(&all[0], &mock);
    assert_file(one(&parts, "image"), "image.png", "image/png", &image);
    let mask = one(&parts, "mask");
    assert_eq!(mask.filename.as_deref(), Some("mask.png"));
    common::wire::assert_alpha_mask(&mask.data);
    // The streamed request was never finished.
    let deadline = Instant::now() + Duration::from_secs(5);
    while mock.incomplete().is_empty() && mock.connections() > 1 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(mock.incomplete().iter().all(|rec| !rec.complete));

    let mock = MockUpstream::start();
    let gw = Gateway::start(&Setup::new(&mock.base_url()));
    let alpha = unified_mask_png();
    let r = gw.edit(&form(&alpha), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.only_request();
    assert_streamed(&rec);
    let parts = upstream_parts(&rec, &mock);
    assert_file(one(&parts, "mask"), "mask.png", "image/png", &alpha);
}
