//! Mount namespaces, the pure part: a tree's mount table (`/proc/<pid>/mountinfo`) read and
//! turned into the plan a restore follows to make it again, CRIU's `mnt_entry` both ways, and
//! the split between what the restorer mounts and what the tree's init mounts (see
//! ARCHITECTURE.md, "Mount namespaces"). The syscalls are in `mnt_dump` and `mnt_restore`.
//!
//! Two facts of the kernel shape it. mountinfo lists mounts in creation order, not in tree
//! order: a runc container's read-only binds and masks of /proc come after their parents'
//! children but carry smaller (reused) ids, so [`plan`] sorts by parent. And a bind mount is
//! only told apart by its root inside the filesystem: `/bus` of the proc mounted at /proc is a
//! bind of /proc/bus, `/null` of the /dev tmpfs mounted on /proc/keys is a mask.

use std::collections::{HashMap, HashSet};

use crate::images::pb;

/// Image ids of mount namespaces: the dumper's (inventory's root_ids), the tree's own.
pub const HOST_NS_ID: u32 = 11;
pub const TREE_NS_ID: u32 = 12;
/// Image ids of cgroup namespaces: the dumper's, the tree's own.
pub const CGROUP_HOST_NS_ID: u32 = 13;
pub const CGROUP_TREE_NS_ID: u32 = 14;

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
    /// Set for a mount the caller declared external (`--external mnt[MOUNTPOINT]:KEY`, the
    /// RPC's ext_mnt): the restore binds what the caller maps KEY to.
    pub ext_key: Option<String>,
    /// An auto-detected external mount (see ns::mnt_ext) that is shared, but in a peer group
    /// of the tree's own rather than the host's (CRIU's `internal_sharing`).
    pub internal_sharing: bool,
    /// Of a filesystem type the caller asked to be mounted anew (CRIU's `--enable-fs`).
    pub anew: bool,
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
    #[error("mount {id} ({mountpoint}) of type {fstype} is not supported yet (one the dumper's namespace shows too is taken as external with --ext-mount-map auto; a slave of it also needs --enable-external-masters)")]
    Unsupported {
        id: u32,
        mountpoint: String,
        fstype: String,
    },
    #[error("the mount table has no root mount")]
    NoRoot,
    #[error("mount {id} ({mountpoint}) is {what}, which is not supported yet")]
    Propagation {
        id: u32,
        mountpoint: String,
        what: String,
    },
    #[error("mount {id} ({mountpoint}) binds part of {of}, which only the tree's init can mount; not supported yet")]
    BindOfLate {
        id: u32,
        mountpoint: String,
        of: String,
    },
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
            ext_key: None,
            internal_sharing: false,
            anew: false,
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
    /// A mount the caller declared external (its `ext_key`), or a v1 cgroup hierarchy's
    /// directory, which only the caller can map (runc maps each to the container's cgroup).
    External,
    /// In a nested mount namespace (see ns::mnt_nested): a copy of a filesystem another
    /// namespace of the tree mounts too (its tmpfs, devpts), taken from there so that both
    /// keep sharing it.
    Elsewhere,
}

/// One step of the plan, parents first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub mount: MountInfo,
    pub make: Make,
}

/// Virtual filesystems a restore mounts anew. binfmt_misc's registered formats are the
/// kernel's (of its user namespace), not saved: a new mount shows this host's.
const NEW_KINDS: &[&str] = &[
    "proc",
    "sysfs",
    "devpts",
    "mqueue",
    "cgroup2",
    "binfmt_misc",
];

/// Filesystems whose every whole mount is mounted anew, each showing the same thing again (a
/// proc of the pid namespace, a cgroup hierarchy); another whole mount of any other filesystem
/// is a bind of the first, sharing its files (two tmpfs mounts of one tmpfs stay one).
const ANEW_WHOLE: &[&str] = &["proc", "sysfs", "cgroup", "cgroup2"];

/// The root mount of a namespace's `table`: at `/`, its parent no mount of the table.
pub fn table_root(table: &[MountInfo]) -> Result<&MountInfo, MntError> {
    let ids: HashSet<u32> = table.iter().map(|m| m.id).collect();
    table
        .iter()
        .find(|m| m.mountpoint == "/" && !ids.contains(&m.parent))
        .ok_or(MntError::NoRoot)
}

