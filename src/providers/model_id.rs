//! The model-id grammar of each provider kind: what a client may name as the model part of
//! `provider/model` (and of every fallback) before that name is put in a provider's URL path
//! or body with the operator's key.
//!
//! It runs in the route step, for every candidate before its request is built: the primary as
//! soon as `model` has been parsed (before a streamed upload starts), every fallback (the
//! request's and the configured chain) once the form is complete, and again whenever a key is
//! chosen for an attempt. [`check`] is pure; a refusal is a 400 `invalid_request` naming the
//! field.
//!
//! Every kind refuses: an empty id, an id longer than [`MAX_MODEL_ID_BYTES`], an empty, `.`
//! or `..` segment between `/`s (the path traversal `cap-hf/../../../api/whoami-v2` would be),
//! and any byte outside printable ASCII or in `%` (pre-encoded escapes), `\`, `?`, `#` (query
//! and fragment), white space and control characters. Then each kind allows its own shape:
//!
//! | kind | segments | characters besides `A-Za-z0-9._-` |
//! |---|---|---|
//! | `openai` | `name` or `owner/name` (self-hosted servers use Hugging Face ids) | `:` (fine-tuned `ft:…` ids) |
//! | `azure`, `xai`, `gemini`, `stability`, `bfl` | one name (a deployment, a model) | — |
//! | `vertex` | one name | `@` (versioned publisher models, `imagegeneration@006`) |
//! | `bedrock` | a model id or inference profile, or an ARN `arn:…:type/id` | `:` |
//! | `huggingface` | `name` or `owner/name`, either after `hf-inference/`; or `fal-ai/` and one to five segments (fal's endpoint id) | — |
//! | `replicate` | `owner/name`, `owner/name:version`, or a bare 64-hex version | `:` before a hex version only |
//! | `fireworks` | a short name, or `accounts/{account}/models/{name}` | — |

use super::adapter_for;
use crate::config::ProviderKind;
use crate::error::GatewayError;

/// The longest model id accepted, in bytes (Bedrock ARNs, the longest ids the references show,
/// stay well under it).
pub const MAX_MODEL_ID_BYTES: usize = 256;

/// Why an id is refused, in words for the client.
fn refuse(param: &str, model: &str, kind: ProviderKind, why: &str) -> GatewayError {
    let shown: String = model.chars().take(64).flat_map(char::escape_default).collect();
    let more = if model.chars().count() > 64 { "…" } else { "" };
    GatewayError::invalid(
        param,
        format!("invalid model id '{shown}{more}' for a provider of kind {kind}: {why}"),
    )
}

/// The rules every kind shares (see the module docs); `Err` holds why.
pub fn check_common(model: &str) -> Result<(), &'static str> {
    if model.is_empty() {
        return Err("it is empty");
    }
    if model.len() > MAX_MODEL_ID_BYTES {
        return Err("it is longer than 256 bytes");
    }
    if let Some(b) = model
        .bytes()
        .find(|b| !b.is_ascii_graphic() || matches!(b, b'%' | b'\\' | b'?' | b'#'))
    {
        return Err(match b {
            b'%' => "percent escapes are not allowed",
            b'\\' => "backslashes are not allowed",
            b'?' | b'#' => "query and fragment characters are not allowed",
            _ => "only printable ASCII without spaces is allowed",
        });
    }
    if model.split('/').any(|s| s.is_empty() || s == "." || s == "..") {
        return Err("empty, '.' and '..' segments are not allowed");
    }
    Ok(())
}

/// Whether every byte of `segment` is `A-Za-z0-9._-` or one of `extra`.
pub fn plain(segment: &str, extra: &[u8]) -> bool {
    segment
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-') || extra.contains(&b))
}

/// Whether `s` is a 64-hex version (Replicate's).
pub fn is_hex_version(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The most common shape, and [`super::ProviderAdapter::model_id_shape`]'s default: one name of
/// `A-Za-z0-9._-` (`xai`, `gemini`, `stability`, `bfl`).
pub fn one_name(model: &str) -> Result<(), &'static str> {
    (!model.contains('/') && plain(model, b""))
        .then_some(())
        .ok_or("expected one model name of letters, digits, '.', '_', '-'")
}

