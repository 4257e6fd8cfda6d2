//! Hostile GGUF files: one test group per class G1–G20 of
//! `shared/research/reliability.md` §6.1, each asserting the specific error
//! variant (and that the message names the key or tensor). Files are built
//! field by field with `gguf_common::FileSpec`, starting from a valid file
//! and breaking one thing.

mod gguf_common;

use std::fs::File;
use std::io::Write;
use std::time::Instant;

use gguf_common::*;
use tern_runtime::gguf::{GgufFile, Value};
use tern_runtime::Error;

/// Parse and return the error, failing the test if parsing succeeded.
fn err(bytes: Vec<u8>) -> Error {
    match GgufFile::from_bytes(bytes) {
        Err(e) => e,
        Ok(f) => panic!("expected an error, parsed {f:?}"),
    }
}

fn ok(bytes: Vec<u8>) -> GgufFile {
    GgufFile::from_bytes(bytes).unwrap_or_else(|e| panic!("expected Ok, got {e}"))
}

/// Assert the error matches a pattern; evaluates to its message.
macro_rules! expect {
    ($bytes:expr, $pat:pat $(if $guard:expr)?) => {{
        let e = err($bytes);
        assert!(
            matches!(e, $pat $(if $guard)?),
            "expected {}, got {e:?}",
            stringify!($pat)
        );
        e.to_string()
    }};
}

/// Errors that mean "the bytes ran out" in some field.
fn is_ran_out(e: &Error) -> bool {
    matches!(
        e,
        Error::Truncated { .. }
            | Error::CountTooLarge { .. }
            | Error::StringTooLong { .. }
            | Error::ArrayTooLarge { .. }
            | Error::TensorOutOfBounds { .. }
    )
}

fn with_kvs(kvs: Vec<Vec<u8>>) -> FileSpec {
    let mut f = FileSpec::empty();
    f.kvs = kvs;
    f
}

fn with_tensors(tensors: Vec<TensorSpec>) -> FileSpec {
    let mut f = FileSpec::empty();
    f.tensors = tensors;
    f.fix_offsets();
    f
}

#[test]
fn valid_generator_file_parses() {
    let f = ok(FileSpec::valid().build());
    assert_eq!(f.tensors().len(), 2);
    assert_eq!(f.get("llama.block_count"), Some(&Value::U32(1)));
    let q = f.tensor("blk.0.attn_q.weight").unwrap();
    assert_eq!((q.offset, q.n_bytes, q.n_elements), (32, 68, 64));
}

// ---- G1: truncation -----------------------------------------------------------

#[test]
fn g1_tiny_files_are_truncated() {
    let full = FileSpec::valid().build();
    for n in [0, 1, 3, 4, 7, 8] {
        let e = err(full[..n].to_vec());
        assert!(matches!(e, Error::Truncated { .. }), "{n} bytes: {e:?}");
    }
    let msg = expect!(b"GGUF".to_vec(), Error::Truncated { ref what, offset: 4, needed: 4, available: 0 } if what == "version");
    assert!(msg.contains("version"));
}

#[test]
fn g1_truncation_names_the_field() {
    let f = FileSpec::valid();
    let header = f.header_bytes();
    // Cut inside the second tensor's dims (its info is the last 59 bytes:
    // name 8+19, n_dims 4, then dims).
    let dims_at = header.len() - 59 + 8 + 19 + 4;
    let msg = expect!(header[..dims_at + 3].to_vec(), Error::Truncated { ref what, .. } if what == "tensor 'blk.0.attn_q.weight' dims");
    assert!(msg.contains("blk.0.attn_q.weight"));
    // Cut inside the u32 value of the second KV.
    let mut g = FileSpec::empty();
    g.kvs.push(kv_u32("llama.block_count", 7));
    let b = g.header_bytes();
    expect!(b[..b.len() - 1].to_vec(), Error::Truncated { ref what, .. } if what == "metadata key 'llama.block_count' value");
}

/// Every prefix of a file must be an error until the last tensor's data is
/// complete, and Ok from there on (gguf-py pads after the last tensor, but
/// the padding is not required).
fn sweep(full: &[u8]) -> usize {
    let f = ok(full.to_vec());
    let last = f.tensors().last().unwrap();
    let needed = (f.data_offset() + last.offset + last.n_bytes) as usize;
    let mut errors = 0;
    for n in 0..=full.len() {
        match GgufFile::from_bytes(full[..n].to_vec()) {
            Err(e) => {
                assert!(n < needed, "prefix {n} >= {needed} failed: {e}");
                assert!(is_ran_out(&e), "prefix {n}: unexpected {e:?}");
                errors += 1;
            }
            Ok(_) => assert!(n >= needed, "prefix {n} < {needed} parsed"),
        }
    }
    errors
}

#[test]
fn g1_exhaustive_prefix_sweep_of_gguf_py_fixture() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gguf/interop.gguf"
    );
    let full = std::fs::read(path).unwrap();
    assert!(full.len() >= 2000, "fixture should be ~2 KB");
    let errors = sweep(&full);
    assert!(errors > 2000);
}

#[test]
fn g1_exhaustive_prefix_sweep_of_generated_file() {
    sweep(&FileSpec::valid().build());
}

