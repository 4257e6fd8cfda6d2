//! tern-quant: the offline quantizer's algorithm core.
//!
//! This crate owns GPTQ and prefix-aware GPTQ (P-GPTQ: the first positions
//! of every calibration sequence are left out of the Hessian), the
//! round-to-nearest baseline, and packing the results into GGUF tensor
//! types, both GGML's own (Q4_0, Q4_1, Q8_0) and tern's packed GPTQ types
//! (`tern_runtime::quants::tern_gptq`). See
//! `../shared/research/algorithms.md` §4 and the tern-quantize issue.
//!
//! # Layout
//! - `grid.rs`: [`Grid`], the target formats and their exact arithmetic
//!   (scale choice, nearest code, decoded value), the Hessian-weighted
//!   scale search GPTQ uses, and llama.cpp's importance-weighted Q4_0 rule
//!   (`make_qx_quants`) reproduced bit for bit.
//! - `hessian.rs`: [`Hessian`], `H = 2/N Σ x xᵀ` accumulated in f64.
//! - `matrix.rs`: [`QuantizedMatrix`], codes and per-group scales, decoding
//!   and GGUF bytes.
//! - `gptq.rs`: [`quantize`] — RTN, importance-weighted RTN
//!   ([`weighted_rtn`]) and GPTQ (lazy batches, act-order with static
//!   groups, dampening) and the [`LayerReport`].
//! - `refit.rs`: the joint least-squares refit of a row's group scales
//!   under the full Hessian once GPTQ has fixed its codes.
//! - `hf.rs`: [`hf`], Hugging Face GPTQ export (qweight, qzeros, scales,
//!   g_idx) and a small safetensors writer.
//!
//! It depends on `tern-runtime` for the block layouts; nothing in the
//! runtime depends on it.

#![warn(missing_docs)]

mod gptq;
mod grid;
mod hessian;
pub mod hf;
mod matrix;
mod refit;

pub mod calib;
pub mod pipeline;
pub mod pipeline_output;
pub mod report;

pub use gptq::{quantize, weighted_rtn, GptqParams, LayerReport, ScaleSearch, Scheme};
pub use grid::{ggml_importance, Grid, GroupParams};
pub use hessian::Hessian;
pub use matrix::QuantizedMatrix;

/// Why a matrix could not be quantized.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum QuantError {
    /// The matrix shape does not fit the weights, the grid or the Hessian.
    #[error("bad shape: {0}")]
    BadShape(String),
    /// The grid itself is not one tern can store (bits or group size).
    #[error("unsupported grid: {0}")]
    BadGrid(String),
    /// A weight is NaN or infinite, or too large for the f16 scales.
    #[error("bad weights: {0}")]
    BadWeights(String),
    /// The Hessian is missing, empty, malformed or not finite.
    #[error("bad Hessian: {0}")]
    BadHessian(String),
    /// The parameters are out of range (damping, block size).
    #[error("bad parameters: {0}")]
    BadParams(String),
    /// Cholesky failed even after raising the damping.
    #[error("the Hessian is not positive definite even with damping {damp}")]
    NotPositiveDefinite {
        /// The last relative damping tried.
        damp: f64,
    },
}
