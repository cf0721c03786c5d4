//! Restore: fork the tree with the dumped PIDs, then rebuild every task from outside by
//! syscalls injected through ptrace (no restorer blob runs inside the task).
//!
//! A failed restore kills every task it created and never writes to the images dir (only
//! `stats-restore` to the work dir, after success).

pub mod load;
mod pool;
mod stub;

use pool::Pool;

use crate::sys::cvt;
use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::images::PE_PRESENT;
use crate::images::{magic, names, pb, vma_status::*, ImageKind, ImageWriter};
use crate::mm::pages::PageSource;
use crate::net::{inet, unix};
use crate::proc;
use crate::sys::mem::{self, PAGE_SIZE};
use crate::sys::ptrace::{self, Injector, PtraceError};
use crate::task::arch;
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
    #[error("task {pid}: the images hold established TCP connections: restore with --tcp-established (or --tcp-close)")]
    TcpNeedsFlag { pid: u32 },
    #[error("file id {id} has a kind this version cannot restore")]
    UnknownFileKind { id: u32 },
    #[error("FIFO file id {id} has no path")]
    FifoWithoutPath { id: u32 },
    #[error("task {pid}: lock on fd {fd} of a file not restored")]
    LockWithoutFile { pid: u32, fd: i32 },
}

fn ptr_err(pid: u32) -> impl FnOnce(PtraceError) -> RestoreError {
    move |source| RestoreError::Ptrace { pid, source }
}

fn setup_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
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
    crate::files::locks::take_file_locks(&img, &pool.by_file)?;
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
    let mut kind_slots = crate::files::kind::Slots::default();
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
        let mut tcx = crate::files::kind::TaskCx {
            img: &img,
            slots: &mut kind_slots,
        };
        for kind in crate::files::kind::KINDS {
            kind.in_task(&r, t, &mut tcx)?;
        }
        crate::files::locks::restore_posix_locks(&r, t, &img)?;
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

/// The first `size` bytes of a shmem object from its pagemap (offsets as addresses).
pub(crate) fn read_shmem_content(
    size: u64,
    entries: &[pb::PagemapEntry],
    pages: &Path,
) -> Result<Vec<u8>, RestoreError> {
    let mut content = vec![0u8; size.div_ceil(PAGE_SIZE) as usize * PAGE_SIZE as usize];
    let f = File::open(pages).map_err(setup_err(format!("open {}", pages.display())))?;
    let mut off = 0u64;
    for e in entries {
        let len = load::nr_pages(e) * PAGE_SIZE;
        let end = e.vaddr + len;
        if end > content.len() as u64 {
            return Err(RestoreError::Task {
                pid: 0,
                what: format!("{}: pages beyond the object", pages.display()),
            });
        }
        f.read_exact_at(&mut content[e.vaddr as usize..end as usize], off)
            .map_err(setup_err(format!("read {}", pages.display())))?;
        off += len;
    }
    content.truncate(size as usize);
    Ok(content)
}

/// Shared anonymous memory: a shmem object made by mmap(MAP_SHARED|MAP_ANONYMOUS), filled, and
/// kept as an fd from /proc/self/map_files so the tasks map the same kind of object.
fn make_shmem(
    size: u64,
    entries: &[pb::PagemapEntry],
    pages: &Path,
) -> Result<OwnedFd, RestoreError> {
    // SAFETY: a fresh shared anonymous mapping of `size` bytes, unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(setup_err("shared memory")(std::io::Error::last_os_error()));
    }
    let result = (|| {
        let f = File::open(pages).map_err(setup_err(format!("open {}", pages.display())))?;
        let mut off = 0u64;
        for e in entries {
            let len = load::nr_pages(e) * PAGE_SIZE;
            if e.vaddr + len > size {
                return Err(RestoreError::Task {
                    pid: 0,
                    what: format!("{}: pages beyond the object", pages.display()),
                });
            }
            // SAFETY: the destination lies inside our mapping of `size` bytes (checked above).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    addr.cast::<u8>().add(e.vaddr as usize),
                    len as usize,
                )
            };
            f.read_exact_at(dst, off)
                .map_err(setup_err(format!("read {}", pages.display())))?;
            off += len;
        }
        let path = format!(
            "/proc/self/map_files/{:x}-{:x}",
            addr as u64,
            addr as u64 + size
        );
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(setup_err(path))?;
        Ok(OwnedFd::from(file))
    })();
    // SAFETY: unmapping the mapping made above; the fd keeps the object alive.
    unsafe { libc::munmap(addr, size as usize) };
    result
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

