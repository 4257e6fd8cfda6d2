//! End-to-end tests of the `tern-quantize` binary on the tiny synthetic
//! models of the test cache (`scripts/fetch-test-data.sh`): every scheme
//! into GGML and tern types, the outputs load and run in the runtime, the
//! JSON report, every user error as one line with its exit code, refusing
//! to overwrite the input, and the atomic-write guarantees under failures,
//! SIGTERM and SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tern_runtime::gguf::GgufFile;
use tern_runtime::{Batch, Model, ModelParams, SessionParams};

fn quantize() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tern-quantize"));
    c.env("RUST_LOG", "warn")
        .env_remove("RUST_BACKTRACE")
        .env_remove("TERN_QUANTIZE_TEST_PAUSE_BEFORE_RENAME");
    c
}

fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TERN_CACHE") {
        return PathBuf::from(d);
    }
    Path::new(&std::env::var_os("HOME").unwrap_or_else(|| ".".into())).join(".cache/tern")
}

fn tiny(name: &str) -> PathBuf {
    let p = cache_dir().join("models/synthetic").join(name);
    assert!(
        p.is_file(),
        "{} missing: run scripts/fetch-test-data.sh",
        p.display()
    );
    p
}

/// A fresh directory for one test.
fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tern-quantize-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Deterministic English-looking text of about `words` words.
fn text(words: usize) -> String {
    const W: [&str; 24] = [
        "the", "whale", "sea", "ship", "captain", "and", "of", "a", "sailed", "into", "storm",
        "night", "harpoon", "deck", "wind", "old", "men", "spoke", "quietly", "under", "grey",
        "sky", "white", "waves",
    ];
    let mut x: u64 = 0x2545F4914F6CDD1D;
    let mut s = String::new();
    for i in 0..words {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(W[(x % W.len() as u64) as usize]);
        s.push(if i % 11 == 10 { '.' } else { ' ' });
        if i % 11 == 10 {
            s.push(' ');
        }
    }
    s
}

fn calib_file(dir: &Path) -> PathBuf {
    let p = dir.join("calib.txt");
    std::fs::write(&p, text(6000)).unwrap();
    p
}

fn run(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null())
        .output()
        .expect("run tern-quantize")
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

/// The model in `path` loads and a forward gives finite logits.
fn runs(path: &Path) {
    let m = Model::load(
        path,
        &ModelParams {
            threads: Some(2),
            ..Default::default()
        },
    )
    .expect("quantized model loads");
    let mut s = m
        .new_session(&SessionParams {
            n_ctx: 64,
            ..Default::default()
        })
        .unwrap();
    let toks: Vec<u32> = (1..20).collect();
    let l = s.forward(&Batch::new(&toks, 0)).unwrap();
    assert!(l.as_slice().iter().all(|v| v.is_finite()));
}

fn small_calib(cmd: &mut Command, calib: &Path) {
    cmd.arg("--calib")
        .arg(calib)
        .args(["--samples", "8", "--seq-len", "64"]);
}

