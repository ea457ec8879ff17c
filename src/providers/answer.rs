//! The unified answer as the gateway sends it: pieces of bytes in order, where the large JSON
//! strings (the base64 images) are slices of the provider's answer buffer itself (shared, not
//! copied) and everything around them (`index`, `extra_fields`, the other members) is small
//! literals.
//!
//! A converter writes through an [`AnswerWriter`] made over the provider's body (its
//! *sources*): a JSON string of [`SPLICE_MIN_BYTES`] or more that lies in a source becomes a
//! shared piece, anything else is copied into the current literal. The result is a
//! [`UnifiedAnswer`]: byte for byte what one buffer would hold, with its length known up front
//! (the `Content-Length`), written to the client piece by piece. So a converted answer costs
//! its provider's buffer and a few hundred bytes, not a second full copy. Paths that must read
//! the answer again (merging n calls, a stream synthesized from a whole answer) flatten it
//! with [`UnifiedAnswer::to_bytes`].

use super::rawjson::JsonOut;
use bytes::Bytes;

/// JSON strings at least this long are shared with their source rather than copied. Below it
/// a copy costs less than one more write to the client (each shared piece is a write of its
/// own, and so is the literal before it).
pub const SPLICE_MIN_BYTES: usize = 16 * 1024;

/// One piece of an answer.
#[derive(Debug, Clone)]
enum Piece {
    /// Bytes the converter wrote.
    Literal(Bytes),
    /// A whole JSON string value (quotes included) of a source buffer, shared with it.
    Shared(Bytes),
}

impl Piece {
    fn bytes(&self) -> &Bytes {
        match self {
            Piece::Literal(b) | Piece::Shared(b) => b,
        }
    }
}

/// A complete unified answer (JSON), as pieces in order; see the module docs. Never holds two
/// literal pieces in a row, nor an empty piece.
#[derive(Debug, Clone, Default)]
pub struct UnifiedAnswer {
    pieces: Vec<Piece>,
    len: usize,
}

impl UnifiedAnswer {
    /// The answer's length in bytes (its `Content-Length`).
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the answer has no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The pieces in order, each to be written as it is.
    pub fn pieces(&self) -> impl Iterator<Item = &Bytes> {
        self.pieces.iter().map(Piece::bytes)
    }

    /// The pieces in order, owned.
    pub fn into_pieces(self) -> Vec<Bytes> {
        self.pieces
            .into_iter()
            .map(|p| match p {
                Piece::Literal(b) | Piece::Shared(b) => b,
            })
            .collect()
    }

    /// How many of the answer's bytes are shared with its sources (not copied).
    pub fn shared_len(&self) -> usize {
        self.pieces
            .iter()
            .map(|p| match p {
                Piece::Shared(b) => b.len(),
                Piece::Literal(_) => 0,
            })
            .sum()
    }

    /// The answer in one buffer: the piece itself when there is one, else a copy (the paths
    /// that parse the answer again, and tests).
    pub fn to_bytes(&self) -> Bytes {
        match self.pieces.as_slice() {
            [] => Bytes::new(),
            [one] => one.bytes().clone(),
            pieces => {
                let mut out = Vec::with_capacity(self.len);
                for p in pieces {
                    out.extend_from_slice(p.bytes());
                }
                Bytes::from(out)
            }
        }
    }

    /// Inserts `members` (`"k":v` pairs, comma-separated) at the start of the last object
    /// that is the value of a member named `key` (the last `"key":{` of the text), with the
    /// comma the object then needs; returns false, changing nothing, when there is none.
    ///
    /// Only literal pieces are searched, and that finds the same place as a search of the
    /// whole text: a shared piece is a whole JSON string value, whose inner quotes are
    /// escaped and whose closing quote is never followed by `:`, so `"key":{` can neither lie
    /// in one nor straddle its ends (and literals are never split in two pieces).
    pub fn insert_members(&mut self, key: &str, members: &str) -> bool {
        let needle = format!("\"{key}\":{{");
        let needle = needle.as_bytes();
        let found = self.pieces.iter().enumerate().rev().find_map(|(i, p)| match p {
            Piece::Literal(b) => b
                .windows(needle.len())
                .rposition(|w| w == needle)
                .map(|at| (i, at + needle.len())),
            Piece::Shared(_) => None,
        });
        let Some((i, cut)) = found else {
            return false;
        };
        let literal = self.pieces[i].bytes().clone();
        // The byte after `{`: in this literal, or the first of the next piece.
        let next = literal
            .get(cut)
            .or_else(|| self.pieces.get(i + 1).and_then(|p| p.bytes().first()))
            .copied();
        let mut out = Vec::with_capacity(literal.len() + members.len() + 1);
        out.extend_from_slice(&literal[..cut]);
        out.extend_from_slice(members.as_bytes());
        if next != Some(b'}') {
            out.push(b',');
        }
        out.extend_from_slice(&literal[cut..]);
        self.len += out.len() - literal.len();
        self.pieces[i] = Piece::Literal(Bytes::from(out));
        true
    }
}

