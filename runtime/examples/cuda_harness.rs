//! Kernel harness: builds several variants of the CUDA mat-vec (decode) and
//! the mma.sync mat-mat (prefill) kernels in one GPU run, checks each
//! against the CPU on the same random weights, and times it on the
//! MiniCPM4-8B layer shapes, printing achieved GB/s (decode, against the
//! ~4.3 TB/s measured copy bandwidth) or TFLOP/s (prefill) beside each.
//! Each timed loop cycles through copies of the weight totalling ≥ 256 MB,
//! so the figures are DRAM's, not L2's.
//! `docs/cuda-kernel-notes.md` records the versions, predictions and
//! outcomes.
//!
//! Run: `cargo run --release --features cuda -p tern-runtime --example cuda_harness`
//! (on the GPU machine: `.device/bin/cuda_harness`).

use std::sync::Arc;
use std::time::Instant;

use tern_runtime::backend::cpu::CpuBackend;
use tern_runtime::backend::cuda::{kernels::KernelConfig, CudaBackend};
use tern_runtime::backend::{Backend, Op};
use tern_runtime::gguf::{GgufFile, GgufWriter};
use tern_runtime::quants::{self, GgmlType};

const COPY_GBS: f64 = 4300.0;

fn rand_vec(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0 + 1e-3
        })
        .collect()
}

fn file(rows: usize, cols: usize, ty: GgmlType, ntok: usize) -> Arc<GgufFile> {
    let w = rand_vec(rows as u64 * 31 + cols as u64, rows * cols);
    let rb = ty.row_bytes(cols as u64).unwrap() as usize;
    let mut bytes = vec![0u8; rb * rows];
    for r in 0..rows {
        quants::quantize_row(
            ty,
            &w[r * cols..(r + 1) * cols],
            &mut bytes[r * rb..(r + 1) * rb],
        )
        .unwrap();
    }
    let x = rand_vec(7, ntok * cols);
    let xb: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut g = GgufWriter::new();
    g.add_tensor("w", ty, &[cols as u64, rows as u64], bytes)
        .unwrap();
    g.add_tensor("x", GgmlType::F32, &[cols as u64, ntok as u64], xb)
        .unwrap();
    let mut buf = Vec::new();
    g.write_to(&mut buf).unwrap();
    Arc::new(GgufFile::from_bytes(buf).unwrap())
}

fn run<B: Backend>(
    b: &B,
    f: &Arc<GgufFile>,
    ntok: usize,
    reps: usize,
    sync: &dyn Fn(),
) -> (Vec<f32>, f64) {
    let wi = f.tensor("w").unwrap();
    // Enough copies of the weight that the timed loop streams ≥ 256 MB
    // from DRAM per pass (the H200's L2 holds 50 MB: timing one copy over
    // and over would measure L2 for matrices that fit).
    let copies = (256e6 / wi.n_bytes as f64).ceil().clamp(1.0, 64.0) as usize;
    let ws: Vec<B::Weight> = (0..copies)
        .map(|_| b.load_weight(f, wi, Op::MatMul).unwrap())
        .collect();
    let w = &ws[0];
    let xt = b.load_weight(f, f.tensor("x").unwrap(), Op::Embed).unwrap();
    let cols = wi.dims[0] as usize;
    let rows = (wi.n_elements / wi.dims[0]) as usize;
    let mut x = b.alloc(ntok, cols).unwrap();
    b.embed(&xt, &(0..ntok as u32).collect::<Vec<_>>(), 1.0, &mut x)
        .unwrap();
    let mut o = b.alloc(ntok, rows).unwrap();
    b.matmul(&x, w, &mut o).unwrap();
    let mut out = vec![0f32; ntok * rows];
    b.read(&o, &mut out).unwrap();
    let mut times = Vec::new();
    for _ in 0..reps {
        sync();
        let t = Instant::now();
        let n = copies.max(10);
        for i in 0..n {
            b.matmul(&x, &ws[i % copies], &mut o).unwrap();
        }
        sync();
        times.push(t.elapsed().as_secs_f64() / n as f64);
    }
    times.sort_by(f64::total_cmp);
    (out, times[times.len() / 2])
}

fn nmse(a: &[f32], b: &[f32]) -> f64 {
    let (mut n, mut d) = (0f64, 0f64);
    for (&x, &y) in a.iter().zip(b) {
        n += (x as f64 - y as f64).powi(2);
        d += (y as f64).powi(2);
    }
    n / d.max(1e-300)
}

