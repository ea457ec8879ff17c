//! The translate step of an attempt built from the complete form: first what the candidate's
//! adapter needs prepared from the upload (the mask converted to its convention), then the
//! adapter's pure build. Runs for every attempt (the primary sent from the spool, each retry,
//! each fallback).
//!
//! A mask is checked from its header (and the first image's) on the request's task, then
//! decoded and converted on the decode pool (blocking threads, bounded), once per request and
//! convention: the result is kept with the spool, so retries and fallbacks reuse it.

use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::{ConvertedMask, MaskConvention};
use crate::providers::kernel::masks::{mask_error, MaskJob};
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
        Some(convention) if form.mask.is_some() => Some(converted_mask(state, form, spool, convention).await?),
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
/// pool (counted in `refract_image_decodes_total`).
async fn converted_mask(
    state: &AppState,
    form: &EditForm,
    spool: &Spool,
    convention: MaskConvention,
) -> Result<Arc<ConvertedMask>, GatewayError> {
    spool
        .converted_masks()
        .get_or_convert(convention, || async {
            let Some(job) = MaskJob::check(form, spool, state.decoder.max_pixels())? else {
                return Err(GatewayError::Internal("no mask to convert".into()));
            };
            let converted = state
                .decoder
                .run(move || job.convert(convention))
                .await
                .map_err(mask_error)??;
            state.metrics.image_decoded();
            Ok(Arc::new(converted))
        })
        .await
}
