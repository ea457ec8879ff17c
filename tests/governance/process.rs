//! Governance across processes: two `refract` replicas on one `redis-server` hold a key to its
//! limits exactly; the embedded store keeps spend across `kill -9` and a restart; Redis killed
//! under `fail_open` and `fail_closed`.

use super::*;
use common::engines::redis_server;
use common::process::Refract;

/// A `refract` process in front of `upstream` with the store section `store`, the governance
/// settings `governance` and key [`VK`]'s `key_settings`.
fn start(store: &str, governance: &str, key_settings: &str, upstream: &str) -> Refract {
    let yaml = |listen: SocketAddr, metrics: SocketAddr, dir: &Path| {
        format!(
            "server:
  threads: 2
  grace_period_seconds: 0
  graceful_shutdown_timeout_seconds: 1
listeners:
  - address: {listen}
metrics:
  address: {metrics}
{store}objects:
  kind: fs
  path: {objects}
{PRICING}governance:
  admin_key: {ADMIN_KEY}
{governance}providers:
  - name: openai
    kind: openai
    base_url: {upstream}
    keys:
      - name: primary
        value: {PROVIDER_KEY}
virtual_keys:
  - id: team-a
    key: {VK}
{key_settings}  - id: free
    key: {VK_RESTRICTED}
",
            objects = dir.join("objects").display()
        )
    };
    Refract::start(yaml, &[])
}

fn redis_store(url: &str) -> String {
    format!("store:\n  kind: redis\n  url: '{url}'\n")
}

fn embedded_store(dir: &Path) -> String {
    format!("store:\n  kind: embedded\n  path: {}\n", dir.display())
}

/// Sends `count` edits of `model` with key [`VK`] at once, spread over `replicas` in turn;
/// their statuses.
fn burst(replicas: &[&Refract], count: usize, model: &str) -> Vec<u16> {
    let addrs: Vec<SocketAddr> = replicas.iter().map(|r| r.addr).collect();
    burst_at(&addrs, count, model)
}

/// [`burst`] to the gateways at `addrs`.
fn burst_at(addrs: &[SocketAddr], count: usize, model: &str) -> Vec<u16> {
    let model = model.to_string();
    let clients: Vec<_> = (0..count)
        .map(|i| {
            let addr = addrs[i % addrs.len()];
            let model = model.clone();
            std::thread::spawn(move || {
                let f = form(&model, 1);
                let mut c = Conn::open(addr);
                c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &f, None));
                c.send(&f.body());
                c.read_response().status
            })
        })
        .collect();
    clients.into_iter().map(|c| c.join().unwrap()).collect()
}

fn count(statuses: &[u16], status: u16) -> usize {
    statuses.iter().filter(|s| **s == status).count()
}

/// The acceptance: 30 requests spread over two replicas sharing one Redis, with a
/// limit of 10 a minute, admit exactly 10; and a daily budget holds across both, passed by at
/// most one request.
#[test]
fn two_replicas_on_one_redis_admit_exactly_the_limit() {
    let Some((_redis, url)) = redis_server() else { return };
    let mock = MockUpstream::start();
    mock.always(Reply::json(200, &answer(1)));
    let limits = "    rate_limit: {requests: 10, per: 1m}\n    budget: {max_usd: 0.25, period: 1d, calendar: true}\n";
    let a = start(&redis_store(&url), "", limits, &mock.base_url());
    let b = start(&redis_store(&url), "", limits, &mock.base_url());
    let statuses = burst(&[&a, &b], 30, "openai/house-model");
    assert_eq!(count(&statuses, 429), 20, "{statuses:?}");
    assert_eq!(count(&statuses, 200), 10, "{statuses:?}");
    assert_eq!(mock.received(), 10);
    // Both replicas refused some: the limit is shared, not per process.
    let refused = |r: &Refract| r.metric("refract_governance_refusals_total{limit=\"requests\",scope=\"virtual_key\"}");
    assert!(
        refused(&a) > 0.0 && refused(&b) > 0.0,
        "{} {}",
        refused(&a),
        refused(&b)
    );
    assert_eq!(refused(&a) + refused(&b), 20.0);
    // Either replica reports the same shared usage.
    let used = spent(a.addr, "team-a", 0.20);
    assert_eq!(used["rate_limit"]["requests"]["used"], 10, "{used}");
    assert_eq!(key_usage(b.addr, "team-a")["budget"]["spent_usd"], json!(0.20));
}

