//! Threads: registers, FPU state, rseq, robust futex list, scheduling and the rest of a
//! thread's core. Dumped from ptrace and injected syscalls; restored by cloning each thread
//! with its dumped tid, then injected syscalls, registers last.

use super::core::{read_u64, ThreadImage};
use super::remote::Remote;
use super::{arch, creds, seccomp, signals, TaskError};
use crate::dump::{ptr_err, DumpError};
use crate::freeze::Tree;
use crate::images::pb;
use crate::proc;
use crate::restore::RestoreError;
use crate::sys::ptrace::{self, Injector};

/// A thread's core entry, and its seccomp mode (its filters are added once all are read).
pub(crate) struct ThreadCore {
    pub(crate) tid: u32,
    pub(crate) core: pb::CoreEntry,
    pub(crate) seccomp_mode: u32,
}

/// The core of every thread of task `n`, seccomp filters included (added to `filters`).
pub(crate) fn dump_threads(
    tree: &Tree,
    n: usize,
    scratch: u64,
    filters: &mut seccomp::Filters,
) -> Result<Vec<ThreadCore>, DumpError> {
    let pid = tree.tasks[n].pid;
    let mut cores = Vec::new();
    for t in &tree.tasks[n].threads {
        let inj = tree.injector(pid, t.tid)?;
        cores.push(dump_thread(pid, &inj, t, scratch)?);
    }
    for c in cores.iter_mut() {
        let tid = c.tid;
        match c.seccomp_mode {
            0 => {}
            // Strict mode allows read, write, exit and sigreturn only: set again last, at
            // restore (the injections after it run with seccomp suspended).
            seccomp::MODE_STRICT => {
                if let Some(tc) = c.core.thread_core.as_mut() {
                    tc.seccomp_mode = Some(pb::SeccompMode::Strict as i32);
                }
            }
            seccomp::MODE_FILTER => {
                let last = seccomp::dump_seccomp_chain(pid, tid, filters)?;
                if let Some(tc) = c.core.thread_core.as_mut() {
                    tc.seccomp_mode = Some(pb::SeccompMode::Filter as i32);
                    tc.seccomp_filter = last;
                }
            }
            mode => return Err(TaskError::SeccompStrict { pid, tid, mode }.into()),
        }
    }
    Ok(cores)
}

/// One thread, through `inj`, which drives it: `t` holds what it had when seized.
fn dump_thread(
    pid: u32,
    inj: &Injector,
    t: &crate::freeze::Seized,
    scratch: u64,
) -> Result<ThreadCore, DumpError> {
    let (regs, sigmask, xstate) = (&t.regs, t.sigmask, &t.xstate);
    let tid = inj.tid;
    inj.call(libc::SYS_prctl, &[libc::PR_GET_TID_ADDRESS as u64, scratch])
        .map_err(ptr_err(pid))?;
    let clear_tid = read_u64(pid, scratch)?;
    let sas = signals::dump_sigaltstack(pid, inj, scratch)?;
    inj.call(libc::SYS_prctl, &[libc::PR_GET_PDEATHSIG as u64, scratch])
        .map_err(ptr_err(pid))?;
    let pdeath = read_u64(pid, scratch)? as u32;
    let secbits = inj
        .call(libc::SYS_prctl, &[libc::PR_GET_SECUREBITS as u64])
        .map_err(ptr_err(pid))? as u32;
    let (futex_rla, futex_rla_len) = robust_list(pid, tid)?;
    let rseq = ptrace::get_rseq(tid).map_err(ptr_err(pid))?;
    let pending = ptrace::peek_siginfo(tid, false).map_err(ptr_err(pid))?;
    let tst = proc::thread_stat(pid, tid)?;
    let tstatus = proc::thread_status(pid, tid)?;
    let creds = creds::dump_creds(&tstatus, secbits);
    const SCHED_DEADLINE: u32 = 6;
    if tst.policy == SCHED_DEADLINE {
        // Its runtime, deadline and period need sched_getattr, which we do not keep.
        return Err(TaskError::SchedDeadline { pid, tid }.into());
    }
    // /proc's policy lacks SCHED_RESET_ON_FORK; sched_getscheduler gives it with the policy.
    // SAFETY: sched_getscheduler on a thread id, no pointers.
    let policy = match unsafe { libc::sched_getscheduler(tid as libc::pid_t) } {
        p if p >= 0 => p as u32,
        _ => tst.policy,
    };
    let thread_core = pb::ThreadCoreEntry {
        futex_rla,
        futex_rla_len,
        sched_nice: Some(tst.nice as i32),
        sched_policy: Some(policy),
        sched_prio: Some(tst.rt_priority),
        blk_sigset: Some(sigmask),
        sas: Some(sas),
        pdeath_sig: Some(pdeath),
        signals_p: signals::siginfos(pending),
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
            gpregs: arch::regs_to_pb(&arch::rewound(regs)),
            fpregs: arch::fpregs_from_xstate(xstate),
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
    Ok(ThreadCore {
        tid,
        core,
        seccomp_mode: tstatus.seccomp,
    })
}

/// The thread's robust futex list: head and length. A failure fails the dump: the list would
/// silently be lost, and with it the wake-ups of the futexes the thread holds when it dies.
fn robust_list(pid: u32, tid: u32) -> Result<(u64, u32), DumpError> {
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
        return Err(TaskError::Syscall {
            pid,
            tid,
            call: "get_robust_list",
            source: std::io::Error::last_os_error(),
        }
        .into());
    }
    Ok((head, len as u32))
}

