//! The sampler's distributions: each stage of the chain on hand-made
//! logits, the whole chain against a plain full-sort reference, and
//! empirical frequencies of seeded draws against the exact distribution.

use tern_runtime::sampling::{sample_probs, Candidate, Rng, Sampler, SamplerParams};

/// Settings with every stage off and temperature 1: the raw softmax.
fn plain() -> SamplerParams {
    SamplerParams {
        temperature: 1.0,
        top_k: 0,
        top_p: 1.0,
        min_p: 0.0,
        repeat_penalty: 1.0,
        repeat_last_n: 64,
        frequency_penalty: 0.0,
        presence_penalty: 0.0,
        seed: 9,
    }
}

fn logits(n: usize, seed: u64, spread: f64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n)
        .map(|_| ((rng.next_f64() * 2.0 - 1.0) * spread) as f32)
        .collect()
}

/// Logits whose softmax is exactly `probs` (up to rounding).
fn from_probs(probs: &[f64]) -> Vec<f32> {
    probs.iter().map(|p| p.ln() as f32).collect()
}

fn argmax(row: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in row.iter().enumerate() {
        if l > row[best] {
            best = i;
        }
    }
    best as u32
}

fn ids(c: &[Candidate]) -> Vec<u32> {
    let mut v: Vec<u32> = c.iter().map(|c| c.id).collect();
    v.sort_unstable();
    v
}

fn prob_of(c: &[Candidate], id: u32) -> f64 {
    c.iter().find(|c| c.id == id).map_or(0.0, |c| c.p)
}

/// The chain written the obvious way: full sort, std `exp`, explicit
/// normalisation at every stage. An independent check on the optimised one.
fn reference(row: &[f32], history: &[u32], p: &SamplerParams) -> Vec<(u32, f64)> {
    let mut l: Vec<f32> = row.to_vec();
    let on = p.repeat_last_n > 0
        && (p.repeat_penalty != 1.0 || p.frequency_penalty != 0.0 || p.presence_penalty != 0.0);
    if on {
        let window = &history[history.len().saturating_sub(p.repeat_last_n)..];
        for (id, x) in l.iter_mut().enumerate() {
            let count = window.iter().filter(|&&t| t as usize == id).count();
            if count > 0 {
                *x = if *x <= 0.0 {
                    *x * p.repeat_penalty
                } else {
                    *x / p.repeat_penalty
                };
                *x -= count as f32 * p.frequency_penalty + p.presence_penalty;
            }
        }
    }
    let mut c: Vec<(u32, f32)> = l
        .iter()
        .enumerate()
        // Drawable: not NaN, above −∞ (+∞ is drawable and outweighs the rest).
        .filter(|(_, x)| **x > f32::NEG_INFINITY)
        .map(|(i, &x)| (i as u32, x))
        .collect();
    c.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
    if p.temperature <= 0.0 {
        return vec![(c[0].0, 1.0)];
    }
    if p.top_k > 0 {
        c.truncate(p.top_k);
    }
    let softmax = |c: &[(u32, f32)], t: f64| -> Vec<f64> {
        let m = c[0].1 as f64;
        let w: Vec<f64> = c
            .iter()
            .map(|x| match m == f64::INFINITY {
                true => f64::from(u8::from(x.1 == f32::INFINITY)),
                false => ((x.1 as f64 - m) / t).exp(),
            })
            .collect();
        let s: f64 = w.iter().sum();
        w.iter().map(|x| x / s).collect()
    };
    if p.top_p < 1.0 {
        let probs = softmax(&c, 1.0);
        let mut run = 0.0;
        let mut keep = c.len();
        for (i, q) in probs.iter().enumerate() {
            run += q;
            if run >= p.top_p as f64 {
                keep = i + 1;
                break;
            }
        }
        c.truncate(keep);
    }
    if p.min_p > 0.0 {
        let probs = softmax(&c, 1.0);
        let keep = probs
            .iter()
            .filter(|&&q| q >= p.min_p as f64 * probs[0])
            .count();
        c.truncate(keep);
    }
    let probs = softmax(&c, p.temperature as f64);
    c.iter().zip(probs).map(|(x, q)| (x.0, q)).collect()
}

