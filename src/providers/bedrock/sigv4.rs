//! AWS Signature Version 4 for Bedrock `InvokeModel` (providers.md §6.1), as botocore computes
//! it: pure functions, the time passed in.
//!
//! - Canonical request: method, the path encoded **again** (`%3A` → `%253A`; every byte but
//!   unreserved characters and `/`), empty query, the signed headers (lowercase names, sorted:
//!   `accept`, `content-type`, `host`, `x-amz-date`, and `x-amz-security-token` for temporary
//!   credentials), their names joined by `;`, the hex SHA-256 of the exact body bytes.
//! - Key: `HMAC("AWS4"+secret, yyyymmdd)` → region → service → `aws4_request`.
//! - Headers sent: `X-Amz-Date`, `X-Amz-Security-Token` (if any), `Authorization:
//!   AWS4-HMAC-SHA256 Credential=AKID/yyyymmdd/region/service/aws4_request,
//!   SignedHeaders=…, Signature=<hex>`.
//!
//! [`payload_sha256`] hashes a body plan as the exchange sends it, streaming spool ranges and
//! base64-encoding [`BodySegment::Base64`] ranges chunk by chunk: memory stays flat whatever the
//! image sizes. Nothing here logs, and no type holding the secret implements `Debug`.

use crate::codec::base64::Base64Stream;
use crate::providers::BodySegment;
use crate::spool::Spool;
use ring::hmac;
use sha2::{Digest, Sha256};

/// The algorithm name in the string to sign and in `Authorization`.
pub const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// What one signature covers. Holds the secret: deliberately not `Debug`.
pub struct SigningInput<'a> {
    /// Access key id.
    pub access_key_id: &'a str,
    /// Secret access key.
    pub secret_access_key: &'a str,
    /// Session token of temporary credentials (sent and signed as `x-amz-security-token`).
    pub session_token: Option<&'a str>,
    /// AWS region, e.g. `us-east-1`.
    pub region: &'a str,
    /// Signing service name (`bedrock`).
    pub service: &'a str,
    /// HTTP method.
    pub method: &'a str,
    /// The `Host` header value the exchange sends.
    pub host: &'a str,
    /// The request path as sent (already percent-encoded once).
    pub path: &'a str,
    /// Headers to sign besides `host` and the `x-amz-*` ones (name lowercase, value as sent).
    pub headers: &'a [(&'a str, &'a str)],
    /// Hex SHA-256 of the body.
    pub payload_sha256: &'a str,
    /// Signing time, seconds since the Unix epoch.
    pub unix_time: u64,
}

/// What a signature adds to the request, besides `X-Amz-Security-Token` (the session token
/// itself, when there is one).
pub struct Signed {
    /// The `X-Amz-Date` value.
    pub amz_date: String,
    /// The `Authorization` value.
    pub authorization: String,
}

/// `YYYYMMDDTHHMMSSZ` for `unix_time` (UTC).
pub fn amz_date(unix_time: u64) -> String {
    let (year, month, day) = crate::providers::kernel::time::civil_from_days(unix_time / 86_400);
    let secs = unix_time % 86_400;
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3_600,
        secs / 60 % 60,
        secs % 60
    )
}

/// AWS URI encoding: unreserved characters (`A-Za-z0-9-_.~`) kept, `/` kept when
/// `keep_slash`, every other byte `%XX` (uppercase hex).
pub fn uri_encode(s: &str, keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len() + 8);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The signed headers of `input`, sorted by name: the given ones, `host`, `x-amz-date`, and
/// `x-amz-security-token` if any.
fn signed_headers<'a>(input: &'a SigningInput<'a>, date: &'a str) -> Vec<(&'a str, &'a str)> {
    let mut headers: Vec<(&str, &str)> = input.headers.to_vec();
    headers.push(("host", input.host));
    headers.push(("x-amz-date", date));
    if let Some(token) = input.session_token {
        headers.push(("x-amz-security-token", token));
    }
    headers.sort_by(|a, b| a.0.cmp(b.0));
    headers
}

