//! Finding, checking and loading a model's tensors by their GGUF names.
//!
//! Every expected tensor is looked up and its shape and type checked before
//! anything is loaded; all problems are gathered into one `BadModel` error
//! so a user sees everything that is wrong at once. Field names are the GGUF
//! tensor names (`attn_q`, `ffn_down`), so a name greps straight to code.

use std::sync::Arc;

use crate::backend::{Backend, BlockWeights, Op};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::model::Config;
use crate::quants;

/// One decoder block's weights. Shapes are `[rows, cols]` as the backend
/// multiplies them (`cols` is GGUF's `dims[0]`).
pub struct LayerWeights<B: Backend> {
    /// RMS-norm scales before attention, `[n_embd]`.
    pub attn_norm: B::Weight,
    /// Query projection, `[n_head · head_dim, n_embd]`.
    pub attn_q: B::Weight,
    /// Key projection, `[n_head_kv · head_dim, n_embd]`.
    pub attn_k: B::Weight,
    /// Value projection, `[n_head_kv · head_dim, n_embd]`.
    pub attn_v: B::Weight,
    /// Attention output projection, `[n_embd, n_head · head_dim]`.
    pub attn_output: B::Weight,
    /// RMS-norm scales before the feed-forward network, `[n_embd]`.
    pub ffn_norm: B::Weight,
    /// Feed-forward gate projection (SiLU applied), `[n_ff, n_embd]`.
    pub ffn_gate: B::Weight,
    /// Feed-forward up projection, `[n_ff, n_embd]`.
    pub ffn_up: B::Weight,
    /// Feed-forward down projection, `[n_embd, n_ff]`.
    pub ffn_down: B::Weight,
}

impl<B: Backend> LayerWeights<B> {
    /// The block's weights by reference, as [`Backend::decode_block`] takes them.
    pub fn block_weights(&self) -> BlockWeights<'_, B::Weight> {
        BlockWeights {
            attn_norm: &self.attn_norm,
            attn_q: &self.attn_q,
            attn_k: &self.attn_k,
            attn_v: &self.attn_v,
            attn_output: &self.attn_output,
            ffn_norm: &self.ffn_norm,
            ffn_gate: &self.ffn_gate,
            ffn_up: &self.ffn_up,
            ffn_down: &self.ffn_down,
        }
    }
}

/// All weights of a llama-family model.
pub struct Weights<B: Backend> {
    /// Token embedding table, `[n_vocab, n_embd]`.
    pub token_embd: B::Weight,
    /// The decoder blocks, `n_layer` of them in order.
    pub layers: Vec<LayerWeights<B>>,
    /// RMS-norm scales before the output head, `[n_embd]`.
    pub output_norm: B::Weight,
    /// `[n_vocab, n_embd]`: `output.weight`, or `token_embd` again when tied.
    pub output: B::Weight,
    /// True when the output head is the embedding table.
    pub tied: bool,
    /// LongRoPE divisors per rotated pair (`n_rot / 2`) for contexts up to
    /// the training context (and past it when there is no long set), if
    /// present.
    pub rope_factors_short: Option<Vec<f32>>,
    /// LongRoPE divisors per rotated pair (`n_rot / 2`) for contexts past the
    /// training context, if present.
    pub rope_factors_long: Option<Vec<f32>>,
}

/// Checks tensors against the config, collecting every problem.
struct Checker<'a, B: Backend> {
    file: &'a Arc<GgufFile>,
    backend: &'a B,
    problems: Vec<String>,
}

