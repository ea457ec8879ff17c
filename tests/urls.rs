//! `response_format=url` through the gateway with a directory objects store: the signed file
//! route (`GET`/`HEAD /v1/images/files/{name}?expires=…&sig=…`) and every way a URL is refused
//! before the store is read; `objects.default_response_format`, `objects.public_url` and
//! `providers[].rehost_urls`. Every provider kind's URL answer is in the conformance suite
//! (`url_answer`); the S3 presigned case is in tests/state.rs (it needs moto).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::wire::{result_png, unb64};
use common::*;
use refract::state::urls::ImageName;
use refract::state::UrlSigner;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::path::Path;

/// A gateway whose `openai` provider is `mock`, with objects in `dir` (`more` adds lines to
/// the `objects` section) and `provider` lines for both providers.
fn gateway(mock: &MockUpstream, dir: &Path, more: &str, provider: &str) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.sections = format!("objects:\n  kind: fs\n  path: {}\n{more}", dir.display());
    setup.provider_settings.push_str(provider);
    Gateway::start(&setup)
}

/// An OpenAI answer with one PNG, `image`.
fn png_answer(image: &[u8]) -> Value {
    use base64::Engine;
    json!({
        "created": 1_713_833_628,
        "data": [{"b64_json": base64::engine::general_purpose::STANDARD.encode(image), "revised_prompt": "r"}],
        "usage": {"input_tokens": 1, "output_tokens": 2, "total_tokens": 3}
    })
}

/// The `response_format` the provider was asked for, in the mock's only request.
fn asked_format(mock: &MockUpstream) -> Option<String> {
    let rec = mock.only_request();
    let parts = rec.parts();
    parts_named(&parts, "response_format")
        .first()
        .map(|p| String::from_utf8_lossy(&p.data).into_owned())
}

/// The path and query of a gateway file URL (checked to be one, on the request's host).
fn file_target(url: &str) -> &str {
    url.strip_prefix("http://gateway.test")
        .filter(|t| t.starts_with("/v1/images/files/"))
        .unwrap_or_else(|| panic!("{url} is not a gateway file URL"))
}

/// The `(name, expires, sig)` of a file target.
fn parts_of(target: &str) -> (String, u64, String) {
    let (path, query) = target.split_once('?').unwrap();
    let name = path.strip_prefix("/v1/images/files/").unwrap().to_string();
    let mut expires = 0;
    let mut sig = String::new();
    for pair in query.split('&') {
        match pair.split_once('=').unwrap() {
            ("expires", v) => expires = v.parse().unwrap(),
            ("sig", v) => sig = v.to_string(),
            _ => {}
        }
    }
    (name, expires, sig)
}