#[test]
fn every_scheme_into_ggml_and_tern_types_loads_and_runs() {
    let d = tmp("schemes");
    let calib = calib_file(&d);
    let model = tiny("tiny-llama-f32.gguf");
    let cases: &[(&str, &[&str], &str)] = &[
        ("rtn", &["--type", "q4_0"], "Q4_0"),
        ("wrtn", &["--type", "q4_0"], "Q4_0"),
        ("wrtn", &["--bits", "3", "--sym"], "TERN_Q3_G128"),
        ("gptq", &["--type", "q4_0"], "Q4_0"),
        ("p-gptq", &["--type", "q4_0"], "Q4_0"),
        ("gptq", &["--type", "q8_0"], "Q8_0"),
        ("rtn", &[], "TERN_Q4_G128"),
        ("gptq", &["--bits", "3", "--act-order"], "TERN_Q3_G128"),
        ("p-gptq", &["--group", "64", "--sym"], "TERN_Q4_G64"),
        ("p-gptq", &["--type", "q4_1", "--prefix-skip", "2"], "Q4_1"),
        (
            "p-gptq",
            &["--type", "q4_0", "--prefix-weight", "qkv=32,gate-up=0"],
            "Q4_0",
        ),
        (
            "p-gptq",
            &["--prefix-weight", "8", "--prefix-skip", "1"],
            "TERN_Q4_G128",
        ),
    ];
    for (i, (scheme, extra, ty)) in cases.iter().enumerate() {
        let out = d.join(format!("out{i}.gguf"));
        let mut cmd = quantize();
        cmd.arg("-m")
            .arg(&model)
            .arg("-o")
            .arg(&out)
            .args(["--scheme", scheme, "-t", "2", "--json"])
            .args(*extra);
        small_calib(&mut cmd, &calib);
        let o = run(&mut cmd);
        assert!(o.status.success(), "{scheme} {extra:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).expect("one JSON object");
        assert_eq!(v["scheme"], *scheme);
        assert_eq!(v["type"], *ty);
        let ts = v["tensors"].as_array().unwrap();
        assert_eq!(ts.len(), 2 * 7);
        for t in ts {
            let (e, r) = (t["err"].as_f64().unwrap(), t["err_rtn"].as_f64().unwrap());
            assert!(e.is_finite() && e > 0.0 && e < 0.5, "{t}");
            if *scheme == "rtn" {
                assert_eq!(e, r);
            }
        }
        let f = GgufFile::open(&out).unwrap();
        assert_eq!(
            f.tensor("blk.1.ffn_down.weight").unwrap().ty.to_string(),
            *ty
        );
        // Norms and embeddings are copied as they are.
        let src = GgufFile::open(&model).unwrap();
        for name in [
            "token_embd.weight",
            "blk.0.attn_norm.weight",
            "output_norm.weight",
        ] {
            let (a, b) = (src.tensor(name).unwrap(), f.tensor(name).unwrap());
            assert_eq!(src.tensor_data(a), f.tensor_data(b), "{name}");
        }
        let get = |k: &str| f.get(k).cloned();
        assert_eq!(
            get("tern.quantization.scheme").and_then(|v| v.as_str().map(String::from)),
            Some(scheme.to_string())
        );
        assert!(get("general.quantized_by").is_some());
        let want_ft = match *ty {
            "Q4_0" => Some(2),
            "Q4_1" => Some(3),
            "Q8_0" => Some(7),
            _ => None,
        };
        assert_eq!(get("general.file_type").and_then(|v| v.as_u64()), want_ft);
        runs(&out);
    }
}

#[test]
fn rtn_needs_no_calibration_and_reports_a_table() {
    let d = tmp("rtn-table");
    let out = d.join("o.gguf");
    let o = run(quantize()
        .arg("-m")
        .arg(tiny("tiny-minicpm-q8_0.gguf"))
        .arg("-o")
        .arg(&out)
        .args(["--scheme", "rtn", "--type", "q4_0"]));
    assert!(o.status.success(), "{}", stderr(&o));
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(
        table.contains("ffn_down") && table.contains("mean error"),
        "{table}"
    );
    runs(&out);
}

#[test]
fn gptq_beats_round_to_nearest_on_the_proxy_error() {
    let d = tmp("gptq-vs-rtn");
    let calib = calib_file(&d);
    let mut cmd = quantize();
    cmd.arg("-m")
        .arg(tiny("tiny-llama-f32.gguf"))
        .arg("-o")
        .arg(d.join("o.gguf"))
        .args(["--scheme", "gptq", "--bits", "3", "--json"]);
    small_calib(&mut cmd, &calib);
    let o = run(&mut cmd);
    assert!(o.status.success(), "{}", stderr(&o));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let (e, r) = (
        v["mean_err"].as_f64().unwrap(),
        v["mean_err_rtn"].as_f64().unwrap(),
    );
    assert!(e <= r, "GPTQ {e} vs RTN {r}");
}

#[test]
fn same_input_gives_the_same_bytes() {
    let d = tmp("deterministic");
    let calib = calib_file(&d);
    let mut outs = Vec::new();
    for (i, t) in ["1", "2"].iter().enumerate() {
        let out = d.join(format!("o{i}.gguf"));
        let mut cmd = quantize();
        cmd.arg("-m")
            .arg(tiny("tiny-llama-q4_1.gguf"))
            .arg("-o")
            .arg(&out)
            .args(["--scheme", "p-gptq", "-t", t]);
        small_calib(&mut cmd, &calib);
        let o = run(&mut cmd);
        assert!(o.status.success(), "{}", stderr(&o));
        outs.push(std::fs::read(&out).unwrap());
    }
    assert!(outs[0] == outs[1], "outputs differ between 1 and 2 threads");
}

/// The quantized linears' bytes of a tern-quantize output, in file order.
fn linear_bytes(path: &Path) -> Vec<Vec<u8>> {
    let f = GgufFile::open(path).unwrap();
    f.tensors()
        .iter()
        .filter(|t| t.name.starts_with("blk.") && !t.name.contains("norm"))
        .map(|t| f.tensor_data(t).to_vec())
        .collect()
}

#[test]
fn prefix_weight_default_zero_and_one() {
    let d = tmp("prefix-weight");
    let calib = calib_file(&d);
    let model = tiny("tiny-llama-f32.gguf");
    let make = |name: &str, args: &[&str]| {
        let out = d.join(format!("{name}.gguf"));
        let mut cmd = quantize();
        cmd.arg("-m")
            .arg(&model)
            .arg("-o")
            .arg(&out)
            .args(["-t", "2", "--json", "--type", "q4_0"])
            .args(args);
        small_calib(&mut cmd, &calib);
        let o = run(&mut cmd);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        (std::fs::read(&out).unwrap(), linear_bytes(&out), v)
    };
    // The default is the sink weighting, qkv=32 and 1 elsewhere.
    let (def, _, v) = make("def", &["--scheme", "p-gptq"]);
    assert_eq!(
        v["prefix_weights"],
        serde_json::json!({"qkv": 32.0, "o": 1.0, "gate_up": 1.0, "down": 1.0})
    );
    let (qkv32, _, _) = make(
        "qkv32",
        &["--scheme", "p-gptq", "--prefix-weight", "qkv=32"],
    );
    assert!(def == qkv32, "the default differs from qkv=32");
    // λ = 0 alone, --prefix-skip-on not-down alone and the same per input:
    // one file, the skip at all inputs but ffn_down.
    let (zero, _, v) = make("zero", &["--scheme", "p-gptq", "--prefix-weight", "0"]);
    assert_eq!(
        v["prefix_weights"],
        serde_json::json!({"qkv": 0.0, "o": 0.0, "gate_up": 0.0, "down": 1.0})
    );
    let (notdown, _, _) = make(
        "notdown",
        &["--scheme", "p-gptq", "--prefix-skip-on", "not-down"],
    );
    let (sites, _, _) = make(
        "sites",
        &[
            "--scheme",
            "p-gptq",
            "--prefix-weight",
            "qkv=0,o=0,gate-up=0",
        ],
    );
    assert!(
        zero == notdown && zero == sites,
        "λ = 0 differs from the skip"
    );
    assert!(def != zero, "the default is the skip");
    // --prefix-skip-on all with λ = 0 is the report's skip.
    let (all, _, _) = make("all", &["--scheme", "p-gptq", "--prefix-skip-on", "all"]);
    let (all0, _, _) = make(
        "all0",
        &[
            "--scheme",
            "p-gptq",
            "--prefix-skip-on",
            "all",
            "--prefix-weight",
            "0",
        ],
    );
    assert!(all == all0);
    // λ = 1 everywhere is GPTQ's Hessian: the same linears (the metadata
    // names the scheme).
    let (_, gptq, v) = make("gptq", &["--scheme", "gptq"]);
    assert!(v["prefix_weights"].is_null());
    let (_, one, _) = make("one", &["--scheme", "p-gptq", "--prefix-weight", "1"]);
    assert!(gptq == one, "λ = 1 differs from GPTQ");
    // An up-weighted prefix changes the attention linears.
    let (_, up, v) = make(
        "up",
        &[
            "--scheme",
            "p-gptq",
            "--prefix-weight",
            "qkv=32",
            "--prefix-skip",
            "1",
        ],
    );
    assert_eq!(
        v["prefix_weights"],
        serde_json::json!({"qkv": 32.0, "o": 1.0, "gate_up": 1.0, "down": 1.0})
    );
    assert_eq!(v["prefix_skip"], 1);
    assert!(up != gptq);
}

#[test]
fn bad_flags_are_one_line_usage_errors() {
    let d = tmp("flags");
    let calib = calib_file(&d);
    let model = tiny("tiny-llama-f32.gguf");
    let out = d.join("o.gguf");
    let cases: &[(&[&str], &str)] = &[
        (&["--bits", "5"], "bits"),
        (&["--group", "100"], "group"),
        (&["--type", "q4_0", "--bits", "3"], "q4_0"),
        (&["--type", "q4_1", "--sym"], "asymmetric"),
        (&["--type", "q8_0", "--group", "64"], "groups of 32"),
        (&["--type", "q5_k"], "q5_k"),
        (&["--scheme", "awq"], "awq"),
        (&["--scheme", "gptq", "--prefix-skip", "2"], "--prefix-skip"),
        (&["--scheme", "rtn", "--act-order"], "--act-order"),
        (&["--scheme", "wrtn", "--act-order"], "--act-order"),
        (&["--scheme", "rtn", "--no-act-order"], "--no-act-order"),
        (&["--act-order", "--no-act-order"], "--no-act-order"),
        (&["--act-order", "--scale-search", "diag"], "ggml-static"),
        (
            &["--scheme", "rtn", "--scale-search", "off"],
            "--scale-search",
        ),
        (
            &["--scheme", "wrtn", "--scale-search", "ggml"],
            "--scale-search",
        ),
        (&["--damp", "2"], "damp"),
        (&["--damp", "-0.1"], "damp"),
        (&["--samples", "0"], "samples"),
        (&["--seq-len", "-3"], "seq-len"),
        (&["-t", "0"], "threads"),
        (&["--prefix-skip", "64"], "--prefix-skip"),
        (&["--scheme", "rtn", "--act-stats", "s.tsv"], "--act-stats"),
        (
            &["--scheme", "gptq", "--prefix-skip-on", "down"],
            "--prefix-skip-on",
        ),
        (
            &["--scheme", "gptq", "--prefix-weight", "8"],
            "--prefix-weight",
        ),
        (&["--prefix-weight", "-1"], "--prefix-weight"),
        (&["--prefix-weight", "nan"], "--prefix-weight"),
        (&["--prefix-weight", "inf"], "--prefix-weight"),
        (&["--prefix-weight", "1e7"], "--prefix-weight"),
        (&["--prefix-weight", "x"], "--prefix-weight"),
        (&["--prefix-weight", "qkv=x"], "--prefix-weight"),
        (&["--prefix-weight", "qkv"], "--prefix-weight"),
        (&["--prefix-weight", "qkv=2,"], "--prefix-weight"),
        (&["--prefix-weight", "attn=2"], "unknown site"),
        (&["--prefix-weight", "qkv=2,qkv=3"], "twice"),
        (&["--prefix-weight", "down=-0.5"], "--prefix-weight"),
        (
            &["--prefix-weight", "qkv=8", "--prefix-skip-on", "all"],
            "--prefix-skip-on",
        ),
        (&["--scale-search", "max"], "max"),
        (&["--refit", "9"], "refit"),
        (&["--refit", "-1"], "refit"),
        (&["--refit", "x"], "refit"),
        (&["--frobnicate"], "frobnicate"),
    ];
    for (extra, needle) in cases {
        let o = run(quantize()
            .arg("-m")
            .arg(&model)
            .arg("-o")
            .arg(&out)
            .arg("--calib")
            .arg(&calib)
            .args(["--samples", "4", "--seq-len", "64"])
            .args(*extra));
        assert_error(&o, 2, needle);
        assert!(!out.exists());
    }
    // GPTQ without calibration text.
    let o = run(quantize()
        .arg("-m")
        .arg(&model)
        .arg("-o")
        .arg(&out)
        .args(["--scheme", "gptq"]));
    assert_error(&o, 2, "--calib");
    let o = run(quantize()
        .arg("-m")
        .arg(&model)
        .arg("-o")
        .arg(&out)
        .args(["--scheme", "wrtn"]));
    assert_error(&o, 2, "--calib");
    // Missing -o.
    let o = run(quantize().arg("-m").arg(&model));
    assert_error(&o, 2, "--output");
}

#[test]
fn bad_inputs_are_one_line_errors() {
    let d = tmp("inputs");
    let model = tiny("tiny-llama-f32.gguf");
    let out = d.join("o.gguf");
    let short = d.join("short.txt");
    std::fs::write(&short, text(50)).unwrap();
    let binary = d.join("binary.txt");
    std::fs::write(&binary, [0xffu8, 0xfe, 0x00, 0x80]).unwrap();
    let nope = d.join("nope.txt");
    let not_gguf = d.join("not.gguf");
    std::fs::write(&not_gguf, b"hello, not a model").unwrap();
    let cases: Vec<(Vec<&std::ffi::OsStr>, &str)> = vec![
        (vec!["--calib".as_ref(), short.as_os_str()], "too short"),
        (vec!["--calib".as_ref(), binary.as_os_str()], "UTF-8"),
        (vec!["--calib".as_ref(), nope.as_os_str()], "nope.txt"),
    ];
    for (extra, needle) in cases {
        let o = run(quantize()
            .arg("-m")
            .arg(&model)
            .arg("-o")
            .arg(&out)
            .args(["--samples", "8", "--seq-len", "64"])
            .args(extra));
        assert_error(&o, 1, needle);
        assert!(!out.exists());
    }
    let o = run(quantize()
        .arg("-m")
        .arg(d.join("missing.gguf"))
        .arg("-o")
        .arg(&out)
        .args(["--scheme", "rtn"]));
    assert_error(&o, 1, "missing.gguf");
    let o = run(quantize()
        .arg("-m")
        .arg(&not_gguf)
        .arg("-o")
        .arg(&out)
        .args(["--scheme", "rtn"]));
    assert_error(&o, 1, "not.gguf");
    let o = run(quantize()
        .arg("-m")
        .arg(&model)
        .arg("-o")
        .arg(d.join("no-such-dir/o.gguf"))
        .args(["--scheme", "rtn"]));
    assert_error(&o, 1, "does not exist");
    let o = run(quantize()
        .arg("-m")
        .arg(&model)
        .arg("-o")
        .arg(&d)
        .args(["--scheme", "rtn"]));
    assert_error(&o, 1, "directory");
}

#[test]
fn the_input_is_never_the_output() {
    let d = tmp("same-file");
    let model = d.join("m.gguf");
    std::fs::copy(tiny("tiny-llama-f32.gguf"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    let hard = d.join("hard.gguf");
    std::fs::hard_link(&model, &hard).unwrap();
    let mut targets = vec![model.clone(), hard, d.join(".").join("m.gguf")];
    #[cfg(unix)]
    {
        let sym = d.join("sym.gguf");
        std::os::unix::fs::symlink(&model, &sym).unwrap();
        targets.push(sym);
    }
    for t in targets {
        let o = run(quantize()
            .arg("-m")
            .arg(&model)
            .arg("-o")
            .arg(&t)
            .args(["--scheme", "rtn"]));
        assert_error(&o, 1, "is the input file");
    }
    assert_eq!(std::fs::read(&model).unwrap(), before);
}

/// Files in `d` whose names mark them as temp files of tern-quantize.
fn temps(d: &Path) -> Vec<String> {
    std::fs::read_dir(d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tern-tmp."))
        .collect()
}

#[test]
fn a_failing_run_leaves_an_existing_output_alone() {
    let d = tmp("failing");
    let out = d.join("o.gguf");
    std::fs::write(&out, b"precious").unwrap();
    let short = d.join("short.txt");
    std::fs::write(&short, text(40)).unwrap();
    let o = run(quantize()
        .arg("-m")
        .arg(tiny("tiny-llama-f32.gguf"))
        .arg("-o")
        .arg(&out)
        .arg("--calib")
        .arg(&short));
    assert_error(&o, 1, "too short");
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    assert!(temps(&d).is_empty());
}

/// Start a run that pauses after writing and verifying its temp file, just
/// before the rename, and wait until it says so.
fn paused_run(d: &Path, out: &Path) -> std::process::Child {
    let mut child = quantize()
        .env("TERN_QUANTIZE_TEST_PAUSE_BEFORE_RENAME", "1")
        .arg("-m")
        .arg(tiny("tiny-llama-f32.gguf"))
        .arg("-o")
        .arg(out)
        .args(["--scheme", "rtn", "--type", "q4_0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        let n = err.read_line(&mut line).unwrap();
        assert!(n > 0, "tern-quantize ended before pausing");
        if line.contains("paused before rename") {
            break;
        }
    }
    assert_eq!(temps(d).len(), 1, "a temp file while paused");
    // Keep draining stderr so the child never blocks on a full pipe.
    std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
    child
}

#[cfg(unix)]
#[test]
fn sigkill_mid_write_leaves_the_output_untouched_and_the_next_run_cleans_up() {
    let d = tmp("sigkill");
    let out = d.join("o.gguf");
    std::fs::write(&out, b"precious").unwrap();
    let mut child = paused_run(&d, &out);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    // Only a hidden temp file can remain; the next run removes it.
    let left = temps(&d);
    assert!(
        left.iter().all(|n| n.starts_with(".o.gguf.tern-tmp.")),
        "{left:?}"
    );
    let o = run(quantize()
        .arg("-m")
        .arg(tiny("tiny-llama-f32.gguf"))
        .arg("-o")
        .arg(&out)
        .args(["--scheme", "rtn", "--type", "q4_0"]));
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(temps(&d).is_empty(), "{:?}", temps(&d));
    runs(&out);
}

#[cfg(unix)]
#[test]
fn sigterm_mid_write_removes_the_temp_file_and_exits_130() {
    let d = tmp("sigterm");
    let out = d.join("o.gguf");
    std::fs::write(&out, b"precious").unwrap();
    let mut child = paused_run(&d, &out);
    let pid = child.id().to_string();
    let st = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    assert!(temps(&d).is_empty(), "{:?}", temps(&d));
}

#[test]
fn scale_search_changes_gptq_only_and_act_stats_are_written() {
    let d = tmp("search-stats");
    let calib = calib_file(&d);
    let model = tiny("tiny-llama-f32.gguf");
    let make = |name: &str, args: &[&str]| -> Vec<u8> {
        let out = d.join(name);
        let mut cmd = quantize();
        cmd.arg("-m").arg(&model).arg("-o").arg(&out).args(args);
        if !args.contains(&"rtn") {
            small_calib(&mut cmd, &calib);
        }
        let o = run(&mut cmd);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        std::fs::read(&out).unwrap()
    };
    // RTN ignores calibration; importance-weighted RTN does not.
    let r1 = make("r1.gguf", &["--scheme", "rtn", "--type", "q4_0"]);
    let r2 = make("r2.gguf", &["--scheme", "wrtn", "--type", "q4_0"]);
    assert!(r1 != r2, "wrtn gave plain RTN");
    // GPTQ: the search picks other scales than the fixed rule.
    let g1 = make("g1.gguf", &["--scheme", "gptq", "--type", "q4_0"]);
    let g2 = make(
        "g2.gguf",
        &[
            "--scheme",
            "gptq",
            "--type",
            "q4_0",
            "--scale-search",
            "off",
        ],
    );
    assert!(g1 != g2, "the scale search changed nothing");
    let g4 = make(
        "g4.gguf",
        &[
            "--scheme",
            "gptq",
            "--type",
            "q4_0",
            "--scale-search",
            "ggml",
        ],
    );
    assert!(g4 != g1 && g4 != g2, "--scale-search ggml changed nothing");
    // Per-position statistics: a header and one line per block and input.
    let stats = d.join("stats.tsv");
    let st = stats.to_str().unwrap();
    make(
        "g3.gguf",
        &["--scheme", "gptq", "--type", "q4_0", "--act-stats", st],
    );
    let text = std::fs::read_to_string(&stats).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1 + 2 * 4, "{text}");
    assert!(lines[0].starts_with("layer\tsite\tsq0"), "{}", lines[0]);
    for l in &lines[1..] {
        let f: Vec<&str> = l.split('\t').collect();
        assert_eq!(f.len(), lines[0].split('\t').count(), "{l}");
        let share: f64 = f[f.len() - 1].parse().unwrap();
        assert!(share > 0.0 && share < 1.0, "{l}");
    }
}

#[test]
fn q4_0_defaults_to_act_order_with_static_ggml_scales_and_no_refit() {
    let d = tmp("q4_0-defaults");
    let calib = calib_file(&d);
    let model = tiny("tiny-llama-f32.gguf");
    let make = |name: &str, args: &[&str]| -> Vec<u8> {
        let out = d.join(name);
        let mut cmd = quantize();
        cmd.arg("-m")
            .arg(&model)
            .arg("-o")
            .arg(&out)
            .args(["--scheme", "gptq"])
            .args(args);
        small_calib(&mut cmd, &calib);
        let o = run(&mut cmd);
        assert!(o.status.success(), "{args:?}: {}", stderr(&o));
        std::fs::read(&out).unwrap()
    };
    let q = make("q.gguf", &["--type", "q4_0"]);
    let explicit = make(
        "e.gguf",
        &[
            "--type",
            "q4_0",
            "--act-order",
            "--scale-search",
            "ggml-static",
        ],
    );
    assert!(
        q == explicit,
        "q4_0's default is not act-order + ggml-static"
    );
    // ggml-static defaults to no refit.
    let r0 = make("r0.gguf", &["--type", "q4_0", "--refit", "0"]);
    let r1 = make("r1.gguf", &["--type", "q4_0", "--refit", "1"]);
    assert!(q == r0 && q != r1);
    let natural = make("n.gguf", &["--type", "q4_0", "--no-act-order"]);
    let old = make(
        "o.gguf",
        &["--type", "q4_0", "--no-act-order", "--scale-search", "diag"],
    );
    assert!(natural == old && natural != q);
    // A dynamic search given alone turns the act-order default off.
    let diag = make("d.gguf", &["--type", "q4_0", "--scale-search", "diag"]);
    assert!(diag == old);
    // Other types keep natural order and the diag search.
    let t = make("t.gguf", &["--bits", "4", "--group", "64"]);
    let t_old = make(
        "t2.gguf",
        &[
            "--bits",
            "4",
            "--group",
            "64",
            "--no-act-order",
            "--scale-search",
            "diag",
        ],
    );
    assert!(t == t_old);
}
