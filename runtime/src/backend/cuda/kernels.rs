//! The CUDA C sources of every kernel, compiled at run time by NVRTC for the
//! GPU found and cached on disk.
//!
//! The `.cu` files under `kernels/` are concatenated (`common.cuh` first)
//! into one translation unit, so they need no include path and no toolkit
//! header. The PTX NVRTC produces is cached under
//! `$TERN_CACHE/cuda-kernels/` (default `~/.cache/tern/cuda-kernels/`),
//! keyed by the sha256 of the source, the target architecture and the NVRTC
//! version, and written through a temp file and a rename so a crash never
//! leaves a torn entry. A failed cache read or write only costs a compile.

use std::path::PathBuf;
use std::sync::Arc;

use cudarc::driver::{sys, CudaModule};
use cudarc::nvrtc::{CompileOptions, Ptx};
use sha2::{Digest, Sha256};

use super::device::{gpu_err, nvrtc_present, Gpu};
use crate::error::{Error, Result};

/// The kernel sources, in the order they are concatenated.
pub const SOURCES: [(&str, &str); 6] = [
    ("common.cuh", include_str!("kernels/common.cuh")),
    ("elementwise.cu", include_str!("kernels/elementwise.cu")),
    ("matvec.cu", include_str!("kernels/matvec.cu")),
    ("matmul.cu", include_str!("kernels/matmul.cu")),
    ("attention.cu", include_str!("kernels/attention.cu")),
    ("block.cu", include_str!("kernels/block.cu")),
];

/// Every kernel entry point the backend launches.
pub const KERNEL_NAMES: [&str; 34] = [
    "embed",
    "rope_kv",
    "rms_norm",
    "rms_norm_q",
    "silu_mul_q",
    "matvec_q1_multi",
    "matvec_qkv_rope",
    "rope",
    "silu_mul",
    "add_scaled",
    "scale",
    "gather_rows",
    "kv_write",
    "argmax_rows",
    "quantize_act",
    "matvec_q",
    "matvec_q1",
    "matvec_f",
    "matmul_mma",
    "matmul_mma_big",
    "matmul_q4_128",
    "matmul_q4_64",
    "matmul_q4_64_3",
    "to_f16",
    "attn_partial",
    "attn_combine",
    "attn_decode_gqa",
    "attn_decode_mma_64",
    "attn_decode_mma_128",
    "attn_prefill_64",
    "attn_prefill_128",
    "fused_block_64",
    "fused_block_128",
    "l2_prefetch",
];

/// The one-cluster decode block kernels (`block.cu`): their shared memory
/// depends on the model, so they may use all a block can opt into, and
/// they run as clusters of up to 16 blocks.
pub const CLUSTER_KERNELS: [&str; 2] = ["fused_block_64", "fused_block_128"];

/// Kernels that take dynamic shared memory, and how many bytes under `cfg`.
/// `matmul.cu`: per pipeline stage, 128 or 64 activation rows of 144
/// bytes, 128 weight rows of 48 quant bytes and 8 bytes of scales.
/// `attention.cu`: a 64-query tile and two stages of 64 keys and 64 values,
/// each row head size + 8 halves.
pub fn dynamic_smem(cfg: &KernelConfig, name: &str) -> u32 {
    match name {
        // The SwiGLU epilogue reuses it for a [tokens][132] f32 tile.
        "matmul_q4_128" => (cfg.mq_stages * (128 * 144 + 128 * 48 + 1024)).max(128 * 132 * 4),
        "matmul_q4_64" | "matmul_q4_64_3" => {
            (cfg.mq_stages * (64 * 144 + 128 * 48 + 1024)).max(64 * 132 * 4)
        }
        "attn_prefill_64" => 5 * 64 * (64 + 8) * 2,
        "attn_prefill_128" => 5 * 64 * (128 + 8) * 2,
        // A 16-row query tile and AD_STAGES (4 for head size 64,
        // `attn_stages_128` for 128) stages of 64 keys and 64 values; the
        // final merge of the 4 warps reuses the key/value stages.
        "attn_decode_mma_64" => (16 + 2 * 4 * 64) * (64 + 8) * 2,
        "attn_decode_mma_128" => (16 + 2 * cfg.attn_stages_128 * 64) * (128 + 8) * 2,
        _ => 0,
    }
}

