//! Images a JSON edit names by http(s) URL, fetched when `limits.fetch_image_urls` enables it
//! (the parse step of the JSON form, `super::json_edit`): through the SSRF guard
//! ([`crate::ssrf`]) at every hop. Each URL, the client's and each redirect's target, is
//! checked before it is requested ([`crate::ssrf::check_url`]); a name is resolved by the
//! client's resolver ([`GuardedResolver`]), which refuses addresses that are not public and
//! hands the connection exactly the addresses it checked (no second resolution). Proxies from
//! the environment are not used; redirects are followed here, at most `max_redirects`; the
//! whole fetch (every hop and the body) within `timeout_ms`; the body within `max_bytes`,
//! counted while it arrives.
//!
//! The HTTP client is the reqwest already in the tree (object_store's, rustls). One client per
//! request that has URLs to fetch, without a connection pool: no connection outlives the
//! request or crosses runtimes, and requests without URLs pay nothing.

use crate::config::ImageUrlFetch;
use crate::error::GatewayError;
use crate::ssrf::{self, Refusal};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;

/// The resolver of the fetching client: the system's, then [`ssrf::check_resolved`].
struct GuardedResolver {
    allow_hosts: Arc<Vec<String>>,
}

impl reqwest::dns::Resolve for GuardedResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let allow_hosts = self.allow_hosts.clone();
        let host = name.as_str().to_string();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            let host = ssrf::normalize_host(&host).unwrap_or(host);
            let allowed = allow_hosts.contains(&host);
            let checked = ssrf::check_resolved(&host, allowed, addrs)?;
            Ok(Box::new(checked.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

/// Fetches the images of one request.
pub(super) struct ImageFetcher<'c> {
    client: reqwest::Client,
    config: &'c ImageUrlFetch,
}

/// An image being fetched: its body, read with [`FetchedImage::next_chunk`].
pub(super) struct FetchedImage<'f> {
    response: reqwest::Response,
    deadline: Instant,
    read: u64,
    param: &'f str,
    config: &'f ImageUrlFetch,
}

/// The client's 400 for the image of `param` that could not be fetched.
fn failed(param: &str, why: impl std::fmt::Display) -> GatewayError {
    GatewayError::invalid(param, format!("the image URL could not be fetched: {why}"))
}

/// The guard's refusal inside a client error (from the resolver), if that is what it is.
fn refusal_in(e: &reqwest::Error) -> Option<&Refusal> {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(refusal) = err.downcast_ref::<Refusal>() {
            return Some(refusal);
        }
        source = err.source();
    }
    None
}

/// Why a request failed, in a few words (reqwest's top-level message names only the URL).
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(err) = source {
        text.push_str(": ");
        text.push_str(&err.to_string());
        source = err.source();
    }
    text.chars().take(300).collect()
}

impl<'c> ImageFetcher<'c> {
    /// A fetcher within `config` (enabled: the caller checked).
    pub(super) fn new(config: &'c ImageUrlFetch) -> Result<Self, GatewayError> {
        let client = reqwest::Client::builder()
            .dns_resolver(Arc::new(GuardedResolver {
                allow_hosts: Arc::new(config.allow_hosts.clone()),
            }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| GatewayError::Internal(format!("image URL client: {e}")))?;
        Ok(ImageFetcher { client, config })
    }

    /// Requests `url` (the image of `param`), following redirects, each checked: its answer,
    /// whose body is then read within the same deadline and `max_bytes`. A refusal of the
    /// guard, an error answer, a timeout or a connection failure is a 400 naming `param`; an
    /// image declared larger than `max_bytes` a 413.
    pub(super) async fn open<'f>(&'f self, url: &str, param: &'f str) -> Result<FetchedImage<'f>, GatewayError> {
        let deadline = Instant::now() + self.config.timeout;
        let timeout = || {
            failed(
                param,
                format!(
                    "no complete answer within {} ms (timeout_ms)",
                    self.config.timeout.as_millis()
                ),
            )
        };
        let mut next = url.to_string();
        let mut redirects = 0;
        loop {
            let checked = ssrf::check_url(&next, &self.config.allow_hosts).map_err(|e| refused(param, &e))?;
            let sent = tokio::time::timeout_at(deadline, self.client.get(checked.url.clone()).send()).await;
            let response = match sent {
                Err(_) => return Err(timeout()),
                Ok(Err(e)) => {
                    return Err(match refusal_in(&e) {
                        Some(refusal) => refused(param, refusal),
                        None => failed(param, describe(&e)),
                    })
                }
                Ok(Ok(response)) => response,
            };
            let status = response.status();
            if status.is_redirection() {
                let location = response
                    .headers()
                    .get(http::header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| failed(param, format!("a {status} answer without a Location")))?;
                if redirects >= self.config.max_redirects {
                    return Err(failed(
                        param,
                        format!("more than {} redirects (max_redirects)", self.config.max_redirects),
                    ));
                }
                redirects += 1;
                next = checked
                    .url
                    .join(location)
                    .map_err(|_| failed(param, "a redirect to an invalid URL"))?
                    .to_string();
                continue;
            }
            if !status.is_success() {
                return Err(failed(param, format!("the server answered {status}")));
            }
            if response.content_length().is_some_and(|len| len > self.config.max_bytes) {
                return Err(self.too_large(param));
            }
            return Ok(FetchedImage {
                response,
                deadline,
                read: 0,
                param,
                config: self.config,
            });
        }
    }

    fn too_large(&self, param: &str) -> GatewayError {
        too_large(self.config, param)
    }
}

fn too_large(config: &ImageUrlFetch, param: &str) -> GatewayError {
    GatewayError::PayloadTooLarge {
        param: Some(param.to_string()),
        what: "image fetched by URL (limits.fetch_image_urls.max_bytes)".into(),
        limit: config.max_bytes,
    }
}

/// The guard's refusal as the client's 400.
fn refused(param: &str, refusal: &Refusal) -> GatewayError {
    GatewayError::invalid(param, format!("the image URL is refused: {refusal}"))
}

impl FetchedImage<'_> {
    /// The next piece of the image, `None` at its end; past `max_bytes` a 413, past the
    /// deadline or on a broken body a 400.
    pub(super) async fn next_chunk(&mut self) -> Result<Option<Bytes>, GatewayError> {
        let param = self.param;
        let chunk = match tokio::time::timeout_at(self.deadline, self.response.chunk()).await {
            Err(_) => {
                return Err(failed(
                    param,
                    format!(
                        "no complete answer within {} ms (timeout_ms)",
                        self.config.timeout.as_millis()
                    ),
                ))
            }
            Ok(Err(e)) => return Err(failed(param, describe(&e))),
            Ok(Ok(chunk)) => chunk,
        };
        if let Some(chunk) = &chunk {
            self.read += chunk.len() as u64;
            if self.read > self.config.max_bytes {
                return Err(too_large(self.config, param));
            }
        }
        Ok(chunk)
    }
}