#[test]
fn greedy_picks_the_argmax_and_ties_go_to_the_lowest_id() {
    let mut s = Sampler::new(SamplerParams::greedy());
    for seed in 0..20 {
        let row = logits(5000, seed, 5.0);
        assert_eq!(s.sample(&row, &[]), argmax(&row));
    }
    let row = [0.5, 3.0, -1.0, 3.0, 3.0];
    assert_eq!(s.sample(&row, &[]), 1);
    let p = s.probs(&row, &[]);
    assert_eq!(
        p,
        [Candidate {
            id: 1,
            logit: 3.0,
            p: 1.0
        }]
    );
    // -0.0 and 0.0 are a tie, too.
    assert_eq!(s.sample(&[-1.0, -0.0, 0.0], &[]), 1);
}

#[test]
fn greedy_sees_the_penalised_logits() {
    // llama.cpp applies the penalties before its temperature stage, so
    // greedy decoding with a repetition penalty avoids the repeated token.
    let row = [1.0, 2.0, 1.5];
    let params = SamplerParams {
        repeat_penalty: 2.0,
        ..SamplerParams::greedy()
    };
    let mut s = Sampler::new(params);
    assert_eq!(s.sample(&row, &[]), 1);
    assert_eq!(s.sample(&row, &[1]), 2);
}

#[test]
fn temperature_to_zero_is_greedy() {
    for seed in 0..20 {
        let mut row = logits(2000, seed, 3.0);
        // Open a gap at the top so that T = 1e-4 is effectively zero:
        // exp(-0.01 / 1e-4) = exp(-100).
        let best = argmax(&row);
        row[best as usize] += 0.01;
        let params = SamplerParams {
            temperature: 1e-4,
            ..plain()
        };
        let probs = sample_probs(&row, &[], &params);
        assert!(prob_of(&probs, best) > 1.0 - 1e-9);
        let mut s = Sampler::new(params);
        for _ in 0..20 {
            assert_eq!(s.sample(&row, &[]), best);
        }
        // A temperature so small that (l - max)/t overflows must still work.
        let tiny = SamplerParams {
            temperature: 1e-38,
            ..plain()
        };
        assert_eq!(Sampler::new(tiny).sample(&row, &[]), best);
    }
}

#[test]
fn top_k_1_is_greedy() {
    for seed in 0..20 {
        let row = logits(3000, seed, 4.0);
        let mut s = Sampler::new(SamplerParams {
            top_k: 1,
            seed,
            temperature: 5.0,
            ..plain()
        });
        for _ in 0..10 {
            assert_eq!(s.sample(&row, &[]), argmax(&row));
        }
    }
}

#[test]
fn top_k_keeps_exactly_the_k_largest() {
    let row = logits(10_000, 4, 6.0);
    let mut order: Vec<u32> = (0..row.len() as u32).collect();
    order.sort_by(|&a, &b| row[b as usize].total_cmp(&row[a as usize]));
    for k in [2, 40, 500] {
        let probs = sample_probs(
            &row,
            &[],
            &SamplerParams {
                top_k: k,
                ..plain()
            },
        );
        let mut want = order[..k].to_vec();
        want.sort_unstable();
        assert_eq!(ids(&probs), want);
        // Sorted for the draw, descending.
        assert!(probs.windows(2).all(|w| w[0].logit >= w[1].logit));
    }
    // k at or above the vocabulary is no truncation at all.
    let probs = sample_probs(
        &row[..30],
        &[],
        &SamplerParams {
            top_k: 30,
            ..plain()
        },
    );
    assert_eq!(probs.len(), 30);
}

#[test]
fn top_p_keeps_the_smallest_prefix_reaching_p() {
    let probs = [0.1, 0.5, 0.05, 0.3, 0.05];
    let row = from_probs(&probs);
    for (top_p, want) in [
        (0.0, vec![1]),
        (0.4, vec![1]),
        (0.75, vec![1, 3]),
        (0.85, vec![0, 1, 3]),
        (0.92, vec![0, 1, 2, 3]), // 0.05s tie: the lower id goes first
        (0.99, vec![0, 1, 2, 3, 4]),
    ] {
        let got = sample_probs(&row, &[], &SamplerParams { top_p, ..plain() });
        assert_eq!(ids(&got), want, "top_p {top_p}");
        // Renormalised over the survivors.
        let kept: f64 = want.iter().map(|&i| probs[i as usize]).sum();
        for c in &got {
            assert!((c.p - probs[c.id as usize] / kept).abs() < 1e-6);
        }
    }
}

