//! TLS on both sides of the gateway, with certificates made at test time (`rcgen`, ring):
//! https providers trusted through `server.ca_file` (SNI, Host, hostname checks), the system
//! roots when it is not set, and a TLS client listener. The https provider is a small Pingora
//! server in this process; nothing touches the internet.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use async_trait::async_trait;
use bytes::Bytes;
use common::*;
use pingora::http::ResponseHeader;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::proxy::{ProxyHttp, Session};
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora::upstreams::peer::HttpPeer;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use refract::config::from_yaml_str_with_env;
use refract::server::RunningServer;
use std::any::Any;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

// ---------------------------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------------------------

/// A private CA and PEM files of certificates it signed, in a temporary directory.
struct Pki {
    dir: tempfile::TempDir,
    /// The CA certificate (PEM).
    ca: PathBuf,
    /// The CA certificate (DER), for the test client's root store.
    ca_der: rustls::pki_types::CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, "refract test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("CA cert");
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, cert.pem()).expect("write ca.pem");
        Pki {
            dir,
            ca,
            ca_der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// Writes `<stem>.pem` and `<stem>.key` for a leaf valid for `names` (DNS names or IPs),
    /// signed by the CA.
    fn leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = CertificateParams::new(names).expect("leaf params");
        params.distinguished_name.push(DnType::CommonName, stem);
        let key = KeyPair::generate().expect("leaf key");
        let cert = params.signed_by(&key, &self.issuer).expect("leaf cert");
        let (cert_path, key_path) = (self.path(&format!("{stem}.pem")), self.path(&format!("{stem}.key")));
        std::fs::write(&cert_path, cert.pem()).expect("write leaf cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write leaf key");
        (cert_path, key_path)
    }

    /// The leaf every good server uses.
    fn localhost(&self) -> (PathBuf, PathBuf) {
        self.leaf("localhost", &["localhost", "127.0.0.1", "::1"])
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// An unused port on the address `localhost` resolves to first, which is the one the gateway
/// connects to (on hosts with `::1 localhost` that may be IPv6).
fn free_localhost_addr() -> SocketAddr {
    let ip = ("localhost", 0)
        .to_socket_addrs()
        .expect("resolve localhost")
        .next()
        .expect("localhost has an address")
        .ip();
    if ip == std::net::Ipv4Addr::LOCALHOST {
        return free_addr();
    }
    TcpListener::bind((ip, 0))
        .expect("bind localhost")
        .local_addr()
        .expect("addr")
}

// ---------------------------------------------------------------------------------------------
// An https provider: Pingora with rustls, recording what it receives
// ---------------------------------------------------------------------------------------------

/// One request the https provider received.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    host: Option<String>,
    authorization: Option<String>,
    content_type: String,
    /// The SNI the client sent; `None` when it sent none.
    sni: Option<String>,
    /// Whether the connection was TLS at all.
    tls: bool,
    body: Vec<u8>,
}

/// Stored in the connection's TLS digest after the handshake.
struct Handshake {
    sni: Option<String>,
}

struct RecordSni;

#[async_trait]
impl TlsAccept for RecordSni {
    async fn handshake_complete_callback(&self, tls: &TlsRef) -> Option<Arc<dyn Any + Send + Sync>> {
        Some(Arc::new(Handshake {
            sni: tls.server_name().map(str::to_string),
        }))
    }
}

/// Answers every request with a one-image `ImagesResponse` after reading the whole body.
struct ImagesApp {
    seen: Arc<Mutex<Vec<Seen>>>,
}

