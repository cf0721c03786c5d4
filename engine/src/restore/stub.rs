//! The code a freshly forked task runs before the restorer takes it over: fork its own
//! children with their dumped PIDs, join its session and group, place its files, map the
//! trampoline page, report ready and wait to be seized. Only raw syscalls here: this runs in a
//! child made by a raw clone3, where glibc's cached thread id is stale.

use std::os::fd::RawFd;

/// What one task's stub does; computed by the restorer before forking.
pub struct StubPlan {
    pub pid: u32,
    pub pgid: u32,
    /// The group leader is a task of the tree (else the task keeps the restorer's group).
    pub pgid_in_tree: bool,
    pub sid: u32,
    pub children: Vec<usize>,
    /// (target fd, pool fd, close-on-exec) triples.
    pub fds: Vec<(RawFd, RawFd, bool)>,
    /// Pool fd of the pty slave to make the controlling terminal (session leaders only).
    pub ctty: Option<RawFd>,
    pub cwd: std::ffi::CString,
    pub root: Option<std::ffi::CString>,
    pub umask: u32,
    pub comm: [u8; 16],
    /// Set for a zombie: the stub reports ready, then dies this way.
    pub zombie_exit: Option<u32>,
}

pub struct StubShared {
    pub tasks: Vec<StubPlan>,
    pub ready_fd: RawFd,
    pub pool_base: RawFd,
    pub trampoline: u64,
}

/// Failure codes a stub reports through the ready pipe.
pub const STUB_CLONE: u32 = 1;
pub const STUB_CHDIR: u32 = 2;
pub const STUB_CHROOT: u32 = 3;
pub const STUB_TRAMPOLINE: u32 = 4;
pub const STUB_DUP: u32 = 5;
pub const STUB_SESSION: u32 = 6;

/// The `syscall; int3` sequence every injection runs.
pub const TRAMPOLINE_CODE: [u8; 3] = [0x0f, 0x05, 0xcc];
pub const TRAMPOLINE_LEN: u64 = 2 * 4096;

#[repr(C)]
#[derive(Default)]
pub struct CloneArgs {
    pub flags: u64,
    pub pidfd: u64,
    pub child_tid: u64,
    pub parent_tid: u64,
    pub exit_signal: u64,
    pub stack: u64,
    pub stack_size: u64,
    pub tls: u64,
    pub set_tid: u64,
    pub set_tid_size: u64,
    pub cgroup: u64,
}

/// clone3 as a fork with a chosen pid. Returns 0 in the child, the pid in the parent, or
/// -errno.
pub fn fork_with_pid(pid: u32) -> i64 {
    let tid = [pid as libc::pid_t];
    let args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        set_tid: tid.as_ptr() as u64,
        set_tid_size: 1,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM behaves like fork: the child gets a copy of our memory and
    // returns 0 on the same stack. `args` and `tid` outlive the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const CloneArgs,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if r < 0 {
        -(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL) as i64)
    } else {
        r
    }
}

fn errno() -> u32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0) as u32
}

fn report(fd: RawFd, pid: u32, code: u32, err: u32) {
    let mut rec = [0u8; 12];
    rec[0..4].copy_from_slice(&pid.to_ne_bytes());
    rec[4..8].copy_from_slice(&code.to_ne_bytes());
    rec[8..12].copy_from_slice(&err.to_ne_bytes());
    // SAFETY: write(2) of a local buffer; records are smaller than PIPE_BUF, so atomic.
    unsafe { libc::write(fd, rec.as_ptr().cast(), rec.len()) };
}

fn fail(sh: &StubShared, pid: u32, code: u32, err: u32) -> ! {
    report(sh.ready_fd, pid, code, err);
    // SAFETY: _exit never returns and runs no atexit handlers (this is a forked copy).
    unsafe { libc::_exit(1) }
}

