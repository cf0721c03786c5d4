//! Mount namespaces, the pure part: a tree's mount table (`/proc/<pid>/mountinfo`) read and
//! turned into the plan a restore would follow to make it again. A tree in a mount namespace
//! of its own is still refused (`freeze::refuse_foreign_namespaces`); this is the ground the
//! dump and restore of one will stand on (see ARCHITECTURE.md, "Mount namespaces: the plan").
//!
//! Two facts of the kernel shape it. mountinfo lists mounts in creation order, not in tree
//! order: a runc container's read-only binds and masks of /proc come after their parents'
//! children but carry smaller (reused) ids, so [`plan`] sorts by parent. And a bind mount is
//! only told apart by its root inside the filesystem: `/bus` of the proc mounted at /proc is a
//! bind of /proc/bus, `/null` of the /dev tmpfs mounted on /proc/keys is a mask.

use std::collections::{HashMap, HashSet};

/// One line of mountinfo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    pub id: u32,
    pub parent: u32,
    /// `major:minor` of the filesystem: binds of one filesystem share it.
    pub dev: (u32, u32),
    /// The directory of the filesystem this mount shows (`/` unless a bind of a part).
    pub root: String,
    pub mountpoint: String,
    /// Per-mount options (`ro`, `nosuid`, `nodev`, `noexec`, atime).
    pub mount_opts: Vec<String>,
    /// `shared:N`, `master:N`, `propagate_from:N`, `unbindable`.
    pub tags: Vec<String>,
    pub fstype: String,
    pub source: String,
    /// Options of the filesystem (superblock).
    pub super_opts: Vec<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum MntError {
    #[error("mountinfo line {line}: {what}")]
    Parse { line: usize, what: &'static str },
    #[error("mount {id} ({mountpoint}): its parent {parent} is not in the table")]
    Orphan {
        id: u32,
        mountpoint: String,
        parent: u32,
    },
    #[error("mount {id} ({mountpoint}) of type {fstype} is not supported yet")]
    Unsupported {
        id: u32,
        mountpoint: String,
        fstype: String,
    },
    #[error("the mount table has no root mount")]
    NoRoot,
}

/// mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') as u32 * 64
                + (b[i + 2] - b'0') as u32 * 8
                + (b[i + 3] - b'0') as u32;
            out.push(v as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a whole mountinfo file.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>, MntError> {
    let mut out = Vec::new();
    for (n, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let err = |what| MntError::Parse { line: n + 1, what };
        let (left, right) = line.split_once(" - ").ok_or(err("no ' - ' separator"))?;
        let f: Vec<&str> = left.split(' ').collect();
        if f.len() < 6 {
            return Err(err("fewer than 6 fields before ' - '"));
        }
        let num = |s: &str| {
            s.parse::<u32>()
                .map_err(|_| err("a number is not a number"))
        };
        let (maj, min) = f[2]
            .split_once(':')
            .ok_or(err("device is not major:minor"))?;
        let r: Vec<&str> = right.split(' ').collect();
        if r.len() < 3 {
            return Err(err("fewer than 3 fields after ' - '"));
        }
        out.push(MountInfo {
            id: num(f[0])?,
            parent: num(f[1])?,
            dev: (num(maj)?, num(min)?),
            root: unescape(f[3]),
            mountpoint: unescape(f[4]),
            mount_opts: f[5].split(',').map(str::to_string).collect(),
            tags: f[6..]
                .iter()
                .filter(|t| !t.is_empty())
                .map(|t| t.to_string())
                .collect(),
            fstype: r[0].to_string(),
            source: unescape(r[1]),
            super_opts: r[2].split(',').map(str::to_string).collect(),
        });
    }
    Ok(out)
}

/// How a restore makes one mount again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Make {
    /// The tree's root: the directory the caller gives (`--root`, runc's criu-root).
    Root,
    /// A new instance of a virtual filesystem (proc, sysfs, devpts, mqueue, cgroup2).
    New,
    /// A new tmpfs, its content saved at dump and put back.
    Tmpfs,
    /// A bind of `sub` inside the mount `of` made earlier in the plan (a read-only bind of
    /// /proc/sys, a mask of /proc/keys by /dev/null).
    Bind { of: u32, sub: String },
    /// A v1 cgroup hierarchy's directory: outside the tree, given by the caller (runc's
    /// external mounts map each one to the host's).
    External,
}

/// One step of the plan, parents first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub mount: MountInfo,
    pub make: Make,
}

/// Virtual filesystems a restore mounts anew.
const NEW_KINDS: &[&str] = &["proc", "sysfs", "devpts", "mqueue", "cgroup2"];

