//! Tokenizers from GGUF metadata (stub: being written).
use crate::error::Result;
use crate::gguf::GgufFile;

/// A tokenizer built from a GGUF's `tokenizer.ggml.*` metadata.
pub struct Tokenizer {}

impl Tokenizer {
    /// Build the tokenizer the file describes.
    pub fn from_gguf(_file: &GgufFile) -> Result<Tokenizer> {
        todo!()
    }
    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        todo!()
    }
    /// Text to token ids. `add_special`: add BOS/EOS as the metadata asks.
    /// `parse_special`: recognise special/control token text in `text`.
    pub fn encode(
        &self,
        _text: &str,
        _add_special: bool,
        _parse_special: bool,
    ) -> Result<Vec<u32>> {
        todo!()
    }
    /// The bytes a token stands for (special tokens render as their text when `special`).
    pub fn token_bytes(&self, _id: u32, _special: bool) -> Vec<u8> {
        todo!()
    }
    /// Ids to text (lossy on invalid UTF-8).
    pub fn decode(&self, _ids: &[u32], _special: bool) -> String {
        todo!()
    }
    /// Beginning-of-sequence token, if any.
    pub fn bos(&self) -> Option<u32> {
        todo!()
    }
    /// End-of-sequence token, if any.
    pub fn eos(&self) -> Option<u32> {
        todo!()
    }
    /// True for tokens that end generation (EOS, EOT, `<|im_end|>`-like).
    pub fn is_eog(&self, _id: u32) -> bool {
        todo!()
    }
    /// The text of a token as stored in the vocabulary.
    pub fn token_text(&self, _id: u32) -> Option<&str> {
        todo!()
    }
}

/// Turns a stream of token ids into text, never emitting a partial UTF-8 sequence.
pub struct StreamDecoder {}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> StreamDecoder {
        todo!()
    }
    /// Add a token; returns the text that is now complete.
    pub fn push(&mut self, _tok: &Tokenizer, _id: u32) -> String {
        todo!()
    }
    /// Whatever is left (invalid bytes as U+FFFD).
    pub fn flush(&mut self) -> String {
        todo!()
    }
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Tokenizer {
    /// Whether the metadata asks for BOS at the start of a sequence.
    pub fn add_bos(&self) -> bool {
        todo!()
    }
}