// ---- G2: magic and endianness ------------------------------------------------

#[test]
fn g2_bad_magic() {
    for magic in [*b"FUGG", *b"gguf", [0; 4]] {
        let mut f = FileSpec::valid();
        f.magic = magic;
        expect!(f.build(), Error::BadMagic(m) if m == magic);
    }
}

#[test]
fn g2_byte_swapped_file_is_big_endian() {
    // A big-endian writer keeps the magic bytes but swaps every integer.
    let mut b = b"GGUF".to_vec();
    b.extend(3u32.to_be_bytes());
    b.extend(0u64.to_be_bytes());
    b.extend(1u64.to_be_bytes());
    b.extend(kv_u32("a", 1));
    let msg = expect!(b, Error::UnsupportedEndianness(0x0300_0000));
    assert!(msg.contains("big-endian"));
}

// ---- G3: versions ------------------------------------------------------------

#[test]
fn g3_versions() {
    for v in [0u32, 1, 4, 5, 0xFFFF, u32::MAX] {
        let mut f = FileSpec::valid();
        f.version = v;
        expect!(f.build(), Error::UnsupportedVersion(x) if x == v);
    }
    // Policy (brief): a zero low half means a byte-swapped file, so
    // 0x03000000 reports endianness rather than "version 50331648".
    for v in [0x0300_0000u32, 0x0001_0000] {
        let mut f = FileSpec::valid();
        f.version = v;
        expect!(f.build(), Error::UnsupportedEndianness(x) if x == v);
    }
    // Version 2 has the same layout as 3 and is accepted.
    let mut f = FileSpec::valid();
    f.version = 2;
    assert_eq!(ok(f.build()).version(), 2);
}

// ---- G4: counts ----------------------------------------------------------------

#[test]
fn g4_huge_counts_are_rejected_before_allocating() {
    for count in [1u64 << 63, u64::MAX, i64::MAX as u64, 1 << 40] {
        let mut f = FileSpec::valid();
        f.n_tensors = Some(count);
        expect!(f.build(), Error::CountTooLarge { what: "tensor", count: c, .. } if c == count);
        let mut f = FileSpec::valid();
        f.n_kv = Some(count);
        expect!(f.build(), Error::CountTooLarge { what: "metadata", count: c, .. } if c == count);
    }
}

#[test]
fn g4_count_just_over_what_the_file_holds() {
    let f = FileSpec::valid();
    let rest = f.build().len() as u64 - 24;
    // A tensor info takes at least 25 bytes, a KV at least 14.
    let mut g = f.clone();
    g.n_tensors = Some(rest / 25 + 1);
    let msg = expect!(g.build(), Error::CountTooLarge { what: "tensor", limit, .. } if limit == rest / 25);
    assert!(msg.contains("tensor count"));
    let mut g = f.clone();
    g.n_kv = Some((rest - 2 * 25) / 14 + 1);
    expect!(
        g.build(),
        Error::CountTooLarge {
            what: "metadata",
            ..
        }
    );
    // At the limit the count check passes; parsing then fails on the
    // fields themselves, still without panicking or over-allocating.
    let mut g = f;
    g.n_kv = Some((rest - 2 * 25) / 14);
    assert!(GgufFile::from_bytes(g.build()).is_err());
}

// ---- G5: string lengths -------------------------------------------------------

fn raw_kv_with_key_len(len: u64) -> Vec<u8> {
    let mut k = u64le(len);
    k.extend(b"key");
    k.extend(u32le(T_U8));
    k.push(0);
    k
}

#[test]
fn g5_string_lengths() {
    let base = FileSpec::valid();
    let remaining_after_len = |f: &FileSpec, kv_index: usize| {
        let before: usize = 24 + f.kvs[..kv_index].iter().map(Vec::len).sum::<usize>();
        (f.build().len() - before - 8) as u64
    };
    // Key lengths.
    for len in [u64::MAX, 1 << 63] {
        let mut f = base.clone();
        f.kvs.insert(0, raw_kv_with_key_len(len));
        expect!(f.build(), Error::StringTooLong { ref what, len: l, .. } if what == "metadata key 0" && l == len);
    }
    let mut f = base.clone();
    f.kvs.insert(0, raw_kv_with_key_len(0));
    let rem = remaining_after_len(&f, 0);
    f.kvs[0] = raw_kv_with_key_len(rem + 1);
    expect!(f.build(), Error::StringTooLong { len, limit, .. } if len == rem + 1 && limit == rem);
    // Value lengths.
    for len in [u64::MAX, 1 << 63] {
        let mut f = base.clone();
        let mut p = u64le(len);
        p.extend(b"abc");
        f.kvs.push(kv(b"general.name", T_STRING, &p));
        let msg = expect!(f.build(), Error::StringTooLong { ref what, .. } if what == "metadata key 'general.name' value");
        assert!(msg.contains("general.name"));
    }
    // Tensor name lengths.
    for len in [u64::MAX, 1 << 63] {
        let mut f = base.clone();
        f.tensors[1].name = b"x".to_vec();
        let mut b = f.header_bytes();
        // Patch the second tensor's name length field.
        let at = b.len() - (8 + 1 + 4 + 16 + 4 + 8);
        b[at..at + 8].copy_from_slice(&len.to_le_bytes());
        b.resize(b.len() + 200, 0);
        expect!(b, Error::StringTooLong { ref what, .. } if what == "tensor 1 name");
    }
}

