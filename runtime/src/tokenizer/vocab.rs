//! Reading and validating `tokenizer.ggml.*` metadata into a vocabulary.
//!
//! Everything here comes from an untrusted file, so every array is checked
//! for element type and length before use, every id against the vocabulary
//! size, and every size against a cap; a bad file is a `BadVocab` naming the
//! key, never a panic or an out-of-range index (reliability.md §6.3 T1–T5).
//! Where llama.cpp is lenient in a way that is safe (an empty token text, an
//! out-of-range special id) we follow it so that every model it loads loads
//! here too; where its leniency is a memory bug (`<0x-1>` byte tokens, short
//! score arrays, mistyped arrays) we refuse.

use std::collections::{HashMap, HashSet};

use super::pretok::PreTokenizer;
use crate::error::{Error, Result};
use crate::gguf::{Array, GgufFile, Value};

/// Most tokens a vocabulary may have (the largest real ones are ~260k).
pub const MAX_VOCAB: usize = 4_000_000;
/// Most merge rules a BPE vocabulary may have (real ones: up to ~300k).
pub const MAX_MERGES: usize = 4_000_000;
/// Longest token text accepted, in bytes.
pub const MAX_TOKEN_BYTES: usize = 65_536;

// Token attributes (llama.cpp's `llama_token_attr` meanings, our bit values).
pub(crate) const ATTR_UNKNOWN: u8 = 1;
pub(crate) const ATTR_UNUSED: u8 = 2;
pub(crate) const ATTR_NORMAL: u8 = 4;
pub(crate) const ATTR_CONTROL: u8 = 8;
pub(crate) const ATTR_USER_DEFINED: u8 = 16;
pub(crate) const ATTR_BYTE: u8 = 32;

pub(crate) const KEY_MODEL: &str = "tokenizer.ggml.model";
pub(crate) const KEY_PRE: &str = "tokenizer.ggml.pre";
pub(crate) const KEY_TOKENS: &str = "tokenizer.ggml.tokens";
pub(crate) const KEY_SCORES: &str = "tokenizer.ggml.scores";
pub(crate) const KEY_TYPES: &str = "tokenizer.ggml.token_type";
pub(crate) const KEY_MERGES: &str = "tokenizer.ggml.merges";

/// Which algorithm the vocabulary is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenizerKind {
    /// `gpt2`: byte-level BPE with the given pre-tokenizer.
    Bpe(PreTokenizer),
    /// `llama`: SentencePiece with scores and `<0xNN>` byte fallback.
    Spm,
}

pub(crate) struct Token {
    pub text: Box<str>,
    pub score: f32,
    pub attr: u8,
}

fn bad(key: &str, reason: impl Into<String>) -> Error {
    Error::BadVocab {
        key: key.to_string(),
        reason: reason.into(),
    }
}

fn array<'a>(file: &'a GgufFile, key: &str) -> Result<Option<&'a Array>> {
    match file.get(key) {
        None => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(v) => Err(bad(
            key,
            format!("expected an array, found {}", v.value_type().name()),
        )),
    }
}

pub(crate) fn kind(file: &GgufFile) -> Result<(TokenizerKind, Option<String>)> {
    let model = match file.get(KEY_MODEL) {
        None => return Err(Error::MissingKey(KEY_MODEL.into())),
        Some(Value::String(s)) => s.as_str(),
        Some(v) => {
            return Err(Error::WrongKeyType {
                key: KEY_MODEL.into(),
                expected: "string",
                got: v.value_type().name(),
            })
        }
    };
    let pre = match file.get(KEY_PRE) {
        None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(v) => {
            return Err(bad(
                KEY_PRE,
                format!("expected a string, found {}", v.value_type().name()),
            ))
        }
    };
    match model {
        "llama" => Ok((TokenizerKind::Spm, pre)),
        "gpt2" => {
            let p = match pre.as_deref().map(|p| (p, PreTokenizer::from_name(p))) {
                Some((_, Some(p))) => p,
                Some((name, None)) => {
                    log::warn!("unknown pre-tokenizer '{name}', using gpt-2's: token ids may differ from the model's training");
                    PreTokenizer::Gpt2
                }
                None => {
                    log::warn!("no {KEY_PRE} in the file, using gpt-2's pre-tokenizer: token ids may differ from the model's training");
                    PreTokenizer::Gpt2
                }
            };
            Ok((TokenizerKind::Bpe(p), pre))
        }
        other => Err(Error::UnsupportedTokenizer(other.to_string())),
    }
}

/// Token text to id.
pub(crate) type TextIndex = HashMap<Box<str>, u32>;

