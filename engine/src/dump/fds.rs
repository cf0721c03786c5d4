//! The fds of one task: each is classified once, handed to the kind that claims it (see
//! [`crate::files::kind`]), and its locks recorded. Nothing here knows any kind's details.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use super::{DumpError, DumpOptions, DumpStats, Images};
use crate::files::kind::{Fd, KINDS};
use crate::files::{self, FdKind};
use crate::images::pb;
use crate::net::inet::TcpLock;
use crate::proc;
use crate::sys::pidfd::{pidfd_getfd, pidfd_open};

/// What the kinds share while the fds of the tree are dumped.
pub(crate) struct DumpCx<'a> {
    pub opts: &'a DumpOptions,
    pub img: &'a mut Images,
    pub stats: &'a mut DumpStats,
    /// The nftables table that locks the dumped TCP connections, once one exists.
    pub nft_lock: &'a mut Option<String>,
    /// Established connections read so far, held in repair mode until the dump ends.
    pub tcp_locks: Vec<TcpLock>,
    /// A pidfd per task whose fds are being read, opened on first need.
    pidfds: HashMap<u32, OwnedFd>,
    /// (fd, file id) of the task's fds in O_ASYNC mode: their owner and signal are read from
    /// inside the task (fcntl), which no /proc file shows.
    pub async_fds: Vec<(i32, u32)>,
}

impl DumpCx<'_> {
    /// Our own copy of fd `fd` of `pid` (the same open file), through its pidfd.
    pub fn copy_fd(&mut self, pid: u32, fd: i32) -> std::io::Result<OwnedFd> {
        let pidfd = match self.pidfds.entry(pid) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(pidfd_open(pid)?),
        };
        pidfd_getfd(pidfd.as_fd(), fd)
    }
}

/// A task's fds as dumped: their entries, the TCP connections read (returned locked, see
/// [`TcpLock`]), and the fds in O_ASYNC mode with their file ids.
pub(crate) type TaskFds = (Vec<pb::FdinfoEntry>, Vec<TcpLock>, Vec<(i32, u32)>);

/// Every fd of `pid`.
pub(crate) fn dump_fds(
    pid: u32,
    opts: &DumpOptions,
    img: &mut Images,
    stats: &mut DumpStats,
    nft_lock: &mut Option<String>,
) -> Result<TaskFds, DumpError> {
    let mut cx = DumpCx {
        opts,
        img,
        stats,
        nft_lock,
        tcp_locks: Vec::new(),
        pidfds: HashMap::new(),
        async_fds: Vec::new(),
    };
    let mut out = Vec::new();
    for fd in proc::fds(pid)? {
        out.push(dump_fd(&mut cx, pid, fd)?);
    }
    Ok((out, cx.tcp_locks, cx.async_fds))
}

/// One fd of `pid` (or, with `pid` our own, a file in flight on a socket of the tree).
pub(crate) fn dump_fd(cx: &mut DumpCx, pid: u32, fd: i32) -> Result<pb::FdinfoEntry, DumpError> {
    let link = proc::readlink(pid, &format!("fd/{fd}"))?;
    let info = proc::fdinfo(pid, fd)?;
    let class = files::classify(pid, fd, &link)?;
    let (ty, id) = match &class {
        FdKind::Unsupported(what) => {
            return Err(DumpError::UnsupportedFd {
                pid,
                fd,
                what: what.clone(),
            })
        }
        // The same socket through another fd (dup, fork): one file, its own type.
        FdKind::Socket(_) if cx.img.files.known(pid, fd).is_some() => {
            let (id, ty) = cx.img.files.known(pid, fd).expect("checked");
            (ty, id)
        }
        FdKind::Socket(ino) => {
            let sock = cx.copy_fd(pid, fd).map_err(|source| DumpError::Socket {
                pid,
                fd,
                source: crate::net::inet::InetError::Sys {
                    what: "pidfd_getfd".into(),
                    source,
                },
            })?;
            let family = crate::net::family(&sock);
            let this = Fd {
                pid,
                fd,
                link: &link,
                info: &info,
                class: &class,
                socket: Some((&sock, family)),
            };
            dispatch(cx, &this).unwrap_or_else(|| {
                Err(DumpError::UnsupportedFd {
                    pid,
                    fd,
                    what: format!("{} socket (socket:[{ino}])", family_name(family)),
                })
            })?
        }
        _ => {
            let this = Fd {
                pid,
                fd,
                link: &link,
                info: &info,
                class: &class,
                socket: None,
            };
            dispatch(cx, &this).unwrap_or_else(|| {
                Err(DumpError::UnsupportedFd {
                    pid,
                    fd,
                    what: format!("{class:?} ({link})"),
                })
            })?
        }
    };
    // A file in flight shows its file's locks too; they belong to the tasks holding it.
    if pid != std::process::id() {
        files::locks::dump(cx, pid, fd, &link, &info)?;
    }
    if pid != std::process::id() && info.flags & libc::O_ASYNC as u32 != 0 {
        cx.async_fds.push((fd, id));
    }
    // fdinfo's flags carry O_CLOEXEC for close-on-exec descriptors.
    let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
    Ok(pb::FdinfoEntry {
        id,
        flags: cloexec as u32,
        r#type: ty as i32,
        fd: fd as u32,
        xattr_security_selinux: None,
    })
}

/// The first kind that claims `fd` dumps it; None if no kind does.
fn dispatch(cx: &mut DumpCx, fd: &Fd) -> Option<Result<(pb::FdTypes, u32), DumpError>> {
    let kind = KINDS.iter().find(|k| k.claims(fd, cx))?;
    log::debug!("pid {} fd {}: {}", fd.pid, fd.fd, kind.name());
    Some(kind.dump(cx, fd))
}

fn family_name(family: i32) -> &'static str {
    match family {
        libc::AF_UNIX => "unix",
        libc::AF_NETLINK => "netlink",
        libc::AF_PACKET => "packet",
        _ => "other",
    }
}
