//! The asynchronous kinds (`bfl`, `fireworks`, `replicate`) end to end: a real gateway and a
//! strict mock upstream per provider that makes the gateway poll (Pending, Pending, Ready) and
//! serves the result image itself; URL output, synthesized streams, moderation, the poll
//! deadline, the SSRF guard; and one request per kind through the built-in simulator.
//! The cases every kind shares (basic edit, two images, mask, a refused capability, stream,
//! upstream error, fallback) are stamped on them in `tests/conformance`; this file keeps what is
//! specific to their wires.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::*;
use refract::imaging::{decode_png, encode_png, simulate_edit, solid};
use serde_json::{json, Value};

fn unb64(v: &Value) -> Vec<u8> {
    let s = v.as_str().unwrap_or_else(|| panic!("not a string: {v}"));
    let s = s.split_once(";base64,").map_or(s, |(_, b)| b);
    base64::engine::general_purpose::STANDARD.decode(s).unwrap()
}

/// The image the mock serves as the result.
fn result_png() -> Vec<u8> {
    encode_png(&solid(3, 2, [10, 200, 30, 255])).unwrap()
}

fn providers(base: &str, extra: &str) -> String {
    format!(
        "  - name: bfl\n    kind: bfl\n    base_url: {base}\n    poll_interval_ms: 20\n{extra}    keys:\n      - {{name: k, value: bfl-SECRET}}\n\
         \x20 - name: fw\n    kind: fireworks\n    base_url: {base}\n    poll_interval_ms: 20\n{extra}    keys:\n      - {{name: k, value: fw-SECRET}}\n\
         \x20 - name: rep\n    kind: replicate\n    base_url: {base}\n    poll_interval_ms: 20\n{extra}    keys:\n      - {{name: k, value: r8-SECRET}}\n"
    )
}

fn gateway(mock: &MockUpstream, extra: &str) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.extra_providers = providers(&mock.base_url(), extra);
    Gateway::start(&setup)
}

fn edit_form(model: &str) -> Form {
    Form::new()
        .text("model", model)
        .text("prompt", "make it green")
        .text("seed", "42")
        .file("image", "in.png", "image/png", &tiny_png())
}

fn image_reply(png: &[u8]) -> Reply {
    Reply::raw(200, "image/png", png)
}

/// Scripts a BFL job: submit, Pending ×2, Ready, the image.
fn script_bfl(mock: &MockUpstream) -> String {
    let base = mock.base_url();
    let sample = format!("{base}/results/j1.png?sig=abc");
    mock.push(Reply::json(
        200,
        &json!({"id": "j1", "polling_url": format!("{base}/get_result?id=j1")}),
    ));
    mock.push(Reply::json(
        200,
        &json!({"id": "j1", "status": "Pending", "result": null}),
    ));
    mock.push(Reply::json(
        200,
        &json!({"id": "j1", "status": "Pending", "result": null}),
    ));
    mock.push(Reply::json(
        200,
        &json!({"id": "j1", "status": "Ready", "result": {"sample": sample, "seed": 42}}),
    ));
    mock.push(image_reply(&result_png()));
    sample
}

