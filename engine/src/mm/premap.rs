//! Copy-on-write memory between a parent and its children, kept through the restore.
//!
//! A forked child shares its parent's private anonymous pages until either writes them: a
//! server with forked workers (nginx, postgres, redis saving) holds much of its memory once.
//! The images hold each task's pages whole, so restoring every task's own copy would multiply
//! that memory. Instead, a task with children maps its private writable anonymous areas in its
//! stub before it forks them, at a place outside every dumped mapping ("premapped"), and the
//! restorer fills them there. Each child then finds those areas already in its address space,
//! inherited: the restorer writes only the pages its image disagrees with (the others stay
//! shared), and `restore_mm` moves each area into place with `mremap`, which keeps the sharing,
//! and drops what the child did not have (`MADV_DONTNEED` over pages its image lacks).
//! CRIU restores the same way.

use std::path::Path;

use crate::images::vma_status::{
    VMA_ANON_PRIVATE, VMA_AREA_HEAP, VMA_AREA_REGULAR, VMA_FILE_PRIVATE,
};
use crate::images::{pb, PE_PRESENT};
use crate::restore::{load, DumpImage, RestoreError};
use crate::sys::mem::PAGE_SIZE;

/// One area of a task mapped before its children are forked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Premap {
    /// The dumped area (start, length).
    pub start: u64,
    pub len: u64,
    /// Where it is mapped until `restore_mm` moves it.
    pub at: u64,
    pub prot: u32,
    /// The area's MAP_NORESERVE, if it had it (its other flags are MAP_PRIVATE and, without a
    /// file, MAP_ANONYMOUS).
    pub flags: u32,
    /// A private file mapping's file id and offset (its copied-on-write pages are shared).
    pub file: Option<(u32, u64)>,
    /// Mapped by this task's stub; otherwise inherited from its parent.
    pub own: bool,
}

/// Private writable memory, anonymous or a file's, that mremap can move as it is: not a stack
/// (it grows), not locked, not droppable, not hugetlb.
pub fn eligible(v: &pb::VmaEntry) -> bool {
    const MAP_DROPPABLE: u32 = 0x08;
    let kinds = VMA_AREA_REGULAR | VMA_AREA_HEAP | VMA_ANON_PRIVATE | VMA_FILE_PRIVATE;
    v.status & (VMA_ANON_PRIVATE | VMA_FILE_PRIVATE) != 0
        && v.status & !kinds == 0
        && v.flags
            & (libc::MAP_SHARED | libc::MAP_GROWSDOWN | libc::MAP_LOCKED | libc::MAP_HUGETLB) as u32
            == 0
        && v.flags & MAP_DROPPABLE == 0
        && v.prot & libc::PROT_WRITE as u32 != 0
}

fn noreserve(v: &pb::VmaEntry) -> u32 {
    v.flags & libc::MAP_NORESERVE as u32
}

fn file_of(v: &pb::VmaEntry) -> Option<(u32, u64)> {
    (v.status & VMA_FILE_PRIVATE != 0).then_some((v.shmid as u32, v.pgoff))
}

fn has_pages(t: &load::TaskImage, v: &pb::VmaEntry) -> bool {
    t.pagemap
        .iter()
        .any(|e| e.vaddr < v.end && e.vaddr + load::nr_pages(e) * PAGE_SIZE > v.start)
}

/// The last field of `NSpid` of process `p` (its pid in its own pid namespace).
fn inner_pid(p: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{p}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse::<u32>().ok())
}

/// The pid here of the task that is `ns_pid` in the pid namespace whose init is `root` (a pid
/// here): looked for among `root`'s descendants by the last field of their `NSpid`, then, if
/// the walk missed it, among every process of `/proc` in `root`'s pid namespace. A walk can
/// miss one: a session helper that exits while it is read has its children reparented to
/// `root`, whose list was read already (seen once in CI).
pub fn host_pid(root: u32, ns_pid: u32) -> Option<u32> {
    let mut queue = vec![root];
    while let Some(p) = queue.pop() {
        if inner_pid(p) == Some(ns_pid) {
            return Some(p);
        }
        let kids =
            std::fs::read_to_string(format!("/proc/{p}/task/{p}/children")).unwrap_or_default();
        queue.extend(
            kids.split_whitespace()
                .filter_map(|k| k.parse::<u32>().ok()),
        );
    }
    use std::os::unix::fs::MetadataExt;
    let ns_of = |p: u32| {
        std::fs::metadata(format!("/proc/{p}/ns/pid"))
            .ok()
            .map(|m| (m.dev(), m.ino()))
    };
    let ns = ns_of(root)?;
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|&p| inner_pid(p) == Some(ns_pid) && ns_of(p) == Some(ns))
}

