//! Pseudo-terminals with both ends in the tree: the master (/dev/ptmx) and its slave
//! (/dev/pts/N). Saved as CRIU's tty_info entries (termios, window size, lock, packet mode)
//! and recreated as a new pair; the restorer's own terminal (--shell-job) is handled apart.
//!
//! Bytes buffered in the pair are kept in both directions (see [`take_queues`]). Not kept: the
//! index (a new pair gets whatever /dev/pts/N is free).

mod ctty;
pub mod ext;
pub(crate) use ctty::{
    controlling_slave, is_device_tty_not_ctty, is_own_ctty, is_session_device_tty,
    slaves_for_unheld_ctty,
};
use ctty::{device_tty, restore_controlling_tty};

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use super::kind::{Fd, FileKind, OpenCx, TaskCx};
use super::{FdKind, FileTable, FilesError};
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::{magic, names, pb, ImageKind, ImageWriter};
use crate::restore::load::TaskImage;
use crate::restore::{DumpImage, RestoreError};
use crate::task::remote::Remote;
use crate::sys::tty as ioc;
use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;
use nix::sys::termios::{
    cfgetispeed, cfgetospeed, cfsetispeed, cfsetospeed, tcgetattr, tcsetattr, BaudRate, SetArg,
    Termios,
};

/// A pty could not be read or made.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct PtyError {
    what: String,
    #[source]
    source: io::Error,
}

fn err<E: Into<io::Error>>(what: impl Into<String>) -> impl FnOnce(E) -> PtyError {
    let what = what.into();
    move |source| PtyError {
        what,
        source: source.into(),
    }
}

/// /dev/ptmx's major: the master end of a pty.
const PTMX_MAJOR: u32 = 5;

/// The pts index of a master (a copy of /dev/ptmx).
pub fn master_index(fd: BorrowedFd<'_>) -> io::Result<u32> {
    ioc::pty_index(fd)
}

/// Whether an fd link names a pty master: /dev/ptmx, or /dev/pts/ptmx, which a container's
/// /dev/ptmx (a symlink or bind to its own devpts's node) opens.
pub fn is_ptmx(path: &str) -> bool {
    path == "/dev/ptmx" || path == "/dev/pts/ptmx"
}

/// The pts index of a slave path (/dev/pts/N).
pub fn slave_index(path: &str) -> Option<u32> {
    path.strip_prefix("/dev/pts/")?.parse().ok()
}

/// The index of a pty slave whose master was closed: the slave is hung up (it reads nothing
/// and answers EIO) and its devpts node is gone, which its fd link shows.
pub fn hung_up_index(path: &str) -> Option<u32> {
    slave_index(path.strip_suffix(" (deleted)")?)
}

/// A hung-up slave's info: it answers no ioctl, so it has no termios, locked termios or window
/// size, which is how CRIU marks a hung-up pty (its restore gives it a master that it closes).
fn hung_up_info(id: u32, index: u32, rdev: u32) -> pb::TtyInfoEntry {
    pb::TtyInfoEntry {
        id,
        r#type: pb::TtyType::Pty as i32,
        locked: false,
        exclusive: false,
        packet_mode: false,
        sid: 0,
        pgrp: 0,
        rdev,
        termios: None,
        termios_locked: None,
        winsize: None,
        pty: Some(pb::TtyPtyEntry { index }),
        dev: None,
        uid: None,
        gid: None,
    }
}

fn termios_of(fd: BorrowedFd<'_>) -> io::Result<pb::TermiosEntry> {
    Ok(entry_of(tcgetattr(fd)?))
}

/// CRIU's termios entry of `nt`.
fn entry_of(nt: Termios) -> pb::TermiosEntry {
    let (c_ispeed, c_ospeed) = (cfgetispeed(&nt) as u32, cfgetospeed(&nt) as u32);
    let t = libc::termios::from(nt);
    pb::TermiosEntry {
        c_iflag: t.c_iflag,
        c_oflag: t.c_oflag,
        c_cflag: t.c_cflag,
        c_lflag: t.c_lflag,
        c_line: t.c_line as u32,
        c_ispeed,
        c_ospeed,
        c_cc: t.c_cc.iter().map(|&c| c as u32).collect(),
    }
}

