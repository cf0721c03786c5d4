//! TCP and UDP sockets, IPv4 and IPv6: state read from a copy of the socket taken with
//! pidfd_getfd (the same socket, so getsockopt and TCP_REPAIR work on it), and re-created by
//! the restorer. Established TCP connections go through TCP_REPAIR.
//!
//! Before a connection is read, the caller locks it (an nftables rule, `stasis_netns::nftlock`,
//! dropping the peer's segments until the restore). Repair mode with a zero receive window is a
//! second guard only: an ACK the socket sends recomputes and reopens its window.

pub mod diag;
pub mod file;
pub mod halfclose;
mod ipopts;

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::sockopt::{
    Broadcast, DontRoute, Ipv6V6Only, KeepAlive, Linger, Mark, OobInline, PassCred, Priority,
    RcvBuf, RcvBufForce, ReceiveTimeout, ReuseAddr, ReusePort, SendTimeout, SndBuf, SndBufForce,
    TcpKeepCount, TcpKeepIdle, TcpKeepInterval, TcpMaxSeg, TcpNoDelay, TcpRepair,
};
use nix::sys::socket::{
    bind, connect, getpeername, getsockname, getsockopt, recv, send, setsockopt, AddressFamily,
    GetSockOpt, MsgFlags, SockType, SockaddrStorage,
};
use nix::sys::time::TimeVal;

use crate::images::pb;
use crate::sys::socket::{
    get_struct, queued, set_array, set_struct, Queue, RcvLowat, RepairOpt, RepairWindow, SoDomain,
    SoProtocol, SoType, TcpCork, TcpQueueSeq, TcpRepairQueue, TcpTimestamp,
};

/// A socket could not be read or re-created.
#[derive(Debug, thiserror::Error)]
pub enum InetError {
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("established TCP connection {local} -> {remote}: dump with --tcp-established")]
    EstablishedNeedsFlag { local: String, remote: String },
    #[error("TCP connection {local} -> {remote}: rebuilt in state {got}, not {want} (the peer's segment put back did not reach it)")]
    HalfClose {
        local: String,
        remote: String,
        want: u8,
        got: u8,
    },
    #[error("TCP socket {local} -> {remote} in state {state} (only listening, unconnected, connecting, established and half-closed ones are supported)")]
    TcpState {
        local: String,
        remote: String,
        state: u8,
    },
}

fn sys<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> InetError {
    let what = what.into();
    move |source| InetError::Sys {
        what,
        source: source.into(),
    }
}

/// A socket option the restore sets if it can: the kernel or our privileges may refuse it
/// (the *FORCE sizes need CAP_NET_ADMIN), and the socket works without it. Logged, not fatal.
fn best_effort(what: &str, r: nix::Result<()>) {
    if let Err(e) = r {
        log::debug!("{what} not restored: {e}");
    }
}

/// Address as CRIU stores it: the raw address as u32 words, and the port in host order.
fn addr_of(ss: &SockaddrStorage) -> (Vec<u32>, u32) {
    if let Some(a) = ss.as_sockaddr_in() {
        // s_addr: the address bytes in network order, read as a u32 in memory order.
        (vec![u32::from_ne_bytes(a.ip().octets())], a.port() as u32)
    } else if let Some(a) = ss.as_sockaddr_in6() {
        let words = a
            .ip()
            .octets()
            .chunks_exact(4)
            .map(|c| u32::from_ne_bytes(c.try_into().expect("4")))
            .collect();
        (words, a.port() as u32)
    } else {
        (Vec::new(), 0)
    }
}

