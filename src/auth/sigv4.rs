//! AWS SigV4 as a client credential (the `/bedrock` route, as boto3 signs by default): the
//! access key id is a virtual key's `id`, the secret access key is the virtual key itself.
//! Two steps, pure, the time passed in:
//!
//! 1. On the head ([`KeyStore::signer`]): the `Authorization` header read, the key looked up
//!    by id (unknown: 403; configured only by its digest, `key_sha256`: 403, it cannot sign),
//!    `X-Amz-Date` within 15 minutes of now, and `host` and `x-amz-date` among the signed
//!    headers.
//! 2. Once the body has arrived ([`Signer::verify`]): the signature recomputed over the
//!    request as it arrived (the body hashed as read; an `x-amz-content-sha256` must be that
//!    hash: unsigned payloads are refused) and compared in constant time; only then the key's
//!    state (disabled or expired: 401 as for any key) and the caller's identity.
//!
//! Region and service are whatever the client signed for. No secret reaches a log or an
//! error message.

use super::{key_identity, Identity, KeyStore};
use crate::config::Secret;
use crate::error::GatewayError;
use crate::providers::bedrock::sigv4::{self, Authorization, Received, VerifyFailure};
use http::HeaderMap;
use thiserror::Error;

/// How far `X-Amz-Date` may be from the gateway's clock, in seconds (AWS's 15 minutes).
pub const MAX_SKEW_SECS: u64 = 15 * 60;

/// Why a SigV4 signature was refused (403).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SignatureRejection {
    /// The `Authorization` header is not a complete SigV4 one.
    #[error(
        "the Authorization header is not a valid AWS4-HMAC-SHA256 signature (Credential, SignedHeaders, Signature)"
    )]
    Malformed,
    /// No virtual key has the access key id as its `id`.
    #[error("the access key id names no virtual key: use a virtual key's id as the access key id")]
    UnknownKey,
    /// The key is configured by its digest only: the gateway does not know the secret.
    #[error("virtual key '{0}' is configured only by its digest (key_sha256) and cannot sign: configure it with 'key', or send it as a bearer token")]
    DigestOnly(String),
    /// `X-Amz-Date` is missing, malformed, more than [`MAX_SKEW_SECS`] away, or not the
    /// credential's day.
    #[error("the request's X-Amz-Date is missing, malformed, or more than 15 minutes from the gateway's time (signature expired or not yet valid)")]
    Expired,
    /// `host` or `x-amz-date` is not signed, or a signed header is absent.
    #[error("{0}")]
    Headers(String),
    /// `x-amz-content-sha256` is not the hash of the body (or says `UNSIGNED-PAYLOAD`).
    #[error("x-amz-content-sha256 is not the SHA-256 of the body (unsigned payloads are not accepted)")]
    PayloadHash,
    /// The signature is not the one the key makes for this request.
    #[error("the request signature we calculated does not match the signature you provided: check the secret access key (the virtual key) and the signing method")]
    Mismatch,
}

impl SignatureRejection {
    /// The error code (`code`, the metric's reason).
    pub fn code(&self) -> &'static str {
        match self {
            SignatureRejection::Malformed => "signature_malformed",
            SignatureRejection::UnknownKey => "signature_unknown_key",
            SignatureRejection::DigestOnly(_) => "signature_key_digest_only",
            SignatureRejection::Expired => "signature_expired",
            SignatureRejection::Headers(_) => "signature_headers",
            SignatureRejection::PayloadHash => "signature_payload_hash",
            SignatureRejection::Mismatch => "signature_mismatch",
        }
    }
}

/// Whether the head carries a SigV4 `Authorization` (the algorithm's name first).
pub fn is_signed(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::AUTHORIZATION)
        .is_some_and(|v| v.as_bytes().starts_with(sigv4::ALGORITHM.as_bytes()))
}

/// A signed request whose head passed step 1: the key found, its signature still to check.
/// Holds the key's secret: deliberately not `Debug`.
pub struct Signer<'k> {
    authorization: Authorization,
    secret: &'k Secret,
    key: &'k crate::config::VirtualKeyConfig,
    now: u64,
}

