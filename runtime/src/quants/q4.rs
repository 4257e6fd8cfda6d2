//! The 4-bit legacy quants: Q4_0 (GGML id 2) and Q4_1 (GGML id 3).
//!
//! Both pack 32 four-bit quants into 16 bytes the same way: byte `j` holds
//! element `j` in its low nibble and element `j + 16` in its high nibble
//! (ggml `dequantize_row_q4_0`: `y[j] = (qs[j] & 0xF)…; y[j+16] = (qs[j] >> 4)…`).
//!
//! - Q4_0, 18 bytes: `d: f16, qs: [u8; 16]`; `x = d · (q − 8)`.
//! - Q4_1, 20 bytes: `d: f16, m: f16, qs: [u8; 16]`; `x = d · q + m`.
//!
//! Quantizers follow ggml's `quantize_row_q4_{0,1}_ref`, which gguf-py
//! 0.19.0 reproduces; every step is one f32 operation in the same order as
//! gguf-py's numpy code (numpy never fuses a multiply-add, and neither does
//! Rust without explicit `mul_add`), so the bytes come out identical.

/// Elements per block for both Q4_0 and Q4_1.
pub const QK4: usize = 32;

/// Splits packed byte `b` into (element j, element j + 16).
#[inline(always)]
fn unpack(b: u8) -> (u8, u8) {
    (b & 0x0f, b >> 4)
}

/// Packs 32 nibbles (each already ≤ 15) into 16 bytes, low = first half.
#[inline(always)]
fn pack(q: &[u8; QK4], out: &mut [u8]) {
    for (j, o) in out.iter_mut().enumerate().take(QK4 / 2) {
        *o = q[j] | (q[j + QK4 / 2] << 4);
    }
}

/// Q4_0: symmetric 4-bit, `x = d · (q − 8)`.
pub mod q4_0 {
    use half::f16;

    use super::{pack, unpack, QK4};
    use crate::quants::float::{f16_le_to_f32, f32_to_f16_le};

    /// Elements per block.
    pub const QK4_0: usize = QK4;

