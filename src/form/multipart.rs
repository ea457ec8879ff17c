//! A push parser of `multipart/form-data` (RFC 7578 over RFC 2046's multipart syntax), fed the
//! request body's chunks as they arrive.
//!
//! [`MultipartParser::feed`] hands it a chunk; [`MultipartParser::next_event`] then yields what
//! that chunk completes: a part's start (its header block parsed in place), its content as
//! slices of the input chunks (`Bytes::slice`, never copied, except a delimiter split across
//! two chunks, which is carried at most one delimiter's length), its end, and the end of the
//! body. Pure: no I/O, no async, no allocation per content chunk.
//!
//! It accepts what `multer` 3 (the parser it replaces) accepts and refuses what it refuses:
//! - the first `--boundary` may follow any preamble, and need not start a line;
//! - after a boundary, `--` closes the body (the epilogue is never read); otherwise transport
//!   padding (spaces, tabs) and a CRLF must follow;
//! - a part's header block ends at the first CRLFCRLF and is parsed by `httparse` (at most 32
//!   headers); the last `Content-Disposition` and `Content-Type` count;
//! - a part's content ends at the first CRLF `--boundary`;
//! - a body that ends anywhere before the closing boundary is incomplete.
//!
//! Unlike `multer`, everything between two parts' contents (a preamble, the boundary line, the
//! header block) is bounded as it arrives: past the budget, parsing ends with
//! [`MultipartError::HeaderTooLarge`] without buffering more.

use bytes::Bytes;
use memchr::memmem;

/// The most headers a part's header block may have (`multer`'s limit).
const MAX_PART_HEADERS: usize = 32;

/// What the body's next bytes completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A part begins.
    PartStart(PartHead),
    /// The next bytes of the current part's content (never empty).
    Data(Bytes),
    /// The current part's content ended.
    PartEnd,
    /// The closing boundary: the form is complete (what follows is never read).
    End,
}

/// A part's header block, as far as a form needs it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PartHead {
    /// `Content-Disposition`'s `name`.
    pub name: Option<String>,
    /// `Content-Disposition`'s `filename`.
    pub filename: Option<String>,
    /// `Content-Type`'s essence (`type/subtype`, lower case, parameters dropped), if well formed.
    pub content_type: Option<String>,
}

/// Why a body is not a well-formed multipart form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MultipartError {
    /// The text between two parts' contents (preamble, boundary line, header block) passed its
    /// budget; the field is `limits.max_part_header_bytes`.
    #[error("a part's header block exceeds limits.max_part_header_bytes ({0} bytes)")]
    HeaderTooLarge(usize),
    /// The body ended before its closing boundary.
    #[error("incomplete multipart stream: the body ends before the closing boundary")]
    Incomplete,
    /// A boundary is followed by something other than padding and CRLF, or `--`.
    #[error("a multipart boundary line is malformed")]
    BadBoundaryLine,
    /// A part's header block does not parse.
    #[error("a part's header block is malformed: {0}")]
    BadHeaders(&'static str),
}

/// Where the parser is in the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before the first boundary.
    Preamble,
    /// After a delimiter (`CRLF--boundary`): its padding, CRLF and the header block, or `--`.
    Between,
    /// In a part's content.
    Content,
    /// After the closing boundary.
    Done,
}

/// The parser (see the module doc). One per request body.
pub struct MultipartParser {
    /// `CRLF--boundary`: a part's content ends where it begins; `[2..]` opens the first part.
    delimiter: Box<[u8]>,
    finder: memmem::Finder<'static>,
    stage: Stage,
    /// The fed bytes not yet consumed.
    input: Bytes,
    /// In [`Stage::Content`]: a tail of the content so far that may begin the delimiter.
    carry: Bytes,
    /// In [`Stage::Preamble`] and [`Stage::Between`]: the text so far, when it spans chunks.
    between: Vec<u8>,
    /// The most bytes the text between two parts' contents may take.
    between_budget: usize,
    /// `limits.max_part_header_bytes`, for the error.
    header_limit: usize,
    /// A delimiter was found right after the [`Event::Data`] just yielded.
    part_end_pending: bool,
    /// The body has no more chunks.
    eof: bool,
}

/// What a scan of the text between two contents found.
enum Between {
    /// More bytes are needed.
    NeedMore,
    /// A part's header block ends `consumed` bytes in.
    Part { consumed: usize, head: PartHead },
    /// The closing boundary.
    End,
}

