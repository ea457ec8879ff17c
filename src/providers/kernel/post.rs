//! Request heads: the JSON `POST` most adapters send, and the credential header a key is sent
//! in. Run while an adapter builds a request (and its follow-ups).

use crate::config::KeyAuth;
use crate::error::GatewayError;
use crate::providers::{BodySegment, UpstreamRequest};
use crate::route::Target;

/// A `POST` to `path` with the credential header `auth`, a body of `content_type`, the answer
/// type `accept` (`application/json`, or `text/event-stream` for streams), identity encoding
/// and the request id, and the body plan.
pub fn post(
    path: String,
    auth: (http::HeaderName, String),
    content_type: String,
    accept: &str,
    request_id: &str,
    body: Vec<BodySegment>,
) -> UpstreamRequest {
    UpstreamRequest {
        method: http::Method::POST,
        path,
        headers: vec![
            auth,
            (http::header::CONTENT_TYPE, content_type),
            (http::header::ACCEPT, accept.to_string()),
            (http::header::ACCEPT_ENCODING, "identity".to_string()),
            (http::HeaderName::from_static("x-request-id"), request_id.to_string()),
        ],
        body,
    }
}

/// A JSON [`post`]: `path`, the credential header `auth`, the answer type `accept`, and the
/// body plan.
pub fn json_post(
    path: String,
    auth: (http::HeaderName, String),
    accept: &str,
    request_id: &str,
    body: Vec<BodySegment>,
) -> UpstreamRequest {
    post(path, auth, "application/json".to_string(), accept, request_id, body)
}

/// The credential header for `target`'s key: `Authorization: Bearer …`, or the provider's
/// API-key header (`api_key_header`) when the key is configured with `auth: api_key`.
pub fn auth_header(target: &Target, api_key_header: &'static str) -> Result<(http::HeaderName, String), GatewayError> {
    let secret = target.credential()?;
    Ok(match target.key().auth {
        KeyAuth::Bearer => (http::header::AUTHORIZATION, format!("Bearer {secret}")),
        KeyAuth::ApiKey => (http::HeaderName::from_static(api_key_header), secret.to_string()),
    })
}
