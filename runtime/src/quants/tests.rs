//! Unit tests for the quant registry and reference kernels: accuracy of
//! `vec_dot_ref` against an f64 dot product, quantization error on ggml's
//! test-quantize-fns signal, and the checked wrappers' length errors.
//! (Bit-exactness against gguf-py lives in `tests/quants_gguf_py.rs`.)

use super::*;

/// Every type the registry serves, in registry order.
const TYPES: [GgmlType; 18] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::TERN_Q2_G32,
    GgmlType::TERN_Q2_G64,
    GgmlType::TERN_Q2_G128,
    GgmlType::TERN_Q3_G32,
    GgmlType::TERN_Q3_G64,
    GgmlType::TERN_Q3_G128,
    GgmlType::TERN_Q4_G32,
    GgmlType::TERN_Q4_G64,
    GgmlType::TERN_Q4_G128,
    GgmlType::TERN_Q8_G32,
    GgmlType::TERN_Q8_G64,
    GgmlType::TERN_Q8_G128,
];

/// ggml's test-quantize-fns signal: `0.1 + 2·cos(i + offset)`, computed as
/// C does it there (`cosf` in f32, the sum in double, stored as float).
fn ggml_test_signal(offset: f32, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| (0.1f64 + 2.0 * f64::from((i as f32 + offset).cos())) as f32)
        .collect()
}

/// A small deterministic generator (xorshift64*), so tests need no crates.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f32 {
        (self.next_u64() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }
}

/// Random activations with magnitudes spread over several decades.
fn random_activations(rng: &mut Rng, n: usize) -> Vec<f32> {
    (0..n)
        .map(|i| rng.unit() * [0.01f32, 1.0, 30.0][i % 3])
        .collect()
}

fn quantize_vec(ty: GgmlType, x: &[f32]) -> Vec<u8> {
    let mut q = vec![0u8; ty.row_bytes(x.len() as u64).unwrap() as usize];
    quantize_row(ty, x, &mut q).unwrap();
    q
}

fn dequantize_vec(ty: GgmlType, q: &[u8], n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    dequantize_row(ty, q, &mut out).unwrap();
    out
}

/// Σ over elements of the magnitudes that enter the computation of w·x:
/// |d·q|·|x| plus, for Q4_1 and tern's types, |m|·|x| (the offset is summed
/// separately, so cancellation between d·q and m does not shrink the
/// rounding error).
fn magnitude_sum(ty: GgmlType, q: &[u8], x: &[f32]) -> f64 {
    let w = dequantize_vec(ty, q, x.len());
    if let Some((bits, group)) = ty.tern_gptq_params() {
        let mut a = 0.0f64;
        let mut codes = vec![0u8; group];
        for (b, xs) in q
            .chunks_exact(ty.type_size() as usize)
            .zip(x.chunks_exact(group))
        {
            let d = f64::from(half::f16::from_le_bytes([b[0], b[1]]).to_f32());
            let m = f64::from(half::f16::from_le_bytes([b[2], b[3]]).to_f32());
            tern_gptq::unpack_codes(&b[4..], bits, &mut codes);
            for (&c, &xj) in codes.iter().zip(xs) {
                a += ((d * f64::from(c)).abs() + m.abs()) * f64::from(xj).abs();
            }
        }
        return a;
    }
    if ty != GgmlType::Q4_1 {
        return w
            .iter()
            .zip(x)
            .map(|(&w, &x)| f64::from((w * x).abs()))
            .sum();
    }
    let mut a = 0.0f64;
    for (b, xs) in q.chunks_exact(20).zip(x.chunks_exact(32)) {
        let blk = q4_1::BlockQ4_1::read(b.try_into().unwrap());
        let (d, m) = (f64::from(blk.d.to_f32()), f64::from(blk.m.to_f32()));
        for (j, &xj) in xs.iter().enumerate() {
            a += ((d * f64::from(blk.q(j))).abs() + m.abs()) * f64::from(xj).abs();
        }
    }
    a
}

#[test]
fn registry_rows_match_the_type_table() {
    for ty in TYPES {
        let k = kernels(ty).expect("registered");
        assert_eq!(k.ty, ty);
        assert!(k.quantize_row.is_some(), "{ty}");
    }
    assert_eq!(supported_types().collect::<Vec<_>>(), TYPES);
    let sizes = [
        (GgmlType::Q8_0, q8_0::BlockQ8_0::BYTES, q8_0::QK8_0),
        (GgmlType::Q4_0, q4_0::BlockQ4_0::BYTES, q4_0::QK4_0),
        (GgmlType::Q4_1, q4_1::BlockQ4_1::BYTES, q4_1::QK4_1),
        (GgmlType::F32, fp32::BYTES, 1),
        (GgmlType::F16, fp16::BYTES, 1),
        (GgmlType::BF16, bf16::BYTES, 1),
        (GgmlType::TERN_Q3_G32, 16, 32),
        (GgmlType::TERN_Q4_G128, 68, 128),
        (GgmlType::TERN_Q8_G64, 68, 64),
        (GgmlType::TERN_Q2_G128, 36, 128),
    ];
    for (ty, bytes, block) in sizes {
        assert_eq!(ty.type_size(), bytes as u64, "{ty}");
        assert_eq!(ty.block_size(), block as u64, "{ty}");
    }
    for ty in [GgmlType::Q5_0, GgmlType::Q4_K, GgmlType::I32, GgmlType::F64] {
        assert!(kernels(ty).is_none(), "{ty}");
    }
}

