//! Stored objects: uploads of pending jobs and result images, in a local directory
//! (`LocalFileSystem`) or an S3 bucket (`AmazonS3`, path-style, any S3-compatible endpoint).
//!
//! Keys are made by the gateway ([`ObjectKey`]), never from a client-supplied name, and every
//! object stays below the configured directory or prefix.

use super::{StateError, StateResult};
use crate::config::{ObjectsSettings, S3Settings};
use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{Attribute, Attributes, ObjectStore, ObjectStoreExt, PutOptions, PutPayload};
use std::sync::Arc;
use std::time::Duration;
use url::Url;

/// A key the gateway made: segments of ASCII letters, digits, `-`, `_` and `.` joined by `/`,
/// none empty, `.` or `..`, at most 512 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// `text` as a key, or [`StateError::BadKey`].
    pub fn new(text: &str) -> StateResult<ObjectKey> {
        let segment_ok = |s: &str| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        };
        if text.len() <= 512 && text.split('/').all(segment_ok) {
            Ok(ObjectKey(text.to_string()))
        } else {
            Err(StateError::BadKey(text.to_string()))
        }
    }

    /// The key as written.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// The content type of an image key by its extension (what S3 and the gateway's file route
/// serve it with).
pub fn content_type(key: &ObjectKey) -> Option<&'static str> {
    match key.0.rsplit_once('.').map(|(_, ext)| ext) {
        Some("png") => Some("image/png"),
        Some("jpg" | "jpeg") => Some("image/jpeg"),
        Some("webp") => Some("image/webp"),
        Some("json") => Some("application/json"),
        _ => None,
    }
}

/// The objects store opened from `objects`.
#[derive(Clone)]
pub struct Objects {
    store: Arc<dyn ObjectStore>,
    /// The same store when it can sign URLs (S3).
    signer: Option<Arc<AmazonS3>>,
    /// Prepended to every key (S3 `prefix`).
    prefix: Option<String>,
    /// Whether to store the content type with the object (S3).
    typed: bool,
    /// The directory, for a directory store.
    root: Option<std::path::PathBuf>,
}

impl Objects {
    /// Opens the store: creates the directory (and checks it is writable), or builds the S3
    /// client (no request is made). Runs once, at startup.
    pub fn open(settings: &ObjectsSettings) -> StateResult<Objects> {
        match settings {
            ObjectsSettings::Fs { path } => {
                let fail = |what: String| StateError::Objects(format!("{}: {what}", path.display()));
                std::fs::create_dir_all(path).map_err(|e| fail(format!("cannot create the directory: {e}")))?;
                // A directory we cannot write would only fail at the first job: find out now.
                tempfile::tempfile_in(path).map_err(|e| fail(format!("cannot write in the directory: {e}")))?;
                let fs = LocalFileSystem::new_with_prefix(path).map_err(|e| fail(e.to_string()))?;
                Ok(Objects {
                    store: Arc::new(fs),
                    signer: None,
                    prefix: None,
                    typed: false,
                    root: Some(path.clone()),
                })
            }
            ObjectsSettings::S3(s3) => {
                let bucket = Arc::new(s3_store(s3)?);
                Ok(Objects {
                    store: bucket.clone(),
                    signer: Some(bucket),
                    prefix: s3.prefix.clone(),
                    typed: true,
                    root: None,
                })
            }
        }
    }

    fn path(&self, key: &ObjectKey) -> Path {
        match &self.prefix {
            Some(p) => Path::from(format!("{p}/{}", key.0)),
            None => Path::from(key.0.as_str()),
        }
    }

    /// Stores the whole of `spool` at `key` (an async job's upload), in one request whose
    /// payload is the spool's chunks as they are (no contiguous copy); returns its length.
    pub async fn put_spool(&self, key: &ObjectKey, spool: &crate::spool::Spool) -> StateResult<u64> {
        let all = crate::spool::SpoolRange {
            start: 0,
            len: spool.len(),
        };
        let chunks = spool
            .chunks(all)
            .collect::<std::io::Result<Vec<Bytes>>>()
            .map_err(|e| StateError::Objects(format!("reading the spool: {e}")))?;
        self.put_payload(key, chunks.into_iter().collect()).await?;
        Ok(spool.len())
    }

