//! Parsing of provider base URLs and listener socket addresses.
//!
//! Only what a provider base URL needs: `http` or `https`, a host (name,
//! IPv4, or bracketed IPv6), an optional port and an optional path. Userinfo,
//! query and fragment are rejected. Error messages never repeat the URL,
//! which could carry a password in its userinfo.

use std::net::{Ipv6Addr, SocketAddr};

use super::BaseUrl;

/// Parses a provider base URL; the error is a message for a config problem.
pub(crate) fn parse_base_url(text: &str) -> Result<BaseUrl, String> {
    let bad = |why: &str| Err(format!("invalid URL: {why}"));
    if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return bad("must not contain spaces or control characters");
    }
    let Some((scheme, rest)) = text.split_once("://") else {
        return bad("expected scheme://host[:port][/path], e.g. https://api.openai.com/v1");
    };
    let https = match scheme.to_ascii_lowercase().as_str() {
        "https" => true,
        "http" => false,
        _ => return bad("the scheme must be http or https"),
    };
    if rest.contains('?') {
        return bad("a query ('?...') is not allowed");
    }
    if rest.contains('#') {
        return bad("a fragment ('#...') is not allowed");
    }
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    if authority.contains('@') {
        return bad("user info ('user@') is not allowed; put credentials in provider keys");
    }
    let (host, port) = split_host_port(authority).map_err(|why| format!("invalid URL: {why}"))?;
    let default_port = if https { 443 } else { 80 };
    let port = match port {
        None => default_port,
        Some(p) => parse_port(p).map_err(|why| format!("invalid URL: {why}"))?,
    };
    Ok(BaseUrl {
        https,
        host,
        port,
        path: path.trim_end_matches('/').to_string(),
    })
}

/// Splits `host[:port]` / `[v6][:port]`; the host is checked and lowercased.
fn split_host_port(authority: &str) -> Result<(String, Option<&str>), String> {
    if let Some(rest) = authority.strip_prefix('[') {
        let Some((inside, after)) = rest.split_once(']') else {
            return Err("missing ']' after an IPv6 address".into());
        };
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err("the host in brackets is not an IPv6 address".into());
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err("unexpected characters after ']'".into()),
            },
        };
        return Ok((inside.to_ascii_lowercase(), port));
    }
    let (host, port) = match authority.split_once(':') {
        Some((_, p)) if p.contains(':') => {
            return Err("an IPv6 host must be written in brackets, e.g. http://[::1]:8080".into())
        }
        Some((h, p)) => (h, Some(p)),
        None => (authority, None),
    };
    if host.is_empty() {
        return Err("the host is empty".into());
    }
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_');
    if !host.chars().all(valid) || host.starts_with(['.', '-']) {
        return Err("the host must be a name or IP address (letters, digits, '-', '.')".into());
    }
    Ok((host.to_ascii_lowercase(), port))
}

fn parse_port(text: &str) -> Result<u16, String> {
    if text.is_empty() {
        return Err("the port after ':' is empty".into());
    }
    match text.parse::<u16>() {
        Ok(p) if p > 0 && text.bytes().all(|b| b.is_ascii_digit()) => Ok(p),
        _ => Err("the port must be a number from 1 to 65535".into()),
    }
}

/// Parses `IP:port` (IPv6 in brackets); the error is a config problem message.
pub(super) fn parse_socket_addr(text: &str) -> Result<SocketAddr, String> {
    text.parse()
        .map_err(|_| format!("invalid socket address '{text}': expected IP:port, e.g. 127.0.0.1:8080 or [::1]:8080"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(text: &str) -> BaseUrl {
        parse_base_url(text).unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn err(text: &str) -> String {
        match parse_base_url(text) {
            Ok(u) => panic!("{text} parsed as {u:?}"),
            Err(e) => e,
        }
    }

    #[test]
    fn parses_common_urls() {
        let u = ok("https://api.openai.com/v1");
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (true, "api.openai.com", 443, "/v1")
        );
        assert_eq!(u.authority(), "api.openai.com");
        assert_eq!(u.to_string(), "https://api.openai.com/v1");

        let u = ok("http://127.0.0.1:8090");
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (false, "127.0.0.1", 8090, "")
        );
        assert_eq!(u.authority(), "127.0.0.1:8090");
        assert_eq!(u.to_string(), "http://127.0.0.1:8090");

        let u = ok("HTTP://Example.COM:80/a/b//");
        assert_eq!(
            (u.https, u.host.as_str(), u.port, u.path.as_str()),
            (false, "example.com", 80, "/a/b")
        );
        assert_eq!(u.authority(), "example.com");

        let u = ok("https://[::1]:8443/");
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("::1", 8443, ""));
        assert_eq!(u.authority(), "[::1]:8443");
        assert_eq!(u.to_string(), "https://[::1]:8443");

        let u = ok("http://[2001:DB8::1]");
        assert_eq!((u.host.as_str(), u.port), ("2001:db8::1", 80));
        assert_eq!(u.authority(), "[2001:db8::1]");

        assert_eq!(ok("https://x:443").authority(), "x");
        assert_eq!(ok("https://x:80").authority(), "x:80");
    }

    #[test]
    fn rejects_bad_urls_without_echoing_them() {
        let cases = [
            ("ftp://x", "scheme must be http or https"),
            ("api.openai.com/v1", "expected scheme://host"),
            ("https://", "host is empty"),
            ("https:///v1", "host is empty"),
            ("https://:8080", "host is empty"),
            ("https://user:hunter2@x/v1", "user info"),
            ("https://x/v1?a=b", "query"),
            ("https://x/v1#frag", "fragment"),
            ("https://x:", "port after ':' is empty"),
            ("https://x:0", "port must be a number"),
            ("https://x:65536", "port must be a number"),
            ("https://x:+80", "port must be a number"),
            ("https://x:8a", "port must be a number"),
            ("https://::1/v1", "IPv6 host must be written in brackets"),
            ("https://[::1/v1", "missing ']'"),
            ("https://[nothex]/", "not an IPv6 address"),
            ("https://[::1]x/", "unexpected characters after ']'"),
            ("https://a b/", "spaces"),
            ("https://bad%host/", "host must be a name"),
            ("https://-x/", "host must be a name"),
        ];
        for (text, fragment) in cases {
            let e = err(text);
            assert!(e.starts_with("invalid URL: "), "{text}: {e}");
            assert!(e.contains(fragment), "{text}: {e}");
        }
        assert!(!err("https://user:hunter2@x/v1").contains("hunter2"));
    }

    #[test]
    fn socket_addresses() {
        assert_eq!(parse_socket_addr("0.0.0.0:8080").unwrap().port(), 8080);
        assert!(parse_socket_addr("[::1]:9091").unwrap().is_ipv6());
        for bad in ["localhost:8080", "127.0.0.1", "::1:80", "127.0.0.1:99999", ""] {
            let e = parse_socket_addr(bad).unwrap_err();
            assert!(e.contains("expected IP:port"), "{bad}: {e}");
        }
    }
}
