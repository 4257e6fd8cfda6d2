//! Dense attention over the KV cache on the CPU, and writes into the cache.
//!
//! Softmax(q·kᵀ · scale) · v per query head, with grouped-query attention:
//! query head h reads KV head `h / (n_head / n_head_kv)`. The work items are
//! (token, head) pairs, split over threads; each is computed the same way
//! whatever the batch, so a batch of n tokens gives the same bits as n
//! one-token calls.

use half::f16;

use super::parallel::{dot_f32, map_chunks};
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

pub(super) fn attention(
    threads: usize,
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
    let results = map_chunks(threads, n_items, max_ctx * hd * 2, |items| {
        let mut buf = vec![0.0f32; items.len() * hd];
        let mut scores = vec![0.0f32; max_ctx];
        let mut krow = vec![0.0f32; hd];
        let mut acc = vec![0.0f32; hd];
        for (i, item) in items.clone().enumerate() {
            let (t, h) = (item / p.n_head, item % p.n_head);
            let kvh = h / group;
            let qh = &q.row(t)[h * hd..(h + 1) * hd];
            // Causal: the token in slot s sees slots 0..=s.
            let n_vis = first_slot + t + 1;
            let mut max = f32::NEG_INFINITY;
            for (j, s) in scores[..n_vis].iter_mut().enumerate() {
                ks.read_into(j * width + kvh * hd, &mut krow);
                *s = dot_f32(qh, &krow) * p.scale;
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
                vs.read_into(j * width + kvh * hd, &mut krow);
                let w = s * inv;
                for (a, &v) in acc.iter_mut().zip(&krow) {
                    *a += w * v;
                }
            }
            buf[i * hd..(i + 1) * hd].copy_from_slice(&acc);
        }
        buf
    });
    let o = out.as_mut_slice();
    for (items, buf) in results {
        let start = items.start * hd;
        o[start..start + buf.len()].copy_from_slice(&buf);
    }
    Ok(())
}
