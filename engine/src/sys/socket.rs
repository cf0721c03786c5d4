//! Socket calls nix 0.30 lacks, for net/. nix has socket/bind/connect/send/recvmsg/sendmsg and
//! most options; what it lacks is here, defined once:
//! - the options CRIU's socket dump needs and nix has no type for (SO_DOMAIN, SO_PROTOCOL,
//!   SO_PEEK_OFF, SO_RCVLOWAT, TCP_CORK, TCP_TIMESTAMP, TCP_REPAIR_QUEUE, TCP_QUEUE_SEQ),
//!   declared with nix's own `sockopt_impl!` so they go through nix's getsockopt/setsockopt;
//! - struct options whose length the kernel may shorten (TCP_INFO: nix asserts the full
//!   length) or that are arrays (TCP_REPAIR_OPTIONS): [`get_struct`], [`set_struct`],
//!   [`set_array`];
//! - listen(2) with any backlog (nix's `Backlog` refuses values above SOMAXCONN, which the
//!   kernel takes and caps at net.core.somaxconn);
//! - a `UnixAddr` for a name exactly as UNIX_DIAG gave it (trailing NUL included);
//! - the socket queue ioctls (SIOCINQ/SIOCOUTQ/SIOCOUTQNSD), through nix's ioctl macros;
//! - recvmsg/sendmsg with SCM_RIGHTS returning `OwnedFd`s.

use std::io::{self, IoSlice, IoSliceMut};
use std::mem::{size_of, zeroed, MaybeUninit};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{
    recvmsg, sendmsg, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrLike, UnixAddr,
};
use nix::{getsockopt_impl, setsockopt_impl, sockopt_impl};

use super::cvt;

sockopt_impl!(
    /// SO_DOMAIN: the address family.
    SoDomain, GetOnly, libc::SOL_SOCKET, libc::SO_DOMAIN, libc::c_int);
sockopt_impl!(
    /// SO_TYPE as the kernel's number (nix's `SockType` option maps it to an enum that knows
    /// no SOCK_DCCP or SOCK_PACKET).
    SoType, GetOnly, libc::SOL_SOCKET, libc::SO_TYPE, libc::c_int);
sockopt_impl!(
    /// SO_PROTOCOL: the protocol number.
    SoProtocol, GetOnly, libc::SOL_SOCKET, libc::SO_PROTOCOL, libc::c_int);
sockopt_impl!(
    /// SO_PEEK_OFF: where MSG_PEEK starts (-1: off).
    PeekOff, Both, libc::SOL_SOCKET, libc::SO_PEEK_OFF, libc::c_int);
sockopt_impl!(
    /// SO_RCVLOWAT
    RcvLowat, Both, libc::SOL_SOCKET, libc::SO_RCVLOWAT, libc::c_int);
sockopt_impl!(
    /// SO_PASSSEC: receive the sender's security context (SCM_SECURITY).
    PassSec, Both, libc::SOL_SOCKET, libc::SO_PASSSEC, bool);
sockopt_impl!(
    /// SO_NO_CHECK: no UDP checksums sent.
    NoCheck, Both, libc::SOL_SOCKET, libc::SO_NO_CHECK, bool);
sockopt_impl!(
    /// TCP_CORK
    TcpCork, Both, libc::IPPROTO_TCP, libc::TCP_CORK, libc::c_int);
sockopt_impl!(
    /// TCP_TIMESTAMP: the connection's timestamp offset.
    TcpTimestamp, Both, libc::IPPROTO_TCP, libc::TCP_TIMESTAMP, libc::c_int);
sockopt_impl!(
    /// TCP_REPAIR_QUEUE: which queue TCP_QUEUE_SEQ and sends apply to (repair mode).
    TcpRepairQueue, Both, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, libc::c_int);
sockopt_impl!(
    /// TCP_QUEUE_SEQ: the sequence number of the chosen queue (repair mode).
    TcpQueueSeq, Both, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ, libc::c_int);

