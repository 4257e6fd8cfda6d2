//! [`quantize`]: round-to-nearest and GPTQ / P-GPTQ for one weight matrix,
//! with the per-layer [`LayerReport`].

use std::time::Instant;

use faer::Mat;

use crate::grid::{Grid, GroupParams};
use crate::{Hessian, QuantError, QuantizedMatrix};

/// How a matrix is quantized.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Round to nearest, group by group; needs no Hessian.
    Rtn,
    /// GPTQ (algorithms.md §4.1).
    Gptq,
    /// Prefix-aware GPTQ (§4.2): GPTQ on a Hessian whose sequences skipped
    /// their first `prefix_skip` positions. The skip happens while the
    /// Hessian is accumulated ([`Hessian::add_sequence`]'s `skip`); here it
    /// runs exactly as [`Scheme::Gptq`].
    PGptq,
}

/// GPTQ's parameters.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GptqParams {
    /// Relative dampening: `damp · mean(diag H)` is added to the diagonal
    /// (0.01).
    pub damp: f64,
    /// Columns per lazy batch update (128); rounded down to a multiple of
    /// the grid's group (at least one group).
    pub block: usize,
    /// Quantize columns in order of decreasing `H[i,i]` (with static groups:
    /// each group's scale comes from the unmodified weights of its natural
    /// columns).
    pub act_order: bool,
    /// Positions skipped at the start of every calibration sequence for
    /// P-GPTQ (4); used by the caller when accumulating the Hessian.
    pub prefix_skip: usize,
}

impl Default for GptqParams {
    fn default() -> Self {
        GptqParams {
            damp: 0.01,
            block: 128,
            act_order: false,
            prefix_skip: 4,
        }
    }
}

/// What quantizing one matrix did.
///
/// The relative proxy output error of a quantized `Q` is
/// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` with `ΔW = W − Q` and the undamped Hessian:
/// the expected squared error of the layer's output over the calibration
/// inputs, relative to the output's own energy. Without a Hessian (RTN
/// alone) `H = I`: the relative Frobenius error.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerReport {
    /// Output features.
    pub rows: usize,
    /// Input features.
    pub cols: usize,
    /// Relative proxy output error of round-to-nearest on the same grid.
    pub err_rtn_proxy: f64,
    /// Relative proxy output error of the chosen scheme (equal to
    /// `err_rtn_proxy` for RTN).
    pub err: f64,
    /// GPTQ's own loss `Σ (w − q)² / (2 d²)` over the error-updated weights
    /// (`d` the diagonal of the Cholesky factor of `H⁻¹`); 0 for RTN.
    pub gptq_loss: f64,
    /// The relative damping finally used (raised when Cholesky failed); 0
    /// for RTN.
    pub damp: f64,
    /// Columns whose `H[i,i]` was 0 (never active in calibration): their
    /// weights were set to 0 before quantizing.
    pub dead_cols: usize,
    /// Wall time of the quantization, seconds.
    pub secs: f64,
}

/// Quantizes `w` (`rows × cols`, row-major f32; rows = output features,
/// cols = input features) onto `grid` with `scheme`.
///
/// GPTQ and P-GPTQ need `h` (the layer input's Hessian); RTN uses it, when
/// given, only for the report.
///
/// Errors: [`QuantError::BadShape`] when `w.len() != rows·cols`, a dimension
/// is 0 or `cols` is not a multiple of the group, or `h` has other than
/// `cols` columns; [`QuantError::BadGrid`]; [`QuantError::BadWeights`] for
/// NaN/inf weights or a group whose scale overflows f16;
/// [`QuantError::BadHessian`] when GPTQ has no Hessian or one with no
/// samples, a malformed `add_sequence` or non-finite values;
/// [`QuantError::BadParams`]; [`QuantError::NotPositiveDefinite`] when
/// Cholesky fails even after raising the damping.
pub fn quantize(
    w: &[f32],
    rows: usize,
    cols: usize,
    grid: Grid,
    scheme: Scheme,
    h: Option<&Hessian>,
    p: &GptqParams,
) -> Result<(QuantizedMatrix, LayerReport), QuantError> {
    let start = Instant::now();
    grid.validate()?;
    check_shape(w, rows, cols, grid)?;
    let hm = match h {
        Some(h) => Some(checked_hessian(h, cols)?),
        None => None,
    };
    let (rtn_codes, rtn_params) = rtn(w, rows, cols, grid)?;
    let rtn_q = QuantizedMatrix::from_parts(rows, cols, grid, rtn_codes, rtn_params);
    let err_rtn_proxy = proxy_error(w, &rtn_q.dequantize(), rows, cols, hm.as_ref());
    let q = match scheme {
        Scheme::Rtn => rtn_q,
        Scheme::Gptq | Scheme::PGptq => {
            if hm.is_none() {
                return Err(QuantError::BadHessian(
                    "GPTQ needs the layer input's Hessian".into(),
                ));
            }
            check_params(p)?;
            // The GPTQ body lands in the next commit; RTN stands in.
            rtn_q
        }
    };
    let err = proxy_error(w, &q.dequantize(), rows, cols, hm.as_ref());
    let report = LayerReport {
        rows,
        cols,
        err_rtn_proxy,
        err,
        gptq_loss: 0.0,
        damp: 0.0,
        dead_cols: 0,
        secs: start.elapsed().as_secs_f64(),
    };
    Ok((q, report))
}

