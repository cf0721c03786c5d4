//! Files of `/dev/net/tun`: the queues of the tree's tun and tap devices (a VPN client's
//! interface: openvpn, wireguard-go, tailscale). Saved as CRIU saves them, a regular-file
//! entry of the device node and a `tunfile_entry` of the same id naming the device its fdinfo
//! shows (`iff:`); the device itself is a link of the tree's network namespace (see
//! stasis_netns::tun), made persistent by the restore until this file attaches to it again
//! with `TUNSETIFF` (a detached queue of a multiqueue device, which `TUNGETIFF` shows, is
//! detached again), then given back its own persistence. Packets queued in the device when it
//! was dumped are not kept (the network may drop any packet). A device of a network namespace
//! the tree does not own is refused: nothing would make it again.

use std::os::fd::{AsFd, OwnedFd};

use super::kind::{Fd, FileKind, OpenCx};
use super::FdKind;
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};

/// The tun character device, 10:200.
pub const TUN_DEVICE: (u32, u32) = (10, 200);

/// The tun-file kind.
pub struct TunFile;

impl FileKind for TunFile {
    fn name(&self) -> &'static str {
        "tun-file"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::Tun
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        // Empty for a file attached to no device.
        let netdev = fd
            .info
            .extra
            .get("iff")
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty());
        if let Some(dev) = &netdev {
            if cx.img.ns_ids.net != crate::ns::net::TREE_NS_ID {
                return Err(DumpError::UnsupportedFd {
                    pid: fd.pid,
                    fd: fd.fd,
                    what: format!(
                        "tun device {dev} of a network namespace the tree does not own (nothing \
                         would make the device again)"
                    ),
                });
            }
        }
        // A detached queue of a multiqueue device (fdinfo names the device all the same).
        let detached = match &netdev {
            Some(_) => {
                let io = |what| {
                    move |source| DumpError::FdIo {
                        pid: fd.pid,
                        fd: fd.fd,
                        what,
                        source,
                    }
                };
                let copy = cx.copy_fd(fd.pid, fd.fd).map_err(io("pidfd_getfd"))?;
                let detached = stasis_netns::tun::is_detached_queue(copy.as_fd())
                    .map_err(io("TUNGETIFF"))?;
                detached.then_some(true)
            }
            None => None,
        };
        let flags = fd.flags();
        let pos = fd.info.pos;
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
            Ok(pb::FileEntry {
                r#type: pb::FdTypes::Tunf as i32,
                id,
                // Written apart as CRIU writes them: a regular file of the same id (the device
                // node, with the open flags), then the tun file.
                reg: Some(pb::RegFileEntry {
                    id,
                    flags,
                    pos,
                    name: "/dev/net/tun".into(),
                    ..Default::default()
                }),
                tunf: Some(pb::TunfileEntry {
                    id,
                    netdev: netdev.clone(),
                    detached,
                    ns_id: None,
                }),
                ..Default::default()
            })
        })?;
        Ok((pb::FdTypes::Tunf, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.tunf.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let t = entry.tunf.as_ref().expect("owned: tunf is set");
        let flags = entry.reg.as_ref().map_or(libc::O_RDWR as u32, |r| r.flags);
        let err = |what: String| {
            move |source| RestoreError::Setup {
                what: format!("tun file {}: {what}", entry.id),
                source,
            }
        };
        let fd = match &t.netdev {
            None => OwnedFd::from(
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/net/tun")
                    .map_err(err("opening /dev/net/tun".into()))?,
            ),
            Some(dev) => {
                let link = crate::ns::net::tun_link(&cx.img.dir, dev).map_err(|e| {
                    RestoreError::Setup {
                        what: format!("tun file {}: {e}", entry.id),
                        source: std::io::Error::from_raw_os_error(libc::ENOENT),
                    }
                })?;
                // In the tree's network namespace, which this thread is in by now.
                let fd = stasis_netns::tun::attach(dev, link, 0)
                    .map_err(err(format!("attaching to device {dev}")))?;
                // Attached first, as every queue is made, then detached as it was (CRIU's
                // order).
                if t.detached == Some(true) {
                    stasis_netns::tun::detach_queue(fd.as_fd())
                        .map_err(err(format!("detaching a queue of {dev}")))?;
                }
                if link & stasis_netns::tun::IFF_PERSIST == 0 {
                    stasis_netns::tun::set_persist(fd.as_fd(), false)
                        .map_err(err(format!("making {dev} not persistent again")))?;
                }
                fd
            }
        };
        let status = nix::fcntl::OFlag::from_bits_truncate(flags as i32)
            & (nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_APPEND);
        nix::fcntl::fcntl(fd.as_fd(), nix::fcntl::FcntlArg::F_SETFL(status))
            .map_err(|e| err("setting its flags".into())(e.into()))?;
        Ok(Some(fd))
    }
}
