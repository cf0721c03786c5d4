//! Virtual memory areas: the `mm` image (every VMA with its kind, protection, flags and madvise
//! state, plus the mm's fields) and the private pages, dumped from /proc/<pid>/smaps and
//! pagemap; at restore the address space is rebuilt by injected syscalls.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::RawFd;

use super::pages::{PageSink, PageSource};
use super::shmem::{dump_shmem, dump_shmem_object, finish_pages};
use super::MmError;
use crate::dump::{write_file, DumpError, DumpStats, Images};
use crate::images::{self, magic, names, pb, vma_status::*, ImageKind, ImageWriter};
use crate::ipc::shm::shm_entry;
use crate::proc::{self, Mapping};
use crate::restore::{load, ptr_err, setup_err, DumpImage, RestoreError};
use crate::sys::mem::{self, PageSelect, PAGE_SIZE};
use crate::sys::ptrace;
use crate::task::core::TaskImage;
use crate::task::remote::Remote;

/// What of the mm only the task itself tells, by injected syscalls.
pub(crate) struct MmFromTask {
    pub(crate) brk: u64,
    pub(crate) dumpable: i64,
    pub(crate) thp_disabled: i64,
}

/// Dumps the address space of `pid` (`maps` from its smaps): pages, pagemap and `mm` images.
pub(crate) fn dump_mm(
    pid: u32,
    st: &proc::Stat,
    from_task: MmFromTask,
    maps: &[Mapping],
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let exe = proc::readlink(pid, "exe")?;
    let exe_id = img.files.add_exe(pid, &exe)?;
    let auxv = proc::auxv(pid)?;
    let vmas = dump_memory(pid, maps, img, stats)?;
    let mm = pb::MmEntry {
        mm_start_code: st.start_code,
        mm_end_code: st.end_code,
        mm_start_data: st.start_data,
        mm_end_data: st.end_data,
        mm_start_stack: st.start_stack,
        mm_start_brk: st.start_brk,
        mm_brk: from_task.brk,
        mm_arg_start: st.arg_start,
        mm_arg_end: st.arg_end,
        mm_env_start: st.env_start,
        mm_env_end: st.env_end,
        exe_file_id: exe_id,
        mm_saved_auxv: auxv,
        vmas,
        dumpable: Some(from_task.dumpable as i32),
        aios: Vec::new(),
        thp_disabled: Some(from_task.thp_disabled != 0),
    };
    let mut w = ImageWriter::new(ImageKind::Normal, magic::MM);
    w.push(&mm);
    write_file(&img.dir.join(names::mm(img.pids.v(pid))), &w.into_bytes())
}

fn madv_bits(m: &Mapping) -> u64 {
    let mut v = 0u64;
    for (flag, adv) in [
        ("sr", libc::MADV_SEQUENTIAL),
        ("rr", libc::MADV_RANDOM),
        ("dc", libc::MADV_DONTFORK),
        ("dd", libc::MADV_DONTDUMP),
        ("mg", libc::MADV_MERGEABLE),
        ("hg", libc::MADV_HUGEPAGE),
        ("nh", libc::MADV_NOHUGEPAGE),
        ("wf", libc::MADV_WIPEONFORK),
    ] {
        if m.has_flag(flag) {
            v |= 1 << adv;
        }
    }
    v
}

fn unsupported(pid: u32, m: &Mapping, what: &str) -> DumpError {
    DumpError::UnsupportedVma {
        pid,
        start: m.start,
        end: m.end,
        path: m.path.clone(),
        what: what.to_string(),
    }
}

/// Every VMA, and the private pages that differ from their backing, into a pages image.
fn dump_memory(
    pid: u32,
    maps: &[Mapping],
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<Vec<pb::VmaEntry>, DumpError> {
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).map_err(|source| {
        DumpError::Proc(proc::ProcError::Read {
            path: format!("/proc/{pid}/pagemap").into(),
            source,
        })
    })?;
    let pages_id = img.next_pages_id;
    img.next_pages_id += 1;
    let mut pages = PageSink::create(&img.dir.join(names::pages(pages_id)))?;
    let mut pm = ImageWriter::new(ImageKind::Normal, magic::PAGEMAP);
    pm.push(&pb::PagemapHead { pages_id });
    let mut vmas = Vec::new();
    for m in maps {
        let mut vma = vma_entry(m);
        let Some(select) = classify(pid, m, &mut vma, img, stats)? else {
            vmas.push(vma);
            continue;
        };
        let runs = mem::dirty_runs(&pagemap, pid, m.start, m.end, select)?;
        stats.pages_scanned += m.len() / PAGE_SIZE;
        for (addr, npages) in runs {
            pages.copy_from(pid, addr, npages * PAGE_SIZE)?;
            pm.push(&pb::PagemapEntry {
                vaddr: addr,
                // CRIU's 32-bit field, kept for old readers; nr_pages is the real count.
                compat_nr_pages: u32::try_from(npages).unwrap_or(0),
                in_parent: None,
                flags: Some(images::PE_PRESENT),
                nr_pages: Some(npages),
            });
        }
        vmas.push(vma);
    }
    finish_pages(pages, stats)?;
    write_file(
        &img.dir.join(names::pagemap(img.pids.v(pid) as u64)),
        &pm.into_bytes(),
    )?;
    Ok(merge_vvar(vmas))
}

