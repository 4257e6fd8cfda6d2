//! Chat templates (stub: being written).
use crate::error::Result;
use crate::gguf::GgufFile;

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub role: String,
    pub content: String,
}

/// A piece of rendered prompt: template text (may contain special tokens) or
/// message content (special-token text in it must not become control tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    pub text: String,
    pub from_template: bool,
}

/// A chat template.
pub struct ChatTemplate {}

impl ChatTemplate {
    /// The model's `tokenizer.chat_template`, or ChatML when it has none.
    pub fn from_gguf(_file: &GgufFile) -> Result<ChatTemplate> {
        todo!()
    }
    /// A template from source with the given BOS/EOS token text.
    pub fn from_source(_src: &str, _bos: &str, _eos: &str) -> Result<ChatTemplate> {
        todo!()
    }
    /// Render to one string.
    pub fn render(&self, _messages: &[Message], _add_generation_prompt: bool) -> Result<String> {
        todo!()
    }
    /// Render to segments, so message content can be tokenized without special-token parsing.
    pub fn render_segments(
        &self,
        _messages: &[Message],
        _add_generation_prompt: bool,
    ) -> Result<Vec<Segment>> {
        todo!()
    }
}
