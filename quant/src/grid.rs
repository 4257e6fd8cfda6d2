//! Target grids: the formats a matrix can be quantized into, and each one's
//! exact arithmetic — how a group's scale (and minimum) is chosen, which
//! code is nearest to a value, and the f32 value a code decodes to, computed
//! exactly as `tern_runtime::quants` decodes the stored block.
//!
//! Every grid stores per group an f16 scale `d` and, for the asymmetric
//! ones, an f16 minimum `m`; codes are always chosen against the f16-rounded
//! values, so the quantizer's error feedback sees the weights the runtime
//! will compute with. The one exception is [`Grid::rtn_group`] on GGML's
//! types, which reproduces ggml's reference quantizers bit for bit (they
//! pick codes with the f32 scale before rounding it).

use half::f16;
use tern_runtime::quants::{tern_gptq, GgmlType};

use crate::QuantError;

/// A target format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[allow(non_camel_case_types)]
pub enum Grid {
    /// GGML Q4_0: groups of 32, `x = d·(q − 8)`, `d = max / −8` with `max`
    /// the element of largest magnitude (its sign kept).
    Q4_0,
    /// GGML Q4_1: groups of 32, `x = d·q + m`, `d = (max − min)/15`, `m = min`.
    Q4_1,
    /// GGML Q8_0: groups of 32, `x = d·q`, `q ∈ −128..=127`, `d = amax/127`.
    Q8_0,
    /// tern's packed GPTQ type `TERN_Q{bits}_G{group}`: `x = d·q + m`.
    /// Asymmetric: `d = (max − min)/(2^bits − 1)`, `m = min`; symmetric
    /// (GPTQ's symmetric quantizer): `d = 2·amax/(2^bits − 1)`,
    /// `m = −d·2^(bits−1)`.
    Tern {
        /// Bits per code: 2, 3, 4 or 8.
        bits: u8,
        /// Elements per group: 32, 64 or 128.
        group: usize,
        /// Symmetric around zero (`m = −d·2^(bits−1)`) or asymmetric.
        sym: bool,
    },
}

/// The stored parameters of one group: the f16 scale and minimum (the
/// minimum is zero and unused for Q4_0 and Q8_0).
#[derive(Clone, Copy, Debug, PartialEq, Default)]
pub struct GroupParams {
    /// Scale.
    pub d: f16,
    /// Minimum (the value of code 0) for Q4_1 and tern; zero otherwise.
    pub m: f16,
}

impl GroupParams {
    /// Whether both stored values are finite (the group fit in f16).
    pub fn is_finite(self) -> bool {
        self.d.is_finite() && self.m.is_finite()
    }
}

impl Grid {
    /// Bits per code.
    pub fn bits(self) -> u8 {
        match self {
            Grid::Q4_0 | Grid::Q4_1 => 4,
            Grid::Q8_0 => 8,
            Grid::Tern { bits, .. } => bits,
        }
    }

    /// Elements per group (one scale per group and row).
    pub fn group(self) -> usize {
        match self {
            Grid::Q4_0 | Grid::Q4_1 | Grid::Q8_0 => 32,
            Grid::Tern { group, .. } => group,
        }
    }

    /// Whether the grid stores a minimum per group (Q4_1, asymmetric tern).
    pub fn has_min(self) -> bool {
        matches!(self, Grid::Q4_1 | Grid::Tern { .. })
    }

    /// Checks that tern can store this grid.
    pub fn validate(self) -> Result<(), QuantError> {
        if let Grid::Tern { bits, group, .. } = self {
            if GgmlType::tern_gptq(bits, group).is_none() {
                return Err(QuantError::BadGrid(format!(
                    "tern type with {bits} bits and groups of {group}: bits must be one of \
                     {:?} and the group one of {:?}",
                    tern_gptq::BITS,
                    tern_gptq::GROUPS
                )));
            }
        }
        Ok(())
    }

