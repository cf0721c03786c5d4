//! Sockets: unix, inet (TCP through TCP_REPAIR, UDP) and netlink.

pub mod inet;
pub mod netlink;
pub mod packet;
pub mod unix;

use std::os::fd::AsFd;

use nix::sys::socket::getsockopt;

use crate::sys::socket::SoDomain;

/// The address family of a socket (`SO_DOMAIN`); -1 if it cannot be read.
pub fn family(sock: impl AsFd) -> i32 {
    getsockopt(&sock.as_fd(), SoDomain).unwrap_or(-1)
}
