//! Mount namespaces, the syscall part: the dump reads the tree's mount table and saves each
//! tmpfs; the restore makes the table again under the caller's root in two phases (see
//! ARCHITECTURE.md, "Mount namespaces"):
//! 1. [`build`]: the restoring thread unshares a mount namespace (a thread may: unshare
//!    implies `CLONE_FS`), makes every mount private, binds the root onto itself and makes
//!    every mount except a proc and what lies under it, with each tmpfs's content. The pool
//!    then opens the tree's files at `<root>/<path>` in that namespace, so their mounts are the
//!    tree's own; [`Early::leave`] takes the thread back to its namespace before the fork.
//! 2. the root's stub (`restore/stub.rs`) `setns`es into that namespace, pivots into the root
//!    and makes the rest ([`LateMount`]): a proc shows the pid namespace of whoever mounts it,
//!    and the stub is the init of the tree's.

use std::ffi::CString;
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};

use super::mnt::{self, Make, MountInfo, Phase};
use super::mnt_stage::{defer_read_only, open_external_sources, yard_if_slash, ReadOnly};
use super::propagation;
use crate::images::{magic, names, ImageKind, ImageWriter};

#[derive(Debug, thiserror::Error)]
pub enum MntNsError {
    #[error(transparent)]
    Table(#[from] mnt::MntError),
    #[error(transparent)]
    Tmpfs(#[from] super::tmpfs::TmpfsError),
    #[error("process {pid} is in another mount namespace than the tree's root")]
    Mixed { pid: u32 },
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("writing {path}")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("mount {id} ({mountpoint}) is a cgroup hierarchy from outside the tree: declare it external (--external mnt[{mountpoint}]:KEY, runc's ext_mnt)")]
    UndeclaredCgroup { id: u32, mountpoint: String },
    #[error("the tree had a mount namespace of its own: the restore needs its root (--root, the RPC's root; --root / for a host process whose namespace is a copy of the host's)")]
    NoRoot,
    #[error("mount {id} ({mountpoint}) was external with key '{key}': map it to a path here (--external mnt[{key}]:PATH, runc's ext_mnt)")]
    Unmapped {
        id: u32,
        mountpoint: String,
        key: String,
    },
    #[error(
        "mount {id} ({mountpoint}) was found external at dump (--ext-mount-map auto): restore \
         with --ext-mount-map auto (or --external mnt[]) to bind the host path it showed"
    )]
    AutoExternal { id: u32, mountpoint: String },
    #[error("making mount {id} at {target}: {what}")]
    Mount {
        id: u32,
        target: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Ns {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Whether the tree owns its cgroup namespace.
pub fn tree_cgroupns(root: u32, live: &[u32]) -> Result<bool, MntNsError> {
    super::tree_owns("cgroup", root, live).map_err(|e| match e {
        super::OwnsError::Mixed { pid } => MntNsError::Mixed { pid },
        super::OwnsError::Read { path, source } => MntNsError::Read { path, source },
    })
}

/// The tree's mount table, when it owns its mount namespace; its external mounts marked by
/// `ext` (mountpoint, key) and checked to be restorable. With a cgroup namespace of its own
/// (`cgroupns`), cgroup mounts are recorded as the tree sees them.
pub fn tree_mounts(
    root: u32,
    live: &[u32],
    ext: &[(String, String)],
    auto: Option<super::mnt_ext::AutoExternal>,
    enable_fs: &[String],
    cgroupns: bool,
) -> Result<Option<Vec<MountInfo>>, MntNsError> {
    match super::tree_owns("mnt", root, live) {
        Ok(false) => return Ok(None),
        Ok(true) => {}
        Err(super::OwnsError::Mixed { pid }) => return Err(MntNsError::Mixed { pid }),
        Err(super::OwnsError::Read { path, source }) => {
            return Err(MntNsError::Read { path, source })
        }
    }
    let path = format!("/proc/{root}/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| MntNsError::Read {
        path: path.clone(),
        source,
    })?;
    let mut table = mnt::parse_mountinfo(&text)?;
    if cgroupns {
        let path = format!("/proc/{root}/cgroup");
        let cg =
            std::fs::read_to_string(&path).map_err(|source| MntNsError::Read { path, source })?;
        mnt::to_cgroupns_view(&mut table, &cg);
    }
    mnt::mark_external(&mut table, ext);
    mnt::mark_mount_anew(&mut table, enable_fs);
    if let Some(auto) = auto {
        let ours = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|source| MntNsError::Read {
                path: "/proc/self/mountinfo".into(),
                source,
            })
            .and_then(|t| Ok(mnt::parse_mountinfo(&t)?))?;
        let n = super::mnt_ext::mark_auto(&mut table, &ours, auto);
        log::info!("{n} mounts of the tree found external (--ext-mount-map auto)");
    }
    propagation::plan(&table, &our_shared_groups())?;
    let plan = mnt::plan(&table)?;
    mnt::phases(&plan)?;
    if let Some(p) = plan
        .iter()
        .find(|p| p.make == Make::External && p.mount.ext_key.is_none())
    {
        return Err(MntNsError::UndeclaredCgroup {
            id: p.mount.id,
            mountpoint: p.mount.mountpoint.clone(),
        });
    }
    Ok(Some(table))
}

