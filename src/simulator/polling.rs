//! The simulator's asynchronous providers: Black Forest Labs, Fireworks FLUX Kontext,
//! Replicate predictions and fal's queue through the Hugging Face router, each
//! submit-then-poll like the real one.
//!
//! - BFL: `POST …/flux-*` with `x-key` → `{"id","polling_url"}`; `GET /sim/bfl/get_result?id=`
//!   (`x-key`) → `Pending` on the first poll, `Ready` with `result.sample` after.
//! - Fireworks: `POST …/workflows/…/models/{model}` (Bearer) → `{"request_id"}`;
//!   `POST …/get_result` `{"id"}` → `Pending`, then `Ready`.
//! - Replicate: `POST …/predictions` (Bearer) → a `starting` prediction with `urls.get` on
//!   `/sim/replicate/predictions/{id}`; polls answer `processing`, then `succeeded` with `output`.
//! - fal through the router: `POST …/fal-ai/{endpoint}?_subdomain=queue` (Bearer; only fal's
//!   image-to-image fields, else 422) → `{"request_id","status":"IN_QUEUE","response_url"}`
//!   (`response_url` on the simulator, `/{app}/requests/{id}`); `GET …/fal-ai/{app}/requests/
//!   {id}/status?_subdomain=queue` → `IN_PROGRESS`, then `COMPLETED`; `GET …/fal-ai/{app}/
//!   requests/{id}?_subdomain=queue` → `{"images":[{"url"}…]}` (`num_images` of them; `data:`
//!   URLs with `sync_mode`), moderated jobs with `has_nsfw_concepts: [true]`.
//!
//! The image (the `input_image` / `image` / `image_prompt` / `input_images[0]` / `image_url` /
//! `image_urls[0]` value, bare base64 or a `data:` URL) is edited at submit time with
//! [`simulate_edit`] (BFL fill models take an opaque `mask`, fal's fill endpoints `mask_url`,
//! white = edit) and served at `GET /sim/results/{id}/0.png`. URLs point back at
//! the simulator (the request's `Host`). Jobs are kept in memory, the most recent
//! [`MAX_JOBS`] only. Prompt hooks: `simulate-error:NNN` answers the submit with that status
//! (`{"detail"}`, Replicate's problem+json); `simulate-moderated` ends the job moderated (BFL,
//! Fireworks: `Content Moderated`; Replicate: `failed` with an NSFW error).

use super::render::{self, Fault, Marks, Picture};
use super::vertex::IMAGEN_MASK;
use super::{simulated_error_status, Blob, Body, SimAnswer, SimRequest, SimResponse};
use base64::Engine;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::sync::Mutex;

/// Jobs kept in memory; older ones are forgotten (their polls answer 404).
pub const MAX_JOBS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Bfl,
    Fireworks,
    Replicate,
    Fal,
}

/// fal's fields of an image-to-image submit (anything else is a 422).
const FAL_FIELDS: &[&str] = &[
    "prompt",
    "image_url",
    "image_urls",
    "mask_url",
    "num_images",
    "image_size",
    "seed",
    "num_inference_steps",
    "output_format",
    "sync_mode",
];

struct Job {
    id: String,
    kind: Kind,
    polls: u32,
    /// Images the result lists (fal's `num_images`; 1 for the others).
    count: u32,
    /// fal's `sync_mode`: the result carries `data:` URLs.
    inline: bool,
    /// The edited PNG (in a spool: memory up to `spool.memory_bytes`, then a temp file), or
    /// `None` when the job ends moderated.
    image: Option<Body>,
}

static JOBS: Mutex<VecDeque<Job>> = Mutex::new(VecDeque::new());

fn json_answer(status: u16, body: &Value) -> SimResponse {
    SimResponse::json(status, body)
}

fn detail(status: u16, message: &str, kind: Kind) -> SimResponse {
    match kind {
        Kind::Replicate => json_answer(status, &json!({"title": "Error", "detail": message, "status": status})),
        _ => json_answer(status, &json!({ "detail": message })),
    }
}

