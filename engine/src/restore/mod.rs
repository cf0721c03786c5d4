//! Restore: fork the tree with the dumped PIDs, then rebuild every task from outside by
//! syscalls injected through ptrace (no restorer blob runs inside the task).
//!
//! A failed restore kills every task it created and never writes to the images dir (only
//! `stats-restore` to the work dir, after success).

pub mod load;
mod stub;

use crate::sys::cvt;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::files::{self, anon as anonfd, tty as pty};
use crate::images::{magic, names, pb, vma_status::*, ImageKind, ImageWriter};
use crate::mm::shmem::{make_shmem, read_shmem_content};
use crate::mm::vma::restore_mm;
use crate::net::{inet, unix};
use crate::proc;
use crate::sys::mem;
use crate::sys::ptrace::{self, Injector, PtraceError};
use crate::task::core::{children_in_fork_order, pick_trampoline, restore_task_state};
use crate::task::remote::Remote;
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
    Load(#[from] LoadError),
    #[error(
        "pid {pid} is already in use on this machine; free it (or restore in a new pid namespace)"
    )]
    PidTaken { pid: u32 },
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
    Pages(#[from] crate::mm::pages::PagesError),
    #[error("task {pid}: {what}")]
    Task { pid: u32, what: String },
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
    #[error("timed out waiting for the forked tasks to get ready")]
    Timeout,
    #[error(transparent)]
    TaskState(#[from] crate::task::TaskError),
    #[error(transparent)]
    Mm(#[from] crate::mm::MmError),
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
    pids: Vec<u32>,
    traced: Vec<u32>,
    armed: bool,
}

impl Drop for Created {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        for &pid in self.pids.iter().chain(self.root.iter()) {
            // SAFETY: plain kill(2) of a task we created.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        for &tid in self.traced.iter().rev() {
            loop {
                match ptrace::wait(tid) {
                    Ok(ptrace::Stop::Exited(_)) | Err(_) => break,
                    Ok(_) => {
                        let _ = ptrace::cont(tid, 0);
                    }
                }
            }
        }
        if let Some(root) = self.root {
            let mut st = 0;
            // SAFETY: waitpid on our own child.
            unsafe { libc::waitpid(root as libc::pid_t, &mut st, libc::__WALL) };
        }
    }
}

/// Restores the tree in `opts.images_dir`. The tasks run when this returns; the root is a
/// child of the calling process.
pub fn restore(opts: &RestoreOptions) -> Result<Restored, RestoreError> {
    let t0 = Instant::now();
    let img = load::load(&opts.images_dir)?;
    for t in &img.tasks {
        for th in &t.threads {
            wait_pid_free(th.tid)?;
        }
    }
    raise_nofile_limit();
    // A tree that owned its IPC namespace gets a new one: this thread moves into it until the
    // restore ends, so the objects below and the root task (forked from here) are made there.
    let _ipc_ns = match &img.ipc_vars {
        Some(vars) => {
            let ns = crate::ns::ipc::Unshared::new().map_err(ipcns_err)?;
            crate::ns::ipc::write_limits(vars).map_err(ipcns_err)?;
            Some(ns)
        }
        None => None,
    };
    // Likewise for a UTS namespace: the root is forked into one holding the saved names.
    let _uts_ns = match &img.uts {
        Some(names) => {
            let ns =
                crate::ns::ipc::Unshared::new_of(libc::CLONE_NEWUTS, "uts").map_err(ipcns_err)?;
            crate::ns::uts::set_names(names).map_err(|e| RestoreError::Task {
                pid: 0,
                what: e.to_string(),
            })?;
            Some(ns)
        }
        None => None,
    };
    // Queues must exist before the pool opens their fds.
    crate::ipc::mqueue::restore(&img.posix_mqueues, |id| {
        let reg = img.files.get(&id)?.reg.as_ref()?;
        let name = reg.name.strip_prefix(crate::ipc::mqueue::PATH_PREFIX)?;
        Some(name.to_string())
    })
    .map_err(|e| RestoreError::Task {
        pid: 0,
        what: e.to_string(),
    })?;
    let pool = Pool::build(&img, opts)?;
    take_file_locks(&img, &pool)?;
    let sysv_to_remove = prepare_sysv_shm(&img)?;
    crate::ipc::sysv::restore_msg(&img.sysv_msg).map_err(|e| RestoreError::Task {
        pid: 0,
        what: e.to_string(),
    })?;
    crate::ipc::sysv::restore_sem(&img.sysv_sem).map_err(|e| RestoreError::Task {
        pid: 0,
        what: e.to_string(),
    })?;
    if let Some(vars) = &img.ipc_vars {
        crate::ns::ipc::write_next_ids(vars).map_err(ipcns_err)?;
    }
    let trampoline = pick_trampoline(&img)?;
    let shared = stub::StubShared {
        tasks: stub_plans(&img, &pool)?,
        ready_fd: -1,
        pool_base: pool.base,
        trampoline,
    };
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fds into `p`.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }).map_err(setup_err("pipe"))?;
    // SAFETY: both fds were just created and are owned only here.
    let ready_r = unsafe { OwnedFd::from_raw_fd(p[0]) };
    // SAFETY: as above.
    let ready_w0 = unsafe { OwnedFd::from_raw_fd(p[1]) };
    // The stubs inherit the write end above the pool so that no target fd collides with it.
    // SAFETY: F_DUPFD returns a new fd we own.
    let w = cvt(unsafe { libc::fcntl(ready_w0.as_raw_fd(), libc::F_DUPFD, pool.top) })
        .map_err(setup_err("dup of the ready pipe"))?;
    drop(ready_w0);
    // SAFETY: `w` is a fresh fd owned only here.
    let ready_w = unsafe { OwnedFd::from_raw_fd(w) };
    let shared = stub::StubShared {
        ready_fd: ready_w.as_raw_fd(),
        ..shared
    };

    let mut created = Created {
        root: None,
        pids: Vec::new(),
        traced: Vec::new(),
        armed: true,
    };
    let root_pid = img.tasks[0].pid();
    match stub::fork_with_pid(root_pid) {
        0 => stub::run(&shared, 0),
        r if r < 0 => {
            let errno = (-r) as u32;
            if errno == libc::EEXIST as u32 {
                return Err(RestoreError::PidTaken { pid: root_pid });
            }
            return Err(RestoreError::Stub {
                pid: root_pid,
                what: "clone3",
                errno,
            });
        }
        _ => created.root = Some(root_pid),
    }
    drop(ready_w);
    let fd_of_file = pool.by_file.clone();
    let fd_of_shmem = pool.by_shmid.clone();
    drop(pool);
    wait_ready(&ready_r, &img, &mut created)?;
    // Zombies die right after reporting; wait until they have, so the SIGCHLD they send their
    // parent is pending before we drain the stubs' signals below.
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_some()) {
        let end = Instant::now() + Duration::from_secs(2);
        while proc::stat(t.pid()).map(|s| s.state != 'Z').unwrap_or(false) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let forking_time_us = t0.elapsed().as_micros() as u64;

    let mut pages_restored = 0;
    let mut vdso_syscall = HashMap::new();
    // Filters are installed before the credentials drop (installing needs CAP_SYS_ADMIN or
    // no_new_privs); suspended while traced, they filter none of the syscalls injected after.
    let mut seize_options = ptrace::PTRACE_O_TRACECLONE | PTRACE_O_EXITKILL;
    if !img.seccomp.is_empty() {
        seize_options |= ptrace::PTRACE_O_SUSPEND_SECCOMP;
    }
    let mut epolls_done = std::collections::HashSet::new();
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
        let pid = t.pid();
        ptrace::seize(pid, seize_options).map_err(ptr_err(pid))?;
        created.traced.push(pid);
        ptrace::interrupt_and_wait(pid, pid).map_err(ptr_err(pid))?;
        // A pending SIGTRAP is queued before more injections: keep it blocked, or the next
        // single step would take it (threads cloned later inherit the mask).
        if has_pending_sigtrap(t) {
            ptrace::set_sigmask(pid, !0).map_err(ptr_err(pid))?;
        }
    }
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
        let r = Remote::new(t.pid(), trampoline, sigtrap_at_risk(t))?;
        vdso_syscall.insert(
            t.pid(),
            restore_mm(
                &r,
                t,
                &img,
                &fd_of_file,
                &fd_of_shmem,
                shared.pool_base,
                &mut pages_restored,
            )?,
        );
        open_proc_files(&r, t, &img)?;
        restore_epoll_targets(&r, t, &img, &mut epolls_done)?;
        restore_controlling_tty(&r, t, &img)?;
        restore_posix_locks(&r, t, &img)?;
        restore_task_state(&r, t)?;
    }
    // Segments that were already marked for removal are marked again, now that they are attached.
    for id in &sysv_to_remove {
        // SAFETY: shmctl(IPC_RMID) with no buffer.
        unsafe { libc::shmctl(*id, libc::IPC_RMID, std::ptr::null_mut()) };
    }
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
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
        for (th, (_, r)) in t.threads.iter().zip(&threads) {
            restore_thread(r, t, th, &img.seccomp)?;
        }
        // The trampoline goes last, through the syscall instruction of the (moved) vdso.
        let leader = Injector::new(t.pid(), vdso_syscall[&t.pid()])
            .map_err(ptr_err(t.pid()))?
            .with_quiet(quiet);
        leader
            .call(libc::SYS_munmap, &[trampoline, stub::TRAMPOLINE_LEN])
            .map_err(ptr_err(t.pid()))?;
        for (th, (tid, _)) in t.threads.iter().zip(&threads) {
            set_final_regs(*tid, th)?;
        }
    }
    // The connections exist again: let their peers' packets through (network-unlock).
    if let Some(table) = &img.net_lock {
        if let Err(e) = stasis_netns::nftlock::unlock(table) {
            log::warn!("cannot remove network lock {table}: {e}");
        }
    }

    // Everything is in place: let all tasks go together.
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
        if t.tc().task_state == crate::images::TASK_STOPPED {
            // Stopped when dumped: the stop is pending before it runs a single instruction.
            let sig = t.tc().stop_signo.unwrap_or(libc::SIGSTOP as u32) as libc::c_int;
            // SAFETY: kill(2) of a task we created and still trace.
            unsafe { libc::kill(t.pid() as libc::pid_t, sig) };
        }
        for th in &t.threads {
            ptrace::detach(th.tid).map_err(ptr_err(t.pid()))?;
        }
    }
    created.armed = false;
    let restored = Restored {
        root_pid,
        forking_time_us,
        restore_time_us: t0.elapsed().as_micros() as u64,
        pages_restored,
    };
    let work = opts
        .work_dir
        .clone()
        .unwrap_or_else(|| opts.images_dir.clone());
    if let Err(e) = write_stats(&work, &restored) {
        log::warn!("cannot write stats-restore: {e}");
    }
    Ok(restored)
}

