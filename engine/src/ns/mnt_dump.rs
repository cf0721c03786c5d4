//! Mount namespaces, the dump's part: the tree's tables (its own namespace's and the nested
//! ones', see ns::mnt_nested), checked to be restorable before anything is written, then
//! written with each tmpfs's content. The restore's part is `mnt_sys`.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use super::mnt::{self, Make, MountInfo};
use super::mnt_sys::{copy_in, MntNsError};
use super::propagation;
use crate::images::{magic, names, ImageKind, ImageWriter};

/// Whether the tree owns its cgroup namespace.
pub fn tree_cgroupns(root: u32, live: &[u32]) -> Result<bool, MntNsError> {
    super::tree_owns("cgroup", root, live).map_err(|e| match e {
        super::OwnsError::Mixed { pid } => MntNsError::Mixed { pid },
        super::OwnsError::Read { path, source } => MntNsError::Read { path, source },
    })
}

/// The tree's mount tables: its own namespace's, and those of the namespaces nested in it.
pub struct TreeMounts {
    pub table: Vec<MountInfo>,
    pub nested: Vec<super::mnt_nested_sys::NestedNs>,
}

impl TreeMounts {
    /// (id, table) of each nested namespace, as [`super::mnt_nested::plan_all`] takes them.
    pub fn nested_tables(&self) -> Vec<(u32, Vec<MountInfo>)> {
        self.nested
            .iter()
            .map(|n| (n.id, n.table.clone()))
            .collect()
    }
}

/// Options for reading a table of the tree (see [`tree_mounts`]).
pub struct ReadOpts<'a> {
    pub ext: &'a [(String, String)],
    pub auto: Option<super::mnt_ext::AutoExternal>,
    pub enable_fs: &'a [String],
    pub cgroupns: bool,
}

/// The tree's mount tables, when it owns its mount namespace (tasks of the tree in other
/// namespaces of their own are nested ones); its external mounts marked by `ext`
/// (mountpoint, key) and checked to be restorable. With a cgroup namespace of its own
/// (`cgroupns`), cgroup mounts are recorded as the tree sees them.
pub fn tree_mounts(
    root: u32,
    live: &[u32],
    o: &ReadOpts<'_>,
) -> Result<Option<TreeMounts>, MntNsError> {
    let Some(groups) = super::mnt_nested_sys::by_namespace(root, live)? else {
        return Ok(None);
    };
    let table = read_table(root, o)?;
    let mut nested = Vec::new();
    // A mountpoint the caller declared external names a mount of the tree's namespace; a
    // nested namespace's mount there may be another (zdtm's mnt_ext_collision).
    let nested_opts = ReadOpts { ext: &[], ..*o };
    for (i, pids) in groups.into_iter().skip(1).enumerate() {
        let mut nested_table = read_table(pids[0], &nested_opts)?;
        super::mnt_nested::inherit_external(&table, &mut nested_table);
        nested.push(super::mnt_nested_sys::NestedNs {
            id: super::mnt_nested::FIRST_NESTED_ID + i as u32,
            table: nested_table,
            pids,
        });
    }
    let mounts = TreeMounts { table, nested };
    let pairs = mounts.nested_tables();
    propagation::plan(
        &super::mnt_nested::all_mounts(&mounts.table, &pairs),
        &our_shared_groups(),
    )?;
    let plan = mnt::plan(&mounts.table)?;
    mnt::phases(&plan)?;
    let nested_plans = super::mnt_nested::plan_all(&mounts.table, &pairs)?;
    if let Some(p) = plan
        .iter()
        .chain(nested_plans.iter().flat_map(|n| n.plan.iter()))
        .find(|p| p.make == Make::External && p.mount.ext_key.is_none())
    {
        return Err(MntNsError::UndeclaredCgroup {
            id: p.mount.id,
            mountpoint: p.mount.mountpoint.clone(),
        });
    }
    Ok(Some(mounts))
}

