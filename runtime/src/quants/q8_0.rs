//! Q8_0 (GGML id 8): blocks of 32 signed bytes with one f16 scale.
//!
//! Layout (34 bytes, little-endian): `d: f16`, then `qs: [i8; 32]`.
//! Element j of the block is `x_j = d · q_j` (ggml `dequantize_row_q8_0`).
//!
//! Quantization follows ggml's `quantize_row_q8_0_ref`, which gguf-py 0.19.0
//! reproduces bit for bit: `d = amax / 127`, `id = 1/d` (0 when d is 0),
//! `q_j = round_half_away(x_j · id)`, and only then is `d` narrowed to f16.
//! Every step is a single f32 operation, so the Rust code below, which does
//! the same operations in the same order, gives the same bits.

use half::f16;

use super::float::{f16_le_to_f32, f32_to_f16_le};

/// Elements per Q8_0 block.
pub const QK8_0: usize = 32;

/// One Q8_0 block, as GGML lays it out on disk.
///
/// The struct is for clarity and size checking; rows are read with
/// [`BlockQ8_0::read`] from byte slices, so unaligned mmap data is fine.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BlockQ8_0 {
    /// Scale.
    pub d: f16,
    /// Quants, `x_j = d · qs[j]`.
    pub qs: [i8; QK8_0],
}

const _: () = assert!(std::mem::size_of::<BlockQ8_0>() == 34);

impl BlockQ8_0 {
    /// Bytes per block on disk.
    pub const BYTES: usize = 34;

    /// Decodes a block from its 34 on-disk bytes.
    pub fn read(b: &[u8; Self::BYTES]) -> Self {
        let mut qs = [0i8; QK8_0];
        for (q, &byte) in qs.iter_mut().zip(&b[2..]) {
            *q = byte as i8;
        }
        BlockQ8_0 {
            d: f16::from_le_bytes([b[0], b[1]]),
            qs,
        }
    }

    /// Encodes the block as its 34 on-disk bytes.
    pub fn write(&self, out: &mut [u8; Self::BYTES]) {
        out[..2].copy_from_slice(&self.d.to_le_bytes());
        for (o, &q) in out[2..].iter_mut().zip(&self.qs) {
            *o = q as u8;
        }
    }
}

/// Dequantizes whole Q8_0 blocks: `x_j = d · q_j` in f32.
///
/// Precondition: `dst.len()` is a multiple of 32 and
/// `src.len() == dst.len() / 32 * 34` (checked in debug builds; in release a
/// mismatch converts only the whole blocks both sides have).
pub fn dequantize_row_ref(src: &[u8], dst: &mut [f32]) {
    debug_assert!(dst.len().is_multiple_of(QK8_0));
    debug_assert_eq!(src.len(), dst.len() / QK8_0 * BlockQ8_0::BYTES);
    for (b, out) in src
        .chunks_exact(BlockQ8_0::BYTES)
        .zip(dst.chunks_exact_mut(QK8_0))
    {
        let d = f16_le_to_f32([b[0], b[1]]);
        for (o, &q) in out.iter_mut().zip(&b[2..]) {
            // gguf-py computes `x * d` with x = q as f32; multiplication is
            // commutative in IEEE arithmetic, so the order does not matter.
            *o = (q as i8) as f32 * d;
        }
    }
}

/// Σ w·x for a Q8_0 row against f32 activations.
///
/// Per block the integer quants are dotted with x in f32 and scaled once:
/// `Σ_b d_b · (Σ_j q_j · x_j)`. Algebraically equal to dequantize-then-dot;
/// factoring the scale out mirrors the SIMD kernels that will be checked
/// against this.
///
/// Precondition: `x.len()` is a multiple of 32 and
/// `src.len() == x.len() / 32 * 34`.
pub fn vec_dot_ref(src: &[u8], x: &[f32]) -> f32 {
    debug_assert!(x.len().is_multiple_of(QK8_0));
    debug_assert_eq!(src.len(), x.len() / QK8_0 * BlockQ8_0::BYTES);
    let mut sum = 0.0f32;
    for (b, xs) in src
        .chunks_exact(BlockQ8_0::BYTES)
        .zip(x.chunks_exact(QK8_0))
    {
        let d = f16_le_to_f32([b[0], b[1]]);
        let mut block = 0.0f32;
        for (&q, &xi) in b[2..].iter().zip(xs) {
            block += (q as i8) as f32 * xi;
        }
        sum += d * block;
    }
    sum
}

/// Quantizes whole blocks to Q8_0 exactly as ggml's reference quantizer and
/// gguf-py 0.19.0 do.
///
/// Per block: `amax = max|x_j|`, `d = amax / 127`, `id = d ≠ 0 ? 1/d : 0`,
/// `q_j = round_half_away_from_zero(x_j · id)`; the stored scale is `d`
/// rounded to f16 *after* the quants were computed with the f32 `d`.
///
/// Finite inputs only: a block whose `amax / 127` is so small that `1/d`
/// overflows makes the quants undefined in ggml and gguf-py alike; here they
/// saturate instead of invoking anything undefined.
///
/// Precondition: `src.len()` is a multiple of 32 and
/// `dst.len() == src.len() / 32 * 34`.
pub fn quantize_row_ref(src: &[f32], dst: &mut [u8]) {
    debug_assert!(src.len().is_multiple_of(QK8_0));
    debug_assert_eq!(dst.len(), src.len() / QK8_0 * BlockQ8_0::BYTES);
    for (xs, out) in src
        .chunks_exact(QK8_0)
        .zip(dst.chunks_exact_mut(BlockQ8_0::BYTES))
    {
        let amax = xs.iter().fold(0.0f32, |m, &v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d == 0.0 { 0.0 } else { 1.0 / d };
        out[..2].copy_from_slice(&f32_to_f16_le(d));
        for (o, &v) in out[2..].iter_mut().zip(xs) {
            // `f32::round` is round-half-away-from-zero, which is what both
            // C `roundf` and gguf-py's `np_roundf` compute. |v·id| ≤ 127 up
            // to an ulp, so the cast never saturates for sane input.
            *o = ((v * id).round() as i8) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_round_trips_through_bytes() {
        let mut bytes = [0u8; BlockQ8_0::BYTES];
        for (i, b) in bytes.iter_mut().enumerate() {
            *b = (i * 37 + 5) as u8;
        }
        let block = BlockQ8_0::read(&bytes);
        let mut again = [0u8; BlockQ8_0::BYTES];
        block.write(&mut again);
        assert_eq!(bytes, again);
        assert_eq!(block.qs[0], bytes[2] as i8);
    }

    #[test]
    fn halves_round_away_from_zero() {
        // amax 127 gives d = 1 exactly, so x·id = x and the .5 cases are ties.
        let mut x = [0.0f32; QK8_0];
        x[0] = 127.0;
        x[1] = 2.5;
        x[2] = -2.5;
        x[3] = 0.49999997;
        let mut out = [0u8; BlockQ8_0::BYTES];
        quantize_row_ref(&x, &mut out);
        let b = BlockQ8_0::read(&out);
        assert_eq!(b.d.to_f32(), 1.0);
        assert_eq!(&b.qs[..4], &[127, 3, -3, 0]);
    }
}
