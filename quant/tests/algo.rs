//! Tests of the quantization algorithms on small random matrices: GPTQ
//! against a plain, unblocked f64 implementation of the same equations
//! (explicit inverse, immediate updates), the prefix skip of the Hessian,
//! GPTQ vs RTN, act-order, degenerate inputs and errors, and the
//! Hessian-weighted scale search.

use tern_quant::pipeline::tensor_grid;
use tern_quant::{
    quantize, GptqParams, Grid, GroupParams, Hessian, QuantError, ScaleSearch, Scheme,
};

/// xorshift64*: deterministic test data without extra crates.
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    /// Uniform in [-1, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 52) as f64 - 1.0
    }
    /// Roughly normal (sum of four uniforms, unit variance).
    fn normal(&mut self) -> f64 {
        (self.unit() + self.unit() + self.unit() + self.unit()) * 0.866
    }
}

fn random_weights(rng: &mut Rng, rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|_| (rng.normal() * 0.05) as f32)
        .collect()
}

/// Calibration rows with correlated inputs of uneven scale: x = z·A with a
/// random mixing matrix A and per-input scales; every 17th input is scaled
/// by `outlier` (8 makes them dominate H, as outlier channels do).
fn correlated_inputs_with(rng: &mut Rng, n: usize, cols: usize, outlier: f64) -> Vec<f32> {
    let k = cols / 2;
    let a: Vec<f64> = (0..k * cols).map(|_| rng.normal()).collect();
    let scale: Vec<f64> = (0..cols)
        .map(|c| {
            if c % 17 == 3 {
                outlier
            } else {
                0.5 + (c % 5) as f64 * 0.3
            }
        })
        .collect();
    let mut x = vec![0.0f32; n * cols];
    for t in 0..n {
        let z: Vec<f64> = (0..k).map(|_| rng.normal()).collect();
        for c in 0..cols {
            let mut v = 0.3 * rng.normal();
            for (i, zi) in z.iter().enumerate() {
                v += zi * a[i * cols + c];
            }
            x[t * cols + c] = (v * scale[c] / (k as f64).sqrt()) as f32;
        }
    }
    x
}

fn correlated_inputs(rng: &mut Rng, n: usize, cols: usize) -> Vec<f32> {
    correlated_inputs_with(rng, n, cols, 8.0)
}

fn hessian_of(x: &[f32], n_seq: usize, n_tok: usize, cols: usize, skip: usize) -> Hessian {
    let mut h = Hessian::new(cols);
    for s in 0..n_seq {
        h.add_sequence(&x[s * n_tok * cols..(s + 1) * n_tok * cols], n_tok, skip);
    }
    h
}

/// Row-major `n × n` H from the crate's Hessian.
fn h_rows(h: &Hessian) -> Vec<Vec<f64>> {
    let n = h.cols();
    let raw = h.raw_sum();
    let s = 2.0 / h.n_samples() as f64;
    (0..n)
        .map(|i| (0..n).map(|j| raw[i * n + j] * s).collect())
        .collect()
}

/// Gauss-Jordan inverse with partial pivoting.
fn inverse(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut m: Vec<Vec<f64>> = a.to_vec();
    let mut inv: Vec<Vec<f64>> = (0..n)
        .map(|i| (0..n).map(|j| if i == j { 1.0 } else { 0.0 }).collect())
        .collect();
    for c in 0..n {
        let p = (c..n)
            .max_by(|&i, &j| m[i][c].abs().total_cmp(&m[j][c].abs()))
            .unwrap();
        m.swap(c, p);
        inv.swap(c, p);
        let d = m[c][c];
        for j in 0..n {
            m[c][j] /= d;
            inv[c][j] /= d;
        }
        for i in 0..n {
            if i != c {
                let f = m[i][c];
                if f != 0.0 {
                    for j in 0..n {
                        m[i][j] -= f * m[c][j];
                        inv[i][j] -= f * inv[c][j];
                    }
                }
            }
        }
    }
    inv
}

/// Upper U with A = Uᵀ U (plain Cholesky–Banachiewicz on the lower factor).
fn cholesky_upper(a: &[Vec<f64>]) -> Vec<Vec<f64>> {
    let n = a.len();
    let mut l = vec![vec![0.0; n]; n];
    for i in 0..n {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i][k] * l[j][k]).sum();
            if i == j {
                l[i][i] = (a[i][i] - s).sqrt();
            } else {
                l[i][j] = (a[i][j] - s) / l[j][j];
            }
        }
    }
    (0..n).map(|i| (0..n).map(|j| l[j][i]).collect()).collect()
}

