//! A global allocator that holds every single allocation made while a decoder runs to a
//! budget: "no allocation larger than the input justifies".
//!
//! The budget is per thread and only armed around a decode ([`with_budget`]), so the harness
//! itself and other threads allocate freely. An allocation over the budget is recorded and
//! still served, and the harness reports the input afterwards; one so large that serving it
//! could itself bring the process down ([`HARD_LIMIT`]) stops the process at once with the
//! seed and iteration on standard error (rerun with `--save-only` to get the input).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// Larger single allocations abort at once instead of being served and reported.
pub const HARD_LIMIT: usize = 1 << 30;

thread_local! {
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    static OVER: Cell<usize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
    static WHERE: Cell<(u64, u64)> = const { Cell::new((0, 0)) };
}

/// Install with `#[global_allocator] static A: BudgetAlloc = BudgetAlloc;` in the binary
/// that runs the harness ([`super::run`] refuses to run without it).
pub struct BudgetAlloc;

fn check(size: usize) {
    // try_with: allocations made while the thread's locals are torn down are not checked.
    let limit = LIMIT.try_with(Cell::get).unwrap_or(usize::MAX);
    if limit == usize::MAX {
        return;
    }
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    if size > limit {
        let _ = OVER.try_with(|o| o.set(o.get().max(size)));
        if size > HARD_LIMIT {
            let (seed, iteration) = WHERE.try_with(Cell::get).unwrap_or((0, 0));
            emergency(size, limit, seed, iteration);
        }
    }
}

/// Writes one line to standard error without allocating, then aborts.
fn emergency(size: usize, limit: usize, seed: u64, iteration: u64) -> ! {
    let mut buf = [0u8; 256];
    let mut n = 0;
    let parts: [(&[u8], Option<u64>); 5] = [
        (b"stasis-fuzz: an allocation of ", Some(size as u64)),
        (b" bytes over the budget of ", Some(limit as u64)),
        (b" bytes; rerun with --seed ", Some(seed)),
        (b" --save-only ", Some(iteration)),
        (b"\n", None),
    ];
    for (text, num) in parts {
        for &b in text {
            buf[n] = b;
            n += 1;
        }
        if let Some(mut v) = num {
            let mut digits = [0u8; 20];
            let mut d = 0;
            loop {
                digits[d] = b'0' + (v % 10) as u8;
                d += 1;
                v /= 10;
                if v == 0 {
                    break;
                }
            }
            while d > 0 {
                d -= 1;
                buf[n] = digits[d];
                n += 1;
            }
        }
    }
    // SAFETY: write(2) of our own stack buffer to fd 2, then abort(3); neither allocates.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), n);
        libc::abort()
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged; the budget
// check only reads and writes thread-local cells (const-initialised, no destructor, so touching
// them never allocates).
unsafe impl GlobalAlloc for BudgetAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        // SAFETY: as for `alloc`.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` through this allocator, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        // SAFETY: as for `dealloc`; `new_size` is the caller's.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// What one decode under a budget allocated.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    /// The largest single allocation.
    pub largest: usize,
    /// The largest single allocation over the budget, if any.
    pub over: Option<usize>,
}

/// Runs `f` with every single allocation on this thread held to `limit` bytes; `seed` and
/// `iteration` are what an abort over [`HARD_LIMIT`] prints.
pub fn with_budget<T>(
    limit: usize,
    seed: u64,
    iteration: u64,
    f: impl FnOnce() -> T,
) -> (T, Usage) {
    WHERE.with(|w| w.set((seed, iteration)));
    OVER.with(|o| o.set(0));
    LARGEST.with(|l| l.set(0));
    let before = LIMIT.with(|l| l.replace(limit));
    let out = f();
    LIMIT.with(|l| l.set(before));
    let over = OVER.with(Cell::get);
    let usage = Usage {
        largest: LARGEST.with(Cell::get),
        over: (over > 0).then_some(over),
    };
    (out, usage)
}

/// True when [`BudgetAlloc`] is this process's global allocator.
pub fn installed() -> bool {
    let (_, usage) = with_budget(1, 0, 0, || std::hint::black_box(vec![0u8; 64]));
    usage.over.is_some()
}
