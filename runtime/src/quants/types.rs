//! The GGML tensor type table: every type id GGUF files may carry, with its
//! block size and bytes per block.
//!
//! This table is what the GGUF parser needs to size a tensor before trusting
//! it. Knowing a type's layout here does not mean tern can compute with it:
//! `quants::kernels()` answers that. Ids GGML removed (4, 5, 31–33, 36–38)
//! and ids past the end are not types at all.
//!
//! Besides GGML's own types the table holds tern's packed GPTQ types
//! (`TERN_Q{bits}_G{group}`), with ids from 1024 upward, far outside GGML's
//! range: `id = 1024 + 3·b + g`, where `b` is the index of `bits` in
//! (2, 3, 4, 8) and `g` the index of `group` in (32, 64, 128). Their layout
//! is in `quants::tern_gptq`.

use std::fmt;

/// A GGML tensor element type, by its on-disk id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum GgmlType {
    /// 32-bit IEEE float, one per element (GGML id 0).
    F32,
    /// 16-bit IEEE half float (GGML id 1).
    F16,
    /// 4-bit blocks of 32 with one f16 scale, 18 bytes: `x = d · (q − 8)` (GGML id 2).
    Q4_0,
    /// 4-bit blocks of 32 with an f16 scale and an f16 minimum, 20 bytes:
    /// `x = d · q + m` (GGML id 3).
    Q4_1,
    /// 5-bit blocks of 32 with one f16 scale, 22 bytes (GGML id 6).
    Q5_0,
    /// 5-bit blocks of 32 with an f16 scale and an f16 minimum, 24 bytes (GGML id 7).
    Q5_1,
    /// 8-bit blocks of 32 with one f16 scale, 34 bytes (GGML id 8).
    Q8_0,
    /// 8-bit blocks of 32 with a scale and the block's scaled sum: ggml's
    /// dot-product operand, not normally stored in files (GGML id 9). Sized
    /// here as gguf-py sizes it, 40 bytes (f32 scale and sum); ggml's own
    /// block is 36 (f16 scale and sum).
    Q8_1,
    /// 2-bit k-quant: super-blocks of 256 (16 sub-blocks of 16 with 4-bit
    /// scales and mins, an f16 super-scale and super-min), 84 bytes (GGML id 10).
    Q2_K,
    /// 3-bit k-quant: super-blocks of 256 (16 sub-blocks of 16 with 6-bit
    /// scales, one f16 super-scale), 110 bytes (GGML id 11).
    Q3_K,
    /// 4-bit k-quant: super-blocks of 256 (8 sub-blocks of 32 with 6-bit
    /// scales and mins, an f16 super-scale and super-min), 144 bytes (GGML id 12).
    Q4_K,
    /// 5-bit k-quant: Q4_K's layout plus a fifth bit per element, super-blocks
    /// of 256 in 176 bytes (GGML id 13).
    Q5_K,
    /// 6-bit k-quant: super-blocks of 256 (16 sub-blocks of 16 with 8-bit
    /// scales, one f16 super-scale), 210 bytes (GGML id 14).
    Q6_K,
    /// 8-bit super-blocks of 256 with an f32 scale and the i16 sum of each 16:
    /// ggml's dot-product operand for k-quants, not normally stored in files,
    /// 292 bytes (GGML id 15).
    Q8_K,
    /// 2.0625-bit i-quant (codebook of 8-element groups), super-blocks of 256
    /// in 66 bytes (GGML id 16).
    IQ2_XXS,
    /// 2.3125-bit i-quant, super-blocks of 256 in 74 bytes (GGML id 17).
    IQ2_XS,
    /// 3.0625-bit i-quant, super-blocks of 256 in 98 bytes (GGML id 18).
    IQ3_XXS,
    /// 1.5625-bit i-quant, super-blocks of 256 in 50 bytes (GGML id 19).
    IQ1_S,
    /// 4-bit non-linear: blocks of 32 with one f16 scale, each nibble an index
    /// into a fixed 16-entry table, 18 bytes (GGML id 20).
    IQ4_NL,
    /// 3.4375-bit i-quant, super-blocks of 256 in 110 bytes (GGML id 21).
    IQ3_S,
    /// 2.5625-bit i-quant, super-blocks of 256 in 82 bytes (GGML id 22).
    IQ2_S,
    /// 4.25-bit: IQ4_NL's table in super-blocks of 256 with 6-bit sub-block
    /// scales, 136 bytes (GGML id 23).
    IQ4_XS,
    /// 8-bit signed integer (GGML id 24).
    I8,
    /// 16-bit signed integer (GGML id 25).
    I16,
    /// 32-bit signed integer (GGML id 26).
    I32,
    /// 64-bit signed integer (GGML id 27).
    I64,
    /// 64-bit IEEE float (GGML id 28).
    F64,
    /// 1.75-bit i-quant, super-blocks of 256 in 56 bytes (GGML id 29).
    IQ1_M,
    /// bfloat16: f32's 8-bit exponent with a 7-bit mantissa, 2 bytes (GGML id 30).
    BF16,
    /// Ternary (−1, 0, +1), 1.6875 bits: trits packed five (and four) per
    /// byte with one f16 scale, super-blocks of 256 in 54 bytes (GGML id 34).
    TQ1_0,
    /// Ternary (−1, 0, +1) in 2-bit codes: super-blocks of 256 with one f16
    /// scale, 66 bytes (GGML id 35).
    TQ2_0,
    /// OCP microscaling FP4: blocks of 32 four-bit E2M1 floats with one E8M0
    /// (power-of-two) scale byte, 17 bytes (GGML id 39).
    MXFP4,
    /// NVIDIA FP4: blocks of 64 four-bit E2M1 floats with one UE4M3 (FP8)
    /// scale per 16 elements, 36 bytes (GGML id 40).
    NVFP4,
    /// 1-bit blocks of 128: one sign bit per element and one f16 scale,
    /// 18 bytes (GGML id 41).
    Q1_0,
    /// tern's packed GPTQ type, 2-bit codes in groups of 32: f16 scale, f16
    /// minimum, 8 bytes of codes LSB-first, 12 bytes (tern id 1024; see
    /// `quants::tern_gptq`).
    TERN_Q2_G32,
    /// tern's packed GPTQ type, 2-bit codes in groups of 64: f16 scale, f16
    /// minimum, 16 bytes of codes LSB-first, 20 bytes (tern id 1025; see
    /// `quants::tern_gptq`).
    TERN_Q2_G64,
    /// tern's packed GPTQ type, 2-bit codes in groups of 128: f16 scale, f16
    /// minimum, 32 bytes of codes LSB-first, 36 bytes (tern id 1026; see
    /// `quants::tern_gptq`).
    TERN_Q2_G128,
    /// tern's packed GPTQ type, 3-bit codes in groups of 32: f16 scale, f16
    /// minimum, 12 bytes of codes LSB-first, 16 bytes (tern id 1027; see
    /// `quants::tern_gptq`).
    TERN_Q3_G32,
    /// tern's packed GPTQ type, 3-bit codes in groups of 64: f16 scale, f16
    /// minimum, 24 bytes of codes LSB-first, 28 bytes (tern id 1028; see
    /// `quants::tern_gptq`).
    TERN_Q3_G64,
    /// tern's packed GPTQ type, 3-bit codes in groups of 128: f16 scale, f16
    /// minimum, 48 bytes of codes LSB-first, 52 bytes (tern id 1029; see
    /// `quants::tern_gptq`).
    TERN_Q3_G128,
    /// tern's packed GPTQ type, 4-bit codes in groups of 32: f16 scale, f16
    /// minimum, 16 bytes of codes LSB-first, 20 bytes (tern id 1030; see
    /// `quants::tern_gptq`).
    TERN_Q4_G32,
    /// tern's packed GPTQ type, 4-bit codes in groups of 64: f16 scale, f16
    /// minimum, 32 bytes of codes LSB-first, 36 bytes (tern id 1031; see
    /// `quants::tern_gptq`).
    TERN_Q4_G64,
    /// tern's packed GPTQ type, 4-bit codes in groups of 128: f16 scale, f16
    /// minimum, 64 bytes of codes LSB-first, 68 bytes (tern id 1032; see
    /// `quants::tern_gptq`).
    TERN_Q4_G128,
    /// tern's packed GPTQ type, 8-bit codes in groups of 32: f16 scale, f16
    /// minimum, 32 bytes of codes LSB-first, 36 bytes (tern id 1033; see
    /// `quants::tern_gptq`).
    TERN_Q8_G32,
    /// tern's packed GPTQ type, 8-bit codes in groups of 64: f16 scale, f16
    /// minimum, 64 bytes of codes LSB-first, 68 bytes (tern id 1034; see
    /// `quants::tern_gptq`).
    TERN_Q8_G64,
    /// tern's packed GPTQ type, 8-bit codes in groups of 128: f16 scale, f16
    /// minimum, 128 bytes of codes LSB-first, 132 bytes (tern id 1035; see
    /// `quants::tern_gptq`).
    TERN_Q8_G128,
}

