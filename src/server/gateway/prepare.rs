//! The translate step of an attempt built from the complete form: first what the candidate's
//! adapter needs prepared from the upload (the mask converted to its convention), then the
//! adapter's pure build. Runs for every attempt (the primary sent from the spool, each retry,
//! each fallback).
//!
//! A mask is checked from its header (and the first image's) on the request's task; how it
//! marks its edit area is decided from the form or its header, or else from its pixels on the
//! decode pool (blocking threads, bounded), once per request; then it is converted there, once
//! per request and convention, unless it goes as uploaded (an alpha mask to an alpha
//! provider). Both results are kept with the spool, so retries and fallbacks reuse them.

use crate::config::ProviderKind;
use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::{ConvertedMask, MaskConvention, MaskMarks};
use crate::providers::kernel::masks::{mask_error, unread_goes_as_uploaded, MaskJob};
use crate::providers::{adapter_for, BuildScope, UpstreamRequest};
use crate::route::Target;
use crate::server::AppState;
use crate::spool::Spool;
use std::sync::Arc;

/// Builds the upstream request for `form` to `target`, converting the mask first when the
/// adapter asks for it (see the module docs). A mask refused by its checks is a 400 on `mask`,
/// before anything is decoded or sent.
pub(super) async fn build_request(
    state: &AppState,
    form: &EditForm,
    spool: &Spool,
    target: &Target,
    request_id: &str,
) -> Result<UpstreamRequest, GatewayError> {
    let adapter = adapter_for(target.provider.kind);
    let mask = match adapter.mask_convention(form, &target.model) {
        Some(convention) if form.mask.is_some() => converted_mask(state, form, spool, convention).await?,
        _ => None,
    };
    adapter.build(&BuildScope {
        form,
        spool,
        mask: mask.as_deref(),
        target,
        request_id,
        now: std::time::SystemTime::now(),
        nonce: uuid::Uuid::new_v4().as_u128(),
    })
}

/// The form's mask in `convention`: converted earlier in this request, or now on the decode
/// pool (counted in `refract_image_decodes_total`, as is a detection that read pixels);
/// `None` when it goes as uploaded. A provider of OpenAI's convention needs the mask's reading
/// first (an alpha mask is not converted); for the others, a reading the pixels must decide
/// is decided by the conversion's own decode.
async fn converted_mask(
    state: &AppState,
    form: &EditForm,
    spool: &Spool,
    convention: MaskConvention,
) -> Result<Option<Arc<ConvertedMask>>, GatewayError> {
    let masks = spool.converted_masks();
    let mut marks = masks.known_marks();
    if convention == MaskConvention::Alpha {
        marks = match mask_marks(state, form, spool).await {
            Ok(marks) => Some(marks),
            Err(_) if unread_goes_as_uploaded(form, convention) => return Ok(None),
            Err(e) => return Err(e),
        };
    }
    if marks.is_some_and(|marks| convention.takes_as_uploaded(marks)) {
        // The size checks still apply (they ran with the detection).
        return Ok(None);
    }
    masks
        .get_or_convert(convention, || async {
            let job = checked(state, form, spool)?;
            let (marks, converted) = state
                .decoder
                .run(move || job.convert(marks, convention))
                .await
                .map_err(mask_error)??;
            masks.keep_marks(marks);
            state.metrics.image_decoded();
            Ok(Arc::new(converted))
        })
        .await
        .map(Some)
}

/// How the form's mask marks its edit area: decided earlier in this request, or now (from the
/// form or the mask's header, else from its pixels on the decode pool).
async fn mask_marks(state: &AppState, form: &EditForm, spool: &Spool) -> Result<MaskMarks, GatewayError> {
    spool
        .converted_masks()
        .get_or_detect(|| async {
            let job = checked(state, form, spool)?;
            if let Some(marks) = job.marks() {
                return Ok(marks);
            }
            let marks = state.decoder.run(move || job.detect()).await.map_err(mask_error)??;
            state.metrics.image_decoded();
            Ok(marks)
        })
        .await
}

/// Whether the streamed upload of `form` to a provider of `kind` (its body sent as it arrived)
/// may end as sent: the form has no mask, or the mask goes as uploaded. Otherwise (a mask to
/// convert, or one refused: the attempt from the spool reports why) the streamed body is
/// abandoned unfinished, so the provider never acts on it, and the attempt is sent again from
/// the spool with its mask converted.
pub(super) async fn streamed_mask_fits(state: &AppState, form: &EditForm, spool: &Spool, kind: ProviderKind) -> bool {
    if form.mask.is_none() {
        return true;
    }
    let Some(convention) = adapter_for(kind).mask_convention(form, &form.model) else {
        return true;
    };
    match mask_marks(state, form, spool).await {
        Ok(marks) => convention.takes_as_uploaded(marks),
        Err(_) => unread_goes_as_uploaded(form, convention),
    }
}

/// The form's mask, checked ([`MaskJob::check`]).
fn checked(state: &AppState, form: &EditForm, spool: &Spool) -> Result<MaskJob, GatewayError> {
    MaskJob::check(form, spool, state.decoder.max_pixels())?
        .ok_or_else(|| GatewayError::Internal("no mask to convert".into()))
}
