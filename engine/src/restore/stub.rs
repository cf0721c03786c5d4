//! The code a freshly forked task runs before the restorer takes it over: fork its own
//! children with their dumped PIDs, join its session and group, place its files, map the
//! trampoline page, report ready and wait to be seized.
//!
//! The fork-safety rule: between clone3 and the stop for the tracer, only async-signal-safe
//! work. The restorer may be multi-threaded, and the child of a raw clone3 holds a copy of
//! every lock another thread held at that instant (malloc's arenas, stdio, the logger...),
//! which nobody will ever release; glibc's cached thread id is stale there too. So nothing in
//! [`run`] allocates (no Vec, String, format!, CString::new, std::fs), takes a lock (no
//! println, no log), may panic (no indexing: `get`), or calls a glibc wrapper beyond
//! `_exit`: only raw `libc::syscall` numbers on memory the plan computed before the fork.

use std::os::fd::RawFd;

/// What one task's stub does; computed by the restorer before forking.
pub struct StubPlan {
    pub pid: u32,
    pub pgid: u32,
    /// The group leader is a task of the tree (else the task keeps the restorer's group).
    pub pgid_in_tree: bool,
    /// The group's leader died before the dump (a group of the tree's own session that no
    /// task leads): the stub makes the group again, with a short-lived helper of that pid.
    pub pgid_leaderless: bool,
    pub sid: u32,
    /// Plan indices of the children it forks, in order.
    pub children: Vec<usize>,
    /// How many of the first children are forked before its setsid: they were born in the
    /// session it had then (see restore::sessions).
    pub before_setsid: usize,
    pub role: Role,
    /// Forked by a session helper, which exits once its children are forked: it is then
    /// reparented to the root, as it was before the dump.
    pub reparented: bool,
    /// Becomes a child subreaper before forking (the root, when dumped as one), so that the
    /// children of session helpers are reparented to it.
    pub subreaper: bool,
    /// (target fd, pool fd, close-on-exec) triples.
    pub fds: Vec<(RawFd, RawFd, bool)>,
    /// Pool fd of the pty slave to make the controlling terminal (session leaders only).
    pub ctty: Option<RawFd>,
    pub cwd: std::ffi::CString,
    /// A pool fd of the cwd when it was deleted (a ghost directory, removed before the fork):
    /// changed into by fd, not by path.
    pub cwd_fd: Option<RawFd>,
    pub root: Option<std::ffi::CString>,
    pub umask: u32,
    pub comm: [u8; 16],
    /// Set for a zombie: the stub reports ready, then dies this way.
    pub zombie_exit: Option<u32>,
    /// Forked with `CLONE_FILES`: the fd table is its parent's, which the parent sets up.
    pub clone_files: bool,
    /// Its fd table is used by other tasks too: the ready pipe stays open in it for them
    /// (closed with the pool, by injection).
    pub table_shared: bool,
    /// Areas to map before forking the children, for the restorer to fill: see `mm::premap`.
    pub premap: Vec<StubPremap>,
    /// It has premapped areas (its own or its parent's): it reports, then waits for the
    /// restorer to fill them before it forks.
    pub premap_wait: bool,
    /// With nested mount namespaces (see ns::mnt_nested): the one it enters before forking,
    /// 0 the tree's, i + 1 the i-th nested.
    pub mntns: Option<usize>,
}

/// What a plan entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A task of the tree.
    Task,
    /// A session helper (see restore::sessions): leads its session again if its pid is the
    /// session's id, forks its children, exits. `any_pid`: its pid is only a first choice.
    Helper { any_pid: bool },
}

/// One area a stub maps before forking: anonymous, or a pool fd's file at an offset.
#[derive(Debug, Clone, Copy)]
pub struct StubPremap {
    pub at: u64,
    pub len: u64,
    pub prot: u32,
    /// Extra mmap flags (MAP_NORESERVE).
    pub flags: u32,
    /// (pool fd, offset) of a private file mapping.
    pub file: Option<(RawFd, u64)>,
}

pub struct StubShared {
    pub tasks: Vec<StubPlan>,
    pub ready_fd: RawFd,
    pub pool_base: RawFd,
    pub trampoline: u64,
    /// The tree's mount namespace, which the root enters (see ns::mnt_sys).
    pub mounts: Option<crate::ns::mnt_sys::StubMounts>,
    /// The root unshares a cgroup namespace, rooted where it is (the tree owned one).
    pub new_cgroupns: bool,
    /// The `cgroup.procs` files (NUL-terminated) the root joins first, so that the namespace
    /// is rooted at its dumped cgroups (see cgroup::cgroupns_root_procs).
    pub cgroupns_procs: Vec<std::ffi::CString>,
    /// A shared page of one u32 per task: set by the restorer once it has filled that task's
    /// premapped areas (a futex word). 0 when nothing is premapped.
    pub gate: u64,
}

