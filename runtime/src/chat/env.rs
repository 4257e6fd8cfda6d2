//! The minijinja environment chat templates render in: jinja2's options as
//! Hugging Face sets them, the globals and filters HF templates expect, and a
//! budget check on every callback (see `budget.rs`).
//!
//! What a template can reach is only what is registered here: minijinja has
//! no attribute access to host objects, so the classic SSTI payloads
//! (`''.__class__.__mro__`, `cycler.__init__.__globals__`) evaluate to
//! undefined instead of Python internals.
//!
//! One deliberate difference from jinja2: iterating `none` (e.g. `tools`
//! when there are none) yields nothing instead of raising, which lets tool
//! templates render a plain conversation.

use minijinja::value::{Kwargs, Rest};
use minijinja::{filters, Environment, Error as MjError, ErrorKind, State, Value};

use super::budget::{self, check_count, check_predicted, check_time, check_value};
use super::clock::Tm;
use super::pyfmt::{self, FmtError, JsonOpts};

/// An environment with everything registered, but no template yet.
pub(crate) fn new_environment(recursion: usize) -> Environment<'static> {
    let mut env = Environment::new();
    // HF renders with ImmutableSandboxedEnvironment(trim_blocks=True,
    // lstrip_blocks=True); keep_trailing_newline stays jinja2's False.
    env.set_trim_blocks(true);
    env.set_lstrip_blocks(true);
    env.set_keep_trailing_newline(false);
    env.set_recursion_limit(recursion);
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Lenient);
    env.set_unknown_method_callback(py_method);
    env.set_formatter(format_value);

    env.add_function("raise_exception", raise_exception);
    env.add_function("strftime_now", strftime_now);
    // minijinja's range already refuses more than 100,000 items; the wrapper
    // adds a clock check to every loop that counts.
    let range = Value::from_function(minijinja::functions::range);
    env.add_function(
        "range",
        move |state: &State, args: Rest<Value>| -> Result<Value, MjError> {
            check_time()?;
            range.call(state, &args)
        },
    );
    env.add_filter("tojson", tojson);
    // jinja2: `None is iterable` is false; minijinja iterates none as empty,
    // and templates guard `tools | length` with `tools is iterable`.
    env.add_test("iterable", |v: &Value| {
        !v.is_none() && !v.is_undefined() && v.try_iter().is_ok()
    });

    // Every builtin filter runs behind a size and clock check on its inputs
    // and result; the ones with a count argument get their own checks first.
    macro_rules! guard {
        ($($name:literal => $f:path),* $(,)?) => {$(
            add_guarded(&mut env, $name, Value::from_function($f));
        )*};
    }
    guard!(
        "lower" => filters::lower, "upper" => filters::upper,
        "title" => filters::title, "capitalize" => filters::capitalize,
        "length" => filters::length, "count" => filters::length,
        "dictsort" => filters::dictsort, "items" => filters::items,
        "reverse" => filters::reverse, "trim" => filters::trim,
        "split" => filters::split, "lines" => filters::lines,
        "default" => filters::default, "d" => filters::default,
        "round" => filters::round, "abs" => filters::abs,
        "int" => filters::int, "float" => filters::float,
        "attr" => filters::attr, "first" => filters::first,
        "last" => filters::last, "min" => filters::min, "max" => filters::max,
        "sort" => filters::sort, "list" => filters::list,
        "string" => filters::string, "bool" => filters::bool,
        "sum" => filters::sum, "select" => filters::select,
        "reject" => filters::reject, "selectattr" => filters::selectattr,
        "rejectattr" => filters::rejectattr, "map" => filters::map,
        "groupby" => filters::groupby, "unique" => filters::unique,
        "chain" => filters::chain, "zip" => filters::zip,
        "pprint" => filters::pprint, "safe" => filters::safe,
        "escape" => filters::escape, "e" => filters::escape,
    );
    let replace = Value::from_function(filters::replace);
    add_checked(&mut env, "replace", replace, |args| {
        let s = arg_str(args, 0);
        let old = arg_str(args, 1);
        let new = arg_str(args, 2);
        check_predicted("replace", predict_replace(s, old, new))
    });
    let join = Value::from_function(filters::join);
    add_checked(&mut env, "join", join, |args| {
        let sep = arg_str(args, 1).len() as u128;
        let n = args.first().and_then(|v| v.len()).unwrap_or(0) as u128;
        check_predicted("join", sep * n)
    });
    let indent = Value::from_function(filters::indent);
    add_checked(&mut env, "indent", indent, |args| {
        let s = arg_str(args, 0);
        let width = match args.get(1) {
            Some(w) => match w.as_str() {
                Some(t) => t.len() as u64,
                None => w.as_i64().unwrap_or(0).max(0) as u64,
            },
            None => 4,
        };
        check_count("indent width", width)?;
        let lines = s.bytes().filter(|&b| b == b'\n').count() as u128 + 1;
        check_predicted("indent", s.len() as u128 + lines * width as u128)
    });
    let batch = Value::from_function(filters::batch);
    add_checked(&mut env, "batch", batch, |args| {
        count_arg(args, 1, "batch size")
    });
    let slice = Value::from_function(filters::slice);
    add_checked(&mut env, "slice", slice, |args| {
        count_arg(args, 1, "slice count")
    });
    let format = Value::from_function(filters::format);
    add_checked(&mut env, "format", format, |args| {
        check_format_widths(arg_str(args, 0))
    });
    env
}

