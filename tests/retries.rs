//! Retries, key rotation and the circuit breaker end to end: a real gateway whose provider
//! `r` (kind openai, `retries`, `retry_backoff_ms: 1`, two keys, a circuit breaker) points at a
//! scripted mock.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const KEY_ONE: &str = "sk-retry-key-one";
const KEY_TWO: &str = "sk-retry-key-two";

/// A gateway with provider `r` at `mock`: `retries`, the given keys (`name: value` pairs, equal
/// weights), and `breaker` (a `circuit_breaker` flow mapping, or empty).
fn gateway(mock: &MockUpstream, retries: u32, keys: &[(&str, &str)], breaker: &str) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    let keys: String = keys
        .iter()
        .map(|(name, value)| format!("      - {{name: {name}, value: {value}}}\n"))
        .collect();
    let breaker = if breaker.is_empty() {
        String::new()
    } else {
        format!("    circuit_breaker: {breaker}\n")
    };
    setup.extra_providers = format!(
        "  - name: r\n    kind: openai\n    base_url: {}\n    retries: {retries}\n    retry_backoff_ms: 1\n{breaker}    keys:\n{keys}",
        mock.base_url()
    );
    Gateway::start(&setup)
}

fn form() -> Form {
    Form::new()
        .text("model", "r/gpt-image-1")
        .text("prompt", "make it blue")
        .file("image", "in.png", "image/png", &tiny_png())
}

fn status(code: u16) -> Reply {
    Reply::json(code, &json!({"error": {"message": "scripted", "type": "server_error"}}))
}

fn bearer(rec: &Recorded) -> String {
    rec.header("authorization").unwrap_or_default()
}

#[test]
fn a_503_then_200_is_retried_once() {
    let mock = MockUpstream::start();
    mock.push(status(503));
    let gw = gateway(&mock, 1, &[("one", KEY_ONE)], "");
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.requests().len(), 2);
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains(r#"refract_retries_total{provider="r",reason="server_error"} 1"#),
        "{metrics}"
    );
}

#[test]
fn retries_are_bounded_then_the_error_is_returned() {
    let mock = MockUpstream::start();
    for _ in 0..3 {
        mock.push(status(503));
    }
    let gw = gateway(&mock, 2, &[("one", KEY_ONE)], "");
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(mock.requests().len(), 3);
}

#[test]
fn a_400_is_not_retried() {
    let mock = MockUpstream::start();
    mock.push(status(400));
    let gw = gateway(&mock, 3, &[("one", KEY_ONE)], "");
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    assert_eq!(mock.requests().len(), 1);
    let text = gw.metrics_text();
    assert!(counted_series(&text, "refract_retries_total{").is_empty(), "{text}");
}

#[test]
fn a_429_rotates_to_the_other_key() {
    let mock = MockUpstream::start();
    mock.push(status(429));
    let gw = gateway(&mock, 1, &[("one", KEY_ONE), ("two", KEY_TWO)], "");
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let recs = mock.requests();
    assert_eq!(recs.len(), 2);
    assert_ne!(bearer(&recs[0]), bearer(&recs[1]), "the retry uses the other key");
    for rec in &recs {
        let b = bearer(rec);
        assert!(
            b == format!("Bearer {KEY_ONE}") || b == format!("Bearer {KEY_TWO}"),
            "{b}"
        );
    }
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains(r#"refract_retries_total{provider="r",reason="rate_limited"} 1"#),
        "{metrics}"
    );
    assert!(!metrics.contains(KEY_ONE) && !metrics.contains(KEY_TWO));
}

#[test]
fn an_open_circuit_skips_the_key_then_a_probe_closes_it() {
    let mock = MockUpstream::start();
    mock.push(status(500));
    mock.push(status(500));
    let gw = gateway(&mock, 0, &[("one", KEY_ONE)], "{failures: 2, open_ms: 300}");
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains(r#"refract_circuit_open{key="one",provider="r"} 0"#),
        "{metrics}"
    );
    for _ in 0..2 {
        assert_eq!(gw.edit(&form(), &[("x-bf-vk", VK)]).status, 500);
    }
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains(r#"refract_circuit_open{key="one",provider="r"} 1"#),
        "{metrics}"
    );
    // Open: the mock sees nothing, the client gets a fast 503.
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "provider_keys_disabled");
    assert_eq!(mock.requests().len(), 2);
    // An open circuit lets the fallbacks answer.
    let r = gw.edit(&form().text("fallbacks", "other/gpt-image-1"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "other");
    assert_eq!(bearer(&mock.requests()[2]), format!("Bearer {OTHER_PROVIDER_KEY}"));
    // After open_ms: one probe goes through, its success closes the circuit.
    std::thread::sleep(Duration::from_millis(350));
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(bearer(&mock.requests()[3]), format!("Bearer {KEY_ONE}"));
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains(r#"refract_circuit_open{key="one",provider="r"} 0"#),
        "{metrics}"
    );
    assert_eq!(gw.edit(&form(), &[("x-bf-vk", VK)]).status, 200);
    assert_eq!(mock.requests().len(), 5);
}

#[test]
fn a_failed_probe_opens_the_circuit_again() {
    let mock = MockUpstream::start();
    mock.push(status(502));
    mock.push(status(502));
    let gw = gateway(&mock, 0, &[("one", KEY_ONE)], "{failures: 1, open_ms: 200}");
    assert_eq!(gw.edit(&form(), &[("x-bf-vk", VK)]).status, 502);
    assert_eq!(gw.edit(&form(), &[("x-bf-vk", VK)]).status, 503);
    std::thread::sleep(Duration::from_millis(250));
    assert_eq!(gw.edit(&form(), &[("x-bf-vk", VK)]).status, 502, "the probe");
    assert_eq!(gw.edit(&form(), &[("x-bf-vk", VK)]).status, 503, "open again");
    assert_eq!(mock.requests().len(), 2);
}

/// A scripted 429 carrying `Retry-After: value` (the mock writes the content type as given, so
/// the header rides on it).
fn retry_after(value: &str) -> Reply {
    Reply::raw(
        429,
        &format!("application/json\r\nRetry-After: {value}"),
        br#"{"error":{"message":"slow down","type":"rate_limit"}}"#,
    )
}

#[test]
fn retry_after_is_honoured() {
    let mock = MockUpstream::start();
    mock.push(retry_after("1"));
    let gw = gateway(&mock, 1, &[("one", KEY_ONE)], "");
    let start = std::time::Instant::now();
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(start.elapsed() >= Duration::from_secs(1), "{:?}", start.elapsed());
    assert_eq!(mock.requests().len(), 2);
}

#[test]
fn a_long_retry_after_fails_over_without_waiting() {
    let mock = MockUpstream::start();
    mock.push(retry_after("120"));
    let gw = gateway(&mock, 3, &[("one", KEY_ONE)], "");
    let start = std::time::Instant::now();
    let r = gw.edit(&form().text("fallbacks", "other/gpt-image-1"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "other");
    assert!(start.elapsed() < Duration::from_secs(10));
    assert_eq!(mock.requests().len(), 2);
    let text = gw.metrics_text();
    assert!(counted_series(&text, "refract_retries_total{").is_empty(), "{text}");
}
