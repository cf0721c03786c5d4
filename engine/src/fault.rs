//! Fault injection: a seam for tests, not a user feature (see docs/fault-injection.md).
//!
//! The engine calls [`point`] at each of its fault points: before every write of an image or
//! work file (each image, each chunk of pages, `stats-*`, the pidfile) and at every step of a
//! restore. With `STASIS_FAULT` unset, a point costs one relaxed atomic load and does nothing.
//! With it set, points are numbered from 1 in the order they are reached, and:
//! - `STASIS_FAULT=count`: none fails; each is named on stderr as it is reached
//!   (`stasis: fault point 3: write core-42.img`), and [`report`] prints
//!   `fault points reached: K` at the end;
//! - `STASIS_FAULT=N:ERRNO` (`ERRNO` a name such as `ENOSPC` or `EIO`, or a number): point N
//!   fails with that errno, as the call it stands for would have failed; the others pass.
//!
//! The variable is read once, at the first point reached. Points are reached on one thread at
//! a time (the page writer thread has none: a chunk's point is reached when the chunk is handed
//! to it), so a run of the same tree reaches the same points in the same order.

use std::fmt::Display;
use std::io;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU8, Ordering};

/// The environment variable that turns the seam on.
pub const VAR: &str = "STASIS_FAULT";

const UNREAD: u8 = 0;
const OFF: u8 = 1;
const COUNT: u8 = 2;
const FAIL: u8 = 3;

static MODE: AtomicU8 = AtomicU8::new(UNREAD);
static REACHED: AtomicU32 = AtomicU32::new(0);
/// The point that fails, and its errno (mode `FAIL`).
static TARGET: AtomicU32 = AtomicU32::new(0);
static ERRNO: AtomicI32 = AtomicI32::new(0);

/// What `STASIS_FAULT` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// Count and name the points; none fails.
    Count,
    /// Point `n` (from 1) fails with `errno`.
    Fail { n: u32, errno: i32 },
}

/// Errno names the seam takes, with their values.
const ERRNOS: &[(&str, i32)] = &[
    ("ENOSPC", libc::ENOSPC),
    ("EIO", libc::EIO),
    ("EDQUOT", libc::EDQUOT),
    ("EFBIG", libc::EFBIG),
    ("EROFS", libc::EROFS),
    ("ENOMEM", libc::ENOMEM),
    ("EACCES", libc::EACCES),
    ("EPERM", libc::EPERM),
    ("EAGAIN", libc::EAGAIN),
    ("EINTR", libc::EINTR),
    ("EINVAL", libc::EINVAL),
    ("ENOENT", libc::ENOENT),
];

/// Parses the variable's value; `None` if it is neither `count` nor `N:ERRNO` with N ≥ 1.
pub fn parse(value: &str) -> Option<Plan> {
    let value = value.trim();
    if value == "count" {
        return Some(Plan::Count);
    }
    let (n, e) = value.split_once(':')?;
    let n: u32 = n.trim().parse().ok().filter(|&n| n >= 1)?;
    let e = e.trim();
    let errno = match ERRNOS.iter().find(|(name, _)| name.eq_ignore_ascii_case(e)) {
        Some(&(_, v)) => v,
        None => e.parse().ok().filter(|&v| v > 0)?,
    };
    Some(Plan::Fail { n, errno })
}

fn errno_name(errno: i32) -> String {
    ERRNOS
        .iter()
        .find(|&&(_, v)| v == errno)
        .map(|(name, _)| name.to_string())
        .unwrap_or_else(|| format!("errno {errno}"))
}

/// A fault point: `Ok` unless `STASIS_FAULT` names this one. `what` names the point in the
/// messages (`write core-42.img`, `restore: fork`); it is only formatted when the seam is on.
#[inline]
pub fn point(what: impl Display) -> io::Result<()> {
    if MODE.load(Ordering::Relaxed) == OFF {
        return Ok(());
    }
    reached(&what)
}

/// A write's fault point, named by the file's name (not its dir, which differs between runs).
#[inline]
pub fn write_point(path: &std::path::Path) -> io::Result<()> {
    point(format_args!(
        "write {}",
        path.file_name()
            .unwrap_or(path.as_os_str())
            .to_string_lossy()
    ))
}

#[cold]
fn reached(what: &dyn Display) -> io::Result<()> {
    let mode = match MODE.load(Ordering::Acquire) {
        UNREAD => read_var(),
        m => m,
    };
    if mode == OFF {
        return Ok(());
    }
    let n = REACHED.fetch_add(1, Ordering::Relaxed) + 1;
    if mode == COUNT {
        eprintln!("stasis: fault point {n}: {what}");
        return Ok(());
    }
    if n != TARGET.load(Ordering::Relaxed) {
        return Ok(());
    }
    let errno = ERRNO.load(Ordering::Relaxed);
    eprintln!(
        "stasis: fault point {n} ({what}) fails with {}",
        errno_name(errno)
    );
    Err(io::Error::from_raw_os_error(errno))
}

/// Reads `STASIS_FAULT` and sets the mode (racing readers store the same values).
fn read_var() -> u8 {
    let mode = match std::env::var(VAR) {
        Err(_) => OFF,
        Ok(v) => match parse(&v) {
            Some(Plan::Count) => COUNT,
            Some(Plan::Fail { n, errno }) => {
                TARGET.store(n, Ordering::Relaxed);
                ERRNO.store(errno, Ordering::Relaxed);
                FAIL
            }
            None => {
                eprintln!("stasis: {VAR}={v:?} ignored: expected count or N:ERRNO (e.g. 3:ENOSPC)");
                OFF
            }
        },
    };
    MODE.store(mode, Ordering::Release);
    mode
}

