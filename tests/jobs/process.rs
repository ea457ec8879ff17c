//! Jobs across processes: the `refract` binary killed (`kill -9`) or stopped (SIGTERM) while a
//! job runs and started again on the same state, and two replicas on one `redis-server` and
//! one moto S3 bucket.

use super::*;
use common::engines::{redis_server, s3_keys, s3_server, S3_BUCKET};
use common::process::Refract;

/// A gateway with the state sections `sections` in front of provider `openai` at `upstream`
/// (virtual key [`VK`]); returns once both listeners accept.
fn start(sections: &str, upstream: &str) -> Refract {
    let yaml = |listen: SocketAddr, metrics: SocketAddr, dir: &std::path::Path| {
        format!(
            "server:
  threads: 2
  # Jobs running at SIGTERM are handed back within the grace period (Pingora stops the
  # runtimes, and every task on them, once it ends).
  grace_period_seconds: 1
  graceful_shutdown_timeout_seconds: 5
  pid_file: {d}/refract.pid
  upgrade_sock: {d}/upgrade.sock
listeners:
  - address: {listen}
metrics:
  address: {metrics}
{sections}providers:
  - name: openai
    kind: openai
    base_url: {upstream}
    first_byte_timeout_ms: 60000
    keys:
      - name: primary
        value: {PROVIDER_KEY}
virtual_keys:
  - id: team-a
    key: {VK}
",
            d = dir.display()
        )
    };
    Refract::start(yaml, &[("S3_ID", "testing"), ("S3_KEY", "testing")])
}

/// A provider whose first answer is held (by a gate nobody opens: the gateway holding it dies
/// first), and every later one [`default_success`].
fn provider_holding_its_first_answer() -> MockUpstream {
    let mock = MockUpstream::start();
    mock.push(Gate::new().hold(Reply::json(200, &default_success())));
    mock
}

/// Submits a job to `gw` and waits until the provider holds it (its worker runs it).
fn submit_held(gw: &Refract, mock: &MockUpstream) -> String {
    let before = mock.received();
    let id = submit(gw.addr);
    wait_long("the job reaches the provider", || mock.received() > before);
    assert_eq!(poll(gw.addr, &id, VK).json()["status"], "processing");
    id
}

/// `kill -9` while a job runs, then a restart on the same store and objects: the new process
/// takes the job over once its lease passes and the client gets its image.
#[test]
fn a_job_survives_kill_9_and_a_restart() {
    let mock = provider_holding_its_first_answer();
    let dir = tempfile::tempdir().unwrap();
    let sections = embedded_sections(dir.path(), "  workers: 2\n  lease_ms: 1000\n  max_attempts: 3\n");
    let mut first = start(&sections, &mock.base_url());
    let id = submit_held(&first, &mock);
    first.kill9();
    let second = start(&sections, &mock.base_url());
    let done = wait_status(second.addr, &id, "completed");
    assert_eq!(done["result"]["data"].as_array().map(Vec::len), Some(2), "{done}");
    assert_eq!(done["result"]["extra_fields"]["provider"], "openai", "{done}");
    assert_eq!(mock.received(), 2, "called again by the new process");
    assert_eq!(second.metric("refract_job_lease_takeovers_total"), 1.0);
    assert_eq!(second.metric(&event("completed")), 1.0);
    assert!(
        second.log().contains(&format!("job {id}: taken over")),
        "{}",
        second.log()
    );
}

/// A job whose worker died as many times as `jobs.max_attempts` allows fails with
/// `job_abandoned` instead of staying pending or processing.
#[test]
fn a_job_out_of_attempts_fails_as_abandoned() {
    let mock = provider_holding_its_first_answer();
    let dir = tempfile::tempdir().unwrap();
    let sections = embedded_sections(dir.path(), "  workers: 2\n  lease_ms: 1000\n  max_attempts: 1\n");
    let mut first = start(&sections, &mock.base_url());
    let id = submit_held(&first, &mock);
    first.kill9();
    let second = start(&sections, &mock.base_url());
    let failed = wait_status(second.addr, &id, "failed");
    assert_eq!(failed["status_code"], 500, "{failed}");
    assert_eq!(failed["error"]["error"]["type"], "job_abandoned", "{failed}");
    assert_eq!(failed["error"]["is_bifrost_error"], true, "{failed}");
    time_of(&failed, "expires_at");
    assert_eq!(mock.received(), 1, "not run again");
}

