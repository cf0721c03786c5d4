//! Sockets: unix, inet (TCP through TCP_REPAIR, UDP), netlink and packet.

pub mod inet;
pub mod netlink;
pub mod packet;
pub mod unix;

use std::os::fd::AsFd;

use nix::sys::socket::getsockopt;

use crate::sys::socket::SoDomain;

/// A socket's buffer sizes for its image (`SO_SNDBUF`, `SO_RCVBUF`; 0 when unreadable), the
/// only socket options the netlink and packet kinds keep.
pub(crate) fn buffer_opts(sock: impl AsFd) -> crate::images::pb::SkOptsEntry {
    use nix::sys::socket::sockopt::{RcvBuf, SndBuf};
    crate::images::pb::SkOptsEntry {
        so_sndbuf: getsockopt(&sock.as_fd(), SndBuf).unwrap_or(0) as u32,
        so_rcvbuf: getsockopt(&sock.as_fd(), RcvBuf).unwrap_or(0) as u32,
        ..Default::default()
    }
}

/// Gives a new socket its buffer sizes (best effort, as for other sockets: the kernel may cap
/// them; it doubles what it is given, hence the halves) and, with O_NONBLOCK in `flags`, its
/// non-blocking mode.
pub(crate) fn set_buffers_and_mode(
    sock: impl AsFd,
    opts: &crate::images::pb::SkOptsEntry,
    flags: u32,
) -> nix::Result<()> {
    use nix::sys::socket::{setsockopt, sockopt::RcvBuf, sockopt::SndBuf};
    let fd = sock.as_fd();
    if opts.so_sndbuf != 0 {
        let _ = setsockopt(&fd, SndBuf, &(opts.so_sndbuf as usize / 2));
    }
    if opts.so_rcvbuf != 0 {
        let _ = setsockopt(&fd, RcvBuf, &(opts.so_rcvbuf as usize / 2));
    }
    if flags & libc::O_NONBLOCK as u32 != 0 {
        nix::fcntl::fcntl(
            fd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
    }
    Ok(())
}

/// The address family of a socket (`SO_DOMAIN`); -1 if it cannot be read.
pub fn family(sock: impl AsFd) -> i32 {
    getsockopt(&sock.as_fd(), SoDomain).unwrap_or(-1)
}
