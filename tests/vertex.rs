//! Kind `vertex` end to end: a real gateway, a strict mock Vertex upstream, and a local fake
//! OAuth token endpoint that verifies the service account's RS256 JWT with the key's public
//! half. Covers token caching, one fetch for concurrent first requests, refresh of short-lived
//! tokens, token endpoint failures, the Imagen body (images byte for byte, the converted mask
//! pixel by pixel), `type` → `editMode`, synthesized streams and refusals before any call.
//! The cases every kind shares (basic edit, two images, mask, a refused capability, stream,
//! upstream error, fallback) are stamped on it in `tests/conformance`; this file keeps what is
//! specific to its wire.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use base64::Engine;
use common::*;
use refract::imaging::{encode_png, solid};
use ring::signature::{KeyPair, UnparsedPublicKey, RSA_PKCS1_2048_8192_SHA256};
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const MODEL: &str = "imagen-3.0-capability-001";
const PREDICT_PATH: &str =
    "/v1/projects/proj-1/locations/us-central1/publishers/google/models/imagen-3.0-capability-001:predict";
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/service-account.json");

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(v: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD
        .decode(v.as_str().unwrap_or_else(|| panic!("not a string: {v}")))
        .unwrap()
}

// ---------------------------------------------------------------------------------------------
// Fake OAuth token endpoint
// ---------------------------------------------------------------------------------------------

/// What the fake token endpoint answers.
#[derive(Clone, Copy)]
enum TokenReply {
    /// 200 with `expires_in`.
    Token { expires_in: u64 },
    /// An OAuth error with this status.
    Error(u16),
}

struct TokenState {
    fetches: AtomicUsize,
    reply: Mutex<TokenReply>,
    delay_ms: AtomicU64,
    /// Problems found in requests (a bad JWT must fail the test, not just get a 400).
    problems: Mutex<Vec<String>>,
    public_key: Vec<u8>,
    client_email: String,
    uri: Mutex<String>,
}

/// A tiny HTTP/1.1 server on an ephemeral loopback port answering `POST /token`.
struct FakeTokenServer {
    state: Arc<TokenState>,
}

impl FakeTokenServer {
    fn start(reply: TokenReply) -> FakeTokenServer {
        let key: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
        let pem = key["private_key"].as_str().unwrap();
        let der_b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
        let der = base64::engine::general_purpose::STANDARD.decode(der_b64).unwrap();
        let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(TokenState {
            fetches: AtomicUsize::new(0),
            reply: Mutex::new(reply),
            delay_ms: AtomicU64::new(0),
            problems: Mutex::new(Vec::new()),
            public_key: pair.public_key().as_ref().to_vec(),
            client_email: key["client_email"].as_str().unwrap().to_string(),
            uri: Mutex::new(format!("http://{addr}/token")),
        });
        let st = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let st = st.clone();
                std::thread::spawn(move || serve_token_connection(stream, &st));
            }
        });
        FakeTokenServer { state }
    }

    fn uri(&self) -> String {
        self.state.uri.lock().unwrap().clone()
    }

    fn fetches(&self) -> usize {
        self.state.fetches.load(Ordering::SeqCst)
    }

    fn problems(&self) -> Vec<String> {
        self.state.problems.lock().unwrap().clone()
    }
}

/// Reads one request (head and Content-Length body); `None` when the peer closed.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .unwrap_or(0);
    while buf.len() < head_end + len {
        let n = stream.read(&mut chunk).ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = buf[head_end..head_end + len].to_vec();
    buf.drain(..head_end + len);
    Some((head, body))
}

fn serve_token_connection(mut stream: TcpStream, st: &TokenState) {
    let _ = stream.set_read_timeout(Some(IO_TIMEOUT));
    let mut buf = Vec::new();
    while let Some((head, body)) = read_request(&mut stream, &mut buf) {
        st.fetches.fetch_add(1, Ordering::SeqCst);
        if let Err(p) = check_token_request(st, &head, &body) {
            st.problems.lock().unwrap().push(p);
        }
        std::thread::sleep(Duration::from_millis(st.delay_ms.load(Ordering::SeqCst)));
        let n = st.fetches.load(Ordering::SeqCst);
        let (status, answer) = match *st.reply.lock().unwrap() {
            TokenReply::Token { expires_in } => (
                200,
                json!({"access_token": format!("ya29.fake-token-{n}"), "expires_in": expires_in, "token_type": "Bearer"}),
            ),
            TokenReply::Error(status) => (
                status,
                json!({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}),
            ),
        };
        let body = answer.to_string();
        let reply = format!(
            "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if stream.write_all(reply.as_bytes()).is_err() {
            return;
        }
    }
}

