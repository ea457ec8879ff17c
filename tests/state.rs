//! The state layer against real engines: one conformance set run against both job stores
//! (embedded SQLite on a temp dir, and a `redis-server` started here on a unix socket) and both
//! object stores (a temp dir, and moto's standalone S3 server started here on a free loopback
//! port); and the gateway's startup with a store it cannot open or reach.
//!
//! An engine that is not installed skips its test with a message, except under CI (`CI` set),
//! where it fails: `.ci/deps` installs both (tests/common/engines.rs starts them).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::Bytes;
use common::engines::{free_port, http, redis_server, redis_server_with, s3_server, s3_settings};
use refract::config::{ObjectsSettings, RedisSettings};
use refract::state::{
    embedded::EmbeddedJobs, now_ms, redis::RedisJobs, Claim, JobCounts, JobStatus, JobStore, NewJob, ObjectKey,
    Objects, Outcome,
};
use std::time::Duration;

fn job(owner: &str) -> NewJob {
    NewJob {
        owner: owner.to_string(),
        request: r#"{"model":"sim/gpt-image-1","prompt":"a cat"}"#.to_string(),
        objects: vec![format!("uploads/{owner}/0")],
        result_ttl: Duration::from_secs(60),
    }
}

const LEASE: Duration = Duration::from_millis(1000);

fn claim(worker: &str) -> Claim<'_> {
    Claim {
        worker,
        lease: LEASE,
        max_attempts: 2,
    }
}