/// Copies the flags, line discipline and control characters of `t` into `tt`.
fn fill_termios(tt: &mut libc::termios, t: &pb::TermiosEntry) {
    tt.c_iflag = t.c_iflag;
    tt.c_oflag = t.c_oflag;
    tt.c_cflag = t.c_cflag;
    tt.c_lflag = t.c_lflag;
    tt.c_line = t.c_line as libc::cc_t;
    tt.c_cc = [0; libc::NCCS];
    for (d, s) in tt.c_cc.iter_mut().zip(&t.c_cc) {
        *d = *s as libc::cc_t;
    }
}

/// A terminal's termios, locked termios and window size (`what` names it in errors): CRIU's
/// restore requires all three.
fn settings(
    fd: BorrowedFd<'_>,
    what: &str,
) -> Result<(pb::TermiosEntry, pb::TermiosEntry, pb::WinsizeEntry), PtyError> {
    let termios = termios_of(fd).map_err(err(format!("termios of {what}")))?;
    let locked = ioc::locked_termios(fd)
        .map(|t| entry_of(Termios::from(t)))
        .map_err(err(format!("locked termios of {what}")))?;
    let ws = ioc::window_size(fd).map_err(err(format!("window size of {what}")))?;
    let winsize = pb::WinsizeEntry {
        ws_row: ws.ws_row as u32,
        ws_col: ws.ws_col as u32,
        ws_xpixel: ws.ws_xpixel as u32,
        ws_ypixel: ws.ws_ypixel as u32,
    };
    Ok((termios, locked, winsize))
}

/// The state of pty `index`, read through a copy of its master.
pub fn info(
    id: u32,
    index: u32,
    master: BorrowedFd<'_>,
    rdev: u32,
) -> Result<pb::TtyInfoEntry, PtyError> {
    let (termios, locked_termios, winsize) = settings(master, &format!("pty {index}"))?;
    // The slave's owner (grantpt gives it to the user who opened the master; a program may
    // chown it): reached through the master, wherever its devpts is mounted.
    let slave_owner = if nix::sys::stat::major(rdev as libc::dev_t) == PTMX_MAJOR as u64 {
        let peer = ioc::pty_peer_path(master).map_err(err(format!("the slave of pty {index}")))?;
        let st = nix::sys::stat::fstat(peer.as_fd())
            .map_err(err(format!("the slave of pty {index}")))?;
        Some((st.st_uid, st.st_gid))
    } else {
        None
    };
    // The lock and packet mode are the master's: a slave answers ENOTTY, and its entry
    // keeps them off, as CRIU's does.
    let mut locked = false;
    let mut packet = false;
    if nix::sys::stat::major(rdev as libc::dev_t) == PTMX_MAJOR as u64 {
        locked = ioc::pty_locked(master).map_err(err(format!("lock state of pty {index}")))?;
        packet = ioc::packet_mode(master).map_err(err(format!("packet mode of pty {index}")))?;
    }
    Ok(pb::TtyInfoEntry {
        id,
        r#type: pb::TtyType::Pty as i32,
        locked,
        exclusive: false,
        packet_mode: packet,
        sid: 0,
        pgrp: 0,
        rdev,
        termios: Some(termios),
        termios_locked: Some(locked_termios),
        winsize: Some(winsize),
        pty: Some(pb::TtyPtyEntry { index }),
        dev: None,
        uid: slave_owner.map(|(u, _)| u),
        gid: slave_owner.map(|(_, g)| g),
    })
}

