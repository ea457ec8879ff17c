//! The `auth` section: anonymous use and the JWT issuers (`auth.jwt.issuers[]`) whose tokens
//! the gateway accepts besides virtual keys.
//!
//! Each issuer names where its signing keys come from: a JWKS URL (fetched by the server,
//! `src/server/jwks.rs`), a JWKS file (read and checked here, at load time), or a shared
//! secret (`env.NAME`, HS256/384/512, at least 32 bytes). The algorithms allowed are checked
//! against the key source, so an issuer with public keys never accepts an HMAC token and an
//! HMAC issuer never a public-key one (no algorithm confusion), and `none` is never one.

use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey};

use super::fields::Fields;
use super::parse::Env;
use super::{parse_base_url, BaseUrl, Secret};

/// Client authentication.
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// Serve requests that carry no virtual key (with every provider and
    /// model allowed). Default false.
    pub allow_anonymous: bool,
    /// The issuers whose JWTs are accepted (`jwt.issuers`); empty: none.
    pub issuers: Vec<JwtIssuer>,
}

/// One trusted JWT issuer (`auth.jwt.issuers[]`).
#[derive(Debug, Clone)]
pub struct JwtIssuer {
    /// The `iss` its tokens carry (`issuer`); unique among the issuers.
    pub issuer: String,
    /// Accepted `aud` values (`audiences`); a token must name one of them. Empty: a token must
    /// carry no `aud` at all.
    pub audiences: Vec<String>,
    /// Where its signing keys come from.
    pub keys: JwtKeySource,
    /// Algorithms its tokens may use (`algorithms`); never `none`, one family of the key source.
    pub algorithms: Vec<Algorithm>,
    /// Clock skew allowed on `exp` and `nbf` (`leeway_seconds`, default 30, at most 300).
    pub leeway: Duration,
    /// The claim naming the virtual key a token stands for (`virtual_key_claim`, default `vk`;
    /// `sub` works too).
    pub virtual_key_claim: String,
    /// The claim and value that make a token an admin token (`admin_claim`, `admin_value`);
    /// `None`: this issuer mints no admin tokens.
    pub admin: Option<(String, String)>,
    /// The claim that may narrow a token to some models (`models_claim`, default `models`): a
    /// list of `provider/model` or `provider/*`, applied on top of the key's own list.
    pub models_claim: String,
    /// The shortest time between two fetches of a JWKS URL (`jwks_refresh_interval_ms`, default
    /// 10 s): a token with an unknown `kid` fetches the set again at most that often.
    pub jwks_refresh_interval: Duration,
    /// How long a fetched JWKS is used before it is fetched again in the background
    /// (`jwks_max_age_ms`, default 1 h), so a key the issuer removed stops verifying.
    pub jwks_max_age: Duration,
}

/// Where an issuer's signing keys come from.
#[derive(Debug, Clone)]
pub enum JwtKeySource {
    /// A JWKS fetched from this URL (`jwks_url`) through the gateway's connector, cached.
    Url {
        /// The URL's parts.
        url: BaseUrl,
        /// The URL as written (for `refract check --print` and log lines).
        text: String,
    },
    /// A JWKS read from this file (`jwks_file`) at load time.
    File {
        /// The file.
        path: String,
        /// Its keys.
        set: JwkSet,
    },
    /// A shared secret (`secret`, HS256/384/512).
    Secret(Secret),
}

impl JwtKeySource {
    /// Whether this source holds HMAC secrets (else public keys).
    pub fn is_hmac(&self) -> bool {
        matches!(self, JwtKeySource::Secret(_))
    }
}

/// The shortest HS secret accepted, in bytes (RFC 7518 §3.2: at least the hash's size).
pub const MIN_HS_SECRET_BYTES: usize = 32;

/// Parses an algorithm name as JWT headers write it; `none` and unknown names are `None`.
pub fn algorithm(name: &str) -> Option<Algorithm> {
    use Algorithm::*;
    Some(match name {
        "HS256" => HS256,
        "HS384" => HS384,
        "HS512" => HS512,
        "RS256" => RS256,
        "RS384" => RS384,
        "RS512" => RS512,
        "PS256" => PS256,
        "PS384" => PS384,
        "PS512" => PS512,
        "ES256" => ES256,
        "ES384" => ES384,
        "EdDSA" => EdDSA,
        _ => return None,
    })
}

/// Whether `alg` is an HMAC algorithm.
pub fn is_hmac(alg: Algorithm) -> bool {
    matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
}