/// Per task (in image order), its premapped areas, laid out from `base` with a page before
/// each area so that none merges with its neighbour. Empty for all when no live task has live
/// children. `parents[i]`: the task whose memory task `i` is forked with (its parent, or the
/// forker of the session helper that forks it: see restore::sessions).
pub fn plan(img: &DumpImage, base: u64, parents: &[Option<usize>]) -> Vec<Vec<Premap>> {
    let live = |i: usize| img.tasks[i].zombie_exit.is_none();
    let parent_of = |i: usize| parents.get(i).copied().flatten().filter(|&p| p != i);
    let mut out: Vec<Vec<Premap>> = vec![Vec::new(); img.tasks.len()];
    let mut next = base + PAGE_SIZE;
    for i in parents_first(img.tasks.len(), parent_of) {
        if !live(i) {
            continue;
        }
        let t = &img.tasks[i];
        let parent = parent_of(i).filter(|&p| live(p));
        let has_children = (1..img.tasks.len()).any(|j| live(j) && parent_of(j) == Some(i));
        let mut mine = Vec::new();
        for v in t.mm.vmas.iter().filter(|v| eligible(v)) {
            let len = v.end - v.start;
            let from_parent = parent.and_then(|p| {
                out[p].iter().find(|q| {
                    q.start == v.start
                        && q.len == len
                        && q.prot == v.prot
                        && q.flags == noreserve(v)
                        && q.file == file_of(v)
                })
            });
            if let Some(q) = from_parent {
                mine.push(Premap { own: false, ..*q });
            } else if has_children && has_pages(t, v) {
                mine.push(Premap {
                    start: v.start,
                    len,
                    at: next,
                    prot: v.prot,
                    flags: noreserve(v),
                    file: file_of(v),
                    own: true,
                });
                next += len + PAGE_SIZE;
            }
        }
        out[i] = mine;
    }
    out
}

/// Task indices, each after its parent (by depth; a cycle, which no image should have, ends
/// the walk up at its length).
fn parents_first(n: usize, parent_of: impl Fn(usize) -> Option<usize>) -> Vec<usize> {
    let depth = |mut i: usize| {
        let mut d = 0;
        while let Some(p) = parent_of(i) {
            d += 1;
            i = p;
            if d > n {
                break;
            }
        }
        d
    };
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| depth(i));
    order
}

/// The premapped areas of every task, laid out where nothing else is; none if no task has
/// children or no room is found (the children then get copies).
pub fn for_tree(img: &DumpImage, trampoline: u64, parents: &[Option<usize>]) -> Vec<Vec<Premap>> {
    let room = room(img, parents);
    if room == 0 {
        return Vec::new();
    }
    match pick_base(img, room, trampoline) {
        Some(base) => plan(img, base, parents),
        None => {
            log::info!("no room for {room} bytes of premapped memory: children get copies");
            Vec::new()
        }
    }
}

/// The room the tasks' own areas need (0: none).
pub fn room(img: &DumpImage, parents: &[Option<usize>]) -> u64 {
    let areas: u64 = plan(img, 0, parents)
        .iter()
        .flatten()
        .filter(|p| p.own)
        .map(|p| p.len + PAGE_SIZE)
        .sum();
    if areas == 0 {
        0
    } else {
        areas + PAGE_SIZE
    }
}

/// A base for `room` bytes outside every dumped mapping, the trampoline's 64 MiB and our own
/// mappings (the stubs are forks of this process), in 4 GiB steps; None if there is none.
pub fn pick_base(img: &DumpImage, room: u64, trampoline: u64) -> Option<u64> {
    let ours = crate::proc::maps(std::process::id()).ok()?;
    let clashes = |a: u64, b: u64| {
        img.tasks
            .iter()
            .flat_map(|t| t.mm.vmas.iter())
            .any(|v| v.start < b && a < v.end)
            || ours.iter().any(|m| m.start < b && a < m.end)
            || (trampoline < b && a < trampoline + (64 << 20))
    };
    let mut cand: u64 = 0x1_0000_0000;
    while cand + room < 0x7000_0000_0000 {
        if !clashes(cand, cand + room) {
            return Some(cand);
        }
        cand += 0x1_0000_0000;
    }
    None
}