fn arg_str(args: &[Value], i: usize) -> &str {
    args.get(i).and_then(|v| v.as_str()).unwrap_or("")
}

fn count_arg(args: &[Value], i: usize, what: &str) -> Result<(), MjError> {
    match args.get(i).and_then(|v| v.as_i64()) {
        Some(n) => check_count(what, n.max(0) as u64),
        None => Ok(()),
    }
}

/// Bytes `s.replace(old, new)` produces (an empty `old` matches between
/// every character, as in Python).
fn predict_replace(s: &str, old: &str, new: &str) -> u128 {
    let n = if old.is_empty() {
        s.chars().count() + 1
    } else {
        s.matches(old).count()
    } as u128;
    s.len() as u128 + n * new.len() as u128
}

/// A printf- or `str.format`-style width such as `%999999999d` or
/// `{:>999999999}` allocates that much before anything can check it: refuse
/// any number in a format string above the count limit.
fn check_format_widths(fmt: &str) -> Result<(), MjError> {
    let mut n: u64 = 0;
    let mut in_num = false;
    for b in fmt.bytes().chain(std::iter::once(b' ')) {
        if b.is_ascii_digit() {
            n = n.saturating_mul(10).saturating_add(u64::from(b - b'0'));
            in_num = true;
        } else if in_num {
            check_count("format width", n)?;
            n = 0;
            in_num = false;
        }
    }
    Ok(())
}

/// Register `f` as filter `name`, behind value-size and clock checks.
fn add_guarded(env: &mut Environment<'static>, name: &'static str, f: Value) {
    add_checked(env, name, f, |_| Ok(()));
}

/// Like [`add_guarded`], with a filter-specific check on the arguments
/// (the filtered value is `args[0]`) before the call.
fn add_checked(
    env: &mut Environment<'static>,
    name: &'static str,
    f: Value,
    pre: impl Fn(&[Value]) -> Result<(), MjError> + Send + Sync + 'static,
) {
    env.add_filter(
        name,
        move |state: &State, args: Rest<Value>| -> Result<Value, MjError> {
            for a in args.iter() {
                check_value(a)?;
            }
            pre(&args)?;
            let rv = f.call(state, &args)?;
            check_value(&rv)?;
            Ok(rv)
        },
    );
}

