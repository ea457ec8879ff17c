//! Percent encoding of a URL path segment (a model, deployment or inference-profile name put
//! into an upstream path). Runs while an adapter builds a request.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_bytes_are_encoded() {
        assert_eq!(percent_encode_segment("a-b.c_d~e"), "a-b.c_d~e");
        assert_eq!(percent_encode_segment("a/b?c#d e%"), "a%2Fb%3Fc%23d%20e%25");
        assert_eq!(percent_encode_segment("model:v1"), "model%3Av1");
    }
}
