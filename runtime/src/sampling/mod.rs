//! Token sampling: turns one row of logits (plus the tokens so far) into the
//! next token, with llama.cpp's samplers, defaults and chain order, seeded
//! and bit-reproducible.
//!
//! # The chain
//!
//! llama.cpp's default chain (`common_params_sampling::samplers` in
//! `common/common.h`, built by `common_sampler_init` in
//! `common/sampling.cpp`) is
//!
//! penalties → DRY → top-n-σ → top-k → typical → top-p → min-p → XTC →
//! temperature → dist.
//!
//! tern implements the stages that are on by default or that it exposes;
//! DRY, top-n-σ, typical and XTC are off in llama.cpp's defaults and absent
//! here, which leaves
//!
//! 1. **penalties** over the last `repeat_last_n` tokens of `history`:
//!    a repeated token's logit is divided by `repeat_penalty` when positive
//!    and multiplied by it otherwise, then loses
//!    `count·frequency_penalty + presence_penalty`;
//! 2. **top-k**: keep the `top_k` largest logits (`0` = off);
//! 3. **top-p**: softmax at temperature 1 over what is left, keep the
//!    smallest prefix (by descending probability) whose mass reaches
//!    `top_p` (`1.0` = off);
//! 4. **min-p**: keep tokens whose temperature-1 probability is at least
//!    `min_p` times the largest (`0.0` = off);
//! 5. **temperature**: divide the surviving logits by `temperature`;
//! 6. **dist**: softmax and one uniform draw against the running sum.
//!
//! As in llama.cpp, the truncations see temperature-1 probabilities:
//! temperature only reshapes the distribution over the survivors. And as in
//! llama.cpp (whose temperature stage keeps only the largest logit when
//! `temp <= 0`), a zero temperature is greedy: the argmax of the *penalised*
//! logits, ties going to the lowest token id. llama.cpp's `min_keep` is 0 by
//! default, which in its top-p and min-p code still keeps at least one token;
//! tern behaves the same and does not expose `min_keep`.
//!
//! # Reproducibility
//!
//! Same seed, same logits, same history → same token, on every platform.
//! Candidates are ordered by (logit descending, id ascending), a total order,
//! so unstable sorts cannot reorder them; the softmax uses the portable
//! exp of `math.rs` instead of libm; sums run in a fixed order in f64; and
//! the uniform comes from xoshiro256** bits by an exact mapping ([`Rng`]).
//! Every [`Sampler::sample`] call consumes exactly one uniform, greedy or
//! not, so the stream position is the number of tokens sampled.
//!
//! # Bad logits
//!
//! NaN and −∞ logits are never chosen. +∞ logits share all the mass equally.
//! When no logit is usable (all NaN or −∞, or penalties pushed every finite
//! logit to −∞), `sample` falls back to the lowest-id argmax of the *raw*
//! finite logits, or token 0 when there is none. Nothing here panics on any
//! input, including invalid [`SamplerParams`]; [`SamplerParams::validate`]
//! exists so callers can reject bad settings with a clear error instead.

mod math;
mod rng;

use std::cmp::Ordering;

pub use rng::{splitmix64, Rng};

use crate::{Error, Result};

/// The seed of [`SamplerParams::default`]: fixed, so that two default runs
/// give the same text.
///
/// llama.cpp's default seed (`LLAMA_DEFAULT_SEED`, 0xFFFFFFFF) means "draw a
/// random one"; tern instead makes reproducibility the default and leaves
/// randomness to callers who ask for it with [`SamplerParams::clock_seed`].
pub const DEFAULT_SEED: u64 = 0x7465_726e; // "tern" in ASCII

/// Sampling settings, with llama.cpp's names, meanings and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    /// Softmax temperature applied after the truncations; `0.0` is greedy.
    /// Must be finite and ≥ 0.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; `0` disables top-k.
    pub top_k: usize,
    /// Nucleus sampling: keep the smallest set of most likely tokens whose
    /// probability reaches `top_p`; `1.0` disables it. In [0, 1].
    pub top_p: f32,
    /// Drop tokens less likely than `min_p` × the most likely one; `0.0`
    /// disables it. In [0, 1].
    pub min_p: f32,
    /// Repetition penalty for tokens in the last `repeat_last_n` of the
    /// history (llama.cpp's `penalty_repeat`); `1.0` disables it. Must be
    /// finite and > 0.
    pub repeat_penalty: f32,
    /// How many of the most recent history tokens the three penalties look
    /// at; `0` disables all penalties.
    pub repeat_last_n: usize,
    /// Subtracted from a token's logit once per occurrence in the window
    /// (llama.cpp's `penalty_freq`); `0.0` disables it. Must be finite.
    pub frequency_penalty: f32,
    /// Subtracted once from the logit of any token present in the window
    /// (llama.cpp's `penalty_present`); `0.0` disables it. Must be finite.
    pub presence_penalty: f32,
    /// Seed of the sampler's random stream.
    pub seed: u64,
}

