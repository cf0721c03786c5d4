//! ptrace: seizing threads, reading and writing registers, and running single syscalls inside a
//! stopped thread ("injection"). Every request here is made by the thread that seized the
//! tracee, so callers must stay on one thread.
//!
//! nix makes the requests it has (seize, interrupt, detach, setoptions, singlestep, syscall,
//! getregs, setregs). Hand-written, through `req`: what nix lacks (PEEKSIGINFO, GETSIGMASK/
//! SETSIGMASK, SECCOMP_GET_FILTER/METADATA, GET_RSEQ_CONFIGURATION, GETREGSET/SETREGSET of
//! NT_X86_XSTATE), CONT (a signal-delivery stop may carry a real-time signal, which nix's
//! `Signal` cannot hold) and waitpid (nix's `WaitStatus` fails on real-time stop signals too).

use std::io;

use libc::{c_long, c_void, pid_t, user_regs_struct};
use nix::sys::ptrace;
use nix::unistd::Pid;

// Not in libc for glibc targets (0.2.191): from <linux/ptrace.h> and <linux/elf.h>.
const PTRACE_SECCOMP_GET_FILTER: libc::c_uint = 0x420c;
const PTRACE_SECCOMP_GET_METADATA: libc::c_uint = 0x420d;
const NT_X86_XSTATE: libc::c_int = 0x202;
/// Seccomp filters of the tracee are not applied while it is traced (injected syscalls pass).
pub use libc::PTRACE_O_SUSPEND_SECCOMP;
/// Report clone events so that threads created by injected clone3 are traced at once.
pub use libc::PTRACE_O_TRACECLONE;
/// The tracee is killed when its tracer exits, however it exits.
pub const PTRACE_O_EXITKILL: libc::c_int = 0x100000;
/// Syscall stops report SIGTRAP|0x80: a tracer that dies while its tracee sits in one then
/// leaves it no signal (the kernel sends the stop's code as a signal, and 0x85 is none).
pub use libc::PTRACE_O_TRACESYSGOOD;
pub use libc::{PTRACE_EVENT_CLONE, PTRACE_EVENT_STOP};

pub type Regs = user_regs_struct;

/// A ptrace request failed.
#[derive(Debug, thiserror::Error)]
pub enum PtraceError {
    #[error("ptrace {op} on thread {tid} failed")]
    Request {
        op: &'static str,
        tid: u32,
        #[source]
        source: io::Error,
    },
    #[error("thread {tid}: unexpected stop while waiting for {waiting_for} (status {status:#x})")]
    UnexpectedStop {
        tid: u32,
        waiting_for: &'static str,
        status: i32,
    },
    #[error("thread {tid} exited while traced (status {status:#x})")]
    Exited { tid: u32, status: i32 },
    #[error("injected syscall {nr} in thread {tid} returned error {}", -ret)]
    Syscall { tid: u32, nr: i64, ret: i64 },
    #[error("thread {tid} did not stop within {secs} s ({state}): a task in vfork waiting for its child, or in an uninterruptible sleep, cannot be seized now (--timeout)")]
    StopTimeout { tid: u32, secs: u64, state: String },
}

/// How long a thread may take to stop once interrupted (CRIU's --timeout, 10 s by default).
static STOP_TIMEOUT_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(10_000);

/// Sets how long a thread may take to stop once interrupted (`--timeout SECONDS`).
pub fn set_stop_timeout(d: std::time::Duration) {
    STOP_TIMEOUT_MS.store(
        d.as_millis().min(u64::MAX as u128) as u64,
        std::sync::atomic::Ordering::Relaxed,
    );
}

