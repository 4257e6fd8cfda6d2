//! Text generation on a session: prompt processing, the sample-and-feed
//! loop, streaming, cancellation, usage counts and timings, and multi-turn
//! chat over a chat template.
//!
//! `Session::generate` returns an iterator of pieces (token id plus the text
//! that token completes); `Session::complete` drives the same loop with a
//! callback. A `CancelToken` stops either from another thread within one
//! forward. `Chat` keeps a conversation, re-renders it with the model's
//! template each turn and reuses the longest cached token prefix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::api::Session;
use crate::chat::Message;
use crate::error::{Error, Result};
use crate::sampling::{Sampler, SamplerParams};
use crate::session::Batch;
use crate::tokenizer::{StreamDecoder, Tokenizer};

/// A flag another thread (or a signal handler) sets to stop generation.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// Ask the generation using this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether `cancel` was called since the last `reset`.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Clear the flag for the next generation.
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }
}

/// How to generate.
#[derive(Clone, Debug)]
pub struct GenerateParams {
    /// Stop after this many tokens (`None`: until end-of-generation or a full context).
    pub max_tokens: Option<usize>,
    /// Sampling settings.
    pub sampler: SamplerParams,
    /// Stop at the tokenizer's end-of-generation tokens.
    pub stop_at_eog: bool,
    /// Checked before every forward.
    pub cancel: Option<CancelToken>,
}

impl Default for GenerateParams {
    fn default() -> GenerateParams {
        GenerateParams {
            max_tokens: None,
            sampler: SamplerParams::default(),
            stop_at_eog: true,
            cancel: None,
        }
    }
}

/// One generated token and the text it completes (possibly empty while a
/// multi-byte character is still incomplete).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    /// The token id.
    pub id: u32,
    /// The text this token completes; empty while a multi-byte character
    /// is still incomplete.
    pub text: String,
}

/// Why generation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FinishReason {
    /// The model produced an end-of-generation token.
    EndOfGeneration,
    /// `max_tokens` reached.
    Length,
    /// The context is full; start over (or open a larger context) to go on.
    ContextFull,
    /// Cancelled through the `CancelToken`.
    Cancelled,
}

/// Token counts and timings of one generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage {
    /// Prompt tokens processed (not counting any reused from the cache).
    pub prompt_tokens: usize,
    /// Prompt tokens found already in the cache and reused.
    pub cached_tokens: usize,
    /// Time spent processing the prompt.
    pub prompt_time: Duration,
    /// Tokens generated.
    pub generated_tokens: usize,
    /// Time spent generating (sampling and one forward per token).
    pub generation_time: Duration,
}

impl Usage {
    /// Prompt tokens per second.
    pub fn prompt_tokens_per_sec(&self) -> f64 {
        rate(self.prompt_tokens, self.prompt_time)
    }

    /// Generated tokens per second.
    pub fn generation_tokens_per_sec(&self) -> f64 {
        rate(self.generated_tokens, self.generation_time)
    }
}

fn rate(n: usize, t: Duration) -> f64 {
    if t.is_zero() {
        0.0
    } else {
        n as f64 / t.as_secs_f64()
    }
}

/// The result of a whole generation.
#[derive(Clone, Debug, PartialEq)]
pub struct Completion {
    /// The generated text (end-of-generation tokens not included).
    pub text: String,
    /// The generated token ids (including a final end-of-generation token).
    pub tokens: Vec<u32>,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Counts and timings.
    pub usage: Usage,
}

/// A running generation; iterate it for pieces.
pub struct Generation<'s> {
    session: &'s mut Session,
    sampler: Sampler,
    decoder: StreamDecoder,
    params: GenerateParams,
    logits: Vec<f32>,
    /// The one-token batch each step feeds, reused so decoding allocates nothing.
    step_batch: Batch,
    finish: Option<FinishReason>,
    usage: Usage,
    /// Text held back at the end, flushed when generation ends.
    tail_flushed: bool,
}