/// Answers the asynchronous providers' paths; `None` for any other path.
pub(super) fn handle(req: &SimRequest) -> Option<SimAnswer> {
    let path = req.path.as_str();
    let answer = if let Some(at) = path.find("/fal-ai/") {
        authorized(req, Kind::Fal).and_then(|()| fal(req, &path[at + "/fal-ai".len()..]))
    } else if let Some(rest) = path.strip_prefix("/sim/results/") {
        result(rest)
    } else if path == "/sim/bfl/get_result" {
        let id = req
            .query
            .as_deref()
            .unwrap_or_default()
            .split('&')
            .find_map(|p| p.strip_prefix("id="))
            .unwrap_or_default()
            .to_string();
        authorized(req, Kind::Bfl).and_then(|()| poll(req, &id, Kind::Bfl))
    } else if let Some(id) = path.strip_prefix("/sim/replicate/predictions/") {
        authorized(req, Kind::Replicate).and_then(|()| poll(req, id, Kind::Replicate))
    } else if path.contains("/workflows/") && path.ends_with("/get_result") {
        authorized(req, Kind::Fireworks).and_then(|()| {
            let body: Value =
                serde_json::from_slice(req.body.bytes()).map_err(|_| detail(400, "expected JSON", Kind::Fireworks))?;
            let id = body.get("id").and_then(Value::as_str).unwrap_or_default().to_string();
            poll(req, &id, Kind::Fireworks)
        })
    } else if path.contains("/workflows/") {
        authorized(req, Kind::Fireworks).and_then(|()| submit(req, Kind::Fireworks))
    } else if path.ends_with("/predictions") {
        authorized(req, Kind::Replicate).and_then(|()| submit(req, Kind::Replicate))
    } else if path.rsplit('/').next().is_some_and(|last| last.starts_with("flux-")) {
        authorized(req, Kind::Bfl).and_then(|()| submit(req, Kind::Bfl))
    } else {
        return None;
    };
    Some(SimAnswer::Whole(answer.unwrap_or_else(|e| e)))
}

/// BFL wants `x-key`; the others a Bearer token.
fn authorized(req: &SimRequest, kind: Kind) -> Result<(), SimResponse> {
    let ok = match kind {
        Kind::Bfl => req.header("x-key").is_some_and(|k| !k.is_empty()),
        _ => req
            .header("authorization")
            .is_some_and(|a| a.starts_with("Bearer ") && a.len() > 7),
    };
    if ok {
        Ok(())
    } else {
        Err(detail(401, "missing or invalid credentials", kind))
    }
}

fn base(req: &SimRequest) -> String {
    format!("http://{}", req.header("host").unwrap_or("127.0.0.1"))
}

/// Decodes bare base64 or a `data:…;base64,` URL.
fn image_bytes(req: &SimRequest, value: &Value) -> Option<Blob> {
    let text = value.as_str().or_else(|| value.get(0).and_then(Value::as_str))?;
    let b64 = match text.strip_prefix("data:") {
        Some(rest) => rest.split_once(";base64,")?.1,
        None => text,
    };
    req.base64_blob(b64, |s| base64::engine::general_purpose::STANDARD.decode(s).ok())
}

/// fal's queue through the router: `rest` is the path after the router's `/fal-ai` (fal's own
/// path: `/{endpoint}` to submit, `/{app}/requests/{id}[/status]` to poll and fetch; the
/// simulator tells them apart by path, as it sees no method).
fn fal(req: &SimRequest, rest: &str) -> Result<SimResponse, SimResponse> {
    if req.query.as_deref() != Some("_subdomain=queue") {
        return Err(detail(404, "fal's queue is reached with ?_subdomain=queue", Kind::Fal));
    }
    let segments: Vec<&str> = rest.split('/').skip(1).collect();
    let requests_at = segments.iter().position(|s| *s == "requests");
    match requests_at {
        None => {
            if let Ok(Value::Object(body)) = serde_json::from_slice::<Value>(req.body.bytes()) {
                if let Some(key) = body.keys().find(|k| !FAL_FIELDS.contains(&k.as_str())) {
                    return Err(detail(422, &format!("{key} is not an image-to-image field"), Kind::Fal));
                }
            }
            submit(req, Kind::Fal)
        }
        Some(at) => {
            let id = segments.get(at + 1).copied().unwrap_or_default();
            match segments.get(at + 2..) {
                Some([]) => fal_result(req, id),
                Some(["status"]) => poll(req, id, Kind::Fal),
                _ => Err(detail(404, "no such queue path", Kind::Fal)),
            }
        }
    }
}