/// The token texts, scores and attributes, and the text-to-id index.
pub(crate) fn tokens(file: &GgufFile) -> Result<(Vec<Token>, TextIndex)> {
    let texts = match array(file, KEY_TOKENS)? {
        None => return Err(bad(KEY_TOKENS, "missing")),
        Some(Array::String(v)) => v,
        Some(a) => {
            return Err(bad(
                KEY_TOKENS,
                format!("expected strings, found {}", a.element_type().name()),
            ))
        }
    };
    let n = texts.len();
    if n == 0 {
        return Err(bad(KEY_TOKENS, "empty vocabulary"));
    }
    if n > MAX_VOCAB {
        return Err(bad(
            KEY_TOKENS,
            format!("{n} tokens, over the limit of {MAX_VOCAB}"),
        ));
    }
    let scores: Option<Vec<f32>> = match array(file, KEY_SCORES)? {
        None => None,
        Some(a) => {
            let v: Vec<f32> = match a {
                Array::F32(v) => v.clone(),
                // llama.cpp accepts integer scores too.
                Array::I32(v) => v.iter().map(|&s| s as f32).collect(),
                other => {
                    return Err(bad(
                        KEY_SCORES,
                        format!("expected f32 or i32, found {}", other.element_type().name()),
                    ))
                }
            };
            if v.len() < n {
                return Err(bad(
                    KEY_SCORES,
                    format!("{} scores for {n} tokens", v.len()),
                ));
            }
            if let Some(i) = v.iter().take(n).position(|s| s.is_nan()) {
                return Err(bad(KEY_SCORES, format!("score of token {i} is NaN")));
            }
            Some(v)
        }
    };
    let types: Option<&Vec<i32>> = match array(file, KEY_TYPES)? {
        None => None,
        Some(Array::I32(v)) => {
            if v.len() < n {
                return Err(bad(KEY_TYPES, format!("{} types for {n} tokens", v.len())));
            }
            Some(v)
        }
        Some(a) => {
            return Err(bad(
                KEY_TYPES,
                format!("expected i32, found {}", a.element_type().name()),
            ))
        }
    };

    let mut tokens = Vec::with_capacity(n);
    let mut index: HashMap<Box<str>, u32> = HashMap::with_capacity(n);
    for (i, text) in texts.iter().enumerate() {
        if text.len() > MAX_TOKEN_BYTES {
            return Err(bad(
                KEY_TOKENS,
                format!(
                    "token {i} is {} bytes, over the limit of {MAX_TOKEN_BYTES}",
                    text.len()
                ),
            ));
        }
        // llama.cpp renames empty tokens rather than refusing the model;
        // an empty text could never be produced or matched anyway.
        let text: Box<str> = if text.is_empty() {
            log::warn!("empty token at index {i}");
            format!("[EMPTY_{i}]").into()
        } else {
            text.as_str().into()
        };
        // n <= MAX_VOCAB, so the index fits in u32.
        let id = i as u32;
        if index.insert(text.clone(), id).is_some() {
            return Err(bad(
                KEY_TOKENS,
                format!("token text {text:?} appears more than once (again at {i})"),
            ));
        }
        let score = scores
            .as_ref()
            .and_then(|s| s.get(i))
            .copied()
            .unwrap_or(0.0);
        let attr = match types.and_then(|t| t.get(i)) {
            None => ATTR_NORMAL,
            Some(1) => ATTR_NORMAL,
            Some(2) => ATTR_UNKNOWN,
            Some(3) => ATTR_CONTROL,
            Some(4) => ATTR_USER_DEFINED,
            Some(5) => ATTR_UNUSED,
            Some(6) => ATTR_BYTE,
            Some(_) => 0, // undefined: renders as nothing, never produced
        };
        tokens.push(Token { text, score, attr });
    }
    Ok((tokens, index))
}

/// Parse a byte token's text, `<0xNN>` with exactly two hex digits.
pub(crate) fn parse_byte_token(text: &str) -> Option<u8> {
    let hex = text.strip_prefix("<0x")?.strip_suffix('>')?;
    if hex.len() != 2 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u8::from_str_radix(hex, 16).ok()
}

/// The value of each BYTE-typed token, checked: malformed text or two
/// tokens for one byte value is a bad vocabulary.
pub(crate) fn byte_values(tokens: &[Token]) -> Result<Vec<Option<u8>>> {
    let mut seen = [false; 256];
    let mut out = Vec::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        if t.attr & ATTR_BYTE == 0 {
            out.push(None);
            continue;
        }
        let b = parse_byte_token(&t.text).ok_or_else(|| {
            bad(
                KEY_TOKENS,
                format!("byte token {i} has text {:?}, expected <0xNN>", t.text),
            )
        })?;
        if std::mem::replace(&mut seen[b as usize], true) {
            return Err(bad(
                KEY_TOKENS,
                format!("byte 0x{b:02X} has more than one byte token (again at {i})"),
            ));
        }
        out.push(Some(b));
    }
    Ok(out)
}

