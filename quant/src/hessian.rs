//! The GPTQ Hessian of one linear layer's input: `H = 2/N · Σ x xᵀ` over the
//! N calibration rows seen, accumulated in f64, with P-GPTQ's prefix
//! treatment (the first positions of each sequence left out or weighted).

use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

/// `H = 2/N Σ x xᵀ` (f64, `cols × cols`) over the N calibration rows added.
///
/// With P-GPTQ's prefix weighting ([`Hessian::add_sequence_weighted`]) it
/// is the weighted mean `H = 2/W Σ_t w_t x_t x_tᵀ`, `W = Σ_t w_t`: the
/// first positions of a sequence have weight λ, the others 1 (λ = 0 is the
/// skip, and then `W = N`).
///
/// Only the lower triangle of the raw sum is accumulated (it is symmetric);
/// [`Hessian::matrix`] returns the full matrix. Input that does not match
/// the declared shape is not added: the Hessian remembers the problem and
/// [`crate::quantize`] reports it, so the accumulation loop needs no error
/// handling of its own.
#[derive(Clone, Debug)]
pub struct Hessian {
    cols: usize,
    /// Σ x xᵀ, lower triangle valid.
    sum: Mat<f64>,
    /// Rows added with a non-zero weight.
    n: usize,
    /// W, the sum of the rows' weights (equal to `n` without weighting).
    weight: f64,
    problem: Option<String>,
    /// Scratch for one sequence's f32 product (allocated on first use).
    part: Option<Mat<f32>>,
}

impl Hessian {
    /// An empty Hessian for rows of `cols` inputs.
    pub fn new(cols: usize) -> Hessian {
        Hessian {
            cols,
            sum: Mat::zeros(cols, cols),
            n: 0,
            weight: 0.0,
            problem: None,
            part: None,
        }
    }

    /// Adds the rows of one calibration sequence: `x.len() == n_tok * cols`,
    /// row `t` is the input at position `t`. The first `skip` positions are
    /// left out (P-GPTQ; 0 for plain GPTQ) and N grows by `n_tok − skip`
    /// (nothing when `skip ≥ n_tok`).
    ///
    /// A length mismatch adds nothing and marks the Hessian unusable (see
    /// [`Hessian::problem`]).
    pub fn add_sequence(&mut self, x: &[f32], n_tok: usize, skip: usize) {
        self.add_sequence_weighted(x, n_tok, skip, 0.0);
    }

    /// As [`Hessian::add_sequence`], with the first `prefix` positions
    /// weighted by `weight` (λ) instead of left out: the raw sum grows by
    /// `Σ_{t ≥ prefix} x_t x_tᵀ + λ Σ_{t < prefix} x_t x_tᵀ` and W by
    /// `n_tok − prefix + λ·prefix`. λ = 0 is exactly `add_sequence(x, n_tok,
    /// prefix)` and λ = 1 exactly `add_sequence(x, n_tok, 0)`. λ must be
    /// finite and non-negative (anything else adds nothing and marks the
    /// Hessian unusable).
    pub fn add_sequence_weighted(&mut self, x: &[f32], n_tok: usize, prefix: usize, weight: f32) {
        if n_tok.checked_mul(self.cols) != Some(x.len()) {
            self.mark(format!(
                "add_sequence got {} values for {n_tok} tokens of {} inputs",
                x.len(),
                self.cols
            ));
            return;
        }
        if !(weight.is_finite() && weight >= 0.0) {
            self.mark(format!("prefix weight {weight} is not a finite λ ≥ 0"));
            return;
        }
        let (skip, prefix) = if weight == 1.0 {
            (0, 0)
        } else if weight == 0.0 {
            (prefix, 0)
        } else {
            (0, prefix.min(n_tok))
        };
        if skip >= n_tok || self.cols == 0 {
            return;
        }
        let cols = self.cols;
        // Xᵀ (cols × rows): faer is column-major, so its storage is exactly
        // the row-major X.
        let body = MatRef::from_column_major_slice(
            &x[(skip + prefix) * cols..],
            cols,
            n_tok - skip - prefix,
        );
        let head = MatRef::from_column_major_slice(&x[..prefix * cols], cols, prefix);
        // The sequence's Xᵀ X in f32 (as the reference accumulates; a few
        // hundred terms per entry), then added into the f64 total, so the
        // sum over many sequences keeps f64 precision.
        let part = self.part.get_or_insert_with(|| Mat::zeros(cols, cols));
        let mut accum = Accum::Replace;
        for (xt, alpha) in [(body, 1.0f32), (head, weight)] {
            if xt.ncols() == 0 {
                continue;
            }
            matmul(
                part.as_mut(),
                BlockStructure::TriangularLower,
                accum,
                xt,
                BlockStructure::Rectangular,
                xt.transpose(),
                BlockStructure::Rectangular,
                alpha,
                Par::rayon(0),
            );
            accum = Accum::Add;
        }
        if accum == Accum::Replace {
            return;
        }
        for j in 0..cols {
            let src = &part
                .col(j)
                .try_as_col_major()
                .expect("owned matrices are column-major")
                .as_slice()[j..];
            let dst = &mut self
                .sum
                .col_mut(j)
                .try_as_col_major_mut()
                .expect("owned matrices are column-major")
                .as_slice_mut()[j..];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += s as f64;
            }
        }
        self.n += n_tok - skip;
        self.weight += (n_tok - skip - prefix) as f64 + weight as f64 * prefix as f64;
    }

    fn mark(&mut self, problem: String) {
        if self.problem.is_none() {
            self.problem = Some(problem);
        }
    }

    /// N, the number of rows (token positions) accumulated with a non-zero
    /// weight.
    pub fn n_samples(&self) -> usize {
        self.n
    }

    /// W, the sum of the accumulated rows' weights (N without prefix
    /// weighting); `H = 2/W Σ w x xᵀ`.
    pub fn weight_sum(&self) -> f64 {
        self.weight
    }

    /// The number of inputs (the matrix is `cols × cols`).
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// Why the Hessian cannot be used, when an `add_sequence` call had the
    /// wrong length.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// The full matrix `H = 2/W Σ w x xᵀ`, column-major (all zero when
    /// W = 0).
    pub fn matrix(&self) -> Mat<f64> {
        let scale = if self.weight == 0.0 {
            0.0
        } else {
            2.0 / self.weight
        };
        let s = &self.sum;
        Mat::from_fn(self.cols, self.cols, |i, j| {
            let v = if i >= j { s[(i, j)] } else { s[(j, i)] };
            v * scale
        })
    }

    /// The raw sum `Σ w x xᵀ` (full, symmetric), row-major, for tests and
    /// diagnostics.
    pub fn raw_sum(&self) -> Vec<f64> {
        let s = &self.sum;
        let c = self.cols;
        (0..c * c)
            .map(|k| {
                let (i, j) = (k / c, k % c);
                if i >= j {
                    s[(i, j)]
                } else {
                    s[(j, i)]
                }
            })
            .collect()
    }
}
