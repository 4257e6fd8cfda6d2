//! The streamed decode block (`kernels/stream.cu`): when one token's
//! decoder block runs as `sd_pre` + the decode attention + `sd_post`, the
//! scratch those launches share, and the checks that a model and GPU fit
//! them.

use super::device::{launch_smem, Arg, DevBuf};
use super::kernels::{SD_FIXED_SMEM, SD_MAXE, SD_MAX_SLOTS, SD_OUT, SD_SLOT};
use super::{CudaBackend, CudaKvCache, CudaTensor, CudaWeight};
use crate::backend::{Backend, BlockParams, BlockWeights, KvType, Visibility};
use crate::error::Result;
use crate::quants::GgmlType;

/// Threads of a streamed launch: 16 consumer warps and a producer warp
/// (`SD_THREADS`).
const SD_THREADS: u32 = 544;

/// `TERN_CUDA_SD_DEBUG` (a diagnostic, read once): bit 0 runs the
/// streamed launches without their arithmetic, bit 1 without their grid
/// barriers, to time the weight stream alone (results are wrong).
fn debug_bits() -> i32 {
    static BITS: std::sync::OnceLock<i32> = std::sync::OnceLock::new();
    *BITS.get_or_init(|| env_num("TERN_CUDA_SD_DEBUG").unwrap_or(0) as i32)
}

/// `TERN_CUDA_SD_SLOTS` (a diagnostic, read once): at most this many ring
/// slots.
fn slot_cap() -> usize {
    static CAP: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CAP.get_or_init(|| env_num("TERN_CUDA_SD_SLOTS").unwrap_or(SD_MAX_SLOTS))
}

fn env_num(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}
/// Columns of one warp task (`SD_SEG` blocks of 32): every mat-vec input
/// is a multiple of it.
const SD_SEG_COLS: usize = 4096;

/// What `sd_pre` and `sd_post` hand each other besides the residual row:
/// the rotated queries, the attention's output, SwiGLU's 8-bit output and
/// the grid barrier's two words.
pub(super) struct SdScratch {
    q: CudaTensor,
    att: CudaTensor,
    /// `f` bytes of 8-bit values, then `f / 32` (scale, scale · sum) pairs.
    glu: DevBuf,
    f: usize,
    /// The grid barriers' 64-bit arrival count.
    bar: DevBuf,
}

/// Rows of `units` split over `g` blocks, at most, times `per` (the
/// largest range any block gets, `sd_split` in stream.cu).
fn most(units: usize, g: usize, per: usize) -> usize {
    units.div_ceil(g) * per
}

