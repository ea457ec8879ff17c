//! Governance: the budgets and rate limits of virtual keys, the budgets of teams and the
//! quotas of provider keys, enforced on the [`Counters`] of the state layer (atomic in Redis
//! across replicas; persisted by the embedded store).
//!
//! [`Governance`] is the gateway's [`Admission`]: built with each config (its limits are the
//! config's), around the plug-in admission of [`crate::server::Options`], which it asks after
//! its own checks. What it decides and when:
//! - **per request** ([`Admission::admit_request`], before the body is read; for an async job at
//!   submission): a slot of the key's `concurrent` requests, one of its `requests` per window,
//!   and whether the key's or its team's budget is already spent (402 then). The slot is given
//!   back when the request is over ([`Admission::finish_request`]).
//! - **per attempt** ([`Admission::admit`], before each candidate goes upstream): the key's and
//!   team's budgets reserve the attempt's worst-case cost (its model's dearest price for the
//!   images asked), and the key's `images` per window reserve the images asked. The attempt's
//!   settlement moves both to what it delivered: the answer's real cost and images, or nothing
//!   for a failure, so a request that fell back is charged once, for the answer it got.
//! - **per provider key** ([`Governance::take_key_quota`], when a key is chosen): a key whose
//!   own quota is used up is skipped, and a provider whose keys all are is a failure the
//!   request falls back from.
//!
//! Budgets allow a request while the spend is below the limit, so concurrent requests overspend
//! by at most one request's cost; counts (requests, images, slots) are held exactly. When the
//! store cannot be reached, `governance.on_store_error` applies: `fail_open` counts in this
//! process's memory for a second before trying the store again, `fail_closed` refuses with 503;
//! both are logged and counted.

mod usage;
mod window;

pub use window::{budget_window, period_text, rate_window};

use crate::admission::{Admission, AdmissionRequest, Admit, Finish, Permit, RequestAdmission, Settlement};
use crate::config::{Budget, Config, KeyQuota, ProviderKind, RateLimit, StorePolicy};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::pricing::{PriceQuery, PriceTable, Usd};
use crate::state::counters::{Check, CounterState, Counters, MemoryCounters, Take, Window};
use crate::state::{now_ms, StateResult};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// The counters governance keeps, for the process's lifetime (a reload keeps them).
pub struct GovernanceStores {
    /// The store's counters (embedded or Redis).
    pub shared: Arc<dyn Counters>,
    /// Counters in this process, while the store cannot be reached (`fail_open`).
    pub local: MemoryCounters,
    /// Until when (Unix ms) the store is not asked again after a failure.
    skip_until: AtomicU64,
    /// Holders of concurrency slots are `{instance}:{n}`: unique across replicas.
    instance: String,
    holders: AtomicU64,
}

impl GovernanceStores {
    /// The stores around `shared`.
    pub fn new(shared: Arc<dyn Counters>) -> GovernanceStores {
        GovernanceStores {
            shared,
            local: MemoryCounters::default(),
            skip_until: AtomicU64::new(0),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            holders: AtomicU64::new(0),
        }
    }
}

/// How long the store is left alone after a failed call, under `fail_open`.
const SKIP_AFTER_FAILURE_MS: u64 = 1_000;

/// Permits of governance's own carry this bit; the plug-in admission's never do.
const OURS: u64 = 1 << 63;

/// A virtual key's limits.
#[derive(Debug, Clone)]
struct KeyRules {
    budget: Option<Budget>,
    team: Option<String>,
    rate: Option<RateLimit>,
}

/// Which limit a counter is, for refusals and settlements.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Limit {
    Requests,
    Images,
    /// A budget: the key's (`team: false`) or its team's.
    Budget {
        team: bool,
    },
}

impl Limit {
    fn label(self) -> &'static str {
        match self {
            Limit::Requests => "requests",
            Limit::Images => "images",
            Limit::Budget { .. } => "budget",
        }
    }
}

/// One counter a decision takes from.
#[derive(Debug, Clone)]
struct Planned {
    key: String,
    window: Window,
    amount: u64,
    limit: u64,
    check: Check,
    what: Limit,
    /// The key's or team's id.
    owner: String,
    /// The window as configured (`1m`, `1d`), for messages.
    per: String,
    /// The reservation's lease ([`Take::lease`]): `None` counts the amount for good.
    lease: Option<u64>,
}

