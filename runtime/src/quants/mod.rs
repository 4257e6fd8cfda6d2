//! Tensor element types: GGML's block layouts, the scalar reference kernels
//! for each type tern computes with, and the registry that maps a
//! [`GgmlType`] to those kernels.
//!
//! # Layout
//! - [`GgmlType`] (`types.rs`): every type GGUF files may carry, sizes only.
//! - [`fp32`], [`fp16`], [`bf16`]: plain float rows (`float.rs`).
//! - [`q8_0`]: `x = d·q`, 32 per block (`q8_0.rs`).
//! - [`q4_0`], [`q4_1`]: `x = d·(q−8)` and `x = d·q + m` (`q4.rs`).
//! - [`tern_gptq`]: tern's packed GPTQ types `TERN_Q{2,3,4,8}_G{32,64,128}`,
//!   `x = d·q + m` with codes bit-packed LSB-first (`tern_gptq.rs`).
//! - [`q8_act`]: activations quantized to 8 bits for the fast CPU matmul,
//!   and the reference dots of Q4_0/Q4_1/Q8_0 rows against them.
//!
//! Each type module has the same three functions:
//! `dequantize_row_ref(src: &[u8], dst: &mut [f32])`,
//! `vec_dot_ref(src: &[u8], x: &[f32]) -> f32` and
//! `quantize_row_ref(src: &[f32], dst: &mut [u8])`. They are scalar and
//! written to be obviously correct: they are the specification faster
//! (SIMD, GPU) kernels are tested against. Dequantization and quantization
//! are bit-identical to gguf-py 0.19.0's `gguf.quants` (itself a port of
//! ggml's reference quantizers) for finite inputs; the fixture tests in
//! `runtime/tests/quants_gguf_py.rs` hold them to that.
//!
//! # Registry
//! Model code never names a type's functions: it asks [`kernels`] for a
//! [`TypeKernels`] and calls through its function pointers, so adding a type
//! means adding a module and one row to the registry table, nothing else.
//! The raw pointers trust their caller about lengths (the precondition is on
//! [`TypeKernels`]); [`dequantize_row`], [`vec_dot`] and [`quantize_row`]
//! check lengths first and return [`Error::BadLength`] rather than panic.

mod float;
mod q4;
pub mod q8_0;
pub mod q8_act;
pub mod tern_gptq;
mod types;

pub use float::{bf16, fp16, fp32};
pub use q4::{q4_0, q4_1};
pub use types::GgmlType;

use crate::{Error, Result};

/// Decodes a row: `(src bytes, dst elements)`.
pub type DequantizeRowFn = fn(&[u8], &mut [f32]);
/// Σ w·x: `(weight row bytes, activations) -> dot`.
pub type VecDotFn = fn(&[u8], &[f32]) -> f32;
/// Encodes a row: `(src elements, dst bytes)`.
pub type QuantizeRowFn = fn(&[f32], &mut [u8]);

/// The kernels tern has for one element type.
///
/// Every function pointer has the same precondition for a row of `n`
/// elements: `n` is a multiple of `ty.block_size()` and the byte slice is
/// exactly `ty.row_bytes(n)` long (for `vec_dot`, `n = x.len()`). Violating
/// it is a logic error: debug builds panic, release builds process only the
/// whole blocks both slices cover. Hot loops that have already validated a
/// tensor call these directly; everything else goes through the checked
/// [`dequantize_row`], [`vec_dot`] and [`quantize_row`].
#[derive(Debug)]
#[non_exhaustive]
pub struct TypeKernels {
    /// The type these kernels are for.
    pub ty: GgmlType,
    /// Decodes a row of `dst.len()` elements from `src`.
    pub dequantize_row: DequantizeRowFn,
    /// Σ w·x over a row of `x.len()` elements stored in `src`.
    pub vec_dot: VecDotFn,
    /// Encodes `src` into `dst`, or `None` when tern cannot produce the type.
    pub quantize_row: Option<QuantizeRowFn>,
}

/// The registry row of tern's packed GPTQ type `TERN_Q{bits}_G{group}`.
macro_rules! tern_row {
    ($ty:ident, $bits:literal, $group:literal) => {
        TypeKernels {
            ty: GgmlType::$ty,
            dequantize_row: tern_gptq::dequantize_row_ref::<$bits, $group>,
            vec_dot: tern_gptq::vec_dot_ref::<$bits, $group>,
            quantize_row: Some(tern_gptq::quantize_row_ref::<$bits, $group>),
        }
    };
}

