//! Tensor element types: GGML's block layouts, scalar reference
//! (de)quantization and dot products (stub: being written).

mod types;

pub use types::GgmlType;
