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
use std::os::unix::fs::MetadataExt;

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
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MqError {
    let what = what.into();
    move |source| MqError::Sys { what, source }
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
    let md = std::fs::metadata(fd_path).map_err(sys(format!("inspecting queue {name}")))?;
    let status = std::fs::read_to_string(fd_path)
        .map_err(sys(format!("reading the status of queue {name}")))?;
    let notifier = notify_pid(&status);
    if notifier != 0 {
        return Err(MqError::Notify {
            name: name.into(),
            pid: notifier,
        });
    }

    let cname = CString::new(name).map_err(|_| MqError::Sys {
        what: format!("queue name {name}"),
        source: std::io::Error::from_raw_os_error(libc::EINVAL),
    })?;
    // SAFETY: mq_open(3) of a NUL-terminated name, without O_CREAT (no variadic arguments).
    let mqd = unsafe { libc::mq_open(cname.as_ptr(), libc::O_RDWR | libc::O_NONBLOCK) };
    if mqd < 0 {
        return Err(sys(format!("opening queue {name}"))(
            std::io::Error::last_os_error(),
        ));
    }
    let _close = CloseMqd(mqd);
    // SAFETY: mq_attr is plain integers.
    let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
    // SAFETY: mq_getattr fills our struct.
    if unsafe { libc::mq_getattr(mqd, &mut attr) } < 0 {
        return Err(sys(format!("reading the attributes of queue {name}"))(
            std::io::Error::last_os_error(),
        ));
    }
    let mut msgs = Vec::new();
    let mut buf = vec![0u8; attr.mq_msgsize as usize];
    for _ in 0..attr.mq_curmsgs {
        let mut prio: libc::c_uint = 0;
        // SAFETY: mq_receive writes at most buf.len() bytes into buf and the priority into prio.
        let n = unsafe { libc::mq_receive(mqd, buf.as_mut_ptr().cast(), buf.len(), &mut prio) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            put_back(mqd, &msgs);
            return Err(sys(format!("reading the messages of queue {name}"))(err));
        }
        msgs.push((prio as u64, buf[..n as usize].to_vec()));
    }
    if let Some(err) = put_back(mqd, &msgs) {
        return Err(sys(format!("putting back the messages of queue {name}"))(
            err,
        ));
    }
    let entry = pb::IpcMsgEntry {
        desc: pb::IpcDescEntry {
            key: attr.mq_maxmsg as u32,
            uid: md.uid(),
            gid: md.gid(),
            cuid: md.uid(),
            cgid: md.gid(),
            mode: md.mode() & 0o7777,
            id: file_id,
        },
        qbytes: attr.mq_msgsize as u32,
        qnum: msgs.len() as u32,
    };
    Ok((entry, msgs))
}

struct CloseMqd(libc::mqd_t);

impl Drop for CloseMqd {
    fn drop(&mut self) {
        // SAFETY: closes a descriptor we opened and own.
        unsafe { libc::mq_close(self.0) };
    }
}

/// Sends `msgs` back in order; the first error, if any.
fn put_back(mqd: libc::mqd_t, msgs: &[(u64, Vec<u8>)]) -> Option<std::io::Error> {
    for (prio, text) in msgs {
        // SAFETY: mq_send reads text.len() bytes from text.
        if unsafe { libc::mq_send(mqd, text.as_ptr().cast(), text.len(), *prio as libc::c_uint) }
            < 0
        {
            return Some(std::io::Error::last_os_error());
        }
    }
    None
}

/// The identity of queue `name` whose file `path` reaches, for [`refuse_outside_users`].
pub fn identity(path: &str, name: &str) -> Result<(String, u64, u64), MqError> {
    let md = std::fs::metadata(path).map_err(sys(format!("inspecting queue {name}")))?;
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
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Ok(());
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if tree.contains(&pid) || pid == std::process::id() {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for f in fds.flatten() {
            let Ok(link) = std::fs::read_link(f.path()) else {
                continue;
            };
            let name = queue_name(&link.to_string_lossy());
            let Some((qname, dev, ino)) = wanted.iter().find(|w| w.0 == name) else {
                continue;
            };
            if let Ok(m) = std::fs::metadata(f.path()) {
                if m.dev() == *dev && m.ino() == *ino {
                    return Err(MqError::Shared {
                        name: qname.to_string(),
                        pid,
                    });
                }
            }
        }
    }
    Ok(())
}

/// Makes every queue exist: one that outlived the tree (same host) is left as it is; a missing
/// one is created with its attributes, owner and mode, and refilled. `name_of` gives the queue's
/// name ("/name") from its file id.
pub fn restore(queues: &[Queue], name_of: impl Fn(u32) -> Option<String>) -> Result<(), MqError> {
    for (e, msgs) in queues {
        let Some(name) = name_of(e.desc.id) else {
            continue;
        };
        let cname = CString::new(name.as_str()).map_err(|_| MqError::Sys {
            what: format!("queue name {name}"),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        // SAFETY: mq_open(3) without O_CREAT.
        let existing = unsafe { libc::mq_open(cname.as_ptr(), libc::O_RDONLY) };
        if existing >= 0 {
            // SAFETY: our own descriptor.
            unsafe { libc::mq_close(existing) };
            continue;
        }
        // SAFETY: mq_attr is plain integers.
        let mut attr: libc::mq_attr = unsafe { std::mem::zeroed() };
        attr.mq_maxmsg = e.desc.key as _;
        attr.mq_msgsize = e.qbytes as _;
        let mode = e.desc.mode & 0o777;
        // SAFETY: mq_open(3) with O_CREAT takes the mode and a pointer to our attributes.
        let mqd = unsafe {
            libc::mq_open(
                cname.as_ptr(),
                libc::O_RDWR | libc::O_CREAT | libc::O_EXCL | libc::O_NONBLOCK,
                mode as libc::mode_t,
                &mut attr as *mut libc::mq_attr,
            )
        };
        if mqd < 0 {
            return Err(sys(format!("creating queue {name}"))(
                std::io::Error::last_os_error(),
            ));
        }
        let _close = CloseMqd(mqd);
        // On Linux a queue descriptor is a file descriptor: set the exact mode and owner.
        // SAFETY: fchmod/fchown on our descriptor.
        let r = unsafe {
            if libc::fchmod(mqd, mode) < 0 {
                -1
            } else {
                libc::fchown(mqd, e.desc.uid, e.desc.gid)
            }
        };
        if r < 0 {
            return Err(sys(format!("setting the owner and mode of queue {name}"))(
                std::io::Error::last_os_error(),
            ));
        }
        if let Some(err) = put_back(mqd, msgs) {
            return Err(sys(format!("refilling queue {name}"))(err));
        }
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
