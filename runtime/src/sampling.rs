//! Samplers (stub: being written).

/// Sampling settings, llama.cpp's names and defaults.
#[derive(Clone, Debug, PartialEq)]
pub struct SamplerParams {
    pub temperature: f32,
    pub top_k: usize,
    pub top_p: f32,
    pub min_p: f32,
    pub repeat_penalty: f32,
    pub repeat_last_n: usize,
    pub frequency_penalty: f32,
    pub presence_penalty: f32,
    pub seed: u64,
}

/// A seeded sampler.
pub struct Sampler {}

impl Sampler {
    /// A sampler with these settings.
    pub fn new(_params: SamplerParams) -> Sampler {
        todo!()
    }
    /// Pick the next token from `logits` given the tokens so far.
    pub fn sample(&mut self, _logits: &[f32], _history: &[u32]) -> u32 {
        todo!()
    }
}

impl Default for SamplerParams {
    fn default() -> Self {
        todo!()
    }
}

impl SamplerParams {
    /// Check the settings.
    pub fn validate(&self) -> crate::Result<()> {
        todo!()
    }
}
