//! What each provider kind and model family supports, declared once per adapter
//! ([`super::ProviderAdapter::families`]). A request asking for something the chosen model
//! cannot do is refused with a 400 that names the field, before any upstream call
//! ([`check`]); `refract providers` prints the declarations as the table in docs/providers.md
//! ([`markdown_table`]), or as JSON with `--json` ([`json_rows`]).

use super::adapter_for;
use crate::config::{ModelRules, ProviderKind};
use crate::error::GatewayError;
use crate::form::{EditForm, EditType};
use crate::imaging::ImageKind;

/// How `stream=true` is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streaming {
    /// The provider streams; partial images when it sends them.
    Native,
    /// The provider streams completed images only (no partials).
    NativeCompletedOnly,
    /// The provider cannot stream: its complete answer becomes one `completed` event per image.
    Synthesized,
}

/// How a provider that makes one image per call serves `n > 1`: the gateway makes n calls,
/// each asking for one image, and merges their answers (`server::gateway::repeat`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NByCalls {
    /// The seeds that may be offset, as an inclusive range: when the request's `seed` is in it,
    /// call i sends `seed + i`, wrapped within the range, so the n images differ (as a user
    /// looping over the provider's API would do). A seed outside it is sent unchanged by every
    /// call: a provider's "random" value (Stability's 0) stays random, and a seed the provider
    /// refuses is refused as for one call.
    pub seeds: (i64, i64),
}

impl NByCalls {
    /// The seed call `call` (from 0) sends for the request's `seed`.
    pub fn seed(&self, seed: Option<i64>, call: u32) -> Option<i64> {
        let (low, high) = self.seeds;
        let seed = seed?;
        if !(low..=high).contains(&seed) {
            return Some(seed);
        }
        // In i128, so neither the sum nor the span can overflow.
        let span = i128::from(high) - i128::from(low) + 1;
        let offset = (i128::from(seed) - i128::from(low) + i128::from(call)) % span;
        i64::try_from(i128::from(low) + offset).ok()
    }
}

/// What a model family supports.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Accepts `mask` (the OpenAI convention; converted where the provider's differs).
    pub mask: bool,
    /// Largest `n` one upstream call serves.
    pub max_n: u32,
    /// `Some`: any `n` the request may ask for (up to [`crate::form::MAX_N`]) is served by n
    /// calls of one image each (`max_n` is then 1).
    pub n_by_calls: Option<NByCalls>,
    /// Most input images.
    pub max_images: usize,
    /// Largest input image (and mask), in bytes.
    pub max_image_bytes: u64,
    /// `type` values accepted; a request without `type` is always accepted.
    pub edit_types: &'static [EditType],
    /// The provider answers `response_format=url` with URLs of its own; else the gateway asks
    /// it for base64 and answers URLs of images it stores (`server::gateway::rehost`; not for
    /// a stream).
    pub url_output: bool,
    /// How `size` is used (for the table).
    pub sizes: &'static str,
    /// `stream=true`.
    pub streaming: Streaming,
    /// Fields the provider receives besides prompt, images, mask, n and size (for the table;
    /// others are dropped).
    pub extra_fields: &'static str,
    /// Longest prompt, in characters (`None`: no limit known).
    pub max_prompt_chars: Option<usize>,
    /// Accepted input image formats (empty: any the gateway detects).
    pub input_formats: &'static [ImageKind],
    /// Accepted `size` values besides `auto` (empty: any `WxH`; the adapter may still map or
    /// refuse it).
    pub allowed_sizes: &'static [&'static str],
}

/// A set of models of one provider kind that share capabilities.
#[derive(Debug)]
pub struct ModelFamily {
    /// Name in the table, e.g. `Imagen (imagen-*)`.
    pub name: &'static str,
    /// Whether a model name belongs to the family.
    pub matches: fn(&str) -> bool,
    /// What it supports.
    pub capabilities: Capabilities,
}

/// Capabilities of nothing (an adapter that declares no family).
pub static NOTHING: Capabilities = Capabilities {
    mask: false,
    max_n: 0,
    n_by_calls: None,
    max_images: 0,
    max_image_bytes: 0,
    edit_types: &[],
    url_output: false,
    sizes: "",
    streaming: Streaming::Synthesized,
    extra_fields: "",
    max_prompt_chars: None,
    input_formats: &[],
    allowed_sizes: &[],
};

/// Every model matches.
pub fn any_model(_: &str) -> bool {
    true
}