/// The same GPTQ equations written plainly: explicit H⁻¹, its Cholesky
/// factor, one column at a time with every later column updated at once.
/// Returns codes (row-major, natural order) and per-(row, group) params.
fn reference_gptq(
    w: &[f32],
    rows: usize,
    cols: usize,
    grid: Grid,
    h: &Hessian,
    damp: f64,
    act_order: bool,
) -> (Vec<u8>, Vec<GroupParams>) {
    let gs = grid.group();
    let ng = cols / gs;
    let mut h = h_rows(h);
    let mut wm: Vec<Vec<f64>> = (0..rows)
        .map(|r| (0..cols).map(|c| w[r * cols + c] as f64).collect())
        .collect();
    for i in 0..cols {
        if h[i][i] == 0.0 {
            h[i][i] = 1.0;
            for row in wm.iter_mut() {
                row[i] = 0.0;
            }
        }
    }
    let mut params = vec![GroupParams::default(); rows * ng];
    let mut perm: Vec<usize> = (0..cols).collect();
    if act_order {
        for r in 0..rows {
            for g in 0..ng {
                let xs: Vec<f32> = (0..gs).map(|k| wm[r][g * gs + k] as f32).collect();
                params[r * ng + g] = grid.params(&xs);
            }
        }
        perm.sort_by(|&a, &b| h[b][b].total_cmp(&h[a][a]));
        wm = wm
            .iter()
            .map(|row| perm.iter().map(|&c| row[c]).collect())
            .collect();
        h = perm
            .iter()
            .map(|&i| perm.iter().map(|&j| h[i][j]).collect())
            .collect();
    }
    let mean = (0..cols).map(|i| h[i][i]).sum::<f64>() / cols as f64;
    for (i, row) in h.iter_mut().enumerate() {
        row[i] += damp * mean;
    }
    let u = cholesky_upper(&inverse(&h));
    let mut codes = vec![0u8; rows * cols];
    for j in 0..cols {
        if !act_order && j % gs == 0 {
            for r in 0..rows {
                let xs: Vec<f32> = (0..gs).map(|k| wm[r][j + k] as f32).collect();
                params[r * ng + j / gs] = grid.params(&xs);
            }
        }
        let col = perm[j];
        for r in 0..rows {
            let gp = params[r * ng + col / gs];
            let q = grid.code(gp, wm[r][j]);
            codes[r * cols + col] = q;
            let err = (wm[r][j] - grid.decode(gp, q) as f64) / u[j][j];
            for k in j + 1..cols {
                wm[r][k] -= err * u[j][k];
            }
        }
    }
    (codes, params)
}

const GRIDS: [Grid; 8] = [
    Grid::Q4_0,
    Grid::Q4_1,
    Grid::Q8_0,
    Grid::Tern {
        bits: 2,
        group: 32,
        sym: false,
    },
    Grid::Tern {
        bits: 3,
        group: 64,
        sym: true,
    },
    Grid::Tern {
        bits: 4,
        group: 128,
        sym: false,
    },
    Grid::Tern {
        bits: 4,
        group: 32,
        sym: true,
    },
    Grid::Tern {
        bits: 8,
        group: 64,
        sym: false,
    },
];

/// GPTQ with the grid's fixed scale rule, as the reference implements it.
fn params(act_order: bool, block: usize) -> GptqParams {
    GptqParams {
        act_order,
        block,
        scale_search: ScaleSearch::Off,
        refit: 0,
        ..GptqParams::default()
    }
}

#[test]
fn gptq_matches_the_plain_f64_equations() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let (rows, cols) = (24, 256);
    let x = correlated_inputs(&mut rng, 4 * 96, cols);
    let h = hessian_of(&x, 4, 96, cols, 0);
    let mut checked = 0;
    for grid in GRIDS {
        for act_order in [false, true] {
            let w = random_weights(&mut rng, rows, cols);
            let (want, want_params) = reference_gptq(&w, rows, cols, grid, &h, 0.01, act_order);
            // Lazy blocks of one group, two groups and the default: same result.
            for block in [grid.group(), 2 * grid.group(), 128] {
                let (q, rep) = quantize(
                    &w,
                    rows,
                    cols,
                    grid,
                    Scheme::Gptq,
                    Some(&h),
                    &params(act_order, block),
                )
                .unwrap();
                let diff = q.codes().iter().zip(&want).filter(|(a, b)| a != b).count();
                assert!(
                    diff <= 1,
                    "{grid:?} act_order={act_order} block={block}: {diff} codes differ"
                );
                let scales_equal = q
                    .scales()
                    .iter()
                    .zip(&want_params)
                    .filter(|(a, b)| **a != b.d)
                    .count();
                assert!(scales_equal <= 1, "{grid:?}: {scales_equal} scales differ");
                assert_eq!(rep.damp, 0.01);
                assert_eq!(rep.dead_cols, 0);
                checked += 1;
            }
        }
    }
    assert_eq!(checked, GRIDS.len() * 6);
}

