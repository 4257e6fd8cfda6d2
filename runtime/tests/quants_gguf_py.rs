//! Bit-exactness of tern's reference quant kernels against gguf-py 0.19.0.
//!
//! The fixtures in `tests/fixtures/quants/` were written by
//! `scripts/fixtures/make_quant_fixtures.py` from gguf-py's own
//! `gguf.quants.{quantize,dequantize}`; this file only reads them (it never
//! starts Python). Every dequantized f32 is compared by its bits and every
//! quantized byte exactly, one row at a time through the checked wrappers.

use std::path::{Path, PathBuf};

use serde_json::Value;
use tern_runtime::quants::{self, GgmlType};

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quants")
}

fn read(name: &str) -> Vec<u8> {
    let path = fixture_dir().join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn f32s(bytes: &[u8]) -> Vec<f32> {
    assert_eq!(bytes.len() % 4, 0);
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

fn index() -> Value {
    serde_json::from_slice(&read("index.json")).expect("index.json is JSON")
}

/// The index entry for (`ty`, `op`); panics if missing so a truncated index
/// cannot pass silently.
fn case(ty: GgmlType, op: &str) -> Value {
    index()["cases"]
        .as_array()
        .expect("cases array")
        .iter()
        .find(|c| c["type"] == ty.name() && c["op"] == op)
        .unwrap_or_else(|| panic!("no {op} case for {ty} in index.json"))
        .clone()
}

/// (rows, elements per row, input bytes, expected bytes) of a case, with its
/// sizes checked against the type table.
fn load(ty: GgmlType, op: &str) -> (usize, usize, Vec<u8>, Vec<u8>) {
    let c = case(ty, op);
    let rows = c["rows"].as_u64().unwrap() as usize;
    let n = c["n_per_row"].as_u64().unwrap() as usize;
    let input = read(c["input"].as_str().unwrap());
    let expected = read(c["expected"].as_str().unwrap());
    let row_bytes = ty.row_bytes(n as u64).unwrap() as usize;
    let (in_len, out_len) = match op {
        "dequantize" => (row_bytes, 4 * n),
        _ => (4 * n, row_bytes),
    };
    assert_eq!(input.len(), rows * in_len, "{ty} {op} input size");
    assert_eq!(expected.len(), rows * out_len, "{ty} {op} expected size");
    (rows, n, input, expected)
}

fn check_dequantize(ty: GgmlType) {
    let (rows, n, input, expected) = load(ty, "dequantize");
    let expected = f32s(&expected);
    let row_bytes = input.len() / rows;
    let mut mismatches = Vec::new();
    for r in 0..rows {
        let mut out = vec![0.0f32; n];
        quants::dequantize_row(ty, &input[r * row_bytes..][..row_bytes], &mut out).unwrap();
        for (i, (&got, &want)) in out.iter().zip(&expected[r * n..][..n]).enumerate() {
            if got.to_bits() != want.to_bits() {
                mismatches.push(format!(
                    "row {r} elem {i}: got {got:e} ({:#010x}), gguf-py {want:e} ({:#010x})",
                    got.to_bits(),
                    want.to_bits()
                ));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{ty} dequantize differs from gguf-py in {} of {} values; first: {:#?}",
        mismatches.len(),
        rows * n,
        &mismatches[..mismatches.len().min(8)]
    );
}

fn check_quantize(ty: GgmlType) {
    let (rows, n, input, expected) = load(ty, "quantize");
    let input = f32s(&input);
    let row_bytes = expected.len() / rows;
    let mut mismatches = Vec::new();
    for r in 0..rows {
        let mut out = vec![0u8; row_bytes];
        quants::quantize_row(ty, &input[r * n..][..n], &mut out).unwrap();
        let want = &expected[r * row_bytes..][..row_bytes];
        // Report by block so a failure names the block's inputs' scale.
        let block_bytes = ty.type_size() as usize;
        for (b, (g, w)) in out
            .chunks_exact(block_bytes)
            .zip(want.chunks_exact(block_bytes))
            .enumerate()
        {
            if g != w {
                mismatches.push(format!("row {r} block {b}: got {g:02x?}, gguf-py {w:02x?}"));
            }
        }
    }
    assert!(
        mismatches.is_empty(),
        "{ty} quantize differs from gguf-py in {} blocks; first: {:#?}",
        mismatches.len(),
        &mismatches[..mismatches.len().min(4)]
    );
}

/// `vec_dot` on the fixture rows (extreme scales included) against the f64
/// dot of gguf-py's dequantized values. A loose relative bound: the point is
/// that nothing overflows or mishandles a sign on these rows; the tight,
/// derived bound is in the unit tests.
fn check_vec_dot(ty: GgmlType) {
    let (rows, n, input, expected) = load(ty, "dequantize");
    let w = f32s(&expected);
    let row_bytes = input.len() / rows;
    let x: Vec<f32> = (0..n)
        .map(|i| ((i * 7919) % 61) as f32 / 30.0 - 1.0)
        .collect();
    for r in 0..rows {
        let wr = &w[r * n..][..n];
        let got = quants::vec_dot(ty, &input[r * row_bytes..][..row_bytes], &x).unwrap();
        let exact: f64 = wr
            .iter()
            .zip(&x)
            .map(|(&a, &b)| f64::from(a) * f64::from(b))
            .sum();
        let mag: f64 = wr
            .iter()
            .zip(&x)
            .map(|(&a, &b)| (f64::from(a) * f64::from(b)).abs())
            .sum();
        // Q4_1 sums m·Σx separately, so its error scales with |m| too; 2⁻¹⁶
        // of the magnitude sum (≈ 256 f32 roundings) covers every type here.
        let bound = mag * 2f64.powi(-16) + 1e-30;
        assert!(
            (f64::from(got) - exact).abs() <= bound,
            "{ty} row {r}: vec_dot {got:e} vs f64 {exact:e} (bound {bound:e})"
        );
    }
}

#[test]
fn index_lists_both_ops_for_every_fixture_type() {
    let idx = index();
    assert_eq!(
        idx["gguf"], "0.19.0",
        "fixtures must come from gguf-py 0.19.0"
    );
    assert_eq!(idx["cases"].as_array().unwrap().len(), 10);
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ] {
        for op in ["dequantize", "quantize"] {
            case(ty, op);
        }
    }
}

#[test]
fn f16_dequantize_matches_gguf_py() {
    check_dequantize(GgmlType::F16);
}

#[test]
fn bf16_dequantize_matches_gguf_py() {
    check_dequantize(GgmlType::BF16);
}

#[test]
fn q8_0_dequantize_matches_gguf_py() {
    check_dequantize(GgmlType::Q8_0);
}

#[test]
fn q4_0_dequantize_matches_gguf_py() {
    check_dequantize(GgmlType::Q4_0);
}

#[test]
fn q4_1_dequantize_matches_gguf_py() {
    check_dequantize(GgmlType::Q4_1);
}

#[test]
fn f16_quantize_matches_gguf_py() {
    check_quantize(GgmlType::F16);
}

#[test]
fn bf16_quantize_matches_gguf_py() {
    check_quantize(GgmlType::BF16);
}

#[test]
fn q8_0_quantize_matches_gguf_py() {
    check_quantize(GgmlType::Q8_0);
}

#[test]
fn q4_0_quantize_matches_gguf_py() {
    check_quantize(GgmlType::Q4_0);
}

#[test]
fn q4_1_quantize_matches_gguf_py() {
    check_quantize(GgmlType::Q4_1);
}

#[test]
fn vec_dot_on_fixture_rows_matches_f64_dot() {
    for ty in [
        GgmlType::F16,
        GgmlType::BF16,
        GgmlType::Q8_0,
        GgmlType::Q4_0,
        GgmlType::Q4_1,
    ] {
        check_vec_dot(ty);
    }
}
