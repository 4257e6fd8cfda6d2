//! Every CUDA op against the CPU backend's exact path, on fresh random
//! inputs (never zeros), by NMSE: ggml's bounds, 5e-4 for matmul and
//! attention, 1e-7 for the f32 elementwise ops. Also the model-level check:
//! logits of the tiny synthetic models on the GPU against the CPU.
//!
//! Needs a GPU. Without one the tests print why and return, unless
//! `TERN_REQUIRE_GPU=1`, which makes them fail instead (the GPU machine's
//! runs set it, so nothing skips silently there).
#![cfg(feature = "cuda")]

mod common;

use std::sync::Arc;

use common::*;
use tern_runtime::backend::cpu::CpuBackend;
use tern_runtime::backend::cuda::{kernels::KernelConfig, CudaBackend};
use tern_runtime::backend::{AttnParams, Backend, KvSpec, KvType, Op, Rope, Visibility};
use tern_runtime::gguf::{GgufFile, GgufWriter};
use tern_runtime::quants::{self, GgmlType};

fn gpu() -> Option<CudaBackend> {
    opened(CudaBackend::open(0))
}

/// The GPU with kernels built for `cfg`, on the same terms as [`gpu`].
fn gpu_with(cfg: &KernelConfig) -> Option<CudaBackend> {
    opened(CudaBackend::open_with(0, cfg))
}

/// `Some` backend, or `None` with a note when no GPU opened — a failure
/// instead under `TERN_REQUIRE_GPU=1`.
fn opened(r: tern_runtime::Result<CudaBackend>) -> Option<CudaBackend> {
    match r {
        Ok(b) => Some(b),
        Err(e) => {
            if std::env::var_os("TERN_REQUIRE_GPU").is_some_and(|v| v == "1") {
                panic!("TERN_REQUIRE_GPU=1 but no GPU opened: {e}");
            }
            eprintln!("skipped: no GPU ({e})");
            None
        }
    }
}

/// Deterministic non-zero pseudo-random values in about [-1, 1].
struct Rng(u64);
impl Rng {
    fn f32(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 + 1e-3
    }
    fn vec(&mut self, n: usize) -> Vec<f32> {
        (0..n).map(|_| self.f32()).collect()
    }
}

/// A GGUF in memory holding the named f32 matrices converted to `ty`.
fn file_with(tensors: &[(&str, GgmlType, usize, usize, Vec<f32>)]) -> Arc<GgufFile> {
    let mut w = GgufWriter::new();
    for (name, ty, rows, cols, data) in tensors {
        let mut bytes = vec![0u8; ty.row_bytes(*cols as u64).unwrap() as usize * rows];
        let rb = bytes.len() / rows;
        for r in 0..*rows {
            quants::quantize_row(
                *ty,
                &data[r * cols..(r + 1) * cols],
                &mut bytes[r * rb..(r + 1) * rb],
            )
            .unwrap();
        }
        w.add_tensor(*name, *ty, &[*cols as u64, *rows as u64], bytes)
            .unwrap();
    }
    let mut buf = Vec::new();
    w.write_to(&mut buf).unwrap();
    Arc::new(GgufFile::from_bytes(buf).unwrap())
}

/// Upload `data` as a `[rows, cols]` activation on backend `b`: an embedding
/// lookup of rows 0..rows of an f32 table, which both backends do exactly.
fn input<B: Backend>(
    b: &B,
    file: &Arc<GgufFile>,
    name: &str,
    rows: usize,
    cols: usize,
) -> B::Tensor {
    let w = b
        .load_weight(file, file.tensor(name).unwrap(), Op::Embed)
        .unwrap();
    let mut t = b.alloc(rows, cols).unwrap();
    let ids: Vec<u32> = (0..rows as u32).collect();
    b.embed(&w, &ids, 1.0, &mut t).unwrap();
    t
}

/// A two-layer KV cache of `n_ctx` slots for `nkv` heads of `hd`, its layer
/// 1 holding the file's `names` (keys, values) rows in slots `0..rows`.
fn cache_with<B: Backend>(
    b: &B,
    f: &Arc<GgufFile>,
    names: (&str, &str),
    rows: usize,
    (n_ctx, nkv, hd): (usize, usize, usize),
    ty: KvType,
) -> B::KvCache {
    let mut kv = b
        .alloc_kv(&KvSpec {
            n_layer: 2,
            n_ctx,
            n_head_kv: nkv,
            head_dim: hd,
            ty,
        })
        .unwrap();
    let k = input(b, f, names.0, rows, nkv * hd);
    let v = input(b, f, names.1, rows, nkv * hd);
    b.kv_write(&mut kv, 1, 0, &k, &v).unwrap();
    kv
}

/// Causal attention over `nh` query heads, `nkv` KV heads of size `hd`,
/// with the usual 1/√hd scale.
fn causal(nh: usize, nkv: usize, hd: usize) -> AttnParams {
    AttnParams {
        n_head: nh,
        n_head_kv: nkv,
        head_dim: hd,
        scale: 1.0 / (hd as f32).sqrt(),
        visibility: Visibility::Causal,
    }
}

fn read<B: Backend>(b: &B, t: &B::Tensor) -> Vec<f32> {
    let (r, c) = b.shape(t);
    let mut v = vec![f32::NAN; r * c];
    b.read(t, &mut v).unwrap();
    v
}

fn check(op: &str, got: &[f32], want: &[f32], bound: f64) {
    assert!(got.iter().all(|v| v.is_finite()), "{op}: non-finite output");
    let e = nmse(got, want);
    eprintln!("{op:<40} NMSE {e:.3e} (bound {bound:.0e})");
    assert!(e <= bound, "{op}: NMSE {e:e} over {bound:e}");
}

#[test]
fn matmul_every_type_and_batch_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::exact(2);
    let mut rng = Rng(0x9e3779b97f4a7c15);
    for &(rows, cols) in &[(96, 64), (200, 576), (1000, 1536), (2100, 96)] {
        for ty in [
            GgmlType::F32,
            GgmlType::F16,
            GgmlType::Q4_0,
            GgmlType::Q4_1,
            GgmlType::Q8_0,
        ] {
            for &ntok in &[1usize, 3, 4, 5, 17, 130] {
                let f = file_with(&[
                    ("w", ty, rows, cols, rng.vec(rows * cols)),
                    ("x", GgmlType::F32, ntok, cols, rng.vec(ntok * cols)),
                ]);
                let run = |b: &dyn Fn() -> Vec<f32>| b();
                let want = run(&|| {
                    let w = cpu
                        .load_weight(&f, f.tensor("w").unwrap(), Op::MatMul)
                        .unwrap();
                    let x = input(&cpu, &f, "x", ntok, cols);
                    let mut o = cpu.alloc(ntok, rows).unwrap();
                    cpu.matmul(&x, &w, &mut o).unwrap();
                    read(&cpu, &o)
                });
                let got = run(&|| {
                    let w = g
                        .load_weight(&f, f.tensor("w").unwrap(), Op::MatMul)
                        .unwrap();
                    let x = input(&g, &f, "x", ntok, cols);
                    let mut o = g.alloc(ntok, rows).unwrap();
                    g.matmul(&x, &w, &mut o).unwrap();
                    read(&g, &o)
                });
                check(
                    &format!("matmul {ty} [{rows}x{cols}] x {ntok}"),
                    &got,
                    &want,
                    5e-4,
                );
            }
        }
    }
}

