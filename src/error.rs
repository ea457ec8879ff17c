//! The gateway's errors, and the one place where each maps to an HTTP status, a Bifrost error
//! `type`/`code`, a metric label, and the Bifrost-shaped JSON body the client receives.
//!
//! Two families exist. Errors the gateway decides itself (bad input, auth, limits, upstream
//! unreachable) carry `is_bifrost_error: true` and a message that says what to fix. Errors a
//! provider answered with keep the provider's status and error object and carry
//! `is_bifrost_error: false`, as Bifrost does.

use serde_json::{json, Map, Value};
use thiserror::Error;

/// Everything that can end a request without a successful provider answer.
#[derive(Debug, Error)]
pub enum GatewayError {
    /// A field is missing, has the wrong type or is out of range (400). `param` names the field.
    #[error("{message}")]
    InvalidRequest {
        /// The form field at fault, if any.
        param: Option<String>,
        /// What is wrong and how to fix it.
        message: String,
    },
    /// The request asks for something the chosen provider or model cannot do (400), found
    /// from its capability declaration before any upstream call. Code `unsupported_operation`,
    /// and the message says "not supported", as Bifrost's clients look for.
    #[error("{message} is not supported by provider '{provider}'")]
    Unsupported {
        /// Provider name.
        provider: String,
        /// The form field at fault.
        param: String,
        /// What is not supported.
        message: String,
    },
    /// The body is not a well-formed `multipart/form-data` body (400).
    #[error("malformed multipart body: {0}")]
    MalformedMultipart(String),
    /// Reading the request body failed (400, code `malformed_multipart` like a malformed body):
    /// its framing is broken (an invalid chunk size, a chunk longer than its size), the client
    /// stalled past the read timeout, or it went away. Where the body ends can no longer be
    /// known, so the connection closes after the answer, without reading any more of it.
    #[error("malformed multipart body: the body could not be read: {0}")]
    BodyUnreadable(String),
    /// The request is not `multipart/form-data` (400, as Bifrost answers it and the seed spec
    /// documents; code `unsupported_media_type`).
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// A body or a part crossed its configured limit (413). `param` names the part.
    #[error("{what} exceeds the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The part at fault, or `None` for the whole body.
        param: Option<String>,
        /// Human name of what is too large ("request body", "part 'image'").
        what: String,
        /// The configured limit.
        limit: u64,
    },
    /// No virtual key was presented and anonymous use is off (401).
    #[error("virtual key is required. Provide a virtual key or a JWT via the x-bf-vk header, Authorization: Bearer ..., x-api-key, x-goog-api-key or api-key.")]
    VirtualKeyRequired,
    /// The presented virtual key matches no configured key (401).
    #[error("virtual key not found")]
    VirtualKeyNotFound,
    /// The presented virtual key is disabled (401).
    #[error("virtual key is inactive")]
    VirtualKeyBlocked,
    /// The presented virtual key (or the key a token names) is past its `expires_at` (401).
    #[error("virtual key has expired")]
    VirtualKeyExpired,
    /// A bearer JWT was refused (401): the reason, never the token.
    #[error("{0}")]
    InvalidToken(#[from] crate::auth::TokenRejection),
    /// A SigV4-signed request (the `/bedrock` route) was refused (403): the reason, never
    /// the secret.
    #[error("{0}")]
    SignatureRefused(#[from] crate::auth::sigv4::SignatureRejection),
    /// The virtual key may not use this provider (403).
    #[error("provider '{0}' is not allowed for this virtual key")]
    ProviderBlocked(String),
    /// The virtual key may not use this model (403).
    #[error("model '{0}' is not allowed for this virtual key")]
    ModelBlocked(String),
    /// `model` names a provider that is not configured (400).
    #[error("unknown provider '{0}': the model must be 'provider/model' with a configured provider")]
    UnknownProvider(String),
    /// No key of the provider serves this model (400).
    #[error("provider '{provider}' has no key configured for model '{model}'")]
    NoKeyForModel {
        /// Provider name.
        provider: String,
        /// Bare model name.
        model: String,
    },
    /// Every key of the provider that serves the model has an open circuit (503): the request
    /// moves on to its fallbacks, if any.
    #[error("provider '{provider}' keys are temporarily disabled after repeated failures; try again later")]
    KeysDisabled {
        /// Provider name.
        provider: String,
    },
    /// Every upstream slot of the provider (`max_connections`) stayed taken for its
    /// `queue_timeout_ms` (503): the request moves on to its fallbacks, if any.
    #[error("provider '{provider}' is busy: all max_connections ({max_connections}) upstream connections are in use and none freed within queue_timeout_ms ({queue_timeout_ms} ms)")]
    ProviderBusy {
        /// Provider name.
        provider: String,
        /// Its `max_connections`.
        max_connections: usize,
        /// Its `queue_timeout_ms`.
        queue_timeout_ms: u64,
    },
    /// The client's upload passed a limit (408): a pause between two reads of the body longer
    /// than `limits.body_read_timeout_ms`, or the whole upload longer than
    /// `limits.upload_timeout_ms`. The connection is closed.
    #[error("{what} within limits.{key} ({limit_ms} ms)")]
    RequestTimeout {
        /// What did not happen in time.
        what: &'static str,
        /// The config key of the limit (under `limits`).
        key: &'static str,
        /// The limit.
        limit_ms: u64,
    },
    /// An async job that does not exist, has expired, or belongs to another caller (404: the
    /// same answer for all three, so ids cannot be probed).
    #[error("job not found or expired")]
    JobNotFound,
    /// An async job that cannot be cancelled any more (409).
    #[error("the job is {status} already; only a pending or processing job can be cancelled")]
    JobFinished {
        /// Its status (`completed`, `failed`, `cancelled`).
        status: &'static str,
    },
    /// The job store or the objects store failed (503); the detail is logged, not sent.
    #[error("the job store is unavailable; try again")]
    StoreUnavailable(String),
    /// Unknown path (404).
    #[error("no route for {method} {path}")]
    NotFound {
        /// Request method.
        method: String,
        /// Request path.
        path: String,
    },
    /// A file URL (`/v1/images/files/…`) whose signature is missing or wrong, or that has
    /// expired (403); checked before the store is read.
    #[error("{0}")]
    FileUrlRefused(&'static str),
    /// A signed file URL whose file is not (or no longer) stored (404).
    #[error("no such file: it was never stored or has been removed")]
    FileNotFound,
    /// Known path, wrong method (405); the answer carries `Allow: {allow}`.
    #[error("method {method} is not allowed here; use {allow}")]
    MethodNotAllowed {
        /// The request's method.
        method: String,
        /// The methods the path takes, as the `Allow` header lists them (`POST`, `GET, HEAD`).
        allow: &'static str,
    },
    /// The provider could not be reached (502).
    #[error("could not connect to provider '{provider}': {detail}")]
    UpstreamConnect {
        /// Provider name.
        provider: String,
        /// Connection failure without secrets.
        detail: String,
    },
    /// The provider did not answer in time (504).
    #[error("provider '{provider}' timed out ({}): {detail}", kind.as_str())]
    UpstreamTimeout {
        /// Provider name.
        provider: String,
        /// Which wait timed out.
        kind: TimeoutKind,
        /// What was being waited for, and the limit.
        detail: String,
    },
    /// The provider's answer could not be read or understood (502).
    #[error("invalid response from provider '{provider}': {detail}")]
    UpstreamProtocol {
        /// Provider name.
        provider: String,
        /// What was wrong with the answer.
        detail: String,
    },
    /// The provider answered with an error status; its error object is kept (provider status).
    #[error("provider '{provider}' answered {status}")]
    Provider {
        /// Provider name.
        provider: String,
        /// The provider's HTTP status.
        status: u16,
        /// The provider's `error` object (at least `message`), passed through.
        error: Map<String, Value>,
    },
    /// An HTTP/1.x request head (request line and headers) crossed `limits.max_head_bytes`
    /// before its end (431); the connection is closed after the answer.
    #[error("the request head exceeds the limit of {limit} bytes")]
    HeadTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// JSON request bodies being read already hold `limits.json_body_memory_bytes` (503, with
    /// `Retry-After`): this one is refused before it grows past it.
    #[error("the gateway is holding its limit of {limit} bytes of JSON request bodies; try again shortly")]
    BodyMemoryBusy {
        /// The configured budget.
        limit: u64,
    },
    /// Every client connection slot is taken by a busy connection (503); the new connection
    /// is closed after the answer.
    #[error("the gateway has reached its limit of {limit} open client connections; try again shortly")]
    TooManyConnections {
        /// The connection cap.
        limit: usize,
    },
    /// The admission step ([`crate::admission::Admission`]) refused the attempt before any
    /// upstream call: a budget spent, a rate limit reached, a model closed to the caller. The
    /// status and code are the admission's (429 `rate_limited`, 402 `budget_exceeded`…); the
    /// request moves on to its fallbacks, if any, which are admitted on their own.
    #[error("{message}")]
    Refused {
        /// The HTTP status to answer (4xx or 503).
        status: u16,
        /// The machine-readable code (Bifrost's `type` and `error.code`).
        code: &'static str,
        /// Why, for the caller.
        message: String,
    },
    /// A budget of the caller's key (`scope` "VK") or of its team ("Team") is spent for its
    /// period (402 `budget_exceeded`, Bifrost's message). Not retried, no fallback.
    #[error("Budget exceeded: {scope} budget exceeded: {:.4} >= {:.4} dollars", *spent as f64 / 1e6, *max as f64 / 1e6)]
    BudgetExceeded {
        /// `VK` or `Team`.
        scope: &'static str,
        /// Spent in the period, micro-dollars.
        spent: u64,
        /// The budget, micro-dollars.
        max: u64,
    },
    /// A rate limit of the caller's key is reached (429 `rate_limited`, with `Retry-After` and
    /// `x-ratelimit-*` headers). Not retried, no fallback.
    #[error("Rate limit check failed: {message}")]
    RateLimited {
        /// Which limit, Bifrost's wording.
        message: String,
        /// The numbers for the headers.
        limits: crate::governance::RateHeaders,
    },
    /// Every key of the candidate's provider used up its own quota (429
    /// `provider_quota_exceeded`): the request falls back to its next candidate.
    #[error("every key of provider '{provider}' used up its quota for now")]
    ProviderQuota {
        /// The provider.
        provider: String,
    },
    /// The store of governance counters cannot be reached and `on_store_error` is
    /// `fail_closed` (503 `governance_unavailable`).
    #[error("budgets and rate limits cannot be checked right now (their store is unreachable); try again shortly")]
    GovernanceUnavailable,
    /// The client went away before the answer was complete (499, never sent: for metrics).
    #[error("the client closed the connection")]
    ClientClosed,
    /// A gateway fault (500): spool I/O and similar. The detail is logged, not sent.
    #[error("internal gateway error: {0}")]
    Internal(String),
}

/// Which limit an upstream wait passed ([`GatewayError::UpstreamTimeout`]); the `kind` label
/// of `refract_upstream_timeouts_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimeoutKind {
    /// Connecting (TCP and TLS): `connect_timeout_ms`.
    Connect,
    /// Waiting for the answer's head after the request was sent: `first_byte_timeout_ms`.
    FirstByte,
    /// A pause between two reads of the answer (or writes of the request): `idle_timeout_ms`.
    Idle,
    /// The whole attempt: `total_timeout_ms`.
    Total,
    /// An asynchronous provider's job did not finish: `poll_timeout_ms`.
    Poll,
}

impl TimeoutKind {
    /// The label value: `connect`, `first_byte`, `idle`, `total`, `poll`.
    pub fn as_str(self) -> &'static str {
        match self {
            TimeoutKind::Connect => "connect",
            TimeoutKind::FirstByte => "first_byte",
            TimeoutKind::Idle => "idle",
            TimeoutKind::Total => "total",
            TimeoutKind::Poll => "poll",
        }
    }
}

