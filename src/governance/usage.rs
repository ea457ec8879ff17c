//! The admin usage endpoint's view of governance: every virtual key's and team's counters as
//! the store has them now, read without changing them.

use super::*;

impl Core {
    /// The usage of every governed key and team (see [`Governance::usage`]).
    pub(super) async fn usage(&self, now: u64) -> Result<serde_json::Value, GatewayError> {
        use serde_json::json;
        let mut out_keys = Vec::new();
        for (vk, enabled) in &self.all_keys {
            let Some(rules) = self.keys.get(vk) else {
                // No limits: nothing is counted for it.
                out_keys.push(json!({"id": vk, "enabled": enabled, "governed": false}));
                continue;
            };
            let mut entry = json!({"id": vk, "enabled": enabled, "governed": true, "team": rules.team});
            if let Some(budget) = &rules.budget {
                let key = format!("vk:{vk}:usd");
                entry["budget"] = self.budget_usage(&key, budget, now).await?;
            }
            if let Some(rate) = &rules.rate {
                let mut limits = json!({"per": window::period_text(rate.per)});
                for (what, limit) in [(Limit::Requests, rate.requests), (Limit::Images, rate.images)] {
                    if let Some(limit) = limit {
                        let key = format!("vk:{vk}:{}", what.label());
                        let counter = self.read(&key, rate_window(rate.per, limit), now).await?;
                        limits[what.label()] = json!({
                            "limit": limit,
                            "used": counter.used,
                            "remaining": limit.saturating_sub(counter.used),
                            "resets_at": (counter.used > 0).then(|| rfc3339(counter.resets_at)),
                        });
                    }
                }
                if let Some(concurrent) = rate.concurrent {
                    limits["concurrent"] = json!({"limit": concurrent});
                }
                entry["rate_limit"] = limits;
            }
            out_keys.push(entry);
        }
        let mut teams: Vec<(&String, &Budget)> = self.teams.iter().collect();
        teams.sort_by(|a, b| a.0.cmp(b.0));
        let mut out_teams = Vec::new();
        for (team, budget) in teams {
            let key = format!("team:{team}:usd");
            out_teams.push(json!({"id": team, "budget": self.budget_usage(&key, budget, now).await?}));
        }
        Ok(json!({
            "object": "governance.usage",
            "store": if now < self.stores.skip_until.load(Ordering::Relaxed) { "local" } else { "shared" },
            "virtual_keys": out_keys,
            "teams": out_teams,
        }))
    }

    async fn budget_usage(&self, key: &str, budget: &Budget, now: u64) -> Result<serde_json::Value, GatewayError> {
        let counter = self.read(key, budget_window(budget, now), now).await?;
        Ok(serde_json::json!({
            "max_usd": usd(budget.max),
            "period": budget.period_text,
            "calendar": budget.calendar,
            "spent_usd": usd(counter.used),
            "remaining_usd": usd(budget.max.saturating_sub(counter.used)),
            "resets_at": (budget.calendar || counter.used > 0).then(|| rfc3339(counter.resets_at)),
        }))
    }

    async fn read(&self, key: &str, window: Window, now: u64) -> Result<CounterState, GatewayError> {
        let read = |local: bool| async move {
            let got: StateResult<Vec<CounterState>> = self.counters(local).read(&[(key, window)], now).await;
            got
        };
        let local = !self.shared_usable(now)?;
        let got = match read(local).await {
            Ok(got) => got,
            Err(e) => {
                self.store_failed(&e, now)?;
                read(true).await.map_err(|e| GatewayError::Internal(e.to_string()))?
            }
        };
        got.into_iter()
            .next()
            .ok_or_else(|| GatewayError::Internal("governance: the store read no counter".into()))
    }
}

/// Micro-dollars as a JSON number of USD (its shortest exact decimal).
fn usd(micros: u64) -> f64 {
    Usd(micros).to_string().parse().unwrap_or(0.0)
}

/// Unix milliseconds as RFC 3339 (UTC).
fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)).to_string()
}
