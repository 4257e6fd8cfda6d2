//! Activations quantized to 8 bits per block of 32 for the fast CPU matmul,
//! and the scalar reference dot products of Q4_0, Q4_1 and Q8_0 weight rows
//! against them: the specification the SIMD kernels in
//! `backend/cpu/simd/` are tested against.
//!
//! This is an in-memory format only (never written to a file), so unlike
//! ggml's Q8_0/Q8_1 the scale is kept as f32 and the layout is
//! structure-of-arrays per row: `qs` (32 `i8` per block), `d` (one f32 scale
//! per block) and `s = d · Σ qs` (one f32 per block, which Q4_1's offset term
//! needs, as ggml's Q8_1 keeps it).
//!
//! Quantization: `d = max|x| / 127`, `q = round_ties_even(x / d)` computed as
//! `x · (1/d)`. Every step is one IEEE f32 operation, so the SIMD quantizers
//! give the same bytes as [`quantize_row_ref`].
//!
//! The dot products split each block's sum into an exact integer part
//! `Σ qw·qx` (an `i32`) and f32 scales: `Σ_b (dw·dx)·isum_b`, accumulated in
//! block order, plus (Q4_1) `Σ_b mw·s_b` accumulated separately. SIMD kernels
//! compute the integer parts exactly and may sum the f32 terms in another
//! order; they are held to 1e-4 of `Σ |terms|` (ggml's test-quantize-fns
//! budget for SIMD vs reference).

use crate::quants::float::f16_le_to_f32;

/// Elements per activation block.
pub const QK8_ACT: usize = 32;

/// Quantizes one activation row: `x.len()` (a multiple of 32) values into
/// `qs` (same length), `d` and `s` (`x.len() / 32` each).
pub fn quantize_row_ref(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
    debug_assert!(x.len().is_multiple_of(QK8_ACT));
    debug_assert_eq!(qs.len(), x.len());
    debug_assert_eq!(d.len(), x.len() / QK8_ACT);
    debug_assert_eq!(s.len(), x.len() / QK8_ACT);
    for (((xb, qb), db), sb) in x
        .chunks_exact(QK8_ACT)
        .zip(qs.chunks_exact_mut(QK8_ACT))
        .zip(d.iter_mut())
        .zip(s.iter_mut())
    {
        quantize_block(xb, qb, db, sb);
    }
}

/// One block of [`quantize_row_ref`]. `#[inline(always)]` so that SIMD
/// callers compiled with wider target features vectorize it; the arithmetic
/// is the same IEEE operations either way.
#[inline(always)]
pub(crate) fn quantize_block(xb: &[f32], qb: &mut [i8], db: &mut f32, sb: &mut f32) {
    let mut amax = 0.0f32;
    for &v in xb {
        amax = amax.max(v.abs());
    }
    let d = amax / 127.0;
    let id = if d == 0.0 { 0.0 } else { 1.0 / d };
    let mut sum = 0i32;
    for (q, &v) in qb.iter_mut().zip(xb) {
        // |v · id| ≤ 127 (plus rounding of id), so the cast never saturates
        // for finite input; NaN casts to 0.
        let r = (v * id).round_ties_even() as i8;
        *q = r;
        sum += r as i32;
    }
    *db = d;
    *sb = d * sum as f32;
}

/// Integer dot of 32 weight quants (already signed) with 32 activation quants.
#[inline(always)]
fn isum(w: impl Iterator<Item = i32>, x: &[i8]) -> i32 {
    w.zip(x).map(|(a, &b)| a * b as i32).sum()
}

/// The 32 quants of a Q4 block, as stored: low nibbles are elements 0..16,
/// high nibbles 16..32.
#[inline(always)]
fn nibbles(qs: &[u8]) -> impl Iterator<Item = i32> + '_ {
    qs.iter()
        .map(|&b| (b & 0x0f) as i32)
        .chain(qs.iter().map(|&b| (b >> 4) as i32))
}

