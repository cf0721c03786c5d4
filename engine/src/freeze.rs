//! Freezing: seize every task and thread of a tree with ptrace, and put them back as they were
//! (or kill them) when the dump is over.
//!
//! The one rule that has no exception: whatever happens, a dump that does not end with the tree
//! killed on purpose leaves every task running, with its registers, signal mask and memory map
//! as they were, and detached. [`Tree`] enforces it in `Drop`.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::Duration;

use stasis_cgroups::{Freezer, Version};

use crate::dump::{ptr_err, DumpError};
use crate::proc;
use crate::sys::ptrace::{self, Injector, Regs, SafetyNet};

/// A thread we seized, with what we must put back when we let it go.
pub(crate) struct Seized {
    pub(crate) tid: u32,
    pub(crate) regs: Regs,
    pub(crate) sigmask: u64,
    /// Its XSAVE area (NT_X86_XSTATE), read once when seized: for its core image and for the
    /// signal frame of its safety net.
    pub(crate) xstate: Vec<u8>,
    /// Its signal frame in the scratch page: injected syscalls run over it (see
    /// `task::sigframe`); None runs them without (a tracer dying mid-syscall then hurts it).
    pub(crate) net: Option<SafetyNet>,
}

pub(crate) struct Task {
    pub(crate) pid: u32,
    pub(crate) threads: Vec<Seized>,
    pub(crate) stat: proc::Stat,
    /// A page we mapped in the task for injected syscalls' out-parameters.
    pub(crate) scratch: Option<(u64, u64)>,
    /// The leader's signal frame on its own stack, for the syscalls that map and unmap the
    /// scratch page (the frames of the others are in it).
    pub(crate) stack_net: Option<SafetyNet>,
    /// Exited, not reaped by its parent (in the tree): dumped as CRIU does, state and exit code.
    pub(crate) zombie: bool,
    /// Stopped by a signal (job control) when we seized it.
    pub(crate) stopped: Option<i32>,
}

/// The frozen tree. Dropping it without [`Tree::kill`] puts every task back as it was.
pub(crate) struct Tree {
    pub(crate) tasks: Vec<Task>,
    /// Address of a `syscall` instruction per pid (in its vdso).
    pub(crate) syscall_at: HashMap<u32, u64>,
    /// Where rt_sigreturn code lies in a mapped file, by (device, inode, offset, length) of
    /// the mapping: found once per dump (see `task::core`).
    pub(crate) sigreturn_at: HashMap<(u32, u32, u64, u64, u64), Option<u64>>,
    /// Established TCP connections, locked while we dump them: released if the tree runs on,
    /// closed silently (repair mode) once it is killed.
    pub(crate) tcp_locks: Vec<crate::net::inet::TcpLock>,
    /// The nftables table that keeps the peers of dumped connections away (see netns::nftlock).
    pub(crate) nft_lock: Option<String>,
    /// The network namespace that table is in, when the tree owns one (or it is external).
    pub(crate) nft_lock_ns: Option<std::os::fd::OwnedFd>,
    /// The cgroup frozen while the tree was seized (`--freeze-cgroup`), once it froze; frozen
    /// again to let go of the tree, and thawed on every way out.
    cgroup: Option<Freezer>,
    /// The cgroup was frozen before the dump came (`runc pause`, or containerd's checkpoint,
    /// which pauses first and resumes after): let go of, the tree is left frozen, as CRIU
    /// leaves it, for whoever froze it to thaw.
    was_frozen: bool,
    /// Threads seized in the frozen cgroup and not taken into `tasks` yet, by tid.
    early: HashMap<u32, Early>,
    done: bool,
}

/// A thread seized and interrupted while its cgroup was frozen.
#[derive(Clone, Copy)]
enum Early {
    /// Its stop is not in hand yet (a v1-frozen thread stops only once thawed).
    Interrupted { pid: u32 },
    /// In its interrupt stop; `group` is the signal of the group stop it was in, if any.
    Stopped { pid: u32, group: Option<i32> },
}

