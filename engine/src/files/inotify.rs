//! inotify: its watches from fdinfo (each watched inode found again by its file handle), and a
//! new instance with the same watches under the same watch descriptors.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::sys::inotify::{InitFlags, Inotify as NixInotify};

use crate::sys::anon::{inotify_add_watch, inotify_rm_watch};

use super::anon::{self, AnonFdError};
use super::kind::{Fd, FileKind, OpenCx};
use super::{FdKind, FilesError};
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};

/// One `inotify wd:..` line of fdinfo: watch descriptor, inode, device (kernel encoding),
/// mask and the file handle that finds the watched inode again.
pub fn inotify_watches(fdinfo_text: &str, id: u32) -> Vec<pb::InotifyWdEntry> {
    let mut out = Vec::new();
    for line in fdinfo_text
        .lines()
        .filter_map(|l| l.strip_prefix("inotify "))
    {
        let get = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key));
        let hex = |key: &str| get(key).and_then(|v| u64::from_str_radix(v, 16).ok());
        let (Some(wd), Some(ino), Some(sdev), Some(mask)) = (
            // The kernel prints the watch descriptor in hex too (wd:3f is 63).
            hex("wd:").map(|v| v as u32),
            hex("ino:"),
            hex("sdev:"),
            hex("mask:"),
        ) else {
            continue;
        };
        out.push(pb::InotifyWdEntry {
            id,
            i_ino: ino,
            mask: mask as u32,
            ignored_mask: hex("ignored_mask:").unwrap_or(0) as u32,
            s_dev: sdev as u32,
            wd,
            f_handle: fh_entry(&get),
        });
    }
    out
}

/// The file handle an fdinfo mark line gives (`fhandle-bytes:`, `fhandle-type:`, `f_handle:`
/// in hex), its bytes packed in u64 words as CRIU's `fh_entry` holds them. `get` finds a key's
/// value in the line.
pub(super) fn fh_entry<'a>(get: &dyn Fn(&str) -> Option<&'a str>) -> pb::FhEntry {
    let hex = |key: &str| get(key).and_then(|v| u32::from_str_radix(v, 16).ok());
    let raw = get("f_handle:").unwrap_or("");
    let bytes: Vec<u8> = (0..raw.len() / 2)
        .filter_map(|i| u8::from_str_radix(&raw[i * 2..i * 2 + 2], 16).ok())
        .collect();
    let handle = bytes
        .chunks(8)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..c.len()].copy_from_slice(c);
            u64::from_ne_bytes(b)
        })
        .collect();
    pb::FhEntry {
        bytes: hex("fhandle-bytes:").unwrap_or(bytes.len() as u32),
        r#type: hex("fhandle-type:").unwrap_or(0),
        handle,
        path: None,
        mnt_id: None,
    }
}

/// The path of the inode a file handle names on device `sdev` (kernel dev_t encoding), found
/// with open_by_handle_at from the device's mount (needs CAP_DAC_READ_SEARCH).
pub fn path_of_handle(sdev: u32, fh: &pb::FhEntry) -> Option<String> {
    let f = open_handle(sdev, fh)?;
    let p = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
    Some(p.to_string_lossy().into_owned())
}

/// The inode a file handle names on device `sdev`, opened O_PATH (see [`path_of_handle`]).
fn open_handle(sdev: u32, fh: &pb::FhEntry) -> Option<OwnedFd> {
    let (major, minor) = (sdev >> 20, sdev & 0xfffff);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mnt = mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&format!("{major}:{minor}").as_str()))
            .then(|| f.get(4).map(|s| s.to_string()))
            .flatten()
    })?;
    let dir = std::fs::File::open(&mnt).ok()?;
    open_by_handle(dir.as_fd(), fh)
}

