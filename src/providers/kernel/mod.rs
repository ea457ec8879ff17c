//! The provider kernel: the wire helpers that more than one adapter uses, so that adapters
//! depend on the kernel (and on their own submodules) and never on each other. Each file is one
//! topic:
//!
//! - [`percent`]: percent encoding of path segments (models, deployments), and decoding.
//! - [`post`]: the JSON `POST` head and the credential header.
//! - [`multipart`]: the multipart body writer, its head and boundary.
//! - [`images_api`]: the OpenAI Images API's edit body and answer conversion (the unified
//!   format; kinds `openai`, `azure`, `xai`).
//! - [`jsonbody`]: JSON bodies with images inlined as base64 straight from the spool.
//! - [`unified`]: the unified answer written from the images found in a provider's answer.
//! - [`errors`]: provider error answers and the no-image refusal.
//! - [`size`]: `WxH` sizes and the nearest aspect ratio.
//! - [`masks`]: the unified mask checked and converted to a provider's convention.
//! - [`polling`]: follow-ups of submit-then-poll providers and their job status.
//! - [`time`]: timestamps from the wall time the gateway passes in.
//!
//! Everything here is pure (no I/O, no clock) and runs on the calling thread while a request is
//! built or an answer converted. What only the Google kinds share lives in
//! [`super::google`], not here.

pub mod errors;
pub mod images_api;
pub mod jsonbody;
pub mod masks;
pub mod multipart;
pub mod percent;
pub mod polling;
pub mod post;
pub mod size;
pub mod time;
pub mod unified;
