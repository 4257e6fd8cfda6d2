//! The CPU backend's fast path: every SIMD kernel set this machine can run
//! against the scalar reference of the same quantized math
//! (`quants::q8_act`), the dot-product error budget against f32 math, the
//! batch-shape and thread-count invariance of the kernels and of whole
//! forwards, and the fast path's measured distance from the float64 oracle
//! (the exact path's is checked in `forward_reference.rs`).
//!
//! Budgets are ggml's (test-quantize-fns): SIMD vs reference ≤ 1e-4 of the
//! sum of the terms' magnitudes (the integer block sums are exact, only the
//! f32 accumulation order may differ), and |dot − exact| / n ≤ 0.02.

mod common;

use std::sync::Arc;

use common::*;
use tern_runtime::backend::cpu::{kernels, CpuBackend};
use tern_runtime::backend::KvType;
use tern_runtime::gguf::GgufFile;
use tern_runtime::model::LlamaModel;
use tern_runtime::quants::{self, q8_act, GgmlType};
use tern_runtime::session::{Batch, Session};

const TYPES: [GgmlType; 3] = [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0];

/// Deterministic values in [-1, 1) (xorshift).
fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn quantize_matrix(ty: GgmlType, w: &[f32], k: usize) -> Vec<u8> {
    let rb = ty.row_bytes(k as u64).unwrap() as usize;
    let mut out = vec![0u8; w.len() / k * rb];
    for (src, dst) in w.chunks_exact(k).zip(out.chunks_exact_mut(rb)) {
        quants::quantize_row(ty, src, dst).unwrap();
    }
    out
}

fn quantize_acts(x: &[f32]) -> (Vec<i8>, Vec<f32>, Vec<f32>) {
    let nb = x.len() / 32;
    let (mut qs, mut d, mut s) = (vec![0i8; x.len()], vec![0.0; nb], vec![0.0; nb]);
    q8_act::quantize_row_ref(x, &mut qs, &mut d, &mut s);
    (qs, d, s)
}

fn ref_dot(ty: GgmlType, w: &[u8], qs: &[i8], d: &[f32], s: &[f32]) -> f32 {
    match ty {
        GgmlType::Q4_0 => q8_act::vec_dot_q4_0_ref(w, qs, d),
        GgmlType::Q4_1 => q8_act::vec_dot_q4_1_ref(w, qs, d, s),
        GgmlType::Q8_0 => q8_act::vec_dot_q8_0_ref(w, qs, d),
        _ => unreachable!(),
    }
}

#[test]
fn kernel_sets_are_detected() {
    let sets = kernels::available();
    eprintln!("kernel sets: {sets:?}");
    assert_eq!(sets.last(), Some(&"scalar"));
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        assert!(sets.contains(&"avx2"));
    }
}

#[test]
fn quantizers_match_the_reference_bit_for_bit() {
    let mut x = rand_vec(7, 32 * 64);
    // Edge cases: an all-zero block, a block with one huge value, ties.
    x[..32].iter_mut().for_each(|v| *v = 0.0);
    x[32..64]
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = i as f32 * 0.5);
    x[64] = 1e30;
    x[100] = -3e-30;
    // NaN and infinities, and a block so small that 1/d overflows.
    x[130] = f32::NAN;
    x[170] = f32::INFINITY;
    x[171] = -2.0;
    x[200] = f32::NEG_INFINITY;
    x[224..256]
        .iter_mut()
        .enumerate()
        .for_each(|(i, v)| *v = (i as f32 - 16.0) * 1e-39);
    let want = quantize_acts(&x);
    for set in kernels::available() {
        let got = kernels::quantize(set, &x).unwrap();
        assert_eq!(got.0, want.0, "{set}: quants");
        let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&got.1), bits(&want.1), "{set}: scales");
        assert_eq!(bits(&got.2), bits(&want.2), "{set}: block sums");
    }
}

