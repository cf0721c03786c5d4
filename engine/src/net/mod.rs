//! Sockets: unix and inet (TCP through TCP_REPAIR, UDP).

pub mod inet;
pub mod unix;

use std::os::fd::{AsRawFd, OwnedFd};

/// The address family of a socket (`SO_DOMAIN`); -1 if it cannot be read.
pub fn family(sock: &OwnedFd) -> i32 {
    let mut v: libc::c_int = -1;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_DOMAIN) writes one int into `v`, whose size `len` gives.
    let r = unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        -1
    } else {
        v
    }
}
