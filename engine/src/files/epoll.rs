//! epoll: its targets from fdinfo (each checked with kcmp to be the file now open at its
//! number), an empty instance made by the restorer, and the targets added back from inside
//! the task, where the target fd numbers are the task's own.

use std::collections::{HashMap, HashSet};
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

/// An epoll keeps a target whose fd number was closed (or closed and reused for another
/// file): it is registered again, as CRIU does, under a number the task holds the same file
/// at, found with kcmp; restoring it by its old number would watch nothing or the wrong file.
/// Refused when no fd of the task holds it, or when that number is registered already.
fn retarget_closed(
    pid: u32,
    epfd: i32,
    targets: &mut [pb::EventpollTfdEntry],
) -> Result<(), FilesError> {
    let inspect = |source| FilesError::Inspect {
        pid,
        fd: epfd,
        source,
    };
    let mut open_fds: Option<Vec<i32>> = None;
    let mut seen: HashMap<u32, u32> = HashMap::new();
    let numbers: Vec<u32> = targets.iter().map(|t| t.tfd).collect();
    for t in targets.iter_mut() {
        // The how-many-th registration under this number (a number closed and reused may be
        // registered twice, for two files).
        let toff = {
            let n = seen.entry(t.tfd).or_insert(0);
            *n += 1;
            *n - 1
        };
        let (number, stale) = (t.tfd, |fd| {
            crate::sys::kcmp::epoll_target_at(pid, epfd, t.tfd, toff, fd).map(|same| !same)
        });
        if !stale(number as i32).map_err(inspect)? {
            continue;
        }
        let fds = match &open_fds {
            Some(f) => f,
            None => open_fds.insert(
                crate::proc::fds(pid).map_err(|e| inspect(std::io::Error::other(e.to_string())))?,
            ),
        };
        let mut found = None;
        for &fd in fds.iter().filter(|&&fd| fd != epfd) {
            if !stale(fd).map_err(inspect)? {
                found = Some(fd as u32);
                break;
            }
        }
        match found {
            Some(f) if !numbers.contains(&f) => {
                log::debug!("pid {pid} epoll {epfd}: target {number} (closed) is fd {f} now");
                t.tfd = f;
            }
            _ => {
                return Err(FilesError::EpollStale {
                    pid,
                    fd: epfd,
                    tfd: number,
                })
            }
        }
    }
    Ok(())
}

impl FileKind for Epoll {
    fn name(&self) -> &'static str {
        "epoll"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::EventPoll
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
            let mut tfd = epoll_targets(&fd.info.raw, id);
            retarget_closed(fd.pid, fd.fd, &mut tfd)?;
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

/// The file id of the socket or pipe with inode `ino` (what an epoll target's inode can name).
fn file_of_inode(img: &DumpImage, ino: u64) -> Option<u32> {
    img.files.values().find_map(|f| {
        let hit = f.usk.as_ref().is_some_and(|u| u64::from(u.ino) == ino)
            || f.isk.as_ref().is_some_and(|i| u64::from(i.ino) == ino)
            || f.nlsk.as_ref().is_some_and(|n| u64::from(n.ino) == ino)
            || f.pipe.as_ref().is_some_and(|p| u64::from(p.pipe_id) == ino);
        hit.then_some(f.id)
    })
}

/// Epolls no task holds (in flight on a unix socket, sent with SCM_RIGHTS) get their targets
/// from the restorer, through the pool's fds of the target files (found by inode: sockets and
/// pipes). The target fd numbers are then the pool's; each target's events and data, which
/// `epoll_wait` reports, are the dumped ones. A target found no other way is left out, named
/// in the log.
pub fn fill_unheld(
    img: &DumpImage,
    by_file: &HashMap<u32, std::os::fd::RawFd>,
) -> Result<(), RestoreError> {
    let held: HashSet<u32> = img
        .tasks
        .iter()
        .flat_map(|t| t.fds.iter().map(|f| f.id))
        .collect();
    for f in img.files.values().filter(|f| !held.contains(&f.id)) {
        let (Some(ep), Some(&epfd)) = (f.epfd.as_ref(), by_file.get(&f.id)) else {
            continue;
        };
        for t in &ep.tfd {
            let target = t
                .inode
                .and_then(|ino| file_of_inode(img, ino))
                .and_then(|id| by_file.get(&id));
            let Some(&tfd) = target else {
                log::warn!(
                    "epoll (file id {}) in flight: target fd {} not found among the tree's sockets and pipes, left out",
                    f.id,
                    t.tfd
                );
                continue;
            };
            let mut ev = libc::epoll_event {
                events: t.events,
                u64: t.data,
            };
            // SAFETY: epoll_ctl(2) on two fds of our pool with an event of ours.
            if unsafe { libc::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, tfd, &mut ev) } < 0 {
                return Err(RestoreError::Setup {
                    what: format!("adding a target to the epoll in flight (file id {})", f.id),
                    source: std::io::Error::last_os_error(),
                });
            }
        }
    }
    Ok(())
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
