//! x86_64 kernels: AVX2+FMA on the file's row layout, and AVX-512 VNNI on
//! 512-bit vectors over 16-row interleaved weights.
//!
//! **AVX2** (`avx2` module, from the macro below): one block (32 elements)
//! fills one 256-bit vector. Per block and element the integer sum
//! `Σ qw·qx` is exact (`maddubs`+`madd`), converted to f32 and accumulated
//! as `acc = fma(isum, dw·dx, acc)` in eight lanes; the lanes are reduced by
//! a fixed tree at the end. `u8 × i8` products need an unsigned operand:
//! - Q4_1: the nibbles are already unsigned.
//! - Q4_0: `Σ (q−8)·x = Σ q·x − Σ 8·x`; the second sum is made once per
//!   token and block and reused by every row of the tile.
//! - Q8_0: `Σ w·x = Σ |w| · (x·sign w)` (`vpsignb`).
//!
//! Q4_1's offset term `Σ_b m_b · s_b` is a separate f32 dot of the row's
//! offsets with the token's block sums, added last (as the reference does).
//!
//! **AVX-512 VNNI** (`vnni512`): weights repacked at load into groups of 16
//! rows (`simd::pack_group`), so one 512-bit vector holds four columns of 16
//! rows and `vpdpbusd` against a broadcast 32-bit word of activations gives
//! 16 rows' partial sums in 16 lanes. Per block: the 16 rows' f16 scales
//! are one `vcvtph2ps`, the integer sums are exact (Q4_0 subtracts
//! `8·Σqx`, Q8_0 — stored as `q + 128` — subtracts `128·Σqx`), and each
//! lane does `acc = fma(isum, dw·dx, acc)` in block order; Q4_1 adds its
//! own `accm = fma(mw, s_b, accm)` at the end. Every output element is one
//! lane computed by the same instructions in any tile, so results do not
//! depend on tiling. PERF: against the 256-bit VNNI kernels on the file
//! layout this removes the per-row f16 scale conversion and the horizontal
//! reductions, which made decode compute-bound (~12 cycles per block).
//!
//! The macro stamps out the row-layout tile code with its target features.

use std::arch::x86_64::*;
use std::ops::Range;

use super::{Kernels, WMat, XQ};
use crate::quants::q8_act;

/// Kernel sets this CPU supports, best first.
pub(super) fn available() -> Vec<Kernels> {
    let mut v = Vec::new();
    let base = is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("f16c");
    if base
        && is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
    {
        v.push(vnni512::KERNELS);
    }
    if base {
        v.push(avx2::KERNELS);
    }
    v
}

/// Weight kinds, as a const parameter of the tile code.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;

/// `Σ` of four adjacent `u8 × i8` products into each i32 lane, AVX2.
#[target_feature(enable = "avx2")]
#[inline]
fn dot_avx2(a: __m256i, b: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(a, b), _mm256_set1_epi16(1))
}