/// The address of an image's words (as [`addr_of`] stores it).
fn ip_of(family: u32, addr: &[u32]) -> IpAddr {
    if family as i32 == libc::AF_INET {
        IpAddr::V4(Ipv4Addr::from(
            addr.first().copied().unwrap_or(0).to_ne_bytes(),
        ))
    } else {
        let mut b = [0u8; 16];
        for (i, w) in addr.iter().take(4).enumerate() {
            b[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        IpAddr::V6(Ipv6Addr::from(b))
    }
}

fn sockaddr(family: u32, addr: &[u32], port: u32) -> SockaddrStorage {
    let sa = match ip_of(family, addr) {
        IpAddr::V4(ip) => SocketAddr::V4(SocketAddrV4::new(ip, port as u16)),
        IpAddr::V6(ip) => SocketAddr::V6(SocketAddrV6::new(ip, port as u16, 0, 0)),
    };
    SockaddrStorage::from(sa)
}

fn show(family: u32, addr: &[u32], port: u32) -> String {
    if family as i32 == libc::AF_INET {
        let b = addr.first().copied().unwrap_or(0).to_ne_bytes();
        format!("{}.{}.{}.{}:{port}", b[0], b[1], b[2], b[3])
    } else {
        let b: Vec<u8> = addr.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let ip = std::net::Ipv6Addr::from(<[u8; 16]>::try_from(b.as_slice()).unwrap_or([0; 16]));
        format!("[{ip}]:{port}")
    }
}

use halfclose::{is_connection, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN};
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const TCPI_OPT_TIMESTAMPS: u32 = 1;
const TCPI_OPT_SACK: u32 = 2;
const TCPI_OPT_WSCALE: u32 = 4;

/// True if `fd` is an AF_INET or AF_INET6 socket.
pub fn is_inet(fd: BorrowedFd<'_>) -> bool {
    matches!(
        getsockopt(&fd, SoDomain),
        Ok(libc::AF_INET | libc::AF_INET6)
    )
}

/// A dumped established TCP connection, still locked (repair mode, zero window) until
/// [`TcpLock::release`] or until its copy is closed after the tree is killed.
pub struct TcpLock {
    sock: OwnedFd,
    window: RepairWindow,
}

impl TcpLock {
    /// The tree runs on: give the socket its window back and leave repair mode.
    pub fn release(self) {
        let fd = self.sock.as_fd();
        // Nothing more can be done if the kernel refuses: logged, and closing our copy after
        // the tree goes on is what is left.
        if let Err(e) = set_struct(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW, &self.window) {
            log::warn!("giving a locked connection its window back failed: {e}");
        }
        if let Err(e) = setsockopt(&fd, TcpRepair, &0) {
            log::warn!("leaving TCP repair mode failed: {e}");
        }
    }
}

/// What a dump of one inet socket yields.
pub struct Dumped {
    pub entry: pb::InetSkEntry,
    /// For an established connection: its queues (tcp-stream image) and the lock.
    pub stream: Option<(pb::TcpStreamEntry, Vec<u8>, Vec<u8>, TcpLock)>,
}

/// What the dump does with an established TCP connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Established {
    /// Reads it in repair mode, locked, for the restore to rebuild (`--tcp-established`).
    Repair,
    /// Records the socket only: the restore makes it a closed socket (`--tcp-close`).
    Close,
    /// Refuses it.
    Refuse,
}

/// Reads an inet socket through `sock`, a copy of the task's fd.
/// `lock(local_port, remote_port)` is called for an established connection before anything of
/// it is read, so that nothing reaches it from then on (the network lock).
pub fn dump(
    sock: OwnedFd,
    id: u32,
    ino: u64,
    flags: u32,
    established: Established,
    lock: &mut dyn FnMut(u16, u16) -> io::Result<()>,
    shutdowns: &mut diag::Shutdowns,
) -> Result<Dumped, InetError> {
    let fd = sock.as_fd();
    let family = getsockopt(&fd, SoDomain).map_err(sys("SO_DOMAIN"))? as u32;
    let ty = getsockopt(&fd, SoType).map_err(sys("SO_TYPE"))? as u32;
    let proto = getsockopt(&fd, SoProtocol).map_err(sys("SO_PROTOCOL"))? as u32;
    let (src, sport) =
        addr_of(&getsockname::<SockaddrStorage>(fd.as_raw_fd()).map_err(sys("getsockname"))?);
    let (mut dst, mut dport) = match getpeername::<SockaddrStorage>(fd.as_raw_fd()) {
        Ok(ss) => addr_of(&ss),
        Err(_) => (vec![0; src.len()], 0),
    };
    // A raw socket may be of protocol TCP too: it has no TCP state.
    let tcp = proto == libc::IPPROTO_TCP as u32 && ty == libc::SOCK_STREAM as u32;
    let (state, backlog) = if tcp {
        let info: libc::tcp_info =
            get_struct(fd, libc::IPPROTO_TCP, libc::TCP_INFO).map_err(sys("TCP_INFO"))?;
        (
            info.tcpi_state,
            if info.tcpi_state == TCP_LISTEN {
                info.tcpi_sacked
            } else {
                0
            },
        )
    } else {
        (
            if dport != 0 {
                TCP_ESTABLISHED
            } else {
                TCP_CLOSE
            },
            0,
        )
    };
    let local = show(family, &src, sport);
    // What CRIU does not keep either, said in the log so that a lost client can be explained.
    if tcp && state == TCP_LISTEN {
        let info: libc::tcp_info =
            get_struct(fd, libc::IPPROTO_TCP, libc::TCP_INFO).map_err(sys("TCP_INFO"))?;
        if info.tcpi_unacked > 0 {
            log::warn!(
                "listening socket {local} has {} connections waiting to be accepted: they are not kept, and their clients will see a reset",
                info.tcpi_unacked
            );
        }
    } else if !tcp {
        // The size of the next queued datagram; not knowing it only loses this warning.
        if queued(fd, Queue::In).unwrap_or(0) > 0 {
            log::warn!("UDP socket {local} has datagrams queued: they are not kept");
        }
    }
    let connection = tcp && is_connection(state.into());
    // getpeername(2) refuses a socket still connecting; SO_PEERNAME does not.
    if connection && dport == 0 {
        if let Ok(ss) = crate::sys::socket::peer_name(fd, family as i32) {
            (dst, dport) = addr_of(&ss);
        }
    }
    // A connection closed both ways keeps its peer's address (SO_PEERNAME): with
    // --tcp-established it is read and rebuilt as CRIU does, to come back with it; else it is
    // a closed socket without a peer, as before (an image naming a peer with no stream is one
    // CRIU could not restore).
    let closed_connection = tcp
        && state == TCP_CLOSE
        && established == Established::Repair
        && match crate::sys::socket::peer_name(fd, family as i32) {
            Ok(ss) => {
                (dst, dport) = addr_of(&ss);
                dport != 0
            }
            Err(_) => false,
        };
    let remote = show(family, &dst, dport);
    if tcp && !connection && !matches!(state, TCP_LISTEN | TCP_CLOSE) {
        return Err(InetError::TcpState {
            local,
            remote,
            state,
        });
    }
    if connection && established == Established::Refuse {
        return Err(InetError::EstablishedNeedsFlag { local, remote });
    }
    let opts = sk_opts(fd, tcp);
    let tcp_opts = tcp.then(|| pb::TcpOptsEntry {
        cork: Some(getsockopt(&fd, TcpCork).unwrap_or(0) != 0),
        nodelay: Some(getsockopt(&fd, TcpNoDelay).unwrap_or(false)),
        keepcnt: None,
        keepidle: None,
        keepintvl: None,
    });
    let v6only =
        (family as i32 == libc::AF_INET6).then(|| getsockopt(&fd, Ipv6V6Only).unwrap_or(false));
    let ip_opts = ipopts::read(fd, family, ty, proto);
    let entry = pb::InetSkEntry {
        id,
        ino: ino as u32,
        family,
        r#type: ty,
        proto,
        state: state as u32,
        src_port: sport,
        dst_port: dport,
        flags,
        backlog,
        src_addr: src,
        dst_addr: dst,
        fown: pb::FownEntry::default(),
        opts,
        v6only,
        ip_opts,
        ifname: None,
        ns_id: None,
        shutdown: shutdown_state(shutdowns, (family, proto, tcp, state), ino as u32, fd),
        tcp_opts,
    };
    let stream = if connection && established == Established::Repair {
        lock(sport as u16, dport as u16)
            .map_err(sys(format!("locking the network for {local} -> {remote}")))?;
        Some(dump_stream(sock, state)?)
    } else if closed_connection {
        // Nothing can reach a closed socket: no lock.
        Some(dump_stream(sock, state)?)
    } else {
        None
    };
    Ok(Dumped { entry, stream })
}

/// Whether `sock` has its read side shut down (poll's POLLRDHUP, at once).
fn read_shut_by_poll(sock: BorrowedFd<'_>) -> bool {
    let mut p = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLRDHUP,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd of ours, without waiting.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n == 1 && p.revents & libc::POLLRDHUP != 0
}

/// The socket options of the image (one that cannot be read is 0, as CRIU leaves it).
/// A datagram socket's or a closed TCP socket's shutdown state, from inet_diag (as CRIU's
/// `sk_shutdown`: 1 read, 2 write, 3 both); None when nothing is shut. An established TCP
/// connection's half-closes are its TCP state. Best effort: a socket sock_diag cannot report
/// keeps none (logged).
fn shutdown_state(
    shutdowns: &mut diag::Shutdowns,
    (family, proto, tcp, state): (u32, u32, bool, u8),
    ino: u32,
    sock: BorrowedFd<'_>,
) -> Option<i32> {
    if tcp && state != TCP_CLOSE {
        return None;
    }
    match shutdowns.of(family as u8, proto as u8, ino) {
        // A TCP socket closed after both sides shut down is unhashed: sock_diag no longer
        // lists it. Its read side shows in poll (POLLRDHUP); its write side cannot, and needs
        // not: a closed socket refuses writes with EPIPE either way. Made both, as it is.
        Ok(None) if tcp => read_shut_by_poll(sock).then_some(3),
        Ok(s) => s.filter(|&s| s != 0).map(i32::from),
        Err(e) => {
            log::warn!("shutdown state of socket {ino} (sock_diag): {e}");
            None
        }
    }
}

fn sk_opts(fd: BorrowedFd<'_>, tcp: bool) -> pb::SkOptsEntry {
    let zero = TimeVal::new(0, 0);
    let snd_tmo = getsockopt(&fd, SendTimeout).unwrap_or(zero);
    let rcv_tmo = getsockopt(&fd, ReceiveTimeout).unwrap_or(zero);
    let linger = getsockopt(&fd, Linger).unwrap_or(libc::linger {
        l_onoff: 0,
        l_linger: 0,
    });
    fn on<O: GetSockOpt<Val = bool>>(fd: BorrowedFd<'_>, o: O) -> Option<bool> {
        Some(getsockopt(&fd, o).unwrap_or(false))
    }
    pb::SkOptsEntry {
        so_sndbuf: getsockopt(&fd, SndBuf).unwrap_or(0) as u32,
        so_rcvbuf: getsockopt(&fd, RcvBuf).unwrap_or(0) as u32,
        so_snd_tmo_sec: snd_tmo.tv_sec() as u64,
        so_snd_tmo_usec: snd_tmo.tv_usec() as u64,
        so_rcv_tmo_sec: rcv_tmo.tv_sec() as u64,
        so_rcv_tmo_usec: rcv_tmo.tv_usec() as u64,
        reuseaddr: on(fd, ReuseAddr),
        so_priority: Some(getsockopt(&fd, Priority).unwrap_or(0) as u32),
        so_rcvlowat: Some(getsockopt(&fd, RcvLowat).unwrap_or(0) as u32),
        so_mark: Some(getsockopt(&fd, Mark).unwrap_or(0)),
        so_passcred: on(fd, PassCred),
        so_passsec: None,
        so_dontroute: on(fd, DontRoute),
        so_no_check: Some(getsockopt(&fd, crate::sys::socket::NoCheck).unwrap_or(false)),
        so_bound_dev: getsockopt(&fd, nix::sys::socket::sockopt::BindToDevice)
            .ok()
            .map(|d| d.to_string_lossy().into_owned())
            .filter(|d| !d.is_empty()),
        so_filter: crate::sys::socket::get_filter(fd).unwrap_or_default(),
        so_reuseport: on(fd, ReusePort),
        so_broadcast: on(fd, Broadcast),
        so_keepalive: on(fd, KeepAlive),
        tcp_keepcnt: tcp.then(|| getsockopt(&fd, TcpKeepCount).unwrap_or(0)),
        tcp_keepidle: tcp.then(|| getsockopt(&fd, TcpKeepIdle).unwrap_or(0)),
        tcp_keepintvl: tcp.then(|| getsockopt(&fd, TcpKeepInterval).unwrap_or(0)),
        so_oobinline: Some(getsockopt(&fd, OobInline).unwrap_or(false) as u32),
        so_linger: (linger.l_onoff != 0).then_some(linger.l_linger as u32),
        // A kernel before 5.14 has no such option: nothing to keep.
        so_buf_lock: getsockopt(&fd, crate::sys::socket::BufLock)
            .ok()
            .map(|v| v as u32),
    }
}

fn peek_queue(fd: BorrowedFd<'_>, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        let n = recv(fd.as_raw_fd(), &mut buf[got..], flags)?;
        if n == 0 {
            break;
        }
        got += n;
        if got < len {
            // MSG_PEEK always starts at the head: one call returns what it can at once.
            buf.truncate(got);
            break;
        }
    }
    Ok(buf)
}

