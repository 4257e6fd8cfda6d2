//! tern's renders equal Python jinja2's, byte for byte: SmolLM2's template
//! (read from the GGUF through `ChatTemplate::from_gguf`) and one template
//! of each family from the corpus, on the conversations in
//! `fixtures/chat/*.json` (made by `scripts/fixtures/make_chat_fixtures.py`).

mod common;

use sha2::{Digest, Sha256};
use tern_runtime::chat::{ChatTemplate, Message};
use tern_runtime::gguf::GgufFile;
use tern_runtime::Error;

fn messages(case: &serde_json::Value) -> Vec<Message> {
    case["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
        .collect()
}

fn sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Check every case of one template; returns how many were compared.
fn check_cases(name: &str, t: &ChatTemplate, cases: &serde_json::Value) -> usize {
    let mut n = 0;
    for (i, case) in cases.as_array().unwrap().iter().enumerate() {
        let msgs = messages(case);
        let agp = case["add_generation_prompt"].as_bool().unwrap();
        let got = t.render(&msgs, agp);
        if let Some(want) = case.get("expected").and_then(|v| v.as_str()) {
            let got = got.unwrap_or_else(|e| panic!("{name} case {i}: {e}"));
            assert_eq!(got, want, "{name} case {i}: render differs from jinja2");
            let segs = t.render_segments(&msgs, agp).unwrap();
            let joined: String = segs.iter().map(|s| s.text.as_str()).collect();
            assert_eq!(joined, want, "{name} case {i}: segments differ");
            // Every non-blank content the template kept verbatim is inside
            // one content segment.
            for m in &msgs {
                let c = m.content.trim();
                if !c.is_empty() && want.contains(c) {
                    assert!(
                        segs.iter().any(|s| !s.from_template && s.text.contains(c)),
                        "{name} case {i}: content {c:?} not in a content segment: {segs:?}"
                    );
                }
            }
        } else {
            let want = case["error"].as_str().unwrap();
            match got {
                Err(Error::BadTemplate(msg)) => {
                    assert!(msg.contains(want), "{name} case {i}: {msg} lacks {want}")
                }
                other => panic!("{name} case {i}: expected error {want:?}, got {other:?}"),
            }
        }
        n += 1;
    }
    n
}

#[test]
fn smollm2_matches_jinja2() {
    let fx = common::read_json(&common::fixture_dir().join("chat/smollm2.json"));
    let file = GgufFile::open(common::model_path("SmolLM2-135M-Instruct.Q4_1.gguf")).unwrap();
    let t = ChatTemplate::from_gguf(&file).unwrap();
    assert!(!t.is_default());
    assert_eq!(sha256(t.source()), fx["template_sha256"].as_str().unwrap());
    // from_gguf found the same BOS/EOS text as the gguf package.
    let t2 = ChatTemplate::from_source(
        t.source(),
        fx["bos_token"].as_str().unwrap(),
        fx["eos_token"].as_str().unwrap(),
    )
    .unwrap();
    let n = check_cases("smollm2", &t, &fx["cases"]);
    assert_eq!(check_cases("smollm2 from_source", &t2, &fx["cases"]), n);
    assert!(n >= 5);
}

#[test]
fn corpus_families_match_jinja2() {
    let fx = common::read_json(&common::fixture_dir().join("chat/corpus.json"));
    let dir = common::cache_dir().join("llama.cpp-testdata/templates");
    let bos = fx["bos_token"].as_str().unwrap();
    let eos = fx["eos_token"].as_str().unwrap();
    let mut total = 0;
    for tf in fx["templates"].as_array().unwrap() {
        let name = tf["name"].as_str().unwrap();
        let src = std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| {
            panic!("template {name} is missing ({e}): run scripts/fetch-test-data.sh")
        });
        assert_eq!(
            sha256(&src),
            tf["template_sha256"].as_str().unwrap(),
            "{name} changed"
        );
        let t = ChatTemplate::from_source(&src, bos, eos).unwrap();
        total += check_cases(name, &t, &tf["cases"]);
    }
    assert!(total >= 50, "only {total} cases");
}
