//! Shared harness for the end-to-end tests: an in-process gateway on runtime-picked ports, a
//! scripted mock upstream that records every byte it receives, a raw HTTP/1.1 client that can
//! send odd bytes, and a multipart form builder.
//!
//! Everything here is plain std threads and blocking sockets; nothing touches the internet.

#![allow(dead_code)]

pub mod engines;
pub mod faults;
pub mod process;
pub mod wire;

use refract::config::from_yaml_str_with_env;
use refract::server::RunningServer;
use serde_json::Value;
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The provider key the gateway's config gives the `openai` provider.
pub const PROVIDER_KEY: &str = "sk-upstream-PROVIDERKEY-0123456789";
/// The provider key of the second provider, `other`.
pub const OTHER_PROVIDER_KEY: &str = "sk-upstream-OTHERKEY-9876543210";
/// A virtual key allowed everything.
pub const VK: &str = "sk-bf-team-a-VIRTUALKEY-1";
/// A virtual key limited to `openai/gpt-image-1`.
pub const VK_RESTRICTED: &str = "sk-bf-restricted-VIRTUALKEY-2";
/// A disabled virtual key.
pub const VK_DISABLED: &str = "sk-bf-disabled-VIRTUALKEY-3";

/// How long any single socket read may block before a test fails instead of hanging.
pub const IO_TIMEOUT: Duration = Duration::from_secs(20);

/// A free loopback address for a server the test starts by address (the gateway binds it
/// itself, later). It is taken below the kernel's ephemeral range, so a mock that binds port 0
/// in the meantime can never be handed the same port; and never twice in one test process.
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|v| v.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (low, high) = if ephemeral_low > 12000 {
        (10000u16, ephemeral_low)
    } else {
        (0, 0)
    };
    loop {
        let addr = if high > low {
            SocketAddr::from(([127, 0, 0, 1], low + fastrand::u16(..high - low)))
        } else {
            // An unusual ephemeral range: fall back to a kernel-chosen port.
            let l = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
            l.local_addr().expect("local addr")
        };
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.contains(&addr.port()) || TcpListener::bind(addr).is_err() {
            continue;
        }
        given.push(addr.port());
        return addr;
    }
}

/// Waits up to 5 s until `done` holds; fails the test with `what` otherwise.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !done() {
        assert!(Instant::now() < deadline, "not within 5 s: {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts `command` with its stderr piped into the returned log, which a thread fills line by
/// line as the process writes them (for a test that reads what a `refract` process logged).
pub fn spawn_logging(command: &mut std::process::Command) -> (std::process::Child, Arc<Mutex<String>>) {
    use std::io::BufRead;
    let mut child = command
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start the process");
    let log = Arc::new(Mutex::new(String::new()));
    let stderr = child.stderr.take().expect("piped stderr");
    let sink = log.clone();
    std::thread::spawn(move || {
        for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
            let mut log = sink.lock().unwrap_or_else(|e| e.into_inner());
            log.push_str(&line);
            log.push('\n');
        }
    });
    (child, log)
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        assert!(Instant::now() < deadline, "nothing listens on {addr} after 15 s");
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------

/// What a test gateway's config varies on; everything else is fixed.
#[derive(Debug, Clone)]
pub struct Setup {
    /// `base_url` of the `openai` and `other` providers.
    pub upstream: String,
    /// Extra lines for the `limits:` section (each `  key: value\n`).
    pub limits: String,
    /// `spool.memory_bytes`.
    pub spool_memory_bytes: usize,
    /// `spool.directory` (absent: the system's temporary directory).
    pub spool_directory: Option<std::path::PathBuf>,
    /// More lines for the `openai` and `other` providers (each `    key: value\n`): timeouts by
    /// default.
    pub provider_settings: String,
    /// `auth.allow_anonymous`.
    pub allow_anonymous: bool,
    /// Start the built-in simulator and add a provider `demo` pointing at it.
    pub simulator: bool,
    /// Extra lines for the `simulator:` section (each `  key: value\n`), e.g.
    /// `  stream_interval_ms: 200\n`; only used with `simulator`.
    pub simulator_settings: String,
    /// More entries for the `providers:` list (each starting `  - name: …\n`); `{sim}` is
    /// replaced by the simulator's address.
    pub extra_providers: String,
    /// More top-level sections (`store:`, `objects:`, `jobs:`…), each line ending in `\n`.
    pub sections: String,
    /// More lines for the virtual key `team-a` ([`VK`]), each `    key: value\n` (a budget,
    /// a rate limit, a team).
    pub key_settings: String,
}

impl Setup {
    /// Providers pointing at `upstream`, default limits.
    pub fn new(upstream: &str) -> Self {
        Setup {
            upstream: upstream.to_string(),
            limits: String::new(),
            spool_memory_bytes: 65_536,
            spool_directory: None,
            provider_settings: "    first_byte_timeout_ms: 10000\n    idle_timeout_ms: 10000\n".into(),
            allow_anonymous: false,
            simulator: false,
            simulator_settings: String::new(),
            extra_providers: String::new(),
            sections: String::new(),
            key_settings: String::new(),
        }
    }

    fn yaml(&self, listen: SocketAddr, metrics: SocketAddr, sim: Option<SocketAddr>) -> String {
        let limits = if self.limits.is_empty() {
            String::new()
        } else {
            format!("limits:\n{}", self.limits)
        };
        let (sim_section, sim_provider) = match sim {
            Some(a) => (
                format!("simulator:\n  address: {a}\n{}", self.simulator_settings),
                format!(
                    "  - name: demo\n    kind: openai\n    base_url: http://{a}/v1\n    keys:\n      - {{name: sim, value: sim-key}}\n"
                ),
            ),
            None => (String::new(), String::new()),
        };
        format!(
            "server:
  threads: 2
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 0
listeners:
  - address: {listen}
metrics:
  address: {metrics}
auth:
  allow_anonymous: {anon}
{limits}spool:
  memory_bytes: {spool}
{spool_dir}{sim_section}{sections}providers:
  - name: openai
    kind: openai
    base_url: {up}
    connect_timeout_ms: 2000
{rt}    keys:
      - name: primary
        value: {PROVIDER_KEY}
  - name: other
    kind: openai
    base_url: {up}
{rt}    keys:
      - name: main
        value: {OTHER_PROVIDER_KEY}
{sim_provider}{extra}virtual_keys:
  - id: team-a
    key: {VK}
{key_settings}  - id: restricted
    key: {VK_RESTRICTED}
    providers: [openai]
    models: [openai/gpt-image-1]
  - id: off
    key: {VK_DISABLED}
    enabled: false
",
            anon = self.allow_anonymous,
            spool = self.spool_memory_bytes,
            spool_dir = self
                .spool_directory
                .as_ref()
                .map(|d| format!("  directory: {}\n", d.display()))
                .unwrap_or_default(),
            up = self.upstream,
            sections = self.sections,
            key_settings = self.key_settings,
            rt = self.provider_settings,
            extra = self
                .extra_providers
                .replace("{sim}", &sim.map(|a| a.to_string()).unwrap_or_default()),
        )
    }
}

/// The value of `series` in the metrics text `text` (0 when absent).
pub fn metric_in(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map_or(0.0, |v| v.trim().parse().expect("a metric value"))
}

/// The series of the metrics text `text` that start with `prefix` (e.g.
/// `refract_retries_total{`) and are not zero: what was counted (series exist at zero from
/// startup for every configured provider).
pub fn counted_series<'a>(text: &'a str, prefix: &str) -> Vec<&'a str> {
    text.lines()
        .filter(|l| l.starts_with(prefix) && l.rsplit_once(' ').is_none_or(|(_, v)| v != "0"))
        .collect()
}

