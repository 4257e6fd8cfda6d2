//! tern's packed GPTQ types in a real model: the tiny synthetic llama with
//! every 2-D tensor stored as one of the twelve `TERN_Q{bits}_G{group}`
//! types is written, read back, named by the reader, and runs forward on the
//! CPU (fast path and exact path) with the same logits as the same weights
//! stored dequantized as F32.

mod common;

use std::path::PathBuf;

use common::*;
use tern_runtime::gguf::{GgufFile, GgufWriter};
use tern_runtime::quants::{dequantize_row, quantize_row, GgmlType};
use tern_runtime::{Batch, Model, ModelParams, SessionParams};

const TERN_TYPES: [GgmlType; 12] = [
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

/// Writes `(tern model, same weights as F32)` next to each other in a
/// fresh temporary directory and returns their paths.
fn write_models(dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let src = GgufFile::open(model_path("synthetic/tiny-llama-f32.gguf")).unwrap();
    let mut tern = GgufWriter::new();
    let mut deq = GgufWriter::new();
    for (k, v) in src.metadata() {
        tern.add_kv(k.clone(), v.clone()).unwrap();
        deq.add_kv(k.clone(), v.clone()).unwrap();
    }
    let mut n_tern = 0;
    for t in src.tensors() {
        let data = src.tensor_data(t);
        assert_eq!(t.ty, GgmlType::F32);
        if t.dims.len() != 2 {
            tern.add_tensor(t.name.clone(), t.ty, &t.dims, data.to_vec())
                .unwrap();
            deq.add_tensor(t.name.clone(), t.ty, &t.dims, data.to_vec())
                .unwrap();
            continue;
        }
        let ty = TERN_TYPES[n_tern % TERN_TYPES.len()];
        n_tern += 1;
        let cols = t.dims[0] as usize;
        let x: Vec<f32> = data
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect();
        let rb = ty.row_bytes(cols as u64).unwrap() as usize;
        let mut q = vec![0u8; rb * (x.len() / cols)];
        let mut y = vec![0.0f32; x.len()];
        for ((xr, qr), yr) in x
            .chunks_exact(cols)
            .zip(q.chunks_exact_mut(rb))
            .zip(y.chunks_exact_mut(cols))
        {
            quantize_row(ty, xr, qr).unwrap();
            dequantize_row(ty, qr, yr).unwrap();
        }
        let ybytes: Vec<u8> = y.iter().flat_map(|v| v.to_le_bytes()).collect();
        tern.add_tensor(t.name.clone(), ty, &t.dims, q).unwrap();
        deq.add_tensor(t.name.clone(), GgmlType::F32, &t.dims, ybytes)
            .unwrap();
    }
    assert!(n_tern >= TERN_TYPES.len(), "every tern type is used");
    let (a, b) = (dir.join("tern.gguf"), dir.join("deq.gguf"));
    tern.write_file(&a).unwrap();
    deq.write_file(&b).unwrap();
    (a, b)
}

fn logits(path: &std::path::Path, exact: bool, tokens: &[u32]) -> Vec<Vec<f32>> {
    let m = Model::load(
        path,
        &ModelParams {
            threads: Some(2),
            exact,
            ..Default::default()
        },
    )
    .unwrap();
    let mut s = m
        .new_session(&SessionParams {
            n_ctx: 64,
            ..Default::default()
        })
        .unwrap();
    let l = s.forward(&Batch::new(tokens, 0).all_logits()).unwrap();
    (0..l.n_rows())
        .map(|i| l.row(i).unwrap().to_vec())
        .collect()
}

#[test]
fn a_model_stored_in_tern_types_runs_forward() {
    let dir = std::env::temp_dir().join(format!("tern-quant-model-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (tern, deq) = write_models(&dir);

    // The reader accepts the ids and names the types.
    let f = GgufFile::open(&tern).unwrap();
    let names: Vec<&str> = f.tensors().iter().map(|t| t.ty.name()).collect();
    for ty in TERN_TYPES {
        assert!(names.contains(&ty.name()), "{ty} missing from {names:?}");
    }

    let tokens = [1u32, 17, 300, 42, 7, 99, 500, 3];
    let want = logits(&deq, true, &tokens);
    for exact in [true, false] {
        let got = logits(&tern, exact, &tokens);
        for (g, w) in got.iter().zip(&want) {
            assert!(g.iter().all(|v| v.is_finite()));
            // Same decoded weights, same f32 arithmetic: identical logits.
            assert_eq!(g, w, "exact={exact}");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
