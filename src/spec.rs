//! What the image-edit request spec fixes that both the configuration and the form parser
//! use: the bound on `n`, and a model reference as a fallback names one. Kept below both, so
//! that `config` (a model rule's `fallbacks`, `repeat_concurrency`'s bound) does not import
//! the form parser, which itself reads the config's limits.

/// Largest `n` a request may ask for (the spec's bound).
pub const MAX_N: u32 = 10;

/// A fallback candidate, `provider/model`: from the request's `fallbacks` field, or from a
/// model rule's `fallbacks` in the config.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fallback {
    /// Provider name.
    pub provider: String,
    /// Bare model name.
    pub model: String,
}
