//! Shared pieces of the benchmarks: a fixed-answer mock upstream, a bare Pingora pass-through
//! hop (the baseline every gateway figure is compared with), body builders and process helpers.

#![allow(dead_code)]

use async_trait::async_trait;
use bytes::Bytes;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, ShutdownSignal, ShutdownSignalWatch};
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A port that was free a moment ago, for a server that binds it later: taken below the
/// kernel's ephemeral range, so a mock binding port 0 meanwhile cannot be given the same one.
pub fn free_port() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|v| v.parse::<u16>().ok()))
        .unwrap_or(32768);
    loop {
        let port = if low > 12000 {
            10000 + fastrand::u16(..low - 10000)
        } else {
            TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or(0)
        };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Waits until something accepts on `port`.
pub fn wait_for_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A PNG of random pixels of about `bytes` bytes (random pixels do not compress).
pub fn noise_png(bytes: usize) -> Vec<u8> {
    let side = ((bytes / 4) as f64).sqrt().max(1.0) as u32;
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let pixels: Vec<u8> = (0..side as usize * side as usize * 4)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    let mut out = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut out, side, side);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        enc.set_compression(png::Compression::Fast);
        let mut w = enc.write_header().expect("png header");
        w.write_image_data(&pixels).expect("png data");
    }
    out
}

/// The multipart boundary of the benchmark bodies.
pub const BOUNDARY: &str = "refractbenchboundary7d1f";

/// An image-edit multipart body; `model_last` puts `model` after the image.
pub fn edit_body(model: &str, image: &[u8], model_last: bool) -> Vec<u8> {
    let field = |name: &str, value: &str| {
        format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n").into_bytes()
    };
    let mut body = Vec::with_capacity(image.len() + 1024);
    if !model_last {
        body.extend(field("model", model));
    }
    body.extend(field("prompt", "paint the sky"));
    body.extend(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\nContent-Type: image/png\r\n\r\n"
        )
        .bytes(),
    );
    body.extend_from_slice(image);
    body.extend_from_slice(b"\r\n");
    if model_last {
        body.extend(field("model", model));
    }
    body.extend(format!("--{BOUNDARY}--\r\n").bytes());
    body
}

/// An OpenAI `ImagesResponse` carrying `image` as base64.
pub fn images_response(image: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    format!(
        r#"{{"created":1713833628,"data":[{{"b64_json":"{b64}"}}],"background":"opaque","output_format":"png","quality":"auto","size":"1024x1024","usage":{{"input_tokens":10,"input_tokens_details":{{"image_tokens":5,"text_tokens":5}},"output_tokens":10,"total_tokens":20}}}}"#
    )
    .into_bytes()
}

/// A Gemini `GenerateContentResponse` carrying `image` as its one inlineData part.
pub fn gemini_response(image: &[u8]) -> Vec<u8> {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(image);
    format!(
        r#"{{"candidates":[{{"content":{{"role":"model","parts":[{{"inlineData":{{"mimeType":"image/png","data":"{b64}"}}}}]}},"finishReason":"STOP","index":0}}],"usageMetadata":{{"promptTokenCount":265,"candidatesTokenCount":1290,"totalTokenCount":1555}}}}"#
    )
    .into_bytes()
}

/// Starts a mock upstream on its own thread and runtime: it reads each HTTP/1.1 request
/// (Content-Length or chunked body, discarded) and answers `answer` as JSON, keep-alive.
pub fn start_mock(answer: Vec<u8>, threads: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind mock");
    let port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    listener.set_nonblocking(true).expect("nonblocking");
    let answer = Bytes::from(answer);
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let answer = answer.clone();
                tokio::spawn(async move {
                    let _ = serve_mock_connection(stream, answer).await;
                });
            }
        });
    });
    port
}

