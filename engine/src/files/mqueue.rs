//! POSIX message queues held open: a regular-file entry named `/dev/mqueue/<name>`, as CRIU
//! names them; the queue itself (attributes, messages) is saved by `ipc::mqueue`. Restore
//! opens the queue by name, so the mqueue filesystem need not be mounted.

use std::os::fd::OwnedFd;

use super::kind::{Fd, FileKind, OpenCx};
use super::{FdKind, FileTable, FilesError};
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use std::os::unix::fs::MetadataExt;

use crate::images::pb;
use crate::ipc::mqueue::PATH_PREFIX;
use crate::proc::FdInfo;
use crate::restore::{DumpImage, RestoreError};

impl FileTable {
    /// A POSIX message queue open at `fd` of `pid` (link "/name", or its path where the mqueue
    /// filesystem is mounted): a regular-file entry named `/dev/mqueue/<name>`. Returns the id
    /// and whether this is the first fd seen on the queue (its content is then to be saved).
    pub fn add_mqueue(
        &mut self,
        pid: u32,
        fd: i32,
        link: &str,
        info: &FdInfo,
    ) -> Result<(u32, bool), FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok((id, false));
        }
        let first = !self.seen.iter().any(|s| s.2 == md.dev() && s.3 == md.ino());
        let id = self.push_reg(
            &format!(
                "{}{}",
                crate::ipc::mqueue::PATH_PREFIX,
                crate::ipc::mqueue::queue_name(link)
            ),
            info.flags & !(libc::O_CLOEXEC as u32),
            0,
            None,
            Some(&md),
        );
        self.remember(pid, fd, md.dev(), md.ino(), id);
        Ok((id, first))
    }

    /// The file entry of queue `name` ("/name") of a namespace the tree owns: the entry of an
    /// fd the tree holds on it, else a new one that no fd uses (it carries the queue's name).
    pub fn mqueue_file(&mut self, name: &str, md: &std::fs::Metadata) -> u32 {
        if let Some(s) = self
            .seen
            .iter()
            .find(|s| s.2 == md.dev() && s.3 == md.ino())
        {
            return s.4;
        }
        self.push_reg(
            &format!("{}{name}", crate::ipc::mqueue::PATH_PREFIX),
            libc::O_RDWR as u32,
            0,
            None,
            Some(md),
        )
    }
}

/// The name ("/name") of the queue a file entry stands for, if it stands for one.
fn queue_of(entry: &pb::FileEntry) -> Option<&str> {
    let reg = entry.reg.as_ref()?;
    reg.name
        .strip_prefix(PATH_PREFIX)
        .filter(|n| n.starts_with('/'))
}

/// The POSIX message queue kind.
pub struct Mqueue;

impl FileKind for Mqueue {
    fn name(&self) -> &'static str {
        "posix-mqueue"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::Mqueue
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let (id, first) = cx.img.files.add_mqueue(fd.pid, fd.fd, fd.link, fd.info)?;
        if first {
            let name = crate::ipc::mqueue::queue_name(fd.link);
            cx.img.mqueues.push((fd.pid, fd.fd, name, id));
        }
        Ok((pb::FdTypes::Reg, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        queue_of(entry).is_some()
    }

    fn open(
        &self,
        _cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let reg = entry.reg.as_ref().expect("owned: reg is set");
        let name = queue_of(entry).expect("owned: a queue's name");
        let id = entry.id;
        // A POSIX message queue, opened by its name: the mqueue filesystem need not be mounted.
        let cname = std::ffi::CString::new(name).map_err(|_| RestoreError::Open {
            id,
            path: reg.name.clone(),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        use nix::mqueue::MQ_OFlag;
        let kept = libc::O_ACCMODE | libc::O_NONBLOCK;
        let flags = MQ_OFlag::from_bits_truncate(reg.flags as libc::c_int & kept);
        let fd = crate::sys::anon::mq_open_fd(&cname, flags).map_err(|source| {
            RestoreError::Open {
                id,
                path: reg.name.clone(),
                source,
            }
        })?;
        Ok(Some(fd))
    }
}
