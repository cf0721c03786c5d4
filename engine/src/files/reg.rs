//! Regular files, directories and stateless devices (and, with `--shell-job`, terminals
//! outside the tree): saved by path, flags and offset, and opened again by path. A file
//! deleted while open comes back from its ghost (see [`super::ghost`]).

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use nix::fcntl::{fcntl, open, FcntlArg, OFlag};
use nix::sys::stat::Mode;
use nix::unistd::{lseek, Whence};

use super::ghost::GhostFiles;
use super::kind::{Fd, FileKind, OpenCx};
use super::FdKind;
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};

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
        if *fd.class == FdKind::Tty
            && !cx.opts.shell_job
            && !super::tty::is_own_ctty(cx, fd)
            && !super::tty::is_device_tty_not_ctty(fd)
        {
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
        } else if let Some(&pid) = cx.img.dead_procs.get(&id) {
            open_dead_proc(id, reg, pid)?
        } else if let Some(&link_id) = cx.img.linked.get(&id) {
            open_linked(cx.img, id, reg, link_id)?
        } else if let Some(ghost) = cx.img.remaps.get(&id) {
            let at = cx.img.path_of(reg).into_owned();
            let path = cx.slots.get::<GhostFiles>().create(*ghost, &at, cx.img)?;
            let mut r = reg.clone();
            r.name = path;
            let fd = open_path(id, &r)?;
            if cx.img.fs_root.is_some() {
                on_mount_of(id, fd, &at, &r)?
            } else {
                fd
            }
        } else if cx.img.fs_root.is_some() {
            // The tree's own mount namespace: its files are under its root here. Its proc is
            // mounted later, by its init: a sysctl file is opened through ours meanwhile (this
            // thread is in the tree's network, IPC and UTS namespaces, which those show).
            let mut r = reg.clone();
            r.name = cx.img.path_of(reg).into_owned();
            match open_path(id, &r) {
                Err(_) if reg.name.starts_with("/proc/sys/") => open_path(id, reg)?,
                other => other?,
            }
        } else {
            open_path(id, reg)?
        };
        Ok(Some(fd))
    }
}

/// `fd`, a ghost made once for every file of its inode, opened again through the mount the
/// directory of `at` (this file's own path) is on when that is another: two mounts of one
/// tmpfs in two namespaces each held it (zdtm's mntns_link_ghost). A file handle opened from
/// a mount is a file of that mount.
fn on_mount_of(
    id: u32,
    fd: OwnedFd,
    at: &str,
    reg: &pb::RegFileEntry,
) -> Result<OwnedFd, RestoreError> {
    use std::os::fd::{AsFd, AsRawFd};
    let Some(dir) = std::path::Path::new(at).parent().and_then(|d| d.to_str()) else {
        return Ok(fd);
    };
    let have = crate::ns::mount_id_of(&format!("/proc/self/fd/{}", fd.as_raw_fd()));
    let want = crate::ns::mount_id_of(dir);
    let (Ok(have), Ok(want)) = (have, want) else {
        return Ok(fd);
    };
    if have == want {
        return Ok(fd);
    }
    let err = |source| RestoreError::Open {
        id,
        path: at.to_string(),
        source,
    };
    // struct file_handle: handle_bytes, handle_type, then up to MAX_HANDLE_SZ (128) bytes.
    let mut handle = vec![0u8; 8 + 128];
    handle[..4].copy_from_slice(&128u32.to_ne_bytes());
    let mut mount_id: libc::c_int = 0;
    // SAFETY: name_to_handle_at(2) on our fd with an empty path writes at most 8 + 128 bytes
    // into `handle` and an int into `mount_id`, both live.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            fd.as_raw_fd(),
            c"".as_ptr(),
            handle.as_mut_ptr(),
            &mut mount_id as *mut libc::c_int,
            libc::AT_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    // Not O_PATH: open_by_handle_at takes no O_PATH fd.
    let dirfd = open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| err(e.into()))?;
    let flags = (reg.flags as libc::c_int) & (libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK)
        | libc::O_CLOEXEC;
    let again = crate::sys::anon::open_by_handle_at(dirfd.as_fd(), &handle, flags).map_err(err)?;
    if reg.pos != 0 {
        lseek(&again, reg.pos as libc::off_t, Whence::SeekSet).map_err(|e| err(e.into()))?;
    }
    Ok(again)
}