/// Creates thread `tid` in the task by an injected clone3 with set_tid; it starts stopped.
pub(crate) fn clone_thread(leader: &Remote, tid: u32) -> Result<u32, RestoreError> {
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
    let pid = leader.pid;
    if got != tid {
        return Err(TaskError::ThreadTid { pid, tid, got }.into());
    }
    match ptrace::wait(tid).map_err(crate::restore::ptr_err(pid))? {
        ptrace::Stop::Stopped { .. } => Ok(tid),
        ptrace::Stop::Exited(status) => Err(TaskError::ThreadExited { pid, tid, status }.into()),
    }
}

/// Per-thread state, credentials last.
pub(crate) fn restore_thread(
    r: &Remote,
    t: &super::core::TaskImage,
    th: &ThreadImage,
    seccomp: &[pb::SeccompFilter],
    install: seccomp::Install,
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
    signals::restore_sigaltstack(r, tcore.sas.as_ref())?;
    // CRIU writes an entry of zeros for a thread that registered none (a Go program's).
    if let Some(rs) = tcore
        .rseq_entry
        .as_ref()
        .filter(|rs| rs.rseq_abi_pointer != 0)
    {
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
    restore_sched(r, t.pid(), tcore)?;
    signals::restore_thread_pending(r, t, tcore)?;
    if let Some(last) = tcore.seccomp_filter {
        seccomp::restore_seccomp(r, seccomp, last, install)?;
    }
    if let Some(c) = &tcore.creds {
        creds::restore_creds(r, c)?;
    }
    // After the credentials, whose change clears the parent-death signal. Not for the root,
    // whose parent is now the restorer: its exit would send the signal at once.
    let pdeath = if t.pstree.ppid == 0 {
        0
    } else {
        tcore.pdeath_sig.unwrap_or(0)
    };
    r.call(
        libc::SYS_prctl,
        &[libc::PR_SET_PDEATHSIG as u64, pdeath as u64],
    )?;
    if tcore.seccomp_mode == Some(pb::SeccompMode::Strict as i32) {
        r.call(
            libc::SYS_prctl,
            &[libc::PR_SET_SECCOMP as u64, seccomp::MODE_STRICT as u64],
        )?;
    }
    Ok(())
}

/// The scheduling policy before the nice value (which only normal policies use).
fn restore_sched(r: &Remote, pid: u32, tcore: &pb::ThreadCoreEntry) -> Result<(), RestoreError> {
    let tid = r.inj.tid;
    let policy = tcore.sched_policy.unwrap_or(0) as libc::c_int;
    // SCHED_OTHER with SCHED_RESET_ON_FORK is set too (only the flag to restore).
    if policy != libc::SCHED_OTHER {
        let param = libc::sched_param {
            sched_priority: tcore.sched_prio.unwrap_or(0) as libc::c_int,
        };
        // SAFETY: sched_setscheduler on a thread id with our param struct.
        if unsafe { libc::sched_setscheduler(tid as libc::pid_t, policy, &param) } < 0 {
            return Err(TaskError::Sched {
                pid,
                tid,
                policy,
                prio: param.sched_priority,
                source: std::io::Error::last_os_error(),
            }
            .into());
        }
    }
    if let Some(nice) = tcore.sched_nice {
        if nice != 0 {
            // SAFETY: setpriority on a thread id, no pointers.
            if unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) } != 0 {
                return Err(TaskError::Nice {
                    pid,
                    tid,
                    nice,
                    source: std::io::Error::last_os_error(),
                }
                .into());
            }
        }
    }
    Ok(())
}

/// A thread's blocked signals as dumped: its thread core's, or, for a main thread of CRIU's
/// images, which keep it in the task core only, that.
fn dumped_sigmask(core: &pb::CoreEntry) -> u64 {
    core.thread_core
        .as_ref()
        .and_then(|c| c.blk_sigset)
        .or_else(|| core.tc.as_ref().map(|tc| tc.blk_sigset))
        .unwrap_or(0)
}

/// Registers, FPU state and signal mask, set last, when no more syscalls are injected.
pub(crate) fn set_final_regs(tid: u32, th: &ThreadImage) -> Result<(), RestoreError> {
    let ptr_err = crate::restore::ptr_err;
    let ti = th.core.thread_info.as_ref().expect("checked at load");
    let template = ptrace::get_xstate(tid).map_err(ptr_err(tid))?;
    ptrace::set_xstate(tid, &arch::xstate_from_fpregs(&ti.fpregs, &template))
        .map_err(ptr_err(tid))?;
    let base = ptrace::get_regs(tid).map_err(ptr_err(tid))?;
    let mut regs = arch::regs_from_pb(&ti.gpregs, &base);
    arch::rewind_interrupted_syscall(&mut regs);
    ptrace::set_regs(tid, &regs).map_err(ptr_err(tid))?;
    ptrace::set_sigmask(tid, dumped_sigmask(&th.core)).map_err(ptr_err(tid))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigmask_from_the_thread_core_else_criu_s_task_core() {
        let mut core = pb::CoreEntry {
            tc: Some(pb::TaskCoreEntry {
                blk_sigset: 0x200,
                ..Default::default()
            }),
            thread_core: Some(pb::ThreadCoreEntry::default()),
            ..Default::default()
        };
        assert_eq!(dumped_sigmask(&core), 0x200, "CRIU's main thread");
        core.thread_core.as_mut().unwrap().blk_sigset = Some(0x4);
        assert_eq!(dumped_sigmask(&core), 0x4, "stasis's, or a CRIU thread's");
        core.tc = None;
        core.thread_core = None;
        assert_eq!(dumped_sigmask(&core), 0);
    }
}
