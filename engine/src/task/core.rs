//! A task's core: the order in which one task is dumped, its process-wide state (signal
//! handlers, timers, limits, prctl flags), zombies, and kernel-object ids; at restore, the
//! process-wide state again, and where the tree is forked from.

use std::path::Path;

use super::remote::Remote;
use super::{sigframe, signals, thread, timers, TaskError};
use crate::dump::{ptr_err, write_file, DumpError, DumpOptions, DumpStats, Images};
use crate::freeze::{Task, Tree};
use crate::images::{self, magic, names, pb, ImageKind, ImageWriter};
use crate::proc::{self, Mapping};
use crate::restore::{DumpImage, RestoreError};
use crate::sys::mem::{self, PAGE_SIZE};
use crate::sys::ptrace::{self, SafetyNet};

pub(crate) use crate::restore::load::{TaskImage, ThreadImage};

/// The pages we map in each task for the out-parameters of injected syscalls; the threads'
/// signal frames (see `task::sigframe`) follow.
const SCRATCH_LEN: u64 = 2 * PAGE_SIZE;

pub(crate) fn read_u64(pid: u32, addr: u64) -> Result<u64, DumpError> {
    let mut b = [0u8; 8];
    mem::read(pid, addr, &mut b)?;
    Ok(u64::from_ne_bytes(b))
}

pub(crate) fn read_words<const N: usize>(pid: u32, addr: u64) -> Result<[u64; N], DumpError> {
    let mut b = vec![0u8; N * 8];
    mem::read(pid, addr, &mut b)?;
    let mut out = [0u64; N];
    for (o, c) in out.iter_mut().zip(b.chunks_exact(8)) {
        *o = u64::from_ne_bytes(c.try_into().expect("8 bytes"));
    }
    Ok(out)
}

/// Dumps live task `n` of the tree: its core and threads, files and fs, memory; paths (its
/// cwd, mapped files) as its own mount namespace shows them.
pub(crate) fn dump_task(
    tree: &mut Tree,
    n: usize,
    opts: &DumpOptions,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let pid = tree.tasks[n].pid;
    let Some(&(_, root_mount)) = img.nested_mnt.get(&pid) else {
        return dump_task_here(tree, n, opts, img, stats);
    };
    let tree_paths = (img.files.path_root.clone(), img.files.path_mnt);
    img.files.path_root = Some(format!("/proc/{pid}/root"));
    img.files.path_mnt = Some(root_mount);
    let done = dump_task_here(tree, n, opts, img, stats);
    (img.files.path_root, img.files.path_mnt) = tree_paths;
    done
}

fn dump_task_here(
    tree: &mut Tree,
    n: usize,
    opts: &DumpOptions,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let pid = tree.tasks[n].pid;
    let ord = kobj_id(n);
    let maps = proc::smaps(pid)?;
    let scratch = prepare_injection(tree, n, &maps)?;
    let leader = tree.injector(pid, pid)?;
    let sigactions = signals::dump_sigactions(pid, &leader, scratch)?;
    let brk = leader.call(libc::SYS_brk, &[0]).map_err(ptr_err(pid))? as u64;
    let itimers = timers::dump_itimers(pid, &leader, scratch)?;
    let mut posix = timers::dump_posix_timers(pid, &leader, scratch)?;
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
    let membarrier = membarrier_registrations(pid, &leader)?;

    // Per-thread state.
    let cores = thread::dump_threads(tree, n, scratch, &mut img.seccomp)?;
    // Its scratch page goes now, not at release, so that a dumper killed from here on leaves
    // nothing of it behind (the owners of O_ASYNC fds, read later, need none).
    tree.unmap_scratch(n)?;
    for t in &mut posix {
        t.notify_thread_id = t.notify_thread_id.map(|tid| img.pids.v(tid as u32) as i32);
    }
    let mut tc = task_core(&tree.tasks[n], itimers, posix)?;
    tc.cg_set = Some(img.cgroups.of_pid(pid)?);
    tc.sigactions = sigactions;
    tc.child_subreaper = Some(subreaper);
    tc.membarrier_registration_mask = (membarrier != 0).then_some(membarrier);

    // Files and fs.
    dump_files_and_fs(tree, n, opts, img, stats)?;
    let mut ns = img.ns_ids;
    if let Some(&(id, _)) = img.nested_mnt.get(&pid) {
        ns.mnt = Some(id);
    }
    let ids = ids_for(ord, files_ord(img, n), ns);
    let mut w = ImageWriter::new(ImageKind::Normal, magic::IDS);
    w.push(&ids);
    write_file(&img.dir.join(names::ids(img.pids.v(pid))), &w.into_bytes())?;

    // Memory.
    let from_task = crate::mm::vma::MmFromTask {
        brk,
        dumpable,
        thp_disabled,
    };
    crate::mm::vma::dump_mm(pid, &tree.tasks[n].stat, from_task, &maps, img, stats)?;

    for (i, thread::ThreadCore { tid, mut core, .. }) in cores.into_iter().enumerate() {
        // A thread in other cgroups than its process has a set of its own.
        if i > 0 {
            let set = img.cgroups.of_thread(pid, tid)?;
            if Some(set) != tc.cg_set {
                if let Some(c) = core.thread_core.as_mut() {
                    c.cg_set = Some(set);
                }
            }
        }
        // Credentials as the tree sees them: the restore sets them from inside.
        if let (Some(maps), Some(c)) = (
            &img.userns,
            core.thread_core.as_mut().and_then(|t| t.creds.as_mut()),
        ) {
            crate::ns::user::creds_to_ns(c, maps);
        }
        if i == 0 {
            core.tc = Some(tc.clone());
            core.ids = Some(ids);
        }
        let mut w = ImageWriter::new(ImageKind::Normal, magic::CORE);
        w.push(&core);
        write_file(&img.dir.join(names::core(img.pids.v(tid))), &w.into_bytes())?;
    }
    Ok(())
}

