//! Dense attention over the KV cache on the CPU, and writes into the cache.
//!
//! Softmax(q·kᵀ · scale) · v per query head, with grouped-query attention:
//! query head h reads KV head `h / (n_head / n_head_kv)`. The work items are
//! (token, head) pairs, split over the backend's thread pool; each is
//! computed the same way whatever the batch, so a batch of n tokens gives the
//! same bits as n one-token calls.

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
                for (d, s) in dst.iter_mut().zip(&v[at..at + n]) {
                    *d = s.to_f32();
                }
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

pub(super) fn attention(
    pool: &Pool,
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
        || p.n_head % p.n_head_kv != 0
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
    let n_items = q.rows * p.n_head;
    let max_ctx = first_slot + q.rows;
    // About 4 tasks per thread, but not below ~32k multiply-adds per task.
    let per_task = n_items
        .div_ceil(4 * pool.threads())
        .max((1 << 15) / (max_ctx * hd * 2).max(1))
        .max(1);
    let o = SyncPtr(out.as_mut_slice().as_mut_ptr());
    pool.run(n_items.div_ceil(per_task), &|task| {
        SCRATCH.with(|sc| {
            let mut sc = sc.borrow_mut();
            if sc.len() < max_ctx + 2 * hd {
                sc.resize(max_ctx + 2 * hd, 0.0);
            }
            let (scores, rest) = sc.split_at_mut(max_ctx);
            let (krow, acc) = rest[..2 * hd].split_at_mut(hd);
            for item in task * per_task..((task + 1) * per_task).min(n_items) {
                let (t, h) = (item / p.n_head, item % p.n_head);
                let kvh = h / group;
                let qh = &q.row(t)[h * hd..(h + 1) * hd];
                // Causal: the token in slot s sees slots 0..=s.
                let n_vis = first_slot + t + 1;
                let mut max = f32::NEG_INFINITY;
                for (j, s) in scores[..n_vis].iter_mut().enumerate() {
                    ks.read_into(j * width + kvh * hd, krow);
                    *s = dot_f32(qh, krow) * p.scale;
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
                    vs.read_into(j * width + kvh * hd, krow);
                    let w = s * inv;
                    for (a, &v) in acc.iter_mut().zip(krow.iter()) {
                        *a += w * v;
                    }
                }
                // SAFETY: item (t, h) owns out[t, h·hd..(h+1)·hd], which is
                // elements item·hd.. of the [rows, n_head·hd] output; items
                // are disjoint across tasks.
                let dst = unsafe { std::slice::from_raw_parts_mut(o.get().add(item * hd), hd) };
                dst.copy_from_slice(acc);
            }
        });
    });
    Ok(())
}
