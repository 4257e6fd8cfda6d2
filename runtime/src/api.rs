//! The public face of the runtime: `Model` (weights, tokenizer and chat
//! template, shared) and `Session` (one sequence's KV cache and token
//! history). This is the only place that names a concrete backend: an enum
//! with one arm per backend, so model code stays generic.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::backend::cpu::CpuBackend;
#[cfg(feature = "cuda")]
use crate::backend::cuda::CudaBackend;
use crate::backend::KvType;
use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::gguf::GgufFile;
use crate::model::{Config, LlamaModel};
use crate::session::{self, Batch, Logits};
use crate::tokenizer::Tokenizer;

/// Where the model runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Device {
    /// The GPU when one is usable, else the CPU (with one log line).
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// An NVIDIA GPU; an error if none can be used.
    Cuda,
}

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct ModelParams {
    /// CPU threads; `None` uses every available core.
    pub threads: Option<usize>,
    /// Where to run.
    pub device: Device,
    /// On the CPU, compute with f32 activations instead of 8-bit quantized
    /// ones: slower, and the reference the fast kernels are measured
    /// against. (`TERN_CPU_EXACT=1` in the environment does the same.)
    pub exact: bool,
}

/// How to open a session.
#[derive(Clone, Debug)]
pub struct SessionParams {
    /// KV cache capacity in tokens.
    pub n_ctx: usize,
    /// KV cache storage type.
    pub kv_type: KvType,
    /// Most tokens per forward during prompt processing.
    pub n_batch: usize,
}

impl Default for SessionParams {
    fn default() -> SessionParams {
        SessionParams {
            n_ctx: 4096,
            kv_type: KvType::default(),
            n_batch: 512,
        }
    }
}

// One variant per backend.
enum ModelImpl {
    Cpu(Arc<LlamaModel<CpuBackend>>),
    #[cfg(feature = "cuda")]
    Cuda(Arc<LlamaModel<CudaBackend>>),
}

enum SessionImpl {
    Cpu(session::Session<CpuBackend>),
    #[cfg(feature = "cuda")]
    Cuda(session::Session<CudaBackend>),
}

/// The GPU to run on for `device`, `None` for the CPU. `Auto` falls back to
/// the CPU with one log line; `Cuda` turns every failure into an error.
#[cfg(feature = "cuda")]
fn open_gpu(params: &ModelParams, file: &GgufFile) -> Result<Option<CudaBackend>> {
    let weight_bytes = file.tensors().iter().map(|t| t.n_bytes).sum();
    // The hidden size, for the kernels' configuration (0 when the file
    // has no embedding; the model's own checks reject it later).
    let n_embd = file
        .tensor("token_embd.weight")
        .map_or(0, |t| t.dims.first().copied().unwrap_or(0) as usize);
    match params.device {
        Device::Cpu => Ok(None),
        Device::Auto if params.exact => Ok(None),
        Device::Cuda if params.exact => Err(Error::DeviceUnavailable(
            "--exact selects the CPU's f32 reference path; it cannot run on the GPU".into(),
        )),
        Device::Auto => match CudaBackend::open_for(0, weight_bytes, n_embd) {
            Ok(b) => Ok(Some(b)),
            Err(e) => {
                log::info!("no usable GPU ({e}); running on the CPU");
                Ok(None)
            }
        },
        Device::Cuda => CudaBackend::open_for(0, weight_bytes, n_embd).map(Some),
    }
}

struct ModelInner {
    engine: ModelImpl,
    tokenizer: Option<Tokenizer>,
    template: ChatTemplate,
    path: Option<PathBuf>,
    threads: usize,
}

/// A loaded model: weights, tokenizer and chat template. Cheap to clone;
/// every clone and every session shares the same weights.
#[derive(Clone)]
pub struct Model {
    inner: Arc<ModelInner>,
}

impl Model {
    /// Map, validate and load a GGUF model.
    pub fn load(path: impl AsRef<Path>, params: &ModelParams) -> Result<Model> {
        Model::from_gguf(GgufFile::open(path)?, params)
    }

