//! Field-level validation of the image-edit form: the spec's enums, ranges and required fields,
//! and [`FormBuilder`], the pure state machine that receives parts in arrival order.

use super::{EditForm, EditType, Fallback, FilePart, MAX_N};
use crate::config::Limits;
use crate::error::GatewayError;
use crate::imaging::{sniff, ImageKind};
use crate::spool::SpoolRange;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use std::cell::Cell;

const SIZES: &[&str] = &["256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "auto"];
const RESPONSE_FORMATS: &[&str] = &["url", "b64_json"];
const BACKGROUNDS: &[&str] = &["transparent", "opaque", "auto"];
const INPUT_FIDELITIES: &[&str] = &["low", "high"];
const QUALITIES: &[&str] = &["auto", "high", "medium", "low", "standard"];
const OUTPUT_FORMATS: &[&str] = &["png", "webp", "jpeg"];
const EDIT_TYPES: &[&str] = &["inpainting", "outpainting", "background_removal"];

/// The default of `limits.max_field_name_bytes`, the longest field name accepted: longer is a
/// 400 (no field of the spec, nor any SDK encoding of one, comes near it).
pub const MAX_FIELD_NAME_BYTES: usize = crate::config::Limits::DEFAULT_MAX_FIELD_NAME_BYTES;

/// What the parser does with a text field that passed validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accepted {
    /// It was `model`: the `(provider, model)` pair, to check before reading on.
    Model(String, String),
    /// Hand it on (to the request streamed upstream).
    Field,
    /// Treated as absent: an empty optional field, or an unknown field whose name is not a
    /// plain token (never forwarded).
    Ignored,
}

/// Refuses a field name longer than `limits.max_field_name_bytes` (the name is not quoted
/// back).
pub fn check_field_name(name: &str, limits: &Limits) -> Result<(), GatewayError> {
    let max = limits.max_field_name_bytes;
    if name.len() > max {
        return Err(GatewayError::InvalidRequest {
            param: None,
            message: format!(
                "a field name is {} bytes long; at most {max} are allowed (limits.max_field_name_bytes)",
                name.len()
            ),
        });
    }
    Ok(())
}

/// Whether an unknown field's name may be forwarded to a provider: a plain ASCII token of
/// letters, digits, `_`, `-`, `.`, and the `[`/`]` of the SDKs' list and dict encodings (its
/// length was checked by `check_field_name`).
pub fn is_plain_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'[' | b']'))
}

/// Whether a field name is an image part: `image`, `image[]` or `image[N]`.
pub fn is_image_field(name: &str) -> bool {
    name == "image"
        || name
            .strip_prefix("image[")
            .and_then(|r| r.strip_suffix(']'))
            .is_some_and(|idx| idx.bytes().all(|b| b.is_ascii_digit()))
}

/// Splits `provider/model`; both halves must be non-empty.
pub fn split_model(value: &str) -> Result<(String, String), GatewayError> {
    match value.split_once('/') {
        Some((p, m)) if !p.is_empty() && !m.is_empty() && !p.contains(char::is_whitespace) => {
            Ok((p.to_string(), m.to_string()))
        }
        _ => Err(GatewayError::invalid(
            "model",
            format!(
                "model should be in provider/model format (e.g. openai/gpt-image-1), got '{}'",
                clip(value)
            ),
        )),
    }
}

/// Shortens client text quoted in an error message.
fn clip(s: &str) -> String {
    let mut out: String = s.chars().take(64).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

fn one_of(name: &str, value: &str, allowed: &[&str]) -> Result<String, GatewayError> {
    if allowed.contains(&value) {
        Ok(value.to_string())
    } else {
        Err(GatewayError::invalid(
            name,
            format!(
                "invalid {name} '{}': expected one of {}",
                clip(value),
                allowed.join(", ")
            ),
        ))
    }
}

fn int_in(name: &str, value: &str, min: i64, max: i64) -> Result<i64, GatewayError> {
    match value.trim().parse::<i64>() {
        Ok(v) if (min..=max).contains(&v) => Ok(v),
        Ok(_) => Err(GatewayError::invalid(
            name,
            format!("{name} must be between {min} and {max}, got {}", clip(value)),
        )),
        Err(_) => Err(GatewayError::invalid(
            name,
            format!("{name} must be an integer, got '{}'", clip(value)),
        )),
    }
}

fn parse_bool(name: &str, value: &str) -> Result<bool, GatewayError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(GatewayError::invalid(
            name,
            format!("{name} must be true or false, got '{}'", clip(value)),
        )),
    }
}

