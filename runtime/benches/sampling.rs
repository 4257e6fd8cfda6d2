//! Criterion benches of one sampling step on a model-sized vocabulary
//! (SmolLM2's 49,152 and MiniCPM4's 73,448 tokens): greedy, llama.cpp's
//! default chain (top-k 40, top-p 0.95, min-p 0.05, temperature 0.8), and
//! the defaults with a repeat penalty over a 64-token window; and the
//! defaults on logits that rise with the token id, top-k's worst case
//! (every token beats the k best so far). A GPU decode step of a small
//! model is ~450 µs, so this is on the per-token path.
//! `cargo bench -p tern-runtime --bench sampling`.

mod common;

use common::values;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tern_runtime::{Sampler, SamplerParams};

fn bench(c: &mut Criterion) {
    for n in [49_152usize, 73_448] {
        let row = values(n as u64, n, -10.0, 10.0);
        let history: Vec<u32> = (0..100).map(|i| (i * 7919 % n) as u32).collect();
        let settings = [
            ("greedy", SamplerParams::greedy()),
            ("defaults", SamplerParams::default()),
            (
                "defaults+repeat-penalty",
                SamplerParams {
                    repeat_penalty: 1.1,
                    ..SamplerParams::default()
                },
            ),
        ];
        for (name, params) in settings {
            let mut s = Sampler::new(params);
            c.bench_with_input(BenchmarkId::new(name, n), &row, |b, row| {
                b.iter(|| s.sample(row, &history))
            });
        }
        let rising: Vec<f32> = (0..n).map(|i| i as f32 * 1e-3).collect();
        let mut s = Sampler::new(SamplerParams::default());
        c.bench_with_input(
            BenchmarkId::new("defaults-rising-logits", n),
            &rising,
            |b, row| b.iter(|| s.sample(row, &history)),
        );
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
