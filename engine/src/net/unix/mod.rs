//! Unix sockets: stream, datagram and seqpacket; socketpairs and connections inside the tree,
//! bound and listening sockets (path and abstract names), queued data in both directions.
//! Peers and names come from sock_diag (NETLINK_SOCK_DIAG, UNIX_DIAG); queued bytes are peeked
//! from a pidfd_getfd copy of the socket without consuming them.

pub mod file;
pub mod root;

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::socket::sockopt::{PassCred, RcvBuf, SndBuf, SndBufForce};
use nix::sys::socket::{
    bind, connect, getsockopt, recv, send, setsockopt, shutdown, socket, socketpair, AddressFamily,
    MsgFlags, Shutdown, SockFlag, SockProtocol, SockType,
};
use nix::sys::stat::{fstat, SFlag};

use crate::sys::socket::{recv_with_rights, send_with_rights, unix_addr, PeekOff, SoType};

use crate::images::pb;

/// A unix socket could not be read or re-created.
#[derive(Debug, thiserror::Error)]
pub enum UnixError {
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("unix socket {ino}: its peer {peer} is outside the tree (allowed with --ext-unix-sk for datagram sockets connected to a named peer, or with --ext-unix-sk={ino} and a replacement at restore)")]
    ExternalPeer { ino: u32, peer: u32 },
    #[error("unix socket {ino} was connected outside the tree: give its replacement with --inherit-fd fd[N]:socket:[{ino}]")]
    NeedsInheritFd { ino: u32 },
    #[error("unix socket {ino} is itself in flight (SCM_RIGHTS) and has {count} file descriptors in flight, which is not supported")]
    NestedInFlight { ino: u32, count: u32 },
    #[error("unix socket {ino} is in flight (SCM_RIGHTS) on its own connection (socket {on}), which is not supported")]
    InFlightOnItself { ino: u32, on: u32 },
    #[error("file id {id} in flight on a unix socket was not made before its queue")]
    InFlightMissing { id: u32 },
    #[error("unix socket {ino} waits in listener {listener}'s queue with data sent on it (its receiving end is not accepted yet: the data cannot be read to save it), which is not supported")]
    QueuedWithData { ino: u32, listener: u32 },
}

fn sys<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> UnixError {
    let what = what.into();
    move |source| UnixError::Sys {
        what,
        source: source.into(),
    }
}

/// What UNIX_DIAG says about one socket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diag {
    pub ino: u32,
    pub ty: u8,
    pub state: u8,
    pub peer: u32,
    pub name: Vec<u8>,
    pub backlog: u32,
    /// sk_shutdown: 1 receive side shut, 2 send side shut.
    pub shutdown: u8,
    /// For a listener: the inodes of the clients whose connections wait in its queue.
    pub icons: Vec<u32>,
    /// For a socket bound to a path: the inode and device (the kernel's encoding) of the
    /// file its bind made, which may since have been replaced at that path.
    pub vfs: Option<(u32, u32)>,
}

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const UDIAG_SHOW_NAME: u32 = 1;
const UDIAG_SHOW_VFS: u32 = 2;
const UNIX_DIAG_VFS: u16 = 1;
const UDIAG_SHOW_PEER: u32 = 4;
const UDIAG_SHOW_ICONS: u32 = 8;
const UNIX_DIAG_ICONS: u16 = 3;
const UDIAG_SHOW_RQLEN: u32 = 16;
const UNIX_DIAG_NAME: u16 = 0;
const UNIX_DIAG_PEER: u16 = 2;
const UNIX_DIAG_RQLEN: u16 = 4;
const UNIX_DIAG_SHUTDOWN: u16 = 6;

