//! TCP and UDP sockets, IPv4 and IPv6: state read from a copy of the socket taken with
//! pidfd_getfd (the same socket, so getsockopt and TCP_REPAIR work on it), and re-created by
//! the restorer. Established TCP connections go through TCP_REPAIR.
//!
//! Before a connection is read, the caller locks it (an nftables rule, `stasis_netns::nftlock`,
//! dropping the peer's segments until the restore). Repair mode with a zero receive window is a
//! second guard only: an ACK the socket sends recomputes and reopens its window.

pub mod file;

use crate::sys::cvt;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::images::pb;

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
    #[error("TCP socket {local} -> {remote} in state {state} (only listening, unconnected and established ones are supported)")]
    TcpState {
        local: String,
        remote: String,
        state: u8,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(io::Error) -> InetError {
    let what = what.into();
    move |source| InetError::Sys { what, source }
}

fn get_raw<T: Copy>(fd: RawFd, level: i32, name: i32) -> io::Result<T> {
    // SAFETY: T is plain data (ints, C structs); the kernel writes at most `len` bytes.
    let mut v: T = unsafe { zeroed() };
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: getsockopt into our local of the right size.
    cvt(unsafe { libc::getsockopt(fd, level, name, (&mut v as *mut T).cast(), &mut len) })?;
    Ok(v)
}

fn get_int(fd: RawFd, level: i32, name: i32) -> io::Result<i32> {
    get_raw::<libc::c_int>(fd, level, name)
}

fn set_raw<T>(fd: RawFd, level: i32, name: i32, v: &T) -> io::Result<()> {
    // SAFETY: setsockopt reads size_of::<T>() bytes from our value.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (v as *const T).cast(),
            size_of::<T>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn set_int(fd: RawFd, level: i32, name: i32, v: i32) -> io::Result<()> {
    set_raw(fd, level, name, &v)
}

/// Address as CRIU stores it: the raw address as u32 words, and the port in host order.
fn addr_of(ss: &libc::sockaddr_storage) -> (Vec<u32>, u32) {
    match ss.ss_family as i32 {
        libc::AF_INET => {
            // SAFETY: the family says this storage holds a sockaddr_in.
            let a: &libc::sockaddr_in = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            (vec![a.sin_addr.s_addr], u16::from_be(a.sin_port) as u32)
        }
        libc::AF_INET6 => {
            // SAFETY: the family says this storage holds a sockaddr_in6.
            let a: &libc::sockaddr_in6 = unsafe { &*(ss as *const libc::sockaddr_storage).cast() };
            let b = a.sin6_addr.s6_addr;
            let words = b
                .chunks_exact(4)
                .map(|c| u32::from_ne_bytes(c.try_into().expect("4")))
                .collect();
            (words, u16::from_be(a.sin6_port) as u32)
        }
        _ => (Vec::new(), 0),
    }
}

fn sockaddr(family: u32, addr: &[u32], port: u32) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data; zeroed is valid.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    if family as i32 == libc::AF_INET {
        // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in.
        let a: &mut libc::sockaddr_in =
            unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast() };
        a.sin_family = libc::AF_INET as libc::sa_family_t;
        a.sin_port = (port as u16).to_be();
        a.sin_addr.s_addr = addr.first().copied().unwrap_or(0);
        (ss, size_of::<libc::sockaddr_in>() as libc::socklen_t)
    } else {
        // SAFETY: sockaddr_storage is large enough and aligned for sockaddr_in6.
        let a: &mut libc::sockaddr_in6 =
            unsafe { &mut *(&mut ss as *mut libc::sockaddr_storage).cast() };
        a.sin6_family = libc::AF_INET6 as libc::sa_family_t;
        a.sin6_port = (port as u16).to_be();
        for (i, w) in addr.iter().take(4).enumerate() {
            a.sin6_addr.s6_addr[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
        }
        (ss, size_of::<libc::sockaddr_in6>() as libc::socklen_t)
    }
}

fn name(fd: RawFd, peer: bool) -> io::Result<libc::sockaddr_storage> {
    // SAFETY: sockaddr_storage is plain data.
    let mut ss: libc::sockaddr_storage = unsafe { zeroed() };
    let mut len = size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    let p = (&mut ss as *mut libc::sockaddr_storage).cast();
    // SAFETY: get{sock,peer}name write at most `len` bytes into our storage.
    let r = unsafe {
        if peer {
            libc::getpeername(fd, p, &mut len)
        } else {
            libc::getsockname(fd, p, &mut len)
        }
    };
    cvt(r)?;
    Ok(ss)
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

const TCP_ESTABLISHED: u8 = 1;
const TCP_CLOSE: u8 = 7;
const TCP_LISTEN: u8 = 10;
const TCP_RECV_QUEUE: i32 = 1;
const TCP_SEND_QUEUE: i32 = 2;
const SIOCOUTQNSD: libc::c_ulong = 0x894B;
const TCPI_OPT_TIMESTAMPS: u32 = 1;
const TCPI_OPT_SACK: u32 = 2;
const TCPI_OPT_WSCALE: u32 = 4;

#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
struct RepairWindow {
    snd_wl1: u32,
    snd_wnd: u32,
    max_window: u32,
    rcv_wnd: u32,
    rcv_wup: u32,
}

/// True if `fd` is an AF_INET or AF_INET6 socket.
pub fn is_inet(fd: RawFd) -> bool {
    matches!(
        get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN),
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
        let fd = self.sock.as_raw_fd();
        let _ = set_raw(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW, &self.window);
        let _ = set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, 0);
    }
}

