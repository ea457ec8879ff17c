//! Server-Sent Events (`text/event-stream`): an incremental decoder and an encoder.
//!
//! The decoder follows the WHATWG HTML "event stream interpretation" rules
//! (<https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation>):
//!
//! - lines end with `\r\n`, `\n` or `\r`; a `\r` ending one chunk followed by `\n` starting the
//!   next is one line end, not two;
//! - one leading UTF-8 BOM on the stream is skipped (a BOM anywhere else is ordinary input);
//! - a line starting with `:` is a comment; `field:value` has ONE optional space after the colon
//!   removed; a line without a colon is a field with an empty value; unknown fields are ignored;
//! - `data` values are joined with `\n`; `event` sets the event type; `id` sets the last event ID
//!   unless the value contains NUL; `retry` is taken only if it is all ASCII digits;
//! - a blank line dispatches the event, then the data and event-type buffers are reset; an event
//!   left without its blank line at end of stream is not dispatched.
//!
//! Deviations and choices, on purpose:
//!
//! - **A block with an `event:` field but no `data` is dispatched** (with empty `data`). The spec
//!   drops it, but real providers send e.g. `event: done` with no data and callers want to see it.
//!   An empty `event:` value does not count (it means the default type, `message`).
//! - [`SseEvent::event`] is `None` for the default type instead of `"message"`.
//! - [`SseEvent::id`] is the stream's *last event ID* as the spec defines it: it persists across
//!   events until the next `id` field changes it (an empty `id` clears it to `None`).
//! - [`SseEvent::retry`] is the `retry` value given in this event's block, if any; the latest value
//!   for the whole stream is [`SseDecoder::retry`].
//! - Instead of decoding with U+FFFD replacement, invalid UTF-8 in a value that is kept (`data`,
//!   `event`, `id`) is [`SseError::InvalidUtf8`]. Comments, unknown fields and field names are
//!   not checked (an invalid field name is just an unknown field).
//! - Errors are sticky: after `feed` returns an error, every later `feed` returns it again, until
//!   [`SseDecoder::finish`] resets the decoder.
//!
//! **Pass-through of one large event.** A caller that wants the bytes of a big event before its
//! blank line (to forward a multi-MB image while it arrives) calls
//! [`SseDecoder::pending_data`] between feeds, then [`SseDecoder::pass_through_data`]: from then
//! on that event's `data` bytes (with the `\n` joining its lines) are handed to the `fragment`
//! of [`SseDecoder::feed_split`] instead of being buffered, and its dispatch is reported by
//! `feed_split`'s return value instead of as an [`SseEvent`]. It always precedes any event
//! dispatched by the same call, so the order of the stream is kept.
//!
//! Cost: every input byte is looked at once (line ends are found with `memchr`, and the scan never
//! restarts from the beginning of a pending line), and `data` bytes are copied once, straight from
//! the input chunk into the buffer that becomes [`SseEvent::data`] (no intermediate line buffer).

use std::fmt;

use bytes::Bytes;

/// One dispatched event.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent {
    /// Event type from the `event` field; `None` for the default type (`message`).
    pub event: Option<String>,
    /// The `data` field values joined with `\n` (empty if the block had only `event:`).
    pub data: String,
    /// The stream's last event ID when this event was dispatched (`None` if unset or empty).
    pub id: Option<String>,
    /// The `retry` value (milliseconds) given in this event's block, if any.
    pub retry: Option<u64>,
}

/// Decoding failure. Sticky: see the module documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SseError {
    /// One event's buffered fields grew beyond the decoder's limit (in bytes).
    EventTooLarge {
        /// The limit that was exceeded.
        limit: usize,
    },
    /// A `data`, `event` or `id` value is not valid UTF-8.
    InvalidUtf8,
    /// An `event` field gave an event whose data is being passed through a type other than the
    /// one it was passed through as (see [`SseDecoder::pass_through_data`]).
    PassedEventRetyped,
}

impl fmt::Display for SseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EventTooLarge { limit } => write!(f, "server-sent event larger than {limit} bytes"),
            Self::InvalidUtf8 => f.write_str("server-sent event field is not valid UTF-8"),
            Self::PassedEventRetyped => f.write_str("server-sent event changed its type after its data was passed on"),
        }
    }
}

impl std::error::Error for SseError {}

/// Default for [`SseDecoder::with_max_event_bytes`]: 64 MiB, since image events carry base64
/// images of many MB.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 64 * 1024 * 1024;

const BOM: [u8; 3] = [0xEF, 0xBB, 0xBF];

/// Longest field name that means something (`event`, `retry`); longer names are unknown fields.
const NAME_CAP: usize = 5;

/// Where the decoder is within the current line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineState {
    /// Nothing of the line seen yet.
    Start,
    /// Inside a comment line (discarded).
    Comment,
    /// Reading the field name.
    Name,
    /// Just after the colon: one space, if present, is dropped.
    ValueStart,
    /// Reading the value of field `Field`.
    Value,
}

/// The fields that mean something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Field {
    Data,
    Event,
    Id,
    Retry,
    Unknown,
}

