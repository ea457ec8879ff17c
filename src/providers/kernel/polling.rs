//! Follow-up exchanges for asynchronous ("submit, then poll") providers (`bfl`, `fireworks`,
//! `replicate`), and what those adapters share: JSON bodies with an inlined image, the error
//! shapes with a `detail`, a BFL-style job status ([`job_status`], BFL and Fireworks), and the
//! steps that download result images.
//!
//! After every upstream answer the server calls [`crate::providers::ProviderAdapter::follow_up`], which
//! decides, purely (no I/O, no clock), what happens next: [`FollowUp::Done`] (convert this answer
//! as usual; the default, so synchronous adapters are unchanged), [`FollowUp::Request`] (send
//! another request, maybe to another host given as an absolute URL, after a wait), or
//! [`FollowUp::Answer`] (the unified answer, assembled from what was fetched). The server
//! (`server::gateway::follow`) owns the waiting, the deadline (`poll_timeout_ms`), the SSRF
//! guard on URLs and the client-disconnect check. [`FollowState`] carries what an adapter
//! learns from one step to the next.

use super::errors::{no_image_error, provider_error};
use super::unified::{extra_fields, write_images_response, zero_usage, AnswerImage};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging;
use crate::providers::capabilities::NByCalls;
use crate::providers::{BodySegment, ResponseContext, UnifiedAnswer, UpstreamRequest, UpstreamResponse};
use crate::route::Target;
use crate::spool::SpoolRange;
use bytes::Bytes;
use serde_json::{json, Map, Value};
use std::time::Duration;

/// What happens after an upstream answer.
#[derive(Debug)]
pub enum FollowUp {
    /// Convert this answer with [`crate::providers::ProviderAdapter::convert_response`].
    Done,
    /// Send `request` after waiting `after`, then ask again with its answer. With `to`, an
    /// absolute `http(s)` URL, the request goes to that URL's host (checked by the SSRF guard)
    /// and its path and query replace `request.path`; without, it goes to the provider's
    /// `base_url` host with `request.path`.
    Request {
        /// The request.
        request: UpstreamRequest,
        /// Where it goes, when not to the provider's `base_url`.
        to: Option<String>,
        /// How long to wait before sending it.
        after: Duration,
    },
    /// The unified answer, complete.
    Answer(UnifiedAnswer),
}

/// Where a polled job stands; kept by the server between steps, written by the adapter.
#[derive(Debug, Default)]
pub struct FollowState {
    /// Which answer the adapter is looking at.
    pub stage: Stage,
    /// Polls sent so far.
    pub polls: u32,
    /// The URL to poll (BFL `polling_url`, Replicate `urls.get`), once known.
    pub poll_url: Option<String>,
    /// Result image URLs not downloaded yet, in order.
    pub pending: Vec<String>,
    /// Images received so far, each as a JSON string of its base64 (quotes included; the
    /// unified answer shares it, see [`write_images_response`]), and its MIME type.
    pub images: Vec<(Bytes, Option<&'static str>)>,
}

/// Which answer a [`FollowState`] expects next.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The answer to the first (submit) request.
    #[default]
    Submitted,
    /// The answer to a poll.
    Polling,
    /// The answer to a result image download.
    Downloading,
    /// The answer to a request for a finished job's result document (fal's queue, whose
    /// status answers carry no result).
    Fetching,
}

/// Facts the adapter needs to decide a follow-up (all pure data).
#[derive(Debug, Clone)]
pub struct FollowContext<'a> {
    /// Where the request went (provider, key, model).
    pub target: &'a Target,
    /// Forwarded for correlation.
    pub request_id: &'a str,
    /// The client asked for `response_format=url` (result URLs are returned, not downloaded).
    pub want_url: bool,
    /// The provider's `poll_interval_ms`.
    pub poll_interval: Duration,
    /// What the converted answer reports (latency up to this answer).
    pub response: ResponseContext<'a>,
}

/// A `GET` of `url` with `headers` (the server takes path and query from `url`).
pub fn get(url: &str, headers: Vec<(http::HeaderName, String)>, after: Duration) -> FollowUp {
    let mut headers = headers;
    headers.push((http::header::ACCEPT_ENCODING, "identity".to_string()));
    FollowUp::Request {
        request: UpstreamRequest {
            method: http::Method::GET,
            path: String::new(),
            headers,
            body: Vec::new(),
        },
        to: Some(url.to_string()),
        after,
    }
}

