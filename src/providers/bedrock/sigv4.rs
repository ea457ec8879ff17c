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
    canonical_of(input.method, input.path, "", &headers, input.payload_sha256)
}

/// The canonical request of `method`, `path` (as sent: encoded again here), the canonical
/// query, the signed `headers` (lowercase names, sorted) and the payload hash: what the
/// signer and the verifier both hash. A header's value is trimmed and its inner runs of
/// spaces collapsed to one, as botocore does.
fn canonical_of(method: &str, path: &str, query: &str, headers: &[(&str, &str)], payload_sha256: &str) -> String {
    let mut out = format!("{method}\n{}\n{query}\n", uri_encode(path, true));
    for (name, value) in headers {
        out.push_str(name);
        out.push(':');
        let mut words = value.split_ascii_whitespace();
        if let Some(first) = words.next() {
            out.push_str(first);
        }
        for word in words {
            out.push(' ');
            out.push_str(word);
        }
        out.push('\n');
    }
    out.push('\n');
    let names: Vec<&str> = headers.iter().map(|(n, _)| *n).collect();
    out.push_str(&names.join(";"));
    out.push('\n');
    out.push_str(payload_sha256);
    out
}

/// `yyyymmdd/region/service/aws4_request`.
fn scope(input: &SigningInput<'_>, date: &str) -> String {
    scope_of(&date[..8], input.region, input.service)
}

fn scope_of(day: &str, region: &str, service: &str) -> String {
    format!("{day}/{region}/{service}/aws4_request")
}

/// The string to sign (step 2) for a canonical request.
pub fn string_to_sign(input: &SigningInput<'_>, date: &str, canonical: &str) -> String {
    string_to_sign_of(date, &scope(input, date), canonical)
}

fn string_to_sign_of(date: &str, scope: &str, canonical: &str) -> String {
    format!(
        "{ALGORITHM}\n{date}\n{scope}\n{}",
        hex::encode(Sha256::digest(canonical.as_bytes()))
    )
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> hmac::Tag {
    hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, key), data)
}

/// The hex signature of `string_to_sign` with the key derived for `input`'s date, region and
/// service.
fn signature(input: &SigningInput<'_>, date: &str, string_to_sign: &str) -> String {
    signature_of(
        input.secret_access_key,
        (&date[..8], input.region, input.service),
        string_to_sign,
    )
}

/// The hex signature of `string_to_sign` with the key derived from `secret` for the scope's
/// day (`yyyymmdd`), region and service.
fn signature_of(secret: &str, (day, region, service): (&str, &str, &str), string_to_sign: &str) -> String {
    let k_secret = format!("AWS4{secret}");
    let k_date = hmac_sha256(k_secret.as_bytes(), day.as_bytes());
    let k_region = hmac_sha256(k_date.as_ref(), region.as_bytes());
    let k_service = hmac_sha256(k_region.as_ref(), service.as_bytes());
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

/// A SigV4 `Authorization` header, read: `AWS4-HMAC-SHA256
/// Credential=AKID/yyyymmdd/region/service/aws4_request, SignedHeaders=a;b;…, Signature=<hex>`.
/// Holds no secret (the signature is a MAC).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authorization {
    /// The access key id (everything before the scope's last four parts).
    pub access_key_id: String,
    /// The scope's day, `yyyymmdd`.
    pub day: String,
    /// The scope's region.
    pub region: String,
    /// The scope's service.
    pub service: String,
    /// The signed header names as sent, `;`-separated.
    pub signed_headers: String,
    /// The hex signature.
    pub signature: String,
}

/// Reads an `Authorization` header value signed with [`ALGORITHM`] (`None`: not one, or
/// missing a part).
pub fn parse_authorization(value: &str) -> Option<Authorization> {
    let rest = value.trim().strip_prefix(ALGORITHM)?;
    if !rest.starts_with(' ') {
        return None;
    }
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in rest.split(',') {
        let (key, value) = part.trim().split_once('=')?;
        match key.trim() {
            "Credential" => credential = Some(value.trim()),
            "SignedHeaders" => signed_headers = Some(value.trim()),
            "Signature" => signature = Some(value.trim()),
            _ => {}
        }
    }
    let mut scope = credential?.rsplitn(5, '/');
    let terminal = scope.next()?;
    let service = scope.next()?;
    let region = scope.next()?;
    let day = scope.next()?;
    let access_key_id = scope.next()?;
    let well_formed = terminal == "aws4_request"
        && day.len() == 8
        && day.bytes().all(|b| b.is_ascii_digit())
        && !access_key_id.is_empty()
        && !region.is_empty()
        && !service.is_empty();
    let (signed_headers, signature) = (signed_headers?, signature?);
    if !well_formed || signed_headers.is_empty() || signature.is_empty() {
        return None;
    }
    Some(Authorization {
        access_key_id: access_key_id.to_string(),
        day: day.to_string(),
        region: region.to_string(),
        service: service.to_string(),
        signed_headers: signed_headers.to_string(),
        signature: signature.to_string(),
    })
}

