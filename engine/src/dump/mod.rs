//! Dump: freeze a process tree with ptrace, read its state from outside, write CRIU images.
//!
//! The one rule that has no exception: whatever happens, a dump that does not end with the tree
//! killed on purpose leaves every task running, with its registers, signal mask and memory map
//! as they were, and detached. [`Tree`] enforces it in `Drop`.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::files::{self, tty as pty};
use crate::images::{self, magic, names, pb, ImageKind, ImageWriter};
use crate::mm::pages::PageSink;
use crate::proc::{self, Mapping};
use crate::sys::mem::{self, PageSelect, PAGE_SIZE};
use crate::sys::ptrace::{self, Injector, PtraceError, Regs};
use crate::task::arch;

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
    /// Dump established TCP connections through TCP_REPAIR (`--tcp-established`).
    pub tcp_established: bool,
    /// Allow unix datagram sockets connected to a named peer outside the tree (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Unix sockets of any type whose peer is outside, dumped as external: the restore needs a
    /// replacement for each through `--inherit-fd fd[N]:socket:[INODE]` (`--ext-unix-sk=INODE`).
    pub ext_unix_sk_inodes: Vec<u32>,
    /// Dump file locks (`--file-locks`); without it a held lock fails the dump.
    pub file_locks: bool,
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
            tcp_established: false,
            ext_unix_sk: false,
            ext_unix_sk_inodes: Vec::new(),
            file_locks: false,
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
    pub pages_scanned: u64,
    pub pages_written: u64,
    pub tasks: usize,
    pub threads: usize,
}

/// Why a dump failed. Every variant means the tree was left running.
#[derive(Debug, thiserror::Error)]
pub enum DumpError {
    #[error("process {pid} does not exist")]
    NoProcess { pid: u32 },
    #[error("process {pid} is a zombie: it has exited and its parent has not reaped it")]
    Zombie { pid: u32 },
    #[error("the main thread of process {pid} has exited while its other threads run, which is not supported")]
    LeaderExited { pid: u32 },
    #[error("thread {tid} of process {pid} is already traced by pid {tracer} (a debugger or strace), which is not supported")]
    AlreadyTraced { pid: u32, tid: u32, tracer: u32 },
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
    #[error("process {pid} is in a {kind} namespace of its own ({ns}), which is not supported yet (only IPC and UTS namespaces are)")]
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
    #[error("cannot lock the network for the dumped TCP connections")]
    NetLock(#[source] stasis_netns::nftlock::LockError),
    #[error("pid {pid} fd {fd}")]
    Socket {
        pid: u32,
        fd: i32,
        #[source]
        source: crate::net::inet::InetError,
    },
}

fn ptr_err(pid: u32) -> impl FnOnce(PtraceError) -> DumpError {
    move |source| DumpError::Ptrace { pid, source }
}

/// A thread we seized, with what we must put back when we let it go.
struct Seized {
    tid: u32,
    regs: Regs,
    sigmask: u64,
}

struct Task {
    pid: u32,
    threads: Vec<Seized>,
    stat: proc::Stat,
    /// A page we mapped in the task for injected syscalls' out-parameters.
    scratch: Option<(u64, u64)>,
    /// Exited, not reaped by its parent (in the tree): dumped as CRIU does, state and exit code.
    zombie: bool,
    /// Stopped by a signal (job control) when we seized it.
    stopped: Option<i32>,
    /// SIGTRAP is ignored, or pending behind the mask: the SIGTRAP our single steps force
    /// would reset its handler and let the pending one in, so injections are quiet.
    sigtrap_at_risk: bool,
}

/// The frozen tree. Dropping it without [`Tree::kill`] puts every task back as it was.
struct Tree {
    tasks: Vec<Task>,
    /// Address of a `syscall` instruction per pid (in its vdso).
    syscall_at: HashMap<u32, u64>,
    /// Established TCP connections, locked while we dump them: released if the tree runs on,
    /// closed silently (repair mode) once it is killed.
    tcp_locks: Vec<crate::net::inet::TcpLock>,
    /// The nftables table that keeps the peers of dumped connections away (see netns::nftlock).
    nft_lock: Option<String>,
    done: bool,
}

impl Tree {
    /// Pids of the tasks that run (not zombies).
    fn live_pids(&self) -> Vec<u32> {
        self.tasks
            .iter()
            .filter(|t| !t.zombie)
            .map(|t| t.pid)
            .collect()
    }