    /// This grid for a matrix of `cols` columns: itself when `cols` is a
    /// multiple of its group; for a tern grid otherwise the same grid with
    /// the largest supported smaller group that divides `cols` (SmolLM2's
    /// 576 columns take g64 for a requested g128); `None` when no group fits
    /// (GGML's types need a multiple of 32).
    pub fn fitted(self, cols: usize) -> Option<Grid> {
        if cols.is_multiple_of(self.group()) {
            return Some(self);
        }
        match self {
            Grid::Tern { bits, group, sym } => tern_gptq::GROUPS
                .iter()
                .rev()
                .find(|&&g| g < group && cols.is_multiple_of(g))
                .map(|&group| Grid::Tern { bits, group, sym }),
            _ => None,
        }
    }

    /// The GGUF tensor type that stores this grid. Call [`Grid::validate`]
    /// first: an invalid tern grid maps to F32.
    pub fn ggml_type(self) -> GgmlType {
        match self {
            Grid::Q4_0 => GgmlType::Q4_0,
            Grid::Q4_1 => GgmlType::Q4_1,
            Grid::Q8_0 => GgmlType::Q8_0,
            Grid::Tern { bits, group, .. } => {
                GgmlType::tern_gptq(bits, group).unwrap_or(GgmlType::F32)
            }
        }
    }

    /// The scale (and minimum) for a group with values `xs`, rounded to f16
    /// as stored. Values must be finite.
    pub fn params(self, xs: &[f32]) -> GroupParams {
        match self {
            Grid::Q4_0 => GroupParams {
                d: f16::from_f32(signed_absmax(xs) / -8.0),
                m: f16::ZERO,
            },
            Grid::Q4_1 => {
                let (d, m) = tern_gptq::params_asym(xs, 4);
                GroupParams { d, m }
            }
            Grid::Q8_0 => GroupParams {
                d: f16::from_f32(xs.iter().fold(0.0f32, |a, &v| a.max(v.abs())) / 127.0),
                m: f16::ZERO,
            },
            Grid::Tern { bits, sym, .. } => {
                let (d, m) = if sym {
                    tern_gptq::params_sym(xs, bits)
                } else {
                    tern_gptq::params_asym(xs, bits)
                };
                GroupParams { d, m }
            }
        }
    }

    /// `Σ_k w_k (x_k − decode(code(x_k)))²`: the weighted squared error of
    /// the group `xs` on the stored grid `p` (codes chosen against the f16
    /// values, as [`Grid::code`] does). `ws` has one weight per element.
    pub fn weighted_error(self, p: GroupParams, xs: &[f32], ws: &[f64]) -> f64 {
        let (d, m) = (p.d.to_f32(), p.m.to_f32());
        let mut err = 0.0f64;
        for (&x, &w) in xs.iter().zip(ws) {
            let x = x as f64;
            let e = x - self.decode_dm(d, m, self.code_dm(d, m, x)) as f64;
            err += w * e * e;
        }
        err
    }

