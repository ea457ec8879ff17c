//! OpenAI's JSON form of `POST /v1/images/edits` end to end (issue 18 item 6): a real gateway in
//! this process; images as data URLs (decoded into the spool) and as http(s) URLs (fetched
//! from a loopback image server the tests start, through the SSRF guard, which needs the
//! operator's `allow_hosts` for it); a strict mock comparing the bytes the provider receives
//! with the images sent; every refusal of the guard; the limits; the async submit route.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::*;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn data_url(bytes: &[u8]) -> String {
    format!("data:image/png;base64,{}", b64(bytes))
}

/// POSTs the JSON text `body` to `path` with `headers`, declaring `Content-Length: declared`
/// (the body's length when `None`).
fn post_raw(addr: SocketAddr, path: &str, headers: &[(&str, &str)], body: &[u8], declared: Option<usize>) -> Response {
    let mut head = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        declared.unwrap_or(body.len())
    );
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    head.push_str("\r\n");
    let mut c = Conn::open(addr);
    c.send(head.as_bytes());
    c.send(body);
    if declared.is_some() {
        c.shutdown_write();
    }
    c.read_response()
}

/// POSTs the JSON `body` to `path` with the virtual key.
fn post_json(addr: SocketAddr, path: &str, body: &Value) -> Response {
    post_raw(addr, path, &[("x-bf-vk", VK)], body.to_string().as_bytes(), None)
}

/// Asserts a Bifrost error answer with `status`, and its `param` when given; returns the body.
fn assert_error(r: &Response, status: u16, param: Option<&str>) -> Value {
    assert_eq!(r.status, status, "{}", r.text());
    let body = r.json();
    assert_eq!(body["is_bifrost_error"], true, "{body}");
    if let Some(param) = param {
        assert_eq!(body["error"]["param"], param, "{body}");
    }
    body
}

/// The message of an error body.
fn message(body: &Value) -> String {
    body["error"]["message"].as_str().unwrap_or_default().to_string()
}

/// What the image server answers for a path.
#[derive(Clone)]
enum Served {
    /// 200 with the bytes and their Content-Length.
    Image(Vec<u8>),
    /// 200 with the bytes, no Content-Length (the body ends when the connection closes).
    ImageUnsized(Vec<u8>),
    /// A 302 to the location.
    Redirect(String),
    /// The head, then nothing for this long.
    Stall(Duration),
    /// An error status.
    Status(u16),
}

/// A loopback HTTP server for the images the gateway fetches: each request's path is answered
/// by `serve`; requests are counted.
struct ImageServer {
    addr: SocketAddr,
    requests: Arc<AtomicUsize>,
}

impl ImageServer {
    fn start(serve: impl Fn(&str) -> Served + Send + Sync + 'static) -> ImageServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let counted = requests.clone();
        let serve = Arc::new(serve);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let serve = serve.clone();
                let counted = counted.clone();
                std::thread::spawn(move || answer(stream, &*serve, &counted));
            }
        });
        ImageServer { addr, requests }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

fn answer(mut stream: TcpStream, serve: &dyn Fn(&str) -> Served, counted: &AtomicUsize) {
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => return,
        }
    }
    counted.fetch_add(1, Ordering::SeqCst);
    let text = String::from_utf8_lossy(&head).into_owned();
    let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
    let _ = match serve(&path) {
        Served::Image(bytes) => stream
            .write_all(
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    bytes.len()
                )
                .as_bytes(),
            )
            .and_then(|()| stream.write_all(&bytes)),
        Served::ImageUnsized(bytes) => stream
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nConnection: close\r\n\r\n")
            .and_then(|()| stream.write_all(&bytes)),
        Served::Redirect(to) => stream.write_all(
            format!("HTTP/1.1 302 Found\r\nLocation: {to}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .as_bytes(),
        ),
        Served::Stall(pause) => {
            let _ =
                stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: image/png\r\nContent-Length: 5000\r\n\r\n\x89PNG");
            std::thread::sleep(pause);
            Ok(())
        }
        Served::Status(status) => stream
            .write_all(format!("HTTP/1.1 {status} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").as_bytes()),
    };
}

/// A gateway in front of `mock` (and the simulator as `demo` when `simulator`) with `limits`
/// lines for its `limits:` section.
fn gateway(mock: &MockUpstream, simulator: bool, limits: &str) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.simulator = simulator;
    setup.limits = limits.to_string();
    Gateway::start(&setup)
}

