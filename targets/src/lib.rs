//! tern-targets: per-device build profiles (not yet filled).
//!
//! This crate will own one profile per target — `cpu-x86_64`, `cpu-aarch64`,
//! `jetson-orin` (aarch64, sm_87, cortex-a78ae), `rtx4090` (x86_64, sm_89)
//! and `hopper` (sm_90) — each naming its Rust triple, linker, target-cpu,
//! cargo features and CUDA arch, plus the glue that builds a release bundle
//! (tern, tern-quantize, README) for a profile. It holds data and build glue
//! only; no inference code lives here.
