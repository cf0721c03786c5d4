//! Restore: fork the tree with the dumped PIDs, then rebuild every task from outside by
//! syscalls injected through ptrace (no restorer blob runs inside the task).
//!
//! A failed restore kills every task it created and never writes to the images dir (only
//! `stats-restore` to the work dir, after success, and a pidfile there, removed on failure).
//! It refuses an images dir others can write to before reading anything from it
//! ([`check_images_dir`]).

mod fork;
pub mod load;
mod namespaces;
mod pool;
mod reap;
pub(crate) mod sessions;
pub(crate) mod stub;

use fork::{external_pidns, fork_tree, wait_pid_free, Fork};
use pool::Pool;

use std::collections::HashMap;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::images::{magic, names, pb, ImageKind, ImageWriter};
use crate::mm::vma::restore_mm;
use crate::net::{inet, unix};
use crate::notify::Script;
use crate::proc;
use crate::sys::mem;
use crate::sys::ptrace::{self, Injector, PtraceError};
use crate::task::core::{pick_trampoline, restore_task_state};
use crate::task::remote::Remote;
use crate::task::seccomp::Install;
use crate::task::signals::{has_pending_sigtrap, sigtrap_at_risk};
use crate::task::thread::{clone_thread, restore_thread, set_final_regs};
use crate::task::timers::restore_posix_timers;
use load::TaskImage;
pub use load::{DumpImage, LoadError};

/// `--inherit-fd fd[N]:KEY`: use our fd N for the file the images call KEY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InheritFd {
    pub fd: RawFd,
    pub key: String,
}

impl std::str::FromStr for InheritFd {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("bad --inherit-fd '{s}': expected fd[N]:KEY");
        let rest = s.strip_prefix("fd[").ok_or_else(bad)?;
        let (n, key) = rest.split_once("]:").ok_or_else(bad)?;
        let fd = n.parse().map_err(|_| bad())?;
        if key.is_empty() {
            return Err(bad());
        }
        Ok(InheritFd {
            fd,
            key: key.to_string(),
        })
    }
}

/// What to restore and how; the names follow CRIU's options.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    pub images_dir: PathBuf,
    /// Where `stats-restore` goes (default: the images dir).
    pub work_dir: Option<PathBuf>,
    /// Give terminals of the dumped tree the restorer's terminal (`-j`).
    pub shell_job: bool,
    pub inherit_fds: Vec<InheritFd>,
    /// Restore established TCP connections (`--tcp-established`).
    pub tcp_established: bool,
    /// Restore established TCP connections as closed sockets (`--tcp-close`).
    pub tcp_close: bool,
    /// Restore register state even where this CPU lacks XSAVE components the images use
    /// (`--cpu-cap=none`): they are dropped. By default such images are refused.
    pub skip_cpu_check: bool,
    /// Restore even from an images dir others can write or another user owns (see
    /// [`check_images_dir`]); only for test harnesses such as CRIU's zdtm, which make their
    /// images dirs 0777 for unprivileged tests.
    pub allow_shared_images_dir: bool,
    /// Make the root a child of the caller's parent, not of the caller (CRIU's RPC
    /// `rst_sibling`: runc restores the container's init as its own child).
    pub sibling: bool,
    /// Told at CRIU's action-script points (RPC `notify_scripts`); see [`crate::notify`].
    pub notify: crate::notify::Notifier,
    /// Existing namespaces to restore into instead of new ones (`--join-ns NS:FILE`, the RPC's
    /// `join_ns`): (kind: "net", "uts" or "ipc"; its nsfs file). A joined namespace is used as
    /// it is: the tree's saved names, IPC limits or links are not applied to it.
    pub join_ns: Vec<(String, PathBuf)>,
    /// Names for the outer ends of the veths of a network namespace the tree owned
    /// (`--veth-pair IN=OUT[@BRIDGE]`).
    pub veth_pairs: Vec<stasis_netns::VethPair>,
    /// The lower devices, in the caller's namespace, of the macvlans of a network namespace
    /// the tree owned (`--external macvlan[NAME]:HOSTDEV`): (name inside, host device).
    pub macvlan_parents: Vec<(String, String)>,
    /// Where the root's pid goes (`--pidfile`; a relative path is in the work dir). Written
    /// before the tasks are let go, so a restore that cannot write it leaves nothing running.
    pub pidfile: Option<PathBuf>,
    /// The directory that becomes the root of a tree that had its own mount namespace
    /// (`--root`, the RPC's root: runc's bind of the container's rootfs).
    pub root: Option<PathBuf>,
    /// Where each external mount comes from here (`--external mnt[KEY]:PATH`, the RPC's
    /// ext_mnt): (key, path).
    /// Bind the mounts the dump found external by themselves from the host paths they showed
    /// (`--ext-mount-map auto`): see ns::mnt_ext.
    pub auto_ext_mounts: bool,
    /// The caller manages the network namespace's contents (CRIU's `--empty-ns net`): a new
    /// one gets only the tree's loopback, up; the caller's hooks add the rest
    /// (setup-namespaces).
    pub empty_netns: bool,
    /// Filesystem types mounted anew (`--enable-fs`; see ns::mnt).
    pub enable_fs: Vec<String>,
    pub ext_mounts: Vec<(String, String)>,
    /// Make a new pair for a pty whose master was outside the tree, and hand the master to
    /// the caller (`orphan-pts-master` notification; the RPC's orphan_pts_master).
    pub orphan_pts_master: bool,
    /// Put the tasks back into their dumped cgroups (`--manage-cgroups[=MODE]`, the RPC's
    /// manage_cgroups); None leaves them in the restorer's.
    pub manage_cgroups: Option<crate::cgroup::CgMode>,
    /// `--cgroup-root [CONTROLLER:]PATH` (the RPC's cg_root): where the root task's cgroup goes
    /// in that hierarchy (all of them without a controller).
    pub cgroup_roots: Vec<(Option<String>, String)>,
}

