//! The governance settings: budgets and rate limits of virtual keys, budgets of teams, quotas
//! of provider keys, and what happens when the shared store cannot be reached.
//!
//! ```yaml
//! governance:
//!   on_store_error: fail_open      # or fail_closed
//! teams:
//!   - id: design
//!     budget: {max_usd: 200, period: 1M, calendar: true}
//! virtual_keys:
//!   - id: app
//!     key: env.APP_KEY
//!     team: design
//!     budget: {max_usd: 5, period: 1d}
//!     rate_limit: {requests: 10, images: 40, per: 1m, concurrent: 4}
//! providers:
//!   - name: openai
//!     keys:
//!       - {name: main, value: env.OPENAI_KEY, quota: {images: 50, per: 1m}}
//! ```

use super::fields::Fields;
use std::time::Duration;

/// What the gateway does when the shared store of counters (Redis) cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StorePolicy {
    /// Admit, counting in this process's memory until the store answers again (the default).
    #[default]
    FailOpen,
    /// Refuse with 503 `governance_unavailable` while the store cannot be reached.
    FailClosed,
}

/// The `governance` section.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GovernanceSettings {
    /// What happens when the store of counters cannot be reached.
    pub on_store_error: StorePolicy,
    /// How long a concurrency slot is held at most should its replica die (it is released at
    /// the request's end otherwise).
    pub slot_lease: Duration,
    /// Teams: budgets shared by the keys that name them.
    pub teams: Vec<TeamConfig>,
    /// The SHA-256 of the key that reads the usage endpoint (`admin_key`), if one is set
    /// (admin JWTs read it too).
    pub admin_key_sha256: Option<[u8; 32]>,
}

/// A team: a budget shared by its virtual keys.
#[derive(Debug, Clone, PartialEq)]
pub struct TeamConfig {
    /// Unique id (for logs, metrics and the usage endpoint).
    pub id: String,
    /// The team's budget.
    pub budget: Option<Budget>,
}

/// How long a budget period lasts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    /// A fixed number of milliseconds (`1h`, `1d`, `1w`, or any `N{s,m,h,d,w}`).
    Millis(u64),
    /// A month (`1M`): a calendar month when aligned, 30 days otherwise.
    Month,
}

impl Period {
    /// The period's length in milliseconds, a month taken as 30 days.
    pub fn millis(self) -> u64 {
        match self {
            Period::Millis(ms) => ms,
            Period::Month => 30 * DAY_MS,
        }
    }
}

const DAY_MS: u64 = 86_400_000;

/// A budget: at most `max_usd` spent per period.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// The most that may be spent in a period, in micro-dollars.
    pub max: u64,
    /// The period.
    pub period: Period,
    /// Periods aligned to the UTC calendar (the hour, midnight, Monday, the 1st) rather than
    /// starting with the first spend after the previous one ended.
    pub calendar: bool,
    /// The text of the period, as configured (for messages).
    pub period_text: &'static str,
}

/// A virtual key's rate limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RateLimit {
    /// Requests per window.
    pub requests: Option<u64>,
    /// Images per window (asked, then settled to the images delivered).
    pub images: Option<u64>,
    /// The window.
    pub per: Duration,
    /// Requests in flight at once.
    pub concurrent: Option<u64>,
}

/// A provider key's own quota (the provider's limit on that key): key selection skips a key
/// whose quota is used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyQuota {
    /// Requests per window.
    pub requests: Option<u64>,
    /// Images per window.
    pub images: Option<u64>,
    /// The window.
    pub per: Duration,
}

/// The `governance` and `teams` sections.
pub(super) fn governance(top: &mut Fields<'_>, env: super::parse::Env<'_>) -> GovernanceSettings {
    let mut settings = GovernanceSettings {
        slot_lease: Duration::from_secs(600),
        ..GovernanceSettings::default()
    };
    if let Some(mut f) = top.opt_obj("governance") {
        settings.on_store_error = match f.opt_str("on_store_error") {
            None | Some("fail_open") => StorePolicy::FailOpen,
            Some("fail_closed") => StorePolicy::FailClosed,
            Some(other) => {
                f.report(
                    "on_store_error",
                    format!("unknown policy '{other}' (allowed: fail_open, fail_closed)"),
                );
                StorePolicy::FailOpen
            }
        };
        settings.slot_lease = f.opt_millis("slot_lease_ms", settings.slot_lease, 1_000..=86_400_000);
        if f.has("admin_key") {
            settings.admin_key_sha256 = f
                .req_secret("admin_key", env)
                .map(|key| super::providers::sha256(key.expose()));
        }
        f.finish();
    }
    let problems = top.problems();
    let items = top.opt_list("teams").unwrap_or_default();
    for (path, value) in items {
        let id_path = format!("{path}.id");
        let mut f = Fields::new(value, path, problems);
        let id = f.req_str("id");
        let budget = f.opt_obj("budget").and_then(budget);
        f.finish();
        if let Some(id) = id {
            if settings.teams.iter().any(|t| t.id == id) {
                problems.add(&id_path, format!("duplicate team id '{id}'"));
            }
            settings.teams.push(TeamConfig {
                id: id.to_string(),
                budget,
            });
        }
    }
    settings
}

