//! Models: configuration from GGUF metadata, weight loading by tensor name,
//! and the forward pass of each architecture family (one file per family;
//! variants are config flags, not copies).

mod config;
mod llama;
mod weights;

pub use config::{Arch, Config};
pub use llama::{LlamaModel, RopePair, State};
pub use weights::{LayerWeights, Weights};
