//! The SSRF guard for URLs a client gives the gateway to fetch (an image by URL in a JSON edit
//! body, when `limits.fetch_image_urls` enables it): pure decisions, the fetch itself is the
//! server's (`src/server/gateway/image_urls.rs`), which asks [`check_url`] before each request
//! (redirects included) and [`check_resolved`] for the addresses its resolver found, then
//! connects to exactly those addresses.
//!
//! Refused: schemes other than `http` and `https`; userinfo; and every address that is not
//! public unicast ([`refused_address`]): unspecified, loopback, private (RFC 1918), link-local
//! (the cloud metadata address 169.254.169.254 included), CGNAT (100.64.0.0/10), IETF and
//! documentation ranges, benchmarking, multicast, broadcast and reserved; for IPv6 also
//! unique-local, site-local, and IPv4 addresses embedded in IPv6 (mapped, compatible, NAT64,
//! 6to4) judged as the IPv4 address they carry. Hosts an operator lists (`allow_hosts`) skip
//! the address check, for that exact host only.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

/// Why a URL or an address may not be fetched (the client's 400 says it).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a URL, or no host.
    #[error("'{0}' is not an absolute http(s) URL")]
    NotAUrl(String),
    /// A scheme other than http and https.
    #[error("scheme '{0}' is not fetched (http and https only)")]
    Scheme(String),
    /// `user:password@` in the URL.
    #[error("URLs with credentials (user@host) are not fetched")]
    Userinfo,
    /// The host is, or resolves to, an address that is not public.
    #[error("host '{host}' is {why} address {address}: not fetched")]
    Address {
        /// The URL's host.
        host: String,
        /// What the address is (`a loopback`, `a private`, …).
        why: &'static str,
        /// The address.
        address: IpAddr,
    },
    /// The name resolved to no address.
    #[error("host '{0}' has no address")]
    NoAddress(String),
}

/// What `ip` is, when it is not a public unicast address (`None`: public, fetchable).
pub fn refused_address(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => refused_v4(v4),
        IpAddr::V6(v6) => refused_v6(v6),
    }
}

fn refused_v4(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match (a, b, c) {
        (0, _, _) => "an unspecified",
        (127, _, _) => "a loopback",
        (10, _, _) | (172, 16..=31, _) | (192, 168, _) => "a private",
        (169, 254, _) => "a link-local",
        (100, 64..=127, _) => "a shared (CGNAT)",
        (192, 0, 0) | (192, 0, 2) | (198, 51, 100) | (203, 0, 113) => "a reserved (IETF or documentation)",
        (198, 18..=19, _) => "a benchmarking",
        (224..=239, _, _) => "a multicast",
        (240..=255, _, _) => "a reserved or broadcast",
        _ => return None,
    })
}

fn refused_v6(ip: Ipv6Addr) -> Option<&'static str> {
    if ip.is_unspecified() {
        return Some("an unspecified");
    }
    if ip.is_loopback() {
        return Some("a loopback");
    }
    let s = ip.segments();
    // IPv4 carried in IPv6: mapped (::ffff:a.b.c.d), compatible (::a.b.c.d), NAT64
    // (64:ff9b::a.b.c.d), judged as that IPv4 address; 6to4 (2002:AABB:CCDD::) likewise.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    match s {
        [0, 0, 0, 0, 0, 0xffff, hi, lo] => return refused_v4(embedded(hi, lo)),
        // The compatible and NAT64 forms: no public host needs them.
        [0, 0, 0, 0, 0, 0, hi, lo] | [0x64, 0xff9b, 0, 0, 0, 0, hi, lo] => {
            return Some(refused_v4(embedded(hi, lo)).unwrap_or("an IPv4-embedding"))
        }
        [0x2002, hi, lo, ..] => return refused_v4(embedded(hi, lo)),
        _ => {}
    }
    Some(match s[0] {
        0xfc00..=0xfdff => "a unique-local",
        0xfe80..=0xfebf => "a link-local",
        0xfec0..=0xfeff => "a site-local",
        0xff00..=0xffff => "a multicast",
        0x2001 if s[1] == 0x0db8 => "a documentation",
        // Teredo (2001::/32) tunnels to an address it hides.
        0x2001 if s[1] == 0 => "a Teredo",
        0x0100 if s[1..4] == [0, 0, 0] => "a discard-only",
        _ => return None,
    })
}