/// [vvar] and [vvar_vclock] (kernels 6.x) as one VVAR area, as CRIU 4.2 records them: CRIU's
/// restorer takes the vdso to follow the first VVAR area, and our own restore moves the group
/// as one either way.
fn merge_vvar(vmas: Vec<pb::VmaEntry>) -> Vec<pb::VmaEntry> {
    let mut out: Vec<pb::VmaEntry> = Vec::with_capacity(vmas.len());
    for v in vmas {
        match out.last_mut() {
            Some(prev)
                if prev.status & VMA_AREA_VVAR != 0
                    && v.status & VMA_AREA_VVAR != 0
                    && prev.end == v.start
                    && prev.prot == v.prot =>
            {
                prev.end = v.end;
            }
            _ => out.push(v),
        }
    }
    out
}

/// The VMA as smaps shows it: bounds, protection, flags, madvise state; a regular area.
/// MAP_DROPPABLE, which libc does not name yet.
const MAP_DROPPABLE: u32 = 0x08;

fn vma_entry(m: &Mapping) -> pb::VmaEntry {
    let prot = (m.read as u32 * libc::PROT_READ as u32)
        | (m.write as u32 * libc::PROT_WRITE as u32)
        | (m.exec as u32 * libc::PROT_EXEC as u32);
    // MAP_DROPPABLE (6.11+, smaps `dp`): a mapping type of its own, pages the kernel may drop.
    let mut flags = if m.has_flag("dp") {
        MAP_DROPPABLE
    } else if m.shared {
        libc::MAP_SHARED as u32
    } else {
        libc::MAP_PRIVATE as u32
    };
    if m.has_flag("gd") {
        flags |= libc::MAP_GROWSDOWN as u32;
    }
    // mlock()ed memory (VM_LOCKED); lock-on-fault (`lf`) areas are left unlocked.
    if m.has_flag("lo") && !m.has_flag("lf") {
        flags |= libc::MAP_LOCKED as u32;
    }
    // `nr` is VM_NORESERVE itself: glibc's thread arenas reserve PROT_NONE space that way.
    // A writable private mapping that is not accounted was made with MAP_NORESERVE too, but
    // for hugetlb memory (`ht`), which is never accounted so.
    if m.has_flag("nr") || (!m.shared && m.write && !m.has_flag("ac") && !m.has_flag("ht")) {
        flags |= libc::MAP_NORESERVE as u32;
    }
    pb::VmaEntry {
        start: m.start,
        end: m.end,
        pgoff: m.offset,
        shmid: 0,
        prot,
        flags,
        status: VMA_AREA_REGULAR,
        fd: -1,
        madv: Some(madv_bits(m)),
        fdflags: None,
    }
}

