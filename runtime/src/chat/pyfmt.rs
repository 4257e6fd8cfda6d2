//! Python's way of turning template values into text: `str()` for `{{ }}`
//! output and `json.dumps` for the `tojson` filter, as Hugging Face renders
//! chat templates (jinja2 on Python objects). minijinja's own display
//! (`true`, `none`, `["a"]`) and `tojson` (HTML-escaped, compact) differ, and
//! a prompt that differs by one character is a different prompt.
//!
//! Both walk values with a depth limit (a namespace can contain itself) and
//! stop as soon as the text grows past a byte cap, so a hostile value cannot
//! make them loop or allocate without bound.

use std::fmt::Write;

use minijinja::value::{ObjectRepr, ValueKind};
use minijinja::Value;

/// Deepest nesting either walker follows.
const MAX_DEPTH: usize = 128;

/// Why a conversion stopped.
#[derive(Debug)]
pub(crate) enum FmtError {
    /// Nested deeper than [`MAX_DEPTH`].
    TooDeep,
    /// The text would be longer than the cap.
    TooLong,
    /// A value JSON cannot represent (undefined, a function).
    NotSerializable(String),
}

/// Options of `tojson`, as Python's `json.dumps` takes them.
pub(crate) struct JsonOpts {
    pub indent: Option<String>,
    pub item_sep: String,
    pub key_sep: String,
    pub sort_keys: bool,
    pub ensure_ascii: bool,
}

struct Out<'a> {
    s: String,
    cap: usize,
    opts: Option<&'a JsonOpts>,
}

impl Out<'_> {
    fn push(&mut self, t: &str) -> Result<(), FmtError> {
        if self.s.len() + t.len() > self.cap {
            return Err(FmtError::TooLong);
        }
        self.s.push_str(t);
        Ok(())
    }
    fn push_char(&mut self, c: char) -> Result<(), FmtError> {
        if self.s.len() + c.len_utf8() > self.cap {
            return Err(FmtError::TooLong);
        }
        self.s.push(c);
        Ok(())
    }
}

/// Python's `str(value)` for output in `{{ }}`.
pub(crate) fn py_str(v: &Value, cap: usize) -> Result<String, FmtError> {
    match v.kind() {
        ValueKind::String => {
            let s = v.as_str().unwrap_or_default();
            if s.len() > cap {
                return Err(FmtError::TooLong);
            }
            Ok(s.to_string())
        }
        ValueKind::Undefined => Ok(String::new()),
        _ => {
            let mut out = Out {
                s: String::new(),
                cap,
                opts: None,
            };
            repr(&mut out, v, 0)?;
            Ok(out.s)
        }
    }
}

fn float_repr(f: f64) -> String {
    if f.is_nan() {
        return "nan".into();
    }
    if f.is_infinite() {
        return if f > 0.0 { "inf".into() } else { "-inf".into() };
    }
    // Rust's shortest round-trip digits match Python's repr; Python adds
    // ".0" to integral values and uses exponents outside 1e-4..1e16.
    let a = f.abs();
    if a != 0.0 && !(1e-4..1e16).contains(&a) {
        let s = format!("{f:e}");
        // Rust: "1e-5", "1.5e20"; Python: "1e-05", "1.5e+20".
        if let Some((m, e)) = s.split_once('e') {
            let (sign, digits) = match e.strip_prefix('-') {
                Some(d) => ('-', d),
                None => ('+', e),
            };
            return format!("{m}e{sign}{digits:0>2}");
        }
        return s;
    }
    let s = format!("{f}");
    if s.contains('.') {
        s
    } else {
        s + ".0"
    }
}

/// Python's `repr` of a string: single quotes unless the text has a single
/// quote and no double quote.
fn str_repr(out: &mut Out, s: &str) -> Result<(), FmtError> {
    let q = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    out.push_char(q)?;
    for c in s.chars() {
        match c {
            '\\' => out.push("\\\\")?,
            '\n' => out.push("\\n")?,
            '\r' => out.push("\\r")?,
            '\t' => out.push("\\t")?,
            c if c == q => {
                out.push_char('\\')?;
                out.push_char(c)?
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                let mut t = String::new();
                let _ = write!(t, "\\x{:02x}", c as u32);
                out.push(&t)?
            }
            c => out.push_char(c)?,
        }
    }
    out.push_char(q)
}