#[test]
fn g5_key_length_limit_is_65535() {
    let key = "k".repeat(65_535);
    ok(with_kvs(vec![kv_u32(&key, 1)]).build());
    let key = "k".repeat(65_536);
    let msg = expect!(
        with_kvs(vec![kv_u32(&key, 1)]).build(),
        Error::BadKey { .. }
    );
    assert!(msg.contains("65536"));
}

/// Strings and arrays just over the 1 GiB caps need more than 1 GiB of file
/// behind them to reach the cap check; a sparse file costs no disk.
#[test]
fn g5_g8_caps_over_one_gib_in_a_sparse_file() {
    let dir = TempDir::new("gguf-cap");
    let cap = 1u64 << 30;
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("string", {
            let mut p = u64le(cap + 1);
            p.extend(b"x");
            kv(b"big.string", T_STRING, &p)
        }),
        ("array", kv_arr("big.array", T_U8, cap + 1, b"x")),
    ];
    for (name, kvb) in cases {
        let path = dir.path().join(format!("{name}.gguf"));
        let mut file = File::create(&path).unwrap();
        file.write_all(&with_kvs(vec![kvb]).header_bytes()).unwrap();
        file.set_len(cap + 4096).unwrap();
        drop(file);
        let e = GgufFile::open(&path).unwrap_err();
        match (name, &e) {
            ("string", Error::StringTooLong { len, limit, .. }) => {
                assert_eq!((*len, *limit), (cap + 1, cap))
            }
            ("array", Error::ArrayTooLarge { key, count, limit }) => {
                assert_eq!((key.as_str(), *count, *limit), ("big.array", cap + 1, cap))
            }
            _ => panic!("{name}: unexpected {e:?}"),
        }
    }
}

// ---- G6: keys ------------------------------------------------------------------

#[test]
fn g6_keys() {
    let msg = expect!(
        with_kvs(vec![kv(b"", T_U8, &[1])]).build(),
        Error::BadKey { .. }
    );
    assert!(msg.contains("empty"));
    let msg = expect!(
        with_kvs(vec![kv_str("general.architecture", "a"), kv_str("general.architecture", "b")]).build(),
        Error::DuplicateKey(ref k) if k == "general.architecture"
    );
    assert!(msg.contains("general.architecture"));
    expect!(
        with_kvs(vec![kv_u32("general.alignment", 32), kv_u32("general.alignment", 64)]).build(),
        Error::DuplicateKey(ref k) if k == "general.alignment"
    );
    expect!(with_kvs(vec![kv(b"bad\xff", T_U8, &[1])]).build(), Error::InvalidUtf8 { ref what, .. } if what == "metadata key 0");
    // Policy: keys that break the spec's lower_snake.case convention are
    // accepted (real files have them); only emptiness, length, UTF-8 and
    // uniqueness are enforced.
    let f = ok(with_kvs(vec![kv_u32("Weird Key!", 1), kv_u32("ключ.ü", 2)]).build());
    assert_eq!(f.get("ключ.ü"), Some(&Value::U32(2)));
}

#[test]
fn g6_string_values_must_be_utf8() {
    let msg = expect!(
        with_kvs(vec![kv(b"general.name", T_STRING, &gstr(b"\xc3\x28"))]).build(),
        Error::InvalidUtf8 { ref what, .. } if what.contains("general.name")
    );
    assert!(msg.contains("general.name"));
    let mut elems = gstr(b"ok");
    elems.extend(gstr(b"\xff"));
    expect!(
        with_kvs(vec![kv_arr("tokenizer.ggml.tokens", T_STRING, 2, &elems)]).build(),
        Error::InvalidUtf8 { ref what, .. } if what == "metadata key 'tokenizer.ggml.tokens' element 1"
    );
}

// ---- G7: value types and nesting ---------------------------------------------

#[test]
fn g7_bad_value_types() {
    for t in [13u32, 14, 0xFFFF_FFFF] {
        let msg = expect!(
            with_kvs(vec![kv(b"x.key", t, &[0; 16])]).build(),
            Error::BadValueType { ref key, type_id } if key == "x.key" && type_id == t
        );
        assert!(msg.contains("x.key"));
        expect!(
            with_kvs(vec![kv_arr("x.arr", t, 1, &[0; 16])]).build(),
            Error::BadValueType { ref key, type_id } if key == "x.arr" && type_id == t
        );
    }
}

#[test]
fn g7_nested_arrays_are_rejected_without_recursion() {
    for depth in [1usize, 2, 10_000] {
        let mut p = Vec::new();
        for _ in 0..depth {
            p.extend(u32le(T_ARRAY));
            p.extend(u64le(1));
        }
        p.extend(u32le(T_U8));
        p.extend(u64le(1));
        p.push(7);
        let msg = expect!(
            with_kvs(vec![kv(b"nested", T_ARRAY, &p)]).build(),
            Error::NestedArray { ref key } if key == "nested"
        );
        assert!(msg.contains("nested"));
    }
}

// ---- G8: array counts ----------------------------------------------------------