/// The canonical request (step 1 of SigV4) at `date` (`YYYYMMDDTHHMMSSZ`).
pub fn canonical_request(input: &SigningInput<'_>, date: &str) -> String {
    let headers = signed_headers(input, date);
    let mut out = format!("{}\n{}\n\n", input.method, uri_encode(input.path, true));
    for (name, value) in &headers {
        out.push_str(name);
        out.push(':');
        out.push_str(value.trim());
        out.push('\n');
    }
    out.push('\n');
    let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    out.push_str(&names.join(";"));
    out.push('\n');
    out.push_str(input.payload_sha256);
    out
}

/// `yyyymmdd/region/service/aws4_request`.
fn scope(input: &SigningInput<'_>, date: &str) -> String {
    format!("{}/{}/{}/aws4_request", &date[..8], input.region, input.service)
}

/// The string to sign (step 2) for a canonical request.
pub fn string_to_sign(input: &SigningInput<'_>, date: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{date}\n{}\n{}",
        scope(input, date),
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// The hex signature of `string_to_sign` with the key derived for `input`'s date, region and
/// service.
fn signature(input: &SigningInput<'_>, date: &str, string_to_sign: &str) -> String {
    let k_secret = format!("AWS4{}", input.secret_access_key);
    let k_date = hmac_sha256(k_secret.as_bytes(), &date.as_bytes()[..8]);
    let k_region = hmac_sha256(k_date.as_ref(), input.region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), input.service.as_bytes());
    let k_signing = hmac_sha256(k_service.as_ref(), b"aws4_request");
    hex::encode(hmac_sha256(k_signing.as_ref(), string_to_sign.as_bytes()))
}

/// Signs `input`: the header values to add to the request.
pub fn sign(input: &SigningInput<'_>) -> Signed {
    let date = amz_date(input.unix_time);
    let canonical = canonical_request(input, &date);
    let to_sign = string_to_sign(input, &date, &canonical);
    let names: Vec<&str> = signed_headers(input, &date).iter().map(|(n, _)| *n).collect();
    let authorization = format!(
        "{ALGORITHM} Credential={}/{}, SignedHeaders={}, Signature={}",
        input.access_key_id,
        scope(input, &date),
        names.join(";"),
        signature(input, &date, &to_sign)
    );
    Signed {
        amz_date: date,
        authorization,
    }
}