/// Tunables baked into the kernels at compile time (the kernel harness
/// compiles several and times each).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelConfig {
    /// Weight rows each warp of the decode mat-vec computes (1, 2 or 4).
    pub mv_rows: u32,
    /// 32-element blocks each lane of the decode mat-vec loads before
    /// computing (1 to 4), defined into the source as `MV_UNROLL`.
    pub mv_unroll: u32,
    /// Warps of the decode mat-vec's 4-warp block that share one row (1,
    /// 2 or 4), or 0 to choose per matrix ([`mv_ksplit_auto`]). Chosen on
    /// the host; the source is the same.
    pub mv_ksplit: u32,
    /// Prefill with Q4_0/Q4_1 weights uses the 4-bit kernels
    /// (`matmul_q4_*`); `false` keeps the f16-tile kernels (`matmul_mma*`)
    /// for every type. Chosen on the host; the source is the same.
    pub prefill_q4: bool,
    /// Pipeline stages of the 4-bit prefill kernels (2 to 4), defined into
    /// the source as `MQ_STAGES`; the dynamic shared memory scales with it.
    pub mq_stages: u32,
    /// Blocks per SM `matmul_q4_64` is compiled to fit (1 to 4): above 1
    /// it caps the registers (65536 / (128 · n)), which may spill.
    pub mq_narrow_min_blocks: u32,
    /// Blocks per SM `matmul_q4_128` is compiled to fit (1 or 2), defined
    /// into the source as `MQ_WIDE_MINB`: 2 caps it at 128 registers (a few
    /// bytes spill outside the main loop) so two blocks of 8 warps share an
    /// SM. Measured on the H200 (docs/cuda-kernel-notes.md): 8B pp512
    /// 12,670 t/s with 1, 14,040 with 2.
    pub mq_wide_min_blocks: u32,
    /// m16 row tiles per warp in `matmul_q4_128` (1 or 2), defined into the
    /// source as `MQ_WIDE_MI`: 2 gives warp tiles of 32 rows × 64 tokens,
    /// 1 of 16 rows × 128 tokens (half the dequantization per mma).
    pub mq_wide_mi: u32,
    /// Weight reads the quantized decode mat-vecs issue before waiting for
    /// the previous kernel, defined into the source as `MV_PREFETCH`: bit 0
    /// an L2 prefetch of the block's slice of the matrix, bit 1 each lane's
    /// first step of loads into registers (0 to 3).
    pub mv_prefetch: u32,
    /// The L2 prefetch (bit 0 of `mv_prefetch`) applies to launches whose
    /// weights come to at most this many KiB (chosen on the host, per
    /// launch); the register loads (bit 1) to all. Measured on the H200
    /// (docs/cuda-kernel-notes.md, tg128 against no early reads): the
    /// register loads alone gave SmolLM2 +6–9 %, the 8B +3–4 %, the 0.5B
    /// +1–2 %; the prefetch alone gave the 0.5B +6 % and SmolLM2 +3–5 %
    /// but cost the 8B's 10–75 MB launches 1.5–5 % (hence the bound);
    /// both together did worse than the register loads alone.
    pub mv_prefetch_max_kib: u32,
    /// Decode attention over an f16 cache on the tensor cores, the query
    /// heads of a KV head as the rows of one m16 tile
    /// (`attn_decode_mma_*`): 0 never (the scalar `attn_decode_gqa` and
    /// `attn_partial`), 1 for caches of 8192+ slots only, 2 for every
    /// decode. Chosen on the host. Measured on the H200
    /// (docs/cuda-kernel-notes.md): 8B tg64 at depth 32768 188 → 381 t/s;
    /// 2 over 1 at short caches: SmolLM2 +7–10 %, 0.5B +6–8 %, 8B +1 %.
    pub attn_mma: u32,
    /// When decode attention on the tensor cores runs as one key split per
    /// KV head, writing the finished output and its 8-bit copy itself (no
    /// `attn_combine`): 1 while all visible keys fit the key tiles the
    /// kernel loads before its dependent-launch wait (192 keys at head size
    /// 64; never at 128); N > 1 while at most N keys are visible; 0 never.
    /// Decided per step on the host (the decode graph is recaptured when a
    /// sequence crosses the line). Measured on the H200
    /// (docs/cuda-kernel-notes.md, eighth pass): with the tiles read before
    /// the wait, one split over a 128-slot cache took the SmolLM2 shape
    /// from 1,969 / 1,949 to 2,069 / 2,009 t/s and the 0.5B from 1,953 /
    /// 2,055 to 2,094 / 2,156; the 8B (head size 128, 2 stages) lost 4 %
    /// with one split over all 128 keys and 2–4 % over the first 64 (2
    /// stages), 9 % over all 128 with 3 stages (two early tiles), so never
    /// at head size 128. Before the early reads one split only won
    /// near a cache's start.
    pub attn_one_split: u32,
    /// One token's whole decoder block in one launch on a thread-block
    /// cluster (`fused_block_*`, sm_90 and newer, when the block's weights
    /// fit the cluster's shared memory) for caches of at most this many
    /// slots; 0 never. Chosen on the host. Measured on the H200
    /// (docs/cuda-kernel-notes.md, seventh pass): the SmolLM2 shape's
    /// tg128 1,887 with it against 1,903 without (the 0.5B and 8B do not
    /// fit), so 0, off.
    pub fused_block_max_ctx: u32,
    /// Where a timeline build of `fused_block_*` stamps its five phase
    /// times, defined into the source as `FB_PROBE` (a diagnostic; 0 the
    /// ends of its phases, see block.cu).
    pub fb_probe: u32,
    /// Key/value stages of the tensor-core decode attention at head size
    /// 128, defined into the source as `AD_STAGES_128` (2 or 3; head size
    /// 64 has 4). All but one are loaded before the dependent-launch wait.
    /// Measured on the H200 (docs/cuda-kernel-notes.md, eighth pass), 8B
    /// shape, 3 against 2: tg128 at depth 8192 / 32768 475.6 / 452.5
    /// against 449.9 / 429.1, at depth 0 equal (553.6 / 552.9 against
    /// 553.9 / 554.9). So 3, where a block may have the 106 KiB of shared
    /// memory that takes; on sm_86/sm_89 (99 KiB) the backend builds 2.
    pub attn_stages_128: u32,
    /// Bytes (KiB) of each weight the decode step asks L2 for ahead of its
    /// mat-vec (`Backend::prefetch`: on a side stream, while latency-bound
    /// kernels run); 0 never. Chosen on the host. Measured on the H200
    /// (docs/cuda-kernel-notes.md, eighth pass), the 8B shape's tg128:
    /// 1 MiB per weight one line per instruction 539 → 555 t/s (twice);
    /// 512 KiB 543, 2 MiB 548, 4 MiB and more slower, bulk prefetches no
    /// gain; on the small models' weights (< 8 MiB) it only cost (0.5B
    /// 2,037 → 1,974 at 1 MiB). So 1 MiB, for weights of at least
    /// `l2_prefetch_min_kib`.
    pub l2_prefetch_kib: u32,
    /// Weights smaller than this (KiB) are not prefetched.
    pub l2_prefetch_min_kib: u32,
    /// Bytes per bulk prefetch instruction of `l2_prefetch` (sm_90; a
    /// multiple of 16 up to 1 MiB, checked at open); 0 one 128-byte line per
    /// instruction.
    pub l2_prefetch_chunk: u32,
    /// Which kernels let the next one begin launching (programmatic
    /// dependent launch) before their own wait for the previous kernel, a
    /// bit mask defined into the source as `PDL_EARLY`: bit 0 the small
    /// kernels, bit 1 the decode mat-vecs. A kernel without its bit lets
    /// the next launch after its wait (a launch runs at most one kernel
    /// ahead); with it launches run ahead as far as the GPU has room, so
    /// early reads (weights, the cache's first tiles) can overlap earlier
    /// kernels than the predecessor. Either way each kernel waits for its
    /// predecessor to finish, so the order is the same.
    pub pdl_early: u32,
    /// Device address of the timeline buffer, defined into the source as
    /// `TERN_TL` when non-zero (a diagnostic, `TERN_CUDA_TIMELINE`; set by
    /// the backend, never by hand).
    pub timeline: u64,
    /// A diagnostic for the kernel harness (`HARNESS_CONFIGS=u1k0d1`),
    /// defined into the source as `MV_DIAG`: the quantized decode
    /// mat-vecs skip their scale loads (bit 0) or their activation loads
    /// (bit 1), using made-up values, so the harness can time the weight
    /// stream without them. The results are wrong by design; never set
    /// outside the harness.
    pub mv_diag: u32,
}

