//! Follow-up exchanges (asynchronous providers), then the conversion: runs after the first
//! upstream answer, in the attempt (`super::attempt`; and for each call of a repeated one, `super::repeat`),
//! asking the adapter ([`ProviderAdapter::follow_up`]) what comes next and doing it: wait,
//! poll, download the result images, until the adapter has a final answer or wants the last
//! answer converted as usual ([`ProviderAdapter::convert_response`]).
//!
//! The server owns the clock: every wait and request counts against the provider's
//! `poll_timeout_ms`, and passing it is a 504 naming the provider. A client that closes its
//! connection stops the loop (no more polls for nobody). Requests to another host (a polling
//! URL, a result URL) pass the SSRF guard ([`follow_target`]) first.

use super::answer::Client;
use crate::config::parse_base_url;
use crate::error::GatewayError;
use crate::providers::kernel::polling::{FollowContext, FollowState, FollowUp};
use crate::providers::{ProviderAdapter, ResponseContext, UnifiedAnswer, UpstreamResponse};
use crate::route::Target;
use crate::server::exchange::{exchange, Collect};
use crate::server::slots::Slots;
use crate::server::upstreams::Connector;
use crate::spool::Spool;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Most follow-up requests for one client request (a backstop; the deadline normally ends it).
const MAX_STEPS: u32 = 10_000;

/// How a follow-up run ended.
enum Followed {
    /// The last answer, to convert with the adapter's `convert_response`.
    Convert(UpstreamResponse),
    /// The unified answer, already assembled by the adapter.
    Answer(UnifiedAnswer),
}

/// What the loop needs from the request.
pub(super) struct Request<'a> {
    pub(super) connector: &'a Connector,
    /// The providers' upstream slots: each follow-up exchange holds one.
    pub(super) slots: &'a Slots,
    pub(super) target: &'a Target,
    pub(super) spool: &'a Spool,
    pub(super) request_id: &'a str,
    pub(super) want_url: bool,
    /// Fields of the converted answer's `extra_fields` (its latency is filled in per step).
    pub(super) response: ResponseContext<'a>,
    /// When the client's request started (for the latency).
    pub(super) start: Instant,
}

/// [`unified`], watching the client (when there is one) for its going away.
pub(super) async fn run(
    adapter: &dyn ProviderAdapter,
    req: Request<'_>,
    first: UpstreamResponse,
    client: &mut Client<'_>,
) -> Result<UnifiedAnswer, GatewayError> {
    let work = unified(adapter, &req, first);
    let gone = async {
        // Only a request whose body was read to its end can be watched without eating its
        // bytes; a detached run (an async job) has nobody to watch.
        if let Client::Session(session) = client {
            if session.is_body_done() && session.as_downstream_mut().read_body_or_idle(true).await.is_err() {
                return;
            }
        }
        std::future::pending::<()>().await
    };
    tokio::select! {
        r = work => r,
        () = gone => {
            log::debug!("request {}: client gone while polling {}", req.request_id, req.target.provider.name);
            Err(GatewayError::ClientClosed)
        }
    }
}

/// Runs the follow-ups of `first` (the answer to the submitted request) until the adapter is
/// done, and returns the unified answer: the adapter's, or the last answer converted (an error
/// status into the provider's error).
pub(super) async fn unified(
    adapter: &dyn ProviderAdapter,
    req: &Request<'_>,
    first: UpstreamResponse,
) -> Result<UnifiedAnswer, GatewayError> {
    match follow(adapter, req, first).await? {
        Followed::Answer(unified) => Ok(unified),
        Followed::Convert(response) => adapter.convert_response(
            &response,
            &ResponseContext {
                latency_ms: req.start.elapsed().as_millis() as u64,
                ..req.response.clone()
            },
        ),
    }
}

async fn follow(
    adapter: &dyn ProviderAdapter,
    req: &Request<'_>,
    first: UpstreamResponse,
) -> Result<Followed, GatewayError> {
    let provider = &req.target.provider;
    let deadline = Instant::now() + provider.options.poll_timeout;
    let timeout = || GatewayError::UpstreamTimeout {
        provider: provider.name.clone(),
        kind: crate::error::TimeoutKind::Poll,
        detail: format!(
            "the job did not finish within poll_timeout_ms ({} ms)",
            provider.options.poll_timeout.as_millis()
        ),
    };
    let mut state = FollowState::default();
    let mut resp = first;
    for _ in 0..MAX_STEPS {
        let cx = FollowContext {
            target: req.target,
            request_id: req.request_id,
            want_url: req.want_url,
            poll_interval: provider.options.poll_interval,
            response: ResponseContext {
                latency_ms: req.start.elapsed().as_millis() as u64,
                ..req.response.clone()
            },
        };
        let (mut request, to, after) = match adapter.follow_up(&resp, &mut state, &cx)? {
            FollowUp::Done => return Ok(Followed::Convert(resp)),
            FollowUp::Answer(body) => return Ok(Followed::Answer(body)),
            FollowUp::Request { request, to, after } => (request, to, after),
        };
        let target = match to {
            Some(url) => {
                let (target, path) = follow_target(req.target, &url, adapter.follow_domains())?;
                request.path = path;
                target
            }
            None => req.target.clone(),
        };
        if Instant::now() + after >= deadline {
            return Err(timeout());
        }
        tokio::time::sleep(after).await;
        let left = deadline.saturating_duration_since(Instant::now());
        // The wait for a slot counts against the job's deadline, like the exchange.
        let exchanged = async {
            let _slot = req.slots.wait(&target.provider.name).await;
            exchange(req.connector, &target, &request, req.spool, &mut Collect).await
        };
        resp = tokio::time::timeout(left, exchanged).await.map_err(|_| timeout())??;
    }
    Err(timeout())
}