/// Fills the premapped areas of task `t`, whose stub waits for it (`pid`: its pid here, which
/// differs from the dumped one in a pid namespace): its own completely, the inherited ones
/// where its image disagrees with what it inherited. Returns (pages written, pages left
/// shared).
pub fn fill(
    dir: &Path,
    t: &load::TaskImage,
    pid: u32,
    premaps: &[Premap],
) -> Result<(u64, u64), RestoreError> {
    let mem = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(|source| RestoreError::Setup {
            what: format!("open /proc/{pid}/mem"),
            source,
        })?;
    // The pages past the last premapped ones are `restore_mm`'s: not read here.
    let mut left = 0;
    for_each_segment(t, premaps, |seg| {
        if let Segment::In(_, _, len) = seg {
            left += len;
        }
        Ok(())
    })?;
    let mut src = crate::mm::pages::PageSource::open(&dir.join(&t.pages_file))?;
    let (mut written, mut shared) = (0, 0);
    for_each_segment(t, premaps, |seg| {
        match seg {
            Segment::Out(..) if left == 0 => {}
            Segment::Out(_, len) => src.skip(len)?,
            Segment::In(p, addr, len) => {
                let at = p.at + (addr - p.start);
                if p.own {
                    src.copy_to(&mem, pid, at, len)?;
                    written += len / PAGE_SIZE;
                } else {
                    let w = src.copy_changed_to(&mem, pid, at, len)?;
                    written += w;
                    shared += len / PAGE_SIZE - w;
                }
                left -= len;
            }
        }
        Ok(())
    })?;
    Ok((written, shared))
}

/// A piece of a task's page stream: pages of a premapped area (the area, the dumped address,
/// the length), or pages outside every one (address, length).
pub enum Segment<'a> {
    In(&'a Premap, u64, u64),
    Out(u64, u64),
}

/// Walks the present pages of `t`'s pagemap in stream order, split where premapped areas
/// begin and end (an entry may span several areas).
pub fn for_each_segment<'a>(
    t: &load::TaskImage,
    premaps: &'a [Premap],
    mut f: impl FnMut(Segment<'a>) -> Result<(), RestoreError>,
) -> Result<(), RestoreError> {
    for e in &t.pagemap {
        if e.flags.unwrap_or(PE_PRESENT) & PE_PRESENT == 0 {
            continue;
        }
        let end = e.vaddr + load::nr_pages(e) * PAGE_SIZE;
        let mut at = e.vaddr;
        while at < end {
            match premaps
                .iter()
                .find(|p| p.start <= at && at < p.start + p.len)
            {
                Some(p) => {
                    let to = end.min(p.start + p.len);
                    f(Segment::In(p, at, to - at))?;
                    at = to;
                }
                None => {
                    let to = premaps
                        .iter()
                        .filter(|p| p.start > at && p.start < end)
                        .map(|p| p.start)
                        .min()
                        .unwrap_or(end);
                    f(Segment::Out(at, to - at))?;
                    at = to;
                }
            }
        }
    }
    Ok(())
}

