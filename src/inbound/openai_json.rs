//! OpenAI's JSON form of `POST /v1/images/edits` (`Content-Type: application/json`, as newer
//! OpenAI SDKs and API clients send it): the body becomes the unified edit, the same
//! [`crate::form::EditForm`] a multipart upload of the same edit produces. Pure: the server
//! glue (`src/server/gateway/json_edit.rs`) reads the body, calls [`parse`], applies the
//! fields ([`JsonEdit::apply_fields`]), then hands each image to the spool: a data URL's base64
//! decoded straight into it ([`crate::inbound::genai::spool_base64`]), an http(s) URL fetched
//! through the SSRF guard when `limits.fetch_image_urls` enables it.
//!
//! | JSON | unified |
//! |---|---|
//! | `images[]`: `{"image_url": "data:image/png;base64,…"}` or `{"image_url": "https://…"}` | `image[]`, in order |
//! | `mask`: `{"image_url": …}` | `mask` |
//! | `{"file_id": …}` (in `images[]` or `mask`) | refused: the gateway has no Files API |
//! | `model`, `prompt`, `n`, `size`, `quality`, `background`, `output_format`, `output_compression`, `response_format`, `stream`, `user`, `input_fidelity`, `partial_images`; refract's `fallbacks`, `negative_prompt`, `seed`, `type`, … | the form field of the same name (numbers and booleans as their JSON text, `fallbacks` as its JSON) |
//!
//! Every field goes through the multipart parser's checks ([`FormBuilder::text`]): the same
//! limits, the same errors, unknown scalar fields passed through as unknown text fields are.

use super::genai::InlineImage;
use crate::error::GatewayError;
use crate::form::FormBuilder;
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use std::borrow::Cow;

/// Where one image of the body comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource<'a> {
    /// A `data:` URL: its base64 (borrowed from the body) and declared type.
    Data(InlineImage<'a>),
    /// An `http(s)://` URL, fetched only when the operator enables it.
    Url(Cow<'a, str>),
}

/// A JSON edit body, read: its images and its text fields, before they are validated.
#[derive(Debug, Default, PartialEq)]
pub struct JsonEdit<'a> {
    /// `images[]`, in order (the first is the edit target), each with its parameter name for
    /// errors (`images[0].image_url`).
    pub images: Vec<(String, ImageSource<'a>)>,
    /// `mask`.
    pub mask: Option<ImageSource<'a>>,
    /// Every other field as form text, in body order (`model` among them).
    pub fields: Vec<(String, String)>,
}

/// `{"image_url": …}` or `{"file_id": …}`.
/// A string borrowed from the body when it has no escapes (serde borrows a `Cow` only as a
/// field of its own, not inside an `Option`).
#[derive(Deserialize)]
struct Text<'a>(#[serde(borrow)] Cow<'a, str>);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ImageRef<'a> {
    #[serde(borrow, default)]
    image_url: Option<Text<'a>>,
    #[serde(default)]
    file_id: Option<String>,
}

/// The body's members in order, their values unparsed (borrowed from the body: a data URL's
/// base64 is never copied).
struct Members<'a>(Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de> Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut members = Vec::new();
                while let Some(name) = map.next_key::<Cow<'de, str>>()? {
                    members.push((name, map.next_value::<&'de RawValue>()?));
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

fn invalid(param: &str, message: impl Into<String>) -> GatewayError {
    GatewayError::invalid(param.to_string(), message)
}

/// Whether a request's `Content-Type` is JSON (`application/json`, any parameters): the JSON
/// form, else the multipart one.
pub fn is_json(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        let essence = ct.split(';').next().unwrap_or_default().trim();
        essence.eq_ignore_ascii_case("application/json")
    })
}

/// The source of one `{"image_url"}`/`{"file_id"}` reference named `param`.
fn image_source<'a>(param: &str, image: ImageRef<'a>) -> Result<ImageSource<'a>, GatewayError> {
    if image.file_id.is_some() {
        return Err(invalid(
            param,
            "file_id is not supported (the gateway has no Files API): send the image as image_url, a data: URL or an http(s) URL",
        ));
    }
    let Some(Text(url)) = image.image_url else {
        return Err(invalid(param, "an image reference needs image_url"));
    };
    let lower_prefix = url.get(..5).map(str::to_ascii_lowercase);
    if lower_prefix.as_deref() == Some("data:") {
        return data_url(param, url).map(ImageSource::Data);
    }
    Ok(ImageSource::Url(url))
}

/// A `data:[type][;base64],…` URL's base64 and type (borrowed from the body when it was).
fn data_url<'a>(param: &str, url: Cow<'a, str>) -> Result<InlineImage<'a>, GatewayError> {
    let bad = || {
        invalid(
            &format!("{param}.image_url"),
            "a data URL must be data:<type>;base64,<data> (base64 only)",
        )
    };
    let comma = url.find(',').ok_or_else(bad)?;
    let meta = &url[5..comma];
    let (mime, encoding) = meta.rsplit_once(';').unwrap_or((meta, ""));
    if !encoding.eq_ignore_ascii_case("base64") {
        return Err(bad());
    }
    let mime = (!mime.is_empty()).then(|| mime.to_string());
    let data = match url {
        Cow::Borrowed(s) => Cow::Borrowed(&s[comma + 1..]),
        Cow::Owned(s) => Cow::Owned(s[comma + 1..].to_string()),
    };
    Ok(InlineImage {
        data,
        mime_type: mime.map(Cow::Owned),
    })
}

