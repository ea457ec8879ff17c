//! A kind whose adapter is being written (a placeholder that refuses every request with a 500
//! and declares no model family).

use super::capabilities::ModelFamily;
use super::{ProviderAdapter, ResponseContext, UpstreamRequest, UpstreamResponse};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::route::Target;
use bytes::Bytes;

/// The placeholder adapter of kind `.0`.
#[derive(Debug, Clone, Copy)]
pub struct Pending(pub &'static str);

impl ProviderAdapter for Pending {
    fn families(&self) -> &'static [ModelFamily] {
        &[]
    }

    fn build_request(
        &self,
        _form: &EditForm,
        _target: &Target,
        _request_id: &str,
    ) -> Result<UpstreamRequest, GatewayError> {
        Err(GatewayError::Internal(format!(
            "kind {} is not implemented yet",
            self.0
        )))
    }

    fn convert_response(&self, _resp: &UpstreamResponse, _cx: &ResponseContext<'_>) -> Result<Bytes, GatewayError> {
        Err(GatewayError::Internal(format!(
            "kind {} is not implemented yet",
            self.0
        )))
    }
}
