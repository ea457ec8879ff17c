//! Finding 4: slow uploads pin upstream connections. A body trickled or paused is cut off at
//! `limits.upload_timeout_ms` / `limits.body_read_timeout_ms` with a 408 and a close, and the
//! provider request streamed while it arrived is abandoned unfinished; a provider's upstream
//! exchanges are bounded by `max_connections` (a full provider queues a request for
//! `queue_timeout_ms`, then refuses it with a 503 a fallback may absorb), and uploads still
//! arriving never hold more than half of a provider's slots.

use crate::common::faults::{assert_spool_empty, spool_files_open};
use crate::common::*;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A form whose upload is streamed upstream while it arrives: `model` first, then a 512 KiB
/// image (over the 256 KiB threshold).
fn streamed_form() -> Form {
    Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "make it blue")
        .file("image", "in.png", "image/png", &big_png_like(512 * 1024, 7))
}

/// Opens a connection and sends the head and the first 64 KiB of `form` (the fields and the
/// start of the image); returns the connection and the rest of the body.
fn start_upload(gw: &Gateway, form: &Form) -> (Conn, Vec<u8>) {
    let body = form.body();
    let mut c = gw.connect();
    c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], form, None));
    c.send(&body[..64 * 1024]);
    (c, body[64 * 1024..].to_vec())
}

/// Writes `rest` one byte every 200 ms on its own thread until the gateway closes the
/// connection or `stop` is set.
fn trickle(c: &Conn, rest: Vec<u8>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<usize> {
    let mut w = c.stream.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut sent = 0;
        for b in rest {
            if stop.load(Ordering::SeqCst) || w.write_all(&[b]).is_err() {
                break;
            }
            sent += 1;
            std::thread::sleep(Duration::from_millis(200));
        }
        sent
    })
}

/// A gateway in front of `mock` with `limits` (lines of the `limits:` section), every upload in
/// a spool file of its own directory (so that freeing it shows).
fn slow_upload_gateway(mock: &MockUpstream, limits: &str) -> (Gateway, tempfile::TempDir) {
    let spool = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&mock.base_url());
    setup.limits = limits.into();
    setup.spool_memory_bytes = 0;
    setup.spool_directory = Some(spool.path().to_path_buf());
    (Gateway::start(&setup), spool)
}

/// Asserts the 408 naming `key`, the close, the abandoned upstream request, the freed spool and
/// the count.
fn assert_upload_cut(
    gw: &Gateway,
    mock: &MockUpstream,
    spool: &tempfile::TempDir,
    c: &mut Conn,
    r: &Response,
    key: &str,
) {
    let v = assert_gateway_error(r, 408, "request_timeout", "invalid_request_error", None);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(message.contains(&format!("limits.{key}")), "{message}");
    assert_eq!(r.header("connection").as_deref(), Some("close"), "{v}");
    assert!(c.is_closed(), "the connection stayed open after the 408");
    // The request streamed upstream while it arrived was abandoned: the provider never saw
    // its end.
    assert!(
        mock.wait_closed(1, Duration::from_secs(5)),
        "the upstream request was not abandoned"
    );
    assert!(mock.requests().is_empty(), "the provider got a complete request");
    assert_eq!(mock.incomplete().len(), 1);
    assert_spool_empty(spool.path());
    wait_until("the 408 counted", || {
        gw.metric(r#"refract_rejected_requests_total{reason="request_timeout"}"#) == 1.0
    });
    gw.assert_still_serves();
}

/// A body trickled at 1 byte per 200 ms (each pause well within `body_read_timeout_ms`) is cut
/// off at `upload_timeout_ms`.
#[test]
fn a_trickled_upload_is_cut_off_at_the_upload_timeout() {
    let mock = MockUpstream::start();
    // A long linger: a 408 for a body still trickling must close at once, not read the rest.
    let (gw, spool) = slow_upload_gateway(
        &mock,
        "  upload_timeout_ms: 1500\n  body_read_timeout_ms: 30000\n  linger_timeout_ms: 60000\n",
    );
    let (mut c, rest) = start_upload(&gw, &streamed_form());
    wait_until("the upload streamed upstream", || mock.connections() > 0);
    wait_until("the upload spooled", || spool_files_open(spool.path()) == 1);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = trickle(&c, rest, stop.clone());
    let started = Instant::now();
    let r = c.read_response();
    // Within bounds: the 1.5 s limit, not the 30 s pause limit (nor the test's 20 s read limit).
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    // The trickle goes on while the close is checked.
    assert_upload_cut(&gw, &mock, &spool, &mut c, &r, "upload_timeout_ms");
    stop.store(true, Ordering::SeqCst);
    let trickled = writer.join().unwrap();
    assert!(trickled > 0, "nothing was trickled");
}

/// A body that stops arriving is cut off at `body_read_timeout_ms`.
#[test]
fn a_paused_upload_is_cut_off_at_the_body_read_timeout() {
    let mock = MockUpstream::start();
    // A long linger: a 408 for a slow body must close at once, not wait for the rest of it.
    let (gw, spool) = slow_upload_gateway(
        &mock,
        "  body_read_timeout_ms: 500\n  upload_timeout_ms: 60000\n  linger_timeout_ms: 60000\n",
    );
    let (mut c, _rest) = start_upload(&gw, &streamed_form());
    wait_until("the upload streamed upstream", || mock.connections() > 0);
    let started = Instant::now();
    let r = c.read_response();
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
    assert_upload_cut(&gw, &mock, &spool, &mut c, &r, "body_read_timeout_ms");
}

const IN_FLIGHT: &str = r#"refract_upstream_in_flight{provider="openai"}"#;
const REFUSED: &str = r#"refract_upstream_queue_rejected_total{provider="openai"}"#;

/// A gateway whose providers allow 2 upstream exchanges at once, waiting `queue_ms` for a
/// slot, in front of `mock`.
fn two_slots(mock: &MockUpstream, queue_ms: u64) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.provider_settings = format!(
        "    first_byte_timeout_ms: 20000\n    idle_timeout_ms: 20000\n    max_connections: 2\n    queue_timeout_ms: {queue_ms}\n"
    );
    Gateway::start(&setup)
}

