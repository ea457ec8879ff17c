//! Fallbacks end to end: a real gateway whose primary provider fails (503, a closed port, a
//! 400), and fallback candidates on other providers pointing at a second mock, at a Gemini-kind
//! mock or at the built-in simulator.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::*;
use refract::codec::sse::SseDecoder;
use serde_json::{json, Value};

const GEMINI_MODEL: &str = "gemini-2.5-flash-image";

/// A gateway whose `openai`/`other` providers point at `primary`, plus `backup` (kind openai)
/// and `gem` (kind gemini) pointing at `second`.
fn gateway(primary: &str, second: &MockUpstream, simulator: bool) -> Gateway {
    let mut setup = Setup::new(primary);
    setup.simulator = simulator;
    setup.extra_providers = format!(
        "  - name: backup\n    kind: openai\n    base_url: {}\n    keys:\n      - {{name: b, value: sk-backup-key}}\n  - name: gem\n    kind: gemini\n    base_url: http://{}/v1beta\n    keys:\n      - {{name: g, value: AIza-gem-key}}\n",
        second.base_url(),
        second.addr
    );
    Gateway::start(&setup)
}

/// Two mocks, the first scripted to answer 503 once, and a gateway over them.
fn failing_primary(simulator: bool) -> (MockUpstream, MockUpstream, Gateway) {
    let first = MockUpstream::start();
    let second = MockUpstream::start();
    first.push(unavailable());
    let gw = gateway(&first.base_url(), &second, simulator);
    (first, second, gw)
}

fn unavailable() -> Reply {
    Reply::json(
        503,
        &json!({"error": {"message": "overloaded", "type": "server_error"}}),
    )
}

