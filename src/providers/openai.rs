//! Kind `openai`: any OpenAI-compatible `images/edits` endpoint (OpenAI itself, the built-in
//! simulator, self-hosted servers speaking the same API).
//!
//! Request: a new multipart body with the provider prefix removed from `model`, small fields
//! first (so size-limited upstreams see `model` before the images), then the images (`image`
//! for one, `image[]` for several, each typed from its magic bytes with a matching file name),
//! the mask, and any unknown parts the client sent (OpenAI adds fields faster than gateways).
//! Gateway-only fields (`type`, `fallbacks`, `seed`, `negative_prompt`, `num_inference_steps`)
//! are not sent. Auth is the provider key as `Authorization: Bearer`.
//!
//! Response: OpenAI's `ImagesResponse`, kept field for field, with `data[].index` filled in and
//! Bifrost's `extra_fields` added. Errors keep OpenAI's status and `error` object.

use super::capabilities::{any_model, ModelFamily};
use super::kernel::images_api::{
    build_multipart, convert_images_response, images_api_mask_convention, multipart_encoder, IMAGES_API_CAPABILITIES,
};
use super::kernel::multipart::{boundary, multipart_head};
use super::kernel::post::auth_header;
use super::model_id::plain;
use super::{
    BuildScope, ProviderAdapter, RequestEncoder, ResponseContext, UnifiedAnswer, UpstreamRequest, UpstreamResponse,
};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::MaskConvention;
use crate::route::Target;

/// The adapter for kind `openai`.
#[derive(Debug, Clone, Copy, Default)]
pub struct OpenAiAdapter;

/// OpenAI's head: `{base}/images/edits` with a Bearer key.
fn head(target: &Target, request_id: &str, boundary: &str) -> Result<UpstreamRequest, GatewayError> {
    Ok(multipart_head(
        format!("{}/images/edits", target.provider.base_url.path),
        auth_header(target, "authorization")?,
        request_id,
        boundary,
    ))
}

static FAMILIES: [ModelFamily; 1] = [ModelFamily {
    name: "any (gpt-image-*, dall-e-2, compatible servers)",
    matches: any_model,
    capabilities: IMAGES_API_CAPABILITIES,
}];

