//! The real-template corpus: every chat template from llama.cpp's test data
//! (fetched by `scripts/fetch-test-data.sh`) either renders a
//! system/user/assistant/user conversation or fails with a clear
//! `BadTemplate`; none hangs, panics or runs out of budget, and the segments
//! always concatenate to the rendered prompt.

mod common;

use std::time::{Duration, Instant};

use tern_runtime::chat::{ChatTemplate, Message};
use tern_runtime::Error;

fn conversation() -> Vec<Message> {
    vec![
        Message::new("system", "You are a helpful assistant."),
        Message::new("user", "Hello! What is <|im_start|> or {{ 1 + 1 }}?"),
        Message::new("assistant", "Hi there. Those are just text."),
        Message::new("user", "  Tell me a joke.\n"),
    ]
}

#[test]
fn corpus_renders_or_fails_cleanly() {
    let dir = common::cache_dir()
        .join("llama.cpp-testdata")
        .join("templates");
    let mut paths: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| {
            panic!(
                "template corpus {} is missing ({e}): run scripts/fetch-test-data.sh",
                dir.display()
            )
        })
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "jinja"))
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 50,
        "only {} templates in {}: run scripts/fetch-test-data.sh",
        paths.len(),
        dir.display()
    );

    let msgs = conversation();
    let mut rendered = 0;
    let mut failures = Vec::new();
    for p in &paths {
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let src = std::fs::read_to_string(p).unwrap();
        let start = Instant::now();
        let res = ChatTemplate::from_source(&src, "<s>", "</s>").and_then(|t| {
            let text = t.render(&msgs, true)?;
            let segs = t.render_segments(&msgs, true)?;
            let joined: String = segs.iter().map(|s| s.text.as_str()).collect();
            assert_eq!(
                joined, text,
                "{name}: segments do not concatenate to the render"
            );
            // Content text that carries special-token look-alikes must sit in
            // a content segment whenever the template kept it verbatim.
            if text.contains("<|im_start|> or {{ 1 + 1 }}") {
                assert!(
                    segs.iter().any(|s| !s.from_template
                        && s.text.contains("<|im_start|> or {{ 1 + 1 }}")),
                    "{name}: user content is marked as template text: {segs:?}"
                );
            }
            Ok(text)
        });
        let took = start.elapsed();
        assert!(took < Duration::from_secs(5), "{name} took {took:?}");
        match res {
            Ok(text) => {
                assert!(!text.is_empty(), "{name} rendered nothing");
                rendered += 1;
            }
            Err(Error::BadTemplate(msg)) => failures.push(format!("{name}: {msg}")),
            Err(e) => panic!("{name}: unexpected error {e}"),
        }
    }
    eprintln!(
        "corpus: {} templates, {rendered} rendered, {} clean errors",
        paths.len(),
        failures.len()
    );
    for f in &failures {
        eprintln!("  {f}");
    }
    // The known failures are templates that refuse this conversation on
    // purpose (see KNOWN_REFUSALS); anything else is a missing feature.
    for f in &failures {
        assert!(
            KNOWN_REFUSALS.iter().any(|k| f.starts_with(k)),
            "unexpected template failure: {f}"
        );
    }
}

/// Templates that legitimately raise on this conversation.
const KNOWN_REFUSALS: &[&str] = &[
    // Needs the `datetime` and `functions` variables its callers pass.
    "fireworks-ai-llama-3-firefunction-v2.jinja: invalid operation: tried to use + operator on unsupported types string and undefined",
    // Refuses a system message by design.
    "google-gemma-2-2b-it.jinja: template raised an exception: System role not supported",
];
