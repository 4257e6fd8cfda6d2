//! Criterion benches of one sampling step on a model-sized vocabulary
//! (SmolLM2's 49,152 and MiniCPM4's 73,448 tokens): greedy, llama.cpp's
//! default chain (top-k 40, top-p 0.95, min-p 0.05, temperature 0.8), and
//! the defaults with a repeat penalty over a 64-token window; and the
//! defaults on logits that rise with the token id, top-k's worst case
//! (every token beats the k best so far). A GPU decode step of a small
//! model is ~450 µs, so this is on the per-token path.
//! `cargo bench -p tern-runtime --bench sampling`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use tern_runtime::{Sampler, SamplerParams};

fn logits(seed: u64, n: usize) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ((x >> 40) as f32 / (1u64 << 24) as f32) * 20.0 - 10.0
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    for n in [49_152usize, 73_448] {
        let row = logits(n as u64, n);
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