#[test]
fn g8_array_counts() {
    for count in [u64::MAX, 1 << 63, 0x2000_0000_0000_0001] {
        for elem in [T_U8, T_U32, T_U64, T_STRING, T_BOOL] {
            expect!(
                with_kvs(vec![kv_arr("a", elem, count, &[0; 64])]).build(),
                Error::ArrayTooLarge { ref key, count: c, .. } if key == "a" && c == count
            );
        }
    }
    // count x element size is one more element than the rest of the file.
    let f = with_kvs(vec![kv_arr("a.u32", T_U32, 3, &[0; 8])]);
    expect!(
        f.header_bytes(),
        Error::ArrayTooLarge {
            count: 3,
            limit: 2,
            ..
        }
    );
    // Strings: each element needs at least its 8-byte length.
    let f = with_kvs(vec![kv_arr("a.str", T_STRING, 3, &[0; 16])]);
    expect!(
        f.header_bytes(),
        Error::ArrayTooLarge {
            count: 3,
            limit: 2,
            ..
        }
    );
}

#[test]
fn g8_string_array_elements_claiming_2_pow_63() {
    let mut elems = Vec::new();
    for _ in 0..4 {
        elems.extend(u64le(1 << 63));
    }
    let msg = expect!(
        with_kvs(vec![kv_arr("tokenizer.ggml.tokens", T_STRING, 4, &elems)]).build(),
        Error::StringTooLong { ref what, len, .. } if what == "metadata key 'tokenizer.ggml.tokens' element 0" && len == 1 << 63
    );
    assert!(msg.contains("tokenizer.ggml.tokens"));
}

// ---- G9: bools ---------------------------------------------------------------

#[test]
fn g9_bools_must_be_0_or_1() {
    for b in [2u8, 0xFF] {
        let msg = expect!(
            with_kvs(vec![kv(b"flag", T_BOOL, &[b])]).build(),
            Error::InvalidBool { ref key, value } if key == "flag" && value == b
        );
        assert!(msg.contains("flag"));
        expect!(
            with_kvs(vec![kv_arr("flags", T_BOOL, 3, &[1, 0, b])]).build(),
            Error::InvalidBool { ref key, value } if key == "flags" && value == b
        );
    }
    let f = ok(with_kvs(vec![kv(b"t", T_BOOL, &[1]), kv(b"f", T_BOOL, &[0])]).build());
    assert_eq!(f.get("t"), Some(&Value::Bool(true)));
    assert_eq!(f.get("f"), Some(&Value::Bool(false)));
}

// ---- G10: alignment --------------------------------------------------------------

#[test]
fn g10_alignment_of_the_wrong_type() {
    let cases = [
        kv(b"general.alignment", T_I32, &32i32.to_le_bytes()),
        kv(b"general.alignment", T_U64, &32u64.to_le_bytes()),
        kv(b"general.alignment", T_F32, &32f32.to_le_bytes()),
        kv_str("general.alignment", "32"),
        kv(b"general.alignment", T_U16, &32u16.to_le_bytes()),
    ];
    for c in cases {
        let mut f = FileSpec::valid();
        f.kvs.push(c);
        let msg = expect!(f.build(), Error::BadAlignment(ref r) if r.contains("must be u32"));
        assert!(msg.contains("general.alignment"));
    }
}

#[test]
fn g10_alignment_values() {
    for a in [0u32, 3, 13, 1 << 31, u32::MAX, 1 << 21, 96] {
        let mut f = FileSpec::valid();
        f.kvs.push(kv_u32("general.alignment", a));
        expect!(f.build(), Error::BadAlignment(_));
    }
    for a in [1u32, 8, 64, 4096, 1 << 20] {
        let mut f = FileSpec::valid();
        f.kvs.push(kv_u32("general.alignment", a));
        f.align = a as u64;
        f.fix_offsets();
        let g = ok(f.build());
        assert_eq!(g.alignment(), a as u64);
        assert_eq!(g.data_offset() % a as u64, 0);
    }
}

// ---- G11: tensor names --------------------------------------------------------

#[test]
fn g11_tensor_names() {
    let n63 = "n".repeat(63);
    let f = ok(with_tensors(vec![TensorSpec::new(&n63, G_F32, &[1])]).build());
    assert!(f.tensor(&n63).is_some());
    let n64 = "n".repeat(64);
    let msg = expect!(
        with_tensors(vec![TensorSpec::new(&n64, G_F32, &[1])]).build(),
        Error::BadTensorName { .. }
    );
    assert!(msg.contains("64 bytes"));
    let msg = expect!(
        with_tensors(vec![TensorSpec::new("", G_F32, &[1])]).build(),
        Error::BadTensorName { .. }
    );
    assert!(msg.contains("empty"));
    let msg = expect!(
        with_tensors(vec![TensorSpec::new("w", G_F32, &[1]), TensorSpec::new("w", G_F32, &[1])]).build(),
        Error::DuplicateTensor(ref n) if n == "w"
    );
    assert!(msg.contains("'w'"));
    let mut t = TensorSpec::new("x", G_F32, &[1]);
    t.name = b"bad\xffname".to_vec();
    let msg = expect!(with_tensors(vec![t]).build(), Error::BadTensorName { .. });
    assert!(msg.contains("UTF-8"));
}

