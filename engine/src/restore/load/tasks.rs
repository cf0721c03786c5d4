//! The process tree and each task's own images (cores, memory map, pagemap, fds, fs).

use std::collections::HashSet;
use std::path::Path;

use super::pages::{covered, nr_pages, pagemap};
use super::{all, invalid, one, read_optional, LoadError, TaskImage, ThreadImage};
use crate::images::{self, magic, names, pb, ImageKind, ImageReader};
use crate::sys::mem::PAGE_SIZE;

/// pstree.img, checked: every pid once, every parent in the tree.
pub(super) fn load_pstree(dir: &Path) -> Result<Vec<pb::PstreeEntry>, LoadError> {
    let mut pstree: Vec<pb::PstreeEntry> = all(dir, names::PSTREE, magic::PSTREE)?;
    if pstree.is_empty() {
        return Err(invalid(names::PSTREE, "no process"));
    }
    for p in pstree.iter_mut() {
        // CRIU leaves a zombie's thread list as it found it (garbage): a zombie has none.
        if p.pid != 0 && p.threads.first() != Some(&p.pid) && is_zombie(dir, p.pid) {
            p.threads = vec![p.pid];
        }
    }
    let mut seen = HashSet::new();
    for p in &pstree {
        if p.pid == 0 || p.threads.first() != Some(&p.pid) {
            return Err(invalid(
                names::PSTREE,
                format!("process {} has a bad thread list", p.pid),
            ));
        }
        for t in &p.threads {
            if !seen.insert(*t) {
                return Err(invalid(names::PSTREE, format!("id {t} appears twice")));
            }
        }
    }
    let pids: HashSet<u32> = pstree.iter().map(|p| p.pid).collect();
    for p in pstree.iter().skip(1) {
        if !pids.contains(&p.ppid) {
            return Err(invalid(
                names::PSTREE,
                format!("parent {} of {} is not in the tree", p.ppid, p.pid),
            ));
        }
    }
    Ok(pstree)
}

/// Whether process `pid`'s core says it was dead (a zombie) when dumped.
pub(super) fn is_zombie(dir: &Path, pid: u32) -> bool {
    one::<pb::CoreEntry>(dir, &names::core(pid), ImageKind::Normal, magic::CORE)
        .ok()
        .and_then(|c| c.tc)
        .is_some_and(|tc| tc.task_state == images::TASK_DEAD)
}

/// Every task's images: cores, memory map, pagemap, fds and fs, each checked.
pub(super) fn load_tasks(
    dir: &Path,
    pstree: Vec<pb::PstreeEntry>,
) -> Result<Vec<TaskImage>, LoadError> {
    let mut tasks = Vec::new();
    for p in pstree {
        let zfile = names::core(p.pid);
        let first: pb::CoreEntry = one(dir, &zfile, ImageKind::Normal, magic::CORE)?;
        if let Some(tc) = first
            .tc
            .as_ref()
            .filter(|tc| tc.task_state == images::TASK_DEAD)
        {
            let exit = tc.exit_code;
            tasks.push(TaskImage {
                threads: vec![ThreadImage {
                    tid: p.pid,
                    core: first,
                }],
                pstree: p,
                mm: Default::default(),
                pagemap: Vec::new(),
                pages_file: String::new(),
                fds: Vec::new(),
                fs: Default::default(),
                zombie_exit: Some(exit),
                files_id: 0,
                shares_parent_files: false,
            });
            continue;
        }
        let mut threads = Vec::new();
        for &tid in &p.threads {
            let file = names::core(tid);
            let core: pb::CoreEntry = one(dir, &file, ImageKind::Normal, magic::CORE)?;
            if core.thread_info.is_none() || core.thread_core.is_none() {
                return Err(invalid(&file, "no x86_64 thread state"));
            }
            if core.mtype != pb::core_entry::March::X8664 as i32 {
                return Err(invalid(&file, "not an x86_64 image"));
            }
            if tid == p.pid && core.tc.is_none() {
                return Err(invalid(&file, "no task state in the main thread"));
            }
            threads.push(ThreadImage { tid, core });
        }
        let pid = p.pid;
        let mm_file = names::mm(pid);
        let mm: pb::MmEntry = one(dir, &mm_file, ImageKind::Normal, magic::MM)?;
        let mut last_end = 0;
        for v in &mm.vmas {
            if v.start % PAGE_SIZE != 0
                || v.end % PAGE_SIZE != 0
                || v.end <= v.start
                || v.start < last_end
                || v.pgoff.checked_add(v.end - v.start).is_none()
            {
                return Err(invalid(
                    &mm_file,
                    format!("bad mapping {:#x}-{:#x}", v.start, v.end),
                ));
            }
            last_end = v.end;
        }
        let (pm, pages_file) = pagemap(dir, &names::pagemap(pid as u64))?;
        for e in &pm {
            // pagemap() checked the span: no overflow.
            let end = e.vaddr + nr_pages(e) * PAGE_SIZE;
            if !covered(&mm.vmas, e.vaddr, end) {
                return Err(invalid(
                    &names::pagemap(pid as u64),
                    format!("pages at {:#x}-{end:#x} lie outside every mapping", e.vaddr),
                ));
            }
        }
        // CRIU keeps a task's kernel-object ids in ids-<pid>.img and not in its core; stasis
        // writes both. Whichever is there, the core carries them from here on.
        if threads[0].core.ids.is_none() {
            if let Some(bytes) = read_optional(dir, &names::ids(pid))? {
                let file = names::ids(pid);
                let mut r = ImageReader::new(&file, &bytes, ImageKind::Normal, magic::IDS)?;
                threads[0].core.ids = Some(r.next_required()?);
            }
        }
        let files_id = threads[0]
            .core
            .ids
            .as_ref()
            .map(|i| i.files_id)
            .unwrap_or(pid);
        // A table used by an earlier task is its parent's (CLONE_FILES), restored with it:
        // nothing of its own to read.
        let holder = tasks
            .iter()
            .find(|o: &&TaskImage| o.zombie_exit.is_none() && o.files_id == files_id);
        let parent_has_it = tasks
            .iter()
            .any(|o| o.pid() == p.ppid && o.zombie_exit.is_none() && o.files_id == files_id);
        let shares_parent_files = match holder {
            None => false,
            Some(_) if parent_has_it => true,
            Some(h) => {
                return Err(invalid(
                    &names::core(pid),
                    format!(
                        "process {pid} shares the fd table of process {}, which is not its parent: not supported yet",
                        h.pid()
                    ),
                ))
            }
        };
        let fds: Vec<pb::FdinfoEntry> = if shares_parent_files {
            Vec::new()
        } else {
            all(dir, &names::fdinfo(files_id), magic::FDINFO)?
        };
        let fs: pb::FsEntry = one(dir, &names::fs(pid), ImageKind::Normal, magic::FS)?;
        tasks.push(TaskImage {
            pstree: p,
            threads,
            mm,
            pagemap: pm,
            pages_file,
            fds,
            fs,
            zombie_exit: None,
            files_id,
            shares_parent_files,
        });
    }
    Ok(tasks)
}
