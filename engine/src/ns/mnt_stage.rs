//! Staging a mount tree before it is pivoted into (`mnt_sys::build`'s helpers): what external
//! mounts bind, opened before anything is mounted; the yard a tree rooted at `/` is built in;
//! and the mounts to make read-only once the tree's files are made.

use std::os::fd::OwnedFd;

use super::mnt::{self, Make, Phase};
use super::mnt_sys::{cstr, external_source, sys_mount, Back, Early, MntNsError};

/// A mount to make read-only later: an O_PATH fd on it (a path could name a mount covering
/// it by then), its per-mount flags, and for a read-only filesystem its data.
pub(super) struct ReadOnly {
    pub(super) id: u32,
    pub(super) target: String,
    pub(super) fd: OwnedFd,
    pub(super) flags: u64,
    pub(super) superblock: Option<String>,
}

/// What external mounts bind, opened before anything is mounted: with the tree's root at /
/// (a host process in a mount namespace of its own), the mounts made cover the host paths
/// later ones bind (a bind of /sys hides /sys/fs/cgroup/cpu).
pub(super) fn open_external_sources(
    plan: &[mnt::Planned],
    phases: &[Phase],
    ext: &[(String, String)],
    auto_ext: bool,
) -> Result<std::collections::HashMap<u32, OwnedFd>, MntNsError> {
    let mut fds = std::collections::HashMap::new();
    for (p, phase) in plan.iter().zip(phases.iter()) {
        if p.make != Make::External || *phase == Phase::Late {
            continue;
        }
        let m = &p.mount;
        let source = external_source(m, &m.ext_key, ext, auto_ext)?;
        let fd = nix::fcntl::open(
            source.as_str(),
            nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| MntNsError::Mount {
            id: m.id,
            target: source.clone(),
            what: "opening what it binds from outside".into(),
            source: e.into(),
        })?;
        fds.insert(m.id, fd);
    }
    Ok(fds)
}

/// Where the tree is built, and what its root mount binds: `root` itself, or for `/` a yard.
pub(super) fn yard_if_slash(
    early: &mut Early,
    root: String,
) -> Result<(String, String), MntNsError> {
    if root == "/" {
        Ok((make_yard(early)?, root))
    } else {
        Ok((root.clone(), root))
    }
}

/// A tmpfs on a new directory of /tmp, in this namespace only, with the directory the tree's
/// root goes on; `early` removes the directory when done. Returns that root's path.
fn make_yard(early: &mut Early) -> Result<String, MntNsError> {
    let made = nix::unistd::mkdtemp("/tmp/.stasis-root.XXXXXX")
        .map_err(std::io::Error::from)
        .and_then(|yard| {
            early.yard = Some(yard.clone());
            let yard = yard.to_str().unwrap_or_default().to_string();
            sys_mount(Some("none"), &yard, Some("tmpfs"), 0, Some("mode=700"))?;
            let root = format!("{yard}/root");
            std::fs::create_dir(&root)?;
            Ok(root)
        });
    let root = made.map_err(|source| MntNsError::Ns {
        what: "making a yard for a tree rooted at / (a tmpfs in /tmp)".into(),
        source,
    })?;
    early.root = cstr(&root)?;
    Ok(root)
}

/// Records the mount at `target` (just made) to be made read-only by
/// [`Early::seal_read_only`]: with `superblock`, its filesystem too.
pub(super) fn defer_read_only(
    early: &mut Early,
    id: u32,
    target: &str,
    flags: u64,
    superblock: Option<String>,
) -> Result<(), MntNsError> {
    let fd = nix::fcntl::open(
        target,
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| MntNsError::Mount {
        id,
        target: target.to_string(),
        what: "opening it".into(),
        source: e.into(),
    })?;
    early.read_only.push(ReadOnly {
        id,
        target: target.to_string(),
        fd,
        flags,
        superblock,
    });
    Ok(())
}

