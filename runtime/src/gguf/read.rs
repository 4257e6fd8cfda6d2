//! GGUF reader: maps a file (or takes a byte buffer), parses and validates
//! the whole header in one pass, and hands out zero-copy tensor data slices.
//!
//! Everything that comes from the file is hostile until checked. The rules
//! follow `shared/research/reliability.md` §1.2/§6.1 (classes G1–G20):
//!
//! - every read is bounds-checked against the bytes that remain and fails
//!   with [`Error::Truncated`] naming the field;
//! - no allocation is sized from a file value that has not first been proven
//!   to fit in the remaining bytes (counts are multiplied by the *minimum*
//!   encoded size of an element and rejected if the file cannot hold them);
//!   collections whose in-memory entries are larger than their encoding
//!   reserve only a small head start and grow with entries actually parsed,
//!   and reserving uses `try_reserve`, so an allocation failure is an `Err`;
//! - every size, offset and padding computation is checked arithmetic, and
//!   byte sizes and offsets are additionally capped at `i64::MAX` because
//!   GGML and file offsets are signed 64-bit (this is what turns the
//!   CVE-2025-53630 / CVE-2026-27940 shapes into [`Error::SizeOverflow`]);
//! - there is no recursion: an array's element type may not be an array;
//! - tensor data is never touched while parsing, so opening a huge file costs
//!   only its header.
//!
//! Tensor offsets are held to llama.cpp's strict rule: each tensor's offset
//! must equal the sum of the previous tensors' sizes, each padded to the
//! alignment. That makes data ordered, aligned, contiguous and
//! non-overlapping, and it is what every known writer (gguf-py, llama.cpp,
//! tern) produces.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use super::{Array, Value, ValueType};
use crate::error::{Error, Result};
use crate::quants::GgmlType;

/// The four bytes every GGUF file starts with.
pub const GGUF_MAGIC: [u8; 4] = *b"GGUF";
/// Data alignment when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Largest `general.alignment` accepted (1 MiB, as llama.cpp PR #24997 proposes).
pub const MAX_ALIGNMENT: u64 = 1 << 20;
/// Longest string (key, value or tensor name) before other rules apply: 1 GiB, as llama.cpp.
pub const MAX_STRING_LEN: u64 = 1 << 30;
/// Most elements in one metadata array: 1 Gi, as llama.cpp.
pub const MAX_ARRAY_LEN: u64 = 1 << 30;
/// Longest metadata key, in bytes (the GGUF spec's limit).
pub const MAX_KEY_LEN: u64 = 65_535;
/// Longest tensor name, in bytes (GGML_MAX_NAME is 64 including the NUL).
pub const MAX_TENSOR_NAME_LEN: u64 = 63;
/// Most dimensions a tensor may have (GGML_MAX_DIMS).
pub const MAX_DIMS: u32 = 4;

/// The key that sets the data alignment.
pub(crate) const ALIGNMENT_KEY: &str = "general.alignment";

// Minimum encoded sizes, used to bound counts before allocating.
// A KV is at least: key length (8) + one key byte + value type (4) + a one-byte value.
const MIN_KV_BYTES: u64 = 8 + 1 + 4 + 1;
// A tensor info is at least: name length (8) + one name byte + n_dims (4)
// + no dims (n_dims 0 is allowed) + type (4) + offset (8).
const MIN_TENSOR_INFO_BYTES: u64 = 8 + 1 + 4 + 4 + 8;
// Most entries reserved up front from a count the file claims; see `parse`.
const PRERESERVE_MAX: u64 = 4096;
// Largest byte size or offset accepted: GGML sizes and file offsets are i64.
const MAX_BYTES: u64 = i64::MAX as u64;