/// `HEAD target`: the status line and headers, and whatever followed them before the close.
fn head(gw: &Gateway, target: &str) -> (String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(gw.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    write!(
        s,
        "HEAD {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let end = all.windows(4).position(|w| w == b"\r\n\r\n").expect("a head") + 4;
    (String::from_utf8_lossy(&all[..end]).into_owned(), all[end..].to_vec())
}

fn url_edit(gw: &Gateway, format: Option<&str>) -> Response {
    let mut form = valid_form();
    if let Some(f) = format {
        form = form.text("response_format", f);
    }
    gw.edit(&form, &[("x-bf-vk", VK)])
}

#[test]
fn signed_file_urls_serve_the_image_and_refuse_anything_else_before_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start();
    let image = result_png(3);
    mock.always(Reply::json(200, &png_answer(&image)));
    let gw = gateway(&mock, dir.path(), "  url_ttl: 600\n", "");
    let r = url_edit(&gw, Some("url"));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let item = &v["data"][0];
    assert!(item.get("b64_json").is_none(), "{v}");
    assert_eq!(item["revised_prompt"], "r", "the other members are kept: {v}");
    assert_eq!(v["usage"]["total_tokens"], 3, "{v}");
    assert_eq!(v["extra_fields"]["provider"], "openai", "{v}");
    let target = file_target(item["url"].as_str().unwrap()).to_string();
    let (name, expires, sig) = parts_of(&target);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(
        (now + 590..=now + 601).contains(&expires),
        "url_ttl: {expires} vs {now}"
    );

    // The file, with its type, length and cache lifetime; HEAD the same head without a body.
    let file = Gateway::get(gw.addr, &target);
    assert_eq!(file.status, 200, "{}", file.text());
    assert!(file.body == image, "the stored image differs");
    assert_eq!(file.header("content-type").as_deref(), Some("image/png"));
    assert_eq!(file.header("content-length"), Some(image.len().to_string()));
    let cache = file.header("cache-control").unwrap();
    let max_age: u64 = cache.strip_prefix("private, max-age=").unwrap().parse().unwrap();
    assert!((1..=600).contains(&max_age), "{cache}");
    let (head_text, head_body) = head(&gw, &target);
    assert!(head_text.starts_with("HTTP/1.1 200"), "{head_text}");
    assert!(
        head_text
            .to_ascii_lowercase()
            .contains(&format!("content-length: {}\r\n", image.len())),
        "{head_text}"
    );
    assert!(head_body.is_empty(), "HEAD sent a body");

    // The same stored file, with anything of its URL wrong: a 403 (so the check comes before
    // the store, which has the file).
    let secret = std::fs::read(dir.path().join(".url-secret")).unwrap();
    let signer = UrlSigner::new(&secret);
    let other = ImageName::new(expires, "png").unwrap().as_url_name();
    let flipped: String = sig
        .chars()
        .enumerate()
        .map(|(i, c)| {
            if i == 0 {
                if c == '0' {
                    '1'
                } else {
                    '0'
                }
            } else {
                c
            }
        })
        .collect();
    let refused = [
        format!("/v1/images/files/{name}?expires={expires}&sig={flipped}"),
        format!("/v1/images/files/{name}?expires={}&sig={sig}", expires + 1),
        format!("/v1/images/files/{other}?expires={expires}&sig={sig}"),
        format!("/v1/images/files/{name}?expires={expires}"),
        format!("/v1/images/files/{name}"),
        format!("/v1/images/files/{name}?sig={sig}"),
        // Expired: signed with the gateway's own secret, in the past.
        format!(
            "/v1/images/files/{name}?expires={}&sig={}",
            now - 10,
            signer.sign(&name, now - 10)
        ),
        // Names that look like a way out of the store.
        format!("/v1/images/files/..%2F.url-secret?expires={expires}&sig={sig}"),
        format!("/v1/images/files/../../../etc/passwd?expires={expires}&sig={sig}"),
        format!("/v1/images/files/%2e%2e/{name}?expires={expires}&sig={sig}"),
    ];
    for target in &refused {
        let r = Gateway::get(gw.addr, target);
        assert_eq!(r.status, 403, "{target}: {}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "file_url_refused", "{target}: {v}");
        assert_eq!(v["is_bifrost_error"], true, "{v}");
        assert!(r.header("cache-control").is_none(), "{target}");
    }
    let expired = Gateway::get(gw.addr, &refused[6]).json();
    assert!(
        expired["error"]["message"].as_str().unwrap().contains("expired"),
        "{expired}"
    );
    // Signed right, but never stored (or removed): 404. A traversal name the gateway never
    // makes, even signed with the secret: 404, not a file outside the store.
    let unknown = ImageName::new(expires, "png").unwrap().as_url_name();
    let r = Gateway::get(
        gw.addr,
        &format!(
            "/v1/images/files/{unknown}?expires={expires}&sig={}",
            signer.sign(&unknown, expires)
        ),
    );
    assert_eq!(r.status, 404, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "file_not_found");
    let secret_name = "1-x.png/../../.url-secret";
    let r = Gateway::get(
        gw.addr,
        &format!(
            "/v1/images/files/{secret_name}?expires={expires}&sig={}",
            signer.sign(secret_name, expires)
        ),
    );
    assert_ne!(r.status, 200, "{}", r.text());
    assert!(r.body != secret, "the secret was served");
    // No virtual key was needed, and other methods are refused.
    let mut c = gw.connect();
    c.send(format!("DELETE {target} HTTP/1.1\r\nHost: gateway.test\r\nContent-Length: 0\r\n\r\n").as_bytes());
    let r = c.read_response();
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow").as_deref(), Some("GET, HEAD"));

    assert_eq!(gw.metric(r#"refract_files_served_total{status="200"}"#), 2.0);
    assert_eq!(
        gw.metric(r#"refract_files_served_total{status="403"}"#),
        (refused.len() + 1) as f64
    );
    assert!(gw.metric(r#"refract_files_served_total{status="404"}"#) >= 1.0);
    assert_eq!(
        gw.metric(r#"refract_objects_stored_bytes_total{kind="image"}"#),
        image.len() as f64
    );
}

#[test]
fn the_default_format_key_makes_urls_the_default() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start();
    let image = result_png(1);
    mock.always(Reply::json(200, &png_answer(&image)));
    let gw = gateway(
        &mock,
        dir.path(),
        "  default_response_format: url\n  public_url: 'https://img.example.com/gw/'\n",
        "",
    );
    // Omitted: a URL under public_url; the provider was not asked for one.
    let r = url_edit(&gw, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let url = r.json()["data"][0]["url"].as_str().unwrap().to_string();
    let target = url
        .strip_prefix("https://img.example.com/gw")
        .unwrap_or_else(|| panic!("{url}"));
    assert!(target.starts_with("/v1/images/files/"), "{url}");
    assert_eq!(asked_format(&mock), None);
    assert!(Gateway::get(gw.addr, target).body == image);
    // Asked for base64: base64.
    let r = url_edit(&gw, Some("b64_json"));
    let v = r.json();
    assert!(unb64(v["data"][0]["b64_json"].as_str().unwrap()) == image, "{v}");
    assert!(v["data"][0].get("url").is_none(), "{v}");

    // Without the key, omitting response_format keeps today's answer.
    let dir = tempfile::tempdir().unwrap();
    let plain = gateway(&mock, dir.path(), "", "");
    let v = url_edit(&plain, None).json();
    assert!(v["data"][0]["b64_json"].is_string(), "{v}");
}

#[test]
fn a_provider_url_is_kept_unless_the_provider_rehosts() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start();
    let image = result_png(2);
    mock.respond_with(move |rec| {
        let asked = parts_named(&rec.parts(), "response_format")
            .first()
            .map(|p| p.data.clone());
        if asked.as_deref() == Some(b"url".as_slice()) {
            Reply::json(
                200,
                &json!({"created": 1, "data": [{"url": "https://cdn.provider.example/x.png"}]}),
            )
        } else {
            Reply::json(200, &png_answer(&image))
        }
    });
    // The provider answers URLs of its own: kept as they are.
    let gw = gateway(&mock, dir.path(), "", "");
    let v = url_edit(&gw, Some("url")).json();
    assert_eq!(v["data"][0]["url"], "https://cdn.provider.example/x.png", "{v}");
    assert_eq!(asked_format(&mock).as_deref(), Some("url"));
    assert_eq!(gw.metric(r#"refract_objects_stored_bytes_total{kind="image"}"#), 0.0);
    drop(gw);

    // rehost_urls: asked for base64, answered with the gateway's URL.
    let mock2 = MockUpstream::start();
    let image2 = result_png(2);
    mock2.always(Reply::json(200, &png_answer(&image2)));
    let gw = gateway(&mock2, dir.path(), "", "    rehost_urls: true\n");
    let v = url_edit(&gw, Some("url")).json();
    assert_eq!(asked_format(&mock2).as_deref(), Some("b64_json"));
    let target = file_target(v["data"][0]["url"].as_str().unwrap()).to_string();
    assert!(Gateway::get(gw.addr, &target).body == image2);
}

#[test]
fn a_stream_is_never_rehosted() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start();
    let gw = gateway(&mock, dir.path(), "  default_response_format: url\n", "");
    // A stream with the default: nothing stored, nothing asked of the store.
    mock.always(Reply::json(200, &png_answer(&result_png(0))));
    let r = gw.edit(&valid_form().text("stream", "true"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(!r.text().contains("/v1/images/files/"), "{}", r.text());
    assert_eq!(gw.metric(r#"refract_objects_stored_bytes_total{kind="image"}"#), 0.0);
}

#[test]
fn a_streamed_upload_to_a_rehosting_provider_asks_for_base64() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start();
    let image = result_png(4);
    mock.always(Reply::json(200, &png_answer(&image)));
    let gw = gateway(&mock, dir.path(), "", "    rehost_urls: true\n");
    // `model` first and a large upload: the upstream request starts while the client sends,
    // `response_format` is rewritten on the way (before and after the image).
    for (before, after) in [(true, false), (false, true)] {
        let mut form = Form::new().text("model", "openai/gpt-image-1").text("prompt", "p");
        if before {
            form = form.text("response_format", "url");
        }
        form = form.file("image", "big.png", "image/png", &big_png_like(400_000, 7));
        if after {
            form = form.text("response_format", "url");
        }
        let r = gw.edit(&form, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{}", r.text());
        let rec = mock.requests().pop().unwrap();
        assert_eq!(rec.header("transfer-encoding").as_deref(), Some("chunked"), "streamed");
        let parts = rec.parts();
        let asked: Vec<_> = parts_named(&parts, "response_format")
            .iter()
            .map(|p| p.data.clone())
            .collect();
        assert_eq!(asked, vec![b"b64_json".to_vec()]);
        let target = file_target(r.json()["data"][0]["url"].as_str().unwrap()).to_string();
        assert!(Gateway::get(gw.addr, &target).body == image);
    }
}

#[test]
fn the_cleaner_removes_images_whose_bucket_has_ended() {
    let dir = tempfile::tempdir().unwrap();
    // An image whose URL expired in the first hour of 1970, and one of a bucket far ahead.
    let old = dir.path().join("images/1/old.png");
    let later = dir.path().join("images/99999999/later.png");
    for f in [&old, &later] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, result_png(0)).unwrap();
    }
    let mock = MockUpstream::start();
    let mut setup = Setup::new(&mock.base_url());
    setup.sections = format!(
        "objects:\n  kind: fs\n  path: {}\njobs:\n  cleanup_interval_ms: 100\n",
        dir.path().display()
    );
    let _gw = Gateway::start(&setup);
    // The file goes first, then its emptied bucket directory.
    wait_until("the expired image and its bucket directory are removed", || {
        !old.exists() && !dir.path().join("images/1").exists()
    });
    assert!(later.exists(), "a bucket still running stays");
}

#[test]
fn an_async_job_answers_urls_with_the_origin_of_its_submission() {
    let dir = tempfile::tempdir().unwrap();
    let mock = MockUpstream::start();
    let image = result_png(5);
    mock.always(Reply::json(200, &png_answer(&image)));
    let gw = gateway(&mock, dir.path(), "", "    rehost_urls: true\n");
    let form = valid_form().text("response_format", "url");
    let mut c = gw.connect();
    c.send(&post_head("/v1/async/images/edits", &[("x-bf-vk", VK)], &form, None));
    c.send(&form.body());
    let r = c.read_response();
    assert_eq!(r.status, 202, "{}", r.text());
    let id = r.json()["id"].as_str().unwrap().to_string();
    let mut done = None;
    wait_until("the job completes", || {
        let mut c = gw.connect();
        c.send(
            format!("GET /v1/async/images/edits/{id} HTTP/1.1\r\nHost: gateway.test\r\nx-bf-vk: {VK}\r\n\r\n")
                .as_bytes(),
        );
        let r = c.read_response();
        if r.status == 200 {
            done = Some(r.json());
        }
        r.status != 202
    });
    let v = done.expect("a completed job");
    assert_eq!(v["status"], "completed", "{v}");
    let item = &v["result"]["data"][0];
    assert!(item.get("b64_json").is_none(), "{v}");
    let target = file_target(item["url"].as_str().unwrap()).to_string();
    let file = Gateway::get(gw.addr, &target);
    assert_eq!(file.status, 200, "{}", file.text());
    assert!(file.body == image);
    assert_eq!(asked_format(&mock).as_deref(), Some("b64_json"));
}