/// The decode mat-vec with 1, 2 and 4 warps per row (forced, whatever the
/// per-matrix rule picks): plain products of 1 and 3 tokens, the fused
/// launch of three weights, and the residual-add epilogue (acc = W·x, then
/// acc += 0.75·W·x, so a lost add or scale shows), on row counts
/// that leave blocks part-empty and row lengths that split unevenly. Each
/// split also runs with the weights read before the dependent-launch wait
/// off (`mv_prefetch` 0), as an L2 prefetch (1), as the first step loaded
/// into registers (2) and both (3).
#[test]
fn matvec_every_row_split_matches_cpu() {
    let cpu = CpuBackend::exact(8);
    let mut rng = Rng(0x5eed_0002);
    // Every row split and early-read form; then the default split with
    // launches running ahead of their wait, and 2 or 4 rows a warp.
    for (ks, pf, early, mv_rows) in [1u32, 2, 4]
        .into_iter()
        .flat_map(|k| [0u32, 1, 2, 3].map(|p| (k, p, 0, 1)))
        .chain([(0, 2, 3, 1), (0, 2, 0, 2), (2, 3, 0, 2), (1, 2, 0, 4)])
    {
        let cfg = KernelConfig {
            mv_ksplit: ks,
            mv_prefetch: pf,
            mv_prefetch_max_kib: u32::MAX,
            pdl_early: early,
            mv_rows,
            ..KernelConfig::default()
        };
        let Some(g) = gpu_with(&cfg) else { return };
        for &(rows, cols) in &[(37usize, 4096usize), (130, 1056), (8, 16384)] {
            for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
                let f = file_with(&[
                    ("w0", ty, rows, cols, rng.vec(rows * cols)),
                    ("w1", ty, rows + 3, cols, rng.vec((rows + 3) * cols)),
                    ("w2", ty, 5, cols, rng.vec(5 * cols)),
                    ("x", GgmlType::F32, 3, cols, rng.vec(3 * cols)),
                ]);
                fn all<B: Backend>(
                    b: &B,
                    f: &Arc<GgufFile>,
                    rows: usize,
                    cols: usize,
                ) -> Vec<Vec<f32>> {
                    let w: Vec<B::Weight> = ["w0", "w1", "w2"]
                        .iter()
                        .map(|n| b.load_weight(f, f.tensor(n).unwrap(), Op::MatMul).unwrap())
                        .collect();
                    let mut res = Vec::new();
                    for ntok in [1, 3] {
                        let x = input(b, f, "x", ntok, cols);
                        let mut o = b.alloc(ntok, rows).unwrap();
                        b.matmul(&x, &w[0], &mut o).unwrap();
                        res.push(read(b, &o));
                    }
                    let x = input(b, f, "x", 1, cols);
                    let mut outs: Vec<B::Tensor> = [rows, rows + 3, 5]
                        .iter()
                        .map(|&r| b.alloc(1, r).unwrap())
                        .collect();
                    let wr: Vec<&B::Weight> = w.iter().collect();
                    let mut or: Vec<&mut B::Tensor> = outs.iter_mut().collect();
                    b.matmul_many(&x, &wr, &mut or).unwrap();
                    res.extend(outs.iter().map(|o| read(b, o)));
                    // The residual starts as the product itself (loading a
                    // 37-wide f32 row is not supported on the GPU).
                    let mut acc = b.alloc(1, rows).unwrap();
                    b.matmul(&x, &w[0], &mut acc).unwrap();
                    let mut tmp = b.alloc(1, rows).unwrap();
                    b.matmul_add(&x, &w[0], &mut tmp, &mut acc, 0.75).unwrap();
                    res.push(read(b, &acc));
                    res
                }
                let want = all(&cpu, &f, rows, cols);
                let got = all(&g, &f, rows, cols);
                let what = [
                    "1 token", "3 tokens", "fused #0", "fused #1", "fused #2", "add",
                ];
                for ((gv, wv), w) in got.iter().zip(&want).zip(what) {
                    check(
                        &format!(
                            "matvec ks={ks} pf={pf} early={early} rows/warp={mv_rows} {ty} [{rows}x{cols}] {w}"
                        ),
                        gv,
                        wv,
                        5e-4,
                    );
                }
            }
        }
    }
}

/// Decode's attention input side in one launch on the GPU
/// (`qkv_rope_kv_write`: the q/k/v mat-vecs with RoPE and the cache write
/// in their epilogue) against the CPU's separate steps: the rotated q and
/// k, v, and attention over the cache the fused step wrote (3 older keys
/// and the new one, so a wrong stored key or value moves the output by about
/// a quarter), for partial and full rotation, both
/// cache types and mixed weight types.
#[test]
fn fused_qkv_rope_kv_write_matches_cpu() {
    let Some(g) = gpu() else { return };
    // Launches running ahead of their wait (KernelConfig::pdl_early).
    let Some(ahead) = gpu_with(&KernelConfig {
        pdl_early: 3,
        ..KernelConfig::default()
    }) else {
        return;
    };
    // Two rows a warp, as a small model of 1,024 to 4,095 columns gets
    // (KernelConfig::for_model): 8 rows a block, RoPE pairs still whole.
    let Some(two) = gpu_with(&KernelConfig {
        pdl_early: 3,
        mv_rows: 2,
        ..KernelConfig::default()
    }) else {
        return;
    };
    let cpu = CpuBackend::exact(2);
    let mut rng = Rng(0x5eed_0003);
    let (nh, nkv, hd, prefix) = (9usize, 3usize, 64usize, 3usize);
    let width = nkv * hd;
    for (n_rot, cols, g, form) in [
        (64usize, 256usize, &g, "default"),
        (32, 256, &g, "default"),
        (64, 2048, &g, "default"),
        (64, 256, &ahead, "launches ahead"),
        (64, 2048, &ahead, "launches ahead"),
        (64, 1024, &two, "two rows a warp"),
        (32, 1024, &two, "two rows a warp"),
    ] {
        for kv_ty in [KvType::F16, KvType::F32] {
            for (tq, tk) in [
                (GgmlType::Q4_0, GgmlType::Q8_0),
                (GgmlType::Q4_1, GgmlType::Q4_1),
            ] {
                let f = file_with(&[
                    ("k0", GgmlType::F32, prefix, width, rng.vec(prefix * width)),
                    ("v0", GgmlType::F32, prefix, width, rng.vec(prefix * width)),
                    // Wide inputs scaled so the scores stay moderate:
                    // unscaled, 2048 columns give scores in the hundreds,
                    // where the softmax turns on the 8-bit inputs' rounding
                    // (NMSE 2.4e-2 against the CPU on the H200).
                    ("x", GgmlType::F32, 1, cols, {
                        let s = if cols > 256 {
                            (64.0 / cols as f32).sqrt()
                        } else {
                            1.0
                        };
                        rng.vec(cols).iter().map(|v| v * s).collect()
                    }),
                    ("wq", tq, nh * hd, cols, rng.vec(nh * hd * cols)),
                    ("wk", tk, width, cols, rng.vec(width * cols)),
                    ("wv", tq, width, cols, rng.vec(width * cols)),
                ]);
                let d = (n_rot, kv_ty, cols);
                fn run<B: Backend>(
                    b: &B,
                    f: &Arc<GgufFile>,
                    d: (usize, KvType, usize),
                ) -> Vec<Vec<f32>> {
                    let (n_rot, ty, cols) = d;
                    let (nh, nkv, hd, prefix) = (9usize, 3usize, 64usize, 3usize);
                    let mut kv = cache_with(b, f, ("k0", "v0"), prefix, (300, nkv, hd), ty);
                    let w: Vec<B::Weight> = ["wq", "wk", "wv"]
                        .iter()
                        .map(|n| b.load_weight(f, f.tensor(n).unwrap(), Op::MatMul).unwrap())
                        .collect();
                    let x = input(b, f, "x", 1, cols);
                    let mut q = b.alloc(1, nh * hd).unwrap();
                    let mut k = b.alloc(1, nkv * hd).unwrap();
                    let mut v = b.alloc(1, nkv * hd).unwrap();
                    let inv_freq: Vec<f64> = (0..n_rot / 2)
                        .map(|i| 10000f64.powf(-2.0 * i as f64 / n_rot as f64))
                        .collect();
                    let rope = |n_head| Rope {
                        n_head,
                        head_dim: hd,
                        n_rot,
                        inv_freq: inv_freq.clone(),
                    };
                    b.qkv_rope_kv_write(
                        &x,
                        [&w[0], &w[1], &w[2]],
                        &mut q,
                        &mut k,
                        &mut v,
                        &[1234],
                        &rope(nh),
                        &rope(nkv),
                        &mut kv,
                        1,
                        prefix,
                    )
                    .unwrap();
                    let p = causal(nh, nkv, hd);
                    let mut att = b.alloc(1, nh * hd).unwrap();
                    b.attention(&q, &kv, 1, prefix, &p, &mut att).unwrap();
                    vec![read(b, &q), read(b, &k), read(b, &v), read(b, &att)]
                }
                let want = run(&cpu, &f, d);
                let got = run(g, &f, d);
                for (name, (gv, wv)) in ["q", "k", "v", "attention over the written cache"]
                    .iter()
                    .zip(got.iter().zip(&want))
                {
                    check(
                        &format!("qkv+rope {d:?} {form} {tq}/{tk}: {name}"),
                        gv,
                        wv,
                        5e-4,
                    );
                }
            }
        }
    }
}

