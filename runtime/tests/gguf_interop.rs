//! Interop with the reference writer: files written by gguf-py 0.19.0
//! (`scripts/fixtures/make_gguf_fixtures.py`) must read back exactly as the
//! JSON next to them says, and tern's writer, given the same KVs and tensors,
//! must produce the same bytes. Byte identity also proves gguf-py reads what
//! tern writes (the script checked these bytes with gguf-py's reader).

mod gguf_common;

use std::path::{Path, PathBuf};

use gguf_common::sha256_hex;
use serde_json::Value as J;
use tern_runtime::gguf::{Array, GgufFile, GgufWriter, Value};
use tern_runtime::quants::GgmlType;

const FIXTURES: [&str; 3] = ["interop", "interop_align64", "empty_arrays"];

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gguf")
}

fn load(name: &str) -> (Vec<u8>, J) {
    let dir = fixture_dir();
    let bytes = std::fs::read(dir.join(format!("{name}.gguf"))).unwrap();
    let text = std::fs::read_to_string(dir.join(format!("{name}.json"))).unwrap();
    (bytes, serde_json::from_str(&text).unwrap())
}

fn hex_bits(j: &J) -> u64 {
    let s = j.as_str().expect("float as hex bits");
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

fn int<T: TryFrom<i128>>(j: &J) -> T
where
    T::Error: std::fmt::Debug,
{
    let v: i128 = if let Some(u) = j.as_u64() {
        u as i128
    } else {
        j.as_i64().expect("integer") as i128
    };
    T::try_from(v).unwrap()
}

fn scalar(ty: &str, j: &J) -> Value {
    match ty {
        "u8" => Value::U8(int(j)),
        "i8" => Value::I8(int(j)),
        "u16" => Value::U16(int(j)),
        "i16" => Value::I16(int(j)),
        "u32" => Value::U32(int(j)),
        "i32" => Value::I32(int(j)),
        "u64" => Value::U64(int(j)),
        "i64" => Value::I64(int(j)),
        "f32" => Value::F32(f32::from_bits(hex_bits(j) as u32)),
        "f64" => Value::F64(f64::from_bits(hex_bits(j))),
        "bool" => Value::Bool(j.as_bool().unwrap()),
        "string" => Value::String(j.as_str().unwrap().to_owned()),
        other => panic!("unknown type {other}"),
    }
}

/// The Value a JSON KV entry describes.
fn json_value(kv: &J) -> Value {
    let ty = kv["type"].as_str().unwrap();
    if ty != "array" {
        return scalar(ty, &kv["value"]);
    }
    let elem = kv["element_type"].as_str().unwrap();
    let items = kv["value"].as_array().unwrap();
    macro_rules! arr {
        ($variant:ident) => {
            Array::$variant(
                items
                    .iter()
                    .map(|j| match scalar(elem, j) {
                        Value::$variant(x) => x,
                        _ => unreachable!(),
                    })
                    .collect(),
            )
        };
    }
    Value::Array(match elem {
        "u8" => arr!(U8),
        "i8" => arr!(I8),
        "u16" => arr!(U16),
        "i16" => arr!(I16),
        "u32" => arr!(U32),
        "i32" => arr!(I32),
        "u64" => arr!(U64),
        "i64" => arr!(I64),
        "f32" => arr!(F32),
        "f64" => arr!(F64),
        "bool" => arr!(Bool),
        "string" => arr!(String),
        other => panic!("unknown element type {other}"),
    })
}

/// Equality with floats compared by bit pattern, so NaN and -0.0 count.
fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(Array::F32(x)), Value::Array(Array::F32(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        }
        (Value::Array(Array::F64(x)), Value::Array(Array::F64(y))) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| p.to_bits() == q.to_bits())
        }
        _ => a == b,
    }
}

fn ggml_type(j: &J) -> GgmlType {
    let t = GgmlType::from_id(int(&j["type_id"])).unwrap();
    assert_eq!(t.name(), j["type"].as_str().unwrap());
    t
}