const PTRACE_O_EXITKILL: libc::c_int = 0x100000;

/// A dumped-and-killed task may still be a zombie waiting for its parent (or for an init that
/// reaps late): give it a few seconds before calling its pid taken.
fn wait_pid_free(pid: u32) -> Result<(), RestoreError> {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        match proc::stat(pid) {
            Err(_) => return Ok(()),
            Ok(s) if s.state == 'Z' && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(_) => return Err(RestoreError::PidTaken { pid }),
        }
    }
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
    std::fs::write(work.join(names::STATS_RESTORE), w.into_bytes())
}

fn raise_nofile_limit() {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) == 0 && rl.rlim_cur < rl.rlim_max {
            rl.rlim_cur = rl.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &rl);
        }
    }
}

fn wait_ready(ready: &OwnedFd, img: &DumpImage, created: &mut Created) -> Result<(), RestoreError> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut ready_count = 0;
    let mut buf = Vec::new();
    while ready_count < img.tasks.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RestoreError::Timeout);
        }
        let mut pfd = libc::pollfd {
            fd: ready.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll on one local pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(i32::MAX as u128) as i32) };
        if n < 0 {
            continue;
        }
        let mut chunk = [0u8; 1200];
        // SAFETY: read into a local buffer.
        let got = unsafe { libc::read(ready.as_raw_fd(), chunk.as_mut_ptr().cast(), chunk.len()) };
        if got == 0 {
            return Err(RestoreError::Task {
                pid: img.tasks[0].pid(),
                what: "a forked task exited before it was ready".into(),
            });
        }
        if got < 0 {
            continue;
        }
        buf.extend_from_slice(&chunk[..got as usize]);
        while buf.len() >= 12 {
            let rec: Vec<u8> = buf.drain(..12).collect();
            let word =
                |i: usize| u32::from_ne_bytes(rec[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            let (pid, code, errno) = (word(0), word(1), word(2));
            if code == 0 {
                ready_count += 1;
                if Some(pid) != created.root {
                    created.pids.push(pid);
                }
                continue;
            }
            if code == stub::STUB_CLONE && errno == libc::EEXIST as u32 {
                return Err(RestoreError::PidTaken { pid });
            }
            let what = match code {
                stub::STUB_CLONE => "clone3 with the dumped pid",
                stub::STUB_CHDIR => "chdir to the dumped cwd",
                stub::STUB_CHROOT => "chroot to the dumped root",
                stub::STUB_TRAMPOLINE => "mapping the trampoline page",
                stub::STUB_DUP => "placing an fd",
                stub::STUB_SESSION => "joining the dumped session or process group",
                _ => "setup",
            };
            return Err(RestoreError::Stub { pid, what, errno });
        }
    }
    Ok(())
}

