//! Tests of llama.cpp's importance-weighted rule as tern reproduces it
//! (`Grid::ggml_weighted_group`, `ggml_importance`, `weighted_rtn`,
//! `Scheme::WeightedRtn`, `ScaleSearch::Ggml`): hand-derived results on
//! small groups, and the scheme against the functions it is built from.
//! (Bit-identity with llama.cpp's own files is checked on the real model by
//! `examples/imatrix_check.rs`.)

use half::f16;
use tern_quant::{
    ggml_importance, quantize, weighted_rtn, GptqParams, Grid, Hessian, ScaleSearch, Scheme,
};

#[test]
fn values_on_the_grid_keep_the_first_candidate() {
    // max = −8 maps to code −8 with iscale = 1: every value is a code, the
    // least-squares scale is exactly 1 and no candidate can beat zero error.
    let xs: Vec<f32> = (0..32).map(|i| (i % 16) as f32 - 8.0).collect();
    let qw = vec![1.0f32; 32];
    let mut codes = [0u8; 32];
    let p = Grid::Q4_0
        .ggml_weighted_group(&xs, &qw, &mut codes)
        .unwrap();
    assert_eq!(p.d, f16::ONE);
    let want: Vec<u8> = (0..32).map(|i| (i % 16) as u8).collect();
    assert_eq!(codes.to_vec(), want);
}

#[test]
fn the_weights_decide_between_candidates() {
    // xs = [1.0, 0.3] (worked by hand). Candidates −(8 + 0.1 i)/1.0 give
    // codes (l₀, l₁) = (−7, −2) for i ≤ −6, (−8, −2) for −5 ≤ i ≤ 3 and
    // (−8, −3) for i ≥ 4. With weights (1, 1) their scores (Σwxl)²/Σwl² are
    // 7.6²/53 = 1.08981, 8.6²/68 = 1.08765 and 8.9²/73 = 1.08507: (−7, −2)
    // wins (first at i = −9), scale −7.6/53.
    let xs = [1.0f32, 0.3];
    let mut codes = [0u8; 2];
    let p = Grid::Q4_0
        .ggml_weighted_group(&xs, &[1.0, 1.0], &mut codes)
        .unwrap();
    assert_eq!(codes, [1, 6]);
    assert_eq!(p.d, f16::from_f32(-7.6 / 53.0));
    // With weights (0, 1) only 0.3 counts: (−8, −2) at i = 0 already fits
    // it exactly (score 0.09 = Σwx²), and (−7, −2) only ties, so the first
    // candidate stays, with scale −0.6/4.
    let p = Grid::Q4_0
        .ggml_weighted_group(&xs, &[0.0, 1.0], &mut codes)
        .unwrap();
    assert_eq!(codes, [0, 6]);
    assert_eq!(p.d, f16::from_f32(-0.15));
    // tern's symmetric 3-bit grid: n = 4, codes l + 4. With iscale −4 the
    // codes are (−4, −1), exact for x = (1.0, 0.25): scale −1/4.
    let g3 = Grid::Tern {
        bits: 3,
        group: 32,
        sym: true,
    };
    let p = g3
        .ggml_weighted_group(&[1.0, 0.25], &[1.0, 1.0], &mut codes)
        .unwrap();
    assert_eq!(codes, [0, 3]);
    assert_eq!(p.d, f16::from_f32(-0.25));
    assert_eq!(p.m, f16::from_f32(1.0));
    assert_eq!(g3.decode(p, 0), 1.0);
    assert_eq!(g3.decode(p, 3), 0.25);
}

#[test]
fn zero_groups_and_grids_with_a_minimum() {
    let mut codes = [9u8; 32];
    let p = Grid::Q4_0
        .ggml_weighted_group(&[0.0; 32], &[1.0; 32], &mut codes)
        .unwrap();
    assert_eq!(p.d, f16::ZERO);
    assert_eq!(codes, [0u8; 32]);
    assert!(Grid::Q4_1
        .ggml_weighted_group(&[1.0; 32], &[1.0; 32], &mut codes)
        .is_none());
}

#[test]
fn importance_is_imatrix_times_sqrt_of_mean_square_plus_square() {
    // Row (3, 4): σ² = 12.5.
    let mut out = [0.0f32; 2];
    ggml_importance(&[3.0, 4.0], &[1.0, 2.0], &mut out);
    assert_eq!(out, [21.5f32.sqrt(), 2.0 * 28.5f32.sqrt()]);
}

/// A Hessian from a few rows of inputs with uneven channel scales.
fn hessian(cols: usize) -> Hessian {
    let mut s = 0x1234_5678u64;
    let mut rnd = || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 11) as f32 / (1u64 << 53) as f32 * 2.0 - 1.0
    };
    let n = 96;
    let x: Vec<f32> = (0..n * cols)
        .map(|i| rnd() * (1.0 + (i % cols % 7) as f32 * 3.0))
        .collect();
    let mut h = Hessian::new(cols);
    h.add_sequence(&x, n, 0);
    h
}