/// A gateway running in this process; dropping it stops it.
pub struct Gateway {
    /// The client listener.
    pub addr: SocketAddr,
    /// The metrics listener.
    pub metrics: SocketAddr,
    /// The simulator's address, when started.
    pub simulator: Option<SocketAddr>,
    /// The config it runs with.
    pub yaml: String,
    _server: RunningServer,
    /// Its store and objects, when the setup names none.
    _state: tempfile::TempDir,
}

impl Gateway {
    /// Starts a gateway for `setup` and waits until every listener accepts.
    pub fn start(setup: &Setup) -> Gateway {
        Gateway::start_with(setup, refract::server::Options::default())
    }

    /// [`Gateway::start`], with the plug-ins of `options` (a test's admission).
    pub fn start_with(setup: &Setup, options: refract::server::Options) -> Gateway {
        let (listen, metrics) = (free_addr(), free_addr());
        let sim = setup.simulator.then(free_addr);
        let mut yaml = setup.yaml(listen, metrics, sim);
        // The state of its own (not the default ./data, shared by every gateway of the run).
        let state = tempfile::tempdir().expect("state dir");
        for (section, dir) in [("store", "db"), ("objects", "objects")] {
            if !setup.sections.contains(&format!("{section}:")) {
                let path = state.path().join(dir);
                yaml.push_str(&format!(
                    "{section}:\n  kind: {}\n  path: {}\n",
                    if section == "store" { "embedded" } else { "fs" },
                    path.display()
                ));
            }
        }
        let config = from_yaml_str_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("config:\n{e}\n{yaml}"));
        let server = refract::server::spawn_with(config, options).expect("spawn gateway");
        wait_listening(listen);
        wait_listening(metrics);
        if let Some(s) = sim {
            wait_listening(s);
        }
        Gateway {
            addr: listen,
            metrics,
            simulator: sim,
            yaml,
            _server: server,
            _state: state,
        }
    }

    /// Swaps in the config `yaml` as a SIGHUP reload does (it must be valid).
    pub fn reload(&self, yaml: &str) {
        let config = from_yaml_str_with_env(yaml, &|_| None).unwrap_or_else(|e| panic!("config:\n{e}\n{yaml}"));
        self._server.reload(config);
    }

    /// A new client connection to the gateway.
    pub fn connect(&self) -> Conn {
        Conn::open(self.addr)
    }

    /// Sends one image-edit request on a new connection and reads the answer.
    pub fn edit(&self, form: &Form, headers: &[(&str, &str)]) -> Response {
        let mut c = self.connect();
        c.send(&post_head("/v1/images/edits", headers, form, None));
        c.send(&form.body());
        c.read_response()
    }

    /// A request without a body, `method path` with `headers`, on a new connection to `addr`.
    pub fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let mut c = Conn::open(addr);
        c.send(head.as_bytes());
        c.read_response()
    }

    /// `GET path` on `addr`.
    pub fn get(addr: SocketAddr, path: &str) -> Response {
        let mut c = Conn::open(addr);
        c.send(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes());
        c.read_response()
    }

    /// The metrics text.
    pub fn metrics_text(&self) -> String {
        let r = Gateway::get(self.metrics, "/metrics");
        assert_eq!(r.status, 200);
        String::from_utf8(r.body).expect("metrics are UTF-8")
    }

    /// The value of one series of the metrics text, e.g.
    /// `refract_fallbacks_total{from="openai",to="backup"}` (labels in alphabetical order, as
    /// Prometheus prints them); 0 when the series is absent.
    pub fn metric(&self, series: &str) -> f64 {
        metric_in(&self.metrics_text(), series)
    }

    /// [`Gateway::metric`] once every request has been accounted: a request's metrics are
    /// recorded after its answer was sent, so a client that just read its answer may be
    /// ahead of them. Waits (at most 10 s) for `refract_requests_in_flight` to reach 0.
    pub fn metric_settled(&self, series: &str) -> f64 {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while self.metric("refract_requests_in_flight") != 0.0 {
            assert!(
                std::time::Instant::now() < deadline,
                "requests still in flight after 10 s"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        self.metric(series)
    }

    /// Asserts the gateway still answers a valid request with 200 (on a new connection).
    pub fn assert_still_serves(&self) {
        let r = self.edit(&valid_form(), &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "follow-up request failed: {}", r.text());
    }
}

// ---------------------------------------------------------------------------------------------
// Mock upstream
// ---------------------------------------------------------------------------------------------

/// One request the mock received, with every byte of its body.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Request method.
    pub method: String,
    /// Request target.
    pub path: String,
    /// Headers in arrival order (names lowercased).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body, exactly as received.
    pub body: Vec<u8>,
    /// Which connection it came on (0, 1, … in accept order).
    pub connection: usize,
    /// When the first byte of the request reached the mock.
    pub first_byte_at: Instant,
    /// When the request head was complete.
    pub head_at: Instant,
    /// Whether the body was read to its end (Content-Length reached, or the terminating chunk);
    /// false when the connection closed first or the mock answered before reading it.
    pub complete: bool,
}