/// Refuses `form` if `caps` (of `provider`), narrowed or widened by the config's `rules` for
/// the model, cannot serve it.
pub fn check(
    form: &EditForm,
    caps: &Capabilities,
    rules: Option<&ModelRules>,
    provider: &str,
) -> Result<(), GatewayError> {
    let refuse = |param: &str, message: String| {
        Err(GatewayError::Unsupported {
            provider: provider.to_string(),
            param: param.to_string(),
            message,
        })
    };
    if form.mask.is_some() && !caps.mask {
        return refuse("mask", format!("a mask with model '{}'", form.model));
    }
    let n = form.n.unwrap_or(1);
    if n > caps.max_n && caps.n_by_calls.is_none() {
        return refuse(
            "n",
            format!("n={n} with model '{}' (at most {})", form.model, caps.max_n),
        );
    }
    let max_images = rules.and_then(|r| r.max_images).unwrap_or(caps.max_images);
    if form.images.len() > max_images {
        return refuse(
            "image",
            format!(
                "{} input images with model '{}' (at most {max_images})",
                form.images.len(),
                form.model,
            ),
        );
    }
    let max_bytes = rules.and_then(|r| r.max_image_bytes).unwrap_or(caps.max_image_bytes);
    let formats: Vec<&str> = match rules.and_then(|r| r.formats.as_ref()) {
        Some(list) => list.iter().map(String::as_str).collect(),
        None => caps.input_formats.iter().map(|k| k.extension_name()).collect(),
    };
    for part in form.images.iter().chain(form.mask.iter()) {
        if part.range.len > max_bytes {
            return refuse(
                &part.field,
                format!(
                    "a {}-byte image with model '{}' (at most {max_bytes} bytes)",
                    part.range.len, form.model
                ),
            );
        }
        if let Some(kind) = part.kind.filter(|_| !formats.is_empty()) {
            if !formats.contains(&kind.extension_name()) {
                return refuse(
                    &part.field,
                    format!(
                        "{} images with model '{}' (accepted: {})",
                        kind.extension_name(),
                        form.model,
                        formats.join(", ")
                    ),
                );
            }
        }
    }
    let max_prompt = rules.and_then(|r| r.max_prompt_chars).or(caps.max_prompt_chars);
    if let (Some(max), Some(prompt)) = (max_prompt, &form.prompt) {
        let chars = prompt.chars().count();
        if chars > max {
            return refuse(
                "prompt",
                format!("a {chars}-character prompt with model '{}' (at most {max})", form.model),
            );
        }
    }
    if let Some(size) = form.size.as_deref().filter(|s| *s != "auto") {
        let allowed: Vec<&str> = match rules.and_then(|r| r.sizes.as_ref()) {
            Some(list) => list.iter().map(String::as_str).collect(),
            None => caps.allowed_sizes.to_vec(),
        };
        if !allowed.is_empty() && !allowed.contains(&size) {
            return refuse(
                "size",
                format!(
                    "size={size} with model '{}' (accepted: auto, {})",
                    form.model,
                    allowed.join(", ")
                ),
            );
        }
    }
    if let Some(t) = form.edit_type {
        if !caps.edit_types.contains(&t) {
            return refuse(
                "type",
                format!("type={} with model '{}'", edit_type_name(t), form.model),
            );
        }
    }
    // Without a URL of its own, the gateway stores the image and answers its URL; a stream's
    // images go out as they come, so there is nothing to store first.
    if form.response_format.as_deref() == Some("url") && !caps.url_output && form.stream {
        return refuse(
            "response_format",
            format!(
                "response_format=url with stream=true with model '{}' (use b64_json, or no stream)",
                form.model
            ),
        );
    }
    Ok(())
}

/// The form value of an edit type.
pub fn edit_type_name(t: EditType) -> &'static str {
    match t {
        EditType::Inpainting => "inpainting",
        EditType::Outpainting => "outpainting",
        EditType::BackgroundRemoval => "background_removal",
    }
}

