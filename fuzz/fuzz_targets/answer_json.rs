//! The provider-answer JSON scanner (`refract::providers::rawjson`): it accepts exactly the
//! objects serde_json accepts, with the same members and raw value texts, in order; the
//! expanded form of an answer agrees with it. No input may panic.

#![no_main]

use libfuzzer_sys::fuzz_target;
use refract::providers::rawjson::{ExpandedObject, RawObject};
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

/// Every member of an object in order, duplicates kept, as raw texts.
struct Fields(Vec<(String, Box<RawValue>)>);

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

fuzz_target!(|input: &[u8]| {
    let serde: Option<Vec<(String, String)>> = serde_json::from_slice::<Fields>(input)
        .ok()
        .map(|f| f.0.into_iter().map(|(k, v)| (k, v.get().to_string())).collect());
    let ours: Option<Vec<(String, String)>> = RawObject::parse(input)
        .ok()
        .map(|o| o.0.into_iter().map(|(k, v)| (k.into_owned(), v.get().to_string())).collect());
    assert_eq!(ours, serde, "verdicts differ on {:?}", String::from_utf8_lossy(input));

    // An answer's `data` array expanded into objects: accepted only if the whole is an object
    // and `data`, when present, is an array of objects, each of which parses on its own.
    if let Ok(expanded) = ExpandedObject::parse(input, "data") {
        assert!(ours.is_some(), "expanded accepted what the scanner refused");
        for item in &expanded.items {
            for (_, value) in &item.0 {
                let text = value.get();
                assert!(serde_json::from_str::<&RawValue>(text).is_ok(), "item value {text:?}");
            }
        }
    }
});
