//! SentencePiece (`llama` tokenizer model) merging, as llama.cpp does it.
//!
//! The text (spaces already escaped to U+2581) starts as one symbol per
//! character. Any adjacent pair whose concatenation is a vocabulary token is
//! a candidate; the candidate with the highest score is merged first, ties
//! to the leftmost. Stale candidates are detected by length: symbols only
//! grow, so a pair whose combined length changed was merged elsewhere. What
//! is left that is not a token falls back to `<0xNN>` byte tokens.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

const NONE: usize = usize::MAX;

struct Symbol {
    start: usize,
    len: usize,
    prev: usize,
    next: usize,
}

struct Candidate {
    score: f32,
    left: usize,
    right: usize,
    len: usize,
}

impl PartialEq for Candidate {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Candidate {}
impl PartialOrd for Candidate {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Candidate {
    /// Max-heap order: higher score first, then the leftmost pair.
    fn cmp(&self, other: &Self) -> Ordering {
        self.score
            .total_cmp(&other.score)
            .then_with(|| other.left.cmp(&self.left))
    }
}

/// Tokenize one escaped fragment. `lookup` maps text to (id, score);
/// `byte_token` gives the fallback token for a byte (None: dropped).
pub(crate) fn tokenize(
    text: &str,
    lookup: &dyn Fn(&str) -> Option<(u32, f32)>,
    byte_token: &dyn Fn(u8) -> Option<u32>,
    out: &mut Vec<u32>,
) {
    let mut syms: Vec<Symbol> = Vec::with_capacity(text.len());
    for (start, c) in text.char_indices() {
        let i = syms.len();
        syms.push(Symbol {
            start,
            len: c.len_utf8(),
            prev: if i == 0 { NONE } else { i - 1 },
            next: i + 1,
        });
    }
    if let Some(last) = syms.last_mut() {
        last.next = NONE;
    }
    let mut heap = BinaryHeap::new();
    let try_pair = |heap: &mut BinaryHeap<Candidate>, syms: &[Symbol], left: usize| {
        let Some(l) = syms.get(left) else { return };
        let Some(r) = syms.get(l.next) else { return };
        let len = l.len + r.len;
        let Some(piece) = text.get(l.start..l.start + len) else {
            return;
        };
        if let Some((_, score)) = lookup(piece) {
            heap.push(Candidate {
                score,
                left,
                right: l.next,
                len,
            });
        }
    };
    for i in 0..syms.len().saturating_sub(1) {
        try_pair(&mut heap, &syms, i);
    }
    while let Some(c) = heap.pop() {
        let (Some(l), Some(r)) = (syms.get(c.left), syms.get(c.right)) else {
            continue;
        };
        if l.len == 0 || r.len == 0 || l.len + r.len != c.len {
            continue;
        }
        let after = r.next;
        syms[c.left].len = c.len;
        syms[c.left].next = after;
        syms[c.right].len = 0;
        if let Some(s) = syms.get_mut(after) {
            s.prev = c.left;
        }
        let before = syms[c.left].prev;
        if before != NONE {
            try_pair(&mut heap, &syms, before);
        }
        try_pair(&mut heap, &syms, c.left);
    }
    let mut i = if syms.is_empty() { NONE } else { 0 };
    while let Some(s) = syms.get(i) {
        let piece = text.get(s.start..s.start + s.len).unwrap_or("");
        match lookup(piece) {
            Some((id, _)) => out.push(id),
            // Only single characters can be left without a token (every
            // merge makes one), so their bytes are the fallback.
            None => out.extend(piece.bytes().filter_map(byte_token)),
        }
        i = s.next;
    }
}