impl MultipartParser {
    /// A parser for a body with `boundary`; the header block of a part may take
    /// `header_limit` bytes (the text between two contents, boundary line included, takes at
    /// most `header_limit + boundary.len() + 16`).
    pub fn new(boundary: &str, header_limit: usize) -> Self {
        let mut delimiter = Vec::with_capacity(boundary.len() + 4);
        delimiter.extend_from_slice(b"\r\n--");
        delimiter.extend_from_slice(boundary.as_bytes());
        let finder = memmem::Finder::new(&delimiter).into_owned();
        MultipartParser {
            delimiter: delimiter.into_boxed_slice(),
            finder,
            stage: Stage::Preamble,
            input: Bytes::new(),
            carry: Bytes::new(),
            between: Vec::new(),
            between_budget: header_limit + boundary.len() + 16,
            header_limit,
            part_end_pending: false,
            eof: false,
        }
    }

    /// Hands the parser the body's next chunk. Call only once [`MultipartParser::next_event`]
    /// has returned `Ok(None)` (it has consumed the previous one).
    pub fn feed(&mut self, chunk: Bytes) {
        if self.stage == Stage::Done {
            return;
        }
        debug_assert!(self.input.is_empty(), "fed before the previous chunk was consumed");
        self.input = chunk;
    }

    /// The body has no more chunks: what is still open is incomplete.
    pub fn finish(&mut self) {
        self.eof = true;
    }

    /// Whether the closing boundary was seen.
    pub fn is_done(&self) -> bool {
        self.stage == Stage::Done
    }

    /// The next event the fed bytes complete; `Ok(None)` when the parser needs the next chunk
    /// (or, after [`Event::End`], forever). An error ends the body: don't call again.
    pub fn next_event(&mut self) -> Result<Option<Event>, MultipartError> {
        if self.part_end_pending {
            self.part_end_pending = false;
            return Ok(Some(Event::PartEnd));
        }
        loop {
            match self.stage {
                Stage::Done => return Ok(None),
                Stage::Content => {
                    if let Some(event) = self.content()? {
                        return Ok(Some(event));
                    }
                    if self.input.is_empty() && self.stage == Stage::Content {
                        return self.wait();
                    }
                }
                Stage::Preamble | Stage::Between => match self.between_text()? {
                    Between::NeedMore => return self.wait(),
                    Between::Part { head, .. } => {
                        self.stage = Stage::Content;
                        return Ok(Some(Event::PartStart(head)));
                    }
                    Between::End => {
                        self.stage = Stage::Done;
                        self.input = Bytes::new();
                        self.between = Vec::new();
                        return Ok(Some(Event::End));
                    }
                },
            }
        }
    }

    /// All fed bytes are consumed: the next chunk, or at the body's end, an error.
    fn wait(&self) -> Result<Option<Event>, MultipartError> {
        if self.eof {
            Err(MultipartError::Incomplete)
        } else {
            Ok(None)
        }
    }

    /// One step in a part's content: data to yield, or `None` when the step only moved bytes
    /// (into the carry, or out of it into a data event next time).
    fn content(&mut self) -> Result<Option<Event>, MultipartError> {
        let d = self.delimiter.len();
        if !self.carry.is_empty() {
            if self.input.is_empty() {
                return Ok(None);
            }
            // A delimiter that starts in the carry ends within the next `d - 1` input bytes.
            let take = self.input.len().min(d - 1);
            let mut probe = Vec::with_capacity(self.carry.len() + take);
            probe.extend_from_slice(&self.carry);
            probe.extend_from_slice(&self.input[..take]);
            if let Some(at) = self.finder.find(&probe) {
                let data = self.carry.slice(..at);
                bytes::Buf::advance(&mut self.input, at + d - self.carry.len());
                self.carry = Bytes::new();
                return Ok(Some(self.content_ended(data)));
            }
            let start = if take == self.input.len() {
                self.tail_start(&probe)
            } else {
                probe.len()
            };
            let carry = std::mem::take(&mut self.carry);
            if start >= carry.len() {
                // Nothing in the carry begins a delimiter: it is content; the input is
                // scanned on its own next.
                return Ok(Some(Event::Data(carry)));
            }
            // The input was short: the carry grows by all of it (at most a delimiter's length).
            self.carry = Bytes::from(probe[start..].to_vec());
            self.input = Bytes::new();
            return Ok((start > 0).then(|| Event::Data(carry.slice(..start))));
        }
        if self.input.is_empty() {
            return Ok(None);
        }
        if let Some(at) = self.finder.find(&self.input) {
            let data = self.input.split_to(at);
            bytes::Buf::advance(&mut self.input, d);
            return Ok(Some(self.content_ended(data)));
        }
        let start = self.tail_start(&self.input);
        let data = self.input.split_to(start);
        self.carry = std::mem::take(&mut self.input);
        Ok((!data.is_empty()).then_some(Event::Data(data)))
    }

