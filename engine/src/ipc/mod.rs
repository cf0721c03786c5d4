//! IPC objects: System V (shm, msg, sem) and POSIX message queues.

pub mod mqueue;
pub mod shm;
pub mod sysv;

use std::ffi::CString;
use std::os::fd::AsRawFd;

use crate::dump::{write_file, DumpError, DumpStats, Images};
use crate::images::{magic, names, ImageKind, ImageWriter};
use crate::proc;

/// The IPC objects a restore made, because they were missing (those it found are not
/// listed): removed again when dropped unless [`Made::keep`] says the restore succeeded, so a
/// failed restore leaves the host's IPC namespace with the objects it had.
#[derive(Default)]
pub struct Made {
    pub(crate) mqueues: Vec<CString>,
    pub(crate) shm: Vec<i32>,
    pub(crate) msg: Vec<i32>,
    pub(crate) sem: Vec<i32>,
}

impl Made {
    /// The restore succeeded: the objects stay.
    pub fn keep(mut self) {
        self.mqueues.clear();
        self.shm.clear();
        self.msg.clear();
        self.sem.clear();
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        // SAFETY: IPC_RMID of ids we created, and mq_unlink of a name we created; none reads
        // or writes our memory but the NUL-terminated name.
        unsafe {
            for &id in &self.shm {
                libc::shmctl(id, libc::IPC_RMID, std::ptr::null_mut());
            }
            for &id in &self.msg {
                libc::msgctl(id, libc::IPC_RMID, std::ptr::null_mut());
            }
            for &id in &self.sem {
                libc::semctl(id, 0, libc::IPC_RMID);
            }
            for name in &self.mqueues {
                libc::mq_unlink(name.as_ptr());
            }
        }
    }
}

/// System V objects and POSIX message queues, on the calling thread's IPC namespace: those the
/// tree uses of the host's, or every one of a namespace the tree owns (`whole_ns`), with its
/// sysctls. The images are always written, even empty, so stale ones cannot apply.
pub(crate) fn dump(
    img: &mut Images,
    stats: &mut DumpStats,
    tree_pids: &std::collections::HashSet<u32>,
    whole_ns: bool,
) -> Result<(), DumpError> {
    let ns_id = img.ns_ids.ipc;
    let users = (!whole_ns).then_some(tree_pids);
    let queues = crate::ipc::sysv::dump_msg(users).map_err(DumpError::Ipc)?;
    write_file(
        &img.dir.join(names::ipcns_msg(ns_id)),
        &crate::ipc::sysv::write_msg(&queues),
    )?;
    let sems = crate::ipc::sysv::dump_sem(users).map_err(DumpError::Ipc)?;
    write_file(
        &img.dir.join(names::ipcns_sem(ns_id)),
        &crate::ipc::sysv::write_sem(&sems),
    )?;

    // POSIX queues: (path reaching the queue's file, "/name", file id).
    let mut mq: Vec<(String, String, u32)> = img
        .mqueues
        .iter()
        .map(|(pid, fd, name, id)| (format!("/proc/{pid}/fd/{fd}"), name.clone(), *id))
        .collect();
    let _mq_root = if whole_ns {
        // Every queue of the namespace, held open or not.
        let (root, names) = crate::ns::ipc::mqueue_root()?;
        mq.clear();
        for n in names {
            let path = format!("/proc/self/fd/{}/{n}", root.as_raw_fd());
            let name = format!("/{n}");
            let md = std::fs::metadata(&path).map_err(|source| {
                DumpError::Mqueue(crate::ipc::mqueue::MqError::Sys {
                    name: name.clone(),
                    step: crate::ipc::mqueue::Step::Inspect,
                    source,
                })
            })?;
            let id = img.files.mqueue_file(&name, &md);
            mq.push((path, name, id));
        }
        Some(root)
    } else {
        None
    };
    let wanted = mq
        .iter()
        .map(|(path, name, _)| crate::ipc::mqueue::identity(path, name))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DumpError::Mqueue)?;
    // One pass over every process's fds for all the queues.
    crate::ipc::mqueue::refuse_outside_users(&wanted, tree_pids).map_err(DumpError::Mqueue)?;
    let mut mqueues = Vec::new();
    for (path, name, id) in &mq {
        mqueues.push(crate::ipc::mqueue::dump(path, name, *id).map_err(DumpError::Mqueue)?);
    }
    write_file(
        &img.dir.join(names::POSIX_MQUEUE),
        &crate::ipc::sysv::write_msg(&mqueues),
    )?;

    if whole_ns {
        // Segments nobody attaches: their content through a read-only attachment of our own.
        let idle: Vec<proc::parse::ShmSegment> = img
            .sysv_segments
            .iter()
            .filter(|s| !img.sysv_dumped.iter().any(|e| e.desc.id == s.shmid))
            .cloned()
            .collect();
        for seg in idle {
            shm::dump_idle_segment(&seg, img, stats)?;
        }
        let vars = crate::ns::ipc::read_vars()?;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::IPC_VAR);
        w.push(&vars);
        write_file(&img.dir.join(names::ipcns_var(ns_id)), &w.into_bytes())?;
    }
    let mut w = ImageWriter::new(ImageKind::Normal, magic::IPCNS_SHM);
    for e in &img.sysv_dumped {
        w.push(e);
    }
    write_file(&img.dir.join(names::ipcns_shm(ns_id)), &w.into_bytes())
}
