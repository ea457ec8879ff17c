//! What each provider kind and model family supports, declared once per adapter
//! ([`super::ProviderAdapter::families`]). A request asking for something the chosen model
//! cannot do is refused with a 400 that names the field, before any upstream call
//! ([`check`]); `refract providers` prints the declarations as the README's table
//! ([`markdown_table`]).

use super::adapter_for;
use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::form::{EditForm, EditType};

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

/// What a model family supports.
#[derive(Debug, Clone, Copy)]
pub struct Capabilities {
    /// Accepts `mask` (the OpenAI convention; converted where the provider's differs).
    pub mask: bool,
    /// Largest `n`.
    pub max_n: u32,
    /// Most input images.
    pub max_images: usize,
    /// Largest input image (and mask), in bytes.
    pub max_image_bytes: u64,
    /// `type` values accepted; a request without `type` is always accepted.
    pub edit_types: &'static [EditType],
    /// `response_format=url` (else only `b64_json`).
    pub url_output: bool,
    /// How `size` is used (for the table).
    pub sizes: &'static str,
    /// `stream=true`.
    pub streaming: Streaming,
    /// Fields the provider receives besides prompt, images, mask, n and size (for the table;
    /// others are dropped).
    pub extra_fields: &'static str,
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
    max_images: 0,
    max_image_bytes: 0,
    edit_types: &[],
    url_output: false,
    sizes: "",
    streaming: Streaming::Synthesized,
    extra_fields: "",
};

/// Every model matches.
pub fn any_model(_: &str) -> bool {
    true
}

/// Refuses `form` if `caps` (of `provider`) cannot serve it. `image_len` gives a file part's
/// size in bytes.
pub fn check(form: &EditForm, caps: &Capabilities, provider: &str) -> Result<(), GatewayError> {
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
    if n > caps.max_n {
        return refuse(
            "n",
            format!("n={n} with model '{}' (at most {})", form.model, caps.max_n),
        );
    }
    if form.images.len() > caps.max_images {
        return refuse(
            "image",
            format!(
                "{} input images with model '{}' (at most {})",
                form.images.len(),
                form.model,
                caps.max_images
            ),
        );
    }
    for part in form.images.iter().chain(form.mask.iter()) {
        if part.range.len > caps.max_image_bytes {
            return refuse(
                &part.field,
                format!(
                    "a {}-byte image with model '{}' (at most {} bytes)",
                    part.range.len, form.model, caps.max_image_bytes
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
    if form.response_format.as_deref() == Some("url") && !caps.url_output {
        return refuse(
            "response_format",
            format!("response_format=url with model '{}' (use b64_json)", form.model),
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
                "| `{}` | {} | {} | 1–{} | ≤ {} | ≤ {} MB | {} | {} | {} | {} | {} |\n",
                kind.as_str(),
                family.name,
                if c.mask { "yes" } else { "no" },
                c.max_n,
                c.max_images,
                c.max_image_bytes / 1_000_000,
                if types.is_empty() {
                    "—".to_string()
                } else {
                    types.join(", ")
                },
                if c.url_output { "b64_json, url" } else { "b64_json" },
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::form::FilePart;
    use crate::spool::SpoolRange;

    const CAPS: Capabilities = Capabilities {
        mask: false,
        max_n: 2,
        max_images: 1,
        max_image_bytes: 100,
        edit_types: &[EditType::Inpainting],
        url_output: false,
        sizes: "any",
        streaming: Streaming::Synthesized,
        extra_fields: "",
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
        assert!(check(&ok, &CAPS, "p").is_ok());
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
                    ..ok.clone()
                },
                "response_format",
            ),
        ];
        for (form, param) in cases {
            let e = check(&form, &CAPS, "p").unwrap_err();
            assert_eq!(e.status(), 400);
            assert_eq!(e.code(), "unsupported_parameter");
            assert_eq!(e.param(), Some(param), "{e}");
            assert!(e.to_string().starts_with("provider 'p' does not support"), "{e}");
        }
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
}
