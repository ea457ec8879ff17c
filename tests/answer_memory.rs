//! The heap a large converted answer costs the gateway, in a test binary of its own (a
//! counting allocator that keeps the peak of live heap bytes): the provider's answer is read
//! whole (so that a bad answer can still become a clean error or fall back), and the unified
//! answer is written to the client from that buffer, its images shared, not copied into a
//! second full buffer. So the peak heap of one request is about 1× the provider's answer, where
//! it was 2× (the answer, then its converted copy).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::*;
use serde_json::Value;
use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

/// The system allocator, counting the bytes currently allocated and the most at once.
struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);
static PEAK: AtomicI64 = AtomicI64::new(0);
/// The tests measure one at a time (the counters are the process's).
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn grew(by: i64) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as i64);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        grew(layout.size() as i64);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        grew(new_size as i64 - layout.size() as i64);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// An upstream that answers every request with `answer` (a complete HTTP response, built
/// before the measurement), one request per connection: it allocates nothing per answer.
fn fixed_upstream(answer: Arc<Vec<u8>>) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let answer = answer.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
                // The request: its head, then Content-Length bytes (small uploads are sent whole).
                let mut buf = [0u8; 64 * 1024];
                let mut seen = Vec::with_capacity(64 * 1024);
                let body_len = loop {
                    let Ok(n) = stream.read(&mut buf) else { return };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        break len.saturating_sub(seen.len() - end - 4);
                    }
                };
                let mut left = body_len;
                while left > 0 {
                    match stream.read(&mut buf[..left.min(64 * 1024)]) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => left -= n,
                    }
                }
                let _ = stream.write_all(&answer);
            });
        }
    });
    addr
}

/// `body` as a complete HTTP/1.1 JSON answer that closes its connection.
fn http_answer(body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// Sends `form` and reads the whole answer into `into` (allocated by the caller, large enough:
/// reading allocates nothing).
fn edit(gateway: &Gateway, form: &Form, into: &mut Vec<u8>) {
    into.clear();
    let mut s = TcpStream::connect(gateway.addr).unwrap();
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut head = post_head("/v1/images/edits", &[("x-bf-vk", VK)], form, None);
    head.splice(head.len() - 2..head.len() - 2, b"Connection: close\r\n".iter().copied());
    s.write_all(&head).unwrap();
    s.write_all(&form.body()).unwrap();
    s.read_to_end(into).unwrap();
}

/// The peak heap (over what was live before) while the gateway answers one edit whose
/// provider answer is `provider_answer`, and the client's answer body.
fn peak_while_answering(kind: &str, provider_answer: &[u8]) -> (i64, Value) {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let upstream = fixed_upstream(Arc::new(http_answer(provider_answer)));
    let mut setup = Setup::new(&format!("http://{upstream}/v1"));
    setup.extra_providers = format!(
        "  - name: gem\n    kind: gemini\n    base_url: http://{upstream}/v1beta\n    keys:\n      - {{name: g, value: gk}}\n"
    );
    let gateway = Gateway::start(&setup);
    let model = if kind == "gemini" {
        "gem/gemini-2.5-flash-image"
    } else {
        "openai/gpt-image-1"
    };
    let form = Form::new()
        .text("model", model)
        .text("prompt", "p")
        .file("image", "in.png", "image/png", &tiny_png());
    let mut answer = Vec::with_capacity(provider_answer.len() * 2 + (1 << 20));
    // The first request warms up what is made once (pools, metrics series, lazy state).
    edit(&gateway, &form, &mut answer);
    assert!(
        answer.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&answer[..200])
    );
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = LIVE.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    edit(&gateway, &form, &mut answer);
    let peak = PEAK.load(Ordering::SeqCst) - before;
    let body_at = answer.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    assert!(answer.starts_with(b"HTTP/1.1 200"));
    (peak, serde_json::from_slice(&answer[body_at..]).unwrap())
}

/// Asserts that the gateway answered `b64` (the provider's image, in `provider_answer`, a
/// `kind` answer) with a peak heap of less than 1.5× the provider's answer.
fn assert_answered_without_a_copy(kind: &str, provider_answer: &str, b64: &str) {
    let (peak, answer) = peak_while_answering(kind, provider_answer.as_bytes());
    assert_eq!(answer["data"][0]["b64_json"].as_str(), Some(b64));
    assert!(answer["extra_fields"]["provider"].is_string());
    let ratio = peak as f64 / provider_answer.len() as f64;
    println!(
        "{kind}: {} MB answer, peak heap {:.1} MB ({ratio:.2}x)",
        provider_answer.len() / 1_000_000,
        peak as f64 / 1e6
    );
    assert!(
        ratio < 1.5,
        "peak heap {peak} bytes for a {} byte answer ({ratio:.2}x)",
        provider_answer.len()
    );
}

/// A 16 MB OpenAI answer costs the gateway about one answer of heap, not two.
#[test]
fn a_large_openai_answer_is_not_copied() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(big_png_like(12 << 20, 3));
    let body = format!(r#"{{"created":1,"data":[{{"b64_json":"{b64}"}}],"usage":{{"total_tokens":1}}}}"#);
    assert_answered_without_a_copy("openai", &body, &b64);
}

/// The same for a Gemini answer (`inlineData.data`).
#[test]
fn a_large_gemini_answer_is_not_copied() {
    let b64 = base64::engine::general_purpose::STANDARD.encode(big_png_like(12 << 20, 4));
    let body = format!(
        r#"{{"candidates":[{{"content":{{"parts":[{{"inlineData":{{"mimeType":"image/png","data":"{b64}"}}}}]}},"finishReason":"STOP"}}]}}"#
    );
    assert_answered_without_a_copy("gemini", &body, &b64);
}