/// `snd_wl1`, or `limit` when it lies after it in sequence space (which wraps).
fn wl1_at_most(snd_wl1: u32, limit: u32) -> u32 {
    if (snd_wl1.wrapping_sub(limit) as i32) > 0 {
        limit
    } else {
        snd_wl1
    }
}

fn queue_seq(fd: BorrowedFd<'_>, queue: i32) -> nix::Result<u32> {
    setsockopt(&fd, TcpRepairQueue, &queue)?;
    Ok(getsockopt(&fd, TcpQueueSeq)? as u32)
}

/// Locks the connection (repair mode, zero window) and reads its queues and sequence state.
fn dump_stream(
    sock: OwnedFd,
    state: u8,
) -> Result<(pb::TcpStreamEntry, Vec<u8>, Vec<u8>, TcpLock), InetError> {
    let fd = sock.as_fd();
    setsockopt(&fd, TcpRepair, &1).map_err(sys("TCP_REPAIR on"))?;
    let read_window = || -> Result<(RepairWindow, u32), InetError> {
        let window: RepairWindow = get_struct(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW)
            .map_err(sys("TCP_REPAIR_WINDOW"))?;
        let rcv_nxt = queue_seq(fd, TCP_RECV_QUEUE).map_err(sys("TCP_QUEUE_SEQ (receive)"))?;
        Ok((window, rcv_nxt))
    };
    let (mut window, mut rcv_nxt) = read_window()?;
    // A segment already on its way when the network lock went up can still land between the
    // read and the set, and the kernel then refuses the window as stale (EINVAL; seen once in
    // a thousand dumps of a busy redis): read both again and retry.
    let mut tries = 0;
    let locked = loop {
        let mut locked = window;
        locked.rcv_wnd = 0;
        locked.rcv_wup = rcv_nxt;
        // The kernel wants snd_wl1 (the sequence of the segment that last updated the send
        // window) no later than rcv_nxt + rcv_wnd. A segment the full receive queue dropped
        // still updated it past rcv_nxt (zdtm's socket-tcpbuf): with a zero window that is
        // refused. An earlier snd_wl1 only lets the next window update through.
        locked.snd_wl1 = wl1_at_most(locked.snd_wl1, rcv_nxt);
        match set_struct(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW, &locked) {
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) && tries < 5 => {
                log::debug!("zero window refused: {locked:?}, rcv_nxt {rcv_nxt}: read again");
                tries += 1;
                (window, rcv_nxt) = read_window()?;
            }
            r => break r.map(|()| locked),
        }
    };
    let lock = TcpLock { sock, window };
    let fd = lock.sock.as_fd();
    if let Err(e) = locked {
        lock.release();
        return Err(sys("locking the connection (zero window)")(e));
    }
    let result = (|| {
        // Read again now that nothing more is accepted: a segment that arrived between the read
        // above and the lock moved rcv_nxt, and its bytes are in the queue we peek below.
        let rcv_nxt = queue_seq(fd, TCP_RECV_QUEUE).map_err(sys("TCP_QUEUE_SEQ (receive)"))?;
        let inq = queued(fd, Queue::In).map_err(sys("SIOCINQ"))?;
        let inq_data = peek_queue(fd, inq).map_err(sys("reading the receive queue"))?;
        let write_seq = queue_seq(fd, TCP_SEND_QUEUE).map_err(sys("TCP_QUEUE_SEQ (send)"))?;
        let outq = queued(fd, Queue::Out).map_err(sys("SIOCOUTQ"))?;
        let mut unsent = queued(fd, Queue::OutNotSent).map_err(sys("SIOCOUTQNSD"))?;
        // Our FIN, not sent yet, is no data (CRIU does not count it either). The queue sizes
        // need no such care: they are what the peeks below return, data only.
        if halfclose::fins(state).ours {
            unsent = unsent.saturating_sub(1);
        }
        let outq_data = peek_queue(fd, outq).map_err(sys("reading the send queue"))?;
        let info: libc::tcp_info =
            get_struct(fd, libc::IPPROTO_TCP, libc::TCP_INFO).map_err(sys("TCP_INFO"))?;
        let mss = getsockopt(&fd, TcpMaxSeg).map_err(sys("TCP_MAXSEG"))?;
        let ts = getsockopt(&fd, TcpTimestamp).map_err(sys("TCP_TIMESTAMP"))?;
        let wscale = info.tcpi_snd_rcv_wscale;
        let entry = pb::TcpStreamEntry {
            inq_len: inq_data.len() as u32,
            inq_seq: rcv_nxt,
            outq_len: outq_data.len() as u32,
            outq_seq: write_seq,
            opt_mask: info.tcpi_options as u32,
            snd_wscale: (wscale & 0xf) as u32,
            mss_clamp: mss as u32,
            rcv_wscale: Some((wscale >> 4) as u32),
            timestamp: Some(ts as u32),
            cork: Some(getsockopt(&fd, TcpCork).unwrap_or(0) != 0),
            nodelay: Some(getsockopt(&fd, TcpNoDelay).unwrap_or(false)),
            unsq_len: Some(unsent as u32),
            snd_wl1: Some(window.snd_wl1),
            snd_wnd: Some(window.snd_wnd),
            max_window: Some(window.max_window),
            rcv_wnd: Some(window.rcv_wnd),
            rcv_wup: Some(window.rcv_wup),
        };
        Ok((entry, inq_data, outq_data))
    })();
    match result {
        Ok((e, i, o)) => Ok((e, i, o, lock)),
        Err(e) => {
            lock.release();
            Err(e)
        }
    }
}