/// `vec_dot_ref` against Σ w·x in f64 over the same dequantized weights.
///
/// The bound is the classic one for summing in f32: every term passes
/// through at most `block + n_blocks + 4` roundings of relative size 2⁻²⁴
/// (block partial sum, scale, offset, running total, Q4_1's dequantized
/// weight), so |error| ≤ (block + n_blocks + 4)·2⁻²⁴·Σ|terms|. We assert
/// twice that, a fixed a-priori bound independent of the data.
#[test]
fn vec_dot_matches_f64_dot_of_dequantized_row() {
    let mut rng = Rng(0x5eed_1234_abcd_0001);
    for ty in TYPES {
        for n in [32usize, 256, 4096] {
            if !(n as u64).is_multiple_of(ty.block_size()) {
                continue;
            }
            let w = random_activations(&mut rng, n);
            let x = random_activations(&mut rng, n);
            let q = quantize_vec(ty, &w);
            let deq = dequantize_vec(ty, &q, n);
            let exact: f64 = deq
                .iter()
                .zip(&x)
                .map(|(&a, &b)| f64::from(a) * f64::from(b))
                .sum();
            let got = vec_dot(ty, &q, &x).unwrap();
            let block = ty.block_size() as f64;
            let n_blocks = n as f64 / block;
            let bound = 2.0 * (block + n_blocks + 4.0) * 2f64.powi(-24) * magnitude_sum(ty, &q, &x);
            let err = (f64::from(got) - exact).abs();
            assert!(
                err <= bound,
                "{ty} n={n}: vec_dot {got} vs f64 {exact}: error {err:e} over bound {bound:e}"
            );
            // The dot of a row with itself through the same path must also be
            // finite and of the right sign: a cheap guard on sign handling.
            assert!(vec_dot(ty, &q, &deq).unwrap() >= 0.0, "{ty}");
        }
    }
}

/// Round-trip error on ggml's signal (4096 values, offset 0).
///
/// ggml's test-quantize-fns reports `sqrt(Σ diff²) / n` (note: divided by n,
/// not √n) and fails above 0.002 for every 4- and 8-bit legacy type; we keep
/// that exact metric and limit. We also bound the true RMSE,
/// `sqrt(Σ diff² / n)`, per type with a budget from the step size:
/// Q4_0 and Q4_1 ≈ step/√12 with step ≈ 4/15 ≈ 0.27 → 0.09,
/// Q8_0 step ≈ 2.1/127 → 0.006, F16 0.0004, BF16 0.003, F32 exactly 0.
/// (Measured: Q4_0 0.0718, Q4_1 0.0732, Q8_0 0.00476, BF16 0.00228,
/// F16 0.00028; ggml metric Q4_0 0.00112, Q4_1 0.00114, Q8_0 0.000074.)
#[test]
fn round_trip_error_on_ggml_signal_is_within_ggml_limits() {
    const GGML_MAX_QUANTIZATION_TOTAL_ERROR: f64 = 0.002;
    let x = ggml_test_signal(0.0, 4096);
    for (ty, rmse_budget) in [
        (GgmlType::F32, 0.0),
        (GgmlType::F16, 0.0004),
        (GgmlType::BF16, 0.003),
        (GgmlType::Q8_0, 0.006),
        (GgmlType::Q4_0, 0.09),
        (GgmlType::Q4_1, 0.09),
        // tern: step ≈ 4/(2^bits − 1), RMSE ≈ step/√12 plus f16 rounding.
        (GgmlType::TERN_Q2_G32, 0.40),
        (GgmlType::TERN_Q2_G128, 0.40),
        (GgmlType::TERN_Q3_G64, 0.18),
        (GgmlType::TERN_Q4_G32, 0.09),
        (GgmlType::TERN_Q4_G128, 0.09),
        (GgmlType::TERN_Q8_G128, 0.006),
    ] {
        let y = dequantize_vec(ty, &quantize_vec(ty, &x), x.len());
        let sq: f64 = x
            .iter()
            .zip(&y)
            .map(|(&a, &b)| (f64::from(a) - f64::from(b)).powi(2))
            .sum();
        let ggml_metric = sq.sqrt() / x.len() as f64;
        let rmse = (sq / x.len() as f64).sqrt();
        println!("{ty}: ggml metric {ggml_metric:.6}, rmse {rmse:.6}");
        // ggml's limit is for its 4- and 8-bit types; 2 and 3 bits exceed it.
        if ty.tern_gptq_params().is_none_or(|(bits, _)| bits >= 4) {
            assert!(
                ggml_metric < GGML_MAX_QUANTIZATION_TOTAL_ERROR,
                "{ty}: {ggml_metric}"
            );
        }
        assert!(rmse <= rmse_budget, "{ty}: rmse {rmse} over {rmse_budget}");
    }
}