/// The init's propagation steps after the pivot: each mount by the fd the restorer took on it
/// once made (a mount stacked on it later cannot stand in for it), or, made by the init
/// itself, by its path as the tree sees it.
fn stub_steps(
    steps: &[propagation::Step],
    table: &[MountInfo],
    fds: &std::collections::HashMap<u32, OwnedFd>,
) -> Result<Vec<StubStep>, MntNsError> {
    let at = |id: u32| -> Result<StubMount, MntNsError> {
        if let Some(fd) = fds.get(&id) {
            return Ok(StubMount::Fd(fd.as_raw_fd()));
        }
        let m = table.iter().find(|m| m.id == id).ok_or(MntNsError::Ns {
            what: format!("propagation of mount {id}, which is not in the table"),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        Ok(StubMount::Path(cstr(&m.mountpoint)?))
    };
    steps
        .iter()
        .map(|s| {
            Ok(match *s {
                propagation::Step::Shared(m) => StubStep::Shared(at(m)?),
                propagation::Step::Slave(m) => StubStep::Slave(at(m)?),
                propagation::Step::SetGroup { from, to } => StubStep::SetGroup {
                    from: at(from)?,
                    to: at(to)?,
                },
            })
        })
        .collect()
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

/// Writes `mountpoints-<id>.img` and each tmpfs's content, read through the root's
/// `/proc/<root>/root`.
pub fn dump(root: u32, table: &[MountInfo], dir: &Path) -> Result<(), MntNsError> {
    let mut w = ImageWriter::new(ImageKind::Normal, magic::MNTS);
    for m in table {
        w.push(&mnt::to_entry(m));
    }
    let file = dir.join(names::mountpoints(mnt::TREE_NS_ID));
    crate::private::write_private(&file, &w.into_bytes()).map_err(|source| MntNsError::Write {
        path: file.display().to_string(),
        source,
    })?;
    for p in mnt::plan(table)?.iter().filter(|p| p.make == Make::Tmpfs) {
        use std::os::unix::fs::MetadataExt;
        // Through a copy of the mount without what is mounted on it: files a submount hides
        // are the tmpfs's too (zdtm's tempfs). The mounted path when no copy can be made.
        let clone = clone_in_tree(root, &p.mount.mountpoint)
            .map_err(|e| log::info!("{}: no copy of the mount ({e})", p.mount.mountpoint))
            .ok();
        let at = match &clone {
            // "/." so that the root's own metadata is the directory's, not the fd link's.
            Some(fd) => PathBuf::from(format!("/proc/self/fd/{}/.", fd.as_raw_fd())),
            None => PathBuf::from(mnt::under(
                &format!("/proc/{root}/root"),
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

/// One mount the tree's init makes after it pivots (see the module comment). Every string is
/// made before the fork: the stub only passes pointers.
pub struct LateMount {
    pub source: Option<CString>,
    pub target: CString,
    pub fstype: Option<CString>,
    pub flags: u64,
    pub data: Option<CString>,
    /// A detached bind (`open_tree`) to attach at `target` instead of mounting.
    pub tree_fd: Option<RawFd>,
}

/// What the root's stub needs to enter the tree's mount namespace.
pub struct StubMounts {
    pub ns_fd: RawFd,
    /// The root directory, as the namespace sees it before the pivot.
    pub root: CString,
    pub late: Vec<LateMount>,
    /// Peer groups and slaves made once all mounts are there, after the pivot.
    pub propagation: Vec<StubStep>,
    /// The fds [`StubMount::Fd`] names, which the init closes after the steps.
    pub mount_fds: Vec<RawFd>,
}

/// [`propagation::Step`] as the init's syscalls take it.
#[derive(Clone)]
pub enum StubStep {
    Shared(StubMount),
    SetGroup { from: StubMount, to: StubMount },
    Slave(StubMount),
}

/// A mount the init acts on: an O_PATH fd on its root (the init closes it), or a path.
#[derive(Clone)]
pub enum StubMount {
    Fd(RawFd),
    Path(CString),
}

/// The namespace phase 1 made, held until the tree's init has entered it.
pub struct Early {
    back: Option<Back>,
    ns: OwnedFd,
    pub(super) root: CString,
    late: Vec<LateMount>,
    propagation: Vec<StubStep>,
    /// O_PATH fds on the mounts the propagation steps act on, by dumped id.
    mount_fds: std::collections::HashMap<u32, OwnedFd>,
    /// Detached binds for the late external mounts: closed with us, after the fork.
    _trees: Vec<OwnedFd>,
    /// The host directory a yard was mounted on (a tree rooted at /): removed with us.
    pub(super) yard: Option<PathBuf>,
    /// Mounts made read-only only once the tree's files exist ([`Early::seal_read_only`]).
    pub(super) read_only: Vec<ReadOnly>,
}

impl Early {
    /// Back into the namespace we came from (before the fork: the init's pivot would move
    /// the root of every task of the namespace still at the old one, this thread's included).
    pub fn leave(&mut self) -> Result<(), MntNsError> {
        match self.back.take() {
            Some(b) => b.go_back(),
            None => Ok(()),
        }
    }

    /// Makes read-only what was: the restore's files are made by now. A file deleted while open
    /// on a mount made read-only after it (a ghost) is made again on it first.
    pub fn seal_read_only(&mut self) -> Result<(), MntNsError> {
        for r in self.read_only.drain(..) {
            let path = format!("/proc/thread-self/fd/{}", r.fd.as_raw_fd());
            let done = match &r.superblock {
                Some(data) => sys_mount(
                    None,
                    &path,
                    None,
                    libc::MS_REMOUNT | r.flags | libc::MS_RDONLY,
                    Some(data),
                ),
                None => remount(&path, r.flags | libc::MS_RDONLY),
            };
            done.map_err(|source| MntNsError::Mount {
                id: r.id,
                target: r.target.clone(),
                what: "making it read-only".into(),
                source,
            })?;
        }
        Ok(())
    }

    /// Where the tree's root is while this thread is in the new namespace (a yard when the
    /// tree's root is /): files of the tree are opened there.
    pub fn root_path(&self) -> String {
        self.root.to_string_lossy().into_owned()
    }

    pub fn stub_mounts(&self) -> StubMounts {
        for (i, l) in self.late.iter().enumerate() {
            log::debug!(
                "init's mount #{i}: {:?} on {:?} ({:?}, flags {:#x}, {:?}){}",
                l.source,
                l.target,
                l.fstype,
                l.flags,
                l.data,
                if l.tree_fd.is_some() {
                    ", a detached bind"
                } else {
                    ""
                }
            );
        }
        StubMounts {
            ns_fd: self.ns.as_raw_fd(),
            root: self.root.clone(),
            late: self
                .late
                .iter()
                .map(|l| LateMount {
                    source: l.source.clone(),
                    target: l.target.clone(),
                    fstype: l.fstype.clone(),
                    flags: l.flags,
                    data: l.data.clone(),
                    tree_fd: l.tree_fd,
                })
                .collect(),
            propagation: self.propagation.clone(),
            mount_fds: self.mount_fds.values().map(|f| f.as_raw_fd()).collect(),
        }
    }
}

/// The mount namespace and cwd this thread had; it goes back there when dropped.
struct Back {
    ns: OwnedFd,
    cwd: OwnedFd,
}

impl Back {
    fn save() -> Result<Back, MntNsError> {
        let open = |path: &str, flags| {
            nix::fcntl::open(path, flags, nix::sys::stat::Mode::empty()).map_err(|e| {
                MntNsError::Ns {
                    what: format!("opening {path}"),
                    source: e.into(),
                }
            })
        };
        Ok(Back {
            ns: open("/proc/thread-self/ns/mnt", nix::fcntl::OFlag::O_CLOEXEC)?,
            cwd: open(
                ".",
                nix::fcntl::OFlag::O_PATH
                    | nix::fcntl::OFlag::O_DIRECTORY
                    | nix::fcntl::OFlag::O_CLOEXEC,
            )?,
        })
    }

    fn go_back(self) -> Result<(), MntNsError> {
        let err = |what: &str| {
            let what = what.to_string();
            move |e: nix::Error| MntNsError::Ns {
                what,
                source: e.into(),
            }
        };
        // setns needs this thread's fs alone: a thread that shared it may still be exiting.
        let mut tries = 0;
        loop {
            match nix::sched::setns(self.ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS) {
                Ok(()) => break,
                Err(nix::Error::EINVAL) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(1));
                }
                Err(e) => return Err(err("going back to our mount namespace")(e)),
            }
        }
        nix::unistd::fchdir(&self.cwd).map_err(err("going back to our working directory"))
    }
}

impl Drop for Early {
    fn drop(&mut self) {
        if let Err(e) = self.leave() {
            log::error!("{e}");
        }
        // Back in our namespace, the yard's directory is an empty one of the host's /tmp (the
        // tasks' pivot detached what was mounted on it in theirs).
        if let Some(yard) = self.yard.take() {
            if let Err(e) = std::fs::remove_dir(&yard) {
                log::warn!("removing the restore's yard {}: {e}", yard.display());
            }
        }
    }
}

pub(super) fn cstr(s: &str) -> Result<CString, MntNsError> {
    CString::new(s).map_err(|_| MntNsError::Ns {
        what: format!("a NUL byte in {s:?}"),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })
}

/// Phase 1 (see the module comment): the calling thread ends up in a new mount namespace
/// holding the tree's mounts under `root`, until [`Early::leave`].
pub fn build(
    table: &[MountInfo],
    images: &Path,
    root: Option<&Path>,
    ext: &[(String, String)],
    auto_ext: bool,
    existing: Option<std::os::fd::BorrowedFd<'_>>,
    userns: Option<&crate::images::pb::UsernsEntry>,
) -> Result<Early, MntNsError> {
    let root = root.ok_or(MntNsError::NoRoot)?;
    let root_s = root.to_str().ok_or(MntNsError::NoRoot)?.to_string();
    let plan = mnt::plan(table)?;
    let phases = mnt::phases(&plan)?;
    // Groups outside the tree were refused at dump; CRIU's images are checked here.
    let prop = propagation::plan(table, &Default::default())?;
    let involved: std::collections::HashSet<u32> =
        prop.steps.iter().flat_map(|s| s.mounts()).collect();
    // Before we leave the host's namespace: the host mounts whose peer groups auto-detected
    // external mounts join again (see ns::mnt_ext).
    let host_groups = host_group_fds(table, &prop)?;
    let back = Back::save()?;
    match existing {
        // A namespace the user namespace holder made (see ns::user); entering one needs
        // this thread's fs to itself.
        Some(ns) => nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
            .and_then(|()| nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS))
            .map_err(|e| MntNsError::Ns {
                what: "entering the tree's new mount namespace".into(),
                source: e.into(),
            })?,
        None => nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS).map_err(|e| {
            MntNsError::Ns {
                what: "unsharing a mount namespace".into(),
                source: e.into(),
            }
        })?,
    }
    let mut early = Early {
        back: Some(back),
        ns: OwnedFd::from(
            std::fs::File::open("/proc/thread-self/ns/mnt").map_err(|source| MntNsError::Read {
                path: "/proc/thread-self/ns/mnt".into(),
                source,
            })?,
        ),
        root: cstr(&root_s)?,
        late: Vec::new(),
        propagation: Vec::new(),
        mount_fds: Default::default(),
        _trees: Vec::new(),
        yard: None,
        read_only: Vec::new(),
    };
    // Nothing made here reaches the namespace we came from; what ours receive from the
    // host's peer groups still reaches them, as runc's rslave root does: a bind of a host
    // path is then a slave of the host's group, as the dumped one was. Each mount is made
    // private below unless it was such a slave.
    sys_mount(None, "/", None, libc::MS_REC | libc::MS_SLAVE, None).map_err(|source| {
        MntNsError::Ns {
            what: "making our mounts slaves".into(),
            source,
        }
    })?;
    let by_id: std::collections::HashMap<u32, &MountInfo> =
        table.iter().map(|m| (m.id, m)).collect();
    let ext_sources = open_external_sources(&plan, &phases, ext, auto_ext)?;
    // A tree whose root is our own / (a host process in a mount namespace of its own: a
    // service's private /tmp) is built in a yard, as CRIU builds it: / itself cannot be
    // pivoted into (a mount on / is not where a walk to / ends), a directory of a tmpfs can.
    let (root_s, root_source) = yard_if_slash(&mut early, root_s)?;
    let mut root_ro = false;
    for (p, phase) in plan.iter().zip(phases) {
        let m = &p.mount;
        let flags = mnt::mount_flags(&m.mount_opts);
        let target = mnt::under(&root_s, &m.mountpoint);
        let fail = |what: &str| {
            let (id, target, what) = (m.id, target.clone(), what.to_string());
            move |source| MntNsError::Mount {
                id,
                target,
                what,
                source,
            }
        };
        let host_source = |key: &Option<String>| external_source(m, key, ext, auto_ext);
        if phase == Phase::Late {
            let late = late_mount(p, &by_id, flags, &host_source, &mut early, &root_s, userns)?;
            // A bind keeps its source's propagation: the dumped one is set after it.
            if let Some(last) = late.last() {
                let target = last.target.clone();
                early.late.extend(late);
                early.late.push(LateMount {
                    source: None,
                    target,
                    fstype: None,
                    flags: at_creation(&prop, m),
                    data: None,
                    tree_fd: None,
                });
            }
            continue;
        }
        match &p.make {
            Make::Root => {
                // A mount of its own, whatever the caller made: the pivot needs one.
                sys_mount(Some(&root_source), &root_s, None, libc::MS_BIND, None)
                    .map_err(fail("binding the root onto itself"))?;
                root_ro = flags & libc::MS_RDONLY != 0;
            }
            Make::New => {
                ensure_dir(&target).map_err(fail("making its mountpoint"))?;
                let mut data = mnt::fs_data(&m.super_opts);
                if m.fstype == "devpts" && !data.split(',').any(|o| o == "newinstance") {
                    data = if data.is_empty() {
                        "newinstance".into()
                    } else {
                        format!("{data},newinstance")
                    };
                }
                sys_mount(
                    Some(&m.source),
                    &target,
                    Some(&m.fstype),
                    flags,
                    Some(&data),
                )
                .map_err(fail("mounting it"))?;
            }
            Make::Tmpfs => make_tmpfs(m, &target, flags, images, &mut early)?,
            Make::Bind { of, sub } => {
                let of = by_id.get(of).map_or("/", |o| o.mountpoint.as_str());
                let source = mnt::under(&mnt::under(&root_s, of), sub);
                bind(&source, &target, flags & !libc::MS_RDONLY).map_err(fail("binding it"))?;
            }
            Make::External => {
                let source = match ext_sources.get(&m.id) {
                    Some(fd) => format!("/proc/thread-self/fd/{}", fd.as_raw_fd()),
                    None => host_source(&m.ext_key)?,
                };
                bind(&source, &target, flags & !libc::MS_RDONLY)
                    .map_err(fail("binding it from outside"))?;
            }
        }
        let made_at = if p.make == Make::Root {
            &root_s
        } else {
            &target
        };
        if matches!(p.make, Make::Bind { .. } | Make::External) && flags & libc::MS_RDONLY != 0 {
            defer_read_only(&mut early, m.id, made_at, flags, None)?;
        }
        sys_mount(None, made_at, None, at_creation(&prop, m), None)
            .map_err(fail("setting its propagation"))?;
        if let Some(host) = host_groups.get(&m.id) {
            join_host_group(host, made_at).map_err(fail("joining its host mount's peer group"))?;
        }
        if involved.contains(&m.id) {
            let fd = nix::fcntl::open(
                made_at.as_str(),
                nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
                nix::sys::stat::Mode::empty(),
            )
            .map_err(|e| fail("opening it")(e.into()))?;
            early.mount_fds.insert(m.id, fd);
        }
    }
    early.propagation = stub_steps(&prop.steps, table, &early.mount_fds)?;
    if root_ro {
        defer_read_only(&mut early, plan[0].mount.id, &root_s, 0, None)?;
    }
    Ok(early)
}

/// What the external mount `m` (key `key`) binds here: the caller's mapping of its key, or,
/// for one found external by itself (with `auto` allowed), the host path saved in its source.
pub(super) fn external_source(
    m: &MountInfo,
    key: &Option<String>,
    ext: &[(String, String)],
    auto: bool,
) -> Result<String, MntNsError> {
    let key = key.clone().unwrap_or_default();
    if key == super::mnt_ext::AUTO_KEY {
        return if auto {
            Ok(m.source.clone())
        } else {
            Err(MntNsError::AutoExternal {
                id: m.id,
                mountpoint: m.mountpoint.clone(),
            })
        };
    }
    // A relative path is taken from the root, as CRIU does (zdtm's mnt_root_ext).
    ext.iter()
        .find(|(k, v)| *k == key && !v.is_empty())
        .map(|(_, v)| mnt::under("/", v))
        .ok_or(MntNsError::Unmapped {
            id: m.id,
            mountpoint: m.mountpoint.clone(),
            key,
        })
}

/// For each auto-detected external mount that was a peer of its host mount, an O_PATH fd
/// on the root of the host mount holding its source (the mount of the longest mountpoint
/// above it in our mountinfo).
fn host_group_fds(
    table: &[MountInfo],
    prop: &propagation::Propagation,
) -> Result<std::collections::HashMap<u32, OwnedFd>, MntNsError> {
    let mut out = std::collections::HashMap::new();
    if prop.host_peers.is_empty() {
        return Ok(out);
    }
    let ours = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|source| MntNsError::Read {
            path: "/proc/self/mountinfo".into(),
            source,
        })
        .and_then(|t| Ok(mnt::parse_mountinfo(&t)?))?;
    for m in table.iter().filter(|m| prop.host_peers.contains(&m.id)) {
        let Some(host) = ours
            .iter()
            .filter(|o| propagation::holds(&o.mountpoint, &m.source))
            .max_by_key(|o| o.mountpoint.len())
        else {
            continue;
        };
        let fd = nix::fcntl::open(
            host.mountpoint.as_str(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| MntNsError::Read {
            path: host.mountpoint.clone(),
            source: e.into(),
        })?;
        out.insert(m.id, fd);
    }
    Ok(out)
}

/// Puts the mount at `target` (private, just made) into the peer group of the host mount
/// `host` (MOVE_MOUNT_SET_GROUP works across namespaces).
fn join_host_group(host: &OwnedFd, target: &str) -> std::io::Result<()> {
    let to = nix::fcntl::open(
        target,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: move_mount(2) on two fds we own and empty NUL-terminated paths.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            host.as_raw_fd(),
            c"".as_ptr(),
            to.as_raw_fd(),
            c"".as_ptr(),
            libc::MOVE_MOUNT_SET_GROUP
                | libc::MOVE_MOUNT_F_EMPTY_PATH
                | libc::MOVE_MOUNT_T_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A tmpfs at `target`, filled from its archive and left writable; made read-only, if it was,
/// once the tree's files are made (`early`).
fn make_tmpfs(
    m: &MountInfo,
    target: &str,
    flags: u64,
    images: &Path,
    early: &mut Early,
) -> Result<(), MntNsError> {
    let fail = |what: &str| {
        let (id, target, what) = (m.id, target.to_string(), what.to_string());
        move |source| MntNsError::Mount {
            id,
            target,
            what,
            source,
        }
    };
    ensure_dir(target).map_err(fail("making its mountpoint"))?;
    sys_mount(
        Some(&m.source),
        target,
        Some("tmpfs"),
        flags & !libc::MS_RDONLY,
        Some(&mnt::fs_data(&m.super_opts)),
    )
    .map_err(fail("mounting it"))?;
    let archive = images.join(names::tmpfs_dev(mnt::kdev(m.dev)));
    if archive.exists() {
        super::tmpfs::load(&archive, Path::new(target))?;
    }
    // Read-only (the filesystem itself, or the mount) once the tree's files are made.
    let sb_ro = m.super_opts.iter().any(|o| o == "ro");
    if sb_ro || flags & libc::MS_RDONLY != 0 {
        let data = sb_ro.then(|| mnt::fs_data(&m.super_opts));
        defer_read_only(early, m.id, target, flags, data)?;
    }
    Ok(())
}

/// The propagation a restored mount is given once made: a slave if it was one of a peer group
/// outside the tree (which a bind of a host path in our slave namespace is again), else
/// private; peer groups and slaves of the tree's groups are made after the pivot.
fn at_creation(prop: &propagation::Propagation, m: &MountInfo) -> u64 {
    if prop.slave_at_creation.contains(&m.id) {
        libc::MS_SLAVE
    } else {
        libc::MS_PRIVATE
    }
}

/// What the init mounts for one late mount, under `root` (the init mounts before it pivots:
/// in a user namespace, a proc may only be mounted where the host's is still visible).
fn late_mount(
    p: &mnt::Planned,
    by_id: &std::collections::HashMap<u32, &MountInfo>,
    flags: u64,
    host_source: &dyn Fn(&Option<String>) -> Result<String, MntNsError>,
    early: &mut Early,
    root: &str,
    userns: Option<&crate::images::pb::UsernsEntry>,
) -> Result<Vec<LateMount>, MntNsError> {
    let m = &p.mount;
    let target = cstr(&mnt::under(root, &m.mountpoint))?;
    let remount_after = |target: &CString| LateMount {
        source: None,
        target: target.clone(),
        fstype: None,
        flags: libc::MS_REMOUNT | libc::MS_BIND | flags,
        data: None,
        tree_fd: None,
    };
    let mut out = Vec::new();
    match &p.make {
        Make::New | Make::Tmpfs => {
            if p.make == Make::Tmpfs {
                log::debug!("tmpfs at {} under a proc: made empty", m.mountpoint);
            }
            // A v1 hierarchy already exists (its superblock is rw): read-only is the mount's.
            let cgroup = m.fstype.starts_with("cgroup");
            out.push(LateMount {
                source: Some(cstr(&m.source)?),
                target: target.clone(),
                fstype: Some(cstr(&m.fstype)?),
                flags: if cgroup {
                    flags & !libc::MS_RDONLY
                } else {
                    flags
                },
                data: Some(cstr(&mnt::fs_data(&m.super_opts))?),
                tree_fd: None,
            });
            if cgroup && flags & libc::MS_RDONLY != 0 {
                out.push(remount_after(&target));
            }
        }
        Make::Bind { of, sub } => {
            let of = by_id.get(of).map_or("/", |o| o.mountpoint.as_str());
            out.push(LateMount {
                source: Some(cstr(&mnt::under(&mnt::under(root, of), sub))?),
                target: target.clone(),
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                tree_fd: None,
            });
            out.push(remount_after(&target));
        }
        Make::External => {
            let source = host_source(&m.ext_key)?;
            let fd = open_tree(&source).map_err(|source_err| MntNsError::Mount {
                id: m.id,
                target: m.mountpoint.clone(),
                what: format!("taking a bind of {source}"),
                source: source_err,
            })?;
            out.push(LateMount {
                source: None,
                target: target.clone(),
                fstype: None,
                flags: 0,
                data: None,
                tree_fd: Some(fd.as_raw_fd()),
            });
            early._trees.push(fd);
            out.push(remount_after(&target));
        }
        Make::Root => {}
    }
    // The init mounts these from inside the tree's user namespace, if any: ids in options as
    // it sees them.
    if let Some(maps) = userns {
        for l in out.iter_mut() {
            if let Some(d) = l.data.as_ref().and_then(|d| d.to_str().ok()) {
                l.data = Some(cstr(&crate::ns::user::fs_opts_to_ns(d, maps))?);
            }
        }
    }
    Ok(out)
}

fn ensure_dir(path: &str) -> std::io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::create_dir_all(path),
        Err(e) => Err(e),
    }
}

/// A bind of `source` at `target` (made as a file or directory like its source if missing),
/// then its per-mount flags.
fn bind(source: &str, target: &str, flags: u64) -> std::io::Result<()> {
    if std::fs::symlink_metadata(target).is_err() {
        if std::fs::metadata(source)?.is_dir() {
            std::fs::create_dir_all(target)?;
        } else {
            if let Some(parent) = Path::new(target).parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::File::create(target)?;
        }
    }
    sys_mount(Some(source), target, None, libc::MS_BIND, None)?;
    if flags != 0 {
        remount(target, flags)?;
    }
    Ok(())
}

fn remount(target: &str, flags: u64) -> std::io::Result<()> {
    sys_mount(
        None,
        target,
        None,
        libc::MS_REMOUNT | libc::MS_BIND | flags,
        None,
    )
}

pub(super) fn sys_mount(
    source: Option<&str>,
    target: &str,
    fstype: Option<&str>,
    flags: u64,
    data: Option<&str>,
) -> std::io::Result<()> {
    nix::mount::mount(
        source,
        target,
        fstype,
        nix::mount::MsFlags::from_bits_retain(flags),
        data.filter(|d| !d.is_empty()),
    )
    .map_err(Into::into)
}

/// A detached copy, without its submounts, of the mount at `mountpoint` of task `root`'s mount
/// namespace, made from a thread that joined it (open_tree copies only mounts of the caller's
/// namespace).
fn clone_in_tree(root: u32, mountpoint: &str) -> std::io::Result<OwnedFd> {
    let ns = std::fs::File::open(format!("/proc/{root}/ns/mnt"))?;
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNS)?;
            open_tree(mountpoint)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A detached copy of the mount at `path` (open_tree(OPEN_TREE_CLONE)), which a task of
/// another mount namespace can attach with move_mount.
fn open_tree(path: &str) -> std::io::Result<OwnedFd> {
    let p = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: open_tree(2) reads the NUL-terminated path; the fd it returns is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            p.as_ptr(),
            (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}