/// One registry row per type tern computes with. Adding a type is adding
/// its module and a row here.
static REGISTRY: [TypeKernels; 18] = [
    TypeKernels {
        ty: GgmlType::F32,
        dequantize_row: fp32::dequantize_row_ref,
        vec_dot: fp32::vec_dot_ref,
        quantize_row: Some(fp32::quantize_row_ref),
    },
    TypeKernels {
        ty: GgmlType::F16,
        dequantize_row: fp16::dequantize_row_ref,
        vec_dot: fp16::vec_dot_ref,
        quantize_row: Some(fp16::quantize_row_ref),
    },
    TypeKernels {
        ty: GgmlType::BF16,
        dequantize_row: bf16::dequantize_row_ref,
        vec_dot: bf16::vec_dot_ref,
        quantize_row: Some(bf16::quantize_row_ref),
    },
    TypeKernels {
        ty: GgmlType::Q8_0,
        dequantize_row: q8_0::dequantize_row_ref,
        vec_dot: q8_0::vec_dot_ref,
        quantize_row: Some(q8_0::quantize_row_ref),
    },
    TypeKernels {
        ty: GgmlType::Q4_0,
        dequantize_row: q4_0::dequantize_row_ref,
        vec_dot: q4_0::vec_dot_ref,
        quantize_row: Some(q4_0::quantize_row_ref),
    },
    TypeKernels {
        ty: GgmlType::Q4_1,
        dequantize_row: q4_1::dequantize_row_ref,
        vec_dot: q4_1::vec_dot_ref,
        quantize_row: Some(q4_1::quantize_row_ref),
    },
    tern_row!(TERN_Q2_G32, 2, 32),
    tern_row!(TERN_Q2_G64, 2, 64),
    tern_row!(TERN_Q2_G128, 2, 128),
    tern_row!(TERN_Q3_G32, 3, 32),
    tern_row!(TERN_Q3_G64, 3, 64),
    tern_row!(TERN_Q3_G128, 3, 128),
    tern_row!(TERN_Q4_G32, 4, 32),
    tern_row!(TERN_Q4_G64, 4, 64),
    tern_row!(TERN_Q4_G128, 4, 128),
    tern_row!(TERN_Q8_G32, 8, 32),
    tern_row!(TERN_Q8_G64, 8, 64),
    tern_row!(TERN_Q8_G128, 8, 128),
];

/// The kernels for `ty`, or `None` when tern cannot compute with it (the
/// type is known to the GGUF reader but has no kernels yet).
pub fn kernels(ty: GgmlType) -> Option<&'static TypeKernels> {
    REGISTRY.iter().find(|k| k.ty == ty)
}

/// Every type tern has kernels for, in registry order.
pub fn supported_types() -> impl Iterator<Item = GgmlType> {
    REGISTRY.iter().map(|k| k.ty)
}

/// The registry row for `ty`, or `Error::UnsupportedType`.
fn kernels_or_err(ty: GgmlType) -> Result<&'static TypeKernels> {
    kernels(ty).ok_or_else(|| Error::UnsupportedType {
        tensor: "<row>".to_string(),
        ty,
        backend: "reference",
    })
}

/// Checks that `n` elements are whole blocks of `ty` and that `bytes` is
/// exactly their size; `what` says which call is checking.
fn check_row(ty: GgmlType, what: &str, n: usize, bytes: usize) -> Result<()> {
    let n = n as u64;
    let block = ty.block_size();
    let Some(expected) = ty.row_bytes(n) else {
        // Not whole blocks: report the element count the row would need.
        return Err(Error::BadLength {
            what: format!("{what}: {ty} element count (must be a multiple of {block})"),
            expected: n.div_ceil(block) * block,
            got: n,
        });
    };
    if expected != bytes as u64 {
        return Err(Error::BadLength {
            what: format!("{what}: {ty} bytes for a row of {n} elements"),
            expected,
            got: bytes as u64,
        });
    }
    Ok(())
}

/// Decodes a row of `ty` into `dst.len()` f32 values.
///
/// Errors: `UnsupportedType` when tern has no kernels for `ty`;
/// `BadLength` when `dst.len()` is not whole blocks or `src` is not exactly
/// `ty.row_bytes(dst.len())` bytes.
pub fn dequantize_row(ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    let k = kernels_or_err(ty)?;
    check_row(ty, "dequantize_row", dst.len(), src.len())?;
    (k.dequantize_row)(src, dst);
    Ok(())
}

/// Σ w·x between a row of `ty` (in `src`) and `x.len()` f32 activations.
///
/// Errors: as [`dequantize_row`], with `x.len()` as the element count.
pub fn vec_dot(ty: GgmlType, src: &[u8], x: &[f32]) -> Result<f32> {
    let k = kernels_or_err(ty)?;
    check_row(ty, "vec_dot", x.len(), src.len())?;
    Ok((k.vec_dot)(src, x))
}

/// Encodes `src.len()` f32 values as a row of `ty` into `dst`.
///
/// Errors: `UnsupportedType` when tern cannot produce `ty`; `BadLength` when
/// `src.len()` is not whole blocks or `dst` is not exactly
/// `ty.row_bytes(src.len())` bytes.
pub fn quantize_row(ty: GgmlType, src: &[f32], dst: &mut [u8]) -> Result<()> {
    let k = kernels_or_err(ty)?;
    let Some(quantize) = k.quantize_row else {
        return Err(Error::UnsupportedType {
            tensor: "<row>".to_string(),
            ty,
            backend: "reference quantizer",
        });
    };
    check_row(ty, "quantize_row", src.len(), dst.len())?;
    quantize(src, dst);
    Ok(())
}

#[cfg(test)]
mod tests;
