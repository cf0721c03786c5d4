//! A tree that owns its PID namespace: the root is that namespace's init (pid 1 inside), as a
//! container's init is.
//!
//! Images hold the pids the tasks see (CRIU's "virtual" pids): core-1.img is the init. The dump
//! works on host pids throughout and turns them into the tree's own at the few places a pid is
//! written ([`PidView`]). The restore forks the root with `CLONE_NEWPID` and `set_tid = {1}`, its
//! stubs fork their children inside with the pids of the images, and the rest of the restore
//! runs in a worker process forked *into* the new namespace, with a /proc of its own: there
//! the images' pids are the pids ptrace, kill and /proc take, so the restore steps need no
//! translation at all ([`run_inside`]).

use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::MetadataExt;

use crate::proc;

#[derive(Debug, thiserror::Error)]
pub enum PidNsError {
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid} is in a pid namespace of its own whose init is not the tree's root: dump the namespace's init, or declare the namespace external (--external pid[INODE]:KEY)")]
    NotInit { pid: u32 },
    #[error(
        "process {pid} is {depth} pid namespaces deep: nested pid namespaces are not supported yet"
    )]
    Nested { pid: u32, depth: usize },
    #[error("process {pid} is in the tree's pid namespace without being in the tree (entered it with setns, as `runc exec` does): it would be lost")]
    Outsider { pid: u32 },
    #[error("process {pid} of the tree is not in the root's pid namespace")]
    Mixed { pid: u32 },
    #[error("{what}")]
    Proc {
        what: String,
        #[source]
        source: proc::ProcError,
    },
    #[error("{what}")]
    Setup {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("restore inside the pid namespace: {0}")]
    Worker(String),
}

/// Image ids: the dumper's pid namespace and one the tree owns (after IPC's, UTS's, net's).
pub const HOST_NS_ID: u32 = 7;
pub const TREE_NS_ID: u32 = 8;

/// Host pid → the pid the tree sees, for every task and thread; identity when the tree is in
/// our own namespace.
#[derive(Debug, Default, Clone)]
pub struct PidView {
    inner: Option<HashMap<u32, u32>>,
    /// The namespace is not the tree's own but declared external under this key.
    external: Option<String>,
}

impl PidView {
    /// The pid the tree sees for host pid `host` (itself when there is no namespace; 0 for a
    /// pid outside the namespace, which is what the tree sees of it, as for the init's parent).
    pub fn v(&self, host: u32) -> u32 {
        match &self.inner {
            None => host,
            Some(m) => m.get(&host).copied().unwrap_or(0),
        }
    }

    /// The tree's pids are ours (no pid namespace of its own, nor an external one).
    pub fn is_ours(&self) -> bool {
        self.inner.is_none()
    }

    pub fn owns_namespace(&self) -> bool {
        self.inner.is_some()
    }

    /// The key the namespace was declared external under, if it was.
    pub fn external_key(&self) -> Option<&str> {
        self.external.as_deref()
    }

    #[cfg(test)]
    pub fn from_pairs(pairs: &[(u32, u32)]) -> Self {
        PidView {
            inner: Some(pairs.iter().copied().collect()),
            external: None,
        }
    }
}

fn ns_id(path: &str) -> Result<(u64, u64), PidNsError> {
    std::fs::metadata(path)
        .map(|m| (m.dev(), m.ino()))
        .map_err(|source| PidNsError::Read {
            path: path.to_string(),
            source,
        })
}

