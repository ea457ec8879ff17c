//! Cut-through of one large image event: its bytes are forwarded while they arrive, instead
//! of after its blank line, so a client sees a multi-MB partial image with no store-and-forward
//! delay and the gateway holds at most [`PASS_THROUGH_BYTES`] (plus one read) of it.
//!
//! It starts when an event's buffered `data` reaches [`PASS_THROUGH_BYTES`] and that data is the
//! head of a JSON object stopped inside a top-level string value (the image's base64), the event
//! being an image event. The object's members before that string are validated and written
//! (`type` first, normalised; upstream `sequence_number`/`extra_fields` dropped), then the string
//! is forwarded as it comes, checked byte by byte (JSON escapes, no control characters, UTF-8
//! across reads). The members after it are buffered (at most [`TAIL_BYTES`]) and, at the event's
//! blank line, validated and written with the gateway's own members before the closing brace.
//!
//! A failure after the start (bad bytes, a stream cut inside the event) cannot be reported in
//! band: SSE has no way to cancel a half-sent event. The converter then marks the stream
//! broken and the server aborts the response (HTTP/1.1: the connection closes without the
//! final chunk; HTTP/2: the stream is reset). Conforming SSE clients never dispatch the partial
//! event, and HTTP clients see the response fail instead of ending cleanly.

use super::super::rawjson::{has_control_character, RawObject};

/// Buffered data size from which an image event is passed through (smaller events, and every
/// error event, are converted whole).
pub const PASS_THROUGH_BYTES: usize = 64 * 1024;

/// Limit on the members after the passed-through string (sizes, usage…: a few hundred bytes).
pub const TAIL_BYTES: usize = 64 * 1024;

/// Upstream members the gateway replaces.
const REPLACED: [&str; 3] = ["type", "sequence_number", "extra_fields"];

/// Where in the object the forwarded bytes are.
#[derive(Debug)]
enum Place {
    /// Inside the string value; `escape` tells how much of an escape sequence is pending.
    InString { escape: Escape },
    /// After the string's closing quote: the rest of the object, buffered.
    Tail(Vec<u8>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After a backslash.
    Backslash,
    /// Inside `\uXXXX`: this many hex digits still to come.
    Hex(u8),
}

/// One image event being passed through.
#[derive(Debug)]
pub struct PassThrough {
    kind: &'static str,
    place: Place,
    /// The first bytes of a UTF-8 sequence split by a read.
    utf8: Vec<u8>,
}

/// A pass-through that cannot go on (the stream must be aborted); says why.
pub type Broken = String;

impl PassThrough {
    /// Starts passing through an event whose data so far is `head`. `kind_of` maps the event's
    /// type (the `type` member, else the SSE event name) to the unified image event name, or
    /// `None` for events that are not images. Writes the event's start to `out` and returns the
    /// state, or `None` (nothing written) when the event does not qualify.
    pub fn begin(
        event: Option<&str>,
        head: &[u8],
        kind_of: impl Fn(&str) -> Option<&'static str>,
        out: &mut Vec<u8>,
    ) -> Option<PassThrough> {
        let open = scan_head(head)?;
        let mut closed = head[..open.members_end].to_vec();
        closed.push(b'}');
        let members = RawObject::parse(&closed).ok()?;
        let key: String = serde_json::from_slice(&head[open.key.0..open.key.1]).ok()?;
        if REPLACED.contains(&key.as_str()) {
            return None;
        }
        let declared: Option<String> = members.get("type").and_then(|t| serde_json::from_str(t.get()).ok());
        let kind = kind_of(declared.as_deref().or(event)?)?;
        let start = out.len();
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: {\"type\":\"");
        out.extend_from_slice(kind.as_bytes());
        out.push(b'"');
        let mut written = Vec::new();
        for (k, v) in members.0.iter().filter(|(k, _)| !REPLACED.contains(&k.as_ref())) {
            written.push(b',');
            serde_json::to_writer(&mut written, k).ok()?;
            written.push(b':');
            written.extend_from_slice(v.get().as_bytes());
        }
        write_lines(out, &written);
        out.push(b',');
        out.extend_from_slice(&head[open.key.0..open.key.1]);
        out.extend_from_slice(b":\"");
        let mut pass = PassThrough {
            kind,
            place: Place::InString { escape: Escape::None },
            utf8: Vec::new(),
        };
        if pass.fragment(&head[open.value..], out).is_err() {
            out.truncate(start);
            return None;
        }
        Some(pass)
    }

    /// The unified event name.
    pub fn kind(&self) -> &'static str {
        self.kind
    }