/// The behaviour every job store shares. `t` moves forward by hand: no sleeping.
async fn job_store_conformance(jobs: &dyn JobStore) {
    let t = now_ms();

    // Create; only the owner reads it.
    let a = jobs.create(job("team-a"), t).await.unwrap();
    assert_eq!(a.status, JobStatus::Pending);
    assert_eq!(a.id.len(), 22);
    let read = jobs.get(&a.id, "team-a", t).await.unwrap().unwrap();
    assert_eq!(read.status, JobStatus::Pending);
    assert_eq!(read.request, a.request);
    assert_eq!(read.objects, vec!["uploads/team-a/0".to_string()]);
    assert!(jobs.get(&a.id, "team-b", t).await.unwrap().is_none(), "another owner");
    // An admin's lookup reads it whoever owns it.
    let any = jobs.get_any_owner(&a.id, t).await.unwrap().unwrap();
    assert_eq!((any.id.as_str(), any.owner.as_str()), (a.id.as_str(), "team-a"));
    assert!(jobs.get_any_owner("AAAAAAAAAAAAAAAAAAAAAA", t).await.unwrap().is_none());
    assert!(jobs.get("AAAAAAAAAAAAAAAAAAAAAA", "team-a", t).await.unwrap().is_none());

    // Claim with a lease; nothing else is runnable meanwhile.
    let got = jobs.claim(&claim("w1"), t + 10).await.unwrap().unwrap();
    assert_eq!(
        (got.id.as_str(), got.status, got.attempts),
        (a.id.as_str(), JobStatus::Processing, 1)
    );
    assert_eq!(got.lease_owner.as_deref(), Some("w1"));
    assert_eq!(got.lease_until, Some(t + 10 + 1000));
    assert!(jobs.claim(&claim("w2"), t + 20).await.unwrap().is_none());

    // Renew: only the holder; the lease then runs from the renewal.
    assert!(!jobs.renew(&a.id, "w2", LEASE, t + 500).await.unwrap());
    assert!(jobs.renew(&a.id, "w1", LEASE, t + 500).await.unwrap());
    assert!(
        jobs.claim(&claim("w2"), t + 1400).await.unwrap().is_none(),
        "lease renewed to t+1500"
    );

    // The lease passes: another worker takes the job over; the first one's result is dropped.
    let taken = jobs.claim(&claim("w2"), t + 1600).await.unwrap().unwrap();
    assert_eq!((taken.id.as_str(), taken.attempts), (a.id.as_str(), 2));
    assert_eq!(taken.lease_owner.as_deref(), Some("w2"));
    let late = Outcome::Completed {
        result: "{}".to_string(),
        objects: vec![],
    };
    assert!(!jobs.finish(&a.id, "w1", late, t + 1700).await.unwrap());

    // Its lease passes too: attempts are used up, so the job fails instead of running again.
    assert!(jobs.claim(&claim("w3"), t + 3000).await.unwrap().is_none());
    let failed = jobs.get(&a.id, "team-a", t + 3000).await.unwrap().unwrap();
    assert_eq!(failed.status, JobStatus::Failed);
    assert_eq!(failed.status_code, Some(500));
    assert!(failed.error.unwrap().contains("job_abandoned"));
    assert_eq!(failed.expires_at, Some(t + 3000 + 60_000));

    // Complete; readable until its TTL (from completion), then gone and removed with its objects.
    let t = t + 4000;
    let b = jobs.create(job("team-b"), t).await.unwrap();
    let got = jobs.claim(&claim("w1"), t).await.unwrap().unwrap();
    assert_eq!(got.id, b.id);
    let done = Outcome::Completed {
        result: r#"{"data":[]}"#.to_string(),
        objects: vec!["images/b.png".to_string()],
    };
    assert!(jobs.finish(&b.id, "w1", done, t + 100).await.unwrap());
    let read = jobs.get(&b.id, "team-b", t + 200).await.unwrap().unwrap();
    assert_eq!(read.status, JobStatus::Completed);
    assert_eq!(read.result.as_deref(), Some(r#"{"data":[]}"#));
    assert_eq!(read.completed_at, Some(t + 100));
    assert_eq!(read.expires_at, Some(t + 100 + 60_000));
    assert_eq!(
        read.objects,
        vec!["uploads/team-b/0".to_string(), "images/b.png".to_string()]
    );
    assert!(!jobs.renew(&b.id, "w1", LEASE, t + 300).await.unwrap(), "finished");
    assert!(jobs.get(&b.id, "team-b", t + 100 + 59_999).await.unwrap().is_some());
    assert!(
        jobs.get(&b.id, "team-b", t + 100 + 60_000).await.unwrap().is_none(),
        "expired"
    );
    assert!(
        jobs.get_any_owner(&b.id, t + 100 + 60_000).await.unwrap().is_none(),
        "expired for admins too"
    );
    let mut removed = jobs.remove_expired(t + 100 + 59_999, 100).await.unwrap();
    assert_eq!(removed.len(), 1, "only the abandoned job (expired at t+63000) is due");
    assert_eq!(removed[0].id, a.id);

    // Cancel: only the owner, only while pending or processing.
    let c = jobs.create(job("team-c"), t + 500).await.unwrap();
    assert!(!jobs.cancel(&c.id, "team-b", t + 600).await.unwrap(), "another owner");
    assert!(jobs.cancel(&c.id, "team-c", t + 600).await.unwrap());
    assert!(
        !jobs.cancel(&c.id, "team-c", t + 700).await.unwrap(),
        "already cancelled"
    );
    assert_eq!(
        jobs.get(&c.id, "team-c", t + 700).await.unwrap().unwrap().status,
        JobStatus::Cancelled
    );
    assert!(
        jobs.claim(&claim("w1"), t + 800).await.unwrap().is_none(),
        "a cancelled job never runs"
    );
    let d = jobs.create(job("team-d"), t + 900).await.unwrap();
    assert_eq!(jobs.claim(&claim("w1"), t + 900).await.unwrap().unwrap().id, d.id);
    assert!(jobs.cancel(&d.id, "team-d", t + 950).await.unwrap(), "running");
    let failed = Outcome::Failed {
        status_code: 429,
        error: "{}".to_string(),
    };
    assert!(
        !jobs.finish(&d.id, "w1", failed, t + 960).await.unwrap(),
        "cancelled under the worker"
    );

    // Release (the worker's process shuts down): pending again, the attempt not counted.
    let e = jobs.create(job("team-e"), t + 1000).await.unwrap();
    let counts = |runnable, running| JobCounts { runnable, running };
    assert_eq!(jobs.counts(t + 1000).await.unwrap(), counts(1, 0));
    assert_eq!(jobs.claim(&claim("w1"), t + 1000).await.unwrap().unwrap().id, e.id);
    assert_eq!(jobs.counts(t + 1001).await.unwrap(), counts(0, 1));
    assert_eq!(jobs.counts(t + 2001).await.unwrap(), counts(1, 0), "its lease passed");
    assert!(!jobs.release(&e.id, "w2", t + 1100).await.unwrap(), "not the holder");
    assert!(jobs.release(&e.id, "w1", t + 1100).await.unwrap());
    let released = jobs.get(&e.id, "team-e", t + 1100).await.unwrap().unwrap();
    assert_eq!((released.status, released.attempts), (JobStatus::Pending, 0));
    assert_eq!((released.lease_owner, released.lease_until), (None, None));
    assert!(!jobs.release(&e.id, "w1", t + 1150).await.unwrap(), "released already");
    let again = jobs.claim(&claim("w2"), t + 1200).await.unwrap().unwrap();
    assert_eq!((again.id.as_str(), again.attempts), (e.id.as_str(), 1));
    let done = Outcome::Completed {
        result: "{}".to_string(),
        objects: vec![],
    };
    assert!(jobs.finish(&e.id, "w2", done, t + 1300).await.unwrap());
    assert_eq!(jobs.counts(t + 1300).await.unwrap(), counts(0, 0));

    // Every finished job expires; the cleaner returns each once, with its objects.
    removed.extend(jobs.remove_expired(t + 200_000, 100).await.unwrap());
    removed.sort_by_key(|j| j.created_at);
    let ids: Vec<&str> = removed.iter().map(|j| j.id.as_str()).collect();
    assert_eq!(
        ids,
        vec![
            a.id.as_str(),
            b.id.as_str(),
            c.id.as_str(),
            d.id.as_str(),
            e.id.as_str()
        ]
    );
    assert!(removed[1].objects.contains(&"images/b.png".to_string()));
    assert!(jobs.remove_expired(t + 200_000, 100).await.unwrap().is_empty());
    assert!(jobs.get(&b.id, "team-b", t + 200).await.unwrap().is_none(), "removed");
}

#[tokio::test]
async fn embedded_job_store_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let jobs = EmbeddedJobs::open(&dir.path().join("state")).unwrap();
    job_store_conformance(&jobs).await;
    // The file survives: a new handle (a restarted process) sees the records.
    let t = now_ms();
    let kept = jobs.create(job("team-e"), t).await.unwrap();
    drop(jobs);
    let again = EmbeddedJobs::open(&dir.path().join("state")).unwrap();
    assert_eq!(again.get(&kept.id, "team-e", t).await.unwrap().unwrap().id, kept.id);
}

#[tokio::test]
async fn redis_job_store_conformance() {
    let Some((_server, url)) = redis_server() else { return };
    let settings = RedisSettings {
        url,
        password: None,
        username: None,
    };
    let jobs = RedisJobs::open(&settings, Duration::from_secs(3)).unwrap();
    job_store_conformance(&jobs).await;
    // A second handle (another replica) sees the same records.
    let t = now_ms();
    let kept = jobs.create(job("team-e"), t).await.unwrap();
    let replica = RedisJobs::open(&settings, Duration::from_secs(3)).unwrap();
    assert_eq!(replica.get(&kept.id, "team-e", t).await.unwrap().unwrap().id, kept.id);
    assert_eq!(replica.claim(&claim("r2"), t).await.unwrap().unwrap().id, kept.id);
    assert!(
        jobs.claim(&claim("r1"), t).await.unwrap().is_none(),
        "claimed once across replicas"
    );
}

/// The behaviour both object stores share.
async fn object_store_conformance(objects: &Objects) {
    let key = ObjectKey::new("images/abc.png").unwrap();
    assert_eq!(objects.get(&key).await.unwrap(), None);
    objects.put(&key, Bytes::from_static(b"\x89PNG fake")).await.unwrap();
    assert_eq!(
        objects.get(&key).await.unwrap().unwrap(),
        Bytes::from_static(b"\x89PNG fake")
    );
    objects.put(&key, Bytes::from_static(b"second")).await.unwrap();
    assert_eq!(objects.get(&key).await.unwrap().unwrap(), Bytes::from_static(b"second"));
    objects.delete(&key).await.unwrap();
    assert_eq!(objects.get(&key).await.unwrap(), None);
    objects.delete(&key).await.unwrap();
}

#[tokio::test]
async fn fs_objects_conformance() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let objects = Objects::open(&ObjectsSettings::Fs { path: root.clone() }).unwrap();
    object_store_conformance(&objects).await;
    let key = ObjectKey::new("uploads/job1/0").unwrap();
    objects.put(&key, Bytes::from_static(b"upload")).await.unwrap();
    assert_eq!(
        std::fs::read(root.join("uploads/job1/0")).unwrap(),
        b"upload",
        "below the directory"
    );
    assert_eq!(
        objects.sign(&key, Duration::from_secs(60)).await.unwrap(),
        None,
        "a directory cannot sign"
    );
}