/// The provider × feature table of every kind's families, as Markdown (`refract providers`).
pub fn markdown_table() -> String {
    let mut out = String::from(
        "| kind | models | mask | n | images | bytes per image | type | response_format | size | stream | also sent |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for kind in ProviderKind::ALL {
        for family in adapter_for(*kind).families() {
            let c = &family.capabilities;
            let types: Vec<&str> = c.edit_types.iter().map(|t| edit_type_name(*t)).collect();
            out.push_str(&format!(
                "| `{}` | {} | {} | {} | ≤ {} | ≤ {} MB | {} | {} | {} | {} | {} |\n",
                kind.as_str(),
                family.name,
                if c.mask { "yes" } else { "no" },
                match c.n_by_calls {
                    Some(_) => format!("1–{}, by n calls of one image", crate::form::MAX_N),
                    None => format!("1–{}", c.max_n),
                },
                c.max_images,
                c.max_image_bytes / 1_000_000,
                if types.is_empty() {
                    "—".to_string()
                } else {
                    types.join(", ")
                },
                if c.url_output {
                    "b64_json, url"
                } else {
                    "b64_json, url (stored by the gateway)"
                },
                c.sizes,
                match c.streaming {
                    Streaming::Native => "native, partial images",
                    Streaming::NativeCompletedOnly => "native, completed images only",
                    Streaming::Synthesized => "synthesized from the complete answer",
                },
                if c.extra_fields.is_empty() {
                    "—"
                } else {
                    c.extra_fields
                },
            ));
        }
    }
    out
}

