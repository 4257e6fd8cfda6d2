//! `tern-quantize`: quantize a GGUF model's linear layers with RTN, GPTQ or
//! prefix-aware GPTQ (P-GPTQ), calibrated through tern's own forward pass,
//! into GGML's Q4_0/Q4_1/Q8_0 or tern's packed types.
//!
//! Parses flags (ranges and combinations checked before any work), runs
//! `tern_quant::pipeline`, writes the output with
//! `tern_quant::pipeline_output::write_verified` and prints the per-layer
//! report (a table, or JSON on stdout with `--json`). Every failure is one
//! line `error: ...` on stderr. Exit codes: 0 success, 1 an error, 2 a usage
//! error, 130 interrupted (Ctrl-C or SIGTERM; the output is then untouched).

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tern_quant::calib;
use tern_quant::pipeline::{
    self, PipelineError, PipelineOptions, PrefixWeights, Progress, SkipSites,
};
use tern_quant::pipeline_output::{self, OutputError, Plan, QuantMeta};
use tern_quant::report::{self, RunInfo};
use tern_quant::{GptqParams, Grid, ScaleSearch, Scheme};
use tern_runtime::gguf::GgufFile;
use tern_runtime::model::LinearInput;
use tern_runtime::Tokenizer;

/// Quantize a GGUF model with RTN, GPTQ or prefix-aware GPTQ.
///
/// The seven linear layers of every block (attn_q/k/v/output,
/// ffn_gate/up/down) are quantized; embeddings, the output head and norms
/// are copied as they are. GPTQ calibrates block by block on the outputs of
/// the blocks already quantized.
#[derive(Debug, Parser)]
#[command(name = "tern-quantize", version, about, max_term_width = 100)]
struct Args {
    /// Input GGUF model (any tensor type tern reads).
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    model: PathBuf,
    /// Output GGUF file (written atomically; never the input).
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    output: PathBuf,
    /// Quantization scheme. wrtn: round-to-nearest with llama.cpp's
    /// importance-weighted scale choice (`llama-quantize --imatrix`), the
    /// importance being the calibration Hessian's diagonal (needs --calib).
    #[arg(long, value_enum, default_value_t = SchemeArg::PGptq)]
    scheme: SchemeArg,
    /// Stored type: GGML's q4_0 / q4_1 / q8_0 (llama.cpp loads them; groups of
    /// 32) or tern's packed type (any --bits and --group).
    #[arg(long = "type", value_enum, default_value_t = TypeArg::Tern)]
    ty: TypeArg,
    /// Bits per weight: 2, 3, 4 or 8 (tern type; default 4).
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=16), allow_negative_numbers = true)]
    bits: Option<u8>,
    /// Weights per scale group: 32, 64 or 128 (tern type; default 128).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=65536), allow_negative_numbers = true)]
    group: Option<u32>,
    /// Symmetric grid (tern type; q4_0 and q8_0 are symmetric anyway).
    #[arg(long)]
    sym: bool,
    /// GPTQ: quantize columns in order of decreasing Hessian diagonal, with
    /// static groups (scales chosen before GPTQ runs). Default for gptq and
    /// p-gptq into q4_0 (unless a dynamic --scale-search is given), off
    /// otherwise.
    #[arg(long = "act-order", conflicts_with = "no_act_order")]
    act_order: bool,
    /// GPTQ: quantize columns in their natural order (dynamic groups).
    #[arg(long = "no-act-order")]
    no_act_order: bool,
    /// Calibration text (UTF-8), needed by gptq and p-gptq; with rtn it only
    /// makes the report's errors output errors.
    #[arg(long, value_name = "FILE")]
    calib: Option<PathBuf>,
    /// P-GPTQ: the prefix, the positions at the start of each calibration
    /// sequence that --prefix-weight applies to [default: 4].
    #[arg(long = "prefix-skip", value_parser = clap::value_parser!(u32).range(0..=1_000_000), allow_negative_numbers = true)]
    prefix_skip: Option<u32>,
    /// P-GPTQ: the linear inputs whose Hessians leave out the prefix (or
    /// weight it by a single --prefix-weight λ): all but ffn_down (not-down,
    /// also where a single λ goes without this flag), all (the MiniCPM4
    /// report's form), or ffn_down only (down).
    /// Without a BOS, position 0 of every input is the attention sink, whose
    /// massive activation enters ffn_down (on SmolLM2-135M 99.8% of block
    /// 11's ffn_down Hessian trace); leaving it out of H leaves the weights
    /// that make the sink unprotected.
    #[arg(long = "prefix-skip-on", value_enum)]
    prefix_skip_on: Option<SkipArg>,
    /// P-GPTQ: the weight λ of the prefix positions in the Hessians, the
    /// other positions having weight 1: 0 leaves them out (the MiniCPM4
    /// report's skip), 1 is plain GPTQ, λ > 1 weights them up. Either one λ,
    /// applied at the inputs --prefix-skip-on names (1 elsewhere), or one
    /// per input as SITE=λ[,SITE=λ...] with SITE qkv (attn_q/k/v), o
    /// (attn_output), gate-up (ffn_gate/up) or down (ffn_down); inputs not
    /// listed get 1. Without this flag and --prefix-skip-on: qkv=32, the
    /// attention sink (position 0 of a BOS-less model) weighted up where
    /// keys and values are made; `--prefix-weight 0` gives the report's
    /// skip at all inputs but ffn_down.
    #[arg(long = "prefix-weight", value_name = "SPEC", value_parser = prefix_weight_spec, allow_negative_numbers = true)]
    prefix_weight: Option<WeightSpec>,
    /// Calibration sequences.
    #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(1..=1_000_000), allow_negative_numbers = true)]
    samples: u32,
    /// Tokens per calibration sequence (a BOS first when the model adds one).
    #[arg(long = "seq-len", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_048_576), allow_negative_numbers = true)]
    seq_len: u32,
    /// GPTQ dampening, relative to the mean of the Hessian's diagonal.
    #[arg(long, default_value_t = 0.01, value_parser = damp, allow_negative_numbers = true)]
    damp: f64,
    /// GPTQ: how each group's scale (and minimum) is chosen. diag: among
    /// scales around the fixed rule's and their least-squares refits, the one
    /// with the least error weighted by the Hessian's diagonal; loss: the
    /// same weighted by GPTQ's column loss weights 1/U_kk²; off: the grid's
    /// fixed rule (absmax or min/max); ggml: llama.cpp's imatrix rule
    /// (candidates -(n + 0.1 i)/max scored with their f32 least-squares scale,
    /// weights diag H * sqrt(sigma^2 + x^2)); ggml-diag: the same with weights
    /// diag H alone; ggml-static: every scale chosen once from the original
    /// weights by that rule (as --scheme wrtn), GPTQ then picks the codes.
    /// Default: ggml-static for gptq and p-gptq into q4_0 with act-order (their
    /// default), diag otherwise. With --act-order only ggml-static and off
    /// can be given; its static groups otherwise use the fixed rule.
    #[arg(long = "scale-search", value_enum)]
    scale_search: Option<ScaleArg>,
    /// GPTQ: once the codes are chosen, refit each row's group scales (and
    /// minimums) jointly by least squares under the full Hessian, keeping
    /// the refit only for rows whose layer loss it lowers. 0: off; n > 1:
    /// n − 1 more rounds of GPTQ with the refitted scales fixed and another
    /// refit, each row keeping its best round. Default 1, except 0 with
    /// --scale-search ggml-static, whose scales the refit would move off
    /// the rule chosen for them.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=8), allow_negative_numbers = true)]
    refit: Option<u32>,
    /// Store every linear in the one --type. Without it, gptq and p-gptq into
    /// q4_0 keep the ffn_down of the first eighth of the blocks in q4_1 (the
    /// mixture llama.cpp's Q4_0 uses with an importance matrix; 4.51 instead
    /// of 4.50 bits per weight on SmolLM2-135M). rtn is always pure.
    #[arg(long)]
    pure: bool,
    /// Write per-block, per-position statistics of every linear's input
    /// (mean squared norm and largest magnitude at positions 0-7 and after)
    /// to FILE as tab-separated text (calibrated schemes only).
    #[arg(long = "act-stats", value_name = "FILE")]
    act_stats: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    json: bool,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long = "threads", value_parser = clap::value_parser!(u16).range(1..=1024), allow_negative_numbers = true)]
    threads: Option<u16>,
    /// Calibration forwards with f32 activations and weights (slower; the
    /// reference) instead of the 8-bit-activation kernels.
    #[arg(long)]
    exact: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SchemeArg {
    Rtn,
    Wrtn,
    Gptq,
    #[value(name = "p-gptq")]
    PGptq,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum SkipArg {
    All,
    NotDown,
    Down,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum ScaleArg {
    Diag,
    Loss,
    Off,
    Ggml,
    GgmlDiag,
    GgmlStatic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum TypeArg {
    #[value(name = "q4_0")]
    Q4_0,
    #[value(name = "q4_1")]
    Q4_1,
    #[value(name = "q8_0")]
    Q8_0,
    Tern,
}

/// `--prefix-weight`: one λ, or λ per linear input.
#[derive(Clone, Debug, PartialEq)]
enum WeightSpec {
    One(f32),
    PerSite(PrefixWeights),
}

/// The largest λ accepted: far beyond any useful weight, small enough that
/// λ times a Hessian entry stays finite in f32.
const MAX_PREFIX_WEIGHT: f32 = 1e6;

fn prefix_lambda(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=MAX_PREFIX_WEIGHT).contains(&v) {
        return Err(format!("λ {s} is outside 0..={MAX_PREFIX_WEIGHT}"));
    }
    Ok(v)
}

fn prefix_weight_spec(s: &str) -> Result<WeightSpec, String> {
    if !s.contains('=') {
        return prefix_lambda(s).map(WeightSpec::One);
    }
    let mut w = PrefixWeights {
        at: [1.0; LinearInput::ALL.len()],
    };
    let mut seen = [false; LinearInput::ALL.len()];
    for item in s.split(',') {
        let (site, v) = item
            .split_once('=')
            .ok_or_else(|| format!("'{item}' is not SITE=λ"))?;
        let site = match site.trim() {
            "qkv" => LinearInput::AttnQkv,
            "o" => LinearInput::AttnOutput,
            "gate-up" => LinearInput::FfnGateUp,
            "down" => LinearInput::FfnDown,
            other => return Err(format!("unknown site '{other}' (qkv, o, gate-up or down)")),
        };
        let i = LinearInput::ALL
            .iter()
            .position(|&x| x == site)
            .expect("ALL lists every input");
        if std::mem::replace(&mut seen[i], true) {
            return Err(format!("site '{}' given twice", site_arg(site)));
        }
        w.at[i] = prefix_lambda(v)?;
    }
    Ok(WeightSpec::PerSite(w))
}

fn site_arg(s: LinearInput) -> &'static str {
    match s {
        LinearInput::AttnQkv => "qkv",
        LinearInput::AttnOutput => "o",
        LinearInput::FfnGateUp => "gate-up",
        _ => "down",
    }
}

fn damp(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|_| format!("'{s}' is not a number"))?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is outside 0..=1"));
    }
    Ok(v)
}

