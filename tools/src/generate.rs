//! `tern generate`: one prompt in, one completion out, streamed to stdout
//! (or one JSON object with `--json`). Ctrl-C stops the generation and
//! keeps what was produced.

use std::time::Instant;

use anyhow::{bail, Result};
use tern_runtime::generate::prompt_from_segments;
use tern_runtime::{CancelToken, FinishReason, GenerateParams, Message};

use crate::cli::GenerateArgs;
use crate::common::{load_model, out, read_text, sampler_params, session_params};

fn finish_name(f: FinishReason) -> &'static str {
    match f {
        FinishReason::EndOfGeneration => "stop",
        FinishReason::Length => "length",
        FinishReason::ContextFull => "context_full",
        FinishReason::Cancelled => "cancelled",
    }
}

pub fn run(args: &GenerateArgs, cancel: CancelToken) -> Result<FinishReason> {
    let text = match (&args.prompt, &args.file) {
        (Some(p), None) => p.clone(),
        (None, Some(f)) => read_text(f)?,
        _ => bail!("give the prompt with -p TEXT or -f FILE"),
    };
    let t_load = Instant::now();
    let model = load_model(&args.model)?;
    let load_time = t_load.elapsed();
    let params = session_params(&model, args.ctx_size, args.model.kv_type, 512);
    let mut session = model.new_session(&params)?;
    let tok = model.tokenizer()?;
    let prompt = if args.chat {
        let msgs = [Message {
            role: "user".into(),
            content: text,
        }];
        let segs = model.chat_template().render_segments(&msgs, true)?;
        prompt_from_segments(tok, &segs)?
    } else {
        tok.encode(&text, true, true)?
    };
    if prompt.is_empty() {
        bail!("the prompt is empty");
    }
    if prompt.len() >= session.n_ctx() {
        bail!(
            "the prompt is {} tokens but the context holds {}; use a larger -c (or a shorter prompt)",
            prompt.len(),
            session.n_ctx()
        );
    }
    let gen = GenerateParams {
        max_tokens: (args.n_predict >= 0).then_some(args.n_predict as usize),
        sampler: sampler_params(&args.sampling),
        stop_at_eog: true,
        cancel: Some(cancel),
    };
    let json = args.json;
    let c = session.complete(&prompt, gen, |p| json || out(&p.text).is_ok())?;
    let u = &c.usage;
    if json {
        let v = serde_json::json!({
            "text": c.text,
            "tokens": c.tokens,
            "prompt_tokens": prompt,
            "finish_reason": finish_name(c.finish),
            "timings": {
                "load_ms": load_time.as_secs_f64() * 1e3,
                "prompt_n": u.prompt_tokens,
                "prompt_ms": u.prompt_time.as_secs_f64() * 1e3,
                "prompt_per_second": u.prompt_tokens_per_sec(),
                "predicted_n": u.generated_tokens,
                "predicted_ms": u.generation_time.as_secs_f64() * 1e3,
                "predicted_per_second": u.generation_tokens_per_sec(),
            }
        });
        out(&format!("{v}\n"))?;
    } else {
        out("\n")?;
        eprintln!(
            "tern: prompt {} tokens at {:.1} t/s, generated {} tokens at {:.1} t/s ({})",
            u.prompt_tokens,
            u.prompt_tokens_per_sec(),
            u.generated_tokens,
            u.generation_tokens_per_sec(),
            finish_name(c.finish)
        );
    }
    Ok(c.finish)
}
