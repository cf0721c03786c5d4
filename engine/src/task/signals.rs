//! Signals: dispositions, pending signals (per thread and shared) and alternate stacks, dumped
//! by injected syscalls and ptrace, restored by injected syscalls.

use super::core::{read_words, TaskImage};
use super::remote::Remote;
use crate::dump::{ptr_err, DumpError};
use crate::images::pb;
use crate::restore::RestoreError;
use crate::sys::ptrace::Injector;

/// Signal dispositions: one rt_sigaction per signal that is caught or ignored, and SIGCHLD
/// (no interface exposes them otherwise). A signal /proc shows neither caught nor ignored is
/// SIG_DFL, whose flags and mask change nothing (but SIGCHLD's: SA_NOCLDSTOP, SA_NOCLDWAIT),
/// so it is recorded as SIG_DFL without asking the task: most of a small dump's injected
/// syscalls were these.
pub(crate) fn dump_sigactions(
    pid: u32,
    leader: &Injector,
    scratch: u64,
) -> Result<Vec<pb::SaEntry>, DumpError> {
    let status = crate::proc::status(pid)?;
    let mut sigactions = Vec::new();
    for sig in 1..=64u64 {
        if sig == libc::SIGKILL as u64 || sig == libc::SIGSTOP as u64 {
            continue;
        }
        let bit = 1u64 << (sig - 1);
        if (status.sig_cgt | status.sig_ign) & bit == 0 && sig != libc::SIGCHLD as u64 {
            sigactions.push(pb::SaEntry {
                sigaction: libc::SIG_DFL as u64,
                flags: 0,
                restorer: 0,
                mask: 0,
                compat_sigaction: None,
                mask_extended: None,
            });
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
    Ok(sigactions)
}

/// The alternate signal stack of the thread `inj` drives.
pub(crate) fn dump_sigaltstack(
    pid: u32,
    inj: &Injector,
    scratch: u64,
) -> Result<pb::ThreadSasEntry, DumpError> {
    inj.call(libc::SYS_sigaltstack, &[0, scratch])
        .map_err(ptr_err(pid))?;
    let [ss_sp, ss_flags, ss_size] = read_words::<3>(pid, scratch)?;
    Ok(pb::ThreadSasEntry {
        ss_sp,
        ss_size,
        ss_flags: ss_flags as u32,
    })
}

/// Pending signals (as `PTRACE_PEEKSIGINFO` gives them) as the image keeps them.
pub(crate) fn siginfos(list: Vec<[u8; 128]>) -> Option<pb::SignalQueueEntry> {
    Some(pb::SignalQueueEntry {
        signals: list
            .into_iter()
            .map(|s| pb::SiginfoEntry {
                siginfo: s.to_vec(),
            })
            .collect(),
    })
}

/// Signals that reached the stub (SIGCHLD from a zombie child) are not the task's: drop them.
pub(crate) fn drop_stub_signals(r: &Remote) -> Result<(), RestoreError> {
    let all = r.put_words(0, &[u64::MAX])?;
    let zero = r.put_words(8, &[0, 0])?;
    while r.raw(libc::SYS_rt_sigtimedwait, &[all, 0, zero, 8])? > 0 {}
    Ok(())
}

pub(crate) fn restore_sigactions(r: &Remote, tc: &pb::TaskCoreEntry) -> Result<(), RestoreError> {
    let mut sigs = (1..=64u64).filter(|&s| s != libc::SIGKILL as u64 && s != libc::SIGSTOP as u64);
    for sa in &tc.sigactions {
        let Some(sig) = sigs.next() else { break };
        let a = r.put_words(0, &[sa.sigaction, sa.flags, sa.restorer, sa.mask])?;
        r.call(libc::SYS_rt_sigaction, &[sig, a, 0, 8])?;
    }
    Ok(())
}

/// Queues the process-wide pending signals again.
pub(crate) fn restore_shared_pending(r: &Remote, t: &TaskImage) -> Result<(), RestoreError> {
    if let Some(ss) = &t.tc().signals_s {
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

/// Queues the thread's own pending signals again.
pub(crate) fn restore_thread_pending(
    r: &Remote,
    t: &TaskImage,
    tcore: &pb::ThreadCoreEntry,
) -> Result<(), RestoreError> {
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
    Ok(())
}

/// Always set, disabled included: the stub inherited the restorer's alternate stack (Rust's
/// runtime installs one), which points into memory the task no longer has; an SA_ONSTACK
/// handler would then die with SIGSEGV at delivery.
pub(crate) fn restore_sigaltstack(
    r: &Remote,
    sas: Option<&pb::ThreadSasEntry>,
) -> Result<(), RestoreError> {
    const SS_DISABLE: u32 = 2;
    const SS_AUTODISARM: u32 = 1 << 31;
    let words = match sas {
        Some(sas) if sas.ss_flags & SS_DISABLE == 0 && sas.ss_size != 0 => [
            sas.ss_sp,
            (sas.ss_flags & SS_AUTODISARM) as u64,
            sas.ss_size,
        ],
        _ => [0, SS_DISABLE as u64, 0],
    };
    let a = r.put_words(0, &words)?;
    r.call(libc::SYS_sigaltstack, &[a, 0])?;
    Ok(())
}

/// A task that ignores SIGTRAP or holds one pending: the SIGTRAP a single step forces would
/// reset the handler and let the pending one in, so its injections are quiet.
pub(crate) fn sigtrap_at_risk(t: &TaskImage) -> bool {
    let ignored = t
        .tc()
        .sigactions
        .get(libc::SIGTRAP as usize - 1)
        .is_some_and(|sa| sa.sigaction == 1);
    ignored || has_pending_sigtrap(t)
}

pub(crate) fn has_pending_sigtrap(t: &TaskImage) -> bool {
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
