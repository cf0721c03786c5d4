//! System V shared memory, both sides: which segments the tree attaches (the kernel's
//! nattch counts them), each segment's entry and content (ipcns-shm, a shmem pagemap), and
//! at restore the segment made again with its id, key, size, mode and content.

use std::collections::HashMap;

use crate::dump::{DumpError, DumpStats, Images};
use crate::images::pb;
use crate::mm::shmem::{dump_shmem_object, read_shmem_content};
use crate::proc;
use crate::restore::{setup_err, DumpImage, RestoreError};
use crate::sys::mem::PAGE_SIZE;

/// How many mappings of each System V segment the tree has (the kernel's nattch counts them).
pub(crate) fn tree_attachments<'a>(
    maps: impl IntoIterator<Item = &'a proc::Mapping>,
) -> HashMap<u32, u64> {
    let mut out = HashMap::new();
    for m in maps {
        if m.path.starts_with("/SYSV") && m.shared {
            *out.entry(m.inode as u32).or_insert(0) += 1;
        }
    }
    out
}

pub(crate) fn shm_entry(seg: &proc::parse::ShmSegment) -> pb::IpcShmEntry {
    pb::IpcShmEntry {
        desc: pb::IpcDescEntry {
            key: seg.key as u32,
            uid: seg.uid,
            gid: seg.gid,
            cuid: seg.cuid,
            cgid: seg.cgid,
            mode: seg.perms,
            id: seg.shmid,
        },
        size: seg.size,
        in_pagemaps: Some(true),
        hugetlb_flag: None,
    }
}

/// A segment of the tree's own namespace that no task attaches right now.
pub(crate) fn dump_idle_segment(
    seg: &proc::parse::ShmSegment,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    // SAFETY: shmat(2) read-only at an address the kernel picks; detached below.
    let addr = unsafe { libc::shmat(seg.shmid as i32, std::ptr::null(), libc::SHM_RDONLY) };
    if addr as isize == -1 {
        return Err(DumpError::Ipc(crate::ipc::sysv::IpcError::Attach {
            shmid: seg.shmid as i32,
            source: std::io::Error::last_os_error(),
        }));
    }
    let start = addr as u64;
    let end = start + seg.size.div_ceil(PAGE_SIZE) * PAGE_SIZE;
    let path = format!("/proc/self/map_files/{start:x}-{end:x}");
    let r = dump_shmem_object(&path, seg.shmid as u64, seg.size, img, stats);
    // SAFETY: detaches the attachment made above.
    if unsafe { libc::shmdt(addr) } < 0 {
        log::warn!("cannot detach our copy of System V segment {}", seg.shmid);
    }
    r?;
    img.sysv_dumped.push(shm_entry(seg));
    Ok(())
}

/// Makes sure every dumped System V segment exists with its id, key, size and mode, and holds
/// the dumped content. On this host the segment usually outlived the killed tree and is reused;
/// elsewhere it is created with the same id (kernel.shm_next_id), and listed in `made`.
/// Returns the ids to mark for removal again once attached.
pub(crate) fn prepare(
    img: &DumpImage,
    made: &mut crate::ipc::Made,
) -> Result<Vec<i32>, RestoreError> {
    let mut to_remove = Vec::new();
    for (e, pagemap, pages) in &img.sysv_shm {
        let d = &e.desc;
        let current = crate::ipc::sysv::shm_segments()?;
        let id = match current.iter().find(|s| s.shmid == d.id) {
            Some(s) if s.key as u32 == d.key && s.size == e.size => d.id as i32,
            Some(s) => {
                return Err(RestoreError::ShmIdTaken {
                    id: d.id,
                    key: s.key as u32,
                })
            }
            None => {
                std::fs::write("/proc/sys/kernel/shm_next_id", d.id.to_string())
                    .map_err(setup_err("setting kernel.shm_next_id"))?;
                // SAFETY: shmget(2) with integers.
                let got = unsafe {
                    libc::shmget(
                        d.key as libc::key_t,
                        e.size as usize,
                        libc::IPC_CREAT | libc::IPC_EXCL | (d.mode & 0o777) as i32,
                    )
                };
                if got >= 0 {
                    made.shm.push(got);
                }
                // The kernel puts shm_next_id back to -1 once it has used it.
                if got < 0 || got as u32 != d.id {
                    return Err(setup_err(format!(
                        "creating System V shared memory {} (key {:#x})",
                        d.id, d.key
                    ))(std::io::Error::last_os_error()));
                }
                crate::ipc::sysv::set_owner(crate::ipc::sysv::Object::Shm, got, d)
                    .map_err(RestoreError::Ipc)?;
                got
            }
        };
        let content = read_shmem_content(e.size, pagemap, &img.dir.join(pages))?;
        // SAFETY: shmat of a segment we just checked; detached right after the copy.
        let addr = unsafe { libc::shmat(id, std::ptr::null(), 0) };
        if addr as isize == -1 {
            return Err(setup_err(format!("attaching System V shared memory {id}"))(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: the segment is at least `e.size` bytes long and attached read-write at addr.
        unsafe {
            std::ptr::copy_nonoverlapping(
                content.as_ptr(),
                addr.cast::<u8>(),
                content.len().min(e.size as usize),
            );
        }
        // SAFETY: detaches the attachment made above.
        if unsafe { libc::shmdt(addr) } < 0 {
            return Err(setup_err(format!("detaching System V shared memory {id}"))(
                std::io::Error::last_os_error(),
            ));
        }
        const SHM_DEST: u32 = 0o1000;
        if d.mode & SHM_DEST != 0 {
            to_remove.push(id);
        }
    }
    Ok(to_remove)
}
