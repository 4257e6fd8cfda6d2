//! Tokenizers from GGUF metadata: text to token ids and back, matching
//! llama.cpp's tokenizer id for id.
//!
//! Two tokenizer models are supported: `gpt2` (byte-level BPE, with the
//! pre-tokenizer that `tokenizer.ggml.pre` names; see [`PreTokenizer`]) and
//! `llama` (SentencePiece with scores and `<0xNN>` byte fallback, as
//! Llama 2 and MiniCPM use). The pipeline is llama.cpp's:
//!
//! 1. Special-token partition: the text is cut at every occurrence of a
//!    special token's text, longest tokens first. User-defined tokens are
//!    always recognised; control and unknown tokens only with
//!    `parse_special`.
//! 2. Each plain-text fragment is tokenized on its own: BPE pre-tokenizes
//!    into words and merges bytes by rank within each word; SPM escapes
//!    spaces to U+2581 (adding one in front of a fragment that starts the
//!    text or follows a special token, if `add_space_prefix`) and merges
//!    characters by score.
//! 3. BOS/EOS are added when asked and the metadata (or llama.cpp's default
//!    for the model: SPM adds BOS, gpt2 does not unless Llama 3) says so.
//!
//! End of generation: EOS, EOT, EOM, the FIM pad/repo/separator tokens and
//! every token whose text llama.cpp lists as ending generation
//! (`<|im_end|>`, `<|endoftext|>`, `<|eot_id|>`, `</s>`, ...).

mod bpe;
mod pretok;
mod spm;
mod unicode;
mod unicode_data;
mod vocab;

use std::collections::{HashMap, HashSet};
use std::ops::Range;
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::gguf::GgufFile;
pub use pretok::PreTokenizer;
pub use vocab::{TokenizerKind, MAX_MERGES, MAX_TOKEN_BYTES, MAX_VOCAB};
use vocab::{ATTR_BYTE, ATTR_CONTROL, ATTR_NORMAL, ATTR_UNKNOWN, ATTR_USER_DEFINED};

/// Longest text [`Tokenizer::encode`] accepts in one call, in bytes.
pub const MAX_INPUT_BYTES: usize = 1 << 30;

/// Words up to this many bytes have their BPE result cached.
const CACHE_WORD_BYTES: usize = 48;
/// The cache is emptied when it reaches this many words, bounding memory.
const CACHE_ENTRIES: usize = 1 << 16;

/// A tokenizer built from a GGUF's `tokenizer.ggml.*` metadata.
pub struct Tokenizer {
    kind: TokenizerKind,
    tokens: Vec<vocab::Token>,
    index: HashMap<Box<str>, u32>,
    /// What each token renders as with `special` = true (llama.cpp's piece cache).
    pieces: Vec<Box<[u8]>>,
    /// Control, user-defined and unknown tokens, longest text first.
    special_by_len: Vec<u32>,
    bos: Option<u32>,
    eos: Option<u32>,
    eot: Option<u32>,
    eom: Option<u32>,
    add_bos: bool,
    add_eos: bool,
    add_space_prefix: bool,
    /// llama.cpp's post-detokenization clean-up of " ," etc. (gpt2 and Llama 3 only).
    clean_spaces: bool,
    eog: HashSet<u32>,
    /// BPE: merges; SPM: unused (empty).
    merges: bpe::Merges,
    /// Llama 3: a word that is already a token is not merged.
    ignore_merges: bool,
    /// BPE: the token of each byte's GPT-2 character. SPM: the byte-fallback token.
    byte_tokens: [Option<u32>; 256],
    byte_chars: [char; 256],
    cache: Mutex<WordCache>,
}

/// A pre-tokenized word's bytes to its BPE ids.
type WordCache = HashMap<Box<[u8]>, Box<[u32]>>;

enum Fragment {
    Text(Range<usize>),
    Token(u32),
}

