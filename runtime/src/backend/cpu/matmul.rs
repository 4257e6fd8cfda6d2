//! Matrix multiplication on the CPU: `out[t, r] = Σ_c W[r, c] · x[t, c]`.
//!
//! Two paths, chosen per backend ([`super::CpuBackend::exact`] or the fast
//! default):
//! - **Exact**: each weight row is dequantized to f32 and dotted with every
//!   token row in f32 (the reference behaviour; every weight type).
//! - **Fast** (Q4_0, Q4_1, Q8_0 weights): the batch's activations are
//!   quantized to 8 bits per block of 32 once per call, then the SIMD kernels
//!   of `simd/` do integer block dots over tiles of rows × tokens, so prefill
//!   is matrix-matrix work that loads each weight block once per tile of
//!   tokens. Other weight types take the exact path.
//!
//! Work is split into rectangles of rows × tokens run on the backend's
//! thread pool. Each output element is written by one kernel call whose
//! arithmetic does not depend on the rectangle, so results are the same for
//! any thread count or batch shape. No allocation after warm-up: the
//! quantized activations live in a buffer of the calling thread and kernel
//! scratch in one per worker thread.

use std::cell::RefCell;

use super::parallel::{dot_f32, SyncPtr};
use super::simd::{Kernels, QActs, WMat};
use super::{shape_err, CpuBackend, CpuTensor, CpuWeight, WeightStorage};
use crate::error::{Error, Result};
use crate::quants;

thread_local! {
    /// Quantized activations of the calling thread's current matmul.
    static QACTS: RefCell<QActs> = RefCell::new(QActs::default());
    /// Per-thread kernel scratch (f32 block scales, or a dequantized row).
    static SCRATCH: RefCell<Vec<f32>> = const { RefCell::new(Vec::new()) };
}

/// Rows per task when the batch is a few tokens (decode): small enough that
/// a task's weights stay in L2 between the scale pre-pass and the dots.
const DECODE_ROWS: usize = 32;
/// Rows × tokens per task for prefill: 64 rows of a 4096-wide Q4_0 matrix
/// are 144 KiB, 64 quantized tokens 256 KiB — both stay in L2 while the
/// register tiles sweep them.
const PREFILL_ROWS: usize = 64;
const PREFILL_TOKS: usize = 64;
/// Batches smaller than this are treated as decode (one token tile).
const DECODE_MAX_TOKS: usize = 8;

fn check(x: &CpuTensor, w: &CpuWeight, out: &CpuTensor) -> Result<()> {
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
    Ok(())
}

/// At most this many matrices share one job in [`matmul_many`].
const MAX_MANY: usize = 4;

/// `outs[i] = x · ws[i]ᵀ` on the fast path with `x` quantized once and all
/// the matrices' rectangles in one pool job: one wake-up and one
/// quantization instead of one per matrix (q/k/v, gate/up). Each output
/// element is computed by the same kernel call on the same rectangle as in
/// [`matmul`], so the results are the same bits. Falls back to one
/// [`matmul`] per matrix when any of them is not on the fast path.
pub(super) fn matmul_many(
    be: &CpuBackend,
    x: &CpuTensor,
    ws: &[&CpuWeight],
    outs: &mut [&mut CpuTensor],
) -> Result<()> {
    if ws.len() != outs.len() {
        return Err(shape_err(
            "matmul_many",
            format!("{} weights for {} outputs", ws.len(), outs.len()),
        ));
    }
    for (w, out) in ws.iter().zip(outs.iter()) {
        check(x, w, out)?;
    }
    let (n_tok, k) = (x.rows, x.cols);
    let fast = be
        .fast
        .filter(|kern| ws.len() <= MAX_MANY && ws.iter().all(|w| fast_wmat(kern, w).is_some()));
    let Some(kern) = fast else {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            matmul(be, x, w, out)?;
        }
        return Ok(());
    };
    if n_tok == 0 {
        return Ok(());
    }
    let tc = tile_shape(n_tok, 0, &kern, 1).1;
    let n_tt = n_tok.div_ceil(tc);
    // Per matrix: kernel, weights, output, rows per task, first task index.
    let mut rcs = [0usize; MAX_MANY];
    let mut gemms = [None; MAX_MANY];
    let mut wms = [None; MAX_MANY];
    let mut os = [SyncPtr(std::ptr::null_mut()); MAX_MANY];
    let mut first = [0usize; MAX_MANY + 1];
    for (i, (w, out)) in ws.iter().zip(outs.iter_mut()).enumerate() {
        gemms[i] = kern.gemm(w.ty);
        wms[i] = fast_wmat(&kern, w);
        os[i] = SyncPtr(out.as_mut_slice().as_mut_ptr());
        rcs[i] = tile_shape(n_tok, w.rows, &kern, be.pool.threads()).0;
        first[i + 1] = first[i] + w.rows.div_ceil(rcs[i]) * n_tt;
    }
    let n_mats = ws.len();
    QACTS.with(|q| {
        let mut q = q.borrow_mut();
        let xq = q.quantize(&kern, x.as_slice(), n_tok, k);
        be.pool.run(first[n_mats], &|task| {
            // The matrix owning this task: the last one starting at or before it.
            let m = (1..n_mats)
                .take_while(|&m| first[m] <= task)
                .last()
                .unwrap_or(0);
            let (Some(gemm), Some(wm)) = (gemms[m], wms[m].as_ref()) else {
                return;
            };
            let (n_rows, rc) = (ws[m].rows, rcs[m]);
            let i = task - first[m];
            let (ri, ti) = (i / n_tt, i % n_tt);
            let rows = ri * rc..((ri + 1) * rc).min(n_rows);
            let toks = ti * tc..((ti + 1) * tc).min(n_tok);
            let o = os[m];
            SCRATCH.with(|s| {
                // SAFETY: as in `matmul`: the rectangles of different tasks
                // are disjoint, each inside its matrix, activations and
                // output (`[n_tok, n_rows]`, checked above); the outputs are
                // distinct tensors (`&mut` borrows).
                unsafe { gemm(wm, rows, &xq, toks, o.get(), n_rows, &mut s.borrow_mut()) }
            });
        });
    });
    Ok(())
}