/// Parses UNIX_DIAG replies (pure; unit-tested).
pub fn parse_diag(buf: &[u8]) -> Vec<Diag> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
        if len < 16 || off + len > buf.len() {
            break;
        }
        if ty == SOCK_DIAG_BY_FAMILY && len >= 16 + 16 {
            let m = &buf[off + 16..off + len];
            let mut d = Diag {
                ty: m[1],
                state: m[2],
                ino: u32::from_ne_bytes(m[4..8].try_into().expect("4")),
                ..Default::default()
            };
            let mut a = 16;
            while a + 4 <= m.len() {
                let alen = u16::from_ne_bytes(m[a..a + 2].try_into().expect("2")) as usize;
                let aty = u16::from_ne_bytes(m[a + 2..a + 4].try_into().expect("2"));
                if alen < 4 || a + alen > m.len() {
                    break;
                }
                let data = &m[a + 4..a + alen];
                match aty {
                    UNIX_DIAG_NAME => d.name = data.to_vec(),
                    // struct unix_diag_vfs: udiag_vfs_ino, udiag_vfs_dev.
                    UNIX_DIAG_VFS if data.len() >= 8 => {
                        d.vfs = Some((
                            u32::from_ne_bytes(data[..4].try_into().expect("4")),
                            u32::from_ne_bytes(data[4..8].try_into().expect("4")),
                        ))
                    }
                    UNIX_DIAG_PEER if data.len() >= 4 => {
                        d.peer = u32::from_ne_bytes(data[..4].try_into().expect("4"))
                    }
                    // For a listener, the write-queue field is its backlog.
                    UNIX_DIAG_RQLEN if data.len() >= 8 => {
                        d.backlog = u32::from_ne_bytes(data[4..8].try_into().expect("4"))
                    }
                    UNIX_DIAG_SHUTDOWN if !data.is_empty() => d.shutdown = data[0] & 3,
                    UNIX_DIAG_ICONS => {
                        d.icons = data
                            .chunks_exact(4)
                            .map(|c| u32::from_ne_bytes(c.try_into().expect("4")))
                            .collect()
                    }
                    _ => {}
                }
                a += (alen + 3) & !3;
            }
            out.push(d);
        }
        off += (len + 3) & !3;
    }
    out
}

/// The network namespace the tree owns, if any, while it is dumped: sock_diag sees only the
/// unix sockets of the namespace its netlink socket was made in.
static DIAG_NS: std::sync::Mutex<Option<OwnedFd>> = std::sync::Mutex::new(None);

/// Looks unix sockets up in `ns` (the tree's own network namespace) from now on; None: ours.
pub fn set_diag_namespace(ns: Option<OwnedFd>) {
    if let Ok(mut g) = DIAG_NS.lock() {
        *g = ns;
    }
}

pub(crate) fn diag_socket() -> std::io::Result<OwnedFd> {
    let make = || {
        socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )
        .map_err(std::io::Error::from)
    };
    let guard = DIAG_NS
        .lock()
        .map_err(|_| std::io::Error::other("poisoned"))?;
    match guard.as_ref() {
        Some(ns) => stasis_netns::in_netns(ns.as_fd(), make),
        None => make(),
    }
}

/// Asks the kernel about the unix socket with inode `ino`.
pub fn diag(ino: u32) -> Result<Diag, UnixError> {
    let sock = diag_socket().map_err(|source| UnixError::Sys {
        what: "sock_diag socket".into(),
        source,
    })?;
    let mut req = Vec::with_capacity(40);
    req.extend_from_slice(&40u32.to_ne_bytes());
    req.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    req.extend_from_slice(&(libc::NLM_F_REQUEST as u16).to_ne_bytes());
    req.extend_from_slice(&1u32.to_ne_bytes());
    req.extend_from_slice(&0u32.to_ne_bytes());
    // struct unix_diag_req: family, protocol, pad, states, ino, show, cookie[2]
    req.push(libc::AF_UNIX as u8);
    req.push(0);
    req.extend_from_slice(&0u16.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&ino.to_ne_bytes());
    let show =
        UDIAG_SHOW_NAME | UDIAG_SHOW_VFS | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN | UDIAG_SHOW_ICONS;
    req.extend_from_slice(&show.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    req.extend_from_slice(&u32::MAX.to_ne_bytes());
    send(sock.as_raw_fd(), &req, MsgFlags::empty()).map_err(sys("sock_diag request"))?;
    let mut buf = vec![0u8; 16384];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(sys("sock_diag reply"))?;
    parse_diag(&buf[..n])
        .into_iter()
        .find(|d| d.ino == ino)
        .ok_or_else(|| sys(format!("sock_diag has no unix socket {ino}"))(nix::Error::ENOENT))
}

/// `uflags` of an entry whose peer is outside the tree (CRIU's values).
pub const USK_EXTERN: u32 = 1;
/// `uflags` of an external socket that the restore takes from `--inherit-fd`.
pub const USK_INHERIT: u32 = 1 << 3;

/// One message queued on a socket, as peeked: its bytes and the file descriptors in flight
/// with it (SCM_RIGHTS), which the peek installed in our own table.
pub struct Peeked {
    pub data: Vec<u8>,
    pub fds: Vec<OwnedFd>,
}

/// One queued message as the image keeps it: its bytes and the file ids in flight with it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Queued {
    pub data: Vec<u8>,
    pub files: Vec<u32>,
}