/// Every set × type × shape: each element within 1e-4 of the reference's
/// magnitude, and computing any sub-rectangle gives the same bits as the
/// whole (what batch-shape and thread-count invariance rest on).
#[test]
fn gemm_matches_the_reference() {
    for set in kernels::available() {
        for ty in TYPES {
            for (rows, k, n_tok) in [(1, 32, 1), (13, 96, 11), (9, 256, 4), (33, 64, 17)] {
                let seed = rows as u64 * 1000 + k as u64 + n_tok as u64;
                let w = quantize_matrix(ty, &rand_vec(seed, rows * k), k);
                let x: Vec<f32> = rand_vec(seed + 1, n_tok * k)
                    .iter()
                    .map(|v| v * 3.0)
                    .collect();
                let (qs, d, s) = quantize_acts(&x);
                let rb = w.len() / rows;
                let nb = k / 32;
                let mut full = vec![f32::NAN; rows * n_tok];
                kernels::gemm(set, ty, &w, k, &qs, &d, &s, 0..rows, 0..n_tok, &mut full).unwrap();
                let mut worst = 0.0f32;
                for t in 0..n_tok {
                    for r in 0..rows {
                        let args = (
                            &w[r * rb..(r + 1) * rb],
                            &qs[t * k..(t + 1) * k],
                            &d[t * nb..(t + 1) * nb],
                            &s[t * nb..(t + 1) * nb],
                        );
                        let want = ref_dot(ty, args.0, args.1, args.2, args.3);
                        let mag = q8_act::dot_magnitude(ty, args.0, args.1, args.2, args.3);
                        let got = full[t * rows + r];
                        let err = (got - want).abs() / mag.max(1e-30);
                        worst = worst.max(err);
                        assert!(
                            err <= 1e-4,
                            "{set} {ty} [{rows}x{k}]·{n_tok}: ({t}, {r}) got {got} want {want} (mag {mag})"
                        );
                    }
                }
                // Split the rectangle at awkward places: same bits.
                let mut parts = vec![f32::NAN; rows * n_tok];
                let (rs, ts) = (rows / 3, n_tok / 2 + 1);
                for (rr, tr) in [
                    (0..rs, 0..ts.min(n_tok)),
                    (rs..rows, 0..ts.min(n_tok)),
                    (0..rs, ts.min(n_tok)..n_tok),
                    (rs..rows, ts.min(n_tok)..n_tok),
                ] {
                    if !rr.is_empty() && !tr.is_empty() {
                        kernels::gemm(set, ty, &w, k, &qs, &d, &s, rr, tr, &mut parts).unwrap();
                    }
                }
                for (i, (a, b)) in full.iter().zip(&parts).enumerate() {
                    assert_eq!(
                        a.to_bits(),
                        b.to_bits(),
                        "{set} {ty}: element {i} depends on the tiling"
                    );
                }
                eprintln!("{set} {ty} [{rows}x{k}]·{n_tok}: worst relative error {worst:.2e}");
            }
        }
    }
}

/// With unit scales and no offsets every f32 operation is exact, so the
/// kernels must equal the reference exactly: the integer part is exact.
#[test]
fn integer_part_is_exact() {
    let (rows, k, n_tok) = (7, 128, 6);
    let nb = k / 32;
    for ty in TYPES {
        let rb = ty.row_bytes(k as u64).unwrap() as usize;
        let mut w = vec![0u8; rows * rb];
        let bb = rb / nb;
        let noise: Vec<f32> = rand_vec(99, rows * rb);
        for (i, byte) in w.iter_mut().enumerate() {
            *byte = ((noise[i] + 1.0) * 127.9) as u8;
        }
        for blk in w.chunks_exact_mut(bb) {
            blk[..2].copy_from_slice(&half_one());
            if ty == GgmlType::Q4_1 {
                blk[2..4].copy_from_slice(&[0, 0]);
            }
        }
        let qs: Vec<i8> = rand_vec(5, n_tok * k)
            .iter()
            .map(|v| (v * 127.0) as i8)
            .collect();
        let d = vec![1.0f32; n_tok * nb];
        let s: Vec<f32> = qs
            .chunks_exact(32)
            .map(|b| b.iter().map(|&q| q as i32).sum::<i32>() as f32)
            .collect();
        for set in kernels::available() {
            let mut out = vec![0.0; rows * n_tok];
            kernels::gemm(set, ty, &w, k, &qs, &d, &s, 0..rows, 0..n_tok, &mut out).unwrap();
            for t in 0..n_tok {
                for r in 0..rows {
                    let want = ref_dot(
                        ty,
                        &w[r * rb..(r + 1) * rb],
                        &qs[t * k..(t + 1) * k],
                        &d[t * nb..(t + 1) * nb],
                        &s[t * nb..(t + 1) * nb],
                    );
                    assert_eq!(out[t * rows + r], want, "{set} {ty}: ({t}, {r})");
                    assert_eq!(want.fract(), 0.0);
                }
            }
        }
    }
}

fn half_one() -> [u8; 2] {
    0x3c00u16.to_le_bytes()
}

