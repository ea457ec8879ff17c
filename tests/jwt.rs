//! JWT identities (issue 15): tokens minted here at test time (RS256, ES256, EdDSA from keys
//! generated now, HS256 from a secret), checked by the pure auth step and end to end through a
//! gateway whose JWKS is served by a test server on loopback (rotation, failures, an
//! unreachable endpoint), and every rejection with its reason. Also: virtual keys in every
//! header and `expires_at`, and what a token grants on async jobs.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::Engine;
use common::*;
use http::{HeaderMap, HeaderValue};
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use refract::auth::{Identity, KeyStore, Verdict};
use refract::config::from_yaml_str_with_env;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const HS_SECRET: &str = "test-hs-secret-0123456789abcdef-0123456789";
const MPILOT: &str = "https://mpilot.test";
const TFY: &str = "https://tfy.test";
const FILE_ISSUER: &str = "https://files.test";

/// A signing key and the public JWK that verifies it.
struct Signer {
    alg: Algorithm,
    kid: Option<String>,
    key: EncodingKey,
    jwk: Option<Jwk>,
}

fn with_kid(alg: Algorithm, kid: &str, key: EncodingKey) -> Signer {
    let mut jwk = Jwk::from_encoding_key(&key, alg).unwrap();
    jwk.common.key_id = Some(kid.to_string());
    Signer {
        alg,
        kid: Some(kid.to_string()),
        key,
        jwk: Some(jwk),
    }
}

/// A fresh RSA-2048 key (RS256).
fn rsa(kid: &str) -> Signer {
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).unwrap();
    let pkcs8 = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).unwrap();
    let pkcs8 = pkcs8.as_ref();
    // PKCS#8 wraps the PKCS#1 RSAPrivateKey in an OCTET STRING after a fixed 26-byte prefix.
    assert_eq!(&pkcs8[22..24], &[0x04, 0x82], "PKCS#8 layout");
    with_kid(Algorithm::RS256, kid, EncodingKey::from_rsa_der(&pkcs8[26..]))
}

/// A fresh P-256 key (ES256).
fn ec(kid: &str) -> Signer {
    let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).unwrap();
    let der = pair.to_pkcs8v1().unwrap();
    with_kid(Algorithm::ES256, kid, EncodingKey::from_ec_der(der.as_ref()))
}

/// A fresh Ed25519 key (EdDSA).
fn ed(kid: &str) -> Signer {
    let pair = Ed25519KeyPair::generate().unwrap();
    let der = pair.to_pkcs8v1().unwrap();
    with_kid(Algorithm::EdDSA, kid, EncodingKey::from_ed_der(der.as_ref()))
}

/// The shared secret (HS256).
fn hmac(secret: &str) -> Signer {
    Signer {
        alg: Algorithm::HS256,
        kid: None,
        key: EncodingKey::from_secret(secret.as_bytes()).unwrap(),
        jwk: None,
    }
}

fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