    fn seize(root: u32) -> Result<Tree, DumpError> {
        if !proc::exists(root) {
            return Err(DumpError::NoProcess { pid: root });
        }
        let mut tree = Tree {
            tasks: Vec::new(),
            syscall_at: HashMap::new(),
            tcp_locks: Vec::new(),
            nft_lock: None,
            done: false,
        };
        let mut queue = std::collections::VecDeque::from([root]);
        // Stop every thread, then re-list threads and children until nothing new shows up:
        // tasks may fork or spawn threads while we look.
        loop {
            while let Some(pid) = queue.pop_front() {
                if tree.tasks.iter().any(|t| t.pid == pid) {
                    continue;
                }
                let stat = proc::stat(pid)?;
                if stat.state == 'Z' && proc::tids(pid).map(|t| t.len() > 1).unwrap_or(false) {
                    return Err(DumpError::LeaderExited { pid });
                }
                if stat.state == 'Z' && pid == root {
                    return Err(DumpError::Zombie { pid });
                }
                let zombie = stat.state == 'Z';
                tree.tasks.push(Task {
                    pid,
                    threads: Vec::new(),
                    stat,
                    scratch: None,
                    zombie,
                    stopped: None,
                    sigtrap_at_risk: false,
                });
                let idx = tree.tasks.len() - 1;
                if zombie {
                    continue;
                }
                tree.seize_threads(idx)?;
                // Re-read stat now that the task is stopped (state, sid, pgid are final).
                tree.tasks[idx].stat = proc::stat(pid)?;
            }
            let mut changed = false;
            for idx in 0..tree.tasks.len() {
                if tree.tasks[idx].zombie {
                    continue;
                }
                changed |= tree.seize_threads(idx)?;
                let pid = tree.tasks[idx].pid;
                for child in proc::children(pid)? {
                    if !tree.tasks.iter().any(|t| t.pid == child) {
                        queue.push_back(child);
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        Ok(tree)
    }

    /// Seizes threads of task `idx` not seized yet; true if there were any.
    fn seize_threads(&mut self, idx: usize) -> Result<bool, DumpError> {
        let pid = self.tasks[idx].pid;
        let mut any = false;
        loop {
            let tids = match proc::tids(pid) {
                Ok(t) => t,
                Err(_) if !proc::exists(pid) => return Err(DumpError::NoProcess { pid }),
                Err(e) => return Err(e.into()),
            };
            let new: Vec<u32> = tids
                .into_iter()
                .filter(|t| !self.tasks[idx].threads.iter().any(|s| s.tid == *t))
                .collect();
            if new.is_empty() {
                return Ok(any);
            }
            for tid in new {
                let seize_err = |source| DumpError::Seize { pid, tid, source };
                match ptrace::seize(tid, 0) {
                    Ok(()) => {}
                    // It exited between listing and seizing: dumped as a zombie.
                    Err(_)
                        if proc::stat(pid).map(|s| s.state == 'Z').unwrap_or(false) && idx > 0 =>
                    {
                        self.tasks[idx].zombie = true;
                        self.tasks[idx].stat.state = 'Z';
                        return Ok(any);
                    }
                    // The thread exited between listing and seizing.
                    Err(_) if !Path::new(&format!("/proc/{pid}/task/{tid}")).exists() => continue,
                    // Someone traces it already (a debugger, strace): say who.
                    Err(_) if tracer_pid(pid, tid) != 0 => {
                        return Err(DumpError::AlreadyTraced {
                            pid,
                            tid,
                            tracer: tracer_pid(pid, tid),
                        })
                    }
                    Err(e) => return Err(seize_err(e)),
                }
                // Recorded before waiting, so a failure below still detaches it.
                self.tasks[idx].threads.push(Seized {
                    tid,
                    // SAFETY: user_regs_struct is plain old data; zeroed is valid.
                    regs: unsafe { std::mem::zeroed() },
                    sigmask: 0,
                });
                let pos = self.tasks[idx].threads.len() - 1;
                if let Some(sig) = ptrace::interrupt_and_wait(pid, tid).map_err(seize_err)? {
                    // In a group stop: it is dumped as stopped and stays stopped.
                    self.tasks[idx].stopped = Some(sig);
                }
                let regs = ptrace::get_regs(tid).map_err(seize_err)?;
                let sigmask = ptrace::get_sigmask(tid).map_err(seize_err)?;
                // Read once the thread is stopped, so nothing changes behind it.
                let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
                    .ok()
                    .and_then(|s| proc::parse::parse_status(&s).ok())
                    .unwrap_or_default();
                // A filtered thread would filter our injected syscalls too: suspend it.
                if status.seccomp != 0 {
                    ptrace::set_options(tid, ptrace::PTRACE_O_SUSPEND_SECCOMP)
                        .map_err(seize_err)?;
                }
                // Block every signal but SIGTRAP while we inject syscalls, so none is delivered
                // (or lost) between our single steps; the real mask is put back on release. A
                // SIGTRAP already pending stays blocked too, or our first step would take it,
                // and a task ignoring or holding one gets quiet injections (see Task).
                let trap = 1u64 << (libc::SIGTRAP - 1);
                let pending = (status.sig_pnd | status.shd_pnd) & trap != 0;
                if pending || status.sig_ign & trap != 0 {
                    self.tasks[idx].sigtrap_at_risk = true;
                }
                let mask = if pending {
                    !0
                } else {
                    ptrace::INJECTION_SIGMASK
                };
                ptrace::set_sigmask(tid, mask).map_err(seize_err)?;
                let s = &mut self.tasks[idx].threads[pos];
                s.regs = regs;
                s.sigmask = sigmask;
                any = true;
            }
        }
    }

    fn injector(&self, pid: u32, tid: u32) -> Result<Injector, DumpError> {
        let at = self.syscall_at[&pid];
        let quiet = self.tasks.iter().any(|t| t.pid == pid && t.sigtrap_at_risk);
        Ok(Injector::new(tid, at)
            .map_err(ptr_err(pid))?
            .with_quiet(quiet))
    }

    /// Puts everything back and detaches: the tree runs on.
    fn release(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        for lock in self.tcp_locks.drain(..) {
            lock.release();
        }
        if let Some(table) = self.nft_lock.take() {
            if let Err(e) = stasis_netns::nftlock::unlock(&table) {
                log::warn!("cannot remove network lock {table}: {e}");
            }
        }
        for task in &self.tasks {
            if let (Some((addr, len)), Some(&at)) = (task.scratch, self.syscall_at.get(&task.pid)) {
                if let Some(t) = task.threads.first() {
                    if let Ok(inj) = Injector::new(t.tid, at) {
                        let inj = inj.with_quiet(task.sigtrap_at_risk);
                        let _ = inj.raw(libc::SYS_munmap, &[addr, len]);
                    }
                }
            }
            if let Some(sig) = task.stopped {
                // It was stopped before we came (we continued it to inject): stop it again
                // before it runs a single instruction.
                // SAFETY: kill(2) of a task we trace.
                unsafe { libc::kill(task.pid as libc::pid_t, sig) };
            }
            for t in &task.threads {
                if t.regs.rip != 0 || t.regs.rsp != 0 {
                    let _ = ptrace::set_regs(t.tid, &t.regs);
                    let _ = ptrace::set_sigmask(t.tid, t.sigmask);
                }
                if let Err(e) = ptrace::detach(t.tid) {
                    log::warn!("detach of {} failed: {e}", t.tid);
                }
            }
        }
    }

    /// Kills the tree after a complete dump, and reaps the ptrace links so PIDs free up.
    fn kill(&mut self) {
        self.done = true;
        for task in &self.tasks {
            // SAFETY: plain kill(2).
            unsafe { libc::kill(task.pid as libc::pid_t, libc::SIGKILL) };
        }
        for task in &self.tasks {
            // Non-leader threads first: waiting on a leader with live threads hangs.
            for t in task.threads.iter().rev() {
                loop {
                    match ptrace::wait(t.tid) {
                        Ok(ptrace::Stop::Exited(_)) | Err(_) => break,
                        Ok(_) => {
                            let _ = ptrace::cont(t.tid, 0);
                        }
                    }
                }
            }
        }
        // Now that no task holds them, closing our copies of locked connections (still in
        // repair mode) sends neither FIN nor RST.
        self.tcp_locks.clear();
    }
}

impl Drop for Tree {
    fn drop(&mut self) {
        self.release();
    }
}

/// Dumps the tree rooted at `opts.pid` into `opts.images_dir`.
pub fn dump(opts: &DumpOptions) -> Result<DumpStats, DumpError> {
    let images_dir = &opts.images_dir;
    check_dir_writable(images_dir)?;
    // inventory.img marks a complete image set and is written last: a dump that fails halfway
    // must not leave an older one that makes the directory look restorable.
    let _ = std::fs::remove_file(images_dir.join(names::INVENTORY));
    let t0 = Instant::now();
    let mut tree = Tree::seize(opts.pid)?;
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
    let result = dump_frozen(&mut tree, opts, &mut stats);
    match result {
        Ok(()) => {
            if opts.leave_running {
                tree.release();
            } else {
                tree.kill();
            }
        }
        Err(e) => {
            tree.release();
            return Err(e);
        }
    }
    stats.frozen_time_us = frozen_at.elapsed().as_micros() as u64;
    let work = opts.work_dir.clone().unwrap_or_else(|| images_dir.clone());
    write_stats(&work, &stats)?;
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
    File::create(&probe).map_err(err)?;
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
            shpages_scanned: None,
            shpages_skipped_parent: None,
            shpages_written: None,
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
    let mut f = File::create(path).map_err(err)?;
    f.write_all(bytes).map_err(err)?;
    Ok(())
}

/// Everything collected for the images, written at the end.
struct Images {
    dir: PathBuf,
    files: files::FileTable,
    next_pages_id: u32,
    dumped_shmem: std::collections::HashSet<u64>,
    /// Inodes of every socket open in the tree: a unix peer among them is inside.
    tree_sockets: std::collections::HashSet<u32>,
    /// pts indices of the pty masters open in the tree.
    tree_ptys: std::collections::HashSet<u32>,
    /// A copy of each of those masters.
    pty_masters: HashMap<u32, std::os::fd::OwnedFd>,
    /// File locks held by the tree, with the inode they are on.
    locks: Vec<(pb::FileLockEntry, u64)>,
    /// /proc/sysvipc/shm, read once.
    sysv_segments: Vec<proc::parse::ShmSegment>,
    /// shmid → attachments (VMAs) in the tree.
    sysv_attached: HashMap<u32, u64>,
    /// Segments dumped so far.
    sysv_dumped: Vec<pb::IpcShmEntry>,
    /// POSIX message queues to save: (pid, fd, "/name", file id), one per queue.
    mqueues: Vec<(u32, i32, String, u32)>,
    /// Image id of the tree's IPC namespace (see `ipcns`).
    ipc_ns_id: u32,
    /// Image id of the tree's UTS namespace (see `utsns`).
    uts_ns_id: u32,
    /// Files in flight on the tree's unix sockets, which peeking put in our table.
    in_flight: Vec<std::os::fd::OwnedFd>,
    /// Seccomp filters of every thread, each once.
    seccomp: crate::task::seccomp::Filters,
    /// The tree's live pids; whether sockets in flight were added to `tree_sockets`.
    live_pids: Vec<u32>,
    in_flight_sockets_known: bool,
}

fn dump_frozen(
    tree: &mut Tree,
    opts: &DumpOptions,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let live = tree.live_pids();
    refuse_foreign_namespaces(&live)?;
    let own_ipc = crate::ns::ipc::tree_ns(tree.tasks[0].pid, &live)?;
    let own_uts = crate::ns::uts::tree_ns(tree.tasks[0].pid, &live)?;
    let read_shm = || std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default();
    let shm_table = match &own_ipc {
        Some(ns) => crate::ns::ipc::in_ns(ns, read_shm)?,
        None => read_shm(),
    };
    let pty_masters = tree_pty_masters(tree);
    let mut img = Images {
        dir: opts.images_dir.clone(),
        files: files::FileTable::new(opts.ghost_limit),
        next_pages_id: 1,
        dumped_shmem: Default::default(),
        tree_sockets: tree_socket_inodes(tree),
        tree_ptys: pty_masters.keys().copied().collect(),
        pty_masters,
        locks: Vec::new(),
        sysv_segments: proc::parse::parse_sysvipc_shm(&shm_table),
        sysv_attached: tree_sysv_attachments(tree),
        sysv_dumped: Vec::new(),
        mqueues: Vec::new(),
        in_flight: Vec::new(),
        seccomp: Default::default(),
        live_pids: live.clone(),
        in_flight_sockets_known: false,
        uts_ns_id: if own_uts.is_some() {
            crate::ns::uts::TREE_NS_ID
        } else {
            crate::ns::uts::HOST_NS_ID
        },
        ipc_ns_id: if own_ipc.is_some() {
            crate::ns::ipc::TREE_NS_ID
        } else {
            crate::ns::ipc::HOST_NS_ID
        },
    };
    let pids: Vec<u32> = tree.tasks.iter().map(|t| t.pid).collect();
    refuse_shared_kernel_objects(tree)?;
    let mut pstree = Vec::new();
    for (n, pid) in pids.iter().enumerate() {
        let task = &tree.tasks[n];
        let st = &task.stat;
        let ppid = if n == 0 { 0 } else { st.ppid };
        pstree.push(pb::PstreeEntry {
            pid: *pid,
            ppid,
            pgid: st.pgid,
            sid: st.sid,
            threads: if task.zombie {
                vec![*pid]
            } else {
                task.threads.iter().map(|t| t.tid).collect()
            },
        });
    }
    for n in 0..pids.len() {
        if tree.tasks[n].zombie {
            dump_zombie(&tree.tasks[n], &img.dir)?;
            stats.tasks += 1;
            continue;
        }
        dump_task(tree, n, opts, &mut img, stats)?;
        stats.tasks += 1;
        stats.threads += tree.tasks[n].threads.len();
    }
    // A session leader's controlling terminal, when it is a pty of the tree: recorded in the
    // slave's tty_info (sid, foreground group) as CRIU does, and made again at restore.
    for t in tree
        .tasks
        .iter()
        .filter(|t| !t.zombie && t.stat.sid == t.pid)
    {
        let (major, minor) = proc::parse::tty_nr_major_minor(t.stat.tty_nr);
        if (136..=143).contains(&major) {
            let fg = u32::try_from(t.stat.tpgid).unwrap_or(0);
            img.files
                .set_pty_session((major - 136) * 256 + minor, t.pid, fg);
        }
    }
    let tree_pids: std::collections::HashSet<u32> = tree
        .tasks
        .iter()
        .flat_map(|t| std::iter::once(t.pid).chain(t.threads.iter().map(|th| th.tid)))
        .collect();
    dump_pty_queues(&mut img)?;
    if let Some(ns) = &own_uts {
        let uts = crate::ns::ipc::in_ns_of(ns, libc::CLONE_NEWUTS, crate::ns::uts::names)??;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::UTSNS);
        w.push(&uts);
        write_file(&img.dir.join(names::utsns(img.uts_ns_id)), &w.into_bytes())?;
    }
    match &own_ipc {
        Some(ns) => crate::ns::ipc::in_ns(ns, || dump_ipc(&mut img, stats, &tree_pids, true))??,
        None => dump_ipc(&mut img, stats, &tree_pids, false)?,
    }
    // files.img and pipes-data.img after all tasks: file objects are shared between tasks.
    img.files.write(&img.dir)?;
    // Always written, even empty, so a stale one from an older dump cannot apply.
    let mut w = ImageWriter::new(ImageKind::Normal, magic::SECCOMP);
    w.push(&pb::SeccompEntry {
        seccomp_filters: std::mem::take(&mut img.seccomp.entries),
    });
    write_file(&img.dir.join(names::SECCOMP), &w.into_bytes())?;
    let mut w = ImageWriter::new(ImageKind::Normal, magic::FILE_LOCKS);
    for (l, _) in &img.locks {
        w.push(l);
    }
    write_file(&img.dir.join(names::FILE_LOCKS), &w.into_bytes())?;
    let run_id = tree
        .nft_lock
        .as_ref()
        .and_then(|t| t.strip_prefix("stasis-"))
        .map(str::to_string);
    let mut w = ImageWriter::new(ImageKind::Normal, magic::PSTREE);
    for e in &pstree {
        w.push(e);
    }
    write_file(&img.dir.join(names::PSTREE), &w.into_bytes())?;
    // CRIU's root_ids are the dumper's own: a task whose namespace ids differ owns that one.
    let root_ids = ids_for(1, crate::ns::ipc::HOST_NS_ID, crate::ns::uts::HOST_NS_ID);
    let inv = pb::InventoryEntry {
        img_version: images::CRTOOLS_IMAGES_V1_1,
        fdinfo_per_id: Some(true),
        root_ids: Some(root_ids),
        ns_per_id: Some(true),
        root_cg_set: None,
        lsmtype: Some(pb::Lsmtype::NoLsm as i32),
        dump_uptime: Some(uptime_us()),
        pre_dump_mode: None,
        tcp_close: None,
        network_lock_method: run_id.as_ref().map(|_| NETWORK_LOCK_NFTABLES),
        plugins_entry: None,
        dump_criu_run_id: run_id,
        allow_uprobes: None,
    };
    let mut w = ImageWriter::new(ImageKind::Inventory, magic::INVENTORY);
    w.push(&inv);
    // inventory.img last: its presence marks a complete image set (podman checks for it).
    write_file(&img.dir.join(names::INVENTORY), &w.into_bytes())?;
    Ok(())
}

/// How many mappings of each System V segment the tree has (the kernel's nattch counts them).
fn tree_sysv_attachments(tree: &Tree) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    for t in tree.tasks.iter().filter(|t| !t.zombie) {
        for m in proc::maps(t.pid).unwrap_or_default() {
            if m.path.starts_with("/SYSV") && m.shared {
                *out.entry(m.inode as u32).or_insert(0) += 1;
            }
        }
    }
    out
}

/// Copies of the pty masters open in the tree, by pts index.
fn tree_pty_masters(tree: &Tree) -> HashMap<u32, std::os::fd::OwnedFd> {
    let mut out = HashMap::new();
    for t in tree.tasks.iter().filter(|t| !t.zombie) {
        let Ok(pidfd) = crate::net::inet::pidfd_open(t.pid) else {
            continue;
        };
        for fd in proc::fds(t.pid).unwrap_or_default() {
            if proc::readlink(t.pid, &format!("fd/{fd}")).ok().as_deref() == Some("/dev/ptmx") {
                if let Ok(copy) = crate::net::inet::pidfd_getfd(pidfd.as_raw_fd(), fd) {
                    if let Ok(n) = pty::master_index(copy.as_raw_fd()) {
                        out.entry(n).or_insert(copy);
                    }
                }
            }
        }
    }
    out
}

/// Bytes buffered in the tree's ptys, read and put straight back (see `pty::take_queues`).
fn dump_pty_queues(img: &mut Images) -> Result<(), DumpError> {
    for (index, master) in &img.pty_masters {
        let path = format!("/dev/pts/{index}");
        // Our own open of the slave: its flags are ours to set. A slave never unlocked has
        // nothing buffered.
        let Ok(slave) = pty::open_slave(&path, (libc::O_RDWR | libc::O_NONBLOCK) as u32) else {
            continue;
        };
        let q = pty::take_queues(master.as_raw_fd(), slave.as_raw_fd()).map_err(|source| {
            DumpError::Pty {
                index: *index,
                source,
            }
        })?;
        img.files.set_pty_queues(*index, &q);
    }
    Ok(())
}

/// Socket fds of the tree's tasks: (pid, fd, inode).
fn tree_socket_fds(pids: &[u32]) -> Vec<(u32, i32, u32)> {
    let mut out = Vec::new();
    for &pid in pids {
        for fd in proc::fds(pid).unwrap_or_default() {
            let Ok(l) = proc::readlink(pid, &format!("fd/{fd}")) else {
                continue;
            };
            if let Some(ino) = l
                .strip_prefix("socket:[")
                .and_then(|r| r.trim_end_matches(']').parse().ok())
            {
                out.push((pid, fd, ino));
            }
        }
    }
    out
}

fn tree_socket_inodes(tree: &Tree) -> std::collections::HashSet<u32> {
    tree_socket_fds(&tree.live_pids())
        .into_iter()
        .map(|(_, _, ino)| ino)
        .collect()
}

/// Inodes of the sockets in flight on the tree's unix sockets (their peers are inside the
/// tree too). Only looked for when a peer seems to be outside: it reads every socket's fdinfo.
fn sockets_in_flight_in_tree(pids: &[u32]) -> Vec<u32> {
    let mut out = Vec::new();
    for (pid, fd, _) in tree_socket_fds(pids) {
        let carries = proc::fdinfo(pid, fd)
            .ok()
            .and_then(|i| i.extra.get("scm_fds")?.trim().parse::<u32>().ok())
            .unwrap_or(0);
        if carries == 0 {
            continue;
        }
        let copy = crate::net::inet::pidfd_open(pid)
            .ok()
            .and_then(|p| crate::net::inet::pidfd_getfd(p.as_raw_fd(), fd).ok());
        if let Some(copy) = copy {
            out.extend(crate::net::unix::sockets_in_flight(&copy));
        }
    }
    out
}

/// The `TracerPid:` of a thread (0 if none or unreadable).
fn tracer_pid(pid: u32, tid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("TracerPid:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// A task in a namespace other than the dumper's would come back in the restorer's, silently
/// changed (its pids, network, files...): refuse it, IPC and UTS namespaces excepted.
fn refuse_foreign_namespaces(live: &[u32]) -> Result<(), DumpError> {
    use std::os::unix::fs::MetadataExt;
    let id = |path: String| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    for kind in ["pid", "net", "mnt", "user", "cgroup", "time"] {
        let ours = id(format!("/proc/thread-self/ns/{kind}"));
        for &pid in live {
            let theirs = id(format!("/proc/{pid}/ns/{kind}"));
            if ours.is_some() && theirs.is_some() && theirs != ours {
                let ns = std::fs::read_link(format!("/proc/{pid}/ns/{kind}"))
                    .map(|l| l.to_string_lossy().into_owned())
                    .unwrap_or_default();
                return Err(DumpError::Namespace { pid, kind, ns });
            }
        }
    }
    Ok(())
}

/// Processes (not threads) that share an mm, fd table, fs struct or signal handlers
/// (clone without CLONE_THREAD) cannot be restored as separate processes: refuse them.
fn refuse_shared_kernel_objects(tree: &Tree) -> Result<(), DumpError> {
    let live = tree.live_pids();
    for (i, &a) in live.iter().enumerate() {
        for &b in &live[i + 1..] {
            for (kind, what, upper) in [
                (1, "memory", "VM"),
                (2, "file descriptor table", "FILES"),
                (3, "fs information (cwd, root, umask)", "FS"),
                (4, "signal handlers", "SIGHAND"),
            ] {
                // SAFETY: kcmp compares kernel objects of two tasks; no memory is passed.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_kcmp,
                        a as libc::c_long,
                        b as libc::c_long,
                        kind as libc::c_long,
                        0,
                        0,
                    )
                };
                if r == 0 {
                    return Err(DumpError::SharedKernelObject {
                        pid: b,
                        other: a,
                        what,
                        what_upper: upper,
                    });
                }
            }
        }
    }
    Ok(())
}

/// System V objects and POSIX message queues, on the calling thread's IPC namespace: those the
/// tree uses of the host's, or every one of a namespace the tree owns (`whole_ns`), with its
/// sysctls. The images are always written, even empty, so stale ones cannot apply.
fn dump_ipc(
    img: &mut Images,
    stats: &mut DumpStats,
    tree_pids: &std::collections::HashSet<u32>,
    whole_ns: bool,
) -> Result<(), DumpError> {
    let ns_id = img.ipc_ns_id;
    let users = (!whole_ns).then_some(tree_pids);
    let queues = crate::ipc::sysv::dump_msg(users).map_err(DumpError::Ipc)?;
    write_file(
        &img.dir.join(names::ipcns_msg(ns_id)),
        &crate::ipc::sysv::write_msg(&queues),
    )?;
    let sems = crate::ipc::sysv::dump_sem(users).map_err(DumpError::Ipc)?;
    write_file(
        &img.dir.join(names::ipcns_sem(ns_id)),
        &crate::ipc::sysv::write_sem(&sems),
    )?;

    // POSIX queues: (path reaching the queue's file, "/name", file id).
    let mut mq: Vec<(String, String, u32)> = img
        .mqueues
        .iter()
        .map(|(pid, fd, name, id)| (format!("/proc/{pid}/fd/{fd}"), name.clone(), *id))
        .collect();
    let _mq_root = if whole_ns {
        // Every queue of the namespace, held open or not.
        let (root, names) = crate::ns::ipc::mqueue_root()?;
        mq.clear();
        for n in names {
            let path = format!("/proc/self/fd/{}/{n}", root.as_raw_fd());
            let name = format!("/{n}");
            let md = std::fs::metadata(&path).map_err(|source| {
                DumpError::Mqueue(crate::ipc::mqueue::MqError::Sys {
                    name: name.clone(),
                    step: crate::ipc::mqueue::Step::Inspect,
                    source,
                })
            })?;
            let id = img.files.mqueue_file(&name, &md);
            mq.push((path, name, id));
        }
        Some(root)
    } else {
        None
    };
    let wanted = mq
        .iter()
        .map(|(path, name, _)| crate::ipc::mqueue::identity(path, name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DumpError::Mqueue)?;
    // One pass over every process's fds for all the queues.
    crate::ipc::mqueue::refuse_outside_users(&wanted, tree_pids).map_err(DumpError::Mqueue)?;
    let mut mqueues = Vec::new();
    for (path, name, id) in &mq {
        mqueues.push(crate::ipc::mqueue::dump(path, name, *id).map_err(DumpError::Mqueue)?);
    }
    write_file(
        &img.dir.join(names::POSIX_MQUEUE),
        &crate::ipc::sysv::write_msg(&mqueues),
    )?;

    if whole_ns {
        // Segments nobody attaches: their content through a read-only attachment of our own.
        let idle: Vec<proc::parse::ShmSegment> = img
            .sysv_segments
            .iter()
            .filter(|s| !img.sysv_dumped.iter().any(|e| e.desc.id == s.shmid))
            .cloned()
            .collect();
        for seg in idle {
            dump_idle_segment(&seg, img, stats)?;
        }
        let vars = crate::ns::ipc::read_vars()?;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::IPC_VAR);
        w.push(&vars);
        write_file(&img.dir.join(names::ipcns_var(ns_id)), &w.into_bytes())?;
    }
    let mut w = ImageWriter::new(ImageKind::Normal, magic::IPCNS_SHM);
    for e in &img.sysv_dumped {
        w.push(e);
    }
    write_file(&img.dir.join(names::ipcns_shm(ns_id)), &w.into_bytes())
}

fn shm_entry(seg: &proc::parse::ShmSegment) -> pb::IpcShmEntry {
    pb::IpcShmEntry {
        desc: pb::IpcDescEntry {
            key: seg.key as u32,
            uid: seg.uid,
            gid: seg.gid,
            cuid: seg.cuid,
            cgid: seg.cgid,
            mode: seg.perms,
            id: seg.shmid,
        },
        size: seg.size,
        in_pagemaps: Some(true),
        hugetlb_flag: None,
    }
}

/// A segment of the tree's own namespace that no task attaches right now.
fn dump_idle_segment(
    seg: &proc::parse::ShmSegment,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    // SAFETY: shmat(2) read-only at an address the kernel picks; detached below.
    let addr = unsafe { libc::shmat(seg.shmid as i32, std::ptr::null(), libc::SHM_RDONLY) };
    if addr as isize == -1 {
        return Err(DumpError::Ipc(crate::ipc::sysv::IpcError::Attach {
            shmid: seg.shmid as i32,
            source: std::io::Error::last_os_error(),
        }));
    }
    let start = addr as u64;
    let end = start + seg.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let path = format!("/proc/self/map_files/{start:x}-{end:x}");
    let r = dump_shmem_object(&path, seg.shmid as u64, seg.size, img, stats);
    // SAFETY: detaches the attachment made above.
    unsafe { libc::shmdt(addr) };
    r?;
    img.sysv_dumped.push(shm_entry(seg));
    Ok(())
}

/// The seccomp filters of thread `tid`, oldest first, added to `filters`; the index of its
/// last one.
fn dump_seccomp_chain(
    pid: u32,
    tid: u32,
    filters: &mut crate::task::seccomp::Filters,
) -> Result<Option<u32>, DumpError> {
    let mut chain = Vec::new();
    while let Some(f) = ptrace::seccomp_filter(tid, chain.len() as u64).map_err(ptr_err(pid))? {
        chain.push(f);
    }
    chain.reverse();
    filters
        .add_chain(&chain)
        .map_err(|e| DumpError::UnsupportedFd {
            pid,
            fd: -1,
            what: format!("thread {tid}: {e}"),
        })
}

/// A zombie is only its exit code and name, as in CRIU (task_state TASK_DEAD).
fn dump_zombie(task: &Task, dir: &Path) -> Result<(), DumpError> {
    let core = pb::CoreEntry {
        mtype: pb::core_entry::March::X8664 as i32,
        tc: Some(pb::TaskCoreEntry {
            task_state: images::TASK_DEAD,
            exit_code: task.stat.exit_code as u32,
            comm: task.stat.comm.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let mut w = ImageWriter::new(ImageKind::Normal, magic::CORE);
    w.push(&core);
    write_file(&dir.join(names::core(task.pid)), &w.into_bytes())
}

/// CRIU's `network_lock_method` value for nftables (the table is `stasis-<dump_criu_run_id>`).
pub const NETWORK_LOCK_NFTABLES: u32 = 2;

fn uptime_us() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1e6) as u64)
        .unwrap_or(0)
}

/// Kernel-object ids: stasis refuses shared fd tables, mms and fs structs between processes, so
/// each process owns its own and the ids are its ordinal.
fn ids_for(n: u32, ipc_ns_id: u32, uts_ns_id: u32) -> pb::TaskKobjIdsEntry {
    pb::TaskKobjIdsEntry {
        vm_id: n,
        files_id: n,
        fs_id: n,
        sighand_id: n,
        pid_ns_id: None,
        net_ns_id: None,
        ipc_ns_id: Some(ipc_ns_id),
        uts_ns_id: Some(uts_ns_id),
        mnt_ns_id: None,
        user_ns_id: None,
        cgroup_ns_id: None,
        time_ns_id: None,
    }
}

const SCRATCH_LEN: u64 = 2 * PAGE_SIZE;

fn read_u64(pid: u32, addr: u64) -> Result<u64, DumpError> {
    let mut b = [0u8; 8];
    mem::read(pid, addr, &mut b)?;
    Ok(u64::from_ne_bytes(b))
}

fn read_words<const N: usize>(pid: u32, addr: u64) -> Result<[u64; N], DumpError> {
    let mut b = vec![0u8; N * 8];
    mem::read(pid, addr, &mut b)?;
    let mut out = [0u64; N];
    for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
        *o = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    }
    Ok(out)
}

fn cap_words(v: u64) -> Vec<u32> {
    vec![v as u32, (v >> 32) as u32]
}

fn siginfos(list: Vec<[u8; 128]>) -> Option<pb::SignalQueueEntry> {
    Some(pb::SignalQueueEntry {
        signals: list
            .into_iter()
            .map(|s| pb::SiginfoEntry {
                siginfo: s.to_vec(),
            })
            .collect(),
    })
}

fn dump_task(
    tree: &mut Tree,
    n: usize,
    opts: &DumpOptions,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let pid = tree.tasks[n].pid;
    let ord = n as u32 + 1;
    let maps = proc::smaps(pid)?;
    // A syscall instruction to inject at: the task's own vdso has one.
    let vdso =
        maps.iter()
            .find(|m| m.path == "[vdso]")
            .ok_or_else(|| DumpError::UnsupportedVma {
                pid,
                start: 0,
                end: 0,
                path: "[vdso]".into(),
                what: "a task without a vdso".into(),
            })?;
    let mut vdso_bytes = vec![0u8; vdso.len() as usize];
    mem::read(pid, vdso.start, &mut vdso_bytes)?;
    let at = ptrace::find_syscall_insn(&vdso_bytes, vdso.start).ok_or_else(|| {
        DumpError::UnsupportedVma {
            pid,
            start: vdso.start,
            end: vdso.end,
            path: "[vdso]".into(),
            what: "a vdso without a syscall instruction".into(),
        }
    })?;
    tree.syscall_at.insert(pid, at);
    let leader = tree.injector(pid, pid)?;
    let scratch = leader
        .call(
            libc::SYS_mmap,
            &[
                0,
                SCRATCH_LEN,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .map_err(ptr_err(pid))? as u64;
    tree.tasks[n].scratch = Some((scratch, SCRATCH_LEN));

    // Signal dispositions: one rt_sigaction per signal (no interface exposes them otherwise).
    let mut sigactions = Vec::new();
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        leader
            .call(libc::SYS_rt_sigaction, &[sig, 0, scratch, 8])
            .map_err(ptr_err(pid))?;
        let [handler, flags, restorer, mask] = read_words::<4>(pid, scratch)?;
        sigactions.push(pb::SaEntry {
            sigaction: handler,
            flags,
            restorer,
            mask,
            compat_sigaction: None,
            mask_extended: None,
        });
    }
    let brk = leader.call(libc::SYS_brk, &[0]).map_err(ptr_err(pid))? as u64;
    let mut itimers = Vec::new();
    for which in 0..3u64 {
        leader
            .call(libc::SYS_getitimer, &[which, scratch])
            .map_err(ptr_err(pid))?;
        let [isec, iusec, vsec, vusec] = read_words::<4>(pid, scratch)?;
        itimers.push(pb::ItimerEntry {
            isec,
            iusec,
            vsec,
            vusec,
        });
    }
    let posix = dump_posix_timers(pid, &leader, scratch)?;
    let dumpable = leader
        .call(libc::SYS_prctl, &[libc::PR_GET_DUMPABLE as u64])
        .map_err(ptr_err(pid))?;
    let thp_disabled = leader
        .call(libc::SYS_prctl, &[libc::PR_GET_THP_DISABLE as u64])
        .map_err(ptr_err(pid))?;
    leader
        .call(
            libc::SYS_prctl,
            &[libc::PR_GET_CHILD_SUBREAPER as u64, scratch],
        )
        .map_err(ptr_err(pid))?;
    let subreaper = read_u64(pid, scratch)? as u32 != 0;

    // Per-thread state.
    let mut cores = Vec::new();
    let tids: Vec<(u32, Regs, u64)> = tree.tasks[n]
        .threads
        .iter()
        .map(|t| (t.tid, t.regs, t.sigmask))
        .collect();
    for (tid, regs, sigmask) in &tids {
        let inj = tree.injector(pid, *tid)?;
        inj.call(libc::SYS_prctl, &[libc::PR_GET_TID_ADDRESS as u64, scratch])
            .map_err(ptr_err(pid))?;
        let clear_tid = read_u64(pid, scratch)?;
        inj.call(libc::SYS_sigaltstack, &[0, scratch])
            .map_err(ptr_err(pid))?;
        let [ss_sp, ss_flags, ss_size] = read_words::<3>(pid, scratch)?;
        inj.call(libc::SYS_prctl, &[libc::PR_GET_PDEATHSIG as u64, scratch])
            .map_err(ptr_err(pid))?;
        let pdeath = read_u64(pid, scratch)? as u32;
        let secbits = inj
            .call(libc::SYS_prctl, &[libc::PR_GET_SECUREBITS as u64])
            .map_err(ptr_err(pid))? as u32;
        let (futex_rla, futex_rla_len) = robust_list(*tid);
        let xstate = ptrace::get_xstate(*tid).map_err(ptr_err(pid))?;
        let rseq = ptrace::get_rseq(*tid).map_err(ptr_err(pid))?;
        let pending = ptrace::peek_siginfo(*tid, false).map_err(ptr_err(pid))?;
        let tst = proc::thread_stat(pid, *tid)?;
        let tstatus = proc::thread_status(pid, *tid)?;
        let creds = pb::CredsEntry {
            uid: tstatus.uids[0],
            gid: tstatus.gids[0],
            euid: tstatus.uids[1],
            egid: tstatus.gids[1],
            suid: tstatus.uids[2],
            sgid: tstatus.gids[2],
            fsuid: tstatus.uids[3],
            fsgid: tstatus.gids[3],
            cap_inh: cap_words(tstatus.cap_inh),
            cap_prm: cap_words(tstatus.cap_prm),
            cap_eff: cap_words(tstatus.cap_eff),
            cap_bnd: cap_words(tstatus.cap_bnd),
            secbits,
            groups: tstatus.groups.clone(),
            lsm_profile: None,
            lsm_sockcreate: None,
            apparmor_data: None,
            no_new_privs: Some(tstatus.no_new_privs as u32),
            cap_amb: cap_words(tstatus.cap_amb),
        };
        const SCHED_DEADLINE: u32 = 6;
        if tst.policy == SCHED_DEADLINE {
            // Its runtime, deadline and period need sched_getattr, which we do not keep.
            return Err(DumpError::UnsupportedFd {
                pid,
                fd: -1,
                what: format!("SCHED_DEADLINE scheduling on thread {tid}"),
            });
        }
        let thread_core = pb::ThreadCoreEntry {
            futex_rla,
            futex_rla_len,
            sched_nice: Some(tst.nice as i32),
            sched_policy: Some(tst.policy),
            sched_prio: Some(tst.rt_priority),
            blk_sigset: Some(*sigmask),
            sas: Some(pb::ThreadSasEntry {
                ss_sp,
                ss_size,
                ss_flags: ss_flags as u32,
            }),
            pdeath_sig: Some(pdeath),
            signals_p: siginfos(pending),
            creds: Some(creds),
            seccomp_mode: None,
            seccomp_filter: None,
            comm: Some(tst.comm.clone()),
            blk_sigset_extended: None,
            rseq_entry: (rseq.rseq_abi_pointer != 0).then_some(pb::RseqEntry {
                rseq_abi_pointer: rseq.rseq_abi_pointer,
                rseq_abi_size: rseq.rseq_abi_size,
                signature: rseq.signature,
                rseq_cs_pointer: None,
            }),
            cg_set: None,
        };
        let core = pb::CoreEntry {
            mtype: pb::core_entry::March::X8664 as i32,
            thread_info: Some(pb::ThreadInfoX86 {
                clear_tid_addr: clear_tid,
                gpregs: arch::regs_to_pb(regs),
                fpregs: arch::fpregs_from_xstate(&xstate),
                tls: Vec::new(),
            }),
            ti_arm: None,
            ti_aarch64: None,
            ti_ppc64: None,
            ti_s390: None,
            ti_mips: None,
            ti_loongarch64: None,
            ti_riscv64: None,
            tc: None,
            ids: None,
            thread_core: Some(thread_core),
        };
        cores.push((*tid, core, tstatus.seccomp));
    }
    for (tid, core, mode) in cores.iter_mut() {
        match *mode {
            0 => {}
            crate::task::seccomp::MODE_FILTER => {
                let last = dump_seccomp_chain(pid, *tid, &mut img.seccomp)?;
                if let Some(tc) = core.thread_core.as_mut() {
                    tc.seccomp_mode = Some(pb::SeccompMode::Filter as i32);
                    tc.seccomp_filter = last;
                }
            }
            other => {
                return Err(DumpError::UnsupportedFd {
                    pid,
                    fd: -1,
                    what: format!("seccomp mode {other} (strict) on thread {tid}"),
                })
            }
        }
    }

    let st = tree.tasks[n].stat.clone();
    let status = proc::status(pid)?;
    let limits = proc::limits(pid)?;
    let shared_pending = ptrace::peek_siginfo(pid, true).map_err(ptr_err(pid))?;
    let personality =
        u32::from_str_radix(&proc::read_trimmed(pid, "personality")?, 16).unwrap_or(0);
    let oom: i32 = proc::read_trimmed(pid, "oom_score_adj")?
        .parse()
        .unwrap_or(0);
    let loginuid: u32 = proc::read_trimmed(pid, "loginuid")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(u32::MAX);
    let tc = pb::TaskCoreEntry {
        task_state: if tree.tasks[n].stopped.is_some() {
            images::TASK_STOPPED
        } else {
            images::TASK_ALIVE
        },
        stop_signo: tree.tasks[n].stopped.map(|s| s as u32),
        exit_code: 0,
        personality,
        flags: st.flags,
        blk_sigset: tids[0].2,
        comm: st.comm.clone(),
        timers: Some(pb::TaskTimersEntry {
            real: itimers[0],
            virt: itimers[1],
            prof: itimers[2],
            posix,
        }),
        rlimits: Some(pb::TaskRlimitsEntry {
            rlimits: limits
                .iter()
                .map(|&(cur, max)| pb::RlimitEntry { cur, max })
                .collect(),
        }),
        cg_set: None,
        signals_s: siginfos(shared_pending),
        old_seccomp_mode: None,
        old_seccomp_filter: None,
        loginuid: Some(loginuid),
        oom_score_adj: Some(oom),
        sigactions,
        child_subreaper: Some(subreaper),
        blk_sigset_extended: None,
        membarrier_registration_mask: None,
    };

    // Files and fs.
    let (fds, locks) = dump_fds(pid, opts, img, stats, &mut tree.nft_lock)?;
    tree.tcp_locks.extend(locks);
    let dir_of = |which: &str| -> Result<String, DumpError> {
        let path = proc::readlink(pid, which)?;
        // Deleted directories cannot be reopened by path (and are refused as fds too).
        if path.ends_with(" (deleted)") {
            return Err(DumpError::UnsupportedFd {
                pid,
                fd: -1,
                what: format!("a {which} directory deleted while in use ({path})"),
            });
        }
        Ok(path)
    };
    let cwd = img
        .files
        .add_path(&dir_of("cwd")?, libc::O_DIRECTORY as u32)?;
    let root = img
        .files
        .add_path(&dir_of("root")?, libc::O_DIRECTORY as u32)?;
    let mut w = ImageWriter::new(ImageKind::Normal, magic::FS);
    w.push(&pb::FsEntry {
        cwd_id: cwd,
        root_id: root,
        umask: Some(status.umask),
    });
    write_file(&img.dir.join(names::fs(pid)), &w.into_bytes())?;
    let mut w = ImageWriter::new(ImageKind::Normal, magic::FDINFO);
    for fd in &fds {
        w.push(fd);
    }
    write_file(&img.dir.join(names::fdinfo(ord)), &w.into_bytes())?;
    let mut w = ImageWriter::new(ImageKind::Normal, magic::IDS);
    w.push(&ids_for(ord, img.ipc_ns_id, img.uts_ns_id));
    write_file(&img.dir.join(names::ids(pid)), &w.into_bytes())?;

    // Memory.
    let exe = proc::readlink(pid, "exe")?;
    let exe_id = img.files.add_exe(pid, &exe)?;
    let auxv = proc::auxv(pid)?;
    let vmas = dump_memory(pid, &maps, img, stats)?;
    let mm = pb::MmEntry {
        mm_start_code: st.start_code,
        mm_end_code: st.end_code,
        mm_start_data: st.start_data,
        mm_end_data: st.end_data,
        mm_start_stack: st.start_stack,
        mm_start_brk: st.start_brk,
        mm_brk: brk,
        mm_arg_start: st.arg_start,
        mm_arg_end: st.arg_end,
        mm_env_start: st.env_start,
        mm_env_end: st.env_end,
        exe_file_id: exe_id,
        mm_saved_auxv: auxv,
        vmas,
        dumpable: Some(dumpable as i32),
        aios: Vec::new(),
        thp_disabled: Some(thp_disabled != 0),
    };
    let mut w = ImageWriter::new(ImageKind::Normal, magic::MM);
    w.push(&mm);
    write_file(&img.dir.join(names::mm(pid)), &w.into_bytes())?;

    for (i, (tid, mut core, _)) in cores.into_iter().enumerate() {
        if i == 0 {
            core.tc = Some(tc.clone());
            core.ids = Some(ids_for(ord, img.ipc_ns_id, img.uts_ns_id));
        }
        let mut w = ImageWriter::new(ImageKind::Normal, magic::CORE);
        w.push(&core);
        write_file(&img.dir.join(names::core(tid)), &w.into_bytes())?;
    }
    Ok(())
}

fn robust_list(tid: u32) -> (u64, u32) {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: get_robust_list writes a pointer and a length into our locals.
    let r = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            tid as libc::c_long,
            &mut head as *mut u64,
            &mut len as *mut usize,
        )
    };
    if r != 0 {
        return (0, 0);
    }
    (head, len as u32)
}

/// POSIX timers, from /proc/<pid>/timers plus an injected timer_gettime per timer.
fn dump_posix_timers(
    pid: u32,
    inj: &Injector,
    scratch: u64,
) -> Result<Vec<pb::PosixTimerEntry>, DumpError> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/timers")).unwrap_or_default();
    let mut out = Vec::new();
    for t in crate::proc::parse::parse_timers(&text).map_err(proc::ProcError::from)? {
        inj.call(libc::SYS_timer_gettime, &[t.id as u64, scratch])
            .map_err(ptr_err(pid))?;
        let [isec, insec, vsec, vnsec] = read_words::<4>(pid, scratch)?;
        let overrun = inj
            .call(libc::SYS_timer_getoverrun, &[t.id as u64])
            .map_err(ptr_err(pid))? as u32;
        out.push(pb::PosixTimerEntry {
            it_id: t.id,
            clock_id: t.clock_id,
            si_signo: t.signo,
            it_sigev_notify: t.notify,
            sival_ptr: t.sival_ptr,
            overrun,
            isec,
            insec,
            vsec,
            vnsec,
            notify_thread_id: t.notify_tid.map(|x| x as i32),
        });
    }
    Ok(out)
}

