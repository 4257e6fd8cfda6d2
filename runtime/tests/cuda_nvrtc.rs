//! Every CUDA kernel compiles through NVRTC for each GPU generation tern
//! targets (sm_87 Jetson Orin, sm_89 RTX 4090, sm_90 Hopper), with no GPU
//! needed: CI runs this with NVRTC from the `nvidia-cuda-nvrtc-cu12` wheel,
//! so a kernel that does not compile never lands.
//!
//! Without NVRTC the test says so and returns, unless `TERN_REQUIRE_NVRTC=1`
//! (set by `scripts/test.sh` once the wheel is installed) or
//! `TERN_REQUIRE_GPU=1`, which make it fail. Also here, because CI runs
//! this file: a CUDA build on a machine without a GPU falls back to the CPU
//! under `auto` and gives one clear error for `--device cuda`.
#![cfg(feature = "cuda")]

mod common;

use tern_runtime::backend::cuda::kernels;

fn required() -> bool {
    ["TERN_REQUIRE_NVRTC", "TERN_REQUIRE_GPU"]
        .iter()
        .any(|k| std::env::var_os(k).is_some_and(|v| v == "1"))
}

/// Each `extern "C" __global__` entry point in the sources, with the text
/// of its body after the opening brace.
fn entry_points() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (_, text) in kernels::SOURCES {
        let mut rest = text;
        while let Some(i) = rest.find("extern \"C\" __global__") {
            let sig = &rest[i..];
            let open = sig.find('{').expect("a kernel without a body");
            // Skip `__launch_bounds__(n)`: the name precedes the parameters.
            let head = match sig.find("__launch_bounds__") {
                Some(lb) if lb < open => &sig[lb + sig[lb..].find(')').unwrap_or(0) + 1..],
                _ => sig,
            };
            let paren = head.find('(').expect("a kernel without parameters");
            let name = head[..paren]
                .split_whitespace()
                .last()
                .expect("a kernel without a name")
                .to_string();
            out.push((name, sig[open + 1..].to_string()));
            rest = &sig[open + 1..];
        }
    }
    out
}

/// Kernels are launched with programmatic dependent launch on sm_90: the
/// ordering of the whole stream rests on every kernel waiting for its
/// predecessor before touching memory (`pdl_entry()` as its first
/// statement, see common.cuh). A kernel without it could race the one
/// before it, so none may land.
///
/// The one exception: the quantized decode mat-vecs read their weights,
/// which no kernel writes, before the wait (`MV_PREFETCH`). Their entry
/// points go straight to `matvec_q_impl`, which must call `pdl_entry<1>()`
/// before it first touches the activations (`xq`, `xs`) or the output.
const WEIGHTS_BEFORE_WAIT: [&str; 4] = [
    "matvec_q1",
    "matvec_q1_multi",
    "matvec_qkv_rope",
    "matvec_q",
];

/// Kernels whose entry point goes straight to a body function that calls
/// `pdl_entry()` itself, after reads of memory no kernel writes: (kernel,
/// body, what the entry itself may index). The one-cluster decode blocks
/// (block.cu) copy their weights, norm weights, rotation inputs and cache
/// slot into shared memory before the wait, and `fused_block_body` must
/// wait before it touches the residual row (`x`) or the cache (`kc`, `vc`).
/// The tensor-core decode attention reads its first slot (a step input) in
/// the entry and the first key/value tiles of the cache below it (slots
/// this step does not write) in the body, which must wait before it
/// touches the queries or its outputs.
const WAIT_IN_BODY: [(&str, &str, &[&str]); 4] = [
    ("fused_block_64", "fused_block_body<", &[]),
    ("fused_block_128", "fused_block_body<", &[]),
    (
        "attn_decode_mma_64",
        "attn_decode_mma_body<",
        &["first_slot", "ap_smem"],
    ),
    (
        "attn_decode_mma_128",
        "attn_decode_mma_body<",
        &["first_slot", "ap_smem"],
    ),
];

/// Launched on a side stream, outside the dependent-launch chain, and
/// touching no memory (L2 prefetch hints only): it must not wait, and must
/// not stamp the timeline, whose records assume one launch at a time.
const OFF_CHAIN: [&str; 1] = ["l2_prefetch"];