/// Files, pipes and shared memory, opened once by the restorer above every target fd number and
/// inherited by all stubs, which keeps shared open file descriptions shared.
struct Pool {
    base: RawFd,
    /// First number above the pool.
    top: RawFd,
    by_file: HashMap<u32, RawFd>,
    by_shmid: HashMap<u64, RawFd>,
    owned: Vec<OwnedFd>,
}

impl Pool {
    fn place(&mut self, fd: OwnedFd) -> Result<RawFd, RestoreError> {
        // SAFETY: F_DUPFD returns a new fd, owned below; no CLOEXEC, the stubs inherit it.
        let n = cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD, self.top) })
            .map_err(setup_err("placing a file above the target fds"))?;
        // SAFETY: `n` is a fresh fd owned only here.
        self.owned.push(unsafe { OwnedFd::from_raw_fd(n) });
        self.top = n + 1;
        Ok(n)
    }

    fn build(img: &DumpImage, opts: &RestoreOptions) -> Result<Pool, RestoreError> {
        let max_target = img
            .tasks
            .iter()
            .flat_map(|t| t.fds.iter().map(|f| f.fd as RawFd))
            .max()
            .unwrap_or(2);
        let max_own = std::fs::read_dir("/proc/self/fd")
            .map(|rd| {
                rd.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<RawFd>().ok())
                    .max()
                    .unwrap_or(2)
            })
            .unwrap_or(1023);
        let base = (max_target.max(max_own) + 64) & !63;
        let mut pool = Pool {
            base,
            top: base,
            by_file: HashMap::new(),
            by_shmid: HashMap::new(),
            owned: Vec::new(),
        };
        let terminal = (0..3).find(|&fd| {
            // SAFETY: isatty on our own std fds.
            unsafe { libc::isatty(fd) == 1 }
        });
        let mut pipes: HashMap<u32, (OwnedFd, OwnedFd)> = HashMap::new();
        let mut ghost_files = GhostFiles::default();
        let mut memfds: HashMap<u64, OwnedFd> = HashMap::new();
        // The second end of a unix pair, made with the first, waiting for its turn.
        let mut unix_pending: HashMap<u32, OwnedFd> = HashMap::new();
        let mut fifo_keepers: HashMap<u32, OwnedFd> = HashMap::new();
        // Dumped pts index → the new master and its slave's path.
        let mut ptys: HashMap<u32, (OwnedFd, String)> = HashMap::new();
        let mut ids: Vec<u32> = Vec::new();
        // Files whose content the tasks run from: the exe and mapped files.
        let mut mapped: Vec<u32> = Vec::new();
        for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
            ids.extend(t.fds.iter().map(|f| f.id));
            ids.extend([t.fs.cwd_id, t.fs.root_id, t.mm.exe_file_id]);
            mapped.push(t.mm.exe_file_id);
            for v in &t.mm.vmas {
                if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
                    ids.push(v.shmid as u32);
                    if v.status & VMA_FILE_PRIVATE != 0 {
                        mapped.push(v.shmid as u32);
                    }
                }
            }
        }
        ids.sort_unstable();
        ids.dedup();
        // Files in flight first: the queues that carry them are filled when their socket is
        // made, and a file in flight may be used by no task at all.
        let mut order = img.in_flight.clone();
        order.extend(ids.into_iter().filter(|i| !img.in_flight.contains(i)));
        let used_ids: std::collections::HashSet<u32> = order.iter().copied().collect();
        for id in order {
            let f = &img.files[&id];
            if f.reg.as_ref().is_some_and(|r| tree_proc_path(img, &r.name)) {
                // /proc/<pid>/... of a task of the tree: it exists once the task does, and the
                // task opens it itself (see open_proc_files).
                continue;
            }
            let fd = if let Some(reg) = &f.reg {
                let inherited = opts
                    .inherit_fds
                    .iter()
                    .find(|i| i.key.trim_start_matches('/') == reg.name.trim_start_matches('/'));
                if let Some(i) = inherited {
                    dup_fd(i.fd)?
                } else if let Some(tty) =
                    terminal.filter(|_| opts.shell_job && files::is_tty_path(&reg.name))
                {
                    dup_fd(tty)?
                } else if let Some(ghost) = img.remaps.get(&id) {
                    let path = ghost_files.create(*ghost, &reg.name, img)?;
                    let mut r = reg.clone();
                    r.name = path;
                    open_reg(id, &r)?
                } else {
                    open_reg(id, reg)?
                }
            } else if let Some(t) = &f.tty {
                let info = &img.tty_infos[&t.tty_info_id];
                let index = info.pty.as_ref().map(|p| p.index).unwrap_or(0);
                if let std::collections::hash_map::Entry::Vacant(slot) = ptys.entry(index) {
                    let (master, path) = pty::create(info).map_err(pty_err(id))?;
                    refill_pty(img, index, &path).map_err(pty_err(id))?;
                    slot.insert((master, path));
                }
                let (master, path) = &ptys[&index];
                let is_master = img
                    .files
                    .get(&t.regf_id.unwrap_or(0))
                    .and_then(|r| r.reg.as_ref())
                    .is_some_and(|r| r.name == "/dev/ptmx");
                let fd = if is_master {
                    dup_fd(master.as_raw_fd())?
                } else {
                    pty::open_slave(path, t.flags).map_err(pty_err(id))?
                };
                set_status_flags(&fd, t.flags)?;
                fd
            } else if let Some(fe) = &f.fifo {
                let reg = fe
                    .regf_id
                    .and_then(|r| img.files.get(&r))
                    .and_then(|r| r.reg.as_ref())
                    .ok_or_else(|| RestoreError::Task {
                        pid: 0,
                        what: format!("FIFO file id {id} has no path"),
                    })?;
                if let std::collections::hash_map::Entry::Vacant(slot) =
                    fifo_keepers.entry(fe.pipe_id)
                {
                    // Opened read-write, a FIFO opens at once whatever the other end does; it
                    // is refilled through this keeper, and every end is reopened from it.
                    let mut keep = reg.clone();
                    keep.flags = (libc::O_RDWR | libc::O_NONBLOCK) as u32;
                    keep.pos = 0;
                    if let Some(orig) = reg.name.strip_suffix(" (deleted)") {
                        // Unlinked while open: a FIFO made for the moment (the keeper holds
                        // the pipe; the name goes with the other ghosts).
                        keep.name = ghost_files.fifo(id, orig, reg.mode.unwrap_or(0o600))?;
                    }
                    let k = open_reg(id, &keep)?;
                    if let Some((size, data)) = img.fifo_data.get(&fe.pipe_id) {
                        if *size > 0 {
                            // SAFETY: F_SETPIPE_SZ with an integer.
                            unsafe {
                                libc::fcntl(k.as_raw_fd(), libc::F_SETPIPE_SZ, *size as libc::c_int)
                            };
                        }
                        use std::io::Write;
                        File::from(k.try_clone().map_err(setup_err("dup"))?)
                            .write_all(data)
                            .map_err(setup_err(format!("refilling FIFO {}", reg.name)))?;
                    }
                    slot.insert(k);
                }
                let end = reopen(
                    &fifo_keepers[&fe.pipe_id],
                    reg.flags | libc::O_NONBLOCK as u32,
                    id,
                )?;
                set_status_flags(&end, reg.flags)?;
                end
            } else if let Some(e) = &f.usk {
                if let Some(fd) = unix_pending.remove(&id) {
                    fd
                } else if e.uflags & unix::USK_INHERIT != 0 {
                    // Connected outside the tree: the caller hands over the replacement.
                    let key = format!("socket:[{}]", e.ino);
                    match opts.inherit_fds.iter().find(|i| i.key == key) {
                        Some(i) => dup_fd(i.fd)?,
                        None => {
                            return Err(unix_err(id)(unix::UnixError::NeedsInheritFd {
                                ino: e.ino,
                            }))
                        }
                    }
                } else {
                    let peer = (e.peer != 0)
                        .then(|| {
                            img.files
                                .values()
                                .find(|o| o.usk.as_ref().is_some_and(|u| u.ino == e.peer))
                        })
                        .flatten();
                    let queue =
                        |fid: u32| img.sk_queues.get(&fid).map(Vec::as_slice).unwrap_or(&[]);
                    let fd_of = |fid: u32| pool.by_file.get(&fid).copied();
                    match peer {
                        // The peer is a socket of the tree: both ends are made now, as one pair.
                        Some(pf) if used_ids.contains(&pf.id) => {
                            let pe = pf.usk.as_ref().expect("matched a unix entry");
                            let (a, b) = unix::restore_pair(e, pe, queue(id), queue(pf.id), &fd_of)
                                .map_err(unix_err(id))?;
                            unix_pending.insert(pf.id, b);
                            a
                        }
                        // A named peer outside the tree (kept as an entry of its own).
                        Some(pf) => {
                            let name = pf.usk.as_ref().map(|u| u.name.clone()).unwrap_or_default();
                            unix::restore_single(e, Some(&name), queue(id), &fd_of)
                                .map_err(unix_err(id))?
                        }
                        None => unix::restore_single(e, None, queue(id), &fd_of)
                            .map_err(unix_err(id))?,
                    }
                }
            } else if let Some(e) = &f.isk {
                let stream = img.tcp_streams.get(&e.ino);
                if stream.is_some() && !opts.tcp_established && !opts.tcp_close {
                    return Err(RestoreError::Task {
                        pid: img.tasks[0].pid(),
                        what: "the images hold established TCP connections: restore with --tcp-established (or --tcp-close)".into(),
                    });
                }
                if stream.is_some() && opts.tcp_close {
                    // --tcp-close: the connection is gone; the task gets a closed socket.
                    let closed = pb::InetSkEntry {
                        state: 7,
                        src_port: 0,
                        dst_port: 0,
                        src_addr: Vec::new(),
                        dst_addr: Vec::new(),
                        ..e.clone()
                    };
                    inet::restore(&closed, None).map_err(inet_err(id))?
                } else {
                    let s = stream.map(|(s, i, o)| (s, i.as_slice(), o.as_slice()));
                    inet::restore(e, s).map_err(inet_err(id))?
                }
            } else if let Some(e) = &f.efd {
                anonfd::create_eventfd(e).map_err(anon_err(id))?
            } else if let Some(e) = &f.tfd {
                anonfd::create_timerfd(e).map_err(anon_err(id))?
            } else if let Some(e) = &f.sgfd {
                anonfd::create_signalfd(e).map_err(anon_err(id))?
            } else if let Some(e) = &f.ify {
                anonfd::create_inotify(e).map_err(anon_err(id))?
            } else if let Some(e) = &f.epfd {
                anonfd::create_epoll(e).map_err(anon_err(id))?
            } else if let Some(m) = &f.memfd {
                let inode = m.inode_id as u64;
                let fd = match memfds.get(&inode) {
                    Some(first) => reopen(first, m.flags, id)?,
                    None => {
                        let (entry, pagemap, pages) = &img.memfds[&inode];
                        let content =
                            read_shmem_content(entry.size, pagemap, &img.dir.join(pages))?;
                        let fd = anonfd::create_memfd(entry, &content).map_err(anon_err(id))?;
                        let keep = dup_fd(fd.as_raw_fd())?;
                        memfds.insert(inode, keep);
                        if m.flags & libc::O_ACCMODE as u32 == libc::O_RDWR as u32 {
                            fd
                        } else {
                            reopen(memfds.get(&inode).expect("just inserted"), m.flags, id)?
                        }
                    }
                };
                if m.pos != 0 {
                    // SAFETY: lseek on our fd.
                    unsafe { libc::lseek(fd.as_raw_fd(), m.pos as libc::off_t, libc::SEEK_SET) };
                }
                fd
            } else if let Some(pe) = &f.pipe {
                let key = format!("pipe:[{}]", pe.pipe_id);
                if let Some(i) = opts.inherit_fds.iter().find(|i| i.key == key) {
                    dup_fd(i.fd)?
                } else {
                    let (r, w) = match pipes.get(&pe.pipe_id) {
                        Some((r, w)) => (dup_fd(r.as_raw_fd())?, dup_fd(w.as_raw_fd())?),
                        None => {
                            let (r, w) = make_pipe(pe.pipe_id, img.pipes_data.get(&pe.pipe_id))?;
                            let copy = (dup_fd(r.as_raw_fd())?, dup_fd(w.as_raw_fd())?);
                            pipes.insert(pe.pipe_id, (r, w));
                            copy
                        }
                    };
                    let acc = pe.flags & libc::O_ACCMODE as u32;
                    let end = if acc == libc::O_WRONLY as u32 { w } else { r };
                    set_status_flags(&end, pe.flags)?;
                    end
                }
            } else {
                return Err(RestoreError::Task {
                    pid: img.tasks[0].pid(),
                    what: format!("file id {id} has a kind this version cannot restore"),
                });
            };
            if mapped.contains(&id) && !img.remaps.contains_key(&id) {
                check_unchanged(id, f, &fd)?;
            }
            let n = pool.place(fd)?;
            pool.by_file.insert(id, n);
        }
        for (shmid, (entries, pages_file)) in &img.shmem {
            let size = img
                .tasks
                .iter()
                .flat_map(|t| t.mm.vmas.iter())
                .filter(|v| v.status & VMA_ANON_SHARED != 0 && v.shmid == *shmid)
                .map(|v| v.pgoff + (v.end - v.start))
                .max()
                .unwrap_or(0);
            let fd = make_shmem(size, entries, &img.dir.join(pages_file))?;
            let n = pool.place(fd)?;
            pool.by_shmid.insert(*shmid, n);
        }
        Ok(pool)
    }
}

