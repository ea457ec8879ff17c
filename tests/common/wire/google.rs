//! Where a Google model is served: the Gemini Developer API (kind `gemini`: `{base}/models/
//! {model}`, the key in `x-goog-api-key`) or Vertex AI (kind `vertex`: `{base}/projects/{p}/
//! locations/{l}/publishers/google/models/{model}`, a Bearer token). Both kinds serve Gemini
//! image models (`super::gemini`) and Imagen (`super::vertex`).

use crate::common::MockUpstream;
use refract::config::ProviderKind;

/// The API key of the conformance `gemini` provider.
pub const GEMINI_KEY: &str = "AIza-gemini-conformance-KEY";
/// The static OAuth token of the conformance `vertex` provider.
pub const VERTEX_TOKEN: &str = "ya29.conformance-static-token";

/// A Google API a model is reached through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GoogleHost {
    /// Kind `gemini`, `base_url` the mock's `/v1beta`.
    GeminiApi,
    /// Kind `vertex`, project `proj-1` in `us-central1`, `base_url` the mock's `/v1`.
    Vertex,
}

impl GoogleHost {
    /// The host of `kind`.
    pub fn of(kind: ProviderKind) -> Self {
        match kind {
            ProviderKind::Gemini => GoogleHost::GeminiApi,
            ProviderKind::Vertex => GoogleHost::Vertex,
            other => panic!("{other} is not a Google kind"),
        }
    }

    /// The kind.
    pub fn kind(self) -> ProviderKind {
        match self {
            GoogleHost::GeminiApi => ProviderKind::Gemini,
            GoogleHost::Vertex => ProviderKind::Vertex,
        }
    }

    /// The `providers:` entry for `name` sending to `mock`.
    pub fn provider(self, name: &str, mock: &MockUpstream) -> String {
        match self {
            GoogleHost::GeminiApi => format!(
                "  - name: {name}\n    kind: gemini\n    base_url: http://{}/v1beta\n    keys:\n      - {{name: g, value: {GEMINI_KEY}}}\n",
                mock.addr
            ),
            GoogleHost::Vertex => format!(
                "  - name: {name}\n    kind: vertex\n    project: proj-1\n    location: us-central1\n    base_url: {}\n    keys:\n      - {{name: t, value: {VERTEX_TOKEN}}}\n",
                mock.base_url()
            ),
        }
    }

    /// The path of `model` (the method, e.g. `:predict`, goes after it).
    pub fn model_path(self, model: &str) -> String {
        match self {
            GoogleHost::GeminiApi => format!("/v1beta/models/{model}"),
            GoogleHost::Vertex => format!("/v1/projects/proj-1/locations/us-central1/publishers/google/models/{model}"),
        }
    }

    /// The credential header and its value.
    pub fn credential(self) -> (&'static str, String) {
        match self {
            GoogleHost::GeminiApi => ("x-goog-api-key", GEMINI_KEY.to_string()),
            GoogleHost::Vertex => ("authorization", format!("Bearer {VERTEX_TOKEN}")),
        }
    }

    /// Asserts the exact headers of a JSON request to this host (`accept` as the method asks).
    pub fn assert_headers(self, rec: &crate::common::Recorded, mock: &MockUpstream, accept: &str) {
        let host = mock.addr.to_string();
        let (name, value) = self.credential();
        super::assert_wire_headers(
            rec,
            accept,
            &[
                ("host", Some(&host)),
                (name, Some(&value)),
                ("content-type", Some("application/json")),
                ("content-length", None),
            ],
        );
    }
}
