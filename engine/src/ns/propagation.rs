//! Mount propagation, the pure part: which peer groups and slaves of a tree's mount table a
//! restore can make again, and the steps that make them once every mount exists.
//!
//! Mounts are made private (or slaves of the host's groups, see [`Propagation::slave_at_creation`])
//! and the init, after its pivot (a shared root cannot be pivoted), gives each peer group one
//! representative: the member whose root holds every other member's root. The representative
//! is made a slave first if its group was one of a group of the tree, then shared (a new group);
//! every other member joins it with `move_mount(MOVE_MOUNT_SET_GROUP)` (Linux 5.15), which
//! copies the group and the master both. A slave of a group of the tree joins that group's
//! representative the same way, then leaves the group for a slave of it (`MS_SLAVE` on a mount
//! with peers). Groups are taken masters first. CRIU's mount-v2 restores propagation the same
//! way; its images carry the same `shared_id`/`master_id`, read here as mountinfo tags.

use std::collections::{HashMap, HashSet};

use super::mnt::{MntError, MountInfo};

/// The peer group a mount is shared in (`shared:N`), if it is.
pub fn shared_group(m: &MountInfo) -> Option<u32> {
    m.tags
        .iter()
        .find_map(|t| t.strip_prefix("shared:")?.parse().ok())
}

/// The peer group a mount receives propagation from (`master:N`), if it is a slave.
pub fn master_group(m: &MountInfo) -> Option<u32> {
    m.tags
        .iter()
        .find_map(|t| t.strip_prefix("master:")?.parse().ok())
}

/// One step the init takes after its pivot, on mounts named by their dumped ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `MS_SHARED`: a new peer group of one.
    Shared(u32),
    /// `move_mount(MOVE_MOUNT_SET_GROUP)`: `to`, private, joins `from`'s peer group and master.
    SetGroup { from: u32, to: u32 },
    /// `MS_SLAVE`: leaves its peer group for a slave of it.
    Slave(u32),
}

impl Step {
    /// The mounts the step acts on.
    pub fn mounts(&self) -> Vec<u32> {
        match *self {
            Step::Shared(m) | Step::Slave(m) => vec![m],
            Step::SetGroup { from, to } => vec![from, to],
        }
    }
}

/// How a table's propagation is made again.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Propagation {
    /// Mounts made slaves as soon as they are made: slaves of a group outside the tree that
    /// no other mount copies it from (a bind of a host path in the restore's slave namespace
    /// is a slave of the host's group again).
    pub slave_at_creation: HashSet<u32>,
    /// What the init does after the pivot, in order.
    pub steps: Vec<Step>,
    /// Auto-detected external mounts that were peers of the host mount they bind (see
    /// ns::mnt_ext): each joins that mount's group again once made.
    pub host_peers: HashSet<u32>,
}

/// An auto-detected external mount in the host mount's own peer group.
pub fn host_peer(m: &MountInfo) -> bool {
    m.ext_key.as_deref() == Some(super::mnt_ext::AUTO_KEY)
        && !m.internal_sharing
        && shared_group(m).is_some()
}

