//! Semantic validation of a well-formed GGUF (reliability.md §6.2): a model
//! whose metadata or tensors do not make sense gets an `Error` that names the
//! key or tensor and what was wrong — never a panic, a division by zero or a
//! huge allocation. Models are built in memory with `GgufWriter`.

use tern_runtime::gguf::{Array, GgufFile, GgufWriter, Value};
use tern_runtime::quants::GgmlType;
use tern_runtime::{Batch, Error, KvType, Model, ModelParams, SessionParams};

/// A tiny llama (or minicpm) model as a list of KVs and f32 tensors, which a
/// test mutates before it is written.
struct Spec {
    kvs: Vec<(String, Value)>,
    tensors: Vec<(String, GgmlType, Vec<u64>, Vec<u8>)>,
}

const E: u64 = 32; // n_embd
const H: u64 = 4; // heads
const KV: u64 = 2; // kv heads
const F: u64 = 64; // n_ff
const V: u64 = 40; // vocab
const L: u64 = 2; // layers

fn f32_bytes(n: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .flat_map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = ((x >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.3;
            v.to_le_bytes()
        })
        .collect()
}

fn ones(n: u64) -> Vec<u8> {
    (0..n).flat_map(|_| 1.0f32.to_le_bytes()).collect()
}

impl Spec {
    fn new(arch: &str) -> Spec {
        let a = |k: &str| format!("{arch}.{k}");
        let mut kvs = vec![
            (
                "general.architecture".to_string(),
                Value::String(arch.into()),
            ),
            (a("block_count"), Value::U32(L as u32)),
            (a("context_length"), Value::U32(256)),
            (a("embedding_length"), Value::U32(E as u32)),
            (a("feed_forward_length"), Value::U32(F as u32)),
            (a("attention.head_count"), Value::U32(H as u32)),
            (a("attention.head_count_kv"), Value::U32(KV as u32)),
            (a("attention.layer_norm_rms_epsilon"), Value::F32(1e-5)),
            (a("rope.freq_base"), Value::F32(10000.0)),
        ];
        if arch == "minicpm" {
            kvs.push((a("embedding_scale"), Value::F32(12.0)));
            kvs.push((a("residual_scale"), Value::F32(0.99)));
            kvs.push((a("logit_scale"), Value::F32(4.0)));
        }
        let hd = E / H;
        let mut tensors = vec![("token_embd.weight".to_string(), vec![E, V])];
        for il in 0..L {
            let n = |s: &str| format!("blk.{il}.{s}.weight");
            tensors.push((n("attn_norm"), vec![E]));
            tensors.push((n("attn_q"), vec![E, H * hd]));
            tensors.push((n("attn_k"), vec![E, KV * hd]));
            tensors.push((n("attn_v"), vec![E, KV * hd]));
            tensors.push((n("attn_output"), vec![H * hd, E]));
            tensors.push((n("ffn_norm"), vec![E]));
            tensors.push((n("ffn_gate"), vec![E, F]));
            tensors.push((n("ffn_up"), vec![E, F]));
            tensors.push((n("ffn_down"), vec![F, E]));
        }
        tensors.push(("output_norm.weight".to_string(), vec![E]));
        let tensors = tensors
            .into_iter()
            .enumerate()
            .map(|(i, (name, dims))| {
                let n: u64 = dims.iter().product();
                let data = if dims.len() == 1 {
                    ones(n)
                } else {
                    f32_bytes(n, i as u64 + 1)
                };
                (name, GgmlType::F32, dims, data)
            })
            .collect();
        Spec { kvs, tensors }
    }

    fn set(&mut self, key: &str, v: Value) -> &mut Self {
        self.kvs.retain(|(k, _)| k != key);
        self.kvs.push((key.to_string(), v));
        self
    }

    fn remove_kv(&mut self, key: &str) -> &mut Self {
        self.kvs.retain(|(k, _)| k != key);
        self
    }

    fn remove_tensor(&mut self, name: &str) -> &mut Self {
        self.tensors.retain(|t| t.0 != name);
        self
    }

    fn reshape(&mut self, name: &str, dims: Vec<u64>) -> &mut Self {
        let t = self
            .tensors
            .iter_mut()
            .find(|t| t.0 == name)
            .expect("tensor");
        let n: u64 = dims.iter().product();
        t.2 = dims;
        t.3 = f32_bytes(n, 77);
        self
    }

    fn add_tensor(&mut self, name: &str, ty: GgmlType, dims: Vec<u64>, data: Vec<u8>) -> &mut Self {
        self.tensors.push((name.to_string(), ty, dims, data));
        self
    }

    fn gguf(&self) -> GgufFile {
        let mut w = GgufWriter::new();
        for (k, v) in &self.kvs {
            w.add_kv(k.clone(), v.clone()).expect("kv");
        }
        for (name, ty, dims, data) in &self.tensors {
            w.add_tensor(name.clone(), *ty, dims, data.clone())
                .expect("tensor");
        }
        let mut bytes = Vec::new();
        w.write_to(&mut bytes).expect("write");
        GgufFile::from_bytes(bytes).expect("a well-formed container")
    }