/// The tree's view of pids when its root is the init of a pid namespace of its own (one level
/// below ours), or in one declared external (`(inode, key)`, runc's extRootPidNS: then the
/// root need not be the init and other processes may share it); identity when the tree is in
/// ours. `live`: every live task; their threads are listed here. `zombies`: the tree's zombies
/// (a zombie still has its pids until reaped). Refuses a namespace the tree does not wholly
/// own and that is not declared external.
pub fn tree_view(
    root: u32,
    live: &[u32],
    zombies: &[u32],
    external: &[(u64, String)],
) -> Result<PidView, PidNsError> {
    let root_ns = ns_id(&format!("/proc/{root}/ns/pid"))?;
    if root_ns == ns_id("/proc/thread-self/ns/pid")? {
        return Ok(PidView::default());
    }
    let ext_key = external
        .iter()
        .find(|(ino, _)| *ino == root_ns.1)
        .map(|(_, k)| k.clone());
    let mut map = HashMap::new();
    // Each process's group and session ids at both levels (its main thread's status).
    let mut groups = Vec::new();
    for &pid in live {
        if ns_id(&format!("/proc/{pid}/ns/pid"))? != root_ns {
            return Err(PidNsError::Mixed { pid });
        }
        let tids = proc::tids(pid).map_err(|source| PidNsError::Proc {
            what: format!("threads of process {pid}"),
            source,
        })?;
        for tid in tids {
            let st = proc::thread_status(pid, tid).map_err(|source| PidNsError::Proc {
                what: format!("status of thread {tid}"),
                source,
            })?;
            if tid == pid {
                groups.extend([st.nspgid.clone(), st.nssid.clone()]);
            }
            match st.nspid.as_slice() {
                [host, inner] if *host == tid => {
                    map.insert(tid, *inner);
                }
                [_] => return Err(PidNsError::Mixed { pid }),
                v => {
                    return Err(PidNsError::Nested {
                        pid,
                        depth: v.len().saturating_sub(1),
                    })
                }
            }
        }
    }
    for &pid in zombies {
        let st = proc::status(pid).map_err(|source| PidNsError::Proc {
            what: format!("status of zombie {pid}"),
            source,
        })?;
        if let [host, inner] = st.nspid.as_slice() {
            if *host == pid {
                map.insert(pid, *inner);
            }
        }
        groups.extend([st.nspgid, st.nssid]);
    }
    // A process group or session whose leader is gone has no task to name it: its ids at
    // both levels come from a member's status.
    for ids in &groups {
        if let [host, inner] = ids.as_slice() {
            map.entry(*host).or_insert(*inner);
        }
    }
    if ext_key.is_some() {
        return Ok(PidView {
            inner: Some(map),
            external: ext_key,
        });
    }
    if map.get(&root) != Some(&1) {
        return Err(PidNsError::NotInit { pid: root });
    }
    refuse_outsiders(root_ns, &map)?;
    Ok(PidView {
        inner: Some(map),
        external: None,
    })
}

/// A process that joined the namespace from outside (setns) is not a descendant of its init:
/// the dump would miss it and the restore could not bring it back.
fn refuse_outsiders(ns: (u64, u64), tree: &HashMap<u32, u32>) -> Result<(), PidNsError> {
    let rd = std::fs::read_dir("/proc").map_err(|source| PidNsError::Read {
        path: "/proc".into(),
        source,
    })?;
    for e in rd.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if tree.contains_key(&pid) {
            continue;
        }
        // A zombie holds nothing to lose: a child of the tree that exited while its parent
        // was being seized (a shell's `sleep`) is dumped as the tree's zombie, and one from
        // outside is gone once reaped.
        if proc::stat(pid).is_ok_and(|st| st.state == 'Z') {
            continue;
        }
        // Gone meanwhile, or a kernel thread: not in the namespace.
        let Ok(m) = std::fs::metadata(format!("/proc/{pid}/ns/pid")) else {
            continue;
        };
        if (m.dev(), m.ino()) == ns {
            return Err(PidNsError::Outsider { pid });
        }
    }
    Ok(())
}

/// The pid the restore gives its worker inside the new namespace: the highest below pid_max
/// that no task or thread of the images takes (they are all made before it, but threads are
/// cloned while it runs).
pub fn worker_pid(taken: &[u32]) -> u32 {
    let max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(32768);
    (2..max).rev().find(|p| !taken.contains(p)).unwrap_or(2)
}

