//! The pool: every file the tasks use, made once by the restorer (each by the kind that owns
//! its entry, see [`crate::files::kind`]) and placed above every target fd number. The stubs
//! inherit it, which keeps shared open file descriptions shared.

use std::collections::{HashMap, HashSet};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};

use super::{DumpImage, RestoreError, RestoreOptions};
use crate::files::kind::{self, OpenCx};
use crate::images::{pb, vma_status::*};
use crate::mm::shmem::make_shmem;
use crate::restore::load;
use crate::sys::mem::PAGE_SIZE;

pub(crate) struct Pool {
    pub base: RawFd,
    /// First number above the pool.
    pub top: RawFd,
    pub by_file: HashMap<u32, RawFd>,
    pub by_shmid: HashMap<u64, RawFd>,
    /// A slave of its controlling pty for each session leader that held none (see
    /// `files::tty::unheld_controlling_pty`), by pid.
    pub ctty_by_pid: HashMap<u32, RawFd>,
    owned: Vec<OwnedFd>,
}

impl Pool {
    fn place(&mut self, fd: OwnedFd) -> Result<RawFd, RestoreError> {
        // No CLOEXEC: the stubs inherit it.
        let placed =
            crate::sys::fd::dup_above_inheritable(fd.as_fd(), self.top).map_err(|source| {
                RestoreError::Setup {
                    what: "placing a file above the target fds".into(),
                    source,
                }
            })?;
        let n = placed.as_raw_fd();
        self.owned.push(placed);
        self.top = n + 1;
        Ok(n)
    }

    /// Makes every file and shared memory object the tasks use.
    pub fn build(img: &DumpImage, opts: &RestoreOptions) -> Result<Pool, RestoreError> {
        let base = pool_base(img)?;
        let mut pool = Pool {
            base,
            top: base,
            by_file: HashMap::new(),
            by_shmid: HashMap::new(),
            ctty_by_pid: HashMap::new(),
            owned: Vec::new(),
        };
        let (order, mapped) = files_to_make(img);
        // Socket names are the tree's paths, under its root here.
        let _names = crate::net::unix::root::TreeRoot::set(img.fs_root.as_deref());
        let mut cx = OpenCx {
            img,
            opts,
            made: HashMap::new(),
            used: order.iter().copied().collect(),
            terminal: [
                std::io::stdin().as_fd(),
                std::io::stdout().as_fd(),
                std::io::stderr().as_fd(),
            ]
            .into_iter()
            .find(|fd| nix::unistd::isatty(fd).unwrap_or(false))
            .map(|fd| fd.as_raw_fd()),
            slots: Default::default(),
        };
        for id in order {
            super::step(format_args!("file {id}"))?;
            let f = &img.files[&id];
            let kind = kind::owner(f, img).ok_or(RestoreError::UnknownFileKind { id })?;
            let Some(fd) = kind.open(&mut cx, f)? else {
                continue;
            };
            if mapped.contains(&id) && !img.remaps.contains_key(&id) {
                check_unchanged(id, f, &fd)?;
            }
            let n = pool.place(fd)?;
            cx.made.insert(id, n);
        }
        pool.by_file = std::mem::take(&mut cx.made);
        crate::files::epoll::fill_unheld(img, &pool.by_file)?;
        for (pid, fd) in crate::files::tty::slaves_for_unheld_ctty(img, &mut cx.slots)? {
            let n = pool.place(fd)?;
            pool.ctty_by_pid.insert(pid, n);
        }
        // Kind state (ghost files above all) is cleaned up now that every file is open.
        drop(cx);
        for (shmid, (entries, pages_file)) in &img.shmem {
            let size = img
                .tasks
                .iter()
                .flat_map(|t| t.mm.vmas.iter())
                .filter(|v| v.status & VMA_ANON_SHARED != 0 && v.shmid == *shmid)
                .map(|v| v.pgoff + (v.end - v.start))
                .chain(
                    entries
                        .iter()
                        .map(|e| e.vaddr + load::nr_pages(e) * PAGE_SIZE),
                )
                .max()
                .unwrap_or(0);
            // MAP_HUGETLB and its page size, from the mappings of the object.
            let huge = img
                .tasks
                .iter()
                .flat_map(|t| t.mm.vmas.iter())
                .filter(|v| v.status & VMA_ANON_SHARED != 0 && v.shmid == *shmid)
                .map(|v| {
                    v.flags
                        & (libc::MAP_HUGETLB | (libc::MAP_HUGE_MASK << libc::MAP_HUGE_SHIFT)) as u32
                })
                .find(|&f| f != 0)
                .unwrap_or(0);
            let fd = make_shmem(size, entries, &img.dir.join(pages_file), huge)?;
            let n = pool.place(fd)?;
            pool.by_shmid.insert(*shmid, n);
        }
        Ok(pool)
    }
}