/// A usage error: a flag combination that cannot work (exit 2).
#[derive(Debug)]
struct Usage(String);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Usage {}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    Usage(msg.into()).into()
}

/// The grid `--type`, `--bits`, `--group` and `--sym` describe.
fn grid(a: &Args) -> Result<Grid> {
    let fixed = |name: &str, bits: u8, sym_ok: bool| -> Result<()> {
        if a.bits.is_some_and(|b| b != bits) {
            return Err(usage(format!(
                "--type {name} stores {bits}-bit weights; drop --bits or use --type tern"
            )));
        }
        if a.group.is_some_and(|g| g != 32) {
            return Err(usage(format!(
                "--type {name} has groups of 32; drop --group or use --type tern"
            )));
        }
        if a.sym && !sym_ok {
            return Err(usage(format!(
                "--type {name} is asymmetric; drop --sym or use q4_0"
            )));
        }
        Ok(())
    };
    let g = match a.ty {
        TypeArg::Q4_0 => fixed("q4_0", 4, true).map(|_| Grid::Q4_0)?,
        TypeArg::Q4_1 => fixed("q4_1", 4, false).map(|_| Grid::Q4_1)?,
        TypeArg::Q8_0 => fixed("q8_0", 8, true).map(|_| Grid::Q8_0)?,
        TypeArg::Tern => Grid::Tern {
            bits: a.bits.unwrap_or(4),
            group: a.group.unwrap_or(128) as usize,
            sym: a.sym,
        },
    };
    g.validate().map_err(|e| usage(e.to_string()))?;
    Ok(g)
}

