//! The thin layer over the CUDA driver: finding a GPU without panicking,
//! device buffers, kernel launches, and the pinned staging arena through
//! which every per-step host value (token ids, positions, slots) reaches the
//! device.
//!
//! cudarc's safe API is used for the context, the stream and module loading;
//! buffers and launches go through its `result` layer with raw device
//! pointers, because the backend runs everything on one stream (ordering is
//! the stream's) and must be able to capture a whole decode step into a CUDA
//! graph, which cudarc's per-buffer event tracking would get in the way of.

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::driver::{result, sys, CudaContext, CudaStream, DriverError};

use crate::error::{Error, Result};

/// A driver error as a tern error naming the operation.
pub(super) fn gpu_err(op: &str, e: DriverError) -> Error {
    Error::Gpu {
        op: op.to_string(),
        msg: format!("{e:?}"),
    }
}

/// Whether the CUDA driver library can be loaded at all. cudarc panics
/// when it is missing, so this is asked before anything else touches it.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// Whether NVRTC (the run-time compiler) can be loaded.
pub fn nvrtc_present() -> bool {
    // SAFETY: only tries to dlopen the library by its usual names.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// An open GPU: context, the one stream everything runs on, and facts
/// about the device.
pub(super) struct Gpu {
    pub ctx: Arc<CudaContext>,
    pub stream: Arc<CudaStream>,
    /// Compute capability (major, minor).
    pub cc: (i32, i32),
    /// The device's name, for logs.
    pub name: String,
    /// Device memory in bytes.
    pub total_mem: usize,
    /// Streaming multiprocessors (grid-size choices).
    pub sm_count: usize,
    /// Dynamic shared memory one block may opt into (bytes).
    pub smem_optin: usize,
    /// Launch kernels with programmatic dependent launch (sm_90+, unless
    /// `TERN_CUDA_PDL=0`): each may start launching while the previous one
    /// runs; the kernels' `pdl_entry()` keeps the order (common.cuh).
    pub pdl: bool,
    /// `TERN_CUDA_PROFILE=1`: every eager launch is timed with a pair of
    /// events (name and grid, start, end), reported by [`Gpu::profile_report`].
    pub prof: Option<std::sync::Mutex<Vec<TimedLaunch>>>,
    /// `TERN_CUDA_TIMELINE=path`: the kernels are built to time themselves
    /// on the device (common.cuh, `TERN_TL`); see [`Timeline`].
    pub tl: Option<Timeline>,
}

/// Records of when block 0 of every kernel arrived and when its wait for
/// the previous kernel returned, on the device's global timer, graph
/// replays included (a diagnostic: `TERN_CUDA_TIMELINE=path`
/// writes them, one launch a line, when the backend closes; see
/// `scripts/device/timeline.py`). The host keeps the launches' kernel
/// names in the same order, the captured graph's once per replay.
pub(super) struct Timeline {
    pub buf: DevBuf,
    path: std::path::PathBuf,
    /// Kernel handle → name, set once the kernels load.
    pub names: std::sync::OnceLock<Vec<(usize, &'static str)>>,
    /// One label per launch, in launch order.
    pub order: std::sync::Mutex<Vec<String>>,
}

/// Records the device buffer holds, and words per record (common.cuh's
/// `TL_CAP`, 4).
const TL_CAP: usize = 1 << 20;
const TL_WORDS: usize = 4;

impl Timeline {
    fn label(&self, f: sys::CUfunction, grid: (u32, u32, u32), block: u32) -> String {
        let name = self
            .names
            .get()
            .and_then(|n| n.iter().find(|(p, _)| *p == f as usize))
            .map_or("?", |(_, n)| n);
        format!("{name} {}x{}x{} {block}", grid.0, grid.1, grid.2)
    }

    /// Write the records as text: `label t_pre t_wait phases grid` (ns;
    /// phases as block.cu packs them, 0 for other kernels; the grid the
    /// record's kernel ran with, to check the label against), then any
    /// labels beyond the records with `-` for the rest. A record
    /// whose grid differs from its label's (the names and the records out
    /// of step) is counted in a warning.
    pub fn dump(&self, gpu: &Gpu) -> Result<()> {
        gpu.sync("timeline")?;
        let mut raw = vec![0u64; TL_WORDS * (TL_CAP + 1)];
        self.buf.download(gpu, &mut raw)?;
        let n = (raw[0] as usize).min(TL_CAP);
        let order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = String::new();
        let mut mismatched = 0usize;
        for i in 0..n {
            let r = &raw[TL_WORDS * (i + 1)..TL_WORDS * (i + 2)];
            let label = order.get(i).map_or("?", |s| s.as_str());
            // The grid as common.cuh packs it: x, y (12 bits), z (8), block (11).
            let grid = format!(
                " {}x{}x{} {}",
                r[2] & 0xffff_ffff,
                r[2] >> 32 & 4095,
                r[2] >> 44 & 255,
                r[2] >> 52 & 2047
            );
            mismatched += usize::from(!label.ends_with(&grid));
            // Word 3: kernels that time their own phases (block.cu) pack
            // them there; 0 otherwise.
            out.push_str(&format!(
                "{label}\t{}\t{}\t{}\t{}\n",
                r[0],
                r[1],
                r[3],
                grid.trim()
            ));
        }
        // Launches without a record (the records fell behind): their labels
        // too, with no times, so timeline.py can name every record.
        for label in order.iter().skip(n) {
            out.push_str(&format!("{label}\t-\t-\t-\t-\n"));
        }
        if mismatched > 0 {
            log::warn!("cuda timeline: {mismatched} records do not match their launch's grid");
        }
        let tmp = self.path.with_extension("tmp");
        std::fs::write(&tmp, out)
            .and_then(|_| std::fs::rename(&tmp, &self.path))
            .map_err(|e| Error::Gpu {
                op: "timeline".into(),
                msg: format!("{}: {e}", self.path.display()),
            })?;
        if order.len() != raw[0] as usize {
            log::warn!(
                "cuda timeline: {} launches named, {} recorded",
                order.len(),
                raw[0]
            );
        }
        Ok(())
    }
}

impl Gpu {
    /// Open GPU `ordinal`, or explain why not (no driver, no device, driver
    /// too old). Never panics.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        if !driver_present() {
            return Err(Error::DeviceUnavailable(
                "no CUDA driver (libcuda) found on this machine".into(),
            ));
        }
        let unavailable = |what: &str, e: DriverError| {
            Error::DeviceUnavailable(format!("CUDA {what} failed: {e:?}"))
        };
        result::init().map_err(|e| unavailable("initialisation", e))?;
        let n = CudaContext::device_count().map_err(|e| unavailable("device query", e))?;
        if n <= ordinal as i32 {
            return Err(Error::DeviceUnavailable(format!(
                "no CUDA device {ordinal} ({n} found)"
            )));
        }
        let ctx = CudaContext::new(ordinal).map_err(|e| unavailable("context creation", e))?;
        // One stream orders everything; per-buffer events would only cost
        // time and break graph capture.
        // SAFETY: called before any buffer or stream of this context exists.
        unsafe { ctx.disable_event_tracking() };
        let stream = ctx
            .new_stream()
            .map_err(|e| unavailable("stream creation", e))?;
        let cc = ctx
            .compute_capability()
            .map_err(|e| unavailable("device query", e))?;
        let name = ctx.name().unwrap_or_else(|_| "unknown GPU".into());
        let total_mem = ctx.total_mem().unwrap_or(0);
        let sm_count = ctx
            .attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)
            .map_or(1, |n| n.max(1) as usize);
        let smem_optin = ctx
            .attribute(
                sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN,
            )
            .map_or(48 * 1024, |n| n.max(0) as usize);
        let pdl = cc.0 >= 9 && std::env::var_os("TERN_CUDA_PDL").is_none_or(|v| v != "0");
        let mut gpu = Gpu {
            ctx,
            stream,
            cc,
            name,
            total_mem,
            sm_count,
            smem_optin,
            pdl,
            prof: profiling().then(|| std::sync::Mutex::new(Vec::new())),
            tl: None,
        };
        if let Some(path) = std::env::var_os("TERN_CUDA_TIMELINE") {
            let buf = DevBuf::new(&gpu, 8 * TL_WORDS * (TL_CAP + 1), "timeline")?;
            buf.zero(&gpu)?;
            gpu.tl = Some(Timeline {
                buf,
                path: path.into(),
                names: std::sync::OnceLock::new(),
                order: std::sync::Mutex::new(Vec::new()),
            });
        }
        Ok(gpu)
    }

    pub fn cu_stream(&self) -> sys::CUstream {
        self.stream.cu_stream()
    }

    /// Make this context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| gpu_err("bind", e))
    }

    /// Wait for everything queued so far.
    pub fn sync(&self, op: &str) -> Result<()> {
        self.stream.synchronize().map_err(|e| gpu_err(op, e))
    }
}