    fn load(&self) -> Result<Model, Error> {
        Model::from_gguf(
            self.gguf(),
            &ModelParams {
                threads: Some(1),
                ..Default::default()
            },
        )
    }
}

fn err(spec: &Spec) -> Error {
    match spec.load() {
        Ok(_) => panic!("model loaded but should have been rejected"),
        Err(e) => e,
    }
}

#[test]
fn the_valid_models_load_and_run() {
    for arch in ["llama", "minicpm"] {
        let m = Spec::new(arch).load().expect("valid model loads");
        assert_eq!(m.config().n_vocab, V as usize);
        let mut s = m
            .new_session(&SessionParams {
                n_ctx: 16,
                kv_type: KvType::F32,
                ..Default::default()
            })
            .unwrap();
        let l = s.forward(&Batch::new(&[1, 2, 3], 0)).unwrap();
        assert!(l.row(0).unwrap().iter().all(|v| v.is_finite()));
    }
}

#[test]
fn s1_missing_or_unknown_architecture() {
    let e = err(Spec::new("llama").remove_kv("general.architecture"));
    assert!(
        matches!(e, Error::MissingKey(ref k) if k == "general.architecture"),
        "{e}"
    );

    let e = err(Spec::new("llama").set("general.architecture", Value::String("gpt-neox".into())));
    assert!(
        matches!(e, Error::UnknownArchitecture(ref a) if a == "gpt-neox"),
        "{e}"
    );
    assert!(e.to_string().contains("gpt-neox"));

    // A megabyte of architecture name gives a short message.
    let e = err(Spec::new("llama").set("general.architecture", Value::String("x".repeat(1 << 20))));
    assert!(matches!(e, Error::UnknownArchitecture(_)));
    assert!(
        e.to_string().len() < 200,
        "message of {} bytes",
        e.to_string().len()
    );

    let e = err(Spec::new("llama").set("general.architecture", Value::U32(7)));
    assert!(matches!(e, Error::WrongKeyType { .. }), "{e}");
}

#[test]
fn s2_absurd_hyperparameters() {
    let cases: Vec<(&str, Value, &str)> = vec![
        ("llama.block_count", Value::U32(0), "llama.block_count"),
        (
            "llama.block_count",
            Value::U64(u64::MAX),
            "llama.block_count",
        ),
        ("llama.block_count", Value::I32(-1), "llama.block_count"),
        (
            "llama.embedding_length",
            Value::U32(0),
            "llama.embedding_length",
        ),
        (
            "llama.embedding_length",
            Value::U32(u32::MAX),
            "llama.embedding_length",
        ),
        (
            "llama.attention.head_count",
            Value::U32(0),
            "llama.attention.head_count",
        ),
        (
            "llama.attention.head_count",
            Value::U32(3),
            "llama.attention.head_count",
        ),
        (
            "llama.attention.head_count_kv",
            Value::U32(0),
            "llama.attention.head_count_kv",
        ),
        (
            "llama.attention.head_count_kv",
            Value::U32(3),
            "llama.attention.head_count_kv",
        ),
        (
            "llama.attention.head_count_kv",
            Value::U32(u32::MAX),
            "llama.attention.head_count_kv",
        ),
        (
            "llama.attention.head_count_kv",
            Value::Array(Array::U32(vec![2, 2])),
            "llama.attention.head_count_kv",
        ),
        (
            "llama.feed_forward_length",
            Value::U32(0),
            "llama.feed_forward_length",
        ),
        (
            "llama.context_length",
            Value::U32(0),
            "llama.context_length",
        ),
        (
            "llama.rope.dimension_count",
            Value::U32(9),
            "llama.rope.dimension_count",
        ),
        (
            "llama.rope.dimension_count",
            Value::U32(1000),
            "llama.rope.dimension_count",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f32::NAN),
            "llama.attention.layer_norm_rms_epsilon",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(-1e-5),
            "llama.attention.layer_norm_rms_epsilon",
        ),
        (
            "llama.attention.layer_norm_rms_epsilon",
            Value::F32(f32::INFINITY),
            "llama.attention.layer_norm_rms_epsilon",
        ),
        (
            "llama.rope.freq_base",
            Value::F32(0.0),
            "llama.rope.freq_base",
        ),
        (
            "llama.rope.freq_base",
            Value::F32(f32::NAN),
            "llama.rope.freq_base",
        ),
        (
            "llama.attention.key_length",
            Value::U32(16),
            "llama.attention.key_length",
        ),
        ("llama.vocab_size", Value::U32(41), "llama.vocab_size"),
    ];
    for (key, value, named) in cases {
        let shown = format!("{value:?}");
        let e = err(Spec::new("llama").set(key, value));
        assert!(
            matches!(e, Error::BadHparam { .. }),
            "{key} = {shown}: expected BadHparam, got {e}"
        );
        assert!(
            e.to_string().contains(named),
            "{key} = {shown}: message '{e}' does not name it"
        );
    }
    let e = err(Spec::new("minicpm").set("minicpm.logit_scale", Value::F32(0.0)));
    assert!(
        matches!(e, Error::BadHparam { .. }) && e.to_string().contains("logit_scale"),
        "{e}"
    );
    let e = err(Spec::new("llama").set("llama.block_count", Value::String("2".into())));
    assert!(matches!(e, Error::WrongKeyType { .. }), "{e}");
    let e = err(Spec::new("llama").remove_kv("llama.embedding_length"));
    assert!(
        matches!(e, Error::MissingKey(ref k) if k == "llama.embedding_length"),
        "{e}"
    );
}

