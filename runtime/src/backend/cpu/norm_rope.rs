//! RMSNorm and rotary position embedding on the CPU.

use super::{shape_err, CpuTensor, CpuWeight};
use crate::backend::Rope;
use crate::error::Result;

/// RMSNorm: `out = x / sqrt(mean(x²) + eps) · w`, the sum of squares in f64
/// so long rows lose nothing to accumulation order.
pub(super) fn rms_norm(x: &CpuTensor, w: &CpuWeight, eps: f32, out: &mut CpuTensor) -> Result<()> {
    let Some(wv) = w.dense() else {
        return Err(shape_err(
            "rms_norm",
            format!("{} is not a vector weight", w.name),
        ));
    };
    let n = x.cols;
    if wv.len() != n || (out.rows, out.cols) != (x.rows, n) {
        return Err(shape_err(
            "rms_norm",
            format!("{} has {} values for rows of {n}", w.name, wv.len()),
        ));
    }
    let o = out.as_mut_slice();
    for t in 0..x.rows {
        let row = x.row(t);
        let ss: f64 = row.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let scale = (1.0 / (ss / n as f64 + eps as f64).sqrt()) as f32;
        for ((dst, &v), &g) in o[t * n..(t + 1) * n].iter_mut().zip(row).zip(wv) {
            *dst = v * scale * g;
        }
    }
    Ok(())
}

/// RoPE in GGML's "normal" mode: within each head, pair `(2i, 2i+1)` turns by
/// `pos · inv_freq[i]`. Angles are formed in f64 (positions up to 2^24 and
/// beyond stay exact) and only the cosine and sine are rounded to f32.
pub(super) fn rope(x: &mut CpuTensor, positions: &[u32], rope: &Rope) -> Result<()> {
    let half = rope.n_rot / 2;
    if positions.len() != x.rows
        || x.cols != rope.n_head * rope.head_dim
        || rope.n_rot > rope.head_dim
        || rope.inv_freq.len() != half
    {
        return Err(shape_err(
            "rope",
            format!(
                "{} positions for [{}, {}] with {} heads of {} ({} rotated)",
                positions.len(),
                x.rows,
                x.cols,
                rope.n_head,
                rope.head_dim,
                rope.n_rot
            ),
        ));
    }
    let cols = x.cols;
    let mut cs = vec![(0.0f32, 0.0f32); half];
    let data = x.as_mut_slice();
    for (t, &p) in positions.iter().enumerate() {
        for (c, &f) in cs.iter_mut().zip(&rope.inv_freq) {
            let theta = p as f64 * f;
            *c = (theta.cos() as f32, theta.sin() as f32);
        }
        let row = &mut data[t * cols..(t + 1) * cols];
        for head in row.chunks_exact_mut(rope.head_dim) {
            for (i, &(c, s)) in cs.iter().enumerate() {
                let (x0, x1) = (head[2 * i], head[2 * i + 1]);
                head[2 * i] = x0 * c - x1 * s;
                head[2 * i + 1] = x0 * s + x1 * c;
            }
        }
    }
    Ok(())
}
