//! [`refit_scales`]: the joint least-squares refit of every group's scale
//! (and minimum) of a row once GPTQ has fixed the row's codes, against the
//! layer's full Hessian.
//!
//! With the codes `q` of a row fixed, its decoded weights are linear in the
//! stored group parameters: `ŵ_k = d_g·c_k (+ m_g)` for `k` in group `g`,
//! with `c_k` the code as the grid decodes it (`q − 8` for Q4_0, `q − 2^(b−1)`
//! for tern's symmetric grid, `q` itself for the grids with a minimum). The
//! layer loss `(w − ŵ)ᵀ H (w − ŵ)` of the row is then a quadratic in the
//! `G` (or `2G`) parameters `θ`, minimized by the normal equations
//! `M θ = b` with `M = Aᵀ H A`, `b = Aᵀ H w` and `A` the `cols × G` (or
//! `2G`) matrix whose column for `d_g` holds `c_k` on group `g`'s columns
//! (and whose column for `m_g` holds ones there).
//!
//! GPTQ chose each scale before the columns of its group were rounded, and
//! only against the diagonal of `H` (the scale search) or not at all; this
//! step sees all the codes and the full `H`. `w` is the row *before* GPTQ's
//! error feedback: the objective is the layer's output error, not GPTQ's
//! per-column loss.
//!
//! The solution is rounded to f16 as stored, and a row keeps it only if its
//! loss, evaluated with the stored values, is lower than before; so the
//! refit never raises the layer objective.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par, Side};
use half::f16;
use rayon::prelude::*;

use crate::grid::{Grid, GroupParams};

/// What [`refit_scales`] did to one matrix.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct RefitStats {
    /// Rows whose parameters changed.
    pub rows_changed: usize,
    /// `Σ_rows (w − ŵ)ᵀ H (w − ŵ)` before the refit.
    pub loss_before: f64,
    /// The same after it (≤ `loss_before`).
    pub loss_after: f64,
}

/// Refits `params` (one per row and group, row-major) of the `rows × cols`
/// matrix with codes `codes` (row-major, natural column order) to the
/// original weights `w` (row-major) under the Hessian `h` (`cols × cols`,
/// undamped). Rows whose refit does not lower their loss keep their
/// parameters.
pub(crate) fn refit_scales(
    w: &[f32],
    rows: usize,
    cols: usize,
    grid: Grid,
    h: &Mat<f64>,
    codes: &[u8],
    params: &mut [GroupParams],
) -> RefitStats {
    refit_in_blocks(w, rows, cols, grid, h, codes, params, REFIT_BYTES)
}

/// [`refit_scales`] with blocks of rows sized for `bytes`.
#[allow(clippy::too_many_arguments)]
fn refit_in_blocks(
    w: &[f32],
    rows: usize,
    cols: usize,
    grid: Grid,
    h: &Mat<f64>,
    codes: &[u8],
    params: &mut [GroupParams],
    bytes: usize,
) -> RefitStats {
    // Rows are independent: take them in blocks whose normal equations
    // (np² per row) and row buffers (four rows × cols matrices) fit in
    // REFIT_BYTES, so that a wide matrix with small groups (Q4_0 at 11008
    // columns: 344 unknowns per row) does not need gigabytes.
    let ng = cols / grid.group();
    let per_row = ((2 * ng) * (2 * ng) + 4 * cols) * size_of::<f64>();
    let block = (bytes / per_row.max(1)).clamp(16, rows.max(16));
    let mut stats = RefitStats::default();
    let mut r0 = 0;
    while r0 < rows {
        let r1 = (r0 + block).min(rows);
        let s = refit_block(
            &w[r0 * cols..r1 * cols],
            r1 - r0,
            cols,
            grid,
            h,
            &codes[r0 * cols..r1 * cols],
            &mut params[r0 * ng..r1 * ng],
        );
        stats.rows_changed += s.rows_changed;
        stats.loss_before += s.loss_before;
        stats.loss_after += s.loss_after;
        r0 = r1;
    }
    stats
}

/// The memory [`refit_scales`] aims to stay within per block of rows.
const REFIT_BYTES: usize = 64 << 20;

