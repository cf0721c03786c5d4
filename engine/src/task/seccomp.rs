//! Seccomp filters, as CRIU keeps them: every filter once in `seccomp.img`, each pointing at the
//! filter installed before it (`prev`), and each thread naming the last filter of its chain.
//! Threads and processes whose chains start alike share those entries. Pure code: the filters
//! are read with `PTRACE_SECCOMP_GET_FILTER` at dump and installed by injected `seccomp(2)` at
//! restore, under `PTRACE_O_SUSPEND_SECCOMP` so that they filter none of our injected syscalls.
//! The chain bookkeeping is pure; [`dump_seccomp_chain`] and [`restore_seccomp`] do the I/O.

use super::remote::Remote;
use super::TaskError;
use crate::dump::{ptr_err, DumpError};
use crate::images::pb;
use crate::restore::RestoreError;
use crate::sys::mem::{self, PAGE_SIZE};
use crate::sys::ptrace;

/// SECCOMP_MODE_STRICT, as /proc/<pid>/status and the image number it.
pub const MODE_STRICT: u32 = 1;
/// The mode /proc/<pid>/status and the image call `filter`.
pub const MODE_FILTER: u32 = 2;

/// A filter chain that cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SeccompError {
    #[error("a seccomp filter returns SECCOMP_RET_USER_NOTIF (a supervisor outside answers its syscalls), which is not supported")]
    UserNotif,
    #[error("a seccomp filter of {len} bytes is not a whole number of instructions")]
    Truncated { len: usize },
    #[error("seccomp filter {index}: its previous filter {prev} is not an earlier entry")]
    BadChain { index: u32, prev: u32 },
    #[error("thread {tid} could not be given the process's filters (SECCOMP_FILTER_FLAG_TSYNC)")]
    Tsync { tid: i64 },
}

/// The filters seen so far, each once.
#[derive(Default)]
pub struct Filters {
    pub entries: Vec<pb::SeccompFilter>,
}

impl Filters {
    /// Adds a thread's chain, oldest first, as (instructions, flags); returns the index of its
    /// last filter, the one the thread core names.
    pub fn add_chain(&mut self, chain: &[(Vec<u8>, u64)]) -> Result<Option<u32>, SeccompError> {
        let mut prev: Option<u32> = None;
        for (prog, flags) in chain {
            check(prog)?;
            let flags = Some(*flags as u32).filter(|f| *f != 0);
            let found = self
                .entries
                .iter()
                .position(|e| e.prev == prev && &e.filter == prog && e.flags == flags);
            let index = match found {
                Some(i) => i as u32,
                None => {
                    self.entries.push(pb::SeccompFilter {
                        filter: prog.clone(),
                        prev,
                        flags,
                    });
                    self.entries.len() as u32 - 1
                }
            };
            prev = Some(index);
        }
        Ok(prev)
    }
}

/// Refuses what cannot come back: a filter handing syscalls to a user-space supervisor.
fn check(prog: &[u8]) -> Result<(), SeccompError> {
    if !prog.len().is_multiple_of(8) {
        return Err(SeccompError::Truncated { len: prog.len() });
    }
    const BPF_RET_K: u16 = 0x06;
    const RET_USER_NOTIF: u32 = 0x7fc0_0000;
    const ACTION_FULL: u32 = 0xffff_0000;
    for ins in prog.chunks_exact(8) {
        let code = u16::from_ne_bytes([ins[0], ins[1]]);
        let k = u32::from_ne_bytes([ins[4], ins[5], ins[6], ins[7]]);
        if code == BPF_RET_K && k & ACTION_FULL == RET_USER_NOTIF {
            return Err(SeccompError::UserNotif);
        }
    }
    Ok(())
}

/// The chain ending at `last`, oldest first, as (instructions, flags) to install in order.
pub fn chain(entries: &[pb::SeccompFilter], last: u32) -> Result<Vec<(&[u8], u32)>, SeccompError> {
    let mut out = Vec::new();
    let mut at = Some(last);
    while let Some(i) = at {
        let e = entries
            .get(i as usize)
            .ok_or(SeccompError::BadChain { index: i, prev: i })?;
        if let Some(p) = e.prev {
            if p >= i {
                return Err(SeccompError::BadChain { index: i, prev: p });
            }
        }
        out.push((e.filter.as_slice(), e.flags.unwrap_or(0)));
        at = e.prev;
    }
    out.reverse();
    Ok(out)
}