/// What a permit of governance's holds until it is handed back.
enum Held {
    Request { inner: Permit, slot: Option<Slot> },
    Attempt { inner: Permit, reserved: Reserved },
}

/// What an admitted attempt took from its counters, until it is settled.
struct Reserved {
    virtual_key: String,
    taken: Vec<(Planned, CounterState)>,
    /// The holder of its reservations.
    holder: String,
    /// Taken from this process's counters (the store was unreachable, `fail_open`).
    local: bool,
}

/// A concurrency slot held by a request.
struct Slot {
    key: String,
    holder: String,
    local: bool,
}

/// The admission of budgets, rate limits and quotas (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct Governance {
    core: Arc<Core>,
}

struct Core {
    keys: HashMap<String, Arc<KeyRules>>,
    /// Every virtual key's id, in config order, for the usage endpoint.
    all_keys: Vec<(String, bool)>,
    teams: HashMap<String, Budget>,
    kinds: HashMap<String, ProviderKind>,
    pricing: Arc<PriceTable>,
    policy: StorePolicy,
    slot_lease_ms: u64,
    stores: Arc<GovernanceStores>,
    metrics: Arc<Metrics>,
    inner: Arc<dyn Admission>,
    held: Mutex<HashMap<u64, Held>>,
    next: AtomicU64,
}

impl Governance {
    /// The governance of `config`, on `stores`, asking `inner` after its own checks.
    pub fn new(
        config: &Config,
        stores: Arc<GovernanceStores>,
        metrics: Arc<Metrics>,
        inner: Arc<dyn Admission>,
    ) -> Governance {
        let keys = config
            .virtual_keys
            .iter()
            .filter(|vk| vk.budget.is_some() || vk.rate_limit.is_some() || vk.team.is_some())
            .map(|vk| {
                let rules = KeyRules {
                    budget: vk.budget,
                    team: vk.team.clone(),
                    rate: vk.rate_limit,
                };
                (vk.id.clone(), Arc::new(rules))
            })
            .collect();
        let all_keys = config
            .virtual_keys
            .iter()
            .map(|vk| (vk.id.clone(), vk.enabled))
            .collect();
        let teams = config
            .governance
            .teams
            .iter()
            .filter_map(|t| Some((t.id.clone(), t.budget?)))
            .collect();
        let kinds = config.providers.iter().map(|p| (p.name.clone(), p.kind)).collect();
        Governance {
            core: Arc::new(Core {
                keys,
                all_keys,
                teams,
                kinds,
                pricing: config.pricing.clone(),
                policy: config.governance.on_store_error,
                slot_lease_ms: u64::try_from(config.governance.slot_lease.as_millis()).unwrap_or(u64::MAX),
                stores,
                metrics,
                inner,
                held: Mutex::new(HashMap::new()),
                next: AtomicU64::new(0),
            }),
        }
    }

    /// Takes one request (and `images` images) from the quota of provider key `key` of
    /// `provider`, when the key is chosen for an attempt: `Ok(false)` when its quota is used
    /// up (the caller chooses another key), an error only when the store cannot be reached
    /// and the policy is `fail_closed`.
    pub async fn take_key_quota(
        &self,
        provider: &str,
        key: &str,
        quota: &KeyQuota,
        images: u32,
    ) -> Result<bool, GatewayError> {
        let per = window::period_text(quota.per);
        let mut plan = Vec::new();
        let mut add = |what: Limit, limit: Option<u64>, amount: u64| {
            if let Some(limit) = limit {
                plan.push(Planned {
                    key: format!("pk:{provider}:{key}:{}", what.label()),
                    window: rate_window(quota.per, limit),
                    amount,
                    limit,
                    check: Check::Fits,
                    what,
                    owner: format!("{provider}/{key}"),
                    per: per.clone(),
                    lease: None,
                });
            }
        };
        add(Limit::Requests, quota.requests, 1);
        add(Limit::Images, quota.images, u64::from(images));
        let holder = self.core.holder();
        let (taken, _) = self.core.take(&plan, &holder, now_ms()).await?;
        if let Some(i) = taken.refused {
            let what = plan.get(i).map_or("requests", |p| p.what.label());
            self.core.metrics.governance.refused("provider_key", what);
            return Ok(false);
        }
        Ok(true)
    }

