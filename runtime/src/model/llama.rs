//! The llama-family forward pass (llama and minicpm), top to bottom.
//!
//! MiniCPM is llama with three scalars — embeddings × `embedding_scale`,
//! each block's attention and FFN output × `residual_scale` before the
//! residual add, logits ÷ `logit_scale` — and optional LongRoPE factors; for
//! llama all three are 1. The model calls backend operations only; it never
//! touches memory itself, so the same code runs on every backend.

use std::ops::ControlFlow;
use std::sync::Arc;

use crate::backend::{AttnParams, Backend, BlockParams, Rope, StepInputs, Visibility};
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::calib::{LinearInput, Observer};
use crate::model::{Config, LayerWeights, Weights};
use crate::session::Batch;

/// A loaded llama-family model on backend `B`.
pub struct LlamaModel<B: Backend> {
    /// Hyperparameters read from the file's metadata.
    pub config: Config,
    /// The backend that holds the weights and runs the forward pass.
    pub backend: B,
    /// The model's tensors, checked against `config` and loaded onto
    /// `backend`.
    pub weights: Weights<B>,
    /// Kept so the mapped weights outlive every use.
    pub file: Arc<GgufFile>,
}

/// Scratch activations of one session, grown to the largest batch seen and
/// then reused, so steady-state decoding allocates nothing here.
pub struct State<B: Backend> {
    x: B::Tensor,           // residual stream [n_tok, n_embd]
    xb: B::Tensor,          // normed input    [n_tok, n_embd]
    q: B::Tensor,           // queries         [n_tok, n_head · head_dim]
    k: B::Tensor,           // keys            [n_tok, n_head_kv · head_dim]
    v: B::Tensor,           // values          [n_tok, n_head_kv · head_dim]
    att: B::Tensor,         // attention out   [n_tok, n_head · head_dim]
    proj: B::Tensor,        // block output    [n_tok, n_embd]
    gate: B::Tensor,        // FFN gate        [n_tok, n_ff]
    up: B::Tensor,          // FFN up          [n_tok, n_ff]
    picked: B::Tensor,      // output rows     [n_out, n_embd]
    picked_norm: B::Tensor, // normed      [n_out, n_embd]
    logits: B::Tensor,      // logits          [n_out, n_vocab]
}

impl<B: Backend> State<B> {
    /// The residual stream, which [`LlamaModel::block`] updates in place.
    pub(super) fn x_mut(&mut self) -> &mut B::Tensor {
        &mut self.x
    }
}

/// RoPE for queries and keys at one context size.
#[derive(Clone, Debug)]
pub struct RopePair {
    /// RoPE for the queries (`n_head` heads).
    pub q: Rope,
    /// RoPE for the keys (`n_head_kv` heads).
    pub k: Rope,
}

impl<B: Backend> LlamaModel<B> {
    /// Check and load the model in `file` onto `backend`.
    pub fn load(file: Arc<GgufFile>, backend: B) -> Result<LlamaModel<B>> {
        let config = Config::from_gguf(&file)?;
        let weights = Weights::load(&file, &config, &backend)?;
        Ok(LlamaModel {
            config,
            backend,
            weights,
            file,
        })
    }

    /// Fresh scratch state.
    pub fn new_state(&self) -> Result<State<B>> {
        let c = &self.config;
        let b = &self.backend;
        Ok(State {
            x: b.alloc(0, c.n_embd)?,
            xb: b.alloc(0, c.n_embd)?,
            q: b.alloc(0, c.n_head * c.head_dim)?,
            k: b.alloc(0, c.n_head_kv * c.head_dim)?,
            v: b.alloc(0, c.n_head_kv * c.head_dim)?,
            att: b.alloc(0, c.n_head * c.head_dim)?,
            proj: b.alloc(0, c.n_embd)?,
            gate: b.alloc(0, c.n_ff)?,
            up: b.alloc(0, c.n_ff)?,
            picked: b.alloc(0, c.n_embd)?,
            picked_norm: b.alloc(0, c.n_embd)?,
            logits: b.alloc(0, c.n_vocab)?,
        })
    }

