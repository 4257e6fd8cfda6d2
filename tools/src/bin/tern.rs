//! The `tern` command: parse flags, run the subcommand, and turn every
//! failure into one line `error: ...` with a non-zero exit code.
//!
//! Exit codes: 0 success; 1 an error; 2 a usage error (bad flag or value);
//! 130 interrupted by Ctrl-C.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;
use tern_runtime::{CancelToken, FinishReason};
use tern_tools::cli::{Cli, Command};
use tern_tools::common::BrokenPipe;

/// One line: the error chain joined with ": ", newlines folded.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Ctrl-C: while generating, stop the answer; otherwise a second press
/// within two seconds exits with 130.
fn install_ctrlc(cancel: CancelToken, generating: Arc<AtomicBool>, interactive: bool) {
    let last: Mutex<Option<Instant>> = Mutex::new(None);
    let _ = ctrlc::set_handler(move || {
        if generating.load(Ordering::SeqCst) || !interactive {
            cancel.cancel();
            return;
        }
        let mut l = last.lock().unwrap_or_else(|p| p.into_inner());
        if l.is_some_and(|t| t.elapsed() < Duration::from_secs(2)) {
            eprintln!();
            std::process::exit(130);
        }
        *l = Some(Instant::now());
        eprintln!("\n(press Ctrl-C again to quit, or type /exit)");
    });
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            // clap's message spans lines (the error, details, usage, a hint):
            // keep the error and its details on one line.
            let msg = e.to_string();
            let text: Vec<&str> = msg
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty() && !l.starts_with("tip:"))
                .collect();
            let text = text.join(" ");
            let text = text.strip_prefix("error: ").unwrap_or(&text);
            eprintln!("error: {text} (see tern --help)");
            return ExitCode::from(2);
        }
    };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .format_timestamp(None)
        .init();

    let cancel = CancelToken::new();
    let generating = Arc::new(AtomicBool::new(false));
    let result = match &cli.command {
        Command::Chat(a) => {
            install_ctrlc(cancel.clone(), generating.clone(), true);
            tern_tools::chat::run(a, cancel, generating).map(|_| ExitCode::SUCCESS)
        }
        Command::Generate(a) => {
            install_ctrlc(cancel.clone(), generating, false);
            tern_tools::generate::run(a, cancel).map(|f| {
                if f == FinishReason::Cancelled {
                    ExitCode::from(130)
                } else {
                    ExitCode::SUCCESS
                }
            })
        }
        Command::Bench(a) => tern_tools::bench::run(a).map(|_| ExitCode::SUCCESS),
        Command::Perplexity(a) => tern_tools::perplexity::run(a).map(|_| ExitCode::SUCCESS),
        Command::Info(a) => tern_tools::info::run(a).map(|_| ExitCode::SUCCESS),
    };
    match result {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<BrokenPipe>().is_some() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}
