//! The client's mask, checked, read in its convention and converted for the provider
//! ([`crate::providers::ProviderAdapter::mask_convention`]: OpenAI's alpha for the
//! OpenAI-compatible kinds, opaque black or white for Imagen, Stability, Titan/Nova, BFL Fill).
//!
//! [`MaskJob::check`] runs first, on the request's task, and reads headers only: the mask must
//! be a PNG, JPEG or WebP of the first image's size (when that image's header is readable),
//! within the pixel budget (`limits.max_image_pixels`); a mask the inbound format says is
//! OpenAI's ([`MaskSource::Alpha`]) must be able to carry transparency. Each refusal is a 400
//! naming `mask`, before anything is decoded or sent. It also decides how the mask marks its
//! edit area when the form or the header tells ([`MaskJob::marks`]: see
//! [`crate::imaging::mask`] for the rule). Then, on the decode pool: [`MaskJob::detect`] when
//! the pixels must decide, and [`MaskJob::convert`], once per request and convention. An alpha
//! mask to a provider that takes OpenAI's convention is not converted: it goes as uploaded,
//! from the spool; so does a mask the checks refuse, to such a provider
//! ([`unread_goes_as_uploaded`]).

use crate::error::GatewayError;
use crate::form::{EditForm, MaskSource};
use crate::imaging::mask::{detect_marks, marks_from_header};
use crate::imaging::{self, ConvertedMask, ImageKind, ImagingError, MaskConvention, MaskMarks};
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

/// A mask that passed [`MaskJob::check`], ready to be detected or converted (owns its reader,
/// so it can run on a blocking thread).
#[derive(Debug)]
pub struct MaskJob {
    kind: ImageKind,
    reader: SpoolReader,
    max_pixels: u64,
    marks: Option<MaskMarks>,
}

impl MaskJob {
    /// Checks the form's mask from the headers of the mask and of the first image (see the
    /// module docs); `Ok(None)` when the form has no mask.
    pub fn check(form: &EditForm, spool: &Spool, max_pixels: u64) -> Result<Option<MaskJob>, GatewayError> {
        let Some(part) = &form.mask else {
            return Ok(None);
        };
        let Some(kind) = part.kind else {
            return Err(invalid_mask(
                "the mask must be a PNG, JPEG or WebP image: with transparency, its fully transparent pixels (alpha 0) mark the area to edit; opaque, its white pixels do".into(),
            ));
        };
        let header = |range| -> Result<BufReader<SpoolReader>, GatewayError> {
            Ok(BufReader::new(spool.reader(range).map_err(spool_error)?))
        };
        let mask = imaging::dimensions(kind, header(part.range)?).map_err(mask_error)?;
        let marks = match form.mask_source {
            MaskSource::Detect => marks_from_header(&mask),
            MaskSource::Alpha if !mask.alpha => return Err(mask_error(ImagingError::MaskWithoutAlpha)),
            MaskSource::Alpha => Some(MaskMarks::Alpha),
            MaskSource::WhiteEdit => Some(MaskMarks::WhiteEdit),
            MaskSource::BlackEdit => Some(MaskMarks::BlackEdit),
        };
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
            kind,
            reader: spool.reader(part.range).map_err(spool_error)?,
            max_pixels,
            marks,
        }))
    }

    /// How the mask marks its edit area, when the form or the mask's header told; `None` when
    /// its pixels must decide ([`MaskJob::detect`]).
    pub fn marks(&self) -> Option<MaskMarks> {
        self.marks
    }

    /// How the mask marks its edit area: as [`MaskJob::marks`], else from its pixels
    /// (CPU-heavy when it decodes: the gateway runs it on its decode pool).
    pub fn detect(self) -> Result<MaskMarks, GatewayError> {
        match self.marks {
            Some(marks) => Ok(marks),
            None => detect_marks(self.kind, BufReader::new(self.reader), self.max_pixels).map_err(mask_error),
        }
    }

    /// Decodes the mask and converts it to `convention`, reading it as `marks` (else as
    /// [`MaskJob::marks`]; when neither is known, the same decode decides: see
    /// [`imaging::mask::detect_and_convert`]). Returns the reading used and the mask
    /// (CPU-heavy: the gateway runs it on its decode pool).
    pub fn convert(
        self,
        marks: Option<MaskMarks>,
        convention: MaskConvention,
    ) -> Result<(MaskMarks, ConvertedMask), GatewayError> {
        let r = BufReader::new(self.reader);
        match marks.or(self.marks) {
            Some(marks) => imaging::mask::convert_mask_from(self.kind, r, marks, convention, self.max_pixels)
                .map(|mask| (marks, mask)),
            None => imaging::mask::detect_and_convert(self.kind, r, convention, self.max_pixels),
        }
        .map_err(mask_error)
    }
}

/// Whether a mask the gateway could not check or read (not a readable image, not the first
/// image's size, over the pixel budget) goes as uploaded all the same: to a provider that
/// takes OpenAI's convention, when the client did not say the mask is opaque. Such a provider
/// always got the upload as sent, and judges it itself; a provider whose convention needs a
/// conversion gets the 400 instead.
pub fn unread_goes_as_uploaded(form: &EditForm, convention: MaskConvention) -> bool {
    convention == MaskConvention::Alpha && matches!(form.mask_source, MaskSource::Detect | MaskSource::Alpha)
}

/// Checks the form's mask, reads its convention and converts it to `convention`, on the
/// calling thread, within [`imaging::DEFAULT_MAX_PIXELS`] (tests and tools: the gateway works
/// on its decode pool). `Ok(None)` when the form has no mask, or when it goes as uploaded
/// ([`MaskConvention::takes_as_uploaded`], [`unread_goes_as_uploaded`]).
pub fn convert_now(
    form: &EditForm,
    spool: &Spool,
    convention: MaskConvention,
) -> Result<Option<ConvertedMask>, GatewayError> {
    let check = || MaskJob::check(form, spool, imaging::DEFAULT_MAX_PIXELS);
    let marks = match check().and_then(|job| job.map(MaskJob::detect).transpose()) {
        Ok(Some(marks)) => marks,
        Ok(None) => return Ok(None),
        Err(_) if unread_goes_as_uploaded(form, convention) => return Ok(None),
        Err(e) => return Err(e),
    };
    if convention.takes_as_uploaded(marks) {
        return Ok(None);
    }
    Ok(check()?
        .map(|job| job.convert(Some(marks), convention))
        .transpose()?
        .map(|(_, mask)| mask))
}