macro_rules! x86_kernels {
    ($m:ident, $name:literal, $feat:literal, $dot:ident,
     prefill: ($RP:literal, $TP:literal), decode: $RD:literal) => {
        pub(super) mod $m {
            use super::*;

            pub(crate) const KERNELS: Kernels = Kernels {
                name: $name,
                group: 0,
                quantize,
                q4_0: gemm_q4_0,
                q4_1: gemm_q4_1,
                q8_0: gemm_q8_0,
            };

            fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
                // SAFETY: KERNELS is only handed out after `available`
                // detected these features.
                unsafe { quantize_impl(x, qs, d, s) }
            }

            /// The reference quantizer compiled with this set's features:
            /// the same IEEE operations, so the same bytes, vectorized.
            #[target_feature(enable = $feat)]
            fn quantize_impl(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
                for (((xb, qb), db), sb) in x
                    .chunks_exact(q8_act::QK8_ACT)
                    .zip(qs.chunks_exact_mut(q8_act::QK8_ACT))
                    .zip(d.iter_mut())
                    .zip(s.iter_mut())
                {
                    q8_act::quantize_block(xb, qb, db, sb);
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
                // SAFETY: features detected (see `quantize`); the caller
                // upholds `GemmFn`'s contract.
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

            /// Block bytes and header bytes (scales before the quants).
            const fn layout(kind: u8) -> (usize, usize) {
                match kind {
                    Q4_0 => (18, 2),
                    Q4_1 => (20, 4),
                    _ => (34, 2),
                }
            }

            #[target_feature(enable = $feat)]
            #[inline]
            fn f16_at(p: *const u8) -> f32 {
                // SAFETY: callers pass a pointer to a block header inside
                // the weight slice; the read is unaligned-safe.
                let bits = unsafe { (p as *const u16).read_unaligned() };
                _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
            }

            /// The rectangle `rows × toks`: block scales (and Q4_1 offsets)
            /// of its rows converted to f32 once, then register tiles.
            #[target_feature(enable = $feat)]
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
                debug_assert!(rows.end * w.row_bytes <= w.data.len());
                debug_assert!(toks.end * w.k <= x.qs.len());
                debug_assert_eq!(w.row_bytes, nb * bb);
                if scratch.len() < 2 * nr * nb {
                    scratch.resize(2 * nr * nb, 0.0);
                }
                let (ds, ms) = scratch[..2 * nr * nb].split_at_mut(nr * nb);
                for (i, r) in rows.clone().enumerate() {
                    let row = &w.data[r * w.row_bytes..(r + 1) * w.row_bytes];
                    for (b, blk) in row.chunks_exact(bb).enumerate() {
                        ds[i * nb + b] = f16_at(blk.as_ptr());
                        if KIND == Q4_1 {
                            ms[i * nb + b] = f16_at(blk[2..].as_ptr());
                        }
                    }
                }
                let ctx = Ctx {
                    w: w.data.as_ptr().add(rows.start * w.row_bytes),
                    row_bytes: w.row_bytes,
                    nb,
                    k: w.k,
                    ds: ds.as_ptr(),
                    ms: ms.as_ptr(),
                    x,
                    out: out.add(rows.start),
                    stride,
                };
                let mut t = toks.start;
                while t + $TP <= toks.end {
                    rect::<KIND, $RP, $TP>(&ctx, nr, t);
                    t += $TP;
                }
                while t < toks.end {
                    rect::<KIND, $RD, 1>(&ctx, nr, t);
                    t += 1;
                }
            }

            /// Shared arguments of the tiles of one rectangle; `w`, `ds`,
            /// `ms` and `out` start at its first row.
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

            /// All `nr` rows for tokens `t..t + T`: tiles of R rows, then
            /// single rows.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn rect<const KIND: u8, const R: usize, const T: usize>(
                c: &Ctx<'_>,
                nr: usize,
                t: usize,
            ) {
                let mut i = 0;
                while i + R <= nr {
                    tile::<KIND, R, T>(c, i, t);
                    i += R;
                }
                while i < nr {
                    tile::<KIND, 1, T>(c, i, t);
                    i += 1;
                }
            }

            /// Rows `i..i + R` (of the rectangle) × tokens `t..t + T`.
            /// Each element's arithmetic does not depend on R or T.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn tile<const KIND: u8, const R: usize, const T: usize>(
                c: &Ctx<'_>,
                i0: usize,
                t0: usize,
            ) {
                let (bb, hdr) = layout(KIND);
                let nb = c.nb;
                let m4 = _mm_set1_epi8(0x0f);
                let eight = _mm256_set1_epi8(8);
                let xq = c.x.qs.as_ptr().add(t0 * c.k);
                let xd = c.x.d.as_ptr().add(t0 * nb);
                let mut acc = [[_mm256_setzero_ps(); T]; R];
                for b in 0..nb {
                    let mut wv = [_mm256_setzero_si256(); R];
                    let mut wa = [_mm256_setzero_si256(); R];
                    for i in 0..R {
                        // SAFETY: row i0 + i and block b are inside the
                        // rectangle's rows; unaligned loads.
                        let p = c.w.add((i0 + i) * c.row_bytes + b * bb + hdr);
                        if KIND == Q8_0 {
                            let v = _mm256_loadu_si256(p as *const __m256i);
                            wa[i] = _mm256_abs_epi8(v);
                            wv[i] = v;
                        } else {
                            let v = _mm_loadu_si128(p as *const __m128i);
                            let lo = _mm_and_si128(v, m4);
                            let hi = _mm_and_si128(_mm_srli_epi16(v, 4), m4);
                            wv[i] = _mm256_set_m128i(hi, lo);
                        }
                    }
                    for j in 0..T {
                        // SAFETY: token t0 + j is inside `x`.
                        let xv = _mm256_loadu_si256(xq.add(j * c.k + b * 32) as *const __m256i);
                        let dx = _mm256_set1_ps(*xd.add(j * nb + b));
                        let corr = if KIND == Q4_0 {
                            $dot(eight, xv)
                        } else {
                            _mm256_setzero_si256()
                        };
                        for i in 0..R {
                            let isum = if KIND == Q8_0 {
                                $dot(wa[i], _mm256_sign_epi8(xv, wv[i]))
                            } else if KIND == Q4_0 {
                                _mm256_sub_epi32($dot(wv[i], xv), corr)
                            } else {
                                $dot(wv[i], xv)
                            };
                            let sc =
                                _mm256_mul_ps(_mm256_set1_ps(*c.ds.add((i0 + i) * nb + b)), dx);
                            acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(isum), sc, acc[i][j]);
                        }
                    }
                }
                for i in 0..R {
                    for j in 0..T {
                        let mut v = hsum(acc[i][j]);
                        if KIND == Q4_1 {
                            v += mdot(
                                c.ms.add((i0 + i) * nb),
                                c.x.s.as_ptr().add((t0 + j) * nb),
                                nb,
                            );
                        }
                        // SAFETY: the caller owns this output element.
                        *c.out.add((t0 + j) * c.stride + i0 + i) = v;
                    }
                }
            }

            /// Sum of eight lanes by a fixed tree.
            #[target_feature(enable = $feat)]
            #[inline]
            fn hsum(v: __m256) -> f32 {
                let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
                let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
                let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
                _mm_cvtss_f32(s)
            }

            /// `Σ_b m[b]·s[b]` over `nb` blocks, eight lanes then a tail.
            #[target_feature(enable = $feat)]
            #[inline]
            unsafe fn mdot(m: *const f32, s: *const f32, nb: usize) -> f32 {
                let mut a = _mm256_setzero_ps();
                let mut b = 0;
                while b + 8 <= nb {
                    // SAFETY: b + 8 ≤ nb, inside both arrays.
                    a = _mm256_fmadd_ps(_mm256_loadu_ps(m.add(b)), _mm256_loadu_ps(s.add(b)), a);
                    b += 8;
                }
                let mut v = hsum(a);
                while b < nb {
                    v += *m.add(b) * *s.add(b);
                    b += 1;
                }
                v
            }
        }
    };
}