    /// The group's parameters chosen to minimize [`Grid::weighted_error`]
    /// with the per-element weights `ws` (GPTQ's column weights), among
    /// candidates: [`Grid::params`] itself, a range of scales around it
    /// (the extreme element mapped to `n + δ` codes for `δ` in
    /// `[−2, +1.5]` steps of 0.1, `n` the grid's largest code magnitude;
    /// both signs for Q4_0, whose code range is lopsided), and for each a
    /// weighted least-squares refit of `d` (and `m` for asymmetric grids)
    /// to the codes it gives. Every candidate is rounded to f16.
    ///
    /// Candidates are ranked with [`GroupScorer`], an f32 pass written so
    /// that the compiler vectorises it (multiplication by `1/d` instead of
    /// division; it can differ from [`Grid::code`] at exact ties). The
    /// winner is then checked against [`Grid::params`] with the exact
    /// [`Grid::weighted_error`], so the result is never worse than the
    /// fixed rule on the objective. Values and weights must be finite,
    /// weights ≥ 0.
    pub fn search_params(self, xs: &[f32], ws: &[f64]) -> GroupParams {
        let base = self.params(xs);
        let e_base = self.weighted_error(base, xs, ws);
        if xs.is_empty() || e_base == 0.0 || !base.is_finite() {
            return base;
        }
        let sc = GroupScorer::new(self, xs, ws);
        let usable = |p: GroupParams| p.is_finite() && p.d != f16::ZERO;
        let mut best = (sc.score(base).0, base);
        let mut keep = |p: GroupParams, e: f32| {
            if e < best.0 {
                best = (e, p);
            }
        };
        let steps = (0..=35).map(|i| -2.0 + 0.1 * i as f64);
        let (min, max) = xs
            .iter()
            .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| {
                (a.min(v), b.max(v))
            });
        let (min, max) = (min as f64, max as f64);
        match self {
            Grid::Q4_1 | Grid::Tern { sym: false, .. } => {
                let nmax = ((1u32 << self.bits()) - 1) as f64;
                if max <= min {
                    return base;
                }
                for dl in steps {
                    let iscale = (nmax + dl) / (max - min);
                    if iscale <= 0.0 {
                        continue;
                    }
                    let p = self.asym(1.0 / iscale, min);
                    if !usable(p) {
                        continue;
                    }
                    let (e, r) = sc.score(p);
                    keep(p, e);
                    if let Some(r) = r.filter(|&r| usable(r)) {
                        keep(r, sc.score(r).0);
                    }
                }
            }
            _ => {
                // Symmetric: x ≈ d·k with k in [kmin, kmax].
                let amax = max.abs().max(min.abs());
                if amax == 0.0 {
                    return base;
                }
                let half = (1u32 << (self.bits() - 1)) as f64;
                let signs: &[f64] = if self == Grid::Q4_0 {
                    &[1.0, -1.0]
                } else {
                    &[1.0]
                };
                for &sg in signs {
                    for dl in steps.clone() {
                        let t = half + dl;
                        if t <= 0.0 {
                            continue;
                        }
                        let p = self.sym(sg * amax / t);
                        if !usable(p) {
                            continue;
                        }
                        let (e, r) = sc.score(p);
                        keep(p, e);
                        if let Some(r) = r.filter(|&r| usable(r)) {
                            keep(r, sc.score(r).0);
                        }
                    }
                }
            }
        }
        let found = best.1;
        if found != base && self.weighted_error(found, xs, ws) < e_base {
            found
        } else {
            base
        }
    }

    /// llama.cpp's importance-weighted choice of a symmetric group's scale
    /// and codes (ggml's `make_qx_quants` with `rmse_type = 1` and per-element
    /// weights `qw`, as `quantize_q4_0` calls it with an importance matrix),
    /// reproduced in its own f32 arithmetic so that the stored bytes match:
    ///
    /// * `max` is the element of largest magnitude (sign kept, the first one
    ///   on ties) and `n` the grid's largest negative code magnitude (8 for
    ///   Q4_0); a group with `|max| < 1e-15` stores `d = 0` and code 0;
    /// * candidate inverse scales `−(n + 0.1·i)/max` for `i` in −9..=9; each
    ///   gives codes `l = clamp(round(iscale·x), −n, n−1)` (ties to even);
    /// * each candidate is scored by `(Σ w x l)² / Σ w l²`, i.e. with its
    ///   f32 weighted least-squares scale `Σ w x l / Σ w l²`; the first
    ///   candidate (`i = 0`) and then any strictly better one wins;
    /// * the winner's codes are kept and its least-squares scale is rounded
    ///   to f16. The codes are *not* re-chosen against the f16 scale.
    ///
    /// Returns `None` for grids with a minimum (Q4_1, asymmetric tern),
    /// which llama.cpp quantizes with another rule. `codes` receives one
    /// code per element (stored form, as [`Grid::code`] returns); `qw` has
    /// one weight per element (≥ 0, finite).
    pub fn ggml_weighted_group(
        self,
        xs: &[f32],
        qw: &[f32],
        codes: &mut [u8],
    ) -> Option<GroupParams> {
        let nmax: i32 = match self {
            Grid::Q4_0 => 8,
            Grid::Q8_0 => 128,
            Grid::Tern {
                bits, sym: true, ..
            } => 1 << (bits - 1),
            Grid::Q4_1 | Grid::Tern { sym: false, .. } => return None,
        };
        let store = |l: i32| -> u8 {
            match self {
                Grid::Q8_0 => (l as i8) as u8,
                _ => (l + nmax) as u8,
            }
        };
        let mut max = 0.0f32;
        let mut amax = 0.0f32;
        for &x in xs {
            if x.abs() > amax {
                amax = x.abs();
                max = x;
            }
        }
        if amax < 1e-15 {
            codes.iter_mut().take(xs.len()).for_each(|c| *c = 0);
            return Some(self.sym(0.0));
        }
        let code = |iscale: f32, x: f32| -> i32 { nearest_i32(iscale * x).clamp(-nmax, nmax - 1) };
        let sums = |iscale: f32| -> (f32, f32) {
            let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
            for (&x, &w) in xs.iter().zip(qw) {
                let l = code(iscale, x) as f32;
                sumlx += w * x * l;
                suml2 += w * l * l;
            }
            (sumlx, suml2)
        };
        let mut best_iscale = -(nmax as f32) / max;
        let (sumlx, suml2) = sums(best_iscale);
        let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
        let mut best = scale * sumlx;
        for is in (-9..=9).filter(|&i| i != 0) {
            let iscale = -(nmax as f32 + 0.1f32 * is as f32) / max;
            let (sumlx, suml2) = sums(iscale);
            if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
                best_iscale = iscale;
                scale = sumlx / suml2;
                best = scale * sumlx;
            }
        }
        for (c, &x) in codes.iter_mut().zip(xs) {
            *c = store(code(best_iscale, x));
        }
        Some(self.sym(scale as f64))
    }

    /// Stored parameters of an asymmetric grid with scale `d`, minimum `m`.
    fn asym(self, d: f64, m: f64) -> GroupParams {
        GroupParams {
            d: f16::from_f64(d),
            m: f16::from_f64(m),
        }
    }

    /// Stored parameters of a symmetric grid with scale `d` (for tern's
    /// symmetric grid the minimum follows from the stored scale).
    fn sym(self, d: f64) -> GroupParams {
        let d16 = f16::from_f64(d);
        let m = match self {
            Grid::Tern { bits, .. } => f16::from_f32(-d16.to_f32() * (1u32 << (bits - 1)) as f32),
            _ => f16::ZERO,
        };
        GroupParams { d: d16, m }
    }

    /// [`Grid::code`] with the stored scale and minimum already widened to
    /// f32 (`d`, `m`), for the scale search's inner loops: the same result,
    /// without the per-call f16 conversions and the libm rounding call.
    #[inline(always)]
    fn code_dm(self, d: f32, m: f32, x: f64) -> u8 {
        if d == 0.0 {
            return match self {
                Grid::Q4_0 => 8,
                _ => 0,
            };
        }
        match self {
            Grid::Q4_0 => (rne(x / d as f64) + 8.0).clamp(0.0, 15.0) as u8,
            Grid::Q8_0 => (rne(x / d as f64).clamp(-128.0, 127.0) as i8) as u8,
            Grid::Q4_1 | Grid::Tern { .. } => {
                let max = ((1u32 << self.bits()) - 1) as f64;
                rne((x - m as f64) / d as f64).clamp(0.0, max) as u8
            }
        }
    }

    /// [`Grid::decode`] with `d`, `m` already widened to f32.
    #[inline(always)]
    fn decode_dm(self, d: f32, m: f32, q: u8) -> f32 {
        match self {
            Grid::Q4_0 => d * (q as i32 - 8) as f32,
            Grid::Q8_0 => (q as i8) as f32 * d,
            Grid::Q4_1 | Grid::Tern { .. } => d * q as f32 + m,
        }
    }

    /// The code whose decoded value is nearest to `x` (ties to even) on the
    /// group's stored grid.
    #[inline]
    pub fn code(self, p: GroupParams, x: f64) -> u8 {
        let d = p.d.to_f32();
        match self {
            Grid::Q4_0 => {
                if d == 0.0 {
                    8
                } else {
                    ((x / d as f64).round_ties_even() + 8.0).clamp(0.0, 15.0) as u8
                }
            }
            Grid::Q8_0 => {
                if d == 0.0 {
                    0
                } else {
                    ((x / d as f64).round_ties_even().clamp(-128.0, 127.0) as i8) as u8
                }
            }
            Grid::Q4_1 | Grid::Tern { .. } => {
                tern_gptq::nearest_code(x, d, p.m.to_f32(), self.bits())
            }
        }
    }

    /// The value code `q` decodes to, with the runtime's f32 arithmetic.
    #[inline]
    pub fn decode(self, p: GroupParams, q: u8) -> f32 {
        let d = p.d.to_f32();
        match self {
            Grid::Q4_0 => d * (q as i32 - 8) as f32,
            Grid::Q8_0 => (q as i8) as f32 * d,
            Grid::Q4_1 | Grid::Tern { .. } => d * q as f32 + p.m.to_f32(),
        }
    }

    /// Round-to-nearest for one group: the parameters and codes the
    /// runtime's `quantize_row` produces for this type (ggml's reference
    /// quantizers for Q4_0/Q4_1/Q8_0; for tern's symmetric grid,
    /// [`Grid::params`] and [`Grid::code`]).
    ///
    /// `codes` receives one code per element of `xs` (extra ones are left
    /// alone); an empty group gives zero parameters.
    pub fn rtn_group(self, xs: &[f32], codes: &mut [u8]) -> GroupParams {
        if xs.is_empty() {
            return GroupParams::default();
        }
        match self {
            Grid::Q4_0 => {
                let d = signed_absmax(xs) / -8.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                for (c, &v) in codes.iter_mut().zip(xs) {
                    *c = ((v * id + 8.5) as u8).min(15);
                }
                GroupParams {
                    d: f16::from_f32(d),
                    m: f16::ZERO,
                }
            }
            Grid::Q4_1 => {
                // ggml/gguf-py: among equal extremes the last one wins.
                let (mut min, mut max) = (xs[0], xs[0]);
                for &v in &xs[1..] {
                    if v <= min {
                        min = v;
                    }
                    if v >= max {
                        max = v;
                    }
                }
                let d = (max - min) / 15.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                for (c, &v) in codes.iter_mut().zip(xs) {
                    *c = (((v - min) * id + 0.5) as u8).min(15);
                }
                GroupParams {
                    d: f16::from_f32(d),
                    m: f16::from_f32(min),
                }
            }
            Grid::Q8_0 => {
                let amax = xs.iter().fold(0.0f32, |a, &v| a.max(v.abs()));
                let d = amax / 127.0;
                let id = if d == 0.0 { 0.0 } else { 1.0 / d };
                for (c, &v) in codes.iter_mut().zip(xs) {
                    *c = ((v * id).round() as i8) as u8;
                }
                GroupParams {
                    d: f16::from_f32(d),
                    m: f16::ZERO,
                }
            }
            Grid::Tern { .. } => {
                let p = self.params(xs);
                for (c, &v) in codes.iter_mut().zip(xs) {
                    *c = self.code(p, v as f64);
                }
                p
            }
        }
    }
}

