//! The simulator's JSON bodies split as they arrive ([`JsonSplitter`]): every string longer
//! than [`BIG_STRING_BYTES`] (a base64 image) is decoded into the request's spool and replaced by
//! a short reference to it ([`REFERENCE`]); the rest of the JSON is kept for the handler to
//! parse. Pure: the listener's reader ([`super::body::read_body`]) feeds it each chunk.

use super::body::{BodyError, MAX_JSON_BYTES};
use crate::codec::base64::Base64Decoder;
use crate::spool::Spool;
use bytes::Bytes;

/// JSON strings longer than this are decoded from base64 into the spool as they arrive.
pub const BIG_STRING_BYTES: usize = 256 * 1024;

/// What a long JSON string is replaced with: this, then `start:len` of its decoded bytes in the
/// spool, or `!` when it was not base64. `\u0000` cannot be sent raw in a JSON string, so no
/// ordinary string starts like this by accident.
pub const REFERENCE: &str = "\u{0}spool:";
/// [`REFERENCE`] as JSON text.
const REFERENCE_JSON: &[u8] = b"\\u0000spool:";
/// Longest `data:…;base64,` prefix kept in front of a reference.
const MAX_DATA_URL_PREFIX: usize = 256;

/// Splits a JSON body as it arrives: long strings are decoded from base64 into the spool, the
/// rest is kept (see the module docs). It only tracks where strings begin and end; whether the
/// kept text is JSON is for the JSON parser to say.
#[derive(Debug, Default)]
pub struct JsonSplitter {
    kept: Vec<u8>,
    state: JsonState,
}

#[derive(Debug, Default)]
enum JsonState {
    /// Between strings.
    #[default]
    Outside,
    /// In a string, its content so far held (it may still be short).
    Short { text: Vec<u8>, escape: bool },
    /// In a long string, decoded into the spool from `start` as it arrives.
    Long {
        decoder: Base64Decoder,
        start: u64,
        escape: bool,
        /// False once the string is known not to be base64.
        ok: bool,
    },
}

/// The position of the string's closing quote in `bytes`, if there; `escape` says whether the
/// previous byte was an unfinished backslash escape, and is updated for the next chunk.
fn string_end(bytes: &[u8], escape: &mut bool) -> Option<usize> {
    let mut at = 0;
    if *escape {
        if bytes.is_empty() {
            return None;
        }
        *escape = false;
        at = 1;
    }
    loop {
        let found = at + memchr::memchr2(b'"', b'\\', bytes.get(at..)?)?;
        if bytes[found] == b'"' {
            return Some(found);
        }
        if found + 1 >= bytes.len() {
            *escape = true;
            return None;
        }
        at = found + 2;
    }
}

impl JsonSplitter {
    fn keep(&mut self, bytes: &[u8]) -> Result<(), BodyError> {
        if self.kept.len() + bytes.len() > MAX_JSON_BYTES {
            return Err(BodyError::TooLarge("JSON"));
        }
        self.kept.extend_from_slice(bytes);
        Ok(())
    }

    /// Takes the next chunk of the body.
    pub fn push(&mut self, mut chunk: &[u8], spool: &mut Spool) -> Result<(), BodyError> {
        while !chunk.is_empty() {
            match &mut self.state {
                JsonState::Outside => match memchr::memchr(b'"', chunk) {
                    None => {
                        self.keep(chunk)?;
                        chunk = &[];
                    }
                    Some(i) => {
                        self.keep(&chunk[..=i])?;
                        chunk = &chunk[i + 1..];
                        self.state = JsonState::Short {
                            text: Vec::new(),
                            escape: false,
                        };
                    }
                },
                JsonState::Short { text, escape } => {
                    let end = string_end(chunk, escape);
                    let segment = end.unwrap_or(chunk.len());
                    // at most one byte past the threshold is gathered before the string goes long
                    let gathered = segment.min(BIG_STRING_BYTES + 1 - text.len().min(BIG_STRING_BYTES));
                    text.extend_from_slice(&chunk[..gathered]);
                    let rest = &chunk[gathered..segment];
                    chunk = &chunk[end.map_or(chunk.len(), |e| e + 1)..];
                    if text.len() > BIG_STRING_BYTES {
                        let (text, escape) = (std::mem::take(text), *escape);
                        self.go_long(&text, escape, spool)?;
                        self.decode(rest, spool)?;
                        if end.is_some() {
                            self.end_long(spool)?;
                        }
                    } else if end.is_some() {
                        let text = std::mem::take(text);
                        self.state = JsonState::Outside;
                        self.keep(&text)?;
                        self.keep(b"\"")?;
                    }
                }
                JsonState::Long { escape, .. } => {
                    let end = string_end(chunk, escape);
                    let segment = &chunk[..end.unwrap_or(chunk.len())];
                    chunk = &chunk[end.map_or(chunk.len(), |e| e + 1)..];
                    self.decode(segment, spool)?;
                    if end.is_some() {
                        self.end_long(spool)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// A string got long: its `text` so far (and what follows) is decoded into the spool, a
    /// `data:` URL's prefix kept.
    fn go_long(&mut self, text: &[u8], escape: bool, spool: &mut Spool) -> Result<(), BodyError> {
        let prefix = if text.starts_with(b"data:") {
            memchr::memmem::find(&text[..text.len().min(MAX_DATA_URL_PREFIX)], b";base64,").map_or(0, |i| i + 8)
        } else {
            0
        };
        self.keep(&text[..prefix])?;
        self.keep(REFERENCE_JSON)?;
        self.state = JsonState::Long {
            decoder: Base64Decoder::new(),
            start: spool.len(),
            escape,
            ok: true,
        };
        self.decode(&text[prefix..], spool)
    }

    /// Decodes the next bytes of a long string into the spool.
    fn decode(&mut self, segment: &[u8], spool: &mut Spool) -> Result<(), BodyError> {
        if let JsonState::Long { decoder, ok, .. } = &mut self.state {
            // An escape in base64 text means it is not base64 (writers do not escape `/`).
            if *ok && memchr::memchr(b'\\', segment).is_some() {
                *ok = false;
            }
            if *ok {
                let mut out = Vec::with_capacity(segment.len() / 4 * 3 + 3);
                *ok = decoder.push(segment, &mut out);
                if !out.is_empty() {
                    spool.append(out.into()).map_err(BodyError::Io)?;
                }
            }
        }
        Ok(())
    }

    /// The long string ended: its reference is kept.
    fn end_long(&mut self, spool: &mut Spool) -> Result<(), BodyError> {
        let JsonState::Long {
            mut decoder, start, ok, ..
        } = std::mem::take(&mut self.state)
        else {
            return Ok(());
        };
        let mut out = Vec::new();
        let ok = ok && decoder.finish(&mut out);
        if !out.is_empty() {
            spool.append(out.into()).map_err(BodyError::Io)?;
        }
        let reference = if ok {
            format!("{start}:{}\"", spool.len() - start)
        } else {
            "!\"".to_string()
        };
        self.keep(reference.as_bytes())
    }

    /// The body ended: the kept JSON (an unterminated string is kept as far as it went).
    pub fn finish(mut self) -> Result<Bytes, BodyError> {
        match std::mem::take(&mut self.state) {
            JsonState::Outside => {}
            JsonState::Short { text, .. } => self.keep(&text)?,
            JsonState::Long { .. } => self.keep(b"!")?,
        }
        Ok(self.kept.into())
    }
}
