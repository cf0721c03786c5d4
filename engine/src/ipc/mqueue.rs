//! POSIX message queues of the host's IPC namespace that the tree holds open. A queue is a file
//! of the mqueue filesystem: its fd is kept as a regular-file entry named `/dev/mqueue/<name>`
//! (where that filesystem is conventionally mounted), and its attributes and messages go to
//! `posix-mqueue.img`, in the format of CRIU's SysV message queue image so crit decodes it.
//! The entry's fields are reused as follows: `desc.id` is the file id of the queue's entry in
//! `files.img`, `desc.key` the queue's maximum message count, `qbytes` its maximum message size,
//! and each message's `mtype` its priority.
//!
//! Messages are read by receiving them all and sending them back in the order received, which
//! rebuilds the same queue (priority order, FIFO within a priority): the tree is stopped, and a
//! queue that a process outside the tree holds open, or that has a notification registered
//! (sending to it could fire the notification), is refused.

use std::collections::HashSet;
use std::ffi::CString;
use std::io;
use std::os::unix::fs::MetadataExt;

use nix::mqueue::{mq_close, mq_getattr, mq_open, mq_receive, mq_send, MQ_OFlag, MqAttr, MqdT};
use nix::sys::stat::{fchmod, Mode};
use nix::unistd::{fchown, Gid, Uid};

use crate::images::pb;

/// Where regular-file entries of queues point; the queue's name follows.
pub const PATH_PREFIX: &str = "/dev/mqueue";

/// A POSIX message queue could not be saved or made again.
#[derive(Debug, thiserror::Error)]
pub enum MqError {
    #[error("POSIX message queue {name} is also open in pid {pid}, outside the tree")]
    Shared { name: String, pid: u32 },
    #[error("POSIX message queue {name} has a notification registered by pid {pid} (mq_notify), which is not supported yet")]
    Notify { name: String, pid: u32 },
    #[error("POSIX message queue {name}: {step} failed")]
    Sys {
        name: String,
        step: Step,
        #[source]
        source: io::Error,
    },
    #[error("POSIX message queue name {name:?} holds a NUL byte")]
    BadName { name: String },
    #[error(
        "listing the open files of pid {pid} (looking for users of POSIX message queues) failed"
    )]
    Scan {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// The step on a queue that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Step {
    #[error("inspecting its file")]
    Inspect,
    #[error("reading its status")]
    Status,
    #[error("opening it")]
    Open,
    #[error("reading its attributes")]
    Attributes,
    #[error("reading its messages")]
    Receive,
    #[error("putting its messages back")]
    PutBack,
    #[error("creating it")]
    Create,
    #[error("setting its owner and mode")]
    Owner,
    #[error("refilling it")]
    Refill,
}

fn sys(name: &str, step: Step) -> impl FnOnce(io::Error) -> MqError + '_ {
    move |source| MqError::Sys {
        name: name.to_string(),
        step,
        source,
    }
}

fn cname(name: &str) -> Result<CString, MqError> {
    CString::new(name).map_err(|_| MqError::BadName { name: name.into() })
}

/// An open queue descriptor, closed when dropped (nix's `MqdT` does not close itself).
struct Mq(Option<MqdT>);

impl Mq {
    fn get(&self) -> &MqdT {
        self.0.as_ref().expect("open until dropped")
    }
}

impl Drop for Mq {
    fn drop(&mut self) {
        if let Some(mqd) = self.0.take() {
            // Closing an fd we own only fails for a bad fd, which ours is not.
            let _ = mq_close(mqd);
        }
    }
}

/// A queue as saved: its entry (see the module comment) and messages as (priority, text).
pub type Queue = crate::ipc::sysv::Queue;

