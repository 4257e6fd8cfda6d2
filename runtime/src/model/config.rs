//! Model configuration read from GGUF metadata, validated before any tensor
//! is touched.
//!
//! `llama` and `minicpm` share one config: MiniCPM is Llama plus three muP
//! scalars (embedding, residual and logit scales) and optional LongRoPE
//! factor tensors. Every hyperparameter is checked for zero, absurd size and
//! consistency (reliability.md §6.2 S1–S4), so nothing downstream divides by
//! zero or sizes an allocation from a hostile value.

use crate::error::{Error, Result};
use crate::gguf::{GgufFile, Value};

/// Which family of forward pass runs the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Arch {
    /// Llama: RMSNorm, GQA, RoPE, SwiGLU.
    Llama,
    /// MiniCPM / MiniCPM4: Llama with muP scales and LongRoPE.
    MiniCpm,
}

impl Arch {
    /// The `general.architecture` string.
    pub fn name(self) -> &'static str {
        match self {
            Arch::Llama => "llama",
            Arch::MiniCpm => "minicpm",
        }
    }
}

/// Hyperparameters of a decoder-only model.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The architecture (`general.architecture`).
    pub arch: Arch,
    /// Decoder blocks.
    pub n_layer: usize,
    /// Hidden size.
    pub n_embd: usize,
    /// Feed-forward inner size.
    pub n_ff: usize,
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (GQA: `n_head` is a multiple of it).
    pub n_head_kv: usize,
    /// Elements per head: `n_embd / n_head`.
    pub head_dim: usize,
    /// Vocabulary size (rows of `token_embd`).
    pub n_vocab: usize,
    /// Context length the model was trained for.
    pub n_ctx_train: usize,
    /// RMSNorm epsilon.
    pub rms_eps: f32,
    /// RoPE base frequency.
    pub rope_freq_base: f64,
    /// Rotated elements per head.
    pub n_rot: usize,
    /// LongRoPE: the context below which the short factors apply.
    pub rope_orig_ctx: Option<usize>,
    /// MiniCPM: embeddings are multiplied by this (1 for llama).
    pub embedding_scale: f32,
    /// MiniCPM: attention and FFN outputs are multiplied by this before the
    /// residual add (1 for llama).
    pub residual_scale: f32,
    /// MiniCPM: logits are divided by this (1 for llama).
    pub logit_scale: f32,
}

/// Upper bounds that no real model comes near; they keep products of
/// hyperparameters far from overflow.
const MAX_LAYERS: u64 = 4096;
const MAX_WIDTH: u64 = 1 << 20;
const MAX_HEADS: u64 = 4096;
const MAX_VOCAB: u64 = 1 << 24;

fn type_name(v: &Value) -> &'static str {
    v.value_type().name()
}

/// A non-negative integer key within `1..=max`, or `default` when absent.
fn get_count(f: &GgufFile, key: &str, default: Option<u64>, max: u64) -> Result<u64> {
    let v = match f.get(key) {
        Some(v) => v,
        None => return default.ok_or_else(|| Error::MissingKey(key.to_string())),
    };
    if let Value::Array(_) = v {
        return Err(Error::BadHparam {
            key: key.into(),
            value: "an array".into(),
            reason: "per-layer values are not supported".into(),
        });
    }
    let n = v.as_u64().ok_or_else(|| match v.as_i64() {
        Some(i) => Error::BadHparam {
            key: key.into(),
            value: i.to_string(),
            reason: "must be positive".into(),
        },
        None => Error::WrongKeyType {
            key: key.into(),
            expected: "an unsigned integer",
            got: type_name(v),
        },
    })?;
    if n == 0 || n > max {
        return Err(Error::BadHparam {
            key: key.into(),
            value: n.to_string(),
            reason: format!("must be between 1 and {max}"),
        });
    }
    Ok(n)
}

/// A float key that must be finite and positive, or `default` when absent.
fn get_positive(f: &GgufFile, key: &str, default: Option<f64>) -> Result<f64> {
    let v = match f.get(key) {
        Some(v) => v,
        None => return default.ok_or_else(|| Error::MissingKey(key.to_string())),
    };
    let x = v.as_f64().ok_or_else(|| Error::WrongKeyType {
        key: key.into(),
        expected: "a number",
        got: type_name(v),
    })?;
    if !x.is_finite() || x <= 0.0 {
        return Err(Error::BadHparam {
            key: key.into(),
            value: x.to_string(),
            reason: "must be finite and positive".into(),
        });
    }
    Ok(x)
}