/// Runs `work` in a process forked into the pid namespace of `init` (a host pid) as pid
/// `inner_pid`, with a mount namespace and a /proc of its own (so /proc/<pid> means the
/// namespace's pids), and returns what it reported: Ok(a number) or its error's text.
///
/// The fork is a raw clone3 from a short-lived thread that joined the namespace for its
/// children (setns(CLONE_NEWPID) works in a multi-threaded process and changes only that
/// thread's pid_for_children). The child runs `work` on a copy of our memory and reports
/// through a pipe; it never returns.
pub fn run_inside(
    init: u32,
    inner_pid: u32,
    work: impl FnOnce() -> Result<u64, String>,
) -> Result<u64, PidNsError> {
    let setup = |what| move |source| PidNsError::Setup { what, source };
    let pidfd =
        crate::sys::pidfd::pidfd_open(init).map_err(setup("pidfd_open of the namespace's init"))?;
    let (r, w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(|e| PidNsError::Setup {
            what: "pipe",
            source: e.into(),
        })?;
    let w_raw = w.as_raw_fd();
    let mut work = Some(work);
    let work_ptr = ForChildOnly(&mut work as *mut Option<_>);
    let pid = std::thread::scope(|s| {
        s.spawn(move || {
            let work_ptr = work_ptr;
            nix::sched::setns(&pidfd, nix::sched::CloneFlags::CLONE_NEWPID).map_err(|e| {
                PidNsError::Setup {
                    what: "setns into the tree's pid namespace",
                    source: e.into(),
                }
            })?;
            // In a namespace that is not the tree's own (external), other processes may hold
            // the pid: the next lower free one does as well.
            let mut pid = inner_pid;
            let forked = loop {
                let r = crate::sys::clone::fork_with_pid(pid, 0);
                if r == -(libc::EEXIST as i64) && pid > 2 && inner_pid - pid < 256 {
                    pid -= 1;
                    continue;
                }
                break r;
            };
            match forked {
                0 => {
                    // SAFETY: this is the forked child, a process of its own with a copy of
                    // our memory: the pointer is to its copy of `work`, which nothing else in
                    // it touches. The parent's thread never dereferences it.
                    let work = unsafe { (*work_ptr.0).take() };
                    worker_main(w_raw, work)
                }
                p if p < 0 => Err(PidNsError::Setup {
                    what: "clone3 of the worker in the tree's pid namespace",
                    source: std::io::Error::from_raw_os_error((-p) as i32),
                }),
                p => Ok(p as libc::pid_t),
            }
        })
        .join()
        .unwrap_or_else(|_| Err(PidNsError::Worker("the forking thread panicked".into())))
    })?;
    drop(w);
    let mut report = Vec::new();
    let mut f = std::fs::File::from(r);
    let _ = std::io::Read::read_to_end(&mut f, &mut report);
    let mut st = 0;
    // SAFETY: waitpid of the child just forked, into a local.
    unsafe { libc::waitpid(pid, &mut st, libc::__WALL) };
    let text = String::from_utf8_lossy(&report);
    match text.split_once(' ') {
        Some(("ok", n)) => n
            .trim()
            .parse()
            .map_err(|_| PidNsError::Worker(format!("bad report {text:?}"))),
        Some(("err", msg)) => Err(PidNsError::Worker(msg.to_string())),
        _ => Err(PidNsError::Worker(format!(
            "the worker died without a report (wait status {st:#x})"
        ))),
    }
}

/// Runs `fork` (a raw clone3 that returns its result) with this thread's children going into
/// the pid namespace `ns` (an nsfs fd), then puts this thread's back where they were. Only the
/// calling thread's pid_for_children changes, and only for the call.
pub fn fork_in(ns: RawFd, fork: impl FnOnce() -> i64) -> std::io::Result<i64> {
    use std::os::fd::BorrowedFd;
    let ours = std::fs::File::open("/proc/thread-self/ns/pid_for_children")?;
    // SAFETY: `ns` is the caller's open fd, valid for this call.
    let target = unsafe { BorrowedFd::borrow_raw(ns) };
    nix::sched::setns(target, nix::sched::CloneFlags::CLONE_NEWPID)?;
    let r = fork();
    if r != 0 {
        // The parent (the child never returns here): back to our own namespace's children.
        nix::sched::setns(&ours, nix::sched::CloneFlags::CLONE_NEWPID)?;
    }
    Ok(r)
}

/// A pointer handed to the forking thread for the forked child alone (see `run_inside`).
struct ForChildOnly<T>(*mut T);
// SAFETY: only the child process dereferences it, in its own copy of the address space.
unsafe impl<T> Send for ForChildOnly<T> {}

/// The worker's life: its own mount namespace with the new namespace's /proc, the work, the
/// report, exit.
fn worker_main(report_fd: i32, work: Option<impl FnOnce() -> Result<u64, String>>) -> ! {
    let result = own_proc().and_then(|()| match work {
        Some(work) => work(),
        None => Err("no work".into()),
    });
    let msg = match result {
        Ok(n) => format!("ok {n}"),
        Err(e) => format!("err {e}"),
    };
    // SAFETY: the pipe's write end is ours (inherited by the clone); wrapping it closes it at
    // the end of this scope.
    let mut f = std::fs::File::from(unsafe { OwnedFd::from_raw_fd(report_fd) });
    let _ = std::io::Write::write_all(&mut f, msg.as_bytes());
    drop(f);
    // SAFETY: _exit ends this forked copy without running the parent's atexit handlers or
    // destructors of state it shares by copy.
    unsafe { libc::_exit(0) }
}

/// A private mount namespace whose /proc is the current pid namespace's.
fn own_proc() -> Result<(), String> {
    use nix::mount::{mount, MsFlags};
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("unshare(CLONE_NEWNS): {e}"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| format!("making / private: {e}"))?;
    mount(
        Some("proc"),
        "/proc",
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| format!("mounting /proc of the tree's pid namespace: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_maps_and_defaults() {
        let v = PidView::from_pairs(&[(500, 1), (501, 2)]);
        assert_eq!(v.v(500), 1);
        assert_eq!(v.v(501), 2);
        assert_eq!(v.v(7), 0, "outside the namespace reads as 0");
        assert!(v.owns_namespace());
        let id = PidView::default();
        assert_eq!(id.v(7), 7);
        assert!(!id.owns_namespace());
    }

    #[test]
    fn worker_pid_avoids_taken() {
        let max = std::fs::read_to_string("/proc/sys/kernel/pid_max")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .unwrap_or(32768);
        assert_eq!(worker_pid(&[max - 1]), max - 2);
        assert_eq!(worker_pid(&[1, 2]), max - 1);
    }
}
