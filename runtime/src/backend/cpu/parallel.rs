//! The CPU backend's persistent thread pool, and the f32 dot product shared
//! by the exact kernels.
//!
//! `threads − 1` workers are started once per backend and wait for jobs; the
//! calling thread works too. A job is `n` independent tasks handed out one at
//! a time from an atomic counter, so which thread runs a task never changes
//! what it computes: kernels write each output element from the same
//! arithmetic whatever the split, which keeps results independent of thread
//! count and batch shape.
//!
//! Workers spin briefly after a job before parking on a condvar: a decode
//! step issues a few hundred small jobs a few microseconds apart, and a
//! futex wake-up (or a thread spawn, as before) per job would cost more than
//! the work.
//!
//! Jobs from two callers at once (two sessions on one model) are serialized
//! by `submit`; a job never allocates.

use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long an idle worker spins before parking.
const SPIN: Duration = Duration::from_millis(2);
/// Busy-wait iterations before a waiting thread starts yielding its core.
const YIELD_AFTER: u32 = 1 << 10;

/// A job: the task body, erased to `'static` for the time `run` waits on it.
type TaskFn = dyn Fn(usize) + Sync;

struct Shared {
    /// The current job; written only by the submitter while no worker is
    /// inside a job (see `run`), read by workers after they see `epoch` move.
    job: UnsafeCell<Option<*const TaskFn>>,
    n_tasks: AtomicUsize,
    next: AtomicUsize,
    /// Workers that have not finished the current job yet.
    active: AtomicUsize,
    /// Bumped once per job; workers wait for it to change.
    epoch: AtomicU64,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    /// A panic in a task, re-raised on the submitting thread.
    panicked: AtomicBool,
    park: Mutex<()>,
    wake: Condvar,
}

// SAFETY: `job` is only written by the single submitter (serialized by
// `Pool::submit`) while `active == 0`, i.e. while no worker reads it; the
// closure it points to is `Sync`.
unsafe impl Sync for Shared {}
// SAFETY: as above; the raw pointer is only dereferenced under that protocol.
unsafe impl Send for Shared {}

/// A fixed set of worker threads.
pub(crate) struct Pool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    submit: Mutex<()>,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pool({} threads)", self.threads())
    }
}

impl Pool {
    /// A pool running jobs on `threads` threads (the caller and
    /// `threads − 1` workers). Workers that fail to start are done without.
    pub(crate) fn new(threads: usize) -> Pool {
        let shared = Arc::new(Shared {
            job: UnsafeCell::new(None),
            n_tasks: AtomicUsize::new(0),
            next: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            epoch: AtomicU64::new(0),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            park: Mutex::new(()),
            wake: Condvar::new(),
        });
        let mut workers = Vec::new();
        for i in 1..threads.max(1) {
            let s = Arc::clone(&shared);
            match std::thread::Builder::new()
                .name(format!("tern-cpu-{i}"))
                .spawn(move || worker(&s))
            {
                Ok(h) => workers.push(h),
                Err(e) => {
                    log::warn!("could not start CPU worker thread: {e}; using fewer threads");
                    break;
                }
            }
        }
        Pool {
            shared,
            workers,
            submit: Mutex::new(()),
        }
    }

