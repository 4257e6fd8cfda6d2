//! The sequential quantization pipeline: a whole model, block by block.
//!
//! With calibration data, block `i` is calibrated on the outputs of blocks
//! `0..i` *already quantized* (GPTQ's `llama.py`): the hidden states of
//! every calibration sequence are kept (one `[seq_len, n_embd]` tensor each,
//! the only model-sized memory), and per block
//!
//! 1. each sequence's hidden states are first advanced through block `i−1`
//!    with its quantized weights (in place), then block `i` runs on a copy
//!    with its original weights and shows the input of each group of
//!    linears ([`tern_runtime::model::BlockRunner::observe`]), which goes
//!    into that group's [`Hessian`] (q/k/v share one, gate/up share one;
//!    P-GPTQ weights the first `prefix_skip` positions of each sequence by
//!    the input's λ in [`PrefixWeights`]: 0 leaves them out, 1 is GPTQ);
//! 2. the seven linears are quantized with [`crate::quantize`];
//! 3. the quantized block is loaded for step 1 of the next block.
//!
//! All forward passes go through the runtime's block code. The quantized
//! block used for the next block's inputs is built as an in-memory GGUF and
//! loaded with [`LayerWeights::load`]: on the fast CPU path the tensors are
//! the output's own bytes when they are Q4_0/Q4_1/Q8_0 (exactly what
//! inference will compute) and otherwise the dequantized weights re-encoded
//! as Q8_0 (so the 8-bit kernels run them; the extra rounding is ~1/250 of
//! a 4-bit step); on the exact path they are f32.
//!
//! Without calibration data (RTN only) the blocks are quantized directly.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tern_runtime::backend::cpu::CpuBackend;
use tern_runtime::gguf::{GgufFile, GgufWriter, TensorInfo};
use tern_runtime::model::{BlockRunner, LayerWeights, LinearInput, LlamaModel};
use tern_runtime::quants::{self, GgmlType};

use crate::{quantize, GptqParams, Grid, Hessian, LayerReport, QuantizedMatrix, Scheme};

/// The seven linears of a block, in the order they are quantized and reported.
pub const LINEARS: [&str; 7] = [
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_output",
    "ffn_gate",
    "ffn_up",
    "ffn_down",
];

/// What to do with a model.
#[derive(Clone, Debug)]
pub struct PipelineOptions {
    /// The target format.
    pub grid: Grid,
    /// RTN, GPTQ or P-GPTQ.
    pub scheme: Scheme,
    /// GPTQ's parameters; `prefix_skip` is applied only for P-GPTQ.
    pub params: GptqParams,
    /// CPU threads for the forward passes.
    pub threads: usize,
    /// Run calibration forwards on the exact f32 path instead of the fast
    /// 8-bit-activation one.
    pub exact: bool,
    /// P-GPTQ's weight of the prefix positions at each linear input (0:
    /// left out, the skip).
    pub prefix_weights: PrefixWeights,
    /// Store the `ffn_down` of the first eighth of the blocks as Q4_1 when
    /// the grid is Q4_0 (see [`tensor_grid`]).
    pub mixed: bool,
    /// Collect per-position activation statistics of every linear's input
    /// ([`ActStat`]; calibrated runs only).
    pub act_stats: bool,
}

/// The linear inputs whose Hessians leave out P-GPTQ's prefix positions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SkipSites {
    /// Every linear (the MiniCPM4 report's description).
    All,
    /// Every linear except `ffn_down`.
    NotFfnDown,
    /// `ffn_down` only.
    FfnDown,
}

impl SkipSites {
    /// Whether the Hessian of `site` skips the prefix.
    pub fn applies(self, site: LinearInput) -> bool {
        match self {
            SkipSites::All => true,
            SkipSites::NotFfnDown => site != LinearInput::FfnDown,
            SkipSites::FfnDown => site == LinearInput::FfnDown,
        }
    }
}

/// P-GPTQ's prefix weight λ at each of the four linear inputs: the first
/// `prefix_skip` positions of every calibration sequence enter that input's
/// Hessian with weight λ, the rest with weight 1
/// ([`Hessian::add_sequence_weighted`]). λ = 0 is the MiniCPM4 report's
/// skip, λ = 1 plain GPTQ, λ > 1 protects the prefix (on a BOS-less model
/// position 0 is the attention sink, which every later query reads).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PrefixWeights {
    /// λ for the inputs in [`LinearInput::ALL`]'s order: q/k/v,
    /// attn_output, gate/up, ffn_down.
    pub at: [f32; 4],
}