impl KeyStore {
    /// Step 1 on the head of a signed request (see the module docs), at `now` (Unix seconds).
    pub fn signer(&self, headers: &HeaderMap, now: u64) -> Result<Signer<'_>, GatewayError> {
        let authorization = headers
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(sigv4::parse_authorization)
            .ok_or(SignatureRejection::Malformed)?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == authorization.access_key_id)
            .ok_or(SignatureRejection::UnknownKey)?;
        let secret = key
            .signing_secret
            .as_ref()
            .ok_or_else(|| SignatureRejection::DigestOnly(key.id.clone()))?;
        let date = headers.get("x-amz-date").and_then(|v| v.to_str().ok()).unwrap_or("");
        if !sigv4::date_within(date, now, MAX_SKEW_SECS) || !date.starts_with(authorization.day.as_str()) {
            return Err(SignatureRejection::Expired.into());
        }
        let signed: Vec<&str> = authorization.signed_headers.split(';').collect();
        for required in ["host", "x-amz-date"] {
            if !signed.contains(&required) {
                return Err(SignatureRejection::Headers(format!("SignedHeaders must include '{required}'")).into());
            }
        }
        Ok(Signer {
            authorization,
            secret,
            key,
            now,
        })
    }
}

impl Signer<'_> {
    /// Step 2, once the body has arrived: `request` as it arrived (its `payload_sha256` the
    /// body's hash), the signature checked; the caller's identity when it holds.
    pub fn verify(self, request: &Received<'_>) -> Result<Identity, GatewayError> {
        if let Some(declared) = request.headers.get("x-amz-content-sha256") {
            if !declared
                .as_bytes()
                .eq_ignore_ascii_case(request.payload_sha256.as_bytes())
            {
                return Err(SignatureRejection::PayloadHash.into());
            }
        }
        match sigv4::verify(request, &self.authorization, self.secret.expose()) {
            Ok(()) => key_identity(self.key, self.now),
            Err(VerifyFailure::MissingHeader(name)) => {
                Err(SignatureRejection::Headers(format!("signed header '{name}' is not in the request")).into())
            }
            Err(VerifyFailure::Mismatch) => Err(SignatureRejection::Mismatch.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::bedrock::sigv4::{sign, SigningInput};
    use sha2::{Digest, Sha256};

    const NOW: u64 = 1_795_486_854; // 2026-11-24T02:20:54Z
    const PATH: &str = "/bedrock/model/openai%2Fgpt-image-1/invoke";

    fn store() -> KeyStore {
        let mut digest_only = super::super::tests::vk_for_tests("vault", "sk-bf-vault", true);
        digest_only.signing_secret = None;
        let mut expired = super::super::tests::vk_for_tests("old", "sk-bf-old", true);
        expired.expires_at = Some(NOW - 1);
        KeyStore {
            keys: vec![
                super::super::tests::vk_for_tests("app", "sk-bf-app", true),
                super::super::tests::vk_for_tests("off", "sk-bf-off", false),
                digest_only,
                expired,
            ],
            allow_anonymous: false,
            issuers: Vec::new(),
        }
    }

    /// A request as boto3 sends it, signed with `key_id`/`secret` at `at`, over `body`.
    fn signed(key_id: &str, secret: &str, at: u64, body: &[u8]) -> HeaderMap {
        let hash = hex::encode(Sha256::digest(body));
        let s = sign(&SigningInput {
            access_key_id: key_id,
            secret_access_key: secret,
            session_token: None,
            region: "eu-west-3",
            service: "bedrock",
            method: "POST",
            host: "127.0.0.1:4000",
            path: PATH,
            headers: &[("content-type", "application/json"), ("accept", "application/json")],
            payload_sha256: &hash,
            unix_time: at,
        });
        let mut h = HeaderMap::new();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("accept", "application/json".parse().unwrap());
        h.insert("host", "127.0.0.1:4000".parse().unwrap());
        h.insert("x-amz-date", s.amz_date.parse().unwrap());
        h.insert("authorization", s.authorization.parse().unwrap());
        h
    }

    fn run(keys: &KeyStore, headers: &HeaderMap, body: &[u8]) -> Result<Identity, GatewayError> {
        let signer = keys.signer(headers, NOW)?;
        let hash = hex::encode(Sha256::digest(body));
        signer.verify(&Received {
            method: "POST",
            path: PATH,
            query: None,
            headers,
            amz_date: headers["x-amz-date"].to_str().unwrap(),
            payload_sha256: &hash,
        })
    }

    fn rejection(r: Result<Identity, GatewayError>) -> SignatureRejection {
        match r {
            Err(GatewayError::SignatureRefused(why)) => why,
            other => panic!("expected a refused signature, got {other:?}"),
        }
    }

    #[test]
    fn a_good_signature_is_the_keys_caller() {
        let keys = store();
        let h = signed("app", "sk-bf-app", NOW - 60, b"{}");
        assert!(is_signed(&h));
        let identity = run(&keys, &h, b"{}").unwrap();
        assert_eq!(identity.key_id.as_deref(), Some("app"));
        assert_eq!(identity.models, Some(vec!["openai/gpt-image-1".to_string()]));
    }

    #[test]
    fn each_wrong_part_is_refused() {
        let keys = store();
        // The key id.
        let h = signed("nobody", "sk-bf-app", NOW, b"{}");
        assert_eq!(rejection(run(&keys, &h, b"{}")), SignatureRejection::UnknownKey);
        // The secret (another key's).
        let h = signed("app", "sk-bf-off", NOW, b"{}");
        assert_eq!(rejection(run(&keys, &h, b"{}")), SignatureRejection::Mismatch);
        // The date, 16 minutes either way.
        for at in [NOW - 16 * 60, NOW + 16 * 60] {
            let h = signed("app", "sk-bf-app", at, b"{}");
            assert_eq!(rejection(run(&keys, &h, b"{}")), SignatureRejection::Expired);
        }
        // The body changed after signing.
        let h = signed("app", "sk-bf-app", NOW, b"{}");
        assert_eq!(rejection(run(&keys, &h, b"{ }")), SignatureRejection::Mismatch);
        // A signed header dropped.
        let mut dropped = signed("app", "sk-bf-app", NOW, b"{}");
        dropped.remove("accept");
        assert!(
            matches!(rejection(run(&keys, &dropped, b"{}")), SignatureRejection::Headers(m) if m.contains("'accept'"))
        );
        // The date header dropped.
        let mut undated = signed("app", "sk-bf-app", NOW, b"{}");
        undated.remove("x-amz-date");
        assert_eq!(
            rejection(keys.signer(&undated, NOW).map(|_| Identity::default())),
            SignatureRejection::Expired
        );
        // A declared payload hash that is not the body's.
        let mut unsigned = signed("app", "sk-bf-app", NOW, b"{}");
        unsigned.insert("x-amz-content-sha256", "UNSIGNED-PAYLOAD".parse().unwrap());
        assert_eq!(rejection(run(&keys, &unsigned, b"{}")), SignatureRejection::PayloadHash);
        // Not a SigV4 header at all.
        let mut garbled = signed("app", "sk-bf-app", NOW, b"{}");
        garbled.insert("authorization", "AWS4-HMAC-SHA256 nonsense".parse().unwrap());
        assert_eq!(rejection(run(&keys, &garbled, b"{}")), SignatureRejection::Malformed);
    }

    #[test]
    fn a_digest_only_key_cannot_sign_and_key_states_still_apply() {
        let keys = store();
        let h = signed("vault", "sk-bf-vault", NOW, b"{}");
        let why = rejection(run(&keys, &h, b"{}"));
        assert_eq!(why, SignatureRejection::DigestOnly("vault".into()));
        assert!(why.to_string().contains("cannot sign"), "{why}");
        assert!(!why.to_string().contains("sk-bf-vault"));
        let h = signed("off", "sk-bf-off", NOW, b"{}");
        assert!(matches!(run(&keys, &h, b"{}"), Err(GatewayError::VirtualKeyBlocked)));
        let h = signed("old", "sk-bf-old", NOW, b"{}");
        assert!(matches!(run(&keys, &h, b"{}"), Err(GatewayError::VirtualKeyExpired)));
        // A key's state is told only to a caller who proved the secret.
        let h = signed("off", "sk-bf-guess", NOW, b"{}");
        assert_eq!(rejection(run(&keys, &h, b"{}")), SignatureRejection::Mismatch);
    }

    #[test]
    fn host_and_date_must_be_signed() {
        let keys = store();
        let mut h = signed("app", "sk-bf-app", NOW, b"{}");
        let auth = h["authorization"].to_str().unwrap().replace(
            "SignedHeaders=accept;content-type;host;x-amz-date",
            "SignedHeaders=accept;content-type;x-amz-date",
        );
        h.insert("authorization", auth.parse().unwrap());
        assert!(matches!(rejection(run(&keys, &h, b"{}")), SignatureRejection::Headers(m) if m.contains("'host'")));
    }
}