/// BPE merge rules, keyed by the ids of the halves; rank = position.
pub(crate) fn merges(
    file: &GgufFile,
    index: &HashMap<Box<str>, u32>,
) -> Result<HashMap<(u32, u32), (u32, u32)>> {
    let list = match array(file, KEY_MERGES)? {
        None => return Err(bad(KEY_MERGES, "missing (a gpt2 tokenizer needs merges)")),
        Some(Array::String(v)) => v,
        Some(a) => {
            return Err(bad(
                KEY_MERGES,
                format!("expected strings, found {}", a.element_type().name()),
            ))
        }
    };
    if list.len() > MAX_MERGES {
        return Err(bad(
            KEY_MERGES,
            format!("{} merges, over the limit of {MAX_MERGES}", list.len()),
        ));
    }
    let mut rules = HashMap::with_capacity(list.len());
    let mut joined = String::new();
    for (rank, m) in list.iter().enumerate() {
        // The separator is the first space after the first byte, so a merge
        // whose left half is itself a space (" x") still splits right.
        let split = m
            .bytes()
            .skip(1)
            .position(|b| b == b' ')
            .map(|p| p + 1)
            .ok_or_else(|| bad(KEY_MERGES, format!("merge {rank} ({m:?}) has no space")))?;
        // A space byte is always a char boundary, so these cannot fail.
        let (a, b) = (
            m.get(..split).unwrap_or(""),
            m.get(split + 1..).unwrap_or(""),
        );
        let id = |s: &str| {
            index.get(s).copied().ok_or_else(|| {
                bad(
                    KEY_MERGES,
                    format!("merge {rank} ({m:?}) names {s:?}, which is not a token"),
                )
            })
        };
        let (ia, ib) = (id(a)?, id(b)?);
        joined.clear();
        joined.push_str(a);
        joined.push_str(b);
        let merged = id(&joined)?;
        // The first (lowest-ranked) occurrence of a pair wins, as in llama.cpp.
        rules.entry((ia, ib)).or_insert((rank as u32, merged));
    }
    Ok(rules)
}

/// Special token ids and flags resolved from metadata and llama.cpp's defaults.
pub(crate) struct Specials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
    pub eot: Option<u32>,
    pub eom: Option<u32>,
    pub unk: Option<u32>,
    pub add_bos: bool,
    pub add_eos: bool,
    pub add_space_prefix: bool,
    pub eog: HashSet<u32>,
}

fn flag(file: &GgufFile, key: &str, default: bool) -> bool {
    match file.get(key) {
        None => default,
        Some(Value::Bool(b)) => *b,
        Some(v) => {
            log::warn!(
                "{key} has type {}, expected bool: using {default}",
                v.value_type().name()
            );
            default
        }
    }
}

/// A special id from metadata; out-of-range or mistyped ids are treated as
/// absent (with a warning), keeping the default, as llama.cpp does.
fn special_id(file: &GgufFile, key: &str, default: Option<u32>, n: usize) -> Option<u32> {
    let default = default.filter(|&d| (d as usize) < n);
    let Some(v) = file.get(key) else {
        return default;
    };
    match v.as_i64() {
        Some(id) if id >= 0 && (id as u64) < n as u64 => Some(id as u32),
        Some(id) => {
            log::warn!("{key} = {id} is outside the vocabulary of {n} tokens: ignored");
            default
        }
        None => {
            log::warn!(
                "{key} has type {}, expected an integer: ignored",
                v.value_type().name()
            );
            default
        }
    }
}

