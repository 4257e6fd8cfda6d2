//! GGUF writer: collects metadata and tensors, checks them against the same
//! rules the reader enforces, and serialises them byte-for-byte as the `gguf`
//! Python package (0.19.0) `GGUFWriter` does; plus `write_atomic`, the
//! temp-file-and-rename helper every tern output file goes through.
//!
//! Layout (all little-endian): magic, version 3, tensor count (u64), KV count
//! (u64), the KVs in insertion order, the tensor infos in insertion order
//! with offsets that are running sums of padded sizes, zero padding to the
//! alignment (measured from the first byte), then each tensor's data followed
//! by zero padding to the alignment — including after the last tensor, as
//! gguf-py does. `tests/gguf_interop.rs` checks the bytes are identical to a
//! gguf-py-written fixture.

use std::borrow::Cow;
use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::read::{
    align_up, check_alignment, ALIGNMENT_KEY, DEFAULT_ALIGNMENT, GGUF_MAGIC, MAX_ARRAY_LEN,
    MAX_DIMS, MAX_KEY_LEN, MAX_STRING_LEN, MAX_TENSOR_NAME_LEN,
};
use super::{Array, Value};
use crate::error::{Error, Result};
use crate::quants::GgmlType;

/// The GGUF version tern writes.
pub const GGUF_WRITE_VERSION: u32 = 3;

/// A tensor waiting to be written.
struct PendingTensor<'a> {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Cow<'a, [u8]>,
}

/// Builds a GGUF file.
///
/// Everything is validated when it is added, so a writer that accepted its
/// inputs produces a file [`super::GgufFile`] reads back equal. Tensor data
/// may be borrowed (`&'a [u8]`) to avoid copying weights.
pub struct GgufWriter<'a> {
    alignment: u64,
    kvs: Vec<(String, Value)>,
    tensors: Vec<PendingTensor<'a>>,
}

impl Default for GgufWriter<'_> {
    fn default() -> Self {
        GgufWriter::new()
    }
}