/// Sets the kind of area `vma` is and dumps the objects behind it (shared memory, files);
/// returns which of its pages go to the task's pages image, if any.
fn classify(
    pid: u32,
    m: &Mapping,
    vma: &mut pb::VmaEntry,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<Option<PageSelect>, DumpError> {
    match m.path.as_str() {
        // The kernel's own areas, marked as CRIU marks them (anonymous private), so CRIU's
        // restorer finds its vdso where it looks.
        "[vsyscall]" => {
            vma.status = VMA_AREA_VSYSCALL | VMA_ANON_PRIVATE;
            vma.flags |= libc::MAP_ANONYMOUS as u32;
            Ok(None)
        }
        // Its pages are saved as CRIU saves them (CRIU's restorer reads the dumped vdso to
        // compare it with the running one); our restore keeps the running kernel's.
        "[vdso]" => {
            vma.status |= VMA_AREA_VDSO | VMA_ANON_PRIVATE;
            vma.flags |= libc::MAP_ANONYMOUS as u32;
            Ok(Some(PageSelect::Anon))
        }
        "[vvar]" | "[vvar_vclock]" => {
            vma.status |= VMA_AREA_VVAR | VMA_ANON_PRIVATE;
            vma.flags |= libc::MAP_ANONYMOUS as u32;
            Ok(None)
        }
        // A System V segment's inode is its id, and id 0 is the first in a namespace.
        _ if m.inode == 0 && !m.path.starts_with("/SYSV") => {
            if m.shared {
                return Err(unsupported(
                    pid,
                    m,
                    "shared anonymous memory without a backing inode",
                ));
            }
            vma.flags |= libc::MAP_ANONYMOUS as u32;
            vma.status |= VMA_ANON_PRIVATE;
            if m.path == "[heap]" {
                vma.status |= VMA_AREA_HEAP;
            } else if m.path == "[stack]" {
                vma.status |= VMA_AREA_STACK;
            } else if !m.path.is_empty() && !m.path.starts_with("[anon:") {
                return Err(unsupported(pid, m, "a special mapping"));
            }
            if vma.flags & MAP_DROPPABLE != 0 {
                // Pages the kernel may drop at any time (glibc's vgetrandom state): as CRIU,
                // not saved; the restored area reads zeros, as after a drop.
                return Ok(None);
            }
            Ok(Some(PageSelect::Anon))
        }
        p if p.starts_with("/dev/zero") || p.starts_with("/SYSV") => {
            if !m.shared && p.starts_with("/dev/zero") && p.ends_with(" (deleted)") {
                // A private mapping of a shared anonymous object (mapped again through
                // /proc/<pid>/map_files, zdtm's shmemfd-priv): its untouched pages show the
                // object, so the object is saved and mapped privately again, and only the
                // pages copied on write are the task's own.
                vma.flags |= libc::MAP_ANONYMOUS as u32;
                vma.status |= VMA_ANON_SHARED;
                vma.shmid = m.inode;
                dump_shmem(pid, m, img, stats)?;
                Ok(Some(PageSelect::PrivateFile))
            } else if !m.shared {
                // A private mapping of /dev/zero itself is plain anonymous memory.
                vma.flags |= libc::MAP_ANONYMOUS as u32;
                vma.status |= VMA_ANON_PRIVATE;
                Ok(Some(PageSelect::Anon))
            } else if p.starts_with("/SYSV") {
                sysv_vma(pid, m, vma, img, stats)?;
                Ok(None)
            } else {
                vma.flags |= libc::MAP_ANONYMOUS as u32;
                vma.status |= VMA_ANON_SHARED;
                vma.shmid = m.inode;
                dump_shmem(pid, m, img, stats)?;
                Ok(None)
            }
        }
        p if p.starts_with("/memfd:") => memfd_vma(pid, m, vma, img, stats),
        p if p.starts_with("/[aio]") => Err(unsupported(pid, m, "an AIO ring")),
        p if p.starts_with("/anon_hugepage") => {
            // hugetlb memory, as CRIU records it: anonymous, with MAP_HUGETLB and the huge
            // page size (log2, in the bits mmap takes it) in the flags.
            let size = m.kernel_page_kb * 1024;
            if !size.is_power_of_two() || size <= PAGE_SIZE {
                return Err(unsupported(
                    pid,
                    m,
                    "hugetlb memory of an unknown page size",
                ));
            }
            vma.flags |= (libc::MAP_ANONYMOUS | libc::MAP_HUGETLB) as u32
                | (size.trailing_zeros() << libc::MAP_HUGE_SHIFT);
            if m.shared {
                vma.status |= VMA_ANON_SHARED;
                vma.shmid = m.inode;
                dump_shmem(pid, m, img, stats)?;
                Ok(None)
            } else {
                vma.status |= VMA_ANON_PRIVATE;
                Ok(Some(PageSelect::Anon))
            }
        }
        p if m.shared && p.ends_with(" (deleted)") && m.dev_major == 0 && m.dev_minor <= 1 => {
            Err(unsupported(pid, m, "shared memory of an unknown kind"))
        }
        p if p.starts_with('/') => {
            // A shared mapping that may become writable (VmFlags "mw": the file was opened
            // for writing) needs a writable file, or a later mprotect(PROT_WRITE) fails.
            let open_flags = if m.shared && (m.write || m.has_flag("mw")) {
                libc::O_RDWR
            } else {
                libc::O_RDONLY
            };
            vma.shmid =
                img.files
                    .add_mapping(pid, m.start, m.end, p, open_flags as u32)? as u64;
            vma.fdflags = Some(open_flags as u32);
            if m.shared {
                vma.status |= VMA_FILE_SHARED;
                return Ok(None);
            }
            vma.status |= VMA_FILE_PRIVATE;
            Ok(Some(PageSelect::PrivateFile))
        }
        p if p.starts_with("socket:[") => {
            // A packet socket's ring, mapped by the task: the socket (an fd of the tree, dumped
            // before the memory) is mapped again once its rings are set up, as CRIU does. The
            // frames are the kernel's, not saved.
            let Some(id) = img.files.packet_socket_id(m.inode) else {
                return Err(unsupported(
                    pid,
                    m,
                    "a socket mapping whose socket no fd holds",
                ));
            };
            // CRIU's form: VMA_AREA_SOCKET alone, the socket's file id as shmid.
            vma.shmid = id as u64;
            vma.status |= VMA_AREA_SOCKET;
            vma.fdflags = Some(libc::O_RDWR as u32);
            Ok(None)
        }
        _ => Err(unsupported(pid, m, "an unknown kind of mapping")),
    }
}

/// A whole System V segment mapped by the tree alone; its content is dumped once.
fn sysv_vma(
    pid: u32,
    m: &Mapping,
    vma: &mut pb::VmaEntry,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<(), DumpError> {
    let shmid = m.inode as u32;
    let seg = img
        .sysv_segments
        .iter()
        .find(|s| s.shmid == shmid)
        .cloned()
        .ok_or_else(|| {
            unsupported(
                pid,
                m,
                "System V shared memory that /proc/sysvipc/shm does not list",
            )
        })?;
    // Not counted means no attachment in the tree.
    let in_tree = img.sysv_attached.get(&shmid).copied().unwrap_or(0);
    if seg.nattch > in_tree {
        return Err(unsupported(pid, m, &format!(
            "System V shared memory segment {shmid} (key {:#x}), also attached outside the tree ({} attachments, {in_tree} in the tree),",
            seg.key, seg.nattch
        )));
    }
    if m.offset != 0 || m.len() < seg.size.div_ceil(PAGE_SIZE) * PAGE_SIZE {
        return Err(unsupported(
            pid,
            m,
            "a partly mapped System V shared memory segment",
        ));
    }
    vma.status |= VMA_AREA_SYSVIPC;
    vma.shmid = shmid as u64;
    if !img.sysv_dumped.iter().any(|e| e.desc.id == shmid) {
        let path = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
        dump_shmem_object(&path, shmid as u64, seg.size, img, stats)?;
        img.sysv_dumped.push(shm_entry(&seg));
    }
    Ok(())
}

/// A mapping of a memfd: the memfd is a file of the image, its content dumped once.
fn memfd_vma(
    pid: u32,
    m: &Mapping,
    vma: &mut pb::VmaEntry,
    img: &mut Images,
    stats: &mut DumpStats,
) -> Result<Option<PageSelect>, DumpError> {
    let open = format!("/proc/{pid}/map_files/{:x}-{:x}", m.start, m.end);
    let open_flags = if m.shared && m.write {
        libc::O_RDWR
    } else {
        libc::O_RDONLY
    } as u32;
    let (id, fresh) = img.files.add_memfd(&open, &m.path, open_flags, 0, None)?;
    if let Some(shmid) = fresh {
        // Unreadable, the size would read as 0 and the content be lost: fail.
        let size = std::fs::metadata(&open)
            .map_err(|source| MmError::Size {
                path: open.clone(),
                source,
            })?
            .len();
        dump_shmem_object(&open, shmid, size, img, stats)?;
    }
    vma.shmid = id as u64;
    vma.fdflags = Some(open_flags);
    vma.status |= VMA_AREA_MEMFD;
    if m.shared {
        vma.status |= VMA_FILE_SHARED;
        return Ok(None);
    }
    vma.status |= VMA_FILE_PRIVATE;
    Ok(Some(PageSelect::PrivateFile))
}

fn is_special(v: &pb::VmaEntry) -> bool {
    v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR | VMA_AREA_VSYSCALL) != 0
}

/// The pool fd of file `id`, which every mapped file has.
fn file_fd(fd_of_file: &HashMap<u32, RawFd>, pid: u32, id: u32) -> Result<RawFd, MmError> {
    fd_of_file
        .get(&id)
        .copied()
        .ok_or(MmError::FileNotOpened { pid, id })
}

/// What a task's address space is made from besides its images.
pub(crate) struct MmSources<'a> {
    /// The pool fd of each file id, and of each shared anonymous object.
    pub fd_of_file: &'a HashMap<u32, RawFd>,
    pub fd_of_shmem: &'a HashMap<u64, RawFd>,
    /// Close the pool from this fd up once mapped (None: a later task of a shared fd table
    /// still maps from it).
    pub close_pool_from: Option<RawFd>,
    /// The task's areas premapped and filled before the fork (see mm::premap).
    pub premaps: &'a [crate::mm::premap::Premap],
}