impl Default for KernelConfig {
    fn default() -> KernelConfig {
        KernelConfig {
            mv_rows: 1,
            mv_unroll: 1,
            mv_ksplit: 0,
            prefill_q4: true,
            mq_stages: 3,
            mq_narrow_min_blocks: 1,
            mq_wide_min_blocks: 2,
            mq_wide_mi: 2,
            mv_prefetch: 2,
            mv_prefetch_max_kib: 8192,
            attn_mma: 2,
            attn_one_split: 1,
            fused_block_max_ctx: 0,
            fb_probe: 0,
            attn_stages_128: 3,
            l2_prefetch_kib: 1024,
            l2_prefetch_min_kib: 8192,
            l2_prefetch_chunk: 0,
            pdl_early: 0,
            timeline: 0,
            mv_diag: 0,
        }
    }
}

/// Models with at most this many bytes of weights let each kernel's
/// successor launch before its wait (`KernelConfig::pdl_early` = 3).
pub const PDL_EARLY_MAX_WEIGHTS: u64 = 1 << 30;

impl KernelConfig {
    /// The default configuration for a model of `weight_bytes`: launches
    /// run ahead of their waits for small models, whose decode step is a
    /// chain of latency-bound launches, and not for large ones, whose
    /// mat-vecs are bound by memory bandwidth and whose critical path an
    /// early launch's weight reads compete with. Measured on the H200
    /// (docs/cuda-kernel-notes.md, ninth pass), tg128, 0 against 3: SmolLM2
    /// shape (92 MB) 2,043 → 2,216 t/s, 0.5B shape (246 MB) 2,100 → 2,199,
    /// 8B shape (4.6 GB) 560 → 535–542. The line between them is a round
    /// number in the unmeasured gap.
    pub fn for_weights(weight_bytes: u64) -> KernelConfig {
        KernelConfig {
            pdl_early: if weight_bytes <= PDL_EARLY_MAX_WEIGHTS {
                3
            } else {
                0
            },
            ..KernelConfig::default()
        }
    }
}

