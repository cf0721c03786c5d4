//! File locks (flock, POSIX, OFD) held by the tree: read from the `lock:` lines of fdinfo,
//! taken again at restore. flock and OFD locks belong to an open file description, so the
//! restorer takes them on the pool's fd; POSIX locks belong to the process, so each task
//! takes its own.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};

use nix::fcntl::{fcntl, FcntlArg};

use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::proc::FdInfo;
use crate::restore::load::TaskImage;
use crate::restore::{DumpImage, RestoreError};
use crate::task::remote::Remote;

/// CRIU's lock kinds in file_lock_entry.flag.
// `file_lock_entry.flag` as CRIU writes it (its own values, not the kernel's FL_* bits).
pub const FL_POSIX: u32 = 1;
pub const FL_FLOCK: u32 = 2;
/// An OFD lock. Older stasis images wrote the kernel's FL_OFDLCK (1024); any value but the
/// other three is taken for an OFD lock at restore, so they still load.
pub const FL_OFDLCK: u32 = 4;
/// A lease (F_SETLEASE).
pub const FL_LEASE: u32 = 8;
/// CRIU's mark, in a lease's `type`, of one being broken.
const LEASE_BREAKING: u32 = 4;

/// The locks an fd's fdinfo lists: (flag, type F_RDLCK/F_WRLCK, start, len with 0 = to EOF).
/// A lease being broken comes with LEASE_BREAKING in its type (the dump replaces the type with
/// the target the break leads to). Other kinds and lines that do not read as the kernel writes
/// them are returned as `Err(what)`, which fails the dump.
pub fn parse_locks(fdinfo: &str) -> Vec<Result<(u32, u32, i64, i64), String>> {
    let mut out = Vec::new();
    for line in fdinfo.lines().filter_map(|l| l.strip_prefix("lock:")) {
        // "1: POSIX  ADVISORY  WRITE 6660 fe:00:10010757 5 14"
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 8 {
            out.push(Err(format!("lock line \"{line}\"")));
            continue;
        }
        let flag = match w[1] {
            "POSIX" => FL_POSIX,
            "FLOCK" => FL_FLOCK,
            "OFDLCK" => FL_OFDLCK,
            // An active lease, or one being broken (a conflicting open came).
            "LEASE" if w[2] == "ACTIVE" || w[2] == "BREAKING" => FL_LEASE,
            "LEASE" => {
                out.push(Err(format!("a file lease {}", w[2].to_lowercase())));
                continue;
            }
            other => {
                out.push(Err(format!("a file {} (lease)", other.to_lowercase())));
                continue;
            }
        };
        let ty = if w[3] == "WRITE" {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as u32;
        let (Ok(start), end) = (w[6].parse::<i64>(), w[7].parse::<i64>()) else {
            out.push(Err(format!("{} lock whose range reads \"{line}\"", w[1])));
            continue;
        };
        let len = match end {
            _ if w[7] == "EOF" => 0,
            Ok(end) => end - start + 1,
            Err(_) => {
                out.push(Err(format!("{} lock whose range reads \"{line}\"", w[1])));
                continue;
            }
        };
        let breaking = flag == FL_LEASE && w[2] == "BREAKING";
        out.push(Ok((
            flag,
            if breaking { ty | LEASE_BREAKING } else { ty },
            start,
            len,
        )));
    }
    out
}

/// Records the locks that fd `fd` of `pid` shows (once each: a lock shows on every fd of its
/// file).
pub(crate) fn dump(
    cx: &mut DumpCx,
    pid: u32,
    fd: i32,
    link: &str,
    info: &FdInfo,
) -> Result<(), DumpError> {
    for lock in parse_locks(&info.raw) {
        let (flag, mut ty, start, len) = lock.map_err(|kind| DumpError::UnsupportedFd {
            pid,
            fd,
            what: kind,
        })?;
        if flag == FL_LEASE && ty & LEASE_BREAKING != 0 {
            // As CRIU saves it: the type the break leads to (F_GETLEASE tells it during a
            // break; a lease is its open file description's, which our copy shares).
            let copy = cx
                .copy_fd(pid, fd)
                .map_err(|source| crate::files::FilesError::Inspect { pid, fd, source })?;
            // SAFETY: fcntl(F_GETLEASE) on our own copy of the fd; no pointer argument.
            let target = unsafe { libc::fcntl(copy.as_raw_fd(), libc::F_GETLEASE) };
            if target < 0 {
                return Err(crate::files::FilesError::Inspect {
                    pid,
                    fd,
                    source: std::io::Error::last_os_error(),
                }
                .into());
            }
            ty = target as u32 | LEASE_BREAKING;
        }
        if !cx.opts.file_locks {
            return Err(DumpError::LocksNeedFlag {
                pid,
                fd,
                path: link.to_string(),
            });
        }
        let e = pb::FileLockEntry {
            flag,
            r#type: ty,
            pid: pid as i32,
            fd,
            start,
            len,
        };
        // A lock shows on every fd of its file (and of its owner): keep one of each.
        let same = |o: &pb::FileLockEntry| {
            o.flag == e.flag
                && o.r#type == e.r#type
                && o.start == e.start
                && o.len == e.len
                && o.pid == e.pid
                // A lease is its open file description's: two of them on one file are two.
                // (A description dup'ed shows its lease on each fd: taken again, harmlessly.)
                && (e.flag != FL_LEASE || o.fd == e.fd)
        };
        if !cx
            .img
            .locks
            .iter()
            .any(|(o, ino)| same(o) && *ino == info.ino)
        {
            cx.img.locks.push((e, info.ino));
        }
    }
    Ok(())
}

fn lock_file_id(img: &DumpImage, l: &pb::FileLockEntry) -> Option<u32> {
    let t = img.tasks.iter().find(|t| t.pid() as i32 == l.pid)?;
    t.fds.iter().find(|f| f.fd as i32 == l.fd).map(|f| f.id)
}

fn flock_struct(l: &pb::FileLockEntry) -> libc::flock {
    // SAFETY: struct flock is plain data.
    let mut f: libc::flock = unsafe { std::mem::zeroed() };
    f.l_type = l.r#type as libc::c_short;
    f.l_whence = libc::SEEK_SET as libc::c_short;
    f.l_start = l.start;
    f.l_len = l.len;
    f
}

/// OFD locks belong to an open file description: the restorer takes them on the pool's fd,
/// and they go with it into the task. POSIX locks belong to the process, and a flock lock
/// shows the pid that took it (/proc/locks, fdinfo): both are taken by the task itself (see
/// `restore_task_locks`).
pub(crate) fn take_file_locks(
    img: &DumpImage,
    files: &HashMap<u32, RawFd>,
) -> Result<(), RestoreError> {
    for l in &img.locks {
        if l.flag == FL_POSIX || l.flag == FL_FLOCK || l.flag == FL_LEASE {
            continue;
        }
        let fd = lock_file_id(img, l)
            .and_then(|id| files.get(&id))
            .copied()
            .ok_or(RestoreError::LockWithoutFile {
                pid: l.pid as u32,
                fd: l.fd,
            })?;
        // SAFETY: the pool's fds stay open for the whole restore, beyond this call.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        let r = if l.flag == FL_FLOCK {
            crate::sys::lock::flock_nb(fd, l.r#type == libc::F_WRLCK as u32)
        } else {
            let f = flock_struct(l);
            fcntl(fd, FcntlArg::F_OFD_SETLK(&f))
                .map(drop)
                .map_err(std::io::Error::from)
        };
        r.map_err(|source| RestoreError::Setup {
            what: format!("taking back the lock of pid {} fd {}", l.pid, l.fd),
            source,
        })?;
    }
    Ok(())
}

/// The POSIX and flock locks task `t` held, taken by it (injected fcntl and flock).
pub(crate) fn restore_task_locks(
    r: &Remote,
    t: &TaskImage,
    img: &DumpImage,
) -> Result<(), RestoreError> {
    for l in img
        .locks
        .iter()
        .filter(|l| l.flag == FL_FLOCK && l.pid as u32 == t.pid())
    {
        let op = if l.r#type == libc::F_WRLCK as u32 {
            libc::LOCK_EX
        } else {
            libc::LOCK_SH
        };
        r.call(libc::SYS_flock, &[l.fd as u64, (op | libc::LOCK_NB) as u64])?;
    }
    for l in img
        .locks
        .iter()
        .filter(|l| l.flag == FL_POSIX && l.pid as u32 == t.pid())
    {
        let f = flock_struct(l);
        // SAFETY: struct flock is plain data; viewed as bytes to copy into the task.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&f as *const libc::flock).cast::<u8>(),
                std::mem::size_of::<libc::flock>(),
            )
        };
        let a = r.put(0, bytes)?;
        r.call(libc::SYS_fcntl, &[l.fd as u64, libc::F_SETLK as u64, a])?;
    }
    // Leases by the task too: F_SETLEASE makes its caller the file's owner, whom a lease
    // break signals.
    for l in img
        .locks
        .iter()
        .filter(|l| l.flag == FL_LEASE && l.pid as u32 == t.pid())
    {
        // A lease being broken (CRIU's LEASE_BREAKING, 4, with the target type) is taken as
        // it was before the break (its fd's access decides, as CRIU does), then broken again
        // by a conflicting open of ours that does not wait; the signal the break sends the
        // task is dropped with the stub's (restore_task_state), as it was delivered before.
        let breaking = l.r#type & LEASE_BREAKING != 0;
        let file = lock_file_id(img, l)
            .and_then(|id| img.files.get(&id))
            .and_then(|f| f.reg.as_ref());
        let ty = match file {
            Some(reg) if breaking => {
                if reg.flags & libc::O_ACCMODE as u32 == libc::O_RDONLY as u32 {
                    libc::F_RDLCK as u32
                } else {
                    libc::F_WRLCK as u32
                }
            }
            _ => l.r#type & !LEASE_BREAKING,
        };
        r.call(
            libc::SYS_fcntl,
            &[l.fd as u64, libc::F_SETLEASE as u64, u64::from(ty)],
        )?;
        if let (true, Some(reg)) = (breaking, file) {
            break_lease(img, l, reg)?;
        }
    }
    Ok(())
}

