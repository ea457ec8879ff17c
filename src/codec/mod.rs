//! Wire codecs shared by providers: pure, synchronous, no I/O.

pub mod sse;
