//! Async image edits end to end (`/v1/async/images/edits`, also under `/openai`): raw HTTP
//! against gateways on loopback, a mock provider that holds its answer until the test lets it
//! go ([`Gate`]), and real engines for the state.
//!
//! - `api`: one gateway in this process (embedded store and fs objects on a temp dir): the
//!   lifecycle, submit-time errors, failed jobs and fallbacks, owner binding, the result TTL
//!   and the cleaner, cancel, large results, metrics.
//! - `process`: the `refract` binary as processes: `kill -9` during a job then restart (taken
//!   over, or `job_abandoned` once its attempts are used up), SIGTERM (the job is handed back),
//!   two replicas on one `redis-server` and one moto S3 bucket.
//!
//! Every wait has a deadline; no timing is asserted.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "../common/mod.rs"]
mod common;

mod api;
mod process;

use common::*;
use serde_json::Value;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

/// The submit path (Bifrost's).
const SUBMIT: &str = "/v1/async/images/edits";
/// The submit path under `/openai`.
const SUBMIT_OPENAI: &str = "/openai/v1/async/images/edits";

/// How long a job may take to reach a state before the test fails.
const JOB_DEADLINE: Duration = Duration::from_secs(30);

/// The `store:`, `objects:` and `jobs:` sections of a gateway keeping its state under `dir`
/// (`dir/db`, `dir/objects`); `jobs` holds the section's lines (at least one).
fn embedded_sections(dir: &Path, jobs: &str) -> String {
    format!(
        "store:\n  kind: embedded\n  path: {}\nobjects:\n  kind: fs\n  path: {}\njobs:\n{jobs}",
        dir.join("db").display(),
        objects_dir(dir).display()
    )
}

/// Where [`embedded_sections`] puts the objects.
fn objects_dir(dir: &Path) -> PathBuf {
    dir.join("objects")
}

/// Every object below `dir` (relative paths, sorted; the gateway's own `.url-secret` is not
/// one); none when `dir` does not exist.
fn files_below(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.map_while(Result::ok) {
            let path = entry.path();
            if path.is_dir() {
                walk(root, &path, out);
            } else if entry.file_name() != ".url-secret" {
                out.push(path.strip_prefix(root).unwrap().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}

/// Sends `form` to `path` on `addr` with `headers`.
fn submit_raw(addr: SocketAddr, path: &str, form: &Form, headers: &[(&str, &str)]) -> Response {
    let mut c = Conn::open(addr);
    c.send(&post_head(path, headers, form, None));
    c.send(&form.body());
    c.read_response()
}

/// Submits `form` to `path` with key `vk` (and `headers`); asserts the 202 and its body
/// (`{id, status: "pending", created_at}`, nothing else) and returns the job's id.
fn submit_to(addr: SocketAddr, path: &str, form: &Form, vk: &str, headers: &[(&str, &str)]) -> String {
    let mut all = vec![("x-bf-vk", vk)];
    all.extend_from_slice(headers);
    let r = submit_raw(addr, path, form, &all);
    assert_eq!(r.status, 202, "{}", r.text());
    assert!(
        r.header("content-type")
            .unwrap_or_default()
            .starts_with("application/json"),
        "{:?}",
        r.headers
    );
    let v = r.json();
    let fields: Vec<&String> = v.as_object().unwrap().keys().collect();
    assert_eq!(fields.len(), 3, "{v}");
    assert_eq!(v["status"], "pending", "{v}");
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 22, "{v}");
    let created = time_of(&v, "created_at");
    let now = SystemTime::now();
    let skew = Duration::from_secs(120);
    assert!(created <= now + skew && created + skew >= now, "{v}");
    id
}

/// Submits [`valid_form`] to [`SUBMIT`] with key [`VK`]; the job's id.
fn submit(addr: SocketAddr) -> String {
    submit_to(addr, SUBMIT, &valid_form(), VK, &[])
}

/// Field `name` of job `v`, an RFC 3339 time.
fn time_of(v: &Value, name: &str) -> SystemTime {
    let text = v[name].as_str().unwrap_or_else(|| panic!("no {name}: {v}"));
    humantime::parse_rfc3339(text).unwrap_or_else(|e| panic!("{name} is not RFC 3339 ({e}): {v}"))
}

/// A request without a body: `method path` with `headers`.
fn call(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    Gateway::call(addr, method, path, headers)
}

/// `GET` job `id` as key `vk`.
fn poll(addr: SocketAddr, id: &str, vk: &str) -> Response {
    call(addr, "GET", &format!("{SUBMIT}/{id}"), &[("x-bf-vk", vk)])
}

/// `DELETE` job `id` as key `vk`.
fn cancel(addr: SocketAddr, id: &str, vk: &str) -> Response {
    call(addr, "DELETE", &format!("{SUBMIT}/{id}"), &[("x-bf-vk", vk)])
}

/// Polls job `id` (key [`VK`]) until its status is `status`, within [`JOB_DEADLINE`]; fails
/// at once if it ends in another status. Checks the poll's HTTP status on the way (202 while
/// pending or processing, 200 once it has ended) and returns the last answer's body.
fn wait_status(addr: SocketAddr, id: &str, status: &str) -> Value {
    let deadline = Instant::now() + JOB_DEADLINE;
    loop {
        let r = poll(addr, id, VK);
        let v = r.json();
        let now = v["status"]
            .as_str()
            .unwrap_or_else(|| panic!("{} {v}", r.status))
            .to_string();
        let running = matches!(now.as_str(), "pending" | "processing");
        assert_eq!(r.status, if running { 202 } else { 200 }, "{v}");
        if now == status {
            return v;
        }
        assert!(running, "job {id} ended {now}, not {status}: {v}");
        assert!(
            Instant::now() < deadline,
            "job {id} still {now} after {JOB_DEADLINE:?}: {v}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Waits up to [`JOB_DEADLINE`] until `done` holds.
fn wait_long(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + JOB_DEADLINE;
    while !done() {
        assert!(Instant::now() < deadline, "not within {JOB_DEADLINE:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `refract_jobs_total{event="…"}`.
fn event(name: &str) -> String {
    format!("refract_jobs_total{{event=\"{name}\"}}")
}
