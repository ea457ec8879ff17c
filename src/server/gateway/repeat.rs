//! Repeat for n: the upstream side of an attempt sent from the spool ([`send`]), which is one
//! call, or n calls when the provider makes one image per call (the capability's
//! [`NByCalls`]: Stability, Stability on Bedrock, BFL, Fireworks) and the request asks for
//! `n > 1`, as a user of the provider's own API would loop.
//!
//! Each call is a request of its own built from the spool for `n = 1`, with call i's seed
//! ([`NByCalls::seed`]: `seed + i` within the provider's range, so the n images differ), one
//! exchange (it counts against the provider's bounds like any other), then its follow-ups
//! (asynchronous kinds) and conversion. At most the provider's `repeat_concurrency` calls run
//! at once. When all succeeded, their unified answers are merged in call order
//! ([`merge_answers`]); the first call to fail fails the attempt with its error, and the
//! calls still running are dropped (their connections closed, never pooled), so retries and
//! fallbacks see one failed attempt and no half answer is ever sent. It runs inside the
//! attempt's `run_with_writer`, so a client that goes away cancels every call.

use super::follow;
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::providers::capabilities::NByCalls;
use crate::providers::merge::merge_answers;
use crate::providers::{adapter_for, ResponseContext, UnifiedAnswer, UpstreamResponse};
use crate::route::Target;
use crate::server::exchange::{exchange, AnswerSink, Collect};
use crate::server::AppState;
use crate::spool::Spool;
use futures_util::stream::{self, StreamExt};
use std::future::Future;
use std::time::{Duration, Instant};

/// What the upstream side of an attempt produced.
pub(super) enum Answered {
    /// The provider's answer to the attempt's one call; the attempt follows it up and converts it.
    One(UpstreamResponse),
    /// The answer merged from n calls, each followed up and converted; or the failure of the
    /// first call that failed, with the `Retry-After` of that call's answer.
    Merged {
        /// The unified answer, or the failure.
        result: Result<UnifiedAnswer, GatewayError>,
        /// The failing call's `Retry-After`, for the retry loop.
        retry_after: Option<Duration>,
    },
}

/// What an attempt's calls need: the candidate's form, target (key chosen, credentials
/// prepared) and the request's spool.
pub(super) struct Call<'a> {
    /// The gateway's state: the pooled connector, the decode pool (masks).
    pub(super) state: &'a AppState,
    pub(super) target: &'a Target,
    /// The candidate's form (its provider and model).
    pub(super) form: &'a EditForm,
    pub(super) spool: &'a Spool,
    pub(super) request_id: &'a str,
    /// When the client's request started (the answers' `latency`).
    pub(super) start: Instant,
}

impl<'a> Call<'a> {
    /// What the follow-up loop needs to follow up and convert an answer to this call for
    /// `form` (the attempt's, or one of its n calls').
    pub(super) fn follow_request<'f>(&self, form: &'f EditForm) -> follow::Request<'f>
    where
        'a: 'f,
    {
        let target = self.target;
        follow::Request {
            connector: &self.state.connector,
            slots: &self.state.slots,
            target,
            spool: self.spool,
            request_id: self.request_id,
            want_url: form.response_format.as_deref() == Some("url") && !form.stream,
            response: ResponseContext {
                provider: &target.provider.name,
                model_requested: &form.model,
                model_deployment: &target.model,
                latency_ms: self.start.elapsed().as_millis() as u64,
                num_input_images: form.images.len(),
                created: crate::providers::kernel::time::unix_seconds(std::time::SystemTime::now()),
            },
            start: self.start,
        }
    }
}

/// The upstream side of an attempt from the spool: the one call (its answer handed to `sink`,
/// which may take a stream), or the n calls of a provider that makes one image per call (see
/// the module docs). An error means no call reached the provider's answer.
pub(super) async fn send(call: &Call<'_>, sink: &mut dyn AnswerSink) -> Result<Answered, GatewayError> {
    let adapter = adapter_for(call.target.provider.kind);
    let n = call.form.n.unwrap_or(1);
    let by_calls = adapter.capabilities(&call.form.model).n_by_calls;
    if let Some(by_calls) = by_calls.filter(|_| n > 1) {
        return Ok(repeat(call, n, by_calls).await);
    }
    let request =
        super::prepare::build_request(call.state, call.form, call.spool, call.target, call.request_id).await?;
    let _slot = call.state.slots.acquire(&call.target.provider.name).await?;
    let response = exchange(&call.state.connector, call.target, &request, call.spool, sink).await?;
    Ok(Answered::One(response))
}