/// A new pair for a dumped pty: the master, and the path of its slave. `root` is the tree's
/// root when it had a mount namespace: the pair is made in its devpts.
pub fn create(info: &pb::TtyInfoEntry, root: Option<&str>) -> Result<(OwnedFd, String), PtyError> {
    let flags = OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC;
    let at = |p: &str| match root {
        Some(r) => crate::ns::mnt::under(r, p),
        None => p.to_string(),
    };
    let ptmx = at("/dev/ptmx");
    let master =
        open(ptmx.as_str(), flags, Mode::empty()).map_err(err(format!("open {ptmx}")))?;
    let fd = master.as_fd();
    ioc::set_pty_lock(fd, false).map_err(err("unlocking the new pty"))?;
    let index = master_index(fd).map_err(err("TIOCGPTN"))?;
    if let Some(t) = &info.termios {
        set_dumped_termios(fd, index, t);
    }
    if let Some(t) = &info.termios_locked {
        // SAFETY: termios is plain integers; all zeroes is a valid value.
        let mut tt: libc::termios = unsafe { std::mem::zeroed() };
        fill_termios(&mut tt, t);
        // Best effort as the termios: a pty without its locks still works.
        if let Err(e) = ioc::set_locked_termios(fd, &tt) {
            log::warn!("setting the locked termios of pty {index}: {e}");
        }
    }
    if let Some(w) = &info.winsize {
        let ws = libc::winsize {
            ws_row: w.ws_row as u16,
            ws_col: w.ws_col as u16,
            ws_xpixel: w.ws_xpixel as u16,
            ws_ypixel: w.ws_ypixel as u16,
        };
        ioc::set_window_size(fd, &ws)
            .map_err(err(format!("setting the window size of pty {index}")))?;
    }
    if info.packet_mode {
        ioc::set_packet_mode(fd, true).map_err(err(format!("packet mode of pty {index}")))?;
    }
    let slave = at(&format!("/dev/pts/{index}"));
    if let (Some(uid), Some(gid)) = (info.uid, info.gid) {
        nix::unistd::chown(
            slave.as_str(),
            Some(nix::unistd::Uid::from_raw(uid)),
            Some(nix::unistd::Gid::from_raw(gid)),
        )
        .map_err(err(format!("chown of {slave}")))?;
    }
    Ok((master, slave))
}

/// Gives the new pty the dumped termios. Best effort, as it always was: a pty with the
/// default termios still works, so a refusal is logged, not fatal.
fn set_dumped_termios(fd: BorrowedFd<'_>, index: u32, t: &pb::TermiosEntry) {
    // Every field we saved is set; the rest (the speeds' own fields) is filled by cfset*speed.
    let mut tt = libc::termios::from(match tcgetattr(fd) {
        Ok(cur) => cur,
        Err(e) => {
            log::warn!("termios of the new pty {index}: {e}");
            return;
        }
    });
    fill_termios(&mut tt, t);
    let mut nt = Termios::from(tt);
    for (speed, set) in [
        (t.c_ispeed, cfsetispeed as fn(&mut Termios, BaudRate) -> nix::Result<()>),
        (t.c_ospeed, cfsetospeed),
    ] {
        let r = BaudRate::try_from(speed).and_then(|b| set(&mut nt, b));
        if let Err(e) = r {
            log::warn!("speed {speed} of pty {index}: {e}");
        }
    }
    if let Err(e) = tcsetattr(fd, SetArg::TCSANOW, &nt) {
        log::warn!("setting the termios of pty {index}: {e}");
    }
}

/// Bytes buffered in a pty pair: waiting to be read on the master (written on the slave
/// side, after output processing) and on the slave (typed into the master, after input
/// processing, a partial line included).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Queues {
    pub master: Vec<u8>,
    pub slave: Vec<u8>,
}

fn get_termios(fd: BorrowedFd<'_>) -> io::Result<libc::termios> {
    Ok(tcgetattr(fd)?.into())
}

fn set_termios(fd: BorrowedFd<'_>, t: &libc::termios) -> io::Result<()> {
    Ok(tcsetattr(fd, SetArg::TCSANOW, &Termios::from(*t))?)
}

