//! llama.cpp's own tokenizer test vectors (`ggml-vocab-*.gguf` with `.inp` /
//! `.out`, from `scripts/fetch-test-data.sh`), run the way its
//! test-tokenizer-0 runs them: add_special = false, parse_special = false.
//! One test per vocabulary; every case must match. Missing data fails.

mod common;

use std::path::{Path, PathBuf};

use tern_runtime::gguf::GgufFile;
use tern_runtime::tokenizer::Tokenizer;

fn vocab_path(name: &str) -> PathBuf {
    let p = common::cache_dir()
        .join("llama.cpp-testdata")
        .join("vocab")
        .join(format!("ggml-vocab-{name}.gguf"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-test-data.sh",
        p.display()
    );
    p
}

/// The (input, expected ids) cases, in file order.
fn cases(path: &Path) -> Vec<(String, Vec<u32>)> {
    let read = |ext: &str| {
        let p = PathBuf::from(format!("{}.{ext}", path.display()));
        std::fs::read_to_string(&p)
            .unwrap_or_else(|e| panic!("{}: {e}: run scripts/fetch-test-data.sh", p.display()))
    };
    let inp = read("inp");
    let out = read("out");
    let sep = "\n__ggml_vocab_test__\n";
    let mut inputs: Vec<&str> = Vec::new();
    let mut pos = 0;
    while pos < inp.len() {
        match inp[pos..].find(sep) {
            Some(i) => {
                inputs.push(&inp[pos..pos + i]);
                pos += i + sep.len();
            }
            None => {
                inputs.push(&inp[pos..]);
                break;
            }
        }
    }
    let outputs: Vec<Vec<u32>> = out
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|t| t.parse().expect("token id"))
                .collect()
        })
        .collect();
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{}: .inp and .out disagree",
        path.display()
    );
    inputs.into_iter().map(String::from).zip(outputs).collect()
}

/// Run every case; returns the number passed, panicking with all failures.
fn check(name: &str) -> usize {
    let path = vocab_path(name);
    let file = GgufFile::open(&path).expect("open vocab");
    let tok = Tokenizer::from_gguf(&file).expect("build tokenizer");
    let cases = cases(&path);
    assert!(!cases.is_empty());
    let mut failures = Vec::new();
    for (text, want) in &cases {
        let got = tok.encode(text, false, false).expect("encode");
        if &got != want {
            failures.push(format!("{text:?}\n    want {want:?}\n    got  {got:?}"));
        }
        // Byte-level round trip: the tokens' bytes are the input again.
        let bytes: Vec<u8> = got
            .iter()
            .flat_map(|&id| tok.token_bytes(id, true))
            .collect();
        if is_lossless(name) && bytes != text.as_bytes() {
            failures.push(format!("{text:?}: token bytes do not round-trip"));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    cases.len()
}

/// Byte-level BPE is lossless; SPM adds a space in front.
fn is_lossless(name: &str) -> bool {
    name != "llama-spm"
}

#[test]
fn llama_spm() {
    check("llama-spm");
}

#[test]
fn gpt_2() {
    check("gpt-2");
}

#[test]
fn llama_bpe() {
    check("llama-bpe");
}

#[test]
fn qwen2() {
    check("qwen2");
}

#[test]
fn other_bpe_vocabularies_with_known_pre_tokenizers() {
    // Same pre-tokenizer families: starcoder/refact (SmolLM's), command-r.
    for name in ["starcoder", "refact", "mpt", "command-r"] {
        check(name);
    }
}