/// The order and the way to make every mount of `table` (a tree's mount namespace), parents
/// before children. A filesystem type it cannot make is an error naming the mount.
pub fn plan(table: &[MountInfo]) -> Result<Vec<Planned>, MntError> {
    plan_with(table, &HashSet::new())
}

/// [`plan`] for a nested mount namespace: a mount of a filesystem in `elsewhere` (devices
/// another namespace of the tree makes) that this table does not mount whole first is
/// [`Make::Elsewhere`].
pub fn plan_with(
    table: &[MountInfo],
    elsewhere: &HashSet<(u32, u32)>,
) -> Result<Vec<Planned>, MntError> {
    let ids: HashSet<u32> = table.iter().map(|m| m.id).collect();
    let root = table_root(table)?;
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
    let mut bfs = vec![root];
    let mut i = 0;
    while i < bfs.len() {
        let mut kids = children.remove(&bfs[i].id).unwrap_or_default();
        kids.sort_by_key(|m| m.id);
        bfs.extend(kids);
        i += 1;
    }
    // The first mount of each filesystem that shows its root is what binds of it come from;
    // a bind waits for it (runc's /dev/console, a bind of /dev/pts/0, is a sibling of
    // /dev/pts with a smaller id).
    let mut source: HashMap<(u32, u32), u32> = HashMap::new();
    for m in bfs.iter().filter(|m| m.root == "/") {
        source.entry(m.dev).or_insert(m.id);
    }
    // A mount of a filesystem the tree only has from outside is a bind of the external mount
    // whose root holds its own (zdtm's mnt_ext_manual: binds of a declared mount inside).
    let external_source = |m: &MountInfo| {
        (m.ext_key.is_none() && !source.contains_key(&m.dev))
            .then(|| {
                table.iter().find(|e| {
                    e.ext_key.is_some()
                        && e.id != m.id
                        && e.dev == m.dev
                        && super::propagation::holds(&e.root, &m.root)
                })
            })
            .flatten()
    };
    // A mount whose path another mount covers without being its ancestor (propagation left
    // a copy under a bind stacked later: zdtm's overmount_with_shared_parent) can only be
    // reached before that one is made: it comes first.
    let tree = super::mnt_cover::Covering::new(table);
    let mut order: Vec<&MountInfo> = Vec::with_capacity(bfs.len());
    let mut placed: HashSet<u32> = HashSet::new();
    let mut left = bfs;
    while !left.is_empty() {
        let before = left.len();
        let waiting: Vec<&MountInfo> = left.clone();
        left.retain(|m| {
            let parent_ok = m.id == root.id || placed.contains(&m.parent);
            let source_ok = (m.root == "/"
                || source
                    .get(&m.dev)
                    .is_none_or(|s| *s == m.id || placed.contains(s)))
                && external_source(m).is_none_or(|e| placed.contains(&e.id));
            let covered_first = !waiting
                .iter()
                .any(|x| !placed.contains(&x.id) && tree.covers(m, x));
            if parent_ok && source_ok && covered_first {
                placed.insert(m.id);
                order.push(m);
                false
            } else {
                true
            }
        });
        if left.len() == before {
            // Binds waiting on each other: placed in tree order, and refused below.
            order.append(&mut left);
        }
    }
    let mut whole: HashMap<(u32, u32), u32> = HashMap::new();
    let mut out = Vec::with_capacity(order.len());
    for m in order {
        let make = if m.id == root.id {
            Make::Root
        } else if m.ext_key.is_some() {
            Make::External
        } else if let Some(&of) = whole
            .get(&m.dev)
            .filter(|_| m.root != "/" || !ANEW_WHOLE.contains(&m.fstype.as_str()))
        {
            Make::Bind {
                of,
                sub: m.root.clone(),
            }
        } else if let Some(e) = external_source(m) {
            Make::Bind {
                of: e.id,
                sub: within(&e.root, &m.root).unwrap_or_else(|| "/".into()),
            }
        } else if m.fstype == "cgroup" && m.root == "/" {
            // A whole hierarchy (of the tree's cgroup namespace, when it has one): mounted
            // anew by the init, in that namespace.
            Make::New
        } else if m.fstype == "cgroup" {
            Make::External
        } else if let Some(sub) = (m.dev == root.dev)
            .then(|| within(&root.root, &m.root))
            .flatten()
        {
            // A bind of a directory of the root's filesystem the root shows (a container's
            // `mount --bind /data /mnt`): made from the new root.
            Make::Bind { of: root.id, sub }
        } else if elsewhere.contains(&m.dev)
            && !(m.root == "/" && ANEW_WHOLE.contains(&m.fstype.as_str()))
        {
            Make::Elsewhere
        } else if m.root != "/" {
            return Err(MntError::Unsupported {
                id: m.id,
                mountpoint: m.mountpoint.clone(),
                fstype: format!("{} (a bind of {} from outside the tree)", m.fstype, m.root),
            });
        } else if m.fstype == "tmpfs" {
            Make::Tmpfs
        } else if m.anew || NEW_KINDS.contains(&m.fstype.as_str()) {
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

/// Which mounts a restore makes where (see ARCHITECTURE.md, "Mount namespaces").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Made by the restorer under the new root before the pool is opened.
    Early,
    /// Made by the tree's init after it pivots into the new root: a proc, a new cgroup
    /// hierarchy, and what lies under them, because a proc shows the pid namespace and a
    /// cgroup mount the cgroup namespace of whoever mounts it.
    Late,
}

/// A tree with a cgroup namespace of its own: each cgroup mount whose root is the tree's
/// cgroup in that hierarchy (as `cgroup_file`, the root's /proc/<pid>/cgroup read from
/// outside, gives it) is the namespace's root, `/` as the tree sees it.
pub fn to_cgroupns_view(table: &mut [MountInfo], cgroup_file: &str) {
    let paths: Vec<(Vec<&str>, &str)> = cgroup_file
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, ctrls, path) = (f.next()?, f.next()?, f.next()?);
            Some((ctrls.split(',').filter(|c| !c.is_empty()).collect(), path))
        })
        .collect();
    for m in table.iter_mut().filter(|m| m.fstype.starts_with("cgroup")) {
        let want: Vec<&str> = if m.fstype == "cgroup2" {
            Vec::new()
        } else {
            m.super_opts
                .iter()
                .map(String::as_str)
                .filter(|o| {
                    !matches!(*o, "rw" | "ro" | "noprefix" | "xattr" | "clone_children")
                        && !o.starts_with("release_agent=")
                })
                .collect()
        };
        let Some((_, path)) = paths.iter().find(|(c, _)| {
            let mut a = c.clone();
            let mut b = want.clone();
            a.sort_unstable();
            b.sort_unstable();
            a == b
        }) else {
            continue;
        };
        if m.root == *path {
            m.root = "/".into();
        } else if let Some(rest) = m.root.strip_prefix(&format!("{path}/")) {
            m.root = format!("/{rest}");
        }
    }
}