    /// RoPE parameters for a session of `n_ctx` tokens. With LongRoPE
    /// factors, the long set applies when the context exceeds the original
    /// training context (llama.cpp's rule), the short set otherwise; each
    /// pair's frequency is divided by its factor.
    pub fn rope_for_ctx(&self, n_ctx: usize) -> Result<RopePair> {
        let c = &self.config;
        let half = c.n_rot / 2;
        let w = &self.weights;
        let long = c.rope_orig_ctx.is_some_and(|orig| n_ctx > orig);
        let factors = if long {
            w.rope_factors_long
                .as_ref()
                .or(w.rope_factors_short.as_ref())
        } else {
            w.rope_factors_short.as_ref()
        };
        let mut inv_freq: Vec<f64> = (0..half)
            .map(|i| c.rope_freq_base.powf(-2.0 * i as f64 / c.n_rot as f64))
            .collect();
        if let Some(fs) = factors {
            for (f, &div) in inv_freq.iter_mut().zip(fs) {
                if !div.is_finite() || div <= 0.0 {
                    return Err(Error::BadHparam {
                        key: "rope_factors".into(),
                        value: div.to_string(),
                        reason: "LongRoPE factors must be finite and positive".into(),
                    });
                }
                *f /= div as f64;
            }
        }
        let mk = |n_head| Rope {
            n_head,
            head_dim: c.head_dim,
            n_rot: c.n_rot,
            inv_freq: inv_freq.clone(),
        };
        Ok(RopePair {
            q: mk(c.n_head),
            k: mk(c.n_head_kv),
        })
    }

    /// Run `batch.tokens` (at `batch.positions`, written to KV slots
    /// `first_slot..`) through the model and leave the logits of rows
    /// `batch.outputs` in
    /// `st.logits` (read them with `read_logits`). The caller has validated
    /// the batch against the cache and vocabulary.
    pub fn forward(
        &self,
        st: &mut State<B>,
        kv: &mut B::KvCache,
        rope: &RopePair,
        batch: &Batch,
        first_slot: usize,
    ) -> Result<()> {
        let (tokens, positions, outputs) = (&batch.tokens, &batch.positions, &batch.outputs);
        let c = &self.config;
        let b = &self.backend;
        let w = &self.weights;
        self.resize_block_state(st, tokens.len())?;
        b.resize_rows(&mut st.picked, outputs.len())?;
        b.resize_rows(&mut st.picked_norm, outputs.len())?;
        b.resize_rows(&mut st.logits, outputs.len())?;

        let attn = self.attn_params();
        let inputs = StepInputs {
            tokens,
            positions,
            first_slot,
            outputs,
        };
        // One whole step, which a backend may record and replay (CUDA graphs).
        b.run_step(kv, &inputs, &mut |kv| {
            // h = embed(tokens) · embedding_scale
            b.embed(&w.token_embd, tokens, c.embedding_scale, &mut st.x)?;

            for (il, l) in w.layers.iter().enumerate() {
                // Without an observer a block always runs to the end.
                let _: ControlFlow<()> =
                    self.block(st, kv, il, l, rope, positions, first_slot, &attn, None)?;
                match w.layers.get(il + 1) {
                    Some(n) => b.prefetch(&[&n.attn_q, &n.attn_k, &n.attn_v])?,
                    None => b.prefetch(&[&w.output])?,
                }
            }

            // logits = W_out · norm(h) / logit_scale, only for the rows asked for.
            b.gather_rows(&st.x, outputs, &mut st.picked)?;
            b.rms_norm(&st.picked, &w.output_norm, c.rms_eps, &mut st.picked_norm)?;
            b.matmul(&st.picked_norm, &w.output, &mut st.logits)?;
            if c.logit_scale != 1.0 {
                b.scale(&mut st.logits, 1.0 / c.logit_scale)?;
            }
            Ok(())
        })
    }

    /// Size the per-token scratch of `st` (everything a block touches) for
    /// `n` tokens.
    pub(super) fn resize_block_state(&self, st: &mut State<B>, n: usize) -> Result<()> {
        let b = &self.backend;
        for t in [
            &mut st.x,
            &mut st.xb,
            &mut st.q,
            &mut st.k,
            &mut st.v,
            &mut st.att,
            &mut st.proj,
            &mut st.gate,
            &mut st.up,
        ] {
            b.resize_rows(t, n)?;
        }
        Ok(())
    }