/// Python string/list/dict methods (minijinja-contrib's pycompat) behind the
/// same checks, with predictions for the methods that can blow up.
fn py_method(state: &State, value: &Value, method: &str, args: &[Value]) -> Result<Value, MjError> {
    check_value(value)?;
    for a in args {
        check_value(a)?;
    }
    if let Some(s) = value.as_str() {
        match method {
            "replace" => check_predicted(
                "replace",
                predict_replace(s, arg_str(args, 0), arg_str(args, 1)),
            )?,
            "format" => check_format_widths(s)?,
            "join" => {
                let n = args.first().and_then(|v| v.len()).unwrap_or(0) as u128;
                check_predicted("join", s.len() as u128 * n)?
            }
            _ => {}
        }
    }
    let rv = minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)?;
    check_value(&rv)?;
    Ok(rv)
}

/// The render's cap for one value's text (the output cap).
fn value_cap() -> usize {
    budget::output_cap()
}

fn fmt_error(what: &str, e: FmtError) -> MjError {
    match e {
        FmtError::TooLong => budget::trip(format!(
            "{what}: text longer than the render's cap of {} bytes",
            value_cap()
        )),
        FmtError::TooDeep => budget::trip(format!("{what}: value nested too deeply")),
        FmtError::NotSerializable(k) => MjError::new(
            ErrorKind::InvalidOperation,
            format!("{what}: cannot serialize a value of type {k}"),
        ),
    }
}

/// `{{ value }}`: Python's `str()` of the value.
fn format_value(out: &mut minijinja::Output, _state: &State, value: &Value) -> Result<(), MjError> {
    check_value(value)?;
    let text = pyfmt::py_str(value, value_cap()).map_err(|e| fmt_error("output", e))?;
    out.write_str(&text)
        .map_err(|_| budget::trip("output write failed".into()))
}

/// `raise_exception(msg)`: the template refuses the conversation.
fn raise_exception(msg: Option<Value>) -> Result<Value, MjError> {
    let msg = msg.map(|m| m.to_string()).unwrap_or_default();
    Err(budget::raise(msg))
}

/// `strftime_now(fmt)`: the current UTC time.
fn strftime_now(fmt: String) -> Result<Value, MjError> {
    check_time()?;
    // Every directive expands to at most a dozen bytes.
    check_predicted("strftime_now", fmt.len() as u128 * 12)?;
    Ok(Value::from(Tm::now().format(&fmt)))
}

/// `tojson`: Python's `json.dumps(value, ensure_ascii=False, ...)`, the
/// filter HF installs (minijinja's own escapes `<>&'` for HTML).
fn tojson(value: &Value, indent: Option<Value>, kwargs: Kwargs) -> Result<Value, MjError> {
    check_time()?;
    let indent = match kwargs.get::<Option<Value>>("indent")?.or(indent) {
        Some(v) if v.is_none() || v.is_undefined() => None,
        Some(v) => match v.as_str() {
            Some(s) => Some(s.to_string()),
            None => {
                let n = v.as_i64().unwrap_or(0).max(0) as u64;
                check_count("tojson indent", n)?;
                Some(" ".repeat(n as usize))
            }
        },
        None => None,
    };
    let (mut item_sep, mut key_sep) = if indent.is_some() {
        (",".to_string(), ": ".to_string())
    } else {
        (", ".to_string(), ": ".to_string())
    };
    if let Some(seps) = kwargs.get::<Option<Value>>("separators")? {
        if !seps.is_none() {
            let parts: Vec<Value> = seps.try_iter()?.collect();
            if let [a, b] = parts.as_slice() {
                item_sep = a.as_str().unwrap_or(",").to_string();
                key_sep = b.as_str().unwrap_or(":").to_string();
            } else {
                return Err(MjError::new(
                    ErrorKind::InvalidOperation,
                    "tojson: separators must be a pair",
                ));
            }
        }
    }
    let opts = JsonOpts {
        indent,
        item_sep,
        key_sep,
        sort_keys: kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false),
        ensure_ascii: kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false),
    };
    kwargs.assert_all_used()?;
    let text = pyfmt::to_json(value, &opts, value_cap()).map_err(|e| fmt_error("tojson", e))?;
    // The result is JSON text meant for the prompt, never HTML: mark it safe.
    Ok(Value::from_safe_string(text))
}
