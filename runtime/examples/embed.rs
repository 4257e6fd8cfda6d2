//! Embedding tern in an application: load a model once, run a two-turn
//! chat with streamed output, then a raw completion on a second session
//! that shares the weights and is cancelled from another thread.
//!
//! `cargo run --release -p tern-runtime --example embed -- MODEL.gguf`

use std::io::Write;
use std::time::Duration;

use tern_runtime::{
    CancelToken, Chat, GenerateParams, Model, ModelParams, SamplerParams, SessionParams,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: embed MODEL.gguf")?;
    let model = Model::load(&path, &ModelParams::default())?;

    // A conversation: the model's chat template, streamed token by token.
    let session = model.new_session(&SessionParams {
        n_ctx: 1024,
        ..Default::default()
    })?;
    let mut chat = Chat::new(session, Some("You are a concise assistant.".into()));
    for question in ["What is the capital of France?", "And its population?"] {
        println!("> {question}");
        let params = GenerateParams {
            max_tokens: Some(48),
            sampler: SamplerParams::greedy(),
            ..Default::default()
        };
        let done = chat.send(question, params, |piece| {
            print!("{}", piece.text);
            std::io::stdout().flush().is_ok()
        })?;
        println!(
            "\n[{:?}: {} tokens at {:.1} t/s]",
            done.finish,
            done.usage.generated_tokens,
            done.usage.generation_tokens_per_sec()
        );
    }

    // A second session over the same weights, stopped from another thread.
    let mut session = model.new_session(&SessionParams::default())?;
    let prompt = model.tokenizer()?.encode("Once upon a time", true, false)?;
    let cancel = CancelToken::new();
    let stopper = cancel.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        stopper.cancel();
    });
    let params = GenerateParams {
        cancel: Some(cancel),
        ..Default::default()
    };
    let mut n = 0;
    for piece in session.generate(&prompt, params)? {
        print!("{}", piece?.text);
        n += 1;
    }
    println!("\n[stopped after {n} pieces]");
    Ok(())
}
