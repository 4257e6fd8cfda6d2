//! The CUDA backend (feature `cuda`): weights, activations and the KV cache
//! live in device memory; every op is one or two kernel launches on a
//! single stream; a decode step is captured once as a CUDA graph and
//! replayed.
//!
//! - `device.rs`: driver access that never panics, buffers, launches, the
//!   pinned staging arena for per-step host values.
//! - `kernels.rs` + `kernels/*.cu`: the CUDA C sources, NVRTC compilation
//!   for the GPU found, the on-disk PTX cache.
//! - this file: handle types, weight packing, the `Backend` impl and graph
//!   capture/replay.
//!
//! **Graphs.** Every host value an op needs per step (token ids, positions,
//! the first KV slot, output rows, RoPE frequencies) goes through the
//! staging arena: written into page-locked memory and copied to the device
//! on the stream; kernels read it from there. When the same step shape
//! (tokens, outputs) runs twice in a row on one KV cache without any device
//! allocation in between, the third run is captured into a graph, and later
//! runs only rewrite the staged values and replay it. Any allocation (a
//! larger batch, a new session growing scratch) bumps an epoch and the
//! graph is captured afresh next time.

mod device;
pub mod kernels;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use cudarc::driver::sys;

pub use self::device::{driver_present, nvrtc_present};
use self::device::{launch, launch_cluster, launch_smem, Arg, DevBuf, Gpu, PinnedRead, Staging};
use super::{
    AttnParams, Backend, BlockParams, BlockWeights, KvSpec, KvType, Op, Rope, StepInputs,
    Visibility,
};
use crate::error::{Error, Result};
use crate::gguf::{GgufFile, TensorInfo};
use crate::quants::{self, GgmlType};

/// Rows of `x` at or below which matmuls run as mat-vec (decode) kernels.
const MATVEC_MAX_ROWS: usize = 4;

/// How the 4-bit prefill kernels finish (`matmul_q4_*`).
#[derive(Clone, Copy, Debug)]
enum Epilogue {
    /// `out = product`.
    Store,
    /// `out += s · product` (residual projections).
    Add(f32),
    /// Weights are (gate, up): `out = silu(gate product) · up product`.
    Glu,
}

/// Caches of at least this many slots use a grouped-query decode attention
/// kernel (the scalar one; the tensor-core one with `attn_mma: 1`).
const GQA_MIN_CTX: usize = 8192;

/// The CUDA backend. Clones share the device, kernels and scratch.
#[derive(Clone)]
pub struct CudaBackend {
    sh: Arc<Shared>,
}

struct Shared {
    gpu: Gpu,
    k: kernels::Kernels,
    /// Bumped on every device allocation made for activations or scratch;
    /// a graph captured at another epoch is stale.
    epoch: AtomicU64,
    m: Mutex<Mutable>,
    /// Held for a whole forward step, so two sessions' steps never
    /// interleave (a capture in progress must see only its own launches).
    step: Mutex<()>,
    /// Rows per warp of `matvec_q` (as compiled).
    mv_rows: usize,
    /// What the kernels were built with ([`kernels::KernelConfig`]).
    cfg: kernels::KernelConfig,
    /// Prefill producers leave f16 copies for the 4-bit mat-muls (`hmemo`);
    /// `TERN_CUDA_F16_COPY=0` turns it off, for measuring.
    f16_copy: bool,
    /// What decode steps did, for tests (`CudaBackend::step_stats`).
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    captures: AtomicU64,
    replays: AtomicU64,
    prefetches: AtomicU64,
}

/// Counts of what the backend's decode steps did since it opened.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StepStats {
    /// Steps captured as a CUDA graph.
    pub captures: u64,
    /// Graph replays.
    pub replays: u64,
    /// Prefetch hints that queued work on the side stream.
    pub prefetches: u64,
}

/// Scratch and staging, touched under the lock.
struct Mutable {
    staging: Staging,
    /// Entries staged since capture began: (slot, what, values).
    capture_log: Option<Vec<(usize, Staged, Vec<u32>)>>,
    /// This step's inputs, uploaded in one transfer when the step began;
    /// ops asking for the same values get these addresses.
    step: Option<StepBlock>,
    /// Constant arrays (RoPE frequencies) uploaded once, by content.
    consts: Vec<(Vec<u32>, DevBuf)>,
    /// The activation (device address, rows, cols) whose 8-bit
    /// quantization `xq`/`xs` hold, if still current: RMSNorm and SwiGLU
    /// leave it for the mat-vecs that follow, which then skip quantizing.
    /// Every op that writes a tensor clears it for that tensor.
    qmemo: Option<(u64, usize, usize)>,
    xq: Option<DevBuf>,
    xs: Option<DevBuf>,
    /// f16 copies of prefill activations for `matmul_q4_*`, two so a
    /// producer can write the next one while its input is still read.
    xh: [Option<DevBuf>; 2],
    /// The activation (device address, rows, cols) each `xh` buffer holds
    /// the f16 copy of, if still current: prefill's RMSNorm, attention and
    /// SwiGLU write it beside their f32 output, so the mat-mul that follows
    /// skips `to_f16`. Cleared like `qmemo`.
    hmemo: [Option<(u64, usize, usize)>; 2],
    part_o: Option<DevBuf>,
    part_ml: Option<DevBuf>,
    /// Whether a cluster launch fits the GPU, by (kernel, blocks, shared
    /// bytes), asked once each.
    cluster_fits: Vec<((&'static str, u32, u32), bool)>,
    /// Page-locked buffer reads of up to 64 MiB go through (grown on
    /// demand); `TERN_CUDA_PINNED_READ=0` reads into pageable memory.
    pinned: Option<PinnedRead>,
    /// Whether `prefetch` hints are taken now (inside a decode step, with
    /// `KernelConfig::l2_prefetch_kib` set).
    pf_on: bool,
    /// The stream L2 prefetches run on (made on first use).
    side: Option<SideStream>,
    /// With trace logging: events around the last graph replay, and
    /// whether they await reading (the replay's device time is logged by
    /// the read that follows it).
    replay_ev: Option<ReplayEvents>,
    replay_timed: bool,
}

/// Two timing events (a diagnostic), copied out of the lock for one step
/// (the step lock is held meanwhile) and destroyed with the backend's
/// state (`ReplayEvents`).
#[derive(Clone, Copy)]
struct EventPair(sys::CUevent, sys::CUevent);

// SAFETY: plain driver handles, used by one step at a time (the step lock).
unsafe impl Send for EventPair {}

/// The replay-timing events and the context they belong to.
struct ReplayEvents {
    ev: EventPair,
    ctx: Arc<cudarc::driver::CudaContext>,
}

impl Drop for ReplayEvents {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: both events were created on this context by
            // replay_events and are destroyed once.
            unsafe {
                let _ = sys::cuEventDestroy_v2(self.ev.0);
                let _ = sys::cuEventDestroy_v2(self.ev.1);
            }
        }
    }
}

/// A step's inputs on the device: (values, address) per kind.
struct StepBlock {
    entries: Vec<(Staged, Vec<u32>, u64)>,
}

/// What a staged host value was, so a replay can put the new step's
/// values in its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Staged {
    Tokens,
    Positions,
    FirstSlot,
    Outputs,
    Const,
}

impl std::fmt::Debug for CudaBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaBackend({})", self.sh.gpu.name)
    }
}

impl CudaBackend {
    /// Open GPU `ordinal`, compile (or load from cache) the kernels. Fails
    /// with `DeviceUnavailable` when there is no driver, no such device or
    /// no NVRTC; never panics.
    pub fn open(ordinal: usize) -> Result<CudaBackend> {
        Self::open_sized(ordinal, None)
    }

    /// Like [`CudaBackend::open`], for a model of `weight_bytes` (its
    /// tensors' bytes in the file) and hidden size `n_embd`: the launch
    /// order and the mat-vecs' rows a warp are chosen for it
    /// ([`kernels::KernelConfig::for_model`]).
    pub fn open_for(ordinal: usize, weight_bytes: u64, n_embd: usize) -> Result<CudaBackend> {
        Self::open_sized(ordinal, Some((weight_bytes, n_embd)))
    }

    fn open_sized(ordinal: usize, model: Option<(u64, usize)>) -> Result<CudaBackend> {
        let mut cfg = match model {
            Some((b, e)) => kernels::KernelConfig::for_model(b, e),
            None => kernels::KernelConfig::default(),
        };
        // Experiment knobs: variable, field, accepted values (a value out of
        // range is ignored).
        type Knob<'a> = (&'static str, &'a mut u32, fn(u32) -> bool);
        let knobs: [Knob; 18] = [
            // Rows per warp of the decode mat-vecs (1, 2 or 4).
            ("TERN_CUDA_MV_ROWS", &mut cfg.mv_rows, |k| {
                [1, 2, 4].contains(&k)
            }),
            // Which kernels let the next launch before their wait (bits:
            // 1 the small ones, 2 the decode mat-vecs).
            ("TERN_CUDA_PDL_EARLY", &mut cfg.pdl_early, |k| k <= 3),
            // Bytes (KiB) of each weight asked into L2 ahead of its mat-vec.
            (
                "TERN_CUDA_L2_PREFETCH_KIB",
                &mut cfg.l2_prefetch_kib,
                |_| true,
            ),
            // The smallest weight (KiB) prefetched.
            (
                "TERN_CUDA_L2_PREFETCH_MIN_KIB",
                &mut cfg.l2_prefetch_min_kib,
                |_| true,
            ),
            // Key/value stages of the decode attention at head size 128.
            ("TERN_CUDA_ATTN_STAGES_128", &mut cfg.attn_stages_128, |k| {
                [2, 3].contains(&k)
            }),
            // Bytes per bulk prefetch instruction (0: one line each).
            (
                "TERN_CUDA_L2_PREFETCH_CHUNK",
                &mut cfg.l2_prefetch_chunk,
                chunk_ok,
            ),
            // Where a timeline build of the decode block stamps its phases.
            ("TERN_CUDA_FB_PROBE", &mut cfg.fb_probe, |k| k <= 2),
            // Largest cache whose decode runs one cluster launch per block.
            (
                "TERN_CUDA_FUSED_BLOCK",
                &mut cfg.fused_block_max_ctx,
                |_| true,
            ),
            // When the tensor-core decode attention is one split: 1 while
            // the visible keys fit its early tiles, N > 1 while at most N
            // keys, 0 never.
            ("TERN_CUDA_ATTN_ONE_SPLIT", &mut cfg.attn_one_split, |_| {
                true
            }),
            // Blocks in flight per lane of the decode mat-vec.
            ("TERN_CUDA_MV_UNROLL", &mut cfg.mv_unroll, |k| {
                (1..=4).contains(&k)
            }),
            // Row tiles per warp of the 128-token prefill kernel.
            ("TERN_CUDA_MQ_WIDE_MI", &mut cfg.mq_wide_mi, |k| {
                [1, 2].contains(&k)
            }),
            // cp.async stages of the 4-bit prefill kernels.
            ("TERN_CUDA_MQ_STAGES", &mut cfg.mq_stages, |k| {
                (2..=4).contains(&k)
            }),
            // Blocks per SM the 4-bit prefill kernels are compiled to fit.
            ("TERN_CUDA_MQ_WIDE_MINB", &mut cfg.mq_wide_min_blocks, |k| {
                [1, 2].contains(&k)
            }),
            (
                "TERN_CUDA_MQ_NARROW_MINB",
                &mut cfg.mq_narrow_min_blocks,
                |k| (1..=4).contains(&k),
            ),
            // Weight reads of the decode mat-vecs before the dependent-launch
            // wait, and the largest launch (weights in KiB) that makes the
            // L2 prefetch.
            ("TERN_CUDA_MV_PREFETCH", &mut cfg.mv_prefetch, |k| k <= 3),
            (
                "TERN_CUDA_MV_PREFETCH_MAX_KIB",
                &mut cfg.mv_prefetch_max_kib,
                |_| true,
            ),
            // Decode attention on the tensor cores: never, long caches, always.
            ("TERN_CUDA_ATTN_MMA", &mut cfg.attn_mma, |k| k <= 2),
            // Warps per mat-vec row, fixed.
            ("TERN_CUDA_MV_KSPLIT", &mut cfg.mv_ksplit, |k| {
                [1, 2, 4].contains(&k)
            }),
        ];
        for (name, field, ok) in knobs {
            if let Some(k) = std::env::var(name)
                .ok()
                .and_then(|v| v.parse::<u32>().ok())
                .filter(|&k| ok(k))
            {
                *field = k;
            }
        }
        CudaBackend::open_with(ordinal, &cfg)
    }