#[tokio::test]
async fn s3_objects_conformance() {
    let Some((_server, port)) = s3_server() else { return };
    let objects = Objects::open(&s3_settings(port)).unwrap();
    object_store_conformance(&objects).await;
    let key = ObjectKey::new("images/signed.png").unwrap();
    objects.put(&key, Bytes::from_static(b"image bytes")).await.unwrap();
    // A presigned GET URL (path-style, below the prefix) that fetches it.
    let url = objects
        .sign(&key, Duration::from_secs(300))
        .await
        .unwrap()
        .expect("s3 signs");
    assert_eq!(url.port(), Some(port));
    assert_eq!(url.path(), "/refract-test/gw/images/signed.png");
    let query = url.query().unwrap_or_default();
    assert!(
        query.contains("X-Amz-Signature=") && query.contains("X-Amz-Expires=300"),
        "{url}"
    );
    let (status, body) = http(port, "GET", &format!("{}?{query}", url.path()));
    assert_eq!((status, body.as_slice()), (200, b"image bytes".as_slice()), "{url}");
    assert_eq!(http(port, "GET", url.path()).0, 403, "not without the signature");
}

fn gateway_yaml(state: &str) -> String {
    format!(
        "listeners: [{{address: '127.0.0.1:0'}}]\n{state}\
         providers: [{{name: sim, kind: openai, base_url: 'http://127.0.0.1:1/v1', keys: [{{name: k, value: x}}]}}]\n"
    )
}