/// The phase of each planned mount (same order as `plan`): a proc and everything under it are
/// late. A mount outside a proc that binds part of one cannot be made by either: refused.
pub fn phases(plan: &[Planned]) -> Result<Vec<Phase>, MntError> {
    let mut late: HashSet<u32> = HashSet::new();
    let mut out = Vec::with_capacity(plan.len());
    for p in plan {
        let m = &p.mount;
        let cgroup_fs = matches!(m.fstype.as_str(), "cgroup" | "cgroup2") && p.make == Make::New;
        // A pty's node exists only once the restore made the pty (runc's /dev/console).
        let pty_node = m.fstype == "devpts" && matches!(p.make, Make::Bind { .. });
        let is_late = m.fstype == "proc" || cgroup_fs || pty_node || late.contains(&m.parent);
        if let Make::Bind { of, .. } = &p.make {
            if late.contains(of) && !is_late {
                return Err(MntError::BindOfLate {
                    id: m.id,
                    mountpoint: m.mountpoint.clone(),
                    of: m.fstype.clone(),
                });
            }
        }
        if is_late {
            late.insert(m.id);
            out.push(Phase::Late);
        } else {
            out.push(Phase::Early);
        }
    }
    Ok(out)
}

/// Per-mount options as mount(2) flags. mountinfo shows no atime option for strictatime
/// (runc mounts /dev so), and mount(2) without one means relatime: so none means strict.
pub fn mount_flags(opts: &[String]) -> u64 {
    let mut f = 0u64;
    if !opts
        .iter()
        .any(|o| matches!(o.as_str(), "relatime" | "noatime" | "strictatime"))
    {
        f |= libc::MS_STRICTATIME;
    }
    for o in opts {
        f |= match o.as_str() {
            "ro" => libc::MS_RDONLY,
            "nosuid" => libc::MS_NOSUID,
            "nodev" => libc::MS_NODEV,
            "noexec" => libc::MS_NOEXEC,
            "noatime" => libc::MS_NOATIME,
            "nodiratime" => libc::MS_NODIRATIME,
            "relatime" => libc::MS_RELATIME,
            "strictatime" => libc::MS_STRICTATIME,
            _ => 0,
        };
    }
    f
}

