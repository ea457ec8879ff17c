//! `response_format=url` for every provider: when the client wants URLs ([`wants_url`]) and the
//! unified answer carries `b64_json` images, each image is stored in `objects` under a
//! gateway-made name ([`crate::state::urls::ImageName`], its expiry in the key) and the answer
//! gets `url` instead: a presigned URL when the store signs (S3), else a gateway URL
//! (`{base}/v1/images/files/{name}?expires=…&sig=…`, served by [`super::files`]). Every other
//! member of the answer is kept byte for byte; an image the provider answered as a URL is kept.
//!
//! The attempt asks the provider for `b64_json` where the gateway rehosts ([`provider_form`]):
//! kinds that cannot answer URLs, and providers with `rehost_urls: true`. [`rehost`] is the one
//! hook, called by the attempt's conversion before the reply is built; async jobs call it too,
//! with the URL base saved at submit time.

use crate::codec::base64::Base64Decoder;
use crate::config::{ProviderConfig, ResponseFormat};
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::providers::capabilities::Capabilities;
use crate::providers::rawjson::{ExpandedObject, JsonOut, RawObject};
use crate::providers::UnifiedAnswer;
use crate::server::AppState;
use crate::state::urls::ImageName;
use bytes::Bytes;
use pingora::proxy::Session;
use std::borrow::Cow;

/// Whether the client of `form` gets URLs: it asked `response_format=url`, or omitted it while
/// `objects.default_response_format` is `url` (`default`); never for a stream.
pub(crate) fn wants_url(form: &EditForm, default: Option<ResponseFormat>) -> bool {
    !form.stream
        && match form.response_format.as_deref() {
            Some(format) => format == "url",
            None => default == Some(ResponseFormat::Url),
        }
}

/// Whether the gateway, not `provider` (whose model has `caps`), makes the URLs: the model
/// cannot answer them, or the operator asked to rehost (`rehost_urls`).
pub(super) fn gateway_rehosts(provider: &ProviderConfig, caps: &Capabilities) -> bool {
    !caps.url_output || provider.options.rehost_urls
}

/// The candidate's form as its provider is asked: `response_format=b64_json` instead of `url`
/// when the gateway rehosts ([`gateway_rehosts`]); else `form` itself (no copy, and no lookup
/// unless the client asked for `url`).
pub(super) fn provider_form<'f>(form: &'f EditForm, provider: &ProviderConfig) -> Cow<'f, EditForm> {
    if form.response_format.as_deref() != Some("url") {
        return Cow::Borrowed(form);
    }
    let caps = crate::providers::adapter_for(provider.kind).capabilities(&form.model);
    if gateway_rehosts(provider, caps) {
        let mut asked = form.clone();
        asked.response_format = Some("b64_json".to_string());
        Cow::Owned(asked)
    } else {
        Cow::Borrowed(form)
    }
}

/// The origin (and path) that gateway URLs of this request start with: `objects.public_url`,
/// else `http(s)://{Host}` from the request (https on a TLS connection); `None` when the
/// client wants no URL (nothing is allocated then) or the request names no usable host (the
/// URL is then path-only).
pub(super) fn url_base(state: &AppState, session: &Session, form: &EditForm) -> Option<String> {
    let urls = &state.config.object_urls;
    if !wants_url(form, urls.default_response_format) {
        return None;
    }
    if let Some(public) = &urls.public_url {
        return Some(public.clone());
    }
    let head = session.req_header();
    let host = head
        .headers
        .get(http::header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| head.uri.authority().map(|a| a.as_str()))
        .filter(|h| is_host(h))?;
    let tls = head.uri.scheme_str() == Some("https") || session.digest().is_some_and(|d| d.ssl_digest.is_some());
    Some(format!("{}://{host}", if tls { "https" } else { "http" }))
}

/// A `Host` value fit to be written into a URL: a name, IPv4 or bracketed IPv6, and a port.
fn is_host(host: &str) -> bool {
    !host.is_empty() && host.len() <= 255 && host.bytes().all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
}

/// The hook: when the client of `form` (the client's own form, [`wants_url`]) wants URLs,
/// stores each `b64_json` image of `answer` and answers its URL instead (see the module docs);
/// else `answer` as it is, untouched. `url_base` is what [`url_base`] gave for the request (or
/// the base saved with an async job). A store that fails is a 500 (the provider's answer is
/// lost; nothing half-stored is referenced).
pub(crate) async fn rehost(
    state: &AppState,
    form: &EditForm,
    url_base: Option<&str>,
    answer: UnifiedAnswer,
) -> Result<UnifiedAnswer, GatewayError> {
    let urls = &state.config.object_urls;
    if !wants_url(form, urls.default_response_format) {
        return Ok(answer);
    }
    let body = answer.to_bytes();
    let doc = ExpandedObject::parse(&body, "data")
        .map_err(|e| GatewayError::Internal(format!("rehost: the unified answer is not JSON: {e}")))?;
    let mut images = Vec::new();
    for item in &doc.items {
        images.push(match item.get("b64_json") {
            Some(raw) => Some(store(state, url_base, decode(raw.get())?).await?),
            None => None,
        });
    }
    if images.iter().all(Option::is_none) {
        return Ok(answer);
    }
    Ok(UnifiedAnswer::from(with_urls(&doc, &images)?))
}