/// Rebuilds the address space; returns the address of a syscall instruction in the new vdso.
pub(crate) fn restore_mm(
    r: &Remote,
    t: &TaskImage,
    img: &DumpImage,
    sources: &MmSources,
    pages_restored: &mut u64,
) -> Result<u64, RestoreError> {
    let (fd_of_file, fd_of_shmem) = (sources.fd_of_file, sources.fd_of_shmem);
    let premaps = sources.premaps;
    let pid = t.pid();
    // 1. The stub's rseq area is about to be unmapped: unregister it first.
    let rseq = ptrace::get_rseq(pid).map_err(ptr_err(pid))?;
    if rseq.rseq_abi_pointer != 0 {
        r.call(
            libc::SYS_rseq,
            &[
                rseq.rseq_abi_pointer,
                rseq.rseq_abi_size as u64,
                1,
                rseq.signature as u64,
            ],
        )?;
    }
    // 2. Unmap the stub, except the trampoline, the vdso group and the premapped areas.
    let specials = unmap_stub(r, pid, premaps)?;
    // 3. Move vvar/vvar_vclock/vdso to the dumped addresses, together, keeping their spacing
    // (or unmap them, for a task that had none).
    let vdso_syscall = move_vdso(r, t, specials)?;
    // 4. mm fields, auxv and exe link in one PR_SET_MM_MAP.
    set_mm_map(r, t, fd_of_file)?;
    // 5. Map every area with its own protection.
    let fixups = map_vmas(r, t, fd_of_file, fd_of_shmem, premaps)?;
    // 6. Fill pages from the image, the file read overlapping the copy into the task.
    let mut src = PageSource::open(&img.dir.join(&t.pages_file))?;
    let mem_file = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(setup_err(format!("open /proc/{pid}/mem")))?;
    crate::mm::premap::for_each_segment(t, premaps, |seg| {
        use crate::mm::premap::Segment;
        let (vaddr, len) = match seg {
            // Filled before the fork.
            Segment::In(_, _, len) => return Ok(src.skip(len)?),
            Segment::Out(vaddr, len) => (vaddr, len),
        };
        // The dumped vdso (and anything in the vdso group) stays the running kernel's: its
        // code matches this kernel's vvar data, the dumped one may not.
        let in_vdso =
            t.mm.vmas
                .iter()
                .any(|v| is_special(v) && v.start < vaddr + len && vaddr < v.end);
        if in_vdso {
            src.skip(len)?;
            return Ok(());
        }
        src.copy_to(&mem_file, pid, vaddr, len)?;
        *pages_restored += len / PAGE_SIZE;
        Ok(())
    })?;
    drop(src);
    // 7. Final protections and madvise state.
    for v in fixups {
        r.call(
            libc::SYS_mprotect,
            &[v.start, v.end - v.start, v.prot as u64],
        )?;
    }
    for v in t.mm.vmas.iter().filter(|v| !is_special(v)) {
        let madv = v.madv.unwrap_or(0);
        for bit in 0..64u64 {
            if madv & (1 << bit) != 0 {
                r.call(libc::SYS_madvise, &[v.start, v.end - v.start, bit])?;
            }
        }
    }
    // 8. The pool has served: close it in the task (None: a later task of a shared fd table
    // still maps from it).
    if let Some(pool_base) = sources.close_pool_from {
        r.call(
            libc::SYS_close_range,
            &[pool_base as u64, u32::MAX as u64, 0],
        )?;
    }
    // A task without a vdso: a syscall instruction of its own code, now in place, serves for
    // what is injected last.
    match vdso_syscall {
        Some(at) => Ok(at),
        None => syscall_in_restored_code(t).ok_or_else(|| MmError::NoVdsoSyscall { pid }.into()),
    }
}