impl Tokenizer {
    /// Build the tokenizer the file describes.
    ///
    /// Errors: [`Error::UnsupportedTokenizer`] for models other than `gpt2`
    /// and `llama`; [`Error::BadVocab`] naming the key for missing, mistyped,
    /// short or inconsistent arrays, malformed byte tokens or merges.
    /// Special-token ids outside the vocabulary are treated as absent (with a
    /// warning), as llama.cpp treats them.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let (kind, pre_name) = vocab::kind(file)?;
        let (mut tokens, index) = vocab::tokens(file)?;
        let byte_values = vocab::byte_values(&tokens)?;
        let rules = match kind {
            TokenizerKind::Bpe(_) => vocab::merges(file, &index)?,
            TokenizerKind::Spm => HashMap::new(),
        };
        let sp = vocab::specials(file, kind, &mut tokens, &index);

        let byte_chars = unicode::byte_to_char_table();
        let mut char_bytes: HashMap<char, u8> = HashMap::with_capacity(256);
        for (b, c) in byte_chars.iter().enumerate() {
            char_bytes.insert(*c, b as u8);
        }
        let mut byte_tokens = [None; 256];
        for (b, slot) in byte_tokens.iter_mut().enumerate() {
            *slot = match kind {
                TokenizerKind::Bpe(_) => {
                    let mut buf = [0u8; 4];
                    index.get(&*byte_chars[b].encode_utf8(&mut buf)).copied()
                }
                TokenizerKind::Spm => {
                    let hex = format!("<0x{b:02X}>");
                    let single = (b < 0x80).then(|| ((b as u8) as char).to_string());
                    index
                        .get(hex.as_str())
                        .or_else(|| single.and_then(|s| index.get(s.as_str())))
                        .copied()
                        // llama.cpp would abort here; the unknown token is a
                        // visible stand-in for a byte the vocabulary lacks.
                        .or(sp.unk)
                }
            };
        }

        let pieces = tokens
            .iter()
            .zip(&byte_values)
            .map(|(t, bv)| render(kind, t, *bv, &char_bytes))
            .collect();
        let mut special_by_len: Vec<u32> = (0..tokens.len() as u32)
            .filter(|&i| {
                tokens.get(i as usize).is_some_and(|t| {
                    t.attr & (ATTR_CONTROL | ATTR_USER_DEFINED | ATTR_UNKNOWN) != 0
                })
            })
            .collect();
        special_by_len.sort_by_key(|&i| {
            std::cmp::Reverse(tokens.get(i as usize).map_or(0, |t| t.text.len()))
        });

        let (ignore_merges, clean_spaces) = match kind {
            TokenizerKind::Spm => (false, false),
            TokenizerKind::Bpe(p) => {
                let clean = match p {
                    PreTokenizer::Gpt2 | PreTokenizer::Llama3 => true,
                    PreTokenizer::Qwen2 => {
                        pre_name.as_deref() == Some("stablelm2")
                            || pre_name.as_deref() == Some("hunyuan")
                            || pre_name.as_deref() == Some("megrez")
                    }
                    PreTokenizer::SmolLm => {
                        !matches!(pre_name.as_deref(), Some("smollm") | Some("command-r"))
                    }
                };
                (p == PreTokenizer::Llama3, clean)
            }
        };