sockopt_impl!(
    /// IP_PKTINFO: IPv4 datagrams come with where they were addressed (IP_PKTINFO cmsgs).
    IpPktInfo, Both, libc::IPPROTO_IP, libc::IP_PKTINFO, libc::c_int);
sockopt_impl!(
    /// IPV6_RECVPKTINFO: IPv6 datagrams come with where they were addressed.
    Ipv6RecvPktInfo, Both, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, libc::c_int);
sockopt_impl!(
    /// IPV6_FREEBIND (Linux 4.15): a bind to an address not (yet) local.
    Ipv6Freebind, Both, libc::IPPROTO_IPV6, libc::IPV6_FREEBIND, libc::c_int);
sockopt_impl!(
    /// IP_TOS
    IpTos, Both, libc::IPPROTO_IP, libc::IP_TOS, libc::c_int);
sockopt_impl!(
    /// IP_TTL (reads the route's default when none was set).
    IpTtl, Both, libc::IPPROTO_IP, libc::IP_TTL, libc::c_int);
/// SO_BUF_LOCK (Linux 5.14; libc has no name for it): which buffer sizes are locked against
/// the kernel's autotuning (1 send, 2 receive).
pub const SO_BUF_LOCK: libc::c_int = 72;
sockopt_impl!(
    /// SO_BUF_LOCK
    BufLock, Both, libc::SOL_SOCKET, SO_BUF_LOCK, libc::c_int);

/// Marks a type as plain data: all-zero is a valid value and any bytes the kernel writes are.
///
/// # Safety
/// Implement only for `repr(C)` structs of integers (or arrays of them).
pub unsafe trait Plain: Copy {}
// SAFETY: C structs of integers.
unsafe impl Plain for libc::tcp_info {}
// SAFETY: a C int.
unsafe impl Plain for libc::c_int {}
// SAFETY: repr(C) of u32s.
unsafe impl Plain for RepairWindow {}
// SAFETY: repr(C) of u32s.
unsafe impl Plain for RepairOpt {}
// SAFETY: an integer (the words of an ICMP type filter).
unsafe impl Plain for u32 {}

/// `struct tcp_repair_window` (TCP_REPAIR_WINDOW).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct RepairWindow {
    pub snd_wl1: u32,
    pub snd_wnd: u32,
    pub max_window: u32,
    pub rcv_wnd: u32,
    pub rcv_wup: u32,
}

/// `struct tcp_repair_opt`, one element of TCP_REPAIR_OPTIONS.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct RepairOpt {
    pub code: u32,
    pub val: u32,
}

/// A struct option, zero-filled past what the kernel wrote (it writes less than the struct
/// when it knows fewer fields, as TCP_INFO on an older kernel).
pub fn get_struct<T: Plain>(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<T> {
    let mut v = MaybeUninit::<T>::zeroed();
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into our zeroed value.
    cvt(unsafe { libc::getsockopt(fd.as_raw_fd(), level, name, v.as_mut_ptr().cast(), &mut len) })?;
    // SAFETY: zeroed, then partly written by the kernel: both valid for a Plain type.
    Ok(unsafe { v.assume_init() })
}

/// Sets a struct option from `v` (its full size).
pub fn set_struct<T: Plain>(fd: BorrowedFd<'_>, level: i32, name: i32, v: &T) -> io::Result<()> {
    set_array(fd, level, name, std::slice::from_ref(v))
}

/// Sets an option whose value is an array of structs (TCP_REPAIR_OPTIONS).
pub fn set_array<T: Plain>(fd: BorrowedFd<'_>, level: i32, name: i32, v: &[T]) -> io::Result<()> {
    // SAFETY: setsockopt reads size_of_val(v) bytes from the slice.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            v.as_ptr().cast(),
            std::mem::size_of_val(v) as libc::socklen_t,
        )
    })
    .map(drop)
}