/// Failure codes a stub reports through the ready pipe.
pub const STUB_CLONE: u32 = 1;
pub const STUB_CHDIR: u32 = 2;
pub const STUB_CHROOT: u32 = 3;
pub const STUB_TRAMPOLINE: u32 = 4;
pub const STUB_DUP: u32 = 5;
pub const STUB_SESSION: u32 = 6;
/// Another step of the stub's setup failed (prctl, the signal mask, a bad plan index).
pub const STUB_SETUP: u32 = 7;
/// Entering the tree's mount namespace, the pivot into its root, or a mount of its init.
pub const STUB_MOUNT: u32 = 8;
/// Not a failure: the premapped areas are mapped and wait to be filled (errno is 0).
pub const STUB_PREMAPPED: u32 = 9;
/// Mapping a premapped area failed.
pub const STUB_PREMAP: u32 = 10;

/// The `syscall; int3` sequence every injection runs.
pub const TRAMPOLINE_CODE: [u8; 3] = [0x0f, 0x05, 0xcc];
pub const TRAMPOLINE_LEN: u64 = 2 * 4096;

pub use crate::sys::clone::fork_with_pid;

/// Forks the root (`fork_with_pid(pid, flags)`) from a short-lived intermediate that joined the
/// tree's user namespace `user` first, so that the root's pid namespace belongs to it (else
/// `runc exec`, which enters it from inside, is refused) and the whole tree is born in it. The
/// root is the child of the intermediate's parent (CLONE_PARENT): ours, or, for a sibling root
/// (CLONE_PARENT in `flags`), our parent's, the intermediate being our sibling then. Returns 0
/// in the root (which then runs its stub), its host pid in the caller, or -errno.
pub fn fork_in_userns(user: RawFd, pid: u32, flags: u64) -> std::io::Result<i64> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let w_raw = std::os::fd::AsRawFd::as_raw_fd(&w);
    let sibling = flags & libc::CLONE_PARENT as u64 != 0;
    let args = crate::sys::clone::CloneArgs {
        flags: if sibling {
            libc::CLONE_PARENT as u64
        } else {
            0
        },
        exit_signal: if sibling { 0 } else { libc::SIGCHLD as u64 },
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork; the intermediate runs raw syscalls only (the
    // restorer may be multi-threaded) and ends in _exit, or becomes the root's stub.
    let mid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const crate::sys::clone::CloneArgs,
            std::mem::size_of::<crate::sys::clone::CloneArgs>(),
        )
    };
    if mid == 0 {
        // SAFETY: raw syscalls on integers and a local buffer, in the single-threaded child.
        unsafe {
            let res: i64 = if libc::syscall(libc::SYS_setns, user, libc::CLONE_NEWUSER) != 0 {
                -(crate::sys::clone::errno() as i64)
            } else {
                fork_with_pid(pid, flags | libc::CLONE_PARENT as u64)
            };
            if res == 0 {
                // The root: the caller's `match` is not ours to return to; run the stub.
                return Ok(0);
            }
            let b = res.to_ne_bytes();
            libc::syscall(libc::SYS_write, w_raw, b.as_ptr(), b.len());
            libc::_exit(0);
        }
    }
    if mid < 0 {
        return Err(std::io::Error::last_os_error());
    }
    drop(w);
    let mut b = [0u8; 8];
    let n = nix::unistd::read(&r, &mut b)?;
    if !sibling {
        // SAFETY: waitpid of the intermediate just forked, into a local.
        unsafe {
            let mut st = 0;
            libc::waitpid(mid as libc::pid_t, &mut st, libc::__WALL);
        }
    }
    if n != 8 {
        return Err(std::io::Error::other(
            "the intermediate died before forking the root",
        ));
    }
    Ok(i64::from_ne_bytes(b))
}

/// A raw syscall's result: the value, or errno. Async-signal-safe.
fn sc(r: libc::c_long) -> Result<libc::c_long, u32> {
    if r < 0 {
        Err(crate::sys::clone::errno() as u32)
    } else {
        Ok(r)
    }
}

/// `struct kernel_sigaction` of rt_sigaction(2) (x86_64), for resetting a handler to SIG_DFL,
/// which needs no restorer.
#[repr(C)]
struct KernelSigaction {
    handler: usize,
    flags: u64,
    restorer: usize,
    mask: u64,
}

