//! Shared memory objects (shared anonymous memory, memfd content, System V segments' pages):
//! dumped once per object as `pagemap-shmem-<id>.img` and a pages image, restored as a filled
//! object before the tasks map it.

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::pages::PageSink;
use super::MmError;
use crate::dump::{write_file, DumpError, DumpStats, Images};
use crate::images::{self, magic, names, pb, ImageKind, ImageWriter};
use crate::proc::{self, Mapping};
use crate::restore::{load, setup_err, RestoreError};
use crate::sys::mem::PAGE_SIZE;

/// Shared anonymous memory is dumped once per shmem inode, through /proc/<pid>/map_files.
pub(crate) fn dump_shmem(
    pid: u32,
    m: &Mapping,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    // The whole object, not only this mapping's window: another task (or another mapping of
    // this one) may see other parts of it (zdtm's maps01). The map_files fd is the object
    // itself; its size is the object's.
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let size = std::fs::metadata(&path)
        .map_err(|source| {
            DumpError::Proc(proc::ProcError::Read {
                path: path.clone().into(),
                source,
            })
        })?
        .len()
        .max(m.offset + m.len());
    dump_shmem_object(&path, m.inode, size, img, stats)
}

/// Dumps the first `size` bytes of a shmem object (shared anonymous memory, memfd) opened
/// through `path`, as CRIU does: `pagemap-shmem-<shmid>.img` (offsets as addresses) and a pages
/// image. Zero pages are left out; a size that ends inside a page is padded with zeros.
pub(crate) fn dump_shmem_object(
    path: &str,
    shmid: u64,
    size: u64,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    if !img.dumped_shmem.insert(shmid) {
        return Ok(());
    }
    let read_err = |source| {
        DumpError::Proc(proc::ProcError::Read {
            path: path.into(),
            source,
        })
    };
    let f = File::open(path).map_err(read_err)?;
    let pages_id = img.next_pages_id;
    img.next_pages_id += 1;
    let mut pages = PageSink::create(&img.dir.join(names::pages(pages_id)))?;
    let mut pm = ImageWriter::new(ImageKind::Normal, magic::PAGEMAP);
    pm.push(&pb::PagemapHead { pages_id });
    let size = size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let mut buf = vec![0u8; (4 << 20).min(size as usize)];
    let page = PAGE_SIZE as usize;
    // Only the ranges that hold data (SEEK_DATA/SEEK_HOLE): a 1 GiB object with a few pages
    // written is a few reads, not a scan of zeros.
    for (start, end) in data_ranges(&f, size).map_err(read_err)? {
        let mut off = start;
        while off < end {
            let n = buf.len().min((end - off) as usize);
            let mut got = 0;
            while got < n {
                match f.read_at(&mut buf[got..n], off + got as u64) {
                    Ok(0) => break,
                    Ok(k) => got += k,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(read_err(e)),
                }
            }
            buf[got..n].fill(0);
            // Keep only non-zero pages.
            let mut p = 0;
            while p < n {
                if buf[p..p + page].iter().any(|&b| b != 0) {
                    let mut q = p + page;
                    while q < n && buf[q..q + page].iter().any(|&b| b != 0) {
                        q += page;
                    }
                    pages.write_bytes(&buf[p..q])?;
                    let npages = ((q - p) / page) as u64;
                    pm.push(&pb::PagemapEntry {
                        vaddr: off + p as u64,
                        compat_nr_pages: npages as u32,
                        in_parent: None,
                        flags: Some(images::PE_PRESENT),
                        nr_pages: Some(npages),
                    });
                    p = q;
                } else {
                    p += page;
                }
            }
            off += n as u64;
            stats.shpages_scanned += n as u64 / PAGE_SIZE;
        }
    }
    // Shared pages are counted apart from private ones, as CRIU's shpages_* stats are.
    let private_written = stats.pages_written;
    finish_pages(pages, stats)?;
    stats.shpages_written += stats.pages_written - private_written;
    stats.pages_written = private_written;
    write_file(&img.dir.join(names::pagemap_shmem(shmid)), &pm.into_bytes())
}