fn repr(out: &mut Out, v: &Value, depth: usize) -> Result<(), FmtError> {
    if depth > MAX_DEPTH {
        return Err(FmtError::TooDeep);
    }
    match v.kind() {
        ValueKind::Undefined => Ok(()),
        ValueKind::None => out.push("None"),
        ValueKind::Bool => out.push(if v.is_true() { "True" } else { "False" }),
        ValueKind::Number => number(out, v, false),
        ValueKind::String => {
            if depth == 0 {
                out.push(v.as_str().unwrap_or_default())
            } else {
                str_repr(out, v.as_str().unwrap_or_default())
            }
        }
        ValueKind::Seq | ValueKind::Iterable => {
            out.push("[")?;
            let iter = v.try_iter().map_err(|_| FmtError::TooDeep)?;
            for (i, item) in iter.enumerate() {
                if i > 0 {
                    out.push(", ")?;
                }
                repr(out, &item, depth + 1)?;
            }
            out.push("]")
        }
        ValueKind::Map => {
            out.push("{")?;
            let iter = v.try_iter().map_err(|_| FmtError::TooDeep)?;
            for (i, key) in iter.enumerate() {
                if i > 0 {
                    out.push(", ")?;
                }
                repr(out, &key, depth + 1)?;
                out.push(": ")?;
                let val = v.get_item(&key).unwrap_or_default();
                repr(out, &val, depth + 1)?;
            }
            out.push("}")
        }
        _ => {
            let s = v.to_string();
            out.push(&s)
        }
    }
}

fn number(out: &mut Out, v: &Value, json: bool) -> Result<(), FmtError> {
    if let Some(i) = v.as_i64() {
        // Integers (also u64/i128 that fit) print as integers.
        if !is_float(v) {
            return out.push(&i.to_string());
        }
    }
    if !is_float(v) {
        // A big integer minijinja keeps as i128/u128.
        return out.push(&v.to_string());
    }
    let f = f64::try_from(v.clone()).unwrap_or(f64::NAN);
    if json {
        if f.is_nan() {
            return out.push("NaN");
        }
        if f.is_infinite() {
            return out.push(if f > 0.0 { "Infinity" } else { "-Infinity" });
        }
    }
    out.push(&float_repr(f))
}

fn is_float(v: &Value) -> bool {
    v.is_number() && !v.is_integer()
}

/// Python's `json.dumps(value, **opts)` as HF's `tojson` filter calls it.
pub(crate) fn to_json(v: &Value, opts: &JsonOpts, cap: usize) -> Result<String, FmtError> {
    let mut out = Out {
        s: String::new(),
        cap,
        opts: Some(opts),
    };
    json(&mut out, v, 0)?;
    Ok(out.s)
}

fn json_str(out: &mut Out, s: &str, ensure_ascii: bool) -> Result<(), FmtError> {
    out.push_char('"')?;
    for c in s.chars() {
        match c {
            '"' => out.push("\\\"")?,
            '\\' => out.push("\\\\")?,
            '\n' => out.push("\\n")?,
            '\r' => out.push("\\r")?,
            '\t' => out.push("\\t")?,
            '\u{8}' => out.push("\\b")?,
            '\u{c}' => out.push("\\f")?,
            c if (c as u32) < 0x20 || (ensure_ascii && (c as u32) > 0x7e) => {
                let mut buf = [0u16; 2];
                for unit in c.encode_utf16(&mut buf) {
                    let mut t = String::new();
                    let _ = write!(t, "\\u{unit:04x}");
                    out.push(&t)?;
                }
            }
            c => out.push_char(c)?,
        }
    }
    out.push_char('"')
}

fn newline(out: &mut Out, depth: usize) -> Result<(), FmtError> {
    if let Some(ind) = out.opts.and_then(|o| o.indent.clone()) {
        out.push("\n")?;
        for _ in 0..depth {
            out.push(&ind)?;
        }
    }
    Ok(())
}