/// The SSRF guard: the target for a follow-up `url` and the path (with query) to request, or a
/// 502 `upstream_protocol_error` when the URL may not be followed. Allowed: `https` URLs whose
/// host is the provider's `base_url` host, a name ending with one of `domains` that starts with
/// a dot, or exactly one that does not (never another
/// IP literal); and, when `base_url` itself is `http` (a local test double), URLs on exactly its
/// scheme, host and port. No userinfo or fragment.
pub(crate) fn follow_target(target: &Target, url: &str, domains: &[&str]) -> Result<(Target, String), GatewayError> {
    let provider = &target.provider;
    let refuse = |why: String| GatewayError::UpstreamProtocol {
        provider: provider.name.clone(),
        detail: format!("refusing to follow a URL from the provider: {why}"),
    };
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    if query.is_some_and(|q| q.contains('#') || q.chars().any(|c| c.is_whitespace() || c.is_control())) {
        return Err(refuse("the query is malformed".into()));
    }
    let parsed = parse_base_url(base).map_err(refuse)?;
    let own = &provider.base_url;
    let same_origin = parsed.https == own.https && parsed.host == own.host && parsed.port == own.port;
    let allowed = if !parsed.https {
        !own.https && same_origin
    } else if parsed.host == own.host {
        true
    } else if parsed.host.parse::<IpAddr>().is_ok() {
        false
    } else {
        // `.example.com` admits the names under it, `example.com` that very host.
        domains.iter().any(|d| {
            if d.starts_with('.') {
                parsed.host.ends_with(d)
            } else {
                parsed.host == *d
            }
        })
    };
    if !allowed {
        return Err(refuse(format!(
            "host '{}' ({}) is not the provider's host or under {}",
            parsed.host.chars().take(100).collect::<String>(),
            if parsed.https { "https" } else { "http" },
            if domains.is_empty() {
                "-".to_string()
            } else {
                domains.join(", ")
            }
        )));
    }
    let mut path = if parsed.path.is_empty() {
        "/".to_string()
    } else {
        parsed.path.clone()
    };
    if let Some(q) = query {
        path.push('?');
        path.push_str(q);
    }
    let mut config = (**provider).clone();
    config.base_url = parsed;
    Ok((
        Target {
            provider: Arc::new(config),
            key_index: target.key_index,
            model: target.model.clone(),
            access_token: target.access_token.clone(),
        },
        path,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml_str_with_env;

    fn target(base: &str) -> Target {
        let yaml = format!(
            "providers:\n  - name: b\n    kind: bfl\n    base_url: {base}\n    keys:\n      - {{name: k, value: v}}\n"
        );
        let cfg = from_yaml_str_with_env(&yaml, &|_| None).unwrap();
        crate::route::Router::new(&cfg)
            .select("b", "flux-kontext-pro", 0.0)
            .unwrap()
    }

    #[test]
    fn ssrf_guard() {
        let t = target("https://api.bfl.ai/v1");
        let d = &[".bfl.ai"];
        let (t2, path) = follow_target(&t, "https://api.eu.bfl.ai/v1/get_result?id=abc", d).unwrap();
        assert_eq!(
            (t2.provider.base_url.host.as_str(), path.as_str()),
            ("api.eu.bfl.ai", "/v1/get_result?id=abc")
        );
        assert!(t2.provider.base_url.https);
        let (_, path) = follow_target(&t, "https://delivery-eu1.bfl.ai/results/x.png?se=1&sig=a%2Fb", d).unwrap();
        assert_eq!(path, "/results/x.png?se=1&sig=a%2Fb");
        assert_eq!(follow_target(&t, "https://api.bfl.ai", d).unwrap().1, "/");
        for bad in [
            "http://api.eu.bfl.ai/v1/get_result?id=1",  // not https
            "https://evil.example/v1/get_result",       // other domain
            "https://bfl.ai.evil.example/x",            // suffix trick
            "https://evilbfl.ai/x",                     // not a subdomain
            "https://169.254.169.254/latest/meta-data", // IP literal
            "https://[::1]/x",                          // IPv6 literal
            "https://user@api.eu.bfl.ai/x",             // userinfo
            "file:///etc/passwd",
            "https://api.eu.bfl.ai/x?a#frag",
        ] {
            let e = follow_target(&t, bad, d).unwrap_err();
            assert_eq!((e.status(), e.code()), (502, "upstream_protocol_error"), "{bad}");
        }
        // A domain without a leading dot admits that very host only (fal's `fal.media`).
        let t = target("https://router.huggingface.co");
        let fal = &["fal.media", ".fal.media"];
        for ok in ["https://fal.media/files/a.png", "https://v3.fal.media/files/a.png"] {
            assert!(follow_target(&t, ok, fal).is_ok(), "{ok}");
        }
        for bad in ["https://evilfal.media/a.png", "https://fal.media.evil.example/a.png"] {
            assert!(follow_target(&t, bad, fal).is_err(), "{bad}");
        }
        // An http base_url (a local double): its own origin only.
        let t = target("http://127.0.0.1:9000/v1");
        assert!(follow_target(&t, "http://127.0.0.1:9000/v1/get_result?id=1", d).is_ok());
        assert!(follow_target(&t, "http://127.0.0.1:9001/v1/get_result?id=1", d).is_err());
        assert!(follow_target(&t, "http://127.0.0.2:9000/x", d).is_err());
        assert!(follow_target(&t, "http://api.eu.bfl.ai/x", d).is_err());
        assert!(follow_target(&t, "https://api.eu.bfl.ai/x", d).is_ok());
        assert!(follow_target(&t, "https://10.0.0.1/x", d).is_err());
    }
}
