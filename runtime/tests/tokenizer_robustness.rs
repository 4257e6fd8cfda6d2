//! Hostile vocabularies and hostile text (reliability.md §6.3 T1–T8): every
//! bad file is an error naming the key, never a panic; every id decodes
//! without panicking; long and odd inputs finish fast.

mod common;

use std::time::{Duration, Instant};

use tern_runtime::gguf::{Array, GgufFile, GgufWriter, Value};
use tern_runtime::tokenizer::{StreamDecoder, Tokenizer};
use tern_runtime::Error;

type Kv = Vec<(&'static str, Value)>;

fn strings(v: &[&str]) -> Value {
    Value::Array(Array::String(v.iter().map(|s| s.to_string()).collect()))
}

/// A small SPM vocabulary: unk, bos, eos, 256 byte tokens, a few pieces.
fn spm_kv() -> Kv {
    let mut toks: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    for b in 0..256 {
        toks.push(format!("<0x{b:02X}>"));
        types.push(6);
    }
    for p in ["▁", "h", "i", "▁h", "▁hi", "a"] {
        toks.push(p.into());
        types.push(1);
    }
    let n = toks.len();
    let scores: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
    vec![
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", Value::Array(Array::String(toks))),
        ("tokenizer.ggml.scores", Value::Array(Array::F32(scores))),
        ("tokenizer.ggml.token_type", Value::Array(Array::I32(types))),
    ]
}

/// A small gpt2 vocabulary over a, b, c with merges "a b" and "ab c".
fn bpe_kv() -> Kv {
    vec![
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("gpt-2".into())),
        (
            "tokenizer.ggml.tokens",
            strings(&["a", "b", "c", "ab", "abc", "Ġ", "<|endoftext|>"]),
        ),
        (
            "tokenizer.ggml.token_type",
            Value::Array(Array::I32(vec![1, 1, 1, 1, 1, 1, 3])),
        ),
        ("tokenizer.ggml.merges", strings(&["a b", "ab c"])),
    ]
}

fn set(mut kv: Kv, key: &'static str, v: Option<Value>) -> Kv {
    kv.retain(|(k, _)| *k != key);
    if let Some(v) = v {
        kv.push((key, v));
    }
    kv
}

fn build(kv: Kv) -> Result<Tokenizer, Error> {
    let mut w = GgufWriter::new();
    for (k, v) in kv {
        w.add_kv(k, v).expect("add kv");
    }
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).expect("write");
    let file = GgufFile::from_bytes(bytes).expect("valid container");
    Tokenizer::from_gguf(&file)
}

#[track_caller]
fn assert_bad_vocab(r: Result<Tokenizer, Error>, key: &str) {
    match r {
        Err(Error::BadVocab { key: k, reason }) => {
            assert_eq!(k, key, "wrong key named (reason: {reason})")
        }
        Err(e) => panic!("expected BadVocab for {key}, got {e}"),
        Ok(_) => panic!("expected BadVocab for {key}, got a tokenizer"),
    }
}

#[test]
fn the_synthetic_vocabularies_work() {
    let spm = build(spm_kv()).unwrap();
    let ids = spm.encode("hi a", true, false).unwrap();
    assert_eq!(ids[0], 1, "SPM adds BOS by default");
    // As llama_detokenize: the leading-space strip applies to the first
    // token only, and here that is BOS.
    assert_eq!(spm.decode(&ids, false), " hi a");
    assert_eq!(spm.decode(&ids[1..], false), "hi a");
    // A character with no piece falls back to its UTF-8 bytes.
    let ids = spm.encode("é", false, false).unwrap();
    assert_eq!(spm.decode(&ids, false), "é");
    let bpe = build(bpe_kv()).unwrap();
    assert_eq!(
        bpe.encode("abc", true, false).unwrap(),
        [4],
        "gpt2 adds no BOS by default"
    );
    assert_eq!(bpe.bos(), None, "default id 11 is outside this vocabulary");
    assert!(bpe.is_eog(6));
}

// ---- T1: the tokens array ---------------------------------------------------