fn read_n(fd: BorrowedFd<'_>, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) | Err(nix::Error::EAGAIN) => break,
            Err(nix::Error::EINTR) => continue,
            Err(e) => return Err(e.into()),
            Ok(k) => got += k,
        }
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads what is buffered in the pair (`master`: a master fd, `slave`: our own fd on its
/// slave) and puts it straight back, so the pty is left as it was. The master's own line
/// discipline is raw, so its queue is read as it is; the slave's is read with ICANON off for
/// a moment, so that a partial line comes too. A master in packet mode is left alone (its
/// reads carry a status byte).
pub fn take_queues(master: BorrowedFd<'_>, slave: BorrowedFd<'_>) -> Result<Queues, PtyError> {
    if ioc::packet_mode(master).map_err(err("packet mode of the pty master"))? {
        return Ok(Queues::default());
    }
    let n = ioc::bytes_queued(master).map_err(err("FIONREAD on the pty master"))?;
    let master_q = read_n(master, n).map_err(err("reading the pty master's queue"))?;
    if !can_push_input() {
        // The slave's bytes could not go back (TIOCSTI needs CAP_SYS_ADMIN): leave them.
        log::warn!(
            "bytes waiting on a pty slave are not kept: putting them back needs CAP_SYS_ADMIN"
        );
        let q = Queues {
            master: master_q,
            slave: Vec::new(),
        };
        put_queues(slave, &q)?;
        return Ok(q);
    }
    let t0 = get_termios(slave).map_err(err("termios of the pty slave"))?;
    let mut raw = t0;
    raw.c_lflag &= !libc::ICANON;
    raw.c_cc[libc::VMIN] = 0;
    raw.c_cc[libc::VTIME] = 0;
    set_termios(slave, &raw).map_err(err("termios of the pty slave"))?;
    let slave_q = ioc::bytes_queued(slave).and_then(|n| read_n(slave, n));
    set_termios(slave, &t0).map_err(err("termios of the pty slave"))?;
    let q = Queues {
        master: master_q,
        slave: slave_q.map_err(err("reading the pty slave's queue"))?,
    };
    put_queues(slave, &q)?;
    Ok(q)
}

/// Whether we may push bytes into a tty's input (TIOCSTI on a tty that is not our controlling
/// terminal needs CAP_SYS_ADMIN).
fn can_push_input() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/thread-self/status")
        .ok()
        .and_then(|s| {
            let v = s
                .lines()
                .find_map(|l| l.strip_prefix("CapEff:"))?
                .trim()
                .to_string();
            u64::from_str_radix(&v, 16).ok()
        })
        .is_some_and(|caps| caps & (1 << CAP_SYS_ADMIN) != 0)
}

/// Puts `q` in the pair of `slave` (our own fd on it) as it was read: the slave's bytes through its line discipline with
/// every processing off (TIOCSTI, which is synchronous, so the real termios can come back at
/// once), the master's bytes written on the slave with output processing off.
pub fn put_queues(slave: BorrowedFd<'_>, q: &Queues) -> Result<(), PtyError> {
    if q.slave.is_empty() && q.master.is_empty() {
        return Ok(());
    }
    let t0 = get_termios(slave).map_err(err("termios of the pty slave"))?;
    if !q.slave.is_empty() {
        let mut quiet = t0;
        quiet.c_iflag = 0;
        quiet.c_lflag &= !(libc::ECHO
            | libc::ECHOE
            | libc::ECHOK
            | libc::ECHONL
            | libc::ECHOCTL
            | libc::ECHOKE
            | libc::ISIG
            | libc::IEXTEN);
        for (i, c) in quiet.c_cc.iter_mut().enumerate() {
            if i != libc::VMIN && i != libc::VTIME {
                *c = 0; // disabled: only '\n' ends a line
            }
        }
        set_termios(slave, &quiet).map_err(err("termios of the pty slave"))?;
        let r = q.slave.iter().try_for_each(|&b| ioc::push_input(slave, b));
        set_termios(slave, &t0).map_err(err("termios of the pty slave"))?;
        r.map_err(err("putting bytes back in the pty slave's queue"))?;
    }
    if !q.master.is_empty() {
        let mut plain = t0;
        plain.c_oflag &= !libc::OPOST;
        set_termios(slave, &plain).map_err(err("termios of the pty slave"))?;
        let mut off = 0;
        let mut r = Ok(());
        while off < q.master.len() {
            match nix::unistd::write(slave, &q.master[off..]) {
                Ok(k) => off += k,
                Err(e) => {
                    r = Err(e);
                    break;
                }
            }
        }
        set_termios(slave, &t0).map_err(err("termios of the pty slave"))?;
        r.map_err(err("putting bytes back in the pty master's queue"))?;
    }
    Ok(())
}

/// Opens the slave `path` with the dumped flags.
pub fn open_slave(path: &str, flags: u32) -> Result<OwnedFd, PtyError> {
    let kept = OFlag::O_ACCMODE | OFlag::O_NONBLOCK | OFlag::O_APPEND;
    let f = (OFlag::from_bits_truncate(flags as libc::c_int) & kept)
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    open(path, f, Mode::empty()).map_err(err(format!("open {path}")))
}