/// The kernel's sigset size for rt_sigprocmask/rt_sigaction.
const SIGSET_SIZE: libc::c_long = 8;

fn report(fd: RawFd, pid: u32, code: u32, err: u32) {
    let mut rec = [0u8; 12];
    rec[0..4].copy_from_slice(&pid.to_ne_bytes());
    rec[4..8].copy_from_slice(&code.to_ne_bytes());
    rec[8..12].copy_from_slice(&err.to_ne_bytes());
    // SAFETY: write(2) of a local buffer; records are smaller than PIPE_BUF, so atomic. A failed
    // report cannot be reported: the restorer then sees the stub exit instead.
    unsafe { libc::syscall(libc::SYS_write, fd, rec.as_ptr(), rec.len()) };
}

/// A raw syscall's result, or the stub fails with `code` and errno.
fn check(sh: &StubShared, pid: u32, r: libc::c_long, code: u32) -> libc::c_long {
    match sc(r) {
        Ok(v) => v,
        Err(errno) => fail(sh, pid, code, errno),
    }
}

fn fail(sh: &StubShared, pid: u32, code: u32, err: u32) -> ! {
    report(sh.ready_fd, pid, code, err);
    // SAFETY: _exit never returns and runs no atexit handlers (this is a forked copy); it is
    // async-signal-safe.
    unsafe { libc::_exit(1) }
}

/// Runs the stub of task `idx`, forked by `parent`. Never returns.
///
/// Everything here is async-signal-safe (see the module comment): raw syscalls on integers and
/// on memory the plan already holds, no allocation, no panic path (indices are checked with
/// `get`, failures go to `fail`).
pub fn run(sh: &StubShared, idx: usize, parent: libc::pid_t) -> ! {
    let Some(t) = sh.tasks.get(idx) else {
        // SAFETY: as in `fail`; no plan means no pid to report under.
        unsafe { libc::_exit(1) }
    };
    let pid = t.pid;
    let check = |r: libc::c_long, code: u32| check(sh, pid, r, code);
    // SAFETY: raw syscalls on integers and on buffers owned by the plan (or local), in a
    // single-threaded child; nothing here touches memory another thread could use.
    unsafe {
        if t.reparented {
            wait_reparented(sh, t, parent);
        } else {
            // If the restorer dies before seizing us, die too.
            check(
                libc::syscall(
                    libc::SYS_prctl,
                    libc::PR_SET_PDEATHSIG as libc::c_long,
                    libc::SIGKILL as libc::c_long,
                ),
                STUB_SETUP,
            );
            // The restorer (or our parent stub) died before the line above took effect: no
            // one will ever seize us, and no signal will come. Go now.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
        }
        if let Role::Helper { .. } = t.role {
            run_helper(sh, t);
        }
        // The root enters the tree's mount namespace before forking: its children inherit it.
        if idx == 0 {
            // Before the mounts: a cgroup mount shows the namespace of whoever makes it.
            if sh.new_cgroupns {
                for procs in &sh.cgroupns_procs {
                    let fd = check(
                        libc::syscall(
                            libc::SYS_openat,
                            libc::AT_FDCWD as libc::c_long,
                            procs.as_ptr(),
                            (libc::O_WRONLY | libc::O_CLOEXEC) as libc::c_long,
                        ),
                        STUB_MOUNT | (10 << 8),
                    );
                    // "0": the writer itself.
                    check(
                        libc::syscall(libc::SYS_write, fd, b"0".as_ptr(), 1usize),
                        STUB_MOUNT | (10 << 8),
                    );
                    libc::syscall(libc::SYS_close, fd);
                }
                check(
                    libc::syscall(libc::SYS_unshare, libc::CLONE_NEWCGROUP),
                    STUB_MOUNT | (5 << 8),
                );
            }
            if let Some(m) = &sh.mounts {
                enter_mounts(sh, pid, m);
            }
        }
        if let (Some(ns), Some(m)) = (t.mntns, &sh.mounts) {
            enter_nested(sh, pid, m, ns);
        }
        if t.subreaper {
            check(
                libc::syscall(libc::SYS_prctl, libc::PR_SET_CHILD_SUBREAPER, 1),
                STUB_SETUP,
            );
        }
        // Before any fork: every child inherits the areas filled.
        if t.premap_wait {
            premap(sh, t, idx);
        }
        let (born_here, after) = t.children.split_at(t.before_setsid.min(t.children.len()));
        fork_children(sh, t, born_here, pid as libc::pid_t);
        if t.sid == t.pid {
            check(libc::syscall(libc::SYS_setsid), STUB_SESSION);
        }
        // Before forking: children inherit the controlling terminal, and cannot acquire it.
        if let Some(fd) = t.ctty {
            check(
                libc::syscall(libc::SYS_ioctl, fd, libc::TIOCSCTTY, 0 as libc::c_long),
                STUB_SESSION,
            );
        }
        if t.pgid == t.pid && t.sid != t.pid {
            check(libc::syscall(libc::SYS_setpgid, 0, 0), STUB_SESSION);
        }
        fork_children(sh, t, after, pid as libc::pid_t);
        if t.pgid != t.pid
            && t.pgid_in_tree
            && check(libc::syscall(libc::SYS_getpgid, 0), STUB_SESSION) as u32 != t.pgid
        {
            // The group leader is an ancestor (or its descendant created before us); a group
            // that cannot be joined is reported. A group led from outside the tree (a shell's)
            // is not ours to join: the task stays in the restorer's group.
            check(
                libc::syscall(libc::SYS_setpgid, 0, t.pgid as libc::pid_t),
                STUB_SESSION,
            );
        }
        if t.pgid != t.pid
            && t.pgid_leaderless
            && check(libc::syscall(libc::SYS_getpgid, 0), STUB_SESSION) as u32 != t.pgid
        {
            join_leaderless_group(sh, t);
        }
        if let Some(status) = t.zombie_exit {
            die_as_zombie(sh, t, status);
        }
        settle(sh, t);
    }
}

