//! The syscall seam: every raw syscall of the engine is meant to go through this module.
//! Where nix has the call it is used (ptrace basics, fcntl, sockets, termios, ...); what nix
//! lacks is hand-written here, once: clone3 with set_tid ([`clone`]), kcmp ([`kcmp`]),
//! pidfd_open/pidfd_getfd ([`pidfd`]), fsopen/fsconfig/fsmount ([`mount`]), the ptrace
//! requests nix has no wrapper for and syscall injection ([`ptrace`]), the tuned
//! process_vm_readv/writev loops ([`mem`]), the socket options and calls nix has no type or
//! form for ([`socket`]), the pty ioctls ([`tty`]), flock ([`lock`]) and the special-file
//! calls of files/ ([`anon`]: signalfd for any mask, TFD_IOC_SET_TICKS, mq_open as an fd,
//! inotify watch numbers, open_by_handle_at). Signatures take `BorrowedFd`/return `OwnedFd`
//! rather than raw fd numbers.

pub mod anon;
pub mod clone;
pub mod fd;
pub mod kcmp;
pub mod lock;
pub mod mem;
pub mod mount;
pub mod pidfd;
pub mod ptrace;
pub mod socket;
pub mod tty;

use std::io;

/// Turns a libc return value into a `Result`: negative means errno.
pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// tgkill(2): sends `sig` to thread `tid` of process `tgid`. Neither nix (which has kill and
/// pthread_kill) nor libc wraps it.
pub fn tgkill(tgid: u32, tid: u32, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: tgkill(2) with integer arguments.
    let r = unsafe {
        libc::syscall(
            libc::SYS_tgkill,
            tgid as libc::c_long,
            tid as libc::c_long,
            sig as libc::c_long,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