/// A `budget: {max_usd, period, calendar}` object.
pub(super) fn budget(mut f: Fields<'_>) -> Option<Budget> {
    let max_value = f.req("max_usd");
    let max = super::pricing::money(&f, "max_usd", max_value);
    let calendar = f.opt_bool("calendar", false);
    let period = f.req_str("period").and_then(|text| match parse_period(text) {
        Ok(period) => Some((period, text)),
        Err(e) => {
            f.report("period", e);
            None
        }
    });
    if let Some((Period::Millis(ms), text)) = period {
        if calendar && ![3_600_000, DAY_MS, 7 * DAY_MS].contains(&ms) {
            f.report(
                "calendar",
                format!("a calendar-aligned budget takes a period of 1h, 1d, 1w or 1M, not {text}"),
            );
        }
    }
    f.finish();
    let (period, text) = period?;
    Some(Budget {
        max: max?,
        period,
        calendar,
        period_text: leak_period(text),
    })
}

/// The periods' texts live as long as the process: a handful of short strings, interned so
/// that a reload does not grow memory.
fn leak_period(text: &str) -> &'static str {
    static SEEN: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
    let mut seen = SEEN.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = seen.iter().find(|s| **s == text) {
        return known;
    }
    let leaked: &'static str = Box::leak(text.to_string().into_boxed_str());
    seen.push(leaked);
    leaked
}

/// A `rate_limit: {requests, images, per, concurrent}` object.
pub(super) fn rate_limit(mut f: Fields<'_>) -> Option<RateLimit> {
    let requests = opt_count(&mut f, "requests");
    let images = opt_count(&mut f, "images");
    let concurrent = opt_count(&mut f, "concurrent");
    let per = window(&mut f, requests.is_some() || images.is_some());
    if requests.is_none() && images.is_none() && concurrent.is_none() {
        f.problems()
            .add(f.path(), "give at least one of requests, images, concurrent");
    }
    f.finish();
    Some(RateLimit {
        requests,
        images,
        per: per?,
        concurrent,
    })
}

/// A provider key's `quota: {requests, images, per}` object.
pub(super) fn key_quota(mut f: Fields<'_>) -> Option<KeyQuota> {
    let requests = opt_count(&mut f, "requests");
    let images = opt_count(&mut f, "images");
    let per = window(&mut f, true);
    if requests.is_none() && images.is_none() {
        f.problems().add(f.path(), "give requests, images or both");
    }
    f.finish();
    Some(KeyQuota {
        requests,
        images,
        per: per?,
    })
}

/// A count of at least 1 under `key`, when given.
fn opt_count(f: &mut Fields<'_>, key: &'static str) -> Option<u64> {
    let value = f.get(key)?;
    f.int_in(key, value, &(1..=u64::from(u32::MAX)))
}

/// The `per` window (`30s`, `1m`, `1h`, `1d`); required when `needed`.
fn window(f: &mut Fields<'_>, needed: bool) -> Option<Duration> {
    let text = if needed {
        f.req_str("per")?
    } else {
        f.opt_str("per").unwrap_or("1m")
    };
    match parse_period(text) {
        Ok(Period::Millis(ms)) => Some(Duration::from_millis(ms)),
        Ok(Period::Month) => {
            f.report("per", "a rate-limit window is at most a week (1w)");
            None
        }
        Err(e) => {
            f.report("per", e);
            None
        }
    }
}

