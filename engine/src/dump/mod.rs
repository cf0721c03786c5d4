//! Dump: freeze a process tree with ptrace, read its state from outside, write CRIU images.
//!
//! The one rule that has no exception: whatever happens, a dump that does not end with the tree
//! killed on purpose leaves every task running, with its registers, signal mask and memory map
//! as they were, and detached. [`Tree`] enforces it in `Drop`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub mod abort;
pub mod fds;

use crate::files::{self, tty as pty};
use crate::freeze::{refuse_foreign_namespaces, shared_kernel_objects, Tree};
use crate::images::{self, magic, names, pb, ImageKind, ImageWriter};
use crate::notify::{Notifier, NotifyError, Script};
use crate::proc;
use crate::sys::mem::{self};
use crate::sys::ptrace::PtraceError;
use crate::task::core::{dump_task, dump_zombie, ids_for};

/// What to dump and how; the names follow CRIU's options.
#[derive(Debug, Clone)]
pub struct DumpOptions {
    /// Root of the tree (`-t`).
    pub pid: u32,
    /// Where images go (`-D`).
    pub images_dir: PathBuf,
    /// Where `stats-dump` goes (`-W`, default: the images dir).
    pub work_dir: Option<PathBuf>,
    /// Keep the tree running after the dump (`-R`).
    pub leave_running: bool,
    /// Allow a terminal and session that lead outside the tree (`-j`).
    pub shell_job: bool,
    /// Largest file deleted while open whose content is saved (`--ghost-limit`).
    pub ghost_limit: u64,
    /// A file deleted while open that has other names is kept by a hard link made beside its
    /// old name, `link_remap.<id>`, which the restore opens and removes (`--link-remap`);
    /// without it such a file is refused, as by CRIU.
    pub link_remap: bool,
    /// Dump established TCP connections through TCP_REPAIR (`--tcp-established`).
    pub tcp_established: bool,
    /// Without `tcp_established`: dump established TCP connections as sockets only, which
    /// the restore makes closed (`--tcp-close`, as CRIU); they are neither locked nor read.
    pub tcp_close: bool,
    /// Allow unix datagram sockets connected to a named peer outside the tree (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Unix sockets of any type whose peer is outside, dumped as external: the restore needs a
    /// replacement for each through `--inherit-fd fd[N]:socket:[INODE]` (`--ext-unix-sk=INODE`).
    pub ext_unix_sk_inodes: Vec<u32>,
    /// Dump file locks (`--file-locks`); without it a held lock fails the dump.
    pub file_locks: bool,
    /// Told at CRIU's action-script points (RPC `notify_scripts`); see [`crate::notify`].
    pub notify: Notifier,
    /// Network namespaces that are the caller's to keep, not the tree's to save (`--external
    /// net[INODE]:KEY`, runc's `extRootNetNS`): (nsfs inode, key). The restore joins the one
    /// given as `--inherit-fd fd[N]:KEY`.
    pub external_netns: Vec<(u64, String)>,
    /// `--external pid[INODE]:KEY`: the tree's pid namespace is not its own (runc's
    /// extRootPidNS): its root need not be the init, and the restore joins the namespace the
    /// caller hands over as KEY.
    pub external_pidns: Vec<(u64, String)>,
    /// Freeze this cgroup (a v1 freezer or a cgroup2 directory) while the tree is seized
    /// (`--freeze-cgroup`). Every process in it must be in the tree: one outside is refused.
    pub freeze_cgroup: Option<PathBuf>,
    /// Mounts the caller declares external (`--external mnt[MOUNTPOINT]:KEY`, the RPC's
    /// ext_mnt): (mountpoint, key). The restore binds what the caller maps each key to.
    /// Mounts bound in from outside found by themselves (`--ext-mount-map auto`): see
    /// ns::mnt_ext.
    pub auto_ext_mounts: Option<crate::ns::mnt_ext::AutoExternal>,
    /// The caller manages the network namespace's contents (CRIU's `--empty-ns net`, which
    /// runc always sends): only that the tree owns one is saved, not its links.
    pub empty_netns: bool,
    /// Filesystem types mounted anew at restore (`--enable-fs`; see ns::mnt).
    pub enable_fs: Vec<String>,
    /// Terminals the caller hands over at restore (`--external tty[RDEV:DEV]`; see
    /// files::tty::ext).
    pub external_ttys: Vec<String>,
    pub ext_mounts: Vec<(String, String)>,
    /// A pty slave whose master is outside the tree (a container's console, held by runc's
    /// console socket) is saved; the restore makes a new pair (the RPC's orphan_pts_master).
    pub orphan_pts_master: bool,
}

