//! Load-time repacking of quantized matrices into the row-interleaved layout
//! of kernel sets with `group > 0` (`simd::pack_group`), into 64-byte
//! aligned memory the backend owns.
//!
//! Memory: the source rows are read from the file with positioned reads
//! (`pread`) rather than through the memory map, so the mapped pages are
//! never faulted in and the process holds one copy of each matrix (the
//! packed one), not two. Files that are not on disk (`GgufFile::from_bytes`)
//! are packed from their in-memory bytes.

use std::sync::{Arc, Mutex, OnceLock, Weak};

use super::simd;
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quants::GgmlType;

/// One cache line of bytes: the packed buffer's unit, so SIMD loads of a
/// group's 64-byte quant chunks do not straddle lines.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; 64]);

/// A packed matrix: `len` bytes at 64-byte alignment.
pub(super) struct Packed {
    lines: Vec<Line>,
    len: usize,
}

impl Packed {
    pub(super) fn bytes(&self) -> &[u8] {
        // SAFETY: `lines` holds at least `len` initialized bytes (`Line` is
        // plain bytes with no padding) and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.lines.as_ptr() as *const u8, self.len) }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `bytes`, uniquely borrowed.
        unsafe { std::slice::from_raw_parts_mut(self.lines.as_mut_ptr() as *mut u8, self.len) }
    }
}

/// A tensor's packed copy, filled by the first matmul weight that needs it
/// and shared with every other weight reading the same tensor: a tied
/// embedding table looks its rows up in the output head's copy, because
/// random row lookups in the map would fault in (and count) the whole table.
pub(super) type Slot = OnceLock<Packed>;

/// The backend's slots by (file, tensor offset); entries die with the
/// weights holding them.
#[derive(Default)]
pub(super) struct Registry(Mutex<Vec<(usize, u64, Weak<Slot>)>>);

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    /// The slot of `info` in `file`, made empty if none is alive.
    pub(super) fn slot(&self, file: &Arc<GgufFile>, info: &TensorInfo) -> Arc<Slot> {
        let key = (Arc::as_ptr(file) as usize, info.offset);
        let mut v = self.0.lock().unwrap_or_else(|e| e.into_inner());
        v.retain(|(_, _, w)| w.strong_count() > 0);
        if let Some(s) = v
            .iter()
            .find(|(f, o, _)| (*f, *o) == key)
            .and_then(|(_, _, w)| w.upgrade())
        {
            return s;
        }
        let s = Arc::new(Slot::new());
        v.push((key.0, key.1, Arc::downgrade(&s)));
        s
    }
}

/// Bytes read from the file per positioned read while packing.
const CHUNK: usize = 1 << 20;

/// The tensor's rows, `rows · row_bytes` bytes, repacked in groups of `g`
/// rows (the last padded with zero rows).
pub(super) fn pack(
    file: &GgufFile,
    info: &TensorInfo,
    ty: GgmlType,
    g: usize,
    rows: usize,
    row_bytes: usize,
) -> Result<Packed> {
    let oom = |bytes: usize| Error::OutOfMemory {
        bytes: bytes as u64,
        what: format!("packed {}", info.name),
    };
    let group_bytes = g.checked_mul(row_bytes).ok_or_else(|| oom(usize::MAX))?;
    let len = rows
        .div_ceil(g)
        .checked_mul(group_bytes)
        .ok_or_else(|| oom(usize::MAX))?;
    let mut lines = Vec::new();
    lines
        .try_reserve_exact(len.div_ceil(64))
        .map_err(|_| oom(len))?;
    lines.resize(len.div_ceil(64), Line([0; 64]));
    let mut out = Packed { lines, len };
    let bad = || Error::SizeOverflow {
        tensor: info.name.clone(),
        reason: "packing a matrix the fast path cannot lay out".into(),
    };
    let mapped = file.tensor_data(info);
    if mapped.len() != rows * row_bytes {
        return Err(bad());
    }
    let dst = out.bytes_mut();
    let mut pack_groups = |first_row: usize, src: &[u8]| -> Result<()> {
        for (i, grp) in src.chunks(group_bytes).enumerate() {
            let at = (first_row / g + i) * group_bytes;
            simd::pack_group(ty, g, grp, row_bytes, &mut dst[at..at + group_bytes])
                .ok_or_else(bad)?;
        }
        Ok(())
    };
    match reader(file, info, mapped) {
        Some((f, offset)) => {
            let per = (CHUNK / group_bytes).max(1) * g;
            let mut buf = vec![0u8; per.min(rows) * row_bytes];
            let mut r = 0;
            while r < rows {
                let n = per.min(rows - r);
                let b = &mut buf[..n * row_bytes];
                read_at(&f, b, offset + (r * row_bytes) as u64).map_err(|source| Error::Io {
                    path: file.path().map(|p| p.to_path_buf()).unwrap_or_default(),
                    source,
                })?;
                pack_groups(r, b)?;
                r += n;
            }
        }
        None => pack_groups(0, mapped)?,
    }
    Ok(out)
}

/// The file and the tensor's offset in it, when the GGUF was opened from a
/// file that still has the length it had when mapped (model files are
/// immutable while loaded, see ARCHITECTURE.md). The map is not touched:
/// even one byte would fault in (and count) a whole fault-around window.
#[cfg(unix)]
fn reader(file: &GgufFile, info: &TensorInfo, mapped: &[u8]) -> Option<(std::fs::File, u64)> {
    let f = std::fs::File::open(file.path()?).ok()?;
    let len = f.metadata().ok()?.len();
    let start = len.checked_sub(file.file_len())?;
    let offset = start
        .checked_add(file.data_offset())?
        .checked_add(info.offset)?;
    (offset.checked_add(mapped.len() as u64)? <= len).then_some((f, offset))
}

#[cfg(not(unix))]
fn reader(_: &GgufFile, _: &TensorInfo, _: &[u8]) -> Option<(std::fs::File, u64)> {
    None
}

#[cfg(unix)]
fn read_at(f: &std::fs::File, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
    std::os::unix::fs::FileExt::read_exact_at(f, buf, offset)
}

#[cfg(not(unix))]
fn read_at(_: &std::fs::File, _: &mut [u8], _: u64) -> std::io::Result<()> {
    Err(std::io::ErrorKind::Unsupported.into())
}