/// Starts breaking lease `l` again: an open of its file that conflicts with the target type
/// (for writing to end at no lease, for reading to end at a read lease), without waiting.
fn break_lease(
    img: &DumpImage,
    l: &pb::FileLockEntry,
    reg: &pb::RegFileEntry,
) -> Result<(), RestoreError> {
    let target = l.r#type & !LEASE_BREAKING;
    let mode = if target == libc::F_UNLCK as u32 {
        nix::fcntl::OFlag::O_WRONLY
    } else {
        nix::fcntl::OFlag::O_RDONLY
    };
    let path = img.path_of(reg).into_owned();
    let flags = mode | nix::fcntl::OFlag::O_NONBLOCK | nix::fcntl::OFlag::O_CLOEXEC;
    match nix::fcntl::open(path.as_str(), flags, nix::sys::stat::Mode::empty()) {
        Err(nix::errno::Errno::EWOULDBLOCK) => Ok(()),
        Ok(_) => Err(RestoreError::Setup {
            what: format!(
                "breaking the lease of pid {} fd {} ({path}): no lease stood in the way",
                l.pid, l.fd
            ),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        }),
        Err(e) => Err(RestoreError::Setup {
            what: format!("breaking the lease of pid {} fd {} ({path})", l.pid, l.fd),
            source: e.into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_kinds_are_written_with_criu_s_values() {
        // CRIU's file-lock.h, which its restore reads (not the kernel's FL_* bits).
        assert_eq!((FL_POSIX, FL_FLOCK, FL_OFDLCK, FL_LEASE), (1, 2, 4, 8));
    }

    #[test]
    fn lock_lines_of_fdinfo() {
        let text = "pos:\t0\nflags:\t02\n\
lock:\t1: POSIX  ADVISORY  WRITE 6660 fe:00:10010757 5 14\n\
lock:\t2: FLOCK  ADVISORY  READ 6660 fe:00:10010757 0 EOF\n\
lock:\t3: LEASE  ACTIVE    READ 6660 fe:00:10010757 0 EOF\n\
lock:\t4: OFDLCK ADVISORY  WRITE -1 fe:00:10010757 x EOF\n\
lock:\t5: LEASE  BREAKING  READ 6660 fe:00:10010757 0 EOF\n";
        let l = parse_locks(text);
        assert_eq!(l.len(), 5);
        assert_eq!(
            l[4],
            Ok((FL_LEASE, libc::F_RDLCK as u32 | LEASE_BREAKING, 0, 0)),
            "a lease being broken is marked so"
        );
        assert_eq!(l[0], Ok((FL_POSIX, libc::F_WRLCK as u32, 5, 10)));
        assert_eq!(l[1], Ok((FL_FLOCK, libc::F_RDLCK as u32, 0, 0)));
        assert_eq!(l[2], Ok((FL_LEASE, libc::F_RDLCK as u32, 0, 0)));
        assert!(
            l[3].is_err(),
            "an unreadable range is refused, not read as 0"
        );
    }
}
