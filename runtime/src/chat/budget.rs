//! Render budgets: the limits one template render runs under, and the
//! per-thread accounting that the template's callbacks (output writer,
//! formatter, filters, functions, methods) check.
//!
//! minijinja gives us fuel (an instruction count) and a recursion limit; it
//! has no hook on every instruction, so the wall clock, output size and the
//! size of values are checked at every point where the engine calls back into
//! tern. A render sets up a [`Scope`] on its thread; callbacks find it through
//! a thread local, because minijinja's callbacks are `'static` closures shared
//! by every render of the template.
//!
//! What bounds what:
//! - instructions: fuel (`fuel_base + fuel_per_message × messages`), so
//!   loops, nested loops and exponential macro recursion stop;
//! - nesting: the recursion limit (macros, includes) and minijinja's parser
//!   depth guard (deeply nested expressions in the source);
//! - the source: `max_source_bytes`, checked before compiling;
//! - output: `CappedWriter` refuses to grow past the cap;
//! - values: every filter, pycompat method, `tojson` and `{{ }}` output
//!   refuses an input or result larger than the output cap, and filters
//!   whose arguments multiply their input (`indent`, `replace`, `join`,
//!   `batch`, `slice`, `format` widths) are checked *before* they allocate;
//!   minijinja itself caps `str * n` at 100 MB and `range` at 100,000 items;
//! - time: the deadline is checked on every write and callback (including
//!   `range`), so it bounds all renders that call back into tern; fuel bounds
//!   the rest.
//!
//! Known gap: growth by operators alone. `~`, `+` and `*` run inside
//! minijinja's VM with no hook, so a loop such as
//! `{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}` doubles
//! a string 40 times without calling back; nothing here can stop it before
//! the allocator fails. Closing it needs a value-size limit in minijinja or
//! rendering in a memory-limited process; as long as templates come only
//! from model files the user chose (never from requests), this is a local
//! denial of service, not an escape.

use std::cell::RefCell;
use std::io;
use std::time::{Duration, Instant};

use minijinja::{Error as MjError, ErrorKind, Value};

/// Limits for one render. The defaults fit every real template we know with
/// a wide margin while keeping a hostile one to about a second of CPU.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Template source bytes accepted by `from_source`.
    pub max_source_bytes: usize,
    /// Instructions (minijinja fuel) every render gets.
    pub fuel_base: u64,
    /// Extra instructions per message.
    pub fuel_per_message: u64,
    /// Output bytes every render may write.
    pub output_base: usize,
    /// Extra output bytes allowed per byte of message text (role + content).
    pub output_per_input_byte: usize,
    /// Extra output bytes allowed per message (template markup around it).
    pub output_per_message: usize,
    /// Macro and include nesting depth.
    pub recursion: usize,
    /// Wall-clock budget for one render.
    pub timeout: Duration,
    /// Largest count a width/indent/batch/format argument may ask for.
    pub max_count_arg: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_source_bytes: 256 * 1024,
            // ~20 ms of minijinja; real templates use under 300 instructions
            // per message (measured over the corpus at 40 messages).
            fuel_base: 1_000_000,
            fuel_per_message: 2_000,
            output_base: 1024 * 1024,
            output_per_input_byte: 2,
            output_per_message: 1024,
            recursion: 64,
            timeout: Duration::from_secs(2),
            max_count_arg: 100_000,
        }
    }
}

impl Limits {
    /// Fuel for a render of `n_messages` messages.
    pub(crate) fn fuel(&self, n_messages: usize) -> u64 {
        self.fuel_base
            .saturating_add(self.fuel_per_message.saturating_mul(n_messages as u64))
    }

    /// Output cap for a render whose messages hold `input_bytes` of text.
    pub(crate) fn max_output(&self, n_messages: usize, input_bytes: usize) -> usize {
        self.output_base
            .saturating_add(self.output_per_input_byte.saturating_mul(input_bytes))
            .saturating_add(self.output_per_message.saturating_mul(n_messages))
    }
}

/// The accounting of the render running on this thread.
struct State {
    deadline: Instant,
    timeout: Duration,
    max_output: usize,
    max_count_arg: u64,
    written: usize,
    /// Why the budget tripped, once it has: errors raised inside minijinja
    /// lose their type, so the reason is kept here and read back after.
    tripped: Option<String>,
    /// The message of a template's `raise_exception`, kept for the same reason.
    raised: Option<String>,
}

thread_local! {
    static CURRENT: RefCell<Option<State>> = const { RefCell::new(None) };
}

/// What a render ended with, beyond minijinja's own error.
pub(crate) struct Outcome {
    pub tripped: Option<String>,
    pub raised: Option<String>,
}