    /// Like [`CudaBackend::open`], with kernels built for `cfg` (the kernel
    /// harness compares configurations this way).
    pub fn open_with(ordinal: usize, cfg: &kernels::KernelConfig) -> Result<CudaBackend> {
        if !(1..=4).contains(&cfg.mv_rows)
            || !(1..=4).contains(&cfg.mv_unroll)
            || ![0, 1, 2, 4].contains(&cfg.mv_ksplit)
            || ![1, 2].contains(&cfg.mq_wide_mi)
            || cfg.mv_prefetch > 3
            || ![2, 3].contains(&cfg.attn_stages_128)
            || !chunk_ok(cfg.l2_prefetch_chunk)
            || cfg.attn_mma > 2
            || !(2..=4).contains(&cfg.mq_stages)
            || !(1..=4).contains(&cfg.mq_narrow_min_blocks)
            || ![1, 2].contains(&cfg.mq_wide_min_blocks)
        {
            return Err(Error::Gpu {
                op: "open".into(),
                msg: format!("kernel configuration out of range: {cfg:?}"),
            });
        }
        let gpu = Gpu::open(ordinal)?;
        let mut cfg = *cfg;
        cfg.timeline = gpu.tl.as_ref().map_or(0, |t| t.buf.ptr);
        // Three key/value stages at head size 128 take 106 KiB of shared
        // memory a block: more than sm_86/sm_89 allow (99 KiB). Two there.
        if cfg.attn_stages_128 > 2
            && kernels::dynamic_smem(&cfg, "attn_decode_mma_128") as usize > gpu.smem_optin
        {
            log::debug!(
                "cuda: {} KiB of shared memory a block: 2 attention stages at head size 128",
                gpu.smem_optin / 1024
            );
            cfg.attn_stages_128 = 2;
        }
        let cfg = &cfg;
        let k = kernels::Kernels::load(&gpu, cfg)?;
        if let Some(t) = gpu.tl.as_ref() {
            let _ = t.names.set(
                kernels::KERNEL_NAMES
                    .iter()
                    .map(|&n| (k.get(n) as usize, n))
                    .collect(),
            );
        }
        let staging = Staging::new(&gpu)?;
        log::info!(
            "cuda: {} (sm_{}{}, {:.1} GiB)",
            gpu.name,
            gpu.cc.0,
            gpu.cc.1,
            gpu.total_mem as f64 / (1u64 << 30) as f64
        );
        Ok(CudaBackend {
            sh: Arc::new(Shared {
                gpu,
                k,
                epoch: AtomicU64::new(0),
                stats: Stats::default(),
                m: Mutex::new(Mutable {
                    staging,
                    capture_log: None,
                    step: None,
                    consts: Vec::new(),
                    qmemo: None,
                    xq: None,
                    xs: None,
                    xh: [None, None],
                    hmemo: [None, None],
                    part_o: None,
                    part_ml: None,
                    cluster_fits: Vec::new(),
                    pinned: None,
                    pf_on: false,
                    side: None,
                    replay_ev: None,
                    replay_timed: false,
                }),
                step: Mutex::new(()),
                mv_rows: cfg.mv_rows as usize,
                cfg: *cfg,
                f16_copy: std::env::var("TERN_CUDA_F16_COPY").map_or(true, |v| v != "0"),
            }),
        })
    }

    /// The device's name ("NVIDIA H200").
    pub fn device_name(&self) -> &str {
        &self.sh.gpu.name
    }

    /// Multiprocessors on the device.
    pub fn sm_count(&self) -> usize {
        self.sh.gpu.sm_count
    }

    /// Compute capability (major, minor).
    pub fn compute_capability(&self) -> (i32, i32) {
        self.sh.gpu.cc
    }

    /// Wait for all queued work (for timing).
    pub fn synchronize(&self) -> Result<()> {
        self.sh.gpu.sync("synchronize")
    }

    /// Index of the largest logit of each row of `x`, computed on the
    /// device (greedy decoding without copying the logits back).
    pub fn argmax_rows(&self, x: &CudaTensor, out: &mut [u32]) -> Result<()> {
        let _step = self.step_guard();
        if out.len() != x.rows {
            return Err(shape_err(
                "argmax",
                format!("{} outputs for {} rows", out.len(), x.rows),
            ));
        }
        let g = self.gpu()?;
        let buf = DevBuf::new(g, x.rows.max(1) * 4, "argmax")?;
        launch(
            g,
            self.f("argmax_rows"),
            "argmax",
            (x.rows as u32, 1, 1),
            256,
            &mut [
                Arg::Ptr(x.buf.ptr),
                Arg::I32(x.cols as i32),
                Arg::Ptr(buf.ptr),
            ],
        )?;
        buf.download(g, out)
    }

    fn gpu(&self) -> Result<&Gpu> {
        self.sh.gpu.bind()?;
        Ok(&self.sh.gpu)
    }

    fn f(&self, name: &str) -> sys::CUfunction {
        self.sh.k.get(name)
    }

    fn lock(&self) -> MutexGuard<'_, Mutable> {
        // A panic while holding the lock leaves only scratch pointers
        // behind, which stay valid: recover the guard.
        self.sh.m.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Hold off other threads' steps: a stream operation issued while
    /// another thread captures a graph would be recorded into it.
    fn step_guard(&self) -> MutexGuard<'_, ()> {
        self.sh.step.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new device allocation may reuse a freed tensor's address: the
    /// quantization memo must not match it.
    fn forget_memo(&self) {
        let mut m = self.lock();
        m.qmemo = None;
        m.hmemo = [None, None];
    }

    fn bump(&self) {
        self.sh.epoch.fetch_add(1, Ordering::SeqCst);
    }

    fn epoch(&self) -> u64 {
        self.sh.epoch.load(Ordering::SeqCst)
    }

    /// Stage `vals` for the device; returns its device address.
    fn stage(&self, m: &mut Mutable, what: Staged, vals: &[u32]) -> Result<u64> {
        let g = self.gpu()?;
        if let Some(st) = m.step.as_ref() {
            if let Some((_, _, ptr)) = st.entries.iter().find(|(w, v, _)| *w == what && v == vals) {
                return Ok(*ptr);
            }
        }
        if what == Staged::Const {
            if let Some((_, b)) = m.consts.iter().find(|(v, _)| v == vals) {
                return Ok(b.ptr);
            }
            if m.capture_log.is_none() && m.consts.len() < 64 {
                let b = DevBuf::new(g, vals.len().max(1) * 4, "constants")?;
                b.upload(g, vals)?;
                self.bump();
                let ptr = b.ptr;
                m.consts.push((vals.to_vec(), b));
                return Ok(ptr);
            }
        }
        if !m.staging.fits(vals.len().max(1)) {
            if m.capture_log.is_some() {
                return Err(Error::Gpu {
                    op: "stage".into(),
                    msg: "staging arena full during capture".into(),
                });
            }
            g.sync("stage")?;
            m.staging.cursor = 0;
            // The step block at the start of the arena is overwritten from
            // here on: later ops stage their own values.
            m.step = None;
        }
        let (slot, ptr) = m.staging.push(g, vals)?;
        if let Some(log) = m.capture_log.as_mut() {
            log.push((slot, what, vals.to_vec()));
        }
        Ok(ptr)
    }

    /// Make sure scratch `which` holds at least `bytes`.
    fn ensure(&self, slot: &mut Option<DevBuf>, bytes: usize, what: &str) -> Result<u64> {
        if slot.as_ref().is_none_or(|b| b.bytes < bytes) {
            *slot = None;
            let b = DevBuf::new(self.gpu()?, bytes.next_power_of_two(), what)?;
            self.bump();
            *slot = Some(b);
        }
        Ok(slot.as_ref().map_or(0, |b| b.ptr))
    }
}

/// An f32 activation `[rows, cols]` in device memory; the buffer may be
/// larger than `rows · cols` (capacity kept across batches).
pub struct CudaTensor {
    rows: usize,
    cols: usize,
    buf: DevBuf,
}

/// A weight in device memory, packed for the kernels (see
/// `kernels/common.cuh` for the layouts).
pub struct CudaWeight {
    name: String,
    ty: GgmlType,
    rows: usize,
    cols: usize,
    buf: DevBuf,
}

/// A session's KV cache, plus the decode graphs captured over it.
pub struct CudaKvCache {
    spec: KvSpec,
    layers: Vec<(DevBuf, DevBuf)>,
    graph: Option<StepGraph>,
    /// The last eager step: (shape, epoch before, epoch after).
    last_eager: Option<((usize, usize, bool), u64, u64)>,
}

struct StepGraph {
    /// (tokens, outputs, whether the decode attention runs as one split).
    shape: (usize, usize, bool),
    epoch: u64,
    exec: sys::CUgraphExec,
    graph: sys::CUgraph,
    log: Vec<(usize, Staged, Vec<u32>)>,
    /// The captured launches' timeline labels (empty unless
    /// `TERN_CUDA_TIMELINE` is set), repeated on each replay.
    labels: Vec<String>,
}

// SAFETY: the graph handles are only used under the backend's step lock.
unsafe impl Send for StepGraph {}

impl Drop for Shared {
    fn drop(&mut self) {
        if let Some(r) = self.gpu.profile_report() {
            eprint!("{r}");
        }
        if let Some(t) = self.gpu.tl.as_ref() {
            if let Err(e) = t.dump(&self.gpu) {
                log::warn!("cuda timeline not written: {e}");
            }
        }
    }
}

impl Drop for StepGraph {
    fn drop(&mut self) {
        // SAFETY: created by end_capture/instantiate, destroyed once.
        unsafe {
            let _ = sys::cuGraphExecDestroy(self.exec);
            let _ = sys::cuGraphDestroy(self.graph);
        }
    }
}

fn shape_err(op: &str, detail: String) -> Error {
    Error::InvalidBatch(format!("cuda {op}: {detail}"))
}

fn ty_code(ty: GgmlType) -> i32 {
    match ty {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 8,
        _ => -1,
    }
}

/// RoPE frequencies as the staging arena's u32 words (each f64 low word
/// first), which the kernels read back as a `double` table.
/// Whether the fused RoPE + KV-write kernels take these shapes (the same
/// frequencies and rotated width for q and k, whole pairs, one position
/// per row, slots inside the cache); otherwise the separate ops run and
/// explain any error.
#[allow(clippy::too_many_arguments)]
fn rope_kv_fits(
    spec: &KvSpec,
    q: &CudaTensor,
    k: &CudaTensor,
    v: &CudaTensor,
    positions: &[u32],
    rope_q: &Rope,
    rope_k: &Rope,
    layer: usize,
    first_slot: usize,
) -> bool {
    let width = spec.n_head_kv * spec.head_dim;
    rope_q.inv_freq == rope_k.inv_freq
        && rope_q.n_rot == rope_k.n_rot
        && rope_q.head_dim == spec.head_dim
        && rope_k.head_dim == spec.head_dim
        && rope_k.n_head == spec.n_head_kv
        && rope_q.n_rot <= rope_q.head_dim
        && rope_q.inv_freq.len() == rope_q.n_rot / 2
        && spec.head_dim.is_multiple_of(2)
        && positions.len() == q.rows
        && q.cols == rope_q.n_head * spec.head_dim
        && (k.rows, k.cols) == (q.rows, width)
        && (v.rows, v.cols) == (q.rows, width)
        && layer < spec.n_layer
        && first_slot + q.rows <= spec.n_ctx
}

/// Threads per block of `fused_block_*` (`FB_THREADS` in block.cu).
const FB_THREADS: usize = 512;
/// Most q/k/v heads one block of it may own (`FB_MAXH`).
const FB_MAXH: usize = 8;

/// Bytes `fb_load_slice` (block.cu) puts in shared memory for rows
/// `r0..r1` of a packed `rows × cols` weight of type `ty`.
fn fb_slice_bytes(ty: GgmlType, rows: usize, cols: usize, r0: usize, r1: usize) -> usize {
    if r1 <= r0 {
        return 0;
    }
    let nb = cols / 32;
    let qb = if ty == GgmlType::Q8_0 { 32 } else { 16 };
    let mut n = (r1 - r0) * nb * qb;
    let parts = if ty == GgmlType::Q4_1 { 2 } else { 1 };
    for p in 0..parts {
        let sec = rows * nb * qb + p * rows * nb * 2;
        let (st, en) = (sec + r0 * nb * 2, sec + r1 * nb * 2);
        n += en.next_multiple_of(16) - (st & !15);
    }
    n
}

/// The shape of one decoder block, as `fused_block_*` sees it.
#[derive(Clone, Copy, Debug)]
struct FbShape {
    e: usize,
    f: usize,
    hq: usize,
    hkv: usize,
    d: usize,
    /// q, k, v, o, gate, up, down.
    ty: [GgmlType; 7],
}