/// A syscall instruction in the executable areas of `t`, read back from the task.
fn syscall_in_restored_code(t: &TaskImage) -> Option<u64> {
    let exec =
        t.mm.vmas
            .iter()
            .filter(|v| v.prot & libc::PROT_EXEC as u32 != 0 && !is_special(v));
    for v in exec {
        let mut bytes = vec![0u8; (v.end - v.start) as usize];
        if mem::read(t.pid(), v.start, &mut bytes).is_ok() {
            if let Some(at) = ptrace::find_syscall_insn(&bytes, v.start) {
                return Some(at);
            }
        }
    }
    None
}

/// Unmaps every area of the stub but the trampoline, the vdso group (vdso, vvar,
/// vvar_vclock), whose bounds it returns, and the task's premapped areas.
fn unmap_stub(
    r: &Remote,
    pid: u32,
    premaps: &[crate::mm::premap::Premap],
) -> Result<Vec<(u64, u64)>, RestoreError> {
    let cur = proc::maps(pid).map_err(|source| MmError::Maps { pid, source })?;
    let tramp = r.scratch - PAGE_SIZE;
    let mut specials = Vec::new();
    for m in &cur {
        match m.path.as_str() {
            "[vdso]" | "[vvar]" | "[vvar_vclock]" => specials.push((m.start, m.end)),
            "[vsyscall]" => {}
            _ if m.start == tramp => {}
            _ => {
                // All of it but what lies in premapped areas (a neighbour may have merged
                // with one).
                let mut at = m.start;
                let mut inside: Vec<_> = premaps
                    .iter()
                    .filter(|p| p.at < m.end && m.start < p.at + p.len)
                    .collect();
                inside.sort_by_key(|p| p.at);
                for p in inside {
                    if p.at > at {
                        r.call(libc::SYS_munmap, &[at, p.at - at])?;
                    }
                    at = at.max(p.at + p.len);
                }
                if at < m.end {
                    r.call(libc::SYS_munmap, &[at, m.end - at])?;
                }
            }
        }
    }
    Ok(specials)
}