/// The calling thread in a new mount namespace (or the holder's, `existing`), every mount a
/// slave of ours, with what it needs to come back; with `keep_host_root`, an fd on our root.
pub(super) fn enter_new_namespace(
    existing: Option<std::os::fd::BorrowedFd<'_>>,
    root_s: &str,
    keep_host_root: bool,
) -> Result<Early, MntNsError> {
    let back = Back::save()?;
    let host_root = nix::fcntl::open(
        "/",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_DIRECTORY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .map_err(|e| MntNsError::Ns {
        what: "opening our root".into(),
        source: e.into(),
    })?;
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
    let early = Early {
        back: Some(back),
        ns: OwnedFd::from(
            std::fs::File::open("/proc/thread-self/ns/mnt").map_err(|source| MntNsError::Read {
                path: "/proc/thread-self/ns/mnt".into(),
                source,
            })?,
        ),
        root: cstr(root_s)?,
        late: Vec::new(),
        propagation: Vec::new(),
        mount_fds: Default::default(),
        _trees: Vec::new(),
        yard: None,
        read_only: Vec::new(),
        host_root: keep_host_root.then_some(host_root),
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
    Ok(early)
}

/// The mount id of what `path` names (statx).
pub(crate) fn mount_id_of(path: &str) -> std::io::Result<u64> {
    let c = std::ffi::CString::new(path)
        .map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: all-zero is a valid statx struct, which statx(2) fills.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: statx(2) reads the NUL-terminated path and writes into `st`, both live.
    let r = unsafe { libc::statx(libc::AT_FDCWD, c.as_ptr(), 0, libc::STATX_MNT_ID, &mut st) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.stx_mnt_id)
}

/// A private directory of /tmp that copies of mounts are attached on for a moment; removed
/// when dropped.
pub(super) struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Where a bind of `sub` inside the mount `of` (an O_PATH fd on it) is taken from: through the
/// fd, unless a mount since made under it covers part of `sub` (zdtm's mntns_remap); then from
/// a copy of that mount alone, attached on `scratch` for the bind (`then`).
pub(super) fn bind_from_mount(
    of: &OwnedFd,
    sub: &str,
    target: &str,
    scratch: &mut Option<Scratch>,
    then: impl FnOnce(&str) -> std::io::Result<()>,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // A bind of a file or directory deleted since (mountinfo's "//deleted": zdtm's
    // mntns_deleted) is made from one made again for the moment, like its target.
    let (sub, deleted) = match sub.strip_suffix("//deleted") {
        Some(s) => (s, true),
        None => (sub, false),
    };
    let at = format!("/proc/thread-self/fd/{}", of.as_raw_fd());
    let source = mnt::under(&at, sub);
    let made = deleted && std::fs::symlink_metadata(&source).is_err();
    if made {
        if std::fs::metadata(target)?.is_dir() {
            std::fs::create_dir(&source)?;
        } else {
            std::fs::File::create(&source)?;
        }
    }
    let done = bind_through(of, &at, &source, sub, scratch, then);
    if made {
        let gone = if std::fs::metadata(&source).is_ok_and(|m| m.is_dir()) {
            std::fs::remove_dir(&source)
        } else {
            std::fs::remove_file(&source)
        };
        if let Err(e) = gone {
            log::warn!("removing {source}, made again for a bind: {e}");
        }
    }
    done
}

fn bind_through(
    of: &OwnedFd,
    at: &str,
    source: &str,
    sub: &str,
    scratch: &mut Option<Scratch>,
    then: impl FnOnce(&str) -> std::io::Result<()>,
) -> std::io::Result<()> {
    if mount_id_of(source)? == mount_id_of(at)? {
        return then(source);
    }
    let copy = super::mnt_sys::open_tree_of(std::os::fd::AsFd::as_fd(of))?;
    if scratch.is_none() {
        let dir = nix::unistd::mkdtemp("/tmp/.stasis-scratch.XXXXXX")?;
        *scratch = Some(Scratch(dir));
    }
    let dir = scratch
        .as_ref()
        .and_then(|s| s.0.to_str())
        .unwrap_or_default()
        .to_string();
    use std::os::fd::AsFd;
    super::mnt_nested_sys::attach(copy.as_fd(), &dir, 0)?;
    let made = then(&mnt::under(&dir, sub));
    nix::mount::umount2(dir.as_str(), nix::mount::MntFlags::MNT_DETACH)?;
    made
}