/// Forks `kids` (plan indices) with their pids; `me` is our pid as they see it. A session
/// helper among them is waited for: it exits once it has forked its own. Async-signal-safe.
fn fork_children(sh: &StubShared, t: &StubPlan, kids: &[usize], me: libc::pid_t) {
    for &c in kids {
        let Some(child) = sh.tasks.get(c) else {
            fail(sh, t.pid, STUB_SETUP, libc::EINVAL as u32)
        };
        let flags = if child.clone_files {
            libc::CLONE_FILES as u64
        } else {
            0
        };
        let mut want = child.pid;
        // SAFETY: raw syscalls on integers (see the module's fork-safety rule).
        unsafe {
            let r = loop {
                match fork_with_pid(want, flags) {
                    // A helper that needs no pid in particular takes the next free one.
                    r if r == -(libc::EEXIST as i64)
                        && child.role == (Role::Helper { any_pid: true })
                        && want < child.pid + 4096 =>
                    {
                        want += 1;
                    }
                    r => break r,
                }
            };
            match r {
                0 => run(sh, c, me),
                r if r < 0 => fail(sh, child.pid, STUB_CLONE, (-r) as u32),
                r => {
                    if let Role::Helper { .. } = child.role {
                        // Its children are forked when it exits; reaped here, it leaves no
                        // trace.
                        libc::syscall(
                            libc::SYS_wait4,
                            r,
                            std::ptr::null_mut::<libc::c_int>(),
                            libc::__WALL,
                            std::ptr::null_mut::<libc::rusage>(),
                        );
                    } else if child.pgid == child.pid && child.sid != child.pid {
                        // Like a shell, make a group leader from both sides, so a sibling
                        // forked next can join the group whichever of them runs first.
                        // Failure is fine here: the child's own setpgid decides (and is
                        // checked).
                        libc::syscall(libc::SYS_setpgid, child.pid, child.pid);
                    }
                }
            }
        }
    }
}

/// A session helper's stub: leads the session again if it has the session's id, forks its
/// children in it, exits (they are reparented to the root). Async-signal-safe.
fn run_helper(sh: &StubShared, t: &StubPlan) -> ! {
    // SAFETY: raw syscalls on integers (see the module's fork-safety rule).
    unsafe {
        if t.sid == t.pid {
            check(sh, t.pid, libc::syscall(libc::SYS_setsid), STUB_SESSION);
        }
        let me = libc::syscall(libc::SYS_getpid) as libc::pid_t;
        fork_children(sh, t, &t.children, me);
        libc::_exit(0)
    }
}

