//! The provider conformance suite: one macro, [`conformance!`], stamps the same end-to-end
//! cases on every provider kind (in the spirit of TensorZero's per-provider test macro). Each
//! case starts a gateway in this process with one provider of the kind under test, `subject`,
//! in front of a strict mock upstream described by the kind's [`Wire`]
//! (`tests/common/wire/`), which checks every byte the gateway sends.
//!
//! Cases: a basic edit (one image and a prompt: Bifrost's answer, and exactly the wire's
//! request); two images; a mask, in OpenAI's convention and white = edit (each converted to
//! the kind's convention, the same edit area; an alpha mask to an alpha kind as sent); a refused capability
//! (a 400 before any upstream connection); `stream=true` (native or synthesized, ending
//! well); an upstream error kept (status and message in Bifrost's error shape); a fallback to
//! the kind from a failing primary of another kind; `response_format=url` with the provider set
//! to `rehost_urls` (asked for base64, the image stored in a temp directory and fetched back
//! through the gateway's signed file URL). A kind whose model cannot take two images or a mask
//! gets the refusal as its expected answer.
//!
//! Adding a provider kind: write its `Wire` in `tests/common/wire/`, return it from
//! `wire::for_kind`, and add one line at the bottom of this file.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "../common/mod.rs"]
mod common;

use common::wire::{for_kind, result_png, second_png, unb64, Capability, Sent, Streams, Wire};
use common::*;
use refract::codec::sse::SseDecoder;
use refract::config::ProviderKind as Kind;
use serde_json::{json, Value};

/// The name of the provider under test in every case's config.
const SUBJECT: &str = "subject";
/// The name of the failing primary in the fallback case.
const FAILING: &str = "failing";

/// A gateway with provider `subject` of the wire's kind in front of its own mock.
struct Fixture {
    wire: Box<dyn Wire>,
    mock: MockUpstream,
    gw: Gateway,
}

impl Fixture {
    /// Starts the mock and the gateway; `more` adds providers (each sending to its own mock).
    fn start(wire: Box<dyn Wire>, more: &str) -> Fixture {
        Fixture::start_with(wire, more, "", "")
    }

    /// [`Fixture::start`] with more lines for the subject provider and more top-level sections.
    fn start_with(wire: Box<dyn Wire>, more: &str, subject: &str, sections: &str) -> Fixture {
        let mock = MockUpstream::start();
        // The harness's own `openai`/`other` providers point at a closed port: unused.
        let mut setup = Setup::new("http://127.0.0.1:9/v1");
        setup.extra_providers = format!("{}{subject}{more}", wire.provider(SUBJECT, &mock));
        setup.sections = sections.to_string();
        let gw = Gateway::start(&setup);
        Fixture { wire, mock, gw }
    }

    /// What a basic edit sends: one image and a prompt.
    fn basic(&self) -> Sent {
        Sent {
            model: self.wire.model().to_string(),
            prompt: "make the \"sky\" green".into(),
            images: vec![gradient_png()],
            mask: None,
            stream: false,
        }
    }

    /// The client's form for `sent`, addressed to `model` (`provider/model`).
    fn form(&self, model: &str, sent: &Sent) -> Form {
        let mut f = Form::new().text("model", model).text("prompt", &sent.prompt);
        for (k, v) in self.wire.basic_fields() {
            f = f.text(k, v);
        }
        if sent.stream {
            f = f.text("stream", "true");
        }
        let name = if sent.images.len() > 1 { "image[]" } else { "image" };
        for (i, png) in sent.images.iter().enumerate() {
            f = f.file(name, &format!("in{i}.png"), "image/png", png);
        }
        if let Some(mask) = &sent.mask {
            f = f.file("mask", "mask.png", "image/png", mask);
        }
        f
    }

    /// Sends `sent` to `subject`.
    fn edit(&self, sent: &Sent) -> Response {
        let model = format!("{SUBJECT}/{}", self.wire.model());
        self.gw.edit(&self.form(&model, sent), &[("x-bf-vk", VK)])
    }