/// open_by_handle_at of `fh` from the mount `dir` is on, O_PATH.
fn open_by_handle(dir: std::os::fd::BorrowedFd<'_>, fh: &pb::FhEntry) -> Option<OwnedFd> {
    let mut buf: Vec<u8> = Vec::with_capacity(8 + fh.bytes as usize);
    buf.extend_from_slice(&fh.bytes.to_ne_bytes());
    buf.extend_from_slice(&(fh.r#type as i32).to_ne_bytes());
    let raw: Vec<u8> = fh.handle.iter().flat_map(|w| w.to_ne_bytes()).collect();
    buf.extend_from_slice(&raw[..(fh.bytes as usize).min(raw.len())]);
    crate::sys::anon::open_by_handle_at(dir, &buf, libc::O_PATH | libc::O_CLOEXEC).ok()
}

/// [`open_handle`], or for a filesystem only the tree mounts (a container's /run tmpfs, one of
/// a nested mount namespace), through the mount of it a task of each of the tree's mount
/// namespaces (`ns_pids`) shows: then also that mount's id, by which the restore knows the
/// namespace the path is in.
fn open_handle_in(sdev: u32, fh: &pb::FhEntry, ns_pids: &[u32]) -> Option<(OwnedFd, Option<u32>)> {
    if let Some(fd) = open_handle(sdev, fh) {
        return Some((fd, None));
    }
    let (major, minor) = (sdev >> 20, sdev & 0xfffff);
    let dev = format!("{major}:{minor}");
    ns_pids.iter().find_map(|pid| {
        let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).ok()?;
        let (id, mountpoint) = mountinfo.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&dev.as_str()) && f.get(3) == Some(&"/"))
                .then(|| Some((f.first()?.parse::<u32>().ok()?, f.get(4)?.to_string())))
                .flatten()
        })?;
        let at = crate::ns::mnt::under(&format!("/proc/{pid}/root"), &mountpoint);
        let dir = std::fs::File::open(at).ok()?;
        let fd = open_by_handle(dir.as_fd(), fh)?;
        Some((fd, Some(id)))
    })
}

/// A watch on an inode deleted since (a file still open somewhere): its content is saved as a
/// ghost (the same one as an fd's on that inode), found at restore by device and inode; the
/// watch keeps the old name.
fn watch_deleted(
    files: &mut super::FileTable,
    w: &mut pb::InotifyWdEntry,
    orig: &str,
) -> Option<Result<(), FilesError>> {
    let (f, _) = open_handle_in(w.s_dev, &w.f_handle, &files.mount_ns_pids)?;
    let open = format!("/proc/self/fd/{}", f.as_raw_fd());
    let md = std::fs::metadata(&open).ok()?;
    // Still linked elsewhere: a ghost would be another inode than the others see.
    if std::os::unix::fs::MetadataExt::nlink(&md) > 0 {
        return None;
    }
    Some(files.ghost(&open, orig, &md).map(|_| {
        w.f_handle.path = Some(orig.to_string());
    }))
}

/// An inotify instance with the same watches under the same watch descriptors. Descriptors are
/// handed out in increasing order, so gaps are skipped by adding and removing the watch
/// (the IN_IGNORED events that makes are drained before the task sees the queue).
pub fn create_inotify(e: &pb::InotifyFileEntry) -> Result<OwnedFd, AnonFdError> {
    let ino = NixInotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
        .map_err(anon::create_err("inotify"))?;
    let mut watches: Vec<&pb::InotifyWdEntry> = e.wd.iter().collect();
    watches.sort_by_key(|w| w.wd);
    for w in watches {
        let path = w.f_handle.path.clone().unwrap_or_default();
        let c = std::ffi::CString::new(path).map_err(|_| AnonFdError::Field {
            kind: "inotify",
            field: "path",
        })?;
        loop {
            let got = inotify_add_watch(ino.as_fd(), &c, w.mask)
                .map_err(anon::create_err("inotify watch"))?;
            if got >= w.wd {
                if got != w.wd {
                    return Err(AnonFdError::Field {
                        kind: "inotify",
                        field: "wd",
                    });
                }
                break;
            }
            // Too low: that number was a gap in the dumped set. Removing the watch burns it
            // (numbers only go up), and the next try gets the following one.
            inotify_rm_watch(ino.as_fd(), got)
                .map_err(anon::create_err("inotify watch (skipping a gap)"))?;
        }
    }
    // Drain the IN_IGNORED events of the burnt numbers.
    let fd = OwnedFd::from(ino);
    let mut buf = [0u8; 4096];
    // Until EAGAIN (the fd is non-blocking): any other error also ends the drain, as before.
    while nix::unistd::read(&fd, &mut buf).is_ok_and(|n| n > 0) {}
    if e.flags & libc::O_NONBLOCK as u32 == 0 {
        fcntl(&fd, FcntlArg::F_SETFL(OFlag::empty()))
            .map_err(anon::create_err("inotify (blocking mode)"))?;
    }
    Ok(fd)
}