/// `limits.fetch_image_urls` enabled, with `more` lines (each `    key: value\n`).
fn fetching(more: &str) -> String {
    format!("  fetch_image_urls:\n    enabled: true\n{more}")
}

/// The image parts and the mask part the mock received in its one request (their bytes).
fn received_files(mock: &MockUpstream) -> (Vec<Vec<u8>>, Option<Vec<u8>>, Vec<Part>) {
    let rec = mock.requests().pop().expect("a request upstream");
    let parts = rec.parts();
    let images = parts
        .iter()
        .filter(|p| p.name.starts_with("image"))
        .map(|p| p.data.clone())
        .collect();
    let mask = parts.iter().find(|p| p.name == "mask").map(|p| p.data.clone());
    (images, mask, parts)
}

fn field<'p>(parts: &'p [Part], name: &str) -> Option<&'p [u8]> {
    parts.iter().find(|p| p.name == name).map(|p| p.data.as_slice())
}

#[test]
fn data_urls_reach_the_provider_byte_for_byte_under_every_route() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false, "");
    let first = big_png_like(300_000, 3);
    let second = tiny_png();
    let mask = unified_mask_png();
    let body = json!({
        "model": "openai/gpt-image-1",
        "prompt": "make it blue",
        "images": [{"image_url": data_url(&first)}, {"image_url": data_url(&second)}],
        "mask": {"image_url": data_url(&mask)},
        "n": 2,
        "size": "1024x1024",
        "quality": "high",
        "background": "opaque",
        "output_format": "png",
        "user": "user-7",
        "input_fidelity": "high",
    });
    for path in [
        "/v1/images/edits",
        "/images/edits",
        "/openai/images/edits",
        "/openai/v1/images/edits",
        "/litellm/v1/images/edits",
        "/langchain/images/edits",
        "/pydanticai/v1/images/edits",
    ] {
        let before = mock.requests().len();
        let r = post_json(gw.addr, path, &body);
        assert_eq!(r.status, 200, "{path}: {}", r.text());
        let answer = r.json();
        assert_eq!(answer["data"][0]["b64_json"], "aW1hZ2UtMA==", "{path}: {answer}");
        assert_eq!(answer["extra_fields"]["provider"], "openai", "{answer}");
        assert_eq!(mock.requests().len(), before + 1, "{path}");
        let (images, got_mask, parts) = received_files(&mock);
        assert_eq!(images.len(), 2, "{path}");
        assert!(images[0] == first, "{path}: the first image differs from the one sent");
        assert!(images[1] == second, "{path}: the second image differs");
        assert!(got_mask.as_deref() == Some(&mask[..]), "{path}: the mask differs");
        for (name, value) in [
            ("model", "gpt-image-1"),
            ("prompt", "make it blue"),
            ("n", "2"),
            ("size", "1024x1024"),
            ("quality", "high"),
            ("background", "opaque"),
            ("output_format", "png"),
            ("user", "user-7"),
            ("input_fidelity", "high"),
        ] {
            assert_eq!(field(&parts, name), Some(value.as_bytes()), "{path}: {name}");
        }
    }
    // Azure's deployment path: the model is the path's, whatever the body says.
    let r = post_json(
        gw.addr,
        "/openai/deployments/other%2Fgpt-image-1/images/edits?api-version=2025-04-01-preview",
        &body,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = mock.requests().pop().unwrap();
    assert_eq!(
        rec.header("authorization"),
        Some(format!("Bearer {OTHER_PROVIDER_KEY}"))
    );
    // Counted as any edit.
    wait_until("the JSON edits counted", || {
        gw.metrics_text().lines().any(|l| {
            l.starts_with("refract_requests_total{")
                && l.contains(r#"provider="openai""#)
                && l.contains(r#"model="gpt-image-1""#)
                && l.contains(r#"status="200""#)
                && l.ends_with(" 7")
        })
    });
}

#[test]
fn the_simulator_edits_a_json_request_and_streams_it() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, true, "");
    let image = gradient_png();
    let body = json!({
        "model": "demo/sim-image-1",
        "prompt": "paint it",
        "images": [{"image_url": data_url(&image)}],
        "mask": {"image_url": data_url(&unified_mask_png())},
    });
    let r = post_json(gw.addr, "/v1/images/edits", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let answer = r.json();
    let png = base64::engine::general_purpose::STANDARD
        .decode(answer["data"][0]["b64_json"].as_str().expect("b64_json"))
        .unwrap();
    let edited = refract::imaging::decode_png(&png).expect("a PNG");
    assert_eq!((edited.width, edited.height), (6, 4));
    // A stream, with partial images, in OpenAI's framing under /openai.
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    streaming["partial_images"] = json!(2);
    let r = post_json(gw.addr, "/openai/v1/images/edits", &streaming);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("text/event-stream"),
        "{:?}",
        r.headers
    );
    let text = r.text();
    assert!(text.matches("image_edit.partial_image").count() >= 2, "{text}");
    assert!(text.contains("image_edit.completed"), "{text}");
    assert!(mock.requests().is_empty());
}

#[test]
fn fallbacks_and_extras_from_the_body() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false, "");
    mock.push(Reply::json(
        500,
        &json!({"error": {"message": "down", "type": "server_error"}}),
    ));
    mock.push(Reply::json(200, &default_success()));
    let body = json!({
        "model": "openai/gpt-image-1",
        "prompt": "p",
        "images": [{"image_url": data_url(&tiny_png())}],
        "fallbacks": ["other/gpt-image-1"],
        "negative_prompt": "blur",
        "seed": 42,
    });
    let r = post_json(gw.addr, "/v1/images/edits", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "other");
    let requests = mock.requests();
    assert_eq!(requests.len(), 2);
    assert_eq!(
        requests[1].header("authorization"),
        Some(format!("Bearer {OTHER_PROVIDER_KEY}"))
    );
}

