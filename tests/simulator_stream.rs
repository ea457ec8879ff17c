//! The built-in simulator's streamed answer (`stream=true`) on the wire: a real server started
//! through `refract::server::spawn`, read as raw bytes so the chunked framing, the event order,
//! the pacing and the truncate hook are all visible.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use common::{free_addr, post_head, tiny_png, wait_listening, Form, IO_TIMEOUT};
use refract::config::from_yaml_str_with_env;
use refract::server::RunningServer;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A server whose only interesting part is the simulator, pacing events `interval_ms` apart.
fn start_simulator(interval_ms: u64) -> (SocketAddr, RunningServer) {
    let (listen, sim) = (free_addr(), free_addr());
    let yaml = format!(
        "server:
  threads: 2
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 0
listeners:
  - address: {listen}
simulator:
  address: {sim}
  stream_interval_ms: {interval_ms}
providers:
  - name: demo
    kind: openai
    base_url: http://{sim}/v1
    keys:
      - {{name: sim, value: sim-key}}
"
    );
    let config = from_yaml_str_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("config:\n{e}\n{yaml}"));
    let server = refract::server::spawn(config).expect("spawn");
    wait_listening(sim);
    (sim, server)
}

/// A raw connection that reads the response head, then one chunk at a time, noting when each
/// chunk was complete.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Raw {
    fn post(addr: SocketAddr, form: &Form) -> Raw {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .write_all(&post_head(
                "/v1/images/edits",
                &[("Authorization", "Bearer sim-key")],
                form,
                None,
            ))
            .unwrap();
        stream.write_all(&form.body()).unwrap();
        Raw {
            stream,
            buf: Vec::new(),
        }
    }

    /// Reads more; 0 at end of stream.
    fn fill(&mut self) -> usize {
        let mut tmp = [0u8; 64 * 1024];
        match self.stream.read(&mut tmp) {
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                n
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                panic!("no data within {IO_TIMEOUT:?}")
            }
            Err(_) => 0,
        }
    }

    /// Status and headers (names lowercased).
    fn head(&mut self) -> (u16, Vec<(String, String)>) {
        loop {
            let mut hs = [httparse::EMPTY_HEADER; 32];
            let mut resp = httparse::Response::new(&mut hs);
            if let httparse::Status::Complete(n) = resp.parse(&self.buf).unwrap() {
                let headers = resp
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let status = resp.code.unwrap();
                self.buf.drain(..n);
                return (status, headers);
            }
            assert!(self.fill() > 0, "closed before the response head");
        }
    }

    /// The next chunk's data and when it was complete; `None` if the connection closes first.
    /// The last chunk (size 0) comes back empty, its trailer section consumed.
    fn chunk(&mut self) -> Option<(Vec<u8>, Instant)> {
        let line_end = loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if self.fill() == 0 {
                return None;
            }
        };
        let size_line = String::from_utf8(self.buf[..line_end].to_vec()).unwrap();
        let size =
            usize::from_str_radix(size_line.trim(), 16).unwrap_or_else(|_| panic!("bad size line {size_line:?}"));
        while self.buf.len() < line_end + 2 + size + 2 {
            if self.fill() == 0 {
                return None;
            }
        }
        let at = Instant::now();
        let data = self.buf[line_end + 2..line_end + 2 + size].to_vec();
        assert_eq!(
            &self.buf[line_end + 2 + size..line_end + 4 + size],
            b"\r\n",
            "chunk not followed by CRLF"
        );
        self.buf.drain(..line_end + 4 + size);
        Some((data, at))
    }

    /// True when the server closes the connection with nothing more sent.
    fn closed(&mut self) -> bool {
        assert!(
            self.buf.is_empty(),
            "unread bytes: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.fill() == 0 && self.buf.is_empty()
    }
}

fn stream_form(prompt: &str, n: u32, partial_images: u32) -> Form {
    Form::new()
        .text("model", "sim-image-1")
        .text("prompt", prompt)
        .text("n", &n.to_string())
        .text("stream", "true")
        .text("partial_images", &partial_images.to_string())
        .file("image", "in.png", "image/png", &tiny_png())
}

