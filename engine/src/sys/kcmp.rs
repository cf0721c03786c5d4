//! kcmp(2): whether two tasks share a kernel object. Neither libc nor nix wraps it.

use std::cmp::Ordering;
use std::io;
use std::os::fd::RawFd;

/// The kernel objects kcmp compares (`enum kcmp_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Open file descriptions, of fd `idx1` of the first task and `idx2` of the second.
    File { fd1: RawFd, fd2: RawFd },
    /// Address spaces.
    Vm,
    /// File descriptor tables.
    Files,
    /// cwd, root and umask.
    Fs,
    /// Signal handler tables.
    Sighand,
    /// IO contexts.
    Io,
    /// SysV semaphore undo lists.
    Sysvsem,
}

impl Kind {
    fn raw(self) -> (libc::c_long, libc::c_long, libc::c_long) {
        match self {
            Kind::File { fd1, fd2 } => (0, fd1 as libc::c_long, fd2 as libc::c_long),
            Kind::Vm => (1, 0, 0),
            Kind::Files => (2, 0, 0),
            Kind::Fs => (3, 0, 0),
            Kind::Sighand => (4, 0, 0),
            Kind::Io => (5, 0, 0),
            Kind::Sysvsem => (6, 0, 0),
        }
    }
}

/// How the objects of `pid1` and `pid2` compare in kcmp's (stable, obfuscated) order: Equal
/// when they are the same object; None when they differ but the kernel gives no order.
pub fn kcmp(pid1: u32, pid2: u32, kind: Kind) -> io::Result<Option<Ordering>> {
    let (ty, idx1, idx2) = kind.raw();
    // SAFETY: kcmp only compares kernel objects; no memory is passed for these kinds.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1 as libc::c_long,
            pid2 as libc::c_long,
            ty,
            idx1,
            idx2,
        )
    };
    order(r)
}

/// Whether the `toff`-th target registered under fd number `tfd` in epoll `epfd` of `pid` is
/// the file open at fd `fd` of `pid` (KCMP_EPOLL_TFD): an epoll keeps a target whose fd number
/// was closed (or reused). A closed `fd` is no match.
pub fn epoll_target_at(pid: u32, epfd: RawFd, tfd: u32, toff: u32, fd: RawFd) -> io::Result<bool> {
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot {
        efd: epfd as u32,
        tfd,
        toff,
    };
    // SAFETY: kcmp reads the slot struct from our memory, which outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid as libc::c_long,
            pid as libc::c_long,
            KCMP_EPOLL_TFD,
            fd as libc::c_long,
            &slot as *const Slot,
        )
    };
    match order(r) {
        Err(e) if e.raw_os_error() == Some(libc::EBADF) => Ok(false),
        o => o.map(|o| o == Some(Ordering::Equal)),
    }
}

/// Whether `pid1` and `pid2` share the object.
pub fn same(pid1: u32, pid2: u32, kind: Kind) -> io::Result<bool> {
    kcmp(pid1, pid2, kind).map(|o| o == Some(Ordering::Equal))
}

fn order(r: libc::c_long) -> io::Result<Option<Ordering>> {
    match r {
        0 => Ok(Some(Ordering::Equal)),
        1 => Ok(Some(Ordering::Less)),
        2 => Ok(Some(Ordering::Greater)),
        3 => Ok(None),
        _ if r < 0 => Err(io::Error::last_os_error()),
        _ => Err(io::Error::from_raw_os_error(libc::EINVAL)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn same_and_different_files() {
        let me = std::process::id();
        let a = std::fs::File::open("/proc/self/status").expect("open");
        let b = a.try_clone().expect("dup");
        let c = std::fs::File::open("/proc/self/status").expect("open");
        let same = kcmp(
            me,
            me,
            Kind::File {
                fd1: a.as_raw_fd(),
                fd2: b.as_raw_fd(),
            },
        );
        assert_eq!(same.expect("kcmp"), Some(Ordering::Equal));
        let other = kcmp(
            me,
            me,
            Kind::File {
                fd1: a.as_raw_fd(),
                fd2: c.as_raw_fd(),
            },
        );
        assert_ne!(other.expect("kcmp"), Some(Ordering::Equal));
        assert!(super::same(me, me, Kind::Vm).expect("kcmp"));
    }
}
