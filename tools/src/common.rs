//! Helpers the subcommands share: loading the model a command names (or the
//! default one), turning flags into runtime parameters, and writing to
//! stdout so that a closed pipe ends the program quietly instead of with a
//! panic.

use std::io::{self, Write};
use std::path::Path;

use anyhow::{bail, Context, Result};
use tern_runtime::{Device, KvType, Model, ModelParams, SamplerParams, SessionParams};

use crate::cli::{DeviceArg, KvTypeArg, ModelArgs, SamplingArgs};
use crate::default_model;

/// Load the model `args` names, or the default model.
pub fn load_model(args: &ModelArgs) -> Result<Model> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => default_model::ensure()?,
    };
    load_path(&path, args)
}

/// Load a model file with the threads and device of `args`.
pub fn load_path(path: &Path, args: &ModelArgs) -> Result<Model> {
    if !path.exists() {
        bail!("model file {} does not exist", path.display());
    }
    if path.is_dir() {
        bail!("{} is a directory, not a GGUF model file", path.display());
    }
    let params = ModelParams {
        threads: args.threads.map(usize::from),
        device: match args.device {
            DeviceArg::Auto => Device::Auto,
            DeviceArg::Cpu => Device::Cpu,
            DeviceArg::Cuda => Device::Cuda,
        },
        exact: args.exact,
    };
    let model =
        Model::load(path, &params).with_context(|| format!("cannot load {}", path.display()))?;
    log::info!(
        "loaded {} ({}, {} layers, {} backend with {} kernels, {} threads)",
        path.display(),
        model.config().arch.name(),
        model.config().n_layer,
        model.backend_name(),
        model.kernel_name(),
        model.threads()
    );
    Ok(model)
}

/// Session parameters: the requested context, else the model's training
/// context capped at 4096 (KV memory grows with it).
pub fn session_params(
    model: &Model,
    ctx: Option<u32>,
    kv: KvTypeArg,
    n_batch: usize,
) -> SessionParams {
    let n_ctx = match ctx {
        Some(c) => c as usize,
        None => model.config().n_ctx_train.min(4096),
    };
    SessionParams {
        n_ctx,
        kv_type: match kv {
            KvTypeArg::F16 => KvType::F16,
            KvTypeArg::F32 => KvType::F32,
        },
        n_batch,
    }
}

/// Sampler parameters from the flags; without `--seed` a fresh seed is drawn.
pub fn sampler_params(s: &SamplingArgs) -> SamplerParams {
    SamplerParams {
        temperature: s.temp,
        top_k: s.top_k as usize,
        top_p: s.top_p,
        min_p: s.min_p,
        repeat_penalty: s.repeat_penalty,
        repeat_last_n: s.repeat_last_n as usize,
        frequency_penalty: s.frequency_penalty,
        presence_penalty: s.presence_penalty,
        seed: s.seed.unwrap_or_else(SamplerParams::clock_seed),
    }
}

/// Read a UTF-8 text file, with a clear error for bytes that are not UTF-8.
pub fn read_text(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
    match String::from_utf8(bytes) {
        Ok(s) => Ok(s),
        Err(e) => bail!(
            "{} is not valid UTF-8 (first bad byte at offset {})",
            path.display(),
            e.utf8_error().valid_up_to()
        ),
    }
}

/// Raised when stdout is a closed pipe: the program stops quietly.
#[derive(Debug)]
pub struct BrokenPipe;

impl std::fmt::Display for BrokenPipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("stdout closed")
    }
}

impl std::error::Error for BrokenPipe {}

/// Write `s` to stdout and flush; a closed pipe becomes `BrokenPipe`.
pub fn out(s: &str) -> Result<()> {
    let mut o = io::stdout().lock();
    match o.write_all(s.as_bytes()).and_then(|_| o.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Err(BrokenPipe.into()),
        Err(e) => Err(e).context("writing to stdout"),
    }
}

/// A short description of a model for tables: `general.name` and the
/// dominant weight type.
pub fn model_label(model: &Model) -> String {
    let f = model.gguf();
    let name = f
        .get("general.name")
        .and_then(|v| v.as_str())
        .map(str::to_string)
        .or_else(|| {
            model
                .path()
                .and_then(|p| p.file_stem())
                .map(|s| s.to_string_lossy().into_owned())
        })
        .unwrap_or_else(|| "model".into());
    let mut by_type: Vec<(String, u64)> = Vec::new();
    for t in f.tensors() {
        let k = t.ty.name().to_string();
        match by_type.iter_mut().find(|e| e.0 == k) {
            Some(e) => e.1 += t.n_bytes,
            None => by_type.push((k, t.n_bytes)),
        }
    }
    by_type.sort_by_key(|e| std::cmp::Reverse(e.1));
    match by_type.first() {
        Some((ty, _)) => format!("{name} {ty}"),
        None => name,
    }
}

/// Human-readable parameter count ("134.52 M").
pub fn param_count(model: &Model) -> String {
    let n: u64 = model.gguf().tensors().iter().map(|t| t.n_elements).sum();
    if n >= 1_000_000_000 {
        format!("{:.2} B", n as f64 / 1e9)
    } else {
        format!("{:.2} M", n as f64 / 1e6)
    }
}
