//! Regular files, directories and stateless devices (and, with `--shell-job`, terminals
//! outside the tree): saved by path, flags and offset, and opened again by path. A file
//! deleted while open comes back from its ghost (see [`super::ghost`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::ghost::GhostFiles;
use super::kind::{Fd, FileKind, OpenCx};
use super::FdKind;
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};
use crate::sys::cvt;

/// The regular-file kind.
pub struct Regular;

impl FileKind for Regular {
    fn name(&self) -> &'static str {
        "regular"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        // A terminal that is not a pty of the tree (see tty.rs, asked first) is the shell's.
        matches!(
            fd.class,
            FdKind::Regular | FdKind::Directory | FdKind::CharDevice | FdKind::Tty
        )
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        if *fd.class == FdKind::Tty && !cx.opts.shell_job {
            return Err(DumpError::ShellJobNeeded {
                pid: fd.pid,
                fd: fd.fd,
                path: fd.link.to_string(),
            });
        }
        let id = cx.img.files.add_fd(fd.pid, fd.fd, fd.link, fd.info)?;
        Ok((pb::FdTypes::Reg, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.reg.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let reg = entry.reg.as_ref().expect("owned: reg is set");
        let id = entry.id;
        let inherited = cx
            .opts
            .inherit_fds
            .iter()
            .find(|i| i.key.trim_start_matches('/') == reg.name.trim_start_matches('/'));
        let fd = if let Some(i) = inherited {
            dup_raw(i.fd)?
        } else if let Some(tty) = cx
            .terminal
            .filter(|_| cx.opts.shell_job && super::is_tty_path(&reg.name))
        {
            dup_raw(tty)?
        } else if let Some(ghost) = cx.img.remaps.get(&id) {
            let path = cx
                .slots
                .get::<GhostFiles>()
                .create(*ghost, &reg.name, cx.img)?;
            let mut r = reg.clone();
            r.name = path;
            open_path(id, &r)?
        } else {
            open_path(id, reg)?
        };
        Ok(Some(fd))
    }
}

/// Our own copy of fd number `fd` that the caller handed us (`--inherit-fd`, our terminal).
pub fn dup_raw(fd: RawFd) -> Result<OwnedFd, RestoreError> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd number; the result is owned below.
    let n = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) }).map_err(|source| {
        RestoreError::Setup {
            what: format!("dup of fd {fd}"),
            source,
        }
    })?;
    // SAFETY: fresh fd owned only here.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

/// Another fd on the same open file description.
pub fn dup(fd: &OwnedFd) -> Result<OwnedFd, RestoreError> {
    fd.try_clone().map_err(|source| RestoreError::Setup {
        what: format!("dup of fd {}", fd.as_raw_fd()),
        source,
    })
}

/// Another open file description of the same inode, with its own access mode and flags.
pub fn reopen(first: &OwnedFd, flags: u32, id: u32) -> Result<OwnedFd, RestoreError> {
    let path = format!("/proc/self/fd/{}", first.as_raw_fd());
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK;
    let c = std::ffi::CString::new(path.clone()).expect("no NUL");
    // SAFETY: open(2) of a NUL-terminated path; the result is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), (flags as libc::c_int & keep) | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(RestoreError::Open {
            id,
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fresh fd owned only here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn set_status_flags(fd: &OwnedFd, flags: u32) -> Result<(), RestoreError> {
    let keep =
        (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME)
            as u32;
    // SAFETY: F_SETFL with an integer argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, (flags & keep) as libc::c_int) })
        .map_err(|source| RestoreError::Setup {
            what: "setting file status flags".into(),
            source,
        })?;
    Ok(())
}

/// Opens a file by its path with its dumped flags and offset.
pub fn open_path(id: u32, reg: &pb::RegFileEntry) -> Result<OwnedFd, RestoreError> {
    let path = std::ffi::CString::new(reg.name.as_bytes()).map_err(|_| RestoreError::Open {
        id,
        path: reg.name.clone(),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // An O_TMPFILE file comes back as a ghost: opened by name, so without O_TMPFILE (whose
    // bits include O_DIRECTORY).
    let mut flags = reg.flags as libc::c_int;
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        flags &= !libc::O_TMPFILE;
    }
    let flags = flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY)
        | libc::O_CLOEXEC
        | libc::O_NOCTTY;
    // SAFETY: open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return Err(RestoreError::Open {
            id,
            path: reg.name.clone(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fresh fd owned only here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if reg.pos != 0 {
        // SAFETY: lseek on our fd.
        let r = unsafe { libc::lseek(fd.as_raw_fd(), reg.pos as libc::off_t, libc::SEEK_SET) };
        if r < 0 {
            return Err(RestoreError::Open {
                id,
                path: reg.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(fd)
}