/// The `auth` section.
pub(super) fn auth(mut f: Fields<'_>, env: Env<'_>) -> AuthSettings {
    let allow_anonymous = f.opt_bool("allow_anonymous", false);
    let mut issuers = Vec::new();
    if let Some(mut jwt) = f.opt_obj("jwt") {
        for (path, value) in jwt.opt_list("issuers").unwrap_or_default() {
            let problems = jwt.problems();
            let issuer = Fields::new(value, path.clone(), problems);
            if let Some(built) = jwt_issuer(issuer, env) {
                if issuers.iter().any(|i: &JwtIssuer| i.issuer == built.issuer) {
                    problems.add(
                        &format!("{path}.issuer"),
                        format!("duplicate issuer '{}'", built.issuer),
                    );
                }
                issuers.push(built);
            }
        }
        jwt.finish();
    }
    f.finish();
    AuthSettings {
        allow_anonymous,
        issuers,
    }
}

/// One issuer; `None` when it has a problem (reported).
fn jwt_issuer(mut f: Fields<'_>, env: Env<'_>) -> Option<JwtIssuer> {
    let problems = f.problems();
    let before = problems.len();
    let issuer = f.req_str("issuer").map(str::to_string);
    let audiences = f.opt_str_list("audiences", "audience").unwrap_or_default();
    let keys = key_source(&mut f, env);
    let algorithms = algorithms(&mut f, keys.as_ref());
    let leeway = Duration::from_secs(f.opt_u64("leeway_seconds", 30, 0..=300));
    let virtual_key_claim = f.opt_str("virtual_key_claim").unwrap_or("vk").to_string();
    let admin = match (f.opt_str("admin_claim"), f.opt_str("admin_value")) {
        (Some(claim), Some(value)) => Some((claim.to_string(), value.to_string())),
        (None, None) => None,
        (Some(_), None) => {
            f.missing("admin_value");
            None
        }
        (None, Some(_)) => {
            f.missing("admin_claim");
            None
        }
    };
    let models_claim = f.opt_str("models_claim").unwrap_or("models").to_string();
    let jwks_refresh_interval = f.opt_millis("jwks_refresh_interval_ms", Duration::from_secs(10), 0..=86_400_000);
    let jwks_max_age = f.opt_millis("jwks_max_age_ms", Duration::from_secs(3600), 1..=604_800_000);
    f.finish();
    if problems.len() != before {
        return None;
    }
    Some(JwtIssuer {
        issuer: issuer?,
        audiences: audiences.into_iter().map(|(_, a)| a).collect(),
        keys: keys?,
        algorithms,
        leeway,
        virtual_key_claim,
        admin,
        models_claim,
        jwks_refresh_interval,
        jwks_max_age,
    })
}

/// Exactly one of `jwks_url`, `jwks_file`, `secret`.
fn key_source(f: &mut Fields<'_>, env: Env<'_>) -> Option<JwtKeySource> {
    let given = [f.has("jwks_url"), f.has("jwks_file"), f.has("secret")];
    match given.iter().filter(|g| **g).count() {
        0 => {
            f.problems()
                .add(f.path(), "give one of jwks_url, jwks_file or secret (env.NAME)");
            return None;
        }
        1 => {}
        _ => {
            f.problems()
                .add(f.path(), "give only one of jwks_url, jwks_file and secret");
            return None;
        }
    }
    if given[0] {
        let text = f.req_str("jwks_url")?;
        return match parse_base_url(text) {
            Ok(url) => Some(JwtKeySource::Url {
                url,
                text: text.to_string(),
            }),
            Err(e) => {
                f.report("jwks_url", e);
                None
            }
        };
    }
    if given[1] {
        let path = f.req_str("jwks_file")?;
        return match read_jwks(path) {
            Ok(set) => Some(JwtKeySource::File {
                path: path.to_string(),
                set,
            }),
            Err(e) => {
                f.report("jwks_file", e);
                None
            }
        };
    }
    if f.req_str("secret").is_some_and(|s| !s.starts_with("env.")) {
        f.report("secret", "must be env.NAME (the secret is read from the environment)");
        return None;
    }
    let secret = f.req_secret("secret", env)?;
    if secret.expose().len() < MIN_HS_SECRET_BYTES {
        f.report(
            "secret",
            format!("too short: an HS secret needs at least {MIN_HS_SECRET_BYTES} bytes"),
        );
        return None;
    }
    Some(JwtKeySource::Secret(secret))
}

/// Reads and checks a JWKS file: JSON `{"keys": [...]}` whose every key is usable.
fn read_jwks(path: &str) -> Result<JwkSet, String> {
    let text = std::fs::read(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    parse_jwks(&text).map_err(|e| format!("{path}: {e}"))
}

/// Parses a JWKS document; every key must be a public key (or secret) the verifier can use.
/// The message never repeats key material.
pub fn parse_jwks(body: &[u8]) -> Result<JwkSet, String> {
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS document ({e})"))?;
    for (i, jwk) in set.keys.iter().enumerate() {
        DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i} is not usable ({e})"))?;
    }
    Ok(set)
}

