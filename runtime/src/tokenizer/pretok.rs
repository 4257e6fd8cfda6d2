//! Pre-tokenizers for byte-level BPE: split text into the words that BPE
//! merges within.
//!
//! Each `tokenizer.ggml.pre` names a regex from the model's tokenizer.json;
//! llama.cpp runs the common ones through hand-written scanners rather than
//! a regex engine, and where a scanner and the regex differ the scanner is
//! what produced the reference ids. So these are scanners too, written to
//! make the same decisions: a segment is scanned left to right, each step
//! takes the first alternative of the pattern that matches at the cursor,
//! and look-ahead never crosses the segment's end.

use std::ops::Range;

use super::unicode::Flags;

/// Which pre-tokenizer a BPE vocabulary uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PreTokenizer {
    /// GPT-2: `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
    Gpt2,
    /// Llama 3: case-insensitive contractions, `[^\r\n\p{L}\p{N}]?\p{L}+`,
    /// `\p{N}{1,3}`, punctuation runs with trailing newlines, newline runs.
    Llama3,
    /// Qwen2: as Llama 3 but every digit is its own word.
    Qwen2,
    /// SmolLM / StarCoder: every `\p{N}` code point isolated, then GPT-2.
    SmolLm,
}

impl PreTokenizer {
    /// The pre-tokenizer llama.cpp uses for a `tokenizer.ggml.pre` value,
    /// or `None` for a name tern does not know.
    pub fn from_name(name: &str) -> Option<PreTokenizer> {
        Some(match name {
            "gpt-2" | "phi-2" | "jina-es" | "jina-de" | "gigachat" | "jina-v2-es"
            | "jina-v2-de" | "a.x-4.0" | "mellum" | "modern-bert" | "mpt" | "olmo" | "jais"
            | "exaone4" | "trillion" | "granite-docling" | "jina-v1-en" | "jina-v2-code"
            | "roberta-bpe" => PreTokenizer::Gpt2,
            "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "falcon-h1" | "pixtral"
            | "midm-2.0" | "lfm2" | "jina-v5-nano" => PreTokenizer::Llama3,
            "qwen2" | "deepseek-r1-qwen" | "kormo" | "f2llmv2" | "megrez" | "stablelm2"
            | "hunyuan" => PreTokenizer::Qwen2,
            "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone"
            | "minerva-7b" | "mellum2" => PreTokenizer::SmolLm,
            _ => return None,
        })
    }

    /// Split `text` into words, as byte ranges that cover it in order.
    pub(crate) fn split(self, text: &str) -> Vec<Range<usize>> {
        let cps = Cps::new(text);
        let mut words = Vec::new();
        let whole = 0..cps.len();
        match self {
            PreTokenizer::Gpt2 => gpt2(&cps, whole, &mut words),
            PreTokenizer::Llama3 => llama3(&cps, whole, 3, &mut words),
            PreTokenizer::Qwen2 => llama3(&cps, whole, 1, &mut words),
            PreTokenizer::SmolLm => {
                // Isolate each number code point, then scan the pieces between.
                let mut start = 0;
                for i in 0..cps.len() {
                    if cps.flags[i].number {
                        gpt2(&cps, start..i, &mut words);
                        words.push(i..i + 1);
                        start = i + 1;
                    }
                }
                gpt2(&cps, start..cps.len(), &mut words);
            }
        }
        words
            .into_iter()
            .map(|r| cps.byte_offset(r.start)..cps.byte_offset(r.end))
            .collect()
    }
}

/// The code points of a text with their byte offsets and flags.
struct Cps {
    chars: Vec<char>,
    flags: Vec<Flags>,
    offsets: Vec<usize>,
}

impl Cps {
    fn new(text: &str) -> Cps {
        let n = text.chars().count();
        let mut cps = Cps {
            chars: Vec::with_capacity(n),
            flags: Vec::with_capacity(n),
            offsets: Vec::with_capacity(n + 1),
        };
        for (off, c) in text.char_indices() {
            cps.chars.push(c);
            cps.flags.push(Flags::of(c));
            cps.offsets.push(off);
        }
        cps.offsets.push(text.len());
        cps
    }
    fn len(&self) -> usize {
        self.chars.len()
    }
    fn byte_offset(&self, i: usize) -> usize {
        self.offsets.get(i).copied().unwrap_or(0)
    }
}

/// A view of one segment: look-ups outside it see nothing, as in a regex
/// run on the segment alone.
struct Seg<'a> {
    cps: &'a Cps,
    range: Range<usize>,
}