/// The next step once a job's result images are known: their URLs as the answer when the
/// client asked for URLs, else the download of the first. Values that are not `http(s)` URLs
/// are taken as base64 images (Fireworks may send the sample inline). Stage: sets
/// [`Stage::Downloading`].
pub fn results(
    samples: Vec<String>,
    state: &mut FollowState,
    cx: &FollowContext<'_>,
) -> Result<FollowUp, GatewayError> {
    if samples.is_empty() {
        return Err(protocol(cx, "the finished job has no result image"));
    }
    let is_url = |s: &str| s.starts_with("https://") || s.starts_with("http://");
    if cx.want_url && samples.iter().all(|s| is_url(s)) {
        return url_answer(&samples, &cx.response).map(FollowUp::Answer);
    }
    for sample in samples {
        if is_url(&sample) {
            state.pending.push(sample);
        } else {
            let bytes = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, sample.trim())
                .map_err(|_| protocol(cx, "a result sample is neither a URL nor base64"))?;
            push_image(state, &bytes, None)?;
        }
    }
    state.stage = Stage::Downloading;
    next_download(state, cx)
}

/// Handles the answer to a result download ([`Stage::Downloading`]): keeps the image, then
/// downloads the next or writes the unified answer.
pub fn downloaded(
    resp: &UpstreamResponse,
    state: &mut FollowState,
    cx: &FollowContext<'_>,
) -> Result<FollowUp, GatewayError> {
    if !(200..300).contains(&resp.status) {
        return Err(protocol(
            cx,
            &format!("downloading the result image answered HTTP {}", resp.status),
        ));
    }
    let mime = resp.content_type.as_deref().and_then(|ct| {
        let ct = ct.split(';').next().unwrap_or_default().trim().to_ascii_lowercase();
        ["image/png", "image/jpeg", "image/webp"].into_iter().find(|m| *m == ct)
    });
    push_image(state, &resp.body, mime)?;
    next_download(state, cx)
}

fn push_image(state: &mut FollowState, bytes: &[u8], mime: Option<&'static str>) -> Result<(), GatewayError> {
    let mime = imaging::sniff(bytes).map(imaging::ImageKind::mime).or(mime);
    let mut quoted = Vec::with_capacity(crate::codec::base64::encoded_len(bytes.len() as u64) as usize + 2);
    quoted.push(b'"');
    crate::codec::base64::encode_append(bytes, &mut quoted);
    quoted.push(b'"');
    state.images.push((Bytes::from(quoted), mime));
    Ok(())
}

fn next_download(state: &mut FollowState, cx: &FollowContext<'_>) -> Result<FollowUp, GatewayError> {
    if state.pending.is_empty() {
        let sources: Vec<Bytes> = state.images.iter().map(|(b64, _)| b64.clone()).collect();
        let mut images = Vec::with_capacity(state.images.len());
        for (b64, mime) in &state.images {
            // Standard base64 in quotes: ASCII, so always UTF-8.
            let b64 = std::str::from_utf8(b64).map_err(|e| GatewayError::Internal(e.to_string()))?;
            images.push(AnswerImage { b64, mime: *mime });
        }
        return write_images_response(&sources, &images, None, cx.response.created, &cx.response).map(FollowUp::Answer);
    }
    let url = state.pending.remove(0);
    Ok(get(&url, Vec::new(), Duration::ZERO))
}

/// The unified answer with result URLs: `{"created","data":[{"url","index"}…],"usage",
/// "extra_fields"}`.
pub fn url_answer(urls: &[String], cx: &ResponseContext<'_>) -> Result<UnifiedAnswer, GatewayError> {
    let data: Vec<Value> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| json!({"url": u, "index": i}))
        .collect();
    let body = json!({
        "created": cx.created,
        "data": data,
        "usage": zero_usage(),
        "extra_fields": extra_fields(cx),
    });
    serde_json::to_vec(&body)
        .map(UnifiedAnswer::from)
        .map_err(|e| GatewayError::Internal(e.to_string()))
}

