//! Percent encoding of a URL path segment (a model, deployment or inference-profile name put
//! into an upstream path), run while an adapter builds a request; and its decoding, run when
//! the gateway reads such a name from a client's path (`/openai/deployments/{name}/…`,
//! `/v1/models/{id}`).

/// Percent-encodes a path segment: everything but RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`, so a name cannot add a segment, a query or a fragment.
pub fn percent_encode_segment(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes a path segment a client percent-encoded (`demo%2Fsim-image-1` → `demo/sim-image-1`):
/// `None` when a `%` is not followed by two hex digits or the result is not UTF-8.
pub fn percent_decode_segment(segment: &str) -> Option<String> {
    if !segment.contains('%') {
        return Some(segment.to_string());
    }
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))?;
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_bytes_are_encoded() {
        assert_eq!(percent_encode_segment("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(percent_encode_segment("a/b?c#d e%"), "a%2Fb%3Fc%23d%20e%25");
        assert_eq!(percent_encode_segment("model:v1"), "model%3Av1");
    }

    #[test]
    fn decoding_reverses_encoding_and_refuses_broken_escapes() {
        for name in ["demo/sim-image-1", "a b:c", "x%y", "plain", "ünï"] {
            assert_eq!(
                percent_decode_segment(&percent_encode_segment(name)).as_deref(),
                Some(name)
            );
        }
        assert_eq!(percent_decode_segment("demo%2fm").as_deref(), Some("demo/m"));
        for broken in ["%", "%2", "%zz", "a%2", "%FF", "%+1"] {
            assert_eq!(percent_decode_segment(broken), None, "{broken}");
        }
    }
}