/// `n_seq` sequences of `n_tok` inputs on a grid of 1/8 in [-4, 4], so
/// every product and partial sum of a Hessian is exact in f32 and f64 and
/// identities hold bit for bit; the first two rows of every sequence are 8×
/// larger, as BOS-like outliers are.
fn exact_prefix_inputs(rng: &mut Rng, n_seq: usize, n_tok: usize, cols: usize) -> Vec<f32> {
    let mut x: Vec<f32> = correlated_inputs(rng, n_seq * n_tok, cols)
        .iter()
        .map(|v| ((v * 8.0).round() / 8.0).clamp(-4.0, 4.0))
        .collect();
    for s in 0..n_seq {
        for v in &mut x[s * n_tok * cols..(s * n_tok + 2) * cols] {
            *v *= 8.0;
        }
    }
    x
}

#[test]
fn prefix_skip_removes_exactly_the_skipped_rows() {
    let mut rng = Rng(7);
    let (cols, n_seq, n_tok, skip) = (48, 5, 20, 4);
    let x = exact_prefix_inputs(&mut rng, n_seq, n_tok, cols);
    let full = hessian_of(&x, n_seq, n_tok, cols, 0);
    let part = hessian_of(&x, n_seq, n_tok, cols, skip);
    assert_eq!(full.n_samples(), n_seq * n_tok);
    assert_eq!(part.n_samples(), n_seq * (n_tok - skip));
    // H·N/2 is the raw sum Σ x xᵀ; H_full·N_full − H_skip·N_skip is exactly
    // 2 Σ over the first `skip` rows of every sequence of x xᵀ.
    let (sf, sp) = (full.raw_sum(), part.raw_sum());
    let (hf, hp) = (h_rows(&full), h_rows(&part));
    let (nf, np) = (full.n_samples() as f64, part.n_samples() as f64);
    for i in 0..cols {
        for j in 0..cols {
            let mut prefix = 0.0f64;
            for s in 0..n_seq {
                for t in 0..skip {
                    let row = &x[(s * n_tok + t) * cols..];
                    prefix += row[i] as f64 * row[j] as f64;
                }
            }
            assert_eq!(
                2.0 * sf[i * cols + j] - 2.0 * sp[i * cols + j],
                2.0 * prefix,
                "[{i},{j}]"
            );
            let got = hf[i][j] * nf - hp[i][j] * np;
            assert!(
                (got - 2.0 * prefix).abs() <= 1e-12 * (hf[i][i] * hf[j][j]).sqrt() * nf,
                "H[{i},{j}]: {got} vs {}",
                2.0 * prefix
            );
        }
    }
    // A sequence no longer than the skip adds nothing.
    let mut h = Hessian::new(cols);
    h.add_sequence(&x[..3 * cols], 3, 4);
    assert_eq!(h.n_samples(), 0);
    // P-GPTQ is GPTQ run on the skipped Hessian.
    let w = random_weights(&mut rng, 8, cols - 16);
    let grid = Grid::Tern {
        bits: 4,
        group: 32,
        sym: false,
    };
    let run = |scheme, h| quantize(&w, 8, 32, grid, scheme, Some(h), &GptqParams::default());
    let mut h32 = Hessian::new(32);
    let mut h32s = Hessian::new(32);
    for s in 0..n_seq {
        let seq: Vec<f32> = (0..n_tok)
            .flat_map(|t| x[(s * n_tok + t) * cols..][..32].to_vec())
            .collect();
        h32.add_sequence(&seq, n_tok, 0);
        h32s.add_sequence(&seq, n_tok, skip);
    }
    let (p, _) = run(Scheme::PGptq, &h32s).unwrap();
    let (g, _) = run(Scheme::Gptq, &h32s).unwrap();
    let (g_full, _) = run(Scheme::Gptq, &h32).unwrap();
    assert_eq!(p, g);
    assert_ne!(p.codes(), g_full.codes());
}