/// A free range for the trampoline: outside every dumped mapping of every task.
fn pick_trampoline(img: &DumpImage) -> Result<u64, RestoreError> {
    let need = 64 << 20; // room for the trampoline and a vdso parking place
    let mut cand: u64 = 0x1_0000_0000;
    while cand < 0x7000_0000_0000 {
        let clash = img
            .tasks
            .iter()
            .flat_map(|t| t.mm.vmas.iter())
            .any(|v| v.start < cand + need && cand < v.end);
        if !clash {
            return Ok(cand);
        }
        cand += 0x1_0000_0000;
    }
    Err(RestoreError::Task {
        pid: img.tasks[0].pid(),
        what: "no free address range for the trampoline".into(),
    })
}

/// The children of `t`, group leaders first: a sibling that joins a group led by another
/// (a shell pipeline: `a | b`, b in a's group) needs the leader to exist.
fn children_in_fork_order(img: &DumpImage, t: &TaskImage) -> Vec<usize> {
    let mut kids: Vec<usize> = img
        .tasks
        .iter()
        .enumerate()
        .filter(|(_, c)| c.pstree.ppid == t.pid() && c.pid() != img.tasks[0].pid())
        .map(|(i, _)| i)
        .collect();
    let leads = |i: &usize| {
        img.tasks
            .iter()
            .any(|o| o.pstree.pgid == img.tasks[*i].pid())
    };
    kids.sort_by_key(|i| !leads(i));
    kids
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
            ctty: crate::files::tty::controlling_slave(t, img).map(|(fd, _)| {
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

/// Injection into one restoring thread, with the second trampoline page as scratch memory.
pub(crate) struct Remote {
    pid: u32,
    inj: Injector,
    scratch: u64,
}

impl Remote {
    fn new(pid: u32, trampoline: u64, quiet: bool) -> Result<Self, RestoreError> {
        Self::new_for_thread(pid, pid, trampoline, quiet)
    }
    fn new_for_thread(
        pid: u32,
        tid: u32,
        trampoline: u64,
        quiet: bool,
    ) -> Result<Self, RestoreError> {
        let inj = Injector::new(tid, trampoline)
            .map_err(ptr_err(pid))?
            .with_quiet(quiet);
        Ok(Remote {
            pid,
            inj,
            scratch: trampoline + PAGE_SIZE,
        })
    }
    pub(crate) fn call(&self, nr: i64, args: &[u64]) -> Result<i64, RestoreError> {
        self.inj.call(nr, args).map_err(ptr_err(self.pid))
    }
    fn raw(&self, nr: i64, args: &[u64]) -> Result<i64, RestoreError> {
        self.inj.raw(nr, args).map_err(ptr_err(self.pid))
    }
    /// Writes `data` at scratch + `off`, returns its address in the task.
    pub(crate) fn put(&self, off: u64, data: &[u8]) -> Result<u64, RestoreError> {
        mem::write(self.pid, self.scratch + off, data)?;
        Ok(self.scratch + off)
    }
    fn put_words(&self, off: u64, words: &[u64]) -> Result<u64, RestoreError> {
        let b: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        self.put(off, &b)
    }
}

fn is_special(v: &pb::VmaEntry) -> bool {
    v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL) != 0
}

/// Rebuilds the address space; returns the address of a syscall instruction in the new vdso.
fn restore_mm(
    r: &Remote,
    t: &TaskImage,
    img: &DumpImage,
    fd_of_file: &HashMap<u32, RawFd>,
    fd_of_shmem: &HashMap<u64, RawFd>,
    pool_base: RawFd,
    pages_restored: &mut u64,
) -> Result<u64, RestoreError> {
    let pid = t.pid();
    let task_err = |what: String| RestoreError::Task { pid, what };
    let file_fd = |id: u32| {
        fd_of_file
            .get(&id)
            .copied()
            .ok_or_else(|| task_err(format!("file id {id} was not opened")))
    };
    // 1. The stub's rseq area is about to be unmapped: unregister it first.
    let rseq = ptrace::get_rseq(pid).map_err(ptr_err(pid))?;
    if rseq.rseq_abi_pointer != 0 {
        r.call(
            libc::SYS_rseq,
            &[
                rseq.rseq_abi_pointer,
                rseq.rseq_abi_size as u64,
                1,
                rseq.signature as u64,
            ],
        )?;
    }
    // 2. Unmap the stub, except the trampoline and the vdso group.
    let cur = proc::maps(pid).map_err(|e| task_err(e.to_string()))?;
    let tramp = r.scratch - PAGE_SIZE;
    let mut specials = Vec::new();
    for m in &cur {
        match m.path.as_str() {
            "[vdso]" | "[vvar]" | "[vvar_vclock]" => specials.push((m.start, m.end)),
            "[vsyscall]" => {}
            _ if m.start == tramp => {}
            _ => {
                r.call(libc::SYS_munmap, &[m.start, m.end - m.start])?;
            }
        }
    }
    // 3. Move vvar/vvar_vclock/vdso to the dumped addresses, together, keeping their spacing.
    let mut dumped: Vec<&pb::VmaEntry> =
        t.mm.vmas
            .iter()
            .filter(|v| v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR) != 0)
            .collect();
    dumped.sort_by_key(|v| v.start);
    specials.sort_unstable();
    if dumped.len() != specials.len()
        || dumped
            .iter()
            .zip(&specials)
            .any(|(d, s)| d.end - d.start != s.1 - s.0)
    {
        return Err(task_err(format!(
            "the vdso/vvar layout of this kernel ({} areas) differs from the dumped one ({} areas)",
            specials.len(),
            dumped.len()
        )));
    }
    if dumped.iter().zip(&specials).any(|(d, s)| d.start != s.0) {
        let overlaps = specials
            .iter()
            .any(|s| dumped.iter().any(|d| d.start < s.1 && s.0 < d.end));
        let mut from: Vec<u64> = specials.iter().map(|s| s.0).collect();
        if overlaps {
            let park = tramp + (16 << 20);
            let base = specials[0].0;
            for (i, s) in specials.iter().enumerate() {
                let to = park + (s.0 - base);
                mremap(r, s.0, s.1 - s.0, to)?;
                from[i] = to;
            }
        }
        for (i, d) in dumped.iter().enumerate() {
            mremap(r, from[i], d.end - d.start, d.start)?;
        }
    }
    let vdso = dumped
        .iter()
        .find(|v| v.status & VMA_AREA_VDSO != 0)
        .ok_or_else(|| task_err("no vdso in the image".into()))?;
    let mut vb = vec![0u8; (vdso.end - vdso.start) as usize];
    mem::read(pid, vdso.start, &mut vb)?;
    let vdso_syscall = ptrace::find_syscall_insn(&vb, vdso.start)
        .ok_or_else(|| task_err("no syscall instruction in the vdso".into()))?;

    // 4. mm fields, auxv and exe link in one PR_SET_MM_MAP (the only way without CAP_SYS_RESOURCE).
    let mm = &t.mm;
    let auxv_addr = r.put_words(1024, &mm.mm_saved_auxv)?;
    let exe_fd = file_fd(mm.exe_file_id)?;
    let mut map = vec![
        mm.mm_start_code,
        mm.mm_end_code,
        mm.mm_start_data,
        mm.mm_end_data,
        mm.mm_start_brk,
        mm.mm_brk,
        mm.mm_start_stack,
        mm.mm_arg_start,
        mm.mm_arg_end,
        mm.mm_env_start,
        mm.mm_env_end,
        auxv_addr,
    ];
    map.push((mm.mm_saved_auxv.len() as u64 * 8) | ((exe_fd as u64) << 32));
    let map_addr = r.put_words(0, &map)?;
    const PR_SET_MM: u64 = 35;
    const PR_SET_MM_MAP: u64 = 14;
    r.call(
        libc::SYS_prctl,
        &[PR_SET_MM, PR_SET_MM_MAP, map_addr, 104, 0],
    )?;

    // 5. Map every area with its own protection: pages are written through /proc/<pid>/mem,
    // which may write read-only private mappings, so no VMA is ever made writable (and so
    // accounted, `ac`) only to be filled. Inaccessible areas with data are the exception.
    let mut fixups = Vec::new();
    for v in mm.vmas.iter().filter(|v| !is_special(v)) {
        let len = v.end - v.start;
        let private = v.flags & libc::MAP_SHARED as u32 == 0;
        let has_pages = t
            .pagemap
            .iter()
            .any(|e| e.vaddr >= v.start && e.vaddr < v.end);
        // Copied-on-write pages in a read-only private area mean it was writable once (a RELRO
        // segment): map it writable and mprotect it back, so it is accounted (`ac`) and stays
        // a VMA of its own, as it was.
        let map_prot = if private && has_pages && v.prot & libc::PROT_WRITE as u32 == 0 {
            v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32
        } else {
            v.prot
        };
        let keep = (libc::MAP_SHARED
            | libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | libc::MAP_GROWSDOWN
            | libc::MAP_NORESERVE
            | libc::MAP_LOCKED) as u32;
        let mut flags = (v.flags & keep) | libc::MAP_FIXED as u32;
        let (fd, off) = if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
            (file_fd(v.shmid as u32)? as u64, v.pgoff)
        } else if v.status & VMA_ANON_SHARED != 0 {
            flags &= !(libc::MAP_ANONYMOUS as u32);
            let fd = *fd_of_shmem
                .get(&v.shmid)
                .ok_or_else(|| task_err(format!("shared memory {} was not prepared", v.shmid)))?;
            (fd as u64, v.pgoff)
        } else {
            (u64::MAX, 0)
        };
        if v.status & VMA_AREA_SYSVIPC != 0 {
            // The task attaches the segment itself, at its address.
            const SHM_EXEC: u64 = 0o100000;
            let mut shmflg = 0u64;
            if v.prot & libc::PROT_WRITE as u32 == 0 {
                shmflg |= libc::SHM_RDONLY as u64;
            }
            if v.prot & libc::PROT_EXEC as u32 != 0 {
                shmflg |= SHM_EXEC;
            }
            let got = r.call(libc::SYS_shmat, &[v.shmid, v.start, shmflg])? as u64;
            if got != v.start {
                return Err(task_err(format!(
                    "shmat at {:#x} landed at {got:#x}",
                    v.start
                )));
            }
            continue;
        }
        let got = r.call(
            libc::SYS_mmap,
            &[v.start, len, map_prot as u64, flags as u64, fd, off],
        )? as u64;
        if got != v.start {
            return Err(task_err(format!(
                "mmap at {:#x} landed at {got:#x}",
                v.start
            )));
        }
        if map_prot != v.prot {
            fixups.push(v);
        }
    }
    // 6. Fill pages from the image, the file read overlapping the copy into the task.
    let mut src = PageSource::open(&img.dir.join(&t.pages_file))?;
    let mem_file = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(setup_err(format!("open /proc/{pid}/mem")))?;
    for e in &t.pagemap {
        if e.flags.unwrap_or(PE_PRESENT) & PE_PRESENT == 0 {
            continue;
        }
        let len = load::nr_pages(e) * PAGE_SIZE;
        src.copy_to(&mem_file, pid, e.vaddr, len)?;
        *pages_restored += len / PAGE_SIZE;
    }
    drop(src);
    // 7. Final protections and madvise state.
    for v in fixups {
        r.call(
            libc::SYS_mprotect,
            &[v.start, v.end - v.start, v.prot as u64],
        )?;
    }
    for v in mm.vmas.iter().filter(|v| !is_special(v)) {
        let madv = v.madv.unwrap_or(0);
        for bit in 0..64u64 {
            if madv & (1 << bit) != 0 {
                r.call(libc::SYS_madvise, &[v.start, v.end - v.start, bit])?;
            }
        }
    }
    // 8. The pool has served: close it in the task.
    r.call(
        libc::SYS_close_range,
        &[pool_base as u64, u32::MAX as u64, 0],
    )?;
    Ok(vdso_syscall)
}

