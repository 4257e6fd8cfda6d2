//! The forward pass against the independent float64 oracle
//! (`../shared/reference/ref_forward.py`), through fixtures made by
//! `scripts/fixtures/make_model_fixtures.py`.
//!
//! Tiny synthetic llama and minicpm models in every weight type: logits of
//! every position of three prompts. The real SmolLM2-135M-Instruct: full
//! last-position logits, the top-10 logits and the argmax at every position.

mod common;

use common::*;
use tern_runtime::{Batch, KvType, Model, ModelParams, SessionParams};

/// These bounds hold the **exact** CPU path (f32 activations). The default
/// fast path quantizes activations to 8 bits; its measured distance from the
/// oracle is pinned in `cpu_kernels.rs`.
fn exact(threads: Option<usize>) -> ModelParams {
    ModelParams {
        threads,
        exact: true,
        ..Default::default()
    }
}

/// NMSE bound for tiny models. The oracle dequantizes the same weights tern
/// reads, so quantized models are held to the same bound as f32 ones: what
/// differs is only f32-versus-f64 arithmetic.
const TINY_NMSE: f64 = 1e-6;

fn run_all_positions(model: &Model, tokens: &[u32], n_ctx: usize, kv: KvType) -> Vec<f32> {
    let mut s = model
        .new_session(&SessionParams {
            n_ctx,
            kv_type: kv,
            ..Default::default()
        })
        .expect("session");
    let logits = s
        .forward(&Batch::new(tokens, 0).all_logits())
        .expect("forward");
    logits.as_slice().to_vec()
}

fn check_tiny(name: &str) -> f64 {
    let fx = fixture_dir().join("models");
    let spec = read_json(&fx.join(format!("{name}.json")));
    let path = model_path(&format!("synthetic/{name}.gguf"));
    assert_eq!(
        sha256_file(&path),
        spec["model_sha256"].as_str().unwrap(),
        "{name}: cached model differs from the one the fixtures were made from; re-run scripts/fetch-test-data.sh"
    );
    let model = Model::load(&path, &exact(Some(2))).expect("load");
    let mut worst = 0.0f64;
    for p in spec["prompts"].as_array().unwrap() {
        let toks = tokens(&p["tokens"]);
        let want = read_f32(&fx.join(p["logits"].as_str().unwrap()));
        // n_ctx = prompt length: the oracle picks LongRoPE factors by the
        // sequence length, tern (like llama.cpp) by the context size.
        let got = run_all_positions(&model, &toks, toks.len(), KvType::F32);
        let e = nmse(&got, &want);
        assert!(
            e <= TINY_NMSE,
            "{name} prompt of {} tokens: NMSE {e:.3e} > {TINY_NMSE:e}",
            toks.len()
        );
        // Greedy choice agrees everywhere on these random models, too.
        let nv = model.config().n_vocab;
        for t in 0..toks.len() {
            assert_eq!(
                argmax(&got[t * nv..(t + 1) * nv]),
                argmax(&want[t * nv..(t + 1) * nv]),
                "{name}: argmax differs at position {t}"
            );
        }
        worst = worst.max(e);
    }
    eprintln!("{name}: worst NMSE {worst:.3e}");
    worst
}

macro_rules! tiny_tests {
    ($($fn:ident => $name:literal,)*) => {$(
        #[test]
        fn $fn() {
            check_tiny($name);
        }
    )*};
}

tiny_tests! {
    tiny_llama_f32 => "tiny-llama-f32",
    tiny_llama_f16 => "tiny-llama-f16",
    tiny_llama_q8_0 => "tiny-llama-q8_0",
    tiny_llama_q4_0 => "tiny-llama-q4_0",
    tiny_llama_q4_1 => "tiny-llama-q4_1",
    tiny_minicpm_f32 => "tiny-minicpm-f32",
    tiny_minicpm_f16 => "tiny-minicpm-f16",
    tiny_minicpm_q8_0 => "tiny-minicpm-q8_0",
    tiny_minicpm_q4_0 => "tiny-minicpm-q4_0",
    tiny_minicpm_q4_1 => "tiny-minicpm-q4_1",
    tiny_minicpm_longrope_f32 => "tiny-minicpm-longrope-f32",
}

/// SmolLM2-135M-Instruct (Q4_1 weights, Q8_0 embeddings) against the oracle:
/// NMSE ≤ 1e-4 on full last-position logits and on the top-10 logits of
/// every position, teacher-forced top-1 agreement ≥ 99% over ≥ 500 positions.
fn check_smollm2(kv: KvType) {
    let fx = fixture_dir().join("models");
    let spec = read_json(&fx.join("smollm2.json"));
    let path = model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    assert_eq!(sha256_file(&path), spec["model_sha256"].as_str().unwrap());
    let model = Model::load(&path, &exact(None)).expect("load");
    let nv = model.config().n_vocab;
    let (mut positions, mut agree, mut worst_last, mut worst_top) = (0usize, 0usize, 0f64, 0f64);
    let mut disagreements = Vec::new();
    for (pi, p) in spec["prompts"].as_array().unwrap().iter().enumerate() {
        let toks = tokens(&p["tokens"]);
        let got = run_all_positions(&model, &toks, 512, kv);
        // Full logits of the last position.
        let want_last = read_f16(&fx.join(p["last_logits"].as_str().unwrap()));
        let last = &got[(toks.len() - 1) * nv..];
        let e = nmse(last, &want_last);
        worst_last = worst_last.max(e);
        // Top-10 logits and argmax at every position.
        let argmaxes = tokens(&p["argmax"]);
        for (t, top) in p["top"].as_array().unwrap().iter().enumerate() {
            let row = &got[t * nv..(t + 1) * nv];
            let (mut g, mut w) = (Vec::new(), Vec::new());
            for e in top.as_array().unwrap() {
                let id = e[0].as_u64().unwrap() as usize;
                g.push(row[id]);
                w.push(e[1].as_f64().unwrap() as f32);
            }
            worst_top = worst_top.max(nmse(&g, &w));
            positions += 1;
            if argmax(row) == argmaxes[t] as usize {
                agree += 1;
            } else {
                let margin = p["margin"][t].as_f64().unwrap_or(f64::NAN);
                disagreements.push(format!(
                    "prompt {pi} position {t}: oracle margin {margin:.4}"
                ));
            }
        }
    }
    let rate = agree as f64 / positions as f64;
    eprintln!(
        "smollm2 ({kv:?} KV): last-logit NMSE {worst_last:.3e}, top-10 NMSE {worst_top:.3e}, \
         top-1 agreement {agree}/{positions} = {:.2}% {disagreements:?}",
        rate * 100.0
    );
    assert!(
        positions >= 500,
        "only {positions} positions in the fixture"
    );
    assert!(worst_last <= 1e-4, "last-position NMSE {worst_last:.3e}");
    assert!(worst_top <= 1e-4, "top-10 NMSE {worst_top:.3e}");
    assert!(
        rate >= 0.99,
        "top-1 agreement {:.2}%: {disagreements:?}",
        rate * 100.0
    );
}

#[test]
fn smollm2_matches_oracle_f32_kv() {
    check_smollm2(KvType::F32);
}

#[test]
fn smollm2_matches_oracle_f16_kv() {
    check_smollm2(KvType::F16);
}
