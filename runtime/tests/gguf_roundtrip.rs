//! tern write → tern read round trips with seeded random content (every
//! value type, empty arrays, unicode, alignments, tensor types and shapes),
//! and `write_atomic`'s guarantees: an error leaves an existing destination
//! untouched and no temp file behind.

mod gguf_common;

use std::borrow::Cow;

use gguf_common::{Rng, TempDir};
use tern_runtime::gguf::{write_atomic, Array, GgufFile, GgufWriter, Value};
use tern_runtime::quants::GgmlType;
use tern_runtime::Error;

fn random_string(rng: &mut Rng) -> String {
    const PIECES: [&str; 10] = ["a", "Z", "_", ".", " ", "é", "日本", "🦀", "\n", "\u{0}"];
    let n = rng.below(12) as usize;
    (0..n).map(|_| PIECES[rng.below(10) as usize]).collect()
}

fn random_f32(rng: &mut Rng) -> f32 {
    // Any bit pattern, NaNs included: the format must carry them exactly.
    f32::from_bits(rng.next_u64() as u32)
}

fn random_f64(rng: &mut Rng) -> f64 {
    f64::from_bits(rng.next_u64())
}

fn random_array(rng: &mut Rng) -> Array {
    // Empty arrays are common enough to test on purpose.
    let n = if rng.chance(4) {
        0
    } else {
        rng.below(40) as usize
    };
    macro_rules! gen {
        ($f:expr) => {
            (0..n).map(|_| $f).collect()
        };
    }
    match rng.below(12) {
        0 => Array::U8(gen!(rng.next_u64() as u8)),
        1 => Array::I8(gen!(rng.next_u64() as i8)),
        2 => Array::U16(gen!(rng.next_u64() as u16)),
        3 => Array::I16(gen!(rng.next_u64() as i16)),
        4 => Array::U32(gen!(rng.next_u64() as u32)),
        5 => Array::I32(gen!(rng.next_u64() as i32)),
        6 => Array::F32(gen!(random_f32(rng))),
        7 => Array::Bool(gen!(rng.chance(2))),
        8 => Array::String(gen!(random_string(rng))),
        9 => Array::U64(gen!(rng.next_u64())),
        10 => Array::I64(gen!(rng.next_u64() as i64)),
        _ => Array::F64(gen!(random_f64(rng))),
    }
}

fn random_value(rng: &mut Rng) -> Value {
    match rng.below(13) {
        0 => Value::U8(rng.next_u64() as u8),
        1 => Value::I8(rng.next_u64() as i8),
        2 => Value::U16(rng.next_u64() as u16),
        3 => Value::I16(rng.next_u64() as i16),
        4 => Value::U32(rng.next_u64() as u32),
        5 => Value::I32(rng.next_u64() as i32),
        6 => Value::F32(random_f32(rng)),
        7 => Value::Bool(rng.chance(2)),
        8 => Value::String(random_string(rng)),
        9 => Value::U64(rng.next_u64()),
        10 => Value::I64(rng.next_u64() as i64),
        11 => Value::F64(random_f64(rng)),
        _ => Value::Array(random_array(rng)),
    }
}

/// Bitwise equality for values (NaN == NaN with the same bits).
fn same(a: &Value, b: &Value) -> bool {
    fn bits32(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }
    fn bits64(v: &[f64]) -> Vec<u64> {
        v.iter().map(|x| x.to_bits()).collect()
    }
    match (a, b) {
        (Value::F32(x), Value::F32(y)) => x.to_bits() == y.to_bits(),
        (Value::F64(x), Value::F64(y)) => x.to_bits() == y.to_bits(),
        (Value::Array(Array::F32(x)), Value::Array(Array::F32(y))) => bits32(x) == bits32(y),
        (Value::Array(Array::F64(x)), Value::Array(Array::F64(y))) => bits64(x) == bits64(y),
        _ => a == b,
    }
}