/// A token of `signer` with `claims` (plus `exp` in an hour unless given).
fn mint(signer: &Signer, claims: Value) -> String {
    let mut claims = claims;
    if claims.get("exp").is_none() {
        claims["exp"] = json!(now() + 3600);
    }
    let mut header = Header::new(signer.alg);
    header.kid = signer.kid.clone();
    jsonwebtoken::encode(&header, &claims, &signer.key).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn jwks(signers: &[&Signer]) -> String {
    serde_json::to_string(&JwkSet {
        keys: signers.iter().filter_map(|s| s.jwk.clone()).collect(),
    })
    .unwrap()
}

fn env(name: &str) -> Option<String> {
    (name == "JWT_HS").then(|| HS_SECRET.to_string())
}

const VIRTUAL_KEYS: &str = "virtual_keys:
  - {id: team-a, key: team-a-plain-key}
  - {id: team-b, key: sk-bf-team-b}
  - {id: narrow, key: narrow-key, models: [openai/gpt-image-1]}
  - {id: off, key: off-key, enabled: false}
  - {id: old, key: old-key, expires_at: '2020-01-01T00:00:00Z'}
";

/// The pure auth step for a config with an HS issuer and a JWKS-file issuer holding `file_keys`.
fn key_store(file_keys: &[&Signer]) -> (KeyStore, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("jwks.json");
    std::fs::write(&file, jwks(file_keys)).unwrap();
    let yaml = format!(
        "auth:
  jwt:
    issuers:
      - {{issuer: '{MPILOT}', audiences: [refract], secret: env.JWT_HS, admin_claim: role, admin_value: admin}}
      - {{issuer: '{FILE_ISSUER}', audiences: [refract], jwks_file: '{}', algorithms: [RS256, ES256, EdDSA], virtual_key_claim: sub, leeway_seconds: 5}}
providers: [{{name: openai, kind: openai, keys: [{{name: k, value: sk-up}}]}}]
{VIRTUAL_KEYS}",
        file.display()
    );
    let config = from_yaml_str_with_env(&yaml, &env).unwrap_or_else(|e| panic!("{e}"));
    (KeyStore::from_config(&config), dir)
}

fn bearer(token: &str) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(
        "authorization",
        HeaderValue::from_str(&format!("Bearer {token}")).unwrap(),
    );
    h
}

fn authenticate(store: &KeyStore, token: &str) -> Result<Identity, (u16, &'static str, String)> {
    match store.authenticate(&bearer(token), now(), &()) {
        Ok(Verdict::Caller(id)) => Ok(id),
        Ok(Verdict::FetchKeys { .. }) => panic!("no JWKS URL here"),
        Err(e) => Err((e.status(), e.code(), e.to_string())),
    }
}

/// The 401 code of a refused token, checking that the message does not echo it.
fn refused(store: &KeyStore, token: &str) -> &'static str {
    let (status, code, message) = authenticate(store, token).expect_err("refused");
    assert_eq!(status, 401, "{code}: {message}");
    assert!(!message.contains(token), "{message}");
    code
}

#[test]
fn every_algorithm_mints_a_virtual_key_token() {
    let (r, e, d) = (rsa("r1"), ec("e1"), ed("d1"));
    let (store, _dir) = key_store(&[&r, &e, &d]);
    for signer in [&r, &e, &d] {
        let token = mint(signer, json!({"iss": FILE_ISSUER, "aud": "refract", "sub": "team-a"}));
        let id = authenticate(&store, &token).unwrap_or_else(|e| panic!("{:?}: {e:?}", signer.alg));
        assert_eq!(id.key_id.as_deref(), Some("team-a"));
        assert_eq!(id.issuer.as_deref(), Some(FILE_ISSUER));
        assert_eq!(id.subject.as_deref(), Some("team-a"));
        assert!(!id.admin);
    }
    let token = mint(
        &hmac(HS_SECRET),
        json!({"iss": MPILOT, "aud": ["x", "refract"], "vk": "narrow", "sub": "u1"}),
    );
    let id = authenticate(&store, &token).unwrap();
    assert_eq!(id.key_id.as_deref(), Some("narrow"));
    assert_eq!(id.subject.as_deref(), Some("u1"));
    // exactly the key's permissions
    assert!(id.check("openai", "gpt-image-1").is_ok());
    assert_eq!(id.check("openai", "dall-e-2").unwrap_err().code(), "model_blocked");
}

