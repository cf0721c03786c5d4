//! clone3 with a chosen pid (`set_tid`), which neither libc nor nix wraps: hand-written.

/// `struct clone_args` of clone3(2).
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

/// clone3 as a fork with a chosen pid, plus `flags` (CLONE_PARENT: a sibling of the caller).
/// Returns 0 in the child, the pid in the parent, or -errno. Async-signal-safe (no
/// allocation, no lock): restore stubs call it in the children of other raw clones.
pub fn fork_with_pid(pid: u32, flags: u64) -> i64 {
    let tid = [pid as libc::pid_t];
    let args = CloneArgs {
        flags,
        // With CLONE_PARENT the kernel takes our own exit signal and refuses any other.
        exit_signal: if flags & libc::CLONE_PARENT as u64 != 0 {
            0
        } else {
            libc::SIGCHLD as u64
        },
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
        -(errno() as i64)
    } else {
        r
    }
}

/// The calling thread's errno, read without allocating.
pub fn errno() -> i32 {
    // SAFETY: __errno_location returns the calling thread's errno slot, always valid.
    unsafe { *libc::__errno_location() }
}
