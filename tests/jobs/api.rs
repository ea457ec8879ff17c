//! The async API against one gateway in this process (embedded store, fs objects on a temp
//! dir) in front of a mock provider.

use super::*;
use serde_json::json;

/// A gateway keeping its state in `dir`, in front of `mock`.
struct Api {
    mock: MockUpstream,
    gw: Gateway,
    dir: tempfile::TempDir,
}

impl Api {
    /// A gateway whose `jobs:` section has the lines `jobs`.
    fn start(jobs: &str) -> Api {
        Api::start_with(jobs, |_| {})
    }

    /// [`Api::start`] with the setup changed by `change` first.
    fn start_with(jobs: &str, change: impl FnOnce(&mut Setup)) -> Api {
        let mock = MockUpstream::start();
        let dir = tempfile::tempdir().unwrap();
        let mut setup = Setup::new(&mock.base_url());
        setup.sections = embedded_sections(dir.path(), jobs);
        change(&mut setup);
        let gw = Gateway::start(&setup);
        Api { mock, gw, dir }
    }

    fn addr(&self) -> SocketAddr {
        self.gw.addr
    }

    /// Every file in the objects directory.
    fn objects(&self) -> Vec<String> {
        files_below(&objects_dir(self.dir.path()))
    }
}

/// The `b64_json` of each image of answer `v`.
fn images(v: &Value) -> Vec<String> {
    v["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|d| d["b64_json"].as_str().expect("b64_json").to_string())
        .collect()
}

/// The answer of a provider that took its time: [`default_success`], held by `gate`.
fn held(gate: &Gate) -> Reply {
    gate.hold(Reply::json(200, &default_success()))
}

/// Submit → 202 pending → 202 processing while the provider holds → 200 completed with the
/// synchronous answer as `result`, `completed_at`, and `expires_at` one TTL later; on both
/// paths, with and without `x-bf-async-job-result-ttl`.
#[test]
fn a_job_runs_from_submit_to_its_result() {
    let api = Api::start("  workers: 2\n");
    let sync = api.gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_eq!(sync.status, 200, "{}", sync.text());
    let sync = sync.json();
    for (path, ttl, expected_ttl) in [(SUBMIT, None, 3600), (SUBMIT_OPENAI, Some("120"), 120)] {
        let gate = Gate::new();
        api.mock.push(held(&gate));
        let before = api.mock.received();
        let headers: Vec<(&str, &str)> = ttl.map(|t| ("x-bf-async-job-result-ttl", t)).into_iter().collect();
        let id = submit_to(api.addr(), path, &valid_form(), VK, &headers);
        let first = poll(api.addr(), &id, VK);
        assert_eq!(first.status, 202, "{}", first.text());
        let v = first.json();
        assert!(matches!(v["status"].as_str(), Some("pending" | "processing")), "{v}");
        assert_eq!(v["id"], id.as_str());
        assert!(v.get("result").is_none() && v.get("completed_at").is_none(), "{v}");
        wait_long("the provider gets the job's request", || api.mock.received() > before);
        let v = wait_status(api.addr(), &id, "processing");
        assert!(v.get("result").is_none(), "{v}");
        // The same poll under /openai.
        let r = call(api.addr(), "GET", &format!("{SUBMIT_OPENAI}/{id}"), &[("x-bf-vk", VK)]);
        assert_eq!((r.status, r.json()["status"].clone()), (202, json!("processing")));
        gate.open();
        let done = wait_status(api.addr(), &id, "completed");
        let result = &done["result"];
        assert_eq!(result["data"], sync["data"], "{done}");
        assert_eq!(result["usage"], sync["usage"], "{done}");
        assert_eq!(result["extra_fields"]["provider"], "openai", "{done}");
        assert_eq!(
            result["extra_fields"]["model_requested"],
            sync["extra_fields"]["model_requested"]
        );
        let keys = |v: &Value| v.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
        assert_eq!(keys(result), keys(&sync), "the sync answer's shape");
        assert!(
            done.get("error").is_none() && done.get("status_code").is_none(),
            "{done}"
        );
        let completed = time_of(&done, "completed_at");
        assert!(completed >= time_of(&done, "created_at"), "{done}");
        let expires = time_of(&done, "expires_at");
        assert_eq!(
            expires.duration_since(completed).unwrap(),
            Duration::from_secs(expected_ttl),
            "{done}"
        );
        // The upstream request was the synchronous one's.
        let recorded = api.mock.requests();
        let (job_request, sync_request) = (&recorded[recorded.len() - 1], &recorded[0]);
        assert_eq!(job_request.path, sync_request.path);
        assert_eq!(
            parse_multipart(&job_request.header("content-type").unwrap(), &job_request.body)
                .iter()
                .map(|p| (p.name.clone(), p.data.clone()))
                .collect::<Vec<_>>(),
            parse_multipart(&sync_request.header("content-type").unwrap(), &sync_request.body)
                .iter()
                .map(|p| (p.name.clone(), p.data.clone()))
                .collect::<Vec<_>>()
        );
        // Polled again: the same.
        assert_eq!(wait_status(api.addr(), &id, "completed"), done);
    }
}

/// A job's result carries the cost of its answer (as the synchronous answer does), and the
/// job's answer is counted in the cost and image metrics.
#[test]
fn a_jobs_answer_is_priced_and_counted() {
    let api = Api::start("  workers: 1\n");
    let id = submit(api.addr());
    let done = wait_status(api.addr(), &id, "completed");
    // gpt-image-1 at its token rates: the mock reports 10 input and 20 output tokens.
    assert_eq!(done["result"]["extra_fields"]["cost"], json!(0.0009), "{done}");
    let text = String::from_utf8(Gateway::get(api.gw.metrics, "/metrics").body).unwrap();
    assert_eq!(
        metric_in(&text, "refract_images_total{model=\"gpt-image-1\",provider=\"openai\"}"),
        1.0,
        "{text}"
    );
    assert!((metric_in(&text, "refract_cost_usd_total{provider=\"openai\"}") - 0.0009).abs() < 1e-9);
}

/// Every validation, key and capability error is answered at submit time, as the synchronous
/// path answers it, and nothing is stored for it.
#[test]
fn submit_time_errors_are_answered_at_once_and_store_nothing() {
    let api = Api::start_with("  workers: 2\n", |s| {
        s.limits = "  max_body_bytes: 262144\n".into();
    });
    let addr = api.addr();
    let send = |form: &Form, headers: &[(&str, &str)]| submit_raw(addr, SUBMIT, form, headers);
    let vk = [("x-bf-vk", VK)];
    // No key; a key that may not use the provider.
    let r = send(&valid_form(), &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.json()["is_bifrost_error"], true);
    let other = Form::new().text("model", "other/gpt-image-1").text("prompt", "p").file(
        "image",
        "a.png",
        "image/png",
        &tiny_png(),
    );
    let r = send(&other, &[("x-bf-vk", VK_RESTRICTED)]);
    assert_gateway_error(&r, 403, "provider_blocked", "permission_error", None);
    // A bad field; stream=true; an unknown provider.
    assert_invalid(&send(&valid_form().text("size", "999x999"), &vk), "size");
    let v = assert_invalid(&send(&valid_form().text("stream", "true"), &vk), "stream");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("stream is not supported for async image edits"),
        "{v}"
    );
    let unknown = Form::new()
        .text("model", "nosuchprovider/gpt-image-1")
        .text("prompt", "p")
        .file("image", "a.png", "image/png", &tiny_png());
    assert_gateway_error(
        &send(&unknown, &vk),
        400,
        "unknown_provider",
        "invalid_request_error",
        Some("model"),
    );
    // A capability the provider's kind lacks (OpenAI's Images API cannot remove a background).
    assert_gateway_error(
        &send(&valid_form().text("type", "background_removal"), &vk),
        400,
        "unsupported_operation",
        "invalid_request_error",
        Some("type"),
    );
    // A body over max_body_bytes.
    let big = valid_form().file("image[]", "big.png", "image/png", &big_png_like(300_000, 3));
    let r = send(&big, &vk);
    assert_gateway_error(&r, 413, "payload_too_large", "invalid_request_error", None);
    // Nothing was stored, nothing ran.
    assert_eq!(api.objects(), Vec::<String>::new());
    assert_eq!(api.gw.metric(&event("submitted")), 0.0);
    assert_eq!(api.gw.metric(&event("claimed")), 0.0);
    assert_eq!(api.mock.received(), 0);
    let store = refract::state::embedded::EmbeddedJobs::open(&api.dir.path().join("db")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    rt.block_on(async {
        use refract::state::JobStore;
        let now = refract::state::now_ms();
        let counts = store.counts(now).await.unwrap();
        assert_eq!((counts.runnable, counts.running), (0, 0), "no unfinished job");
        let ended = store.remove_expired(u64::MAX / 2, 100).await.unwrap();
        assert!(
            ended.is_empty(),
            "no finished job: {:?}",
            ended.iter().map(|j| &j.id).collect::<Vec<_>>()
        );
    });
    // A valid submission is stored (the checks above can see one).
    let id = submit(addr);
    wait_status(addr, &id, "completed");
    assert!(
        api.objects().iter().any(|o| o.starts_with("uploads/")),
        "{:?}",
        api.objects()
    );
}

/// A provider error ends the job `failed` (polled with 200) with the error's status and the
/// body a synchronous request gets; a fallback answers inside a job.
#[test]
fn provider_errors_fail_the_job_and_fallbacks_answer_it() {
    let api = Api::start("  workers: 2\n");
    let refusal = Reply::json(
        400,
        &json!({"error": {"message": "the prompt was refused", "type": "invalid_request_error", "code": "moderation_blocked"}}),
    );
    api.mock.push(refusal.clone());
    let sync = api.gw.edit(&valid_form(), &[("x-bf-vk", VK)]);
    assert_eq!(sync.status, 400, "{}", sync.text());
    let sync = sync.json();
    api.mock.push(refusal);
    let id = submit(api.addr());
    let failed = wait_status(api.addr(), &id, "failed");
    assert_eq!(failed["status_code"], 400, "{failed}");
    assert!(failed.get("result").is_none(), "{failed}");
    time_of(&failed, "completed_at");
    time_of(&failed, "expires_at");
    let error = &failed["error"];
    assert_eq!(error["is_bifrost_error"], sync["is_bifrost_error"], "{failed}");
    assert_eq!(error["status_code"], 400, "{failed}");
    assert_eq!(error["error"], sync["error"], "{failed}");
    assert!(
        error["error"]["message"]
            .as_str()
            .unwrap()
            .contains("the prompt was refused"),
        "{failed}"
    );
    assert_eq!(error["extra_fields"]["provider"], "openai", "{failed}");

    // The primary fails (every time); the fallback `other` (same upstream, its own key) answers.
    api.mock.respond_with(|r| {
        if r.header("authorization").as_deref() == Some(&format!("Bearer {PROVIDER_KEY}")) {
            Reply::json(500, &json!({"error": {"message": "down", "type": "server_error"}}))
        } else {
            Reply::json(200, &default_success())
        }
    });
    let form = valid_form().text("fallbacks", "other/gpt-image-1");
    let id = submit_to(api.addr(), SUBMIT, &form, VK, &[]);
    let done = wait_status(api.addr(), &id, "completed");
    assert_eq!(done["result"]["extra_fields"]["provider"], "other", "{done}");
    assert_eq!(done["result"]["extra_fields"]["fallback_index"], 1, "{done}");
    assert_eq!(images(&done["result"]), images(&default_success()), "{done}");
    let keys: Vec<Option<String>> = api.mock.requests().iter().map(|r| r.header("authorization")).collect();
    assert!(keys.contains(&Some(format!("Bearer {OTHER_PROVIDER_KEY}"))), "{keys:?}");
}

/// Only the submitter reads or cancels a job: another valid key gets the 404 of an unknown id;
/// a malformed id is a 404; no key is a 401.
#[test]
fn only_the_submitter_sees_its_job() {
    let api = Api::start("  workers: 2\n");
    let addr = api.addr();
    let gate = Gate::new();
    api.mock.push(held(&gate));
    let id = submit(addr);
    let unknown = poll(addr, "AAAAAAAAAAAAAAAAAAAAAA", VK_RESTRICTED);
    let unknown_body = assert_gateway_error(&unknown, 404, "job_not_found", "not_found_error", None);
    let strip = |mut v: Value| {
        // What differs between two requests.
        for field in ["request_id", "event_id"] {
            v.as_object_mut().unwrap().remove(field);
            if let Some(e) = v.get_mut("error").and_then(Value::as_object_mut) {
                e.remove(field);
            }
        }
        v
    };
    for r in [poll(addr, &id, VK_RESTRICTED), cancel(addr, &id, VK_RESTRICTED)] {
        assert_eq!(r.status, 404, "{}", r.text());
        assert_eq!(strip(r.json()), strip(unknown_body.clone()));
        assert!(!r.text().contains(&id), "{}", r.text());
    }
    for bad in [
        "not-a-job",
        "AAAAAAAAAAAAAAAAAAAAA%3D",
        "..%2F..%2Fetc%2Fpasswd",
        &"A".repeat(200),
    ] {
        let r = poll(addr, bad, VK);
        assert_eq!(r.status, 404, "{bad}: {}", r.text());
        assert_eq!(r.json()["error"]["code"], "job_not_found", "{bad}");
        assert_eq!(cancel(addr, bad, VK).status, 404, "{bad}");
    }
    let r = call(addr, "GET", &format!("{SUBMIT}/{id}"), &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    let r = call(addr, "DELETE", &format!("{SUBMIT}/{id}"), &[]);
    assert_eq!(r.status, 401, "{}", r.text());
    // The other key's cancel did nothing: the owner's job completes.
    gate.open();
    wait_status(addr, &id, "completed");
    // The owner may use `Authorization: Bearer` as well.
    let r = call(
        addr,
        "GET",
        &format!("{SUBMIT}/{id}"),
        &[("authorization", &format!("Bearer {VK}"))],
    );
    assert_eq!((r.status, r.json()["status"].clone()), (200, json!("completed")));
}

/// An answer of `len` bytes or more: one image of `len` base64 characters.
fn large_answer(len: usize) -> Value {
    let b64: String = (0..len).map(|i| (b'A' + (i % 26) as u8) as char).collect();
    json!({"created": 1_713_833_628, "data": [{"b64_json": b64}]})
}

/// With `x-bf-async-job-result-ttl: 1`, a finished job is a 404 once a second has passed and
/// the cleaner removes its upload and its result object; an invalid TTL is the default.
#[test]
fn a_short_result_ttl_expires_the_job_and_its_objects() {
    let api = Api::start("  workers: 2\n  cleanup_interval_ms: 100\n");
    let addr = api.addr();
    api.mock.push(Reply::json(200, &large_answer(100_000)));
    let id = submit_to(addr, SUBMIT, &valid_form(), VK, &[("x-bf-async-job-result-ttl", "1")]);
    let done = wait_status(addr, &id, "completed");
    let completed = time_of(&done, "completed_at");
    assert_eq!(
        time_of(&done, "expires_at").duration_since(completed).unwrap(),
        Duration::from_secs(1)
    );
    let objects = api.objects();
    assert!(objects.iter().any(|o| o.starts_with("uploads/")), "{objects:?}");
    assert!(objects.contains(&format!("results/{id}.json")), "{objects:?}");
    wait_long("the job expires", || poll(addr, &id, VK).status == 404);
    let r = poll(addr, &id, VK);
    assert_eq!(r.json()["error"]["code"], "job_not_found");
    wait_long("the cleaner removes its objects", || api.objects().is_empty());
    // A cancelled job expires the same way: its upload does not stay behind.
    let gate = Gate::new();
    api.mock.push(held(&gate));
    let id = submit_to(addr, SUBMIT, &valid_form(), VK, &[("x-bf-async-job-result-ttl", "1")]);
    wait_status(addr, &id, "processing");
    assert_eq!(cancel(addr, &id, VK).status, 200);
    assert!(!api.objects().is_empty());
    wait_long("the cancelled job expires", || poll(addr, &id, VK).status == 404);
    wait_long("the cleaner removes its upload", || api.objects().is_empty());
    gate.open();
    // Not a number, zero, negative: the default TTL (3600 s).
    for value in ["soon", "0", "-5"] {
        let id = submit_to(addr, SUBMIT, &valid_form(), VK, &[("x-bf-async-job-result-ttl", value)]);
        let done = wait_status(addr, &id, "completed");
        assert_eq!(
            time_of(&done, "expires_at")
                .duration_since(time_of(&done, "completed_at"))
                .unwrap(),
            Duration::from_secs(3600),
            "{value}: {done}"
        );
    }
}

/// DELETE: a pending job is cancelled and never reaches the provider; a running one is
/// cancelled and its worker drops the upstream exchange; a finished one is a 409.
#[test]
fn cancel_stops_pending_and_running_jobs_and_refuses_finished_ones() {
    // One worker with a short lease: it notices a cancel within a third of a second.
    let api = Api::start("  workers: 1\n  lease_ms: 1000\n");
    let addr = api.addr();
    let gate = Gate::new();
    api.mock.push(held(&gate));
    let running = submit(addr);
    wait_long("the first job reaches the provider", || api.mock.received() == 1);
    // The only worker is busy: the second job waits.
    let pending = submit(addr);
    assert_eq!(poll(addr, &pending, VK).json()["status"], "pending");
    let r = cancel(addr, &pending, VK);
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(
        (v["id"].as_str(), v["status"].as_str()),
        (Some(pending.as_str()), Some("cancelled"))
    );
    let v = wait_status(addr, &pending, "cancelled");
    assert!(v.get("result").is_none(), "{v}");
    // Cancel the running job: the worker gives up its upstream connection.
    let closed = api.mock.closed();
    let r = cancel(addr, &running, VK);
    assert_eq!(
        (r.status, r.json()["status"].clone()),
        (200, json!("cancelled")),
        "{}",
        r.text()
    );
    wait_long("the worker drops the held exchange", || api.mock.closed() > closed);
    wait_long("the run is counted as stopped", || api.gw.metric(&event("lost")) >= 1.0);
    gate.open();
    // A third job runs next; the cancelled pending one never ran.
    let third = submit(addr);
    wait_status(addr, &third, "completed");
    assert_eq!(
        api.mock.received(),
        2,
        "the cancelled pending job never reached the provider"
    );
    wait_status(addr, &running, "cancelled");
    wait_status(addr, &pending, "cancelled");
    assert_eq!(api.gw.metric(&event("cancelled")), 2.0);
    assert_eq!(api.gw.metric(&event("completed")), 1.0);
    // Finished or cancelled already: 409, and the job stays as it was.
    for (id, status) in [(&third, "completed"), (&running, "cancelled")] {
        let r = cancel(addr, id, VK);
        let v = assert_gateway_error(&r, 409, "job_finished", "invalid_request_error", None);
        assert!(v["error"]["message"].as_str().unwrap().contains(status), "{v}");
        wait_status(addr, id, status);
    }
}

/// An answer over 64 KiB is stored as `results/{id}.json` and the poll reads it back byte for
/// byte.
#[test]
fn a_large_result_is_stored_as_an_object_and_read_back_exactly() {
    let api = Api::start("  workers: 2\n");
    let addr = api.addr();
    let answer = large_answer(200_000);
    api.mock.push(Reply::json(200, &answer));
    let id = submit(addr);
    let done = wait_status(addr, &id, "completed");
    assert!(
        images(&done["result"]) == images(&answer),
        "the image as the provider sent it"
    );
    let stored = std::fs::read(objects_dir(api.dir.path()).join(format!("results/{id}.json"))).unwrap();
    assert!(stored.len() > 64 * 1024, "{}", stored.len());
    let body = poll(addr, &id, VK).body;
    let at = body
        .windows(9)
        .position(|w| w == b"\"result\":")
        .map(|i| i + 9)
        .expect("a result field");
    assert_eq!(&body[at..at + stored.len()], stored.as_slice(), "byte-exact");
    assert_eq!(
        api.gw.metric("refract_objects_stored_bytes_total{kind=\"result\"}"),
        stored.len() as f64
    );
    // A small answer stays in the record: no result object.
    let small = submit(addr);
    wait_status(addr, &small, "completed");
    assert!(!api.objects().contains(&format!("results/{small}.json")));
}

/// The job series exist from startup and move as jobs run.
#[test]
fn job_metrics_are_there_from_startup_and_move() {
    let api = Api::start("  workers: 1\n  cleanup_interval_ms: 100\n");
    let text = api.gw.metrics_text();
    for series in [
        event("submitted"),
        event("claimed"),
        event("completed"),
        event("failed"),
        event("cancelled"),
        event("released"),
        event("lost"),
        "refract_jobs{state=\"runnable\"}".to_string(),
        "refract_jobs{state=\"running\"}".to_string(),
        "refract_job_duration_seconds_count{outcome=\"completed\"}".to_string(),
        "refract_job_duration_seconds_count{outcome=\"failed\"}".to_string(),
        "refract_job_lease_takeovers_total".to_string(),
        "refract_objects_stored_bytes_total{kind=\"upload\"}".to_string(),
        "refract_objects_stored_bytes_total{kind=\"result\"}".to_string(),
    ] {
        assert!(
            text.lines().any(|l| l.strip_prefix(series.as_str()) == Some(" 0")),
            "{series} 0 at startup:\n{text}"
        );
    }
    let gate = Gate::new();
    api.mock.push(held(&gate));
    let id = submit(api.addr());
    wait_long("the gauge counts the running job", || {
        api.gw.metric("refract_jobs{state=\"running\"}") == 1.0
    });
    // The only worker is busy: a second job is runnable.
    api.mock.always(Reply::json(
        500,
        &json!({"error": {"message": "down", "type": "server_error"}}),
    ));
    let second = submit(api.addr());
    wait_long("the gauge counts the waiting job", || {
        api.gw.metric("refract_jobs{state=\"runnable\"}") == 1.0
    });
    assert_eq!(api.gw.metric(&event("submitted")), 2.0);
    assert_eq!(api.gw.metric(&event("claimed")), 1.0);
    assert!(api.gw.metric("refract_objects_stored_bytes_total{kind=\"upload\"}") > 0.0);
    gate.open();
    wait_status(api.addr(), &id, "completed");
    wait_status(api.addr(), &second, "failed");
    let text = api.gw.metrics_text();
    assert_eq!(metric_in(&text, &event("claimed")), 2.0);
    assert_eq!(metric_in(&text, &event("completed")), 1.0);
    assert_eq!(metric_in(&text, &event("failed")), 1.0);
    assert_eq!(
        metric_in(&text, "refract_job_duration_seconds_count{outcome=\"completed\"}"),
        1.0
    );
    assert_eq!(
        metric_in(&text, "refract_job_duration_seconds_count{outcome=\"failed\"}"),
        1.0
    );
    wait_long("the gauges go back to zero", || {
        let text = api.gw.metrics_text();
        metric_in(&text, "refract_jobs{state=\"running\"}") == 0.0
            && metric_in(&text, "refract_jobs{state=\"runnable\"}") == 0.0
    });
}

/// An upload larger than the spool's memory (spilled to disk at submit time) with several
/// images and a mask reaches the provider byte for byte when the job runs.
#[test]
fn every_file_of_a_large_upload_reaches_the_provider_intact() {
    let api = Api::start("  workers: 2\n");
    let big = big_png_like(300_000, 7);
    let second = gradient_png();
    let mask = unified_mask_png();
    let form = Form::new()
        .text("model", "openai/gpt-image-1")
        .text("prompt", "two images and a mask")
        .file("image[]", "big.png", "image/png", &big)
        .file("image[]", "second.png", "image/png", &second)
        .file("mask", "mask.png", "image/png", &mask);
    let id = submit_to(api.addr(), SUBMIT, &form, VK, &[]);
    let upload: u64 = api
        .objects()
        .iter()
        .filter(|o| o.starts_with("uploads/"))
        .map(|o| std::fs::metadata(objects_dir(api.dir.path()).join(o)).unwrap().len())
        .sum();
    assert!(upload >= 300_000, "the upload is stored before the 202: {upload} bytes");
    wait_status(api.addr(), &id, "completed");
    let sent = api.mock.only_request();
    let parts = parse_multipart(&sent.header("content-type").unwrap(), &sent.body);
    let files: Vec<(String, usize)> = parts
        .iter()
        .filter(|p| p.filename.is_some())
        .map(|p| (p.name.clone(), p.data.len()))
        .collect();
    let data = |name: &str| -> Vec<&[u8]> { parts_named(&parts, name).iter().map(|p| p.data.as_slice()).collect() };
    assert_eq!(data("image[]"), vec![big.as_slice(), second.as_slice()], "{files:?}");
    assert_eq!(data("prompt"), vec![b"two images and a mask".as_slice()]);
    assert_eq!(data("mask").len(), 1, "{files:?}");
    assert_eq!(
        api.gw.metric("refract_objects_stored_bytes_total{kind=\"upload\"}"),
        upload as f64
    );
}

/// The job routes take only their methods (405 with `Allow`).
#[test]
fn job_routes_refuse_other_methods() {
    let api = Api::start("  workers: 1\n");
    let id = submit(api.addr());
    let r = call(api.addr(), "PUT", &format!("{SUBMIT}/{id}"), &[("x-bf-vk", VK)]);
    assert_eq!(r.status, 405, "{}", r.text());
    assert_eq!(r.header("allow").as_deref(), Some("GET, DELETE"));
    for path in [SUBMIT, SUBMIT_OPENAI] {
        let r = call(api.addr(), "GET", path, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 405, "{}", r.text());
        assert_eq!(r.header("allow").as_deref(), Some("POST"));
    }
    wait_status(api.addr(), &id, "completed");
}