    /// Load a model from an already parsed GGUF (mapped or in memory).
    pub fn from_gguf(file: GgufFile, params: &ModelParams) -> Result<Model> {
        #[cfg(not(feature = "cuda"))]
        if params.device == Device::Cuda {
            return Err(Error::DeviceUnavailable(
                "this build of tern has no CUDA backend (build with --features cuda)".into(),
            ));
        }
        #[cfg(feature = "cuda")]
        let gpu = open_gpu(params, &file)?;
        let path = file.path().map(Path::to_path_buf);
        // A model without tokenizer metadata still runs on token ids; one
        // whose tokenizer metadata is broken is rejected here, at load.
        let tokenizer = if file.get("tokenizer.ggml.model").is_some() {
            Some(Tokenizer::from_gguf(&file)?)
        } else {
            None
        };
        let template = match ChatTemplate::from_gguf(&file) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("{e}; using ChatML instead");
                ChatTemplate::chatml("", "")?
            }
        };
        let file = Arc::new(file);
        let threads = params
            .threads
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        #[cfg(feature = "cuda")]
        if let Some(gpu) = gpu {
            match LlamaModel::load(Arc::clone(&file), gpu) {
                Ok(m) => {
                    return Ok(Model {
                        inner: Arc::new(ModelInner {
                            engine: ModelImpl::Cuda(Arc::new(m)),
                            tokenizer,
                            template,
                            path,
                            threads,
                        }),
                    })
                }
                // A tensor type the GPU kernels lack (tern's packed GPTQ
                // types, say): `auto` runs the model on the CPU instead.
                Err(e @ Error::UnsupportedType { .. }) if params.device == Device::Auto => {
                    log::info!("{e}; running on the CPU");
                }
                Err(e) => return Err(e),
            }
        }
        let backend = if params.exact {
            CpuBackend::exact(threads)
        } else {
            CpuBackend::new(threads)
        };
        let threads = backend.threads();
        let m = LlamaModel::load(file, backend)?;
        Ok(Model {
            inner: Arc::new(ModelInner {
                engine: ModelImpl::Cpu(Arc::new(m)),
                tokenizer,
                template,
                path,
                threads,
            }),
        })
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &Config {
        match &self.inner.engine {
            ModelImpl::Cpu(m) => &m.config,
            #[cfg(feature = "cuda")]
            ModelImpl::Cuda(m) => &m.config,
        }
    }

    /// The GGUF file the model was loaded from.
    pub fn gguf(&self) -> &GgufFile {
        match &self.inner.engine {
            ModelImpl::Cpu(m) => &m.file,
            #[cfg(feature = "cuda")]
            ModelImpl::Cuda(m) => &m.file,
        }
    }

    /// The file path, if it was loaded from one.
    pub fn path(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The tokenizer, or an error if the file carries none.
    pub fn tokenizer(&self) -> Result<&Tokenizer> {
        self.inner.tokenizer.as_ref().ok_or_else(|| {
            Error::MissingKey("tokenizer.ggml.model (this model has no tokenizer)".into())
        })
    }

    /// The chat template (the model's own, or ChatML).
    pub fn chat_template(&self) -> &ChatTemplate {
        &self.inner.template
    }

    /// Name of the backend the model runs on ("cpu").
    pub fn backend_name(&self) -> &'static str {
        match &self.inner.engine {
            ModelImpl::Cpu(_) => "cpu",
            #[cfg(feature = "cuda")]
            ModelImpl::Cuda(_) => "cuda",
        }
    }

    /// The kernel set in use ("avx512vnni", "avx2", "neon-dotprod", "exact", ...).
    pub fn kernel_name(&self) -> &'static str {
        match &self.inner.engine {
            ModelImpl::Cpu(m) => m.backend.kernel_name(),
            #[cfg(feature = "cuda")]
            ModelImpl::Cuda(_) => "nvrtc",
        }
    }

    /// Threads the CPU backend uses.
    pub fn threads(&self) -> usize {
        self.inner.threads
    }

    /// Bytes of tensor data (weights as stored).
    pub fn weight_bytes(&self) -> u64 {
        self.gguf().tensors().iter().map(|t| t.n_bytes).sum()
    }

    /// A new session (its own KV cache) over this model.
    pub fn new_session(&self, params: &SessionParams) -> Result<Session> {
        if params.n_batch == 0 {
            return Err(Error::BadHparam {
                key: "n_batch".into(),
                value: "0".into(),
                reason: "must be at least 1".into(),
            });
        }
        let inner = match &self.inner.engine {
            ModelImpl::Cpu(m) => SessionImpl::Cpu(session::Session::new(
                Arc::clone(m),
                params.n_ctx,
                params.kv_type,
            )?),
            #[cfg(feature = "cuda")]
            ModelImpl::Cuda(m) => SessionImpl::Cuda(session::Session::new(
                Arc::clone(m),
                params.n_ctx,
                params.kv_type,
            )?),
        };
        Ok(Session {
            inner,
            model: self.clone(),
            tokens: Vec::new(),
            n_batch: params.n_batch,
        })
    }
}

