//! Calibration data: a text turned into `samples` token sequences of
//! `seq_len` tokens with the model's own tokenizer.
//!
//! The text is tokenized once without special tokens; the sequences are
//! windows of it, evenly spaced from the start to the end of the text so
//! they cover all of it and never overlap, each preceded by BOS when the
//! model adds one (then the window is one token shorter). The same text and
//! settings always give the same sequences. The text's sha256 is recorded
//! in the output file.

use sha2::{Digest, Sha256};
use tern_runtime::Tokenizer;

/// Calibration sequences and where they came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CalibSet {
    /// `samples` sequences of exactly `seq_len` tokens.
    pub sequences: Vec<Vec<u32>>,
    /// Tokens in the whole text (without BOS).
    pub text_tokens: usize,
    /// Lowercase hex sha256 of the text's bytes.
    pub sha256: String,
    /// The BOS token each sequence starts with, if the model adds one.
    pub bos: Option<u32>,
}

/// Lowercase hex sha256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Cut `text` into `samples` sequences of `seq_len` tokens (see the module
/// documentation). Errors, as one line: a zero count, a `seq_len` too short
/// to hold a token after BOS, a tokenizer failure, or a text too short for
/// `samples` disjoint windows.
pub fn prepare(
    text: &str,
    tok: &Tokenizer,
    samples: usize,
    seq_len: usize,
) -> Result<CalibSet, String> {
    if samples == 0 {
        return Err("--samples must be at least 1".into());
    }
    let bos = tok.bos().filter(|_| tok.add_bos());
    let body = seq_len.saturating_sub(usize::from(bos.is_some()));
    if body == 0 {
        return Err(format!(
            "--seq-len {seq_len} leaves no room for text after the BOS token"
        ));
    }
    let tokens = tok
        .encode(text, false, false)
        .map_err(|e| format!("cannot tokenize the calibration text: {e}"))?;
    let need = samples
        .checked_mul(body)
        .ok_or_else(|| "--samples × --seq-len is too large".to_string())?;
    if tokens.len() < need {
        return Err(format!(
            "the calibration text is too short: it has {} tokens, and {samples} samples of {body} \
             text tokens need {need} (use a longer text, fewer --samples or a shorter --seq-len)",
            tokens.len()
        ));
    }
    // Evenly spaced starts from 0 to the last full window; the stride is at
    // least `body` because the text holds `samples` windows.
    let last = tokens.len() - body;
    let sequences = (0..samples)
        .map(|i| {
            let start = if samples == 1 {
                0
            } else {
                i * last / (samples - 1)
            };
            let mut s = Vec::with_capacity(seq_len);
            s.extend(bos);
            s.extend_from_slice(&tokens[start..start + body]);
            s
        })
        .collect();
    Ok(CalibSet {
        sequences,
        text_tokens: tokens.len(),
        sha256: sha256_hex(text.as_bytes()),
        bos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_input() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