/// Moves this kernel's vdso group (`specials`) to the dumped addresses, together, keeping their
/// spacing; returns the address of a syscall instruction in the moved vdso.
fn move_vdso(
    r: &Remote,
    t: &TaskImage,
    mut specials: Vec<(u64, u64)>,
) -> Result<Option<u64>, RestoreError> {
    let pid = t.pid();
    let tramp = r.scratch - PAGE_SIZE;
    let mut dumped: Vec<&pb::VmaEntry> =
        t.mm.vmas
            .iter()
            .filter(|v| v.status & (VMA_AREA_VDSO | VMA_AREA_VVAR) != 0)
            .collect();
    // The task had unmapped its vdso (zdtm's vdso02): it gets none. The injections before its
    // code is in place still run at the trampoline.
    if dumped.is_empty() {
        for (start, end) in specials {
            r.call(libc::SYS_munmap, &[start, end - start])?;
        }
        return Ok(None);
    }
    dumped.sort_by_key(|v| v.start);
    specials.sort_unstable();
    let targets = vdso_targets(&dumped, &specials).ok_or(MmError::VdsoLayout {
        pid,
        here: specials.len(),
        dumped: dumped.len(),
    })?;
    if specials.iter().zip(&targets).any(|(s, to)| s.0 != *to) {
        let overlaps = specials
            .iter()
            .any(|s| dumped.iter().any(|d| d.start < s.1 && s.0 < d.end));
        let mut from: Vec<u64> = specials.iter().map(|s| s.0).collect();
        if overlaps {
            let park = tramp + (16 << 20);
            let base = specials[0].0;
            for (i, s) in specials.iter().enumerate() {
                let to = park + (s.0 - base);
                mremap(r, s.0, s.1 - s.0, to)?;
                from[i] = to;
            }
        }
        for (i, s) in specials.iter().enumerate() {
            mremap(r, from[i], s.1 - s.0, targets[i])?;
        }
    }
    let vdso = dumped
        .iter()
        .find(|v| v.status & VMA_AREA_VDSO != 0)
        .ok_or(MmError::NoVdso { pid })?;
    let mut vb = vec![0u8; (vdso.end - vdso.start) as usize];
    mem::read(pid, vdso.start, &mut vb)?;
    Ok(Some(
        ptrace::find_syscall_insn(&vb, vdso.start).ok_or(MmError::NoVdsoSyscall { pid })?,
    ))
}

/// Where each of this kernel's vdso areas (`specials`, sorted) goes: the dumped area of the same
/// size, one for one; or, when the dump counted the areas differently (CRIU 4.2 records
/// [vvar] and [vvar_vclock] as one VVAR area), the same place within the dumped group, if
/// both groups are contiguous, as long, with the vdso at the same offset. None if neither.
fn vdso_targets(dumped: &[&pb::VmaEntry], specials: &[(u64, u64)]) -> Option<Vec<u64>> {
    if dumped.len() == specials.len()
        && dumped
            .iter()
            .zip(specials)
            .all(|(d, s)| d.end - d.start == s.1 - s.0)
    {
        return Some(dumped.iter().map(|d| d.start).collect());
    }
    let contiguous = |v: &[(u64, u64)]| v.windows(2).all(|w| w[0].1 == w[1].0);
    let group: Vec<(u64, u64)> = dumped.iter().map(|d| (d.start, d.end)).collect();
    let (d0, s0) = (group.first()?.0, specials.first()?.0);
    let span = |v: &[(u64, u64)]| v.last().map_or(0, |l| l.1) - v[0].0;
    let dumped_vdso = dumped.iter().find(|v| v.status & VMA_AREA_VDSO != 0)?.start - d0;
    // This kernel's vdso is the last of its group (vvar pages come first).
    let here_vdso = specials.last()?.0 - s0;
    (contiguous(&group)
        && contiguous(specials)
        && span(&group) == span(specials)
        && dumped_vdso == here_vdso)
        .then(|| specials.iter().map(|s| d0 + (s.0 - s0)).collect())
}

/// mm fields, auxv and exe link in one PR_SET_MM_MAP (the only way without CAP_SYS_RESOURCE).
fn set_mm_map(
    r: &Remote,
    t: &TaskImage,
    fd_of_file: &HashMap<u32, RawFd>,
) -> Result<(), RestoreError> {
    let mm = &t.mm;
    let auxv_addr = r.put_words(1024, &mm.mm_saved_auxv)?;
    let exe_fd = file_fd(fd_of_file, t.pid(), mm.exe_file_id)?;
    let mut map = vec![
        mm.mm_start_code,
        mm.mm_end_code,
        mm.mm_start_data,
        mm.mm_end_data,
        mm.mm_start_brk,
        mm.mm_brk,
        mm.mm_start_stack,
        mm.mm_arg_start,
        mm.mm_arg_end,
        mm.mm_env_start,
        mm.mm_env_end,
        auxv_addr,
    ];
    map.push((mm.mm_saved_auxv.len() as u64 * 8) | ((exe_fd as u64) << 32));
    let map_addr = r.put_words(0, &map)?;
    const PR_SET_MM: u64 = 35;
    const PR_SET_MM_MAP: u64 = 14;
    r.call(
        libc::SYS_prctl,
        &[PR_SET_MM, PR_SET_MM_MAP, map_addr, 104, 0],
    )?;
    Ok(())
}

