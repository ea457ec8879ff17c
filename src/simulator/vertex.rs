//! The simulator's Vertex AI Imagen `:predict` and fake OAuth token endpoint (placeholder while
//! it is being written).

use super::{error, SimAnswer, SimRequest};

/// Answers `…/models/{model}:predict`.
pub(super) fn handle(_req: &SimRequest) -> SimAnswer {
    SimAnswer::Whole(error(
        404,
        "invalid_request_error",
        "not_found",
        None,
        "not implemented",
    ))
}

/// Answers `POST /token`: a JWT-bearer grant for a service account.
pub(super) fn token(_req: &SimRequest) -> SimAnswer {
    SimAnswer::Whole(error(
        404,
        "invalid_request_error",
        "not_found",
        None,
        "not implemented",
    ))
}
