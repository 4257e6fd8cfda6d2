//! `tern chat`: an interactive, streaming, multi-turn conversation with the
//! model's chat template.
//!
//! Commands: `/reset` starts over, `/exit` (or end of input) quits, `/help`.
//! Ctrl-C while the model answers stops that answer and keeps the
//! conversation; Ctrl-C twice at the prompt exits with code 130. When the
//! context is full tern says so and offers `/reset` — it never truncates the
//! conversation silently. Works the same with piped stdin.

use std::io::{self, BufRead, IsTerminal};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::Result;
use tern_runtime::{CancelToken, Chat, Error, FinishReason, GenerateParams};

use crate::cli::ChatArgs;
use crate::common::{load_model, model_label, out, sampler_params, session_params};

const HELP: &str = "commands: /reset (start a new conversation), /exit (quit), /help";

pub fn run(args: &ChatArgs, cancel: CancelToken, generating: Arc<AtomicBool>) -> Result<()> {
    let model = load_model(&args.model)?;
    let params = session_params(&model, args.ctx_size, args.model.kv_type, 512);
    let session = model.new_session(&params)?;
    model.tokenizer()?;
    let tty = io::stdin().is_terminal();
    eprintln!(
        "tern chat: {} ({} backend, {} threads, context {} tokens). {HELP}",
        model_label(&model),
        model.backend_name(),
        model.threads(),
        session.n_ctx()
    );
    let mut chat = Chat::new(session, args.system.clone());
    let mut sampler = sampler_params(&args.sampling);
    let stdin = io::stdin();
    let mut lines = stdin.lock();
    let mut line = String::new();
    loop {
        if tty {
            out("> ")?;
        }
        line.clear();
        match lines.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::InvalidData => {
                eprintln!("error: input is not valid UTF-8; try again");
                continue;
            }
            Err(e) => return Err(e.into()),
        }
        let text = line.trim_end_matches(['\n', '\r']);
        match text.trim() {
            "" => continue,
            "/exit" | "/quit" => break,
            "/help" => {
                eprintln!("{HELP}");
                continue;
            }
            "/reset" => {
                chat.reset();
                eprintln!("[conversation reset]");
                continue;
            }
            t if t.starts_with('/') => {
                eprintln!("unknown command {t}; {HELP}");
                continue;
            }
            _ => {}
        }
        cancel.reset();
        generating.store(true, Ordering::SeqCst);
        let gen = GenerateParams {
            max_tokens: (args.n_predict >= 0).then_some(args.n_predict as usize),
            sampler: sampler.clone(),
            stop_at_eog: true,
            cancel: Some(cancel.clone()),
        };
        let mut broken = false;
        let result = chat.send(text, gen, |p| {
            broken = out(&p.text).is_err();
            !broken
        });
        generating.store(false, Ordering::SeqCst);
        // Each turn draws from where the last one left off.
        sampler.seed = sampler.seed.wrapping_add(1);
        match result {
            Ok(c) => {
                out("\n")?;
                match c.finish {
                    FinishReason::ContextFull => eprintln!(
                        "[context full ({} tokens): type /reset to start a new conversation]",
                        chat.session().n_ctx()
                    ),
                    FinishReason::Cancelled if !broken => eprintln!("[stopped]"),
                    _ => {}
                }
            }
            Err(Error::ContextFull { position, n_ctx }) => eprintln!(
                "error: the conversation needs {position} tokens but the context holds {n_ctx}; type /reset to start over (or restart with a larger -c)"
            ),
            Err(Error::Cancelled) => eprintln!("[stopped]"),
            Err(e) => return Err(e.into()),
        }
        if broken {
            return Err(crate::common::BrokenPipe.into());
        }
    }
    Ok(())
}