fn json(out: &mut Out, v: &Value, depth: usize) -> Result<(), FmtError> {
    if depth > MAX_DEPTH {
        return Err(FmtError::TooDeep);
    }
    let (item_sep, key_sep, sort_keys, ascii) = match out.opts {
        Some(o) => (
            o.item_sep.clone(),
            o.key_sep.clone(),
            o.sort_keys,
            o.ensure_ascii,
        ),
        None => (", ".into(), ": ".into(), false, false),
    };
    match v.kind() {
        ValueKind::Undefined => Err(FmtError::NotSerializable("Undefined".into())),
        ValueKind::None => out.push("null"),
        ValueKind::Bool => out.push(if v.is_true() { "true" } else { "false" }),
        ValueKind::Number => number(out, v, true),
        ValueKind::String => json_str(out, v.as_str().unwrap_or_default(), ascii),
        ValueKind::Seq | ValueKind::Iterable => {
            let items: Vec<Value> = v
                .try_iter()
                .map_err(|e| FmtError::NotSerializable(e.to_string()))?
                .collect();
            if items.is_empty() {
                return out.push("[]");
            }
            out.push("[")?;
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(&item_sep)?;
                }
                newline(out, depth + 1)?;
                json(out, item, depth + 1)?;
            }
            newline(out, depth)?;
            out.push("]")
        }
        ValueKind::Map => {
            let mut keys: Vec<Value> = v
                .try_iter()
                .map_err(|e| FmtError::NotSerializable(e.to_string()))?
                .collect();
            if keys.is_empty() {
                return out.push("{}");
            }
            if sort_keys {
                keys.sort();
            }
            out.push("{")?;
            for (i, key) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(&item_sep)?;
                }
                newline(out, depth + 1)?;
                match key.as_str() {
                    Some(k) => json_str(out, k, ascii)?,
                    None => {
                        // Python's json turns int/float/bool/None keys into strings.
                        let mut tmp = Out {
                            s: String::new(),
                            cap: out.cap,
                            opts: out.opts,
                        };
                        json(&mut tmp, key, depth + 1)?;
                        json_str(out, &tmp.s, ascii)?;
                    }
                }
                out.push(&key_sep)?;
                let val = v.get_item(key).unwrap_or_default();
                json(out, &val, depth + 1)?;
            }
            newline(out, depth)?;
            out.push("}")
        }
        _ => match v.as_object().map(|o| o.repr()) {
            Some(ObjectRepr::Plain) | None => {
                Err(FmtError::NotSerializable(format!("{}", v.kind())))
            }
            Some(_) => Err(FmtError::NotSerializable(format!("{}", v.kind()))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floats_print_like_python() {
        assert_eq!(float_repr(1.0), "1.0");
        assert_eq!(float_repr(0.5), "0.5");
        assert_eq!(float_repr(1e-5), "1e-05");
        assert_eq!(float_repr(1.5e20), "1.5e+20");
        assert_eq!(float_repr(123.25), "123.25");
    }

    #[test]
    fn str_repr_quotes_like_python() {
        let v = Value::from(vec![
            Value::from("it's"),
            Value::from("a\nb"),
            Value::from(true),
        ]);
        assert_eq!(py_str(&v, 1000).unwrap(), r#"["it's", 'a\nb', True]"#);
    }

    #[test]
    fn json_matches_python_defaults() {
        let v = Value::from_serialize(serde_json_like());
        let o = JsonOpts {
            indent: None,
            item_sep: ", ".into(),
            key_sep: ": ".into(),
            sort_keys: false,
            ensure_ascii: false,
        };
        assert_eq!(
            to_json(&v, &o, 1000).unwrap(),
            r#"{"a": [1, 2.5, null], "b": "é\"<"}"#
        );
        assert!(matches!(to_json(&v, &o, 5), Err(FmtError::TooLong)));
    }

    fn serde_json_like() -> std::collections::BTreeMap<&'static str, Value> {
        let mut m = std::collections::BTreeMap::new();
        m.insert(
            "a",
            Value::from(vec![Value::from(1), Value::from(2.5), Value::from(())]),
        );
        m.insert("b", Value::from("é\"<"));
        m
    }
}
