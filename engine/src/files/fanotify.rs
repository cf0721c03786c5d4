//! fanotify: the group's flags and its marks from fdinfo (an inode mark found again by its file
//! handle, a mount mark by its mount), as CRIU's `fanotify_file_entry`; a new group with the
//! same marks at restore. Events still queued at dump are lost, as with inotify.

use std::os::fd::{FromRawFd, OwnedFd};

use super::kind::{Fd, FileKind, OpenCx};
use super::{FdKind, FilesError};
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};

const FAN_MARK_ADD: u32 = 0x1;
const FAN_MARK_MOUNT: u32 = 0x10;
const FAN_MARK_IGNORED_MASK: u32 = 0x20;
const FAN_MARK_IGNORED_SURV_MODIFY: u32 = 0x40;

/// The group's flags (`fanotify flags:`, `event-flags:`) and marks, from fdinfo text (pure;
/// unit-tested). Inode marks keep their file handle; mount marks their mount id.
pub fn parse(fdinfo: &str, id: u32) -> (u32, u32, Vec<pb::FanotifyMarkEntry>) {
    let (mut faflags, mut evflags) = (0, 0);
    let mut marks = Vec::new();
    for line in fdinfo.lines().filter_map(|l| l.strip_prefix("fanotify ")) {
        let get = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key));
        let hex = |key: &str| get(key).and_then(|v| u64::from_str_radix(v, 16).ok());
        if let (Some(f), Some(e)) = (hex("flags:"), hex("event-flags:")) {
            faflags = f as u32;
            evflags = e as u32;
            continue;
        }
        let (mflags, mask, ignored) = (
            hex("mflags:").unwrap_or(0) as u32,
            hex("mask:").unwrap_or(0) as u32,
            hex("ignored_mask:").unwrap_or(0) as u32,
        );
        if let Some(mnt_id) = hex("mnt_id:") {
            marks.push(pb::FanotifyMarkEntry {
                id,
                r#type: pb::MarkType::Mount as i32,
                mflags,
                mask,
                ignored_mask: ignored,
                s_dev: 0,
                ie: None,
                me: Some(pb::FanotifyMountMarkEntry {
                    mnt_id: mnt_id as u32,
                    path: None,
                }),
            });
        } else if let (Some(ino), Some(sdev)) = (hex("ino:"), hex("sdev:")) {
            marks.push(pb::FanotifyMarkEntry {
                id,
                r#type: pb::MarkType::Inode as i32,
                mflags,
                mask,
                ignored_mask: ignored,
                s_dev: sdev as u32,
                ie: Some(pb::FanotifyInodeMarkEntry {
                    i_ino: ino,
                    f_handle: super::inotify::fh_entry(&get),
                }),
                me: None,
            });
        }
    }
    (faflags, evflags, marks)
}

/// The mountpoint of mount `mnt_id` as task `pid` sees it (its mountinfo).
fn mountpoint(pid: u32, mnt_id: u32) -> Option<String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
    text.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.first()?.parse::<u32>().ok()? == mnt_id).then(|| f.get(4).map(|s| s.to_string()))?
    })
}

