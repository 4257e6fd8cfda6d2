//! End-to-end tests of the `tern` binary: real runs on SmolLM2 and every
//! error path a user can hit, each checked for its message and exit code —
//! and for the absence of a panic.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn tern() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern"));
    c.env("RUST_LOG", "warn").env_remove("RUST_BACKTRACE");
    c
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TERN_CACHE") {
        return PathBuf::from(d);
    }
    Path::new(&std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/tern")
}

fn smollm2() -> PathBuf {
    let p = cache_dir().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-test-data.sh",
        p.display()
    );
    p
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tern-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run tern")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A failure: the exit code, one `error:` line naming the problem, no panic.
fn assert_error(o: &Output, code: i32, needle: &str) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "exit code; stderr: {err}");
    assert!(!err.contains("panicked"), "panic: {err}");
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line in: {err}");
    assert!(
        lines[0].contains(needle),
        "error line '{}' does not mention '{needle}'",
        lines[0]
    );
}

#[test]
fn generate_greedy_matches_the_fixture() {
    let fx: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/generate_smollm2.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for case in fx["cases"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let n = case["n_predict"].as_u64().unwrap().to_string();
        let o = run(tern()
            .args([
                "generate", "--exact", "-t", "2", "--temp", "0", "-n", &n, "--json", "-p", prompt,
            ])
            .arg("-m")
            .arg(smollm2()));
        assert!(o.status.success(), "{}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
        let want = case["text"].as_str().unwrap();
        assert_eq!(
            v["text"].as_str().unwrap().trim_end(),
            want,
            "prompt {prompt:?}"
        );
        let eog = v["finish_reason"] == "stop";
        assert_eq!(
            eog,
            case["eog"].as_bool().unwrap(),
            "prompt {prompt:?}: finish {}",
            v["finish_reason"]
        );
        assert!(v["timings"]["predicted_per_second"].as_f64().unwrap() > 0.0);
    }
}

#[test]
fn chat_through_piped_stdin() {
    let mut child = tern()
        .args([
            "chat", "--exact", "-t", "2", "--temp", "0", "-n", "24", "-c", "512",
        ])
        .arg("-m")
        .arg(smollm2())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"What is the capital of France?\nAnd of Germany?\n/reset\nSay hello.\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(!err.contains("panicked"), "{err}");
    assert!(err.contains("[conversation reset]"), "{err}");
    // Three answers, each on its own line(s), and the first is about Paris.
    assert!(out.contains("Paris"), "first answer: {out}");
    assert!(
        out.contains("Berlin"),
        "second answer (needs the first turn as context): {out}"
    );
    assert!(out.trim().lines().count() >= 3, "{out}");
}

#[test]
fn chat_reports_a_full_context_and_keeps_running() {
    let mut child = tern()
        .args(["chat", "-t", "2", "--temp", "0", "-n", "200", "-c", "64"])
        .arg("-m")
        .arg(smollm2())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let long = "Tell me a very long story about a dragon. ".repeat(3);
    let input = format!("{long}\n{long}\n/reset\nHi\n");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("context full") || err.contains("context holds"),
        "{err}"
    );
    assert!(err.contains("/reset"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn info_shows_metadata_and_tensors() {
    let o = run(tern().arg("info").arg(smollm2()));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("general.architecture"), "{out}");
    assert!(out.contains("blk.0.attn_q.weight"), "{out}");
    assert!(out.contains("Q4_1"), "{out}");
    assert!(out.contains("model: llama"), "{out}");
}

#[test]
fn bench_prints_a_table_and_json() {
    let o = run(tern()
        .args(["bench", "-p", "16", "-n", "4", "-r", "2", "-t", "2"])
        .arg("-m")
        .arg(smollm2()));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("| pp16 |") && out.contains("| tg4 |") && out.contains(" ± "),
        "{out}"
    );
    let o = run(tern()
        .args(["bench", "-p", "8", "-n", "0", "-r", "1", "-o", "json"])
        .arg("-m")
        .arg(smollm2()));
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["test"], "pp8");
    assert!(v[0]["avg_ts"].as_f64().unwrap() > 0.0);
}

#[test]
fn error_missing_and_non_gguf_files() {
    let d = tmp("files");
    let o = run(tern()
        .args(["generate", "-p", "hi", "-m"])
        .arg(d.join("nope.gguf")));
    assert_error(&o, 1, "does not exist");

    let text = d.join("notes.txt");
    std::fs::write(&text, "just some text, not a model").unwrap();
    let o = run(tern().args(["generate", "-p", "hi", "-m"]).arg(&text));
    assert_error(&o, 1, "not a GGUF file");

    let o = run(tern().args(["info"]).arg(&text));
    assert_error(&o, 1, "not a GGUF file");

    // A real model cut short: the message says it is truncated.
    let bytes = std::fs::read(smollm2()).unwrap();
    let cut = d.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let o = run(tern().args(["generate", "-p", "hi", "-m"]).arg(&cut));
    assert_error(&o, 1, "truncated");

    let o = run(tern().args(["generate", "-p", "hi", "-m"]).arg(&d));
    assert_error(&o, 1, "directory");
}

#[test]
fn error_unknown_architecture() {
    use tern_runtime::gguf::{GgufWriter, Value};
    let d = tmp("arch");
    let p = d.join("neox.gguf");
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("gpt-neox".into()))
        .unwrap();
    w.write_file(&p).unwrap();
    let o = run(tern().args(["generate", "-p", "hi", "-m"]).arg(&p));
    assert_error(&o, 1, "unknown architecture 'gpt-neox'");
}

