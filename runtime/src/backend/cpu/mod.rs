//! The CPU backend: always built, the reference every other backend is
//! checked against.
//!
//! Weights stay in the GGUF memory map and are read in place; activations
//! and the KV cache are plain vectors. Work is split over rows across
//! `threads` scoped threads. Each op family lives in its own file; this file
//! owns the handle types and the `Backend` impl that routes to them.

mod attention;
mod elementwise;
mod matmul;
mod norm_rope;
mod parallel;

use std::sync::Arc;

use half::f16;

use super::{AttnParams, Backend, KvSpec, KvType, Op, Rope};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quants::{self, GgmlType};

/// The CPU backend.
#[derive(Clone, Debug)]
pub struct CpuBackend {
    threads: usize,
}

impl CpuBackend {
    /// A backend using `threads` threads (at least one).
    pub fn new(threads: usize) -> CpuBackend {
        CpuBackend {
            threads: threads.max(1),
        }
    }

    /// The number of threads ops are split over.
    pub fn threads(&self) -> usize {
        self.threads
    }
}

impl Default for CpuBackend {
    /// One thread per available core.
    fn default() -> CpuBackend {
        CpuBackend::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }
}

/// An f32 activation `[rows, cols]`, row-major. `data` may be longer than
/// `rows · cols` after a shrink: the capacity is kept for the next batch.
#[derive(Clone, Debug, Default)]
pub struct CpuTensor {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl CpuTensor {
    fn as_slice(&self) -> &[f32] {
        &self.data[..self.rows * self.cols]
    }

    fn as_mut_slice(&mut self) -> &mut [f32] {
        let n = self.rows * self.cols;
        &mut self.data[..n]
    }

    fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }
}

/// A weight: a 2-D matrix read in place from the map, or a small 1-D vector
/// converted to f32 once at load.
pub struct CpuWeight {
    name: String,
    ty: GgmlType,
    /// Output features (GGUF `dims[1]`, or 1 for a vector).
    rows: usize,
    /// Input features (GGUF `dims[0]`).
    cols: usize,
    storage: WeightStorage,
}

enum WeightStorage {
    Mapped {
        file: Arc<GgufFile>,
        info: TensorInfo,
        row_bytes: usize,
    },
    Dense(Vec<f32>),
}

impl CpuWeight {
    /// The bytes of row `r` of a mapped matrix.
    fn row_bytes(&self, r: usize) -> &[u8] {
        match &self.storage {
            WeightStorage::Mapped {
                file,
                info,
                row_bytes,
            } => &file.tensor_data(info)[r * row_bytes..(r + 1) * row_bytes],
            WeightStorage::Dense(_) => &[],
        }
    }

    fn dense(&self) -> Option<&[f32]> {
        match &self.storage {
            WeightStorage::Dense(v) => Some(v),
            WeightStorage::Mapped { .. } => None,
        }
    }
}

/// KV storage of one layer's K or V: `[n_ctx, n_head_kv · head_dim]`.
enum KvStore {
    F32(Vec<f32>),
    F16(Vec<f16>),
}

/// A session's KV cache on the CPU.
pub struct CpuKvCache {
    spec: KvSpec,
    /// Per layer: (K, V).
    layers: Vec<(KvStore, KvStore)>,
}

fn try_vec<T: Clone>(n: usize, fill: T, what: &str) -> Result<Vec<T>> {
    let mut v = Vec::new();
    v.try_reserve_exact(n).map_err(|_| Error::OutOfMemory {
        bytes: (n as u64).saturating_mul(std::mem::size_of::<T>() as u64),
        what: what.to_string(),
    })?;
    v.resize(n, fill);
    Ok(v)
}

fn shape_err(op: &str, detail: String) -> Error {
    Error::InvalidBatch(format!("cpu {op}: {detail}"))
}

impl Backend for CpuBackend {
    type Tensor = CpuTensor;
    type Weight = CpuWeight;
    type KvCache = CpuKvCache;

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn supports(&self, _op: Op, ty: GgmlType) -> bool {
        quants::kernels(ty).is_some()
    }