fn mremap(r: &Remote, from: u64, len: u64, to: u64) -> Result<(), RestoreError> {
    const MREMAP_MAYMOVE: u64 = 1;
    const MREMAP_FIXED: u64 = 2;
    r.call(
        libc::SYS_mremap,
        &[from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to],
    )?;
    Ok(())
}

/// Process-wide state: signal handlers, timers, limits, prctl flags.
/// Adds every epoll target from inside the task, where the target fd numbers are its own. An
/// epoll shared by several tasks is filled once, by the first.
fn restore_task_state(r: &Remote, t: &TaskImage) -> Result<(), RestoreError> {
    let tc = t.tc();
    // Signals that reached the stub (SIGCHLD from a zombie child) are not the task's: drop them.
    let all = r.put_words(0, &[u64::MAX])?;
    let zero = r.put_words(8, &[0, 0])?;
    while r.raw(libc::SYS_rt_sigtimedwait, &[all, 0, zero, 8])? > 0 {}
    let mut sigs = (1..=64u64).filter(|&s| s != libc::SIGKILL as u64 && s != libc::SIGSTOP as u64);
    for sa in &tc.sigactions {
        let Some(sig) = sigs.next() else { break };
        let a = r.put_words(0, &[sa.sigaction, sa.flags, sa.restorer, sa.mask])?;
        r.call(libc::SYS_rt_sigaction, &[sig, a, 0, 8])?;
    }
    if let Some(tm) = &tc.timers {
        for (which, it) in [(0u64, &tm.real), (1, &tm.virt), (2, &tm.prof)] {
            if it.isec | it.iusec | it.vsec | it.vusec != 0 {
                let a = r.put_words(0, &[it.isec, it.iusec, it.vsec, it.vusec])?;
                r.call(libc::SYS_setitimer, &[which, a, 0])?;
            }
        }
    }
    const PR_SET_THP_DISABLE: u64 = 41;
    if let Some(mm_thp) = t.mm.thp_disabled {
        if mm_thp {
            r.call(libc::SYS_prctl, &[PR_SET_THP_DISABLE, 1])?;
        }
    }
    if let Some(d) = t.mm.dumpable {
        let _ = r.raw(libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, d as u64]);
    }
    if tc.child_subreaper == Some(true) {
        r.call(libc::SYS_prctl, &[libc::PR_SET_CHILD_SUBREAPER as u64, 1])?;
    }
    r.call(libc::SYS_personality, &[tc.personality as u64])?;
    if let Some(rl) = &tc.rlimits {
        let cur = proc::limits(t.pid()).unwrap_or_default();
        for (res, l) in rl.rlimits.iter().enumerate() {
            if cur.get(res) == Some(&(l.cur, l.max)) {
                continue;
            }
            let a = r.put_words(0, &[l.cur, l.max])?;
            let ret = r.raw(libc::SYS_prlimit64, &[0, res as u64, a, 0])?;
            if ret < 0 {
                log::warn!(
                    "pid {}: cannot set rlimit {res} to {}/{}: errno {}",
                    t.pid(),
                    l.cur,
                    l.max,
                    -ret
                );
            }
        }
    }
    if let Some(adj) = tc.oom_score_adj {
        if let Err(e) = std::fs::write(format!("/proc/{}/oom_score_adj", t.pid()), adj.to_string())
        {
            log::warn!("pid {}: cannot set oom_score_adj {adj}: {e}", t.pid());
        }
    }
    if let Some(ss) = &tc.signals_s {
        for s in &ss.signals {
            let signo = i32::from_ne_bytes(s.siginfo[..4].try_into().unwrap_or([0; 4]));
            let a = r.put(0, &s.siginfo)?;
            r.call(
                libc::SYS_rt_sigqueueinfo,
                &[t.pid() as u64, signo as u64, a],
            )?;
        }
    }
    Ok(())
}