/// Σ w·x for a Q4_0 row (`w`, 18 bytes per block) against quantized
/// activations: `Σ_b (dw·dx) · Σ_j (qw_j − 8)·qx_j`.
pub fn vec_dot_q4_0_ref(w: &[u8], qs: &[i8], d: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for ((b, xq), &dx) in w.chunks_exact(18).zip(qs.chunks_exact(QK8_ACT)).zip(d) {
        let dw = f16_le_to_f32([b[0], b[1]]);
        let i = isum(nibbles(&b[2..18]).map(|q| q - 8), xq);
        sum += (dw * dx) * i as f32;
    }
    sum
}

/// Σ w·x for a Q4_1 row (20 bytes per block): `Σ_b (dw·dx)·Σ qw·qx` plus,
/// summed separately, `Σ_b mw · s_b`.
pub fn vec_dot_q4_1_ref(w: &[u8], qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    let (mut sum, mut msum) = (0.0f32, 0.0f32);
    for (((b, xq), &dx), &sx) in w
        .chunks_exact(20)
        .zip(qs.chunks_exact(QK8_ACT))
        .zip(d)
        .zip(s)
    {
        let dw = f16_le_to_f32([b[0], b[1]]);
        let mw = f16_le_to_f32([b[2], b[3]]);
        let i = isum(nibbles(&b[4..20]), xq);
        sum += (dw * dx) * i as f32;
        msum += mw * sx;
    }
    sum + msum
}

/// Σ w·x for a Q8_0 row (34 bytes per block): `Σ_b (dw·dx)·Σ qw·qx`.
pub fn vec_dot_q8_0_ref(w: &[u8], qs: &[i8], d: &[f32]) -> f32 {
    let mut sum = 0.0f32;
    for ((b, xq), &dx) in w.chunks_exact(34).zip(qs.chunks_exact(QK8_ACT)).zip(d) {
        let dw = f16_le_to_f32([b[0], b[1]]);
        let i = isum(b[2..34].iter().map(|&q| q as i8 as i32), xq);
        sum += (dw * dx) * i as f32;
    }
    sum
}

/// Σ |terms| of the reference sum, the scale SIMD kernels' errors are
/// measured against (see the module docs).
pub fn dot_magnitude(
    ty: crate::quants::GgmlType,
    w: &[u8],
    qs: &[i8],
    d: &[f32],
    s: &[f32],
) -> f32 {
    use crate::quants::GgmlType;
    let mut mag = 0.0f32;
    match ty {
        GgmlType::Q4_0 => {
            for ((b, xq), &dx) in w.chunks_exact(18).zip(qs.chunks_exact(QK8_ACT)).zip(d) {
                let dw = f16_le_to_f32([b[0], b[1]]);
                let i = isum(nibbles(&b[2..18]).map(|q| q - 8), xq);
                mag += (dw * dx * i as f32).abs();
            }
        }
        GgmlType::Q4_1 => {
            for (((b, xq), &dx), &sx) in w
                .chunks_exact(20)
                .zip(qs.chunks_exact(QK8_ACT))
                .zip(d)
                .zip(s)
            {
                let dw = f16_le_to_f32([b[0], b[1]]);
                let mw = f16_le_to_f32([b[2], b[3]]);
                let i = isum(nibbles(&b[4..20]), xq);
                mag += (dw * dx * i as f32).abs() + (mw * sx).abs();
            }
        }
        GgmlType::Q8_0 => {
            for ((b, xq), &dx) in w.chunks_exact(34).zip(qs.chunks_exact(QK8_ACT)).zip(d) {
                let dw = f16_le_to_f32([b[0], b[1]]);
                let i = isum(b[2..34].iter().map(|&q| q as i8 as i32), xq);
                mag += (dw * dx * i as f32).abs();
            }
        }
        _ => {}
    }
    mag
}