impl DumpOptions {
    /// Options for dumping the tree at `pid` into `images_dir`, everything else as CRIU's
    /// defaults (kill the tree after the dump, no shell job, 1 MiB ghost limit).
    pub fn new(pid: u32, images_dir: impl Into<PathBuf>) -> Self {
        DumpOptions {
            pid,
            images_dir: images_dir.into(),
            work_dir: None,
            leave_running: false,
            shell_job: false,
            ghost_limit: files::DEFAULT_GHOST_LIMIT,
            link_remap: false,
            tcp_established: false,
            tcp_close: false,
            ext_unix_sk: false,
            ext_unix_sk_inodes: Vec::new(),
            file_locks: false,
            notify: Notifier::default(),
            external_netns: Vec::new(),
            external_pidns: Vec::new(),
            freeze_cgroup: None,
            ext_mounts: Vec::new(),
            auto_ext_mounts: None,
            empty_netns: false,
            enable_fs: Vec::new(),
            external_ttys: Vec::new(),
            orphan_pts_master: false,
        }
    }
}

/// Timings and counters of one dump, also written to `stats-dump` as CRIU does.
#[derive(Debug, Clone, Default)]
pub struct DumpStats {
    pub freezing_time_us: u64,
    pub frozen_time_us: u64,
    pub memdump_time_us: u64,
    pub memwrite_time_us: u64,
    /// Private memory pages (CRIU's pages_*).
    pub pages_scanned: u64,
    pub pages_written: u64,
    /// Shared memory pages: MAP_SHARED anonymous, memfd, System V (CRIU's shpages_*).
    pub shpages_scanned: u64,
    pub shpages_written: u64,
    pub tasks: usize,
    pub threads: usize,
}

