//! Mount namespaces nested in the tree's, the pure part: a task of the tree that unshared one
//! (a service's PrivateTmp under systemd in a container, a sandbox, `unshare -m`). Each is a
//! table of its own (`mountpoints-<id>.img`, the task's `mnt_ns_id`), made by
//! `mnt_nested_sys` after the tree's own namespace. A filesystem two namespaces mount (the
//! copy of the tree's /tmp that `unshare` left in the nested one) must stay one filesystem:
//! the later namespace takes a copy of the earlier one's mount ([`Make::Elsewhere`]).

use std::collections::HashSet;

use super::mnt::{self, Make, MountInfo, Phase, Planned};
use super::propagation;

/// Namespace ids of nested mount namespaces in the images: the first, then one up each.
pub const FIRST_NESTED_ID: u32 = 20;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum NestedError {
    #[error(transparent)]
    Table(#[from] mnt::MntError),
    #[error(
        "nested mount namespace {ns}: its root (mount {id}, {root} of device {major}:{minor}) \
         is neither the tree's root, a directory of it, a filesystem of the tree's nor a tmpfs \
         of its own, which is not supported yet"
    )]
    OtherRoot {
        ns: u32,
        id: u32,
        root: String,
        major: u32,
        minor: u32,
    },
    #[error(
        "nested mount namespace {ns}: mount {id} ({mountpoint}) is a copy of another \
         namespace's filesystem {what}, which is not supported yet"
    )]
    Copy {
        ns: u32,
        id: u32,
        mountpoint: String,
        what: &'static str,
    },
    #[error(
        "nested mount namespace {ns}: mount {id} ({mountpoint}) is made by a task of that \
         namespace after the fork, yet it is in a peer group, which is not supported yet"
    )]
    LatePeer {
        ns: u32,
        id: u32,
        mountpoint: String,
    },
}

/// Where a [`Make::Elsewhere`] mount is copied from: the mount at `mountpoint` of namespace
/// `ns` (0 the tree's, i + 1 the i-th nested), `sub` inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFrom {
    pub id: u32,
    pub ns: usize,
    pub mountpoint: String,
    pub sub: String,
}

/// What a nested namespace's root is made of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NestedRoot {
    /// The tree's root (a namespace `unshare` copied).
    Tree,
    /// A copy of a filesystem an earlier namespace makes, or of a directory of the tree's root
    /// (a `pivot_root` into it), in `copies` under the root's id.
    Copy,
    /// A tmpfs of its own (a `pivot_root` into a tmpfs mounted there), its content saved.
    Tmpfs,
}

/// One nested namespace's plan.
#[derive(Debug, Clone)]
pub struct NestedPlan {
    pub id: u32,
    pub root: NestedRoot,
    pub plan: Vec<Planned>,
    pub phases: Vec<Phase>,
    pub copies: Vec<CopyFrom>,
    /// Devices of the filesystems other namespaces made first.
    pub elsewhere: HashSet<(u32, u32)>,
}

/// A mount a namespace made that a later one can copy.
struct Made {
    ns: usize,
    dev: (u32, u32),
    root: String,
    mountpoint: String,
}

fn made_by(ns: usize, plan: &[Planned], phases: &[Phase], root_dev: (u32, u32)) -> Vec<Made> {
    plan.iter()
        .zip(phases)
        .filter(|(p, ph)| {
            **ph == Phase::Early
                && p.mount.dev != root_dev
                && matches!(
                    p.make,
                    Make::Tmpfs | Make::New | Make::Bind { .. } | Make::Elsewhere
                )
        })
        .map(|(p, _)| Made {
            ns,
            dev: p.mount.dev,
            root: p.mount.root.clone(),
            mountpoint: p.mount.mountpoint.clone(),
        })
        .collect()
}

/// The mounts of `plan` its init makes late (after it pivoted): their files are opened by the
/// tasks themselves.
pub fn late_ids(plan: &[Planned], phases: &[Phase]) -> HashSet<u32> {
    plan.iter()
        .zip(phases)
        .filter(|(_, ph)| **ph == Phase::Late)
        .map(|(p, _)| p.mount.id)
        .collect()
}