/// Runs the stub of task `idx`. Never returns.
pub fn run(sh: &StubShared, idx: usize) -> ! {
    let t = &sh.tasks[idx];
    // SAFETY: raw syscalls on integers and on buffers owned by the plan, in a single-threaded
    // child; nothing here touches memory another thread could use.
    unsafe {
        // If the restorer dies before seizing us, die too.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong);
        if t.sid == t.pid && libc::setsid() < 0 {
            fail(sh, t.pid, STUB_SESSION, errno());
        }
        // Before forking: children inherit the controlling terminal, and cannot acquire it.
        if let Some(fd) = t.ctty {
            if libc::ioctl(fd, libc::TIOCSCTTY, 0) < 0 {
                fail(sh, t.pid, STUB_SESSION, errno());
            }
        }
        if t.pgid == t.pid && t.sid != t.pid && libc::setpgid(0, 0) < 0 {
            fail(sh, t.pid, STUB_SESSION, errno());
        }
        for &c in &t.children {
            let child = &sh.tasks[c];
            match fork_with_pid(child.pid) {
                0 => run(sh, c),
                r if r < 0 => fail(sh, child.pid, STUB_CLONE, (-r) as u32),
                _ => {
                    // Like a shell, make a group leader from both sides, so a sibling forked
                    // next can join the group whichever of them runs first.
                    if child.pgid == child.pid && child.sid != child.pid {
                        libc::setpgid(child.pid as libc::pid_t, child.pid as libc::pid_t);
                    }
                }
            }
        }
        if t.pgid != t.pid && t.pgid_in_tree && libc::getpgid(0) as u32 != t.pgid {
            // The group leader is an ancestor (or its descendant created before us); a group
            // that cannot be joined is reported. A group led from outside the tree (a shell's)
            // is not ours to join: the task stays in the restorer's group.
            if libc::setpgid(0, t.pgid as libc::pid_t) < 0 {
                fail(sh, t.pid, STUB_SESSION, errno());
            }
        }
        if let Some(status) = t.zombie_exit {
            libc::prctl(libc::PR_SET_NAME, t.comm.as_ptr());
            report(sh.ready_fd, t.pid, 0, 0);
            let sig = (status & 0x7f) as libc::c_int;
            if sig != 0 {
                libc::signal(sig, libc::SIG_DFL);
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, sig);
                libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
                libc::syscall(libc::SYS_tgkill, t.pid, t.pid, sig);
            }
            libc::_exit(((status >> 8) & 0xff) as libc::c_int);
        }
        if let Some(root) = &t.root {
            if libc::chroot(root.as_ptr()) < 0 {
                fail(sh, t.pid, STUB_CHROOT, errno());
            }
        }
        if libc::chdir(t.cwd.as_ptr()) < 0 {
            fail(sh, t.pid, STUB_CHDIR, errno());
        }
        libc::umask(t.umask as libc::mode_t);
        for &(target, pool, cloexec) in &t.fds {
            if libc::dup2(pool, target) < 0 {
                fail(sh, t.pid, STUB_DUP, errno());
            }
            if cloexec {
                libc::fcntl(target, libc::F_SETFD, libc::FD_CLOEXEC);
            }
        }
        // Close everything that is neither a target fd, nor the pool (closed later by
        // injection, after mmap has used it), nor the ready pipe.
        // Target fds are all below pool_base; the pool and the ready pipe are above it.
        let mut keep: Vec<RawFd> = t.fds.iter().map(|f| f.0).collect();
        keep.sort_unstable();
        let mut next: RawFd = 0;
        for &k in &keep {
            if k > next {
                libc::syscall(libc::SYS_close_range, next as u32, (k - 1) as u32, 0u32);
            }
            next = k + 1;
        }
        if next < sh.pool_base {
            libc::syscall(
                libc::SYS_close_range,
                next as u32,
                (sh.pool_base - 1) as u32,
                0u32,
            );
        }
        libc::prctl(libc::PR_SET_NAME, t.comm.as_ptr());
        let tr = libc::mmap(
            sh.trampoline as *mut libc::c_void,
            TRAMPOLINE_LEN as usize,
            libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE,
            -1,
            0,
        );
        if tr != sh.trampoline as *mut libc::c_void {
            fail(sh, t.pid, STUB_TRAMPOLINE, errno());
        }
        std::ptr::copy_nonoverlapping(
            TRAMPOLINE_CODE.as_ptr(),
            tr.cast::<u8>(),
            TRAMPOLINE_CODE.len(),
        );
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        // All but SIGTRAP: the single steps of injection force SIGTRAPs, and a forced signal
        // that is blocked has its (restored) handler reset to SIG_DFL.
        libc::sigdelset(&mut all, libc::SIGTRAP);
        libc::sigprocmask(libc::SIG_SETMASK, &all, std::ptr::null_mut());
        report(sh.ready_fd, t.pid, 0, 0);
        libc::close(sh.ready_fd);
        loop {
            libc::pause();
        }
    }
}