/// How long the cgroup may take to freeze: CRIU's default `--timeout`.
const FREEZE_TIMEOUT: Duration = Duration::from_secs(10);
/// Freezing again to let go is quick: every task in the cgroup is in a ptrace stop by then.
const REFREEZE_TIMEOUT: Duration = Duration::from_secs(1);

impl Tree {
    /// Pids of the tasks that run (not zombies).
    pub(crate) fn zombie_pids(&self) -> Vec<u32> {
        self.tasks
            .iter()
            .filter(|t| t.zombie)
            .map(|t| t.pid)
            .collect()
    }

    pub(crate) fn live_pids(&self) -> Vec<u32> {
        self.tasks
            .iter()
            .filter(|t| !t.zombie)
            .map(|t| t.pid)
            .collect()
    }

    /// Seizes every thread of the tree rooted at `root`; with a `cgroup`, frozen first (see
    /// [`Tree::seize_frozen_cgroup`]).
    pub(crate) fn seize(root: u32, cgroup: Option<Freezer>) -> Result<Tree, DumpError> {
        if !proc::exists(root) {
            return Err(DumpError::NoProcess { pid: root });
        }
        let mut tree = Tree {
            tasks: Vec::new(),
            syscall_at: HashMap::new(),
            sigreturn_at: HashMap::new(),
            tcp_locks: Vec::new(),
            nft_lock: None,
            nft_lock_ns: None,
            cgroup: None,
            was_frozen: false,
            early: HashMap::new(),
            done: false,
        };
        if let Some(fz) = cgroup {
            tree.seize_frozen_cgroup(root, fz)?;
        }
        let mut queue = std::collections::VecDeque::from([root]);
        // Stop every thread, then re-list threads and children until nothing new shows up:
        // tasks may fork or spawn threads while we look.
        loop {
            while let Some(pid) = queue.pop_front() {
                if tree.tasks.iter().any(|t| t.pid == pid) {
                    continue;
                }
                let stat = proc::stat(pid)?;
                // Threads unlisted (the task went on exiting) count as none: a plain zombie.
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
                    stack_net: None,
                    zombie,
                    stopped: None,
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

    /// `--freeze-cgroup`: the cgroup is frozen, so nothing in it runs, forks or exits while it
    /// is seized, and the stops replace the freeze one thread at a time:
    ///
    /// freeze, then PTRACE_SEIZE and PTRACE_INTERRUPT every thread in it, then thaw. A thread
    /// frozen by v1 takes its interrupt stop only once thawed, so v1 thaws before the stops
    /// are waited for; v2 stops frozen threads, so it thaws once every stop is in hand. Either
    /// way no thread runs an instruction of its own between the freeze and its stop, and the
    /// cgroup is thawed during the dump (an injected syscall does not run in a frozen task).
    ///
    /// Every process in the cgroup must be in the tree: one outside would be frozen and
    /// seized but not dumped, so a restore would come back without it. That is refused,
    /// naming the pids, before any thread is seized. The tree may have tasks outside the
    /// cgroup; they are seized one by one as without it.
    ///
    /// A v1 cgroup that holds a stopped task (SIGSTOP) is not frozen: PTRACE_SEIZE of a task
    /// both stopped and v1-frozen waits for it forever (the seize waits for the task to
    /// trap, which it cannot do frozen). Its tasks are seized one by one instead, as CRIU
    /// falls back to interrupting only.
    fn seize_frozen_cgroup(&mut self, root: u32, fz: Freezer) -> Result<(), DumpError> {
        // Freezing ourselves would stop the dump for good.
        let me = std::process::id();
        if fz.procs()?.contains(&me) {
            let cgroup = fz.path().to_path_buf();
            return Err(DumpError::CgroupHoldsDumper { cgroup, pid: me });
        }
        let v1 = fz.version() == Version::V1;
        if v1 {
            if let Some(tid) = stopped_thread(&fz.tasks()?) {
                return interrupt_only(root, &fz, tid);
            }
        }
        self.was_frozen = fz.state()? == stasis_cgroups::FreezerState::Frozen;
        let took = fz.freeze(FREEZE_TIMEOUT)?;
        // From here on every way out (Drop included) thaws it.
        self.cgroup = Some(fz.clone());
        let cgroup = fz.path();
        log::info!(
            "cgroup {} frozen in {} us",
            cgroup.display(),
            took.as_micros()
        );
        let procs = fz.procs()?;
        let tasks: HashSet<u32> = fz.tasks()?.into_iter().collect();
        // Frozen, the part of the tree in the cgroup cannot change while we look.
        check_members(root, cgroup, &procs)?;
        if v1 {
            // Stopped after the look above: let go before seizing anything.
            let mut sorted: Vec<u32> = tasks.iter().copied().collect();
            sorted.sort_unstable();
            if let Some(tid) = stopped_thread(&sorted) {
                // Kept until thawed, so that a failed thaw is tried again by release.
                self.thaw_cgroup()?;
                self.cgroup = None;
                return interrupt_only(root, &fz, tid);
            }
        }
        for &pid in procs.iter().filter(|p| !is_zombie(**p)) {
            for tid in proc::tids(pid)?.into_iter().filter(|t| tasks.contains(t)) {
                self.seize_early(pid, tid)?;
            }
        }
        if v1 {
            self.thaw_cgroup()?;
        }
        let mut tids: Vec<u32> = self.early.keys().copied().collect();
        tids.sort_unstable();
        for tid in tids {
            if let Some(Early::Interrupted { pid }) = self.early.get(&tid).copied() {
                let group = ptrace::wait_interrupted(pid, tid)
                    .map_err(|source| DumpError::Seize { pid, tid, source })?;
                self.early.insert(tid, Early::Stopped { pid, group });
            }
        }
        if !v1 {
            self.thaw_cgroup()?;
        }
        Ok(())
    }

    /// Seizes and interrupts thread `tid` of `pid` in the frozen cgroup, without waiting.
    fn seize_early(&mut self, pid: u32, tid: u32) -> Result<(), DumpError> {
        let seize_err = |source| DumpError::Seize { pid, tid, source };
        if let Err(e) = ptrace::seize(tid, ptrace::PTRACE_O_TRACESYSGOOD) {
            let tracer = tracer_pid(pid, tid);
            if tracer != 0 {
                return Err(DumpError::AlreadyTraced {
                    pid,
                    tid,
                    tracer,
                    tracer_comm: comm_of(tracer),
                });
            }
            return Err(seize_err(e));
        }
        // Fails only if it is gone (it was just seized). Only an interrupted thread is sure
        // to stop, which is what release waits for.
        ptrace::interrupt(tid).map_err(seize_err)?;
        self.early.insert(tid, Early::Interrupted { pid });
        Ok(())
    }

    fn thaw_cgroup(&self) -> Result<(), DumpError> {
        match &self.cgroup {
            Some(fz) => Ok(fz.thaw()?),
            None => Ok(()),
        }
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
                // Seized already if it was in the frozen cgroup.
                let early = self.early.remove(&tid);
                let seized = match early {
                    Some(_) => Ok(()),
                    None => ptrace::seize(tid, ptrace::PTRACE_O_TRACESYSGOOD),
                };
                match seized {
                    Ok(()) => {}
                    // It exited between listing and seizing: dumped as a zombie. (Its stat
                    // unreadable, it is not known to be one, and the cases below decide.)
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
                        let tracer = tracer_pid(pid, tid);
                        return Err(DumpError::AlreadyTraced {
                            pid,
                            tid,
                            tracer,
                            tracer_comm: comm_of(tracer),
                        });
                    }
                    Err(e) => return Err(seize_err(e)),
                }
                // Recorded before waiting, so a failure below still detaches it.
                self.tasks[idx].threads.push(Seized {
                    tid,
                    // SAFETY: user_regs_struct is plain old data; zeroed is valid.
                    regs: unsafe { std::mem::zeroed() },
                    sigmask: 0,
                    xstate: Vec::new(),
                    net: None,
                });
                let pos = self.tasks[idx].threads.len() - 1;
                let group = match early {
                    // Seized, and stopped, while its cgroup was frozen.
                    Some(Early::Stopped { group, .. }) => group,
                    Some(Early::Interrupted { .. }) => {
                        ptrace::wait_interrupted(pid, tid).map_err(seize_err)?
                    }
                    None => ptrace::interrupt_and_wait(pid, tid).map_err(seize_err)?,
                };
                if let Some(sig) = group {
                    // In a group stop: it is dumped as stopped and stays stopped.
                    self.tasks[idx].stopped = Some(sig);
                }
                let regs = ptrace::get_regs(tid).map_err(seize_err)?;
                let sigmask = ptrace::get_sigmask(tid).map_err(seize_err)?;
                let xstate = ptrace::get_xstate(tid).map_err(seize_err)?;
                // Read once the thread is stopped, so nothing changes behind it.
                let status = proc::thread_status(pid, tid)?;
                // A filtered thread would filter our injected syscalls too: suspend it. (The
                // kernel drops the suspension when the thread is detached, even by our death.)
                if status.seccomp != 0 {
                    ptrace::set_options(
                        tid,
                        ptrace::PTRACE_O_SUSPEND_SECCOMP | ptrace::PTRACE_O_TRACESYSGOOD,
                    )
                    .map_err(seize_err)?;
                }
                // Nothing else changes: registers and signal mask stay the thread's own, and
                // only each injected syscall changes them, for its own duration (see
                // Injector::kill_safe and docs/kill-safety.md).
                let s = &mut self.tasks[idx].threads[pos];
                s.regs = regs;
                s.sigmask = sigmask;
                s.xstate = xstate;
                any = true;
            }
        }
    }

