//! Plain floating-point rows: F32, F16 and BF16 (GGML ids 0, 1 and 30).
//!
//! These types have a block size of one, so a "row" is just little-endian
//! elements back to back. Every reader here goes through `from_le_bytes` on
//! byte slices, never a pointer cast, so rows may sit at any alignment inside
//! an mmap'd GGUF.
//!
//! Bit-exactness against gguf-py 0.19.0 (`gguf.quants.{quantize,dequantize}`):
//! - F16 → f32 is exact for every non-NaN value (numpy `astype(float32)`).
//! - f32 → F16 rounds to nearest, ties to even, overflowing to ±inf and
//!   rounding into subnormals, as numpy's `astype(float16)` does.
//! - BF16 → f32 is the 16 bits shifted left by 16 (gguf-py's `<< 16` view).
//! - f32 → BF16 is ggml's `ggml_compute_fp32_to_bf16`: NaNs are forced quiet,
//!   everything else rounds to nearest even on the upper 16 bits.
//!
//! NaN payloads through F16 are not promised to match numpy bit for bit
//! (`half` sets the quiet bit); models do not store NaNs, so nothing depends
//! on it.

use half::f16;

/// Reads the little-endian f16 at the start of `b` and widens it exactly.
#[inline(always)]
pub(crate) fn f16_le_to_f32(b: [u8; 2]) -> f32 {
    f16::from_bits(u16::from_le_bytes(b)).to_f32()
}

/// Narrows `x` to f16 (round to nearest even) as little-endian bytes.
#[inline(always)]
pub(crate) fn f32_to_f16_le(x: f32) -> [u8; 2] {
    f16::from_f32(x).to_bits().to_le_bytes()
}

/// F32 rows: four little-endian bytes per element.
pub mod fp32 {
    /// Bytes per element.
    pub const BYTES: usize = 4;

    /// Copies a row of little-endian f32 into `dst`.
    ///
    /// Precondition: `src.len() == 4 * dst.len()` (checked in debug builds;
    /// in release a mismatch converts only the shorter of the two).
    pub fn dequantize_row_ref(src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len(), BYTES * dst.len());
        for (o, b) in dst.iter_mut().zip(src.chunks_exact(BYTES)) {
            *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
    }

    /// Σ w·x over the row, accumulated in f32 from the first element to the
    /// last.
    ///
    /// Precondition: `src.len() == 4 * x.len()`.
    pub fn vec_dot_ref(src: &[u8], x: &[f32]) -> f32 {
        debug_assert_eq!(src.len(), BYTES * x.len());
        let mut sum = 0.0f32;
        for (b, &xi) in src.chunks_exact(BYTES).zip(x) {
            sum += f32::from_le_bytes([b[0], b[1], b[2], b[3]]) * xi;
        }
        sum
    }

    /// Writes `src` as little-endian f32 (gguf-py's F32 "quantize" is a copy).
    ///
    /// Precondition: `dst.len() == 4 * src.len()`.
    pub fn quantize_row_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(dst.len(), BYTES * src.len());
        for (o, &v) in dst.chunks_exact_mut(BYTES).zip(src) {
            o.copy_from_slice(&v.to_le_bytes());
        }
    }
}

/// F16 rows: IEEE binary16, two little-endian bytes per element.
pub mod fp16 {
    use super::{f16_le_to_f32, f32_to_f16_le};

    /// Bytes per element.
    pub const BYTES: usize = 2;

    /// Widens a row of f16 to f32; exact for every non-NaN input.
    ///
    /// Precondition: `src.len() == 2 * dst.len()`.
    pub fn dequantize_row_ref(src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len(), BYTES * dst.len());
        for (o, b) in dst.iter_mut().zip(src.chunks_exact(BYTES)) {
            *o = f16_le_to_f32([b[0], b[1]]);
        }
    }

    /// Σ f32(w)·x over the row, accumulated in f32 in element order.
    ///
    /// Precondition: `src.len() == 2 * x.len()`.
    pub fn vec_dot_ref(src: &[u8], x: &[f32]) -> f32 {
        debug_assert_eq!(src.len(), BYTES * x.len());
        let mut sum = 0.0f32;
        for (b, &xi) in src.chunks_exact(BYTES).zip(x) {
            sum += f16_le_to_f32([b[0], b[1]]) * xi;
        }
        sum
    }

    /// Narrows a row to f16, round to nearest even (numpy `astype(float16)`).
    ///
    /// Precondition: `dst.len() == 2 * src.len()`.
    pub fn quantize_row_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(dst.len(), BYTES * src.len());
        for (o, &v) in dst.chunks_exact_mut(BYTES).zip(src) {
            o.copy_from_slice(&f32_to_f16_le(v));
        }
    }
}