    /// Asserts the gateway refused `sent` with a 400 `unsupported_operation` on `param`, and
    /// the provider was never even connected to.
    fn assert_refused_before_upstream(&self, r: &Response, param: &str) {
        assert_gateway_error(r, 400, "unsupported_operation", "invalid_request_error", Some(param));
        let v = r.json();
        assert!(
            v["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&format!("provider '{SUBJECT}'")),
            "{v}"
        );
        assert!(self.mock.requests().is_empty(), "the mock saw a request");
        assert!(self.mock.incomplete().is_empty(), "the mock saw a request");
        assert_eq!(self.mock.connections(), 0, "the mock saw a connection");
    }

    /// Asserts a 200 in Bifrost's unified shape carrying `images` from `subject`, and that
    /// the mock received exactly the wire's request(s) for `sent`.
    fn assert_served(&self, r: &Response, sent: &Sent, images: &[Vec<u8>]) -> Value {
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
        assert!(r.header("x-request-id").is_some_and(|id| !id.is_empty()));
        let v = r.json();
        assert!(v["created"].as_u64().is_some_and(|c| c > 0), "created: {v}");
        let data = v["data"].as_array().unwrap_or_else(|| panic!("no data: {v}"));
        assert_eq!(data.len(), images.len(), "{v}");
        for (i, (item, png)) in data.iter().zip(images).enumerate() {
            assert_eq!(item["index"], i, "{item}");
            assert!(unb64(item["b64_json"].as_str().unwrap()) == *png, "image {i} differs");
        }
        let x = &v["extra_fields"];
        assert_eq!(x["request_type"], "image_edit", "{x}");
        assert_eq!(x["provider"], SUBJECT, "{x}");
        assert_eq!(x["model_requested"], self.wire.model(), "{x}");
        assert!(x["model_deployment"].is_string(), "{x}");
        assert!(x["latency"].is_u64(), "{x}");
        assert!(v.get("is_bifrost_error").is_none() && v.get("error").is_none(), "{v}");
        self.check_upstream(r, sent);
        v
    }

    /// Asserts the mock received exactly the wire's request(s) for `sent`, the first (and
    /// every other one that carries it) with the request id the client got.
    fn check_upstream(&self, r: &Response, sent: &Sent) {
        let recs = self.mock.requests();
        self.wire.check(&self.mock, &recs, sent);
        let id = r.header("x-request-id");
        assert!(
            id.is_some() && recs[0].header("x-request-id") == id,
            "the request id goes upstream"
        );
        for rec in &recs {
            if let Some(sent_id) = rec.header("x-request-id") {
                assert_eq!(Some(sent_id), id, "{}", rec.path);
            }
        }
    }
}

/// The conformance cases; each takes the kind's wire.
mod cases {
    use super::*;

    /// One image and a prompt: 200 in Bifrost's shape, exactly the wire's request upstream.
    pub fn basic_edit(wire: Box<dyn Wire>) {
        let fx = Fixture::start(wire, "");
        let result = vec![result_png(0)];
        fx.wire.serve(&fx.mock, &result);
        let sent = fx.basic();
        let r = fx.edit(&sent);
        fx.assert_served(&r, &sent, &result);
    }

    /// Two images: both sent (each byte for byte), or the capability refusal.
    pub fn multi_image(wire: Box<dyn Wire>) {
        let fx = Fixture::start(wire, "");
        let sent = Sent {
            images: vec![gradient_png(), second_png()],
            ..fx.basic()
        };
        match fx.wire.abilities().multi_image {
            Capability::Served => {
                let result = vec![result_png(0)];
                fx.wire.serve(&fx.mock, &result);
                let r = fx.edit(&sent);
                fx.assert_served(&r, &sent, &result);
            }
            Capability::Refused { param } => {
                let r = fx.edit(&sent);
                fx.assert_refused_before_upstream(&r, param);
            }
        }
    }