/// One tensor's header entry, validated against the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name (at most 63 bytes of UTF-8).
    pub name: String,
    /// Dimensions in GGML order: `dims[0]` is the contiguous one. 1 to 4 entries.
    ///
    /// A tensor stored with `n_dims == 0` is a scalar and reads as `[1]`.
    /// A zero dimension is allowed: the tensor is empty (`n_bytes == 0`).
    pub dims: Vec<u64>,
    /// Element type.
    pub ty: GgmlType,
    /// Offset of the data from the start of the data section.
    pub offset: u64,
    /// Product of `dims`.
    pub n_elements: u64,
    /// Bytes of data (unpadded).
    pub n_bytes: u64,
}

/// Where the bytes live. Both variants are `Send + Sync`.
enum Backing {
    Mmap(Mmap),
    Owned(Vec<u8>),
}

impl Backing {
    fn bytes(&self) -> &[u8] {
        match self {
            Backing::Mmap(m) => m,
            Backing::Owned(v) => v,
        }
    }
}

/// A parsed, validated GGUF file whose tensor data stays in the map.
///
/// Construction validates every count, string, value, shape, type, alignment
/// and offset; after that, [`GgufFile::tensor_data`] is a plain slice of the
/// mapped file with no copy. A `GgufFile` may also describe a GGUF embedded
/// at an offset inside a larger buffer ([`GgufFile::from_bytes_at`],
/// [`GgufFile::open_at`]); all offsets it reports are then relative to the
/// GGUF's first byte, which is also what alignment padding is measured from.
pub struct GgufFile {
    backing: Backing,
    /// Where the GGUF starts inside `backing`.
    start: usize,
    path: Option<PathBuf>,
    header: Header,
}

/// Everything parsed from the header.
struct Header {
    version: u32,
    alignment: u64,
    metadata: Vec<(String, Value)>,
    kv_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
    /// Offset of the data section from the GGUF start.
    data_offset: u64,
    /// Bytes from the GGUF start to the end of the buffer.
    len: u64,
}

impl GgufFile {
    /// Map and parse a file.
    ///
    /// The map is read-only. As memmap2 documents, changing or truncating the
    /// file while it is mapped is undefined behaviour (in practice SIGBUS on
    /// access); tern assumes model files are not modified while loaded.
    pub fn open(path: impl AsRef<Path>) -> Result<GgufFile> {
        GgufFile::open_at(path, 0)
    }

    /// Map a file and parse the GGUF that starts `start` bytes into it.
    pub fn open_at(path: impl AsRef<Path>, start: u64) -> Result<GgufFile> {
        let path = path.as_ref();
        let io = |source| Error::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        // Mapping an empty file is an error on some platforms; an empty
        // buffer parses to the same `Truncated` error.
        let backing = if len == 0 {
            Backing::Owned(Vec::new())
        } else {
            // SAFETY: the map is read-only and we never hand out references
            // that outlive it. The remaining hazard, another process changing
            // the file while it is mapped, is documented on `open` and cannot
            // be excluded by any library (reliability.md §1.3 "mmap").
            Backing::Mmap(unsafe { Mmap::map(&file) }.map_err(io)?)
        };
        let mut f = GgufFile::from_backing(backing, start)?;
        f.path = Some(path.to_path_buf());
        Ok(f)
    }