/// ggml's test-quantize-fns dot budget: quantize weights (reference
/// quantizer) and activations, and compare the fast dot to the f64 dot of
/// the original floats: |error| / n ≤ 0.02.
#[test]
fn dot_error_within_ggml_budget() {
    let n = 4096;
    // ggml's test data: 0.1 + 2·cos(i + offset).
    let w: Vec<f32> = (0..n).map(|i| 0.1 + 2.0 * (i as f32).cos()).collect();
    let x: Vec<f32> = (0..n).map(|i| 0.1 + 2.0 * (i as f32 + 1.0).cos()).collect();
    let exact: f64 = w.iter().zip(&x).map(|(&a, &b)| a as f64 * b as f64).sum();
    for ty in TYPES {
        let wq = quantize_matrix(ty, &w, n);
        for set in kernels::available() {
            let (qs, d, s) = kernels::quantize(set, &x).unwrap();
            let mut out = [0.0f32];
            kernels::gemm(set, ty, &wq, n, &qs, &d, &s, 0..1, 0..1, &mut out).unwrap();
            let err = (out[0] as f64 - exact).abs() / n as f64;
            eprintln!("{set} {ty}: dot error per element {err:.2e}");
            assert!(err <= 0.02, "{set} {ty}: {err}");
        }
    }
}

// --- Whole forwards through the model layer (no tokenizer needed) ---

type Cpu = LlamaModel<CpuBackend>;

fn load(rel: &str, backend: CpuBackend) -> Arc<Cpu> {
    let file = GgufFile::open(model_path(rel)).expect("open model");
    Arc::new(LlamaModel::load(Arc::new(file), backend).expect("load"))
}

fn forward_all(m: &Arc<Cpu>, toks: &[u32], n_ctx: usize, kv: KvType) -> Vec<f32> {
    let mut s = Session::new(Arc::clone(m), n_ctx, kv).expect("session");
    let l = s
        .forward(&Batch::new(toks, 0).all_logits())
        .expect("forward");
    l.as_slice().to_vec()
}

/// Worst NMSE over the fixture prompts of a tiny model, and whether every
/// position's argmax agrees with the oracle.
fn tiny_vs_oracle(name: &str, backend: CpuBackend) -> (f64, usize, usize) {
    let fx = fixture_dir().join("models");
    let spec = read_json(&fx.join(format!("{name}.json")));
    let m = load(&format!("synthetic/{name}.gguf"), backend);
    let nv = m.config.n_vocab;
    let (mut worst, mut agree, mut total) = (0.0f64, 0, 0);
    for p in spec["prompts"].as_array().unwrap() {
        let toks = tokens(&p["tokens"]);
        let want = read_f32(&fx.join(p["logits"].as_str().unwrap()));
        let got = forward_all(&m, &toks, toks.len(), KvType::F32);
        worst = worst.max(nmse(&got, &want));
        for t in 0..toks.len() {
            total += 1;
            agree += (argmax(&got[t * nv..(t + 1) * nv]) == argmax(&want[t * nv..(t + 1) * nv]))
                as usize;
        }
    }
    (worst, agree, total)
}

const TINY: [&str; 6] = [
    "tiny-llama-q8_0",
    "tiny-llama-q4_0",
    "tiny-llama-q4_1",
    "tiny-minicpm-q8_0",
    "tiny-minicpm-q4_0",
    "tiny-minicpm-q4_1",
];

/// The exact path keeps the oracle bound of `forward_reference.rs`.
#[test]
fn exact_path_meets_the_oracle_bound() {
    for name in TINY {
        let (e, agree, total) = tiny_vs_oracle(name, CpuBackend::exact(2));
        eprintln!("exact {name}: NMSE {e:.3e}, argmax {agree}/{total}");
        assert!(e <= 1e-6, "{name}: {e:.3e}");
        assert_eq!(agree, total, "{name}");
    }
}

/// The fast path on the tiny random models. Their weights are random, so
/// activations are noise-like and 8-bit activation quantization shows as
/// NMSE ≈ 1e-5..1e-4 (measured); the bound leaves a factor ~3.
#[test]
fn fast_path_on_tiny_models() {
    for name in TINY {
        let (e, agree, total) = tiny_vs_oracle(name, CpuBackend::fast(2));
        eprintln!("fast {name}: NMSE {e:.3e}, argmax {agree}/{total}");
        assert!(e <= 1e-3, "{name}: {e:.3e}");
        assert!(agree * 100 >= total * 90, "{name}: argmax {agree}/{total}");
    }
}