#[test]
fn top_p_on_a_large_unsorted_vocab_matches_a_full_sort() {
    // Above 1024 candidates top-p sorts only a head of 256 first; flat
    // logits push the nucleus far past it, a peaked row keeps it inside.
    // With min-p on, top-p sorts only min-p's survivors (the cuts commute).
    for (spread, top_p) in [(0.5, 0.9), (0.5, 0.3), (12.0, 0.95), (3.0, 0.5)] {
        for min_p in [0.0, 0.05, 0.3, 0.9] {
            let row = logits(50_000, 11, spread);
            let params = SamplerParams {
                top_p,
                min_p,
                ..plain()
            };
            let got = sample_probs(&row, &[], &params);
            let want = reference(&row, &[], &params);
            assert_eq!(got.len(), want.len(), "{params:?} spread {spread}");
            for (g, w) in got.iter().zip(&want) {
                assert_eq!(g.id, w.0);
                assert!((g.p - w.1).abs() < 1e-12);
            }
        }
    }
}

#[test]
fn min_p_is_relative_to_the_largest_probability() {
    let probs = [0.05, 0.4, 0.2, 0.13, 0.11, 0.11];
    let row = from_probs(&probs);
    for (min_p, want) in [
        (0.3, vec![1, 2, 3]),          // p >= 0.12
        (0.6, vec![1]),                // p >= 0.24
        (0.2, vec![1, 2, 3, 4, 5]),    // p >= 0.08
        (0.1, vec![0, 1, 2, 3, 4, 5]), // p >= 0.04
        (1.0, vec![1]),
    ] {
        let got = sample_probs(&row, &[], &SamplerParams { min_p, ..plain() });
        assert_eq!(ids(&got), want, "min_p {min_p}");
    }
}

#[test]
fn temperature_comes_after_the_truncations() {
    // A hot temperature flattens the distribution, but top-p and min-p still
    // cut on the temperature-1 probabilities, as in llama.cpp's chain.
    let probs = [0.6, 0.25, 0.1, 0.05];
    let row = from_probs(&probs);
    let cold = sample_probs(
        &row,
        &[],
        &SamplerParams {
            top_p: 0.8,
            ..plain()
        },
    );
    let hot = sample_probs(
        &row,
        &[],
        &SamplerParams {
            top_p: 0.8,
            temperature: 3.0,
            ..plain()
        },
    );
    assert_eq!(ids(&cold), vec![0, 1]);
    assert_eq!(ids(&hot), vec![0, 1]);
    // Over the survivors, p ∝ exp(l / T).
    let ratio = prob_of(&hot, 0) / prob_of(&hot, 1);
    assert!((ratio - (0.6f64 / 0.25).powf(1.0 / 3.0)).abs() < 1e-5);
}

#[test]
fn penalties_change_exactly_the_intended_logits() {
    let row = [2.0f32, -1.0, 0.5, 3.0, -2.0, 1.0];
    let params = SamplerParams {
        repeat_penalty: 2.0,
        frequency_penalty: 0.25,
        presence_penalty: 0.5,
        repeat_last_n: 5,
        ..plain()
    };
    // Token 3 falls outside the window of 5; 99 is outside the vocabulary.
    let history = [3, 0, 1, 0, 99, 0];
    let got = sample_probs(&row, &history, &params);
    let logit = |id| got.iter().find(|c| c.id == id).unwrap().logit;
    assert_eq!(logit(0), 2.0 / 2.0 - 3.0 * 0.25 - 0.5); // positive: divided
    assert_eq!(logit(1), row[1] * 2.0 - 0.25 - 0.5); // negative: multiplied
    for id in [2, 3, 4, 5] {
        assert_eq!(logit(id), row[id as usize], "token {id} not in window");
    }

    // repeat_last_n = 0 switches every penalty off.
    let off = sample_probs(
        &row,
        &history,
        &SamplerParams {
            repeat_last_n: 0,
            ..params.clone()
        },
    );
    for c in &off {
        assert_eq!(c.logit, row[c.id as usize]);
    }
    // A zero logit counts as non-positive: multiplied, i.e. stays 0.
    let z = sample_probs(&[0.0, 1.0], &[0], &params);
    assert_eq!(z.iter().find(|c| c.id == 0).unwrap().logit, -0.75);
}