/// What each kernel may index before its wait: the norm's weight in
/// `rms_norm_q`; in `matvec_qkv_rope`, before it calls `matvec_q_impl`, the
/// step inputs and RoPE table (copied before the step's first kernel or at
/// load, never written by a kernel) and its own shared array; the decode
/// attention's first slot (a step input).
const EARLY_READS: [(&str, &[&str]); 2] = [
    ("rms_norm_q", &["w"]),
    (
        "matvec_qkv_rope",
        &["pos", "inv_freq", "first_slot", "keep"],
    ),
];

/// A kernel's own text: its body up to the next entry point.
fn own_text(body: &str) -> &str {
    &body[..body.find("extern \"C\"").unwrap_or(body.len())]
}

/// The identifiers written right before a `[` in `text`.
fn indexed(text: &str) -> Vec<&str> {
    text.match_indices('[')
        .map(|(i, _)| {
            let head = &text[..i];
            let start = head
                .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .map_or(0, |j| j + 1);
            &head[start..]
        })
        .collect()
}

/// The identifiers device function `func` names between its opening brace
/// and its wait `stop` (`pdl_entry();`, or the mat-vecs' `pdl_entry<1>();`),
/// outside comments and leaving out members (`threadIdx.x`).
fn idents_before_wait(func: &str, stop: &str) -> Vec<String> {
    let sig = format!("void {func}(");
    let src = kernels::SOURCES
        .iter()
        .map(|(_, t)| *t)
        .find(|t| t.contains(&sig))
        .unwrap_or_else(|| panic!("{func} is not in the sources"));
    let at = src.find(&sig).unwrap();
    let body = &src[at + src[at..].find('{').unwrap() + 1..];
    let wait = body
        .find(stop)
        .unwrap_or_else(|| panic!("{func} does not call {stop}"));
    let code: String = body[..wait]
        .lines()
        .map(|l| l.split("//").next().unwrap_or(""))
        .collect::<Vec<_>>()
        .join("\n");
    let mut idents = Vec::new();
    let mut start = None;
    for (i, c) in code
        .char_indices()
        .chain(std::iter::once((code.len(), ' ')))
    {
        if c.is_ascii_alphanumeric() || c == '_' {
            start.get_or_insert(i);
        } else if let Some(s0) = start.take() {
            if !code[..s0].ends_with('.') {
                idents.push(code[s0..i].to_string());
            }
        }
    }
    idents
}

#[test]
fn every_kernel_starts_with_the_dependent_launch_wait() {
    let entries = entry_points();
    assert!(entries.len() >= kernels::KERNEL_NAMES.len());
    for (name, body) in &entries {
        assert!(
            kernels::KERNEL_NAMES.contains(&name.as_str()),
            "kernel {name} is not in KERNEL_NAMES (so not loaded or compile-checked)"
        );
        if let Some((_, allowed)) = EARLY_READS.iter().find(|(k, _)| k == name) {
            let own = own_text(body);
            let stop = ["pdl_entry();", "matvec_q_impl<"]
                .iter()
                .filter_map(|m| own.find(m))
                .min()
                .unwrap_or_else(|| panic!("kernel {name} neither waits nor calls matvec_q_impl"));
            for id in indexed(&own[..stop]) {
                assert!(
                    allowed.contains(&id),
                    "kernel {name} indexes `{id}` before its wait"
                );
            }
        }
        if WEIGHTS_BEFORE_WAIT.contains(&name.as_str()) {
            // Its own text, up to the next entry point, has no wait of its
            // own and reaches memory only through matvec_q_impl.
            let own = own_text(body);
            assert!(
                !own.contains("pdl_entry"),
                "kernel {name}: the wait belongs in matvec_q_impl"
            );
            assert!(
                own.contains("matvec_q_impl<"),
                "kernel {name} does not call matvec_q_impl"
            );
            continue;
        }
        if let Some((_, via, allowed)) = WAIT_IN_BODY.iter().find(|(k, _, _)| k == name) {
            let own = own_text(body);
            assert!(
                !own.contains("pdl_entry") && own.contains(via),
                "kernel {name}: the wait belongs in {via}"
            );
            for id in indexed(own) {
                assert!(
                    allowed.contains(&id),
                    "kernel {name} indexes `{id}` before its wait"
                );
            }
            continue;
        }
        if OFF_CHAIN.contains(&name.as_str()) {
            let own = own_text(body);
            assert!(
                !own.contains("pdl_entry") && own.contains("prefetch"),
                "kernel {name} is off the chain: no wait, no timeline"
            );
            continue;
        }
        if EARLY_READS.iter().any(|(k, _)| k == name) {
            continue;
        }
        assert!(
            body.trim_start().starts_with("pdl_entry();"),
            "kernel {name} does not begin with pdl_entry()"
        );
    }
    // The body functions that wait: between the opening brace and the
    // wait, no use of what earlier kernels write (matvec_q_impl: the
    // activations and the output; attn_decode_mma_body: the queries and
    // the outputs; fused_block_body: the residual row and the cache).
    for (func, stop, written) in [
        ("matvec_q_impl", "pdl_entry<1>();", &["xq", "xs", "out"][..]),
        (
            "attn_decode_mma_body",
            "pdl_entry();",
            &["q", "part_o", "part_ml", "xq", "xs"],
        ),
        ("fused_block_body", "pdl_entry();", &["x", "kc", "vc"]),
    ] {
        let idents = idents_before_wait(func, stop);
        for used in written {
            assert!(
                !idents.iter().any(|i| i == used),
                "{func} uses `{used}` before the wait"
            );
        }
    }
}