impl PrefixWeights {
    /// λ at the inputs `sites` names and 1 elsewhere (λ = 0: the skip at
    /// those inputs).
    pub fn on(sites: SkipSites, weight: f32) -> PrefixWeights {
        PrefixWeights {
            at: LinearInput::ALL.map(|s| if sites.applies(s) { weight } else { 1.0 }),
        }
    }

    /// λ at `site`.
    pub fn weight(&self, site: LinearInput) -> f32 {
        let i = LinearInput::ALL
            .iter()
            .position(|&s| s == site)
            .expect("ALL lists every input");
        self.at[i]
    }
}

impl PrefixWeights {
    /// The λ of the q/k/v input in the default, [`PrefixWeights::SINK`].
    pub const SINK_QKV: f32 = 32.0;

    /// tern-quantize's p-gptq default: the prefix weighted up by
    /// [`PrefixWeights::SINK_QKV`] at the q/k/v input and left as it is (1)
    /// elsewhere. On a model without BOS position 0 is the attention sink,
    /// which every query reads; up-weighting it where the keys and values
    /// are made beat both GPTQ and the report's skip
    /// (docs/quant-quality-notes.md §10).
    pub const SINK: PrefixWeights = PrefixWeights {
        at: [Self::SINK_QKV, 1.0, 1.0, 1.0],
    };
}

impl Default for PrefixWeights {
    /// [`PrefixWeights::SINK`], tern-quantize's default.
    fn default() -> Self {
        PrefixWeights::SINK
    }
}

/// The grid one linear is stored in: `base`, except that with `mixed` a
/// Q4_0 model keeps the `ffn_down` of blocks `layer < n_layer / 8` in Q4_1.
///
/// This is the mixture llama.cpp's Q4_0 file type uses when it quantizes
/// with an importance matrix (a guard for the first blocks' `ffn_down`;
/// Q4_1's minimum costs a quarter bit per weight there, 4.50 → 4.51 bits
/// per weight for SmolLM2-135M). Calibrated tern runs use the same mixture
/// so that files of the same size are compared. On SmolLM2 the attention
/// sink itself forms later, in block 11 (docs/quant-quality-notes.md).
pub fn tensor_grid(base: Grid, mixed: bool, linear: &str, layer: usize, n_layer: usize) -> Grid {
    if mixed && base == Grid::Q4_0 && linear == "ffn_down" && layer < n_layer / 8 {
        Grid::Q4_1
    } else {
        base
    }
}

/// Positions reported one by one in an [`ActStat`]; the rest are pooled.
pub const STAT_POSITIONS: usize = 8;

/// Activation statistics of one linear input of one block over the
/// calibration sequences, by position in the sequence: what P-GPTQ's prefix
/// skip leaves out of the Hessian.
#[derive(Clone, Debug, PartialEq)]
pub struct ActStat {
    /// Block index.
    pub layer: usize,
    /// The input: `attn_qkv`, `attn_output`, `ffn_gate_up` or `ffn_down`.
    pub site: &'static str,
    /// Mean `‖x_t‖²` over the sequences for positions `t < STAT_POSITIONS`.
    pub pos_sq: Vec<f64>,
    /// Largest `|x_t[i]|` for those positions.
    pub pos_max: Vec<f32>,
    /// Mean `‖x_t‖²` over the sequences and the positions from
    /// `STAT_POSITIONS` on.
    pub rest_sq: f64,
    /// Largest `|x_t[i]|` over those.
    pub rest_max: f32,
    /// The channel of the largest `|x_0[i]|` (position 0).
    pub pos0_argmax: usize,
    /// Sequences seen.
    pub n_seq: usize,
    /// Positions per sequence.
    pub seq_len: usize,
}

impl ActStat {
    /// The share of `tr(Σ x xᵀ)` (the Hessian's trace) that comes from the
    /// first `s` positions (`s ≤ STAT_POSITIONS`).
    pub fn prefix_share(&self, s: usize) -> f64 {
        let p = self.pos_sq.len().min(self.seq_len);
        let head: f64 = self.pos_sq[..s.min(p)].iter().sum();
        let all = self.pos_sq[..p].iter().sum::<f64>()
            + self.rest_sq * self.seq_len.saturating_sub(p) as f64;
        if all > 0.0 {
            head / all
        } else {
            0.0
        }
    }

