//! Findings 2 and 3: request heads trickled forever, idle connections never closed.
//!
//! Each test runs a gateway with short limits (`limits.head_timeout_ms`,
//! `limits.keepalive_timeout_ms`, `limits.max_head_bytes`, `limits.max_connections`) and asserts
//! the bounded outcome: the connection closed (or answered, then closed), the close or refusal
//! counted, and a new client still served. The memory test runs the gateway as a process of its
//! own, so that its resident memory and descriptors are the gateway's alone.

use crate::common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long a test waits for something that should happen within a few seconds of a limit.
const WITHIN: Duration = Duration::from_secs(15);

fn gateway(limits: &str) -> (MockUpstream, Gateway) {
    let mock = MockUpstream::start();
    let mut setup = Setup::new(&mock.base_url());
    setup.limits = limits.to_string();
    let gw = Gateway::start(&setup);
    (mock, gw)
}

/// How a connection ended, seen from the client.
#[derive(Debug)]
enum Ending {
    /// The gateway closed it (end of stream or reset) after this long, having sent `answered`.
    Closed { after: Duration, answered: Vec<u8> },
    /// Still open after the whole wait.
    StillOpen { answered: Vec<u8> },
}

/// Sends one byte of `filler` every `every` on `stream` until the gateway closes the
/// connection or `limit` passes; collects whatever the gateway sends meanwhile.
fn trickle_until_closed(stream: &mut TcpStream, filler: u8, every: Duration, limit: Duration) -> Ending {
    watch_until_closed(stream, Some(filler), every, limit)
}

/// Waits up to `limit` for the gateway to close `stream`, sending nothing.
fn wait_closed(stream: &mut TcpStream, limit: Duration) -> Ending {
    watch_until_closed(stream, None, Duration::from_millis(200), limit)
}

/// Reads `stream` in steps of `every` (sending one byte of `filler` before each, when given)
/// until the gateway closes it or `limit` passes.
fn watch_until_closed(stream: &mut TcpStream, filler: Option<u8>, every: Duration, limit: Duration) -> Ending {
    let start = Instant::now();
    let mut answered = Vec::new();
    stream.set_read_timeout(Some(every)).unwrap();
    while start.elapsed() < limit {
        let sent = filler.is_none_or(|b| stream.write_all(&[b]).is_ok());
        let mut buf = [0u8; 4096];
        let closed = !sent
            || match stream.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    answered.extend_from_slice(&buf[..n]);
                    false
                }
                Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            };
        if closed {
            return Ending::Closed {
                after: start.elapsed(),
                answered,
            };
        }
    }
    Ending::StillOpen { answered }
}

/// Asserts `ending` is a silent close that came after at least `not_before`.
fn assert_closed_silently(ending: Ending, not_before: Duration, what: &str) {
    match ending {
        Ending::Closed { after, answered } => {
            assert!(
                answered.is_empty(),
                "{what}: closed, but after sending {:?}",
                String::from_utf8_lossy(&answered)
            );
            assert!(
                after >= not_before,
                "{what}: closed after {after:?}, before {not_before:?}"
            );
        }
        Ending::StillOpen { answered } => panic!(
            "{what}: connection still open after {WITHIN:?} (sent {:?})",
            String::from_utf8_lossy(&answered)
        ),
    }
}

/// The start of a request head whose last header line never ends.
fn unfinished_head(header_bytes: usize) -> Vec<u8> {
    let mut head = b"POST /v1/images/edits HTTP/1.1\r\nHost: gateway.test\r\nX-Padding: ".to_vec();
    head.resize(head.len() + header_bytes, b'a');
    head
}

fn health_request() -> &'static [u8] {
    b"GET /health HTTP/1.1\r\nHost: gateway.test\r\n\r\n"
}

fn closed_metric(gw: &Gateway, reason: &str) -> f64 {
    gw.metric(&format!(
        r#"refract_client_connections_closed_total{{reason="{reason}"}}"#
    ))
}

#[test]
fn a_trickled_head_is_closed_at_the_head_deadline() {
    let (_mock, gw) = gateway("  head_timeout_ms: 1500\n  keepalive_timeout_ms: 60000\n");
    let mut c = TcpStream::connect(gw.addr).unwrap();
    c.write_all(&unfinished_head(1000)).unwrap();
    let ending = trickle_until_closed(&mut c, b'a', Duration::from_millis(300), WITHIN);
    assert_closed_silently(ending, Duration::from_millis(1000), "trickled head");
    assert_eq!(closed_metric(&gw, "head_timeout"), 1.0);
    gw.assert_still_serves();
}