/// [`refit_scales`] on one block of rows.
fn refit_block(
    w: &[f32],
    rows: usize,
    cols: usize,
    grid: Grid,
    h: &Mat<f64>,
    codes: &[u8],
    params: &mut [GroupParams],
) -> RefitStats {
    let gs = grid.group();
    let ng = cols / gs;
    let asym = grid.has_min() && !matches!(grid, Grid::Tern { sym: true, .. });
    // Unknowns per row: d_0..d_{G−1}, then m_0..m_{G−1} on asymmetric grids.
    let np = if asym { 2 * ng } else { ng };

    // Column-major (rows × cols): the code coefficient of d, and W.
    let c = Mat::<f64>::from_fn(rows, cols, |r, k| coefficient(grid, codes[r * cols + k]));
    let wm = Mat::<f64>::from_fn(rows, cols, |r, k| w[r * cols + k] as f64);
    // HW[r, k] = (H w_r)_k (H is symmetric).
    let mut hw = Mat::<f64>::zeros(rows, cols);
    matmul(
        hw.as_mut(),
        Accum::Replace,
        wm.as_ref(),
        h.as_ref(),
        1.0,
        Par::rayon(0),
    );

    // Per row: M (np × np, row-major, only the d–d, d–m and m–m blocks
    // filled as below) and b (np).
    let mut m = vec![0.0f64; rows * np * np];
    let mut b = vec![0.0f64; rows * np];
    let mut wh_w = vec![0.0f64; rows];
    let mut acc = vec![0.0f64; rows];
    // d–d block: M[g, j] = Σ_{k∈g} c_k (Σ_{l∈j} H_kl c_l) = Σ_{k∈g} c_k Z_j[k]
    // with Z_j = C[:, j] · H[j, :], one product per group j.
    let mut z = Mat::<f64>::zeros(rows, cols);
    for j in 0..ng {
        matmul(
            z.as_mut(),
            Accum::Replace,
            c.as_ref().subcols(j * gs, gs),
            h.as_ref().subrows(j * gs, gs),
            1.0,
            Par::rayon(0),
        );
        for g in 0..ng {
            acc.fill(0.0);
            for k in g * gs..(g + 1) * gs {
                let (ck, zk) = (c.col(k), z.col(k));
                for (r, a) in acc.iter_mut().enumerate() {
                    *a += ck[r] * zk[r];
                }
            }
            for (r, &a) in acc.iter().enumerate() {
                m[r * np * np + g * np + j] = a;
            }
        }
    }
    // b_d[g] = Σ_{k∈g} c_k (Hw)_k; b_m[g] = Σ_{k∈g} (Hw)_k; wᵀHw.
    for g in 0..ng {
        for k in g * gs..(g + 1) * gs {
            let (ck, hk, wk) = (c.col(k), hw.col(k), wm.col(k));
            for r in 0..rows {
                b[r * np + g] += ck[r] * hk[r];
                if asym {
                    b[r * np + ng + g] += hk[r];
                }
                wh_w[r] += wk[r] * hk[r];
            }
        }
    }
    if asym {
        // S[k, j] = Σ_{l∈j} H_kl; M[d_g, m_j] = Σ_{k∈g} c_k S[k, j];
        // M[m_g, m_j] = Σ_{k∈g} S[k, j] (the same for every row).
        let s = Mat::<f64>::from_fn(cols, ng, |k, j| {
            (j * gs..(j + 1) * gs).map(|l| h[(k, l)]).sum::<f64>()
        });
        let mut mm = vec![0.0f64; ng * ng];
        for g in 0..ng {
            for j in 0..ng {
                mm[g * ng + j] = (g * gs..(g + 1) * gs).map(|k| s[(k, j)]).sum();
            }
        }
        for r in 0..rows {
            let mr = &mut m[r * np * np..(r + 1) * np * np];
            for g in 0..ng {
                for j in 0..ng {
                    let dm: f64 = (g * gs..(g + 1) * gs).map(|k| c[(r, k)] * s[(k, j)]).sum();
                    mr[g * np + ng + j] = dm;
                    mr[(ng + j) * np + g] = dm;
                    mr[(ng + g) * np + ng + j] = mm[g * ng + j];
                }
            }
        }
    }

    // Per row: solve, round to f16, keep if the stored values lower the loss.
    let results: Vec<(f64, f64, Option<Vec<GroupParams>>)> = (0..rows)
        .into_par_iter()
        .map(|r| {
            let mr = &m[r * np * np..(r + 1) * np * np];
            let br = &b[r * np..(r + 1) * np];
            let old = &params[r * ng..(r + 1) * ng];
            let loss = |ps: &[GroupParams]| {
                let th = theta(ps, asym);
                let mut q = wh_w[r];
                for i in 0..np {
                    let mi = &mr[i * np..(i + 1) * np];
                    let mth: f64 = mi.iter().zip(&th).map(|(a, t)| a * t).sum();
                    q += th[i] * (mth - 2.0 * br[i]);
                }
                q
            };
            let before = loss(old);
            let new = solve(mr, br, &theta(old, asym))
                .map(|th| stored(grid, &th, ng, asym))
                .filter(|p| p.iter().all(|p| p.is_finite()));
            match new {
                Some(p) => {
                    let after = loss(&p);
                    // A margin so that the f32 decoding's own rounding cannot
                    // turn a negligible gain into a loss.
                    if after < before - 1e-9 * before.abs() {
                        (before, after, Some(p))
                    } else {
                        (before, before, None)
                    }
                }
                None => (before, before, None),
            }
        })
        .collect();
    let mut stats = RefitStats::default();
    for (r, (before, after, p)) in results.into_iter().enumerate() {
        stats.loss_before += before;
        stats.loss_after += after;
        if let Some(p) = p {
            params[r * ng..(r + 1) * ng].copy_from_slice(&p);
            stats.rows_changed += 1;
        }
    }
    stats
}