impl<'a> GgufWriter<'a> {
    /// An empty writer with the default alignment (32).
    pub fn new() -> GgufWriter<'a> {
        GgufWriter {
            alignment: DEFAULT_ALIGNMENT,
            kvs: Vec::new(),
            tensors: Vec::new(),
        }
    }

    /// Use a non-default data alignment. This adds the `general.alignment`
    /// key (as u32) at this point in the KV order, as gguf-py's
    /// `add_custom_alignment` does. The alignment must be a non-zero power of
    /// two of at most 1 MiB, and may be set once.
    pub fn set_alignment(&mut self, alignment: u64) -> Result<()> {
        let a = u32::try_from(alignment)
            .map_err(|_| Error::BadAlignment(format!("{alignment} does not fit in u32")))?;
        self.add_kv(ALIGNMENT_KEY, Value::U32(a))
    }

    /// The data alignment the file will use.
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Append a metadata key. Rejects empty keys, keys over 65535 bytes,
    /// duplicates, strings over 1 GiB and arrays over 1 Gi elements (what
    /// the reader would reject). Nested arrays cannot be expressed by
    /// [`Value`]. `general.alignment` must be a valid u32 alignment and
    /// sets the writer's alignment.
    pub fn add_kv(&mut self, key: impl Into<String>, value: Value) -> Result<()> {
        let key = key.into();
        if key.is_empty() {
            return Err(Error::BadKey {
                offset: 0,
                reason: "metadata key is empty".to_string(),
            });
        }
        if key.len() as u64 > MAX_KEY_LEN {
            return Err(Error::BadKey {
                offset: 0,
                reason: format!(
                    "metadata key is {} bytes, over the limit of {MAX_KEY_LEN}",
                    key.len()
                ),
            });
        }
        if self.kvs.iter().any(|(k, _)| *k == key) {
            return Err(Error::DuplicateKey(key));
        }
        check_value_limits(&key, &value)?;
        if key == ALIGNMENT_KEY {
            self.alignment = check_alignment(&value)?;
        }
        self.kvs.push((key, value));
        Ok(())
    }

    /// Append a tensor. `dims` are in GGML order (`dims[0]` contiguous), 1 to
    /// 4 of them; `data` must be exactly the tensor's size in bytes.
    pub fn add_tensor(
        &mut self,
        name: impl Into<String>,
        ty: GgmlType,
        dims: &[u64],
        data: impl Into<Cow<'a, [u8]>>,
    ) -> Result<()> {
        let name = name.into();
        let data = data.into();
        if name.is_empty() {
            return Err(Error::BadTensorName {
                offset: 0,
                reason: "tensor name is empty".to_string(),
            });
        }
        if name.len() as u64 > MAX_TENSOR_NAME_LEN {
            return Err(Error::BadTensorName {
                offset: 0,
                reason: format!(
                    "tensor name '{name}' is {} bytes, over the limit of {MAX_TENSOR_NAME_LEN}",
                    name.len()
                ),
            });
        }
        if self.tensors.iter().any(|t| t.name == name) {
            return Err(Error::DuplicateTensor(name));
        }
        if dims.len() > MAX_DIMS as usize {
            return Err(Error::TooManyDims {
                tensor: name,
                n_dims: u32::try_from(dims.len()).unwrap_or(u32::MAX),
            });
        }
        let expected = tensor_bytes(&name, ty, dims)?;
        if data.len() as u64 != expected {
            return Err(Error::BadShape {
                tensor: name,
                reason: format!(
                    "data is {} bytes, but {ty} {dims:?} needs {expected}",
                    data.len()
                ),
            });
        }
        self.tensors.push(PendingTensor {
            name,
            ty,
            dims: dims.to_vec(),
            data,
        });
        Ok(())
    }

    /// Serialise the file to `w`. I/O errors are reported as
    /// [`Error::Io`] with the path `<stream>`; [`GgufWriter::write_file`]
    /// reports the real path.
    pub fn write_to(&self, w: &mut dyn Write) -> Result<()> {
        self.write_raw(w).map_err(|source| Error::Io {
            path: PathBuf::from("<stream>"),
            source,
        })
    }

    /// Write the file to `path` atomically (see [`write_atomic`]).
    pub fn write_file(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        write_atomic(path, |w| {
            self.write_raw(w).map_err(|source| Error::Io {
                path: path.to_path_buf(),
                source,
            })
        })
    }

    /// The exact size in bytes `write_to` will produce.
    pub fn file_len(&self) -> u64 {
        let mut n: u64 = 4 + 4 + 8 + 8;
        for (k, v) in &self.kvs {
            n += 8 + k.len() as u64 + 4 + value_len(v);
        }
        for t in &self.tensors {
            n += 8 + t.name.len() as u64 + 4 + 8 * t.dims.len() as u64 + 4 + 8;
        }
        n = pad(n, self.alignment);
        for t in &self.tensors {
            n += pad(t.data.len() as u64, self.alignment);
        }
        n
    }

    fn write_raw(&self, w: &mut dyn Write) -> io::Result<()> {
        // Sizes were validated when added, and they are lengths of data held
        // in memory, so the sums below cannot overflow a u64.
        let mut w = Counting { inner: w, pos: 0 };
        w.put(&GGUF_MAGIC)?;
        w.put(&GGUF_WRITE_VERSION.to_le_bytes())?;
        w.put(&(self.tensors.len() as u64).to_le_bytes())?;
        w.put(&(self.kvs.len() as u64).to_le_bytes())?;
        for (k, v) in &self.kvs {
            put_str(&mut w, k)?;
            w.put(&(v.value_type() as u32).to_le_bytes())?;
            put_value(&mut w, v)?;
        }
        let mut offset: u64 = 0;
        for t in &self.tensors {
            put_str(&mut w, &t.name)?;
            w.put(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.put(&d.to_le_bytes())?;
            }
            w.put(&t.ty.id().to_le_bytes())?;
            w.put(&offset.to_le_bytes())?;
            offset += pad(t.data.len() as u64, self.alignment);
        }
        w.pad_to(self.alignment)?;
        for t in &self.tensors {
            w.put(&t.data)?;
            w.pad_to(self.alignment)?;
        }
        w.inner.flush()
    }
}

