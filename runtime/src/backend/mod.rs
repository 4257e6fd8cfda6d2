//! The backend interface: a few coarse, LLM-shaped operations that model code
//! calls and each backend (CPU now, CUDA later) implements.
//!
//! Model code is generic over `B: Backend` and never names a concrete
//! backend's types; a backend never knows which architecture calls it. Every
//! activation is an f32 row-major matrix `[rows, cols]` (one row per token of
//! the batch). Weights are GGML-typed matrices `[rows, cols]` where `cols` is
//! GGUF's `dims[0]` (the contiguous dimension), so `matmul` computes
//! `out[t, r] = Σ_c W[r, c] · x[t, c]` — GGML's `mul_mat(W, x)` orientation.
//!
//! Attention is one operation over the KV cache, parameterised by a
//! visibility rule, so block-sparse attention (InfLLM v2) and tree-shaped
//! masks (speculative verification) slot in here without touching model code.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quants::GgmlType;

/// A tensor as the `[rows, cols]` matrix backends multiply (`cols` is GGUF's
/// `dims[0]`, every further dimension folds into rows), or `SizeOverflow`
/// when either does not fit a `usize`.
pub(crate) fn matrix_shape(info: &TensorInfo) -> Result<(usize, usize)> {
    let overflow = |reason: &str| Error::SizeOverflow {
        tensor: info.name.clone(),
        reason: reason.into(),
    };
    let cols = usize::try_from(info.dims[0]).map_err(|_| overflow("row length"))?;
    let rows = usize::try_from(info.n_elements / info.dims[0].max(1))
        .map_err(|_| overflow("row count"))?;
    Ok((rows, cols))
}

/// Operations a backend may or may not support for a given weight type;
/// asked at load time so a model fails before its first forward, not during it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    /// Row lookup in an embedding table.
    Embed,
    /// `x · Wᵀ` with a weight of the given type.
    MatMul,
    /// A 1-D weight (norm scales, RoPE factors) read as f32.
    Vector,
}

/// Storage type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvType {
    /// f32: exact, twice the memory. For tests and references.
    F32,
    /// f16, as llama.cpp stores it by default.
    #[default]
    F16,
}

/// Shape of a KV cache: `n_layer` × (K and V) × `n_ctx` slots × `n_head_kv · head_dim`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KvSpec {
    /// Decoder blocks, each with its own K and V cache.
    pub n_layer: usize,
    /// Slots per layer: the context size in tokens.
    pub n_ctx: usize,
    /// Key/value heads stored per slot.
    pub n_head_kv: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Element type the cache stores.
    pub ty: KvType,
}

impl KvSpec {
    /// Bytes the cache will occupy, or `None` on overflow.
    pub fn bytes(&self) -> Option<u64> {
        let elem: u64 = match self.ty {
            KvType::F32 => 4,
            KvType::F16 => 2,
        };
        (self.n_layer as u64)
            .checked_mul(2)?
            .checked_mul(self.n_ctx as u64)?
            .checked_mul(self.n_head_kv as u64)?
            .checked_mul(self.head_dim as u64)?
            .checked_mul(elem)
    }
}

/// Rotary position embedding parameters (GGML "normal" mode: the rotated
/// pairs are adjacent elements `(2i, 2i+1)` of each head).
#[derive(Clone, Debug, PartialEq)]
pub struct Rope {
    /// Heads in the rotated activation (q or k).
    pub n_head: usize,
    /// Elements per head.
    pub head_dim: usize,
    /// Rotated elements per head (even, ≤ head_dim); the rest pass through.
    pub n_rot: usize,
    /// Angular frequency of each pair, `n_rot / 2` entries: pair i at
    /// position p turns by `p · inv_freq[i]` radians. LongRoPE factors are
    /// already divided in.
    pub inv_freq: Vec<f64>,
}

/// Which cache slots a token of the batch may attend to.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Visibility {
    /// Slot order is causal order: the token written to slot `s` sees slots `0..=s`.
    #[default]
    Causal,
}