/// Task `pid`'s mount table, marked as `o` says.
fn read_table(pid: u32, o: &ReadOpts<'_>) -> Result<Vec<MountInfo>, MntNsError> {
    let path = format!("/proc/{pid}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| MntNsError::Read {
        path: path.clone(),
        source,
    })?;
    let mut table = mnt::parse_mountinfo(&text)?;
    if o.cgroupns {
        let path = format!("/proc/{pid}/cgroup");
        let cg =
            std::fs::read_to_string(&path).map_err(|source| MntNsError::Read { path, source })?;
        mnt::to_cgroupns_view(&mut table, &cg);
    }
    mnt::mark_external(&mut table, o.ext);
    mnt::mark_mount_anew(&mut table, o.enable_fs);
    if let Some(auto) = o.auto {
        let ours = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|source| MntNsError::Read {
                path: "/proc/self/mountinfo".into(),
                source,
            })
            .and_then(|t| Ok(mnt::parse_mountinfo(&t)?))?;
        let n = super::mnt_ext::mark_auto(&mut table, &ours, auto);
        log::info!("{n} mounts of task {pid} found external (--ext-mount-map auto)");
    }
    Ok(table)
}

/// The peer groups of the dumper's own mounts: a tree's mount shared with one of them has
/// peers outside the tree.
fn our_shared_groups() -> std::collections::HashSet<u32> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .and_then(|t| mnt::parse_mountinfo(&t).ok())
        .map(|table| table.iter().filter_map(propagation::shared_group).collect())
        .unwrap_or_default()
}

/// Writes `mountpoints-<id>.img` of each namespace and each tmpfs's content, read through a
/// task of the namespace that mounts it.
pub fn dump(root: u32, mounts: &TreeMounts, dir: &Path) -> Result<(), MntNsError> {
    let mut saved = std::collections::HashSet::new();
    write_table(
        root,
        mnt::TREE_NS_ID,
        &mounts.table,
        &mnt::plan(&mounts.table)?,
        dir,
        &mut saved,
    )?;
    let plans = super::mnt_nested::plan_all(&mounts.table, &mounts.nested_tables())?;
    for (n, p) in mounts.nested.iter().zip(&plans) {
        // A root that is a tmpfs of its own is saved as any tmpfs.
        let mut plan = p.plan.clone();
        if p.root == super::mnt_nested::NestedRoot::Tmpfs {
            plan[0].make = Make::Tmpfs;
        }
        write_table(n.pids[0], n.id, &n.table, &plan, dir, &mut saved)?;
    }
    Ok(())
}

fn write_table(
    pid: u32,
    ns_id: u32,
    table: &[MountInfo],
    plan: &[mnt::Planned],
    dir: &Path,
    saved: &mut std::collections::HashSet<u32>,
) -> Result<(), MntNsError> {
    let mut w = ImageWriter::new(ImageKind::Normal, magic::MNTS);
    for m in table {
        w.push(&mnt::to_entry(m));
    }
    let file = dir.join(names::mountpoints(ns_id));
    crate::private::write_private(&file, &w.into_bytes()).map_err(|source| MntNsError::Write {
        path: file.display().to_string(),
        source,
    })?;
    for p in plan.iter().filter(|p| p.make == Make::Tmpfs) {
        use std::os::unix::fs::MetadataExt;
        if !saved.insert(mnt::kdev(p.mount.dev)) {
            continue;
        }
        // Through a copy of the mount without what is mounted on it: files a submount hides
        // are the tmpfs's too (zdtm's tempfs). The mounted path when no copy can be made.
        let clone = clone_in_tree(pid, &p.mount.mountpoint)
            .map_err(|e| log::info!("{}: no copy of the mount ({e})", p.mount.mountpoint))
            .ok();
        let at = match &clone {
            // "/." so that the root's own metadata is the directory's, not the fd link's.
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}/.", fd.as_raw_fd())),
            None => PathBuf::from(mnt::under(
                &format!("/proc/{pid}/root"),
                &p.mount.mountpoint,
            )),
        };
        let dev = std::fs::metadata(&at)
            .map_err(|source| MntNsError::Read {
                path: at.display().to_string(),
                source,
            })?
            .dev();
        let out = dir.join(names::tmpfs_dev(mnt::kdev(p.mount.dev)));
        super::tmpfs::save(&at, dev, &out)?;
    }
    Ok(())
}

/// A copy, without its submounts, of the mount at `mountpoint` of task `pid`'s namespace.
fn clone_in_tree(pid: u32, mountpoint: &str) -> std::io::Result<OwnedFd> {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt"))?;
    copy_in(ns.as_fd(), mountpoint)
}
