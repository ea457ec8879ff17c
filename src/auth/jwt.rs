//! JWT bearer tokens: which configured issuer signed a token, with which key, and what its
//! claims say. Pure: the signing keys of JWKS-URL issuers are handed in by the caller (the
//! server fetches and caches them, `src/server/jwks.rs`); verification is the `jsonwebtoken`
//! crate's (on aws-lc-rs), never hand-written.
//!
//! A token is checked in this order, each failure a [`TokenRejection`] (401) naming the
//! reason and never the token: its header and `iss` are read (unverified, only to pick the
//! issuer); the issuer must be configured; its `alg` must be in the issuer's allow-list
//! (`none` never is; an HMAC algorithm only for a secret issuer, a public-key one only for a
//! JWKS issuer, so a public key is never used as an HMAC secret); a key of the token's `kid`
//! (or, without `kid`, any key of the algorithm's family) must verify the signature; then
//! `exp` (required), `nbf`, `iss` and `aud`, with the issuer's leeway.

use crate::config::{algorithm, JwtIssuer, JwtKeySource};
use base64::Engine;
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};
use std::sync::Arc;
use thiserror::Error;

/// Why a bearer token was refused (401). Messages never contain the token or its claims.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TokenRejection {
    /// Not three base64url segments of JSON.
    #[error("the bearer token is neither a configured virtual key nor a well-formed JWT")]
    Malformed,
    /// `alg` is `none`, unknown, or not allowed for its issuer.
    #[error("the token's signing algorithm '{0}' is not accepted")]
    AlgorithmNotAllowed(String),
    /// `iss` names no configured issuer.
    #[error("the token's issuer is not trusted")]
    UnknownIssuer,
    /// No key of the issuer has the token's `kid` (or fits its algorithm).
    #[error("the token's signing key is unknown")]
    UnknownKey,
    /// The issuer's JWKS could not be fetched and none is cached.
    #[error("the token issuer's signing keys are unavailable")]
    KeysUnavailable,
    /// The signature does not verify (tampered or forged).
    #[error("the token's signature is invalid")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still ahead (beyond the leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` names none of the issuer's audiences.
    #[error("the token is not meant for this gateway (wrong audience)")]
    WrongAudience,
    /// A claim the gateway needs is missing or not of the right type.
    #[error("the token's '{0}' claim is missing or invalid")]
    BadClaim(String),
}

impl TokenRejection {
    /// The error's `code` (and metric reason).
    pub fn code(&self) -> &'static str {
        match self {
            TokenRejection::Malformed => "token_malformed",
            TokenRejection::AlgorithmNotAllowed(_) => "token_algorithm_not_allowed",
            TokenRejection::UnknownIssuer => "token_unknown_issuer",
            TokenRejection::UnknownKey | TokenRejection::KeysUnavailable => "token_unknown_key",
            TokenRejection::BadSignature => "token_bad_signature",
            TokenRejection::Expired => "token_expired",
            TokenRejection::NotYetValid => "token_not_yet_valid",
            TokenRejection::WrongAudience => "token_wrong_audience",
            TokenRejection::BadClaim(_) => "token_invalid_claim",
        }
    }
}

/// One verification key.
struct SigningKey {
    kid: Option<String>,
    /// The algorithm the JWK is restricted to (`alg`), if it says.
    alg: Option<Algorithm>,
    key: DecodingKey,
}

/// An issuer's verification keys: a JWKS's usable keys, or its shared secret.
pub struct KeySet {
    keys: Vec<SigningKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kids: Vec<_> = self.keys.iter().map(|k| k.kid.as_deref().unwrap_or("-")).collect();
        write!(f, "KeySet{kids:?}")
    }
}