/// Parameters of one attention call.
#[derive(Clone, Debug, PartialEq)]
pub struct AttnParams {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads; divides `n_head`, each serving `n_head / n_head_kv`
    /// query heads (grouped-query attention).
    pub n_head_kv: usize,
    /// Elements per head, for queries, keys and values alike.
    pub head_dim: usize,
    /// Softmax scale, normally `1 / sqrt(head_dim)`.
    pub scale: f32,
    /// Which cache slots each token of the batch may attend to.
    pub visibility: Visibility,
}

/// The weights of one decoder block, for [`Backend::decode_block`].
#[derive(Clone, Copy)]
pub struct BlockWeights<'a, W> {
    /// RMS-norm scales before attention.
    pub attn_norm: &'a W,
    /// Query, key and value projections.
    pub attn_q: &'a W,
    /// Key projection.
    pub attn_k: &'a W,
    /// Value projection.
    pub attn_v: &'a W,
    /// Attention output projection.
    pub attn_output: &'a W,
    /// RMS-norm scales before the feed-forward network.
    pub ffn_norm: &'a W,
    /// Feed-forward gate projection (SiLU applied).
    pub ffn_gate: &'a W,
    /// Feed-forward up projection.
    pub ffn_up: &'a W,
    /// Feed-forward down projection.
    pub ffn_down: &'a W,
}

/// The scalars of one decoder block, for [`Backend::decode_block`].
#[derive(Clone, Copy)]
pub struct BlockParams<'a> {
    /// RMSNorm epsilon.
    pub eps: f32,
    /// Each sub-block's output is scaled by this before the residual add.
    pub residual_scale: f32,
    /// Attention shape and scale.
    pub attn: &'a AttnParams,
    /// RoPE for the queries.
    pub rope_q: &'a Rope,
    /// RoPE for the keys.
    pub rope_k: &'a Rope,
}

/// The host values of one forward step that change from step to step. A
/// backend that replays recorded steps (CUDA graphs) substitutes these.
#[derive(Clone, Copy, Debug)]
pub struct StepInputs<'a> {
    /// Token ids of the batch.
    pub tokens: &'a [u32],
    /// Their positions.
    pub positions: &'a [u32],
    /// The KV slot of the batch's first token.
    pub first_slot: usize,
    /// Rows whose logits are kept.
    pub outputs: &'a [usize],
}

