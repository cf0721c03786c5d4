//! A tree that owns its time namespace: its monotonic and boot-time clocks run at an offset
//! from the host's. As CRIU does, the dump saves what those clocks *read* in the namespace
//! (`timens-<id>.img`), and the restore sets the new namespace's offsets so that they read on
//! from there: the tree sees no jump for the time it spent checkpointed, on this host or
//! another, whose clocks are unrelated.

use std::os::fd::OwnedFd;

use crate::images::pb;

/// Image ids: the dumper's time namespace and one the tree owns (after pid's).
pub const HOST_NS_ID: u32 = 9;
pub const TREE_NS_ID: u32 = 10;

const NSEC: i128 = 1_000_000_000;

#[derive(Debug, thiserror::Error)]
pub enum TimeNsError {
    #[error("process {pid} is in another time namespace than the root of the tree, which is not supported")]
    Mixed { pid: u32 },
    #[error("reading {path} failed")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unexpected line {line:?}")]
    Parse { path: String, line: String },
    #[error("making a time namespace failed")]
    Unshare(#[source] std::io::Error),
    #[error("setting the time namespace's offsets ({offsets:?}) failed")]
    SetOffsets {
        offsets: String,
        #[source]
        source: std::io::Error,
    },
}

/// Offsets of a time namespace, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Offsets {
    pub monotonic: i128,
    pub boottime: i128,
}

/// Parses `/proc/PID/timens_offsets` ("monotonic SECS NSECS", "boottime SECS NSECS").
pub fn parse_offsets(path: &str, text: &str) -> Result<Offsets, TimeNsError> {
    let mut o = Offsets::default();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let bad = || TimeNsError::Parse {
            path: path.to_string(),
            line: line.to_string(),
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        let [clock, secs, nsecs] = f.as_slice() else {
            return Err(bad());
        };
        let secs: i128 = secs.parse().map_err(|_| bad())?;
        let nsecs: i128 = nsecs.parse().map_err(|_| bad())?;
        let v = secs * NSEC + nsecs;
        match *clock {
            "monotonic" => o.monotonic = v,
            "boottime" => o.boottime = v,
            _ => return Err(bad()),
        }
    }
    Ok(o)
}

/// The kernel's form of offsets: whole seconds (maybe negative) and nanoseconds in [0, 1e9).
pub fn format_offsets(o: &Offsets) -> String {
    let part = |v: i128| (v.div_euclid(NSEC), v.rem_euclid(NSEC));
    let (ms, mn) = part(o.monotonic);
    let (bs, bn) = part(o.boottime);
    format!("monotonic {ms} {mn}\nboottime {bs} {bn}\n")
}

fn now(clock: nix::time::ClockId) -> i128 {
    nix::time::clock_gettime(clock)
        .map(|t| t.tv_sec() as i128 * NSEC + t.tv_nsec() as i128)
        .unwrap_or(0)
}

fn to_ts(v: i128) -> pb::Timespec {
    // CRIU's fields are unsigned; a namespace's clock never reads negative.
    let v = v.max(0);
    pb::Timespec {
        tv_sec: (v / NSEC) as u64,
        tv_nsec: (v % NSEC) as u64,
    }
}

fn from_ts(t: &pb::Timespec) -> i128 {
    t.tv_sec as i128 * NSEC + t.tv_nsec as i128
}

/// The clocks of the tree's time namespace now, when it is not ours (every live task must be
/// in it).
pub fn tree_clocks(root: u32, tasks: &[u32]) -> Result<Option<pb::TimensEntry>, TimeNsError> {
    let owned = super::tree_owns("time", root, tasks).map_err(|e| match e {
        super::OwnsError::Mixed { pid } => TimeNsError::Mixed { pid },
        super::OwnsError::Read { path, source } => TimeNsError::Read { path, source },
    })?;
    if !owned {
        return Ok(None);
    }
    let path = format!("/proc/{root}/timens_offsets");
    let text = std::fs::read_to_string(&path).map_err(|source| TimeNsError::Read {
        path: path.clone(),
        source,
    })?;
    let o = parse_offsets(&path, &text)?;
    use nix::time::ClockId;
    Ok(Some(pb::TimensEntry {
        monotonic: to_ts(now(ClockId::CLOCK_MONOTONIC) + o.monotonic),
        boottime: to_ts(now(ClockId::CLOCK_BOOTTIME) + o.boottime),
    }))
}

/// The offsets that make a new namespace's clocks read `saved` now.
pub fn offsets_for(saved: &pb::TimensEntry) -> Offsets {
    use nix::time::ClockId;
    Offsets {
        monotonic: from_ts(&saved.monotonic) - now(ClockId::CLOCK_MONOTONIC),
        boottime: from_ts(&saved.boottime) - now(ClockId::CLOCK_BOOTTIME),
    }
}

/// Makes the calling thread's children's time namespace a new one whose clocks read on from
/// `saved`. The thread itself stays in its own (setns of a time namespace needs a
/// single-threaded caller, so the restorer cannot come back: its later children would be in
/// the new one too; the restore forks only the tree). Returns the namespace, held open.
pub fn make_for_children(saved: &pb::TimensEntry) -> Result<OwnedFd, TimeNsError> {
    nix::sched::unshare(nix::sched::CloneFlags::from_bits_retain(
        libc::CLONE_NEWTIME,
    ))
    .map_err(|e| TimeNsError::Unshare(e.into()))?;
    let offsets = format_offsets(&offsets_for(saved));
    // Only the process has this file (no /proc/thread-self/timens_offsets): it reads the
    // main thread's namespace for children, which the restore's thread is.
    std::fs::write("/proc/self/timens_offsets", &offsets).map_err(|source| {
        TimeNsError::SetOffsets {
            offsets: offsets.clone(),
            source,
        }
    })?;
    let path = "/proc/thread-self/ns/time_for_children".to_string();
    Ok(std::fs::File::open(&path)
        .map_err(|source| TimeNsError::Read { path, source })?
        .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_parse_and_format_round_trip() {
        let o = parse_offsets(
            "x",
            "monotonic        1000         0\nboottime          -5   250\n",
        )
        .unwrap();
        assert_eq!(o.monotonic, 1000 * NSEC);
        assert_eq!(o.boottime, -5 * NSEC + 250);
        assert_eq!(format_offsets(&o), "monotonic 1000 0\nboottime -5 250\n");
        let back = parse_offsets("x", &format_offsets(&o)).unwrap();
        assert_eq!(back, o);
        assert!(parse_offsets("x", "realtime 1 0").is_err());
        assert!(parse_offsets("x", "monotonic x 0").is_err());
    }

    #[test]
    fn negative_offsets_keep_nanoseconds_positive() {
        let o = Offsets {
            monotonic: -1,
            boottime: -NSEC - 1,
        };
        assert_eq!(
            format_offsets(&o),
            "monotonic -1 999999999\nboottime -2 999999999\n"
        );
    }
}
