//! tern-quant: the offline quantizer (not yet filled).
//!
//! This crate will own calibration (collecting layer inputs through the
//! runtime's forward pass), GPTQ and prefix-aware GPTQ (P-GPTQ: the first
//! positions of every calibration sequence are left out of the Hessian),
//! the round-to-nearest baseline, and packing the results into GGUF tensor
//! types, both GGML's own (Q4_0, Q4_1, Q8_0) and tern's packed GPTQ type.
//! See `../shared/research/algorithms.md` §4 and the tern-quantize issue.
//!
//! It depends on `tern-runtime` for GGUF I/O, block layouts and the forward
//! pass; nothing in the runtime depends on it.