/// A device allocation of `bytes` bytes, freed on drop.
pub(super) struct DevBuf {
    pub ptr: sys::CUdeviceptr,
    pub bytes: usize,
    ctx: Arc<CudaContext>,
}

// SAFETY: a device pointer is an address in the context's space; the
// buffer is only touched through the stream, which orders all access.
unsafe impl Send for DevBuf {}
// SAFETY: as above; shared references never write through the pointer on
// the host.
unsafe impl Sync for DevBuf {}

impl DevBuf {
    /// Allocate `bytes` (at least 1) of device memory. Running out is
    /// `Error::OutOfMemory` naming `what`, and leaves the device usable.
    pub fn new(gpu: &Gpu, bytes: usize, what: &str) -> Result<DevBuf> {
        gpu.bind()?;
        // SAFETY: a plain allocation in the bound context.
        let ptr = unsafe { result::malloc_sync(bytes.max(1)) }.map_err(|e| {
            if e.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
                Error::OutOfMemory {
                    bytes: bytes as u64,
                    what: format!("{what} (GPU memory)"),
                }
            } else {
                gpu_err("allocate", e)
            }
        })?;
        Ok(DevBuf {
            ptr,
            bytes,
            ctx: Arc::clone(&gpu.ctx),
        })
    }

    /// Copy `src` to the start of the buffer and wait for the copy.
    pub fn upload<T: Copy>(&self, gpu: &Gpu, src: &[T]) -> Result<()> {
        let n = std::mem::size_of_val(src);
        if n > self.bytes {
            return Err(Error::InvalidBatch(format!(
                "upload of {n} bytes into a buffer of {}",
                self.bytes
            )));
        }
        if n == 0 {
            return Ok(());
        }
        // SAFETY: `src` is a live host slice of n bytes and the buffer holds
        // at least n; the synchronous copy finishes before we return.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(self.ptr, src.as_ptr() as *const c_void, n, gpu.cu_stream())
                .result()
                .map_err(|e| gpu_err("upload", e))?;
        }
        gpu.sync("upload")
    }

    /// Copy the first `dst.len()` elements of the buffer to `dst` (waits).
    pub fn download<T: Copy>(&self, gpu: &Gpu, dst: &mut [T]) -> Result<()> {
        let n = std::mem::size_of_val(dst);
        if n > self.bytes {
            return Err(Error::InvalidBatch(format!(
                "download of {n} bytes from a buffer of {}",
                self.bytes
            )));
        }
        if n == 0 {
            return Ok(());
        }
        // SAFETY: `dst` is a live, exclusively borrowed host slice of n
        // bytes; we wait for the copy before returning.
        unsafe {
            result::memcpy_dtoh_async(dst, self.ptr, gpu.cu_stream())
                .map_err(|e| gpu_err("download", e))?;
        }
        gpu.sync("download")
    }

    /// Zero the buffer (queued on the stream).
    pub fn zero(&self, gpu: &Gpu) -> Result<()> {
        // SAFETY: the range is the buffer's own.
        unsafe { result::memset_d8_async(self.ptr, 0, self.bytes, gpu.cu_stream()) }
            .map_err(|e| gpu_err("memset", e))
    }
}

