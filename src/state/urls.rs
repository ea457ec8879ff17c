//! URLs of stored result images (`response_format=url`): the gateway-made file names, their
//! object keys (the expiry in the key, so that whole past buckets are deleted, see
//! [`super::Objects::remove_expired_images`]), and the HMAC-SHA256 signature of the gateway's
//! own file URLs (`GET /v1/images/files/{name}?expires=…&sig=…`).
//!
//! Pure, except [`UrlSigner::open`] (startup: the secret) and [`ImageName::new`] (randomness).
//! A URL is checked ([`UrlSigner::check`]) before anything is read from the store: a missing or
//! wrong signature, a tampered name or expiry and an expired URL are refused on their own.

use super::{new_id, ObjectKey, StateError, StateResult};
use crate::config::{ObjectUrls, ObjectsSettings};
use ring::hmac;
use std::path::Path;

/// The gateway's file route, before the name.
pub const FILES_PATH: &str = "/v1/images/files/";

/// Seconds per expiry bucket: an image lives until the end of the hour its URL expires in.
pub const BUCKET_SECONDS: u64 = 3600;

/// The extensions a stored image may have (`bin`: bytes of no known image type).
const EXTENSIONS: &[&str] = &["png", "jpeg", "webp", "bin"];

/// A stored image's name, as it appears in its URL: `{bucket}-{random}.{ext}`, where
/// `bucket` is the hour (Unix seconds / 3600, rounded up) after which it may be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    bucket: u64,
    id: String,
    ext: &'static str,
}

impl ImageName {
    /// A new random name for an image of extension `ext` (`png`, `jpeg`, `webp`, else `bin`)
    /// whose URL expires at `expires` (Unix seconds).
    pub fn new(expires: u64, ext: &str) -> StateResult<ImageName> {
        Ok(ImageName {
            bucket: expires.div_ceil(BUCKET_SECONDS),
            id: new_id()?,
            ext: EXTENSIONS.iter().find(|e| **e == ext).copied().unwrap_or("bin"),
        })
    }

    /// `text` as a name the gateway made, or `None`: digits, `-`, 1 to 64 of
    /// `A-Za-z0-9_-`, `.`, a known extension; nothing else (no `/`, `.`, `%`).
    pub fn parse(text: &str) -> Option<ImageName> {
        let (bucket, rest) = text.split_once('-')?;
        let (id, ext) = rest.rsplit_once('.')?;
        let digits_ok = !bucket.is_empty() && bucket.len() <= 12 && bucket.bytes().all(|b| b.is_ascii_digit());
        let id_ok =
            !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_".contains(&b));
        let ext = EXTENSIONS.iter().find(|e| **e == ext).copied()?;
        if !(digits_ok && id_ok) {
            return None;
        }
        Some(ImageName {
            bucket: bucket.parse().ok()?,
            id: id.to_string(),
            ext,
        })
    }

    /// The name as written in URLs.
    pub fn as_url_name(&self) -> String {
        format!("{}-{}.{}", self.bucket, self.id, self.ext)
    }

    /// The object key: `images/{bucket}/{random}.{ext}`.
    pub fn key(&self) -> StateResult<ObjectKey> {
        ObjectKey::new(&format!("images/{}/{}.{}", self.bucket, self.id, self.ext))
    }
}

/// The expiry bucket of a key under `images/`: its second segment, when it is one.
pub(super) fn bucket_of(segment: &str) -> Option<u64> {
    (!segment.is_empty() && segment.len() <= 12 && segment.bytes().all(|b| b.is_ascii_digit()))
        .then(|| segment.parse().ok())
        .flatten()
}

/// Why a file URL was refused (before the store was read).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRefusal {
    /// No `sig` or `expires`, or one that is not well-formed (403).
    MissingSignature,
    /// The signature does not match the name and expiry (403).
    BadSignature,
    /// The signature is right but the URL has expired (403).
    Expired,
    /// Signed, but not a name the gateway makes (404; only with a leaked secret).
    BadName,
}

impl UrlRefusal {
    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            UrlRefusal::MissingSignature => "the file URL needs its expires and sig parameters",
            UrlRefusal::BadSignature => "the file URL's signature does not match",
            UrlRefusal::Expired => "the file URL has expired",
            UrlRefusal::BadName => "no such file",
        }
    }
}

/// A file URL that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    /// The object to serve.
    pub key: ObjectKey,
    /// Its extension (its content type).
    pub ext: &'static str,
    /// Seconds until the URL expires (`Cache-Control: max-age`).
    pub remaining: u64,
}

