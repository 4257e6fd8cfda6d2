//! Calibration hooks for the offline quantizer: run one decoder block at a
//! time over whole sequences and show the quantizer what each linear layer
//! reads.
//!
//! GPTQ quantizes a model block by block, each block calibrated on the
//! outputs of the blocks already quantized before it. [`BlockRunner`] keeps
//! one sequence's hidden states as a backend tensor and runs the block math
//! of `llama.rs` (the same code the forward pass runs, not a copy) on it:
//! [`BlockRunner::run`] updates the hidden states in place with any block's
//! weights, and [`BlockRunner::observe`] runs a block on a copy and hands the
//! input of each group of linears to a callback (q/k/v share one input, as
//! do gate/up). Replacement weights for a block come from
//! [`LayerWeights::load`] over any GGUF, e.g. one built in memory.

use std::ops::ControlFlow;

use crate::backend::{AttnParams, Backend, KvSpec, KvType};
use crate::error::{Error, Result};
use crate::model::{LayerWeights, LlamaModel, RopePair, State};

/// The linear layers of a block, grouped by the activation they read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum LinearInput {
    /// The normed residual read by `attn_q`, `attn_k` and `attn_v`.
    AttnQkv,
    /// The attention output read by `attn_output`.
    AttnOutput,
    /// The normed residual read by `ffn_gate` and `ffn_up`.
    FfnGateUp,
    /// `silu(gate) ⊙ up`, read by `ffn_down`.
    FfnDown,
}

impl LinearInput {
    /// All four, in the order a block reads them.
    pub const ALL: [LinearInput; 4] = [
        LinearInput::AttnQkv,
        LinearInput::AttnOutput,
        LinearInput::FfnGateUp,
        LinearInput::FfnDown,
    ];

    /// The GGUF names (`blk.N.<name>.weight`) of the linears reading this input.
    pub fn tensors(self) -> &'static [&'static str] {
        match self {
            LinearInput::AttnQkv => &["attn_q", "attn_k", "attn_v"],
            LinearInput::AttnOutput => &["attn_output"],
            LinearInput::FfnGateUp => &["ffn_gate", "ffn_up"],
            LinearInput::FfnDown => &["ffn_down"],
        }
    }
}

/// The block's view for an observer: the input of a group of linears as a
/// backend tensor `[n_tok, cols]`. `Break` ends the block there.
pub(crate) type Observer<'a, B> =
    dyn FnMut(LinearInput, &<B as Backend>::Tensor) -> Result<ControlFlow<()>> + 'a;

/// Runs single decoder blocks of a model over sequences of a fixed length,
/// each sequence one batch at positions `0..seq_len` with an f32 KV cache of
/// one layer. Holds scratch for one sequence; allocates nothing per call
/// after the first.
pub struct BlockRunner<'m, B: Backend> {
    model: &'m LlamaModel<B>,
    st: State<B>,
    kv: B::KvCache,
    rope: RopePair,
    attn: AttnParams,
    positions: Vec<u32>,
    rows: Vec<usize>,
    host: Vec<f32>,
    seq_len: usize,
}