impl Drop for DevBuf {
    fn drop(&mut self) {
        if self.ctx.bind_to_thread().is_ok() {
            // SAFETY: the pointer came from malloc_sync and is freed once.
            // Work still queued that reads it was ordered before any later
            // allocation can reuse it only after this synchronous free.
            unsafe {
                let _ = result::free_sync(self.ptr);
            }
        }
    }
}

/// A kernel argument: a value whose address is handed to cuLaunchKernel.
pub(super) enum Arg {
    Ptr(u64),
    I32(i32),
    I64(i64),
    F32(f32),
}

impl Arg {
    pub(super) fn as_void(&mut self) -> *mut c_void {
        match self {
            Arg::Ptr(v) => v as *mut u64 as *mut c_void,
            Arg::I32(v) => v as *mut i32 as *mut c_void,
            Arg::I64(v) => v as *mut i64 as *mut c_void,
            Arg::F32(v) => v as *mut f32 as *mut c_void,
        }
    }
}

/// Launch `f` on the stream with `grid` × `block` threads.
pub(super) fn launch(
    gpu: &Gpu,
    f: sys::CUfunction,
    name: &str,
    grid: (u32, u32, u32),
    block: u32,
    args: &mut [Arg],
) -> Result<()> {
    launch_smem(gpu, f, name, grid, block, 0, args)
}