const TYPES: [GgmlType; 12] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::BF16,
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q4_K,
    GgmlType::Q6_K,
    GgmlType::I8,
    GgmlType::I16,
    GgmlType::I32,
    GgmlType::F64,
];

struct Tensor {
    name: String,
    ty: GgmlType,
    dims: Vec<u64>,
    data: Vec<u8>,
}

fn random_tensor(rng: &mut Rng, i: usize) -> Tensor {
    let ty = TYPES[rng.below(TYPES.len() as u64) as usize];
    let n_dims = 1 + rng.below(4) as usize;
    // dims[0] a whole number of blocks, the rest small; one tensor in five
    // has a zero dimension somewhere (an empty tensor).
    let mut dims = vec![ty.block_size() * (1 + rng.below(3))];
    for _ in 1..n_dims {
        dims.push(1 + rng.below(3));
    }
    if rng.chance(5) {
        let i = rng.below(n_dims as u64) as usize;
        dims[i] = 0;
    }
    let n: u64 = dims.iter().product();
    let bytes = (n / ty.block_size() * ty.type_size()) as usize;
    // Names up to the 63-byte limit.
    let mut name = format!("blk.{i}.t{}", rng.below(1000));
    if rng.chance(6) {
        name.push_str(&"x".repeat(63 - name.len()));
    }
    Tensor {
        name,
        ty,
        dims,
        data: rng.bytes(bytes),
    }
}

#[test]
fn random_round_trips() {
    let mut rng = Rng(0x6767_5546);
    for case in 0..300 {
        let mut w = GgufWriter::new();
        let mut kvs: Vec<(String, Value)> = Vec::new();
        let n_kv = rng.below(20) as usize;
        let align_at = if rng.chance(3) {
            Some(rng.below(n_kv as u64 + 1) as usize)
        } else {
            None
        };
        let alignment = [1u64, 2, 8, 16, 32, 64, 256, 4096][rng.below(8) as usize];
        for i in 0..=n_kv {
            if align_at == Some(i) {
                w.set_alignment(alignment).unwrap();
                kvs.push(("general.alignment".into(), Value::U32(alignment as u32)));
            }
            if i == n_kv {
                break;
            }
            let key = format!("k{i}.{}", random_string(&mut rng));
            let v = random_value(&mut rng);
            w.add_kv(key.clone(), v.clone()).unwrap();
            kvs.push((key, v));
        }
        let tensors: Vec<Tensor> = (0..rng.below(8) as usize)
            .map(|i| random_tensor(&mut rng, i))
            .collect();
        for t in &tensors {
            // Alternate borrowed and owned data.
            let data: Cow<[u8]> = if rng.chance(2) {
                Cow::Borrowed(&t.data)
            } else {
                Cow::Owned(t.data.clone())
            };
            w.add_tensor(t.name.clone(), t.ty, &t.dims, data).unwrap();
        }
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).unwrap();
        assert_eq!(bytes.len() as u64, w.file_len(), "case {case}");

        let check = |f: &GgufFile| {
            let expect_align = if align_at.is_some() { alignment } else { 32 };
            assert_eq!(f.alignment(), expect_align, "case {case}");
            assert_eq!(f.version(), 3);
            assert_eq!(f.metadata().len(), kvs.len());
            for ((k, v), (k2, v2)) in f.metadata().iter().zip(&kvs) {
                assert_eq!(k, k2, "case {case}");
                assert!(same(v, v2), "case {case} {k}: {v:?} != {v2:?}");
            }
            assert_eq!(f.tensors().len(), tensors.len());
            for (got, want) in f.tensors().iter().zip(&tensors) {
                assert_eq!(got.name, want.name);
                assert_eq!(got.ty, want.ty);
                assert_eq!(got.dims, want.dims);
                assert_eq!(got.n_bytes as usize, want.data.len());
                assert_eq!(f.tensor_data(got), want.data.as_slice(), "case {case}");
                assert_eq!((f.data_offset() + got.offset) % expect_align, 0);
            }
        };
        check(&GgufFile::from_bytes(bytes.clone()).unwrap());

        // Embedded after a random prefix: padding stays relative to the GGUF.
        let prefix_len = rng.below(100) as usize;
        let prefix = rng.bytes(prefix_len);
        let mut blob = prefix.clone();
        blob.extend(&bytes);
        check(&GgufFile::from_bytes_at(blob, prefix.len() as u64).unwrap());

        // Through a real file and the mmap path, every tenth case.
        if case % 10 == 0 {
            let dir = TempDir::new("gguf-rt");
            let path = dir.path().join("m.gguf");
            w.write_file(&path).unwrap();
            assert_eq!(std::fs::read(&path).unwrap(), bytes);
            check(&GgufFile::open(&path).unwrap());
        }
    }
}