impl Config {
    /// Read and validate the config of `file`. `n_vocab` comes from the
    /// `token_embd.weight` tensor, the authority the forward pass indexes.
    pub fn from_gguf(file: &GgufFile) -> Result<Config> {
        let arch_name = match file.get("general.architecture") {
            Some(Value::String(s)) => s.as_str(),
            Some(v) => {
                return Err(Error::WrongKeyType {
                    key: "general.architecture".into(),
                    expected: "string",
                    got: type_name(v),
                })
            }
            None => return Err(Error::MissingKey("general.architecture".into())),
        };
        let arch = match arch_name {
            "llama" => Arch::Llama,
            "minicpm" => Arch::MiniCpm,
            other => {
                // A hostile name could be a megabyte long: keep the message short.
                let shown: String = other.chars().take(64).collect();
                return Err(Error::UnknownArchitecture(shown));
            }
        };
        let a = arch.name();
        let k = |s: &str| format!("{a}.{s}");

        let n_layer = get_count(file, &k("block_count"), None, MAX_LAYERS)?;
        let n_embd = get_count(file, &k("embedding_length"), None, MAX_WIDTH)?;
        let n_ff = get_count(file, &k("feed_forward_length"), None, MAX_WIDTH)?;
        let n_head = get_count(file, &k("attention.head_count"), None, MAX_HEADS)?;
        let n_head_kv = get_count(file, &k("attention.head_count_kv"), Some(n_head), MAX_HEADS)?;
        let n_ctx_train = get_count(file, &k("context_length"), Some(4096), 1 << 26)?;
        if n_head % n_head_kv != 0 {
            return Err(Error::BadHparam {
                key: k("attention.head_count_kv"),
                value: n_head_kv.to_string(),
                reason: format!("must divide head_count ({n_head})"),
            });
        }
        if n_embd % n_head != 0 {
            return Err(Error::BadHparam {
                key: k("attention.head_count"),
                value: n_head.to_string(),
                reason: format!("must divide embedding_length ({n_embd})"),
            });
        }
        let head_dim = n_embd / n_head;
        for key in ["attention.key_length", "attention.value_length"] {
            if file.get(&k(key)).is_some() {
                let v = get_count(file, &k(key), None, MAX_WIDTH)?;
                if v != head_dim {
                    return Err(Error::BadHparam {
                        key: k(key),
                        value: v.to_string(),
                        reason: format!(
                            "tern needs it equal to embedding_length / head_count ({head_dim})"
                        ),
                    });
                }
            }
        }
        let n_rot = get_count(file, &k("rope.dimension_count"), Some(head_dim), MAX_WIDTH)?;
        if n_rot > head_dim || n_rot % 2 != 0 {
            return Err(Error::BadHparam {
                key: k("rope.dimension_count"),
                value: n_rot.to_string(),
                reason: format!("must be even and at most the head size ({head_dim})"),
            });
        }
        let rms_eps = get_positive(file, &k("attention.layer_norm_rms_epsilon"), Some(1e-5))?;
        if rms_eps > 1.0 {
            return Err(Error::BadHparam {
                key: k("attention.layer_norm_rms_epsilon"),
                value: rms_eps.to_string(),
                reason: "must be at most 1".into(),
            });
        }
        let rope_freq_base = get_positive(file, &k("rope.freq_base"), Some(10000.0))?;
        let rope_orig_ctx = match file.get(&k("rope.scaling.original_context_length")) {
            Some(_) => Some(get_count(
                file,
                &k("rope.scaling.original_context_length"),
                None,
                1 << 26,
            )? as usize),
            None => None,
        };
        let (embedding_scale, residual_scale, logit_scale) = match arch {
            Arch::Llama => (1.0, 1.0, 1.0),
            Arch::MiniCpm => (
                get_positive(file, &k("embedding_scale"), Some(1.0))?,
                get_positive(file, &k("residual_scale"), Some(1.0))?,
                get_positive(file, &k("logit_scale"), Some(1.0))?,
            ),
        };

        let n_vocab = match file.tensor("token_embd.weight") {
            Some(t) if t.dims.len() == 2 => t.dims[1],
            Some(t) => {
                return Err(Error::BadModel {
                    problems: vec![format!(
                        "token_embd.weight: expected 2 dimensions, found {:?}",
                        t.dims
                    )],
                })
            }
            None => {
                return Err(Error::BadModel {
                    problems: vec!["token_embd.weight: missing".into()],
                })
            }
        };
        if n_vocab == 0 || n_vocab > MAX_VOCAB {
            return Err(Error::BadHparam {
                key: "token_embd.weight rows".into(),
                value: n_vocab.to_string(),
                reason: format!("vocabulary must have 1 to {MAX_VOCAB} tokens"),
            });
        }
        if let Some(v) = file.get(&k("vocab_size")) {
            if v.as_u64() != Some(n_vocab) {
                return Err(Error::BadHparam {
                    key: k("vocab_size"),
                    value: format!("{v:?}"),
                    reason: format!("token_embd.weight has {n_vocab} rows"),
                });
            }
        }

        Ok(Config {
            arch,
            n_layer: n_layer as usize,
            n_embd: n_embd as usize,
            n_ff: n_ff as usize,
            n_head: n_head as usize,
            n_head_kv: n_head_kv as usize,
            head_dim: head_dim as usize,
            n_vocab: n_vocab as usize,
            n_ctx_train: n_ctx_train as usize,
            rms_eps: rms_eps as f32,
            rope_freq_base,
            n_rot: n_rot as usize,
            rope_orig_ctx,
            embedding_scale: embedding_scale as f32,
            residual_scale: residual_scale as f32,
            logit_scale: logit_scale as f32,
        })
    }
}