/// Everything queued for reading on `fd`, without consuming it: one entry per message. On a
/// stream socket, bytes are glued into one entry, except that bytes carrying descriptors
/// start an entry of their own (the kernel ends a read at such a segment).
pub fn peek_all(fd: BorrowedFd<'_>, stream: bool) -> io::Result<Vec<Peeked>> {
    // SO_PEEK_OFF belongs to the socket (shared with the task): put it back afterwards, as
    // the task had it (-1, off, unless it uses peek offsets itself).
    let old = getsockopt(&fd, PeekOff).unwrap_or(-1);
    setsockopt(&fd, PeekOff, &0)?;
    let mut out: Vec<Peeked> = Vec::new();
    let mut buf = vec![0u8; 1 << 20];
    // The last entry of a stream may take more bytes (it carries no descriptors).
    let mut glue = false;
    let res = loop {
        let flags = MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT;
        let got = match recv_with_rights(fd, &mut buf, flags) {
            Ok(got) => got,
            Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => break Ok(()),
            Err(e) => break Err(e),
        };
        if got.truncated {
            break Err(io::Error::other("control data truncated while peeking"));
        }
        let fds = got.fds;
        if got.bytes == 0 && fds.is_empty() {
            // The end of a stream, or of a seqpacket whose peer is gone (which would read 0
            // forever). An empty datagram carrying nothing is dropped too.
            break Ok(());
        }
        let data = buf[..got.bytes].to_vec();
        if stream && glue && fds.is_empty() {
            out.last_mut()
                .expect("glue implies an entry")
                .data
                .extend_from_slice(&data);
        } else {
            glue = stream && fds.is_empty();
            out.push(Peeked { data, fds });
        }
    };
    // The task's own peek offset: if it cannot be put back, the task's next MSG_PEEK starts
    // at the head instead; logged, the dump goes on.
    if let Err(e) = setsockopt(&fd, PeekOff, &old) {
        log::warn!("restoring SO_PEEK_OFF {old} on a unix socket failed: {e}");
    }
    res.map(|_| out)
}

/// The socket's type (SO_TYPE; 0 if it cannot be read).
fn sock_type(fd: BorrowedFd<'_>) -> libc::c_int {
    getsockopt(&fd, SoType).unwrap_or(0)
}

fn socket_inode(fd: BorrowedFd<'_>) -> Option<u32> {
    let st = fstat(fd).ok()?;
    (SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == SFlag::S_IFSOCK)
        .then_some(st.st_ino as u32)
}

/// Inodes of the sockets in flight on unix socket `sock` (peeked, then closed again).
pub fn sockets_in_flight(sock: &OwnedFd) -> Vec<u32> {
    let stream = sock_type(sock.as_fd()) == libc::SOCK_STREAM;
    peek_all(sock.as_fd(), stream)
        .unwrap_or_default()
        .iter()
        .flat_map(|p| p.fds.iter())
        .filter_map(|f| socket_inode(f.as_fd()))
        .collect()
}

/// Refuses a socket in flight on its own connection (`f` is `receiver`, or its peer): it
/// would have to exist before the queue that carries it.
pub fn check_in_flight(f: BorrowedFd<'_>, receiver: u32) -> Result<(), UnixError> {
    let Some(ino) = socket_inode(f) else {
        return Ok(());
    };
    let peer = diag(ino).map(|d| d.peer).unwrap_or(0);
    if ino == receiver || peer == receiver {
        return Err(UnixError::InFlightOnItself { ino, on: receiver });
    }
    Ok(())
}

fn opts_of(fd: BorrowedFd<'_>) -> pb::SkOptsEntry {
    pb::SkOptsEntry {
        so_sndbuf: getsockopt(&fd, SndBuf).unwrap_or(0) as u32,
        so_rcvbuf: getsockopt(&fd, RcvBuf).unwrap_or(0) as u32,
        so_snd_tmo_sec: 0,
        so_snd_tmo_usec: 0,
        so_rcv_tmo_sec: 0,
        so_rcv_tmo_usec: 0,
        so_passcred: Some(getsockopt(&fd, PassCred).unwrap_or(false)),
        so_passsec: Some(getsockopt(&fd, crate::sys::socket::PassSec).unwrap_or(false)),
        so_filter: crate::sys::socket::get_filter(fd).unwrap_or_default(),
        ..Default::default()
    }
}

/// A dumped unix socket: its entry and the messages queued for it to read.
pub struct Dumped {
    pub entry: pb::UnixSkEntry,
    pub queued: Vec<Peeked>,
    /// The peer, when it is outside the tree (a named datagram socket, with --ext-unix-sk).
    pub external_peer: Option<Diag>,
}