fn dump_fds(
    pid: u32,
    opts: &DumpOptions,
    img: &mut Images,
    stats: &mut DumpStats,
    nft_lock: &mut Option<String>,
) -> Result<(Vec<pb::FdinfoEntry>, Vec<crate::net::inet::TcpLock>), DumpError> {
    let mut out = Vec::new();
    let mut locks = Vec::new();
    let mut pidfd: Option<Option<std::os::fd::OwnedFd>> = None;
    for fd in proc::fds(pid)? {
        out.push(dump_one_fd(
            pid, fd, opts, img, stats, nft_lock, &mut locks, &mut pidfd,
        )?);
    }
    Ok((out, locks))
}

/// One fd of `pid` (or, with `pid` our own, a file in flight on a socket of the tree).
#[allow(clippy::too_many_arguments)]
fn dump_one_fd(
    pid: u32,
    fd: i32,
    opts: &DumpOptions,
    img: &mut Images,
    stats: &mut DumpStats,
    nft_lock: &mut Option<String>,
    locks: &mut Vec<crate::net::inet::TcpLock>,
    pidfd: &mut Option<Option<std::os::fd::OwnedFd>>,
) -> Result<pb::FdinfoEntry, DumpError> {
    let link = proc::readlink(pid, &format!("fd/{fd}"))?;
    let info = proc::fdinfo(pid, fd)?;
    let kind = files::classify(pid, fd, &link)?;
    let (ty, id) = match kind {
        files::FdKind::Regular | files::FdKind::Directory | files::FdKind::CharDevice => {
            (pb::FdTypes::Reg, img.files.add_fd(pid, fd, &link, &info)?)
        }
        files::FdKind::Tty
            if link == "/dev/ptmx"
                || pty::slave_index(&link).is_some_and(|n| img.tree_ptys.contains(&n)) =>
        {
            // A pty whose master is in the tree: saved whole, restored as a new pair.
            let p = pidfd.get_or_insert_with(|| crate::net::inet::pidfd_open(pid).ok());
            let copy = p
                .as_ref()
                .and_then(|p| crate::net::inet::pidfd_getfd(p.as_raw_fd(), fd).ok())
                .ok_or(DumpError::UnsupportedFd {
                    pid,
                    fd,
                    what: format!("terminal {link} (cannot copy it)"),
                })?;
            let master = link == "/dev/ptmx";
            let index = if master {
                pty::master_index(copy.as_raw_fd()).map_err(|source| {
                    DumpError::Files(files::FilesError::Inspect { pid, fd, source })
                })?
            } else {
                pty::slave_index(&link).unwrap_or(0)
            };
            let rdev = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
                .map(|m| std::os::unix::fs::MetadataExt::rdev(&m) as u32)
                .unwrap_or(0);
            let flags = info.flags & !(libc::O_CLOEXEC as u32);
            let id = img.files.add_pty(
                pid,
                fd,
                &link,
                flags,
                |id| {
                    pty::info(id, index, copy.as_raw_fd(), rdev)
                        .map_err(|source| files::FilesError::Pty { pid, fd, source })
                },
                (index, master),
            )?;
            (pb::FdTypes::Tty, id)
        }
        files::FdKind::Tty => {
            if !opts.shell_job {
                return Err(DumpError::ShellJobNeeded {
                    pid,
                    fd,
                    path: link,
                });
            }
            (pb::FdTypes::Reg, img.files.add_fd(pid, fd, &link, &info)?)
        }
        files::FdKind::Fifo(ino) => (
            pb::FdTypes::Fifo,
            img.files.add_fifo(pid, fd, &link, ino, &info)?,
        ),
        files::FdKind::Pipe(ino) => (pb::FdTypes::Pipe, img.files.add_pipe(pid, fd, ino, &info)?),
        files::FdKind::EventFd
        | files::FdKind::TimerFd
        | files::FdKind::SignalFd
        | files::FdKind::Inotify
        | files::FdKind::EventPoll => {
            let ty = kind.anon_fd_type().expect("an anon-inode kind");
            (ty, img.files.add_anon(pid, fd, &kind, &info)?)
        }
        files::FdKind::Socket(ino) => {
            if let Some((id, ty)) = img.files.known(pid, fd) {
                // The same socket through another fd (dup, fork): one file, its own type.
                (ty, id)
            } else {
                let p = pidfd.get_or_insert_with(|| crate::net::inet::pidfd_open(pid).ok());
                let pfd = p
                    .as_ref()
                    .ok_or(DumpError::UnsupportedFd {
                        pid,
                        fd,
                        what: "a socket (pidfd_open failed)".into(),
                    })?
                    .as_raw_fd();
                let sock_err = |source| DumpError::Socket { pid, fd, source };
                let sock = crate::net::inet::pidfd_getfd(pfd, fd).map_err(|source| {
                    sock_err(crate::net::inet::InetError::Sys {
                        what: "pidfd_getfd".into(),
                        source,
                    })
                })?;
                if socket_family(sock.as_raw_fd()) == "unix" {
                    let in_flight = info
                        .extra
                        .get("scm_fds")
                        .and_then(|v| v.trim().parse().ok())
                        .unwrap_or(0);
                    let flags = info.flags & !(libc::O_CLOEXEC as u32);
                    let cwd = proc::readlink(pid, "cwd").unwrap_or_default();
                    let me = std::process::id();
                    let dump_unix = |tree_sockets: &std::collections::HashSet<u32>| {
                        let cx = crate::net::unix::Context {
                            cwd: &cwd,
                            in_flight,
                            nested: pid == me,
                            ext_unix_sk: opts.ext_unix_sk,
                            ext_inodes: &opts.ext_unix_sk_inodes,
                            tree_sockets,
                        };
                        crate::net::unix::dump(&sock, ino as u32, flags, &cx)
                    };
                    let unix_err = |source| DumpError::Unix { pid, fd, source };
                    let mut dumped = match dump_unix(&img.tree_sockets) {
                        // The peer may be in flight on a socket of the tree: look once, retry.
                        Err(crate::net::unix::UnixError::ExternalPeer { .. })
                            if !img.in_flight_sockets_known =>
                        {
                            img.in_flight_sockets_known = true;
                            let found = sockets_in_flight_in_tree(&img.live_pids);
                            img.tree_sockets.extend(found);
                            dump_unix(&img.tree_sockets)
                        }
                        r => r,
                    }
                    .map_err(unix_err)?;
                    // Files in flight: the peek put them in our own table, where they are
                    // dumped like any fd (and kept open until the dump ends, for kcmp).
                    let mut queued = Vec::new();
                    for p in std::mem::take(&mut dumped.queued) {
                        let mut files = Vec::new();
                        for f in p.fds {
                            crate::net::unix::check_in_flight(f.as_raw_fd(), ino as u32)
                                .map_err(unix_err)?;
                            let e = dump_one_fd(
                                me,
                                f.as_raw_fd(),
                                opts,
                                img,
                                stats,
                                nft_lock,
                                locks,
                                &mut None,
                            )?;
                            files.push(e.id);
                            img.in_flight.push(f);
                        }
                        queued.push(crate::net::unix::Queued {
                            data: p.data,
                            files,
                        });
                    }
                    let id = img.files.add_unix(pid, fd, dumped, queued)?;
                    return Ok(pb::FdinfoEntry {
                        id,
                        flags: (info.flags & libc::O_CLOEXEC as u32 != 0) as u32,
                        r#type: pb::FdTypes::Unixsk as i32,
                        fd: fd as u32,
                        xattr_security_selinux: None,
                    });
                }
                if !crate::net::inet::is_inet(sock.as_raw_fd()) {
                    return Err(DumpError::UnsupportedFd {
                        pid,
                        fd,
                        what: format!(
                            "{} socket (socket:[{ino}])",
                            socket_family(sock.as_raw_fd())
                        ),
                    });
                }
                let flags = info.flags & !(libc::O_CLOEXEC as u32);
                // The network lock goes up before the connection is read: from then on no
                // segment of the peer reaches it (nor, after the kill, a closed port).
                let mut lock_conn = |local_port: u16, remote_port: u16| -> std::io::Result<()> {
                    let conn = [stasis_netns::nftlock::Conn {
                        local_port,
                        remote_port,
                    }];
                    let (table, create) = match nft_lock.as_ref() {
                        Some(t) => (t.clone(), false),
                        None => (format!("stasis-{}-{}", opts.pid, uptime_us()), true),
                    };
                    stasis_netns::nftlock::add(&table, &conn, create)
                        .map_err(std::io::Error::other)?;
                    *nft_lock = Some(table);
                    Ok(())
                };
                let dumped = crate::net::inet::dump(
                    sock,
                    0,
                    ino,
                    flags,
                    opts.tcp_established,
                    &mut lock_conn,
                )
                .map_err(sock_err)?;
                let mut entry = Some(dumped.entry);
                let (id, _) = img.files.add_inet(pid, fd, |id| {
                    let mut e = entry.take().expect("called once");
                    e.id = id;
                    Ok(e)
                })?;
                if let Some((stream, inq, outq, lock)) = dumped.stream {
                    locks.push(lock);
                    let mut w = ImageWriter::new(ImageKind::Normal, magic::TCP_STREAM);
                    w.push(&stream);
                    w.push_raw(&inq);
                    w.push_raw(&outq);
                    write_file(
                        &img.dir.join(names::tcp_stream(ino as u32)),
                        &w.into_bytes(),
                    )?;
                }
                (pb::FdTypes::Inetsk, id)
            }
        }
        files::FdKind::Memfd => {
            let open = format!("/proc/{pid}/fd/{fd}");
            let flags = info.flags & !(libc::O_CLOEXEC as u32);
            let (id, fresh) =
                img.files
                    .add_memfd(&open, &link, flags, info.pos, Some((pid, fd)))?;
            if let Some(shmid) = fresh {
                let size = std::fs::metadata(&open).map(|m| m.len()).unwrap_or(0);
                dump_shmem_object(&open, shmid, size, img, stats)?;
            }
            (pb::FdTypes::Memfd, id)
        }
        files::FdKind::Mqueue => {
            let (id, first) = img.files.add_mqueue(pid, fd, &link, &info)?;
            if first {
                img.mqueues
                    .push((pid, fd, crate::ipc::mqueue::queue_name(&link), id));
            }
            (pb::FdTypes::Reg, id)
        }
        files::FdKind::Unsupported(what) => {
            return Err(DumpError::UnsupportedFd { pid, fd, what });
        }
    };
    // A file in flight shows its file's locks too; they belong to the tasks holding it.
    let in_flight = pid == std::process::id();
    for lock in files::parse_locks(&info.raw)
        .into_iter()
        .filter(|_| !in_flight)
    {
        let (flag, ty, start, len) = lock.map_err(|kind| DumpError::UnsupportedFd {
            pid,
            fd,
            what: format!("a file {} (lease)", kind.to_lowercase()),
        })?;
        if !opts.file_locks {
            return Err(DumpError::LocksNeedFlag {
                pid,
                fd,
                path: link.clone(),
            });
        }
        let e = pb::FileLockEntry {
            flag,
            r#type: ty,
            pid: pid as i32,
            fd,
            start,
            len,
        };
        // A lock shows on every fd of its file (and of its owner): keep one of each.
        let same = |o: &pb::FileLockEntry| {
            o.flag == e.flag
                && o.r#type == e.r#type
                && o.start == e.start
                && o.len == e.len
                && o.pid == e.pid
        };
        if !img.locks.iter().any(|(o, ino)| same(o) && *ino == info.ino) {
            img.locks.push((e, info.ino));
        }
    }
    // fdinfo's flags carry O_CLOEXEC for close-on-exec descriptors.
    let cloexec = info.flags & libc::O_CLOEXEC as u32 != 0;
    Ok(pb::FdinfoEntry {
        id,
        flags: cloexec as u32,
        r#type: ty as i32,
        fd: fd as u32,
        xattr_security_selinux: None,
    })
}