impl<'a, B: Backend> Checker<'a, B> {
    /// The tensor `name` if it exists with GGUF dims `dims` and a type `op`
    /// supports; otherwise a recorded problem.
    fn expect(&mut self, name: &str, dims: &[usize], op: Op) -> Option<&'a TensorInfo> {
        let file: &'a GgufFile = self.file;
        let Some(t) = file.tensor(name) else {
            self.problems.push(format!("{name}: missing"));
            return None;
        };
        let want: Vec<u64> = dims.iter().map(|&d| d as u64).collect();
        if t.dims != want {
            self.problems.push(format!(
                "{name}: expected shape {want:?}, found {:?}",
                t.dims
            ));
            return None;
        }
        if !self.backend.supports(op, t.ty) {
            self.problems.push(format!(
                "{name}: type {} is not supported by the {} backend",
                t.ty,
                self.backend.name()
            ));
            return None;
        }
        Some(t)
    }

    /// The nine tensors of block `il`, in [`LayerWeights`] field order.
    fn layer(&mut self, cfg: &Config, il: usize) -> [Option<&'a TensorInfo>; 9] {
        let (e, f) = (cfg.n_embd, cfg.n_ff);
        let q = cfg.n_head * cfg.head_dim;
        let kvw = cfg.n_head_kv * cfg.head_dim;
        let n = |s: &str| format!("blk.{il}.{s}.weight");
        [
            self.expect(&n("attn_norm"), &[e], Op::Vector),
            self.expect(&n("attn_q"), &[e, q], Op::MatMul),
            self.expect(&n("attn_k"), &[e, kvw], Op::MatMul),
            self.expect(&n("attn_v"), &[e, kvw], Op::MatMul),
            self.expect(&n("attn_output"), &[q, e], Op::MatMul),
            self.expect(&n("ffn_norm"), &[e], Op::Vector),
            self.expect(&n("ffn_gate"), &[e, f], Op::MatMul),
            self.expect(&n("ffn_up"), &[e, f], Op::MatMul),
            self.expect(&n("ffn_down"), &[f, e], Op::MatMul),
        ]
    }

    fn optional(&mut self, name: &str, dims: &[usize], op: Op) -> Option<&'a TensorInfo> {
        if self.file.tensor(name).is_some() {
            self.expect(name, dims, op)
        } else {
            None
        }
    }
}

/// A LongRoPE factor vector; each factor divides a frequency, so it must be
/// finite and positive.
fn read_rope_factors(file: &GgufFile, t: &TensorInfo) -> Result<Vec<f32>> {
    let mut v = vec![0.0f32; t.n_elements as usize];
    quants::dequantize_row(t.ty, file.tensor_data(t), &mut v)?;
    if let Some(bad) = v.iter().find(|f| !f.is_finite() || **f <= 0.0) {
        return Err(Error::BadHparam {
            key: t.name.clone(),
            value: bad.to_string(),
            reason: "LongRoPE factors must be finite and positive".into(),
        });
    }
    Ok(v)
}

/// Every `expect` succeeded before loading, so each Option is Some.
fn need(t: Option<&TensorInfo>) -> Result<&TensorInfo> {
    t.ok_or_else(|| Error::BadModel {
        problems: vec!["internal: tensor check passed but tensor absent".into()],
    })
}

impl<B: Backend> LayerWeights<B> {
    /// Check and load the tensors of block `il` (`blk.{il}.*.weight`) from
    /// `file`, which need not hold anything else: the quantizer builds a
    /// block from replacement tensors this way (`model::calib`).
    pub fn load(
        file: &Arc<GgufFile>,
        cfg: &Config,
        backend: &B,
        il: usize,
    ) -> Result<LayerWeights<B>> {
        let mut c = Checker {
            file,
            backend,
            problems: Vec::new(),
        };
        let infos = c.layer(cfg, il);
        if !c.problems.is_empty() {
            return Err(Error::BadModel {
                problems: c.problems,
            });
        }
        LayerWeights::load_checked(file, backend, infos)
    }

