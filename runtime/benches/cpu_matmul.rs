//! Criterion benches of the fast CPU matmul kernels, one thread: each kernel
//! set this CPU has × Q4_0/Q4_1/Q8_0 × a decode shape (1 token) and a
//! prefill tile (64 tokens), on a 1024 × 1024 matrix (MiniCPM4-0.5B's
//! attention width). `cargo bench -p tern-runtime --bench cpu_matmul`.

mod common;

use common::values;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use tern_runtime::backend::cpu::kernels;
use tern_runtime::quants::{self, GgmlType};

fn bench(c: &mut Criterion) {
    let (rows, k) = (1024usize, 1024usize);
    let wf = values(1, rows * k, -1.0, 1.0);
    for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
        let rb = ty.row_bytes(k as u64).unwrap() as usize;
        let mut w = vec![0u8; rows * rb];
        for (src, dst) in wf.chunks_exact(k).zip(w.chunks_exact_mut(rb)) {
            quants::quantize_row(ty, src, dst).unwrap();
        }
        let mut g = c.benchmark_group(format!("matmul_{ty}_{rows}x{k}"));
        for n_tok in [1usize, 64] {
            let x = values(2, n_tok * k, -1.0, 1.0);
            g.throughput(Throughput::Elements((rows * k * n_tok) as u64));
            for set in kernels::available() {
                let (qs, d, s) = kernels::quantize(set, &x).unwrap();
                let mut out = vec![0.0f32; rows * n_tok];
                g.bench_with_input(BenchmarkId::new(set, n_tok), &n_tok, |b, _| {
                    b.iter(|| {
                        kernels::gemm(set, ty, &w, k, &qs, &d, &s, 0..rows, 0..n_tok, &mut out)
                            .unwrap()
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20);
    targets = bench
}
criterion_main!(benches);
