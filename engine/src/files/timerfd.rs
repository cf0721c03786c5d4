//! timerfd: clock, remaining time, interval and unread ticks from fdinfo; a new timer armed
//! with what remained.

use std::collections::HashMap;
use std::os::fd::{AsRawFd, OwnedFd};

use super::anon::{self, AnonFdError};
use super::kind::{Fd, FileKind, OpenCx};
use super::FdKind;
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};

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
    let clockid = anon::field(extra, "timerfd", "clockid")?
        .parse()
        .map_err(|_| bad("clockid"))?;
    let ticks = anon::field(extra, "timerfd", "ticks")?
        .parse()
        .map_err(|_| bad("ticks"))?;
    let settime_flags = u32::from_str_radix(anon::field(extra, "timerfd", "settime flags")?, 8)
        .map_err(|_| bad("settime flags"))?;
    let (vsec, vnsec) = pair(anon::field(extra, "timerfd", "it_value")?).ok_or(bad("it_value"))?;
    let (isec, insec) =
        pair(anon::field(extra, "timerfd", "it_interval")?).ok_or(bad("it_interval"))?;
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

const TFD_IOC_SET_TICKS: libc::c_ulong = 0x4008_5400;

/// A new timerfd armed with the time that remained and the unread ticks.
pub fn create_timerfd(e: &pb::TimerfdEntry) -> Result<OwnedFd, AnonFdError> {
    let mut flags = libc::TFD_CLOEXEC;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= libc::TFD_NONBLOCK;
    }
    // SAFETY: timerfd_create(2) with integer arguments.
    let fd = anon::owned(
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

/// The timerfd kind.
pub struct TimerFd;

impl FileKind for TimerFd {
    fn name(&self) -> &'static str {
        "timerfd"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::TimerFd
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
            Ok(pb::FileEntry {
                r#type: pb::FdTypes::Timerfd as i32,
                id,
                tfd: Some(
                    timerfd_entry(id, fd.flags(), &fd.info.extra)
                        .map_err(anon::dump_err(fd.pid, fd.fd))?,
                ),
                ..Default::default()
            })
        })?;
        Ok((pb::FdTypes::Timerfd, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.tfd.is_some()
    }

    fn open(
        &self,
        _cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let e = entry.tfd.as_ref().expect("owned: tfd is set");
        create_timerfd(e)
            .map(Some)
            .map_err(anon::restore_err(entry.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
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
}
