//! aarch64 kernels: NEON with the dot-product extension (`sdot`, via inline asm while
//! `vdotq_s32` is unstable).
//!
//! A block is two 128-bit vectors; `sdot` sums four `i8 × i8`
//! products per i32 lane, signed on both sides, so Q4_0's nibbles are made
//! signed (`q − 8`) directly and no correction term is needed. Per block and
//! element: exact i32 sum → f32 → `acc = fma(isum, dw·dx, acc)` in four
//! lanes, reduced by `vaddvq_f32` at the end; Q4_1's offset term is a
//! separate dot added last, as in the reference. Tiles of R rows × T tokens
//! as on x86, with the same per-element arithmetic for every tile shape.

use std::arch::aarch64::*;
use std::ops::Range;

use super::{Kernels, WMat, XQ};
use crate::quants::q8_act;

/// Kernel sets this CPU supports.
pub(super) fn available() -> Vec<Kernels> {
    if std::arch::is_aarch64_feature_detected!("neon")
        && std::arch::is_aarch64_feature_detected!("dotprod")
    {
        vec![KERNELS]
    } else {
        Vec::new()
    }
}

const KERNELS: Kernels = Kernels {
    name: "neon-dotprod",
    group: 0,
    quantize: q8_act::quantize_row_ref,
    q4_0: gemm_q4_0,
    q4_1: gemm_q4_1,
    q8_0: gemm_q8_0,
};

fn f16_le_to_f32(b: [u8; 2]) -> f32 {
    half::f16::from_le_bytes(b).to_f32()
}

/// `sdot`: four `i8 × i8` products summed into each i32 lane. Inline asm
/// because `vdotq_s32` is not yet stable (rust-lang/rust#117224).
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot(acc: int32x4_t, a: int8x16_t, b: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    // SAFETY: a pure register-to-register instruction of the enabled
    // dotprod extension; no memory, no flags.
    unsafe {
        std::arch::asm!(
            "sdot {acc:v}.4s, {a:v}.16b, {b:v}.16b",
            acc = inout(vreg) acc,
            a = in(vreg) a,
            b = in(vreg) b,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    acc
}

const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

const fn layout(kind: u8) -> (usize, usize) {
    match kind {
        Q4_0 => (18, 2),
        Q4_1 => (20, 4),
        _ => (34, 2),
    }
}

unsafe fn gemm_q4_0(
    w: &WMat<'_>,
    rows: Range<usize>,
    x: &XQ<'_>,
    toks: Range<usize>,
    out: *mut f32,
    stride: usize,
    scratch: &mut Vec<f32>,
) {
    // SAFETY: features detected in `available`; caller upholds `GemmFn`.
    unsafe { drive::<Q4_0>(w, rows, x, toks, out, stride, scratch) }
}

unsafe fn gemm_q4_1(
    w: &WMat<'_>,
    rows: Range<usize>,
    x: &XQ<'_>,
    toks: Range<usize>,
    out: *mut f32,
    stride: usize,
    scratch: &mut Vec<f32>,
) {
    // SAFETY: as in `gemm_q4_0`.
    unsafe { drive::<Q4_1>(w, rows, x, toks, out, stride, scratch) }
}

unsafe fn gemm_q8_0(
    w: &WMat<'_>,
    rows: Range<usize>,
    x: &XQ<'_>,
    toks: Range<usize>,
    out: *mut f32,
    stride: usize,
    scratch: &mut Vec<f32>,
) {
    // SAFETY: as in `gemm_q4_0`.
    unsafe { drive::<Q8_0>(w, rows, x, toks, out, stride, scratch) }
}

struct Ctx<'a> {
    w: *const u8,
    row_bytes: usize,
    nb: usize,
    k: usize,
    ds: *const f32,
    ms: *const f32,
    x: &'a XQ<'a>,
    out: *mut f32,
    stride: usize,
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn drive<const KIND: u8>(
    w: &WMat<'_>,
    rows: Range<usize>,
    x: &XQ<'_>,
    toks: Range<usize>,
    out: *mut f32,
    stride: usize,
    scratch: &mut Vec<f32>,
) {
    let (bb, _) = layout(KIND);
    let nb = w.k / q8_act::QK8_ACT;
    let nr = rows.len();
    if scratch.len() < 2 * nr * nb {
        scratch.resize(2 * nr * nb, 0.0);
    }
    let (ds, ms) = scratch[..2 * nr * nb].split_at_mut(nr * nb);
    for (i, r) in rows.clone().enumerate() {
        let row = &w.data[r * w.row_bytes..(r + 1) * w.row_bytes];
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            ds[i * nb + b] = f16_le_to_f32([blk[0], blk[1]]);
            if KIND == Q4_1 {
                ms[i * nb + b] = f16_le_to_f32([blk[2], blk[3]]);
            }
        }
    }
    // SAFETY (pointer offsets below): `rows` is inside `w`, per the caller.
    let c = Ctx {
        w: unsafe { w.data.as_ptr().add(rows.start * w.row_bytes) },
        row_bytes: w.row_bytes,
        nb,
        k: w.k,
        ds: ds.as_ptr(),
        ms: ms.as_ptr(),
        x,
        out: unsafe { out.add(rows.start) },
        stride,
    };
    let mut t = toks.start;
    while t + 4 <= toks.end {
        // SAFETY: tokens t..t+4 and all nr rows are inside the rectangle.
        unsafe { rect::<KIND, 2, 4>(&c, nr, t) };
        t += 4;
    }
    while t < toks.end {
        // SAFETY: as above.
        unsafe { rect::<KIND, 4, 1>(&c, nr, t) };
        t += 1;
    }
}

#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn rect<const KIND: u8, const R: usize, const T: usize>(c: &Ctx<'_>, nr: usize, t: usize) {
    let mut i = 0;
    while i + R <= nr {
        // SAFETY: rows i..i+R are inside the rectangle.
        unsafe { tile::<KIND, R, T>(c, i, t) };
        i += R;
    }
    while i < nr {
        // SAFETY: row i is inside the rectangle.
        unsafe { tile::<KIND, 1, T>(c, i, t) };
        i += 1;
    }
}

