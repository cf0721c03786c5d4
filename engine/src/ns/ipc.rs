//! A tree that owns its IPC namespace (`unshare --ipc`, every container): all its System V
//! objects, POSIX message queues and IPC sysctls belong to it and are dumped, used or not.
//!
//! The kernel picks the namespace of `/proc/sysvipc/*`, `/proc/sys/kernel/{msg,sem,shm}*`,
//! `/proc/sys/fs/mqueue/*`, `msgget`/`shmat`/`mq_open` from the calling *thread*. So the dump
//! does its IPC work in a scoped thread that has `setns`'d into the tree's namespace, and the
//! restore `unshare`s the restoring thread before it builds anything: objects, sysctls and the
//! root task (which `clone3` puts in the new namespace) all land there, and the thread goes
//! back to its own namespace when the restore ends. POSIX queues nobody holds open are listed
//! through a detached mount of the namespace's mqueue filesystem (`fsopen`/`fsmount`), which
//! changes no mount table.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use nix::sched::{setns, unshare, CloneFlags};

use crate::images::pb;

/// The IPC namespace could not be inspected, entered, or made again.
#[derive(Debug, thiserror::Error)]
pub enum IpcNsError {
    #[error("process {pid} is in another IPC namespace than the root of the tree ({pid_ns} vs {root_ns}), which is not supported")]
    Mixed {
        pid: u32,
        pid_ns: String,
        root_ns: String,
    },
    #[error("reading {path} failed")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: unexpected value {value:?}")]
    BadValue { path: String, value: String },
    #[error("setting {path} to {value} failed")]
    Write {
        path: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("joining the tree's namespace ({flag:#x}) failed")]
    Join {
        flag: libc::c_int,
        #[source]
        source: std::io::Error,
    },
    #[error("creating a {kind} namespace failed")]
    Unshare {
        kind: String,
        #[source]
        source: std::io::Error,
    },
    #[error("listing the POSIX message queues: {step} failed")]
    Mqueue {
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
}

fn read_err(path: impl Into<String>) -> impl FnOnce(std::io::Error) -> IpcNsError {
    let path = path.into();
    move |source| IpcNsError::Read { path, source }
}

fn mqueue_err(step: &'static str) -> impl FnOnce(std::io::Error) -> IpcNsError {
    move |source| IpcNsError::Mqueue { step, source }
}

/// The image id of the dumper's own IPC namespace, and of a namespace the tree owns (CRIU
/// numbers namespaces in the order it meets them; its own come first).
pub const HOST_NS_ID: u32 = 1;
pub const TREE_NS_ID: u32 = 2;

fn ns_ino(path: &str) -> Result<(u64, u64), IpcNsError> {
    let md = std::fs::metadata(path).map_err(read_err(path))?;
    Ok((md.dev(), md.ino()))
}

/// The tree's IPC namespace when it is not ours: open, ready for [`in_ns`]. Every live task must
/// be in it; a process outside the tree in it too is named in a warning.
pub fn tree_ns(root: u32, tasks: &[u32]) -> Result<Option<OwnedFd>, IpcNsError> {
    let root_path = format!("/proc/{root}/ns/ipc");
    let root_ns = ns_ino(&root_path)?;
    if root_ns == ns_ino("/proc/thread-self/ns/ipc")? {
        return Ok(None);
    }
    let name = |pid: u32| {
        std::fs::read_link(format!("/proc/{pid}/ns/ipc"))
            .map(|l| l.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    for &pid in tasks {
        if ns_ino(&format!("/proc/{pid}/ns/ipc"))? != root_ns {
            return Err(IpcNsError::Mixed {
                pid,
                pid_ns: name(pid),
                root_ns: name(root),
            });
        }
    }
    let me = std::process::id();
    let procs = std::fs::read_dir("/proc").map_err(read_err("/proc"))?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me || tasks.contains(&pid) {
            continue;
        }
        // Zombies have no namespaces left; gone processes fail to stat: both are fine.
        if ns_ino(&format!("/proc/{pid}/ns/ipc")).ok() == Some(root_ns) {
            // A podman pod's containers share their infra container's namespace: CRIU dumps
            // it as the tree's, and runc has the restore join it again (join_ns), where the
            // objects that outlived the tree are reused. Without a join, the restored tree
            // gets a namespace of its own holding copies.
            log::warn!(
                "the tree's IPC namespace {} is also used by pid {pid}, outside the tree: \
                 dumped as the tree's; a restore should join it again (--join-ns ipc:PATH)",
                name(root)
            );
            break;
        }
    }
    let fd = std::fs::File::open(&root_path).map_err(read_err(root_path))?;
    Ok(Some(fd.into()))
}

/// Runs `f` on a thread that has joined the IPC namespace `ns`.
pub fn in_ns<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> T + Send) -> Result<T, IpcNsError> {
    in_ns_of(ns, libc::CLONE_NEWIPC, f)
}

/// Runs `f` on a thread that has joined namespace `ns` of kind `flag` (IPC or UTS: kinds a
/// thread may join alone).
pub fn in_ns_of<T: Send>(
    ns: &OwnedFd,
    flag: libc::c_int,
    f: impl FnOnce() -> T + Send,
) -> Result<T, IpcNsError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            // setns(2) of IPC or UTS changes only this thread's namespace.
            setns(ns.as_fd(), CloneFlags::from_bits_retain(flag)).map_err(|e| {
                IpcNsError::Join {
                    flag,
                    source: e.into(),
                }
            })?;
            Ok(f())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// The calling thread in a new namespace until dropped, when it goes back to its own.
pub struct Unshared {
    own: OwnedFd,
    flag: libc::c_int,
}

impl Unshared {
    /// A new IPC namespace.
    pub fn new() -> Result<Unshared, IpcNsError> {
        Unshared::new_of(libc::CLONE_NEWIPC, "ipc")
    }