fn apply_opts(fd: BorrowedFd<'_>, e: &pb::InetSkEntry) -> Result<(), InetError> {
    let o = &e.opts;
    let b = |v: Option<bool>| v.unwrap_or(false);
    setsockopt(&fd, ReuseAddr, &b(o.reuseaddr)).map_err(sys("SO_REUSEADDR"))?;
    setsockopt(&fd, ReusePort, &b(o.so_reuseport)).map_err(sys("SO_REUSEPORT"))?;
    setsockopt(&fd, KeepAlive, &b(o.so_keepalive)).map_err(sys("SO_KEEPALIVE"))?;
    setsockopt(&fd, Broadcast, &b(o.so_broadcast)).map_err(sys("SO_BROADCAST"))?;
    // The kernel doubles what it is given and reports the doubled value.
    let sndbuf = (o.so_sndbuf / 2) as usize;
    best_effort("SO_SNDBUFFORCE", setsockopt(&fd, SndBufForce, &sndbuf));
    let rcvbuf = (o.so_rcvbuf / 2) as usize;
    best_effort("SO_RCVBUFFORCE", setsockopt(&fd, RcvBufForce, &rcvbuf));
    let tv = |s: u64, u: u64| TimeVal::new(s as libc::time_t, u as libc::suseconds_t);
    let snd_tmo = tv(o.so_snd_tmo_sec, o.so_snd_tmo_usec);
    best_effort("SO_SNDTIMEO", setsockopt(&fd, SendTimeout, &snd_tmo));
    let rcv_tmo = tv(o.so_rcv_tmo_sec, o.so_rcv_tmo_usec);
    best_effort("SO_RCVTIMEO", setsockopt(&fd, ReceiveTimeout, &rcv_tmo));
    if let Some(p) = o.so_priority {
        best_effort("SO_PRIORITY", setsockopt(&fd, Priority, &(p as i32)));
    }
    if let Some(m) = o.so_mark.filter(|m| *m != 0) {
        best_effort("SO_MARK", setsockopt(&fd, Mark, &m));
    }
    if !o.so_filter.is_empty() {
        crate::sys::socket::attach_filter(fd, &o.so_filter).map_err(sys("SO_ATTACH_FILTER"))?;
    }
    if let Some(v) = o.so_rcvlowat.filter(|v| *v > 1) {
        setsockopt(&fd, RcvLowat, &(v as i32)).map_err(sys("SO_RCVLOWAT"))?;
    }
    if let Some(v) = o.so_no_check.filter(|v| *v) {
        setsockopt(&fd, crate::sys::socket::NoCheck, &v).map_err(sys("SO_NO_CHECK"))?;
    }
    if let Some(v) = o.so_dontroute.filter(|v| *v) {
        setsockopt(&fd, DontRoute, &v).map_err(sys("SO_DONTROUTE"))?;
    }
    if let Some(v) = o.so_oobinline.filter(|v| *v != 0) {
        setsockopt(&fd, OobInline, &true).map_err(sys(format!("SO_OOBINLINE {v}")))?;
    }
    if let Some(dev) = o.so_bound_dev.as_ref().filter(|d| !d.is_empty()) {
        let dev = std::ffi::OsString::from(dev);
        setsockopt(&fd, nix::sys::socket::sockopt::BindToDevice, &dev)
            .map_err(sys("SO_BINDTODEVICE"))?;
    }
    if let Some(l) = o.so_linger {
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: l as i32,
        };
        best_effort("SO_LINGER", setsockopt(&fd, Linger, &linger));
    }
    // After the sizes, which lock what they set: the dumped locks (none for a socket the
    // kernel autotunes) are put back, or the restored socket would never grow its buffers.
    if let Some(lock) = o.so_buf_lock {
        // A kernel before 5.14 cannot: the sizes stay locked, as they always were there.
        best_effort(
            "SO_BUF_LOCK",
            setsockopt(&fd, crate::sys::socket::BufLock, &(lock as i32)),
        );
    }
    if let Some(ip) = &e.ip_opts {
        ipopts::apply(fd, e.family, e.proto, ip)?;
    }
    if is_tcp(e) {
        if let Some(v) = o.tcp_keepcnt.filter(|v| *v != 0) {
            best_effort("TCP_KEEPCNT", setsockopt(&fd, TcpKeepCount, &v));
        }
        if let Some(v) = o.tcp_keepidle.filter(|v| *v != 0) {
            best_effort("TCP_KEEPIDLE", setsockopt(&fd, TcpKeepIdle, &v));
        }
        if let Some(v) = o.tcp_keepintvl.filter(|v| *v != 0) {
            best_effort("TCP_KEEPINTVL", setsockopt(&fd, TcpKeepInterval, &v));
        }
        if let Some(to) = &e.tcp_opts {
            setsockopt(&fd, TcpNoDelay, &b(to.nodelay)).map_err(sys("TCP_NODELAY"))?;
            let cork = b(to.cork) as i32;
            best_effort("TCP_CORK", setsockopt(&fd, TcpCork, &cork));
        }
    }
    Ok(())
}

