//! SmolLM2's tokenizer (`smollm` pre-tokenizer) against ids from llama.cpp's
//! own `llama-tokenize`, committed in fixtures/tokenizer/smollm2.json by
//! scripts/fixtures/make_tokenizer_fixtures.py. Also the special tokens,
//! EOG set, decoding and streaming on the real vocabulary.

mod common;

use tern_runtime::gguf::GgufFile;
use tern_runtime::tokenizer::{PreTokenizer, StreamDecoder, Tokenizer, TokenizerKind};

fn smollm2() -> Tokenizer {
    let path = common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    let file = GgufFile::open(&path).expect("open SmolLM2");
    Tokenizer::from_gguf(&file).expect("build tokenizer")
}

#[test]
fn matches_llama_cpp_on_the_fixture() {
    let tok = smollm2();
    assert_eq!(tok.kind(), TokenizerKind::Bpe(PreTokenizer::SmolLm));
    let fixture = common::read_json(&common::fixture_dir().join("tokenizer/smollm2.json"));
    let cases = fixture.as_array().expect("array of cases");
    assert!(cases.len() >= 200, "fixture has only {} cases", cases.len());
    let mut failures = Vec::new();
    for c in cases {
        let text = c["text"].as_str().expect("text");
        let want = common::tokens(&c["ids"]);
        let parse_special = c
            .get("parse_special")
            .and_then(|v| v.as_bool())
            .unwrap_or(true);
        let got = tok.encode(text, false, parse_special).expect("encode");
        if got != want {
            failures.push(format!(
                "{text:?} (parse_special={parse_special})\n    want {want:?}\n    got  {got:?}"
            ));
        }
        // Byte-level BPE is lossless when special tokens render as text.
        let bytes: Vec<u8> = got
            .iter()
            .flat_map(|&id| tok.token_bytes(id, true))
            .collect();
        if bytes != text.as_bytes() {
            failures.push(format!("{text:?}: token bytes do not round-trip"));
        }
        // smollm does not clean up spaces, so decode is the exact inverse.
        if tok.decode(&got, true) != text {
            failures.push(format!("{text:?}: decode does not round-trip"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn special_tokens_bos_eos_and_eog() {
    let tok = smollm2();
    assert_eq!(tok.n_vocab(), 49152);
    assert_eq!(tok.bos(), Some(1));
    assert_eq!(tok.eos(), Some(2));
    assert_eq!(tok.token_text(2), Some("<|im_end|>"));
    // add_bos_token is false in the file.
    assert!(!tok.add_bos());
    assert_eq!(
        tok.encode("Hi", true, true).unwrap(),
        tok.encode("Hi", false, true).unwrap()
    );
    let end = tok.token_id("<|im_end|>").unwrap();
    let eot = tok.token_id("<|endoftext|>").unwrap();
    assert!(tok.is_eog(end));
    assert!(tok.is_eog(eot));
    assert!(!tok.is_eog(tok.token_id("<|im_start|>").unwrap()));
    assert!(!tok.is_eog(tok.token_id("Hello").unwrap()));
    assert!(!tok.is_eog(u32::MAX));
    // parse_special decides whether control-token text is a token.
    assert_eq!(tok.encode("<|im_end|>", false, true).unwrap(), [end]);
    assert!(tok.encode("<|im_end|>", false, false).unwrap().len() > 1);
    // Control tokens render only when asked.
    assert_eq!(tok.decode(&[end], false), "");
    assert_eq!(tok.decode(&[end], true), "<|im_end|>");
}

#[test]
fn stream_decoder_never_splits_a_character() {
    let tok = smollm2();
    let text = "emoji 👨‍👩‍👧‍👦 and 我想在 plus é\u{301} ok";
    let ids = tok.encode(text, false, false).unwrap();
    // Some token must end mid-character for this test to mean anything.
    let mid = ids
        .iter()
        .any(|&id| std::str::from_utf8(&tok.token_bytes(id, false)).is_err());
    assert!(mid, "no token ends inside a character; pick another text");
    let mut d = StreamDecoder::new();
    let mut out = String::new();
    for &id in &ids {
        let piece = d.push(&tok, id);
        assert!(
            !piece.contains('\u{FFFD}'),
            "partial sequence emitted: {piece:?}"
        );
        out.push_str(&piece);
    }
    out.push_str(&d.flush());
    assert_eq!(out, text);
}