/// Verifies a token request the way Google does: form body, JWT-bearer grant, RS256 signature
/// by the service account's key, claims.
fn check_token_request(st: &TokenState, head: &str, body: &[u8]) -> Result<(), String> {
    if !head.starts_with("POST /token HTTP/1.1\r\n") {
        return Err(format!("request line: {}", head.lines().next().unwrap_or("")));
    }
    if !head
        .to_ascii_lowercase()
        .contains("content-type: application/x-www-form-urlencoded\r\n")
    {
        return Err("content-type".into());
    }
    let body = String::from_utf8(body.to_vec()).map_err(|_| "body not UTF-8")?;
    let jwt = body
        .strip_prefix("grant_type=urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer&assertion=")
        .ok_or_else(|| format!("body: {body}"))?;
    let (input, signature) = jwt.rsplit_once('.').ok_or("no signature")?;
    let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|_| "signature not base64url")?;
    UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, &st.public_key)
        .verify(input.as_bytes(), &signature)
        .map_err(|_| "bad RS256 signature".to_string())?;
    let decode = |s: &str| -> Value {
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s).unwrap()).unwrap()
    };
    let (header, claims) = input.split_once('.').ok_or("no claims")?;
    let header = decode(header);
    let claims = decode(claims);
    if header != json!({"alg": "RS256", "typ": "JWT", "kid": "test-key-1"}) {
        return Err(format!("header {header}"));
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let iat = claims["iat"].as_u64().ok_or("iat")?;
    let ok = claims["iss"] == st.client_email.as_str()
        && claims["scope"] == "https://www.googleapis.com/auth/cloud-platform"
        && claims["aud"] == st.uri.lock().unwrap().as_str()
        && iat.abs_diff(now) < 60
        && claims["exp"].as_u64() == Some(iat + 3600);
    if ok {
        Ok(())
    } else {
        Err(format!("claims {claims}"))
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway with a vertex provider
// ---------------------------------------------------------------------------------------------

/// A gateway whose provider `vertex` (kind vertex) sends to `mock` and authenticates with the
/// fixture's service account, its `token_uri` rewritten to `token_uri`.
fn vertex_gateway(mock: &MockUpstream, token_uri: &str, dir: &tempfile::TempDir) -> Gateway {
    let mut key: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    key["token_uri"] = json!(token_uri);
    let path = dir.path().join("sa.json");
    std::fs::write(&path, key.to_string()).unwrap();
    let mut setup = Setup::new(&mock.base_url());
    setup.extra_providers = format!(
        "  - name: vertex\n    kind: vertex\n    project: proj-1\n    location: us-central1\n    base_url: {}\n    connect_timeout_ms: 2000\n    keys:\n      - name: sa\n        service_account_file: {}\n",
        mock.base_url(),
        path.display()
    );
    Gateway::start(&setup)
}

/// A fake token endpoint, a mock Vertex and a gateway using both.
struct Fixture {
    tokens: FakeTokenServer,
    mock: MockUpstream,
    gw: Gateway,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn start(reply: TokenReply) -> Fixture {
        let tokens = FakeTokenServer::start(reply);
        let mock = MockUpstream::start();
        let dir = tempfile::tempdir().unwrap();
        let gw = vertex_gateway(&mock, &tokens.uri(), &dir);
        Fixture {
            tokens,
            mock,
            gw,
            _dir: dir,
        }
    }
}

/// The answer the mock gives: `n` distinct small PNGs.
fn predictions(n: usize) -> (Value, Vec<Vec<u8>>) {
    let pngs: Vec<Vec<u8>> = (0..n)
        .map(|i| encode_png(&solid(2, 2, [i as u8 * 40, 1, 2, 255])).unwrap())
        .collect();
    let items: Vec<Value> = pngs
        .iter()
        .map(|p| json!({"bytesBase64Encoded": b64(p), "mimeType": "image/png"}))
        .collect();
    (json!({"predictions": items}), pngs)
}

fn vertex_form(prompt: &str) -> Form {
    Form::new()
        .text("model", &format!("vertex/{MODEL}"))
        .text("prompt", prompt)
        .file("image", "in.png", "image/png", &gradient_png())
}

/// The parts of a recorded `:predict` request every test checks: path, bearer token, JSON.
fn predict_json(r: &Recorded, token: &str) -> Value {
    common::wire::vertex::predict_json(r, PREDICT_PATH, token)
}

#[test]
fn service_account_token_is_fetched_once_and_reused_and_the_body_is_imagens() {
    let Fixture { tokens, mock, gw, .. } = Fixture::start(TokenReply::Token { expires_in: 3600 });
    let (answer, pngs) = predictions(2);
    let second = encode_png(&solid(6, 4, [9, 9, 9, 255])).unwrap();
    for i in 0..3 {
        mock.push(Reply::json(200, &answer));
        let form = vertex_form("a \"paper\" hat")
            .file("image[]", "second.png", "image/png", &second)
            .file("mask", "mask.png", "image/png", &unified_mask_png())
            .text("n", "2")
            .text("seed", "7")
            .text("negative_prompt", "blurry")
            .text("num_inference_steps", "25")
            .text("output_format", "png");
        let r = gw.edit(&form, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "request {i}: {}", r.text());
        let v = r.json();
        assert_eq!(v["data"].as_array().unwrap().len(), 2);
        for (k, png) in pngs.iter().enumerate() {
            assert_eq!(&unb64(&v["data"][k]["b64_json"]), png);
        }
        assert_eq!(v["extra_fields"]["provider"], "vertex");
    }
    assert_eq!(tokens.fetches(), 1, "one token for three requests");
    assert!(tokens.problems().is_empty(), "{:?}", tokens.problems());
    let requests = mock.requests();
    assert_eq!(requests.len(), 3);
    for r in &requests {
        let v = predict_json(r, "ya29.fake-token-1");
        let inst = &v["instances"][0];
        assert_eq!(inst["prompt"], "a \"paper\" hat");
        let refs = inst["referenceImages"].as_array().unwrap();
        assert_eq!(refs.len(), 3);
        assert_eq!(
            (refs[0]["referenceType"].as_str(), refs[0]["referenceId"].as_u64()),
            (Some("REFERENCE_TYPE_RAW"), Some(1))
        );
        assert_eq!(unb64(&refs[0]["referenceImage"]["bytesBase64Encoded"]), gradient_png());
        assert_eq!(refs[0]["referenceImage"]["mimeType"], "image/png");
        assert_eq!(refs[1]["referenceId"], 2);
        assert_eq!(unb64(&refs[1]["referenceImage"]["bytesBase64Encoded"]), second);
        assert_eq!(
            (refs[2]["referenceType"].as_str(), refs[2]["referenceId"].as_u64()),
            (Some("REFERENCE_TYPE_MASK"), Some(3))
        );
        assert_eq!(refs[2]["maskImageConfig"]["maskMode"], "MASK_MODE_USER_PROVIDED");
        common::wire::assert_converted_mask(&unb64(&refs[2]["referenceImage"]["bytesBase64Encoded"]), 255);
        assert_eq!(
            v["parameters"],
            json!({"editMode": "EDIT_MODE_INPAINT_INSERTION", "sampleCount": 2, "includeRaiReason": true,
                "seed": 7, "negativePrompt": "blurry", "editConfig": {"baseSteps": 25},
                "outputOptions": {"mimeType": "image/png"}})
        );
    }
}

#[test]
fn concurrent_first_requests_share_one_token_fetch() {
    let Fixture { tokens, mock, gw, .. } = Fixture::start(TokenReply::Token { expires_in: 3600 });
    tokens.state.delay_ms.store(400, Ordering::SeqCst);
    let gw = Arc::new(gw);
    let (answer, _) = predictions(1);
    for _ in 0..6 {
        mock.push(Reply::json(200, &answer));
    }
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let gw = gw.clone();
            std::thread::spawn(move || gw.edit(&vertex_form("hat"), &[("x-bf-vk", VK)]).status)
        })
        .collect();
    for h in handles {
        assert_eq!(h.join().unwrap(), 200);
    }
    assert_eq!(tokens.fetches(), 1, "no thundering herd");
    assert_eq!(mock.requests().len(), 6);
    for r in mock.requests() {
        predict_json(&r, "ya29.fake-token-1");
    }
}