impl Session {
    /// Process `prompt` (appended to whatever the cache holds) and return an
    /// iterator over generated pieces. Errors in prompt processing (a prompt
    /// that does not fit, cancellation) are returned here and leave the
    /// session as it was.
    pub fn generate(&mut self, prompt: &[u32], params: GenerateParams) -> Result<Generation<'_>> {
        self.model().tokenizer()?;
        params.sampler.validate()?;
        let cancel = params.cancel.clone();
        let t0 = Instant::now();
        let logits = self.feed(prompt, || cancel.as_ref().is_some_and(|c| c.is_cancelled()))?;
        let usage = Usage {
            prompt_tokens: prompt.len(),
            prompt_time: t0.elapsed(),
            ..Usage::default()
        };
        Ok(Generation {
            sampler: Sampler::new(params.sampler.clone()),
            session: self,
            decoder: StreamDecoder::new(),
            params,
            logits,
            finish: None,
            usage,
            tail_flushed: false,
            step_batch: Batch::new(&[0], 0),
        })
    }

    /// Generate to the end, calling `on_piece` for every piece; it returns
    /// `false` to stop early (reported as `Cancelled`).
    pub fn complete(
        &mut self,
        prompt: &[u32],
        params: GenerateParams,
        mut on_piece: impl FnMut(&Piece) -> bool,
    ) -> Result<Completion> {
        let mut g = self.generate(prompt, params)?;
        let mut text = String::new();
        let mut tokens = Vec::new();
        while let Some(p) = g.next() {
            let p = p?;
            text.push_str(&p.text);
            tokens.push(p.id);
            if !on_piece(&p) {
                g.finish = Some(FinishReason::Cancelled);
                text.push_str(&g.decoder.flush());
                break;
            }
        }
        Ok(Completion {
            text,
            tokens,
            finish: g.finish.unwrap_or(FinishReason::Cancelled),
            usage: g.usage.clone(),
        })
    }
}

impl Generation<'_> {
    /// Why generation ended, once it has.
    pub fn finish_reason(&self) -> Option<FinishReason> {
        self.finish
    }

    /// Counts and timings so far.
    pub fn usage(&self) -> &Usage {
        &self.usage
    }

    fn end(&mut self, why: FinishReason) -> Option<Result<Piece>> {
        self.finish = Some(why);
        self.flush_tail()
    }

    /// Emit bytes still held by the stream decoder as a last, id-less piece.
    fn flush_tail(&mut self) -> Option<Result<Piece>> {
        if self.tail_flushed {
            return None;
        }
        self.tail_flushed = true;
        let rest = self.decoder.flush();
        (!rest.is_empty()).then_some(Ok(Piece {
            id: u32::MAX,
            text: rest,
        }))
    }

    fn step(&mut self) -> Result<Option<Piece>> {
        if self.finish.is_some() {
            return Ok(None);
        }
        if self
            .params
            .cancel
            .as_ref()
            .is_some_and(|c| c.is_cancelled())
        {
            self.finish = Some(FinishReason::Cancelled);
            return Ok(None);
        }
        if self
            .params
            .max_tokens
            .is_some_and(|m| self.usage.generated_tokens >= m)
        {
            self.finish = Some(FinishReason::Length);
            return Ok(None);
        }
        let t0 = Instant::now();
        let id = self.sampler.sample(&self.logits, self.session.tokens());
        self.usage.generated_tokens += 1;
        let model = self.session.model().clone();
        let tok: &Tokenizer = model.tokenizer()?;
        if self.params.stop_at_eog && tok.is_eog(id) {
            self.usage.generation_time += t0.elapsed();
            self.finish = Some(FinishReason::EndOfGeneration);
            return Ok(Some(Piece {
                id,
                text: String::new(),
            }));
        }
        let text = self.decoder.push(tok, id);
        let last = self
            .params
            .max_tokens
            .is_some_and(|m| self.usage.generated_tokens >= m);
        if last {
            // The last token is not fed: nothing would read its logits.
            self.finish = Some(FinishReason::Length);
        } else if self.session.len() + 1 > self.session.n_ctx() {
            self.finish = Some(FinishReason::ContextFull);
        } else {
            let pos = self.session.len() as u32;
            self.step_batch.tokens[0] = id;
            self.step_batch.positions[0] = pos;
            self.session
                .forward_into(&self.step_batch, &mut self.logits)?;
        }
        self.usage.generation_time += t0.elapsed();
        Ok(Some(Piece { id, text }))
    }
}