#[test]
fn write_atomic_error_leaves_destination_untouched_and_no_temp() {
    let dir = TempDir::new("gguf-atomic");
    let dest = dir.path().join("model.gguf");
    std::fs::write(&dest, b"original contents").unwrap();

    let r = write_atomic(&dest, |w| {
        use std::io::Write;
        w.write_all(&[0xAB; 100_000]).unwrap();
        Err(Error::InvalidBatch("simulated failure".into()))
    });
    assert!(matches!(r, Err(Error::InvalidBatch(_))));
    assert_eq!(std::fs::read(&dest).unwrap(), b"original contents");
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("model.gguf")]);

    // Success replaces the file, again leaving nothing else behind.
    let mut w = GgufWriter::new();
    w.add_kv("general.architecture", Value::String("llama".into()))
        .unwrap();
    w.write_file(&dest).unwrap();
    let f = GgufFile::open(&dest).unwrap();
    assert_eq!(
        f.get("general.architecture").and_then(Value::as_str),
        Some("llama")
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn write_atomic_cleans_up_after_a_panic() {
    let dir = TempDir::new("gguf-atomic-panic");
    let dest = dir.path().join("model.gguf");
    std::fs::write(&dest, b"keep me").unwrap();
    let r = std::panic::catch_unwind(|| {
        let _ = write_atomic(&dest, |w| {
            use std::io::Write;
            w.write_all(b"partial").unwrap();
            panic!("writer bug");
        });
    });
    assert!(r.is_err());
    assert_eq!(std::fs::read(&dest).unwrap(), b"keep me");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn write_atomic_reports_io_errors_with_the_path() {
    let dir = TempDir::new("gguf-atomic-io");
    let dest = dir.path().join("no_such_dir").join("x.gguf");
    match write_atomic(&dest, |_| Ok(())) {
        Err(Error::Io { path, .. }) => assert!(path.starts_with(dir.path().join("no_such_dir"))),
        other => panic!("expected Io, got {other:?}"),
    }
    // Opening a missing file names it too.
    let missing = dir.path().join("missing.gguf");
    match GgufFile::open(&missing) {
        Err(Error::Io { path, .. }) => assert_eq!(path, missing),
        other => panic!("expected Io, got {:?}", other.map(|_| ())),
    }
    // An empty file is truncated, not an mmap error.
    let empty = dir.path().join("empty.gguf");
    std::fs::write(&empty, b"").unwrap();
    assert!(matches!(
        GgufFile::open(&empty),
        Err(Error::Truncated { .. })
    ));
}

#[test]
fn metadata_only_file_without_trailing_padding_is_accepted() {
    // A file with no tensors may end right after its last KV (llama.cpp
    // accepts this; gguf-py happens to pad).
    let mut w = GgufWriter::new();
    w.add_kv("a", Value::U8(1)).unwrap();
    let mut bytes = Vec::new();
    w.write_to(&mut bytes).unwrap();
    let unpadded = 4 + 4 + 8 + 8 + 8 + 1 + 4 + 1;
    assert!(bytes.len() > unpadded);
    let f = GgufFile::from_bytes(bytes[..unpadded].to_vec()).unwrap();
    assert_eq!(f.get("a"), Some(&Value::U8(1)));
}
