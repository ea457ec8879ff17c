//! The gateway's file route: `GET` and `HEAD` `/v1/images/files/{name}?expires=…&sig=…`, the
//! URLs of result images rehosted for `response_format=url` ([`super::rehost`]) when the
//! objects store cannot presign (a directory).
//!
//! The URL is the capability: no virtual key is asked. Its signature (HMAC-SHA256 over name and
//! expiry, compared in constant time) and expiry are checked before the store is read
//! ([`crate::state::UrlSigner::check`]): missing, wrong or expired → 403 in Bifrost's error
//! shape; a name the gateway never makes → 404, and only names the gateway makes map to keys,
//! so nothing outside the store's `images/` can be served. The file is sent with its content
//! type, `Content-Length` and `Cache-Control: private, max-age=<seconds left>`.

use super::{send_error, RequestCtx};
use crate::error::GatewayError;
use crate::server::AppState;
use crate::state::urls::{UrlRefusal, FILES_PATH};
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

/// Answers a file request (`head_only` for `HEAD`: the same head, no body).
pub(super) async fn serve(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    head_only: bool,
) -> Result<()> {
    let uri = &session.req_header().uri;
    let name = uri.path().strip_prefix(FILES_PATH).unwrap_or_default().to_string();
    let query = uri.query().map(str::to_string);
    let now = crate::providers::kernel::time::unix_seconds(std::time::SystemTime::now());
    let found = match state.store.urls.check(&name, query.as_deref(), now) {
        Ok(granted) => match state.store.objects.get(&granted.key).await {
            Ok(Some(bytes)) => Ok((granted, bytes)),
            Ok(None) => Err(GatewayError::FileNotFound),
            Err(e) => Err(GatewayError::Internal(format!("file {name}: {e}"))),
        },
        Err(UrlRefusal::BadName) => Err(GatewayError::FileNotFound),
        Err(refusal) => Err(GatewayError::FileUrlRefused(refusal.message())),
    };
    let (granted, bytes) = match found {
        Ok(found) => found,
        Err(e) => {
            state.metrics.objects.served(e.status());
            return send_error(state, session, ctx, &e).await;
        }
    };
    let content_type = crate::state::content_type(&granted.key).unwrap_or("application/octet-stream");
    let mut resp = ResponseHeader::build(200, Some(5))?;
    resp.insert_header(http::header::CONTENT_TYPE, content_type)?;
    resp.insert_header(http::header::CONTENT_LENGTH, bytes.len().to_string())?;
    resp.insert_header(
        http::header::CACHE_CONTROL,
        format!("private, max-age={}", granted.remaining),
    )?;
    resp.insert_header("x-request-id", ctx.request_id.as_str())?;
    ctx.status = 200;
    state.metrics.objects.served(200);
    if head_only {
        session.write_response_header(Box::new(resp), true).await?;
        return Ok(());
    }
    ctx.response_bytes = bytes.len() as u64;
    session.write_response_header(Box::new(resp), false).await?;
    session.write_response_body(Some(bytes), true).await?;
    Ok(())
}