#[test]
fn bad_bodies_are_refused_in_bifrost_shape() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, false, "  max_body_bytes: 200000\n  max_part_bytes: 100000\n");
    let png = data_url(&tiny_png());
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({"model": "openai/gpt-image-1", "prompt": "p", "images": [{"file_id": "file-123"}]}),
            "images[0]",
            "file_id is not supported",
        ),
        (
            json!({"model": "openai/gpt-image-1", "prompt": "p", "images": [{"image_url": png}], "mask": {"file_id": "f"}}),
            "mask",
            "file_id is not supported",
        ),
        (
            json!({"model": "openai/gpt-image-1", "prompt": "p", "images": [{"image_url": "https://img.example/a.png"}]}),
            "images[0].image_url",
            "not fetched by this gateway",
        ),
        (
            json!({"model": "openai/gpt-image-1", "prompt": "p", "images": [{"image_url": "data:image/png;base64,@@@"}]}),
            "images[0].image_url",
            "not valid base64",
        ),
        (
            json!({"model": "openai/gpt-image-1", "prompt": "p", "images": [{"image_url": png}], "mask": {"image_url": data_url(b"not an image")}}),
            "mask.image_url",
            "not a PNG, JPEG or WebP",
        ),
        (
            json!({"prompt": "p", "images": [{"image_url": png}]}),
            "model",
            "model is required",
        ),
        (
            json!({"model": "openai/gpt-image-1", "images": [{"image_url": png}]}),
            "prompt",
            "prompt is required",
        ),
        (
            json!({"model": "openai/gpt-image-1", "prompt": "p"}),
            "image",
            "at least one image",
        ),
        (
            json!({"model": "openai/gpt-image-1", "prompt": "p", "n": 99, "images": [{"image_url": png}]}),
            "n",
            "",
        ),
        (
            json!({"model": "openai/gpt-image-1", "prompt": "p", "size": {"w": 1}, "images": [{"image_url": png}]}),
            "size",
            "must be a string",
        ),
    ];
    for (body, param, text) in cases {
        let r = post_json(gw.addr, "/v1/images/edits", &body);
        let e = assert_error(&r, 400, Some(param));
        assert!(message(&e).contains(text), "{body}: {e}");
    }
    // Unknown provider: 400 before any image is decoded; a key that may not use the model: 403.
    let r = post_json(
        gw.addr,
        "/v1/images/edits",
        &json!({"model": "nope/x", "prompt": "p", "images": [{"image_url": png}]}),
    );
    assert_error(&r, 400, None);
    let r = post_raw(
        gw.addr,
        "/v1/images/edits",
        &[("x-bf-vk", VK_RESTRICTED)],
        json!({"model": "other/gpt-image-1", "prompt": "p", "images": [{"image_url": png}]})
            .to_string()
            .as_bytes(),
        None,
    );
    assert!(matches!(r.status, 401 | 403), "{}", r.text());
    // No key.
    let r = post_raw(gw.addr, "/v1/images/edits", &[], b"{}", None);
    assert_error(&r, 401, None);
    // Malformed JSON; not an object.
    for bad in [&b"{\"model\": \"openai/gpt-image-1\", "[..], b"[1, 2]", b"nope"] {
        let r = post_raw(gw.addr, "/v1/images/edits", &[("x-bf-vk", VK)], bad, None);
        let e = assert_error(&r, 400, Some("body"));
        assert!(message(&e).contains("not a valid JSON"), "{e}");
    }
    // A body cut short: the client declared more than it sent, then closed.
    let r = post_raw(
        gw.addr,
        "/v1/images/edits",
        &[("x-bf-vk", VK)],
        br#"{"model": "op"#,
        Some(5000),
    );
    assert_error(&r, 400, None);
    // Too large, by Content-Length and while reading (chunked).
    let big = json!({"model": "openai/gpt-image-1", "prompt": "p",
                     "images": [{"image_url": data_url(&big_png_like(300_000, 1))}]})
    .to_string();
    let r = post_json(gw.addr, "/v1/images/edits", &serde_json::from_str(&big).unwrap());
    assert_error(&r, 413, None);
    // An image past max_part_bytes inside a body within max_body_bytes: named by its JSON param.
    let body = json!({"model": "openai/gpt-image-1", "prompt": "p",
                      "images": [{"image_url": png}, {"image_url": data_url(&big_png_like(120_000, 2))}]});
    assert_error(
        &post_json(gw.addr, "/v1/images/edits", &body),
        413,
        Some("images[1].image_url"),
    );
    let mut c = gw.connect();
    c.send(b"POST /v1/images/edits HTTP/1.1\r\nHost: g\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nx-bf-vk: ");
    c.send(VK.as_bytes());
    c.send(b"\r\n\r\n");
    c.send(&chunked(big.as_bytes()));
    assert_error(&c.read_response(), 413, None);
    assert!(mock.requests().is_empty(), "nothing went upstream");
}