/// What the dump knows around one unix socket.
pub struct Context<'a> {
    /// The owning task's cwd (relative socket names were bound from there).
    pub cwd: &'a str,
    /// The owning task's root as a path of ours (`/proc/<pid>/root`): a name is looked up
    /// there, in the task's own mount namespace and chroot.
    pub root: &'a str,
    /// fdinfo's `scm_fds`: file descriptors in flight on the socket.
    pub in_flight: u32,
    /// The socket is itself in flight on another (our copy came from peeking that one's queue).
    pub nested: bool,
    /// `--ext-unix-sk`
    pub ext_unix_sk: bool,
    /// `--ext-unix-sk=INODE,...`: sockets to dump as external whatever their type.
    pub ext_inodes: &'a [u32],
    /// Inodes of every socket open in the tree.
    pub tree_sockets: &'a std::collections::HashSet<u32>,
    /// Client inode → listener inode for every connection waiting in a listener of the tree,
    /// read once per dump when first needed (see [`queued_clients`]).
    pub queued: &'a std::cell::OnceCell<std::collections::HashMap<u32, u32>>,
}

/// Client inode → listener inode, for the connections waiting in the queues of the tree's
/// listeners (each listener's UNIX_DIAG_ICONS). One sock_diag query per socket of the tree.
fn queued_clients(
    tree_sockets: &std::collections::HashSet<u32>,
) -> std::collections::HashMap<u32, u32> {
    tree_sockets
        .iter()
        .filter_map(|&s| diag(s).ok())
        .filter(|l| l.state == 10)
        .flat_map(|l| l.icons.into_iter().map(move |c| (c, l.ino)))
        .collect()
}

/// sock_diag's state of a connected unix socket.
const TCP_ESTABLISHED: u8 = 1;

/// Reads the unix socket `sock` (a copy of the task's fd with inode `ino`).
pub fn dump(sock: &OwnedFd, ino: u32, flags: u32, cx: &Context) -> Result<Dumped, UnixError> {
    let in_flight = cx.in_flight;
    let ext_unix_sk = cx.ext_unix_sk;
    let cwd = cx.cwd;
    let peer_in_tree = |p: u32| cx.tree_sockets.contains(&p);
    if in_flight > 0 && cx.nested {
        return Err(UnixError::NestedInFlight {
            ino,
            count: in_flight,
        });
    }
    let mut d = diag(ino)?;
    if d.state == 10 {
        let gone = d.icons.iter().filter(|c| !peer_in_tree(**c)).count();
        if gone > 0 {
            // Its client closed before the accept, or is outside the tree: the connection
            // dies with the dump, as a TCP one waiting in a backlog does.
            log::warn!(
                "unix listener {ino}: {gone} connection(s) in its queue from sockets closed or \
                 outside the tree are not kept"
            );
        }
    }
    // A connection still in a listener's queue has no peer socket yet (the server side is not
    // accepted): the listener lists its client among its icons. Its peer is then the listener,
    // and the restore connects it there again, to wait in the queue as before.
    let connection = matches!(d.ty as i32, libc::SOCK_STREAM | libc::SOCK_SEQPACKET);
    if connection && d.state == TCP_ESTABLISHED && d.peer == 0 {
        let queued = cx.queued.get_or_init(|| queued_clients(cx.tree_sockets));
        if let Some(&listener) = queued.get(&ino) {
            d.peer = listener;
            // What it sent sits in the end the listener has not handed out yet, which
            // nothing can read without accepting it (CRIU refuses this too).
            let sent = crate::sys::socket::queued(sock.as_fd(), crate::sys::socket::Queue::Out)
                .map_err(sys(format!("SIOCOUTQ of unix socket {ino}")))?;
            if sent > 0 {
                return Err(UnixError::QueuedWithData { ino, listener });
            }
        }
    }
    let mut external_peer = None;
    let mut uflags = 0;
    if d.peer != 0 && !peer_in_tree(d.peer) {
        let p = diag(d.peer).ok().filter(|p| !p.name.is_empty());
        match p {
            Some(p) if ext_unix_sk && d.ty as i32 == libc::SOCK_DGRAM => external_peer = Some(p),
            // One end of a connection to the outside: the restore takes a replacement
            // (--inherit-fd), as CRIU does.
            _ if cx.ext_inodes.contains(&ino) => uflags = USK_EXTERN | USK_INHERIT,
            _ => return Err(UnixError::ExternalPeer { ino, peer: d.peer }),
        }
    }
    let fd = sock.as_fd();
    let stream = d.ty as i32 == libc::SOCK_STREAM;
    // A listener's queue holds connections, not bytes. What an outside peer sent to an
    // inherited socket cannot be given to its replacement.
    // A connection-oriented socket that is not connected (never was, or its peer is gone)
    // has nothing the task could read: the kernel answers its reads with EINVAL.
    let unconnected = d.ty as i32 != libc::SOCK_DGRAM && d.state != TCP_ESTABLISHED;
    let queued = if d.state == 10 || uflags & USK_INHERIT != 0 || unconnected {
        Vec::new()
    } else {
        peek_all(fd, stream).map_err(sys(format!("peeking unix socket {ino}")))?
    };
    let entry = pb::UnixSkEntry {
        id: 0,
        ino,
        r#type: d.ty as u32,
        state: d.state as u32,
        flags,
        uflags,
        backlog: d.backlog,
        peer: d.peer,
        fown: pb::FownEntry::default(),
        opts: opts_of(fd),
        // A relative path was bound from the task's directory, which we take to be its cwd.
        name_dir: (!d.name.is_empty() && d.name[0] != 0 && d.name[0] != b'/')
            .then(|| cwd.to_string()),
        name: d.name.clone(),
        // As CRIU's sk_shutdown: READ 1, WRITE 2, BOTH 3 (the kernel's bits, in the same order).
        shutdown: (d.shutdown != 0).then_some(d.shutdown as i32),
        file_perms: socket_file_perms(&d.name, cwd, cx.root),
        // Its file was unlinked (or replaced by another, as CRIU checks): the restore binds
        // the name, then unlinks it again.
        deleted: path_name(&d.name)
            .map(|p| seen_from(cx.root, cwd, &p))
            .map(|p| name_is_gone(&p, d.vfs))
            .filter(|&gone| gone),
        ns_id: None,
        mnt_id: None,
    };
    Ok(Dumped {
        entry,
        queued,
        external_peer,
    })
}