/// Incremental decoder: feed bytes split at ANY boundary, get complete events.
#[derive(Debug)]
pub struct SseDecoder {
    max_event_bytes: usize,
    /// Still looking at the first bytes of the stream for a BOM; `bom_len` of them matched so far.
    bom_pending: bool,
    bom_len: usize,
    /// The previous byte was a `\r` line end: a `\n` right after it belongs to it.
    skip_lf: bool,
    line: LineState,
    /// First bytes of the field name (`name_len` counts all of them, even past `NAME_CAP`).
    name: [u8; NAME_CAP],
    name_len: usize,
    field: Field,
    /// Bytes of the current line so far, and of the current event's complete field lines
    /// (line ends excluded): what [`SseDecoder::finish`] reports.
    line_bytes: usize,
    event_bytes: usize,
    /// The current event: data buffer (becomes `SseEvent::data`), whether any `data` field was
    /// seen, event type buffer, `retry` given in this block.
    data: Vec<u8>,
    has_data: bool,
    event_type: String,
    retry_field: Option<u64>,
    /// Value of the `event`, `id` or `retry` field being read.
    value: Vec<u8>,
    /// Persists across events.
    last_event_id: String,
    retry: Option<u64>,
    error: Option<SseError>,
    /// The pending event's data is being passed through (see the module docs).
    passing: bool,
    /// The passed-through event was dispatched during this `feed_split`.
    passed_end: bool,
}

impl Default for SseDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl SseDecoder {
    /// A decoder with the default event size limit ([`DEFAULT_MAX_EVENT_BYTES`]).
    pub fn new() -> Self {
        Self::with_max_event_bytes(DEFAULT_MAX_EVENT_BYTES)
    }

    /// Limit on one event's buffered size (data, including the `\n` joining its lines, plus event
    /// type and the value being read); exceeding it is [`SseError::EventTooLarge`]. An event of
    /// exactly `max` bytes is accepted.
    pub fn with_max_event_bytes(max: usize) -> Self {
        Self {
            max_event_bytes: max,
            bom_pending: true,
            bom_len: 0,
            skip_lf: false,
            line: LineState::Start,
            name: [0; NAME_CAP],
            name_len: 0,
            field: Field::Unknown,
            line_bytes: 0,
            event_bytes: 0,
            data: Vec::new(),
            has_data: false,
            event_type: String::new(),
            retry_field: None,
            value: Vec::new(),
            last_event_id: String::new(),
            retry: None,
            error: None,
            passing: false,
            passed_end: false,
        }
    }

    /// The stream's last event ID (`None` if never set, or set to empty).
    pub fn last_event_id(&self) -> Option<&str> {
        (!self.last_event_id.is_empty()).then_some(self.last_event_id.as_str())
    }

    /// The latest valid `retry` value (reconnection time in milliseconds) seen on the stream,
    /// including in blocks that were not dispatched.
    pub fn retry(&self) -> Option<u64> {
        self.retry
    }

