//! The unix socket kind: the glue between the file table and `net::unix`, which reads and
//! makes the sockets. Queued messages go to sk-queues.img; files in flight on them are
//! dumped like any fd (from our own table, where peeking put them).

use std::collections::HashMap;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::UnixError;
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::files::kind::{Fd, FileKind, OpenCx};
use crate::files::{FdKind, FileTable, FilesError};
use std::os::unix::fs::MetadataExt;

use crate::images::{magic, names, pb, ImageKind, ImageWriter};
use crate::restore::{DumpImage, RestoreError};

/// Messages queued on unix sockets: (socket file id, bytes and files in flight).
#[derive(Default)]
struct SkQueues(Vec<(u32, super::Queued)>);

/// Restore: the second end of a pair, made with the first, waiting for its turn.
#[derive(Default)]
struct Pending(HashMap<u32, OwnedFd>);

impl FileTable {
    /// A unix socket (its state already read), shared by kcmp like any open file. Its queued
    /// messages go to sk-queues.img; an external peer gets an entry of its own, as in CRIU.
    pub fn add_unix(
        &mut self,
        pid: u32,
        fd: i32,
        dumped: super::Dumped,
        queued: Vec<super::Queued>,
    ) -> Result<u32, FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok(id);
        }
        let id = self.next_id();
        let mut entry = dumped.entry;
        entry.id = id;
        self.remember(pid, fd, md.dev(), md.ino(), id);
        let q = self.slots.get::<SkQueues>();
        for m in queued {
            q.0.push((id, m));
        }
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Unixsk as i32,
            id,
            usk: Some(entry.clone()),
            ..Default::default()
        });
        if let Some(peer) = dumped.external_peer {
            if !self
                .entries
                .iter()
                .any(|e| e.usk.as_ref().is_some_and(|u| u.ino == peer.ino))
            {
                let pid_ = self.next_id();
                self.entries.push(pb::FileEntry {
                    r#type: pb::FdTypes::Unixsk as i32,
                    id: pid_,
                    usk: Some(pb::UnixSkEntry {
                        id: pid_,
                        ino: peer.ino,
                        r#type: peer.ty as u32,
                        state: peer.state as u32,
                        name: peer.name,
                        peer: 0,
                        ..entry
                    }),
                    ..Default::default()
                });
            }
        }
        Ok(id)
    }
}

/// Socket fds of the tree's tasks: (pid, fd, inode).
fn tree_socket_fds(pids: &[u32]) -> Result<Vec<(u32, i32, u32)>, DumpError> {
    let mut out = Vec::new();
    for &pid in pids {
        for fd in crate::proc::fds(pid)? {
            // An fd closed since it was listed is no socket of the tree.
            let Ok(l) = crate::proc::readlink(pid, &format!("fd/{fd}")) else {
                continue;
            };
            if let Some(ino) = l
                .strip_prefix("socket:[")
                .and_then(|r| r.trim_end_matches(']').parse().ok())
            {
                out.push((pid, fd, ino));
            }
        }
    }
    Ok(out)
}

