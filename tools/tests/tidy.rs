//! Repository-wide tidy checks that run with `cargo test`: every Rust
//! source file opens with a `//!` doc saying what it owns, and no model file
//! or large binary sneaks into the tree.

use std::path::{Path, PathBuf};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tools/ has a parent")
        .to_path_buf()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let name = e.file_name();
        let name = name.to_string_lossy();
        // target/ and dist/ (release bundles) are build output, git-ignored.
        if name.starts_with('.') || name == "target" || name == "dist" {
            continue;
        }
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn files() -> Vec<PathBuf> {
    let mut v = Vec::new();
    walk(&repo_root(), &mut v);
    v
}

#[test]
fn every_rust_file_starts_with_a_module_doc() {
    let mut missing = Vec::new();
    for f in files()
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
    {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        if !text.trim_start().starts_with("//!") {
            missing.push(
                f.strip_prefix(repo_root())
                    .unwrap_or(f)
                    .display()
                    .to_string(),
            );
        }
    }
    assert!(
        missing.is_empty(),
        "files without a leading //! doc: {missing:?}"
    );
}

#[test]
fn no_model_files_or_large_blobs_are_committed() {
    let mut bad = Vec::new();
    for f in files() {
        let len = std::fs::metadata(&f).map(|m| m.len()).unwrap_or(0);
        let rel = f
            .strip_prefix(repo_root())
            .unwrap_or(&f)
            .display()
            .to_string();
        // Small hand-made GGUF fixtures (metadata, a few tiny tensors) are fine;
        // anything model-sized is not.
        if len > 1 << 20 {
            bad.push(format!("{rel} ({len} bytes)"));
        }
    }
    assert!(bad.is_empty(), "files over 1 MiB in the tree: {bad:?}");
}
