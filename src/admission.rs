//! The admit step: runs once per attempt (the primary's, each retry's, each fallback's), after
//! the candidate passed its checks (the caller's key, the route, the capabilities) and before
//! any byte goes upstream. An [`Admission`] may refuse the attempt with a [`GatewayError`]
//! (answered in Bifrost's shape; the request's fallbacks, if any, are admitted on their own)
//! or admit it with a [`Permit`], which the gateway settles exactly once with the attempt's
//! [`Settlement`] when the attempt is over, whatever its end.
//!
//! This is where budgets, rate limits and job queues plug in. The gateway's default is
//! [`AdmitAll`], which costs a virtual call and nothing else: the request and the settlement
//! are plain values borrowed from the attempt (no allocation), and an admission decided at once
//! is returned as a value ([`Admit::Now`]); only one that must wait (a shared store) boxes a
//! future ([`Admit::Later`]).
//!
//! Plain values only: nothing here knows Pingora.

use crate::error::GatewayError;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

/// Which attempt of a request is asking.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AttemptIndex {
    /// The candidate: 0 the primary (the form's `model`), i ≥ 1 the i-th fallback.
    pub candidate: usize,
    /// The try at that candidate: 0 the first, r ≥ 1 the r-th retry.
    pub retry: u32,
}

/// What an attempt asks for, as known when it is about to go upstream.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionRequest<'a> {
    /// The request's id (`x-request-id`, or the one the gateway made).
    pub request_id: &'a str,
    /// The caller's virtual key id; `None` for anonymous use.
    pub virtual_key: Option<&'a str>,
    /// The candidate's provider, as configured.
    pub provider: &'a str,
    /// The candidate's bare model.
    pub model: &'a str,
    /// Images asked for (`n`, 1 when absent or not yet known).
    pub n: u32,
    /// `size`, when given.
    pub size: Option<&'a str>,
    /// `quality`, when given.
    pub quality: Option<&'a str>,
    /// Whether an event stream was asked for.
    pub stream: bool,
    /// Which attempt this is.
    pub attempt: AttemptIndex,
    /// False for the first attempt of a streamed upload, admitted when `model` arrives, while
    /// the client is still sending: the fields after `model` (`n`, `size`, `quality`,
    /// `stream`) are not known yet and show their defaults. The settlement has the final
    /// numbers.
    pub form_complete: bool,
}

/// A request as known when it is admitted, before its body is read: who sends it. Asked once
/// per request ([`Admission::admit_request`]): the request-level limits (requests per window,
/// requests in flight, a budget already spent) refuse it here, before any upload is read.
#[derive(Debug, Clone, Copy)]
pub struct RequestAdmission<'a> {
    /// The request's id.
    pub request_id: &'a str,
    /// The caller's virtual key id; `None` for anonymous use and admin tokens.
    pub virtual_key: Option<&'a str>,
}

/// An admitted attempt, to hand back to [`Admission::settle`]. `token` is the admission's own
/// (a reservation id, a slot number); the gateway only carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    /// The admission's handle on this attempt.
    pub token: u64,
}

/// Token counts, when the provider reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Input tokens.
    pub input_tokens: u64,
    /// Output tokens.
    pub output_tokens: u64,
    /// Total tokens.
    pub total_tokens: u64,
}

/// How an admitted attempt ended, given to [`Admission::settle`] once.
#[derive(Debug, Clone, Copy)]
pub struct Settlement<'a> {
    /// The attempt's status: 200 for an answer (a stream that ended in an error event carries
    /// that error's status), the error's status otherwise (a provider's own, 502/504 for an
    /// unreachable or slow one, 499 when the client left).
    pub status: u16,
    /// The error's code (`provider_error`, `upstream_timeout`…); `None` for a success.
    pub reason: Option<&'static str>,
    /// Images delivered: the `n` asked for when the attempt answered, 0 otherwise.
    pub images: u32,
    /// Token usage, when the answer reported it (OpenAI's `usage`) and
    /// [`Admission::wants_usage`] asked for it; `None` otherwise (and for streamed answers).
    pub usage: Option<Usage>,
    /// The provider tried.
    pub provider: &'a str,
    /// The bare model tried.
    pub model: &'a str,
    /// The name of the provider key used; `None` when the attempt ended before one was chosen.
    pub key: Option<&'a str>,
    /// Time from admission to settlement.
    pub elapsed: Duration,
    /// The caller's virtual key id, as admitted.
    pub virtual_key: Option<&'a str>,
    /// What the attempt's answer costs (micro-dollars, the price table's), when it delivered
    /// images; `None` otherwise (a failed attempt costs nothing).
    pub cost: Option<u64>,
}

/// An admission decision that may need to wait.
pub enum Admit {
    /// Decided at once (no allocation).
    Now(Result<Permit, GatewayError>),
    /// Decided once the future resolves (a shared store, a queue).
    Later(Pin<Box<dyn Future<Output = Result<Permit, GatewayError>> + Send>>),
}