/// The first id of tern's own types.
const TERN_FIRST_ID: u32 = 1024;
/// Code widths of tern's packed GPTQ types, in id order.
const TERN_BITS: [u8; 4] = [2, 3, 4, 8];
/// Group sizes of tern's packed GPTQ types, in id order.
const TERN_GROUPS: [usize; 3] = [32, 64, 128];

/// (type, id, name, elements per block, bytes per block), as GGML defines
/// them, then tern's own types.
const TABLE: &[(GgmlType, u32, &str, u64, u64)] = &[
    (GgmlType::F32, 0, "F32", 1, 4),
    (GgmlType::F16, 1, "F16", 1, 2),
    (GgmlType::Q4_0, 2, "Q4_0", 32, 18),
    (GgmlType::Q4_1, 3, "Q4_1", 32, 20),
    (GgmlType::Q5_0, 6, "Q5_0", 32, 22),
    (GgmlType::Q5_1, 7, "Q5_1", 32, 24),
    (GgmlType::Q8_0, 8, "Q8_0", 32, 34),
    (GgmlType::Q8_1, 9, "Q8_1", 32, 40),
    (GgmlType::Q2_K, 10, "Q2_K", 256, 84),
    (GgmlType::Q3_K, 11, "Q3_K", 256, 110),
    (GgmlType::Q4_K, 12, "Q4_K", 256, 144),
    (GgmlType::Q5_K, 13, "Q5_K", 256, 176),
    (GgmlType::Q6_K, 14, "Q6_K", 256, 210),
    (GgmlType::Q8_K, 15, "Q8_K", 256, 292),
    (GgmlType::IQ2_XXS, 16, "IQ2_XXS", 256, 66),
    (GgmlType::IQ2_XS, 17, "IQ2_XS", 256, 74),
    (GgmlType::IQ3_XXS, 18, "IQ3_XXS", 256, 98),
    (GgmlType::IQ1_S, 19, "IQ1_S", 256, 50),
    (GgmlType::IQ4_NL, 20, "IQ4_NL", 32, 18),
    (GgmlType::IQ3_S, 21, "IQ3_S", 256, 110),
    (GgmlType::IQ2_S, 22, "IQ2_S", 256, 82),
    (GgmlType::IQ4_XS, 23, "IQ4_XS", 256, 136),
    (GgmlType::I8, 24, "I8", 1, 1),
    (GgmlType::I16, 25, "I16", 1, 2),
    (GgmlType::I32, 26, "I32", 1, 4),
    (GgmlType::I64, 27, "I64", 1, 8),
    (GgmlType::F64, 28, "F64", 1, 8),
    (GgmlType::IQ1_M, 29, "IQ1_M", 256, 56),
    (GgmlType::BF16, 30, "BF16", 1, 2),
    (GgmlType::TQ1_0, 34, "TQ1_0", 256, 54),
    (GgmlType::TQ2_0, 35, "TQ2_0", 256, 66),
    (GgmlType::MXFP4, 39, "MXFP4", 32, 17),
    (GgmlType::NVFP4, 40, "NVFP4", 64, 36),
    (GgmlType::Q1_0, 41, "Q1_0", 128, 18),
    (GgmlType::TERN_Q2_G32, 1024, "TERN_Q2_G32", 32, 12),
    (GgmlType::TERN_Q2_G64, 1025, "TERN_Q2_G64", 64, 20),
    (GgmlType::TERN_Q2_G128, 1026, "TERN_Q2_G128", 128, 36),
    (GgmlType::TERN_Q3_G32, 1027, "TERN_Q3_G32", 32, 16),
    (GgmlType::TERN_Q3_G64, 1028, "TERN_Q3_G64", 64, 28),
    (GgmlType::TERN_Q3_G128, 1029, "TERN_Q3_G128", 128, 52),
    (GgmlType::TERN_Q4_G32, 1030, "TERN_Q4_G32", 32, 20),
    (GgmlType::TERN_Q4_G64, 1031, "TERN_Q4_G64", 64, 36),
    (GgmlType::TERN_Q4_G128, 1032, "TERN_Q4_G128", 128, 68),
    (GgmlType::TERN_Q8_G32, 1033, "TERN_Q8_G32", 32, 36),
    (GgmlType::TERN_Q8_G64, 1034, "TERN_Q8_G64", 64, 68),
    (GgmlType::TERN_Q8_G128, 1035, "TERN_Q8_G128", 128, 132),
];

