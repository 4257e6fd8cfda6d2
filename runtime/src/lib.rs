//! tern-runtime: load GGUF models and run them.
//!
//! The crate owns GGUF reading and writing (`gguf`), tensor element types and
//! their reference kernels (`quants`), model configuration and the forward
//! pass (`model`), the backend trait and its CPU implementation (`backend`),
//! and the KV cache. Nothing here knows about the quantizer, speculative
//! decoding or the CLI; they build on this crate.

pub mod error;
pub mod gguf;
pub mod quants;

pub use error::{Error, Result};