    /// Attention parameters of every layer.
    pub(super) fn attn_params(&self) -> AttnParams {
        let c = &self.config;
        AttnParams {
            n_head: c.n_head,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            scale: 1.0 / (c.head_dim as f32).sqrt(),
            visibility: Visibility::Causal,
        }
    }

    /// One decoder block on the residual stream `st.x` (rows already sized),
    /// with weights `l` and its keys and values in layer `kv_layer` of `kv`.
    /// `observe`, when given, sees the input of each group of linears
    /// (`model::calib`); when it answers `Break` the block stops there,
    /// leaving `st.x` partly updated.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn block(
        &self,
        st: &mut State<B>,
        kv: &mut B::KvCache,
        kv_layer: usize,
        l: &LayerWeights<B>,
        rope: &RopePair,
        positions: &[u32],
        first_slot: usize,
        attn: &AttnParams,
        mut observe: Option<&mut Observer<'_, B>>,
    ) -> Result<ControlFlow<()>> {
        let c = &self.config;
        let b = &self.backend;
        // One token without an observer: the backend may run the whole
        // block as one unit.
        if observe.is_none() && positions.len() == 1 {
            let p = BlockParams {
                eps: c.rms_eps,
                residual_scale: c.residual_scale,
                attn,
                rope_q: &rope.q,
                rope_k: &rope.k,
            };
            if b.decode_block(
                &mut st.x,
                &l.block_weights(),
                &p,
                positions,
                kv,
                kv_layer,
                first_slot,
            )? {
                return Ok(ControlFlow::Continue(()));
            }
        }
        let mut seen = |site: LinearInput, t: &B::Tensor| -> Result<ControlFlow<()>> {
            match observe.as_mut() {
                Some(f) => f(site, t),
                None => Ok(ControlFlow::Continue(())),
            }
        };

        // Attention: h += residual_scale · Wo · attn(rope(Wq·x), rope(Wk·x), Wv·x)
        b.rms_norm(&st.x, &l.attn_norm, c.rms_eps, &mut st.xb)?;
        if seen(LinearInput::AttnQkv, &st.xb)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        b.qkv_rope_kv_write(
            &st.xb,
            [&l.attn_q, &l.attn_k, &l.attn_v],
            &mut st.q,
            &mut st.k,
            &mut st.v,
            positions,
            &rope.q,
            &rope.k,
            kv,
            kv_layer,
            first_slot,
        )?;
        // The output projection and the FFN's first matrices, moved closer
        // while the attention runs (a hint; most backends ignore it).
        b.prefetch(&[&l.attn_output, &l.ffn_gate, &l.ffn_up])?;
        b.attention(&st.q, kv, kv_layer, first_slot, attn, &mut st.att)?;
        if seen(LinearInput::AttnOutput, &st.att)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        b.matmul_add(
            &st.att,
            &l.attn_output,
            &mut st.proj,
            &mut st.x,
            c.residual_scale,
        )?;

        // FFN (SwiGLU): h += residual_scale · W_down · (silu(W_gate·x) ⊙ W_up·x)
        b.rms_norm(&st.x, &l.ffn_norm, c.rms_eps, &mut st.xb)?;
        if seen(LinearInput::FfnGateUp, &st.xb)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        b.matmul_glu(&st.xb, &l.ffn_gate, &l.ffn_up, &mut st.gate, &mut st.up)?;
        b.prefetch(&[&l.ffn_down])?;
        if seen(LinearInput::FfnDown, &st.gate)?.is_break() {
            return Ok(ControlFlow::Break(()));
        }
        b.matmul_add(
            &st.gate,
            &l.ffn_down,
            &mut st.proj,
            &mut st.x,
            c.residual_scale,
        )?;
        Ok(ControlFlow::Continue(()))
    }

    /// Copy the logits of the last `forward` (`[n_out, n_vocab]`) to `out`;
    /// true when all of them are finite.
    pub fn read_logits(&self, st: &State<B>, out: &mut [f32]) -> Result<bool> {
        self.backend.read_finite(&st.logits, out)
    }
}
