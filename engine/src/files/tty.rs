//! Pseudo-terminals with both ends in the tree: the master (/dev/ptmx) and its slave
//! (/dev/pts/N). Saved as CRIU's tty_info entries (termios, window size, lock, packet mode)
//! and recreated as a new pair; the restorer's own terminal (--shell-job) is handled apart.
//!
//! Bytes buffered in the pair are kept in both directions (see [`take_queues`]). Not kept: the
//! index (a new pair gets whatever /dev/pts/N is free).

use crate::sys::cvt;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::images::pb;

/// A pty could not be read or made.
#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct PtyError {
    what: String,
    #[source]
    source: io::Error,
}

fn err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PtyError {
    let what = what.into();
    move |source| PtyError { what, source }
}

/// The pts index of a master (a copy of /dev/ptmx).
pub fn master_index(fd: RawFd) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCGPTN, &mut n) })?;
    Ok(n)
}

/// The pts index of a slave path (/dev/pts/N).
pub fn slave_index(path: &str) -> Option<u32> {
    path.strip_prefix("/dev/pts/")?.parse().ok()
}

fn termios_of(fd: RawFd) -> io::Result<pb::TermiosEntry> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: tcgetattr into our struct.
    cvt(unsafe { libc::tcgetattr(fd, &mut t) })?;
    Ok(pb::TermiosEntry {
        c_iflag: t.c_iflag,
        c_oflag: t.c_oflag,
        c_cflag: t.c_cflag,
        c_lflag: t.c_lflag,
        c_line: t.c_line as u32,
        // SAFETY: cfget*speed read our struct.
        c_ispeed: unsafe { libc::cfgetispeed(&t) },
        // SAFETY: as above.
        c_ospeed: unsafe { libc::cfgetospeed(&t) },
        c_cc: t.c_cc.iter().map(|&c| c as u32).collect(),
    })
}

/// The state of pty `index`, read through a copy of its master.
pub fn info(id: u32, index: u32, master: RawFd, rdev: u32) -> Result<pb::TtyInfoEntry, PtyError> {
    let termios = termios_of(master).map_err(err(format!("termios of pty {index}")))?;
    // SAFETY: winsize is plain data; TIOCGWINSZ fills it.
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    cvt(unsafe { libc::ioctl(master, libc::TIOCGWINSZ, &mut ws) })
        .map_err(err(format!("window size of pty {index}")))?;
    let mut locked: libc::c_int = 0;
    // SAFETY: TIOCGPTLCK writes an int.
    let _ = unsafe { libc::ioctl(master, libc::TIOCGPTLCK, &mut locked) };
    let mut packet: libc::c_int = 0;
    // SAFETY: TIOCGPKT writes an int.
    let _ = unsafe { libc::ioctl(master, libc::TIOCGPKT, &mut packet) };
    Ok(pb::TtyInfoEntry {
        id,
        r#type: pb::TtyType::Pty as i32,
        locked: locked != 0,
        exclusive: false,
        packet_mode: packet != 0,
        sid: 0,
        pgrp: 0,
        rdev,
        termios: Some(termios),
        termios_locked: None,
        winsize: Some(pb::WinsizeEntry {
            ws_row: ws.ws_row as u32,
            ws_col: ws.ws_col as u32,
            ws_xpixel: ws.ws_xpixel as u32,
            ws_ypixel: ws.ws_ypixel as u32,
        }),
        pty: Some(pb::TtyPtyEntry { index }),
        dev: None,
        uid: None,
        gid: None,
    })
}

/// A new pair for a dumped pty: the master, and the path of its slave.
pub fn create(info: &pb::TtyInfoEntry) -> Result<(OwnedFd, String), PtyError> {
    let c = std::ffi::CString::new("/dev/ptmx").expect("no NUL");
    // SAFETY: open(2) of a NUL-terminated path.
    let fd =
        cvt(unsafe { libc::open(c.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })
            .map_err(err("open /dev/ptmx"))?;
    // SAFETY: a fresh fd we own.
    let master = unsafe { OwnedFd::from_raw_fd(fd) };
    let unlock: libc::c_int = 0;
    // SAFETY: TIOCSPTLCK reads an int.
    cvt(unsafe { libc::ioctl(fd, libc::TIOCSPTLCK, &unlock) })
        .map_err(err("unlocking the new pty"))?;
    let index = master_index(fd).map_err(err("TIOCGPTN"))?;
    if let Some(t) = &info.termios {
        // SAFETY: termios is plain data; we fill every field we saved.
        let mut tt: libc::termios = unsafe { std::mem::zeroed() };
        tt.c_iflag = t.c_iflag;
        tt.c_oflag = t.c_oflag;
        tt.c_cflag = t.c_cflag;
        tt.c_lflag = t.c_lflag;
        tt.c_line = t.c_line as libc::cc_t;
        for (d, s) in tt.c_cc.iter_mut().zip(&t.c_cc) {
            *d = *s as libc::cc_t;
        }
        // SAFETY: cfset*speed and tcsetattr on our struct and fd.
        unsafe {
            libc::cfsetispeed(&mut tt, t.c_ispeed);
            libc::cfsetospeed(&mut tt, t.c_ospeed);
            libc::tcsetattr(fd, libc::TCSANOW, &tt);
        }
    }
    if let Some(w) = &info.winsize {
        let ws = libc::winsize {
            ws_row: w.ws_row as u16,
            ws_col: w.ws_col as u16,
            ws_xpixel: w.ws_xpixel as u16,
            ws_ypixel: w.ws_ypixel as u16,
        };
        // SAFETY: TIOCSWINSZ reads our struct.
        unsafe { libc::ioctl(fd, libc::TIOCSWINSZ, &ws) };
    }
    if info.packet_mode {
        let one: libc::c_int = 1;
        // SAFETY: TIOCPKT reads an int.
        unsafe { libc::ioctl(fd, libc::TIOCPKT, &one) };
    }
    Ok((master, format!("/dev/pts/{index}")))
}

/// Bytes buffered in a pty pair: waiting to be read on the master (written on the slave
/// side, after output processing) and on the slave (typed into the master, after input
/// processing, a partial line included).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Queues {
    pub master: Vec<u8>,
    pub slave: Vec<u8>,
}

