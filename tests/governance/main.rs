//! Governance end to end: budgets (of keys and teams) reserved before the upstream call and
//! settled to the answer's price, rate limits (requests and images per window, requests in
//! flight) with `Retry-After` and `x-ratelimit-*`, provider-key quotas that make key selection
//! skip a saturated key and fall back, async jobs charged to their submitter, the admin usage
//! endpoint and the metrics. `process.rs`: two replicas on one `redis-server`, a restart on the
//! embedded store, and Redis killed under both policies.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "../common/mod.rs"]
mod common;
mod process;

use common::*;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::Path;

/// Operator prices: `house-*` models at $0.02 per image.
const PRICING: &str = "pricing:\n  models:\n    - match: \"house-*\"\n      per_image: 0.02\n";

/// A second virtual key, for teams.
const SECOND_VK: &str = "sk-bf-second-VIRTUALKEY-7";

/// The admin key of the usage endpoint.
const ADMIN_KEY: &str = "sk-admin-GOVERNANCE-0123456789";

/// The sections of a governed gateway: an embedded store in `dir`, the prices, the admin key
/// (from `ADMIN_KEY` in the environment: literal here) and `more`.
fn sections(dir: &Path, more: &str) -> String {
    format!(
        "store:\n  kind: embedded\n  path: {}\nobjects:\n  kind: fs\n  path: {}\n{PRICING}governance:\n  admin_key: {ADMIN_KEY}\n{more}",
        dir.join("db").display(),
        dir.join("objects").display()
    )
}

/// A gateway in front of `mock` whose key [`VK`] has `key_settings`.
fn gateway(mock: &MockUpstream, dir: &Path, key_settings: &str, more: &str) -> Gateway {
    let mut setup = Setup::new(&mock.base_url());
    setup.sections = sections(dir, more);
    setup.key_settings = key_settings.to_string();
    Gateway::start(&setup)
}

/// A governed gateway ([`gateway`]) in front of a new mock provider that answers `always`
/// to every request (when given), with its state directory.
fn governed(always: Option<Value>, key_settings: &str, more: &str) -> (MockUpstream, tempfile::TempDir, Gateway) {
    let mock = MockUpstream::start();
    if let Some(body) = always {
        mock.always(Reply::json(200, &body));
    }
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&mock, dir.path(), key_settings, more);
    (mock, dir, gw)
}

/// An edit of `model` asking `n` images.
fn form(model: &str, n: u32) -> Form {
    Form::new()
        .text("model", model)
        .text("prompt", "make it blue")
        .text("n", &n.to_string())
        .file("image", "in.png", "image/png", &tiny_png())
}

/// A provider answer with `n` images.
fn answer(n: usize) -> Value {
    let mut body = default_success();
    let one = body["data"][0].clone();
    body["data"] = Value::Array(vec![one; n]);
    body
}

/// `GET /api/governance/usage` with `headers`.
fn usage(addr: SocketAddr, headers: &[(&str, &str)]) -> Response {
    Gateway::call(addr, "GET", "/api/governance/usage", headers)
}

/// The usage entry of virtual key `id`, read with the admin key.
fn key_usage(addr: SocketAddr, id: &str) -> Value {
    let r = usage(addr, &[("authorization", &format!("Bearer {ADMIN_KEY}"))]);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    v["virtual_keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["id"] == id))
        .cloned()
        .unwrap_or_else(|| panic!("no key {id} in {v}"))
}

/// Key `id`'s usage, asserting its budget shows `spent` USD: an answer is sent once its
/// attempt was settled, so a client that read it sees its cost counted.
fn spent(addr: SocketAddr, id: &str, spent: f64) -> Value {
    let used = key_usage(addr, id);
    let shown = used["budget"]["spent_usd"].as_f64().unwrap_or(-1.0);
    assert!(
        (shown - spent).abs() < 1e-9,
        "key {id} spent {shown}, not {spent}: {used}"
    );
    used
}

/// The refusal counter of `scope` and `limit`.
fn refusals(gw: &Gateway, scope: &str, limit: &str) -> f64 {
    gw.metric_settled(&format!(
        "refract_governance_refusals_total{{limit=\"{limit}\",scope=\"{scope}\"}}"
    ))
}

#[test]
fn requests_per_window_are_held_exactly_with_retry_after_and_ratelimit_headers() {
    let (mock, _dir, gw) = governed(Some(default_success()), "    rate_limit: {requests: 3, per: 1m}\n", "");
    for _ in 0..3 {
        let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let body = assert_gateway_error(&r, 429, "rate_limited", "rate_limit_error", None);
    assert_eq!(
        body["error"]["message"],
        "Rate limit check failed: rate limit violated for team-a: [request limit exceeded (3/3, resets every 1m)]"
    );
    let retry_after: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(r.header("x-ratelimit-limit-requests").as_deref(), Some("3"));
    assert_eq!(r.header("x-ratelimit-remaining-requests").as_deref(), Some("0"));
    assert_eq!(r.header("x-ratelimit-reset-requests"), Some(format!("{retry_after}s")));
    assert_eq!(mock.received(), 3, "the refused request never went upstream");
    assert_eq!(refusals(&gw, "virtual_key", "requests"), 1.0);
    // Another key is not limited by team-a's window.
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK_RESTRICTED)]);
    assert_eq!(r.status, 200, "{}", r.text());
    // The usage endpoint shows the window.
    let requests = &key_usage(gw.addr, "team-a")["rate_limit"]["requests"];
    assert_eq!(
        (&requests["limit"], &requests["used"], &requests["remaining"]),
        (&json!(3), &json!(3), &json!(0)),
        "{requests}"
    );
    assert!(requests["resets_at"].is_string(), "{requests}");
}