/// Whether `path` is a file of /proc/<pid>/ for a process or thread of the tree.
fn tree_proc_path(img: &DumpImage, path: &str) -> bool {
    let Some(n) = path
        .strip_prefix("/proc/")
        .and_then(|r| r.split('/').next())
        .and_then(|n| n.parse::<u32>().ok())
    else {
        return false;
    };
    img.tasks
        .iter()
        .any(|t| t.pid() == n || t.threads.iter().any(|th| th.tid == n))
}

/// Opens, inside the task, its fds on /proc/<pid>/ files of the tree (the pool could not: the
/// pids did not exist yet), at their numbers, flags and offsets.
fn open_proc_files(r: &Remote, t: &TaskImage, img: &DumpImage) -> Result<(), RestoreError> {
    for f in &t.fds {
        let Some(reg) = img.files.get(&f.id).and_then(|e| e.reg.as_ref()) else {
            continue;
        };
        if !tree_proc_path(img, &reg.name) {
            continue;
        }
        let mut path = reg.name.clone().into_bytes();
        path.push(0);
        let at = r.put(0, &path)?;
        let keep = (libc::O_ACCMODE | libc::O_NONBLOCK | libc::O_APPEND) as u32;
        let flags = (reg.flags & keep) as u64 | libc::O_CLOEXEC as u64;
        let got = r.call(libc::SYS_openat, &[libc::AT_FDCWD as u64, at, flags, 0])? as u64;
        let cloexec = if f.flags & 1 != 0 { libc::O_CLOEXEC } else { 0 } as u64;
        if got != f.fd as u64 {
            r.call(libc::SYS_dup3, &[got, f.fd as u64, cloexec])?;
            r.call(libc::SYS_close, &[got])?;
        } else if cloexec == 0 {
            r.call(libc::SYS_fcntl, &[got, libc::F_SETFD as u64, 0])?;
        }
        if reg.pos != 0 {
            r.call(
                libc::SYS_lseek,
                &[f.fd as u64, reg.pos, libc::SEEK_SET as u64],
            )?;
        }
    }
    Ok(())
}