/// The classic BPF filter attached to a socket (SO_GET_FILTER), each `struct sock_filter` as
/// the u64 of its 8 bytes (CRIU's `so_filter`); empty when none is attached.
pub fn get_filter(fd: BorrowedFd<'_>) -> io::Result<Vec<u64>> {
    // With a length of 0 the kernel says how many instructions there are (in the length).
    let mut count: libc::socklen_t = 0;
    // SAFETY: a zero-length query writes nothing but the count into `count`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            std::ptr::null_mut(),
            &mut count,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    if count == 0 {
        return Ok(Vec::new());
    }
    let mut insns = vec![0u64; count as usize];
    // The length is in instructions, not bytes.
    let mut len = count;
    // SAFETY: the kernel copies at most `len` 8-byte instructions into our buffer of `count`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            insns.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    insns.truncate(len as usize);
    Ok(insns)
}

/// Attaches a classic BPF filter given as [`get_filter`] returns it.
pub fn attach_filter(fd: BorrowedFd<'_>, insns: &[u64]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: u16::try_from(insns.len()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?,
        filter: insns.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: setsockopt reads the sock_fprog, whose pointer covers `len` instructions of
    // `insns` (8 bytes each, the layout of struct sock_filter), alive for the call.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// listen(2) with the backlog as given (the kernel caps it at net.core.somaxconn).
pub fn listen(fd: BorrowedFd<'_>, backlog: u32) -> io::Result<()> {
    let backlog = backlog.min(i32::MAX as u32) as libc::c_int;
    // SAFETY: listen(2) with integers.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), backlog) }).map(drop)
}

/// A unix address with `name`'s bytes as they are (a path, or `\0` and an abstract name),
/// truncated to `sun_path`.
pub fn unix_addr(name: &[u8]) -> UnixAddr {
    // SAFETY: sockaddr_un is plain data, for which all-zero is valid.
    let mut a: libc::sockaddr_un = unsafe { zeroed() };
    a.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let n = name.len().min(a.sun_path.len());
    for (d, s) in a.sun_path.iter_mut().zip(&name[..n]) {
        *d = *s as libc::c_char;
    }
    let len = (size_of::<libc::sa_family_t>() + n) as libc::socklen_t;
    // SAFETY: `a` is a sockaddr_un whose first `len` bytes are initialized.
    unsafe { UnixAddr::from_raw((&a as *const libc::sockaddr_un).cast(), Some(len)) }
        .expect("a sockaddr_un of AF_UNIX within its size")
}

/// The peer's address through SO_PEERNAME, which, unlike getpeername(2), still answers for a
/// TCP socket closed after it was connected. `family`: the socket's (the kernel refuses a
/// buffer longer than the address).
pub fn peer_name(fd: BorrowedFd<'_>, family: i32) -> io::Result<nix::sys::socket::SockaddrStorage> {
    // SAFETY: sockaddr_storage is plain data, for which all-zero is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = match family {
        libc::AF_INET => size_of::<libc::sockaddr_in>(),
        _ => size_of::<libc::sockaddr_in6>(),
    } as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `ss` and the length into `len`.
    cvt(unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERNAME,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    })?;
    // SAFETY: the kernel initialized the first `len` bytes of `ss`, a sockaddr.
    unsafe {
        nix::sys::socket::SockaddrStorage::from_raw(
            (&ss as *const libc::sockaddr_storage).cast(),
            Some(len),
        )
    }
    .ok_or_else(|| io::Error::from_raw_os_error(libc::EAFNOSUPPORT))
}

/// Sends `packet`, a whole IP packet (header included), to `to` through a raw socket marked
/// `mark` (SO_MARK, for a firewall rule to tell it apart). IPPROTO_RAW implies the header is
/// the caller's, in both families (IPv6 since Linux 4.5).
pub fn send_raw_ip(packet: &[u8], to: std::net::IpAddr, mark: u32) -> io::Result<()> {
    use nix::sys::socket::{sendto, setsockopt, socket, sockopt, AddressFamily, SockFlag};
    use nix::sys::socket::{SockProtocol, SockType, SockaddrIn, SockaddrIn6};
    let family = match to {
        std::net::IpAddr::V4(_) => AddressFamily::Inet,
        std::net::IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let raw = socket(
        family,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::Raw,
    )?;
    setsockopt(&raw, sockopt::Mark, &mark)?;
    let sent = match to {
        std::net::IpAddr::V4(a) => {
            let dst = SockaddrIn::from(std::net::SocketAddrV4::new(a, 0));
            sendto(raw.as_raw_fd(), packet, &dst, MsgFlags::empty())
        }
        std::net::IpAddr::V6(a) => {
            let dst = SockaddrIn6::from(std::net::SocketAddrV6::new(a, 0, 0, 0));
            sendto(raw.as_raw_fd(), packet, &dst, MsgFlags::empty())
        }
    }?;
    if sent != packet.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("raw send: {sent} of {} bytes", packet.len()),
        ));
    }
    Ok(())
}