/// Sends a complete small edit on a new connection without reading the answer.
fn send_edit(gw: &Gateway, form: &Form) -> Conn {
    let mut c = gw.connect();
    c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], form, None));
    c.send(&form.body());
    c
}

/// Two requests the provider stalls on hold both slots (the gauge shows them); a third waits
/// `queue_timeout_ms` and gets a 503 naming the provider and the key, never reaching the
/// provider (counted); with a fallback it is served by the fallback; once a slot frees, the
/// next request is served.
#[test]
fn a_full_provider_refuses_after_the_queue_timeout_and_a_fallback_serves() {
    let mock = MockUpstream::start();
    mock.push(Reply::Stall);
    mock.push(Reply::Stall);
    let gw = two_slots(&mock, 800);
    // Both series exist before any event, so alerts can be written on them.
    let text = gw.metrics_text();
    for series in [IN_FLIGHT, REFUSED, r#"refract_upstream_in_flight{provider="other"}"#] {
        assert!(text.contains(&format!("{series} 0")), "{series} missing:\n{text}");
    }
    let slow1 = send_edit(&gw, &valid_form());
    let slow2 = send_edit(&gw, &valid_form());
    wait_until("both stalled requests at the provider", || mock.requests().len() == 2);
    assert_eq!(gw.metric(IN_FLIGHT), 2.0);

    let started = Instant::now();
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let waited = started.elapsed();
    let v = assert_gateway_error(&r, 503, "provider_busy", "upstream_error", None);
    let message = v["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("'openai'") && message.contains("max_connections (2)") && message.contains("queue_timeout_ms"),
        "{message}"
    );
    // It queued before being refused (a lower bound only: slow machines wait longer).
    assert!(waited >= Duration::from_millis(600), "refused after {waited:?}");
    assert_eq!(mock.requests().len(), 2, "the refused request reached the provider");
    assert_eq!(gw.metric(REFUSED), 1.0);
    // Requests are accounted in Pingora's logging phase, after the answer was written: the
    // client may read it before the count moves.
    wait_until("the refusal counted", || {
        gw.metric(r#"refract_rejected_requests_total{reason="provider_busy"}"#) == 1.0
    });

    // With a fallback, the refusal moves on and the fallback serves.
    let form = valid_form().text("fallbacks", "other/gpt-image-1");
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "other", "{}", r.text());
    assert_eq!(gw.metric(REFUSED), 2.0);
    assert_eq!(gw.metric(r#"refract_upstream_in_flight{provider="other"}"#), 0.0);

    // A client that leaves frees its slot; the next request is served.
    drop(slow1);
    wait_until("the slot freed", || gw.metric(IN_FLIGHT) == 1.0);
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(gw.metric(IN_FLIGHT), 1.0);
    drop(slow2);
    wait_until("every slot freed", || gw.metric(IN_FLIGHT) == 0.0);
    assert_eq!(gw.metric(REFUSED), 2.0);
}

/// A request that finds the provider full waits in the queue and is served as soon as a slot
/// frees within `queue_timeout_ms`.
#[test]
fn a_queued_request_is_served_when_a_slot_frees() {
    let mock = MockUpstream::start();
    mock.push(Reply::Stall);
    mock.push(Reply::Stall);
    let gw = two_slots(&mock, 15_000);
    let slow1 = send_edit(&gw, &valid_form());
    let _slow2 = send_edit(&gw, &valid_form());
    wait_until("both stalled requests at the provider", || mock.requests().len() == 2);
    let mut queued = send_edit(&gw, &valid_form());
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(mock.requests().len(), 2, "a third request reached the full provider");
    drop(slow1);
    let r = queued.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.requests().len(), 3);
    assert_eq!(gw.metric(REFUSED), 0.0);
}

/// Uploads still arriving may hold at most half of a provider's slots: with 2 slots, one
/// upload streams upstream while it arrives, a second one arriving meanwhile is read whole and
/// sent from the spool, and a complete request is served in between.
#[test]
fn uploads_in_progress_leave_slots_for_complete_requests() {
    let mock = MockUpstream::start();
    let gw = two_slots(&mock, 800);
    let (mut first, first_rest) = start_upload(&gw, &streamed_form());
    wait_until("the first upload streamed upstream", || mock.connections() > 0);
    assert_eq!(gw.metric(IN_FLIGHT), 1.0);
    let (mut second, second_rest) = start_upload(&gw, &streamed_form());
    // A complete request is served while both uploads are unfinished.
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    std::thread::sleep(Duration::from_millis(200));
    // The second upload ends (the first still holds its slot): it was not streamed.
    second.send(&second_rest);
    let r = second.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    first.send(&first_rest);
    let r = first.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    let streamed = requests
        .iter()
        .filter(|rec| rec.header("transfer-encoding").is_some())
        .count();
    assert_eq!(streamed, 1, "uploads streamed upstream while arriving");
    wait_until("every slot freed", || gw.metric(IN_FLIGHT) == 0.0);
}
