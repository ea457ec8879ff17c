//! The `store` and `objects` sections: where the gateway keeps its state (job records; uploads
//! and result images). Read once at startup (a change is restart-only); opened by
//! [`crate::state`]. Their secrets come only from the environment (`env.NAME`).

use std::path::PathBuf;
use std::time::Duration;

use super::fields::Fields;
use super::parse::Env;
use super::Secret;

/// Where job records live (`store`).
#[derive(Debug, Clone, PartialEq)]
pub enum StoreSettings {
    /// A single-file database (SQLite) in directory `path`, created if missing: no server, and
    /// it survives restarts. One machine.
    Embedded {
        /// The directory holding `refract.db`.
        path: PathBuf,
    },
    /// A Redis server that several gateway replicas share.
    Redis(RedisSettings),
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings::Embedded {
            path: PathBuf::from(DEFAULT_STORE_PATH),
        }
    }
}

/// The default `store.path` (relative to the working directory).
pub const DEFAULT_STORE_PATH: &str = "data";
/// The default `objects.path` (relative to the working directory).
pub const DEFAULT_OBJECTS_PATH: &str = "data/objects";

/// `store: {kind: redis}`.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host[:port][/db]`, `rediss://…` (TLS) or `redis+unix:///path`; never holds a
    /// password (that is `password`).
    pub url: String,
    /// The `AUTH` password (`env.NAME`), if any.
    pub password: Option<Secret>,
    /// The ACL user name, if any (with `password`).
    pub username: Option<String>,
}

impl PartialEq for RedisSettings {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url
            && self.username == other.username
            && self.password.as_ref().map(Secret::expose) == other.password.as_ref().map(Secret::expose)
    }
}

/// Where uploads of pending jobs and result images live (`objects`).
#[derive(Debug, Clone, PartialEq)]
pub enum ObjectsSettings {
    /// Files under directory `path`, created if missing.
    Fs {
        /// The root directory; every object lives below it.
        path: PathBuf,
    },
    /// An S3 bucket (AWS or an S3-compatible store).
    S3(S3Settings),
}

impl Default for ObjectsSettings {
    fn default() -> Self {
        ObjectsSettings::Fs {
            path: PathBuf::from(DEFAULT_OBJECTS_PATH),
        }
    }
}

/// What a client gets when it omits `response_format` (`objects.default_response_format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResponseFormat {
    /// A URL of the stored image (the gateway rehosts base64 answers).
    Url,
    /// Base64 in `b64_json`.
    B64Json,
}

/// How stored result images are handed out as URLs: the `url_*`, `public_url` and
/// `default_response_format` keys of the `objects` section.
#[derive(Debug, Clone)]
pub struct ObjectUrls {
    /// How long a URL (and the image behind it) lives (`url_ttl`, seconds, default 3600).
    pub ttl: std::time::Duration,
    /// The HMAC secret of gateway URLs (`url_secret`, `env.NAME`); `None`: a random one kept
    /// in the objects directory (`.url-secret`), or none needed (S3 presigns).
    pub secret: Option<Secret>,
    /// The gateway's public origin for gateway URLs (`public_url`, e.g.
    /// `https://images.example.com`, no trailing `/`); `None`: taken from the request.
    pub public_url: Option<String>,
    /// The format when the client omits `response_format`; `None`: the provider's default.
    pub default_response_format: Option<ResponseFormat>,
}

/// The default `objects.url_ttl`.
pub const DEFAULT_URL_TTL: std::time::Duration = std::time::Duration::from_secs(3600);

impl Default for ObjectUrls {
    fn default() -> Self {
        ObjectUrls {
            ttl: DEFAULT_URL_TTL,
            secret: None,
            public_url: None,
            default_response_format: None,
        }
    }
}