/// Whether `date` is an `X-Amz-Date` (`YYYYMMDDTHHMMSSZ`) within `skew` seconds of
/// `unix_time` (such dates compare as strings in time order).
pub fn date_within(date: &str, unix_time: u64, skew: u64) -> bool {
    let b = date.as_bytes();
    let shape =
        b.len() == 16 && b[8] == b'T' && b[15] == b'Z' && b[..8].iter().chain(&b[9..15]).all(u8::is_ascii_digit);
    shape && date >= amz_date(unix_time.saturating_sub(skew)).as_str() && date <= amz_date(unix_time + skew).as_str()
}

/// A request as it arrived, for [`verify`].
pub struct Received<'a> {
    /// HTTP method.
    pub method: &'a str,
    /// The path as sent (percent-encoded once).
    pub path: &'a str,
    /// The query as sent, if any.
    pub query: Option<&'a str>,
    /// The request's headers.
    pub headers: &'a http::HeaderMap,
    /// The `X-Amz-Date` value.
    pub amz_date: &'a str,
    /// Hex SHA-256 of the body as it arrived.
    pub payload_sha256: &'a str,
}

/// Why [`verify`] refused a signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VerifyFailure {
    /// A header named in `SignedHeaders` is not in the request (or is not visible ASCII).
    MissingHeader(String),
    /// The signature is not the one the secret makes for this request.
    Mismatch,
}

/// The canonical query of a query as sent: every `name=value` decoded, encoded again the
/// AWS way, sorted by name then value (botocore's).
fn canonical_query(query: Option<&str>) -> String {
    let decode =
        |s: &str| crate::providers::kernel::percent::percent_decode_segment(s).unwrap_or_else(|| s.to_string());
    let mut pairs: Vec<(String, String)> = query
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (uri_encode(&decode(k), false), uri_encode(&decode(v), false))
        })
        .collect();
    pairs.sort();
    let pairs: Vec<String> = pairs.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
    pairs.join("&")
}