#[test]
fn t1_tokens_missing_empty_or_mistyped() {
    let key = "tokenizer.ggml.tokens";
    assert_bad_vocab(build(set(spm_kv(), key, None)), key);
    assert_bad_vocab(build(set(spm_kv(), key, Some(strings(&[])))), key);
    assert_bad_vocab(
        build(set(
            spm_kv(),
            key,
            Some(Value::Array(Array::I32(vec![1, 2]))),
        )),
        key,
    );
    assert_bad_vocab(
        build(set(spm_kv(), key, Some(Value::String("x".into())))),
        key,
    );
    // Duplicate text would make text -> id ambiguous.
    let kv = set(
        bpe_kv(),
        key,
        Some(strings(&["a", "b", "c", "ab", "abc", "Ġ", "a"])),
    );
    assert_bad_vocab(build(kv), key);
    // A token longer than the cap.
    let long = "x".repeat(tern_runtime::tokenizer::MAX_TOKEN_BYTES + 1);
    let kv = set(
        bpe_kv(),
        key,
        Some(strings(&["a", "b", "c", "ab", "abc", "Ġ", &long])),
    );
    assert_bad_vocab(build(kv), key);
}

#[test]
fn t1_empty_token_text_is_renamed_like_llama_cpp() {
    let kv = set(
        bpe_kv(),
        "tokenizer.ggml.tokens",
        Some(strings(&["a", "b", "c", "ab", "abc", "Ġ", ""])),
    );
    let tok = build(kv).unwrap();
    assert_eq!(tok.token_text(6), Some("[EMPTY_6]"));
}

#[test]
fn unknown_or_missing_model() {
    for m in ["t5", "rwkv", "bert", "no_vocab", "plamo2", "nonsense"] {
        match build(set(
            spm_kv(),
            "tokenizer.ggml.model",
            Some(Value::String(m.into())),
        )) {
            Err(Error::UnsupportedTokenizer(name)) => assert_eq!(name, m),
            Err(e) => panic!("{m}: {e}"),
            Ok(_) => panic!("{m}: accepted"),
        }
    }
    assert!(matches!(
        build(set(spm_kv(), "tokenizer.ggml.model", None)),
        Err(Error::MissingKey(_))
    ));
}

// ---- T2: scores and token types ----------------------------------------------

#[test]
fn t2_scores_and_types_of_wrong_type_or_length() {
    let s = "tokenizer.ggml.scores";
    let n = 265;
    assert_bad_vocab(
        build(set(spm_kv(), s, Some(Value::Array(Array::I8(vec![0; n]))))),
        s,
    );
    assert_bad_vocab(
        build(set(
            spm_kv(),
            s,
            Some(Value::Array(Array::F32(vec![0.0; n - 1]))),
        )),
        s,
    );
    assert_bad_vocab(
        build(set(
            spm_kv(),
            s,
            Some(Value::Array(Array::F64(vec![0.0; n]))),
        )),
        s,
    );
    assert_bad_vocab(build(set(spm_kv(), s, Some(Value::F32(1.0)))), s);
    let mut nan = vec![0.0f32; n];
    nan[7] = f32::NAN;
    assert_bad_vocab(
        build(set(spm_kv(), s, Some(Value::Array(Array::F32(nan))))),
        s,
    );
    // Integer scores are accepted, as llama.cpp accepts them.
    assert!(build(set(spm_kv(), s, Some(Value::Array(Array::I32(vec![0; n]))))).is_ok());

    let t = "tokenizer.ggml.token_type";
    assert_bad_vocab(
        build(set(
            spm_kv(),
            t,
            Some(Value::Array(Array::F32(vec![1.0; n]))),
        )),
        t,
    );
    assert_bad_vocab(
        build(set(spm_kv(), t, Some(Value::Array(Array::U8(vec![1; n]))))),
        t,
    );
    assert_bad_vocab(
        build(set(spm_kv(), t, Some(Value::Array(Array::I32(vec![1; 3]))))),
        t,
    );
    // Unknown type numbers are "undefined" tokens, not an error.
    let mut odd = vec![1i32; n];
    odd[5] = 99;
    let tok = build(set(spm_kv(), t, Some(Value::Array(Array::I32(odd))))).unwrap();
    assert!(tok.token_bytes(5, true).is_empty());
}

// ---- T3: special ids ---------------------------------------------------------

