//! The metrics listener: `GET /metrics` answers the Prometheus text exposition; anything else
//! is a 404. Runs on its own address so it can stay off the public listener.

use crate::metrics::Metrics;
use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;
use std::sync::Arc;

/// Serves the gateway's metrics.
pub struct MetricsApp {
    metrics: Arc<Metrics>,
}

impl MetricsApp {
    /// An app over the gateway's metrics.
    pub fn new(metrics: Arc<Metrics>) -> Self {
        MetricsApp { metrics }
    }
}

#[async_trait]
impl ServeHttp for MetricsApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        // Scrapes are frequent and uneventful: at debug, not in the access log's info lines.
        log::debug!(target: "refract::access", "metrics scrape {} {}", req.method, req.uri.path());
        let (status, content_type, body) = if req.uri.path() == "/metrics" && req.method == http::Method::GET {
            (200, "text/plain; version=0.0.4; charset=utf-8", self.metrics.encode())
        } else {
            (404, "text/plain", b"not found; metrics are at /metrics\n".to_vec())
        };
        Response::builder()
            .status(status)
            .header(http::header::CONTENT_TYPE, content_type)
            .header(http::header::CONTENT_LENGTH, body.len())
            .body(body)
            .unwrap_or_default()
    }
}