/// A program or library replaced since the dump (an upgrade) would run the old memory image
/// against new code pages: refuse, as CRIU does, when the size differs.
fn check_unchanged(id: u32, f: &pb::FileEntry, fd: &OwnedFd) -> Result<(), RestoreError> {
    let Some(reg) = &f.reg else { return Ok(()) };
    let Some(want) = reg.size else { return Ok(()) };
    let md = std::fs::File::from(fd.try_clone().map_err(setup_err("dup"))?)
        .metadata()
        .map_err(setup_err(format!("stat {}", reg.name)))?;
    if md.len() != want {
        return Err(RestoreError::Changed {
            id,
            path: reg.name.clone(),
            was: want,
            now: md.len(),
        });
    }
    Ok(())
}

/// Puts back the bytes that were buffered in pty `index`, through our own fd on its new slave.
fn refill_pty(img: &DumpImage, index: u32, slave_path: &str) -> Result<(), pty::PtyError> {
    let mut q = pty::Queues::default();
    for info in img
        .tty_infos
        .values()
        .filter(|i| i.pty.as_ref().is_some_and(|p| p.index == index))
    {
        let Some(data) = img.tty_data.get(&info.id) else {
            continue;
        };
        // The master is /dev/ptmx (major 5); a slave is /dev/pts/N (majors 136 and up).
        if libc::major(info.rdev as libc::dev_t) == 5 {
            q.master = data.clone();
        } else {
            q.slave = data.clone();
        }
    }
    if q.master.is_empty() && q.slave.is_empty() {
        return Ok(());
    }
    let slave = pty::open_slave(slave_path, (libc::O_RDWR | libc::O_NONBLOCK) as u32)?;
    pty::put_queues(slave.as_raw_fd(), &q)
}

