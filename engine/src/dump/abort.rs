//! SIGTERM and SIGINT: a dump in progress stops at its next safe point and fails like any failed
//! dump (the tree is put back and runs on, no inventory.img is written); anything else exits at
//! once, as it would have by the default action.
//!
//! `stasis dump` runs the dump in a child of the process started (see [`split_off_tracer`]), so
//! that a SIGKILL of `stasis dump` becomes a SIGTERM of the tracer.
//!
//! The signals are blocked in every thread and taken by one thread of ours with sigwait(2), so
//! no handler runs inside the dump and no syscall of it is interrupted (EINTR) by them. The
//! tracer, the thread that seized the tree, sees a flag at its safe points: between tasks,
//! before each injector is made, and before inventory.img.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

use super::DumpError;

/// The signal that asked for the abort (0: none).
static REQUESTED: AtomicI32 = AtomicI32::new(0);
/// A dump is in progress: a signal aborts it instead of ending the process.
static DUMPING: AtomicBool = AtomicBool::new(false);

/// Blocks SIGTERM and SIGINT and starts the thread that takes them; for `stasis dump`, first
/// (`dumping`) splits off the tracer (see [`split_off_tracer`]). Call first thing in main, before any other
/// thread exists (threads inherit the mask; children started through `std::process::Command`
/// get an empty one).
pub fn install(dumping: bool) {
    let set = sigset(&[libc::SIGTERM, libc::SIGINT]);
    // SAFETY: blocks the two signals in this thread; `set` is a valid, initialized sigset_t.
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        log::warn!("cannot block SIGTERM/SIGINT: errno {r}; they end stasis at once");
        return;
    }
    if dumping {
        split_off_tracer();
    }
    let spawned = std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let mut sig = 0;
            // SAFETY: sigwait reads `set` and writes the signal taken into a local.
            if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
                continue;
            }
            if DUMPING.load(Ordering::SeqCst) {
                REQUESTED.store(sig, Ordering::SeqCst);
            } else {
                // Nothing to put back: exit as the default action would have, by the code a
                // shell gives a process killed by `sig`.
                // SAFETY: _exit ends the process; no state of ours needs flushing.
                unsafe { libc::_exit(128 + sig) };
            }
        });
    if let Err(e) = spawned {
        log::warn!("cannot start the signal thread ({e}): SIGTERM/SIGINT are ignored");
    }
}

fn sigset(sigs: &[i32]) -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, filled by sigemptyset/sigaddset before any use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &s in sigs {
            libc::sigaddset(&mut set, s);
        }
        set
    }
}

/// `stasis dump`: the process the caller started (and may SIGKILL) only waits, and a child of
/// it is the tracer. Should the waiting process die, however it dies, the kernel sends the
/// tracer SIGTERM (PR_SET_PDEATHSIG), and the dump is abandoned at its next safe point with
/// every task put back: no injected syscall is ever cut off in flight by a kill of `stasis
/// dump`. The waiter passes SIGTERM and SIGINT on and exits as the tracer exits.
fn split_off_tracer() {
    let chld = sigset(&[libc::SIGCHLD]);
    // SAFETY: getpid and pthread_sigmask on a valid set; fork in a process that has one
    // thread (install runs first in main), so the child may go on running Rust code.
    let (parent, child) = unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &chld, std::ptr::null_mut());
        (libc::getpid(), libc::fork())
    };
    match child {
        0 => {
            // SAFETY: prctl with integers; getppid has no arguments; _exit ends the process.
            unsafe {
                libc::pthread_sigmask(libc::SIG_UNBLOCK, &chld, std::ptr::null_mut());
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                if libc::getppid() != parent {
                    // The waiter died before we could be told: nothing was started.
                    libc::_exit(128 + libc::SIGTERM);
                }
            }
        }
        -1 => {
            // No tracer of its own: this process dumps, with the same rules minus the waiter.
            // SAFETY: pthread_sigmask on a valid set.
            unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &chld, std::ptr::null_mut()) };
        }
        tracer => wait_for_tracer(tracer),
    }
}

/// The waiter's whole life: SIGTERM/SIGINT go to the tracer, its exit becomes ours.
fn wait_for_tracer(tracer: libc::pid_t) -> ! {
    let set = sigset(&[libc::SIGTERM, libc::SIGINT, libc::SIGCHLD]);
    loop {
        let mut sig = 0;
        // SAFETY: sigwait reads `set` and writes the signal taken into a local.
        if unsafe { libc::sigwait(&set, &mut sig) } != 0 {
            continue;
        }
        if sig != libc::SIGCHLD {
            // SAFETY: kill(2) of our own child.
            unsafe { libc::kill(tracer, sig) };
            continue;
        }
        let mut status = 0;
        // SAFETY: waitpid of our own child into a local; _exit ends the process.
        unsafe {
            if libc::waitpid(tracer, &mut status, libc::WNOHANG) == tracer {
                if libc::WIFEXITED(status) {
                    libc::_exit(libc::WEXITSTATUS(status));
                }
                if libc::WIFSIGNALED(status) {
                    libc::_exit(128 + libc::WTERMSIG(status));
                }
            }
        }
    }
}

/// Marks a dump in progress for as long as it lives.
pub(crate) struct Dumping;

impl Dumping {
    pub(crate) fn start() -> Self {
        REQUESTED.store(0, Ordering::SeqCst);
        DUMPING.store(true, Ordering::SeqCst);
        Dumping
    }
}

impl Drop for Dumping {
    fn drop(&mut self) {
        // A signal taken after the last safe point changes nothing: the dump was complete.
        DUMPING.store(false, Ordering::SeqCst);
        REQUESTED.store(0, Ordering::SeqCst);
    }
}

/// Whether SIGTERM or SIGINT came during the dump: a long step (copying a task's memory) stops
/// early on it, and the dump reports [`DumpError::Aborted`].
pub(crate) fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst) != 0
}

/// Fails with [`DumpError::Aborted`] if SIGTERM or SIGINT came.
pub(crate) fn check() -> Result<(), DumpError> {
    match REQUESTED.load(Ordering::SeqCst) {
        0 => Ok(()),
        signal => Err(DumpError::Aborted { signal }),
    }
}