/// waitpid(tid, __WALL) until `deadline`: polled, so a thread that cannot stop (vfork, an
/// uninterruptible sleep) fails the dump instead of hanging it. A stop usually comes within
/// tens of microseconds, less than one sleep takes (timer slack): the first 200 us yield
/// instead of sleeping, so the frozen window does not grow by a sleep per thread.
fn wait_until(tid: u32, deadline: std::time::Instant) -> Result<Stop, PtraceError> {
    let spin_until = std::time::Instant::now() + std::time::Duration::from_micros(200);
    let mut nap = std::time::Duration::from_micros(50);
    loop {
        if let Some(stop) = try_wait(tid)? {
            return Ok(stop);
        }
        if std::time::Instant::now() >= deadline {
            let state = std::fs::read_to_string(format!("/proc/{tid}/wchan"))
                .map(|w| format!("waiting in {w}"))
                .unwrap_or_else(|_| "state unknown".into());
            return Err(PtraceError::StopTimeout {
                tid,
                secs: STOP_TIMEOUT_MS.load(std::sync::atomic::Ordering::Relaxed) / 1000,
                state,
            });
        }
        if std::time::Instant::now() < spin_until {
            std::thread::yield_now();
            continue;
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(std::time::Duration::from_millis(2));
    }
}

fn req(
    op: &'static str,
    request: libc::c_uint,
    tid: u32,
    addr: *mut c_void,
    data: *mut c_void,
) -> Result<c_long, PtraceError> {
    // SAFETY: ptrace with the given request; the callers pass pointers to live buffers of the
    // size the request needs (or null/integers where the request takes none).
    let r = unsafe { libc::ptrace(request, tid as pid_t, addr, data) };
    if r == -1 {
        return Err(PtraceError::Request {
            op,
            tid,
            source: io::Error::last_os_error(),
        });
    }
    Ok(r)
}

/// The error of a request nix made.
fn nix_err(op: &'static str, tid: u32) -> impl FnOnce(nix::errno::Errno) -> PtraceError {
    move |e| PtraceError::Request {
        op,
        tid,
        source: e.into(),
    }
}

fn pid(tid: u32) -> Pid {
    Pid::from_raw(tid as pid_t)
}

/// How a waited-for thread changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Stopped: the signal and the ptrace event (0 for a signal-delivery stop).
    Stopped {
        sig: i32,
        event: i32,
    },
    Exited(i32),
}

impl Stop {
    /// What waitpid's `status` says.
    fn of_status(status: libc::c_int) -> Stop {
        if libc::WIFSTOPPED(status) {
            Stop::Stopped {
                sig: libc::WSTOPSIG(status),
                event: status >> 16,
            }
        } else {
            Stop::Exited(status)
        }
    }
}

/// waitpid(tid, __WALL | `flags`), retried on EINTR; `None` when WNOHANG found nothing.
fn waitpid_stop(tid: u32, flags: libc::c_int) -> Result<Option<Stop>, PtraceError> {
    loop {
        let mut status = 0;
        // SAFETY: waitpid writes the status into our local.
        let r = unsafe { libc::waitpid(tid as pid_t, &mut status, libc::__WALL | flags) };
        match r {
            0 => return Ok(None),
            -1 => {
                let e = io::Error::last_os_error();
                if e.raw_os_error() != Some(libc::EINTR) {
                    return Err(PtraceError::Request {
                        op: "waitpid",
                        tid,
                        source: e,
                    });
                }
            }
            _ => return Ok(Some(Stop::of_status(status))),
        }
    }
}

/// waitpid(tid, __WALL), retried on EINTR.
pub fn wait(tid: u32) -> Result<Stop, PtraceError> {
    // A blocking waitpid reports something or fails: it never finds nothing.
    Ok(waitpid_stop(tid, 0)?.unwrap_or(Stop::Exited(0)))
}

/// waitpid(tid, __WALL | WNOHANG): `None` while `tid` has nothing to report.
pub fn try_wait(tid: u32) -> Result<Option<Stop>, PtraceError> {
    waitpid_stop(tid, libc::WNOHANG)
}

