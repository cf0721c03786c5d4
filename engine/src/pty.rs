//! Pseudo-terminals with both ends in the tree: the master (/dev/ptmx) and its slave
//! (/dev/pts/N). Saved as CRIU's tty_info entries (termios, window size, lock, packet mode)
//! and recreated as a new pair; the restorer's own terminal (--shell-job) is handled apart.
//!
//! Not kept: bytes buffered in the pty, the controlling-terminal link of a session, and the
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