/// NOTIFY_PID from the status line that reading a queue's file gives
/// ("QSIZE:... NOTIFY:... SIGNO:... NOTIFY_PID:...").
pub fn notify_pid(status: &str) -> u32 {
    status
        .split_whitespace()
        .find_map(|w| w.strip_prefix("NOTIFY_PID:"))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The queue's name ("/name") from an fd link: "/name" when opened with `mq_open`, or its path
/// where the mqueue filesystem is mounted (queues are flat, so the last component).
pub fn queue_name(link: &str) -> String {
    format!("/{}", link.rsplit('/').next().unwrap_or(link))
}

/// Saves queue `name` ("/name") as file `file_id`; `fd_path` reaches the queue's file (an fd
/// link in /proc, or a path in the mqueue filesystem). Outside users must have been refused
/// first ([`refuse_outside_users`]).
pub fn dump(fd_path: &str, name: &str, file_id: u32) -> Result<Queue, MqError> {
    let md = std::fs::metadata(fd_path).map_err(sys(name, Step::Inspect))?;
    let status = std::fs::read_to_string(fd_path).map_err(sys(name, Step::Status))?;
    let notifier = notify_pid(&status);
    if notifier != 0 {
        return Err(MqError::Notify {
            name: name.into(),
            pid: notifier,
        });
    }

    let mqd = Mq(Some(
        mq_open(
            cname(name)?.as_c_str(),
            MQ_OFlag::O_RDWR | MQ_OFlag::O_NONBLOCK,
            Mode::empty(),
            None,
        )
        .map_err(|e| sys(name, Step::Open)(e.into()))?,
    ));
    let attr = mq_getattr(mqd.get()).map_err(|e| sys(name, Step::Attributes)(e.into()))?;
    let mut msgs = Vec::new();
    let mut buf = vec![0u8; attr.msgsize() as usize];
    for _ in 0..attr.curmsgs() {
        let mut prio = 0u32;
        match mq_receive(mqd.get(), &mut buf, &mut prio) {
            Ok(n) => msgs.push((prio as u64, buf[..n].to_vec())),
            Err(e) => {
                // Best effort: the receive error is the one reported.
                let _ = put_back(mqd.get(), &msgs);
                return Err(sys(name, Step::Receive)(e.into()));
            }
        }
    }
    put_back(mqd.get(), &msgs).map_err(sys(name, Step::PutBack))?;
    let entry = pb::IpcMsgEntry {
        desc: pb::IpcDescEntry {
            key: attr.maxmsg() as u32,
            uid: md.uid(),
            gid: md.gid(),
            cuid: md.uid(),
            cgid: md.gid(),
            mode: md.mode() & 0o7777,
            id: file_id,
        },
        qbytes: attr.msgsize() as u32,
        qnum: msgs.len() as u32,
    };
    Ok((entry, msgs))
}

/// Sends `msgs` back in order; stops at the first error.
fn put_back(mqd: &MqdT, msgs: &[(u64, Vec<u8>)]) -> io::Result<()> {
    for (prio, text) in msgs {
        mq_send(mqd, text, *prio as u32)?;
    }
    Ok(())
}

/// The identity of queue `name` whose file `path` reaches, for [`refuse_outside_users`].
pub fn identity(path: &str, name: &str) -> Result<(String, u64, u64), MqError> {
    let md = std::fs::metadata(path).map_err(sys(name, Step::Inspect))?;
    Ok((name.to_string(), md.dev(), md.ino()))
}

/// Fails if a live process outside the tree has one of `wanted` ((name, dev, inode), see
/// [`identity`]) open: one pass over every process's fds, stat'ing only links whose last
/// component is a queue's name.
pub fn refuse_outside_users(
    wanted: &[(String, u64, u64)],
    tree: &HashSet<u32>,
) -> Result<(), MqError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let procs = std::fs::read_dir("/proc").map_err(|source| MqError::Scan { pid: 0, source })?;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if tree.contains(&pid) || pid == std::process::id() {
            continue;
        }
        // A process that is gone (or a zombie, without fds) holds no queue.
        let fds = match std::fs::read_dir(format!("/proc/{pid}/fd")) {
            Ok(fds) => fds,
            Err(e) if skip(pid, &e) => continue,
            Err(source) => return Err(MqError::Scan { pid, source }),
        };
        for f in fds.flatten() {
            // An fd closed meanwhile holds nothing either.
            let link = match std::fs::read_link(f.path()) {
                Ok(link) => link,
                Err(e) if skip(pid, &e) => continue,
                Err(source) => return Err(MqError::Scan { pid, source }),
            };
            let name = queue_name(&link.to_string_lossy());
            let Some((qname, dev, ino)) = wanted.iter().find(|w| w.0 == name) else {
                continue;
            };
            let m = match std::fs::metadata(f.path()) {
                Ok(m) => m,
                Err(e) if skip(pid, &e) => continue,
                Err(source) => return Err(MqError::Scan { pid, source }),
            };
            if m.dev() == *dev && m.ino() == *ino {
                return Err(MqError::Shared {
                    name: qname.to_string(),
                    pid,
                });
            }
        }
    }
    Ok(())
}

