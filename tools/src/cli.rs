//! Command-line definitions for `tern` (clap derive). Flags follow
//! llama.cpp's where they overlap (`-m -p -f -n -c -t --temp --top-k
//! --top-p --min-p --seed`); ranges are checked here so a negative or absurd
//! value is a one-line error before any work starts.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// tern: a lean LLM runtime for edge devices.
#[derive(Debug, Parser)]
#[command(name = "tern", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Chat interactively with a model (the default model when -m is not given).
    Chat(ChatArgs),
    /// Generate a completion for one prompt.
    Generate(GenerateArgs),
    /// Measure prompt processing and generation speed, llama-bench style.
    Bench(BenchArgs),
    /// Measure perplexity on a text file, llama-perplexity's method.
    Perplexity(PerplexityArgs),
    /// Show a model's metadata and tensors.
    Info(InfoArgs),
}

/// Where to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceArg {
    Auto,
    Cpu,
    Cuda,
}

/// KV cache storage type.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum KvTypeArg {
    F16,
    F32,
}

/// Options every model-running command shares.
#[derive(Debug, Args, Clone)]
pub struct ModelArgs {
    /// GGUF model file (default: SmolLM2-135M-Instruct, fetched once with pip).
    #[arg(short = 'm', long = "model", value_name = "FILE")]
    pub model: Option<PathBuf>,
    /// CPU threads (default: all cores).
    #[arg(short = 't', long = "threads", value_parser = clap::value_parser!(u16).range(1..=1024), allow_negative_numbers = true)]
    pub threads: Option<u16>,
    /// Device to run on.
    #[arg(long = "device", value_enum, default_value_t = DeviceArg::Auto)]
    pub device: DeviceArg,
    /// KV cache type.
    #[arg(long = "kv-type", value_enum, default_value_t = KvTypeArg::F16)]
    pub kv_type: KvTypeArg,
    /// CPU: exact f32 arithmetic instead of 8-bit activations (slower; the reference).
    #[arg(long = "exact")]
    pub exact: bool,
}

/// Sampling options.
#[derive(Debug, Args, Clone)]
pub struct SamplingArgs {
    /// Temperature; 0 picks the most likely token (greedy).
    #[arg(long = "temp", default_value_t = 0.8, value_parser = non_negative_f32, allow_negative_numbers = true)]
    pub temp: f32,
    /// Keep the k most likely tokens (0 = off).
    #[arg(long = "top-k", default_value_t = 40, value_parser = clap::value_parser!(u32).range(0..=1_000_000), allow_negative_numbers = true)]
    pub top_k: u32,
    /// Keep the smallest set of tokens whose probability reaches p (1 = off).
    #[arg(long = "top-p", default_value_t = 0.95, value_parser = unit_f32, allow_negative_numbers = true)]
    pub top_p: f32,
    /// Drop tokens less likely than min-p times the most likely one (0 = off).
    #[arg(long = "min-p", default_value_t = 0.05, value_parser = unit_f32, allow_negative_numbers = true)]
    pub min_p: f32,
    /// Penalise repeats of the last --repeat-last-n tokens (1 = off).
    #[arg(long = "repeat-penalty", default_value_t = 1.0, value_parser = positive_f32, allow_negative_numbers = true)]
    pub repeat_penalty: f32,
    /// Tokens the repetition penalties look back over.
    #[arg(long = "repeat-last-n", default_value_t = 64, value_parser = clap::value_parser!(u32).range(0..=1_000_000), allow_negative_numbers = true)]
    pub repeat_last_n: u32,
    /// Frequency penalty (0 = off).
    #[arg(long = "frequency-penalty", default_value_t = 0.0, value_parser = finite_f32, allow_negative_numbers = true)]
    pub frequency_penalty: f32,
    /// Presence penalty (0 = off).
    #[arg(long = "presence-penalty", default_value_t = 0.0, value_parser = finite_f32, allow_negative_numbers = true)]
    pub presence_penalty: f32,
    /// Random seed (default: a fresh one each run).
    #[arg(short = 's', long = "seed", allow_negative_numbers = true)]
    pub seed: Option<u64>,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", value_parser = clap::value_parser!(u32).range(1..=16_777_216), allow_negative_numbers = true)]
    pub ctx_size: Option<u32>,
    /// Most tokens per answer (-1 = until the model stops or the context is full).
    #[arg(short = 'n', long = "n-predict", default_value_t = -1, value_parser = n_predict, allow_negative_numbers = true)]
    pub n_predict: i64,
    /// System prompt.
    #[arg(long = "system", value_name = "TEXT")]
    pub system: Option<String>,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// Prompt text.
    #[arg(
        short = 'p',
        long = "prompt",
        conflicts_with = "file",
        required_unless_present = "file"
    )]
    pub prompt: Option<String>,
    /// Read the prompt from a file (UTF-8).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Tokens to generate (-1 = until the model stops or the context is full).
    #[arg(short = 'n', long = "n-predict", default_value_t = 128, value_parser = n_predict, allow_negative_numbers = true)]
    pub n_predict: i64,
    /// Context size in tokens (default: the model's, at most 4096).
    #[arg(short = 'c', long = "ctx-size", value_parser = clap::value_parser!(u32).range(1..=16_777_216), allow_negative_numbers = true)]
    pub ctx_size: Option<u32>,
    /// Wrap the prompt in the model's chat template as a user message.
    #[arg(long = "chat")]
    pub chat: bool,
    /// Print one JSON object (text, token ids, timings) instead of streaming text.
    #[arg(long = "json")]
    pub json: bool,
}