    /// Removes the counters whose window ended before `now`, from the store (the embedded
    /// one; Redis expires its own) and from this process's fallback counters. Run by the
    /// cleaner.
    pub async fn remove_ended(&self, now: u64) {
        let stores = &self.core.stores;
        for (name, counters) in [
            ("store", stores.shared.as_ref()),
            ("local", &stores.local as &dyn Counters),
        ] {
            match counters.remove_ended(now).await {
                Ok(0) => {}
                Ok(n) => log::debug!("governance: {n} ended counters removed ({name})"),
                Err(e) => log::debug!("governance: ended counters not removed ({name}): {e}"),
            }
        }
    }

    /// Each governed virtual key's and team's usage, remaining budget and limits, as the
    /// store has them now (for the admin usage endpoint).
    pub async fn usage(&self) -> Result<serde_json::Value, GatewayError> {
        self.core.usage(now_ms()).await
    }
}

impl Core {
    /// Runs `takes` on the store, or as the policy says when it cannot be reached; also says
    /// whether the local counters were used.
    async fn take(
        &self,
        plan: &[Planned],
        holder: &str,
        now: u64,
    ) -> Result<(crate::state::counters::Taken, bool), GatewayError> {
        let takes: Vec<Take<'_>> = plan
            .iter()
            .map(|p| Take {
                key: &p.key,
                window: p.window,
                amount: p.amount,
                limit: p.limit,
                check: p.check,
                lease: p.lease,
            })
            .collect();
        let shared = self.shared_usable(now)?;
        if shared {
            match self.stores.shared.take(&takes, holder, now).await {
                Ok(taken) => {
                    self.store_answered();
                    return Ok((taken, false));
                }
                Err(e) => self.store_failed(&e, now)?,
            }
        }
        let taken = self
            .stores
            .local
            .take(&takes, holder, now)
            .await
            .map_err(|e| GatewayError::Internal(e.to_string()))?;
        Ok((taken, true))
    }

    /// Whether the store is to be asked now: `false` while a recent failure is remembered
    /// (`fail_open`: local counters), an error under `fail_closed`.
    fn shared_usable(&self, now: u64) -> Result<bool, GatewayError> {
        if now >= self.stores.skip_until.load(Ordering::Relaxed) {
            return Ok(true);
        }
        match self.policy {
            StorePolicy::FailOpen => Ok(false),
            StorePolicy::FailClosed => {
                self.metrics.governance.store_error("fail_closed");
                Err(GatewayError::GovernanceUnavailable)
            }
        }
    }

    /// After a failed call to the store: log and count it, remember it for a second, and
    /// apply the policy.
    fn store_failed(&self, e: &crate::state::StateError, now: u64) -> Result<(), GatewayError> {
        let before = self
            .stores
            .skip_until
            .swap(now.saturating_add(SKIP_AFTER_FAILURE_MS), Ordering::Relaxed);
        match self.policy {
            StorePolicy::FailOpen => {
                if before == 0 {
                    log::warn!("governance: the counters' store failed ({e}); counting in this process (fail_open) until it answers again");
                }
                self.metrics.governance.store_error("fail_open");
                Ok(())
            }
            StorePolicy::FailClosed => {
                if before == 0 {
                    log::error!("governance: the counters' store failed ({e}); refusing governed requests (fail_closed) until it answers again");
                }
                self.metrics.governance.store_error("fail_closed");
                Err(GatewayError::GovernanceUnavailable)
            }
        }
    }

    fn store_answered(&self) {
        if self.stores.skip_until.swap(0, Ordering::Relaxed) != 0 {
            log::info!("governance: the counters' store answers again");
        }
    }

    fn counters(&self, local: bool) -> &dyn Counters {
        if local {
            &self.stores.local
        } else {
            self.stores.shared.as_ref()
        }
    }

    fn hold(&self, held: Held) -> Permit {
        let token = OURS | self.next.fetch_add(1, Ordering::Relaxed);
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(token, held);
        Permit { token }
    }

