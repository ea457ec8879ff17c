//! The admission step end to end: a gateway built with a recording admission
//! (`refract::admission::RecordingAdmission`) in front of scripted mocks. A refused attempt
//! never reaches the provider and is answered in Bifrost's shape; every attempt (the
//! primary's, a retry's, a fallback's, a streamed upload's) is admitted once and settled once
//! with its outcome.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::*;
use refract::admission::{AttemptIndex, RecordingAdmission, SettleCall, Usage};
use serde_json::json;
use std::sync::Arc;

/// A gateway whose `openai` provider points at `primary` with `primary_settings` (provider
/// lines), plus `backup` (kind openai) at `second`, using `admission`.
fn gateway(
    primary: &MockUpstream,
    primary_settings: &str,
    second: &MockUpstream,
    admission: &Arc<RecordingAdmission>,
) -> Gateway {
    let mut setup = Setup::new(&primary.base_url());
    setup.provider_settings.push_str(primary_settings);
    setup.extra_providers = format!(
        "  - name: backup\n    kind: openai\n    base_url: {}\n    keys:\n      - {{name: b, value: sk-backup-key}}\n",
        second.base_url()
    );
    let options = refract::server::Options {
        admission: admission.clone(),
    };
    Gateway::start_with(&setup, options)
}

fn unavailable() -> Reply {
    Reply::json(
        503,
        &json!({"error": {"message": "overloaded", "type": "server_error"}}),
    )
}

fn settled(token: u64, status: u16, provider: &str, key: &str) -> SettleCall {
    SettleCall {
        token,
        status,
        reason: (status != 200).then_some(if status == 503 { "provider_error" } else { "?" }),
        images: u32::from(status == 200),
        provider: provider.into(),
        model: "gpt-image-1".into(),
        key: Some(key.into()),
        // The mock's answer reports usage (see `default_success`).
        usage: (status == 200).then_some(Usage {
            input_tokens: 10,
            output_tokens: 20,
            total_tokens: 30,
        }),
    }
}