fn pty_err(id: u32) -> impl FnOnce(pty::PtyError) -> RestoreError {
    move |e| RestoreError::Task {
        pid: 0,
        what: format!("pty (file id {id}): {e}"),
    }
}

fn unix_err(id: u32) -> impl FnOnce(unix::UnixError) -> RestoreError {
    move |e| RestoreError::Task {
        pid: 0,
        what: format!("unix socket (file id {id}): {e}"),
    }
}

fn inet_err(id: u32) -> impl FnOnce(inet::InetError) -> RestoreError {
    move |e| RestoreError::Socket { id, source: e }
}

fn anon_err(id: u32) -> impl FnOnce(anonfd::AnonFdError) -> RestoreError {
    move |e| RestoreError::Task {
        pid: 0,
        what: format!("file id {id}: {e}"),
    }
}

/// Another open file description of the same inode, with its own access mode and flags.
fn reopen(first: &OwnedFd, flags: u32, id: u32) -> Result<OwnedFd, RestoreError> {
    let path = format!("/proc/self/fd/{}", first.as_raw_fd());
    let keep = libc::O_ACCMODE | libc::O_APPEND | libc::O_NONBLOCK;
    let c = std::ffi::CString::new(path.clone()).expect("no NUL");
    // SAFETY: open(2) of a NUL-terminated path; the result is owned below.
    let fd = unsafe { libc::open(c.as_ptr(), (flags as libc::c_int & keep) | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(RestoreError::Open {
            id,
            path,
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fresh fd owned only here.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn dup_fd(fd: RawFd) -> Result<OwnedFd, RestoreError> {
    // SAFETY: F_DUPFD_CLOEXEC on an fd number; the result is owned below.
    let n = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) })
        .map_err(setup_err(format!("dup of fd {fd}")))?;
    // SAFETY: fresh fd owned only here.
    Ok(unsafe { OwnedFd::from_raw_fd(n) })
}

fn set_status_flags(fd: &OwnedFd, flags: u32) -> Result<(), RestoreError> {
    let keep =
        (libc::O_NONBLOCK | libc::O_APPEND | libc::O_ASYNC | libc::O_DIRECT | libc::O_NOATIME)
            as u32;
    // SAFETY: F_SETFL with an integer argument.
    cvt(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, (flags & keep) as libc::c_int) })
        .map_err(setup_err("setting file status flags"))?;
    Ok(())
}