fn main() {
    let cpu = CpuBackend::exact(std::thread::available_parallelism().map_or(4, |n| n.get()));
    // Decode variants: blocks in flight per lane × warps per row (0 = the
    // per-matrix rule, `kernels::mv_ksplit_auto`).
    // `HARNESS_DEFAULT=1`: the default configuration only (one kernel
    // build, for a profiler run); `HARNESS_CONFIGS=u1k0,u2k1,u1k0r2,u1k0r2d1,…`:
    // these (blocks in flight per lane, warps per row, optionally rows per
    // warp `rN`, then a `MV_DIAG` diagnostic `dN`) only.
    let picked: Option<Vec<KernelConfig>> = std::env::var("HARNESS_CONFIGS").ok().map(|v| {
        v.split(',')
            .filter_map(|t| {
                let (u, k) = t.trim().strip_prefix('u')?.split_once('k')?;
                // An optional `dN` last: the diagnostic; before it an
                // optional `rN`: rows per warp.
                let (k, dg) = k.split_once('d').unwrap_or((k, "0"));
                let (k, r) = k.split_once('r').unwrap_or((k, "1"));
                Some(KernelConfig {
                    mv_unroll: u.parse().ok()?,
                    mv_ksplit: k.parse().ok()?,
                    mv_rows: r.parse().ok()?,
                    mv_diag: dg.parse().ok()?,
                    ..KernelConfig::default()
                })
            })
            .collect()
    });
    let variants: Vec<KernelConfig> = if let Some(p) = picked {
        p
    } else if std::env::var_os("HARNESS_DEFAULT").is_some() {
        vec![KernelConfig::default()]
    } else {
        [1u32, 2, 4]
            .iter()
            .flat_map(|&u| {
                [0u32, 1, 2, 4].map(|k| KernelConfig {
                    mv_unroll: u,
                    mv_ksplit: k,
                    ..KernelConfig::default()
                })
            })
            .collect()
    };
    let gpus: Vec<(KernelConfig, CudaBackend)> = variants
        .iter()
        .map(|c| (*c, CudaBackend::open_with(0, c).expect("GPU")))
        .collect();
    println!("GPU: {}", gpus[0].1.device_name());
    // MiniCPM4-8B: q/o 4096², k/v 256×4096, gate/up 16384×4096, down 4096×16384, head 73448×4096.
    let shapes = [
        (4096usize, 4096usize),
        (256, 4096),
        (16384, 4096),
        (4096, 16384),
        (73448, 4096),
    ];
    // Decode shapes: the 8B's fused q/k/v (4608 rows) and gate/up (32768)
    // launches, o, down and the head; the 0.5B's (1024 hidden, 4096 FFN).
    let decode_shapes = [
        (4608usize, 4096usize),
        (4096, 4096),
        (32768, 4096),
        (4096, 16384),
        (73448, 4096),
        (1536, 1024),
        (8192, 1024),
        (1024, 4096),
    ];
    println!("\n## decode mat-vec (1 token), Q4_0 (Q8_0 for the head): median of 20 passes over ≥ 256 MB of copies");
    println!("| shape | type | variant | µs | GB/s | share of {COPY_GBS:.0} GB/s | NMSE vs CPU |");
    println!("|---|---|---|---|---|---|---|");
    // `HARNESS_SHAPE=ROWSxCOLS` keeps one shape (for a profiler run).
    let only = std::env::var("HARNESS_SHAPE").ok();
    for &(rows, cols) in &decode_shapes {
        if only
            .as_ref()
            .is_some_and(|o| *o != format!("{rows}x{cols}"))
        {
            continue;
        }
        let ty = if rows == 73448 {
            GgmlType::Q8_0
        } else {
            GgmlType::Q4_0
        };
        let f = file(rows, cols, ty, 1);
        let (want, _) = run(&cpu, &f, 1, 1, &|| {});
        let bytes = f.tensor("w").unwrap().n_bytes as f64 + cols as f64 * 4.0;
        for (cfg, g) in &gpus {
            let (got, t) = run(g, &f, 1, 20, &|| g.synchronize().unwrap());
            let gbs = bytes / t / 1e9;
            let ks = match cfg.mv_ksplit {
                0 => format!(
                    "auto={}",
                    tern_runtime::backend::cuda::kernels::mv_ksplit_auto(rows, cols, g.sm_count())
                ),
                k => k.to_string(),
            };
            println!(
                "| {rows}×{cols} | {ty} | unroll={} ks={ks} rows={} diag={} | {:.1} | {:.0} | {:.0}% | {:.1e} |",
                cfg.mv_unroll,
                cfg.mv_rows,
                cfg.mv_diag,
                t * 1e6,
                gbs,
                100.0 * gbs / COPY_GBS,
                nmse(&got, &want)
            );
        }
    }
    if std::env::var_os("HARNESS_DECODE_ONLY").is_some() {
        return;
    }
    println!("\n## prefill mat-mat (512 tokens): f16 tiles (matmul_mma*) against 4-bit tiles (matmul_q4_*)");
    println!("| shape | type | kernel | µs | TFLOP/s | NMSE vs CPU |");
    println!("|---|---|---|---|---|---|");
    let f16_tiles = CudaBackend::open_with(
        0,
        &KernelConfig {
            prefill_q4: false,
            ..KernelConfig::default()
        },
    )
    .expect("GPU");
    let q4_narrow3 = CudaBackend::open_with(
        0,
        &KernelConfig {
            mq_narrow_min_blocks: 3,
            ..KernelConfig::default()
        },
    )
    .expect("GPU");
    let q4_mi1 = CudaBackend::open_with(
        0,
        &KernelConfig {
            mq_wide_mi: 1,
            ..KernelConfig::default()
        },
    )
    .expect("GPU");
    let q4_tiles = &gpus[0].1;
    for &(rows, cols) in [(4608usize, 4096usize)].iter().chain(&shapes[..4]) {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1] {
            let f = file(rows, cols, ty, 512);
            let (want, _) = run(&cpu, &f, 512, 1, &|| {});
            for (label, g) in [
                ("f16 tiles", &f16_tiles),
                ("4-bit tiles", q4_tiles),
                (
                    "4-bit tiles, narrow kernel capped at 168 registers (3 blocks/SM)",
                    &q4_narrow3,
                ),
                (
                    "4-bit tiles, wide kernel warps of 16 rows × 128 tokens",
                    &q4_mi1,
                ),
            ] {
                let (got, t) = run(g, &f, 512, 10, &|| g.synchronize().unwrap());
                let tflops = 2.0 * rows as f64 * cols as f64 * 512.0 / t / 1e12;
                println!(
                    "| {rows}×{cols} | {ty} | {label} | {:.1} | {:.1} | {:.1e} |",
                    t * 1e6,
                    tflops,
                    nmse(&got, &want)
                );
            }
        }
    }
}
