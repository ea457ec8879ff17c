//! Provider errors: an error answer in OpenAI's shape (or close to it) turned into a
//! [`GatewayError::Provider`] that keeps the provider's status and message, and the refusal
//! for a success that carries no image. Run in `convert_response` (and follow-ups) when an
//! answer is an error.

use crate::error::GatewayError;
use crate::providers::UpstreamResponse;
use serde_json::{json, Map, Value};

/// The content moderation refusal for an answer that carries no image (a safety filter, a
/// block reason): 400 `moderation_blocked`, with the provider's reason in the message.
pub fn no_image_error(provider: &str, why: &str) -> GatewayError {
    let mut error = Map::new();
    error.insert(
        "message".into(),
        json!(format!("provider '{provider}' returned no image: {why}")),
    );
    error.insert("type".into(), json!("image_generation_user_error"));
    error.insert("code".into(), json!("moderation_blocked"));
    error.insert("param".into(), Value::Null);
    GatewayError::Provider {
        provider: provider.to_string(),
        status: 400,
        error,
    }
}

/// An OpenAI-style error answer as a provider error: the `error` object is kept as sent (an
/// error given as a bare string becomes its message); a body that is not JSON becomes a short,
/// printable excerpt.
pub fn provider_error(provider: &str, resp: &UpstreamResponse) -> GatewayError {
    let parsed: Option<Value> = serde_json::from_slice(&resp.body).ok();
    let error = match parsed {
        Some(Value::Object(mut o)) => match o.remove("error") {
            Some(Value::Object(e)) => e,
            Some(Value::String(s)) => {
                let mut e = Map::new();
                e.insert("message".into(), json!(s));
                e
            }
            _ => match o.remove("message") {
                Some(Value::String(s)) => {
                    let mut e = Map::new();
                    e.insert("message".into(), json!(s));
                    e
                }
                _ => Map::new(),
            },
        },
        _ => Map::new(),
    };
    let mut error = error;
    if !error.contains_key("message") {
        let excerpt: String = String::from_utf8_lossy(&resp.body[..resp.body.len().min(200)])
            .chars()
            .filter(|c| !c.is_control())
            .collect();
        let msg = if excerpt.trim().is_empty() {
            format!("provider '{provider}' answered HTTP {}", resp.status)
        } else {
            format!("provider '{provider}' answered HTTP {}: {excerpt}", resp.status)
        };
        error.insert("message".into(), json!(msg));
    }
    GatewayError::Provider {
        provider: provider.to_string(),
        status: resp.status,
        error,
    }
}