x86_kernels!(avx2, "avx2", "avx2,fma,f16c", dot_avx2, prefill: (2, 4), decode: 4);

/// AVX-512 VNNI kernels over 16-row interleaved weights (module docs).
pub(super) mod vnni512 {
    use super::*;
    use crate::backend::cpu::simd::block_layout;
    use crate::quants::GgmlType;

    /// Rows per interleaved group: one i32 lane per row.
    const G: usize = 16;
    /// Tokens per register tile in prefill.
    const TP: usize = 4;
    /// Software prefetch distance of the decode tile, in bytes.
    const PF: usize = 2048;

    pub(crate) const KERNELS: Kernels = Kernels {
        name: "avx512vnni",
        group: G,
        quantize,
        q4_0: gemm_q4_0,
        q4_1: gemm_q4_1,
        q8_0: gemm_q8_0,
    };

    fn quantize(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
        // SAFETY: KERNELS is only handed out after `available` detected
        // these features.
        unsafe { quantize_impl(x, qs, d, s) }
    }

    /// The reference quantizer in 512-bit vectors: the same IEEE operations
    /// per element (NaN-ignoring max, one division, `x · (1/d)` rounded to
    /// nearest even, saturated as `as i8` saturates), so the same bytes.
    /// PERF: the scalar loop was ~9% of MiniCPM4-0.5B's prefill, and it
    /// runs on the submitting thread only.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw")]
    fn quantize_impl(x: &[f32], qs: &mut [i8], d: &mut [f32], s: &mut [f32]) {
        let n = (x.len() / 32).min(qs.len() / 32).min(d.len()).min(s.len());
        let abs = _mm512_set1_epi32(0x7fff_ffff);
        let (lo, hi) = (_mm512_set1_ps(-128.0), _mm512_set1_ps(127.0));
        for b in 0..n {
            // SAFETY: block b is inside `x` and `qs` (n bounds both).
            let (v0, v1) = unsafe {
                (
                    _mm512_loadu_ps(x.as_ptr().add(32 * b)),
                    _mm512_loadu_ps(x.as_ptr().add(32 * b + 16)),
                )
            };
            // NaN lanes count as 0, as f32::max ignores NaN.
            let a0 = _mm512_maskz_mov_ps(
                _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v0, v0),
                _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v0), abs)),
            );
            let a1 = _mm512_maskz_mov_ps(
                _mm512_cmp_ps_mask::<_CMP_ORD_Q>(v1, v1),
                _mm512_castsi512_ps(_mm512_and_si512(_mm512_castps_si512(v1), abs)),
            );
            let amax = _mm512_reduce_max_ps(_mm512_max_ps(a0, a1)).max(0.0);
            let db = amax / 127.0;
            let id = if db == 0.0 { 0.0 } else { 1.0 / db };
            let idv = _mm512_set1_ps(id);
            let q = |v: __m512| {
                let p = _mm512_mul_ps(v, idv);
                // NaN → 0 as `as i8` does; clamping first equals
                // saturating after rounding.
                let p = _mm512_maskz_mov_ps(_mm512_cmp_ps_mask::<_CMP_ORD_Q>(p, p), p);
                let p = _mm512_min_ps(_mm512_max_ps(p, lo), hi);
                _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(p)
            };
            let (q0, q1) = (q(v0), q(v1));
            let sum = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
            // SAFETY: 32 bytes of block b of `qs`; unaligned stores.
            unsafe {
                _mm_storeu_si128(
                    qs.as_mut_ptr().add(32 * b) as *mut __m128i,
                    _mm512_cvtepi32_epi8(q0),
                );
                _mm_storeu_si128(
                    qs.as_mut_ptr().add(32 * b + 16) as *mut __m128i,
                    _mm512_cvtepi32_epi8(q1),
                );
            }
            d[b] = db;
            s[b] = db * sum as f32;
        }
    }

    macro_rules! entry {
        ($name:ident, $kind:expr) => {
            unsafe fn $name(
                w: &WMat<'_>,
                rows: Range<usize>,
                x: &XQ<'_>,
                toks: Range<usize>,
                out: *mut f32,
                stride: usize,
                _scratch: &mut Vec<f32>,
            ) {
                // SAFETY: features detected (see `quantize`); the caller
                // upholds `GemmFn`'s contract.
                unsafe { drive::<{ $kind }>(w, rows, x, toks, out, stride) }
            }
        };
    }
    entry!(gemm_q4_0, Q4_0);
    entry!(gemm_q4_1, Q4_1);
    entry!(gemm_q8_0, Q8_0);

    const fn ty(kind: u8) -> GgmlType {
        match kind {
            Q4_0 => GgmlType::Q4_0,
            Q4_1 => GgmlType::Q4_1,
            _ => GgmlType::Q8_0,
        }
    }

    /// Every group the rows touch, for every token: tiles of `TP` tokens,
    /// then single tokens. Rows of a group outside `rows` are computed but
    /// not stored.
    #[allow(clippy::incompatible_msrv)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    unsafe fn drive<const KIND: u8>(
        w: &WMat<'_>,
        rows: Range<usize>,
        x: &XQ<'_>,
        toks: Range<usize>,
        out: *mut f32,
        stride: usize,
    ) {
        let Some((bb, _, _)) = block_layout(ty(KIND)) else {
            return;
        };
        let nb = w.k / q8_act::QK8_ACT;
        debug_assert_eq!(w.group, G);
        debug_assert_eq!(w.row_bytes, nb * bb);
        debug_assert!(rows.end.div_ceil(G) * G * w.row_bytes <= w.data.len());
        debug_assert!(toks.end * w.k <= x.qs.len());
        if rows.is_empty() {
            return;
        }
        for g in rows.start / G..rows.end.div_ceil(G) {
            let r0 = g * G;
            let lo = rows.start.max(r0) - r0;
            let hi = rows.end.min(r0 + G) - r0;
            let mask = ((1u32 << hi) - (1u32 << lo)) as __mmask16;
            let c = Ctx {
                w: w.data.as_ptr().add(r0 * w.row_bytes),
                nb,
                k: w.k,
                x,
                out: out.add(r0),
                stride,
                mask,
            };
            let mut t = toks.start;
            while t + TP <= toks.end {
                tile::<KIND, TP>(&c, t);
                t += TP;
            }
            while t < toks.end {
                tile::<KIND, 1>(&c, t);
                t += 1;
            }
        }
    }

    /// One group: `w` and `out` start at its first row.
    struct Ctx<'a> {
        w: *const u8,
        nb: usize,
        k: usize,
        x: &'a XQ<'a>,
        out: *mut f32,
        stride: usize,
        /// The group's rows to store.
        mask: __mmask16,
    }

    /// Activation word `i` (4 quants) broadcast to every lane.
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn bcast(p: *const i32, i: usize) -> __m512i {
        // SAFETY: the caller passes a word inside the activation row.
        _mm512_set1_epi32(p.add(i).read_unaligned())
    }

    /// The 16 rows of a group × tokens `t0..t0 + T`.
    #[allow(clippy::incompatible_msrv)]
    #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni")]
    #[inline]
    unsafe fn tile<const KIND: u8, const T: usize>(c: &Ctx<'_>, t0: usize) {
        let nb = c.nb;
        // Quant bytes of one block of the group, and where quants start.
        let (qbytes, qstart) = match KIND {
            Q4_0 => (16 * G, 2 * G * nb),
            Q4_1 => (16 * G, 4 * G * nb),
            _ => (32 * G, 2 * G * nb),
        };
        let ds = c.w as *const __m256i;
        let ms = c.w.add(2 * G * nb) as *const __m256i;
        let qp = c.w.add(qstart);
        let m4 = _mm512_set1_epi8(0x0f);
        let xq = c.x.qs.as_ptr().add(t0 * c.k);
        let xd = c.x.d.as_ptr().add(t0 * nb);
        let xs = c.x.s.as_ptr().add(t0 * nb);
        let xi = c.x.isum.as_ptr().add(t0 * nb);
        let mut acc = [_mm512_setzero_ps(); T];
        let mut accm = [_mm512_setzero_ps(); T];
        for b in 0..nb {
            // SAFETY (whole loop): block b of this group is inside the
            // packed matrix (`drive`'s contract), token rows t0..t0+T are
            // inside `x`; all loads are unaligned.
            let dw = _mm512_cvtph_ps(_mm256_loadu_si256(ds.add(b)));
            let wb = qp.add(b * qbytes);
            if T == 1 {
                // Decode is a stream through memory: fetch PF bytes ahead
                // (prefetches never fault, past the end included).
                let pf = wb.wrapping_add(PF) as *const i8;
                for l in 0..qbytes / 64 {
                    _mm_prefetch::<_MM_HINT_T0>(pf.wrapping_add(64 * l));
                }
            }
            // wv[i] pairs with activation word i of the block.
            let mut wv = [_mm512_setzero_si512(); 8];
            if KIND == Q8_0 {
                for (i, v) in wv.iter_mut().enumerate() {
                    *v = _mm512_loadu_si512(wb.add(64 * i) as *const _);
                }
            } else {
                for i in 0..4 {
                    let v = _mm512_loadu_si512(wb.add(64 * i) as *const _);
                    wv[i] = _mm512_and_si512(v, m4);
                    wv[4 + i] = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                }
            }
            let mw = if KIND == Q4_1 {
                _mm512_cvtph_ps(_mm256_loadu_si256(ms.add(b)))
            } else {
                _mm512_setzero_ps()
            };
            for j in 0..T {
                let xw = xq.add(j * c.k + b * 32) as *const i32;
                let z = _mm512_setzero_si512();
                let mut s0 = _mm512_dpbusd_epi32(z, wv[0], bcast(xw, 0));
                let mut s1 = _mm512_dpbusd_epi32(z, wv[1], bcast(xw, 1));
                s0 = _mm512_dpbusd_epi32(s0, wv[2], bcast(xw, 2));
                s1 = _mm512_dpbusd_epi32(s1, wv[3], bcast(xw, 3));
                s0 = _mm512_dpbusd_epi32(s0, wv[4], bcast(xw, 4));
                s1 = _mm512_dpbusd_epi32(s1, wv[5], bcast(xw, 5));
                s0 = _mm512_dpbusd_epi32(s0, wv[6], bcast(xw, 6));
                s1 = _mm512_dpbusd_epi32(s1, wv[7], bcast(xw, 7));
                let mut isum = _mm512_add_epi32(s0, s1);
                match KIND {
                    Q4_0 => {
                        let corr = _mm512_set1_epi32(8 * *xi.add(j * nb + b));
                        isum = _mm512_sub_epi32(isum, corr);
                    }
                    Q8_0 => {
                        let corr = _mm512_set1_epi32(128 * *xi.add(j * nb + b));
                        isum = _mm512_sub_epi32(isum, corr);
                    }
                    _ => {}
                }
                let sc = _mm512_mul_ps(dw, _mm512_set1_ps(*xd.add(j * nb + b)));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum), sc, acc[j]);
                if KIND == Q4_1 {
                    accm[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(*xs.add(j * nb + b)), accm[j]);
                }
            }
        }
        for j in 0..T {
            let v = if KIND == Q4_1 {
                _mm512_add_ps(acc[j], accm[j])
            } else {
                acc[j]
            };
            // SAFETY: the caller owns the masked rows of token t0 + j.
            _mm512_mask_storeu_ps(c.out.add((t0 + j) * c.stride), c.mask, v);
        }
    }
}