/// A failed call: its error and its answer's `Retry-After`.
struct Failed {
    error: GatewayError,
    retry_after: Option<Duration>,
}

impl From<GatewayError> for Failed {
    fn from(error: GatewayError) -> Self {
        Failed {
            error,
            retry_after: None,
        }
    }
}

/// The n calls, merged (see the module docs).
async fn repeat(call: &Call<'_>, n: u32, by_calls: NByCalls) -> Answered {
    let limit = call.target.provider.options.repeat_concurrency.max(1);
    log::debug!(
        "request {}: n={n} from provider {} as {n} calls, at most {limit} at once",
        call.request_id,
        call.target.provider.name
    );
    match in_call_order(n, limit, |i| one(call, i, by_calls)).await {
        Ok(answers) => Answered::Merged {
            result: merge_answers(&answers, call.start.elapsed().as_millis() as u64),
            retry_after: None,
        },
        Err(failed) => Answered::Merged {
            result: Err(failed.error),
            retry_after: failed.retry_after,
        },
    }
}

/// Call number `i` (from 0): one image, seed offset by `i`; its unified answer.
async fn one(call: &Call<'_>, i: u32, by_calls: NByCalls) -> Result<UnifiedAnswer, Failed> {
    let form = EditForm {
        n: Some(1),
        seed: by_calls.seed(call.form.seed, i),
        ..call.form.clone()
    };
    let target = call.target;
    let adapter = adapter_for(target.provider.kind);
    let request = super::prepare::build_request(call.state, &form, call.spool, target, call.request_id).await?;
    let slot = call.state.slots.acquire(&target.provider.name).await?;
    let response = exchange(&call.state.connector, target, &request, call.spool, &mut Collect).await?;
    // The call's follow-ups take slots of their own.
    drop(slot);
    let retry_after = response.retry_after;
    let followed = call.follow_request(&form);
    follow::unified(adapter, &followed, response)
        .await
        .map_err(|error| Failed { error, retry_after })
}

/// Runs `call(i)` for i in 0..n, at most `limit` at once, and returns the results in call
/// order. The first failure (in time) is returned at once; the calls still running are
/// dropped with the stream of calls.
async fn in_call_order<T, E, F, Fut>(n: u32, limit: usize, mut call: F) -> Result<Vec<T>, E>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut running = stream::iter(0..n)
        .map(|i| {
            let done = call(i);
            async move { (i, done.await) }
        })
        .buffer_unordered(limit.max(1));
    let mut results: Vec<Option<T>> = (0..n).map(|_| None).collect();
    while let Some((i, result)) = running.next().await {
        if let Some(slot) = results.get_mut(i as usize) {
            *slot = Some(result?);
        }
    }
    Ok(results.into_iter().flatten().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Calls that finish in another order than they started: results in call order, never
    /// more than the limit at once, and the limit reached.
    #[tokio::test]
    async fn results_in_call_order_within_the_limit() {
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let results = in_call_order(7, 3, |i| {
            let (now, most) = (&now, &most);
            async move {
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(running, Ordering::SeqCst);
                // Later calls finish sooner.
                tokio::time::sleep(Duration::from_millis(u64::from(7 - i) * 5)).await;
                now.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, ()>(i * 10)
            }
        })
        .await
        .unwrap();
        assert_eq!(results, [0, 10, 20, 30, 40, 50, 60]);
        assert_eq!(most.load(Ordering::SeqCst), 3);
    }

    /// The first failure ends the run at once: the calls still running are dropped, and no
    /// call after them starts.
    #[tokio::test]
    async fn the_first_failure_cancels_the_rest() {
        let (started, finished) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let result = in_call_order(6, 2, |i| {
            let (started, finished) = (&started, &finished);
            async move {
                started.fetch_add(1, Ordering::SeqCst);
                if i == 1 {
                    return Err(format!("call {i} failed"));
                }
                tokio::time::sleep(Duration::from_secs(30)).await;
                finished.fetch_add(1, Ordering::SeqCst);
                Ok(i)
            }
        });
        let result = tokio::time::timeout(Duration::from_secs(10), result).await.unwrap();
        assert_eq!(result, Err("call 1 failed".to_string()));
        assert_eq!(finished.load(Ordering::SeqCst), 0, "call 0 was cancelled");
        assert!(started.load(Ordering::SeqCst) <= 3, "no more calls after the failure");
    }
}