#[test]
fn an_admin_token_may_use_everything_and_a_models_claim_narrows_it() {
    let (store, _dir) = key_store(&[]);
    let hs = hmac(HS_SECRET);
    let admin = authenticate(
        &store,
        &mint(&hs, json!({"iss": MPILOT, "aud": "refract", "role": "admin"})),
    )
    .unwrap();
    assert!(admin.admin);
    assert_eq!(admin.key_id, None);
    assert!(admin.check("anything", "at-all").is_ok());
    // a narrowed token asking for another model: 403
    let token = mint(
        &hs,
        json!({"iss": MPILOT, "aud": "refract", "vk": "team-a", "models": ["openai/gpt-image-1"]}),
    );
    let id = authenticate(&store, &token).unwrap();
    assert!(id.check("openai", "gpt-image-1").is_ok());
    let e = id.check("openai", "dall-e-2").unwrap_err();
    assert_eq!((e.status(), e.code()), (403, "model_blocked"));
    // the claim never widens the key's own list
    let token = mint(
        &hs,
        json!({"iss": MPILOT, "aud": "refract", "vk": "narrow", "models": ["openai/*"]}),
    );
    let id = authenticate(&store, &token).unwrap();
    assert_eq!(id.check("openai", "dall-e-2").unwrap_err().code(), "model_blocked");
    // a role that is not the admin value is an ordinary token, which must name a key
    let token = mint(&hs, json!({"iss": MPILOT, "aud": "refract", "role": "viewer"}));
    assert_eq!(refused(&store, &token), "token_invalid_claim");
}