impl GgmlType {
    /// The type with this on-disk id, or `None` for removed and unknown ids.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        TABLE.iter().find(|e| e.1 == id).map(|e| e.0)
    }

    fn entry(self) -> &'static (GgmlType, u32, &'static str, u64, u64) {
        // Every variant has exactly one row; the test below checks it.
        TABLE
            .iter()
            .find(|e| e.0 == self)
            .expect("every GgmlType has a table row")
    }

    /// The on-disk id.
    pub fn id(self) -> u32 {
        self.entry().1
    }

    /// GGML's name for the type ("Q4_0").
    pub fn name(self) -> &'static str {
        self.entry().2
    }

    /// Elements per block (1 for plain float and integer types).
    pub fn block_size(self) -> u64 {
        self.entry().3
    }

    /// Bytes per block.
    pub fn type_size(self) -> u64 {
        self.entry().4
    }

    /// tern's packed GPTQ type for `bits` ∈ {2, 3, 4, 8} and `group` ∈
    /// {32, 64, 128}, or `None` for any other combination.
    pub fn tern_gptq(bits: u8, group: usize) -> Option<GgmlType> {
        let b = TERN_BITS.iter().position(|&x| x == bits)?;
        let g = TERN_GROUPS.iter().position(|&x| x == group)?;
        GgmlType::from_id(TERN_FIRST_ID + (3 * b + g) as u32)
    }

    /// `(bits, group)` when this is one of tern's packed GPTQ types.
    pub fn tern_gptq_params(self) -> Option<(u8, usize)> {
        let i = self.id().checked_sub(TERN_FIRST_ID)? as usize;
        let bits = *TERN_BITS.get(i / 3)?;
        Some((bits, TERN_GROUPS[i % 3]))
    }

    /// Bytes for a row of `n` elements, or `None` when `n` is not a whole
    /// number of blocks or the size overflows.
    pub fn row_bytes(self, n: u64) -> Option<u64> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.type_size())
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_removed_ids_are_rejected() {
        for e in TABLE {
            assert_eq!(GgmlType::from_id(e.1), Some(e.0));
            assert_eq!(e.0.id(), e.1);
        }
        for removed in [4, 5, 31, 32, 33, 36, 37, 38, 42, 1000, 1023, 1036, u32::MAX] {
            assert_eq!(GgmlType::from_id(removed), None, "id {removed}");
        }
    }

    #[test]
    fn tern_ids_follow_the_formula() {
        let mut n = 0;
        for (b, bits) in TERN_BITS.into_iter().enumerate() {
            for (g, group) in TERN_GROUPS.into_iter().enumerate() {
                let ty = GgmlType::tern_gptq(bits, group).unwrap();
                assert_eq!(ty.id(), 1024 + (3 * b + g) as u32);
                assert_eq!(ty.tern_gptq_params(), Some((bits, group)));
                assert_eq!(ty.name(), format!("TERN_Q{bits}_G{group}"));
                assert_eq!(ty.block_size(), group as u64);
                assert_eq!(ty.type_size(), 4 + (group * bits as usize / 8) as u64);
                n += 1;
            }
        }
        assert_eq!(n, 12);
        assert_eq!(GgmlType::tern_gptq(5, 32), None);
        assert_eq!(GgmlType::tern_gptq(4, 256), None);
        assert_eq!(GgmlType::from_id(1036), None);
        assert_eq!(GgmlType::Q4_0.tern_gptq_params(), None);
    }

    #[test]
    fn row_bytes_checks_blocks_and_overflow() {
        assert_eq!(GgmlType::Q4_0.row_bytes(64), Some(36));
        assert_eq!(GgmlType::Q4_0.row_bytes(33), None);
        assert_eq!(GgmlType::F32.row_bytes(u64::MAX), None);
    }
}