/// Waits until every thread of `tids` (killed, traced by us) has exited and been reaped, so
/// their pids are free. No order of blocking waits works for every tree: a pid namespace's
/// init whose last thread is not its leader waits in `zap_pid_ns_processes` for every other
/// pid of its namespace to be freed, its own exited threads included, and a traced thread's
/// pid is only freed once its tracer has reaped it; while waiting on that last thread would
/// wait forever (runc's checkpoint of a container whose init is a multi-threaded python hung
/// so). So every thread is polled and reaped as soon as it has exited.
pub fn reap_killed(tids: impl Iterator<Item = u32>) {
    let mut left: Vec<u32> = tids.collect();
    let mut nap = std::time::Duration::from_micros(50);
    while !left.is_empty() {
        let before = left.len();
        left.retain(|&tid| match try_wait(tid) {
            Ok(None) => true,
            Ok(Some(Stop::Exited(_))) | Err(_) => false,
            // Not dead yet: let it run into the SIGKILL. A failure means it is gone
            // already, which a later wait reports.
            Ok(Some(Stop::Stopped { .. })) => {
                let _ = cont(tid, 0);
                true
            }
        });
        if left.len() == before {
            std::thread::sleep(nap);
            nap = (nap * 2).min(std::time::Duration::from_millis(5));
        }
    }
}

/// Replaces the ptrace options of a stopped tracee.
pub fn set_options(tid: u32, options: libc::c_int) -> Result<(), PtraceError> {
    ptrace::setoptions(pid(tid), ptrace::Options::from_bits_retain(options))
        .map_err(nix_err("SETOPTIONS", tid))
}

pub fn seize(tid: u32, options: libc::c_int) -> Result<(), PtraceError> {
    ptrace::seize(pid(tid), ptrace::Options::from_bits_retain(options))
        .map_err(nix_err("SEIZE", tid))
}

