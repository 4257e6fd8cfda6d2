//! Element-wise CPU ops: embedding lookup, SwiGLU's gate, residual adds and
//! row gathers. Memory-bound and cheap, so single-threaded.

use std::cell::RefCell;

use super::{shape_err, simd, CpuTensor, CpuWeight, WeightStorage};
use crate::error::{Error, Result};
use crate::quants;

thread_local! {
    /// One embedding row unpacked from an interleaved copy.
    static ROW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// `out[t] = table[ids[t]] · scale`, dequantizing the looked-up rows.
pub(super) fn embed(table: &CpuWeight, ids: &[u32], scale: f32, out: &mut CpuTensor) -> Result<()> {
    if out.rows != ids.len() || out.cols != table.cols {
        return Err(shape_err(
            "embed",
            format!(
                "{} ids of width {} into [{}, {}]",
                ids.len(),
                table.cols,
                out.rows,
                out.cols
            ),
        ));
    }
    let cols = table.cols;
    let o = out.as_mut_slice();
    for (t, &id) in ids.iter().enumerate() {
        let id = id as usize;
        if id >= table.rows {
            return Err(Error::InvalidBatch(format!(
                "token id {id} is outside the vocabulary of {} tokens",
                table.rows
            )));
        }
        let dst = &mut o[t * cols..(t + 1) * cols];
        match &table.storage {
            WeightStorage::Dense(d) => dst.copy_from_slice(&d[id * cols..(id + 1) * cols]),
            WeightStorage::Mapped {
                tied, row_bytes, ..
            } => {
                let kern = quants::kernels(table.ty).ok_or(Error::UnsupportedType {
                    tensor: table.name.clone(),
                    ty: table.ty,
                    backend: "cpu",
                })?;
                match tied.as_ref().and_then(|(s, g)| Some((s.get()?, *g))) {
                    Some((packed, g)) => ROW.with(|buf| {
                        let mut buf = buf.borrow_mut();
                        buf.resize(*row_bytes, 0);
                        simd::unpack_row(table.ty, g, packed.bytes(), *row_bytes, id, &mut buf)
                            .ok_or_else(|| {
                                shape_err("embed", format!("row {id} of {}", table.name))
                            })?;
                        (kern.dequantize_row)(&buf, dst);
                        Ok::<_, Error>(())
                    })?,
                    None => (kern.dequantize_row)(table.row_bytes(id), dst),
                }
            }
            // Only matmul weights are packed (`CpuBackend::load_weight`).
            WeightStorage::Packed { .. } => {
                return Err(shape_err("embed", format!("{} is packed", table.name)))
            }
        }
        if scale != 1.0 {
            dst.iter_mut().for_each(|v| *v *= scale);
        }
    }
    Ok(())
}

/// SwiGLU: `gate = silu(gate) · up`, `silu(g) = g / (1 + e^-g)`.
pub(super) fn silu_mul(gate: &mut CpuTensor, up: &CpuTensor) -> Result<()> {
    if (gate.rows, gate.cols) != (up.rows, up.cols) {
        return Err(shape_err("silu_mul", "gate and up differ in shape".into()));
    }
    for (g, &u) in gate.as_mut_slice().iter_mut().zip(up.as_slice()) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
    Ok(())
}

/// `acc += scale · x`.
pub(super) fn add_scaled(acc: &mut CpuTensor, x: &CpuTensor, scale: f32) -> Result<()> {
    if (acc.rows, acc.cols) != (x.rows, x.cols) {
        return Err(shape_err("add_scaled", "operands differ in shape".into()));
    }
    if scale == 1.0 {
        acc.as_mut_slice()
            .iter_mut()
            .zip(x.as_slice())
            .for_each(|(a, &b)| *a += b);
    } else {
        acc.as_mut_slice()
            .iter_mut()
            .zip(x.as_slice())
            .for_each(|(a, &b)| *a += scale * b);
    }
    Ok(())
}

/// `out[i] = x[rows[i]]`.
pub(super) fn gather_rows(x: &CpuTensor, rows: &[usize], out: &mut CpuTensor) -> Result<()> {
    if out.rows != rows.len() || out.cols != x.cols || rows.iter().any(|&r| r >= x.rows) {
        return Err(shape_err(
            "gather_rows",
            format!("{} rows of {}", rows.len(), x.rows),
        ));
    }
    let cols = x.cols;
    let o = out.as_mut_slice();
    for (i, &r) in rows.iter().enumerate() {
        o[i * cols..(i + 1) * cols].copy_from_slice(x.row(r));
    }
    Ok(())
}