#[test]
fn primary_503_is_served_by_the_fallback_with_its_name() {
    let (first, second, gw) = failing_primary(false);
    let r = gw.edit(
        &valid_form().text("fallbacks", "backup/gpt-image-1"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["extra_fields"]["provider"], "backup");
    assert_eq!(v["extra_fields"]["model_requested"], "gpt-image-1");
    assert_eq!(v["extra_fields"]["fallback_index"], 1);
    assert_eq!(v["extra_fields"]["attempts"], 2);
    assert_eq!(first.requests().len(), 1);
    let rec = second.only_request();
    assert_eq!(rec.header("authorization").as_deref(), Some("Bearer sk-backup-key"));
    let metrics = gw.metrics_text();
    assert!(
        metrics.contains(r#"refract_fallbacks_total{from="openai",to="backup"} 1"#),
        "{metrics}"
    );
}

#[test]
fn primary_success_reports_index_zero() {
    let first = MockUpstream::start();
    let second = MockUpstream::start();
    let gw = gateway(&first.base_url(), &second, false);
    let r = gw.edit(
        &valid_form().text("fallbacks", "backup/gpt-image-1"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["extra_fields"]["provider"], "openai");
    assert_eq!(v["extra_fields"]["fallback_index"], 0);
    assert_eq!(v["extra_fields"]["attempts"], 1);
    assert!(second.requests().is_empty());
}

#[test]
fn the_fallback_is_translated_for_its_own_provider() {
    let first = MockUpstream::start();
    let second = MockUpstream::start();
    first.push(unavailable());
    let png = tiny_png();
    let out = base64::engine::general_purpose::STANDARD.encode(&png);
    second.push(Reply::json(
        200,
        &json!({"candidates":[{"content":{"role":"model","parts":[{"inlineData":{"mimeType":"image/png","data":out}}]},"finishReason":"STOP","index":0}],
                "modelVersion": GEMINI_MODEL}),
    ));
    let gw = gateway(&first.base_url(), &second, false);
    let form = valid_form().text("fallbacks", &format!("gem/{GEMINI_MODEL}"));
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["extra_fields"]["provider"], "gem");
    assert_eq!(v["extra_fields"]["model_requested"], GEMINI_MODEL);
    assert_eq!(v["extra_fields"]["fallback_index"], 1);
    // The primary got exactly its own (multipart) request; the fallback got Gemini JSON.
    let primary = first.only_request();
    assert!(primary
        .header("content-type")
        .unwrap()
        .starts_with("multipart/form-data"));
    let rec = second.only_request();
    assert_eq!(rec.path, format!("/v1beta/models/{GEMINI_MODEL}:generateContent"));
    assert_eq!(rec.header("x-goog-api-key").as_deref(), Some("AIza-gem-key"));
    let body: Value = serde_json::from_slice(&rec.body).expect("Gemini JSON");
    let parts = body["contents"][0]["parts"].as_array().unwrap();
    let inlined = parts
        .iter()
        .find_map(|p| p["inlineData"]["data"].as_str())
        .expect("an inlined image");
    assert_eq!(base64::engine::general_purpose::STANDARD.decode(inlined).unwrap(), png);
}

#[test]
fn primary_connect_error_falls_back() {
    let second = MockUpstream::start();
    let closed = free_addr();
    let gw = gateway(&format!("http://{closed}/v1"), &second, false);
    let r = gw.edit(
        &valid_form().text("fallbacks", "backup/gpt-image-1"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "backup");
    assert_eq!(second.requests().len(), 1);
}

#[test]
fn primary_400_is_returned_without_fallback() {
    let first = MockUpstream::start();
    let second = MockUpstream::start();
    first.push(Reply::json(
        400,
        &json!({"error": {"message": "bad prompt", "type": "invalid_request_error"}}),
    ));
    let gw = gateway(&first.base_url(), &second, false);
    let r = gw.edit(
        &valid_form().text("fallbacks", "backup/gpt-image-1"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 400, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["message"], "bad prompt");
    assert_eq!(v["extra_fields"]["provider"], "openai");
    assert!(v["extra_fields"].get("fallback_errors").is_none());
    assert!(second.requests().is_empty());
}

#[test]
fn all_failing_returns_the_primary_error_with_the_others_listed() {
    let first = MockUpstream::start();
    let second = MockUpstream::start();
    first.push(unavailable());
    second.push(Reply::json(429, &json!({"error": {"message": "slow down"}})));
    let gw = gateway(&first.base_url(), &second, false);
    let form = valid_form().text(
        "fallbacks",
        r#"["backup/gpt-image-1", {"provider": "nowhere", "model": "m"}]"#,
    );
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["message"], "overloaded");
    assert_eq!(v["extra_fields"]["provider"], "openai");
    let errors = v["extra_fields"]["fallback_errors"].as_array().unwrap();
    assert_eq!(errors.len(), 2, "{v}");
    assert_eq!(errors[0]["provider"], "backup");
    assert_eq!(errors[0]["model"], "gpt-image-1");
    assert_eq!(errors[0]["status"], 429);
    assert_eq!(errors[0]["message"], "slow down");
    assert_eq!(errors[1]["provider"], "nowhere");
    assert_eq!(errors[1]["type"], "unknown_provider");
}

#[test]
fn a_fallback_the_virtual_key_may_not_use_is_skipped() {
    let (first, second, gw) = failing_primary(false);
    // `other` points at `first` too: it must not be asked.
    let form = valid_form()
        .text("fallbacks", "other/gpt-image-1")
        .text("fallbacks", "backup/gpt-image-1");
    let r = gw.edit(&form, &[("x-bf-vk", VK_RESTRICTED)]);
    assert_eq!(r.status, 503, "{}", r.text());
    let errors = r.json()["extra_fields"]["fallback_errors"].clone();
    assert_eq!(errors[0]["type"], "provider_blocked", "{errors}");
    assert_eq!(errors[1]["type"], "provider_blocked", "{errors}");
    assert_eq!(first.requests().len(), 1);
    assert!(second.requests().is_empty());
}

#[test]
fn repeated_fields_are_tried_in_order() {
    let first = MockUpstream::start();
    let second = MockUpstream::start();
    first.push(unavailable());
    // `other` points at `first` as well: its second answer is a 502.
    first.push(Reply::json(502, &json!({"error": {"message": "bad gateway"}})));
    let gw = gateway(&first.base_url(), &second, false);
    let form = valid_form()
        .text("fallbacks[]", "other/gpt-image-1")
        .text("fallbacks[]", "backup/gpt-image-1");
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["extra_fields"]["provider"], "backup");
    assert_eq!(v["extra_fields"]["fallback_index"], 2);
    assert_eq!(v["extra_fields"]["attempts"], 3);
    let asked = first.requests();
    assert_eq!(asked.len(), 2);
    assert_eq!(
        asked[1].header("authorization").as_deref(),
        Some(&*format!("Bearer {OTHER_PROVIDER_KEY}"))
    );
}

#[test]
fn a_failing_stream_falls_back_to_the_fallbacks_stream() {
    let (first, _second, gw) = failing_primary(true);
    let form = valid_form()
        .text("stream", "true")
        .text("fallbacks", "demo/sim-image-1");
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
    let mut d = SseDecoder::new();
    let mut evs = Vec::new();
    d.feed(&r.body, &mut evs).expect("a well-formed event stream");
    let last = evs.last().expect("events");
    assert_eq!(last.event.as_deref(), Some("image_edit.completed"), "{}", r.text());
    let data: Value = serde_json::from_str(&last.data).unwrap();
    assert_eq!(data["extra_fields"]["provider"], "demo", "{data}");
    assert_eq!(first.requests().len(), 1);
}

#[test]
fn sdk_dict_encoding_is_understood_and_never_forwarded() {
    let (first, second, gw) = failing_primary(false);
    // extra_body={"fallbacks": [{"provider": "backup", "model": "gpt-image-1"}]}
    let form = valid_form()
        .text("fallbacks[][provider]", "backup")
        .text("fallbacks[][model]", "gpt-image-1");
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "backup");
    for rec in first.requests().iter().chain(second.requests().iter()) {
        assert!(
            rec.parts().iter().all(|p| !p.name.starts_with("fallbacks")),
            "a fallbacks field was forwarded upstream"
        );
    }
}

#[test]
fn a_large_upload_streamed_to_the_primary_falls_back_from_the_spool() {
    let (first, second, gw) = failing_primary(false);
    let image = big_png_like(1_000_000, 7);
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "make it blue")
        .text("fallbacks", "backup/gpt-image-1")
        .file("image", "in.png", "image/png", &image);
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "backup");
    let rec = second.only_request();
    let parts = rec.parts();
    let sent = parts_named(&parts, "image");
    let sent = if sent.is_empty() {
        parts_named(&parts, "image[]")
    } else {
        sent
    };
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].data, image, "the fallback got the whole upload");
    assert_eq!(first.requests().len(), 1);
}