fn check_shape(w: &[f32], rows: usize, cols: usize, grid: Grid) -> Result<(), QuantError> {
    if rows == 0 || cols == 0 {
        return Err(QuantError::BadShape(format!(
            "empty matrix ({rows} × {cols})"
        )));
    }
    if rows.checked_mul(cols) != Some(w.len()) {
        return Err(QuantError::BadShape(format!(
            "{} weights for a {rows} × {cols} matrix",
            w.len()
        )));
    }
    let gs = grid.group();
    if !cols.is_multiple_of(gs) {
        return Err(QuantError::BadShape(format!(
            "{cols} columns are not a multiple of the group size {gs}"
        )));
    }
    if let Some(i) = w.iter().position(|v| !v.is_finite()) {
        return Err(QuantError::BadWeights(format!(
            "weight [{}, {}] is {}",
            i / cols,
            i % cols,
            w[i]
        )));
    }
    Ok(())
}

fn check_params(p: &GptqParams) -> Result<(), QuantError> {
    if !(p.damp.is_finite() && p.damp >= 0.0) {
        return Err(QuantError::BadParams(format!(
            "damping {} must be finite and ≥ 0",
            p.damp
        )));
    }
    if p.block == 0 {
        return Err(QuantError::BadParams("block size 0".into()));
    }
    Ok(())
}

/// The Hessian as a matrix, after checking it fits and is usable.
fn checked_hessian(h: &Hessian, cols: usize) -> Result<Mat<f64>, QuantError> {
    if let Some(why) = h.problem() {
        return Err(QuantError::BadHessian(why.to_string()));
    }
    if h.cols() != cols {
        return Err(QuantError::BadShape(format!(
            "Hessian of {} inputs for a matrix of {cols} columns",
            h.cols()
        )));
    }
    if h.n_samples() == 0 {
        return Err(QuantError::BadHessian("no calibration rows".into()));
    }
    let m = h.matrix();
    for j in 0..cols {
        for i in 0..cols {
            if !m[(i, j)].is_finite() {
                return Err(QuantError::BadHessian(format!(
                    "H[{i}, {j}] is {} (non-finite calibration activations)",
                    m[(i, j)]
                )));
            }
        }
    }
    Ok(m)
}

/// Round-to-nearest, group by group, as the runtime's `quantize_row` does.
fn rtn(
    w: &[f32],
    rows: usize,
    cols: usize,
    grid: Grid,
) -> Result<(Vec<u8>, Vec<GroupParams>), QuantError> {
    let gs = grid.group();
    let mut codes = vec![0u8; rows * cols];
    let mut params = Vec::with_capacity(rows * cols / gs);
    for (i, (xs, cs)) in w
        .chunks_exact(gs)
        .zip(codes.chunks_exact_mut(gs))
        .enumerate()
    {
        let p = grid.rtn_group(xs, cs);
        check_group(p, i / (cols / gs), i % (cols / gs))?;
        params.push(p);
    }
    Ok((codes, params))
}

/// A group whose scale or minimum overflowed f16 cannot be stored.
fn check_group(p: GroupParams, row: usize, group: usize) -> Result<(), QuantError> {
    if p.is_finite() {
        Ok(())
    } else {
        Err(QuantError::BadWeights(format!(
            "row {row}, group {group}: the weights are too large for f16 scales"
        )))
    }
}

/// `tr(ΔW H ΔWᵀ) / tr(W H Wᵀ)` (H = I when absent); 0 when W H Wᵀ is 0.
fn proxy_error(w: &[f32], q: &[f32], rows: usize, cols: usize, h: Option<&Mat<f64>>) -> f64 {
    let wm = Mat::<f64>::from_fn(rows, cols, |r, c| w[r * cols + c] as f64);
    let dm = Mat::<f64>::from_fn(rows, cols, |r, c| {
        w[r * cols + c] as f64 - q[r * cols + c] as f64
    });
    let quad = |m: &Mat<f64>| -> f64 {
        match h {
            Some(h) => {
                let mh = m * h;
                let mut s = 0.0;
                for c in 0..cols {
                    for r in 0..rows {
                        s += mh[(r, c)] * m[(r, c)];
                    }
                }
                s
            }
            None => m.squared_norm_l2(),
        }
    };
    let den = quad(&wm);
    if den > 0.0 {
        quad(&dm) / den
    } else {
        0.0
    }
}