impl KeySet {
    /// The usable keys of a JWKS (keys the verifier cannot use are skipped).
    pub fn from_jwks(set: &JwkSet) -> KeySet {
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk| {
                let key = DecodingKey::from_jwk(jwk).ok()?;
                let alg = jwk.common.key_algorithm.and_then(|a| algorithm(&a.to_string()));
                Some(SigningKey {
                    kid: jwk.common.key_id.clone(),
                    alg,
                    key,
                })
            })
            .collect();
        KeySet { keys }
    }

    /// A shared HMAC secret.
    pub fn secret(secret: &[u8]) -> KeySet {
        KeySet {
            keys: DecodingKey::from_secret(secret)
                .ok()
                .map(|key| SigningKey {
                    kid: None,
                    alg: None,
                    key,
                })
                .into_iter()
                .collect(),
        }
    }

    /// How many keys it has.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether it has none.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// A configured issuer, ready to verify: its settings and, for a file or a secret, its keys.
pub(super) struct Issuer {
    pub(super) config: JwtIssuer,
    /// The keys of a `jwks_file` or `secret` issuer; `None` for a `jwks_url` one.
    fixed: Option<Arc<KeySet>>,
}

impl Issuer {
    pub(super) fn new(config: &JwtIssuer) -> Issuer {
        let fixed = match &config.keys {
            JwtKeySource::Url { .. } => None,
            JwtKeySource::File { set, .. } => Some(Arc::new(KeySet::from_jwks(set))),
            JwtKeySource::Secret(s) => Some(Arc::new(KeySet::secret(s.expose().as_bytes()))),
        };
        Issuer {
            config: config.clone(),
            fixed,
        }
    }
}

/// The signing keys of the JWKS-URL issuers, as the server holds them: the set cached for
/// issuer number `index` (in config order), `None` when nothing is cached yet.
pub trait FetchedKeys {
    /// The cached set of issuer `index`.
    fn keys(&self, index: usize) -> Option<Arc<KeySet>>;
}

/// No fetched keys at all (tests, and configs without a JWKS URL).
impl FetchedKeys for () {
    fn keys(&self, _index: usize) -> Option<Arc<KeySet>> {
        None
    }
}

/// A verified token: its issuer (index) and its claims.
pub(super) struct Verified {
    pub(super) issuer: usize,
    pub(super) claims: Map<String, Value>,
}

/// What verifying a token came to.
pub(super) enum Verification {
    /// Signature and times check out.
    Verified(Verified),
    /// The token's key is not in the issuer's cached JWKS (or nothing is cached): the caller
    /// may fetch the set of issuer `index` again and retry.
    KeysNeeded(usize),
}

/// Whether `token` looks like a JWT (three base64url segments), as opposed to an opaque key.
pub(super) fn looks_like_jwt(token: &[u8]) -> bool {
    token.starts_with(b"eyJ")
        && token.iter().filter(|b| **b == b'.').count() == 2
        && token
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'='))
}

/// A base64url segment's JSON object.
fn segment(text: &[u8]) -> Result<Map<String, Value>, TokenRejection> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_err(|_| TokenRejection::Malformed)?;
    match serde_json::from_slice(&bytes) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(TokenRejection::Malformed),
    }
}

