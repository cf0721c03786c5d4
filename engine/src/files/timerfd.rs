//! timerfd: clock, remaining time, interval and unread ticks from fdinfo; a new timer armed
//! with what remained.

use std::collections::HashMap;
use std::os::fd::{AsFd, OwnedFd};

use nix::sys::time::TimeSpec;
use nix::sys::timerfd::{ClockId, Expiration, TimerFd as NixTimerFd, TimerFlags, TimerSetTimeFlags};
use nix::time::clock_gettime;

use super::anon::{self, AnonFdError};
use crate::images::pb;

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

/// The timerfd clock of an image's clock id (the five timerfd_create accepts).
fn clock_of(clockid: u32) -> Result<ClockId, AnonFdError> {
    Ok(match clockid as libc::clockid_t {
        libc::CLOCK_REALTIME => ClockId::CLOCK_REALTIME,
        libc::CLOCK_MONOTONIC => ClockId::CLOCK_MONOTONIC,
        libc::CLOCK_BOOTTIME => ClockId::CLOCK_BOOTTIME,
        libc::CLOCK_REALTIME_ALARM => ClockId::CLOCK_REALTIME_ALARM,
        libc::CLOCK_BOOTTIME_ALARM => ClockId::CLOCK_BOOTTIME_ALARM,
        _ => return Err(anon::create_err("timerfd")(nix::Error::EINVAL)),
    })
}

/// A new timerfd armed with the time that remained and the unread ticks.
pub fn create_timerfd(e: &pb::TimerfdEntry) -> Result<OwnedFd, AnonFdError> {
    let mut flags = TimerFlags::TFD_CLOEXEC;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= TimerFlags::TFD_NONBLOCK;
    }
    let fd = NixTimerFd::new(clock_of(e.clockid)?, flags).map_err(anon::create_err("timerfd"))?;
    // An expired periodic timer shows it_value 0 until read: it is armed, next due an interval on.
    let (vs, vn) = if e.vsec == 0 && e.vnsec == 0 {
        (e.isec, e.insec)
    } else {
        (e.vsec, e.vnsec)
    };
    if vs != 0 || vn != 0 {
        let interval = TimeSpec::new(e.isec as libc::time_t, e.insec as libc::c_long);
        let mut value = TimeSpec::new(vs as libc::time_t, vn as libc::c_long);
        // fdinfo gives the remaining time, so the timer is set relative; only CANCEL_ON_SET
        // carries over.
        let keep = e.settime_flags as libc::c_int & libc::TFD_TIMER_CANCEL_ON_SET;
        let mut set_flags = TimerSetTimeFlags::empty();
        if keep != 0 {
            set_flags =
                TimerSetTimeFlags::TFD_TIMER_CANCEL_ON_SET | TimerSetTimeFlags::TFD_TIMER_ABSTIME;
            value = absolute(e.clockid, value).map_err(anon::create_err("timerfd"))?;
        }
        let expiration = if e.isec == 0 && e.insec == 0 {
            Expiration::OneShot(value)
        } else {
            Expiration::IntervalDelayed(value, interval)
        };
        fd.set(expiration, set_flags)
            .map_err(anon::create_err("timerfd"))?;
    }
    if e.ticks > 0 {
        crate::sys::anon::set_timerfd_ticks(fd.as_fd(), e.ticks)
            .map_err(anon::create_err("timerfd ticks"))?;
    }
    Ok(fd.into())
}

/// `value` from now on `clock`, as an absolute time.
fn absolute(clock: u32, value: TimeSpec) -> nix::Result<TimeSpec> {
    let now = clock_gettime(nix::time::ClockId::from_raw(clock as libc::clockid_t))?;
    let mut ns = now.tv_nsec() + value.tv_nsec();
    let sec = value.tv_sec() + now.tv_sec() + ns / 1_000_000_000;
    ns %= 1_000_000_000;
    Ok(TimeSpec::new(sec, ns))
}

anon::fdinfo_kind!(TimerFd, "timerfd", TimerFd, Timerfd, tfd, timerfd_entry, create_timerfd);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::anon::fdinfo_keys as map;


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