/// The fast path on the real SmolLM2-135M-Instruct (Q4_1, Q8_0 embeddings)
/// against the float64 oracle of the dequantized weights (f32 activations).
///
/// Measured (avx512vnni and scalar sets alike, f16 KV): last-position NMSE
/// 5.8e-3, top-10 NMSE 2.6e-2, teacher-forced top-1 agreement 639/668 =
/// 95.7%. The error is spread over every matmul (keeping any one family
/// exact gains at most 4×): it is 8-bit activation quantization itself on
/// this model's outlier-heavy activations, the same scheme llama.cpp uses.
/// The exact backend meets the 1e-4 / 99% bounds of `forward_reference.rs`;
/// these bounds pin the fast path's measured accuracy with ~2× headroom.
#[test]
fn fast_path_on_smollm2() {
    let fx = fixture_dir().join("models");
    let spec = read_json(&fx.join("smollm2.json"));
    let m = load("SmolLM2-135M-Instruct.Q4_1.gguf", CpuBackend::fast(2));
    let nv = m.config.n_vocab;
    let (mut positions, mut agree, mut worst_last, mut worst_top) = (0usize, 0usize, 0f64, 0f64);
    for p in spec["prompts"].as_array().unwrap() {
        let toks = tokens(&p["tokens"]);
        let got = forward_all(&m, &toks, 512, KvType::F16);
        let want_last = read_f16(&fx.join(p["last_logits"].as_str().unwrap()));
        worst_last = worst_last.max(nmse(&got[(toks.len() - 1) * nv..], &want_last));
        let argmaxes = tokens(&p["argmax"]);
        for (t, top) in p["top"].as_array().unwrap().iter().enumerate() {
            let row = &got[t * nv..(t + 1) * nv];
            let (mut g, mut w) = (Vec::new(), Vec::new());
            for e in top.as_array().unwrap() {
                g.push(row[e[0].as_u64().unwrap() as usize]);
                w.push(e[1].as_f64().unwrap() as f32);
            }
            worst_top = worst_top.max(nmse(&g, &w));
            positions += 1;
            agree += (argmax(row) == argmaxes[t] as usize) as usize;
        }
    }
    let rate = agree as f64 / positions as f64;
    eprintln!(
        "smollm2 fast ({}): last-logit NMSE {worst_last:.3e}, top-10 NMSE {worst_top:.3e}, \
         top-1 {agree}/{positions} = {:.2}%",
        m.backend.kernel_name(),
        rate * 100.0
    );
    assert!(worst_last <= 1.2e-2, "last-position NMSE {worst_last:.3e}");
    assert!(worst_top <= 5e-2, "top-10 NMSE {worst_top:.3e}");
    assert!(rate >= 0.94, "top-1 agreement {:.2}%", rate * 100.0);
}

/// n one-token forwards equal one n-token forward, bit for bit, on the fast
/// path, for 1, 2 and 3 threads (which must also agree with each other).
#[test]
fn fast_path_is_batch_and_thread_invariant() {
    for rel in [
        "synthetic/tiny-llama-q4_0.gguf",
        "synthetic/tiny-minicpm-q4_1.gguf",
        "synthetic/tiny-llama-q8_0.gguf",
        "SmolLM2-135M-Instruct.Q4_1.gguf",
    ] {
        let mut reference: Option<Vec<f32>> = None;
        for threads in [1, 2, 3] {
            let m = load(rel, CpuBackend::fast(threads));
            let nv = m.config.n_vocab;
            let toks: Vec<u32> = rand_vec(40, 21)
                .iter()
                .map(|v| ((v + 1.0) * 0.5 * (nv - 1) as f32) as u32)
                .collect();
            let toks: Vec<u32> = toks.iter().map(|&t| t.min(nv as u32 - 1)).collect();
            let batched = forward_all(&m, &toks, 32, KvType::F16);
            let mut s = Session::new(Arc::clone(&m), 32, KvType::F16).unwrap();
            // Prefill 5 tokens at once, then one at a time.
            let first = s.forward(&Batch::new(&toks[..5], 0).all_logits()).unwrap();
            assert!(
                first.as_slice() == &batched[..5 * nv],
                "{rel}, {threads} threads: prefix batch"
            );
            for (i, &t) in toks.iter().enumerate().skip(5) {
                let l = s.forward(&Batch::new(&[t], i as u32)).unwrap();
                assert!(
                    l.as_slice() == &batched[i * nv..(i + 1) * nv],
                    "{rel}, {threads} threads: token {i} differs between batched and single-step"
                );
            }
            match &reference {
                None => reference = Some(batched),
                Some(r) => assert!(r == &batched, "{rel}: {threads} threads differ from 1"),
            }
        }
    }
}