/// Maps every area with its own protection: pages are written through /proc/<pid>/mem, which
/// may write read-only private mappings, so no VMA is ever made writable (and so accounted,
/// `ac`) only to be filled. Inaccessible areas with data are the exception: returned, to be
/// given their protection once filled.
fn map_vmas<'a>(
    r: &Remote,
    t: &'a TaskImage,
    fd_of_file: &HashMap<u32, RawFd>,
    fd_of_shmem: &HashMap<u64, RawFd>,
    premaps: &[crate::mm::premap::Premap],
) -> Result<Vec<&'a pb::VmaEntry>, RestoreError> {
    let pid = t.pid();
    let mut fixups = Vec::new();
    for v in t.mm.vmas.iter().filter(|v| !is_special(v)) {
        let len = v.end - v.start;
        // Premapped and filled already: moved into place, which keeps what it shares with
        // the parent; what the task's image lacks of an inherited area goes.
        if let Some(p) = premaps.iter().find(|p| p.start == v.start && p.len == len) {
            mremap(r, p.at, len, v.start)?;
            if !p.own {
                for (a, b) in crate::mm::premap::holes(t, p) {
                    r.call(libc::SYS_madvise, &[a, b - a, libc::MADV_DONTNEED as u64])?;
                }
            }
            continue;
        }
        let private = v.flags & libc::MAP_SHARED as u32 == 0;
        // An entry may start in an earlier, adjacent mapping (CRIU writes them so).
        let has_pages = t
            .pagemap
            .iter()
            .any(|e| e.vaddr < v.end && e.vaddr + load::nr_pages(e) * PAGE_SIZE > v.start);
        // Copied-on-write pages in a read-only private area mean it was writable once (a RELRO
        // segment): map it writable and mprotect it back, so it is accounted (`ac`) and stays
        // a VMA of its own, as it was.
        let map_prot = if private && has_pages && v.prot & libc::PROT_WRITE as u32 == 0 {
            v.prot | (libc::PROT_READ | libc::PROT_WRITE) as u32
        } else {
            v.prot
        };
        let keep = (MAP_DROPPABLE as i32
            | libc::MAP_HUGETLB
            | (libc::MAP_HUGE_MASK << libc::MAP_HUGE_SHIFT)
            | libc::MAP_SHARED
            | libc::MAP_PRIVATE
            | libc::MAP_ANONYMOUS
            | libc::MAP_GROWSDOWN
            | libc::MAP_NORESERVE
            | libc::MAP_LOCKED) as u32;
        let mut flags = (v.flags & keep) | libc::MAP_FIXED as u32;
        let (fd, off) = if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED | VMA_AREA_SOCKET) != 0 {
            (file_fd(fd_of_file, pid, v.shmid as u32)? as u64, v.pgoff)
        } else if v.status & VMA_ANON_SHARED != 0 {
            flags &= !(libc::MAP_ANONYMOUS as u32);
            let fd = *fd_of_shmem.get(&v.shmid).ok_or(MmError::ShmemNotPrepared {
                pid,
                shmid: v.shmid,
            })?;
            (fd as u64, v.pgoff)
        } else {
            (u64::MAX, 0)
        };
        if v.status & VMA_AREA_SYSVIPC != 0 {
            attach_sysv(r, pid, v)?;
            continue;
        }

        let got = r.call(
            libc::SYS_mmap,
            &[v.start, len, map_prot as u64, flags as u64, fd, off],
        )? as u64;
        if got != v.start {
            return Err(MmError::Landed {
                pid,
                call: "mmap",
                want: v.start,
                got,
            }
            .into());
        }
        if map_prot != v.prot {
            fixups.push(v);
        }
    }
    Ok(fixups)
}

/// The task attaches the segment itself, at its address.
fn attach_sysv(r: &Remote, pid: u32, v: &pb::VmaEntry) -> Result<(), RestoreError> {
    const SHM_EXEC: u64 = 0o100000;
    let mut shmflg = 0u64;
    if v.prot & libc::PROT_WRITE as u32 == 0 {
        shmflg |= libc::SHM_RDONLY as u64;
    }
    if v.prot & libc::PROT_EXEC as u32 != 0 {
        shmflg |= SHM_EXEC;
    }
    let got = r.call(libc::SYS_shmat, &[v.shmid, v.start, shmflg])? as u64;
    if got != v.start {
        return Err(MmError::Landed {
            pid,
            call: "shmat",
            want: v.start,
            got,
        }
        .into());
    }
    Ok(())
}