impl Recorded {
    /// Every value of header `name`, as text.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
            .collect()
    }

    /// The one value of header `name`; panics if it appears more than once.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(all.len() <= 1, "header {name} sent {} times", all.len());
        all.into_iter().next()
    }

    /// The multipart parts of the body, parsed with `multer`.
    pub fn parts(&self) -> Vec<Part> {
        let ct = self
            .header("content-type")
            .expect("upstream request has a Content-Type");
        parse_multipart(&ct, &self.body)
    }
}

/// What the mock answers.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete answer.
    Answer {
        /// Status.
        status: u16,
        /// Content-Type.
        content_type: String,
        /// Body.
        body: Vec<u8>,
    },
    /// Read the request, then never answer; hold the connection until the peer closes it.
    Stall,
    /// Read the request, then answer `then` once `release` is set (see [`Gate`]); a peer
    /// that closes the connection first ends it there (counted in [`MockUpstream::closed`]).
    Hold {
        /// Set by the test to let the answer go.
        release: Arc<AtomicBool>,
        /// The answer once released.
        then: Box<Reply>,
    },
    /// A complete answer sent with `Transfer-Encoding: chunked`, `piece` body bytes per HTTP
    /// chunk, each chunk written (and flushed, with Nagle off) on its own after `pause`: the
    /// gateway sees the body split at those boundaries (or coarser, never finer).
    Chunked {
        /// Status.
        status: u16,
        /// Content-Type.
        content_type: String,
        /// Body.
        body: Vec<u8>,
        /// Body bytes per chunk (at least 1).
        piece: usize,
        /// Wait before each chunk.
        pause: Duration,
    },
    /// Raw bytes, written exactly as given (the test writes the HTTP framing): each piece after
    /// its pause, flushed on its own with Nagle off; then the connection ends as `end` says.
    Raw {
        /// (pause before, bytes) in order.
        pieces: Vec<(Duration, Vec<u8>)>,
        /// What happens after the last piece.
        end: RawEnd,
    },
    /// Read the request head and at least `after` body bytes, then reset the connection (RST)
    /// while the gateway is still sending. The request is recorded in
    /// [`MockUpstream::incomplete`].
    ResetDuringBody {
        /// Body bytes to read first.
        after: usize,
    },
    /// Answer as soon as the request head has arrived, without reading the body, then close
    /// the connection (what a provider refusing an upload early does). The request is recorded
    /// with the body bytes that had arrived with the head and `complete: false`.
    EarlyAnswer {
        /// Status.
        status: u16,
        /// Content-Type.
        content_type: String,
        /// Body.
        body: Vec<u8>,
    },
}

/// How a [`Reply::Raw`] answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RawEnd {
    /// The answer was complete: serve the next request on the connection.
    KeepAlive,
    /// Close the connection (FIN).
    Close,
    /// Reset the connection (RST).
    Reset,
    /// Send nothing more and hold the connection until the peer closes it.
    Hold,
}

/// Resets `stream`: with a zero linger time, closing sends RST instead of FIN.
fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
    drop(stream);
}

impl Reply {
    /// A JSON answer.
    pub fn json(status: u16, body: &Value) -> Reply {
        Reply::Answer {
            status,
            content_type: "application/json".into(),
            body: serde_json::to_vec(body).expect("json"),
        }
    }

    /// A JSON answer whose body is sent (in one chunk) after `pause`: a provider that takes
    /// a while.
    pub fn json_after(pause: Duration, status: u16, body: &Value) -> Reply {
        let body = serde_json::to_vec(body).expect("json");
        Reply::Chunked {
            status,
            content_type: "application/json".into(),
            piece: body.len(),
            body,
            pause,
        }
    }

    /// An answer with any content type.
    pub fn raw(status: u16, content_type: &str, body: &[u8]) -> Reply {
        Reply::Answer {
            status,
            content_type: content_type.into(),
            body: body.to_vec(),
        }
    }
}

/// The success body the mock sends unless scripted otherwise.
pub fn default_success() -> Value {
    serde_json::json!({
        "created": 1_713_833_628,
        "data": [{"b64_json": "aW1hZ2UtMA==", "revised_prompt": "r0"}, {"b64_json": "aW1hZ2UtMQ=="}],
        "background": "opaque",
        "output_format": "png",
        "size": "1024x1024",
        "usage": {"input_tokens": 10, "output_tokens": 20, "total_tokens": 30}
    })
}