/// Refuses `model` (the bare model part, as sent in field `param`: `model` or `fallbacks`)
/// unless it is a well-formed id for a provider of `kind`.
pub fn check(kind: ProviderKind, model: &str, param: &str) -> Result<(), GatewayError> {
    check_common(model)
        .and_then(|()| adapter_for(kind).model_id_shape(model))
        .map_err(|why| refuse(param, model, kind, why))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ProviderKind::*;

    const HEX: &str = "5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa";

    #[test]
    fn every_kind_refuses_traversal_escapes_and_odd_bytes() {
        let long = "m".repeat(MAX_MODEL_ID_BYTES + 1);
        for kind in ProviderKind::ALL.iter().copied() {
            for bad in [
                "",
                ".",
                "..",
                "../../../api/whoami-v2",
                "a/../b",
                "a/./b",
                "./a",
                "a/..",
                "a//b",
                "/a",
                "a/",
                "%2e%2e",
                "a%2Fb",
                "a?b",
                "a#b",
                "a\\b",
                "a b",
                "a\tb",
                "a\u{0}b",
                "a\u{7f}b",
                "mödel",
                long.as_str(),
            ] {
                let e = check(kind, bad, "model").expect_err(&format!("{kind}: {bad:?}"));
                assert_eq!((e.status(), e.param()), (400, Some("model")), "{kind}: {bad:?}");
            }
        }
        assert!(check(OpenAi, &"m".repeat(MAX_MODEL_ID_BYTES), "model").is_ok());
    }

    #[test]
    fn each_kind_takes_its_own_shape() {
        let arn = "arn:aws:bedrock:us-west-2:123456789012:inference-profile/us.amazon.nova-canvas-v1:0";
        let foundation = "arn:aws:bedrock:us-west-2::foundation-model/stability.stable-image-inpaint-v1:0";
        let version = format!("black-forest-labs/flux-kontext-pro:{HEX}");
        let table: &[(ProviderKind, &[&str], &[&str])] = &[
            (
                OpenAi,
                &["gpt-image-1", "dall-e-2", "ft:gpt-image-1:org:x:1", "owner/model-1.5"],
                &["a/b/c", "a@b", "a+b"],
            ),
            (
                Azure,
                &["gpt-image-1", "my_deploy.v2", "FLUX.1-Kontext-pro"],
                &["a/b", "a:b", "a@b"],
            ),
            (Xai, &["grok-imagine-image"], &["a/b", "a:b"]),
            (
                Gemini,
                &["gemini-2.5-flash-image", "imagen-3.0-capability-001"],
                &["models/gemini", "a:generateContent"],
            ),
            (
                Vertex,
                &["imagen-3.0-capability-001", "imagegeneration@006"],
                &["publishers/google/models/x", "a:b"],
            ),
            (Stability, &["sd3", "stable-image-inpaint"], &["edit/inpaint", "a:b"]),
            (Bfl, &["flux-pro-1.0-fill", "flux-kontext-pro"], &["v1/flux", "a:b"]),
            (
                Bedrock,
                &[
                    "amazon.nova-canvas-v1:0",
                    "us.amazon.titan-image-generator-v2:0",
                    arn,
                    foundation,
                ],
                &["a/b", "arn:aws:bedrock", "x/arn:aws", "arn:a/b/c", "a@b"],
            ),
            (
                HuggingFace,
                &["timbrooks/instruct-pix2pix", "gpt2", "stabilityai/stable-diffusion-2_1"],
                &["a/b/c", "a:b", "a/b:c"],
            ),
            (
                Replicate,
                &["black-forest-labs/flux-kontext-pro", version.as_str(), HEX],
                &["flux", "a/b/c", "a/b:c", "a:b/c", &HEX[1..], "a/b:"],
            ),
            (
                Fireworks,
                &["flux-kontext-pro", "accounts/fireworks/models/flux-kontext-pro"],
                &[
                    "a/b",
                    "accounts/a/models",
                    "accounts/a/models/m/x",
                    "users/a/models/m",
                    "a:b",
                ],
            ),
        ];
        for (kind, good, bad) in table {
            for id in *good {
                assert!(check(*kind, id, "model").is_ok(), "{kind} should take {id}");
            }
            for id in *bad {
                let e = check(*kind, id, "fallbacks").expect_err(&format!("{kind} should refuse {id}"));
                assert_eq!(e.param(), Some("fallbacks"));
                assert!(e.to_string().contains(&format!("kind {kind}")), "{e}");
            }
        }
    }

    #[test]
    fn the_message_shows_a_clipped_escaped_id() {
        let e = check(HuggingFace, &format!("a\n{}", "b".repeat(500)), "model").unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("'a\\nbbb"), "{msg}");
        assert!(msg.len() < 300, "{msg}");
    }
}