/// The answer of an asynchronous provider's first exchange as `convert_response` sees it:
/// successes are followed up, so only an error status (or a success without a result) lands
/// here.
pub fn unfollowed_answer(resp: &UpstreamResponse, cx: &ResponseContext<'_>) -> Result<UnifiedAnswer, GatewayError> {
    if !(200..300).contains(&resp.status) {
        return Err(detail_error(cx.provider, resp));
    }
    Err(GatewayError::UpstreamProtocol {
        provider: cx.provider.to_string(),
        detail: "the answer carries no result".into(),
    })
}

/// Where an asynchronous adapter's `follow_up` goes after the steps they all share.
pub enum Answer {
    /// Decided already: a download finished, or an error status is left to `convert_response`.
    Decided(FollowUp),
    /// A success body, parsed: the adapter reads its status.
    Json(Value),
}

/// The common start of `follow_up`: the answer to a result download becomes the final answer,
/// an error status is `Done` (converted as an error), and a success body must be JSON.
pub fn follow_json(
    resp: &UpstreamResponse,
    state: &mut FollowState,
    cx: &FollowContext<'_>,
) -> Result<Answer, GatewayError> {
    if state.stage == Stage::Downloading {
        return downloaded(resp, state, cx).map(Answer::Decided);
    }
    if !(200..300).contains(&resp.status) {
        return Ok(Answer::Decided(FollowUp::Done));
    }
    serde_json::from_slice(&resp.body)
        .map(Answer::Json)
        .map_err(|_| protocol(cx, "the answer is not JSON"))
}

/// A 502 `upstream_protocol_error` naming the provider.
pub fn protocol(cx: &FollowContext<'_>, detail: &str) -> GatewayError {
    GatewayError::UpstreamProtocol {
        provider: cx.target.provider.name.clone(),
        detail: detail.to_string(),
    }
}

/// A failed job (`Error`, `Failed`, `canceled`, …): 502 with the provider's reason.
pub fn job_failed(provider: &str, why: &str) -> GatewayError {
    let mut error = Map::new();
    error.insert(
        "message".into(),
        json!(format!("provider '{provider}': the job failed: {why}")),
    );
    error.insert("type".into(), json!("upstream_error"));
    error.insert("code".into(), json!("job_failed"));
    error.insert("param".into(), Value::Null);
    GatewayError::Provider {
        provider: provider.to_string(),
        status: 502,
        error,
    }
}

/// An error answer with a `detail` (BFL and FastAPI validation errors: a string or a list of
/// `{"msg"}`; Replicate's problem+json `{"title","detail","status"}`) as a provider error that
/// keeps the HTTP status and the detail as message (`type` from `title` when present). Any
/// other body is read like an OpenAI error ([`provider_error`]).
pub fn detail_error(provider: &str, resp: &UpstreamResponse) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let detail = parsed.as_ref().and_then(|v| v.get("detail")).and_then(|d| match d {
        Value::String(s) => Some(s.clone()),
        Value::Array(items) => Some(
            items
                .iter()
                .map(|i| {
                    i.get("msg")
                        .and_then(Value::as_str)
                        .map_or_else(|| i.to_string(), str::to_string)
                })
                .collect::<Vec<_>>()
                .join("; "),
        ),
        _ => None,
    });
    let Some(detail) = detail else {
        return provider_error(provider, resp);
    };
    let title = parsed
        .as_ref()
        .and_then(|v| v.get("title"))
        .and_then(Value::as_str)
        .unwrap_or("provider_error");
    let mut error = Map::new();
    error.insert("message".into(), json!(detail));
    error.insert("type".into(), json!(title));
    error.insert("code".into(), json!(resp.status.to_string()));
    error.insert("param".into(), Value::Null);
    GatewayError::Provider {
        provider: provider.to_string(),
        status: resp.status,
        error,
    }
}

/// One value of a JSON body built by [`json_body`].
#[derive(Debug)]
pub enum Field {
    /// A JSON value.
    Json(Value),
    /// An upload from the spool as a base64 string, encoded on the fly; with `data_url`, the
    /// MIME type of a `data:…;base64,` prefix.
    Image {
        /// The content.
        range: SpoolRange,
        /// `data:` URL MIME type, or `None` for bare base64.
        data_url: Option<&'static str>,
    },
    /// A [`Field::Image`] as the only item of a list (models whose input is `input_images`).
    ImageList(Box<Field>),
    /// [`Field::Image`]s as a list (fal's multi-image `image_urls`).
    Images(Vec<Field>),
}