/// The plans of the nested namespaces `nested` ((id, table), in the order they are made) of a
/// tree whose own namespace is `primary`; refused by name what the restore could not make.
pub fn plan_all(
    primary: &[MountInfo],
    nested: &[(u32, Vec<MountInfo>)],
) -> Result<Vec<NestedPlan>, NestedError> {
    let root = mnt::table_root(primary)?;
    let plan0 = mnt::plan(primary)?;
    let phases0 = mnt::phases(&plan0)?;
    let mut made = made_by(0, &plan0, &phases0, root.dev);
    let mut out = Vec::with_capacity(nested.len());
    let mut late: HashSet<u32> = HashSet::new();
    for (i, (id, table)) in nested.iter().enumerate() {
        let r = mnt::table_root(table)?;
        let mut copies = Vec::new();
        let from_root = propagation::holds(&root.root, &r.root) && r.dev == root.dev;
        let root_kind = if r.dev == root.dev && r.root == root.root {
            NestedRoot::Tree
        } else if let Some(from) = made
            .iter()
            .find(|s| s.dev == r.dev && propagation::holds(&s.root, &r.root))
        {
            copies.push(CopyFrom {
                id: r.id,
                ns: from.ns,
                mountpoint: from.mountpoint.clone(),
                sub: mnt::within(&from.root, &r.root).unwrap_or_else(|| "/".into()),
            });
            NestedRoot::Copy
        } else if from_root {
            copies.push(CopyFrom {
                id: r.id,
                ns: 0,
                mountpoint: "/".into(),
                sub: mnt::within(&root.root, &r.root).unwrap_or_else(|| "/".into()),
            });
            NestedRoot::Copy
        } else if r.fstype == "tmpfs" && r.root == "/" {
            NestedRoot::Tmpfs
        } else {
            return Err(NestedError::OtherRoot {
                ns: *id,
                id: r.id,
                root: r.root.clone(),
                major: r.dev.0,
                minor: r.dev.1,
            });
        };
        let elsewhere: HashSet<(u32, u32)> = made.iter().map(|m| m.dev).collect();
        let plan = mnt::plan_with(table, &elsewhere)?;
        let phases = mnt::phases(&plan)?;
        for (p, ph) in plan.iter().zip(&phases) {
            let m = &p.mount;
            if *ph == Phase::Late {
                late.insert(m.id);
            }
            if p.make != Make::Elsewhere {
                continue;
            }
            let refuse = |what| NestedError::Copy {
                ns: *id,
                id: m.id,
                mountpoint: m.mountpoint.clone(),
                what,
            };
            if *ph == Phase::Late {
                return Err(refuse("under a proc"));
            }
            let from = made
                .iter()
                .find(|s| s.dev == m.dev && propagation::holds(&s.root, &m.root))
                .ok_or_else(|| refuse("whose root no mount there holds"))?;
            copies.push(CopyFrom {
                id: m.id,
                ns: from.ns,
                mountpoint: from.mountpoint.clone(),
                sub: mnt::within(&from.root, &m.root).unwrap_or_else(|| "/".into()),
            });
        }
        made.extend(made_by(i + 1, &plan, &phases, root.dev));
        if root_kind != NestedRoot::Tree && r.dev != root.dev {
            made.push(Made {
                ns: i + 1,
                dev: r.dev,
                root: r.root.clone(),
                mountpoint: "/".into(),
            });
        }
        out.push(NestedPlan {
            id: *id,
            root: root_kind,
            plan,
            phases,
            copies,
            elsewhere,
        });
    }
    // The init joins peer groups by fds on mounts made before the fork; a nested namespace's
    // late mounts are made after it.
    let all = all_mounts(primary, nested);
    for step in propagation::plan(&all, &Default::default())?.steps {
        if let Some(&id) = step.mounts().iter().find(|id| late.contains(id)) {
            let (ns, m) = nested
                .iter()
                .find_map(|(ns, t)| t.iter().find(|m| m.id == id).map(|m| (*ns, m)))
                .expect("a late mount is in a nested table");
            return Err(NestedError::LatePeer {
                ns,
                id,
                mountpoint: m.mountpoint.clone(),
            });
        }
    }
    Ok(out)
}

/// A nested namespace's copies of the tree's external mounts (same filesystem, same root) are
/// external under the same key; what a nested namespace mounted at an external mount's
/// mountpoint is not.
pub fn inherit_external(primary: &[MountInfo], nested: &mut [MountInfo]) {
    for m in nested.iter_mut().filter(|m| m.ext_key.is_none()) {
        if let Some(e) = primary
            .iter()
            .find(|e| e.ext_key.is_some() && e.dev == m.dev && e.root == m.root)
        {
            m.ext_key = e.ext_key.clone();
        }
    }
}

