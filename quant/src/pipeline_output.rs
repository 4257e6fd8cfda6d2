//! Writing the quantized model: which metadata and tensors go into the
//! output file, and getting them onto disk so that no run ever leaves a
//! half-written or damaged output.
//!
//! The output is a copy of the input with the quantized linears' data
//! replaced, every metadata key kept (in order) except the ones describing
//! the quantization, which are set anew: `general.file_type` (GGML's value
//! for Q4_0/Q4_1/Q8_0 outputs; removed for tern's own types, which GGML's
//! enumeration has no value for), `general.quantization_version`,
//! `general.quantized_by` and the `tern.quantization.*` keys.
//!
//! [`write_verified`]: the bytes go to a temp file `.<name>.tern-tmp.<pid>.<n>`
//! in the target directory, which is fsynced, opened again with the
//! runtime's GGUF reader and compared key by key and tensor by tensor with
//! what was meant to be written, loaded as a model, and only then renamed
//! over the target (and the directory fsynced). Any failure or a raised
//! cancel flag removes the temp file and leaves an existing target
//! untouched. A process killed outright (SIGKILL, power loss) can leave only
//! a temp file, never a partial target; [`clean_stale_temps`] removes temp
//! files of processes that no longer run.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use tern_runtime::backend::cpu::CpuBackend;
use tern_runtime::gguf::{GgufFile, GgufWriter, Value};
use tern_runtime::model::LlamaModel;
use tern_runtime::quants::GgmlType;

use crate::pipeline::QuantizedTensor;

/// Why the output could not be written.
#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The paths are unusable (same file as the input, a directory, ...).
    #[error("{0}")]
    Refused(String),
    /// I/O on a named path.
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The runtime rejected what was built or read back.
    #[error("{0}")]
    Runtime(#[from] tern_runtime::Error),
    /// The file read back differs from what was written.
    #[error("the written file does not read back as written: {0}")]
    Verify(String),
    /// The cancel flag was raised before the rename.
    #[error("interrupted")]
    Cancelled,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> OutputError + '_ {
    move |source| OutputError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// How the tensors were quantized, for the output's metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct QuantMeta {
    /// `rtn`, `gptq` or `p-gptq`.
    pub scheme: String,
    /// The quantized linears' tensor type.
    pub ty: GgmlType,
    /// Bits per weight code.
    pub bits: u8,
    /// Weights per scale group.
    pub group: usize,
    /// Symmetric grid.
    pub sym: bool,
    /// GPTQ act-order.
    pub act_order: bool,
    /// GPTQ relative dampening.
    pub damp: f64,
    /// Positions left out of each calibration sequence (P-GPTQ; else 0).
    pub prefix_skip: usize,
    /// The calibration text's sha256, samples and sequence length.
    pub calib: Option<(String, usize, usize)>,
}

/// GGML's `general.file_type` ("mostly ...") for a tensor type, if it has one.
fn file_type(ty: GgmlType) -> Option<u32> {
    match ty {
        GgmlType::Q4_0 => Some(2),
        GgmlType::Q4_1 => Some(3),
        GgmlType::Q8_0 => Some(7),
        _ => None,
    }
}

/// The output file's content: metadata in order, and tensors (name, type,
/// GGUF dims, bytes) in the input's order.
pub struct Plan<'a> {
    kvs: Vec<(String, Value)>,
    tensors: Vec<PlannedTensor<'a>>,
}

/// A tensor of the output: name, type, GGUF dims and bytes.
type PlannedTensor<'a> = (String, GgmlType, Vec<u64>, Cow<'a, [u8]>);

