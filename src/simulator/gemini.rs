//! The simulator's Gemini API (placeholder while it is being written).

use super::{error, SimAnswer, SimRequest, StreamSettings};

/// Answers `…/models/{model}:generateContent` and `…:streamGenerateContent?alt=sse`.
pub(super) fn handle(_req: &SimRequest, _settings: &StreamSettings) -> SimAnswer {
    SimAnswer::Whole(error(
        404,
        "invalid_request_error",
        "not_found",
        None,
        "not implemented",
    ))
}