async fn serve_mock_connection(mut stream: tokio::net::TcpStream, answer: Bytes) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let head = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
        answer.len()
    );
    let mut buf = vec![0u8; 256 * 1024];
    let mut filled = 0usize;
    loop {
        // read a head
        let (head_len, body_len, chunked) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf[..filled]) {
                let mut len = 0usize;
                let mut chunked = false;
                let mut expect = false;
                for h in req.headers.iter() {
                    if h.name.eq_ignore_ascii_case("content-length") {
                        len = std::str::from_utf8(h.value)
                            .ok()
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        chunked = true;
                    } else if h.name.eq_ignore_ascii_case("expect") {
                        expect = true;
                    }
                }
                if expect {
                    stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await?;
                }
                break (n, len, chunked);
            }
            if filled == buf.len() {
                return Ok(());
            }
            let n = stream.read(&mut buf[filled..]).await?;
            if n == 0 {
                return Ok(());
            }
            filled += n;
        };
        // consume the body
        buf.copy_within(head_len..filled, 0);
        filled -= head_len;
        if chunked {
            // read until the terminating chunk
            let mut window: Vec<u8> = buf[..filled].to_vec();
            filled = 0;
            while !window.ends_with(b"0\r\n\r\n") {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                window.extend_from_slice(&buf[..n]);
                if window.len() > 16 {
                    window.drain(..window.len() - 16);
                }
            }
        } else {
            let mut left = body_len;
            let have = filled.min(left);
            left -= have;
            buf.copy_within(have..filled, 0);
            filled -= have;
            while left > 0 {
                let n = stream.read(&mut buf[..left.min(256 * 1024)]).await?;
                if n == 0 {
                    return Ok(());
                }
                left -= n;
            }
        }
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&answer).await?;
    }
}

/// The bare Pingora hop: a stock `ProxyHttp` pass-through to one upstream, nothing else.
pub struct BareHop {
    upstream: SocketAddr,
}

#[async_trait]
impl ProxyHttp for BareHop {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(&self, _s: &mut Session, _c: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.upstream, false, String::new())))
    }
}