/// Dynamic shared memory `fused_block_*` needs with clusters of `nb`
/// blocks (the largest block's), or `None` when the shape does not fit its
/// limits (heads per block, rows per block). Mirrors block.cu's layout.
fn fb_smem(s: &FbShape, nb: usize) -> Option<usize> {
    let ht = s.hq + 2 * s.hkv;
    let (rpb, upb) = (s.e.div_ceil(nb), s.f.div_ceil(nb).next_multiple_of(32));
    let maxh = ht.div_ceil(nb);
    if maxh > FB_MAXH || rpb > 2048 || upb > 2048 || s.e > 8 * FB_THREADS {
        return None;
    }
    let a4 = |n: usize| n.next_multiple_of(4);
    let qw = s.e.max(s.hq * s.d);
    let floats = a4(s.e)
        + a4(maxh * s.d)
        + 2 * a4(s.e)
        + FB_THREADS
        + FB_THREADS * 8
        + 32
        + 2 * (qw / 32).div_ceil(2) * 2
        + 2 * (s.f / 32).div_ceil(2) * 2;
    // The 8-bit input and the pushed 8-bit silu(g)·u.
    let quant = qw.next_multiple_of(16) + s.f.next_multiple_of(16);
    let mut most = 0;
    for b in 0..nb {
        let mut n = 0;
        let mut j = b;
        while j < ht {
            let (ty, rows, h) = if j < s.hq {
                (s.ty[0], s.hq * s.d, j)
            } else if j < s.hq + s.hkv {
                (s.ty[1], s.hkv * s.d, j - s.hq)
            } else {
                (s.ty[2], s.hkv * s.d, j - s.hq - s.hkv)
            };
            n += fb_slice_bytes(ty, rows, s.e, h * s.d, (h + 1) * s.d);
            j += nb;
        }
        let (r0, u0) = ((b * rpb).min(s.e), (b * upb).min(s.f));
        let (r1, u1) = ((r0 + rpb).min(s.e), (u0 + upb).min(s.f));
        n += fb_slice_bytes(s.ty[3], s.e, s.hq * s.d, r0, r1);
        n += fb_slice_bytes(s.ty[4], s.f, s.e, u0, u1);
        n += fb_slice_bytes(s.ty[5], s.f, s.e, u0, u1);
        n += fb_slice_bytes(s.ty[6], s.e, s.f, r0, r1);
        most = most.max(n);
    }
    Some(floats * 4 + quant + most)
}

fn freq_words(inv_freq: &[f64]) -> Vec<u32> {
    inv_freq
        .iter()
        .flat_map(|f| {
            let b = f.to_bits();
            [b as u32, (b >> 32) as u32]
        })
        .collect()
}

/// Blocks per token a decode attention aims for (the key splits are sized
/// from it): 256, or `TERN_CUDA_ATTN_BLOCKS` (64..=4096) for experiments.
fn attn_blocks() -> usize {
    static V: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *V.get_or_init(|| {
        std::env::var("TERN_CUDA_ATTN_BLOCKS")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|v| (64..=4096).contains(v))
            .unwrap_or(256)
    })
}

fn blocks(n: usize, per: usize) -> u32 {
    n.div_ceil(per).max(1) as u32
}

/// Split GGML blocks into the kernels' layout: all quant bytes, then the
/// f16 scales, then (Q4_1) the f16 minimums. F32 and F16 stay as they are.
pub fn pack_weight(ty: GgmlType, data: &[u8], rows: usize, cols: usize) -> Result<Vec<u8>> {
    let nb = cols / 32;
    let (bsz, qbytes, has_m) = match ty {
        GgmlType::F32 | GgmlType::F16 => return Ok(data.to_vec()),
        GgmlType::Q4_0 => (18, 16, false),
        GgmlType::Q4_1 => (20, 16, true),
        GgmlType::Q8_0 => (34, 32, false),
        other => {
            return Err(Error::UnsupportedType {
                tensor: "<weight>".into(),
                ty: other,
                backend: "cuda",
            })
        }
    };
    let n = rows * nb;
    if data.len() != n * bsz {
        return Err(Error::BadLength {
            what: "cuda weight packing".into(),
            expected: (n * bsz) as u64,
            got: data.len() as u64,
        });
    }
    let mut out = vec![0u8; n * qbytes + n * 2 * if has_m { 2 } else { 1 }];
    let (qs, rest) = out.split_at_mut(n * qbytes);
    let (ds, ms) = rest.split_at_mut(n * 2);
    for (i, blk) in data.chunks_exact(bsz).enumerate() {
        ds[2 * i..2 * i + 2].copy_from_slice(&blk[0..2]);
        let q0 = if has_m {
            ms[2 * i..2 * i + 2].copy_from_slice(&blk[2..4]);
            4
        } else {
            2
        };
        qs[i * qbytes..(i + 1) * qbytes].copy_from_slice(&blk[q0..q0 + qbytes]);
    }
    Ok(out)
}

impl CudaBackend {
    fn matmul_impl(&self, x: &CudaTensor, w: &CudaWeight, out: &mut CudaTensor) -> Result<()> {
        self.wrote(out);
        if x.cols != w.cols || out.cols != w.rows || out.rows != x.rows {
            return Err(shape_err(
                "matmul",
                format!(
                    "[{}, {}] · {} [{}, {}]ᵀ into [{}, {}]",
                    x.rows, x.cols, w.name, w.rows, w.cols, out.rows, out.cols
                ),
            ));
        }
        let g = self.gpu()?;
        let ty = ty_code(w.ty);
        let (rows, cols, ntok) = (w.rows, w.cols, x.rows);
        if ntok == 0 {
            return Ok(());
        }
        if ntok <= MATVEC_MAX_ROWS {
            if matches!(w.ty, GgmlType::F32 | GgmlType::F16) {
                return launch(
                    g,
                    self.f("matvec_f"),
                    "matvec",
                    (blocks(rows, 4), 1, 1),
                    128,
                    &mut [
                        Arg::Ptr(w.buf.ptr),
                        Arg::I32(ty),
                        Arg::I32(rows as i32),
                        Arg::I32(cols as i32),
                        Arg::Ptr(x.buf.ptr),
                        Arg::I32(ntok as i32),
                        Arg::Ptr(out.buf.ptr),
                    ],
                );
            }
            let (xq, xs) = self.quantize_x(x)?;
            return self.matvec_q(w, xq, xs, ntok, out, None);
        }
        if self.q4_prefill_fits(w, ntok) {
            return self.matmul_q4(x, &[w], &mut [out], Epilogue::Store);
        }
        // Big tiles only when they still fill the GPU.
        let big = rows >= 2048 && ntok >= 128;
        let (kernel, tile, threads) = if big {
            ("matmul_mma_big", 128, 256)
        } else {
            ("matmul_mma", 64, 128)
        };
        launch(
            g,
            self.f(kernel),
            "matmul",
            (blocks(rows, tile), blocks(ntok, tile), 1),
            threads,
            &mut [
                Arg::Ptr(w.buf.ptr),
                Arg::I32(ty),
                Arg::I32(rows as i32),
                Arg::I32(cols as i32),
                Arg::Ptr(x.buf.ptr),
                Arg::I32(ntok as i32),
                Arg::Ptr(out.buf.ptr),
            ],
        )
    }

    /// Whether the 4-bit prefill kernels take `w` for `ntok` tokens.
    fn q4_prefill_fits(&self, w: &CudaWeight, ntok: usize) -> bool {
        self.sh.cfg.prefill_q4
            && ntok > MATVEC_MAX_ROWS
            && matches!(w.ty, GgmlType::Q4_0 | GgmlType::Q4_1)
            && w.cols > 0
            && w.cols.is_multiple_of(64)
    }

    /// Prefill products of `x` with one to three 4-bit weights of one type
    /// (q/k/v, gate/up) in one launch, after one f16 conversion of `x`,
    /// finished by `epi`. The caller has checked shapes and
    /// [`Self::q4_prefill_fits`].
    fn matmul_q4(
        &self,
        x: &CudaTensor,
        ws: &[&CudaWeight],
        outs: &mut [&mut CudaTensor],
        epi: Epilogue,
    ) -> Result<()> {
        let g = self.gpu()?;
        let n = x.rows * x.cols;
        let key = Some((x.buf.ptr, x.rows, x.cols));
        let (xh, fresh) = {
            let mut m = self.lock();
            match m.hmemo.iter().position(|h| *h == key) {
                Some(i) => (m.xh[i].as_ref().map_or(0, |b| b.ptr), false),
                None => {
                    let p = self.f16_slot(&mut m, 0, n)?;
                    m.hmemo[0] = key;
                    (p, true)
                }
            }
        };
        if fresh {
            launch(
                g,
                self.f("to_f16"),
                "to_f16",
                (blocks(n / 8, 256), 1, 1),
                256,
                &mut [Arg::Ptr(x.buf.ptr), Arg::I64(n as i64), Arg::Ptr(xh)],
            )?;
        }
        // 128-token tiles reuse each weight tile more, but only pay when
        // they fill the GPU at least twice over: measured on the 8B shapes
        // (docs/cuda-kernel-notes.md), the 4096- and 4608-row products ran
        // faster as 64-token tiles (several blocks per SM, one wave) and
        // only the 32768-row gate/up as 128.
        let glu = matches!(epi, Epilogue::Glu);
        // SwiGLU's output also goes to f16 for the down projection.
        let outh = if glu {
            self.f16_out(outs[0], Some(xh))?
        } else {
            0
        };
        let rows128: usize = if glu {
            2 * ws[0].rows.div_ceil(128)
        } else {
            ws.iter().map(|w| w.rows.div_ceil(128)).sum()
        };
        let wide = rows128 * x.rows.div_ceil(128) >= 2 * self.sh.k.mq_slots * g.sm_count;
        let (mut kernel, bm, bn, threads) = if wide {
            ("matmul_q4_128", 128, 128, 256)
        } else {
            ("matmul_q4_64", 128, 64, 128)
        };
        if !wide && x.cols <= 4096 {
            // A grid just over one wave of 2 blocks per SM (the 8B's q/k/v:
            // 288 blocks, 264 slots) runs as one wave of the 3-per-SM
            // build: 174 → 144 µs measured. Its spills cost more than a
            // wave on long rows (4096×16384: 382 → 552 µs), hence the cap.
            let blocks = rows128 * x.rows.div_ceil(64);
            let waves = |slots: usize| blocks.div_ceil(slots.max(1) * g.sm_count);
            if waves(self.sh.k.mq64_3_slots) < waves(self.sh.k.mq64_slots) {
                kernel = "matmul_q4_64_3";
            }
        }
        // GLU: one block takes bm/2 rows of the gate and the same of up.
        let tiles: Vec<usize> = if glu {
            vec![ws[0].rows.div_ceil(bm / 2)]
        } else {
            ws.iter().map(|w| w.rows.div_ceil(bm)).collect()
        };
        let total: usize = tiles.iter().sum();
        let smem = kernels::dynamic_smem(&self.sh.cfg, kernel);
        let mut args = Vec::with_capacity(15);
        for i in 0..3 {
            // Unused slots repeat the last weight but get no blocks (GLU
            // has two weights and one output).
            let k = i.min(ws.len() - 1);
            args.extend([
                Arg::Ptr(ws[k].buf.ptr),
                Arg::I32(ws[k].rows as i32),
                Arg::Ptr(outs[i.min(outs.len() - 1)].buf.ptr),
            ]);
        }
        args.extend([
            Arg::I32(tiles[0] as i32),
            Arg::I32(tiles.get(1).copied().unwrap_or(0) as i32),
            Arg::I32(ty_code(ws[0].ty)),
            Arg::I32(x.cols as i32),
            Arg::Ptr(xh),
            Arg::I32(x.rows as i32),
            Arg::I32(matches!(epi, Epilogue::Add(_)) as i32),
            Arg::F32(match epi {
                Epilogue::Add(s) => s,
                _ => 1.0,
            }),
            Arg::I32(glu as i32),
            Arg::Ptr(outh),
        ]);
        launch_smem(
            g,
            self.f(kernel),
            "matmul",
            (total as u32, blocks(x.rows, bn), 1),
            threads,
            smem,
            &mut args,
        )
    }

    /// f16 buffer `i` grown to `n` values; a new allocation forgets what
    /// it held.
    fn f16_slot(&self, m: &mut Mutable, i: usize, n: usize) -> Result<u64> {
        let before = m.xh[i].as_ref().map(|b| b.ptr);
        let mut slot = m.xh[i].take();
        let p = self.ensure(&mut slot, n * 2, "f16 activations");
        m.xh[i] = slot;
        if before != m.xh[i].as_ref().map(|b| b.ptr) {
            m.hmemo[i] = None;
        }
        p
    }

    /// Where a prefill producer writing `out` should leave its f16 copy
    /// (the buffer not holding `avoid`, the producer's own input), and
    /// records it there; 0 (no copy) when f16 copies are off
    /// (`TERN_CUDA_F16_COPY=0`) or `out` is too narrow for the 4-bit
    /// mat-mul.
    fn f16_out(&self, out: &CudaTensor, avoid: Option<u64>) -> Result<u64> {
        if !self.sh.f16_copy || out.rows <= MATVEC_MAX_ROWS || !out.cols.is_multiple_of(64) {
            return Ok(0);
        }
        let mut m = self.lock();
        let i = match avoid {
            Some(p) if m.xh[0].as_ref().is_some_and(|b| b.ptr == p) => 1,
            _ => 0,
        };
        let p = self.f16_slot(&mut m, i, out.rows * out.cols)?;
        m.hmemo[i] = Some((out.buf.ptr, out.rows, out.cols));
        Ok(p)
    }