impl PartialEq for ObjectUrls {
    fn eq(&self, other: &Self) -> bool {
        self.ttl == other.ttl
            && self.public_url == other.public_url
            && self.default_response_format == other.default_response_format
            && self.secret.as_ref().map(Secret::expose) == other.secret.as_ref().map(Secret::expose)
    }
}

/// `objects: {kind: s3}`.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// The bucket (it must exist).
    pub bucket: String,
    /// The region, e.g. `us-east-1`.
    pub region: String,
    /// The endpoint of an S3-compatible store (`https://…`, or `http://` on loopback);
    /// `None` = AWS. Addressing is path-style when set.
    pub endpoint: Option<String>,
    /// The access key id (`env.NAME`).
    pub access_key_id: Secret,
    /// The secret access key (`env.NAME`).
    pub secret_access_key: Secret,
    /// Prepended to every object key (`refract/`), if any.
    pub prefix: Option<String>,
}

impl PartialEq for S3Settings {
    fn eq(&self, other: &Self) -> bool {
        self.bucket == other.bucket
            && self.region == other.region
            && self.endpoint == other.endpoint
            && self.prefix == other.prefix
            && self.access_key_id.expose() == other.access_key_id.expose()
            && self.secret_access_key.expose() == other.secret_access_key.expose()
    }
}

/// How async jobs run (`jobs`). `workers` is read at startup (restart-only); the rest is read
/// by each job as it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct JobsSettings {
    /// Jobs this process runs at once (0 = it accepts and answers jobs, another replica runs
    /// them).
    pub workers: usize,
    /// How long a worker's claim on a job lasts; renewed every third of it while the job runs,
    /// so a job whose worker died is taken over once it passes.
    pub lease: Duration,
    /// How many times a job is claimed before it fails with `job_abandoned`.
    pub max_attempts: u32,
    /// How long a finished job stays readable, unless the submission's
    /// `x-bf-async-job-result-ttl` says otherwise.
    pub result_ttl: Duration,
    /// The longest `x-bf-async-job-result-ttl` accepted (longer ones are cut to it).
    pub max_result_ttl: Duration,
    /// How often an idle worker looks for a job submitted to another replica (jobs submitted
    /// here wake a worker at once).
    pub poll_interval: Duration,
    /// How often expired jobs (and their objects) are removed.
    pub cleanup_interval: Duration,
}

impl Default for JobsSettings {
    fn default() -> Self {
        JobsSettings {
            workers: 4,
            lease: Duration::from_secs(30),
            max_attempts: 3,
            result_ttl: Duration::from_secs(3600),
            max_result_ttl: Duration::from_secs(7 * 24 * 3600),
            poll_interval: Duration::from_secs(1),
            cleanup_interval: Duration::from_secs(60),
        }
    }
}

/// The `jobs` section (absent = the defaults).
pub(super) fn jobs(mut f: Fields<'_>) -> JobsSettings {
    let d = JobsSettings::default();
    let secs = |f: &mut Fields<'_>, key: &'static str, default: Duration, max: u64| {
        Duration::from_secs(f.opt_u64(key, default.as_secs(), 1..=max))
    };
    let settings = JobsSettings {
        workers: f.opt_usize("workers", d.workers, 0..=1024),
        lease: f.opt_millis("lease_ms", d.lease, 1_000..=3_600_000),
        max_attempts: u32::try_from(f.opt_u64("max_attempts", u64::from(d.max_attempts), 1..=100))
            .unwrap_or(d.max_attempts),
        result_ttl: secs(&mut f, "result_ttl_seconds", d.result_ttl, 30 * 24 * 3600),
        max_result_ttl: secs(&mut f, "max_result_ttl_seconds", d.max_result_ttl, 365 * 24 * 3600),
        poll_interval: f.opt_millis("poll_interval_ms", d.poll_interval, 10..=60_000),
        cleanup_interval: f.opt_millis("cleanup_interval_ms", d.cleanup_interval, 100..=3_600_000),
    };
    if settings.result_ttl > settings.max_result_ttl {
        f.report("result_ttl_seconds", "must not exceed max_result_ttl_seconds");
    }
    f.finish();
    settings
}