/// Splits one whole event `event: NAME\ndata: JSON\n\n`.
fn parse_event(chunk: &[u8]) -> (String, Value) {
    let text = std::str::from_utf8(chunk).unwrap();
    let body = text
        .strip_suffix("\n\n")
        .unwrap_or_else(|| panic!("event does not end with a blank line: {text:?}"));
    let (event_line, data_line) = body.split_once('\n').unwrap();
    let name = event_line.strip_prefix("event: ").unwrap().to_string();
    let data = serde_json::from_str(data_line.strip_prefix("data: ").unwrap()).unwrap();
    (name, data)
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

#[test]
fn streams_one_event_per_chunk_paced_by_the_interval() {
    let (sim, _server) = start_simulator(50);
    let sent = Instant::now();
    let mut raw = Raw::post(sim, &stream_form("paint it", 1, 2));
    let (status, headers) = raw.head();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "content-type"), Some("text/event-stream"));
    assert_eq!(header(&headers, "cache-control"), Some("no-cache"));
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    assert_eq!(header(&headers, "content-length"), None);

    let mut events = Vec::new();
    loop {
        let (data, at) = raw.chunk().expect("the body ends with the last chunk");
        if data.is_empty() {
            break;
        }
        let (name, json) = parse_event(&data);
        assert_eq!(json["type"], name.as_str());
        events.push((name, json, at));
    }
    let names: Vec<&str> = events.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "image_edit.partial_image",
            "image_edit.partial_image",
            "image_edit.completed"
        ]
    );
    assert_eq!(events[0].1["partial_image_index"], 0);
    assert_eq!(events[1].1["partial_image_index"], 1);
    assert_eq!(events[2].1["size"], "4x4");
    assert!(events[2].1["usage"]["total_tokens"].as_u64().unwrap() > 0);
    // 50 ms before each event: the first after ≥ 50 ms, the last ≥ 100 ms after the first
    let first = events[0].2.duration_since(sent);
    let spread = events[2].2.duration_since(events[0].2);
    assert!(first >= Duration::from_millis(45), "first event after {first:?}");
    assert!(
        spread >= Duration::from_millis(100),
        "events spread over {spread:?} only"
    );

    // The connection is reusable after a complete stream (an empty form: 400, model missing).
    assert!(raw.buf.is_empty());
    let empty = Form::new();
    raw.stream
        .write_all(&post_head(
            "/v1/images/edits",
            &[("Authorization", "Bearer k")],
            &empty,
            None,
        ))
        .unwrap();
    raw.stream.write_all(&empty.body()).unwrap();
    let (status, headers) = raw.head();
    assert_eq!(status, 400);
    assert_eq!(header(&headers, "content-type"), Some("application/json"));
}

#[test]
fn truncate_hook_ends_the_body_mid_event() {
    let (sim, _server) = start_simulator(0);
    let mut raw = Raw::post(sim, &stream_form("simulate-stream-truncate:1", 1, 1));
    let (status, headers) = raw.head();
    assert_eq!(status, 200);
    assert_eq!(header(&headers, "transfer-encoding"), Some("chunked"));
    let (first, _) = raw.chunk().unwrap();
    assert_eq!(parse_event(&first).0, "image_edit.partial_image");
    let (half, _) = raw.chunk().unwrap();
    let half = String::from_utf8(half).unwrap();
    assert!(
        half.starts_with("event: image_edit.completed\ndata: {\"type\":\"image_edit.completed\""),
        "{half:?}"
    );
    assert!(!half.ends_with('\n'), "the event must be cut: {half:?}");
    // then the body ends (last chunk) and the connection closes
    let (last, _) = raw.chunk().expect("a last chunk");
    assert!(last.is_empty());
    assert!(raw.closed());
}

#[test]
fn a_client_leaving_mid_stream_does_not_hurt_the_simulator() {
    let (sim, _server) = start_simulator(20);
    for _ in 0..3 {
        let mut raw = Raw::post(sim, &stream_form("bye", 2, 3));
        assert_eq!(raw.head().0, 200);
        let (data, _) = raw.chunk().unwrap();
        assert_eq!(parse_event(&data).0, "image_edit.partial_image");
        drop(raw);
    }
    std::thread::sleep(Duration::from_millis(100));
    let mut raw = Raw::post(sim, &stream_form("still here", 1, 0));
    assert_eq!(raw.head().0, 200);
    let (data, _) = raw.chunk().unwrap();
    assert_eq!(parse_event(&data).0, "image_edit.completed");
    assert!(raw.chunk().unwrap().0.is_empty());
}
