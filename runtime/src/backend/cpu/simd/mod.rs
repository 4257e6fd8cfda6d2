//! Quantized matrix-multiply kernels for the fast CPU path: Q4_0, Q4_1 and
//! Q8_0 weight rows against activations quantized to 8 bits per block
//! (`quants::q8_act`), chosen once at run time for the CPU at hand.
//!
//! A kernel fills `out[t · stride + r]` for a rectangle of weight rows ×
//! tokens. Inside, it walks register tiles of R rows × T tokens so each
//! weight block is loaded once per T tokens and each activation block once
//! per R rows. **Every output element is computed by the same sequence of
//! operations whatever the tile, rectangle, thread or batch it falls in**
//! (integer block sums are exact; the f32 scale products are accumulated per
//! element in block order and reduced by one fixed tree), which is what
//! keeps CPU results independent of batch shape and thread count.
//!
//! - `x86.rs`: AVX2+FMA (`maddubs`/`madd`) and AVX-512 VNNI on 256-bit
//!   vectors (`vpdpbusd`, with the 32 vector registers of AVX-512VL for
//!   bigger tiles).
//! - `neon.rs`: aarch64 NEON with the dot-product extension (`sdot`).
//! - [`portable`]: the scalar reference kernels, used when neither applies.

use std::ops::Range;

use crate::quants::{q8_act, GgmlType};

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

/// A quantized weight matrix read in place: `rows · row_bytes` bytes.
#[derive(Clone, Copy)]
pub(crate) struct WMat<'a> {
    pub data: &'a [u8],
    pub row_bytes: usize,
    /// Elements per row (a multiple of 32).
    pub k: usize,
}

/// Quantized activations of a batch: token t's quants are
/// `qs[t·k..(t+1)·k]`, its block scales `d[t·nb..]` and block sums `s[t·nb..]`.
#[derive(Clone, Copy)]
pub(crate) struct XQ<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    pub k: usize,
}

/// Owned buffers for [`XQ`], reused across calls (grown, never shrunk).
#[derive(Default, Debug)]
pub(crate) struct QActs {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
}

impl QActs {
    /// Quantize `n_tok` rows of `k` activations with `kernels`' quantizer.
    pub(crate) fn quantize(
        &mut self,
        kernels: &Kernels,
        x: &[f32],
        n_tok: usize,
        k: usize,
    ) -> XQ<'_> {
        let nb = k / q8_act::QK8_ACT;
        let (nq, ns) = (n_tok * k, n_tok * nb);
        if self.qs.len() < nq {
            self.qs.resize(nq, 0);
        }
        if self.d.len() < ns {
            self.d.resize(ns, 0.0);
            self.s.resize(ns, 0.0);
        }
        (kernels.quantize)(
            &x[..nq],
            &mut self.qs[..nq],
            &mut self.d[..ns],
            &mut self.s[..ns],
        );
        XQ {
            qs: &self.qs[..nq],
            d: &self.d[..ns],
            s: &self.s[..ns],
            k,
        }
    }
}

/// Fills `out[t·stride + r]` for `r` in `rows`, `t` in `toks`.
///
/// # Safety
/// `rows` lie within `w`, `toks` within `x`, and every written index is
/// inside the allocation `out` points to and not written concurrently.
/// `scratch` is per-thread working memory.
pub(crate) type GemmFn = unsafe fn(
    w: &WMat<'_>,
    rows: Range<usize>,
    x: &XQ<'_>,
    toks: Range<usize>,
    out: *mut f32,
    stride: usize,
    scratch: &mut Vec<f32>,
);

/// Quantizes rows: `(x, qs, d, s)`, as `q8_act::quantize_row_ref`.
pub(crate) type QuantizeFn = fn(&[f32], &mut [i8], &mut [f32], &mut [f32]);

/// The kernels of one instruction set.
#[derive(Clone, Copy)]
pub(crate) struct Kernels {
    pub name: &'static str,
    pub quantize: QuantizeFn,
    pub q4_0: GemmFn,
    pub q4_1: GemmFn,
    pub q8_0: GemmFn,
}

impl std::fmt::Debug for Kernels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name)
    }
}

impl Kernels {
    /// The kernel for weights of `ty`, if the fast path handles it.
    pub(crate) fn gemm(&self, ty: GgmlType) -> Option<GemmFn> {
        match ty {
            GgmlType::Q4_0 => Some(self.q4_0),
            GgmlType::Q4_1 => Some(self.q4_1),
            GgmlType::Q8_0 => Some(self.q8_0),
            _ => None,
        }
    }
}

/// Every kernel set this CPU can run, best first; the portable one last.
pub(crate) fn available() -> Vec<Kernels> {
    let mut v = Vec::new();
    #[cfg(target_arch = "x86_64")]
    v.extend(x86::available());
    #[cfg(target_arch = "aarch64")]
    v.extend(neon::available());
    v.push(portable::KERNELS);
    v
}

/// The best kernel set for this CPU.
pub(crate) fn best() -> Kernels {
    available()[0]
}

/// Scalar kernels: the `q8_act` reference dots, one element at a time.
pub(crate) mod portable {
    use super::*;

    pub(crate) const KERNELS: Kernels = Kernels {
        name: "scalar",
        quantize: q8_act::quantize_row_ref,
        q4_0: gemm_q4_0,
        q4_1: gemm_q4_1,
        q8_0: gemm_q8_0,
    };

    macro_rules! portable_gemm {
        ($name:ident, |$wr:ident, $qs:ident, $d:ident, $s:ident| $body:expr) => {
            /// # Safety
            /// See [`GemmFn`].
            unsafe fn $name(
                w: &WMat<'_>,
                rows: Range<usize>,
                x: &XQ<'_>,
                toks: Range<usize>,
                out: *mut f32,
                stride: usize,
                _scratch: &mut Vec<f32>,
            ) {
                let nb = x.k / q8_act::QK8_ACT;
                for t in toks {
                    let $qs = &x.qs[t * x.k..(t + 1) * x.k];
                    let $d = &x.d[t * nb..(t + 1) * nb];
                    let $s = &x.s[t * nb..(t + 1) * nb];
                    for r in rows.clone() {
                        let $wr = &w.data[r * w.row_bytes..(r + 1) * w.row_bytes];
                        // SAFETY: the caller guarantees the index is ours to write.
                        unsafe { *out.add(t * stride + r) = $body };
                    }
                }
            }
        };
    }

    portable_gemm!(gemm_q4_0, |wr, qs, d, _s| q8_act::vec_dot_q4_0_ref(
        wr, qs, d
    ));
    portable_gemm!(gemm_q4_1, |wr, qs, d, s| q8_act::vec_dot_q4_1_ref(
        wr, qs, d, s
    ));
    portable_gemm!(gemm_q8_0, |wr, qs, d, _s| q8_act::vec_dot_q8_0_ref(
        wr, qs, d
    ));
}
