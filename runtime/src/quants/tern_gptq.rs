//! tern's packed GPTQ tensor types, `TERN_Q{bits}_G{group}` (tern ids
//! 1024–1035): `bits` ∈ {2, 3, 4, 8} codes in groups of `group` ∈
//! {32, 64, 128}, for the quantizer's grids that GGML's types cannot hold
//! (2 and 3 bits, groups larger than 32).
//!
//! # Layout
//! A row is whole blocks of `group` elements; each block is
//! `4 + group·bits/8` bytes, little-endian:
//!
//! | bytes | field |
//! |---|---|
//! | 0..2 | `d: f16`, the scale (step between code levels) |
//! | 2..4 | `m: f16`, the value of code 0 (the group minimum) |
//! | 4.. | `group` codes of `bits` bits, packed LSB-first |
//!
//! Element j of the block is `x_j = d · q_j + m` (an f32 multiply, then an
//! f32 add; never fused). The codes form one little-endian bit stream: code
//! j occupies bits `j·bits .. (j+1)·bits`, and bit k of the stream is bit
//! `k mod 8` of byte `k / 8`. So with 4 bits byte j holds code 2j in its low
//! nibble and code 2j+1 in its high nibble (unlike Q4_0's j / j+16 split),
//! and 3-bit codes straddle bytes.
//!
//! Symmetric quantization uses the same layout with `m = −d · 2^(bits−1)`,
//! so that `x = d · (q − 2^(bits−1))`, code `2^(bits−1)` is zero and
//! decoding never needs to know which variant wrote the block.
//!
//! Type ids: `1024 + 3·b + g` with `b` the index of `bits` in (2, 3, 4, 8)
//! and `g` the index of `group` in (32, 64, 128); see [`GgmlType::tern_gptq`].
//!
//! [`quantize_row_ref`] is round-to-nearest asymmetric quantization (the
//! RTN baseline): `d = (max − min)/(2^bits − 1)`, `m = min`, both rounded to
//! f16 first, then each code is the nearest level of the stored grid
//! ([`nearest_code`]). The GPTQ quantizer (`tern-quant`) uses the same
//! helpers, so its RTN output is these bytes.
//!
//! [`GgmlType::tern_gptq`]: super::GgmlType::tern_gptq

use half::f16;

use super::float::{f16_le_to_f32, f32_to_f16_le};

/// Code widths the tern types support.
pub const BITS: [u8; 4] = [2, 3, 4, 8];
/// Group sizes the tern types support.
pub const GROUPS: [usize; 3] = [32, 64, 128];

/// Bytes per block of `group` elements with `bits`-bit codes.
pub const fn block_bytes(bits: u8, group: usize) -> usize {
    4 + group * bits as usize / 8
}

/// The largest code, `2^bits − 1`.
pub const fn max_code(bits: u8) -> u32 {
    (1u32 << bits) - 1
}

/// Packs `codes` (each `< 2^bits`) LSB-first into `out`, which must hold
/// exactly `codes.len()·bits/8` bytes (`codes.len()·bits` a multiple of 8).
pub fn pack_codes(codes: &[u8], bits: u8, out: &mut [u8]) {
    debug_assert_eq!(codes.len() * bits as usize, out.len() * 8);
    let mask = max_code(bits);
    let mut acc = 0u32;
    let mut n = 0u32;
    let mut o = out.iter_mut();
    for &c in codes {
        acc |= (c as u32 & mask) << n;
        n += bits as u32;
        while n >= 8 {
            if let Some(b) = o.next() {
                *b = acc as u8;
            }
            acc >>= 8;
            n -= 8;
        }
    }
}

/// Unpacks `out.len()` codes of `bits` bits, LSB-first, from `src`.
pub fn unpack_codes(src: &[u8], bits: u8, out: &mut [u8]) {
    debug_assert_eq!(out.len() * bits as usize, src.len() * 8);
    let mask = max_code(bits);
    let mut acc = 0u32;
    let mut n = 0u32;
    let mut s = src.iter();
    for o in out {
        while n < bits as u32 {
            acc |= (s.next().copied().unwrap_or(0) as u32) << n;
            n += 8;
        }
        *o = (acc & mask) as u8;
        acc >>= bits;
        n -= bits as u32;
    }
}

