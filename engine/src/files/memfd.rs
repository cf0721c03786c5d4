//! memfd: a shmem inode with a name, seals and content. Its content is dumped like shared
//! memory (a shmem pagemap); every open description of the inode is an entry of its own.

use std::os::fd::OwnedFd;

use nix::fcntl::{fcntl, FcntlArg, SealFlag};
use nix::sys::memfd::{memfd_create, MFdFlags};
use nix::unistd::{lseek, Whence};
use std::os::unix::fs::MetadataExt;

use super::anon::{self, AnonFdError};
use super::kind::{Fd, FileKind, OpenCx};
use super::{FdKind, FileTable, FilesError};
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::{magic, names, pb, ImageKind, ImageWriter};
use crate::restore::{DumpImage, RestoreError};

/// memfd inodes seen by the dump: (dev, ino) → entry, for memfd-inode.img.
#[derive(Default)]
struct MemfdInodes(Vec<((u64, u64), pb::MemfdInodeEntry)>);

/// The seals of the memfd reached through `open`.
fn read_seals(open: &str) -> std::io::Result<u32> {
    let f = std::fs::File::open(open)?;
    Ok(fcntl(&f, FcntlArg::F_GET_SEALS)? as u32)
}

impl FileTable {
    /// A memfd, through `open` (a /proc path to it) as the task sees it at `link`. Returns the
    /// file id, and the inode's shmid when its content still has to be dumped.
    pub fn add_memfd(
        &mut self,
        open: &str,
        link: &str,
        flags: u32,
        pos: u64,
        shared_fd: Option<(u32, i32)>,
    ) -> Result<(u32, Option<u64>), FilesError> {
        let md = std::fs::metadata(open).map_err(|source| FilesError::Ghost {
            path: link.to_string(),
            source,
        })?;
        if let Some((pid, fd)) = shared_fd {
            if let Some(id) = self.shared_with(pid, fd, md.dev(), md.ino()) {
                return Ok((id, None));
            }
        } else if let Some(&id) = self.by_inode.get(&(md.dev(), md.ino(), flags)) {
            return Ok((id, None));
        }
        let key = (md.dev(), md.ino());
        let fresh = !self
            .slots
            .get::<MemfdInodes>()
            .0
            .iter()
            .any(|(k, _)| *k == key);
        if fresh {
            let seals = read_seals(open).map_err(|source| FilesError::Ghost {
                path: link.to_string(),
                source,
            })?;
            let name = link
                .trim_start_matches("/memfd:")
                .trim_end_matches(" (deleted)")
                .to_string();
            self.slots.get::<MemfdInodes>().0.push((
                key,
                pb::MemfdInodeEntry {
                    name,
                    uid: md.uid(),
                    gid: md.gid(),
                    size: md.size(),
                    shmid: md.ino() as u32,
                    seals,
                    inode_id: md.ino(),
                    hugetlb_flag: hugetlb_flag(open),
                    mode: Some(md.mode()),
                },
            ));
        }
        let id = self.next_id();
        if let Some((pid, fd)) = shared_fd {
            self.remember(pid, fd, md.dev(), md.ino(), id);
        } else {
            self.by_inode.insert((md.dev(), md.ino(), flags), id);
        }
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Memfd as i32,
            id,
            memfd: Some(pb::MemfdFileEntry {
                id,
                flags,
                pos,
                fown: pb::FownEntry::default(),
                inode_id: md.ino() as u32,
            }),
            ..Default::default()
        });
        Ok((id, fresh.then_some(md.ino())))
    }
}

/// A memfd on hugetlbfs (MFD_HUGETLB): CRIU's `hugetlb_flag`, MFD_HUGETLB with log2 of the
/// page size (its block size) in the MFD_HUGE_SHIFT bits.
fn hugetlb_flag(open: &str) -> Option<u32> {
    const HUGETLBFS_MAGIC: i64 = 0x9584_58f6;
    let st = nix::sys::statfs::statfs(open).ok()?;
    if st.filesystem_type().0 as i64 != HUGETLBFS_MAGIC {
        return None;
    }
    let size = st.block_size() as u64;
    Some(libc::MFD_HUGETLB | (size.trailing_zeros() << 26))
}

