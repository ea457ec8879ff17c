//! Base64 for images inlined in JSON request bodies (Gemini `inlineData`, Imagen
//! `bytesBase64Encoded`): SIMD-encoded straight into the output buffer, never through a JSON
//! string escaper (the standard alphabet needs no escaping), from spool chunks of any size;
//! and decoded as it arrives ([`Base64Decoder`]: the simulator's JSON bodies).

/// Length of the padded standard base64 of `n` bytes.
pub fn encoded_len(n: u64) -> u64 {
    n.div_ceil(3) * 4
}

/// Appends the padded standard base64 of `src` to `out`.
pub fn encode_append(src: &[u8], out: &mut Vec<u8>) {
    base64_simd::STANDARD.encode_append(src, out);
}

/// Encodes a byte stream that arrives in chunks of any size: [`Base64Stream::push`] each chunk,
/// then [`Base64Stream::finish`]. The output is the same as encoding the whole input at once;
/// at most two input bytes wait between chunks.
#[derive(Debug, Default)]
pub struct Base64Stream {
    carry: [u8; 3],
    carry_len: usize,
}

impl Base64Stream {
    /// A new stream.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes what can be encoded of `chunk` (whole 3-byte groups) onto `out`.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        if self.carry_len > 0 {
            let take = (3 - self.carry_len).min(chunk.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&chunk[..take]);
            self.carry_len += take;
            chunk = &chunk[take..];
            if self.carry_len < 3 {
                return;
            }
            encode_append(&self.carry, out);
            self.carry_len = 0;
        }
        let whole = chunk.len() - chunk.len() % 3;
        out.reserve(whole / 3 * 4);
        encode_append(&chunk[..whole], out);
        let rest = &chunk[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
    }

    /// Encodes the last bytes, with padding.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        encode_append(&self.carry[..self.carry_len], out);
        self.carry_len = 0;
    }
}

/// Decodes base64 that arrives in chunks of any size, as Google's APIs read it: the standard or
/// the URL-safe alphabet, padded or not. [`Base64Decoder::push`] each chunk, then
/// [`Base64Decoder::finish`]; the output is the same as decoding the whole input at once. At
/// most three input characters wait between chunks.
#[derive(Debug, Default)]
pub struct Base64Decoder {
    carry: [u8; 4],
    carry_len: usize,
    /// `=` characters seen (only more of them may follow).
    padding: usize,
    failed: bool,
}

impl Base64Decoder {
    /// A new decoder.
    pub fn new() -> Self {
        Self::default()
    }

    fn fail(&mut self) -> bool {
        self.failed = true;
        false
    }

    /// Decodes what can be decoded of `chunk` (whole 4-character groups) onto `out`. `false`
    /// once the input is not base64; nothing more is decoded then.
    pub fn push(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) -> bool {
        if self.failed {
            return false;
        }
        if self.padding > 0 {
            if chunk.iter().all(|&b| b == b'=') && self.padding + chunk.len() <= 2 {
                self.padding += chunk.len();
                return true;
            }
            return self.fail();
        }
        if let Some(at) = memchr::memchr(b'=', chunk) {
            let pad = &chunk[at..];
            if pad.len() > 2 || pad.iter().any(|&b| b != b'=') {
                return self.fail();
            }
            self.padding = pad.len();
            chunk = &chunk[..at];
        }
        let normalized: Vec<u8>;
        let mut chunk: &[u8] = if memchr::memchr2(b'-', b'_', chunk).is_some() {
            normalized = chunk
                .iter()
                .map(|&b| match b {
                    b'-' => b'+',
                    b'_' => b'/',
                    b => b,
                })
                .collect();
            &normalized
        } else {
            chunk
        };
        if self.carry_len > 0 {
            let take = (4 - self.carry_len).min(chunk.len());
            self.carry[self.carry_len..self.carry_len + take].copy_from_slice(&chunk[..take]);
            self.carry_len += take;
            chunk = &chunk[take..];
            if self.carry_len < 4 {
                return true;
            }
            self.carry_len = 0;
            if base64_simd::STANDARD.decode_append(self.carry, out).is_err() {
                return self.fail();
            }
        }
        let whole = chunk.len() - chunk.len() % 4;
        if base64_simd::STANDARD.decode_append(&chunk[..whole], out).is_err() {
            return self.fail();
        }
        let rest = &chunk[whole..];
        self.carry[..rest.len()].copy_from_slice(rest);
        self.carry_len = rest.len();
        true
    }

    /// Decodes the last characters onto `out`; `false` when the input was not base64 (a
    /// character outside both alphabets, misplaced or excess padding, a dangling character).
    pub fn finish(&mut self, out: &mut Vec<u8>) -> bool {
        if self.failed {
            return false;
        }
        let n = std::mem::take(&mut self.carry_len);
        let complete = self.padding == 0 || n + self.padding == 4;
        match n {
            0 => self.padding == 0,
            1 => self.fail(),
            _ => {
                complete
                    && base64_simd::STANDARD_NO_PAD
                        .decode_append(&self.carry[..n], out)
                        .is_ok()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine;

    #[test]
    fn chunked_encoding_equals_whole_encoding() {
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 7 + i / 13) as u8).collect();
        for len in [0, 1, 2, 3, 4, 5, 100, 999, 1000] {
            let src = &data[..len];
            let want = base64::engine::general_purpose::STANDARD.encode(src);
            assert_eq!(encoded_len(len as u64), want.len() as u64);
            for step in [1, 2, 3, 4, 7, 64, 1000] {
                let mut s = Base64Stream::new();
                let mut out = Vec::new();
                for chunk in src.chunks(step) {
                    s.push(chunk, &mut out);
                }
                s.finish(&mut out);
                assert_eq!(String::from_utf8(out).unwrap(), want, "len {len} step {step}");
            }
        }
    }

    #[test]
    fn chunked_decoding_equals_whole_decoding_in_both_alphabets() {
        use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
        let data: Vec<u8> = (0..1000u32).map(|i| (i * 31 + i / 7) as u8).collect();
        for len in [0, 1, 2, 3, 4, 5, 100, 999, 1000] {
            let src = &data[..len];
            for text in [STANDARD.encode(src), URL_SAFE_NO_PAD.encode(src)] {
                for step in [1, 2, 3, 4, 7, 64, 1000] {
                    let mut d = Base64Decoder::new();
                    let mut out = Vec::new();
                    for chunk in text.as_bytes().chunks(step) {
                        assert!(d.push(chunk, &mut out), "len {len} step {step}");
                    }
                    assert!(d.finish(&mut out), "len {len} step {step} {text}");
                    assert_eq!(out, src, "len {len} step {step}");
                }
            }
        }
    }

    #[test]
    fn what_is_not_base64_fails() {
        for bad in ["QUJD=", "QUJDR", "QU=JD", "QQ===", "QUJ!", "QUJD\\n", "QQ=A"] {
            let mut d = Base64Decoder::new();
            let mut out = Vec::new();
            let pushed = bad.as_bytes().chunks(2).all(|c| d.push(c, &mut out));
            assert!(!(pushed && d.finish(&mut out)), "{bad:?} was accepted");
        }
    }
}