/// `size`: one of the spec's values, or any `WxH` with both sides multiples of 16 in 16..=3840
/// (what newer GPT image models accept).
fn parse_size(value: &str) -> Result<String, GatewayError> {
    if SIZES.contains(&value) {
        return Ok(value.to_string());
    }
    let ok = value.split_once('x').is_some_and(|(w, h)| {
        [w, h].iter().all(|s| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && s.parse::<u32>().is_ok_and(|v| (16..=3840).contains(&v) && v % 16 == 0)
        })
    });
    if ok {
        Ok(value.to_string())
    } else {
        Err(GatewayError::invalid(
            "size",
            format!(
                "invalid size '{}': expected one of {} or WxH with sides multiple of 16 up to 3840",
                clip(value),
                SIZES.join(", ")
            ),
        ))
    }
}

/// One candidate of a `fallbacks` JSON value: `"provider/model"` or `{"provider","model"}`.
#[derive(Deserialize)]
#[serde(untagged)]
enum FallbackItem {
    Name(String),
    Pair { provider: String, model: String },
}

/// Deserializes a `fallbacks` JSON value (an array, or one object), stopping with an error as
/// soon as it holds more than `room` candidates (and setting `overflow`), so a field of
/// thousands of candidates is refused without building them.
struct BoundedFallbacks<'a> {
    room: usize,
    overflow: &'a Cell<bool>,
}

impl<'de> DeserializeSeed<'de> for BoundedFallbacks<'_> {
    type Value = Vec<FallbackItem>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for BoundedFallbacks<'_> {
    type Value = Vec<FallbackItem>;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a fallback or an array of fallbacks")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut out = Vec::new();
        while let Some(item) = seq.next_element::<FallbackItem>()? {
            if out.len() >= self.room {
                self.overflow.set(true);
                return Err(de::Error::custom("too many fallbacks"));
            }
            out.push(item);
        }
        Ok(out)
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        let item = FallbackItem::deserialize(de::value::MapAccessDeserializer::new(map))?;
        if self.room == 0 {
            self.overflow.set(true);
            return Err(de::Error::custom("too many fallbacks"));
        }
        Ok(vec![item])
    }
}

/// The error for more than [`MAX_FALLBACKS`] candidates.
fn too_many_fallbacks() -> GatewayError {
    GatewayError::invalid("fallbacks", format!("too many fallbacks (at most {MAX_FALLBACKS})"))
}

/// `fallbacks`: `provider/model`, a JSON object `{provider, model}`, or a JSON array of either;
/// at most `room` candidates (more is refused as soon as the parse passes them).
fn parse_fallbacks(value: &str, room: usize) -> Result<Vec<Fallback>, GatewayError> {
    let bad = || {
        GatewayError::invalid(
            "fallbacks",
            format!(
                "invalid fallback '{}': expected provider/model, {{\"provider\":..,\"model\":..}} or a JSON array of them",
                clip(value)
            ),
        )
    };
    let v = value.trim();
    let one = |item: FallbackItem| -> Result<Fallback, GatewayError> {
        match item {
            FallbackItem::Name(s) => {
                let (provider, model) = split_model(&s).map_err(|_| bad())?;
                Ok(Fallback { provider, model })
            }
            FallbackItem::Pair { provider, model } if !provider.is_empty() && !model.is_empty() => {
                Ok(Fallback { provider, model })
            }
            FallbackItem::Pair { .. } => Err(bad()),
        }
    };
    if v.starts_with('[') || v.starts_with('{') {
        let overflow = Cell::new(false);
        let mut de = serde_json::Deserializer::from_str(v);
        let items = BoundedFallbacks {
            room,
            overflow: &overflow,
        }
        .deserialize(&mut de)
        .and_then(|items| de.end().map(|()| items))
        .map_err(|_| if overflow.get() { too_many_fallbacks() } else { bad() })?;
        items.into_iter().map(one).collect()
    } else if room == 0 {
        Err(too_many_fallbacks())
    } else {
        let (provider, model) = split_model(v).map_err(|_| bad())?;
        Ok(vec![Fallback { provider, model }])
    }
}