#[test]
fn a_refused_request_is_answered_before_its_upload_is_read() {
    let (mock, _dir, gw) = governed(Some(default_success()), "    rate_limit: {requests: 1, per: 1h}\n", "");
    assert_eq!(gw.edit(&valid_form(), &[("x-bf-vk", VK)]).status, 200);
    // A large upload announced but not sent: the 429 comes from the head alone.
    let form = valid_form();
    let mut c = gw.connect();
    c.send(&post_head(
        "/v1/images/edits",
        &[("x-bf-vk", VK)],
        &form,
        Some(50_000_000),
    ));
    let r = c.read_response();
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(mock.received(), 1);
}

#[test]
fn images_per_window_count_what_was_delivered() {
    let (mock, _dir, gw) = governed(None, "    rate_limit: {images: 4, per: 1m}\n", "");
    mock.push(Reply::json(200, &answer(3)));
    let r = gw.edit(&form("openai/house-model", 3), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    // 3 + 2 > 4: refused, with the images headers.
    let r = gw.edit(&form("openai/house-model", 2), &[("x-bf-vk", VK)]);
    let body = assert_gateway_error(&r, 429, "rate_limited", "rate_limit_error", None);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("image limit exceeded (3/4"),
        "{body}"
    );
    assert_eq!(r.header("x-ratelimit-limit-images").as_deref(), Some("4"));
    assert_eq!(r.header("x-ratelimit-remaining-images").as_deref(), Some("1"));
    // A failed attempt gives its reservation back: 1 image fails, then 1 image fits still.
    mock.push(Reply::json(
        400,
        &json!({"error": {"message": "bad prompt", "type": "invalid_request_error"}}),
    ));
    let r = gw.edit(&form("openai/house-model", 1), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 400, "{}", r.text());
    // Given back before the answer went out.
    assert_eq!(key_usage(gw.addr, "team-a")["rate_limit"]["images"]["used"], 3);
    mock.push(Reply::json(200, &answer(1)));
    let r = gw.edit(&form("openai/house-model", 1), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(mock.received(), 3);
    assert_eq!(refusals(&gw, "virtual_key", "images"), 1.0);
}

#[test]
fn a_budget_is_charged_each_answers_price_and_refuses_once_spent() {
    let (mock, _dir, gw) = governed(None, "    budget: {max_usd: 0.05, period: 1d}\n", "");
    // Two images at $0.02.
    mock.push(Reply::json(200, &answer(2)));
    let r = gw.edit(&form("openai/house-model", 2), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["cost"], json!(0.04));
    spent(gw.addr, "team-a", 0.04);
    // A failed upstream call costs nothing.
    mock.push(Reply::json(500, &json!({"error": {"message": "boom"}})));
    let r = gw.edit(&form("openai/house-model", 1), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 500, "{}", r.text());
    let used = spent(gw.addr, "team-a", 0.04);
    assert_eq!(used["budget"]["remaining_usd"], json!(0.01));
    // $0.04 < $0.05: one more request is admitted (the last one may pass the budget by its cost).
    mock.push(Reply::json(200, &answer(1)));
    let r = gw.edit(&form("openai/house-model", 1), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    spent(gw.addr, "team-a", 0.06);
    let r = gw.edit(&form("openai/house-model", 1), &[("x-bf-vk", VK)]);
    let body = assert_gateway_error(&r, 402, "budget_exceeded", "invalid_request_error", None);
    assert_eq!(
        body["error"]["message"],
        "Budget exceeded: VK budget exceeded: 0.0600 >= 0.0500 dollars"
    );
    assert_eq!(mock.received(), 3);
    assert_eq!(refusals(&gw, "virtual_key", "budget"), 1.0);
    assert!(
        (gw.metric_settled("refract_virtual_key_spend_usd_total{provider=\"openai\",virtual_key=\"team-a\"}") - 0.06)
            .abs()
            < 1e-9
    );
    assert_eq!(
        gw.metric_settled("refract_budget_remaining_usd{id=\"team-a\",scope=\"virtual_key\"}"),
        0.0
    );
}

#[test]
fn concurrent_requests_overspend_a_budget_by_at_most_one_request() {
    let mock = MockUpstream::start();
    let gate = Gate::new();
    mock.always(gate.hold(Reply::json(200, &answer(1))));
    let dir = tempfile::tempdir().unwrap();
    // $0.09 at $0.02 a request: with 0, 0.02, 0.04, 0.06 and 0.08 reserved a request is
    // admitted, with 0.10 it is not.
    let gw = gateway(&mock, dir.path(), "    budget: {max_usd: 0.09, period: 1d}\n", "");
    let pricing_model = "openai/house-model";
    let addr = gw.addr;
    let clients: Vec<_> = (0..10)
        .map(|_| {
            std::thread::spawn(move || {
                let mut c = Conn::open(addr);
                let f = form(pricing_model, 1);
                c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &f, None));
                c.send(&f.body());
                c.read_response()
            })
        })
        .collect();
    // Every admitted request is upstream (held) or refused before the gate opens.
    wait_until("every request admitted or refused", || {
        mock.received() + clients.iter().filter(|c| c.is_finished()).count() == 10
    });
    gate.open();
    let statuses: Vec<u16> = clients.into_iter().map(|c| c.join().unwrap().status).collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 402).count();
    assert_eq!(ok + refused, 10, "{statuses:?}");
    // Exactly 5 admitted: the spend passes the budget by less than one request's cost.
    assert_eq!(ok, 5, "{statuses:?}");
    let used = spent(addr, "team-a", 0.10);
    assert!(
        used["budget"]["spent_usd"].as_f64().unwrap() <= 0.09 + 0.02 + 1e-9,
        "{used}"
    );
}