    /// A kill-safe injector into thread `tid` of task `pid`, from the registers and mask the
    /// thread had when seized: between two syscalls it is exactly as it was.
    /// Also the dump's safe point for SIGTERM/SIGINT (see dump::abort).
    pub(crate) fn injector(&self, pid: u32, tid: u32) -> Result<Injector, DumpError> {
        crate::dump::abort::check()?;
        self.injector_for_release(pid, tid)
    }

    /// [`Tree::injector`] without the abort check, for putting things back.
    fn injector_for_release(&self, pid: u32, tid: u32) -> Result<Injector, DumpError> {
        let at = self.syscall_at[&pid];
        let t = self
            .tasks
            .iter()
            .find(|t| t.pid == pid)
            .and_then(|t| t.threads.iter().find(|s| s.tid == tid))
            .ok_or(DumpError::NoProcess { pid: tid })?;
        Ok(Injector::kill_safe(tid, at, t.regs, t.sigmask).with_net(t.net))
    }

    /// The leader's injector over its stack frame, for the syscalls that map and unmap the
    /// scratch page (whose frames cannot catch a syscall that unmaps them).
    pub(crate) fn leader_on_stack(&self, n: usize) -> Result<Injector, DumpError> {
        let task = &self.tasks[n];
        Ok(self
            .injector_for_release(task.pid, task.pid)?
            .with_net(task.stack_net))
    }