#[test]
fn short_lived_tokens_are_refreshed() {
    let Fixture { tokens, mock, gw, .. } = Fixture::start(TokenReply::Token { expires_in: 1 });
    let (answer, _) = predictions(1);
    mock.push(Reply::json(200, &answer));
    mock.push(Reply::json(200, &answer));
    assert_eq!(gw.edit(&vertex_form("hat"), &[("x-bf-vk", VK)]).status, 200);
    std::thread::sleep(Duration::from_millis(1100));
    assert_eq!(gw.edit(&vertex_form("hat"), &[("x-bf-vk", VK)]).status, 200);
    assert_eq!(tokens.fetches(), 2);
    let requests = mock.requests();
    predict_json(&requests[0], "ya29.fake-token-1");
    predict_json(&requests[1], "ya29.fake-token-2");
    assert!(tokens.problems().is_empty(), "{:?}", tokens.problems());
}

/// Asserts a 502 that names the provider and shows no secret.
fn assert_token_failure(r: &Response) {
    let v = assert_gateway_error(r, 502, "upstream_connect_error", "upstream_error", None);
    let text = r.text();
    assert!(text.contains("'vertex'") && text.contains("token endpoint"), "{text}");
    let key: Value = serde_json::from_str(&std::fs::read_to_string(FIXTURE).unwrap()).unwrap();
    let pem_line = key["private_key"].as_str().unwrap().lines().nth(1).unwrap();
    for secret in [pem_line, "PRIVATE KEY", "eyJ", "ya29", "assertion"] {
        assert!(!text.contains(secret), "the error shows {secret}: {v}");
    }
}

