//! The CPU backend: always built, the reference every other backend is
//! checked against.
//!
//! Weights stay in the GGUF memory map and are read in place (except
//! matrices the fast kernels read in a row-interleaved layout, repacked once
//! at load by `pack.rs` from the file, not the map); activations
//! and the KV cache are plain vectors. Work is split over a persistent pool
//! of `threads` threads (`parallel.rs`). Each op family lives in its own
//! file; this file owns the handle types and the `Backend` impl that routes
//! to them.
//!
//! Two matmul modes: **fast** (the default: Q4_0/Q4_1/Q8_0 weights against
//! activations quantized to 8 bits, SIMD kernels in `simd/`) and **exact**
//! (f32 activations, weights dequantized to f32: the reference every other
//! path is measured against). `TERN_CPU_EXACT=1` in the environment makes
//! [`CpuBackend::new`] and [`CpuBackend::default`] exact.

mod attention;
mod elementwise;
mod matmul;
mod norm_rope;
mod pack;
mod parallel;
mod simd;

use std::sync::Arc;

use half::f16;

use super::{AttnParams, Backend, KvSpec, KvType, Op, Rope};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quants::{self, GgmlType};

/// The CPU backend. Clones share one thread pool.
#[derive(Clone, Debug)]
pub struct CpuBackend {
    threads: usize,
    pool: Arc<parallel::Pool>,
    /// The quantized-activation kernels, or `None` for the exact path.
    fast: Option<simd::Kernels>,
    /// Packed copies of tensors, shared by the weights that read them.
    packed: Arc<pack::Registry>,
}

/// The environment variable that makes [`CpuBackend::new`] exact.
pub const EXACT_ENV: &str = "TERN_CPU_EXACT";

impl CpuBackend {
    /// A backend using `threads` threads (at least one): the fast path,
    /// unless `TERN_CPU_EXACT=1` is set, then the exact one.
    pub fn new(threads: usize) -> CpuBackend {
        if std::env::var_os(EXACT_ENV).is_some_and(|v| v == "1") {
            CpuBackend::exact(threads)
        } else {
            CpuBackend::fast(threads)
        }
    }

    /// The fast path: Q4_0, Q4_1 and Q8_0 matmuls quantize activations to 8
    /// bits per block and use the best SIMD kernels this CPU has. Measured
    /// against the float64 oracle on SmolLM2-135M (Q4_1): NMSE ≈ 1e-5 on
    /// logits (see `runtime/tests/cpu_kernels.rs`).
    pub fn fast(threads: usize) -> CpuBackend {
        CpuBackend::with(threads, Some(simd::best()))
    }

    /// The exact path: f32 activations, weights dequantized to f32.
    pub fn exact(threads: usize) -> CpuBackend {
        CpuBackend::with(threads, None)
    }

    fn with(threads: usize, fast: Option<simd::Kernels>) -> CpuBackend {
        let pool = Arc::new(parallel::Pool::new(threads.max(1)));
        CpuBackend {
            threads: pool.threads(),
            pool,
            fast,
            packed: Arc::default(),
        }
    }

    /// The number of threads ops are split over.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Whether matmuls take the exact f32 path.
    pub fn is_exact(&self) -> bool {
        self.fast.is_none()
    }

    /// The name of the matmul kernels in use: "exact", or the SIMD set of
    /// the fast path ("avx512vnni", "avx2", "neon-dotprod", "scalar").
    pub fn kernel_name(&self) -> &'static str {
        self.fast.map_or("exact", |k| k.name)
    }
}

impl Default for CpuBackend {
    /// One thread per available core; fast unless `TERN_CPU_EXACT=1`.
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
        /// For an embedding table on a fast set with an interleaved layout:
        /// the packed copy a matmul weight (a tied output head) may have
        /// made of the same tensor, and its group (`pack::Slot`).
        tied: Option<(Arc<pack::Slot>, usize)>,
    },
    Dense(Vec<f32>),
    /// Repacked for the fast kernel set's interleaved layout (`pack.rs`).
    Packed {
        /// Always filled (by `load_weight`).
        data: Arc<pack::Slot>,
        row_bytes: usize,
        group: usize,
    },
}