/// Inodes of the sockets in flight on the tree's unix sockets (their peers are inside the
/// tree too). Only looked for when a peer seems to be outside: it reads every socket's fdinfo.
fn sockets_in_flight_in_tree(pids: &[u32]) -> Result<Vec<u32>, DumpError> {
    let mut out = Vec::new();
    for (pid, fd, _) in tree_socket_fds(pids)? {
        let carries = crate::proc::fdinfo(pid, fd)
            .ok()
            .and_then(|i| i.extra.get("scm_fds")?.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if carries == 0 {
            continue;
        }
        let copy = crate::sys::pidfd::pidfd_open(pid)
            .ok()
            .and_then(|p| crate::sys::pidfd::pidfd_getfd(p.as_fd(), fd).ok());
        if let Some(copy) = copy {
            out.extend(super::sockets_in_flight(&copy));
        }
    }
    Ok(out)
}

/// Inodes of every socket open in the tree's live tasks: a unix peer among them is inside.
pub(crate) fn tree_socket_inodes(
    live: &[u32],
) -> Result<std::collections::HashSet<u32>, DumpError> {
    Ok(tree_socket_fds(live)?
        .into_iter()
        .map(|(_, _, ino)| ino)
        .collect())
}

/// The unix socket kind.
pub struct UnixSocket;

fn unix_err(id: u32) -> impl FnOnce(UnixError) -> RestoreError {
    move |source| RestoreError::Unix { id, source }
}

impl FileKind for UnixSocket {
    fn name(&self) -> &'static str {
        "unix-socket"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        matches!(fd.class, FdKind::Socket(_)) && fd.socket.is_some_and(|(_, f)| f == libc::AF_UNIX)
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let (pid, fd_no) = (fd.pid, fd.fd);
        let FdKind::Socket(ino) = *fd.class else {
            unreachable!("claimed sockets only")
        };
        let (sock, _) = fd.socket.expect("claimed with a copy");

        let in_flight = fd
            .info
            .extra
            .get("scm_fds")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let flags = fd.info.flags & !(libc::O_CLOEXEC as u32);
        let cwd = crate::proc::readlink(pid, "cwd")?;
        let root = format!("/proc/{pid}/root");
        let me = std::process::id();
        let dump_unix =
            |tree_sockets: &std::collections::HashSet<u32>,
             queued: &std::cell::OnceCell<std::collections::HashMap<u32, u32>>| {
                let ucx = super::Context {
                    cwd: &cwd,
                    root: &root,
                    in_flight,
                    nested: pid == me,
                    ext_unix_sk: cx.opts.ext_unix_sk,
                    ext_inodes: &cx.opts.ext_unix_sk_inodes,
                    tree_sockets,
                    queued,
                };
                super::dump(sock, ino as u32, flags, &ucx)
            };
        let unix_err = |source| DumpError::Unix {
            pid,
            fd: fd_no,
            source,
        };
        let mut dumped = match dump_unix(&cx.img.tree_sockets, &cx.img.unix_queued) {
            // The peer may be in flight on a socket of the tree: look once, retry.
            Err(super::UnixError::ExternalPeer { .. }) if !cx.img.in_flight_sockets_known => {
                cx.img.in_flight_sockets_known = true;
                let found = sockets_in_flight_in_tree(&cx.img.live_pids)?;
                cx.img.tree_sockets.extend(found);
                // Listeners in flight have queues too.
                cx.img.unix_queued = Default::default();
                dump_unix(&cx.img.tree_sockets, &cx.img.unix_queued)
            }
            r => r,
        }
        .map_err(unix_err)?;
        // Files in flight: the peek put them in our own table, where they are
        // dumped like any fd (and kept open until the dump ends, for kcmp).
        let mut queued = Vec::new();
        for p in std::mem::take(&mut dumped.queued) {
            let mut files = Vec::new();
            for f in p.fds {
                super::check_in_flight(f.as_fd(), ino as u32).map_err(unix_err)?;
                let e = crate::dump::fds::dump_fd(cx, me, f.as_raw_fd())?;
                files.push(e.id);
                cx.img.in_flight.push(f);
            }
            queued.push(super::Queued {
                data: p.data,
                files,
            });
        }
        let id = cx.img.files.add_unix(pid, fd_no, dumped, queued)?;
        Ok((pb::FdTypes::Unixsk, id))
    }

    fn write_images(&self, table: &FileTable, dir: &std::path::Path) -> Result<(), FilesError> {
        let mut w = ImageWriter::new(ImageKind::Normal, magic::SK_QUEUES);
        for (id, m) in table
            .slots
            .peek::<SkQueues>()
            .map(|q| &q.0[..])
            .unwrap_or(&[])
        {
            let scm = (!m.files.is_empty())
                .then(|| pb::ScmEntry {
                    r#type: libc::SCM_RIGHTS as u32,
                    rights: m.files.clone(),
                })
                .into_iter()
                .collect();
            w.push(&pb::SkPacketEntry {
                id_for: *id,
                length: m.data.len() as u32,
                scm,
            });
            w.push_raw(&m.data);
        }
        crate::files::write(&dir.join(names::SK_QUEUES), &w.into_bytes())
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.usk.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let e = entry.usk.as_ref().expect("owned: usk is set");
        let id = entry.id;
        Ok(Some(open_unix(cx, id, e)?))
    }
}

