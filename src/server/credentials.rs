//! Credentials that must be obtained before a request is built: OAuth access tokens for
//! Google service-account keys (placeholder while it is being written).

use crate::config::Credential;
use crate::error::GatewayError;
use crate::route::Target;

/// Obtains and caches access tokens.
#[derive(Debug, Default)]
pub struct Credentials {}

impl Credentials {
    /// A new, empty cache.
    pub fn new() -> Self {
        Credentials {}
    }

    /// Fills `target.access_token` when its key needs one.
    pub async fn prepare(&self, target: Target) -> Result<Target, GatewayError> {
        match &target.key().credential {
            Credential::Static(_) => Ok(target),
            Credential::ServiceAccount(_) => Err(GatewayError::Internal(
                "service accounts are not implemented yet".into(),
            )),
        }
    }
}