fn scheme_name(s: Scheme) -> &'static str {
    match s {
        Scheme::Rtn => "rtn",
        Scheme::WeightedRtn => "wrtn",
        Scheme::Gptq => "gptq",
        Scheme::PGptq => "p-gptq",
    }
}

/// How the run ended, when not with a report.
enum Outcome {
    Done,
    Cancelled,
}

fn run(a: &Args, cancel: &Arc<AtomicBool>) -> Result<Outcome> {
    let start = Instant::now();
    let grid = grid(a)?;
    let scheme = match a.scheme {
        SchemeArg::Rtn => Scheme::Rtn,
        SchemeArg::Wrtn => Scheme::WeightedRtn,
        SchemeArg::Gptq => Scheme::Gptq,
        SchemeArg::PGptq => Scheme::PGptq,
    };
    if scheme != Scheme::PGptq && a.prefix_skip.is_some() {
        return Err(usage("--prefix-skip applies to --scheme p-gptq only"));
    }
    let gptq_like = matches!(scheme, Scheme::Gptq | Scheme::PGptq);
    if !gptq_like && (a.act_order || a.no_act_order) {
        return Err(usage(
            "--act-order and --no-act-order apply to --scheme gptq and p-gptq only",
        ));
    }
    let dynamic_search = matches!(
        a.scale_search,
        Some(ScaleArg::Diag | ScaleArg::Loss | ScaleArg::Ggml | ScaleArg::GgmlDiag)
    );
    if a.act_order && dynamic_search {
        return Err(usage(
            "--act-order uses static groups: --scale-search must be ggml-static or off",
        ));
    }
    // Q4_0's defaults (docs/quant-quality-notes.md §8): act-order with the
    // scales llama.cpp's imatrix rule picks from the original weights.
    let q4_0_defaults = gptq_like && grid == Grid::Q4_0;
    let act_order = a.act_order || (q4_0_defaults && !a.no_act_order && !dynamic_search);
    let scale_search = a.scale_search.unwrap_or(if q4_0_defaults && act_order {
        ScaleArg::GgmlStatic
    } else {
        ScaleArg::Diag
    });
    if !gptq_like && a.scale_search.is_some() {
        return Err(usage(
            "--scale-search applies to --scheme gptq and p-gptq only",
        ));
    }
    if scheme != Scheme::PGptq && a.prefix_skip_on.is_some() {
        return Err(usage("--prefix-skip-on applies to --scheme p-gptq only"));
    }
    if scheme != Scheme::PGptq && a.prefix_weight.is_some() {
        return Err(usage("--prefix-weight applies to --scheme p-gptq only"));
    }
    let sites = match a.prefix_skip_on.unwrap_or(SkipArg::NotDown) {
        SkipArg::All => SkipSites::All,
        SkipArg::NotDown => SkipSites::NotFfnDown,
        SkipArg::Down => SkipSites::FfnDown,
    };
    let prefix_weights = match &a.prefix_weight {
        // Neither flag: the sink weighting; --prefix-skip-on alone: the skip.
        None if a.prefix_skip_on.is_none() => PrefixWeights::SINK,
        None => PrefixWeights::on(sites, 0.0),
        Some(WeightSpec::One(l)) => PrefixWeights::on(sites, *l),
        Some(WeightSpec::PerSite(_)) if a.prefix_skip_on.is_some() => {
            return Err(usage(
                "--prefix-weight SITE=λ,... names its own inputs: drop --prefix-skip-on",
            ))
        }
        Some(WeightSpec::PerSite(w)) => *w,
    };
    if scheme == Scheme::Rtn && a.act_stats.is_some() {
        return Err(usage(
            "--act-stats needs a calibrated scheme (gptq or p-gptq)",
        ));
    }
    if scheme != Scheme::Rtn && a.calib.is_none() {
        return Err(usage(format!(
            "--scheme {} needs calibration text: --calib FILE",
            scheme_name(scheme)
        )));
    }
    let prefix_skip = if scheme == Scheme::PGptq {
        a.prefix_skip.unwrap_or(4) as usize
    } else {
        0
    };
    let threads = a.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        usize::from,
    );
    // faer's parallel linear algebra runs on rayon's global pool.
    let _ = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build_global();

    if !a.model.is_file() {
        bail!(
            "model file {} does not exist or is not a file",
            a.model.display()
        );
    }
    pipeline_output::check_paths(&a.model, &a.output)?;
    for p in pipeline_output::clean_stale_temps(&a.output) {
        log::info!("removed {} left by an interrupted run", p.display());
    }
    let file = Arc::new(
        GgufFile::open(&a.model).with_context(|| format!("cannot load {}", a.model.display()))?,
    );

    let calib = match &a.calib {
        None => None,
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read calibration text {}", path.display()))?;
            let text = String::from_utf8(bytes).map_err(|_| {
                anyhow::anyhow!("calibration file {} is not UTF-8 text", path.display())
            })?;
            let tok = Tokenizer::from_gguf(&file)
                .with_context(|| format!("{} has no usable tokenizer", a.model.display()))?;
            let set = calib::prepare(&text, &tok, a.samples as usize, a.seq_len as usize)
                .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
            log::info!(
                "calibration: {} tokens of {}, {} sequences of {}",
                set.text_tokens,
                path.display(),
                set.sequences.len(),
                a.seq_len
            );
            Some(set)
        }
    };
    if calib.is_some() && prefix_skip >= a.seq_len as usize {
        return Err(usage(format!(
            "--prefix-skip {prefix_skip} must be below --seq-len {}",
            a.seq_len
        )));
    }

    let opts = PipelineOptions {
        grid,
        scheme,
        params: GptqParams {
            damp: a.damp,
            act_order,
            prefix_skip,
            scale_search: match scale_search {
                ScaleArg::Loss => ScaleSearch::Loss,
                ScaleArg::Diag => ScaleSearch::Diag,
                ScaleArg::Off => ScaleSearch::Off,
                ScaleArg::Ggml => ScaleSearch::Ggml,
                ScaleArg::GgmlDiag => ScaleSearch::GgmlDiag,
                ScaleArg::GgmlStatic => ScaleSearch::GgmlStatic,
            },
            refit: a
                .refit
                .unwrap_or(u32::from(scale_search != ScaleArg::GgmlStatic)),
            ..GptqParams::default()
        },
        threads,
        exact: a.exact,
        prefix_weights,
        mixed: scheme != Scheme::Rtn && !a.pure,
        act_stats: a.act_stats.is_some(),
    };
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "quantizing {msg} [{bar:30}] {pos}/{len} blocks, {elapsed_precise} (eta {eta})",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let result = pipeline::run(
        &file,
        &opts,
        calib.as_ref().map(|c| &c.sequences[..]),
        cancel,
        &mut |p| match p {
            Progress::Block { layer, n_layer } => {
                bar.set_length(n_layer as u64);
                bar.set_position(layer as u64);
                log::info!("block {layer}/{n_layer}");
            }
            Progress::Done => bar.finish_and_clear(),
        },
    );
    bar.finish_and_clear();
    let (tensors, timings, act_stats) = match result {
        Ok(r) => (r.tensors, r.timings, r.act_stats),
        Err(PipelineError::Cancelled) => return Ok(Outcome::Cancelled),
        Err(e) => return Err(e.into()),
    };

    if let Some(path) = &a.act_stats {
        std::fs::write(path, report::act_stats_tsv(&act_stats))
            .with_context(|| format!("cannot write {}", path.display()))?;
    }

    let t_write = Instant::now();
    let ty = grid.ggml_type();
    let meta = QuantMeta {
        scheme: scheme_name(scheme).into(),
        ty,
        bits: grid.bits(),
        group: grid.group(),
        sym: matches!(grid, Grid::Q4_0 | Grid::Q8_0 | Grid::Tern { sym: true, .. }),
        act_order,
        damp: a.damp,
        prefix_skip,
        calib: calib
            .as_ref()
            .map(|c| (c.sha256.clone(), c.sequences.len(), a.seq_len as usize)),
    };
    let plan = Plan::new(&file, &tensors, &meta)?;
    match pipeline_output::write_verified(&plan, &a.output, cancel) {
        Ok(()) => {}
        Err(OutputError::Cancelled) => return Ok(Outcome::Cancelled),
        Err(e) => return Err(e).with_context(|| format!("cannot write {}", a.output.display())),
    }
    let write_secs = t_write.elapsed().as_secs_f64();

    let info = RunInfo {
        input: a.model.display().to_string(),
        output: a.output.display().to_string(),
        scheme: meta.scheme.clone(),
        ty: ty.to_string(),
        bits: meta.bits,
        group: meta.group,
        sym: meta.sym,
        act_order,
        damp: a.damp,
        prefix_skip,
        prefix_weights: (scheme == Scheme::PGptq).then_some(prefix_weights.at),
        calib: calib.as_ref().zip(a.calib.as_ref()).map(|(c, p)| {
            (
                p.display().to_string(),
                c.sha256.clone(),
                c.sequences.len(),
                a.seq_len as usize,
                c.text_tokens,
            )
        }),
        threads,
        path: if a.exact { "exact" } else { "fast" },
        timings,
        write_secs,
        total_secs: start.elapsed().as_secs_f64(),
        output_bytes: std::fs::metadata(&a.output).map_or(0, |m| m.len()),
    };
    let text = if a.json {
        format!("{}\n", report::json(&info, &tensors))
    } else {
        report::table(&info, &tensors)
    };
    print_out(&text);
    Ok(Outcome::Done)
}