/// [`launch`] with `smem` bytes of dynamic shared memory per block (the
/// kernel's limit is raised when the kernels load, `kernels::dynamic_smem`).
pub(super) fn launch_smem(
    gpu: &Gpu,
    f: sys::CUfunction,
    name: &str,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    args: &mut [Arg],
) -> Result<()> {
    launch_ex(gpu, f, name, grid, block, smem, None, args)
}

/// One thread-block cluster of `nb` blocks (sm_90+) as the whole grid, with
/// `smem` bytes of dynamic shared memory per block.
pub(super) fn launch_cluster(
    gpu: &Gpu,
    f: sys::CUfunction,
    name: &str,
    nb: u32,
    block: u32,
    smem: u32,
    args: &mut [Arg],
) -> Result<()> {
    launch_ex(gpu, f, name, (nb, 1, 1), block, smem, Some(nb), args)
}

/// How many clusters of `nb` blocks of kernel `f` (`block` threads, `smem`
/// bytes each) the GPU can hold at once; 0 when it cannot run one.
pub(super) fn max_active_clusters(
    gpu: &Gpu,
    f: sys::CUfunction,
    nb: u32,
    block: u32,
    smem: u32,
) -> Result<i32> {
    let mut attr = [cluster_attr(nb)];
    let cfg = launch_config(gpu, (nb, 1, 1), block, smem, &mut attr);
    let mut n = 0;
    gpu.bind()?;
    // SAFETY: `cfg` and `attr` outlive the call, which writes one int.
    unsafe {
        sys::cuOccupancyMaxActiveClusters(&mut n, f, &cfg)
            .result()
            .map_err(|e| gpu_err("cluster occupancy", e))?;
    }
    Ok(n)
}

fn cluster_attr(nb: u32) -> sys::CUlaunchAttribute {
    // SAFETY: a zeroed attribute is a valid plain-data value; only the id
    // and the one union field the id names are then set.
    let mut a: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_CLUSTER_DIMENSION;
    a.value.clusterDim.x = nb;
    a.value.clusterDim.y = 1;
    a.value.clusterDim.z = 1;
    a
}

fn pdl_attr() -> sys::CUlaunchAttribute {
    // SAFETY: as in cluster_attr.
    let mut a: sys::CUlaunchAttribute = unsafe { std::mem::zeroed() };
    a.id = sys::CUlaunchAttributeID::CU_LAUNCH_ATTRIBUTE_PROGRAMMATIC_STREAM_SERIALIZATION;
    a.value.programmaticStreamSerializationAllowed = 1;
    a
}

fn launch_config(
    gpu: &Gpu,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    attrs: &mut [sys::CUlaunchAttribute],
) -> sys::CUlaunchConfig {
    sys::CUlaunchConfig {
        gridDimX: grid.0,
        gridDimY: grid.1,
        gridDimZ: grid.2,
        blockDimX: block,
        blockDimY: 1,
        blockDimZ: 1,
        sharedMemBytes: smem,
        hStream: gpu.cu_stream(),
        attrs: attrs.as_mut_ptr(),
        numAttrs: attrs.len() as u32,
    }
}