#[test]
fn a_team_budget_is_shared_by_its_keys() {
    let mock = MockUpstream::start();
    mock.always(Reply::json(200, &answer(1)));
    let dir = tempfile::tempdir().unwrap();
    let teams = "teams:\n  - {id: design, budget: {max_usd: 0.03, period: 1M, calendar: true}}\n";
    let mut setup = Setup::new(&mock.base_url());
    setup.sections = sections(dir.path(), teams);
    // team-a and a second key, both in the team.
    setup.key_settings = format!("    team: design\n  - id: second\n    key: {SECOND_VK}\n    team: design\n");
    let gw = Gateway::start(&setup);
    for vk in [VK, SECOND_VK] {
        let r = gw.edit(&form("openai/house-model", 1), &[("x-bf-vk", vk)]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    let r = usage(gw.addr, &[("authorization", &format!("Bearer {ADMIN_KEY}"))]);
    assert_eq!(r.json()["teams"][0]["budget"]["spent_usd"], json!(0.04), "{}", r.text());
    let r = gw.edit(&form("openai/house-model", 1), &[("x-bf-vk", VK)]);
    let body = assert_gateway_error(&r, 402, "budget_exceeded", "invalid_request_error", None);
    assert_eq!(
        body["error"]["message"],
        "Budget exceeded: Team budget exceeded: 0.0400 >= 0.0300 dollars"
    );
    // A calendar month: the usage says when it resets (the 1st, UTC).
    let v = usage(gw.addr, &[("authorization", &format!("Bearer {ADMIN_KEY}"))]).json();
    let resets = v["teams"][0]["budget"]["resets_at"].as_str().unwrap().to_string();
    assert!(resets.contains("-01T00:00:00"), "{resets}");
    assert_eq!(refusals(&gw, "team", "budget"), 1.0);
}

#[test]
fn requests_in_flight_are_limited_and_released() {
    let mock = MockUpstream::start();
    let gate = Gate::new();
    mock.push(gate.hold(Reply::json(200, &default_success())));
    mock.always(Reply::json(200, &default_success()));
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(&mock, dir.path(), "    rate_limit: {concurrent: 1}\n", "");
    let addr = gw.addr;
    let held = std::thread::spawn(move || {
        let mut c = Conn::open(addr);
        let f = valid_form();
        c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &f, None));
        c.send(&f.body());
        c.read_response()
    });
    wait_until("the first request is upstream", || mock.received() == 1);
    let r = gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    let body = assert_gateway_error(&r, 429, "rate_limited", "rate_limit_error", None);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("concurrent request limit exceeded (1/1)"),
        "{body}"
    );
    assert_eq!(r.header("x-ratelimit-limit-concurrent").as_deref(), Some("1"));
    assert!(r.header("retry-after").is_some());
    gate.open();
    assert_eq!(held.join().unwrap().status, 200);
    // The slot was given back before the answer went out: the next request gets it, after
    // an answer as after an error.
    assert_eq!(gw.edit(&valid_form(), &[("x-bf-vk", VK)]).status, 200);
    for _ in 0..5 {
        let bad = Form::new()
            .text("model", "openai/gpt-image-1")
            .file("image", "in.png", "image/png", &tiny_png());
        assert_eq!(gw.edit(&bad, &[("x-bf-vk", VK)]).status, 400);
        assert_eq!(gw.edit(&valid_form(), &[("x-bf-vk", VK)]).status, 200);
    }
    assert_eq!(refusals(&gw, "virtual_key", "concurrent"), 1.0);
}