    /// Parse bytes already in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GgufFile> {
        GgufFile::from_backing(Backing::Owned(bytes), 0)
    }

    /// Parse the GGUF that starts `start` bytes into `bytes` (for a GGUF
    /// embedded in a larger blob). Padding is measured from `start`.
    pub fn from_bytes_at(bytes: Vec<u8>, start: u64) -> Result<GgufFile> {
        GgufFile::from_backing(Backing::Owned(bytes), start)
    }

    fn from_backing(backing: Backing, start: u64) -> Result<GgufFile> {
        let all = backing.bytes();
        let start_usize = usize::try_from(start)
            .ok()
            .filter(|&s| s <= all.len())
            .ok_or_else(|| Error::Truncated {
                what: "GGUF start offset".to_string(),
                offset: 0,
                needed: start,
                available: all.len() as u64,
            })?;
        let gguf = all.get(start_usize..).unwrap_or_default();
        let header = parse(gguf)?;
        Ok(GgufFile {
            backing,
            start: start_usize,
            path: None,
            header,
        })
    }

    /// The path the file was opened from, if it was opened from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.header.version
    }

    /// The data alignment (`general.alignment`, or 32).
    pub fn alignment(&self) -> u64 {
        self.header.alignment
    }

    /// Where the tensor data section starts, from the GGUF's first byte.
    pub fn data_offset(&self) -> u64 {
        self.header.data_offset
    }

    /// Bytes from the GGUF's first byte to the end of the file or buffer.
    pub fn file_len(&self) -> u64 {
        self.header.len
    }

    /// Metadata in file order.
    pub fn metadata(&self) -> &[(String, Value)] {
        &self.header.metadata
    }

    /// One metadata value.
    pub fn get(&self, key: &str) -> Option<&Value> {
        let i = *self.header.kv_index.get(key)?;
        self.header.metadata.get(i).map(|(_, v)| v)
    }

    /// Tensor infos in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.header.tensors
    }

    /// One tensor info by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        let i = *self.header.tensor_index.get(name)?;
        self.header.tensors.get(i)
    }

    /// A tensor's bytes, zero-copy.
    ///
    /// For a `TensorInfo` from this file the range was proven to lie in the
    /// file at open time. A `TensorInfo` made up by the caller whose range
    /// does not fit gets an empty slice rather than a panic.
    pub fn tensor_data(&self, t: &TensorInfo) -> &[u8] {
        self.data_range(t)
            .and_then(|(s, e)| self.backing.bytes().get(s..e))
            .unwrap_or_default()
    }

    fn data_range(&self, t: &TensorInfo) -> Option<(usize, usize)> {
        let begin = (self.start as u64)
            .checked_add(self.header.data_offset)?
            .checked_add(t.offset)?;
        let end = begin.checked_add(t.n_bytes)?;
        Some((usize::try_from(begin).ok()?, usize::try_from(end).ok()?))
    }
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("alignment", &self.header.alignment)
            .field("n_kv", &self.header.metadata.len())
            .field("n_tensors", &self.header.tensors.len())
            .field("data_offset", &self.header.data_offset)
            .field("len", &self.header.len)
            .finish()
    }
}

/// A bounds-checked little-endian cursor over the GGUF bytes.
///
/// `pos <= buf.len()` always holds: `pos` only advances by the length of a
/// slice that `get` proved to exist.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn offset(&self) -> u64 {
        self.pos as u64
    }

    fn remaining(&self) -> u64 {
        self.buf.len().saturating_sub(self.pos) as u64
    }

    /// Take `n` bytes or fail naming the field (`what` is only built on error).
    fn take(&mut self, n: u64, what: impl FnOnce() -> String) -> Result<&'a [u8]> {
        let slice = usize::try_from(n)
            .ok()
            .and_then(|n| self.buf.get(self.pos..)?.get(..n));
        match slice {
            Some(s) => {
                self.pos += s.len();
                Ok(s)
            }
            None => Err(Error::Truncated {
                what: what(),
                offset: self.offset(),
                needed: n,
                available: self.remaining(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: impl FnOnce() -> String) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: impl FnOnce() -> String) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: impl FnOnce() -> String) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Read a string's length and bytes. The length must fit the 1 GiB cap
    /// and the rest of the file before anything is sliced.
    fn str_bytes(&mut self, what: &dyn Fn() -> String) -> Result<(&'a [u8], u64)> {
        let at = self.offset();
        let len = self.u64(|| format!("{} length", what()))?;
        let limit = MAX_STRING_LEN.min(self.remaining());
        if len > limit {
            return Err(Error::StringTooLong {
                what: what(),
                offset: at,
                len,
                limit,
            });
        }
        Ok((self.take(len, what)?, at))
    }

    /// A string that must be UTF-8.
    fn string(&mut self, what: &dyn Fn() -> String) -> Result<String> {
        let (bytes, at) = self.str_bytes(what)?;
        utf8(bytes, at, what)
    }
}