/// Print to stdout; a closed pipe is not an error worth reporting.
fn print_out(s: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(s.as_bytes()).and_then(|_| out.flush());
}

/// One line: the error chain joined with ": ", newlines folded.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Ctrl-C or SIGTERM: the first asks the run to stop (the output stays
/// untouched, the temp file is removed); a second exits at once, removing
/// the temp file being written.
fn install_signals(cancel: Arc<AtomicBool>) {
    let _ = ctrlc::set_handler(move || {
        if cancel.swap(true, Ordering::SeqCst) {
            pipeline_output::remove_active_temp();
            std::process::exit(130);
        }
        eprintln!("\ntern-quantize: interrupted, stopping (again to quit at once)");
    });
}

fn main() -> ExitCode {
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            let msg = e.to_string();
            let text: Vec<&str> = msg
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            let text = text.join(" ");
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprintln!("error: {text} (see tern-quantize --help)");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();
    let cancel = Arc::new(AtomicBool::new(false));
    install_signals(Arc::clone(&cancel));
    match run(&args, &cancel) {
        Ok(Outcome::Done) => ExitCode::SUCCESS,
        Ok(Outcome::Cancelled) => {
            eprintln!(
                "error: interrupted; {} was not written",
                args.output.display()
            );
            ExitCode::from(130)
        }
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            if e.downcast_ref::<Usage>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
