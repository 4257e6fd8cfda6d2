//! `tern info MODEL`: a GGUF file's header, metadata and tensor table, and
//! whether tern can run it. Reads only the header (the file is mapped, not
//! read), so it is instant even for large models.

use anyhow::{Context, Result};
use tern_runtime::gguf::{Array, GgufFile, Value};
use tern_runtime::model::Config;

use crate::cli::InfoArgs;
use crate::common::out;

const SHOWN: usize = 8;

fn show_str(s: &str, limit: usize) -> String {
    let mut t: String = s.chars().take(limit).collect();
    if s.chars().count() > limit {
        t.push_str(&format!("… ({} chars)", s.chars().count()));
    }
    format!("{t:?}")
}

fn show_array(a: &Array, full: bool) -> String {
    let n = if full { usize::MAX } else { SHOWN };
    fn list<T: std::fmt::Debug>(v: &[T], n: usize) -> String {
        let mut s: Vec<String> = v.iter().take(n).map(|x| format!("{x:?}")).collect();
        if v.len() > n {
            s.push(format!("… {} more", v.len() - n));
        }
        format!("[{}] ({} elements)", s.join(", "), v.len())
    }
    match a {
        Array::U8(v) => list(v, n),
        Array::I8(v) => list(v, n),
        Array::U16(v) => list(v, n),
        Array::I16(v) => list(v, n),
        Array::U32(v) => list(v, n),
        Array::I32(v) => list(v, n),
        Array::F32(v) => list(v, n),
        Array::Bool(v) => list(v, n),
        Array::U64(v) => list(v, n),
        Array::I64(v) => list(v, n),
        Array::F64(v) => list(v, n),
        Array::String(v) => {
            let shown: Vec<String> = v.iter().take(n).map(|s| show_str(s, 40)).collect();
            let more = if v.len() > n {
                format!(", … {} more", v.len() - n)
            } else {
                String::new()
            };
            format!("[{}{more}] ({} elements)", shown.join(", "), v.len())
        }
    }
}

fn show_value(v: &Value, full: bool) -> String {
    match v {
        Value::String(s) => show_str(s, if full { usize::MAX } else { 120 }),
        Value::Array(a) => show_array(a, full),
        Value::F32(x) => format!("{x}"),
        Value::F64(x) => format!("{x}"),
        Value::Bool(b) => format!("{b}"),
        other => other
            .as_i64()
            .map_or_else(|| format!("{other:?}"), |i| i.to_string()),
    }
}

pub fn run(args: &InfoArgs) -> Result<()> {
    let f = GgufFile::open(&args.model)
        .with_context(|| format!("cannot read {}", args.model.display()))?;
    let mut s = String::new();
    s.push_str(&format!(
        "file: {}\nGGUF version {}, {} bytes, {} metadata keys, {} tensors, alignment {}\n",
        args.model.display(),
        f.version(),
        f.file_len(),
        f.metadata().len(),
        f.tensors().len(),
        f.alignment()
    ));
    match Config::from_gguf(&f) {
        Ok(c) => s.push_str(&format!(
            "model: {} — {} layers, embd {}, ffn {}, heads {}/{} (head dim {}), vocab {}, context {}\n",
            c.arch.name(),
            c.n_layer,
            c.n_embd,
            c.n_ff,
            c.n_head,
            c.n_head_kv,
            c.head_dim,
            c.n_vocab,
            c.n_ctx_train
        )),
        Err(e) => s.push_str(&format!("model: tern cannot run this file: {e}\n")),
    }
    s.push_str("\nmetadata:\n");
    let w = f.metadata().iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    for (k, v) in f.metadata() {
        let ty = match v {
            Value::Array(a) => format!("[{}]", a.element_type().name()),
            v => v.value_type().name().to_string(),
        };
        s.push_str(&format!(
            "  {k:<w$}  {ty:<8}  {}\n",
            show_value(v, args.full)
        ));
    }
    s.push_str("\ntensors:\n");
    let w = f.tensors().iter().map(|t| t.name.len()).max().unwrap_or(0);
    let mut total = 0u64;
    for t in f.tensors() {
        total += t.n_bytes;
        let shape: Vec<String> = t.dims.iter().map(u64::to_string).collect();
        s.push_str(&format!(
            "  {:<w$}  {:<7}  {:<20}  {:>12} bytes\n",
            t.name,
            t.ty.name(),
            format!("[{}]", shape.join(", ")),
            t.n_bytes
        ));
    }
    s.push_str(&format!(
        "  {} tensors, {} bytes of data\n",
        f.tensors().len(),
        total
    ));
    out(&s)
}
