//! Pricing end to end: every delivered answer reports its cost (`extra_fields.cost`, the access
//! log's `cost_usd=`, `refract_cost_usd_total`, `refract_images_total`); a model no entry matches
//! is priced by `pricing.default` and counted in `refract_unpriced_answers_total`; failures
//! cost nothing; a fallback's answer is priced at the serving candidate's model; a stream's
//! images are counted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::*;
use serde_json::json;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Operator entries before the shipped table, and the default for unknown models.
const PRICING: &str = "pricing:\n  default: 0.5\n  models:\n    - match: \"house-*\"\n      per_image: 0.03\n";

fn gateway(upstream: &MockUpstream, simulator: bool) -> Gateway {
    let mut setup = Setup::new(&upstream.base_url());
    setup.sections = PRICING.to_string();
    setup.simulator = simulator;
    Gateway::start(&setup)
}

fn form(model: &str) -> Form {
    Form::new()
        .text("model", model)
        .text("prompt", "make it blue")
        .file("image", "in.png", "image/png", &tiny_png())
}

fn cost_metric(gw: &Gateway, provider: &str) -> f64 {
    gw.metric_settled(&format!("refract_cost_usd_total{{provider=\"{provider}\"}}"))
}

fn images_metric(gw: &Gateway, provider: &str, model: &str) -> f64 {
    gw.metric_settled(&format!(
        "refract_images_total{{model=\"{model}\",provider=\"{provider}\"}}"
    ))
}

fn unpriced_metric(gw: &Gateway, provider: &str) -> f64 {
    gw.metric_settled(&format!("refract_unpriced_answers_total{{provider=\"{provider}\"}}"))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-9
}

#[test]
fn answers_report_their_cost_by_every_price_form() {
    let mock = MockUpstream::start();
    mock.always(Reply::json(200, &default_success()));
    let gw = gateway(&mock, false);

    // gpt-image-1 with usage (10 input tokens, no details: image rate $10/1M; 20 output tokens
    // at $40/1M): $0.0001 + $0.0008.
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains("\"cost\":0.0009"), "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "openai");

    // dall-e-2 by size, × n (the shipped table).
    let f = form("openai/dall-e-2").text("n", "2").text("size", "512x512");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["cost"], json!(0.036), "{}", r.text());

    // The operator's entry, flat per image.
    let r = gw.edit(&form("openai/house-model").text("n", "3"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["cost"], json!(0.09), "{}", r.text());
    assert_eq!(unpriced_metric(&gw, "openai"), 0.0);

    // An unknown model: the default, counted as unpriced.
    let r = gw.edit(&form("openai/mystery-model"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["cost"], json!(0.5), "{}", r.text());
    assert_eq!(unpriced_metric(&gw, "openai"), 1.0);

    assert!(close(cost_metric(&gw, "openai"), 0.0009 + 0.036 + 0.09 + 0.5));
    assert_eq!(images_metric(&gw, "openai", "gpt-image-1"), 1.0);
    assert_eq!(images_metric(&gw, "openai", "dall-e-2"), 2.0);
    assert_eq!(images_metric(&gw, "openai", "house-model"), 3.0);

    // A failed call costs nothing.
    mock.push(Reply::json(
        400,
        &json!({"error": {"message": "no", "type": "invalid_request_error"}}),
    ));
    let before = cost_metric(&gw, "openai");
    let r = gw.edit(&form("openai/house-model"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.json()["extra_fields"].get("cost").is_none(), "{}", r.text());
    assert_eq!(cost_metric(&gw, "openai"), before);
    assert_eq!(images_metric(&gw, "openai", "house-model"), 3.0);
}

#[test]
fn a_fallback_is_priced_at_the_serving_candidates_model() {
    let mock = MockUpstream::start();
    mock.respond_with(|r| {
        if r.header("authorization").as_deref() == Some(&format!("Bearer {PROVIDER_KEY}")) {
            Reply::json(503, &json!({"error": {"message": "down", "type": "server_error"}}))
        } else {
            Reply::json(200, &default_success())
        }
    });
    let gw = gateway(&mock, false);
    let f = form("openai/house-model")
        .text("fallbacks", "other/dall-e-2")
        .text("size", "1024x1024");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["extra_fields"]["provider"], "other", "{v}");
    assert_eq!(v["extra_fields"]["fallback_index"], 1, "{v}");
    assert_eq!(v["extra_fields"]["cost"], json!(0.02), "{v}");
    assert!(close(cost_metric(&gw, "other"), 0.02));
    assert_eq!(cost_metric(&gw, "openai"), 0.0, "the failed primary cost nothing");
    assert_eq!(images_metric(&gw, "other", "dall-e-2"), 1.0);
}

#[test]
fn a_streams_images_are_counted() {
    let mock = MockUpstream::start();
    let gw = gateway(&mock, true);
    let f = Form::new()
        .text("model", "demo/sim-image-1")
        .text("prompt", "stream it")
        .text("n", "2")
        .text("stream", "true")
        .text("partial_images", "1")
        .file(
            "image",
            "in.png",
            "image/png",
            &refract::imaging::encode_png(&refract::imaging::Rgba {
                width: 2,
                height: 2,
                pixels: vec![200; 16],
            })
            .unwrap(),
        );
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
    wait_until("the stream is accounted", || {
        images_metric(&gw, "demo", "sim-image-1") == 2.0
    });
    // The simulator's model is not in the table: the default per image, counted as unpriced.
    assert!(close(cost_metric(&gw, "demo"), 1.0));
    assert_eq!(unpriced_metric(&gw, "demo"), 1.0);
}

/// The access log line says `cost_usd=` (the `refract` binary, its log read).
#[test]
fn the_access_log_has_the_cost() {
    let mock = MockUpstream::start();
    mock.always(Reply::json(200, &default_success()));
    let (listen, metrics) = (free_addr(), free_addr());
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        "listeners:\n  - address: {listen}\nmetrics:\n  address: {metrics}\n{PRICING}providers:\n  - name: openai\n    kind: openai\n    base_url: {}\n    keys:\n      - {{name: primary, value: {PROVIDER_KEY}}}\nvirtual_keys:\n  - id: team-a\n    key: {VK}\n",
        mock.base_url()
    );
    let path = dir.path().join("refract.yaml");
    std::fs::write(&path, yaml).unwrap();
    let (mut child, log) = spawn_logging(
        Command::new(env!("CARGO_BIN_EXE_refract"))
            .args(["-c", path.to_str().unwrap()])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null()),
    );
    wait_listening(listen);
    let mut c = Conn::open(listen);
    let f = form("openai/house-model").text("n", "2");
    c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &f, None));
    c.send(&f.body());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let deadline = Instant::now() + Duration::from_secs(10);
    let line = loop {
        let text = log.lock().unwrap().clone();
        if let Some(line) = text.lines().find(|l| l.contains("route=/v1/images/edits")) {
            break line.to_string();
        }
        assert!(Instant::now() < deadline, "no access log line:\n{text}");
        std::thread::sleep(Duration::from_millis(20));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(line.ends_with(" cost_usd=0.06"), "{line}");
}