#[test]
fn every_kernel_compiles_for_every_target_arch() {
    let ver = match kernels::nvrtc_version() {
        Ok(v) => v,
        Err(e) if !required() => {
            eprintln!("skipped: {e}");
            return;
        }
        Err(e) => panic!("NVRTC required but unavailable: {e}"),
    };
    eprintln!("NVRTC {}.{}", ver.0, ver.1);
    for arch in [87u32, 89, 90] {
        let t = std::time::Instant::now();
        let ptx = kernels::compile(arch).unwrap_or_else(|e| panic!("sm_{arch}: {e}"));
        for name in kernels::KERNEL_NAMES {
            assert!(
                ptx.contains(&format!(".entry {name}(")),
                "sm_{arch}: kernel {name} missing from the PTX"
            );
        }
        assert!(
            ptx.contains(&format!(".target sm_{arch}")),
            "sm_{arch}: wrong target"
        );
        let generic = generic_accesses(&ptx);
        assert!(
            generic.is_empty(),
            "sm_{arch}: generic loads or stores (no state space) in {generic:?}"
        );
        // And through ptxas to machine code: resource limits (shared
        // memory, registers) only fail there.
        let cubin = kernels::compile_cubin(&kernels::source(), arch)
            .unwrap_or_else(|e| panic!("sm_{arch} machine code: {e}"));
        assert!(cubin > 0);
        eprintln!(
            "sm_{arch}: {} kernels, {} bytes of PTX, {:.2}s",
            kernels::KERNEL_NAMES.len(),
            ptx.len(),
            t.elapsed().as_secs_f64()
        );
    }
}

/// The kernels whose PTX loads or stores through a generic address (an
/// `ld` or `st` naming no state space), with the first such line of each.
/// A weight pointer picked from a small array indexed at run time went to
/// local memory and turned every weight load generic, which ran the same
/// mat-vec at half the speed (docs/cuda-kernel-notes.md, eleventh pass);
/// no kernel needs one.
fn generic_accesses(ptx: &str) -> Vec<(String, String)> {
    const SPACES: [&str; 5] = ["global", "shared", "local", "param", "const"];
    let mut entry = String::new();
    let mut found: Vec<(String, String)> = Vec::new();
    for line in ptx.lines() {
        let l = line.trim();
        if let Some(rest) = l.split(".entry ").nth(1) {
            entry = rest.split('(').next().unwrap_or("").trim().to_string();
            continue;
        }
        let Some(op) = l.split_whitespace().next() else {
            continue;
        };
        let mut parts = op.split('.');
        if !matches!(parts.next(), Some("ld" | "st")) {
            continue;
        }
        // Qualifiers such as `volatile`, `relaxed`, `cg` may come first; a
        // state space (`shared::cluster` included) must follow somewhere.
        let spaced = parts.any(|q| SPACES.contains(&q.split("::").next().unwrap_or(q)));
        if !spaced && !found.iter().any(|(e, _)| *e == entry) {
            found.push((entry.clone(), l.to_string()));
        }
    }
    found
}

