//! eventfd, timerfd, signalfd and epoll: their state from fdinfo (pure parsers, dump side) and
//! their re-creation (restore side). memfd lives here too: a shmem inode with a name and seals.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::images::pb;

/// fdinfo of a special fd did not have what we need.
#[derive(Debug, thiserror::Error)]
pub enum AnonFdError {
    #[error("fdinfo of {kind} fd: missing or bad '{field}'")]
    Field {
        kind: &'static str,
        field: &'static str,
    },
    #[error("cannot create {kind}")]
    Create {
        kind: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn field<'a>(
    extra: &'a HashMap<String, String>,
    kind: &'static str,
    name: &'static str,
) -> Result<&'a str, AnonFdError> {
    extra
        .get(name)
        .map(|s| s.trim())
        .ok_or(AnonFdError::Field { kind, field: name })
}

/// eventfd: the counter (printed in hex) and semaphore mode. CRIU's entry has no field for
/// EFD_SEMAPHORE; it is kept in bit 0 of `flags`, which is free for an O_RDWR file.
pub fn eventfd_entry(
    id: u32,
    flags: u32,
    extra: &HashMap<String, String>,
) -> Result<pb::EventfdFileEntry, AnonFdError> {
    let count =
        u64::from_str_radix(field(extra, "eventfd", "eventfd-count")?, 16).map_err(|_| {
            AnonFdError::Field {
                kind: "eventfd",
                field: "eventfd-count",
            }
        })?;
    let sem = extra
        .get("eventfd-semaphore")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    Ok(pb::EventfdFileEntry {
        id,
        flags: flags | sem as u32,
        fown: pb::FownEntry::default(),
        counter: count,
    })
}

fn pair(s: &str) -> Option<(u64, u64)> {
    let s = s.trim().trim_start_matches('(').trim_end_matches(')');
    let (a, b) = s.split_once(',')?;
    Some((a.trim().parse().ok()?, b.trim().parse().ok()?))
}

/// timerfd: clock, unread expirations, and the remaining time (relative) and interval.
pub fn timerfd_entry(
    id: u32,
    flags: u32,
    extra: &HashMap<String, String>,
) -> Result<pb::TimerfdEntry, AnonFdError> {
    let bad = |f| AnonFdError::Field {
        kind: "timerfd",
        field: f,
    };
    let clockid = field(extra, "timerfd", "clockid")?
        .parse()
        .map_err(|_| bad("clockid"))?;
    let ticks = field(extra, "timerfd", "ticks")?
        .parse()
        .map_err(|_| bad("ticks"))?;
    let settime_flags = u32::from_str_radix(field(extra, "timerfd", "settime flags")?, 8)
        .map_err(|_| bad("settime flags"))?;
    let (vsec, vnsec) = pair(field(extra, "timerfd", "it_value")?).ok_or(bad("it_value"))?;
    let (isec, insec) = pair(field(extra, "timerfd", "it_interval")?).ok_or(bad("it_interval"))?;
    Ok(pb::TimerfdEntry {
        id,
        flags,
        fown: pb::FownEntry::default(),
        clockid,
        ticks,
        settime_flags,
        vsec,
        vnsec,
        isec,
        insec,
    })
}

/// signalfd: the signal mask.
pub fn signalfd_entry(
    id: u32,
    flags: u32,
    extra: &HashMap<String, String>,
) -> Result<pb::SignalfdEntry, AnonFdError> {
    let mask = u64::from_str_radix(field(extra, "signalfd", "sigmask")?, 16).map_err(|_| {
        AnonFdError::Field {
            kind: "signalfd",
            field: "sigmask",
        }
    })?;
    Ok(pb::SignalfdEntry {
        id,
        flags,
        fown: pb::FownEntry::default(),
        sigmask: mask,
    })
}

/// epoll targets: one `tfd: N events: X data: Y  pos:P ino:I sdev:D` line each. fdinfo keeps
/// only the first line per key in our parser's map, so the raw text is parsed here.
pub fn epoll_targets(fdinfo_text: &str, id: u32) -> Vec<pb::EventpollTfdEntry> {
    let mut out = Vec::new();
    for line in fdinfo_text.lines().filter(|l| l.starts_with("tfd:")) {
        // "tfd: %8d events: %8x data: %16llx  pos:%lli ino:%lx sdev:%x": the first three keys
        // are followed by a space, the last three are glued to their values.
        let words: Vec<&str> = line.split_whitespace().collect();
        let get = |key: &str| {
            words.iter().enumerate().find_map(|(i, w)| {
                if *w == key {
                    words.get(i + 1).copied()
                } else {
                    w.strip_prefix(key).filter(|v| !v.is_empty())
                }
            })
        };
        let hex = |key: &str| get(key).and_then(|v| u64::from_str_radix(v, 16).ok());
        let (Some(tfd), Some(events), Some(data)) = (
            get("tfd:").and_then(|v| v.parse().ok()),
            hex("events:"),
            hex("data:"),
        ) else {
            continue;
        };
        out.push(pb::EventpollTfdEntry {
            id,
            tfd,
            events: events as u32,
            data,
            dev: get("sdev:").and_then(|v| u32::from_str_radix(v, 16).ok()),
            inode: hex("ino:"),
            pos: get("pos:").and_then(|v| v.parse().ok()),
        });
    }
    out
}

