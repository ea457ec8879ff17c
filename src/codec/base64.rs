//! Base64 for images inlined in JSON request bodies (Gemini `inlineData`, Imagen
//! `bytesBase64Encoded`): SIMD-encoded straight into the output buffer, never through a JSON
//! string escaper (the standard alphabet needs no escaping), from spool chunks of any size.

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
}