/// Computes the answer to a request from the request itself (see [`MockUpstream::respond_with`]).
pub type Responder = Arc<dyn Fn(&Recorded) -> Reply + Send + Sync>;

/// Counts a request as being answered from the moment it is complete until its answer is
/// written (or its connection ends), keeping the most at once.
struct Answering<'a>(&'a MockState);

impl<'a> Answering<'a> {
    fn start(st: &'a MockState) -> Self {
        let now = st.answering.fetch_add(1, Ordering::SeqCst) + 1;
        st.most_answering.fetch_max(now, Ordering::SeqCst);
        Answering(st)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.answering.fetch_sub(1, Ordering::SeqCst);
    }
}

struct MockState {
    requests: Mutex<Vec<Recorded>>,
    incomplete: Mutex<Vec<Recorded>>,
    replies: Mutex<VecDeque<Reply>>,
    /// The answer computed from each request once `replies` is empty, before `fallback_reply`.
    responder: Mutex<Option<Responder>>,
    /// Requests being answered now, and the most at once.
    answering: AtomicUsize,
    most_answering: AtomicUsize,
    /// The answer once `replies` is empty ([`default_success`] when `None`).
    fallback_reply: Mutex<Option<Reply>>,
    connections: AtomicUsize,
    closed: AtomicUsize,
    /// Whether requests are recorded, or only counted (see [`MockUpstream::count_only`]).
    keep_records: AtomicBool,
    /// Complete requests received.
    received: AtomicUsize,
    stop: AtomicBool,
}

impl MockState {
    /// Records a complete request (`complete`) or one cut off while it was sent.
    fn record(&self, rec: Recorded, complete: bool) {
        if complete {
            self.received.fetch_add(1, Ordering::SeqCst);
        }
        if !self.keep_records.load(Ordering::SeqCst) {
            return;
        }
        let list = if complete { &self.requests } else { &self.incomplete };
        list.lock().unwrap().push(rec);
    }
}

/// A scripted HTTP/1.1 upstream on a pre-bound loopback port. Each connection is served on its
/// own thread and may carry several requests (the gateway pools connections).
pub struct MockUpstream {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<MockState>,
}