impl ProviderAdapter for OpenAiAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    /// `name` or `owner/name` (self-hosted servers use Hugging Face ids), `:` allowed
    /// (fine-tuned `ft:…` ids).
    fn model_id_shape(&self, model: &str) -> Result<(), &'static str> {
        let segments: Vec<&str> = model.split('/').collect();
        (segments.len() <= 2 && segments.iter().all(|s| plain(s, b":")))
            .then_some(())
            .ok_or("expected name or owner/name of letters, digits, '.', '_', '-', ':'")
    }

    fn request_encoder(&self, target: &Target, request_id: &str, nonce: u128) -> Option<Box<dyn RequestEncoder>> {
        let boundary = boundary(nonce);
        let head = head(target, request_id, &boundary).ok()?;
        Some(multipart_encoder(head, boundary, &target.model))
    }

    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        let boundary = boundary(scope.nonce);
        let head = head(scope.target, scope.request_id, &boundary)?;
        build_multipart(scope.form, scope.mask, head, boundary, &scope.target.model)
    }

    /// OpenAI's alpha: an opaque mask (white = edit) is converted, an alpha one goes as
    /// uploaded.
    fn mask_convention(&self, form: &EditForm, _model: &str) -> Option<MaskConvention> {
        images_api_mask_convention(form)
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
    use crate::form::EditType;
    use crate::form::{EditForm, FilePart};
    use crate::imaging::ImageKind;
    use crate::providers::kernel::unified::extra_fields;
    use crate::providers::test_support::{build, openai_cx, render, success};
    use crate::route::Router;
    use crate::spool::{Spool, SpoolRange};
    use bytes::Bytes;
    use serde_json::Value;

    fn target(model: &str) -> Target {
        let yaml = "providers:\n  - name: openai\n    kind: openai\n    base_url: https://api.example.com/v1\n    keys:\n      - { name: k, value: sk-upstream }\n";
        let cfg = from_yaml_str_with_env(yaml, &|_| None).expect("config");
        Router::new(&cfg).select("openai", model, 0.0).expect("target")
    }

    fn part(field: &str, kind: ImageKind, start: u64, len: u64) -> FilePart {
        FilePart {
            field: field.into(),
            filename: Some("x".into()),
            kind: Some(kind),
            declared_type: Some("application/octet-stream".into()),
            range: SpoolRange { start, len },
        }
    }

    /// The build is pure: the same scope gives the same bytes (the boundary comes from
    /// `scope.nonce`), another nonce another boundary.
    #[test]
    fn same_scope_same_bytes() {
        let mut spool = Spool::new(64, None);
        spool
            .append(Bytes::from_static(b"\x89PNG\r\n\x1a\nimage-bytes"))
            .unwrap();
        let form = EditForm {
            provider: "openai".into(),
            model: "gpt-image-1".into(),
            prompt: Some("p".into()),
            images: vec![part("image", ImageKind::Png, 0, 19)],
            ..Default::default()
        };
        let t = target("gpt-image-1");
        let scope = |nonce: u128| BuildScope {
            form: &form,
            spool: &spool,
            mask: None,
            target: &t,
            request_id: "r",
            now: crate::providers::test_support::clock(),
            nonce,
        };
        let bytes = |req: &UpstreamRequest| (req.headers.clone(), req.render(&spool).unwrap());
        let (a, b) = (
            OpenAiAdapter.build(&scope(9)).unwrap(),
            OpenAiAdapter.build(&scope(9)).unwrap(),
        );
        assert_eq!(bytes(&a), bytes(&b));
        assert_eq!(
            a.header("content-type"),
            Some("multipart/form-data; boundary=refract-00000000000000000000000000000009")
        );
        let c = OpenAiAdapter.build(&scope(10)).unwrap();
        assert_ne!(a.header("content-type"), c.header("content-type"));
    }

    #[tokio::test]
    async fn one_image_with_mask_and_gateway_fields_dropped() {
        let mut spool = Spool::new(16, None);
        spool
            .append(Bytes::from_static(b"\x89PNG\r\n\x1a\nimage-bytes"))
            .unwrap();
        spool
            .append(Bytes::from_static(b"\x89PNG\r\n\x1a\nmask-bytes"))
            .unwrap();
        let form = EditForm {
            provider: "openai".into(),
            model: "gpt-image-1".into(),
            prompt: Some("make it blue".into()),
            images: vec![part("image[]", ImageKind::Png, 0, 19)],
            mask: Some(part("mask", ImageKind::Png, 19, 18)),
            edit_type: Some(EditType::Inpainting),
            n: Some(2),
            size: Some("1024x1024".into()),
            seed: Some(7),
            negative_prompt: Some("no".into()),
            num_inference_steps: Some(3),
            extra_text: vec![("safety_identifier".into(), "s\"1".into())],
            ..Default::default()
        };
        let req = build(&OpenAiAdapter, &form, &target("gpt-image-1"), "rid-1").unwrap();
        assert_eq!(req.path, "/v1/images/edits");
        let auth = &req
            .headers
            .iter()
            .find(|(k, _)| k == http::header::AUTHORIZATION)
            .unwrap()
            .1;
        assert_eq!(auth, "Bearer sk-upstream");
        let parts = render(&req, &spool).await;
        let names: Vec<&str> = parts.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(
            names,
            ["model", "prompt", "n", "size", "safety_identifier", "image", "mask"]
        );
        assert_eq!(parts[0].3, b"gpt-image-1");
        assert_eq!(parts[4].3, b"s\"1");
        assert_eq!(parts[5].1.as_deref(), Some("image.png"));
        assert_eq!(parts[5].2.as_deref(), Some("image/png"));
        assert_eq!(parts[5].3, b"\x89PNG\r\n\x1a\nimage-bytes");
        assert_eq!(parts[6].3, b"\x89PNG\r\n\x1a\nmask-bytes");
    }

    /// OpenAI's convention: an opaque mask (white = edit; here an RGBA PNG without a
    /// transparent pixel) is sent converted, its white pixels transparent; an alpha mask goes
    /// as uploaded.
    #[tokio::test]
    async fn an_opaque_mask_is_sent_as_openais_alpha_mask() {
        use crate::imaging::{decode_png, encode_png, solid};
        use crate::providers::test_support::{build_from_spool, form, spool_with};
        let image = encode_png(&solid(2, 1, [9, 9, 9, 255])).unwrap();
        let mut white = solid(2, 1, [0, 0, 0, 255]);
        white.pixels[..3].copy_from_slice(&[255, 255, 255]);
        let mut alpha = solid(2, 1, [0, 0, 0, 255]);
        alpha.pixels[3] = 0;
        let alpha = encode_png(&alpha).unwrap();
        let (spool, parts) = spool_with(&[
            ("image", ImageKind::Png, image),
            ("mask", ImageKind::Png, encode_png(&white).unwrap()),
            ("mask", ImageKind::Png, alpha.clone()),
        ]);
        let t = target("gpt-image-1");
        let mut sent = Vec::new();
        for mask in [&parts[1], &parts[2]] {
            let f = form("gpt-image-1", vec![parts[0].clone()], Some(mask.clone()));
            let req = build_from_spool(&OpenAiAdapter, &f, &spool, &t, "r").unwrap();
            let rendered = render(&req, &spool).await;
            let part = rendered.into_iter().find(|p| p.0 == "mask").unwrap();
            assert_eq!(
                (part.1.as_deref(), part.2.as_deref()),
                (Some("mask.png"), Some("image/png"))
            );
            sent.push(part.3);
        }
        let converted = decode_png(&sent[0]).unwrap();
        assert_eq!(converted.pixel(0, 0), [0, 0, 0, 0], "white: edit, transparent");
        assert_eq!(converted.pixel(1, 0), [0, 0, 0, 255], "black: keep, opaque");
        assert_eq!(sent[1], alpha, "as uploaded");
    }

    #[tokio::test]
    async fn several_images_use_the_array_name() {
        let mut spool = Spool::new(1024, None);
        spool
            .append(Bytes::from_static(b"\xFF\xD8\xFFjpegRIFF\0\0\0\0WEBPwebp"))
            .unwrap();
        let form = EditForm {
            provider: "openai".into(),
            model: "m".into(),
            prompt: Some("p".into()),
            images: vec![
                part("image", ImageKind::Jpeg, 0, 7),
                part("image", ImageKind::Webp, 7, 16),
            ],
            stream: false,
            ..Default::default()
        };
        let parts = render(&build(&OpenAiAdapter, &form, &target("m"), "r").unwrap(), &spool).await;
        assert_eq!(parts[2].0, "image[]");
        assert_eq!(parts[2].1.as_deref(), Some("image_0.jpg"));
        assert_eq!(parts[2].2.as_deref(), Some("image/jpeg"));
        assert_eq!(parts[3].1.as_deref(), Some("image_1.webp"));
        assert_eq!(parts[3].3, b"RIFF\0\0\0\0WEBPwebp");
    }

    fn cx() -> ResponseContext<'static> {
        openai_cx()
    }

    #[test]
    fn success_gets_index_and_extra_fields() {
        let resp = UpstreamResponse {
            retry_after: None,
            status: 200,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(
                br#"{"created":1,"data":[{"b64_json":"AAA"},{"b64_json":"BBB"}],"usage":{"input_tokens":1,"output_tokens":2,"total_tokens":3},"future_field":true}"#,
            ),
        };
        let out: Value =
            serde_json::from_slice(&OpenAiAdapter.convert_response(&resp, &cx()).unwrap().to_bytes()).unwrap();
        assert_eq!(out["data"][1]["index"], 1);
        assert_eq!(out["data"][1]["b64_json"], "BBB");
        assert_eq!(out["future_field"], true);
        assert_eq!(out["usage"]["num_input_images"], 2);
        assert_eq!(out["extra_fields"]["request_type"], "image_edit");
        assert_eq!(out["extra_fields"]["provider"], "openai");
        assert_eq!(out["extra_fields"]["latency"], 12);
    }

    /// The converted answer, byte for byte: the provider's members in order and as sent,
    /// `index` added, `usage.num_input_images` added, `extra_fields` replaced and last.
    #[test]
    fn converted_answer_bytes_are_exact() {
        let image = format!("\"{}\"", "QUJD".repeat(super::super::answer::SPLICE_MIN_BYTES));
        let body = format!(
            r#"{{"created":1,"extra_fields":{{"old":true}},"data":[{{"b64_json":{image},"revised_prompt":"a \"cat\""}},{{"url":"u","index":7}}],"usage":{{"total_tokens":3}},"z":[1, 2]}}"#
        );
        let resp = success(body);
        let answer = OpenAiAdapter.convert_response(&resp, &cx()).unwrap();
        let extra = serde_json::to_string(&extra_fields(&cx())).unwrap();
        let expected = format!(
            r#"{{"created":1,"data":[{{"b64_json":{image},"revised_prompt":"a \"cat\"","index":0}},{{"url":"u","index":7}}],"usage":{{"total_tokens":3,"num_input_images":2}},"z":[1, 2],"extra_fields":{extra}}}"#
        );
        assert_eq!(String::from_utf8(answer.to_bytes().to_vec()).unwrap(), expected);
        assert_eq!(answer.len(), expected.len());
        // The image is the provider's own bytes, not a copy.
        assert_eq!(answer.shared_len(), image.len());
        let at = resp
            .body
            .windows(image.len())
            .position(|w| w == image.as_bytes())
            .unwrap();
        let shared = answer.pieces().find(|p| p.len() == image.len()).unwrap();
        assert_eq!(shared.as_ptr(), resp.body[at..].as_ptr());
    }

    #[test]
    fn errors_keep_status_and_object() {
        let resp = UpstreamResponse {
            retry_after: None,
            status: 400,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(
                br#"{"error":{"message":"Invalid value for 'size'","type":"invalid_request_error","param":"size","code":"invalid_value"}}"#,
            ),
        };
        let e = OpenAiAdapter.convert_response(&resp, &cx()).unwrap_err();
        assert_eq!(e.status(), 400);
        let v = e.to_json(&Default::default());
        assert_eq!(v["is_bifrost_error"], false);
        assert_eq!(v["error"]["param"], "size");
        assert_eq!(v["error"]["code"], "invalid_value");

        let html = UpstreamResponse {
            retry_after: None,
            status: 503,
            content_type: Some("text/html".into()),
            body: Bytes::from_static(b"<html>\nService Unavailable\n</html>"),
        };
        let v = OpenAiAdapter
            .convert_response(&html, &cx())
            .unwrap_err()
            .to_json(&Default::default());
        assert_eq!(v["status_code"], 503);
        assert!(v["error"]["message"].as_str().unwrap().contains("Service Unavailable"));
    }

    #[test]
    fn malformed_success_is_502() {
        for body in [&b"not json"[..], b"[1,2]", b"{\"created\":1}"] {
            let resp = UpstreamResponse {
                retry_after: None,
                status: 200,
                content_type: None,
                body: Bytes::copy_from_slice(body),
            };
            assert_eq!(OpenAiAdapter.convert_response(&resp, &cx()).unwrap_err().status(), 502);
        }
    }
}
