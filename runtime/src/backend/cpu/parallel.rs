//! Splitting a range of independent work items over scoped threads.
//!
//! Each chunk is computed into its own buffer and handed back in order, so
//! results never depend on how the range was split: the same inputs give
//! bit-identical outputs for any thread count or batch shape.

use std::ops::Range;

/// Below this many multiply-adds a call is not worth a thread.
const MIN_WORK_PER_THREAD: usize = 1 << 15;

/// Run `f` over `0..n` split into at most `threads` contiguous chunks
/// (fewer when `n · work_per_item` is small). Returns each chunk's range and
/// result in order.
pub(super) fn map_chunks<T, F>(
    threads: usize,
    n: usize,
    work_per_item: usize,
    f: F,
) -> Vec<(Range<usize>, T)>
where
    T: Send,
    F: Fn(Range<usize>) -> T + Sync,
{
    let total = n.saturating_mul(work_per_item.max(1));
    let want = (total / MIN_WORK_PER_THREAD)
        .clamp(1, threads.max(1))
        .min(n.max(1));
    if want <= 1 {
        return vec![(0..n, f(0..n))];
    }
    let chunk = n.div_ceil(want);
    let ranges: Vec<Range<usize>> = (0..want)
        .map(|i| (i * chunk).min(n)..((i + 1) * chunk).min(n))
        .filter(|r| !r.is_empty())
        .collect();
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = ranges
            .iter()
            .skip(1)
            .map(|r| {
                let r = r.clone();
                s.spawn(move || f(r))
            })
            .collect();
        let mut out = Vec::with_capacity(ranges.len());
        out.push((ranges[0].clone(), f(ranges[0].clone())));
        for (r, h) in ranges.iter().skip(1).zip(handles) {
            // A panic in a worker is a bug in a kernel, not bad input; pass it on.
            let v = h.join().unwrap_or_else(|e| std::panic::resume_unwind(e));
            out.push((r.clone(), v));
        }
        out
    })
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