/// A field's value as the form's text: strings as they are, numbers and booleans as their
/// JSON text, `fallbacks` (an array or object) as its JSON; `None` for `null` (absent).
fn field_text(name: &str, value: Value) -> Result<Option<String>, GatewayError> {
    Ok(match value {
        Value::Null => None,
        Value::String(s) => Some(s),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        v @ (Value::Array(_) | Value::Object(_)) if name == "fallbacks" => Some(v.to_string()),
        Value::Array(_) | Value::Object(_) => {
            return Err(invalid(
                name,
                format!("'{name}' must be a string, a number or a boolean"),
            ))
        }
    })
}

/// Reads a JSON edit body: `images`, `mask`, and every other field as text (`image`, the
/// multipart name, is refused with a hint). A `file_id` reference, a malformed data URL or a non-scalar field is a
/// 400 naming it; a body that is not a JSON object is a 400 `body`.
pub fn parse(body: &[u8]) -> Result<JsonEdit<'_>, GatewayError> {
    let not_json = |e: serde_json::Error| invalid("body", format!("the body is not a valid JSON image edit: {e}"));
    let members: Members<'_> = serde_json::from_slice(body).map_err(not_json)?;
    let mut edit = JsonEdit::default();
    for (name, raw) in members.0 {
        match &*name {
            "images" => {
                let images: Option<Vec<ImageRef<'_>>> = serde_json::from_str(raw.get()).map_err(not_json)?;
                for (i, image) in images.unwrap_or_default().into_iter().enumerate() {
                    let param = format!("images[{i}]");
                    let source = image_source(&param, image)?;
                    edit.images.push((format!("{param}.image_url"), source));
                }
            }
            "mask" => {
                let mask: Option<ImageRef<'_>> = serde_json::from_str(raw.get()).map_err(not_json)?;
                edit.mask = mask.map(|m| image_source("mask", m)).transpose()?;
            }
            "image" | "image[]" => {
                return Err(invalid(
                    &name,
                    "the JSON form takes images as \"images\": [{\"image_url\": …}]",
                ))
            }
            _ => {
                let value: Value = serde_json::from_str(raw.get()).map_err(not_json)?;
                if let Some(text) = field_text(&name, value)? {
                    edit.fields.push((name.into_owned(), text));
                }
            }
        }
    }
    Ok(edit)
}