        Ok(Tokenizer {
            kind,
            tokens,
            index,
            pieces,
            special_by_len,
            bos: sp.bos,
            eos: sp.eos,
            eot: sp.eot,
            eom: sp.eom,
            add_bos: sp.add_bos,
            add_eos: sp.add_eos,
            add_space_prefix: sp.add_space_prefix,
            clean_spaces,
            eog: sp.eog,
            merges: bpe::Merges { rules },
            ignore_merges,
            byte_tokens,
            byte_chars,
            cache: Mutex::new(HashMap::new()),
        })
    }

    /// Vocabulary size.
    pub fn n_vocab(&self) -> usize {
        self.tokens.len()
    }

    /// Which algorithm (and for BPE, which pre-tokenizer) this is.
    pub fn kind(&self) -> TokenizerKind {
        self.kind
    }

    /// Text to token ids. `add_special`: add BOS/EOS as the metadata asks.
    /// `parse_special`: recognise special/control token text in `text`
    /// (user-defined tokens are recognised either way, as in llama.cpp).
    ///
    /// Errors: [`Error::InputTooLong`] past [`MAX_INPUT_BYTES`].
    pub fn encode(&self, text: &str, add_special: bool, parse_special: bool) -> Result<Vec<u32>> {
        if text.len() > MAX_INPUT_BYTES {
            return Err(Error::InputTooLong {
                limit: MAX_INPUT_BYTES,
            });
        }
        let fragments = self.partition(text, parse_special);
        let mut out = Vec::new();
        if add_special && self.add_bos {
            out.extend(self.bos);
        }
        match self.kind {
            TokenizerKind::Spm => {
                let mut after_special = true;
                let mut buf = String::new();
                for f in &fragments {
                    match f {
                        Fragment::Token(id) => {
                            out.push(*id);
                            after_special = true;
                        }
                        Fragment::Text(r) => {
                            buf.clear();
                            if self.add_space_prefix && after_special {
                                buf.push('\u{2581}');
                            }
                            for c in text.get(r.clone()).unwrap_or("").chars() {
                                buf.push(if c == ' ' { '\u{2581}' } else { c });
                            }
                            spm::tokenize(
                                &buf,
                                &|s| {
                                    let id = *self.index.get(s)?;
                                    Some((id, self.tokens.get(id as usize)?.score))
                                },
                                &|b| self.byte_tokens[b as usize],
                                &mut out,
                            );
                            after_special = false;
                        }
                    }
                }
            }
            TokenizerKind::Bpe(pre) => {
                for f in &fragments {
                    match f {
                        Fragment::Token(id) => out.push(*id),
                        Fragment::Text(r) => {
                            let frag = text.get(r.clone()).unwrap_or("");
                            for w in pre.split(frag) {
                                self.bpe_word(frag.as_bytes().get(w).unwrap_or(&[]), &mut out);
                            }
                        }
                    }
                }
            }
        }
        if add_special && self.add_eos {
            out.extend(self.eos);
        }
        Ok(out)
    }

    /// Cut `text` at special-token occurrences, longest tokens first.
    fn partition(&self, text: &str, parse_special: bool) -> Vec<Fragment> {
        let mut frags = Vec::new();
        if text.is_empty() {
            return frags;
        }
        frags.push(Fragment::Text(0..text.len()));
        for &id in &self.special_by_len {
            let Some(tok) = self.tokens.get(id as usize) else {
                continue;
            };
            if !parse_special && tok.attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
                continue;
            }
            let needle: &str = &tok.text;
            // Cheap pre-check: most special tokens do not occur at all.
            if !text.contains(needle) {
                continue;
            }
            let mut next = Vec::with_capacity(frags.len() + 2);
            for f in frags {
                let Fragment::Text(r) = f else {
                    next.push(f);
                    continue;
                };
                let hay = text.get(r.clone()).unwrap_or("");
                let mut at = 0;
                while let Some(p) = hay.get(at..).and_then(|h| h.find(needle)) {
                    let start = at + p;
                    if start > at {
                        next.push(Fragment::Text(r.start + at..r.start + start));
                    }
                    next.push(Fragment::Token(id));
                    at = start + needle.len();
                }
                if at < hay.len() {
                    next.push(Fragment::Text(r.start + at..r.end));
                }
            }
            frags = next;
        }
        frags
    }

    /// BPE one pre-tokenized word (raw bytes), through the cache.
    fn bpe_word(&self, word: &[u8], out: &mut Vec<u32>) {
        let cacheable = word.len() <= CACHE_WORD_BYTES;
        if cacheable {
            if let Ok(cache) = self.cache.lock() {
                if let Some(ids) = cache.get(word) {
                    out.extend_from_slice(ids);
                    return;
                }
            }
        }
        let start = out.len();
        let whole = if self.ignore_merges {
            let mapped: String = word.iter().map(|&b| self.byte_chars[b as usize]).collect();
            self.index.get(mapped.as_str()).copied()
        } else {
            None
        };
        match whole {
            Some(id) => out.push(id),
            None => {
                let initial: Vec<Option<u32>> =
                    word.iter().map(|&b| self.byte_tokens[b as usize]).collect();
                self.merges.apply(&initial, out);
            }
        }
        if cacheable {
            if let Ok(mut cache) = self.cache.lock() {
                if cache.len() >= CACHE_ENTRIES {
                    cache.clear();
                }
                let ids = out.get(start..).unwrap_or(&[]);
                cache.insert(word.into(), ids.into());
            }
        }
    }

    /// The bytes a token stands for (special tokens render as their text when
    /// `special`, else as nothing). Out-of-range ids give no bytes.
    pub fn token_bytes(&self, id: u32, special: bool) -> Vec<u8> {
        self.piece(id, special).to_vec()
    }

    fn piece(&self, id: u32, special: bool) -> &[u8] {
        let Some(t) = self.tokens.get(id as usize) else {
            return &[];
        };
        if !special && t.attr & (ATTR_CONTROL | ATTR_UNKNOWN) != 0 {
            return &[];
        }
        self.pieces.get(id as usize).map_or(&[], |p| p)
    }

    /// Ids to text (lossy on invalid UTF-8), as llama.cpp's `llama_detokenize`
    /// with `remove_special` = false and `unparse_special` = `special`: for
    /// SPM the first token's leading space is dropped, and for gpt2/Llama 3
    /// vocabularies the " ," / " 's" clean-up is applied.
    pub fn decode(&self, ids: &[u32], special: bool) -> String {
        let mut buf: Vec<u8> = Vec::new();
        for (i, &id) in ids.iter().enumerate() {
            let p = self.piece(id, special);
            let p = if i == 0 && self.add_space_prefix {
                p.strip_prefix(b" ").unwrap_or(p)
            } else {
                p
            };
            buf.extend_from_slice(p);
        }
        if self.clean_spaces {
            clean_up_spaces(&mut buf);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }

    /// Beginning-of-sequence token, if any.
    pub fn bos(&self) -> Option<u32> {
        self.bos
    }
    /// End-of-sequence token, if any.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }
    /// End-of-turn token, if any (from metadata or found by its text).
    pub fn eot(&self) -> Option<u32> {
        self.eot
    }
    /// End-of-message token (`<|eom_id|>`), if any.
    pub fn eom(&self) -> Option<u32> {
        self.eom
    }
    /// Whether `encode(.., add_special = true, ..)` prepends BOS.
    pub fn add_bos(&self) -> bool {
        self.add_bos && self.bos.is_some()
    }
    /// Whether `encode(.., add_special = true, ..)` appends EOS.
    pub fn add_eos(&self) -> bool {
        self.add_eos && self.eos.is_some()
    }

    /// True for tokens that end generation (EOS, EOT, `<|im_end|>`-like).
    pub fn is_eog(&self, id: u32) -> bool {
        self.eog.contains(&id)
    }

    /// The end-of-generation tokens, ascending.
    pub fn eog_tokens(&self) -> Vec<u32> {
        let mut v: Vec<u32> = self.eog.iter().copied().collect();
        v.sort_unstable();
        v
    }

    /// True for control tokens (rendered only when `special`, matched in
    /// text only with `parse_special`).
    pub fn is_control(&self, id: u32) -> bool {
        self.tokens
            .get(id as usize)
            .is_some_and(|t| t.attr & ATTR_CONTROL != 0)
    }

    /// The text of a token as stored in the vocabulary.
    pub fn token_text(&self, id: u32) -> Option<&str> {
        self.tokens.get(id as usize).map(|t| &*t.text)
    }

    /// The id of the token whose stored text is exactly `text`.
    pub fn token_id(&self, text: &str) -> Option<u32> {
        self.index.get(text).copied()
    }
}