fn socket_family(fd: i32) -> &'static str {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt(SO_DOMAIN) into our int.
    unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_DOMAIN,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    match v {
        libc::AF_UNIX => "unix",
        libc::AF_NETLINK => "netlink",
        libc::AF_PACKET => "packet",
        _ => "other",
    }
}

fn madv_bits(m: &Mapping) -> u64 {
    let mut v = 0u64;
    for (flag, adv) in [
        ("sr", libc::MADV_SEQUENTIAL),
        ("rr", libc::MADV_RANDOM),
        ("dc", libc::MADV_DONTFORK),
        ("dd", libc::MADV_DONTDUMP),
        ("mg", libc::MADV_MERGEABLE),
        ("hg", libc::MADV_HUGEPAGE),
        ("nh", libc::MADV_NOHUGEPAGE),
        ("wf", libc::MADV_WIPEONFORK),
    ] {
        if m.has_flag(flag) {
            v |= 1 << adv;
        }
    }
    v
}

fn dump_memory(
    pid: u32,
    maps: &[Mapping],
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<Vec<pb::VmaEntry>, DumpError> {
    use images::vma_status::*;
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).map_err(|source| {
        DumpError::Proc(proc::ProcError::Read {
            path: format!("/proc/{pid}/pagemap").into(),
            source,
        })
    })?;
    let pages_id = img.next_pages_id;
    img.next_pages_id += 1;
    let mut pages = PageSink::create(&img.dir.join(names::pages(pages_id)))?;
    let mut pm = ImageWriter::new(ImageKind::Normal, magic::PAGEMAP);
    pm.push(&pb::PagemapHead { pages_id });
    let mut vmas = Vec::new();
    for m in maps {
        let unsupported = |what: &str| DumpError::UnsupportedVma {
            pid,
            start: m.start,
            end: m.end,
            path: m.path.clone(),
            what: what.to_string(),
        };
        let prot = (m.read as u32 * libc::PROT_READ as u32)
            | (m.write as u32 * libc::PROT_WRITE as u32)
            | (m.exec as u32 * libc::PROT_EXEC as u32);
        let mut flags = if m.shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        } as u32;
        if m.has_flag("gd") {
            flags |= libc::MAP_GROWSDOWN as u32;
        }
        // mlock()ed memory (VM_LOCKED); lock-on-fault (`lf`) areas are left unlocked.
        if m.has_flag("lo") && !m.has_flag("lf") {
            flags |= libc::MAP_LOCKED as u32;
        }
        // `nr` is VM_NORESERVE itself: glibc's thread arenas reserve PROT_NONE space that way.
        // A writable private mapping that is not accounted was made with MAP_NORESERVE too.
        if m.has_flag("nr") || (!m.shared && m.write && !m.has_flag("ac")) {
            flags |= libc::MAP_NORESERVE as u32;
        }
        let mut vma = pb::VmaEntry {
            start: m.start,
            end: m.end,
            pgoff: m.offset,
            shmid: 0,
            prot,
            flags,
            status: VMA_AREA_REGULAR,
            fd: -1,
            madv: Some(madv_bits(m)),
            fdflags: None,
        };
        let select;
        match m.path.as_str() {
            "[vsyscall]" => {
                vma.status = VMA_AREA_VSYSCALL;
                vmas.push(vma);
                continue;
            }
            "[vdso]" => {
                vma.status |= VMA_AREA_VDSO;
                vma.flags |= libc::MAP_ANONYMOUS as u32;
                vmas.push(vma);
                continue;
            }
            "[vvar]" | "[vvar_vclock]" => {
                vma.status |= VMA_AREA_VVAR;
                vma.flags |= libc::MAP_ANONYMOUS as u32;
                vmas.push(vma);
                continue;
            }
            // A System V segment's inode is its id, and id 0 is the first in a namespace.
            _ if m.inode == 0 && !m.path.starts_with("/SYSV") => {
                if m.shared {
                    return Err(unsupported(
                        "shared anonymous memory without a backing inode",
                    ));
                }
                vma.flags |= libc::MAP_ANONYMOUS as u32;
                vma.status |= VMA_ANON_PRIVATE;
                if m.path == "[heap]" {
                    vma.status |= VMA_AREA_HEAP;
                } else if m.path == "[stack]" {
                    vma.status |= VMA_AREA_STACK;
                } else if !m.path.is_empty() && !m.path.starts_with("[anon:") {
                    return Err(unsupported("a special mapping"));
                }
                select = PageSelect::Anon;
            }
            p if p.starts_with("/dev/zero") || p.starts_with("/SYSV") => {
                if !m.shared {
                    // A private mapping of /dev/zero is plain anonymous memory.
                    vma.flags |= libc::MAP_ANONYMOUS as u32;
                    vma.status |= VMA_ANON_PRIVATE;
                    select = PageSelect::Anon;
                } else if p.starts_with("/SYSV") {
                    let shmid = m.inode as u32;
                    let seg = img
                        .sysv_segments
                        .iter()
                        .find(|s| s.shmid == shmid)
                        .cloned()
                        .ok_or_else(|| {
                            unsupported(
                                "System V shared memory that /proc/sysvipc/shm does not list",
                            )
                        })?;
                    let in_tree = img.sysv_attached.get(&shmid).copied().unwrap_or(0);
                    if seg.nattch > in_tree {
                        return Err(unsupported(&format!(
                            "System V shared memory segment {shmid} (key {:#x}), also attached outside the tree ({} attachments, {in_tree} in the tree),",
                            seg.key, seg.nattch
                        )));
                    }
                    if m.offset != 0 || m.len() < seg.size.div_ceil(PAGE_SIZE) * PAGE_SIZE {
                        return Err(unsupported(
                            "a partly mapped System V shared memory segment",
                        ));
                    }
                    vma.status |= VMA_AREA_SYSVIPC;
                    vma.shmid = shmid as u64;
                    if !img.sysv_dumped.iter().any(|e| e.desc.id == shmid) {
                        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                        dump_shmem_object(&path, shmid as u64, seg.size, img, stats)?;
                        img.sysv_dumped.push(shm_entry(&seg));
                    }
                    vmas.push(vma);
                    continue;
                } else {
                    vma.flags |= libc::MAP_ANONYMOUS as u32;
                    vma.status |= VMA_ANON_SHARED;
                    vma.shmid = m.inode;
                    dump_shmem(pid, m, img, stats)?;
                    vmas.push(vma);
                    continue;
                }
            }
            p if p.starts_with("/memfd:") => {
                let open = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
                let open_flags = if m.shared && m.write {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                } as u32;
                let (id, fresh) = img.files.add_memfd(&open, p, open_flags, 0, None)?;
                if let Some(shmid) = fresh {
                    let size = std::fs::metadata(&open).map(|md| md.len()).unwrap_or(0);
                    dump_shmem_object(&open, shmid, size, img, stats)?;
                }
                vma.shmid = id as u64;
                vma.fdflags = Some(open_flags);
                vma.status |= VMA_AREA_MEMFD;
                if m.shared {
                    vma.status |= VMA_FILE_SHARED;
                    vmas.push(vma);
                    continue;
                }
                vma.status |= VMA_FILE_PRIVATE;
                select = PageSelect::PrivateFile;
            }
            p if p.starts_with("/[aio]") => return Err(unsupported("an AIO ring")),
            p if p.starts_with("/anon_hugepage") => return Err(unsupported("hugetlb memory")),
            p if m.shared && p.ends_with(" (deleted)") && m.dev_major == 0 && m.dev_minor <= 1 => {
                return Err(unsupported("shared memory of an unknown kind"))
            }
            p if p.starts_with('/') => {
                let open_flags = if m.shared && m.write {
                    libc::O_RDWR
                } else {
                    libc::O_RDONLY
                };
                vma.shmid = img
                    .files
                    .add_mapping(pid, m.start, m.end, p, open_flags as u32)?
                    as u64;
                vma.fdflags = Some(open_flags as u32);
                if m.shared {
                    vma.status |= VMA_FILE_SHARED;
                    vmas.push(vma);
                    continue;
                }
                vma.status |= VMA_FILE_PRIVATE;
                select = PageSelect::PrivateFile;
            }
            _ => return Err(unsupported("an unknown kind of mapping")),
        }
        let runs = mem::dirty_runs(&pagemap, pid, m.start, m.end, select)?;
        stats.pages_scanned += m.len() / PAGE_SIZE;
        for (addr, npages) in runs {
            pages.copy_from(pid, addr, npages * PAGE_SIZE)?;
            pm.push(&pb::PagemapEntry {
                vaddr: addr,
                compat_nr_pages: u32::try_from(npages).unwrap_or(0),
                in_parent: None,
                flags: Some(images::PE_PRESENT),
                nr_pages: Some(npages),
            });
        }
        vmas.push(vma);
    }
    finish_pages(pages, stats)?;
    write_file(&img.dir.join(names::pagemap(pid as u64)), &pm.into_bytes())?;
    Ok(vmas)
}