nix::ioctl_read_bad!(siocinq, libc::FIONREAD, libc::c_int);
nix::ioctl_read_bad!(siocoutq, libc::TIOCOUTQ, libc::c_int);
nix::ioctl_read_bad!(siocoutqnsd, 0x894B, libc::c_int);

/// Which socket queue to measure.
#[derive(Debug, Clone, Copy)]
pub enum Queue {
    /// Bytes to read (SIOCINQ, the same number as FIONREAD); on a datagram socket, the size
    /// of the next datagram.
    In,
    /// Bytes sent and not acknowledged yet, or not sent (SIOCOUTQ).
    Out,
    /// Bytes not sent yet (SIOCOUTQNSD).
    OutNotSent,
}

/// How many bytes are in a queue of socket `fd`.
pub fn queued(fd: BorrowedFd<'_>, q: Queue) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    let fd = fd.as_raw_fd();
    // SAFETY: each ioctl writes one int into `n`; `fd` is live for the call.
    unsafe {
        match q {
            Queue::In => siocinq(fd, &mut n),
            Queue::Out => siocoutq(fd, &mut n),
            Queue::OutNotSent => siocoutqnsd(fd, &mut n),
        }
    }?;
    Ok(n.max(0) as usize)
}

/// What one recvmsg read: the byte count, the descriptors that came with it (now ours) and
/// whether control data was truncated.
pub struct Received {
    pub bytes: usize,
    pub fds: Vec<OwnedFd>,
    pub truncated: bool,
}

/// The kernel's limit of descriptors in one SCM_RIGHTS message (SCM_MAX_FD).
pub const SCM_MAX_FD: usize = 253;

/// recvmsg(2) into `buf` with room for SCM_MAX_FD descriptors (installed close-on-exec).
/// When control data was truncated nix cannot walk it: the descriptors of that message are
/// not taken (the caller gives up on the socket).
pub fn recv_with_rights(
    fd: BorrowedFd<'_>,
    buf: &mut [u8],
    flags: MsgFlags,
) -> io::Result<Received> {
    let mut cmsg = nix::cmsg_space!([RawFd; SCM_MAX_FD]);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = recvmsg::<()>(
        fd.as_raw_fd(),
        &mut iov,
        Some(&mut cmsg),
        flags | MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    let truncated = msg.flags.contains(MsgFlags::MSG_CTRUNC);
    let mut fds = Vec::new();
    if !truncated {
        for c in msg.cmsgs()? {
            if let ControlMessageOwned::ScmRights(raw) = c {
                // SAFETY: SCM_RIGHTS installed these fds in our table for us alone.
                fds.extend(raw.into_iter().map(|r| unsafe { OwnedFd::from_raw_fd(r) }));
            }
        }
    }
    Ok(Received {
        bytes: msg.bytes,
        fds,
        truncated,
    })
}

/// sendmsg(2) of `data` with `fds` as SCM_RIGHTS; how many bytes went.
pub fn send_with_rights(
    fd: BorrowedFd<'_>,
    data: &[u8],
    fds: &[RawFd],
    flags: MsgFlags,
) -> io::Result<usize> {
    let rights = [ControlMessage::ScmRights(fds)];
    Ok(sendmsg::<()>(
        fd.as_raw_fd(),
        &[IoSlice::new(data)],
        &rights,
        flags,
        None,
    )?)
}
