//! Files of /proc/<pid>/ of a task of the tree (a program watching its own stat), files on
//! the mounts a tree's init makes once it has pivoted (a proc mounted elsewhere than /proc, a
//! cgroup filesystem), and `/dev/tty` when the tree's sessions have terminals of their own:
//! dumped as regular files, but the restorer cannot open them before the tasks or mounts
//! exist (and its /dev/tty is its own terminal), so each task opens its own, by an injected
//! openat, at the same number, flags and offset.

use std::os::fd::OwnedFd;

use super::kind::{Fd, FileKind, OpenCx, TaskCx};
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::load::TaskImage;
use crate::restore::{DumpImage, RestoreError};
use crate::task::remote::Remote;

/// The kind of /proc files of the tree, on the restore side (the dump sees regular files).
pub struct ProcFile;

/// Whether `path` is a file of /proc/<pid>/ for a process or thread of the tree.
pub fn tree_proc_path(img: &DumpImage, path: &str) -> bool {
    let Some(n) = path
        .strip_prefix("/proc/")
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.parse::<u32>().ok())
    else {
        return false;
    };
    img.tasks
        .iter()
        .any(|t| t.pid() == n || t.threads.iter().any(|th| th.tid == n))
}

/// Whether `path` is `/dev/tty` of a tree whose sessions have controlling terminals of the
/// tree's own (a pty with a session): the task's open finds its restored terminal.
fn tree_dev_tty(img: &DumpImage, path: &str) -> bool {
    path == "/dev/tty" && img.tty_infos.values().any(|i| i.sid != 0)
}

/// Whether file `id` is on a mount the tree's init makes late, its path as its task sees it
/// (a deleted or remapped one is the regular files' kind). Files known by path (a cwd) carry
/// no mount id in the tree's own namespace: the mount is then the one whose mountpoint holds
/// the path, the last made of those that do.
fn on_late_mount(img: &DumpImage, id: u32, reg: &pb::RegFileEntry) -> bool {
    let mount = match reg.mnt_id {
        Some(m) => u32::try_from(m).ok(),
        None => img.mounts.as_ref().and_then(|table| {
            table
                .iter()
                .filter(|m| crate::ns::mnt::within(&m.mountpoint, &reg.name).is_some())
                .max_by_key(|m| m.mountpoint.len())
                .map(|m| m.id)
        }),
    };
    mount.is_some_and(|m| img.late_mounts.contains(&m))
        && !img.remaps.contains_key(&id)
        && !img.linked.contains_key(&id)
        && !img.dead_procs.contains_key(&id)
}

/// Whether the task opens file `id` itself.
fn opened_by_task(img: &DumpImage, id: u32, reg: &pb::RegFileEntry) -> bool {
    tree_proc_path(img, &reg.name) || tree_dev_tty(img, &reg.name) || on_late_mount(img, id, reg)
}

impl FileKind for ProcFile {
    fn name(&self) -> &'static str {
        "proc-file-of-the-tree"
    }

    fn claims(&self, _fd: &Fd, _cx: &DumpCx) -> bool {
        false
    }

    fn dump(&self, _cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        unreachable!("pid {} fd {}: claims nothing at dump", fd.pid, fd.fd)
    }

    fn owns(&self, entry: &pb::FileEntry, img: &DumpImage) -> bool {
        entry
            .reg
            .as_ref()
            .is_some_and(|r| opened_by_task(img, entry.id, r))
    }

    fn open(
        &self,
        _cx: &mut OpenCx,
        _entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        // It exists once the task does: the task opens it itself (see `in_task`).
        Ok(None)
    }

    fn in_task(&self, r: &Remote, t: &TaskImage, cx: &mut TaskCx) -> Result<(), RestoreError> {
        for f in &t.fds {
            let Some(reg) = cx.img.files.get(&f.id).and_then(|e| e.reg.as_ref()) else {
                continue;
            };
            if !opened_by_task(cx.img, f.id, reg) {
                continue;
            }
            let mut path = reg.name.clone().into_bytes();
            path.push(0);
            let at = r.put(0, &path)?;
            let keep = (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND) as u32;
            let flags = (reg.flags & keep) as u64 | libc::O_CLOEXEC as u64;
            let got = r.call(libc::SYS_openat, &[libc::AT_FDCWD as u64, at, flags, 0])? as u64;
            let cloexec = if f.flags & 1 != 0 { libc::O_CLOEXEC } else { 0 } as u64;
            if got != f.fd as u64 {
                r.call(libc::SYS_dup3, &[got, f.fd as u64, cloexec])?;
                r.call(libc::SYS_close, &[got])?;
            } else if cloexec == 0 {
                r.call(libc::SYS_fcntl, &[got, libc::F_SETFD as u64, 0])?;
            }
            if reg.pos != 0 {
                r.call(
                    libc::SYS_lseek,
                    &[f.fd as u64, reg.pos, libc::SEEK_SET as u64],
                )?;
            }
        }
        Ok(())
    }
}
