//! Pipes: each end is a file of its own, sharing a pipe id (the inode); the bytes buffered in
//! the pipe are copied without being consumed (tee) and put back when the pipe is made again.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{fcntl, open, tee, FcntlArg, OFlag, SpliceFFlags};
use nix::sys::stat::Mode;
use nix::unistd::pipe2;

use super::kind::{Fd, FileKind, OpenCx};
use super::{FdKind, FileTable, FilesError};
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::{magic, names, pb, ImageKind, ImageWriter};
use crate::proc::FdInfo;
use crate::restore::{DumpImage, RestoreError};

/// The bytes buffered in each pipe: (pipe id, pipe size, bytes).
#[derive(Default)]
pub(crate) struct PipesData(pub Vec<(u32, u32, Vec<u8>)>);

/// The same for FIFOs (fifo-data.img).
#[derive(Default)]
pub(crate) struct FifoData(pub Vec<(u32, u32, Vec<u8>)>);

impl FileTable {
    /// One end of a pipe; its buffered bytes are saved the first time the pipe is seen.
    pub fn add_pipe(
        &mut self,
        pid: u32,
        fd: i32,
        ino: u64,
        info: &FdInfo,
    ) -> Result<u32, FilesError> {
        const PIPEFS_DEV: u64 = u64::MAX; // pipes live in one pseudo-fs; the inode is unique
        if let Some(id) = self.shared_with(pid, fd, PIPEFS_DEV, ino) {
            return Ok(id);
        }
        let pipe_id = ino as u32;
        save_pipe_data(&mut self.slots.get::<PipesData>().0, pid, fd, ino)?;
        let id = self.next_id();
        self.remember(pid, fd, PIPEFS_DEV, ino, id);
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Pipe as i32,
            id,
            pipe: Some(pb::PipeEntry {
                id,
                pipe_id,
                flags: info.flags & !(libc::O_CLOEXEC as u32),
                fown: pb::FownEntry::default(),
            }),
            ..Default::default()
        });
        Ok(id)
    }
}

/// Writes one pipes-data / fifo-data image.
pub(crate) fn write_data(
    path: &std::path::Path,
    magic: u32,
    data: &[(u32, u32, Vec<u8>)],
) -> Result<(), FilesError> {
    // The kernel's default pipe size: an empty pipe of that size needs no entry; an empty one
    // resized (F_SETPIPE_SZ) does, for its size.
    const DEFAULT_PIPE_SIZE: u32 = 65536;
    let mut w = ImageWriter::new(ImageKind::Normal, magic);
    for (pipe_id, size, bytes) in data
        .iter()
        .filter(|d| !d.2.is_empty() || d.1 != DEFAULT_PIPE_SIZE)
    {
        w.push(&pb::PipeDataEntry {
            pipe_id: *pipe_id,
            bytes: bytes.len() as u32,
            size: Some(*size),
        });
        w.push_raw(bytes);
    }
    super::write(path, &w.into_bytes())
}

/// Gives a pipe the size it had.
pub(crate) fn set_pipe_size(fd: impl AsFd, size: u32) -> std::io::Result<()> {
    fcntl(fd, FcntlArg::F_SETPIPE_SZ(size as libc::c_int))?;
    Ok(())
}

fn setup_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> RestoreError {
    let what = what.into();
    move |source| RestoreError::Setup { what, source }
}

/// Restore: both ends of each pipe made so far.
#[derive(Default)]
struct Made(HashMap<u32, (OwnedFd, OwnedFd)>);

/// The pipe ends whose own open file description (pipe2's) was handed out already, by
/// (pipe id, write end).
#[derive(Default)]
struct Handed(std::collections::HashSet<(u32, bool)>);

/// The pipe kind.
pub struct Pipe;

impl FileKind for Pipe {
    fn name(&self) -> &'static str {
        "pipe"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        matches!(fd.class, FdKind::Pipe(_))
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let FdKind::Pipe(ino) = *fd.class else {
            unreachable!("claimed pipes only")
        };
        let id = cx.img.files.add_pipe(fd.pid, fd.fd, ino, fd.info)?;
        Ok((pb::FdTypes::Pipe, id))
    }

    fn write_images(&self, table: &FileTable, dir: &std::path::Path) -> Result<(), FilesError> {
        let data = table
            .slots
            .peek::<PipesData>()
            .map(|d| &d.0[..])
            .unwrap_or(&[]);
        write_data(&dir.join(names::pipes_data()), magic::PIPES_DATA, data)
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.pipe.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let pe = entry.pipe.as_ref().expect("owned: pipe is set");
        let key = format!("pipe:[{}]", pe.pipe_id);
        if let Some(i) = cx.opts.inherit_fds.iter().find(|i| i.key == key) {
            return super::reg::dup_raw(i.fd).map(Some);
        }
        let made = cx.slots.get::<Made>();
        let (r, w) = match made.0.entry(pe.pipe_id) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(make_pipe(pe.pipe_id, cx.img.pipes_data.get(&pe.pipe_id))?)
            }
        };
        let acc = pe.flags & libc::O_ACCMODE as u32;
        let write_end = acc == libc::O_WRONLY as u32;
        let made_end = if write_end { w } else { r };
        let made_end = made_end
            .try_clone()
            .map_err(setup_err(format!("dup of pipe {}", pe.pipe_id)))?;
        // Each entry is an open file description of its own: one end opened twice (through
        // /proc/self/fd) keeps two sets of status flags, which a dup would merge. So the first
        // entry of an end gets pipe2's own description (without the O_LARGEFILE an open
        // adds, as the dumped one had), and every other one a new open of the end.
        let first = pe.flags & libc::O_LARGEFILE as u32 == 0
            && cx.slots.get::<Handed>().0.insert((pe.pipe_id, write_end));
        let end = if first {
            made_end
        } else {
            super::reg::reopen(&made_end, pe.flags, entry.id)?
        };
        super::reg::set_status_flags(&end, pe.flags)?;
        Ok(Some(end))
    }
}