/// `v` rounded to the nearest integer, ties to even: `f64::round_ties_even`
/// without the library call (no SSE4.1 in the portable build). Adding and
/// subtracting 1.5·2^52 rounds in the default mode exactly there for
/// |v| < 2^51; larger values are clamped first (every caller clamps the code
/// far below that anyway).
#[inline(always)]
fn rne(v: f64) -> f64 {
    const M: f64 = 6_755_399_441_055_744.0;
    let v = v.clamp(-1e15, 1e15);
    (v + M) - M
}

/// ggml's `nearest_int`: `v` rounded to the nearest integer, ties to even,
/// by adding 1.5·2^23 in f32 (exact for |v| ≤ 2^22 − 1; larger values are
/// clamped there first, far outside any code range).
#[inline(always)]
fn nearest_i32(v: f32) -> i32 {
    rne32(v) as i32
}

/// llama.cpp's per-element importance for one row (`quantize_row_q4_0_impl`
/// and its siblings): `imp[k] · sqrt(σ² + x_k²)` with `σ² = Σ x²/n` the
/// row's mean square, summed in f32 in order as ggml does. `imp` is the
/// row's column importance (the imatrix, or the Hessian's diagonal); the
/// factor makes large weights count more than their input alone says.
/// `out` gets one weight per element of `row`.
pub fn ggml_importance(row: &[f32], imp: &[f32], out: &mut [f32]) {
    let mut sum_x2 = 0.0f32;
    for &x in row {
        sum_x2 += x * x;
    }
    let sigma2 = sum_x2 / row.len().max(1) as f32;
    for ((o, &x), &q) in out.iter_mut().zip(row).zip(imp) {
        *o = q * (sigma2 + x * x).sqrt();
    }
}