/// The seccomp filter `index` of `tid` (0 is the one installed last), as raw `sock_filter`
/// instructions with its flags; None past the oldest.
pub fn seccomp_filter(tid: u32, index: u64) -> Result<Option<(Vec<u8>, u64)>, PtraceError> {
    let count = match req(
        "SECCOMP_GET_FILTER",
        PTRACE_SECCOMP_GET_FILTER,
        tid,
        index as usize as *mut c_void,
        std::ptr::null_mut(),
    ) {
        Ok(n) => n as usize,
        Err(PtraceError::Request { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            return Ok(None)
        }
        Err(e) => return Err(e),
    };
    let mut buf = vec![0u8; count * 8];
    req(
        "SECCOMP_GET_FILTER",
        PTRACE_SECCOMP_GET_FILTER,
        tid,
        index as usize as *mut c_void,
        buf.as_mut_ptr().cast(),
    )?;
    // struct seccomp_metadata { __u64 filter_off; __u64 flags; }
    let mut md = [index, 0u64];
    req(
        "SECCOMP_GET_METADATA",
        PTRACE_SECCOMP_GET_METADATA,
        tid,
        std::mem::size_of_val(&md) as *mut c_void,
        md.as_mut_ptr().cast(),
    )?;
    Ok(Some((buf, md[1])))
}

pub fn interrupt(tid: u32) -> Result<(), PtraceError> {
    ptrace::interrupt(pid(tid)).map_err(nix_err("INTERRUPT", tid))
}

/// Resumes a stopped tracee, delivering `sig` (0 for none). By hand: `sig` may be a real-time
/// signal, which nix's `Signal` cannot hold.
pub fn cont(tid: u32, sig: i32) -> Result<(), PtraceError> {
    req(
        "CONT",
        libc::PTRACE_CONT,
        tid,
        std::ptr::null_mut(),
        sig as usize as *mut c_void,
    )
    .map(drop)
}

pub fn singlestep(tid: u32) -> Result<(), PtraceError> {
    ptrace::step(pid(tid), None).map_err(nix_err("SINGLESTEP", tid))
}

pub fn detach(tid: u32) -> Result<(), PtraceError> {
    ptrace::detach(pid(tid), None).map_err(nix_err("DETACH", tid))
}

/// Interrupts a seized thread and waits for its PTRACE_EVENT_STOP. A signal that was about to be
/// delivered is delivered first (passed on with PTRACE_CONT), so nothing is lost. Returns the
/// stop signal if the thread's process was in a group stop (SIGSTOP, SIGTSTP, ...).
///
/// A group-stopped thread only ever reports its group stop, and syscalls cannot be injected
/// from there (every resume falls back into the stop). So the stop is ended with SIGCONT and
/// the thread interrupted again; the caller must stop the process again when it lets go.
pub fn interrupt_and_wait(tgid: u32, tid: u32) -> Result<Option<i32>, PtraceError> {
    interrupt(tid)?;
    wait_interrupted(tgid, tid)
}

/// The wait of [`interrupt_and_wait`], for a thread interrupted earlier: the dump interrupts
/// every thread of a frozen cgroup before it waits for any (a v1-frozen thread stops only
/// once the cgroup is thawed).
pub fn wait_interrupted(tgid: u32, tid: u32) -> Result<Option<i32>, PtraceError> {
    let mut group = None;
    let ms = STOP_TIMEOUT_MS.load(std::sync::atomic::Ordering::Relaxed);
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(ms);
    loop {
        let st = wait_until(tid, deadline)?;
        match st {
            Stop::Stopped {
                sig: libc::SIGTRAP,
                event: PTRACE_EVENT_STOP,
            } => return Ok(group),
            Stop::Stopped {
                sig,
                event: PTRACE_EVENT_STOP,
            } => {
                let stop = matches!(
                    sig,
                    libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU
                );
                if stop && group.is_none() {
                    group = Some(sig);
                    // A thread that is gone by now fails the next request instead.
                    let _ = super::tgkill(tgid, tid, libc::SIGCONT);
                }
                cont(tid, 0)?;
                interrupt(tid)?;
            }
            Stop::Stopped { sig, event: 0 } => {
                // Signal-delivery stop: let the signal through; the interrupt is still pending.
                cont(tid, sig)?;
            }
            Stop::Stopped { .. } => {
                // Another event stop (exec, exit...) reported first: resume, keep waiting.
                cont(tid, 0)?;
            }
            Stop::Exited(status) => return Err(PtraceError::Exited { tid, status }),
        }
    }
}

pub fn get_regs(tid: u32) -> Result<Regs, PtraceError> {
    ptrace::getregs(pid(tid)).map_err(nix_err("GETREGS", tid))
}

pub fn set_regs(tid: u32, regs: &Regs) -> Result<(), PtraceError> {
    ptrace::setregs(pid(tid), *regs).map_err(nix_err("SETREGS", tid))
}

/// The thread's full XSAVE area (standard format), as PTRACE_GETREGSET NT_X86_XSTATE gives it.
pub fn get_xstate(tid: u32) -> Result<Vec<u8>, PtraceError> {
    let mut buf = vec![0u8; 16384];
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    req(
        "GETREGSET(NT_X86_XSTATE)",
        libc::PTRACE_GETREGSET,
        tid,
        NT_X86_XSTATE as usize as *mut c_void,
        (&mut iov as *mut libc::iovec).cast(),
    )?;
    buf.truncate(iov.iov_len);
    Ok(buf)
}

pub fn set_xstate(tid: u32, xstate: &[u8]) -> Result<(), PtraceError> {
    let mut buf = xstate.to_vec();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    req(
        "SETREGSET(NT_X86_XSTATE)",
        libc::PTRACE_SETREGSET,
        tid,
        NT_X86_XSTATE as usize as *mut c_void,
        (&mut iov as *mut libc::iovec).cast(),
    )
    .map(drop)
}

pub fn get_sigmask(tid: u32) -> Result<u64, PtraceError> {
    let mut mask: u64 = 0;
    req(
        "GETSIGMASK",
        libc::PTRACE_GETSIGMASK,
        tid,
        8usize as *mut c_void,
        (&mut mask as *mut u64).cast(),
    )?;
    Ok(mask)
}

pub fn set_sigmask(tid: u32, mask: u64) -> Result<(), PtraceError> {
    let mut m = mask;
    req(
        "SETSIGMASK",
        libc::PTRACE_SETSIGMASK,
        tid,
        8usize as *mut c_void,
        (&mut m as *mut u64).cast(),
    )
    .map(drop)
}

/// The rseq area a thread registered (PTRACE_GET_RSEQ_CONFIGURATION).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RseqConfig {
    pub rseq_abi_pointer: u64,
    pub rseq_abi_size: u32,
    pub signature: u32,
    pub flags: u32,
    pub pad: u32,
}