#[test]
fn images_by_url_are_fetched_for_allowed_hosts_and_redirects_followed() {
    let mock = MockUpstream::start();
    let first = big_png_like(200_000, 9);
    let second = tiny_png();
    let mask = unified_mask_png();
    let (f, s, m) = (first.clone(), second.clone(), mask.clone());
    let server = ImageServer::start(move |path| match path {
        "/first.png" => Served::Image(f.clone()),
        "/second.png" => Served::ImageUnsized(s.clone()),
        "/mask.png" => Served::Image(m.clone()),
        "/moved" => Served::Redirect("/second.png".into()),
        _ => Served::Status(404),
    });
    let gw = gateway(&mock, false, &fetching("    allow_hosts: [127.0.0.1]\n"));
    let body = json!({
        "model": "openai/gpt-image-1",
        "prompt": "p",
        "images": [{"image_url": server.url("/first.png")}, {"image_url": server.url("/moved")},
                   {"image_url": data_url(&second)}],
        "mask": {"image_url": server.url("/mask.png")},
    });
    let r = post_json(gw.addr, "/v1/images/edits", &body);
    assert_eq!(r.status, 200, "{}", r.text());
    let (images, got_mask, _) = received_files(&mock);
    assert_eq!(images.len(), 3);
    assert!(images[0] == first, "the fetched image differs");
    assert!(images[1] == second, "the image fetched through a redirect differs");
    assert!(images[2] == second, "the data URL image differs");
    assert!(got_mask.as_deref() == Some(&mask[..]), "the fetched mask differs");
    assert_eq!(server.requests(), 4);
    // An error answer from the image server is the client's 400.
    let body = json!({"model": "openai/gpt-image-1", "prompt": "p",
                      "images": [{"image_url": server.url("/missing.png")}]});
    let e = assert_error(
        &post_json(gw.addr, "/v1/images/edits", &body),
        400,
        Some("images[0].image_url"),
    );
    assert!(message(&e).contains("404"), "{e}");
}