    /// Device addresses of a rotation's inputs: the positions, the
    /// frequency table and the first KV slot.
    fn stage_rope(
        &self,
        positions: &[u32],
        rope: &Rope,
        first_slot: usize,
    ) -> Result<(u64, u64, u64)> {
        let freq = freq_words(&rope.inv_freq);
        let mut m = self.lock();
        let pos = self.stage(&mut m, Staged::Positions, positions)?;
        // An empty table (n_rot 0) still needs a valid address.
        let fr = self.stage(
            &mut m,
            Staged::Const,
            if freq.is_empty() { &[0, 0] } else { &freq },
        )?;
        let fs = self.stage(&mut m, Staged::FirstSlot, &[first_slot as u32])?;
        Ok((pos, fr, fs))
    }

    /// The quantization scratch, grown to `nblk` blocks; returns (xq, xs).
    fn qscratch(&self, m: &mut Mutable, nblk: usize) -> Result<(u64, u64)> {
        let before = (m.xq.as_ref().map(|b| b.ptr), m.xs.as_ref().map(|b| b.ptr));
        let mut xq_slot = m.xq.take();
        let xq = self.ensure(&mut xq_slot, nblk * 32, "activation quantization");
        m.xq = xq_slot;
        let mut xs_slot = m.xs.take();
        let xs = self.ensure(&mut xs_slot, nblk * 8, "activation scales");
        m.xs = xs_slot;
        if before != (m.xq.as_ref().map(|b| b.ptr), m.xs.as_ref().map(|b| b.ptr)) {
            m.qmemo = None;
        }
        Ok((xq?, xs?))
    }

    /// `t` is about to be overwritten: its quantization is stale.
    fn wrote(&self, t: &CudaTensor) {
        let mut m = self.lock();
        for h in m.hmemo.iter_mut() {
            if h.is_some_and(|(p, _, _)| p == t.buf.ptr) {
                *h = None;
            }
        }
        if m.qmemo.is_some_and(|(p, _, _)| p == t.buf.ptr) {
            m.qmemo = None;
        }
    }

    /// Quantize the rows of `x` to 8 bits per 32-block into the scratch
    /// buffers (unless they already hold it); returns their addresses.
    fn quantize_x(&self, x: &CudaTensor) -> Result<(u64, u64)> {
        let g = self.gpu()?;
        let nblk = x.rows * x.cols / 32;
        let mut m = self.lock();
        let (xq, xs) = self.qscratch(&mut m, nblk)?;
        if m.qmemo == Some((x.buf.ptr, x.rows, x.cols)) {
            return Ok((xq, xs));
        }
        m.qmemo = Some((x.buf.ptr, x.rows, x.cols));
        drop(m);
        launch(
            g,
            self.f("quantize_act"),
            "quantize_act",
            (blocks(nblk, 8), 1, 1),
            256,
            &mut [
                Arg::Ptr(x.buf.ptr),
                Arg::I64(nblk as i64),
                Arg::Ptr(xq),
                Arg::Ptr(xs),
            ],
        )?;
        Ok((xq, xs))
    }

    /// Quantized mat-vec of already quantized activations; with
    /// `add = Some(s)`, `out += s · product` instead of `out = product`.
    fn matvec_q(
        &self,
        w: &CudaWeight,
        xq: u64,
        xs: u64,
        ntok: usize,
        out: &mut CudaTensor,
        add: Option<f32>,
    ) -> Result<()> {
        let g = self.gpu()?;
        let kernel = if ntok == 1 { "matvec_q1" } else { "matvec_q" };
        // 4 warps per block, ks of them per row, mv_rows rows per warp.
        let ks = self.mv_ksplit(w.rows, w.cols);
        launch(
            g,
            self.f(kernel),
            "matvec",
            (blocks(w.rows, (4 / ks) * self.sh.mv_rows), 1, 1),
            128,
            &mut [
                Arg::Ptr(w.buf.ptr),
                Arg::I32(ty_code(w.ty)),
                Arg::I32(w.rows as i32),
                Arg::I32(w.cols as i32),
                Arg::Ptr(xq),
                Arg::Ptr(xs),
                Arg::I32(ntok as i32),
                Arg::Ptr(out.buf.ptr),
                Arg::I32(add.is_some() as i32),
                Arg::F32(add.unwrap_or(0.0)),
                Arg::I32(ks as i32),
                self.prefetch_arg(w.buf.bytes),
            ],
        )
    }

    /// The mat-vecs' `pf` argument for weights of `bytes` in all: which
    /// reads happen before the wait for the previous kernel
    /// (`KernelConfig::mv_prefetch`), the L2 prefetch only up to
    /// `KernelConfig::mv_prefetch_max_kib`.
    fn prefetch_arg(&self, bytes: usize) -> Arg {
        let cfg = &self.sh.cfg;
        let small = bytes <= cfg.mv_prefetch_max_kib as usize * 1024;
        Arg::I32((cfg.mv_prefetch & if small { 3 } else { 2 }) as i32)
    }

    /// Warps per row of the decode mat-vec for this matrix (the
    /// configuration's fixed choice, or [`kernels::mv_ksplit_auto`]).
    fn mv_ksplit(&self, rows: usize, cols: usize) -> usize {
        match self.sh.cfg.mv_ksplit {
            0 => kernels::mv_ksplit_auto(rows, cols, self.sh.gpu.sm_count) as usize,
            k => k as usize,
        }
    }

    fn elementwise(&self, name: &str, args: &mut [Arg], n: usize) -> Result<()> {
        let g = self.gpu()?;
        launch(g, self.f(name), name, (blocks(n, 256), 1, 1), 256, args)
    }
}

impl Backend for CudaBackend {
    type Tensor = CudaTensor;
    type Weight = CudaWeight;
    type KvCache = CudaKvCache;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn supports(&self, op: Op, ty: GgmlType) -> bool {
        match op {
            Op::Vector => quants::kernels(ty).is_some(),
            Op::Embed | Op::MatMul => ty_code(ty) >= 0,
        }
    }

    fn load_weight(&self, file: &Arc<GgufFile>, info: &TensorInfo, op: Op) -> Result<CudaWeight> {
        if !self.supports(op, info.ty) {
            return Err(Error::UnsupportedType {
                tensor: info.name.clone(),
                ty: info.ty,
                backend: "cuda",
            });
        }
        let (rows, cols) = super::matrix_shape(info)?;
        let _step = self.step_guard();
        let g = self.gpu()?;
        let data = file.tensor_data(info);
        let (ty, bytes) = match op {
            Op::Vector => {
                let mut v = vec![0f32; rows * cols];
                quants::dequantize_row(info.ty, data, &mut v)?;
                let b: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
                (GgmlType::F32, b)
            }
            Op::Embed | Op::MatMul => {
                if cols % 32 != 0 {
                    return Err(Error::Gpu {
                        op: format!("load {}", info.name),
                        msg: format!(
                            "rows of {cols} values: the CUDA kernels need a multiple of 32"
                        ),
                    });
                }
                (info.ty, pack_weight(info.ty, data, rows, cols)?)
            }
        };
        let buf = DevBuf::new(g, bytes.len(), &info.name)?;
        buf.upload(g, &bytes)?;
        Ok(CudaWeight {
            name: info.name.clone(),
            ty,
            rows,
            cols,
            buf,
        })
    }

    fn alloc(&self, rows: usize, cols: usize) -> Result<CudaTensor> {
        let n = rows
            .checked_mul(cols)
            .and_then(|n| n.checked_mul(4))
            .ok_or(Error::OutOfMemory {
                bytes: u64::MAX,
                what: "activation".into(),
            })?;
        let _step = self.step_guard();
        let buf = DevBuf::new(self.gpu()?, n, "activation")?;
        buf.zero(self.gpu()?)?;
        self.bump();
        self.forget_memo();
        Ok(CudaTensor { rows, cols, buf })
    }

    fn shape(&self, t: &CudaTensor) -> (usize, usize) {
        (t.rows, t.cols)
    }

    fn resize_rows(&self, t: &mut CudaTensor, rows: usize) -> Result<()> {
        let need = rows
            .checked_mul(t.cols)
            .and_then(|n| n.checked_mul(4))
            .ok_or(Error::OutOfMemory {
                bytes: u64::MAX,
                what: "activation".into(),
            })?;
        if need > t.buf.bytes {
            t.buf = DevBuf::new(self.gpu()?, need, "activation")?;
            self.bump();
            self.forget_memo();
        }
        t.rows = rows;
        Ok(())
    }

    fn read(&self, t: &CudaTensor, out: &mut [f32]) -> Result<()> {
        self.read_finite(t, out).map(|_| ())
    }

