//! pidfds: pidfd_open(2) and pidfd_getfd(2). Neither libc (only the syscall numbers) nor nix
//! 0.30 wraps them, so they are hand-written here; everything else calls these.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// A pidfd for process `pid` (close-on-exec, as every pidfd is).
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open(2) with integers; no memory is passed.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_long, 0 as libc::c_long) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// A copy of fd `fd` of the process behind `pidfd`: the same open file description, in our
/// table (close-on-exec).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_getfd(2) with integers; `pidfd` is a live fd for the duration of the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_getfd,
            pidfd.as_raw_fd() as libc::c_long,
            fd as libc::c_long,
            0 as libc::c_long,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn copies_our_own_fd() {
        let me = pidfd_open(std::process::id()).expect("pidfd_open of ourselves");
        let file = std::fs::File::open("/proc/self/status").expect("open");
        let copy = pidfd_getfd(me.as_fd(), file.as_raw_fd()).expect("pidfd_getfd");
        assert_ne!(copy.as_raw_fd(), file.as_raw_fd());
    }
}
