//! Pure parsers of cgroup text: `/proc/PID/cgroup`, the cgroup mounts of
//! `/proc/PID/mountinfo`, pid lists, `freezer.state` and `cgroup.events`. No I/O here.

use std::path::PathBuf;

/// What a line of cgroup text did not have.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {what}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub what: &'static str,
    /// The line as read.
    pub text: String,
}

fn bad(line: usize, what: &'static str, text: &str) -> ParseError {
    ParseError {
        line,
        what,
        text: text.to_string(),
    }
}

/// One line of `/proc/PID/cgroup`: `hierarchy-ID:controller-list:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    /// The hierarchy's id (0 for the unified cgroup2 hierarchy).
    pub hierarchy: u32,
    /// The controllers bound to a v1 hierarchy (`cpu`, `cpuacct`; a named hierarchy as
    /// `name=systemd`); empty for cgroup2.
    pub controllers: Vec<String>,
    /// The cgroup, from the hierarchy's root as the reader's cgroup namespace sees it.
    pub path: String,
}

impl Membership {
    /// The cgroup2 line (`0::/path`).
    pub fn is_v2(&self) -> bool {
        self.hierarchy == 0 && self.controllers.is_empty()
    }
}

/// Parses `/proc/PID/cgroup`. The path is everything after the second colon, so a path
/// that holds colons is kept whole.
pub fn proc_cgroup(text: &str) -> Result<Vec<Membership>, ParseError> {
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate() {
        let n = n + 1;
        if l.trim().is_empty() {
            continue;
        }
        let mut f = l.splitn(3, ':');
        let (Some(id), Some(ctrls), Some(path)) = (f.next(), f.next(), f.next()) else {
            return Err(bad(n, "expected hierarchy-ID:controllers:path", l));
        };
        let hierarchy = id
            .parse()
            .map_err(|_| bad(n, "hierarchy id is not a number", l))?;
        if !path.starts_with('/') {
            return Err(bad(n, "cgroup path does not start with /", l));
        }
        out.push(Membership {
            hierarchy,
            controllers: ctrls
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            path: path.to_string(),
        });
    }
    Ok(out)
}

/// Which cgroup filesystem a mount is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MountKind {
    /// A v1 hierarchy with these controllers (and `name=X` for a named one).
    V1 { controllers: Vec<String> },
    /// The unified hierarchy.
    V2,
}

/// A cgroup or cgroup2 mount, from `/proc/PID/mountinfo`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupMount {
    /// The cgroup mounted here, from the hierarchy's root (`/` for the whole hierarchy).
    pub root: String,
    pub mount_point: PathBuf,
    pub kind: MountKind,
}

/// Mount options of a v1 cgroup superblock that are not controllers.
const V1_FLAGS: &[&str] = &[
    "rw",
    "ro",
    "xattr",
    "noprefix",
    "clone_children",
    "cpuset_v2_mode",
    "favordynmods",
    "nofavordynmods",
];

/// The cgroup and cgroup2 mounts of a mountinfo file, in its order. Other lines are skipped,
/// but a line without the ` - ` separator or its fields is an error.
pub fn cgroup_mounts(text: &str) -> Result<Vec<CgroupMount>, ParseError> {
    let mut out = Vec::new();
    for (n, l) in text.lines().enumerate() {
        let n = n + 1;
        if l.trim().is_empty() {
            continue;
        }
        let f: Vec<&str> = l.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else {
            return Err(bad(n, "no ' - ' separator", l));
        };
        // ID PARENT MAJ:MIN ROOT MOUNT-POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER-OPTIONS
        if sep < 6 || f.len() < sep + 4 {
            return Err(bad(n, "too few fields", l));
        }
        let kind = match f[sep + 1] {
            "cgroup2" => MountKind::V2,
            "cgroup" => MountKind::V1 {
                controllers: f[sep + 3]
                    .split(',')
                    .filter(|o| !V1_FLAGS.contains(o))
                    .filter(|o| o.starts_with("name=") || !o.contains('='))
                    .map(str::to_string)
                    .collect(),
            },
            _ => continue,
        };
        out.push(CgroupMount {
            root: unescape(f[3]),
            mount_point: PathBuf::from(unescape(f[4])),
            kind,
        });
    }
    Ok(out)
}

/// mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |v, c| v * 8 + u32::from(c - b'0'));
                // A value over 0xff is not an escape mountinfo makes: keep the text.
                match u8::try_from(v) {
                    Ok(v) => out.push(v),
                    Err(_) => out.extend_from_slice(&b[i..i + 4]),
                }
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where the cgroup of `m` is on disk: below the first mount of its hierarchy whose root
/// holds it. None if no mount of the hierarchy reaches it (not mounted, or mounted from a
/// cgroup below it).
pub fn locate(m: &Membership, mounts: &[CgroupMount]) -> Option<PathBuf> {
    mounts.iter().find_map(|mnt| {
        let same = match &mnt.kind {
            MountKind::V2 => m.is_v2(),
            MountKind::V1 { controllers } => {
                !m.controllers.is_empty() && m.controllers.iter().all(|c| controllers.contains(c))
            }
        };
        if !same {
            return None;
        }
        let rel = if mnt.root == "/" {
            m.path.as_str()
        } else {
            let rest = m.path.strip_prefix(mnt.root.as_str())?;
            if !rest.is_empty() && !rest.starts_with('/') {
                return None;
            }
            rest
        };
        let rel = rel.trim_start_matches('/');
        Some(if rel.is_empty() {
            mnt.mount_point.clone()
        } else {
            mnt.mount_point.join(rel)
        })
    })
}

/// A pid list (`cgroup.procs`, `tasks`, `cgroup.threads`): one number a line.
pub fn pid_list(text: &str) -> Result<Vec<u32>, ParseError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| l.trim().parse().map_err(|_| bad(n + 1, "not a pid", l)))
        .collect()
}

/// The state of a freezer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezerState {
    Thawed,
    /// Asked to freeze, not every task frozen yet.
    Freezing,
    Frozen,
}

impl std::fmt::Display for FreezerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            FreezerState::Thawed => "THAWED",
            FreezerState::Freezing => "FREEZING",
            FreezerState::Frozen => "FROZEN",
        })
    }
}

/// v1 `freezer.state`: `THAWED`, `FREEZING` or `FROZEN`.
pub fn v1_state(text: &str) -> Option<FreezerState> {
    match text.trim() {
        "THAWED" => Some(FreezerState::Thawed),
        "FREEZING" => Some(FreezerState::Freezing),
        "FROZEN" => Some(FreezerState::Frozen),
        _ => None,
    }
}

/// The `frozen` key of v2 `cgroup.events` (`populated 1\nfrozen 0\n`).
pub fn events_frozen(text: &str) -> Option<bool> {
    text.lines().find_map(|l| match l.split_once(' ')? {
        ("frozen", "1") => Some(true),
        ("frozen", "0") => Some(false),
        _ => None,
    })
}