/// The weight as `kern`'s gemm reads it: a quantized matrix of a type it
/// knows, in the layout it reads (interleaved by its group, or the file's).
fn fast_wmat<'w>(kern: &Kernels, w: &'w CpuWeight) -> Option<WMat<'w>> {
    kern.gemm(w.ty)?;
    w.wmat().filter(|m| m.group == kern.group)
}

/// Rows × tokens of one task of a matrix of `n_rows` rows: one token tile
/// for decode-sized batches. Kernels reading the file's layout get
/// [`DECODE_ROWS`] rows (their scale pre-pass stays in L2); interleaved ones
/// stream their weights, so decode tasks are as long as load balance allows
/// (about 4 per thread, whole groups), which keeps each thread's read
/// sequential for the prefetchers.
fn tile_shape(n_tok: usize, n_rows: usize, kern: &Kernels, threads: usize) -> (usize, usize) {
    if n_tok >= DECODE_MAX_TOKS {
        (PREFILL_ROWS, PREFILL_TOKS)
    } else if kern.group == 0 {
        (DECODE_ROWS, n_tok)
    } else {
        let g = kern.group;
        let per = n_rows.div_ceil(4 * threads).div_ceil(g) * g;
        (per.clamp(DECODE_ROWS.max(g), 64 * g), n_tok)
    }
}

pub(super) fn matmul(
    be: &CpuBackend,
    x: &CpuTensor,
    w: &CpuWeight,
    out: &mut CpuTensor,
) -> Result<()> {
    check(x, w, out)?;
    let (n_tok, k) = (x.rows, x.cols);
    if n_tok == 0 || w.rows == 0 {
        return Ok(());
    }
    if let Some(kern) = be.fast {
        if let (Some(gemm), Some(wm)) = (kern.gemm(w.ty), fast_wmat(&kern, w)) {
            let n_rows = w.rows;
            let o = SyncPtr(out.as_mut_slice().as_mut_ptr());
            return QACTS.with(|q| {
                let mut q = q.borrow_mut();
                let xq = q.quantize(&kern, x.as_slice(), n_tok, k);
                let (rc, tc) = tile_shape(n_tok, n_rows, &kern, be.pool.threads());
                let (n_rt, n_tt) = (n_rows.div_ceil(rc), n_tok.div_ceil(tc));
                be.pool.run(n_rt * n_tt, &|i| {
                    let (ri, ti) = (i / n_tt, i % n_tt);
                    let rows = ri * rc..((ri + 1) * rc).min(n_rows);
                    let toks = ti * tc..((ti + 1) * tc).min(n_tok);
                    SCRATCH.with(|s| {
                        // SAFETY: the rectangles of different tasks are
                        // disjoint, `rows`/`toks` are inside `wm`/`xq`, and
                        // `out` is [n_tok, n_rows] (checked above).
                        unsafe { gemm(&wm, rows, &xq, toks, o.get(), n_rows, &mut s.borrow_mut()) }
                    });
                });
                Ok(())
            });
        }
    }
    exact(be, x, w, out)
}

/// The exact path: f32 weights (dequantized row by row) · f32 activations.
fn exact(be: &CpuBackend, x: &CpuTensor, w: &CpuWeight, out: &mut CpuTensor) -> Result<()> {
    let (n_tok, k, n_rows) = (x.rows, x.cols, w.rows);
    let xs = x.as_slice();
    let dequant = match &w.storage {
        WeightStorage::Dense(_) => None,
        // Packed only for a fast set that reads it (`load_weight`).
        WeightStorage::Packed { .. } => {
            return Err(shape_err("matmul", format!("{} is packed", w.name)))
        }
        WeightStorage::Mapped { .. } => Some(
            quants::kernels(w.ty)
                .ok_or(Error::UnsupportedType {
                    tensor: w.name.clone(),
                    ty: w.ty,
                    backend: "cpu",
                })?
                .dequantize_row,
        ),
    };
    // About 4 tasks per thread, but not below ~32k multiply-adds per task.
    let per_task = n_rows
        .div_ceil(4 * be.pool.threads())
        .max((1 << 15) / (k * n_tok).max(1))
        .max(1);
    let n_tasks = n_rows.div_ceil(per_task);
    let o = SyncPtr(out.as_mut_slice().as_mut_ptr());
    be.pool.run(n_tasks, &|i| {
        SCRATCH.with(|s| {
            let mut wr = s.borrow_mut();
            if wr.len() < k {
                wr.resize(k, 0.0);
            }
            let wr = &mut wr[..k];
            for r in i * per_task..((i + 1) * per_task).min(n_rows) {
                let row: &[f32] = match (&w.storage, dequant) {
                    (WeightStorage::Dense(d), _) => &d[r * k..(r + 1) * k],
                    (_, Some(deq)) => {
                        deq(w.row_bytes(r), wr);
                        wr
                    }
                    // Mapped weights always have a dequantizer (checked above).
                    (_, None) => return,
                };
                for t in 0..n_tok {
                    // SAFETY: element (t, r) is written only by the task
                    // owning row r; out is [n_tok, n_rows].
                    unsafe { *o.get().add(t * n_rows + r) = dot_f32(row, &xs[t * k..(t + 1) * k]) };
                }
            }
        });
    });
    Ok(())
}