    fn add(&mut self, v: &[f32]) {
        let cols = v.len() / self.seq_len.max(1);
        for (t, x) in v.chunks_exact(cols.max(1)).enumerate() {
            let sq = x.iter().map(|&a| (a as f64) * (a as f64)).sum::<f64>();
            let mx = x.iter().fold(0.0f32, |a, &b| a.max(b.abs()));
            if t < self.pos_sq.len() {
                self.pos_sq[t] += sq;
                self.pos_max[t] = self.pos_max[t].max(mx);
                if t == 0 && mx >= self.pos_max[0] {
                    self.pos0_argmax = x.iter().position(|&a| a.abs() == mx).unwrap_or(0);
                }
            } else {
                self.rest_sq += sq;
                self.rest_max = self.rest_max.max(mx);
            }
        }
        self.n_seq += 1;
    }

    fn finish(&mut self) {
        let n = self.n_seq.max(1) as f64;
        for v in &mut self.pos_sq {
            *v /= n;
        }
        let rest = self.seq_len.saturating_sub(self.pos_sq.len()).max(1) as f64;
        self.rest_sq /= n * rest;
    }
}

fn site_name(s: LinearInput) -> &'static str {
    match s {
        LinearInput::AttnQkv => "attn_qkv",
        LinearInput::AttnOutput => "attn_output",
        LinearInput::FfnGateUp => "ffn_gate_up",
        _ => "ffn_down",
    }
}

/// What [`run`] made.
#[derive(Debug)]
pub struct PipelineOutput {
    /// The quantized linears, block by block in [`LINEARS`] order.
    pub tensors: Vec<QuantizedTensor>,
    /// Phase timings.
    pub timings: Timings,
    /// Activation statistics (with [`PipelineOptions::act_stats`]).
    pub act_stats: Vec<ActStat>,
}

/// One quantized tensor.
#[derive(Clone, Debug)]
pub struct QuantizedTensor {
    /// GGUF name, `blk.N.<linear>.weight`.
    pub name: String,
    /// Block index.
    pub layer: usize,
    /// The linear's short name (`attn_q`, ...).
    pub linear: &'static str,
    /// The stored type.
    pub ty: GgmlType,
    /// GGUF dims: `[cols, rows]`.
    pub dims: [u64; 2],
    /// The tensor's bytes in `ty`.
    pub data: Vec<u8>,
    /// Reconstruction errors and timing.
    pub report: LayerReport,
}

/// Progress, for a bar over blocks.
#[derive(Clone, Copy, Debug)]
pub enum Progress {
    /// Block `layer` starts (calibration forwards, then quantization).
    Block {
        /// Block index.
        layer: usize,
        /// Blocks in the model.
        n_layer: usize,
    },
    /// All blocks are done.
    Done,
}

/// Why the pipeline stopped.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// The model or a calibration forward failed.
    #[error("{0}")]
    Runtime(#[from] tern_runtime::Error),
    /// A matrix could not be quantized.
    #[error("{tensor}: {source}")]
    Quant {
        /// The tensor.
        tensor: String,
        /// Why.
        source: crate::QuantError,
    },
    /// Bad options for this model.
    #[error("{0}")]
    Options(String),
    /// The cancel flag was raised.
    #[error("interrupted")]
    Cancelled,
}

/// Timings of a run, seconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Timings {
    /// Forward passes and Hessian accumulation.
    pub calibrate: f64,
    /// The part of `calibrate` spent accumulating Hessians.
    pub hessian: f64,
    /// Quantizing matrices.
    pub quantize: f64,
}

/// A matrix just quantized: name, linear, rows, cols, result, report.
type Quantized = (
    String,
    &'static str,
    usize,
    usize,
    QuantizedMatrix,
    LayerReport,
);

fn input_of(linear: &str) -> LinearInput {
    match linear {
        "attn_q" | "attn_k" | "attn_v" => LinearInput::AttnQkv,
        "attn_output" => LinearInput::AttnOutput,
        "ffn_gate" | "ffn_up" => LinearInput::FfnGateUp,
        _ => LinearInput::FfnDown,
    }
}

