//! Kind `xai`: xAI image edits (`grok-imagine-image`, providers.md §12).
//!
//! Request: `POST {base}/images/edits` with `Authorization: Bearer` and JSON (not multipart):
//! `{"model","prompt","image":{"url":"data:<mime>;base64,…"}}` for one image, or
//! `"images":[{"url":…},…]` for two or three; each image's base64 is encoded on the fly from
//! the spool. `n` is sent when given; `response_format` is the client's, `b64_json` by default
//! (GPT-image clients expect base64). `size` `WxH` → `aspect_ratio` (the nearest of xAI's
//! ratios, [`ASPECT_RATIOS`]) and `resolution` (`1k` for a long side up to 1024, else `2k`);
//! `auto` sends neither. A mask is refused by the capability (xAI has no mask input); `seed`,
//! `negative_prompt`, `quality`, `background`, `num_inference_steps`, `output_format`,
//! `output_compression` are dropped.
//!
//! Answer: OpenAI-like (`{"data":[{"b64_json"|"url"}…]}`), converted like OpenAI's
//! ([`super::kernel::images_api::convert_images_response`]); errors keep xAI's status, and its message
//! (`{"code","error":"…"}` or OpenAI's `error` object).

use super::capabilities::{any_model, Capabilities, ModelFamily, Streaming};
use super::kernel::images_api::convert_images_response;
use super::kernel::post::{auth_header, json_post};
use super::kernel::size::{nearest_ratio, size_wxh};
use super::{
    BodySegment, BuildScope, ProviderAdapter, ResponseContext, UnifiedAnswer, UpstreamRequest, UpstreamResponse,
};
use crate::error::GatewayError;
use crate::imaging::ImageKind;
use bytes::{BufMut, BytesMut};
use serde_json::{json, Map, Value};

/// The adapter for kind `xai`.
#[derive(Debug, Clone, Copy, Default)]
pub struct XaiAdapter;

/// `aspect_ratio` values xAI documents, with their width/height ratio.
pub const ASPECT_RATIOS: [(&str, f64); 13] = [
    ("1:1", 1.0),
    ("16:9", 16.0 / 9.0),
    ("9:16", 9.0 / 16.0),
    ("4:3", 4.0 / 3.0),
    ("3:4", 0.75),
    ("3:2", 1.5),
    ("2:3", 2.0 / 3.0),
    ("2:1", 2.0),
    ("1:2", 0.5),
    ("19.5:9", 19.5 / 9.0),
    ("9:19.5", 9.0 / 19.5),
    ("20:9", 20.0 / 9.0),
    ("9:20", 9.0 / 20.0),
];

/// xAI image edits (per its docs): up to 3 input images, `n` up to 10, URL or base64 output. 10 MB per
/// image is an assumption (no documented figure); tighten per model with `model_rules`.
pub static XAI_CAPABILITIES: Capabilities = Capabilities {
    mask: false,
    max_n: 10,
    n_by_calls: None,
    max_images: 3,
    max_image_bytes: 10_000_000,
    edit_types: &[],
    url_output: true,
    sizes: "`WxH` → nearest `aspect_ratio` + `resolution` (1k, 2k)",
    streaming: Streaming::Synthesized,
    extra_fields: "response_format",
    max_prompt_chars: None,
    input_formats: &[],
    allowed_sizes: &[],
};

static FAMILIES: [ModelFamily; 1] = [ModelFamily {
    name: "grok-imagine-image and compatible",
    matches: any_model,
    capabilities: XAI_CAPABILITIES,
}];

/// `aspect_ratio` and `resolution` for `size` (`None` for `auto` or no size).
fn size_fields(size: Option<&str>) -> Option<(&'static str, &'static str)> {
    let (w, h) = size_wxh(size)?;
    let (ratio, _) = nearest_ratio(f64::from(w) / f64::from(h), &ASPECT_RATIOS);
    Some((ratio, if w.max(h) <= 1024 { "1k" } else { "2k" }))
}