// Index loops over the register tile are the point: R and T are constants.
#[allow(clippy::needless_range_loop)]
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn tile<const KIND: u8, const R: usize, const T: usize>(c: &Ctx<'_>, i0: usize, t0: usize) {
    let (bb, hdr) = layout(KIND);
    let nb = c.nb;
    // SAFETY (whole body): every pointer below stays inside the rows
    // i0..i0+R of the rectangle, tokens t0..t0+T of `x`, or output elements
    // the caller owns; loads are unaligned-safe byte loads.
    unsafe {
        let m4 = vdupq_n_u8(0x0f);
        let eight = vdupq_n_s8(8);
        let xq = c.x.qs.as_ptr().add(t0 * c.k);
        let xd = c.x.d.as_ptr().add(t0 * nb);
        let mut acc = [[vdupq_n_f32(0.0); T]; R];
        for b in 0..nb {
            let mut w0 = [vdupq_n_s8(0); R];
            let mut w1 = [vdupq_n_s8(0); R];
            for i in 0..R {
                let p = c.w.add((i0 + i) * c.row_bytes + b * bb + hdr);
                if KIND == Q8_0 {
                    w0[i] = vld1q_s8(p as *const i8);
                    w1[i] = vld1q_s8(p.add(16) as *const i8);
                } else {
                    let v = vld1q_u8(p);
                    let lo = vreinterpretq_s8_u8(vandq_u8(v, m4));
                    let hi = vreinterpretq_s8_u8(vshrq_n_u8(v, 4));
                    if KIND == Q4_0 {
                        w0[i] = vsubq_s8(lo, eight);
                        w1[i] = vsubq_s8(hi, eight);
                    } else {
                        w0[i] = lo;
                        w1[i] = hi;
                    }
                }
            }
            for j in 0..T {
                let x0 = vld1q_s8(xq.add(j * c.k + b * 32));
                let x1 = vld1q_s8(xq.add(j * c.k + b * 32 + 16));
                let dx = *xd.add(j * nb + b);
                for i in 0..R {
                    let isum = sdot(sdot(vdupq_n_s32(0), w0[i], x0), w1[i], x1);
                    let sc = *c.ds.add((i0 + i) * nb + b) * dx;
                    acc[i][j] = vfmaq_f32(acc[i][j], vcvtq_f32_s32(isum), vdupq_n_f32(sc));
                }
            }
        }
        for i in 0..R {
            for j in 0..T {
                let mut v = vaddvq_f32(acc[i][j]);
                if KIND == Q4_1 {
                    let m = c.ms.add((i0 + i) * nb);
                    let s = c.x.s.as_ptr().add((t0 + j) * nb);
                    let mut ms = 0.0f32;
                    for b in 0..nb {
                        ms += *m.add(b) * *s.add(b);
                    }
                    v += ms;
                }
                *c.out.add((t0 + j) * c.stride + i0 + i) = v;
            }
        }
    }
}
