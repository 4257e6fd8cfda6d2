//! Chat templates: turning a conversation into the prompt text a model was
//! trained on, by rendering the model's `tokenizer.chat_template` (Jinja)
//! with minijinja, the way Hugging Face renders it with jinja2.
//!
//! A template inside a GGUF is untrusted input (`reliability.md` §6.4): every
//! render runs under [`Limits`] — minijinja fuel (instructions), a recursion
//! limit, an output cap, a per-value size cap and a wall-clock budget — and
//! running past any of them is [`Error::TemplateBudgetExceeded`], never a
//! hang, panic or runaway allocation. See `budget.rs` for what is checked
//! where, and for the one known gap (operator-only growth).
//!
//! [`ChatTemplate::render_segments`] keeps message content apart from
//! template text so that special-token text a user types is never turned
//! into control tokens; see `segments.rs` for how.
//!
//! Submodules: `budget` (limits and accounting), `env` (the environment:
//! options, globals, guarded filters), `pyfmt` (Python `str()` / `json.dumps`
//! output), `clock` (`strftime_now`), `segments` (content/template split).

mod budget;
mod clock;
mod env;
mod pyfmt;
mod segments;

use std::fmt;
use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::{context, Environment, ErrorKind};

pub use budget::Limits;

use crate::error::{Error, Result};
use crate::gguf::{Array, GgufFile, Value as GgufValue};

/// ChatML, used when a model has no template: `<|im_start|>role\ncontent<|im_end|>\n`
/// per message and `<|im_start|>assistant\n` as the generation prompt.
pub const CHATML_TEMPLATE: &str = "{% for message in messages %}\
{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}\
{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// The GGUF key holding the template.
pub const CHAT_TEMPLATE_KEY: &str = "tokenizer.chat_template";

const TEMPLATE_NAME: &str = "chat_template";

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Who speaks: `system`, `user`, `assistant`, or any role the template
    /// knows.
    pub role: String,
    /// The message text.
    pub content: String,
}

impl Message {
    /// A message from anything string-like.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A piece of rendered prompt: template text (may contain special tokens) or
/// message content (special-token text in it must not become control tokens).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Segment {
    /// The rendered text.
    pub text: String,
    /// True for template text, whose special-token text may become control
    /// tokens; false for message content, which is tokenized as plain text.
    pub from_template: bool,
}

/// A compiled chat template with the BOS/EOS text it renders with.
///
/// Rendering takes `&self` and keeps no state between renders, so one
/// template can serve many threads.
#[derive(Clone)]
pub struct ChatTemplate {
    env: Environment<'static>,
    source: Arc<str>,
    bos: String,
    eos: String,
    is_default: bool,
    limits: Limits,
}

impl fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("source_bytes", &self.source.len())
            .field("bos", &self.bos)
            .field("eos", &self.eos)
            .field("is_default", &self.is_default)
            .finish()
    }
}

impl ChatTemplate {
    /// The model's `tokenizer.chat_template`, or ChatML when it has none (the
    /// key is missing or the template is empty or blank). A template that is
    /// not a string or does not compile is [`Error::BadTemplate`]: whether to
    /// fall back is the caller's decision, not a silent one here.
    pub fn from_gguf(file: &GgufFile) -> Result<ChatTemplate> {
        let bos = token_text(file, "tokenizer.ggml.bos_token_id");
        let eos = token_text(file, "tokenizer.ggml.eos_token_id");
        match file.get(CHAT_TEMPLATE_KEY) {
            None => ChatTemplate::chatml(&bos, &eos),
            Some(GgufValue::String(s)) if s.trim().is_empty() => ChatTemplate::chatml(&bos, &eos),
            Some(GgufValue::String(s)) => ChatTemplate::from_source(s, &bos, &eos),
            Some(other) => Err(Error::BadTemplate(format!(
                "{CHAT_TEMPLATE_KEY} has type {}, expected string",
                other.value_type().name()
            ))),
        }
    }

    /// ChatML with the given BOS/EOS text.
    pub fn chatml(bos: &str, eos: &str) -> Result<ChatTemplate> {
        let mut t = ChatTemplate::from_source(CHATML_TEMPLATE, bos, eos)?;
        t.is_default = true;
        Ok(t)
    }

    /// A template from source with the given BOS/EOS token text and the
    /// default [`Limits`].
    pub fn from_source(src: &str, bos: &str, eos: &str) -> Result<ChatTemplate> {
        ChatTemplate::with_limits(src, bos, eos, Limits::default())
    }

