//! Wire codecs shared by providers: pure, synchronous, no I/O.

pub mod base64;
pub mod sse;