/// Verifies `auth`'s signature of `received` with `secret`: the canonical request rebuilt
/// from the request as it arrived (method, path, query, the headers `SignedHeaders` names,
/// several values of one name joined by `,`, the body's hash), signed for the scope `auth`
/// names at `received.amz_date`, compared in constant time. Runs once per signed request,
/// after its body was read.
pub fn verify(received: &Received<'_>, auth: &Authorization, secret: &str) -> Result<(), VerifyFailure> {
    let mut values = Vec::new();
    for name in auth.signed_headers.split(';') {
        let joined: Option<Vec<&str>> = received.headers.get_all(name).iter().map(|v| v.to_str().ok()).collect();
        match joined.filter(|v| !v.is_empty() && name.bytes().all(|b| !b.is_ascii_uppercase())) {
            Some(v) => values.push((name, v.join(","))),
            None => return Err(VerifyFailure::MissingHeader(name.chars().take(64).collect())),
        }
    }
    let headers: Vec<(&str, &str)> = values.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let canonical = canonical_of(
        received.method,
        received.path,
        &canonical_query(received.query),
        &headers,
        received.payload_sha256,
    );
    let scope = scope_of(&auth.day, &auth.region, &auth.service);
    let to_sign = string_to_sign_of(received.amz_date, &scope, &canonical);
    let expected = signature_of(secret, (&auth.day, &auth.region, &auth.service), &to_sign);
    use subtle::ConstantTimeEq;
    if bool::from(expected.as_bytes().ct_eq(auth.signature.as_bytes())) {
        Ok(())
    } else {
        Err(VerifyFailure::Mismatch)
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

    /// The request `input` describes, signed, as a server receives it.
    fn received_headers(inp: &SigningInput<'_>) -> (http::HeaderMap, Signed) {
        let signed = sign(inp);
        let mut headers = http::HeaderMap::new();
        for (name, value) in inp.headers {
            headers.insert(
                http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                value.parse().unwrap(),
            );
        }
        headers.insert("host", inp.host.parse().unwrap());
        headers.insert("x-amz-date", signed.amz_date.parse().unwrap());
        headers.insert("authorization", signed.authorization.parse().unwrap());
        headers.insert("user-agent", "Boto3/1.35 (unsigned)".parse().unwrap());
        (headers, signed)
    }

    fn check(headers: &http::HeaderMap, payload: &str, path: &str, secret: &str) -> Result<(), VerifyFailure> {
        let auth = parse_authorization(headers["authorization"].to_str().unwrap()).unwrap();
        let received = Received {
            method: "POST",
            path,
            query: None,
            headers,
            amz_date: headers["x-amz-date"].to_str().unwrap(),
            payload_sha256: payload,
        };
        verify(&received, &auth, secret)
    }

    #[test]
    fn authorization_headers_are_read() {
        let auth = parse_authorization(vector_line("Authorization: ")).unwrap();
        assert_eq!(auth.access_key_id, "AKIDEXAMPLE");
        assert_eq!(
            (auth.day.as_str(), auth.region.as_str(), auth.service.as_str()),
            ("20261124", "us-east-1", "bedrock")
        );
        assert_eq!(auth.signed_headers, "accept;content-type;host;x-amz-date");
        assert_eq!(auth.signature.len(), 64);
        // An access key id with a `/` (a virtual key id may hold one) keeps it.
        let odd = parse_authorization(
            "AWS4-HMAC-SHA256 Credential=team/a/20261124/r/s/aws4_request, SignedHeaders=host, Signature=ab",
        )
        .unwrap();
        assert_eq!(odd.access_key_id, "team/a");
        for bad in [
            "Bearer x",
            "AWS4-HMAC-SHA256",
            "AWS4-HMAC-SHA256 Credential=A/2026112/r/s/aws4_request, SignedHeaders=host, Signature=ab",
            "AWS4-HMAC-SHA256 Credential=A/20261124/r/s/aws5_request, SignedHeaders=host, Signature=ab",
            "AWS4-HMAC-SHA256 Credential=/20261124/r/s/aws4_request, SignedHeaders=host, Signature=ab",
            "AWS4-HMAC-SHA256 Credential=A/20261124/r/s/aws4_request, Signature=ab",
            "AWS4-HMAC-SHA256 Credential=A/20261124/r/s/aws4_request, SignedHeaders=host",
            "AWS4-HMAC-SHA256X Credential=A/20261124/r/s/aws4_request, SignedHeaders=host, Signature=ab",
        ] {
            assert_eq!(parse_authorization(bad), None, "{bad}");
        }
    }

    #[test]
    fn botocores_own_signature_verifies() {
        let body = vector_line("body = ");
        let hash = hex::encode(Sha256::digest(body.as_bytes()));
        let inp = input(&hash, None);
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert("accept", "application/json".parse().unwrap());
        headers.insert("host", inp.host.parse().unwrap());
        headers.insert("x-amz-date", vector_line("X-Amz-Date: ").parse().unwrap());
        headers.insert("authorization", vector_line("Authorization: ").parse().unwrap());
        assert_eq!(check(&headers, &hash, inp.path, inp.secret_access_key), Ok(()));
    }

    #[test]
    fn a_good_signature_verifies_and_each_wrong_part_is_refused() {
        let hash = hex::encode(Sha256::digest(b"{\"taskType\":\"INPAINTING\"}"));
        let mut inp = input(&hash, None);
        inp.path = "/bedrock/model/demo%2Fsim-image-1/invoke";
        inp.host = "127.0.0.1:8080";
        let secret = inp.secret_access_key;
        let (headers, _) = received_headers(&inp);
        assert_eq!(check(&headers, &hash, inp.path, secret), Ok(()));
        // The wrong secret.
        assert_eq!(
            check(&headers, &hash, inp.path, "sk-bf-other"),
            Err(VerifyFailure::Mismatch)
        );
        // The body changed after signing.
        let other = hex::encode(Sha256::digest(b"{\"taskType\":\"OUTPAINTING\"}"));
        assert_eq!(check(&headers, &other, inp.path, secret), Err(VerifyFailure::Mismatch));
        // Another path (another model).
        assert_eq!(
            check(&headers, &hash, "/bedrock/model/demo%2Fsim-image-2/invoke", secret),
            Err(VerifyFailure::Mismatch)
        );
        // A signed header dropped, or changed; an unsigned one changed is fine.
        let mut dropped = headers.clone();
        dropped.remove("content-type");
        assert_eq!(
            check(&dropped, &hash, inp.path, secret),
            Err(VerifyFailure::MissingHeader("content-type".into()))
        );
        let mut changed = headers.clone();
        changed.insert("host", "evil.example".parse().unwrap());
        assert_eq!(check(&changed, &hash, inp.path, secret), Err(VerifyFailure::Mismatch));
        let mut unsigned = headers.clone();
        unsigned.insert("user-agent", "curl".parse().unwrap());
        assert_eq!(check(&unsigned, &hash, inp.path, secret), Ok(()));
        // The date changed after signing (a replay made to look fresh).
        let mut redated = headers.clone();
        redated.insert("x-amz-date", "20261124T022055Z".parse().unwrap());
        assert_eq!(check(&redated, &hash, inp.path, secret), Err(VerifyFailure::Mismatch));
    }

    #[test]
    fn queries_are_canonicalized_as_botocore_does() {
        assert_eq!(canonical_query(None), "");
        assert_eq!(canonical_query(Some("b=2&a=x%20y&a=1&c")), "a=1&a=x%20y&b=2&c=");
    }

    #[test]
    fn dates_within_the_skew() {
        let now = 1_795_486_854; // 20261124T022054Z
        assert!(date_within("20261124T022054Z", now, 900));
        assert!(date_within("20261124T020554Z", now, 900));
        assert!(date_within("20261124T023554Z", now, 900));
        assert!(!date_within("20261124T020553Z", now, 900));
        assert!(!date_within("20261124T023555Z", now, 900));
        for bad in [
            "",
            "20261124T022054",
            "20261124 022054Z",
            "2026112AT022054Z",
            "20261124T022054Z ",
        ] {
            assert!(!date_within(bad, now, 900), "{bad}");
        }
    }
}