impl Seg<'_> {
    fn ch(&self, i: usize) -> Option<char> {
        if self.range.contains(&i) {
            self.cps.chars.get(i).copied()
        } else {
            None
        }
    }
    fn flags(&self, i: usize) -> Option<Flags> {
        if self.range.contains(&i) {
            self.cps.flags.get(i).copied()
        } else {
            None
        }
    }
    fn is_letter(&self, i: usize) -> bool {
        self.flags(i).is_some_and(|f| f.letter)
    }
    fn is_number(&self, i: usize) -> bool {
        self.flags(i).is_some_and(|f| f.number)
    }
    fn is_space(&self, i: usize) -> bool {
        self.flags(i).is_some_and(|f| f.space)
    }
    /// In the segment and not white space, letter or number: `[^\s\p{L}\p{N}]`.
    fn is_other(&self, i: usize) -> bool {
        self.flags(i)
            .is_some_and(|f| !(f.space || f.letter || f.number))
    }
    fn is_cr_lf(&self, i: usize) -> bool {
        matches!(self.ch(i), Some('\r' | '\n'))
    }

    /// Length of an English contraction at `pos` (`'s`, `'t`, `'re`, ...), if any.
    fn contraction(&self, pos: usize, ignore_case: bool) -> Option<usize> {
        if self.ch(pos) != Some('\'') {
            return None;
        }
        let lower = |c: Option<char>| {
            c.map(|c| {
                if ignore_case {
                    c.to_ascii_lowercase()
                } else {
                    c
                }
            })
        };
        let a = lower(self.ch(pos + 1))?;
        if matches!(a, 's' | 't' | 'm' | 'd') {
            return Some(2);
        }
        let b = lower(self.ch(pos + 2))?;
        matches!((a, b), ('r', 'e') | ('v', 'e') | ('l', 'l')).then_some(3)
    }

    /// The white-space run at `pos`: its length and the end of its last CR/LF.
    fn space_run(&self, pos: usize) -> (usize, Option<usize>) {
        let mut n = 0;
        let mut last_crlf = None;
        while self.is_space(pos + n) {
            if self.is_cr_lf(pos + n) {
                last_crlf = Some(pos + n + 1);
            }
            n += 1;
        }
        (n, last_crlf)
    }

    /// `\s+(?!\S)|\s+` at `pos`, given the run length `n`: a run followed by
    /// a non-space gives its last space to the next word.
    fn space_end(&self, pos: usize, n: usize) -> usize {
        if n > 1 && self.ch(pos + n).is_some() {
            pos + n - 1
        } else if n > 0 {
            pos + n
        } else {
            pos + 1
        }
    }
}

fn gpt2(cps: &Cps, range: Range<usize>, words: &mut Vec<Range<usize>>) {
    let seg = Seg {
        cps,
        range: range.clone(),
    };
    let mut pos = range.start;
    while pos < range.end {
        let end = gpt2_step(&seg, pos);
        words.push(pos..end);
        pos = end;
    }
}

fn gpt2_step(seg: &Seg, pos: usize) -> usize {
    if let Some(n) = seg.contraction(pos, false) {
        return pos + n;
    }
    let space = seg.ch(pos) == Some(' ');
    // ` ?X+`: an optional leading space, then a run of one class.
    let head = pos + usize::from(space);
    if seg.is_letter(head) {
        return run(head, |i| seg.is_letter(i));
    }
    if seg.is_number(head) {
        return run(head, |i| seg.is_number(i));
    }
    if seg.is_other(head) {
        return run(head, |i| seg.is_other(i));
    }
    let (n, _) = seg.space_run(pos);
    seg.space_end(pos, n)
}

/// Llama 3 (`digits` = 3) and Qwen2 (`digits` = 1).
fn llama3(cps: &Cps, range: Range<usize>, digits: usize, words: &mut Vec<Range<usize>>) {
    let seg = Seg {
        cps,
        range: range.clone(),
    };
    let mut pos = range.start;
    while pos < range.end {
        let end = llama3_step(&seg, pos, digits);
        words.push(pos..end);
        pos = end;
    }
}

fn llama3_step(seg: &Seg, pos: usize, digits: usize) -> usize {
    if let Some(n) = seg.contraction(pos, true) {
        return pos + n;
    }
    let f = seg.flags(pos).unwrap_or(Flags {
        letter: false,
        number: false,
        space: false,
    });
    // `[^\r\n\p{L}\p{N}]?\p{L}+`
    if !(seg.is_cr_lf(pos) || f.number) && (f.letter || seg.is_letter(pos + 1)) {
        return run(pos + 1, |i| seg.is_letter(i));
    }
    // `\p{N}{1,digits}`
    if f.number {
        // Bounded scan: a long digit run must not be rescanned per group.
        return run(pos, |i| i < pos + digits && seg.is_number(i));
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*` — the code point at `pos` itself is in the
    // segment, so a lone trailing space also lands here (as one word).
    let space = seg.ch(pos) == Some(' ');
    let head = pos + usize::from(space);
    let next = seg.flags(head);
    if next.is_none_or(|g| !(g.space || g.letter || g.number)) {
        let end = run(head, |i| seg.is_other(i));
        return run(end, |i| seg.is_cr_lf(i));
    }
    // `\s*[\r\n]+`, then `\s+(?!\S)|\s+`.
    let (n, last_crlf) = seg.space_run(pos);
    if let Some(end) = last_crlf {
        return end;
    }
    seg.space_end(pos, n)
}

/// The end of the run starting at `from` of code points satisfying `pred`.
fn run(from: usize, pred: impl Fn(usize) -> bool) -> usize {
    let mut i = from;
    while pred(i) {
        i += 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(p: PreTokenizer, text: &str) -> Vec<&str> {
        p.split(text).into_iter().map(|r| &text[r]).collect()
    }

    #[test]
    fn gpt2_words() {
        assert_eq!(
            words(PreTokenizer::Gpt2, "Hello world's  end!!\n\n x"),
            ["Hello", " world", "'s", " ", " end", "!!", "\n\n", " x"]
        );
        assert_eq!(words(PreTokenizer::Gpt2, "a  "), ["a", "  "]);
    }

    #[test]
    fn llama3_words() {
        assert_eq!(
            words(PreTokenizer::Llama3, "I'M 12345 ok.\n\n  hi"),
            ["I", "'M", " ", "123", "45", " ok", ".\n\n", " ", " hi"]
        );
        assert_eq!(
            words(PreTokenizer::Qwen2, "x 123"),
            ["x", " ", "1", "2", "3"]
        );
    }

    #[test]
    fn smollm_isolates_digits() {
        assert_eq!(
            words(PreTokenizer::SmolLm, "a 12b"),
            ["a", " ", "1", "2", "b"]
        );
    }
}