/// `host` as [`check_url`] and `allow_hosts` compare it: lowercase, IPv6 without brackets and
/// IP literals in their canonical form, no trailing dot; `None` when it is not a host (a port,
/// path, scheme or other character in it).
pub fn normalize_host(host: &str) -> Option<String> {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = bare.parse::<IpAddr>() {
        return Some(ip.to_string());
    }
    let name = bare.strip_suffix('.').unwrap_or(bare).to_ascii_lowercase();
    let valid = !name.is_empty()
        && name.len() <= 253
        && name
            .split('.')
            .all(|l| !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'));
    valid.then_some(name)
}

/// A URL that passed [`check_url`]: where to connect, and whether the address check applies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    /// The URL.
    pub url: url::Url,
    /// Its host, normalized ([`normalize_host`]).
    pub host: String,
    /// The host is an IP literal (already checked: nothing to resolve).
    pub literal: bool,
    /// The host is in `allow_hosts`: its addresses are not checked.
    pub allowed: bool,
}

/// Checks `raw` before it is requested (the client's URL, and each redirect's target): http or
/// https, no userinfo, a host; an IP literal must pass [`refused_address`] unless listed in
/// `allow_hosts`. A name's addresses are checked once resolved ([`check_resolved`]).
pub fn check_url(raw: &str, allow_hosts: &[String]) -> Result<CheckedUrl, Refusal> {
    let clip = || raw.chars().take(100).collect::<String>();
    let url = url::Url::parse(raw).map_err(|_| Refusal::NotAUrl(clip()))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(Refusal::Scheme(url.scheme().chars().take(20).collect()));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(Refusal::Userinfo);
    }
    let (host, literal) = match url.host() {
        Some(url::Host::Domain(d)) => (normalize_host(d).ok_or_else(|| Refusal::NotAUrl(clip()))?, false),
        Some(url::Host::Ipv4(ip)) => (ip.to_string(), true),
        Some(url::Host::Ipv6(ip)) => (ip.to_string(), true),
        None => return Err(Refusal::NotAUrl(clip())),
    };
    let allowed = allow_hosts.contains(&host);
    if literal && !allowed {
        if let Ok(address) = host.parse::<IpAddr>() {
            if let Some(why) = refused_address(address) {
                return Err(Refusal::Address { host, why, address });
            }
        }
    }
    Ok(CheckedUrl {
        url,
        host,
        literal,
        allowed,
    })
}