// ---- G12: n_dims ---------------------------------------------------------------

#[test]
fn g12_n_dims() {
    // n_dims 0 is a scalar: one element, dims [1].
    let mut t = TensorSpec::new("scalar", G_F32, &[]);
    t.n_dims = 0;
    let mut f = with_tensors(vec![t, TensorSpec::new("after", G_F32, &[2])]);
    f.tensors[1].offset = 32;
    f.data_len = Some(64);
    let g = ok(f.build());
    let s = g.tensor("scalar").unwrap();
    assert_eq!(
        (s.dims.as_slice(), s.n_elements, s.n_bytes),
        (&[1u64][..], 1, 4)
    );
    assert_eq!(g.tensor_data(s).len(), 4);

    for n in [5u32, 8, u32::MAX] {
        let mut t = TensorSpec::new("blk.0.ffn_up.weight", G_F32, &[1, 1, 1, 1]);
        t.n_dims = n;
        let msg = expect!(
            with_tensors(vec![t.clone()]).build(),
            Error::TooManyDims { ref tensor, n_dims } if tensor == "blk.0.ffn_up.weight" && n_dims == n
        );
        assert!(msg.contains("blk.0.ffn_up.weight"));
        // Rejected before any dim is read: the file may end right there.
        let mut b = with_tensors(vec![t]).header_bytes();
        b.truncate(b.len() - (4 * 8 + 4 + 8));
        b.extend([0; 60]); // enough that the header counts pass
        expect!(b, Error::TooManyDims { .. });
    }
}

// ---- G13: shapes --------------------------------------------------------------

#[test]
fn g13_negative_dim() {
    let mut f = with_tensors(vec![TensorSpec::new("neg", G_F32, &[4, (-1i64) as u64])]);
    f.data_len = Some(0);
    let msg = expect!(
        f.build(),
        Error::BadShape { ref tensor, .. } if tensor == "neg"
    );
    assert!(msg.contains("-1"));
}

#[test]
fn g13_zero_dim_is_an_empty_tensor() {
    let f = with_tensors(vec![
        TensorSpec::new("empty", G_F32, &[0, 3]),
        TensorSpec::new("empty_q", G_Q4_0, &[32, 0]),
        TensorSpec::new("empty_q0", G_Q4_0, &[0, 7]),
        TensorSpec::new("after", G_F32, &[2]),
    ]);
    let g = ok(f.build());
    for name in ["empty", "empty_q", "empty_q0"] {
        let t = g.tensor(name).unwrap();
        assert_eq!((t.n_elements, t.n_bytes, t.offset), (0, 0, 0), "{name}");
        assert!(g.tensor_data(t).is_empty());
    }
    assert_eq!(g.tensor("after").unwrap().offset, 0);
}

#[test]
fn g13_size_overflows() {
    let cases: [(&str, u32, &[u64]); 6] = [
        // 2^62 F32 elements: 2^64 bytes.
        ("f32_2p62", G_F32, &[1 << 62]),
        // Element count over i64::MAX.
        ("ne_2p63", G_I8, &[1 << 62, 2]),
        // Element count overflows u64.
        ("ne_wrap", G_I8, &[1 << 32, 1 << 32]),
        ("ne_wrap4", G_F32, &[1 << 16, 1 << 16, 1 << 16, 1 << 16]),
        // Byte size overflows u64 (I64: 8 bytes an element).
        ("nbytes_i64", G_I64, &[1 << 61]),
        // Byte size over i64::MAX with a quant whose block grows (Q8_K 256 -> 292).
        ("nbytes_q8k", G_Q8_K, &[0x7FFF_FFFF_FFFF_FF00]),
    ];
    for (name, ty, dims) in cases {
        let mut f = FileSpec::empty();
        f.tensors.push(TensorSpec::new(name, ty, dims));
        f.data_len = Some(0);
        let msg = expect!(f.build(), Error::SizeOverflow { ref tensor, .. } if tensor == name);
        assert!(msg.contains(name));
    }
    // 2^62 I8 elements is a valid shape; the data just is not there.
    let mut f = FileSpec::empty();
    f.tensors.push(TensorSpec::new("i8_2p62", G_I8, &[1 << 62]));
    f.data_len = Some(0);
    expect!(f.build(), Error::TensorOutOfBounds { ref tensor, .. } if tensor == "i8_2p62");
}

#[test]
fn g13_ne0_not_a_multiple_of_the_block() {
    for d0 in [1u64, 31, 33, 48] {
        let mut f = FileSpec::empty();
        f.tensors.push(TensorSpec::new("q", G_Q4_0, &[d0, 2]));
        f.data_len = Some(0);
        let msg = expect!(f.build(), Error::BadShape { ref tensor, .. } if tensor == "q");
        assert!(msg.contains("block size 32"));
    }
}

// ---- G14: tensor types --------------------------------------------------------

#[test]
fn g14_unknown_and_removed_types() {
    for id in [4u32, 5, 31, 32, 33, 36, 37, 38, 42, 1000, 0xFFFF_FFFF] {
        let mut f = FileSpec::valid();
        f.tensors[1].ty = id;
        let msg = expect!(
            f.build(),
            Error::UnknownType { ref tensor, id: i } if tensor == "blk.0.attn_q.weight" && i == id
        );
        assert!(msg.contains("blk.0.attn_q.weight"));
    }
}