    fn prefetch(&self, ws: &[&CudaWeight]) -> Result<()> {
        let cap = self.sh.cfg.l2_prefetch_kib as usize * 1024;
        let mut m = self.lock();
        if cap == 0 || !m.pf_on {
            return Ok(());
        }
        let min = self.sh.cfg.l2_prefetch_min_kib as usize * 1024;
        let ranges: Vec<(u64, usize)> = ws
            .iter()
            .filter(|w| w.buf.bytes >= min)
            .flat_map(|w| prefetch_ranges(w, cap))
            .collect();
        if ranges.is_empty() {
            return Ok(());
        }
        let g = self.gpu()?;
        if m.side.is_none() {
            match SideStream::new(g) {
                Ok(s) => m.side = Some(s),
                Err(e) => {
                    // A hint: without its stream the step runs as before.
                    log::debug!("cuda: no side stream for prefetches: {e}");
                    m.pf_on = false;
                    return Ok(());
                }
            }
        }
        let f = self.sh.k.get("l2_prefetch");
        let Some(side) = m.side.as_mut() else {
            return Ok(());
        };
        let chunk = self.sh.cfg.l2_prefetch_chunk as usize;
        if let Err(e) = fork_prefetch(g, side, f, &ranges, chunk) {
            // A hint: the step goes on without it (and without further
            // prefetches this step).
            log::debug!("cuda: prefetch not queued: {e}");
            m.pf_on = false;
            return Ok(());
        }
        self.sh.stats.prefetches.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read_finite(&self, t: &CudaTensor, out: &mut [f32]) -> Result<bool> {
        if out.len() != t.rows * t.cols {
            return Err(shape_err(
                "read",
                format!("{} values for [{}, {}]", out.len(), t.rows, t.cols),
            ));
        }
        let _step = self.step_guard();
        let g = self.gpu()?;
        static PINNED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let pinned = *PINNED
            .get_or_init(|| std::env::var_os("TERN_CUDA_PINNED_READ").is_none_or(|v| v != "0"));
        if pinned && out.len() <= 16 << 20 {
            let mut m = self.lock();
            if m.pinned.as_ref().is_none_or(|p| p.len() < out.len()) {
                m.pinned = None;
                // Grown by powers of two; without page-locked memory (a
                // memlock limit) the plain read below still works.
                match PinnedRead::new(g, out.len().next_power_of_two()) {
                    Ok(p) => m.pinned = Some(p),
                    Err(e) => log::debug!("cuda: pinned read buffer: {e}"),
                }
            }
            if let Some(p) = m.pinned.as_mut() {
                let r = p.read(g, &t.buf, out);
                drop(m);
                self.log_replay_time();
                return r;
            }
        }
        t.buf.download(g, out)?;
        self.log_replay_time();
        Ok(crate::backend::all_finite(out))
    }

    fn alloc_kv(&self, spec: &KvSpec) -> Result<CudaKvCache> {
        let elem = match spec.ty {
            KvType::F32 => 4,
            KvType::F16 => 2,
        };
        let per = spec
            .n_ctx
            .checked_mul(spec.n_head_kv * spec.head_dim)
            .and_then(|n| n.checked_mul(elem))
            .ok_or(Error::OutOfMemory {
                bytes: u64::MAX,
                what: "KV cache".into(),
            })?;
        if spec.head_dim > 256 || !spec.head_dim.is_multiple_of(8) {
            return Err(Error::Gpu {
                op: "alloc_kv".into(),
                msg: format!(
                    "head size {} is not supported on CUDA (a multiple of 8, at most 256)",
                    spec.head_dim
                ),
            });
        }
        let _step = self.step_guard();
        let g = self.gpu()?;
        let mut layers = Vec::with_capacity(spec.n_layer);
        for _ in 0..spec.n_layer {
            let k = DevBuf::new(g, per, "KV cache")?;
            let v = DevBuf::new(g, per, "KV cache")?;
            k.zero(g)?;
            v.zero(g)?;
            layers.push((k, v));
        }
        self.bump();
        Ok(CudaKvCache {
            spec: *spec,
            layers,
            graph: None,
            last_eager: None,
        })
    }

    fn embed(
        &self,
        table: &CudaWeight,
        ids: &[u32],
        scale: f32,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.wrote(out);
        if out.rows != ids.len() || out.cols != table.cols {
            return Err(shape_err(
                "embed",
                format!("{} ids into [{}, {}]", ids.len(), out.rows, out.cols),
            ));
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= table.rows) {
            return Err(shape_err(
                "embed",
                format!("token {bad} outside {} rows", table.rows),
            ));
        }
        if ids.is_empty() {
            return Ok(());
        }
        let mut m = self.lock();
        let ids_ptr = self.stage(&mut m, Staged::Tokens, ids)?;
        drop(m);
        let g = self.gpu()?;
        launch(
            g,
            self.f("embed"),
            "embed",
            (ids.len() as u32, 1, 1),
            256,
            &mut [
                Arg::Ptr(table.buf.ptr),
                Arg::I32(ty_code(table.ty)),
                Arg::I64(table.rows as i64),
                Arg::I64(table.cols as i64),
                Arg::Ptr(ids_ptr),
                Arg::F32(scale),
                Arg::Ptr(out.buf.ptr),
            ],
        )
    }

    fn rms_norm(
        &self,
        x: &CudaTensor,
        w: &CudaWeight,
        eps: f32,
        out: &mut CudaTensor,
    ) -> Result<()> {
        if w.rows * w.cols != x.cols
            || w.ty != GgmlType::F32
            || (out.rows, out.cols) != (x.rows, x.cols)
        {
            return Err(shape_err(
                "rms_norm",
                format!("{} for rows of {}", w.name, x.cols),
            ));
        }
        let g = self.gpu()?;
        self.wrote(out);
        if x.rows <= MATVEC_MAX_ROWS && x.cols.is_multiple_of(32) {
            // Decode: leave the 8-bit quantization for the mat-vecs too.
            let mut m = self.lock();
            let (xq, xs) = self.qscratch(&mut m, x.rows * x.cols / 32)?;
            m.qmemo = Some((out.buf.ptr, out.rows, out.cols));
            drop(m);
            return launch(
                g,
                self.f("rms_norm_q"),
                "rms_norm",
                (blocks(x.cols / 32, 8), x.rows as u32, 1),
                256,
                &mut [
                    Arg::Ptr(x.buf.ptr),
                    Arg::Ptr(w.buf.ptr),
                    Arg::F32(eps),
                    Arg::I32(x.cols as i32),
                    Arg::Ptr(out.buf.ptr),
                    Arg::Ptr(xq),
                    Arg::Ptr(xs),
                ],
            );
        }
        // Prefill: the f16 copy for the 4-bit mat-mul that follows.
        let outh = self.f16_out(out, None)?;
        launch(
            g,
            self.f("rms_norm"),
            "rms_norm",
            (x.rows as u32, 1, 1),
            256,
            &mut [
                Arg::Ptr(x.buf.ptr),
                Arg::Ptr(w.buf.ptr),
                Arg::F32(eps),
                Arg::I32(x.cols as i32),
                Arg::Ptr(out.buf.ptr),
                Arg::Ptr(outh),
            ],
        )
    }

    fn matmul(&self, x: &CudaTensor, w: &CudaWeight, out: &mut CudaTensor) -> Result<()> {
        self.matmul_impl(x, w, out)
    }

    /// Decode-sized batches quantize `x` once for all the weights.
    fn matmul_many(
        &self,
        x: &CudaTensor,
        ws: &[&CudaWeight],
        outs: &mut [&mut CudaTensor],
    ) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(shape_err(
                "matmul_many",
                format!("{} weights for {} outputs", ws.len(), outs.len()),
            ));
        }
        let prefill = (1..=3).contains(&ws.len())
            && ws.iter().zip(outs.iter()).all(|(w, o)| {
                self.q4_prefill_fits(w, x.rows)
                    && w.ty == ws[0].ty
                    && w.cols == x.cols
                    && (o.rows, o.cols) == (x.rows, w.rows)
            });
        if prefill {
            for o in outs.iter() {
                self.wrote(o);
            }
            return self.matmul_q4(x, ws, outs, Epilogue::Store);
        }
        let shared = x.rows > 0
            && x.rows <= MATVEC_MAX_ROWS
            && ws.iter().zip(outs.iter()).all(|(w, o)| {
                !matches!(w.ty, GgmlType::F32 | GgmlType::F16)
                    && w.cols == x.cols
                    && (o.rows, o.cols) == (x.rows, w.rows)
            });
        if !shared {
            for (w, o) in ws.iter().zip(outs.iter_mut()) {
                self.matmul_impl(x, w, o)?;
            }
            return Ok(());
        }
        for o in outs.iter() {
            self.wrote(o);
        }
        let (xq, xs) = self.quantize_x(x)?;
        if x.rows == 1 && (2..=3).contains(&ws.len()) {
            // One launch for all of them.
            let total: usize = ws.iter().map(|w| w.rows).sum();
            let ks = self.mv_ksplit(total, x.cols);
            let per = (4 / ks) * self.sh.mv_rows;
            let nb: Vec<usize> = ws.iter().map(|w| w.rows.div_ceil(per)).collect();
            let mut args = Vec::with_capacity(18);
            for i in 0..3 {
                let k = i.min(ws.len() - 1);
                let (w, o) = (ws[k], &outs[k]);
                args.extend([
                    Arg::Ptr(w.buf.ptr),
                    Arg::I32(ty_code(w.ty)),
                    Arg::I32(w.rows as i32),
                    Arg::Ptr(o.buf.ptr),
                ]);
            }
            // With two weights the third slot repeats the second but gets
            // no blocks.
            let nb2 = if ws.len() == 3 { nb[2] } else { 0 };
            args.extend([
                Arg::I32(nb[0] as i32),
                Arg::I32(nb[1] as i32),
                Arg::I32(x.cols as i32),
                Arg::Ptr(xq),
                Arg::Ptr(xs),
                Arg::I32(ks as i32),
                self.prefetch_arg(ws.iter().map(|w| w.buf.bytes).sum()),
            ]);
            let g = self.gpu()?;
            return launch(
                g,
                self.f("matvec_q1_multi"),
                "matvec",
                ((nb[0] + nb[1] + nb2) as u32, 1, 1),
                128,
                &mut args,
            );
        }
        for (w, o) in ws.iter().zip(outs.iter_mut()) {
            self.matvec_q(w, xq, xs, x.rows, o, None)?;
        }
        Ok(())
    }

    /// Decode: the residual add happens in the mat-vec's epilogue.
    fn matmul_add(
        &self,
        x: &CudaTensor,
        w: &CudaWeight,
        tmp: &mut CudaTensor,
        acc: &mut CudaTensor,
        scale: f32,
    ) -> Result<()> {
        let fused = x.rows > 0
            && x.rows <= MATVEC_MAX_ROWS
            && !matches!(w.ty, GgmlType::F32 | GgmlType::F16)
            && x.cols == w.cols
            && (acc.rows, acc.cols) == (x.rows, w.rows);
        if !fused {
            if x.cols == w.cols
                && (acc.rows, acc.cols) == (x.rows, w.rows)
                && self.q4_prefill_fits(w, x.rows)
            {
                self.wrote(acc);
                return self.matmul_q4(x, &[w], &mut [acc], Epilogue::Add(scale));
            }
            self.matmul_impl(x, w, tmp)?;
            return self.add_scaled(acc, tmp, scale);
        }
        self.wrote(acc);
        let (xq, xs) = self.quantize_x(x)?;
        self.matvec_q(w, xq, xs, x.rows, acc, Some(scale))
    }

    /// Prefill with 4-bit weights: one launch computes both products and
    /// SwiGLU in its epilogue (`up` is left untouched).
    fn matmul_glu(
        &self,
        x: &CudaTensor,
        w_gate: &CudaWeight,
        w_up: &CudaWeight,
        gate: &mut CudaTensor,
        up: &mut CudaTensor,
    ) -> Result<()> {
        let fused = self.q4_prefill_fits(w_gate, x.rows)
            && w_up.ty == w_gate.ty
            && (w_up.rows, w_up.cols) == (w_gate.rows, w_gate.cols)
            && x.cols == w_gate.cols
            && (gate.rows, gate.cols) == (x.rows, w_gate.rows);
        if !fused {
            self.matmul_many(x, &[w_gate, w_up], &mut [&mut *gate, &mut *up])?;
            return self.silu_mul(gate, up);
        }
        self.wrote(gate);
        self.matmul_q4(x, &[w_gate, w_up], &mut [gate], Epilogue::Glu)
    }

    /// One kernel turns the queries and keys and stores keys and values.
    /// Decode (one token): the q/k/v mat-vecs, RoPE and the cache write in
    /// one launch (`matvec_qkv_rope`); anything else takes the default's
    /// separate steps.
    fn qkv_rope_kv_write(
        &self,
        x: &CudaTensor,
        w: [&CudaWeight; 3],
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: &mut CudaTensor,
        positions: &[u32],
        rope_q: &Rope,
        rope_k: &Rope,
        kv: &mut CudaKvCache,
        layer: usize,
        first_slot: usize,
    ) -> Result<()> {
        let spec = kv.spec;
        let width = spec.n_head_kv * spec.head_dim;
        let [wq, wk, wv] = w;
        let fits = x.rows == 1
            && w.iter()
                .all(|w| !matches!(w.ty, GgmlType::F32 | GgmlType::F16) && w.cols == x.cols)
            && x.cols.is_multiple_of(32)
            && (q.rows, q.cols) == (1, wq.rows)
            && wk.rows == width
            && wv.rows == width
            && self.mv_ksplit(wq.rows + 2 * width, x.cols) == 1
            && rope_kv_fits(&spec, q, k, v, positions, rope_q, rope_k, layer, first_slot);
        if !fits {
            self.matmul_many(x, &w, &mut [&mut *q, &mut *k, &mut *v])?;
            return self.rope_kv_write(q, k, v, positions, rope_q, rope_k, kv, layer, first_slot);
        }
        for o in [&*q, &*k, &*v] {
            self.wrote(o);
        }
        let (xq, xs) = self.quantize_x(x)?;
        let (pos, fr, fs) = self.stage_rope(positions, rope_q, first_slot)?;
        let per = 4 * self.sh.mv_rows;
        let nblocks = wq.rows.div_ceil(per) + 2 * width.div_ceil(per);
        let (kc, vc) = &kv.layers[layer];
        let g = self.gpu()?;
        launch(
            g,
            self.f("matvec_qkv_rope"),
            "matvec",
            (nblocks as u32, 1, 1),
            128,
            &mut [
                Arg::Ptr(wq.buf.ptr),
                Arg::I32(ty_code(wq.ty)),
                Arg::I32(wq.rows as i32),
                Arg::Ptr(q.buf.ptr),
                Arg::Ptr(wk.buf.ptr),
                Arg::I32(ty_code(wk.ty)),
                Arg::Ptr(k.buf.ptr),
                Arg::Ptr(wv.buf.ptr),
                Arg::I32(ty_code(wv.ty)),
                Arg::Ptr(v.buf.ptr),
                Arg::I32(width as i32),
                Arg::I32(x.cols as i32),
                Arg::Ptr(xq),
                Arg::Ptr(xs),
                Arg::Ptr(pos),
                Arg::Ptr(fr),
                Arg::I32(spec.head_dim as i32),
                Arg::I32(rope_q.n_rot as i32),
                Arg::Ptr(kc.ptr),
                Arg::Ptr(vc.ptr),
                Arg::Ptr(fs),
                Arg::I32((spec.ty == KvType::F16) as i32),
                self.prefetch_arg(w.iter().map(|w| w.buf.bytes).sum()),
            ],
        )
    }

    fn decode_block(
        &self,
        x: &mut CudaTensor,
        w: &BlockWeights<'_, CudaWeight>,
        p: &BlockParams<'_>,
        positions: &[u32],
        kv: &mut CudaKvCache,
        layer: usize,
        first_slot: usize,
    ) -> Result<bool> {
        let g = self.gpu()?;
        let spec = kv.spec;
        let max_ctx = self.sh.cfg.fused_block_max_ctx as usize;
        if max_ctx == 0 || spec.n_ctx > max_ctx || g.cc.0 < 9 || x.rows != 1 || positions.len() != 1
        {
            return Ok(false);
        }
        let kernel = match spec.head_dim {
            64 => "fused_block_64",
            128 => "fused_block_128",
            _ => return Ok(false),
        };
        let a = p.attn;
        let (e, d, hq, hkv) = (x.cols, spec.head_dim, a.n_head, a.n_head_kv);
        let f = w.ffn_gate.rows;
        let quant = |t: &CudaWeight, rows: usize, cols: usize| {
            matches!(t.ty, GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q8_0)
                && (t.rows, t.cols) == (rows, cols)
        };
        let norm = |t: &CudaWeight| t.ty == GgmlType::F32 && t.rows * t.cols == e;
        let (rq, rk) = (p.rope_q, p.rope_k);
        let fits = spec.ty == KvType::F16
            && layer < spec.n_layer
            && first_slot < spec.n_ctx
            && hkv == spec.n_head_kv
            && hkv > 0
            && hq.is_multiple_of(hkv)
            && a.head_dim == d
            && a.visibility == Visibility::Causal
            && e.is_multiple_of(32)
            && f.is_multiple_of(32)
            && quant(w.attn_q, hq * d, e)
            && quant(w.attn_k, hkv * d, e)
            && quant(w.attn_v, hkv * d, e)
            && quant(w.attn_output, e, hq * d)
            && quant(w.ffn_gate, f, e)
            && quant(w.ffn_up, f, e)
            && quant(w.ffn_down, e, f)
            && norm(w.attn_norm)
            && norm(w.ffn_norm)
            && rq.inv_freq == rk.inv_freq
            && rq.n_rot == rk.n_rot
            && rq.head_dim == d
            && rk.head_dim == d
            && rq.n_rot <= d
            && rq.n_rot.is_multiple_of(2)
            && rq.inv_freq.len() == rq.n_rot / 2;
        if !fits {
            return Ok(false);
        }
        let shape = FbShape {
            e,
            f,
            hq,
            hkv,
            d,
            ty: [
                w.attn_q.ty,
                w.attn_k.ty,
                w.attn_v.ty,
                w.attn_output.ty,
                w.ffn_gate.ty,
                w.ffn_up.ty,
                w.ffn_down.ty,
            ],
        };
        // The largest cluster that fits: more blocks, less work each.
        let mut plan = None;
        for nb in [16usize, 8] {
            let Some(bytes) = fb_smem(&shape, nb).filter(|&b| b <= g.smem_optin) else {
                continue;
            };
            let key = (kernel, nb as u32, bytes as u32);
            let known = self
                .lock()
                .cluster_fits
                .iter()
                .find(|(k, _)| *k == key)
                .map(|v| v.1);
            let ok = match known {
                Some(ok) => ok,
                None => {
                    let n = device::max_active_clusters(
                        g,
                        self.f(kernel),
                        nb as u32,
                        FB_THREADS as u32,
                        bytes as u32,
                    )
                    .unwrap_or(0);
                    log::debug!("cuda: {kernel} as {nb}-block clusters of {bytes} bytes: {n} fit");
                    self.lock().cluster_fits.push((key, n > 0));
                    n > 0
                }
            };
            if ok {
                plan = Some((nb, bytes));
                break;
            }
        }
        let Some((nb, bytes)) = plan else {
            return Ok(false);
        };
        self.wrote(x);
        let (pos, fr, fs) = self.stage_rope(positions, rq, first_slot)?;
        let tys = shape
            .ty
            .iter()
            .enumerate()
            .fold(0i32, |acc, (i, &t)| acc | ty_code(t) << (4 * i));
        let (kc, vc) = &kv.layers[layer];
        launch_cluster(
            g,
            self.f(kernel),
            "decode block",
            nb as u32,
            FB_THREADS as u32,
            bytes as u32,
            &mut [
                Arg::Ptr(x.buf.ptr),
                Arg::Ptr(w.attn_norm.buf.ptr),
                Arg::Ptr(w.ffn_norm.buf.ptr),
                Arg::F32(p.eps),
                Arg::F32(p.residual_scale),
                Arg::Ptr(w.attn_q.buf.ptr),
                Arg::Ptr(w.attn_k.buf.ptr),
                Arg::Ptr(w.attn_v.buf.ptr),
                Arg::Ptr(w.attn_output.buf.ptr),
                Arg::Ptr(w.ffn_gate.buf.ptr),
                Arg::Ptr(w.ffn_up.buf.ptr),
                Arg::Ptr(w.ffn_down.buf.ptr),
                Arg::I32(tys),
                Arg::I32(e as i32),
                Arg::I32(f as i32),
                Arg::I32(hq as i32),
                Arg::I32(hkv as i32),
                Arg::Ptr(pos),
                Arg::Ptr(fr),
                Arg::I32(rq.n_rot as i32),
                Arg::Ptr(kc.ptr),
                Arg::Ptr(vc.ptr),
                Arg::Ptr(fs),
                Arg::F32(a.scale),
            ],
        )?;
        Ok(true)
    }

    fn rope_kv_write(
        &self,
        q: &mut CudaTensor,
        k: &mut CudaTensor,
        v: &CudaTensor,
        positions: &[u32],
        rope_q: &Rope,
        rope_k: &Rope,
        kv: &mut CudaKvCache,
        layer: usize,
        first_slot: usize,
    ) -> Result<()> {
        let spec = kv.spec;
        let width = spec.n_head_kv * spec.head_dim;
        let fits = rope_kv_fits(&spec, q, k, v, positions, rope_q, rope_k, layer, first_slot);
        if !fits || q.rows == 0 {
            // The separate ops check (and explain) every shape themselves.
            self.rope(q, positions, rope_q)?;
            self.rope(k, positions, rope_k)?;
            return self.kv_write(kv, layer, first_slot, k, v);
        }
        self.wrote(q);
        self.wrote(k);
        let (pos, fr, fs) = self.stage_rope(positions, rope_q, first_slot)?;
        let hp = spec.head_dim / 2;
        let n = q.rows * (rope_q.n_head + spec.n_head_kv) * hp + q.rows * width / 2;
        let (kc, vc) = &kv.layers[layer];
        self.elementwise(
            "rope_kv",
            &mut [
                Arg::Ptr(q.buf.ptr),
                Arg::Ptr(k.buf.ptr),
                Arg::Ptr(v.buf.ptr),
                Arg::Ptr(pos),
                Arg::Ptr(fr),
                Arg::I32(rope_q.n_head as i32),
                Arg::I32(spec.n_head_kv as i32),
                Arg::I32(spec.head_dim as i32),
                Arg::I32(rope_q.n_rot as i32),
                Arg::I32(q.rows as i32),
                Arg::Ptr(kc.ptr),
                Arg::Ptr(vc.ptr),
                Arg::Ptr(fs),
                Arg::I32((spec.ty == KvType::F16) as i32),
            ],
            n,
        )
    }

    fn rope(&self, x: &mut CudaTensor, positions: &[u32], rope: &Rope) -> Result<()> {
        self.wrote(x);
        let half = rope.n_rot / 2;
        if positions.len() != x.rows
            || x.cols != rope.n_head * rope.head_dim
            || rope.n_rot > rope.head_dim
            || rope.inv_freq.len() != half
        {
            return Err(shape_err(
                "rope",
                format!("{} positions for [{}, {}]", positions.len(), x.rows, x.cols),
            ));
        }
        if x.rows == 0 || half == 0 {
            return Ok(());
        }
        let freq = freq_words(&rope.inv_freq);
        let mut m = self.lock();
        let pos = self.stage(&mut m, Staged::Positions, positions)?;
        let fr = self.stage(&mut m, Staged::Const, &freq)?;
        drop(m);
        let n = x.rows * rope.n_head * half;
        self.elementwise(
            "rope",
            &mut [
                Arg::Ptr(x.buf.ptr),
                Arg::Ptr(pos),
                Arg::Ptr(fr),
                Arg::I32(rope.n_head as i32),
                Arg::I32(rope.head_dim as i32),
                Arg::I32(rope.n_rot as i32),
                Arg::I32(x.rows as i32),
            ],
            n,
        )
    }

    fn kv_write(
        &self,
        kv: &mut CudaKvCache,
        layer: usize,
        first_slot: usize,
        k: &CudaTensor,
        v: &CudaTensor,
    ) -> Result<()> {
        let spec = kv.spec;
        let width = spec.n_head_kv * spec.head_dim;
        if layer >= spec.n_layer
            || k.cols != width
            || (v.rows, v.cols) != (k.rows, k.cols)
            || first_slot + k.rows > spec.n_ctx
        {
            return Err(shape_err(
                "kv_write",
                format!(
                    "layer {layer}, slots {first_slot}+{} of {}",
                    k.rows, spec.n_ctx
                ),
            ));
        }
        let mut m = self.lock();
        let fs = self.stage(&mut m, Staged::FirstSlot, &[first_slot as u32])?;
        drop(m);
        let (kc, vc) = &kv.layers[layer];
        self.elementwise(
            "kv_write",
            &mut [
                Arg::Ptr(k.buf.ptr),
                Arg::Ptr(v.buf.ptr),
                Arg::Ptr(kc.ptr),
                Arg::Ptr(vc.ptr),
                Arg::Ptr(fs),
                Arg::I32(width as i32),
                Arg::I32(k.rows as i32),
                Arg::I32((spec.ty == KvType::F16) as i32),
            ],
            k.rows * width,
        )
    }

    fn attention(
        &self,
        q: &CudaTensor,
        kv: &CudaKvCache,
        layer: usize,
        first_slot: usize,
        p: &AttnParams,
        out: &mut CudaTensor,
    ) -> Result<()> {
        self.wrote(out);
        let spec = kv.spec;
        if layer >= spec.n_layer
            || p.n_head_kv != spec.n_head_kv
            || p.head_dim != spec.head_dim
            || p.n_head_kv == 0
            || !p.n_head.is_multiple_of(p.n_head_kv)
            || q.cols != p.n_head * p.head_dim
            || (out.rows, out.cols) != (q.rows, q.cols)
            || first_slot + q.rows > spec.n_ctx
        {
            return Err(shape_err(
                "attention",
                format!(
                    "layer {layer}, [{}, {}] at slot {first_slot}",
                    q.rows, q.cols
                ),
            ));
        }
        if q.rows == 0 {
            return Ok(());
        }
        let prefill_kernel = match p.head_dim {
            64 => Some("attn_prefill_64"),
            128 => Some("attn_prefill_128"),
            _ => None,
        };
        if let (true, Some(kernel)) = (
            q.rows > MATVEC_MAX_ROWS && spec.ty == KvType::F16,
            prefill_kernel,
        ) {
            // Prefill: flash attention on the tensor cores, one block per
            // 64 queries of a head.
            let fs = {
                let mut m = self.lock();
                self.stage(&mut m, Staged::FirstSlot, &[first_slot as u32])?
            };
            let outh = self.f16_out(out, None)?;
            let g = self.gpu()?;
            let (kc, vc) = &kv.layers[layer];
            return launch_smem(
                g,
                self.f(kernel),
                "attention",
                (blocks(q.rows, 64), p.n_head as u32, 1),
                128,
                kernels::dynamic_smem(&self.sh.cfg, kernel),
                &mut [
                    Arg::Ptr(q.buf.ptr),
                    Arg::Ptr(kc.ptr),
                    Arg::Ptr(vc.ptr),
                    Arg::Ptr(fs),
                    Arg::I32(p.n_head as i32),
                    Arg::I32(p.n_head_kv as i32),
                    Arg::F32(p.scale),
                    Arg::I32(q.rows as i32),
                    Arg::Ptr(out.buf.ptr),
                    Arg::Ptr(outh),
                ],
            );
        }
        // Decode: split the keys so enough blocks run; the split depends on
        // the cache size only, so a captured graph stays valid as the
        // sequence grows. Prefill: one block per (token, head) is plenty.
        // Decode over an f16 cache (`KernelConfig::attn_mma`): one block per
        // (key split, KV head) serves all the KV head's query heads as the
        // rows of one m16 tensor-core tile, so each cache row is read once.
        // Otherwise the scalar kernels: over a long cache the grouped-query
        // one (one block per KV head); short caches keep one block per
        // query head, as the scalar grouped-query grid was too small there
        // (8B tg128 at a 640-token cache: 295 → 232 t/s with it). The
        // choice depends on the cache size only, so captured graphs stay
        // valid.
        let group = p.n_head / p.n_head_kv;
        let mma_kernel = match p.head_dim {
            64 => Some("attn_decode_mma_64"),
            128 => Some("attn_decode_mma_128"),
            _ => None,
        }
        .filter(|_| {
            q.rows <= MATVEC_MAX_ROWS
                && spec.ty == KvType::F16
                && group <= 16
                && spec.n_ctx > 64
                && match self.sh.cfg.attn_mma {
                    1 => spec.n_ctx >= GQA_MIN_CTX,
                    2 => true,
                    _ => false,
                }
        });
        let gqa = q.rows <= MATVEC_MAX_ROWS
            && spec.n_ctx >= GQA_MIN_CTX
            && [1, 2, 3, 4, 6, 8, 16].contains(&group)
            && p.head_dim <= 128
            && p.head_dim.is_multiple_of(4)
            && group * p.head_dim <= 2048
            && spec.n_ctx > 64;
        let (chunk, n_split) = if q.rows <= MATVEC_MAX_ROWS
            && mma_kernel.is_some()
            && self.attn_one_split(&spec, first_slot + q.rows)
        {
            // Few visible keys on the tensor cores: one block per KV head
            // walks them all and writes the finished output (no merge).
            (spec.n_ctx, 1)
        } else if q.rows <= MATVEC_MAX_ROWS {
            // About attn_blocks() blocks per token, keys at least 64 per block.
            let target = attn_blocks();
            let per_split = if gqa || mma_kernel.is_some() {
                p.n_head_kv
            } else {
                p.n_head
            };
            let want = (target / per_split.max(1)).clamp(32, target.max(32));
            let chunk = spec.n_ctx.div_ceil(want).max(64);
            (chunk, spec.n_ctx.div_ceil(chunk))
        } else {
            (spec.n_ctx, 1)
        };
        let one_split_mma = mma_kernel.is_some() && n_split == 1;
        let gqa = (gqa || mma_kernel.is_some()) && n_split > 1;
        if n_split > 4096 {
            // attn_combine's COMBINE_MAXS; attn_blocks() keeps below it.
            return Err(shape_err("attention", format!("{n_split} key splits")));
        }
        let mut m = self.lock();
        let fs = self.stage(&mut m, Staged::FirstSlot, &[first_slot as u32])?;
        let rows_heads = q.rows * p.n_head;
        let (po, pml) = if n_split > 1 {
            let mut a = m.part_o.take();
            let po = self.ensure(
                &mut a,
                rows_heads * n_split * p.head_dim * 4,
                "attention partials",
            );
            m.part_o = a;
            let mut b = m.part_ml.take();
            let pml = self.ensure(&mut b, rows_heads * n_split * 8, "attention partials");
            m.part_ml = b;
            (po?, pml?)
        } else {
            (0, 0)
        };
        // Decode: the merge also leaves the output's 8-bit quantization for
        // the output projection.
        let (xq, xs) = if (n_split > 1 || one_split_mma)
            && q.rows <= MATVEC_MAX_ROWS
            && p.head_dim.is_multiple_of(32)
        {
            let r = self.qscratch(&mut m, out.rows * out.cols / 32)?;
            m.qmemo = Some((out.buf.ptr, out.rows, out.cols));
            r
        } else {
            (0, 0)
        };
        drop(m);
        let g = self.gpu()?;
        let (kc, vc) = &kv.layers[layer];
        if let (true, Some(kernel)) = (gqa || one_split_mma, mma_kernel) {
            // One split: the kernel writes `out` (and its 8-bit copy) itself.
            let (po, pml) = if one_split_mma {
                (out.buf.ptr, 0)
            } else {
                (po, pml)
            };
            launch_smem(
                g,
                self.f(kernel),
                "attention",
                (n_split as u32, p.n_head_kv as u32, q.rows as u32),
                128,
                kernels::dynamic_smem(&self.sh.cfg, kernel),
                &mut [
                    Arg::Ptr(q.buf.ptr),
                    Arg::Ptr(kc.ptr),
                    Arg::Ptr(vc.ptr),
                    Arg::Ptr(fs),
                    Arg::I32(p.n_head as i32),
                    Arg::I32(p.n_head_kv as i32),
                    Arg::F32(p.scale),
                    Arg::I32(chunk as i32),
                    Arg::I32(n_split as i32),
                    Arg::Ptr(po),
                    Arg::Ptr(pml),
                    Arg::Ptr(xq),
                    Arg::Ptr(xs),
                ],
            )?;
        } else if gqa {
            launch(
                g,
                self.f("attn_decode_gqa"),
                "attention",
                (n_split as u32, p.n_head_kv as u32, q.rows as u32),
                128,
                &mut [
                    Arg::Ptr(q.buf.ptr),
                    Arg::Ptr(kc.ptr),
                    Arg::Ptr(vc.ptr),
                    Arg::Ptr(fs),
                    Arg::I32(p.n_head as i32),
                    Arg::I32(p.n_head_kv as i32),
                    Arg::I32(p.head_dim as i32),
                    Arg::F32(p.scale),
                    Arg::I32(chunk as i32),
                    Arg::I32(n_split as i32),
                    Arg::I32((spec.ty == KvType::F16) as i32),
                    Arg::Ptr(po),
                    Arg::Ptr(pml),
                ],
            )?;
        } else {
            launch(
                g,
                self.f("attn_partial"),
                "attention",
                (n_split as u32, p.n_head as u32, q.rows as u32),
                128,
                &mut [
                    Arg::Ptr(q.buf.ptr),
                    Arg::Ptr(kc.ptr),
                    Arg::Ptr(vc.ptr),
                    Arg::Ptr(fs),
                    Arg::I32(p.n_head as i32),
                    Arg::I32(p.n_head_kv as i32),
                    Arg::I32(p.head_dim as i32),
                    Arg::F32(p.scale),
                    Arg::I32(chunk as i32),
                    Arg::I32(n_split as i32),
                    Arg::I32((spec.ty == KvType::F16) as i32),
                    Arg::Ptr(out.buf.ptr),
                    Arg::Ptr(po),
                    Arg::Ptr(pml),
                ],
            )?;
        }
        if n_split > 1 {
            launch(
                g,
                self.f("attn_combine"),
                "attention",
                (rows_heads as u32, 1, 1),
                128,
                &mut [
                    Arg::Ptr(po),
                    Arg::Ptr(pml),
                    Arg::I32(n_split as i32),
                    Arg::I32(p.head_dim as i32),
                    Arg::Ptr(out.buf.ptr),
                    Arg::Ptr(xq),
                    Arg::Ptr(xs),
                ],
            )?;
        }
        Ok(())
    }

    fn silu_mul(&self, gate: &mut CudaTensor, up: &CudaTensor) -> Result<()> {
        if (gate.rows, gate.cols) != (up.rows, up.cols) {
            return Err(shape_err("silu_mul", "shapes differ".into()));
        }
        let n = gate.rows * gate.cols;
        self.wrote(gate);
        if gate.rows <= MATVEC_MAX_ROWS && gate.cols.is_multiple_of(32) {
            let mut m = self.lock();
            let (xq, xs) = self.qscratch(&mut m, n / 32)?;
            m.qmemo = Some((gate.buf.ptr, gate.rows, gate.cols));
            drop(m);
            let g = self.gpu()?;
            return launch(
                g,
                self.f("silu_mul_q"),
                "silu_mul",
                (blocks(n / 32, 8), 1, 1),
                256,
                &mut [
                    Arg::Ptr(gate.buf.ptr),
                    Arg::Ptr(up.buf.ptr),
                    Arg::I64(n as i64),
                    Arg::Ptr(xq),
                    Arg::Ptr(xs),
                ],
            );
        }
        self.elementwise(
            "silu_mul",
            &mut [
                Arg::Ptr(gate.buf.ptr),
                Arg::Ptr(up.buf.ptr),
                Arg::I64(n as i64),
            ],
            n,
        )
    }

    fn add_scaled(&self, acc: &mut CudaTensor, x: &CudaTensor, scale: f32) -> Result<()> {
        self.wrote(acc);
        if (acc.rows, acc.cols) != (x.rows, x.cols) {
            return Err(shape_err("add_scaled", "shapes differ".into()));
        }
        let n = acc.rows * acc.cols;
        self.elementwise(
            "add_scaled",
            &mut [
                Arg::Ptr(acc.buf.ptr),
                Arg::Ptr(x.buf.ptr),
                Arg::F32(scale),
                Arg::I64(n as i64),
            ],
            n,
        )
    }

    fn scale(&self, x: &mut CudaTensor, s: f32) -> Result<()> {
        self.wrote(x);
        let n = x.rows * x.cols;
        self.elementwise(
            "scale",
            &mut [Arg::Ptr(x.buf.ptr), Arg::F32(s), Arg::I64(n as i64)],
            n,
        )
    }

    fn gather_rows(&self, x: &CudaTensor, rows: &[usize], out: &mut CudaTensor) -> Result<()> {
        self.wrote(out);
        if (out.rows, out.cols) != (rows.len(), x.cols) || rows.iter().any(|&r| r >= x.rows) {
            return Err(shape_err(
                "gather_rows",
                format!("{} rows of {}", rows.len(), x.rows),
            ));
        }
        if rows.is_empty() {
            return Ok(());
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let mut m = self.lock();
        let rp = self.stage(&mut m, Staged::Outputs, &idx)?;
        drop(m);
        let g = self.gpu()?;
        launch(
            g,
            self.f("gather_rows"),
            "gather_rows",
            (rows.len() as u32, 1, 1),
            256,
            &mut [
                Arg::Ptr(x.buf.ptr),
                Arg::Ptr(rp),
                Arg::I32(x.cols as i32),
                Arg::Ptr(out.buf.ptr),
            ],
        )
    }

    fn run_step(
        &self,
        kv: &mut CudaKvCache,
        inputs: &StepInputs,
        ops: &mut dyn FnMut(&mut CudaKvCache) -> Result<()>,
    ) -> Result<()> {
        let _step = self.sh.step.lock().unwrap_or_else(|e| e.into_inner());
        let g = self.gpu()?;
        let t0 = std::time::Instant::now();
        // Everything queued before has drained: the staging arena is free.
        g.sync("step")?;
        let t1 = std::time::Instant::now();
        self.lock().pf_on = self.sh.cfg.l2_prefetch_kib > 0
            && inputs.tokens.len() <= MATVEC_MAX_ROWS
            && !device::profiling();
        // The step's inputs go up first, in one transfer (inside a capture,
        // as the graph's first node: a replay only rewrites the host slots);
        // the step's prefetches rejoin the stream before it ends (a capture
        // must end with every forked stream joined).
        let mut whole = |kv: &mut CudaKvCache| -> Result<()> {
            self.begin_step(inputs, true)?;
            let r = ops(kv);
            let j = self.join_side();
            r.and(j)
        };
        let r = self.run_step_inner(kv, inputs, &mut whole);
        {
            let mut m = self.lock();
            m.step = None;
            m.pf_on = false;
        }
        log::trace!(
            "step launch times (µs): sync {:.1} ops or replay {:.1}",
            (t1 - t0).as_secs_f64() * 1e6,
            t1.elapsed().as_secs_f64() * 1e6
        );
        r
    }
}

