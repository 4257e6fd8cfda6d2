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