#[allow(clippy::too_many_arguments)]
fn launch_ex(
    gpu: &Gpu,
    f: sys::CUfunction,
    name: &str,
    grid: (u32, u32, u32),
    block: u32,
    smem: u32,
    cluster: Option<u32>,
    args: &mut [Arg],
) -> Result<()> {
    if grid.0 == 0 || grid.1 == 0 || grid.2 == 0 {
        return Ok(());
    }
    let mut ptrs: Vec<*mut c_void> = args.iter_mut().map(Arg::as_void).collect();
    let timed = gpu
        .prof
        .as_ref()
        .and_then(|_| gpu.event_pair(format!("{name} {grid:?}x{block}")));
    let r = if gpu.pdl || cluster.is_some() {
        // No allocation per launch: at most two attributes.
        let mut attrs = [pdl_attr(), cluster_attr(cluster.unwrap_or(1))];
        let n = match (gpu.pdl, cluster.is_some()) {
            (true, true) => 2,
            (true, false) => 1,
            (false, _) => {
                attrs.swap(0, 1);
                1
            }
        };
        let cfg = launch_config(gpu, grid, block, smem, &mut attrs[..n]);
        // SAFETY: as below; `cfg` and `attrs` outlive the call.
        unsafe {
            sys::cuLaunchKernelEx(&cfg, f, ptrs.as_mut_ptr(), std::ptr::null_mut())
                .result()
                .map_err(|e| gpu_err(name, e))
        }
    } else {
        // SAFETY: the argument list matches the kernel's signature (each
        // call site is written against its kernel), every pointer argument
        // is a live device buffer of the size the kernel indexes, and
        // `ptrs` outlives the call (cuLaunchKernel copies the values before
        // returning).
        unsafe {
            result::launch_kernel(f, grid, (block, 1, 1), smem, gpu.cu_stream(), &mut ptrs)
                .map_err(|e| gpu_err(name, e))
        }
    };
    if let (Some(t), true) = (gpu.tl.as_ref(), r.is_ok()) {
        let label = t.label(f, grid, block);
        t.order
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(label);
    }
    if let (Some(p), Some((label, ev0, ev1))) = (gpu.prof.as_ref(), timed) {
        // SAFETY: both events were created by event_pair on this context.
        unsafe {
            let _ = sys::cuEventRecord(ev1, gpu.cu_stream());
        }
        p.lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(TimedLaunch(label, ev0, ev1));
    }
    r
}

/// One timed launch: its label and the events recorded around it.
pub(super) struct TimedLaunch(String, sys::CUevent, sys::CUevent);

// SAFETY: events are plain driver handles, used under the profile's lock
// and on the context that made them.
unsafe impl Send for TimedLaunch {}

/// Whether `TERN_CUDA_PROFILE=1` asks for per-kernel timing (which also
/// turns graph capture off, so every step runs eagerly).
pub(super) fn profiling() -> bool {
    // Read once: the decode step asks every step.
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TERN_CUDA_PROFILE").is_some_and(|v| v == "1"))
}