/// Prefill products of one input with several 4-bit weights (q/k/v,
/// gate/up) run as one launch on the GPU: every output must match, in both
/// tile widths (the 1030-token case fills the GPU with 128-token tiles) and
/// in the 3-blocks-per-SM build of the narrow one.
#[test]
fn matmul_many_prefill_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::exact(8);
    let mut rng = Rng(0x5eed_0001);
    // The 512-token case is the 8B's q/k/v grid (288 narrow blocks): on a
    // 132-SM GPU it takes the 3-blocks-per-SM build (`matmul_q4_64_3`).
    let cases: [(&[usize], usize, usize); 5] = [
        (&[300, 64, 40], 640, 70),
        (&[96, 160], 128, 5),
        (&[130], 64, 200),
        (&[4096, 256, 256], 256, 1030),
        (&[4096, 256, 256], 128, 512),
    ];
    for (rows, cols, ntok) in cases {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1] {
            let names: Vec<String> = (0..rows.len()).map(|i| format!("w{i}")).collect();
            let mut tensors: Vec<(&str, GgmlType, usize, usize, Vec<f32>)> = names
                .iter()
                .zip(rows)
                .map(|(n, &r)| (n.as_str(), ty, r, cols, rng.vec(r * cols)))
                .collect();
            tensors.push(("x", GgmlType::F32, ntok, cols, rng.vec(ntok * cols)));
            let f = file_with(&tensors);
            fn many<B: Backend>(
                b: &B,
                f: &Arc<GgufFile>,
                names: &[String],
                rows: &[usize],
                cols: usize,
                ntok: usize,
            ) -> Vec<Vec<f32>> {
                let ws: Vec<B::Weight> = names
                    .iter()
                    .map(|n| b.load_weight(f, f.tensor(n).unwrap(), Op::MatMul).unwrap())
                    .collect();
                let x = input(b, f, "x", ntok, cols);
                let mut outs: Vec<B::Tensor> =
                    rows.iter().map(|&r| b.alloc(ntok, r).unwrap()).collect();
                let wr: Vec<&B::Weight> = ws.iter().collect();
                let mut or: Vec<&mut B::Tensor> = outs.iter_mut().collect();
                b.matmul_many(&x, &wr, &mut or).unwrap();
                outs.iter().map(|o| read(b, o)).collect()
            }
            let want = many(&cpu, &f, &names, rows, cols, ntok);
            let got = many(&g, &f, &names, rows, cols, ntok);
            for (i, (gv, wv)) in got.iter().zip(&want).enumerate() {
                check(
                    &format!("matmul_many {ty} #{i} [{}x{cols}] x {ntok}", rows[i]),
                    gv,
                    wv,
                    5e-4,
                );
            }
        }
    }
}

/// SwiGLU's input side fused into one prefill launch (gate and up rows in
/// one block, silu in the epilogue) against the CPU's two products and
/// silu_mul; the 600-token case takes the 128-token tiles.
#[test]
fn matmul_glu_prefill_matches_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::exact(8);
    let mut rng = Rng(0x61u64 << 32 | 0x1f);
    for (rows, cols, ntok) in [
        (200usize, 640usize, 70usize),
        (1536, 576, 130),
        (4096, 256, 600),
    ] {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1] {
            let f = file_with(&[
                ("gate", ty, rows, cols, rng.vec(rows * cols)),
                ("up", ty, rows, cols, rng.vec(rows * cols)),
                ("x", GgmlType::F32, ntok, cols, rng.vec(ntok * cols)),
            ]);
            fn run<B: Backend>(b: &B, f: &Arc<GgufFile>, d: (usize, usize, usize)) -> Vec<f32> {
                let (rows, cols, ntok) = d;
                let w = |n: &str| b.load_weight(f, f.tensor(n).unwrap(), Op::MatMul).unwrap();
                let (wg, wu) = (w("gate"), w("up"));
                let x = input(b, f, "x", ntok, cols);
                let mut gate = b.alloc(ntok, rows).unwrap();
                let mut up = b.alloc(ntok, rows).unwrap();
                b.matmul_glu(&x, &wg, &wu, &mut gate, &mut up).unwrap();
                read(b, &gate)
            }
            let d = (rows, cols, ntok);
            check(
                &format!("matmul_glu {ty} [{rows}x{cols}] x {ntok}"),
                &run(&g, &f, d),
                &run(&cpu, &f, d),
                5e-4,
            );
        }
    }
}

#[test]
fn embed_norm_and_elementwise_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::exact(2);
    let mut rng = Rng(77);
    let (n, cols) = (7usize, 576usize);
    for ty in [
        GgmlType::F32,
        GgmlType::F16,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
        GgmlType::Q8_0,
    ] {
        let f = file_with(&[("t", ty, 50, cols, rng.vec(50 * cols))]);
        let ids = [3u32, 0, 49, 7, 7, 21, 1];
        let e = |b: &dyn Fn() -> Vec<f32>| b();
        let want = e(&|| {
            let w = cpu
                .load_weight(&f, f.tensor("t").unwrap(), Op::Embed)
                .unwrap();
            let mut o = cpu.alloc(n, cols).unwrap();
            cpu.embed(&w, &ids, 1.5, &mut o).unwrap();
            read(&cpu, &o)
        });
        let got = e(&|| {
            let w = g
                .load_weight(&f, f.tensor("t").unwrap(), Op::Embed)
                .unwrap();
            let mut o = g.alloc(n, cols).unwrap();
            g.embed(&w, &ids, 1.5, &mut o).unwrap();
            read(&g, &o)
        });
        check(&format!("embed {ty}"), &got, &want, 1e-12);
    }

    let f = file_with(&[
        ("x", GgmlType::F32, n, cols, rng.vec(n * cols)),
        ("y", GgmlType::F32, n, cols, rng.vec(n * cols)),
        ("norm", GgmlType::F32, 1, cols, rng.vec(cols)),
    ]);
    fn ops<B: Backend>(b: &B, f: &Arc<GgufFile>, n: usize, cols: usize) -> Vec<Vec<f32>> {
        let nw = b
            .load_weight(f, f.tensor("norm").unwrap(), Op::Vector)
            .unwrap();
        let x = input(b, f, "x", n, cols);
        let y = input(b, f, "y", n, cols);
        let mut out = Vec::new();
        let mut o = b.alloc(n, cols).unwrap();
        b.rms_norm(&x, &nw, 1e-5, &mut o).unwrap();
        out.push(read(b, &o));
        let mut gte = input(b, f, "x", n, cols);
        b.silu_mul(&mut gte, &y).unwrap();
        out.push(read(b, &gte));
        let mut acc = input(b, f, "x", n, cols);
        b.add_scaled(&mut acc, &y, 0.37).unwrap();
        out.push(read(b, &acc));
        b.scale(&mut acc, -1.9).unwrap();
        out.push(read(b, &acc));
        let mut p = b.alloc(3, cols).unwrap();
        b.gather_rows(&x, &[6, 0, 3], &mut p).unwrap();
        out.push(read(b, &p));
        let mut q = input(b, f, "x", n, cols);
        let rope = Rope {
            n_head: 9,
            head_dim: 64,
            n_rot: 64,
            inv_freq: (0..32)
                .map(|i| 10000f64.powf(-(2.0 * i as f64) / 64.0))
                .collect(),
        };
        b.rope(&mut q, &[0, 1, 2, 100, 4095, 30000, 65535], &rope)
            .unwrap();
        out.push(read(b, &q));
        out
    }
    let want = ops(&cpu, &f, n, cols);
    let got = ops(&g, &f, n, cols);
    for (name, (gv, wv)) in [
        "rms_norm",
        "silu_mul",
        "add_scaled",
        "scale",
        "gather_rows",
        "rope",
    ]
    .iter()
    .zip(got.iter().zip(&want))
    {
        check(name, gv, wv, 1e-7);
    }
}

