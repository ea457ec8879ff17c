//! refract: an image-edit AI gateway on Pingora.
//!
//! A request to `POST /v1/images/edits` runs through a chain of small plugins, each a module
//! here: [`auth`] (who is calling) → [`form`] (parse and validate the multipart body on the fly
//! into the [`spool`]) → [`route`] (provider and key) → [`admission`] (admit the attempt) → [`providers`] (translate to the
//! provider's wire format) → `server::exchange` (one upstream exchange through Pingora's pooled
//! connector) → [`providers`] again (convert the answer) → [`pricing`] (its cost) → [`metrics`] (account). Only
//! [`server`] touches Pingora; everything else is plain Rust over `http` heads and bytes.

#![warn(missing_docs)]

pub mod access;
pub mod admission;
pub mod auth;
pub mod codec;
pub mod config;
pub mod error;
pub mod form;
pub mod governance;
pub mod imaging;
pub mod inbound;
pub mod kind;
pub mod metrics;
pub mod pricing;
pub mod providers;
pub mod route;
pub mod server;
pub mod simulator;
pub mod spec;
pub mod spool;
pub mod ssrf;
pub mod state;
pub mod telemetry;