/// fal's result document of finished job `id`.
fn fal_result(req: &SimRequest, id: &str) -> Result<SimResponse, SimResponse> {
    let jobs = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let job = jobs
        .iter()
        .find(|j| j.id == id && j.kind == Kind::Fal)
        .ok_or_else(|| detail(404, "request not found", Kind::Fal))?;
    if job.polls < 2 {
        return Err(detail(400, "the request is still in progress", Kind::Fal));
    }
    let url = match &job.image {
        Some(image) if job.inline => format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(image.to_vec())
        ),
        _ => format!("{}/sim/results/{id}/0.png", base(req)),
    };
    let image = json!({"url": url, "content_type": "image/png"});
    let n = job.count as usize;
    Ok(json_answer(
        200,
        &json!({"images": vec![image; n], "has_nsfw_concepts": vec![job.image.is_none(); n], "seed": 0}),
    ))
}

fn submit(req: &SimRequest, kind: Kind) -> Result<SimResponse, SimResponse> {
    let body: Value =
        serde_json::from_slice(req.body.bytes()).map_err(|_| detail(400, "expected a JSON body", kind))?;
    let input = if kind == Kind::Replicate {
        body.get("input")
            .cloned()
            .ok_or_else(|| detail(422, "input is required", kind))?
    } else {
        body
    };
    let prompt = input
        .get("prompt")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if let Some(status) = simulated_error_status(&prompt) {
        return Err(detail(status, &format!("simulated error {status}"), kind));
    }
    let image = [
        "input_image",
        "image",
        "image_prompt",
        "input_images",
        "image_url",
        "image_urls",
    ]
    .iter()
    .find_map(|k| input.get(*k))
    .ok_or_else(|| detail(422, "an input image is required", kind))?;
    let start = image_bytes(req, image).ok_or_else(|| detail(422, "the input image is not base64", kind))?;
    let max_pixels = req.place.max_image_pixels;
    let header = render::inspect(&start, max_pixels).map_err(|e| detail(422, &e.to_string(), kind))?;
    let mask_refused = || detail(422, "the mask must be opaque, white = edit", kind);
    let marks = match input
        .get("mask")
        .or_else(|| input.get("mask_url"))
        .and_then(|m| image_bytes(req, m))
    {
        Some(m) => {
            render::inspect_mask(&m, IMAGEN_MASK, &header, max_pixels).map_err(|f| match f {
                Fault::Mask(e @ crate::imaging::ImagingError::MaskSize { .. }) => detail(422, &e.to_string(), kind),
                _ => mask_refused(),
            })?;
            Marks::Mask(m, IMAGEN_MASK)
        }
        None => Marks::Blend,
    };
    let image = if prompt == "simulate-moderated" {
        None
    } else {
        let picture = Picture::edit(start, marks, &prompt, 0);
        Some(render::png_body(&picture, &req.place).map_err(|f| match f {
            Fault::Output(e) => detail(500, &e, kind),
            other => detail(422, &other.to_string(), kind),
        })?)
    };
    let id = uuid::Uuid::new_v4().to_string();
    remember(
        &mut JOBS.lock().unwrap_or_else(|e| e.into_inner()),
        Job {
            id: id.clone(),
            kind,
            polls: 0,
            count: input
                .get("num_images")
                .and_then(Value::as_u64)
                .map_or(1, |n| n.clamp(1, 4) as u32),
            inline: input.get("sync_mode") == Some(&json!(true)),
            image,
        },
    );
    let base = base(req);
    Ok(json_answer(
        if kind == Kind::Replicate { 201 } else { 200 },
        &match kind {
            Kind::Bfl => json!({"id": id, "polling_url": format!("{base}/sim/bfl/get_result?id={id}")}),
            Kind::Fireworks => json!({ "request_id": id }),
            Kind::Replicate => prediction(&base, &id, "starting", None),
            Kind::Fal => {
                let app: Vec<&str> = req
                    .path
                    .split_once("/fal-ai/")
                    .map_or("", |(_, endpoint)| endpoint)
                    .split('/')
                    .take(2)
                    .collect();
                let url = format!("{base}/{}/requests/{id}", app.join("/"));
                json!({"request_id": id, "status": "IN_QUEUE", "response_url": url,
                    "status_url": format!("{url}/status"), "queue_position": 0})
            }
        },
    ))
}