/// What a dump of one inet socket yields.
pub struct Dumped {
    pub entry: pb::InetSkEntry,
    /// For an established connection: its queues (tcp-stream image) and the lock.
    pub stream: Option<(pb::TcpStreamEntry, Vec<u8>, Vec<u8>, TcpLock)>,
}

/// Reads an inet socket through `sock`, a copy of the task's fd.
/// `lock(local_port, remote_port)` is called for an established connection before anything of
/// it is read, so that nothing reaches it from then on (the network lock).
pub fn dump(
    sock: OwnedFd,
    id: u32,
    ino: u64,
    flags: u32,
    tcp_established: bool,
    lock: &mut dyn FnMut(u16, u16) -> io::Result<()>,
) -> Result<Dumped, InetError> {
    let fd = sock.as_raw_fd();
    let family = get_int(fd, libc::SOL_SOCKET, libc::SO_DOMAIN).map_err(sys("SO_DOMAIN"))? as u32;
    let ty = get_int(fd, libc::SOL_SOCKET, libc::SO_TYPE).map_err(sys("SO_TYPE"))? as u32;
    let proto =
        get_int(fd, libc::SOL_SOCKET, libc::SO_PROTOCOL).map_err(sys("SO_PROTOCOL"))? as u32;
    let (src, sport) = addr_of(&name(fd, false).map_err(sys("getsockname"))?);
    let (dst, dport) = match name(fd, true) {
        Ok(ss) => addr_of(&ss),
        Err(_) => (vec![0; src.len()], 0),
    };
    let tcp = proto == libc::IPPROTO_TCP as u32;
    let (state, backlog) = if tcp {
        let info: libc::tcp_info =
            get_raw(fd, libc::IPPROTO_TCP, libc::TCP_INFO).map_err(sys("TCP_INFO"))?;
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
            get_raw(fd, libc::IPPROTO_TCP, libc::TCP_INFO).map_err(sys("TCP_INFO"))?;
        if info.tcpi_unacked > 0 {
            log::warn!(
                "listening socket {local} has {} connections waiting to be accepted: they are not kept, and their clients will see a reset",
                info.tcpi_unacked
            );
        }
    } else if !tcp {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int: the size of the next queued datagram.
        if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } == 0 && queued > 0 {
            log::warn!("UDP socket {local} has datagrams queued: they are not kept");
        }
    }
    let remote = show(family, &dst, dport);
    if tcp && !matches!(state, TCP_LISTEN | TCP_CLOSE | TCP_ESTABLISHED) {
        return Err(InetError::TcpState {
            local,
            remote,
            state,
        });
    }
    if tcp && state == TCP_ESTABLISHED && !tcp_established {
        return Err(InetError::EstablishedNeedsFlag { local, remote });
    }
    let g = |level, opt| get_int(fd, level, opt).unwrap_or(0);
    let tv = |opt| {
        get_raw::<libc::timeval>(fd, libc::SOL_SOCKET, opt).unwrap_or(libc::timeval {
            tv_sec: 0,
            tv_usec: 0,
        })
    };
    let (snd_tmo, rcv_tmo) = (tv(libc::SO_SNDTIMEO), tv(libc::SO_RCVTIMEO));
    let linger: libc::linger =
        get_raw(fd, libc::SOL_SOCKET, libc::SO_LINGER).unwrap_or(libc::linger {
            l_onoff: 0,
            l_linger: 0,
        });
    let opts = pb::SkOptsEntry {
        so_sndbuf: g(libc::SOL_SOCKET, libc::SO_SNDBUF) as u32,
        so_rcvbuf: g(libc::SOL_SOCKET, libc::SO_RCVBUF) as u32,
        so_snd_tmo_sec: snd_tmo.tv_sec as u64,
        so_snd_tmo_usec: snd_tmo.tv_usec as u64,
        so_rcv_tmo_sec: rcv_tmo.tv_sec as u64,
        so_rcv_tmo_usec: rcv_tmo.tv_usec as u64,
        reuseaddr: Some(g(libc::SOL_SOCKET, libc::SO_REUSEADDR) != 0),
        so_priority: Some(g(libc::SOL_SOCKET, libc::SO_PRIORITY) as u32),
        so_rcvlowat: Some(g(libc::SOL_SOCKET, libc::SO_RCVLOWAT) as u32),
        so_mark: Some(g(libc::SOL_SOCKET, libc::SO_MARK) as u32),
        so_passcred: Some(g(libc::SOL_SOCKET, libc::SO_PASSCRED) != 0),
        so_passsec: None,
        so_dontroute: Some(g(libc::SOL_SOCKET, libc::SO_DONTROUTE) != 0),
        so_no_check: None,
        so_bound_dev: None,
        so_filter: Vec::new(),
        so_reuseport: Some(g(libc::SOL_SOCKET, libc::SO_REUSEPORT) != 0),
        so_broadcast: Some(g(libc::SOL_SOCKET, libc::SO_BROADCAST) != 0),
        so_keepalive: Some(g(libc::SOL_SOCKET, libc::SO_KEEPALIVE) != 0),
        tcp_keepcnt: tcp.then(|| g(libc::IPPROTO_TCP, libc::TCP_KEEPCNT) as u32),
        tcp_keepidle: tcp.then(|| g(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) as u32),
        tcp_keepintvl: tcp.then(|| g(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) as u32),
        so_oobinline: Some(g(libc::SOL_SOCKET, libc::SO_OOBINLINE) as u32),
        so_linger: (linger.l_onoff != 0).then_some(linger.l_linger as u32),
        so_buf_lock: None,
    };
    let tcp_opts = tcp.then(|| pb::TcpOptsEntry {
        cork: Some(g(libc::IPPROTO_TCP, libc::TCP_CORK) != 0),
        nodelay: Some(g(libc::IPPROTO_TCP, libc::TCP_NODELAY) != 0),
        keepcnt: None,
        keepidle: None,
        keepintvl: None,
    });
    let v6only =
        (family as i32 == libc::AF_INET6).then(|| g(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY) != 0);
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
        ip_opts: None,
        ifname: None,
        ns_id: None,
        shutdown: None,
        tcp_opts,
    };
    let stream = if tcp && state == TCP_ESTABLISHED {
        lock(sport as u16, dport as u16)
            .map_err(sys(format!("locking the network for {local} -> {remote}")))?;
        Some(dump_stream(sock)?)
    } else {
        None
    };
    Ok(Dumped { entry, stream })
}