/// The hidden sizes whose decode mat-vecs take two rows a warp
/// (`KernelConfig::mv_rows` = 2), for models of at most
/// [`PDL_EARLY_MAX_WEIGHTS`]: from this many columns…
pub const MV_ROWS2_MIN_EMBD: usize = 1024;
/// …up to, not including, this many.
pub const MV_ROWS2_MAX_EMBD: usize = 4096;

impl KernelConfig {
    /// The default configuration for a model of `weight_bytes` whose
    /// hidden size is `n_embd`: [`KernelConfig::for_weights`], and two rows
    /// a warp in the decode mat-vecs for a small model (the same 1 GiB line,
    /// whose decode is a chain of latency-bound launches) with a hidden
    /// size from [`MV_ROWS2_MIN_EMBD`] up to [`MV_ROWS2_MAX_EMBD`], where a
    /// row of the hidden-size products gives each lane one to four
    /// 32-element blocks, so a second row doubles the loads in flight.
    /// Measured on the H200 (docs/cuda-kernel-notes.md, ninth to eleventh
    /// passes), tg128, one row against two: the 0.5B shape (1,024, 246 MB)
    /// 2,273 → 2,400; 2,275 / 2,292 → 2,332 / 2,408; and this rule's A/B,
    /// `-p 0` 2,341 / 2,303 → 2,428 / 2,399 (after pp512 2,304 / 2,287 →
    /// 2,356 / 2,269, within the noise); the SmolLM2 shape (576: 18 blocks
    /// a row, so 14 lanes idle either way, and half the warps) lost
    /// 5–12 %; the 8B shape (4,096, 4.6 GB) was even (557.9 / 555.4
    /// against 557.1 / 556.8), so it keeps one. Only these three widths
    /// were measured: the band between is an extrapolation from the one
    /// point inside it, which the size bound keeps to small models.
    pub fn for_model(weight_bytes: u64, n_embd: usize) -> KernelConfig {
        let rows2 = weight_bytes <= PDL_EARLY_MAX_WEIGHTS
            && (MV_ROWS2_MIN_EMBD..MV_ROWS2_MAX_EMBD).contains(&n_embd);
        KernelConfig {
            mv_rows: if rows2 { 2 } else { 1 },
            ..KernelConfig::for_weights(weight_bytes)
        }
    }
}

