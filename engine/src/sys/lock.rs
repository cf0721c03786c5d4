//! flock(2) for a lock that must outlive the restorer's handle: nix 0.30 deprecates its
//! `flock` function, and its replacement `Flock` unlocks when dropped, while a restored lock
//! goes with the fd into the task. OFD and POSIX locks go through nix's fcntl.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

/// Takes a flock on `fd`'s open file description without waiting (LOCK_NB).
pub fn flock_nb(fd: BorrowedFd<'_>, exclusive: bool) -> io::Result<()> {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock(2) with integers on a live fd.
    if unsafe { libc::flock(fd.as_raw_fd(), op | libc::LOCK_NB) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