    /// A template from source, rendering under `limits`.
    pub fn with_limits(src: &str, bos: &str, eos: &str, limits: Limits) -> Result<ChatTemplate> {
        if src.len() > limits.max_source_bytes {
            return Err(Error::TemplateBudgetExceeded(format!(
                "template source is {} bytes, over the limit of {}",
                src.len(),
                limits.max_source_bytes
            )));
        }
        let mut env = env::new_environment(limits.recursion);
        let source: Arc<str> = Arc::from(src);
        env.add_template_owned(TEMPLATE_NAME, rewrite_generation_tags(src))
            .map_err(|e| compile_error(&e))?;
        Ok(ChatTemplate {
            env,
            source,
            bos: bos.to_string(),
            eos: eos.to_string(),
            is_default: false,
            limits,
        })
    }

    /// True when this is the ChatML fallback, not the model's own template.
    pub fn is_default(&self) -> bool {
        self.is_default
    }

    /// The template's Jinja source.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The limits renders run under.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Render to one string. Equals the concatenation of
    /// [`render_segments`](Self::render_segments).
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        self.render_with(messages, &contents, add_generation_prompt)
    }

    /// Render to segments, so message content can be tokenized without
    /// special-token parsing. Content that the template copies verbatim (or
    /// trimmed) is a `from_template = false` segment; everything else is
    /// template text. Where the template transforms content beyond that, the
    /// split is conservative: see `segments.rs`.
    pub fn render_segments(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<Vec<Segment>> {
        let rendered = self.render(messages, add_generation_prompt)?;
        let nonce = segments::nonce();
        let sentinels: Vec<String> = (0..messages.len())
            .map(|i| segments::sentinel(&nonce, i))
            .collect();
        let refs: Vec<&str> = sentinels.iter().map(String::as_str).collect();
        // A template may branch on content, or refuse the sentinel; then the
        // split falls back to searching for the content in the real render.
        let marked = self
            .render_with(messages, &refs, add_generation_prompt)
            .ok();
        let contents: Vec<&str> = messages.iter().map(|m| m.content.as_str()).collect();
        Ok(segments::split(
            &rendered,
            marked.as_deref(),
            &nonce,
            &contents,
        ))
    }

    /// Render `messages` with their content replaced by `contents`.
    fn render_with(
        &self,
        messages: &[Message],
        contents: &[&str],
        add_generation_prompt: bool,
    ) -> Result<String> {
        let input_bytes = messages
            .iter()
            .map(|m| m.role.len().saturating_add(m.content.len()))
            .fold(0usize, usize::saturating_add);
        let max_output = self.limits.max_output(messages.len(), input_bytes);
        let msgs: Vec<minijinja::Value> = messages
            .iter()
            .zip(contents)
            .map(|(m, c)| {
                minijinja::Value::from_object(MessageObj {
                    role: minijinja::Value::from(m.role.as_str()),
                    content: minijinja::Value::from(*c),
                })
            })
            .collect();
        // HF passes tools=None and documents=None when there are none.
        let ctx = context! {
            messages => msgs,
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
            tools => (),
            documents => (),
        };
        let mut env = self.env.clone();
        env.set_fuel(Some(self.limits.fuel(messages.len())));
        let tmpl = env
            .get_template(TEMPLATE_NAME)
            .map_err(|e| Error::BadTemplate(e.to_string()))?;
        let mut out = budget::CappedWriter { buf: Vec::new() };
        let scope = budget::Scope::enter(&self.limits, max_output);
        let res = tmpl.render_captured_to(ctx, &mut out).map(|_| ());
        let outcome = scope.finish();
        if let Some(reason) = outcome.tripped {
            return Err(Error::TemplateBudgetExceeded(reason));
        }
        if let Some(msg) = outcome.raised {
            return Err(Error::BadTemplate(format!(
                "template raised an exception: {msg}"
            )));
        }
        if let Err(e) = res {
            return Err(render_error(&e, &self.limits, messages.len()));
        }
        String::from_utf8(out.buf)
            .map_err(|_| Error::BadTemplate("template produced invalid UTF-8".into()))
    }
}

