//! The inet socket kind (TCP and UDP over IPv4 and IPv6): the glue between the file table
//! and `net::inet`. An established TCP connection is locked (nftables, see
//! `stasis_netns::nftlock`) before it is read, and its queues go to tcp-stream-<ino>.img.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use super::InetError;
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::files::kind::{Fd, FileKind, OpenCx};
use crate::files::{FdKind, FileTable, FilesError};
use std::os::unix::fs::MetadataExt;

use crate::images::{magic, names, pb, ImageKind, ImageWriter};
use crate::restore::{DumpImage, RestoreError};

impl FileTable {
    /// An inet socket (its entry already read), shared by kcmp like any open file.
    pub fn add_inet(
        &mut self,
        pid: u32,
        fd: i32,
        make: impl FnOnce(u32) -> Result<pb::InetSkEntry, FilesError>,
    ) -> Result<(u32, bool), FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok((id, false));
        }
        let id = self.next_id();
        let entry = make(id)?;
        self.remember(pid, fd, md.dev(), md.ino(), id);
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Inetsk as i32,
            id,
            isk: Some(entry),
            ..Default::default()
        });
        Ok((id, true))
    }
}

/// The inet socket kind.
pub struct InetSocket;

impl FileKind for InetSocket {
    fn name(&self) -> &'static str {
        "inet-socket"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        matches!(fd.class, FdKind::Socket(_))
            && fd
                .socket
                .is_some_and(|(_, f)| f == libc::AF_INET || f == libc::AF_INET6)
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let (pid, fd_no) = (fd.pid, fd.fd);
        let FdKind::Socket(ino) = *fd.class else {
            unreachable!("claimed sockets only")
        };
        let (sock, _) = fd.socket.expect("claimed with a copy");
        let sock_err = |source| DumpError::Socket {
            pid,
            fd: fd_no,
            source,
        };
        let sock = sock.try_clone().map_err(|source| {
            sock_err(InetError::Sys {
                what: "dup".into(),
                source,
            })
        })?;
        let (root, nft_lock) = (cx.opts.pid, &mut *cx.nft_lock);
        let tree_netns = cx.img.net_ns.as_ref();
        let shutdowns = &mut cx.img.inet_shutdowns;
        // The network lock goes up before the connection is read: from then on no segment
        // of the peer reaches it (nor, after the kill, a closed port).
        let mut lock_conn = |local_port: u16, remote_port: u16| -> std::io::Result<()> {
            let conn = [stasis_netns::nftlock::Conn {
                local_port,
                remote_port,
            }];
            let (table, create) = match nft_lock.as_ref() {
                Some(t) => (t.clone(), false),
                None => {
                    let now = crate::dump::uptime_us().map_err(std::io::Error::other)?;
                    (
                        crate::dump::net_lock_table(&format!("{root:x}-{now:x}")),
                        true,
                    )
                }
            };
            // In the tree's own network namespace when it has one: its traffic never
            // crosses ours.
            match tree_netns {
                Some(ns) => stasis_netns::nftlock::add_in(ns.as_fd(), &table, &conn, create),
                None => stasis_netns::nftlock::add(&table, &conn, create),
            }
            .map_err(std::io::Error::other)?;
            *nft_lock = Some(table);
            Ok(())
        };
        let dumped = super::dump(
            sock,
            0,
            ino,
            fd.flags(),
            match (cx.opts.tcp_established, cx.opts.tcp_close) {
                (true, _) => super::Established::Repair,
                (false, true) => super::Established::Close,
                (false, false) => super::Established::Refuse,
            },
            &mut lock_conn,
            shutdowns,
        )
        .map_err(sock_err)?;
        let mut entry = Some(dumped.entry);
        let (id, _) = cx.img.files.add_inet(pid, fd_no, |id| {
            let mut e = entry.take().expect("called once");
            e.id = id;
            Ok(e)
        })?;
        if let Some((stream, inq, outq, lock)) = dumped.stream {
            cx.tcp_locks.push(lock);
            let mut w = ImageWriter::new(ImageKind::Normal, magic::TCP_STREAM);
            w.push(&stream);
            w.push_raw(&inq);
            w.push_raw(&outq);
            crate::dump::write_file(
                &cx.img.dir.join(names::tcp_stream(ino as u32)),
                &w.into_bytes(),
            )?;
        }
        Ok((pb::FdTypes::Inetsk, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.isk.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let e = entry.isk.as_ref().expect("owned: isk is set");
        let id = entry.id;
        let inet_err = |source| RestoreError::Socket { id, source };
        let stream = cx.img.tcp_streams.get(&e.ino);
        let established =
            e.proto == libc::IPPROTO_TCP as u32 && super::halfclose::is_connection(e.state);
        let fd = if established && cx.opts.tcp_close {
            // --tcp-close: the connection is gone; the task gets a closed socket.
            let closed = pb::InetSkEntry {
                state: 7,
                src_port: 0,
                dst_port: 0,
                src_addr: Vec::new(),
                dst_addr: Vec::new(),
                ..e.clone()
            };
            let fd = super::restore(&closed, None).map_err(inet_err)?;
            // Shut both ways, as CRIU does: reads see end of file, writes EPIPE, poll
            // POLLHUP. The kernel marks an unconnected socket so, answering ENOTCONN.
            match nix::sys::socket::shutdown(fd.as_raw_fd(), nix::sys::socket::Shutdown::Both) {
                Ok(()) | Err(nix::Error::ENOTCONN) => {}
                Err(e) => {
                    return Err(inet_err(InetError::Sys {
                        what: "shutdown of a --tcp-close socket".into(),
                        source: e.into(),
                    }))
                }
            }
            fd
        } else {
            let s = stream.map(|(s, i, o)| (s, i.as_slice(), o.as_slice()));
            let fd = super::restore(e, s).map_err(inet_err)?;
            if s.is_some() {
                let keep = fd.try_clone().map_err(|source| RestoreError::Setup {
                    what: format!("dup of socket (file id {id})"),
                    source,
                })?;
                if let Ok(mut v) = cx.img.in_repair.lock() {
                    v.push((keep, id));
                }
            }
            fd
        };
        Ok(Some(fd))
    }
}

/// The restored established connections as CRIU's iptables lock rules name them (a v4-mapped
/// IPv6 address as the IPv4 one, as CRIU locks it).
pub(crate) fn locked_conns(img: &DumpImage) -> Vec<stasis_netns::iptlock::LockedConn> {
    let bytes = |words: &[u32]| -> Vec<u8> {
        let b: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        let mapped = b.len() == 16 && b[..10].iter().all(|&x| x == 0) && b[10..12] == [0xff, 0xff];
        if mapped {
            b[12..].to_vec()
        } else {
            b
        }
    };
    img.files
        .values()
        .filter_map(|f| f.isk.as_ref())
        .filter(|e| img.tcp_streams.contains_key(&e.ino))
        .map(|e| stasis_netns::iptlock::LockedConn {
            local: bytes(&e.src_addr),
            local_port: e.src_port as u16,
            remote: bytes(&e.dst_addr),
            remote_port: e.dst_port as u16,
        })
        .collect()
}

/// CRIU's iptables lock rules of the restored connections (its default lock), taken away
/// where they are (on the host that dumped, or in a kept namespace): else the peers' packets
/// stay dropped. Best effort: a failure is logged.
pub(crate) fn remove_criu_iptables_lock(img: &DumpImage) {
    let conns = locked_conns(img);
    // iptables' nf_tables backend made them nftables rules; its legacy one, x_tables entries.
    let nft = stasis_netns::iptlock::remove_criu_lock_rules(None, &conns)
        .inspect_err(|e| log::warn!("cannot remove CRIU's iptables lock rules: {e}"));
    let legacy = stasis_netns::iptlock_legacy::remove_criu_lock_rules(&conns)
        .inspect_err(|e| log::warn!("cannot remove CRIU's iptables-legacy lock rules: {e}"));
    match (nft, legacy) {
        (Ok(0), Ok(0)) => log::info!(
            "CRIU's iptables lock: no rule of the restored connections here (dumped on another \
             host)"
        ),
        (a, b) => log::info!(
            "CRIU's iptables lock: {} rules removed",
            a.unwrap_or(0) + b.unwrap_or(0)
        ),
    }
}

/// Established TCP connections need --tcp-established (with their streams) or --tcp-close
/// at restore; one dumped with --tcp-close (no stream) only the latter. Checked before
/// anything is made.
pub(crate) fn check_tcp_flags(
    img: &DumpImage,
    opts: &crate::restore::RestoreOptions,
) -> Result<(), RestoreError> {
    if opts.tcp_close {
        return Ok(());
    }
    let unrestorable = img.files.values().filter_map(|f| f.isk.as_ref()).any(|e| {
        e.proto == libc::IPPROTO_TCP as u32
            && super::halfclose::is_connection(e.state)
            && (!opts.tcp_established || !img.tcp_streams.contains_key(&e.ino))
    });
    if unrestorable {
        return Err(RestoreError::TcpNeedsFlag {
            pid: img.tasks[0].pid(),
        });
    }
    Ok(())
}

/// Takes every connection the restore rebuilt out of repair mode, once the network lock is
/// gone (see [`super::leave_repair`]).
pub(crate) fn leave_repair_all(img: &DumpImage) -> Result<(), RestoreError> {
    let taken = img
        .in_repair
        .lock()
        .map(|mut v| std::mem::take(&mut *v))
        .unwrap_or_default();
    for (fd, id) in taken {
        let Some(e) = img.files.get(&id).and_then(|f| f.isk.as_ref()) else {
            continue;
        };
        super::leave_repair(fd.as_fd(), e).map_err(|source| RestoreError::Socket { id, source })?;
    }
    Ok(())
}