/// What a token renders as with `special` = true.
fn render(
    kind: TokenizerKind,
    t: &vocab::Token,
    byte: Option<u8>,
    char_bytes: &HashMap<char, u8>,
) -> Box<[u8]> {
    if t.attr & (ATTR_CONTROL | ATTR_UNKNOWN | ATTR_USER_DEFINED) != 0 {
        return t.text.as_bytes().into();
    }
    if t.attr & ATTR_NORMAL != 0 {
        return match kind {
            TokenizerKind::Spm => t.text.replace('\u{2581}', " ").into_bytes().into(),
            TokenizerKind::Bpe(_) => {
                let mut out = Vec::with_capacity(t.text.len());
                for c in t.text.chars() {
                    match char_bytes.get(&c) {
                        Some(&b) => out.push(b),
                        // Not a GPT-2 byte character: pass it through as UTF-8
                        // (llama.cpp writes an "[UNK_BYTE..." marker here).
                        None => out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes()),
                    }
                }
                out.into()
            }
        };
    }
    if t.attr & ATTR_BYTE != 0 {
        if let Some(b) = byte {
            return Box::new([b]);
        }
    }
    Box::new([])
}

/// llama.cpp's detokenizer clean-up for gpt2-style vocabularies: drop the
/// space before `?!.,`, the spaces around a lone `'`, and the space before
/// `'s`, `'m`, `'re`, `'ve`. Three in-place passes over the bytes.
fn clean_up_spaces(text: &mut Vec<u8>) {
    // Pass 1: " ?", " !", " .", " ," lose the space.
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    for i in 0..text.len() {
        let x = text[i];
        if i > 0 && text[i - 1] == b' ' && matches!(x, b'?' | b'!' | b'.' | b',') {
            out.pop();
        }
        out.push(x);
    }
    *text = out;

    // Pass 2: " ' " becomes "'". The byte after the quote is blanked (to
    // NUL, and skipped) in place, so a following check sees the NUL.
    let n = text.len();
    let mut total = usize::from(n > 0);
    let mut i = 1;
    while i < n {
        let x = text[i];
        if x == b'\'' && i + 1 < n && text[i - 1] == b' ' && text[i + 1] == b' ' {
            total -= 1;
            i += 1;
            text[i] = 0;
        }
        text[total] = x;
        total += 1;
        i += 1;
    }
    text.truncate(total);

    // Pass 3: " 's", " 'm", " 're", " 've" lose the space.
    let mut out: Vec<u8> = Vec::with_capacity(text.len());
    let n = text.len();
    for i in 0..n {
        let x = text[i];
        if i > 0 && text[i - 1] == b' ' && x == b'\'' && i + 1 < n {
            let x1 = text[i + 1];
            let x2 = text.get(i + 2).copied();
            let drop = matches!(x1, b's' | b'm')
                || (i + 2 < n && matches!((x1, x2), (b'r', Some(b'e')) | (b'v', Some(b'e'))));
            if drop {
                out.pop();
            }
        }
        out.push(x);
    }
    *text = out;
}

