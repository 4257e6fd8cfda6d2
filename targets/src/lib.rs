//! tern-targets: per-device build profiles and release bundles.
//!
//! A [`Profile`] names everything that differs between the devices tern
//! ships for — Rust triple, linker, `-C target-cpu`, cargo features, CUDA
//! arch and tuning defaults (threads, KV type) — in one table
//! ([`PROFILES`]: `cpu-x86_64`, `cpu-aarch64`, `jetson-orin`, `rtx4090`,
//! `hopper`). The `tern-bundle` binary builds a release bundle for one of
//! them (see [`bundle::build`]):
//!
//! ```text
//! cargo run -p tern-targets --bin tern-bundle -- cpu-aarch64
//! ```
//!
//! This crate holds data and build glue only; no inference code lives here,
//! and nothing in the runtime depends on it.

pub mod bundle;
pub mod info;
pub mod profiles;

pub use bundle::{build, Bundle, Error};
pub use profiles::{find, names, KvType, Profile, Threads, PROFILES};