/// Attention of `batch` queries at slot `prefix` over layer 1 of a cache
/// holding the file's `k` and `v` rows; `d` = (n_head, n_head_kv,
/// head_dim, n_ctx, prefix, batch).
fn attend<B: Backend>(
    b: &B,
    f: &Arc<GgufFile>,
    d: (usize, usize, usize, usize, usize, usize),
    ty: KvType,
) -> Vec<f32> {
    let (nh, nkv, hd, n_ctx, prefix, batch) = d;
    let total = prefix + batch;
    let kv = cache_with(b, f, ("k", "v"), total, (n_ctx, nkv, hd), ty);
    let q = input(b, f, "q", batch, nh * hd);
    let p = causal(nh, nkv, hd);
    let mut o = b.alloc(batch, nh * hd).unwrap();
    // With a projection "wo" in the file: its product with the output too.
    // Loaded and allocated first (an allocation forgets the GPU's 8-bit
    // copies), so on the GPU the decode mat-vec takes the copy the
    // attention left.
    let proj = f.tensor("wo").map(|t| {
        let w = b.load_weight(f, t, Op::MatMul).unwrap();
        (w, b.alloc(batch, t.dims[1] as usize).unwrap())
    });
    b.attention(&q, &kv, 1, prefix, &p, &mut o).unwrap();
    let mut got = Vec::new();
    if let Some((w, mut y)) = proj {
        b.matmul(&o, &w, &mut y).unwrap();
        got = read(b, &y);
    }
    let mut all = read(b, &o);
    all.extend(got);
    all
}

#[test]
fn attention_prefill_and_decode_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::exact(2);
    let mut rng = Rng(4242);
    // (n_head, n_head_kv, head_dim, n_ctx, prefix, batch)
    for &(nh, nkv, hd, n_ctx, prefix, batch) in &[
        (9usize, 3usize, 64usize, 256usize, 0usize, 37usize),
        (9, 3, 64, 4096, 500, 1),
        (32, 2, 128, 2048, 1000, 3),
        (4, 4, 128, 512, 0, 200),
        (8, 2, 64, 300, 17, 9),
        (8, 1, 64, 9000, 8998, 2),
        (10, 2, 64, 300, 50, 2),
        (16, 2, 128, 8192, 8000, 1),
        (9, 3, 64, 8192, 5000, 1),
        (32, 2, 128, 8192, 3000, 3),
        (32, 2, 128, 2048, 700, 130),
        (6, 6, 64, 1024, 63, 300),
    ] {
        for kv_ty in [KvType::F16, KvType::F32] {
            let total = prefix + batch;
            let w = nkv * hd;
            let f = file_with(&[
                ("k", GgmlType::F32, total, w, rng.vec(total * w)),
                ("v", GgmlType::F32, total, w, rng.vec(total * w)),
                ("q", GgmlType::F32, batch, nh * hd, rng.vec(batch * nh * hd)),
            ]);
            let d = (nh, nkv, hd, n_ctx, prefix, batch);
            let want = attend(&cpu, &f, d, kv_ty);
            let got = attend(&g, &f, d, kv_ty);
            check(&format!("attention {d:?} {kv_ty:?}"), &got, &want, 5e-4);
        }
    }
}

/// Decode attention over an f16 cache on the tensor cores
/// (`attn_decode_mma_*`, forced for every cache size with `attn_mma: 2`)
/// against the CPU, for groups of 1 to 16 query heads per KV head, both head
/// sizes, 1 to 4 tokens, caches whose splits are full, partly filled (a
/// tile's last warps without keys) or empty (a long cache with a short
/// sequence). Its results must also differ from the scalar kernels' (it
/// rounds scores and probabilities to f16), which shows it ran.
#[test]
fn decode_attention_on_tensor_cores_matches_cpu() {
    let cpu = CpuBackend::exact(2);
    // Always split (the one-split form below is checked on its own).
    let Some(mma) = gpu_with(&KernelConfig {
        attn_mma: 2,
        attn_one_split: 0,
        ..KernelConfig::default()
    }) else {
        return;
    };
    let Some(scalar) = gpu_with(&KernelConfig {
        attn_mma: 0,
        ..KernelConfig::default()
    }) else {
        return;
    };
    // Every cache as one split per KV head: the kernel writes the finished
    // output and its 8-bit copy, and no merge runs.
    let Some(one) = gpu_with(&KernelConfig {
        attn_mma: 2,
        attn_one_split: u32::MAX,
        ..KernelConfig::default()
    }) else {
        return;
    };
    // Two key/value stages at head size 128 (the default is 3).
    let Some(two) = gpu_with(&KernelConfig {
        attn_mma: 2,
        attn_one_split: 0,
        attn_stages_128: 2,
        ..KernelConfig::default()
    }) else {
        return;
    };
    let mut rng = Rng(0xa77e);
    let mut one_split_differs = false;
    // (n_head, n_head_kv, head_dim, n_ctx, prefix, batch)
    for &(nh, nkv, hd, n_ctx, prefix, batch) in &[
        (32usize, 2usize, 128usize, 8192usize, 3000usize, 1usize),
        (32, 2, 128, 8192, 20, 1),
        (16, 2, 64, 9000, 8990, 4),
        (9, 3, 64, 300, 150, 1),
        (4, 4, 128, 640, 77, 2),
        (16, 1, 64, 2048, 1500, 3),
        (10, 2, 128, 4096, 4000, 1),
    ] {
        let total = prefix + batch;
        let w = nkv * hd;
        let f = file_with(&[
            ("k", GgmlType::F32, total, w, rng.vec(total * w)),
            ("v", GgmlType::F32, total, w, rng.vec(total * w)),
            ("q", GgmlType::F32, batch, nh * hd, rng.vec(batch * nh * hd)),
            ("wo", GgmlType::Q8_0, 96, nh * hd, rng.vec(96 * nh * hd)),
        ]);
        let d = (nh, nkv, hd, n_ctx, prefix, batch);
        let want = attend(&cpu, &f, d, KvType::F16);
        let got = attend(&mma, &f, d, KvType::F16);
        let old = attend(&scalar, &f, d, KvType::F16);
        let single = attend(&one, &f, d, KvType::F16);
        let staged2 = attend(&two, &f, d, KvType::F16);
        // The attention output, then the projection of it (its 8-bit copy
        // on the GPU), each against the CPU on its own.
        let n = batch * nh * hd;
        for (part, r) in [("", 0..n), (", projected", n..want.len())] {
            for (name, out) in [
                ("tensor cores", &got),
                ("tensor cores, one split", &single),
                ("tensor cores, 2 stages at 128", &staged2),
                ("scalar", &old),
            ] {
                check(
                    &format!("decode attention{part}, {name} {d:?}"),
                    &out[r.clone()],
                    &want[r.clone()],
                    5e-4,
                );
            }
        }
        // A cache seen by one split anyway (a short prefix) can give the
        // same bits both ways; the long ones must not.
        one_split_differs |= single != got;
        assert!(got != old, "{d:?}: the tensor-core kernel did not run");
    }
    assert!(one_split_differs, "the one-split form did not run");
}