/// The membarrier() commands the process registered for (MEMBARRIER_CMD_GET_REGISTRATIONS,
/// Linux 6.3): a registered process may issue private expedited barriers, which fail with
/// EPERM in one that is not. 0 on a kernel without the command (the registrations are then
/// not kept).
fn membarrier_registrations(pid: u32, leader: &ptrace::Injector) -> Result<u32, DumpError> {
    const MEMBARRIER_CMD_GET_REGISTRATIONS: u64 = 1 << 9;
    let r = leader
        .raw(
            libc::SYS_membarrier,
            &[MEMBARRIER_CMD_GET_REGISTRATIONS, 0, 0],
        )
        .map_err(ptr_err(pid))?;
    if r < 0 {
        log::debug!(
            "pid {pid}: membarrier registrations not readable here (errno {})",
            -r
        );
        return Ok(0);
    }
    Ok(r as u32)
}

/// Finds a syscall instruction to inject at (the task's own vdso has one) and maps the scratch
/// page; returns its address.
fn prepare_injection(tree: &mut Tree, n: usize, maps: &[Mapping]) -> Result<u64, DumpError> {
    let pid = tree.tasks[n].pid;
    let net = match maps.iter().find(|m| m.path == "[vdso]") {
        Some(vdso) => {
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
            net_code(tree, n, maps, vdso, &vdso_bytes)?
        }
        // A task that unmapped its vdso (or runs where there is none): a syscall instruction
        // in its own code serves (injection jumps to it, so any `0f 05` decodes as one), and
        // the syscalls run without a net.
        None => {
            let at = syscall_in_code(pid, maps)?.ok_or_else(|| DumpError::UnsupportedVma {
                pid,
                start: 0,
                end: 0,
                path: "[vdso]".into(),
                what: "a task without a vdso nor a syscall instruction in its code".into(),
            })?;
            log::debug!("pid {pid}: no vdso: injecting at {at:#x}, without a net");
            tree.syscall_at.insert(pid, at);
            None
        }
    };
    // Each thread's state as a signal frame would hold it, for the nets.
    let frames: Vec<(u32, Vec<u8>)> = match net {
        Some(_) => tree.tasks[n]
            .threads
            .iter()
            .map(|t| (t.tid, t.xstate.clone()))
            .collect(),
        None => Vec::new(),
    };
    let slot = frames
        .iter()
        .map(|(_, x)| sigframe::frame_len(x.len()) as u64)
        .max()
        .unwrap_or(0);
    let len = (SCRATCH_LEN + slot * frames.len() as u64).next_multiple_of(PAGE_SIZE);
    // The leader's frame on its own stack catches the mmap of the scratch page (and, at the
    // end, its munmap).
    if let (Some(code), Some((_, xstate))) = (net, frames.first()) {
        let leader = &tree.tasks[n].threads[0];
        let stack = maps.iter().find(|m| {
            m.path == "[stack]" && m.start <= leader.regs.rsp && leader.regs.rsp <= m.end
        });
        let at = stack.and_then(|m| {
            sigframe::frame_on_stack(leader.regs.rsp, sigframe::frame_len(xstate.len()), m.start)
        });
        if let Some(at) = at {
            tree.tasks[n].stack_net = write_frame(pid, leader, at, xstate, code)?;
        } else {
            log::debug!(
                "pid {pid}: the leader is not on its [stack] (sp {:#x}): the scratch page's \
                 own two syscalls run without a net",
                leader.regs.rsp
            );
        }
    }
    let scratch = tree
        .leader_on_stack(n)?
        .call(
            libc::SYS_mmap,
            &[
                0,
                len,
                (libc::PROT_READ | libc::PROT_WRITE) as u64,
                (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64,
                u64::MAX,
                0,
            ],
        )
        .map_err(ptr_err(pid))? as u64;
    tree.tasks[n].scratch = Some((scratch, len));
    if let Some(code) = net {
        for (i, (tid, xstate)) in frames.iter().enumerate() {
            let at = scratch + SCRATCH_LEN + i as u64 * slot;
            let task = &tree.tasks[n];
            let Some(t) = task.threads.iter().find(|t| t.tid == *tid) else {
                continue;
            };
            let net = write_frame(pid, t, at, xstate, code)?;
            if let Some(t) = tree.tasks[n].threads.iter_mut().find(|t| t.tid == *tid) {
                t.net = net;
            }
        }
    }
    Ok(scratch)
}

/// A syscall instruction in the executable mappings of `pid` (its code), if any.
fn syscall_in_code(pid: u32, maps: &[Mapping]) -> Result<Option<u64>, DumpError> {
    for m in maps
        .iter()
        .filter(|m| m.exec && m.read && !m.path.starts_with('['))
    {
        let mut bytes = vec![0u8; m.len() as usize];
        if mem::read(pid, m.start, &mut bytes).is_err() {
            continue;
        }
        if let Some(at) = ptrace::find_syscall_insn(&bytes, m.start) {
            return Ok(Some(at));
        }
    }
    Ok(None)
}

/// The code a task's nets return through: the vdso's `syscall; ... ret` and the task's own
/// rt_sigreturn code. None (the syscalls then run without a net) if either is missing, or if
/// the task uses a shadow stack, which rt_sigreturn would check against our frame.
fn net_code(
    tree: &mut Tree,
    n: usize,
    maps: &[Mapping],
    vdso: &Mapping,
    vdso_bytes: &[u8],
) -> Result<Option<NetCode>, DumpError> {
    let pid = tree.tasks[n].pid;
    let Some(syscall_ret) = sigframe::find_syscall_ret(vdso_bytes, vdso.start) else {
        log::debug!("pid {pid}: the vdso has no syscall-ret sequence: injecting without a net");
        return Ok(None);
    };
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    if status
        .lines()
        .any(|l| l.starts_with("x86_Thread_features:") && l.contains("shstk"))
    {
        log::debug!("pid {pid}: a shadow stack: injecting without a net");
        return Ok(None);
    }
    let Some(sigreturn) = find_sigreturn_code(tree, pid, maps)? else {
        log::debug!("pid {pid}: no rt_sigreturn code in its mappings: injecting without a net");
        return Ok(None);
    };
    Ok(Some(NetCode {
        syscall_ret,
        sigreturn,
    }))
}

#[derive(Clone, Copy)]
struct NetCode {
    syscall_ret: u64,
    sigreturn: u64,
}

/// Writes thread `t`'s frame at `at` in task `pid`; the net over it.
fn write_frame(
    pid: u32,
    t: &crate::freeze::Seized,
    at: u64,
    xstate: &[u8],
    code: NetCode,
) -> Result<Option<SafetyNet>, DumpError> {
    let regs = super::arch::rewound(&t.regs);
    match sigframe::build_frame(at, &regs, t.sigmask, xstate, code.sigreturn) {
        Ok(frame) => {
            mem::write(pid, at, &frame)?;
            Ok(Some(SafetyNet {
                syscall_ret: code.syscall_ret,
                frame: at,
            }))
        }
        Err(e) => {
            log::debug!(
                "thread {}: no signal frame ({e:?}, {} bytes of XSAVE): injecting without a net",
                t.tid,
                xstate.len()
            );
            Ok(None)
        }
    }
}

/// The address of rt_sigreturn code (`mov $15, %rax; syscall`) in one of `pid`'s executable
/// file mappings (glibc's `__restore_rt` is in libc.so). Where it lies in a file is kept per
/// dump, so the other tasks mapping the same file only check the bytes at that place.
fn find_sigreturn_code(
    tree: &mut Tree,
    pid: u32,
    maps: &[Mapping],
) -> Result<Option<u64>, DumpError> {
    let mut exec: Vec<&Mapping> = maps
        .iter()
        .filter(|m| m.exec && m.read && m.inode != 0)
        .collect();
    // libc first: that is where it usually is, and the main binary may be large.
    exec.sort_by_key(|m| !m.path.contains("libc"));
    for m in &exec {
        let key = (m.dev_major, m.dev_minor, m.inode, m.offset, m.len());
        if let Some(&known) = tree.sigreturn_at.get(&key) {
            match known {
                Some(off) if sigreturn_is_at(pid, m.start + off) => return Ok(Some(m.start + off)),
                _ => continue,
            }
        }
        let found = scan_for_sigreturn(pid, m);
        tree.sigreturn_at.insert(key, found);
        if let Some(off) = found {
            return Ok(Some(m.start + off));
        }
    }
    Ok(None)
}

fn sigreturn_is_at(pid: u32, addr: u64) -> bool {
    let mut b = [0u8; 9];
    mem::read(pid, addr, &mut b).is_ok() && sigframe::is_sigreturn(&b)
}

/// Where the rt_sigreturn code lies in mapping `m`, read in 1 MiB pieces that overlap.
fn scan_for_sigreturn(pid: u32, m: &Mapping) -> Option<u64> {
    const PIECE: u64 = 1 << 20;
    let mut buf = vec![0u8; PIECE as usize + 16];
    let mut at = m.start;
    while at < m.end {
        let len = (m.end - at).min(PIECE + 16) as usize;
        // A piece that cannot be read (a hole past the file's end): skip it.
        if mem::read(pid, at, &mut buf[..len]).is_ok() {
            if let Some(i) = sigframe::find_sigreturn(&buf[..len]) {
                return Some(at - m.start + i as u64);
            }
        }
        at += PIECE;
    }
    None
}

/// The process-wide core from /proc and ptrace; the caller adds what injected syscalls read
/// (signal handlers, child subreaper).
fn task_core(
    task: &Task,
    itimers: Vec<pb::ItimerEntry>,
    posix: Vec<pb::PosixTimerEntry>,
) -> Result<pb::TaskCoreEntry, DumpError> {
    let pid = task.pid;
    let st = &task.stat;
    let limits = proc::limits(pid)?;
    let shared_pending = ptrace::peek_siginfo(pid, true).map_err(ptr_err(pid))?;
    let text = proc::read_trimmed(pid, "personality")?;
    let personality = u32::from_str_radix(&text, 16).map_err(|_| TaskError::Parse {
        pid,
        file: "personality",
        value: text.clone(),
    })?;
    let text = proc::read_trimmed(pid, "oom_score_adj")?;
    let oom: i32 = text.parse().map_err(|_| TaskError::Parse {
        pid,
        file: "oom_score_adj",
        value: text.clone(),
    })?;
    // Deliberate default: a kernel without audit support has no loginuid file, and "unset"
    // (u32::MAX, as a fresh login's) is what restoring nothing gives.
    let loginuid: u32 = match proc::read_trimmed(pid, "loginuid") {
        Ok(s) => s.parse().unwrap_or_else(|_| {
            log::info!("pid {pid}: loginuid {s:?} is not a number, dumped as unset");
            u32::MAX
        }),
        Err(e) => {
            log::info!("pid {pid}: no loginuid ({e}), dumped as unset");
            u32::MAX
        }
    };
    let [real, virt, prof]: [pb::ItimerEntry; 3] =
        itimers.try_into().expect("three interval timers");
    Ok(pb::TaskCoreEntry {
        task_state: if task.stopped.is_some() {
            images::TASK_STOPPED
        } else {
            images::TASK_ALIVE
        },
        stop_signo: task.stopped.map(|s| s as u32),
        exit_code: 0,
        personality,
        flags: st.flags,
        blk_sigset: task.threads[0].sigmask,
        comm: st.comm.clone(),
        timers: Some(pb::TaskTimersEntry {
            real,
            virt,
            prof,
            posix,
        }),
        rlimits: Some(pb::TaskRlimitsEntry {
            rlimits: limits
                .iter()
                .map(|&(cur, max)| pb::RlimitEntry { cur, max })
                .collect(),
        }),
        cg_set: None,
        signals_s: signals::siginfos(shared_pending),
        old_seccomp_mode: None,
        old_seccomp_filter: None,
        loginuid: Some(loginuid),
        oom_score_adj: Some(oom),
        sigactions: Vec::new(),
        child_subreaper: None,
        blk_sigset_extended: None,
        membarrier_registration_mask: None,
    })
}

/// The task's fds (`fdinfo`) and its fs (cwd, root, umask).
fn dump_files_and_fs(
    tree: &mut Tree,
    n: usize,
    opts: &DumpOptions,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let pid = tree.tasks[n].pid;
    let ord = kobj_id(n);
    let status = proc::status(pid)?;
    // An fd table shared with the parent was dumped with the parent's (CLONE_FILES).
    let own_table = files_ord(img, n) == ord;
    let fds = if own_table {
        let (fds, locks, async_fds) =
            crate::dump::fds::dump_fds(pid, opts, img, stats, &mut tree.nft_lock)?;
        tree.tcp_locks.extend(locks);
        dump_owners(tree, n, &status, &async_fds, img)?;
        fds
    } else {
        Vec::new()
    };
    let dir_of = |which: &'static str| -> Result<String, DumpError> {
        let path = proc::readlink(pid, which)?;
        // Deleted directories cannot be reopened by path (and are refused as fds too).
        if path.ends_with(" (deleted)") {
            return Err(TaskError::DeletedDir { pid, which, path }.into());
        }
        Ok(path)
    };
    // A deleted cwd is a ghost directory (the stub changes into it by fd); a deleted root
    // stays refused.
    let cwd_link = proc::readlink(pid, "cwd")?;
    let cwd = match cwd_link.strip_suffix(" (deleted)") {
        Some(orig) => img
            .files
            .add_deleted_dir(&format!("/proc/{pid}/cwd"), orig)?,
        None => img.files.add_path_at(
            &cwd_link,
            libc::O_DIRECTORY as u32,
            Some(&format!("/proc/{pid}/cwd")),
        )?,
    };
    let root = img.files.add_path_at(
        &dir_of("root")?,
        libc::O_DIRECTORY as u32,
        Some(&format!("/proc/{pid}/root")),
    )?;
    let mut w = ImageWriter::new(ImageKind::Normal, magic::FS);
    w.push(&pb::FsEntry {
        cwd_id: cwd,
        root_id: root,
        umask: Some(status.umask),
    });
    write_file(&img.dir.join(names::fs(img.pids.v(pid))), &w.into_bytes())?;
    if !own_table {
        return Ok(());
    }
    let mut w = ImageWriter::new(ImageKind::Normal, magic::FDINFO);
    for fd in &fds {
        w.push(fd);
    }
    write_file(&img.dir.join(names::fdinfo(ord)), &w.into_bytes())
}