/// For a task forked by a session helper: waits until the helper has exited and the task is
/// the root's child again, then arms the parent-death signal on the root. Should the root be
/// gone by then (the restore failed), exits. Async-signal-safe.
fn wait_reparented(sh: &StubShared, t: &StubPlan, helper: libc::pid_t) {
    let root = sh.tasks.first().map_or(0, |r| r.pid) as libc::pid_t;
    // SAFETY: raw syscalls on integers and on a local timespec.
    unsafe {
        while libc::syscall(libc::SYS_getppid) as libc::pid_t == helper {
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 200_000,
            };
            libc::syscall(
                libc::SYS_nanosleep,
                &pause,
                std::ptr::null_mut::<libc::timespec>(),
            );
        }
        check(
            sh,
            t.pid,
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_PDEATHSIG as libc::c_long,
                libc::SIGKILL as libc::c_long,
            ),
            STUB_SETUP,
        );
        if libc::syscall(libc::SYS_getppid) as libc::pid_t != root {
            libc::_exit(1);
        }
    }
}

/// Maps this task's own premapped areas, reports, and waits until the restorer has filled them
/// and its inherited ones (its gate word turns non-zero): the children forked next inherit
/// them filled.
fn premap(sh: &StubShared, t: &StubPlan, idx: usize) {
    // SAFETY: raw syscalls on integers; the gate is the restorer's shared page, mapped before
    // the fork and holding one u32 per task (idx is a valid task index), read atomically.
    unsafe {
        for p in &t.premap {
            let (fd, off, anon) = match p.file {
                Some((fd, off)) => (fd as libc::c_long, off as libc::c_long, 0),
                None => (-1, 0, libc::MAP_ANONYMOUS),
            };
            let got = libc::syscall(
                libc::SYS_mmap,
                p.at,
                p.len,
                p.prot as libc::c_long,
                (libc::MAP_PRIVATE | anon | libc::MAP_FIXED_NOREPLACE) as libc::c_long
                    | p.flags as libc::c_long,
                fd,
                off,
            );
            if got == -1 {
                fail(sh, t.pid, STUB_PREMAP, crate::sys::clone::errno() as u32);
            }
            if got as u64 != p.at {
                fail(sh, t.pid, STUB_PREMAP, libc::EEXIST as u32);
            }
        }
        report(sh.ready_fd, t.pid, STUB_PREMAPPED, 0);
        let word = &*((sh.gate as *const std::sync::atomic::AtomicU32).add(idx));
        while word.load(std::sync::atomic::Ordering::Acquire) == 0 {
            // A shared (not private) futex: the restorer wakes it from another process.
            libc::syscall(
                libc::SYS_futex,
                word.as_ptr(),
                libc::FUTEX_WAIT,
                0u32,
                std::ptr::null::<libc::timespec>(),
            );
        }
    }
}

