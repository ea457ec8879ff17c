//! The multipart writer: an upstream `multipart/form-data` body as a body plan (literal part
//! headers and text fields in [`BodySegment::Bytes`], uploaded files as spool ranges sent as
//! they are), its head, and its boundary. Used while a request is built (OpenAI, Azure,
//! Stability) and, part by part, by the streaming encoder of the OpenAI Images API.

use super::post::post;
use crate::form::FilePart;
use crate::providers::{BodySegment, UpstreamRequest};
use bytes::{BufMut, Bytes, BytesMut};

/// Escapes a multipart field or file name the way browsers do (HTML spec): `"`, CR and LF are
/// percent-encoded, so a hostile name cannot break out of the header.
fn escape_name(name: &str) -> std::borrow::Cow<'_, str> {
    if !name.contains(['"', '\r', '\n']) {
        return std::borrow::Cow::Borrowed(name);
    }
    std::borrow::Cow::Owned(name.replace('"', "%22").replace('\r', "%0D").replace('\n', "%0A"))
}

/// Builds a multipart body as a list of segments: literal bytes, and spool ranges for files.
pub struct MultipartWriter {
    boundary: String,
    segments: Vec<BodySegment>,
    pending: BytesMut,
}

impl MultipartWriter {
    /// A writer for a body delimited by `boundary`.
    pub fn new(boundary: String) -> Self {
        MultipartWriter {
            boundary,
            segments: Vec::new(),
            pending: BytesMut::with_capacity(1024),
        }
    }

    /// A text part.
    pub fn text(&mut self, name: &str, value: &str) {
        self.pending.put_slice(b"--");
        self.pending.put_slice(self.boundary.as_bytes());
        self.pending.put_slice(b"\r\nContent-Disposition: form-data; name=\"");
        self.pending.put_slice(escape_name(name).as_bytes());
        self.pending.put_slice(b"\"\r\n\r\n");
        self.pending.put_slice(value.as_bytes());
        self.pending.put_slice(b"\r\n");
    }

    /// A file part whose content is the upload `part`, streamed from the spool.
    pub fn file(&mut self, name: &str, filename: &str, content_type: &str, part: &FilePart) {
        self.file_head(name, filename, content_type);
        self.flush();
        self.segments.push(BodySegment::Spool(part.range));
        self.pending.put_slice(b"\r\n");
    }

    /// A file part whose content the adapter made (e.g. a converted mask).
    pub fn file_bytes(&mut self, name: &str, filename: &str, content_type: &str, content: Bytes) {
        self.file_head(name, filename, content_type);
        self.flush();
        self.segments.push(BodySegment::Bytes(content));
        self.pending.put_slice(b"\r\n");
    }

    /// The header block of a file part (its content follows).
    pub fn file_head(&mut self, name: &str, filename: &str, content_type: &str) {
        self.pending.put_slice(b"--");
        self.pending.put_slice(self.boundary.as_bytes());
        self.pending.put_slice(b"\r\nContent-Disposition: form-data; name=\"");
        self.pending.put_slice(escape_name(name).as_bytes());
        self.pending.put_slice(b"\"; filename=\"");
        self.pending.put_slice(escape_name(filename).as_bytes());
        self.pending.put_slice(b"\"\r\nContent-Type: ");
        self.pending.put_slice(content_type.as_bytes());
        self.pending.put_slice(b"\r\n\r\n");
    }

    /// The bytes written since the last call (streaming use).
    pub fn take(&mut self) -> Bytes {
        self.pending.split().freeze()
    }

    /// Writes the closing boundary (streaming use; [`MultipartWriter::finish`] writes it too).
    pub fn end(&mut self) {
        self.pending.put_slice(b"--");
        self.pending.put_slice(self.boundary.as_bytes());
        self.pending.put_slice(b"--\r\n");
    }

    /// Ends a file part whose content was sent by the caller (streaming use).
    pub fn file_end(&mut self) {
        self.pending.put_slice(b"\r\n");
    }

    fn flush(&mut self) {
        if !self.pending.is_empty() {
            self.segments.push(BodySegment::Bytes(self.pending.split().freeze()));
        }
    }

    /// Ends the body; its segments in order.
    pub fn finish(mut self) -> Vec<BodySegment> {
        self.end();
        self.flush();
        self.segments
    }
}

/// A declared content type is passed through only when it is a plain `type/subtype` token.
pub fn safe_content_type(declared: Option<&str>) -> &str {
    match declared {
        Some(ct)
            if !ct.is_empty()
                && ct.len() < 128
                && ct.bytes().all(|b| b.is_ascii_alphanumeric() || b"/.+-_".contains(&b)) =>
        {
            ct
        }
        _ => "application/octet-stream",
    }
}

/// The upstream head for a multipart body with `boundary`, sent to `path` with the credential
/// header `auth` (the body is left empty).
pub fn multipart_head(
    path: String,
    auth: (http::HeaderName, String),
    request_id: &str,
    boundary: &str,
) -> UpstreamRequest {
    post(
        path,
        auth,
        format!("multipart/form-data; boundary={boundary}"),
        "application/json",
        request_id,
        Vec::new(),
    )
}

/// The multipart boundary made from `nonce` (random bits the gateway draws per attempt):
/// `refract-` and 32 hex digits, unpredictable to the client whose bytes the body carries,
/// and the same for the same nonce.
pub fn boundary(nonce: u128) -> String {
    format!("refract-{nonce:032x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_names_are_escaped() {
        assert_eq!(escape_name("a\"\r\nb"), "a%22%0D%0Ab");
    }
}