/// Warps per row for a decode mat-vec of `rows` × `cols` on `sms`
/// multiprocessors: split a row over 2 or 4 warps while the split grid
/// still fits in one wave (≤ 64 warps per multiprocessor, the resident
/// limit) and each warp keeps ≥ 64 of the row's 32-element blocks. A grid
/// of one warp per row that fills under half the warp slots is bound by
/// the one step each warp has in flight. (It counts one warp a row; with
/// two rows a warp, `KernelConfig::mv_rows`, the grid has half as many
/// warps, so the rule splits no more than it would then need to.)
/// Measured on the H200
/// (docs/cuda-kernel-notes.md): the 0.5B's 1024-row down projection split
/// in two took its tg128 from 1,344 to 1,451 t/s; the 8B's 4096-row o and
/// down projections (0.48 waves unsplit, 29 warps per SM) went from 4.8 to
/// 4.4 and 14.2 to 11.6 µs split in two, while the larger grids (q/k/v,
/// gate/up, the head) are faster unsplit.
pub fn mv_ksplit_auto(rows: usize, cols: usize, sms: usize) -> u32 {
    let nb = cols / 32;
    let mut ks = 1;
    while ks < 4 && nb / (2 * ks) >= 64 && rows * 2 * ks <= 64 * sms {
        ks *= 2;
    }
    ks as u32
}

/// The translation unit for the default configuration.
pub fn source() -> String {
    source_with(&KernelConfig::default())
}

/// The one translation unit NVRTC compiles, with `cfg` as defines.
pub fn source_with(cfg: &KernelConfig) -> String {
    let mut s = format!(
        "#define MV_ROWS {}\n#define MV_UNROLL {}\n#define MQ_STAGES {}\n#define MQ_NARROW_MINB {}\n\
         #define MQ_WIDE_MI {}\n#define MQ_WIDE_MINB {}\n#define MV_PREFETCH {}\n#define FB_PROBE {}\n\
         #define AD_STAGES_128 {}\n#define PDL_EARLY {}\n#define MV_DIAG {}\n",
        cfg.mv_rows,
        cfg.mv_unroll,
        cfg.mq_stages,
        cfg.mq_narrow_min_blocks,
        cfg.mq_wide_mi,
        cfg.mq_wide_min_blocks,
        cfg.mv_prefetch,
        cfg.fb_probe,
        cfg.attn_stages_128,
        cfg.pdl_early,
        cfg.mv_diag
    );
    if cfg.timeline != 0 {
        s.push_str(&format!("#define TERN_TL {:#x}ull\n", cfg.timeline));
    }
    for (name, text) in SOURCES {
        s.push_str(&format!("// ---- {name} ----\n"));
        s.push_str(text);
        s.push('\n');
    }
    s
}