#[test]
fn every_forged_or_stale_token_is_401_with_its_reason() {
    let (r, e) = (rsa("r1"), ec("e1"));
    let (store, _dir) = key_store(&[&r, &e]);
    let hs = hmac(HS_SECRET);
    let good = json!({"iss": MPILOT, "aud": "refract", "vk": "team-a"});
    let with = |extra: Value| {
        let mut c = good.clone();
        for (k, v) in extra.as_object().unwrap() {
            c[k] = v.clone();
        }
        c
    };
    assert!(authenticate(&store, &mint(&hs, good.clone())).is_ok());
    let cases: Vec<(&str, String)> = vec![
        ("token_expired", mint(&hs, with(json!({"exp": now() - 120})))),
        ("token_not_yet_valid", mint(&hs, with(json!({"nbf": now() + 600})))),
        (
            "token_unknown_issuer",
            mint(&hs, with(json!({"iss": "https://evil.test"}))),
        ),
        ("token_wrong_audience", mint(&hs, with(json!({"aud": "someone-else"})))),
        (
            "token_wrong_audience",
            mint(&hs, json!({"iss": MPILOT, "vk": "team-a"})),
        ),
        (
            "token_invalid_claim",
            mint(&hs, json!({"iss": MPILOT, "aud": "refract"})),
        ),
        (
            "token_bad_signature",
            mint(&hmac("another-secret-0123456789abcdef-xyz"), good.clone()),
        ),
        ("virtual_key_not_found", mint(&hs, with(json!({"vk": "nobody"})))),
        ("virtual_key_blocked", mint(&hs, with(json!({"vk": "off"})))),
        ("virtual_key_expired", mint(&hs, with(json!({"vk": "old"})))),
        // an unknown kid in a JWKS file
        (
            "token_unknown_key",
            mint(
                &rsa("not-in-the-file"),
                json!({"iss": FILE_ISSUER, "aud": "refract", "sub": "team-a"}),
            ),
        ),
        // EdDSA is allowed, but the file has no Ed25519 key with this kid
        (
            "token_unknown_key",
            mint(
                &ed("r1"),
                json!({"iss": FILE_ISSUER, "aud": "refract", "sub": "team-a"}),
            ),
        ),
    ];
    for (code, token) in &cases {
        assert_eq!(refused(&store, token), *code, "{token}");
    }

    // alg none: never
    let payload = b64(good.to_string().as_bytes());
    let none = format!("{}.{payload}.", b64(br#"{"alg":"none","typ":"JWT"}"#));
    assert_eq!(refused(&store, &none), "token_algorithm_not_allowed");

    // RS/HS confusion: an HS256 token keyed with the RSA issuer's public key material
    let Some(Jwk {
        algorithm: jsonwebtoken::jwk::AlgorithmParameters::RSA(public),
        ..
    }) = &r.jwk
    else {
        panic!("an RSA JWK")
    };
    let confused = Signer {
        kid: Some("r1".into()),
        ..hmac(&public.n)
    };
    let token = mint(
        &confused,
        json!({"iss": FILE_ISSUER, "aud": "refract", "sub": "team-a"}),
    );
    assert_eq!(refused(&store, &token), "token_algorithm_not_allowed");
    // ... and an RS256 token presented to the HS issuer
    let token = mint(&r, good.clone());
    assert_eq!(refused(&store, &token), "token_algorithm_not_allowed");

    // tampered payload: another key named, the signature kept
    let token = mint(&e, json!({"iss": FILE_ISSUER, "aud": "refract", "sub": "narrow"}));
    let parts: Vec<&str> = token.split('.').collect();
    let forged_claims = json!({"iss": FILE_ISSUER, "aud": "refract", "sub": "team-a", "exp": now() + 3600});
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(forged_claims.to_string().as_bytes()),
        parts[2]
    );
    assert_eq!(refused(&store, &forged), "token_bad_signature");

    // garbage shaped like a JWT
    assert_eq!(refused(&store, "eyJhbGciOi.eyJ.sig"), "token_malformed");
}

#[test]
fn a_small_leeway_forgives_clock_skew() {
    let r = rsa("r1");
    let (store, _dir) = key_store(&[&r]);
    // the file issuer allows 5 s
    let claims = json!({"iss": FILE_ISSUER, "aud": "refract", "sub": "team-a", "exp": now() - 2});
    assert!(authenticate(&store, &mint(&r, claims)).is_ok());
    let claims = json!({"iss": FILE_ISSUER, "aud": "refract", "sub": "team-a", "exp": now() - 60});
    assert_eq!(refused(&store, &mint(&r, claims)), "token_expired");
}

// ---- end to end ----

/// A JWKS endpoint on loopback: serves the current set (or a failure), counts fetches.
struct JwksServer {
    mock: MockUpstream,
    body: Arc<Mutex<Option<String>>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    fn start(keys: &[&Signer]) -> JwksServer {
        let mock = MockUpstream::start();
        let body = Arc::new(Mutex::new(Some(jwks(keys))));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (b, f) = (body.clone(), fetches.clone());
        mock.respond_with(move |_| {
            f.fetch_add(1, Ordering::SeqCst);
            match b.lock().unwrap().as_deref() {
                Some(set) => Reply::raw(200, "application/json", set.as_bytes()),
                None => Reply::raw(503, "text/plain", b"down"),
            }
        });
        JwksServer { mock, body, fetches }
    }

    fn url(&self) -> String {
        format!("http://{}/.well-known/jwks.json", self.mock.addr)
    }

    fn serve(&self, keys: Option<&[&Signer]>) {
        *self.body.lock().unwrap() = keys.map(jwks);
    }

    fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

/// A gateway whose `tfy` issuer's keys come from `jwks_url` (refetched at most every
/// `refresh_ms`), plus the HS issuer, with jobs kept in a temporary directory.
struct JwtGateway {
    addr: std::net::SocketAddr,
    _server: refract::server::RunningServer,
    _dir: tempfile::TempDir,
}

fn start_gateway(upstream: &str, jwks_url: &str, refresh_ms: u64) -> JwtGateway {
    start_gateway_aged(upstream, jwks_url, refresh_ms, 3_600_000)
}

/// [`start_gateway`], the fetched JWKS used for `max_age_ms`.
fn start_gateway_aged(upstream: &str, jwks_url: &str, refresh_ms: u64, max_age_ms: u64) -> JwtGateway {
    let dir = tempfile::tempdir().unwrap();
    let listen = free_addr();
    let yaml = format!(
        "server: {{threads: 2, grace_period_seconds: 0, graceful_shutdown_timeout_seconds: 0}}
listeners: [{{address: '{listen}'}}]
auth:
  jwt:
    issuers:
      - {{issuer: '{MPILOT}', audiences: [refract], secret: env.JWT_HS, admin_claim: role, admin_value: admin}}
      - {{issuer: '{TFY}', audiences: [refract], jwks_url: '{jwks_url}', algorithms: [RS256, ES256], jwks_refresh_interval_ms: {refresh_ms}, jwks_max_age_ms: {max_age_ms}}}
store: {{kind: embedded, path: '{store}'}}
objects: {{kind: fs, path: '{objects}'}}
jobs: {{workers: 0}}
providers:
  - {{name: openai, kind: openai, base_url: '{upstream}', keys: [{{name: k, value: sk-upstream}}]}}
{VIRTUAL_KEYS}",
        store = dir.path().join("store").display(),
        objects = dir.path().join("objects").display(),
    );
    let config = from_yaml_str_with_env(&yaml, &env).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    let server = refract::server::spawn(config).unwrap();
    wait_listening(listen);
    JwtGateway {
        addr: listen,
        _server: server,
        _dir: dir,
    }
}

impl JwtGateway {
    fn edit(&self, headers: &[(&str, &str)]) -> Response {
        self.post("/v1/images/edits", headers)
    }

    fn post(&self, path: &str, headers: &[(&str, &str)]) -> Response {
        let form = valid_form();
        let mut c = Conn::open(self.addr);
        c.send(&post_head(path, headers, &form, None));
        c.send(&form.body());
        c.read_response()
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
        let mut c = Conn::open(self.addr);
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: gateway.test\r\n");
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        c.send(head.as_bytes());
        c.read_response()
    }
}

fn auth_header(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn keys_work_in_every_header_whatever_their_prefix() {
    let up = MockUpstream::start();
    let jwks = JwksServer::start(&[]);
    let gw = start_gateway(&up.base_url(), &jwks.url(), 1000);
    let bearer = auth_header("team-a-plain-key");
    for header in [
        ("x-bf-vk", "team-a-plain-key"),
        ("Authorization", bearer.as_str()),
        ("x-api-key", "team-a-plain-key"),
        ("x-goog-api-key", "team-a-plain-key"),
        ("x-goog-api-key", "sk-bf-team-b"),
    ] {
        let r = gw.edit(&[header]);
        assert_eq!(r.status, 200, "{}: {}", header.0, r.text());
    }
    for rec in up.requests() {
        assert_eq!(rec.header("authorization").as_deref(), Some("Bearer sk-upstream"));
        assert!(rec.header("x-goog-api-key").is_none());
    }
    let r = gw.edit(&[("Authorization", "Bearer sk-openai-not-ours-123")]);
    assert_gateway_error(&r, 401, "virtual_key_not_found", "authentication_error", None);
    assert!(!r.text().contains("not-ours"));
    let r = gw.edit(&[("Authorization", "Bearer old-key")]);
    assert_gateway_error(&r, 401, "virtual_key_expired", "authentication_error", None);
    assert_eq!(jwks.fetches(), 0, "no token, no JWKS fetch");
}

#[test]
fn jwks_is_fetched_cached_rotated_and_kept_when_the_endpoint_fails() {
    let up = MockUpstream::start();
    let (k1, k2) = (rsa("k1"), ec("k2"));
    let jwks = JwksServer::start(&[&k1]);
    let gw = start_gateway(&up.base_url(), &jwks.url(), 1500);
    let claims = json!({"iss": TFY, "aud": "refract", "vk": "team-a", "sub": "user-1"});
    let t1 = mint(&k1, claims.clone());
    let r = gw.edit(&[("Authorization", &auth_header(&t1))]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(jwks.fetches(), 1);
    // cached: no second fetch
    assert_eq!(gw.edit(&[("Authorization", &auth_header(&t1))]).status, 200);
    assert_eq!(jwks.fetches(), 1);

    // an unknown kid refetches at most once per interval
    let stranger = mint(&rsa("k9"), claims.clone());
    for _ in 0..5 {
        let r = gw.edit(&[("Authorization", &auth_header(&stranger))]);
        assert_gateway_error(&r, 401, "token_unknown_key", "authentication_error", None);
    }
    assert!(jwks.fetches() <= 2, "{} fetches for 5 unknown kids", jwks.fetches());

    // rotation: the issuer adds k2; once the interval has passed, a k2 token fetches it
    jwks.serve(Some(&[&k1, &k2]));
    std::thread::sleep(Duration::from_millis(1600));
    let t2 = mint(&k2, claims.clone());
    let r = gw.edit(&[("Authorization", &auth_header(&t2))]);
    assert_eq!(r.status, 200, "{}", r.text());

    // the endpoint fails: the last good set stands
    jwks.serve(None);
    std::thread::sleep(Duration::from_millis(1600));
    let before = jwks.fetches();
    let r = gw.edit(&[("Authorization", &auth_header(&stranger))]);
    assert_gateway_error(&r, 401, "token_unknown_key", "authentication_error", None);
    assert_eq!(jwks.fetches(), before + 1, "the unknown kid tried the endpoint");
    for token in [&t1, &t2] {
        let r = gw.edit(&[("Authorization", &auth_header(token))]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // and unreachable altogether
    drop(jwks);
    for token in [&t1, &t2] {
        assert_eq!(gw.edit(&[("Authorization", &auth_header(token))]).status, 200);
    }
}

/// A set past its max age is used while it is fetched again in the background: a key the
/// issuer removed stops verifying.
#[test]
fn an_old_jwks_is_fetched_again_so_removed_keys_stop_verifying() {
    let up = MockUpstream::start();
    let (k1, k2) = (rsa("k1"), ec("k2"));
    let jwks = JwksServer::start(&[&k1, &k2]);
    let gw = start_gateway_aged(&up.base_url(), &jwks.url(), 100, 300);
    let claims = json!({"iss": TFY, "aud": "refract", "vk": "team-a"});
    let (t1, t2) = (mint(&k1, claims.clone()), mint(&k2, claims));
    assert_eq!(gw.edit(&[("Authorization", &auth_header(&t1))]).status, 200);
    assert_eq!(jwks.fetches(), 1);
    // the issuer revokes k1
    jwks.serve(Some(&[&k2]));
    std::thread::sleep(Duration::from_millis(400));
    // the old set still serves this request, and is fetched again meanwhile
    assert_eq!(gw.edit(&[("Authorization", &auth_header(&t2))]).status, 200);
    wait_until("the background JWKS fetch", || jwks.fetches() >= 2);
    wait_until("k1 refused", || {
        let r = gw.edit(&[("Authorization", &auth_header(&t1))]);
        r.status == 401 && r.json()["error"]["code"] == "token_unknown_key"
    });
    assert_eq!(gw.edit(&[("Authorization", &auth_header(&t2))]).status, 200);
}

#[test]
fn an_unreachable_jwks_endpoint_refuses_its_tokens_with_a_reason() {
    let up = MockUpstream::start();
    let nowhere = format!("http://{}/jwks.json", free_addr());
    let gw = start_gateway(&up.base_url(), &nowhere, 0);
    let token = mint(&rsa("k1"), json!({"iss": TFY, "aud": "refract", "vk": "team-a"}));
    let r = gw.edit(&[("Authorization", &auth_header(&token))]);
    let v = assert_gateway_error(&r, 401, "token_unknown_key", "authentication_error", None);
    assert!(v["error"]["message"].as_str().unwrap().contains("unavailable"), "{v}");
    assert!(!r.text().contains(&token));
    // the HS issuer is not affected
    let hs_token = mint(
        &hmac(HS_SECRET),
        json!({"iss": MPILOT, "aud": "refract", "vk": "team-a"}),
    );
    assert_eq!(gw.edit(&[("Authorization", &auth_header(&hs_token))]).status, 200);
    assert_eq!(up.requests().len(), 1);
}

#[test]
fn tokens_are_refused_end_to_end_and_narrowed_tokens_get_403() {
    let up = MockUpstream::start();
    let jwks = JwksServer::start(&[]);
    let gw = start_gateway(&up.base_url(), &jwks.url(), 1000);
    let hs = hmac(HS_SECRET);
    let expired = mint(
        &hs,
        json!({"iss": MPILOT, "aud": "refract", "vk": "team-a", "exp": now() - 600}),
    );
    let r = gw.edit(&[("Authorization", &auth_header(&expired))]);
    let v = assert_gateway_error(&r, 401, "token_expired", "authentication_error", None);
    assert_eq!(v["error"]["message"], "the token has expired");
    let narrowed = mint(
        &hs,
        json!({"iss": MPILOT, "aud": "refract", "vk": "team-a", "models": ["openai/dall-e-2"]}),
    );
    let r = gw.edit(&[("Authorization", &auth_header(&narrowed))]);
    assert_gateway_error(&r, 403, "model_blocked", "permission_error", Some("model"));
    assert!(up.requests().is_empty(), "nothing went upstream");
}

/// Async jobs: ownership is the key id however the key is presented; an admin token reads
/// and cancels every job; another key gets 404.
#[test]
fn job_ownership_follows_the_key_and_admins_read_every_job() {
    let up = MockUpstream::start();
    let jwks = JwksServer::start(&[]);
    let gw = start_gateway(&up.base_url(), &jwks.url(), 1000);
    let hs = hmac(HS_SECRET);
    let team_a_token = auth_header(&mint(
        &hs,
        json!({"iss": MPILOT, "aud": "refract", "vk": "team-a", "sub": "alice"}),
    ));
    let team_b_token = auth_header(&mint(&hs, json!({"iss": MPILOT, "aud": "refract", "vk": "team-b"})));
    let admin = auth_header(&mint(
        &hs,
        json!({"iss": MPILOT, "aud": "refract", "role": ["ops", "admin"], "sub": "root"}),
    ));

    let submit = |headers: &[(&str, &str)]| {
        let r = gw.post("/v1/async/images/edits", headers);
        assert_eq!(r.status, 202, "{}", r.text());
        r.json()["id"].as_str().unwrap().to_string()
    };
    // submitted with the raw key, read with a JWT naming it (jobs.workers: 0, so it stays pending)
    let by_key = submit(&[("x-bf-vk", "team-a-plain-key")]);
    let path = format!("/v1/async/images/edits/{by_key}");
    assert_eq!(
        gw.request("GET", &path, &[("Authorization", &team_a_token)]).status,
        202
    );
    // and the other way round
    let by_token = submit(&[("Authorization", &team_a_token)]);
    let path2 = format!("/v1/async/images/edits/{by_token}");
    assert_eq!(
        gw.request("GET", &path2, &[("x-api-key", "team-a-plain-key")]).status,
        202
    );
    // another key: 404, as for an unknown id
    for p in [&path, &path2] {
        let r = gw.request("GET", p, &[("Authorization", &team_b_token)]);
        assert_gateway_error(&r, 404, "job_not_found", "not_found_error", None);
    }
    // the admin reads both and cancels one
    for p in [&path, &path2] {
        assert_eq!(gw.request("GET", p, &[("Authorization", &admin)]).status, 202);
    }
    let r = gw.request("DELETE", &path, &[("Authorization", &admin)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["status"], "cancelled");
    // the owner sees it cancelled
    let r = gw.request("GET", &path, &[("x-bf-vk", "team-a-plain-key")]);
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("cancelled")));
    // an admin's own job is the admin's
    let by_admin = submit(&[("Authorization", &admin)]);
    let path3 = format!("/v1/async/images/edits/{by_admin}");
    let r = gw.request("GET", &path3, &[("Authorization", &team_a_token)]);
    assert_eq!(r.status, 404);
    assert_eq!(gw.request("GET", &path3, &[("Authorization", &admin)]).status, 202);
}