/// Why a dump failed. Every variant means the tree was left running.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("process {pid} does not exist")]
    NoProcess { pid: u32 },
    #[error("interrupted by signal {signal}: the dump was abandoned, the tree runs on")]
    Aborted { signal: i32 },
    #[error("process {pid} is a zombie: it has exited and its parent has not reaped it")]
    Zombie { pid: u32 },
    #[error("the main thread of process {pid} has exited while its other threads run, which is not supported")]
    LeaderExited { pid: u32 },
    #[error("thread {tid} of process {pid} is already traced by pid {tracer} ({tracer_comm}: a debugger, strace, or another dump), which is not supported")]
    AlreadyTraced {
        pid: u32,
        tid: u32,
        tracer: u32,
        tracer_comm: String,
    },
    #[error("cannot seize thread {tid} of process {pid}")]
    Seize {
        pid: u32,
        tid: u32,
        #[source]
        source: PtraceError,
    },
    #[error("process {pid}")]
    Ptrace {
        pid: u32,
        #[source]
        source: PtraceError,
    },
    #[error(transparent)]
    Proc(#[from] proc::ProcError),
    #[error(transparent)]
    Mem(#[from] mem::MemError),
    #[error("cannot write image {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("images dir {path} is not usable")]
    ImagesDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("pid {pid} fd {fd}: {what} is not supported yet")]
    UnsupportedFd { pid: u32, fd: i32, what: String },
    #[error("pid {pid} mapping {start:#x}-{end:#x} ({path}): {what} is not supported yet")]
    UnsupportedVma {
        pid: u32,
        start: u64,
        end: u64,
        path: String,
        what: String,
    },
    #[error("pid {pid} fd {fd} is the terminal {path} outside the tree: dump with --shell-job")]
    ShellJobNeeded { pid: u32, fd: i32, path: String },
    #[error(
        "process {pid} shares its {what} with process {other} (CLONE_{what_upper} without CLONE_THREAD), which is not supported"
    )]
    SharedKernelObject {
        pid: u32,
        other: u32,
        what: &'static str,
        what_upper: &'static str,
    },
    #[error("cannot tell whether process {pid} shares its {what} with process {other} (kcmp)")]
    Kcmp {
        pid: u32,
        other: u32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    MntNs(#[from] crate::ns::mnt_sys::MntNsError),
    #[error(transparent)]
    UserNs(#[from] crate::ns::user::UserNsError),
    #[error("process {pid} is in a {kind} namespace of its own ({ns}), which is not supported yet (IPC, UTS, network, mount, cgroup and time namespaces the tree owns are, and a pid namespace whose init is the root)")]
    Namespace {
        pid: u32,
        kind: &'static str,
        ns: String,
    },
    #[error("pty {index}")]
    Pty {
        index: u32,
        #[source]
        source: pty::PtyError,
    },
    #[error(transparent)]
    Files(#[from] files::FilesError),
    #[error(transparent)]
    Task(#[from] crate::task::TaskError),
    #[error(transparent)]
    Mm(#[from] crate::mm::MmError),
    #[error(transparent)]
    Pages(#[from] crate::mm::pages::PagesError),
    #[error("pid {pid} fd {fd} holds a lock on {path}: dump with --file-locks")]
    LocksNeedFlag { pid: u32, fd: i32, path: String },
    #[error("pid {pid} fd {fd}")]
    Unix {
        pid: u32,
        fd: i32,
        #[source]
        source: crate::net::unix::UnixError,
    },
    #[error(transparent)]
    Ipc(crate::ipc::sysv::IpcError),
    #[error(transparent)]
    Mqueue(crate::ipc::mqueue::MqError),
    #[error(transparent)]
    IpcNs(#[from] crate::ns::ipc::IpcNsError),
    #[error(transparent)]
    Uts(#[from] crate::ns::uts::UtsError),
    #[error(transparent)]
    Cgroup(#[from] stasis_cgroups::CgroupError),
    #[error("process {pid} is not in the cgroup {cgroup} given to freeze")]
    CgroupWithoutRoot { cgroup: PathBuf, pid: u32 },
    #[error("the cgroup {cgroup} holds processes outside the tree of {root}: {}; they would be frozen and not dumped", join_pids(.pids))]
    CgroupOutsideTree {
        cgroup: PathBuf,
        root: u32,
        pids: Vec<u32>,
    },
    #[error(
        "the cgroup {cgroup} holds the dumper itself (pid {pid}): freezing it would stop the dump"
    )]
    CgroupHoldsDumper { cgroup: PathBuf, pid: u32 },
    #[error("pid {pid} fd {fd}: {what}")]
    FdIo {
        pid: u32,
        fd: i32,
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock the network for the dumped TCP connections")]
    NetLock(#[source] stasis_netns::nftlock::LockError),
    #[error("pid {pid} fd {fd}")]
    Socket {
        pid: u32,
        fd: i32,
        #[source]
        source: crate::net::inet::InetError,
    },
    #[error(transparent)]
    Notify(#[from] NotifyError),
    #[error(transparent)]
    PidNs(#[from] crate::ns::pid::PidNsError),
    #[error(transparent)]
    NetNs(#[from] crate::ns::net::NetNsError),
    #[error(transparent)]
    TimeNs(#[from] crate::ns::time::TimeNsError),
}

fn join_pids(pids: &[u32]) -> String {
    let v: Vec<String> = pids.iter().map(u32::to_string).collect();
    v.join(", ")
}

pub(crate) fn ptr_err(pid: u32) -> impl FnOnce(PtraceError) -> DumpError {
    move |source| DumpError::Ptrace { pid, source }
}

/// Dumps the tree rooted at `opts.pid` into `opts.images_dir`.
pub fn dump(opts: &DumpOptions) -> Result<DumpStats, DumpError> {
    let images_dir = &opts.images_dir;
    check_dir_writable(images_dir)?;
    // inventory.img marks a complete image set and is written last: a dump that fails halfway
    // must not leave an older one that makes the directory look restorable.
    let _ = std::fs::remove_file(images_dir.join(names::INVENTORY));
    let cgroup = match &opts.freeze_cgroup {
        Some(path) => Some(stasis_cgroups::Freezer::open(path)?),
        None => None,
    };
    let _dumping = abort::Dumping::start();
    opts.notify.run(Script::PreDump, None)?;
    // Freezing time counts from here: the cgroup's freeze, then every thread's stop.
    let t0 = Instant::now();
    let mut tree = Tree::seize(opts.pid, cgroup)?;
    let mut stats = DumpStats {
        freezing_time_us: t0.elapsed().as_micros() as u64,
        ..Default::default()
    };
    log::info!(
        "seized {} tasks in {} us",
        tree.tasks.len(),
        stats.freezing_time_us
    );
    let frozen_at = Instant::now();
    let result = opts
        .notify
        .run(Script::NetworkLock, None)
        .map_err(DumpError::from)
        .and_then(|()| dump_frozen(&mut tree, opts, &mut stats))
        .and_then(|()| Ok(opts.notify.run(Script::PostDump, None)?));
    crate::net::unix::set_diag_namespace(None);
    match result {
        Ok(()) => {
            if opts.leave_running {
                tree.release();
                opts.notify.run_late(Script::NetworkUnlock, None);
            } else {
                tree.kill();
            }
        }
        Err(e) => {
            tree.release();
            // A refusal after the images were complete (post-dump) must not leave them
            // looking restorable either.
            let _ = std::fs::remove_file(images_dir.join(names::INVENTORY));
            opts.notify.run_late(Script::NetworkUnlock, None);
            // A step that stopped early for SIGTERM/SIGINT (copying memory) says why.
            return Err(abort::check().err().unwrap_or(e));
        }
    }
    stats.frozen_time_us = frozen_at.elapsed().as_micros() as u64;
    let work = opts.work_dir.clone().unwrap_or_else(|| images_dir.clone());
    // Too late to fail: the images are complete and the tree is gone (or let go). As CRIU.
    if let Err(e) = write_stats(&work, &stats) {
        let why = std::error::Error::source(&e).map(|s| s.to_string());
        log::warn!("{e}: {}", why.unwrap_or_default());
    }
    Ok(stats)
}

fn check_dir_writable(dir: &Path) -> Result<(), DumpError> {
    let probe = dir.join(".stasis-probe");
    let err = |source| DumpError::ImagesDir {
        path: dir.to_path_buf(),
        source,
    };
    let md = std::fs::metadata(dir).map_err(err)?;
    if !md.is_dir() {
        return Err(err(std::io::Error::from_raw_os_error(libc::ENOTDIR)));
    }
    {
        use std::os::unix::fs::MetadataExt;
        let euid = nix::unistd::geteuid().as_raw();
        if let Err(u) = crate::private::dir_trust(md.mode(), md.uid(), euid) {
            // The files are private whatever the dir; the restore is what refuses it. Info, not
            // a warning: stderr stays one line (a failed dump's error) by default.
            log::info!(
                "images dir {} is {u}: a restore will refuse it",
                dir.display()
            );
        }
    }
    crate::private::create_private(&probe).map_err(err)?;
    let _ = std::fs::remove_file(&probe);
    Ok(())
}

fn write_stats(work: &Path, s: &DumpStats) -> Result<(), DumpError> {
    let clamp = |v: u64| v.min(u32::MAX as u64) as u32;
    let entry = pb::StatsEntry {
        dump: Some(pb::DumpStatsEntry {
            freezing_time: clamp(s.freezing_time_us),
            frozen_time: clamp(s.frozen_time_us),
            memdump_time: clamp(s.memdump_time_us),
            memwrite_time: clamp(s.memwrite_time_us),
            pages_scanned: s.pages_scanned,
            pages_skipped_parent: 0,
            pages_written: s.pages_written,
            irmap_resolve: None,
            pages_lazy: 0,
            page_pipes: None,
            page_pipe_bufs: None,
            shpages_scanned: Some(s.shpages_scanned),
            shpages_skipped_parent: Some(0),
            shpages_written: Some(s.shpages_written),
        }),
        restore: None,
    };
    let mut w = ImageWriter::new(ImageKind::Service, magic::STATS);
    w.push(&entry);
    write_file(&work.join(names::STATS_DUMP), &w.into_bytes())
}

pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> Result<(), DumpError> {
    let err = |source| DumpError::Write {
        path: path.to_path_buf(),
        source,
    };
    crate::private::write_private(path, bytes).map_err(err)
}

/// Everything collected for the images, written at the end.
pub(crate) struct Images {
    pub(crate) dir: PathBuf,
    pub(crate) files: files::FileTable,
    pub(crate) next_pages_id: u32,
    pub(crate) dumped_shmem: std::collections::HashSet<u64>,
    /// Inodes of every socket open in the tree: a unix peer among them is inside.
    pub(crate) tree_sockets: std::collections::HashSet<u32>,
    /// pts indices of the pty masters open in the tree.
    pub(crate) tree_ptys: std::collections::HashSet<u32>,
    /// A copy of each of those masters.
    pub(crate) pty_masters: HashMap<u32, std::os::fd::OwnedFd>,
    /// File locks held by the tree, with the inode they are on.
    pub(crate) locks: Vec<(pb::FileLockEntry, u64)>,
    /// /proc/sysvipc/shm, read once.
    pub(crate) sysv_segments: Vec<proc::parse::ShmSegment>,
    /// shmid → attachments (VMAs) in the tree.
    pub(crate) sysv_attached: HashMap<u32, u64>,
    /// (device, inode) of each shared object → how far the tree's mappings of it reach.
    pub(crate) shared_windows: HashMap<(u32, u32, u64), u64>,
    /// Segments dumped so far.
    pub(crate) sysv_dumped: Vec<pb::IpcShmEntry>,
    /// POSIX message queues to save: (pid, fd, "/name", file id), one per queue.
    pub(crate) mqueues: Vec<(u32, i32, String, u32)>,
    /// Image ids of the namespaces the tree is in: ours, or the ones it owns (see `ns`).
    pub(crate) ns_ids: crate::task::core::NsIds,
    /// Tasks in a mount namespace nested in the tree's: (its id, its root mount's id).
    pub(crate) nested_mnt: HashMap<u32, (u32, i32)>,
    /// Files in flight on the tree's unix sockets, which peeking put in our table.
    pub(crate) in_flight: Vec<std::os::fd::OwnedFd>,
    /// Seccomp filters of every thread, each once.
    pub(crate) seccomp: crate::task::seccomp::Filters,
    /// Pids as the tree sees them (its own pid namespace's), for what the images record.
    pub(crate) pids: crate::ns::pid::PidView,
    /// The tree's network namespace when it is not ours.
    pub(crate) net_ns: Option<std::os::fd::OwnedFd>,
    /// The shutdown states of the tree's inet sockets (inet_diag), read on first need.
    pub(crate) inet_shutdowns: crate::net::inet::diag::Shutdowns,
    /// Unix connections waiting in the tree's listeners (see net::unix), read on first need.
    pub(crate) unix_queued: std::cell::OnceCell<HashMap<u32, u32>>,
    /// The tree's live pids; whether sockets in flight were added to `tree_sockets`.
    pub(crate) live_pids: Vec<u32>,
    pub(crate) in_flight_sockets_known: bool,
    /// Each task's cgroups (cgroup.img).
    pub(crate) cgroups: crate::cgroup::Sets,
    /// The uid and gid maps of the user namespace the tree owns.
    pub(crate) userns: Option<pb::UsernsEntry>,
    /// Per task, the index of the task whose fd table it uses (see `shared_kernel_objects`).
    pub(crate) files_owner: Vec<usize>,
}

/// CRIU's pidns image: written only for a pid namespace declared external, naming its key.
fn write_external_pidns(dir: &Path, pids: &crate::ns::pid::PidView) -> Result<(), DumpError> {
    let Some(key) = pids.external_key() else {
        return Ok(());
    };
    let mut w = ImageWriter::new(ImageKind::Normal, magic::PIDNS);
    w.push(&pb::PidnsEntry {
        ext_key: Some(key.to_string()),
    });
    write_file(
        &dir.join(names::pidns(crate::ns::pid::TREE_NS_ID)),
        &w.into_bytes(),
    )
}

/// The tree's own mount namespace and the ones nested in it, in `img`: the ids, where the
/// tree's paths are seen from, which tasks are nested.
fn note_mount_namespaces(
    img: &mut Images,
    root: u32,
    mounts: &crate::ns::mnt_dump::TreeMounts,
    own_userns: bool,
) -> Result<(), DumpError> {
    img.ns_ids.mnt = Some(crate::ns::mnt::TREE_NS_ID);
    // Paths the tree shows (its cwd, exe, mapped files) are under its own root.
    img.files.path_root = Some(format!("/proc/{root}/root"));
    img.files.mount_ns_pids = std::iter::once(root)
        .chain(mounts.nested.iter().map(|n| n.pids[0]))
        .collect();
    if own_userns && !mounts.nested.is_empty() {
        return Err(DumpError::Namespace {
            pid: mounts.nested[0].pids[0],
            kind: "mount",
            ns: "a mount namespace nested in a tree with a user namespace of its own \
                 (not supported yet)"
                .into(),
        });
    }
    if !mounts.nested.is_empty() {
        img.files.mount_owner = mounts
            .table
            .iter()
            .map(|m| (m.id, root))
            .chain(
                mounts
                    .nested
                    .iter()
                    .flat_map(|n| n.table.iter().map(|m| (m.id, n.pids[0]))),
            )
            .collect();
    }
    for n in &mounts.nested {
        let root_mount = crate::ns::mnt::table_root(&n.table).map(|m| m.id).ok();
        for &pid in &n.pids {
            img.nested_mnt
                .insert(pid, (n.id, root_mount.unwrap_or(0) as i32));
        }
    }
    Ok(())
}

/// The tree's mount table when it owns its mount namespace ("mnt" is then added to `owned`).
fn tree_mount_table(
    root: u32,
    live: &[u32],
    opts: &DumpOptions,
    own_cgroupns: bool,
    owned: &mut Vec<&'static str>,
) -> Result<Option<crate::ns::mnt_dump::TreeMounts>, DumpError> {
    let table = crate::ns::mnt_dump::tree_mounts(
        root,
        live,
        &crate::ns::mnt_dump::ReadOpts {
            ext: &opts.ext_mounts,
            auto: opts.auto_ext_mounts,
            enable_fs: &opts.enable_fs,
            cgroupns: own_cgroupns,
        },
    )?;
    if table.is_some() {
        owned.push("mnt");
    }
    Ok(table)
}

/// Everything from a frozen tree to a complete image set: refusals first, then each task, the
/// objects tasks share (files, IPC, namespaces), and inventory.img last.
fn dump_frozen(
    tree: &mut Tree,
    opts: &DumpOptions,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let live = tree.live_pids();
    let root = tree.tasks[0].pid;
    let pids = crate::ns::pid::tree_view(root, &live, &tree.zombie_pids(), &opts.external_pidns)?;
    let own_net = crate::ns::net::tree_ns(root, &live)?;
    let own_time = crate::ns::time::tree_clocks(root, &live)?;
    let mut owned = Vec::new();
    if own_time.is_some() {
        owned.push("time");
    }
    if pids.owns_namespace() {
        owned.push("pid");
    }
    if own_net.is_some() {
        owned.push("net");
    }
    let own_userns = match crate::ns::tree_owns("user", root, &live) {
        Ok(true) => Some(crate::ns::user::read_maps(root)?),
        Ok(false) => None,
        Err(crate::ns::OwnsError::Mixed { pid }) => {
            return Err(DumpError::Namespace {
                pid,
                kind: "user",
                ns: "another user namespace than the root's".into(),
            })
        }
        Err(crate::ns::OwnsError::Read { path, source }) => {
            return Err(crate::ns::user::UserNsError::Read { path, source }.into())
        }
    };
    if own_userns.is_some() {
        owned.push("user");
    }
    let own_cgroupns = crate::ns::mnt_dump::tree_cgroupns(root, &live)?;
    if own_cgroupns {
        owned.push("cgroup");
    }
    let own_mnt = tree_mount_table(root, &live, opts, own_cgroupns, &mut owned)?;
    refuse_foreign_namespaces(&live, &owned)?;
    crate::net::unix::set_diag_namespace(own_net.as_ref().and_then(|n| n.try_clone().ok()));
    // The TCP lock goes where the tree's connections are (see net::inet::file).
    tree.nft_lock_ns = own_net.as_ref().and_then(|n| n.try_clone().ok());
    let own_ipc = crate::ns::ipc::tree_ns(root, &live)?;
    let own_uts = crate::ns::uts::tree_ns(root, &live)?;
    let mut img = collect_start(opts, &live, own_ipc.as_ref(), own_uts.is_some())?;
    if pids.owns_namespace() {
        img.ns_ids.pid = crate::ns::pid::TREE_NS_ID;
    }
    write_external_pidns(&img.dir, &pids)?;
    if own_cgroupns {
        img.ns_ids.cgroup = Some(crate::ns::mnt::CGROUP_TREE_NS_ID);
    }
    if let Some(maps) = &own_userns {
        img.ns_ids.user = Some(crate::ns::user::TREE_NS_ID);
        let mut w = ImageWriter::new(ImageKind::Normal, magic::USERNS);
        w.push(maps);
        write_file(
            &img.dir.join(names::userns(crate::ns::user::TREE_NS_ID)),
            &w.into_bytes(),
        )?;
        img.userns = own_userns.clone();
    }
    if let Some(mounts) = &own_mnt {
        note_mount_namespaces(&mut img, root, mounts, own_userns.is_some())?;
    }
    if let Some(clocks) = &own_time {
        img.ns_ids.time = crate::ns::time::TREE_NS_ID;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::TIMENS);
        w.push(clocks);
        write_file(
            &img.dir.join(names::timens(crate::ns::time::TREE_NS_ID)),
            &w.into_bytes(),
        )?;
    }
    if let Some(ns) = &own_net {
        img.ns_ids.net = crate::ns::net::TREE_NS_ID;
        img.net_ns = ns.try_clone().ok();
    }
    img.files.dead_procs_ok = pids.is_ours();
    img.pids = pids;
    img.files_owner = shared_kernel_objects(tree)?;
    let pstree = pstree_entries(tree, &img.pids);
    for n in 0..tree.tasks.len() {
        abort::check()?;
        if tree.tasks[n].zombie {
            dump_zombie(&tree.tasks[n], img.pids.v(tree.tasks[n].pid), &img.dir)?;
            stats.tasks += 1;
            continue;
        }
        dump_task(tree, n, opts, &mut img, stats)?;
        stats.tasks += 1;
        stats.threads += tree.tasks[n].threads.len();
    }
    record_controlling_terminals(tree, &mut img);
    let tree_pids: std::collections::HashSet<u32> = tree
        .tasks
        .iter()
        .flat_map(|t| std::iter::once(t.pid).chain(t.threads.iter().map(|th| th.tid)))
        .collect();
    pty::dump_pty_queues(&mut img)?;
    if let Some(ns) = &own_net {
        match crate::ns::net::external_key(ns, &opts.external_netns)? {
            Some(key) => crate::ns::net::dump_external(&img.dir, key)?,
            None => crate::ns::net::dump(ns, &img.dir, opts.empty_netns)?,
        }
    }
    if let Some(table) = &own_mnt {
        crate::ns::mnt_dump::dump(root, table, &img.dir)?;
    }
    if let Some(ns) = &own_uts {
        let uts = crate::ns::ipc::in_ns_of(ns, libc::CLONE_NEWUTS, crate::ns::uts::names)??;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::UTSNS);
        w.push(&uts);
        write_file(&img.dir.join(names::utsns(img.ns_ids.uts)), &w.into_bytes())?;
    }
    match &own_ipc {
        Some(ns) => {
            crate::ns::ipc::in_ns(ns, || crate::ipc::dump(&mut img, stats, &tree_pids, true))??
        }
        None => crate::ipc::dump(&mut img, stats, &tree_pids, false)?,
    }
    // files.img and the kinds' images after all tasks: file objects are shared between tasks.
    if own_mnt.is_none() {
        img.files.forget_mount_ids();
    }
    img.files.write(&img.dir)?;
    // inventory's root_cg_set is the dumper's own, as CRIU's.
    let root_cg_set = img.cgroups.of_pid(std::process::id())?;
    let mut w = ImageWriter::new(ImageKind::Normal, magic::CGROUP);
    let mut cgroups = img.cgroups.entry();
    img.cgroups.add_properties(&mut cgroups)?;
    w.push(&cgroups);
    write_file(&img.dir.join(names::CGROUP), &w.into_bytes())?;
    write_shared_images(&mut img, &pstree)?;
    // inventory.img last: its presence marks a complete image set (podman checks for it).
    abort::check()?;
    write_inventory(
        &img.dir,
        tree.nft_lock.as_deref(),
        root_cg_set,
        crate::task::core::NsIds {
            mnt: own_mnt.is_some().then_some(crate::ns::mnt::HOST_NS_ID),
            cgroup: own_cgroupns.then_some(crate::ns::mnt::CGROUP_HOST_NS_ID),
            user: own_userns.is_some().then_some(crate::ns::user::HOST_NS_ID),
            ..crate::task::core::NsIds::HOST
        },
    )?;
    img.files.keep_links();
    Ok(())
}

/// What the dump collects as it goes, with what it reads of the tree before the first task:
/// its System V segments (on a thread in the tree's IPC namespace when it owns one), its pty
/// masters and its sockets. Any of them unreadable fails the dump: they would be lost.
fn collect_start(
    opts: &DumpOptions,
    live: &[u32],
    own_ipc: Option<&std::os::fd::OwnedFd>,
    own_uts: bool,
) -> Result<Images, DumpError> {
    let sysv_segments = match own_ipc {
        Some(ns) => {
            crate::ns::ipc::in_ns(ns, crate::ipc::sysv::shm_segments)?.map_err(DumpError::Ipc)?
        }
        None => crate::ipc::sysv::shm_segments().map_err(DumpError::Ipc)?,
    };
    let pty_masters = pty::tree_pty_masters(live)?;
    // Every live task's mappings, read once: System V attachments and shared windows.
    let mut tree_maps = Vec::new();
    for &pid in live {
        tree_maps.extend(proc::maps(pid)?);
    }
    Ok(Images {
        dir: opts.images_dir.clone(),
        files: files::FileTable::new(opts.ghost_limit, opts.link_remap),
        next_pages_id: 1,
        dumped_shmem: Default::default(),
        tree_sockets: crate::net::unix::file::tree_socket_inodes(live)?,
        tree_ptys: pty_masters.keys().copied().collect(),
        pty_masters,
        locks: Vec::new(),
        sysv_segments,
        sysv_attached: crate::ipc::shm::tree_attachments(&tree_maps),
        shared_windows: crate::mm::shmem::shared_windows(&tree_maps),
        sysv_dumped: Vec::new(),
        mqueues: Vec::new(),
        in_flight: Vec::new(),
        seccomp: Default::default(),
        pids: Default::default(),
        net_ns: None,
        unix_queued: Default::default(),
        inet_shutdowns: Default::default(),
        live_pids: live.to_vec(),
        in_flight_sockets_known: false,
        cgroups: Default::default(),
        userns: None,
        files_owner: Vec::new(),
        nested_mnt: HashMap::new(),
        ns_ids: crate::task::core::NsIds {
            uts: if own_uts {
                crate::ns::uts::TREE_NS_ID
            } else {
                crate::ns::uts::HOST_NS_ID
            },
            ipc: if own_ipc.is_some() {
                crate::ns::ipc::TREE_NS_ID
            } else {
                crate::ns::ipc::HOST_NS_ID
            },
            ..crate::task::core::NsIds::HOST
        },
    })
}

/// The tree's pstree.img entries, in seize order (parents before children), with pids as the
/// tasks see them (see `ns::pid`).
fn pstree_entries(tree: &Tree, pids: &crate::ns::pid::PidView) -> Vec<pb::PstreeEntry> {
    let v = |p: u32| pids.v(p);
    tree.tasks
        .iter()
        .enumerate()
        .map(|(n, task)| pb::PstreeEntry {
            pid: v(task.pid),
            ppid: if n == 0 { 0 } else { v(task.stat.ppid) },
            pgid: v(task.stat.pgid),
            sid: v(task.stat.sid),
            threads: if task.zombie {
                vec![v(task.pid)]
            } else {
                task.threads.iter().map(|t| v(t.tid)).collect()
            },
        })
        .collect()
}

/// A session leader's controlling terminal, when it is a pty of the tree: recorded in the
/// slave's tty_info (sid, foreground group) as CRIU does, and made again at restore.
fn record_controlling_terminals(tree: &Tree, img: &mut Images) {
    for t in tree
        .tasks
        .iter()
        .filter(|t| !t.zombie && t.stat.sid == t.pid)
    {
        let (major, minor) = proc::parse::tty_nr_major_minor(t.stat.tty_nr);
        // No foreground group (-1) is recorded as none (0), as CRIU does.
        let fg = u32::try_from(t.stat.tpgid).unwrap_or(0);
        if (136..=143).contains(&major) {
            img.files.set_pty_session(
                (major - 136) * 256 + minor,
                img.pids.v(t.pid),
                img.pids.v(fg),
            );
        } else if (major, minor) == (5, 1) || (major == 4 && minor < 64) {
            img.files
                .set_device_tty_session(major, minor, img.pids.v(t.pid), img.pids.v(fg));
        }
    }
}

/// seccomp.img, file-lock.img and pstree.img. The first two are always written, even empty,
/// so a stale one from an older dump cannot apply.
fn write_shared_images(img: &mut Images, pstree: &[pb::PstreeEntry]) -> Result<(), DumpError> {
    let mut w = ImageWriter::new(ImageKind::Normal, magic::SECCOMP);
    w.push(&pb::SeccompEntry {
        seccomp_filters: std::mem::take(&mut img.seccomp.entries),
    });
    write_file(&img.dir.join(names::SECCOMP), &w.into_bytes())?;
    let mut w = ImageWriter::new(ImageKind::Normal, magic::FILE_LOCKS);
    for (l, _) in &img.locks {
        let mut l = *l;
        l.pid = img.pids.v(l.pid as u32) as i32;
        w.push(&l);
    }
    write_file(&img.dir.join(names::FILE_LOCKS), &w.into_bytes())?;
    let mut w = ImageWriter::new(ImageKind::Normal, magic::PSTREE);
    for e in pstree {
        w.push(e);
    }
    write_file(&img.dir.join(names::PSTREE), &w.into_bytes())
}

/// inventory.img: the image version, CRIU's root ids (the dumper's own namespaces: a task
/// whose ids differ owns that one) and the network lock to lift at restore.
/// `root_ids` are the dumper's namespaces: `ours` (the mount and cgroup ids only where the
/// tree owns one of those).
fn write_inventory(
    dir: &Path,
    nft_lock: Option<&str>,
    root_cg_set: u32,
    ours: crate::task::core::NsIds,
) -> Result<(), DumpError> {
    let run_id = nft_lock
        .and_then(|t| t.strip_prefix(NET_LOCK_TABLE_PREFIX))
        .map(str::to_string);
    let root_ids = ids_for(1, 1, ours);
    let inv = pb::InventoryEntry {
        img_version: images::CRTOOLS_IMAGES_V1_1,
        fdinfo_per_id: Some(true),
        root_ids: Some(root_ids),
        ns_per_id: Some(true),
        root_cg_set: Some(root_cg_set),
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        dump_uptime: Some(uptime_us()?),
        pre_dump_mode: None,
        tcp_close: None,
        network_lock_method: run_id.as_ref().map(|_| NETWORK_LOCK_NFTABLES),
        plugins_entry: None,
        dump_criu_run_id: run_id,
        allow_uprobes: None,
    };
    let mut w = ImageWriter::new(ImageKind::Inventory, magic::INVENTORY);
    w.push(&inv);
    // Written aside, then renamed: a write that fails (a full disk) leaves no inventory.img,
    // not even an empty or partial one, which would make the directory look complete.
    let (part, path) = (dir.join(INVENTORY_PART), dir.join(names::INVENTORY));
    crate::private::write_private(&part, &w.into_bytes())
        .and_then(|()| std::fs::rename(&part, &path))
        .map_err(|source| {
            let _ = std::fs::remove_file(&part);
            DumpError::Write { path, source }
        })
}

/// Where inventory.img is written before it is renamed into place.
const INVENTORY_PART: &str = ".inventory.img.part";

/// CRIU's `network_lock_method` value in inventory.img for nftables (the table is
/// `inet CRIU-<dump_criu_run_id>`): CRIU stores its own enum there (iptables 0, nftables 1,
/// skip 2), not the RPC's (1, 2, 3).
pub const NETWORK_LOCK_NFTABLES: u32 = 1;

/// What stasis wrote for nftables before it used CRIU's value (CRIU reads it as "skip").
pub const OLD_NETWORK_LOCK_NFTABLES: u32 = 2;

/// The network lock's nftables table is `inet <prefix><dump_criu_run_id>`: CRIU's own name, so
/// that a CRIU built with libnftables removes stasis's lock when it restores, and stasis
/// CRIU's.
pub const NET_LOCK_TABLE_PREFIX: &str = "CRIU-";

/// The network lock's table for a dump's run id. CRIU formats "inet CRIU-<id>" into 32 bytes,
/// so its tables keep the first 21 characters of its run id (a UUID); so do ours.
pub fn net_lock_table(run_id: &str) -> String {
    let keep = run_id
        .char_indices()
        .nth(21)
        .map_or(run_id.len(), |(i, _)| i);
    format!("{NET_LOCK_TABLE_PREFIX}{}", &run_id[..keep])
}

/// The table name stasis used before it took CRIU's; its images are still unlocked.
pub const OLD_NET_LOCK_TABLE_PREFIX: &str = "stasis-";

pub(crate) fn uptime_us() -> Result<u64, DumpError> {
    let text = std::fs::read_to_string("/proc/uptime").map_err(|source| {
        DumpError::Proc(proc::ProcError::Read {
            path: "/proc/uptime".into(),
            source,
        })
    })?;
    let secs: f64 = text
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            DumpError::Proc(proc::ProcError::Read {
                path: "/proc/uptime".into(),
                source: std::io::Error::from(std::io::ErrorKind::InvalidData),
            })
        })?;
    Ok((secs * 1e6) as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn net_lock_table_is_criu_s_name_cut_as_criu_cuts_it() {
        assert_eq!(super::net_lock_table("1f-2a"), "CRIU-1f-2a");
        // CRIU's run id is a UUID; "inet CRIU-" and its first 21 characters fill 31 bytes.
        assert_eq!(
            super::net_lock_table("3d6e8c1a-5b2f-4c9e-8a7d-0e1f2a3b4c5d"),
            "CRIU-3d6e8c1a-5b2f-4c9e-8a"
        );
    }
}