fn peek_queue(fd: RawFd, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let mut got = 0;
    while got < len {
        // SAFETY: recv into our buffer's unfilled tail.
        let n = unsafe {
            libc::recv(
                fd,
                buf[got..].as_mut_ptr().cast(),
                len - got,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            if n < 0 {
                return Err(io::Error::last_os_error());
            }
            break;
        }
        got += n as usize;
        if got < len {
            // MSG_PEEK always starts at the head: one call returns what it can at once.
            buf.truncate(got);
            break;
        }
    }
    Ok(buf)
}

fn queue_seq(fd: RawFd, queue: i32) -> io::Result<u32> {
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_QUEUE, queue)?;
    Ok(get_int(fd, libc::IPPROTO_TCP, libc::TCP_QUEUE_SEQ)? as u32)
}

/// Locks the connection (repair mode, zero window) and reads its queues and sequence state.
fn dump_stream(
    sock: OwnedFd,
) -> Result<(pb::TcpStreamEntry, Vec<u8>, Vec<u8>, TcpLock), InetError> {
    let fd = sock.as_raw_fd();
    set_int(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR, 1).map_err(sys("TCP_REPAIR on"))?;
    let window: RepairWindow = get_raw(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW)
        .map_err(sys("TCP_REPAIR_WINDOW"))?;
    let rcv_nxt = queue_seq(fd, TCP_RECV_QUEUE).map_err(sys("TCP_QUEUE_SEQ (receive)"))?;
    let mut locked = window;
    locked.rcv_wnd = 0;
    locked.rcv_wup = rcv_nxt;
    let lock = TcpLock { sock, window };
    let fd = lock.sock.as_raw_fd();
    if let Err(e) = set_raw(fd, libc::IPPROTO_TCP, libc::TCP_REPAIR_WINDOW, &locked) {
        lock.release();
        return Err(sys("locking the connection (zero window)")(e));
    }
    let result = (|| {
        // Read again now that nothing more is accepted: a segment that arrived between the read
        // above and the lock moved rcv_nxt, and its bytes are in the queue we peek below.
        let rcv_nxt = queue_seq(fd, TCP_RECV_QUEUE).map_err(sys("TCP_QUEUE_SEQ (receive)"))?;
        let mut inq: libc::c_int = 0;
        // SAFETY: FIONREAD writes an int.
        cvt(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut inq) }).map_err(sys("SIOCINQ"))?;
        let inq_data = peek_queue(fd, inq as usize).map_err(sys("reading the receive queue"))?;
        let write_seq = queue_seq(fd, TCP_SEND_QUEUE).map_err(sys("TCP_QUEUE_SEQ (send)"))?;
        let mut outq: libc::c_int = 0;
        let mut unsent: libc::c_int = 0;
        // SAFETY: TIOCOUTQ / SIOCOUTQNSD write an int.
        cvt(unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut outq) }).map_err(sys("SIOCOUTQ"))?;
        // SAFETY: as above.
        cvt(unsafe { libc::ioctl(fd, SIOCOUTQNSD, &mut unsent) }).map_err(sys("SIOCOUTQNSD"))?;
        let outq_data = peek_queue(fd, outq as usize).map_err(sys("reading the send queue"))?;
        let info: libc::tcp_info =
            get_raw(fd, libc::IPPROTO_TCP, libc::TCP_INFO).map_err(sys("TCP_INFO"))?;
        let mss = get_int(fd, libc::IPPROTO_TCP, libc::TCP_MAXSEG).map_err(sys("TCP_MAXSEG"))?;
        let ts =
            get_int(fd, libc::IPPROTO_TCP, libc::TCP_TIMESTAMP).map_err(sys("TCP_TIMESTAMP"))?;
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
            cork: Some(get_int(fd, libc::IPPROTO_TCP, libc::TCP_CORK).unwrap_or(0) != 0),
            nodelay: Some(get_int(fd, libc::IPPROTO_TCP, libc::TCP_NODELAY).unwrap_or(0) != 0),
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