/// Turns a stream of token ids into text, never emitting a partial UTF-8 sequence.
///
/// Tokens render as [`Tokenizer::token_bytes`] with `special` = false by
/// default (control tokens such as `<|im_end|>` produce nothing); bytes that
/// cannot start or continue a valid sequence come out as U+FFFD at once,
/// and an incomplete sequence at the end is held until it completes.
pub struct StreamDecoder {
    pending: Vec<u8>,
    special: bool,
}

impl StreamDecoder {
    /// A decoder with nothing pending.
    pub fn new() -> StreamDecoder {
        StreamDecoder {
            pending: Vec::new(),
            special: false,
        }
    }

    /// A decoder that renders special tokens as their text when `special`.
    pub fn with_special(special: bool) -> StreamDecoder {
        StreamDecoder {
            pending: Vec::new(),
            special,
        }
    }

    /// Add a token; returns the text that is now complete.
    pub fn push(&mut self, tok: &Tokenizer, id: u32) -> String {
        self.pending.extend_from_slice(tok.piece(id, self.special));
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    out.push_str(&String::from_utf8_lossy(&self.pending[..valid]));
                    match e.error_len() {
                        // Incomplete at the end: keep it for the next token.
                        None => {
                            self.pending.drain(..valid);
                            break;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..valid + bad);
                        }
                    }
                }
            }
        }
        out
    }

    /// Whatever is left (invalid bytes as U+FFFD).
    pub fn flush(&mut self) -> String {
        let s = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        s
    }
}

impl Default for StreamDecoder {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_up_matches_llama_cpp_rules() {
        let run = |s: &str| {
            let mut v = s.as_bytes().to_vec();
            clean_up_spaces(&mut v);
            String::from_utf8(v).unwrap()
        };
        assert_eq!(run("Hello , world !"), "Hello, world!");
        assert_eq!(run("it 's a ' quote ' x"), "it's a'quote'x");
        assert_eq!(
            run("we 're they 've I 'm he 'll"),
            "we're they've I'm he 'll"
        );
        assert_eq!(run(""), "");
        assert_eq!(run(" "), " ");
    }
}
