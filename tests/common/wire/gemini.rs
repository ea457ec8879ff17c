//! Gemini image models (kind `gemini`, and kind `vertex` on Vertex's paths):
//! `POST {model path}:generateContent` (or `:streamGenerateContent?alt=sse`), JSON with every
//! image as an `inlineData` part then the prompt; no mask; native streams of completed images.

use super::google::{GoogleHost, GEMINI_KEY};
use super::{b64, json_body, unb64, Abilities, Capability, Refusal, Sent, Streams, UpstreamError, Wire};
use crate::common::{MockUpstream, Recorded, Reply};
use refract::config::ProviderKind;
use serde_json::{json, Value};
use std::time::Duration;

/// A GenerateContentResponse with one candidate per image (base64 texts).
pub fn gemini_answer(model: &str, images: &[&str]) -> Value {
    let candidates: Vec<Value> = images
        .iter()
        .enumerate()
        .map(|(i, data)| {
            json!({"content":{"role":"model","parts":[{"text":"Here you go"},{"inlineData":{"mimeType":"image/png","data":data}}]},"finishReason":"STOP","index":i})
        })
        .collect();
    json!({"candidates": candidates,
           "usageMetadata":{"promptTokenCount":265,"candidatesTokenCount":1290,"totalTokenCount":1555,
              "promptTokensDetails":[{"modality":"TEXT","tokenCount":7},{"modality":"IMAGE","tokenCount":258}],
              "candidatesTokensDetails":[{"modality":"IMAGE","tokenCount":1290}]},
           "modelVersion": model})
}

/// Checks what Gemini requires of every request (`path` under the mock, the key header, no
/// Bearer, JSON of `contents` and `generationConfig`, one `inlineData` part per upload byte for
/// byte, then the prompt) and returns the body as JSON.
pub fn check_gemini_request(rec: &Recorded, mock: &MockUpstream, path: &str, key: &str, uploads: &[&[u8]]) -> Value {
    assert_eq!(rec.method, "POST");
    assert_eq!(rec.path, path);
    assert_eq!(rec.header("host"), Some(mock.addr.to_string()));
    assert_eq!(rec.header("x-goog-api-key").as_deref(), Some(key));
    assert_eq!(rec.header("authorization"), None, "no Bearer on the Gemini API");
    assert_eq!(rec.header("x-bf-vk"), None);
    assert_eq!(rec.header("content-type").as_deref(), Some("application/json"));
    assert_eq!(
        rec.header("content-length")
            .map(|l| l.parse::<usize>().expect("a length")),
        Some(rec.body.len())
    );
    assert!(
        !rec.body.windows(6).any(|w| w == b"sk-bf-"),
        "the body carries a virtual key"
    );
    let v = json_body(rec);
    let keys: Vec<&String> = v.as_object().expect("an object").keys().collect();
    assert_eq!(keys, ["contents", "generationConfig"]);
    let contents = v["contents"].as_array().expect("contents");
    assert_eq!(contents.len(), 1);
    assert_eq!(contents[0]["role"], "user");
    let parts = contents[0]["parts"].as_array().expect("parts");
    assert_eq!(parts.len(), uploads.len() + 1, "one part per image, then the prompt");
    for (part, upload) in parts.iter().zip(uploads) {
        let blob = part["inlineData"].as_object().expect("inlineData");
        assert_eq!(blob["mimeType"], "image/png");
        assert!(
            unb64(blob["data"].as_str().expect("data")) == *upload,
            "an inlined image differs from the upload"
        );
    }
    assert!(parts.last().expect("a part")["text"].is_string());
    v
}

/// A Gemini image model on `host`.
pub struct Gemini {
    model: String,
    host: GoogleHost,
}

impl Gemini {
    /// The wire for `model` on `host`.
    pub fn new(model: &str, host: GoogleHost) -> Self {
        assert!(
            model.starts_with("gemini-"),
            "the gemini wire describes Gemini image models, not {model}"
        );
        Gemini {
            model: model.into(),
            host,
        }
    }
}

impl Wire for Gemini {
    fn kind(&self) -> ProviderKind {
        self.host.kind()
    }

    fn model(&self) -> &str {
        &self.model
    }

    fn provider(&self, name: &str, mock: &MockUpstream) -> String {
        self.host.provider(name, mock)
    }

    fn serve(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        let texts: Vec<String> = images.iter().map(|p| b64(p)).collect();
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        mock.push(Reply::json(200, &gemini_answer(&self.model, &refs)));
    }

    fn serve_stream(&self, mock: &MockUpstream, images: &[Vec<u8>]) {
        let mut body = format!(
            "data: {}\r\n\r\n",
            json!({"candidates":[{"content":{"role":"model","parts":[{"text":"Here you go"}]},"index":0}],"usageMetadata":{"promptTokenCount":265,"totalTokenCount":265}})
        );
        for (i, png) in images.iter().enumerate() {
            body += &format!(
                "data: {}\r\n\r\n",
                json!({"candidates":[{"content":{"role":"model","parts":[{"inlineData":{"mimeType":"image/png","data":b64(png)}}]},"finishReason":"STOP","index":i}],
                       "usageMetadata":{"promptTokenCount":265,"candidatesTokenCount":1290,"totalTokenCount":1555}})
            );
        }
        mock.push(Reply::Chunked {
            status: 200,
            content_type: "text/event-stream".into(),
            body: body.into_bytes(),
            piece: 13,
            pause: Duration::ZERO,
        });
    }

    fn check(&self, mock: &MockUpstream, recs: &[Recorded], sent: &Sent) {
        assert_eq!(recs.len(), 1, "one upstream request");
        let rec = &recs[0];
        let method = if sent.stream {
            "streamGenerateContent?alt=sse"
        } else {
            "generateContent"
        };
        let path = format!("{}:{method}", self.host.model_path(&sent.model));
        let uploads: Vec<&[u8]> = sent.images.iter().map(Vec::as_slice).collect();
        if self.host == GoogleHost::GeminiApi {
            check_gemini_request(rec, mock, &path, GEMINI_KEY, &uploads);
        }
        assert_eq!((rec.method.as_str(), rec.path.as_str()), ("POST", path.as_str()));
        let v = json_body(rec);
        let accept = if sent.stream {
            "text/event-stream"
        } else {
            "application/json"
        };
        self.host.assert_headers(rec, mock, accept);
        let mut parts: Vec<Value> = sent
            .images
            .iter()
            .map(|p| json!({"inlineData": {"mimeType": "image/png", "data": b64(p)}}))
            .collect();
        parts.push(json!({"text": sent.prompt}));
        assert_eq!(
            v,
            json!({"contents": [{"role": "user", "parts": parts}],
                "generationConfig": {"responseModalities": ["TEXT", "IMAGE"], "candidateCount": 1}})
        );
    }

    fn abilities(&self) -> Abilities {
        Abilities {
            multi_image: Capability::Served,
            mask: Capability::Refused { param: "mask" },
            streams: Streams::NativeCompleted,
            refusal: Refusal {
                field: "type",
                value: "inpainting",
                param: "type",
            },
        }
    }

    fn serve_error(&self, mock: &MockUpstream) -> UpstreamError {
        mock.push(Reply::json(
            400,
            &json!({"error": {"code": 400, "message": "API key not valid. Please pass a valid API key.",
                "status": "INVALID_ARGUMENT"}}),
        ));
        UpstreamError {
            status: 400,
            message: "API key not valid. Please pass a valid API key.".into(),
        }
    }
}