/// Fields that may appear once.
fn set_once<T>(slot: &mut Option<T>, name: &str, value: T) -> Result<(), GatewayError> {
    if slot.is_some() {
        return Err(GatewayError::invalid(
            name,
            format!("field '{name}' was sent more than once"),
        ));
    }
    *slot = Some(value);
    Ok(())
}

/// The file part being received.
#[derive(Debug)]
struct OpenFile {
    field: String,
    filename: Option<String>,
    declared_type: Option<String>,
    start: u64,
    len: u64,
    head: Vec<u8>,
    must_be_image: bool,
    kind: Option<ImageKind>,
}

/// The validation state machine: feed it field events in arrival order, then [`finish`].
///
/// [`finish`]: FormBuilder::finish
#[derive(Debug)]
pub struct FormBuilder<'l> {
    limits: &'l Limits,
    form: EditForm,
    model_raw: Option<String>,
    /// The model came from the request's path: a `model` field is ignored.
    model_preset: bool,
    stream_seen: bool,
    open: Option<OpenFile>,
    /// `fallbacks[][provider]`-style entries being assembled: (index, provider, model).
    fallback_parts: Vec<(Option<String>, Option<String>, Option<String>)>,
}

/// Most fallback candidates one request may name (each may cost an upstream attempt).
pub const MAX_FALLBACKS: usize = 10;

impl<'l> FormBuilder<'l> {
    /// A builder enforcing `limits`.
    pub fn new(limits: &'l Limits) -> Self {
        FormBuilder {
            limits,
            form: EditForm::default(),
            model_raw: None,
            model_preset: false,
            stream_seen: false,
            open: None,
            fallback_parts: Vec::new(),
        }
    }

    /// Fixes the model before any part arrives (the request's path named it): a `model` field
    /// is then ignored, whatever it holds.
    pub fn preset_model(&mut self, provider: &str, model: &str) {
        self.form.provider = provider.to_string();
        self.form.model = model.to_string();
        self.model_raw = Some(format!("{provider}/{model}"));
        self.model_preset = true;
    }

    /// Whether a part with this name and file name is received as a file.
    pub fn is_file_part(name: &str, filename: Option<&str>) -> bool {
        filename.is_some() || is_image_field(name) || name == "mask"
    }

    /// Fallback candidates that may still be added: [`MAX_FALLBACKS`] less those received
    /// (complete, and being assembled from `fallbacks[..][provider|model]` parts).
    fn fallback_room(&self) -> usize {
        MAX_FALLBACKS.saturating_sub(self.form.fallbacks.len() + self.fallback_parts.len())
    }

    /// Adds the candidates of one `fallbacks` value, refusing the field that passes
    /// [`MAX_FALLBACKS`] as it arrives.
    fn add_fallbacks(&mut self, value: &str) -> Result<(), GatewayError> {
        let mut more = parse_fallbacks(value, self.fallback_room())?;
        self.form.fallbacks.append(&mut more);
        Ok(())
    }

