//! The GPTQ Hessian of one linear layer's input: `H = 2/N · Σ x xᵀ` over the
//! N calibration rows seen, accumulated in f64, with P-GPTQ's prefix skip.

use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, Par};

/// `H = 2/N Σ x xᵀ` (f64, `cols × cols`) over the N calibration rows added.
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
    n: usize,
    problem: Option<String>,
}

impl Hessian {
    /// An empty Hessian for rows of `cols` inputs.
    pub fn new(cols: usize) -> Hessian {
        Hessian {
            cols,
            sum: Mat::zeros(cols, cols),
            n: 0,
            problem: None,
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
        if n_tok.checked_mul(self.cols) != Some(x.len()) {
            if self.problem.is_none() {
                self.problem = Some(format!(
                    "add_sequence got {} values for {n_tok} tokens of {} inputs",
                    x.len(),
                    self.cols
                ));
            }
            return;
        }
        if skip >= n_tok || self.cols == 0 {
            return;
        }
        let rows = n_tok - skip;
        let xs = &x[skip * self.cols..];
        // X is rows × cols; faer is column-major, so build Xᵀ's storage
        // directly: column t of Xᵀ is row t of X.
        let xt = Mat::<f64>::from_fn(self.cols, rows, |c, t| xs[t * self.cols + c] as f64);
        matmul(
            self.sum.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Add,
            xt.as_ref(),
            BlockStructure::Rectangular,
            xt.transpose(),
            BlockStructure::Rectangular,
            1.0,
            Par::rayon(0),
        );
        self.n += rows;
    }

    /// N, the number of rows (token positions) accumulated.
    pub fn n_samples(&self) -> usize {
        self.n
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

    /// The full matrix `H = 2/N Σ x xᵀ`, column-major (all zero when N = 0).
    pub fn matrix(&self) -> Mat<f64> {
        let scale = if self.n == 0 {
            0.0
        } else {
            2.0 / self.n as f64
        };
        let s = &self.sum;
        Mat::from_fn(self.cols, self.cols, |i, j| {
            let v = if i >= j { s[(i, j)] } else { s[(j, i)] };
            v * scale
        })
    }

    /// The raw sum `Σ x xᵀ` (full, symmetric), row-major, for tests and
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
