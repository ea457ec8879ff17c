//! The adversarial suite: each finding of the hostile-client review replayed against a running
//! gateway, asserting the bounded outcome (the answer delivered, the connection closed, memory
//! and descriptors back near idle). One module per area.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

#[path = "../common/mod.rs"]
mod common;
mod connections;
mod early_answers;
mod images;
mod parser;
mod simulator;
mod uploads;