/// The same declarations as [`markdown_table`], as JSON (`refract providers --json`): one
/// object per kind and model family, with the limits as numbers and the lists as arrays.
pub fn json_rows() -> serde_json::Value {
    let mut rows = Vec::new();
    for kind in ProviderKind::ALL {
        for family in adapter_for(*kind).families() {
            let c = &family.capabilities;
            rows.push(serde_json::json!({
                "kind": kind.as_str(),
                "models": family.name,
                "mask": c.mask,
                "max_n": if c.n_by_calls.is_some() { crate::form::MAX_N } else { c.max_n },
                "n_by_calls": c.n_by_calls.is_some(),
                "max_images": c.max_images,
                "max_image_bytes": c.max_image_bytes,
                "types": c.edit_types.iter().map(|t| edit_type_name(*t)).collect::<Vec<_>>(),
                "url_output": c.url_output,
                "size": c.sizes,
                "stream": match c.streaming {
                    Streaming::Native => "native",
                    Streaming::NativeCompletedOnly => "native_completed_only",
                    Streaming::Synthesized => "synthesized",
                },
                "also_sent": c.extra_fields,
            }));
        }
    }
    serde_json::Value::Array(rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::form::FilePart;
    use crate::spool::SpoolRange;

    const CAPS: Capabilities = Capabilities {
        mask: false,
        max_n: 2,
        n_by_calls: None,
        max_images: 1,
        max_image_bytes: 100,
        edit_types: &[EditType::Inpainting],
        url_output: false,
        sizes: "any",
        streaming: Streaming::Synthesized,
        extra_fields: "",
        max_prompt_chars: Some(10),
        input_formats: &[ImageKind::Png],
        allowed_sizes: &["1024x1024"],
    };

    fn image(field: &str, len: u64) -> FilePart {
        FilePart {
            field: field.into(),
            filename: None,
            kind: None,
            declared_type: None,
            range: SpoolRange { start: 0, len },
        }
    }

    #[test]
    fn each_unsupported_field_is_named() {
        let ok = EditForm {
            model: "m".into(),
            images: vec![image("image", 10)],
            ..Default::default()
        };
        assert!(check(&ok, &CAPS, None, "p").is_ok());
        let url = EditForm {
            response_format: Some("url".into()),
            ..ok.clone()
        };
        assert!(
            check(&url, &CAPS, None, "p").is_ok(),
            "the gateway stores the image and answers its URL"
        );
        let cases: Vec<(EditForm, &str)> = vec![
            (
                EditForm {
                    mask: Some(image("mask", 1)),
                    ..ok.clone()
                },
                "mask",
            ),
            (
                EditForm {
                    n: Some(3),
                    ..ok.clone()
                },
                "n",
            ),
            (
                EditForm {
                    images: vec![image("image[]", 1), image("image[]", 1)],
                    ..ok.clone()
                },
                "image",
            ),
            (
                EditForm {
                    images: vec![image("image[]", 101)],
                    ..ok.clone()
                },
                "image[]",
            ),
            (
                EditForm {
                    edit_type: Some(EditType::Outpainting),
                    ..ok.clone()
                },
                "type",
            ),
            (
                EditForm {
                    response_format: Some("url".into()),
                    stream: true,
                    ..ok.clone()
                },
                "response_format",
            ),
        ];
        let cases = cases.into_iter().chain([
            (
                EditForm {
                    prompt: Some("eleven chars".into()),
                    ..ok.clone()
                },
                "prompt",
            ),
            (
                EditForm {
                    size: Some("512x512".into()),
                    ..ok.clone()
                },
                "size",
            ),
            (
                EditForm {
                    images: vec![FilePart {
                        kind: Some(ImageKind::Jpeg),
                        ..image("image", 10)
                    }],
                    ..ok.clone()
                },
                "image",
            ),
        ]);
        for (form, param) in cases {
            let e = check(&form, &CAPS, None, "p").unwrap_err();
            assert_eq!(e.status(), 400);
            assert_eq!(e.code(), "unsupported_operation");
            assert_eq!(e.param(), Some(param), "{e}");
            assert!(e.to_string().ends_with("is not supported by provider 'p'"), "{e}");
        }
    }

    #[test]
    fn n_by_calls_serves_any_n_with_offset_seeds() {
        let form = EditForm {
            model: "m".into(),
            n: Some(10),
            images: vec![image("image", 10)],
            ..Default::default()
        };
        assert_eq!(check(&form, &CAPS, None, "p").unwrap_err().param(), Some("n"));
        let looped = Capabilities {
            n_by_calls: Some(NByCalls {
                seeds: (1, 4_294_967_294),
            }),
            ..CAPS
        };
        assert!(check(&form, &looped, None, "p").is_ok());
        let by_calls = looped.n_by_calls.unwrap();
        let seeds: Vec<_> = (0..3).map(|i| by_calls.seed(Some(42), i)).collect();
        assert_eq!(seeds, [Some(42), Some(43), Some(44)]);
        // Wrapped within the range, never onto the provider's "random" 0.
        let seeds: Vec<_> = (0..3).map(|i| by_calls.seed(Some(4_294_967_293), i)).collect();
        assert_eq!(seeds, [Some(4_294_967_293), Some(4_294_967_294), Some(1)]);
        // Outside the range (random, or refused by the adapter): unchanged for every call.
        for seed in [0, -5, 4_294_967_295] {
            assert_eq!(by_calls.seed(Some(seed), 2), Some(seed));
        }
        assert_eq!(by_calls.seed(None, 2), None);
        let whole = NByCalls {
            seeds: (i64::MIN, i64::MAX),
        };
        assert_eq!(whole.seed(Some(i64::MAX), 1), Some(i64::MIN));
    }

    #[test]
    fn config_rules_override_the_declaration() {
        let form = EditForm {
            model: "m".into(),
            prompt: Some("eleven chars".into()),
            size: Some("512x512".into()),
            images: vec![FilePart {
                kind: Some(ImageKind::Jpeg),
                ..image("image", 150)
            }],
            ..Default::default()
        };
        assert!(check(&form, &CAPS, None, "p").is_err());
        let wide = ModelRules {
            pattern: "m".into(),
            max_images: Some(3),
            max_image_bytes: Some(200),
            max_prompt_chars: Some(100),
            sizes: Some(vec!["512x512".into()]),
            formats: Some(vec!["jpeg".into()]),
            image_key: None,
            fallbacks: Vec::new(),
        };
        assert!(check(&form, &CAPS, Some(&wide), "p").is_ok());
        let narrow = ModelRules {
            max_images: Some(0),
            ..wide.clone()
        };
        assert_eq!(
            check(&form, &CAPS, Some(&narrow), "p").unwrap_err().param(),
            Some("image")
        );
        let auto = EditForm {
            size: Some("auto".into()),
            ..form
        };
        let sizes_only = ModelRules {
            sizes: Some(vec!["1x1".into()]),
            ..wide
        };
        assert!(
            check(&auto, &CAPS, Some(&sizes_only), "p").is_ok(),
            "auto is always accepted"
        );
    }

    #[test]
    fn the_table_has_a_row_per_family() {
        let table = markdown_table();
        let rows = table.lines().count() - 2;
        let families: usize = ProviderKind::ALL.iter().map(|k| adapter_for(*k).families().len()).sum();
        assert_eq!(rows, families);
        for kind in ProviderKind::ALL {
            assert!(table.contains(&format!("| `{}` |", kind.as_str())), "{kind}");
        }
    }

    #[test]
    fn kinds_that_repeat_calls_are_those_with_a_family_served_by_calls() {
        for kind in ProviderKind::ALL {
            let by_calls = adapter_for(*kind)
                .families()
                .iter()
                .any(|f| f.capabilities.n_by_calls.is_some());
            assert_eq!(
                kind.repeats_calls(),
                by_calls,
                "{kind}: its row and its adapter disagree"
            );
        }
    }
}
