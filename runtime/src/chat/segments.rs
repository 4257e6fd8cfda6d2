//! Splitting a rendered prompt into template text and message content.
//!
//! The template is rendered twice: once with the real messages (the prompt,
//! `rendered`) and once with each content replaced by a sentinel carrying a
//! per-render random nonce and the message index (`marked`). The text around
//! the sentinels is template text. Three tiers, each checked against the
//! real render so the segments always concatenate to exactly `rendered`:
//!
//! 1. **Sentinel split.** Walk `rendered` with the template parts of
//!    `marked` as anchors; at each sentinel the real text must be that
//!    message's content, verbatim or trimmed (templates often `.strip()` or
//!    `| trim` content). Exact whenever the template treats content as opaque.
//! 2. **Content search.** If the template branched on content or transformed
//!    it (so the anchors do not line up), find each non-empty content, in
//!    message order, verbatim or trimmed, in `rendered`; found spans are
//!    content, the rest template text. A content that cannot be found sends
//!    the split to tier 3, because its transformed text would otherwise be
//!    marked as template text and its special-token text could become
//!    control tokens.
//! 3. **Conservative.** The longest prefix `rendered` shares with `marked`
//!    before the first sentinel is template text (the system preamble, BOS,
//!    the first role header); everything after is content. Special tokens in
//!    later template text lose their meaning, which degrades the prompt but
//!    never lets user text inject control tokens.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use super::Segment;

const OPEN: char = '\u{E000}';
const CLOSE: char = '\u{E001}';

/// A fresh random nonce (no user can guess it, so no content can forge a
/// sentinel).
pub(crate) fn nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    h.write_u128(t);
    format!("{:016x}", h.finish())
}

/// The sentinel standing in for message `i`'s content.
pub(crate) fn sentinel(nonce: &str, i: usize) -> String {
    format!("{OPEN}{nonce}:{i}{CLOSE}")
}

/// `marked` as template parts and the message index between each pair.
fn parse_marked<'a>(marked: &'a str, nonce: &str) -> (Vec<&'a str>, Vec<usize>) {
    let prefix = format!("{OPEN}{nonce}:");
    let mut parts = Vec::new();
    let mut idxs = Vec::new();
    let mut rest = marked;
    loop {
        let Some(start) = rest.find(&prefix) else {
            parts.push(rest);
            break;
        };
        let after = &rest[start + prefix.len()..];
        let Some(end) = after.find(CLOSE) else {
            parts.push(rest);
            break;
        };
        match after[..end].parse::<usize>() {
            Ok(i) => {
                parts.push(&rest[..start]);
                idxs.push(i);
                rest = &after[end + CLOSE.len_utf8()..];
            }
            Err(_) => {
                // Not ours after all (cannot happen with a fresh nonce).
                parts.push(rest);
                break;
            }
        }
    }
    (parts, idxs)
}

/// Append a segment, merging with the previous one of the same kind and
/// dropping empty text.
fn push(out: &mut Vec<Segment>, text: &str, from_template: bool) {
    if text.is_empty() {
        return;
    }
    if let Some(last) = out.last_mut() {
        if last.from_template == from_template {
            last.text.push_str(text);
            return;
        }
    }
    out.push(Segment {
        text: text.to_string(),
        from_template,
    });
}

fn candidates(c: &str) -> [&str; 4] {
    [c, c.trim(), c.trim_start(), c.trim_end()]
}

/// Tier 1: anchor on the template parts of `marked`.
fn sentinel_split(
    rendered: &str,
    marked: &str,
    nonce: &str,
    contents: &[&str],
) -> Option<Vec<Segment>> {
    let (parts, idxs) = parse_marked(marked, nonce);
    let mut out = Vec::new();
    let first = parts.first()?;
    let mut rest = rendered.strip_prefix(first)?;
    push(&mut out, first, true);
    for (k, &i) in idxs.iter().enumerate() {
        let content = contents.get(i)?;
        let next = parts.get(k + 1)?;
        let last = k + 1 == idxs.len();
        let cand = candidates(content).into_iter().find(|cand| {
            rest.strip_prefix(cand).is_some_and(|after| {
                if last {
                    after == *next
                } else {
                    after.starts_with(next)
                }
            })
        })?;
        push(&mut out, cand, false);
        push(&mut out, next, true);
        rest = &rest[cand.len() + next.len()..];
    }
    rest.is_empty().then_some(out)
}

