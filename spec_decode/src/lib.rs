//! tern-spec-decode: speculative decoding (not yet filled).
//!
//! This crate will own the FR-Spec frequency-ranked vocabulary (token counts
//! over a corpus, the top V' ids with EOS forced in), drafters whose LM head
//! is pruned to that vocabulary, chain and tree verification through the
//! runtime's batched forward, and lossless acceptance: greedy output equal to
//! plain decoding, and min(1, p/q) acceptance with residual resampling when
//! sampling. See `../shared/research/algorithms.md` §2, §3 and §5.
//!
//! It talks to the runtime only through its public API (a batched forward at
//! arbitrary positions, KV truncation); nothing in the runtime depends on it.