impl Admit {
    /// The decision, waiting for it if it is not decided yet.
    pub async fn decide(self) -> Result<Permit, GatewayError> {
        match self {
            Admit::Now(decision) => decision,
            Admit::Later(decision) => decision.await,
        }
    }
}

/// What is left of a settlement or of a request's end: nothing, or I/O the gateway awaits
/// before it answers (so that the caller's next request sees it: a slot given back, a
/// reservation settled), or sends on (spawns) when the request was dropped.
#[must_use = "a settlement's rest must be awaited (`wait`) or sent on (`send_on`)"]
pub enum Finish {
    /// Nothing left (no allocation).
    Done,
    /// This future completes it.
    Later(Pin<Box<dyn Future<Output = ()> + Send>>),
}

impl Finish {
    /// Completes it: on a task of its own, so that it completes even if the waiting request
    /// is dropped meanwhile.
    pub async fn wait(self) {
        if let Finish::Later(rest) = self {
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    let _ = runtime.spawn(rest).await;
                }
                Err(_) => rest.await,
            }
        }
    }

    /// Completes it on the current runtime without waiting (a request dropped mid-way); the
    /// rest is dropped when there is no runtime.
    pub fn send_on(self) {
        if let Finish::Later(rest) = self {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                runtime.spawn(rest);
            }
        }
    }
}

/// The admit step of the request chain (see the module docs). Implementations are shared by
/// every request (`Send + Sync`) and must not block: a decision that needs I/O is returned as
/// [`Admit::Later`], and a settlement that needs I/O as [`Finish::Later`].
pub trait Admission: Send + Sync {
    /// Runs once per attempt, before the upstream call: admit with a permit or refuse with the
    /// error the client (or the fallback list) gets.
    fn admit(&self, request: &AdmissionRequest<'_>) -> Admit;

    /// Runs once per admitted attempt, when it is over, with its outcome; the gateway awaits
    /// what it returns before the attempt's answer goes out.
    fn settle(&self, permit: Permit, settlement: &Settlement<'_>) -> Finish;

    /// Runs once per request, after authentication and before its body is read (for an async
    /// job: at submission; its run is not admitted again). A refusal is the request's answer.
    /// The permit is handed back to [`Admission::finish_request`] once the request is over.
    fn admit_request(&self, _request: &RequestAdmission<'_>) -> Admit {
        Admit::Now(Ok(Permit { token: 0 }))
    }

    /// Runs once per admitted request, when it is over (before its answer goes out; sent on
    /// when the request was dropped).
    fn finish_request(&self, _permit: Permit) -> Finish {
        Finish::Done
    }

    /// Whether settlements should carry the answer's token usage ([`Settlement::usage`]): its
    /// members are then read from the answer (a small search), which the default spares.
    fn wants_usage(&self) -> bool {
        false
    }
}

/// The default admission: every attempt is admitted, nothing is kept.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdmitAll;

impl Admission for AdmitAll {
    fn admit(&self, _request: &AdmissionRequest<'_>) -> Admit {
        Admit::Now(Ok(Permit { token: 0 }))
    }

    fn settle(&self, _permit: Permit, _settlement: &Settlement<'_>) -> Finish {
        Finish::Done
    }
}

/// An admission for tests: records every call, and refuses (with 429 `rate_limited`) every
/// attempt at a given model, or every attempt after the first `admit_first` admitted ones.
#[derive(Debug, Default)]
pub struct RecordingAdmission {
    /// Attempts at this bare model are refused.
    refuse_model: Option<String>,
    /// Once this many attempts were admitted, the next ones are refused.
    admit_first: Option<usize>,
    calls: std::sync::Mutex<Recorded>,
}

/// What a [`RecordingAdmission`] saw.
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// Every admission request, in order, with whether it was admitted.
    pub admits: Vec<AdmitCall>,
    /// Every settlement, in order.
    pub settles: Vec<SettleCall>,
}

/// One [`Admission::admit`] call, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmitCall {
    /// [`AdmissionRequest::virtual_key`].
    pub virtual_key: Option<String>,
    /// [`AdmissionRequest::provider`].
    pub provider: String,
    /// [`AdmissionRequest::model`].
    pub model: String,
    /// [`AdmissionRequest::n`].
    pub n: u32,
    /// [`AdmissionRequest::stream`].
    pub stream: bool,
    /// [`AdmissionRequest::attempt`].
    pub attempt: AttemptIndex,
    /// [`AdmissionRequest::form_complete`].
    pub form_complete: bool,
    /// The permit's token when admitted, `None` when refused.
    pub admitted: Option<u64>,
}