/// Decode steps across the line where the tensor-core attention changes
/// from one key split to several (192 visible keys at head size 64): each
/// step writes its keys and values into the cache, then attends over it
/// (the kernel reads the older tiles before its wait, the new rows after),
/// one token a step and three (whose rows straddle the line), as eager,
/// captured and replayed steps on both sides of the line and through the
/// recapture. Every step matches the CPU; the GPU captured a graph on each
/// side and replayed them; and below the line its bits differ from an
/// always-split GPU's, so the one-split form ran.
#[test]
fn decode_steps_across_the_one_split_line_match_cpu() {
    use tern_runtime::backend::StepInputs;
    let cpu = CpuBackend::exact(2);
    let Some(g) = gpu() else { return };
    let Some(split) = gpu_with(&KernelConfig {
        attn_one_split: 0,
        ..KernelConfig::default()
    }) else {
        return;
    };
    let (nh, nkv, hd, n_ctx, prefix) = (9usize, 3usize, 64usize, 512usize, 171usize);
    let w = nkv * hd;
    let mut rng = Rng(0xa77f);
    let f = file_with(&[
        ("k", GgmlType::F32, prefix, w, rng.vec(prefix * w)),
        ("v", GgmlType::F32, prefix, w, rng.vec(prefix * w)),
        ("q", GgmlType::F32, 3, nh * hd, rng.vec(3 * nh * hd)),
        ("kn", GgmlType::F32, 3, w, rng.vec(3 * w)),
        ("vn", GgmlType::F32, 3, w, rng.vec(3 * w)),
    ]);
    /// (first slot, outputs) of each step of `ntok` tokens from `prefix`.
    fn steps<B: Backend>(
        b: &B,
        f: &Arc<GgufFile>,
        d: (usize, usize, usize, usize, usize),
        ntok: usize,
    ) -> Vec<(usize, Vec<f32>)> {
        let (nh, nkv, hd, n_ctx, prefix) = d;
        let mut kv = cache_with(b, f, ("k", "v"), prefix, (n_ctx, nkv, hd), KvType::F16);
        let q = input(b, f, "q", ntok, nh * hd);
        let kn = input(b, f, "kn", ntok, nkv * hd);
        let vn = input(b, f, "vn", ntok, nkv * hd);
        let mut o = b.alloc(ntok, nh * hd).unwrap();
        let p = causal(nh, nkv, hd);
        let tokens = vec![1u32; ntok];
        let mut res = Vec::new();
        for slot in (prefix..prefix + 36).step_by(ntok) {
            let pos: Vec<u32> = (slot as u32..(slot + ntok) as u32).collect();
            let inputs = StepInputs {
                tokens: &tokens,
                positions: &pos,
                first_slot: slot,
                outputs: &[0],
            };
            b.run_step(&mut kv, &inputs, &mut |kv| {
                b.kv_write(kv, 1, slot, &kn, &vn)?;
                b.attention(&q, kv, 1, slot, &p, &mut o)
            })
            .unwrap();
            res.push((slot, read(b, &o)));
        }
        res
    }
    let d = (nh, nkv, hd, n_ctx, prefix);
    for ntok in [1, 3] {
        let before = g.step_stats();
        let want = steps(&cpu, &f, d, ntok);
        let got = steps(&g, &f, d, ntok);
        let after = g.step_stats();
        let alt = steps(&split, &f, d, ntok);
        let mut one_split_ran = false;
        for (((slot, gv), (_, wv)), (_, av)) in got.iter().zip(&want).zip(&alt) {
            check(
                &format!("decode step of {ntok} at slot {slot} of a {n_ctx}-slot cache"),
                gv,
                wv,
                5e-4,
            );
            check(&format!("  always split, slot {slot}"), av, wv, 5e-4);
            one_split_ran |= slot + ntok <= 192 && gv != av;
        }
        assert!(
            one_split_ran,
            "{ntok} a step: the one-split form did not run"
        );
        assert!(
            after.captures >= before.captures + 2 && after.replays > before.replays,
            "{ntok} a step: expected a graph on each side of the line, replayed: {before:?} -> {after:?}"
        );
    }
}

/// L2 prefetch hints (`Backend::prefetch`, on a side stream forked from and
/// joined back into the step) change no result: the same decode steps,
/// eager, captured and replayed, with the hints on (a 1 KiB cap, so every
/// quantized weight is prefetched in part: quants, scales and minima of its
/// first rows) and off, are bit for bit equal and match the CPU.
#[test]
fn l2_prefetch_hints_change_no_result() {
    use tern_runtime::backend::StepInputs;
    let cpu = CpuBackend::exact(8);
    let mut rng = Rng(0x5eed_0011);
    let cols = 512;
    let f = file_with(&[
        ("w0", GgmlType::Q4_1, 300, cols, rng.vec(300 * cols)),
        ("w1", GgmlType::Q8_0, 130, cols, rng.vec(130 * cols)),
        ("w2", GgmlType::Q4_0, 64, cols, rng.vec(64 * cols)),
        ("x", GgmlType::F32, 1, cols, rng.vec(cols)),
    ]);
    fn steps<B: Backend>(b: &B, f: &Arc<GgufFile>) -> Vec<Vec<f32>> {
        let w: Vec<B::Weight> = ["w0", "w1", "w2"]
            .iter()
            .map(|n| b.load_weight(f, f.tensor(n).unwrap(), Op::MatMul).unwrap())
            .collect();
        let x = input(b, f, "x", 1, 512);
        let mut o: Vec<B::Tensor> = [300, 130, 64]
            .iter()
            .map(|&r| b.alloc(1, r).unwrap())
            .collect();
        let mut kv = b
            .alloc_kv(&KvSpec {
                n_layer: 1,
                n_ctx: 8,
                n_head_kv: 1,
                head_dim: 64,
                ty: KvType::F16,
            })
            .unwrap();
        let mut res = Vec::new();
        // Eager, eager again (steady), captured, then replayed.
        for _ in 0..5 {
            let inputs = StepInputs {
                tokens: &[1],
                positions: &[0],
                first_slot: 0,
                outputs: &[0],
            };
            b.run_step(&mut kv, &inputs, &mut |_| {
                b.prefetch(&[&w[0], &w[1]])?;
                b.matmul(&x, &w[0], &mut o[0])?;
                b.prefetch(&[&w[2]])?;
                b.matmul(&x, &w[1], &mut o[1])?;
                b.matmul(&x, &w[2], &mut o[2])
            })
            .unwrap();
            res.push(o.iter().flat_map(|t| read(b, t)).collect());
        }
        res
    }
    let Some(plain) = gpu_with(&KernelConfig {
        l2_prefetch_kib: 0,
        ..KernelConfig::default()
    }) else {
        return;
    };
    let want = steps(&cpu, &f);
    let a = steps(&plain, &f);
    // One line per instruction, then bulk prefetches of 2 KB.
    for chunk in [0, 2048] {
        let Some(hinted) = gpu_with(&KernelConfig {
            l2_prefetch_kib: 1,
            l2_prefetch_min_kib: 0,
            l2_prefetch_chunk: chunk,
            ..KernelConfig::default()
        }) else {
            return;
        };
        let b = steps(&hinted, &f);
        // The hints were taken, and the steps replayed with them.
        let st = hinted.step_stats();
        assert!(
            st.prefetches > 0 && st.captures > 0 && st.replays > 0,
            "chunk {chunk}: prefetches not queued or steps not replayed: {st:?}"
        );
        for (i, ((av, bv), wv)) in a.iter().zip(&b).zip(&want).enumerate() {
            assert!(
                av.iter().zip(bv).all(|(x, y)| x.to_bits() == y.to_bits()),
                "step {i}, chunk {chunk}: the prefetch hints changed a result"
            );
            check(
                &format!("prefetch-hinted (chunk {chunk}) step {i}"),
                bv,
                wv,
                5e-4,
            );
        }
    }
}

#[test]
fn argmax_on_device_matches_host() {
    let Some(g) = gpu() else { return };
    let mut rng = Rng(5);
    let (rows, cols) = (3usize, 49152usize);
    let data = rng.vec(rows * cols);
    let f = file_with(&[("x", GgmlType::F32, rows, cols, data.clone())]);
    let x = input(&g, &f, "x", rows, cols);
    let mut got = [0u32; 3];
    g.argmax_rows(&x, &mut got).unwrap();
    for r in 0..rows {
        assert_eq!(got[r] as usize, argmax(&data[r * cols..(r + 1) * cols]));
    }
}

