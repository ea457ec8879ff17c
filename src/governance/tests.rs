//! The governance's decisions over in-memory counters, without a server.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use super::*;
use crate::admission::{AttemptIndex, RecordingAdmission};

const CONFIG: &str = "
providers:
  - {name: openai, kind: openai, base_url: 'http://127.0.0.1:9', keys: [{name: k, value: x}]}
pricing:
  models:
    - {match: 'house-*', per_image: 0.02}
teams:
  - {id: design, budget: {max_usd: 0.05, period: 1d}}
virtual_keys:
  - {id: app, key: k1, team: design, budget: {max_usd: 1, period: 1d}, rate_limit: {requests: 2, images: 3, per: 1m, concurrent: 1}}
  - {id: free, key: k2}
";

/// A governance over in-memory counters (as the store), around a recording admission.
fn governance() -> (Governance, Arc<RecordingAdmission>) {
    governance_of(CONFIG)
}

/// [`governance`] of configuration `yaml`.
fn governance_of(yaml: &str) -> (Governance, Arc<RecordingAdmission>) {
    let config = crate::config::from_yaml_str_with_env(yaml, &|_| None).unwrap();
    let inner = Arc::new(RecordingAdmission::default());
    let stores = Arc::new(GovernanceStores::new(Arc::new(MemoryCounters::default())));
    let metrics = Arc::new(Metrics::new().unwrap());
    (Governance::new(&config, stores, metrics, inner.clone()), inner)
}

fn request(vk: &str) -> RequestAdmission<'_> {
    RequestAdmission {
        request_id: "r",
        virtual_key: Some(vk),
    }
}

fn attempt(vk: &str, n: u32) -> AdmissionRequest<'_> {
    AdmissionRequest {
        request_id: "r",
        virtual_key: Some(vk),
        provider: "openai",
        model: "house-model",
        n,
        size: None,
        quality: None,
        stream: false,
        attempt: AttemptIndex { candidate: 0, retry: 0 },
        form_complete: true,
    }
}

fn settlement(images: u32, cost: Option<u64>) -> Settlement<'static> {
    Settlement {
        status: if images > 0 { 200 } else { 500 },
        reason: None,
        images,
        usage: None,
        provider: "openai",
        model: "house-model",
        key: Some("k"),
        elapsed: std::time::Duration::ZERO,
        virtual_key: Some("app"),
        cost,
    }
}

#[tokio::test]
async fn requests_and_slots_are_held_per_request() {
    let (g, inner) = governance();
    let first = g.admit_request(&request("app")).decide().await.unwrap();
    // One slot: a second request in flight is refused, and the inner admission's permit
    // of the refused one is handed back.
    let e = g.admit_request(&request("app")).decide().await.unwrap_err();
    assert_eq!((e.status(), e.code()), (429, "rate_limited"));
    assert!(e.to_string().contains("concurrent request limit exceeded (1/1)"), "{e}");
    g.finish_request(first).wait().await;
    let second = g.admit_request(&request("app")).decide().await.unwrap();
    g.finish_request(second).wait().await;
    // Two requests a minute: the third is refused with the window's numbers.
    let e = g.admit_request(&request("app")).decide().await.unwrap_err();
    match &e {
        GatewayError::RateLimited { limits, message } => {
            assert_eq!((limits.what, limits.limit, limits.remaining), ("requests", 2, 0));
            assert!((1..=60).contains(&limits.retry_after_secs()), "{limits:?}");
            assert_eq!(
                message,
                "rate limit violated for app: [request limit exceeded (2/2, resets every 1m)]"
            );
        }
        other => panic!("{other:?}"),
    }
    // A key without limits goes straight to the inner admission.
    let free = g.admit_request(&request("free")).decide().await.unwrap();
    assert_eq!(free.token & OURS, 0);
    assert!(
        inner.recorded().admits.is_empty(),
        "request-level calls are not attempts"
    );
}