/// Whether `root` (a directory of a filesystem) holds `inner`.
pub(crate) fn holds(root: &str, inner: &str) -> bool {
    let r = root.trim_end_matches('/');
    inner == root
        || r.is_empty()
        || inner
            .strip_prefix(r)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The plan for `table`; `outside` holds the groups of the dumper's own mounts. Refused by
/// name: a mount shared with mounts outside the tree (the restore could not join their
/// peers), a peer group no member of which holds the others' roots, a slave whose master's
/// representative does not hold its root (MOVE_MOUNT_SET_GROUP needs it), masters in a cycle.
pub fn plan(table: &[MountInfo], outside: &HashSet<u32>) -> Result<Propagation, MntError> {
    let refuse = |m: &MountInfo, what: String| MntError::Propagation {
        id: m.id,
        mountpoint: m.mountpoint.clone(),
        what,
    };
    let mut groups: HashMap<u32, Vec<&MountInfo>> = HashMap::new();
    let mut out = Propagation::default();
    for m in table {
        if host_peer(m) {
            out.host_peers.insert(m.id);
            continue;
        }
        if let Some(g) = shared_group(m) {
            if outside.contains(&g) {
                return Err(refuse(
                    m,
                    format!("shared:{g} with mounts outside the tree"),
                ));
            }
            groups.entry(g).or_default().push(m);
        }
    }
    // Each group's representative: same filesystem, a root holding every member's.
    let mut rep: HashMap<u32, &MountInfo> = HashMap::new();
    for (&g, members) in &groups {
        let r = members
            .iter()
            .filter(|c| {
                members
                    .iter()
                    .all(|o| o.dev == c.dev && holds(&c.root, &o.root))
            })
            .min_by_key(|c| (c.root.len(), c.id))
            .ok_or_else(|| {
                refuse(
                    members[0],
                    format!("shared:{g}, a peer group no mount of which holds the others' roots"),
                )
            })?;
        rep.insert(g, r);
    }
    for m in table.iter().filter(|m| !host_peer(m)) {
        let Some(master) = master_group(m) else {
            continue;
        };
        if let Some(r) = rep.get(&master) {
            if r.dev != m.dev || !holds(&r.root, &m.root) {
                return Err(refuse(
                    m,
                    format!(
                        "master:{master}, a slave of a peer group of the tree whose mount {} \
                         does not hold its root {}",
                        r.mountpoint, m.root
                    ),
                ));
            }
        } else if shared_group(m).is_none_or(|g| rep[&g].id == m.id) {
            out.slave_at_creation.insert(m.id);
        }
    }
    // Units in table order: a group (by its first member) or a lone slave of a tree group.
    let mut done: HashSet<u32> = HashSet::new();
    let mut pending: Vec<&MountInfo> = Vec::new();
    let mut seen: HashSet<u32> = HashSet::new();
    for m in table.iter().filter(|m| !host_peer(m)) {
        match shared_group(m) {
            Some(g) if seen.insert(g) => pending.push(rep[&g]),
            Some(_) => {}
            None if master_group(m).is_some_and(|g| rep.contains_key(&g)) => pending.push(m),
            None => {}
        }
    }
    while !pending.is_empty() {
        let before = pending.len();
        let mut left = Vec::new();
        for m in pending {
            let tree_master = master_group(m).filter(|g| rep.contains_key(g));
            if tree_master.is_some_and(|g| !done.contains(&g)) {
                left.push(m);
                continue;
            }
            if let Some(g) = tree_master {
                out.steps.push(Step::SetGroup {
                    from: rep[&g].id,
                    to: m.id,
                });
                out.steps.push(Step::Slave(m.id));
            }
            if let Some(g) = shared_group(m) {
                out.steps.push(Step::Shared(m.id));
                for o in groups[&g].iter().filter(|o| o.id != m.id) {
                    out.steps.push(Step::SetGroup {
                        from: m.id,
                        to: o.id,
                    });
                }
                done.insert(g);
            }
        }
        if left.len() == before {
            return Err(refuse(
                left[0],
                "a slave in a cycle of peer groups".to_string(),
            ));
        }
        pending = left;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ns::mnt::parse_mountinfo;

    /// The plan of `text`, its steps written with mountpoints.
    fn steps(text: &str) -> Result<(Propagation, Vec<String>), MntError> {
        let t = parse_mountinfo(text).unwrap();
        let p = plan(&t, &HashSet::new())?;
        let mp = |id: u32| t.iter().find(|m| m.id == id).unwrap().mountpoint.clone();
        let shown = p
            .steps
            .iter()
            .map(|s| match *s {
                Step::Shared(m) => format!("shared {}", mp(m)),
                Step::Slave(m) => format!("slave {}", mp(m)),
                Step::SetGroup { from, to } => format!("join {} to {}", mp(to), mp(from)),
            })
            .collect();
        Ok((p, shown))
    }

    const ROOT: &str = "1 0 8:1 / / rw - ext4 /dev/sda rw\n";

    #[test]
    fn a_mount_alone_in_its_group_is_made_shared() {
        let t = parse_mountinfo("1 0 8:1 / / rw shared:1 - ext4 /dev/sda rw\n").unwrap();
        let p = plan(&t, &HashSet::new()).unwrap();
        assert_eq!(p.steps, [Step::Shared(1)]);
        assert!(p.slave_at_creation.is_empty());
        assert_eq!(shared_group(&t[0]), Some(1));
        assert!(plan(&t, &HashSet::from([1])).is_err(), "a peer outside");
    }

    #[test]
    fn peers_join_the_member_holding_their_roots() {
        let (_, s) = steps(&format!(
            "{ROOT}2 1 0:5 /d /b rw shared:7 - tmpfs t rw\n\
             3 1 0:5 / /a rw shared:7 - tmpfs t rw\n4 1 0:5 /d/e /c rw shared:7 - tmpfs t rw\n"
        ))
        .unwrap();
        assert_eq!(s, ["shared /a", "join /b to /a", "join /c to /a"]);
        let apart = steps(&format!(
            "{ROOT}2 1 0:5 /x /b rw shared:7 - tmpfs t rw\n3 1 0:5 /y /a rw shared:7 - tmpfs t rw\n"
        ));
        assert!(
            matches!(apart, Err(MntError::Propagation { id: 2, .. })),
            "{apart:?}"
        );
    }

    #[test]
    fn slaves_of_a_tree_group_come_after_their_master() {
        // /s is a slave of /a's group and shared itself with /t; listed before its master.
        let (p, s) = steps(&format!(
            "{ROOT}5 1 0:5 / /s rw shared:9 master:7 - tmpfs t rw\n\
             6 1 0:5 / /t rw shared:9 master:7 - tmpfs t rw\n\
             3 1 0:5 / /a rw shared:7 - tmpfs t rw\n4 1 0:5 /sub /only rw master:7 - tmpfs t rw\n"
        ))
        .unwrap();
        assert_eq!(
            s,
            [
                "shared /a",
                "join /only to /a",
                "slave /only",
                "join /s to /a",
                "slave /s",
                "shared /s",
                "join /t to /s",
            ]
        );
        assert!(p.slave_at_creation.is_empty());
        let wider = steps(&format!(
            "{ROOT}3 1 0:5 /sub /a rw shared:7 - tmpfs t rw\n4 1 0:5 / /w rw master:7 - tmpfs t rw\n"
        ));
        assert!(matches!(wider, Err(MntError::Propagation { id: 4, .. })));
    }

    #[test]
    fn slaves_of_the_host_are_made_so_once_per_group() {
        let (p, s) = steps(&format!(
            "{ROOT}2 1 8:1 / /h rw master:3 - ext4 /dev/sda rw\n\
             3 1 8:1 /x /p rw shared:4 master:3 - ext4 /dev/sda rw\n\
             4 1 8:1 /x /q rw shared:4 master:3 - ext4 /dev/sda rw\n"
        ))
        .unwrap();
        assert_eq!(p.slave_at_creation, HashSet::from([2, 3]));
        assert_eq!(s, ["shared /p", "join /q to /p"]);
        assert_eq!(p.steps[1].mounts(), [3, 4]);
    }

    #[test]
    fn roots_hold_by_whole_components() {
        assert!(holds("/", "/a"));
        assert!(holds("/a", "/a"));
        assert!(holds("/a", "/a/b"));
        assert!(!holds("/a", "/ab"));
        assert!(!holds("/a/b", "/a"));
    }
}
