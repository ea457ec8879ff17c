//! The end of an HTTP/1.x request head, found as its bytes arrive ([`read_head`]), within the
//! head's deadline and size bound (see the module docs of [`super`]).

use super::{ConnectionLimits, INITIAL_HEAD_BUFFER};
use bytes::BytesMut;
use pingora::protocols::Stream;
use std::time::Instant;
use tokio::io::AsyncReadExt;

/// How reading a head ended.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// Complete (or at least its end seen): Pingora parses it.
    Complete,
    /// `max_head_bytes` read without an end.
    TooLarge,
    /// Not complete within `head_timeout` of its first byte.
    TimedOut,
    /// The client closed the connection, or reading failed.
    Gone,
}

/// Reads the rest of a request head whose first bytes are in `buf`, until its end, within
/// `head_timeout` (from now) and `max_head_bytes` in all. Only the bytes read since the last
/// look are scanned; the deadline's timer is only armed when the first bytes were not the
/// whole head.
pub(super) async fn read_head(stream: &mut Stream, buf: &mut BytesMut, limits: &ConnectionLimits) -> Head {
    let mut scan = HeadScan::default();
    let mut deadline = None;
    loop {
        if scan.feed(buf).is_some() {
            return Head::Complete;
        }
        let room = limits.max_head_bytes.saturating_sub(buf.len());
        if room == 0 {
            return Head::TooLarge;
        }
        let deadline = *deadline.get_or_insert_with(|| Instant::now() + limits.head_timeout);
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Head::TimedOut;
        }
        if buf.len() == buf.capacity() {
            buf.reserve(buf.capacity().max(INITIAL_HEAD_BUFFER).min(room));
        }
        let mut limited = (&mut *stream).take(room as u64);
        match pingora::time::timeout(left, limited.read_buf(buf)).await {
            Err(_) => return Head::TimedOut,
            Ok(Ok(n)) if n > 0 => {}
            Ok(_) => return Head::Gone,
        }
    }
}

/// Finds the end of an HTTP/1.x request head as bytes arrive, looking at each byte about once:
/// a line feed followed by an empty line (`\n\n` or `\n\r\n`, as httparse accepts both), after
/// the empty lines a client may send before the request line (httparse skips those).
#[derive(Debug, Default)]
struct HeadScan {
    /// Where the next look starts.
    resume: usize,
    /// Whether the request line has begun.
    started: bool,
}

impl HeadScan {
    /// Looks at the bytes of `buf` past the last look; returns the head's length (through its
    /// final line feed) once its end is there. A line feed followed by `\r` and any other byte
    /// counts as the end too: the head is malformed there, and Pingora's parser says so.
    fn feed(&mut self, buf: &[u8]) -> Option<usize> {
        if !self.started {
            let rest = buf.get(self.resume..).unwrap_or_default();
            match rest.iter().position(|&b| b != b'\r' && b != b'\n') {
                Some(p) => {
                    self.resume += p;
                    self.started = true;
                }
                None => {
                    self.resume = buf.len();
                    return None;
                }
            }
        }
        let from = self.resume;
        for i in memchr::memchr_iter(b'\n', buf.get(from..).unwrap_or_default()) {
            let at = from + i;
            match (buf.get(at + 1), buf.get(at + 2)) {
                (Some(b'\n'), _) => return Some(at + 2),
                (Some(b'\r'), Some(_)) => return Some(at + 3),
                (Some(b'\r'), None) | (None, _) => {
                    self.resume = at;
                    return None;
                }
                _ => {}
            }
        }
        self.resume = buf.len();
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan_in_pieces(pieces: &[&[u8]]) -> Option<usize> {
        let mut scan = HeadScan::default();
        let mut buf = Vec::new();
        for p in pieces {
            buf.extend_from_slice(p);
            if let Some(n) = scan.feed(&buf) {
                return Some(n);
            }
        }
        None
    }

    #[test]
    fn head_end_is_found_whatever_the_split() {
        let head = b"GET /health HTTP/1.1\r\nHost: a\r\nX: y\r\n\r\nbody bytes";
        let end = head.len() - "body bytes".len();
        for i in 0..head.len() {
            for j in i..head.len() {
                let got = scan_in_pieces(&[&head[..i], &head[i..j], &head[j..]]);
                assert_eq!(got, Some(end), "split at {i} and {j}");
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = head.chunks(1).collect();
        assert_eq!(scan_in_pieces(&bytes), Some(end));
    }

    #[test]
    fn bare_line_feeds_and_leading_empty_lines_as_httparse_takes_them() {
        assert_eq!(scan_in_pieces(&[b"GET / HTTP/1.1\nHost: a\n\n"]), Some(24));
        assert_eq!(scan_in_pieces(&[b"GET / HTTP/1.1\nHost: a\n\r\n"]), Some(25));
        // Empty lines before the request line are not an end.
        assert_eq!(scan_in_pieces(&[b"\r\n\r\n", b"\n", b"GET / HTTP/1.1\r\n"]), None);
        assert_eq!(scan_in_pieces(&[b"\r\n\r\n", b"GET / HTTP/1.1\r\n\r\n"]), Some(4 + 18));
        // Unfinished.
        assert_eq!(scan_in_pieces(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]), None);
        assert_eq!(scan_in_pieces(&[b"GET / HTTP/1.1\r\nX: a\r"]), None);
        // A line feed, a carriage return and something else: malformed, handed to the parser.
        assert_eq!(scan_in_pieces(&[b"GET / HTTP/1.1\n\rX"]), Some(17));
    }

    #[test]
    fn each_byte_is_scanned_about_once() {
        let mut scan = HeadScan::default();
        let mut buf = b"POST / HTTP/1.1\r\nX-Padding: ".to_vec();
        for _ in 0..10_000 {
            buf.push(b'a');
            assert_eq!(scan.feed(&buf), None);
            assert!(scan.resume + 2 >= buf.len(), "resumes at the new bytes");
        }
    }
}