pub fn get_rseq(tid: u32) -> Result<RseqConfig, PtraceError> {
    let mut c = RseqConfig::default();
    req(
        "GET_RSEQ_CONFIGURATION",
        libc::PTRACE_GET_RSEQ_CONFIGURATION,
        tid,
        std::mem::size_of::<RseqConfig>() as *mut c_void,
        (&mut c as *mut RseqConfig).cast(),
    )?;
    Ok(c)
}

#[repr(C)]
struct PeekSiginfoArgs {
    off: u64,
    flags: u32,
    nr: i32,
}

/// Pending signals (raw 128-byte siginfo each), per thread or the shared queue, without
/// dequeuing them.
pub fn peek_siginfo(tid: u32, shared: bool) -> Result<Vec<[u8; 128]>, PtraceError> {
    let mut out = Vec::new();
    loop {
        let mut buf = [[0u8; 128]; 32];
        let mut args = PeekSiginfoArgs {
            off: out.len() as u64,
            flags: if shared {
                libc::PTRACE_PEEKSIGINFO_SHARED
            } else {
                0
            },
            nr: 32,
        };
        let n = req(
            "PEEKSIGINFO",
            libc::PTRACE_PEEKSIGINFO,
            tid,
            (&mut args as *mut PeekSiginfoArgs).cast(),
            buf.as_mut_ptr().cast(),
        )?;
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
        if n < 32 {
            break;
        }
    }
    Ok(out)
}

/// Where a kill-safe injected syscall runs so that a tracer dying during it leaves the thread
/// as it was (see `task::sigframe`): a `syscall` instruction followed by `ret`, and a signal
/// frame of the thread's own state whose first word is the address of rt_sigreturn code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SafetyNet {
    /// The `syscall` of a `syscall; ... ret` sequence (the vdso has one).
    pub syscall_ret: u64,
    /// The frame: the thread's stack pointer while the syscall runs.
    pub frame: u64,
}

/// Runs syscalls inside a stopped thread by pointing its rip at a `syscall` instruction
/// (`0f 05`) and single-stepping over it. Every injection ends in a signal-delivery stop
/// (SIGTRAP), which is where registers may safely be rewritten afterwards.
pub struct Injector {
    pub tid: u32,
    /// Address of a `syscall` instruction in the tracee.
    pub syscall_at: u64,
    /// Registers every injection starts from (the thread's own, so segment selectors are valid).
    pub base: Regs,
    /// Inject without single steps (see `raw_quiet`): for a task that ignores SIGTRAP or holds
    /// one pending, which the SIGTRAP a step forces would disturb.
    pub quiet: bool,
    /// Kill-safe injection (the dump side), with the thread's own signal mask: see
    /// [`Injector::kill_safe`].
    pub own_mask: Option<u64>,
    /// Run each syscall over this net (kill-safe injectors only).
    pub net: Option<SafetyNet>,
}

impl Injector {
    pub fn new(tid: u32, syscall_at: u64) -> Result<Self, PtraceError> {
        Ok(Self {
            tid,
            syscall_at,
            base: get_regs(tid)?,
            quiet: false,
            own_mask: None,
            net: None,
        })
    }

    /// An injector that leaves the thread as it found it between any two syscalls, so that a
    /// tracer killed at any moment outside one syscall in flight leaves the thread to run on
    /// as if never seized. `regs` and `mask` are the thread's own, read when it was seized.
    ///
    /// Each syscall runs quiet (no forced SIGTRAP) with every signal blocked; at its exit stop
    /// the thread is interrupted, then gets `regs` and `mask` back, and is let on into the
    /// interrupt's stop (PTRACE_EVENT_STOP, which carries no signal to deliver should the
    /// tracer die). The interrupt comes before the registers: it sets TIF_SIGPENDING, so even
    /// a thread let go from the exit stop passes through the kernel's syscall restart logic,
    /// which `regs` (an interrupted syscall's -ERESTART* in rax) may need.
    pub fn kill_safe(tid: u32, syscall_at: u64, regs: Regs, mask: u64) -> Self {
        Self {
            tid,
            syscall_at,
            base: regs,
            quiet: true,
            own_mask: Some(mask),
            net: None,
        }
    }

    /// The same injector, each syscall run over `net` (see [`SafetyNet`]).
    pub fn with_net(mut self, net: Option<SafetyNet>) -> Self {
        self.net = net;
        self
    }