/// Joins process group `t.pgid`, whose leader died before the dump (CRIU makes such groups
/// with helper tasks too). The first member to come makes it: a helper forked with the
/// leader's pid leads a new group, the member joins it, and the helper is killed and reaped,
/// leaving the group to its members as before. Later members join it.
fn join_leaderless_group(sh: &StubShared, t: &StubPlan) {
    let pgid = t.pgid as libc::c_long;
    for _ in 0..100 {
        // SAFETY: raw syscalls on integers (see the module's fork-safety rule).
        unsafe {
            if libc::syscall(libc::SYS_setpgid, 0, pgid) == 0 {
                return;
            }
            match fork_with_pid(t.pgid, 0) {
                0 => {
                    // The helper: dies with its parent, whatever happens to it.
                    libc::syscall(libc::SYS_prctl, libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    libc::syscall(libc::SYS_setpgid, 0, 0);
                    loop {
                        libc::syscall(libc::SYS_pause);
                    }
                }
                // Another member's helper holds the pid: its group is being made.
                r if r == -(libc::EEXIST as i64) => {
                    let pause = libc::timespec {
                        tv_sec: 0,
                        tv_nsec: 1_000_000,
                    };
                    libc::syscall(
                        libc::SYS_nanosleep,
                        &pause,
                        std::ptr::null_mut::<libc::timespec>(),
                    );
                }
                r if r < 0 => fail(sh, t.pid, STUB_SESSION, (-r) as u32),
                helper => {
                    // Like a shell, from both sides: the group exists whichever runs first.
                    libc::syscall(libc::SYS_setpgid, helper, helper);
                    let joined = libc::syscall(libc::SYS_setpgid, 0, pgid);
                    libc::syscall(libc::SYS_kill, helper, libc::SIGKILL);
                    libc::syscall(
                        libc::SYS_wait4,
                        helper,
                        std::ptr::null_mut::<libc::c_int>(),
                        0,
                        std::ptr::null_mut::<libc::rusage>(),
                    );
                    check(sh, t.pid, joined, STUB_SESSION);
                    return;
                }
            }
        }
    }
    fail(sh, t.pid, STUB_SESSION, libc::EEXIST as u32)
}

/// Joins the tree's mount namespace, makes the init's own mounts under the root (the proc of
/// the tree's pid namespace and what lies under it; before the pivot, while the host's proc is
/// still visible, which a user namespace's proc mount requires), then pivots into the root
/// (runc's `pivot_root(".", ".")`: the old root stacks on the new one and is detached).
/// Async-signal-safe: raw syscalls on the strings the plan holds.
fn enter_mounts(sh: &StubShared, pid: u32, m: &crate::ns::mnt_sys::StubMounts) {
    // The failing step travels in the code's high bits (see wait_ready).
    let check = |r: libc::c_long, step: u32| check(sh, pid, r, STUB_MOUNT | (step << 8));
    let dot = c".".as_ptr();
    // SAFETY: raw syscalls on integers and on NUL-terminated strings the plan owns, in a
    // single-threaded child that shares no fs struct (clone3 without CLONE_FS).
    unsafe {
        check(
            libc::syscall(libc::SYS_setns, m.ns_fd, libc::CLONE_NEWNS),
            1,
        );
        // Kept for the tasks of nested namespaces' children (closed with the pool's fds).
        if m.nested.is_empty() {
            libc::syscall(libc::SYS_close, m.ns_fd);
        }
        for (i, l) in m.late.iter().enumerate() {
            check(late_mount(l), 16 + i as u32);
        }
        check(libc::syscall(libc::SYS_chdir, m.root.as_ptr()), 2);
        check(libc::syscall(libc::SYS_pivot_root, dot, dot), 3);
        check(libc::syscall(libc::SYS_umount2, dot, libc::MNT_DETACH), 4);
        check(libc::syscall(libc::SYS_chdir, c"/".as_ptr()), 2);
        // The nested namespaces' late mounts (their procs, of the pid namespace the init is
        // in), before any peer group exists that would carry them elsewhere.
        for (k, n) in m.nested.iter().enumerate() {
            check(
                libc::syscall(libc::SYS_setns, n.ns_fd, libc::CLONE_NEWNS),
                9,
            );
            for (i, l) in n.late.iter().enumerate() {
                check(late_mount(l), 16 + ((k as u32 + 1) << 8) + i as u32);
            }
            check(
                libc::syscall(libc::SYS_setns, m.ns_fd, libc::CLONE_NEWNS),
                1,
            );
        }
        // Propagation last: every mount is there, and a shared root could not be pivoted.
        for (i, s) in m.propagation.iter().enumerate() {
            use crate::ns::mnt_sys::StubStep;
            let (r, step) = match s {
                StubStep::Shared(t) => (set_propagation(t, libc::MS_SHARED, m.ns_fd), 6),
                StubStep::Slave(t) => (set_propagation(t, libc::MS_SLAVE, m.ns_fd), 7),
                StubStep::SetGroup { from, to } => {
                    let (fd, fp, ff) = mount_ref(from, libc::MOVE_MOUNT_F_EMPTY_PATH);
                    let (td, tp, tf) = mount_ref(to, libc::MOVE_MOUNT_T_EMPTY_PATH);
                    (
                        libc::syscall(
                            libc::SYS_move_mount,
                            fd,
                            fp,
                            td,
                            tp,
                            libc::MOVE_MOUNT_SET_GROUP | ff | tf,
                        ),
                        8,
                    )
                }
            };
            // The step's index too (see wait_ready), for the debug log's list.
            check(r, step | (1 << 16) | ((i as u32 & 0xfff) << 4));
        }
        for &fd in &m.mount_fds {
            libc::syscall(libc::SYS_close, fd);
        }
    }
}

/// One late mount: a detached bind attached (its fd then closed), or a mount. Returns the
/// syscall's result. Async-signal-safe.
fn late_mount(l: &crate::ns::mnt_sys::LateMount) -> libc::c_long {
    let null = std::ptr::null::<libc::c_char>();
    let ptr = |s: &Option<std::ffi::CString>| s.as_ref().map_or(null, |c| c.as_ptr());
    // SAFETY: raw syscalls on an fd and NUL-terminated strings the plan owns.
    unsafe {
        match l.tree_fd {
            Some(fd) => {
                let r = libc::syscall(
                    libc::SYS_move_mount,
                    fd,
                    c"".as_ptr(),
                    libc::AT_FDCWD,
                    l.target.as_ptr(),
                    libc::MOVE_MOUNT_F_EMPTY_PATH,
                );
                libc::syscall(libc::SYS_close, fd);
                r
            }
            None => libc::syscall(
                libc::SYS_mount,
                ptr(&l.source),
                l.target.as_ptr(),
                ptr(&l.fstype),
                l.flags as libc::c_ulong,
                ptr(&l.data),
            ),
        }
    }
}

/// Enters mount namespace `ns` of the tree (0 its own, i + 1 the i-th nested one, already
/// pivoted into its root by the restorer and given its late mounts by the init).
/// Async-signal-safe.
fn enter_nested(sh: &StubShared, pid: u32, m: &crate::ns::mnt_sys::StubMounts, ns: usize) {
    let fd = match ns {
        0 => m.ns_fd,
        i => match m.nested.get(i - 1) {
            Some(n) => n.ns_fd,
            None => fail(sh, pid, STUB_SETUP, 0),
        },
    };
    // SAFETY: setns(2) on an fd the plan holds, in a single-threaded child that shares no fs
    // struct.
    let r = unsafe { libc::syscall(libc::SYS_setns, fd, libc::CLONE_NEWNS) };
    check(sh, pid, r, STUB_MOUNT | (9 << 8));
}

/// A mount for a *at syscall: (dirfd, path, the flag saying the path is empty) for an fd on
/// its root, (AT_FDCWD, path, 0) for a path.
fn mount_ref(
    t: &crate::ns::mnt_sys::StubMount,
    empty_flag: libc::c_uint,
) -> (libc::c_int, *const libc::c_char, libc::c_uint) {
    match t {
        crate::ns::mnt_sys::StubMount::Fd(fd)
        | crate::ns::mnt_sys::StubMount::Nested { fd, .. } => (*fd, c"".as_ptr(), empty_flag),
        crate::ns::mnt_sys::StubMount::Path(p) => (libc::AT_FDCWD, p.as_ptr(), 0),
    }
}

/// mount_setattr(2)'s argument (linux/mount.h).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

/// The mount's propagation set to `kind` (MS_SHARED, MS_SLAVE) with mount_setattr(2), which
/// takes an fd on the mount as well as a path. Async-signal-safe.
/// A nested namespace's mount is set from inside it, then the init goes back to `home`.
fn set_propagation(t: &crate::ns::mnt_sys::StubMount, kind: u64, home: RawFd) -> libc::c_long {
    if let crate::ns::mnt_sys::StubMount::Nested { ns_fd, .. } = t {
        // SAFETY: setns(2) on fds the plan holds, in a single-threaded child with its own fs.
        let r = unsafe { libc::syscall(libc::SYS_setns, *ns_fd, libc::CLONE_NEWNS) };
        if r < 0 {
            return r;
        }
        let set = set_propagation_here(t, kind);
        // SAFETY: as above; the tree's namespace, whose root is the one pivoted into.
        let back = unsafe { libc::syscall(libc::SYS_setns, home, libc::CLONE_NEWNS) };
        return if set < 0 { set } else { back };
    }
    set_propagation_here(t, kind)
}

fn set_propagation_here(t: &crate::ns::mnt_sys::StubMount, kind: u64) -> libc::c_long {
    let (dfd, path, empty) = mount_ref(t, 1);
    let attr = MountAttr {
        attr_set: 0,
        attr_clr: 0,
        propagation: kind,
        userns_fd: 0,
    };
    let flags = if empty != 0 { libc::AT_EMPTY_PATH } else { 0 };
    // SAFETY: mount_setattr(2) reads the NUL-terminated path and `size` bytes of `attr`, both
    // live for the call.
    unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            dfd,
            path,
            flags as libc::c_uint,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    }
}