const EOT_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "<|end_of_text|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "<｜end▁of▁sentence｜>",
    "<end_of_utterance>",
];
const FIM_TEXTS: &[&[&str]] = &[
    &[
        "<|fim_prefix|>",
        "<fim-prefix>",
        "<fim_prefix>",
        "<｜fim▁begin｜>",
        "<PRE>",
        "▁<PRE>",
        "<|code_prefix|>",
        "<|prefix|>",
    ],
    &[
        "<|fim_suffix|>",
        "<fim-suffix>",
        "<fim_suffix>",
        "<｜fim▁hole｜>",
        "<SUF>",
        "▁<SUF>",
        "<|code_suffix|>",
        "<|suffix|>",
    ],
    &[
        "<|fim_middle|>",
        "<fim-middle>",
        "<fim_middle>",
        "<｜fim▁end｜>",
        "<MID>",
        "▁<MID>",
        "<|code_middle|>",
        "<|middle|>",
    ],
];
const FIM_EOG_TEXTS: &[&[&str]] = &[
    &["<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>", "[PAD]"],
    &[
        "<|fim_repo|>",
        "<|repo_name|>",
        "<fim-repo>",
        "<REPO>",
        "<reponame>",
    ],
    &["<|file_sep|>"],
];
/// Token texts llama.cpp treats as end-of-generation wherever they appear.
const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// Resolve special ids, BOS/EOS flags and the end-of-generation set; marks
/// auto-detected control tokens in `tokens` as llama.cpp does.
pub(crate) fn specials(
    file: &GgufFile,
    kind: TokenizerKind,
    tokens: &mut [Token],
    index: &HashMap<Box<str>, u32>,
) -> Specials {
    let n = tokens.len();
    let key = |k: &str| format!("tokenizer.ggml.{k}");
    let (def_bos, def_eos, def_unk, def_add_bos, def_prefix) = match kind {
        TokenizerKind::Spm => (Some(1), Some(2), Some(0), true, true),
        // llama.cpp's (odd) gpt2 defaults; Llama 3's pre-tokenizer adds BOS.
        TokenizerKind::Bpe(p) => (Some(11), Some(11), None, p == PreTokenizer::Llama3, false),
    };
    let bos = special_id(file, &key("bos_token_id"), def_bos, n);
    let eos = special_id(file, &key("eos_token_id"), def_eos, n);
    let unk = special_id(file, &key("unknown_token_id"), def_unk, n);
    let mut eot = special_id(file, &key("eot_token_id"), None, n);
    let mut eom = special_id(file, &key("eom_token_id"), None, n);
    let mut fim = [
        special_id(file, &key("fim_pre_token_id"), None, n)
            .or_else(|| special_id(file, &key("prefix_token_id"), None, n)),
        special_id(file, &key("fim_suf_token_id"), None, n)
            .or_else(|| special_id(file, &key("suffix_token_id"), None, n)),
        special_id(file, &key("fim_mid_token_id"), None, n)
            .or_else(|| special_id(file, &key("middle_token_id"), None, n)),
    ];
    let mut fim_eog = [
        special_id(file, &key("fim_pad_token_id"), None, n),
        special_id(file, &key("fim_rep_token_id"), None, n),
        special_id(file, &key("fim_sep_token_id"), None, n),
    ];
    let add_bos = flag(file, &key("add_bos_token"), def_add_bos);
    let add_eos = flag(file, &key("add_eos_token"), false);
    let add_space_prefix = flag(file, &key("add_space_prefix"), def_prefix);

    // Models converted without explicit ids still name these tokens by
    // text; find them (lowest id wins) and make sure they are control tokens.
    let find = |texts: &[&str]| texts.iter().filter_map(|t| index.get(*t).copied()).min();
    let mark = |id: Option<u32>, tokens: &mut [Token]| {
        if let Some(t) = id.and_then(|i| tokens.get_mut(i as usize)) {
            t.attr |= ATTR_CONTROL;
        }
    };
    if eot.is_none() {
        eot = find(EOT_TEXTS);
        mark(eot, tokens);
    }
    if eom.is_none() {
        eom = find(&["<|eom_id|>"]);
        mark(eom, tokens);
    }
    for (slot, texts) in fim.iter_mut().zip(FIM_TEXTS) {
        if slot.is_none() {
            *slot = find(texts);
            mark(*slot, tokens);
        }
    }
    for (slot, texts) in fim_eog.iter_mut().zip(FIM_EOG_TEXTS) {
        if slot.is_none() {
            *slot = find(texts);
            mark(*slot, tokens);
        }
    }

    let mut eog: HashSet<u32> = fim_eog.iter().flatten().copied().collect();
    for t in EOG_TEXTS {
        if let Some(&id) = index.get(*t) {
            eog.insert(id);
            mark(Some(id), tokens);
        }
    }
    eog.extend([eos, eot, eom].into_iter().flatten());

    // Harmony / solar-open: "<|end|>" ends a message, not the generation,
    // when the vocabulary also has "<|return|>" and "<|call|>" (or the
    // "<|calls|>"/"<|flush|>" pair).
    let has = |eog: &HashSet<u32>, t: &str| index.get(t).is_some_and(|id| eog.contains(id));
    if let Some(&end) = index.get("<|end|>") {
        let calls = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
        if eog.contains(&end) && calls && (has(&eog, "<|return|>") || has(&eog, "<|flush|>")) {
            eog.remove(&end);
            if let Some(t) = tokens.get_mut(end as usize) {
                t.attr = ATTR_USER_DEFINED;
            }
        }
    }
    // Gemma 4 / PLaMo: "</s>" is an ordinary token there.
    if let Some(&s) = index.get("</s>") {
        if eog.contains(&s) && (has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>")) {
            eog.remove(&s);
            if let Some(t) = tokens.get_mut(s as usize) {
                t.attr = ATTR_NORMAL;
            }
        }
    }

    Specials {
        bos,
        eos,
        eot,
        eom,
        unk,
        add_bos,
        add_eos,
        add_space_prefix,
        eog,
    }
}