#[test]
fn error_prompt_longer_than_context() {
    let o = run(tern()
        .args(["generate", "-c", "16", "-p"])
        .arg("word ".repeat(100))
        .arg("-m")
        .arg(smollm2()));
    assert_error(&o, 1, "context holds 16");
}

#[test]
fn error_invalid_utf8_prompt_file() {
    let d = tmp("utf8");
    let f = d.join("bad.txt");
    std::fs::write(&f, b"hello \xff\xfe world").unwrap();
    let o = run(tern()
        .args(["generate", "-f"])
        .arg(&f)
        .arg("-m")
        .arg(smollm2()));
    assert_error(&o, 1, "not valid UTF-8");
    let o = run(tern()
        .args(["perplexity", "-f"])
        .arg(&f)
        .arg("-m")
        .arg(smollm2()));
    assert_error(&o, 1, "not valid UTF-8");
}

#[test]
fn error_bad_flag_values() {
    let m = smollm2();
    let cases: &[(&[&str], &str)] = &[
        (&["generate", "-p", "x", "-n", "-5"], "-5"),
        (&["generate", "-p", "x", "--temp", "-1"], "negative"),
        (&["generate", "-p", "x", "--temp", "nan"], "finite"),
        (
            &["generate", "-p", "x", "--top-p", "1.5"],
            "between 0 and 1",
        ),
        (&["generate", "-p", "x", "-t", "0"], "threads"),
        (&["generate", "-p", "x", "-c", "0"], "ctx-size"),
        (&["generate", "-p", "x", "-c", "99999999999"], "ctx-size"),
        (
            &["generate", "-p", "x", "-n", "99999999999"],
            "absurdly large",
        ),
        (
            &["generate", "-p", "x", "--repeat-penalty", "0"],
            "greater than 0",
        ),
        (&["generate"], "--prompt"),
        (&["generate", "-p", "x", "-f", "y"], "cannot be used with"),
        (&["bench", "-r", "0"], "repetitions"),
        (&["perplexity", "-f", "x", "-c", "2"], "ctx-size"),
        (&["frobnicate"], "frobnicate"),
    ];
    for (args, needle) in cases {
        let o = run(tern().args(*args).arg("-m").arg(&m));
        assert_error(&o, 2, needle);
    }
}

#[test]
fn error_cuda_without_the_feature() {
    let o = run(tern()
        .args(["generate", "-p", "x", "--device", "cuda", "-m"])
        .arg(smollm2()));
    assert_error(&o, 1, "CUDA");
}

#[test]
fn perplexity_needs_enough_text() {
    let d = tmp("ppl");
    let f = d.join("short.txt");
    std::fs::write(&f, "A short text.").unwrap();
    let o = run(tern()
        .args(["perplexity", "-c", "64", "-f"])
        .arg(&f)
        .arg("-m")
        .arg(smollm2()));
    assert_error(&o, 1, "needs at least 128");
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    let mut child = tern()
        .args([
            "generate",
            "--temp",
            "0",
            "-n",
            "64",
            "-p",
            "Once upon a time",
        ])
        .arg("-m")
        .arg(smollm2())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn perplexity_prints_running_and_final_estimates() {
    let d = tmp("ppl-ok");
    let f = d.join("text.txt");
    let para = "It is a truth universally acknowledged, that a single man in possession of a good \
                fortune, must be in want of a wife. However little known the feelings or views of \
                such a man may be on his first entering a neighbourhood, this truth is so well fixed \
                in the minds of the surrounding families, that he is considered the rightful \
                property of some one or other of their daughters.\n";
    std::fs::write(&f, para.repeat(6)).unwrap();
    let o = run(tern()
        .args(["perplexity", "-t", "2", "-c", "64", "--chunks", "3", "-f"])
        .arg(&f)
        .arg("-m")
        .arg(smollm2()));
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.starts_with("[1]") && out.contains(",[2]") && out.contains(",[3]"),
        "{out}"
    );
    let last = out.trim_end().lines().last().unwrap();
    let rest = last
        .strip_prefix("Final estimate: PPL = ")
        .unwrap_or_else(|| panic!("last line: {last}"));
    let (ppl, err) = rest.split_once(" +/- ").unwrap();
    let (ppl, err): (f64, f64) = (ppl.parse().unwrap(), err.parse().unwrap());
    // Austen's opening under a 135M model: well above 1, far below the
    // vocabulary size (a broken scorer lands near either end).
    assert!(ppl > 2.0 && ppl < 200.0 && err > 0.0, "{last}");
}

#[test]
fn ctrl_c_stops_the_answer_not_the_chat() {
    let mut child = tern()
        .args(["chat", "-t", "2", "--temp", "0", "-n", "4000", "-c", "4096"])
        .arg("-m")
        .arg(smollm2())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(b"Write a very long story about the sea, with many chapters.\n")
        .unwrap();
    stdin.flush().unwrap();
    // Let it start answering, then interrupt once: only the answer stops.
    std::thread::sleep(std::time::Duration::from_millis(2500));
    let st = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    stdin.write_all(b"Say hi.\n/exit\n").unwrap();
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "exit {:?}: {err}", o.status.code());
    assert!(err.contains("[stopped]"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}