/// Every namespace's mounts in one table: peer groups span namespaces.
pub fn all_mounts(primary: &[MountInfo], nested: &[(u32, Vec<MountInfo>)]) -> Vec<MountInfo> {
    let mut all = primary.to_vec();
    for (_, t) in nested {
        all.extend(t.iter().cloned());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> Vec<MountInfo> {
        mnt::parse_mountinfo(text).unwrap()
    }

    const TREE: &str = "\
100 50 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/l
101 100 0:41 / /proc rw - proc proc rw
102 100 0:42 / /tmp rw shared:7 - tmpfs tmpfs rw
103 100 0:43 / /dev rw - tmpfs tmpfs rw,mode=755
";

    #[test]
    fn a_copy_of_the_trees_tmpfs_is_taken_from_it_and_a_new_one_is_made() {
        // `unshare -m` then a tmpfs of its own on /mnt and a bind of part of /tmp.
        let nested = table(
            "\
200 150 0:40 / / rw,relatime - overlay overlay rw,lowerdir=/l
201 200 0:41 / /proc rw - proc proc rw
202 200 0:42 / /tmp rw shared:7 - tmpfs tmpfs rw
203 200 0:43 / /dev rw - tmpfs tmpfs rw,mode=755
204 200 0:44 / /mnt rw - tmpfs tmpfs rw
205 200 0:42 /sub /srv rw shared:7 - tmpfs tmpfs rw
",
        );
        let plans = plan_all(&table(TREE), &[(20, nested)]).unwrap();
        let p = &plans[0];
        let make = |id| {
            p.plan
                .iter()
                .find(|x| x.mount.id == id)
                .unwrap()
                .make
                .clone()
        };
        assert_eq!(make(200), Make::Root);
        assert_eq!(make(201), Make::New);
        assert_eq!(make(202), Make::Elsewhere);
        assert_eq!(make(204), Make::Tmpfs);
        // The whole /tmp copy comes first: the part is a bind of it, inside the namespace.
        assert_eq!(
            make(205),
            Make::Bind {
                of: 202,
                sub: "/sub".into()
            }
        );
        assert_eq!(
            p.copies,
            vec![
                CopyFrom {
                    id: 202,
                    ns: 0,
                    mountpoint: "/tmp".into(),
                    sub: "/".into()
                },
                CopyFrom {
                    id: 203,
                    ns: 0,
                    mountpoint: "/dev".into(),
                    sub: "/".into()
                }
            ]
        );
    }

    #[test]
    fn a_second_nested_namespace_copies_from_the_first() {
        let first = table(
            "\
200 150 0:40 / / rw - overlay overlay rw
204 200 0:44 / /mnt rw - tmpfs tmpfs rw
",
        );
        let second = table(
            "\
300 250 0:40 / / rw - overlay overlay rw
304 300 0:44 /d /mnt rw - tmpfs tmpfs rw
",
        );
        let plans = plan_all(&table(TREE), &[(20, first), (21, second)]).unwrap();
        assert_eq!(
            plans[1].copies,
            vec![CopyFrom {
                id: 304,
                ns: 1,
                mountpoint: "/mnt".into(),
                sub: "/d".into()
            }]
        );
    }

    #[test]
    fn only_copies_of_an_external_mount_are_external() {
        let mut tree = table(TREE);
        mnt::mark_external(&mut tree, &[("/dev".into(), "KEY".into())]);
        let mut nested = table(
            "\
200 150 0:40 / / rw - overlay overlay rw
203 200 0:43 / /dev rw - tmpfs tmpfs rw,mode=755
204 200 0:44 / /dev rw - tmpfs tmpfs rw
",
        );
        inherit_external(&tree, &mut nested);
        assert_eq!(nested[1].ext_key.as_deref(), Some("KEY"), "the copy");
        assert_eq!(nested[2].ext_key, None, "a tmpfs mounted over it");
    }

    #[test]
    fn roots_of_their_own_are_made_and_others_refused_as_a_late_peer() {
        let pivoted = table("200 150 0:44 / / rw - tmpfs tmpfs rw\n");
        assert_eq!(
            plan_all(&table(TREE), &[(20, pivoted)]).unwrap()[0].root,
            NestedRoot::Tmpfs
        );
        let into_tmp = table("200 150 0:42 /jail / rw - tmpfs tmpfs rw\n");
        let p = &plan_all(&table(TREE), &[(20, into_tmp)]).unwrap()[0];
        assert_eq!(p.root, NestedRoot::Copy);
        assert_eq!(p.copies[0].sub, "/jail");
        let into_dir = table("200 150 0:40 /srv/jail / rw - overlay overlay rw\n");
        let p = &plan_all(&table(TREE), &[(20, into_dir)]).unwrap()[0];
        assert_eq!(
            (p.copies[0].mountpoint.as_str(), p.copies[0].sub.as_str()),
            ("/", "/srv/jail")
        );
        let other = table("200 150 8:1 / / rw - ext4 /dev/sda rw\n");
        assert!(matches!(
            plan_all(&table(TREE), &[(20, other)]),
            Err(NestedError::OtherRoot {
                ns: 20,
                id: 200,
                ..
            })
        ));
        let shared_proc = table(
            "\
200 150 0:40 / / rw - overlay overlay rw
201 200 0:41 / /proc rw shared:9 - proc proc rw
",
        );
        let mut tree = table(TREE);
        tree[1].tags = vec!["shared:9".into()];
        assert!(matches!(
            plan_all(&tree, &[(20, shared_proc)]),
            Err(NestedError::LatePeer {
                ns: 20,
                id: 201,
                ..
            })
        ));
    }
}
