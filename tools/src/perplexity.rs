//! `tern perplexity`: llama-perplexity's method, so the numbers compare.
//!
//! The whole file is tokenized (with BOS if the model adds one), cut into
//! non-overlapping chunks of `n_ctx` tokens, and each chunk evaluated from
//! an empty cache with its first token replaced by BOS (when the model adds
//! BOS). Only the second half of each chunk is scored — position `j` for
//! `j` in `n_ctx/2 .. n_ctx-1` predicts token `j+1` — so every scored token
//! has at least half a context of history. PPL = exp(mean NLL); the ± is
//! PPL times the standard error of the NLLs, as llama-perplexity prints it.

use std::time::Instant;

use anyhow::{bail, Result};
use tern_runtime::{Batch, Session};

use crate::cli::PerplexityArgs;
use crate::common::{load_model, out, read_text, session_params};

/// Accumulated negative log-likelihoods.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Score {
    /// Σ −log p(token).
    pub nll: f64,
    /// Σ (−log p(token))².
    pub nll2: f64,
    /// Tokens scored.
    pub count: usize,
}

impl Score {
    /// exp(mean NLL).
    pub fn ppl(&self) -> f64 {
        (self.nll / self.count.max(1) as f64).exp()
    }

    /// PPL · standard error of the mean NLL (llama-perplexity's ±), if defined.
    pub fn ppl_error(&self) -> Option<f64> {
        if self.count < 2 {
            return None;
        }
        let n = self.count as f64;
        let mean = self.nll / n;
        let var = self.nll2 / n - mean * mean;
        (var > 0.0).then(|| (var / (n - 1.0)).sqrt() * self.ppl())
    }
}

/// −log softmax(logits)[tok], the sum of exponentials in f64.
pub fn nll(logits: &[f32], tok: u32) -> f64 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| ((l - max) as f64).exp()).sum();
    let l = logits
        .get(tok as usize)
        .copied()
        .unwrap_or(f32::NEG_INFINITY);
    sum.ln() - (l - max) as f64
}

/// Score `tokens` chunk by chunk; `on_chunk(i, score)` after each.
pub fn score(
    session: &mut Session,
    tokens: &[u32],
    n_ctx: usize,
    n_chunks: usize,
    bos: Option<u32>,
    mut on_chunk: impl FnMut(usize, &Score) -> Result<()>,
) -> Result<Score> {
    let first = n_ctx / 2;
    let n_batch = session.n_batch();
    let mut s = Score::default();
    for i in 0..n_chunks {
        let mut chunk = tokens[i * n_ctx..(i + 1) * n_ctx].to_vec();
        if let Some(b) = bos {
            chunk[0] = b;
        }
        session.clear();
        let mut start = 0;
        while start < n_ctx {
            let end = (start + n_batch).min(n_ctx);
            // Logits only for the positions that are scored.
            let outputs: Vec<usize> = (start..end)
                .filter(|&p| p >= first && p + 1 < n_ctx)
                .map(|p| p - start)
                .collect();
            let batch = Batch::new(&chunk[start..end], start as u32).logits_for(&outputs);
            let logits = session.forward(&batch)?;
            for (r, &o) in outputs.iter().enumerate() {
                let p = start + o;
                let row = logits.row(r).unwrap_or(&[]);
                let v = nll(row, tokens[i * n_ctx + p + 1]);
                s.nll += v;
                s.nll2 += v * v;
                s.count += 1;
            }
            start = end;
        }
        on_chunk(i, &s)?;
    }
    Ok(s)
}

pub fn run(args: &PerplexityArgs) -> Result<()> {
    let text = read_text(&args.file)?;
    let model = load_model(&args.model)?;
    let n_ctx = args.ctx_size as usize;
    let params = session_params(
        &model,
        Some(args.ctx_size),
        args.model.kv_type,
        args.batch_size as usize,
    );
    let mut session = model.new_session(&params)?;
    let tok = model.tokenizer()?;
    let t0 = Instant::now();
    let tokens = tok.encode(&text, true, false)?;
    eprintln!(
        "perplexity: tokenized {} in {:.2} s: {} tokens",
        args.file.display(),
        t0.elapsed().as_secs_f64(),
        tokens.len()
    );
    if tokens.len() < 2 * n_ctx {
        bail!(
            "{} tokenizes to {} tokens; perplexity with a context of {n_ctx} needs at least {}",
            args.file.display(),
            tokens.len(),
            2 * n_ctx
        );
    }
    let max_chunks = tokens.len() / n_ctx;
    let n_chunks = args
        .chunks
        .map_or(max_chunks, |c| (c as usize).min(max_chunks));
    let bos = tok.bos().filter(|_| tok.add_bos());
    eprintln!(
        "perplexity: {n_chunks} chunks of {n_ctx} tokens, scoring the last {} of each ({} threads)",
        n_ctx - n_ctx / 2 - 1,
        model.threads()
    );
    let t0 = Instant::now();
    let s = score(&mut session, &tokens, n_ctx, n_chunks, bos, |i, s| {
        if i == 0 {
            let per = t0.elapsed().as_secs_f64();
            eprintln!(
                "perplexity: {:.2} s per chunk, about {:.1} minutes in all",
                per,
                per * n_chunks as f64 / 60.0
            );
        }
        out(&format!("[{}]{:.4},", i + 1, s.ppl()))
    })?;
    out("\n")?;
    match s.ppl_error() {
        Some(e) => out(&format!(
            "Final estimate: PPL = {:.4} +/- {:.5}\n",
            s.ppl(),
            e
        )),
        None => out(&format!("Final estimate: PPL = {:.4}\n", s.ppl())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nll_is_minus_log_softmax() {
        let l = [1.0f32, 2.0, 3.0];
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        for t in 0..3 {
            let want = -((l[t] as f64).exp() / z).ln();
            assert!((nll(&l, t as u32) - want).abs() < 1e-12);
        }
    }

    #[test]
    fn score_statistics_follow_llama_perplexity() {
        // Two NLLs, 1 and 3: mean 2, variance (1+9)/2 - 4 = 1, se = sqrt(1/1).
        let s = Score {
            nll: 4.0,
            nll2: 10.0,
            count: 2,
        };
        assert!((s.ppl() - 2f64.exp()).abs() < 1e-12);
        assert!((s.ppl_error().unwrap() - 2f64.exp()).abs() < 1e-12);
        assert_eq!(Score::default().ppl_error(), None);
    }
}
