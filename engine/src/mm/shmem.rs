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
    // itself.
    let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    // As far as the largest window any task of the tree maps (read once, before the first
    // task): the restore makes the object that large, and pages past every window are
    // unreachable anyway.
    let key = (m.dev_major, m.dev_minor, m.inode);
    let size = img
        .shared_windows
        .get(&key)
        .copied()
        .unwrap_or(0)
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

/// How far into each shared object (by device and inode) the tree's mappings of it reach:
/// the largest `offset + length` of its shared mappings in `maps`.
pub(crate) fn shared_windows<'a>(
    maps: impl IntoIterator<Item = &'a Mapping>,
) -> std::collections::HashMap<(u32, u32, u64), u64> {
    let mut out = std::collections::HashMap::new();
    for w in maps.into_iter().filter(|w| w.shared) {
        let reach = out.entry((w.dev_major, w.dev_minor, w.inode)).or_insert(0);
        *reach = (*reach).max(w.offset + w.len());
    }
    out
}

pub(crate) fn finish_pages(pages: PageSink, stats: &mut DumpStats) -> Result<(), DumpError> {
    stats.memdump_time_us += pages.read_time.as_micros() as u64;
    stats.pages_written += pages.bytes / PAGE_SIZE;
    stats.memwrite_time_us += pages.finish()?.as_micros() as u64;
    Ok(())
}

/// Each entry's (offset, length) in a shmem object of `size` bytes, checked before anything
/// is allocated or read: every entry lies inside the object (rounded up to a page), and the
/// pages file holds all their pages. Also the end of the last page of data.
fn shmem_runs(
    size: u64,
    entries: &[pb::PagemapEntry],
    pages: &Path,
    pages_len: u64,
) -> Result<(Vec<(u64, u64)>, u64), RestoreError> {
    let beyond = || -> RestoreError {
        MmError::PagesBeyondObject {
            path: pages.to_path_buf(),
        }
        .into()
    };
    let limit = size
        .checked_next_multiple_of(PAGE_SIZE)
        .ok_or_else(beyond)?;
    let (mut need, mut top) = (0u64, 0u64);
    let mut runs = Vec::with_capacity(entries.len());
    for e in entries {
        let len = load::nr_pages(e)
            .checked_mul(PAGE_SIZE)
            .ok_or_else(beyond)?;
        let end = e
            .vaddr
            .checked_add(len)
            .filter(|end| *end <= limit)
            .ok_or_else(beyond)?;
        need = need.checked_add(len).ok_or_else(beyond)?;
        top = top.max(end);
        runs.push((e.vaddr, len));
    }
    if need > pages_len {
        return Err(setup_err(format!("read {}", pages.display()))(
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the pagemap needs {need} bytes of pages, the file has {pages_len}"),
            ),
        ));
    }
    Ok((runs, top))
}

/// The content of a shmem object of `size` bytes from its pagemap (offsets as addresses), up
/// to the end of its last page of data: the rest is zeros, which the object the caller made
/// `size` bytes long already holds. Nothing is allocated before every entry is checked
/// against `size` and the pages file's length, and the buffer is reserved fallibly: a pagemap
/// or a size claiming terabytes is an error, never an abort.
pub(crate) fn read_shmem_content(
    size: u64,
    entries: &[pb::PagemapEntry],
    pages: &Path,
) -> Result<Vec<u8>, RestoreError> {
    let f = File::open(pages).map_err(setup_err(format!("open {}", pages.display())))?;
    let pages_len = f
        .metadata()
        .map_err(setup_err(format!("stat {}", pages.display())))?
        .len();
    let (runs, top) = shmem_runs(size, entries, pages, pages_len)?;
    let top = usize::try_from(top).map_err(|_| MmError::PagesBeyondObject {
        path: pages.to_path_buf(),
    })?;
    let mut content = Vec::new();
    content.try_reserve_exact(top).map_err(|e| {
        setup_err(format!("memory for the content of {}", pages.display()))(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            e,
        ))
    })?;
    content.resize(top, 0);
    let mut off = 0u64;
    for (start, len) in runs {
        // shmem_runs checked start + len <= top.
        f.read_exact_at(&mut content[start as usize..(start + len) as usize], off)
            .map_err(setup_err(format!("read {}", pages.display())))?;
        off += len;
    }
    Ok(content)
}