/// BF16 rows: the upper half of an f32, two little-endian bytes per element.
pub mod bf16 {
    /// Bytes per element.
    pub const BYTES: usize = 2;

    /// BF16 → f32: the 16 bits become the top of the f32 (gguf-py:
    /// `int16 → int32 << 16`, viewed as f32). Exact, payloads included.
    #[inline(always)]
    pub fn to_f32(bits: u16) -> f32 {
        f32::from_bits((bits as u32) << 16)
    }

    /// f32 → BF16 as ggml's `ggml_compute_fp32_to_bf16` (and gguf-py) does it.
    #[inline(always)]
    pub fn from_f32(x: f32) -> u16 {
        let u = x.to_bits();
        if u & 0x7fff_ffff > 0x7f80_0000 {
            // NaN: keep sign and top payload, force the quiet bit (bit 6 of
            // the bf16 mantissa) so truncation can never make it an infinity.
            return ((u >> 16) | 64) as u16;
        }
        // Round to nearest, ties to even, on the 16 bits being dropped. The
        // sum is done in u64 as gguf-py does; for finite input it cannot
        // overflow u32 anyway (0xff7fffff + 0x8000 < 2^32).
        ((u as u64 + 0x7fff + ((u as u64 >> 16) & 1)) >> 16) as u16
    }

    /// Widens a row of bf16 to f32.
    ///
    /// Precondition: `src.len() == 2 * dst.len()`.
    pub fn dequantize_row_ref(src: &[u8], dst: &mut [f32]) {
        debug_assert_eq!(src.len(), BYTES * dst.len());
        for (o, b) in dst.iter_mut().zip(src.chunks_exact(BYTES)) {
            *o = to_f32(u16::from_le_bytes([b[0], b[1]]));
        }
    }

    /// Σ f32(w)·x over the row, accumulated in f32 in element order.
    ///
    /// Precondition: `src.len() == 2 * x.len()`.
    pub fn vec_dot_ref(src: &[u8], x: &[f32]) -> f32 {
        debug_assert_eq!(src.len(), BYTES * x.len());
        let mut sum = 0.0f32;
        for (b, &xi) in src.chunks_exact(BYTES).zip(x) {
            sum += to_f32(u16::from_le_bytes([b[0], b[1]])) * xi;
        }
        sum
    }

    /// Narrows a row to bf16 with [`from_f32`].
    ///
    /// Precondition: `dst.len() == 2 * src.len()`.
    pub fn quantize_row_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert_eq!(dst.len(), BYTES * src.len());
        for (o, &v) in dst.chunks_exact_mut(BYTES).zip(src) {
            o.copy_from_slice(&from_f32(v).to_le_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bf16_rounds_to_nearest_even_and_quiets_nan() {
        // Exactly halfway, even below: stays.
        assert_eq!(bf16::from_f32(f32::from_bits(0x3f80_8000)), 0x3f80);
        // Exactly halfway, odd below: rounds up.
        assert_eq!(bf16::from_f32(f32::from_bits(0x3f81_8000)), 0x3f82);
        // Just over halfway rounds up.
        assert_eq!(bf16::from_f32(f32::from_bits(0x3f80_8001)), 0x3f81);
        // A signalling NaN becomes quiet, not an infinity.
        assert_eq!(bf16::from_f32(f32::from_bits(0x7f80_0001)), 0x7fc0);
        assert_eq!(bf16::to_f32(0x3f80), 1.0);
    }

    #[test]
    fn f16_round_trips_subnormals_and_overflows_to_inf() {
        let tiny = f16_le_to_f32(0x0001u16.to_le_bytes());
        assert_eq!(tiny, 2f32.powi(-24));
        assert_eq!(f32_to_f16_le(tiny), 0x0001u16.to_le_bytes());
        assert_eq!(f32_to_f16_le(70000.0), 0x7c00u16.to_le_bytes());
        // 65520 is exactly halfway between 65504 and 2^16: ties to even = inf.
        assert_eq!(f32_to_f16_le(65520.0), 0x7c00u16.to_le_bytes());
        assert_eq!(f32_to_f16_le(65519.0), 0x7bffu16.to_le_bytes());
    }
}