/// The addresses `host` resolved to, checked: all of them (the connection tries only these),
/// or the refusal of the first that is not public. A host in `allow_hosts` (`allowed`) is not
/// checked.
pub fn check_resolved(host: &str, allowed: bool, addrs: Vec<SocketAddr>) -> Result<Vec<SocketAddr>, Refusal> {
    if addrs.is_empty() {
        return Err(Refusal::NoAddress(host.to_string()));
    }
    if !allowed {
        if let Some((address, why)) = addrs
            .iter()
            .find_map(|a| refused_address(a.ip()).map(|why| (a.ip(), why)))
        {
            return Err(Refusal::Address {
                host: host.to_string(),
                why,
                address,
            });
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_that_are_not_public_are_refused() {
        for (addr, why) in [
            ("127.0.0.1", "a loopback"),
            ("127.255.0.9", "a loopback"),
            ("0.0.0.0", "an unspecified"),
            ("10.1.2.3", "a private"),
            ("172.16.0.1", "a private"),
            ("172.31.255.255", "a private"),
            ("192.168.1.1", "a private"),
            ("169.254.169.254", "a link-local"),
            ("100.64.0.1", "a shared (CGNAT)"),
            ("100.127.255.254", "a shared (CGNAT)"),
            ("224.0.0.1", "a multicast"),
            ("255.255.255.255", "a reserved or broadcast"),
            ("192.0.2.7", "a reserved (IETF or documentation)"),
            ("198.18.0.1", "a benchmarking"),
            ("::1", "a loopback"),
            ("::", "an unspecified"),
            ("fc00::1", "a unique-local"),
            ("fd12:3456::1", "a unique-local"),
            ("fe80::1", "a link-local"),
            ("ff02::1", "a multicast"),
            ("::ffff:127.0.0.1", "a loopback"),
            ("::ffff:10.0.0.1", "a private"),
            ("::ffff:169.254.169.254", "a link-local"),
            ("::127.0.0.1", "a loopback"),
            ("64:ff9b::10.0.0.1", "a private"),
            ("2002:7f00:1::", "a loopback"),
            ("2001:db8::1", "a documentation"),
            ("2001::1", "a Teredo"),
        ] {
            assert_eq!(refused_address(ip(addr)), Some(why), "{addr}");
        }
        for public in [
            "8.8.8.8",
            "1.1.1.1",
            "172.32.0.1",
            "100.128.0.1",
            "169.255.0.1",
            "2606:4700::1111",
            "::ffff:8.8.8.8",
            "2002:0808:0808::",
        ] {
            assert_eq!(refused_address(ip(public)), None, "{public}");
        }
        // IPv4-compatible and NAT64 forms of a public address: no public host needs them.
        assert!(refused_address(ip("::8.8.8.8")).is_some());
        assert!(refused_address(ip("64:ff9b::808:808")).is_some());
    }

    #[test]
    fn urls_are_checked_before_any_request() {
        let none: &[String] = &[];
        let ok = check_url("https://images.example.com/a.png?x=1", none).unwrap();
        assert_eq!(
            (ok.host.as_str(), ok.literal, ok.allowed),
            ("images.example.com", false, false)
        );
        assert!(check_url("http://8.8.8.8/a.png", none).unwrap().literal);
        for (bad, what) in [
            ("ftp://example.com/a.png", "scheme"),
            ("file:///etc/passwd", "scheme"),
            ("gopher://x/", "scheme"),
            ("https://user:pw@example.com/a.png", "credentials"),
            ("https://user@example.com/a.png", "credentials"),
            ("http://127.0.0.1:8080/a.png", "loopback"),
            ("http://10.0.0.5/a.png", "private"),
            ("http://169.254.169.254/latest/meta-data/", "link-local"),
            ("http://[::1]/a.png", "loopback"),
            ("http://[::ffff:127.0.0.1]/a.png", "loopback"),
            ("http://0x7f000001/a.png", "loopback"),
            ("http://2130706433/a.png", "loopback"),
            ("http://017700000001/a.png", "loopback"),
            ("not a url", "not an absolute"),
            ("/relative.png", "not an absolute"),
        ] {
            let e = check_url(bad, none).unwrap_err().to_string();
            assert!(e.contains(what), "{bad}: {e}");
        }
        // The allowlist lets exactly its hosts through.
        let allow = vec!["127.0.0.1".to_string(), "::1".to_string()];
        let ok = check_url("http://127.0.0.1:9/a.png", &allow).unwrap();
        assert!(ok.allowed && ok.literal);
        assert!(check_url("http://[::1]:9/a.png", &allow).unwrap().allowed);
        assert!(check_url("http://127.0.0.2:9/a.png", &allow).is_err());
    }

    #[test]
    fn resolved_addresses_are_checked_unless_the_host_is_allowed() {
        let a = |s: &str| SocketAddr::new(ip(s), 80);
        assert_eq!(
            check_resolved("img.example", false, vec![a("93.184.216.34")]).unwrap(),
            vec![a("93.184.216.34")]
        );
        // A name that resolves to loopback (or has any refused address among its answers).
        let e = check_resolved("localhost", false, vec![a("127.0.0.1")]).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        assert!(check_resolved("x", false, vec![a("93.184.216.34"), a("10.0.0.1")]).is_err());
        assert!(check_resolved("x", false, vec![a("::1")]).is_err());
        assert_eq!(check_resolved("x", false, vec![]), Err(Refusal::NoAddress("x".into())));
        assert!(check_resolved("localhost", true, vec![a("127.0.0.1")]).is_ok());
    }

    #[test]
    fn hosts_are_normalized() {
        assert_eq!(
            normalize_host("Images.Example.COM.").as_deref(),
            Some("images.example.com")
        );
        assert_eq!(normalize_host("[::1]").as_deref(), Some("::1"));
        assert_eq!(normalize_host("0:0::1").as_deref(), Some("::1"));
        assert_eq!(normalize_host("127.0.0.1").as_deref(), Some("127.0.0.1"));
        for bad in ["", "http://x", "x:80", "a/b", "a..b", "a b"] {
            assert_eq!(normalize_host(bad), None, "{bad}");
        }
    }
}
