//! The new mount API calls the engine uses (fsopen, fsconfig CREATE, fsmount), which neither
//! libc (only the syscall numbers) nor nix 0.30 wraps: hand-written.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

const FSOPEN_CLOEXEC: libc::c_long = 1;
const FSCONFIG_CMD_CREATE: libc::c_long = 6;
const FSMOUNT_CLOEXEC: libc::c_long = 1;

fn owned(r: libc::c_long) -> io::Result<OwnedFd> {
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// fsopen(2): a filesystem context for `fstype` (close-on-exec).
pub fn fsopen(fstype: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: fsopen(2) reads the NUL-terminated name; returns a new fd.
    owned(unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) })
}

/// fsconfig(2) FSCONFIG_CMD_CREATE: creates the superblock of the context.
pub fn fsconfig_create(fs: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: fsconfig(2) CREATE takes no key or value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            fs.as_raw_fd() as libc::c_long,
            FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0 as libc::c_long,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// fsmount(2): a detached mount of the context's filesystem (close-on-exec).
pub fn fsmount(fs: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // SAFETY: fsmount(2) with integers; returns a new fd.
    owned(unsafe {
        libc::syscall(
            libc::SYS_fsmount,
            fs.as_raw_fd() as libc::c_long,
            FSMOUNT_CLOEXEC,
            0 as libc::c_long,
        )
    })
}
