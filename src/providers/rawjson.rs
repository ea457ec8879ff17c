//! Zero-copy JSON object rewriting for provider answers.
//!
//! Provider answers carry images as base64 strings of megabytes. Parsing them into
//! `serde_json::Value` copies every string twice and re-escapes it on output; here an object is
//! read as its keys plus *borrowed* raw values, so an image string is scanned once and copied
//! once, into the output buffer.

use serde::de::{Deserialize, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::fmt;

/// Called for each field when writing: writes the value itself and returns true, or returns
/// false to have the raw value copied.
pub type Rewrite<'f, 'a> = dyn FnMut(&str, &'a RawValue, &mut Vec<u8>) -> Result<bool, serde_json::Error> + 'f;

/// Writes something into the output (a field, an array).
pub type WriteWith<'f> = dyn FnMut(&mut Vec<u8>) -> Result<(), serde_json::Error> + 'f;

/// Writes the expanded array of an [`ExpandedObject`].
pub type WriteItems<'f, 'a> = dyn FnMut(&[RawObject<'a>], &mut Vec<u8>) -> Result<(), serde_json::Error> + 'f;

/// A JSON object as its fields in order: owned keys, raw values borrowed from the input.
#[derive(Debug, Default)]
pub struct RawObject<'a>(pub Vec<(String, &'a RawValue)>);

impl<'a> RawObject<'a> {
    /// Parses `bytes` as one JSON object.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(bytes)
    }

    /// The raw value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| *v)
    }

    /// Writes the object back out, leaving out `skip` keys, calling `rewrite` for every field
    /// (it writes the value itself and returns true, or returns false to copy the raw value),
    /// and appending `extra` (already-serialised `"key":value` pairs) before the closing brace.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        skip: &[&str],
        rewrite: &mut Rewrite<'_, 'a>,
        extra: &[(&str, &[u8])],
    ) -> Result<(), serde_json::Error> {
        write_object(out, &self.0, None, skip, rewrite, extra)
    }
}

/// Writes `{fields…, extra…}`: fields in `skip` are left out, `rewrite` may write a field's
/// value itself, and `insert` writes one more field (key included) before field number `at`.
fn write_object<'a>(
    out: &mut Vec<u8>,
    fields: &[(String, &'a RawValue)],
    mut insert: Option<(usize, &mut WriteWith<'_>)>,
    skip: &[&str],
    rewrite: &mut Rewrite<'_, 'a>,
    extra: &[(&str, &[u8])],
) -> Result<(), serde_json::Error> {
    out.push(b'{');
    let mut first = true;
    let mut comma = |out: &mut Vec<u8>| {
        if !first {
            out.push(b',');
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
        if skip.contains(&k.as_str()) {
            continue;
        }
        comma(out);
        serde_json::to_writer(&mut *out, k)?;
        out.push(b':');
        if !rewrite(k, v, out)? {
            out.extend_from_slice(v.get().as_bytes());
        }
    }
    for (k, v) in extra {
        comma(out);
        serde_json::to_writer(&mut *out, k)?;
        out.push(b':');
        out.extend_from_slice(v);
    }
    out.push(b'}');
    Ok(())
}

impl<'de> Deserialize<'de> for RawObject<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RawObject<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut fields = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, &'de RawValue>()? {
                    fields.push((k, v));
                }
                Ok(RawObject(fields))
            }
        }
        d.deserialize_map(V)
    }
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
    pub fn parse(bytes: &'a [u8], key: &str) -> Result<Self, serde_json::Error> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let doc = Expand { key }.deserialize(&mut de)?;
        de.end()?;
        Ok(doc)
    }

    /// Writes the object back out like [`RawObject::write`], with the expanded field (named
    /// `key`) written at its place by `write_items`.
    pub fn write(
        &self,
        out: &mut Vec<u8>,
        key: &str,
        write_items: &mut WriteItems<'_, 'a>,
        skip: &[&str],
        rewrite: &mut Rewrite<'_, 'a>,
        extra: &[(&str, &[u8])],
    ) -> Result<(), serde_json::Error> {
        let mut expanded = |out: &mut Vec<u8>| -> Result<(), serde_json::Error> {
            serde_json::to_writer(&mut *out, key)?;
            out.push(b':');
            write_items(&self.items, out)
        };
        let insert = self.position.map(|at| {
            (
                at,
                &mut expanded as &mut dyn FnMut(&mut Vec<u8>) -> Result<(), serde_json::Error>,
            )
        });
        write_object(out, &self.fields.0, insert, skip, rewrite, extra)
    }
}

struct Expand<'k> {
    key: &'k str,
}

impl<'de> DeserializeSeed<'de> for Expand<'_> {
    type Value = ExpandedObject<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Expand<'_> {
    type Value = ExpandedObject<'de>;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut doc = ExpandedObject::default();
        while let Some(k) = map.next_key::<String>()? {
            if k == self.key && doc.position.is_none() {
                doc.items = map.next_value()?;
                doc.position = Some(doc.fields.0.len());
            } else {
                let v: &'de RawValue = map.next_value()?;
                doc.fields.0.push((k, v));
            }
        }
        Ok(doc)
    }
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

    #[test]
    fn non_objects_are_errors() {
        assert!(RawObject::parse(b"[1]").is_err());
        assert!(RawObject::parse(b"\"x\"").is_err());
        assert!(RawObject::parse(b"{\"a\":").is_err());
        assert!(RawObject::parse(b"{} trailing").is_err());
    }
}
