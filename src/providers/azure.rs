//! Kind `azure`: Azure OpenAI. The same multipart API as OpenAI (the body is built by
//! [`super::kernel::images_api`]), with Azure's paths and auth:
//!
//! - Deployments API (a `base_url` without a path, e.g. `https://res.openai.azure.com`):
//!   `POST {base}/openai/deployments/{deployment}/images/edits?api-version={api_version}`, where
//!   the deployment is the model's entry in `deployments` (else the model name itself) and
//!   `api_version` defaults to [`DEFAULT_API_VERSION`].
//! - v1 API (a `base_url` ending in `/openai/v1`): `POST {base}/images/edits`, the deployment
//!   in the `model` part.
//!
//! Auth: the key in the `api-key` header (`auth: api_key`, the default), or
//! `Authorization: Bearer` for Entra ID tokens (`auth: bearer`). Bifrost sends keys as Bearer
//! on the deployments API, which Azure refuses; refract does not.
//!
//! Answers and errors are OpenAI's; Azure's content-filter details (`content_filter_results`,
//! `prompt_filter_results`, `error.inner_error`) are kept as they come.

use super::capabilities::{any_model, ModelFamily};
use super::kernel::images_api::{
    build_multipart, convert_images_response, images_api_mask_convention, multipart_encoder, IMAGES_API_CAPABILITIES,
};
use super::kernel::multipart::{boundary, multipart_head};
use super::kernel::percent::percent_encode_segment;
use super::kernel::post::auth_header;
use super::model_id::one_name;
use super::{
    BuildScope, ProviderAdapter, RequestEncoder, ResponseContext, UnifiedAnswer, UpstreamRequest, UpstreamResponse,
};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::MaskConvention;
use crate::route::Target;

/// `api-version` when the config gives none.
pub const DEFAULT_API_VERSION: &str = "2025-04-01-preview";

/// The adapter for kind `azure`.
#[derive(Debug, Clone, Copy, Default)]
pub struct AzureAdapter;

static FAMILIES: [ModelFamily; 1] = [ModelFamily {
    name: "any deployment (gpt-image-*, dall-e-2, FLUX.1-Kontext-pro)",
    matches: any_model,
    capabilities: IMAGES_API_CAPABILITIES,
}];

/// The deployment serving `target`'s model.
fn deployment(target: &Target) -> &str {
    target.provider.options.deployment(&target.model)
}

/// The head for `target`: the deployments or the v1 path, with Azure's auth header.
fn head(target: &Target, request_id: &str, boundary: &str) -> Result<UpstreamRequest, GatewayError> {
    let base = &target.provider.base_url.path;
    let path = if base.ends_with("/openai/v1") {
        format!("{base}/images/edits")
    } else {
        let version = target
            .provider
            .options
            .api_version
            .as_deref()
            .unwrap_or(DEFAULT_API_VERSION);
        format!(
            "{base}/openai/deployments/{}/images/edits?api-version={version}",
            percent_encode_segment(deployment(target))
        )
    };
    Ok(multipart_head(
        path,
        auth_header(target, "api-key")?,
        request_id,
        boundary,
    ))
}