/// mount(2) flags back as mountinfo's per-mount options.
pub fn flag_opts(flags: u64) -> Vec<String> {
    let mut v = vec![if flags & libc::MS_RDONLY != 0 {
        "ro"
    } else {
        "rw"
    }
    .to_string()];
    for (bit, name) in [
        (libc::MS_NOSUID, "nosuid"),
        (libc::MS_NODEV, "nodev"),
        (libc::MS_NOEXEC, "noexec"),
        (libc::MS_NOATIME, "noatime"),
        (libc::MS_NODIRATIME, "nodiratime"),
        (libc::MS_RELATIME, "relatime"),
        (libc::MS_STRICTATIME, "strictatime"),
    ] {
        if flags & bit != 0 {
            v.push(name.to_string());
        }
    }
    v
}

/// The filesystem's own options for mount(2)'s data: without ro/rw, which are flags.
pub fn fs_data(super_opts: &[String]) -> String {
    super_opts
        .iter()
        .filter(|o| *o != "ro" && *o != "rw")
        .cloned()
        .collect::<Vec<_>>()
        .join(",")
}

/// The kernel's dev_t encoding of `major:minor` (CRIU's `MKKDEV`, what `root_dev` and the
/// tmpfs image names carry).
pub fn kdev(dev: (u32, u32)) -> u32 {
    (dev.0 << 20) | (dev.1 & 0xfffff)
}

const FSTYPES: &[(&str, pb::Fstype)] = &[
    ("proc", pb::Fstype::Proc),
    ("sysfs", pb::Fstype::Sysfs),
    ("devtmpfs", pb::Fstype::Devtmpfs),
    ("binfmt_misc", pb::Fstype::BinfmtMisc),
    ("tmpfs", pb::Fstype::Tmpfs),
    ("devpts", pb::Fstype::Devpts),
    ("cgroup", pb::Fstype::Cgroup),
    ("mqueue", pb::Fstype::Mqueue),
    ("overlay", pb::Fstype::Overlayfs),
    ("cgroup2", pb::Fstype::Cgroup2),
    ("pstore", pb::Fstype::Pstore),
    ("securityfs", pb::Fstype::Securityfs),
    ("fusectl", pb::Fstype::Fusectl),
    ("debugfs", pb::Fstype::Debugfs),
    ("autofs", pb::Fstype::Autofs),
    ("tracefs", pb::Fstype::Tracefs),
];