/// Hex SHA-256 of the body `segments` as the exchange sends them, streamed from `spool`
/// (base64 segments encoded chunk by chunk with [`Base64Stream`]; one chunk's encoding in
/// memory at a time). Runs once per attempt, before the request is sent.
pub fn payload_sha256(segments: &[BodySegment], spool: &Spool) -> std::io::Result<String> {
    let mut hasher = Sha256::new();
    let mut encoded = Vec::new();
    for segment in segments {
        match segment {
            BodySegment::Bytes(b) => hasher.update(b),
            BodySegment::Spool(range) => {
                for chunk in spool.chunks(*range) {
                    hasher.update(chunk?);
                }
            }
            BodySegment::Base64(range) => {
                let mut stream = Base64Stream::new();
                for chunk in spool.chunks(*range) {
                    encoded.clear();
                    stream.push(&chunk?, &mut encoded);
                    hasher.update(&encoded);
                }
                encoded.clear();
                stream.finish(&mut encoded);
                hasher.update(&encoded);
            }
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    const VECTOR: &str = include_str!("../../../tests/fixtures/sigv4-bedrock-vector.txt");

    fn vector_line(prefix: &str) -> &'static str {
        VECTOR
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix}"))
    }

    fn vector_section(title: &str) -> String {
        let start = VECTOR.find(title).unwrap() + title.len() + 1;
        let rest = &VECTOR[start..];
        let end = rest.find("\n\n---").unwrap_or(rest.len());
        rest[..end].trim_end().to_string()
    }

    fn input<'a>(payload: &'a str, token: Option<&'a str>) -> SigningInput<'a> {
        SigningInput {
            access_key_id: "AKIDEXAMPLE",
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            session_token: token,
            region: "us-east-1",
            service: "bedrock",
            method: "POST",
            host: "bedrock-runtime.us-east-1.amazonaws.com",
            path: "/model/amazon.nova-canvas-v1%3A0/invoke",
            headers: &[("content-type", "application/json"), ("accept", "application/json")],
            payload_sha256: payload,
            // 2026-11-24T02:20:54Z
            unix_time: 1_795_486_854,
        }
    }

    #[test]
    fn dates_are_formatted_in_utc() {
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(1_795_486_854), "20261124T022054Z");
    }

    #[test]
    fn botocore_vector_reproduces() {
        let body = vector_line("body = ");
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        assert_eq!(hash, vector_line("body sha256 = "));
        let inp = input(&hash, None);
        let date = amz_date(inp.unix_time);
        let canonical = canonical_request(&inp, &date);
        assert_eq!(canonical, vector_section("--- canonical request ---"));
        assert!(canonical.contains("/model/amazon.nova-canvas-v1%253A0/invoke\n"));
        let to_sign = string_to_sign(&inp, &date, &canonical);
        assert_eq!(to_sign, vector_section("--- string to sign ---"));
        let signed = sign(&inp);
        assert_eq!(signed.amz_date, vector_line("X-Amz-Date: "));
        assert_eq!(
            signed.authorization,
            vector_line("Authorization: "),
            "the Authorization header matches botocore's"
        );
    }

    #[test]
    fn session_tokens_are_signed_and_sent() {
        let inp = input("00", Some("tok/en=="));
        let date = amz_date(inp.unix_time);
        let canonical = canonical_request(&inp, &date);
        assert!(canonical.contains("x-amz-date:20261124T022054Z\nx-amz-security-token:tok/en==\n\n"));
        assert!(canonical.contains("\naccept;content-type;host;x-amz-date;x-amz-security-token\n00"));
        let signed = sign(&inp);
        assert!(signed
            .authorization
            .contains("SignedHeaders=accept;content-type;host;x-amz-date;x-amz-security-token, Signature="));
    }

    #[test]
    fn paths_are_encoded_again_for_the_canonical_request() {
        assert_eq!(
            uri_encode("/bedrock/model/arn%3Aaws%3Abedrock%2Fx/invoke", true),
            "/bedrock/model/arn%253Aaws%253Abedrock%252Fx/invoke"
        );
        assert_eq!(uri_encode("a b:c/d~", false), "a%20b%3Ac%2Fd~");
    }

    #[test]
    fn payload_hash_streams_every_segment_kind() {
        let mut spool = Spool::new(16, None);
        let data: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
        for chunk in data.chunks(7) {
            spool.append(Bytes::copy_from_slice(chunk)).unwrap();
        }
        let range = |start, len| crate::spool::SpoolRange { start, len };
        let req = crate::providers::UpstreamRequest {
            method: http::Method::POST,
            path: "/".into(),
            headers: vec![],
            body: vec![
                BodySegment::Bytes(Bytes::from_static(b"{\"a\":\"")),
                BodySegment::Base64(range(0, 4999)),
                BodySegment::Bytes(Bytes::from_static(b"\",\"b\":\"")),
                BodySegment::Base64(range(1, 1)),
                BodySegment::Spool(range(100, 300)),
                BodySegment::Bytes(Bytes::from_static(b"\"}")),
            ],
        };
        let rendered = req.render(&spool).unwrap();
        assert_eq!(
            payload_sha256(&req.body, &spool).unwrap(),
            hex::encode(Sha256::digest(&rendered))
        );
    }
}