/// File `id`, deleted while open but linked elsewhere, through the link the dump made
/// (entry `link_id`). Opened by its old name, linked there for the moment, so that its fd reads
/// "NAME (deleted)" again; by the link's name if the old one is taken now or its directory
/// is gone.
fn open_linked(
    img: &DumpImage,
    id: u32,
    reg: &pb::RegFileEntry,
    link_id: u32,
) -> Result<OwnedFd, RestoreError> {
    let link_reg = img.files[&link_id].reg.as_ref().expect("checked at load");
    let link = img.path_of(link_reg).into_owned();
    let orig = img.path_of(reg).into_owned();
    remember_link_dir(img, &link);
    let mut r = reg.clone();
    match nix::unistd::linkat(
        nix::fcntl::AT_FDCWD,
        link.as_str(),
        nix::fcntl::AT_FDCWD,
        orig.as_str(),
        nix::fcntl::AtFlags::empty(),
    ) {
        Ok(()) => {
            r.name = orig.clone();
            let fd = open_path(id, &r);
            if let Err(e) = nix::unistd::unlink(orig.as_str()) {
                log::warn!("unlinking {orig} again: {e}");
            }
            fd
        }
        // The old name is taken, or its directory is gone too (zdtm's unlink_regular00):
        // opened by the link's name, as CRIU opens it.
        Err(nix::errno::Errno::EEXIST | nix::errno::Errno::ENOENT) => {
            r.name = link;
            open_path(id, &r)
        }
        Err(e) => Err(RestoreError::Open {
            id,
            path: link,
            source: e.into(),
        }),
    }
}

/// The processes made for dead processes' `/proc` directories, alive until the stubs have
/// changed into them (a directory of a dead process can be opened but not entered).
/// (dead pid, helper): one helper per pid, which every file of that directory shares.
static DEAD_PROC_HELPERS: std::sync::Mutex<Vec<(u32, i64)>> = std::sync::Mutex::new(Vec::new());

/// Kills and reaps the processes made for dead processes' `/proc` directories when dropped:
/// held across the pool and the fork.
pub struct DeadProcHelpers;

impl Drop for DeadProcHelpers {
    fn drop(&mut self) {
        let helpers = DEAD_PROC_HELPERS
            .lock()
            .map(|mut g| std::mem::take(&mut *g))
            .unwrap_or_default();
        for (_, pid) in helpers {
            // SAFETY: kill(2) and waitpid(2) of a child we forked and have not reaped.
            unsafe {
                libc::kill(pid as libc::pid_t, libc::SIGKILL);
                libc::waitpid(pid as libc::pid_t, std::ptr::null_mut(), 0);
            }
        }
    }
}

/// `/proc/<pid>` of a process that has exited (CRIU's procfs remap): a process of ours forked
/// with that pid (clone3 set_tid) and its directory opened; the process dies when
/// [`DeadProcHelpers`] is dropped, after the fork, so the fd then holds a dead process's
/// directory again, and a task whose cwd it was has changed into it.
fn open_dead_proc(id: u32, reg: &pb::RegFileEntry, pid: u32) -> Result<OwnedFd, RestoreError> {
    let mut r = reg.clone();
    r.name = format!("/proc/{pid}");
    let made = DEAD_PROC_HELPERS
        .lock()
        .is_ok_and(|g| g.iter().any(|(p, _)| *p == pid));
    if made {
        return open_path(id, &r);
    }
    let child = crate::restore::stub::fork_with_pid(pid, 0);
    if child == 0 {
        // SAFETY: raw syscalls only in this child of a possibly multi-threaded process: die
        // with us, then wait to be killed.
        unsafe {
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_PDEATHSIG as libc::c_long,
                libc::SIGKILL as libc::c_long,
            );
            loop {
                libc::syscall(libc::SYS_pause);
            }
        }
    }
    if child < 0 {
        return Err(RestoreError::Open {
            id,
            path: reg.name.clone(),
            source: std::io::Error::from_raw_os_error((-child) as i32),
        });
    }
    if let Ok(mut g) = DEAD_PROC_HELPERS.lock() {
        g.push((pid, child));
    }
    open_path(id, &r)
}