#[test]
fn a_budget_holds_across_two_replicas_by_at_most_one_request() {
    let Some((_redis, url)) = redis_server() else { return };
    let mock = MockUpstream::start();
    let gate = Gate::new();
    mock.always(gate.hold(Reply::json(200, &answer(1))));
    let limits = "    budget: {max_usd: 0.09, period: 1d}\n";
    let a = start(&redis_store(&url), "", limits, &mock.base_url());
    let b = start(&redis_store(&url), "", limits, &mock.base_url());
    let (addr_a, addr_b) = (a.addr, b.addr);
    let replicas = [(a.addr, a.metrics), (b.addr, b.metrics)];
    let clients = std::thread::spawn(move || burst_at(&[addr_a, addr_b], 20, "openai/house-model"));
    // Every admitted request is held upstream while the others are refused: the
    // reservations, not settled costs, are what hold the budget.
    let refused = || -> f64 {
        replicas
            .iter()
            .map(|(_, m)| {
                metric_in(
                    &Gateway::get(*m, "/metrics").text(),
                    "refract_governance_refusals_total{limit=\"budget\",scope=\"virtual_key\"}",
                )
            })
            .sum()
    };
    wait_until("5 requests upstream and 15 refused", || {
        mock.received() == 5 && refused() == 15.0
    });
    gate.open();
    let statuses = clients.join().unwrap();
    // $0.02 each: admitted with 0, 0.02, 0.04, 0.06, 0.08 reserved; the spend ends at
    // $0.10, past $0.09 by less than one request.
    assert_eq!(count(&statuses, 200), 5, "{statuses:?}");
    assert_eq!(count(&statuses, 402), 15, "{statuses:?}");
    spent(addr_a, "team-a", 0.10);
    spent(addr_b, "team-a", 0.10);
}

#[test]
fn the_embedded_store_keeps_spend_across_kill_9_and_a_restart() {
    let mock = MockUpstream::start();
    mock.always(Reply::json(200, &answer(1)));
    let dir = tempfile::tempdir().unwrap();
    let store = embedded_store(dir.path());
    let limits = "    budget: {max_usd: 0.05, period: 1d}\n    rate_limit: {requests: 100, per: 1h}\n";
    let mut first = start(&store, "", limits, &mock.base_url());
    for _ in 0..2 {
        let r = edit_house(first.addr);
        assert_eq!(r.status, 200, "{}", r.text());
    }
    spent(first.addr, "team-a", 0.04);
    first.kill9();
    let second = start(&store, "", limits, &mock.base_url());
    let used = key_usage(second.addr, "team-a");
    assert_eq!(used["budget"]["spent_usd"], json!(0.04), "{used}");
    assert_eq!(used["rate_limit"]["requests"]["used"], 2, "{used}");
    assert_eq!(edit_house(second.addr).status, 200);
    spent(second.addr, "team-a", 0.06);
    let r = edit_house(second.addr);
    assert_gateway_error(&r, 402, "budget_exceeded", "invalid_request_error", None);
}

/// One edit of `house-model` (1 image, $0.02) with key [`VK`].
fn edit_house(addr: SocketAddr) -> Response {
    let f = form("openai/house-model", 1);
    let mut c = Conn::open(addr);
    c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK)], &f, None));
    c.send(&f.body());
    c.read_response()
}

#[test]
fn redis_killed_under_fail_open_counts_locally_and_logs_it() {
    let Some((redis, url)) = redis_server() else { return };
    let mock = MockUpstream::start();
    mock.always(Reply::json(200, &answer(1)));
    let limits = "    rate_limit: {requests: 3, per: 1h}\n";
    let gw = start(
        &redis_store(&url),
        "  on_store_error: fail_open\n",
        limits,
        &mock.base_url(),
    );
    assert_eq!(edit_house(gw.addr).status, 200);
    drop(redis);
    // The store is gone: this process counts on its own, so the limit still applies (3 here,
    // from zero), and nothing waits on the dead server.
    let statuses: Vec<u16> = (0..4).map(|_| edit_house(gw.addr).status).collect();
    assert_eq!(statuses, [200, 200, 200, 429], "{}", gw.log());
    assert!(gw.metric("refract_governance_store_errors_total{policy=\"fail_open\"}") >= 1.0);
    assert!(gw.log().contains("fail_open"), "{}", gw.log());
    let v = key_usage(gw.addr, "team-a");
    assert_eq!(v["rate_limit"]["requests"]["used"], 3, "{v}");
}

#[test]
fn redis_killed_under_fail_closed_refuses_governed_keys_only() {
    let Some((redis, url)) = redis_server() else { return };
    let mock = MockUpstream::start();
    mock.always(Reply::json(200, &answer(1)));
    let limits = "    rate_limit: {requests: 100, per: 1h}\n";
    let gw = start(
        &redis_store(&url),
        "  on_store_error: fail_closed\n",
        limits,
        &mock.base_url(),
    );
    assert_eq!(edit_house(gw.addr).status, 200);
    drop(redis);
    let r = edit_house(gw.addr);
    assert_gateway_error(&r, 503, "governance_unavailable", "server_error", None);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
    // A key without limits does not need the store.
    let f = form("openai/house-model", 1);
    let mut c = Conn::open(gw.addr);
    c.send(&post_head("/v1/images/edits", &[("x-bf-vk", VK_RESTRICTED)], &f, None));
    c.send(&f.body());
    assert_eq!(c.read_response().status, 200);
    assert!(gw.metric("refract_governance_store_errors_total{policy=\"fail_closed\"}") >= 1.0);
    assert!(gw.log().contains("fail_closed"), "{}", gw.log());
    assert_eq!(mock.received(), 2);
}