fn apply_opts(fd: RawFd, e: &pb::InetSkEntry) -> Result<(), InetError> {
    let o = &e.opts;
    let b = |v: Option<bool>| v.unwrap_or(false) as i32;
    let sol = libc::SOL_SOCKET;
    set_int(fd, sol, libc::SO_REUSEADDR, b(o.reuseaddr)).map_err(sys("SO_REUSEADDR"))?;
    set_int(fd, sol, libc::SO_REUSEPORT, b(o.so_reuseport)).map_err(sys("SO_REUSEPORT"))?;
    set_int(fd, sol, libc::SO_KEEPALIVE, b(o.so_keepalive)).map_err(sys("SO_KEEPALIVE"))?;
    set_int(fd, sol, libc::SO_BROADCAST, b(o.so_broadcast)).map_err(sys("SO_BROADCAST"))?;
    // The kernel doubles what it is given and reports the doubled value.
    let _ = set_int(fd, sol, libc::SO_SNDBUFFORCE, (o.so_sndbuf / 2) as i32);
    let _ = set_int(fd, sol, libc::SO_RCVBUFFORCE, (o.so_rcvbuf / 2) as i32);
    let tv = |s: u64, u: u64| libc::timeval {
        tv_sec: s as libc::time_t,
        tv_usec: u as libc::suseconds_t,
    };
    let _ = set_raw(
        fd,
        sol,
        libc::SO_SNDTIMEO,
        &tv(o.so_snd_tmo_sec, o.so_snd_tmo_usec),
    );
    let _ = set_raw(
        fd,
        sol,
        libc::SO_RCVTIMEO,
        &tv(o.so_rcv_tmo_sec, o.so_rcv_tmo_usec),
    );
    if let Some(p) = o.so_priority {
        let _ = set_int(fd, sol, libc::SO_PRIORITY, p as i32);
    }
    if let Some(m) = o.so_mark.filter(|m| *m != 0) {
        let _ = set_int(fd, sol, libc::SO_MARK, m as i32);
    }
    if let Some(l) = o.so_linger {
        let _ = set_raw(
            fd,
            sol,
            libc::SO_LINGER,
            &libc::linger {
                l_onoff: 1,
                l_linger: l as i32,
            },
        );
    }
    if e.proto == libc::IPPROTO_TCP as u32 {
        let t = libc::IPPROTO_TCP;
        if let Some(v) = o.tcp_keepcnt.filter(|v| *v != 0) {
            let _ = set_int(fd, t, libc::TCP_KEEPCNT, v as i32);
        }
        if let Some(v) = o.tcp_keepidle.filter(|v| *v != 0) {
            let _ = set_int(fd, t, libc::TCP_KEEPIDLE, v as i32);
        }
        if let Some(v) = o.tcp_keepintvl.filter(|v| *v != 0) {
            let _ = set_int(fd, t, libc::TCP_KEEPINTVL, v as i32);
        }
        if let Some(to) = &e.tcp_opts {
            set_int(fd, t, libc::TCP_NODELAY, b(to.nodelay)).map_err(sys("TCP_NODELAY"))?;
            let _ = set_int(fd, t, libc::TCP_CORK, b(to.cork));
        }
    }
    Ok(())
}