fn utf8(bytes: &[u8], at: u64, what: &dyn Fn() -> String) -> Result<String> {
    match std::str::from_utf8(bytes) {
        Ok(s) => Ok(s.to_owned()),
        Err(_) => Err(Error::InvalidUtf8 {
            what: what(),
            offset: at,
        }),
    }
}

fn oom(bytes: u64, what: impl Into<String>) -> Error {
    Error::OutOfMemory {
        bytes,
        what: what.into(),
    }
}

/// `x` rounded up to a multiple of `align` (a power of two), or `None` on
/// overflow: the check GGML_PAD lacks.
pub(crate) fn align_up(x: u64, align: u64) -> Option<u64> {
    let mask = align.checked_sub(1)?;
    Some(x.checked_add(mask)? & !mask)
}

/// Parse and validate a whole GGUF header. `buf` starts at the GGUF's first
/// byte and runs to the end of the file.
fn parse(buf: &[u8]) -> Result<Header> {
    let mut c = Cursor { buf, pos: 0 };
    let len = buf.len() as u64;

    // ---- header ------------------------------------------------------------
    let magic: [u8; 4] = c.array(|| "magic".to_string())?;
    if magic != GGUF_MAGIC {
        return Err(Error::BadMagic(magic));
    }
    let version = c.u32(|| "version".to_string())?;
    if version == 0 {
        return Err(Error::UnsupportedVersion(version));
    }
    // A big-endian writer stores 3 as 0x03000000: the low half is zero.
    // No real version will reach 65536, so this is unambiguous.
    if version & 0xFFFF == 0 {
        return Err(Error::UnsupportedEndianness(version));
    }
    // Version 1 used 32-bit counts and lengths; nothing current writes it.
    if !(2..=3).contains(&version) {
        return Err(Error::UnsupportedVersion(version));
    }
    let n_tensors = c.u64(|| "tensor count".to_string())?;
    let n_kv = c.u64(|| "metadata count".to_string())?;

    // Both counts must be encodable in what is left before any allocation
    // is sized from them.
    let rest = c.remaining();
    let tensor_limit = rest / MIN_TENSOR_INFO_BYTES;
    if n_tensors > tensor_limit {
        return Err(Error::CountTooLarge {
            what: "tensor",
            count: n_tensors,
            limit: tensor_limit,
        });
    }
    // Cannot underflow: n_tensors * MIN <= rest by the check above.
    let kv_limit = (rest - n_tensors * MIN_TENSOR_INFO_BYTES) / MIN_KV_BYTES;
    if n_kv > kv_limit {
        return Err(Error::CountTooLarge {
            what: "metadata",
            count: n_kv,
            limit: kv_limit,
        });
    }

    // ---- metadata ----------------------------------------------------------
    let mut metadata: Vec<(String, Value)> = Vec::new();
    let mut kv_index: HashMap<String, usize> = HashMap::new();
    // n_kv <= file bytes / 14, but an entry in memory is several times its
    // minimum encoding (and a hash map touches its buckets when it
    // allocates), so only a small head start is reserved from the claimed
    // count; beyond that the collections grow with entries actually parsed.
    let head_start = usize::try_from(n_kv.min(PRERESERVE_MAX)).unwrap_or(0);
    metadata
        .try_reserve_exact(head_start)
        .map_err(|_| oom(n_kv, "metadata entries"))?;
    kv_index
        .try_reserve(head_start)
        .map_err(|_| oom(n_kv, "metadata index"))?;

    for i in 0..n_kv {
        let key_what = || format!("metadata key {i}");
        let (key_bytes, key_at) = c.str_bytes(&key_what)?;
        if key_bytes.is_empty() {
            return Err(Error::BadKey {
                offset: key_at,
                reason: format!("metadata key {i} is empty"),
            });
        }
        if key_bytes.len() as u64 > MAX_KEY_LEN {
            return Err(Error::BadKey {
                offset: key_at,
                reason: format!(
                    "metadata key {i} is {} bytes, over the limit of {MAX_KEY_LEN}",
                    key_bytes.len()
                ),
            });
        }
        let key = utf8(key_bytes, key_at, &key_what)?;
        if kv_index.contains_key(&key) {
            return Err(Error::DuplicateKey(key));
        }
        let type_id = c.u32(|| format!("metadata key '{key}' value type"))?;
        let ty = ValueType::from_id(type_id).ok_or_else(|| Error::BadValueType {
            key: key.clone(),
            type_id,
        })?;
        let value = if ty == ValueType::Array {
            read_array(&mut c, &key)?
        } else {
            read_scalar(&mut c, ty, &key, &|| format!("metadata key '{key}' value"))?
        };
        kv_index.insert(key.clone(), metadata.len());
        metadata.push((key, value));
    }

    let get = |k: &str| {
        kv_index
            .get(k)
            .and_then(|&i| metadata.get(i))
            .map(|kv| &kv.1)
    };

    let alignment = match get(ALIGNMENT_KEY) {
        None => DEFAULT_ALIGNMENT,
        Some(v) => check_alignment(v)?,
    };

    // A shard alone is not a model; say so instead of failing later on a
    // missing tensor. Any integer type is accepted because writers differ
    // (gguf-py writes u16).
    if let Some(count) = get("split.count").and_then(Value::as_u64) {
        if count > 1 {
            let index = get("split.no").and_then(Value::as_u64).unwrap_or(0);
            return Err(Error::ShardedModel { index, count });
        }
    }

    // ---- tensor infos ------------------------------------------------------
    // As for the metadata: a head start, then growth with real entries.
    let head_start = usize::try_from(n_tensors.min(PRERESERVE_MAX)).unwrap_or(0);
    let mut tensors: Vec<TensorInfo> = Vec::new();
    let mut tensor_index: HashMap<String, usize> = HashMap::new();
    tensors
        .try_reserve_exact(head_start)
        .map_err(|_| oom(n_tensors, "tensor infos"))?;
    tensor_index
        .try_reserve(head_start)
        .map_err(|_| oom(n_tensors, "tensor index"))?;

    // Where the next tensor's data must start, relative to the data section.
    let mut expected_offset: u64 = 0;
    for i in 0..n_tensors {
        let t = read_tensor_info(&mut c, i, alignment, expected_offset)?;
        if tensor_index.contains_key(&t.name) {
            return Err(Error::DuplicateTensor(t.name));
        }
        // Checked in read_tensor_info: offset == expected, padded fits.
        expected_offset = next_offset(&t, alignment)?;
        tensor_index.insert(t.name.clone(), tensors.len());
        tensors.push(t);
    }

    // ---- data section ------------------------------------------------------
    let infos_end = c.offset();
    let data_offset = align_up(infos_end, alignment)
        .filter(|&d| d <= MAX_BYTES)
        .ok_or_else(|| Error::SizeOverflow {
            tensor: String::new(),
            reason: "data section offset".to_string(),
        })?;
    // Every tensor must lie wholly inside the file: this is what a truncated
    // download hits (llama.cpp #6774, Ollama CVE-2026-7482). Offsets are
    // increasing, but checking each one names the first tensor that is cut.
    for t in &tensors {
        let end = data_offset
            .checked_add(t.offset)
            .and_then(|b| b.checked_add(t.n_bytes))
            .ok_or_else(|| Error::SizeOverflow {
                tensor: t.name.clone(),
                reason: "data end offset".to_string(),
            })?;
        if end > len {
            return Err(Error::TensorOutOfBounds {
                tensor: t.name.clone(),
                end,
                file_len: len,
            });
        }
    }

    Ok(Header {
        version,
        alignment,
        metadata,
        kv_index,
        tensors,
        tensor_index,
        data_offset,
        len,
    })
}