/// Whether the file a socket's bind made at `path` is no longer there: nothing is, or
/// another file (`vfs`: the bound file's inode and kernel-encoded device).
fn name_is_gone(path: &std::path::Path, vfs: Option<(u32, u32)>) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(st) = std::fs::symlink_metadata(path) else {
        return true;
    };
    vfs.is_some_and(|(ino, dev)| {
        let (major, minor) = (dev >> 20, dev & 0xf_ffff);
        st.ino() != u64::from(ino) || st.dev() != libc::makedev(major, minor)
    })
}

fn path_name(name: &[u8]) -> Option<std::path::PathBuf> {
    use std::os::unix::ffi::OsStrExt;
    (!name.is_empty() && name[0] != 0).then(|| {
        let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&name[..end]))
    })
}

fn bind_name(fd: BorrowedFd<'_>, name: &[u8]) -> Result<(), UnixError> {
    let a = unix_addr(name);
    let bind = || bind(fd.as_raw_fd(), &a);
    match bind() {
        Err(e) if e == nix::Error::EADDRINUSE => {
            // The killed owner leaves its socket file behind: replace it, as a restarted server
            // would (only if it is a socket).
            use std::os::unix::fs::FileTypeExt;
            if let Some(p) = path_name(name) {
                if std::fs::symlink_metadata(&p)
                    .map(|m| m.file_type().is_socket())
                    .unwrap_or(false)
                {
                    if let Err(e) = std::fs::remove_file(&p) {
                        // The bind below says what is wrong.
                        log::debug!("removing the stale socket file {}: {e}", p.display());
                    }
                    return bind()
                        .map(drop)
                        .map_err(sys(format!("bind {}", p.display())));
                }
            }
            Err(sys("bind (address in use)")(e))
        }
        r => r.map(drop).map_err(sys("bind")),
    }
}