fn restore_posix_timers(r: &Remote, timers: &[pb::PosixTimerEntry]) -> Result<(), RestoreError> {
    const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
    let ret = r.raw(libc::SYS_prctl, &[PR_TIMER_CREATE_RESTORE_IDS, 1])?;
    if ret < 0 {
        return Err(RestoreError::Task {
            pid: r.pid,
            what: "POSIX timers need PR_TIMER_CREATE_RESTORE_IDS (Linux 6.16 or later)".into(),
        });
    }
    for tm in timers {
        // struct sigevent: value, signo, notify, then the thread id for SIGEV_THREAD_ID.
        let mut ev = [0u8; 64];
        ev[0..8].copy_from_slice(&tm.sival_ptr.to_ne_bytes());
        ev[8..12].copy_from_slice(&tm.si_signo.to_ne_bytes());
        ev[12..16].copy_from_slice(&tm.it_sigev_notify.to_ne_bytes());
        ev[16..20].copy_from_slice(&tm.notify_thread_id.unwrap_or(0).to_ne_bytes());
        let ev_addr = r.put(0, &ev)?;
        let id_addr = r.put(64, &tm.it_id.to_ne_bytes())?;
        r.call(
            libc::SYS_timer_create,
            &[tm.clock_id as u64, ev_addr, id_addr],
        )?;
        if tm.isec | tm.insec | tm.vsec | tm.vnsec != 0 {
            let spec = r.put_words(128, &[tm.isec, tm.insec, tm.vsec, tm.vnsec])?;
            r.call(libc::SYS_timer_settime, &[tm.it_id as u64, 0, spec, 0])?;
        }
    }
    r.call(libc::SYS_prctl, &[PR_TIMER_CREATE_RESTORE_IDS, 0])?;
    Ok(())
}