/// Parses `N{s,m,h,d,w}` or `1M` (a month).
pub fn parse_period(text: &str) -> Result<Period, String> {
    let bad = || format!("expected a period such as 30s, 1m, 1h, 1d, 1w or 1M, found '{text}'");
    if text == "1M" {
        return Ok(Period::Month);
    }
    let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits.parse().ok().filter(|n| *n > 0).ok_or_else(bad)?;
    let unit_ms = match unit {
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => DAY_MS,
        "w" => 7 * DAY_MS,
        _ => return Err(bad()),
    };
    n.checked_mul(unit_ms)
        .filter(|ms| *ms <= 366 * DAY_MS)
        .map(Period::Millis)
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn periods() {
        assert_eq!(parse_period("1m"), Ok(Period::Millis(60_000)));
        assert_eq!(parse_period("30s"), Ok(Period::Millis(30_000)));
        assert_eq!(parse_period("1d"), Ok(Period::Millis(DAY_MS)));
        assert_eq!(parse_period("1w"), Ok(Period::Millis(7 * DAY_MS)));
        assert_eq!(parse_period("1M"), Ok(Period::Month));
        for bad in ["", "m", "0m", "1y", "2M", "-1m", "1.5h", "999999999999w"] {
            assert!(parse_period(bad).is_err(), "{bad}");
        }
    }

    const QUOTA_PROVIDER: &str = "providers:\n  - {name: openai, kind: openai, base_url: 'http://127.0.0.1:9', keys: [{name: k, value: x, quota: {images: 5, per: 1m}}]}\n";

    #[test]
    fn governance_sections_parse() {
        let config = ok(&format!(
            "{QUOTA_PROVIDER}governance: {{on_store_error: fail_closed, admin_key: env.VK_1}}\nteams:\n  - {{id: design, budget: {{max_usd: 200, period: 1M, calendar: true}}}}\nvirtual_keys:\n  - {{id: app, key: k1, team: design, budget: {{max_usd: '5.5', period: 1d}}, rate_limit: {{requests: 10, images: 40, per: 1m, concurrent: 4}}}}\n"
        ));
        let g = &config.governance;
        assert_eq!(g.on_store_error, StorePolicy::FailClosed);
        assert_eq!(g.admin_key_sha256, Some(super::super::providers::sha256("vk-1-SECRET")));
        assert_eq!(g.teams[0].budget.unwrap().max, 200_000_000);
        assert_eq!(g.teams[0].budget.unwrap().period, Period::Month);
        let vk = &config.virtual_keys[0];
        assert_eq!(vk.team.as_deref(), Some("design"));
        let budget = vk.budget.unwrap();
        assert_eq!(
            (budget.max, budget.period, budget.calendar),
            (5_500_000, Period::Millis(DAY_MS), false)
        );
        let rl = vk.rate_limit.unwrap();
        assert_eq!(
            (rl.requests, rl.images, rl.concurrent, rl.per),
            (Some(10), Some(40), Some(4), Duration::from_secs(60))
        );
        let quota = config.providers[0].keys[0].quota.unwrap();
        assert_eq!((quota.images, quota.requests), (Some(5), None));
    }

    #[test]
    fn governance_problems_have_paths() {
        for (yaml, path) in [
            ("governance: {on_store_error: maybe}\n", "governance.on_store_error"),
            ("governance: {nope: 1}\n", "governance.nope"),
            (
                "teams: [{id: t, budget: {max_usd: -1, period: 1d}}]\n",
                "teams[0].budget.max_usd",
            ),
            (
                "teams: [{id: t, budget: {max_usd: 1, period: 1y}}]\n",
                "teams[0].budget.period",
            ),
            (
                "teams: [{id: t, budget: {max_usd: 1, period: 2d, calendar: true}}]\n",
                "teams[0].budget.calendar",
            ),
            ("teams: [{id: t}, {id: t}]\n", "teams[1].id"),
            ("virtual_keys: [{id: a, key: k, team: nope}]\n", "virtual_keys[0].team"),
            (
                "virtual_keys: [{id: a, key: k, rate_limit: {requests: 0, per: 1m}}]\n",
                "virtual_keys[0].rate_limit.requests",
            ),
            (
                "virtual_keys: [{id: a, key: k, rate_limit: {requests: 3}}]\n",
                "virtual_keys[0].rate_limit.per",
            ),
            (
                "virtual_keys: [{id: a, key: k, rate_limit: {per: 1m}}]\n",
                "virtual_keys[0].rate_limit",
            ),
            (
                "virtual_keys: [{id: a, key: k, rate_limit: {requests: 1, per: 1M}}]\n",
                "virtual_keys[0].rate_limit.per",
            ),
            (
                "virtual_keys: [{id: a, key: k, budget: {period: 1d}}]\n",
                "virtual_keys[0].budget.max_usd",
            ),
        ] {
            let problems = load(&format!("{QUOTA_PROVIDER}{yaml}")).expect_err(yaml);
            assert!(problems.0.iter().any(|p| p.path == path), "{yaml}: {problems}");
        }
    }
}