fn open_reg(id: u32, reg: &pb::RegFileEntry) -> Result<OwnedFd, RestoreError> {
    let path = std::ffi::CString::new(reg.name.as_bytes()).map_err(|_| RestoreError::Open {
        id,
        path: reg.name.clone(),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    if let Some(name) = reg
        .name
        .strip_prefix(crate::ipc::mqueue::PATH_PREFIX)
        .filter(|n| n.starts_with('/'))
    {
        // A POSIX message queue, opened by its name: the mqueue filesystem need not be mounted.
        let cname = std::ffi::CString::new(name).expect("no NUL: checked above");
        let flags = reg.flags as libc::c_int & (libc::O_ACCMODE | libc::O_NONBLOCK);
        // SAFETY: mq_open(3) without O_CREAT; on Linux the descriptor is a file descriptor.
        let fd = unsafe { libc::mq_open(cname.as_ptr(), flags | libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(RestoreError::Open {
                id,
                path: reg.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fresh fd owned only here.
        return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
    }
    // An O_TMPFILE file comes back as a ghost: opened by name, so without O_TMPFILE (whose
    // bits include O_DIRECTORY).
    let mut flags = reg.flags as libc::c_int;
    if flags & libc::O_TMPFILE == libc::O_TMPFILE {
        flags &= !libc::O_TMPFILE;
    }
    let flags = flags & !(libc::O_CREAT | libc::O_TRUNC | libc::O_EXCL | libc::O_NOCTTY)
        | libc::O_CLOEXEC
        | libc::O_NOCTTY;
    // SAFETY: open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), flags) };
    if fd < 0 {
        return Err(RestoreError::Open {
            id,
            path: reg.name.clone(),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fresh fd owned only here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    if reg.pos != 0 {
        // SAFETY: lseek on our fd.
        let r = unsafe { libc::lseek(fd.as_raw_fd(), reg.pos as libc::off_t, libc::SEEK_SET) };
        if r < 0 {
            return Err(RestoreError::Open {
                id,
                path: reg.name.clone(),
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(fd)
}

fn make_pipe(
    pipe_id: u32,
    data: Option<&(u32, Vec<u8>)>,
) -> Result<(OwnedFd, OwnedFd), RestoreError> {
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fds into `p`.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }).map_err(setup_err("pipe"))?;
    // SAFETY: fresh fds owned only here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    if let Some((size, bytes)) = data {
        if *size > 0 {
            // SAFETY: F_SETPIPE_SZ with an integer.
            unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, *size as libc::c_int) };
        }
        let mut f = File::from(w.try_clone().map_err(setup_err("dup"))?);
        use std::io::Write;
        f.write_all(bytes)
            .map_err(setup_err(format!("refilling pipe {pipe_id}")))?;
    }
    Ok((r, w))
}

/// Files deleted while open, recreated for as long as the restorer opens them, then unlinked.
#[derive(Default)]
struct GhostFiles {
    made: HashMap<u32, String>,
    /// Directories made for ghosts whose directory was deleted too, deepest last.
    dirs: Vec<PathBuf>,
}

impl GhostFiles {
    /// Creates ghost `id` at its old path (or beside it if that name is taken); returns the path.
    fn create(&mut self, id: u32, orig: &str, img: &DumpImage) -> Result<String, RestoreError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if let Some(p) = self.made.get(&id) {
            return Ok(p.clone());
        }
        let (entry, content) = &img.ghosts[&id];
        let err = |path: &str| {
            let path = path.to_string();
            move |source| RestoreError::Open { id, path, source }
        };
        let mut path = orig.to_string();
        let mut n = 0;
        let mut f = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => {
                    n += 1;
                    path = format!("{orig}.stasis-ghost-{id}-{n}");
                }
                // Its directory was deleted too: make it for as long as the ghost lives.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && n < 100 => {
                    n += 1;
                    self.make_parents(Path::new(&path)).map_err(err(&path))?;
                }
                Err(e) => return Err(err(&path)(e)),
            }
        };
        use std::io::Write;
        // Registered first, so a failure below still unlinks it.
        self.made.insert(id, path.clone());
        f.write_all(content).map_err(err(&path))?;
        f.set_permissions(std::fs::Permissions::from_mode(entry.mode & 0o7777))
            .map_err(err(&path))?;
        let _ = std::os::unix::fs::fchown(&f, Some(entry.uid), Some(entry.gid));
        Ok(path)
    }
}

impl GhostFiles {
    /// Makes a FIFO for FIFO `id`, unlinked while open, at its old path (or beside it if that
    /// name is taken); returns the path, unlinked again with the ghosts.
    fn fifo(&mut self, id: u32, orig: &str, mode: u32) -> Result<String, RestoreError> {
        let mut path = orig.to_string();
        for n in 1..=100 {
            let c = std::ffi::CString::new(path.as_bytes()).map_err(|_| RestoreError::Open {
                id,
                path: path.clone(),
                source: std::io::Error::from_raw_os_error(libc::EINVAL),
            })?;
            // SAFETY: mkfifo(3) of a NUL-terminated path.
            if unsafe { libc::mkfifo(c.as_ptr(), (mode & 0o7777) as libc::mode_t) } == 0 {
                self.made.insert(id, path.clone());
                return Ok(path);
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    path = format!("{orig}.stasis-ghost-{id}-{n}");
                }
                std::io::ErrorKind::NotFound => {
                    self.make_parents(Path::new(&path))
                        .map_err(|source| RestoreError::Open {
                            id,
                            path: path.clone(),
                            source,
                        })?;
                }
                _ => {
                    return Err(RestoreError::Open {
                        id,
                        path,
                        source: e,
                    })
                }
            }
        }
        Err(RestoreError::Open {
            id,
            path,
            source: std::io::Error::from_raw_os_error(libc::EEXIST),
        })
    }

    /// Makes the missing directories above `path`, remembering them to remove them later.
    fn make_parents(&mut self, path: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            missing.push(d.to_path_buf());
            dir = d.parent();
        }
        for d in missing.into_iter().rev() {
            std::fs::create_dir(&d)?;
            self.dirs.push(d);
        }
        Ok(())
    }
}

impl Drop for GhostFiles {
    fn drop(&mut self) {
        for p in self.made.values() {
            let _ = std::fs::remove_file(p);
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

fn lock_file_id(img: &DumpImage, l: &pb::FileLockEntry) -> Option<u32> {
    let t = img.tasks.iter().find(|t| t.pid() as i32 == l.pid)?;
    t.fds.iter().find(|f| f.fd as i32 == l.fd).map(|f| f.id)
}

fn flock_struct(l: &pb::FileLockEntry) -> libc::flock {
    // SAFETY: struct flock is plain data.
    let mut f: libc::flock = unsafe { std::mem::zeroed() };
    f.l_type = l.r#type as libc::c_short;
    f.l_whence = libc::SEEK_SET as libc::c_short;
    f.l_start = l.start;
    f.l_len = l.len;
    f
}

/// flock and OFD locks belong to an open file description: the restorer takes them on the
/// pool's fd, and they go with it into the task. POSIX locks belong to the process: they are
/// taken by the task itself (see `restore_posix_locks`).
fn take_file_locks(img: &DumpImage, pool: &Pool) -> Result<(), RestoreError> {
    for l in &img.locks {
        if l.flag == files::FL_POSIX {
            continue;
        }
        let fd = lock_file_id(img, l)
            .and_then(|id| pool.by_file.get(&id))
            .copied()
            .ok_or_else(|| RestoreError::Task {
                pid: l.pid as u32,
                what: format!("lock on fd {} of a file not restored", l.fd),
            })?;
        let r = if l.flag == files::FL_FLOCK {
            let op = if l.r#type == libc::F_WRLCK as u32 {
                libc::LOCK_EX
            } else {
                libc::LOCK_SH
            };
            // SAFETY: flock(2) on our fd.
            unsafe { libc::flock(fd, op | libc::LOCK_NB) }
        } else {
            let f = flock_struct(l);
            // SAFETY: F_OFD_SETLK reads our struct flock.
            unsafe { libc::fcntl(fd, libc::F_OFD_SETLK, &f) }
        };
        if r < 0 {
            return Err(setup_err(format!(
                "taking back the lock of pid {} fd {}",
                l.pid, l.fd
            ))(std::io::Error::last_os_error()));
        }
    }
    Ok(())
}

fn restore_posix_locks(r: &Remote, t: &TaskImage, img: &DumpImage) -> Result<(), RestoreError> {
    for l in img
        .locks
        .iter()
        .filter(|l| l.flag == files::FL_POSIX && l.pid as u32 == t.pid())
    {
        let f = flock_struct(l);
        // SAFETY: struct flock is plain data; viewed as bytes to copy into the task.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (&f as *const libc::flock).cast::<u8>(),
                std::mem::size_of::<libc::flock>(),
            )
        };
        let a = r.put(0, bytes)?;
        r.call(libc::SYS_fcntl, &[l.fd as u64, libc::F_SETLK as u64, a])?;
    }
    Ok(())
}

fn ipcns_err(e: crate::ns::ipc::IpcNsError) -> RestoreError {
    RestoreError::Task {
        pid: 0,
        what: e.to_string(),
    }
}

/// Makes sure every dumped System V segment exists with its id, key, size and mode, and holds
/// the dumped content. On this host the segment usually outlived the killed tree and is reused;
/// elsewhere it is created with the same id (kernel.shm_next_id). Returns the ids to mark for
/// removal again once attached.
fn prepare_sysv_shm(img: &DumpImage) -> Result<Vec<i32>, RestoreError> {
    let mut to_remove = Vec::new();
    for (e, pagemap, pages) in &img.sysv_shm {
        let d = &e.desc;
        let current = proc::parse::parse_sysvipc_shm(
            &std::fs::read_to_string("/proc/sysvipc/shm").unwrap_or_default(),
        );
        let id = match current.iter().find(|s| s.shmid == d.id) {
            Some(s) if s.key as u32 == d.key && s.size == e.size => d.id as i32,
            Some(s) => {
                return Err(RestoreError::Task {
                    pid: 0,
                    what: format!(
                        "System V shared memory id {} is in use by another segment (key {:#x})",
                        d.id, s.key
                    ),
                })
            }
            None => {
                std::fs::write("/proc/sys/kernel/shm_next_id", d.id.to_string())
                    .map_err(setup_err("setting kernel.shm_next_id"))?;
                // SAFETY: shmget(2) with integers.
                let got = unsafe {
                    libc::shmget(
                        d.key as libc::key_t,
                        e.size as usize,
                        libc::IPC_CREAT | libc::IPC_EXCL | (d.mode & 0o777) as i32,
                    )
                };
                let _ = std::fs::write("/proc/sys/kernel/shm_next_id", "-1");
                if got < 0 || got as u32 != d.id {
                    return Err(setup_err(format!(
                        "creating System V shared memory {} (key {:#x})",
                        d.id, d.key
                    ))(std::io::Error::last_os_error()));
                }
                got
            }
        };
        let content = read_shmem_content(e.size, pagemap, &img.dir.join(pages))?;
        // SAFETY: shmat of a segment we just checked; detached right after the copy.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        if addr as isize == -1 {
            return Err(setup_err(format!("attaching System V shared memory {id}"))(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: the segment is at least `e.size` bytes long and attached read-write at addr.
        unsafe {
            std::ptr::copy_nonoverlapping(
                content.as_ptr(),
                addr.cast::<u8>(),
                content.len().min(e.size as usize),
            );
            libc::shmdt(addr);
        }
        const SHM_DEST: u32 = 0o1000;
        if d.mode & SHM_DEST != 0 {
            to_remove.push(id);
        }
    }
    Ok(to_remove)
}

fn stub_plans(img: &DumpImage, pool: &Pool) -> Result<Vec<stub::StubPlan>, RestoreError> {
    let mut plans = Vec::new();
    for t in &img.tasks {
        let name = |id: u32| {
            img.files
                .get(&id)
                .and_then(|f| f.reg.as_ref())
                .map(|r| r.name.clone())
                .unwrap_or_else(|| "/".to_string())
        };
        let cstr = |s: String| {
            std::ffi::CString::new(s).map_err(|_| RestoreError::Task {
                pid: t.pid(),
                what: "path with a NUL byte".into(),
            })
        };
        let root = name(t.fs.root_id);
        let comm = t.tc().comm.as_bytes();
        let mut c = [0u8; 16];
        let n = comm.len().min(15);
        c[..n].copy_from_slice(&comm[..n]);
        plans.push(stub::StubPlan {
            pid: t.pid(),
            pgid: t.pstree.pgid,
            pgid_in_tree: img.tasks.iter().any(|o| o.pid() == t.pstree.pgid),
            sid: t.pstree.sid,
            children: children_in_fork_order(img, t),
            fds: t
                .fds
                .iter()
                .filter_map(|f| Some((f.fd as RawFd, *pool.by_file.get(&f.id)?, f.flags & 1 != 0)))
                .collect(),
            ctty: controlling_slave(t, img).map(|(fd, _)| {
                let id = t
                    .fds
                    .iter()
                    .find(|f| f.fd as RawFd == fd)
                    .expect("from t.fds")
                    .id;
                pool.by_file[&id]
            }),
            cwd: cstr(name(t.fs.cwd_id))?,
            root: if root == "/" || root.is_empty() {
                None
            } else {
                Some(cstr(root)?)
            },
            umask: t.fs.umask.unwrap_or(0o022),
            comm: c,
            zombie_exit: t.zombie_exit,
        });
    }
    Ok(plans)
}

/// Adds every epoll target from inside the task, where the target fd numbers are its own. An
/// epoll shared by several tasks is filled once, by the first.
fn restore_epoll_targets(
    r: &Remote,
    t: &TaskImage,
    img: &DumpImage,
    done: &mut std::collections::HashSet<u32>,
) -> Result<(), RestoreError> {
    for fd in &t.fds {
        let Some(ep) = img.files.get(&fd.id).and_then(|f| f.epfd.as_ref()) else {
            continue;
        };
        if !done.insert(fd.id) {
            continue;
        }
        for tfd in &ep.tfd {
            // struct epoll_event is packed on x86_64: u32 events, then u64 data.
            let mut ev = [0u8; 12];
            ev[..4].copy_from_slice(&tfd.events.to_ne_bytes());
            ev[4..].copy_from_slice(&tfd.data.to_ne_bytes());
            let a = r.put(0, &ev)?;
            const EPOLL_CTL_ADD: u64 = 1;
            r.call(
                libc::SYS_epoll_ctl,
                &[fd.fd as u64, EPOLL_CTL_ADD, tfd.tfd as u64, a],
            )?;
        }
    }
    Ok(())
}

/// For a session leader whose controlling terminal was a pty slave of the tree: its fd of the
/// slave, and the foreground group. The leader must hold the slave open.
fn controlling_slave(t: &TaskImage, img: &DumpImage) -> Option<(RawFd, u32)> {
    if t.pstree.sid != t.pid() || t.zombie_exit.is_some() {
        return None;
    }
    t.fds.iter().find_map(|fd| {
        let tty = img.files.get(&fd.id)?.tty.as_ref()?;
        let info = img.tty_infos.get(&tty.tty_info_id)?;
        (info.sid == t.pid()).then_some((fd.fd as RawFd, info.pgrp))
    })
}

/// The stub made the slave the session's controlling terminal before forking the session
/// (a controlling terminal is inherited at fork, and only a leader can acquire one); now that
/// every group exists, the leader puts the dumped foreground group back.
fn restore_controlling_tty(r: &Remote, t: &TaskImage, img: &DumpImage) -> Result<(), RestoreError> {
    let Some((fd, pgrp)) = controlling_slave(t, img) else {
        return Ok(());
    };
    // The group must be one of the session's. After TIOCSCTTY the leader's group is in the
    // foreground, so the leader may hand it over without SIGTTOU.
    if pgrp != 0
        && img
            .tasks
            .iter()
            .any(|o| o.pstree.pgid == pgrp && o.pstree.sid == t.pid())
    {
        let a = r.put(0, &(pgrp as i32).to_ne_bytes())?;
        r.call(libc::SYS_ioctl, &[fd as u64, libc::TIOCSPGRP, a])?;
    }
    Ok(())
}