/// Creates thread `tid` in the task by an injected clone3 with set_tid; it starts stopped.
fn clone_thread(leader: &Remote, tid: u32) -> Result<u32, RestoreError> {
    let flags = (libc::CLONE_VM
        | libc::CLONE_FS
        | libc::CLONE_FILES
        | libc::CLONE_SIGHAND
        | libc::CLONE_THREAD
        | libc::CLONE_SYSVSEM) as u64;
    let set_tid = leader.put_words(512, &[tid as u64])?;
    let args = leader.put_words(256, &[flags, 0, 0, 0, 0, 0, 0, 0, set_tid, 1, 0])?;
    // set_tid is an array of pid_t (32-bit): write the tid as one int.
    leader.put(512, &tid.to_ne_bytes())?;
    let got = leader.call(libc::SYS_clone3, &[args, 88])? as u32;
    if got != tid {
        return Err(RestoreError::Task {
            pid: leader.pid,
            what: format!("thread {tid} came back as {got}"),
        });
    }
    match ptrace::wait(tid).map_err(ptr_err(leader.pid))? {
        ptrace::Stop::Stopped { .. } => Ok(tid),
        ptrace::Stop::Exited(status) => Err(RestoreError::Task {
            pid: leader.pid,
            what: format!("new thread {tid} exited ({status:#x})"),
        }),
    }
}

