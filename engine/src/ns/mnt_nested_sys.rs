//! Nested mount namespaces, the syscall part (the plan is `ns::mnt_nested`). The dump groups
//! the tree's tasks by mount namespace and reads each one's table from its first task. The
//! restore makes each nested namespace after the tree's own, on a thread of its own: it
//! unshares (a copy of the tree's, being built), makes the namespace's mounts under the root as
//! the tree's are made, with copies (`open_tree`, taken from a thread that entered the
//! namespace holding them) for filesystems an earlier namespace mounts, then pivots into its
//! root. Nothing but the namespace is left of it: its files are opened through an O_PATH fd on
//! its root, its tasks `setns` into it, and its late mounts (its proc, of the tree's pid
//! namespace) are made by the tree's init, which enters it after its own pivot and before any
//! peer group exists.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use super::mnt::{self, MountInfo};
use super::mnt_nested;
use super::mnt_sys::{build, copy_in, make_mountpoint, remount, BuildOpts, Early, MntNsError};

/// A nested mount namespace at dump: its id in the images, its live tasks, its table.
pub struct NestedNs {
    pub id: u32,
    pub pids: Vec<u32>,
    pub table: Vec<MountInfo>,
}

fn ns_err(what: impl Into<String>) -> impl FnOnce(nix::Error) -> MntNsError {
    let what = what.into();
    move |e| MntNsError::Ns {
        what,
        source: e.into(),
    }
}

/// The live tasks grouped by mount namespace, the root's first, in tree order; `None` when
/// the root is in ours (the tree owns no mount namespace). A task in ours while the root is
/// not cannot be made again.
pub fn by_namespace(root: u32, live: &[u32]) -> Result<Option<Vec<Vec<u32>>>, MntNsError> {
    use std::os::unix::fs::MetadataExt;
    let id = |pid: &str| {
        let path = format!("/proc/{pid}/ns/mnt");
        std::fs::metadata(&path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|source| MntNsError::Read { path, source })
    };
    let ours = id("thread-self")?;
    let root_ns = id(&root.to_string())?;
    if root_ns == ours {
        return Ok(None);
    }
    let mut groups: Vec<((u64, u64), Vec<u32>)> = vec![(root_ns, vec![root])];
    for &pid in live.iter().filter(|&&p| p != root) {
        let ns = id(&pid.to_string())?;
        if ns == ours {
            return Err(MntNsError::Mixed { pid });
        }
        match groups.iter_mut().find(|(n, _)| *n == ns) {
            Some((_, pids)) => pids.push(pid),
            None => groups.push((ns, vec![pid])),
        }
    }
    Ok(Some(groups.into_iter().map(|(_, pids)| pids).collect()))
}

/// What building a nested namespace takes beyond the tree's options.
pub struct NestedCx {
    /// Devices other namespaces made first (see [`mnt::plan_with`]).
    pub elsewhere: HashSet<(u32, u32)>,
    /// Per [`mnt::Make::Elsewhere`] mount (and a root of [`mnt_nested::NestedRoot::Copy`]),
    /// its detached copy.
    pub copies: HashMap<u32, OwnedFd>,
    /// Its root is a tmpfs of its own.
    pub root_tmpfs: bool,
}

/// A nested namespace made, held until its tasks have entered it.
pub struct NestedEarly {
    pub id: u32,
    early: Early,
    /// Its root after the pivot, for opening its files from anywhere.
    root: OwnedFd,
}

impl NestedEarly {
    /// The path its tree's files are opened under.
    pub fn root_path(&self) -> String {
        format!("/proc/self/fd/{}", self.root.as_raw_fd())
    }

    pub fn stub(&self) -> super::mnt_sys::NestedStub {
        super::mnt_sys::NestedStub {
            ns_fd: self.early.ns.as_raw_fd(),
            late: self.early.late.clone(),
        }
    }
}