/// Binds the socket's name, with its file's owner and mode, then runs `while_named`; a name
/// whose file had been unlinked is bound (in directories made for the moment if they are
/// gone too) and unlinked again after `while_named`.
fn bind_as_dumped(
    fd: BorrowedFd<'_>,
    e: &pb::UnixSkEntry,
    while_named: &mut dyn FnMut() -> Result<(), UnixError>,
) -> Result<(), UnixError> {
    let Some(path) = path_name(&e.name).filter(|_| e.deleted == Some(true)) else {
        bind_name(fd, &e.name)?;
        if let Some(perms) = &e.file_perms {
            apply_file_perms(&e.name, perms)?;
        }
        return while_named();
    };
    let mut made = Vec::new();
    let mut dir = path.parent();
    while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        made.push(d.to_path_buf());
        dir = d.parent();
    }
    let r = made
        .iter()
        .rev()
        .try_for_each(std::fs::create_dir)
        .map_err(sys(format!("making the directory of {}", path.display())))
        .and_then(|()| park(&path))
        .and_then(|parked| {
            // A file at that path now belongs to someone else: moved aside for the bind,
            // then put back, as CRIU does.
            let r = bind(fd.as_raw_fd(), &unix_addr(&e.name))
                .map_err(sys(format!("bind {}", path.display())))
                .and_then(|()| while_named());
            // The name was deleted when dumped: unlink it again. What cannot be removed
            // stays behind (logged); the socket itself is restored.
            if let Err(e) = std::fs::remove_file(&path) {
                log::warn!("unlinking the deleted socket name {}: {e}", path.display());
            }
            if let Some(aside) = parked {
                if let Err(e) = std::fs::rename(&aside, &path) {
                    log::warn!("putting {} back: {e}", path.display());
                }
            }
            r
        });
    for d in &made {
        if let Err(e) = std::fs::remove_dir(d) {
            log::warn!(
                "removing the directory {} made for a bind: {e}",
                d.display()
            );
        }
    }
    r
}

/// Moves a file that stands at a deleted socket name aside (`<name>.stasis-sk-ghost`) while
/// the socket binds there; returns where it went.
fn park(path: &std::path::Path) -> Result<Option<std::path::PathBuf>, UnixError> {
    if std::fs::symlink_metadata(path).is_err() {
        return Ok(None);
    }
    let mut aside = path.as_os_str().to_owned();
    aside.push(".stasis-sk-ghost");
    let aside = std::path::PathBuf::from(aside);
    std::fs::rename(path, &aside).map_err(sys(format!(
        "moving {} aside to bind a deleted socket name there",
        path.display()
    )))?;
    Ok(Some(aside))
}

fn sock_type_of(ty: u32) -> Result<SockType, UnixError> {
    SockType::try_from(ty as i32).map_err(sys("socket type"))
}

fn new_socket(ty: u32) -> Result<OwnedFd, UnixError> {
    socket(
        AddressFamily::Unix,
        sock_type_of(ty)?,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("socket"))
}

/// A task's path `p` (relative ones from its `cwd`) as we reach it, through its `root`.
fn seen_from(root: &str, cwd: &str, p: &std::path::Path) -> std::path::PathBuf {
    let full = std::path::Path::new(cwd).join(p);
    std::path::Path::new(root).join(full.strip_prefix("/").unwrap_or(&full))
}

/// The mode and owner of the socket file behind a path name (relative names from `cwd`).
fn socket_file_perms(name: &[u8], cwd: &str, root: &str) -> Option<pb::FilePermsEntry> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let p = path_name(name)?;
    let md = std::fs::symlink_metadata(seen_from(root, cwd, &p)).ok()?;
    md.file_type().is_socket().then(|| pb::FilePermsEntry {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
    })
}

/// Gives the socket file just bound the dumped mode and owner (the restorer's umask and
/// credentials made it); relative names are resolved from the current directory.
fn apply_file_perms(name: &[u8], perms: &pb::FilePermsEntry) -> Result<(), UnixError> {
    use std::os::unix::fs::PermissionsExt;
    let Some(p) = path_name(name) else {
        return Ok(());
    };
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(perms.mode))
        .map_err(sys(format!("chmod {}", p.display())))?;
    std::os::unix::fs::lchown(&p, Some(perms.uid), Some(perms.gid))
        .map_err(sys(format!("chown {}", p.display())))?;
    Ok(())
}

/// A socket with no peer in the tree: bound, listening, or connected to an external peer.
/// Gives the fd (in our table) made for a file id: files in flight are made before the
/// queues that carry them.
pub type FdOf<'a> = &'a dyn Fn(u32) -> Option<RawFd>;

pub fn restore_single(
    e: &pb::UnixSkEntry,
    external_peer_name: Option<&[u8]>,
    queue: &[Queued],
    fd_of: FdOf,
) -> Result<OwnedFd, UnixError> {
    restore_single_with(e, external_peer_name, queue, fd_of, &mut || Ok(()))
}