fn check_against_json(f: &GgufFile, desc: &J) {
    assert_eq!(f.version(), 3);
    assert_eq!(f.alignment(), desc["alignment"].as_u64().unwrap());
    assert_eq!(f.file_len(), desc["file_len"].as_u64().unwrap());

    let kvs = desc["kvs"].as_array().unwrap();
    assert_eq!(f.metadata().len(), kvs.len());
    for ((key, got), want) in f.metadata().iter().zip(kvs) {
        assert_eq!(key, want["key"].as_str().unwrap());
        let want_v = json_value(want);
        assert!(same(got, &want_v), "{key}: {got:?} != {want_v:?}");
        assert!(same(f.get(key).unwrap(), &want_v), "get({key})");
    }
    assert!(f.get("no.such.key").is_none());

    let tensors = desc["tensors"].as_array().unwrap();
    assert_eq!(f.tensors().len(), tensors.len());
    let align = f.alignment();
    let mut expected_offset = 0;
    for (t, want) in f.tensors().iter().zip(tensors) {
        let name = want["name"].as_str().unwrap();
        assert_eq!(t.name, name);
        assert_eq!(t.ty, ggml_type(want));
        let dims: Vec<u64> = want["dims"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap())
            .collect();
        assert_eq!(t.dims, dims, "{name}");
        assert_eq!(t.n_elements, dims.iter().product::<u64>());
        assert_eq!(t.n_bytes, want["n_bytes"].as_u64().unwrap(), "{name}");
        assert_eq!(t.offset, expected_offset, "{name}");
        expected_offset += t.n_bytes.div_ceil(align) * align;
        let data = f.tensor_data(t);
        assert_eq!(data.len() as u64, t.n_bytes);
        assert_eq!(sha256_hex(data), want["sha256"].as_str().unwrap(), "{name}");
        assert_eq!(f.tensor(name), Some(t));
        assert_eq!((f.data_offset() + t.offset) % align, 0);
    }
    assert!(f.tensor("no.such.tensor").is_none());
}

#[test]
fn fixture_files_match_their_recorded_digest() {
    for name in FIXTURES {
        let (bytes, desc) = load(name);
        assert_eq!(bytes.len() as u64, desc["file_len"].as_u64().unwrap());
        assert_eq!(
            sha256_hex(&bytes),
            desc["sha256"].as_str().unwrap(),
            "{name}"
        );
    }
}

#[test]
fn reads_gguf_py_files_via_mmap_and_bytes() {
    for name in FIXTURES {
        let (bytes, desc) = load(name);
        let path = fixture_dir().join(format!("{name}.gguf"));
        let mapped = GgufFile::open(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(mapped.path(), Some(path.as_path()));
        check_against_json(&mapped, &desc);
        let owned = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(owned.path(), None);
        check_against_json(&owned, &desc);
    }
}

#[test]
fn tern_writer_reproduces_gguf_py_bytes_exactly() {
    for name in FIXTURES {
        let (bytes, desc) = load(name);
        let datas: Vec<Vec<u8>> = desc["tensors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| hex(t["data_hex"].as_str().unwrap()))
            .collect();
        let mut w = GgufWriter::new();
        for kv in desc["kvs"].as_array().unwrap() {
            w.add_kv(kv["key"].as_str().unwrap(), json_value(kv))
                .unwrap();
        }
        for (t, data) in desc["tensors"].as_array().unwrap().iter().zip(&datas) {
            let dims: Vec<u64> = t["dims"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap())
                .collect();
            // Borrowed data: the writer must not need to copy weights.
            w.add_tensor(
                t["name"].as_str().unwrap(),
                ggml_type(t),
                &dims,
                data.as_slice(),
            )
            .unwrap();
        }
        let mut out = Vec::new();
        w.write_to(&mut out).unwrap();
        assert_eq!(w.file_len(), out.len() as u64);
        if out != bytes {
            let first = out.iter().zip(&bytes).position(|(a, b)| a != b);
            panic!(
                "{name}: tern wrote {} bytes, gguf-py {}; first difference at {first:?}",
                out.len(),
                bytes.len()
            );
        }
    }
}

fn hex(s: &str) -> Vec<u8> {
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
        .collect()
}