    /// A complete text field: what to do with it ([`Accepted`]; `Model` when it was `model`,
    /// so the caller can check the pair before reading on). An empty optional field is absent
    /// (as Bifrost treats it); an empty `model` is refused here, an empty `prompt` in
    /// [`FormBuilder::finish`] when the edit needs one.
    pub fn text(&mut self, name: &str, value: String) -> Result<Accepted, GatewayError> {
        check_field_name(name, self.limits)?;
        if (name != "model" && value.trim().is_empty()) || (name == "model" && self.model_preset) {
            return Ok(Accepted::Ignored);
        }
        let f = &mut self.form;
        match name {
            "model" => {
                let (p, m) = split_model(value.trim())?;
                set_once(&mut self.model_raw, name, value)?;
                f.provider = p.clone();
                f.model = m.clone();
                return Ok(Accepted::Model(p, m));
            }
            "prompt" => set_once(&mut f.prompt, name, value)?,
            "type" => {
                let t = match one_of(name, value.trim(), EDIT_TYPES)?.as_str() {
                    "inpainting" => EditType::Inpainting,
                    "outpainting" => EditType::Outpainting,
                    _ => EditType::BackgroundRemoval,
                };
                set_once(&mut f.edit_type, name, t)?
            }
            "n" => set_once(&mut f.n, name, int_in(name, &value, 1, MAX_N.into())? as u32)?,
            "size" => set_once(&mut f.size, name, parse_size(value.trim())?)?,
            "response_format" => set_once(
                &mut f.response_format,
                name,
                one_of(name, value.trim(), RESPONSE_FORMATS)?,
            )?,
            "stream" => {
                if self.stream_seen {
                    return Err(GatewayError::invalid(name, "field 'stream' was sent more than once"));
                }
                self.stream_seen = true;
                f.stream = parse_bool(name, &value)?;
            }
            "background" => set_once(&mut f.background, name, one_of(name, value.trim(), BACKGROUNDS)?)?,
            "input_fidelity" => set_once(
                &mut f.input_fidelity,
                name,
                one_of(name, value.trim(), INPUT_FIDELITIES)?,
            )?,
            "partial_images" => set_once(&mut f.partial_images, name, int_in(name, &value, 0, 3)? as u32)?,
            "quality" => set_once(&mut f.quality, name, one_of(name, value.trim(), QUALITIES)?)?,
            "output_format" => set_once(&mut f.output_format, name, one_of(name, value.trim(), OUTPUT_FORMATS)?)?,
            "num_inference_steps" => set_once(&mut f.num_inference_steps, name, int_in(name, &value, 1, 1000)? as u32)?,
            "seed" => set_once(&mut f.seed, name, int_in(name, &value, i64::MIN, i64::MAX)?)?,
            "output_compression" => set_once(&mut f.output_compression, name, int_in(name, &value, 0, 100)? as u32)?,
            "negative_prompt" => set_once(&mut f.negative_prompt, name, value)?,
            "user" => set_once(&mut f.user, name, value)?,
            "fallbacks" | "fallbacks[]" => self.add_fallbacks(&value)?,
            _ if name.starts_with("fallbacks[") => self.fallback_part(name, value)?,
            _ if is_image_field(name) || name == "mask" => {
                return Err(GatewayError::invalid(
                    name,
                    format!("'{name}' must be a file part (PNG, JPEG or WebP), not a text field"),
                ));
            }
            _ if !is_plain_name(name) => {
                log::debug!("ignoring unknown field with a name that is not a plain token");
                return Ok(Accepted::Ignored);
            }
            _ => {
                if self.form.extra_text.len() >= 64 {
                    return Err(GatewayError::invalid(name, "too many unknown fields (at most 64)"));
                }
                self.form.extra_text.push((name.to_string(), value));
            }
        }
        Ok(Accepted::Field)
    }

    /// A file part begins. `offset` is where its content will start in the spool. Returns
    /// whether the part is kept: an unknown part whose name is not a plain token is not (the
    /// caller reads it without storing or forwarding it, within `max_part_bytes`).
    pub fn file_start(
        &mut self,
        name: &str,
        filename: Option<&str>,
        declared_type: Option<&str>,
        offset: u64,
    ) -> Result<bool, GatewayError> {
        check_field_name(name, self.limits)?;
        let is_image = is_image_field(name);
        if !is_image && name != "mask" && !is_plain_name(name) {
            log::debug!("ignoring unknown file part with a name that is not a plain token");
            return Ok(false);
        }
        if is_image && self.form.images.len() >= self.limits.max_images {
            return Err(GatewayError::invalid(
                "image",
                format!("too many images: at most {} are allowed", self.limits.max_images),
            ));
        }
        if name == "mask" && self.form.mask.is_some() {
            return Err(GatewayError::invalid("mask", "field 'mask' was sent more than once"));
        }
        if !is_image && name != "mask" && self.form.extra_files.len() >= 16 {
            return Err(GatewayError::invalid(name, "too many unknown file parts (at most 16)"));
        }
        self.open = Some(OpenFile {
            field: name.to_string(),
            filename: filename.map(str::to_string),
            declared_type: declared_type.map(str::to_string),
            start: offset,
            len: 0,
            head: Vec::new(),
            must_be_image: is_image || name == "mask",
            kind: None,
        });
        Ok(true)
    }

