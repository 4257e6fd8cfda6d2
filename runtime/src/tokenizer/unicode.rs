//! Code point classification and GPT-2's byte-to-character mapping.
//!
//! The pre-tokenizers only ask three questions of a code point — is it a
//! letter (`\p{L}`), a number (`\p{N}`), white space (`\s`) — and these must
//! be answered exactly as llama.cpp answers them, from Unicode 15.1, or the
//! word boundaries (and so the token ids) drift on rare scripts. The class
//! table is generated (see `unicode_data.rs`); white space is Unicode's
//! `White_Space` property, which is what `char::is_whitespace` implements.

use super::unicode_data::CLASS_RUNS;

/// Unicode general-category class of a code point (first letter of the category).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Class {
    Unassigned,
    Number,
    Letter,
    Separator,
    Mark,
    Punctuation,
    Symbol,
    Other,
}

impl Class {
    fn from_code(c: u8) -> Class {
        match c {
            1 => Class::Number,
            2 => Class::Letter,
            3 => Class::Separator,
            4 => Class::Mark,
            5 => Class::Punctuation,
            6 => Class::Symbol,
            7 => Class::Other,
            _ => Class::Unassigned,
        }
    }
}

/// The class of `c`, by binary search over the generated runs (ASCII, the
/// common case, is answered without the search).
pub(crate) fn class(c: char) -> Class {
    let cp = c as u32;
    if cp < 0x80 {
        let b = cp as u8;
        return if b.is_ascii_alphabetic() {
            Class::Letter
        } else if b.is_ascii_digit() {
            Class::Number
        } else if b == b' ' {
            Class::Separator
        } else if b.is_ascii_control() {
            Class::Other
        } else if matches!(
            b,
            b'$' | b'+' | b'<' | b'=' | b'>' | b'^' | b'`' | b'|' | b'~'
        ) {
            Class::Symbol
        } else {
            Class::Punctuation
        };
    }
    // The runs start at 0 and are sorted, so the partition point is >= 1.
    let i = CLASS_RUNS.partition_point(|&(start, _)| start <= cp);
    CLASS_RUNS
        .get(i.wrapping_sub(1))
        .map_or(Class::Unassigned, |&(_, code)| Class::from_code(code))
}

/// What the pre-tokenizers need to know about one code point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Flags {
    pub letter: bool,
    pub number: bool,
    pub space: bool,
}

impl Flags {
    pub(crate) fn of(c: char) -> Flags {
        let cls = class(c);
        Flags {
            letter: cls == Class::Letter,
            number: cls == Class::Number,
            space: c.is_whitespace(),
        }
    }
}

/// GPT-2's reversible map from bytes to printable characters: printable
/// Latin-1 bytes map to themselves, the other 68 to U+0100 upwards in order.
pub(crate) fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 0x100u32;
    for (b, slot) in table.iter_mut().enumerate() {
        let printable = matches!(b, 0x21..=0x7E | 0xA1..=0xAC | 0xAE..=0xFF);
        let cp = if printable {
            b as u32
        } else {
            let cp = next;
            next += 1;
            cp
        };
        *slot = char::from_u32(cp).unwrap_or('\u{FFFD}');
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ascii_fast_path_agrees_with_the_table() {
        for b in 0u8..0x80 {
            let cp = b as u32;
            let i = CLASS_RUNS.partition_point(|&(start, _)| start <= cp);
            let from_table = Class::from_code(CLASS_RUNS[i - 1].1);
            assert_eq!(class(b as char), from_table, "byte {b:#x}");
        }
    }

    #[test]
    fn classes_of_some_scripts() {
        assert_eq!(class('é'), Class::Letter);
        assert_eq!(class('我'), Class::Letter);
        assert_eq!(class('\u{0301}'), Class::Mark);
        assert_eq!(class('\u{0939}'), Class::Letter); // DEVANAGARI HA
        assert_eq!(class('\u{093F}'), Class::Mark); // vowel sign I: not a letter
        assert_eq!(class('٣'), Class::Number);
        assert_eq!(class('🦙'), Class::Symbol);
        assert_eq!(class('\u{2EBF0}'), Class::Letter); // CJK ext. I: new in 15.1
        assert_eq!(class('\u{E000}'), Class::Other);
        assert_eq!(class('\u{0378}'), Class::Unassigned);
    }

    #[test]
    fn byte_map_is_a_bijection() {
        let t = byte_to_char_table();
        let mut seen = std::collections::HashSet::new();
        for c in t {
            assert!(seen.insert(c));
        }
        assert_eq!(t[b' ' as usize], '\u{120}');
        assert_eq!(t[b'\n' as usize], '\u{10A}');
        assert_eq!(t[b'a' as usize], 'a');
    }
}
