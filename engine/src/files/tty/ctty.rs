//! Controlling terminals: which terminal a session leader of the tree had (a pty of the tree,
//! held or not, a virtual terminal or the console), how its stub acquires it again, and the
//! foreground group put back once every group exists.

use std::os::fd::{OwnedFd, RawFd};

use super::{is_master_info, master_in_images, open_slave, Made};
use crate::dump::fds::DumpCx;
use crate::files::kind::Fd;
use crate::images::pb;
use crate::restore::load::TaskImage;
use crate::restore::{DumpImage, RestoreError};
use crate::task::remote::Remote;

/// Whether `fd` is `/dev/tty` naming a controlling terminal that is a pty of the tree (a
/// program opened its own terminal so): saved as that path, and opened by the task itself
/// once its session has the terminal again (see procfile.rs).
pub(crate) fn is_own_ctty(cx: &DumpCx, fd: &Fd) -> bool {
    if fd.link != "/dev/tty" {
        return false;
    }
    let Ok(st) = crate::proc::stat(fd.pid) else {
        return false;
    };
    let (major, minor) = ((st.tty_nr >> 8) & 0xfff, (st.tty_nr & 0xff) | ((st.tty_nr >> 12) & 0xfff00));
    // Unix98 pty slaves: majors 136-143, 256 minors each.
    (136..=143).contains(&major) && cx.img.tree_ptys.contains(&((major - 136) * 256 + minor))
}

/// Whether `fd` is the system console (5:1) or a virtual terminal (4:0-63) that is not its
/// task's controlling terminal: a device reopened by its path, as CRIU's console and vt tty
/// types are, not a shell's terminal that needs `--shell-job`.
pub(crate) fn is_device_tty_not_ctty(fd: &Fd) -> bool {
    device_tty(fd).is_some_and(|d| crate::proc::stat(fd.pid).is_ok_and(|st| st.tty_nr as u64 != tty_nr(d)))
}

/// A device number as `/proc/<pid>/stat`'s tty_nr encodes it: minor's low byte, major, minor's
/// high bits.
fn tty_nr((major, minor): (u64, u64)) -> u64 {
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

/// For a session leader whose controlling terminal was a pty slave of the tree: its fd of the
/// slave, and the foreground group, when the leader holds the slave open.
pub(crate) fn controlling_slave(t: &TaskImage, img: &DumpImage) -> Option<(RawFd, u32)> {
    if t.pstree.sid != t.pid() || t.zombie_exit.is_some() {
        return None;
    }
    t.fds.iter().find_map(|fd| {
        let tty = img.files.get(&fd.id)?.tty.as_ref()?;
        let info = img.tty_infos.get(&tty.tty_info_id)?;
        (info.sid == t.pid() && !is_master_info(info)).then_some((fd.fd as RawFd, info.pgrp))
    })
}

/// For a session leader whose controlling terminal is a pty of the tree that it holds no slave
/// of (closed after TIOCSCTTY, or held by another session): the pty's index and the foreground
/// group. The restorer opens a slave for its stub to acquire it with.
pub(crate) fn unheld_controlling_pty(t: &TaskImage, img: &DumpImage) -> Option<(u32, u32)> {
    if t.pstree.sid != t.pid() || t.zombie_exit.is_some() || controlling_slave(t, img).is_some()
    {
        return None;
    }
    let mut infos: Vec<&pb::TtyInfoEntry> = img
        .tty_infos
        .values()
        .filter(|i| i.sid == t.pid() && i.pty.is_some())
        .collect();
    // The slave's info first, as the dump records it there when it can.
    infos.sort_by_key(|i| is_master_info(i));
    let info = infos.first()?;
    let index = info.pty.as_ref()?.index;
    master_in_images(img, index).then_some((index, info.pgrp))
}

/// Whether `fd` is a virtual terminal (4:0-63) or the console (5:1) that is its task's
/// controlling terminal, in a session led by a task of the tree: the session gets it back (its
/// leader's stub acquires it), as CRIU's VT and CONSOLE ttys do, with no `--shell-job`.
pub(crate) fn is_session_device_tty(fd: &Fd, cx: &DumpCx) -> bool {
    let Some(device) = device_tty(fd) else {
        return false;
    };
    crate::proc::stat(fd.pid)
        .is_ok_and(|st| st.tty_nr as u64 == tty_nr(device) && cx.img.live_pids.contains(&st.sid))
}

/// (major, minor) of a virtual terminal (4:0-63) or the console (5:1) open at `fd`.
pub(super) fn device_tty(fd: &Fd) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let rdev = std::fs::metadata(fd.proc_path()).ok()?.rdev();
    let (major, minor) = (
        nix::sys::stat::major(rdev as libc::dev_t),
        nix::sys::stat::minor(rdev as libc::dev_t),
    );
    ((major, minor) == (5, 1) || (major == 4 && minor < 64)).then_some((major, minor))
}

/// A slave of each pty that is a session leader's controlling terminal without the leader
/// holding it (see [`unheld_controlling_pty`]), once the ptys are made: (leader's pid, fd).
pub(crate) fn slaves_for_unheld_ctty(
    img: &DumpImage,
    slots: &mut crate::files::kind::Slots,
) -> Result<Vec<(u32, OwnedFd)>, RestoreError> {
    let mut out = Vec::new();
    for t in &img.tasks {
        let Some((index, _)) = unheld_controlling_pty(t, img) else {
            continue;
        };
        let Some((_, path)) = slots.get::<Made>().0.get(&index) else {
            continue;
        };
        let fd = open_slave(path, libc::O_RDWR as u32)
            .map_err(|source| RestoreError::Pty { id: 0, source })?;
        out.push((t.pid(), fd));
    }
    Ok(out)
}

/// The stub made the slave the session's controlling terminal before forking the session
/// (a controlling terminal is inherited at fork, and only a leader can acquire one); now that
/// every group exists, the leader puts the dumped foreground group back.
pub(super) fn restore_controlling_tty(r: &Remote, t: &TaskImage, img: &DumpImage) -> Result<(), RestoreError> {
    let (fd, pgrp) = match controlling_slave(t, img) {
        Some((fd, pgrp)) => (Some(fd), pgrp),
        None => match unheld_controlling_pty(t, img) {
            Some((_, pgrp)) => (None, pgrp),
            None => return Ok(()),
        },
    };
    // TIOCSCTTY put the leader's own group in the foreground.
    if pgrp == t.pid() {
        return Ok(());
    }
    // The group must be one of the session's. After TIOCSCTTY the leader's group is in the
    // foreground, so the leader may hand it over without SIGTTOU.
    if pgrp != 0
        && img
            .tasks
            .iter()
            .any(|o| o.pstree.pgid == pgrp && o.pstree.sid == t.pid())
    {
        let a = r.put(0, &(pgrp as i32).to_ne_bytes())?;
        match fd {
            Some(fd) => {
                r.call(libc::SYS_ioctl, &[fd as u64, libc::TIOCSPGRP, a])?;
            }
            None => {
                // No fd of its own on it: through /dev/tty, opened for the moment.
                let path = r.put(64, b"/dev/tty\0")?;
                let flags = (libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) as u64;
                let tty = r.call(libc::SYS_openat, &[libc::AT_FDCWD as u64, path, flags])?;
                let set = r.call(libc::SYS_ioctl, &[tty as u64, libc::TIOCSPGRP, a]);
                r.call(libc::SYS_close, &[tty as u64])?;
                set?;
            }
        }
    }
    Ok(())
}