/// `x` rounded up to `align`, for sizes already known to be small.
fn pad(x: u64, align: u64) -> u64 {
    align_up(x, align).unwrap_or(u64::MAX)
}

/// Bytes of a tensor of type `ty` and shape `dims`, with the reader's rules.
fn tensor_bytes(name: &str, ty: GgmlType, dims: &[u64]) -> Result<u64> {
    let bad = |reason: String| Error::BadShape {
        tensor: name.to_owned(),
        reason,
    };
    let overflow = || Error::SizeOverflow {
        tensor: name.to_owned(),
        reason: "data size".to_string(),
    };
    if dims.is_empty() {
        // The reader turns n_dims 0 into [1]; writing [1] keeps round trips exact.
        return Err(bad("no dimensions (write a scalar as [1])".to_string()));
    }
    let mut n: u64 = 1;
    for &d in dims {
        if d > i64::MAX as u64 {
            return Err(bad(format!("dimension {d} is over i64::MAX")));
        }
        n = n.checked_mul(d).ok_or_else(overflow)?;
    }
    if !dims[0].is_multiple_of(ty.block_size()) {
        return Err(bad(format!(
            "dims[0] = {} is not a multiple of the {ty} block size {}",
            dims[0],
            ty.block_size()
        )));
    }
    (n / ty.block_size())
        .checked_mul(ty.type_size())
        .filter(|&b| b <= i64::MAX as u64)
        .ok_or_else(overflow)
}

fn check_value_limits(key: &str, v: &Value) -> Result<()> {
    let too_long = |len: usize| Error::StringTooLong {
        what: format!("metadata key '{key}' value"),
        offset: 0,
        len: len as u64,
        limit: MAX_STRING_LEN,
    };
    match v {
        Value::String(s) if s.len() as u64 > MAX_STRING_LEN => Err(too_long(s.len())),
        Value::Array(a) => {
            if a.len() as u64 > MAX_ARRAY_LEN {
                return Err(Error::ArrayTooLarge {
                    key: key.to_owned(),
                    count: a.len() as u64,
                    limit: MAX_ARRAY_LEN,
                });
            }
            if let Array::String(v) = a {
                if let Some(s) = v.iter().find(|s| s.len() as u64 > MAX_STRING_LEN) {
                    return Err(too_long(s.len()));
                }
            }
            Ok(())
        }
        _ => Ok(()),
    }
}

/// Encoded size of a value without its type id.
fn value_len(v: &Value) -> u64 {
    match v {
        Value::U8(_) | Value::I8(_) | Value::Bool(_) => 1,
        Value::U16(_) | Value::I16(_) => 2,
        Value::U32(_) | Value::I32(_) | Value::F32(_) => 4,
        Value::U64(_) | Value::I64(_) | Value::F64(_) => 8,
        Value::String(s) => 8 + s.len() as u64,
        Value::Array(a) => {
            let n = a.len() as u64;
            4 + 8
                + match a {
                    Array::U8(_) | Array::I8(_) | Array::Bool(_) => n,
                    Array::U16(_) | Array::I16(_) => 2 * n,
                    Array::U32(_) | Array::I32(_) | Array::F32(_) => 4 * n,
                    Array::U64(_) | Array::I64(_) | Array::F64(_) => 8 * n,
                    Array::String(v) => v.iter().map(|s| 8 + s.len() as u64).sum(),
                }
        }
    }
}

/// A writer that knows how many bytes it has written, for padding.
struct Counting<'w> {
    inner: &'w mut dyn Write,
    pos: u64,
}

