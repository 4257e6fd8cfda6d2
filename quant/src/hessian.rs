//! The GPTQ Hessian of one linear layer's input: `H = 2/N · Σ x xᵀ` over the
//! N calibration rows seen, accumulated in f64, with P-GPTQ's prefix skip.

use faer::linalg::matmul::triangular::{matmul, BlockStructure};
use faer::{Accum, Mat, MatRef, Par};

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
        // Xᵀ (cols × rows): faer is column-major, so its storage is exactly
        // the row-major X.
        let xt = MatRef::from_column_major_slice(xs, self.cols, rows);
        // The sequence's Xᵀ X in f32 (as the reference accumulates; a few
        // hundred terms per entry), then added into the f64 total, so the
        // sum over many sequences keeps f64 precision.
        let part = self
            .part
            .get_or_insert_with(|| Mat::zeros(self.cols, self.cols));
        matmul(
            part.as_mut(),
            BlockStructure::TriangularLower,
            Accum::Replace,
            xt,
            BlockStructure::Rectangular,
            xt.transpose(),
            BlockStructure::Rectangular,
            1.0,
            Par::rayon(0),
        );
        for j in 0..self.cols {
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