impl JsonEdit<'_> {
    /// Hands every text field to `builder` (the multipart parser's checks), in body order;
    /// the `(provider, model)` of the body's `model`, if it has one the builder took (a model
    /// preset by the path wins over it).
    pub fn apply_fields(&self, builder: &mut FormBuilder<'_>) -> Result<Option<(String, String)>, GatewayError> {
        let mut model = None;
        for (name, value) in &self.fields {
            if let crate::form::Accepted::Model(p, m) = builder.text(name, value.clone())? {
                model = Some((p, m));
            }
        }
        Ok(model)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Limits;
    use crate::spool::Spool;
    use base64::Engine;

    /// A 1×1 RGBA PNG.
    fn png() -> Vec<u8> {
        let mut out = Vec::new();
        let mut encoder = png::Encoder::new(&mut out, 1, 1);
        encoder.set_color(png::ColorType::Rgba);
        encoder.set_depth(png::BitDepth::Eight);
        let mut writer = encoder.write_header().unwrap();
        writer.write_image_data(&[0, 0, 0, 0]).unwrap();
        writer.finish().unwrap();
        out
    }

    fn data_url_of(bytes: &[u8]) -> String {
        format!(
            "data:image/png;base64,{}",
            base64::engine::general_purpose::STANDARD.encode(bytes)
        )
    }

    #[test]
    fn content_types() {
        assert!(is_json(Some("application/json")));
        assert!(is_json(Some("Application/JSON; charset=utf-8")));
        assert!(!is_json(Some("multipart/form-data; boundary=x")));
        assert!(!is_json(Some("application/jsonx")));
        assert!(!is_json(None));
    }

    #[test]
    fn every_field_becomes_form_text() {
        let body = serde_json::json!({
            "model": "demo/sim-image-1",
            "prompt": "paint it",
            "images": [{"image_url": data_url_of(&png())}, {"image_url": "https://img.example/a.png"}],
            "mask": {"image_url": data_url_of(&png())},
            "n": 2, "size": "1024x1024", "quality": "high", "background": "opaque",
            "output_format": "webp", "output_compression": 80, "response_format": "b64_json",
            "stream": true, "partial_images": 2, "user": "u-1", "input_fidelity": "high",
            "fallbacks": ["demo-gemini/gemini-2.5-flash-image"], "negative_prompt": "blur",
            "seed": 7, "moderation": null
        })
        .to_string();
        let edit = parse(body.as_bytes()).unwrap();
        assert_eq!(edit.images.len(), 2);
        assert_eq!(edit.images[0].0, "images[0].image_url");
        match &edit.images[0].1 {
            ImageSource::Data(image) => {
                assert!(
                    matches!(image.data, Cow::Borrowed(_)),
                    "the base64 is borrowed from the body"
                );
                assert_eq!(image.mime_type.as_deref(), Some("image/png"));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(edit.images[1].1, ImageSource::Url("https://img.example/a.png".into()));
        assert!(matches!(edit.mask, Some(ImageSource::Data(_))));
        let fields: Vec<(&str, &str)> = edit.fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
        assert_eq!(
            fields,
            vec![
                ("model", "demo/sim-image-1"),
                ("prompt", "paint it"),
                ("n", "2"),
                ("size", "1024x1024"),
                ("quality", "high"),
                ("background", "opaque"),
                ("output_format", "webp"),
                ("output_compression", "80"),
                ("response_format", "b64_json"),
                ("stream", "true"),
                ("partial_images", "2"),
                ("user", "u-1"),
                ("input_fidelity", "high"),
                ("fallbacks", "[\"demo-gemini/gemini-2.5-flash-image\"]"),
                ("negative_prompt", "blur"),
                ("seed", "7"),
            ]
        );
    }

    #[test]
    fn the_form_is_the_multipart_one() {
        let limits = Limits::default();
        let body = serde_json::json!({
            "model": "demo/sim-image-1", "prompt": "paint it", "n": 2, "stream": false,
            "images": [{"image_url": data_url_of(&png())}],
            "mask": {"image_url": data_url_of(&png())},
            "fallbacks": [{"provider": "b", "model": "m"}], "seed": -3
        })
        .to_string();
        let edit = parse(body.as_bytes()).unwrap();
        let mut builder = FormBuilder::new(&limits);
        let model = edit.apply_fields(&mut builder).unwrap();
        assert_eq!(model, Some(("demo".to_string(), "sim-image-1".to_string())));
        let mut spool = Spool::new(1 << 20, None);
        for (param, image) in &edit.images {
            let ImageSource::Data(image) = image else {
                panic!("{param}")
            };
            crate::inbound::genai::spool_base64(&mut builder, &mut spool, "image[]", image).unwrap();
        }
        let Some(ImageSource::Data(mask)) = &edit.mask else {
            panic!()
        };
        crate::inbound::genai::spool_base64(&mut builder, &mut spool, "mask", mask).unwrap();
        let form = builder.finish().unwrap();
        assert_eq!((form.provider.as_str(), form.model.as_str()), ("demo", "sim-image-1"));
        assert_eq!((form.n, form.stream, form.seed), (Some(2), false, Some(-3)));
        assert_eq!(form.images.len(), 1);
        assert!(form.mask.is_some());
        assert_eq!(form.fallbacks.len(), 1);
        assert_eq!(spool.len(), 2 * png().len() as u64);
    }

    #[test]
    fn refusals_name_the_field() {
        let cases = [
            (r#"{"images":[{"file_id":"file-abc"}]}"#, "images[0]", "file_id"),
            (r#"{"mask":{"file_id":"file-abc"}}"#, "mask", "file_id"),
            (r#"{"images":[{}]}"#, "images[0]", "needs image_url"),
            (
                r#"{"images":[{"image_url":"data:image/png,abc"}]}"#,
                "images[0].image_url",
                "base64 only",
            ),
            (
                r#"{"images":[{"image_url":"data:image/png;base64"}]}"#,
                "images[0].image_url",
                "base64 only",
            ),
            (r#"{"image":"x"}"#, "image", "\"images\""),
            (r#"{"prompt":["a"]}"#, "prompt", "a string"),
            (r#"{"n":{"a":1}}"#, "n", "a string"),
            (r#"{"images":[{"image_url":"x","other":1}]}"#, "body", "unknown field"),
            (r#"{"model":"demo/x""#, "body", "EOF"),
            (r#"[1,2]"#, "body", "not a valid JSON"),
            ("", "body", "not a valid JSON"),
        ];
        for (body, param, text) in cases {
            let e = parse(body.as_bytes()).unwrap_err();
            assert_eq!((e.status(), e.param()), (400, Some(param)), "{body}: {e}");
            assert!(e.to_string().contains(text), "{body}: {e}");
        }
    }

    #[test]
    fn a_preset_model_wins_and_bad_fields_fail_as_in_multipart() {
        let limits = Limits::default();
        let edit = parse(br#"{"model":"demo/x","n":11}"#).unwrap();
        let mut builder = FormBuilder::new(&limits);
        let e = edit.apply_fields(&mut builder).unwrap_err();
        assert_eq!((e.status(), e.param()), (400, Some("n")));
        let edit = parse(br#"{"model":"demo/x","prompt":"p"}"#).unwrap();
        let mut builder = FormBuilder::new(&limits);
        builder.preset_model("azure", "dep");
        assert_eq!(edit.apply_fields(&mut builder).unwrap(), None);
    }
}