#[test]
fn the_guard_refuses_every_address_that_is_not_public() {
    let mock = MockUpstream::start();
    let image = tiny_png();
    let served = image.clone();
    let server = ImageServer::start(move |path| match path {
        "/a.png" => Served::Image(served.clone()),
        _ => Served::Status(404),
    });
    let port = server.addr.port();
    // Enabled, nothing allowed: the loopback server itself is refused.
    let gw = gateway(&mock, false, &fetching(""));
    let edit = |url: &str| {
        let body = json!({"model": "openai/gpt-image-1", "prompt": "p", "images": [{"image_url": url}]});
        post_json(gw.addr, "/v1/images/edits", &body)
    };
    for (url, what) in [
        (format!("http://127.0.0.1:{port}/a.png"), "loopback"),
        ("http://10.1.2.3/a.png".to_string(), "private"),
        ("http://169.254.169.254/latest/meta-data/".to_string(), "link-local"),
        (format!("http://[::1]:{port}/a.png"), "loopback"),
        (format!("http://[::ffff:127.0.0.1]:{port}/a.png"), "loopback"),
        (format!("http://localhost:{port}/a.png"), "loopback"),
        ("http://100.64.0.1/a.png".to_string(), "CGNAT"),
        ("ftp://img.example/a.png".to_string(), "scheme"),
        (format!("http://user:pw@127.0.0.1:{port}/a.png"), "credentials"),
    ] {
        let e = assert_error(&edit(&url), 400, Some("images[0].image_url"));
        assert!(message(&e).contains("refused"), "{url}: {e}");
        assert!(message(&e).contains(what), "{url}: {e}");
    }
    assert_eq!(server.requests(), 0, "no refused URL was requested");
    // Allowed: 127.0.0.1 only. A redirect to another loopback name is refused at its hop.
    let to = format!("http://localhost:{port}/a.png");
    let redirecting = ImageServer::start(move |_| Served::Redirect(to.clone()));
    let gw = gateway(&mock, false, &fetching("    allow_hosts: [127.0.0.1]\n"));
    let body = json!({"model": "openai/gpt-image-1", "prompt": "p",
                      "images": [{"image_url": redirecting.url("/go")}]});
    let e = assert_error(
        &post_json(gw.addr, "/v1/images/edits", &body),
        400,
        Some("images[0].image_url"),
    );
    assert!(
        message(&e).contains("refused") && message(&e).contains("loopback"),
        "{e}"
    );
    assert_eq!(redirecting.requests(), 1);
    assert_eq!(server.requests(), 0, "the redirect's target was not requested");
    assert!(mock.requests().is_empty());
}

#[test]
fn fetches_are_bounded_in_size_time_and_redirects() {
    let mock = MockUpstream::start();
    let big = big_png_like(50_000, 4);
    let (b1, b2) = (big.clone(), big.clone());
    let server = ImageServer::start(move |path| match path {
        "/big.png" => Served::Image(b1.clone()),
        "/big-unsized.png" => Served::ImageUnsized(b2.clone()),
        "/slow.png" => Served::Stall(Duration::from_secs(5)),
        "/loop" => Served::Redirect("/loop".into()),
        _ => Served::Status(404),
    });
    let gw = gateway(
        &mock,
        false,
        &fetching("    allow_hosts: [127.0.0.1]\n    max_bytes: 10000\n    timeout_ms: 500\n    max_redirects: 2\n"),
    );
    let edit = |path: &str| {
        let body = json!({"model": "openai/gpt-image-1", "prompt": "p",
                          "images": [{"image_url": server.url(path)}]});
        post_json(gw.addr, "/v1/images/edits", &body)
    };
    // Larger than max_bytes: by Content-Length, and while reading.
    assert_error(&edit("/big.png"), 413, Some("images[0].image_url"));
    assert_error(&edit("/big-unsized.png"), 413, Some("images[0].image_url"));
    // A server that stalls: the fetch ends at timeout_ms.
    let started = Instant::now();
    let e = assert_error(&edit("/slow.png"), 400, Some("images[0].image_url"));
    assert!(message(&e).contains("within 500 ms"), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the stall was not cut short"
    );
    // A redirect loop: max_redirects.
    let before = server.requests();
    let e = assert_error(&edit("/loop"), 400, Some("images[0].image_url"));
    assert!(message(&e).contains("more than 2 redirects"), "{e}");
    assert_eq!(server.requests() - before, 3);
    assert!(mock.requests().is_empty());
}

