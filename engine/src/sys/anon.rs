//! What files/ needs for its special files and nix does not wrap as needed: a signalfd for any
//! mask (nix's `SigSet` is built from its `Signal` enum, which has no real-time signals),
//! TFD_IOC_SET_TICKS (no nix wrapper: declared with nix's ioctl macro), mq_open returning an
//! `OwnedFd` (nix's `MqdT` closes nothing and is not an `OwnedFd`), and open_by_handle_at
//! (neither libc nor nix wraps it).

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::mqueue::{mq_open, MQ_OFlag};
use nix::sys::signal::SigSet;
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::stat::Mode;

/// A signalfd for the signals of `mask` (bit `n - 1` for signal `n`, real-time ones too).
pub fn signalfd(mask: u64, flags: SfdFlags) -> io::Result<OwnedFd> {
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // SAFETY: sigemptyset initializes the set; sigaddset only sets bits in it.
    let set = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        for sig in 1..=64 {
            if mask & (1u64 << (sig - 1)) != 0 {
                // A number the C library refuses (its own reserved signals) is left out,
                // as before the seam.
                libc::sigaddset(set.as_mut_ptr(), sig);
            }
        }
        set.assume_init()
    };
    // SAFETY: `set` was made by sigemptyset/sigaddset.
    let set = unsafe { SigSet::from_sigset_t_unchecked(set) };
    Ok(SignalFd::with_flags(&set, flags)?.into())
}

nix::ioctl_write_ptr_bad!(tfd_ioc_set_ticks, 0x4008_5400, u64);

/// Sets the count of expirations not read yet of a timerfd (TFD_IOC_SET_TICKS, needs
/// CONFIG_CHECKPOINT_RESTORE).
pub fn set_timerfd_ticks(fd: BorrowedFd<'_>, ticks: u64) -> io::Result<()> {
    // SAFETY: TFD_IOC_SET_TICKS reads one u64 from `ticks`.
    unsafe { tfd_ioc_set_ticks(fd.as_raw_fd(), &ticks) }?;
    Ok(())
}

/// Opens the POSIX message queue `name` (without O_CREAT) as an fd: on Linux a queue
/// descriptor is a file descriptor.
pub fn mq_open_fd(name: &CStr, flags: MQ_OFlag) -> io::Result<OwnedFd> {
    let q = mq_open(name, flags | MQ_OFlag::O_CLOEXEC, Mode::empty(), None)?;
    // SAFETY: a fresh descriptor from mq_open, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(q.into_raw_fd()) })
}

/// open_by_handle_at(2): opens the file of `handle` (a `struct file_handle` as bytes: size,
/// type, then the handle) on the filesystem of `mount_fd`.
pub fn open_by_handle_at(
    mount_fd: BorrowedFd<'_>,
    handle: &[u8],
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    let size = handle
        .get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().expect("4")) as usize);
    if size.is_none_or(|n| handle.len() < 8 + n) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: the kernel reads a struct file_handle whose size field we checked against the
    // buffer; returns a new fd.
    let r = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            mount_fd.as_raw_fd(),
            handle.as_ptr(),
            flags,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(r as RawFd) })
}

/// inotify_add_watch(2), returning the watch descriptor's number: nix's `WatchDescriptor`
/// keeps it private, and the restore must match the dumped numbers.
pub fn inotify_add_watch(fd: BorrowedFd<'_>, path: &CStr, mask: u32) -> io::Result<u32> {
    // SAFETY: inotify_add_watch reads the NUL-terminated path.
    let r = unsafe { libc::inotify_add_watch(fd.as_raw_fd(), path.as_ptr(), mask) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as u32)
}

/// inotify_rm_watch(2) of watch number `wd` (see [`inotify_add_watch`]).
pub fn inotify_rm_watch(fd: BorrowedFd<'_>, wd: u32) -> io::Result<()> {
    // SAFETY: inotify_rm_watch with integers.
    if unsafe { libc::inotify_rm_watch(fd.as_raw_fd(), wd as libc::c_int) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}