/// Shared anonymous memory: a shmem object made by mmap(MAP_SHARED|MAP_ANONYMOUS), filled, and
/// kept as an fd from /proc/self/map_files so the tasks map the same kind of object.
pub(crate) fn make_shmem(
    size: u64,
    entries: &[pb::PagemapEntry],
    pages: &Path,
    huge: u32,
) -> Result<OwnedFd, RestoreError> {
    // hugetlb memory (`huge`: MAP_HUGETLB and the page size bits of its mappings) comes in
    // whole huge pages, and is filled through the mapping (hugetlbfs has no write()).
    let size = match huge_page_size(huge) {
        Some(h) => size.div_ceil(h) * h,
        None => size,
    };
    // SAFETY: a fresh shared anonymous mapping of `size` bytes, unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_ANONYMOUS | huge as libc::c_int,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        return Err(setup_err("shared memory")(std::io::Error::last_os_error()));
    }
    let result = (|| {
        let f = File::open(pages).map_err(setup_err(format!("open {}", pages.display())))?;
        let pages_len = f
            .metadata()
            .map_err(setup_err(format!("stat {}", pages.display())))?
            .len();
        // The mapping is `size` bytes: whole pages, so rounding changes nothing.
        let (runs, _) = shmem_runs(size, entries, pages, pages_len)?;
        let mut off = 0u64;
        for (start, len) in runs {
            // SAFETY: the destination lies inside our mapping of `size` bytes (shmem_runs
            // checked start + len <= size rounded up to a page, and the kernel maps whole
            // pages).
            let dst = unsafe {
                std::slice::from_raw_parts_mut(addr.cast::<u8>().add(start as usize), len as usize)
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

/// The huge page size mmap flags name (MAP_HUGETLB with log2 of the size in the
/// MAP_HUGE_SHIFT bits; no size bits: the default, 2 MiB on x86_64); None without MAP_HUGETLB.
pub(crate) fn huge_page_size(flags: u32) -> Option<u64> {
    if flags & libc::MAP_HUGETLB as u32 == 0 {
        return None;
    }
    let shift = (flags >> libc::MAP_HUGE_SHIFT) & libc::MAP_HUGE_MASK as u32;
    Some(if shift == 0 { 2 << 20 } else { 1 << shift })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_page_sizes_from_mmap_flags() {
        let h = libc::MAP_HUGETLB as u32;
        assert_eq!(huge_page_size(0), None);
        assert_eq!(huge_page_size(h), Some(2 << 20));
        assert_eq!(
            huge_page_size(h | (21 << libc::MAP_HUGE_SHIFT)),
            Some(2 << 20)
        );
        assert_eq!(
            huge_page_size(h | (30 << libc::MAP_HUGE_SHIFT)),
            Some(1 << 30)
        );
    }

    fn entry(vaddr: u64, nr_pages: u64) -> pb::PagemapEntry {
        pb::PagemapEntry {
            vaddr,
            compat_nr_pages: nr_pages as u32,
            in_parent: None,
            flags: Some(images::PE_PRESENT),
            nr_pages: Some(nr_pages),
        }
    }

    #[test]
    fn shmem_content_is_checked_before_it_is_allocated() {
        let dir = std::env::temp_dir().join(format!("stasis-shmem-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let pages = dir.join("pages-1.img");
        let mut data = vec![0u8; 2 * PAGE_SIZE as usize];
        data[PAGE_SIZE as usize] = 7;
        std::fs::write(&pages, &data).unwrap();
        // An object claiming a terabyte with one page of data at 8 KiB: only up to that page.
        let got = read_shmem_content(1 << 40, &[entry(2 * PAGE_SIZE, 2)], &pages).unwrap();
        assert_eq!(got.len(), 4 * PAGE_SIZE as usize);
        assert_eq!(got[3 * PAGE_SIZE as usize], 7);
        // Entries that overflow, lie beyond the object, or need more pages than the file has.
        let bad = [
            (1 << 40, entry(0, 1 << 52)),
            (1 << 40, entry(u64::MAX - PAGE_SIZE + 1, 1)),
            (PAGE_SIZE, entry(PAGE_SIZE, 1)),
            (u64::MAX, entry(0, 1)),
            (1 << 40, entry(0, 3)),
        ];
        for (size, e) in bad {
            assert!(
                read_shmem_content(size, &[e], &pages).is_err(),
                "{size} {e:?}"
            );
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