impl Iterator for Generation<'_> {
    type Item = Result<Piece>;

    fn next(&mut self) -> Option<Result<Piece>> {
        match self.step() {
            Ok(Some(p)) => Some(Ok(p)),
            Ok(None) => {
                let why = self.finish.unwrap_or(FinishReason::Cancelled);
                self.end(why)
            }
            Err(e) => {
                self.finish = Some(FinishReason::Cancelled);
                self.tail_flushed = true;
                Some(Err(e))
            }
        }
    }
}

/// A multi-turn conversation over one session.
pub struct Chat {
    session: Session,
    system: Option<String>,
    messages: Vec<Message>,
}

impl Chat {
    /// A conversation on `session`, with an optional system prompt.
    pub fn new(session: Session, system: Option<String>) -> Chat {
        Chat {
            session,
            system,
            messages: Vec::new(),
        }
    }

    /// The messages so far (without the system prompt).
    pub fn messages(&self) -> &[Message] {
        &self.messages
    }

    /// The session underneath.
    pub fn session(&self) -> &Session {
        &self.session
    }

    /// Forget the conversation (the system prompt stays) and empty the cache.
    pub fn reset(&mut self) {
        self.messages.clear();
        self.session.clear();
    }

    fn all_messages(&self) -> Vec<Message> {
        let mut v = Vec::with_capacity(self.messages.len() + 1);
        if let Some(s) = &self.system {
            v.push(Message {
                role: "system".into(),
                content: s.clone(),
            });
        }
        v.extend(self.messages.iter().cloned());
        v
    }

    /// The prompt tokens for the conversation so far plus a generation prompt.
    fn prompt_tokens(&self) -> Result<Vec<u32>> {
        let model = self.session.model();
        let tok = model.tokenizer()?;
        let segments = model
            .chat_template()
            .render_segments(&self.all_messages(), true)?;
        prompt_from_segments(tok, &segments)
    }

    /// Add a user message and generate the assistant's answer, streaming
    /// pieces to `on_piece` (return `false` to stop). The answer, complete or
    /// not, joins the conversation. If the conversation no longer fits the
    /// context, the user message is dropped again and `ContextFull` returned.
    pub fn send(
        &mut self,
        user: &str,
        params: GenerateParams,
        on_piece: impl FnMut(&Piece) -> bool,
    ) -> Result<Completion> {
        self.messages.push(Message {
            role: "user".into(),
            content: user.to_string(),
        });
        let result = self.answer(params, on_piece);
        match &result {
            Ok(c) => self.messages.push(Message {
                role: "assistant".into(),
                content: c.text.clone(),
            }),
            Err(_) => {
                self.messages.pop();
            }
        }
        result
    }

    fn answer(
        &mut self,
        params: GenerateParams,
        on_piece: impl FnMut(&Piece) -> bool,
    ) -> Result<Completion> {
        let prompt = self.prompt_tokens()?;
        if prompt.len() >= self.session.n_ctx() {
            return Err(Error::ContextFull {
                position: prompt.len(),
                n_ctx: self.session.n_ctx(),
            });
        }
        // Reuse the longest prefix already in the cache; at least one token
        // must be fed to get fresh logits.
        let common = self
            .session
            .tokens()
            .iter()
            .zip(&prompt)
            .take_while(|(a, b)| a == b)
            .count()
            .min(prompt.len() - 1);
        let previous = self.session.tokens().to_vec();
        self.session.truncate(common)?;
        match self.session.complete(&prompt[common..], params, on_piece) {
            Ok(mut c) => {
                c.usage.cached_tokens = common;
                Ok(c)
            }
            Err(e) => {
                // Prompt processing failed and rolled itself back to `common`;
                // the dropped tail of the cache is recomputed next turn.
                debug_assert!(self.session.len() <= previous.len());
                Err(e)
            }
        }
    }
}

/// Tokenize rendered template segments: template text may contain special
/// tokens, message content never becomes a control token. BOS is added when
/// the tokenizer asks for it and the template did not already write it.
pub fn prompt_from_segments(
    tok: &Tokenizer,
    segments: &[crate::chat::Segment],
) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for (i, s) in segments.iter().enumerate() {
        if s.text.is_empty() {
            continue;
        }
        let ids = tok.encode(&s.text, false, s.from_template)?;
        if i == 0 || out.is_empty() {
            if let Some(bos) = tok.bos().filter(|_| tok.add_bos()) {
                if ids.first() != Some(&bos) {
                    out.push(bos);
                }
            }
        }
        out.extend(ids);
    }
    Ok(out)
}