/// Re-creates a socket: bound, listening, connected (UDP) or, with `stream`, an established
/// TCP connection rebuilt in repair mode.
pub fn restore(
    e: &pb::InetSkEntry,
    stream: Option<(&pb::TcpStreamEntry, &[u8], &[u8])>,
) -> Result<OwnedFd, InetError> {
    // Blocking while we build it (refilling queues must not stop halfway); the task's
    // O_NONBLOCK is applied at the end.
    let ty = e.r#type as i32 | libc::SOCK_CLOEXEC;
    // SAFETY: socket(2) with integers; owned below.
    let raw =
        cvt(unsafe { libc::socket(e.family as i32, ty, e.proto as i32) }).map_err(sys("socket"))?;
    // SAFETY: a fresh fd we own.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let fd = sock.as_raw_fd();
    if e.family as i32 == libc::AF_INET6 {
        if let Some(v6) = e.v6only {
            set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, v6 as i32)
                .map_err(sys("IPV6_V6ONLY"))?;
        }
    }
    let local = show(e.family, &e.src_addr, e.src_port);
    let remote = show(e.family, &e.dst_addr, e.dst_port);
    if let Some((s, inq, outq)) = stream {
        let sock = restore_stream(sock, e, s, inq, outq, &local, &remote)?;
        return set_nonblock(sock, e.flags);
    }
    apply_opts(fd, e)?;
    if e.src_port != 0 || e.src_addr.iter().any(|w| *w != 0) {
        let (ss, len) = sockaddr(e.family, &e.src_addr, e.src_port);
        // SAFETY: bind with a sockaddr of the given length.
        cvt(unsafe { libc::bind(fd, (&ss as *const libc::sockaddr_storage).cast(), len) })
            .map_err(sys(format!("bind {local}")))?;
    }
    if e.state == TCP_LISTEN as u32 {
        // SAFETY: listen(2) with integers.
        cvt(unsafe { libc::listen(fd, e.backlog.max(1) as i32) })
            .map_err(sys(format!("listen {local}")))?;
    } else if e.proto != libc::IPPROTO_TCP as u32 && e.dst_port != 0 {
        let (ss, len) = sockaddr(e.family, &e.dst_addr, e.dst_port);
        // SAFETY: connect with a sockaddr of the given length.
        cvt(unsafe { libc::connect(fd, (&ss as *const libc::sockaddr_storage).cast(), len) })
            .map_err(sys(format!("connect {local} -> {remote}")))?;
    }
    set_nonblock(sock, e.flags)
}