    fn take_held(&self, permit: Permit) -> Option<Held> {
        if permit.token & OURS == 0 {
            return None;
        }
        self.held
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&permit.token)
    }

    /// The budgets of key `vk` (`rules`) as takes of `amount` (0: only "not spent yet").
    fn budget_takes(&self, vk: &str, rules: &KeyRules, amount: u64, now: u64, plan: &mut Vec<Planned>) {
        let team = rules.team.as_ref().and_then(|t| Some((t.as_str(), self.teams.get(t)?)));
        let budgets = rules
            .budget
            .as_ref()
            .map(|b| (vk, false, b))
            .into_iter()
            .chain(team.map(|(t, b)| (t, true, b)));
        for (owner, is_team, budget) in budgets {
            let scope = if is_team { "team" } else { "vk" };
            plan.push(Planned {
                key: format!("{scope}:{owner}:usd"),
                window: budget_window(budget, now),
                amount,
                limit: budget.max,
                check: Check::Below,
                what: Limit::Budget { team: is_team },
                owner: owner.to_string(),
                per: budget.period_text.to_string(),
                lease: Some(self.slot_lease_ms),
            });
        }
    }

    /// A rate-limit take of key `vk`.
    fn rate_take(vk: &str, rate: &RateLimit, what: Limit, limit: u64, amount: u64) -> Planned {
        Planned {
            key: format!("vk:{vk}:{}", what.label()),
            window: rate_window(rate.per, limit),
            amount,
            limit,
            check: Check::Fits,
            what,
            owner: vk.to_string(),
            per: window::period_text(rate.per),
            lease: None,
        }
    }

    /// The refusal of `planned` whose counter is `counter`, counted in the metrics.
    fn refusal(&self, planned: &Planned, counter: &CounterState, now: u64) -> GatewayError {
        let scope = match planned.what {
            Limit::Budget { team: true } => "team",
            _ => "virtual_key",
        };
        self.metrics.governance.refused(scope, planned.what.label());
        match planned.what {
            Limit::Budget { team } => GatewayError::BudgetExceeded {
                scope: if team { "Team" } else { "VK" },
                spent: counter.used,
                max: planned.limit,
            },
            Limit::Requests | Limit::Images => GatewayError::RateLimited {
                message: format!(
                    "rate limit violated for {}: [{} limit exceeded ({}/{}, resets every {})]",
                    planned.owner,
                    if planned.what == Limit::Requests {
                        "request"
                    } else {
                        "image"
                    },
                    counter.used,
                    planned.limit,
                    planned.per
                ),
                limits: RateHeaders {
                    what: planned.what.label(),
                    limit: planned.limit,
                    remaining: planned.limit.saturating_sub(counter.used),
                    reset_ms: counter.resets_at.saturating_sub(now),
                },
            },
        }
    }

    /// Sets the remaining-budget gauges from counters just seen.
    fn note_remaining(&self, taken: &[(Planned, CounterState)], settled_cost: Option<u64>) {
        for (planned, counter) in taken {
            if let Limit::Budget { team } = planned.what {
                let used = match settled_cost {
                    Some(cost) => counter.used.saturating_sub(planned.amount).saturating_add(cost),
                    None => counter.used,
                };
                let scope = if team { "team" } else { "virtual_key" };
                self.metrics
                    .governance
                    .remaining(scope, &planned.owner, planned.limit.saturating_sub(used));
            }
        }
    }

    /// The request-level admission of key `vk` (see the module docs).
    async fn open_request(&self, vk: &str, rules: &KeyRules, now: u64) -> Result<Option<Slot>, GatewayError> {
        let slot = match rules.rate.and_then(|r| r.concurrent) {
            Some(limit) => Some(self.acquire(vk, limit, now).await?),
            None => None,
        };
        let mut plan = Vec::new();
        if let Some((rate, limit)) = rules.rate.as_ref().and_then(|r| Some((r, r.requests?))) {
            plan.push(Core::rate_take(vk, rate, Limit::Requests, limit, 1));
        }
        self.budget_takes(vk, rules, 0, now, &mut plan);
        if plan.is_empty() {
            return Ok(slot);
        }
        let refused = match self.take(&plan, &self.holder(), now).await {
            Ok((taken, _)) => match taken.refused {
                Some(i) => plan
                    .get(i)
                    .zip(taken.counters.get(i))
                    .map(|(p, c)| self.refusal(p, c, now)),
                None => None,
            },
            Err(e) => Some(e),
        };
        match refused {
            Some(e) => {
                if let Some(slot) = slot {
                    self.release(slot).await;
                }
                Err(e)
            }
            None => Ok(slot),
        }
    }

    /// Takes a concurrency slot of key `vk` (at most `limit`).
    async fn acquire(&self, vk: &str, limit: u64, now: u64) -> Result<Slot, GatewayError> {
        let key = format!("vk:{vk}:concurrent");
        let holder = self.holder();
        let mut local = !self.shared_usable(now)?;
        let mut acquired = None;
        if !local {
            match self
                .stores
                .shared
                .acquire(&key, &holder, limit, self.slot_lease_ms, now)
                .await
            {
                Ok(got) => {
                    self.store_answered();
                    acquired = Some(got);
                }
                Err(e) => {
                    self.store_failed(&e, now)?;
                    local = true;
                }
            }
        }
        let got = match acquired {
            Some(got) => got,
            None => self
                .stores
                .local
                .acquire(&key, &holder, limit, self.slot_lease_ms, now)
                .await
                .map_err(|e| GatewayError::Internal(e.to_string()))?,
        };
        if !got {
            self.metrics.governance.refused("virtual_key", "concurrent");
            return Err(GatewayError::RateLimited {
                message: format!("rate limit violated for {vk}: [concurrent request limit exceeded ({limit}/{limit})]"),
                limits: RateHeaders {
                    what: "concurrent",
                    limit,
                    remaining: 0,
                    reset_ms: 1_000,
                },
            });
        }
        Ok(Slot { key, holder, local })
    }

    /// A new holder name, unique across the replicas (the instance id and a count).
    fn holder(&self) -> String {
        format!(
            "{}:{}",
            self.stores.instance,
            self.stores.holders.fetch_add(1, Ordering::Relaxed)
        )
    }

    async fn release(&self, slot: Slot) {
        if let Err(e) = self.counters(slot.local).release(&slot.key, &slot.holder).await {
            log::warn!("governance: cannot release a concurrency slot of {}: {e}", slot.key);
        }
    }

    /// The attempt-level admission of key `vk` for `request` (see the module docs).
    async fn open_attempt(&self, vk: &str, rules: &KeyRules, ask: &Ask, now: u64) -> Result<Reserved, GatewayError> {
        let mut plan = Vec::new();
        if let Some((rate, limit)) = rules.rate.as_ref().and_then(|r| Some((r, r.images?))) {
            plan.push(Planned {
                lease: Some(self.slot_lease_ms),
                ..Core::rate_take(vk, rate, Limit::Images, limit, u64::from(ask.n))
            });
        }
        self.budget_takes(vk, rules, ask.worst, now, &mut plan);
        let holder = self.holder();
        let (taken, local) = self.take(&plan, &holder, now).await?;
        if let Some(i) = taken.refused {
            let refusal = plan
                .get(i)
                .zip(taken.counters.get(i))
                .map(|(p, c)| self.refusal(p, c, now));
            return Err(refusal.unwrap_or_else(|| GatewayError::Internal("governance: bad counters".into())));
        }
        let taken: Vec<(Planned, CounterState)> = plan.into_iter().zip(taken.counters).collect();
        self.note_remaining(&taken, None);
        Ok(Reserved {
            virtual_key: vk.to_string(),
            taken,
            holder,
            local,
        })
    }

    /// Settles an attempt's reservations (held by `holder`) to what it delivered (`images`,
    /// `cost`): a budget's always (its reservation would otherwise lapse with its lease), the
    /// images' entry when it differs.
    async fn settle_attempt(&self, reserved: Reserved, images: u32, cost: u64) {
        let Reserved {
            taken, holder, local, ..
        } = reserved;
        let now = now_ms();
        for (planned, counter) in &taken {
            let delivered = match planned.what {
                // A sliding window's entry already counts what was asked; a reservation
                // (first-use windows) must be settled or it lapses.
                Limit::Images
                    if u64::from(images) == planned.amount && matches!(planned.window, Window::Sliding { .. }) =>
                {
                    continue
                }
                Limit::Images => u64::from(images),
                Limit::Budget { .. } => cost,
                Limit::Requests => continue,
            };
            let result = self
                .counters(local)
                .settle(&planned.key, counter.window_start, &holder, delivered, now)
                .await;
            if let Err(e) = result {
                log::warn!("governance: cannot settle {} to {delivered}: {e}", planned.key);
            }
        }
        self.note_remaining(&taken, Some(cost));
    }
}