/// One sequence: a KV cache over a shared model, and the tokens in it.
pub struct Session {
    inner: SessionImpl,
    model: Model,
    tokens: Vec<u32>,
    n_batch: usize,
}

impl Session {
    /// Append `batch` to the sequence and return the requested logits. On
    /// error the session is unchanged.
    pub fn forward(&mut self, batch: &Batch) -> Result<Logits> {
        let l = match &mut self.inner {
            SessionImpl::Cpu(s) => s.forward(batch)?,
            #[cfg(feature = "cuda")]
            SessionImpl::Cuda(s) => s.forward(batch)?,
        };
        self.tokens.extend_from_slice(&batch.tokens);
        Ok(l)
    }

    /// Like `forward`, but writes the logits (`[outputs, n_vocab]`) into
    /// `out`, reusing its allocation.
    pub fn forward_into(&mut self, batch: &Batch, out: &mut Vec<f32>) -> Result<()> {
        match &mut self.inner {
            SessionImpl::Cpu(s) => s.forward_into(batch, out)?,
            #[cfg(feature = "cuda")]
            SessionImpl::Cuda(s) => s.forward_into(batch, out)?,
        }
        self.tokens.extend_from_slice(&batch.tokens);
        Ok(())
    }

    /// Keep only the first `len` tokens of the cache.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        match &mut self.inner {
            SessionImpl::Cpu(s) => s.truncate(len)?,
            #[cfg(feature = "cuda")]
            SessionImpl::Cuda(s) => s.truncate(len)?,
        }
        self.tokens.truncate(len);
        Ok(())
    }

    /// Empty the cache.
    pub fn clear(&mut self) {
        // Truncating to zero cannot fail.
        let _ = self.truncate(0);
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        self.tokens.len()
    }

    /// True when the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.tokens.is_empty()
    }

    /// Cache capacity in tokens.
    pub fn n_ctx(&self) -> usize {
        match &self.inner {
            SessionImpl::Cpu(s) => s.n_ctx(),
            #[cfg(feature = "cuda")]
            SessionImpl::Cuda(s) => s.n_ctx(),
        }
    }

    /// The tokens in the cache, in order.
    pub fn tokens(&self) -> &[u32] {
        &self.tokens
    }

    /// The model this session runs.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Most tokens per forward during prompt processing.
    pub fn n_batch(&self) -> usize {
        self.n_batch
    }

    /// Feed `tokens` in chunks of `n_batch` and return the logits of the
    /// last one. `should_stop` is asked between chunks; when it says stop,
    /// the tokens fed so far are rolled back and `Error::Cancelled` returned.
    pub fn feed(
        &mut self,
        tokens: &[u32],
        mut should_stop: impl FnMut() -> bool,
    ) -> Result<Vec<f32>> {
        if tokens.is_empty() {
            return Err(Error::InvalidBatch("nothing to feed".into()));
        }
        let start = self.len();
        if start + tokens.len() > self.n_ctx() {
            return Err(Error::ContextFull {
                position: start + tokens.len(),
                n_ctx: self.n_ctx(),
            });
        }
        let mut last = Vec::new();
        for chunk in tokens.chunks(self.n_batch) {
            if should_stop() {
                self.truncate(start)?;
                return Err(Error::Cancelled);
            }
            let pos = self.len() as u32;
            match self.forward(&Batch::new(chunk, pos)) {
                Ok(l) => last = l.as_slice().to_vec(),
                Err(e) => {
                    self.truncate(start)?;
                    return Err(e);
                }
            }
        }
        Ok(last)
    }
}