    /// The next bytes of the event's data: checked and appended to `out` (inside the string),
    /// or buffered (after it).
    pub fn fragment(&mut self, mut bytes: &[u8], out: &mut Vec<u8>) -> Result<(), Broken> {
        while !bytes.is_empty() {
            match &mut self.place {
                Place::Tail(tail) => {
                    if tail.len() + bytes.len() > TAIL_BYTES {
                        return Err(format!("more than {TAIL_BYTES} bytes after an image in one event"));
                    }
                    tail.extend_from_slice(bytes);
                    return Ok(());
                }
                Place::InString { escape } => match *escape {
                    Escape::Backslash => {
                        *escape = match bytes[0] {
                            b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Escape::None,
                            b'u' => Escape::Hex(4),
                            _ => return Err("invalid escape in a JSON string".into()),
                        };
                        out.push(bytes[0]);
                        bytes = &bytes[1..];
                    }
                    Escape::Hex(left) => {
                        if !bytes[0].is_ascii_hexdigit() {
                            return Err("invalid \\u escape in a JSON string".into());
                        }
                        *escape = if left == 1 { Escape::None } else { Escape::Hex(left - 1) };
                        out.push(bytes[0]);
                        bytes = &bytes[1..];
                    }
                    Escape::None => {
                        let stop = memchr::memchr2(b'"', b'\\', bytes);
                        let text = &bytes[..stop.unwrap_or(bytes.len())];
                        if has_control_character(text) {
                            return Err("a control character inside a JSON string".into());
                        }
                        check_utf8(&mut self.utf8, text, stop.is_some())?;
                        out.extend_from_slice(text);
                        let Some(stop) = stop else { return Ok(()) };
                        out.push(bytes[stop]);
                        if bytes[stop] == b'"' {
                            self.place = Place::Tail(Vec::new());
                        } else {
                            *escape = Escape::Backslash;
                        }
                        bytes = &bytes[stop + 1..];
                    }
                },
            }
        }
        Ok(())
    }

    /// The event's blank line: validates the members after the string and writes them, then
    /// `extra` (serialised `"key":value` pairs) and the end of the event.
    pub fn end(self, extra: &[(&str, &[u8])], out: &mut Vec<u8>) -> Result<(), Broken> {
        let Place::Tail(tail) = self.place else {
            return Err("the event ended inside its image string".into());
        };
        // `{"":0` + `,"created_at":…}` is the object with the passed-through member swapped
        // for a placeholder, so serde_json checks the rest of the event.
        let mut rest = b"{\"\":0".to_vec();
        rest.extend_from_slice(&tail);
        let members = RawObject::parse(&rest).map_err(|e| format!("the rest of the event is not JSON ({e})"))?;
        let mut written = Vec::with_capacity(tail.len() + 256);
        members
            .write(&mut written, &REPLACED, &mut |_, _, _| Ok(false), extra)
            .map_err(|e| e.to_string())?;
        // Skip the placeholder: `{"":0` then `,` or `}`.
        let after = &written[b"{\"\":0".len()..];
        write_lines(out, after);
        out.extend_from_slice(b"\n\n");
        Ok(())
    }
}

/// UTF-8 check of string text that may split a multi-byte sequence at a read boundary (its
/// first bytes wait in `carry`); `closed` says the text is followed by `"` or `\\`, so it
/// cannot end inside a sequence.
fn check_utf8(carry: &mut Vec<u8>, mut text: &[u8], closed: bool) -> Result<(), Broken> {
    let bad = || Broken::from("invalid UTF-8 in a JSON string");
    if !carry.is_empty() {
        let width = utf8_width(carry[0]).ok_or_else(bad)?;
        let take = (width - carry.len()).min(text.len());
        carry.extend_from_slice(&text[..take]);
        text = &text[take..];
        if carry.len() < width {
            return if closed { Err(bad()) } else { Ok(()) };
        }
        std::str::from_utf8(carry).map_err(|_| bad())?;
        carry.clear();
    }
    match std::str::from_utf8(text) {
        Ok(_) => Ok(()),
        Err(e) if e.error_len().is_none() && !closed => {
            carry.extend_from_slice(&text[e.valid_up_to()..]);
            Ok(())
        }
        Err(_) => Err(bad()),
    }
}

/// Length of the UTF-8 sequence a leading byte starts.
fn utf8_width(lead: u8) -> Option<usize> {
    match lead {
        0xC2..=0xDF => Some(2),
        0xE0..=0xEF => Some(3),
        0xF0..=0xF4 => Some(4),
        _ => None,
    }
}