    /// One Q4_0 block, as GGML lays it out on disk.
    ///
    /// Rows are decoded with [`BlockQ4_0::read`] from byte slices, so
    /// unaligned mmap data is fine.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct BlockQ4_0 {
        /// Scale.
        pub d: f16,
        /// Packed nibbles: low nibble of byte j is element j, high is j + 16.
        pub qs: [u8; QK4_0 / 2],
    }

    const _: () = assert!(std::mem::size_of::<BlockQ4_0>() == 18);

    impl BlockQ4_0 {
        /// Bytes per block on disk.
        pub const BYTES: usize = 18;

        /// Decodes a block from its 18 on-disk bytes.
        pub fn read(b: &[u8; Self::BYTES]) -> Self {
            let mut qs = [0u8; QK4_0 / 2];
            qs.copy_from_slice(&b[2..]);
            BlockQ4_0 {
                d: f16::from_le_bytes([b[0], b[1]]),
                qs,
            }
        }

        /// Encodes the block as its 18 on-disk bytes.
        pub fn write(&self, out: &mut [u8; Self::BYTES]) {
            out[..2].copy_from_slice(&self.d.to_le_bytes());
            out[2..].copy_from_slice(&self.qs);
        }

        /// Quant j as a signed value in −8..=7 (ggml's `q − 8`).
        pub fn q(&self, j: usize) -> i8 {
            let (lo, hi) = unpack(self.qs[j % (QK4_0 / 2)]);
            let n = if j < QK4_0 / 2 { lo } else { hi };
            n as i8 - 8
        }
    }

    /// Dequantizes whole Q4_0 blocks: `x = d · (q − 8)` in f32.
    ///
    /// Precondition: `dst.len()` is a multiple of 32 and
    /// `src.len() == dst.len() / 32 * 18` (checked in debug builds; in
    /// release a mismatch converts only the whole blocks both sides have).
    pub fn dequantize_row_ref(src: &[u8], dst: &mut [f32]) {
        debug_assert!(dst.len().is_multiple_of(QK4_0));
        debug_assert_eq!(src.len(), dst.len() / QK4_0 * BlockQ4_0::BYTES);
        for (b, out) in src
            .chunks_exact(BlockQ4_0::BYTES)
            .zip(dst.chunks_exact_mut(QK4_0))
        {
            let d = f16_le_to_f32([b[0], b[1]]);
            let (first, second) = out.split_at_mut(QK4_0 / 2);
            for ((&byte, o0), o1) in b[2..].iter().zip(first).zip(second) {
                let (lo, hi) = unpack(byte);
                // gguf-py: `d * (q as int8 − 8) as float32`; q − 8 is exact.
                *o0 = d * (lo as i32 - 8) as f32;
                *o1 = d * (hi as i32 - 8) as f32;
            }
        }
    }

    /// Σ w·x for a Q4_0 row against f32 activations, as
    /// `Σ_b d_b · (Σ_j (q_j − 8) · x_j)` with f32 partial sums (elements in
    /// storage order: j and j + 16 together).
    ///
    /// Precondition: `x.len()` is a multiple of 32 and
    /// `src.len() == x.len() / 32 * 18`.
    pub fn vec_dot_ref(src: &[u8], x: &[f32]) -> f32 {
        debug_assert!(x.len().is_multiple_of(QK4_0));
        debug_assert_eq!(src.len(), x.len() / QK4_0 * BlockQ4_0::BYTES);
        let mut sum = 0.0f32;
        for (b, xs) in src
            .chunks_exact(BlockQ4_0::BYTES)
            .zip(x.chunks_exact(QK4_0))
        {
            let d = f16_le_to_f32([b[0], b[1]]);
            let (x0, x1) = xs.split_at(QK4_0 / 2);
            let mut block = 0.0f32;
            for ((&byte, &a), &c) in b[2..].iter().zip(x0).zip(x1) {
                let (lo, hi) = unpack(byte);
                block += (lo as i32 - 8) as f32 * a + (hi as i32 - 8) as f32 * c;
            }
            sum += d * block;
        }
        sum
    }

    /// Quantizes whole blocks to Q4_0 exactly as ggml's reference quantizer
    /// and gguf-py 0.19.0 do.
    ///
    /// Per block: `max` is the element of largest magnitude (the first one on
    /// ties, keeping its sign), `d = max / −8`, `id = d ≠ 0 ? 1/d : 0`,
    /// `q_j = min(15, trunc(x_j · id + 8.5))`; the f16 scale is `d` rounded
    /// after the quants were made with the f32 `d`. The sign flip puts the
    /// extreme element at q = 0, using the full −8 end of the range.
    ///
    /// Finite inputs only (see `q8_0::quantize_row_ref` on vanishing scales).
    ///
    /// Precondition: `src.len()` is a multiple of 32 and
    /// `dst.len() == src.len() / 32 * 18`.
    pub fn quantize_row_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert!(src.len().is_multiple_of(QK4_0));
        debug_assert_eq!(dst.len(), src.len() / QK4_0 * BlockQ4_0::BYTES);
        for (xs, out) in src
            .chunks_exact(QK4_0)
            .zip(dst.chunks_exact_mut(BlockQ4_0::BYTES))
        {
            // gguf-py takes `blocks[argmax(|x|)]`: the first index of the
            // largest magnitude. On an all-zero block that is x[0], whose
            // sign (±0) decides whether d is stored as −0 or +0.
            let mut max = xs[0];
            for &v in &xs[1..] {
                if v.abs() > max.abs() {
                    max = v;
                }
            }
            let d = max / -8.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            let mut q = [0u8; QK4];
            for (qj, &v) in q.iter_mut().zip(xs) {
                // `as u8` truncates toward zero like np.trunc + astype; the
                // value is ≥ 0.5 − ulp for finite input, so only the top can
                // overflow, and ggml clamps it to 15.
                *qj = ((v * id + 8.5) as u8).min(15);
            }
            out[..2].copy_from_slice(&f32_to_f16_le(d));
            pack(&q, &mut out[2..]);
        }
    }
}

/// Q4_1: asymmetric 4-bit, `x = d · q + m`.
pub mod q4_1 {
    use half::f16;

    use super::{pack, unpack, QK4};
    use crate::quants::float::{f16_le_to_f32, f32_to_f16_le};

    /// Elements per block.
    pub const QK4_1: usize = QK4;