    /// A mask in OpenAI's convention: converted to the kind's (checked pixel by pixel by the
    /// wire), or the capability refusal.
    pub fn mask(wire: Box<dyn Wire>) {
        mask_served_or_refused(wire, unified_mask_png());
    }

    /// A mask in the providers' native convention (opaque, white = edit), as Bifrost's and the
    /// providers' clients send it: the provider receives it in its own convention with the
    /// same edit area as [`mask`]'s (OpenAI's alpha for the OpenAI-compatible kinds; checked
    /// pixel by pixel by the wire), or the capability refusal.
    pub fn white_edit_mask(wire: Box<dyn Wire>) {
        mask_served_or_refused(wire, white_edit_mask_png());
    }

    /// An edit with `mask`: served (the wire checks the mask it receives) or refused before
    /// the provider, as the kind's abilities say.
    fn mask_served_or_refused(wire: Box<dyn Wire>, mask: Vec<u8>) {
        let fx = Fixture::start(wire, "");
        let sent = Sent {
            mask: Some(mask),
            ..fx.basic()
        };
        match fx.wire.abilities().mask {
            Capability::Served => {
                let result = vec![result_png(0)];
                fx.wire.serve(&fx.mock, &result);
                let r = fx.edit(&sent);
                fx.assert_served(&r, &sent, &result);
            }
            Capability::Refused { param } => {
                let r = fx.edit(&sent);
                fx.assert_refused_before_upstream(&r, param);
            }
        }
    }

    /// Something the model cannot do: a 400 in Bifrost's shape, and the provider never
    /// connected to.
    pub fn refused_capability(wire: Box<dyn Wire>) {
        let fx = Fixture::start(wire, "");
        let refusal = fx.wire.abilities().refusal;
        let sent = fx.basic();
        let model = format!("{SUBJECT}/{}", fx.wire.model());
        let mut form = fx.form(&model, &sent).text(refusal.field, refusal.value);
        if refusal.field == "response_format" {
            // The gateway stores images for URLs, except a stream's: the refusal that remains.
            form = form.text("stream", "true");
        }
        let r = fx.gw.edit(&form, &[("x-bf-vk", VK)]);
        fx.assert_refused_before_upstream(&r, refusal.param);
    }

    /// `response_format=url` with `rehost_urls: true`: the provider is asked for base64 (never
    /// `url`), and the answer's `url` fetches the image through the gateway's signed file route.
    pub fn url_answer(wire: Box<dyn Wire>) {
        let dir = tempfile::tempdir().unwrap();
        let objects = format!("objects:\n  kind: fs\n  path: {}\n", dir.path().display());
        let fx = Fixture::start_with(wire, "", "    rehost_urls: true\n", &objects);
        let result = vec![result_png(0)];
        fx.wire.serve(&fx.mock, &result);
        let sent = fx.basic();
        let model = format!("{SUBJECT}/{}", fx.wire.model());
        let form = fx.form(&model, &sent).text("response_format", "url");
        let r = fx.gw.edit(&form, &[("x-bf-vk", VK)]);
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        let data = v["data"].as_array().unwrap_or_else(|| panic!("no data: {v}"));
        assert_eq!(data.len(), 1, "{v}");
        assert!(data[0].get("b64_json").is_none(), "{v}");
        assert_eq!(data[0]["index"], 0, "{v}");
        assert_eq!(v["extra_fields"]["provider"], SUBJECT, "{v}");
        let url = data[0]["url"].as_str().unwrap_or_else(|| panic!("no url: {v}"));
        // The origin is the request's (its Host header; no public_url is configured).
        let target = url
            .strip_prefix("http://gateway.test")
            .filter(|t| t.starts_with("/v1/images/files/"))
            .unwrap_or_else(|| panic!("{url} is not a gateway file URL"));
        let file = Gateway::get(fx.gw.addr, target);
        assert_eq!(file.status, 200, "{}", file.text());
        assert_eq!(file.header("content-type").as_deref(), Some("image/png"));
        assert!(file.body == result[0], "the stored image differs");
        for rec in fx.mock.requests() {
            let body = String::from_utf8_lossy(&rec.body);
            assert!(
                !body.contains("\"response_format\":\"url\"") && !body.contains("name=\"response_format\"\r\n\r\nurl"),
                "the provider was asked for a URL: {body}"
            );
        }
    }