impl MockUpstream {
    /// Starts the mock; it answers [`default_success`] until [`MockUpstream::push`] scripts more.
    pub fn start() -> MockUpstream {
        MockUpstream::start_on(std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// As [`MockUpstream::start`], listening on `ip` (an ephemeral port).
    pub fn start_on(ip: std::net::IpAddr) -> MockUpstream {
        let listener = TcpListener::bind((ip, 0)).expect("bind mock");
        let addr = listener.local_addr().expect("mock addr");
        let state = Arc::new(MockState {
            requests: Mutex::new(Vec::new()),
            incomplete: Mutex::new(Vec::new()),
            replies: Mutex::new(VecDeque::new()),
            responder: Mutex::new(None),
            answering: AtomicUsize::new(0),
            most_answering: AtomicUsize::new(0),
            fallback_reply: Mutex::new(None),
            connections: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            keep_records: AtomicBool::new(true),
            received: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let id = st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                std::thread::spawn(move || {
                    serve_mock_connection(stream, id, &st);
                    st.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        MockUpstream { addr, state }
    }

    /// The provider `base_url` for this mock.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// Scripts the answer to the next request (answers are used in order).
    pub fn push(&self, reply: Reply) {
        self.state.replies.lock().unwrap().push_back(reply);
    }

    /// Answers every request with `reply` once the scripted answers are used up (instead of
    /// [`default_success`]): a provider that keeps failing.
    pub fn always(&self, reply: Reply) {
        *self.state.fallback_reply.lock().unwrap() = Some(reply);
    }

    /// Answers each request with `respond(request)` once the scripted answers are used up
    /// (before [`MockUpstream::always`]): an answer that depends on what was asked.
    pub fn respond_with(&self, respond: impl Fn(&Recorded) -> Reply + Send + Sync + 'static) {
        *self.state.responder.lock().unwrap() = Some(Arc::new(respond));
    }

    /// The most requests that were being answered at once (each counted from its last byte
    /// until its answer was written): how many the gateway had in flight together.
    pub fn most_concurrent(&self) -> usize {
        self.state.most_answering.load(Ordering::SeqCst)
    }

    /// Only counts requests from now on ([`MockUpstream::received`]), recording none, so a
    /// long run's memory is the gateway's, not the mock's.
    pub fn count_only(&self) {
        self.state.keep_records.store(false, Ordering::SeqCst);
    }

    /// Complete requests received so far, recorded or only counted.
    pub fn received(&self) -> usize {
        self.state.received.load(Ordering::SeqCst)
    }

    /// Connections that ended (closed by either side, or reset) so far.
    pub fn closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }

    /// Waits up to `limit` until at least `n` connections have ended; returns whether they did.
    pub fn wait_closed(&self, n: usize, limit: Duration) -> bool {
        let start = Instant::now();
        while self.closed() < n {
            if start.elapsed() > limit {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        true
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Requests whose connection closed before their body was complete (never answered, and
    /// not in [`MockUpstream::requests`]).
    pub fn incomplete(&self) -> Vec<Recorded> {
        self.state.incomplete.lock().unwrap().clone()
    }

    /// The only request received so far.
    pub fn only_request(&self) -> Recorded {
        let all = self.requests();
        assert_eq!(all.len(), 1, "expected exactly one upstream request, got {}", all.len());
        all.into_iter().next().unwrap()
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }
}

impl Drop for MockUpstream {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_millis(200));
    }
}

fn serve_mock_connection(mut stream: TcpStream, id: usize, st: &MockState) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    // Head and body go out in separate writes: without this, Nagle's algorithm holds the body
    // until the gateway's delayed ACK (40 ms on Linux).
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    loop {
        let Some(mut recorded) = read_request_head(&mut stream, &mut buf, id) else {
            return;
        };
        let early = {
            let mut replies = st.replies.lock().unwrap();
            match replies.front() {
                Some(Reply::EarlyAnswer { .. } | Reply::ResetDuringBody { .. }) => replies.pop_front(),
                None => match &*st.fallback_reply.lock().unwrap() {
                    Some(r @ (Reply::EarlyAnswer { .. } | Reply::ResetDuringBody { .. })) => Some(r.clone()),
                    _ => None,
                },
                _ => None,
            }
        };
        if let Some(Reply::ResetDuringBody { after }) = early {
            while buf.len() < after && fill(&mut stream, &mut buf) > 0 {}
            recorded.body = std::mem::take(&mut buf);
            st.record(recorded, false);
            reset(stream);
            return;
        }
        if let Some(Reply::EarlyAnswer {
            status,
            content_type,
            body,
        }) = early
        {
            recorded.body = std::mem::take(&mut buf);
            st.record(recorded, true);
            let head = format!(
                "HTTP/1.1 {status} Scripted\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
            let _ = stream.flush();
            // Close like a well-behaved server (lingering close): stop writing, then drain what
            // the gateway still sends for a while, so the kernel does not answer the unread
            // upload with a reset that could destroy the answer before the gateway reads it.
            let _ = stream.shutdown(std::net::Shutdown::Write);
            let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
            let mut sink = [0u8; 64 * 1024];
            while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
            return;
        }
        read_request_body(&mut stream, &mut buf, &mut recorded);
        if !recorded.complete {
            st.record(recorded, false);
            return;
        }
        let _answering = Answering::start(st);
        let reply = st.replies.lock().unwrap().pop_front();
        let responder = st.responder.lock().unwrap().clone();
        let reply = reply
            .or_else(|| responder.map(|respond| respond(&recorded)))
            .or_else(|| st.fallback_reply.lock().unwrap().clone())
            .unwrap_or_else(|| Reply::json(200, &default_success()));
        st.record(recorded, true);
        let reply = match reply {
            Reply::Hold { release, then } => {
                if !hold(&mut stream, &release) {
                    return;
                }
                *then
            }
            reply => reply,
        };
        match reply {
            Reply::Answer {
                status,
                content_type,
                body,
            } => {
                let head = format!(
                    "HTTP/1.1 {status} Scripted\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                if stream.write_all(head.as_bytes()).is_err() || stream.write_all(&body).is_err() {
                    return;
                }
            }
            Reply::Chunked {
                status,
                content_type,
                body,
                piece,
                pause,
            } => {
                let _ = stream.set_nodelay(true);
                let head = format!(
                    "HTTP/1.1 {status} Scripted\r\nContent-Type: {content_type}\r\nTransfer-Encoding: chunked\r\n\r\n"
                );
                if stream.write_all(head.as_bytes()).is_err() {
                    return;
                }
                for part in body.chunks(piece.max(1)) {
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                    let mut chunk = format!("{:x}\r\n", part.len()).into_bytes();
                    chunk.extend_from_slice(part);
                    chunk.extend_from_slice(b"\r\n");
                    if stream.write_all(&chunk).and_then(|()| stream.flush()).is_err() {
                        return;
                    }
                }
                if stream.write_all(b"0\r\n\r\n").is_err() {
                    return;
                }
            }
            Reply::Raw { pieces, end } => {
                let _ = stream.set_nodelay(true);
                for (pause, bytes) in pieces {
                    if !pause.is_zero() {
                        std::thread::sleep(pause);
                    }
                    if stream.write_all(&bytes).and_then(|()| stream.flush()).is_err() {
                        return;
                    }
                }
                match end {
                    RawEnd::KeepAlive => {}
                    RawEnd::Close => return,
                    RawEnd::Reset => {
                        reset(stream);
                        return;
                    }
                    RawEnd::Hold => {
                        let mut sink = [0u8; 1024];
                        while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                        return;
                    }
                }
            }
            Reply::EarlyAnswer { .. } | Reply::ResetDuringBody { .. } => unreachable!("taken before the body is read"),
            Reply::Hold { .. } => unreachable!("a held answer is a held answer once"),
            Reply::Stall => {
                // Hold the connection until the gateway gives up and closes it.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink), Ok(n) if n > 0) {}
                return;
            }
        }
    }
}

/// Waits until `release` is set (`true`) or the peer closes `stream` (`false`).
fn hold(stream: &mut TcpStream, release: &AtomicBool) -> bool {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(20)));
    let mut sink = [0u8; 1024];
    let released = loop {
        if release.load(Ordering::SeqCst) {
            break true;
        }
        match stream.read(&mut sink) {
            Ok(0) => break false,
            Ok(_) => {}
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {}
            Err(_) => break false,
        }
    };
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    released
}

/// A switch that lets [`Reply::Hold`] answers go: a provider that holds its answer until the
/// test says so.
#[derive(Debug, Clone, Default)]
pub struct Gate(Arc<AtomicBool>);

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate::default()
    }

    /// An answer `then` held until [`Gate::open`].
    pub fn hold(&self, then: Reply) -> Reply {
        Reply::Hold {
            release: self.0.clone(),
            then: Box::new(then),
        }
    }

    /// Lets every answer held by this gate go (now and later).
    pub fn open(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

type Head = (String, String, Vec<(String, Vec<u8>)>);

/// Reads one request head from `stream`; `None` at a clean end of the connection. The body is
/// left empty and `complete` false until [`read_request_body`] reads it.
fn read_request_head(stream: &mut TcpStream, buf: &mut Vec<u8>, connection: usize) -> Option<Recorded> {
    let mut first_byte_at = (!buf.is_empty()).then(Instant::now);
    let ((method, path, headers), head_len) = loop {
        let mut hs = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut hs);
        match req.parse(buf).expect("mock: malformed request head") {
            httparse::Status::Complete(n) => {
                let head: Head = (
                    req.method.unwrap_or_default().to_string(),
                    req.path.unwrap_or_default().to_string(),
                    req.headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                        .collect(),
                );
                break (head, n);
            }
            httparse::Status::Partial => {
                if fill(stream, buf) == 0 {
                    assert!(buf.is_empty(), "mock: connection closed inside a request head");
                    return None;
                }
                first_byte_at.get_or_insert_with(Instant::now);
            }
        }
    };
    let head_at = Instant::now();
    buf.drain(..head_len);
    Some(Recorded {
        method,
        path,
        headers,
        body: Vec::new(),
        connection,
        first_byte_at: first_byte_at.unwrap_or(head_at),
        head_at,
        complete: false,
    })
}

/// Reads the body of `rec` (whose head was read) into it; `complete` tells whether it reached
/// its end before the connection closed.
fn read_request_body(stream: &mut TcpStream, buf: &mut Vec<u8>, rec: &mut Recorded) {
    let find = |name: &str| {
        rec.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| String::from_utf8_lossy(v).trim().to_string())
    };
    let (body, complete) = if let Some(len) = find("content-length") {
        let len: usize = len.parse().expect("mock: bad Content-Length");
        while buf.len() < len && fill(stream, buf) > 0 {}
        if buf.len() < len {
            (std::mem::take(buf), false)
        } else {
            (buf.drain(..len).collect(), true)
        }
    } else if find("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        read_chunked_until_close(stream, buf)
    } else {
        (Vec::new(), true)
    };
    rec.body = body;
    rec.complete = complete;
}

/// Reads more bytes into `buf`; returns how many (0 at end of stream or on error).
fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> usize {
    let mut tmp = [0u8; 64 * 1024];
    match stream.read(&mut tmp) {
        Ok(n) => {
            buf.extend_from_slice(&tmp[..n]);
            n
        }
        Err(_) => 0,
    }
}

/// Decodes a chunked body from `buf`, reading more as needed; panics if the connection closes
/// before the last chunk.
fn read_chunked(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Vec<u8> {
    let (body, complete) = read_chunked_until_close(stream, buf);
    assert!(complete, "chunked: connection closed before the last chunk");
    body
}

/// Decodes a chunked body from `buf`, reading more as needed. Returns the data decoded and
/// whether the body ended properly (terminating chunk and trailers); a connection that closes
/// first gives the whole chunks received and `false`.
fn read_chunked_until_close(stream: &mut TcpStream, buf: &mut Vec<u8>) -> (Vec<u8>, bool) {
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                break i;
            }
            if fill(stream, buf) == 0 {
                return (body, false);
            }
        };
        let size_text = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .unwrap_or_else(|_| panic!("chunked: bad size line {size_text:?}"));
        buf.drain(..line_end + 2);
        if size == 0 {
            // trailers until an empty line
            loop {
                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                    buf.drain(..i + 2);
                    if i == 0 {
                        return (body, true);
                    }
                } else if fill(stream, buf) == 0 {
                    return (body, false);
                }
            }
        }
        while buf.len() < size + 2 {
            if fill(stream, buf) == 0 {
                return (body, false);
            }
        }
        body.extend_from_slice(&buf[..size]);
        assert_eq!(&buf[size..size + 2], b"\r\n", "chunked: chunk not followed by CRLF");
        buf.drain(..size + 2);
    }
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP client
// ---------------------------------------------------------------------------------------------

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Headers (names lowercased).
    pub headers: Vec<(String, Vec<u8>)>,
    /// Body (de-chunked).
    pub body: Vec<u8>,
}