/// The kernel-object id of the fd table task `n` uses: its own, or the one it shares with its
/// parent (the first holder's, as CRIU numbers it).
fn files_ord(img: &crate::dump::Images, n: usize) -> u32 {
    kobj_id(img.files_owner.get(n).copied().unwrap_or(n))
}

/// The owner and signal of each O_ASYNC fd of task `n` (F_GETOWN, F_GETSIG, read from inside
/// the task: no /proc file shows them), into its file's `fown`, with the task's ids as the
/// owner's credentials. An owner pid is written as the tree sees it.
fn dump_owners(
    tree: &Tree,
    n: usize,
    status: &proc::Status,
    async_fds: &[(i32, u32)],
    img: &mut Images,
) -> Result<(), DumpError> {
    if async_fds.is_empty() {
        return Ok(());
    }
    let pid = tree.tasks[n].pid;
    let inj = tree.leader_on_stack(n)?;
    for &(fd, id) in async_fds {
        // Not `call`: F_GETOWN gives a process group as a negative number, which may look like
        // an errno (the fd is open and the task frozen, so it cannot fail otherwise).
        let owner = inj
            .raw(libc::SYS_fcntl, &[fd as u64, libc::F_GETOWN as u64])
            .map_err(ptr_err(pid))? as i32;
        let signum = inj
            .call(libc::SYS_fcntl, &[fd as u64, F_GETSIG])
            .map_err(ptr_err(pid))? as u32;
        if owner == 0 && signum == 0 {
            continue;
        }
        // F_GETOWN gives a process group as a negative number.
        let (pid_type, who) = if owner < 0 {
            (PIDTYPE_PGID, owner.unsigned_abs())
        } else {
            (PIDTYPE_TGID, owner as u32)
        };
        img.files.set_fown(
            id,
            pb::FownEntry {
                uid: status.uids[0],
                euid: status.uids[1],
                signum,
                pid_type,
                pid: if who == 0 { 0 } else { img.pids.v(who) },
            },
        );
    }
    Ok(())
}