impl CudaBackend {
    /// Put the step's inputs at the start of the arena (the same addresses
    /// every step of a shape, so a graph reads them) and, with `upload`,
    /// queue their copy to the device in one transfer.
    fn begin_step(&self, inputs: &StepInputs, upload: bool) -> Result<()> {
        let g = self.gpu()?;
        let first = [inputs.first_slot as u32];
        let outputs: Vec<u32> = inputs.outputs.iter().map(|&o| o as u32).collect();
        let mut m = self.lock();
        m.staging.cursor = 0;
        m.step = None;
        m.qmemo = None;
        m.hmemo = [None, None];
        let total = 16 + inputs.tokens.len() + inputs.positions.len() + outputs.len();
        if !m.staging.fits(total) {
            return Ok(()); // a huge batch: ops stage their own values
        }
        let ptrs = m.staging.push_many(
            g,
            &[&first, inputs.tokens, inputs.positions, &outputs],
            upload,
        )?;
        m.step = Some(StepBlock {
            entries: vec![
                (Staged::FirstSlot, first.to_vec(), ptrs[0]),
                (Staged::Tokens, inputs.tokens.to_vec(), ptrs[1]),
                (Staged::Positions, inputs.positions.to_vec(), ptrs[2]),
                (Staged::Outputs, outputs, ptrs[3]),
            ],
        });
        Ok(())
    }

