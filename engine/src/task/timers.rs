//! Timers: interval timers (`getitimer`/`setitimer`) and POSIX timers, both sides.

use super::core::read_words;
use super::remote::Remote;
use super::TaskError;
use crate::dump::{ptr_err, DumpError};
use crate::images::pb;
use crate::restore::RestoreError;
use crate::sys::ptrace::Injector;

/// The real, virtual and profiling interval timers, in that order.
pub(crate) fn dump_itimers(
    pid: u32,
    leader: &Injector,
    scratch: u64,
) -> Result<Vec<pb::ItimerEntry>, DumpError> {
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
    Ok(itimers)
}

/// POSIX timers, from /proc/<pid>/timers plus an injected timer_gettime per timer. A timers
/// file that cannot be read fails the dump: the timers would silently be lost.
pub(crate) fn dump_posix_timers(
    pid: u32,
    inj: &Injector,
    scratch: u64,
) -> Result<Vec<pb::PosixTimerEntry>, DumpError> {
    // A timers file that cannot be read or parsed fails the dump, naming the pid and file.
    let timers = crate::proc::timers(pid)?;
    let mut out = Vec::new();
    for t in timers {
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

/// Arms the interval timers that were armed.
pub(crate) fn restore_itimers(r: &Remote, tc: &pb::TaskCoreEntry) -> Result<(), RestoreError> {
    if let Some(tm) = &tc.timers {
        for (which, it) in [(0u64, &tm.real), (1, &tm.virt), (2, &tm.prof)] {
            if it.isec | it.iusec | it.vsec | it.vusec != 0 {
                // Expired with its SIGALRM still pending (the kernel rearms a periodic
                // ITIMER_REAL when that signal is dequeued), it reads as 0 left: setitimer
                // would take that as "disarm" and drop the interval. The pending signal is
                // restored too; the next expiry is one interval away, as CRIU does.
                let (vsec, vusec) = match it.vsec | it.vusec {
                    0 => (it.isec, it.iusec),
                    _ => (it.vsec, it.vusec),
                };
                let a = r.put_words(0, &[it.isec, it.iusec, vsec, vusec])?;
                r.call(libc::SYS_setitimer, &[which, a, 0])?;
            }
        }
    }
    Ok(())
}

pub(crate) fn restore_posix_timers(
    r: &Remote,
    timers: &[pb::PosixTimerEntry],
) -> Result<(), RestoreError> {
    const PR_TIMER_CREATE_RESTORE_IDS: u64 = 77;
    let ret = r.raw(libc::SYS_prctl, &[PR_TIMER_CREATE_RESTORE_IDS, 1])?;
    if ret < 0 {
        return Err(TaskError::TimerIdsUnsupported { pid: r.pid }.into());
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