/// fcntl's F_GETSIG and F_SETSIG (Linux; libc does not name them).
const F_GETSIG: u64 = 11;
const F_SETSIG: u64 = 10;

/// CRIU's fown_entry pid types (the kernel's enum pid_type).
const PIDTYPE_TGID: u32 = 1;
const PIDTYPE_PGID: u32 = 2;

/// Gives each fd of task `t` whose file had an owner or a signal (F_SETOWN, F_SETSIG) them back,
/// from inside the task, once its fds are in place.
pub(crate) fn restore_owners(
    r: &Remote,
    t: &TaskImage,
    img: &DumpImage,
) -> Result<(), RestoreError> {
    for f in &t.fds {
        let Some(o) = img.files.get(&f.id).and_then(crate::files::fown_of) else {
            continue;
        };
        if o.signum != 0 {
            r.call(libc::SYS_fcntl, &[f.fd as u64, F_SETSIG, o.signum as u64])?;
        }
        if o.pid != 0 {
            let who = if o.pid_type == PIDTYPE_PGID {
                -(o.pid as i64)
            } else {
                o.pid as i64
            };
            let ret = r.raw(
                libc::SYS_fcntl,
                &[f.fd as u64, libc::F_SETOWN as u64, who as u64],
            )?;
            if ret < 0 {
                // An owner outside the tree that is gone here: the file keeps none.
                log::warn!(
                    "pid {} fd {}: cannot give it owner {who} again: errno {}",
                    t.pid(),
                    f.fd,
                    -ret
                );
            }
        }
    }
    Ok(())
}

