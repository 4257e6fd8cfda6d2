//! x86_64 kernels: AVX2+FMA, and AVX-512 VNNI on 256-bit vectors.
//!
//! One block (32 elements) fills one 256-bit vector. Per block and element
//! the integer sum `Σ qw·qx` is exact (`maddubs`+`madd`, or `vpdpbusd`),
//! converted to f32 and accumulated as `acc = fma(isum, dw·dx, acc)` in eight
//! lanes; the lanes are reduced by a fixed tree at the end. `u8 × i8`
//! products need an unsigned operand:
//! - Q4_1: the nibbles are already unsigned.
//! - Q4_0: `Σ (q−8)·x = Σ q·x − Σ 8·x`; the second sum is made once per
//!   token and block and reused by every row of the tile.
//! - Q8_0: `Σ w·x = Σ |w| · (x·sign w)` (`vpsignb`).
//!
//! Q4_1's offset term `Σ_b m_b · s_b` is a separate f32 dot of the row's
//! offsets with the token's block sums, added last (as the reference does).
//!
//! The VNNI set is ~1.3× the AVX2 one on prefill here: `vpdpbusd` replaces
//! two instructions, and AVX-512VL's 32 registers hold a 4×4 tile.
//!
//! The macro below stamps out one module per instruction set so the tile
//! code exists once; each module is compiled with its own target features.

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
        v.push(vnni::KERNELS);
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

/// `Σ` of four adjacent `u8 × i8` products into each i32 lane, VNNI.
// The AVX-512 intrinsics are stable since Rust 1.89, above the workspace's
// declared MSRV (1.85); the pinned toolchain is newer. See the report on
// raising `rust-version`.
#[allow(clippy::incompatible_msrv)]
#[target_feature(enable = "avx2,avx512f,avx512vl,avx512vnni")]
#[inline]
fn dot_vnni(a: __m256i, b: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), a, b)
}

macro_rules! x86_kernels {
    ($m:ident, $name:literal, $feat:literal, $dot:ident,
     prefill: ($RP:literal, $TP:literal), decode: $RD:literal) => {
        pub(super) mod $m {
            use super::*;

            pub(crate) const KERNELS: Kernels = Kernels {
                name: $name,
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
x86_kernels!(
    vnni,
    "avx512vnni",
    "avx2,fma,f16c,avx512f,avx512vl,avx512bw,avx512vnni",
    dot_vnni,
    prefill: (4, 4),
    decode: 4
);
