//! Allocation benchmark: heap allocations per image edit, counted by a global allocator around
//! a gateway running in this process (logging set up as the binary does it, at `LOG`, default
//! `info`: one access record per request), one keep-alive client connection and a mock
//! upstream whose answers allocate nothing. The client and the mock read into buffers made
//! before the measurement, so what is counted is the gateway's work: parse, spool, translate,
//! exchange, convert, answer, account.
//!
//! Run: `cargo bench --bench allocs`. Environment: `REQUESTS` (default 2000), `KB` (the edit's
//! image size, default 64), `LOG` (`info`, or `warn` as the load bench's processes run).
//! Deterministic enough to compare builds without a quiet machine (a few allocations of
//! Pingora's timers and tokio's wake-ups vary per run).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // bench code: failing loudly is the point

#[path = "support/mod.rs"]
mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use support::*;

/// The system allocator, counting calls and bytes.
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);
static REALLOCS: AtomicU64 = AtomicU64::new(0);
static BYTES: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(layout.size() as u64, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        REALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(new_size.saturating_sub(layout.size()) as u64, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// One keep-alive client: the request made once, the answer read into a buffer made once.
struct Client {
    stream: TcpStream,
    request: Vec<u8>,
    answer: Vec<u8>,
}

impl Client {
    fn new(port: u16, body: &[u8], answer_capacity: usize) -> Client {
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        stream.set_read_timeout(Some(Duration::from_secs(30))).expect("timeout");
        let mut request = format!(
            "POST /v1/images/edits HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer sk-bf-bench\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        request.extend_from_slice(body);
        Client {
            stream,
            request,
            answer: vec![0; answer_capacity],
        }
    }

    /// Sends the edit and reads its whole answer; the status must be 200.
    fn edit(&mut self) {
        self.stream.write_all(&self.request).expect("send");
        let mut filled = 0;
        loop {
            let n = self.stream.read(&mut self.answer[filled..]).expect("read");
            assert!(n > 0, "the gateway closed the connection");
            filled += n;
            let Some(head_end) = self.answer[..filled].windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let head = &self.answer[..head_end];
            assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(head));
            let length = content_length(head).expect("content-length");
            while filled < head_end + 4 + length {
                let n = self.stream.read(&mut self.answer[filled..]).expect("read body");
                assert!(n > 0, "the gateway closed the connection mid-answer");
                filled += n;
            }
            return;
        }
    }
}

fn content_length(head: &[u8]) -> Option<usize> {
    std::str::from_utf8(head).ok()?.split("\r\n").find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse().ok())
            .flatten()
    })
}

fn main() {
    if !measuring() {
        return;
    }
    let requests: u64 = std::env::var("REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2000);
    let kb: usize = env_or("KB", 64);
    let level = std::env::var("LOG").unwrap_or_else(|_| "info".to_string());
    let image = noise_png(kb * 1024);
    let answer = images_response(&image);
    let mock = start_mock(answer.clone(), 1);
    let port = free_port();
    let metrics = free_port();
    let store = std::env::temp_dir().join(format!("refract-bench-allocs-{port}"));
    let yaml = format!(
        r#"
server: {{ threads: 1, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}
listeners: [{{ address: "127.0.0.1:{port}" }}]
metrics: {{ address: "127.0.0.1:{metrics}" }}
log: {{ level: {level} }}
store: {{ kind: embedded, path: {store} }}
objects: {{ kind: fs, path: {store}/objects }}
providers:
  - name: bench
    kind: openai
    base_url: http://127.0.0.1:{mock}/v1
    keys: [{{ name: k, value: bench-upstream-key }}]
virtual_keys:
  - {{ id: bench, key: sk-bf-bench }}
"#,
        store = store.display()
    );
    let config = refract::config::from_yaml_str_with_env(&yaml, &|_| None).expect("config");
    // The binary's logging: the access records are formatted and written (to a sink here).
    let _telemetry = refract::telemetry::init(&config.log, None).expect("telemetry");
    let _server = refract::server::spawn(config).expect("gateway");
    wait_for_port(port);
    wait_for_port(mock);
    let body = edit_body("bench/gpt-image-1", &image, false);
    let mut client = Client::new(port, &body, answer.len() * 2 + (1 << 20));
    // Warm-up: pools, metric series, lazily made state, buffers that grow once.
    for _ in 0..200 {
        client.edit();
    }
    std::thread::sleep(Duration::from_millis(200));
    let (allocs, reallocs, bytes) = (
        ALLOCS.load(Ordering::SeqCst),
        REALLOCS.load(Ordering::SeqCst),
        BYTES.load(Ordering::SeqCst),
    );
    let start = Instant::now();
    for _ in 0..requests {
        client.edit();
    }
    let elapsed = start.elapsed();
    let per = |now: &AtomicU64, before: u64| (now.load(Ordering::SeqCst) - before) as f64 / requests as f64;
    println!(
        "allocs: {kb} KB edit, {requests} requests on one connection, log {level}: {:.1} allocations, {:.1} reallocations, {:.1} KB allocated per request ({:.0} µs per request, unloaded)",
        per(&ALLOCS, allocs),
        per(&REALLOCS, reallocs),
        per(&BYTES, bytes) / 1024.0,
        elapsed.as_secs_f64() * 1e6 / requests as f64
    );
    let _ = std::fs::remove_dir_all(&store);
}