impl Gpu {
    /// Two timing events with the first recorded now, unless the stream is
    /// being captured (a graph's launches are not timed one by one).
    fn event_pair(&self, label: String) -> Option<(String, sys::CUevent, sys::CUevent)> {
        let stream = self.cu_stream();
        let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
        // SAFETY: plain driver queries and event creation on our context.
        unsafe {
            sys::cuStreamIsCapturing(stream, &mut status)
                .result()
                .ok()?;
            if status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
                return None;
            }
            let (mut a, mut b) = (std::ptr::null_mut(), std::ptr::null_mut());
            sys::cuEventCreate(&mut a, 0).result().ok()?;
            if sys::cuEventCreate(&mut b, 0).result().is_err() {
                let _ = sys::cuEventDestroy_v2(a);
                return None;
            }
            let _ = sys::cuEventRecord(a, stream);
            Some((label, a, b))
        }
    }

    /// Per-kernel totals of the timed launches so far (then forgotten),
    /// largest first: `label  count  total µs  mean µs`.
    pub fn profile_report(&self) -> Option<String> {
        let p = self.prof.as_ref()?;
        let entries = std::mem::take(&mut *p.lock().unwrap_or_else(|e| e.into_inner()));
        self.sync("profile").ok()?;
        let mut by: Vec<(String, usize, f64)> = Vec::new();
        for TimedLaunch(label, a, b) in entries {
            let mut ms = 0f32;
            // SAFETY: both events were recorded on our stream, which is idle.
            unsafe {
                let ok = sys::cuEventElapsedTime(&mut ms, a, b).result().is_ok();
                let _ = sys::cuEventDestroy_v2(a);
                let _ = sys::cuEventDestroy_v2(b);
                if !ok {
                    continue;
                }
            }
            match by.iter_mut().find(|(l, _, _)| *l == label) {
                Some(e) => {
                    e.1 += 1;
                    e.2 += ms as f64 * 1e3;
                }
                None => by.push((label, 1, ms as f64 * 1e3)),
            }
        }
        by.sort_by(|a, b| b.2.total_cmp(&a.2));
        let total: f64 = by.iter().map(|e| e.2).sum();
        let mut out = format!("cuda profile: {total:.0} µs in timed kernels\n");
        for (label, n, us) in by {
            out.push_str(&format!(
                "{label:<48} {n:>7} {us:>11.1} µs {:>8.2} µs\n",
                us / n as f64
            ));
        }
        Some(out)
    }
}

/// Host values for one step, staged in page-locked memory and copied to
/// the device on the stream, so a captured graph replays the copies with
/// whatever the host has written there since.
pub(super) struct Staging {
    host: *mut u32,
    dev: DevBuf,
    cap: usize,
    /// Next free u32 slot; reset only after the stream has drained.
    pub cursor: usize,
}

// SAFETY: the pinned host block is only written under the backend's lock.
unsafe impl Send for Staging {}

impl Staging {
    pub const CAP: usize = 1 << 16;

    pub fn new(gpu: &Gpu) -> Result<Staging> {
        gpu.bind()?;
        let bytes = Staging::CAP * 4;
        // SAFETY: a plain page-locked allocation of `bytes`.
        let host = unsafe { result::malloc_host(bytes, 0) }
            .map_err(|e| gpu_err("pinned allocation", e))? as *mut u32;
        let dev = DevBuf::new(gpu, bytes, "staging")?;
        Ok(Staging {
            host,
            dev,
            cap: Staging::CAP,
            cursor: 0,
        })
    }

    /// Room for `n` more values without waiting?
    pub fn fits(&self, n: usize) -> bool {
        self.cursor.next_multiple_of(4) + n <= self.cap
    }

    /// Write `vals` at the cursor, queue their copy to the device and
    /// return (slot, device pointer). The caller has checked `fits`.
    pub fn push(&mut self, gpu: &Gpu, vals: &[u32]) -> Result<(usize, u64)> {
        // Every entry starts on a 16-byte boundary, so kernels may read
        // staged values as any type up to 16 bytes wide (RoPE reads f64).
        let at = self.cursor.next_multiple_of(4);
        let n = vals.len().max(1);
        // SAFETY: at + n ≤ cap (the caller checked), so the writes stay in
        // the pinned block; no queued copy reads these slots (the cursor
        // only moves back after the stream has drained).
        unsafe {
            std::ptr::copy_nonoverlapping(vals.as_ptr(), self.host.add(at), vals.len());
        }
        self.cursor = at + n;
        let dptr = self.dev.ptr + (at * 4) as u64;
        // SAFETY: both ranges lie inside their allocations.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                dptr,
                self.host.add(at) as *const c_void,
                vals.len() * 4,
                gpu.cu_stream(),
            )
            .result()
            .map_err(|e| gpu_err("stage", e))?;
        }
        Ok((at, dptr))
    }

    /// Write several arrays back to back (each 16-byte aligned) at the
    /// cursor and, with `upload`, copy them to the device with one
    /// transfer; returns each array's device address. Without `upload` only
    /// the host slots change (a graph replay, whose captured copy carries
    /// them). The caller has checked that they fit.
    pub fn push_many(&mut self, gpu: &Gpu, arrays: &[&[u32]], upload: bool) -> Result<Vec<u64>> {
        let start = self.cursor.next_multiple_of(4);
        let mut at = start;
        let mut ptrs = Vec::with_capacity(arrays.len());
        for a in arrays {
            // SAFETY: the caller checked the total fits; no queued copy
            // reads these slots (the stream has drained).
            unsafe { std::ptr::copy_nonoverlapping(a.as_ptr(), self.host.add(at), a.len()) };
            ptrs.push(self.dev.ptr + (at * 4) as u64);
            at = (at + a.len().max(1)).next_multiple_of(4);
        }
        self.cursor = at;
        if !upload {
            return Ok(ptrs);
        }
        // SAFETY: both ranges lie inside their allocations.
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                self.dev.ptr + (start * 4) as u64,
                self.host.add(start) as *const c_void,
                (at - start) * 4,
                gpu.cu_stream(),
            )
            .result()
            .map_err(|e| gpu_err("stage", e))?;
        }
        Ok(ptrs)
    }

    /// Overwrite slots `at..at + vals.len()` in host memory only (for a
    /// graph replay, whose captured copies then carry them over).
    pub fn rewrite(&mut self, at: usize, vals: &[u32]) {
        assert!(at + vals.len() <= self.cap);
        // SAFETY: bounds checked above; the stream is idle when replays
        // rewrite (the previous step's results were read back).
        unsafe { std::ptr::copy_nonoverlapping(vals.as_ptr(), self.host.add(at), vals.len()) }
    }
}