/// Signs and checks the gateway's file URLs with one HMAC-SHA256 secret.
pub struct UrlSigner {
    key: hmac::Key,
}

impl UrlSigner {
    /// A signer with `secret`.
    pub fn new(secret: &[u8]) -> UrlSigner {
        UrlSigner {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// The signer of the config: `objects.url_secret`; else, for a directory, the secret kept
    /// in `{path}/.url-secret` (32 random bytes, made once with mode 0600, so URLs survive a
    /// restart); else (S3, which presigns its URLs) a random one for this process. Runs once,
    /// at startup.
    pub fn open(objects: &ObjectsSettings, urls: &ObjectUrls) -> StateResult<UrlSigner> {
        if let Some(secret) = &urls.secret {
            return Ok(UrlSigner::new(secret.expose().as_bytes()));
        }
        match objects {
            ObjectsSettings::Fs { path } => Ok(UrlSigner::new(&kept_secret(path)?)),
            ObjectsSettings::S3(_) => Ok(UrlSigner::new(&random_secret()?)),
        }
    }

    fn tag(&self, name: &str, expires: u64) -> hmac::Tag {
        hmac::sign(&self.key, message(name, expires).as_bytes())
    }

    /// The hex signature of `name` expiring at `expires` (Unix seconds).
    pub fn sign(&self, name: &str, expires: u64) -> String {
        hex::encode(self.tag(name, expires).as_ref())
    }

    /// The gateway URL of `name` expiring at `expires`, under `base` (an origin and path
    /// without a trailing `/`; `None`: a path-only URL).
    pub fn url(&self, base: Option<&str>, name: &str, expires: u64) -> String {
        format!(
            "{}{FILES_PATH}{name}?expires={expires}&sig={}",
            base.unwrap_or(""),
            self.sign(name, expires)
        )
    }

    /// Checks a file request for `name` with query `query` at `now` (Unix seconds): the
    /// signature (in constant time), then the expiry, then the name's grammar. Reads nothing.
    pub fn check(&self, name: &str, query: Option<&str>, now: u64) -> Result<Granted, UrlRefusal> {
        let (mut expires, mut sig) = (None, None);
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let slot = match pair.split_once('=') {
                Some(("expires", v)) => (&mut expires, v),
                Some(("sig", v)) => (&mut sig, v),
                _ => continue,
            };
            if slot.0.replace(slot.1).is_some() {
                // A parameter given twice is not one the gateway wrote.
                return Err(UrlRefusal::MissingSignature);
            }
        }
        let expires: u64 = expires
            .filter(|e| !e.is_empty() && e.len() <= 20 && e.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|e| e.parse().ok())
            .ok_or(UrlRefusal::MissingSignature)?;
        let sig = sig
            .filter(|s| s.len() == 64)
            .and_then(|s| hex::decode(s).ok())
            .ok_or(UrlRefusal::MissingSignature)?;
        hmac::verify(&self.key, message(name, expires).as_bytes(), &sig).map_err(|_| UrlRefusal::BadSignature)?;
        if expires <= now {
            return Err(UrlRefusal::Expired);
        }
        let parsed = ImageName::parse(name).ok_or(UrlRefusal::BadName)?;
        let key = parsed.key().map_err(|_| UrlRefusal::BadName)?;
        Ok(Granted {
            key,
            ext: parsed.ext,
            remaining: expires - now,
        })
    }
}

/// What is signed: the name and the expiry, separated by a byte neither contains.
fn message(name: &str, expires: u64) -> String {
    format!("{name}\n{expires}")
}

fn random_secret() -> StateResult<[u8; 32]> {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| StateError::Objects("no system randomness for the URL secret".into()))?;
    Ok(bytes)
}

