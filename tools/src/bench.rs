//! `tern bench`: llama-bench-style throughput tests. `pp N` processes an
//! N-token prompt (in batches of `-b`) from an empty cache; `tg N` generates
//! N tokens one forward at a time from an empty cache. Each test runs once
//! to warm up, then `-r` times; the table gives mean ± sample standard
//! deviation of tokens per second. Tokens are seeded pseudo-random ids, as
//! llama-bench uses random tokens. With `-d D` each test also runs after a
//! D-token context is already in the cache ("tg128 @ d8192"); the context is
//! filled once per depth and the cache rolled back to it between runs.

use std::time::Instant;

use anyhow::Result;
use tern_runtime::{Batch, Model, Session};

use crate::cli::{BenchArgs, BenchFormat};
use crate::common::{load_model, model_label, out, param_count, session_params};

/// One row of results.
#[derive(Clone, Debug)]
pub struct Row {
    pub test: String,
    pub n_prompt: usize,
    pub n_gen: usize,
    pub depth: usize,
    pub samples_ts: Vec<f64>,
}

impl Row {
    pub fn mean(&self) -> f64 {
        self.samples_ts.iter().sum::<f64>() / self.samples_ts.len().max(1) as f64
    }

    pub fn sd(&self) -> f64 {
        let n = self.samples_ts.len();
        if n < 2 {
            return 0.0;
        }
        let m = self.mean();
        (self
            .samples_ts
            .iter()
            .map(|x| (x - m) * (x - m))
            .sum::<f64>()
            / (n - 1) as f64)
            .sqrt()
    }
}

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

fn run_pp(s: &mut Session, depth: usize, toks: &[u32]) -> Result<f64> {
    s.truncate(depth)?;
    let t0 = Instant::now();
    s.feed(toks, || false)?;
    Ok(toks.len() as f64 / t0.elapsed().as_secs_f64())
}

fn run_tg(s: &mut Session, depth: usize, toks: &[u32]) -> Result<f64> {
    s.truncate(depth)?;
    // As the generation loop runs it: one logits buffer, reused.
    let mut logits = Vec::new();
    let t0 = Instant::now();
    for (i, &t) in toks.iter().enumerate() {
        s.forward_into(&Batch::new(&[t], (depth + i) as u32), &mut logits)?;
    }
    Ok(toks.len() as f64 / t0.elapsed().as_secs_f64())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    let model = load_model(&args.model)?;
    let max_p = args.n_prompt.iter().copied().max().unwrap_or(0) as usize;
    let max_g = args.n_gen.iter().copied().max().unwrap_or(0) as usize;
    let max_d = args.depth.iter().copied().max().unwrap_or(0) as usize;
    let n_ctx = max_p.max(max_g).max(1) + max_d;
    let params = session_params(
        &model,
        Some(n_ctx as u32),
        args.model.kv_type,
        args.batch_size as usize,
    );
    let mut session = model.new_session(&params)?;
    let vocab = model.config().n_vocab;
    let reps = args.repetitions as usize;
    let mut plan: Vec<(String, usize, usize, usize)> = Vec::new();
    for &d in &args.depth {
        let d = d as usize;
        let at = |name: String| {
            if d > 0 {
                format!("{name} @ d{d}")
            } else {
                name
            }
        };
        plan.extend(
            args.n_prompt
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n| (at(format!("pp{n}")), n as usize, 0, d)),
        );
        plan.extend(
            args.n_gen
                .iter()
                .filter(|&&n| n > 0)
                .map(|&n| (at(format!("tg{n}")), 0, n as usize, d)),
        );
    }
    let bar = indicatif::ProgressBar::new((plan.len() * (reps + 1)) as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("bench {bar:30} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    let mut rows = Vec::new();
    for (name, np, ng, depth) in plan {
        bar.set_message(name.clone());
        if session.len() < depth || session.tokens()[..depth] != tokens(depth, vocab, 999)[..] {
            session.clear();
            if depth > 0 {
                session.feed(&tokens(depth, vocab, 999), || false)?;
            }
        }
        let mut row = Row {
            test: name,
            n_prompt: np,
            n_gen: ng,
            depth,
            samples_ts: Vec::new(),
        };
        for r in 0..=reps {
            let toks = tokens(np.max(ng), vocab, r as u64 + 1);
            let ts = if np > 0 {
                run_pp(&mut session, depth, &toks)?
            } else {
                run_tg(&mut session, depth, &toks)?
            };
            if r > 0 {
                row.samples_ts.push(ts);
            }
            bar.inc(1);
        }
        rows.push(row);
    }
    bar.finish_and_clear();
    match args.output {
        BenchFormat::Md => out(&markdown(&model, &rows)),
        BenchFormat::Json => out(&format!("{}\n", json(&model, args, &rows))),
    }
}

fn markdown(model: &Model, rows: &[Row]) -> String {
    let label = model_label(model);
    let size = format!("{:.2} MiB", model.weight_bytes() as f64 / (1024.0 * 1024.0));
    let params = param_count(model);
    let mut s = String::from("| model | size | params | backend | threads | test | t/s |\n");
    s.push_str("| --- | ---: | ---: | --- | ---: | ---: | ---: |\n");
    for r in rows {
        s.push_str(&format!(
            "| {label} | {size} | {params} | {} ({}) | {} | {} | {:.2} ± {:.2} |\n",
            model.backend_name(),
            model.kernel_name(),
            model.threads(),
            r.test,
            r.mean(),
            r.sd()
        ));
    }
    s
}

fn json(model: &Model, args: &BenchArgs, rows: &[Row]) -> serde_json::Value {
    serde_json::Value::Array(
        rows.iter()
            .map(|r| {
                serde_json::json!({
                    "model": model_label(model),
                    "model_path": model.path().map(|p| p.display().to_string()),
                    "model_size": model.weight_bytes(),
                    "model_n_params": model.gguf().tensors().iter().map(|t| t.n_elements).sum::<u64>(),
                    "backend": model.backend_name(),
                    "kernels": model.kernel_name(),
                    "n_threads": model.threads(),
                    "n_batch": args.batch_size,
                    "test": r.test,
                    "n_prompt": r.n_prompt,
                    "n_gen": r.n_gen,
                    "depth": r.depth,
                    "avg_ts": r.mean(),
                    "stddev_ts": r.sd(),
                    "samples_ts": r.samples_ts,
                })
            })
            .collect(),
    )
}