    /// `stream=true`: an event stream (the provider's own, or synthesized `completed` events)
    /// that ends well, with the wire's request upstream.
    pub fn stream(wire: Box<dyn Wire>) {
        let fx = Fixture::start(wire, "");
        let result = vec![result_png(0)];
        fx.wire.serve_stream(&fx.mock, &result);
        let sent = Sent {
            stream: true,
            ..fx.basic()
        };
        let r = fx.edit(&sent);
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some("text/event-stream"));
        let mut d = SseDecoder::new();
        let mut events = Vec::new();
        d.feed(&r.body, &mut events).expect("a valid event stream");
        assert_eq!(d.finish(), 0, "the stream ends at an event boundary");
        let names: Vec<&str> = events.iter().map(|e| e.event.as_deref().unwrap_or("")).collect();
        let want: &[&str] = match fx.wire.abilities().streams {
            Streams::NativePartials => &["image_edit.partial_image", "image_edit.completed"],
            Streams::NativeCompleted | Streams::Synthesized => &["image_edit.completed"],
        };
        assert_eq!(names, want, "{}", r.text());
        for (i, e) in events.iter().enumerate() {
            let v: Value = serde_json::from_str(&e.data).unwrap();
            assert_eq!(v["type"], names[i], "{v}");
            assert_eq!(v["sequence_number"], i, "{v}");
            assert_eq!(v["extra_fields"]["request_type"], "image_edit_stream", "{v}");
            assert_eq!(v["extra_fields"]["provider"], SUBJECT, "{v}");
            assert!(unb64(v["b64_json"].as_str().unwrap()) == result[0], "event {i}'s image");
        }
        fx.check_upstream(&r, &sent);
    }

    /// The provider's error: its status and message reach the client in Bifrost's error
    /// shape (`is_bifrost_error: false`).
    pub fn upstream_error_kept(wire: Box<dyn Wire>) {
        let fx = Fixture::start(wire, "");
        let e = fx.wire.serve_error(&fx.mock);
        let r = fx.edit(&fx.basic());
        assert_eq!(r.status, e.status, "{}", r.text());
        assert_eq!(r.header("content-type").as_deref(), Some("application/json"));
        let v = r.json();
        assert_eq!(v["is_bifrost_error"], false, "{v}");
        assert_eq!(v["status_code"], e.status, "{v}");
        assert_eq!(v["error"]["message"], e.message.as_str(), "{v}");
        assert_eq!(v["extra_fields"]["request_type"], "image_edit", "{v}");
        assert_eq!(v["event_id"].as_str(), r.header("x-request-id").as_deref(), "{v}");
        assert!(v.get("data").is_none(), "{v}");
        assert_eq!(fx.mock.requests().len(), 1, "one upstream request, not retried");
    }