#[test]
fn prefix_weight_changes_h_by_exactly_lambda_minus_one_times_the_prefix_rows() {
    let mut rng = Rng(11);
    let (cols, n_seq, n_tok, prefix) = (48, 5, 20, 4);
    // With power-of-two λ every sum is exact too.
    let x = exact_prefix_inputs(&mut rng, n_seq, n_tok, cols);
    let weighted = |lambda: f32| {
        let mut h = Hessian::new(cols);
        for s in 0..n_seq {
            h.add_sequence_weighted(
                &x[s * n_tok * cols..(s + 1) * n_tok * cols],
                n_tok,
                prefix,
                lambda,
            );
        }
        assert!(h.problem().is_none());
        h
    };
    let full = hessian_of(&x, n_seq, n_tok, cols, 0);
    let sf = full.raw_sum();
    let mut pre = vec![0.0f64; cols * cols];
    for s in 0..n_seq {
        for t in 0..prefix {
            let row = &x[(s * n_tok + t) * cols..][..cols];
            for i in 0..cols {
                for j in 0..cols {
                    pre[i * cols + j] += row[i] as f64 * row[j] as f64;
                }
            }
        }
    }
    for lambda in [0.0f32, 0.5, 1.0, 2.0, 8.0, 3.0, 32.0] {
        let h = weighted(lambda);
        let sw = h.raw_sum();
        let exact = lambda.log2().fract() == 0.0 && lambda <= 8.0 || lambda == 0.0;
        for k in 0..cols * cols {
            let want = (lambda as f64 - 1.0) * pre[k];
            let got = sw[k] - sf[k];
            if exact {
                assert_eq!(got, want, "λ {lambda} [{k}]");
            } else {
                let (i, j) = (k / cols, k % cols);
                let tol = 1e-6 * (sw[i * cols + i] * sw[j * cols + j]).sqrt();
                assert!(
                    (got - want).abs() <= tol,
                    "λ {lambda} [{k}]: {got} vs {want}"
                );
            }
        }
        // W = Σ w: N − prefix rows + λ · prefix rows; H = 2/W Σ w x xᵀ.
        let w = (n_seq * (n_tok - prefix)) as f64 + lambda as f64 * (n_seq * prefix) as f64;
        assert_eq!(h.weight_sum(), w, "λ {lambda}");
        let m = h.matrix();
        for i in 0..cols {
            for j in 0..cols {
                assert_eq!(
                    m[(i, j)],
                    sw[i * cols + j] * (2.0 / w),
                    "λ {lambda} [{i},{j}]"
                );
            }
        }
    }
    // λ = 0 is exactly the skip and λ = 1 exactly plain GPTQ's Hessian,
    // bit for bit, N included.
    let skip = hessian_of(&x, n_seq, n_tok, cols, prefix);
    let (h0, h1) = (weighted(0.0), weighted(1.0));
    assert_eq!(h0.raw_sum(), skip.raw_sum());
    assert_eq!(h0.matrix(), skip.matrix());
    assert_eq!(h0.n_samples(), skip.n_samples());
    assert_eq!(h1.raw_sum(), full.raw_sum());
    assert_eq!(h1.matrix(), full.matrix());
    assert_eq!(h1.n_samples(), full.n_samples());
    assert_eq!(weighted(8.0).n_samples(), full.n_samples());
    // A prefix longer than the sequence weights the whole sequence.
    let mut h = Hessian::new(cols);
    h.add_sequence_weighted(&x[..3 * cols], 3, 4, 2.0);
    assert_eq!(h.n_samples(), 3);
    assert_eq!(h.weight_sum(), 6.0);
    // A negative or non-finite λ adds nothing and marks the Hessian.
    for bad in [-1.0f32, f32::NAN, f32::INFINITY] {
        let mut h = Hessian::new(cols);
        h.add_sequence_weighted(&x[..n_tok * cols], n_tok, prefix, bad);
        assert_eq!(h.n_samples(), 0);
        assert!(
            h.problem().is_some_and(|p| p.contains("prefix weight")),
            "{bad}"
        );
    }
}