impl Default for SamplerParams {
    /// llama.cpp's defaults (`common_params_sampling`): temperature 0.8,
    /// top-k 40, top-p 0.95, min-p 0.05, penalties off with a 64-token
    /// window, and tern's fixed [`DEFAULT_SEED`].
    fn default() -> SamplerParams {
        SamplerParams {
            temperature: 0.8,
            top_k: 40,
            top_p: 0.95,
            min_p: 0.05,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: DEFAULT_SEED,
        }
    }
}

impl SamplerParams {
    /// Greedy decoding: always the most likely token, no penalties, no
    /// truncation (it would not change the argmax).
    pub fn greedy() -> SamplerParams {
        SamplerParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repeat_penalty: 1.0,
            repeat_last_n: 64,
            frequency_penalty: 0.0,
            presence_penalty: 0.0,
            seed: DEFAULT_SEED,
        }
    }

    /// A fresh, non-reproducible seed for callers who want llama.cpp's
    /// "random seed" behaviour: the wall clock in nanoseconds, the process
    /// id and a per-process counter, mixed by splitmix64 so that nearby
    /// clock readings give unrelated seeds. Not cryptographic.
    pub fn clock_seed() -> u64 {
        use std::sync::atomic::{AtomicU64, Ordering};
        use std::time::{SystemTime, UNIX_EPOCH};
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        let mut state = nanos
            ^ (u64::from(std::process::id()) << 32)
            ^ COUNTER
                .fetch_add(1, Ordering::Relaxed)
                .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        splitmix64(&mut state)
    }

    /// Check every setting against its domain; the error names the first
    /// bad one. [`Sampler`] never panics on bad settings, but their results
    /// are unspecified, so front ends should call this first.
    pub fn validate(&self) -> Result<()> {
        fn bad(name: &'static str, value: f32, reason: &'static str) -> Result<()> {
            Err(Error::BadSamplerParam {
                name,
                value: value.to_string(),
                reason,
            })
        }
        let t = self.temperature;
        if !t.is_finite() || t < 0.0 {
            return bad(
                "temperature",
                t,
                "must be a finite number >= 0 (0 = greedy)",
            );
        }
        if !(0.0..=1.0).contains(&self.top_p) {
            return bad("top_p", self.top_p, "must be in [0, 1] (1 = off)");
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return bad("min_p", self.min_p, "must be in [0, 1] (0 = off)");
        }
        let r = self.repeat_penalty;
        if !r.is_finite() || r <= 0.0 {
            return bad("repeat_penalty", r, "must be a finite number > 0 (1 = off)");
        }
        if !self.frequency_penalty.is_finite() {
            return bad(
                "frequency_penalty",
                self.frequency_penalty,
                "must be finite (0 = off)",
            );
        }
        if !self.presence_penalty.is_finite() {
            return bad(
                "presence_penalty",
                self.presence_penalty,
                "must be finite (0 = off)",
            );
        }
        Ok(())
    }

    /// Whether the penalty stage changes anything (llama.cpp's
    /// `llama_sampler_penalties::is_disabled`, negated).
    fn penalties_on(&self) -> bool {
        self.repeat_last_n > 0
            && (self.repeat_penalty != 1.0
                || self.frequency_penalty != 0.0
                || self.presence_penalty != 0.0)
    }
}

/// One token of a sampling distribution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Candidate {
    /// Token id.
    pub id: u32,
    /// Its logit after the penalties, before temperature.
    pub logit: f32,
    /// Its probability in the final distribution (after truncation and
    /// temperature); the probabilities of a list sum to 1.
    pub p: f64,
}