#[test]
fn a_head_over_max_head_bytes_gets_a_431_then_a_close() {
    let (_mock, gw) = gateway("  max_head_bytes: 8192\n");
    // Complete, but too large.
    let mut c = gw.connect();
    let mut head = b"GET /health HTTP/1.1\r\nHost: gateway.test\r\nX-Padding: ".to_vec();
    head.resize(head.len() + 10_000, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    c.send(&head);
    let r = c.read_response();
    assert_gateway_error(&r, 431, "request_header_too_large", "invalid_request_error", None);
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(c.is_closed(), "the connection is closed after the 431");

    // Unfinished, and crossing the limit while it arrives.
    let mut c = gw.connect();
    c.send(&unfinished_head(9000));
    let r = c.read_response();
    assert_eq!(r.status, 431, "{}", r.text());
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(c.is_closed(), "the connection is closed after the 431");

    // Just under the limit: served.
    let mut c = gw.connect();
    let mut head = b"GET /health HTTP/1.1\r\nHost: gateway.test\r\nX-Padding: ".to_vec();
    head.resize(8192 - 4, b'a');
    head.extend_from_slice(b"\r\n\r\n");
    assert_eq!(head.len(), 8192);
    c.send(&head);
    assert_eq!(c.read_response().status, 200);
    assert_eq!(closed_metric(&gw, "head_too_large"), 2.0);
}

#[test]
fn a_slow_but_complete_head_within_the_deadline_is_served() {
    let (_mock, gw) = gateway("  head_timeout_ms: 5000\n");
    let mut c = gw.connect();
    let form = valid_form();
    let head = post_head("/v1/images/edits", &[("x-bf-vk", VK), ("x-slow", "yes")], &form, None);
    // The head in 12 pieces over about 1.2 s, then the body; the first request and the next
    // one on the same connection.
    for round in 0..2 {
        for piece in head.chunks(head.len().div_ceil(12)) {
            c.send(piece);
            std::thread::sleep(Duration::from_millis(100));
        }
        c.send(&form.body());
        let r = c.read_response();
        assert_eq!(r.status, 200, "round {round}: {}", r.text());
    }
    assert_eq!(closed_metric(&gw, "head_timeout"), 0.0);
}

#[test]
fn heads_longer_than_the_first_read_are_read_on_and_their_bodies_kept_whole() {
    // The first read of a head takes at most 1 KiB (what an idle connection holds); heads
    // ending just before, at and past it, and past the first growth, each sent in one piece
    // with its body (so that the first read ends inside the head or inside the body), on one
    // kept-alive connection.
    let (_mock, gw) = gateway("");
    let mut c = gw.connect();
    let form = valid_form();
    let bare = post_head("/v1/images/edits", &[("x-bf-vk", VK), ("x-padding", "")], &form, None).len();
    for head_len in [900, 1023, 1024, 1025, 1100, 3000, 5119, 5121, 9000] {
        let padding = "a".repeat(head_len - bare);
        let head = post_head(
            "/v1/images/edits",
            &[("x-bf-vk", VK), ("x-padding", &padding)],
            &form,
            None,
        );
        assert_eq!(head.len(), head_len);
        let mut request = head;
        request.extend_from_slice(&form.body());
        c.send(&request);
        let r = c.read_response();
        assert_eq!(r.status, 200, "a head of {head_len} bytes: {}", r.text());
    }
}

#[test]
fn idle_connections_are_closed_after_the_keepalive_timeout() {
    let (_mock, gw) = gateway("  keepalive_timeout_ms: 1000\n  head_timeout_ms: 60000\n");
    // Kept alive after one request.
    let mut used = gw.connect();
    used.send(health_request());
    assert_eq!(used.read_response().status, 200);
    // Never sends anything.
    let mut silent = TcpStream::connect(gw.addr).unwrap();
    assert_closed_silently(
        wait_closed(&mut used.stream, WITHIN),
        Duration::from_millis(500),
        "idle keep-alive connection",
    );
    assert_closed_silently(
        wait_closed(&mut silent, WITHIN),
        Duration::ZERO,
        "connection that never sent anything",
    );
    assert_eq!(closed_metric(&gw, "idle_timeout"), 2.0);
    wait_until("no client connection left open", || {
        gw.metric("refract_client_connections") == 0.0
    });
    gw.assert_still_serves();
}

/// Opens a connection and waits until the gateway counts it as open.
fn open_counted(gw: &Gateway, expected_open: f64) -> TcpStream {
    let s = TcpStream::connect(gw.addr).unwrap();
    wait_until(&format!("{expected_open} open client connections"), || {
        gw.metric("refract_client_connections") == expected_open
    });
    s
}

#[test]
fn at_the_cap_the_longest_idle_connection_makes_room_for_a_new_client() {
    let (_mock, gw) = gateway("  max_connections: 20\n  keepalive_timeout_ms: 60000\n");
    // The oldest: idle after one request. Then 19 that never sent anything.
    let mut oldest = gw.connect();
    oldest.send(health_request());
    assert_eq!(oldest.read_response().status, 200);
    // The gateway goes back to waiting on `oldest` just after the answer is out; let it, so
    // that `oldest` is idle before any of the others (an ordering, not a timing assertion).
    std::thread::sleep(Duration::from_millis(500));
    let mut idle: Vec<TcpStream> = (2..=20).map(|n| open_counted(&gw, f64::from(n))).collect();
    assert_eq!(gw.metric("refract_client_connections_max"), 20.0);

    // A new client is served, in place of the oldest idle connection.
    let mut fresh = gw.connect();
    fresh.send(health_request());
    assert_eq!(fresh.read_response().status, 200);
    assert_closed_silently(wait_closed(&mut oldest.stream, WITHIN), Duration::ZERO, "oldest idle");
    assert_eq!(closed_metric(&gw, "evicted"), 1.0);
    assert_eq!(gw.metric("refract_client_connections_refused_total"), 0.0);
    assert_eq!(gw.metric("refract_client_connections"), 20.0);

    // And again: the next one goes (the first of the silent ones), the rest stay.
    let mut fresh2 = gw.connect();
    fresh2.send(health_request());
    assert_eq!(fresh2.read_response().status, 200);
    assert_closed_silently(wait_closed(&mut idle[0], WITHIN), Duration::ZERO, "second oldest");
    assert_eq!(closed_metric(&gw, "evicted"), 2.0);
    for s in &mut idle[1..] {
        assert!(
            matches!(wait_closed(s, Duration::from_millis(50)), Ending::StillOpen { .. }),
            "only the longest-idle connections are closed"
        );
    }
}

#[test]
fn with_every_slot_busy_a_new_connection_gets_a_503_and_a_close() {
    let (_mock, gw) = gateway("  max_connections: 20\n  head_timeout_ms: 60000\n");
    let mut busy = Vec::new();
    // Ten in the middle of their head.
    for n in 1..=10 {
        let mut s = open_counted(&gw, f64::from(n));
        s.write_all(&unfinished_head(100)).unwrap();
        busy.push(s);
    }
    // Ten in the middle of their body.
    let form = valid_form();
    let body = form.body();
    for n in 11..=20 {
        let mut s = open_counted(&gw, f64::from(n));
        s.write_all(&post_head(
            "/v1/images/edits",
            &[("x-bf-vk", VK)],
            &form,
            Some(body.len() + 1000),
        ))
        .unwrap();
        s.write_all(&body[..body.len() / 2]).unwrap();
        busy.push(s);
    }
    wait_until("10 request bodies being read", || {
        gw.metric("refract_requests_in_flight") == 10.0
    });

    let mut c = gw.connect();
    c.send(health_request());
    let r = c.read_response();
    let v = assert_gateway_error(&r, 503, "too_many_connections", "server_error", None);
    assert!(v["error"]["message"].as_str().unwrap().contains("20"), "{v}");
    assert_eq!(r.header("connection").as_deref(), Some("close"));
    assert!(r.header("retry-after").is_some(), "Retry-After is set");
    assert!(c.is_closed(), "the refused connection is closed");
    assert_eq!(gw.metric("refract_client_connections_refused_total"), 1.0);
    assert_eq!(gw.metric("refract_client_connections"), 20.0);

    // Once the busy ones leave, new clients are served again.
    drop(busy);
    wait_until("slots released", || gw.metric("refract_client_connections") == 0.0);
    gw.assert_still_serves();
}

// ---------------------------------------------------------------------------------------------
// Memory: the gateway as a process of its own
// ---------------------------------------------------------------------------------------------

/// A `refract` process on a config file; killed on drop.
struct GatewayProcess {
    child: std::process::Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl GatewayProcess {
    fn start(limits: &str) -> GatewayProcess {
        let addr = free_addr();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("refract.yaml");
        let yaml = format!(
            "server:\n  threads: 2\nlisteners:\n  - address: {addr}\nlimits:\n{limits}providers:
  - name: openai
    kind: openai
    base_url: http://127.0.0.1:9/v1
    keys: [{{name: k, value: sk-upstream-unused}}]
"
        );
        std::fs::write(&path, yaml).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_refract"))
            .arg("-c")
            .arg(&path)
            .env("RUST_LOG", "error")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start refract");
        wait_listening(addr);
        GatewayProcess { child, addr, _dir: dir }
    }

    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    fn open_fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.child.id()))
            .unwrap()
            .count()
    }

    fn health(&self) -> u16 {
        Gateway::get(self.addr, "/health").status
    }
}

