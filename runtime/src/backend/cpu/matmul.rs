//! Quantized matrix multiplication on the CPU: `out[t, r] = Σ_c W[r, c] · x[t, c]`.
//!
//! Each weight row is dequantized once into a scratch row and dotted with
//! every token of the batch, so prefill pays for the dequantization once per
//! row rather than once per token. Rows are split over threads. This is the
//! exact (f32 activations) path; the SIMD kernels of the CPU-speed work are
//! checked against it.

use super::parallel::{dot_f32, map_chunks};
use super::{shape_err, CpuTensor, CpuWeight, WeightStorage};
use crate::error::{Error, Result};
use crate::quants;

pub(super) fn matmul(
    threads: usize,
    x: &CpuTensor,
    w: &CpuWeight,
    out: &mut CpuTensor,
) -> Result<()> {
    let (n_tok, k) = (x.rows, x.cols);
    if k != w.cols || out.rows != n_tok || out.cols != w.rows {
        return Err(shape_err(
            "matmul",
            format!(
                "x [{n_tok}, {k}] · {} [{}, {}]ᵀ into [{}, {}]",
                w.name, w.rows, w.cols, out.rows, out.cols
            ),
        ));
    }
    let xs = x.as_slice();
    let n_rows = w.rows;
    let results = match &w.storage {
        WeightStorage::Dense(d) => map_chunks(threads, n_rows, k * n_tok, |rows| {
            let mut buf = vec![0.0f32; rows.len() * n_tok];
            for (i, r) in rows.clone().enumerate() {
                let wr = &d[r * k..(r + 1) * k];
                for t in 0..n_tok {
                    buf[i * n_tok + t] = dot_f32(wr, &xs[t * k..(t + 1) * k]);
                }
            }
            buf
        }),
        WeightStorage::Mapped { .. } => {
            let kern = quants::kernels(w.ty).ok_or(Error::UnsupportedType {
                tensor: w.name.clone(),
                ty: w.ty,
                backend: "cpu",
            })?;
            map_chunks(threads, n_rows, k * n_tok, |rows| {
                let mut buf = vec![0.0f32; rows.len() * n_tok];
                let mut wr = vec![0.0f32; k];
                for (i, r) in rows.clone().enumerate() {
                    (kern.dequantize_row)(w.row_bytes(r), &mut wr);
                    for t in 0..n_tok {
                        buf[i * n_tok + t] = dot_f32(&wr, &xs[t * k..(t + 1) * k]);
                    }
                }
                buf
            })
        }
    };
    let o = out.as_mut_slice();
    for (rows, buf) in results {
        for (i, r) in rows.enumerate() {
            for t in 0..n_tok {
                o[t * n_rows + r] = buf[i * n_tok + t];
            }
        }
    }
    Ok(())
}