#[test]
fn out_of_device_memory_is_an_error_and_the_device_stays_usable() {
    let Some(g) = gpu() else { return };
    let huge = g.alloc_kv(&KvSpec {
        n_layer: 64,
        n_ctx: 1 << 24,
        n_head_kv: 8,
        head_dim: 128,
        ty: KvType::F32,
    });
    assert!(
        matches!(huge, Err(tern_runtime::Error::OutOfMemory { .. })),
        "a 4 TiB KV cache must fail with OutOfMemory"
    );
    let t = g
        .alloc(4, 64)
        .expect("the device still allocates after an OOM");
    let mut v = vec![1.0f32; 256];
    g.read(&t, &mut v).unwrap();
    assert!(v.iter().all(|&x| x == 0.0));
}

#[test]
fn tiny_models_logits_on_gpu_match_cpu() {
    let Some(_) = gpu() else { return };
    use tern_runtime::{Batch, Device, Model, ModelParams, SessionParams};
    for name in [
        "tiny-llama-f32",
        "tiny-llama-f16",
        "tiny-llama-q4_0",
        "tiny-llama-q4_1",
        "tiny-llama-q8_0",
        "tiny-minicpm-q4_0",
        "tiny-minicpm-longrope-f32",
    ] {
        let path = model_path(&format!("synthetic/{name}.gguf"));
        let cpu = Model::load(
            &path,
            &ModelParams {
                device: Device::Cpu,
                exact: true,
                ..Default::default()
            },
        )
        .unwrap();
        let gm = Model::load(
            &path,
            &ModelParams {
                device: Device::Cuda,
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(gm.backend_name(), "cuda");
        let n_vocab = cpu.config().n_vocab;
        let prompt: Vec<u32> = (0..40u32)
            .map(|i| (i * 7919 + 3) % n_vocab as u32)
            .collect();
        let sp = SessionParams {
            n_ctx: 128,
            ..Default::default()
        };
        // Prefill with every logit, then 20 single-token decode steps (the
        // graph path), each compared.
        let mut sc = cpu.new_session(&sp).unwrap();
        let mut sg = gm.new_session(&sp).unwrap();
        let want = sc.forward(&Batch::new(&prompt, 0).all_logits()).unwrap();
        let got = sg.forward(&Batch::new(&prompt, 0).all_logits()).unwrap();
        check(
            &format!("{name} prefill logits"),
            got.as_slice(),
            want.as_slice(),
            5e-4,
        );
        let mut worst = 0.0f64;
        for i in 0..20u32 {
            let tok = [(i * 31 + 5) % n_vocab as u32];
            let pos = sc.len() as u32;
            let w = sc.forward(&Batch::new(&tok, pos)).unwrap();
            let gl = sg.forward(&Batch::new(&tok, pos)).unwrap();
            worst = worst.max(nmse(gl.as_slice(), w.as_slice()));
        }
        // Decode mat-vecs quantize activations to 8 bits per block of 32
        // (as the CPU fast path and llama.cpp's MMVQ do), and the tiny
        // random models pass that error through every layer: bound 2e-3
        // against the CPU's exact f32 path. Each op alone is held to 5e-4.
        eprintln!("{name:<40} decode worst NMSE {worst:.3e} (bound 2e-3)");
        assert!(worst <= 2e-3, "{name}: decode NMSE {worst:e}");
    }
}

/// The real SmolLM2-135M-Instruct: 64 greedy tokens on each fixture prompt,
/// on the GPU and on the CPU's exact path. The texts must be equal, or
/// every divergence must be a near tie: at the first differing step, the
/// CPU's top-two logits are within 0.5 of each other.
#[test]
fn smollm2_greedy_text_on_gpu_matches_cpu() {
    let Some(_) = gpu() else { return };
    use tern_runtime::{Batch, Device, Model, ModelParams, SessionParams};
    let path = model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let fx = read_json(&fixture_dir().join("models/smollm2.json"));
    let cpu = Model::load(
        &path,
        &ModelParams {
            device: Device::Cpu,
            exact: true,
            ..Default::default()
        },
    )
    .unwrap();
    let gm = Model::load(
        &path,
        &ModelParams {
            device: Device::Cuda,
            ..Default::default()
        },
    )
    .unwrap();
    let sp = SessionParams {
        n_ctx: 512,
        ..Default::default()
    };
    let mut identical = 0;
    let prompts = fx["prompts"].as_array().expect("prompts");
    for (pi, p) in prompts.iter().enumerate() {
        let prompt = tokens(&p["tokens"]);
        let greedy = |m: &Model| -> (Vec<u32>, Vec<Vec<f32>>) {
            let mut s = m.new_session(&sp).unwrap();
            let mut l = s
                .forward(&Batch::new(&prompt, 0))
                .unwrap()
                .as_slice()
                .to_vec();
            let (mut out, mut logits) = (Vec::new(), Vec::new());
            for _ in 0..64 {
                let t = argmax(&l) as u32;
                out.push(t);
                logits.push(l.clone());
                let pos = s.len() as u32;
                l = s
                    .forward(&Batch::new(&[t], pos))
                    .unwrap()
                    .as_slice()
                    .to_vec();
            }
            (out, logits)
        };
        let (want, want_logits) = greedy(&cpu);
        let (got, _) = greedy(&gm);
        match want.iter().zip(&got).position(|(a, b)| a != b) {
            None => identical += 1,
            Some(i) => {
                let mut sorted = want_logits[i].clone();
                sorted.sort_by(|a, b| b.total_cmp(a));
                let gap = sorted[0] - sorted[1];
                eprintln!("prompt {pi}: diverges at token {i}; CPU top-2 gap {gap:.4}");
                assert!(
                    gap < 0.5,
                    "prompt {pi}: divergence at {i} is not a near tie (gap {gap})"
                );
            }
        }
    }
    eprintln!(
        "SmolLM2 greedy 64 tokens: {identical}/{} prompts identical on GPU and CPU",
        prompts.len()
    );
}

/// The fusions that hand activations between ops: in decode, RMSNorm and
/// SwiGLU leave an 8-bit quantization that the following mat-vecs reuse,
/// and q/k/v or gate/up run in one launch; in prefill (70 tokens), RMSNorm
/// and the SwiGLU epilogue leave f16 copies that the 4-bit mat-muls reuse.
/// Checked as whole chains against the CPU, including a second norm into
/// the same buffer (a stale copy would show there).
#[test]
fn fused_chains_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::exact(2);
    let mut rng = Rng(99);
    let cols = 576;
    for ntok in [1usize, 3, 70] {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let f = file_with(&[
                ("x", GgmlType::F32, ntok, cols, rng.vec(ntok * cols)),
                ("u", GgmlType::F32, ntok, 1536, rng.vec(ntok * 1536)),
                ("norm", GgmlType::F32, 1, cols, rng.vec(cols)),
                ("wq", ty, 576, cols, rng.vec(576 * cols)),
                ("wk", ty, 192, cols, rng.vec(192 * cols)),
                ("wv", GgmlType::Q8_0, 192, cols, rng.vec(192 * cols)),
                ("wg", ty, 1536, cols, rng.vec(1536 * cols)),
                ("wu", ty, 1536, cols, rng.vec(1536 * cols)),
                ("wd", ty, cols, 1536, rng.vec(cols * 1536)),
            ]);
            fn chain<B: Backend>(
                b: &B,
                f: &Arc<GgufFile>,
                ntok: usize,
                cols: usize,
            ) -> Vec<Vec<f32>> {
                let w = |n: &str, op| b.load_weight(f, f.tensor(n).unwrap(), op).unwrap();
                let (nw, wq, wk, wv, wg, wd) = (
                    w("norm", Op::Vector),
                    w("wq", Op::MatMul),
                    w("wk", Op::MatMul),
                    w("wv", Op::MatMul),
                    w("wg", Op::MatMul),
                    w("wd", Op::MatMul),
                );
                let x = input(b, f, "x", ntok, cols);
                let mut xb = b.alloc(ntok, cols).unwrap();
                b.rms_norm(&x, &nw, 1e-5, &mut xb).unwrap();
                let (mut q, mut k, mut v) = (
                    b.alloc(ntok, 576).unwrap(),
                    b.alloc(ntok, 192).unwrap(),
                    b.alloc(ntok, 192).unwrap(),
                );
                b.matmul_many(&xb, &[&wq, &wk, &wv], &mut [&mut q, &mut k, &mut v])
                    .unwrap();
                let mut gate = b.alloc(ntok, 1536).unwrap();
                b.matmul(&xb, &wg, &mut gate).unwrap();
                let up = input(b, f, "u", ntok, 1536);
                b.silu_mul(&mut gate, &up).unwrap();
                let mut down = b.alloc(ntok, cols).unwrap();
                b.matmul(&gate, &wd, &mut down).unwrap();
                // A second norm into the same buffer must not reuse stale
                // quantization of the first.
                b.rms_norm(&down, &nw, 1e-5, &mut xb).unwrap();
                let mut q2 = b.alloc(ntok, 576).unwrap();
                b.matmul(&xb, &wq, &mut q2).unwrap();
                // SwiGLU in one call, then the down projection added into
                // a residual.
                let wu = w("wu", Op::MatMul);
                let (mut g2, mut u2) = (b.alloc(ntok, 1536).unwrap(), b.alloc(ntok, 1536).unwrap());
                b.matmul_glu(&xb, &wg, &wu, &mut g2, &mut u2).unwrap();
                let mut acc = input(b, f, "x", ntok, cols);
                let mut tmp = b.alloc(ntok, cols).unwrap();
                b.matmul_add(&g2, &wd, &mut tmp, &mut acc, 0.5).unwrap();
                vec![
                    read(b, &q),
                    read(b, &k),
                    read(b, &v),
                    read(b, &gate),
                    read(b, &down),
                    read(b, &q2),
                    read(b, &g2),
                    read(b, &acc),
                ]
            }
            let want = chain(&cpu, &f, ntok, cols);
            let got = chain(&g, &f, ntok, cols);
            for (name, (gv, wv)) in [
                "q",
                "k",
                "v",
                "swiglu",
                "down",
                "q after renorm",
                "glu",
                "residual += down(glu)",
            ]
            .iter()
            .zip(got.iter().zip(&want))
            {
                check(&format!("fused {ty} x{ntok}: {name}"), gv, wv, 5e-4);
            }
        }
    }
}

