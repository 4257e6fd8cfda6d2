//! The runtime's one error type.
//!
//! Every failure a caller can cause — a hostile GGUF, a model that does not
//! fit the architecture, a batch past the context — is a variant here that
//! names what was wrong and where. Nothing in the runtime panics on input;
//! a panic is a bug.

use std::path::PathBuf;

/// Shorthand for the runtime's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, with enough context to act on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    // ---- the GGUF container ------------------------------------------------
    /// The file ended before a field or a tensor's data.
    #[error("GGUF truncated: {what} needs {needed} bytes at offset {offset}, but only {available} remain (file incomplete or corrupt)")]
    Truncated {
        what: String,
        offset: u64,
        needed: u64,
        available: u64,
    },
    /// The first four bytes are not `GGUF`.
    #[error("not a GGUF file: magic bytes are {0:02x?}, expected \"GGUF\"")]
    BadMagic([u8; 4]),
    /// The version field looks byte-swapped: a big-endian file.
    #[error(
        "GGUF version field {0:#010x} looks byte-swapped: big-endian GGUF files are not supported"
    )]
    UnsupportedEndianness(u32),
    /// A GGUF version tern does not read.
    #[error("unsupported GGUF version {0} (tern reads versions 2 and 3)")]
    UnsupportedVersion(u32),
    /// A count in the header that the file cannot possibly hold.
    #[error("GGUF {what} count {count} is impossible: the file has room for at most {limit}")]
    CountTooLarge {
        what: &'static str,
        count: u64,
        limit: u64,
    },
    /// A string longer than the cap or the rest of the file.
    #[error("GGUF {what} at offset {offset} claims {len} bytes, over the limit of {limit}")]
    StringTooLong {
        what: String,
        offset: u64,
        len: u64,
        limit: u64,
    },
    /// A key, name or string value that is not UTF-8.
    #[error("GGUF {what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 { what: String, offset: u64 },
    /// An empty or otherwise unusable metadata key.
    #[error("GGUF metadata key at offset {offset} is invalid: {reason}")]
    BadKey { offset: u64, reason: String },
    /// The same metadata key twice.
    #[error("GGUF metadata key '{0}' appears more than once")]
    DuplicateKey(String),
    /// A value type id outside GGUF's 13 types.
    #[error("GGUF metadata key '{key}' has unknown value type {type_id}")]
    BadValueType { key: String, type_id: u32 },
    /// An array whose elements are arrays.
    #[error("GGUF metadata key '{key}' is an array of arrays, which tern does not accept")]
    NestedArray { key: String },
    /// An array with more elements than the cap or the file can hold.
    #[error("GGUF metadata key '{key}' claims {count} array elements, over the limit of {limit}")]
    ArrayTooLarge { key: String, count: u64, limit: u64 },
    /// A bool stored as a byte other than 0 or 1.
    #[error("GGUF metadata key '{key}' is a bool with byte value {value} (must be 0 or 1)")]
    InvalidBool { key: String, value: u8 },
    /// `general.alignment` of the wrong type or value.
    #[error("GGUF general.alignment is invalid: {0}")]
    BadAlignment(String),
    /// A tensor name that is empty, too long or not UTF-8.
    #[error("GGUF tensor name at offset {offset} is invalid: {reason}")]
    BadTensorName { offset: u64, reason: String },
    /// The same tensor name twice.
    #[error("GGUF tensor '{0}' appears more than once")]
    DuplicateTensor(String),
    /// More than four dimensions.
    #[error("GGUF tensor '{tensor}' has {n_dims} dimensions, at most 4 are allowed")]
    TooManyDims { tensor: String, n_dims: u32 },
    /// A dimension that is negative or otherwise unusable.
    #[error("GGUF tensor '{tensor}' has a bad shape: {reason}")]
    BadShape { tensor: String, reason: String },
    /// A size computation that would overflow.
    #[error("GGUF tensor '{tensor}': {reason} overflows")]
    SizeOverflow { tensor: String, reason: String },
    /// A tensor type id that GGML does not define (or removed).
    #[error("GGUF tensor '{tensor}' has unknown type id {id}")]
    UnknownType { tensor: String, id: u32 },
    /// A data offset that is unaligned or not where the previous tensor ends.
    #[error("GGUF tensor '{tensor}' has data offset {offset}, expected {expected} ({reason})")]
    BadOffset {
        tensor: String,
        offset: u64,
        expected: u64,
        reason: &'static str,
    },
    /// A tensor whose data runs past the end of the file.
    #[error("GGUF tensor '{tensor}' data ends at byte {end} but the file has {file_len} bytes: file truncated or incomplete")]
    TensorOutOfBounds {
        tensor: String,
        end: u64,
        file_len: u64,
    },
    /// One shard of a split model.
    #[error("this GGUF is shard {index} of a model split into {count} files; merge the shards (llama-gguf-split --merge) first")]
    ShardedModel { index: u64, count: u64 },

    // ---- metadata and model ------------------------------------------------
    /// A metadata key the model needs is absent.
    #[error("GGUF metadata key '{0}' is missing")]
    MissingKey(String),
    /// A metadata key of an unexpected type.
    #[error("GGUF metadata key '{key}' has type {got}, expected {expected}")]
    WrongKeyType {
        key: String,
        expected: &'static str,
        got: &'static str,
    },
    /// `general.architecture` names something tern cannot run.
    #[error("unknown architecture '{0}' (tern runs: llama, minicpm)")]
    UnknownArchitecture(String),
    /// A hyperparameter that is zero, inconsistent or absurd.
    #[error("bad hyperparameter {key} = {value}: {reason}")]
    BadHparam {
        key: String,
        value: String,
        reason: String,
    },
    /// The model's tensors do not fit its config; each problem on its own line.
    #[error("the model's tensors do not match its architecture:\n  {}", problems.join("\n  "))]
    BadModel { problems: Vec<String> },
    /// A tensor type tern has no kernels for (on this backend).
    #[error("tensor '{tensor}' has type {ty}, which the {backend} backend cannot compute with")]
    UnsupportedType {
        tensor: String,
        ty: crate::quants::GgmlType,
        backend: &'static str,
    },

    // ---- running -----------------------------------------------------------
    /// A batch that would write past the KV cache.
    #[error("context full: position {position} is past the context size {n_ctx}")]
    ContextFull { position: usize, n_ctx: usize },
    /// A malformed batch (empty, token out of vocabulary, mismatched lengths).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// An allocation that could not be made.
    #[error("out of memory allocating {bytes} bytes for {what}")]
    OutOfMemory { bytes: u64, what: String },
    /// The caller cancelled the operation; the session is as it was before it.
    #[error("cancelled")]
    Cancelled,
    /// The requested device cannot be used.
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    /// Logits that are not finite: weights or activations went bad.
    #[error("non-finite logits at batch index {index}: the model's weights or activations contain NaN or Inf")]
    NumericalError { index: usize },

    // ---- kernels -----------------------------------------------------------
    /// A buffer whose length does not fit the element type or its partner
    /// buffer (a row that is not whole blocks, bytes that do not match the
    /// element count).
    #[error("bad length for {what}: expected {expected}, got {got}")]
    BadLength {
        what: String,
        expected: u64,
        got: u64,
    },

    // ---- sampling ----------------------------------------------------------
    /// A sampler setting outside its domain (NaN temperature, top-p above 1,
    /// a non-positive repetition penalty, ...).
    #[error("bad sampler parameter {name} = {value}: {reason}")]
    BadSamplerParam {
        name: &'static str,
        value: String,
        reason: &'static str,
    },
    // ---- chat templates ----------------------------------------------------
    /// A chat template that does not compile, fails while rendering, or calls
    /// `raise_exception` (the message says which).
    #[error("bad chat template: {0}")]
    BadTemplate(String),
    /// A chat template that ran past a render budget (time, instructions,
    /// output size, recursion or a single value's size).
    #[error("chat template exceeded its budget: {0}")]
    TemplateBudgetExceeded(String),
    // ---- tokenizer ---------------------------------------------------------
    /// Tokenizer metadata that is missing, of the wrong type or inconsistent.
    #[error("bad tokenizer vocabulary: '{key}': {reason}")]
    BadVocab { key: String, reason: String },
    /// A `tokenizer.ggml.model` tern does not implement.
    #[error("unsupported tokenizer model '{0}' (tern supports: gpt2, llama)")]
    UnsupportedTokenizer(String),
    /// Text longer than the tokenizer accepts in one call.
    #[error("input too long: the tokenizer accepts at most {limit} bytes per call")]
    InputTooLong { limit: usize },
}