/// Adds `job`, forgetting the oldest ones beyond [`MAX_JOBS`].
fn remember(jobs: &mut VecDeque<Job>, job: Job) {
    while jobs.len() >= MAX_JOBS {
        jobs.pop_front();
    }
    jobs.push_back(job);
}

fn prediction(base: &str, id: &str, status: &str, end: Option<Result<String, String>>) -> Value {
    let (output, error) = match end {
        Some(Ok(url)) => (json!(url), Value::Null),
        Some(Err(e)) => (Value::Null, json!(e)),
        None => (Value::Null, Value::Null),
    };
    json!({
        "id": id, "status": status, "output": output, "error": error,
        "urls": {"get": format!("{base}/sim/replicate/predictions/{id}"), "cancel": format!("{base}/sim/replicate/predictions/{id}/cancel")},
    })
}

/// One poll: the first answers "not finished", later ones the outcome.
fn poll(req: &SimRequest, id: &str, kind: Kind) -> Result<SimResponse, SimResponse> {
    let mut jobs = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let Some(job) = jobs.iter_mut().find(|j| j.id == id && j.kind == kind) else {
        return Ok(match kind {
            Kind::Replicate => detail(404, "prediction not found", kind),
            _ => json_answer(200, &json!({"id": id, "status": "Task not found"})),
        });
    };
    job.polls += 1;
    let base = base(req);
    let sample = format!("{base}/sim/results/{id}/0.png");
    let body = match (kind, job.polls, job.image.is_some()) {
        (Kind::Replicate, 1, _) => prediction(&base, id, "processing", None),
        (Kind::Replicate, _, true) => prediction(&base, id, "succeeded", Some(Ok(sample))),
        (Kind::Replicate, _, false) => prediction(
            &base,
            id,
            "failed",
            Some(Err(
                "NSFW content detected. Try running it again, or try a different prompt.".into(),
            )),
        ),
        (Kind::Fal, 1, _) => json!({"status": "IN_PROGRESS"}),
        (Kind::Fal, _, _) => json!({"status": "COMPLETED"}),
        (_, 1, _) => json!({"id": id, "status": "Pending", "result": null}),
        (_, _, true) => json!({"id": id, "status": "Ready", "result": {"sample": sample, "seed": 0}}),
        (_, _, false) => json!({"id": id, "status": "Content Moderated", "result": null}),
    };
    Ok(json_answer(200, &body))
}

