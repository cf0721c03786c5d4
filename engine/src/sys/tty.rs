//! The tty ioctls of files/tty/. nix has termios (tcgetattr/tcsetattr/cfget*/cfset*) but no
//! wrapper for the pty and queue ioctls: they are declared here with nix's ioctl macros, each
//! behind a safe function on a `BorrowedFd`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

nix::ioctl_read_bad!(tiocgptn, libc::TIOCGPTN, libc::c_uint);
nix::ioctl_read_bad!(tiocgptlck, libc::TIOCGPTLCK, libc::c_int);
nix::ioctl_write_ptr_bad!(tiocsptlck, libc::TIOCSPTLCK, libc::c_int);
nix::ioctl_read_bad!(tiocgpkt, libc::TIOCGPKT, libc::c_int);
nix::ioctl_write_ptr_bad!(tiocpkt, libc::TIOCPKT, libc::c_int);
nix::ioctl_read_bad!(tiocgwinsz, libc::TIOCGWINSZ, libc::winsize);
nix::ioctl_write_ptr_bad!(tiocswinsz, libc::TIOCSWINSZ, libc::winsize);
nix::ioctl_write_ptr_bad!(tiocsti, libc::TIOCSTI, u8);
nix::ioctl_read_bad!(fionread, libc::FIONREAD, libc::c_int);
nix::ioctl_write_int_bad!(tiocgptpeer, libc::TIOCGPTPEER);
nix::ioctl_read_bad!(tiocglcktrmios, libc::TIOCGLCKTRMIOS, libc::termios);
nix::ioctl_write_ptr_bad!(tiocslcktrmios, libc::TIOCSLCKTRMIOS, libc::termios);

/// The locked termios of a tty, the slave's through a pty master (TIOCGLCKTRMIOS): the bits
/// its programs may not change. The kernel fills the head of glibc's larger struct.
pub fn locked_termios(fd: BorrowedFd<'_>) -> io::Result<libc::termios> {
    // SAFETY: termios is plain integers; all zeroes is a valid value.
    let mut t: libc::termios = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGLCKTRMIOS writes a kernel termios, no larger than glibc's, into `t`.
    unsafe { tiocglcktrmios(fd.as_raw_fd(), &mut t) }?;
    Ok(t)
}

/// Sets the locked termios of a tty (TIOCSLCKTRMIOS; needs CAP_SYS_ADMIN).
pub fn set_locked_termios(fd: BorrowedFd<'_>, t: &libc::termios) -> io::Result<()> {
    // SAFETY: TIOCSLCKTRMIOS reads a kernel termios, the head of glibc's, from `t`.
    unsafe { tiocslcktrmios(fd.as_raw_fd(), t) }?;
    Ok(())
}

/// An O_PATH fd of the slave of a pty master (TIOCGPTPEER), wherever its devpts is mounted.
pub fn pty_peer_path(master: BorrowedFd<'_>) -> io::Result<std::os::fd::OwnedFd> {
    pty_peer(master, libc::O_PATH)
}

/// The slave of a pty master opened with `flags` (TIOCGPTPEER, plus O_NOCTTY and O_CLOEXEC):
/// the pty's own slave whatever devpts instance it lives in (a container's pts/0 is not ours).
pub fn pty_peer(master: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: TIOCGPTPEER takes open flags by value and returns a new fd, which we own.
    let fd = unsafe { tiocgptpeer(master.as_raw_fd(), flags | libc::O_NOCTTY | libc::O_CLOEXEC) }?;
    // SAFETY: the ioctl returned a new open fd that nothing else owns.
    Ok(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// The pts index of a pty master (TIOCGPTN).
pub fn pty_index(master: BorrowedFd<'_>) -> io::Result<u32> {
    let mut n: libc::c_uint = 0;
    // SAFETY: TIOCGPTN writes an unsigned int into `n`.
    unsafe { tiocgptn(master.as_raw_fd(), &mut n) }?;
    Ok(n)
}

/// Whether the slave of a pty master is locked (TIOCGPTLCK).
pub fn pty_locked(master: BorrowedFd<'_>) -> io::Result<bool> {
    let mut v: libc::c_int = 0;
    // SAFETY: TIOCGPTLCK writes an int into `v`.
    unsafe { tiocgptlck(master.as_raw_fd(), &mut v) }?;
    Ok(v != 0)
}

/// Locks or unlocks the slave of a pty master (TIOCSPTLCK).
pub fn set_pty_lock(master: BorrowedFd<'_>, locked: bool) -> io::Result<()> {
    let v = libc::c_int::from(locked);
    // SAFETY: TIOCSPTLCK reads an int from `v`.
    unsafe { tiocsptlck(master.as_raw_fd(), &v) }?;
    Ok(())
}

/// Whether a pty master is in packet mode (TIOCGPKT).
pub fn packet_mode(master: BorrowedFd<'_>) -> io::Result<bool> {
    let mut v: libc::c_int = 0;
    // SAFETY: TIOCGPKT writes an int into `v`.
    unsafe { tiocgpkt(master.as_raw_fd(), &mut v) }?;
    Ok(v != 0)
}

/// Turns packet mode of a pty master on or off (TIOCPKT).
pub fn set_packet_mode(master: BorrowedFd<'_>, on: bool) -> io::Result<()> {
    let v = libc::c_int::from(on);
    // SAFETY: TIOCPKT reads an int from `v`.
    unsafe { tiocpkt(master.as_raw_fd(), &v) }?;
    Ok(())
}

/// The window size of a tty (TIOCGWINSZ).
pub fn window_size(fd: BorrowedFd<'_>) -> io::Result<libc::winsize> {
    let mut ws = libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes a winsize into `ws`.
    unsafe { tiocgwinsz(fd.as_raw_fd(), &mut ws) }?;
    Ok(ws)
}

/// Sets the window size of a tty (TIOCSWINSZ).
pub fn set_window_size(fd: BorrowedFd<'_>, ws: &libc::winsize) -> io::Result<()> {
    // SAFETY: TIOCSWINSZ reads a winsize from `ws`.
    unsafe { tiocswinsz(fd.as_raw_fd(), ws) }?;
    Ok(())
}

/// Pushes one byte into a tty's input queue, as if typed (TIOCSTI).
pub fn push_input(fd: BorrowedFd<'_>, b: u8) -> io::Result<()> {
    // SAFETY: TIOCSTI reads one byte from `b`.
    unsafe { tiocsti(fd.as_raw_fd(), &b) }?;
    Ok(())
}

/// How many bytes wait to be read on `fd` (FIONREAD): a tty's input queue, a pipe's buffer.
pub fn bytes_queued(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes an int into `n`.
    unsafe { fionread(fd.as_raw_fd(), &mut n) }?;
    Ok(n.max(0) as usize)
}