impl From<Bytes> for UnifiedAnswer {
    /// An answer in one buffer.
    fn from(bytes: Bytes) -> Self {
        let len = bytes.len();
        let pieces = if bytes.is_empty() {
            Vec::new()
        } else {
            vec![Piece::Literal(bytes)]
        };
        UnifiedAnswer { pieces, len }
    }
}

impl From<Vec<u8>> for UnifiedAnswer {
    fn from(bytes: Vec<u8>) -> Self {
        UnifiedAnswer::from(Bytes::from(bytes))
    }
}

/// Writes a [`UnifiedAnswer`] over source buffers (see the module docs). Implements
/// [`std::io::Write`] (for `serde_json::to_writer`) and [`JsonOut`] (for [`super::rawjson`]),
/// both appending literal bytes, except that [`AnswerWriter::string`] (`put_string`,
/// `put_raw`) shares a long JSON string that lies in a source.
#[derive(Debug)]
pub struct AnswerWriter {
    sources: Vec<Bytes>,
    pieces: Vec<Piece>,
    literal: Vec<u8>,
    len: usize,
}

impl AnswerWriter {
    /// A writer whose long strings may be shared with `sources` (cheap clones of the buffers
    /// the converter reads from).
    pub fn new(sources: Vec<Bytes>) -> Self {
        AnswerWriter {
            sources,
            pieces: Vec::new(),
            literal: Vec::with_capacity(512),
            len: 0,
        }
    }

    /// Appends `bytes`, copied.
    pub fn put(&mut self, bytes: &[u8]) {
        self.literal.extend_from_slice(bytes);
    }

    /// Appends `text`, a whole JSON string value (quotes included, valid JSON): shared when
    /// it is at least [`SPLICE_MIN_BYTES`] long and lies in one of the sources, copied
    /// otherwise. The text must be a value, never a member name (see
    /// [`UnifiedAnswer::insert_members`]).
    pub fn string(&mut self, text: &[u8]) {
        match self.source_slice(text) {
            Some(shared) if text.len() >= SPLICE_MIN_BYTES => {
                self.end_literal();
                self.len += shared.len();
                self.pieces.push(Piece::Shared(shared));
            }
            _ => self.put(text),
        }
    }

    /// `text` as a slice of the source that holds it, if one does.
    fn source_slice(&self, text: &[u8]) -> Option<Bytes> {
        let start = text.as_ptr() as usize;
        let end = start.checked_add(text.len())?;
        self.sources.iter().find_map(|s| {
            let s_start = s.as_ptr() as usize;
            // Within `s`, so `slice_ref` (which panics otherwise) cannot panic.
            (s_start <= start && end <= s_start + s.len()).then(|| s.slice_ref(text))
        })
    }

    fn end_literal(&mut self) {
        if !self.literal.is_empty() {
            let literal = std::mem::take(&mut self.literal);
            self.len += literal.len();
            self.pieces.push(Piece::Literal(Bytes::from(literal)));
        }
    }

    /// The answer written.
    pub fn finish(mut self) -> UnifiedAnswer {
        self.end_literal();
        UnifiedAnswer {
            pieces: self.pieces,
            len: self.len,
        }
    }
}