/// Validate `general.alignment`: u32, a non-zero power of two, at most 1 MiB.
pub(crate) fn check_alignment(v: &Value) -> Result<u64> {
    let a = match *v {
        Value::U32(a) => u64::from(a),
        _ => {
            return Err(Error::BadAlignment(format!(
                "stored as {}, must be u32",
                v.value_type().name()
            )))
        }
    };
    if a == 0 || !a.is_power_of_two() {
        return Err(Error::BadAlignment(format!(
            "{a} is not a non-zero power of two"
        )));
    }
    if a > MAX_ALIGNMENT {
        return Err(Error::BadAlignment(format!(
            "{a} is over the limit of {MAX_ALIGNMENT}"
        )));
    }
    Ok(a)
}

/// Read one scalar (non-array) value of type `ty`.
fn read_scalar(
    c: &mut Cursor<'_>,
    ty: ValueType,
    key: &str,
    what: &dyn Fn() -> String,
) -> Result<Value> {
    Ok(match ty {
        ValueType::U8 => Value::U8(u8::from_le_bytes(c.array(what)?)),
        ValueType::I8 => Value::I8(i8::from_le_bytes(c.array(what)?)),
        ValueType::U16 => Value::U16(u16::from_le_bytes(c.array(what)?)),
        ValueType::I16 => Value::I16(i16::from_le_bytes(c.array(what)?)),
        ValueType::U32 => Value::U32(u32::from_le_bytes(c.array(what)?)),
        ValueType::I32 => Value::I32(i32::from_le_bytes(c.array(what)?)),
        ValueType::F32 => Value::F32(f32::from_le_bytes(c.array(what)?)),
        ValueType::U64 => Value::U64(u64::from_le_bytes(c.array(what)?)),
        ValueType::I64 => Value::I64(i64::from_le_bytes(c.array(what)?)),
        ValueType::F64 => Value::F64(f64::from_le_bytes(c.array(what)?)),
        ValueType::Bool => {
            let [b] = c.array(what)?;
            Value::Bool(bool_byte(b, key)?)
        }
        ValueType::String => Value::String(c.string(what)?),
        // The caller routes arrays to read_array; reaching here would be a
        // bug, but it must still not panic.
        ValueType::Array => {
            return Err(Error::NestedArray {
                key: key.to_owned(),
            })
        }
    })
}