/// `algorithms`: names from [`algorithm`], of the key source's family; the default is RS256 and
/// ES256 and EdDSA for public keys, HS256 for a secret.
fn algorithms(f: &mut Fields<'_>, keys: Option<&JwtKeySource>) -> Vec<Algorithm> {
    let hmac = keys.is_some_and(JwtKeySource::is_hmac);
    let Some(list) = f.opt_str_list("algorithms", "algorithm") else {
        return if hmac {
            vec![Algorithm::HS256]
        } else {
            vec![Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA]
        };
    };
    let mut out = Vec::new();
    for (path, name) in list {
        match algorithm(&name) {
            None => f.problems().add(
                &path,
                format!("unknown algorithm '{name}' (RS256/384/512, PS256/384/512, ES256/384, EdDSA, HS256/384/512; never none)"),
            ),
            Some(alg) if keys.is_some() && is_hmac(alg) != hmac => f.problems().add(
                &path,
                if hmac {
                    format!("{name} needs public keys (jwks_url or jwks_file), not a shared secret")
                } else {
                    format!("{name} needs a shared secret, not public keys")
                },
            ),
            Some(alg) => out.push(alg),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use crate::config::test_util::{one_problem, PROVIDER};
    use crate::config::{from_yaml_str_with_env, JwtKeySource};

    fn env(name: &str) -> Option<String> {
        match name {
            "KEY_A" => Some("sk-a".into()),
            "LONG" => Some("0123456789abcdef0123456789abcdef".into()),
            "SHORT" => Some("0123456789".into()),
            _ => None,
        }
    }

    fn with(issuer: &str) -> String {
        format!("auth:\n  jwt:\n    issuers:\n      - issuer: https://mpilot.example\n{issuer}{PROVIDER}")
    }

    #[test]
    fn issuers_parse_with_defaults() {
        let c =
            from_yaml_str_with_env(&with("        secret: env.LONG\n        audiences: [refract]\n"), &env).unwrap();
        let i = &c.auth.issuers[0];
        assert!(matches!(i.keys, JwtKeySource::Secret(_)));
        assert_eq!(i.algorithms, vec![jsonwebtoken::Algorithm::HS256]);
        assert_eq!(i.virtual_key_claim, "vk");
        assert_eq!(i.audiences, vec!["refract".to_string()]);
        assert!(i.admin.is_none());
    }

    #[test]
    fn issuer_problems() {
        let cases = [
            ("        secret: env.SHORT\n", "secret", "too short"),
            ("        secret: env.NOPE\n", "secret", "NOPE is not set"),
            (
                "        secret: literal-secret-literal-secret-literal\n",
                "secret",
                "must be env.NAME",
            ),
            (
                "        jwks_file: /nonexistent/jwks.json\n",
                "jwks_file",
                "cannot read /nonexistent/jwks.json",
            ),
            (
                "        jwks_url: ftp://keys\n",
                "jwks_url",
                "scheme must be http or https",
            ),
            (
                "        jwks_url: https://a/b\n        algorithms: [HS256]\n",
                "algorithms[0]",
                "needs a shared secret",
            ),
            (
                "        secret: env.LONG\n        algorithms: [RS256]\n",
                "algorithms[0]",
                "needs public keys",
            ),
            (
                "        secret: env.LONG\n        algorithms: [none]\n",
                "algorithms[0]",
                "unknown algorithm 'none'",
            ),
            (
                "        secret: env.LONG\n        admin_claim: role\n",
                "admin_value",
                "missing",
            ),
            (
                "        leeway_seconds: 1\n",
                "auth.jwt.issuers[0]",
                "give one of jwks_url",
            ),
        ];
        for (issuer, path, message) in cases {
            let path = if path.starts_with("auth") {
                path.to_string()
            } else {
                format!("auth.jwt.issuers[0].{path}")
            };
            one_problem_env(&with(issuer), &path, message);
        }
    }

    fn one_problem_env(yaml: &str, path: &str, message: &str) {
        let errors = from_yaml_str_with_env(yaml, &env).unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].path, path, "{errors}");
        assert!(errors.0[0].message.contains(message), "{errors}");
    }

    #[test]
    fn a_bad_jwks_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("jwks.json");
        std::fs::write(&file, r#"{"keys":[{"kty":"RSA","n":"!!","e":"AQAB"}]}"#).unwrap();
        let yaml = with(&format!("        jwks_file: {}\n", file.display()));
        one_problem(&yaml, "auth.jwt.issuers[0].jwks_file", "not usable");
        std::fs::write(&file, "[]").unwrap();
        one_problem(&yaml, "auth.jwt.issuers[0].jwks_file", "not a JWKS document");
    }
}
