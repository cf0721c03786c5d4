//! Small helpers shared by the modules that make raw syscalls.

pub mod clone;
pub mod mem;
pub mod ptrace;

use std::io;

/// Turns a libc return value into a `Result`: negative means errno.
pub fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}