#[test]
fn a_refusal_is_answered_before_any_upstream_byte() {
    let (first, second) = (MockUpstream::start(), MockUpstream::start());
    let admission = Arc::new(RecordingAdmission::refusing_model("gpt-image-1"));
    let gw = gateway(&first, "", &second, &admission);
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let v = assert_gateway_error(&r, 429, "rate_limited", "invalid_request_error", None);
    assert_eq!(v["extra_fields"]["provider"], "openai", "{v}");
    assert_eq!(first.received(), 0, "the provider saw nothing");
    assert_eq!(first.connections(), 0, "not even a connection");
    let seen = admission.recorded();
    assert_eq!(seen.admits.len(), 1);
    let call = &seen.admits[0];
    assert_eq!(call.virtual_key.as_deref(), Some("team-a"));
    assert_eq!((call.provider.as_str(), call.model.as_str()), ("openai", "gpt-image-1"));
    assert_eq!(call.attempt, AttemptIndex { candidate: 0, retry: 0 });
    assert!(call.form_complete);
    assert_eq!(call.admitted, None);
    assert!(seen.settles.is_empty(), "a refused attempt has nothing to settle");
    // The request is accounted (in `logging`) with the refusal's code.
    wait_until("the refusal is counted", || {
        gw.metrics_text().contains(r#"reason="rate_limited""#)
    });
}

/// A large upload whose model comes first is admitted when `model` arrives (before its first
/// upstream byte); refused, nothing is streamed.
#[test]
fn a_streamed_upload_is_admitted_before_it_streams() {
    let (first, second) = (MockUpstream::start(), MockUpstream::start());
    let form = || {
        Form::new()
            .text("model", "openai/gpt-image-1")
            .text("n", "2")
            .text("prompt", "make it blue")
            .file("image", "in.png", "image/png", &big_png_like(400_000, 3))
    };
    let refusing = Arc::new(RecordingAdmission::refusing_model("gpt-image-1"));
    let gw = gateway(&first, "", &second, &refusing);
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 429, "rate_limited", "invalid_request_error", None);
    assert_eq!(first.connections(), 0, "the provider saw nothing");
    let seen = refusing.recorded();
    assert_eq!(seen.admits.len(), 1, "{seen:?}");
    assert!(!seen.admits[0].form_complete, "admitted while the upload arrived");
    drop(gw);

    let admitting = Arc::new(RecordingAdmission::admitting());
    let gw = gateway(&first, "", &second, &admitting);
    let r = gw.edit(&form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let rec = first.only_request();
    assert_eq!(rec.header("transfer-encoding").as_deref(), Some("chunked"), "streamed");
    let seen = admitting.recorded();
    assert_eq!(seen.admits.len(), 1, "{seen:?}");
    assert!(!seen.admits[0].form_complete);
    // `n` came after `model`: not known when the attempt was admitted; the settlement has it.
    assert_eq!(seen.admits[0].n, 1);
    let token = seen.admits[0].admitted.expect("admitted");
    let mut expected = settled(token, 200, "openai", "primary");
    expected.images = 2;
    assert_eq!(seen.settles, [expected]);
}

#[test]
fn every_attempt_is_admitted_and_settled_once_across_a_retry_and_a_fallback() {
    let (first, second) = (MockUpstream::start(), MockUpstream::start());
    first.push(unavailable());
    first.push(unavailable());
    let admission = Arc::new(RecordingAdmission::admitting());
    let gw = gateway(&first, "    retries: 1\n    retry_backoff_ms: 1\n", &second, &admission);
    let r = gw.edit(
        &valid_form().text("fallbacks", "backup/gpt-image-1"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "backup");
    assert_eq!((first.received(), second.received()), (2, 1));
    let seen = admission.recorded();
    let attempts: Vec<_> = seen
        .admits
        .iter()
        .map(|a| (a.provider.as_str(), a.attempt.candidate, a.attempt.retry))
        .collect();
    assert_eq!(attempts, [("openai", 0, 0), ("openai", 0, 1), ("backup", 1, 0)]);
    assert!(seen
        .admits
        .iter()
        .all(|a| a.form_complete && a.virtual_key.as_deref() == Some("team-a")));
    let tokens: Vec<u64> = seen.admits.iter().map(|a| a.admitted.expect("admitted")).collect();
    assert_eq!(
        seen.settles,
        [
            settled(tokens[0], 503, "openai", "primary"),
            settled(tokens[1], 503, "openai", "primary"),
            settled(tokens[2], 200, "backup", "b"),
        ]
    );
}

/// A fallback the admission refuses is listed among the failures; its provider sees nothing.
#[test]
fn a_refused_fallback_is_listed_and_never_sent() {
    let (first, second) = (MockUpstream::start(), MockUpstream::start());
    first.push(unavailable());
    let admission = Arc::new(RecordingAdmission::admitting_first(1));
    let gw = gateway(&first, "", &second, &admission);
    let r = gw.edit(
        &valid_form().text("fallbacks", "backup/gpt-image-1"),
        &[("x-bf-vk", VK)],
    );
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    let failures = v["extra_fields"]["fallback_errors"]
        .as_array()
        .expect("fallback_errors");
    assert_eq!(failures.len(), 1, "{v}");
    assert_eq!(failures[0]["provider"], "backup");
    assert_eq!(failures[0]["status"], 429);
    assert_eq!(failures[0]["type"], "rate_limited");
    assert_eq!(second.connections(), 0, "the refused fallback saw nothing");
    let seen = admission.recorded();
    assert_eq!(seen.admits.len(), 2);
    assert_eq!(seen.admits[1].admitted, None);
    let token = seen.admits[0].admitted.expect("admitted");
    assert_eq!(seen.settles, [settled(token, 503, "openai", "primary")]);
}

/// A streamed attempt admitted when `model` arrived, whose form then turns out invalid, is
/// settled with the request's 400 (the provider's request was abandoned unfinished).
#[test]
fn a_streamed_attempt_abandoned_by_an_invalid_form_is_settled() {
    let (first, second) = (MockUpstream::start(), MockUpstream::start());
    let admission = Arc::new(RecordingAdmission::admitting());
    let gw = gateway(&first, "", &second, &admission);
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "make it blue")
        .file("image", "in.png", "image/png", &big_png_like(400_000, 4))
        .text("n", "many");
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_invalid(&r, "n");
    let seen = admission.recorded();
    assert_eq!(seen.admits.len(), 1, "{seen:?}");
    assert!(!seen.admits[0].form_complete);
    let token = seen.admits[0].admitted.expect("admitted");
    assert_eq!(
        seen.settles,
        [SettleCall {
            token,
            status: 400,
            reason: Some("invalid_request"),
            images: 0,
            provider: "openai".into(),
            model: "gpt-image-1".into(),
            key: Some("primary".into()),
            usage: None,
        }]
    );
    assert!(
        first.requests().iter().all(|rec| !rec.complete),
        "never a complete request"
    );
}