    fn run_step_inner(
        &self,
        kv: &mut CudaKvCache,
        inputs: &StepInputs,
        ops: &mut dyn FnMut(&mut CudaKvCache) -> Result<()>,
    ) -> Result<()> {
        let g = self.gpu()?;
        // The attention's split depends on the visible keys: a graph is
        // captured for each side of that line (and recaptured as a sequence
        // crosses it).
        let shape = (
            inputs.tokens.len(),
            inputs.outputs.len(),
            self.attn_one_split(&kv.spec, inputs.first_slot + inputs.tokens.len()),
        );
        static GRAPHS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let graphs_on = *GRAPHS
            .get_or_init(|| std::env::var_os("TERN_CUDA_GRAPHS").is_none_or(|v| v != "0"))
            && !device::profiling();
        if !graphs_on || shape.0 > MATVEC_MAX_ROWS {
            return ops(kv);
        }
        let epoch = self.epoch();
        if inputs.first_slot + inputs.tokens.len() > kv.spec.n_ctx {
            // A replay skips the ops' own checks: refuse here.
            return Err(shape_err(
                "step",
                format!(
                    "slots {}+{} past a cache of {}",
                    inputs.first_slot,
                    inputs.tokens.len(),
                    kv.spec.n_ctx
                ),
            ));
        }
        if let Some(gr) = kv.graph.as_ref() {
            if gr.shape == shape && gr.epoch == epoch {
                return self.replay(kv, inputs);
            }
        }
        let steady = kv.last_eager == Some((shape, epoch, epoch));
        if !steady {
            let before = epoch;
            let r = ops(kv);
            kv.last_eager = Some((shape, before, self.epoch()));
            return r;
        }
        // Capture this step, then replay it.
        kv.graph = None;
        self.lock().capture_log = Some(Vec::new());
        let tl_mark =
            g.tl.as_ref()
                .map_or(0, |t| t.order.lock().map_or(0, |o| o.len()));
        let stream = g.cu_stream();
        // SAFETY: the stream is ours and idle; capture mode "relaxed" lets
        // other threads use the driver meanwhile.
        let begun = unsafe {
            sys::cuStreamBeginCapture_v2(
                stream,
                sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_RELAXED,
            )
        }
        .result();
        if let Err(e) = begun {
            self.lock().capture_log = None;
            log::warn!("cuda: graph capture unavailable ({e:?}); running eagerly");
            return ops(kv);
        }
        let r = ops(kv);
        let mut graph: sys::CUgraph = std::ptr::null_mut();
        // SAFETY: ends the capture begun above on the same stream.
        let ended = unsafe { sys::cuStreamEndCapture(stream, &mut graph) }.result();
        let log = self.lock().capture_log.take().unwrap_or_default();
        // The capture's launches did not run: their timeline labels move to
        // the graph (the first marked as a step's start), or go.
        let labels = g.tl.as_ref().map_or(Vec::new(), |t| {
            let mut o = t.order.lock().unwrap_or_else(|e| e.into_inner());
            let at = tl_mark.min(o.len());
            o.split_off(at)
                .into_iter()
                .enumerate()
                .map(|(i, l)| format!("{} {l}", if i == 0 { "G" } else { "g" }))
                .collect()
        });
        let captured = r.is_ok() && ended.is_ok() && !graph.is_null() && self.epoch() == epoch;
        if !captured {
            if !graph.is_null() {
                // SAFETY: the graph came from the capture and is not used.
                unsafe {
                    let _ = sys::cuGraphDestroy(graph);
                }
            }
            kv.last_eager = None;
            log::warn!(
                "cuda: graph capture failed (ops: {:?}, end: {:?}); running eagerly",
                r.as_ref().err(),
                ended.err()
            );
            return ops(kv);
        }
        let mut exec: sys::CUgraphExec = std::ptr::null_mut();
        // SAFETY: instantiating a graph we own.
        let inst = unsafe { sys::cuGraphInstantiateWithFlags(&mut exec, graph, 0) }.result();
        if let Err(e) = inst {
            // SAFETY: as above.
            unsafe {
                let _ = sys::cuGraphDestroy(graph);
            }
            log::warn!("cuda: graph instantiation failed ({e:?}); running eagerly");
            kv.last_eager = None;
            return ops(kv);
        }
        self.sh.stats.captures.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "cuda: captured a {}-token decode step as a CUDA graph ({} staged inputs)",
            shape.0,
            log.len()
        );
        kv.graph = Some(StepGraph {
            shape,
            epoch,
            exec,
            graph,
            log,
            labels,
        });
        self.replay(kv, inputs)
    }
}