/// Appends JSON text to an open `data:` line, continuing on a new `data:` line at each line
/// break (whitespace between members may contain them; a decoder joins the lines with `\n`).
fn write_lines(out: &mut Vec<u8>, json: &[u8]) {
    let mut rest = json;
    while let Some(at) = memchr::memchr2(b'\r', b'\n', rest) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(b"\ndata: ");
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

/// Where the open string of a head starts.
#[derive(Debug, PartialEq, Eq)]
struct OpenHead {
    /// End of the members before the open one (their trailing comma and whitespace excluded).
    members_end: usize,
    /// The open member's key, quotes included.
    key: (usize, usize),
    /// First byte inside the open string.
    value: usize,
}

/// Scans the head of a JSON object and, when it stops inside a string value of a top-level
/// member, says where. Only the structure is checked here; the members before are validated
/// by serde_json afterwards.
fn scan_head(head: &[u8]) -> Option<OpenHead> {
    let mut i = head.iter().position(|b| !b.is_ascii_whitespace())?;
    if head[i] != b'{' {
        return None;
    }
    i += 1;
    let mut depth = 1usize;
    let mut key_next = true;
    let mut members_end = i;
    let mut key = (0, 0);
    while i < head.len() {
        match head[i] {
            b'"' => {
                let start = i;
                let end = string_end(head, i + 1);
                if depth == 1 && key_next {
                    key = (start, end?);
                } else if depth == 1 && end.is_none() {
                    return Some(OpenHead {
                        members_end,
                        key,
                        value: start + 1,
                    });
                }
                i = end?;
                continue;
            }
            b'{' | b'[' => depth += 1,
            b'}' | b']' => {
                depth -= 1;
                if depth == 0 {
                    return None;
                }
            }
            b':' if depth == 1 => key_next = false,
            b',' if depth == 1 => {
                key_next = true;
                members_end = i;
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Index just past the closing quote of the string whose content starts at `from`, or `None`
/// when the head ends first.
fn string_end(head: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr2(b'"', b'\\', head.get(from..)?)?;
        if head[at] == b'"' {
            return Some(at + 1);
        }
        from = at + 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    fn kind_of(name: &str) -> Option<&'static str> {
        match name {
            "image_edit.partial_image" | "image_generation.partial_image" => Some("image_edit.partial_image"),
            "image_edit.completed" => Some("image_edit.completed"),
            _ => None,
        }
    }

    /// Passes `data` through split at `head_len` and then every `step` bytes; returns the
    /// decoded client event (name, JSON).
    fn pass(data: &str, head_len: usize, step: usize) -> Result<(String, Value), Broken> {
        let bytes = data.as_bytes();
        let mut out = Vec::new();
        let mut p = PassThrough::begin(Some("image_edit.partial_image"), &bytes[..head_len], kind_of, &mut out)
            .ok_or("did not start")?;
        for chunk in bytes[head_len..].chunks(step.max(1)) {
            p.fragment(chunk, &mut out)?;
        }
        p.end(
            &[("sequence_number", b"7"), ("extra_fields", br#"{"provider":"p"}"#)],
            &mut out,
        )?;
        let mut d = crate::codec::sse::SseDecoder::new();
        let mut evs = Vec::new();
        d.feed(&out, &mut evs).map_err(|e| e.to_string())?;
        assert_eq!(d.finish(), 0, "one whole event");
        assert_eq!(evs.len(), 1);
        let ev = evs.remove(0);
        let v: Value = serde_json::from_str(&ev.data).map_err(|e| format!("{e}: {}", ev.data))?;
        Ok((ev.event.unwrap_or_default(), v))
    }

    const EVENT: &str = r#"{"type":"image_generation.partial_image","sequence_number":3,"size":"1024x1024","b64_json":"QUJD\/RA\u00e9x","partial_image_index":0,"usage":{
"total_tokens":5},"extra_fields":{"x":1}}"#;

    #[test]
    fn every_split_gives_the_same_event() {
        let start = EVENT.find("QUJD").unwrap();
        let end = EVENT.find("\",\"partial").unwrap();
        for head in start..=end {
            for step in [1, 2, 3, 5, 1000] {
                let (name, v) = pass(EVENT, head, step).unwrap();
                assert_eq!(name, "image_edit.partial_image");
                assert_eq!(v["type"], "image_edit.partial_image");
                assert_eq!(v["b64_json"], "QUJD/RA\u{e9}x");
                assert_eq!(v["sequence_number"], 7, "the upstream's is replaced");
                assert_eq!(v["extra_fields"], serde_json::json!({"provider":"p"}));
                assert_eq!(v["size"], "1024x1024");
                assert_eq!(v["usage"]["total_tokens"], 5);
                assert_eq!(v["partial_image_index"], 0);
                assert_eq!(v.as_object().unwrap().len(), 7, "{v}");
            }
        }
    }

    #[test]
    fn utf8_split_anywhere_is_accepted() {
        let data = "{\"type\":\"image_edit.completed\",\"b64_json\":\"a\u{e9}\u{20ac}\u{1f600}z\"}";
        let start = data.find("a\u{e9}").unwrap();
        for head in start..data.len() - 2 {
            for step in 1..4 {
                let (name, v) = pass(data, head, step).unwrap();
                assert_eq!(name, "image_edit.completed");
                assert_eq!(v["b64_json"], "a\u{e9}\u{20ac}\u{1f600}z");
            }
        }
    }

    #[test]
    fn heads_that_do_not_qualify() {
        let mut out = Vec::new();
        let none = |head: &str, event: Option<&str>, out: &mut Vec<u8>| {
            PassThrough::begin(event, head.as_bytes(), kind_of, out).is_none()
        };
        assert!(
            none(r#"{"type":"error","b64_json":"AAAA"#, None, &mut out),
            "not an image event"
        );
        assert!(
            none(r#"{"b64_json":"AAAA"#, Some("image_edit.debug"), &mut out),
            "unknown event name"
        );
        assert!(none(r#"{"b64_json":"AAAA"#, None, &mut out), "no type at all");
        assert!(
            none(r#"{"type":"image_edit.completed","b64"#, None, &mut out),
            "inside a key"
        );
        assert!(
            none(r#"{"type":"image_edit.completed","a":{"b":"AAAA"#, None, &mut out),
            "nested string"
        );
        assert!(
            none(r#"{"type":"image_edit.completed","a":[1,2"#, None, &mut out),
            "no open string"
        );
        assert!(
            none(r#"{"type":"image_edit.completed"} "x"#, None, &mut out),
            "object already closed"
        );
        assert!(
            none(r#"["a","AAAA"#, Some("image_edit.completed"), &mut out),
            "not an object"
        );
        assert!(
            none(r#"{"type":"image_edit.completed",,"b":"AAAA"#, None, &mut out),
            "bad members"
        );
        assert!(
            none(
                r#"{"type":"image_edit.completed","type2":1 2,"b":"AAAA"#,
                None,
                &mut out
            ),
            "bad value"
        );
        assert!(
            none(r#"{"sequence_number":"AAAA"#, Some("image_edit.completed"), &mut out),
            "replaced key"
        );
        assert!(
            none("{\"type\":\"image_edit.completed\",\"b\":\"AA\nAA", None, &mut out),
            "line break in string"
        );
        assert!(out.is_empty(), "nothing written for events that do not qualify");
        // The SSE event name decides when the object has no type member.
        assert!(!none(r#"{"b64_json":"AAAA"#, Some("image_edit.completed"), &mut out));
    }

    #[test]
    fn broken_bytes_are_reported() {
        let head = r#"{"type":"image_edit.completed","b64_json":"AAAA"#;
        let run = |rest: &[u8]| -> Result<(), Broken> {
            let mut out = Vec::new();
            let mut p = PassThrough::begin(None, head.as_bytes(), kind_of, &mut out).unwrap();
            p.fragment(rest, &mut out)?;
            p.end(&[], &mut out)
        };
        assert!(run(b"AA\"}").is_ok());
        assert!(run(b"AA").unwrap_err().contains("inside its image string"));
        assert!(run(b"A\x01A\"}").unwrap_err().contains("control character"));
        assert!(run(b"A\\qA\"}").unwrap_err().contains("invalid escape"));
        assert!(run(b"A\\u12G4\"}").unwrap_err().contains("\\u escape"));
        assert!(run(b"A\xff\"}").unwrap_err().contains("UTF-8"));
        assert!(
            run(b"A\xc3\"}").unwrap_err().contains("UTF-8"),
            "sequence cut by the quote"
        );
        assert!(run(b"A\"").unwrap_err().contains("not JSON"), "object never closed");
        assert!(run(b"A\",\"x\":}").unwrap_err().contains("not JSON"));
        let mut big = b"A\",\"pad\":\"".to_vec();
        big.resize(TAIL_BYTES + 100, b'x');
        assert!(run(&big).unwrap_err().contains("after an image"));
    }
}