    /// Unmaps the scratch page of task `n` as soon as its injections are over, so that a
    /// dumper killed later leaves nothing of it in the task.
    pub(crate) fn unmap_scratch(&mut self, n: usize) -> Result<(), DumpError> {
        let pid = self.tasks[n].pid;
        if let Some((addr, len)) = self.tasks[n].scratch {
            self.leader_on_stack(n)?
                .call(libc::SYS_munmap, &[addr, len])
                .map_err(ptr_err(pid))?;
            self.tasks[n].scratch = None;
            for t in &mut self.tasks[n].threads {
                t.net = None;
            }
        }
        Ok(())
    }

    /// Puts everything back and detaches: the tree runs on.
    pub(crate) fn release(&mut self) {
        if self.done {
            return;
        }
        self.done = true;
        for lock in self.tcp_locks.drain(..) {
            lock.release();
        }
        if let Some(table) = self.nft_lock.take() {
            let unlocked = match &self.nft_lock_ns {
                Some(ns) => stasis_netns::nftlock::unlock_in(std::os::fd::AsFd::as_fd(ns), &table),
                None => stasis_netns::nftlock::unlock(&table),
            };
            if let Err(e) = unlocked {
                log::warn!("cannot remove network lock {table}: {e}");
            }
        }
        for (n, task) in self.tasks.iter().enumerate() {
            if let (Some((addr, len)), Some(_)) = (task.scratch, task.threads.first()) {
                // Best effort, as everything here: a release goes on to put every other
                // task back. A scratch page left mapped costs the task only that page.
                let unmapped = self.leader_on_stack(n).and_then(|inj| {
                    inj.raw(libc::SYS_munmap, &[addr, len])
                        .map_err(ptr_err(task.pid))
                });
                match unmapped {
                    Ok(0) => {}
                    Ok(r) => log::warn!(
                        "pid {}: cannot unmap the scratch page at {addr:#x}: errno {}",
                        task.pid,
                        -r
                    ),
                    Err(e) => log::warn!(
                        "pid {}: cannot unmap the scratch page at {addr:#x}: {e}",
                        task.pid
                    ),
                }
            }
        }
        self.release_early();
        self.refreeze_cgroup();
        for task in &self.tasks {
            if let Some(sig) = task.stopped {
                // It was stopped before we came (we continued it to inject): stop it again
                // before it runs a single instruction.
                // SAFETY: kill(2) of a task we trace.
                if unsafe { libc::kill(task.pid as libc::pid_t, sig) } != 0 {
                    log::warn!(
                        "pid {}: cannot stop it again with signal {sig}: {}",
                        task.pid,
                        std::io::Error::last_os_error()
                    );
                }
            }
            for t in &task.threads {
                if t.regs.rip != 0 || t.regs.rsp != 0 {
                    // Best effort: the other threads and tasks must still be put back.
                    if let Err(e) = ptrace::set_regs(t.tid, &t.regs) {
                        log::warn!("cannot put back the registers of {}: {e}", t.tid);
                    }
                    if let Err(e) = ptrace::set_sigmask(t.tid, t.sigmask) {
                        log::warn!("cannot put back the signal mask of {}: {e}", t.tid);
                    }
                }
                if let Err(e) = ptrace::detach(t.tid) {
                    log::warn!("detach of {} failed: {e}", t.tid);
                }
            }
        }
        // Detached while frozen, the tasks stay frozen until this thaw, and all go on at once.
        if self.was_frozen {
            if let Some(fz) = &self.cgroup {
                log::info!(
                    "cgroup {} was frozen before the dump: left frozen",
                    fz.path().display()
                );
            }
        } else if let Err(e) = self.thaw_cgroup() {
            log::warn!("{e}");
        }
    }

