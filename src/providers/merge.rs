//! The unified answers of the n calls that serve `n > 1` on a provider making one image per call
//! (the capability's `n_by_calls`), merged into the one answer the client asked for.
//!
//! Runs once per attempt, after every call succeeded (`server::gateway::repeat`). The merged
//! answer is the first call's, field for field (so `created`, `output_format`… are the
//! first's), except: `data` holds every call's images in call order, `index` numbered 0..n;
//! `usage` is the sum of the calls' usages (every count added, members missing from the first
//! taken from the others); `extra_fields` appears once, with `latency` that of the whole
//! (request start to the last answer). Image strings are written unparsed ([`super::rawjson`])
//! and shared with the calls' answers, not copied again ([`super::answer`]).

use super::answer::AnswerWriter;
use super::rawjson::{ExpandedObject, JsonOut, Raw, RawObject};
use super::UnifiedAnswer;
use crate::error::GatewayError;
use bytes::Bytes;
use serde_json::{json, Value};

/// Merges `answers` (unified answers, in call order) into one; `latency_ms` is the whole's.
/// Each answer is read in one buffer (a copy when it is in pieces); the merged answer shares
/// the images with those buffers. An answer that is not a unified answer is an internal error
/// (the adapters wrote them).
pub fn merge_answers(answers: &[UnifiedAnswer], latency_ms: u64) -> Result<UnifiedAnswer, GatewayError> {
    let whole: Vec<Bytes> = answers.iter().map(UnifiedAnswer::to_bytes).collect();
    let mut out = AnswerWriter::new(whole.clone());
    write_merged(&whole, latency_ms, &mut out)?;
    Ok(out.finish())
}

