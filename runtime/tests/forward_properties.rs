//! Properties speculative decoding, chunked prefill and perplexity rely on:
//! n tokens in one forward equal n one-token forwards; a cache truncated to
//! position p and advanced again equals one never advanced past p; a failed
//! forward leaves the session unchanged.
//!
//! The CPU backend computes each row the same way whatever the batch shape,
//! so these hold bit for bit, not just within a tolerance.

mod common;

use common::*;
use tern_runtime::{Batch, Error, KvType, Model, ModelParams, Session, SessionParams};

fn load(rel: &str) -> Model {
    Model::load(
        model_path(rel),
        &ModelParams {
            threads: Some(2),
            ..Default::default()
        },
    )
    .expect("load")
}

fn session(m: &Model, n_ctx: usize) -> Session {
    m.new_session(&SessionParams {
        n_ctx,
        kv_type: KvType::F16,
        ..Default::default()
    })
    .expect("session")
}

/// A deterministic token stream (xorshift) inside the vocabulary.
fn stream(seed: u64, n: usize, vocab: usize) -> Vec<u32> {
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

/// For every prompt length 1..=10 and start position 0..=7: one batched
/// forward of the prompt equals one forward per token.
fn batch_equals_single_steps(m: &Model) {
    let vocab = m.config().n_vocab;
    for start in 0..=7usize {
        for n in 1..=10usize {
            let toks = stream((start * 100 + n) as u64, start + n, vocab);
            let (prefix, tail) = toks.split_at(start);

            let mut a = session(m, 32);
            if start > 0 {
                a.forward(&Batch::new(prefix, 0)).unwrap();
            }
            let batched = a
                .forward(&Batch::new(tail, start as u32).all_logits())
                .unwrap();

            let mut b = session(m, 32);
            for (i, &t) in toks.iter().enumerate() {
                let l = b.forward(&Batch::new(&[t], i as u32)).unwrap();
                if i >= start {
                    let want = batched.row(i - start).unwrap();
                    assert!(
                        l.row(0).unwrap() == want,
                        "start {start}, n {n}: token {i} differs between batched and single-step"
                    );
                }
            }
            assert_eq!(a.len(), b.len());
        }
    }
}

/// Advance to p + extra, truncate to p, advance with other tokens: equals a
/// session that only ever saw the first p tokens and then the new ones.
fn truncate_equals_fresh(m: &Model) {
    let vocab = m.config().n_vocab;
    for p in [0usize, 1, 5, 9] {
        for extra in [1usize, 4, 7] {
            let base = stream(p as u64 + 7, p, vocab);
            let junk = stream(extra as u64 + 99, extra, vocab);
            let next = stream(p as u64 * 31 + extra as u64, 5, vocab);

            let mut a = session(m, 32);
            if p > 0 {
                a.forward(&Batch::new(&base, 0)).unwrap();
            }
            a.forward(&Batch::new(&junk, p as u32)).unwrap();
            a.truncate(p).unwrap();
            assert_eq!(a.len(), p);
            let got = a
                .forward(&Batch::new(&next, p as u32).all_logits())
                .unwrap();

            let mut b = session(m, 32);
            if p > 0 {
                b.forward(&Batch::new(&base, 0)).unwrap();
            }
            let want = b
                .forward(&Batch::new(&next, p as u32).all_logits())
                .unwrap();
            assert!(
                got == want,
                "p {p}, extra {extra}: rolled-back cache differs"
            );
        }
    }
}

#[test]
fn tiny_llama_q4_0_batch_equals_single_steps() {
    batch_equals_single_steps(&load("synthetic/tiny-llama-q4_0.gguf"));
}

#[test]
fn tiny_minicpm_q8_0_batch_equals_single_steps() {
    batch_equals_single_steps(&load("synthetic/tiny-minicpm-q8_0.gguf"));
}

#[test]
fn tiny_llama_q4_1_truncate_equals_fresh() {
    truncate_equals_fresh(&load("synthetic/tiny-llama-q4_1.gguf"));
}

#[test]
fn tiny_minicpm_f16_truncate_equals_fresh() {
    truncate_equals_fresh(&load("synthetic/tiny-minicpm-f16.gguf"));
}

#[test]
fn smollm2_batch_equals_single_steps_and_truncates() {
    let m = load("SmolLM2-135M-Instruct.Q4_1.gguf");
    let toks: Vec<u32> = stream(5, 12, m.config().n_vocab);
    let mut a = session(&m, 64);
    a.forward(&Batch::new(&toks[..4], 0)).unwrap();
    let batched = a.forward(&Batch::new(&toks[4..], 4).all_logits()).unwrap();
    let mut b = session(&m, 64);
    for (i, &t) in toks.iter().enumerate() {
        let l = b.forward(&Batch::new(&[t], i as u32)).unwrap();
        if i >= 4 {
            assert!(
                l.row(0).unwrap() == batched.row(i - 4).unwrap(),
                "token {i}"
            );
        }
    }
    b.truncate(6).unwrap();
    let again = b.forward(&Batch::new(&toks[6..], 6).all_logits()).unwrap();
    for i in 0..6 {
        assert!(
            again.row(i).unwrap() == batched.row(i + 2).unwrap(),
            "after truncate, token {}",
            i + 6
        );
    }
}

#[test]
fn failed_forwards_leave_the_session_unchanged() {
    let m = load("synthetic/tiny-llama-f32.gguf");
    let vocab = m.config().n_vocab as u32;
    let toks = stream(3, 6, vocab as usize);
    let mut s = session(&m, 8);
    s.forward(&Batch::new(&toks[..4], 0)).unwrap();

    // Past the context: ContextFull, nothing written.
    let err = s.forward(&Batch::new(&toks, 4)).unwrap_err();
    assert!(
        matches!(
            err,
            Error::ContextFull {
                position: 10,
                n_ctx: 8
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("context full"), "{err}");
    assert_eq!(s.len(), 4);

    // A token outside the vocabulary.
    let err = s.forward(&Batch::new(&[toks[4], vocab], 4)).unwrap_err();
    assert!(matches!(err, Error::InvalidBatch(_)), "{err}");
    assert!(err.to_string().contains("outside the vocabulary"), "{err}");
    assert_eq!(s.len(), 4);

    // Empty batch, mismatched positions, output index out of range, position past the context.
    assert!(matches!(
        s.forward(&Batch::new(&[], 4)),
        Err(Error::InvalidBatch(_))
    ));
    let mut b = Batch::new(&toks[4..6], 4);
    b.positions.pop();
    assert!(matches!(s.forward(&b), Err(Error::InvalidBatch(_))));
    assert!(matches!(
        s.forward(&Batch::new(&toks[4..6], 4).logits_for(&[2])),
        Err(Error::InvalidBatch(_))
    ));
    assert!(matches!(
        s.forward(&Batch::new(&toks[4..5], 8)),
        Err(Error::InvalidBatch(_))
    ));
    assert!(matches!(s.truncate(5), Err(Error::InvalidBatch(_))));
    assert_eq!(s.len(), 4);

    // The session still works and gives what a fresh one gives.
    let got = s.forward(&Batch::new(&toks[4..6], 4).all_logits()).unwrap();
    let mut f = session(&m, 8);
    let want = f
        .forward(&Batch::new(&toks[..6], 0).logits_for(&[4, 5]))
        .unwrap();
    assert!(got == want);
}