/// One mount as CRIU's `mnt_entry`.
pub fn to_entry(m: &MountInfo) -> pb::MntEntry {
    let tag = |p: &str| {
        m.tags
            .iter()
            .find_map(|t| t.strip_prefix(p).and_then(|v| v.parse().ok()))
    };
    // As CRIU writes them: a type it numbers by its number alone; any other by name with
    // AUTO when it is mounted anew by type (`--enable-fs`), else UNSUPPORTED with no name
    // (an external mount or a bind): CRIU refuses a name on any but AUTO.
    let (fstype, fsname) = match FSTYPES.iter().find(|(n, _)| *n == m.fstype) {
        Some((_, t)) => (*t, None),
        None if m.anew => (pb::Fstype::Auto, Some(m.fstype.clone())),
        None => (pb::Fstype::Unsupported, None),
    };
    pb::MntEntry {
        fstype: fstype as u32,
        mnt_id: m.id,
        root_dev: kdev(m.dev),
        parent_mnt_id: m.parent,
        flags: mount_flags(&m.mount_opts) as u32,
        root: m.root.clone(),
        mountpoint: m.mountpoint.clone(),
        source: m.source.clone(),
        options: fs_data(&m.super_opts),
        shared_id: tag("shared:"),
        master_id: tag("master:"),
        with_plugin: None,
        // The old form of `ext_key` (the key in `root`): CRIU refuses an entry with both.
        ext_mount: None,
        fsname,
        internal_sharing: m.internal_sharing.then_some(true),
        deleted: None,
        sb_flags: Some(if m.super_opts.iter().any(|o| o == "ro") {
            libc::MS_RDONLY as u32
        } else {
            0
        }),
        ext_key: m.ext_key.clone(),
    }
}

/// A `mnt_entry` back as a mountinfo line (CRIU's images name the type by number; fsname,
/// when present, by name).
pub fn from_entry(e: &pb::MntEntry) -> MountInfo {
    let fstype = e
        .fsname
        .clone()
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| {
            FSTYPES
                .iter()
                .find(|(_, t)| *t as u32 == e.fstype)
                .map_or("unsupported", |(n, _)| n)
                .to_string()
        });
    let mut tags = Vec::new();
    if let Some(s) = e.shared_id.filter(|&s| s != 0) {
        tags.push(format!("shared:{s}"));
    }
    if let Some(s) = e.master_id.filter(|&s| s != 0) {
        tags.push(format!("master:{s}"));
    }
    let ro = e.sb_flags.unwrap_or(0) & libc::MS_RDONLY as u32 != 0;
    let mut super_opts = vec![if ro { "ro" } else { "rw" }.to_string()];
    super_opts.extend(
        e.options
            .split(',')
            .filter(|o| !o.is_empty())
            .map(str::to_string),
    );
    MountInfo {
        id: e.mnt_id,
        parent: e.parent_mnt_id,
        dev: (e.root_dev >> 20, e.root_dev & 0xfffff),
        root: e.root.clone(),
        mountpoint: e.mountpoint.clone(),
        mount_opts: flag_opts(e.flags as u64),
        tags,
        fstype,
        source: e.source.clone(),
        super_opts,
        ext_key: e
            .ext_key
            .clone()
            // CRIU's old form: the key in `root`.
            .or_else(|| e.ext_mount.filter(|&x| x).map(|_| e.root.clone())),
        internal_sharing: e.internal_sharing.unwrap_or(false),
        // CRIU's AUTO: mounted by its type's name (`--enable-fs` at the dump).
        anew: e.fstype == pb::Fstype::Auto as u32 && e.root == "/",
    }
}

/// Marks the whole mounts of the filesystem types the caller asked to be mounted anew by type,
/// source and options (CRIU's `--enable-fs hugetlbfs,tracefs`, or `all`: every type stasis
/// cannot make otherwise). A tmpfs keeps its content either way.
pub fn mark_mount_anew(table: &mut [MountInfo], enable_fs: &[String]) {
    let all = enable_fs.iter().any(|f| f == "all");
    for m in table.iter_mut() {
        if m.root == "/" && (all || enable_fs.contains(&m.fstype)) {
            m.anew = true;
        }
    }
}

/// Marks the mounts the caller declared external: `(mountpoint, key)` pairs, as runc's
/// ext_mnt (key and value both the mountpoint) and `--external mnt[MOUNTPOINT]:KEY` give them.
pub fn mark_external(table: &mut [MountInfo], ext: &[(String, String)]) {
    for m in table.iter_mut() {
        if let Some((_, key)) = ext.iter().find(|(mp, _)| *mp == m.mountpoint) {
            m.ext_key = Some(key.clone());
        }
    }
}

