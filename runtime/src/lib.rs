//! tern-runtime: load GGUF models and run them.
//!
//! The crate owns GGUF reading and writing (`gguf`), tensor element types and
//! their reference kernels (`quants`), model configuration and the forward
//! pass (`model`), the backend trait and its CPU implementation (`backend`),
//! and sessions with their KV caches (`session`). Nothing here knows about
//! the quantizer, speculative decoding or the CLI; they build on this crate.
//!
//! ```no_run
//! use tern_runtime::{Batch, Model, ModelParams, SessionParams};
//! let model = Model::load("model.gguf", &ModelParams::default())?;
//! let mut session = model.new_session(&SessionParams { n_ctx: 512, ..Default::default() })?;
//! let logits = session.forward(&Batch::new(&[1, 504, 3458], 0))?;
//! let next = logits.row(0).unwrap().iter().enumerate()
//!     .max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
//! # Ok::<(), tern_runtime::Error>(())
//! ```

#![warn(missing_docs)]

mod api;
pub mod backend;
pub mod chat;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod model;
pub mod quants;
pub mod sampling;
pub mod session;
pub mod tokenizer;

pub use api::{Device, Model, ModelParams, Session, SessionParams};
pub use backend::KvType;
pub use chat::{ChatTemplate, Message};
pub use error::{Error, Result};
pub use generate::{
    CancelToken, Chat, Completion, FinishReason, GenerateParams, Generation, Piece, Usage,
};
pub use sampling::{Sampler, SamplerParams};
pub use session::{Batch, Logits};
pub use tokenizer::{StreamDecoder, Tokenizer};