/// The pty ends the dump saw: ((index, is master), info), and the bytes buffered in them
/// (tty_info id of the end they wait on, bytes).
#[derive(Default)]
struct TtyInfos {
    infos: Vec<((u32, bool), pb::TtyInfoEntry)>,
    data: Vec<(u32, Vec<u8>)>,
}

impl FileTable {
    /// Marks pty `index` as the controlling terminal of session `sid` with foreground group
    /// `pgrp`: on its slave's info when the tree holds the slave, else on its master's (as CRIU
    /// records a controlling terminal that no fd holds).
    pub fn set_pty_session(&mut self, index: u32, sid: u32, pgrp: u32) {
        let infos = &mut self.slots.get::<TtyInfos>().infos;
        let end = if infos.iter().any(|(k, _)| *k == (index, false)) {
            (index, false)
        } else {
            (index, true)
        };
        for (_, info) in infos.iter_mut().filter(|(k, _)| *k == end) {
            info.sid = sid;
            info.pgrp = pgrp;
        }
    }

    /// Marks the virtual terminal or console `major:minor` as the controlling terminal of
    /// session `sid` (foreground group `pgrp`), when the tree holds it.
    pub fn set_device_tty_session(&mut self, major: u32, minor: u32, sid: u32, pgrp: u32) {
        let key = device_key(libc::makedev(major, minor));
        let infos = &mut self.slots.get::<TtyInfos>().infos;
        for (_, info) in infos.iter_mut().filter(|(k, _)| *k == key) {
            info.sid = sid;
            info.pgrp = pgrp;
        }
    }

    /// Records the bytes buffered in pty `index`, on the ends the tree holds (CRIU's tty_data:
    /// keyed by the tty_info of the end they wait to be read on).
    pub fn set_pty_queues(&mut self, index: u32, q: &Queues) {
        for (master, data) in [(true, &q.master), (false, &q.slave)] {
            if data.is_empty() {
                continue;
            }
            let t = self.slots.get::<TtyInfos>();
            if let Some((_, info)) = t.infos.iter().find(|(k, _)| *k == (index, master)) {
                t.data.push((info.id, data.clone()));
            }
        }
    }

    /// One end of a pty of the tree: a TTY entry pointing at its tty_info (saved once per end).
    pub fn add_pty(
        &mut self,
        pid: u32,
        fd: i32,
        link: &str,
        flags: u32,
        info: impl FnOnce(u32) -> Result<pb::TtyInfoEntry, FilesError>,
        end_key: (u32, bool),
    ) -> Result<u32, FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok(id);
        }
        let known = self
            .slots
            .get::<TtyInfos>()
            .infos
            .iter()
            .find(|(k, _)| *k == end_key);
        let info_id = match known.map(|(_, i)| i.id) {
            Some(id) => id,
            None => {
                // CRIU's id of a pty end: index * 2, plus 1 for the master. Its restore
                // pairs the ends by these ids.
                let i = info((end_key.0 << 1) + u32::from(end_key.1))?;
                let id = i.id;
                self.slots.get::<TtyInfos>().infos.push((end_key, i));
                id
            }
        };
        let regf_id = self.push_reg(link, flags, 0, None, Some(&md));
        let id = self.next_id();
        self.remember(pid, fd, md.dev(), md.ino(), id);
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Tty as i32,
            id,
            tty: Some(pb::TtyFileEntry {
                id,
                tty_info_id: info_id,
                flags,
                fown: pb::FownEntry::default(),
                regf_id: Some(regf_id),
            }),
            ..Default::default()
        });
        Ok(id)
    }
}

/// The kind of ptys whose master is in the tree.
pub struct Pty;

/// Restore: each dumped pts index → the new master and its slave's path.
#[derive(Default)]
struct Made(HashMap<u32, (OwnedFd, String)>);

