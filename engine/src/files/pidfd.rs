//! pidfds (pidfd_open, clone's CLONE_PIDFD): a process of the tree, or one that has died.
//! Saved as CRIU's `pidfd_entry`: the pid as the tree's pid namespace sees it (fdinfo's last
//! NSpid), or -1 for a dead process. A live one is opened again inside its task, once every
//! task exists (the pool makes the files before any is forked); a dead one is a pidfd of a
//! helper child that exited, as CRIU makes it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use super::anon::{self, AnonFdError};
use super::kind::{Fd, FileKind, OpenCx, TaskCx};
use super::FdKind;
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::load::TaskImage;
use crate::restore::{DumpImage, RestoreError};
use crate::task::remote::Remote;

/// pidfd_open's flag for a pidfd of a thread (the kernel's PIDFD_THREAD, O_EXCL's value).
const PIDFD_THREAD: u32 = libc::O_EXCL as u32;

/// What a pidfd's fdinfo says: the pid as we see it ("Pid:", -1 once the process died) and
/// as the innermost pid namespace sees it (NSpid's last field).
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub pid: i32,
    pub nspid: i32,
}

/// Reads a pidfd's target from fdinfo's keys (pure; unit-tested).
pub fn target(extra: &HashMap<String, String>) -> Result<Target, AnonFdError> {
    let bad = |field| AnonFdError::Field {
        kind: "pidfd",
        field,
    };
    let pid: i32 = anon::field(extra, "pidfd", "Pid")?
        .parse()
        .map_err(|_| bad("Pid"))?;
    // Older kernels print no NSpid for a dead process.
    let nspid = match extra.get("NSpid") {
        Some(v) => v
            .split_whitespace()
            .last()
            .unwrap_or("-1")
            .parse()
            .map_err(|_| bad("NSpid"))?,
        None => pid,
    };
    Ok(Target { pid, nspid })
}

/// The pidfd kind.
pub struct Pidfd;

/// Restore: the pidfd made for each dead process, by the inode the dump saw.
#[derive(Default)]
struct DeadByInode(HashMap<u32, OwnedFd>);

impl FileKind for Pidfd {
    fn name(&self) -> &'static str {
        "pidfd"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::Pidfd
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let unsupported = |what: String| DumpError::UnsupportedFd {
            pid: fd.pid,
            fd: fd.fd,
            what,
        };
        let t = target(&fd.info.extra).map_err(anon::dump_err(fd.pid, fd.fd))?;
        let flags = fd.flags() & !(libc::O_RDWR as u32);
        if flags & PIDFD_THREAD != 0 {
            return Err(unsupported("a pidfd of a thread (PIDFD_THREAD)".into()));
        }
        if t.pid != -1 && !cx.img.live_pids.contains(&(t.pid as u32)) {
            return Err(unsupported(format!(
                "a pidfd of process {}, outside the tree,",
                t.pid
            )));
        }
        let ino = fd.info.ino as u32;
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
            Ok(pb::FileEntry {
                r#type: pb::FdTypes::Pidfd as i32,
                id,
                pidfd: Some(pb::PidfdEntry {
                    id,
                    ino,
                    flags,
                    nspid: if t.pid == -1 { -1 } else { t.nspid },
                    fown: pb::FownEntry::default(),
                }),
                ..Default::default()
            })
        })?;
        Ok((pb::FdTypes::Pidfd, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.pidfd.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let e = entry.pidfd.as_ref().expect("owned: pidfd is set");
        let made = if e.nspid == -1 {
            // pidfds of one dead process share its inode: one helper serves them all.
            let dead = &mut cx.slots.get::<DeadByInode>().0;
            match dead.get(&e.ino) {
                Some(first) => first.try_clone(),
                None => dead_pidfd(e.flags).and_then(|fd| {
                    dead.insert(e.ino, fd.try_clone()?);
                    Ok(fd)
                }),
            }
        } else {
            // A stand-in until the task opens the real one (`in_task`): the process it names
            // is not forked yet.
            crate::sys::pidfd::pidfd_open(std::process::id())
        };
        made.map(Some)
            .map_err(anon::create_err("pidfd"))
            .map_err(anon::restore_err(entry.id))
    }

    fn in_task(&self, r: &Remote, t: &TaskImage, cx: &mut TaskCx) -> Result<(), RestoreError> {
        for fd in &t.fds {
            let Some(e) = cx.img.files.get(&fd.id).and_then(|f| f.pidfd.as_ref()) else {
                continue;
            };
            if e.nspid == -1 {
                continue;
            }
            // Opened by the task itself: the pid is one of its own pid namespace.
            let flags = e.flags & libc::O_NONBLOCK as u32;
            let new = r.call(libc::SYS_pidfd_open, &[e.nspid as u64, u64::from(flags)])?;
            r.place_fd(new, fd.fd as i32, fd.flags & 1 != 0)?;
        }
        Ok(())
    }
}

/// A pidfd of a process that has died: a child of ours, opened, killed and reaped.
fn dead_pidfd(flags: u32) -> std::io::Result<OwnedFd> {
    let mut child = std::process::Command::new("/bin/true")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let pidfd = crate::sys::pidfd::pidfd_open(child.id());
    let _ = child.kill();
    child.wait()?;
    let pidfd = pidfd?;
    if flags & libc::O_NONBLOCK as u32 != 0 {
        nix::fcntl::fcntl(
            &pidfd,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )?;
    }
    Ok(pidfd)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::anon::fdinfo_keys as map;

    #[test]
    fn pidfd_fdinfo() {
        let live = target(&map(&[("Pid", "4242"), ("NSpid", "4242\t7")])).unwrap();
        assert_eq!(live, Target { pid: 4242, nspid: 7 });
        let dead = target(&map(&[("Pid", "-1"), ("NSpid", "-1")])).unwrap();
        assert_eq!(dead, Target { pid: -1, nspid: -1 });
        let old = target(&map(&[("Pid", "-1")])).unwrap();
        assert_eq!(old.nspid, -1);
        assert!(target(&map(&[("NSpid", "3")])).is_err());
    }
}