#[test]
fn gptq_beats_rtn_on_correlated_inputs() {
    let mut rng = Rng(99);
    let (rows, cols) = (64, 256);
    for (grid, outlier) in GRIDS.into_iter().flat_map(|g| [(g, 1.0), (g, 8.0)]) {
        let x = correlated_inputs_with(&mut rng, 512, cols, outlier);
        let h = hessian_of(&x, 4, 128, cols, 0);
        let w = random_weights(&mut rng, rows, cols);
        for act_order in [false, true] {
            let (q, rep) = quantize(
                &w,
                rows,
                cols,
                grid,
                Scheme::Gptq,
                Some(&h),
                &params(act_order, 128),
            )
            .unwrap();
            let (r, rep_rtn) = quantize(
                &w,
                rows,
                cols,
                grid,
                Scheme::Rtn,
                Some(&h),
                &GptqParams::default(),
            )
            .unwrap();
            assert_eq!(rep_rtn.err, rep_rtn.err_rtn_proxy);
            assert_eq!(rep.err_rtn_proxy, rep_rtn.err);
            // The report's proxy error, recomputed here.
            let hm = h_rows(&h);
            let proxy = |deq: &[f32]| -> f64 {
                let (mut num, mut den) = (0.0, 0.0);
                for r in 0..rows {
                    for i in 0..cols {
                        for j in 0..cols {
                            let (wi, wj) = (w[r * cols + i] as f64, w[r * cols + j] as f64);
                            let di = wi - deq[r * cols + i] as f64;
                            let dj = wj - deq[r * cols + j] as f64;
                            num += di * hm[i][j] * dj;
                            den += wi * hm[i][j] * wj;
                        }
                    }
                }
                num / den
            };
            let e = proxy(&q.dequantize());
            assert!(
                (e - rep.err).abs() <= 1e-9 * e.max(1e-30),
                "{e} vs {}",
                rep.err
            );
            let er = proxy(&r.dequantize());
            assert!((er - rep.err_rtn_proxy).abs() <= 1e-9 * er.max(1e-30));
            println!("{grid:?} act_order={act_order} outlier={outlier}: RTN {er:.3e} GPTQ {e:.3e}");
            // Known weakness, not a bug (the plain-equations test agrees):
            // at 2 bits with dynamic groups, strong outlier inputs feed so
            // much error into later groups that their ranges grow and GPTQ
            // ends above RTN (0.154 vs 0.131 here); act-order fixes it.
            let known_bad = grid.bits() == 2 && !act_order && outlier > 1.0;
            if !known_bad {
                assert!(
                    e < er,
                    "{grid:?} act_order={act_order}: GPTQ {e} ≥ RTN {er}"
                );
            }
            assert!(rep.gptq_loss > 0.0);
        }
    }
}

#[test]
fn act_order_keeps_natural_layout_with_static_groups() {
    let mut rng = Rng(5);
    let (rows, cols) = (16, 128);
    let x = correlated_inputs(&mut rng, 256, cols);
    let h = hessian_of(&x, 2, 128, cols, 0);
    let w = random_weights(&mut rng, rows, cols);
    for grid in GRIDS {
        let (q, _) = quantize(
            &w,
            rows,
            cols,
            grid,
            Scheme::Gptq,
            Some(&h),
            &params(true, 128),
        )
        .unwrap();
        let gs = grid.group();
        for r in 0..rows {
            for g in 0..cols / gs {
                let want = grid.params(&w[r * cols + g * gs..r * cols + (g + 1) * gs]);
                let i = r * (cols / gs) + g;
                assert_eq!((q.scales()[i], q.mins()[i]), (want.d, want.m), "{grid:?}");
            }
        }
    }
}

#[test]
fn degenerate_inputs() {
    let mut rng = Rng(11);
    let (rows, cols) = (8, 128);
    let mut x = correlated_inputs(&mut rng, 128, cols);
    let h_alive = hessian_of(&x, 2, 64, cols, 0);
    // Inputs 5 and 40 are never active.
    for t in 0..128 {
        x[t * cols + 5] = 0.0;
        x[t * cols + 40] = 0.0;
    }
    let h = hessian_of(&x, 2, 64, cols, 0);
    let mut w = random_weights(&mut rng, rows, cols);
    // Row 2 constant, row 3 all zero.
    for c in 0..cols {
        w[2 * cols + c] = 0.125;
        w[3 * cols + c] = 0.0;
    }
    for grid in GRIDS.into_iter().chain([Grid::Tern {
        bits: 2,
        group: 64,
        sym: true,
    }]) {
        for act_order in [false, true] {
            let (q, rep) = quantize(
                &w,
                rows,
                cols,
                grid,
                Scheme::Gptq,
                Some(&h),
                &params(act_order, 128),
            )
            .unwrap();
            assert_eq!(rep.dead_cols, 2);
            let d = q.dequantize();
            assert!(d.iter().all(|v| v.is_finite()));
            assert!(
                d[3 * cols..4 * cols].iter().all(|&v| v == 0.0),
                "{grid:?}: zero row"
            );
            if grid.has_min() && !matches!(grid, Grid::Tern { sym: true, .. }) {
                // Asymmetric grids store a constant row exactly when no
                // error reaches it: with every input alive, GPTQ keeps it.
                let (q, _) = quantize(
                    &w,
                    rows,
                    cols,
                    grid,
                    Scheme::Gptq,
                    Some(&h_alive),
                    &params(act_order, 128),
                )
                .unwrap();
                let d = q.dequantize();
                assert!(
                    d[2 * cols..3 * cols].iter().all(|&v| v == 0.125),
                    "{grid:?}"
                );
            }
            assert!(
                rep.err < rep.err_rtn_proxy * 1.0001 + 1e-12,
                "{grid:?}: {rep:?}"
            );
        }
    }
}