impl std::io::Write for AnswerWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.put(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl JsonOut for AnswerWriter {
    fn put(&mut self, bytes: &[u8]) {
        AnswerWriter::put(self, bytes);
    }

    /// Shared when long enough ([`AnswerWriter::string`]).
    fn put_string(&mut self, text: &[u8]) {
        self.string(text);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn long_string(len: usize, fill: u8) -> Vec<u8> {
        let mut s = vec![fill; len];
        s[0] = b'"';
        s[len - 1] = b'"';
        s
    }

    #[test]
    fn long_strings_of_a_source_are_shared_the_rest_copied() {
        let image = long_string(SPLICE_MIN_BYTES + 10, b'A');
        let short = long_string(20, b'B');
        let mut body = b"{\"a\":".to_vec();
        body.extend_from_slice(&image);
        body.extend_from_slice(b",\"b\":");
        body.extend_from_slice(&short);
        body.push(b'}');
        let source = Bytes::from(body);
        let (img, sh) = (
            &source[5..5 + image.len()],
            &source[10 + image.len()..10 + image.len() + 20],
        );
        let elsewhere = image.clone();
        let mut w = AnswerWriter::new(vec![source.clone()]);
        w.put(b"[");
        w.string(img);
        w.put(b",");
        w.string(sh);
        w.put(b",");
        w.string(&elsewhere);
        w.put(b"]");
        let answer = w.finish();
        let mut expected = b"[".to_vec();
        expected.extend_from_slice(&image);
        expected.push(b',');
        expected.extend_from_slice(&short);
        expected.push(b',');
        expected.extend_from_slice(&image);
        expected.push(b']');
        assert_eq!(answer.to_bytes(), expected);
        assert_eq!(answer.len(), expected.len());
        assert_eq!(answer.shared_len(), image.len(), "only the long string of the source");
        let pieces: Vec<&Bytes> = answer.pieces().collect();
        assert_eq!(pieces.len(), 3, "literal, shared, literal");
        assert_eq!(pieces[1].as_ptr(), img.as_ptr(), "the same memory as the source's");
        assert!(answer.pieces().all(|p| !p.is_empty()));
    }

    #[test]
    fn members_go_into_the_last_object_of_that_name() {
        let image = long_string(SPLICE_MIN_BYTES, b'Q');
        let mut body = b"{\"data\":[{\"b64_json\":".to_vec();
        body.extend_from_slice(&image);
        body.extend_from_slice(b"}],\"extra_fields\":{\"provider\":\"p\"}}");
        let source = Bytes::from(body.clone());
        let mut w = AnswerWriter::new(vec![source.clone()]);
        w.put(&body[..21]);
        w.string(&source[21..21 + image.len()]);
        w.put(&body[21 + image.len()..]);
        let mut answer = w.finish();
        assert!(answer.insert_members("extra_fields", "\"attempts\":2"));
        let v: serde_json::Value = serde_json::from_slice(&answer.to_bytes()).unwrap();
        assert_eq!(v["extra_fields"]["attempts"], 2);
        assert_eq!(v["extra_fields"]["provider"], "p");
        assert_eq!(answer.len(), answer.to_bytes().len());
        assert_eq!(answer.shared_len(), image.len());

        let mut empty = UnifiedAnswer::from(Bytes::from_static(b"{\"extra_fields\":{}}"));
        assert!(empty.insert_members("extra_fields", "\"a\":1"));
        assert_eq!(&empty.to_bytes()[..], b"{\"extra_fields\":{\"a\":1}}");
        let mut none = UnifiedAnswer::from(Bytes::from_static(b"{\"a\":1}"));
        assert!(!none.insert_members("extra_fields", "\"a\":1"));
        assert_eq!(&none.to_bytes()[..], b"{\"a\":1}");
    }

    /// What the gateway did before answers were spliced: insert after the last
    /// `"extra_fields":{` of the whole text.
    fn insert_in_whole(body: &[u8], members: &str) -> Vec<u8> {
        const KEY: &[u8] = b"\"extra_fields\":{";
        let Some(at) = body.windows(KEY.len()).rposition(|w| w == KEY) else {
            return body.to_vec();
        };
        let cut = at + KEY.len();
        let mut out = body[..cut].to_vec();
        out.extend_from_slice(members.as_bytes());
        if body.get(cut) != Some(&b'}') {
            out.push(b',');
        }
        out.extend_from_slice(&body[cut..]);
        out
    }

    /// Differential: over varied converted answers (in pieces), inserting the fallback
    /// fields gives byte for byte what inserting them into the whole text gave.
    #[test]
    fn inserting_members_equals_inserting_into_the_whole_text() {
        let mut rng = fastrand::Rng::with_seed(5);
        let cx = crate::providers::ResponseContext {
            provider: "p",
            model_requested: "m",
            model_deployment: "m",
            latency_ms: 1,
            num_input_images: 1,
            created: crate::providers::test_support::CLOCK_SECS,
        };
        for _ in 0..200 {
            let (body, _) = crate::providers::test_support::random_images_response(&mut rng);
            let resp = crate::providers::test_support::success(body);
            let mut answer = crate::providers::test_support::convert(&resp, &cx);
            let before = answer.to_bytes();
            let members = "\"fallback_index\":1,\"attempts\":2";
            assert!(answer.insert_members("extra_fields", members));
            assert_eq!(answer.to_bytes(), insert_in_whole(&before, members));
            assert_eq!(answer.len(), answer.to_bytes().len());
        }
    }

    #[test]
    fn one_buffer_is_one_piece() {
        let b = Bytes::from_static(b"{}");
        let answer = UnifiedAnswer::from(b.clone());
        assert_eq!(answer.to_bytes().as_ptr(), b.as_ptr(), "not copied");
        assert_eq!(answer.pieces().count(), 1);
        assert_eq!(UnifiedAnswer::from(Bytes::new()).pieces().count(), 0);
        assert!(UnifiedAnswer::default().is_empty());
    }
}