    /// A delimiter ended the content after `data`: yields it, then [`Event::PartEnd`].
    fn content_ended(&mut self, data: Bytes) -> Event {
        self.stage = Stage::Between;
        if data.is_empty() {
            Event::PartEnd
        } else {
            self.part_end_pending = true;
            Event::Data(data)
        }
    }

    /// Where the shortest suffix of `bytes` that begins the delimiter starts (`bytes.len()` if
    /// none): the bytes before it are content whatever comes next.
    fn tail_start(&self, bytes: &[u8]) -> usize {
        let from = bytes.len().saturating_sub(self.delimiter.len() - 1);
        let mut at = from;
        while let Some(cr) = memchr::memchr(b'\r', &bytes[at..]) {
            let i = at + cr;
            if self.delimiter.starts_with(&bytes[i..]) {
                return i;
            }
            at = i + 1;
        }
        bytes.len()
    }

    /// Scans the text between contents: the input alone when nothing is held, else the held
    /// text plus as much input as the budget leaves; holds what it cannot decide on yet.
    fn between_text(&mut self) -> Result<Between, MultipartError> {
        let preamble = self.stage == Stage::Preamble;
        let budget = self.between_budget;
        let found = if self.between.is_empty() {
            let window = &self.input[..self.input.len().min(budget)];
            let found = scan_between(window, &self.delimiter, preamble)?;
            match &found {
                Between::NeedMore if window.len() == budget => {
                    return Err(MultipartError::HeaderTooLarge(self.header_limit));
                }
                Between::NeedMore => {
                    self.between.extend_from_slice(window);
                    self.input = Bytes::new();
                }
                Between::Part { consumed, .. } => bytes::Buf::advance(&mut self.input, *consumed),
                Between::End => {}
            }
            found
        } else {
            let take = self.input.len().min(budget - self.between.len());
            self.between.extend_from_slice(&self.input[..take]);
            let found = scan_between(&self.between, &self.delimiter, preamble)?;
            match &found {
                Between::NeedMore if self.between.len() == budget => {
                    return Err(MultipartError::HeaderTooLarge(self.header_limit));
                }
                Between::NeedMore => self.input = Bytes::new(),
                Between::Part { consumed, .. } => {
                    // The held bytes come first; the rest of the part's head is the input's front.
                    let held = self.between.len() - take;
                    bytes::Buf::advance(&mut self.input, consumed.saturating_sub(held));
                    self.between.clear();
                }
                Between::End => {}
            }
            found
        };
        Ok(found)
    }
}

/// Scans the text between two contents (from the body's start for the preamble, else right
/// after a delimiter): the boundary line, then the header block or `--`.
fn scan_between(buf: &[u8], delimiter: &[u8], preamble: bool) -> Result<Between, MultipartError> {
    let mut pos = 0;
    if preamble {
        let dash_boundary = &delimiter[2..];
        match memmem::find(buf, dash_boundary) {
            Some(at) => pos = at + dash_boundary.len(),
            None => return Ok(Between::NeedMore),
        }
    }
    let Some(two) = buf.get(pos..pos + 2) else {
        return Ok(Between::NeedMore);
    };
    if two == b"--" {
        return Ok(Between::End);
    }
    let Some(padding) = buf[pos..].iter().position(|b| *b != b' ' && *b != b'\t') else {
        return Ok(Between::NeedMore);
    };
    pos += padding;
    match buf.get(pos..pos + 2) {
        None => return Ok(Between::NeedMore),
        Some(b"\r\n") => pos += 2,
        Some(_) => return Err(MultipartError::BadBoundaryLine),
    }
    let Some(end) = memmem::find(&buf[pos..], b"\r\n\r\n") else {
        return Ok(Between::NeedMore);
    };
    let consumed = pos + end + 4;
    let head = parse_head(&buf[pos..consumed])?;
    Ok(Between::Part { consumed, head })
}