/// A zombie's stub: named, reported ready, then dead the way the task died. Async-signal-safe.
fn die_as_zombie(sh: &StubShared, t: &StubPlan, status: u32) -> ! {
    let check = |r: libc::c_long, code: u32| check(sh, t.pid, r, code);
    // SAFETY: raw syscalls on integers and on buffers of the plan or local.
    unsafe {
        check(
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_NAME as libc::c_long,
                t.comm.as_ptr(),
            ),
            STUB_SETUP,
        );
        report(sh.ready_fd, t.pid, 0, 0);
        let sig = (status & 0x7f) as libc::c_int;
        if sig != 0 {
            // Nobody is told of failures from here on (ready was reported): the exit
            // status the restorer checks when it reaps the zombie tells.
            let dfl = KernelSigaction {
                handler: libc::SIG_DFL,
                flags: 0,
                restorer: 0,
                mask: 0,
            };
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                &dfl as *const KernelSigaction,
                std::ptr::null_mut::<KernelSigaction>(),
                SIGSET_SIZE,
            );
            // checked_shl: no overflow panic path, even for a nonsense status.
            let set: u64 = 1u64.checked_shl((sig - 1) as u32).unwrap_or(0);
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_UNBLOCK,
                &set as *const u64,
                std::ptr::null_mut::<u64>(),
                SIGSET_SIZE,
            );
            libc::syscall(libc::SYS_tgkill, t.pid, t.pid, sig);
        }
        libc::_exit(((status >> 8) & 0xff) as libc::c_int);
    }
}

