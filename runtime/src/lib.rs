//! tern-runtime: load GGUF models and run them.
//!
//! The crate owns GGUF reading and writing (`gguf`), tensor element types and
//! their reference kernels (`quants`), model configuration and the forward
//! pass (`model`), the backend trait and its CPU implementation (`backend`),
//! and sessions with their KV caches (`session`). Nothing here knows about
//! the quantizer, speculative decoding or the CLI; they build on this crate.
//!
//! ```no_run
//! use tern_runtime::{Batch, Model, ModelParams, SessionParams};
//! let model = Model::load("model.gguf", &ModelParams::default())?;
//! let mut session = model.new_session(&SessionParams { n_ctx: 512, ..Default::default() })?;
//! let logits = session.forward(&Batch::new(&[1, 504, 3458], 0))?;
//! let next = logits.row(0).unwrap().iter().enumerate()
//!     .max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i);
//! # Ok::<(), tern_runtime::Error>(())
//! ```

pub mod backend;
pub mod chat;
pub mod error;
pub mod gguf;
pub mod model;
pub mod quants;
pub mod sampling;
pub mod session;
pub mod tokenizer;

use std::path::Path;
use std::sync::Arc;

use backend::cpu::CpuBackend;
pub use backend::KvType;
pub use error::{Error, Result};
use gguf::GgufFile;
use model::{Config, LlamaModel};
pub use session::{Batch, Logits};

/// How to load a model.
#[derive(Clone, Debug, Default)]
pub struct ModelParams {
    /// CPU threads; `None` uses every available core.
    pub threads: Option<usize>,
}

/// How to open a session.
#[derive(Clone, Debug)]
pub struct SessionParams {
    /// KV cache capacity in tokens.
    pub n_ctx: usize,
    /// KV cache storage type.
    pub kv_type: KvType,
}

impl Default for SessionParams {
    fn default() -> SessionParams {
        SessionParams {
            n_ctx: 4096,
            kv_type: KvType::default(),
        }
    }
}

// One variant per backend; model code stays generic, only this boundary
// names concrete backends.
enum ModelImpl {
    Cpu(Arc<LlamaModel<CpuBackend>>),
}

enum SessionImpl {
    Cpu(session::Session<CpuBackend>),
}

/// A loaded model. Cheap to clone; sessions share its weights.
#[derive(Clone)]
pub struct Model {
    inner: Arc<ModelImpl>,
}

impl Model {
    /// Map, validate and load a GGUF model.
    pub fn load(path: impl AsRef<Path>, params: &ModelParams) -> Result<Model> {
        Model::from_gguf(GgufFile::open(path)?, params)
    }

    /// Load a model from an already parsed GGUF (mapped or in memory).
    pub fn from_gguf(file: GgufFile, params: &ModelParams) -> Result<Model> {
        let file = Arc::new(file);
        let backend = match params.threads {
            Some(t) => CpuBackend::new(t),
            None => CpuBackend::default(),
        };
        let m = LlamaModel::load(file, backend)?;
        Ok(Model {
            inner: Arc::new(ModelImpl::Cpu(Arc::new(m))),
        })
    }

    /// The model's hyperparameters.
    pub fn config(&self) -> &Config {
        match &*self.inner {
            ModelImpl::Cpu(m) => &m.config,
        }
    }

    /// The GGUF file the model was loaded from.
    pub fn gguf(&self) -> &GgufFile {
        match &*self.inner {
            ModelImpl::Cpu(m) => &m.file,
        }
    }

    /// A new session (its own KV cache) over this model.
    pub fn new_session(&self, params: &SessionParams) -> Result<Session> {
        let inner = match &*self.inner {
            ModelImpl::Cpu(m) => SessionImpl::Cpu(session::Session::new(
                Arc::clone(m),
                params.n_ctx,
                params.kv_type,
            )?),
        };
        Ok(Session { inner })
    }
}

/// One sequence: a KV cache over a shared model.
pub struct Session {
    inner: SessionImpl,
}

impl Session {
    /// Append `batch` to the sequence and return the requested logits. On
    /// error the session is unchanged.
    pub fn forward(&mut self, batch: &Batch) -> Result<Logits> {
        match &mut self.inner {
            SessionImpl::Cpu(s) => s.forward(batch),
        }
    }

    /// Keep only the first `len` tokens of the cache.
    pub fn truncate(&mut self, len: usize) -> Result<()> {
        match &mut self.inner {
            SessionImpl::Cpu(s) => s.truncate(len),
        }
    }

    /// Tokens in the cache.
    pub fn len(&self) -> usize {
        match &self.inner {
            SessionImpl::Cpu(s) => s.len(),
        }
    }

    /// True when the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Cache capacity in tokens.
    pub fn n_ctx(&self) -> usize {
        match &self.inner {
            SessionImpl::Cpu(s) => s.n_ctx(),
        }
    }
}