/// The body plan of a JSON object with `fields` in order (images as `Base64` segments).
pub fn json_body(fields: &[(&str, Field)]) -> Result<Vec<BodySegment>, GatewayError> {
    let internal = |e: serde_json::Error| GatewayError::Internal(e.to_string());
    let mut body = Vec::new();
    let mut text = b"{".to_vec();
    for (i, (key, value)) in fields.iter().enumerate() {
        if i > 0 {
            text.push(b',');
        }
        serde_json::to_writer(&mut text, key).map_err(internal)?;
        text.push(b':');
        let items = match value {
            Field::ImageList(inner) => std::slice::from_ref(&**inner),
            Field::Images(items) => items.as_slice(),
            one => {
                json_value(one, &mut text, &mut body)?;
                continue;
            }
        };
        text.push(b'[');
        for (j, item) in items.iter().enumerate() {
            if j > 0 {
                text.push(b',');
            }
            json_value(item, &mut text, &mut body)?;
        }
        text.push(b']');
    }
    text.push(b'}');
    body.push(BodySegment::Bytes(Bytes::from(text)));
    Ok(body)
}

/// Writes one value of [`json_body`] (not a list): JSON into `text`, an image as the text
/// before it, its `Base64` segment, and its closing quote starting the next text.
fn json_value(value: &Field, text: &mut Vec<u8>, body: &mut Vec<BodySegment>) -> Result<(), GatewayError> {
    match value {
        Field::Json(v) => serde_json::to_writer(&mut *text, v).map_err(|e| GatewayError::Internal(e.to_string())),
        Field::Image { range, data_url } => {
            text.push(b'"');
            if let Some(mime) = data_url {
                text.extend_from_slice(format!("data:{mime};base64,").as_bytes());
            }
            body.push(BodySegment::Bytes(Bytes::from(std::mem::take(text))));
            body.push(BodySegment::Base64(*range));
            text.push(b'"');
            Ok(())
        }
        Field::ImageList(_) | Field::Images(_) => Err(GatewayError::Internal("nested image list".into())),
    }
}

/// The first image as a field (`data_url`: inline it as a `data:` URL), or a 400 naming
/// `image` when there is none.
pub fn first_image(form: &EditForm, provider: &str, data_url: bool) -> Result<Field, GatewayError> {
    let image = form.images.first().ok_or_else(|| GatewayError::Unsupported {
        provider: provider.to_string(),
        param: "image".into(),
        message: "a request without an image".into(),
    })?;
    Ok(Field::Image {
        range: image.range,
        data_url: data_url.then(|| image.kind.map_or("image/png", imaging::ImageKind::mime)),
    })
}

/// `aspect_ratio` for `size` (`WxH` → the nearest common ratio; `auto` or none → `None`); a
/// size far from every ratio is a 400 naming `size`.
pub fn aspect_ratio(form: &EditForm, provider: &str) -> Result<Option<&'static str>, GatewayError> {
    Ok(super::size::image_config_for_size(form.size.as_deref(), provider)?.map(|(ratio, _)| ratio))
}

/// `n > 1` on FLUX (BFL, and Fireworks' FLUX Kontext): n jobs of one image, job i with
/// `seed + i`. BFL documents no seed range (unverified): non-negative seeds are offset, others
/// sent unchanged.
pub const FLUX_N_BY_CALLS: NByCalls = NByCalls { seeds: (0, i64::MAX) };

/// The fields every FLUX-style body takes besides prompt and image: `seed`, `aspect_ratio`,
/// `output_format` (`png`/`jpeg`; `webp` → `png`; `jpeg` spelled `jpeg_name`).
pub fn common_fields(
    form: &EditForm,
    provider: &str,
    jpeg_name: &'static str,
) -> Result<Vec<(&'static str, Field)>, GatewayError> {
    let mut fields = common_fields_keeping_size(form, jpeg_name);
    if let Some(ratio) = aspect_ratio(form, provider)? {
        let at = usize::from(form.seed.is_some());
        fields.insert(at, ("aspect_ratio", Field::Json(json!(ratio))));
    }
    Ok(fields)
}