    /// Lets go of threads seized in the frozen cgroup that the tree walk did not take in (a
    /// dump that failed before it).
    fn release_early(&mut self) {
        if self.early.is_empty() {
            return;
        }
        // A v1-frozen thread takes its interrupt stop only once thawed.
        if self
            .early
            .values()
            .any(|e| matches!(e, Early::Interrupted { .. }))
        {
            if let Err(e) = self.thaw_cgroup() {
                log::warn!("{e}");
            }
        }
        let mut restop = HashMap::new();
        let mut tids = Vec::new();
        for (tid, e) in std::mem::take(&mut self.early) {
            let (pid, group) = match e {
                Early::Stopped { pid, group } => (pid, group),
                Early::Interrupted { pid } => match ptrace::wait_interrupted(pid, tid) {
                    Ok(group) => (pid, group),
                    Err(e) => {
                        log::warn!("thread {tid} of process {pid}: {e}");
                        continue;
                    }
                },
            };
            if let Some(sig) = group {
                restop.insert(pid, sig);
            }
            tids.push(tid);
        }
        for (pid, sig) in restop {
            // Continued to be interrupted (ptrace::wait_interrupted): stopped again first.
            // SAFETY: kill(2) of a task we trace.
            if unsafe { libc::kill(pid as libc::pid_t, sig) } != 0 {
                log::warn!("pid {pid}: cannot stop it again with signal {sig}");
            }
        }
        for tid in tids {
            if let Err(e) = ptrace::detach(tid) {
                log::warn!("detach of {tid} failed: {e}");
            }
        }
    }