fn mremap(r: &Remote, from: u64, len: u64, to: u64) -> Result<(), RestoreError> {
    const MREMAP_MAYMOVE: u64 = 1;
    const MREMAP_FIXED: u64 = 2;
    r.call(
        libc::SYS_mremap,
        &[from, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to],
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vvar_and_vvar_vclock_are_one_area_as_in_criu() {
        let area = |start: u64, end: u64, status: u32| pb::VmaEntry {
            start,
            end,
            status,
            prot: 1,
            ..Default::default()
        };
        let vmas = vec![
            area(0x1000, 0x5000, VMA_AREA_VVAR),
            area(0x5000, 0x7000, VMA_AREA_VVAR),
            area(0x7000, 0x9000, VMA_AREA_VDSO),
            area(0x9000, 0xa000, VMA_AREA_VVAR),
        ];
        let got: Vec<(u64, u64)> = merge_vvar(vmas).iter().map(|v| (v.start, v.end)).collect();
        assert_eq!(
            got,
            vec![(0x1000, 0x7000), (0x7000, 0x9000), (0x9000, 0xa000)]
        );
    }

    #[test]
    fn the_vdso_group_moves_one_for_one_or_as_a_whole() {
        let area = |start: u64, end: u64, status: u32| pb::VmaEntry {
            start,
            end,
            status,
            ..Default::default()
        };
        // Dumped by stasis on this kernel: three areas, one for one.
        let three = [
            area(0x10000, 0x14000, VMA_AREA_VVAR),
            area(0x14000, 0x16000, VMA_AREA_VVAR),
            area(0x16000, 0x18000, VMA_AREA_VDSO),
        ];
        let here = [(0x50000, 0x54000), (0x54000, 0x56000), (0x56000, 0x58000)];
        let refs: Vec<&pb::VmaEntry> = three.iter().collect();
        assert_eq!(
            vdso_targets(&refs, &here),
            Some(vec![0x10000, 0x14000, 0x16000])
        );
        // Dumped by CRIU 4.2: [vvar] and [vvar_vclock] as one area.
        let two = [
            area(0x10000, 0x16000, VMA_AREA_VVAR),
            area(0x16000, 0x18000, VMA_AREA_VDSO),
        ];
        let refs: Vec<&pb::VmaEntry> = two.iter().collect();
        assert_eq!(
            vdso_targets(&refs, &here),
            Some(vec![0x10000, 0x14000, 0x16000])
        );
        // A vdso of another size cannot be placed.
        let other = [
            area(0x10000, 0x16000, VMA_AREA_VVAR),
            area(0x16000, 0x19000, VMA_AREA_VDSO),
        ];
        let refs: Vec<&pb::VmaEntry> = other.iter().collect();
        assert_eq!(vdso_targets(&refs, &here), None);
    }

    fn mapping(write: bool, shared: bool, flags: &[&str]) -> Mapping {
        Mapping {
            start: 0x1000,
            end: 0x3000,
            read: true,
            write,
            exec: false,
            shared,
            offset: 0,
            dev_major: 0,
            dev_minor: 0,
            inode: 0,
            path: String::new(),
            vm_flags: flags.iter().map(|f| f.to_string()).collect(),
            kernel_page_kb: 0,
        }
    }

    #[test]
    fn vma_flags_follow_smaps() {
        // Writable, private, not accounted: made with MAP_NORESERVE.
        let v = vma_entry(&mapping(true, false, &["rd", "wr", "gd", "lo"]));
        let f = v.flags as i32;
        assert_eq!(f & libc::MAP_PRIVATE, libc::MAP_PRIVATE);
        assert_ne!(f & libc::MAP_NORESERVE, 0);
        assert_ne!(f & libc::MAP_GROWSDOWN, 0);
        assert_ne!(f & libc::MAP_LOCKED, 0);
        assert_eq!(v.prot as i32, libc::PROT_READ | libc::PROT_WRITE);
        // Accounted, and locked on fault only: neither flag.
        let v = vma_entry(&mapping(true, false, &["ac", "lo", "lf"]));
        assert_eq!(v.flags as i32 & (libc::MAP_NORESERVE | libc::MAP_LOCKED), 0);
        let v = vma_entry(&mapping(false, true, &[]));
        assert_eq!(v.flags as i32, libc::MAP_SHARED);
        assert_eq!(v.status, VMA_AREA_REGULAR);
    }

    #[test]
    fn madvise_bits_are_the_advice_numbers() {
        let m = mapping(false, false, &["dd", "hg", "wf"]);
        let want =
            (1 << libc::MADV_DONTDUMP) | (1 << libc::MADV_HUGEPAGE) | (1 << libc::MADV_WIPEONFORK);
        assert_eq!(madv_bits(&m), want);
        assert_eq!(vma_entry(&m).madv, Some(want));
    }
}