/// The spec says a bool byte other than 0/1 makes the file invalid; tern
/// follows the spec rather than llama.cpp's "non-zero is true".
fn bool_byte(b: u8, key: &str) -> Result<bool> {
    match b {
        0 => Ok(false),
        1 => Ok(true),
        value => Err(Error::InvalidBool {
            key: key.to_owned(),
            value,
        }),
    }
}

/// Bytes one element of `ty` takes at least (strings: their length field).
fn min_elem_size(ty: ValueType) -> u64 {
    match ty {
        ValueType::U8 | ValueType::I8 | ValueType::Bool => 1,
        ValueType::U16 | ValueType::I16 => 2,
        ValueType::U32 | ValueType::I32 | ValueType::F32 => 4,
        ValueType::U64 | ValueType::I64 | ValueType::F64 | ValueType::String => 8,
        // Never used: nested arrays are rejected before sizing.
        ValueType::Array => 12,
    }
}

/// Read an array value (its element type and count follow the type id).
/// Elements are scalars or strings; an array element type is rejected, so
/// there is no recursion.
fn read_array(c: &mut Cursor<'_>, key: &str) -> Result<Value> {
    let type_id = c.u32(|| format!("metadata key '{key}' array element type"))?;
    let ty = ValueType::from_id(type_id).ok_or_else(|| Error::BadValueType {
        key: key.to_owned(),
        type_id,
    })?;
    if ty == ValueType::Array {
        return Err(Error::NestedArray {
            key: key.to_owned(),
        });
    }
    let count = c.u64(|| format!("metadata key '{key}' array count"))?;
    let limit = MAX_ARRAY_LEN.min(c.remaining() / min_elem_size(ty));
    if count > limit {
        return Err(Error::ArrayTooLarge {
            key: key.to_owned(),
            count,
            limit,
        });
    }
    // count <= remaining bytes / element size, so both the byte length and
    // the Vec are bounded by the file.
    let n = usize::try_from(count).map_err(|_| oom(count, format!("array '{key}'")))?;
    let what = || format!("metadata key '{key}' array data");

    fn pod<T, const N: usize>(
        c: &mut Cursor<'_>,
        n: usize,
        key: &str,
        what: &dyn Fn() -> String,
        conv: fn([u8; N]) -> T,
    ) -> Result<Vec<T>> {
        let bytes = c.take((n as u64).saturating_mul(N as u64), what)?;
        let mut v = Vec::new();
        v.try_reserve_exact(n)
            .map_err(|_| oom(bytes.len() as u64, format!("array '{key}'")))?;
        v.extend(
            bytes
                .chunks_exact(N)
                .filter_map(|ch| <[u8; N]>::try_from(ch).ok())
                .map(conv),
        );
        Ok(v)
    }

    let array = match ty {
        ValueType::U8 => Array::U8(pod(c, n, key, &what, u8::from_le_bytes)?),
        ValueType::I8 => Array::I8(pod(c, n, key, &what, i8::from_le_bytes)?),
        ValueType::U16 => Array::U16(pod(c, n, key, &what, u16::from_le_bytes)?),
        ValueType::I16 => Array::I16(pod(c, n, key, &what, i16::from_le_bytes)?),
        ValueType::U32 => Array::U32(pod(c, n, key, &what, u32::from_le_bytes)?),
        ValueType::I32 => Array::I32(pod(c, n, key, &what, i32::from_le_bytes)?),
        ValueType::F32 => Array::F32(pod(c, n, key, &what, f32::from_le_bytes)?),
        ValueType::U64 => Array::U64(pod(c, n, key, &what, u64::from_le_bytes)?),
        ValueType::I64 => Array::I64(pod(c, n, key, &what, i64::from_le_bytes)?),
        ValueType::F64 => Array::F64(pod(c, n, key, &what, f64::from_le_bytes)?),
        ValueType::Bool => {
            let bytes = c.take(count, what)?;
            let mut v = Vec::new();
            v.try_reserve_exact(n)
                .map_err(|_| oom(count, format!("array '{key}'")))?;
            for &b in bytes {
                v.push(bool_byte(b, key)?);
            }
            Array::Bool(v)
        }
        ValueType::String => {
            // A String is 24 bytes for at least 8 of file: reserve a head
            // start only and grow with the strings actually read.
            let mut v: Vec<String> = Vec::new();
            v.try_reserve_exact(n.min(PRERESERVE_MAX as usize))
                .map_err(|_| oom(count, format!("array '{key}'")))?;
            for j in 0..count {
                v.push(c.string(&|| format!("metadata key '{key}' element {j}"))?);
            }
            Array::String(v)
        }
        ValueType::Array => {
            return Err(Error::NestedArray {
                key: key.to_owned(),
            })
        }
    };
    Ok(Value::Array(array))
}