/// Verifies `token` against the configured `issuers`; see the module's order of checks.
pub(super) fn verify(
    issuers: &[Issuer],
    fetched: &dyn FetchedKeys,
    token: &[u8],
) -> Result<Verification, TokenRejection> {
    let mut parts = token.split(|b| *b == b'.');
    let (Some(header), Some(payload), Some(_), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(TokenRejection::Malformed);
    };
    let header = segment(header)?;
    let payload = segment(payload)?;
    let alg_name = header
        .get("alg")
        .and_then(Value::as_str)
        .ok_or(TokenRejection::Malformed)?;
    let alg = algorithm(alg_name).ok_or_else(|| TokenRejection::AlgorithmNotAllowed(printable(alg_name)))?;
    let iss = payload
        .get("iss")
        .and_then(Value::as_str)
        .ok_or(TokenRejection::UnknownIssuer)?;
    let (index, issuer) = issuers
        .iter()
        .enumerate()
        .find(|(_, i)| i.config.issuer == iss)
        .ok_or(TokenRejection::UnknownIssuer)?;
    if !issuer.config.algorithms.contains(&alg) {
        return Err(TokenRejection::AlgorithmNotAllowed(alg_name.to_string()));
    }
    let keys = match issuer.fixed.clone().or_else(|| fetched.keys(index)) {
        Some(keys) => keys,
        None => return Ok(Verification::KeysNeeded(index)),
    };
    let kid = header.get("kid").and_then(Value::as_str);
    let candidates: Vec<&SigningKey> = keys
        .keys
        .iter()
        .filter(|k| kid.is_none() || k.kid.as_deref() == kid)
        .filter(|k| k.key.family() == alg.family() && k.alg.is_none_or(|a| a == alg))
        .collect();
    if candidates.is_empty() {
        return match (&issuer.config.keys, kid) {
            (JwtKeySource::Url { .. }, Some(_)) => Ok(Verification::KeysNeeded(index)),
            _ => Err(TokenRejection::UnknownKey),
        };
    }
    let validation = validation(&issuer.config, alg);
    let mut last = TokenRejection::BadSignature;
    for key in candidates {
        match jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, &validation) {
            Ok(data) => {
                return Ok(Verification::Verified(Verified {
                    issuer: index,
                    claims: data.claims,
                }))
            }
            Err(e) => last = rejection(e.kind()),
        }
    }
    Err(last)
}

/// At most 32 printable characters of an untrusted header value, for a message.
fn printable(text: &str) -> String {
    text.chars().filter(|c| c.is_ascii_graphic()).take(32).collect()
}

/// The crate's checks for a token of `issuer` signed with `alg`.
fn validation(issuer: &JwtIssuer, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.leeway = issuer.leeway.as_secs();
    v.validate_nbf = true;
    v.set_issuer(&[&issuer.issuer]);
    if issuer.audiences.is_empty() {
        // No audience configured: a token that names one is meant for someone else.
        v.set_required_spec_claims(&["exp", "iss"]);
        v.aud = None;
    } else {
        v.set_required_spec_claims(&["exp", "iss", "aud"]);
        v.set_audience(&issuer.audiences);
    }
    v
}

/// The rejection for one of the crate's errors.
fn rejection(kind: &jsonwebtoken::errors::ErrorKind) -> TokenRejection {
    use jsonwebtoken::errors::ErrorKind as K;
    match kind {
        K::ExpiredSignature => TokenRejection::Expired,
        K::ImmatureSignature => TokenRejection::NotYetValid,
        K::InvalidAudience => TokenRejection::WrongAudience,
        K::MissingRequiredClaim(c) if c == "aud" => TokenRejection::WrongAudience,
        K::InvalidIssuer => TokenRejection::UnknownIssuer,
        K::MissingRequiredClaim(c) | K::InvalidClaimFormat(c) => TokenRejection::BadClaim(c.clone()),
        K::InvalidAlgorithm => TokenRejection::AlgorithmNotAllowed(String::new()),
        K::InvalidSignature | K::InvalidKeyFormat | K::InvalidEcdsaKey | K::InvalidEddsaKey | K::InvalidRsaKey(_) => {
            TokenRejection::BadSignature
        }
        _ => TokenRejection::Malformed,
    }
}

/// Whether claim `name` of `claims` is `value`, or a list holding it.
pub(super) fn claim_has(claims: &Map<String, Value>, name: &str, value: &str) -> bool {
    match claims.get(name) {
        Some(Value::String(s)) => s == value,
        Some(Value::Array(items)) => items.iter().any(|v| v.as_str() == Some(value)),
        _ => false,
    }
}

/// The list of strings in claim `name`: `Ok(None)` when absent, an error when it is not a
/// list of strings.
pub(super) fn claim_list(claims: &Map<String, Value>, name: &str) -> Result<Option<Vec<String>>, TokenRejection> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<Vec<_>>>()
            .map(Some)
            .ok_or_else(|| TokenRejection::BadClaim(name.to_string())),
        Some(_) => Err(TokenRejection::BadClaim(name.to_string())),
    }
}
