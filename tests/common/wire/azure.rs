//! Kind `azure`: the OpenAI body (`super::openai`) on the deployments API
//! (`/openai/deployments/{deployment}/images/edits?api-version=…`) with the key in `api-key`.

use super::openai::{answer, assert_openai_body, event_stream};
use super::{assert_wire_headers, Abilities, Capability, Refusal, Sent, Streams, UpstreamError, Wire};
use crate::common::{MockUpstream, Recorded, Reply};
use refract::config::ProviderKind;
use serde_json::json;

/// The provider key of the conformance `azure` provider.
pub const KEY: &str = "azure-conformance-KEY-0123456789";

/// Checks the framing and credentials of an Azure request (`auth` is the one credential
/// header and its value); returns its multipart parts.
pub fn check_azure_request(rec: &Recorded, path: &str, auth: (&str, &str)) -> Vec<crate::common::Part> {
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path, path);
    assert_eq!(rec.header(auth.0).as_deref(), Some(auth.1));
    let other = if auth.0 == "api-key" {
        "authorization"
    } else {
        "api-key"
    };
    assert_eq!(rec.header(other), None, "only one credential header");
    for (name, value) in &rec.headers {
        assert!(
            !String::from_utf8_lossy(value).contains("sk-bf-"),
            "virtual key leaked in {name}"
        );
    }
    if let Some(len) = rec.header("content-length") {
        assert_eq!(len.parse::<usize>().expect("a length"), rec.body.len());
    }
    rec.parts()
}

/// Kind `azure`, deployments API, the deployment named as the model.
pub struct Azure {
    model: String,
}

impl Azure {
    /// The wire for `model`.
    pub fn new(model: &str) -> Self {
        Azure { model: model.into() }
    }
}

impl Wire for Azure {
    fn kind(&self) -> ProviderKind {
        ProviderKind::Azure
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        format!(
            "  - name: {name}\n    kind: azure\n    base_url: http://{}\n    keys:\n      - {{name: k, value: {KEY}}}\n",
            mock.addr
        )
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        mock.push(Reply::json(200, &answer(images)));
    }

    fn serve_stream(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        mock.push(event_stream(images));
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(recs.len(), 1, "one upstream request");
        let rec = &recs[0];
        let path = format!(
            "/openai/deployments/{}/images/edits?api-version=2025-04-01-preview",
            sent.model
        );
        check_azure_request(rec, &path, ("api-key", KEY));
        let host = mock.addr.to_string();
        assert_wire_headers(
            rec,
            "application/json",
            &[
                ("host", Some(&host)),
                ("api-key", Some(KEY)),
                ("content-type", None),
                ("content-length", None),
            ],
        );
        assert_openai_body(rec, sent, &sent.model);
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Served,
            mask: Capability::Served,
            streams: Streams::NativePartials,
            refusal: Refusal {
                field: "type",
                value: "outpainting",
                param: "type",
            },
        }
    }

    fn serve_error(&self, mock: &MockUpstream) -> UpstreamError {
        mock.push(Reply::json(
            400,
            &json!({"error": {"code": "contentFilter", "message": "Your request was filtered", "param": "prompt", "type": null,
                "inner_error": {"code": "ResponsibleAIPolicyViolation"}}}),
        ));
        UpstreamError {
            status: 400,
            message: "Your request was filtered".into(),
        }
    }
}