/// Whether a failed /proc lookup of `pid`'s fds is one to pass over: the process or fd went
/// away, or even root may not look (the init of an enclosing sandbox, a process of another
/// user namespace: /proc/1/fd here). The latter cannot be checked at all; it is skipped, as it
/// always was, and logged.
fn skip(pid: u32, e: &io::Error) -> bool {
    if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ESRCH) {
        return true;
    }
    if e.kind() == io::ErrorKind::PermissionDenied {
        log::debug!("pid {pid}: its fds cannot be read ({e}); not checked for queue users");
        return true;
    }
    false
}

/// Makes every queue exist: one that outlived the tree (same host) is left as it is; a missing
/// one is created with its attributes, owner and mode, and refilled. `name_of` gives the queue's
/// name ("/name") from its file id. Each queue created is listed in `made`.
pub fn restore(
    queues: &[Queue],
    name_of: impl Fn(u32) -> Option<String>,
    made: &mut crate::ipc::Made,
) -> Result<(), MqError> {
    for (e, msgs) in queues {
        let Some(name) = name_of(e.desc.id) else {
            continue;
        };
        let cname = cname(&name)?;
        match mq_open(cname.as_c_str(), MQ_OFlag::O_RDONLY, Mode::empty(), None) {
            Ok(existing) => {
                drop(Mq(Some(existing)));
                continue;
            }
            Err(nix::errno::Errno::ENOENT) => {}
            Err(e) => return Err(sys(&name, Step::Open)(e.into())),
        }
        let attr = MqAttr::new(0, e.desc.key as _, e.qbytes as _, 0);
        let mode = Mode::from_bits_truncate(e.desc.mode & 0o777);
        let mqd = Mq(Some(
            mq_open(
                cname.as_c_str(),
                MQ_OFlag::O_RDWR | MQ_OFlag::O_CREAT | MQ_OFlag::O_EXCL | MQ_OFlag::O_NONBLOCK,
                mode,
                Some(&attr),
            )
            .map_err(|e| sys(&name, Step::Create)(e.into()))?,
        ));
        made.mqueues.push(cname);
        // On Linux a queue descriptor is a file descriptor: set the exact mode (mq_open applies
        // the umask) and owner.
        fchmod(mqd.get(), mode)
            .and_then(|()| {
                fchown(
                    mqd.get(),
                    Some(Uid::from_raw(e.desc.uid)),
                    Some(Gid::from_raw(e.desc.gid)),
                )
            })
            .map_err(|e| sys(&name, Step::Owner)(e.into()))?;
        put_back(mqd.get(), msgs).map_err(sys(&name, Step::Refill))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names_from_links() {
        assert_eq!(queue_name("/jobs"), "/jobs");
        assert_eq!(queue_name("/dev/mqueue/jobs"), "/jobs");
    }

    #[test]
    fn status_line() {
        assert_eq!(
            notify_pid("QSIZE:12         NOTIFY:0     SIGNO:0     NOTIFY_PID:0     \n"),
            0
        );
        assert_eq!(
            notify_pid("QSIZE:0          NOTIFY:0     SIGNO:10    NOTIFY_PID:4242  \n"),
            4242
        );
        assert_eq!(notify_pid("garbage"), 0);
    }
}