#[test]
fn s3_missing_and_misshapen_tensors_are_all_listed() {
    let mut s = Spec::new("llama");
    s.remove_tensor("blk.1.ffn_up.weight")
        .remove_tensor("output_norm.weight")
        .reshape("blk.0.attn_k.weight", vec![E, 24]);
    let e = err(&s);
    let msg = e.to_string();
    assert!(
        matches!(e, Error::BadModel { ref problems } if problems.len() == 3),
        "{msg}"
    );
    assert!(msg.contains("blk.1.ffn_up.weight: missing"), "{msg}");
    assert!(msg.contains("output_norm.weight: missing"), "{msg}");
    assert!(
        msg.contains("blk.0.attn_k.weight: expected shape [32, 16], found [32, 24]"),
        "{msg}"
    );

    // Fewer layers present than block_count claims.
    let e = err(Spec::new("llama").set("llama.block_count", Value::U32(3)));
    assert!(
        e.to_string().contains("blk.2.attn_q.weight: missing"),
        "{e}"
    );

    // token_embd missing entirely.
    let e = err(Spec::new("llama").remove_tensor("token_embd.weight"));
    assert!(e.to_string().contains("token_embd.weight"), "{e}");

    // Extra tensors are ignored (with a warning).
    let mut s = Spec::new("llama");
    s.add_tensor("blk.0.attn_q.bias", GgmlType::F32, vec![E], ones(E));
    s.add_tensor("mystery.weight", GgmlType::F32, vec![4], ones(4));
    s.load().expect("extra tensors are not an error");
}

#[test]
fn unsupported_tensor_types_are_named() {
    let mut s = Spec::new("llama");
    // Q5_0: a valid GGML type tern has no kernels for (32 elements in 22 bytes).
    s.remove_tensor("blk.0.ffn_gate.weight");
    s.add_tensor(
        "blk.0.ffn_gate.weight",
        GgmlType::Q5_0,
        vec![E, F],
        vec![0u8; (F * 22) as usize],
    );
    let e = err(&s);
    assert!(e.to_string().contains("blk.0.ffn_gate.weight"), "{e}");
    assert!(e.to_string().contains("Q5_0"), "{e}");
}

#[test]
fn bad_rope_factors_are_rejected_at_load() {
    let mut s = Spec::new("minicpm");
    let half = E / H / 2;
    let mut f: Vec<u8> = ones(half);
    f[4..8].copy_from_slice(&0.0f32.to_le_bytes());
    s.add_tensor("rope_factors_short.weight", GgmlType::F32, vec![half], f);
    let e = err(&s);
    assert!(
        matches!(e, Error::BadHparam { .. }) && e.to_string().contains("rope_factors_short"),
        "{e}"
    );

    let mut s = Spec::new("minicpm");
    s.add_tensor(
        "rope_factors_long.weight",
        GgmlType::F32,
        vec![half + 1],
        ones(half + 1),
    );
    let e = err(&s);
    assert!(
        e.to_string()
            .contains("rope_factors_long.weight: expected shape"),
        "{e}"
    );
}

#[test]
fn s5_nan_weights_give_a_numerical_error_not_garbage() {
    let mut s = Spec::new("llama");
    let t = s
        .tensors
        .iter_mut()
        .find(|t| t.0 == "output_norm.weight")
        .unwrap();
    t.3[0..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let m = s.load().expect("NaN weights load");
    let mut sess = m
        .new_session(&SessionParams {
            n_ctx: 8,
            kv_type: KvType::F16,
            ..Default::default()
        })
        .unwrap();
    let e = sess.forward(&Batch::new(&[1, 2], 0)).unwrap_err();
    assert!(matches!(e, Error::NumericalError { .. }), "{e}");
    assert_eq!(
        sess.len(),
        0,
        "a failed forward must not advance the session"
    );
}

#[test]
fn absurd_session_sizes_are_errors() {
    let m = Spec::new("llama").load().unwrap();
    for n_ctx in [0usize, usize::MAX, 1 << 40] {
        let r = m.new_session(&SessionParams {
            n_ctx,
            kv_type: KvType::F16,
            ..Default::default()
        });
        assert!(r.is_err(), "n_ctx {n_ctx} accepted");
    }
}