/// Tier 2: find each content in order.
fn search_split(rendered: &str, contents: &[&str]) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    let mut pos = 0;
    for content in contents {
        if content.trim().is_empty() {
            continue;
        }
        let hay = &rendered[pos..];
        let (at, cand) = candidates(content)
            .into_iter()
            .find_map(|cand| hay.find(cand).map(|at| (at, cand)))?;
        push(&mut out, &hay[..at], true);
        push(&mut out, cand, false);
        pos += at + cand.len();
    }
    push(&mut out, &rendered[pos..], true);
    Some(out)
}

/// Tier 3: only the shared prefix before the first sentinel is template text.
fn conservative_split(rendered: &str, marked: Option<&str>, nonce: &str) -> Vec<Segment> {
    let head = match marked {
        Some(m) => parse_marked(m, nonce).0.first().copied().unwrap_or(""),
        None => "",
    };
    let mut n = rendered
        .char_indices()
        .zip(head.chars())
        .take_while(|((_, a), b)| a == b)
        .map(|((i, a), _)| i + a.len_utf8())
        .last()
        .unwrap_or(0);
    // Never split inside a character.
    while !rendered.is_char_boundary(n) {
        n -= 1;
    }
    let mut out = Vec::new();
    push(&mut out, &rendered[..n], true);
    push(&mut out, &rendered[n..], false);
    out
}

/// Split `rendered` into segments; `marked` is the sentinel render (None
/// if it failed). The segments always concatenate to `rendered`.
pub(crate) fn split(
    rendered: &str,
    marked: Option<&str>,
    nonce: &str,
    contents: &[&str],
) -> Vec<Segment> {
    if let Some(m) = marked {
        if let Some(segs) = sentinel_split(rendered, m, nonce, contents) {
            return segs;
        }
        log::debug!("chat template transforms content; splitting by content search");
    }
    if let Some(segs) = search_split(rendered, contents) {
        return segs;
    }
    log::warn!(
        "chat template transforms message content; marking all text after the first message as content"
    );
    conservative_split(rendered, marked, nonce)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(s: &[Segment]) -> String {
        s.iter().map(|s| s.text.as_str()).collect()
    }

    #[test]
    fn sentinel_split_handles_trimmed_and_repeated_content() {
        let n = nonce();
        let s0 = sentinel(&n, 0);
        let marked = format!("<a>{s0}</a><b>{s0}</b>");
        let rendered = "<a>hi</a><b>hi</b>";
        let segs = split(rendered, Some(&marked), &n, &["  hi \n"]);
        assert_eq!(join(&segs), rendered);
        assert_eq!(segs.len(), 5);
        assert!(!segs[1].from_template && segs[1].text == "hi");
    }

    #[test]
    fn falls_back_to_search_then_conservative() {
        let n = nonce();
        let marked = format!("<s>{}</s>", sentinel(&n, 0));
        // The template dropped a prefix of the content: tier 2 finds nothing,
        // tier 3 keeps only "<s>" as template text.
        let segs = split("<s>CONTENT</s>", Some(&marked), &n, &["content"]);
        assert_eq!(join(&segs), "<s>CONTENT</s>");
        assert_eq!(segs[0].text, "<s>");
        assert!(!segs[1].from_template);
        // Content found verbatim although anchors differ: tier 2.
        let segs = split("<x>abc</x>", Some(&marked), &n, &["abc"]);
        assert_eq!(
            segs,
            vec![
                Segment {
                    text: "<x>".into(),
                    from_template: true
                },
                Segment {
                    text: "abc".into(),
                    from_template: false
                },
                Segment {
                    text: "</x>".into(),
                    from_template: true
                },
            ]
        );
    }
}
