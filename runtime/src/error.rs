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
        /// The file (or directory) being read or written; `<stream>` when
        /// writing to a caller's writer.
        path: PathBuf,
        /// The underlying I/O error.
        #[source]
        source: std::io::Error,
    },

    // ---- the GGUF container ------------------------------------------------
    /// The file ended before a field or a tensor's data.
    #[error("GGUF truncated: {what} needs {needed} bytes at offset {offset}, but only {available} remain (file incomplete or corrupt)")]
    Truncated {
        /// The field or tensor being read ("metadata key 'x' array count").
        what: String,
        /// Offset of the field from the start of the GGUF, in bytes.
        offset: u64,
        /// Bytes the field needs.
        needed: u64,
        /// Bytes left in the file from `offset`.
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
        /// Which count: `"tensor"` or `"metadata"`.
        what: &'static str,
        /// The count the header claims.
        count: u64,
        /// The most entries the rest of the file could hold.
        limit: u64,
    },
    /// A string longer than the cap or the rest of the file.
    #[error("GGUF {what} at offset {offset} claims {len} bytes, over the limit of {limit}")]
    StringTooLong {
        /// The string being read (a key, a value, a tensor name).
        what: String,
        /// Offset of the string's length field from the start of the GGUF.
        offset: u64,
        /// The length the file claims, in bytes.
        len: u64,
        /// The smaller of tern's string cap and the bytes left in the file.
        limit: u64,
    },
    /// A key, name or string value that is not UTF-8.
    #[error("GGUF {what} at offset {offset} is not valid UTF-8")]
    InvalidUtf8 {
        /// The string being read (a key, a value, a tensor name).
        what: String,
        /// Offset of the string's length field from the start of the GGUF.
        offset: u64,
    },
    /// An empty or otherwise unusable metadata key.
    #[error("GGUF metadata key at offset {offset} is invalid: {reason}")]
    BadKey {
        /// Offset of the key from the start of the GGUF.
        offset: u64,
        /// Why the key is unusable (empty, too long).
        reason: String,
    },
    /// The same metadata key twice.
    #[error("GGUF metadata key '{0}' appears more than once")]
    DuplicateKey(String),
    /// A value type id outside GGUF's 13 types.
    #[error("GGUF metadata key '{key}' has unknown value type {type_id}")]
    BadValueType {
        /// The metadata key whose value (or array element) type is bad.
        key: String,
        /// The type id found in the file.
        type_id: u32,
    },
    /// An array whose elements are arrays.
    #[error("GGUF metadata key '{key}' is an array of arrays, which tern does not accept")]
    NestedArray {
        /// The metadata key holding the nested array.
        key: String,
    },
    /// An array with more elements than the cap or the file can hold.
    #[error("GGUF metadata key '{key}' claims {count} array elements, over the limit of {limit}")]
    ArrayTooLarge {
        /// The metadata key holding the array.
        key: String,
        /// The element count the file claims.
        count: u64,
        /// The smaller of tern's array cap and the elements the rest of the
        /// file could hold.
        limit: u64,
    },
    /// A bool stored as a byte other than 0 or 1.
    #[error("GGUF metadata key '{key}' is a bool with byte value {value} (must be 0 or 1)")]
    InvalidBool {
        /// The metadata key holding the bool (or bool array).
        key: String,
        /// The byte found.
        value: u8,
    },
    /// `general.alignment` of the wrong type or value.
    #[error("GGUF general.alignment is invalid: {0}")]
    BadAlignment(String),
    /// A tensor name that is empty, too long or not UTF-8.
    #[error("GGUF tensor name at offset {offset} is invalid: {reason}")]
    BadTensorName {
        /// Offset of the name from the start of the GGUF.
        offset: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// The same tensor name twice.
    #[error("GGUF tensor '{0}' appears more than once")]
    DuplicateTensor(String),
    /// More than four dimensions.
    #[error("GGUF tensor '{tensor}' has {n_dims} dimensions, at most 4 are allowed")]
    TooManyDims {
        /// The tensor's name.
        tensor: String,
        /// The number of dimensions it claims.
        n_dims: u32,
    },
    /// A dimension that is negative or otherwise unusable.
    #[error("GGUF tensor '{tensor}' has a bad shape: {reason}")]
    BadShape {
        /// The tensor's name.
        tensor: String,
        /// What is wrong with the shape.
        reason: String,
    },
    /// A size computation that would overflow.
    #[error("GGUF tensor '{tensor}': {reason} overflows")]
    SizeOverflow {
        /// The tensor's name; empty when the overflow is not one tensor's
        /// (the data section's offset).
        tensor: String,
        /// The quantity that overflows ("data size in bytes").
        reason: String,
    },
    /// A tensor type id that GGML does not define (or removed).
    #[error("GGUF tensor '{tensor}' has unknown type id {id}")]
    UnknownType {
        /// The tensor's name.
        tensor: String,
        /// The type id found in the file.
        id: u32,
    },
    /// A data offset that is unaligned or not where the previous tensor ends.
    #[error("GGUF tensor '{tensor}' has data offset {offset}, expected {expected} ({reason})")]
    BadOffset {
        /// The tensor's name.
        tensor: String,
        /// The data offset in the file, relative to the data section.
        offset: u64,
        /// The offset tern expected: the previous tensor's end, aligned up.
        expected: u64,
        /// How the offset is wrong (unaligned, overlapping, leaving a gap).
        reason: &'static str,
    },
    /// A tensor whose data runs past the end of the file.
    #[error("GGUF tensor '{tensor}' data ends at byte {end} but the file has {file_len} bytes: file truncated or incomplete")]
    TensorOutOfBounds {
        /// The tensor's name.
        tensor: String,
        /// Where its data ends, in bytes from the start of the GGUF.
        end: u64,
        /// The GGUF's length in bytes.
        file_len: u64,
    },
    /// One shard of a split model.
    #[error("this GGUF is shard {index} of a model split into {count} files; merge the shards (llama-gguf-split --merge) first")]
    ShardedModel {
        /// This file's shard number (`split.no`, counted from 0).
        index: u64,
        /// The number of shards (`split.count`).
        count: u64,
    },

    // ---- metadata and model ------------------------------------------------
    /// A metadata key the model needs is absent.
    #[error("GGUF metadata key '{0}' is missing")]
    MissingKey(String),
    /// A metadata key of an unexpected type.
    #[error("GGUF metadata key '{key}' has type {got}, expected {expected}")]
    WrongKeyType {
        /// The metadata key.
        key: String,
        /// The type tern needs ("an unsigned integer").
        expected: &'static str,
        /// The type the file has.
        got: &'static str,
    },
    /// `general.architecture` names something tern cannot run.
    #[error("unknown architecture '{0}' (tern runs: llama, minicpm)")]
    UnknownArchitecture(String),
    /// A hyperparameter that is zero, inconsistent or absurd.
    #[error("bad hyperparameter {key} = {value}: {reason}")]
    BadHparam {
        /// The metadata key (or tensor) the value comes from.
        key: String,
        /// The value, as text.
        value: String,
        /// Why it is rejected.
        reason: String,
    },
    /// The model's tensors do not fit its config; each problem on its own line.
    #[error("the model's tensors do not match its architecture:\n  {}", problems.join("\n  "))]
    BadModel {
        /// Every problem found, one per missing or mis-shaped tensor.
        problems: Vec<String>,
    },
    /// A tensor type tern has no kernels for (on this backend).
    #[error("tensor '{tensor}' has type {ty}, which the {backend} backend cannot compute with")]
    UnsupportedType {
        /// The tensor's name.
        tensor: String,
        /// Its type.
        ty: crate::quants::GgmlType,
        /// The backend that cannot compute with it ("cpu").
        backend: &'static str,
    },

    // ---- running -----------------------------------------------------------
    /// A batch that would write past the KV cache.
    #[error("context full: position {position} is past the context size {n_ctx}")]
    ContextFull {
        /// The number of tokens the cache would have to hold.
        position: usize,
        /// The context size: the cache's capacity in tokens.
        n_ctx: usize,
    },
    /// A malformed batch (empty, token out of vocabulary, mismatched lengths).
    #[error("invalid batch: {0}")]
    InvalidBatch(String),
    /// An allocation that could not be made.
    #[error("out of memory allocating {bytes} bytes for {what}")]
    OutOfMemory {
        /// The size requested (`u64::MAX` when the size itself overflowed).
        bytes: u64,
        /// What the memory was for ("KV cache", "activation").
        what: String,
    },
    /// The caller cancelled the operation; the session is as it was before it.
    #[error("cancelled")]
    Cancelled,
    /// The requested device cannot be used.
    #[error("device unavailable: {0}")]
    DeviceUnavailable(String),
    /// A GPU call failed (driver or kernel error, or device memory exhausted
    /// while running); the message names the operation.
    #[error("GPU error in {op}: {msg}")]
    Gpu {
        /// The operation that failed ("matmul", "load kernels", ...).
        op: String,
        /// The driver's or compiler's message.
        msg: String,
    },
    /// Logits that are not finite: weights or activations went bad.
    #[error("non-finite logits at batch index {index}: the model's weights or activations contain NaN or Inf")]
    NumericalError {
        /// The row of the batch's logits that holds the bad value.
        index: usize,
    },

    // ---- kernels -----------------------------------------------------------
    /// A buffer whose length does not fit the element type or its partner
    /// buffer (a row that is not whole blocks, bytes that do not match the
    /// element count).
    #[error("bad length for {what}: expected {expected}, got {got}")]
    BadLength {
        /// The buffer whose length is wrong, and in what unit (bytes or
        /// elements).
        what: String,
        /// The length it should have.
        expected: u64,
        /// The length it has.
        got: u64,
    },

    // ---- sampling ----------------------------------------------------------
    /// A sampler setting outside its domain (NaN temperature, top-p above 1,
    /// a non-positive repetition penalty, ...).
    #[error("bad sampler parameter {name} = {value}: {reason}")]
    BadSamplerParam {
        /// The setting's name ("temperature", "top_p").
        name: &'static str,
        /// The value given, as text.
        value: String,
        /// The domain it must lie in.
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
    BadVocab {
        /// The tokenizer metadata key at fault.
        key: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A `tokenizer.ggml.model` tern does not implement.
    #[error("unsupported tokenizer model '{0}' (tern supports: gpt2, llama)")]
    UnsupportedTokenizer(String),
    /// Text longer than the tokenizer accepts in one call.
    #[error("input too long: the tokenizer accepts at most {limit} bytes per call")]
    InputTooLong {
        /// The most bytes one call accepts.
        limit: usize,
    },
}