    /// Freezes the cgroup again before the tree is detached, as CRIU does: each task let go
    /// stays frozen, and none runs while another is still traced. Best effort: a cgroup that
    /// does not freeze is let go task by task.
    fn refreeze_cgroup(&self) {
        if let Some(fz) = &self.cgroup {
            if let Err(e) = fz.freeze(REFREEZE_TIMEOUT) {
                log::warn!("{e}; the tasks are let go one by one");
            }
        }
    }

    /// Kills the tree after a complete dump, and reaps the ptrace links so PIDs free up.
    pub(crate) fn kill(&mut self) {
        self.done = true;
        // The images are complete. Should we die from here on, the kernel kills every task
        // with us (PTRACE_O_EXITKILL), so that none runs on next to a restorable image.
        for t in self.tasks.iter().flat_map(|t| &t.threads) {
            let opts = ptrace::PTRACE_O_TRACESYSGOOD | ptrace::PTRACE_O_EXITKILL;
            if let Err(e) = ptrace::set_options(t.tid, opts) {
                log::warn!("thread {}: cannot arm kill-on-exit: {e}", t.tid);
            }
        }
        for task in &self.tasks {
            // SAFETY: plain kill(2).
            if unsafe { libc::kill(task.pid as libc::pid_t, libc::SIGKILL) } != 0 {
                // The wait below still reaps it if it dies some other way; say why it may hang.
                log::warn!(
                    "cannot kill pid {} after the dump: {}",
                    task.pid,
                    std::io::Error::last_os_error()
                );
            }
        }
        // A v1-frozen task dies only once thawed: kill, then thaw.
        if let Err(e) = self.thaw_cgroup() {
            log::warn!("{e}");
        }
        ptrace::reap_killed(
            self.tasks
                .iter()
                .flat_map(|t| t.threads.iter().map(|t| t.tid)),
        );
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

/// The cgroup must hold the root, and no process outside the tree rooted there (a zombie,
/// done with, may be anywhere).
fn check_members(root: u32, cgroup: &Path, procs: &[u32]) -> Result<(), DumpError> {
    if !procs.contains(&root) {
        let cgroup = cgroup.to_path_buf();
        return Err(DumpError::CgroupWithoutRoot { cgroup, pid: root });
    }
    let in_tree = descendants(root)?;
    let outside: Vec<u32> = procs
        .iter()
        .copied()
        .filter(|p| !in_tree.contains(p) && !is_zombie(*p))
        .collect();
    if !outside.is_empty() {
        return Err(DumpError::CgroupOutsideTree {
            cgroup: cgroup.to_path_buf(),
            root,
            pids: outside,
        });
    }
    Ok(())
}

/// A v1 cgroup with a stopped task is not frozen (see [`Tree::seize_frozen_cgroup`]): its
/// members are checked, and the tree walk seizes them one by one.
fn interrupt_only(root: u32, fz: &Freezer, stopped: u32) -> Result<(), DumpError> {
    log::info!(
        "thread {stopped} in cgroup {} is stopped, and seizing it v1-frozen would wait \
         forever: the cgroup is not frozen, its tasks are seized one by one",
        fz.path().display()
    );
    check_members(root, fz.path(), &fz.procs()?)
}

/// A thread among `tids` in a job-control stop, even once v1 froze it: its state is then
/// `D`, but it still waits in `do_signal_stop`.
fn stopped_thread(tids: &[u32]) -> Option<u32> {
    tids.iter().copied().find(|&tid| {
        let state = proc::stat(tid).map(|s| s.state).unwrap_or('?');
        let wchan = std::fs::read_to_string(format!("/proc/{tid}/wchan")).unwrap_or_default();
        state == 'T' || wchan.trim() == "do_signal_stop"
    })
}

/// `root` and every task below it, as `/proc/*/task/*/children` show them now. A task gone
/// while we look is left out.
fn descendants(root: u32) -> Result<HashSet<u32>, DumpError> {
    let mut seen = HashSet::from([root]);
    let mut todo = proc::children(root)?;
    while let Some(pid) = todo.pop() {
        if seen.insert(pid) {
            todo.extend(proc::children(pid).unwrap_or_default());
        }
    }
    Ok(seen)
}

fn is_zombie(pid: u32) -> bool {
    proc::stat(pid).map(|s| s.state == 'Z').unwrap_or(false)
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
/// `owned`: the kinds the tree owns and the dump saves (checked by `ns::pid`, `ns::net`).
pub(crate) fn refuse_foreign_namespaces(live: &[u32], owned: &[&str]) -> Result<(), DumpError> {
    use std::os::unix::fs::MetadataExt;
    // A kind this kernel does not have (no /proc/thread-self/ns/time before 5.6) cannot differ.
    let id = |path: String| std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
    for kind in ["pid", "net", "mnt", "user", "cgroup", "time"] {
        if owned.contains(&kind) {
            continue;
        }
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
/// (clone without CLONE_THREAD) cannot be restored as separate processes: refuse them. One
/// exception, which the restore rebuilds with `CLONE_FILES`: a process sharing its parent's fd
/// table (each file of it is dumped once, under the first holder). Returns, per task, the index
/// of the task whose table it uses (itself when it has its own).
pub(crate) fn shared_kernel_objects(tree: &Tree) -> Result<Vec<usize>, DumpError> {
    use crate::sys::kcmp::{same, Kind};
    let kcmp_err = |pid, other, what| {
        move |source| DumpError::Kcmp {
            pid,
            other,
            what,
            source,
        }
    };
    let mut files_owner: Vec<usize> = (0..tree.tasks.len()).collect();
    for (n, t) in tree.tasks.iter().enumerate() {
        let parent = tree.tasks[..n]
            .iter()
            .position(|p| p.pid == t.stat.ppid && !p.zombie);
        if let Some(p) = parent.filter(|_| !t.zombie) {
            let fdt = "file descriptor table";
            if same(tree.tasks[p].pid, t.pid, Kind::Files).map_err(kcmp_err(
                t.pid,
                tree.tasks[p].pid,
                fdt,
            ))? {
                files_owner[n] = files_owner[p];
            }
        }
    }
    let live: Vec<usize> = (0..tree.tasks.len())
        .filter(|&n| !tree.tasks[n].zombie)
        .collect();
    for (i, &na) in live.iter().enumerate() {
        for &nb in &live[i + 1..] {
            let (a, b) = (tree.tasks[na].pid, tree.tasks[nb].pid);
            for (kind, what, upper) in [
                (Kind::Vm, "memory", "VM"),
                (Kind::Files, "file descriptor table", "FILES"),
                (Kind::Fs, "fs information (cwd, root, umask)", "FS"),
                (Kind::Sighand, "signal handlers", "SIGHAND"),
            ] {
                if kind == Kind::Files && files_owner[na] == files_owner[nb] {
                    continue;
                }
                // An error would leave sharing undetected: fail rather than assume none.
                if same(a, b, kind).map_err(kcmp_err(b, a, what))? {
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
    Ok(files_owner)
}

/// What `pid` runs, for naming it in a refusal ("stasis", "gdb"...); "?" once it is gone.
fn comm_of(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|c| c.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}
