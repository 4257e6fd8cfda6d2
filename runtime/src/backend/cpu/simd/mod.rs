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
//! - `x86.rs`: AVX2+FMA (`maddubs`/`madd`) on the file's row layout, and
//!   AVX-512 VNNI on 512-bit vectors over a row-interleaved layout.
//! - `neon.rs`: aarch64 NEON with the dot-product extension (`sdot`).
//! - [`portable`]: the scalar reference kernels, used when neither applies.
//!
//! **Interleaved layout.** A kernel set with `group = G > 0` reads weights
//! repacked at load time ([`pack_group`]) so that one SIMD vector holds the
//! same four columns of G rows: for `vpdpbusd` with a broadcast activation
//! word, every i32 lane is one row, so no horizontal reduction is needed and
//! the per-block scales of G rows load as one vector. Rows are grouped by G
//! (the last group padded with zero rows); each group holds, in order, the
//! f16 scales of all its blocks (`[block][row]`), for Q4_1 the f16 offsets
//! likewise, then per block the quants as `[4-byte chunk][row][4 bytes]`.
//! Q8_0 quants are stored as `q + 128` (unsigned). A group is exactly
//! `G · row_bytes` bytes, so the packed matrix is the size of the original.

use std::ops::Range;

use crate::quants::{q8_act, GgmlType};

#[cfg(target_arch = "aarch64")]
mod neon;
#[cfg(target_arch = "x86_64")]
mod x86;

/// A quantized weight matrix: `rows · row_bytes` bytes in the file's
/// layout (`group == 0`), or interleaved by `group` rows (see the module docs).
#[derive(Clone, Copy)]
pub(crate) struct WMat<'a> {
    pub data: &'a [u8],
    pub row_bytes: usize,
    /// Elements per row (a multiple of 32).
    pub k: usize,
    /// Rows per interleaved group, or 0 for the file's layout.
    pub group: usize,
}

/// Quantized activations of a batch: token t's quants are
/// `qs[t·k..(t+1)·k]`, its block scales `d[t·nb..]`, block sums `s[t·nb..]`
/// and integer block sums `Σ qs` in `isum[t·nb..]`.
#[derive(Clone, Copy)]
pub(crate) struct XQ<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
    /// Read by the interleaved kernels only (x86_64 today).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pub isum: &'a [i32],
    pub k: usize,
}

/// `Σ qs` of every block of 32.
pub(crate) fn block_isums(qs: &[i8], out: &mut [i32]) {
    for (o, b) in out.iter_mut().zip(qs.chunks_exact(q8_act::QK8_ACT)) {
        *o = b.iter().map(|&q| q as i32).sum();
    }
}

/// Owned buffers for [`XQ`], reused across calls (grown, never shrunk).
#[derive(Default, Debug)]
pub(crate) struct QActs {
    qs: Vec<i8>,
    d: Vec<f32>,
    s: Vec<f32>,
    isum: Vec<i32>,
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
            self.isum.resize(ns, 0);
        }
        (kernels.quantize)(
            &x[..nq],
            &mut self.qs[..nq],
            &mut self.d[..ns],
            &mut self.s[..ns],
        );
        block_isums(&self.qs[..nq], &mut self.isum[..ns]);
        XQ {
            qs: &self.qs[..nq],
            d: &self.d[..ns],
            s: &self.s[..ns],
            isum: &self.isum[..ns],
            k,
        }
    }
}

/// Fills `out[t·stride + r]` for `r` in `rows`, `t` in `toks`.
///
/// # Safety
/// `rows` lie within `w`, `toks` within `x`, and every written index is
/// inside the allocation `out` points to and not written concurrently.
/// `w.group` is the kernel set's [`Kernels::group`]; for an interleaved
/// matrix `w.data` holds every group that `rows` touches, whole.
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
    /// Rows per interleaved group the gemm kernels read (see the module
    /// docs), or 0 when they read the file's row layout.
    pub group: usize,
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

/// Block bytes, header (scale) bytes and quant bytes of a fast-path type.
pub(crate) fn block_layout(ty: GgmlType) -> Option<(usize, usize, usize)> {
    match ty {
        GgmlType::Q4_0 => Some((18, 2, 16)),
        GgmlType::Q4_1 => Some((20, 4, 16)),
        GgmlType::Q8_0 => Some((34, 2, 32)),
        _ => None,
    }
}