/// Total order for candidates: larger logit first, ties by smaller id.
/// Candidates never hold NaN (they are filtered out first), so the
/// `partial_cmp` fallback is unreachable; it is there to avoid a panic path.
fn by_logit_desc(a: &Candidate, b: &Candidate) -> Ordering {
    b.logit
        .partial_cmp(&a.logit)
        .unwrap_or(Ordering::Equal)
        .then(a.id.cmp(&b.id))
}

/// exp((logit − max)/t) in f64, the softmax weight relative to the largest
/// logit. When the largest logit is +∞ the limit is used instead: +∞
/// logits weigh 1 and every other logit 0 (the raw formula would give NaN).
fn weight(logit: f32, max: f32, t: f64) -> f64 {
    if max == f32::INFINITY {
        return if logit == f32::INFINITY { 1.0 } else { 0.0 };
    }
    math::exp((f64::from(logit) - f64::from(max)) / t)
}

/// How many candidates to sort first when top-p meets an unsorted list;
/// the nucleus is usually far smaller than this (llama.cpp uses the same
/// kind of adaptive partial sort, also starting at 256 above 1024).
const TOP_P_FIRST_SORT: usize = 256;

/// What the chain produced.
enum Prepared {
    /// `cands` holds the survivors with unnormalised weights in `p`, which
    /// sum (in list order) to this.
    Dist(f64),
    /// No usable logit: this token, deterministically.
    Fallback(u32),
}

/// A seeded sampler. Holds its random stream and reusable buffers, so after
/// the first call (or the first call at a larger vocabulary) sampling does
/// not allocate.
#[derive(Clone)]
pub struct Sampler {
    params: SamplerParams,
    rng: Rng,
    /// The candidate list the chain works on.
    cands: Vec<Candidate>,
    /// The penalty window, sorted to count repeats without a vocab-sized
    /// table.
    window: Vec<u32>,
    /// The logits with the penalties applied, when any is on.
    penalised: Vec<f32>,
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("params", &self.params)
            .field("rng", &self.rng)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    /// A sampler with these settings, its stream seeded from
    /// `params.seed`. Does not validate; see [`Sampler::try_new`].
    pub fn new(params: SamplerParams) -> Sampler {
        Sampler {
            rng: Rng::new(params.seed),
            params,
            cands: Vec::new(),
            window: Vec::new(),
            penalised: Vec::new(),
        }
    }

    /// [`Sampler::new`] after [`SamplerParams::validate`].
    pub fn try_new(params: SamplerParams) -> Result<Sampler> {
        params.validate()?;
        Ok(Sampler::new(params))
    }

    /// The settings this sampler was made with.
    pub fn params(&self) -> &SamplerParams {
        &self.params
    }

    /// Rewind the random stream to its seed: the sampler then repeats the
    /// tokens it gave since it was made (for the same inputs).
    pub fn reset(&mut self) {
        self.rng = Rng::new(self.params.seed);
    }

    /// Pick the next token from `logits` given the tokens so far.
    ///
    /// `history` is what the penalties look at: pass the prompt and the
    /// generated tokens, as llama.cpp feeds its penalties sampler; only the
    /// last `repeat_last_n` matter, and ids outside the vocabulary are
    /// ignored. Consumes exactly one uniform from the stream.
    pub fn sample(&mut self, logits: &[f32], history: &[u32]) -> u32 {
        // Draw first so that every call advances the stream by one, whatever
        // path it takes.
        let u = self.rng.next_f64();
        match self.prepare(logits, history) {
            Prepared::Fallback(id) => id,
            Prepared::Dist(sum) => {
                // llama.cpp's `dist` stage: walk the running sum until it
                // passes u·sum. The strict `>` (llama.cpp uses `>=`) makes a
                // zero-weight token unreachable even when u = 0, and since the
                // final running sum equals `sum` exactly (same additions in
                // the same order) and u < 1, the walk always stops.
                let target = u * sum;
                let mut run = 0.0;
                for c in &self.cands {
                    run += c.p;
                    if run > target {
                        return c.id;
                    }
                }
                // Unreachable by the argument above; the first candidate is
                // the largest logit, a safe answer.
                self.cands.first().map_or(0, |c| c.id)
            }
        }
    }