#[test]
fn bfl_submits_polls_twice_and_downloads_the_sample() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, "");
    script_bfl(&mock);
    let r = gw.edit(&edit_form("bfl/flux-kontext-pro"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(unb64(&v["data"][0]["b64_json"]), result_png());
    assert_eq!(v["extra_fields"]["provider"], "bfl");
    let reqs = mock.requests();
    assert_eq!(reqs.len(), 5, "{reqs:?}");
    let submit = &reqs[0];
    assert_eq!(
        (submit.method.as_str(), submit.path.as_str()),
        ("POST", "/v1/flux-kontext-pro")
    );
    assert_eq!(submit.header("x-key").as_deref(), Some("bfl-SECRET"));
    assert_eq!(submit.header("authorization"), None);
    let body: Value = serde_json::from_slice(&submit.body).unwrap();
    assert_eq!(unb64(&body["input_image"]), tiny_png());
    assert_eq!(
        (body["prompt"].clone(), body["seed"].clone()),
        (json!("make it green"), json!(42))
    );
    for poll in &reqs[1..4] {
        assert_eq!(
            (poll.method.as_str(), poll.path.as_str()),
            ("GET", "/v1/get_result?id=j1")
        );
        assert_eq!(poll.header("x-key").as_deref(), Some("bfl-SECRET"));
    }
    assert_eq!(
        (reqs[4].method.as_str(), reqs[4].path.as_str()),
        ("GET", "/v1/results/j1.png?sig=abc")
    );
    assert_eq!(reqs[4].header("x-key"), None, "the key never goes to the result URL");
}

#[test]
fn bfl_url_output_and_synthesized_stream() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, "");
    let sample = script_bfl(&mock);
    let r = gw.edit(
        &edit_form("bfl/flux-kontext-pro").text("response_format", "url"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["url"], sample.as_str());
    assert_eq!(mock.requests().len(), 4, "no download for URL output");
    // The unused image reply is still queued: consume it so the next script starts clean.
    let _ = Gateway::get(mock.addr, "/v1/drain");

    script_bfl(&mock);
    let r = gw.edit(
        &edit_form("bfl/flux-kontext-pro").text("stream", "true"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.header("content-type").unwrap().starts_with("text/event-stream"));
    let completed = completed_events(&r.body);
    assert_eq!(completed.len(), 1, "{}", r.text());
    assert_eq!(unb64(&completed[0]["b64_json"]), result_png());
}

/// A PNG that says which seed it answers.
fn seed_png(seed: u64) -> Vec<u8> {
    encode_png(&solid(2, 2, [(seed % 251) as u8, 5, 9, 255])).unwrap()
}

/// A BFL and Fireworks double whose jobs are named after their seed: submit `{"seed":S}` →
/// job `jS`, its poll → Ready with sample `…/results/jS.png`, the sample → [`seed_png`]`(S)`.
/// Stateless, so calls in flight together get their own answers.
fn respond_by_seed(mock: &MockUpstream) {
    let base = mock.base_url();
    mock.respond_with(move |rec| {
        let job = |rec: &Recorded| -> String {
            let body: Value = serde_json::from_slice(&rec.body).unwrap();
            match body.get("seed") {
                Some(seed) => format!("j{seed}"),
                None => body["id"].as_str().unwrap().to_string(),
            }
        };
        let ready = |job: &str| json!({"id": job, "status": "Ready", "result": {"sample": format!("{base}/results/{job}.png")}});
        match (rec.method.as_str(), rec.path.as_str()) {
            ("POST", "/v1/flux-kontext-pro") => {
                let job = job(rec);
                Reply::json(200, &json!({"id": job, "polling_url": format!("{base}/get_result?id={job}")}))
            }
            ("POST", "/v1/workflows/accounts/fireworks/models/flux-kontext-pro") => {
                Reply::json(200, &json!({"request_id": job(rec)}))
            }
            ("POST", "/v1/workflows/accounts/fireworks/models/flux-kontext-pro/get_result") => {
                Reply::json(200, &ready(&job(rec)))
            }
            ("GET", path) if path.starts_with("/v1/get_result?id=") => {
                Reply::json(200, &ready(path.trim_start_matches("/v1/get_result?id=")))
            }
            ("GET", path) if path.starts_with("/v1/results/j") => {
                let seed = path.trim_start_matches("/v1/results/j").trim_end_matches(".png");
                image_reply(&seed_png(seed.parse().unwrap()))
            }
            other => Reply::json(404, &json!({"detail": format!("unexpected {other:?}")})),
        }
    });
}

/// n > 1 on FLUX (BFL, Fireworks): n jobs of one image, job i with seed + i, each submitted,
/// polled and downloaded; the images in job order.
#[test]
fn flux_n_is_served_by_n_jobs_with_seeds_seed_plus_i() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, "");
    respond_by_seed(&mock);
    for (model, submit) in [
        ("bfl/flux-kontext-pro", "/v1/flux-kontext-pro"),
        (
            "fw/flux-kontext-pro",
            "/v1/workflows/accounts/fireworks/models/flux-kontext-pro",
        ),
    ] {
        let before = mock.requests().len();
        let r = gw.edit(&edit_form(model).text("n", "3"), &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let v = r.json();
        let data = v["data"].as_array().unwrap();
        assert_eq!(data.len(), 3, "{model}: {v}");
        for (i, d) in data.iter().enumerate() {
            assert_eq!(d["index"], i);
            assert_eq!(unb64(&d["b64_json"]), seed_png(42 + i as u64), "{model}: image {i}");
        }
        let requests = &mock.requests()[before..];
        assert_eq!(requests.len(), 9, "{model}: submit, poll, download per job");
        let mut seeds: Vec<i64> = requests
            .iter()
            .filter(|r| r.path == submit)
            .map(|r| {
                let body: Value = serde_json::from_slice(&r.body).unwrap();
                assert_eq!(unb64(&body["input_image"]), tiny_png());
                assert!(body.get("n").is_none() && body.get("num_images").is_none());
                body["seed"].as_i64().unwrap()
            })
            .collect();
        seeds.sort_unstable();
        assert_eq!(seeds, [42, 43, 44], "{model}");
    }
}