/// Rows, cols and f32 values of a 2-D tensor.
fn tensor_f32(file: &GgufFile, t: &TensorInfo) -> Result<(usize, usize, Vec<f32>), PipelineError> {
    if t.dims.len() != 2 {
        return Err(PipelineError::Options(format!(
            "{} has {} dimensions, expected 2",
            t.name,
            t.dims.len()
        )));
    }
    let (cols, rows) = (t.dims[0] as usize, t.dims[1] as usize);
    let mut v = Vec::new();
    v.try_reserve_exact(rows * cols)
        .map_err(|_| tern_runtime::Error::OutOfMemory {
            bytes: (rows * cols * 4) as u64,
            what: t.name.clone(),
        })?;
    v.resize(rows * cols, 0.0);
    quants::dequantize_row(t.ty, file.tensor_data(t), &mut v)?;
    Ok((rows, cols, v))
}

/// Quantize every linear of `file`'s model. With `calib` (sequences of equal
/// length), GPTQ-style sequential calibration as the module describes;
/// without, RTN only (GPTQ schemes then fail). `progress` is called as
/// blocks start; `cancel` is polled between sequences and matrices.
pub fn run(
    file: &Arc<GgufFile>,
    opts: &PipelineOptions,
    calib: Option<&[Vec<u32>]>,
    cancel: &AtomicBool,
    progress: &mut dyn FnMut(Progress),
) -> Result<PipelineOutput, PipelineError> {
    let backend = if opts.exact {
        CpuBackend::exact(opts.threads)
    } else {
        CpuBackend::fast(opts.threads)
    };
    let model = LlamaModel::load(Arc::clone(file), backend)?;
    let n_layer = model.config.n_layer;
    let skip = if opts.scheme == Scheme::PGptq {
        opts.params.prefix_skip
    } else {
        0
    };
    let mut timings = Timings::default();
    let mut out = Vec::with_capacity(n_layer * LINEARS.len());
    let mut act_stats = Vec::new();
    let check_cancel = || {
        if cancel.load(Ordering::Relaxed) {
            Err(PipelineError::Cancelled)
        } else {
            Ok(())
        }
    };

    let calib = match calib {
        Some(seqs) if !seqs.is_empty() => Some(seqs),
        _ if opts.scheme != Scheme::Rtn => {
            return Err(PipelineError::Options(
                "GPTQ needs calibration data (--calib)".into(),
            ))
        }
        _ => None,
    };
    let seq_len = calib.map_or(0, |s| s[0].len());
    if calib.is_some_and(|s| s.iter().any(|q| q.len() != seq_len)) {
        return Err(PipelineError::Options(
            "calibration sequences differ in length".into(),
        ));
    }
    if calib.is_some() && skip >= seq_len {
        return Err(PipelineError::Options(format!(
            "--prefix-skip {skip} leaves nothing of sequences of {seq_len} tokens"
        )));
    }

    let mut runner = calib
        .map(|_| BlockRunner::new(&model, seq_len))
        .transpose()?;
    let mut hidden = Vec::new();
    if let (Some(r), Some(seqs)) = (&runner, calib) {
        let t0 = Instant::now();
        hidden.reserve_exact(seqs.len());
        for s in seqs {
            hidden.push(r.embed(s)?);
        }
        timings.calibrate += t0.elapsed().as_secs_f64();
    }
    // The previous block, quantized, to advance the hidden states through.
    let mut prev: Option<LayerWeights<CpuBackend>> = None;

    for il in 0..n_layer {
        progress(Progress::Block { layer: il, n_layer });
        let mut hess: HashMap<LinearInput, Hessian> = HashMap::new();
        let mut stats: Vec<(LinearInput, ActStat)> = Vec::new();
        if let Some(r) = runner.as_mut() {
            let t0 = Instant::now();
            let layer = &model.weights.layers[il];
            for x in hidden.iter_mut() {
                check_cancel()?;
                if let Some(p) = &prev {
                    r.run(p, x)?;
                }
                r.observe(layer, x, &mut |site, v| {
                    let t = Instant::now();
                    let cols = v.len() / seq_len;
                    hess.entry(site)
                        .or_insert_with(|| Hessian::new(cols))
                        .add_sequence_weighted(v, seq_len, skip, opts.prefix_weights.weight(site));
                    timings.hessian += t.elapsed().as_secs_f64();
                    if opts.act_stats {
                        let i = match stats.iter().position(|(s, _)| *s == site) {
                            Some(i) => i,
                            None => {
                                let p = STAT_POSITIONS;
                                stats.push((
                                    site,
                                    ActStat {
                                        layer: il,
                                        site: site_name(site),
                                        pos_sq: vec![0.0; p.min(seq_len)],
                                        pos_max: vec![0.0; p.min(seq_len)],
                                        rest_sq: 0.0,
                                        rest_max: 0.0,
                                        pos0_argmax: 0,
                                        n_seq: 0,
                                        seq_len,
                                    },
                                ));
                                stats.len() - 1
                            }
                        };
                        stats[i].1.add(v);
                    }
                    ControlFlow::Continue(())
                })?;
            }
            timings.calibrate += t0.elapsed().as_secs_f64();
            log::info!(
                "block {il}: calibration {:.1} s so far (Hessians {:.1} s), quantization {:.1} s",
                timings.calibrate,
                timings.hessian,
                timings.quantize
            );
        }
        for (_, mut st) in stats {
            st.finish();
            act_stats.push(st);
        }
        prev = None;

        let t0 = Instant::now();
        let mut block = Vec::with_capacity(LINEARS.len());
        for linear in LINEARS {
            check_cancel()?;
            let name = format!("blk.{il}.{linear}.weight");
            let info = file
                .tensor(&name)
                .ok_or_else(|| PipelineError::Options(format!("{name} is missing")))?;
            let (rows, cols, w) = tensor_f32(file, info)?;
            let h = hess.get(&input_of(linear));
            let grid = tensor_grid(opts.grid, opts.mixed, linear, il, n_layer)
                .fitted(cols)
                .ok_or_else(|| {
                    PipelineError::Options(format!(
                        "{name} has {cols} columns, which no group size of this grid divides"
                    ))
                })?;
            let (q, report) = quantize(&w, rows, cols, grid, opts.scheme, h, &opts.params)
                .map_err(|source| PipelineError::Quant {
                    tensor: name.clone(),
                    source,
                })?;
            block.push((name, linear, rows, cols, q, report));
        }
        drop(hess);
        timings.quantize += t0.elapsed().as_secs_f64();

        if runner.is_some() && il + 1 < n_layer {
            prev = Some(rerun_block(file, &model, il, &block, opts.exact)?);
        }
        for (name, linear, rows, cols, q, report) in block {
            out.push(QuantizedTensor {
                name,
                layer: il,
                linear,
                ty: q.ggml_type(),
                dims: [cols as u64, rows as u64],
                data: q.to_gguf_bytes(),
                report,
            });
        }
    }
    progress(Progress::Done);
    Ok(PipelineOutput {
        tensors: out,
        timings,
        act_stats,
    })
}

