//! Field-level validation of the image-edit form: the spec's enums, ranges and required fields,
//! and [`FormBuilder`], the pure state machine that receives parts in arrival order.

use super::{EditForm, EditType, Fallback, FilePart, MAX_N};
use crate::config::Limits;
use crate::error::GatewayError;
use crate::imaging::{sniff, ImageKind};
use crate::spool::SpoolRange;

const SIZES: &[&str] = &["256x256", "512x512", "1024x1024", "1536x1024", "1024x1536", "auto"];
const RESPONSE_FORMATS: &[&str] = &["url", "b64_json"];
const BACKGROUNDS: &[&str] = &["transparent", "opaque", "auto"];
const INPUT_FIDELITIES: &[&str] = &["low", "high"];
const QUALITIES: &[&str] = &["auto", "high", "medium", "low", "standard"];
const OUTPUT_FORMATS: &[&str] = &["png", "webp", "jpeg"];
const EDIT_TYPES: &[&str] = &["inpainting", "outpainting", "background_removal"];

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

/// `fallbacks`: `provider/model`, a JSON object `{provider, model}`, or a JSON array of either.
fn parse_fallbacks(value: &str) -> Result<Vec<Fallback>, GatewayError> {
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
    let one = |item: &serde_json::Value| -> Result<Fallback, GatewayError> {
        match item {
            serde_json::Value::String(s) => {
                let (provider, model) = split_model(s).map_err(|_| bad())?;
                Ok(Fallback { provider, model })
            }
            serde_json::Value::Object(o) => match (o.get("provider"), o.get("model")) {
                (Some(serde_json::Value::String(p)), Some(serde_json::Value::String(m)))
                    if !p.is_empty() && !m.is_empty() =>
                {
                    Ok(Fallback {
                        provider: p.clone(),
                        model: m.clone(),
                    })
                }
                _ => Err(bad()),
            },
            _ => Err(bad()),
        }
    };
    if v.starts_with('[') || v.starts_with('{') {
        let parsed: serde_json::Value = serde_json::from_str(v).map_err(|_| bad())?;
        match &parsed {
            serde_json::Value::Array(items) => items.iter().map(one).collect(),
            other => Ok(vec![one(other)?]),
        }
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
            stream_seen: false,
            open: None,
            fallback_parts: Vec::new(),
        }
    }

    /// Whether a part with this name and file name is received as a file.
    pub fn is_file_part(name: &str, filename: Option<&str>) -> bool {
        filename.is_some() || is_image_field(name) || name == "mask"
    }

    /// A complete text field. Returns the `(provider, model)` pair when this field was `model`,
    /// so the caller can check it before reading on.
    pub fn text(&mut self, name: &str, value: String) -> Result<Option<(String, String)>, GatewayError> {
        let f = &mut self.form;
        match name {
            "model" => {
                let (p, m) = split_model(value.trim())?;
                set_once(&mut self.model_raw, name, value)?;
                f.provider = p.clone();
                f.model = m.clone();
                return Ok(Some((p, m)));
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
            "fallbacks" | "fallbacks[]" => {
                let mut more = parse_fallbacks(&value)?;
                f.fallbacks.append(&mut more);
            }
            _ if name.starts_with("fallbacks[") => self.fallback_part(name, value)?,
            _ if is_image_field(name) || name == "mask" => {
                return Err(GatewayError::invalid(
                    name,
                    format!("'{name}' must be a file part (PNG, JPEG or WebP), not a text field"),
                ));
            }
            _ => {
                if self.form.extra_text.len() >= 64 {
                    return Err(GatewayError::invalid(name, "too many unknown fields (at most 64)"));
                }
                self.form.extra_text.push((name.to_string(), value));
            }
        }
        Ok(None)
    }

    /// A file part begins. `offset` is where its content will start in the spool.
    pub fn file_start(
        &mut self,
        name: &str,
        filename: Option<&str>,
        declared_type: Option<&str>,
        offset: u64,
    ) -> Result<(), GatewayError> {
        let is_image = is_image_field(name);
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
        Ok(())
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

    /// The open file part ended; returns it as stored.
    pub fn file_end(&mut self) -> Result<FilePart, GatewayError> {
        let Some(mut open) = self.open.take() else {
            return Err(GatewayError::Internal("file end without an open part".into()));
        };
        if open.len == 0 {
            return Err(GatewayError::invalid(
                open.field.clone(),
                format!("'{}' is an empty file", open.field),
            ));
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
        Ok(part)
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
            let mut more = parse_fallbacks(&value)?;
            self.form.fallbacks.append(&mut more);
            return Ok(());
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
                if self.fallback_parts.len() >= MAX_FALLBACKS {
                    return Err(GatewayError::invalid(
                        "fallbacks",
                        format!("too many fallbacks (at most {MAX_FALLBACKS})"),
                    ));
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
            return Err(GatewayError::invalid(
                "fallbacks",
                format!("too many fallbacks (at most {MAX_FALLBACKS})"),
            ));
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