/// Keeps the directory of the link at `link` open (O_PATH), so that it is found again once
/// the restorer has left the tree's mount namespaces (a tmpfs of the tree's own is in no other).
fn remember_link_dir(img: &DumpImage, link: &str) {
    let path = std::path::Path::new(link);
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return;
    };
    let Ok(name) = std::ffi::CString::new(name.as_encoded_bytes()) else {
        return;
    };
    let mut dirs = img.link_dirs.lock().unwrap_or_else(|p| p.into_inner());
    if dirs.iter().any(|(_, n)| *n == name) {
        return;
    }
    let opened = nix::fcntl::open(
        dir,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    );
    if let Ok(fd) = opened {
        dirs.push((fd, name));
    }
}

/// The links a dump made for files deleted while open (`--link-remap`): removed once the
/// restore succeeded, as CRIU does; a failed restore leaves them for the next attempt.
pub fn remove_links(img: &DumpImage) {
    let dirs = std::mem::take(&mut *img.link_dirs.lock().unwrap_or_else(|p| p.into_inner()));
    if !dirs.is_empty() {
        for (dir, name) in dirs {
            if let Err(e) = nix::unistd::unlinkat(
                std::os::fd::AsFd::as_fd(&dir),
                name.as_c_str(),
                nix::unistd::UnlinkatFlags::NoRemoveDir,
            ) {
                log::warn!("removing the link {name:?}: {e}");
            }
        }
        return;
    }
    let mut done = std::collections::HashSet::new();
    for link_id in img.linked.values().filter(|id| done.insert(**id)) {
        let Some(reg) = img.files.get(link_id).and_then(|f| f.reg.as_ref()) else {
            continue;
        };
        let path = img.path_of(reg);
        if let Err(e) = std::fs::remove_file(path.as_ref()) {
            log::warn!("removing the link {path}: {e}");
        }
    }
}

/// Our own copy of fd number `fd` that the caller handed us (`--inherit-fd`, our terminal).
pub fn dup_raw(fd: RawFd) -> Result<OwnedFd, RestoreError> {
    crate::sys::fd::dup_inherited(fd, 3).map_err(|source| RestoreError::Setup {
        what: format!("dup of fd {fd}"),
        source,
    })
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
    let flags = OFlag::from_bits_retain((flags as libc::c_int & keep) | libc::O_CLOEXEC);
    open(path.as_str(), flags, Mode::empty()).map_err(|e| RestoreError::Open {
        id,
        path,
        source: e.into(),
    })
}

pub fn set_status_flags(fd: &OwnedFd, flags: u32) -> Result<(), RestoreError> {
    let keep =
        (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME)
            as u32;
    let flags = OFlag::from_bits_retain((flags & keep) as libc::c_int);
    fcntl(fd, FcntlArg::F_SETFL(flags)).map_err(|e| RestoreError::Setup {
        what: "setting file status flags".into(),
        source: e.into(),
    })?;
    Ok(())
}

/// Opens a file by its path with its dumped flags and offset.
pub fn open_path(id: u32, reg: &pb::RegFileEntry) -> Result<OwnedFd, RestoreError> {
    // An O_TMPFILE file comes back as a ghost: opened by name, so without O_TMPFILE (whose
    // bits include O_DIRECTORY).
    let mut flags = reg.flags as libc::c_int;
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        flags &= !libc::O_TMPFILE;
    }
    let flags = flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY)
        | libc::O_CLOEXEC
        | libc::O_NOCTTY;
    let open_err = |e: nix::Error| RestoreError::Open {
        id,
        path: reg.name.clone(),
        source: e.into(),
    };
    // A name with a NUL byte is refused with EINVAL, as before.
    let fd = open(reg.name.as_str(), OFlag::from_bits_retain(flags), Mode::empty())
        .map_err(open_err)?;
    if reg.pos != 0 {
        lseek(&fd, reg.pos as libc::off_t, Whence::SeekSet).map_err(open_err)?;
    }
    Ok(fd)
}