impl<'m, B: Backend> BlockRunner<'m, B> {
    /// A runner for sequences of `seq_len` tokens (1 to the model's
    /// training context).
    pub fn new(model: &'m LlamaModel<B>, seq_len: usize) -> Result<BlockRunner<'m, B>> {
        let c = &model.config;
        if seq_len == 0 || seq_len > c.n_ctx_train.max(1) {
            return Err(Error::BadHparam {
                key: "seq_len".into(),
                value: seq_len.to_string(),
                reason: format!(
                    "calibration sequences must be 1 to {} tokens (the model's context)",
                    c.n_ctx_train
                ),
            });
        }
        let kv = model.backend.alloc_kv(&KvSpec {
            n_layer: 1,
            n_ctx: seq_len,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            ty: KvType::F32,
        })?;
        let mut st = model.new_state()?;
        model.resize_block_state(&mut st, seq_len)?;
        Ok(BlockRunner {
            model,
            st,
            kv,
            rope: model.rope_for_ctx(seq_len)?,
            attn: model.attn_params(),
            positions: (0..seq_len as u32).collect(),
            rows: (0..seq_len).collect(),
            host: Vec::new(),
            seq_len,
        })
    }

    /// Tokens per sequence.
    pub fn seq_len(&self) -> usize {
        self.seq_len
    }

    /// The input of block 0 for `tokens` (`seq_len` of them, each below the
    /// vocabulary size): the embeddings times `embedding_scale`.
    pub fn embed(&self, tokens: &[u32]) -> Result<B::Tensor> {
        let m = self.model;
        if tokens.len() != self.seq_len {
            return Err(Error::InvalidBatch(format!(
                "calibration sequence of {} tokens, expected {}",
                tokens.len(),
                self.seq_len
            )));
        }
        if let Some(&t) = tokens.iter().find(|&&t| t as usize >= m.config.n_vocab) {
            return Err(Error::InvalidBatch(format!(
                "token id {t} is outside the vocabulary of {}",
                m.config.n_vocab
            )));
        }
        let mut x = m.backend.alloc(self.seq_len, m.config.n_embd)?;
        m.backend.embed(
            &m.weights.token_embd,
            tokens,
            m.config.embedding_scale,
            &mut x,
        )?;
        Ok(x)
    }

    fn check(&self, x: &B::Tensor) -> Result<()> {
        let want = (self.seq_len, self.model.config.n_embd);
        let got = self.model.backend.shape(x);
        if got != want {
            return Err(Error::InvalidBatch(format!(
                "hidden states of shape {got:?}, expected {want:?}"
            )));
        }
        Ok(())
    }

    /// Run the block with weights `l` on the hidden states `x` (from
    /// [`BlockRunner::embed`] or an earlier `run`), in place.
    pub fn run(&mut self, l: &LayerWeights<B>, x: &mut B::Tensor) -> Result<()> {
        self.check(x)?;
        std::mem::swap(self.st.x_mut(), x);
        let r = self.model.block(
            &mut self.st,
            &mut self.kv,
            0,
            l,
            &self.rope,
            &self.positions,
            0,
            &self.attn,
            None,
        );
        std::mem::swap(self.st.x_mut(), x);
        r.map(|_| ())
    }

    /// Run the block with weights `l` on a copy of `x` and call `f` with the
    /// input of each group of linears as host f32 values (`[seq_len, cols]`,
    /// row-major), in [`LinearInput::ALL`]'s order. The block stops after
    /// the [`LinearInput::FfnDown`] input (its output is not needed) or when
    /// `f` answers `Break`. `x` is unchanged.
    pub fn observe(
        &mut self,
        l: &LayerWeights<B>,
        x: &B::Tensor,
        f: &mut dyn FnMut(LinearInput, &[f32]) -> ControlFlow<()>,
    ) -> Result<()> {
        self.check(x)?;
        let b = &self.model.backend;
        b.gather_rows(x, &self.rows, self.st.x_mut())?;
        let host = &mut self.host;
        let mut obs = |site: LinearInput, t: &B::Tensor| -> Result<ControlFlow<()>> {
            let (r, c) = b.shape(t);
            host.resize(r * c, 0.0);
            b.read(t, host)?;
            let flow = f(site, host);
            Ok(if site == LinearInput::FfnDown {
                ControlFlow::Break(())
            } else {
                flow
            })
        };
        self.model
            .block(
                &mut self.st,
                &mut self.kv,
                0,
                l,
                &self.rope,
                &self.positions,
                0,
                &self.attn,
                Some(&mut obs),
            )
            .map(|_| ())
    }

    /// Copy `x` to host memory (`[seq_len, n_embd]`, row-major).
    pub fn read(&self, x: &B::Tensor, out: &mut Vec<f32>) -> Result<()> {
        self.check(x)?;
        out.resize(self.seq_len * self.model.config.n_embd, 0.0);
        self.model.backend.read(x, out)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::sync::Arc;

    use super::*;
    use crate::backend::cpu::CpuBackend;
    use crate::gguf::GgufFile;
    use crate::quants;
    use crate::session::{Batch, Session};

    fn tiny(name: &str) -> Option<Arc<GgufFile>> {
        let cache = std::env::var_os("TERN_CACHE").map_or_else(
            || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/tern"),
            PathBuf::from,
        );
        let p = cache.join("models/synthetic").join(name);
        // Test data comes from scripts/fetch-test-data.sh; the integration
        // tests insist on it, this unit test only skips.
        p.is_file().then(|| Arc::new(GgufFile::open(&p).unwrap()))
    }

    fn tensor_f32(f: &GgufFile, name: &str) -> Vec<f32> {
        let t = f.tensor(name).unwrap();
        let mut v = vec![0.0; t.n_elements as usize];
        quants::dequantize_row(t.ty, f.tensor_data(t), &mut v).unwrap();
        v
    }

    /// Blocks run one at a time through the runner, then the head on the
    /// host, give the forward pass's logits; `observe` leaves its input alone
    /// and sees inputs of the right shapes.
    #[test]
    fn blocks_one_at_a_time_equal_the_forward_pass() {
        let Some(file) = tiny("tiny-llama-f32.gguf") else {
            return;
        };
        let model = Arc::new(LlamaModel::load(file.clone(), CpuBackend::exact(2)).unwrap());
        let c = model.config.clone();
        let n = 24;
        let tokens: Vec<u32> = (0..n as u32)
            .map(|i| (i * 37 + 5) % c.n_vocab as u32)
            .collect();

        let mut runner = BlockRunner::new(&model, n).unwrap();
        let mut x = runner.embed(&tokens).unwrap();
        for l in &model.weights.layers {
            let mut before = Vec::new();
            runner.read(&x, &mut before).unwrap();
            let mut seen = Vec::new();
            runner
                .observe(l, &x, &mut |site, v| {
                    seen.push((site, v.len()));
                    ControlFlow::Continue(())
                })
                .unwrap();
            let mut after = Vec::new();
            runner.read(&x, &mut after).unwrap();
            assert_eq!(before, after);
            let q = c.n_head * c.head_dim;
            assert_eq!(
                seen,
                [
                    (LinearInput::AttnQkv, n * c.n_embd),
                    (LinearInput::AttnOutput, n * q),
                    (LinearInput::FfnGateUp, n * c.n_embd),
                    (LinearInput::FfnDown, n * c.n_ff),
                ]
            );
            runner.run(l, &mut x).unwrap();
        }
        let mut h = Vec::new();
        runner.read(&x, &mut h).unwrap();

        let norm = tensor_f32(&file, "output_norm.weight");
        let out_name = if file.tensor("output.weight").is_some() {
            "output.weight"
        } else {
            "token_embd.weight"
        };
        let head = tensor_f32(&file, out_name);
        let e = c.n_embd;
        let mut mine = Vec::new();
        for t in 0..n {
            let row = &h[t * e..(t + 1) * e];
            let ms = row.iter().map(|v| v * v).sum::<f32>() / e as f32;
            let inv = 1.0 / (ms + c.rms_eps).sqrt();
            let xn: Vec<f32> = row.iter().zip(&norm).map(|(v, w)| v * inv * w).collect();
            for r in 0..c.n_vocab {
                let w = &head[r * e..(r + 1) * e];
                mine.push(w.iter().zip(&xn).map(|(a, b)| a * b).sum::<f32>() / c.logit_scale);
            }
        }

        let mut s = Session::new(model.clone(), n, KvType::F32).unwrap();
        let logits = s.forward(&Batch::new(&tokens, 0).all_logits()).unwrap();
        let want = logits.as_slice();
        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
        let worst = mine
            .iter()
            .zip(want)
            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(worst <= 1e-4 * scale, "max |diff| {worst} (scale {scale})");
    }

    #[test]
    fn bad_inputs_are_errors() {
        let Some(file) = tiny("tiny-llama-f32.gguf") else {
            return;
        };
        let model = LlamaModel::load(file, CpuBackend::exact(1)).unwrap();
        assert!(BlockRunner::new(&model, 0).is_err());
        assert!(BlockRunner::new(&model, model.config.n_ctx_train + 1).is_err());
        let mut r = BlockRunner::new(&model, 4).unwrap();
        assert!(r.embed(&[1, 2, 3]).is_err());
        assert!(r.embed(&[1, 2, 3, model.config.n_vocab as u32]).is_err());
        let mut wrong = model.backend.alloc(3, model.config.n_embd).unwrap();
        assert!(r.run(&model.weights.layers[0], &mut wrong).is_err());
    }
}