    /// Threads a job runs on, the caller included.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len() + 1
    }

    /// Run `f(i)` for every `i` in `0..n`, spread over the pool; returns
    /// when all are done. `n ≤ 1` or a busy pool runs inline.
    pub(crate) fn run<'a>(&self, n: usize, f: &'a (dyn Fn(usize) + Sync + 'a)) {
        if n == 0 {
            return;
        }
        if n == 1 || self.workers.is_empty() {
            (0..n).for_each(f);
            return;
        }
        // Another session is using the pool: computing inline gives the same
        // results (tasks are independent), just on one thread.
        let Ok(_guard) = self.submit.try_lock() else {
            (0..n).for_each(f);
            return;
        };
        let s = &*self.shared;
        // SAFETY: the lifetime is erased only until this function returns,
        // and it returns only after every worker has left the job
        // (`active == 0` below), so no worker dereferences it afterwards.
        let ptr: *const TaskFn =
            unsafe { std::mem::transmute::<*const (dyn Fn(usize) + Sync + 'a), *const TaskFn>(f) };
        // SAFETY: we hold `submit` and the previous job ended with
        // `active == 0`, so no worker is reading `job`.
        unsafe { *s.job.get() = Some(ptr) };
        s.n_tasks.store(n, Ordering::Relaxed);
        s.next.store(0, Ordering::Relaxed);
        s.active.store(self.workers.len(), Ordering::Relaxed);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.park.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        // Catch a panic so that `f` outlives every worker's use of it.
        let mine = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(s, f)));
        let mut spins = 0u32;
        while s.active.load(Ordering::Acquire) != 0 {
            spins += 1;
            // A task takes microseconds; a worker that has not finished
            // after ~1k spins has most likely been preempted (more runnable
            // threads than cores): yield so it can run, rather than burn
            // the time slice it needs. PERF: before, 65536 spins (≈ 2 ms)
            // per wait made a loaded 2-core machine crawl.
            if spins < YIELD_AFTER {
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        if let Err(e) = mine {
            std::panic::resume_unwind(e);
        }
        if s.panicked.swap(false, Ordering::Relaxed) {
            panic!("a CPU kernel task panicked in a worker thread");
        }
    }
}

fn run_tasks(s: &Shared, f: &(dyn Fn(usize) + Sync + '_)) {
    let n = s.n_tasks.load(Ordering::Relaxed);
    loop {
        let i = s.next.fetch_add(1, Ordering::Relaxed);
        if i >= n {
            break;
        }
        f(i);
    }
}

fn worker(s: &Shared) {
    let mut seen = 0u64;
    loop {
        // Wait for a new epoch: spin, then park.
        let start = Instant::now();
        let mut spins = 0u32;
        loop {
            let e = s.epoch.load(Ordering::Acquire);
            if e != seen {
                seen = e;
                break;
            }
            if s.shutdown.load(Ordering::Relaxed) {
                return;
            }
            spins = spins.wrapping_add(1);
            if spins >= YIELD_AFTER {
                // As in `Pool::run`: past a short spin, let a preempted
                // thread (the submitter, or another process) have the core.
                std::thread::yield_now();
            }
            if spins.is_multiple_of(256) && start.elapsed() > SPIN {
                let g = s.park.lock().unwrap_or_else(|e| e.into_inner());
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut g = g;
                while s.epoch.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst) {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                drop(g);
            } else {
                std::hint::spin_loop();
            }
        }
        if s.shutdown.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: the submitter wrote `job` before bumping `epoch` (release /
        // SeqCst) and we read it after seeing the bump (acquire); it stays
        // valid until we decrement `active`.
        let job = unsafe { *s.job.get() };
        if let Some(ptr) = job {
            // SAFETY: see above; the closure outlives this use.
            let f = unsafe { &*ptr };
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_tasks(s, f)));
            if r.is_err() {
                s.panicked.store(true, Ordering::Relaxed);
            }
        }
        s.active.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _g = self.shared.park.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
    }
}

/// A raw output pointer shared by tasks that write disjoint elements.
#[derive(Clone, Copy)]
pub(crate) struct SyncPtr<T>(pub(crate) *mut T);
// SAFETY: tasks using it write disjoint index sets (each caller says why).
unsafe impl<T> Sync for SyncPtr<T> {}
// SAFETY: as above.
unsafe impl<T> Send for SyncPtr<T> {}

impl<T> SyncPtr<T> {
    /// The pointer. A method (not `.0`) so closures capture the `Sync`
    /// wrapper rather than the raw pointer field.
    #[inline(always)]
    pub(crate) fn get(self) -> *mut T {
        self.0
    }
}

/// Dot product with eight independent accumulators, a fixed order the
/// compiler can vectorise; the same inputs always give the same bits.
#[inline]
pub(super) fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for i in 0..chunks {
        let (x, y) = (&a[i * 8..i * 8 + 8], &b[i * 8..i * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * 8..n {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}