/// The coefficient of the group scale in code `q`'s decoded value.
fn coefficient(grid: Grid, q: u8) -> f64 {
    match grid {
        Grid::Q4_0 => q as f64 - 8.0,
        Grid::Q8_0 => (q as i8) as f64,
        Grid::Tern {
            sym: true, bits, ..
        } => q as f64 - (1u32 << (bits - 1)) as f64,
        Grid::Q4_1 | Grid::Tern { .. } => q as f64,
    }
}

/// The unknowns `θ` of stored parameters.
fn theta(ps: &[GroupParams], asym: bool) -> Vec<f64> {
    let mut th: Vec<f64> = ps.iter().map(|p| p.d.to_f64()).collect();
    if asym {
        th.extend(ps.iter().map(|p| p.m.to_f64()));
    }
    th
}

/// `θ` rounded to the stored f16 parameters (tern's symmetric minimum
/// follows from the stored scale, as `Grid::params` stores it).
fn stored(grid: Grid, th: &[f64], ng: usize, asym: bool) -> Vec<GroupParams> {
    (0..ng)
        .map(|g| {
            let d = f16::from_f64(th[g]);
            let m = match grid {
                _ if asym => f16::from_f64(th[ng + g]),
                Grid::Tern { bits, .. } => f16::from_f32(-d.to_f32() * (1u32 << (bits - 1)) as f32),
                _ => f16::ZERO,
            };
            GroupParams { d, m }
        })
        .collect()
}