/// At the end of a run with the seam on: prints `fault points reached: K` on stderr, and says
/// so when the point meant to fail was never reached (the run then did not test it).
pub fn report() {
    let mode = match MODE.load(Ordering::Acquire) {
        UNREAD => read_var(),
        m => m,
    };
    if mode == OFF {
        return;
    }
    let k = REACHED.load(Ordering::Relaxed);
    eprintln!("fault points reached: {k}");
    let target = TARGET.load(Ordering::Relaxed);
    if mode == FAIL && target > k {
        eprintln!("stasis: fault point {target} was not reached");
    }
}

/// The environment variable of the second seam: the dump's tracer kills itself (SIGKILL) in
/// the middle of its Nth kill-safe injected syscall, to show that a tracer dying there leaves
/// the thread as it was (docs/kill-safety.md). `N` stops it at the syscall's exit stop,
/// `N:loaded` just after the syscall was loaded into the thread's registers, before it ran.
pub const DIE_VAR: &str = "STASIS_TRACER_DIE_AT";

/// Where in an injected syscall the tracer may be made to die.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InSyscall {
    /// The syscall is in the thread's registers and has not run.
    Loaded,
    /// The syscall ran; the thread is at its exit stop.
    Exit,
}

static DIE_READ: AtomicU8 = AtomicU8::new(UNREAD);
static DIE_COUNT: AtomicU32 = AtomicU32::new(0);
static DIE_TARGET: AtomicU32 = AtomicU32::new(0);
static DIE_AT_LOADED: AtomicU8 = AtomicU8::new(0);

/// Parses `STASIS_TRACER_DIE_AT`: `N` or `N:exit` (N ≥ 1), or `N:loaded`.
pub fn parse_die(value: &str) -> Option<(u32, InSyscall)> {
    let (n, at) = match value.trim().split_once(':') {
        Some((n, "loaded")) => (n, InSyscall::Loaded),
        Some((n, "exit")) | Some((n, "")) => (n, InSyscall::Exit),
        None => (value.trim(), InSyscall::Exit),
        Some(_) => return None,
    };
    let n = n.trim().parse().ok().filter(|&n| n >= 1)?;
    Some((n, at))
}

/// Called by the injector at `at` of each kill-safe injected syscall: kills this process if
/// `STASIS_TRACER_DIE_AT` names this syscall. Counts only the `Exit` calls (one per syscall).
#[inline]
pub fn tracer_may_die(at: InSyscall) {
    if DIE_READ.load(Ordering::Relaxed) == OFF {
        return;
    }
    tracer_die_check(at);
}

#[cold]
fn tracer_die_check(at: InSyscall) {
    if DIE_READ.load(Ordering::Acquire) == UNREAD {
        match std::env::var(DIE_VAR).ok().and_then(|v| parse_die(&v)) {
            Some((n, where_)) => {
                DIE_TARGET.store(n, Ordering::Relaxed);
                DIE_AT_LOADED.store((where_ == InSyscall::Loaded) as u8, Ordering::Relaxed);
                DIE_READ.store(FAIL, Ordering::Release);
            }
            None => {
                DIE_READ.store(OFF, Ordering::Release);
                return;
            }
        }
    }
    let n = match at {
        // The syscall about to run is the next one counted.
        InSyscall::Loaded => DIE_COUNT.load(Ordering::Relaxed) + 1,
        InSyscall::Exit => DIE_COUNT.fetch_add(1, Ordering::Relaxed) + 1,
    };
    let loaded = DIE_AT_LOADED.load(Ordering::Relaxed) == 1;
    if n == DIE_TARGET.load(Ordering::Relaxed) && loaded == (at == InSyscall::Loaded) {
        eprintln!("stasis: the tracer dies in injected syscall {n} ({at:?})");
        // SAFETY: kill(2) of ourselves; SIGKILL cannot be caught, which is the point.
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variable_is_count_or_a_point_and_an_errno() {
        assert_eq!(parse("count"), Some(Plan::Count));
        assert_eq!(
            parse("3:ENOSPC"),
            Some(Plan::Fail {
                n: 3,
                errno: libc::ENOSPC
            })
        );
        assert_eq!(
            parse(" 12:eio "),
            Some(Plan::Fail {
                n: 12,
                errno: libc::EIO
            })
        );
        assert_eq!(parse("7:28"), Some(Plan::Fail { n: 7, errno: 28 }));
        for bad in [
            "",
            "0:EIO",
            "x:EIO",
            "3:",
            "3:ENOTANERRNO",
            "3:-1",
            "3",
            "counts",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
        assert_eq!(errno_name(libc::EIO), "EIO");
        assert_eq!(errno_name(4095), "errno 4095");
    }

    #[test]
    fn tracer_death_points_parse() {
        assert_eq!(parse_die("3"), Some((3, InSyscall::Exit)));
        assert_eq!(parse_die("3:exit"), Some((3, InSyscall::Exit)));
        assert_eq!(parse_die("12:loaded"), Some((12, InSyscall::Loaded)));
        assert_eq!(parse_die("0"), None);
        assert_eq!(parse_die("2:later"), None);
    }
}