impl Response {
    /// Header `name` as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The body as JSON; panics with the body text otherwise.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// The body as (lossy) text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// One client connection that sends raw bytes and reads responses, keeping any bytes read
/// past a response for the next one.
pub struct Conn {
    /// The socket.
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    /// Connects to `addr`.
    pub fn open(addr: SocketAddr) -> Conn {
        let stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
        stream.set_nodelay(true).expect("nodelay");
        Conn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes all of `bytes`.
    pub fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send to gateway");
    }

    /// Closes the sending half (the gateway sees end of stream).
    pub fn shutdown_write(&self) {
        self.stream.shutdown(Shutdown::Write).expect("shutdown write");
    }

    /// Reads one response; panics on error.
    pub fn read_response(&mut self) -> Response {
        self.try_read_response().expect("read response")
    }

    /// Reads one response (an interim 1xx counts as one).
    pub fn try_read_response(&mut self) -> io::Result<Response> {
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut hs);
            match resp
                .parse(&self.buf)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?
            {
                httparse::Status::Complete(n) => {
                    let headers: Vec<(String, Vec<u8>)> = resp
                        .headers
                        .iter()
                        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
                        .collect();
                    break (resp.code.unwrap_or(0), headers, n);
                }
                httparse::Status::Partial => {
                    if self.fill()? == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed before a response head",
                        ));
                    }
                }
            }
        };
        self.buf.drain(..head_len);
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| String::from_utf8_lossy(v).trim().to_string())
        };
        let body = if (100..200).contains(&status) || status == 204 || status == 304 {
            Vec::new()
        } else if let Some(len) = header("content-length") {
            let len: usize = len
                .parse()
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "bad Content-Length"))?;
            while self.buf.len() < len {
                if self.fill()? == 0 {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short body"));
                }
            }
            self.buf.drain(..len).collect()
        } else if header("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
            let mut tmp = std::mem::take(&mut self.buf);
            let body = read_chunked(&mut self.stream, &mut tmp);
            self.buf = tmp;
            body
        } else {
            while self.fill()? > 0 {}
            std::mem::take(&mut self.buf)
        };
        Ok(Response { status, headers, body })
    }

    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = [0u8; 64 * 1024];
        let n = self.stream.read(&mut tmp)?;
        self.buf.extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// True when the gateway has closed the connection (end of stream or reset), waiting up to
    /// `IO_TIMEOUT`. Panics if more bytes arrive.
    pub fn is_closed(&mut self) -> bool {
        assert!(
            self.buf.is_empty(),
            "unread bytes left: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        let mut tmp = [0u8; 256];
        match self.stream.read(&mut tmp) {
            Ok(0) => true,
            Ok(n) => panic!(
                "unexpected bytes after the response: {:?}",
                String::from_utf8_lossy(&tmp[..n])
            ),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => false,
            Err(_) => true,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Requests and forms
// ---------------------------------------------------------------------------------------------

/// A multipart/form-data body under construction.
#[derive(Debug, Clone)]
pub struct Form {
    /// The boundary.
    pub boundary: String,
    parts: Vec<Vec<u8>>,
}

impl Default for Form {
    fn default() -> Self {
        Form::new()
    }
}

impl Form {
    /// An empty form with a random boundary.
    pub fn new() -> Form {
        Form {
            boundary: format!("----refractTestBoundary{:016x}", fastrand::u64(..)),
            parts: Vec::new(),
        }
    }

    /// Adds a text field.
    pub fn text(mut self, name: &str, value: &str) -> Form {
        self.parts.push(
            format!(
                "--{}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n",
                self.boundary
            )
            .into_bytes(),
        );
        self
    }

    /// Adds a file part.
    pub fn file(mut self, name: &str, filename: &str, content_type: &str, data: &[u8]) -> Form {
        let mut p = format!(
            "--{}\r\nContent-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n",
            self.boundary
        )
        .into_bytes();
        p.extend_from_slice(data);
        p.extend_from_slice(b"\r\n");
        self.parts.push(p);
        self
    }

    /// Adds raw bytes as they are (they must carry their own boundary line).
    pub fn raw(mut self, bytes: &[u8]) -> Form {
        self.parts.push(bytes.to_vec());
        self
    }

    /// The complete body, closing boundary included.
    pub fn body(&self) -> Vec<u8> {
        let mut v = self.parts.concat();
        v.extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        v
    }

    /// `multipart/form-data; boundary=…`.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }
}

/// A POST head for `form` with `Content-Length` (or `Transfer-Encoding: chunked` when
/// `chunked`), `Host`, the form's Content-Type, and `headers`.
pub fn post_head(path: &str, headers: &[(&str, &str)], form: &Form, content_length: Option<usize>) -> Vec<u8> {
    let len = content_length.unwrap_or_else(|| form.body().len());
    let mut h = format!(
        "POST {path} HTTP/1.1\r\nHost: gateway.test\r\nContent-Type: {}\r\nContent-Length: {len}\r\n",
        form.content_type()
    );
    for (k, v) in headers {
        h.push_str(&format!("{k}: {v}\r\n"));
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Encodes `body` as HTTP/1.1 chunks of varying sizes.
pub fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + body.len() / 100 + 16);
    let sizes = [1usize, 7, 100, 4096, 65_536, 333_333];
    let (mut i, mut k) = (0, 0);
    while i < body.len() {
        let n = sizes[k % sizes.len()].min(body.len() - i);
        out.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        out.extend_from_slice(&body[i..i + n]);
        out.extend_from_slice(b"\r\n");
        i += n;
        k += 1;
    }
    out.extend_from_slice(b"0\r\n\r\n");
    out
}

/// A small real PNG (4×4 opaque).
pub fn tiny_png() -> Vec<u8> {
    refract::imaging::encode_png(&refract::imaging::solid(4, 4, [200, 100, 50, 255])).expect("png")
}

/// `len` bytes that start with the PNG signature and continue with deterministic noise
/// (enough for the gateway, which only sniffs the type).
pub fn big_png_like(len: usize, seed: u64) -> Vec<u8> {
    let mut v = Vec::with_capacity(len + 8);
    v.extend_from_slice(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR");
    let mut x = seed | 1;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    v
}

/// A 6×4 opaque PNG with distinct pixels.
pub fn gradient_png() -> Vec<u8> {
    let mut img = refract::imaging::solid(6, 4, [0, 0, 0, 255]);
    for (i, px) in img.pixels.chunks_exact_mut(4).enumerate() {
        px[0] = (i * 10) as u8;
        px[1] = (255 - i * 10) as u8;
    }
    refract::imaging::encode_png(&img).expect("png")
}

/// A 6×4 unified (OpenAI) mask: the top two rows fully transparent (edit), the rest half
/// opaque.
pub fn unified_mask_png() -> Vec<u8> {
    let mut m = refract::imaging::solid(6, 4, [0, 0, 0, 128]);
    for i in 0..12 {
        m.pixels[i * 4 + 3] = 0;
    }
    refract::imaging::encode_png(&m).expect("png")
}

/// The white-means-edit twin of [`unified_mask_png`] (Imagen's, Stability's, FLUX's
/// convention): a 6×4 opaque greyscale PNG, the top two rows white (edit), the rest black.
pub fn white_edit_mask_png() -> Vec<u8> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, 6, 4);
    enc.set_color(png::ColorType::Grayscale);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header().expect("png");
    let rows: Vec<u8> = (0..24).map(|i| if i < 12 { 255 } else { 0 }).collect();
    w.write_image_data(&rows).expect("png");
    drop(w);
    out
}

/// A JPEG-looking file (signature plus filler).
pub fn jpeg_like() -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0, 0x00, 0x10, b'J', b'F', b'I', b'F', 0x00, 0x01];
    v.extend((0..200u32).map(|i| (i * 7) as u8));
    v
}