/// Output format of `tern bench`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BenchFormat {
    Md,
    Json,
}

#[derive(Debug, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Prompt lengths to process (pp tests; 0 skips).
    #[arg(short = 'p', long = "n-prompt", default_value = "512", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(0..=1_048_576), allow_negative_numbers = true)]
    pub n_prompt: Vec<u32>,
    /// Tokens to generate (tg tests; 0 skips).
    #[arg(short = 'n', long = "n-gen", default_value = "128", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(0..=1_048_576), allow_negative_numbers = true)]
    pub n_gen: Vec<u32>,
    /// Repetitions of each test.
    #[arg(short = 'r', long = "repetitions", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=1000), allow_negative_numbers = true)]
    pub repetitions: u32,

    /// Context depths: run each test after this many tokens are already in the cache
    #[arg(short = 'd', long = "depth", default_value = "0", value_delimiter = ',', value_parser = clap::value_parser!(u32).range(0..=16_777_216), allow_negative_numbers = true)]
    pub depth: Vec<u32>,
    /// Tokens per forward during prompt processing.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_048_576), allow_negative_numbers = true)]
    pub batch_size: u32,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = BenchFormat::Md)]
    pub output: BenchFormat,
}

#[derive(Debug, Args)]
pub struct PerplexityArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Text file to score (UTF-8).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: PathBuf,
    /// Context size: the text is cut into chunks of this many tokens.
    #[arg(short = 'c', long = "ctx-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(4..=16_777_216), allow_negative_numbers = true)]
    pub ctx_size: u32,
    /// Score at most this many chunks.
    #[arg(long = "chunks", value_parser = clap::value_parser!(u32).range(1..), allow_negative_numbers = true)]
    pub chunks: Option<u32>,
    /// Tokens per forward.
    #[arg(short = 'b', long = "batch-size", default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=1_048_576), allow_negative_numbers = true)]
    pub batch_size: u32,
}

#[derive(Debug, Args)]
pub struct InfoArgs {
    /// GGUF file.
    pub model: PathBuf,
    /// Show every array element instead of the first few.
    #[arg(long = "full")]
    pub full: bool,
}

fn parse_f32(s: &str) -> Result<f32, String> {
    let v: f32 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a number"))?;
    if !v.is_finite() {
        return Err(format!("'{s}' is not a finite number"));
    }
    Ok(v)
}

fn finite_f32(s: &str) -> Result<f32, String> {
    parse_f32(s)
}

fn non_negative_f32(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if v < 0.0 {
        return Err(format!("{v} is negative"));
    }
    Ok(v)
}

fn positive_f32(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if v <= 0.0 {
        return Err(format!("{v} must be greater than 0"));
    }
    Ok(v)
}

fn unit_f32(s: &str) -> Result<f32, String> {
    let v = parse_f32(s)?;
    if !(0.0..=1.0).contains(&v) {
        return Err(format!("{v} is not between 0 and 1"));
    }
    Ok(v)
}

fn n_predict(s: &str) -> Result<i64, String> {
    let v: i64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not an integer"))?;
    if v < -1 {
        return Err(format!(
            "{v} is invalid: use -1 for no limit or a count ≥ 0"
        ));
    }
    if v > 16_777_216 {
        return Err(format!("{v} is absurdly large (at most 16777216)"));
    }
    Ok(v)
}