/// `GET /sim/results/{id}/0.png`: the job's edited image.
fn result(rest: &str) -> Result<SimResponse, SimResponse> {
    let id = rest.split('/').next().unwrap_or_default();
    let jobs = JOBS.lock().unwrap_or_else(|e| e.into_inner());
    let image = jobs
        .iter()
        .find(|j| j.id == id)
        .and_then(|j| j.image.clone())
        .ok_or_else(|| json_answer(404, &json!({"detail": "no such result"})))?;
    Ok(SimResponse {
        status: 200,
        content_type: "image/png",
        body: image,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::imaging::{decode_png, encode_png, simulate_edit, solid};

    fn request(path: &str, query: Option<&str>, headers: &[(&str, &str)], body: &Value) -> SimRequest {
        let mut map = http::HeaderMap::new();
        map.insert("host", http::HeaderValue::from_static("sim.test:1"));
        for (k, v) in headers {
            map.insert(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        SimRequest::for_test(
            path.into(),
            query.map(str::to_string),
            map,
            serde_json::to_vec(body).unwrap().into(),
        )
    }

    fn answer(req: &SimRequest) -> SimResponse {
        match handle(req) {
            Some(SimAnswer::Whole(r)) => r,
            _ => panic!("no whole answer for {}", req.path),
        }
    }

    fn json(r: &SimResponse) -> Value {
        serde_json::from_slice(&r.body.to_vec()).unwrap()
    }

    fn png_b64() -> String {
        base64::engine::general_purpose::STANDARD.encode(encode_png(&solid(4, 3, [1, 2, 3, 255])).unwrap())
    }

    fn fetch_result(url: &str) -> Vec<u8> {
        let path = url.strip_prefix("http://sim.test:1").unwrap();
        let r = answer(&request(path, None, &[], &json!({})));
        assert_eq!((r.status, r.content_type), (200, "image/png"));
        r.body.to_vec()
    }

    #[test]
    fn bfl_submit_pending_then_ready_with_the_edit() {
        let key = [("x-key", "k")];
        let submit = answer(&request(
            "/v1/flux-kontext-pro",
            None,
            &key,
            &json!({"prompt": "red", "input_image": png_b64()}),
        ));
        assert_eq!(submit.status, 200);
        let url = json(&submit)["polling_url"].as_str().unwrap().to_string();
        let (path, query) = url.strip_prefix("http://sim.test:1").unwrap().split_once('?').unwrap();
        let first = answer(&request(path, Some(query), &key, &json!({})));
        assert_eq!(json(&first)["status"], "Pending");
        let second = json(&answer(&request(path, Some(query), &key, &json!({}))));
        assert_eq!(second["status"], "Ready");
        let png = decode_png(&fetch_result(second["result"]["sample"].as_str().unwrap())).unwrap();
        assert_eq!((png.width, png.height), (4, 3));
        let want = simulate_edit(&solid(4, 3, [1, 2, 3, 255]), None, "red", 0).unwrap();
        assert_eq!(png.pixels, want.pixels);
        assert_ne!(want.pixels[..4], [1, 2, 3, 255]);
        // No key: 401. Unknown path: not ours.
        assert_eq!(
            answer(&request("/v1/flux-kontext-pro", None, &[], &json!({}))).status,
            401
        );
        assert!(handle(&request("/v1/other", None, &[], &json!({}))).is_none());
    }

    #[test]
    fn fireworks_and_replicate_flows_and_hooks() {
        let bearer = [("authorization", "Bearer t")];
        let path = "/inference/v1/workflows/accounts/fireworks/models/flux-kontext-pro";
        let image = format!("data:image/png;base64,{}", png_b64());
        let id = json(&answer(&request(
            path,
            None,
            &bearer,
            &json!({"prompt": "p", "input_image": image}),
        )))["request_id"]
            .as_str()
            .unwrap()
            .to_string();
        let poll = |b: &[(&str, &str)]| {
            json(&answer(&request(
                &format!("{path}/get_result"),
                None,
                b,
                &json!({"id": id}),
            )))
        };
        assert_eq!(poll(&bearer)["status"], "Pending");
        assert_eq!(poll(&bearer)["status"], "Ready");
        // Replicate: starting → processing → succeeded; a moderated one fails with NSFW.
        let created = answer(&request(
            "/v1/models/black-forest-labs/flux-kontext-pro/predictions",
            None,
            &bearer,
            &json!({"input": {"prompt": "p", "input_image": image}}),
        ));
        assert_eq!(
            (created.status, json(&created)["status"].clone()),
            (201, json!("starting"))
        );
        let get = json(&created)["urls"]["get"].as_str().unwrap().to_string();
        let get_path = get.strip_prefix("http://sim.test:1").unwrap();
        assert_eq!(
            json(&answer(&request(get_path, None, &bearer, &json!({}))))["status"],
            "processing"
        );
        let done = json(&answer(&request(get_path, None, &bearer, &json!({}))));
        assert_eq!(done["status"], "succeeded");
        assert!(!fetch_result(done["output"].as_str().unwrap()).is_empty());
        let created = json(&answer(&request(
            "/v1/predictions",
            None,
            &bearer,
            &json!({"version": "v", "input": {"prompt": "simulate-moderated", "image": image}}),
        )));
        let get_path = created["urls"]["get"]
            .as_str()
            .unwrap()
            .strip_prefix("http://sim.test:1")
            .unwrap()
            .to_string();
        answer(&request(&get_path, None, &bearer, &json!({})));
        let failed = json(&answer(&request(&get_path, None, &bearer, &json!({}))));
        assert_eq!(failed["status"], "failed");
        assert!(failed["error"].as_str().unwrap().contains("NSFW"));
        let e = answer(&request(
            "/v1/models/a/b/predictions",
            None,
            &bearer,
            &json!({"input": {"prompt": "simulate-error:422", "image": image}}),
        ));
        assert_eq!(
            (e.status, json(&e)["detail"].clone()),
            (422, json!("simulated error 422"))
        );
    }

    #[test]
    fn fal_queue_through_the_router() {
        let bearer = [("authorization", "Bearer hf_x")];
        let queue = Some("_subdomain=queue");
        let image = format!("data:image/png;base64,{}", png_b64());
        let submit = answer(&request(
            "/fal-ai/fal-ai/flux-kontext/dev",
            queue,
            &bearer,
            &json!({"prompt": "blue", "image_url": image, "num_images": 2}),
        ));
        assert_eq!(submit.status, 200);
        let v = json(&submit);
        assert_eq!(v["status"], "IN_QUEUE");
        let id = v["request_id"].as_str().unwrap().to_string();
        assert_eq!(
            v["response_url"],
            format!("http://sim.test:1/fal-ai/flux-kontext/requests/{id}")
        );
        let queued = format!("/fal-ai/fal-ai/flux-kontext/requests/{id}");
        let status = |want: &str| {
            let r = answer(&request(&format!("{queued}/status"), queue, &bearer, &json!({})));
            assert_eq!((r.status, json(&r)["status"].clone()), (200, json!(want)));
        };
        status("IN_PROGRESS");
        status("COMPLETED");
        let r = json(&answer(&request(&queued, queue, &bearer, &json!({}))));
        assert_eq!(r["images"].as_array().unwrap().len(), 2);
        assert_eq!(r["has_nsfw_concepts"], json!([false, false]));
        let out = decode_png(&fetch_result(r["images"][0]["url"].as_str().unwrap())).unwrap();
        assert_eq!((out.width, out.height), (4, 3));
        // Strict: the queue query, the token and only fal's fields.
        let no_query = answer(&request(
            "/fal-ai/fal-ai/x/dev",
            None,
            &bearer,
            &json!({"image_url": image}),
        ));
        assert_eq!(no_query.status, 404);
        let no_token = answer(&request(
            "/fal-ai/fal-ai/x/dev",
            queue,
            &[],
            &json!({"image_url": image}),
        ));
        assert_eq!(no_token.status, 401);
        let odd = answer(&request(
            "/fal-ai/fal-ai/x/dev",
            queue,
            &bearer,
            &json!({"image_url": image, "strength": 0.5}),
        ));
        assert_eq!(
            (odd.status, json(&odd)["detail"].clone()),
            (422, json!("strength is not an image-to-image field"))
        );
        // sync_mode: data URLs in the result.
        let v = json(&answer(&request(
            "/fal-ai/fal-ai/flux-kontext/dev",
            queue,
            &bearer,
            &json!({"prompt": "p", "image_url": image, "sync_mode": true}),
        )));
        let queued = format!(
            "/fal-ai/fal-ai/flux-kontext/requests/{}",
            v["request_id"].as_str().unwrap()
        );
        for _ in 0..2 {
            answer(&request(&format!("{queued}/status"), queue, &bearer, &json!({})));
        }
        let r = json(&answer(&request(&queued, queue, &bearer, &json!({}))));
        assert!(r["images"][0]["url"]
            .as_str()
            .unwrap()
            .starts_with("data:image/png;base64,"));
    }

    #[test]
    fn jobs_are_bounded() {
        let mut jobs = VecDeque::new();
        for i in 0..MAX_JOBS + 5 {
            remember(
                &mut jobs,
                Job {
                    id: i.to_string(),
                    kind: Kind::Bfl,
                    polls: 0,
                    count: 1,
                    inline: false,
                    image: None,
                },
            );
        }
        assert_eq!(jobs.len(), MAX_JOBS);
        assert_eq!(jobs[0].id, "5");
    }
}