impl FileKind for Pty {
    fn name(&self) -> &'static str {
        "pty"
    }

    fn claims(&self, fd: &Fd, cx: &DumpCx) -> bool {
        *fd.class == FdKind::Tty
            && (ext::declared(fd, cx).is_some()
                || is_ptmx(fd.link)
                || hung_up_index(fd.link).is_some()
                || is_session_device_tty(fd, cx)
                || slave_index(fd.link)
                    .is_some_and(|n| cx.img.tree_ptys.contains(&n) || cx.opts.orphan_pts_master))
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let (pid, fd_no, link) = (fd.pid, fd.fd, fd.link);
        if let Some((_, rdev, dev)) = ext::declared(fd, cx) {
            // Keyed apart from every pty index and device (CRIU's EXT_TTY).
            let end = (0x2000_0000 | (rdev as u32 & 0xfffff), false);
            let id = cx.img.files.add_pty(
                pid,
                fd_no,
                link,
                fd.flags(),
                |id| Ok(ext::info(id, rdev, dev)),
                end,
            )?;
            return Ok((pb::FdTypes::Tty, id));
        }
        let copy = cx
            .copy_fd(pid, fd_no)
            .map_err(|source| FilesError::Inspect {
                pid,
                fd: fd_no,
                source,
            })?;
        let master = is_ptmx(link);
        if let Some((major, _)) = device_tty(fd).filter(|_| !master) {
            let rdev = std::fs::metadata(fd.proc_path())
                .map_err(|source| FilesError::Inspect {
                    pid,
                    fd: fd_no,
                    source,
                })?
                .rdev();
            let id = cx.img.files.add_pty(
                pid,
                fd_no,
                link,
                fd.flags(),
                |id| {
                    device_info(id, copy.as_fd(), rdev as u32, major == 5).map_err(|source| {
                        FilesError::Pty {
                            pid,
                            fd: fd_no,
                            source,
                        }
                    })
                },
                device_key(rdev),
            )?;
            return Ok((pb::FdTypes::Tty, id));
        }
        if let Some(index) = hung_up_index(link) {
            let rdev = std::fs::metadata(fd.proc_path())
                .map_err(|source| FilesError::Inspect {
                    pid,
                    fd: fd_no,
                    source,
                })?
                .rdev() as u32;
            let name = link.strip_suffix(" (deleted)").unwrap_or(link);
            let id = cx.img.files.add_pty(
                pid,
                fd_no,
                name,
                fd.flags(),
                |id| Ok(hung_up_info(id, index, rdev)),
                (index, false),
            )?;
            return Ok((pb::FdTypes::Tty, id));
        }
        let index = if master {
            master_index(copy.as_fd()).map_err(|source| FilesError::Inspect {
                pid,
                fd: fd_no,
                source,
            })?
        } else {
            slave_index(link).unwrap_or(0)
        };
        let rdev = std::fs::metadata(fd.proc_path())
            .map_err(|source| FilesError::Inspect {
                pid,
                fd: fd_no,
                source,
            })?
            .rdev() as u32;
        let id = cx.img.files.add_pty(
            pid,
            fd_no,
            link,
            fd.flags(),
            |id| {
                info(id, index, copy.as_fd(), rdev).map_err(|source| FilesError::Pty {
                    pid,
                    fd: fd_no,
                    source,
                })
            },
            (index, master),
        )?;
        Ok((pb::FdTypes::Tty, id))
    }

    fn write_images(&self, table: &FileTable, dir: &std::path::Path) -> Result<(), FilesError> {
        let empty = TtyInfos::default();
        let t = table.slots.peek::<TtyInfos>().unwrap_or(&empty);
        let mut w = ImageWriter::new(ImageKind::Normal, magic::TTY_INFO);
        for (_, i) in &t.infos {
            w.push(i);
        }
        super::write(&dir.join(names::TTY_INFO), &w.into_bytes())?;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::TTY_DATA);
        for (tty_id, data) in &t.data {
            w.push(&pb::TtyDataEntry {
                tty_id: *tty_id,
                data: data.clone(),
            });
        }
        super::write(&dir.join(names::TTY_DATA), &w.into_bytes())
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.tty.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let t = entry.tty.as_ref().expect("owned: tty is set");
        let id = entry.id;
        let perr = |source| RestoreError::Pty { id, source };
        let info = &cx.img.tty_infos[&t.tty_info_id];
        if info.r#type == pb::TtyType::ExtTty as i32 {
            let fd = ext::open(cx, info)?;
            super::reg::set_status_flags(&fd, t.flags)?;
            return Ok(Some(fd));
        }
        if info.r#type != pb::TtyType::Pty as i32 {
            // A virtual terminal or the console: the device again, by its path.
            let reg = cx
                .img
                .files
                .get(&t.regf_id.unwrap_or(0))
                .and_then(|r| r.reg.as_ref())
                .ok_or(RestoreError::UnknownFileKind { id })?;
            let fd = open_slave(&cx.img.path_of(reg), t.flags).map_err(perr)?;
            super::reg::set_status_flags(&fd, t.flags)?;
            return Ok(Some(fd));
        }
        let index = info.pty.as_ref().map(|p| p.index).unwrap_or(0);
        let root = cx.img.fs_root.clone();
        // Its master was closed (a slave without termios, as CRIU marks it): a new pair whose
        // master goes when the pool is built, so the slaves are hung up again.
        let hung_up = info.termios.is_none() && !is_master_info(info);
        let orphan = !master_in_images(cx.img, index) && !hung_up;
        let made = cx.slots.get::<Made>();
        if let std::collections::hash_map::Entry::Vacant(slot) = made.0.entry(index) {
            if orphan && !cx.opts.orphan_pts_master {
                return Err(RestoreError::Setup {
                    what: format!(
                        "pty {index}'s master was outside the tree: restore with orphan_pts_master (runc sets it) to get a new one"
                    ),
                    source: io::Error::from_raw_os_error(libc::ENOENT),
                });
            }
            let (master, path) = create(info, root.as_deref()).map_err(perr)?;
            refill_pty(cx.img, index, &path).map_err(perr)?;
            if orphan {
                // The caller (runc) gives it to the container's console socket.
                cx.opts
                    .notify
                    .run_with_fd(crate::notify::Script::OrphanPtsMaster, master.as_fd())
                    .map_err(|e| RestoreError::Setup {
                        what: e.to_string(),
                        source: io::Error::from_raw_os_error(libc::EPIPE),
                    })?;
            }
            slot.insert((master, path));
        }
        let (master, path) = &made.0[&index];
        let is_master = cx
            .img
            .files
            .get(&t.regf_id.unwrap_or(0))
            .and_then(|r| r.reg.as_ref())
            .is_some_and(|r| is_ptmx(&r.name));
        let fd = if is_master {
            super::reg::dup(master)?
        } else {
            open_slave(path, t.flags).map_err(perr)?
        };
        super::reg::set_status_flags(&fd, t.flags)?;
        Ok(Some(fd))
    }

    fn in_task(&self, r: &Remote, t: &TaskImage, cx: &mut TaskCx) -> Result<(), RestoreError> {
        restore_controlling_tty(r, t, cx.img)
    }
}

