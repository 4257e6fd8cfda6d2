//! Models: configuration from GGUF metadata, weight loading by tensor name,
//! the forward pass of each architecture family (one file per family;
//! variants are config flags, not copies), and block-by-block calibration
//! runs for the quantizer (`calib.rs`).

pub mod calib;
mod config;
mod llama;
mod weights;

pub use calib::{BlockRunner, LinearInput};
pub use config::{Arch, Config};
pub use llama::{LlamaModel, RopePair, State};
pub use weights::{LayerWeights, Weights};