/// The nearest code to `x` on the grid `d · q + m`, `q ∈ 0..=2^bits − 1`:
/// `clamp(round_half_even((x − m) / d))`, computed in f64; 0 when `d` is
/// zero (every code then decodes to `m`).
pub fn nearest_code(x: f64, d: f32, m: f32, bits: u8) -> u8 {
    if d == 0.0 {
        return 0;
    }
    let q = ((x - m as f64) / d as f64).round_ties_even();
    q.clamp(0.0, max_code(bits) as f64) as u8
}

/// Asymmetric scale and minimum for a group, as stored (f16):
/// `d = f16((max − min) / (2^bits − 1))`, `m = f16(min)`.
pub fn params_asym(xs: &[f32], bits: u8) -> (f16, f16) {
    let (mut min, mut max) = (f32::INFINITY, f32::NEG_INFINITY);
    for &v in xs {
        min = min.min(v);
        max = max.max(v);
    }
    if xs.is_empty() {
        (min, max) = (0.0, 0.0);
    }
    let d = (max - min) / max_code(bits) as f32;
    (f16::from_f32(d), f16::from_f32(min))
}

/// Symmetric scale and minimum for a group (GPTQ's symmetric quantizer), as
/// stored: `d = f16(2·amax / (2^bits − 1))`, `m = −d·2^(bits−1)` (exact in
/// f16 unless it overflows).
pub fn params_sym(xs: &[f32], bits: u8) -> (f16, f16) {
    let amax = xs.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
    let d = f16::from_f32(2.0 * amax / max_code(bits) as f32);
    let m = f16::from_f32(-d.to_f32() * (1u32 << (bits - 1)) as f32);
    (d, m)
}

/// Dequantizes whole blocks: `x = d · q + m`.
///
/// Precondition: `dst.len()` is a multiple of `GROUP` and
/// `src.len() == dst.len() / GROUP · block_bytes(BITS, GROUP)` (checked in
/// debug builds; in release only whole blocks both sides cover are written).
pub fn dequantize_row_ref<const BITS: u8, const GROUP: usize>(src: &[u8], dst: &mut [f32]) {
    let bb = block_bytes(BITS, GROUP);
    debug_assert!(dst.len().is_multiple_of(GROUP));
    debug_assert_eq!(src.len(), dst.len() / GROUP * bb);
    let mut q = [0u8; 128];
    for (b, out) in src.chunks_exact(bb).zip(dst.chunks_exact_mut(GROUP)) {
        let d = f16_le_to_f32([b[0], b[1]]);
        let m = f16_le_to_f32([b[2], b[3]]);
        unpack_codes(&b[4..], BITS, &mut q[..GROUP]);
        for (o, &c) in out.iter_mut().zip(&q[..GROUP]) {
            *o = d * c as f32 + m;
        }
    }
}

/// Σ w·x for a row against f32 activations, as
/// `Σ_b (d_b · Σ_j q_j · x_j + m_b · Σ_j x_j)` with f32 partial sums.
///
/// Precondition: `x.len()` is a multiple of `GROUP` and
/// `src.len() == x.len() / GROUP · block_bytes(BITS, GROUP)`.
pub fn vec_dot_ref<const BITS: u8, const GROUP: usize>(src: &[u8], x: &[f32]) -> f32 {
    let bb = block_bytes(BITS, GROUP);
    debug_assert!(x.len().is_multiple_of(GROUP));
    debug_assert_eq!(src.len(), x.len() / GROUP * bb);
    let mut q = [0u8; 128];
    let mut sum = 0.0f32;
    for (b, xs) in src.chunks_exact(bb).zip(x.chunks_exact(GROUP)) {
        let d = f16_le_to_f32([b[0], b[1]]);
        let m = f16_le_to_f32([b[2], b[3]]);
        unpack_codes(&b[4..], BITS, &mut q[..GROUP]);
        let mut qx = 0.0f32;
        let mut sx = 0.0f32;
        for (&c, &a) in q[..GROUP].iter().zip(xs) {
            qx += c as f32 * a;
            sx += a;
        }
        sum += d * qx + m * sx;
    }
    sum
}