fn mark(fd: &OwnedFd, flags: u32, mask: u32, path: &str) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: fanotify_mark(2) with our fanotify fd, integers and a NUL-terminated path.
    let r = unsafe {
        libc::syscall(
            libc::SYS_fanotify_mark,
            std::os::fd::AsRawFd::as_raw_fd(fd),
            flags,
            mask as u64,
            libc::AT_FDCWD,
            c.as_ptr(),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A new group like `e`, with its marks. `root`: the tree's root here when it has a mount
/// namespace of its own, under which a mount mark's mountpoint (the tree's view) lies; an
/// inode mark's path is already ours (found from its file handle through our mounts).
pub fn create(e: &pb::FanotifyFileEntry, root: Option<&str>) -> std::io::Result<OwnedFd> {
    // The group's flags exactly as dumped: FAN_CLOEXEC is one of them, which fdinfo shows (the
    // task's fd gets its own close-on-exec flag from fdinfo anyway).
    // SAFETY: fanotify_init(2) with integers; a non-negative result is a new fd we own.
    let fd = unsafe { libc::syscall(libc::SYS_fanotify_init, e.faflags, e.evflags) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: just made, owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    for m in &e.mark {
        let (kind, path) = match (&m.ie, &m.me) {
            (Some(ie), _) => (0, ie.f_handle.path.clone().unwrap_or_default()),
            (_, Some(me)) => {
                let p = me.path.clone().unwrap_or_default();
                let p = match root {
                    Some(r) => crate::ns::mnt::under(r, &p),
                    None => p,
                };
                (FAN_MARK_MOUNT, p)
            }
            _ => continue,
        };
        if m.mask != 0 {
            mark(&fd, FAN_MARK_ADD | kind, m.mask, &path)?;
        }
        if m.ignored_mask != 0 {
            let surv = m.mflags & FAN_MARK_IGNORED_SURV_MODIFY;
            let flags = FAN_MARK_ADD | kind | FAN_MARK_IGNORED_MASK | surv;
            mark(&fd, flags, m.ignored_mask, &path)?;
        }
    }
    Ok(fd)
}

/// The fanotify kind.
pub struct Fanotify;

impl FileKind for Fanotify {
    fn name(&self) -> &'static str {
        "fanotify"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::Fanotify
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
            let (faflags, evflags, mut marks) = parse(&fd.info.raw, id);
            let lost = |what: String| FilesError::Fanotify {
                pid: fd.pid,
                fd: fd.fd,
                what,
            };
            for m in &mut marks {
                if let Some(ie) = m.ie.as_mut() {
                    let p = super::inotify::path_of_handle(m.s_dev, &ie.f_handle)
                        .filter(|p| !p.ends_with(" (deleted)"))
                        .ok_or_else(|| lost(format!("the file of inode mark {}", ie.i_ino)))?;
                    ie.f_handle.path = Some(p);
                }
                if let Some(me) = m.me.as_mut() {
                    let p = mountpoint(fd.pid, me.mnt_id)
                        .ok_or_else(|| lost(format!("mount {} of a mount mark", me.mnt_id)))?;
                    me.path = Some(p);
                }
            }
            Ok(pb::FileEntry {
                r#type: pb::FdTypes::Fanotify as i32,
                id,
                ffy: Some(pb::FanotifyFileEntry {
                    id,
                    flags: fd.flags(),
                    fown: pb::FownEntry::default(),
                    faflags,
                    evflags,
                    mark: marks,
                }),
                ..Default::default()
            })
        })?;
        Ok((pb::FdTypes::Fanotify, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.ffy.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let e = entry.ffy.as_ref().expect("owned: ffy is set");
        create(e, cx.img.fs_root.as_deref()).map(Some).map_err(|source| RestoreError::Setup {
            what: format!("fanotify group (file id {})", entry.id),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdinfo_gives_flags_inode_and_mount_marks() {
        let text = "pos:\t0\nflags:\t02004000\nmnt_id:\t15\nino:\t1057\n\
fanotify flags:12 event-flags:8000\n\
fanotify mnt_id:1f mflags:40 mask:40000038 ignored_mask:3\n\
fanotify ino:4f969 sdev:800013 mflags:0 mask:3b ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:69f90400c7b1b5ff\n";
        let (fa, ev, marks) = parse(text, 7);
        assert_eq!((fa, ev), (0x12, 0x8000));
        assert_eq!(marks.len(), 2);
        let m = &marks[0];
        assert_eq!((m.mflags, m.mask, m.ignored_mask), (0x40, 0x4000_0038, 3));
        assert_eq!(m.me.as_ref().map(|me| me.mnt_id), Some(0x1f));
        let i = &marks[1];
        let ie = i.ie.as_ref().unwrap();
        assert_eq!((ie.i_ino, i.s_dev, i.mask), (0x4f969, 0x800013, 0x3b));
        assert_eq!((ie.f_handle.bytes, ie.f_handle.r#type), (8, 1));
        assert_eq!(
            ie.f_handle.handle,
            vec![u64::from_ne_bytes([0x69, 0xf9, 0x04, 0x00, 0xc7, 0xb1, 0xb5, 0xff])]
        );
    }
}