/// The first pool number: above every fd a task will have and every fd we hold, rounded.
fn pool_base(img: &DumpImage) -> Result<RawFd, RestoreError> {
    let max_target = img
        .tasks
        .iter()
        .flat_map(|t| t.fds.iter().map(|f| f.fd as RawFd))
        .max()
        .unwrap_or(2);
    let mut max_own = 2;
    let dir = std::fs::read_dir("/proc/self/fd").map_err(|source| RestoreError::Setup {
        what: "listing our own fds".into(),
        source,
    })?;
    for e in dir.flatten() {
        if let Some(n) = e.file_name().to_str().and_then(|n| n.parse::<RawFd>().ok()) {
            max_own = max_own.max(n);
        }
    }
    Ok((max_target.max(max_own) + 64) & !63)
}

/// The ids of every file the tasks use, in the order to make them, and those whose content
/// the tasks run from (the exe and privately mapped files).
fn files_to_make(img: &DumpImage) -> (Vec<u32>, HashSet<u32>) {
    let mut ids: Vec<u32> = Vec::new();
    let mut mapped = HashSet::new();
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
        ids.extend(t.fds.iter().map(|f| f.id));
        ids.extend([t.fs.cwd_id, t.fs.root_id, t.mm.exe_file_id]);
        mapped.insert(t.mm.exe_file_id);
        for v in &t.mm.vmas {
            if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) != 0 {
                ids.push(v.shmid as u32);
                if v.status & VMA_FILE_PRIVATE != 0 {
                    mapped.insert(v.shmid as u32);
                }
            }
        }
    }
    ids.sort_unstable();
    ids.dedup();
    // Sockets that are not repaired connections before those that are: a listener bound
    // after an established connection on its port is refused (EADDRINUSE) even with address
    // reuse on both, while a connection rebuilt in repair mode binds whatever holds the port.
    let repaired = |id: &u32| {
        img.files
            .get(id)
            .and_then(|f| f.isk.as_ref())
            .is_some_and(|i| {
                i.proto == libc::IPPROTO_TCP as u32
                    && crate::net::inet::halfclose::is_connection(i.state)
            })
    };
    let (conns, rest): (Vec<u32>, Vec<u32>) = ids.into_iter().partition(repaired);
    let mut ids = rest;
    ids.extend(conns);
    // Files in flight first: the queues that carry them are filled when their socket is
    // made, and a file in flight may be used by no task at all.
    let mut order = img.in_flight.clone();
    order.extend(ids.into_iter().filter(|i| !img.in_flight.contains(i)));
    (order, mapped)
}

/// A program or library replaced since the dump (an upgrade) would run the old memory image
/// against new code pages: refuse, as CRIU does, when the size differs.
fn check_unchanged(id: u32, f: &pb::FileEntry, fd: &OwnedFd) -> Result<(), RestoreError> {
    let Some(reg) = &f.reg else { return Ok(()) };
    let Some(want) = reg.size else { return Ok(()) };
    let md = std::fs::File::from(crate::files::reg::dup(fd)?)
        .metadata()
        .map_err(|source| RestoreError::Setup {
            what: format!("stat {}", reg.name),
            source,
        })?;
    if md.len() != want {
        return Err(RestoreError::Changed {
            id,
            path: reg.name.clone(),
            was: want,
            now: md.len(),
        });
    }
    Ok(())
}