/// Where the tensor after `t` must start: its offset plus its padded size.
fn next_offset(t: &TensorInfo, alignment: u64) -> Result<u64> {
    let overflow = |reason: &str| Error::SizeOverflow {
        tensor: t.name.clone(),
        reason: reason.to_string(),
    };
    // Checking the padded size on its own catches the GGML_PAD wrap
    // (`SIZE_MAX-3` padding to 0) before it can reach the running total.
    let padded = align_up(t.n_bytes, alignment)
        .filter(|&p| p <= MAX_BYTES)
        .ok_or_else(|| overflow("data size padded to the alignment"))?;
    t.offset
        .checked_add(padded)
        .filter(|&e| e <= MAX_BYTES)
        .ok_or_else(|| overflow("running total of tensor data sizes"))
}

/// Read and validate tensor info `i`. `expected` is where its data must
/// start (the running sum of the previous tensors' padded sizes).
fn read_tensor_info(
    c: &mut Cursor<'_>,
    i: u64,
    alignment: u64,
    expected: u64,
) -> Result<TensorInfo> {
    let name_what = || format!("tensor {i} name");
    let (name_bytes, name_at) = c.str_bytes(&name_what)?;
    if name_bytes.is_empty() {
        return Err(Error::BadTensorName {
            offset: name_at,
            reason: format!("tensor {i} has an empty name"),
        });
    }
    if name_bytes.len() as u64 > MAX_TENSOR_NAME_LEN {
        return Err(Error::BadTensorName {
            offset: name_at,
            reason: format!(
                "tensor {i} name '{}' is {} bytes, over the limit of {MAX_TENSOR_NAME_LEN}",
                String::from_utf8_lossy(name_bytes),
                name_bytes.len()
            ),
        });
    }
    let name = match std::str::from_utf8(name_bytes) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            return Err(Error::BadTensorName {
                offset: name_at,
                reason: format!(
                    "tensor {i} name '{}' is not valid UTF-8",
                    String::from_utf8_lossy(name_bytes)
                ),
            })
        }
    };

    // n_dims is checked before any dimension is read (the ne[4] overflow
    // class: CVE-2024-21802, whisper.cpp #3787).
    let n_dims = c.u32(|| format!("tensor '{name}' n_dims"))?;
    if n_dims > MAX_DIMS {
        return Err(Error::TooManyDims {
            tensor: name,
            n_dims,
        });
    }
    let bad_shape = |reason: String| Error::BadShape {
        tensor: name.clone(),
        reason,
    };
    let overflow = |reason: &str| Error::SizeOverflow {
        tensor: name.clone(),
        reason: reason.to_string(),
    };
    // n_dims <= 4, so this allocation is bounded by a constant.
    let mut dims: Vec<u64> = Vec::with_capacity(MAX_DIMS as usize);
    for _ in 0..n_dims {
        let d = c.u64(|| format!("tensor '{name}' dims"))?;
        if d > MAX_BYTES {
            return Err(bad_shape(format!(
                "dimension {} is {} (negative as i64)",
                dims.len(),
                d as i64
            )));
        }
        dims.push(d);
    }
    // A zero-dimensional tensor is a scalar: one element.
    if dims.is_empty() {
        dims.push(1);
    }
    let mut n_elements: u64 = 1;
    for &d in &dims {
        n_elements = n_elements
            .checked_mul(d)
            .filter(|&n| n <= MAX_BYTES)
            .ok_or_else(|| overflow("element count"))?;
    }

    let type_id = c.u32(|| format!("tensor '{name}' type"))?;
    let ty = GgmlType::from_id(type_id).ok_or_else(|| Error::UnknownType {
        tensor: name.clone(),
        id: type_id,
    })?;
    let block = ty.block_size();
    let d0 = dims.first().copied().unwrap_or(1);
    if d0 % block != 0 {
        return Err(bad_shape(format!(
            "dims[0] = {d0} is not a multiple of the {} block size {block}",
            ty.name()
        )));
    }
    // d0 is a multiple of block, so n_elements is too; block is never 0.
    let n_bytes = (n_elements / block)
        .checked_mul(ty.type_size())
        .filter(|&b| b <= MAX_BYTES)
        .ok_or_else(|| overflow("data size in bytes"))?;

    let offset = c.u64(|| format!("tensor '{name}' offset"))?;
    if offset != expected {
        let reason = if offset % alignment != 0 {
            "not a multiple of the alignment"
        } else if offset < expected {
            "overlaps the previous tensor's data or is out of order"
        } else {
            "leaves a gap after the previous tensor's data"
        };
        return Err(Error::BadOffset {
            tensor: name,
            offset,
            expected,
            reason,
        });
    }

    Ok(TensorInfo {
        name,
        dims,
        ty,
        offset,
        n_elements,
        n_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn align_up_is_checked() {
        assert_eq!(align_up(0, 32), Some(0));
        assert_eq!(align_up(1, 32), Some(32));
        assert_eq!(align_up(32, 32), Some(32));
        assert_eq!(align_up(u64::MAX - 3, 32), None);
        assert_eq!(align_up(5, 0), None);
    }

    #[test]
    fn file_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<GgufFile>();
    }
}