/// The order and the way to make every mount of `table` (a tree's mount namespace), parents
/// before children. A filesystem type it cannot make is an error naming the mount.
pub fn plan(table: &[MountInfo]) -> Result<Vec<Planned>, MntError> {
    let ids: HashSet<u32> = table.iter().map(|m| m.id).collect();
    let root = table
        .iter()
        .find(|m| m.mountpoint == "/" && !ids.contains(&m.parent))
        .ok_or(MntError::NoRoot)?;
    let mut children: HashMap<u32, Vec<&MountInfo>> = HashMap::new();
    for m in table.iter().filter(|m| m.id != root.id) {
        if !ids.contains(&m.parent) {
            return Err(MntError::Orphan {
                id: m.id,
                mountpoint: m.mountpoint.clone(),
                parent: m.parent,
            });
        }
        children.entry(m.parent).or_default().push(m);
    }
    // Breadth first from the root: a parent is always made before its children.
    let mut order = vec![root];
    let mut i = 0;
    while i < order.len() {
        let mut kids = children.remove(&order[i].id).unwrap_or_default();
        kids.sort_by_key(|m| m.id);
        order.extend(kids);
        i += 1;
    }
    // The first mount of each filesystem that shows its root is what later binds come from.
    let mut whole: HashMap<(u32, u32), u32> = HashMap::new();
    let mut out = Vec::with_capacity(order.len());
    for m in order {
        let make = if m.id == root.id {
            Make::Root
        } else if let Some(&of) = whole.get(&m.dev).filter(|_| m.root != "/") {
            Make::Bind {
                of,
                sub: m.root.clone(),
            }
        } else if m.fstype == "cgroup" {
            Make::External
        } else if m.root != "/" {
            return Err(MntError::Unsupported {
                id: m.id,
                mountpoint: m.mountpoint.clone(),
                fstype: format!("{} (a bind of {} from outside the tree)", m.fstype, m.root),
            });
        } else if m.fstype == "tmpfs" {
            Make::Tmpfs
        } else if NEW_KINDS.contains(&m.fstype.as_str()) {
            Make::New
        } else {
            return Err(MntError::Unsupported {
                id: m.id,
                mountpoint: m.mountpoint.clone(),
                fstype: m.fstype.clone(),
            });
        };
        if m.root == "/" {
            whole.entry(m.dev).or_insert(m.id);
        }
        out.push(Planned {
            mount: m.clone(),
            make,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUNC: &str = include_str!("testdata/runc-mountinfo.txt");

    #[test]
    fn parses_a_runc_containers_table() {
        let t = parse_mountinfo(RUNC).unwrap();
        assert_eq!(t.len(), 25);
        let proc = &t[1];
        assert_eq!((proc.id, proc.parent), (71, 70));
        assert_eq!(proc.mountpoint, "/proc");
        assert_eq!(proc.fstype, "proc");
        let keys = t.iter().find(|m| m.mountpoint == "/proc/keys").unwrap();
        assert_eq!((keys.root.as_str(), keys.dev), ("/null", (0, 42)));
        let sys = t.iter().find(|m| m.mountpoint == "/sys").unwrap();
        assert!(sys.mount_opts.contains(&"ro".to_string()));
        assert_eq!(sys.super_opts, ["ro"]);
    }

    #[test]
    fn plans_parents_first_and_tells_binds_masks_and_externals() {
        let t = parse_mountinfo(RUNC).unwrap();
        let p = plan(&t).unwrap();
        assert_eq!(p.len(), t.len());
        let pos = |mp: &str| p.iter().position(|x| x.mount.mountpoint == mp).unwrap();
        // Ids 48-55 sit under 71 and 76 although they are smaller.
        assert!(pos("/proc") < pos("/proc/bus"));
        assert!(pos("/dev") < pos("/proc/keys"));
        assert!(pos("/sys") < pos("/sys/firmware"));
        let make = |mp: &str| p[pos(mp)].make.clone();
        assert_eq!(make("/"), Make::Root);
        assert_eq!(make("/proc"), Make::New);
        assert_eq!(make("/dev"), Make::Tmpfs);
        assert_eq!(make("/dev/pts"), Make::New);
        assert_eq!(make("/dev/shm"), Make::Tmpfs);
        assert_eq!(make("/dev/mqueue"), Make::New);
        assert_eq!(make("/sys"), Make::New);
        assert_eq!(
            make("/proc/bus"),
            Make::Bind {
                of: 71,
                sub: "/bus".into()
            }
        );
        assert_eq!(
            make("/proc/keys"),
            Make::Bind {
                of: 72,
                sub: "/null".into()
            }
        );
        assert_eq!(make("/proc/acpi"), Make::Tmpfs);
        assert_eq!(make("/sys/fs/cgroup/memory"), Make::External);
    }

    #[test]
    fn escapes_orphans_and_unknown_kinds() {
        let t = parse_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 0:5 / /a\\040b rw - tmpfs x rw\n",
        )
        .unwrap();
        assert_eq!(t[1].mountpoint, "/a b");
        let bad =
            parse_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda rw\n3 9 0:5 / /x rw - tmpfs x rw\n")
                .unwrap();
        assert!(matches!(plan(&bad), Err(MntError::Orphan { id: 3, .. })));
        let nfs =
            parse_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 0:9 / /n rw - nfs4 h:/e rw\n")
                .unwrap();
        assert!(matches!(
            plan(&nfs),
            Err(MntError::Unsupported { id: 2, .. })
        ));
        assert!(parse_mountinfo("garbage").is_err());
        assert!(parse_mountinfo("1 0 8:1 / / rw - ext4").is_err());
    }
}