#[test]
fn rank_deficient_hessian_raises_the_damping() {
    let mut rng = Rng(3);
    let (rows, cols) = (4, 64);
    // 10 rows of 64 inputs: rank 10, H singular without damping.
    let x = correlated_inputs(&mut rng, 10, cols);
    let h = hessian_of(&x, 1, 10, cols, 0);
    let w = random_weights(&mut rng, rows, cols);
    let p = GptqParams {
        damp: 0.0,
        ..GptqParams::default()
    };
    let (_, rep) = quantize(&w, rows, cols, Grid::Q4_0, Scheme::Gptq, Some(&h), &p).unwrap();
    assert!(rep.damp > 0.0, "{rep:?}");
    // With the default damping it factors the first time.
    let (_, rep) = quantize(
        &w,
        rows,
        cols,
        Grid::Q4_0,
        Scheme::Gptq,
        Some(&h),
        &GptqParams::default(),
    )
    .unwrap();
    assert_eq!(rep.damp, 0.01);
}

#[test]
fn bad_inputs_are_errors() {
    let h = Hessian::new(64);
    let w = vec![0.1f32; 4 * 64];
    let g = Grid::Q4_0;
    let p = GptqParams::default();
    let e = |r: Result<_, QuantError>| r.map(|_| ()).unwrap_err();
    assert!(matches!(
        e(quantize(&w, 4, 64, g, Scheme::Gptq, None, &p)),
        QuantError::BadHessian(_)
    ));
    assert!(matches!(
        e(quantize(&w, 4, 64, g, Scheme::Gptq, Some(&h), &p)),
        QuantError::BadHessian(_)
    ));
    assert!(matches!(
        e(quantize(&w, 5, 64, g, Scheme::Rtn, None, &p)),
        QuantError::BadShape(_)
    ));
    assert!(matches!(
        e(quantize(&w[..4 * 48], 4, 48, g, Scheme::Rtn, None, &p)),
        QuantError::BadShape(_)
    ));
    assert!(matches!(
        e(quantize(&[], 0, 64, g, Scheme::Rtn, None, &p)),
        QuantError::BadShape(_)
    ));
    let mut nan = w.clone();
    nan[7] = f32::NAN;
    assert!(matches!(
        e(quantize(&nan, 4, 64, g, Scheme::Rtn, None, &p)),
        QuantError::BadWeights(_)
    ));
    let big = vec![1e6f32; 64];
    assert!(matches!(
        e(quantize(&big, 1, 64, g, Scheme::Rtn, None, &p)),
        QuantError::BadWeights(_)
    ));
    for (bits, group) in [(5u8, 32usize), (4, 256), (4, 16)] {
        let grid = Grid::Tern {
            bits,
            group,
            sym: false,
        };
        assert!(matches!(
            e(quantize(&w, 4, 64, grid, Scheme::Rtn, None, &p)),
            QuantError::BadGrid(_)
        ));
    }
    // A malformed add_sequence poisons the Hessian.
    let mut bad = Hessian::new(64);
    bad.add_sequence(&[0.0; 100], 2, 0);
    assert!(bad.problem().is_some());
    assert!(matches!(
        e(quantize(&w, 4, 64, g, Scheme::Gptq, Some(&bad), &p)),
        QuantError::BadHessian(_)
    ));
    let mut inf = Hessian::new(64);
    let mut x = vec![0.5f32; 128];
    x[3] = f32::INFINITY;
    inf.add_sequence(&x, 2, 0);
    assert!(matches!(
        e(quantize(&w, 4, 64, g, Scheme::Gptq, Some(&inf), &p)),
        QuantError::BadHessian(_)
    ));
    let wrong = Hessian::new(32);
    assert!(matches!(
        e(quantize(&w, 4, 64, g, Scheme::Gptq, Some(&wrong), &p)),
        QuantError::BadShape(_)
    ));
    for bad_p in [
        GptqParams { damp: -1.0, ..p },
        GptqParams {
            damp: f64::NAN,
            ..p
        },
        GptqParams { block: 0, ..p },
    ] {
        let mut ok = Hessian::new(64);
        ok.add_sequence(&[0.25f32; 64 * 3], 3, 0);
        assert!(matches!(
            e(quantize(&w, 4, 64, g, Scheme::Gptq, Some(&ok), &bad_p)),
            QuantError::BadParams(_)
        ));
    }
}