#[test]
fn the_chain_matches_the_reference_on_random_rows() {
    let mut rng = Rng::new(77);
    for case in 0..200 {
        let n = 50 + (rng.next_u64() % 3000) as usize;
        let row = logits(n, case, 1.0 + rng.next_f64() * 8.0);
        let history: Vec<u32> = (0..(rng.next_u64() % 100))
            .map(|_| (rng.next_u64() % n as u64) as u32)
            .collect();
        let params = SamplerParams {
            temperature: [0.0, 0.3, 0.8, 1.0, 2.0][case as usize % 5],
            top_k: [0, 1, 5, 40, 1000][(case / 5) as usize % 5],
            top_p: [1.0, 0.95, 0.5, 0.0][(case / 3) as usize % 4],
            min_p: [0.0, 0.05, 0.5][(case / 7) as usize % 3],
            repeat_penalty: [1.0, 1.1, 1.5][(case / 2) as usize % 3],
            repeat_last_n: [0, 64, 8][(case / 11) as usize % 3],
            frequency_penalty: [0.0, 0.2][case as usize % 2],
            presence_penalty: [0.0, 0.3][(case / 13) as usize % 2],
            seed: case,
        };
        let got = sample_probs(&row, &history, &params);
        let want = reference(&row, &history, &params);
        let mut got_ids = ids(&got);
        let mut want_ids: Vec<u32> = want.iter().map(|w| w.0).collect();
        want_ids.sort_unstable();
        got_ids.dedup();
        assert_eq!(got_ids, want_ids, "case {case}: {params:?}");
        for (id, p) in want {
            assert!(
                (prob_of(&got, id) - p).abs() < 1e-9,
                "case {case} token {id}"
            );
        }
        let total: f64 = got.iter().map(|c| c.p).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
}

/// Greedy decoding and top-k take one pass over the logits instead of a
/// vocabulary-sized list (eight lanes at a time, with a remainder): on rows
/// full of ties (−0 and +0 among them), NaN, −∞ and +∞, of lengths around
/// multiples of eight, with k around the number of drawable tokens, they
/// keep exactly the reference's tokens with its probabilities, in the order
/// the draw walks (sorted once top-k cut or top-p ran, else by id). Also
/// the fallback when the penalties leave nothing drawable, and a huge k.
#[test]
fn one_pass_greedy_and_top_k_match_the_reference_on_ties_and_non_finite_rows() {
    let mut rng = Rng::new(4099);
    let levels = [-2.0f32, -1.0, -0.0, 0.0, 0.5, 1.0, 2.0];
    for n in [1usize, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000] {
        for case in 0..40u64 {
            let row: Vec<f32> = (0..n)
                .map(|_| match rng.next_u64() % (16 + 48 * (case % 2)) {
                    0 => f32::NAN,
                    1 => f32::NEG_INFINITY,
                    2 => f32::INFINITY,
                    r => levels[r as usize % levels.len()],
                })
                .collect();
            let drawable = row.iter().filter(|&&x| x > f32::NEG_INFINITY).count();
            if drawable == 0 {
                continue; // nothing drawable: the fallback, below
            }
            let history: Vec<u32> = (0..rng.next_u64() % 12)
                .map(|_| (rng.next_u64() % n as u64) as u32)
                .collect();
            let d = drawable;
            let k =
                [1, 2, 3, 40, d - 1, d, d + 1, n.saturating_sub(1), n, n + 5][case as usize % 10];
            let params = SamplerParams {
                temperature: [0.0, 0.7][(case / 7) as usize % 2],
                top_k: k,
                top_p: [1.0, 0.9][(case / 14) as usize % 2],
                repeat_penalty: [1.0, 1.3][(case / 3) as usize % 2],
                ..plain()
            };
            let got = sample_probs(&row, &history, &params);
            let want = reference(&row, &history, &params);
            let what = format!("n {n}, case {case}: {params:?}");
            if params.temperature > 0.0 {
                // The draw walks the list in order, so the order is part of
                // the result: descending logit (ties by id, the reference's
                // order) once top-k cut or top-p ran, else ascending id.
                let cut = params.top_k > 0 && params.top_k < drawable;
                let left = if cut { params.top_k } else { drawable };
                let sorted = cut || (params.top_p < 1.0 && left > 1);
                let mut order: Vec<u32> = want.iter().map(|w| w.0).collect();
                if !sorted {
                    order.sort_unstable();
                }
                assert_eq!(
                    got.iter().map(|c| c.id).collect::<Vec<_>>(),
                    order,
                    "{what}"
                );
            }
            let got_ids = ids(&got);
            let mut want_ids: Vec<u32> = want.iter().map(|w| w.0).collect();
            want_ids.sort_unstable();
            assert_eq!(got_ids, want_ids, "{what}");
            for (id, p) in want {
                assert!((prob_of(&got, id) - p).abs() < 1e-9, "{what}, token {id}");
            }
        }
    }
    // Penalties that leave nothing drawable (negative logits times a huge
    // penalty are −∞): the fallback is the raw logits' argmax, greedy or not.
    for temperature in [0.0, 0.7] {
        let p = SamplerParams {
            temperature,
            top_k: 2,
            repeat_penalty: f32::MAX,
            ..plain()
        };
        let got = sample_probs(&[-3.0, -2.0, -4.0], &[0, 1, 2], &p);
        assert_eq!(ids(&got), vec![1], "temperature {temperature}");
    }
    // A top-k far past the vocabulary cuts nothing (and sizes nothing).
    let row = logits(100, 5, 3.0);
    let huge = SamplerParams {
        top_k: 1 << 40,
        ..plain()
    };
    assert_eq!(
        sample_probs(&row, &[], &huge),
        sample_probs(&row, &[], &plain())
    );
}

/// Draw `n` tokens and compare the counts with `probs` by Pearson's
/// chi-square; also bound every frequency's absolute error.
fn check_frequencies(row: &[f32], history: &[u32], params: SamplerParams, n: usize) {
    let probs = sample_probs(row, history, &params);
    let mut s = Sampler::new(params);
    let mut counts = vec![0usize; row.len()];
    for _ in 0..n {
        counts[s.sample(row, history) as usize] += 1;
    }
    let mut chi2 = 0.0;
    for c in &probs {
        let expected = c.p * n as f64;
        let d = counts[c.id as usize] as f64 - expected;
        chi2 += d * d / expected;
        let freq = counts[c.id as usize] as f64 / n as f64;
        assert!(
            (freq - c.p).abs() < 0.01,
            "token {}: {freq} vs {}",
            c.id,
            c.p
        );
    }
    // Nothing outside the support is ever drawn.
    let drawn: usize = probs.iter().map(|c| counts[c.id as usize]).sum();
    assert_eq!(drawn, n);
    // The 99.9% quantile of chi-square with df degrees of freedom is below
    // df + 3.1·sqrt(2·df) + 10 for the small df used here (e.g. 18.5 at 4).
    let df = (probs.len() - 1) as f64;
    assert!(
        chi2 < df + 3.1 * (2.0 * df).sqrt() + 10.0,
        "chi2 {chi2} with {df} dof"
    );
}

#[test]
fn draws_follow_the_truncated_softmax() {
    let row = from_probs(&[0.02, 0.3, 0.2, 0.15, 0.12, 0.1, 0.06, 0.05]);
    // llama.cpp's defaults (min-p 0.05 at T=1 cuts the 0.02 tail, T=0.8).
    check_frequencies(&row, &[], SamplerParams::default(), 40_000);
    // Top-k and a hot temperature.
    check_frequencies(
        &row,
        &[],
        SamplerParams {
            top_k: 5,
            temperature: 1.7,
            ..plain()
        },
        40_000,
    );
    // Penalties and top-p.
    check_frequencies(
        &row,
        &[1, 1, 2],
        SamplerParams {
            top_p: 0.9,
            repeat_penalty: 1.3,
            frequency_penalty: 0.1,
            ..plain()
        },
        40_000,
    );
}

#[test]
fn draws_cover_a_wide_flat_distribution() {
    // Many near-equal candidates exercise the running-sum walk end to end.
    let row = logits(40, 5, 0.2);
    check_frequencies(&row, &[], plain(), 50_000);
}

#[test]
fn sampled_tokens_are_always_in_the_support() {
    let mut s = Sampler::new(SamplerParams::default());
    for seed in 0..100 {
        let row = logits(32_000, seed, 6.0);
        let support = ids(s.clone().probs(&row, &[]));
        let t = s.sample(&row, &[]);
        assert!(support.binary_search(&t).is_ok());
    }
}
