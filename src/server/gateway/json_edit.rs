//! The JSON form of the OpenAI edit routes (`POST …/images/edits` under every base, Azure's
//! deployment path, and `…/async/images/edits` with `Content-Type: application/json`): the
//! parse step reads the body (within the body limits, as the GenAI routes read theirs),
//! converts it ([`crate::inbound::openai_json`]), checks `model` before any image is decoded
//! or fetched, then puts each image into the spool (data URLs decoded, http(s) URLs fetched
//! through the SSRF guard when enabled: [`super::image_urls`]). The form is then the multipart
//! route's: the same route, admit, fallbacks, translate, exchange and convert; the same
//! answers, streams and errors.

use super::attempt::{check_candidate, route_candidate};
use super::image_urls::ImageFetcher;
use super::RequestCtx;
use crate::auth::Identity;
use crate::error::GatewayError;
use crate::form::{EditForm, FormBuilder};
use crate::inbound::genai::spool_base64;
use crate::inbound::openai_json::{self, ImageSource};
use crate::server::AppState;
use crate::spool::Spool;
use pingora::proxy::Session;

/// Whether the request's body is the JSON form (its `Content-Type`), not multipart.
pub(super) fn is_json(session: &Session) -> bool {
    let content_type = session.req_header().headers.get(http::header::CONTENT_TYPE);
    openai_json::is_json(content_type.and_then(|v| v.to_str().ok()))
}

/// The head's checks of a JSON edit, before admission: its `Content-Length` within
/// `limits.max_body_bytes`; `Expect: 100-continue` answered.
pub(super) async fn check_head(state: &AppState, session: &mut Session) -> Result<(), GatewayError> {
    super::genai::check_head(state, session).await
}

/// The parse step of the JSON form: the body read whole, converted, every field checked as
/// the multipart parser checks it, `model` routed (and then reported) before any image is
/// decoded or fetched, the images in `spool` in order, then the form checked as the primary
/// candidate (its fallbacks' ids too). Used by the synchronous and the async routes.
pub(super) async fn read_form(
    state: &AppState,
    session: &mut Session,
    ctx: &mut RequestCtx,
    identity: &Identity,
    (preset_model, spool): (Option<(&str, &str)>, &mut Spool),
) -> Result<EditForm, GatewayError> {
    let limits = &state.config.limits;
    let body = super::genai::read_body(state, session, ctx).await?;
    let edit = openai_json::parse(&body)?;
    let mut builder = FormBuilder::new(limits);
    if let Some((provider, model)) = preset_model {
        builder.preset_model(provider, model);
    }
    let named = edit.apply_fields(&mut builder)?;
    let (provider, model) = match (preset_model, named) {
        (Some((p, m)), _) => (p.to_string(), m.to_string()),
        (None, Some(named)) => named,
        (None, None) => return Err(GatewayError::invalid("model", "model is required (provider/model)")),
    };
    if let Err(e) = route_candidate(state, identity, &provider, &model) {
        if let GatewayError::ProviderBlocked(p) = &e {
            ctx.provider = Some(p.clone());
        }
        return Err(e);
    }
    ctx.provider = Some(provider);
    ctx.model = Some(model);
    let mut fetcher = None;
    let images = edit
        .images
        .iter()
        .map(|(param, source)| (param.as_str(), "image[]", source));
    let mask = edit.mask.iter().map(|source| ("mask.image_url", "mask", source));
    for (param, field, source) in images.chain(mask) {
        let stored = match source {
            ImageSource::Data(image) => spool_base64(&mut builder, spool, field, image),
            ImageSource::Url(url) => {
                let config = &limits.fetch_image_urls;
                if !config.enabled {
                    return Err(GatewayError::invalid(
                        param,
                        "images by http(s) URL are not fetched by this gateway (limits.fetch_image_urls): send a data: URL",
                    ));
                }
                let fetcher = match &mut fetcher {
                    Some(f) => f,
                    None => fetcher.insert(ImageFetcher::new(config)?),
                };
                fetch_into(fetcher, (url, param, field), &mut builder, spool).await
            }
        };
        stored.map_err(|e| named_in_json(e, param))?;
    }
    // The images are in the spool now: the body's memory goes before anything is sent.
    drop(edit);
    drop(body);
    let form = builder.finish()?;
    state.router.check_fallbacks(&form)?;
    check_candidate(state, identity, &form)?;
    Ok(form)
}

/// An error the form's checks raised about a file part (`image[]`, `mask`), renamed to the
/// JSON body's parameter of that image (`images[1].image_url`, `mask.image_url`).
fn named_in_json(e: GatewayError, json_param: &str) -> GatewayError {
    let is_part = |p: &Option<String>| matches!(p.as_deref(), Some("image" | "image[]" | "mask"));
    match e {
        GatewayError::InvalidRequest { param, message } if is_part(&param) => GatewayError::InvalidRequest {
            param: Some(json_param.to_string()),
            message,
        },
        GatewayError::PayloadTooLarge { param, what, limit } if is_part(&param) => GatewayError::PayloadTooLarge {
            param: Some(json_param.to_string()),
            what,
            limit,
        },
        other => other,
    }
}

/// One image by URL into `spool` as the file part `field`, checked by `builder` piece by piece.
async fn fetch_into(
    fetcher: &ImageFetcher<'_>,
    (url, param, field): (&str, &str, &str),
    builder: &mut FormBuilder<'_>,
    spool: &mut Spool,
) -> Result<(), GatewayError> {
    if !builder.file_start(field, None, None, spool.len())? {
        return Ok(());
    }
    let mut image = fetcher.open(url, param).await?;
    while let Some(chunk) = image.next_chunk().await? {
        builder.file_chunk(&chunk)?;
        spool
            .append(chunk)
            .map_err(|e| GatewayError::Internal(format!("spool write failed: {e}")))?;
    }
    if builder.file_end()?.is_none() {
        return Err(GatewayError::invalid(param, "the image fetched is empty"));
    }
    Ok(())
}
