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
    /// to the codes it gives. Every candidate is rounded to f16 and scored
    /// with codes chosen against the stored values, so the result is never
    /// worse than [`Grid::params`] on the objective. Values and weights
    /// must be finite, weights ≥ 0.
    pub fn search_params(self, xs: &[f32], ws: &[f64]) -> GroupParams {
        let base = self.params(xs);
        let mut best = (self.weighted_error(base, xs, ws), base);
        if xs.is_empty() || best.0 == 0.0 || !base.is_finite() {
            return best.1;
        }
        // A candidate whose weighted error `e` is known.
        let keep = |p: GroupParams, e: f64, best: &mut (f64, GroupParams)| {
            if p.is_finite() && p.d != f16::ZERO && e < best.0 {
                *best = (e, p);
            }
        };
        let try_p = |p: GroupParams, best: &mut (f64, GroupParams)| {
            if p.is_finite() && p.d != f16::ZERO {
                keep(p, self.weighted_error(p, xs, ws), best);
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
                    return best.1;
                }
                for dl in steps {
                    let iscale = (nmax + dl) / (max - min);
                    if iscale <= 0.0 {
                        continue;
                    }
                    let d = 1.0 / iscale;
                    let p = self.asym(d, min);
                    let (e, r) = self.refit_asym(p, xs, ws);
                    keep(p, e, &mut best);
                    if let Some(r) = r {
                        try_p(r, &mut best);
                    }
                }
            }
            _ => {
                // Symmetric: x ≈ d·k with k in [kmin, kmax].
                let amax = max.abs().max(min.abs());
                if amax == 0.0 {
                    return best.1;
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
                        let (e, r) = self.refit_sym(p, xs, ws);
                        keep(p, e, &mut best);
                        if let Some(r) = r {
                            try_p(r, &mut best);
                        }
                    }
                }
            }
        }
        best.1
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

    /// The centred code magnitude of `q` on a symmetric grid (`x = d·k`).
    fn centred(self, q: u8) -> f64 {
        match self {
            Grid::Q4_0 => q as f64 - 8.0,
            Grid::Q8_0 => (q as i8) as f64,
            _ => q as f64 - (1u32 << (self.bits() - 1)) as f64,
        }
    }

    /// One pass over the codes `p` gives: their [`Grid::weighted_error`]
    /// and the weighted least-squares `d` for them (`x ≈ d·k`).
    fn refit_sym(self, p: GroupParams, xs: &[f32], ws: &[f64]) -> (f64, Option<GroupParams>) {
        let (d, m) = (p.d.to_f32(), p.m.to_f32());
        let (mut num, mut den, mut err) = (0.0f64, 0.0f64, 0.0f64);
        for (&x, &w) in xs.iter().zip(ws) {
            let q = self.code_dm(d, m, x as f64);
            let e = x as f64 - self.decode_dm(d, m, q) as f64;
            err += w * e * e;
            let k = self.centred(q);
            num += w * k * x as f64;
            den += w * k * k;
        }
        (err, (den > 0.0).then(|| self.sym(num / den)))
    }

    /// One pass over the codes `p` gives: their [`Grid::weighted_error`]
    /// and the weighted least-squares `(d, m)` for them (`x ≈ d·q + m`).
    fn refit_asym(self, p: GroupParams, xs: &[f32], ws: &[f64]) -> (f64, Option<GroupParams>) {
        let (mut sw, mut sq, mut sqq, mut sx, mut sqx) = (0.0f64, 0.0, 0.0, 0.0, 0.0);
        let (dd, mm) = (p.d.to_f32(), p.m.to_f32());
        let mut err = 0.0f64;
        for (&x, &w) in xs.iter().zip(ws) {
            let code = self.code_dm(dd, mm, x as f64);
            let e = x as f64 - self.decode_dm(dd, mm, code) as f64;
            err += w * e * e;
            let q = code as f64;
            let x = x as f64;
            sw += w;
            sq += w * q;
            sqq += w * q * q;
            sx += w * x;
            sqx += w * q * x;
        }
        let det = sw * sqq - sq * sq;
        if det.is_nan() || det <= 1e-12 * sw * sqq {
            return (err, None);
        }
        let d = (sw * sqx - sq * sx) / det;
        let m = (sqq * sx - sq * sqx) / det;
        (err, (d > 0.0).then(|| self.asym(d, m)))
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