/// The quantized block `il` as weights the backend runs (see the module
/// documentation for the tensor types).
fn rerun_block(
    file: &GgufFile,
    model: &LlamaModel<CpuBackend>,
    il: usize,
    block: &[Quantized],
    exact: bool,
) -> Result<LayerWeights<CpuBackend>, PipelineError> {
    let mut w = GgufWriter::new();
    for norm in ["attn_norm", "ffn_norm"] {
        let name = format!("blk.{il}.{norm}.weight");
        let t = file
            .tensor(&name)
            .ok_or_else(|| PipelineError::Options(format!("{name} is missing")))?;
        w.add_tensor(name, t.ty, &t.dims, file.tensor_data(t))?;
    }
    for (name, _, rows, cols, q, _) in block {
        let dims = [*cols as u64, *rows as u64];
        let fast_type = matches!(
            q.ggml_type(),
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0
        );
        if !exact && fast_type {
            w.add_tensor(name.clone(), q.ggml_type(), &dims, q.to_gguf_bytes())?;
            continue;
        }
        let deq = q.dequantize();
        if !exact && cols % 32 == 0 {
            let row_bytes = GgmlType::Q8_0.row_bytes(*cols as u64).unwrap_or(0) as usize;
            let mut bytes = vec![0u8; row_bytes * rows];
            quants::quantize_row(GgmlType::Q8_0, &deq, &mut bytes)?;
            w.add_tensor(name.clone(), GgmlType::Q8_0, &dims, bytes)?;
        } else {
            let bytes: Vec<u8> = deq.iter().flat_map(|v| v.to_le_bytes()).collect();
            w.add_tensor(name.clone(), GgmlType::F32, &dims, bytes)?;
        }
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes)?;
    let mem = Arc::new(GgufFile::from_bytes(bytes)?);
    Ok(LayerWeights::load(&mem, &model.config, &model.backend, il)?)
}