impl<'a> Plan<'a> {
    /// The input with `quantized` in place of its tensors of the same names
    /// and the metadata of `meta`.
    pub fn new(
        input: &'a GgufFile,
        quantized: &'a [QuantizedTensor],
        meta: &QuantMeta,
    ) -> Result<Plan<'a>, OutputError> {
        let ft = file_type(meta.ty);
        let mut kvs: Vec<(String, Value)> = Vec::new();
        for (k, v) in input.metadata() {
            let dropped = k == "general.quantized_by" || k.starts_with("tern.quantization.");
            match k.as_str() {
                _ if dropped => {}
                "general.file_type" => {
                    if let Some(f) = ft {
                        kvs.push((k.clone(), Value::U32(f)));
                    }
                }
                _ => kvs.push((k.clone(), v.clone())),
            }
        }
        let mut add = |k: &str, v: Value| {
            if !kvs.iter().any(|(key, _)| key == k) {
                kvs.push((k.to_string(), v));
            }
        };
        if let Some(f) = ft {
            add("general.file_type", Value::U32(f));
            add("general.quantization_version", Value::U32(2));
        }
        add(
            "general.quantized_by",
            Value::String(format!("tern-quantize {}", env!("CARGO_PKG_VERSION"))),
        );
        let p = "tern.quantization";
        add(&format!("{p}.scheme"), Value::String(meta.scheme.clone()));
        add(&format!("{p}.type"), Value::String(meta.ty.to_string()));
        add(&format!("{p}.bits"), Value::U32(meta.bits.into()));
        add(&format!("{p}.group"), Value::U32(meta.group as u32));
        add(&format!("{p}.sym"), Value::Bool(meta.sym));
        add(&format!("{p}.act_order"), Value::Bool(meta.act_order));
        add(&format!("{p}.damp"), Value::F32(meta.damp as f32));
        add(
            &format!("{p}.prefix_skip"),
            Value::U32(meta.prefix_skip as u32),
        );
        if let Some((sha, samples, seq_len)) = &meta.calib {
            add(&format!("{p}.calib.sha256"), Value::String(sha.clone()));
            add(&format!("{p}.calib.samples"), Value::U32(*samples as u32));
            add(&format!("{p}.calib.seq_len"), Value::U32(*seq_len as u32));
        }

        let mut tensors = Vec::with_capacity(input.tensors().len());
        let mut used = 0;
        for t in input.tensors() {
            match quantized.iter().find(|q| q.name == t.name) {
                Some(q) => {
                    used += 1;
                    tensors.push((
                        q.name.clone(),
                        q.ty,
                        q.dims.to_vec(),
                        Cow::Borrowed(&q.data[..]),
                    ));
                }
                None => tensors.push((
                    t.name.clone(),
                    t.ty,
                    t.dims.clone(),
                    Cow::Borrowed(input.tensor_data(t)),
                )),
            }
        }
        if used != quantized.len() {
            return Err(OutputError::Verify(
                "a quantized tensor has no counterpart in the input".into(),
            ));
        }
        Ok(Plan { kvs, tensors })
    }

    /// The metadata the file will carry, in order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.kvs
    }

    fn writer(&self) -> Result<GgufWriter<'_>, OutputError> {
        let mut w = GgufWriter::new();
        for (k, v) in &self.kvs {
            w.add_kv(k.clone(), v.clone())?;
        }
        for (name, ty, dims, data) in &self.tensors {
            w.add_tensor(name.clone(), *ty, dims, &data[..])?;
        }
        Ok(w)
    }

    /// Check that `file` holds exactly this plan.
    fn verify(&self, file: &GgufFile) -> Result<(), OutputError> {
        let bad = |m: String| Err(OutputError::Verify(m));
        if file.metadata().len() != self.kvs.len() {
            return bad(format!(
                "{} metadata keys instead of {}",
                file.metadata().len(),
                self.kvs.len()
            ));
        }
        for ((k, v), (k2, v2)) in file.metadata().iter().zip(&self.kvs) {
            if k != k2 || v != v2 {
                return bad(format!("metadata key {k2} differs"));
            }
        }
        if file.tensors().len() != self.tensors.len() {
            return bad(format!(
                "{} tensors instead of {}",
                file.tensors().len(),
                self.tensors.len()
            ));
        }
        for (t, (name, ty, dims, data)) in file.tensors().iter().zip(&self.tensors) {
            if &t.name != name || t.ty != *ty || &t.dims != dims {
                return bad(format!("tensor {name} has another name, type or shape"));
            }
            if file.tensor_data(t) != &data[..] {
                return bad(format!("the data of tensor {name} differs"));
            }
        }
        Ok(())
    }
}

/// Refuse an output that is a directory, lies in a missing directory, or is
/// the input itself (also through a symlink or hard link).
pub fn check_paths(input: &Path, output: &Path) -> Result<(), OutputError> {
    let refuse = |m: String| Err(OutputError::Refused(m));
    if output.file_name().is_none() {
        return refuse(format!("output path {} has no file name", output.display()));
    }
    let dir = parent_dir(output);
    if !dir.is_dir() {
        return refuse(format!(
            "the output directory {} does not exist",
            dir.display()
        ));
    }
    let Ok(out_meta) = std::fs::metadata(output) else {
        return Ok(()); // nothing there yet (or a dangling link, replaced as a link)
    };
    if out_meta.is_dir() {
        return refuse(format!("output {} is a directory", output.display()));
    }
    let in_meta = std::fs::metadata(input).map_err(io(input))?;
    let same = same_file(&in_meta, &out_meta)
        || matches!(
            (input.canonicalize(), output.canonicalize()),
            (Ok(a), Ok(b)) if a == b
        );
    if same {
        return refuse(format!(
            "output {} is the input file; write to another path",
            output.display()
        ));
    }
    Ok(())
}