#[test]
fn fitted_picks_the_largest_group_that_divides() {
    let g = |group| Grid::Tern {
        bits: 4,
        group,
        sym: false,
    };
    assert_eq!(g(128).fitted(576), Some(g(64)));
    assert_eq!(g(128).fitted(1536), Some(g(128)));
    assert_eq!(g(128).fitted(96), Some(g(32)));
    assert_eq!(g(64).fitted(160), Some(g(32)));
    assert_eq!(g(32).fitted(48), None);
    assert_eq!(Grid::Q4_0.fitted(576), Some(Grid::Q4_0));
    assert_eq!(Grid::Q8_0.fitted(100), None);
}

#[test]
fn scale_search_is_never_worse_than_the_fixed_rule() {
    let mut rng = Rng(0x5eed);
    let mut better = 0;
    let mut total = 0;
    for grid in GRIDS {
        let gs = grid.group();
        for _ in 0..200 {
            // Heavy-tailed values and weights spread over three decades.
            let xs: Vec<f32> = (0..gs)
                .map(|_| (rng.normal() * rng.normal().abs() * 0.05) as f32)
                .collect();
            let ws: Vec<f64> = (0..gs).map(|_| 10f64.powf(3.0 * rng.unit())).collect();
            let fixed = grid.params(&xs);
            let found = grid.search_params(&xs, &ws);
            assert!(found.is_finite(), "{grid:?}");
            let (ef, es) = (
                grid.weighted_error(fixed, &xs, &ws),
                grid.weighted_error(found, &xs, &ws),
            );
            assert!(es <= ef, "{grid:?}: search {es} > fixed rule {ef}");
            if let Grid::Tern {
                sym: true, bits, ..
            } = grid
            {
                // The symmetric tern grid keeps m = −d·2^(bits−1).
                assert_eq!(
                    found.m.to_f32(),
                    -found.d.to_f32() * (1u32 << (bits - 1)) as f32
                );
            }
            better += usize::from(es < 0.999 * ef);
            total += 1;
        }
    }
    // The fixed rule is rarely the weighted optimum: the search must find
    // something better most of the time (it would not if it did nothing).
    assert!(
        better * 2 > total,
        "better in only {better} of {total} groups"
    );
}

#[test]
fn scale_search_is_exact_on_values_already_on_a_grid() {
    // Values on a grid whose extreme code is unused: the fixed rule's scale
    // misses the grid, the search finds it and the error is exactly zero.
    let d = 0.03125f32; // exact in f16
    let cases: Vec<(Grid, Vec<f32>)> = vec![
        // Q4_0: x = d·k, k in −7..=7 (the rule maps the absmax to −8).
        (
            Grid::Q4_0,
            (0..32).map(|i| d * ((i % 15) as f32 - 7.0)).collect(),
        ),
        // Q4_1: x = d·q + m, q in 0..=13.
        (
            Grid::Q4_1,
            (0..32).map(|i| d * (i % 14) as f32 - 0.25).collect(),
        ),
        // tern asymmetric 3-bit: q in 0..=5.
        (
            Grid::Tern {
                bits: 3,
                group: 64,
                sym: false,
            },
            (0..64).map(|i| d * (i % 6) as f32 + 0.5).collect(),
        ),
        // tern symmetric 4-bit: x = d·(c − 8), c in 0..=15 (GPTQ's rule
        // takes d = 2·amax/15 ≠ d).
        (
            Grid::Tern {
                bits: 4,
                group: 32,
                sym: true,
            },
            (0..32).map(|i| d * ((i % 16) as f32 - 8.0)).collect(),
        ),
    ];
    for (grid, xs) in cases {
        let ws: Vec<f64> = (0..xs.len()).map(|i| 1.0 + i as f64).collect();
        let fixed = grid.weighted_error(grid.params(&xs), &xs, &ws);
        assert!(
            fixed > 0.0,
            "{grid:?}: the case is not trivial for the rule"
        );
        let p = grid.search_params(&xs, &ws);
        assert_eq!(grid.weighted_error(p, &xs, &ws), 0.0, "{grid:?}: {p:?}");
    }
    // An all-zero group keeps the rule's parameters.
    let z = [0.0f32; 32];
    assert_eq!(
        Grid::Q4_0.search_params(&z, &[1.0; 32]),
        Grid::Q4_0.params(&z)
    );
}