// ---- G15: offsets --------------------------------------------------------------

fn offset_err(first: u64, second: u64) -> Error {
    let mut f = FileSpec::valid();
    f.tensors[0].offset = first;
    f.tensors[1].offset = second;
    err(f.build())
}

#[test]
fn g15_offsets() {
    let q = "blk.0.attn_q.weight";
    let check = |e: Error, tensor: &str, offset: u64, expected: u64, why: &str| match e {
        Error::BadOffset {
            tensor: t,
            offset: o,
            expected: x,
            reason,
        } => {
            assert_eq!((t.as_str(), o, x), (tensor, offset, expected));
            assert!(reason.contains(why), "{reason}");
        }
        e => panic!("expected BadOffset, got {e:?}"),
    };
    // Unaligned.
    check(offset_err(1, 32), "token_embd.weight", 1, 0, "alignment");
    check(offset_err(0, 33), q, 33, 32, "alignment");
    check(offset_err(0, u64::MAX), q, u64::MAX, 32, "alignment");
    // Overlapping the previous tensor.
    check(offset_err(0, 0), q, 0, 32, "overlaps");
    // Out of order: the first tensor's data placed after the second's.
    check(offset_err(96, 0), "token_embd.weight", 96, 0, "gap");
    // A gap.
    check(offset_err(0, 64), q, 64, 32, "gap");
    // Past the end of the file, and an offset whose end would wrap.
    check(offset_err(0, 1 << 40), q, 1 << 40, 32, "gap");
    check(
        offset_err(0, 0xFFFF_FFFF_FFFF_FFE0),
        q,
        0xFFFF_FFFF_FFFF_FFE0,
        32,
        "gap",
    );
    let msg = offset_err(0, 64).to_string();
    assert!(msg.contains(q) && msg.contains("64") && msg.contains("32"));
}

// ---- G16: total size overflow --------------------------------------------------

#[test]
fn g16_cve_2025_53630_sum_of_padded_sizes() {
    // Two I8 tensors of 0x7FFFFFFFFFFFFFC0 bytes each: each is valid, the sum
    // is past i64::MAX (llama.cpp's ctx->size wrapped).
    let n = 0x7FFF_FFFF_FFFF_FFC0;
    let mut f = FileSpec::empty();
    f.tensors.push(TensorSpec::new("a", G_I8, &[n]));
    f.tensors.push(TensorSpec::new("b", G_I8, &[n]));
    f.tensors[1].offset = n;
    f.data_len = Some(0);
    let msg = expect!(f.build(), Error::SizeOverflow { ref tensor, .. } if tensor == "b");
    assert!(msg.contains("running total"));
}

#[test]
fn g16_cve_2026_27940_total_plus_overhead() {
    // The bypass of the 53630 fix: a total just under 2^64 passes a u64
    // check, and llama.cpp's `overhead + size` then wrapped.
    let (a, b) = (0x7FFF_FFFF_FFFF_FFC0u64, 0x7FFF_FFFF_FFFF_FF00u64);
    let mut f = FileSpec::empty();
    f.tensors.push(TensorSpec::new("a", G_I8, &[a]));
    f.tensors.push(TensorSpec::new("b", G_I8, &[b]));
    f.tensors[1].offset = a;
    f.data_len = Some(0);
    expect!(f.build(), Error::SizeOverflow { ref tensor, .. } if tensor == "b");
}

#[test]
fn g16_nbytes_near_u64_max_where_padding_wraps() {
    // 0x3FFF_FFFF_FFFF_FFFF F32 elements = u64::MAX - 3 bytes: GGML_PAD
    // rounds it to 0.
    let mut f = FileSpec::empty();
    f.tensors
        .push(TensorSpec::new("pad_wrap", G_F32, &[0x3FFF_FFFF_FFFF_FFFF]));
    f.data_len = Some(0);
    expect!(f.build(), Error::SizeOverflow { ref tensor, .. } if tensor == "pad_wrap");
    // Just under i64::MAX: the size fits but padding it to 32 does not.
    let mut f = FileSpec::empty();
    f.tensors
        .push(TensorSpec::new("pad_over", G_I8, &[i64::MAX as u64 - 3]));
    f.data_len = Some(0);
    let msg = expect!(f.build(), Error::SizeOverflow { ref tensor, .. } if tensor == "pad_over");
    assert!(msg.contains("padded"));
}

// ---- G17: file length -------------------------------------------------------------

#[test]
fn g17_one_byte_short_and_exactly_enough() {
    let f = FileSpec::valid();
    let full = f.build();
    let end = (f.data_offset() + 32 + 68) as usize;
    let msg = expect!(
        full[..end - 1].to_vec(),
        Error::TensorOutOfBounds { ref tensor, end: e, file_len } if tensor == "blk.0.attn_q.weight" && e == end as u64 && file_len == end as u64 - 1
    );
    assert!(msg.contains("blk.0.attn_q.weight") && msg.contains("truncated"));
    ok(full[..end].to_vec());
}