/// `inner` as a path under `root` (both directories of one filesystem), if `root` holds it.
pub(crate) fn within(root: &str, inner: &str) -> Option<String> {
    if !super::propagation::holds(root, inner) {
        return None;
    }
    let rest = inner[root.trim_end_matches('/').len()..].to_string();
    Some(if rest.is_empty() { "/".into() } else { rest })
}

/// `/a/b` under `root`, without doubling the slash.
pub fn under(root: &str, path: &str) -> String {
    format!(
        "{}/{}",
        root.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
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
    fn enabled_filesystems_are_mounted_anew_and_others_refused() {
        let text = "1 0 8:1 /r / rw - ext4 /dev/sda1 rw\n\
                    2 1 0:50 / /dev/hugepages rw - hugetlbfs hugetlbfs rw,pagesize=2M\n";
        let mut t = parse_mountinfo(text).unwrap();
        assert!(matches!(plan(&t), Err(MntError::Unsupported { id: 2, .. })));
        mark_mount_anew(&mut t, &["hugetlbfs".to_string(), "tracefs".to_string()]);
        let p = plan(&t).unwrap();
        assert_eq!(p[1].make, Make::New);
        let mut t = parse_mountinfo(text).unwrap();
        mark_mount_anew(&mut t, &["all".to_string()]);
        assert_eq!(plan(&t).unwrap()[1].make, Make::New);
    }

    #[test]
    fn a_mount_made_anew_by_type_is_written_auto_with_its_name() {
        let mut t = parse_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 0:50 / /dev/hugepages rw - hugetlbfs none rw,pagesize=2M\n",
        )
        .unwrap();
        mark_mount_anew(&mut t, &["hugetlbfs".to_string()]);
        let e = to_entry(&t[1]);
        assert_eq!(e.fstype, pb::Fstype::Auto as u32);
        assert_eq!(e.fsname.as_deref(), Some("hugetlbfs"));
        let back = from_entry(&e);
        assert_eq!(back.fstype, "hugetlbfs");
        assert!(back.anew, "AUTO is mounted anew by its name");
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
    fn a_second_whole_mount_of_a_tmpfs_is_a_bind_of_the_first() {
        let t = parse_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 0:5 / /a rw - tmpfs t rw\n\
             3 1 0:5 / /b rw - tmpfs t rw\n4 1 0:6 / /p rw - proc proc rw\n\
             5 1 0:6 / /q rw - proc proc rw\n",
        )
        .unwrap();
        let p = plan(&t).unwrap();
        let make = |mp: &str| {
            p.iter()
                .find(|x| x.mount.mountpoint == mp)
                .unwrap()
                .make
                .clone()
        };
        assert_eq!(make("/a"), Make::Tmpfs);
        assert_eq!(
            make("/b"),
            Make::Bind {
                of: 2,
                sub: "/".into()
            }
        );
        assert_eq!(make("/q"), Make::New, "a proc shows the same again");
    }

    #[test]
    fn a_bind_of_a_directory_of_the_roots_filesystem_is_made_from_the_root() {
        let t = parse_mountinfo(
            "1 0 8:1 /b/rootfs / rw - ext4 /dev/sda rw\n2 1 8:1 /b/rootfs/data /mnt rw - ext4 /dev/sda rw\n\
             3 1 8:1 /b/rootfs /again rw - ext4 /dev/sda rw\n",
        )
        .unwrap();
        let p = plan(&t).unwrap();
        assert_eq!(
            p[1].make,
            Make::Bind {
                of: 1,
                sub: "/data".into()
            }
        );
        assert_eq!(
            p[2].make,
            Make::Bind {
                of: 1,
                sub: "/".into()
            }
        );
        let outside = parse_mountinfo(
            "1 0 8:1 /b/rootfs / rw - ext4 /dev/sda rw\n2 1 8:1 /b/other /mnt rw - ext4 /dev/sda rw\n",
        )
        .unwrap();
        assert!(matches!(
            plan(&outside),
            Err(MntError::Unsupported { id: 2, .. })
        ));
    }

    #[test]
    fn a_mount_another_covers_is_made_before_it() {
        // 78 (a propagated copy at /t/a/b/c, child of /t) lies under /t/a, a bind stacked on
        // /t later; 77 is 76's own child.
        let t = parse_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n75 1 8:1 /t /t rw - ext4 /dev/sda rw\n\
             76 75 8:1 /t/a/b /t/a rw - ext4 /dev/sda rw\n77 76 8:1 /t/d /t/a/c rw - ext4 /dev/sda rw\n\
             78 75 8:1 /t/d /t/a/b/c rw - ext4 /dev/sda rw\n",
        )
        .unwrap();
        let p = plan(&t).unwrap();
        let pos = |id: u32| p.iter().position(|x| x.mount.id == id).unwrap();
        assert!(
            pos(78) < pos(76),
            "{:?}",
            p.iter().map(|x| x.mount.id).collect::<Vec<_>>()
        );
        assert!(pos(75) < pos(78) && pos(76) < pos(77));
        // zdtm's mntns_remap: 81 moved onto the bind 80 covers 82 (80's child), whose copy 84
        // and their children 85, 86 lie on both; 86, reached through 81, does not wait for 82.
        let t = parse_mountinfo(
            "49 1 254:0 / / rw - ext4 /dev/vda rw\n78 49 0:40 / /m rw - tmpfs z rw\n\
             80 78 0:40 /1 /m/1 rw - tmpfs z rw\n81 80 0:42 / /m/1 rw - tmpfs z rw\n\
             82 80 0:40 /1/a /m/1/a rw - tmpfs z rw\n84 81 0:40 /1/a /m/1/a rw - tmpfs z rw\n\
             85 82 0:44 / /m/1/a/c rw - tmpfs z rw\n86 84 0:44 / /m/1/a/c rw - tmpfs z rw\n",
        )
        .unwrap();
        let order: Vec<u32> = plan(&t).unwrap().iter().map(|x| x.mount.id).collect();
        assert_eq!(order, [49, 78, 80, 82, 85, 81, 84, 86]);
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
        let bin = "1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 0:9 / /b rw - binfmt_misc b rw\n";
        assert_eq!(
            plan(&parse_mountinfo(bin).unwrap()).unwrap()[1].make,
            Make::New
        );
    }

    #[test]
    fn entries_round_trip_and_externals_win() {
        let mut t = parse_mountinfo(RUNC).unwrap();
        mark_external(
            &mut t,
            &[
                ("/proc/keys".into(), "/proc/keys".into()),
                ("/sys/fs/cgroup/cpu".into(), "cpu".into()),
            ],
        );
        for m in &t {
            let back = from_entry(&to_entry(m));
            assert_eq!(back.id, m.id);
            assert_eq!(back.parent, m.parent);
            assert_eq!(back.dev, m.dev);
            assert_eq!(back.root, m.root);
            let entry = to_entry(m);
            if FSTYPES.iter().any(|(n, _)| *n == m.fstype) {
                assert_eq!(back.fstype, m.fstype);
                assert_eq!(entry.fsname, None, "CRIU refuses a name on a numbered type");
            } else {
                // As CRIU: no name on an UNSUPPORTED one.
                assert_eq!(entry.fstype, pb::Fstype::Unsupported as u32);
                assert_eq!(entry.fsname, None);
                assert_eq!(back.fstype, "unsupported");
            }
            assert_eq!(back.ext_key, m.ext_key);
            assert_eq!(
                entry.ext_mount, None,
                "CRIU refuses ext_mount beside ext_key"
            );
            assert_eq!(
                mount_flags(&back.mount_opts),
                mount_flags(&m.mount_opts),
                "{}",
                m.mountpoint
            );
            assert_eq!(fs_data(&back.super_opts), fs_data(&m.super_opts));
        }
        let p = plan(&t).unwrap();
        let make = |mp: &str| {
            p.iter()
                .find(|x| x.mount.mountpoint == mp)
                .unwrap()
                .make
                .clone()
        };
        assert_eq!(make("/proc/keys"), Make::External);
        assert_eq!(make("/sys/fs/cgroup/cpu"), Make::External);
        assert_eq!(to_entry(&t[2]).root_dev, 42);
        // /dev shows no atime option: runc mounted it strictatime.
        assert_ne!(to_entry(&t[2]).flags as u64 & libc::MS_STRICTATIME, 0);
        assert_eq!(to_entry(&t[1]).flags as u64 & libc::MS_STRICTATIME, 0);
        assert_eq!(to_entry(&t[2]).options, "size=65536k,mode=755");
    }

    #[test]
    fn cgroup_mounts_seen_from_the_trees_cgroup_namespace() {
        let mut t = parse_mountinfo(RUNC).unwrap();
        let cg = "12:cpu:/rb1\n9:name=systemd:/rb1\n\
                  5:memory:/process_api/21b8b85039d7e596bbffdbb50d8830cc/rb1\n0::/\n";
        to_cgroupns_view(&mut t, cg);
        let root = |mp: &str| t.iter().find(|m| m.mountpoint == mp).unwrap().root.clone();
        assert_eq!(root("/sys/fs/cgroup/cpu"), "/");
        assert_eq!(root("/sys/fs/cgroup/systemd"), "/");
        assert_eq!(root("/sys/fs/cgroup/memory"), "/");
        // A controller the file does not name stays as it was.
        assert_eq!(root("/sys/fs/cgroup/pids"), "/rb1");
        let p = plan(&t).unwrap();
        let ph = phases(&p).unwrap();
        let at = |mp: &str| p.iter().position(|x| x.mount.mountpoint == mp).unwrap();
        assert_eq!(p[at("/sys/fs/cgroup/cpu")].make, Make::New);
        assert_eq!(ph[at("/sys/fs/cgroup/cpu")], Phase::Late);
        assert_eq!(p[at("/sys/fs/cgroup/pids")].make, Make::External);
        assert_eq!(ph[at("/sys/fs/cgroup")], Phase::Early);
    }

    #[test]
    fn a_console_bind_waits_for_its_devpts_and_is_late() {
        let t = parse_mountinfo(
            "70 47 254:0 /r / rw - ext4 /dev/vda rw\n72 70 0:42 / /dev rw - tmpfs tmpfs rw\n\
             73 72 0:43 / /dev/pts rw - devpts devpts rw\n48 72 0:43 /0 /dev/console rw - devpts devpts rw\n",
        )
        .unwrap();
        let p = plan(&t).unwrap();
        let at = |mp: &str| p.iter().position(|x| x.mount.mountpoint == mp).unwrap();
        assert!(at("/dev/pts") < at("/dev/console"));
        assert_eq!(
            p[at("/dev/console")].make,
            Make::Bind {
                of: 73,
                sub: "/0".into()
            }
        );
        assert_eq!(phases(&p).unwrap()[at("/dev/console")], Phase::Late);
    }

    #[test]
    fn proc_and_below_is_late() {
        let t = parse_mountinfo(RUNC).unwrap();
        let p = plan(&t).unwrap();
        let ph = phases(&p).unwrap();
        let phase = |mp: &str| ph[p.iter().position(|x| x.mount.mountpoint == mp).unwrap()];
        assert_eq!(phase("/"), Phase::Early);
        assert_eq!(phase("/dev"), Phase::Early);
        assert_eq!(phase("/sys/fs/cgroup/cpu"), Phase::Early);
        assert_eq!(phase("/proc"), Phase::Late);
        assert_eq!(phase("/proc/keys"), Phase::Late);
        assert_eq!(phase("/proc/acpi"), Phase::Late);
        // A bind elsewhere of a tmpfs mounted under /proc could be made by neither.
        let odd = parse_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/sda rw\n2 1 0:5 / /proc rw - proc proc rw\n\
             4 2 0:6 / /proc/t rw - tmpfs t rw\n5 1 0:7 / /a rw - tmpfs a rw\n\
             3 5 0:6 /d /a/b rw - tmpfs t rw\n",
        )
        .unwrap();
        assert!(matches!(
            phases(&plan(&odd).unwrap()),
            Err(MntError::BindOfLate { id: 3, .. })
        ));
        assert!(crate::ns::propagation::plan(&t, &HashSet::new()).is_ok());
        assert_eq!(under("/run/x/criu-root/", "/proc"), "/run/x/criu-root/proc");
    }
}