impl ProviderAdapter for XaiAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        let BuildScope {
            form,
            target,
            request_id,
            ..
        } = *scope;
        let internal = |e: serde_json::Error| GatewayError::Internal(e.to_string());
        if form.images.is_empty() {
            return Err(GatewayError::InvalidRequest {
                param: Some("image".into()),
                message: "an image is required".into(),
            });
        }
        let mut head = Map::new();
        head.insert("model".into(), json!(target.model));
        head.insert("prompt".into(), json!(form.prompt.as_deref().unwrap_or_default()));
        if let Some(n) = form.n {
            head.insert("n".into(), json!(n));
        }
        head.insert(
            "response_format".into(),
            json!(form.response_format.as_deref().unwrap_or("b64_json")),
        );
        if let Some((ratio, resolution)) = size_fields(form.size.as_deref()) {
            head.insert("aspect_ratio".into(), json!(ratio));
            head.insert("resolution".into(), json!(resolution));
        }
        let head = serde_json::to_vec(&Value::Object(head)).map_err(internal)?;
        // The object without its closing brace, then the images.
        let mut pending = BytesMut::with_capacity(head.len() + 64);
        pending.put_slice(head.strip_suffix(b"}").unwrap_or(&head));
        pending.put_slice(if form.images.len() == 1 {
            b",\"image\":"
        } else {
            b",\"images\":["
        });
        let mut body = Vec::with_capacity(2 * form.images.len() + 1);
        for (i, image) in form.images.iter().enumerate() {
            if i > 0 {
                pending.put_slice(b",");
            }
            let mime = image.kind.unwrap_or(ImageKind::Png).mime();
            pending.put_slice(format!("{{\"url\":\"data:{mime};base64,").as_bytes());
            body.push(BodySegment::Bytes(pending.split().freeze()));
            body.push(BodySegment::Base64(image.range));
            pending.put_slice(b"\"}");
        }
        pending.put_slice(if form.images.len() == 1 { b"}" } else { b"]}" });
        body.push(BodySegment::Bytes(pending.freeze()));
        Ok(json_post(
            format!("{}/images/edits", target.provider.base_url.path),
            auth_header(target, "authorization")?,
            "application/json",
            request_id,
            body,
        ))
    }

    fn convert_response(
        &self,
        resp: &UpstreamResponse,
        cx: &ResponseContext<'_>,
    ) -> Result<UnifiedAnswer, GatewayError> {
        convert_images_response(resp, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::from_yaml_str_with_env;
    use crate::form::EditForm;
    use crate::form::FilePart;
    use crate::providers::test_support::build;
    use crate::route::Router;
    use crate::route::Target;
    use crate::spool::{Spool, SpoolRange};
    use base64::Engine;
    use bytes::Bytes;

    fn target() -> Target {
        let yaml = "providers:\n  - name: xai\n    kind: xai\n    keys:\n      - { name: k, value: xai-secret }\n";
        let cfg = from_yaml_str_with_env(yaml, &|_| None).unwrap();
        Router::new(&cfg).select("xai", "grok-imagine-image", 0.0).unwrap()
    }

    fn cx() -> ResponseContext<'static> {
        ResponseContext {
            provider: "xai",
            model_requested: "grok-imagine-image",
            model_deployment: "grok-imagine-image",
            latency_ms: 3,
            num_input_images: 1,
            created: crate::providers::test_support::CLOCK_SECS,
        }
    }

    /// A spool with three uploads (PNG, JPEG, WebP) and their parts.
    fn uploads() -> (Spool, Vec<Vec<u8>>, Vec<FilePart>) {
        let files = vec![
            b"\x89PNG\r\n\x1a\nfirst image \x00\xff".to_vec(),
            b"\xFF\xD8\xFF\xE0second".to_vec(),
            b"RIFF\0\0\0\0WEBPthird!".to_vec(),
        ];
        let kinds = [ImageKind::Png, ImageKind::Jpeg, ImageKind::Webp];
        let mut spool = Spool::new(1 << 16, None);
        let mut parts = Vec::new();
        let mut start = 0;
        for (f, kind) in files.iter().zip(kinds) {
            spool.append(Bytes::from(f.clone())).unwrap();
            parts.push(FilePart {
                field: "image[]".into(),
                filename: None,
                kind: Some(kind),
                declared_type: None,
                range: SpoolRange {
                    start,
                    len: f.len() as u64,
                },
            });
            start += f.len() as u64;
        }
        (spool, files, parts)
    }

    fn data_url(v: &Value) -> (String, Vec<u8>) {
        let url = v["url"].as_str().unwrap();
        let (head, b64) = url.split_once(";base64,").unwrap();
        (
            head.trim_start_matches("data:").to_string(),
            base64::engine::general_purpose::STANDARD.decode(b64).unwrap(),
        )
    }

    #[test]
    fn one_image_is_image_and_size_maps_to_ratio_and_resolution() {
        let (spool, files, parts) = uploads();
        let form = EditForm {
            model: "grok-imagine-image".into(),
            prompt: Some("make the car \"red\"".into()),
            images: vec![parts[0].clone()],
            size: Some("1536x1024".into()),
            seed: Some(3),
            negative_prompt: Some("x".into()),
            quality: Some("high".into()),
            ..Default::default()
        };
        let req = build(&XaiAdapter, &form, &target(), "rid").unwrap();
        assert_eq!(req.path, "/v1/images/edits");
        assert_eq!(req.header("authorization"), Some("Bearer xai-secret"));
        assert_eq!(req.header("content-type"), Some("application/json"));
        let body = req.render(&spool).unwrap();
        assert_eq!(body.len() as u64, req.content_length());
        let v: Value = serde_json::from_slice(&body).unwrap();
        let (mime, bytes) = data_url(&v["image"]);
        assert_eq!((mime.as_str(), bytes), ("image/png", files[0].clone()));
        v.as_object().unwrap().keys().for_each(|k| {
            assert!(
                [
                    "model",
                    "prompt",
                    "response_format",
                    "aspect_ratio",
                    "resolution",
                    "image"
                ]
                .contains(&k.as_str()),
                "{k}"
            )
        });
        assert_eq!(v["model"], "grok-imagine-image");
        assert_eq!(v["prompt"], "make the car \"red\"");
        assert_eq!(v["response_format"], "b64_json");
        assert_eq!(
            (v["aspect_ratio"].as_str(), v["resolution"].as_str()),
            (Some("3:2"), Some("2k"))
        );
        assert_eq!(size_fields(Some("1024x576")), Some(("16:9", "1k")));
        assert_eq!(size_fields(Some("auto")), None);
    }

    #[test]
    fn several_images_are_images_with_their_types() {
        let (spool, files, parts) = uploads();
        let form = EditForm {
            prompt: Some("combine".into()),
            images: parts,
            n: Some(2),
            response_format: Some("url".into()),
            ..Default::default()
        };
        let body = build(&XaiAdapter, &form, &target(), "r")
            .unwrap()
            .render(&spool)
            .unwrap();
        let v: Value = serde_json::from_slice(&body).unwrap();
        let images = v["images"].as_array().unwrap();
        assert_eq!(images.len(), 3);
        for (i, mime) in ["image/png", "image/jpeg", "image/webp"].iter().enumerate() {
            assert_eq!(data_url(&images[i]), (mime.to_string(), files[i].clone()));
        }
        assert_eq!(v["n"], 2);
        assert_eq!(v["response_format"], "url");
        assert!(v.get("image").is_none() && v.get("aspect_ratio").is_none());
    }

    #[test]
    fn answers_and_errors() {
        let ok = UpstreamResponse {
            retry_after: None,
            status: 200,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(br#"{"data":[{"url":"https://x.ai/tmp/1.png","revised_prompt":"r"}]}"#),
        };
        let v: Value = serde_json::from_slice(&XaiAdapter.convert_response(&ok, &cx()).unwrap().to_bytes()).unwrap();
        assert_eq!(v["data"][0]["url"], "https://x.ai/tmp/1.png");
        assert_eq!(v["data"][0]["index"], 0);
        assert_eq!(v["extra_fields"]["provider"], "xai");
        let err = UpstreamResponse {
            retry_after: None,
            status: 400,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(br#"{"code":"Client specified an invalid argument","error":"Too many images"}"#),
        };
        let e = XaiAdapter.convert_response(&err, &cx()).unwrap_err();
        assert_eq!(e.status(), 400);
        assert_eq!(e.to_json(&Default::default())["error"]["message"], "Too many images");
        let caps = XaiAdapter.capabilities("grok-imagine-image");
        assert!(!caps.mask && caps.url_output);
        assert_eq!(caps.max_images, 3);
    }
}