/// Whether the images hold the master of pty `index` (else its master was outside the tree).
fn master_in_images(img: &DumpImage, index: u32) -> bool {
    img.files.values().any(|f| {
        let Some(t) = &f.tty else { return false };
        let is_index = img
            .tty_infos
            .get(&t.tty_info_id)
            .and_then(|i| i.pty.as_ref())
            .is_some_and(|p| p.index == index);
        let is_master = img
            .files
            .get(&t.regf_id.unwrap_or(0))
            .and_then(|r| r.reg.as_ref())
            .is_some_and(|r| is_ptmx(&r.name));
        is_index && is_master
    })
}

/// Puts back the bytes that were buffered in pty `index`, through our own fd on its new slave.
fn refill_pty(img: &DumpImage, index: u32, slave_path: &str) -> Result<(), PtyError> {
    let mut q = Queues::default();
    for info in img
        .tty_infos
        .values()
        .filter(|i| i.pty.as_ref().is_some_and(|p| p.index == index))
    {
        let Some(data) = img.tty_data.get(&info.id) else {
            continue;
        };
        // The master is /dev/ptmx (major 5); a slave is /dev/pts/N (majors 136 and up).
        if nix::sys::stat::major(info.rdev as libc::dev_t) == PTMX_MAJOR as u64 {
            q.master = data.clone();
        } else {
            q.slave = data.clone();
        }
    }
    if q.master.is_empty() && q.slave.is_empty() {
        return Ok(());
    }
    let slave = open_slave(slave_path, (libc::O_RDWR | libc::O_NONBLOCK) as u32)?;
    put_queues(slave.as_fd(), &q)
}