/// NVRTC's version as (major, minor), or an error if NVRTC is missing.
pub fn nvrtc_version() -> Result<(i32, i32)> {
    if !nvrtc_present() {
        return Err(Error::DeviceUnavailable(
            "NVRTC (libnvrtc) not found: it compiles tern's GPU kernels; install the CUDA \
             toolkit or the nvidia-cuda-nvrtc-cu12 wheel and put its lib/ on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present; the call writes two ints.
    let r = unsafe { cudarc::nvrtc::sys::nvrtcVersion(&mut major, &mut minor) };
    if r != cudarc::nvrtc::sys::nvrtcResult::NVRTC_SUCCESS {
        return Err(Error::DeviceUnavailable(format!(
            "NVRTC version query failed: {r:?}"
        )));
    }
    Ok((major, minor))
}

/// Compile the kernels to PTX for `compute_{arch}` (e.g. 90). The error
/// carries NVRTC's log.
pub fn compile(arch: u32) -> Result<String> {
    compile_source(&source(), arch)
}

/// Like [`compile`], for a configuration.
pub fn compile_with(cfg: &KernelConfig, arch: u32) -> Result<String> {
    compile_source(&source_with(cfg), arch)
}

/// Compile any CUDA C `src` to PTX for `compute_{arch}`; the error carries
/// NVRTC's log.
pub fn compile_source(src: &str, arch: u32) -> Result<String> {
    nvrtc_version()?;
    let arch_opt: &'static str = match arch {
        75 => "compute_75",
        80 => "compute_80",
        86 => "compute_86",
        87 => "compute_87",
        89 => "compute_89",
        90 => "compute_90",
        100 => "compute_100",
        120 => "compute_120",
        other => {
            return Err(Error::DeviceUnavailable(format!(
                "no kernel build for compute capability {}.{} (tern targets sm_75 and newer)",
                other / 10,
                other % 10
            )))
        }
    };
    let opts = CompileOptions {
        arch: Some(arch_opt),
        options: vec!["--std=c++14".into(), "-default-device".into()],
        name: Some("tern_kernels.cu".into()),
        ..Default::default()
    };
    let ptx = cudarc::nvrtc::compile_ptx_with_opts(src, opts).map_err(|e| Error::Gpu {
        op: format!("compile kernels for sm_{arch}"),
        msg: format!("{e}"),
    })?;
    Ok(ptx.to_src())
}

/// Compile `src` all the way to machine code for `sm_{arch}` (NVRTC runs
/// ptxas), returning the cubin's size. Catches what PTX generation alone
/// does not: shared memory or registers over the hardware's limits. Used
/// by the compile-check test; at run time the driver does this step.
pub fn compile_cubin(src: &str, arch: u32) -> Result<usize> {
    use cudarc::nvrtc::{result, sys};
    nvrtc_version()?;
    let err = |msg: String| Error::Gpu {
        op: format!("compile kernels to sm_{arch} machine code"),
        msg,
    };
    let csrc = std::ffi::CString::new(src).map_err(|e| err(e.to_string()))?;
    let prog = result::create_program(&csrc, None).map_err(|e| err(format!("{e:?}")))?;
    let opts = [
        format!("-arch=sm_{arch}"),
        "--std=c++14".to_string(),
        "-default-device".to_string(),
    ];
    // SAFETY: `prog` is a live program; it is destroyed before returning.
    let out = unsafe {
        let r = result::compile_program(prog, &opts);
        let out = match r {
            Ok(()) => {
                let mut n = 0usize;
                match sys::nvrtcGetCUBINSize(prog, &mut n) {
                    sys::nvrtcResult::NVRTC_SUCCESS => Ok(n),
                    e => Err(err(format!("no cubin: {e:?}"))),
                }
            }
            Err(_) => {
                let log = result::get_program_log(prog).unwrap_or_default();
                let bytes: Vec<u8> = log
                    .iter()
                    .map(|&c| c as u8)
                    .take_while(|&b| b != 0)
                    .collect();
                Err(err(String::from_utf8_lossy(&bytes).into_owned()))
            }
        };
        let _ = result::destroy_program(prog);
        out
    };
    out
}

fn cache_dir() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("TERN_CACHE") {
        return Some(PathBuf::from(d).join("cuda-kernels"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/tern/cuda-kernels"))
}

/// The cache file name for `arch` under NVRTC `ver`.
pub fn cache_key(src: &str, arch: u32, ver: (i32, i32)) -> String {
    let digest = Sha256::digest(src.as_bytes());
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}-sm{arch}-nvrtc{}.{}.ptx", ver.0, ver.1)
}

/// PTX of configuration `cfg` for `arch`, from the cache or freshly
/// compiled (and then cached).
pub fn ptx_for(cfg: &KernelConfig, arch: u32) -> Result<String> {
    let ver = nvrtc_version()?;
    let src = source_with(cfg);
    let key = cache_key(&src, arch, ver);
    // A timeline build embeds this process's buffer address: never reused.
    let dir = cache_dir().filter(|_| cfg.timeline == 0);
    if let Some(path) = dir.as_ref().map(|d| d.join(&key)) {
        if let Ok(text) = std::fs::read_to_string(&path) {
            if text.contains(".entry") {
                log::debug!("cuda: kernels from cache {}", path.display());
                return Ok(text);
            }
        }
    }
    let t = std::time::Instant::now();
    let ptx = compile_source(&src, arch)?;
    log::info!(
        "cuda: compiled kernels for sm_{arch} in {:.2}s",
        t.elapsed().as_secs_f64()
    );
    if let Some(d) = dir {
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(&d)?;
            let tmp = d.join(format!("{key}.tmp{}", std::process::id()));
            std::fs::write(&tmp, &ptx)?;
            std::fs::rename(&tmp, d.join(&key))
        };
        if let Err(e) = write() {
            log::warn!("cuda: could not cache kernels in {}: {e}", d.display());
        }
    }
    Ok(ptx)
}

/// The loaded kernels: one function handle per entry point.
pub(super) struct Kernels {
    _module: Arc<CudaModule>,
    funcs: Vec<sys::CUfunction>,
    /// Blocks of `matmul_q4_128` one SM runs at once.
    pub mq_slots: usize,
    /// The same for `matmul_q4_64` and `matmul_q4_64_3`.
    pub mq64_slots: usize,
    pub mq64_3_slots: usize,
}

// SAFETY: CUfunction handles are immutable once loaded and usable from any
// thread with the context current.
unsafe impl Send for Kernels {}
// SAFETY: as above.
unsafe impl Sync for Kernels {}

impl Kernels {
    pub fn load(gpu: &Gpu, cfg: &KernelConfig) -> Result<Kernels> {
        let arch = (gpu.cc.0 * 10 + gpu.cc.1) as u32;
        let ptx = ptx_for(cfg, arch)?;
        let module = gpu
            .ctx
            .load_module(Ptx::from_src(ptx))
            .map_err(|e| gpu_err("load kernels", e))?;
        let mut funcs = Vec::with_capacity(KERNEL_NAMES.len());
        for name in KERNEL_NAMES {
            let f = module
                .load_function(name)
                .map_err(|e| gpu_err(&format!("load kernel {name}"), e))?;
            let func = f.cu_function();
            let bytes = if CLUSTER_KERNELS.contains(&name) {
                gpu.smem_optin as u32
            } else {
                dynamic_smem(cfg, name)
            };
            if CLUSTER_KERNELS.contains(&name) && gpu.cc.0 >= 9 {
                // SAFETY: as below; a 0/1 flag.
                unsafe {
                    cudarc::driver::result::function::set_function_attribute(
                        func,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_NON_PORTABLE_CLUSTER_SIZE_ALLOWED,
                        1,
                    )
                }
                .map_err(|e| gpu_err(&format!("cluster size for kernel {name}"), e))?;
            }
            if bytes > 0 {
                // SAFETY: `func` was just loaded from this module and the
                // attribute takes a plain byte count.
                unsafe {
                    cudarc::driver::result::function::set_function_attribute(
                        func,
                        sys::CUfunction_attribute::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                        bytes as i32,
                    )
                }
                .map_err(|e| gpu_err(&format!("shared memory for kernel {name}"), e))?;
            }
            if log::log_enabled!(log::Level::Debug) {
                let attr = |a| {
                    let mut v = 0i32;
                    // SAFETY: `func` was loaded above; the call writes one int.
                    unsafe { sys::cuFuncGetAttribute(&mut v, a, func) };
                    v
                };
                use sys::CUfunction_attribute::*;
                log::debug!(
                    "cuda: kernel {name}: {} registers, {} bytes of local memory",
                    attr(CU_FUNC_ATTRIBUTE_NUM_REGS),
                    attr(CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)
                );
            }
            funcs.push(func);
        }
        let slots = |name: &str, threads: i32| {
            let i = KERNEL_NAMES.iter().position(|&n| n == name).unwrap_or(0);
            // SAFETY: the function was loaded above from this module.
            unsafe {
                cudarc::driver::result::occupancy::max_active_block_per_multiprocessor(
                    funcs[i],
                    threads,
                    dynamic_smem(cfg, name) as usize,
                )
            }
            .map_or(1, |n| n.max(1) as usize)
        };
        Ok(Kernels {
            mq_slots: slots("matmul_q4_128", 256),
            mq64_slots: slots("matmul_q4_64", 128),
            mq64_3_slots: slots("matmul_q4_64_3", 128),
            _module: module,
            funcs,
        })
    }

    /// The handle of kernel `name` (one of [`KERNEL_NAMES`]).
    pub fn get(&self, name: &str) -> sys::CUfunction {
        let i = KERNEL_NAMES
            .iter()
            .position(|&n| n == name)
            .expect("kernel names are fixed at compile time");
        self.funcs[i]
    }
}