    /// A new namespace of kind `flag`, named `kind` as in /proc/<pid>/ns.
    pub fn new_of(flag: libc::c_int, kind: &str) -> Result<Unshared, IpcNsError> {
        let path = format!("/proc/thread-self/ns/{kind}");
        let own: OwnedFd = std::fs::File::open(&path).map_err(read_err(path))?.into();
        // unshare(2) of a namespace that a thread may have alone: affects this thread only.
        unshare(CloneFlags::from_bits_retain(flag)).map_err(|e| IpcNsError::Unshare {
            kind: kind.to_string(),
            source: e.into(),
        })?;
        Ok(Unshared { own, flag })
    }
}

impl Unshared {
    /// The calling thread in the namespace `target` (of kind `flag`, named `kind`) until
    /// dropped.
    pub fn enter(
        target: std::os::fd::BorrowedFd<'_>,
        flag: libc::c_int,
        kind: &str,
    ) -> Result<Unshared, IpcNsError> {
        let path = format!("/proc/thread-self/ns/{kind}");
        let own: OwnedFd = std::fs::File::open(&path).map_err(read_err(path))?.into();
        setns(target, CloneFlags::from_bits_retain(flag)).map_err(|e| IpcNsError::Unshare {
            kind: kind.to_string(),
            source: e.into(),
        })?;
        Ok(Unshared { own, flag })
    }
}

impl Drop for Unshared {
    fn drop(&mut self) {
        // Back into the namespace we came from, through our own fd. Drop cannot return the
        // error: it is logged, and the thread stays in the new namespace.
        if let Err(e) = setns(self.own.as_fd(), CloneFlags::from_bits_retain(self.flag)) {
            log::error!("going back to our own namespace ({:#x}): {e}", self.flag);
        }
    }
}

/// A sysctl's value, read in one read(2): a sysctl file read in pieces may end early
/// (kernel.sem with long values read as 32 bytes, then end of file, losing semmni), and
/// read_to_string starts with a 32-byte probe.
fn read_knob(path: &str) -> Result<String, IpcNsError> {
    use std::io::Read;
    let mut buf = vec![0u8; 4096];
    let n = std::fs::File::open(path)
        .and_then(|mut f| f.read(&mut buf))
        .map_err(read_err(path))?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

fn knob<T: std::str::FromStr>(path: &str) -> Result<T, IpcNsError> {
    let s = read_knob(path)?;
    s.parse().map_err(|_| IpcNsError::BadValue {
        path: path.to_string(),
        value: s,
    })
}

/// A next-id knob: -1 (the kernel picks) is left out.
fn next_id(path: &str) -> Result<Option<u32>, IpcNsError> {
    let v: i64 = knob(path)?;
    Ok(u32::try_from(v).ok())
}

const K: &str = "/proc/sys/kernel/";
const MQ: &str = "/proc/sys/fs/mqueue/";

/// The calling thread's IPC sysctls, as CRIU's `ipc_var_entry`.
pub fn read_vars() -> Result<pb::IpcVarEntry, IpcNsError> {
    let sem_path = format!("{K}sem");
    let sem = read_knob(&sem_path)?;
    let sem_ctls = sem
        .split_whitespace()
        .map(|v| v.parse::<u32>())
        .collect::<Result<Vec<u32>, _>>()
        .map_err(|_| IpcNsError::BadValue {
            path: sem_path,
            value: sem.clone(),
        })?;
    Ok(pb::IpcVarEntry {
        sem_ctls,
        msg_ctlmax: knob(&format!("{K}msgmax"))?,
        msg_ctlmnb: knob(&format!("{K}msgmnb"))?,
        msg_ctlmni: knob(&format!("{K}msgmni"))?,
        auto_msgmni: knob(&format!("{K}auto_msgmni"))?,
        shm_ctlmax: knob(&format!("{K}shmmax"))?,
        shm_ctlall: knob(&format!("{K}shmall"))?,
        shm_ctlmni: knob(&format!("{K}shmmni"))?,
        shm_rmid_forced: knob(&format!("{K}shm_rmid_forced"))?,
        mq_queues_max: knob(&format!("{MQ}queues_max"))?,
        mq_msg_max: knob(&format!("{MQ}msg_max"))?,
        mq_msgsize_max: knob(&format!("{MQ}msgsize_max"))?,
        mq_msg_default: Some(knob(&format!("{MQ}msg_default"))?),
        mq_msgsize_default: Some(knob(&format!("{MQ}msgsize_default"))?),
        msg_next_id: next_id(&format!("{K}msg_next_id"))?,
        sem_next_id: next_id(&format!("{K}sem_next_id"))?,
        shm_next_id: next_id(&format!("{K}shm_next_id"))?,
    })
}

fn write_knob(path: &str, value: &str) -> Result<(), IpcNsError> {
    std::fs::write(path, value).map_err(|source| IpcNsError::Write {
        path: path.to_string(),
        value: value.to_string(),
        source,
    })
}

/// Sets the limits of `v` in the calling thread's (new) namespace, before objects are made.
/// `auto_msgmni` is left alone: the kernel ignores it since Linux 3.19.
pub fn write_limits(v: &pb::IpcVarEntry) -> Result<(), IpcNsError> {
    if v.sem_ctls.len() == 4 {
        let sem: Vec<String> = v.sem_ctls.iter().map(u32::to_string).collect();
        write_knob(&format!("{K}sem"), &sem.join(" "))?;
    }
    for (name, val) in [
        ("msgmax", v.msg_ctlmax as u64),
        ("msgmnb", v.msg_ctlmnb as u64),
        ("msgmni", v.msg_ctlmni as u64),
        ("shmmax", v.shm_ctlmax),
        ("shmall", v.shm_ctlall),
        ("shmmni", v.shm_ctlmni as u64),
        ("shm_rmid_forced", v.shm_rmid_forced as u64),
    ] {
        write_knob(&format!("{K}{name}"), &val.to_string())?;
    }
    // The maxima before the defaults, which must not exceed them.
    for (name, val) in [
        ("queues_max", Some(v.mq_queues_max)),
        ("msg_max", Some(v.mq_msg_max)),
        ("msgsize_max", Some(v.mq_msgsize_max)),
        ("msg_default", v.mq_msg_default),
        ("msgsize_default", v.mq_msgsize_default),
    ] {
        if let Some(val) = val {
            write_knob(&format!("{MQ}{name}"), &val.to_string())?;
        }
    }
    Ok(())
}

/// Sets the next-id knobs of `v`, once every object has been made with its own id.
pub fn write_next_ids(v: &pb::IpcVarEntry) -> Result<(), IpcNsError> {
    for (name, val) in [
        ("msg_next_id", v.msg_next_id),
        ("sem_next_id", v.sem_next_id),
        ("shm_next_id", v.shm_next_id),
    ] {
        if let Some(val) = val {
            write_knob(&format!("{K}{name}"), &val.to_string())?;
        }
    }
    Ok(())
}

/// The calling thread's mqueue filesystem, mounted nowhere: (its root, the queue names without
/// the leading '/'). Paths under `/proc/self/fd/<root>/` reach the queues.
pub fn mqueue_root() -> Result<(OwnedFd, Vec<String>), IpcNsError> {
    let fs = crate::sys::mount::fsopen(c"mqueue").map_err(mqueue_err("fsopen"))?;
    crate::sys::mount::fsconfig_create(fs.as_fd()).map_err(mqueue_err("fsconfig"))?;
    let mfd = crate::sys::mount::fsmount(fs.as_fd()).map_err(mqueue_err("fsmount"))?;
    let dir = format!("/proc/self/fd/{}", mfd.as_raw_fd());
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .map_err(mqueue_err("reading its root"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()
        .map_err(mqueue_err("reading its root"))?;
    names.sort();
    Ok((mfd, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vars_of_this_namespace_read_back() {
        // Every knob exists on the kernels we run on; values are whatever this host has.
        let v = read_vars().expect("ipc sysctls readable");
        assert_eq!(v.sem_ctls.len(), 4);
        assert!(v.mq_msg_max >= 1);
    }
}
