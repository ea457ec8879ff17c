//! Zero-copy JSON object rewriting for provider answers.
//!
//! Provider answers carry images as base64 strings of megabytes. Parsing them into
//! `serde_json::Value` copies every string twice and re-escapes it on output; here an object is
//! read as its keys plus *borrowed* raw values, so an image string is scanned once and written
//! as it is: copied once into a plain buffer, or shared with the input by an output that can
//! (see [`JsonOut`] and `super::answer`).
//!
//! The scan is this module's own (a strict JSON validator, as strict as serde_json's raw-value
//! parse): the whole input is checked as UTF-8 once, then each string is searched for its
//! closing quote with `memchr` and checked for control characters a block at a time, several
//! times faster than serde_json's byte-wise string scan on a multi-megabyte image.

use std::borrow::Cow;
use std::fmt;

/// Called for each field when writing: writes the value itself and returns true, or returns
/// false to have the raw value copied.
pub type Rewrite<'f, 'a, O = Vec<u8>> = dyn FnMut(&str, Raw<'a>, &mut O) -> Result<bool, serde_json::Error> + 'f;

/// Writes something into the output (a field, an array).
pub type WriteWith<'f, O = Vec<u8>> = dyn FnMut(&mut O) -> Result<(), serde_json::Error> + 'f;

/// Writes the expanded array of an [`ExpandedObject`].
pub type WriteItems<'f, 'a, O = Vec<u8>> = dyn FnMut(&[RawObject<'a>], &mut O) -> Result<(), serde_json::Error> + 'f;

/// Where objects are written: a plain buffer, or an answer that shares long raw values with
/// the input instead of copying them (`super::answer::AnswerWriter`).
pub trait JsonOut: std::io::Write {
    /// Appends `bytes`.
    fn put(&mut self, bytes: &[u8]);

    /// Appends `text`, a whole JSON string value of the input (quotes included), as it is:
    /// copied, unless the output can share it.
    fn put_string(&mut self, text: &[u8]) {
        self.put(text);
    }

    /// Appends a raw value of the input as it is ([`JsonOut::put_string`] for a string).
    fn put_raw(&mut self, raw: Raw<'_>) {
        let text = raw.get().as_bytes();
        if text.first() == Some(&b'"') {
            self.put_string(text);
        } else {
            self.put(text);
        }
    }
}

impl JsonOut for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) {
        self.extend_from_slice(bytes);
    }
}

/// One JSON value as its exact, validated text in the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raw<'a>(&'a str);

impl<'a> Raw<'a> {
    /// The value's JSON text.
    pub fn get(&self) -> &'a str {
        self.0
    }
}

/// Why a text is not the JSON expected, and where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsonError {
    what: &'static str,
    at: usize,
}

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} at byte {}", self.what, self.at)
    }
}

impl std::error::Error for JsonError {}

/// Nesting deeper than this is refused (as serde_json does), so a hostile answer cannot make
/// the validator's stack grow without bound.
const MAX_DEPTH: usize = 128;

/// A JSON object as its fields in order: keys (borrowed unless they hold escapes), raw values
/// borrowed from the input.
#[derive(Debug, Default)]
pub struct RawObject<'a>(pub Vec<(Cow<'a, str>, Raw<'a>)>);

impl<'a> RawObject<'a> {
    /// Parses `bytes` as one JSON object.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, JsonError> {
        let mut scan = Scanner::new(bytes)?;
        let object = scan.raw_object()?;
        scan.end()?;
        Ok(object)
    }

    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<Raw<'a>> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Writes the object back out, leaving out `skip` keys, calling `rewrite` for every field
    /// (it writes the value itself and returns true, or returns false to copy the raw value),
    /// and appending `extra` (already-serialised `"key":value` pairs) before the closing brace.
    pub fn write<O: JsonOut>(
        &self,
        out: &mut O,
        skip: &[&str],
        rewrite: &mut Rewrite<'_, 'a, O>,
        extra: &[(&str, &[u8])],
    ) -> Result<(), serde_json::Error> {
        write_object(out, &self.0, None, skip, rewrite, extra)
    }
}