#[test]
fn g17_trailing_garbage_is_accepted() {
    let mut b = FileSpec::valid().build();
    let plain = ok(b.clone());
    b.extend(Rng(5).bytes(1000));
    let g = ok(b);
    assert_eq!(g.tensors(), plain.tensors());
    for t in g.tensors() {
        assert_eq!(g.tensor_data(t), plain.tensor_data(t));
    }
}

#[test]
fn g17_gguf_embedded_at_offset_7() {
    let f = FileSpec::valid();
    let inner = f.build();
    let mut blob = b"PREFIX!".to_vec();
    blob.extend(&inner);
    // Parsed from the blob's start it is not a GGUF.
    expect!(blob.clone(), Error::BadMagic(_));
    let plain = ok(inner);
    let g = GgufFile::from_bytes_at(blob.clone(), 7).unwrap();
    // Padding is relative to the GGUF start, so the data offset is the
    // same as for the standalone file (not rounded from the blob start).
    assert_eq!(g.data_offset(), plain.data_offset());
    assert_eq!(g.file_len(), plain.file_len());
    for t in g.tensors() {
        assert_eq!(g.tensor_data(t), plain.tensor_data(t), "{}", t.name);
    }
    // The same through a mapped file.
    let dir = TempDir::new("gguf-embedded");
    let path = dir.path().join("blob.bin");
    std::fs::write(&path, &blob).unwrap();
    let m = GgufFile::open_at(&path, 7).unwrap();
    for t in m.tensors() {
        assert_eq!(m.tensor_data(t), plain.tensor_data(t));
    }
    // A start past the end is an error, not a panic.
    assert!(matches!(
        GgufFile::from_bytes_at(blob.clone(), blob.len() as u64 + 1),
        Err(Error::Truncated { .. })
    ));
    assert!(GgufFile::from_bytes_at(blob.clone(), u64::MAX).is_err());
}

// ---- G18: a huge sparse file ------------------------------------------------------

#[test]
fn g18_sixteen_gib_sparse_file_opens_without_reading_data() {
    let dir = TempDir::new("gguf-sparse");
    let path = dir.path().join("big.gguf");
    let big: u64 = 16 << 30;
    let mut f = FileSpec::empty();
    f.kvs.push(kv_str("general.architecture", "llama"));
    f.tensors.push(TensorSpec::new("small", G_F32, &[4]));
    f.tensors.push(TensorSpec::new("big", G_I8, &[big]));
    f.fix_offsets();
    f.data_len = Some(32);
    let head = f.build();
    let total = f.data_offset() + 32 + big;
    let mut file = File::create(&path).unwrap();
    file.write_all(&head).unwrap();
    file.set_len(total).unwrap();
    drop(file);

    let t0 = Instant::now();
    let g = GgufFile::open(&path).unwrap();
    let elapsed = t0.elapsed();
    assert!(elapsed.as_secs_f64() < 2.0, "open took {elapsed:?}");
    let t = g.tensor("big").unwrap();
    assert_eq!(t.n_bytes, big);
    let data = g.tensor_data(t);
    assert_eq!(data.len() as u64, big);
    // Touch one page at the end only: the hole reads as zeros.
    assert_eq!(data[data.len() - 1], 0);
    assert_eq!(g.file_len(), total);

    // One byte short of the 16 GiB tensor.
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(total - 1).unwrap();
    drop(file);
    let e = GgufFile::open(&path).unwrap_err();
    assert!(
        matches!(e, Error::TensorOutOfBounds { ref tensor, end, file_len } if tensor == "big" && end == total && file_len == total - 1),
        "{e:?}"
    );
}

// ---- G19: split models ------------------------------------------------------------

#[test]
fn g19_split_models_are_reported() {
    let mut f = FileSpec::valid();
    f.kvs.push(kv(b"split.no", T_U16, &1u16.to_le_bytes()));
    f.kvs.push(kv(b"split.count", T_U16, &3u16.to_le_bytes()));
    let msg = expect!(f.build(), Error::ShardedModel { index: 1, count: 3 });
    assert!(msg.contains("merge"));
    // Any integer type; split.no defaults to 0.
    let mut f = FileSpec::valid();
    f.kvs.push(kv(b"split.count", T_I32, &3i32.to_le_bytes()));
    expect!(f.build(), Error::ShardedModel { index: 0, count: 3 });
    // A "split" of one file is just a file.
    let mut f = FileSpec::valid();
    f.kvs.push(kv(b"split.count", T_U16, &1u16.to_le_bytes()));
    ok(f.build());
}

// ---- G20: regression shapes for every CVE PoC in reliability.md §1.1 ---------

#[test]
fn g20_talos_cve_2024_23605_huge_n_kv() {
    let mut f = FileSpec::valid();
    f.n_kv = Some(0x1000_0000_0000_0000);
    expect!(
        f.build(),
        Error::CountTooLarge {
            what: "metadata",
            ..
        }
    );
}

#[test]
fn g20_talos_cve_2024_21836_huge_n_tensors() {
    let mut f = FileSpec::valid();
    f.n_tensors = Some(0x0AAA_AAAA_AAAA_AAAB); // x sizeof(entry) wraps in C
    expect!(f.build(), Error::CountTooLarge { what: "tensor", .. });
}

