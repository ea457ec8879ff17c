//! Kind `vertex` (placeholder while it is being written).

use super::capabilities::ModelFamily;
use super::{ProviderAdapter, ResponseContext, UpstreamRequest, UpstreamResponse};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::route::Target;
use bytes::Bytes;

/// The adapter for kind `vertex`.
#[derive(Debug, Clone, Copy, Default)]
pub struct VertexAdapter;

impl ProviderAdapter for VertexAdapter {
    fn families(&self) -> &'static [ModelFamily] {
        &[]
    }

    fn build_request(
        &self,
        _form: &EditForm,
        _target: &Target,
        _request_id: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        Err(GatewayError::Internal("kind vertex is not implemented yet".into()))
    }

    fn convert_response(&self, _resp: &UpstreamResponse, _cx: &ResponseContext<'_>) -> Result<Bytes, GatewayError> {
        Err(GatewayError::Internal("kind vertex is not implemented yet".into()))
    }
}