fn weights(rows: usize, cols: usize) -> Vec<f32> {
    (0..rows * cols)
        .map(|i| ((i * 7919 % 1000) as f32 / 1000.0 - 0.5) * 0.1)
        .collect()
}

#[test]
fn weighted_rtn_uses_the_hessian_diagonal_as_the_importance() {
    let (rows, cols) = (8, 64);
    let h = hessian(cols);
    let w = weights(rows, cols);
    let hm = h.matrix();
    let diag: Vec<f32> = (0..cols).map(|i| hm[(i, i)] as f32).collect();
    for grid in [Grid::Q4_0, Grid::Q4_1] {
        let (codes, params) = weighted_rtn(&w, rows, cols, grid, &diag).unwrap();
        let p = GptqParams::default();
        let (q, rep) = quantize(&w, rows, cols, grid, Scheme::WeightedRtn, Some(&h), &p).unwrap();
        assert_eq!(q.codes(), &codes[..], "{grid:?}");
        let d: Vec<f16> = params.iter().map(|p| p.d).collect();
        assert_eq!(q.scales(), &d[..], "{grid:?}");
        // Weighted by what the layer sees, it beats plain RTN's proxy error.
        assert!(rep.err < rep.err_rtn_proxy, "{grid:?}: {rep:?}");
        // And it differs from RTN (plain RTN ignores the Hessian).
        let (r, _) = quantize(&w, rows, cols, grid, Scheme::Rtn, Some(&h), &p).unwrap();
        assert_ne!(r.codes(), q.codes(), "{grid:?}");
    }
    // It needs the Hessian, and an importance of the right length.
    let p = GptqParams::default();
    assert!(quantize(&w, rows, cols, Grid::Q4_0, Scheme::WeightedRtn, None, &p).is_err());
    assert!(weighted_rtn(&w, rows, cols, Grid::Q4_0, &diag[1..]).is_err());
    assert!(weighted_rtn(&w, rows, cols, Grid::Q4_0, &vec![f32::NAN; cols]).is_err());
}

#[test]
fn gptq_with_the_ggml_rule_takes_its_scales() {
    // Without error feedback reaching a group (one group per row), GPTQ's
    // dynamic scale is exactly the rule's scale on the row's weights.
    let (rows, cols) = (8, 32);
    let h = hessian(cols);
    let w = weights(rows, cols);
    let hm = h.matrix();
    let diag: Vec<f32> = (0..cols).map(|i| hm[(i, i)] as f32).collect();
    let (_, want) = weighted_rtn(&w, rows, cols, Grid::Q4_0, &diag).unwrap();
    let p = GptqParams {
        scale_search: ScaleSearch::Ggml,
        refit: 0,
        ..GptqParams::default()
    };
    let (q, _) = quantize(&w, rows, cols, Grid::Q4_0, Scheme::Gptq, Some(&h), &p).unwrap();
    let d: Vec<f16> = want.iter().map(|p| p.d).collect();
    assert_eq!(q.scales(), &d[..]);
    // Without the sqrt(σ² + x²) factor the weights differ, and so do some
    // scales.
    let p = GptqParams {
        scale_search: ScaleSearch::GgmlDiag,
        ..p
    };
    let (q2, _) = quantize(&w, rows, cols, Grid::Q4_0, Scheme::Gptq, Some(&h), &p).unwrap();
    assert_ne!(q2.scales(), q.scales());
    let mut codes = vec![0u8; cols];
    for r in 0..rows {
        let xs = &w[r * cols..(r + 1) * cols];
        let g = Grid::Q4_0
            .ggml_weighted_group(xs, &diag, &mut codes)
            .unwrap();
        assert_eq!(q2.scales()[r], g.d, "row {r}");
    }
}

#[test]
fn static_ggml_scales_are_weighted_rtns_and_gptq_picks_the_codes() {
    let (rows, cols) = (16, 128);
    let h = hessian(cols);
    let w = weights(rows, cols);
    let base = GptqParams {
        scale_search: ScaleSearch::GgmlStatic,
        refit: 0,
        ..GptqParams::default()
    };
    let (wr, wrep) = quantize(
        &w,
        rows,
        cols,
        Grid::Q4_0,
        Scheme::WeightedRtn,
        Some(&h),
        &base,
    )
    .unwrap();
    for act_order in [false, true] {
        let p = GptqParams { act_order, ..base };
        let (q, rep) = quantize(&w, rows, cols, Grid::Q4_0, Scheme::Gptq, Some(&h), &p).unwrap();
        // The same scales as weighted RTN, other codes, a lower layer loss.
        assert_eq!(q.scales(), wr.scales(), "act_order {act_order}");
        assert_ne!(q.codes(), wr.codes(), "act_order {act_order}");
        assert!(
            rep.err < wrep.err,
            "act_order {act_order}: {rep:?} vs {wrep:?}"
        );
    }
}