impl CudaBackend {
    /// Run one token's block `w` on `x` as the streamed launches, if the
    /// configuration asks for them and the model and GPU fit; false (and
    /// nothing done) otherwise.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn stream_block(
        &self,
        x: &mut CudaTensor,
        w: &BlockWeights<'_, CudaWeight>,
        p: &BlockParams<'_>,
        positions: &[u32],
        kv: &mut CudaKvCache,
        layer: usize,
        first_slot: usize,
    ) -> Result<bool> {
        if self.sh.cfg.stream_block == 0 {
            return Ok(false);
        }
        let g = self.gpu()?;
        let spec = kv.spec;
        let a = p.attn;
        let (e, d, hq, hkv) = (x.cols, spec.head_dim, a.n_head, a.n_head_kv);
        let (aw, kw, f) = (hq * d, hkv * d, w.ffn_gate.rows);
        let q4 = |t: &CudaWeight, rows: usize, cols: usize| {
            t.ty == GgmlType::Q4_0 && (t.rows, t.cols) == (rows, cols)
        };
        let norm = |t: &CudaWeight| t.ty == GgmlType::F32 && t.rows * t.cols == e;
        let (rq, rk) = (p.rope_q, p.rope_k);
        let sms = g.sm_count;
        let fits = g.cc.0 >= 9
            && g.pdl
            && x.rows == 1
            && positions.len() == 1
            && layer < spec.n_layer
            && first_slot < spec.n_ctx
            && hkv == spec.n_head_kv
            && hkv > 0
            && hq.is_multiple_of(hkv)
            && a.head_dim == d
            && d.is_multiple_of(2)
            && a.visibility == Visibility::Causal
            && [e, f, aw].iter().all(|n| n.is_multiple_of(SD_SEG_COLS))
            && e <= SD_MAXE
            && q4(w.attn_q, aw, e)
            && q4(w.attn_k, kw, e)
            && q4(w.attn_v, kw, e)
            && q4(w.attn_output, e, aw)
            && q4(w.ffn_gate, f, e)
            && q4(w.ffn_up, f, e)
            && q4(w.ffn_down, e, f)
            && norm(w.attn_norm)
            && norm(w.ffn_norm)
            && rq.inv_freq == rk.inv_freq
            && rq.n_rot == rk.n_rot
            && rq.head_dim == d
            && rk.head_dim == d
            && rq.n_rot <= d
            && rq.inv_freq.len() == rq.n_rot / 2
            // Each block's results fit its epilogue's shared array.
            && most((aw + 2 * kw) / 2, sms, 2) <= SD_OUT
            && most(e, sms, aw / SD_SEG_COLS) <= SD_OUT
            && most(f / 32, sms, 32) <= SD_OUT / 2
            && most(e, sms, f / SD_SEG_COLS) <= SD_OUT;
        if !fits {
            return Ok(false);
        }
        let ns = ((g.smem_optin.saturating_sub(SD_FIXED_SMEM)) / SD_SLOT)
            .min(SD_MAX_SLOTS)
            .min(slot_cap());
        if ns < 4 {
            return Ok(false);
        }
        let smem = (SD_FIXED_SMEM + ns * SD_SLOT) as u32;
        // Every block of a launch must be resident at once (grid barriers):
        // one per SM.
        let known = self.lock().sd_fits;
        let ok = match known {
            Some(ok) => ok,
            None => {
                let per_sm = ["sd_pre", "sd_post"]
                    .iter()
                    .map(|n| {
                        // SAFETY: the function was loaded with the module
                        // and the call only reads its attributes.
                        unsafe {
                            cudarc::driver::result::occupancy::max_active_block_per_multiprocessor(
                                self.f(n),
                                SD_THREADS as i32,
                                smem as usize,
                            )
                        }
                        .unwrap_or(0)
                    })
                    .min()
                    .unwrap_or(0);
                log::debug!(
                    "cuda: streamed decode block, {ns} slots ({smem} bytes): {per_sm} block(s) per SM"
                );
                self.lock().sd_fits = Some(per_sm >= 1);
                per_sm >= 1
            }
        };
        if !ok {
            return Ok(false);
        }

        // The scratch, made on first use (an allocation: the step is not
        // captured this time, as for any other scratch).
        let mut sd = self.lock().sd.take();
        if sd.as_ref().is_none_or(|s| s.q.cols != aw || s.f < f) {
            let make = |cols: usize| -> Result<CudaTensor> {
                let buf = DevBuf::new(g, cols * 4, "activation")?;
                buf.zero(g)?;
                Ok(CudaTensor { rows: 1, cols, buf })
            };
            let bar = DevBuf::new(g, 8, "grid barrier")?;
            bar.zero(g)?;
            sd = Some(SdScratch {
                q: make(aw)?,
                att: make(aw)?,
                glu: DevBuf::new(g, f + f / 32 * 8, "activation quantization")?,
                f,
                bar,
            });
            self.bump();
            self.forget_memo();
        }
        let Some(mut s) = sd else {
            return Ok(false);
        };
        let r = self.stream_launches(&mut s, x, w, p, positions, kv, layer, first_slot, ns, smem);
        let mut m = self.lock();
        m.sd = Some(s);
        m.sd_on = true;
        drop(m);
        r.map(|()| true)
    }

    #[allow(clippy::too_many_arguments)]
    fn stream_launches(
        &self,
        s: &mut SdScratch,
        x: &mut CudaTensor,
        w: &BlockWeights<'_, CudaWeight>,
        p: &BlockParams<'_>,
        positions: &[u32],
        kv: &mut CudaKvCache,
        layer: usize,
        first_slot: usize,
        ns: usize,
        smem: u32,
    ) -> Result<()> {
        let g = self.gpu()?;
        let spec = kv.spec;
        let (e, f, aw, kw) = (
            x.cols,
            w.ffn_gate.rows,
            s.q.cols,
            spec.n_head_kv * spec.head_dim,
        );
        let sms = (g.sm_count as u32, 1, 1);
        self.wrote(&s.q);
        let (pos, fr, fs) = self.stage_rope(positions, p.rope_q, first_slot)?;
        let (kc, vc) = &kv.layers[layer];
        launch_smem(
            g,
            self.f("sd_pre"),
            "decode block (pre)",
            sms,
            SD_THREADS,
            smem,
            &mut [
                Arg::Ptr(x.buf.ptr),
                Arg::Ptr(w.attn_norm.buf.ptr),
                Arg::F32(p.eps),
                Arg::I32(e as i32),
                Arg::Ptr(w.attn_q.buf.ptr),
                Arg::I32(aw as i32),
                Arg::Ptr(w.attn_k.buf.ptr),
                Arg::Ptr(w.attn_v.buf.ptr),
                Arg::I32(kw as i32),
                Arg::Ptr(s.q.buf.ptr),
                Arg::Ptr(pos),
                Arg::Ptr(fr),
                Arg::I32(spec.head_dim as i32),
                Arg::I32(p.rope_q.n_rot as i32),
                Arg::Ptr(kc.ptr),
                Arg::Ptr(vc.ptr),
                Arg::Ptr(fs),
                Arg::I32((spec.ty == KvType::F16) as i32),
                Arg::I32(ns as i32),
                Arg::I32(debug_bits()),
            ],
        )?;
        self.attention(&s.q, kv, layer, first_slot, p.attn, &mut s.att)?;
        let (aq, asc) = self.quantize_x(&s.att)?;
        self.wrote(x);
        let gq = s.glu.ptr;
        launch_smem(
            g,
            self.f("sd_post"),
            "decode block (post)",
            sms,
            SD_THREADS,
            smem,
            &mut [
                Arg::Ptr(x.buf.ptr),
                Arg::Ptr(aq),
                Arg::Ptr(asc),
                Arg::Ptr(w.attn_output.buf.ptr),
                Arg::Ptr(w.ffn_norm.buf.ptr),
                Arg::Ptr(w.ffn_gate.buf.ptr),
                Arg::Ptr(w.ffn_up.buf.ptr),
                Arg::Ptr(w.ffn_down.buf.ptr),
                Arg::I32(e as i32),
                Arg::I32(f as i32),
                Arg::I32(aw as i32),
                Arg::F32(p.eps),
                Arg::F32(p.residual_scale),
                Arg::Ptr(gq),
                Arg::Ptr(gq + f as u64),
                Arg::Ptr(s.bar.ptr),
                Arg::I32(ns as i32),
                Arg::I32(debug_bits()),
            ],
        )
    }
}