/// The merged answer of [`merge_answers`] for `answers` (each in one buffer), written into
/// `out`.
fn write_merged<O: JsonOut>(answers: &[Bytes], latency_ms: u64, out: &mut O) -> Result<(), GatewayError> {
    let internal =
        |what: String| GatewayError::Internal(format!("merging the answers of {} calls: {what}", answers.len()));
    let docs = answers
        .iter()
        .map(|a| ExpandedObject::parse(a, "data"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| internal(e.to_string()))?;
    let first = docs.first().ok_or_else(|| internal("no answer".into()))?;
    if docs.iter().any(|d| d.position.is_none()) {
        return Err(internal("an answer without data".into()));
    }
    let usage = summed_usage(docs.iter().filter_map(|d| d.fields.get("usage"))).map_err(|e| internal(e.to_string()))?;
    let mut write_items = |_: &[RawObject<'_>], out: &mut O| -> Result<(), serde_json::Error> {
        out.put(b"[");
        for (index, item) in docs.iter().flat_map(|d| &d.items).enumerate() {
            if index > 0 {
                out.put(b",");
            }
            let index = index.to_string();
            item.write(
                out,
                &["index"],
                &mut |_, _, _| Ok(false),
                &[("index", index.as_bytes())],
            )?;
        }
        out.put(b"]");
        Ok(())
    };
    let mut rewrite = |key: &str, raw: Raw<'_>, out: &mut O| -> Result<bool, serde_json::Error> {
        match (key, &usage) {
            ("usage", Some(sum)) => serde_json::to_writer(&mut *out, sum)?,
            ("extra_fields", _) => {
                let mut extra: Value = serde_json::from_str(raw.get())?;
                if let Some(fields) = extra.as_object_mut() {
                    fields.insert("latency".into(), json!(latency_ms));
                }
                serde_json::to_writer(&mut *out, &extra)?;
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    first
        .write(out, "data", &mut write_items, &[], &mut rewrite, &[])
        .map_err(|e| internal(e.to_string()))
}

/// The sum of `usages` (each a JSON object), `None` when there is none.
fn summed_usage<'a>(usages: impl Iterator<Item = Raw<'a>>) -> Result<Option<Value>, serde_json::Error> {
    let mut sum: Option<Value> = None;
    for raw in usages {
        let usage: Value = serde_json::from_str(raw.get())?;
        match &mut sum {
            Some(total) => add(total, &usage),
            None => sum = Some(usage),
        }
    }
    Ok(sum)
}

/// Adds `more` into `total`: numbers are added (integers as integers), objects member by
/// member (a member only `more` has is taken as is); anything else keeps `total`'s value.
fn add(total: &mut Value, more: &Value) {
    match (total, more) {
        (Value::Object(total), Value::Object(more)) => {
            for (key, value) in more {
                match total.get_mut(key) {
                    Some(t) => add(t, value),
                    None => {
                        total.insert(key.clone(), value.clone());
                    }
                }
            }
        }
        (Value::Number(t), Value::Number(m)) => {
            let sum = match (t.as_u64(), m.as_u64()) {
                (Some(a), Some(b)) => json!(a.saturating_add(b)),
                _ => json!(t.as_f64().unwrap_or(0.0) + m.as_f64().unwrap_or(0.0)),
            };
            if let Value::Number(n) = sum {
                *t = n;
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(created: u64, images: &[&str], usage: Option<Value>, latency: u64) -> UnifiedAnswer {
        let data: Vec<Value> = images
            .iter()
            .enumerate()
            .map(|(i, b)| json!({"b64_json": b, "index": i}))
            .collect();
        let mut v = json!({"created": created, "data": data, "output_format": "png",
            "extra_fields": {"request_type": "image_edit", "provider": "stab", "latency": latency, "chunk_index": 0}});
        if let Some(u) = usage {
            v["usage"] = u;
        }
        UnifiedAnswer::from(serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn images_in_call_order_numbered_usage_summed_extra_fields_once() {
        let usage = |i: u64, o: u64| json!({"input_tokens": i, "output_tokens": o, "total_tokens": i + o, "input_tokens_details": {"image_tokens": i}});
        let answers = [
            answer(100, &["QQ=="], Some(usage(1, 2)), 5),
            answer(200, &["Qg==", "Qw=="], Some(usage(10, 20)), 9),
            answer(300, &["RA=="], None, 7),
        ];
        let merged = merge_answers(&answers, 42).unwrap().to_bytes();
        let v: Value = serde_json::from_slice(&merged).unwrap();
        assert_eq!(v["created"], 100, "the first call's");
        assert_eq!(v["output_format"], "png");
        let data = v["data"].as_array().unwrap();
        let got: Vec<(&str, u64)> = data
            .iter()
            .map(|d| (d["b64_json"].as_str().unwrap(), d["index"].as_u64().unwrap()))
            .collect();
        assert_eq!(got, [("QQ==", 0), ("Qg==", 1), ("Qw==", 2), ("RA==", 3)]);
        assert_eq!(
            v["usage"],
            json!({"input_tokens": 11, "output_tokens": 22, "total_tokens": 33, "input_tokens_details": {"image_tokens": 11}})
        );
        assert_eq!(v["extra_fields"]["latency"], 42);
        assert_eq!(v["extra_fields"]["provider"], "stab");
        let text = String::from_utf8(merged.to_vec()).unwrap();
        assert_eq!(text.matches("\"extra_fields\"").count(), 1, "{text}");
    }

    /// The calls' answers in pieces (large images shared with the providers' bodies): the
    /// merged answer is byte for byte the one written into one buffer, and its images are
    /// shared, not copied again.
    #[test]
    fn spliced_answers_merge_to_the_copied_merge() {
        let min = crate::providers::answer::SPLICE_MIN_BYTES;
        let big = |c: &str| c.repeat(min + 3);
        let (b0, b1) = (big("QQ"), big("Qg"));
        let spliced = |b64: &str, created: u64| {
            let resp = crate::providers::test_support::success(format!(
                r#"{{"created":{created},"data":[{{"b64_json":"{b64}"}}],"usage":{{"total_tokens":1}}}}"#
            ));
            let cx = crate::providers::ResponseContext {
                provider: "stab",
                model_requested: "m",
                model_deployment: "m",
                latency_ms: 3,
                num_input_images: 1,
                created: crate::providers::test_support::CLOCK_SECS,
            };
            crate::providers::test_support::convert(&resp, &cx)
        };
        let answers = [spliced(&b0, 1), spliced(&b1, 2), answer(3, &["RA=="], None, 7)];
        assert!(answers[0].shared_len() > 0);
        let merged = merge_answers(&answers, 42).unwrap();
        let whole: Vec<Bytes> = answers.iter().map(UnifiedAnswer::to_bytes).collect();
        let mut copied = Vec::new();
        write_merged(&whole, 42, &mut copied).unwrap();
        assert_eq!(merged.to_bytes(), copied);
        assert_eq!(merged.shared_len(), b0.len() + b1.len() + 4);
        let v: Value = serde_json::from_slice(&copied).unwrap();
        assert_eq!(v["data"][1]["b64_json"], b1.as_str());
        assert_eq!(v["data"][2]["index"], 2);
        assert_eq!(v["usage"]["total_tokens"], 2);
    }

    #[test]
    fn usage_members_only_later_answers_have_are_kept() {
        let mut total = json!({"a": 1, "f": 0.5, "s": "x"});
        add(&mut total, &json!({"a": 2, "b": 3, "f": 1, "s": "y"}));
        assert_eq!(total, json!({"a": 3, "b": 3, "f": 1.5, "s": "x"}));
        let answers = [answer(1, &["QQ=="], None, 0), answer(2, &["Qg=="], None, 0)];
        let v: Value = serde_json::from_slice(&merge_answers(&answers, 1).unwrap().to_bytes()).unwrap();
        assert!(v.get("usage").is_none());
        assert_eq!(v["data"][1]["index"], 1);
    }

    #[test]
    fn not_unified_answers_are_an_internal_error() {
        for bad in [&b"not json"[..], br#"{"created":1}"#] {
            let e = merge_answers(&[UnifiedAnswer::from(Bytes::from_static(bad))], 0).unwrap_err();
            assert_eq!(e.status(), 500, "{e}");
        }
        assert!(merge_answers(&[], 0).is_err());
    }
}