/// A restored tree: its tasks run.
#[derive(Debug, Clone)]
pub struct Restored {
    pub root_pid: u32,
    pub forking_time_us: u64,
    pub restore_time_us: u64,
    pub pages_restored: u64,
}

/// Why a restore failed. Every variant means no task of the tree is left behind.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error(transparent)]
    Sessions(#[from] sessions::SessionError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(
        "pid {pid} is already in use on this machine; free it (or restore in a new pid namespace)"
    )]
    PidTaken { pid: u32 },
    #[error(
        "the tree's pid namespace was external (key {key}): give it with --inherit-fd fd[N]:{key}"
    )]
    ExternalPidNs { key: String },
    #[error("thread {tid}: the images hold {missing} register state, which this CPU does not have: the dump was made on a CPU with more features, and programs that chose their code by them at start would fault here (--cpu-cap=none restores without it)")]
    CpuFeatures { tid: u32, missing: String },
    #[error("cannot open {path} (file id {id})")]
    Open {
        id: u32,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Setup {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("task {pid}: {step} failed: {}", std::io::Error::from_raw_os_error(*errno as i32))]
    StubMount { pid: u32, step: String, errno: u32 },
    #[error("task {pid}: {what} failed: {}", std::io::Error::from_raw_os_error(*errno as i32))]
    Stub {
        pid: u32,
        what: &'static str,
        errno: u32,
    },
    #[error("task {pid}")]
    Ptrace {
        pid: u32,
        #[source]
        source: PtraceError,
    },
    #[error(transparent)]
    Mem(#[from] mem::MemError),
    #[error(transparent)]
    MntNs(#[from] crate::ns::mnt_sys::MntNsError),
    #[error(transparent)]
    UserNs(#[from] crate::ns::user::UserNsError),
    #[error("putting the tasks back into their cgroups")]
    Cgroup(#[source] Box<stasis_cgroups::CgroupError>),
    #[error(transparent)]
    Pages(#[from] crate::mm::pages::PagesError),
    #[error("task {pid}: a forked task exited before it was ready")]
    ExitedBeforeReady { pid: u32 },
    #[error("System V shared memory id {id} is in use by another segment (key {key:#x})")]
    ShmIdTaken { id: u32, key: u32 },
    #[error("task {pid}: path with a NUL byte")]
    NulInPath { pid: u32 },
    #[error("{path} (file id {id}) changed since the dump: {was} bytes then, {now} now")]
    Changed {
        id: u32,
        path: String,
        was: u64,
        now: u64,
    },
    #[error("socket (file id {id})")]
    Socket {
        id: u32,
        #[source]
        source: inet::InetError,
    },
    #[error(transparent)]
    Netlink(#[from] crate::net::netlink::NetlinkError),
    #[error(transparent)]
    Packet(#[from] crate::net::packet::PacketError),
    #[error("timed out waiting for the forked tasks to get ready")]
    Timeout,
    #[error(transparent)]
    IpcNs(#[from] crate::ns::ipc::IpcNsError),
    #[error(transparent)]
    Uts(#[from] crate::ns::uts::UtsError),
    #[error(transparent)]
    Notify(#[from] crate::notify::NotifyError),
    #[error(transparent)]
    PidNs(#[from] crate::ns::pid::PidNsError),
    #[error(transparent)]
    NetNs(#[from] crate::ns::net::NetNsError),
    #[error(transparent)]
    TimeNs(#[from] crate::ns::time::TimeNsError),
    #[error("the tree's network namespace was external (key {key}): give it with --inherit-fd fd[N]:{key}")]
    ExternalNetNs { key: String },
    #[error("the images hold no contents of the tree's network namespace ({file} is missing: dumped with --empty-ns net, as runc asks when its hooks set the network up): restore with --empty-ns net")]
    UnsavedNetNs { file: String },
    #[error(transparent)]
    Mqueue(#[from] crate::ipc::mqueue::MqError),
    #[error(transparent)]
    Ipc(#[from] crate::ipc::sysv::IpcError),
    #[error("pty (file id {id})")]
    Pty {
        id: u32,
        #[source]
        source: crate::files::tty::PtyError,
    },
    #[error("unix socket (file id {id})")]
    Unix {
        id: u32,
        #[source]
        source: unix::UnixError,
    },
    #[error("file id {id}")]
    AnonFd {
        id: u32,
        #[source]
        source: crate::files::anon::AnonFdError,
    },
    #[error("task {pid}: the images hold established TCP connections: restore with --tcp-established (or --tcp-close, which those dumped with --tcp-close need)")]
    TcpNeedsFlag { pid: u32 },
    #[error("file id {id} has a kind this version cannot restore")]
    UnknownFileKind { id: u32 },
    #[error("FIFO file id {id} has no path")]
    FifoWithoutPath { id: u32 },
    #[error("task {pid}: lock on fd {fd} of a file not restored")]
    LockWithoutFile { pid: u32, fd: i32 },
    #[error(transparent)]
    TaskState(#[from] crate::task::TaskError),
    #[error(transparent)]
    Mm(#[from] crate::mm::MmError),
    #[error("images dir {} is writable by others (mode {mode:04o}): refusing to restore from it (chmod go-w {})", path.display(), path.display())]
    ImagesDirWritable { path: PathBuf, mode: u32 },
    #[error("images dir {} is owned by uid {uid}, neither root nor us: refusing to restore from it", path.display())]
    ImagesDirOwner { path: PathBuf, uid: u32 },
    #[error("cannot read images dir {}", path.display())]
    ImagesDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Refuses an images dir that someone else could have written to: group- or other-writable,
/// or owned by a user other than root and us. The images drive what the restore does as
/// root (which files it opens, what it writes into memory), so they must be ours.
pub fn check_images_dir(dir: &Path) -> Result<(), RestoreError> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(dir).map_err(|source| RestoreError::ImagesDir {
        path: dir.to_path_buf(),
        source,
    })?;
    let euid = nix::unistd::geteuid().as_raw();
    crate::private::dir_trust(md.mode(), md.uid(), euid).map_err(|u| match u {
        crate::private::Untrusted::WritableByOthers { mode } => RestoreError::ImagesDirWritable {
            path: dir.to_path_buf(),
            mode,
        },
        crate::private::Untrusted::Owner { uid } => RestoreError::ImagesDirOwner {
            path: dir.to_path_buf(),
            uid,
        },
    })
}

pub(crate) fn ptr_err(pid: u32) -> impl FnOnce(PtraceError) -> RestoreError {
    move |source| RestoreError::Ptrace { pid, source }
}

pub(crate) fn setup_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Setup { what, source }
}

/// Tasks this restore created; killed on drop unless disarmed.
#[derive(Default)]
struct Created {
    root: Option<u32>,
    /// The root is our child (not a sibling, which our parent reaps).
    root_is_child: bool,
    pids: Vec<u32>,
    traced: Vec<u32>,
    armed: bool,
    /// Every pid of the tree, reaped on failure.
    tree: Vec<u32>,
}

impl Drop for Created {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        // The tasks killed below are reparented to us, to be reaped here rather than by init.
        // Not a sibling root's: it and its children descend from our parent, not from us.
        let reaper = if self.root_is_child {
            reap::Reaper::start()
        } else {
            None
        };
        for &pid in self.pids.iter().chain(self.root.iter()) {
            // SAFETY: plain kill(2) of a task we created.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        ptrace::reap_killed(self.traced.iter().rev().copied());
        if let Some(root) = self.root.filter(|_| self.root_is_child) {
            let mut st = 0;
            // SAFETY: waitpid on our own child.
            unsafe { libc::waitpid(root as libc::pid_t, &mut st, libc::__WALL) };
        }
        if let Some(r) = &reaper {
            r.reap(&self.tree);
        }
    }
}

/// Restores the tree in `opts.images_dir`. The tasks run when this returns; the root is a
/// child of the calling process.
///
/// The steps: load and check every image; make what lives outside the tasks (namespaces,
/// IPC objects, every file in the pool); fork the tree with its pids; rebuild each task's
/// memory, files and state by injected syscalls; its threads and registers; release all
/// tasks together.
/// Refuses images whose register state uses XSAVE components this CPU lacks (CRIU's default
/// `--cpu-cap=fpu` check): restoring them would drop that state, and a program that picked
/// AVX-512 code at start (glibc's string functions do) dies at its next such instruction.
fn check_cpu_features(img: &DumpImage) -> Result<(), RestoreError> {
    use crate::task::arch;
    let host = arch::host_xfeatures();
    for th in img.tasks.iter().flat_map(|t| &t.threads) {
        let Some(ti) = th.core.thread_info.as_ref() else {
            continue;
        };
        let missing = arch::image_xfeatures(&ti.fpregs) & !host;
        if missing != 0 {
            return Err(RestoreError::CpuFeatures {
                tid: th.tid,
                missing: arch::xfeature_names(missing),
            });
        }
    }
    Ok(())
}

/// The tree's mount namespace and the ones nested in it, made (see ns::mnt_sys); the paths
/// of its files set in `img`.
fn make_mounts(
    img: &mut DumpImage,
    opts: &RestoreOptions,
    holder: Option<&crate::ns::user::Holder>,
) -> Result<
    (
        Option<crate::ns::mnt_sys::Early>,
        Vec<crate::ns::mnt_nested_sys::NestedEarly>,
    ),
    RestoreError,
> {
    if let Some(table) = img.mounts.as_mut() {
        crate::ns::mnt::mark_mount_anew(table, &opts.enable_fs);
    }
    for (_, table) in img.nested_mounts.iter_mut() {
        crate::ns::mnt::mark_mount_anew(table, &opts.enable_fs);
    }
    let mut nested_mounts = Vec::new();
    let mounts = match &img.mounts {
        Some(table) => {
            step("mounts")?;
            let all = crate::ns::mnt_nested::all_mounts(table, &img.nested_mounts);
            let build_opts = crate::ns::mnt_sys::BuildOpts {
                images: &img.dir,
                root: opts.root.as_deref(),
                ext: &opts.ext_mounts,
                auto_ext: opts.auto_ext_mounts,
                existing: holder.and_then(|h| h.get("mnt")),
                userns: img.userns.as_ref(),
                all_mounts: &all,
                nested: None,
            };
            let mut early = crate::ns::mnt_sys::build(table, &build_opts)?;
            if !img.nested_mounts.is_empty() {
                step("nested mount namespaces")?;
                nested_mounts = crate::ns::mnt_nested_sys::build_nested(
                    &mut early,
                    table,
                    &img.nested_mounts,
                    &build_opts,
                )?;
            }
            img.fs_root = Some(early.root_path());
            img.host_root = early.host_root_path();
            Some(early)
        }
        None => None,
    };
    img.nested_roots = nested_mounts
        .iter()
        .map(|n| (n.id, n.root_path()))
        .collect();
    Ok((mounts, nested_mounts))
}

/// The images, loaded and checked against this machine and the options.
fn load_checked(opts: &RestoreOptions) -> Result<DumpImage, RestoreError> {
    if !opts.allow_shared_images_dir {
        check_images_dir(&opts.images_dir)?;
    }
    step("load")?;
    let img = load::load(&opts.images_dir)?;
    crate::net::inet::file::check_tcp_flags(&img, opts)?;
    if !opts.skip_cpu_check {
        check_cpu_features(&img)?;
    }
    Ok(img)
}

pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let t0 = Instant::now();
    let mut img = load_checked(opts)?;
    opts.notify.run(Script::PreRestore, None)?;
    // A root of pid 1 is a pid namespace's init: the tree gets a new namespace (see ns::pid),
    // where every pid is free.
    let own_pidns = img.tasks[0].pid() == 1 && img.pidns_ext_key.is_none();
    // An external one (runc's extRootPidNS) is joined: the caller hands it over by its key.
    let ext_pidns = match &img.pidns_ext_key {
        Some(key) => Some(external_pidns(opts, key)?),
        None => None,
    };
    let in_pidns = own_pidns || ext_pidns.is_some();
    // Before anything is made: a tree whose sessions cannot be made again is refused here.
    let sessions = fork::plan_sessions(&img, own_pidns)?;
    if in_pidns {
        // The worker inside has a /proc of its own: a /proc/<pid>/fd/N path (the RPC's
        // images_dir_fd) would not lead anywhere there.
        if let Ok(d) = std::fs::canonicalize(&img.dir) {
            img.dir = d;
        }
    }
    if !in_pidns {
        for t in &img.tasks {
            for th in &t.threads {
                wait_pid_free(th.tid)?;
            }
        }
    }
    raise_nofile_limit();
    step("namespaces")?;
    // Held until the restore ends: the namespaces this thread moved into, for the root to be
    // forked there.
    let (_namespaces, holder) = namespaces::enter_tree_namespaces(&img, opts)?;
    // After the network and IPC namespaces: a sysfs and an mqueue show the namespaces of
    // whoever mounts them.
    let (mut mounts, nested_mounts) = make_mounts(&mut img, opts, holder.as_ref())?;
    // Queues must exist before the pool opens their fds.
    step("message queues")?;
    let mut ipc_made = crate::ipc::Made::default();
    let name_of = |id| {
        let reg = img.files.get(&id)?.reg.as_ref()?;
        let name = reg.name.strip_prefix(crate::ipc::mqueue::PATH_PREFIX)?;
        Some(name.to_string())
    };
    crate::ipc::mqueue::restore(&img.posix_mqueues, name_of, &mut ipc_made)?;
    crate::cgroup::prepare_cgroups(&img, opts.manage_cgroups, &opts.cgroup_roots)?;
    step("pool")?;
    // Until the stubs have changed into them: dead processes' /proc dirs (see files::reg).
    let dead_proc_helpers = crate::files::reg::DeadProcHelpers;
    let pool = Pool::build(&img, opts)?;
    step("file locks")?;
    crate::files::locks::take_file_locks(&img, &pool.by_file)?;
    step("System V objects")?;
    let sysv_to_remove = crate::ipc::shm::prepare(&img, &mut ipc_made)?;
    crate::ipc::sysv::restore_msg(&img.sysv_msg, &mut ipc_made)?;
    crate::ipc::sysv::restore_sem(&img.sysv_sem, &mut ipc_made)?;
    if let Some(vars) = &img.ipc_vars {
        crate::ns::ipc::write_next_ids(vars)?;
    }
    let trampoline = pick_trampoline(&img)?;
    let premaps = fork::premaps(&img, trampoline, &sessions);
    let stub_mounts = match mounts.as_mut() {
        Some(early) => {
            // Every file of the tree is made (ghosts included): what was read-only is so again.
            early.seal_read_only()?;
            early.leave()?;
            Some(early.stub_mounts(&nested_mounts))
        }
        None => None,
    };
    step("fork")?;
    let fork = Fork {
        trampoline,
        sibling: opts.sibling,
        own_pidns,
        ext_pidns: ext_pidns.as_ref().map(|f| f.as_raw_fd()),
        mounts: stub_mounts,
        new_cgroupns: img.own_cgroupns,
        cgroupns_procs: crate::cgroup::cgroupns_root_procs(
            &img,
            opts.manage_cgroups,
            &opts.cgroup_roots,
        )?,
        userns: holder.as_ref().map(|h| h.user.as_raw_fd()),
        premaps: premaps.clone(),
        sessions,
    };
    let (mut created, files, premapped_pages) = fork_tree(&img, pool, fork)?;
    drop(dead_proc_helpers);
    // The init holds the namespaces now (or failed, and the restore with it).
    drop(mounts);
    drop(nested_mounts);
    drop(holder);
    let forking_time_us = t0.elapsed().as_micros() as u64;
    // The root's pid as the caller sees it (the host's, for a tree with its own namespace).
    let root_pid = created.root.unwrap_or(img.tasks[0].pid());
    opts.notify.run(Script::SetupNamespaces, Some(root_pid))?;
    opts.notify.run(Script::PostSetupNamespaces, None)?;
    // Before the tasks are let go, so a restore that cannot write it leaves nothing running.
    let pidfile = write_pidfile(opts, root_pid)?;
    let steps = Steps {
        img: &img,
        trampoline,
        files: &files,
        sysv_to_remove: &sysv_to_remove,
        opts,
        root_pid,
        premaps: &premaps,
    };
    let pages_restored = premapped_pages
        + if in_pidns {
            // The stubs' pids are the namespace's: only the worker inside may act on them; ours
            // is the init's host pid, whose death takes the whole namespace.
            let mut inside = Created {
                root: None,
                root_is_child: false,
                pids: std::mem::take(&mut created.pids),
                traced: Vec::new(),
                armed: true,
                tree: Vec::new(),
            };
            created.tree = vec![root_pid];
            let taken: Vec<u32> = img
                .tasks
                .iter()
                .flat_map(|t| t.threads.iter().map(|th| th.tid))
                .collect();
            crate::ns::pid::run_inside(root_pid, crate::ns::pid::worker_pid(&taken), move || {
                steps.run(&mut inside).map_err(|e| {
                    // The chain in one line, as the caller prints it.
                    let mut msg = e.to_string();
                    let mut src = std::error::Error::source(&e);
                    while let Some(s) = src {
                        msg = format!("{msg}: {s}");
                        src = s.source();
                    }
                    msg
                })
            })?
        } else {
            steps.run(&mut created)?
        };
    created.armed = false;
    pidfile.keep();
    ipc_made.keep();
    opts.notify.run_late(Script::PostResume, None);
    let restored = Restored {
        root_pid,
        forking_time_us,
        restore_time_us: t0.elapsed().as_micros() as u64,
        pages_restored,
    };
    write_stats_late(opts, &restored);
    Ok(restored)
}

/// stats-restore in the work dir; too late to fail the restore, which has succeeded.
fn write_stats_late(opts: &RestoreOptions, restored: &Restored) {
    let work = opts
        .work_dir
        .clone()
        .unwrap_or_else(|| opts.images_dir.clone());
    if let Err(e) = write_stats(&work, restored) {
        log::warn!("cannot write stats-restore: {e}");
    }
}

/// The restore's steps once the tree is forked, up to the tasks running: in this process, or
/// in the worker inside the tree's pid namespace (see ns::pid).
struct Steps<'a> {
    img: &'a DumpImage,
    trampoline: u64,
    files: &'a PoolFds,
    sysv_to_remove: &'a [i32],
    opts: &'a RestoreOptions,
    /// As the caller sees it, for the notifications.
    root_pid: u32,
    /// Per task, its areas premapped before the fork (see mm::premap).
    premaps: &'a [Vec<crate::mm::premap::Premap>],
}

impl Steps<'_> {
    /// Returns the pages restored. `created` is disarmed once every task runs.
    fn run(&self, created: &mut Created) -> Result<u64, RestoreError> {
        let (img, opts) = (self.img, self.opts);
        wait_for_zombies(img);
        if let Some(mode) = opts.manage_cgroups {
            step("cgroup membership")?;
            crate::cgroup::restore_membership(img, mode, &opts.cgroup_roots)?;
        }
        let (vdso_syscall, pages_restored) =
            rebuild_tasks(img, self.trampoline, self.files, self.premaps, created)?;
        // Segments that were already marked for removal are marked again, now that they are
        // attached.
        for id in self.sysv_to_remove {
            // SAFETY: shmctl(IPC_RMID) with no buffer.
            if unsafe { libc::shmctl(*id, libc::IPC_RMID, std::ptr::null_mut()) } < 0 {
                return Err(setup_err(format!(
                    "marking System V segment {id} for removal"
                ))(std::io::Error::last_os_error()));
            }
        }
        for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
            step(format_args!("threads of task {}", t.pid()))?;
            finish_threads(t, img, self.trampoline, vdso_syscall[&t.pid()], created)?;
        }
        if let Some(mode) = opts.manage_cgroups {
            crate::cgroup::restore_thread_cgroups(img, mode, &opts.cgroup_roots)?;
        }
        namespaces::restore_firewall(img, opts)?;
        opts.notify.run(Script::PostRestore, Some(self.root_pid))?;
        // The connections exist again: let their peers' packets through (network-unlock).
        // This thread is in the tree's network namespace if it has one (a namespace made
        // anew was locked again when made, see lock_new_netns).
        let made_anew = matches!(img.net, Some(crate::ns::net::Saved::Own(_)));
        if let Some(table) = img.net_lock.as_ref() {
            let mut result = stasis_netns::nftlock::unlock(table);
            if result.as_ref().is_err_and(|e| e.is_not_found()) {
                // Images of an older stasis name its own table.
                let old = table.replacen(
                    crate::dump::NET_LOCK_TABLE_PREFIX,
                    crate::dump::OLD_NET_LOCK_TABLE_PREFIX,
                    1,
                );
                result = stasis_netns::nftlock::unlock(&old);
            }
            match result {
                Ok(()) => {}
                // An external namespace the caller made anew (podman's, from netavark) never
                // had it; one it kept (runc's netns given by path) had.
                Err(e) if e.is_not_found() => {
                    log::debug!("network lock {table}: not in this namespace")
                }
                Err(e) => log::warn!("cannot remove network lock {table}: {e}"),
            }
        }
        if img.iptables_lock && !made_anew {
            crate::net::inet::file::remove_criu_iptables_lock(img);
        }
        opts.notify.run(Script::NetworkUnlock, None)?;
        // Out of repair mode once the lock is gone, so that the answers to the window probes
        // get through (as CRIU's restorer, after its network-unlock).
        crate::net::inet::file::leave_repair_all(img)?;
        opts.notify.run(Script::PreResume, None)?;
        release_all(img)?;
        created.armed = false;
        crate::files::reg::remove_links(img);
        Ok(pages_restored)
    }
}

/// Zombies die right after reporting; wait until they have, so the SIGCHLD they send their
/// parent is pending before the stubs' signals are drained.
fn wait_for_zombies(img: &DumpImage) {
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_some()) {
        let end = Instant::now() + Duration::from_secs(2);
        while proc::stat(t.pid()).map(|s| s.state != 'Z').unwrap_or(false) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// The pool's fds as the tasks will see them once forked (the pool itself is closed in the
/// restorer after the fork).
struct PoolFds {
    by_file: HashMap<u32, RawFd>,
    by_shmid: HashMap<u64, RawFd>,
    base: RawFd,
}

/// Seizes every live task, then rebuilds each one's memory, its files' in-task state and its
/// task state. Returns each task's vdso syscall address and the pages restored.
fn rebuild_tasks(
    img: &DumpImage,
    trampoline: u64,
    files: &PoolFds,
    premaps: &[Vec<crate::mm::premap::Premap>],
    created: &mut Created,
) -> Result<(HashMap<u32, u64>, u64), RestoreError> {
    let mut pages_restored = 0;
    let mut vdso_syscall = HashMap::new();
    // Filters are installed before the credentials drop (installing needs CAP_SYS_ADMIN or
    // no_new_privs); suspended while traced, they filter none of the syscalls injected after.
    let mut seize_options = ptrace::PTRACE_O_TRACECLONE | PTRACE_O_EXITKILL;
    let strict = img.tasks.iter().flat_map(|t| &t.threads).any(|th| {
        th.core.thread_core.as_ref().and_then(|c| c.seccomp_mode)
            == Some(pb::SeccompMode::Strict as i32)
    });
    if !img.seccomp.is_empty() || strict {
        seize_options |= ptrace::PTRACE_O_SUSPEND_SECCOMP;
    }
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
        let pid = t.pid();
        step(format_args!("seize of task {pid}"))?;
        ptrace::seize(pid, seize_options).map_err(ptr_err(pid))?;
        created.traced.push(pid);
        ptrace::interrupt_and_wait(pid, pid).map_err(ptr_err(pid))?;
        // A pending SIGTRAP is queued before more injections: keep it blocked, or the next
        // single step would take it (threads cloned later inherit the mask).
        if has_pending_sigtrap(t) {
            ptrace::set_sigmask(pid, !0).map_err(ptr_err(pid))?;
        }
    }
    let mut kind_slots = crate::files::kind::Slots::default();
    let live: Vec<&TaskImage> = img
        .tasks
        .iter()
        .filter(|t| t.zombie_exit.is_none())
        .collect();
    let no_premaps = Vec::new();
    for (i, &t) in live.iter().enumerate() {
        step(format_args!("rebuild of task {}", t.pid()))?;
        let r = Remote::new(t.pid(), trampoline, sigtrap_at_risk(t))?;
        // A shared fd table keeps the pool until its last task has mapped its files.
        let close_pool = !live[i + 1..].iter().any(|o| o.files_id == t.files_id);
        let index = img.tasks.iter().position(|o| o.pid() == t.pid());
        let sources = crate::mm::vma::MmSources {
            fd_of_file: &files.by_file,
            fd_of_shmem: &files.by_shmid,
            close_pool_from: close_pool.then_some(files.base),
            premaps: index.and_then(|n| premaps.get(n)).unwrap_or(&no_premaps),
        };
        let vdso = restore_mm(&r, t, img, &sources, &mut pages_restored)?;
        vdso_syscall.insert(t.pid(), vdso);
        let mut tcx = crate::files::kind::TaskCx {
            img,
            slots: &mut kind_slots,
        };
        for kind in crate::files::kind::KINDS {
            kind.in_task(&r, t, &mut tcx)?;
        }
        crate::task::core::restore_owners(&r, t, img)?;
        crate::files::locks::restore_task_locks(&r, t, img)?;
    }
    // Process-wide state once every task's files are back: it starts by dropping the signals
    // the stubs got, which the files' making may send any task of the tree (a lease broken
    // again signals its owner, maybe a task rebuilt before).
    for &t in &live {
        let r = Remote::new(t.pid(), trampoline, sigtrap_at_risk(t))?;
        restore_task_state(&r, t)?;
    }
    Ok((vdso_syscall, pages_restored))
}

/// A task's other threads (cloned with their tids), its POSIX timers, each thread's state,
/// then the trampoline unmapped and every thread's registers set back.
fn finish_threads(
    t: &TaskImage,
    img: &DumpImage,
    trampoline: u64,
    vdso_syscall: u64,
    created: &mut Created,
) -> Result<(), RestoreError> {
    let quiet = sigtrap_at_risk(t);
    let r = Remote::new(t.pid(), trampoline, quiet)?;
    let mut threads = vec![(t.pid(), r)];
    for th in t.threads.iter().skip(1) {
        let tid = clone_thread(&threads[0].1, th.tid)?;
        created.traced.push(tid);
        threads.push((
            tid,
            Remote::new_for_thread(t.pid(), tid, trampoline, quiet)?,
        ));
    }
    // POSIX timers after the threads: a timer may signal one thread (SIGEV_THREAD_ID).
    if let Some(tm) = &t.tc().timers {
        if !tm.posix.is_empty() {
            restore_posix_timers(&threads[0].1, &tm.posix)?;
        }
    }
    // Threads that share one seccomp chain get it from the main thread's TSYNC, which comes
    // last so that the others are not filtered while they are set up.
    let filters: Vec<Option<u32>> = t
        .threads
        .iter()
        .map(|th| th.core.thread_core.as_ref().and_then(|c| c.seccomp_filter))
        .collect();
    let shared =
        threads.len() > 1 && filters[0].is_some() && filters.iter().all(|f| *f == filters[0]);
    let (main, others) = t.threads.split_first().expect("a task has a main thread");
    for (th, (_, r)) in others.iter().zip(&threads[1..]) {
        let install = if shared {
            Install::FromMain
        } else {
            Install::Own
        };
        restore_thread(r, t, th, &img.seccomp, install)?;
    }
    let install = if shared { Install::Tsync } else { Install::Own };
    restore_thread(&threads[0].1, t, main, &img.seccomp, install)?;
    // After every thread's credentials: changing them resets the mm's dumpable flag.
    crate::task::core::restore_dumpable(&threads[0].1, t)?;
    // The trampoline goes last, through the syscall instruction of the (moved) vdso.
    let leader = Injector::new(t.pid(), vdso_syscall)
        .map_err(ptr_err(t.pid()))?
        .with_quiet(quiet);
    leader
        .call(libc::SYS_munmap, &[trampoline, stub::TRAMPOLINE_LEN])
        .map_err(ptr_err(t.pid()))?;
    for (th, (tid, _)) in t.threads.iter().zip(&threads) {
        set_final_regs(*tid, th)?;
    }
    Ok(())
}

/// Everything is in place: lets every task go together (a task stopped when dumped stops
/// again before running a single instruction).
fn release_all(img: &DumpImage) -> Result<(), RestoreError> {
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
        step(format_args!("release of task {}", t.pid()))?;
        if t.tc().task_state == crate::images::TASK_STOPPED {
            let sig = t.tc().stop_signo.unwrap_or(libc::SIGSTOP as u32) as libc::c_int;
            // SAFETY: kill(2) of a task we created and still trace.
            if unsafe { libc::kill(t.pid() as libc::pid_t, sig) } < 0 {
                return Err(setup_err(format!("stopping task {} again", t.pid()))(
                    std::io::Error::last_os_error(),
                ));
            }
        }
        for th in &t.threads {
            ptrace::detach(th.tid).map_err(ptr_err(t.pid()))?;
        }
    }
    Ok(())
}

const PTRACE_O_EXITKILL: libc::c_int = 0x100000;

/// A fault point of a restore step (see [`crate::fault`]): fails as the step would.
pub(crate) fn step(name: impl std::fmt::Display) -> Result<(), RestoreError> {
    crate::fault::point(format_args!("restore: {name}"))
        .map_err(|source| setup_err(name.to_string())(source))
}

/// The pidfile, written before the tasks are let go: removed again unless [`Pidfile::keep`]
/// says the restore succeeded, so a failed restore names no pid.
struct Pidfile(Option<PathBuf>);

impl Pidfile {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Pidfile {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn write_pidfile(opts: &RestoreOptions, pid: u32) -> Result<Pidfile, RestoreError> {
    let Some(given) = &opts.pidfile else {
        return Ok(Pidfile(None));
    };
    let work = opts.work_dir.as_ref().unwrap_or(&opts.images_dir);
    let path = work.join(given);
    let what = || format!("cannot write pidfile {}", path.display());
    let mut f = crate::private::create_output(given, &path).map_err(|e| setup_err(what())(e))?;
    // Removed on failure only if a regular file: a device (`/dev/stdout`) is the user's.
    let guard = Pidfile(
        f.metadata()
            .is_ok_and(|m| m.is_file())
            .then(|| path.clone()),
    );
    use std::io::Write;
    crate::fault::write_point(&path)
        .and_then(|()| f.write_all(pid.to_string().as_bytes()))
        .map_err(|e| setup_err(what())(e))?;
    Ok(guard)
}

fn write_stats(work: &Path, r: &Restored) -> std::io::Result<()> {
    let clamp = |v: u64| v.min(u32::MAX as u64) as u32;
    let entry = pb::StatsEntry {
        dump: None,
        restore: Some(pb::RestoreStatsEntry {
            pages_compared: 0,
            pages_skipped_cow: 0,
            forking_time: clamp(r.forking_time_us),
            restore_time: clamp(r.restore_time_us),
            pages_restored: Some(r.pages_restored),
        }),
    };
    let mut w = ImageWriter::new(ImageKind::Service, magic::STATS);
    w.push(&entry);
    crate::private::write_private(&work.join(names::STATS_RESTORE), &w.into_bytes())
}

/// As many fds as we may have: the pool holds every file of the tree at once.
fn raise_nofile_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    match getrlimit(Resource::RLIMIT_NOFILE) {
        Ok((soft, hard)) if soft < hard => {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                log::warn!("cannot raise RLIMIT_NOFILE to {hard}: {e}");
            }
        }
        Ok(_) => {}
        Err(e) => log::warn!("cannot read RLIMIT_NOFILE: {e}"),
    }
}