#[test]
fn moderation_is_400_and_failures_502() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, "");
    mock.push(Reply::json(
        200,
        &json!({"id": "j", "polling_url": format!("{}/get_result?id=j", mock.base_url())}),
    ));
    mock.push(Reply::json(200, &json!({"id": "j", "status": "Content Moderated"})));
    let r = gw.edit(&edit_form("bfl/flux-kontext-pro"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "moderation_blocked");
    mock.push(Reply::json(
        201,
        &json!({"id": "p", "status": "failed", "error": "NSFW content detected"}),
    ));
    let r = gw.edit(&edit_form("rep/a/b"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    mock.push(Reply::json(402, &json!({"detail": "Insufficient credits"})));
    let r = gw.edit(&edit_form("bfl/flux-kontext-pro"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 402, "{}", r.text());
    assert_eq!(r.json()["error"]["message"], "Insufficient credits");
    assert!(!r.text().contains("bfl-SECRET"));
}

#[test]
fn a_job_that_never_finishes_is_504_after_poll_timeout() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, "    poll_timeout_ms: 300\n");
    mock.push(Reply::json(200, &json!({"request_id": "slow"})));
    for _ in 0..100 {
        mock.push(Reply::json(200, &json!({"id": "slow", "status": "Pending"})));
    }
    let started = std::time::Instant::now();
    let r = gw.edit(&edit_form("fw/flux-kontext-pro"), &[("x-bf-vk", VK)]);
    let v = assert_gateway_error(&r, 504, "upstream_timeout", "upstream_error", None);
    assert!(v["error"]["message"].as_str().unwrap().contains("fw"), "{v}");
    assert!(started.elapsed() < std::time::Duration::from_secs(5));
    assert!(mock.requests().len() >= 3, "it polled before giving up");
}

#[test]
fn a_polling_url_on_another_host_is_refused_unfollowed() {
    let mock = MockUpstream::start();
    let other = MockUpstream::start();
    let gw = gateway(&mock, "");
    mock.push(Reply::json(
        200,
        &json!({"id": "j", "polling_url": format!("{}/get_result?id=j", other.base_url())}),
    ));
    let r = gw.edit(&edit_form("bfl/flux-kontext-pro"), &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 502, "upstream_protocol_error", "upstream_error", None);
    assert_eq!(other.requests().len(), 0, "no request to the disallowed host");
    assert_eq!(mock.requests().len(), 1);
}

#[test]
fn each_kind_through_the_simulator() {
    let mut setup = Setup::new("http://127.0.0.1:9/v1");
    setup.simulator = true;
    setup.extra_providers = "  - name: sbfl\n    kind: bfl\n    base_url: http://{sim}/v1\n    poll_interval_ms: 10\n    keys:\n      - {name: k, value: x}\n\
        \x20 - name: sfw\n    kind: fireworks\n    base_url: http://{sim}/inference/v1\n    poll_interval_ms: 10\n    keys:\n      - {name: k, value: x}\n\
        \x20 - name: srep\n    kind: replicate\n    base_url: http://{sim}/v1\n    poll_interval_ms: 10\n    keys:\n      - {name: k, value: x}\n"
        .to_string();
    let gw = Gateway::start(&setup);
    let input = refract::imaging::decode_png(&tiny_png()).unwrap();
    let want = simulate_edit(&input, None, "make it green", 0).unwrap();
    for model in [
        "sbfl/flux-kontext-pro",
        "sfw/flux-kontext-pro",
        "srep/black-forest-labs/flux-kontext-pro",
    ] {
        let r = gw.edit(&edit_form(model), &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{model}: {}", r.text());
        let png = decode_png(&unb64(&r.json()["data"][0]["b64_json"])).unwrap();
        assert_eq!(png.pixels, want.pixels, "{model}");
    }
    // Moderation through the simulator.
    let form = Form::new()
        .text("model", "sbfl/flux-kontext-pro")
        .text("prompt", "simulate-moderated")
        .file("image", "in.png", "image/png", &tiny_png());
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "moderation_blocked");
}