impl CpuWeight {
    /// The quantized matrix as the kernels see it, `None` for f32 weights.
    fn wmat(&self) -> Option<simd::WMat<'_>> {
        match &self.storage {
            WeightStorage::Mapped {
                file,
                info,
                row_bytes,
                ..
            } => Some(simd::WMat {
                data: file.tensor_data(info),
                row_bytes: *row_bytes,
                k: self.cols,
                group: 0,
            }),
            WeightStorage::Packed {
                data,
                row_bytes,
                group,
            } => Some(simd::WMat {
                data: data.get()?.bytes(),
                row_bytes: *row_bytes,
                k: self.cols,
                group: *group,
            }),
            WeightStorage::Dense(_) => None,
        }
    }

    /// The bytes of row `r` of a mapped matrix.
    fn row_bytes(&self, r: usize) -> &[u8] {
        match &self.storage {
            WeightStorage::Mapped {
                file,
                info,
                row_bytes,
                ..
            } => &file.tensor_data(info)[r * row_bytes..(r + 1) * row_bytes],
            WeightStorage::Dense(_) | WeightStorage::Packed { .. } => &[],
        }
    }

    fn dense(&self) -> Option<&[f32]> {
        match &self.storage {
            WeightStorage::Dense(v) => Some(v),
            WeightStorage::Mapped { .. } | WeightStorage::Packed { .. } => None,
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
        let (rows, cols) = super::matrix_shape(info)?;
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
                // The fast kernels' layout, when they read an interleaved
                // one. Embedding tables stay in the map, but read a tied
                // output head's packed copy once there is one.
                let group = self
                    .fast
                    .filter(|k| k.group > 0 && k.gemm(info.ty).is_some())
                    .filter(|_| cols.is_multiple_of(32))
                    .map(|k| k.group);
                match (group, op) {
                    (Some(g), Op::MatMul) => {
                        let slot = self.packed.slot(file, info);
                        if slot.get().is_none() {
                            let p = pack::pack(file, info, info.ty, g, rows, row_bytes)?;
                            let _ = slot.set(p);
                        }
                        WeightStorage::Packed {
                            data: slot,
                            row_bytes,
                            group: g,
                        }
                    }
                    _ => WeightStorage::Mapped {
                        file: Arc::clone(file),
                        info: info.clone(),
                        row_bytes,
                        tied: group.map(|g| (self.packed.slot(file, info), g)),
                    },
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
        matmul::matmul(self, x, w, out)
    }

    fn matmul_many(
        &self,
        x: &CpuTensor,
        ws: &[&CpuWeight],
        outs: &mut [&mut CpuTensor],
    ) -> Result<()> {
        matmul::matmul_many(self, x, ws, outs)
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
        attention::attention(
            &self.pool,
            self.fast.is_some(),
            q,
            kv,
            layer,
            first_slot,
            params,
            out,
        )
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

/// The fast path's kernel sets, exposed for the kernel tests
/// (`runtime/tests/cpu_kernels.rs`) and benches (`runtime/benches/`).
pub mod kernels {
    use super::simd;
    use crate::quants::GgmlType;

    /// Names of the kernel sets this CPU can run, best first ("scalar" last).
    pub fn available() -> Vec<&'static str> {
        simd::available().iter().map(|k| k.name).collect()
    }

    fn find(set: &str) -> Option<simd::Kernels> {
        simd::available().into_iter().find(|k| k.name == set)
    }

    /// Quantize `x` (whole blocks of 32) with `set`'s activation quantizer
    /// into `(qs, d, s)` as `quants::q8_act::quantize_row_ref` lays them out.
    /// `None` if `set` is not available or lengths disagree.
    pub fn quantize(set: &str, x: &[f32]) -> Option<(Vec<i8>, Vec<f32>, Vec<f32>)> {
        let k = find(set)?;
        if !x.len().is_multiple_of(32) {
            return None;
        }
        let (mut qs, mut d, mut s) = (
            vec![0i8; x.len()],
            vec![0.0; x.len() / 32],
            vec![0.0; x.len() / 32],
        );
        (k.quantize)(x, &mut qs, &mut d, &mut s);
        Some((qs, d, s))
    }

    /// `out[t·rows + r] = Σ_c W[r, c] · x[t, c]` for a `rows × k` matrix of
    /// `ty` in `w` and `n_tok` already-quantized activation rows, computed by
    /// `set`'s kernel over the rectangle `row_range × tok_range` only (other
    /// elements of `out` are left alone). `None` when `set` or `ty` is not
    /// available or a length is wrong.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        set: &str,
        ty: GgmlType,
        w: &[u8],
        k: usize,
        qs: &[i8],
        d: &[f32],
        s: &[f32],
        row_range: std::ops::Range<usize>,
        tok_range: std::ops::Range<usize>,
        out: &mut [f32],
    ) -> Option<()> {
        let kern = find(set)?;
        let gemm = kern.gemm(ty)?;
        let row_bytes = ty.row_bytes(k as u64)? as usize;
        let nb = k / 32;
        if !k.is_multiple_of(32)
            || row_bytes == 0
            || !w.len().is_multiple_of(row_bytes)
            || !qs.len().is_multiple_of(k)
        {
            return None;
        }
        let (rows, n_tok) = (w.len() / row_bytes, qs.len() / k);
        if d.len() != n_tok * nb
            || s.len() != n_tok * nb
            || out.len() != rows * n_tok
            || row_range.end > rows
            || tok_range.end > n_tok
        {
            return None;
        }
        let g = kern.group;
        let packed;
        let wm = if g == 0 {
            simd::WMat {
                data: w,
                row_bytes,
                k,
                group: 0,
            }
        } else {
            let mut buf = vec![0u8; rows.div_ceil(g) * g * row_bytes];
            for (src, dst) in w.chunks(g * row_bytes).zip(buf.chunks_mut(g * row_bytes)) {
                simd::pack_group(ty, g, src, row_bytes, dst)?;
            }
            packed = buf;
            simd::WMat {
                data: &packed,
                row_bytes,
                k,
                group: g,
            }
        };
        let mut isum = vec![0i32; d.len()];
        simd::block_isums(qs, &mut isum);
        let xq = simd::XQ {
            qs,
            d,
            s,
            isum: &isum,
            k,
        };
        let mut scratch = Vec::new();
        // SAFETY: ranges and `out`'s size were checked above; single thread.
        unsafe {
            gemm(
                &wm,
                row_range,
                &xq,
                tok_range,
                out.as_mut_ptr(),
                rows,
                &mut scratch,
            )
        };
        Some(())
    }
}
