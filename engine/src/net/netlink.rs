//! Netlink sockets (uevent monitors, rtnetlink and audit clients...): CRIU's `netlink_sk_entry`
//! with the protocol, the port id and multicast groups it bound, and the peer it connected to.
//! Made again with the same port id and groups, connected again. Messages queued for reading
//! are not kept (as in CRIU): the kernel's answers and events are for the old socket.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::sys::socket::getsockopt;

use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::files::kind::{Fd, FileKind, OpenCx};
use crate::files::FdKind;
use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};
use crate::sys::socket::SoProtocol;

/// Reading or making a netlink socket failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("netlink socket (file id {id}): {what}")]
    Sys {
        id: u32,
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_LIST_MEMBERSHIPS: libc::c_int = 9;
/// CRIU's `state` values.
const NETLINK_UNCONNECTED: u32 = 0;
const NETLINK_CONNECTED: u32 = 1;

/// The groups beyond the first 32 (which `bind` takes as `nl_groups`), as group numbers for
/// NETLINK_ADD_MEMBERSHIP: bit b of word w is group 32 * w + b + 1 (pure; unit-tested).
pub fn groups_past_the_first_word(words: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for (w, word) in words.iter().enumerate().skip(1) {
        for b in 0..32 {
            if word & (1 << b) != 0 {
                out.push(32 * w as u32 + b + 1);
            }
        }
    }
    out
}

/// A netlink address (`struct sockaddr_nl`).
fn sockaddr_nl(portid: u32, groups: u32) -> libc::sockaddr_nl {
    // SAFETY: sockaddr_nl is plain integers; all zeroes is a valid value.
    let mut a: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    a.nl_family = libc::AF_NETLINK as u16;
    a.nl_pid = portid;
    a.nl_groups = groups;
    a
}

/// The address getsockname or getpeername gives: (port id, first word of groups).
fn name_of(fd: BorrowedFd<'_>, peer: bool) -> io::Result<(u32, u32)> {
    let mut a = sockaddr_nl(0, 0);
    let mut len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
    let p = &mut a as *mut libc::sockaddr_nl as *mut libc::sockaddr;
    // SAFETY: the kernel writes at most `len` bytes of a sockaddr_nl into `a`.
    let r = unsafe {
        if peer {
            libc::getpeername(fd.as_raw_fd(), p, &mut len)
        } else {
            libc::getsockname(fd.as_raw_fd(), p, &mut len)
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((a.nl_pid, a.nl_groups))
}

/// Every multicast group the socket is in, as bitmap words (NETLINK_LIST_MEMBERSHIPS).
fn memberships(fd: BorrowedFd<'_>) -> io::Result<Vec<u32>> {
    let mut words = vec![0u32; 32];
    let mut len = (words.len() * 4) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` bytes into `words` and sets the size it needs.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_NETLINK,
            NETLINK_LIST_MEMBERSHIPS,
            words.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    words.truncate((len as usize / 4).min(words.len()));
    while words.last() == Some(&0) {
        words.pop();
    }
    Ok(words)
}

/// The entry of netlink socket `sock` (our copy of the task's fd).
pub fn dump(
    sock: BorrowedFd<'_>,
    id: u32,
    ino: u32,
    flags: u32,
) -> Result<pb::NetlinkSkEntry, NetlinkError> {
    let err = |what| move |source| NetlinkError::Sys { id, what, source };
    let protocol = getsockopt(&sock, SoProtocol).map_err(|e| err("SO_PROTOCOL")(e.into()))? as u32;
    let (portid, _) = name_of(sock, false).map_err(err("getsockname"))?;
    let (dst_portid, dst_group) = match name_of(sock, true) {
        Ok(peer) => peer,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => (0, 0),
        Err(e) => return Err(err("getpeername")(e)),
    };
    let groups = memberships(sock).map_err(err("NETLINK_LIST_MEMBERSHIPS"))?;
    Ok(pb::NetlinkSkEntry {
        id,
        ino,
        protocol,
        state: if dst_portid != 0 || dst_group != 0 {
            NETLINK_CONNECTED
        } else {
            NETLINK_UNCONNECTED
        },
        flags,
        portid,
        groups,
        dst_portid,
        dst_group,
        fown: pb::FownEntry::default(),
        opts: super::buffer_opts(sock),
        ns_id: None,
    })
}

/// A new netlink socket like `e`: bound to its port id and groups, connected to its peer.
pub fn restore(e: &pb::NetlinkSkEntry) -> Result<OwnedFd, NetlinkError> {
    let err = |what| {
        move |source| NetlinkError::Sys {
            id: e.id,
            what,
            source,
        }
    };
    // SAFETY: socket(2) takes integers only; a non-negative result is a new fd we own.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            e.protocol as libc::c_int,
        )
    };
    if fd < 0 {
        return Err(err("socket")(io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let first = e.groups.first().copied().unwrap_or(0);
    if e.portid != 0 || first != 0 {
        let a = sockaddr_nl(e.portid, first);
        // SAFETY: bind(2) reads a sockaddr_nl of the given size from `a`.
        let r = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                &a as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(err("bind")(io::Error::last_os_error()));
        }
    }
    for g in groups_past_the_first_word(&e.groups) {
        // SAFETY: setsockopt(2) reads one int from `g`.
        let r = unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                SOL_NETLINK,
                NETLINK_ADD_MEMBERSHIP,
                (&g as *const u32).cast(),
                4,
            )
        };
        if r < 0 {
            return Err(err("NETLINK_ADD_MEMBERSHIP")(io::Error::last_os_error()));
        }
    }
    if e.state == NETLINK_CONNECTED {
        let a = sockaddr_nl(e.dst_portid, e.dst_group);
        // SAFETY: connect(2) reads a sockaddr_nl of the given size from `a`.
        let r = unsafe {
            libc::connect(
                sock.as_raw_fd(),
                &a as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(err("connect")(io::Error::last_os_error()));
        }
    }
    super::set_buffers_and_mode(&sock, &e.opts, e.flags)
        .map_err(|e| err("O_NONBLOCK")(e.into()))?;
    Ok(sock)
}

/// The netlink socket kind.
pub struct NetlinkSocket;

impl FileKind for NetlinkSocket {
    fn name(&self) -> &'static str {
        "netlink-socket"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        matches!(fd.class, FdKind::Socket(_))
            && fd.socket.is_some_and(|(_, f)| f == libc::AF_NETLINK)
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let FdKind::Socket(ino) = *fd.class else {
            unreachable!("claimed sockets only")
        };
        let (sock, _) = fd.socket.expect("claimed with a copy");
        let flags = fd.flags();
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
            let e = dump(sock.as_fd(), id, ino as u32, flags).map_err(|source| {
                crate::files::FilesError::Netlink {
                    pid: fd.pid,
                    fd: fd.fd,
                    source,
                }
            })?;
            Ok(pb::FileEntry {
                r#type: pb::FdTypes::Netlinksk as i32,
                id,
                nlsk: Some(e),
                ..Default::default()
            })
        })?;
        Ok((pb::FdTypes::Netlinksk, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.nlsk.is_some()
    }

    fn open(
        &self,
        _cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let e = entry.nlsk.as_ref().expect("owned: nlsk is set");
        Ok(Some(restore(e)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_past_32_become_memberships() {
        assert!(groups_past_the_first_word(&[0xffff_ffff]).is_empty());
        assert_eq!(groups_past_the_first_word(&[1, 0b101]), vec![33, 35]);
        assert_eq!(groups_past_the_first_word(&[0, 0, 1 << 31]), vec![96]);
    }
}