/// SIGTERM while a job runs: the worker hands it back (pending again, the attempt not
/// counted), and a restarted gateway completes it without waiting for the lease.
#[test]
fn sigterm_hands_a_running_job_back() {
    let mock = provider_holding_its_first_answer();
    let dir = tempfile::tempdir().unwrap();
    // A lease far longer than the test's deadline, and one attempt: only a job that was handed
    // back can run again in time.
    let jobs = "  lease_ms: 600000\n  max_attempts: 1\n";
    let sections = embedded_sections(dir.path(), &format!("  workers: 1\n{jobs}"));
    let mut first = start(&sections, &mock.base_url());
    let id = submit_held(&first, &mock);
    first.terminate(JOB_DEADLINE);
    assert!(
        first.log().contains(&format!("job {id}: handed back to the queue")),
        "{}",
        first.log()
    );
    // A replica without workers sees it pending again.
    let idle = start(
        &embedded_sections(dir.path(), &format!("  workers: 0\n{jobs}")),
        &mock.base_url(),
    );
    let v = poll(idle.addr, &id, VK);
    assert_eq!(
        (v.status, v.json()["status"].clone()),
        (202, serde_json::json!("pending"))
    );
    drop(idle);
    let second = start(&sections, &mock.base_url());
    let done = wait_status(second.addr, &id, "completed");
    assert_eq!(done["result"]["data"].as_array().map(Vec::len), Some(2), "{done}");
    assert_eq!(
        second.metric("refract_job_lease_takeovers_total"),
        0.0,
        "a claim, not a takeover"
    );
    assert_eq!(mock.received(), 2);
}

/// The state sections for replicas on `redis` and moto's S3 at `s3_port`, with `workers`.
fn shared_sections(redis: &str, s3_port: u16, workers: usize) -> String {
    format!(
        "store:\n  kind: redis\n  url: '{redis}'\nobjects:\n  kind: s3\n  bucket: {S3_BUCKET}\n  region: us-east-1\n  \
         endpoint: 'http://127.0.0.1:{s3_port}'\n  access_key_id: env.S3_ID\n  secret_access_key: env.S3_KEY\n  \
         prefix: gw\njobs:\n  workers: {workers}\n  lease_ms: 1000\n  poll_interval_ms: 50\n  \
         cleanup_interval_ms: 100\n"
    )
}

/// Two replicas on one Redis and one S3 bucket: a job submitted to one is run and answered by
/// the other (a replica without workers never runs one); a replica killed while running a job
/// loses it to another, which completes it.
#[test]
fn replicas_on_redis_and_s3_share_and_take_over_jobs() {
    let Some((_redis, redis)) = redis_server() else { return };
    let Some((_s3, s3_port)) = s3_server() else { return };
    let mock = MockUpstream::start();
    let gate = Gate::new();
    mock.push(gate.hold(Reply::json(200, &default_success())));
    mock.push(Gate::new().hold(Reply::json(200, &default_success())));
    let front = start(&shared_sections(&redis, s3_port, 0), &mock.base_url());
    let mut runners = vec![start(&shared_sections(&redis, s3_port, 1), &mock.base_url())];

    // Submitted to the replica without workers; run by the other; polled on both.
    let id = submit(front.addr);
    assert!(
        !s3_keys(s3_port, "gw/uploads/").is_empty(),
        "the upload is in the bucket"
    );
    wait_long("the job reaches the provider", || mock.received() == 1);
    for gw in [&front, &runners[0]] {
        let r = poll(gw.addr, &id, VK);
        assert_eq!(
            (r.status, r.json()["status"].clone()),
            (202, serde_json::json!("processing"))
        );
    }
    gate.open();
    let done = wait_status(runners[0].addr, &id, "completed");
    assert_eq!(done["result"]["data"].as_array().map(Vec::len), Some(2), "{done}");
    assert_eq!(wait_status(front.addr, &id, "completed"), done);
    assert_eq!(front.metric(&event("claimed")), 0.0, "no workers, no runs");
    assert_eq!(runners[0].metric(&event("claimed")), 1.0);

    // A second runner; whichever runs the next job is killed, the other takes it over.
    runners.push(start(&shared_sections(&redis, s3_port, 1), &mock.base_url()));
    let id = submit(front.addr);
    wait_long("the job reaches the provider", || mock.received() == 2);
    let claimed = |gw: &Refract| gw.metric(&event("claimed"));
    let mut runner = None;
    wait_long("a replica claims the job", || {
        runner = if claimed(&runners[0]) == 2.0 {
            Some(0)
        } else if claimed(&runners[1]) == 1.0 {
            Some(1)
        } else {
            None
        };
        runner.is_some()
    });
    let runner = runner.unwrap();
    let mut dead = runners.remove(runner);
    dead.kill9();
    let survivor = &runners[0];
    let done = wait_status(front.addr, &id, "completed");
    assert_eq!(done["result"]["data"].as_array().map(Vec::len), Some(2), "{done}");
    assert_eq!(wait_status(survivor.addr, &id, "completed"), done);
    assert_eq!(survivor.metric("refract_job_lease_takeovers_total"), 1.0);
    assert_eq!(mock.received(), 3);
    assert_eq!(front.metric(&event("claimed")), 0.0);

    // A short TTL: the job expires on every replica and its upload leaves the bucket.
    let uploads = s3_keys(s3_port, "gw/uploads/").len();
    let id = submit_to(
        front.addr,
        SUBMIT,
        &valid_form(),
        VK,
        &[("x-bf-async-job-result-ttl", "1")],
    );
    assert_eq!(s3_keys(s3_port, "gw/uploads/").len(), uploads + 1);
    wait_long("the job runs and expires", || {
        mock.received() == 4 && poll(front.addr, &id, VK).status == 404
    });
    assert_eq!(poll(survivor.addr, &id, VK).status, 404);
    wait_long("the cleaner deletes its upload", || {
        s3_keys(s3_port, "gw/uploads/").len() == uploads
    });
}