#[test]
fn an_async_job_takes_the_json_form() {
    let mock = MockUpstream::start();
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&mock.base_url());
    setup.sections = format!(
        "store:\n  kind: embedded\n  path: {}\nobjects:\n  kind: fs\n  path: {}\njobs:\n  workers: 1\n",
        dir.path().join("db").display(),
        dir.path().join("objects").display()
    );
    let gw = Gateway::start(&setup);
    let image = big_png_like(100_000, 12);
    let body = json!({"model": "openai/gpt-image-1", "prompt": "p", "images": [{"image_url": data_url(&image)}]});
    let r = post_json(gw.addr, "/v1/async/images/edits", &body);
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().expect("id").to_string();
    let deadline = Instant::now() + Duration::from_secs(30);
    let done = loop {
        let r = Gateway::call(
            gw.addr,
            "GET",
            &format!("/v1/async/images/edits/{id}"),
            &[("x-bf-vk", VK)],
        );
        let v = r.json();
        if v["status"] == "completed" {
            break v;
        }
        assert!(matches!(v["status"].as_str(), Some("pending" | "processing")), "{v}");
        assert!(Instant::now() < deadline, "the job did not complete: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(done["result"]["data"][0]["b64_json"], "aW1hZ2UtMA==", "{done}");
    let (images, _, _) = received_files(&mock);
    assert!(
        images.len() == 1 && images[0] == image,
        "the job's image differs from the one sent"
    );
    // Submit-time errors as in the multipart form: a stream, a file_id.
    let mut streaming = body.clone();
    streaming["stream"] = json!(true);
    assert_error(
        &post_json(gw.addr, "/v1/async/images/edits", &streaming),
        400,
        Some("stream"),
    );
    let refs = json!({"model": "openai/gpt-image-1", "prompt": "p", "images": [{"file_id": "file-1"}]});
    assert_error(
        &post_json(gw.addr, "/openai/v1/async/images/edits", &refs),
        400,
        Some("images[0]"),
    );
}

/// JSON bodies are read whole: together they hold at most `limits.json_body_memory_bytes`.
/// While one client holds most of it (its body half sent), another body that would pass it is
/// a 503 `body_memory_busy` with `Retry-After`, and nothing reaches the provider; once the
/// first client is gone its share is free again and the same body is served.
#[test]
fn json_bodies_share_one_memory_budget() {
    let mock = MockUpstream::start();
    mock.always(Reply::json(200, &default_success()));
    let gw = gateway(
        &mock,
        false,
        "  max_body_bytes: 1048576\n  max_part_bytes: 1048576\n  json_body_memory_bytes: 1048576\n",
    );
    // The first client declares 1,000,000 bytes and sends 700,000 of them.
    let mut holder = Conn::open(gw.addr);
    holder.send(
        format!(
            "POST /v1/images/edits HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: application/json\r\nContent-Length: 1000000\r\nx-bf-vk: {VK}\r\n\r\n"
        )
        .as_bytes(),
    );
    let image = big_png_like(400_000, 5);
    let body = json!({"model": "openai/gpt-image-1", "prompt": "p", "images": [{"image_url": data_url(&image)}]});
    let body_len = body.to_string().len();
    assert!(body_len > 500_000 && body_len < 1_000_000, "{body_len}");
    holder.send(&vec![b' '; 700_000]);
    // The gateway reads what arrived (no answer can come before the body's end).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post_json(gw.addr, "/v1/images/edits", &body);
        if r.status == 503 {
            let answer = assert_error(&r, 503, None);
            assert_eq!(answer["error"]["code"], "body_memory_busy", "{answer}");
            assert_eq!(r.header("retry-after").as_deref(), Some("1"));
            break;
        }
        // The holder's bytes may not all be read yet: then the second body fits and is served.
        assert_eq!(r.status, 200, "{}", r.text());
        assert!(Instant::now() < deadline, "the second body was never refused");
        std::thread::sleep(Duration::from_millis(50));
    }
    let served_before = mock.requests().len();
    drop(holder);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = post_json(gw.addr, "/v1/images/edits", &body);
        if r.status == 200 {
            break;
        }
        assert_eq!(r.status, 503, "{}", r.text());
        assert!(Instant::now() < deadline, "the holder's share was never released");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(mock.requests().len(), served_before + 1);
    assert!(gw.metric_settled(r#"refract_rejected_requests_total{reason="body_memory_busy"}"#) >= 1.0);
}