/// The decode fusions that replace separate ops: RoPE on q and k with the
/// KV write in one kernel (full and partial rotation, f16 and f32 cache),
/// the attention merge that leaves the 8-bit activation for the output
/// projection, and that projection added into the residual in its epilogue.
#[test]
fn fused_rope_kv_write_and_residual_projection_match_cpu() {
    let Some(g) = gpu() else { return };
    let cpu = CpuBackend::exact(2);
    let mut rng = Rng(7177);
    // The same shapes as `run` below uses.
    let (nh, nkv, hd, prefix) = (9usize, 3usize, 64usize, 40usize);
    let (width, n_embd) = (nkv * hd, nh * hd);
    // 1 and 3 tokens: the decode kernels; 70: prefill (tensor-core
    // attention, the 4-bit mat-mul adding into the residual).
    for ntok in [1usize, 3, 70] {
        for n_rot in [64usize, 32] {
            for kv_ty in [KvType::F16, KvType::F32] {
                let f = file_with(&[
                    ("k0", GgmlType::F32, prefix, width, rng.vec(prefix * width)),
                    ("v0", GgmlType::F32, prefix, width, rng.vec(prefix * width)),
                    ("q", GgmlType::F32, ntok, n_embd, rng.vec(ntok * n_embd)),
                    ("k", GgmlType::F32, ntok, width, rng.vec(ntok * width)),
                    ("v", GgmlType::F32, ntok, width, rng.vec(ntok * width)),
                    ("r", GgmlType::F32, ntok, n_embd, rng.vec(ntok * n_embd)),
                    (
                        "wo",
                        GgmlType::Q4_0,
                        n_embd,
                        n_embd,
                        rng.vec(n_embd * n_embd),
                    ),
                ]);
                let d = (ntok, n_rot, kv_ty);
                fn run<B: Backend>(
                    b: &B,
                    f: &Arc<GgufFile>,
                    d: (usize, usize, KvType),
                ) -> Vec<Vec<f32>> {
                    let (ntok, n_rot, ty) = d;
                    let (nh, nkv, hd, n_ctx, prefix) = (9usize, 3usize, 64usize, 300usize, 40);
                    let mut kv = cache_with(b, f, ("k0", "v0"), prefix, (n_ctx, nkv, hd), ty);
                    let mut q = input(b, f, "q", ntok, nh * hd);
                    let mut k = input(b, f, "k", ntok, nkv * hd);
                    let v = input(b, f, "v", ntok, nkv * hd);
                    let inv_freq: Vec<f64> = (0..n_rot / 2)
                        .map(|i| 10000f64.powf(-2.0 * i as f64 / n_rot as f64))
                        .collect();
                    let rope = |n_head| Rope {
                        n_head,
                        head_dim: hd,
                        n_rot,
                        inv_freq: inv_freq.clone(),
                    };
                    let positions: Vec<u32> = (0..ntok as u32).map(|t| 1000 + 77 * t).collect();
                    b.rope_kv_write(
                        &mut q,
                        &mut k,
                        &v,
                        &positions,
                        &rope(nh),
                        &rope(nkv),
                        &mut kv,
                        1,
                        prefix,
                    )
                    .unwrap();
                    let p = causal(nh, nkv, hd);
                    let mut att = b.alloc(ntok, nh * hd).unwrap();
                    b.attention(&q, &kv, 1, prefix, &p, &mut att).unwrap();
                    let wo = b
                        .load_weight(f, f.tensor("wo").unwrap(), Op::MatMul)
                        .unwrap();
                    let mut acc = input(b, f, "r", ntok, nh * hd);
                    let mut tmp = b.alloc(ntok, nh * hd).unwrap();
                    b.matmul_add(&att, &wo, &mut tmp, &mut acc, 0.7).unwrap();
                    vec![read(b, &q), read(b, &k), read(b, &att), read(b, &acc)]
                }
                let want = run(&cpu, &f, d);
                let got = run(&g, &f, d);
                for ((name, bound), (gv, wv)) in [
                    ("rope q", 1e-7),
                    ("rope k", 1e-7),
                    ("attention over the written cache", 5e-4),
                    ("residual += projection", 5e-4),
                ]
                .iter()
                .zip(got.iter().zip(&want))
                {
                    check(&format!("fused {d:?}: {name}"), gv, wv, *bound);
                }
            }
        }
    }
}

/// One token's decoder block `w` on `x` as the separate ops (what
/// `LlamaModel::block` runs when the backend takes no `decode_block`), with
/// its keys and values at `slot` of layer 1 of `kv`; `n_ff` units in the
/// feed-forward network.
#[allow(clippy::too_many_arguments)]
fn separate_block<B: Backend>(
    b: &B,
    x: &mut B::Tensor,
    n_ff: usize,
    w: &tern_runtime::backend::BlockWeights<'_, B::Weight>,
    p: &tern_runtime::backend::BlockParams<'_>,
    pos: &[u32],
    kv: &mut B::KvCache,
    slot: usize,
) {
    let (e, a) = (b.shape(x).1, p.attn.n_head * p.attn.head_dim);
    let width = p.attn.n_head_kv * p.attn.head_dim;
    let mut xb = b.alloc(1, e).unwrap();
    let mut q = b.alloc(1, a).unwrap();
    let mut k = b.alloc(1, width).unwrap();
    let mut v = b.alloc(1, width).unwrap();
    let mut att = b.alloc(1, a).unwrap();
    let mut proj = b.alloc(1, e).unwrap();
    let (r, eps) = (p.residual_scale, p.eps);
    b.rms_norm(x, w.attn_norm, eps, &mut xb).unwrap();
    b.qkv_rope_kv_write(
        &xb,
        [w.attn_q, w.attn_k, w.attn_v],
        &mut q,
        &mut k,
        &mut v,
        pos,
        p.rope_q,
        p.rope_k,
        kv,
        1,
        slot,
    )
    .unwrap();
    b.attention(&q, kv, 1, slot, p.attn, &mut att).unwrap();
    b.matmul_add(&att, w.attn_output, &mut proj, x, r).unwrap();
    b.rms_norm(x, w.ffn_norm, eps, &mut xb).unwrap();
    let mut gate = b.alloc(1, n_ff).unwrap();
    let mut up = b.alloc(1, n_ff).unwrap();
    b.matmul_glu(&xb, w.ffn_gate, w.ffn_up, &mut gate, &mut up)
        .unwrap();
    b.matmul_add(&gate, w.ffn_down, &mut proj, x, r).unwrap();
}