/// The smallest valid edit request: model, prompt, one small PNG.
pub fn valid_form() -> Form {
    Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "make it blue")
        .file("image", "in.png", "image/png", &tiny_png())
}

// ---------------------------------------------------------------------------------------------
// Multipart parsing (what the upstream saw)
// ---------------------------------------------------------------------------------------------

/// One part of a multipart body.
#[derive(Debug, Clone)]
pub struct Part {
    /// Field name.
    pub name: String,
    /// File name, for file parts.
    pub filename: Option<String>,
    /// Declared Content-Type.
    pub content_type: Option<String>,
    /// Content.
    pub data: Vec<u8>,
}

impl Part {
    /// The content as text.
    pub fn text(&self) -> String {
        String::from_utf8(self.data.clone()).expect("text part is UTF-8")
    }
}

/// Parses a complete multipart body with `multer`; panics if it is not well formed.
pub fn parse_multipart(content_type: &str, body: &[u8]) -> Vec<Part> {
    let boundary = multer::parse_boundary(content_type).expect("boundary in Content-Type");
    let body = bytes::Bytes::copy_from_slice(body);
    let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    rt.block_on(async move {
        let stream = futures_util::stream::once(async move { Ok::<_, std::io::Error>(body) });
        let mut mp = multer::Multipart::new(stream, boundary);
        let mut out = Vec::new();
        while let Some(f) = mp.next_field().await.expect("well-formed multipart") {
            let name = f.name().unwrap_or_default().to_string();
            let filename = f.file_name().map(str::to_string);
            let content_type = f.content_type().map(|m| m.to_string());
            let data = f.bytes().await.expect("part body").to_vec();
            out.push(Part {
                name,
                filename,
                content_type,
                data,
            });
        }
        out
    })
}

