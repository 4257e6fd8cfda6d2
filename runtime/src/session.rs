//! A session: one sequence's KV cache and scratch state over a shared model.
//!
//! The session owns the cache's fill level. A batch is validated completely
//! before anything is written, and the fill level only advances after the
//! forward succeeded with finite logits, so a failed call leaves the session
//! exactly as it was (llama_decode's contract). `truncate` rolls the cache
//! back to a shorter prefix: entries past it are simply overwritten later.

use std::sync::Arc;

use crate::backend::{Backend, KvSpec, KvType};
use crate::error::{Error, Result};
use crate::model::{LlamaModel, RopePair, State};

/// Tokens to run through the model in one forward.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Position of each token (RoPE); usually consecutive.
    pub positions: Vec<u32>,
    /// Indices into `tokens` whose logits are returned, in this order.
    pub outputs: Vec<usize>,
}

impl Batch {
    /// `tokens` at consecutive positions from `start`, logits for the last one.
    pub fn new(tokens: &[u32], start: u32) -> Batch {
        Batch {
            tokens: tokens.to_vec(),
            positions: (0..tokens.len() as u32)
                .map(|i| start.saturating_add(i))
                .collect(),
            outputs: tokens.len().checked_sub(1).into_iter().collect(),
        }
    }

    /// Ask for the logits of every token.
    pub fn all_logits(mut self) -> Batch {
        self.outputs = (0..self.tokens.len()).collect();
        self
    }

    /// Ask for the logits of these token indices.
    pub fn logits_for(mut self, outputs: &[usize]) -> Batch {
        self.outputs = outputs.to_vec();
        self
    }
}

/// Logits of the requested rows, `[n_rows, n_vocab]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Logits {
    n_vocab: usize,
    data: Vec<f32>,
}

impl Logits {
    /// Vocabulary size (row length).
    pub fn n_vocab(&self) -> usize {
        self.n_vocab
    }

    /// Number of rows (the batch's `outputs`).
    pub fn n_rows(&self) -> usize {
        self.data.len().checked_div(self.n_vocab).unwrap_or(0)
    }

    /// Row `i` (the logits of `batch.outputs[i]`), if it exists.
    pub fn row(&self, i: usize) -> Option<&[f32]> {
        self.data.get(i * self.n_vocab..(i + 1) * self.n_vocab)
    }

    /// All rows, concatenated.
    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }
}

/// One sequence over a model on backend `B`.
pub struct Session<B: Backend> {
    model: Arc<LlamaModel<B>>,
    kv: B::KvCache,
    state: State<B>,
    rope: RopePair,
    n_ctx: usize,
    len: usize,
}

impl<B: Backend> Session<B> {
    /// A session with room for `n_ctx` tokens of KV cache of type `kv_type`.
    pub fn new(model: Arc<LlamaModel<B>>, n_ctx: usize, kv_type: KvType) -> Result<Session<B>> {
        let c = &model.config;
        if n_ctx == 0 || n_ctx > (1 << 26) {
            return Err(Error::BadHparam {
                key: "n_ctx".into(),
                value: n_ctx.to_string(),
                reason: "context size must be between 1 and 67108864".into(),
            });
        }
        let spec = KvSpec {
            n_layer: c.n_layer,
            n_ctx,
            n_head_kv: c.n_head_kv,
            head_dim: c.head_dim,
            ty: kv_type,
        };
        let kv = model.backend.alloc_kv(&spec)?;
        let state = model.new_state()?;
        let rope = model.rope_for_ctx(n_ctx)?;
        Ok(Session {
            model,
            kv,
            state,
            rope,
            n_ctx,
            len: 0,
        })
    }

    /// Tokens held in the cache.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The cache capacity in tokens.
    pub fn n_ctx(&self) -> usize {
        self.n_ctx
    }

    /// The model.
    pub fn model(&self) -> &Arc<LlamaModel<B>> {
        &self.model
    }

    /// Keep only the first `len` cache entries.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        if len > self.len {
            return Err(Error::InvalidBatch(format!(
                "cannot truncate to {len}: the cache holds {} tokens",
                self.len
            )));
        }
        self.len = len;
        Ok(())
    }

    fn validate(&self, batch: &Batch) -> Result<()> {
        let n = batch.tokens.len();
        if n == 0 {
            return Err(Error::InvalidBatch("empty batch".into()));
        }
        if batch.positions.len() != n {
            return Err(Error::InvalidBatch(format!(
                "{n} tokens but {} positions",
                batch.positions.len()
            )));
        }
        if self.len + n > self.n_ctx {
            return Err(Error::ContextFull {
                position: self.len + n,
                n_ctx: self.n_ctx,
            });
        }
        let n_vocab = self.model.config.n_vocab;
        if let Some((i, &t)) = batch
            .tokens
            .iter()
            .enumerate()
            .find(|(_, &t)| t as usize >= n_vocab)
        {
            return Err(Error::InvalidBatch(format!(
                "token {i} has id {t}, outside the vocabulary of {n_vocab}"
            )));
        }
        if let Some(&p) = batch.positions.iter().find(|&&p| p as usize >= self.n_ctx) {
            return Err(Error::InvalidBatch(format!(
                "position {p} is outside the context of {}",
                self.n_ctx
            )));
        }
        if let Some(&o) = batch.outputs.iter().find(|&&o| o >= n) {
            return Err(Error::InvalidBatch(format!(
                "output index {o} is outside the batch of {n}"
            )));
        }
        Ok(())
    }

    /// Run a batch: its tokens are appended to the cache and the logits of
    /// `batch.outputs` returned. On error the session is unchanged.
    pub fn forward(&mut self, batch: &Batch) -> Result<Logits> {
        let mut data = Vec::new();
        self.forward_into(batch, &mut data)?;
        Ok(Logits {
            n_vocab: self.model.config.n_vocab,
            data,
        })
    }

    /// Like `forward`, but leaves the logits (`[outputs, n_vocab]`) in
    /// `out`, reusing its allocation: the decode loop allocates nothing here.
    pub fn forward_into(&mut self, batch: &Batch, out: &mut Vec<f32>) -> Result<()> {
        self.validate(batch)?;
        let m = &self.model;
        let t0 = std::time::Instant::now();
        m.forward(&mut self.state, &mut self.kv, &self.rope, batch, self.len)?;
        let t1 = std::time::Instant::now();
        let n_vocab = m.config.n_vocab;
        // Every value is overwritten by the read: no clearing of a buffer
        // that already has the size (a decode loop reuses it).
        out.resize(batch.outputs.len() * n_vocab, 0.0);
        let finite = m.read_logits(&self.state, out)?;
        let t2 = std::time::Instant::now();
        if !finite {
            let i = out.iter().position(|v| !v.is_finite()).unwrap_or(0);
            return Err(Error::NumericalError { index: i / n_vocab });
        }
        log::trace!(
            "step host times (µs): forward {:.1} read and check {:.1}",
            (t1 - t0).as_secs_f64() * 1e6,
            (t2 - t1).as_secs_f64() * 1e6
        );
        self.len += batch.tokens.len();
        Ok(())
    }
}