/// The rest of a live task's stub: root, cwd, umask, its fds, its name, the trampoline page;
/// then ready is reported and the stub waits to be seized. Async-signal-safe.
fn settle(sh: &StubShared, t: &StubPlan) -> ! {
    let check = |r: libc::c_long, code: u32| check(sh, t.pid, r, code);
    // SAFETY: raw syscalls on integers and on buffers of the plan or local, in a
    // single-threaded child; the trampoline copy writes into the page just mapped.
    unsafe {
        // cwd first: both paths are as the dumper saw them, from its own root, which a
        // chroot'ed task's cwd would no longer be under. chroot(2) leaves the cwd alone.
        match t.cwd_fd {
            Some(fd) => check(libc::syscall(libc::SYS_fchdir, fd), STUB_CHDIR),
            None => check(libc::syscall(libc::SYS_chdir, t.cwd.as_ptr()), STUB_CHDIR),
        };
        if let Some(root) = &t.root {
            check(libc::syscall(libc::SYS_chroot, root.as_ptr()), STUB_CHROOT);
        }
        // umask(2) cannot fail.
        libc::syscall(libc::SYS_umask, t.umask as libc::mode_t);
        // Close everything below the pool first: target fds are all below pool_base, the pool
        // (closed later by injection, after mmap has used it) and the ready pipe above it. The
        // targets are then made from the pool, so only they remain below pool_base. (Closing
        // first needs no sorted list of targets, which would have to be allocated.) A table
        // shared with the parent is the parent's to set up.
        if sh.pool_base > 0 && !t.clone_files {
            check(
                libc::syscall(libc::SYS_close_range, 0u32, (sh.pool_base - 1) as u32, 0u32),
                STUB_DUP,
            );
        }
        for &(target, pool, cloexec) in &t.fds {
            check(libc::syscall(libc::SYS_dup2, pool, target), STUB_DUP);
            if cloexec {
                check(
                    libc::syscall(
                        libc::SYS_fcntl,
                        target,
                        libc::F_SETFD,
                        libc::FD_CLOEXEC as libc::c_long,
                    ),
                    STUB_DUP,
                );
            }
        }
        check(
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_NAME as libc::c_long,
                t.comm.as_ptr(),
            ),
            STUB_SETUP,
        );
        let tr = libc::syscall(
            libc::SYS_mmap,
            sh.trampoline,
            TRAMPOLINE_LEN,
            (libc::PROT_READ | libc::PROT_WRITE | libc::PROT_EXEC) as libc::c_long,
            (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED_NOREPLACE) as libc::c_long,
            -1 as libc::c_long,
            0 as libc::c_long,
        );
        if tr == -1 {
            fail(
                sh,
                t.pid,
                STUB_TRAMPOLINE,
                crate::sys::clone::errno() as u32,
            );
        }
        if tr as u64 != sh.trampoline {
            // An old kernel without MAP_FIXED_NOREPLACE takes the address as a hint.
            fail(sh, t.pid, STUB_TRAMPOLINE, libc::EEXIST as u32);
        }
        std::ptr::copy_nonoverlapping(
            TRAMPOLINE_CODE.as_ptr(),
            tr as *mut u8,
            TRAMPOLINE_CODE.len(),
        );
        // All but SIGTRAP: the single steps of injection force SIGTRAPs, and a forced signal
        // that is blocked has its (restored) handler reset to SIG_DFL.
        let all: u64 = !(1u64 << (libc::SIGTRAP - 1));
        check(
            libc::syscall(
                libc::SYS_rt_sigprocmask,
                libc::SIG_SETMASK,
                &all as *const u64,
                std::ptr::null_mut::<u64>(),
                SIGSET_SIZE,
            ),
            STUB_SETUP,
        );
        report(sh.ready_fd, t.pid, 0, 0);
        // The restorer holds the read end; a failed close changes nothing it sees.
        if !t.table_shared {
            libc::syscall(libc::SYS_close, sh.ready_fd);
        }
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}