/// A new socket of the image's family, type and protocol (close-on-exec). The protocol goes
/// to the kernel as dumped (nix names only some: UDP-Lite is not among them); a kernel
/// without it answers EPROTONOSUPPORT.
fn new_socket(e: &pb::InetSkEntry) -> Result<OwnedFd, InetError> {
    let bad = || sys("socket")(io::Error::from_raw_os_error(libc::EINVAL));
    let family = AddressFamily::from_i32(e.family as i32).ok_or_else(bad)?;
    let ty = SockType::try_from(e.r#type as i32).map_err(|_| bad())?;
    let proto = i32::try_from(e.proto).map_err(|_| bad())?;
    // SAFETY: socket(2) takes integers only; a non-negative result is a new fd we own.
    let fd = unsafe { libc::socket(family as i32, ty as i32 | libc::SOCK_CLOEXEC, proto) };
    if fd < 0 {
        return Err(sys("socket")(io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// Re-creates a socket: bound, listening, connected (UDP) or, with `stream`, an established
/// TCP connection rebuilt in repair mode, and left in it (see [`leave_repair`]).
pub fn restore(
    e: &pb::InetSkEntry,
    stream: Option<(&pb::TcpStreamEntry, &[u8], &[u8])>,
) -> Result<OwnedFd, InetError> {
    // Blocking while we build it (refilling queues must not stop halfway); the task's
    // O_NONBLOCK is applied at the end.
    let sock = new_socket(e)?;
    let fd = sock.as_fd();
    // A raw socket is bound to its protocol from the start, and the kernel then refuses
    // IPV6_V6ONLY: it keeps the default.
    if e.family as i32 == libc::AF_INET6 && e.r#type as i32 != libc::SOCK_RAW {
        if let Some(v6) = e.v6only {
            setsockopt(&fd, Ipv6V6Only, &v6).map_err(sys("IPV6_V6ONLY"))?;
        }
    }
    let local = show(e.family, &e.src_addr, e.src_port);
    let remote = show(e.family, &e.dst_addr, e.dst_port);
    if let Some((s, inq, outq)) = stream {
        let sock = restore_stream(sock, e, s, inq, outq, &local, &remote)?;
        return set_nonblock(sock, e.flags);
    }
    apply_opts(fd, e)?;
    // Bound with address reuse whatever the dump says, as CRIU does: a connection restored
    // before it (in repair mode, which forces reuse) may already hold the port of this
    // listener; the dumped value is put back once bound.
    // Port reuse likewise: of two listeners that share a port, one may have cleared
    // SO_REUSEPORT after both were bound.
    setsockopt(&fd, ReuseAddr, &true).map_err(sys("SO_REUSEADDR"))?;
    setsockopt(&fd, ReusePort, &true).map_err(sys("SO_REUSEPORT"))?;
    // A TCP socket bound but not listening may share its port with a connection of the old
    // tree still in TIME_WAIT: repair mode binds it whatever holds the port, as CRIU does.
    let closed_tcp = is_tcp(e) && e.state != TCP_LISTEN as u32;
    // Bound with IP_FREEBIND whatever the dump says, as CRIU does: the address may have
    // been bound under it and the flag cleared since. The dumped value is put back below.
    ipopts::set_freebind(fd, e.family, true).map_err(sys("IP_FREEBIND"))?;
    if e.src_port != 0 || e.src_addr.iter().any(|w| *w != 0) {
        if closed_tcp {
            setsockopt(&fd, TcpRepair, &1).map_err(sys("TCP_REPAIR on for bind"))?;
        }
        let ss = sockaddr(e.family, &e.src_addr, e.src_port);
        bind(fd.as_raw_fd(), &ss).map_err(sys(format!("bind {local}")))?;
        if closed_tcp {
            setsockopt(&fd, TcpRepair, &0).map_err(sys("TCP_REPAIR off after bind"))?;
        }
    }
    if e.state == TCP_LISTEN as u32 {
        crate::sys::socket::listen(fd, e.backlog.max(1)).map_err(sys(format!("listen {local}")))?;
    } else if !is_tcp(e) && e.dst_port != 0 {
        let ss = sockaddr(e.family, &e.dst_addr, e.dst_port);
        connect(fd.as_raw_fd(), &ss).map_err(sys(format!("connect {local} -> {remote}")))?;
    }
    let reuseport = e.opts.so_reuseport.unwrap_or(false);
    setsockopt(&fd, ReusePort, &reuseport).map_err(sys("SO_REUSEPORT"))?;
    dumped_reuse_and_freebind(fd, e)?;
    // Shut as it was (a datagram socket, or a closed TCP one): the kernel marks an
    // unconnected socket too, answering ENOTCONN.
    let how = match e.shutdown.unwrap_or(0) {
        1 => Some(nix::sys::socket::Shutdown::Read),
        2 => Some(nix::sys::socket::Shutdown::Write),
        3 => Some(nix::sys::socket::Shutdown::Both),
        _ => None,
    };
    let tcp_closed = is_tcp(e) && e.state == TCP_CLOSE as u32;
    if let Some(how) = how.filter(|_| !is_tcp(e) || tcp_closed) {
        match nix::sys::socket::shutdown(fd.as_raw_fd(), how) {
            Ok(()) | Err(nix::Error::ENOTCONN) => {}
            Err(err) => return Err(sys(format!("shutdown of {local}"))(err)),
        }
    }
    set_nonblock(sock, e.flags)
}

/// A TCP socket: of protocol TCP and a stream (a raw socket may be of protocol TCP too).
fn is_tcp(e: &pb::InetSkEntry) -> bool {
    e.proto == libc::IPPROTO_TCP as u32 && e.r#type == libc::SOCK_STREAM as u32
}

fn set_nonblock(sock: OwnedFd, flags: u32) -> Result<OwnedFd, InetError> {
    if flags & libc::O_NONBLOCK as u32 != 0 {
        fcntl(sock.as_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(sys("O_NONBLOCK"))?;
    }
    Ok(sock)
}

fn restore_stream(
    sock: OwnedFd,
    e: &pb::InetSkEntry,
    s: &pb::TcpStreamEntry,
    inq: &[u8],
    outq: &[u8],
    local: &str,
    remote: &str,
) -> Result<OwnedFd, InetError> {
    let fd = sock.as_fd();
    let t = libc::IPPROTO_TCP;
    let ctx = |what: &str| format!("{what} for {local} -> {remote}");
    setsockopt(&fd, TcpRepair, &1).map_err(sys(ctx("TCP_REPAIR on")))?;
    // Built established at the sequence numbers without FINs; a half-closed connection gets
    // its FINs back at the end (halfclose.rs).
    let state = u8::try_from(e.state).unwrap_or(0);
    let plan = halfclose::plan(state, s.inq_seq, s.outq_seq, s.outq_len);
    // Queue sequences are set to where the queued bytes start, then the bytes are re-queued.
    for (queue, seq, len) in [
        (TCP_RECV_QUEUE, plan.rcv_nxt, s.inq_len),
        (TCP_SEND_QUEUE, plan.write_seq, s.outq_len),
    ] {
        setsockopt(&fd, TcpRepairQueue, &queue).map_err(sys(ctx("TCP_REPAIR_QUEUE")))?;
        let start = seq.wrapping_sub(len) as i32;
        setsockopt(&fd, TcpQueueSeq, &start).map_err(sys(ctx("TCP_QUEUE_SEQ")))?;
    }
    // Repair mode forces address reuse for the bind, not a non-local address.
    ipopts::set_freebind(fd, e.family, true).map_err(sys(ctx("IP_FREEBIND")))?;
    let src = sockaddr(e.family, &e.src_addr, e.src_port);
    bind(fd.as_raw_fd(), &src).map_err(sys(ctx("bind")))?;
    if state == halfclose::TCP_SYN_SENT {
        return connect_again(sock, e, (local, remote));
    }
    // Connect in repair mode sends no SYN: the socket is just marked established.
    let dst = sockaddr(e.family, &e.dst_addr, e.dst_port);
    connect(fd.as_raw_fd(), &dst).map_err(sys(ctx("connect (repair)")))?;
    type Opt = RepairOpt;
    const TCPOPT_MSS: u32 = 2;
    const TCPOPT_WINDOW: u32 = 3;
    const TCPOPT_SACK_PERM: u32 = 4;
    const TCPOPT_TIMESTAMP: u32 = 8;
    let mut opts = vec![Opt {
        code: TCPOPT_MSS,
        val: s.mss_clamp,
    }];
    if s.opt_mask & TCPI_OPT_WSCALE != 0 {
        opts.push(Opt {
            code: TCPOPT_WINDOW,
            val: s.snd_wscale | (s.rcv_wscale.unwrap_or(0) << 16),
        });
    }
    if s.opt_mask & TCPI_OPT_SACK != 0 {
        opts.push(Opt {
            code: TCPOPT_SACK_PERM,
            val: 0,
        });
    }
    if s.opt_mask & TCPI_OPT_TIMESTAMPS != 0 {
        opts.push(Opt {
            code: TCPOPT_TIMESTAMP,
            val: 0,
        });
    }
    set_array(fd, t, libc::TCP_REPAIR_OPTIONS, &opts).map_err(sys(ctx("TCP_REPAIR_OPTIONS")))?;
    if let Some(ts) = s.timestamp {
        best_effort("TCP_TIMESTAMP", setsockopt(&fd, TcpTimestamp, &(ts as i32)));
    }
    let fill = |queue: i32, data: &[u8]| -> Result<(), InetError> {
        setsockopt(&fd, TcpRepairQueue, &queue).map_err(sys(ctx("TCP_REPAIR_QUEUE")))?;
        let mut off = 0;
        while off < data.len() {
            // In repair mode a send only fills the chosen queue.
            match send(fd.as_raw_fd(), &data[off..], MsgFlags::empty()) {
                Ok(0) => return Err(sys(ctx("refilling a queue"))(io::ErrorKind::WriteZero)),
                Ok(n) => off += n,
                Err(e) => return Err(sys(ctx("refilling a queue"))(e)),
            }
        }
        Ok(())
    };
    // Room for the queued bytes whatever the buffer sizes were (the real ones come back below).
    let room = |n: usize| (n * 2 + (1 << 20)).min(i32::MAX as usize / 2);
    best_effort(
        "SO_SNDBUFFORCE",
        setsockopt(&fd, SndBufForce, &room(outq.len())),
    );
    best_effort(
        "SO_RCVBUFFORCE",
        setsockopt(&fd, RcvBufForce, &room(inq.len())),
    );
    fill(TCP_SEND_QUEUE, outq)?;
    fill(TCP_RECV_QUEUE, inq)?;
    if let (Some(snd_wl1), Some(snd_wnd), Some(max_window), Some(rcv_wnd), Some(rcv_wup)) =
        (s.snd_wl1, s.snd_wnd, s.max_window, s.rcv_wnd, s.rcv_wup)
    {
        // The peer's FIN is not in yet: rcv_wup may not lie past rcv_nxt.
        let (rcv_wup, rcv_wnd) = (
            rcv_wup.wrapping_sub(plan.wup_back),
            rcv_wnd.wrapping_add(plan.wup_back),
        );
        // As at the dump's lock: a snd_wl1 past rcv_nxt + rcv_wnd (a segment the full queue
        // dropped updated it) is refused; rcv_nxt is where the filled queue ends.
        let snd_wl1 = wl1_at_most(snd_wl1, plan.rcv_nxt.wrapping_add(rcv_wnd));
        let w = RepairWindow {
            snd_wl1,
            snd_wnd,
            max_window,
            rcv_wnd,
            rcv_wup,
        };
        set_struct(fd, t, libc::TCP_REPAIR_WINDOW, &w).map_err(sys(ctx("TCP_REPAIR_WINDOW")))?;
    }
    put_fins_back(fd, e, s, &plan, (local, remote))?;
    apply_opts(fd, e)?;
    // Left in repair mode: see [`leave_repair`].
    Ok(sock)
}

/// Takes a connection [`restore`] rebuilt out of repair mode, once the network lock is gone
/// (as CRIU does): leaving sends a window probe, which tells the peer our window is open again
/// (a peer that saw it at zero, the dump's lock, leaves persist mode at once), and its answer
/// (an ACK, or a reset from a peer that closed meanwhile) must get through. Segments the lock
/// dropped come back on the peer's retransmission timer, which backs off with the downtime.
pub fn leave_repair(fd: BorrowedFd<'_>, e: &pb::InetSkEntry) -> Result<(), InetError> {
    const TCP_REPAIR_OFF: u32 = 0;
    setsockopt(&fd, TcpRepair, &TCP_REPAIR_OFF).map_err(sys(format!(
        "TCP_REPAIR off for {} -> {}",
        show(e.family, &e.src_addr, e.src_port),
        show(e.family, &e.dst_addr, e.dst_port)
    )))?;
    // Leaving repair mode clears address reuse (the kernel resets sk_reuse): set it again.
    dumped_reuse_and_freebind(fd, e)
}

/// Address reuse and IP_FREEBIND as dumped: a socket is bound with both on whatever the dump
/// says, and leaving repair mode clears address reuse.
fn dumped_reuse_and_freebind(fd: BorrowedFd<'_>, e: &pb::InetSkEntry) -> Result<(), InetError> {
    let reuse = e.opts.reuseaddr.unwrap_or(false);
    setsockopt(&fd, ReuseAddr, &reuse).map_err(sys("SO_REUSEADDR"))?;
    let freebind = e.ip_opts.as_ref().and_then(|o| o.freebind).unwrap_or(false);
    ipopts::set_freebind(fd, e.family, freebind).map_err(sys("IP_FREEBIND"))
}

/// A connection whose SYN was not answered at the dump (SYN_SENT): connected again out of
/// repair mode, without waiting, as CRIU does. The SYN goes out from the initial sequence
/// number set in repair mode; a task blocked in connect() waits on in it once restarted.
fn connect_again(
    sock: OwnedFd,
    e: &pb::InetSkEntry,
    (local, remote): (&str, &str),
) -> Result<OwnedFd, InetError> {
    let fd = sock.as_fd();
    let ctx = |what: &str| format!("{what} for {local} -> {remote}");
    setsockopt(&fd, TcpRepair, &0).map_err(sys(ctx("TCP_REPAIR off")))?;
    apply_opts(fd, e)?;
    fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(sys(ctx("O_NONBLOCK")))?;
    let dst = sockaddr(e.family, &e.dst_addr, e.dst_port);
    match connect(fd.as_raw_fd(), &dst) {
        Ok(()) | Err(nix::Error::EINPROGRESS) => {}
        Err(err) => return Err(sys(ctx("connect (SYN sent again)"))(err)),
    }
    // Blocking again unless the task had it so (set by the caller).
    fcntl(fd, FcntlArg::F_SETFL(OFlag::empty())).map_err(sys(ctx("O_NONBLOCK off")))?;
    dumped_reuse_and_freebind(fd, e)?;
    Ok(sock)
}

/// The FINs of a half-closed connection, put back as the kernel saw them ([`halfclose::plan`]),
/// then the state checked: a segment the stack did not take (the local address is not ours
/// here, a firewall dropped it) would leave the connection open where it was closed.
fn put_fins_back(
    fd: BorrowedFd<'_>,
    e: &pb::InetSkEntry,
    s: &pb::TcpStreamEntry,
    plan: &halfclose::Plan,
    (local, remote): (&str, &str),
) -> Result<(), InetError> {
    use halfclose::Step;
    const TCP_NO_QUEUE: i32 = 0;
    if plan.steps.is_empty() {
        return Ok(());
    }
    let ctx = |what: &str| format!("{what} for {local} -> {remote}");
    for step in &plan.steps {
        match *step {
            Step::ShutWrite { acked } => {
                // Through the send queue the FIN counts as sent, so the ACK of it is taken.
                let queue = if acked { TCP_SEND_QUEUE } else { TCP_NO_QUEUE };
                setsockopt(&fd, TcpRepairQueue, &queue).map_err(sys(ctx("TCP_REPAIR_QUEUE")))?;
                nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Write)
                    .map_err(sys(ctx("shutdown (our FIN)")))?;
                setsockopt(&fd, TcpRepairQueue, &TCP_NO_QUEUE)
                    .map_err(sys(ctx("TCP_REPAIR_QUEUE")))?;
            }
            Step::Inject { fin, seq, ack } => {
                let segment = halfclose::Segment {
                    from: ip_of(e.family, &e.dst_addr),
                    from_port: e.dst_port as u16,
                    to: ip_of(e.family, &e.src_addr),
                    to_port: e.src_port as u16,
                    seq,
                    ack,
                    fin,
                    // The peer's window as it advertised it (scaled by its factor).
                    window: (s.snd_wnd.unwrap_or(0) >> s.snd_wscale.min(14)).min(0xffff) as u16,
                };
                let bad = || io::Error::from_raw_os_error(libc::EAFNOSUPPORT);
                let packet = halfclose::packet(&segment).ok_or_else(|| sys(ctx("a FIN"))(bad()))?;
                let to = halfclose::unmapped(segment.to);
                crate::sys::socket::send_raw_ip(&packet, to, halfclose::INJECTED_MARK)
                    .map_err(sys(ctx("putting the peer's FIN back (raw socket)")))?;
            }
        }
    }
    // A segment to a local address goes through loopback's backlog, at once as a rule.
    let want = u8::try_from(e.state).unwrap_or(0);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(1);
    loop {
        let info: libc::tcp_info =
            get_struct(fd, libc::IPPROTO_TCP, libc::TCP_INFO).map_err(sys(ctx("TCP_INFO")))?;
        if info.tcpi_state == want {
            return Ok(());
        }
        if std::time::Instant::now() > end {
            return Err(InetError::HalfClose {
                local: local.to_string(),
                remote: remote.to_string(),
                want,
                got: info.tcpi_state,
            });
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

#[cfg(test)]
mod tests {
    use super::wl1_at_most;

    #[test]
    fn snd_wl1_is_kept_at_or_before_the_limit_across_the_wrap() {
        assert_eq!(wl1_at_most(100, 200), 100);
        assert_eq!(wl1_at_most(300, 200), 200);
        assert_eq!(wl1_at_most(200, 200), 200);
        // 5 is after u32::MAX - 10 once the sequence wraps.
        assert_eq!(wl1_at_most(5, u32::MAX - 10), u32::MAX - 10);
        assert_eq!(wl1_at_most(u32::MAX - 10, 5), u32::MAX - 10);
    }
}