/// One `inotify wd:..` line of fdinfo: watch descriptor, inode, device (kernel encoding),
/// mask and the file handle that finds the watched inode again.
pub fn inotify_watches(fdinfo_text: &str, id: u32) -> Vec<pb::InotifyWdEntry> {
    let mut out = Vec::new();
    for line in fdinfo_text
        .lines()
        .filter_map(|l| l.strip_prefix("inotify "))
    {
        let get = |key: &str| line.split_whitespace().find_map(|w| w.strip_prefix(key));
        let hex = |key: &str| get(key).and_then(|v| u64::from_str_radix(v, 16).ok());
        let (Some(wd), Some(ino), Some(sdev), Some(mask)) = (
            get("wd:").and_then(|v| v.parse().ok()),
            hex("ino:"),
            hex("sdev:"),
            hex("mask:"),
        ) else {
            continue;
        };
        let raw = get("f_handle:").unwrap_or("");
        let bytes: Vec<u8> = (0..raw.len() / 2)
            .filter_map(|i| u8::from_str_radix(&raw[i * 2..i * 2 + 2], 16).ok())
            .collect();
        let handle = bytes
            .chunks(8)
            .map(|c| {
                let mut b = [0u8; 8];
                b[..c.len()].copy_from_slice(c);
                u64::from_ne_bytes(b)
            })
            .collect();
        out.push(pb::InotifyWdEntry {
            id,
            i_ino: ino,
            mask: mask as u32,
            ignored_mask: hex("ignored_mask:").unwrap_or(0) as u32,
            s_dev: sdev as u32,
            wd,
            f_handle: pb::FhEntry {
                bytes: get("fhandle-bytes:")
                    .and_then(|v| u32::from_str_radix(v, 16).ok())
                    .unwrap_or(bytes.len() as u32),
                r#type: get("fhandle-type:")
                    .and_then(|v| u32::from_str_radix(v, 16).ok())
                    .unwrap_or(0),
                handle,
                path: None,
                mnt_id: None,
            },
        });
    }
    out
}