/// A zombie is only its exit code and name, as in CRIU (task_state TASK_DEAD).
/// `vpid`: its pid as the tree sees it (see `ns::pid`).
pub(crate) fn dump_zombie(task: &Task, vpid: u32, dir: &Path) -> Result<(), DumpError> {
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
    write_file(&dir.join(names::core(vpid)), &w.into_bytes())
}

/// The kernel-object id of the `n`th task (0-based). Id 1 is the dumper's own (inventory's
/// root_ids), as in CRIU: a root task whose ids equal root_ids would share the dumper's fd
/// table, and CRIU refuses such images ("Image corruption on kIDs data").
pub(crate) fn kobj_id(n: usize) -> u32 {
    n as u32 + 2
}

/// Kernel-object ids: stasis refuses shared mms, fs structs and signal handlers between
/// processes, and fd tables but a child's of its parent's (`files`: that table's id), so
/// The image ids of the namespaces a task is in (see `ns`): the dumper's own, or the one the
/// tree owns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NsIds {
    pub(crate) ipc: u32,
    pub(crate) uts: u32,
    pub(crate) net: u32,
    pub(crate) pid: u32,
    pub(crate) time: u32,
    /// Only for a tree with a mount namespace of its own: CRIU's restore of a host tree
    /// looks for no mount images then.
    pub(crate) mnt: Option<u32>,
    /// Likewise for a cgroup namespace of its own.
    pub(crate) cgroup: Option<u32>,
    /// Likewise for a user namespace of its own.
    pub(crate) user: Option<u32>,
}