    /// The same injector, quiet or not (see `raw_quiet`).
    pub fn with_quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// Points the thread at the syscall instruction with syscall `nr` and `args` loaded.
    fn load(&self, nr: i64, args: &[u64]) -> Result<(), PtraceError> {
        let mut r = self.base;
        r.rip = self.syscall_at;
        if let Some(net) = self.net {
            r.rip = net.syscall_ret;
            r.rsp = net.frame;
        }
        r.rax = nr as u64;
        r.orig_rax = u64::MAX;
        let a = |i: usize| args.get(i).copied().unwrap_or(0);
        r.rdi = a(0);
        r.rsi = a(1);
        r.rdx = a(2);
        r.r10 = a(3);
        r.r8 = a(4);
        r.r9 = a(5);
        set_regs(self.tid, &r)
    }

    /// Runs one syscall; returns the raw kernel result (negative errno on failure).
    pub fn raw(&self, nr: i64, args: &[u64]) -> Result<i64, PtraceError> {
        if let Some(mask) = self.own_mask {
            return self.raw_kill_safe(nr, args, mask);
        }
        if self.quiet {
            return self.raw_quiet(nr, args);
        }
        self.load(nr, args)?;
        singlestep(self.tid)?;
        let mut traps = 0;
        loop {
            match wait(self.tid)? {
                Stop::Stopped {
                    sig: libc::SIGTRAP,
                    event: 0,
                } => break,
                Stop::Stopped {
                    event: PTRACE_EVENT_CLONE,
                    ..
                } => singlestep(self.tid)?,
                // A leftover interrupt trap is reported before any instruction runs (and a
                // pending single-step SIGTRAP before any further one): step again.
                Stop::Stopped {
                    event: PTRACE_EVENT_STOP,
                    ..
                } if traps < 3 => {
                    traps += 1;
                    singlestep(self.tid)?;
                }
                other => return Err(self.unexpected(other, "SIGTRAP after injected syscall")),
            }
        }
        Ok(get_regs(self.tid)?.rax as i64)
    }

    /// Runs one syscall without the single step: the thread stops at syscall entry and exit
    /// (ptrace stops, no signal), then is interrupted so that it ends, as after a step, in a
    /// stop inside the signal code (final registers and syscall restarts then behave the
    /// same). No SIGTRAP is forced: a step's forced SIGTRAP resets an ignored or blocked
    /// SIGTRAP's handler to SIG_DFL and unblocks it, which would also let a pending one in.
    pub fn raw_quiet(&self, nr: i64, args: &[u64]) -> Result<i64, PtraceError> {
        let ret = self.syscall_stops(nr, args)?;
        interrupt(self.tid)?;
        self.on_to_interrupt_stop()?;
        Ok(ret)
    }

    /// One syscall of a kill-safe injector (see [`Injector::kill_safe`]). Whatever fails, the
    /// thread's own registers and mask are put back (as far as the thread lets us).
    ///
    /// Over a net, the order of each change is such that the thread, let go at any point,
    /// either has its own registers and mask or ends in the net's rt_sigreturn, which gives
    /// them back: the syscall is loaded before every signal is blocked, and the mask is put
    /// back before the registers.
    fn raw_kill_safe(&self, nr: i64, args: &[u64], mask: u64) -> Result<i64, PtraceError> {
        let ret = if self.net.is_some() {
            // Loaded, the thread must get its own registers back whatever fails next.
            self.load(nr, args)?;
            crate::fault::tracer_may_die(crate::fault::InSyscall::Loaded);
            set_sigmask(self.tid, !0).and_then(|()| self.run_loaded())
        } else {
            set_sigmask(self.tid, !0)?;
            self.syscall_stops(nr, args)
        };
        if ret.is_ok() {
            crate::fault::tracer_may_die(crate::fault::InSyscall::Exit);
        }
        let back = if self.net.is_some() {
            interrupt(self.tid)
                .and_then(|()| set_sigmask(self.tid, mask))
                .and_then(|()| set_regs(self.tid, &self.base))
        } else {
            interrupt(self.tid)
                .and_then(|()| set_regs(self.tid, &self.base))
                .and_then(|()| set_sigmask(self.tid, mask))
        };
        // Registers and mask are the thread's own from here on: the window is closed.
        let settled = back.and_then(|()| self.on_to_interrupt_stop());
        let ret = ret?;
        settled?;
        Ok(ret)
    }