    /// The distribution [`Sampler::sample`] would draw from for these
    /// inputs, as the surviving candidates with normalised probabilities.
    /// Does not touch the random stream.
    ///
    /// The list is in the order the draw walks it: descending logit (ties by
    /// id) whenever a truncation sorted it, ascending id when none ran.
    /// Greedy settings give the one argmax with p = 1; unusable logits give
    /// the fallback token with p = 1; an empty `logits` gives an empty list.
    pub fn probs(&mut self, logits: &[f32], history: &[u32]) -> &[Candidate] {
        match self.prepare(logits, history) {
            Prepared::Fallback(id) => {
                self.cands.clear();
                if !logits.is_empty() {
                    self.cands.push(Candidate {
                        id,
                        logit: logits.get(id as usize).copied().unwrap_or(0.0),
                        p: 1.0,
                    });
                }
            }
            Prepared::Dist(sum) => {
                for c in &mut self.cands {
                    c.p /= sum;
                }
            }
        }
        &self.cands
    }

    /// Run the chain on `logits`, leaving the survivors in `self.cands`.
    ///
    /// The candidate list starts as the whole vocabulary only when a
    /// stage needs it: greedy decoding is one pass for the argmax, and
    /// top-k keeps its k best in one pass (a 73K-token vocabulary took
    /// ~200 µs greedy and ~730 µs with llama.cpp's defaults as a
    /// vocabulary-sized list on the CI machine; a GPU decode step of a
    /// small model is ~450 µs). Both give exactly what the list would: the
    /// same tokens, in the same order.
    fn prepare(&mut self, logits: &[f32], history: &[u32]) -> Prepared {
        let Sampler {
            params,
            cands,
            window,
            penalised,
            ..
        } = self;

        // 1. Penalties (llama.cpp `llama_sampler_penalties_apply`), on a
        // copy of the logits: only the window's tokens change.
        let pen: &[f32] = if params.penalties_on() {
            let start = history.len().saturating_sub(params.repeat_last_n);
            window.clear();
            window.extend_from_slice(&history[start..]);
            window.sort_unstable();
            penalised.clear();
            penalised.extend_from_slice(logits);
            for run in window.chunk_by(|a, b| a == b) {
                let Some(l) = penalised.get_mut(run[0] as usize) else {
                    continue; // not in this vocabulary
                };
                // Dividing a negative logit would make the token *more*
                // likely, hence llama.cpp's multiply-when-non-positive.
                if *l <= 0.0 {
                    *l *= params.repeat_penalty;
                } else {
                    *l /= params.repeat_penalty;
                }
                let count = run.len() as f32;
                *l -= count * params.frequency_penalty + params.presence_penalty;
            }
            penalised
        } else {
            logits
        };

        // NaN and −∞ can never be drawn (every test below is false for
        // them), which keeps every later comparison total and every softmax
        // finite. With none left, the fallback token.
        //
        // Greedy: llama.cpp's temperature stage with temp <= 0 keeps only the
        // largest logit, and the truncations before it always keep that one,
        // so the result is the argmax after penalties, the lowest id among
        // equal logits. An (invalid) NaN temperature is treated as greedy too.
        let t = params.temperature;
        if t.is_nan() || t <= 0.0 {
            cands.clear();
            return match argmax(pen) {
                Some(id) => {
                    cands.push(Candidate {
                        id,
                        logit: pen[id as usize],
                        p: 1.0,
                    });
                    Prepared::Dist(1.0)
                }
                None => Prepared::Fallback(fallback(logits)),
            };
        }

        // 2. Top-k (llama.cpp `llama_sampler_top_k_impl`): the k best in
        // one pass, then sorted. When k keeps every drawable token the list
        // stays whole and unsorted, as the stage does not run.
        let mut sorted = false;
        let k = params.top_k;
        // (A k at or past the vocabulary cuts nothing; the guard also keeps
        // a huge k from sizing the buffer, 2k.)
        if k > 0 && k < pen.len() && top_k(pen, k, cands) {
            cands.sort_unstable_by(by_logit_desc);
            sorted = true;
        } else {
            cands.clear();
            cands.extend(
                pen.iter()
                    .enumerate()
                    .filter(|(_, &logit)| logit > f32::NEG_INFINITY)
                    .map(|(i, &logit)| Candidate {
                        id: i as u32,
                        logit,
                        p: 0.0,
                    }),
            );
            if cands.is_empty() {
                return Prepared::Fallback(fallback(logits));
            }
        }

        // 3. Top-p (llama.cpp `llama_sampler_top_p_apply`): temperature-1
        // softmax, keep the shortest descending prefix whose mass reaches p.
        let top_p = params.top_p;
        if top_p < 1.0 && cands.len() > 1 {
            let max = max_logit(cands, sorted);
            let mut sum = 0.0;
            for c in cands.iter_mut() {
                c.p = weight(c.logit, max, 1.0);
                sum += c.p;
            }
            // Min-p keeps a descending prefix relative to the same largest
            // probability that top-p keeps, so the two cuts commute and the
            // result is the shorter prefix. Moving min-p's survivors to the
            // front now (in order) means only they are sorted; the sum above
            // still covers every candidate, as top-p's mass must.
            let n = if params.min_p > 0.0 {
                let min_p = f64::from(params.min_p);
                let mut front = 0;
                for i in 0..cands.len() {
                    if passes_min_p(&cands[i], max, min_p) {
                        cands.swap(i, front);
                        front += 1;
                    }
                }
                front
            } else {
                cands.len()
            };
            // Sort lazily: the nucleus is usually a few hundred tokens out of
            // a 100K vocabulary, so order the head first and the tail only if
            // the walk gets there.
            let mut sorted_upto = n;
            if !sorted {
                let head = if n > 1024 { TOP_P_FIRST_SORT } else { n };
                sort_head(&mut cands[..n], head);
                sorted_upto = head;
            }
            let target = f64::from(top_p) * sum;
            let mut run = 0.0;
            let mut keep = n;
            for i in 0..n {
                if i == sorted_upto {
                    cands[i..n].sort_unstable_by(by_logit_desc);
                    sorted_upto = n;
                }
                run += cands[i].p;
                if run >= target {
                    keep = i + 1;
                    break;
                }
            }
            // Either the walk stopped inside the sorted part, or it sorted
            // everything on the way: the kept prefix is in order.
            cands.truncate(keep);
            sorted = true;
        }

        // 4. Min-p (llama.cpp `llama_sampler_min_p_apply`): keep
        // p_i ≥ min_p · p_max, i.e. exp(l_i − l_max) ≥ min_p. Compared in
        // weight space with the portable exp rather than llama.cpp's
        // `logit >= max + logf(p)`, to keep libm out of the decision.
        let min_p = params.min_p;
        if min_p > 0.0 && cands.len() > 1 {
            let max = max_logit(cands, sorted);
            let min_p = f64::from(min_p);
            cands.retain(|c| passes_min_p(c, max, min_p));
        }

        // 5 and 6. Temperature and the softmax weights for `dist`; the draw
        // itself is in `sample`. Computing exp((l − max)/t) rather than
        // dividing the logits first keeps a tiny t from overflowing them.
        let max = max_logit(cands, sorted);
        let t = f64::from(t);
        let mut sum = 0.0;
        for c in cands.iter_mut() {
            c.p = weight(c.logit, max, t);
            sum += c.p;
        }
        Prepared::Dist(sum)
    }
}