#[tokio::test]
async fn attempts_reserve_the_worst_case_and_settle_to_the_cost() {
    let (g, inner) = governance();
    // The team's $0.05: 2 images reserve $0.04, settled to one delivered image ($0.02).
    let p = g.admit(&attempt("app", 2)).decide().await.unwrap();
    assert_ne!(p.token & OURS, 0);
    g.settle(p, &settlement(1, Some(20_000))).wait().await;
    let usage = g.usage().await.unwrap();
    assert_eq!(
        usage["teams"][0]["budget"]["spent_usd"],
        serde_json::json!(0.02),
        "{usage}"
    );
    let app = &usage["virtual_keys"][0];
    assert_eq!(app["rate_limit"]["images"]["used"], 1, "{usage}");
    // A failed attempt costs nothing and gives its images back.
    let p = g.admit(&attempt("app", 2)).decide().await.unwrap();
    g.settle(p, &settlement(0, None)).wait().await;
    let usage = g.usage().await.unwrap();
    assert_eq!(
        usage["teams"][0]["budget"]["spent_usd"],
        serde_json::json!(0.02),
        "{usage}"
    );
    assert_eq!(usage["virtual_keys"][0]["rate_limit"]["images"]["used"], 1, "{usage}");
    // Images: 1 + 3 > 3 is refused before the budget is asked.
    let e = g.admit(&attempt("app", 3)).decide().await.unwrap_err();
    assert!(e.to_string().contains("image limit exceeded (1/3"), "{e}");
    // The inner admission saw and settled every admitted attempt once.
    let recorded = inner.recorded();
    assert_eq!(recorded.admits.len(), 3);
    assert_eq!(recorded.settles.len(), 2);
}

/// A budget's reservation counts until it is settled, the settled cost for good; one never
/// settled (its process died) lapses with the slot lease.
#[tokio::test]
async fn an_unsettled_reservation_lapses_with_the_slot_lease() {
    let (g, _) = governance_of(&format!("{CONFIG}governance: {{slot_lease_ms: 1000}}\n"));
    let spent = |usage: serde_json::Value| usage["teams"][0]["budget"]["spent_usd"].clone();
    // Settled at exactly its worst case ($0.02 an image).
    let settled = g.admit(&attempt("app", 1)).decide().await.unwrap();
    g.settle(settled, &settlement(1, Some(20_000))).wait().await;
    let _abandoned = g.admit(&attempt("app", 1)).decide().await.unwrap();
    assert_eq!(spent(g.usage().await.unwrap()), serde_json::json!(0.04), "both count");
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    assert_eq!(
        spent(g.usage().await.unwrap()),
        serde_json::json!(0.02),
        "the abandoned reservation lapsed, the settled cost stayed"
    );
}

#[tokio::test]
async fn a_spent_team_budget_refuses_with_bifrosts_message() {
    let (g, _) = governance();
    for _ in 0..2 {
        let p = g.admit(&attempt("app", 1)).decide().await.unwrap();
        g.settle(p, &settlement(1, Some(30_000))).wait().await;
    }
    // $0.06 spent of the team's $0.05: refused per request and per attempt.
    let e = g.admit_request(&request("app")).decide().await.unwrap_err();
    assert_eq!((e.status(), e.code()), (402, "budget_exceeded"));
    assert_eq!(
        e.to_string(),
        "Budget exceeded: Team budget exceeded: 0.0600 >= 0.0500 dollars"
    );
    let e = g.admit(&attempt("app", 1)).decide().await.unwrap_err();
    assert_eq!(e.code(), "budget_exceeded");
}

#[tokio::test]
async fn provider_key_quotas_count_requests_and_images() {
    let (g, _) = governance();
    let quota = KeyQuota {
        requests: Some(2),
        images: Some(3),
        per: std::time::Duration::from_secs(60),
    };
    assert!(g.take_key_quota("openai", "k", &quota, 2).await.unwrap());
    assert!(
        !g.take_key_quota("openai", "k", &quota, 2).await.unwrap(),
        "2 + 2 > 3 images"
    );
    assert!(g.take_key_quota("openai", "k", &quota, 1).await.unwrap());
    assert!(
        !g.take_key_quota("openai", "k", &quota, 0).await.unwrap(),
        "3 requests > 2"
    );
    assert!(g.take_key_quota("openai", "other", &quota, 1).await.unwrap(), "per key");
}

/// Images counted in a first-use window (a limit above the sliding maximum) are reserved, so
/// an attempt that delivered exactly what it asked is settled all the same: its images stay
/// counted after the reservation's lease.
#[tokio::test]
async fn delivered_images_outlive_their_reservation() {
    let config = CONFIG.replace("images: 3,", "images: 5000,");
    let (g, _) = governance_of(&format!("{config}governance: {{slot_lease_ms: 1000}}\n"));
    let p = g.admit(&attempt("app", 2)).decide().await.unwrap();
    g.settle(p, &settlement(2, Some(40_000))).wait().await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let usage = g.usage().await.unwrap();
    assert_eq!(usage["virtual_keys"][0]["rate_limit"]["images"]["used"], 2, "{usage}");
}