/// Request-level facts that appear in `extra_fields` of an error body.
#[derive(Debug, Default, Clone)]
pub struct ErrorContext<'a> {
    /// Request id, sent as `event_id`.
    pub request_id: Option<&'a str>,
    /// Provider name, once known.
    pub provider: Option<&'a str>,
    /// Bare model name as requested, once known.
    pub model_requested: Option<&'a str>,
    /// `extra_fields.request_type`: `image_edit` when `None`, `image_edit_stream` in streams.
    pub request_type: Option<&'a str>,
}

impl GatewayError {
    /// Shorthand for a 400 naming the field at fault.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        GatewayError::InvalidRequest {
            param: Some(param.into()),
            message: message.into(),
        }
    }

    /// The HTTP status the client receives.
    pub fn status(&self) -> u16 {
        use GatewayError::*;
        match self {
            InvalidRequest { .. }
            | Unsupported { .. }
            | MalformedMultipart(_)
            | BodyUnreadable(_)
            | UnknownProvider(_)
            | NoKeyForModel { .. } => 400,
            UnsupportedMediaType(_) => 400,
            PayloadTooLarge { .. } => 413,
            VirtualKeyRequired | VirtualKeyNotFound | VirtualKeyBlocked | VirtualKeyExpired | InvalidToken(_) => 401,
            ProviderBlocked(_) | ModelBlocked(_) | SignatureRefused(_) => 403,
            NotFound { .. } | JobNotFound | FileNotFound => 404,
            FileUrlRefused(_) => 403,
            JobFinished { .. } => 409,
            StoreUnavailable(_) | GovernanceUnavailable => 503,
            BudgetExceeded { .. } => 402,
            RateLimited { .. } | ProviderQuota { .. } => 429,
            MethodNotAllowed { .. } => 405,
            UpstreamConnect { .. } | UpstreamProtocol { .. } => 502,
            UpstreamTimeout { .. } => 504,
            KeysDisabled { .. } | ProviderBusy { .. } | TooManyConnections { .. } | BodyMemoryBusy { .. } => 503,
            RequestTimeout { .. } => 408,
            HeadTooLarge { .. } => 431,
            Provider { status, .. } | Refused { status, .. } => *status,
            ClientClosed => 499,
            Internal(_) => 500,
        }
    }

    /// Bifrost's top-level `type` and the error's `code`: stable, machine-readable, low
    /// cardinality. Also used as the `reason` label of the rejected-requests metric.
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            InvalidRequest { .. } => "invalid_request",
            Unsupported { .. } => "unsupported_operation",
            MalformedMultipart(_) | BodyUnreadable(_) => "malformed_multipart",
            UnsupportedMediaType(_) => "unsupported_media_type",
            PayloadTooLarge { .. } => "payload_too_large",
            VirtualKeyRequired => "virtual_key_required",
            VirtualKeyNotFound => "virtual_key_not_found",
            VirtualKeyBlocked => "virtual_key_blocked",
            VirtualKeyExpired => "virtual_key_expired",
            InvalidToken(rejection) => rejection.code(),
            SignatureRefused(rejection) => rejection.code(),
            ProviderBlocked(_) => "provider_blocked",
            ModelBlocked(_) => "model_blocked",
            UnknownProvider(_) => "unknown_provider",
            NoKeyForModel { .. } => "no_key_for_model",
            NotFound { .. } => "not_found",
            FileUrlRefused(_) => "file_url_refused",
            FileNotFound => "file_not_found",
            JobNotFound => "job_not_found",
            JobFinished { .. } => "job_finished",
            StoreUnavailable(_) => "store_unavailable",
            BudgetExceeded { .. } => "budget_exceeded",
            RateLimited { .. } => "rate_limited",
            ProviderQuota { .. } => "provider_quota_exceeded",
            GovernanceUnavailable => "governance_unavailable",
            MethodNotAllowed { .. } => "method_not_allowed",
            UpstreamConnect { .. } => "upstream_connect_error",
            UpstreamTimeout { .. } => "upstream_timeout",
            UpstreamProtocol { .. } => "upstream_protocol_error",
            KeysDisabled { .. } => "provider_keys_disabled",
            ProviderBusy { .. } => "provider_busy",
            RequestTimeout { .. } => "request_timeout",
            Provider { .. } => "provider_error",
            Refused { code, .. } => code,
            HeadTooLarge { .. } => "request_header_too_large",
            TooManyConnections { .. } => "too_many_connections",
            BodyMemoryBusy { .. } => "body_memory_busy",
            ClientClosed => "client_closed",
            Internal(_) => "internal_error",
        }
    }

    /// The OpenAI-style `error.type` (what the SDKs expose as `e.type`).
    fn error_type(&self) -> &'static str {
        use GatewayError::*;
        match self.status() {
            401 => "authentication_error",
            403 => "permission_error",
            404 => "not_found_error",
            _ => match self {
                UpstreamConnect { .. }
                | UpstreamTimeout { .. }
                | UpstreamProtocol { .. }
                | KeysDisabled { .. }
                | ProviderBusy { .. } => "upstream_error",
                Internal(_)
                | TooManyConnections { .. }
                | BodyMemoryBusy { .. }
                | StoreUnavailable(_)
                | GovernanceUnavailable => "server_error",
                RateLimited { .. } | ProviderQuota { .. } => "rate_limit_error",
                _ => "invalid_request_error",
            },
        }
    }

    /// The field at fault, if the error concerns one.
    pub fn param(&self) -> Option<&str> {
        match self {
            GatewayError::InvalidRequest { param, .. } | GatewayError::PayloadTooLarge { param, .. } => {
                param.as_deref()
            }
            GatewayError::Unsupported { param, .. } => Some(param),
            GatewayError::UnknownProvider(_) | GatewayError::NoKeyForModel { .. } | GatewayError::ModelBlocked(_) => {
                Some("model")
            }
            _ => None,
        }
    }

    /// True when the gateway produced the error, false when a provider did.
    pub fn is_bifrost_error(&self) -> bool {
        !matches!(self, GatewayError::Provider { .. })
    }

    /// The Bifrost-shaped error body:
    /// `{event_id, type, is_bifrost_error, status_code, error{type, code, message, param}, extra_fields}`.
    /// `param` is present only when there is one (the schema types it as a string, never
    /// null); a provider's error object keeps its members, less the `type`, `code` and `param`
    /// that are null.
    pub fn to_json(&self, cx: &ErrorContext<'_>) -> Value {
        let status = self.status();
        let error = match self {
            GatewayError::Provider { error, .. } => {
                let mut e = error.clone();
                e.entry("message")
                    .or_insert_with(|| json!(format!("provider answered {status}")));
                for key in ["type", "code", "param"] {
                    if e.get(key).is_some_and(Value::is_null) {
                        e.shift_remove(key);
                    }
                }
                Value::Object(e)
            }
            GatewayError::Internal(_) => json!({
                "type": self.error_type(),
                "code": self.code(),
                "message": "internal gateway error; see the gateway log for this request id",
            }),
            _ => {
                let mut e = json!({
                    "type": self.error_type(),
                    "code": self.code(),
                    "message": self.to_string(),
                });
                if let Some(param) = self.param() {
                    e["param"] = json!(param);
                }
                e
            }
        };
        let mut extra = Map::new();
        extra.insert("request_type".into(), json!(cx.request_type.unwrap_or("image_edit")));
        if let Some(p) = cx.provider {
            extra.insert("provider".into(), json!(p));
        }
        if let Some(m) = cx.model_requested {
            extra.insert("model_requested".into(), json!(m));
        }
        let mut body = Map::new();
        if let Some(id) = cx.request_id {
            body.insert("event_id".into(), json!(id));
        }
        body.insert("type".into(), json!(self.code()));
        body.insert("is_bifrost_error".into(), json!(self.is_bifrost_error()));
        body.insert("status_code".into(), json!(status));
        body.insert("error".into(), error);
        body.insert("extra_fields".into(), Value::Object(extra));
        Value::Object(body)
    }

    /// The error body as bytes, ready to send.
    pub fn to_body(&self, cx: &ErrorContext<'_>) -> Vec<u8> {
        serde_json::to_vec(&self.to_json(cx)).unwrap_or_else(|_| b"{}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_request_names_the_param() {
        let e = GatewayError::invalid("n", "n must be an integer between 1 and 10");
        let v = e.to_json(&ErrorContext {
            request_id: Some("req-1"),
            provider: Some("openai"),
            model_requested: Some("gpt-image-1"),
            request_type: None,
        });
        assert_eq!(e.status(), 400);
        assert_eq!(v["event_id"], "req-1");
        assert_eq!(v["is_bifrost_error"], true);
        assert_eq!(v["status_code"], 400);
        assert_eq!(v["error"]["param"], "n");
        assert_eq!(v["error"]["code"], "invalid_request");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["extra_fields"]["provider"], "openai");
        assert_eq!(v["extra_fields"]["request_type"], "image_edit");
    }

    #[test]
    fn provider_error_keeps_status_and_object() {
        let mut obj = Map::new();
        obj.insert("message".into(), json!("Invalid value for 'size'"));
        obj.insert("type".into(), json!("invalid_request_error"));
        obj.insert("param".into(), json!("size"));
        obj.insert("code".into(), json!("invalid_value"));
        let e = GatewayError::Provider {
            provider: "openai".into(),
            status: 422,
            error: obj,
        };
        let v = e.to_json(&ErrorContext::default());
        assert_eq!(e.status(), 422);
        assert_eq!(v["is_bifrost_error"], false);
        assert_eq!(v["status_code"], 422);
        assert_eq!(v["error"]["message"], "Invalid value for 'size'");
        assert_eq!(v["error"]["code"], "invalid_value");
        assert!(v.get("event_id").is_none());
    }

    #[test]
    fn param_is_omitted_when_there_is_none() {
        let no_param = [
            GatewayError::VirtualKeyRequired,
            GatewayError::MalformedMultipart("x".into()),
            GatewayError::Internal("x".into()),
            GatewayError::MethodNotAllowed {
                method: "GET".into(),
                allow: "POST",
            },
            GatewayError::PayloadTooLarge {
                param: None,
                what: "request body".into(),
                limit: 1,
            },
        ];
        for e in no_param {
            let v = e.to_json(&ErrorContext::default());
            assert!(v["error"].get("param").is_none(), "{v}");
        }
        let mut obj = Map::new();
        obj.insert("message".into(), json!("boom"));
        obj.insert("type".into(), Value::Null);
        obj.insert("param".into(), Value::Null);
        obj.insert("code".into(), Value::Null);
        obj.insert("inner".into(), json!(1));
        let e = GatewayError::Provider {
            provider: "p".into(),
            status: 500,
            error: obj,
        };
        let v = e.to_json(&ErrorContext::default());
        assert_eq!(v["error"], json!({"message": "boom", "inner": 1}));
    }

    #[test]
    fn unsupported_is_an_unsupported_operation_naming_the_field() {
        let e = GatewayError::Unsupported {
            provider: "gem".into(),
            param: "mask".into(),
            message: "a mask with model 'g'".into(),
        };
        let v = e.to_json(&ErrorContext::default());
        assert_eq!((e.status(), v["type"].as_str()), (400, Some("unsupported_operation")));
        assert_eq!(v["error"]["code"], "unsupported_operation");
        assert_eq!(v["error"]["param"], "mask");
        assert_eq!(
            v["error"]["message"],
            "a mask with model 'g' is not supported by provider 'gem'"
        );
        let e = GatewayError::MethodNotAllowed {
            method: "POST".into(),
            allow: "GET, HEAD",
        };
        assert_eq!(e.to_string(), "method POST is not allowed here; use GET, HEAD");
    }

    #[test]
    fn internal_error_hides_detail() {
        let e = GatewayError::Internal("spool write failed: /tmp/secret-path".into());
        let body = String::from_utf8(e.to_body(&ErrorContext::default())).unwrap();
        assert!(!body.contains("secret-path"));
        assert_eq!(e.status(), 500);
    }

    #[test]
    fn statuses_by_family() {
        assert_eq!(GatewayError::VirtualKeyRequired.status(), 401);
        assert_eq!(GatewayError::ProviderBlocked("x".into()).status(), 403);
        assert_eq!(
            GatewayError::PayloadTooLarge {
                param: None,
                what: "body".into(),
                limit: 1
            }
            .status(),
            413
        );
        assert_eq!(
            GatewayError::UpstreamTimeout {
                provider: "p".into(),
                kind: TimeoutKind::Idle,
                detail: "d".into()
            }
            .status(),
            504
        );
        assert_eq!(GatewayError::UnsupportedMediaType("x".into()).status(), 400);
        let head = GatewayError::HeadTooLarge { limit: 65536 };
        assert_eq!((head.status(), head.code()), (431, "request_header_too_large"));
        let full = GatewayError::TooManyConnections { limit: 20 };
        assert_eq!((full.status(), full.code()), (503, "too_many_connections"));
        assert_eq!(full.to_json(&ErrorContext::default())["error"]["type"], "server_error");
    }

    #[test]
    fn upload_and_queue_limits_name_their_keys() {
        let slow = GatewayError::RequestTimeout {
            what: "the request body was not complete",
            key: "upload_timeout_ms",
            limit_ms: 1500,
        };
        let v = slow.to_json(&ErrorContext::default());
        assert_eq!(
            (v["status_code"].clone(), v["type"].clone()),
            (json!(408), json!("request_timeout"))
        );
        assert_eq!(
            v["error"]["message"],
            "the request body was not complete within limits.upload_timeout_ms (1500 ms)"
        );
        let busy = GatewayError::ProviderBusy {
            provider: "openai".into(),
            max_connections: 2,
            queue_timeout_ms: 800,
        };
        let v = busy.to_json(&ErrorContext::default());
        assert_eq!((busy.status(), busy.code()), (503, "provider_busy"));
        assert_eq!(v["error"]["type"], "upstream_error");
        let message = v["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("'openai'") && message.contains("max_connections (2)"),
            "{message}"
        );
        assert!(message.contains("queue_timeout_ms (800 ms)"), "{message}");
    }
}