/// The path of the inode a file handle names on device `sdev` (kernel dev_t encoding), found
/// with open_by_handle_at from the device's mount (needs CAP_DAC_READ_SEARCH).
pub fn path_of_handle(sdev: u32, fh: &pb::FhEntry) -> Option<String> {
    let (major, minor) = (sdev >> 20, sdev & 0xfffff);
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mnt = mountinfo.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&format!("{major}:{minor}").as_str()))
            .then(|| f.get(4).map(|s| s.to_string()))
            .flatten()
    })?;
    let dir = std::fs::File::open(&mnt).ok()?;
    let mut buf: Vec<u8> = Vec::with_capacity(8 + fh.bytes as usize);
    buf.extend_from_slice(&fh.bytes.to_ne_bytes());
    buf.extend_from_slice(&(fh.r#type as i32).to_ne_bytes());
    let raw: Vec<u8> = fh.handle.iter().flat_map(|w| w.to_ne_bytes()).collect();
    buf.extend_from_slice(&raw[..(fh.bytes as usize).min(raw.len())]);
    // SAFETY: open_by_handle_at reads a struct file_handle of the size we built.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            dir.as_raw_fd(),
            buf.as_ptr(),
            libc::O_PATH | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: a fresh fd we own.
    let f = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let p = std::fs::read_link(format!("/proc/self/fd/{}", f.as_raw_fd())).ok()?;
    Some(p.to_string_lossy().into_owned())
}

/// An inotify instance with the same watches under the same watch descriptors. Descriptors are
/// handed out in increasing order, so gaps are skipped by adding and removing the watch
/// (the IN_IGNORED events that makes are drained before the task sees the queue).
pub fn create_inotify(e: &pb::InotifyFileEntry) -> Result<OwnedFd, AnonFdError> {
    // SAFETY: inotify_init1(2) with flags.
    let fd = owned(
        unsafe { libc::inotify_init1(libc::IN_CLOEXEC | libc::IN_NONBLOCK) },
        "inotify",
    )?;
    let raw = fd.as_raw_fd();
    let mut watches: Vec<&pb::InotifyWdEntry> = e.wd.iter().collect();
    watches.sort_by_key(|w| w.wd);
    for w in watches {
        let path = w.f_handle.path.clone().unwrap_or_default();
        let c = std::ffi::CString::new(path).map_err(|_| AnonFdError::Field {
            kind: "inotify",
            field: "path",
        })?;
        loop {
            // SAFETY: inotify_add_watch with a NUL-terminated path.
            let got = unsafe { libc::inotify_add_watch(raw, c.as_ptr(), w.mask) };
            if got < 0 {
                return Err(AnonFdError::Create {
                    kind: "inotify watch",
                    source: std::io::Error::last_os_error(),
                });
            }
            if got as u32 >= w.wd {
                if got as u32 != w.wd {
                    return Err(AnonFdError::Field {
                        kind: "inotify",
                        field: "wd",
                    });
                }
                break;
            }
            // Too low: that number was a gap in the dumped set. Removing the watch burns it
            // (numbers only go up), and the next try gets the following one.
            // SAFETY: inotify_rm_watch with integers.
            unsafe { libc::inotify_rm_watch(raw, got) };
        }
    }
    // Drain the IN_IGNORED events of the burnt numbers.
    let mut buf = [0u8; 4096];
    // SAFETY: read into our buffer; the fd is non-blocking.
    while unsafe { libc::read(raw, buf.as_mut_ptr().cast(), buf.len()) } > 0 {}
    if e.flags & libc::O_NONBLOCK as u32 == 0 {
        // SAFETY: F_SETFL with an integer.
        unsafe { libc::fcntl(raw, libc::F_SETFL, 0) };
    }
    Ok(fd)
}

fn owned(r: libc::c_int, kind: &'static str) -> Result<OwnedFd, AnonFdError> {
    if r < 0 {
        return Err(AnonFdError::Create {
            kind,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: `r` is a fresh fd returned by the kernel, owned only here.
    Ok(unsafe { OwnedFd::from_raw_fd(r) })
}

pub fn create_eventfd(e: &pb::EventfdFileEntry) -> Result<OwnedFd, AnonFdError> {
    let mut flags = libc::EFD_CLOEXEC;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= libc::EFD_NONBLOCK;
    }
    if e.flags & 1 != 0 {
        flags |= libc::EFD_SEMAPHORE;
    }
    // SAFETY: eventfd(2) with integer arguments.
    let fd = owned(unsafe { libc::eventfd(0, flags) }, "eventfd")?;
    if e.counter > 0 {
        // The initial value argument is 32-bit; a write adds any 64-bit count.
        // SAFETY: write(2) of 8 bytes from a local.
        let n = unsafe { libc::write(fd.as_raw_fd(), (&e.counter as *const u64).cast(), 8) };
        if n != 8 {
            return Err(AnonFdError::Create {
                kind: "eventfd",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(fd)
}

const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

pub fn create_timerfd(e: &pb::TimerfdEntry) -> Result<OwnedFd, AnonFdError> {
    let mut flags = libc::TFD_CLOEXEC;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= libc::TFD_NONBLOCK;
    }
    // SAFETY: timerfd_create(2) with integer arguments.
    let fd = owned(
        unsafe { libc::timerfd_create(e.clockid as libc::c_int, flags) },
        "timerfd",
    )?;
    // An expired periodic timer shows it_value 0 until read: it is armed, next due an interval on.
    let (vs, vn) = if e.vsec == 0 && e.vnsec == 0 {
        (e.isec, e.insec)
    } else {
        (e.vsec, e.vnsec)
    };
    if vs != 0 || vn != 0 {
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: e.isec as libc::time_t,
                tv_nsec: e.insec as libc::c_long,
            },
            it_value: libc::timespec {
                tv_sec: vs as libc::time_t,
                tv_nsec: vn as libc::c_long,
            },
        };
        // fdinfo gives the remaining time, so the timer is set relative; only CANCEL_ON_SET
        // carries over.
        let keep = e.settime_flags as libc::c_int & libc::TFD_TIMER_CANCEL_ON_SET;
        let set_flags = if keep != 0 {
            keep | libc::TFD_TIMER_ABSTIME
        } else {
            0
        };
        let spec = if set_flags != 0 {
            absolute(e.clockid, spec)
        } else {
            spec
        };
        // SAFETY: timerfd_settime(2) with a local itimerspec.
        if unsafe { libc::timerfd_settime(fd.as_raw_fd(), set_flags, &spec, std::ptr::null_mut()) }
            < 0
        {
            return Err(AnonFdError::Create {
                kind: "timerfd",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    if e.ticks > 0 {
        let ticks = e.ticks;
        // SAFETY: TFD_IOC_SET_TICKS reads one u64 from our local.
        if unsafe { libc::ioctl(fd.as_raw_fd(), TFD_IOC_SET_TICKS, &ticks as *const u64) } < 0 {
            return Err(AnonFdError::Create {
                kind: "timerfd ticks",
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(fd)
}

fn absolute(clock: u32, mut spec: libc::itimerspec) -> libc::itimerspec {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into our local.
    unsafe { libc::clock_gettime(clock as libc::clockid_t, &mut now) };
    let mut ns = now.tv_nsec + spec.it_value.tv_nsec;
    spec.it_value.tv_sec += now.tv_sec + ns / 1_000_000_000;
    ns %= 1_000_000_000;
    spec.it_value.tv_nsec = ns;
    spec
}

pub fn create_signalfd(e: &pb::SignalfdEntry) -> Result<OwnedFd, AnonFdError> {
    let mut flags = libc::SFD_CLOEXEC;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= libc::SFD_NONBLOCK;
    }
    // SAFETY: a sigset_t is plain data; we fill it bit by bit below.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigemptyset/sigaddset on our local set.
    unsafe {
        libc::sigemptyset(&mut set);
        for sig in 1..=64 {
            if e.sigmask & (1u64 << (sig - 1)) != 0 {
                libc::sigaddset(&mut set, sig);
            }
        }
    }
    // SAFETY: signalfd(2) with a local mask.
    owned(unsafe { libc::signalfd(-1, &set, flags) }, "signalfd")
}

/// An empty epoll instance; its targets are added from inside the task, where the target fd
/// numbers are the task's own.
pub fn create_epoll(e: &pb::EventpollFileEntry) -> Result<OwnedFd, AnonFdError> {
    // SAFETY: epoll_create1(2) with an integer argument.
    let fd = owned(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, "epoll")?;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        // SAFETY: F_SETFL with an integer.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
    }
    Ok(fd)
}

/// A memfd with its name, content and seals; more open descriptions of the same inode are
/// reopened from it through /proc/self/fd.
pub fn create_memfd(inode: &pb::MemfdInodeEntry, content: &[u8]) -> Result<OwnedFd, AnonFdError> {
    let name = std::ffi::CString::new(inode.name.as_bytes()).unwrap_or_default();
    let flags = libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING;
    // SAFETY: memfd_create(2) with a NUL-terminated name.
    let fd = owned(unsafe { libc::memfd_create(name.as_ptr(), flags) }, "memfd")?;
    let err = |source| AnonFdError::Create {
        kind: "memfd",
        source,
    };
    let f = std::fs::File::from(fd.try_clone().map_err(err)?);
    use std::os::unix::fs::FileExt;
    f.write_all_at(content, 0).map_err(err)?;
    f.set_len(inode.size).map_err(err)?;
    if inode.seals != 0 {
        // SAFETY: F_ADD_SEALS with an integer.
        if unsafe {
            libc::fcntl(
                fd.as_raw_fd(),
                libc::F_ADD_SEALS,
                inode.seals as libc::c_int,
            )
        } < 0
        {
            return Err(err(std::io::Error::last_os_error()));
        }
    }
    Ok(fd)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn eventfd_fdinfo() {
        let e = eventfd_entry(
            3,
            0o4002,
            &map(&[
                ("eventfd-count", "               1f"),
                ("eventfd-semaphore", "1"),
            ]),
        )
        .unwrap();
        assert_eq!((e.counter, e.flags), (0x1f, 0o4003));
        assert!(eventfd_entry(3, 2, &map(&[])).is_err());
    }

    #[test]
    fn timerfd_fdinfo() {
        let e = timerfd_entry(
            4,
            2,
            &map(&[
                ("clockid", "1"),
                ("ticks", "3"),
                ("settime flags", "01"),
                ("it_value", "(0, 19999000)"),
                ("it_interval", "(1, 20000000)"),
            ]),
        )
        .unwrap();
        assert_eq!((e.clockid, e.ticks, e.settime_flags), (1, 3, 1));
        assert_eq!(
            (e.vsec, e.vnsec, e.isec, e.insec),
            (0, 19999000, 1, 20000000)
        );
    }

    #[test]
    fn signalfd_and_epoll_fdinfo() {
        let s = signalfd_entry(5, 2, &map(&[("sigmask", "0000000000000200")])).unwrap();
        assert_eq!(s.sigmask, 0x200);
        let text = "pos:\t0\nflags:\t02\nmnt_id:\t17\nino:\t1038\n\
tfd:        3 events:       19 data:                5  pos:0 ino:40e sdev:f\n\
tfd:        4 events: 80000001 data:       deadbeef00  pos:0 ino:40e sdev:f\n";
        let t = epoll_targets(text, 9);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].tfd, t[0].events, t[0].data), (3, 0x19, 5));
        assert_eq!(
            (t[1].tfd, t[1].events, t[1].data, t[1].inode),
            (4, 0x8000_0001, 0xdead_beef00, Some(0x40e))
        );
    }
}