/// Writes `{fields…, extra…}`: fields in `skip` are left out, `rewrite` may write a field's
/// value itself, and `insert` writes one more field (key included) before field number `at`.
fn write_object<'a, O: JsonOut>(
    out: &mut O,
    fields: &[(Cow<'a, str>, Raw<'a>)],
    mut insert: Option<(usize, &mut WriteWith<'_, O>)>,
    skip: &[&str],
    rewrite: &mut Rewrite<'_, 'a, O>,
    extra: &[(&str, &[u8])],
) -> Result<(), serde_json::Error> {
    out.put(b"{");
    let mut first = true;
    let mut comma = |out: &mut O| {
        if !first {
            out.put(b",");
        }
        first = false;
    };
    for i in 0..=fields.len() {
        if let Some((at, write)) = insert.as_mut() {
            if *at == i {
                comma(out);
                write(out)?;
            }
        }
        let Some((k, v)) = fields.get(i) else { break };
        if skip.contains(&k.as_ref()) {
            continue;
        }
        comma(out);
        serde_json::to_writer(&mut *out, k)?;
        out.put(b":");
        if !rewrite(k, *v, out)? {
            out.put_raw(*v);
        }
    }
    for (k, v) in extra {
        comma(out);
        serde_json::to_writer(&mut *out, k)?;
        out.put(b":");
        out.put(v);
    }
    out.put(b"}");
    Ok(())
}

/// A JSON object whose field `key` (an array of objects) is parsed into [`RawObject`]s in the
/// same pass, so a provider answer's `data` array — where the images are — is scanned once.
#[derive(Debug, Default)]
pub struct ExpandedObject<'a> {
    /// The other fields, raw.
    pub fields: RawObject<'a>,
    /// Position of the expanded field among `fields` (where it is written back), if present.
    pub position: Option<usize>,
    /// The expanded array's objects.
    pub items: Vec<RawObject<'a>>,
}

impl<'a> ExpandedObject<'a> {
    /// Parses `bytes` as one JSON object, expanding field `key`, which must be an array of
    /// objects if present.
    pub fn parse(bytes: &'a [u8], key: &str) -> Result<Self, JsonError> {
        let mut scan = Scanner::new(bytes)?;
        let mut doc = ExpandedObject::default();
        scan.object(|scan, k| {
            if k == key && doc.position.is_none() {
                doc.items = scan.array_of_objects()?;
                doc.position = Some(doc.fields.0.len());
            } else {
                let v = scan.value()?;
                doc.fields.0.push((k, v));
            }
            Ok(())
        })?;
        scan.end()?;
        Ok(doc)
    }

    /// Writes the object back out like [`RawObject::write`], with the expanded field (named
    /// `key`) written at its place by `write_items`.
    pub fn write<O: JsonOut>(
        &self,
        out: &mut O,
        key: &str,
        write_items: &mut WriteItems<'_, 'a, O>,
        skip: &[&str],
        rewrite: &mut Rewrite<'_, 'a, O>,
        extra: &[(&str, &[u8])],
    ) -> Result<(), serde_json::Error> {
        let mut expanded = |out: &mut O| -> Result<(), serde_json::Error> {
            serde_json::to_writer(&mut *out, key)?;
            out.put(b":");
            write_items(&self.items, out)
        };
        let insert = self.position.map(|at| (at, &mut expanded as &mut WriteWith<'_, O>));
        write_object(out, &self.fields.0, insert, skip, rewrite, extra)
    }
}

/// The validator: a position in a text already checked to be UTF-8.
struct Scanner<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Scanner<'a> {
    fn new(bytes: &'a [u8]) -> Result<Self, JsonError> {
        let text = std::str::from_utf8(bytes).map_err(|e| JsonError {
            what: "invalid UTF-8",
            at: e.valid_up_to(),
        })?;
        Ok(Scanner { text, at: 0 })
    }

    fn bytes(&self) -> &'a [u8] {
        self.text.as_bytes()
    }

    fn fail<T>(&self, what: &'static str) -> Result<T, JsonError> {
        Err(JsonError { what, at: self.at })
    }

    fn peek(&self) -> Option<u8> {
        self.bytes().get(self.at).copied()
    }

    fn skip_whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Consumes `byte` (after whitespace), or fails with `what`.
    fn expect(&mut self, byte: u8, what: &'static str) -> Result<(), JsonError> {
        self.skip_whitespace();
        if self.peek() != Some(byte) {
            return self.fail(what);
        }
        self.at += 1;
        Ok(())
    }

    /// Only whitespace may follow the top-level value.
    fn end(&mut self) -> Result<(), JsonError> {
        self.skip_whitespace();
        if self.at != self.text.len() {
            return self.fail("trailing characters");
        }
        Ok(())
    }