/// The seccomp filters of thread `tid`, oldest first, added to `filters`; the index of its
/// last one.
pub(crate) fn dump_seccomp_chain(
    pid: u32,
    tid: u32,
    filters: &mut Filters,
) -> Result<Option<u32>, DumpError> {
    let mut chain = Vec::new();
    while let Some(f) = ptrace::seccomp_filter(tid, chain.len() as u64).map_err(ptr_err(pid))? {
        chain.push(f);
    }
    chain.reverse();
    Ok(filters
        .add_chain(&chain)
        .map_err(|source| TaskError::DumpSeccomp { pid, tid, source })?)
}

/// How a thread gets its seccomp filters back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Install {
    /// Its own chain, installed by itself.
    Own,
    /// None here: the main thread's TSYNC gives it the process's shared chain.
    FromMain,
    /// The chain every thread shares, installed by the main thread with TSYNC on its last
    /// filter, so that all threads are in one filter tree again (a later TSYNC of the program
    /// needs that, as zdtm's seccomp_filter_tsync does).
    Tsync,
}

/// Installs the thread's seccomp chain, oldest filter first, through a scratch mapping of its
/// own (a filter can be larger than the trampoline's scratch page).
pub(crate) fn restore_seccomp(
    r: &Remote,
    filters: &[pb::SeccompFilter],
    last: u32,
    install: Install,
) -> Result<(), RestoreError> {
    if install == Install::FromMain {
        return Ok(());
    }
    let chain = chain(filters, last).map_err(|source| TaskError::RestoreSeccomp {
        pid: r.pid,
        tid: r.inj.tid,
        source,
    })?;
    const SECCOMP_SET_MODE_FILTER: u64 = 1;
    const SECCOMP_FILTER_FLAG_TSYNC: u32 = 1;
    let n = chain.len();
    for (i, (prog, mut flags)) in chain.into_iter().enumerate() {
        if install == Install::Tsync && i + 1 == n {
            flags |= SECCOMP_FILTER_FLAG_TSYNC;
        }
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
        // TSYNC reports a thread it could not synchronize by its id, not as an error: that
        // thread would run unfiltered.
        let tid = installed?;
        if tid > 0 {
            return Err(TaskError::RestoreSeccomp {
                pid: r.pid,
                tid: r.inj.tid,
                source: SeccompError::Tsync { tid },
            }
            .into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ret(k: u32) -> Vec<u8> {
        let mut v = 0x06u16.to_ne_bytes().to_vec();
        v.extend_from_slice(&[0, 0]);
        v.extend_from_slice(&k.to_ne_bytes());
        v
    }

    #[test]
    fn chains_share_their_common_start() {
        let allow = ret(0x7fff_0000);
        let errno = ret(0x0005_0001);
        let mut f = Filters::default();
        let a = f
            .add_chain(&[(allow.clone(), 0), (errno.clone(), 0)])
            .unwrap();
        let b = f.add_chain(&[(allow.clone(), 0)]).unwrap();
        let c = f
            .add_chain(&[(allow.clone(), 0), (errno.clone(), 0)])
            .unwrap();
        assert_eq!((a, b, c), (Some(1), Some(0), Some(1)));
        assert_eq!(f.entries.len(), 2);
        assert_eq!(
            chain(&f.entries, 1).unwrap(),
            vec![(allow.as_slice(), 0), (errno.as_slice(), 0)]
        );
        assert_eq!(f.add_chain(&[]).unwrap(), None);
    }

    #[test]
    fn user_notification_and_bad_chains_are_refused() {
        let mut f = Filters::default();
        assert_eq!(
            f.add_chain(&[(ret(0x7fc0_0000), 0)]),
            Err(SeccompError::UserNotif)
        );
        let looped = [pb::SeccompFilter {
            filter: ret(0x7fff_0000),
            prev: Some(0),
            flags: None,
        }];
        assert!(chain(&looped, 0).is_err());
        assert!(chain(&looped, 3).is_err());
    }
}
