//! A JSON request body written as a body plan: literal JSON pieces in [`BodySegment::Bytes`],
//! and uploaded images as [`BodySegment::Base64`] ranges of the spool, which the exchange
//! encodes on the fly (so an image is never copied into the JSON). Used by adapters that
//! inline images in JSON (Vertex Imagen, Bedrock) while they build a request.

use crate::error::GatewayError;
use crate::providers::BodySegment;
use crate::spool::SpoolRange;
use bytes::{BufMut, BytesMut};
use serde::Serialize;

/// Literal JSON pieces and base64-encoded spool ranges, in order.
pub struct JsonWriter {
    segments: Vec<BodySegment>,
    pending: BytesMut,
}

impl JsonWriter {
    /// An empty body expecting about `segments` segments and `literal_bytes` bytes of literal
    /// JSON (inline base64 included).
    pub fn with_capacity(segments: usize, literal_bytes: usize) -> Self {
        JsonWriter {
            segments: Vec::with_capacity(segments),
            pending: BytesMut::with_capacity(literal_bytes),
        }
    }

    /// Appends literal JSON text.
    pub fn raw(&mut self, s: &str) {
        self.pending.put_slice(s.as_bytes());
    }

    /// Appends `value` serialized as JSON.
    pub fn json<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), GatewayError> {
        serde_json::to_writer((&mut self.pending).writer(), value).map_err(|e| GatewayError::Internal(e.to_string()))
    }

    /// Appends the base64 of bytes held in memory (a converted mask), without quotes.
    pub fn base64_of_bytes(&mut self, bytes: &[u8]) {
        let mut encoded = Vec::with_capacity(bytes.len() * 4 / 3 + 4);
        crate::codec::base64::encode_append(bytes, &mut encoded);
        self.pending.put_slice(&encoded);
    }

    /// Appends the base64 of a spool range (an upload), without quotes, as its own segment.
    pub fn base64_of_spool(&mut self, range: SpoolRange) {
        if !self.pending.is_empty() {
            self.segments.push(BodySegment::Bytes(self.pending.split().freeze()));
        }
        self.segments.push(BodySegment::Base64(range));
    }

    /// The body plan.
    pub fn finish(mut self) -> Vec<BodySegment> {
        if !self.pending.is_empty() {
            self.segments.push(BodySegment::Bytes(self.pending.freeze()));
        }
        self.segments
    }
}
