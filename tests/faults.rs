//! Upstream and client faults end to end.
//!
//! The primary provider `openai` sits behind a mock that fails in one of the ways a provider
//! can fail (`common::faults`), every time; the fallback provider `backup` sits behind a
//! healthy mock. For every fault: with a fallback (named by the request, or by the model's
//! configured chain) the backup answers 200 and says so; without one, the client gets the
//! fault's Bifrost error; no file is left in the spool directory; the gateway serves on. Then
//! the timeouts no fault reaches (connect, total), and clients that leave during the upload,
//! the wait, or the stream. The 1,000-fault soak is `tests/soak.rs`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::faults::*;
use common::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// `fault` is absorbed by the fallback the request names: the backup answers with the same
/// upload, the answer names it, the move is counted, the spool is left empty.
fn absorbed_by_request_fallback(fault: Fault) {
    let rig = Rig::new(fault, "");
    let form = rig.form(fault, Some("backup/gpt-image-1"));
    let r = rig.gw.edit(&form, &[("x-bf-vk", VK)]);
    let v = assert_served_by(&r, "backup", fault.stream());
    if !fault.stream() {
        assert_eq!(v["extra_fields"]["fallback_index"], 1, "{v}");
        assert_eq!(v["extra_fields"]["attempts"], 2, "{v}");
    }
    // The backup received the whole upload, byte for byte.
    let rec = rig.backup.only_request();
    assert_eq!(rec.header("authorization").as_deref(), Some("Bearer sk-backup-key"));
    let parts = rec.parts();
    assert_eq!(parts_named(&parts, "image")[0].data, image_for(fault), "{fault:?}");
    assert_eq!(parts_named(&parts, "prompt")[0].text(), "make it blue");
    if fault == Fault::Refused {
        assert_eq!(rig.primary.connections(), 0);
    } else {
        assert!(attempts(&rig.primary) >= 1, "{fault:?}: the primary was never tried");
    }
    assert_eq!(
        rig.gw.metric(r#"refract_fallbacks_total{from="openai",to="backup"}"#),
        1.0,
        "{fault:?}"
    );
    if let (_, _, Some(kind)) = fault.error() {
        assert_eq!(
            rig.gw.metric(&format!(
                r#"refract_upstream_timeouts_total{{kind="{kind}",provider="openai"}}"#
            )),
            1.0,
            "{fault:?}"
        );
    }
    rig.assert_clean_and_serving();
}

/// Without fallbacks, `fault` is its own error, naming the primary.
fn error_without_fallbacks(fault: Fault) {
    let rig = Rig::new(fault, "");
    let r = rig.gw.edit(&rig.form(fault, None), &[("x-bf-vk", VK)]);
    let (status, code, kind) = fault.error();
    assert_eq!(r.status, status, "{fault:?}: {}", r.text());
    let v = r.json();
    match code {
        Some(code) => {
            assert_eq!(v["is_bifrost_error"], true, "{v}");
            assert_eq!(v["type"], code, "{fault:?}: {v}");
            assert_eq!(v["error"]["type"], "upstream_error", "{v}");
        }
        None => {
            assert_eq!(v["is_bifrost_error"], false, "{v}");
            assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        }
    }
    assert_eq!(v["extra_fields"]["provider"], "openai", "{v}");
    if let Some(kind) = kind {
        let message = v["error"]["message"].as_str().unwrap();
        assert!(message.contains(&format!("({kind})")), "{message}");
    }
    assert!(rig.backup.requests().is_empty());
    rig.assert_clean_and_serving();
}

macro_rules! fault_tests {
    ($($name:ident: $fault:expr,)*) => {
        mod absorbed_by_the_request_fallback {
            use super::*;
            $(#[test] fn $name() { absorbed_by_request_fallback($fault); })*
        }
        mod error_without_fallbacks {
            use super::*;
            $(#[test] fn $name() { error_without_fallbacks($fault); })*
        }
    };
}

fault_tests! {
    refused: Fault::Refused,
    reset_mid_request: Fault::ResetMidRequest,
    reset_mid_answer: Fault::ResetMidAnswer,
    stall_before_head: Fault::StallBeforeHead,
    stall_between_events: Fault::StallBetweenEvents,
    rate_limited: Fault::RateLimited,
    server_error: Fault::ServerError,
    unavailable: Fault::Unavailable,
    malformed_json: Fault::MalformedJson,
    truncated_sse: Fault::TruncatedSse,
    wrong_content_type: Fault::WrongContentType,
}

/// The model's configured chain (`model_rules[].fallbacks`) absorbs an outage for requests
/// that name no fallbacks; a request's own `fallbacks` replace the chain.
#[test]
fn the_models_configured_chain_absorbs_the_outage() {
    let chain = "    model_rules:\n      - {match: \"gpt-image-*\", fallbacks: [backup/gpt-image-1]}\n";
    for fault in [Fault::Unavailable, Fault::StallBeforeHead, Fault::Refused] {
        let rig = Rig::new(fault, chain);
        let r = rig.gw.edit(&rig.form(fault, None), &[("x-bf-vk", VK)]);
        let v = assert_served_by(&r, "backup", false);
        assert_eq!(v["extra_fields"]["fallback_index"], 1, "{v}");
        assert_eq!(rig.backup.requests().len(), 1);
        // The request's own list wins over the configured chain.
        let r = rig
            .gw
            .edit(&rig.form(fault, Some("spare/gpt-image-1")), &[("x-bf-vk", VK)]);
        assert_served_by(&r, "spare", false);
        assert_eq!(rig.backup.requests().len(), 1, "the configured chain was used anyway");
        assert_eq!(rig.spare.requests().len(), 1);
        rig.assert_clean_and_serving();
    }
    // A model the rule does not match has no chain.
    let rig = Rig::new(Fault::Unavailable, chain);
    let form = edit_form("openai/dall-e-2", Fault::Unavailable, None);
    assert_eq!(rig.gw.edit(&form, &[("x-bf-vk", VK)]).status, 503);
    assert!(rig.backup.requests().is_empty());
}

/// The configured chain obeys the virtual key: a candidate the key may not use is skipped and
/// listed, and the primary's error is returned.
#[test]
fn the_configured_chain_respects_the_virtual_key() {
    let chain = "    model_rules:\n      - {match: gpt-image-1, fallbacks: [backup/gpt-image-1]}\n";
    let rig = Rig::new(Fault::Unavailable, chain);
    let r = rig
        .gw
        .edit(&rig.form(Fault::Unavailable, None), &[("x-bf-vk", VK_RESTRICTED)]);
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["extra_fields"]["fallback_errors"][0]["provider"], "backup", "{v}");
    assert_eq!(
        v["extra_fields"]["fallback_errors"][0]["type"], "provider_blocked",
        "{v}"
    );
    assert!(rig.backup.requests().is_empty());
}

/// A stream that stalls after its first event went downstream cannot fall back without
/// sending a half answer: the client gets that event, then an `error` event naming the idle
/// timeout, and the fallback is never asked.
#[test]
fn a_stall_after_the_first_event_is_an_in_band_error() {
    let rig = Rig::new(Fault::StallBetweenEvents, "");
    rig.primary.push(Reply::Raw {
        pieces: vec![(Duration::ZERO, [SSE_HEAD, &chunk(&partial_event())].concat())],
        end: RawEnd::Hold,
    });
    let form = rig.form(Fault::StallBetweenEvents, Some("backup/gpt-image-1"));
    let r = rig.gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let text = r.text();
    let partial = text.find(&format!("event: {PARTIAL}")).expect("the partial event");
    let error = text.find("event: error").expect("an error event");
    assert!(partial < error, "{text}");
    assert!(text.contains("upstream_timeout") && text.contains("(idle)"), "{text}");
    assert!(rig.backup.requests().is_empty(), "a started stream fell back");
    // Counted when the attempt ends, which may be just after the client read the stream's end.
    wait_until("the idle timeout counted", || {
        rig.gw
            .metric(r#"refract_upstream_timeouts_total{kind="idle",provider="openai"}"#)
            == 1.0
    });
    rig.assert_clean_and_serving();
}

/// An answer announced larger than the gateway reads into memory (512 MiB) is refused as soon
/// as its head arrives, without waiting for (or holding) its body: a 502 naming the bound,
/// while the provider still holds the connection open.
#[test]
fn an_answer_announced_too_large_is_refused_at_its_head() {
    let rig = Rig::new(Fault::ServerError, "");
    rig.primary.push(Reply::Raw {
        pieces: vec![(
            Duration::ZERO,
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n{\"data\":[{\"b64_json\":\"aW1h".to_vec(),
        )],
        end: RawEnd::Hold,
    });
    let form = rig.form(Fault::ServerError, None);
    let r = rig.gw.edit(&form, &[("x-bf-vk", VK)]);
    // Reading the body instead would end in the 3 s idle timeout, a 504.
    assert_eq!(r.status, 502, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "upstream_protocol_error", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("answer larger than"),
        "{v}"
    );
    rig.assert_clean_and_serving();
}

// ---------------------------------------------------------------------------------------------
// Timeouts the faults above do not reach: connect and total
// ---------------------------------------------------------------------------------------------

/// A listener whose accept queue is full: further connections hang in the handshake.
fn unaccepting_listener() -> (socket2::Socket, Vec<TcpStream>, std::net::SocketAddr) {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket
        .bind(&"127.0.0.1:0".parse::<std::net::SocketAddr>().unwrap().into())
        .unwrap();
    socket.listen(0).unwrap();
    let addr = socket.local_addr().unwrap().as_socket().unwrap();
    // Fill the queue; connects that no longer complete at once are abandoned.
    let mut held = Vec::new();
    for _ in 0..8 {
        match TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(s) => held.push(s),
            Err(_) => break,
        }
    }
    (socket, held, addr)
}

#[test]
fn connect_timeout_is_a_504_that_falls_back() {
    let (_socket, _held, addr) = unaccepting_listener();
    let backup = MockUpstream::start();
    let mut setup = Setup::new(&backup.base_url());
    setup.extra_providers = format!(
        "  - name: slow\n    kind: openai\n    base_url: http://{addr}/v1\n    connect_timeout_ms: 200\n    keys:\n      - {{name: s, value: sk-slow-key}}\n",
    );
    let gw = Gateway::start(&setup);
    let form = |fallbacks| edit_form("slow/gpt-image-1", Fault::Refused, fallbacks);
    let r = gw.edit(&form(None), &[("x-bf-vk", VK)]);
    assert_timeout(&gw, &r, "slow", "connect", "connect_timeout_ms", 200);
    let r = gw.edit(&form(Some("openai/gpt-image-1")), &[("x-bf-vk", VK)]);
    assert_served_by(&r, "openai", false);
}

/// An answer that keeps trickling (each pause within the idle limit) is cut off by the total.
#[test]
fn total_timeout_cuts_a_trickling_answer() {
    let mock = MockUpstream::start();
    let body = serde_json::to_vec(&default_success()).unwrap();
    mock.push(Reply::Chunked {
        status: 200,
        content_type: "application/json".into(),
        body,
        piece: 4,
        pause: Duration::from_millis(50),
    });
    let mut setup = Setup::new(&mock.base_url());
    setup.provider_settings = "    idle_timeout_ms: 2000\n    total_timeout_ms: 400\n".into();
    let gw = Gateway::start(&setup);
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_timeout(&gw, &r, "openai", "total", "total_timeout_ms", 400);
    gw.assert_still_serves();
}

/// The total also cuts the other waits: a provider that never answers is given up at the
/// total when that is shorter than the first-byte limit, and the error names the total.
#[test]
fn total_timeout_cuts_the_wait_for_the_head() {
    let mock = MockUpstream::start();
    mock.push(Reply::Stall);
    let mut setup = Setup::new(&mock.base_url());
    setup.provider_settings = "    first_byte_timeout_ms: 20000\n    total_timeout_ms: 300\n".into();
    let gw = Gateway::start(&setup);
    let started = std::time::Instant::now();
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_timeout(&gw, &r, "openai", "total", "total_timeout_ms", 300);
    // Given up at the total, long before the first-byte limit.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    gw.assert_still_serves();
}

// ---------------------------------------------------------------------------------------------
// Client faults
// ---------------------------------------------------------------------------------------------

/// Asserts the primary's connection closed (within 5 s: `what` failed otherwise) and the
/// client's departure counted in `phase`.
fn assert_cancelled(rig: &Rig, phase: &str, what: &str) {
    assert!(rig.primary.wait_closed(1, Duration::from_secs(5)), "{what}");
    let series = format!(r#"refract_client_disconnects_total{{phase="{phase}"}}"#);
    wait_until(&series, || rig.gw.metric(&series) >= 1.0);
}

/// A client that disconnects mid-upload: the provider request streamed while it arrived is
/// abandoned before its end (the provider never sees a complete request), the spool is
/// emptied, and the departure is counted.
#[test]
fn client_leaving_during_the_upload_abandons_the_upstream_request() {
    let rig = Rig::new(Fault::ServerError, "");
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "make it blue")
        .file("image", "in.png", "image/png", &big_png_like(4 << 20, 3));
    let body = form.body();
    let mut c = TcpStream::connect(rig.gw.addr).unwrap();
    c.write_all(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &form, None))
        .unwrap();
    c.write_all(&body[..1 << 20]).unwrap();
    // The upload is streamed upstream as it arrives: wait until the provider sees it.
    wait_until("the upload streamed upstream", || rig.primary.connections() > 0);
    drop(c);
    assert_cancelled(&rig, "upload", "the upstream request was not abandoned");
    assert!(rig.primary.requests().is_empty(), "the provider got a complete request");
    assert_eq!(rig.primary.incomplete().len(), 1);
    rig.assert_clean_and_serving();
}

/// A client that disconnects while the provider works: the upstream connection is closed at
/// once (not after the provider's 20 s first-byte limit), nothing is retried or sent to a
/// fallback, and the departure is counted.
#[test]
fn client_leaving_during_the_wait_cancels_the_upstream_exchange() {
    let rig = Rig::with_timeouts(Fault::ServerError, "    retries: 2\n    retry_backoff_ms: 1\n", 20_000);
    rig.primary.push(Reply::Stall);
    let form = rig.form(Fault::ServerError, Some("backup/gpt-image-1"));
    let mut c = TcpStream::connect(rig.gw.addr).unwrap();
    c.write_all(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &form, None))
        .unwrap();
    c.write_all(&form.body()).unwrap();
    wait_until("the request reaching the provider", || {
        !rig.primary.requests().is_empty()
    });
    assert_eq!(
        spool_files_open(rig.spool.path()),
        1,
        "the upload is not in the spool directory"
    );
    drop(c);
    assert_cancelled(&rig, "wait", "the upstream exchange went on after the client left");
    assert_eq!(
        rig.gw
            .metric(r#"refract_rejected_requests_total{reason="client_closed"}"#),
        1.0
    );
    assert_eq!(rig.primary.requests().len(), 1, "retried for a client that left");
    assert!(rig.backup.requests().is_empty(), "fell back for a client that left");
    let text = rig.gw.metrics_text();
    assert!(
        counted_series(&text, "refract_upstream_timeouts_total{").is_empty(),
        "{text}"
    );
    rig.assert_clean_and_serving();
}

/// A client that disconnects mid-stream: the provider's stream is closed long before its end,
/// and the departure is counted.
#[test]
fn client_leaving_during_the_stream_closes_the_provider_stream() {
    let rig = Rig::with_timeouts(Fault::ServerError, "", 5000);
    let events: Vec<u8> = (0..50).flat_map(|_| partial_event()).collect();
    let event_len = partial_event().len();
    rig.primary.push(Reply::Chunked {
        status: 200,
        content_type: "text/event-stream".into(),
        body: events,
        piece: event_len,
        pause: Duration::from_millis(200),
    });
    let form = rig.form(Fault::TruncatedSse, None);
    let mut c = TcpStream::connect(rig.gw.addr).unwrap();
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.write_all(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &form, None))
        .unwrap();
    c.write_all(&form.body()).unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    while !String::from_utf8_lossy(&got).contains(PARTIAL) {
        let n = c.read(&mut tmp).unwrap();
        assert!(n > 0, "closed before the first event");
        got.extend_from_slice(&tmp[..n]);
    }
    drop(c);
    // The whole stream would take 10 s.
    assert_cancelled(&rig, "stream", "the provider's stream went on after the client left");
    rig.assert_clean_and_serving();
}
