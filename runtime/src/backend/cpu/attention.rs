//! Dense attention over the KV cache on the CPU, and writes into the cache.
//!
//! Softmax(q·kᵀ · scale) · v per query head, with grouped-query attention:
//! query head h reads KV head `h / (n_head / n_head_kv)`. The work items are
//! (token, head) pairs, split over the backend's thread pool; each is
//! computed the same way whatever the batch, so a batch of n tokens gives the
//! same bits as n one-token calls.
//!
//! On the fast path with AVX-512 (`x86` below) K is transposed per task so
//! one FMA chain over the head dimension gives 16 keys' scores, the
//! exponentials are a vector polynomial and V is accumulated 16 lanes at a
//! time; each (token, head) is still computed by the same instructions in
//! any batch. PERF: scalar-width attention was ~40% of MiniCPM4-0.5B's
//! pp512 after the matmul kernels were vectorized. The exact path keeps
//! the scalar code.

use half::f16;

use std::cell::RefCell;

use super::parallel::{dot_f32, Pool, SyncPtr};
use super::{shape_err, CpuKvCache, CpuTensor, KvStore};
use crate::backend::{AttnParams, Visibility};
use crate::error::{Error, Result};

impl KvStore {
    fn write_row(&mut self, slot: usize, width: usize, src: &[f32]) {
        match self {
            KvStore::F32(v) => v[slot * width..(slot + 1) * width].copy_from_slice(src),
            KvStore::F16(v) => {
                for (d, &s) in v[slot * width..(slot + 1) * width].iter_mut().zip(src) {
                    *d = f16::from_f32(s);
                }
            }
        }
    }

    /// Copy `len` values starting at element `at` into `dst` as f32.
    #[inline]
    fn read_into(&self, at: usize, dst: &mut [f32]) {
        match self {
            KvStore::F32(v) => dst.copy_from_slice(&v[at..at + dst.len()]),
            KvStore::F16(v) => {
                let n = dst.len();
                // half's slice conversion uses F16C / NEON when present;
                // exact either way.
                half::slice::HalfFloatSliceExt::convert_to_f32_slice(&v[at..at + n], dst);
            }
        }
    }
}

pub(super) fn kv_write(
    kv: &mut CpuKvCache,
    layer: usize,
    first_slot: usize,
    k: &CpuTensor,
    v: &CpuTensor,
) -> Result<()> {
    let spec = kv.spec;
    let width = spec.n_head_kv * spec.head_dim;
    if layer >= spec.n_layer
        || k.cols != width
        || (v.rows, v.cols) != (k.rows, k.cols)
        || first_slot + k.rows > spec.n_ctx
    {
        return Err(shape_err(
            "kv_write",
            format!("{} rows at slot {first_slot} of layer {layer}", k.rows),
        ));
    }
    let (ks, vs) = &mut kv.layers[layer];
    for t in 0..k.rows {
        ks.write_row(first_slot + t, width, k.row(t));
        vs.write_row(first_slot + t, width, v.row(t));
    }
    Ok(())
}