/// Makes the nested namespaces `nested` ((id, table), in the images' order) of a tree whose
/// own namespace `primary` was just made from `primary_table` by [`build`] with `o`. The
/// init's propagation steps then cover every namespace's mounts.
pub fn build_nested(
    primary: &mut Early,
    primary_table: &[MountInfo],
    nested: &[(u32, Vec<MountInfo>)],
    o: &BuildOpts<'_>,
) -> Result<Vec<NestedEarly>, MntNsError> {
    let plans = mnt_nested::plan_all(primary_table, nested)?;
    let mut out: Vec<NestedEarly> = Vec::with_capacity(plans.len());
    for (plan, (_, table)) in plans.iter().zip(nested) {
        let mut copies = HashMap::new();
        for c in &plan.copies {
            let (ns, root) = match c.ns {
                0 => (primary.ns.as_fd(), primary.root_path()),
                i => (out[i - 1].early.ns.as_fd(), "/".to_string()),
            };
            let path = mnt::under(&mnt::under(&root, &c.mountpoint), &c.sub);
            let fd = copy_in(ns, &path).map_err(|source| MntNsError::Mount {
                id: c.id,
                target: path.clone(),
                what: format!("taking a copy from mount namespace {}", c.ns),
                source,
            })?;
            copies.insert(c.id, fd);
        }
        let cx = NestedCx {
            elsewhere: plan.elsewhere.clone(),
            copies,
            root_tmpfs: plan.root == mnt_nested::NestedRoot::Tmpfs,
        };
        let nested_o = BuildOpts {
            existing: None,
            userns: None,
            nested: Some(&cx),
            ..*o
        };
        let (early, root) = std::thread::scope(|s| {
            s.spawn(|| make_one(table, &nested_o))
                .join()
                .unwrap_or_else(|p| std::panic::resume_unwind(p))
        })?;
        log::info!("nested mount namespace {} made", plan.id);
        out.push(NestedEarly {
            id: plan.id,
            early,
            root,
        });
    }
    let mut nested_ns = HashMap::new();
    for n in out.iter_mut() {
        for (id, fd) in n.early.mount_fds.drain() {
            nested_ns.insert(id, n.early.ns.as_raw_fd());
            primary.mount_fds.insert(id, fd);
        }
    }
    let all = mnt_nested::all_mounts(primary_table, nested);
    let steps = super::propagation::plan(&all, &Default::default())?.steps;
    primary.propagation = super::mnt_sys::stub_steps(&steps, &all, &primary.mount_fds, &nested_ns)?;
    Ok(out)
}

/// On a thread of its own (its namespace and root change): the namespace, its mounts made
/// read-only (its files are opened later through its root fd, none made there: a file
/// deleted on a read-only mount of a nested namespace is not supported), the pivot.
fn make_one(table: &[MountInfo], o: &BuildOpts<'_>) -> Result<(Early, OwnedFd), MntNsError> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_FS)
        .map_err(ns_err("unsharing this thread's fs"))?;
    let mut early = build(table, o)?;
    // This thread ends here: nothing to go back to.
    early.back = None;
    early.seal_read_only()?;
    let root = early.root_path();
    nix::unistd::chdir(root.as_str()).map_err(ns_err(format!("changing into {root}")))?;
    nix::unistd::pivot_root(".", ".").map_err(ns_err(format!("pivoting into {root}")))?;
    nix::mount::umount2(".", nix::mount::MntFlags::MNT_DETACH)
        .map_err(ns_err("detaching the old root"))?;
    nix::unistd::chdir("/").map_err(ns_err("changing into the new root"))?;
    let fd = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(ns_err("opening the new root"))?;
    Ok((early, fd))
}

/// Attaches the copy `nested` holds for mount `m` at `target` (see [`attach`]).
pub(super) fn attach_copy(
    nested: Option<&NestedCx>,
    m: &MountInfo,
    target: &str,
    flags: u64,
) -> Result<(), MntNsError> {
    let err = |what: String, source| MntNsError::Mount {
        id: m.id,
        target: target.to_string(),
        what,
        source,
    };
    let fd = nested.and_then(|cx| cx.copies.get(&m.id)).ok_or_else(|| {
        err(
            "finding its copy".into(),
            std::io::Error::from_raw_os_error(libc::EINVAL),
        )
    })?;
    attach(fd.as_fd(), target, flags & !libc::MS_RDONLY)
        .map_err(|e| err("attaching its copy from another namespace".into(), e))
}

/// Attaches the detached mount `fd` at `target` (made like it, a directory or a file), with
/// per-mount `flags`.
pub(super) fn attach(fd: BorrowedFd<'_>, target: &str, flags: u64) -> std::io::Result<()> {
    if std::fs::symlink_metadata(target).is_err() {
        let st = nix::sys::stat::fstat(fd)?;
        make_mountpoint(target, st.st_mode & libc::S_IFMT == libc::S_IFDIR)?;
    }
    let t = std::ffi::CString::new(target)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: move_mount(2) reads the NUL-terminated strings; the fds are ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            fd.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            t.as_ptr(),
            libc::MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if flags != 0 {
        remount(target, flags)?;
    }
    Ok(())
}

/// The fd each task of a nested namespace enters: index into [`super::mnt_sys::StubMounts`]'
/// `nested`, by namespace id.
pub fn index_of(nested: &[(u32, Vec<MountInfo>)], ns_id: Option<u32>) -> Option<usize> {
    let id = ns_id?;
    nested.iter().position(|(n, _)| *n == id)
}