    /// A chunk of the open file part arrived (the caller stores it in the spool after this
    /// returns `Ok`).
    pub fn file_chunk(&mut self, chunk: &[u8]) -> Result<(), GatewayError> {
        let Some(open) = self.open.as_mut() else {
            return Err(GatewayError::Internal("file chunk without an open part".into()));
        };
        open.len += chunk.len() as u64;
        if open.len > self.limits.max_part_bytes {
            return Err(GatewayError::PayloadTooLarge {
                param: Some(open.field.clone()),
                what: format!("part '{}'", open.field),
                limit: self.limits.max_part_bytes,
            });
        }
        if open.head.len() < ImageKind::SNIFF_LEN {
            let take = (ImageKind::SNIFF_LEN - open.head.len()).min(chunk.len());
            open.head.extend_from_slice(&chunk[..take]);
            if open.head.len() == ImageKind::SNIFF_LEN {
                Self::check_kind(open)?;
            }
        }
        Ok(())
    }

    fn check_kind(open: &mut OpenFile) -> Result<(), GatewayError> {
        open.kind = sniff(&open.head);
        if open.must_be_image && open.kind.is_none() {
            return Err(GatewayError::invalid(
                open.field.clone(),
                format!(
                    "'{}' is not a PNG, JPEG or WebP image (detected from its content, whatever its declared type)",
                    open.field
                ),
            ));
        }
        Ok(())
    }

    /// The type of the open file part once its first bytes decided it: `Some(kind)` (where
    /// `kind` is `None` for a pass-through part that is not an image), `None` while undecided.
    pub fn sniffed_kind(&self) -> Option<Option<ImageKind>> {
        self.open
            .as_ref()
            .filter(|o| o.head.len() >= ImageKind::SNIFF_LEN)
            .map(|o| o.kind)
    }

    /// The open file part ended; returns it as stored, or `None` when it was empty (a form
    /// builder's empty file field): absent, like an empty text field.
    pub fn file_end(&mut self) -> Result<Option<FilePart>, GatewayError> {
        let Some(mut open) = self.open.take() else {
            return Err(GatewayError::Internal("file end without an open part".into()));
        };
        if open.len == 0 {
            return Ok(None);
        }
        if open.head.len() < ImageKind::SNIFF_LEN {
            Self::check_kind(&mut open)?;
        }
        let part = FilePart {
            field: open.field,
            filename: open.filename,
            kind: open.kind,
            declared_type: open.declared_type,
            range: SpoolRange {
                start: open.start,
                len: open.len,
            },
        };
        if is_image_field(&part.field) {
            self.form.images.push(part.clone());
        } else if part.field == "mask" {
            self.form.mask = Some(part.clone());
        } else {
            self.form.extra_files.push(part.clone());
        }
        Ok(Some(part))
    }