/// Shared anonymous memory is dumped once per shmem inode, through /proc/<pid>/map_files.
fn dump_shmem(
    pid: u32,
    m: &Mapping,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    // The object may be larger than this mapping's window; dump what this window shows, from
    // offset 0 of the object (pgoff is kept in the vma).
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    dump_shmem_object(&path, m.inode, m.offset + m.len(), img, stats)
}

/// Dumps the first `size` bytes of a shmem object (shared anonymous memory, memfd) opened
/// through `path`, as CRIU does: `pagemap-shmem-<shmid>.img` (offsets as addresses) and a pages
/// image. Zero pages are left out; a size that ends inside a page is padded with zeros.
fn dump_shmem_object(
    path: &str,
    shmid: u64,
    size: u64,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    use std::os::unix::fs::FileExt;
    if !img.dumped_shmem.insert(shmid) {
        return Ok(());
    }
    let read_err = |source| {
        DumpError::Proc(proc::ProcError::Read {
            path: path.into(),
            source,
        })
    };
    let f = File::open(path).map_err(read_err)?;
    let pages_id = img.next_pages_id;
    img.next_pages_id += 1;
    let mut pages = PageSink::create(&img.dir.join(names::pages(pages_id)))?;
    let mut pm = ImageWriter::new(ImageKind::Normal, magic::PAGEMAP);
    pm.push(&pb::PagemapHead { pages_id });
    let size = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut buf = vec![0u8; (4 << 20).min(size as usize)];
    let mut off = 0u64;
    let page = PAGE_SIZE as usize;
    while off < size {
        let n = buf.len().min((size - off) as usize);
        let mut got = 0;
        while got < n {
            match f.read_at(&mut buf[got..n], off + got as u64) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(read_err(e)),
            }
        }
        buf[got..n].fill(0);
        // Keep only non-zero pages.
        let mut p = 0;
        while p < n {
            if buf[p..p + page].iter().any(|&b| b != 0) {
                let mut q = p + page;
                while q < n && buf[q..q + page].iter().any(|&b| b != 0) {
                    q += page;
                }
                pages.write_bytes(&buf[p..q])?;
                let npages = ((q - p) / page) as u64;
                pm.push(&pb::PagemapEntry {
                    vaddr: off + p as u64,
                    compat_nr_pages: npages as u32,
                    in_parent: None,
                    flags: Some(images::PE_PRESENT),
                    nr_pages: Some(npages),
                });
                p = q;
            } else {
                p += page;
            }
        }
        off += n as u64;
        stats.pages_scanned += n as u64 / PAGE_SIZE;
    }
    finish_pages(pages, stats)?;
    write_file(&img.dir.join(names::pagemap_shmem(shmid)), &pm.into_bytes())
}

fn finish_pages(pages: PageSink, stats: &mut DumpStats) -> Result<(), DumpError> {
    stats.memdump_time_us += pages.read_time.as_micros() as u64;
    stats.pages_written += pages.bytes / PAGE_SIZE;
    stats.memwrite_time_us += pages.finish()?.as_micros() as u64;
    Ok(())
}