/// The generic-access check finds a load through a generic address and
/// passes state-space ones, whatever qualifiers come first.
#[test]
fn generic_accesses_are_found() {
    let ptx = ".visible .entry good(\n\tld.global.nc.v4.u32 {%r1, %r2, %r3, %r4}, [%rd1];\n\
               \tld.volatile.shared.u32 %r5, [%r6];\n\tst.global.f32 [%rd2], %f1;\n\
               \tld.shared::cluster.f32 %f2, [%r7];\n\tldmatrix.sync.aligned.m8n8.x4.shared.b16 {%r1}, [%r2];\n\
               }\n.visible .entry bad(\n\tld.param.u64 %rd1, [bad_param_0];\n\
               \tld.v4.u32 {%r1, %r2, %r3, %r4}, [%rd3];\n\tst.u32 [%rd4], %r1;\n}\n";
    let found = generic_accesses(ptx);
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].0, "bad");
    assert!(found[0].1.starts_with("ld.v4.u32"));
}

/// The timeline diagnostic (`TERN_CUDA_TIMELINE`) rebuilds every kernel
/// with its records compiled in; that build must compile as well.
#[test]
fn the_timeline_build_compiles() {
    if kernels::nvrtc_version().is_err() && !required() {
        eprintln!("skipped: no NVRTC");
        return;
    }
    // Both orders of trigger and wait (the records are numbered
    // differently).
    for pdl_early in [0, 3] {
        let cfg = kernels::KernelConfig {
            timeline: 0x7f00_0000_0000,
            pdl_early,
            ..Default::default()
        };
        let src = kernels::source_with(&cfg);
        assert!(src.contains("#define TERN_TL 0x7f0000000000ull"));
        assert!(src.contains(&format!("#define PDL_EARLY {pdl_early}\n")));
        let cubin =
            kernels::compile_cubin(&src, 90).unwrap_or_else(|e| panic!("timeline build: {e}"));
        assert!(cubin > 0);
    }
}

/// `PDL_EARLY` puts each kind's trigger for the next launch before or
/// after its wait: in the compiled PTX of a small kernel (`rms_norm_q`,
/// bit 0) and a decode mat-vec (`matvec_q1`, bit 1), the trigger comes
/// first exactly when that kind's bit is set.
#[test]
fn the_launch_order_bits_place_the_trigger() {
    if kernels::nvrtc_version().is_err() && !required() {
        eprintln!("skipped: no NVRTC");
        return;
    }
    for pdl_early in [0u32, 1, 3] {
        let cfg = kernels::KernelConfig {
            pdl_early,
            ..Default::default()
        };
        let ptx = kernels::compile_with(&cfg, 90).unwrap_or_else(|e| panic!("{e}"));
        for (entry, bit) in [("rms_norm_q", 0), ("matvec_q1", 1)] {
            let at = ptx
                .find(&format!(".entry {entry}("))
                .unwrap_or_else(|| panic!("no entry {entry} in the PTX"));
            let body = &ptx[at..];
            let body = &body[..body[1..].find(".entry ").map_or(body.len(), |i| i + 1)];
            let trigger = body
                .find("griddepcontrol.launch_dependents")
                .unwrap_or_else(|| panic!("{entry}: no trigger"));
            let wait = body
                .find("griddepcontrol.wait")
                .unwrap_or_else(|| panic!("{entry}: no wait"));
            assert_eq!(
                trigger < wait,
                (pdl_early >> bit) & 1 == 1,
                "pdl_early {pdl_early}: {entry}'s trigger is on the wrong side of its wait"
            );
        }
    }
}

#[test]
fn a_broken_kernel_reports_the_compiler_log() {
    if kernels::nvrtc_version().is_err() && !required() {
        eprintln!("skipped: no NVRTC");
        return;
    }
    let err = kernels::compile_source(
        "extern \"C\" __global__ void k() { undefined_thing(); }",
        90,
    )
    .expect_err("must not compile");
    assert!(err.to_string().contains("undefined_thing"), "{err}");
}