#[test]
fn g20_talos_cve_2024_23496_string_len_size_max() {
    let mut f = FileSpec::valid();
    f.kvs.insert(0, raw_kv_with_key_len(u64::MAX)); // n + 1 wrapped to 0
    expect!(f.build(), Error::StringTooLong { len: u64::MAX, .. });
}

#[test]
fn g20_talos_cve_2024_21825_array_count() {
    // 0x2000000000000001 * 8 wraps to 8 in a 64-bit multiply.
    let mut f = FileSpec::valid();
    f.kvs.push(kv_arr(
        "tokenizer.ggml.tokens",
        T_STRING,
        0x2000_0000_0000_0001,
        &[0; 8],
    ));
    expect!(f.build(), Error::ArrayTooLarge { .. });
}

#[test]
fn g20_talos_cve_2024_21802_info_ne() {
    let mut f = FileSpec::valid();
    f.tensors[0].n_dims = 0x100;
    expect!(f.build(), Error::TooManyDims { n_dims: 0x100, .. });
    let mut f = FileSpec::valid();
    f.tensors[0].dims = vec![u32::MAX as u64 * 4, u32::MAX as u64 * 4];
    f.tensors[0].n_dims = 2;
    f.tensors[0].ty = G_F32;
    f.data_len = Some(0);
    expect!(f.build(), Error::SizeOverflow { .. });
}

#[test]
fn g20_cve_2025_53630_and_2026_27940() {
    g16_cve_2025_53630_sum_of_padded_sizes();
    g16_cve_2026_27940_total_plus_overhead();
}

#[test]
fn g20_cve_2026_33298_quant_nbytes_overflow() {
    // Element count fits i64, byte count does not (Q8_K grows 256 -> 292).
    let mut f = FileSpec::empty();
    f.tensors.push(TensorSpec::new(
        "blk.0.ffn_down.weight",
        G_Q8_K,
        &[0x7FFF_FFFF_FFFF_FF00],
    ));
    f.data_len = Some(0);
    expect!(f.build(), Error::SizeOverflow { .. });
}

#[test]
fn g20_ggml_pad_wrap() {
    g16_nbytes_near_u64_max_where_padding_wraps();
}

#[test]
fn g20_alignment_pocs() {
    // PR #24997: 0x80000000 overflowed GGML_PAD on 32-bit.
    let mut f = FileSpec::valid();
    f.kvs.push(kv_u32("general.alignment", 0x8000_0000));
    expect!(f.build(), Error::BadAlignment(_));
    // PR #26318: a non-u32 alignment hit an assert.
    let mut f = FileSpec::valid();
    f.kvs
        .push(kv(b"general.alignment", T_I32, &64i32.to_le_bytes()));
    expect!(f.build(), Error::BadAlignment(_));
}

#[test]
fn g20_ollama_pocs() {
    // CVE-2024-39720: a 4-byte file.
    expect!(b"GGUF".to_vec(), Error::Truncated { .. });
    // CVE-2025-66959: string length 0xFFFF...
    let mut f = FileSpec::valid();
    f.kvs.push(kv(b"general.name", T_STRING, &u64le(u64::MAX)));
    expect!(f.build(), Error::StringTooLong { .. });
    // CVE-2026-7482 "Bleeding Llama": tensor data past the end of the file.
    let mut f = FileSpec::valid();
    f.data_len = Some(40);
    expect!(f.build(), Error::TensorOutOfBounds { .. });
    // The divide-by-zero PoC: a zero dimension.
    ok(with_tensors(vec![TensorSpec::new("z", G_Q8_0, &[32, 0, 4])]).build());
}

// ---- random mutations: never panic ------------------------------------------------

#[test]
fn random_mutations_never_panic() {
    let fixture = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/gguf/interop.gguf"
    ))
    .unwrap();
    let seeds = [FileSpec::valid().build(), fixture];
    let interesting: [u8; 6] = [0x00, 0x01, 0x7F, 0x80, 0xFE, 0xFF];
    let mut rng = Rng(0x7E27);
    let (mut oks, mut errs) = (0, 0);
    for i in 0..6000 {
        let mut b = seeds[i % 2].clone();
        let edits = 1 + rng.below(4);
        for _ in 0..edits {
            let at = rng.below(b.len() as u64) as usize;
            match rng.below(4) {
                0 => b[at] = rng.next_u64() as u8,
                1 => b[at] = interesting[rng.below(6) as usize],
                2 => {
                    // Overwrite an 8-byte field with an extreme value.
                    let v = [u64::MAX, 1 << 63, i64::MAX as u64, 0, 1 << 32][rng.below(5) as usize];
                    for (k, x) in v.to_le_bytes().iter().enumerate() {
                        if let Some(p) = b.get_mut(at + k) {
                            *p = *x;
                        }
                    }
                }
                _ => b.truncate(at),
            }
            if b.is_empty() {
                break;
            }
        }
        match GgufFile::from_bytes(b) {
            Ok(f) => {
                oks += 1;
                for t in f.tensors() {
                    assert_eq!(f.tensor_data(t).len() as u64, t.n_bytes);
                }
                let _ = f.metadata().len();
            }
            Err(e) => {
                errs += 1;
                let _ = e.to_string();
            }
        }
    }
    assert!(oks > 0 && errs > 0, "ok {oks} err {errs}");
}