pub(crate) fn make_pipe(
    pipe_id: u32,
    data: Option<&(u32, Vec<u8>)>,
) -> Result<(OwnedFd, OwnedFd), RestoreError> {
    let (r, w) = pipe2(OFlag::O_CLOEXEC)
        .map_err(|e| setup_err("pipe")(e.into()))?;
    if let Some((size, bytes)) = data {
        if *size > 0 {
            set_pipe_size(&w, *size).map_err(setup_err(format!("sizing pipe {pipe_id}")))?;
        }
        let mut f = File::from(w.try_clone().map_err(setup_err("dup"))?);
        use std::io::Write;
        f.write_all(bytes)
            .map_err(setup_err(format!("refilling pipe {pipe_id}")))?;
    }
    Ok((r, w))
}

/// Saves the bytes buffered in pipe (or FIFO) `ino` the first time it is seen.
pub(crate) fn save_pipe_data(
    saved: &mut Vec<(u32, u32, Vec<u8>)>,
    pid: u32,
    fd: i32,
    ino: u64,
) -> Result<(), FilesError> {
    if saved.iter().any(|p| p.0 == ino as u32) {
        return Ok(());
    }
    let (size, data) = read_pipe_data(pid, fd).map_err(|source| FilesError::PipeData {
        pid,
        fd,
        ino,
        source,
    })?;
    saved.push((ino as u32, size, data));
    Ok(())
}

/// Copies the bytes buffered in a pipe without consuming them: a fresh read end is opened
/// through /proc, and tee(2) duplicates the buffer into a private pipe we drain.
fn read_pipe_data(pid: u32, fd: i32) -> std::io::Result<(u32, Vec<u8>)> {
    use std::io::Read;
    let path = format!("/proc/{pid}/fd/{fd}");
    let flags = OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_CLOEXEC;
    let src = open(path.as_str(), flags, Mode::empty())?;
    let size = fcntl(&src, FcntlArg::F_GETPIPE_SZ)?;
    let (rd, wr) = pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)?;
    fcntl(&wr, FcntlArg::F_SETPIPE_SZ(size))?;
    let mut data = Vec::new();
    match tee(&src, &wr, size as usize, SpliceFFlags::SPLICE_F_NONBLOCK) {
        Ok(_) => {}
        // Nothing buffered.
        Err(nix::Error::EAGAIN) => return Ok((size as u32, data)),
        Err(e) => return Err(e.into()),
    }
    drop(wr);
    std::fs::File::from(rd).read_to_end(&mut data)?;
    Ok((size as u32, data))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::ImageReader;

    #[test]
    fn pipe_data_image_holds_each_nonempty_or_resized_pipe_once() {
        let dir = std::env::temp_dir().join(format!("stasis-pipe-data-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("pipes-data.img");
        let data = vec![
            (7, 65536, b"hello".to_vec()),
            (8, 4096, Vec::new()),
            (9, 1 << 20, vec![0xaa; 3]),
            (10, 65536, Vec::new()),
        ];
        write_data(&path, magic::PIPES_DATA, &data).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        let mut r = ImageReader::new(
            "pipes-data.img",
            &bytes,
            ImageKind::Normal,
            magic::PIPES_DATA,
        )
        .unwrap();
        let mut got = Vec::new();
        while let Some(e) = r.next::<pb::PipeDataEntry>().unwrap() {
            let raw = r.raw(e.bytes as u64).unwrap().to_vec();
            got.push((e.pipe_id, e.size, raw));
        }
        assert_eq!(
            got,
            vec![
                (7, Some(65536), b"hello".to_vec()),
                // Empty but resized: kept for its size.
                (8, Some(4096), Vec::new()),
                (9, Some(1 << 20), vec![0xaa; 3])
            ]
        );
    }
}