/// A compute backend. Implementations own their memory; model code only
/// holds the associated handle types.
pub trait Backend: Send + Sync + Sized + 'static {
    /// An f32 activation matrix `[rows, cols]`.
    type Tensor: Send;
    /// A weight resident on (or mapped for) the backend.
    type Weight: Send + Sync;
    /// The KV cache of one session.
    type KvCache: Send;

    /// Short name for logs and errors ("cpu").
    fn name(&self) -> &'static str;

    /// Whether `op` works with weights of type `ty`.
    fn supports(&self, op: Op, ty: GgmlType) -> bool;

    /// Make a tensor of `file` usable as a weight (the CPU maps it in place).
    fn load_weight(&self, file: &Arc<GgufFile>, info: &TensorInfo, op: Op) -> Result<Self::Weight>;

    /// A zeroed activation matrix.
    fn alloc(&self, rows: usize, cols: usize) -> Result<Self::Tensor>;

    /// Rows and columns of an activation.
    fn shape(&self, t: &Self::Tensor) -> (usize, usize);

    /// Change an activation's row count, keeping its column count; may
    /// reallocate only when growing past what it ever held.
    fn resize_rows(&self, t: &mut Self::Tensor, rows: usize) -> Result<()>;

    /// Copy an activation to host memory (`out.len() == rows · cols`).
    fn read(&self, t: &Self::Tensor, out: &mut [f32]) -> Result<()>;

    /// [`read`](Backend::read), and whether every value read is finite: a
    /// backend that stages the copy checks each piece while it is in cache
    /// (one pass over the logits instead of two).
    fn read_finite(&self, t: &Self::Tensor, out: &mut [f32]) -> Result<bool> {
        self.read(t, out)?;
        Ok(all_finite(out))
    }

    /// A KV cache for `spec`.
    fn alloc_kv(&self, spec: &KvSpec) -> Result<Self::KvCache>;

    /// `out[t] = table[ids[t]] · scale`.
    fn embed(
        &self,
        table: &Self::Weight,
        ids: &[u32],
        scale: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// RMSNorm: `out[t] = x[t] / sqrt(mean(x[t]²) + eps) · w`.
    fn rms_norm(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        eps: f32,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// `out[t, r] = Σ_c W[r, c] · x[t, c]`.
    fn matmul(&self, x: &Self::Tensor, w: &Self::Weight, out: &mut Self::Tensor) -> Result<()>;

    /// Several matmuls of the same input: `outs[i] = x · ws[i]ᵀ`, with the
    /// same results as one [`Backend::matmul`] per pair (the q/k/v and
    /// gate/up projections). A backend may share work between them, such as
    /// preparing `x` once; the default runs them one by one.
    fn matmul_many(
        &self,
        x: &Self::Tensor,
        ws: &[&Self::Weight],
        outs: &mut [&mut Self::Tensor],
    ) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(Error::InvalidBatch(format!(
                "matmul_many: {} weights for {} outputs",
                ws.len(),
                outs.len()
            )));
        }
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.matmul(x, w, out)?;
        }
        Ok(())
    }

    /// Rotate each row's heads in place; row t is at position `positions[t]`.
    fn rope(&self, x: &mut Self::Tensor, positions: &[u32], rope: &Rope) -> Result<()>;

    /// RoPE on the queries and keys, then the keys and values stored in
    /// `layer` (slots `first_slot..`): the same results as
    /// [`Backend::rope`] on `q` and on `k` followed by [`Backend::kv_write`],
    /// which is what the default does. A backend may do it in one pass.
    #[allow(clippy::too_many_arguments)]
    fn rope_kv_write(
        &self,
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &Self::Tensor,
        positions: &[u32],
        rope_q: &Rope,
        rope_k: &Rope,
        kv: &mut Self::KvCache,
        layer: usize,
        first_slot: usize,
    ) -> Result<()> {
        self.rope(q, positions, rope_q)?;
        self.rope(k, positions, rope_k)?;
        self.kv_write(kv, layer, first_slot, k, v)
    }

    /// The attention block's input side in one call: `q`, `k`, `v` = the
    /// products of `x` with `wq`, `wk`, `wv`, then [`Backend::rope_kv_write`]
    /// — which is what the default does. A backend may fuse the rotation
    /// and the cache write into the products' epilogue (the CUDA decode
    /// step does).
    #[allow(clippy::too_many_arguments)]
    fn qkv_rope_kv_write(
        &self,
        x: &Self::Tensor,
        w: [&Self::Weight; 3],
        q: &mut Self::Tensor,
        k: &mut Self::Tensor,
        v: &mut Self::Tensor,
        positions: &[u32],
        rope_q: &Rope,
        rope_k: &Rope,
        kv: &mut Self::KvCache,
        layer: usize,
        first_slot: usize,
    ) -> Result<()> {
        self.matmul_many(x, &w, &mut [&mut *q, &mut *k, &mut *v])?;
        self.rope_kv_write(q, k, v, positions, rope_q, rope_k, kv, layer, first_slot)
    }

    /// Store this batch's keys and values of `layer` in slots `first_slot..first_slot + rows`.
    fn kv_write(
        &self,
        kv: &mut Self::KvCache,
        layer: usize,
        first_slot: usize,
        k: &Self::Tensor,
        v: &Self::Tensor,
    ) -> Result<()>;

    /// Attention of the batch's queries (row t was written to slot
    /// `first_slot + t`) over the cache of `layer`, by `params.visibility`.
    /// Slots below `first_slot` must not be written by work still running
    /// when this is queued (a CUDA decode attention reads them before it
    /// waits for the kernel ahead of it); within `run_step` they never are.
    fn attention(
        &self,
        q: &Self::Tensor,
        kv: &Self::KvCache,
        layer: usize,
        first_slot: usize,
        params: &AttnParams,
        out: &mut Self::Tensor,
    ) -> Result<()>;

    /// SwiGLU's gate: `gate = silu(gate) · up`, with `silu(x) = x / (1 + e^-x)`.
    fn silu_mul(&self, gate: &mut Self::Tensor, up: &Self::Tensor) -> Result<()>;

    /// SwiGLU's input side: `gate = silu(x·W_gateᵀ) · (x·W_upᵀ)`, with the
    /// same results as [`Backend::matmul_many`] into `gate` and `up`
    /// followed by [`Backend::silu_mul`], which is what the default does
    /// (`up` is scratch; its contents afterwards are unspecified). A
    /// backend may fuse them.
    fn matmul_glu(
        &self,
        x: &Self::Tensor,
        w_gate: &Self::Weight,
        w_up: &Self::Weight,
        gate: &mut Self::Tensor,
        up: &mut Self::Tensor,
    ) -> Result<()> {
        self.matmul_many(x, &[w_gate, w_up], &mut [&mut *gate, &mut *up])?;
        self.silu_mul(gate, up)
    }

    /// A projection added into the residual stream: `acc += scale · x·Wᵀ`,
    /// with the same results as [`Backend::matmul`] into `tmp` followed by
    /// [`Backend::add_scaled`], which is what the default does (`tmp` is
    /// scratch of `acc`'s shape; its contents afterwards are unspecified).
    /// A backend may fuse the two.
    fn matmul_add(
        &self,
        x: &Self::Tensor,
        w: &Self::Weight,
        tmp: &mut Self::Tensor,
        acc: &mut Self::Tensor,
        scale: f32,
    ) -> Result<()> {
        self.matmul(x, w, tmp)?;
        self.add_scaled(acc, tmp, scale)
    }

    /// Residual update: `acc += scale · x`.
    fn add_scaled(&self, acc: &mut Self::Tensor, x: &Self::Tensor, scale: f32) -> Result<()>;

    /// `x *= s`.
    fn scale(&self, x: &mut Self::Tensor, s: f32) -> Result<()>;

    /// `out[i] = x[rows[i]]`: keep the rows whose logits were asked for.
    fn gather_rows(&self, x: &Self::Tensor, rows: &[usize], out: &mut Self::Tensor) -> Result<()>;

    /// One token's whole decoder block on the residual row `x` (at
    /// `positions[0]`, its key and value stored in slot `first_slot` of
    /// `layer`): what the block's separate operations compute (RMSNorm,
    /// q/k/v with RoPE and the cache write, attention, the output
    /// projection added to `x`, RMSNorm, SwiGLU, the down projection added
    /// to `x`), within the backend's rounding. A backend may run it as one
    /// unit (the CUDA decode step on sm_90 does); `Ok(false)` means it did
    /// nothing and the caller runs the separate operations, which is what
    /// the default answers.
    #[allow(clippy::too_many_arguments)]
    fn decode_block(
        &self,
        x: &mut Self::Tensor,
        w: &BlockWeights<'_, Self::Weight>,
        p: &BlockParams<'_>,
        positions: &[u32],
        kv: &mut Self::KvCache,
        layer: usize,
        first_slot: usize,
    ) -> Result<bool> {
        let _ = (x, w, p, positions, kv, layer, first_slot);
        Ok(false)
    }

    /// A hint that `ws` are read soon after the work queued so far: a
    /// backend may start moving (a first part of) them closer to the
    /// compute meanwhile (CUDA: into L2, on a side stream, while the decode
    /// chain runs kernels that are short of memory traffic). Never changes
    /// a result; the default does nothing.
    fn prefetch(&self, ws: &[&Self::Weight]) -> Result<()> {
        let _ = ws;
        Ok(())
    }

    /// Run the ops of one whole forward step over `kv`. `ops` issues the
    /// same op sequence every time it is called with inputs of the same
    /// shape, and reads nothing else from the host than `inputs`, so a
    /// backend may record it once and replay the recording with new inputs
    /// (CUDA graphs). The default just runs it.
    fn run_step(
        &self,
        kv: &mut Self::KvCache,
        inputs: &StepInputs,
        ops: &mut dyn FnMut(&mut Self::KvCache) -> Result<()>,
    ) -> Result<()> {
        let _ = inputs;
        ops(kv)
    }
}

/// Whether every value is finite. A value is not when its exponent bits are
/// all set, and then adding one to the exponent carries into bit 31: one
/// OR-fold of integer operations, which vectorizes.
pub fn all_finite(v: &[f32]) -> bool {
    let carry = v.iter().fold(0u32, |a, x| {
        a | (x.to_bits() & 0x7f80_0000).wrapping_add(0x0080_0000)
    });
    carry & 0x8000_0000 == 0
}