/// The `kind` of a section, among `allowed`; reported when missing or unknown.
fn kind<'a>(f: &mut Fields<'a>, allowed: &[&'static str]) -> Option<&'a str> {
    let text = f.req_str("kind")?;
    if allowed.contains(&text) {
        return Some(text);
    }
    f.report(
        "kind",
        format!("unknown kind '{text}' (allowed: {})", allowed.join(", ")),
    );
    None
}

/// A directory path: a non-empty string (created at startup if missing).
fn dir(f: &mut Fields<'_>, default: &str) -> PathBuf {
    match f.opt_str("path") {
        Some("") => {
            f.report("path", "must not be empty");
            PathBuf::from(default)
        }
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(default),
    }
}

/// The `store` section (absent = embedded in `data/`).
pub(super) fn store(f: Option<Fields<'_>>, env: Env<'_>) -> StoreSettings {
    let Some(mut f) = f else {
        return StoreSettings::default();
    };
    let settings = match kind(&mut f, &["embedded", "redis"]) {
        Some("redis") => redis(&mut f, env),
        Some(_) => Some(StoreSettings::Embedded {
            path: dir(&mut f, DEFAULT_STORE_PATH),
        }),
        None => None,
    };
    f.finish();
    settings.unwrap_or_default()
}

fn redis(f: &mut Fields<'_>, env: Env<'_>) -> Option<StoreSettings> {
    let url = f.req_str("url").and_then(|text| match ::url::Url::parse(text) {
        Ok(u) if !matches!(u.scheme(), "redis" | "rediss" | "redis+unix" | "unix") => {
            f.report(
                "url",
                format!("scheme '{}' is not redis://, rediss:// or redis+unix://", u.scheme()),
            );
            None
        }
        Ok(u) if u.password().is_some() || !u.username().is_empty() => {
            f.report(
                "url",
                "must not hold a user or password: write them as username and password (env.NAME)",
            );
            None
        }
        Ok(_) => Some(text.to_string()),
        Err(e) => {
            f.report("url", format!("not a URL: {e}"));
            None
        }
    });
    let password = f.has("password").then(|| env_secret(f, "password", env)).flatten();
    let username = f.opt_str("username").map(str::to_string);
    Some(StoreSettings::Redis(RedisSettings {
        url: url?,
        password,
        username,
    }))
}

/// The `objects` section (absent = files in `data/objects`) and its URL keys.
pub(super) fn objects(f: Option<Fields<'_>>, env: Env<'_>) -> (ObjectsSettings, ObjectUrls) {
    let Some(mut f) = f else {
        return (ObjectsSettings::default(), ObjectUrls::default());
    };
    let settings = match kind(&mut f, &["fs", "s3"]) {
        Some("s3") => s3(&mut f, env),
        Some(_) => Some(ObjectsSettings::Fs {
            path: dir(&mut f, DEFAULT_OBJECTS_PATH),
        }),
        None => None,
    };
    let urls = object_urls(&mut f, env);
    f.finish();
    (settings.unwrap_or_default(), urls)
}

/// The URL keys of the `objects` section.
fn object_urls(f: &mut Fields<'_>, env: Env<'_>) -> ObjectUrls {
    let ttl = std::time::Duration::from_secs(f.opt_u64("url_ttl", DEFAULT_URL_TTL.as_secs(), 1..=604_800));
    let secret = f.has("url_secret").then(|| env_secret(f, "url_secret", env)).flatten();
    if secret.as_ref().is_some_and(|s| s.expose().len() < 16) {
        f.report("url_secret", "must be at least 16 bytes long");
    }
    let public_url = f.opt_str("public_url").and_then(|text| match ::url::Url::parse(text) {
        Ok(u)
            if matches!(u.scheme(), "http" | "https")
                && u.host_str().is_some()
                && u.query().is_none()
                && u.fragment().is_none()
                && u.username().is_empty()
                && u.password().is_none() =>
        {
            Some(text.trim_end_matches('/').to_string())
        }
        Ok(_) => {
            f.report(
                "public_url",
                "must be an http:// or https:// origin (and path), without user, query or fragment",
            );
            None
        }
        Err(e) => {
            f.report("public_url", format!("not a URL: {e}"));
            None
        }
    });
    let default_response_format = match f.opt_str("default_response_format") {
        None => None,
        Some("url") => Some(ResponseFormat::Url),
        Some("b64_json") => Some(ResponseFormat::B64Json),
        Some(other) => {
            f.report(
                "default_response_format",
                format!("unknown format '{other}' (allowed: url, b64_json)"),
            );
            None
        }
    };
    ObjectUrls {
        ttl,
        secret,
        public_url,
        default_response_format,
    }
}

fn s3(f: &mut Fields<'_>, env: Env<'_>) -> Option<ObjectsSettings> {
    let bucket = f.req_str("bucket").map(str::to_string);
    let region = f.req_str("region").map(str::to_string);
    let endpoint = f.opt_str("endpoint").and_then(|text| match ::url::Url::parse(text) {
        Ok(u) if u.scheme() == "https" => Some(text.trim_end_matches('/').to_string()),
        Ok(u) if u.scheme() == "http" && u.host_str().is_some_and(is_loopback) => {
            Some(text.trim_end_matches('/').to_string())
        }
        Ok(_) => {
            f.report("endpoint", "must be https:// (http:// only on a loopback address)");
            None
        }
        Err(e) => {
            f.report("endpoint", format!("not a URL: {e}"));
            None
        }
    });
    let access_key_id = env_secret(f, "access_key_id", env);
    let secret_access_key = env_secret(f, "secret_access_key", env);
    let prefix = f.opt_str("prefix").and_then(|p| {
        let ok = !p.is_empty()
            && p.split('/').filter(|s| !s.is_empty()).all(|s| s != "." && s != "..")
            && p.bytes().all(|b| b.is_ascii_alphanumeric() || b"/-_.".contains(&b));
        if ok {
            Some(p.trim_matches('/').to_string())
        } else {
            f.report(
                "prefix",
                "letters, digits, '/', '-', '_' and '.' only (no '..' segment)",
            );
            None
        }
    });
    Some(ObjectsSettings::S3(S3Settings {
        bucket: bucket?,
        region: region?,
        endpoint,
        access_key_id: access_key_id?,
        secret_access_key: secret_access_key?,
        prefix,
    }))
}

fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// A required secret that may come only from the environment: `env.NAME`.
fn env_secret(f: &mut Fields<'_>, key: &'static str, env: Env<'_>) -> Option<Secret> {
    let text = f.req(key)?.as_str().map(str::to_string);
    if !text.as_deref().is_some_and(|t| t.starts_with("env.")) {
        f.report(
            key,
            "must be env.NAME (the secret is read from environment variable NAME)",
        );
        return None;
    }
    f.req_secret(key, env)
}

#[cfg(test)]
mod tests {
    use super::super::test_util::*;
    use super::*;

    #[test]
    fn defaults_are_embedded_and_fs_under_data() {
        let c = ok(PROVIDER);
        assert_eq!(
            c.store,
            StoreSettings::Embedded {
                path: PathBuf::from("data")
            }
        );
        assert_eq!(
            c.objects,
            ObjectsSettings::Fs {
                path: PathBuf::from("data/objects")
            }
        );
    }

    #[test]
    fn redis_and_s3_are_read() {
        let c = ok(&format!(
            "store: {{kind: redis, url: 'rediss://cache.internal:6380/2', username: gw, password: env.KEY_A}}\n\
             objects: {{kind: s3, bucket: b, region: eu-west-1, endpoint: 'http://127.0.0.1:9000/', \
             access_key_id: env.KEY_A, secret_access_key: env.VK_1, prefix: refract/}}\n{PROVIDER}"
        ));
        let StoreSettings::Redis(r) = c.store else {
            panic!("{:?}", c.store)
        };
        assert_eq!(r.url, "rediss://cache.internal:6380/2");
        assert_eq!(r.password.unwrap().expose(), "sk-a-SECRET");
        assert_eq!(r.username.as_deref(), Some("gw"));
        let ObjectsSettings::S3(s) = c.objects else {
            panic!("{:?}", c.objects)
        };
        assert_eq!((s.bucket.as_str(), s.region.as_str()), ("b", "eu-west-1"));
        assert_eq!(s.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(s.secret_access_key.expose(), "vk-1-SECRET");
        assert_eq!(s.prefix.as_deref(), Some("refract"));
        let c = ok(&format!(
            "store: {{kind: embedded, path: /var/lib/refract}}\n{PROVIDER}"
        ));
        assert_eq!(
            c.store,
            StoreSettings::Embedded {
                path: PathBuf::from("/var/lib/refract")
            }
        );
    }

    #[test]
    fn jobs_are_read_with_defaults_and_bounds() {
        assert_eq!(ok(PROVIDER).jobs, JobsSettings::default());
        let c = ok(&format!(
            "jobs: {{workers: 0, lease_ms: 2000, max_attempts: 1, result_ttl_seconds: 5, \
             max_result_ttl_seconds: 10, poll_interval_ms: 50, cleanup_interval_ms: 100}}\n{PROVIDER}"
        ));
        let j = c.jobs;
        assert_eq!((j.workers, j.max_attempts), (0, 1));
        assert_eq!(j.lease, Duration::from_secs(2));
        assert_eq!(j.result_ttl, Duration::from_secs(5));
        assert_eq!(j.max_result_ttl, Duration::from_secs(10));
        assert_eq!(j.poll_interval, Duration::from_millis(50));
        assert_eq!(j.cleanup_interval, Duration::from_millis(100));
        one_problem(&format!("jobs: {{lease_ms: 10}}\n{PROVIDER}"), "jobs.lease_ms", "");
        one_problem(
            &format!("jobs: {{max_attempts: 0}}\n{PROVIDER}"),
            "jobs.max_attempts",
            "",
        );
        one_problem(&format!("jobs: {{workerz: 2}}\n{PROVIDER}"), "jobs.workerz", "");
        one_problem(
            &format!("jobs: {{result_ttl_seconds: 20, max_result_ttl_seconds: 10}}\n{PROVIDER}"),
            "jobs.result_ttl_seconds",
            "must not exceed max_result_ttl_seconds",
        );
    }

    #[test]
    fn problems_have_paths() {
        one_problem(
            &format!("store: {{kind: sqlite}}\n{PROVIDER}"),
            "store.kind",
            "unknown kind 'sqlite'",
        );
        let missing = problems(&format!("store: {{path: x}}\n{PROVIDER}"));
        assert!(
            missing.contains(&"store.kind: missing required key".to_string()),
            "{missing:?}"
        );
        one_problem(
            &format!("store: {{kind: embedded, pth: x}}\n{PROVIDER}"),
            "store.pth",
            "",
        );
        one_problem(&format!("store: {{kind: redis}}\n{PROVIDER}"), "store.url", "");
        one_problem(
            &format!("store: {{kind: redis, url: 'http://x'}}\n{PROVIDER}"),
            "store.url",
            "scheme 'http'",
        );
        one_problem(
            &format!("store: {{kind: redis, url: 'redis://:pw@x'}}\n{PROVIDER}"),
            "store.url",
            "must not hold a user or password",
        );
        one_problem(
            &format!("store: {{kind: redis, url: 'redis://x', password: hunter2}}\n{PROVIDER}"),
            "store.password",
            "must be env.NAME",
        );
        one_problem(
            &format!("store: {{kind: redis, url: 'redis://x', password: env.NOPE}}\n{PROVIDER}"),
            "store.password",
            "NOPE is not set",
        );
        let s3 = "objects: {kind: s3, bucket: b, region: r, access_key_id: env.KEY_A, secret_access_key: env.KEY_A";
        ok(&format!("{s3}}}\n{PROVIDER}"));
        one_problem(
            &format!("{s3}, endpoint: 'http://minio.internal:9000'}}\n{PROVIDER}"),
            "objects.endpoint",
            "https://",
        );
        one_problem(
            &format!("{s3}, prefix: '../up'}}\n{PROVIDER}"),
            "objects.prefix",
            "no '..'",
        );
        one_problem(&format!("{s3}, bucket2: x}}\n{PROVIDER}"), "objects.bucket2", "");
        one_problem(
            &format!("objects: {{kind: s3, bucket: b, region: r, access_key_id: AKIA, secret_access_key: env.KEY_A}}\n{PROVIDER}"),
            "objects.access_key_id",
            "must be env.NAME",
        );
        one_problem(
            &format!("objects: {{kind: fs, path: ''}}\n{PROVIDER}"),
            "objects.path",
            "empty",
        );
        let all = problems(&format!("objects: {{kind: s3}}\n{PROVIDER}"));
        assert_eq!(all.len(), 4, "{all:?}");
        one_problem(
            &format!("objects: {{kind: fs, url_ttl: 0}}\n{PROVIDER}"),
            "objects.url_ttl",
            "",
        );
        one_problem(
            &format!("objects: {{kind: fs, url_secret: hunter2hunter2hunter2}}\n{PROVIDER}"),
            "objects.url_secret",
            "must be env.NAME",
        );
        one_problem(
            &format!("objects: {{kind: fs, url_secret: env.KEY_A}}\n{PROVIDER}"),
            "objects.url_secret",
            "at least 16 bytes",
        );
        one_problem(
            &format!("objects: {{kind: fs, public_url: 'ftp://x'}}\n{PROVIDER}"),
            "objects.public_url",
            "http:// or https://",
        );
        one_problem(
            &format!("objects: {{kind: fs, public_url: 'https://x/?a=1'}}\n{PROVIDER}"),
            "objects.public_url",
            "without user, query",
        );
        one_problem(
            &format!("objects: {{kind: fs, default_response_format: png}}\n{PROVIDER}"),
            "objects.default_response_format",
            "unknown format 'png'",
        );
        one_problem(
            &format!("objects: {{kind: fs, url_tll: 5}}\n{PROVIDER}"),
            "objects.url_tll",
            "",
        );
    }

    #[test]
    fn url_keys_are_read_with_defaults() {
        let c = ok(PROVIDER);
        assert_eq!(c.object_urls, ObjectUrls::default());
        assert_eq!(c.object_urls.ttl, std::time::Duration::from_secs(3600));
        let c = ok(&format!(
            "objects: {{kind: fs, path: /srv/o, url_ttl: 60, url_secret: env.URL_SECRET, \
             public_url: 'https://img.example.com/gw/', default_response_format: url}}\n{PROVIDER}"
        ));
        let u = &c.object_urls;
        assert_eq!(u.ttl, std::time::Duration::from_secs(60));
        assert_eq!(
            u.secret.as_ref().map(Secret::expose),
            Some("url-secret-of-32-bytes-for-hmac!")
        );
        assert_eq!(u.public_url.as_deref(), Some("https://img.example.com/gw"));
        assert_eq!(u.default_response_format, Some(ResponseFormat::Url));
        let c = ok(&format!(
            "objects: {{kind: fs, default_response_format: b64_json}}\n{PROVIDER}"
        ));
        assert_eq!(c.object_urls.default_response_format, Some(ResponseFormat::B64Json));
    }
}