/// What an attempt asks of the budgets and image limits.
struct Ask {
    /// Images asked.
    n: u32,
    /// The worst-case cost of the attempt, micro-dollars.
    worst: u64,
}

/// A rate-limit refusal's numbers, for the `x-ratelimit-*` and `Retry-After` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateHeaders {
    /// What is limited: `requests`, `images`, `concurrent`.
    pub what: &'static str,
    /// The limit.
    pub limit: u64,
    /// What remains of it now.
    pub remaining: u64,
    /// Milliseconds until it resets.
    pub reset_ms: u64,
}

impl RateHeaders {
    /// `Retry-After`, in whole seconds (at least 1).
    pub fn retry_after_secs(&self) -> u64 {
        self.reset_ms.div_ceil(1000).max(1)
    }
}

impl Admission for Governance {
    fn admit_request(&self, request: &RequestAdmission<'_>) -> Admit {
        let core = &self.core;
        let Some((vk, rules)) = request
            .virtual_key
            .and_then(|vk| core.keys.get(vk).map(|rules| (vk.to_string(), rules.clone())))
        else {
            return core.inner.admit_request(request);
        };
        let inner = core.inner.admit_request(request);
        let core = self.core.clone();
        Admit::Later(Box::pin(async move {
            let inner = inner.decide().await?;
            match core.open_request(&vk, &rules, now_ms()).await {
                Ok(slot) => Ok(core.hold(Held::Request { inner, slot })),
                Err(e) => {
                    core.inner.finish_request(inner).wait().await;
                    Err(e)
                }
            }
        }))
    }

