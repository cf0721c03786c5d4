//! The restore side's handle on a task being rebuilt: syscalls injected through ptrace, with
//! the second trampoline page as scratch memory for their arguments.

use crate::restore::{ptr_err, RestoreError};
use crate::sys::mem::{self, PAGE_SIZE};
use crate::sys::ptrace::Injector;

/// Injection into one restoring thread, with the second trampoline page as scratch memory.
pub(crate) struct Remote {
    pub(crate) pid: u32,
    pub(crate) inj: Injector,
    pub(crate) scratch: u64,
}

impl Remote {
    pub(crate) fn new(pid: u32, trampoline: u64, quiet: bool) -> Result<Self, RestoreError> {
        Self::new_for_thread(pid, pid, trampoline, quiet)
    }
    pub(crate) fn new_for_thread(
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
    pub(crate) fn raw(&self, nr: i64, args: &[u64]) -> Result<i64, RestoreError> {
        self.inj.raw(nr, args).map_err(ptr_err(self.pid))
    }
    /// Writes `data` at scratch + `off`, returns its address in the task.
    pub(crate) fn put(&self, off: u64, data: &[u8]) -> Result<u64, RestoreError> {
        mem::write(self.pid, self.scratch + off, data)?;
        Ok(self.scratch + off)
    }
    /// Moves the task's fd `new` (one it just opened) to number `target`, with
    /// close-on-exec as `cloexec` says: what the task had there is replaced.
    pub(crate) fn place_fd(
        &self,
        new: i64,
        target: i32,
        cloexec: bool,
    ) -> Result<(), RestoreError> {
        let flags = if cloexec { libc::O_CLOEXEC as u64 } else { 0 };
        self.call(libc::SYS_dup3, &[new as u64, target as u64, flags])?;
        self.call(libc::SYS_close, &[new as u64])?;
        Ok(())
    }
    pub(crate) fn put_words(&self, off: u64, words: &[u64]) -> Result<u64, RestoreError> {
        let b: Vec<u8> = words.iter().flat_map(|w| w.to_ne_bytes()).collect();
        self.put(off, &b)
    }
}