#[cfg(unix)]
fn same_file(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.dev() == b.dev() && a.ino() == b.ino()
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::Metadata, _: &std::fs::Metadata) -> bool {
    false
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// The temp-file prefix for `output`: `.<name>.tern-tmp.`
fn temp_prefix(output: &Path) -> String {
    let name = output
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!(".{name}.tern-tmp.")
}

/// Remove temp files for `output` left by tern-quantize processes that no
/// longer run (killed mid-write); returns what was removed. Only on Linux,
/// where `/proc` says whether a process lives; elsewhere nothing is removed.
pub fn clean_stale_temps(output: &Path) -> Vec<PathBuf> {
    let mut removed = Vec::new();
    if !cfg!(target_os = "linux") {
        return removed;
    }
    let prefix = temp_prefix(output);
    let Ok(entries) = std::fs::read_dir(parent_dir(output)) else {
        return removed;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(&prefix) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let p = e.path();
            if std::fs::remove_file(&p).is_ok() {
                removed.push(p);
            }
        }
    }
    removed
}

/// The temp file being written now, for a signal handler that must exit at
/// once ([`remove_active_temp`]).
static ACTIVE_TEMP: Mutex<Option<PathBuf>> = Mutex::new(None);

/// Remove the temp file being written, if any (for a forced exit).
pub fn remove_active_temp() {
    let mut t = ACTIVE_TEMP.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = t.take() {
        let _ = std::fs::remove_file(p);
    }
}

/// Removes the temp file on every early exit; disarmed after the rename.
struct TempGuard(Option<PathBuf>);

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(&p);
            let mut t = ACTIVE_TEMP.lock().unwrap_or_else(|p| p.into_inner());
            *t = None;
        }
    }
}

/// With this environment variable set, [`write_verified`] stops after the
/// temp file is verified and before the rename, prints a line saying so and
/// waits until the process is killed or cancelled: the test suite's way to
/// interrupt a run at its most delicate point.
pub const PAUSE_ENV: &str = "TERN_QUANTIZE_TEST_PAUSE_BEFORE_RENAME";

/// Write `plan` to `output` as the module describes.
pub fn write_verified(plan: &Plan, output: &Path, cancel: &AtomicBool) -> Result<(), OutputError> {
    let dir = parent_dir(output);
    let prefix = temp_prefix(output);
    let (tmp, file) = create_temp(&dir, &prefix)?;
    let mut guard = TempGuard(Some(tmp.clone()));
    *ACTIVE_TEMP.lock().unwrap_or_else(|p| p.into_inner()) = Some(tmp.clone());

    let writer = plan.writer()?;
    let mut w = BufWriter::with_capacity(1 << 20, file);
    writer.write_to(&mut w).map_err(|e| match e {
        tern_runtime::Error::Io { source, .. } => OutputError::Io {
            path: tmp.clone(),
            source,
        },
        e => e.into(),
    })?;
    w.flush().map_err(io(&tmp))?;
    let file = w.into_inner().map_err(|e| io(&tmp)(e.into_error()))?;
    file.sync_all().map_err(io(&tmp))?;
    drop(file);
    if cancel.load(Ordering::Relaxed) {
        return Err(OutputError::Cancelled);
    }

    let back = GgufFile::open(&tmp)?;
    plan.verify(&back)?;
    // The runtime must be able to load what it is given.
    LlamaModel::load(Arc::new(back), CpuBackend::exact(1))?;

    if std::env::var_os(PAUSE_ENV).is_some() {
        eprintln!("tern-quantize: paused before rename ({PAUSE_ENV})");
        while !cancel.load(Ordering::Relaxed) {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
    if cancel.load(Ordering::Relaxed) {
        return Err(OutputError::Cancelled);
    }
    std::fs::rename(&tmp, output).map_err(io(output))?;
    guard.0 = None;
    *ACTIVE_TEMP.lock().unwrap_or_else(|p| p.into_inner()) = None;
    sync_dir(&dir).map_err(io(&dir))
}

fn create_temp(dir: &Path, prefix: &str) -> Result<(PathBuf, File), OutputError> {
    let pid = std::process::id();
    let mut last = None;
    for n in 0..100 {
        let p = dir.join(format!("{prefix}{pid}.{n}"));
        match OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some((p, e)),
            Err(source) => return Err(OutputError::Io { path: p, source }),
        }
    }
    let (path, source) = last.unwrap_or_else(|| {
        (
            dir.to_path_buf(),
            std::io::Error::new(std::io::ErrorKind::AlreadyExists, "no free temp name"),
        )
    });
    Err(OutputError::Io { path, source })
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> std::io::Result<()> {
    Ok(())
}
