//! A failed restore gives its pids back at once. The root is the restorer's child; the other
//! tasks it kills would be reparented to init, which may reap them seconds later, and a pid
//! held by a zombie until then is still taken for the next attempt. So while it kills them,
//! the restorer is a child subreaper: they are reparented to it, and it reaps them itself. It
//! is one only then, so the orphans of a restored tree still go where they would have.

use std::time::{Duration, Instant};

/// Makes this process a child subreaper while it lives; sets back what it was on drop.
pub(crate) struct Reaper {
    was: bool,
}

impl Reaper {
    /// `None` if the kernel refuses (the killed tasks then go to init, as before).
    pub(crate) fn start() -> Option<Reaper> {
        let mut was: libc::c_int = 0;
        // SAFETY: PR_GET_CHILD_SUBREAPER writes an int into our local; PR_SET takes an integer.
        let ok = unsafe {
            libc::prctl(libc::PR_GET_CHILD_SUBREAPER, &mut was as *mut libc::c_int) == 0
                && libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1) == 0
        };
        if !ok {
            log::warn!(
                "cannot become a child subreaper ({}): the tasks of a failed restore will be reaped by init",
                std::io::Error::last_os_error()
            );
            return None;
        }
        Some(Reaper { was: was != 0 })
    }

    /// Waits (at most 2 s) until none of `pids` exists, reaping those that are our children:
    /// killed tasks, reparented to us as their parents die.
    pub(crate) fn reap(&self, pids: &[u32]) {
        let end = Instant::now() + Duration::from_secs(2);
        let mut left: Vec<u32> = pids.to_vec();
        while !left.is_empty() && Instant::now() < end {
            left.retain(|&pid| {
                let mut st = 0;
                // SAFETY: waitpid for one pid, status into a local; never blocks.
                let r = unsafe {
                    libc::waitpid(pid as libc::pid_t, &mut st, libc::WNOHANG | libc::__WALL)
                };
                // Not ours (yet: its parent has not died) and still there: look again.
                r == 0 || (r < 0 && std::path::Path::new(&format!("/proc/{pid}")).exists())
            });
            if !left.is_empty() {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if !self.was {
            // SAFETY: prctl with integers.
            unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 0) };
        }
    }
}