/// Round-to-nearest asymmetric quantization of whole blocks
/// ([`params_asym`], then [`nearest_code`] against the stored f16 values).
///
/// Finite inputs within f16 range only (otherwise the scale is inf or NaN
/// and the codes are meaningless).
///
/// Precondition: `src.len()` is a multiple of `GROUP` and
/// `dst.len() == src.len() / GROUP · block_bytes(BITS, GROUP)`.
pub fn quantize_row_ref<const BITS: u8, const GROUP: usize>(src: &[f32], dst: &mut [u8]) {
    let bb = block_bytes(BITS, GROUP);
    debug_assert!(src.len().is_multiple_of(GROUP));
    debug_assert_eq!(dst.len(), src.len() / GROUP * bb);
    let mut q = [0u8; 128];
    for (xs, out) in src.chunks_exact(GROUP).zip(dst.chunks_exact_mut(bb)) {
        let (d, m) = params_asym(xs, BITS);
        let (df, mf) = (d.to_f32(), m.to_f32());
        for (c, &v) in q[..GROUP].iter_mut().zip(xs) {
            *c = nearest_code(v as f64, df, mf, BITS);
        }
        out[..2].copy_from_slice(&f32_to_f16_le(df));
        out[2..4].copy_from_slice(&f32_to_f16_le(mf));
        pack_codes(&q[..GROUP], BITS, &mut out[4..]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_lsb_first_and_round_trips() {
        let mut out = [0u8; 3];
        // 3-bit codes 1..=8 (mod 8): stream 001 010 011 100 101 110 111 000
        let codes = [1u8, 2, 3, 4, 5, 6, 7, 0];
        pack_codes(&codes, 3, &mut out);
        // bits LSB-first: byte0 = c0 | c1<<3 | (c2&3)<<6
        assert_eq!(out[0], 1 | (2 << 3) | ((3 & 3) << 6));
        let mut back = [0u8; 8];
        unpack_codes(&out, 3, &mut back);
        assert_eq!(back, codes);
        let mut o4 = [0u8; 1];
        pack_codes(&[0x3, 0xA], 4, &mut o4);
        assert_eq!(o4[0], 0xA3);
        for bits in BITS {
            let codes: Vec<u8> = (0..128u32)
                .map(|i| ((i * 37 + 11) % (max_code(bits) + 1)) as u8)
                .collect();
            let mut packed = vec![0u8; 128 * bits as usize / 8];
            pack_codes(&codes, bits, &mut packed);
            let mut back = vec![0u8; 128];
            unpack_codes(&packed, bits, &mut back);
            assert_eq!(back, codes, "{bits} bits");
        }
    }

    #[test]
    fn rtn_hits_the_ends_of_the_range() {
        let mut x = [0.5f32; 32];
        x[0] = -1.0;
        x[1] = 2.0;
        let mut b = [0u8; 4 + 12];
        quantize_row_ref::<3, 32>(&x, &mut b);
        let mut y = [0.0f32; 32];
        dequantize_row_ref::<3, 32>(&b, &mut y);
        // The minimum is exact; the maximum is off by the f16 rounding of d.
        assert_eq!(y[0], -1.0);
        assert!((y[1] - 2.0).abs() < 1e-3, "{}", y[1]);
        // 0.5 is 1.5 / f16(3/7) ≈ 3.5008 steps above the minimum: code 4.
        let d = f16::from_f32(3.0 / 7.0).to_f32();
        assert_eq!(y[2], d * 4.0 - 1.0);
    }

    #[test]
    fn symmetric_min_is_exact() {
        let (d, m) = params_sym(&[0.3, -0.7, 0.1], 4);
        assert_eq!(m.to_f32(), -8.0 * d.to_f32());
        assert_eq!(d, f16::from_f32(1.4 / 15.0));
    }
}