#[test]
fn gptq_with_the_scale_search_lowers_its_loss() {
    let mut rng = Rng(99);
    let (rows, cols) = (32, 256);
    let x = correlated_inputs(&mut rng, 4 * 96, cols);
    let h = hessian_of(&x, 4, 96, cols, 0);
    let w = random_weights(&mut rng, rows, cols);
    for grid in [Grid::Q4_0, Grid::Q4_1, GRIDS[5]] {
        for act_order in [false, true] {
            let loss = |s| {
                let p = GptqParams {
                    act_order,
                    scale_search: s,
                    refit: 0,
                    ..GptqParams::default()
                };
                let (_, r) = quantize(&w, rows, cols, grid, Scheme::Gptq, Some(&h), &p).unwrap();
                r.err
            };
            let off = loss(ScaleSearch::Off);
            for s in [ScaleSearch::Loss, ScaleSearch::Diag] {
                let on = loss(s);
                if act_order {
                    // Static groups keep the fixed rule.
                    assert_eq!(on, off, "{grid:?} {s:?}");
                } else {
                    // Searched on the error-updated weights GPTQ then
                    // rounds: the proxy error must drop clearly.
                    assert!(on < 0.9 * off, "{grid:?} {s:?}: {on} vs {off}");
                }
            }
        }
    }
}

#[test]
fn the_q4_0_mixture_keeps_early_ffn_down_in_q4_1() {
    // 30 blocks: blocks 0, 1, 2 (30/8 = 3) store ffn_down as Q4_1.
    for il in 0..30 {
        for l in ["attn_q", "ffn_up", "ffn_down"] {
            let want = if l == "ffn_down" && il < 3 {
                Grid::Q4_1
            } else {
                Grid::Q4_0
            };
            assert_eq!(tensor_grid(Grid::Q4_0, true, l, il, 30), want, "{il} {l}");
            assert_eq!(tensor_grid(Grid::Q4_0, false, l, il, 30), Grid::Q4_0);
        }
    }
    // Fewer than 8 blocks: nothing changes; other grids are never mixed.
    assert_eq!(tensor_grid(Grid::Q4_0, true, "ffn_down", 0, 7), Grid::Q4_0);
    assert_eq!(tensor_grid(GRIDS[5], true, "ffn_down", 0, 30), GRIDS[5]);
}

#[test]
fn the_scale_refit_never_raises_the_proxy_error() {
    let mut rng = Rng(0xfeed);
    let (rows, cols) = (32, 256);
    let x = correlated_inputs(&mut rng, 4 * 96, cols);
    let h = hessian_of(&x, 4, 96, cols, 0);
    let w = random_weights(&mut rng, rows, cols);
    for grid in GRIDS {
        for act_order in [false, true] {
            let err = |refit| {
                let p = GptqParams {
                    act_order,
                    refit,
                    ..GptqParams::default()
                };
                let (_, r) = quantize(&w, rows, cols, grid, Scheme::Gptq, Some(&h), &p).unwrap();
                r.err
            };
            let (e0, e1, e3) = (err(0), err(1), err(3));
            // The refit is kept per row only where it lowers the loss on the
            // stored values; the f32 decoding of d·q + m may round once more.
            assert!(
                e1 <= e0 * (1.0 + 1e-6),
                "{grid:?} act_order={act_order}: {e1} > {e0}"
            );
            // Further rounds keep each row's best.
            assert!(
                e3 <= e1 * (1.0 + 1e-12),
                "{grid:?} act_order={act_order}: {e3} > {e1}"
            );
            // And it does something: GPTQ's scales are not the joint optimum.
            assert!(
                e1 < 0.999 * e0,
                "{grid:?} act_order={act_order}: {e1} vs {e0}"
            );
        }
    }
}