impl NsIds {
    /// The dumper's own namespaces (inventory's root_ids).
    pub(crate) const HOST: NsIds = NsIds {
        ipc: crate::ns::ipc::HOST_NS_ID,
        uts: crate::ns::uts::HOST_NS_ID,
        net: crate::ns::net::HOST_NS_ID,
        pid: crate::ns::pid::HOST_NS_ID,
        time: crate::ns::time::HOST_NS_ID,
        mnt: None,
        cgroup: None,
        user: None,
    };
}

/// each process owns its own and the ids are its ordinal (see [`kobj_id`]).
pub(crate) fn ids_for(n: u32, files: u32, ns: NsIds) -> pb::TaskKobjIdsEntry {
    pb::TaskKobjIdsEntry {
        vm_id: n,
        files_id: files,
        fs_id: n,
        sighand_id: n,
        pid_ns_id: Some(ns.pid),
        net_ns_id: Some(ns.net),
        ipc_ns_id: Some(ns.ipc),
        uts_ns_id: Some(ns.uts),
        mnt_ns_id: ns.mnt,
        user_ns_id: ns.user,
        cgroup_ns_id: ns.cgroup,
        time_ns_id: Some(ns.time),
    }
}

/// The mm's dumpable flag; set once every thread has its credentials, whose change resets it
/// (to the system's suid_dumpable).
pub(crate) fn restore_dumpable(r: &Remote, t: &TaskImage) -> Result<(), RestoreError> {
    if let Some(d) = t.mm.dumpable {
        // Deliberately not fatal: PR_GET_DUMPABLE may report 2 (suid_dumpable), which
        // PR_SET_DUMPABLE refuses; the task then keeps what its credentials left.
        let ret = r.raw(libc::SYS_prctl, &[libc::PR_SET_DUMPABLE as u64, d as u64])?;
        if ret < 0 {
            log::info!(
                "pid {}: cannot set dumpable to {d}: errno {}",
                t.pid(),
                -ret
            );
        }
    }
    Ok(())
}