#[test]
fn token_endpoint_failures_are_502s_without_secrets() {
    // The endpoint refuses the grant.
    let Fixture { tokens, mock, gw, .. } = Fixture::start(TokenReply::Error(400));
    let r = gw.edit(&vertex_form("hat"), &[("x-bf-vk", VK)]);
    let v = r.json();
    assert_eq!(r.status, 502, "{v}");
    assert_eq!(v["error"]["code"], "upstream_protocol_error");
    assert!(r.text().contains("invalid_grant"), "{v}");
    assert!(
        !r.text().contains("Invalid JWT Signature"),
        "the description is not echoed"
    );
    assert!(mock.requests().is_empty(), "no upstream call without a token");
    // It recovers once the endpoint answers again.
    *tokens.state.reply.lock().unwrap() = TokenReply::Token { expires_in: 3600 };
    mock.push(Reply::json(200, &predictions(1).0));
    assert_eq!(gw.edit(&vertex_form("hat"), &[("x-bf-vk", VK)]).status, 200);
    assert_eq!(tokens.fetches(), 2);

    // The endpoint is unreachable.
    let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let dir2 = tempfile::tempdir().unwrap();
    let gw2 = vertex_gateway(&mock, &format!("http://{closed}/token"), &dir2);
    let r = gw2.edit(&vertex_form("hat"), &[("x-bf-vk", VK)]);
    assert_token_failure(&r);
    assert_eq!(mock.requests().len(), 1, "still no upstream call");
}

