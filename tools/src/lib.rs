//! tern-tools: the command-line programs.
//!
//! The `tern` binary (`src/bin/tern.rs`) parses flags (`cli`) and runs one
//! subcommand module: `chat`, `generate`, `bench`, `perplexity`, `info`.
//! `default_model` fetches the default model with pip; `common` holds what
//! the subcommands share. Binaries use `anyhow`; the libraries they call
//! return typed errors. `tern-quantize` joins with the quantizer.

pub mod bench;
pub mod chat;
pub mod cli;
pub mod common;
pub mod default_model;
pub mod generate;
pub mod info;
pub mod perplexity;