fn is_master_info(info: &pb::TtyInfoEntry) -> bool {
    info.r#type == pb::TtyType::Pty as i32
        && nix::sys::stat::major(info.rdev as libc::dev_t) == PTMX_MAJOR as u64
}

/// The TtyInfos key of a virtual terminal or the console (pty indices stay below it).
fn device_key(rdev: u64) -> (u32, bool) {
    let (major, minor) = (
        nix::sys::stat::major(rdev as libc::dev_t) as u32,
        nix::sys::stat::minor(rdev as libc::dev_t) as u32,
    );
    (0x4000_0000 | (major << 8) | minor, false)
}

/// A virtual terminal's or the console's info: its termios and window size, as CRIU's. Its id
/// is CRIU's, one per driver (CRIU's VT_INDEX 1004 and CONSOLE_INDEX 1002, times two), which
/// CRIU checks against its limit.
fn device_info(
    _key_id: u32,
    fd: BorrowedFd<'_>,
    rdev: u32,
    console: bool,
) -> Result<pb::TtyInfoEntry, PtyError> {
    let (termios, locked, winsize) = settings(fd, "a terminal device")?;
    Ok(pb::TtyInfoEntry {
        id: if console { 1002 << 1 } else { 1004 << 1 },
        r#type: if console {
            pb::TtyType::Console as i32
        } else {
            pb::TtyType::Vt as i32
        },
        locked: false,
        exclusive: false,
        packet_mode: false,
        sid: 0,
        pgrp: 0,
        rdev,
        termios: Some(termios),
        termios_locked: Some(locked),
        winsize: Some(winsize),
        pty: None,
        dev: None,
        uid: None,
        gid: None,
    })
}

/// Copies of the pty masters open in the tree's live tasks, by pts index. A master that
/// cannot be read fails the dump: its slave would otherwise pass for an outside terminal.
pub(crate) fn tree_pty_masters(live: &[u32]) -> Result<HashMap<u32, OwnedFd>, DumpError> {
    let mut out = HashMap::new();
    for &pid in live {
        let mut pidfd = None;
        for fd in crate::proc::fds(pid)? {
            // An fd closed since it was listed is no master.
            let Ok(link) = crate::proc::readlink(pid, &format!("fd/{fd}")) else {
                continue;
            };
            if !is_ptmx(&link) {
                continue;
            }
            let inspect = |source| FilesError::Inspect { pid, fd, source };
            if pidfd.is_none() {
                pidfd = Some(crate::sys::pidfd::pidfd_open(pid).map_err(inspect)?);
            }
            let p = pidfd.as_ref().expect("opened above");
            let copy = crate::sys::pidfd::pidfd_getfd(p.as_fd(), fd).map_err(inspect)?;
            let n = master_index(copy.as_fd()).map_err(inspect)?;
            out.entry(n).or_insert(copy);
        }
    }
    Ok(out)
}

/// Bytes buffered in the tree's ptys, read and put straight back (see `pty::take_queues`).
pub(crate) fn dump_pty_queues(img: &mut crate::dump::Images) -> Result<(), DumpError> {
    for (index, master) in &img.pty_masters {
        // Our own open of the slave, through its master: /dev/pts/N here may be another pty
        // (the tree's devpts is a container's). Its flags are ours to set. A slave never
        // unlocked has nothing buffered.
        let Ok(slave) =
            crate::sys::tty::pty_peer(master.as_fd(), libc::O_RDWR | libc::O_NONBLOCK)
        else {
            continue;
        };
        let q = take_queues(master.as_fd(), slave.as_fd()).map_err(|source| {
            DumpError::Pty {
                index: *index,
                source,
            }
        })?;
        img.files.set_pty_queues(*index, &q);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn slave_paths() {
        assert_eq!(super::slave_index("/dev/pts/7"), Some(7));
        assert_eq!(super::slave_index("/dev/ptmx"), None);
        assert!(super::is_ptmx("/dev/ptmx") && super::is_ptmx("/dev/pts/ptmx"));
        assert!(!super::is_ptmx("/dev/pts/0"));
        assert_eq!(super::slave_index("/dev/pts/x"), None);
    }
}