/// Parses a part's header block (ending in CRLFCRLF) in place.
fn parse_head(block: &[u8]) -> Result<PartHead, MultipartError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_PART_HEADERS];
    let parsed = httparse::parse_headers(block, &mut headers).map_err(|e| {
        MultipartError::BadHeaders(match e {
            httparse::Error::TooManyHeaders => "more than 32 headers",
            httparse::Error::HeaderName => "invalid header name",
            httparse::Error::HeaderValue => "invalid header value",
            _ => "invalid header line",
        })
    })?;
    let httparse::Status::Complete((_, headers)) = parsed else {
        return Err(MultipartError::BadHeaders("incomplete header block"));
    };
    let mut head = PartHead::default();
    for h in headers.iter() {
        if h.name.eq_ignore_ascii_case("content-disposition") {
            head.name = disposition_param(h.value, b"name");
            head.filename = disposition_param(h.value, b"filename");
        } else if h.name.eq_ignore_ascii_case("content-type") {
            head.content_type = content_type_essence(h.value);
        }
    }
    Ok(head)
}

/// A `Content-Disposition` parameter (`name`, `filename`), quoted (`\"` unescaped) or not
/// (then it ends at `;` or a space), as `multer` reads it: the parameter name matched case
/// sensitively after the start, a space or `;`.
fn disposition_param(mut header: &[u8], param: &[u8]) -> Option<String> {
    fn trim_start(b: &[u8]) -> &[u8] {
        let n = b.iter().position(|c| !c.is_ascii_whitespace()).unwrap_or(b.len());
        &b[n..]
    }
    fn after(b: &[u8], c: u8) -> Option<&[u8]> {
        match trim_start(b) {
            [first, rest @ ..] if *first == c => Some(rest),
            _ => None,
        }
    }
    while let Some(i) = memmem::find(header, param) {
        let rest = &header[i + param.len()..];
        if i > 0 && !(header[i - 1].is_ascii_whitespace() || header[i - 1] == b';') {
            header = rest;
            continue;
        }
        let rest = after(rest, b'=')?;
        let (value, escaped) = if let Some(rest) = after(rest, b'"') {
            let mut k = memchr::memchr(b'"', rest)?;
            let mut escaped = false;
            while k > 0 && rest[k - 1] == b'\\' {
                escaped = true;
                k = k + 1 + memchr::memchr(b'"', &rest[k + 1..])?;
            }
            (&rest[..k], escaped)
        } else {
            let rest = trim_start(rest);
            let j = memchr::memchr2(b';', b' ', rest).unwrap_or(rest.len());
            (&rest[..j], false)
        };
        let value = std::str::from_utf8(value).ok()?;
        return Some(if escaped {
            value.replace("\\\"", "\"")
        } else {
            value.to_string()
        });
    }
    None
}

/// The boundary of a `multipart/form-data` Content-Type (its `boundary` parameter, unquoted),
/// or `None` when the type is another, malformed, or has no boundary.
pub fn parse_boundary(content_type: &str) -> Option<String> {
    if content_type_essence(content_type.as_bytes())? != "multipart/form-data" {
        return None;
    }
    content_type.split(';').skip(1).find_map(|param| {
        let (name, value) = param.trim().split_once('=')?;
        if !name.eq_ignore_ascii_case("boundary") {
            return None;
        }
        let value = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        (!value.is_empty()).then(|| value.to_string())
    })
}

/// `type/subtype` of a `Content-Type` value, lower case, or `None` if the value is not
/// `type/subtype` followed by `; name=value` parameters (a value a token or a quoted string).
fn content_type_essence(value: &[u8]) -> Option<String> {
    fn is_token(s: &[u8]) -> bool {
        !s.is_empty()
            && s.iter()
                .all(|c| c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(c))
    }
    let mut pieces = value.split(|b| *b == b';');
    let essence = pieces.next()?.trim_ascii();
    let slash = memchr::memchr(b'/', essence)?;
    if !is_token(&essence[..slash]) || !is_token(&essence[slash + 1..]) {
        return None;
    }
    for param in pieces {
        let (name, value) = param.trim_ascii().split_at(memchr::memchr(b'=', param.trim_ascii())?);
        let value = &value[1..];
        let quoted = value.len() >= 2 && value[0] == b'"' && value[value.len() - 1] == b'"';
        if !is_token(name) || !(quoted || is_token(value)) {
            return None;
        }
    }
    let essence = std::str::from_utf8(essence).ok()?;
    Some(essence.to_ascii_lowercase())
}

#[cfg(test)]
mod tests;