    /// Scans `{…}`, calling `field` with the scanner just before each member's value.
    fn object(
        &mut self,
        mut field: impl FnMut(&mut Self, Cow<'a, str>) -> Result<(), JsonError>,
    ) -> Result<(), JsonError> {
        self.expect(b'{', "expected a JSON object")?;
        self.skip_whitespace();
        if self.peek() == Some(b'}') {
            self.at += 1;
            return Ok(());
        }
        loop {
            self.skip_whitespace();
            let key = self.key()?;
            self.expect(b':', "expected ':'")?;
            field(self, key)?;
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b'}') => {
                    self.at += 1;
                    return Ok(());
                }
                _ => return self.fail("expected ',' or '}'"),
            }
        }
    }

    /// Scans `{…}` into its members, raw.
    fn raw_object(&mut self) -> Result<RawObject<'a>, JsonError> {
        let mut fields = Vec::new();
        self.object(|scan, key| {
            let value = scan.value()?;
            fields.push((key, value));
            Ok(())
        })?;
        Ok(RawObject(fields))
    }

    /// Scans `[{…}, …]` into raw objects.
    fn array_of_objects(&mut self) -> Result<Vec<RawObject<'a>>, JsonError> {
        self.expect(b'[', "expected an array of objects")?;
        let mut items = Vec::new();
        self.skip_whitespace();
        if self.peek() == Some(b']') {
            self.at += 1;
            return Ok(items);
        }
        loop {
            items.push(self.raw_object()?);
            self.skip_whitespace();
            match self.peek() {
                Some(b',') => self.at += 1,
                Some(b']') => {
                    self.at += 1;
                    return Ok(items);
                }
                _ => return self.fail("expected ',' or ']'"),
            }
        }
    }

    /// A member name, unescaped (borrowed from the input when it holds no escape).
    fn key(&mut self) -> Result<Cow<'a, str>, JsonError> {
        if self.peek() != Some(b'"') {
            return self.fail("expected a member name");
        }
        let start = self.at;
        let escaped = self.string()?;
        let raw: &'a str = &self.text[start..self.at];
        if !escaped {
            return Ok(Cow::Borrowed(&raw[1..raw.len() - 1]));
        }
        // Escapes (surrogate pairs included) are decoded by serde_json.
        serde_json::from_str::<String>(raw)
            .map(Cow::Owned)
            .map_err(|_| JsonError {
                what: "invalid escape in a member name",
                at: start,
            })
    }

    /// Scans a string starting at its opening quote; returns whether it holds escapes.
    fn string(&mut self) -> Result<bool, JsonError> {
        self.at += 1;
        let mut escaped = false;
        loop {
            let rest = &self.bytes()[self.at..];
            let Some(stop) = memchr::memchr2(b'"', b'\\', rest) else {
                self.at = self.text.len();
                return self.fail("unterminated string");
            };
            if has_control_character(&rest[..stop]) {
                return self.fail("control character in a string");
            }
            self.at += stop + 1;
            if rest[stop] == b'"' {
                return Ok(escaped);
            }
            escaped = true;
            match self.peek() {
                Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.at += 1,
                Some(b'u') => {
                    let hex = self.bytes().get(self.at + 1..self.at + 5);
                    if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                        return self.fail("invalid \\u escape");
                    }
                    self.at += 5;
                }
                _ => return self.fail("invalid escape"),
            }
        }
    }

    /// Scans one value of any kind; nested arrays and objects are walked without recursion.
    fn value(&mut self) -> Result<Raw<'a>, JsonError> {
        self.skip_whitespace();
        let start = self.at;
        // Open containers: `true` for an object, `false` for an array.
        let mut open: Vec<bool> = Vec::new();
        loop {
            // A value.
            match self.peek() {
                Some(b'"') => {
                    self.string()?;
                }
                Some(b'{' | b'[') => {
                    let object = self.peek() == Some(b'{');
                    if open.len() == MAX_DEPTH {
                        return self.fail("nested too deeply");
                    }
                    self.at += 1;
                    self.skip_whitespace();
                    let close = if object { b'}' } else { b']' };
                    if self.peek() == Some(close) {
                        self.at += 1;
                    } else {
                        open.push(object);
                        if object {
                            self.member_name()?;
                        }
                        self.skip_whitespace();
                        continue;
                    }
                }
                Some(b't') => self.literal("true")?,
                Some(b'f') => self.literal("false")?,
                Some(b'n') => self.literal("null")?,
                Some(b'-' | b'0'..=b'9') => self.number()?,
                _ => return self.fail("expected a value"),
            }
            // After a value: close containers, or go on to the next element.
            loop {
                let Some(&object) = open.last() else {
                    return Ok(Raw(&self.text[start..self.at]));
                };
                self.skip_whitespace();
                match (self.peek(), object) {
                    (Some(b','), _) => {
                        self.at += 1;
                        if object {
                            self.skip_whitespace();
                            self.member_name()?;
                        }
                        self.skip_whitespace();
                        break;
                    }
                    (Some(b'}'), true) | (Some(b']'), false) => {
                        self.at += 1;
                        open.pop();
                    }
                    _ => return self.fail("expected ',' or the end of the container"),
                }
            }
        }
    }

    /// A member name and its colon, inside a nested object (the name is not kept).
    fn member_name(&mut self) -> Result<(), JsonError> {
        if self.peek() != Some(b'"') {
            return self.fail("expected a member name");
        }
        self.string()?;
        self.expect(b':', "expected ':'")
    }

    fn literal(&mut self, word: &'static str) -> Result<(), JsonError> {
        if !self.text[self.at..].starts_with(word) {
            return self.fail("invalid literal");
        }
        self.at += word.len();
        Ok(())
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Result<(), JsonError> {
        let digits = |scan: &mut Self| {
            let from = scan.at;
            while scan.peek().is_some_and(|b| b.is_ascii_digit()) {
                scan.at += 1;
            }
            scan.at > from
        };
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        match self.peek() {
            Some(b'0') => self.at += 1,
            Some(b'1'..=b'9') => {
                digits(self);
            }
            _ => return self.fail("invalid number"),
        }
        if self.peek() == Some(b'.') {
            self.at += 1;
            if !digits(self) {
                return self.fail("invalid number");
            }
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            if !digits(self) {
                return self.fail("invalid number");
            }
        }
        Ok(())
    }
}

