//! The unified mask, checked and converted for the providers that want their own convention
//! (Imagen, Stability, Titan/Nova, BFL Fill: see [`crate::providers::ProviderAdapter::mask_convention`]).
//!
//! [`MaskJob::check`] runs first, on the request's task, and reads headers only: the mask must
//! be a PNG with transparency, of the first image's size (when that image's header is
//! readable: PNG, JPEG or WebP), and within the pixel budget (`limits.max_image_pixels`).
//! Each refusal is a 400 naming `mask`, before anything is decoded or sent. Then
//! [`MaskJob::convert`] decodes and converts; the gateway runs it on its decode pool, once per
//! request and convention.

use crate::error::GatewayError;
use crate::form::EditForm;
use crate::imaging::{self, ConvertedMask, ImageKind, ImagingError, MaskConvention};
use crate::spool::{Spool, SpoolReader};
use std::io::BufReader;

fn invalid_mask(message: String) -> GatewayError {
    GatewayError::InvalidRequest {
        param: Some("mask".into()),
        message,
    }
}

fn spool_error(e: std::io::Error) -> GatewayError {
    GatewayError::Internal(format!("spool read failed: {e}"))
}

/// A mask error as the client sees it: a 400 on `mask`, or a 500 for the gateway's own
/// failures (encoding, the decode pool).
pub fn mask_error(e: ImagingError) -> GatewayError {
    match e {
        ImagingError::Encode(_) | ImagingError::Worker(_) => GatewayError::Internal(format!("mask: {e}")),
        _ => invalid_mask(e.to_string()),
    }
}

/// A mask that passed [`MaskJob::check`], ready to be converted (owns its reader, so it can
/// run on a blocking thread).
#[derive(Debug)]
pub struct MaskJob {
    reader: SpoolReader,
    max_pixels: u64,
}

impl MaskJob {
    /// Checks the form's mask from the headers of the mask and of the first image (see the
    /// module docs); `Ok(None)` when the form has no mask.
    pub fn check(form: &EditForm, spool: &Spool, max_pixels: u64) -> Result<Option<MaskJob>, GatewayError> {
        let Some(part) = &form.mask else {
            return Ok(None);
        };
        if part.kind != Some(ImageKind::Png) {
            return Err(invalid_mask(
                "the mask must be a PNG with an alpha channel whose fully transparent pixels (alpha 0) mark the area to edit".into(),
            ));
        }
        let header = |range| -> Result<BufReader<SpoolReader>, GatewayError> {
            Ok(BufReader::new(spool.reader(range).map_err(spool_error)?))
        };
        let mask = imaging::dimensions(ImageKind::Png, header(part.range)?).map_err(mask_error)?;
        if !mask.alpha {
            return Err(mask_error(ImagingError::MaskWithoutAlpha));
        }
        // The first image's size, when its header can be read (a broken image is the
        // provider's to refuse).
        if let Some(first) = form.images.first() {
            if let Some(kind) = first.kind {
                if let Ok(image) = imaging::dimensions(kind, header(first.range)?) {
                    if (image.width, image.height) != (mask.width, mask.height) {
                        return Err(mask_error(ImagingError::MaskSize {
                            mw: mask.width,
                            mh: mask.height,
                            w: image.width,
                            h: image.height,
                        }));
                    }
                }
            }
        }
        if mask.within(max_pixels).is_err() {
            return Err(invalid_mask(format!(
                "the mask is {}x{} ({} pixels), over the limit of {max_pixels} pixels (limits.max_image_pixels)",
                mask.width,
                mask.height,
                mask.pixels()
            )));
        }
        Ok(Some(MaskJob {
            reader: spool.reader(part.range).map_err(spool_error)?,
            max_pixels,
        }))
    }

    /// Decodes the mask and converts it to `convention` (CPU-heavy: the gateway runs it on its
    /// decode pool).
    pub fn convert(self, convention: MaskConvention) -> Result<ConvertedMask, GatewayError> {
        imaging::mask::convert_mask_from(BufReader::new(self.reader), convention, self.max_pixels).map_err(mask_error)
    }
}

/// Checks and converts the form's mask on the calling thread, within
/// [`imaging::DEFAULT_MAX_PIXELS`] (tests and tools: the gateway converts on its decode pool).
pub fn convert_now(
    form: &EditForm,
    spool: &Spool,
    convention: MaskConvention,
) -> Result<Option<ConvertedMask>, GatewayError> {
    MaskJob::check(form, spool, imaging::DEFAULT_MAX_PIXELS)?
        .map(|job| job.convert(convention))
        .transpose()
}