    /// Appends `chunk` and pushes every event completed by it onto `out`.
    ///
    /// On error, the events completed before the faulty one are still on `out`, and the decoder
    /// refuses further input until [`SseDecoder::finish`].
    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        let mut unused = Vec::new();
        self.feed_split(chunk, out, &mut unused).map(|_| ())
    }

    /// The pending event, while the decoder is inside one of its `data` lines and it is not
    /// passed through yet: its event type so far (`None` if none) and its data so far.
    pub fn pending_data(&self) -> Option<(Option<&str>, &[u8])> {
        let in_data = self.line == LineState::Value && self.field == Field::Data;
        (in_data && self.has_data && !self.passing && self.error.is_none()).then(|| {
            (
                (!self.event_type.is_empty()).then_some(self.event_type.as_str()),
                &self.data[..],
            )
        })
    }

    /// Starts passing the pending event's data through: returns the data buffered so far; the
    /// rest goes to the `fragment` of [`SseDecoder::feed_split`]. Does nothing (returns an empty
    /// buffer) unless [`SseDecoder::pending_data`] is `Some`. The event keeps the type it has
    /// now: a later `event` field of that event naming another type is
    /// [`SseError::PassedEventRetyped`] (the same type again is allowed).
    pub fn pass_through_data(&mut self) -> Vec<u8> {
        if self.pending_data().is_none() {
            return Vec::new();
        }
        self.passing = true;
        std::mem::take(&mut self.data)
    }

    /// [`SseDecoder::feed`], with the data of a passed-through event appended to `fragment`.
    /// Returns `true` when that event's blank line came in this chunk (its `fragment` bytes are
    /// then complete, and any events pushed onto `out` follow it in the stream).
    pub fn feed_split(
        &mut self,
        chunk: &[u8],
        out: &mut Vec<SseEvent>,
        fragment: &mut Vec<u8>,
    ) -> Result<bool, SseError> {
        self.passed_end = false;
        self.feed_inner(chunk, out, fragment)?;
        Ok(std::mem::take(&mut self.passed_end))
    }

    fn feed_inner(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>, fragment: &mut Vec<u8>) -> Result<(), SseError> {
        if let Some(err) = self.error {
            return Err(err);
        }
        let mut input = chunk;
        if self.bom_pending {
            while let Some((&byte, rest)) = input.split_first() {
                if byte == BOM[self.bom_len] {
                    self.bom_len += 1;
                    input = rest;
                    if self.bom_len == BOM.len() {
                        self.bom_pending = false;
                        self.bom_len = 0;
                        break;
                    }
                } else {
                    // Not a BOM after all: the bytes held back are ordinary input.
                    self.bom_pending = false;
                    let held = self.bom_len;
                    self.bom_len = 0;
                    self.process(&BOM[..held], out, fragment)?;
                    break;
                }
            }
            if self.bom_pending {
                return Ok(());
            }
        }
        self.process(input, out, fragment)
    }

    /// End of stream: an event left without its terminating blank line is NOT dispatched (per
    /// the spec). Returns how many bytes were pending (0 = clean end): the bytes, line ends
    /// excluded, of the undispatched event's lines and of an unfinished last line of any kind
    /// (complete comment lines do not count). So a value > 0 means a truncated stream.
    ///
    /// The decoder is then ready for a new stream (e.g. after reconnecting): parsing state and
    /// any error are reset, and a BOM is again skipped; the last event ID and retry value are
    /// kept, as the spec keeps them across reconnections.
    pub fn finish(&mut self) -> usize {
        let pending = self
            .event_bytes
            .saturating_add(self.line_bytes)
            .saturating_add(self.bom_len);
        let mut fresh = Self::with_max_event_bytes(self.max_event_bytes);
        fresh.last_event_id = std::mem::take(&mut self.last_event_id);
        fresh.retry = self.retry;
        *self = fresh;
        pending
    }

    fn process(&mut self, input: &[u8], out: &mut Vec<SseEvent>, fragment: &mut Vec<u8>) -> Result<(), SseError> {
        let result = self.process_inner(input, out, fragment);
        if let Err(err) = result {
            self.error = Some(err);
        }
        result
    }

    fn process_inner(&mut self, input: &[u8], out: &mut Vec<SseEvent>, fragment: &mut Vec<u8>) -> Result<(), SseError> {
        let mut i = 0;
        while i < input.len() {
            if self.skip_lf {
                self.skip_lf = false;
                if input[i] == b'\n' {
                    i += 1;
                    continue;
                }
            }
            match self.line {
                LineState::Start => match input[i] {
                    b'\r' | b'\n' => {
                        i = self.line_end(input, i);
                        self.dispatch(out)?;
                    }
                    b':' => {
                        self.line = LineState::Comment;
                        self.line_bytes = 1;
                        i += 1;
                    }
                    _ => {
                        self.line = LineState::Name;
                        self.name_len = 0;
                    }
                },
                LineState::Comment => {
                    let rest = &input[i..];
                    match memchr::memchr2(b'\r', b'\n', rest) {
                        Some(end) => {
                            self.line_bytes = 0;
                            self.line = LineState::Start;
                            i = self.line_end(input, i + end);
                        }
                        None => {
                            self.line_bytes = self.line_bytes.saturating_add(rest.len());
                            i = input.len();
                        }
                    }
                }
                LineState::Name => {
                    let rest = &input[i..];
                    let end = memchr::memchr3(b':', b'\r', b'\n', rest);
                    let name = &rest[..end.unwrap_or(rest.len())];
                    if self.name_len < NAME_CAP {
                        let take = name.len().min(NAME_CAP - self.name_len);
                        self.name[self.name_len..self.name_len + take].copy_from_slice(&name[..take]);
                    }
                    self.name_len = self.name_len.saturating_add(name.len());
                    self.line_bytes = self.line_bytes.saturating_add(name.len());
                    let Some(end) = end else {
                        i = input.len();
                        continue;
                    };
                    self.field = self.classify();
                    if rest[end] == b':' {
                        self.line_bytes += 1;
                        self.line = LineState::ValueStart;
                        i += end + 1;
                    } else {
                        // A line without a colon: the whole line is the name, the value is empty.
                        self.begin_value(fragment)?;
                        self.end_value()?;
                        self.end_field_line();
                        i = self.line_end(input, i + end);
                    }
                }
                LineState::ValueStart => {
                    if input[i] == b' ' {
                        self.line_bytes += 1;
                        i += 1;
                    }
                    self.begin_value(fragment)?;
                    self.line = LineState::Value;
                }
                LineState::Value => {
                    let rest = &input[i..];
                    let end = memchr::memchr2(b'\r', b'\n', rest);
                    let part = &rest[..end.unwrap_or(rest.len())];
                    match self.field {
                        Field::Data if self.passing => fragment.extend_from_slice(part),
                        Field::Data => {
                            self.check_room(part.len())?;
                            self.data.extend_from_slice(part);
                        }
                        Field::Event | Field::Id | Field::Retry => {
                            self.check_room(part.len())?;
                            self.value.extend_from_slice(part);
                        }
                        Field::Unknown => {}
                    }
                    self.line_bytes = self.line_bytes.saturating_add(part.len());
                    match end {
                        Some(end) => {
                            self.end_value()?;
                            self.end_field_line();
                            i = self.line_end(input, i + end);
                        }
                        None => i = input.len(),
                    }
                }
            }
        }
        Ok(())
    }

    /// Consumes the line end at `input[at]` (a `\r` or `\n`) and returns the next index.
    fn line_end(&mut self, input: &[u8], at: usize) -> usize {
        self.line = LineState::Start;
        if input[at] == b'\r' {
            self.skip_lf = true;
        }
        at + 1
    }

    fn classify(&self) -> Field {
        if self.name_len > NAME_CAP {
            return Field::Unknown;
        }
        match &self.name[..self.name_len] {
            b"data" => Field::Data,
            b"event" => Field::Event,
            b"id" => Field::Id,
            b"retry" => Field::Retry,
            _ => Field::Unknown,
        }
    }

    fn check_room(&self, extra: usize) -> Result<(), SseError> {
        let used = self.data.len() + self.value.len() + self.event_type.len();
        if used.saturating_add(extra) > self.max_event_bytes {
            Err(SseError::EventTooLarge {
                limit: self.max_event_bytes,
            })
        } else {
            Ok(())
        }
    }

    /// Start of a field's value (after the colon and optional space, or at the end of a line
    /// without a colon).
    fn begin_value(&mut self, fragment: &mut Vec<u8>) -> Result<(), SseError> {
        self.value.clear();
        if self.field == Field::Data && self.has_data && self.passing {
            fragment.push(b'\n');
        } else if self.field == Field::Data && self.has_data {
            self.check_room(1)?;
            self.data.push(b'\n');
        }
        if self.field == Field::Data {
            self.has_data = true;
        }
        Ok(())
    }

    /// End of a field's value: apply it.
    fn end_value(&mut self) -> Result<(), SseError> {
        match self.field {
            Field::Data | Field::Unknown => {}
            Field::Event => {
                let value = std::str::from_utf8(&self.value).map_err(|_| SseError::InvalidUtf8)?;
                // The caller forwarded the data under the type known when passing began.
                if self.passing && value != self.event_type {
                    return Err(SseError::PassedEventRetyped);
                }
                self.event_type.clear();
                self.event_type.push_str(value);
            }
            Field::Id => {
                if !self.value.contains(&0) {
                    let value = std::str::from_utf8(&self.value).map_err(|_| SseError::InvalidUtf8)?;
                    self.last_event_id.clear();
                    self.last_event_id.push_str(value);
                }
            }
            Field::Retry => {
                if !self.value.is_empty() && self.value.iter().all(u8::is_ascii_digit) {
                    // All ASCII digits, so only overflow can fail: such a value is ignored.
                    if let Some(ms) = std::str::from_utf8(&self.value)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                    {
                        self.retry_field = Some(ms);
                        self.retry = Some(ms);
                    }
                }
            }
        }
        self.value.clear();
        Ok(())
    }

    /// A complete non-comment, non-blank line: it belongs to the pending event.
    fn end_field_line(&mut self) {
        self.event_bytes = self.event_bytes.saturating_add(self.line_bytes);
        self.line_bytes = 0;
    }

    /// A blank line: dispatch the pending event, if any, and reset the event buffers.
    fn dispatch(&mut self, out: &mut Vec<SseEvent>) -> Result<(), SseError> {
        self.event_bytes = 0;
        self.line_bytes = 0;
        let retry = self.retry_field.take();
        let has_data = std::mem::replace(&mut self.has_data, false);
        if std::mem::replace(&mut self.passing, false) {
            self.passed_end = true;
            self.data.clear();
            self.event_type.clear();
            return Ok(());
        }
        if !has_data && self.event_type.is_empty() {
            self.data.clear();
            return Ok(());
        }
        let data = String::from_utf8(std::mem::take(&mut self.data)).map_err(|_| SseError::InvalidUtf8)?;
        let event = (!self.event_type.is_empty()).then(|| std::mem::take(&mut self.event_type));
        out.push(SseEvent {
            event,
            data,
            id: self.last_event_id().map(str::to_owned),
            retry,
        });
        Ok(())
    }
}

