//! tern-tools: the command-line programs (not yet filled).
//!
//! This crate will own the `tern` binary (chat, generate, bench, perplexity,
//! info, freqvocab) and `tern-quantize`, built with clap and env_logger, plus
//! developer tasks. Binaries use `anyhow` for errors; the libraries they call
//! return typed errors. Until the CLI lands it carries the repository-wide
//! tidy test (`tests/tidy.rs`).
