//! epoll: its targets from fdinfo (each checked with kcmp to be the file now open at its
//! number), an empty instance made by the restorer, and the targets added back from inside
//! the task, where the target fd numbers are the task's own.

use std::collections::HashSet;
use std::os::fd::OwnedFd;

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::epoll::{Epoll as NixEpoll, EpollCreateFlags};

use super::anon::{self, AnonFdError};
use super::kind::{Fd, FileKind, OpenCx, TaskCx};
use super::{FdKind, FilesError};
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::load::TaskImage;
use crate::restore::{DumpImage, RestoreError};
use crate::task::remote::Remote;

/// epoll targets: one `tfd: N events: X data: Y  pos:P ino:I sdev:D` line each. fdinfo keeps
/// only the first line per key in our parser's map, so the raw text is parsed here.
pub fn epoll_targets(fdinfo_text: &str, id: u32) -> Vec<pb::EventpollTfdEntry> {
    let mut out = Vec::new();
    for line in fdinfo_text.lines().filter(|l| l.starts_with("tfd:")) {
        // "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x": the first three keys
        // are followed by a space, the last three are glued to their values.
        let words: Vec<&str> = line.split_whitespace().collect();
        let get = |key: &str| {
            words.iter().enumerate().find_map(|(i, w)| {
                if *w == key {
                    words.get(i + 1).copied()
                } else {
                    w.strip_prefix(key).filter(|v| !v.is_empty())
                }
            })
        };
        let hex = |key: &str| get(key).and_then(|v| u64::from_str_radix(v, 16).ok());
        let (Some(tfd), Some(events), Some(data)) = (
            get("tfd:").and_then(|v| v.parse().ok()),
            hex("events:"),
            hex("data:"),
        ) else {
            continue;
        };
        out.push(pb::EventpollTfdEntry {
            id,
            tfd,
            events: events as u32,
            data,
            dev: get("sdev:").and_then(|v| u32::from_str_radix(v, 16).ok()),
            inode: hex("ino:"),
            pos: get("pos:").and_then(|v| v.parse().ok()),
        });
    }
    out
}

/// An empty epoll instance; its targets are added from inside the task, where the target fd
/// numbers are the task's own.
pub fn create_epoll(e: &pb::EventpollFileEntry) -> Result<OwnedFd, AnonFdError> {
    let NixEpoll(fd) = NixEpoll::new(EpollCreateFlags::EPOLL_CLOEXEC).map_err(anon::create_err("epoll"))?;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        fcntl(&fd, FcntlArg::F_SETFL(OFlag::O_NONBLOCK))
            .map_err(anon::create_err("epoll (O_NONBLOCK)"))?;
    }
    Ok(fd)
}

/// The epoll kind.
pub struct Epoll;

/// Epolls whose targets were added already (one instance can be shared by several tasks).
#[derive(Default)]
struct TargetsAdded(HashSet<u32>);

impl FileKind for Epoll {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::EventPoll
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
            let tfd = epoll_targets(&fd.info.raw, id);
            // An epoll keeps a target whose fd number was closed and reused: restoring it by
            // number would watch the wrong file.
            for t in &tfd {
                let same = crate::sys::kcmp::epoll_target_is(fd.pid, fd.fd, t.tfd as i32)
                    .map_err(|source| FilesError::Inspect {
                        pid: fd.pid,
                        fd: fd.fd,
                        source,
                    })?;
                if !same {
                    return Err(FilesError::EpollStale {
                        pid: fd.pid,
                        fd: fd.fd,
                        tfd: t.tfd,
                    });
                }
            }
            Ok(pb::FileEntry {
                r#type: pb::FdTypes::Eventpoll as i32,
                id,
                epfd: Some(pb::EventpollFileEntry {
                    id,
                    flags: fd.flags(),
                    fown: pb::FownEntry::default(),
                    tfd,
                }),
                ..Default::default()
            })
        })?;
        Ok((pb::FdTypes::Eventpoll, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.epfd.is_some()
    }

    fn open(
        &self,
        _cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let e = entry.epfd.as_ref().expect("owned: epfd is set");
        create_epoll(e)
            .map(Some)
            .map_err(anon::restore_err(entry.id))
    }

    fn in_task(&self, r: &Remote, t: &TaskImage, cx: &mut TaskCx) -> Result<(), RestoreError> {
        let done = cx.slots.get::<TargetsAdded>();
        for fd in &t.fds {
            let Some(ep) = cx.img.files.get(&fd.id).and_then(|f| f.epfd.as_ref()) else {
                continue;
            };
            if !done.0.insert(fd.id) {
                continue;
            }
            for tfd in &ep.tfd {
                // struct epoll_event is packed on x86_64: u32 events, then u64 data.
                let mut ev = [0u8; 12];
                ev[..4].copy_from_slice(&tfd.events.to_ne_bytes());
                ev[4..].copy_from_slice(&tfd.data.to_ne_bytes());
                let a = r.put(0, &ev)?;
                r.call(
                    libc::SYS_epoll_ctl,
                    &[fd.fd as u64, libc::EPOLL_CTL_ADD as u64, tfd.tfd as u64, a],
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn epoll_fdinfo() {
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\n\
tfd:        3 events:       19 data:                5  pos:0 ino:40e sdev:f\n\
tfd:        4 events: 80000001 data:       deadbeef00  pos:0 ino:40e sdev:f\n";
        let t = epoll_targets(text, 9);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].tfd, t[0].events, t[0].data), (3, 0x19, 5));
        assert_eq!(
            (t[1].tfd, t[1].events, t[1].data, t[1].inode),
            (4, 0x8000_0001, 0xdead_beef00, Some(0x40e))
        );
    }
}
