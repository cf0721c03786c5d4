//! Descriptor-table helpers, through nix's fcntl.

use std::io;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg};

/// A close-on-exec duplicate of `fd` numbered `min` or above (F_DUPFD_CLOEXEC).
pub fn dup_above(fd: BorrowedFd<'_>, min: i32) -> io::Result<OwnedFd> {
    let n = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(min))?;
    // SAFETY: F_DUPFD_CLOEXEC returned a fresh fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// A duplicate of `fd` numbered `min` or above that is inherited across exec and by forked
/// children (F_DUPFD): for the fds that restore stubs inherit.
pub fn dup_above_inheritable(fd: BorrowedFd<'_>, min: i32) -> io::Result<OwnedFd> {
    let n = fcntl(fd, FcntlArg::F_DUPFD(min))?;
    // SAFETY: F_DUPFD returned a fresh fd, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// A close-on-exec duplicate, numbered `min` or above, of fd number `fd` of our table that
/// we do not own: one the caller of the engine handed over (`--inherit-fd`, its terminal).
pub fn dup_inherited(fd: RawFd, min: i32) -> io::Result<OwnedFd> {
    // SAFETY: the borrow lasts for the one fcntl call below; a number that is not open makes
    // it fail with EBADF.
    let b = unsafe { BorrowedFd::borrow_raw(fd) };
    dup_above(b, min)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::{AsFd, AsRawFd};

    #[test]
    fn duplicates_above() {
        let f = std::fs::File::open("/proc/self/status").expect("open");
        let d = dup_above(f.as_fd(), 100).expect("dup");
        assert!(d.as_raw_fd() >= 100);
    }
}