#[test]
fn type_selects_the_edit_mode() {
    let Fixture { mock, gw, .. } = Fixture::start(TokenReply::Token { expires_in: 3600 });
    let (answer, _) = predictions(1);
    let cases = [
        (
            "outpainting",
            true,
            "EDIT_MODE_OUTPAINT",
            Some("MASK_MODE_USER_PROVIDED"),
        ),
        (
            "inpainting",
            true,
            "EDIT_MODE_INPAINT_INSERTION",
            Some("MASK_MODE_USER_PROVIDED"),
        ),
        (
            "background_removal",
            false,
            "EDIT_MODE_BGSWAP",
            Some("MASK_MODE_BACKGROUND"),
        ),
        ("", false, "EDIT_MODE_DEFAULT", None),
    ];
    for (i, (edit_type, with_mask, mode, mask_mode)) in cases.iter().enumerate() {
        mock.push(Reply::json(200, &answer));
        let mut form = vertex_form("hat");
        if !edit_type.is_empty() {
            form = form.text("type", edit_type);
        }
        if *with_mask {
            form = form.file("mask", "m.png", "image/png", &unified_mask_png());
        }
        let r = gw.edit(&form, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{edit_type}: {}", r.text());
        let v = predict_json(&mock.requests()[i], "ya29.fake-token-1");
        assert_eq!(v["parameters"]["editMode"], *mode, "{edit_type}");
        let refs = v["instances"][0]["referenceImages"].as_array().unwrap();
        let got = refs
            .iter()
            .find(|r| r["referenceType"] == "REFERENCE_TYPE_MASK")
            .map(|r| r["maskImageConfig"]["maskMode"].as_str().unwrap().to_string());
        assert_eq!(got.as_deref(), *mask_mode, "{edit_type}");
    }
    // A mask without alpha (one already in Imagen's convention, white = edit) is taken as
    // such (issue 18 item 8): Imagen gets the same pixels.
    let before = mock.requests().len();
    mock.push(Reply::json(200, &answer));
    let gray = refract::imaging::convert_mask(&unified_mask_png(), 255, 0).unwrap().png;
    let form = vertex_form("hat").file("mask", "m.png", "image/png", &gray);
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = predict_json(&mock.requests()[before], "ya29.fake-token-1");
    let refs = v["instances"][0]["referenceImages"].as_array().unwrap();
    let sent = refs
        .iter()
        .find(|r| r["referenceType"] == "REFERENCE_TYPE_MASK")
        .unwrap();
    let sent = unb64(&sent["referenceImage"]["bytesBase64Encoded"]);
    assert_eq!(
        refract::imaging::decode_png(&sent).unwrap(),
        refract::imaging::decode_png(&gray).unwrap()
    );
}

#[test]
fn stream_true_is_synthesized_from_the_complete_answer() {
    let Fixture { mock, gw, .. } = Fixture::start(TokenReply::Token { expires_in: 3600 });
    let (answer, pngs) = predictions(2);
    mock.push(Reply::json(200, &answer));
    let form = vertex_form("hat").text("n", "2").text("stream", "true");
    let r = gw.edit(&form, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
    let completed = completed_events(&r.body);
    assert_eq!(completed.len(), 2, "{}", r.text());
    for (ev, png) in completed.iter().zip(&pngs) {
        assert_eq!(ev["type"], "image_edit.completed");
        assert_eq!(&unb64(&ev["b64_json"]), png);
    }
    let v = predict_json(&mock.only_request(), "ya29.fake-token-1");
    assert!(v.get("stream").is_none() && v["parameters"].get("stream").is_none());
}

#[test]
fn unsupported_requests_never_reach_vertex() {
    let Fixture { tokens, mock, gw, .. } = Fixture::start(TokenReply::Token { expires_in: 3600 });
    let r = gw.edit(&vertex_form("hat").text("n", "5"), &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 400, "unsupported_operation", "invalid_request_error", Some("n"));
    let mut five = vertex_form("hat");
    for _ in 0..4 {
        five = five.file("image[]", "x.png", "image/png", &gradient_png());
    }
    let r = gw.edit(&five, &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 400, "unsupported_operation", "invalid_request_error", Some("image"));
    // URLs are stored by the gateway, except a stream's.
    let url_stream = vertex_form("hat").text("response_format", "url").text("stream", "true");
    let r = gw.edit(&url_stream, &[("x-bf-vk", VK)]);
    assert_gateway_error(
        &r,
        400,
        "unsupported_operation",
        "invalid_request_error",
        Some("response_format"),
    );
    assert!(mock.requests().is_empty());
    assert_eq!(tokens.fetches(), 0, "refused before any credential work");
}

#[test]
fn provider_errors_and_filtered_answers() {
    let Fixture { mock, gw, .. } = Fixture::start(TokenReply::Token { expires_in: 3600 });
    mock.push(Reply::json(
        429,
        &json!({"error": {"code": 429, "message": "Quota exceeded for imagen.", "status": "RESOURCE_EXHAUSTED"}}),
    ));
    let r = gw.edit(&vertex_form("hat"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["error"]["message"], "Quota exceeded for imagen.");
    assert_eq!(v["error"]["code"], "RESOURCE_EXHAUSTED");
    mock.push(Reply::json(
        200,
        &json!({"predictions": [{"raiFilteredReason": "filtered: people"}]}),
    ));
    let r = gw.edit(&vertex_form("hat"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400);
    let v = r.json();
    assert_eq!(v["error"]["code"], "moderation_blocked");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("filtered: people"),
        "{v}"
    );
}