/// Solves the symmetric `M θ = b` (`M` row-major `n × n`) by Cholesky.
/// An unknown whose diagonal is 0 (a group whose codes all decode through
/// a zero coefficient, or whose inputs were never active) has a zero row
/// and column in the positive semi-definite `M`: it does not affect the
/// loss, so it keeps its old value `old[i]` and the rest is solved without
/// it. Returns `None` when the rest is not positive definite.
fn solve(mr: &[f64], br: &[f64], old: &[f64]) -> Option<Vec<f64>> {
    let n = old.len();
    let act: Vec<usize> = (0..n).filter(|&i| mr[i * n + i] > 0.0).collect();
    let mut th = old.to_vec();
    if act.is_empty() {
        return Some(th);
    }
    let a = Mat::<f64>::from_fn(act.len(), act.len(), |i, j| mr[act[i] * n + act[j]]);
    let llt = a.llt(Side::Lower).ok()?;
    let rhs = Mat::<f64>::from_fn(act.len(), 1, |i, _| br[act[i]]);
    let x = faer::linalg::solvers::Solve::solve(&llt, &rhs);
    for (i, &k) in act.iter().enumerate() {
        th[k] = x[(i, 0)];
    }
    th.iter().all(|t| t.is_finite()).then_some(th)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Rng(u64);
    impl Rng {
        fn unit(&mut self) -> f64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        }
    }

    const GRIDS: [Grid; 5] = [
        Grid::Q4_0,
        Grid::Q4_1,
        Grid::Q8_0,
        Grid::Tern {
            bits: 3,
            group: 32,
            sym: true,
        },
        Grid::Tern {
            bits: 2,
            group: 32,
            sym: false,
        },
    ];

    /// A positive definite `H = Xᵀ X / n` from correlated random inputs.
    fn hessian(rng: &mut Rng, cols: usize) -> Mat<f64> {
        let n = 4 * cols;
        let x: Vec<f64> = (0..n * cols).map(|_| rng.unit()).collect();
        // Correlate neighbouring inputs and vary their scale.
        let xc = |t: usize, k: usize| {
            let s = 1.0 + (k % 7) as f64;
            s * (x[t * cols + k] + 0.8 * x[t * cols + (k + 1) % cols])
        };
        Mat::from_fn(cols, cols, |i, j| {
            (0..n).map(|t| xc(t, i) * xc(t, j)).sum::<f64>() / n as f64
        })
    }

    fn random_codes(rng: &mut Rng, grid: Grid, len: usize) -> Vec<u8> {
        let levels = 1u32 << grid.bits();
        (0..len)
            .map(|_| ((rng.unit() * 0.5 + 0.5) * levels as f64).min(levels as f64 - 1.0) as u8)
            .collect()
    }

    /// `(w − ŵ)ᵀ H (w − ŵ)` of row `r` with the runtime's decoded values.
    fn row_loss(
        grid: Grid,
        w: &[f32],
        codes: &[u8],
        ps: &[GroupParams],
        h: &Mat<f64>,
        cols: usize,
        r: usize,
    ) -> f64 {
        let gs = grid.group();
        let e: Vec<f64> = (0..cols)
            .map(|k| {
                let p = ps[r * (cols / gs) + k / gs];
                w[r * cols + k] as f64 - grid.decode(p, codes[r * cols + k]) as f64
            })
            .collect();
        (0..cols)
            .map(|i| (0..cols).map(|j| e[i] * h[(i, j)] * e[j]).sum::<f64>())
            .sum()
    }

    /// Plain Gaussian elimination with partial pivoting.
    fn gauss(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Vec<f64> {
        let n = b.len();
        for i in 0..n {
            let p = (i..n)
                .max_by(|&x, &y| a[x][i].abs().total_cmp(&a[y][i].abs()))
                .unwrap();
            a.swap(i, p);
            b.swap(i, p);
            let (top, below) = a.split_at_mut(i + 1);
            let pivot = &top[i];
            for (r, row) in below.iter_mut().enumerate() {
                let f = row[i] / pivot[i];
                for (v, &p) in row[i..].iter_mut().zip(&pivot[i..]) {
                    *v -= f * p;
                }
                b[i + 1 + r] -= f * b[i];
            }
        }
        let mut x = vec![0.0; n];
        for i in (0..n).rev() {
            let s: f64 = (i + 1..n).map(|c| a[i][c] * x[c]).sum();
            x[i] = (b[i] - s) / a[i][i];
        }
        x
    }

    #[test]
    fn refit_matches_plain_least_squares() {
        let mut rng = Rng(0x5eed_1234_abcd_ef01);
        let (rows, cols) = (3, 96);
        let h = hessian(&mut rng, cols);
        for grid in GRIDS {
            let gs = grid.group();
            let ng = cols / gs;
            let asym = grid.has_min() && !matches!(grid, Grid::Tern { sym: true, .. });
            let codes = random_codes(&mut rng, grid, rows * cols);
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit() as f32).collect();
            // Start far from the optimum so that every row takes the refit.
            let start = GroupParams {
                d: f16::from_f64(5.0),
                m: f16::from_f64(if asym { 3.0 } else { 0.0 }),
            };
            let mut ps = vec![start; rows * ng];
            if let Grid::Tern {
                sym: true, bits, ..
            } = grid
            {
                for p in &mut ps {
                    p.m = f16::from_f32(-p.d.to_f32() * (1u32 << (bits - 1)) as f32);
                }
            }
            let st = refit_scales(&w, rows, cols, grid, &h, &codes, &mut ps);
            assert_eq!(st.rows_changed, rows, "{grid:?}");
            for r in 0..rows {
                // A: cols × np, dense.
                let np = if asym { 2 * ng } else { ng };
                let a = |k: usize, i: usize| -> f64 {
                    let g = k / gs;
                    if i < ng {
                        if i == g {
                            coefficient(grid, codes[r * cols + k])
                        } else {
                            0.0
                        }
                    } else if i - ng == g {
                        1.0
                    } else {
                        0.0
                    }
                };
                let ha: Vec<Vec<f64>> = (0..cols)
                    .map(|k| {
                        (0..np)
                            .map(|i| (0..cols).map(|l| h[(k, l)] * a(l, i)).sum())
                            .collect()
                    })
                    .collect();
                let m: Vec<Vec<f64>> = (0..np)
                    .map(|i| {
                        (0..np)
                            .map(|j| (0..cols).map(|k| a(k, i) * ha[k][j]).sum())
                            .collect()
                    })
                    .collect();
                let b: Vec<f64> = (0..np)
                    .map(|i| (0..cols).map(|k| ha[k][i] * w[r * cols + k] as f64).sum())
                    .collect();
                let th = gauss(m, b);
                for g in 0..ng {
                    let p = ps[r * ng + g];
                    assert_eq!(p.d, f16::from_f64(th[g]), "{grid:?} row {r} group {g}");
                    if asym {
                        assert_eq!(p.m, f16::from_f64(th[ng + g]), "{grid:?} row {r} group {g}");
                    }
                }
            }
        }
    }

    #[test]
    fn refit_never_raises_the_loss() {
        let mut rng = Rng(42);
        let (rows, cols) = (16, 128);
        for trial in 0..4 {
            let h = hessian(&mut rng, cols);
            for grid in GRIDS {
                let gs = grid.group();
                let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit() as f32).collect();
                // Round-to-nearest codes and scales: already a good start, so
                // some rows may gain little or nothing.
                let mut codes = vec![0u8; rows * cols];
                let ps0: Vec<GroupParams> = w
                    .chunks_exact(gs)
                    .zip(codes.chunks_exact_mut(gs))
                    .map(|(xs, cs)| grid.rtn_group(xs, cs))
                    .collect();
                let mut ps = ps0.clone();
                let st = refit_scales(&w, rows, cols, grid, &h, &codes, &mut ps);
                assert!(st.loss_after <= st.loss_before, "{grid:?}");
                let (mut before, mut after) = (0.0, 0.0);
                for r in 0..rows {
                    let b = row_loss(grid, &w, &codes, &ps0, &h, cols, r);
                    let a = row_loss(grid, &w, &codes, &ps, &h, cols, r);
                    // Exact on the stored values; the f32 decoding of
                    // d·q + m may round each weight once more.
                    assert!(
                        a <= b * (1.0 + 1e-6),
                        "{grid:?} trial {trial} row {r}: {a} > {b}"
                    );
                    before += b;
                    after += a;
                }
                assert!(
                    after < before,
                    "{grid:?} trial {trial}: {after} vs {before}"
                );
            }
        }
    }

    #[test]
    fn blocks_of_rows_give_the_same_result() {
        let mut rng = Rng(77);
        let (rows, cols) = (40, 96);
        let h = hessian(&mut rng, cols);
        for grid in [Grid::Q4_0, Grid::Q4_1] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit() as f32).collect();
            let mut codes = vec![0u8; rows * cols];
            let ps0: Vec<GroupParams> = w
                .chunks_exact(32)
                .zip(codes.chunks_exact_mut(32))
                .map(|(xs, cs)| grid.rtn_group(xs, cs))
                .collect();
            let (mut whole, mut blocks) = (ps0.clone(), ps0.clone());
            refit_in_blocks(&w, rows, cols, grid, &h, &codes, &mut whole, usize::MAX);
            // One byte: the smallest block, 16 rows (three blocks here).
            refit_in_blocks(&w, rows, cols, grid, &h, &codes, &mut blocks, 1);
            assert_eq!(whole, blocks, "{grid:?}");
            assert_ne!(whole, ps0, "{grid:?}");
        }
    }

    #[test]
    fn dead_groups_keep_their_parameters() {
        // Inputs 32..64 never active: their group's parameters do not
        // affect the loss and must stay as they were.
        let mut rng = Rng(9);
        let (rows, cols) = (4, 96);
        let mut h = hessian(&mut rng, cols);
        for i in 32..64 {
            for j in 0..cols {
                h[(i, j)] = 0.0;
                h[(j, i)] = 0.0;
            }
        }
        for grid in [Grid::Q4_0, Grid::Q4_1] {
            let w: Vec<f32> = (0..rows * cols).map(|_| rng.unit() as f32).collect();
            let mut codes = vec![0u8; rows * cols];
            let ps0: Vec<GroupParams> = w
                .chunks_exact(32)
                .zip(codes.chunks_exact_mut(32))
                .map(|(xs, cs)| grid.rtn_group(xs, cs))
                .collect();
            let mut ps = ps0.clone();
            let st = refit_scales(&w, rows, cols, grid, &h, &codes, &mut ps);
            assert!(st.rows_changed > 0, "{grid:?}");
            for r in 0..rows {
                assert_eq!(ps[r * 3 + 1], ps0[r * 3 + 1], "{grid:?} row {r}");
            }
        }
    }
}