fn get_termios(fd: RawFd) -> io::Result<libc::termios> {
    // SAFETY: termios is plain data; tcgetattr fills it.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    cvt(unsafe { libc::tcgetattr(fd, &mut t) })?;
    Ok(t)
}

fn set_termios(fd: RawFd, t: &libc::termios) -> io::Result<()> {
    // SAFETY: tcsetattr reads our struct.
    cvt(unsafe { libc::tcsetattr(fd, libc::TCSANOW, t) }).map(|_| ())
}

fn queued(fd: RawFd) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int.
    cvt(unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) })?;
    Ok(n.max(0) as usize)
}

fn read_n(fd: RawFd, n: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; n];
    let mut got = 0;
    while got < n {
        // SAFETY: read into the rest of our buffer.
        let k = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), n - got) };
        if k <= 0 {
            let e = io::Error::last_os_error();
            if k == 0 || e.raw_os_error() == Some(libc::EAGAIN) {
                break;
            }
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        got += k as usize;
    }
    buf.truncate(got);
    Ok(buf)
}

/// Reads what is buffered in the pair (`master`: a master fd, `slave`: our own fd on its
/// slave) and puts it straight back, so the pty is left as it was. The master's own line
/// discipline is raw, so its queue is read as it is; the slave's is read with ICANON off for
/// a moment, so that a partial line comes too. A master in packet mode is left alone (its
/// reads carry a status byte).
pub fn take_queues(master: RawFd, slave: RawFd) -> Result<Queues, PtyError> {
    let mut packet: libc::c_int = 0;
    // SAFETY: TIOCGPKT writes an int.
    let _ = unsafe { libc::ioctl(master, libc::TIOCGPKT, &mut packet) };
    if packet != 0 {
        return Ok(Queues::default());
    }
    let n = queued(master).map_err(err("FIONREAD on the pty master"))?;
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
    let slave_q = queued(slave).and_then(|n| read_n(slave, n));
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
pub fn put_queues(slave: RawFd, q: &Queues) -> Result<(), PtyError> {
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
        let mut r = Ok(());
        for b in &q.slave {
            // SAFETY: TIOCSTI reads one byte from our buffer.
            if unsafe { libc::ioctl(slave, libc::TIOCSTI, b as *const u8) } < 0 {
                r = Err(io::Error::last_os_error());
                break;
            }
        }
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
            // SAFETY: write from our buffer.
            let k = unsafe {
                libc::write(slave, q.master[off..].as_ptr().cast(), q.master.len() - off)
            };
            if k < 0 {
                r = Err(io::Error::last_os_error());
                break;
            }
            off += k as usize;
        }
        set_termios(slave, &t0).map_err(err("termios of the pty slave"))?;
        r.map_err(err("putting bytes back in the pty master's queue"))?;
    }
    Ok(())
}

/// Opens the slave `path` with the dumped flags.
pub fn open_slave(path: &str, flags: u32) -> Result<OwnedFd, PtyError> {
    let c = std::ffi::CString::new(path).expect("no NUL");
    let f = (flags as libc::c_int & (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND))
        | libc::O_NOCTTY
        | libc::O_CLOEXEC;
    // SAFETY: open(2) of a NUL-terminated path.
    let fd = cvt(unsafe { libc::open(c.as_ptr(), f) }).map_err(err(format!("open {path}")))?;
    // SAFETY: a fresh fd we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn slave_paths() {
        assert_eq!(super::slave_index("/dev/pts/7"), Some(7));
        assert_eq!(super::slave_index("/dev/ptmx"), None);
        assert_eq!(super::slave_index("/dev/pts/x"), None);
    }
}