/// The budget of the render on this thread while it lives. Restores the
/// previous one (if a render ever nests) when dropped, also on unwinding.
pub(crate) struct Scope {
    prev: Option<State>,
}

impl Scope {
    pub(crate) fn enter(limits: &Limits, max_output: usize) -> Scope {
        let state = State {
            deadline: Instant::now() + limits.timeout,
            timeout: limits.timeout,
            max_output,
            max_count_arg: limits.max_count_arg,
            written: 0,
            tripped: None,
            raised: None,
        };
        let prev = CURRENT.with(|c| c.borrow_mut().replace(state));
        Scope { prev }
    }

    /// End the render and say what tripped, if anything.
    pub(crate) fn finish(self) -> Outcome {
        let st = CURRENT.with(|c| c.borrow_mut().take());
        // `self` drops here and restores the previous state.
        match st {
            Some(s) => Outcome {
                tripped: s.tripped,
                raised: s.raised,
            },
            None => Outcome {
                tripped: None,
                raised: None,
            },
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        let prev = self.prev.take();
        CURRENT.with(|c| *c.borrow_mut() = prev);
    }
}

fn with<R>(f: impl FnOnce(&mut State) -> R) -> Option<R> {
    CURRENT.with(|c| c.borrow_mut().as_mut().map(f))
}

/// Record a budget trip and return the error that unwinds the render.
pub(crate) fn trip(reason: String) -> MjError {
    let err = MjError::new(ErrorKind::InvalidOperation, reason.clone());
    with(|s| {
        if s.tripped.is_none() {
            s.tripped = Some(reason);
        }
    });
    err
}

/// Record a template's `raise_exception(msg)`.
pub(crate) fn raise(msg: String) -> MjError {
    let err = MjError::new(ErrorKind::InvalidOperation, msg.clone());
    with(|s| {
        if s.raised.is_none() {
            s.raised = Some(msg);
        }
    });
    err
}

/// Fail if the wall clock has run out. Called from every callback.
pub(crate) fn check_time() -> Result<(), MjError> {
    let over = with(|s| (Instant::now() > s.deadline).then_some(s.timeout)).flatten();
    match over {
        Some(t) => Err(trip(format!("render took longer than {t:?}"))),
        None => Ok(()),
    }
}

/// Fail if a value (argument or result of a callback) is larger than the
/// render's output cap: nothing that big can be part of a valid prompt, and
/// refusing it stops filters from multiplying it further.
pub(crate) fn check_value(v: &Value) -> Result<(), MjError> {
    check_time()?;
    let cap = with(|s| s.max_output).unwrap_or(usize::MAX);
    let size = match v.as_str() {
        Some(s) => s.len(),
        // Sequences and maps: count items; each costs at least a few bytes
        // of output if it is ever printed.
        None => v.len().unwrap_or(0),
    };
    if size > cap {
        return Err(trip(format!(
            "a value ({}) of size {size} is over the render's cap of {cap} bytes",
            v.kind()
        )));
    }
    Ok(())
}

/// Fail if a count argument (width, indent, batch size) is absurd.
pub(crate) fn check_count(what: &str, n: u64) -> Result<(), MjError> {
    let max = with(|s| s.max_count_arg).unwrap_or(u64::MAX);
    if n > max {
        return Err(trip(format!("{what} of {n} is over the limit of {max}")));
    }
    Ok(())
}

/// Fail if a predicted result size is over the cap.
pub(crate) fn check_predicted(what: &str, bytes: u128) -> Result<(), MjError> {
    let cap = with(|s| s.max_output).unwrap_or(usize::MAX) as u128;
    if bytes > cap {
        return Err(trip(format!(
            "{what} would produce {bytes} bytes, over the render's cap of {cap}"
        )));
    }
    Ok(())
}

/// The render's output: a byte buffer that refuses to grow past the cap and
/// checks the clock on every write.
pub(crate) struct CappedWriter {
    pub buf: Vec<u8>,
}

impl io::Write for CappedWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let res = with(|s| {
            if Instant::now() > s.deadline {
                return Err(format!("render took longer than {:?}", s.timeout));
            }
            let total = s.written.saturating_add(data.len());
            if total > s.max_output {
                return Err(format!(
                    "output reached {total} bytes, over the cap of {} bytes",
                    s.max_output
                ));
            }
            s.written = total;
            Ok(())
        });
        if let Some(Err(reason)) = res {
            with(|s| {
                if s.tripped.is_none() {
                    s.tripped = Some(reason.clone());
                }
            });
            return Err(io::Error::other(reason));
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The output cap of the render on this thread (unbounded outside a render).
pub(crate) fn output_cap() -> usize {
    with(|s| s.max_output).unwrap_or(usize::MAX)
}