/// Min-p's test: p_i ≥ min_p · p_max, i.e. exp(l_i − l_max) ≥ min_p. The
/// largest logit always passes (llama.cpp: "first token always matches"),
/// even for an invalid min_p above 1.
fn passes_min_p(c: &Candidate, max: f32, min_p: f64) -> bool {
    c.logit == max || weight(c.logit, max, 1.0) >= min_p
}

/// The largest logit of a non-empty, NaN-free list (the first when sorted).
fn max_logit(cands: &[Candidate], sorted: bool) -> f32 {
    if sorted {
        return cands.first().map_or(f32::NEG_INFINITY, |c| c.logit);
    }
    cands.iter().fold(
        f32::NEG_INFINITY,
        |m, c| if c.logit > m { c.logit } else { m },
    )
}

/// Put the `head` best candidates, in order, at the front.
fn sort_head(cands: &mut [Candidate], head: usize) {
    if head < cands.len() {
        cands.select_nth_unstable_by(head - 1, by_logit_desc);
    }
    cands[..head].sort_unstable_by(by_logit_desc);
}

/// The lowest id among the largest drawable logits (not NaN, above −∞), or
/// None. One pass of eight running lanes, each keeping its maximum and the
/// first index it was seen at (they vectorize), then the lanes meet: −0
/// and +0 are equal, as in [`by_logit_desc`], so ties go to the lower id.
fn argmax(logits: &[f32]) -> Option<u32> {
    let mut lv = [f32::NEG_INFINITY; 8];
    let mut li = [0u32; 8];
    let mut chunks = logits.chunks_exact(8);
    for (ci, c) in (&mut chunks).enumerate() {
        let base = (ci * 8) as u32;
        for j in 0..8 {
            let v = c[j];
            let better = v > lv[j];
            lv[j] = if better { v } else { lv[j] };
            li[j] = if better { base + j as u32 } else { li[j] };
        }
    }
    let tail = logits.len() - chunks.remainder().len();
    let lanes = lv.iter().copied().zip(li);
    let rest = chunks
        .remainder()
        .iter()
        .enumerate()
        .map(|(j, &v)| (v, (tail + j) as u32));
    let mut best: Option<(f32, u32)> = None;
    for (v, i) in lanes.chain(rest) {
        if v > f32::NEG_INFINITY && best.is_none_or(|(bv, bi)| v > bv || (v == bv && i < bi)) {
            best = Some((v, i));
        }
    }
    best.map(|(_, i)| i)
}