    /// A failing primary of another kind (a 503) falls back to this kind, whose answer
    /// reports `fallback_index: 1`.
    pub fn fallback_to_it(wire: Box<dyn Wire>) {
        let primary = if wire.kind() == Kind::OpenAi {
            for_kind(Kind::Xai, "grok-imagine-image")
        } else {
            for_kind(Kind::OpenAi, "gpt-image-1")
        };
        assert_ne!(primary.kind(), wire.kind());
        let failing = MockUpstream::start();
        failing.always(Reply::json(
            503,
            &json!({"error": {"message": "overloaded", "type": "server_error"}}),
        ));
        let fx = Fixture::start(wire, &primary.provider(FAILING, &failing));
        let result = vec![result_png(0)];
        fx.wire.serve(&fx.mock, &result);
        let sent = fx.basic();
        let form = fx
            .form(&format!("{FAILING}/{}", primary.model()), &sent)
            .text("fallbacks", &format!("{SUBJECT}/{}", fx.wire.model()));
        let r = fx.gw.edit(&form, &[("x-bf-vk", VK)]);
        let v = fx.assert_served(&r, &sent, &result);
        assert_eq!(v["extra_fields"]["fallback_index"], 1, "{v}");
        assert_eq!(v["extra_fields"]["attempts"], 2, "{v}");
        assert_eq!(failing.requests().len(), 1, "the primary was tried once");
        assert_eq!(
            fx.gw.metric(&format!(
                "refract_fallbacks_total{{from=\"{FAILING}\",to=\"{SUBJECT}\"}}"
            )),
            1.0
        );
    }
}

/// Stamps the conformance cases on provider kind `$kind` with model `$model`, as module
/// `$name`: `cargo test --test conformance $name::` runs them.
macro_rules! conformance {
    ($name:ident, $kind:expr, $model:expr) => {
        mod $name {
            use super::*;

            cases!($kind, $model; basic_edit, multi_image, mask, white_edit_mask, refused_capability, stream,
                upstream_error_kept, fallback_to_it, url_answer);
        }
    };
}

/// One `#[test]` per case of [`cases`], each given the wire of `$kind` and `$model`.
macro_rules! cases {
    ($kind:expr, $model:expr; $($case:ident),+ $(,)?) => {
        $(
            #[test]
            fn $case() {
                cases::$case(for_kind($kind, $model));
            }
        )+
    };
}

/// Every provider kind has a line below.
#[test]
fn every_kind_is_in_the_suite() {
    let source = include_str!("main.rs");
    for kind in Kind::ALL {
        let line = format!(", Kind::{kind:?}, ");
        assert!(
            source
                .lines()
                .any(|l| l.starts_with("conformance!(") && l.contains(&line)),
            "kind {kind} has no conformance line"
        );
    }
}

// One line per provider kind (and model family): the cases above, stamped on it.
conformance!(openai, Kind::OpenAi, "gpt-image-1");
conformance!(azure, Kind::Azure, "gpt-image-1");
conformance!(gemini, Kind::Gemini, "gemini-2.5-flash-image");
conformance!(gemini_imagen, Kind::Gemini, "imagen-3.0-capability-001");
conformance!(vertex, Kind::Vertex, "imagen-3.0-capability-001");
conformance!(vertex_gemini, Kind::Vertex, "gemini-2.5-flash-image");
conformance!(bedrock, Kind::Bedrock, "amazon.titan-image-generator-v2:0");
conformance!(bedrock_nova, Kind::Bedrock, "amazon.nova-canvas-v1:0");
conformance!(bedrock_stability, Kind::Bedrock, "stability.stable-image-inpaint-v1:0");
conformance!(stability, Kind::Stability, "sd3");
conformance!(bfl, Kind::Bfl, "flux-kontext-pro");
conformance!(bfl_fill, Kind::Bfl, "flux-pro-1.0-fill");
conformance!(fireworks, Kind::Fireworks, "flux-kontext-pro");
conformance!(replicate, Kind::Replicate, "black-forest-labs/flux-kontext-pro");
conformance!(huggingface, Kind::HuggingFace, "timbrooks/instruct-pix2pix");
conformance!(huggingface_fal, Kind::HuggingFace, "fal-ai/flux-kontext/dev");
conformance!(huggingface_fal_fill, Kind::HuggingFace, "fal-ai/flux-pro/v1/fill");
conformance!(huggingface_fal_multi, Kind::HuggingFace, "fal-ai/flux-2/edit");
conformance!(xai, Kind::Xai, "grok-imagine-image");
