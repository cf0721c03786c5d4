//! FIFOs (named pipes): a regular-file entry for the path and a FIFO entry; the buffered
//! bytes go to fifo-data.img. Restore opens the FIFO read-write once (a "keeper", which
//! opens at once whatever the other end does), refills it, and reopens every end from it.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use super::ghost::GhostFiles;
use super::kind::{Fd, FileKind, OpenCx};
use super::pipe::FifoData;
use super::{FdKind, FileTable, FilesError};
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::{magic, names, pb};
use crate::proc::FdInfo;
use crate::restore::{DumpImage, RestoreError};

impl FileTable {
    /// A named pipe: a regular-file entry for its path and a FIFO entry; its buffered bytes go
    /// to fifo-data.img the first time the FIFO is seen.
    pub fn add_fifo(
        &mut self,
        pid: u32,
        fd: i32,
        link: &str,
        ino: u64,
        info: &FdInfo,
    ) -> Result<u32, FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok(id);
        }
        let pipe_id = ino as u32;
        super::pipe::save_pipe_data(&mut self.slots.get::<FifoData>().0, pid, fd, ino)?;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let regf_id = self.push_reg(link, flags, 0, Some(info.mnt_id as i32), Some(&md));
        let id = self.next_id();
        self.remember(pid, fd, md.dev(), md.ino(), id);
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Fifo as i32,
            id,
            fifo: Some(pb::FifoEntry {
                id,
                pipe_id,
                regf_id: Some(regf_id),
            }),
            ..Default::default()
        });
        Ok(id)
    }
}

/// Restore: the read-write keeper of each FIFO made so far.
#[derive(Default)]
struct Keepers(HashMap<u32, OwnedFd>);

/// The FIFO kind.
pub struct Fifo;

impl FileKind for Fifo {
    fn name(&self) -> &'static str {
        "fifo"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        matches!(fd.class, FdKind::Fifo(_))
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let FdKind::Fifo(ino) = *fd.class else {
            unreachable!("claimed FIFOs only")
        };
        let id = cx
            .img
            .files
            .add_fifo(fd.pid, fd.fd, fd.link, ino, fd.info)?;
        Ok((pb::FdTypes::Fifo, id))
    }

    fn write_images(&self, table: &FileTable, dir: &std::path::Path) -> Result<(), FilesError> {
        let data = table
            .slots
            .peek::<FifoData>()
            .map(|d| &d.0[..])
            .unwrap_or(&[]);
        super::pipe::write_data(&dir.join(names::FIFO_DATA), magic::FIFO_DATA, data)
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.fifo.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let fe = entry.fifo.as_ref().expect("owned: fifo is set");
        let id = entry.id;
        let reg = fe
            .regf_id
            .and_then(|r| cx.img.files.get(&r))
            .and_then(|r| r.reg.as_ref())
            .ok_or(RestoreError::FifoWithoutPath { id })?;
        if !cx.slots.get::<Keepers>().0.contains_key(&fe.pipe_id) {
            let keeper = make_keeper(cx, id, fe.pipe_id, reg)?;
            cx.slots.get::<Keepers>().0.insert(fe.pipe_id, keeper);
        }
        let keeper = &cx.slots.get::<Keepers>().0[&fe.pipe_id];
        let end = super::reg::reopen(keeper, reg.flags | libc::O_NONBLOCK as u32, id)?;
        super::reg::set_status_flags(&end, reg.flags)?;
        Ok(Some(end))
    }
}

/// Opens FIFO `id` read-write (made for the moment if it was unlinked while open) and puts
/// its buffered bytes back.
fn make_keeper(
    cx: &mut OpenCx,
    id: u32,
    pipe_id: u32,
    reg: &pb::RegFileEntry,
) -> Result<OwnedFd, RestoreError> {
    let mut keep = reg.clone();
    keep.flags = (libc::O_RDWR | libc::O_NONBLOCK) as u32;
    keep.pos = 0;
    keep.name = cx.img.path_of(reg).into_owned();
    if let Some(orig) = reg.name.strip_suffix(" (deleted)") {
        let orig = cx.img.path_of_name(reg, orig);
        let orig = orig.as_str();
        // Unlinked while open: a FIFO made for the moment (the keeper holds the pipe; the
        // name goes with the other ghosts).
        keep.name = cx
            .slots
            .get::<GhostFiles>()
            .fifo(id, orig, reg.mode.unwrap_or(0o600))?;
    }
    let k = super::reg::open_path(id, &keep)?;
    if let Some((size, data)) = cx.img.fifo_data.get(&pipe_id) {
        let err = |what: String| move |source| RestoreError::Setup { what, source };
        if *size > 0 {
            super::pipe::set_pipe_size(&k, *size)
                .map_err(err(format!("sizing FIFO {}", reg.name)))?;
        }
        use std::io::Write;
        std::fs::File::from(super::reg::dup(&k)?)
            .write_all(data)
            .map_err(err(format!("refilling FIFO {}", reg.name)))?;
    }
    Ok(k)
}