/// A second stream for L2 prefetches: forked from the main stream by
/// `fork` (the prefetch starts when the work queued before it is done) and
/// joined back by `join` at the end of the step.
struct SideStream {
    stream: sys::CUstream,
    fork: sys::CUevent,
    join: sys::CUevent,
    /// Prefetches were queued since the last join.
    pending: bool,
    /// Kept alive, and bound, until the handles are destroyed.
    ctx: Arc<cudarc::driver::CudaContext>,
}

// SAFETY: plain driver handles, used under the backend's lock.
unsafe impl Send for SideStream {}

impl SideStream {
    fn new(g: &device::Gpu) -> Result<SideStream> {
        g.bind()?;
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        let mut s = SideStream {
            stream: std::ptr::null_mut(),
            fork: std::ptr::null_mut(),
            join: std::ptr::null_mut(),
            pending: false,
            ctx: g.ctx.clone(),
        };
        // SAFETY: creating handles we own; Drop destroys whichever exist.
        unsafe {
            sys::cuStreamCreate(
                &mut s.stream,
                sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32,
            )
            .result()
            .map_err(|e| device::gpu_err("side stream", e))?;
            sys::cuEventCreate(&mut s.fork, flags)
                .result()
                .map_err(|e| device::gpu_err("side stream event", e))?;
            sys::cuEventCreate(&mut s.join, flags)
                .result()
                .map_err(|e| device::gpu_err("side stream event", e))?;
        }
        Ok(s)
    }
}

impl Drop for SideStream {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_err() {
            return;
        }
        // SAFETY: each handle was created by SideStream::new on this
        // (bound, still alive) context and is destroyed once; null ones
        // were never made.
        unsafe {
            if !self.join.is_null() {
                let _ = sys::cuEventDestroy_v2(self.join);
            }
            if !self.fork.is_null() {
                let _ = sys::cuEventDestroy_v2(self.fork);
            }
            if !self.stream.is_null() {
                let _ = sys::cuStreamDestroy_v2(self.stream);
            }
        }
    }
}

/// Fork `side` from the main stream after the work queued so far and
/// launch `l2_prefetch` on it for `ranges` (four a launch).
fn fork_prefetch(
    g: &device::Gpu,
    side: &mut SideStream,
    f: sys::CUfunction,
    ranges: &[(u64, usize)],
    chunk: usize,
) -> Result<()> {
    // SAFETY: live handles; the fork orders the prefetch after the work
    // queued on the main stream so far.
    unsafe {
        sys::cuEventRecord(side.fork, g.cu_stream())
            .result()
            .and_then(|_| sys::cuStreamWaitEvent(side.stream, side.fork, 0).result())
            .map_err(|e| device::gpu_err("fork side stream", e))?;
    }
    side.pending = true;
    for four in ranges.chunks(4) {
        let mut args: Vec<Arg> = Vec::with_capacity(9);
        let mut total = 0usize;
        for k in 0..4 {
            let (p, n) = four.get(k).copied().unwrap_or((0, 0));
            total += n;
            args.push(Arg::Ptr(p));
            args.push(Arg::I64(n as i64));
        }
        args.push(Arg::I32(chunk as i32));
        // Spread over the SMs: one pass of 128 threads, each a `chunk`
        // (or one line) of the ranges.
        let per_block = 128 * if chunk > 0 { chunk } else { 128 };
        let grid = total.div_ceil(per_block).clamp(1, 1024) as u32;
        let mut ptrs: Vec<*mut std::ffi::c_void> = args.iter_mut().map(|a| a.as_void()).collect();
        // SAFETY: the arguments match l2_prefetch's signature (four
        // pointer/length pairs), each range lies inside a live weight
        // buffer, and `ptrs` outlives the call.
        unsafe {
            cudarc::driver::result::launch_kernel(
                f,
                (grid, 1, 1),
                (128, 1, 1),
                0,
                side.stream,
                &mut ptrs,
            )
            .map_err(|e| device::gpu_err("l2_prefetch", e))?;
        }
    }
    Ok(())
}

/// An accepted `KernelConfig::l2_prefetch_chunk`: 0 (one line per
/// instruction) or a multiple of 16 bytes up to 1 MiB.
fn chunk_ok(k: u32) -> bool {
    k == 0 || (k.is_multiple_of(16) && k <= 1 << 20)
}

/// The byte ranges (device address, length) holding the first `cap` bytes'
/// worth of `w`'s rows: for a packed quantized weight the quants, scales
/// and minima of its first rows (`pack_weight`'s layout), otherwise a
/// prefix.
fn prefetch_ranges(w: &CudaWeight, cap: usize) -> Vec<(u64, usize)> {
    let bytes = w.buf.bytes;
    if cap >= bytes {
        return vec![(w.buf.ptr, bytes)];
    }
    let (qb, parts) = match w.ty {
        GgmlType::Q4_0 => (16, 2),
        GgmlType::Q4_1 => (16, 3),
        GgmlType::Q8_0 => (32, 2),
        _ => return vec![(w.buf.ptr, cap)],
    };
    let nb = w.cols / 32;
    let n = w.rows * nb;
    let rows = (w.rows * cap / bytes).max(1);
    let q = n * qb;
    let mut v = vec![(w.buf.ptr, rows * nb * qb)];
    for k in 1..parts {
        v.push((w.buf.ptr + (q + (k - 1) * n * 2) as u64, rows * nb * 2));
    }
    v
}

impl CudaBackend {
    /// What the decode steps did since the backend opened: graphs captured
    /// and replayed, prefetch hints queued (tests check that the paths they
    /// mean to cover ran).
    pub fn step_stats(&self) -> StepStats {
        let s = &self.sh.stats;
        StepStats {
            captures: s.captures.load(Ordering::Relaxed),
            replays: s.replays.load(Ordering::Relaxed),
            prefetches: s.prefetches.load(Ordering::Relaxed),
        }
    }

    /// Whether decode attention over `n_vis` visible keys of a cache like
    /// `spec` runs as one key split per KV head (no merge kernel):
    /// `KernelConfig::attn_one_split` 1 (the default) while every key tile
    /// fits the stages the kernel issues before its dependent-launch wait
    /// (3 tiles of 64 keys at head size 64), so the one block waits for
    /// memory once, overlapped with the kernel before (never at head size
    /// 128, where the 8B shape measured slower with 1 or 2 early tiles);
    /// N > 1 while at most N keys; 0 never. The step's graph is keyed on it.
    fn attn_one_split(&self, spec: &KvSpec, n_vis: usize) -> bool {
        let upto = match self.sh.cfg.attn_one_split {
            0 => return false,
            // Head size 128: the 8B measured slower with one split, with
            // one early stage (2 stages) and with two (3 stages).
            1 => match spec.head_dim {
                64 => 3 * 64,
                _ => 0,
            },
            n => n as usize,
        };
        spec.ty == KvType::F16 && n_vis <= upto
    }

    /// The pair of timing events around graph replays (trace logging only),
    /// made on first use.
    fn replay_events(&self) -> Option<EventPair> {
        let ctx = self.gpu().ok()?.ctx.clone();
        let mut m = self.lock();
        if m.replay_ev.is_none() {
            let (mut a, mut b) = (std::ptr::null_mut(), std::ptr::null_mut());
            // SAFETY: creating two events on the bound context; kept for
            // the backend's life (a diagnostic, two handles).
            unsafe {
                if sys::cuEventCreate(&mut a, 0).result().is_err() {
                    return None;
                }
                if sys::cuEventCreate(&mut b, 0).result().is_err() {
                    let _ = sys::cuEventDestroy_v2(a);
                    return None;
                }
            }
            m.replay_ev = Some(ReplayEvents {
                ev: EventPair(a, b),
                ctx,
            });
        }
        m.replay_ev.as_ref().map(|r| r.ev)
    }

    /// After a read has waited for the stream: log the device time of the
    /// graph replay before it, if one was timed.
    fn log_replay_time(&self) {
        let mut m = self.lock();
        if !std::mem::take(&mut m.replay_timed) {
            return;
        }
        if let Some(EventPair(a, b)) = m.replay_ev.as_ref().map(|r| r.ev) {
            let mut ms = 0f32;
            // SAFETY: both events were recorded and the stream has drained.
            if unsafe { sys::cuEventElapsedTime(&mut ms, a, b) }
                .result()
                .is_ok()
            {
                log::trace!("graph replay on the device (µs): {:.1}", ms * 1e3);
            }
        }
    }

    /// Join the side stream's prefetches back into the main stream.
    fn join_side(&self) -> Result<()> {
        let mut m = self.lock();
        let Some(side) = m.side.as_mut().filter(|s| s.pending) else {
            return Ok(());
        };
        side.pending = false;
        let g = self.gpu()?;
        // SAFETY: both handles are live; the main stream is ours.
        unsafe {
            sys::cuEventRecord(side.join, side.stream)
                .result()
                .and_then(|_| sys::cuStreamWaitEvent(g.cu_stream(), side.join, 0).result())
                .map_err(|e| device::gpu_err("join side stream", e))
        }
    }

    /// Put this step's values where the captured copies read them, then
    /// launch the graph.
    fn replay(&self, kv: &mut CudaKvCache, inputs: &StepInputs) -> Result<()> {
        let Some(gr) = kv.graph.as_ref() else {
            return Err(Error::Gpu {
                op: "replay".into(),
                msg: "no graph".into(),
            });
        };
        // The graph's first node copies these slots up.
        self.begin_step(inputs, false)?;
        let outputs: Vec<u32> = inputs.outputs.iter().map(|&o| o as u32).collect();
        let first_slot = [inputs.first_slot as u32];
        let mut m = self.lock();
        for (slot, what, vals) in &gr.log {
            let new: &[u32] = match what {
                Staged::Tokens => inputs.tokens,
                Staged::Positions => inputs.positions,
                Staged::FirstSlot => &first_slot,
                Staged::Outputs => &outputs,
                Staged::Const => vals,
            };
            if new.len() != vals.len() {
                return Err(Error::Gpu {
                    op: "replay".into(),
                    msg: format!(
                        "{what:?}: {} values where {} were captured",
                        new.len(),
                        vals.len()
                    ),
                });
            }
            m.staging.rewrite(*slot, new);
        }
        let end = gr
            .log
            .iter()
            .map(|(s, _, v)| s + v.len().max(1))
            .max()
            .unwrap_or(0);
        m.staging.cursor = m.staging.cursor.max(end);
        drop(m);
        let g = self.gpu()?;
        if let Some(t) = g.tl.as_ref() {
            t.order
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(gr.labels.iter().cloned());
        }
        let ev = if log::log_enabled!(log::Level::Trace) {
            self.replay_events()
        } else {
            None
        };
        let t0 = std::time::Instant::now();
        // SAFETY: the exec graph is live; the stream is ours; the events
        // (if any) are live timing events of this context.
        let r = unsafe {
            if let Some(EventPair(a, _)) = ev {
                let _ = sys::cuEventRecord(a, g.cu_stream());
            }
            let r = sys::cuGraphLaunch(gr.exec, g.cu_stream()).result();
            if let Some(EventPair(_, b)) = ev {
                let _ = sys::cuEventRecord(b, g.cu_stream());
                self.lock().replay_timed = true;
            }
            r
        }
        .map_err(|e| device::gpu_err("graph launch", e));
        log::trace!("graph launch (µs): {:.1}", t0.elapsed().as_secs_f64() * 1e6);
        if r.is_ok() {
            self.sh.stats.replays.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}