impl Counting<'_> {
    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.inner.write_all(b)?;
        self.pos += b.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, align: u64) -> io::Result<()> {
        const ZEROS: [u8; 256] = [0; 256];
        let mut n = pad(self.pos, align) - self.pos;
        while n > 0 {
            let k = n.min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..k])?;
            n -= k as u64;
        }
        Ok(())
    }
}

fn put_str(w: &mut Counting<'_>, s: &str) -> io::Result<()> {
    w.put(&(s.len() as u64).to_le_bytes())?;
    w.put(s.as_bytes())
}

fn put_value(w: &mut Counting<'_>, v: &Value) -> io::Result<()> {
    match v {
        Value::U8(x) => w.put(&x.to_le_bytes()),
        Value::I8(x) => w.put(&x.to_le_bytes()),
        Value::U16(x) => w.put(&x.to_le_bytes()),
        Value::I16(x) => w.put(&x.to_le_bytes()),
        Value::U32(x) => w.put(&x.to_le_bytes()),
        Value::I32(x) => w.put(&x.to_le_bytes()),
        Value::F32(x) => w.put(&x.to_le_bytes()),
        Value::U64(x) => w.put(&x.to_le_bytes()),
        Value::I64(x) => w.put(&x.to_le_bytes()),
        Value::F64(x) => w.put(&x.to_le_bytes()),
        Value::Bool(b) => w.put(&[u8::from(*b)]),
        Value::String(s) => put_str(w, s),
        Value::Array(a) => put_array(w, a),
    }
}

fn put_array(w: &mut Counting<'_>, a: &Array) -> io::Result<()> {
    w.put(&(a.element_type() as u32).to_le_bytes())?;
    w.put(&(a.len() as u64).to_le_bytes())?;
    // Buffer numeric elements so a large array is a few big writes, not one
    // write call per element.
    fn each<T: Copy, const N: usize>(
        w: &mut Counting<'_>,
        v: &[T],
        enc: fn(T) -> [u8; N],
    ) -> io::Result<()> {
        let mut buf = Vec::with_capacity(v.len().min(8192) * N);
        for chunk in v.chunks(8192) {
            buf.clear();
            for &x in chunk {
                buf.extend_from_slice(&enc(x));
            }
            w.put(&buf)?;
        }
        Ok(())
    }
    match a {
        Array::U8(v) => w.put(v),
        Array::I8(v) => each(w, v, i8::to_le_bytes),
        Array::U16(v) => each(w, v, u16::to_le_bytes),
        Array::I16(v) => each(w, v, i16::to_le_bytes),
        Array::U32(v) => each(w, v, u32::to_le_bytes),
        Array::I32(v) => each(w, v, i32::to_le_bytes),
        Array::F32(v) => each(w, v, f32::to_le_bytes),
        Array::U64(v) => each(w, v, u64::to_le_bytes),
        Array::I64(v) => each(w, v, i64::to_le_bytes),
        Array::F64(v) => each(w, v, f64::to_le_bytes),
        Array::Bool(v) => each(w, v, |b| [u8::from(b)]),
        Array::String(v) => v.iter().try_for_each(|s| put_str(w, s)),
    }
}