/// Encodes one event: an `event:` line if `event` is given and not empty, `data` split into
/// `data:` lines, then the blank line. Returns the bytes.
///
/// See [`encode_event_into`] for how line breaks are handled.
pub fn encode_event(event: Option<&str>, data: &[u8]) -> Bytes {
    let mut out = Vec::new();
    encode_event_into(&mut out, event, data);
    Bytes::from(out)
}

/// Writes the same as [`encode_event`] onto the end of `out` (reserving the space once).
///
/// `data` is split at `\n`, and also at `\r\n` and `\r`, since an SSE decoder ends lines at all
/// three: a `\r` cannot be carried and comes back as `\n`. Decoding gives `data` back otherwise
/// unchanged (a leading space on a line survives, as one space after `data:` is always written).
/// `\r` and `\n` in `event` would break the framing and are left out.
pub fn encode_event_into(out: &mut Vec<u8>, event: Option<&str>, data: &[u8]) {
    let event = event.unwrap_or("").as_bytes();
    let lines = memchr::memchr2_iter(b'\r', b'\n', data).count() + 1;
    let event_len = if event.is_empty() {
        0
    } else {
        "event: \n".len() + event.len()
    };
    out.reserve(event_len + lines * "data: \n".len() + data.len() + 1);
    if !event.is_empty() {
        out.extend_from_slice(b"event: ");
        out.extend(event.iter().copied().filter(|&b| b != b'\r' && b != b'\n'));
        out.push(b'\n');
    }
    let mut rest = data;
    loop {
        let end = memchr::memchr2(b'\r', b'\n', rest);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&rest[..end.unwrap_or(rest.len())]);
        out.push(b'\n');
        match end {
            Some(end) => {
                let skip = if rest[end] == b'\r' && rest.get(end + 1) == Some(&b'\n') {
                    2
                } else {
                    1
                };
                rest = &rest[end + skip..];
            }
            None => break,
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn ev(event: Option<&str>, data: &str) -> SseEvent {
        SseEvent {
            event: event.map(str::to_owned),
            data: data.to_owned(),
            id: None,
            retry: None,
        }
    }

    /// Feeds `chunks` in order into a fresh decoder; returns the events and `finish()`.
    fn decode_chunks<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<(Vec<SseEvent>, usize), SseError> {
        let mut dec = SseDecoder::new();
        let mut out = Vec::new();
        for chunk in chunks {
            dec.feed(chunk, &mut out)?;
        }
        Ok((out, dec.finish()))
    }

    const PARTIAL_0: &str = r#"{"type":"image_edit.partial_image","b64_json":"iVBORw0KGgoAAA","partial_image_index":0,"size":"1024x1024","quality":"low","background":"opaque","output_format":"png"}"#;
    const PARTIAL_1: &str = r#"{"type":"image_edit.partial_image","b64_json":"iVBORw0KGgoBBB","partial_image_index":1,"size":"1024x1024","quality":"low","background":"opaque","output_format":"png"}"#;
    const COMPLETED: &str = r#"{"type":"image_edit.completed","b64_json":"iVBORw0KGgoCCC","size":"1024x1024","quality":"low","background":"opaque","output_format":"png","usage":{"input_tokens":50,"output_tokens":272,"total_tokens":322,"input_tokens_details":{"image_tokens":40,"text_tokens":10}}}"#;

    fn openai_stream(eol: &str) -> Vec<u8> {
        format!(
            "event: image_edit.partial_image{eol}data: {PARTIAL_0}{eol}{eol}\
             event: image_edit.partial_image{eol}data: {PARTIAL_1}{eol}{eol}\
             event: image_edit.completed{eol}data: {COMPLETED}{eol}{eol}"
        )
        .into_bytes()
    }

    fn openai_expected() -> Vec<SseEvent> {
        vec![
            ev(Some("image_edit.partial_image"), PARTIAL_0),
            ev(Some("image_edit.partial_image"), PARTIAL_1),
            ev(Some("image_edit.completed"), COMPLETED),
        ]
    }

    /// (name, stream, events written by hand). Every stream ends cleanly.
    fn fixtures() -> Vec<(&'static str, Vec<u8>, Vec<SseEvent>)> {
        vec![
            ("openai LF", openai_stream("\n"), openai_expected()),
            ("openai CRLF", openai_stream("\r\n"), openai_expected()),
            ("openai CR", openai_stream("\r"), openai_expected()),
            (
                "comments",
                b": keepalive\n\n:\ndata: a\n: another comment\ndata: b\n\n: keepalive\n".to_vec(),
                vec![ev(None, "a\nb")],
            ),
            (
                "multi-line data",
                b"data: line1\ndata: line2\ndata:\ndata: line4\n\ndata: {\ndata:   \"k\": 1\ndata: }\n\n".to_vec(),
                vec![ev(None, "line1\nline2\n\nline4"), ev(None, "{\n  \"k\": 1\n}")],
            ),
            (
                "data without space",
                b"data:nospace\ndata:  two spaces\ndata:trailing \n\nevent:x\ndata:y\n\n".to_vec(),
                vec![ev(None, "nospace\n two spaces\ntrailing "), ev(Some("x"), "y")],
            ),
            (
                "field without colon",
                b"data\n\ndata\ndata\n\nevent\ndata: x\n\nretry\nid\nfoo\ndata: y\n\n".to_vec(),
                vec![ev(None, ""), ev(None, "\n"), ev(None, "x"), ev(None, "y")],
            ),
            (
                "BOM once",
                b"\xEF\xBB\xBFdata: bom\n\n\xEF\xBB\xBFdata: second BOM makes an unknown field\n\ndata: c\n\n".to_vec(),
                vec![ev(None, "bom"), ev(None, "c")],
            ),
            (
                "partial BOM is input",
                b"\xEF\xBBdata: unknown field\n\ndata: y\n\n".to_vec(),
                vec![ev(None, "y")],
            ),
            (
                "id and retry",
                b"id: 1\nretry: 5000\ndata: a\n\nid: x\0y\ndata: b\n\nid\nretry: 12x\ndata: c\n\nretry: 7\n\n\
                  data: e\n\nretry:\nretry: +5\nretry: 99999999999999999999999\nid: 42\ndata: f\n\n"
                    .to_vec(),
                vec![
                    SseEvent {
                        id: Some("1".into()),
                        retry: Some(5000),
                        ..ev(None, "a")
                    },
                    SseEvent {
                        id: Some("1".into()),
                        ..ev(None, "b")
                    },
                    ev(None, "c"),
                    ev(None, "e"),
                    SseEvent {
                        id: Some("42".into()),
                        ..ev(None, "f")
                    },
                ],
            ),
            (
                "DONE",
                b"data: {\"a\":1}\n\ndata: [DONE]\n\n".to_vec(),
                vec![ev(None, "{\"a\":1}"), ev(None, "[DONE]")],
            ),
            (
                "event without data (deviation)",
                b"event: done\n\nevent:\n\nevent: a\nevent: b\ndata: last type wins\n\n".to_vec(),
                vec![ev(Some("done"), ""), ev(Some("b"), "last type wins")],
            ),
            (
                "mixed line ends",
                b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r: x\r\ndata: e\n\r".to_vec(),
                vec![ev(None, "a\nb\nc"), ev(None, "d"), ev(None, "e")],
            ),
            (
                "unknown fields",
                b"foo: bar\ndat: x\ndatas: x\nEvent: x\nevent : x\ndata: kept\n\n".to_vec(),
                vec![ev(None, "kept")],
            ),
            (
                "utf-8",
                "data: héllo 🌍 ünïcødé\n\n".as_bytes().to_vec(),
                vec![ev(None, "héllo 🌍 ünïcødé")],
            ),
            ("empty stream", Vec::new(), Vec::new()),
        ]
    }

    #[test]
    fn fixtures_decode_identically_whatever_the_split() {
        for (name, stream, expected) in fixtures() {
            let (whole, pending) = decode_chunks([stream.as_slice()]).unwrap();
            assert_eq!(whole, expected, "{name}: whole");
            assert_eq!(pending, 0, "{name}: whole stream should end cleanly");
            for at in 0..=stream.len() {
                let (a, b) = stream.split_at(at);
                let (split, pending) = decode_chunks([a, b]).unwrap();
                assert_eq!(split, whole, "{name}: split at {at}");
                assert_eq!(pending, 0, "{name}: split at {at}");
            }
            let (bytes, pending) = decode_chunks(stream.chunks(1)).unwrap();
            assert_eq!(bytes, whole, "{name}: single bytes");
            assert_eq!(pending, 0, "{name}: single bytes");
        }
    }

    #[test]
    fn event_split_across_chunks() {
        let mut dec = SseDecoder::new();
        let mut out = Vec::new();
        dec.feed(b"event: image_edit.partial_image\nda", &mut out).unwrap();
        dec.feed(b"ta: {\"b64_json\":\"AA", &mut out).unwrap();
        dec.feed(b"AA\"}\r", &mut out).unwrap();
        assert!(out.is_empty());
        dec.feed(b"\n\r", &mut out).unwrap();
        assert_eq!(
            out,
            vec![ev(Some("image_edit.partial_image"), "{\"b64_json\":\"AAAA\"}")]
        );
        dec.feed(b"\ndata: next\n\n", &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1], ev(None, "next"));
        assert_eq!(dec.finish(), 0);
    }

    #[test]
    fn truncated_stream_is_reported_and_not_dispatched() {
        for stream in [
            &b"data: a\n\ndata: partial"[..],
            b"data: a\n\nevent: x\ndata: b\n",
            b"data: a\n\nevent: done\n",
            b"data: a\n\nretry: 10\n",
            b"data: a\n\n: unfinished comm",
            b"data: a\n\nx",
        ] {
            let mut dec = SseDecoder::new();
            let mut out = Vec::new();
            dec.feed(stream, &mut out).unwrap();
            assert_eq!(out, vec![ev(None, "a")]);
            assert!(dec.finish() > 0, "{:?}", String::from_utf8_lossy(stream));
            assert_eq!(out.len(), 1);
        }
        let mut dec = SseDecoder::new();
        let mut out = Vec::new();
        dec.feed(b"data: partial", &mut out).unwrap();
        assert_eq!(dec.finish(), "data: partial".len());
        // After finish the decoder starts a new stream: BOM skipped again, last ID kept.
        let mut dec = SseDecoder::new();
        dec.feed(b"id: 7\ndata: a\n\n", &mut out).unwrap();
        assert_eq!(dec.finish(), 0);
        out.clear();
        dec.feed(b"\xEF\xBB\xBFdata: b\n\n", &mut out).unwrap();
        assert_eq!(
            out,
            vec![SseEvent {
                id: Some("7".into()),
                ..ev(None, "b")
            }]
        );
        // A stream cut inside the BOM is pending too.
        let mut dec = SseDecoder::new();
        dec.feed(b"\xEF\xBB", &mut out).unwrap();
        assert_eq!(dec.finish(), 2);
    }

    #[test]
    fn event_too_large_at_the_limit() {
        let limit = SseError::EventTooLarge { limit: 10 };
        let fits = [
            &b"data: 0123456789\n\n"[..],
            b"data: 01234\ndata: 5678\n\n",
            b"event: 01234\ndata: 56789\n\n",
        ];
        let too_big = [
            &b"data: 0123456789a\n\n"[..],
            b"data: 01234\ndata: 56789\n\n",
            b"event: 012345\ndata: 56789\n\n",
        ];
        for stream in fits {
            for chunk in [stream.len(), 1] {
                let mut dec = SseDecoder::with_max_event_bytes(10);
                let mut out = Vec::new();
                for part in stream.chunks(chunk) {
                    dec.feed(part, &mut out).unwrap();
                }
                assert_eq!(out.len(), 1);
            }
        }
        for stream in too_big {
            for chunk in [stream.len(), 1] {
                let mut dec = SseDecoder::with_max_event_bytes(10);
                let mut out = Vec::new();
                let err = stream
                    .chunks(chunk)
                    .map(|part| dec.feed(part, &mut out))
                    .find(Result::is_err);
                assert_eq!(err, Some(Err(limit)));
                assert!(out.is_empty());
                // Sticky until finish().
                assert_eq!(dec.feed(b"\n\ndata: x\n\n", &mut out), Err(limit));
                assert!(dec.finish() > 0);
                dec.feed(b"data: x\n\n", &mut out).unwrap();
                assert_eq!(out, vec![ev(None, "x")]);
            }
        }
        // The error is raised while the line is still arriving, before buffering past the limit.
        let mut dec = SseDecoder::with_max_event_bytes(10);
        let mut out = Vec::new();
        assert_eq!(dec.feed(b"data: 0123456789abc", &mut out), Err(limit));
        assert_eq!(limit.to_string(), "server-sent event larger than 10 bytes");
    }

    #[test]
    fn invalid_utf8() {
        for stream in [&b"data: \xff\n\n"[..], b"event: \xc3\n", b"id: \xe2\x82\n"] {
            let mut dec = SseDecoder::new();
            let mut out = Vec::new();
            assert_eq!(dec.feed(stream, &mut out), Err(SseError::InvalidUtf8));
        }
        // Not kept, so not checked.
        let (out, _) = decode_chunks([&b": \xff\nfo\xffo: \xff\nid: \xff\0\ndata: ok\n\n"[..]]).unwrap();
        assert_eq!(out, vec![ev(None, "ok")]);
    }

    #[test]
    fn twenty_mb_event_in_64k_chunks() {
        let size = 20 * 1024 * 1024;
        let b64: String = (0..size).map(|i| (b'A' + (i % 26) as u8) as char).collect();
        let data = format!("{{\"type\":\"image_edit.completed\",\"b64_json\":\"{b64}\"}}");
        let mut stream = Vec::new();
        encode_event_into(
            &mut stream,
            Some("image_edit.partial_image"),
            b"{\"partial_image_index\":0}",
        );
        encode_event_into(&mut stream, Some("image_edit.completed"), data.as_bytes());
        let mut best = f64::MAX;
        for _ in 0..3 {
            let start = Instant::now();
            let mut dec = SseDecoder::new();
            let mut out = Vec::new();
            for chunk in stream.chunks(64 * 1024) {
                dec.feed(chunk, &mut out).unwrap();
            }
            let secs = start.elapsed().as_secs_f64();
            best = best.min(secs);
            assert_eq!(dec.finish(), 0);
            assert_eq!(out.len(), 2);
            assert_eq!(out[1].event.as_deref(), Some("image_edit.completed"));
            assert!(out[1].data == data, "20 MB data differs");
        }
        let mb = stream.len() as f64 / 1e6;
        println!(
            "sse decode: {mb:.1} MB in 64 KiB chunks, best of 3: {:.1} ms = {:.0} MB/s",
            best * 1e3,
            mb / best
        );
        // Over the limit, the same stream fails cleanly.
        let mut dec = SseDecoder::with_max_event_bytes(16 * 1024 * 1024);
        let mut out = Vec::new();
        let err = stream
            .chunks(64 * 1024)
            .map(|chunk| dec.feed(chunk, &mut out))
            .find(Result::is_err);
        assert_eq!(
            err,
            Some(Err(SseError::EventTooLarge {
                limit: 16 * 1024 * 1024
            }))
        );
    }

    #[test]
    fn encode_then_decode_round_trips() {
        let cases: [(Option<&str>, &str); 7] = [
            (Some("image_edit.completed"), "{\"b64_json\":\"AAAA\"}"),
            (None, "a\nb\n\nc\n"),
            (None, ""),
            (None, "\n"),
            (Some("done"), " leading space\n  two\ntrailing \n"),
            (Some("x"), "[DONE]"),
            (None, ": not a comment\ndata: not a field"),
        ];
        let mut all = Vec::new();
        for (event, data) in cases {
            let bytes = encode_event(event, data.as_bytes());
            let (out, pending) = decode_chunks([&bytes[..]]).unwrap();
            assert_eq!(out, vec![ev(event, data)], "{bytes:?}");
            assert_eq!(pending, 0);
            encode_event_into(&mut all, event, data.as_bytes());
        }
        let expected: Vec<_> = cases.iter().map(|&(event, data)| ev(event, data)).collect();
        let (whole, _) = decode_chunks([all.as_slice()]).unwrap();
        assert_eq!(whole, expected);
        let (bytes, _) = decode_chunks(all.chunks(1)).unwrap();
        assert_eq!(bytes, expected);
    }

    #[test]
    fn encode_wire_format() {
        assert_eq!(
            &encode_event(Some("done"), b"a\nb")[..],
            b"event: done\ndata: a\ndata: b\n\n"
        );
        assert_eq!(&encode_event(None, b"")[..], b"data: \n\n");
        assert_eq!(&encode_event(Some(""), b"x")[..], b"data: x\n\n");
        // CR cannot be carried: it becomes a line break; an event name cannot break the framing.
        assert_eq!(
            &encode_event(Some("a\r\nb"), b"1\r\n2\r3")[..],
            b"event: ab\ndata: 1\ndata: 2\ndata: 3\n\n"
        );
        let (out, _) = decode_chunks([&encode_event(None, b"1\r\n2\r3\n")[..]]).unwrap();
        assert_eq!(out, vec![ev(None, "1\n2\n3\n")]);
        // Appends.
        let mut buf = b"x".to_vec();
        encode_event_into(&mut buf, None, b"y");
        assert_eq!(buf, b"xdata: y\n\n");
    }

    #[test]
    fn decoder_accessors_and_error_display() {
        let mut dec = SseDecoder::default();
        let mut out = Vec::new();
        dec.feed(b"retry: 250\nid: abc\n\n", &mut out).unwrap();
        assert!(out.is_empty());
        assert_eq!(dec.retry(), Some(250));
        assert_eq!(dec.last_event_id(), Some("abc"));
        assert_eq!(
            SseError::InvalidUtf8.to_string(),
            "server-sent event field is not valid UTF-8"
        );
        let _: &dyn std::error::Error = &SseError::InvalidUtf8;
    }

    #[test]
    fn pass_through_hands_over_the_rest_of_one_event() {
        let mut d = SseDecoder::with_max_event_bytes(16);
        let mut evs = Vec::new();
        let mut frag = Vec::new();
        assert!(!d.feed_split(b"event: big\ndata: abc", &mut evs, &mut frag).unwrap());
        assert_eq!(d.pending_data(), Some((Some("big"), &b"abc"[..])));
        assert_eq!(d.pass_through_data(), b"abc");
        assert_eq!(d.pending_data(), None, "already passing");
        // More than the size limit: passed-through data is not buffered, so not limited.
        let ended = d
            .feed_split(b"defghijklmnopqrstuvwxyz\r\ndata: 2nd\r", &mut evs, &mut frag)
            .unwrap();
        assert!(!ended);
        assert_eq!(frag, b"defghijklmnopqrstuvwxyz\n2nd");
        frag.clear();
        let ended = d.feed_split(b"\n\ndata: next\n\n", &mut evs, &mut frag).unwrap();
        assert!(ended, "the blank line ends the passed-through event");
        assert!(frag.is_empty());
        assert_eq!(evs, vec![ev(None, "next")], "later events are dispatched as usual");
        assert_eq!(d.finish(), 0);
        // Outside a data line there is nothing to pass through.
        let mut d = SseDecoder::new();
        d.feed(b"event: x\n", &mut evs).unwrap();
        assert_eq!(d.pending_data(), None);
        assert!(d.pass_through_data().is_empty());
        // An event whose type changes after its data was passed on is an error (found by the
        // sse_decoder fuzz target); repeating the same type is not.
        let mut d = SseDecoder::new();
        d.feed(b"event: big\ndata: abc", &mut evs).unwrap();
        d.pass_through_data();
        d.feed_split(b"\nevent: big\ndata: d", &mut evs, &mut frag).unwrap();
        assert_eq!(
            d.feed_split(b"\nevent: error\n", &mut evs, &mut frag),
            Err(SseError::PassedEventRetyped)
        );
        let mut d = SseDecoder::new();
        d.feed(b"data: abc", &mut evs).unwrap();
        d.pass_through_data();
        assert_eq!(
            d.feed_split(b"\nevent: x\n\n", &mut evs, &mut frag),
            Err(SseError::PassedEventRetyped)
        );
        // A stream cut while passing through counts as truncated.
        let mut d = SseDecoder::new();
        d.feed(b"data: abc", &mut evs).unwrap();
        d.pass_through_data();
        d.feed_split(b"def", &mut evs, &mut frag).unwrap();
        assert!(d.finish() > 0);
    }
}