#[test]
fn many_trickled_heads_hold_bounded_memory_and_are_all_closed() {
    const CONNECTIONS: usize = 500;
    const HEAD: usize = 60 * 1024;
    let gw = GatewayProcess::start("  head_timeout_ms: 3000\n  keepalive_timeout_ms: 60000\n");
    assert_eq!(gw.health(), 200);
    std::thread::sleep(Duration::from_millis(300));
    let (rss_idle, fds_idle) = (gw.rss_kib(), gw.open_fds());

    let head = unfinished_head(HEAD - 60);
    let started = Instant::now();
    let mut conns: Vec<TcpStream> = (0..CONNECTIONS)
        .map(|_| {
            let mut s = TcpStream::connect(gw.addr).unwrap();
            s.write_all(&head).unwrap();
            s.set_nonblocking(true).unwrap();
            s
        })
        .collect();
    // Every connection sends one more byte a second until the gateway closes it.
    let mut open = vec![true; CONNECTIONS];
    let (mut rss_peak, mut fds_peak) = (0, 0);
    let mut closed_at = None;
    while started.elapsed() < Duration::from_secs(30) {
        for (s, o) in conns.iter_mut().zip(open.iter_mut()).filter(|(_, o)| **o) {
            let mut buf = [0u8; 1024];
            match s.read(&mut buf) {
                Ok(0) => *o = false,
                Ok(n) => panic!("answered a trickled head: {:?}", String::from_utf8_lossy(&buf[..n])),
                Err(e) if e.kind() == ErrorKind::WouldBlock => match s.write(b"a") {
                    Ok(_) => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    Err(_) => *o = false,
                },
                Err(_) => *o = false,
            }
        }
        rss_peak = rss_peak.max(gw.rss_kib());
        fds_peak = fds_peak.max(gw.open_fds());
        if open.iter().all(|o| !o) {
            closed_at = Some(started.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    std::thread::sleep(Duration::from_millis(300));
    let (rss_end, fds_end) = (gw.rss_kib(), gw.open_fds());
    let still_open = open.iter().filter(|o| **o).count();
    eprintln!(
        "{CONNECTIONS} trickled heads of {} KiB: gateway RSS idle {rss_idle} KiB, peak {rss_peak} KiB \
         (+{} KiB, {} KiB a connection), after {rss_end} KiB; open fds idle {fds_idle}, peak {fds_peak}, \
         after {fds_end}; all closed after {closed_at:?} ({still_open} still open)",
        HEAD / 1024,
        rss_peak.saturating_sub(rss_idle),
        rss_peak.saturating_sub(rss_idle) / CONNECTIONS as u64,
    );
    assert!(
        fds_peak >= fds_idle + CONNECTIONS / 2,
        "the connections were open at once"
    );
    assert_eq!(still_open, 0, "every trickled head is closed at its deadline");
    // 60 KiB of head each, held in a buffer of at most twice max_head_bytes: generous bound.
    assert!(
        rss_peak - rss_idle < (CONNECTIONS * 3 * HEAD / 1024) as u64,
        "memory per trickled head is bounded"
    );
    assert!(
        fds_end <= fds_idle + 5,
        "descriptors back near idle: {fds_idle} -> {fds_end}"
    );
    assert_eq!(gw.health(), 200);
    drop(conns);
}