/// The element of largest magnitude, sign kept, the first one on ties
/// (ggml's Q4_0 rule; x[0] for an all-zero group).
fn signed_absmax(xs: &[f32]) -> f32 {
    let mut max = xs.first().copied().unwrap_or(0.0);
    for &v in xs.iter().skip(1) {
        if v.abs() > max.abs() {
            max = v;
        }
    }
    max
}

/// Lanes of [`GroupScorer`]'s passes: eight independent f32 accumulators,
/// so that the loops vectorise on SSE2 and wider.
const LANES: usize = 8;

/// One group's values and weights in f32, for ranking the scale search's
/// candidates quickly: each pass is branch-free f32 arithmetic (codes by
/// multiplying with `1/d` and the add-and-subtract rounding of [`rne`]), so
/// the compiler vectorises it. Its codes can differ from [`Grid::code`] at
/// exact ties; [`Grid::search_params`] checks its winner exactly.
struct GroupScorer {
    grid: Grid,
    xs: Vec<f32>,
    ws: Vec<f32>,
    /// `Σ w` and `Σ w·x`, for the asymmetric refit.
    sw: f64,
    sx: f64,
}

/// `v` rounded to the nearest integer (ties to even) in f32 for
/// |v| < 2^22; callers clamp the result to a code range far below that.
#[inline(always)]
fn rne32(v: f32) -> f32 {
    const M: f32 = 12_582_912.0; // 1.5·2^23
    let v = clampf(v, -4.0e6, 4.0e6);
    (v + M) - M
}