impl ProviderAdapter for AzureAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &FAMILIES
    }

    /// One deployment or model name.
    fn model_id_shape(&self, model: &str) -> Result<(), &'static str> {
        one_name(model).map_err(|_| "expected a deployment or model name of letters, digits, '.', '_', '-'")
    }

    fn request_encoder(&self, target: &Target, request_id: &str, nonce: u128) -> Option<Box<dyn RequestEncoder>> {
        let boundary = boundary(nonce);
        let head = head(target, request_id, &boundary).ok()?;
        Some(multipart_encoder(head, boundary, deployment(target)))
    }

    fn build(&self, scope: &BuildScope<'_>) -> Result<UpstreamRequest, GatewayError> {
        let boundary = boundary(scope.nonce);
        let head = head(scope.target, scope.request_id, &boundary)?;
        build_multipart(scope.form, scope.mask, head, boundary, deployment(scope.target))
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
    use crate::form::EditForm;
    use crate::providers::test_support::build;
    use crate::route::Router;
    use bytes::Bytes;

    fn target(provider_yaml: &str, model: &str) -> Target {
        let yaml = format!("providers:\n  - name: az\n    kind: azure\n{provider_yaml}");
        let cfg = from_yaml_str_with_env(&yaml, &|_| None).unwrap_or_else(|e| panic!("{e}"));
        Router::new(&cfg).select("az", model, 0.0).unwrap()
    }

    fn header<'a>(req: &'a UpstreamRequest, name: &str) -> Option<&'a str> {
        req.headers
            .iter()
            .find(|(n, _)| n.as_str() == name)
            .map(|(_, v)| v.as_str())
    }

    #[test]
    fn deployments_api_path_and_api_key_header() {
        let t = target(
            "    base_url: https://res.openai.azure.com\n    api_version: 2024-02-01\n    deployments: { gpt-image-1: my deploy }\n    keys: [{ name: k, value: azkey }]\n",
            "gpt-image-1",
        );
        let req = build(&AzureAdapter, &EditForm::default(), &t, "r1").unwrap();
        assert_eq!(
            req.path,
            "/openai/deployments/my%20deploy/images/edits?api-version=2024-02-01"
        );
        assert_eq!(header(&req, "api-key"), Some("azkey"));
        assert_eq!(
            header(&req, "authorization"),
            None,
            "no Bearer on the deployments API (Bifrost's bug)"
        );
        // The model part carries the deployment.
        let body: Vec<u8> = req
            .body
            .iter()
            .filter_map(|s| match s {
                super::super::BodySegment::Bytes(b) => Some(b.to_vec()),
                _ => None,
            })
            .flatten()
            .collect();
        assert!(String::from_utf8_lossy(&body).contains("name=\"model\"\r\n\r\nmy deploy\r\n"));
        // Unlisted model: its own deployment, default api-version.
        let t = target(
            "    base_url: https://res.openai.azure.com\n    keys: [{ name: k, value: azkey }]\n",
            "dall-e-2",
        );
        let req = build(&AzureAdapter, &EditForm::default(), &t, "r1").unwrap();
        assert_eq!(
            req.path,
            format!("/openai/deployments/dall-e-2/images/edits?api-version={DEFAULT_API_VERSION}")
        );
    }

    #[test]
    fn v1_api_and_entra_bearer() {
        let t = target(
            "    base_url: https://res.openai.azure.com/openai/v1\n    keys: [{ name: k, value: entra-token, auth: bearer }]\n",
            "gpt-image-1",
        );
        let req = build(&AzureAdapter, &EditForm::default(), &t, "r1").unwrap();
        assert_eq!(req.path, "/openai/v1/images/edits");
        assert_eq!(header(&req, "authorization"), Some("Bearer entra-token"));
        assert_eq!(header(&req, "api-key"), None);
        let enc = AzureAdapter.request_encoder(&t, "r1", 7).unwrap();
        assert_eq!(enc.head().path, "/openai/v1/images/edits");
    }

    #[test]
    fn content_filter_details_are_kept_in_errors() {
        let body = br#"{"error":{"code":"contentFilter","message":"blocked","param":"prompt","type":null,"inner_error":{"code":"ResponsibleAIPolicyViolation","content_filter_results":{"violence":{"filtered":true,"severity":"high"}}}}}"#;
        let resp = UpstreamResponse {
            retry_after: None,
            status: 400,
            content_type: Some("application/json".into()),
            body: Bytes::from_static(body),
        };
        let cx = ResponseContext {
            provider: "az",
            model_requested: "gpt-image-1",
            model_deployment: "d",
            latency_ms: 1,
            num_input_images: 1,
            created: crate::providers::test_support::CLOCK_SECS,
        };
        let e = AzureAdapter.convert_response(&resp, &cx).unwrap_err();
        assert_eq!(e.status(), 400);
        let json = e.to_json(&crate::error::ErrorContext::default());
        assert_eq!(json["error"]["code"], "contentFilter");
        assert_eq!(
            json["error"]["inner_error"]["content_filter_results"]["violence"]["filtered"],
            true
        );
    }
}