/// The parts named `name`.
pub fn parts_named<'a>(parts: &'a [Part], name: &str) -> Vec<&'a Part> {
    parts.iter().filter(|p| p.name == name).collect()
}

// ---------------------------------------------------------------------------------------------
// Assertions
// ---------------------------------------------------------------------------------------------

/// Asserts a gateway (Bifrost-shaped, `is_bifrost_error: true`) error: status, top-level
/// `type`, `error.type` and `error.param`; returns the body.
pub fn assert_gateway_error(r: &Response, status: u16, code: &str, error_type: &str, param: Option<&str>) -> Value {
    let v = r.json();
    assert_eq!(r.status, status, "{v}");
    assert_eq!(v["is_bifrost_error"], true, "{v}");
    assert_eq!(v["status_code"], status, "{v}");
    assert_eq!(v["type"], code, "{v}");
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["type"], error_type, "{v}");
    match param {
        Some(p) => assert_eq!(v["error"]["param"], p, "{v}"),
        None => assert!(v["error"]["param"].is_null(), "{v}"),
    }
    assert!(v["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert_eq!(v["extra_fields"]["request_type"], "image_edit", "{v}");
    assert_eq!(
        v["event_id"].as_str(),
        r.header("x-request-id").as_deref(),
        "event_id must be the request id: {v}"
    );
    assert_eq!(
        r.header("content-type").as_deref(),
        Some("application/json"),
        "error content type"
    );
    v
}

/// Asserts a 400 `invalid_request` naming `param`.
pub fn assert_invalid(r: &Response, param: &str) -> Value {
    assert_gateway_error(r, 400, "invalid_request", "invalid_request_error", Some(param))
}

/// Sends `head` then `body` on a writer thread while reading the answer on this one, so an
/// answer that comes before the body is sent is seen. Returns the answer and how many body
/// bytes the writer got into the socket before it stopped (all of them, or fewer if the gateway
/// closed the connection).
pub fn send_racing(addr: SocketAddr, head: Vec<u8>, body: Vec<u8>) -> (Response, usize, Conn) {
    let mut conn = Conn::open(addr);
    conn.send(&head);
    let mut writer = conn.stream.try_clone().expect("clone stream");
    writer.set_write_timeout(Some(IO_TIMEOUT)).expect("write timeout");
    let total = body.len();
    let handle = std::thread::spawn(move || {
        let mut sent = 0;
        for chunk in body.chunks(64 * 1024) {
            if writer.write_all(chunk).is_err() {
                break;
            }
            sent += chunk.len();
        }
        sent
    });
    let resp = conn.read_response();
    let sent = handle.join().expect("writer thread");
    assert!(sent <= total);
    (resp, sent, conn)
}

/// The data of every `image_edit.completed` event of an event-stream body, parsed.
pub fn completed_events(body: &[u8]) -> Vec<Value> {
    let mut d = refract::codec::sse::SseDecoder::new();
    let mut evs = Vec::new();
    d.feed(body, &mut evs).expect("a valid event stream");
    evs.iter()
        .filter(|e| e.event.as_deref() == Some("image_edit.completed"))
        .map(|e| serde_json::from_str(&e.data).expect("event data is JSON"))
        .collect()
}