    /// Appends the bytes at `key` to `spool` as they stream in; `false` when there are none.
    pub async fn get_into(&self, key: &ObjectKey, spool: &mut crate::spool::Spool) -> StateResult<bool> {
        use futures_util::StreamExt;
        let found = match self.store.get(&self.path(key)).await {
            Ok(found) => found,
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut stream = found.into_stream();
        while let Some(chunk) = stream.next().await {
            spool
                .append(chunk?)
                .map_err(|e| StateError::Objects(format!("writing the spool: {e}")))?;
        }
        Ok(true)
    }

    /// Stores `bytes` at `key` (replacing what was there).
    pub async fn put(&self, key: &ObjectKey, bytes: Bytes) -> StateResult<()> {
        self.put_payload(key, PutPayload::from_bytes(bytes)).await
    }

    async fn put_payload(&self, key: &ObjectKey, payload: PutPayload) -> StateResult<()> {
        let mut attributes = Attributes::new();
        if let Some(t) = content_type(key).filter(|_| self.typed) {
            attributes.insert(Attribute::ContentType, t.into());
        }
        let options = PutOptions {
            attributes,
            ..Default::default()
        };
        self.store.put_opts(&self.path(key), payload, options).await?;
        Ok(())
    }

    /// The bytes at `key`, `None` when there are none.
    pub async fn get(&self, key: &ObjectKey) -> StateResult<Option<Bytes>> {
        match self.store.get(&self.path(key)).await {
            Ok(found) => Ok(Some(found.bytes().await?)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes `key`; deleting what is not there is not an error.
    pub async fn delete(&self, key: &ObjectKey) -> StateResult<()> {
        match self.store.delete(&self.path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes the result images whose expiry bucket (`images/{hour}/…`, see
    /// [`super::urls::ImageName`]) has ended by `now_ms`, whole buckets at a time; returns how
    /// many objects were deleted. Run periodically by the cleaner.
    pub async fn remove_expired_images(&self, now_ms: u64) -> StateResult<u64> {
        let now = now_ms / 1000;
        let images = match &self.prefix {
            Some(p) => Path::from(format!("{p}/images")),
            None => Path::from("images"),
        };
        let listed = match self.store.list_with_delimiter(Some(&images)).await {
            Ok(listed) => listed,
            Err(object_store::Error::NotFound { .. }) => return Ok(0),
            Err(e) => return Err(e.into()),
        };
        let mut deleted = 0;
        for bucket_path in listed.common_prefixes {
            let ended = bucket_path
                .filename()
                .and_then(super::urls::bucket_of)
                .is_some_and(|bucket| bucket.saturating_mul(super::urls::BUCKET_SECONDS) <= now);
            if !ended {
                continue;
            }
            let mut objects = self.store.list(Some(&bucket_path));
            while let Some(meta) = objects.next().await {
                match self.store.delete(&meta?.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => deleted += 1,
                    Err(e) => return Err(e.into()),
                }
            }
            if let Some(root) = &self.root {
                // A directory keeps its empty bucket directory: remove it (another replica
                // may be adding to it only if its clock is far behind; then it stays).
                let _ = std::fs::remove_dir(root.join(bucket_path.as_ref()));
            }
        }
        Ok(deleted)
    }

    /// A URL that fetches `key` with GET for `ttl`, when the store can sign one (S3: a
    /// presigned URL); `None` for a directory (the gateway serves those itself).
    pub async fn sign(&self, key: &ObjectKey, ttl: Duration) -> StateResult<Option<Url>> {
        let Some(signer) = &self.signer else {
            return Ok(None);
        };
        let url = signer
            .signed_url(object_store::signer::Method::GET, &self.path(key), ttl)
            .await?;
        Ok(Some(url))
    }
}

/// The S3 client of `s3`: path-style, plain http allowed only for an http endpoint (which the
/// config accepts only on loopback).
fn s3_store(s3: &S3Settings) -> StateResult<AmazonS3> {
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&s3.bucket)
        .with_region(&s3.region)
        .with_access_key_id(s3.access_key_id.expose())
        .with_secret_access_key(s3.secret_access_key.expose())
        .with_virtual_hosted_style_request(false);
    if let Some(endpoint) = &s3.endpoint {
        builder = builder
            .with_endpoint(endpoint)
            .with_allow_http(endpoint.starts_with("http://"));
    }
    builder
        .build()
        .map_err(|e| StateError::Objects(format!("s3 bucket {}: {e}", s3.bucket)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_made_by_the_gateway_only() {
        for good in ["images/abc.png", "uploads/J0b-id_1/0", "a"] {
            assert!(ObjectKey::new(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "/abs",
            "a//b",
            "../etc/passwd",
            "a/../b",
            "a/./b",
            "a b",
            "é",
            "a\\b",
            "x/",
        ] {
            assert!(ObjectKey::new(bad).is_err(), "{bad}");
        }
        assert!(ObjectKey::new(&"a".repeat(513)).is_err());
    }

    #[test]
    fn content_types_by_extension() {
        let t = |k: &str| content_type(&ObjectKey::new(k).unwrap());
        assert_eq!(t("images/x.png"), Some("image/png"));
        assert_eq!(t("images/x.jpeg"), Some("image/jpeg"));
        assert_eq!(t("uploads/x/0"), None);
    }
}