/// The secret kept in `dir/.url-secret`, made (32 random bytes, mode 0600) when missing.
fn kept_secret(dir: &Path) -> StateResult<Vec<u8>> {
    let path = dir.join(".url-secret");
    let fail = |what: &str, e: std::io::Error| StateError::Objects(format!("{}: {what}: {e}", path.display()));
    match std::fs::read(&path) {
        Ok(bytes) if bytes.len() >= 32 => return Ok(bytes),
        Ok(_) => {
            return Err(StateError::Objects(format!(
                "{}: shorter than 32 bytes",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail("cannot read", e)),
    }
    std::fs::create_dir_all(dir).map_err(|e| fail("cannot create the directory", e))?;
    let secret = random_secret()?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(&path) {
        Ok(mut file) => {
            std::io::Write::write_all(&mut file, &secret).map_err(|e| fail("cannot write", e))?;
            file.sync_all().map_err(|e| fail("cannot write", e))?;
            Ok(secret.to_vec())
        }
        // Another process made it first: use theirs.
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            std::fs::read(&path).map_err(|e| fail("cannot read", e))
        }
        Err(e) => Err(fail("cannot create", e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_map_to_bucketed_keys() {
        let n = ImageName::new(7201, "png").unwrap();
        assert_eq!(n.bucket, 3, "7201 s is in the hour that ends at 10800 s");
        let text = n.as_url_name();
        assert_eq!(ImageName::parse(&text), Some(n.clone()));
        assert_eq!(n.key().unwrap().as_str(), format!("images/3/{}.png", n.id));
        assert_eq!(ImageName::new(1, "gif").unwrap().ext, "bin");
        for bad in [
            "",
            "3-abc",
            "3-abc.gif",
            "-abc.png",
            "x3-abc.png",
            "3-.png",
            "3-a/b.png",
            "3-../../etc/passwd",
            "3-..%2f.png",
            "3-a.b.png",
            "../3-abc.png",
            "3-abc.png/",
        ] {
            assert_eq!(ImageName::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn signed_urls_are_checked_before_anything_else() {
        let signer = UrlSigner::new(b"0123456789abcdef0123456789abcdef");
        let name = ImageName::new(2000, "webp").unwrap().as_url_name();
        let url = signer.url(Some("https://gw.example"), &name, 2000);
        let query = url.split_once('?').unwrap().1;
        assert!(url.starts_with(&format!("https://gw.example/v1/images/files/{name}?expires=2000&sig=")));
        let granted = signer.check(&name, Some(query), 1000).unwrap();
        assert_eq!((granted.ext, granted.remaining), ("webp", 1000));
        let sig = signer.sign(&name, 2000);
        let refused = |name: &str, query: &str, now| signer.check(name, Some(query), now).unwrap_err();
        // Tampered name, expiry or signature.
        let other = ImageName::new(2000, "webp").unwrap().as_url_name();
        assert_eq!(refused(&other, query, 1000), UrlRefusal::BadSignature);
        assert_eq!(
            refused(&name, &format!("expires=3000&sig={sig}"), 1000),
            UrlRefusal::BadSignature
        );
        let mut flipped = sig.clone().into_bytes();
        flipped[0] = if flipped[0] == b'0' { b'1' } else { b'0' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(
            refused(&name, &format!("expires=2000&sig={flipped}"), 1000),
            UrlRefusal::BadSignature
        );
        // Another secret.
        let other_signer = UrlSigner::new(b"another secret, also 32 bytes!!!");
        assert_eq!(
            other_signer.check(&name, Some(query), 1000).unwrap_err(),
            UrlRefusal::BadSignature
        );
        // Missing or malformed parameters.
        for q in [
            "",
            "expires=2000",
            &format!("sig={sig}"),
            &format!("expires=&sig={sig}"),
            &format!("expires=-1&sig={sig}"),
            "expires=2000&sig=zz",
            &format!("expires=2000&sig={sig}&sig={sig}"),
        ] {
            assert_eq!(refused(&name, q, 1000), UrlRefusal::MissingSignature, "{q}");
        }
        assert_eq!(
            signer.check(&name, None, 1000).unwrap_err(),
            UrlRefusal::MissingSignature
        );
        // Expired: at and after its second.
        assert_eq!(refused(&name, query, 2000), UrlRefusal::Expired);
        assert_eq!(refused(&name, query, 5000), UrlRefusal::Expired);
        // A name the gateway never makes, even signed (a leaked secret), maps to no key.
        let traversal = "3-../../etc/passwd";
        let q = format!("expires=2000&sig={}", signer.sign(traversal, 2000));
        assert_eq!(refused(traversal, &q, 1000), UrlRefusal::BadName);
        // Unsigned traversal: refused by the signature first.
        assert_eq!(refused(traversal, query, 1000), UrlRefusal::BadSignature);
    }

    #[test]
    fn the_kept_secret_is_made_once_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let first = kept_secret(dir.path()).unwrap();
        assert_eq!(first.len(), 32);
        assert_eq!(kept_secret(dir.path()).unwrap(), first, "kept across restarts");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(".url-secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let signer = UrlSigner::open(
            &ObjectsSettings::Fs {
                path: dir.path().to_path_buf(),
            },
            &ObjectUrls::default(),
        )
        .unwrap();
        assert_eq!(signer.sign("n", 1), UrlSigner::new(&first).sign("n", 1));
    }
}
