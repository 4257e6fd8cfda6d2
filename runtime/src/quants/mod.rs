//! Tensor element types: GGML's block layouts, scalar reference
//! (de)quantization and dot products (stub: being written).

mod types;

pub use types::GgmlType;

// ---- temporary shim until the quant kernels land (replaced on merge) -------
use crate::error::Result;
pub struct TypeKernels {
    pub ty: GgmlType,
    pub dequantize_row: fn(&[u8], &mut [f32]),
    pub vec_dot: fn(&[u8], &[f32]) -> f32,
}
fn deq_f32(src: &[u8], dst: &mut [f32]) {
    for (d, c) in dst.iter_mut().zip(src.chunks_exact(4)) {
        *d = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
}
fn dot_f32(src: &[u8], x: &[f32]) -> f32 {
    let mut v = vec![0.0; x.len()];
    deq_f32(src, &mut v);
    v.iter().zip(x).map(|(a, b)| a * b).sum()
}
static F32K: TypeKernels = TypeKernels {
    ty: GgmlType::F32,
    dequantize_row: deq_f32,
    vec_dot: dot_f32,
};
pub fn kernels(ty: GgmlType) -> Option<&'static TypeKernels> {
    (ty == GgmlType::F32).then_some(&F32K)
}
pub fn dequantize_row(_ty: GgmlType, src: &[u8], dst: &mut [f32]) -> Result<()> {
    deq_f32(src, dst);
    Ok(())
}