#[test]
fn t3_special_ids_out_of_range_are_absent() {
    let n = build(spm_kv()).unwrap().n_vocab() as i64;
    for bad in [
        Value::I32(-1),
        Value::U32(n as u32),
        Value::U32(u32::MAX),
        Value::I64(i64::MIN),
        Value::String("1".into()),
    ] {
        let kv = set(spm_kv(), "tokenizer.ggml.bos_token_id", Some(bad.clone()));
        let kv = set(kv, "tokenizer.ggml.eos_token_id", Some(bad.clone()));
        let kv = set(kv, "tokenizer.ggml.eot_token_id", Some(bad.clone()));
        let kv = set(kv, "tokenizer.ggml.unknown_token_id", Some(bad.clone()));
        let tok = build(kv).unwrap();
        // SPM's defaults (bos 1, eos 2) stand in, as in llama.cpp.
        assert_eq!(tok.bos(), Some(1), "{bad:?}");
        assert_eq!(tok.eos(), Some(2), "{bad:?}");
        assert!(!tok.is_eog(u32::MAX));
        tok.encode("hi", true, true).unwrap();
    }
    // With defaults also out of range, the tokens are simply absent.
    let kv = set(
        bpe_kv(),
        "tokenizer.ggml.bos_token_id",
        Some(Value::U32(1_000_000)),
    );
    let kv = set(kv, "tokenizer.ggml.add_bos_token", Some(Value::Bool(true)));
    let tok = build(kv).unwrap();
    assert_eq!(tok.bos(), None);
    assert_eq!(tok.encode("ab", true, false).unwrap(), [3]);
}

// ---- T4: byte tokens ---------------------------------------------------------

#[test]
fn t4_malformed_byte_tokens() {
    for bad in [
        "<0x-1>", "<0xZZ>", "<0x100>", "<0x>", "<0x1>", "0x41", "<0x+1>", "<0x 1>",
    ] {
        let mut kv = spm_kv();
        for (k, v) in kv.iter_mut() {
            if *k == "tokenizer.ggml.tokens" {
                if let Value::Array(Array::String(t)) = v {
                    t[3 + 0x41] = bad.to_string(); // replaces <0x41>, still typed BYTE
                }
            }
        }
        assert_bad_vocab(build(kv), "tokenizer.ggml.tokens");
    }
    // Two tokens for one byte value (the 257th byte token).
    let mut kv = spm_kv();
    for (k, v) in kv.iter_mut() {
        if *k == "tokenizer.ggml.tokens" {
            if let Value::Array(Array::String(t)) = v {
                t[3 + 0x41] = "<0x0a>".to_string();
            }
        }
    }
    assert_bad_vocab(build(kv), "tokenizer.ggml.tokens");
}

// ---- T5: merges --------------------------------------------------------------

#[test]
fn t5_malformed_merges() {
    let m = "tokenizer.ggml.merges";
    assert_bad_vocab(build(set(bpe_kv(), m, None)), m);
    assert_bad_vocab(build(set(bpe_kv(), m, Some(strings(&["ab"])))), m);
    assert_bad_vocab(build(set(bpe_kv(), m, Some(strings(&[""])))), m);
    assert_bad_vocab(build(set(bpe_kv(), m, Some(strings(&[" "])))), m);
    assert_bad_vocab(build(set(bpe_kv(), m, Some(strings(&["a z"])))), m);
    assert_bad_vocab(build(set(bpe_kv(), m, Some(strings(&["b c"])))), m); // "bc" is no token
    assert_bad_vocab(
        build(set(bpe_kv(), m, Some(Value::Array(Array::I32(vec![1]))))),
        m,
    );
    // Cycles cannot loop: a merge only ever joins two symbols into one.
    let kv = set(bpe_kv(), m, Some(strings(&["a b", "ab c", "a b"])));
    assert_eq!(
        build(kv).unwrap().encode("abcab", false, false).unwrap(),
        [4, 3]
    );
}

#[test]
fn t5_huge_merge_list_builds_in_bounded_time() {
    let many: Vec<String> = std::iter::repeat_n("a b".to_string(), 1_000_000).collect();
    let kv = set(
        bpe_kv(),
        "tokenizer.ggml.merges",
        Some(Value::Array(Array::String(many))),
    );
    let t = Instant::now();
    let tok = build(kv).unwrap();
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    assert_eq!(tok.encode("ab", false, false).unwrap(), [3]);
}

// ---- T8: runtime text and every id ---------------------------------------------

fn vocab(name: &str) -> Tokenizer {
    let p = common::cache_dir()
        .join("llama.cpp-testdata/vocab")
        .join(format!("ggml-vocab-{name}.gguf"));
    assert!(
        p.is_file(),
        "{} is missing: run scripts/fetch-test-data.sh",
        p.display()
    );
    Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap()
}