/// A provider `quota` with two keys that allow one request a minute each.
const QUOTA_PROVIDER: &str = "  - name: quota
    kind: openai
    base_url: {up}
    keys:
      - {name: one, value: sk-quota-ONE, quota: {requests: 1, per: 1m}}
      - {name: two, value: sk-quota-TWO, quota: {requests: 1, per: 1m}}
";

#[test]
fn key_selection_skips_a_saturated_provider_key_and_then_falls_back() {
    let mock = MockUpstream::start();
    mock.always(Reply::json(200, &default_success()));
    let dir = tempfile::tempdir().unwrap();
    let mut setup = Setup::new(&mock.base_url());
    setup.sections = sections(dir.path(), "");
    setup.extra_providers = QUOTA_PROVIDER.replace("{up}", &mock.base_url());
    let gw = Gateway::start(&setup);
    for _ in 0..2 {
        let r = gw.edit(&form("quota/gpt-image-1", 1), &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    // Each key was used once: the second request skipped the saturated one.
    let mut keys: Vec<String> = mock
        .requests()
        .iter()
        .map(|r| r.header("authorization").unwrap())
        .collect();
    keys.sort();
    assert_eq!(keys, ["Bearer sk-quota-ONE", "Bearer sk-quota-TWO"]);
    // Both saturated: 429 provider_quota_exceeded, nothing sent.
    let r = gw.edit(&form("quota/gpt-image-1", 1), &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 429, "provider_quota_exceeded", "rate_limit_error", None);
    assert_eq!(mock.received(), 2);
    // With a fallback, the request goes there instead of collecting a 429.
    let f = form("quota/gpt-image-1", 1).text("fallbacks", "openai/gpt-image-1");
    let r = gw.edit(&f, &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["extra_fields"]["provider"], "openai");
    assert_eq!(
        mock.requests().last().unwrap().header("authorization").as_deref(),
        Some(format!("Bearer {PROVIDER_KEY}").as_str())
    );
    // The third and fourth requests found both keys saturated; the second found one when
    // it tried the first key again (a weighted pick).
    let refused = refusals(&gw, "provider_key", "requests");
    assert!((4.0..=5.0).contains(&refused), "{refused}");
}

#[test]
fn the_usage_endpoint_is_for_admins_only() {
    let (_mock, _dir, gw) = governed(
        Some(answer(1)),
        "    budget: {max_usd: 5, period: 1d}\n    rate_limit: {requests: 10, images: 20, per: 1m, concurrent: 2}\n",
        "",
    );
    assert_eq!(gw.edit(&form("openai/house-model", 1), &[("x-bf-vk", VK)]).status, 200);
    let v = spent(gw.addr, "team-a", 0.02);
    assert_eq!(v["budget"]["max_usd"], json!(5.0), "{v}");
    assert_eq!(v["budget"]["remaining_usd"], json!(4.98), "{v}");
    assert_eq!(v["budget"]["period"], "1d", "{v}");
    assert_eq!(v["rate_limit"]["per"], "1m", "{v}");
    assert_eq!(v["rate_limit"]["requests"]["used"], 1, "{v}");
    assert_eq!(v["rate_limit"]["images"]["used"], 1, "{v}");
    assert_eq!(v["rate_limit"]["concurrent"]["limit"], 2, "{v}");
    // Every key is listed; one without limits says so.
    let restricted = key_usage(gw.addr, "restricted");
    assert_eq!(restricted["governed"], false, "{restricted}");
    assert_eq!(key_usage(gw.addr, "off")["enabled"], false);
    // Anyone else: no credential 401, a virtual key or a wrong admin key 403/401.
    let r = usage(gw.addr, &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = usage(gw.addr, &[("x-bf-vk", VK)]);
    assert_gateway_error(&r, 403, "admin_required", "permission_error", None);
    let r = usage(gw.addr, &[("authorization", "Bearer sk-admin-WRONG")]);
    assert!(matches!(r.status, 401 | 403), "{}", r.text());
    // Read-only.
    let r = Gateway::call(
        gw.addr,
        "POST",
        "/api/governance/usage",
        &[("authorization", &format!("Bearer {ADMIN_KEY}"))],
    );
    assert_eq!(r.status, 405);
}

#[test]
fn async_jobs_are_charged_to_their_submitter_once() {
    let (mock, _dir, gw) = governed(
        Some(answer(1)),
        "    budget: {max_usd: 1, period: 1d}\n    rate_limit: {requests: 2, per: 1h}\n",
        "jobs:\n  workers: 1\n  poll_interval_ms: 50\n",
    );
    let submit = |f: &Form| {
        let mut c = gw.connect();
        c.send(&post_head("/v1/async/images/edits", &[("x-bf-vk", VK)], f, None));
        c.send(&f.body());
        c.read_response()
    };
    let mut ids = Vec::new();
    for _ in 0..2 {
        let r = submit(&form("openai/house-model", 1));
        assert_eq!(r.status, 202, "{}", r.text());
        ids.push(r.json()["id"].as_str().unwrap().to_string());
    }
    // The third submission is over the key's requests: refused at once.
    let r = submit(&form("openai/house-model", 1));
    assert_gateway_error(&r, 429, "rate_limited", "rate_limit_error", None);
    for id in &ids {
        wait_until("the job completes", || {
            let r = Gateway::call(
                gw.addr,
                "GET",
                &format!("/v1/async/images/edits/{id}"),
                &[("x-bf-vk", VK)],
            );
            r.json()["status"] == "completed"
        });
    }
    // Both runs were charged to team-a, once each; the runs took no request of the window.
    let v = spent(gw.addr, "team-a", 0.04);
    assert_eq!(v["rate_limit"]["requests"]["used"], 2, "{v}");
    assert_eq!(mock.received(), 2);
}

#[test]
fn a_reload_changes_the_limits_and_keeps_the_counts() {
    let (mock, _dir, gw) = governed(Some(default_success()), "    rate_limit: {requests: 1, per: 1h}\n", "");
    assert_eq!(gw.edit(&valid_form(), &[("x-bf-vk", VK)]).status, 200);
    assert_eq!(gw.edit(&valid_form(), &[("x-bf-vk", VK)]).status, 429);
    // Three an hour now: the request already counted leaves two.
    gw.reload(&gw.yaml.replace(
        "rate_limit: {requests: 1, per: 1h}",
        "rate_limit: {requests: 3, per: 1h}",
    ));
    let statuses: Vec<u16> = (0..3)
        .map(|_| gw.edit(&valid_form(), &[("x-bf-vk", VK)]).status)
        .collect();
    assert_eq!(statuses, [200, 200, 429]);
    // No limits at all: the key no longer touches the counters.
    gw.reload(&gw.yaml.replace("    rate_limit: {requests: 1, per: 1h}\n", ""));
    assert_eq!(gw.edit(&valid_form(), &[("x-bf-vk", VK)]).status, 200);
    assert_eq!(mock.received(), 4);
}