/// [`common_fields`] for an endpoint whose output keeps the input's size (no `aspect_ratio`;
/// `size` is ignored, never refused): `seed`, `output_format`.
pub fn common_fields_keeping_size(form: &EditForm, jpeg_name: &'static str) -> Vec<(&'static str, Field)> {
    let mut fields = Vec::new();
    if let Some(seed) = form.seed {
        fields.push(("seed", Field::Json(json!(seed))));
    }
    if let Some(format) = form.output_format.as_deref() {
        let format = if format == "jpeg" { jpeg_name } else { "png" };
        fields.push(("output_format", Field::Json(json!(format))));
    }
    fields
}

/// A BFL-style job status (also Fireworks'), read from a poll answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Job {
    /// Not finished: poll again.
    Pending,
    /// Finished: the `result.sample` values (URLs or base64).
    Ready(Vec<String>),
}

/// Reads `{"status", "result": {"sample"}}`: `Ready`, `Pending` (and `Queued`/`Processing`),
/// or the error for a moderated (400 `moderation_blocked`) or failed (502) job.
pub fn job_status(body: &Value, provider: &str) -> Result<Job, GatewayError> {
    let status = body.get("status").and_then(Value::as_str).unwrap_or_default();
    match status {
        "Ready" => {
            let sample = body.pointer("/result/sample");
            let samples: Vec<String> = match sample {
                Some(Value::String(s)) => vec![s.clone()],
                Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).map(str::to_string).collect(),
                _ => Vec::new(),
            };
            Ok(Job::Ready(samples))
        }
        "Pending" | "Queued" | "Processing" | "Running" => Ok(Job::Pending),
        "Content Moderated" | "Request Moderated" => Err(no_image_error(provider, status)),
        other => {
            let why = body
                .get("details")
                .or_else(|| body.get("error"))
                .map(|d| d.as_str().map_or_else(|| d.to_string(), str::to_string));
            Err(job_failed(
                provider,
                &match why {
                    Some(why) => format!("{other}: {why}"),
                    None if other.is_empty() => "no status in the answer".to_string(),
                    None => other.to_string(),
                },
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_body_inlines_images_as_base64_segments() {
        let range = SpoolRange { start: 3, len: 5 };
        let body = json_body(&[
            ("prompt", Field::Json(json!("a \"b\""))),
            (
                "input_image",
                Field::Image {
                    range,
                    data_url: Some("image/png"),
                },
            ),
            ("seed", Field::Json(json!(4))),
        ])
        .unwrap();
        assert_eq!(
            body,
            vec![
                BodySegment::Bytes(Bytes::from_static(
                    br#"{"prompt":"a \"b\"","input_image":"data:image/png;base64,"#
                )),
                BodySegment::Base64(range),
                BodySegment::Bytes(Bytes::from_static(br#"","seed":4}"#)),
            ]
        );
    }

    #[test]
    fn detail_errors_keep_status_and_detail() {
        let resp = |status, body: &'static str| UpstreamResponse {
            retry_after: None,
            status,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(body.as_bytes()),
        };
        let ctx = crate::error::ErrorContext::default();
        let e = detail_error("p", &resp(402, r#"{"detail":"Insufficient credits"}"#));
        assert_eq!(e.status(), 402);
        assert_eq!(e.to_json(&ctx)["error"]["message"], "Insufficient credits");
        let e = detail_error(
            "p",
            &resp(
                422,
                r#"{"title":"Invalid input","detail":"prompt is required","status":422}"#,
            ),
        );
        assert_eq!(e.status(), 422);
        assert_eq!(e.to_json(&ctx)["error"]["message"], "prompt is required");
        assert_eq!(e.to_json(&ctx)["error"]["type"], "Invalid input");
        let e = detail_error(
            "p",
            &resp(422, r#"{"detail":[{"loc":["body","prompt"],"msg":"field required"}]}"#),
        );
        assert_eq!(e.to_json(&ctx)["error"]["message"], "field required");
        let e = detail_error("p", &resp(500, r#"{"message":"boom"}"#));
        assert_eq!(
            (e.status(), e.to_json(&ctx)["error"]["message"].clone()),
            (500, json!("boom"))
        );
        assert_eq!(job_failed("p", "x").status(), 502);
    }
}