/// The bytes of a `b64_json` value (a JSON string, quotes included).
fn decode(raw: &str) -> Result<Vec<u8>, GatewayError> {
    let bad = || GatewayError::Internal("rehost: b64_json is not a base64 string".into());
    let text: Cow<'_, str> = serde_json::from_str(raw).map_err(|_| bad())?;
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let mut decoder = Base64Decoder::new();
    if decoder.push(text.as_bytes(), &mut out) && decoder.finish(&mut out) {
        Ok(out)
    } else {
        Err(bad())
    }
}

/// Stores one image and returns its URL.
async fn store(state: &AppState, url_base: Option<&str>, bytes: Vec<u8>) -> Result<String, GatewayError> {
    let urls = &state.config.object_urls;
    let fail = |e: crate::state::StateError| GatewayError::Internal(format!("rehost: {e}"));
    let ext = crate::imaging::sniff(&bytes).map_or("bin", |k| k.extension_name());
    let expires = crate::providers::kernel::time::unix_seconds(std::time::SystemTime::now()) + urls.ttl.as_secs();
    let name = ImageName::new(expires, ext).map_err(fail)?;
    let key = name.key().map_err(fail)?;
    let objects = &state.store.objects;
    let size = bytes.len() as u64;
    objects.put(&key, Bytes::from(bytes)).await.map_err(fail)?;
    state.metrics.jobs.stored(crate::metrics::StoredKind::Image, size);
    match objects.sign(&key, urls.ttl).await.map_err(fail)? {
        Some(presigned) => Ok(presigned.to_string()),
        None => Ok(state.store.urls.url(url_base, &name.as_url_name(), expires)),
    }
}

/// The answer `doc` with `data[i]`'s `b64_json` replaced by `url` `urls[i]` (appended as the
/// item's last member) where there is one; everything else as it was.
fn with_urls(doc: &ExpandedObject<'_>, urls: &[Option<String>]) -> Result<Vec<u8>, GatewayError> {
    let mut out = Vec::new();
    let mut items = |items: &[RawObject<'_>], out: &mut Vec<u8>| -> Result<(), serde_json::Error> {
        out.put(b"[");
        for (i, item) in items.iter().enumerate() {
            if i > 0 {
                out.put(b",");
            }
            match urls.get(i).and_then(Option::as_ref) {
                Some(url) => {
                    let url = serde_json::to_vec(url)?;
                    item.write(out, &["b64_json", "url"], &mut |_, _, _| Ok(false), &[("url", &url)])?;
                }
                None => item.write(out, &[], &mut |_, _, _| Ok(false), &[])?,
            }
        }
        out.put(b"]");
        Ok(())
    };
    doc.write(&mut out, "data", &mut items, &[], &mut |_, _, _| Ok(false), &[])
        .map_err(|e| GatewayError::Internal(format!("rehost: {e}")))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_client_wants_urls_when_asked_or_by_default_never_for_a_stream() {
        let form = |format: Option<&str>, stream| EditForm {
            response_format: format.map(str::to_string),
            stream,
            ..Default::default()
        };
        assert!(wants_url(&form(Some("url"), false), None));
        assert!(!wants_url(&form(Some("url"), true), None));
        assert!(!wants_url(&form(Some("b64_json"), false), Some(ResponseFormat::Url)));
        assert!(!wants_url(&form(None, false), None));
        assert!(wants_url(&form(None, false), Some(ResponseFormat::Url)));
        assert!(!wants_url(&form(None, false), Some(ResponseFormat::B64Json)));
        assert!(!wants_url(&form(None, true), Some(ResponseFormat::Url)));
    }

    #[test]
    fn b64_images_become_urls_and_the_rest_is_kept_byte_for_byte() {
        let body = br#"{"created":1, "data":[{"b64_json":"iVBO","revised_prompt":"a \"cat\""},{"url":"https://p.example/x.png"}],"usage":{"total_tokens":3},"extra_fields":{"provider":"p"}}"#;
        let doc = ExpandedObject::parse(body, "data").unwrap();
        let out = with_urls(&doc, &[Some("https://gw/v1/images/files/1-a.png?x=1&y=2".into()), None]).unwrap();
        assert_eq!(
            std::str::from_utf8(&out).unwrap(),
            r#"{"created":1,"data":[{"revised_prompt":"a \"cat\"","url":"https://gw/v1/images/files/1-a.png?x=1&y=2"},{"url":"https://p.example/x.png"}],"usage":{"total_tokens":3},"extra_fields":{"provider":"p"}}"#
        );
    }

    #[test]
    fn base64_is_decoded_with_json_escapes() {
        assert_eq!(decode(r#""aGk=""#).unwrap(), b"hi");
        assert_eq!(decode(r#""a\/8=""#).unwrap(), vec![0x6b, 0xff]);
        assert!(decode(r#""not base64!""#).is_err());
        assert!(decode("12").is_err());
    }
}