fn open_unix(cx: &mut OpenCx, id: u32, e: &pb::UnixSkEntry) -> Result<OwnedFd, RestoreError> {
    let fd = if let Some(fd) = cx.slots.get::<Pending>().0.remove(&id) {
        fd
    } else if !dgram_clients(cx, e).is_empty() {
        make_dgram_server(cx, id, e)?
    } else if e.uflags & super::USK_INHERIT != 0 {
        // Connected outside the tree: the caller hands over the replacement.
        let key = format!("socket:[{}]", e.ino);
        match cx.opts.inherit_fds.iter().find(|i| i.key == key) {
            Some(i) => crate::files::reg::dup_raw(i.fd)?,
            None => return Err(unix_err(id)(UnixError::NeedsInheritFd { ino: e.ino })),
        }
    } else {
        let peer = (e.peer != 0)
            .then(|| {
                cx.img
                    .files
                    .values()
                    .find(|o| o.usk.as_ref().is_some_and(|u| u.ino == e.peer))
            })
            .flatten();
        let queue = |fid: u32| cx.img.sk_queues.get(&fid).map(Vec::as_slice).unwrap_or(&[]);
        let made = &cx.made;
        let fd_of = |fid: u32| made.get(&fid).copied();
        match peer {
            // A connection that waited in a listener's queue: connected to the listener (made
            // first: it has the lower id) by its name, it waits there again.
            Some(pf) if pf.usk.as_ref().is_some_and(|u| u.state == 10) => {
                let listener = pf.usk.as_ref().expect("matched a unix entry");
                super::restore_connected_to(e, listener, queue(id), &fd_of).map_err(unix_err(id))?
            }
            // A datagram socket connected to itself: bound, then connected to its own name.
            Some(_) if e.peer == e.ino => {
                super::restore_connected_to(e, e, queue(id), &fd_of).map_err(unix_err(id))?
            }
            // A datagram client of a named server of the tree: made with the server (below).
            Some(pf) if is_dgram_client_of(cx, e, pf) => {
                let pe = pf.usk.as_ref().expect("matched a unix entry");
                let server = make_dgram_server(cx, pf.id, pe)?;
                let pending = &mut cx.slots.get::<Pending>().0;
                pending.insert(pf.id, server);
                pending
                    .remove(&id)
                    .expect("the server's clients were made with it")
            }
            // The peer is a socket of the tree: both ends are made now, as one pair.
            Some(pf) if cx.used.contains(&pf.id) => {
                let pe = pf.usk.as_ref().expect("matched a unix entry");
                let (a, b) = super::restore_pair(e, pe, queue(id), queue(pf.id), &fd_of)
                    .map_err(unix_err(id))?;
                cx.slots.get::<Pending>().0.insert(pf.id, b);
                a
            }
            // A named peer outside the tree (kept as an entry of its own).
            Some(pf) => {
                let name = pf.usk.as_ref().map(|u| u.name.clone()).unwrap_or_default();
                super::restore_single(e, Some(&name), queue(id), &fd_of).map_err(unix_err(id))?
            }
            None => super::restore_single(e, None, queue(id), &fd_of).map_err(unix_err(id))?,
        }
    };
    Ok(fd)
}

/// Whether `e` is a datagram socket connected to `peer`, a named socket of the tree that is
/// not connected back to it (a server with clients): such clients connect to the server by
/// name, since a pair would give each its own server.
fn is_dgram_client_of(cx: &OpenCx, e: &pb::UnixSkEntry, peer: &pb::FileEntry) -> bool {
    e.r#type == libc::SOCK_DGRAM as u32
        && cx.used.contains(&peer.id)
        && peer
            .usk
            .as_ref()
            .is_some_and(|u| u.ino != e.ino && u.peer != e.ino && !u.name.is_empty())
}

/// The datagram clients of the tree connected to `server`: (file id, entry).
fn dgram_clients<'a>(cx: &OpenCx<'a>, server: &pb::UnixSkEntry) -> Vec<(u32, &'a pb::UnixSkEntry)> {
    if server.r#type != libc::SOCK_DGRAM as u32 || server.name.is_empty() {
        return Vec::new();
    }
    cx.img
        .files
        .values()
        .filter(|f| cx.used.contains(&f.id))
        .filter_map(|f| Some((f.id, f.usk.as_ref()?)))
        .filter(|(_, c)| {
            c.r#type == server.r#type
                && c.peer == server.ino
                && c.ino != server.ino
                && server.peer != c.ino
        })
        .collect()
}

/// A named datagram server of the tree, and its clients connected to it by name while the
/// name exists (a deleted name is unlinked right after the bind); the clients wait in
/// `Pending` for their turn.
fn make_dgram_server(
    cx: &mut OpenCx,
    id: u32,
    e: &pb::UnixSkEntry,
) -> Result<OwnedFd, RestoreError> {
    let clients = dgram_clients(cx, e);
    let queue = |fid: u32| cx.img.sk_queues.get(&fid).map(Vec::as_slice).unwrap_or(&[]);
    let made = &cx.made;
    let fd_of = |fid: u32| made.get(&fid).copied();
    let mut connected = Vec::new();
    let mut connect_clients = || {
        for &(cid, c) in &clients {
            let fd =
                super::restore_connected_to(c, e, queue(cid), &fd_of).map_err(|err| (cid, err))?;
            connected.push((cid, fd));
        }
        Ok(())
    };
    let mut failed = None;
    let server = super::restore_single_with(e, None, queue(id), &fd_of, &mut || {
        connect_clients().map_err(|(cid, err)| {
            failed = Some(cid);
            err
        })
    })
    .map_err(|err| unix_err(failed.unwrap_or(id))(err))?;
    cx.slots.get::<Pending>().0.extend(connected);
    Ok(server)
}