/// `v` clamped to `[lo, hi]` with plain comparisons (compiles to min/max
/// instructions; `f32::clamp`'s NaN rules get in the way).
#[inline(always)]
fn clampf(v: f32, lo: f32, hi: f32) -> f32 {
    let v = if v < lo { lo } else { v };
    if v > hi {
        hi
    } else {
        v
    }
}

impl GroupScorer {
    fn new(grid: Grid, xs: &[f32], ws: &[f64]) -> GroupScorer {
        let sw = ws.iter().sum();
        let sx = xs.iter().zip(ws).map(|(&x, &w)| w * x as f64).sum();
        GroupScorer {
            grid,
            xs: xs.to_vec(),
            ws: ws.iter().map(|&w| w as f32).collect(),
            sw,
            sx,
        }
    }

    /// The weighted squared error of the stored `p` (approximately, see the
    /// type) and the weighted least-squares refit of `p`'s parameters to the
    /// codes `p` gives (`None` when degenerate).
    fn score(&self, p: GroupParams) -> (f32, Option<GroupParams>) {
        let g = self.grid;
        let (d, m) = (p.d.to_f32(), p.m.to_f32());
        let id = 1.0 / d;
        match g {
            Grid::Q4_1 | Grid::Tern { sym: false, .. } => {
                let nmax = ((1u32 << g.bits()) - 1) as f32;
                // x ≈ d·q + m, q in 0..=nmax.
                let lane = |x: f32, w: f32| {
                    let q = clampf(rne32((x - m) * id), 0.0, nmax);
                    let e = x - (d * q + m);
                    let wq = w * q;
                    [w * e * e, wq, wq * q, wq * x]
                };
                let [err, sq, sqq, sqx] = self.sums(lane);
                let det = self.sw * sqq - sq * sq;
                if det.is_nan() || det <= 1e-12 * self.sw * sqq {
                    return (err as f32, None);
                }
                let d = (self.sw * sqx - sq * self.sx) / det;
                let m = (sqq * self.sx - sq * sqx) / det;
                (err as f32, (d > 0.0).then(|| g.asym(d, m)))
            }
            _ => {
                let (kmin, kmax) = match g {
                    Grid::Q4_0 => (-8.0, 7.0),
                    Grid::Q8_0 => (-128.0, 127.0),
                    _ => {
                        let half = (1u32 << (g.bits() - 1)) as f32;
                        (-half, half - 1.0)
                    }
                };
                // x ≈ d·k, k in kmin..=kmax.
                let lane = |x: f32, w: f32| {
                    let k = clampf(rne32(x * id), kmin, kmax);
                    let e = x - d * k;
                    let wk = w * k;
                    [w * e * e, wk * x, wk * k, 0.0]
                };
                let [err, num, den, _] = self.sums(lane);
                (err as f32, (den > 0.0).then(|| g.sym(num / den)))
            }
        }
    }