/// On a machine without a GPU (CI), a CUDA build still runs: `auto` falls
/// back to the CPU, and asking for `cuda` is one clear error, not a panic.
#[test]
fn without_a_gpu_auto_runs_on_the_cpu_and_cuda_is_a_clear_error() {
    use tern_runtime::backend::cuda::CudaBackend;
    use tern_runtime::{Device, Error, Model, ModelParams};
    if CudaBackend::open(0).is_ok() {
        eprintln!("a GPU opened: the no-GPU paths are exercised on machines without one");
        return;
    }
    let path = common::model_path("synthetic/tiny-llama-q4_0.gguf");
    let auto = Model::load(&path, &ModelParams::default()).expect("auto loads on the CPU");
    assert_eq!(auto.backend_name(), "cpu");
    let params = ModelParams {
        device: Device::Cuda,
        ..Default::default()
    };
    match Model::load(&path, &params) {
        Err(e @ Error::DeviceUnavailable(_)) => {
            let msg = e.to_string();
            assert!(!msg.contains('\n'), "one line: {msg}");
            eprintln!("--device cuda without a GPU: {msg}");
        }
        Err(e) => panic!("expected DeviceUnavailable, got {e}"),
        Ok(_) => panic!("--device cuda must fail without a GPU"),
    }
}

/// Where launches run ahead of their waits follows the model's size as
/// measured on the H200 (docs/cuda-kernel-notes.md, ninth pass).
#[test]
fn launch_order_rule_matches_the_measurements() {
    // The shapes measured (file tensor bytes): launches run ahead of their
    // waits for the two small models, not for the 8B.
    for (bytes, want) in [
        (92_100_000u64, 3), // SmolLM2-135M shape, Q4_1
        (246_000_000, 3),   // MiniCPM4-0.5B shape, Q4_0
        (4_605_000_000, 0), // MiniCPM4-8B shape, Q4_0
    ] {
        assert_eq!(
            kernels::KernelConfig::for_weights(bytes).pdl_early,
            want,
            "{bytes} bytes"
        );
    }
    assert_eq!(kernels::KernelConfig::default().pdl_early, 0);
}

/// Two rows a warp in the decode mat-vecs follows the model's hidden size
/// and weight size as measured on the H200 (docs/cuda-kernel-notes.md,
/// eleventh pass): the 0.5B shape's 1,024 takes two, the SmolLM2 shape's
/// 576 and the 8B shape's 4,096 one, and no model over 1 GiB two; the
/// launch order still follows the size.
#[test]
fn mat_vec_rows_rule_matches_the_measurements() {
    for (bytes, n_embd, rows, early) in [
        (92_100_000u64, 576usize, 1u32, 3u32), // SmolLM2-135M shape, Q4_1
        (246_000_000, 1024, 2, 3),             // MiniCPM4-0.5B shape, Q4_0
        (4_605_000_000, 4096, 1, 0),           // MiniCPM4-8B shape, Q4_0
        // The band's edges, and a wide model over the size line.
        (246_000_000, 1023, 1, 3),
        (900_000_000, 4095, 2, 3),
        (4_300_000_000, 3584, 1, 0),
    ] {
        let cfg = kernels::KernelConfig::for_model(bytes, n_embd);
        assert_eq!((cfg.mv_rows, cfg.pdl_early), (rows, early), "{n_embd} wide");
    }
    assert_eq!(kernels::KernelConfig::default().mv_rows, 1);
}

/// The decode mat-vec splits a row over several warps only where the H200
/// measurements said it pays (docs/cuda-kernel-notes.md): the 0.5B's short
/// grid of 4096-column rows; never the 8B's 4096-row products, large grids
/// or rows too short for 32 lanes twice.
#[test]
fn mat_vec_row_split_rule_matches_the_measurements() {
    let sms = 132;
    let cases = [
        ((4608, 4096), 1),  // 8B q/k/v
        ((4096, 4096), 2),  // 8B o
        ((32768, 4096), 1), // 8B gate/up
        ((4096, 16384), 2), // 8B down
        ((73448, 4096), 1), // 8B head
        ((1024, 4096), 2),  // 0.5B down
        ((8192, 1024), 1),  // 0.5B gate/up
        ((576, 1536), 1),   // SmolLM2 down
        ((256, 65536), 4),  // a tiny grid of very long rows
        ((2048, 65536), 4), // split while the grid fits one wave
        ((8192, 65536), 1), // a large row count caps the split
    ];
    for ((rows, cols), want) in cases {
        assert_eq!(
            kernels::mv_ksplit_auto(rows, cols, sms),
            want,
            "{rows}×{cols}"
        );
    }
}