    /// Loads the syscall and lets the thread run it between its syscall entry and exit stops
    /// (ptrace stops, no signal); returns the raw result, the thread still at the exit stop.
    fn syscall_stops(&self, nr: i64, args: &[u64]) -> Result<i64, PtraceError> {
        self.load(nr, args)?;
        self.run_loaded()
    }

    /// [`Injector::syscall_stops`] of a syscall already loaded.
    fn run_loaded(&self) -> Result<i64, PtraceError> {
        let resume = || ptrace::syscall(pid(self.tid), None).map_err(nix_err("SYSCALL", self.tid));
        resume()?;
        // A leftover interrupt trap (a task continued out of a group stop at seize gets one)
        // is reported before the syscall instruction runs: resume again.
        let mut traps = 0;
        loop {
            match wait(self.tid)? {
                Stop::Stopped { sig, event: 0 } if sig & 0x7f == libc::SIGTRAP => break,
                Stop::Stopped {
                    event: PTRACE_EVENT_STOP,
                    ..
                } if traps < 3 => {
                    traps += 1;
                    resume()?;
                }
                other => return Err(self.unexpected(other, "syscall entry")),
            }
        }
        loop {
            resume()?;
            // A clone3 reports its new thread first (PTRACE_O_TRACECLONE).
            match wait(self.tid)? {
                Stop::Stopped { sig, event: 0 } if sig & 0x7f == libc::SIGTRAP => break,
                Stop::Stopped {
                    event: PTRACE_EVENT_CLONE,
                    ..
                } => continue,
                other => return Err(self.unexpected(other, "syscall exit")),
            }
        }
        Ok(get_regs(self.tid)?.rax as i64)
    }

    /// Lets an interrupted thread on into the interrupt's PTRACE_EVENT_STOP, inside the
    /// kernel's signal code (final registers and syscall restarts then behave as after a step).
    fn on_to_interrupt_stop(&self) -> Result<(), PtraceError> {
        cont(self.tid, 0)?;
        self.expect("the interrupt after a quiet syscall", |_, event| {
            event == PTRACE_EVENT_STOP
        })
    }

    fn expect(
        &self,
        waiting_for: &'static str,
        ok: impl Fn(i32, i32) -> bool,
    ) -> Result<(), PtraceError> {
        match wait(self.tid)? {
            Stop::Stopped { sig, event } if ok(sig, event) => Ok(()),
            other => Err(self.unexpected(other, waiting_for)),
        }
    }

    /// The error for a stop other than the one awaited.
    fn unexpected(&self, stop: Stop, waiting_for: &'static str) -> PtraceError {
        match stop {
            Stop::Exited(status) => PtraceError::Exited {
                tid: self.tid,
                status,
            },
            Stop::Stopped { sig, event } => PtraceError::UnexpectedStop {
                tid: self.tid,
                waiting_for,
                status: (event << 16) | (sig << 8) | 0x7f,
            },
        }
    }

    /// Runs one syscall and turns a negative result into an error.
    pub fn call(&self, nr: i64, args: &[u64]) -> Result<i64, PtraceError> {
        let ret = self.raw(nr, args)?;
        if (-4095..0).contains(&ret) {
            return Err(PtraceError::Syscall {
                tid: self.tid,
                nr,
                ret,
            });
        }
        Ok(ret)
    }
}

/// Finds a `syscall` instruction (`0f 05`) in bytes mapped at `base`.
pub fn find_syscall_insn(bytes: &[u8], base: u64) -> Option<u64> {
    bytes
        .windows(2)
        .position(|w| w == [0x0f, 0x05])
        .map(|i| base + i as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_syscall_instruction() {
        assert_eq!(
            find_syscall_insn(&[0x90, 0x0f, 0x05, 0xc3], 0x1000),
            Some(0x1001)
        );
        assert_eq!(find_syscall_insn(&[0x0f, 0x90, 0x05], 0), None);
    }
}
