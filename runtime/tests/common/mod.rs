//! Shared helpers for the runtime's integration tests: where the fetched
//! test data lives, fixture readers and the error metrics.
//!
//! Models are never committed; `scripts/fetch-test-data.sh` puts them in the
//! cache (`$TERN_CACHE`, default `~/.cache/tern`). A test whose data is
//! missing fails with the command to run — it never passes silently.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// The test-data cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("TERN_CACHE") {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| ".".into());
    Path::new(&home).join(".cache").join("tern")
}

/// A model from the cache; panics (fails the test) with instructions if absent.
pub fn model_path(rel: &str) -> PathBuf {
    let p = cache_dir().join("models").join(rel);
    assert!(
        p.is_file(),
        "test model {} is missing: run scripts/fetch-test-data.sh first",
        p.display()
    );
    p
}

/// The committed fixtures directory.
pub fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("fixtures")
}

pub fn read_json(path: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("reading fixture {}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("parsing {}: {e}", path.display()))
}

pub fn read_f32(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(b.len() % 4, 0, "{} is not whole f32s", path.display());
    b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

pub fn read_f16(path: &Path) -> Vec<f32> {
    let b = std::fs::read(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    assert_eq!(b.len() % 2, 0, "{} is not whole f16s", path.display());
    b.chunks_exact(2)
        .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32())
        .collect()
}

pub fn tokens(v: &serde_json::Value) -> Vec<u32> {
    v.as_array()
        .expect("token array")
        .iter()
        .map(|t| t.as_u64().expect("token id") as u32)
        .collect()
}

/// Normalised mean squared error Σ(a−b)² / Σb², with `b` the reference.
pub fn nmse(got: &[f32], want: &[f32]) -> f64 {
    assert_eq!(got.len(), want.len());
    let mut num = 0.0f64;
    let mut den = 0.0f64;
    for (&g, &w) in got.iter().zip(want) {
        let d = g as f64 - w as f64;
        num += d * d;
        den += (w as f64) * (w as f64);
    }
    num / den.max(f64::MIN_POSITIVE)
}

pub fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best
}

/// sha256 of a file as lower-case hex: fixtures record which model file
/// produced them, and a stale model must fail loudly.
pub fn sha256_file(path: &Path) -> String {
    use sha2::Digest;
    use std::io::Read;
    let mut f = std::fs::File::open(path).expect("open for sha256");
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).expect("read for sha256");
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}
