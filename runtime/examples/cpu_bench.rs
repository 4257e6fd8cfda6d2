//! llama-bench-style throughput of the CPU backend, without a tokenizer:
//! `cargo run --release -p tern-runtime --example cpu_bench -- MODEL.gguf
//! [-p 512] [-n 128] [-r 3] [-t THREADS] [--exact]`.
//!
//! `pp N` feeds an N-token prompt (one batch, from an empty cache) and `tg N`
//! generates N tokens one forward at a time, as llama-bench does; each runs
//! once to warm up, then `-r` times, and the mean ± sample sd in tokens/s is
//! printed in llama-bench's markdown table shape. Tokens are seeded
//! pseudo-random ids. It drives `LlamaModel` and `Session` directly so it
//! works while the tokenizer is a stub; `tern bench` is the user-facing one.

use std::sync::Arc;
use std::time::Instant;

use tern_runtime::backend::cpu::CpuBackend;
use tern_runtime::backend::KvType;
use tern_runtime::gguf::GgufFile;
use tern_runtime::model::LlamaModel;
use tern_runtime::session::{Batch, Session};

fn tokens(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % vocab as u64) as u32
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (mut path, mut np, mut ng, mut reps, mut threads, mut exact) =
        (None, 512usize, 128usize, 3usize, 0usize, false);
    let mut i = 0;
    while i < args.len() {
        let val = |i: usize| -> Result<usize, Box<dyn std::error::Error>> {
            Ok(args.get(i + 1).ok_or("missing value")?.parse()?)
        };
        match args[i].as_str() {
            "-p" => (np, i) = (val(i)?, i + 1),
            "-n" => (ng, i) = (val(i)?, i + 1),
            "-r" => (reps, i) = (val(i)?, i + 1),
            "-t" => (threads, i) = (val(i)?, i + 1),
            "--exact" => exact = true,
            p => path = Some(p.to_string()),
        }
        i += 1;
    }
    let path = path.ok_or("usage: cpu_bench MODEL.gguf [-p N] [-n N] [-r N] [-t N] [--exact]")?;
    let backend = match (threads, exact) {
        (0, false) => CpuBackend::default(),
        (0, true) => CpuBackend::exact(std::thread::available_parallelism()?.get()),
        (t, false) => CpuBackend::new(t),
        (t, true) => CpuBackend::exact(t),
    };
    let kernels = backend.kernel_name();
    let threads = backend.threads();
    let file = Arc::new(GgufFile::open(&path)?);
    let model = Arc::new(LlamaModel::load(file, backend)?);
    let vocab = model.config.n_vocab;
    let mut session = Session::new(Arc::clone(&model), np.max(ng).max(1), KvType::F16)?;
    println!("| model | kernels | threads | test | t/s |");
    println!("| --- | --- | ---: | ---: | ---: |");
    let name = std::path::Path::new(&path)
        .file_name()
        .map_or(path.clone(), |n| n.to_string_lossy().into_owned());
    for (test, n, prompt) in [("pp", np, true), ("tg", ng, false)] {
        if n == 0 {
            continue;
        }
        let mut samples = Vec::new();
        for r in 0..=reps {
            let toks = tokens(n, vocab, r as u64 + 1);
            session.truncate(0)?;
            let t0 = Instant::now();
            if prompt {
                session.forward(&Batch::new(&toks, 0))?;
            } else {
                for (i, &t) in toks.iter().enumerate() {
                    session.forward(&Batch::new(&[t], i as u32))?;
                }
            }
            let ts = n as f64 / t0.elapsed().as_secs_f64();
            if r > 0 {
                samples.push(ts);
            }
        }
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        let sd = if samples.len() > 1 {
            (samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (samples.len() - 1) as f64)
                .sqrt()
        } else {
            0.0
        };
        println!("| {name} | {kernels} | {threads} | {test}{n} | {mean:.2} ± {sd:.2} |");
    }
    Ok(())
}