/// The ranges of an inherited area that `t`'s image holds no present page for: what the parent
/// had there must go (the task had nothing, zeros, or its file's own pages).
pub fn holes(t: &load::TaskImage, p: &Premap) -> Vec<(u64, u64)> {
    let mut covered: Vec<(u64, u64)> = t
        .pagemap
        .iter()
        .filter(|e| e.flags.unwrap_or(PE_PRESENT) & PE_PRESENT != 0)
        .map(|e| (e.vaddr, e.vaddr + load::nr_pages(e) * PAGE_SIZE))
        .filter(|&(a, b)| a < p.start + p.len && p.start < b)
        .collect();
    covered.sort_unstable();
    let mut out = Vec::new();
    let mut at = p.start;
    for (a, b) in covered {
        if a > at {
            out.push((at, a));
        }
        at = at.max(b);
    }
    if at < p.start + p.len {
        out.push((at, p.start + p.len));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each task's parent in image order (its image parent), for trees forked without helpers.
    fn image_parents(img: &DumpImage) -> Vec<Option<usize>> {
        img.tasks
            .iter()
            .enumerate()
            .map(|(i, t)| {
                (i > 0)
                    .then(|| img.tasks.iter().position(|p| p.pid() == t.pstree.ppid))
                    .flatten()
            })
            .collect()
    }

    fn vma(start: u64, end: u64) -> pb::VmaEntry {
        pb::VmaEntry {
            start,
            end,
            prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
            flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u32,
            status: VMA_AREA_REGULAR | VMA_ANON_PRIVATE,
            ..Default::default()
        }
    }

    fn task(pid: u32, ppid: u32, vmas: Vec<pb::VmaEntry>, pages: &[(u64, u64)]) -> load::TaskImage {
        load::TaskImage {
            pstree: pb::PstreeEntry {
                pid,
                ppid,
                ..Default::default()
            },
            threads: Vec::new(),
            mm: pb::MmEntry {
                vmas,
                ..Default::default()
            },
            pagemap: pages
                .iter()
                .map(|&(vaddr, n)| pb::PagemapEntry {
                    vaddr,
                    nr_pages: Some(n),
                    flags: Some(PE_PRESENT),
                    ..Default::default()
                })
                .collect(),
            pages_file: String::new(),
            fds: Vec::new(),
            fs: Default::default(),
            zombie_exit: None,
            files_id: pid,
            shares_parent_files: false,
        }
    }

    #[test]
    fn parents_areas_are_premapped_and_children_inherit_the_same_ones() {
        let mut img = DumpImage::default();
        let a = 0x1000_0000;
        let mut stack = vma(0x7000_0000, 0x7001_0000);
        stack.flags |= libc::MAP_GROWSDOWN as u32;
        img.tasks.push(task(
            10,
            0,
            vec![vma(a, a + 0x4000), vma(a + 0x10000, a + 0x12000), stack],
            &[(a, 4), (a + 0x10000, 1), (0x7000_0000, 1)],
        ));
        // The child kept the first area, and has its own in place of the second.
        img.tasks.push(task(
            11,
            10,
            vec![vma(a, a + 0x4000), vma(a + 0x10000, a + 0x13000)],
            &[(a, 2)],
        ));
        let plan = plan(&img, 0x5_0000_0000, &image_parents(&img));
        assert_eq!(
            plan[0].len(),
            2,
            "the stack is not premapped: {:?}",
            plan[0]
        );
        assert!(plan[0].iter().all(|p| p.own));
        assert_eq!(
            plan[0][0].at,
            0x5_0000_0000 + PAGE_SIZE,
            "a page before each"
        );
        assert_eq!(
            plan[0][1].at,
            plan[0][0].at + 0x4000 + PAGE_SIZE,
            "a page apart"
        );
        assert_eq!(plan[1].len(), 1, "only the same area is inherited");
        assert_eq!((plan[1][0].at, plan[1][0].own), (plan[0][0].at, false));
        assert_eq!(
            room(&img, &image_parents(&img)),
            0x4000 + 0x2000 + 3 * PAGE_SIZE
        );
        // The child's image lacks pages 2 and 3 of what it inherited: they go.
        assert_eq!(
            holes(&img.tasks[1], &plan[1][0]),
            vec![(a + 0x2000, a + 0x4000)]
        );
    }

    #[test]
    fn segments_split_entries_at_area_bounds() {
        let a = 0x1000_0000;
        let t = task(
            10,
            0,
            vec![vma(a, a + 0x2000), vma(a + 0x2000, a + 0x4000)],
            &[(a, 4)],
        );
        let premaps = [Premap {
            start: a + 0x2000,
            len: 0x2000,
            at: 0x9000_0000,
            prot: 3,
            flags: 0,
            file: None,
            own: true,
        }];
        let mut seen = Vec::new();
        for_each_segment(&t, &premaps, |s| {
            seen.push(match s {
                Segment::Out(addr, len) => (addr, len),
                Segment::In(_, addr, len) => (addr, len),
            });
            Ok(())
        })
        .unwrap();
        assert_eq!(seen, vec![(a, 0x2000), (a + 0x2000, 0x2000)]);
    }

    #[test]
    fn a_childless_tree_premaps_nothing() {
        let mut img = DumpImage::default();
        img.tasks.push(task(
            10,
            0,
            vec![vma(0x1000_0000, 0x1000_4000)],
            &[(0x1000_0000, 4)],
        ));
        assert!(plan(&img, 0x5_0000_0000, &image_parents(&img))
            .iter()
            .all(Vec::is_empty));
        assert_eq!(room(&img, &image_parents(&img)), 0);
    }
}