    /// The four sums of `lane(x, w)` over the group: [`LANES`] f32
    /// accumulators per sum (kept as four separate arrays, so that each
    /// lane's four results land in four vector registers without shuffles)
    /// over whole chunks, the rest one by one, all added up in f64.
    #[inline(always)]
    fn sums(&self, lane: impl Fn(f32, f32) -> [f32; 4]) -> [f64; 4] {
        let mut a0 = [0.0f32; LANES];
        let mut a1 = [0.0f32; LANES];
        let mut a2 = [0.0f32; LANES];
        let mut a3 = [0.0f32; LANES];
        let (xc, wc) = (self.xs.chunks_exact(LANES), self.ws.chunks_exact(LANES));
        let (xr, wr) = (xc.remainder(), wc.remainder());
        for (x8, w8) in xc.zip(wc) {
            for i in 0..LANES {
                let [v0, v1, v2, v3] = lane(x8[i], w8[i]);
                a0[i] += v0;
                a1[i] += v1;
                a2[i] += v2;
                a3[i] += v3;
            }
        }
        let total = |a: [f32; LANES]| a.iter().map(|&v| v as f64).sum::<f64>();
        let mut out = [total(a0), total(a1), total(a2), total(a3)];
        for (&x, &w) in xr.iter().zip(wr) {
            for (o, v) in out.iter_mut().zip(lane(x, w)) {
                *o += v as f64;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_search_path_codes_like_code() {
        let grids = [
            Grid::Q4_0,
            Grid::Q4_1,
            Grid::Q8_0,
            Grid::Tern {
                bits: 3,
                group: 64,
                sym: true,
            },
            Grid::Tern {
                bits: 2,
                group: 32,
                sym: false,
            },
        ];
        let mut s = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0
        };
        for g in grids {
            for _ in 0..20_000 {
                let p = GroupParams {
                    d: f16::from_f64(next() * 0.1),
                    m: f16::from_f64(next() * 0.5),
                };
                let (d, m) = (p.d.to_f32(), p.m.to_f32());
                // Exact ties (x on a half step) and arbitrary values.
                let k = (next() * 20.0).round() + 0.5;
                for x in [next(), next() * 1e6, m as f64 + d as f64 * k, d as f64 * k] {
                    let q = g.code(p, x);
                    assert_eq!(g.code_dm(d, m, x), q, "{g:?} {p:?} {x}");
                    assert_eq!(g.decode_dm(d, m, q).to_bits(), g.decode(p, q).to_bits());
                }
            }
        }
        assert_eq!(rne(2.5), 2.0);
        assert_eq!(rne(-3.5), -4.0);
        assert_eq!(rne(-0.4), 0.0);
    }
}
