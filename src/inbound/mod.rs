//! Inbound formats other than the OpenAI multipart edit: pure conversions from a client's
//! native request body to the unified edit (the [`crate::form::EditForm`] the multipart parser
//! produces, its images in the spool), and from the unified answer back to the client's shape.
//! The server glue (`src/server/gateway/genai.rs`, `bedrock.rs`) reads the body and runs the usual pipeline
//! between the two.

pub mod bedrock;
pub mod genai;
pub mod openai_json;