fn smollm2() -> Tokenizer {
    let p = common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf");
    Tokenizer::from_gguf(&GgufFile::open(&p).unwrap()).unwrap()
}

#[test]
fn t8_every_id_decodes_without_panicking() {
    for tok in [
        vocab("llama-spm"),
        vocab("gpt-2"),
        smollm2(),
        build(spm_kv()).unwrap(),
    ] {
        let n = tok.n_vocab() as u32;
        for id in (0..n).chain([n, n + 1, u32::MAX - 1, u32::MAX]) {
            let _ = tok.token_bytes(id, true);
            let _ = tok.token_bytes(id, false);
            let _ = tok.decode(&[id], true);
        }
        for id in [n, n + 7, u32::MAX] {
            assert!(tok.token_bytes(id, true).is_empty());
            assert_eq!(tok.decode(&[id], true), "");
            assert_eq!(tok.token_text(id), None);
        }
        let all: Vec<u32> = (0..n).collect();
        let _ = tok.decode(&all, false);
        let mut d = StreamDecoder::with_special(true);
        for id in (0..n.min(5000)).chain([u32::MAX]) {
            let _ = d.push(&tok, id);
        }
        let _ = d.flush();
    }
}

#[test]
fn t8_nul_bytes_and_special_text_without_parse_special() {
    for tok in [vocab("llama-spm"), smollm2()] {
        let ids = tok.encode("a\0b\0\0", false, false).unwrap();
        assert!(!ids.is_empty());
        assert_eq!(tok.decode(&ids, false).trim_start(), "a\0b\0\0");
        let eos = tok.eos().unwrap();
        let eos_text = tok.token_text(eos).unwrap().to_string();
        assert!(!tok.encode(&eos_text, false, false).unwrap().contains(&eos));
        assert!(tok.encode(&eos_text, false, true).unwrap().contains(&eos));
    }
}

#[test]
fn t8_one_megabyte_of_one_code_point_is_fast() {
    let toks = [
        smollm2(),
        vocab("llama-spm"),
        vocab("llama-bpe"),
        vocab("qwen2"),
    ];
    for c in ['a', ' ', '\n', '1', 'é', '🦙', '\u{301}', '\u{200D}', '我'] {
        let text: String = std::iter::repeat_n(c, (1 << 20) / c.len_utf8()).collect();
        for tok in &toks {
            let t = Instant::now();
            let ids = tok.encode(&text, false, false).unwrap();
            let dt = t.elapsed();
            assert!(!ids.is_empty());
            eprintln!("{c:?} x 1 MB: {} tokens in {dt:?}", ids.len());
            assert!(dt < Duration::from_secs(5), "{c:?} x 1 MB took {dt:?}");
        }
    }
}

#[test]
fn t8_zwj_chains_and_combining_runs() {
    let tok = smollm2();
    let family = "👨‍👩‍👧‍👦".repeat(10_000);
    let zalgo = format!("a{}", "\u{301}\u{0330}".repeat(50_000));
    let lone = "\u{200D}\u{FE0F}\u{20E3}".repeat(10_000);
    for text in [family, zalgo, lone] {
        let ids = tok.encode(&text, false, true).unwrap();
        assert_eq!(tok.decode(&ids, true), text);
    }
}

#[test]
fn english_100kb_is_well_under_a_second() {
    let base = "The quick brown fox jumps over the lazy dog. It's 2024, and we'll see \
                what happens next; nobody knows, really. Numbers like 3.14159 and 42 \
                appear too, as do \"quotes\" and (parentheses).\n";
    let text = base.repeat(100_000 / base.len() + 1);
    for tok in [smollm2(), vocab("llama-spm"), vocab("llama-bpe")] {
        // Cold: a fresh tokenizer, so the word cache starts empty.
        let t = Instant::now();
        let ids = tok.encode(&text, false, false).unwrap();
        let dt = t.elapsed();
        eprintln!("{} bytes -> {} tokens in {dt:?}", text.len(), ids.len());
        assert!(dt < Duration::from_secs(1), "100 KB took {dt:?}");
    }
}

#[test]
fn input_limit_is_an_error_not_a_panic() {
    // The limit itself is too large to allocate in a test; check it is sane.
    const { assert!(tern_runtime::tokenizer::MAX_INPUT_BYTES >= 1 << 30) };
    let tok = build(bpe_kv()).unwrap();
    assert!(tok.encode("", true, true).unwrap().is_empty());
}