/// The inotify kind.
pub struct Inotify;

impl FileKind for Inotify {
    fn name(&self) -> &'static str {
        "inotify"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::Inotify
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |files, id| {
            let mut wd = inotify_watches(&fd.info.raw, id);
            for w in &mut wd {
                let found = open_handle_in(w.s_dev, &w.f_handle, &files.mount_ns_pids);
                w.f_handle.mnt_id = found.as_ref().and_then(|(_, m)| *m);
                let path = found.and_then(|(f, _)| {
                    let p = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd()));
                    Some(p.ok()?.to_string_lossy().into_owned())
                });
                let deleted = path.as_deref().and_then(|p| p.strip_suffix(" (deleted)"));
                if let Some(orig) = deleted {
                    match watch_deleted(files, w, orig) {
                        Some(done) => {
                            done?;
                            continue;
                        }
                        None => {
                            return Err(FilesError::InotifyPath {
                                pid: fd.pid,
                                fd: fd.fd,
                                wd: w.wd,
                            })
                        }
                    }
                }
                match path {
                    Some(p) => w.f_handle.path = Some(p),
                    None => {
                        return Err(FilesError::InotifyPath {
                            pid: fd.pid,
                            fd: fd.fd,
                            wd: w.wd,
                        })
                    }
                }
            }
            Ok(pb::FileEntry {
                r#type: pb::FdTypes::Inotify as i32,
                id,
                ify: Some(pb::InotifyFileEntry {
                    id,
                    flags: fd.flags(),
                    fown: pb::FownEntry::default(),
                    wd,
                }),
                ..Default::default()
            })
        })?;
        Ok((pb::FdTypes::Inotify, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.ify.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let mut e = entry.ify.as_ref().expect("owned: ify is set").clone();
        // A watched inode deleted since: its ghost, made (or found made) for the moment.
        for w in &mut e.wd {
            let ghost = cx.img.ghosts.iter().find(|(_, (g, _))| {
                g.dev == Some(w.s_dev) && g.ino == Some(w.i_ino) && g.mode & libc::S_IFMT == libc::S_IFREG
            });
            if let Some((&gid, _)) = ghost {
                let orig = w.f_handle.path.clone().unwrap_or_default();
                let path = cx.slots.get::<super::ghost::GhostFiles>().create(gid, &orig, cx.img)?;
                w.f_handle.path = Some(path);
            } else if let (Some(mnt), Some(path)) = (w.f_handle.mnt_id, &w.f_handle.path) {
                // On a filesystem only the tree mounts: through its namespace's root.
                w.f_handle.path = Some(cx.img.path_on_mount(mnt, path));
            }
        }
        create_inotify(&e)
            .map(Some)
            .map_err(anon::restore_err(entry.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inotify_fdinfo() {
        let text = "pos:\t0\nflags:\t02004000\nmnt_id:\t15\nino:\t1038\n\
inotify wd:2 ino:4a1 sdev:fe00001 mask:800afce ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a1040000b2c3d4e5\n\
inotify wd:3f ino:4a2 sdev:fe00001 mask:fff ignored_mask:0 fhandle-bytes:8 fhandle-type:1 f_handle:a2040000b2c3d4e5\n";
        let w = inotify_watches(text, 6);
        assert_eq!(w.len(), 2);
        assert_eq!((w[0].wd, w[0].i_ino, w[0].s_dev), (2, 0x4a1, 0xfe0_0001));
        assert_eq!(w[1].wd, 0x3f, "the kernel prints watch descriptors in hex");
        assert_eq!(
            (w[0].mask, w[0].f_handle.bytes, w[0].f_handle.r#type),
            (0x800_afce, 8, 1)
        );
        assert_eq!(w[0].f_handle.handle.len(), 1);
    }
}