/// A memfd with its name, content and seals; more open descriptions of the same inode are
/// reopened from it through /proc/self/fd.
pub fn create_memfd(inode: &pb::MemfdInodeEntry, content: &[u8]) -> Result<OwnedFd, AnonFdError> {
    let name = std::ffi::CString::new(inode.name.as_bytes()).unwrap_or_default();
    // CRIU 4.2 saves shared hugetlb memory as a memfd with MFD_HUGETLB and the page size.
    let huge = inode.hugetlb_flag.unwrap_or(0) & (libc::MFD_HUGETLB | (0x3f << 26));
    let flags = MFdFlags::MFD_CLOEXEC
        | MFdFlags::MFD_ALLOW_SEALING
        | MFdFlags::from_bits_retain(huge as libc::c_uint);
    let fd = memfd_create(name.as_c_str(), flags).map_err(anon::create_err("memfd"))?;
    let err = |source| AnonFdError::Create {
        kind: "memfd",
        source,
    };
    let f = std::fs::File::from(fd.try_clone().map_err(err)?);
    if huge != 0 {
        // hugetlbfs has no write(): sized first, filled through a mapping.
        f.set_len(inode.size).map_err(err)?;
        fill_through_mapping(&fd, inode.size, content).map_err(err)?;
    } else {
        use std::os::unix::fs::FileExt;
        f.write_all_at(content, 0).map_err(err)?;
        f.set_len(inode.size).map_err(err)?;
    }
    // Its owner and mode, as CRIU restores them (memfd_create gives root's and 0777).
    std::os::unix::fs::fchown(&f, Some(inode.uid), Some(inode.gid)).map_err(err)?;
    if let Some(mode) = inode.mode {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(mode & 0o7777))
            .map_err(err)?;
    }
    if inode.seals != 0 {
        let seals = SealFlag::from_bits_retain(inode.seals as libc::c_int);
        fcntl(&fd, FcntlArg::F_ADD_SEALS(seals)).map_err(|e| err(e.into()))?;
    }
    Ok(fd)
}

/// Copies `content` to the start of the `size`-byte file `fd` through a shared mapping.
fn fill_through_mapping(fd: &OwnedFd, size: u64, content: &[u8]) -> std::io::Result<()> {
    let len = content.len().min(size as usize);
    if len == 0 {
        return Ok(());
    }
    // SAFETY: a fresh shared mapping of our own file, `size` bytes, unmapped below; we copy
    // at most `size` bytes into it.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(fd),
            0,
        );
        if at == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        std::ptr::copy_nonoverlapping(content.as_ptr(), at.cast::<u8>(), len);
        libc::munmap(at, size as usize);
    }
    Ok(())
}

/// The memfd kind.
pub struct Memfd;

/// Restore: the first description made of each memfd inode, which the others reopen.
#[derive(Default)]
struct Made(std::collections::HashMap<u64, OwnedFd>);

impl FileKind for Memfd {
    fn name(&self) -> &'static str {
        "memfd"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::Memfd
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let open = fd.proc_path();
        let (id, fresh) = cx.img.files.add_memfd(
            &open,
            fd.link,
            fd.flags(),
            fd.info.pos,
            Some((fd.pid, fd.fd)),
        )?;
        if let Some(shmid) = fresh {
            let size = std::fs::metadata(&open)
                .map_err(|source| FilesError::Inspect {
                    pid: fd.pid,
                    fd: fd.fd,
                    source,
                })?
                .len();
            crate::mm::shmem::dump_shmem_object(&open, shmid, size, cx.img, cx.stats)?;
        }
        Ok((pb::FdTypes::Memfd, id))
    }

    fn write_images(&self, table: &FileTable, dir: &std::path::Path) -> Result<(), FilesError> {
        let mut w = ImageWriter::new(ImageKind::Normal, magic::MEMFD_INODE);
        for (_, m) in table
            .slots
            .peek::<MemfdInodes>()
            .map(|m| &m.0[..])
            .unwrap_or(&[])
        {
            w.push(m);
        }
        super::write(&dir.join(names::MEMFD_INODE), &w.into_bytes())
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.memfd.is_some()
    }

    fn open(
        &self,
        cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let m = entry.memfd.as_ref().expect("owned: memfd is set");
        let id = entry.id;
        let inode = m.inode_id as u64;
        let made = cx.slots.get::<Made>();
        let fd = match made.0.get(&inode) {
            Some(first) => super::reg::reopen(first, m.flags, id)?,
            None => {
                let (e, pagemap, pages) = &cx.img.memfds[&inode];
                let content =
                    crate::mm::shmem::read_shmem_content(e.size, pagemap, &cx.img.dir.join(pages))?;
                let fd = create_memfd(e, &content).map_err(anon::restore_err(id))?;
                let keep = super::reg::dup(&fd)?;
                let first = made.0.entry(inode).or_insert(keep);
                if m.flags & libc::O_ACCMODE as u32 == libc::O_RDWR as u32 {
                    fd
                } else {
                    super::reg::reopen(first, m.flags, id)?
                }
            }
        };
        if m.pos != 0 {
            lseek(&fd, m.pos as libc::off_t, Whence::SeekSet).map_err(|e| RestoreError::Open {
                id,
                path: format!("memfd:{}", m.inode_id),
                source: e.into(),
            })?;
        }
        // O_APPEND and O_NONBLOCK, which neither memfd_create nor the reopen set.
        super::reg::set_status_flags(&fd, m.flags)?;
        Ok(Some(fd))
    }
}