/// One [`Admission::settle`] call, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettleCall {
    /// The permit's token.
    pub token: u64,
    /// [`Settlement::status`].
    pub status: u16,
    /// [`Settlement::reason`].
    pub reason: Option<&'static str>,
    /// [`Settlement::images`].
    pub images: u32,
    /// [`Settlement::provider`].
    pub provider: String,
    /// [`Settlement::model`].
    pub model: String,
    /// [`Settlement::key`].
    pub key: Option<String>,
    /// [`Settlement::usage`].
    pub usage: Option<Usage>,
}

impl RecordingAdmission {
    /// Admits every attempt (and records it).
    pub fn admitting() -> Self {
        Self::default()
    }

    /// Refuses every attempt at bare model `model`.
    pub fn refusing_model(model: &str) -> Self {
        RecordingAdmission {
            refuse_model: Some(model.to_string()),
            ..Self::default()
        }
    }

    /// Admits the first `n` attempts, refuses the rest.
    pub fn admitting_first(n: usize) -> Self {
        RecordingAdmission {
            admit_first: Some(n),
            ..Self::default()
        }
    }

    /// What was seen so far.
    pub fn recorded(&self) -> Recorded {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

impl Admission for RecordingAdmission {
    fn admit(&self, request: &AdmissionRequest<'_>) -> Admit {
        let Ok(mut calls) = self.calls.lock() else {
            return Admit::Now(Err(GatewayError::Internal("admission lock poisoned".into())));
        };
        let admitted_so_far = calls.admits.iter().filter(|a| a.admitted.is_some()).count();
        let refused = if self.refuse_model.as_deref() == Some(request.model) {
            Some(format!("model '{}' is closed to this caller", request.model))
        } else if self.admit_first.is_some_and(|first| admitted_so_far >= first) {
            Some("the admission's quota is spent".to_string())
        } else {
            None
        };
        let token = calls.admits.len() as u64 + 1;
        calls.admits.push(AdmitCall {
            virtual_key: request.virtual_key.map(str::to_string),
            provider: request.provider.to_string(),
            model: request.model.to_string(),
            n: request.n,
            stream: request.stream,
            attempt: request.attempt,
            form_complete: request.form_complete,
            admitted: refused.is_none().then_some(token),
        });
        Admit::Now(match refused {
            Some(message) => Err(GatewayError::Refused {
                status: 429,
                code: "rate_limited",
                message,
            }),
            None => Ok(Permit { token }),
        })
    }

    fn wants_usage(&self) -> bool {
        true
    }

    fn settle(&self, permit: Permit, settlement: &Settlement<'_>) -> Finish {
        if let Ok(mut calls) = self.calls.lock() {
            calls.settles.push(SettleCall {
                token: permit.token,
                status: settlement.status,
                reason: settlement.reason,
                images: settlement.images,
                provider: settlement.provider.to_string(),
                model: settlement.model.to_string(),
                key: settlement.key.map(str::to_string),
                usage: settlement.usage,
            });
        }
        Finish::Done
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request<'a>(model: &'a str) -> AdmissionRequest<'a> {
        AdmissionRequest {
            request_id: "r",
            virtual_key: Some("team-a"),
            provider: "openai",
            model,
            n: 1,
            size: None,
            quality: None,
            stream: false,
            attempt: AttemptIndex { candidate: 0, retry: 0 },
            form_complete: true,
        }
    }

    fn settlement() -> Settlement<'static> {
        Settlement {
            status: 200,
            reason: None,
            images: 1,
            usage: None,
            provider: "openai",
            model: "m",
            key: Some("primary"),
            elapsed: Duration::ZERO,
            virtual_key: None,
            cost: None,
        }
    }

    #[tokio::test]
    async fn admit_all_admits() {
        let permit = AdmitAll.admit(&request("m")).decide().await.unwrap();
        assert!(matches!(AdmitAll.settle(permit, &settlement()), Finish::Done));
    }

    #[tokio::test]
    async fn recording_refuses_a_model_and_after_its_quota() {
        let by_model = RecordingAdmission::refusing_model("closed");
        let e = by_model.admit(&request("closed")).decide().await.unwrap_err();
        assert_eq!((e.status(), e.code()), (429, "rate_limited"));
        let permit = by_model.admit(&request("open")).decide().await.unwrap();
        assert!(matches!(by_model.settle(permit, &settlement()), Finish::Done));
        let seen = by_model.recorded();
        assert_eq!(seen.admits.len(), 2);
        assert_eq!(seen.admits[0].admitted, None);
        assert_eq!(seen.admits[1].admitted, Some(permit.token));
        assert_eq!(seen.settles.len(), 1);
        assert_eq!(seen.settles[0].token, permit.token);

        let quota = RecordingAdmission::admitting_first(1);
        assert!(quota.admit(&request("m")).decide().await.is_ok());
        assert!(quota.admit(&request("m")).decide().await.is_err());
    }

    #[tokio::test]
    async fn a_later_decision_is_awaited() {
        let later = Admit::Later(Box::pin(async { Ok(Permit { token: 7 }) }));
        assert_eq!(later.decide().await.unwrap(), Permit { token: 7 });
    }
}