/// HF's `{% generation %}…{% endgeneration %}` (a jinja2 extension that
/// marks assistant tokens for training masks) renders its body unchanged;
/// minijinja has no custom tags, so each becomes `{% if true %}` / `{% endif %}`
/// with the same whitespace-control marks, which renders identically.
fn rewrite_generation_tags(src: &str) -> String {
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(at) = rest.find("{%") {
        out.push_str(&rest[..at]);
        let tag = &rest[at..];
        let replaced = parse_generation_tag(tag).map(|(len, open, close, end)| {
            let body = if end { "endif" } else { "if true" };
            (len, format!("{{%{open} {body} {close}%}}"))
        });
        match replaced {
            Some((len, text)) => {
                out.push_str(&text);
                rest = &tag[len..];
            }
            None => {
                out.push_str("{%");
                rest = &tag[2..];
            }
        }
    }
    out.push_str(rest);
    out
}

/// If `s` starts with a `generation`/`endgeneration` tag: its length, its
/// opening and closing whitespace marks, and whether it is the end tag.
fn parse_generation_tag(s: &str) -> Option<(usize, &str, &str, bool)> {
    let inner = s.strip_prefix("{%")?;
    let open = match inner.chars().next()? {
        c @ ('-' | '+') => &inner[..c.len_utf8()],
        _ => "",
    };
    let body = inner[open.len()..].trim_start();
    let (end, body) = if let Some(b) = body.strip_prefix("endgeneration") {
        (true, b)
    } else {
        (false, body.strip_prefix("generation")?)
    };
    let body = body.trim_start();
    let close = match body.chars().next()? {
        c @ ('-' | '+') => &body[..c.len_utf8()],
        _ => "",
    };
    let tail = body[close.len()..].strip_prefix("%}")?;
    Some((s.len() - tail.len(), open, close, end))
}

/// One message as the template sees it: a map with `role` and `content` in
/// that order (Python dict order; minijinja's own maps sort their keys).
#[derive(Debug)]
struct MessageObj {
    role: minijinja::Value,
    content: minijinja::Value,
}

impl Object for MessageObj {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        ObjectRepr::Map
    }
    fn get_value(self: &Arc<Self>, key: &minijinja::Value) -> Option<minijinja::Value> {
        match key.as_str()? {
            "role" => Some(self.role.clone()),
            "content" => Some(self.content.clone()),
            _ => None,
        }
    }
    fn enumerate(self: &Arc<Self>) -> Enumerator {
        Enumerator::Str(&["role", "content"])
    }
}

/// The text of the token a metadata key points at, or "" when the key, the
/// vocabulary or the id is missing or out of range.
fn token_text(file: &GgufFile, key: &str) -> String {
    let Some(id) = file.get(key).and_then(|v| v.as_u64()) else {
        return String::new();
    };
    match file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
        Some(Array::String(tokens)) => usize::try_from(id)
            .ok()
            .and_then(|i| tokens.get(i))
            .cloned()
            .unwrap_or_default(),
        _ => String::new(),
    }
}

fn compile_error(e: &minijinja::Error) -> Error {
    let detail = e.detail().unwrap_or_default();
    if detail.contains("maximum recursion") {
        return Error::TemplateBudgetExceeded(format!("template nests too deeply: {e}"));
    }
    Error::BadTemplate(format!("does not compile: {e}"))
}

fn render_error(e: &minijinja::Error, limits: &Limits, n_messages: usize) -> Error {
    if e.kind() == ErrorKind::OutOfFuel {
        return Error::TemplateBudgetExceeded(format!(
            "render ran past {} instructions",
            limits.fuel(n_messages)
        ));
    }
    let detail = e.detail().unwrap_or_default();
    if detail.contains("recursion limit exceeded") {
        return Error::TemplateBudgetExceeded(format!(
            "recursion deeper than {}",
            limits.recursion
        ));
    }
    if detail.contains("too large") || detail.contains("too many elements") {
        return Error::TemplateBudgetExceeded(format!("a value is too large: {detail}"));
    }
    Error::BadTemplate(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_can_be_shared_across_threads() {
        fn shared<T: Send + Sync>() {}
        shared::<ChatTemplate>();
    }

    #[test]
    fn generation_tags_keep_their_whitespace_marks() {
        assert_eq!(
            rewrite_generation_tags("a{%- generation +%}b{% endgeneration -%}c{% if x %}"),
            "a{%- if true +%}b{% endif -%}c{% if x %}"
        );
        assert_eq!(rewrite_generation_tags("{%generation"), "{%generation");
    }
}