/// [`restore_single`], running `also_while_named` once the socket is bound, while its name
/// exists (the clients of a datagram server connect to it then).
pub fn restore_single_with(
    e: &pb::UnixSkEntry,
    external_peer_name: Option<&[u8]>,
    queue: &[Queued],
    fd_of: FdOf,
    also_while_named: &mut dyn FnMut() -> Result<(), UnixError>,
) -> Result<OwnedFd, UnixError> {
    // A datagram socket whose peer closed is one too: the kernel keeps it connected to the
    // dead peer, whose messages it still reads.
    if e.state == TCP_ESTABLISHED as u32
        && e.peer == 0
        && e.name.is_empty()
        && external_peer_name.is_none()
    {
        return restore_orphan(e, queue, fd_of);
    }
    let sock = new_socket(e.r#type)?;
    let fd = sock.as_fd();
    // A connected datagram socket takes messages from its peer only: those are lost (see the
    // support matrix); an unconnected bound one gets its queue back, sent to its name while
    // the name exists (a deleted one is unlinked right after).
    let requeue = !queue.is_empty()
        && !e.name.is_empty()
        && e.r#type == libc::SOCK_DGRAM as u32
        && external_peer_name.is_none()
        && e.peer == 0;
    let mut while_named = || {
        if requeue {
            requeue_by_name(e, queue, fd_of)?;
        }
        also_while_named()
    };
    if !e.name.is_empty() {
        // A relative name is bound from its directory, so the socket keeps that name.
        root::in_tree(e.name_dir.as_deref(), || {
            bind_as_dumped(fd, e, &mut while_named)
        })?;
    }
    if e.state == 10 {
        crate::sys::socket::listen(fd, e.backlog.max(1)).map_err(sys("listen"))?;
    }
    if let Some(peer) = external_peer_name {
        root::in_tree(None, || {
            connect(fd.as_raw_fd(), &unix_addr(peer)).map_err(sys("connect to the external peer"))
        })?;
    }
    finish(sock, e)
}

/// A socket connected to `peer`, a named socket of the tree made before it: connected by
/// name, from the peer's directory when the name is relative.
pub fn restore_connected_to(
    e: &pb::UnixSkEntry,
    peer: &pb::UnixSkEntry,
    queue: &[Queued],
    fd_of: FdOf,
) -> Result<OwnedFd, UnixError> {
    let Some(dir) = &peer.name_dir else {
        return restore_single(e, Some(&peer.name), queue, fd_of);
    };
    root::in_tree(Some(dir), || {
        restore_single(e, Some(&peer.name), queue, fd_of)
    })
}

/// Sends a bound datagram socket's queued messages again, to its name, from a new unnamed
/// socket: the receiver gets the same messages in the same order, from an unnamed sender
/// (the original senders' addresses are not in the image).
fn requeue_by_name(e: &pb::UnixSkEntry, queue: &[Queued], fd_of: FdOf) -> Result<(), UnixError> {
    let sender = new_socket(libc::SOCK_DGRAM as u32)?;
    let a = unix_addr(&e.name);
    let connect = || connect(sender.as_raw_fd(), &a);
    root::in_tree(e.name_dir.as_deref(), || {
        connect().map_err(sys("connecting to re-queue datagrams"))
    })?;
    requeue(sender.as_fd(), queue, fd_of)
}

/// Two connected ends; `a_queue` is what `a` had to read (sent again from `b`), and the other
/// way round.
pub fn restore_pair(
    a: &pb::UnixSkEntry,
    b: &pb::UnixSkEntry,
    a_queue: &[Queued],
    b_queue: &[Queued],
    fd_of: FdOf,
) -> Result<(OwnedFd, OwnedFd), UnixError> {
    let (sa, sb) = socketpair(
        AddressFamily::Unix,
        sock_type_of(a.r#type)?,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(sys("socketpair"))?;
    requeue(sb.as_fd(), a_queue, fd_of)?;
    requeue(sa.as_fd(), b_queue, fd_of)?;
    Ok((finish(sa, a)?, finish(sb, b)?))
}

/// A connected socket whose peer was closed: still connected for the task, which reads what
/// the peer sent and then end of file (or, for datagrams, ECONNREFUSED on send). Made as a
/// pair whose other end sends the queue and is closed, as CRIU does.
fn restore_orphan(
    e: &pb::UnixSkEntry,
    queue: &[Queued],
    fd_of: FdOf,
) -> Result<OwnedFd, UnixError> {
    let (sock, peer) = socketpair(
        AddressFamily::Unix,
        sock_type_of(e.r#type)?,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
    .map_err(sys("socketpair"))?;
    requeue(peer.as_fd(), queue, fd_of)?;
    drop(peer);
    finish(sock, e)
}

fn requeue(from: BorrowedFd<'_>, msgs: &[Queued], fd_of: FdOf) -> Result<(), UnixError> {
    let total: usize = msgs.iter().map(|m| m.data.len()).sum();
    if total > 0 {
        // Room for the queued bytes whatever the limits. It needs CAP_NET_ADMIN: without it
        // the sends below may block-fail (EAGAIN) on a large queue and say so.
        let room = total * 2 + (64 << 10);
        if let Err(e) = setsockopt(&from, SndBufForce, &room) {
            log::debug!("SO_SNDBUFFORCE {room} for re-queueing: {e}");
        }
    }
    for m in msgs {
        let mut off = 0;
        if !m.files.is_empty() {
            let fds = m
                .files
                .iter()
                .map(|&id| fd_of(id).ok_or(UnixError::InFlightMissing { id }))
                .collect::<Result<Vec<RawFd>, _>>()?;
            off = send_with_rights(from, &m.data, &fds, MsgFlags::MSG_DONTWAIT)
                .map_err(sys("re-queueing file descriptors in flight"))?;
        }
        while off < m.data.len() {
            off += send(from.as_raw_fd(), &m.data[off..], MsgFlags::MSG_DONTWAIT)
                .map_err(sys("re-queueing unix socket data"))?;
        }
    }
    Ok(())
}

fn finish(sock: OwnedFd, e: &pb::UnixSkEntry) -> Result<OwnedFd, UnixError> {
    let fd = sock.as_fd();
    // After the queues are refilled: a shut send side takes no more data. For a pair this
    // also shuts the peer's matching side, as the original shutdown did.
    let how = match e.shutdown.unwrap_or(0) {
        1 => Some(Shutdown::Read),
        2 => Some(Shutdown::Write),
        3 => Some(Shutdown::Both),
        _ => None,
    };
    if let Some(how) = how {
        shutdown(fd.as_raw_fd(), how).map_err(sys("shutdown"))?;
    }
    if e.opts.so_passcred == Some(true) {
        // As before the seam: a socket that cannot pass credentials still carries its data.
        if let Err(err) = setsockopt(&fd, PassCred, &true) {
            log::warn!("SO_PASSCRED on unix socket {}: {err}", e.ino);
        }
    }
    if e.opts.so_passsec == Some(true) {
        setsockopt(&fd, crate::sys::socket::PassSec, &true).map_err(sys("SO_PASSSEC"))?;
    }
    if !e.opts.so_filter.is_empty() {
        crate::sys::socket::attach_filter(fd, &e.opts.so_filter)
            .map_err(sys("SO_ATTACH_FILTER"))?;
    }
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        fcntl(fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK)).map_err(sys("O_NONBLOCK"))?;
    }
    Ok(sock)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_diag_reply() {
        let mut m = Vec::new();
        m.extend_from_slice(&[libc::AF_UNIX as u8, 1, 10, 0]);
        m.extend_from_slice(&777u32.to_ne_bytes());
        m.extend_from_slice(&[0xff; 8]);
        // UNIX_DIAG_NAME "\0abc" (abstract), UNIX_DIAG_PEER 778, UNIX_DIAG_RQLEN {0, 128},
        // UNIX_DIAG_SHUTDOWN send side
        let mut attr = |ty: u16, d: &[u8]| {
            m.extend_from_slice(&((4 + d.len()) as u16).to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.extend_from_slice(d);
            while m.len() % 4 != 0 {
                m.push(0);
            }
        };
        attr(UNIX_DIAG_NAME, b"\0abc");
        attr(UNIX_DIAG_PEER, &778u32.to_ne_bytes());
        attr(
            UNIX_DIAG_VFS,
            &[55u32.to_ne_bytes(), 0x80_0003u32.to_ne_bytes()].concat(),
        );
        attr(UNIX_DIAG_RQLEN, &[0, 0, 0, 0, 128, 0, 0, 0]);
        attr(UNIX_DIAG_SHUTDOWN, &[2]);
        // A listener's queued connections: their clients' inodes.
        attr(
            UNIX_DIAG_ICONS,
            &[901u32.to_ne_bytes(), 902u32.to_ne_bytes()].concat(),
        );
        let mut buf = Vec::new();
        buf.extend_from_slice(&((16 + m.len()) as u32).to_ne_bytes());
        buf.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.extend_from_slice(&m);
        let d = parse_diag(&buf);
        assert_eq!(
            d,
            vec![Diag {
                ino: 777,
                ty: 1,
                state: 10,
                peer: 778,
                name: b"\0abc".to_vec(),
                backlog: 128,
                shutdown: 2,
                icons: vec![901, 902],
                vfs: Some((55, 0x80_0003)),
            }]
        );
        assert!(parse_diag(&buf[..10]).is_empty());
    }
}