/// Top-k's survivors: the `k` best drawable candidates of `logits` under
/// [`by_logit_desc`] into `out` (unordered), in one pass. Candidates that
/// beat the worst of the best k found so far (`bar`) gather in `out`; when
/// it holds 2k they are cut back to their best k, which raises the bar.
/// Each cut costs O(k) and follows k new arrivals, so the pass is O(n)
/// whatever the order of the logits (rising logits, the worst case, cut
/// every k tokens), and on a model's logits few tokens ever clear the bar.
/// False, with `out` in any state, when at most `k` are drawable: the
/// stage then keeps them all. `out`'s capacity is reused, so after the
/// first call nothing is allocated.
fn top_k(logits: &[f32], k: usize, out: &mut Vec<Candidate>) -> bool {
    out.clear();
    let cut = |out: &mut Vec<Candidate>| -> f32 {
        out.select_nth_unstable_by(k - 1, by_logit_desc);
        out.truncate(k);
        // The k-th best: ids come in ascending order, so a later token ranks
        // before it only with a strictly larger logit.
        out[k - 1].logit
    };
    let mut bar = f32::NEG_INFINITY;
    let mut drawable = 0usize;
    let push = |i: usize, logit: f32, out: &mut Vec<Candidate>, bar: &mut f32| {
        // NaN and −∞ never clear it: until the first cut the bar is −∞,
        // and after it the k-th best, a drawable logit.
        if logit > *bar {
            out.push(Candidate {
                id: i as u32,
                logit,
                p: 0.0,
            });
            if out.len() == 2 * k {
                *bar = cut(out);
            }
        }
    };
    // Eight at a time: count the drawable ones, and look at them one by one
    // only when one of them clears the bar (the eight tests vectorize).
    let mut chunks = logits.chunks_exact(8);
    for (ci, c) in (&mut chunks).enumerate() {
        drawable += c.iter().filter(|&&v| v > f32::NEG_INFINITY).count();
        if !c.iter().fold(false, |any, &v| any | (v > bar)) {
            continue;
        }
        for (j, &v) in c.iter().enumerate() {
            push(ci * 8 + j, v, out, &mut bar);
        }
    }
    let tail = logits.len() - chunks.remainder().len();
    for (j, &v) in chunks.remainder().iter().enumerate() {
        drawable += usize::from(v > f32::NEG_INFINITY);
        push(tail + j, v, out, &mut bar);
    }
    if drawable <= k {
        return false;
    }
    if out.len() > k {
        cut(out);
    }
    true
}

/// The token for logits with nothing drawable: the lowest-id argmax of the
/// finite raw logits, or 0 when none is finite.
fn fallback(logits: &[f32]) -> u32 {
    let mut best: Option<(usize, f32)> = None;
    for (i, &l) in logits.iter().enumerate() {
        if l.is_finite() && best.is_none_or(|(_, b)| l > b) {
            best = Some((i, l));
        }
    }
    best.map_or(0, |(i, _)| i as u32)
}

/// The distribution a fresh [`Sampler`] with `params` would draw from: a
/// pure function for tests and for speculative decoding's verifier, which
/// needs p(x) after exactly the same transforms. Allocates; in a loop, keep
/// a `Sampler` and call [`Sampler::probs`] instead.
pub fn sample_probs(logits: &[f32], history: &[u32], params: &SamplerParams) -> Vec<Candidate> {
    Sampler::new(params.clone()).probs(logits, history).to_vec()
}