/// Process-wide state: signal handlers, timers, limits, prctl flags.
pub(crate) fn restore_task_state(r: &Remote, t: &TaskImage) -> Result<(), RestoreError> {
    let tc = t.tc();
    signals::drop_stub_signals(r)?;
    signals::restore_sigactions(r, tc)?;
    timers::restore_itimers(r, tc)?;
    const PR_SET_THP_DISABLE: u64 = 41;
    if let Some(mm_thp) = t.mm.thp_disabled {
        if mm_thp {
            r.call(libc::SYS_prctl, &[PR_SET_THP_DISABLE, 1])?;
        }
    }
    if tc.child_subreaper == Some(true) {
        r.call(libc::SYS_prctl, &[libc::PR_SET_CHILD_SUBREAPER as u64, 1])?;
    }
    // Each bit is a MEMBARRIER_CMD_REGISTER_* command the process had issued.
    let mask = tc.membarrier_registration_mask.unwrap_or(0);
    for bit in (0..32).filter(|b| mask & (1 << b) != 0) {
        r.call(libc::SYS_membarrier, &[1 << bit, 0, 0])?;
    }
    r.call(libc::SYS_personality, &[tc.personality as u64])?;
    if let Some(rl) = &tc.rlimits {
        restore_rlimits(r, t.pid(), rl)?;
    }
    if let Some(adj) = tc.oom_score_adj {
        if let Err(e) = std::fs::write(format!("/proc/{}/oom_score_adj", t.pid()), adj.to_string())
        {
            log::warn!("pid {}: cannot set oom_score_adj {adj}: {e}", t.pid());
        }
    }
    signals::restore_shared_pending(r, t)
}

/// Sets the resource limits that differ from the stub's. One the kernel refuses (a hard limit
/// above ours, without CAP_SYS_RESOURCE) is logged and left as inherited.
fn restore_rlimits(r: &Remote, pid: u32, rl: &pb::TaskRlimitsEntry) -> Result<(), RestoreError> {
    // Only to skip limits that are right already: unreadable, every limit is set.
    let cur = proc::limits(pid).unwrap_or_else(|e| {
        log::info!("pid {pid}: cannot read its limits ({e}): setting every one");
        Vec::new()
    });
    for (res, l) in rl.rlimits.iter().enumerate() {
        if cur.get(res) == Some(&(l.cur, l.max)) {
            continue;
        }
        let a = r.put_words(0, &[l.cur, l.max])?;
        let ret = r.raw(libc::SYS_prlimit64, &[0, res as u64, a, 0])?;
        if ret < 0 {
            log::warn!(
                "pid {}: cannot set rlimit {res} to {}/{}: errno {}",
                pid,
                l.cur,
                l.max,
                -ret
            );
        }
    }
    Ok(())
}

/// A free range for the trampoline: outside every dumped mapping of every task.
pub(crate) fn pick_trampoline(img: &DumpImage) -> Result<u64, RestoreError> {
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
    Err(TaskError::NoTrampolineRange {
        pid: img.tasks[0].pid(),
    }
    .into())
}