    fn load_weight(&self, file: &Arc<GgufFile>, info: &TensorInfo, op: Op) -> Result<CpuWeight> {
        if !self.supports(op, info.ty) {
            return Err(Error::UnsupportedType {
                tensor: info.name.clone(),
                ty: info.ty,
                backend: "cpu",
            });
        }
        let cols = usize::try_from(info.dims[0]).map_err(|_| Error::SizeOverflow {
            tensor: info.name.clone(),
            reason: "row length".into(),
        })?;
        let rows = usize::try_from(info.n_elements / info.dims[0].max(1)).map_err(|_| {
            Error::SizeOverflow {
                tensor: info.name.clone(),
                reason: "row count".into(),
            }
        })?;
        let storage = match op {
            Op::Vector => {
                let mut v = try_vec(rows * cols, 0.0f32, &info.name)?;
                quants::dequantize_row(info.ty, file.tensor_data(info), &mut v)?;
                WeightStorage::Dense(v)
            }
            Op::Embed | Op::MatMul => {
                let row_bytes = info.ty.row_bytes(info.dims[0]).ok_or(Error::SizeOverflow {
                    tensor: info.name.clone(),
                    reason: "row size".into(),
                })? as usize;
                WeightStorage::Mapped {
                    file: Arc::clone(file),
                    info: info.clone(),
                    row_bytes,
                }
            }
        };
        Ok(CpuWeight {
            name: info.name.clone(),
            ty: info.ty,
            rows,
            cols,
            storage,
        })
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CpuTensor> {
        let n = rows.checked_mul(cols).ok_or(Error::OutOfMemory {
            bytes: u64::MAX,
            what: "activation".into(),
        })?;
        Ok(CpuTensor {
            rows,
            cols,
            data: try_vec(n, 0.0, "activation")?,
        })
    }

    fn shape(&self, t: &CpuTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn resize_rows(&self, t: &mut CpuTensor, rows: usize) -> Result<()> {
        let n = rows.checked_mul(t.cols).ok_or(Error::OutOfMemory {
            bytes: u64::MAX,
            what: "activation".into(),
        })?;
        if n > t.data.len() {
            t.data
                .try_reserve_exact(n - t.data.len())
                .map_err(|_| Error::OutOfMemory {
                    bytes: n as u64 * 4,
                    what: "activation".into(),
                })?;
            t.data.resize(n, 0.0);
        }
        t.rows = rows;
        Ok(())
    }

    fn read(&self, t: &CpuTensor, out: &mut [f32]) -> Result<()> {
        if out.len() != t.rows * t.cols {
            return Err(shape_err(
                "read",
                format!("{} values into {}", t.rows * t.cols, out.len()),
            ));
        }
        out.copy_from_slice(t.as_slice());
        Ok(())
    }

    fn alloc_kv(&self, spec: &KvSpec) -> Result<CpuKvCache> {
        let per = spec
            .n_ctx
            .checked_mul(spec.n_head_kv)
            .and_then(|n| n.checked_mul(spec.head_dim))
            .ok_or(Error::OutOfMemory {
                bytes: u64::MAX,
                what: "KV cache".into(),
            })?;
        let mut layers = Vec::with_capacity(spec.n_layer);
        for _ in 0..spec.n_layer {
            let mk = || -> Result<KvStore> {
                Ok(match spec.ty {
                    KvType::F32 => KvStore::F32(try_vec(per, 0.0, "KV cache")?),
                    KvType::F16 => KvStore::F16(try_vec(per, f16::ZERO, "KV cache")?),
                })
            };
            layers.push((mk()?, mk()?));
        }
        Ok(CpuKvCache {
            spec: *spec,
            layers,
        })
    }

    fn embed(&self, table: &CpuWeight, ids: &[u32], scale: f32, out: &mut CpuTensor) -> Result<()> {
        elementwise::embed(table, ids, scale, out)
    }

    fn rms_norm(&self, x: &CpuTensor, w: &CpuWeight, eps: f32, out: &mut CpuTensor) -> Result<()> {
        norm_rope::rms_norm(x, w, eps, out)
    }

    fn matmul(&self, x: &CpuTensor, w: &CpuWeight, out: &mut CpuTensor) -> Result<()> {
        matmul::matmul(self.threads, x, w, out)
    }

    fn rope(&self, x: &mut CpuTensor, positions: &[u32], rope: &Rope) -> Result<()> {
        norm_rope::rope(x, positions, rope)
    }

    fn kv_write(
        &self,
        kv: &mut CpuKvCache,
        layer: usize,
        first_slot: usize,
        k: &CpuTensor,
        v: &CpuTensor,
    ) -> Result<()> {
        attention::kv_write(kv, layer, first_slot, k, v)
    }

    fn attention(
        &self,
        q: &CpuTensor,
        kv: &CpuKvCache,
        layer: usize,
        first_slot: usize,
        params: &AttnParams,
        out: &mut CpuTensor,
    ) -> Result<()> {
        attention::attention(self.threads, q, kv, layer, first_slot, params, out)
    }

    fn silu_mul(&self, gate: &mut CpuTensor, up: &CpuTensor) -> Result<()> {
        elementwise::silu_mul(gate, up)
    }

    fn add_scaled(&self, acc: &mut CpuTensor, x: &CpuTensor, scale: f32) -> Result<()> {
        elementwise::add_scaled(acc, x, scale)
    }

    fn scale(&self, x: &mut CpuTensor, s: f32) -> Result<()> {
        x.as_mut_slice().iter_mut().for_each(|v| *v *= s);
        Ok(())
    }

    fn gather_rows(&self, x: &CpuTensor, rows: &[usize], out: &mut CpuTensor) -> Result<()> {
        elementwise::gather_rows(x, rows, out)
    }
}