    /// One Q4_1 block, as GGML lays it out on disk.
    ///
    /// Rows are decoded with [`BlockQ4_1::read`] from byte slices, so
    /// unaligned mmap data is fine.
    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq)]
    pub struct BlockQ4_1 {
        /// Scale (step between quant levels).
        pub d: f16,
        /// Offset: the value of quant 0, i.e. the block minimum.
        pub m: f16,
        /// Packed nibbles: low nibble of byte j is element j, high is j + 16.
        pub qs: [u8; QK4_1 / 2],
    }

    const _: () = assert!(std::mem::size_of::<BlockQ4_1>() == 20);

    impl BlockQ4_1 {
        /// Bytes per block on disk.
        pub const BYTES: usize = 20;

        /// Decodes a block from its 20 on-disk bytes.
        pub fn read(b: &[u8; Self::BYTES]) -> Self {
            let mut qs = [0u8; QK4_1 / 2];
            qs.copy_from_slice(&b[4..]);
            BlockQ4_1 {
                d: f16::from_le_bytes([b[0], b[1]]),
                m: f16::from_le_bytes([b[2], b[3]]),
                qs,
            }
        }

        /// Encodes the block as its 20 on-disk bytes.
        pub fn write(&self, out: &mut [u8; Self::BYTES]) {
            out[..2].copy_from_slice(&self.d.to_le_bytes());
            out[2..4].copy_from_slice(&self.m.to_le_bytes());
            out[4..].copy_from_slice(&self.qs);
        }

        /// Quant j, 0..=15.
        pub fn q(&self, j: usize) -> u8 {
            let (lo, hi) = unpack(self.qs[j % (QK4_1 / 2)]);
            if j < QK4_1 / 2 {
                lo
            } else {
                hi
            }
        }
    }

    /// Dequantizes whole Q4_1 blocks: `x = d · q + m`, a rounded f32
    /// multiply then a rounded f32 add (never fused: gguf-py computes
    /// `(d * qs) + m` as two numpy ufuncs).
    ///
    /// Precondition: `dst.len()` is a multiple of 32 and
    /// `src.len() == dst.len() / 32 * 20` (checked in debug builds; in
    /// release a mismatch converts only the whole blocks both sides have).
    pub fn dequantize_row_ref(src: &[u8], dst: &mut [f32]) {
        debug_assert!(dst.len().is_multiple_of(QK4_1));
        debug_assert_eq!(src.len(), dst.len() / QK4_1 * BlockQ4_1::BYTES);
        for (b, out) in src
            .chunks_exact(BlockQ4_1::BYTES)
            .zip(dst.chunks_exact_mut(QK4_1))
        {
            let d = f16_le_to_f32([b[0], b[1]]);
            let m = f16_le_to_f32([b[2], b[3]]);
            let (first, second) = out.split_at_mut(QK4_1 / 2);
            for ((&byte, o0), o1) in b[4..].iter().zip(first).zip(second) {
                let (lo, hi) = unpack(byte);
                *o0 = d * lo as f32 + m;
                *o1 = d * hi as f32 + m;
            }
        }
    }

    /// Σ w·x for a Q4_1 row against f32 activations, as
    /// `Σ_b (d_b · Σ_j q_j · x_j + m_b · Σ_j x_j)` with f32 partial sums: the
    /// offset term factors out of the block because `m` is shared.
    ///
    /// Precondition: `x.len()` is a multiple of 32 and
    /// `src.len() == x.len() / 32 * 20`.
    pub fn vec_dot_ref(src: &[u8], x: &[f32]) -> f32 {
        debug_assert!(x.len().is_multiple_of(QK4_1));
        debug_assert_eq!(src.len(), x.len() / QK4_1 * BlockQ4_1::BYTES);
        let mut sum = 0.0f32;
        for (b, xs) in src
            .chunks_exact(BlockQ4_1::BYTES)
            .zip(x.chunks_exact(QK4_1))
        {
            let d = f16_le_to_f32([b[0], b[1]]);
            let m = f16_le_to_f32([b[2], b[3]]);
            let (x0, x1) = xs.split_at(QK4_1 / 2);
            let mut qx = 0.0f32;
            let mut sx = 0.0f32;
            for ((&byte, &a), &c) in b[4..].iter().zip(x0).zip(x1) {
                let (lo, hi) = unpack(byte);
                qx += lo as f32 * a + hi as f32 * c;
                sx += a + c;
            }
            sum += d * qx + m * sx;
        }
        sum
    }

    /// Quantizes whole blocks to Q4_1 exactly as ggml's reference quantizer
    /// and gguf-py 0.19.0 do.
    ///
    /// Per block: `min`, `max` of the block, `d = (max − min) / 15`,
    /// `id = d ≠ 0 ? 1/d : 0`, `q_j = min(15, trunc((x_j − min) · id + 0.5))`;
    /// `d` and `m = min` are rounded to f16 only when stored.
    ///
    /// Finite inputs only; a block whose `max − min` overflows f32 or whose
    /// `d` is so small that `1/d` overflows gives undefined quants in ggml
    /// and gguf-py alike (here they saturate).
    ///
    /// Precondition: `src.len()` is a multiple of 32 and
    /// `dst.len() == src.len() / 32 * 20`.
    pub fn quantize_row_ref(src: &[f32], dst: &mut [u8]) {
        debug_assert!(src.len().is_multiple_of(QK4_1));
        debug_assert_eq!(dst.len(), src.len() / QK4_1 * BlockQ4_1::BYTES);
        for (xs, out) in src
            .chunks_exact(QK4_1)
            .zip(dst.chunks_exact_mut(BlockQ4_1::BYTES))
        {
            // `<=`/`>=`: among equal extremes the *last* wins. That only
            // shows for ±0 (equal non-zero floats have equal bits), and it is
            // what gguf-py's numpy `min`/`max` reductions return (checked by
            // the fixtures' all-zero block that starts with −0). ggml's C
            // keeps the first instead, so on such blocks the two disagree in
            // the sign bit of `m` or `d`; tern follows gguf-py.
            let mut min = xs[0];
            let mut max = xs[0];
            for &v in &xs[1..] {
                if v <= min {
                    min = v;
                }
                if v >= max {
                    max = v;
                }
            }
            let d = (max - min) / 15.0;
            let id = if d == 0.0 { 0.0 } else { 1.0 / d };
            let mut q = [0u8; QK4];
            for (qj, &v) in q.iter_mut().zip(xs) {
                *qj = (((v - min) * id + 0.5) as u8).min(15);
            }
            out[..2].copy_from_slice(&f32_to_f16_le(d));
            out[2..4].copy_from_slice(&f32_to_f16_le(min));
            pack(&q, &mut out[4..]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::q4_0::BlockQ4_0;
    use super::q4_1::BlockQ4_1;
    use super::*;

    #[test]
    fn nibble_order_is_low_then_high_half() {
        // Element j in the low nibble of byte j, element j+16 in the high one.
        let mut bytes = [0u8; BlockQ4_0::BYTES];
        bytes[..2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
        bytes[2] = 0x93; // element 0 → 3, element 16 → 9
        let mut out = [0.0f32; QK4];
        q4_0::dequantize_row_ref(&bytes, &mut out);
        assert_eq!(out[0], -5.0);
        assert_eq!(out[16], 1.0);
        let b = BlockQ4_0::read(&bytes);
        assert_eq!((b.q(0), b.q(16)), (-5, 1));
    }

    #[test]
    fn q4_0_extreme_element_maps_to_zero_quant() {
        let mut x = [0.0f32; QK4];
        x[5] = -4.0;
        x[6] = 4.0; // same magnitude later: the first one wins
        x[7] = 1.0;
        let mut out = [0u8; BlockQ4_0::BYTES];
        q4_0::quantize_row_ref(&x, &mut out);
        let b = BlockQ4_0::read(&out);
        assert_eq!(b.d.to_f32(), 0.5);
        assert_eq!((b.q(5), b.q(6), b.q(7), b.q(0)), (-8, 7, 2, 0));
    }

    #[test]
    fn q4_1_stores_min_and_range() {
        let mut x = [1.0f32; QK4];
        x[3] = 16.0;
        let mut out = [0u8; BlockQ4_1::BYTES];
        q4_1::quantize_row_ref(&x, &mut out);
        let b = BlockQ4_1::read(&out);
        assert_eq!((b.d.to_f32(), b.m.to_f32()), (1.0, 1.0));
        assert_eq!((b.q(3), b.q(0)), (15, 0));
        let mut again = [0u8; BlockQ4_1::BYTES];
        b.write(&mut again);
        assert_eq!(out, again);
    }
}