    fn finish_request(&self, permit: Permit) -> Finish {
        let core = &self.core;
        match core.take_held(permit) {
            Some(Held::Request { inner, slot }) => {
                let inner = core.inner.finish_request(inner);
                match slot {
                    Some(slot) => {
                        let core = self.core.clone();
                        Finish::Later(Box::pin(async move {
                            core.release(slot).await;
                            inner.wait().await;
                        }))
                    }
                    None => inner,
                }
            }
            Some(Held::Attempt { inner, .. }) => core.inner.finish_request(inner),
            None => core.inner.finish_request(permit),
        }
    }

    fn admit(&self, request: &AdmissionRequest<'_>) -> Admit {
        let core = &self.core;
        let governed = request
            .virtual_key
            .and_then(|vk| core.keys.get(vk).map(|rules| (vk.to_string(), rules.clone())))
            .filter(|(_, r)| r.budget.is_some() || r.team.is_some() || r.rate.is_some_and(|r| r.images.is_some()));
        let Some((vk, rules)) = governed else {
            return core.inner.admit(request);
        };
        let worst = match core.kinds.get(request.provider) {
            Some(kind) => core.pricing.worst_case(&PriceQuery {
                kind: *kind,
                model: request.model,
                images: request.n,
                size: request.size,
                quality: request.quality,
                usage: None,
            }),
            None => core.pricing.default.saturating_mul(u64::from(request.n)),
        };
        let ask = Ask { n: request.n, worst };
        let inner = core.inner.admit(request);
        let core = self.core.clone();
        Admit::Later(Box::pin(async move {
            let reserved = core.open_attempt(&vk, &rules, &ask, now_ms()).await?;
            match inner.decide().await {
                Ok(inner) => Ok(core.hold(Held::Attempt { inner, reserved })),
                Err(e) => {
                    core.settle_attempt(reserved, 0, 0).await;
                    Err(e)
                }
            }
        }))
    }

    fn settle(&self, permit: Permit, settlement: &Settlement<'_>) -> Finish {
        let core = &self.core;
        match core.take_held(permit) {
            Some(Held::Attempt { inner, reserved }) => {
                let cost = settlement.cost.unwrap_or(0);
                if cost > 0 {
                    core.metrics
                        .governance
                        .spent(&reserved.virtual_key, settlement.provider, cost);
                }
                let inner = core.inner.settle(inner, settlement);
                let images = settlement.images;
                let core = self.core.clone();
                Finish::Later(Box::pin(async move {
                    core.settle_attempt(reserved, images, cost).await;
                    inner.wait().await;
                }))
            }
            Some(Held::Request { inner, .. }) => core.inner.settle(inner, settlement),
            None => {
                if let (Some(vk), Some(cost)) = (settlement.virtual_key, settlement.cost.filter(|c| *c > 0)) {
                    core.metrics.governance.spent(vk, settlement.provider, cost);
                }
                core.inner.settle(permit, settlement)
            }
        }
    }

    fn wants_usage(&self) -> bool {
        self.core.inner.wants_usage()
    }
}

#[cfg(test)]
mod tests;