    /// Load tensors that [`Checker::layer`] accepted.
    fn load_checked(
        file: &Arc<GgufFile>,
        backend: &B,
        infos: [Option<&TensorInfo>; 9],
    ) -> Result<LayerWeights<B>> {
        let load = |t: Option<&TensorInfo>, op: Op| -> Result<B::Weight> {
            backend.load_weight(file, need(t)?, op)
        };
        let [an, aq, ak, av, ao, fnrm, fg, fu, fd] = infos;
        Ok(LayerWeights {
            attn_norm: load(an, Op::Vector)?,
            attn_q: load(aq, Op::MatMul)?,
            attn_k: load(ak, Op::MatMul)?,
            attn_v: load(av, Op::MatMul)?,
            attn_output: load(ao, Op::MatMul)?,
            ffn_norm: load(fnrm, Op::Vector)?,
            ffn_gate: load(fg, Op::MatMul)?,
            ffn_up: load(fu, Op::MatMul)?,
            ffn_down: load(fd, Op::MatMul)?,
        })
    }
}

impl<B: Backend> Weights<B> {
    /// Check every tensor of `cfg`'s architecture in `file`, then load them.
    pub fn load(file: &Arc<GgufFile>, cfg: &Config, backend: &B) -> Result<Weights<B>> {
        let mut c = Checker {
            file,
            backend,
            problems: Vec::new(),
        };
        let (e, v) = (cfg.n_embd, cfg.n_vocab);

        let token_embd = c.expect("token_embd.weight", &[e, v], Op::Embed);
        let output_norm = c.expect("output_norm.weight", &[e], Op::Vector);
        let output = c.optional("output.weight", &[e, v], Op::MatMul);
        if output.is_none() && file.tensor("output.weight").is_none() {
            // A tied head multiplies by the embedding table.
            if let Some(t) = token_embd {
                if !backend.supports(Op::MatMul, t.ty) {
                    c.problems.push(format!(
                        "token_embd.weight: type {} cannot serve as the tied output head on the {} backend",
                        t.ty,
                        backend.name()
                    ));
                }
            }
        }
        let half = cfg.n_rot / 2;
        let rf_short = c.optional("rope_factors_short.weight", &[half], Op::Vector);
        let rf_long = c.optional("rope_factors_long.weight", &[half], Op::Vector);

        let mut infos = Vec::with_capacity(cfg.n_layer);
        for il in 0..cfg.n_layer {
            infos.push(c.layer(cfg, il));
        }

        if !c.problems.is_empty() {
            let mut problems = c.problems;
            if problems.len() > 24 {
                let more = problems.len() - 20;
                problems.truncate(20);
                problems.push(format!("... and {more} more"));
            }
            return Err(Error::BadModel { problems });
        }

        let known = |name: &str| {
            matches!(
                name,
                "token_embd.weight"
                    | "output_norm.weight"
                    | "output.weight"
                    | "rope_factors_short.weight"
                    | "rope_factors_long.weight"
            ) || name
                .strip_prefix("blk.")
                .and_then(|r| r.split_once('.'))
                .is_some_and(|(i, _)| i.parse::<usize>().is_ok_and(|i| i < cfg.n_layer))
        };
        let extra = file.tensors().iter().filter(|t| !known(&t.name)).count();
        if extra > 0 {
            log::warn!("ignoring {extra} tensor(s) this architecture does not use");
        }

        let load = |t: Option<&TensorInfo>, op: Op| -> Result<B::Weight> {
            backend.load_weight(file, need(t)?, op)
        };
        let mut layers = Vec::with_capacity(cfg.n_layer);
        for infos in infos {
            layers.push(LayerWeights::load_checked(file, backend, infos)?);
        }
        let token_embd_info = need(token_embd)?;
        Ok(Weights {
            token_embd: backend.load_weight(file, token_embd_info, Op::Embed)?,
            layers,
            output_norm: load(output_norm, Op::Vector)?,
            output: backend.load_weight(file, output.unwrap_or(token_embd_info), Op::MatMul)?,
            tied: output.is_none(),
            rope_factors_short: rf_short.map(|t| read_rope_factors(file, t)).transpose()?,
            rope_factors_long: rf_long.map(|t| read_rope_factors(file, t)).transpose()?,
        })
    }
}