/// Whether `bytes` holds a byte below 0x20 (not allowed raw in a JSON string). Blocks of 64
/// are folded without an early exit, so the compiler vectorises the scan.
pub fn has_control_character(bytes: &[u8]) -> bool {
    bytes
        .chunks(64)
        .any(|block| block.iter().fold(0u8, |seen, &b| seen | u8::from(b < 0x20)) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_with_edits() {
        let input = br#"{"b":1,"a":{"x":"\u00e9"},"s":"q\"uote","drop":true}"#;
        let obj = RawObject::parse(input).unwrap();
        assert_eq!(obj.get("s").unwrap().get(), r#""q\"uote""#);
        let mut out = Vec::new();
        obj.write(
            &mut out,
            &["drop"],
            &mut |k, _, out| {
                if k == "b" {
                    out.extend_from_slice(b"2");
                    return Ok(true);
                }
                Ok(false)
            },
            &[("extra", br#"{"z":0}"#)],
        )
        .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"b":2,"a":{"x":"é"},"s":"q\"uote","extra":{"z":0}})
        );
    }

    #[test]
    fn expands_one_array_in_the_same_pass() {
        let doc = ExpandedObject::parse(br#"{"a":1,"data":[{"x":"1"},{"y":2}],"z":null}"#, "data").unwrap();
        assert_eq!(doc.position, Some(1));
        assert_eq!(doc.items.len(), 2);
        assert_eq!(doc.items[0].get("x").unwrap().get(), r#""1""#);
        assert_eq!(doc.fields.0.len(), 2);
        assert!(ExpandedObject::parse(br#"{"data":[1]}"#, "data").is_err());
        assert!(ExpandedObject::parse(br#"{"data":{}}"#, "data").is_err());
        assert_eq!(ExpandedObject::parse(br#"{"a":1}"#, "data").unwrap().position, None);
        assert!(ExpandedObject::parse(br#"{"a":1} x"#, "data").is_err());
    }

    /// serde_json's verdict on `bytes` as an object of raw values: its raw texts, or None.
    fn serde_verdict(bytes: &[u8]) -> Option<Vec<(String, String)>> {
        let fields = serde_json::from_slice::<ordered::Fields>(bytes).ok()?.0;
        Some(fields.into_iter().map(|(k, v)| (k, v.get().to_string())).collect())
    }

    /// A map visitor that keeps every member in order (duplicates too), as `RawObject` does.
    mod ordered {
        use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
        use serde_json::value::RawValue;
        pub struct Fields(pub Vec<(String, Box<RawValue>)>);
        impl<'de> Deserialize<'de> for Fields {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl<'de> Visitor<'de> for V {
                    type Value = Fields;
                    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                        f.write_str("an object")
                    }
                    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields, A::Error> {
                        let mut out = Vec::new();
                        while let Some(entry) = map.next_entry()? {
                            out.push(entry);
                        }
                        Ok(Fields(out))
                    }
                }
                d.deserialize_map(V)
            }
        }
    }

    /// The scanner accepts exactly what serde_json accepts, with the same raw texts, over
    /// thousands of mutations of varied documents (bytes replaced by JSON's special bytes,
    /// control characters and broken UTF-8, deleted, inserted, or the text cut short).
    #[test]
    fn accepts_exactly_what_serde_json_accepts() {
        let seeds: [&[u8]; 8] = [
            br#"{"created":1713833628,"data":[{"b64_json":"iVBORw0KGgo=","revised_prompt":"a \"cat\""}],"usage":{"total_tokens":10,"input_tokens_details":{"image_tokens":5}}}"#,
            br#" { "a" : [ 1 , -0.5e+3 , 2E-2 , true , false , null , [ ] , { } ] , "b\u00e9\ud83d\ude00" : "x\\y\/\b\f\n\r\t\u0041" } "#,
            br#"{"nested":{"deep":[[[{"k":[0,1,{"z":"\"}"}]}]]]},"s":"\u00e9"}"#,
            "{\"unicode\":\"é漢字😀\",\"n\":12345678901234567890,\"f\":3.14159}".as_bytes(),
            br#"{"a":1,"a":2,"":{"":[]}}"#,
            br#"{}"#,
            br#"{"e":"","x":[""],"y":{"z":""}}"#,
            br#"{"num":-0,"num2":0.0e0,"arr":[-1,-1.0,1e1]}"#,
        ];
        let special: &[u8] = b"\"\\{}[]:, \t\nu0-+e.E9tfnx\x01\x1f\x7f\xc3\xa9\xff\xed";
        let mut rng = fastrand::Rng::with_seed(7);
        let mut verdicts = (0, 0);
        for round in 0..12_000 {
            let mut doc = seeds[round % seeds.len()].to_vec();
            for _ in 0..rng.usize(1..=3) {
                let at = rng.usize(0..=doc.len());
                match rng.u8(0..4) {
                    0 if at < doc.len() => doc[at] = special[rng.usize(0..special.len())],
                    1 if at < doc.len() => {
                        doc.remove(at);
                    }
                    2 => doc.insert(at, special[rng.usize(0..special.len())]),
                    _ => doc.truncate(at),
                }
            }
            let ours = RawObject::parse(&doc).ok().map(|o| {
                o.0.into_iter()
                    .map(|(k, v)| (k.into_owned(), v.get().to_string()))
                    .collect::<Vec<_>>()
            });
            assert_eq!(ours, serde_verdict(&doc), "{}", String::from_utf8_lossy(&doc));
            if ours.is_some() {
                verdicts.0 += 1;
            } else {
                verdicts.1 += 1;
            }
        }
        // Both verdicts were exercised many times.
        assert!(verdicts.0 > 1_000 && verdicts.1 > 1_000, "{verdicts:?}");
        for seed in seeds {
            assert!(RawObject::parse(seed).is_ok(), "{}", String::from_utf8_lossy(seed));
        }
    }

    #[test]
    fn deep_nesting_is_refused_without_recursion() {
        let deep = |n: usize| format!("{{\"a\":{}1{}}}", "[".repeat(n), "]".repeat(n));
        assert!(RawObject::parse(deep(MAX_DEPTH).as_bytes()).is_ok());
        let err = RawObject::parse(deep(100_000).as_bytes()).unwrap_err();
        assert_eq!(err.what, "nested too deeply");
    }

    #[test]
    fn non_objects_are_errors() {
        assert!(RawObject::parse(b"[1]").is_err());
        assert!(RawObject::parse(b"\"x\"").is_err());
        assert!(RawObject::parse(b"{\"a\":").is_err());
        assert!(RawObject::parse(b"{} trailing").is_err());
    }
}
