//! Byte-level BPE merging within one pre-tokenized word.
//!
//! A word starts as one symbol per byte (GPT-2's byte-to-character map makes
//! every byte a one-character token in the vocabulary). The lowest-ranked
//! adjacent pair is merged repeatedly, ties going to the leftmost pair; a
//! binary heap of candidate pairs plus a doubly linked list of symbols keeps
//! this O(n log n) per word, so a megabyte-long word is still fast. Stale
//! heap entries (a side already merged into something else) are skipped on
//! pop. This is the order llama.cpp merges in, so the ids match it.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

/// Merge rules keyed by the token ids of their two halves.
pub(crate) struct Merges {
    /// (left id, right id) -> (rank, merged id).
    pub(crate) rules: HashMap<(u32, u32), (u32, u32)>,
}

const NONE: usize = usize::MAX;

struct Symbol {
    /// Token id of the symbol's text, or `None` for a byte with no token.
    id: Option<u32>,
    prev: usize,
    next: usize,
    /// Merged into its left neighbour.
    gone: bool,
}

impl Merges {
    /// Merge `initial` (one entry per byte of the word) and append the
    /// resulting token ids to `out`; bytes without a token are dropped, as
    /// llama.cpp drops them.
    pub(crate) fn apply(&self, initial: &[Option<u32>], out: &mut Vec<u32>) {
        let n = initial.len();
        let mut syms: Vec<Symbol> = initial
            .iter()
            .enumerate()
            .map(|(i, &id)| Symbol {
                id,
                prev: if i == 0 { NONE } else { i - 1 },
                next: if i + 1 == n { NONE } else { i + 1 },
                gone: false,
            })
            .collect();
        // (rank, left index) orders like llama.cpp; the ids pin the entry to
        // the symbols' contents at push time so stale entries are detected.
        let mut heap: BinaryHeap<Reverse<(u32, usize, u32, u32)>> = BinaryHeap::new();
        let push = |heap: &mut BinaryHeap<_>, syms: &[Symbol], left: usize| {
            let Some(l) = syms.get(left) else { return };
            let Some(r) = syms.get(l.next) else { return };
            if let (Some(a), Some(b)) = (l.id, r.id) {
                if let Some(&(rank, _)) = self.rules.get(&(a, b)) {
                    heap.push(Reverse((rank, left, a, b)));
                }
            }
        };
        for i in 0..n.saturating_sub(1) {
            push(&mut heap, &syms, i);
        }
        while let Some(Reverse((_, left, a, b))) = heap.pop() {
            let Some(l) = syms.get(left) else { continue };
            let right = l.next;
            let valid = !l.gone
                && l.id == Some(a)
                && syms.get(right).is_some_and(|r| !r.gone && r.id == Some(b));
            if !valid {
                continue;
            }
            let Some(&(_, merged)) = self.rules.get(&(a, b)) else {
                continue;
            };
            let after = syms[right].next;
            syms[right].gone = true;
            syms[left].id = Some(merged);
            syms[left].next = after;
            if let Some(s) = syms.get_mut(after) {
                s.prev = left;
            }
            let before = syms[left].prev;
            if before != NONE {
                push(&mut heap, &syms, before);
            }
            push(&mut heap, &syms, left);
        }
        let mut i = if n == 0 { NONE } else { 0 };
        while let Some(s) = syms.get(i) {
            if let Some(id) = s.id {
                out.push(id);
            }
            i = s.next;
        }
    }
}