/// A page-locked host buffer that device-to-host reads go through: a DMA
/// straight into it, then one host copy, instead of the driver's staged
/// copy into pageable memory.
pub(super) struct PinnedRead {
    host: *mut f32,
    len: usize,
}

// SAFETY: the block is only touched under the backend's lock.
unsafe impl Send for PinnedRead {}

impl PinnedRead {
    /// A buffer of `len` f32s (at least 1).
    pub fn new(gpu: &Gpu, len: usize) -> Result<PinnedRead> {
        gpu.bind()?;
        let len = len.max(1);
        // SAFETY: a plain page-locked allocation.
        let host = unsafe { result::malloc_host(len * 4, 0) }
            .map_err(|e| gpu_err("pinned allocation", e))? as *mut f32;
        // SAFETY: the block was just allocated for `len` f32s; zeroed so a
        // slice over it is always initialised.
        unsafe { std::ptr::write_bytes(host, 0, len) };
        Ok(PinnedRead { host, len })
    }

    pub fn len(&self) -> usize {
        self.len
    }

    /// Copy `out.len()` values (≤ `len`) from `src` into `out` through the
    /// buffer, waiting for the copy; true when every value is finite. The
    /// host copy goes in pieces, each checked while it is in cache.
    pub fn read(&mut self, gpu: &Gpu, src: &DevBuf, out: &mut [f32]) -> Result<bool> {
        let n = out.len();
        if n > self.len || n * 4 > src.bytes {
            return Err(Error::InvalidBatch(format!(
                "pinned read of {n} values into {} from a buffer of {} bytes",
                self.len, src.bytes
            )));
        }
        if n == 0 {
            return Ok(true);
        }
        // SAFETY: `host` holds `len` ≥ n f32s, exclusively ours under the
        // backend's lock; the copy is waited for before the slice is read.
        let h = unsafe {
            let h = std::slice::from_raw_parts_mut(self.host, n);
            result::memcpy_dtoh_async(h, src.ptr, gpu.cu_stream())
                .map_err(|e| gpu_err("download", e))?;
            gpu.sync("download")?;
            h
        };
        let mut finite = true;
        for (o, i) in out.chunks_mut(2048).zip(h.chunks(2048)) {
            o.copy_from_slice(i);
            finite &= crate::backend::all_finite(o);
        }
        Ok(finite)
    }
}

impl Drop for PinnedRead {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host, freed once.
        unsafe {
            let _ = result::free_host(self.host as *mut c_void);
        }
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        // SAFETY: allocated by malloc_host, freed once.
        unsafe {
            let _ = result::free_host(self.host as *mut c_void);
        }
    }
}