/// Write `path` atomically: `f` writes into a uniquely named temp file in the
/// same directory, which is flushed, fsynced and renamed over `path`; then
/// the directory is fsynced so the rename survives a crash.
///
/// If `f` or any step before the rename fails, the temp file is removed and
/// an existing `path` is left byte-identical. The new file gets default
/// permissions (those of an existing `path` are not copied).
pub fn write_atomic(path: &Path, f: impl FnOnce(&mut BufWriter<File>) -> Result<()>) -> Result<()> {
    let io_err = |p: &Path| {
        let p = p.to_path_buf();
        move |source| Error::Io { path: p, source }
    };
    let file_name = path.file_name().ok_or_else(|| Error::Io {
        path: path.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"),
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };

    let (tmp_path, file) = create_temp(&dir, file_name)?;
    // Removes the temp file on every early exit, including a panic in `f`.
    let guard = TempGuard(Some(tmp_path.clone()));
    let mut w = BufWriter::new(file);
    f(&mut w)?;
    let file = w
        .into_inner()
        .map_err(|e| io_err(&tmp_path)(e.into_error()))?;
    file.sync_all().map_err(io_err(&tmp_path))?;
    drop(file);
    std::fs::rename(&tmp_path, path).map_err(io_err(path))?;
    guard.disarm();
    sync_dir(&dir).map_err(io_err(&dir))
}

/// Deletes the temp file when dropped unless disarmed after the rename.
struct TempGuard(Option<PathBuf>);

impl TempGuard {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            // Best effort: the error that matters is the one being returned.
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Create `.<name>.tern-tmp.<pid>.<n>` exclusively, retrying on collisions
/// (another process, or a stale file from a crash).
fn create_temp(dir: &Path, file_name: &std::ffi::OsStr) -> Result<(PathBuf, File)> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let pid = std::process::id();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mut last = None;
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let mut name = std::ffi::OsString::from(".");
        name.push(file_name);
        name.push(format!(".tern-tmp.{pid}.{nanos:x}.{n}"));
        let p = dir.join(name);
        match OpenOptions::new().write(true).create_new(true).open(&p) {
            Ok(f) => return Ok((p, f)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => last = Some((p, e)),
            Err(source) => return Err(Error::Io { path: p, source }),
        }
    }
    let (path, source) = last.unwrap_or_else(|| {
        (
            dir.to_path_buf(),
            io::Error::new(io::ErrorKind::AlreadyExists, "no free temp name"),
        )
    });
    Err(Error::Io { path, source })
}

#[cfg(unix)]
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(not(unix))]
fn sync_dir(_dir: &Path) -> io::Result<()> {
    // Directories cannot be opened for syncing on Windows; the rename is
    // as durable as the platform makes it.
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_len_matches_written_len() {
        let mut w = GgufWriter::new();
        w.add_kv("general.architecture", Value::String("llama".into()))
            .unwrap();
        w.add_kv(
            "a.arr",
            Value::Array(Array::String(vec!["x".into(), "".into()])),
        )
        .unwrap();
        w.add_tensor("t", GgmlType::F32, &[3], vec![0u8; 12])
            .unwrap();
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        assert_eq!(out.len() as u64, w.file_len());
        assert_eq!(out.len() % 32, 0);
    }

    #[test]
    fn rejects_what_the_reader_rejects() {
        let mut w = GgufWriter::new();
        assert!(matches!(
            w.add_kv("", Value::U8(0)),
            Err(Error::BadKey { .. })
        ));
        w.add_kv("k", Value::U8(0)).unwrap();
        assert!(matches!(
            w.add_kv("k", Value::U8(1)),
            Err(Error::DuplicateKey(_))
        ));
        assert!(matches!(
            w.add_kv(ALIGNMENT_KEY, Value::I32(32)),
            Err(Error::BadAlignment(_))
        ));
        assert!(matches!(w.set_alignment(3), Err(Error::BadAlignment(_))));
        assert!(matches!(
            w.add_tensor("q", GgmlType::Q4_0, &[33], vec![0u8; 18]),
            Err(Error::BadShape { .. })
        ));
        assert!(matches!(
            w.add_tensor("f", GgmlType::F32, &[2], vec![0u8; 7]),
            Err(Error::BadShape { .. })
        ));
        assert!(matches!(
            w.add_tensor("f", GgmlType::F32, &[1, 1, 1, 1, 1], vec![0u8; 4]),
            Err(Error::TooManyDims { .. })
        ));
        assert!(matches!(
            w.add_tensor("x".repeat(64), GgmlType::F32, &[1], vec![0u8; 4]),
            Err(Error::BadTensorName { .. })
        ));
    }
}