/// ggml's dot-product check: quantized weights dotted with the second test
/// signal (offset 1) must land within 0.02·n of the exact f32 dot.
#[test]
fn dot_product_error_on_ggml_signal_is_within_ggml_limit() {
    const GGML_MAX_DOT_PRODUCT_ERROR: f64 = 0.02;
    let w = ggml_test_signal(0.0, 4096);
    let x = ggml_test_signal(1.0, 4096);
    let exact: f64 = w
        .iter()
        .zip(&x)
        .map(|(&a, &b)| f64::from(a) * f64::from(b))
        .sum();
    for ty in TYPES {
        let got = vec_dot(ty, &quantize_vec(ty, &w), &x).unwrap();
        let err = (f64::from(got) - exact).abs() / w.len() as f64;
        println!("{ty}: dot error per element {err:.6}");
        // ggml's limit is for 4 and 8 bits; tern's 2 and 3 bits get 5× and 2.5×.
        let limit = match ty.tern_gptq_params() {
            Some((2, _)) => 5.0 * GGML_MAX_DOT_PRODUCT_ERROR,
            Some((3, _)) => 2.5 * GGML_MAX_DOT_PRODUCT_ERROR,
            _ => GGML_MAX_DOT_PRODUCT_ERROR,
        };
        assert!(err < limit, "{ty}: {err}");
    }
}

#[test]
fn rows_may_start_at_any_alignment() {
    let x = ggml_test_signal(0.5, 128);
    for ty in TYPES {
        let q = quantize_vec(ty, &x);
        let want = dequantize_vec(ty, &q, x.len());
        let dot = vec_dot(ty, &q, &x).unwrap();
        for shift in 1..4 {
            let mut buf = vec![0u8; shift];
            buf.extend_from_slice(&q);
            assert_eq!(dequantize_vec(ty, &buf[shift..], x.len()), want, "{ty}");
            assert_eq!(vec_dot(ty, &buf[shift..], &x).unwrap(), dot, "{ty}");
        }
    }
}

fn bad_length(r: Result<impl std::fmt::Debug>) -> (u64, u64) {
    match r {
        Err(Error::BadLength { expected, got, .. }) => (expected, got),
        other => panic!("expected BadLength, got {other:?}"),
    }
}

#[test]
fn checked_wrappers_reject_bad_lengths() {
    for ty in TYPES {
        let block = ty.block_size() as usize;
        let size = ty.type_size() as usize;
        let mut out = vec![0.0f32; 2 * block];
        let src = vec![0u8; 2 * size];

        // Right sizes work, empty rows too.
        dequantize_row(ty, &src, &mut out).unwrap();
        dequantize_row(ty, &[], &mut []).unwrap();
        assert_eq!(vec_dot(ty, &[], &[]).unwrap(), 0.0);

        // One byte short / long.
        assert_eq!(
            bad_length(dequantize_row(ty, &src[1..], &mut out)),
            (2 * size as u64, 2 * size as u64 - 1)
        );
        let mut long = src.clone();
        long.push(0);
        assert_eq!(
            bad_length(vec_dot(ty, &long, &out)),
            (2 * size as u64, 2 * size as u64 + 1)
        );
        let mut qdst = vec![0u8; 2 * size + 3];
        assert_eq!(
            bad_length(quantize_row(ty, &out, &mut qdst)),
            (2 * size as u64, 2 * size as u64 + 3)
        );

        // Element counts that are not whole blocks.
        if block > 1 {
            let mut odd = vec![0.0f32; block + 1];
            assert_eq!(
                bad_length(dequantize_row(ty, &src, &mut odd)),
                (2 * block as u64, block as u64 + 1)
            );
            assert_eq!(
                bad_length(vec_dot(ty, &src, &odd[..block - 1])),
                (block as u64, block as u64 - 1)
            );
            assert_eq!(
                bad_length(quantize_row(ty, &odd, &mut qdst)),
                (2 * block as u64, block as u64 + 1)
            );
        }
    }
}

#[test]
fn types_without_kernels_are_an_error_not_a_panic() {
    let mut out = [0.0f32; 32];
    for r in [
        dequantize_row(GgmlType::Q5_0, &[0u8; 22], &mut out).map(|_| 0.0),
        vec_dot(GgmlType::Q4_K, &[0u8; 144], &[0.0; 256]),
        quantize_row(GgmlType::IQ4_NL, &[0.0; 32], &mut [0u8; 18]).map(|_| 0.0),
    ] {
        assert!(matches!(r, Err(Error::UnsupportedType { .. })), "{r:?}");
    }
}