/// v2 state from what was asked (`cgroup.freeze`) and what is (`cgroup.events`): asked
/// and not yet there is FREEZING; a cgroup frozen because its parent is reads FROZEN.
pub fn v2_state(freeze: &str, events: &str) -> Option<FreezerState> {
    let asked = match freeze.trim() {
        "1" => true,
        "0" => false,
        _ => return None,
    };
    Some(match (events_frozen(events)?, asked) {
        (true, _) => FreezerState::Frozen,
        (false, true) => FreezerState::Freezing,
        (false, false) => FreezerState::Thawed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_cgroup_hybrid() {
        let text = "12:pids:/a\n9:name=systemd:/user.slice\n2:cpu,cpuacct:/\n0::/x:y/z\n";
        let m = proc_cgroup(text).unwrap();
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].hierarchy, 12);
        assert_eq!(m[0].controllers, ["pids"]);
        assert_eq!(m[1].controllers, ["name=systemd"]);
        assert_eq!(m[2].controllers, ["cpu", "cpuacct"]);
        assert!(m[3].is_v2());
        assert_eq!(m[3].path, "/x:y/z", "colons in a path are kept");
        assert!(!m[0].is_v2());
    }

    #[test]
    fn proc_cgroup_rejects_bad_lines() {
        assert_eq!(
            proc_cgroup("x:cpu:/").unwrap_err().what,
            "hierarchy id is not a number"
        );
        assert_eq!(proc_cgroup("1:cpu").unwrap_err().line, 1);
        assert_eq!(proc_cgroup("0::/\n1:cpu:rel").unwrap_err().line, 2);
        assert!(proc_cgroup("").unwrap().is_empty());
    }

    const MOUNTINFO: &str = "\
23 1 0:21 / /sys rw,nosuid - sysfs sysfs rw
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:9 - cgroup cgroup rw,cpu,cpuacct
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,release_agent=/x,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
50 31 0:34 /ctr /mnt/my\\040freezer rw - cgroup cgroup rw,freezer
";

    #[test]
    fn mounts_of_a_hybrid_machine() {
        let m = cgroup_mounts(MOUNTINFO).unwrap();
        assert_eq!(m.len(), 5, "sysfs and tmpfs are skipped");
        assert_eq!(
            m[0].kind,
            MountKind::V1 {
                controllers: vec!["cpu".into(), "cpuacct".into()]
            }
        );
        assert_eq!(
            m[2].kind,
            MountKind::V1 {
                controllers: vec!["name=systemd".into()]
            },
            "flags and release_agent are not controllers"
        );
        assert_eq!(m[3].kind, MountKind::V2);
        assert_eq!(m[3].mount_point, PathBuf::from("/sys/fs/cgroup/unified"));
        assert_eq!(m[4].root, "/ctr");
        assert_eq!(m[4].mount_point, PathBuf::from("/mnt/my freezer"));
    }

    #[test]
    fn mounts_reject_broken_lines() {
        assert_eq!(
            cgroup_mounts("1 2 3").unwrap_err().what,
            "no ' - ' separator"
        );
        assert_eq!(
            cgroup_mounts("1 2 - cgroup").unwrap_err().what,
            "too few fields"
        );
    }

    #[test]
    fn unescape_keeps_what_is_not_an_escape() {
        assert_eq!(unescape(r"a\040b"), "a b");
        assert_eq!(unescape(r"a\134b"), r"a\b");
        assert_eq!(unescape(r"a\9b\04"), r"a\9b\04");
        assert_eq!(unescape(r"\777"), r"\777");
    }

    #[test]
    fn locate_follows_mount_roots() {
        let mounts = cgroup_mounts(MOUNTINFO).unwrap();
        let m = |line: &str| proc_cgroup(line).unwrap().remove(0);
        assert_eq!(
            locate(&m("6:freezer:/a/b"), &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/freezer/a/b"))
        );
        assert_eq!(
            locate(&m("6:freezer:/"), &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/freezer"))
        );
        assert_eq!(
            locate(&m("2:cpuacct,cpu:/k"), &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/k"))
        );
        assert_eq!(
            locate(&m("0::/c"), &mounts),
            Some(PathBuf::from("/sys/fs/cgroup/unified/c"))
        );
        assert_eq!(
            locate(&m("8:pids:/c"), &mounts),
            None,
            "pids is not mounted"
        );
        // Only a mount of /ctr: /ctr2 is not below it, /ctr/x is.
        let only = &mounts[4..];
        assert_eq!(locate(&m("6:freezer:/ctr2"), only), None);
        assert_eq!(
            locate(&m("6:freezer:/ctr/x"), only),
            Some(PathBuf::from("/mnt/my freezer/x"))
        );
    }

    #[test]
    fn pid_lists() {
        assert_eq!(pid_list("1\n22\n\n333\n").unwrap(), [1, 22, 333]);
        assert!(pid_list("").unwrap().is_empty());
        assert_eq!(pid_list("1\nx\n").unwrap_err().line, 2);
    }

    #[test]
    fn freezer_states() {
        assert_eq!(v1_state("FROZEN\n"), Some(FreezerState::Frozen));
        assert_eq!(v1_state("FREEZING\n"), Some(FreezerState::Freezing));
        assert_eq!(v1_state("THAWED\n"), Some(FreezerState::Thawed));
        assert_eq!(v1_state("frozen"), None);
        let ev = |f| format!("populated 1\nfrozen {f}\n");
        assert_eq!(events_frozen(&ev(1)), Some(true));
        assert_eq!(events_frozen("populated 1\n"), None);
        assert_eq!(v2_state("1\n", &ev(1)), Some(FreezerState::Frozen));
        assert_eq!(v2_state("1\n", &ev(0)), Some(FreezerState::Freezing));
        assert_eq!(v2_state("0\n", &ev(0)), Some(FreezerState::Thawed));
        assert_eq!(
            v2_state("0\n", &ev(1)),
            Some(FreezerState::Frozen),
            "frozen by an ancestor"
        );
        assert_eq!(v2_state("2", &ev(0)), None);
    }
}