/// The page-aligned ranges of `f` below `size` that hold data, from SEEK_DATA/SEEK_HOLE
/// (shmem, memfd and tmpfs answer them; a file that does not is one range).
fn data_ranges(f: &File, size: u64) -> std::io::Result<Vec<(u64, u64)>> {
    use nix::unistd::{lseek, Whence};
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < size {
        let start = match lseek(f, off as libc::off_t, Whence::SeekData) {
            Ok(s) => s as u64,
            Err(nix::errno::Errno::ENXIO) => break,
            Err(nix::errno::Errno::EINVAL) if off == 0 => return Ok(vec![(0, size)]),
            Err(e) => return Err(e.into()),
        };
        if start >= size {
            break;
        }
        let end = match lseek(f, start as libc::off_t, Whence::SeekHole) {
            Ok(e) => (e as u64).min(size),
            Err(e) => return Err(e.into()),
        };
        let (a, b) = (
            start / PAGE_SIZE * PAGE_SIZE,
            end.div_ceil(PAGE_SIZE) * PAGE_SIZE,
        );
        out.push((a, b.min(size)));
        off = b;
    }
    Ok(out)
}

pub(crate) fn finish_pages(pages: PageSink, stats: &mut DumpStats) -> Result<(), DumpError> {
    stats.memdump_time_us += pages.read_time.as_micros() as u64;
    stats.pages_written += pages.bytes / PAGE_SIZE;
    stats.memwrite_time_us += pages.finish()?.as_micros() as u64;
    Ok(())
}

/// The first `size` bytes of a shmem object from its pagemap (offsets as addresses).
pub(crate) fn read_shmem_content(
    size: u64,
    entries: &[pb::PagemapEntry],
    pages: &Path,
) -> Result<Vec<u8>, RestoreError> {
    let mut content = vec![0u8; size.div_ceil(PAGE_SIZE) as usize * PAGE_SIZE as usize];
    let f = File::open(pages).map_err(setup_err(format!("open {}", pages.display())))?;
    let mut off = 0u64;
    for e in entries {
        let len = load::nr_pages(e) * PAGE_SIZE;
        let end = e.vaddr + len;
        if end > content.len() as u64 {
            return Err(MmError::PagesBeyondObject {
                path: pages.to_path_buf(),
            }
            .into());
        }
        f.read_exact_at(&mut content[e.vaddr as usize..end as usize], off)
            .map_err(setup_err(format!("read {}", pages.display())))?;
        off += len;
    }
    content.truncate(size as usize);
    Ok(content)
}

/// Shared anonymous memory: a shmem object made by mmap(MAP_SHARED|MAP_ANONYMOUS), filled, and
/// kept as an fd from /proc/self/map_files so the tasks map the same kind of object.
pub(crate) fn make_shmem(
    size: u64,
    entries: &[pb::PagemapEntry],
    pages: &Path,
) -> Result<OwnedFd, RestoreError> {
    // SAFETY: a fresh shared anonymous mapping of `size` bytes, unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(setup_err("shared memory")(std::io::Error::last_os_error()));
    }
    let result = (|| {
        let f = File::open(pages).map_err(setup_err(format!("open {}", pages.display())))?;
        let mut off = 0u64;
        for e in entries {
            let len = load::nr_pages(e) * PAGE_SIZE;
            if e.vaddr + len > size {
                return Err(MmError::PagesBeyondObject {
                    path: pages.to_path_buf(),
                }
                .into());
            }
            // SAFETY: the destination lies inside our mapping of `size` bytes (checked above).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(
                    addr.cast::<u8>().add(e.vaddr as usize),
                    len as usize,
                )
            };
            f.read_exact_at(dst, off)
                .map_err(setup_err(format!("read {}", pages.display())))?;
            off += len;
        }
        let path = format!(
            "/proc/self/map_files/{:x}-{:x}",
            addr as u64,
            addr as u64 + size
        );
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(setup_err(path))?;
        Ok(OwnedFd::from(file))
    })();
    // SAFETY: unmapping the mapping made above; the fd keeps the object alive.
    if unsafe { libc::munmap(addr, size as usize) } != 0 {
        // Only our own address space keeps a stale window on the object: worth a line, not a
        // failed restore.
        log::warn!(
            "cannot unmap the shared memory filled at {:#x}: {}",
            addr as u64,
            std::io::Error::last_os_error()
        );
    }
    result
}