thread_local! {
    /// Per-thread scores and row buffers, grown to the longest context seen.
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

#[allow(clippy::too_many_arguments)]
pub(super) fn attention(
    pool: &Pool,
    fast: bool,
    q: &CpuTensor,
    kv: &CpuKvCache,
    layer: usize,
    first_slot: usize,
    p: &AttnParams,
    out: &mut CpuTensor,
) -> Result<()> {
    let spec = kv.spec;
    let hd = p.head_dim;
    if p.n_head_kv == 0
        || !p.n_head.is_multiple_of(p.n_head_kv)
        || p.n_head_kv != spec.n_head_kv
        || hd != spec.head_dim
        || q.cols != p.n_head * hd
        || (out.rows, out.cols) != (q.rows, q.cols)
        || layer >= spec.n_layer
        || first_slot + q.rows > spec.n_ctx
    {
        return Err(shape_err(
            "attention",
            format!(
                "q [{}, {}] with {}/{} heads of {hd} at slot {first_slot}",
                q.rows, q.cols, p.n_head, p.n_head_kv
            ),
        ));
    }
    match p.visibility {
        Visibility::Causal => {}
        #[allow(unreachable_patterns)]
        _ => {
            return Err(Error::InvalidBatch(
                "the cpu backend has no kernel for this attention visibility".into(),
            ))
        }
    }
    let group = p.n_head / p.n_head_kv;
    let width = p.n_head_kv * hd;
    let (ks, vs) = &kv.layers[layer];
    let n_tok = q.rows;
    // Tasks are (KV head, chunk of query tokens): the chunk's visible K and
    // V rows of that head are converted to f32 once and shared by its
    // tokens and the `group` query heads reading that KV head. PERF: with
    // conversion per (token, head) as before, f16→f32 alone was 40% of
    // SmolLM2's pp512.
    let tc = n_tok
        .div_ceil((4 * pool.threads()).div_ceil(p.n_head_kv))
        .clamp(1, 32);
    let n_chunks = n_tok.div_ceil(tc);
    let o = SyncPtr(out.as_mut_slice().as_mut_ptr());
    #[cfg(target_arch = "x86_64")]
    if fast && hd.is_multiple_of(16) && x86::available() {
        pool.run(p.n_head_kv * n_chunks, &|task| {
            let (kvh, chunk) = (task / n_chunks, task % n_chunks);
            let toks = chunk * tc..((chunk + 1) * tc).min(n_tok);
            let n_max = first_slot + toks.end;
            SCRATCH.with(|sc| {
                let mut sc = sc.borrow_mut();
                let need = 2 * n_max * hd + n_max + hd;
                if sc.len() < need {
                    sc.resize(need, 0.0);
                }
                let (kt, rest) = sc.split_at_mut(n_max * hd);
                let (vf, rest) = rest.split_at_mut(n_max * hd);
                let (scores, row) = rest.split_at_mut(n_max);
                let row = &mut row[..hd];
                for j in 0..n_max {
                    ks.read_into(j * width + kvh * hd, row);
                    for (d, &v) in row.iter().enumerate() {
                        kt[d * n_max + j] = v;
                    }
                    vs.read_into(j * width + kvh * hd, &mut vf[j * hd..(j + 1) * hd]);
                }
                for t in toks.clone() {
                    let n_vis = first_slot + t + 1;
                    for h in kvh * group..(kvh + 1) * group {
                        let qh = &q.row(t)[h * hd..(h + 1) * hd];
                        // SAFETY: (t, h) owns out[t, h·hd..(h+1)·hd] (as
                        // below); AVX-512F was detected.
                        unsafe {
                            let dst = std::slice::from_raw_parts_mut(
                                o.get().add((t * p.n_head + h) * hd),
                                hd,
                            );
                            x86::head(qh, kt, n_max, vf, n_vis, p.scale, scores, dst);
                        }
                    }
                }
            });
        });
        return Ok(());
    }
    let _ = fast;
    pool.run(p.n_head_kv * n_chunks, &|task| {
        let (kvh, chunk) = (task / n_chunks, task % n_chunks);
        let toks = chunk * tc..((chunk + 1) * tc).min(n_tok);
        let n_max = first_slot + toks.end;
        SCRATCH.with(|sc| {
            let mut sc = sc.borrow_mut();
            let need = 2 * n_max * hd + n_max + hd;
            if sc.len() < need {
                sc.resize(need, 0.0);
            }
            let (kf, rest) = sc.split_at_mut(n_max * hd);
            let (vf, rest) = rest.split_at_mut(n_max * hd);
            let (scores, rest) = rest.split_at_mut(n_max);
            let acc = &mut rest[..hd];
            for j in 0..n_max {
                ks.read_into(j * width + kvh * hd, &mut kf[j * hd..(j + 1) * hd]);
                vs.read_into(j * width + kvh * hd, &mut vf[j * hd..(j + 1) * hd]);
            }
            for t in toks.clone() {
                // Causal: the token in slot s sees slots 0..=s.
                let n_vis = first_slot + t + 1;
                for h in kvh * group..(kvh + 1) * group {
                    let qh = &q.row(t)[h * hd..(h + 1) * hd];
                    let mut max = f32::NEG_INFINITY;
                    for (j, s) in scores[..n_vis].iter_mut().enumerate() {
                        *s = dot_f32(qh, &kf[j * hd..(j + 1) * hd]) * p.scale;
                        max = max.max(*s);
                    }
                    let mut sum = 0.0f64;
                    for s in &mut scores[..n_vis] {
                        *s = (*s - max).exp();
                        sum += *s as f64;
                    }
                    let inv = (1.0 / sum) as f32;
                    acc.iter_mut().for_each(|a| *a = 0.0);
                    for (j, &s) in scores[..n_vis].iter().enumerate() {
                        let w = s * inv;
                        for (a, &v) in acc.iter_mut().zip(&vf[j * hd..(j + 1) * hd]) {
                            *a += w * v;
                        }
                    }
                    // SAFETY: (t, h) owns out[t, h·hd..(h+1)·hd], elements
                    // (t·n_head + h)·hd.. of the [rows, n_head·hd] output;
                    // every (t, h) belongs to exactly one task.
                    let dst = unsafe {
                        std::slice::from_raw_parts_mut(o.get().add((t * p.n_head + h) * hd), hd)
                    };
                    dst.copy_from_slice(acc);
                }
            }
        });
    });
    Ok(())
}

/// AVX-512 attention of one query head (module docs).
#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    pub(super) fn available() -> bool {
        is_x86_feature_detected!("avx512f")
    }

    /// `e^x` for `x ≤ 0` (softmax arguments): `2^n · p(r)` with
    /// `x = n·ln2 + r`, `|r| ≤ ln2/2`, `p` the degree-7 Taylor polynomial
    /// (relative error < 1e-7); below −87 the result is 0.
    #[target_feature(enable = "avx512f")]
    #[inline]
    fn exp(x: __m512) -> __m512 {
        let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
        let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)),
        );
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm512_set1_ps(1.0 / 5040.0);
        for c in [
            1.0 / 720.0,
            1.0 / 120.0,
            1.0 / 24.0,
            1.0 / 6.0,
            0.5,
            1.0,
            1.0,
        ] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        _mm512_scalef_ps(p, n)
    }

    /// One head: `dst = softmax(q·Kᵀ·scale) · V` over the first `n_vis` keys.
    /// `kt` is K transposed (`kt[d·n_max + j]`), `vf` V by rows; `scores`
    /// holds at least `n_vis` values. Every lane's arithmetic depends only
    /// on its key index, never on the batch.
    ///
    /// # Safety
    /// AVX-512F must be available; `q.len() == dst.len() == hd`, a multiple
    /// of 16, `kt` and `vf` hold `n_max · hd` values, `n_vis ≤ n_max`.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn head(
        q: &[f32],
        kt: &[f32],
        n_max: usize,
        vf: &[f32],
        n_vis: usize,
        scale: f32,
        scores: &mut [f32],
        dst: &mut [f32],
    ) {
        let hd = q.len();
        let sp = scores.as_mut_ptr();
        let mut mx = _mm512_set1_ps(f32::NEG_INFINITY);
        let mut j = 0;
        while j < n_vis {
            let m: __mmask16 = if n_vis - j >= 16 {
                0xffff
            } else {
                ((1u32 << (n_vis - j)) - 1) as __mmask16
            };
            let mut a = _mm512_setzero_ps();
            for (d, &qd) in q.iter().enumerate() {
                // SAFETY: keys j..j+16 masked to n_vis ≤ n_max, row d of kt.
                let k = _mm512_maskz_loadu_ps(m, kt.as_ptr().add(d * n_max + j));
                a = _mm512_fmadd_ps(_mm512_set1_ps(qd), k, a);
            }
            let a = _mm512_mul_ps(a, _mm512_set1_ps(scale));
            mx = _mm512_mask_max_ps(mx, m, mx, a);
            // SAFETY: masked to n_vis ≤ scores.len().
            _mm512_mask_storeu_ps(sp.add(j), m, a);
            j += 16;
        }
        let max = _mm512_set1_ps(_mm512_reduce_max_ps(mx));
        let mut sum = _mm512_setzero_ps();
        j = 0;
        while j < n_vis {
            let m: __mmask16 = if n_vis - j >= 16 {
                0xffff
            } else {
                ((1u32 << (n_vis - j)) - 1) as __mmask16
            };
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sp.add(j)), max));
            let e = _mm512_maskz_mov_ps(m, e);
            sum = _mm512_add_ps(sum, e);
            _mm512_mask_storeu_ps(sp.add(j), m, e);
            j += 16;
        }
        let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sum));
        for c in (0..hd).step_by(16) {
            let mut acc = _mm512_setzero_ps();
            for jj in 0..n_vis {
                // SAFETY: row jj < n_vis of V, columns c..c+16 < hd.
                let w = _mm512_mul_ps(_mm512_set1_ps(*sp.add(jj)), inv);
                acc = _mm512_fmadd_ps(w, _mm512_loadu_ps(vf.as_ptr().add(jj * hd + c)), acc);
            }
            _mm512_storeu_ps(dst.as_mut_ptr().add(c), acc);
        }
    }
}