fn caps(words: &[u32]) -> u64 {
    words.first().copied().unwrap_or(0) as u64 | (words.get(1).copied().unwrap_or(0) as u64) << 32
}

/// Per-thread state, credentials last.
fn restore_thread(
    r: &Remote,
    t: &TaskImage,
    th: &load::ThreadImage,
    seccomp: &[pb::SeccompFilter],
) -> Result<(), RestoreError> {
    let ti = th.core.thread_info.as_ref().expect("checked at load");
    let tcore = th.core.thread_core.as_ref().expect("checked at load");
    if tcore.futex_rla_len != 0 {
        r.call(
            libc::SYS_set_robust_list,
            &[tcore.futex_rla, tcore.futex_rla_len as u64],
        )?;
    }
    r.call(libc::SYS_set_tid_address, &[ti.clear_tid_addr])?;
    const SS_DISABLE: u32 = 2;
    const SS_AUTODISARM: u32 = 1 << 31;
    // Always set, disabled included: the stub inherited the restorer's alternate stack (Rust's
    // runtime installs one), which points into memory the task no longer has; an SA_ONSTACK
    // handler would then die with SIGSEGV at delivery.
    let words = match &tcore.sas {
        Some(sas) if sas.ss_flags & SS_DISABLE == 0 && sas.ss_size != 0 => [
            sas.ss_sp,
            (sas.ss_flags & SS_AUTODISARM) as u64,
            sas.ss_size,
        ],
        _ => [0, SS_DISABLE as u64, 0],
    };
    let a = r.put_words(0, &words)?;
    r.call(libc::SYS_sigaltstack, &[a, 0])?;
    if let Some(rs) = &tcore.rseq_entry {
        r.call(
            libc::SYS_rseq,
            &[
                rs.rseq_abi_pointer,
                rs.rseq_abi_size as u64,
                0,
                rs.signature as u64,
            ],
        )?;
    }
    if let Some(comm) = &tcore.comm {
        let mut c = [0u8; 16];
        let n = comm.len().min(15);
        c[..n].copy_from_slice(&comm.as_bytes()[..n]);
        let a = r.put(0, &c)?;
        r.call(libc::SYS_prctl, &[libc::PR_SET_NAME as u64, a])?;
    }
    r.call(
        libc::SYS_prctl,
        &[
            libc::PR_SET_PDEATHSIG as u64,
            tcore.pdeath_sig.unwrap_or(0) as u64,
        ],
    )?;
    // The scheduling policy before the nice value (which only normal policies use).
    let policy = tcore.sched_policy.unwrap_or(0) as libc::c_int;
    if policy != libc::SCHED_OTHER {
        let param = libc::sched_param {
            sched_priority: tcore.sched_prio.unwrap_or(0) as libc::c_int,
        };
        // SAFETY: sched_setscheduler on a thread id with our param struct.
        if unsafe { libc::sched_setscheduler(r.inj.tid as libc::pid_t, policy, &param) } < 0 {
            return Err(RestoreError::Task {
                pid: t.pid(),
                what: format!(
                    "thread {}: scheduling policy {policy} priority {}: {}",
                    r.inj.tid,
                    param.sched_priority,
                    std::io::Error::last_os_error()
                ),
            });
        }
    }
    if let Some(nice) = tcore.sched_nice {
        if nice != 0 {
            // SAFETY: setpriority on a thread id, no pointers.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, r.inj.tid, nice) };
        }
    }
    if let Some(sp) = &tcore.signals_p {
        for s in &sp.signals {
            let signo = i32::from_ne_bytes(s.siginfo[..4].try_into().unwrap_or([0; 4]));
            let a = r.put(0, &s.siginfo)?;
            r.call(
                libc::SYS_rt_tgsigqueueinfo,
                &[t.pid() as u64, r.inj.tid as u64, signo as u64, a],
            )?;
        }
    }
    if let Some(last) = tcore.seccomp_filter {
        restore_seccomp(r, seccomp, last)?;
    }
    if let Some(c) = &tcore.creds {
        restore_creds(r, c)?;
    }
    Ok(())
}