/// Repacks `src` (whole rows of `row_bytes` bytes in the file's layout, at
/// most `g` of them) into one interleaved group `dst` of `g · row_bytes`
/// bytes (see the module docs); missing rows are zero. Returns `None` for a
/// type the fast path does not know or lengths that do not fit.
pub(crate) fn pack_group(
    ty: GgmlType,
    g: usize,
    src: &[u8],
    row_bytes: usize,
    dst: &mut [u8],
) -> Option<()> {
    let (bb, hdr, qb) = block_layout(ty)?;
    if g == 0
        || row_bytes == 0
        || !row_bytes.is_multiple_of(bb)
        || !src.len().is_multiple_of(row_bytes)
        || src.len() > g * row_bytes
        || dst.len() != g * row_bytes
    {
        return None;
    }
    let nb = row_bytes / bb;
    let q_at = nb * g * hdr;
    dst.fill(0);
    for (r, row) in src.chunks_exact(row_bytes).enumerate() {
        for (b, blk) in row.chunks_exact(bb).enumerate() {
            let at = 2 * (b * g + r);
            dst[at..at + 2].copy_from_slice(&blk[..2]);
            if hdr == 4 {
                let at = nb * g * 2 + at;
                dst[at..at + 2].copy_from_slice(&blk[2..4]);
            }
            let qs = &blk[hdr..];
            let base = q_at + b * g * qb;
            for c in 0..qb / 4 {
                let at = base + (c * g + r) * 4;
                for i in 0..4 {
                    let q = qs[4 * c + i];
                    dst[at + i] = if ty == GgmlType::Q8_0 { q ^ 0x80 } else { q };
                }
            }
        }
    }
    Some(())
}

/// Row `r` of an interleaved matrix `packed` (groups of `g` rows), back in
/// the file's layout: the inverse of [`pack_group`] for one row.
pub(crate) fn unpack_row(
    ty: GgmlType,
    g: usize,
    packed: &[u8],
    row_bytes: usize,
    r: usize,
    dst: &mut [u8],
) -> Option<()> {
    let (bb, hdr, qb) = block_layout(ty)?;
    let nb = row_bytes / bb;
    let start = (r / g).checked_mul(g * row_bytes)?;
    let grp = packed.get(start..start + g * row_bytes)?;
    if dst.len() != row_bytes || !row_bytes.is_multiple_of(bb) {
        return None;
    }
    let (ri, q_at) = (r % g, nb * g * hdr);
    for (b, blk) in dst.chunks_exact_mut(bb).enumerate() {
        let at = 2 * (b * g + ri);
        blk[..2].copy_from_slice(&grp[at..at + 2]);
        if hdr == 4 {
            let at = nb * g * 2 + at;
            blk[2..4].copy_from_slice(&grp[at..at + 2]);
        }
        let base = q_at + b * g * qb;
        for c in 0..qb / 4 {
            let at = base + (c * g + ri) * 4;
            for i in 0..4 {
                let q = grp[at + i];
                blk[hdr + 4 * c + i] = if ty == GgmlType::Q8_0 { q ^ 0x80 } else { q };
            }
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_is_the_identity() {
        for ty in [GgmlType::Q4_0, GgmlType::Q4_1, GgmlType::Q8_0] {
            let (bb, _, _) = block_layout(ty).unwrap();
            let (rows, nb, g) = (21, 3, 8);
            let rb = nb * bb;
            let src: Vec<u8> = (0..rows * rb).map(|i| (i * 7 + i / 13) as u8).collect();
            let mut packed = vec![0u8; rows.div_ceil(g) * g * rb];
            for (s, d) in src.chunks(g * rb).zip(packed.chunks_mut(g * rb)) {
                pack_group(ty, g, s, rb, d).unwrap();
            }
            let mut row = vec![0u8; rb];
            for r in 0..rows {
                unpack_row(ty, g, &packed, rb, r, &mut row).unwrap();
                assert_eq!(row, &src[r * rb..(r + 1) * rb], "{ty} row {r}");
            }
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
        group: 0,
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