    /// A `fallbacks[...]` part, as the SDKs encode lists and dicts: `fallbacks[0]` =
    /// `provider/model` (indexed list), `fallbacks[0][provider]` / `fallbacks[0][model]`
    /// (indexed list of dicts), `fallbacks[][provider]` / `fallbacks[][model]` (a dict's fields
    /// in order, each pair one candidate). The pairs are checked in [`FormBuilder::finish`].
    fn fallback_part(&mut self, name: &str, value: String) -> Result<(), GatewayError> {
        let bad = || {
            GatewayError::invalid(
                "fallbacks",
                format!(
                    "invalid field '{}': expected fallbacks, fallbacks[], fallbacks[N], fallbacks[N][provider|model] or fallbacks[][provider|model]",
                    clip(name)
                ),
            )
        };
        let rest = name.strip_prefix("fallbacks[").ok_or_else(bad)?;
        let (index, rest) = rest.split_once(']').ok_or_else(bad)?;
        let index_ok = index.is_empty() || (index.len() <= 3 && index.bytes().all(|b| b.is_ascii_digit()));
        if !index_ok {
            return Err(bad());
        }
        if rest.is_empty() && !index.is_empty() {
            return self.add_fallbacks(&value);
        }
        let is_provider = match rest {
            "[provider]" => true,
            "[model]" => false,
            _ => return Err(bad()),
        };
        let value = value.trim().to_string();
        if value.is_empty() {
            return Err(bad());
        }
        let key = (!index.is_empty()).then(|| index.to_string());
        let slot_free = |e: &(Option<String>, Option<String>, Option<String>)| {
            if is_provider {
                e.1.is_none()
            } else {
                e.2.is_none()
            }
        };
        let found = match &key {
            Some(k) => self.fallback_parts.iter().position(|e| e.0.as_ref() == Some(k)),
            // Unindexed: the last entry still missing this field, else a new one.
            None => self
                .fallback_parts
                .last()
                .filter(|e| e.0.is_none() && slot_free(e))
                .map(|_| self.fallback_parts.len() - 1),
        };
        let at = match found {
            Some(at) => at,
            None => {
                if self.fallback_room() == 0 {
                    return Err(too_many_fallbacks());
                }
                self.fallback_parts.push((key, None, None));
                self.fallback_parts.len() - 1
            }
        };
        let entry = &mut self.fallback_parts[at];
        if !slot_free(entry) {
            return Err(GatewayError::invalid(
                "fallbacks",
                format!("field '{}' was sent more than once", clip(name)),
            ));
        }
        if is_provider {
            entry.1 = Some(value);
        } else {
            entry.2 = Some(value);
        }
        Ok(())
    }

    /// All parts arrived: cross-field checks, then the validated form.
    pub fn finish(self) -> Result<EditForm, GatewayError> {
        let mut form = self.form;
        for (_, provider, model) in self.fallback_parts {
            match (provider, model) {
                (Some(provider), Some(model)) => form.fallbacks.push(Fallback { provider, model }),
                _ => return Err(GatewayError::invalid(
                    "fallbacks",
                    "a fallback given as fallbacks[..][provider] needs its fallbacks[..][model] too (and the reverse)",
                )),
            }
        }
        if form.fallbacks.len() > MAX_FALLBACKS {
            return Err(too_many_fallbacks());
        }
        if self.model_raw.is_none() {
            return Err(GatewayError::invalid("model", "model is required (provider/model)"));
        }
        if form.images.is_empty() {
            return Err(GatewayError::invalid(
                "image",
                "at least one image is required (field 'image' or 'image[]')",
            ));
        }
        let needs_prompt = form.edit_type != Some(EditType::BackgroundRemoval);
        let prompt_empty = form.prompt.as_deref().is_none_or(|p| p.trim().is_empty());
        if needs_prompt && prompt_empty {
            return Err(GatewayError::invalid(
                "prompt",
                "prompt is required (unless type is background_removal)",
            ));
        }
        if form.partial_images.is_some_and(|p| p > 0) && !form.stream {
            return Err(GatewayError::invalid(
                "partial_images",
                "partial_images requires stream=true",
            ));
        }
        Ok(form)
    }
}

/// [`parse_fallbacks`] for the parser's tests.
#[cfg(test)]
pub(super) fn parse_fallbacks_for_test(value: &str, room: usize) -> Result<Vec<Fallback>, GatewayError> {
    parse_fallbacks(value, room)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_names_are_bounded_by_the_configured_limit() {
        let limits = Limits {
            max_field_name_bytes: 16,
            ..Limits::default()
        };
        assert!(check_field_name(&"n".repeat(16), &limits).is_ok());
        let e = check_field_name(&"n".repeat(17), &limits).unwrap_err();
        assert_eq!((e.status(), e.param()), (400, None));
        assert!(e.to_string().contains("at most 16"), "{e}");
        assert!(check_field_name(&"n".repeat(256), &Limits::default()).is_ok());
        assert!(check_field_name(&"n".repeat(257), &Limits::default()).is_err());
    }
}
