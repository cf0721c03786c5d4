//! A terminal the caller hands over (CRIU's `--external tty[RDEV:DEV]` at dump, `--inherit-fd
//! fd[N]:tty[RDEV:DEV]` at restore): LXC's container console, a pty whose master LXC holds and
//! makes anew for the restored container. The dump saves only which terminal it was (a tty_info
//! of type EXT_TTY with its device numbers); the restore uses the fd given under that key.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use crate::dump::fds::DumpCx;
use crate::files::kind::{Fd, OpenCx};
use crate::files::FdKind;
use crate::images::pb;
use crate::restore::RestoreError;

/// CRIU's name of a terminal: `tty[RDEV:DEV]`, both in hex.
pub fn key(rdev: u64, dev: u64) -> String {
    format!("tty[{rdev:x}:{dev:x}]")
}

/// The key of `fd` when it is a terminal the caller declared external; None otherwise.
pub(super) fn declared(fd: &Fd, cx: &DumpCx) -> Option<(String, u64, u64)> {
    if *fd.class != FdKind::Tty || cx.opts.external_ttys.is_empty() {
        return None;
    }
    let md = std::fs::metadata(fd.proc_path()).ok()?;
    let k = key(md.rdev(), md.dev());
    cx.opts
        .external_ttys
        .contains(&k)
        .then_some((k, md.rdev(), md.dev()))
}

/// Its tty_info: the type and the device numbers that name it again at restore.
pub(super) fn info(id: u32, rdev: u64, dev: u64) -> pb::TtyInfoEntry {
    pb::TtyInfoEntry {
        id,
        r#type: pb::TtyType::ExtTty as i32,
        locked: false,
        exclusive: false,
        packet_mode: false,
        sid: 0,
        pgrp: 0,
        rdev: rdev as u32,
        dev: Some(dev as u32),
        ..Default::default()
    }
}

/// The restore: a copy of the fd the caller gave under the terminal's key.
pub(super) fn open(cx: &OpenCx, info: &pb::TtyInfoEntry) -> Result<OwnedFd, RestoreError> {
    let k = key(u64::from(info.rdev), u64::from(info.dev.unwrap_or(0)));
    let given = cx
        .opts
        .inherit_fds
        .iter()
        .find(|i| i.key == k)
        .ok_or_else(|| RestoreError::Setup {
            what: format!("the terminal {k} was external: give it with --inherit-fd fd[N]:{k}"),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        })?;
    // SAFETY: the caller handed us this fd (--inherit-fd); it stays open for the restore.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(given.fd) };
    fd.try_clone_to_owned().map_err(|source| RestoreError::Setup {
        what: format!("the terminal {k} given as fd {}", given.fd),
        source,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn keys_are_criu_s() {
        // LXC's console: /dev/pts/0 of a devpts of device 0:1a.
        assert_eq!(super::key(0x8800, 0x1a), "tty[8800:1a]");
    }
}
