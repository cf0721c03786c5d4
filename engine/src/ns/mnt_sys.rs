//! Mount namespaces, the restore's syscall part (the dump's is `mnt_dump`): the restore makes
//! the table again under the caller's root in two phases (see ARCHITECTURE.md, "Mount
//! namespaces"):
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
use super::mnt_stage::{
    bind_from_mount, defer_read_only, enter_new_namespace, open_external_sources, yard_if_slash,
    ReadOnly,
};
use super::propagation;
use crate::images::names;

#[derive(Debug, thiserror::Error)]
pub enum MntNsError {
    #[error(transparent)]
    Table(#[from] mnt::MntError),
    #[error(transparent)]
    Tmpfs(#[from] super::tmpfs::TmpfsError),
    #[error(transparent)]
    Nested(#[from] super::mnt_nested::NestedError),
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

/// The init's propagation steps after the pivot: each mount by the fd the restorer took on it
/// once made (a mount stacked on it later cannot stand in for it), or, made by the init
/// itself, by its path as the tree sees it.
pub(super) fn stub_steps(
    steps: &[propagation::Step],
    table: &[MountInfo],
    fds: &std::collections::HashMap<u32, OwnedFd>,
    nested_ns: &std::collections::HashMap<u32, RawFd>,
) -> Result<Vec<StubStep>, MntNsError> {
    let at = |id: u32| -> Result<StubMount, MntNsError> {
        if let Some(fd) = fds.get(&id) {
            return Ok(match nested_ns.get(&id) {
                Some(&ns_fd) => StubMount::Nested {
                    fd: fd.as_raw_fd(),
                    ns_fd,
                },
                None => StubMount::Fd(fd.as_raw_fd()),
            });
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
            log::debug!("propagation step: {s:?}");
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

/// One mount the tree's init makes after it pivots (see the module comment). Every string is
/// made before the fork: the stub only passes pointers.
#[derive(Clone)]
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
    /// The nested namespaces (see ns::mnt_nested), in their images' order.
    pub nested: Vec<NestedStub>,
}

/// A nested mount namespace as the stubs take it: every task of it enters it (the init's
/// namespace too, for a task whose parent is nested); the init makes its late mounts.
pub struct NestedStub {
    pub ns_fd: RawFd,
    pub late: Vec<LateMount>,
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
    /// A mount of a nested namespace (`ns_fd`): its propagation is set from inside it
    /// (mount_setattr acts on mounts of the caller's namespace only).
    Nested {
        fd: RawFd,
        ns_fd: RawFd,
    },
    Path(CString),
}

/// The namespace phase 1 made, held until the tree's init has entered it.
pub struct Early {
    pub(super) back: Option<Back>,
    pub(super) ns: OwnedFd,
    pub(super) root: CString,
    pub(super) late: Vec<LateMount>,
    pub(super) propagation: Vec<StubStep>,
    /// O_PATH fds on the mounts the propagation steps act on, by dumped id.
    pub(super) mount_fds: std::collections::HashMap<u32, OwnedFd>,
    /// Detached binds for the late external mounts: closed with us, after the fork.
    pub(super) _trees: Vec<OwnedFd>,
    /// The host directory a yard was mounted on (a tree rooted at /): removed with us.
    pub(super) yard: Option<PathBuf>,
    /// Mounts made read-only only once the tree's files exist ([`Early::seal_read_only`]).
    pub(super) read_only: Vec<ReadOnly>,
    /// Our own root, for opening the host's files the tree holds on the host's mounts: by
    /// path here they would be opened on this namespace's copies, which the init's pivot
    /// detaches (a second dump would find them on no mount).
    pub(super) host_root: Option<OwnedFd>,
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

    /// Where the host's files are opened from while this thread is in the new namespace.
    pub fn host_root_path(&self) -> Option<String> {
        self.host_root
            .as_ref()
            .map(|fd| format!("/proc/self/fd/{}", fd.as_raw_fd()))
    }

    /// What the stubs need: the init's namespace and mounts, and each nested namespace's.
    pub fn stub_mounts(&self, nested: &[super::mnt_nested_sys::NestedEarly]) -> StubMounts {
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
            late: self.late.clone(),
            propagation: self.propagation.clone(),
            mount_fds: self.mount_fds.values().map(|f| f.as_raw_fd()).collect(),
            nested: nested.iter().map(|n| n.stub()).collect(),
        }
    }
}

/// The mount namespace and cwd this thread had; it goes back there when dropped.
pub(super) struct Back {
    ns: OwnedFd,
    cwd: OwnedFd,
}

impl Back {
    pub(super) fn save() -> Result<Back, MntNsError> {
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

/// What [`build`] makes a namespace from.
pub struct BuildOpts<'a> {
    pub images: &'a Path,
    pub root: Option<&'a Path>,
    pub ext: &'a [(String, String)],
    pub auto_ext: bool,
    /// A namespace the user namespace holder made (see ns::user), to enter instead.
    pub existing: Option<std::os::fd::BorrowedFd<'a>>,
    pub userns: Option<&'a crate::images::pb::UsernsEntry>,
    /// Every namespace's mounts (see ns::mnt_nested): peer groups span them.
    pub all_mounts: &'a [MountInfo],
    /// Set when building a nested namespace (see ns::mnt_nested_sys).
    pub nested: Option<&'a super::mnt_nested_sys::NestedCx>,
}

/// Phase 1 (see the module comment): the calling thread ends up in a new mount namespace
/// holding the tree's mounts under `root`, until [`Early::leave`]. A nested namespace's late
/// mounts are made after its pivot, at the paths the tree sees.
pub fn build(table: &[MountInfo], o: &BuildOpts<'_>) -> Result<Early, MntNsError> {
    let BuildOpts {
        images,
        root,
        ext,
        auto_ext,
        existing,
        userns,
        all_mounts,
        nested,
    } = *o;
    let root = root.ok_or(MntNsError::NoRoot)?;
    let root_s = root.to_str().ok_or(MntNsError::NoRoot)?.to_string();
    let plan = match nested {
        Some(cx) => mnt::plan_with(table, &cx.elsewhere)?,
        None => mnt::plan(table)?,
    };
    let phases = mnt::phases(&plan)?;
    // Groups outside the tree were refused at dump; CRIU's images are checked here.
    let prop = propagation::plan(all_mounts, &Default::default())?;
    let involved: std::collections::HashSet<u32> =
        prop.steps.iter().flat_map(|s| s.mounts()).collect();
    // Before we leave the host's namespace: the host mounts whose peer groups auto-detected
    // external mounts join again (see ns::mnt_ext).
    let host_groups = host_group_fds(table, &prop)?;
    let mut early = enter_new_namespace(existing, &root_s, nested.is_none())?;
    let by_id: std::collections::HashMap<u32, &MountInfo> =
        table.iter().map(|m| (m.id, m)).collect();
    let ext_sources = open_external_sources(&plan, &phases, ext, auto_ext)?;
    // A tree whose root is our own / (a host process in a mount namespace of its own: a
    // service's private /tmp) is built in a yard, as CRIU builds it: / itself cannot be
    // pivoted into (a mount on / is not where a walk to / ends), a directory of a tmpfs can.
    let (root_s, root_source) = yard_if_slash(&mut early, root_s)?;
    let mut root_ro = false;
    // An O_PATH fd on each mount made, which binds of it are made through.
    let mut made: std::collections::HashMap<u32, OwnedFd> = Default::default();
    let mut scratch = None;
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
            let late_root = if nested.is_some() { "/" } else { &root_s };
            let late = late_mount(
                p,
                &by_id,
                flags,
                &host_source,
                &mut early,
                late_root,
                userns,
            )?;
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
            // A nested namespace's root may be another filesystem (see ns::mnt_nested).
            Make::Root if nested.is_some_and(|cx| cx.root_tmpfs) => {
                make_tmpfs(m, &root_s, flags, images, &mut early)?
            }
            Make::Root if nested.is_some_and(|cx| cx.copies.contains_key(&m.id)) => {
                super::mnt_nested_sys::attach_copy(nested, m, &root_s, flags)?;
                root_ro = flags & libc::MS_RDONLY != 0;
            }
            Make::Root => {
                // A mount of its own, whatever the caller made: the pivot needs one.
                sys_mount(Some(&root_source), &root_s, None, libc::MS_BIND, None)
                    .map_err(fail("binding the root onto itself"))?;
                root_ro = flags & libc::MS_RDONLY != 0;
            }
            Make::New => {
                ensure_dir(&target).map_err(fail("making its mountpoint"))?;
                mount_new(m, &target, flags).map_err(fail("mounting it"))?;
            }
            Make::Tmpfs => make_tmpfs(m, &target, flags, images, &mut early)?,
            // Through the mount itself, not its path (see bind_from_mount).
            Make::Bind { of, sub } => {
                let flags = flags & !libc::MS_RDONLY;
                match made.get(of) {
                    Some(fd) => bind_from_mount(fd, sub, &target, &mut scratch, |source| {
                        bind(source, &target, flags)
                    }),
                    None => {
                        let of = by_id.get(of).map_or("/", |o| o.mountpoint.as_str());
                        bind(&mnt::under(&mnt::under(&root_s, of), sub), &target, flags)
                    }
                }
                .map_err(fail("binding it"))?;
            }
            Make::Elsewhere => super::mnt_nested_sys::attach_copy(nested, m, &target, flags)?,
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
        if matches!(p.make, Make::Bind { .. } | Make::External | Make::Elsewhere)
            && flags & libc::MS_RDONLY != 0
        {
            defer_read_only(&mut early, m.id, made_at, flags, None)?;
        }
        sys_mount(None, made_at, None, at_creation(&prop, m), None)
            .map_err(fail("setting its propagation"))?;
        if let Some(host) = host_groups.get(&m.id) {
            join_host_group(host, made_at).map_err(fail("joining its host mount's peer group"))?;
        }
        let fd = open_path(made_at).map_err(fail("opening it"))?;
        if involved.contains(&m.id) {
            early
                .mount_fds
                .insert(m.id, fd.try_clone().map_err(fail("opening it"))?);
        }
        made.insert(m.id, fd);
    }
    // With nested namespaces, made again once their mounts are (mnt_nested_sys::build_nested).
    if nested.is_none() {
        early.propagation = stub_steps(
            &prop.steps,
            all_mounts,
            &early.mount_fds,
            &Default::default(),
        )?;
    }
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
        Make::Root | Make::Elsewhere => {}
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

/// A new instance of `m`'s filesystem at `target` (a devpts of its own: `newinstance`).
fn mount_new(m: &MountInfo, target: &str, flags: u64) -> std::io::Result<()> {
    let mut data = mnt::fs_data(&m.super_opts);
    if m.fstype == "devpts" && !data.split(',').any(|o| o == "newinstance") {
        data = if data.is_empty() {
            "newinstance".into()
        } else {
            format!("{data},newinstance")
        };
    }
    sys_mount(Some(&m.source), target, Some(&m.fstype), flags, Some(&data))
}

/// An O_PATH fd on `path`.
fn open_path(path: &str) -> std::io::Result<OwnedFd> {
    nix::fcntl::open(
        path,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(Into::into)
}

pub(super) fn ensure_dir(path: &str) -> std::io::Result<()> {
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
        make_mountpoint(target, std::fs::metadata(source)?.is_dir())?;
    }
    sys_mount(Some(source), target, None, libc::MS_BIND, None)?;
    if flags != 0 {
        remount(target, flags)?;
    }
    Ok(())
}

/// A missing mountpoint made for a mount of a directory (`dir`) or of a file.
pub(super) fn make_mountpoint(target: &str, dir: bool) -> std::io::Result<()> {
    if dir {
        return std::fs::create_dir_all(target);
    }
    if let Some(parent) = Path::new(target).parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::File::create(target).map(drop)
}

pub(super) fn remount(target: &str, flags: u64) -> std::io::Result<()> {
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

/// A detached copy of the mount at `path` (open_tree(OPEN_TREE_CLONE)), which a task of
/// another mount namespace can attach with move_mount.
pub(super) fn open_tree(path: &str) -> std::io::Result<OwnedFd> {
    let p = CString::new(path).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    open_tree_at(libc::AT_FDCWD, &p, 0)
}

/// A detached copy, without its submounts, of the mount `fd` is on.
pub(super) fn open_tree_of(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<OwnedFd> {
    open_tree_at(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH as libc::c_uint)
}

fn open_tree_at(
    dirfd: RawFd,
    path: &std::ffi::CStr,
    flags: libc::c_uint,
) -> std::io::Result<OwnedFd> {
    // SAFETY: open_tree(2) reads the NUL-terminated path; the fd it returns is ours.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            dirfd,
            path.as_ptr(),
            (libc::OPEN_TREE_CLONE | libc::OPEN_TREE_CLOEXEC) as libc::c_uint | flags,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new fd that nothing else owns.
    Ok(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as RawFd) })
}

/// A detached copy of the mount at `path` of namespace `ns` (open_tree copies only mounts of
/// the caller's namespace: a thread enters it for that).
pub(super) fn copy_in(ns: std::os::fd::BorrowedFd<'_>, path: &str) -> std::io::Result<OwnedFd> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)?;
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNS)?;
            open_tree(path)
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}