/// A task that ignores SIGTRAP or holds one pending: the SIGTRAP a single step forces would
/// reset the handler and let the pending one in, so its injections are quiet.
fn sigtrap_at_risk(t: &TaskImage) -> bool {
    let ignored = t
        .tc()
        .sigactions
        .get(libc::SIGTRAP as usize - 1)
        .is_some_and(|sa| sa.sigaction == 1);
    ignored || has_pending_sigtrap(t)
}

fn has_pending_sigtrap(t: &TaskImage) -> bool {
    let signo =
        |s: &pb::SiginfoEntry| i32::from_ne_bytes(s.siginfo[..4].try_into().unwrap_or([0; 4]));
    let shared = t.tc().signals_s.iter().flat_map(|q| q.signals.iter());
    let per_thread = t
        .threads
        .iter()
        .filter_map(|th| th.core.thread_core.as_ref()?.signals_p.as_ref())
        .flat_map(|q| q.signals.iter());
    shared.chain(per_thread).any(|s| signo(s) == libc::SIGTRAP)
}

/// Installs the thread's seccomp chain, oldest filter first, through a scratch mapping of its
/// own (a filter can be larger than the trampoline's scratch page).
fn restore_seccomp(
    r: &Remote,
    filters: &[pb::SeccompFilter],
    last: u32,
) -> Result<(), RestoreError> {
    let chain = crate::task::seccomp::chain(filters, last).map_err(|e| RestoreError::Task {
        pid: r.pid,
        what: e.to_string(),
    })?;
    const SECCOMP_SET_MODE_FILTER: u64 = 1;
    for (prog, flags) in chain {
        let len = (16 + prog.len() as u64).div_ceil(PAGE_SIZE) * PAGE_SIZE;
        let at = r.call(
            libc::SYS_mmap,
            &[
                0,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )? as u64;
        // struct sock_fprog { unsigned short len; struct sock_filter *filter; }, then the program.
        let mut buf = ((prog.len() / 8) as u64).to_ne_bytes().to_vec();
        buf.extend_from_slice(&(at + 16).to_ne_bytes());
        buf.extend_from_slice(prog);
        mem::write(r.pid, at, &buf)?;
        let installed = r.call(
            libc::SYS_seccomp,
            &[SECCOMP_SET_MODE_FILTER, flags as u64, at],
        );
        r.call(libc::SYS_munmap, &[at, len])?;
        installed?;
    }
    Ok(())
}

fn restore_creds(r: &Remote, c: &pb::CredsEntry) -> Result<(), RestoreError> {
    let (eff, prm, inh, bnd, amb) = (
        caps(&c.cap_eff),
        caps(&c.cap_prm),
        caps(&c.cap_inh),
        caps(&c.cap_bnd),
        caps(&c.cap_amb),
    );
    let me = proc::thread_status(r.pid, r.inj.tid).map_err(|e| RestoreError::Task {
        pid: r.pid,
        what: e.to_string(),
    })?;
    let same = me.uids == [c.uid, c.euid, c.suid, c.fsuid]
        && me.gids == [c.gid, c.egid, c.sgid, c.fsgid]
        && me.groups == c.groups
        && me.cap_eff == eff
        && me.cap_prm == prm
        && me.cap_inh == inh
        && me.cap_bnd == bnd
        && me.cap_amb == amb
        && c.secbits == 0;
    if !same {
        let g: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
        let ga = if g.is_empty() { 0 } else { r.put(0, &g)? };
        r.call(libc::SYS_setgroups, &[c.groups.len() as u64, ga])?;
        r.call(
            libc::SYS_setresgid,
            &[c.gid as u64, c.egid as u64, c.sgid as u64],
        )?;
        r.call(libc::SYS_setfsgid, &[c.fsgid as u64])?;
        let last_cap: u64 = std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(40);
        for cap in 0..=last_cap {
            if bnd & (1 << cap) == 0 && me.cap_bnd & (1 << cap) != 0 {
                r.call(libc::SYS_prctl, &[libc::PR_CAPBSET_DROP as u64, cap])?;
            }
        }
        const SECBIT_KEEP_CAPS: u64 = 1 << 4;
        r.call(
            libc::SYS_prctl,
            &[
                libc::PR_SET_SECUREBITS as u64,
                c.secbits as u64 | SECBIT_KEEP_CAPS,
            ],
        )?;
        r.call(
            libc::SYS_setresuid,
            &[c.uid as u64, c.euid as u64, c.suid as u64],
        )?;
        r.call(libc::SYS_setfsuid, &[c.fsuid as u64])?;
        // capset(v3): header {version, pid}, then two {effective, permitted, inheritable} words.
        let hdr = r.put(
            0,
            &[0x20080522u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat(),
        )?;
        let data: Vec<u8> = [
            eff as u32,
            prm as u32,
            inh as u32,
            (eff >> 32) as u32,
            (prm >> 32) as u32,
            (inh >> 32) as u32,
        ]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
        let da = r.put(64, &data)?;
        r.call(libc::SYS_capset, &[hdr, da])?;
        let keep = c.secbits as u64 & SECBIT_KEEP_CAPS != 0;
        r.call(
            libc::SYS_prctl,
            &[libc::PR_SET_KEEPCAPS as u64, keep as u64],
        )?;
        for cap in 0..=last_cap {
            if amb & (1 << cap) != 0 {
                r.call(
                    libc::SYS_prctl,
                    &[
                        libc::PR_CAP_AMBIENT as u64,
                        libc::PR_CAP_AMBIENT_RAISE as u64,
                        cap,
                        0,
                        0,
                    ],
                )?;
            }
        }
    }
    if c.no_new_privs == Some(1) {
        r.call(
            libc::SYS_prctl,
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
        )?;
    }
    Ok(())
}

fn set_final_regs(tid: u32, th: &load::ThreadImage) -> Result<(), RestoreError> {
    let ti = th.core.thread_info.as_ref().expect("checked at load");
    let template = ptrace::get_xstate(tid).map_err(ptr_err(tid))?;
    ptrace::set_xstate(tid, &arch::xstate_from_fpregs(&ti.fpregs, &template))
        .map_err(ptr_err(tid))?;
    let base = ptrace::get_regs(tid).map_err(ptr_err(tid))?;
    let mut regs = arch::regs_from_pb(&ti.gpregs, &base);
    arch::rewind_interrupted_syscall(&mut regs);
    ptrace::set_regs(tid, &regs).map_err(ptr_err(tid))?;
    let mask = th
        .core
        .thread_core
        .as_ref()
        .and_then(|c| c.blk_sigset)
        .unwrap_or(0);
    ptrace::set_sigmask(tid, mask).map_err(ptr_err(tid))?;
    Ok(())
}