#[async_trait]
impl ProxyHttp for ImagesApp {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn request_filter(&self, session: &mut Session, _ctx: &mut ()) -> pingora::Result<bool> {
        let header = |s: &Session, name: &str| {
            s.req_header()
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let ssl = session.digest().and_then(|d| d.ssl_digest.clone());
        let mut seen = Seen {
            path: session.req_header().uri.to_string(),
            host: header(session, "host"),
            authorization: header(session, "authorization"),
            content_type: header(session, "content-type").unwrap_or_default(),
            sni: ssl
                .as_ref()
                .and_then(|d| d.extension.get::<Handshake>())
                .and_then(|h| h.sni.clone()),
            tls: ssl.is_some(),
            body: Vec::new(),
        };
        while let Some(chunk) = session.read_request_body().await? {
            seen.body.extend_from_slice(&chunk);
        }
        self.seen.lock().unwrap().push(seen);
        let body = Bytes::from_static(br#"{"created":1,"data":[{"b64_json":"AAAA"}]}"#);
        let mut resp = ResponseHeader::build(200, Some(2))?;
        resp.insert_header("content-type", "application/json")?;
        resp.insert_header("content-length", body.len().to_string())?;
        session.write_response_header(Box::new(resp), false).await?;
        session.write_response_body(Some(body), true).await?;
        Ok(true)
    }

    async fn upstream_peer(&self, _session: &mut Session, _ctx: &mut ()) -> pingora::Result<Box<HttpPeer>> {
        Err(pingora::Error::new(pingora::ErrorType::InternalError))
    }
}

struct StopOnSignal(Mutex<Option<tokio::sync::oneshot::Receiver<()>>>);

#[async_trait]
impl ShutdownSignalWatch for StopOnSignal {
    async fn recv(&self) -> ShutdownSignal {
        let rx = self.0.lock().unwrap().take();
        if let Some(rx) = rx {
            let _ = rx.await;
        }
        ShutdownSignal::FastShutdown
    }
}

/// The https provider; dropping it stops it.
struct HttpsProvider {
    seen: Arc<Mutex<Vec<Seen>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HttpsProvider {
    /// Serves TLS on each `(address, cert, key)`.
    fn start(listeners: &[(SocketAddr, &Path, &Path)]) -> HttpsProvider {
        let conf = ServerConf {
            threads: 1,
            grace_period_seconds: Some(0),
            graceful_shutdown_timeout_seconds: Some(0),
            ..Default::default()
        };
        let mut server = Server::new_with_opt_and_conf(None, conf);
        server.bootstrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut svc = pingora::proxy::http_proxy_service(&server.configuration, ImagesApp { seen: seen.clone() });
        for (addr, cert, key) in listeners {
            let mut tls = TlsSettings::with_callbacks(Box::new(RecordSni)).expect("tls settings");
            tls.set_certificate_chain_file(cert.to_str().unwrap()).expect("cert");
            tls.set_private_key_file(key.to_str().unwrap()).expect("key");
            svc.add_tls_with_settings(&addr.to_string(), None, tls);
        }
        server.add_service(svc);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            server.run(RunArgs {
                shutdown_signal: Box::new(StopOnSignal(Mutex::new(Some(rx)))),
            })
        });
        for (addr, _, _) in listeners {
            wait_listening(*addr);
        }
        HttpsProvider {
            seen,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for HttpsProvider {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway
// ---------------------------------------------------------------------------------------------

/// A gateway config: one listener (`listener` is its YAML mapping), `ca_file` if given, and
/// one provider per `(name, base_url)`, each with key [`PROVIDER_KEY`]; anonymous access.
fn gateway_yaml(listener: &str, ca_file: Option<&Path>, providers: &[(&str, &str)]) -> String {
    let ca = ca_file.map_or(String::new(), |p| format!("  ca_file: {}\n", p.display()));
    let mut yaml = format!(
        "server:\n  threads: 2\n  grace_period_seconds: 0\n  graceful_shutdown_timeout_seconds: 0\n{ca}\
         listeners:\n  - {listener}\nauth:\n  allow_anonymous: true\nproviders:\n"
    );
    for (name, url) in providers {
        yaml.push_str(&format!(
            "  - name: {name}\n    kind: openai\n    base_url: {url}\n    connect_timeout_ms: 2000\n    \
             first_byte_timeout_ms: 10000\n    keys:\n      - {{name: primary, value: {PROVIDER_KEY}}}\n"
        ));
    }
    yaml
}

/// A free address and the YAML mapping of a TLS listener on it, with `pki`'s localhost
/// certificate.
fn tls_listener(pki: &Pki) -> (SocketAddr, String) {
    let (cert, key) = pki.localhost();
    let addr = free_addr();
    let listener = format!(
        "{{address: '{addr}', tls: {{cert: {}, key: {}}}}}",
        cert.display(),
        key.display()
    );
    (addr, listener)
}

fn spawn(yaml: &str) -> Result<RunningServer, refract::server::ServerError> {
    let config = from_yaml_str_with_env(yaml, &|_| None).unwrap_or_else(|e| panic!("config:\n{e}\n{yaml}"));
    refract::server::spawn(config)
}

/// Starts a gateway with a plain listener; returns its address and the running server.
fn start_plain(ca_file: Option<&Path>, providers: &[(&str, &str)]) -> (SocketAddr, RunningServer) {
    let addr = free_addr();
    let server = spawn(&gateway_yaml(&format!("address: {addr}"), ca_file, providers)).expect("spawn gateway");
    wait_listening(addr);
    (addr, server)
}

/// An edit for `model` with `image` as its only image.
fn edit_form(model: &str, image: &[u8]) -> Form {
    Form::new()
        .text("model", model)
        .text("prompt", "make it blue")
        .file("image", "in.png", "image/png", image)
}

fn edit(addr: SocketAddr, form: &Form) -> Response {
    let mut c = Conn::open(addr);
    c.send(&post_head("/v1/images/edits", &[], form, None));
    c.send(&form.body());
    c.read_response()
}

/// The `base_url` for a provider at `addr` named `host`.
fn https_url(host: &str, addr: SocketAddr) -> String {
    format!("https://{host}:{}/v1", addr.port())
}

// ---------------------------------------------------------------------------------------------
// A TLS client (rustls on ring, trusting the test CA)
// ---------------------------------------------------------------------------------------------

fn client_config(pki: &Pki, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("add CA");
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

fn tls_connect(
    pki: &Pki,
    addr: SocketAddr,
    alpn: &[&[u8]],
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("server name");
    let conn = rustls::ClientConnection::new(client_config(pki, alpn), name).expect("client connection");
    let sock = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    sock.set_read_timeout(Some(IO_TIMEOUT)).expect("read timeout");
    rustls::StreamOwned::new(conn, sock)
}

/// An h2 client over TLS (ALPN h2) to the gateway at `addr`: the request sender, and the
/// connection for the caller to drive.
async fn h2_client(
    pki: &Pki,
    addr: SocketAddr,
) -> (
    h2::client::SendRequest<Bytes>,
    h2::client::Connection<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, Bytes>,
) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let connector = tokio_rustls::TlsConnector::from(client_config(pki, &[b"h2"]));
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    h2::client::handshake(tls).await.unwrap()
}

/// An h2 answer's body, read to its end (or to its first error).
async fn h2_body(mut body: h2::RecvStream) -> Vec<u8> {
    let mut answer = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        answer.extend_from_slice(&chunk);
    }
    answer
}

/// Sends `request` (which must ask for `Connection: close`) over TLS and reads the response to
/// the end of the connection.
fn tls_exchange(pki: &Pki, addr: SocketAddr, request: &[u8]) -> Response {
    let mut tls = tls_connect(pki, addr, &[]);
    tls.write_all(request).expect("send over TLS");
    tls.flush().expect("flush");
    let mut raw = Vec::new();
    match tls.read_to_end(&mut raw) {
        Ok(_) => {}
        // A peer that closes without close_notify; what was read is still in `raw`.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {}
        Err(e) => panic!("read over TLS: {e}"),
    }
    parse_response(&raw)
}

/// Parses one complete HTTP/1.1 response (Content-Length, chunked, or to the end).
fn parse_response(raw: &[u8]) -> Response {
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut resp = httparse::Response::new(&mut hs);
    let head_len = match resp.parse(raw).expect("HTTP response") {
        httparse::Status::Complete(n) => n,
        httparse::Status::Partial => panic!("incomplete response: {:?}", String::from_utf8_lossy(raw)),
    };
    let headers: Vec<(String, Vec<u8>)> = resp
        .headers
        .iter()
        .map(|h| (h.name.to_ascii_lowercase(), h.value.to_vec()))
        .collect();
    let status = resp.code.unwrap_or(0);
    let r = Response {
        status,
        headers,
        body: Vec::new(),
    };
    let rest = &raw[head_len..];
    let body = if let Some(len) = r.header("content-length") {
        let len: usize = len.trim().parse().expect("Content-Length");
        assert!(rest.len() >= len, "short body");
        rest[..len].to_vec()
    } else if r
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        let (mut body, mut rest) = (Vec::new(), rest);
        loop {
            let eol = rest.windows(2).position(|w| w == b"\r\n").expect("chunk size line");
            let size_text = String::from_utf8_lossy(&rest[..eol]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).expect("chunk size");
            rest = &rest[eol + 2..];
            if size == 0 {
                break body;
            }
            body.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
    } else {
        rest.to_vec()
    };
    Response { body, ..r }
}

// ---------------------------------------------------------------------------------------------
// Tests: https providers
// ---------------------------------------------------------------------------------------------

/// With `server.ca_file` naming the private CA, an edit reaches an https provider with SNI and
/// Host set from `base_url` and the image intact; a host name the certificate does not cover
/// is refused (502), and so is a provider reached by IP without that IP in the certificate.
#[test]
fn https_provider_is_trusted_through_ca_file() {
    let pki = Pki::new();
    let (cert, key) = pki.localhost();
    let (other_cert, other_key) = pki.leaf("other", &["other.example"]);
    let (good, wrong_name) = (free_localhost_addr(), free_localhost_addr());
    let provider = HttpsProvider::start(&[(good, &cert, &key), (wrong_name, &other_cert, &other_key)]);
    let ip = good.ip();
    let ip_host = if ip.is_ipv6() {
        format!("[{ip}]")
    } else {
        ip.to_string()
    };
    let (good_url, ip_url, wrong_url) = (
        https_url("localhost", good),
        https_url(&ip_host, good),
        https_url("localhost", wrong_name),
    );
    let (gw, _server) = start_plain(
        Some(&pki.ca),
        &[("good", &good_url), ("byip", &ip_url), ("wrongname", &wrong_url)],
    );

    // Several TLS records' worth, so the body crosses record boundaries.
    let image = big_png_like(300_000, 11);
    let r = edit(gw, &edit_form("good/gpt-image-1", &image));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["data"][0]["b64_json"], "AAAA", "{}", r.text());
    let seen = provider.seen();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let s = &seen[0];
    assert!(s.tls);
    assert_eq!(s.path, "/v1/images/edits");
    assert_eq!(s.host.as_deref(), Some(format!("localhost:{}", good.port()).as_str()));
    assert_eq!(s.sni.as_deref(), Some("localhost"), "SNI is the base_url host");
    assert_eq!(
        s.authorization.as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    let parts = parse_multipart(&s.content_type, &s.body);
    let images = parts_named(&parts, "image");
    assert_eq!(images.len(), 1, "{parts:?}");
    assert!(images[0].data == image, "the image must arrive byte for byte");
    assert_eq!(parts_named(&parts, "prompt")[0].text(), "make it blue");

    // By IP: the certificate has the IP, and rustls sends no SNI for an IP address.
    let r = edit(gw, &edit_form("byip/gpt-image-1", &tiny_png()));
    assert_eq!(r.status, 200, "{}", r.text());
    let seen = provider.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[1].sni, None);
    assert_eq!(
        seen[1].host.as_deref(),
        Some(format!("{ip_host}:{}", good.port()).as_str())
    );

    // The certificate is for other.example, not localhost.
    let r = edit(gw, &edit_form("wrongname/gpt-image-1", &tiny_png()));
    let v = assert_gateway_error(&r, 502, "upstream_connect_error", "upstream_error", None);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("TLSHandshakeFailure"),
        "{v}"
    );
    assert!(!v.to_string().contains(PROVIDER_KEY), "{v}");
    assert_eq!(
        provider.seen().len(),
        2,
        "no request may reach a server that failed the check"
    );
}

/// Without `server.ca_file` the gateway trusts the system roots only, so the private CA's
/// certificate is refused: 502 with a Bifrost error, and nothing reaches the provider.
#[test]
fn https_provider_without_ca_file_uses_system_roots() {
    let pki = Pki::new();
    let (cert, key) = pki.localhost();
    let addr = free_localhost_addr();
    let provider = HttpsProvider::start(&[(addr, &cert, &key)]);
    let url = https_url("localhost", addr);
    let (gw, _server) = start_plain(None, &[("good", &url)]);

    let r = edit(gw, &edit_form("good/gpt-image-1", &tiny_png()));
    let v = assert_gateway_error(&r, 502, "upstream_connect_error", "upstream_error", None);
    assert_eq!(v["extra_fields"]["provider"], "good", "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("TLSHandshakeFailure"),
        "{v}"
    );
    assert!(provider.seen().is_empty());
}

/// A `ca_file` that Pingora's rustls connector could not use is refused when the server is
/// built (Pingora itself would panic, or trust nothing), naming `server.ca_file`.
#[test]
fn unusable_ca_file_is_a_startup_error() {
    let pki = Pki::new();
    let (_, key) = pki.localhost();
    let empty = pki.path("empty.pem");
    std::fs::write(&empty, "").unwrap();
    for (file, why) in [(&key, "a private key"), (&empty, "an empty file")] {
        let yaml = gateway_yaml(
            &format!("address: {}", free_addr()),
            Some(file),
            &[("good", "https://localhost:1/v1")],
        );
        match spawn(&yaml) {
            Ok(_) => panic!("{why} was accepted as ca_file"),
            Err(e) => assert!(e.to_string().starts_with("server.ca_file "), "{why}: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests: the TLS listener
// ---------------------------------------------------------------------------------------------

/// A TLS listener serves `/health` and image edits over TLS (HTTP/1.1), and offers h2 by ALPN.
#[test]
fn tls_listener_serves_health_and_edits() {
    let pki = Pki::new();
    let mock = MockUpstream::start();
    let (addr, listener) = tls_listener(&pki);
    let _server = spawn(&gateway_yaml(&listener, None, &[("openai", &mock.base_url())])).expect("spawn gateway");
    wait_listening(addr);

    let r = tls_exchange(
        &pki,
        addr,
        format!(
            "GET /health HTTP/1.1\r\nHost: localhost:{}\r\nConnection: close\r\n\r\n",
            addr.port()
        )
        .as_bytes(),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json(), serde_json::json!({"status": "ok"}));

    let image = big_png_like(200_000, 5);
    let form = edit_form("openai/gpt-image-1", &image);
    let mut request = post_head("/v1/images/edits", &[("Connection", "close")], &form, None);
    request.extend_from_slice(&form.body());
    let r = tls_exchange(&pki, addr, &request);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["data"].is_array(), "{}", r.text());
    let rec = mock.only_request();
    let parts = parse_multipart(&rec.header("content-type").unwrap_or_default(), &rec.body);
    assert!(
        parts_named(&parts, "image")[0].data == image,
        "the image must arrive byte for byte"
    );

    // The listener offers h2 (and HTTP/1.1) by ALPN.
    let mut tls = tls_connect(&pki, addr, &[b"h2", b"http/1.1"]);
    while tls.conn.is_handshaking() {
        tls.conn.complete_io(&mut tls.sock).expect("TLS handshake");
    }
    assert_eq!(tls.conn.alpn_protocol(), Some(&b"h2"[..]));
}

/// TLS listener files that exist but hold the wrong thing are refused when the server is built
/// (with rustls, Pingora would otherwise panic when the listener starts).
#[test]
fn unusable_tls_listener_files_are_a_startup_error() {
    let pki = Pki::new();
    let (cert, key) = pki.localhost();
    for (c, k, why) in [(&cert, &cert, "no private key"), (&key, &key, "no certificate")] {
        let addr = free_addr();
        let listener = format!(
            "{{address: '{addr}', tls: {{cert: {}, key: {}}}}}",
            c.display(),
            k.display()
        );
        match spawn(&gateway_yaml(&listener, None, &[("openai", "http://127.0.0.1:1/v1")])) {
            Ok(_) => panic!("a listener with {why} was accepted"),
            Err(e) => assert!(e.to_string().starts_with(&format!("listener {addr}: ")), "{why}: {e}"),
        }
    }
}

/// Over h2 too (Pingora reads an h2 request body without a timer of its own), an upload that
/// stops arriving is cut off at `limits.body_read_timeout_ms` with a 408, and the provider
/// request streamed while it arrived is abandoned unfinished.
#[test]
fn an_h2_upload_that_stops_is_cut_off_at_the_body_read_timeout() {
    let pki = Pki::new();
    let mock = MockUpstream::start();
    let (addr, listener) = tls_listener(&pki);
    let yaml =
        gateway_yaml(&listener, None, &[("openai", &mock.base_url())]) + "limits:\n  body_read_timeout_ms: 500\n";
    let _server = spawn(&yaml).expect("spawn gateway");
    wait_listening(addr);
    let form = edit_form("openai/gpt-image-1", &big_png_like(512 * 1024, 9));
    let body = Bytes::from(form.body());
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, answer) = rt.block_on(async {
        let (mut client, connection) = h2_client(&pki, addr).await;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = http::Request::post(format!("https://localhost:{}/v1/images/edits", addr.port()))
            .header("content-type", form.content_type())
            .body(())
            .unwrap();
        let (response, mut upload) = client.send_request(request, false).unwrap();
        // The fields and the start of the image (within the initial flow-control window), then
        // nothing more.
        upload.send_data(body.slice(..32 * 1024), false).unwrap();
        let response = tokio::time::timeout(std::time::Duration::from_secs(15), response)
            .await
            .expect("no answer within 15 s")
            .expect("an answer");
        let status = response.status().as_u16();
        (status, h2_body(response.into_body()).await)
    });
    let v: serde_json::Value = serde_json::from_slice(&answer).expect("a JSON answer");
    assert_eq!(status, 408, "{v}");
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    let message = v["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("limits.body_read_timeout_ms (500 ms)"), "{message}");
    assert!(
        mock.wait_closed(1, std::time::Duration::from_secs(5)),
        "the upstream request was not abandoned"
    );
    assert!(mock.requests().is_empty(), "the provider got a complete request");
    assert_eq!(mock.incomplete().len(), 1);
}

/// h2 clients (TLS with ALPN h2) go through the client-connection layer to Pingora's h2 server:
/// a request is served, and a connection with no stream open is closed by the gateway after
/// `limits.keepalive_timeout_ms`.
#[test]
fn h2_is_served_and_an_idle_h2_connection_is_closed() {
    let pki = Pki::new();
    let mock = MockUpstream::start();
    let (addr, listener) = tls_listener(&pki);
    let yaml =
        gateway_yaml(&listener, None, &[("openai", &mock.base_url())]) + "limits:\n  keepalive_timeout_ms: 1000\n";
    let _server = spawn(&yaml).expect("spawn gateway");
    wait_listening(addr);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, answer, idle) = rt.block_on(async {
        let (mut client, connection) = h2_client(&pki, addr).await;
        // Ends when the connection does (the client keeps `client`, so it is the gateway that
        // closes it).
        let ended = tokio::spawn(async move {
            let _ = connection.await;
            std::time::Instant::now()
        });
        let request = http::Request::get(format!("https://localhost:{}/health", addr.port()))
            .body(())
            .unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.expect("an answer");
        let status = response.status().as_u16();
        let answer = h2_body(response.into_body()).await;
        let idle_since = std::time::Instant::now();
        let closed_at = tokio::time::timeout(std::time::Duration::from_secs(15), ended)
            .await
            .expect("an idle h2 connection is closed within 15 s")
            .unwrap();
        drop(client);
        (status, answer, closed_at.duration_since(idle_since))
    });
    assert_eq!((status, answer.as_slice()), (200, &br#"{"status":"ok"}"#[..]));
    assert!(
        idle >= std::time::Duration::from_millis(500),
        "closed after keepalive_timeout_ms, not before: {idle:?}"
    );
}

/// A converted answer is sent in pieces (its large images straight from the provider's answer
/// buffer, literals around them): over TLS, with HTTP/1.1 and with h2, it arrives whole, byte
/// for byte what the provider's images were, with a `Content-Length` that matches.
#[test]
fn a_spliced_answer_arrives_whole_over_tls_and_h2() {
    use base64::Engine;
    let pki = Pki::new();
    let mock = MockUpstream::start();
    let b64: Vec<String> = [300_000, 40_000]
        .iter()
        .enumerate()
        .map(|(i, len)| base64::engine::general_purpose::STANDARD.encode(big_png_like(*len, i as u64)))
        .collect();
    mock.always(Reply::json(
        200,
        &serde_json::json!({"created": 1, "data": [{"b64_json": b64[0]}, {"b64_json": b64[1], "revised_prompt": "r"}]}),
    ));
    let (addr, listener) = tls_listener(&pki);
    let _server = spawn(&gateway_yaml(&listener, None, &[("openai", &mock.base_url())])).expect("spawn gateway");
    wait_listening(addr);
    let form = edit_form("openai/gpt-image-1", &tiny_png());
    let check = |status: u16, length: Option<usize>, body: &[u8]| {
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(body));
        assert_eq!(length, Some(body.len()), "Content-Length");
        let v: serde_json::Value = serde_json::from_slice(body).expect("a JSON answer");
        assert_eq!(v["data"][0]["b64_json"].as_str(), Some(b64[0].as_str()));
        assert_eq!(v["data"][1]["b64_json"].as_str(), Some(b64[1].as_str()));
        assert_eq!(v["data"][1]["index"], 1);
        assert_eq!(v["extra_fields"]["provider"], "openai");
    };

    let mut request = post_head("/v1/images/edits", &[("Connection", "close")], &form, None);
    request.extend_from_slice(&form.body());
    let r = tls_exchange(&pki, addr, &request);
    check(
        r.status,
        r.header("content-length").and_then(|v| v.parse().ok()),
        &r.body,
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (status, length, answer) = rt.block_on(async {
        let (mut client, connection) = h2_client(&pki, addr).await;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        let request = http::Request::post(format!("https://localhost:{}/v1/images/edits", addr.port()))
            .header("content-type", form.content_type())
            .header("x-request-id", "h2-spliced")
            .body(())
            .unwrap();
        let (response, mut upload) = client.send_request(request, false).unwrap();
        upload.send_data(Bytes::from(form.body()), true).unwrap();
        let response = tokio::time::timeout(std::time::Duration::from_secs(15), response)
            .await
            .expect("an answer within 15 s")
            .expect("an answer");
        let status = response.status().as_u16();
        let length = response
            .headers()
            .get("content-length")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<usize>().ok());
        (status, length, h2_body(response.into_body()).await)
    });
    check(status, length, &answer);
}