fn start_error(yaml: &str) -> String {
    let config = refract::config::from_yaml_str(yaml).unwrap();
    match refract::server::spawn(config) {
        Ok(_) => panic!("the gateway started with:\n{yaml}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn startup_fails_clearly_when_the_store_cannot_be_reached_or_opened() {
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on that socket.
    let sock = dir.path().join("none.sock");
    let err = start_error(&gateway_yaml(&format!(
        "store: {{kind: redis, url: 'redis+unix://{}'}}\n",
        sock.display()
    )));
    assert!(
        err.starts_with("store: redis at redis+unix://") && err.contains("cannot connect"),
        "{err}"
    );
    // A closed TCP port.
    let port = free_port();
    let err = start_error(&gateway_yaml(&format!(
        "store: {{kind: redis, url: 'redis://127.0.0.1:{port}'}}\n"
    )));
    assert!(err.contains("cannot connect"), "{err}");
    // A directory that cannot be made (a file is in the way).
    let file = dir.path().join("file");
    std::fs::write(&file, b"").unwrap();
    let err = start_error(&gateway_yaml(&format!(
        "store: {{kind: embedded, path: '{}'}}\n",
        file.join("db").display()
    )));
    assert!(
        err.starts_with("store: embedded store at") && err.contains("cannot create the directory"),
        "{err}"
    );
    let err = start_error(&gateway_yaml(&format!(
        "store: {{kind: embedded, path: '{}'}}\nobjects: {{kind: fs, path: '{}'}}\n",
        dir.path().join("db").display(),
        file.join("objects").display()
    )));
    assert!(
        err.starts_with("objects: ") && err.contains("cannot create the directory"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_opens_its_store_at_startup() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = gateway_yaml(&format!(
        "store: {{kind: embedded, path: '{}'}}\nobjects: {{kind: fs, path: '{}'}}\n",
        dir.path().join("db").display(),
        dir.path().join("objects").display()
    ));
    let running = refract::server::spawn(refract::config::from_yaml_str(&yaml).unwrap()).unwrap();
    assert!(dir.path().join("db/refract.db").is_file());
    assert!(dir.path().join("objects").is_dir());
    let state = running.state();
    let created = state.jobs.create(job("vk-1"), now_ms()).await.unwrap();
    assert!(state.jobs.get(&created.id, "vk-1", now_ms()).await.unwrap().is_some());
    // A reload that moves the store is restart-only: the opened store stays.
    let moved = gateway_yaml("store: {kind: embedded, path: /nonexistent/elsewhere}\n");
    let pending = running.reload(refract::config::from_yaml_str(&moved).unwrap());
    assert!(pending.contains(&"store"), "{pending:?}");
    assert!(running
        .state()
        .jobs
        .get(&created.id, "vk-1", now_ms())
        .await
        .unwrap()
        .is_some());
}

#[test]
fn a_redis_password_comes_from_the_environment_and_a_wrong_one_stops_startup() {
    let Some((_server, url)) = redis_server_with(&["--requirepass", "s3cret-pw"]) else {
        return;
    };
    let yaml = gateway_yaml(&format!(
        "store: {{kind: redis, url: '{url}', password: env.REDIS_PW}}\n"
    ));
    let with = |pw: &'static str| move |name: &str| (name == "REDIS_PW").then(|| pw.to_string());
    let good = refract::config::from_yaml_str_with_env(&yaml, &with("s3cret-pw")).unwrap();
    let running = refract::server::spawn(good).unwrap();
    drop(running);
    let bad = refract::config::from_yaml_str_with_env(&yaml, &with("wrong")).unwrap();
    let err = match refract::server::spawn(bad) {
        Ok(_) => panic!("started with a wrong password"),
        Err(e) => e.to_string(),
    };
    assert!(err.starts_with("store: redis at"), "{err}");
    assert!(!err.contains("wrong"), "the password is never in a message: {err}");
    let none = gateway_yaml(&format!("store: {{kind: redis, url: '{url}'}}\n"));
    let err = start_error(&none);
    assert!(err.contains("NOAUTH") || err.to_lowercase().contains("auth"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_starts_on_redis_and_s3() {
    let Some((_redis, url)) = redis_server() else { return };
    let Some((_s3, port)) = s3_server() else { return };
    // The S3 credentials come from the environment only.
    let yaml = gateway_yaml(&format!(
        "store: {{kind: redis, url: '{url}'}}\nobjects: {{kind: s3, bucket: refract-test, region: us-east-1, \
         endpoint: 'http://127.0.0.1:{port}', access_key_id: env.S3_ID, secret_access_key: env.S3_KEY}}\n"
    ));
    let env = |name: &str| matches!(name, "S3_ID" | "S3_KEY").then(|| "testing".to_string());
    let config = refract::config::from_yaml_str_with_env(&yaml, &env).unwrap();
    let running = refract::server::spawn(config).unwrap();
    let state = running.state();
    let created = state.jobs.create(job("vk-2"), now_ms()).await.unwrap();
    assert!(state.jobs.get(&created.id, "vk-2", now_ms()).await.unwrap().is_some());
    let key = ObjectKey::new("images/x.png").unwrap();
    state.objects.put(&key, Bytes::from_static(b"x")).await.unwrap();
    assert!(state
        .objects
        .sign(&key, Duration::from_secs(60))
        .await
        .unwrap()
        .is_some());
}

/// Result images expire by bucket (`images/{hour}/…`): `remove_expired_images` deletes whole
/// buckets whose hour has ended, and nothing else.
async fn expired_images_conformance(objects: &Objects) {
    let put = |key: &'static str| async move {
        objects
            .put(&ObjectKey::new(key).unwrap(), Bytes::from_static(b"img"))
            .await
            .unwrap();
    };
    let has = |key: &'static str| async move { objects.get(&ObjectKey::new(key).unwrap()).await.unwrap().is_some() };
    for key in ["images/5/a.png", "images/5/b.webp", "images/9/c.png", "uploads/x/0"] {
        put(key).await;
    }
    let hour_ms = 3_600_000;
    assert_eq!(objects.remove_expired_images(5 * hour_ms - 1).await.unwrap(), 0);
    assert!(has("images/5/a.png").await);
    assert_eq!(objects.remove_expired_images(5 * hour_ms).await.unwrap(), 2);
    assert!(!has("images/5/a.png").await && !has("images/5/b.webp").await);
    assert!(has("images/9/c.png").await, "a later bucket stays");
    assert!(has("uploads/x/0").await, "only images expire by bucket");
    assert_eq!(objects.remove_expired_images(100 * hour_ms).await.unwrap(), 1);
    assert!(!has("images/9/c.png").await);
    assert_eq!(objects.remove_expired_images(100 * hour_ms).await.unwrap(), 0);
}

#[tokio::test]
async fn fs_expired_images_are_removed_by_bucket() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("objects");
    let objects = Objects::open(&ObjectsSettings::Fs { path: root.clone() }).unwrap();
    assert_eq!(
        objects.remove_expired_images(u64::MAX).await.unwrap(),
        0,
        "no images yet"
    );
    expired_images_conformance(&objects).await;
    assert!(!root.join("images/5").exists(), "the empty bucket directory is gone");
}

#[tokio::test]
async fn s3_expired_images_are_removed_by_bucket() {
    let Some((_server, port)) = s3_server() else { return };
    let objects = Objects::open(&s3_settings(port)).unwrap();
    expired_images_conformance(&objects).await;
}

/// `response_format=url` with S3 objects (a `rehost_urls` provider: the simulator answers data
/// URLs of its own otherwise): the answer's URL is moto's presigned GET, and it
/// fetches the stored image (under the expiry bucket, below the prefix).
#[test]
fn rehosted_images_on_s3_are_presigned_urls() {
    let Some((_s3, port)) = s3_server() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (listen, sim) = (common::free_addr(), common::free_addr());
    let yaml = format!(
        "listeners: [{{address: '{listen}'}}]\nsimulator: {{address: '{sim}'}}\n\
         store: {{kind: embedded, path: '{}'}}\n\
         objects: {{kind: s3, bucket: refract-test, region: us-east-1, endpoint: 'http://127.0.0.1:{port}', \
         access_key_id: env.S3_ID, secret_access_key: env.S3_KEY, prefix: gw, url_ttl: 120}}\n\
         providers: [{{name: openai, kind: openai, base_url: 'http://{sim}/v1', rehost_urls: true, keys: [{{name: k, value: x}}]}}]\n\
         auth: {{allow_anonymous: true}}\n",
        dir.path().display()
    );
    let env = |name: &str| matches!(name, "S3_ID" | "S3_KEY").then(|| "testing".to_string());
    let config = refract::config::from_yaml_str_with_env(&yaml, &env).unwrap();
    let _running = refract::server::spawn(config).unwrap();
    common::wait_listening(listen);
    common::wait_listening(sim);
    let form = common::valid_form().text("response_format", "url");
    let mut c = common::Conn::open(listen);
    c.send(&common::post_head("/v1/images/edits", &[], &form, None));
    c.send(&form.body());
    let r = c.read_response();
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    let url = url::Url::parse(v["data"][0]["url"].as_str().unwrap()).unwrap();
    assert!(v["data"][0].get("b64_json").is_none(), "{v}");
    assert_eq!(url.port(), Some(port), "{url}");
    assert!(url.path().starts_with("/refract-test/gw/images/"), "{url}");
    assert!(url.path().ends_with(".png"), "{url}");
    let query = url.query().unwrap_or_default();
    assert!(query.contains("X-Amz-Expires=120"), "{url}");
    let (status, body) = http(port, "GET", &format!("{}?{query}", url.path()));
    assert_eq!(status, 200, "{url}");
    assert!(
        body.starts_with(b"\x89PNG\r\n\x1a\n"),
        "the presigned URL serves the PNG"
    );
    assert_eq!(http(port, "GET", url.path()).0, 403, "not without the signature");
}