struct Never(Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for Never {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().ok().and_then(|mut g| g.take());
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

/// Runs a bare Pingora hop on `port` to `upstream_port` with `threads` worker threads, until
/// the process exits (blocks).
fn run_bare_hop(upstream_port: u16, port: u16, threads: usize) {
    let conf = ServerConf {
        threads,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..Default::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut svc = pingora::proxy::http_proxy_service(
        &server.configuration,
        BareHop {
            upstream: SocketAddr::from(([127, 0, 0, 1], upstream_port)),
        },
    );
    svc.add_tcp(&format!("127.0.0.1:{port}"));
    server.add_service(svc);
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    std::mem::forget(tx);
    server.run(RunArgs {
        shutdown_signal: Box::new(Never(Mutex::new(Some(rx)))),
    });
}

/// Starts a bare Pingora hop to `upstream_port` with `threads` worker threads in this process;
/// returns its port. The server runs until the process exits.
pub fn start_bare_hop(upstream_port: u16, threads: usize) -> u16 {
    let port = free_port();
    std::thread::spawn(move || run_bare_hop(upstream_port, port, threads));
    wait_for_port(port);
    port
}

/// Set in a bench binary's environment (`upstream_port,port,threads`) to make it serve the bare
/// hop instead of benchmarking: see [`spawn_bare_hop_process`].
pub const HOP_ROLE: &str = "REFRACT_BENCH_HOP";

/// Serves the bare hop forever when this process was started as one ([`HOP_ROLE`]); returns at
/// once otherwise. Call it first in a bench's `main`.
pub fn serve_hop_role() {
    let Ok(spec) = std::env::var(HOP_ROLE) else { return };
    let n: Vec<u16> = spec.split(',').filter_map(|v| v.parse().ok()).collect();
    let [upstream_port, port, threads] = n[..] else {
        panic!("{HOP_ROLE}={spec}: expected upstream_port,port,threads");
    };
    run_bare_hop(upstream_port, port, usize::from(threads));
    std::process::exit(0);
}

/// Starts a bare Pingora hop to `upstream_port` in a process of its own (this bench binary
/// again, in the [`HOP_ROLE`]), as the gateway runs in one: the baseline then pays the same
/// cross-process switches as the gateway. Killed on drop.
pub fn spawn_bare_hop_process(upstream_port: u16, threads: usize) -> GatewayProcess {
    let port = free_port();
    let child = std::process::Command::new(std::env::current_exe().expect("bench binary"))
        .env(HOP_ROLE, format!("{upstream_port},{port},{threads}"))
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start the hop process");
    wait_for_port(port);
    GatewayProcess { child, port }
}

/// Writes a temp file and returns its path (kept until the process ends).
pub fn temp_file(name: &str, contents: &[u8]) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("refract-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join(name);
    let mut f = std::fs::File::create(&path).expect("temp file");
    f.write_all(contents).expect("write temp file");
    path
}

/// A gateway process (the release `refract` binary) on a config pointing at the mock.
pub struct GatewayProcess {
    /// The child process.
    pub child: std::process::Child,
    /// The gateway's port.
    pub port: u16,
}

impl Drop for GatewayProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `refract -c <tmp config>` with one provider `bench` (kind openai) at the mock and the
/// virtual key `sk-bf-bench`.
pub fn start_gateway(upstream_port: u16, threads: usize, spool_memory: usize) -> GatewayProcess {
    start_gateway_of_kind(upstream_port, threads, spool_memory, "openai", "/v1")
}

/// As [`start_gateway`], running the `refract` binary at `bin` (another build, for A/B runs).
pub fn start_gateway_binary(
    bin: &std::path::Path,
    upstream_port: u16,
    threads: usize,
    spool_memory: usize,
) -> GatewayProcess {
    let port = free_port();
    let yaml = gateway_yaml(port, upstream_port, threads, spool_memory, "openai", "/v1");
    let process = spawn_refract_binary(bin, &yaml, &format!("gateway-{port}.yaml"), port);
    wait_for_port(port);
    process
}

/// The configuration of [`start_gateway_of_kind`].
fn gateway_yaml(
    port: u16,
    upstream_port: u16,
    threads: usize,
    spool_memory: usize,
    kind: &str,
    base_path: &str,
) -> String {
    format!(
        r#"
server: {{ threads: {threads}, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0 }}
listeners: [{{ address: "127.0.0.1:{port}" }}]
limits: {{ max_body_bytes: 104857600, max_part_bytes: 52428800 }}
spool: {{ memory_bytes: {spool_memory} }}
providers:
  - name: bench
    kind: {kind}
    base_url: http://127.0.0.1:{upstream_port}{base_path}
    keys: [{{ name: k, value: bench-upstream-key }}]
virtual_keys:
  - {{ id: bench, key: sk-bf-bench }}
"#
    )
}

/// As [`start_gateway`], the key `bench` governed (`key_settings`, e.g. a budget and rate
/// limits) on an embedded store in a fresh directory.
pub fn start_governed_gateway(upstream_port: u16, threads: usize, key_settings: &str) -> GatewayProcess {
    let port = free_port();
    let store = std::env::temp_dir().join(format!("refract-bench-gov-{port}"));
    let _ = std::fs::remove_dir_all(&store);
    let yaml = gateway_yaml(port, upstream_port, threads, 1 << 20, "openai", "/v1").replace(
        "  - { id: bench, key: sk-bf-bench }\n",
        &format!(
            "  - {{ id: bench, key: sk-bf-bench, {key_settings} }}\nstore: {{ kind: embedded, path: {} }}\n",
            store.display()
        ),
    );
    let process = spawn_refract(&yaml, &format!("gateway-{port}.yaml"), port);
    wait_for_port(port);
    process
}

/// As [`start_gateway`], with provider `bench` of `kind` at the mock's `base_path`.
pub fn start_gateway_of_kind(
    upstream_port: u16,
    threads: usize,
    spool_memory: usize,
    kind: &str,
    base_path: &str,
) -> GatewayProcess {
    let port = free_port();
    let yaml = gateway_yaml(port, upstream_port, threads, spool_memory, kind, base_path);
    let process = spawn_refract(&yaml, &format!("gateway-{port}.yaml"), port);
    wait_for_port(port);
    process
}

/// Starts the release `refract` binary on `yaml` (written to a temp file called `name`);
/// `port` is the listener the caller will use. The process is killed on drop.
pub fn spawn_refract(yaml: &str, name: &str, port: u16) -> GatewayProcess {
    spawn_refract_binary(std::path::Path::new(env!("CARGO_BIN_EXE_refract")), yaml, name, port)
}

/// As [`spawn_refract`], running the binary at `bin`.
pub fn spawn_refract_binary(bin: &std::path::Path, yaml: &str, name: &str, port: u16) -> GatewayProcess {
    let path = temp_file(name, yaml.as_bytes());
    let child = std::process::Command::new(bin)
        .arg("-c")
        .arg(&path)
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start refract");
    GatewayProcess { child, port }
}

/// The median of some figures (NaN when there are none).
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        f64::NAN
    } else {
        v[v.len() / 2]
    }
}
/// Peak resident set size (VmHWM) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) a process has used so far, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is the first, utime the 12th.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let ticks: u64 = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse::<u64>().ok())
        .sum();
    ticks as f64 / clock_ticks_per_second()
}

fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// Current resident set size (VmRSS) of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The environment variable `name` parsed as a `T`, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Whether this run measures: `cargo bench` passes `--bench`, while `cargo test --all-targets`
/// runs bench binaries too and must not (it then says the benchmark was skipped).
pub fn measuring() -> bool {
    let yes = std::env::args().any(|a| a == "--bench");
    if !yes {
        println!("benchmark skipped: run it with `cargo bench --bench NAME`");
    }
    yes
}