fn set_nonblock(sock: OwnedFd, flags: u32) -> Result<OwnedFd, InetError> {
    if flags & libc::O_NONBLOCK as u32 != 0 {
        // SAFETY: F_SETFL with an integer.
        cvt(unsafe { libc::fcntl(sock.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) })
            .map_err(sys("O_NONBLOCK"))?;
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
    let fd = sock.as_raw_fd();
    let t = libc::IPPROTO_TCP;
    let ctx = |what: &str| format!("{what} for {local} -> {remote}");
    set_int(fd, t, libc::TCP_REPAIR, 1).map_err(sys(ctx("TCP_REPAIR on")))?;
    // Queue sequences are set to where the queued bytes start, then the bytes are re-queued.
    for (queue, seq, len) in [
        (TCP_RECV_QUEUE, s.inq_seq, s.inq_len),
        (TCP_SEND_QUEUE, s.outq_seq, s.outq_len),
    ] {
        set_int(fd, t, libc::TCP_REPAIR_QUEUE, queue).map_err(sys(ctx("TCP_REPAIR_QUEUE")))?;
        set_int(fd, t, libc::TCP_QUEUE_SEQ, seq.wrapping_sub(len) as i32)
            .map_err(sys(ctx("TCP_QUEUE_SEQ")))?;
    }
    let (src, slen) = sockaddr(e.family, &e.src_addr, e.src_port);
    // SAFETY: bind with a sockaddr of the given length (repair mode forces address reuse).
    cvt(unsafe { libc::bind(fd, (&src as *const libc::sockaddr_storage).cast(), slen) })
        .map_err(sys(ctx("bind")))?;
    let (dst, dlen) = sockaddr(e.family, &e.dst_addr, e.dst_port);
    // SAFETY: connect in repair mode sends no SYN: the socket is just marked established.
    cvt(unsafe { libc::connect(fd, (&dst as *const libc::sockaddr_storage).cast(), dlen) })
        .map_err(sys(ctx("connect (repair)")))?;
    #[repr(C)]
    struct Opt {
        code: u32,
        val: u32,
    }
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
    // SAFETY: setsockopt reads the array of options we pass, with its byte length.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            t,
            libc::TCP_REPAIR_OPTIONS,
            opts.as_ptr().cast(),
            (opts.len() * size_of::<Opt>()) as libc::socklen_t,
        )
    })
    .map_err(sys(ctx("TCP_REPAIR_OPTIONS")))?;
    if let Some(ts) = s.timestamp {
        let _ = set_int(fd, t, libc::TCP_TIMESTAMP, ts as i32);
    }
    let fill = |queue: i32, data: &[u8]| -> Result<(), InetError> {
        set_int(fd, t, libc::TCP_REPAIR_QUEUE, queue).map_err(sys(ctx("TCP_REPAIR_QUEUE")))?;
        let mut off = 0;
        while off < data.len() {
            // SAFETY: send from our buffer; in repair mode it only fills the chosen queue.
            let n = unsafe { libc::send(fd, data[off..].as_ptr().cast(), data.len() - off, 0) };
            if n <= 0 {
                return Err(sys(ctx("refilling a queue"))(io::Error::last_os_error()));
            }
            off += n as usize;
        }
        Ok(())
    };
    // Room for the queued bytes whatever the buffer sizes were (the real ones come back below).
    let room = |n: usize| ((n * 2 + (1 << 20)).min(i32::MAX as usize / 2)) as i32;
    let _ = set_int(fd, libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, room(outq.len()));
    let _ = set_int(fd, libc::SOL_SOCKET, libc::SO_RCVBUFFORCE, room(inq.len()));
    fill(TCP_SEND_QUEUE, outq)?;
    fill(TCP_RECV_QUEUE, inq)?;
    if let (Some(snd_wl1), Some(snd_wnd), Some(max_window), Some(rcv_wnd), Some(rcv_wup)) =
        (s.snd_wl1, s.snd_wnd, s.max_window, s.rcv_wnd, s.rcv_wup)
    {
        let w = RepairWindow {
            snd_wl1,
            snd_wnd,
            max_window,
            rcv_wnd,
            rcv_wup,
        };
        set_raw(fd, t, libc::TCP_REPAIR_WINDOW, &w).map_err(sys(ctx("TCP_REPAIR_WINDOW")))?;
    }
    apply_opts(fd, e)?;
    // Leave repair mode with a window probe: it tells the peer our window is open again, so a
    // peer that saw it at zero (the dump's lock) leaves persist mode at once. Segments the lock
    // dropped come back on the peer's retransmission timer, which backs off with the downtime
    // (as with CRIU).
    const TCP_REPAIR_OFF: i32 = 0;
    set_int(fd, t, libc::TCP_REPAIR, TCP_REPAIR_OFF).map_err(sys(ctx("TCP_REPAIR off")))?;
    Ok(sock)
}