/// One token's whole decoder block as one cluster launch
/// (`Backend::decode_block`, `fused_block_*` on sm_90) against the block's
/// separate ops, on the CPU's exact path and on the GPU: three consecutive
/// positions of the same row (each reads the cache slots the previous ones
/// wrote), over a
/// short and a long cache prefix (the attention's 512-key chunks), both
/// head sizes, every weight type alone and mixed, query and model widths
/// that differ, head counts that do not divide the cluster.
#[test]
fn decode_block_on_a_cluster_matches_cpu() {
    // The cluster kernel is off by default (KernelConfig::fused_block_max_ctx).
    let cfg = KernelConfig {
        fused_block_max_ctx: 4096,
        ..KernelConfig::default()
    };
    let Some(g) = gpu_with(&cfg) else { return };
    if g.compute_capability().0 < 9 {
        eprintln!("skipped: thread-block clusters need sm_90 (this GPU runs the separate ops)");
        return;
    }
    use tern_runtime::backend::{BlockParams, BlockWeights};
    let cpu = CpuBackend::exact(2);
    let mut rng = Rng(4242);
    let q40 = GgmlType::Q4_0;
    let q41 = GgmlType::Q4_1;
    let q80 = GgmlType::Q8_0;
    // (head size, q heads, kv heads, model width, ffn width, types q k v o gate up down)
    // The last case's rows (19 and 33 blocks of 32) start scale windows
    // off 16-byte boundaries and end them in a partial copy.
    let cases: [(usize, usize, usize, usize, usize, [GgmlType; 7]); 6] = [
        (64, 9, 3, 576, 1536, [q41; 7]),
        (64, 9, 3, 576, 1536, [q40; 7]),
        (64, 4, 2, 256, 512, [q80; 7]),
        (64, 9, 3, 576, 1536, [q80, q41, q40, q41, q40, q40, q41]),
        (128, 8, 2, 512, 1024, [q40, q41, q80, q40, q41, q80, q40]),
        (64, 4, 2, 608, 1056, [q41, q40, q41, q41, q41, q40, q41]),
    ];
    for (ci, &(hd, nh, nkv, e, ff, ty)) in cases.iter().enumerate() {
        for prefix in [5usize, 700] {
            let (width, qw) = (nkv * hd, nh * hd);
            let names = ["wq", "wk", "wv", "wo", "wg", "wu", "wd"];
            let dims = [
                (qw, e),
                (width, e),
                (width, e),
                (e, qw),
                (ff, e),
                (ff, e),
                (e, ff),
            ];
            let mut tensors: Vec<(&str, GgmlType, usize, usize, Vec<f32>)> = vec![
                ("k0", GgmlType::F32, prefix, width, rng.vec(prefix * width)),
                ("v0", GgmlType::F32, prefix, width, rng.vec(prefix * width)),
                ("x", GgmlType::F32, 1, e, rng.vec(e)),
                (
                    "n1",
                    GgmlType::F32,
                    1,
                    e,
                    (0..e).map(|_| 1.0 + 0.5 * rng.f32()).collect(),
                ),
                (
                    "n2",
                    GgmlType::F32,
                    1,
                    e,
                    (0..e).map(|_| 1.0 + 0.5 * rng.f32()).collect(),
                ),
            ];
            for (i, n) in names.iter().enumerate() {
                let (r, c) = dims[i];
                // Scaled so activations stay O(1) through the block.
                let v: Vec<f32> = rng.vec(r * c).iter().map(|v| v * 0.2).collect();
                tensors.push((n, ty[i], r, c, v));
            }
            let f = file_with(&tensors);
            fn run<B: Backend>(
                b: &B,
                f: &Arc<GgufFile>,
                s: (usize, usize, usize, usize, usize),
                fused: bool,
            ) -> Vec<Vec<f32>> {
                let (hd, nh, nkv, e, prefix) = s;
                let w = |n: &str, op| b.load_weight(f, f.tensor(n).unwrap(), op).unwrap();
                let (n1, n2) = (w("n1", Op::Vector), w("n2", Op::Vector));
                let (wq, wk, wv, wo) = (
                    w("wq", Op::MatMul),
                    w("wk", Op::MatMul),
                    w("wv", Op::MatMul),
                    w("wo", Op::MatMul),
                );
                let (wg, wu, wd) = (
                    w("wg", Op::MatMul),
                    w("wu", Op::MatMul),
                    w("wd", Op::MatMul),
                );
                let mut kv = cache_with(b, f, ("k0", "v0"), prefix, (1024, nkv, hd), KvType::F16);
                let inv_freq: Vec<f64> = (0..hd / 4)
                    .map(|i| 10000f64.powf(-2.0 * i as f64 / (hd / 2) as f64))
                    .collect();
                // Half the head rotated: the pass-through part is checked too.
                let rope = |n_head| Rope {
                    n_head,
                    head_dim: hd,
                    n_rot: hd / 2,
                    inv_freq: inv_freq.clone(),
                };
                let (rq, rk) = (rope(nh), rope(nkv));
                let attn = causal(nh, nkv, hd);
                let p = BlockParams {
                    eps: 1e-5,
                    residual_scale: 0.8,
                    attn: &attn,
                    rope_q: &rq,
                    rope_k: &rk,
                };
                let bw = BlockWeights {
                    attn_norm: &n1,
                    attn_q: &wq,
                    attn_k: &wk,
                    attn_v: &wv,
                    attn_output: &wo,
                    ffn_norm: &n2,
                    ffn_gate: &wg,
                    ffn_up: &wu,
                    ffn_down: &wd,
                };
                let mut out = Vec::new();
                for step in 0..3 {
                    // The same row each step (only the position and the
                    // cache move on), so one step's rounding does not feed
                    // the next step's input.
                    let mut x = input(b, f, "x", 1, e);
                    let slot = prefix + step;
                    let pos = [(2000 + 3 * slot) as u32];
                    if fused {
                        assert!(
                            b.decode_block(&mut x, &bw, &p, &pos, &mut kv, 1, slot)
                                .unwrap(),
                            "the cluster kernel did not take this shape"
                        );
                    } else {
                        let n_ff = f.tensor("wg").unwrap().dims[1] as usize;
                        separate_block(b, &mut x, n_ff, &bw, &p, &pos, &mut kv, slot);
                    }
                    out.push(read(b, &x));
                }
                out
            }
            let s = (hd, nh, nkv, e, prefix);
            let want = run(&cpu, &f, s, false);
            let ops = run(&g, &f, s, false);
            let got = run(&g, &f, s, true);
            for (step, ((gv, ov), wv)) in got.iter().zip(&ops).zip(&want).enumerate() {
                let what = format!("block case {ci} (D {hd}), prefix {prefix}, step {step}");
                // Like the separate decode kernels, the block quantizes each
                // mat-vec's input to 8 bits: four chained products, so the
                // whole-model decode bound (2e-3) against the CPU's exact
                // path, and the matmul bound against the separate kernels
                // (the same quantization, other rounding upstream of it).
                check(&format!("{what}, against the CPU"), gv, wv, 2e-3);
                check(
                    &format!("{what}, against the separate kernels"),
                    gv,
                    ov,
                    5e-4,
                );
                let sep = nmse(ov, wv);
                eprintln!("{:<40} (separate kernels against the CPU: {sep:.3e})", "");
            }
        }
    }
}
