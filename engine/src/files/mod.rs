//! Open files: classifying a task's fds, and the shared table of file objects (`files.img`).
//!
//! Two fds (in one task or in several) that share an open file description get one file id, as
//! in CRIU; `kcmp(KCMP_FILE)` tells whether they do.

pub mod anon;
pub mod ghost;
pub mod kind;
pub mod locks;

// Every kind of open file, in the order they are asked (the first that claims an fd, or owns
// an entry, takes it: narrower kinds before the broader ones they overlap). A kind in this
// directory is `module => Kind`: the line declares its module and registers it. Adding a kind
// is one new file and one line here.
mod bypath;

kind::file_kinds! {
    here {
        procfile => ProcFile,
        mqueue => Mqueue,
        tty => Pty,
        tun => TunFile,
        reg => Regular,
        fifo => Fifo,
        pipe => Pipe,
        eventfd => EventFd,
        timerfd => TimerFd,
        signalfd => SignalFd,
        inotify => Inotify,
        fanotify => Fanotify,
        epoll => Epoll,
        memfd => Memfd,
        pidfd => Pidfd,
        nsfile => NsFile,
    }
    elsewhere {
        crate::net::unix::file::UnixSocket,
        crate::net::inet::file::InetSocket,
        crate::net::netlink::NetlinkSocket,
        crate::net::packet::PacketSocket,
    }
}

use std::collections::HashMap;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use crate::images::{magic, names, pb, ImageKind, ImageWriter};
use crate::proc::FdInfo;

/// Reading an fd's object failed.
#[derive(Debug, thiserror::Error)]
pub enum FilesError {
    #[error("cannot inspect fd {fd} of pid {pid}")]
    Inspect {
        pid: u32,
        fd: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the buffered data of pipe {ino} (fd {fd} of pid {pid})")]
    PipeData {
        pid: u32,
        fd: i32,
        ino: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} was deleted while open and holds {size} bytes of data, over the ghost limit of {limit} bytes: raise it with --ghost-limit")]
    GhostTooBig { path: String, size: u64, limit: u64 },
    #[error("{path} was deleted while open but has other names (hard links): dump with --link-remap to keep it through a link made beside it")]
    LinkedButDeleted { path: String },
    #[error("cannot make the link {link} to {path}, deleted while open but linked elsewhere")]
    LinkRemap {
        path: String,
        link: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: the /proc directory of a process that has exited, in a tree with a pid namespace, is not supported yet")]
    DeadProcDir { path: String },
    #[error("cannot save the content of deleted file {path}")]
    Ghost {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("pid {pid} fd {fd}")]
    Packet {
        pid: u32,
        fd: i32,
        #[source]
        source: crate::net::packet::PacketError,
    },
    #[error("pid {pid} fd {fd}")]
    Netlink {
        pid: u32,
        fd: i32,
        #[source]
        source: crate::net::netlink::NetlinkError,
    },
    #[error("cannot read the state of fd {fd} of pid {pid}")]
    Anon {
        pid: u32,
        fd: i32,
        #[source]
        source: crate::files::anon::AnonFdError,
    },
    #[error("pid {pid} fd {fd}: {what} cannot be found again (fanotify)")]
    Fanotify { pid: u32, fd: i32, what: String },
    #[error("pid {pid} fd {fd}: the file watched by inotify watch {wd} cannot be found again")]
    InotifyPath { pid: u32, fd: i32, wd: u32 },
    #[error("pid {pid} fd {fd}: epoll target {tfd} was closed after it was added, and no other fd of the task holds its file under a number the epoll does not use already; not supported")]
    EpollStale { pid: u32, fd: i32, tfd: u32 },
    #[error("pty of fd {fd} of pid {pid}")]
    Pty {
        pid: u32,
        fd: i32,
        #[source]
        source: crate::files::tty::PtyError,
    },
    #[error("cannot write image {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What kind of object an fd refers to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FdKind {
    Regular,
    Directory,
    CharDevice,
    Tty,
    Pipe(u64),
    EventFd,
    TimerFd,
    SignalFd,
    EventPoll,
    Inotify,
    Fanotify,
    Memfd,
    /// A pidfd (anon inode before Linux 6.9's pidfs, which shows the same link).
    Pidfd,
    /// A namespace file (`/proc/<pid>/ns/<type>` opened).
    NsFile,
    /// A file of `/dev/net/tun` (see files/tun.rs).
    Tun,
    Socket(u64),
    Fifo(u64),
    /// A POSIX message queue.
    Mqueue,
    Unsupported(String),
}

fn is_tty_major(major: u32) -> bool {
    // 4: tty/ttyS, 5: /dev/tty, /dev/console, /dev/ptmx, 136-143: Unix98 pty slaves.
    major == 4 || major == 5 || (136..=143).contains(&major)
}

/// Classifies fd `fd` of `pid` from its `/proc/<pid>/fd` link and the inode behind it.
pub fn classify(pid: u32, fd: i32, link: &str) -> Result<FdKind, FilesError> {
    let inode = |rest: &str| rest.strip_suffix(']').and_then(|n| n.parse().ok());
    if let Some(rest) = link.strip_prefix("pipe:[") {
        return Ok(inode(rest).map_or_else(|| unreadable(link), FdKind::Pipe));
    }
    if let Some(rest) = link.strip_prefix("socket:[") {
        return Ok(inode(rest).map_or_else(|| unreadable(link), FdKind::Socket));
    }
    if let Some(what) = link.strip_prefix("anon_inode:") {
        return Ok(match what {
            "[eventfd]" => FdKind::EventFd,
            "[timerfd]" => FdKind::TimerFd,
            "[signalfd]" => FdKind::SignalFd,
            "[eventpoll]" => FdKind::EventPoll,
            "inotify" => FdKind::Inotify,
            "[fanotify]" => FdKind::Fanotify,
            "[pidfd]" => FdKind::Pidfd,
            _ => FdKind::Unsupported(what.trim_matches(|c| c == '[' || c == ']').to_string()),
        });
    }
    if link.starts_with("/memfd:") {
        return Ok(FdKind::Memfd);
    }
    let md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
        .map_err(|source| FilesError::Inspect { pid, fd, source })?;
    let fmt = md.mode() & libc::S_IFMT;
    Ok(match fmt {
        // Files of these filesystems look regular but cannot be opened again by their path: a
        // POSIX message queue's link is "/name", a namespace file's is "net:[ino]".
        libc::S_IFREG => match special_fs_kind(pid, fd)? {
            Some(MQUEUE) if !link.ends_with(" (deleted)") => FdKind::Mqueue,
            Some(MQUEUE) => {
                FdKind::Unsupported(format!("POSIX message queue unlinked while open ({link})"))
            }
            Some(NSFS) => FdKind::NsFile,
            Some(kind) => FdKind::Unsupported(format!("{kind} ({link})")),
            None => FdKind::Regular,
        },
        libc::S_IFDIR => FdKind::Directory,
        // Only an O_PATH|O_NOFOLLOW fd is on a symlink itself: opened again the same way.
        libc::S_IFLNK => FdKind::Regular,
        libc::S_IFCHR => {
            let (major, minor) = (dev_major(md.rdev()), dev_minor(md.rdev()));
            if is_tty_major(major) {
                FdKind::Tty
            } else if (major, minor) == tun::TUN_DEVICE {
                FdKind::Tun
            } else if is_stateless_char_device(major, minor) {
                FdKind::CharDevice
            } else {
                // A reopen would be a new, blank session of the device: a fuse connection or
                // a tun interface would be silently lost.
                FdKind::Unsupported(format!(
                    "character device {link} (major {major}, minor {minor}), whose state a reopen would lose,"
                ))
            }
        }
        libc::S_IFIFO => FdKind::Fifo(md.ino()),
        libc::S_IFBLK => FdKind::Unsupported(format!("block device ({link})")),
        libc::S_IFSOCK => FdKind::Unsupported(format!("socket ({link})")),
        _ => FdKind::Unsupported(link.to_string()),
    })
}

/// The major number of a device number.
fn dev_major(rdev: u64) -> u32 {
    nix::sys::stat::major(rdev) as u32
}

/// The minor number of a device number.
fn dev_minor(rdev: u64) -> u32 {
    nix::sys::stat::minor(rdev) as u32
}

/// /dev/null, /dev/zero, /dev/full, /dev/random and /dev/urandom: a reopen is as good as the
/// original.
fn is_stateless_char_device(major: u32, minor: u32) -> bool {
    major == 1 && matches!(minor, 3 | 5 | 7 | 8 | 9)
}

const MQUEUE: &str = "POSIX message queue";
/// [`special_fs_kind`] of a namespace file.
const NSFS: &str = "namespace file";

/// The kind of object behind `fd` when it lives on a filesystem whose files are not reopened by
/// path, from `statfs(2)` through the fd link (which it follows).
fn special_fs_kind(pid: u32, fd: i32) -> Result<Option<&'static str>, FilesError> {
    const MQUEUE_MAGIC: i64 = 0x1980_0202;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let st = nix::sys::statfs::statfs(format!("/proc/{pid}/fd/{fd}").as_str()).map_err(|e| {
        FilesError::Inspect {
            pid,
            fd,
            source: e.into(),
        }
    })?;
    Ok(match st.filesystem_type().0 as i64 {
        MQUEUE_MAGIC => Some(MQUEUE),
        NSFS_MAGIC => Some(NSFS),
        BPF_FS_MAGIC => Some("bpf filesystem object"),
        _ => None,
    })
}

/// The entries with unix sockets that others connected to (a datagram server) before the
/// rest, in order otherwise: CRIU's restore resolves a socket's peer when it reads it, from the
/// sockets read before ("Peer N unresolved" else).
fn servers_first(entries: &[pb::FileEntry]) -> Vec<&pb::FileEntry> {
    let connected_to: std::collections::HashSet<u32> = entries
        .iter()
        .filter_map(|e| e.usk.as_ref())
        .filter(|u| u.peer != 0 && u.peer != u.ino)
        .map(|u| u.peer)
        .collect();
    let is_server = |e: &&pb::FileEntry| {
        e.usk
            .as_ref()
            .is_some_and(|u| connected_to.contains(&u.ino) && u.peer == 0)
    };
    let mut out: Vec<&pb::FileEntry> = entries.iter().filter(is_server).collect();
    out.extend(entries.iter().filter(|e| !is_server(e)));
    out
}

/// An fd whose link does not read as the kernel writes it: refused, never guessed at.
fn unreadable(link: &str) -> FdKind {
    FdKind::Unsupported(format!("an fd whose link reads \"{link}\""))
}

/// True when `path` names a terminal device (used by `--shell-job` on restore).
pub fn is_tty_path(path: &str) -> bool {
    std::fs::metadata(path)
        .map(|m| m.mode() & libc::S_IFMT == libc::S_IFCHR && is_tty_major(dev_major(m.rdev())))
        .unwrap_or(false)
        || path.starts_with("/dev/pts/")
        || path == "/dev/tty"
        || path == "/dev/console"
}

/// How the open file at `fd1` of `pid1` orders against `fd2` of `pid2` in kcmp's (stable,
/// obfuscated) order; None if kcmp cannot tell.
fn kcmp_file_order(pid1: u32, fd1: i32, pid2: u32, fd2: i32) -> Option<std::cmp::Ordering> {
    crate::sys::kcmp::kcmp(pid1, pid2, crate::sys::kcmp::Kind::File { fd1, fd2 })
        .ok()
        .flatten()
}
/// The default size limit for files deleted while open, whose content goes into the images
/// (CRIU's `--ghost-limit` default).
pub const DEFAULT_GHOST_LIMIT: u64 = 1 << 20;

struct Ghost {
    id: u32,
    dev: u64,
    ino: u64,
    entry: pb::GhostFileEntry,
    /// The file's data as (offset, bytes), holes left out.
    chunks: Vec<(u64, Vec<u8>)>,
}

/// Every file object of the dumped tree.
pub struct FileTable {
    /// Largest deleted file whose content is saved.
    pub ghost_limit: u64,
    ghosts: Vec<Ghost>,
    /// (file id, ghost id): the file is a deleted one, recreated from the ghost.
    remaps: Vec<(u32, u32)>,
    /// (file id, pid): the `/proc/<pid>` directory of a process that has exited (CRIU's
    /// procfs remap: the restore makes a short-lived process of that pid to open it).
    dead_procs: Vec<(u32, u32)>,
    /// The tree's pids are ours: a dead process's `/proc` directory can be made again here.
    pub dead_procs_ok: bool,
    /// `--link-remap`: files deleted while open that have other names are kept by a link.
    link_remap_ok: bool,
    /// (file id, id of the file entry naming its link): deleted, but linked elsewhere.
    linked: Vec<(u32, u32)>,
    /// (dev, inode) → id of the entry naming its link, one link per inode.
    links_by_inode: HashMap<(u64, u64, Option<i32>), u32>,
    /// Links made for `linked`, as paths here: removed again unless the dump succeeds.
    made_links: Vec<PathBuf>,
    /// Files known by inode and open flags only (mapped files, memfds of mappings).
    pub(crate) by_inode: HashMap<(u64, u64, u32), u32>,
    pub(crate) entries: Vec<pb::FileEntry>,
    /// (pid, fd, dev, ino, id) of fds seen so far, to find shared open file descriptions.
    pub(crate) seen: Vec<(u32, i32, u64, u64, u32)>,
    /// Indexes into `seen` by (dev, inode), each list in kcmp order: finding whether an fd
    /// shares an open file with one seen before takes a binary search, not a kcmp per fd (a
    /// task with 5000 fds on /dev/null took 25 s).
    seen_by_inode: HashMap<(u64, u64), Vec<usize>>,
    by_path: HashMap<(String, u32, Option<i32>), u32>,
    /// Where the tree's paths are seen from here (`/proc/<root>/root`) when it has a mount
    /// namespace of its own; None when its paths are ours.
    pub path_root: Option<String>,
    /// The mount id files known by path only are given: none in the tree's own mount
    /// namespace, the root mount of a nested one (see ns::mnt_nested) for its tasks.
    pub path_mnt: Option<i32>,
    /// With nested mount namespaces, every mount id of the tree's tables and a task of the
    /// namespace it is in.
    pub mount_owner: HashMap<u32, u32>,
    /// A task of each mount namespace of the tree (its own first), when it owns one.
    pub mount_ns_pids: Vec<u32>,
    /// What each kind keeps for its own images (pipe data, tty infos, queued messages...).
    pub slots: kind::Slots,
}

/// The owner and signal (F_SETOWN, F_SETSIG) of a file, in whichever kind's entry holds it:
/// read-only and mutable forms of one list.
macro_rules! fown_in {
    ($e:expr, $as:ident) => {
        None.or($e.reg.$as().map(|x| &x.fown))
            .or($e.pipe.$as().map(|x| &x.fown))
            .or($e.usk.$as().map(|x| &x.fown))
            .or($e.isk.$as().map(|x| &x.fown))
            .or($e.tty.$as().map(|x| &x.fown))
            .or($e.efd.$as().map(|x| &x.fown))
            .or($e.tfd.$as().map(|x| &x.fown))
            .or($e.sgfd.$as().map(|x| &x.fown))
            .or($e.ify.$as().map(|x| &x.fown))
            .or($e.epfd.$as().map(|x| &x.fown))
            .or($e.memfd.$as().map(|x| &x.fown))
    };
}

/// The target of the symlink that `open` (a /proc fd link) is: the magic link, opened O_PATH,
/// is the symlink itself, which readlinkat with an empty path reads.
fn symlink_target(open: &str) -> std::io::Result<String> {
    let fd = nix::fcntl::open(
        open,
        nix::fcntl::OFlag::O_PATH,
        nix::sys::stat::Mode::empty(),
    )?;
    let target = nix::fcntl::readlinkat(&fd, "")?;
    Ok(target.to_string_lossy().into_owned())
}

/// A device number in the kernel's encoding (major << 20 | minor), as /proc shows it.
fn kernel_dev(dev: u64) -> u32 {
    (libc::major(dev) << 20) | libc::minor(dev)
}

impl Drop for FileTable {
    /// A dump that failed takes back the links it made (see [`FileTable::keep_links`]).
    fn drop(&mut self) {
        for link in &self.made_links {
            if let Err(e) = std::fs::remove_file(link) {
                log::warn!("removing the link {}: {e}", link.display());
            }
        }
    }
}

/// The owner (F_SETOWN) and signal (F_SETSIG) saved for a file, if its kind keeps one.
pub fn fown_of(e: &pb::FileEntry) -> Option<&pb::FownEntry> {
    fown_in!(e, as_ref)
}

impl FileTable {
    /// Sets the owner and signal of file `id`; false if its kind keeps none.
    pub fn set_fown(&mut self, id: u32, fown: pb::FownEntry) -> bool {
        let Some(e) = self.entries.iter_mut().find(|e| e.id == id) else {
            return false;
        };
        let slot = None
            .or(e.reg.as_mut().map(|x| &mut x.fown))
            .or(e.pipe.as_mut().map(|x| &mut x.fown))
            .or(e.usk.as_mut().map(|x| &mut x.fown))
            .or(e.isk.as_mut().map(|x| &mut x.fown))
            .or(e.tty.as_mut().map(|x| &mut x.fown))
            .or(e.efd.as_mut().map(|x| &mut x.fown))
            .or(e.tfd.as_mut().map(|x| &mut x.fown))
            .or(e.sgfd.as_mut().map(|x| &mut x.fown))
            .or(e.ify.as_mut().map(|x| &mut x.fown))
            .or(e.epfd.as_mut().map(|x| &mut x.fown))
            .or(e.memfd.as_mut().map(|x| &mut x.fown));
        match slot {
            Some(f) => {
                *f = fown;
                true
            }
            None => false,
        }
    }

    pub fn new(ghost_limit: u64, link_remap_ok: bool) -> Self {
        FileTable {
            ghost_limit,
            ghosts: Vec::new(),
            remaps: Vec::new(),
            dead_procs: Vec::new(),
            dead_procs_ok: false,
            link_remap_ok,
            linked: Vec::new(),
            links_by_inode: HashMap::new(),
            made_links: Vec::new(),
            by_inode: HashMap::new(),
            entries: Vec::new(),
            seen: Vec::new(),
            seen_by_inode: HashMap::new(),
            by_path: HashMap::new(),
            path_root: None,
            path_mnt: None,
            mount_owner: HashMap::new(),
            mount_ns_pids: Vec::new(),
            slots: kind::Slots::default(),
        }
    }

    /// Records a file the kind builds with `make` (given its new id), unless `fd` of `pid`
    /// shares the open file of one recorded before: then that one's id. The id, and whether
    /// the file is new.
    pub fn add_entry(
        &mut self,
        pid: u32,
        fd: i32,
        make: impl FnOnce(&mut Self, u32) -> Result<pb::FileEntry, FilesError>,
    ) -> Result<(u32, bool), FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok((id, false));
        }
        let id = self.next_id();
        // `make` may record entries of its own first (a FIFO's path), and then give the file
        // the next id after them: the entry's id is the one that counts.
        let e = make(self, id)?;
        let id = e.id;
        self.remember(pid, fd, md.dev(), md.ino(), id);
        self.entries.push(e);
        Ok((id, true))
    }

    pub(crate) fn next_id(&self) -> u32 {
        self.entries.len() as u32 + 1
    }

    /// The inode behind `fd` of `pid`, and the id of a file already recorded that shares its
    /// open file description, if any.
    pub(crate) fn existing(
        &self,
        pid: u32,
        fd: i32,
    ) -> Result<(std::fs::Metadata, Option<u32>), FilesError> {
        let md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .map_err(|source| FilesError::Inspect { pid, fd, source })?;
        let shared = self.shared_with(pid, fd, md.dev(), md.ino());
        Ok((md, shared))
    }

    pub(crate) fn shared_with(&self, pid: u32, fd: i32, dev: u64, ino: u64) -> Option<u32> {
        let group = self.seen_by_inode.get(&(dev, ino))?;
        match self.search(group, pid, fd) {
            Some(Ok(at)) => Some(self.seen[group[at]].4),
            Some(Err(_)) => None,
            // kcmp could not order them: compare one by one.
            None => group
                .iter()
                .map(|&i| &self.seen[i])
                .find(|s| kcmp_file_order(s.0, s.1, pid, fd) == Some(std::cmp::Ordering::Equal))
                .map(|s| s.4),
        }
    }

    /// Binary search of `group` (kcmp order) for the open file at `fd` of `pid`: Ok(position)
    /// if found, Err(insertion point) if not, None if kcmp failed.
    fn search(&self, group: &[usize], pid: u32, fd: i32) -> Option<Result<usize, usize>> {
        let mut failed = false;
        let r = group.binary_search_by(|&i| {
            let s = &self.seen[i];
            kcmp_file_order(s.0, s.1, pid, fd).unwrap_or_else(|| {
                failed = true;
                std::cmp::Ordering::Less
            })
        });
        (!failed).then_some(r)
    }

    /// Records that `fd` of `pid` (on `dev`/`ino`) is file `id`.
    pub(crate) fn remember(&mut self, pid: u32, fd: i32, dev: u64, ino: u64, id: u32) {
        let index = self.seen.len();
        self.seen.push((pid, fd, dev, ino, id));
        // Taken out while searched (the search reads `seen`), not copied.
        let mut group = self.seen_by_inode.remove(&(dev, ino)).unwrap_or_default();
        let at = match self.search(&group, pid, fd) {
            Some(Ok(at)) | Some(Err(at)) => at,
            None => group.len(),
        };
        group.insert(at, index);
        self.seen_by_inode.insert((dev, ino), group);
    }

    /// A regular file, directory or device open at `fd` of `pid`.
    pub fn add_fd(
        &mut self,
        pid: u32,
        fd: i32,
        link: &str,
        info: &FdInfo,
    ) -> Result<u32, FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok(id);
        }
        use std::os::unix::fs::FileTypeExt;
        let device = md.file_type().is_char_device() || md.file_type().is_block_device();
        let name = match link.strip_suffix(" (deleted)") {
            Some(orig) if md.is_file() || md.is_dir() || md.is_symlink() || device => orig,
            _ => link,
        };
        let id = self.push_reg(
            name,
            info.flags & !(libc::O_CLOEXEC as u32),
            info.pos,
            Some(info.mnt_id as i32),
            Some(&md),
        );
        self.remember(pid, fd, md.dev(), md.ino(), id);
        if name.len() != link.len() {
            self.deleted(
                id,
                &format!("/proc/{pid}/fd/{fd}"),
                name,
                &md,
                Some(info.mnt_id as i32),
            )?;
        }
        Ok(id)
    }

    /// File `id` was deleted while open (`open` reaches it, `orig` was its name): saved as a
    /// ghost, or, when the inode has other names, kept by a link (`--link-remap`).
    fn deleted(
        &mut self,
        id: u32,
        open: &str,
        orig: &str,
        md: &std::fs::Metadata,
        mnt_id: Option<i32>,
    ) -> Result<(), FilesError> {
        if let Some(pid) = self.dead_proc(orig, md) {
            self.dead_procs.push((id, pid));
            return Ok(());
        }
        if !(md.is_file() && md.nlink() > 0) {
            let ghost = self.ghost(open, orig, md)?;
            self.remaps.push((id, ghost));
            return Ok(());
        }
        if !self.link_remap_ok {
            return Err(FilesError::LinkedButDeleted {
                path: orig.to_string(),
            });
        }
        // One link per mount: the restore links it at the old name on the same mount.
        if let Some(&link_id) = self.links_by_inode.get(&(md.dev(), md.ino(), mnt_id)) {
            self.linked.push((id, link_id));
            return Ok(());
        }
        let link_id = self.next_id();
        // Linked in the namespace whose mount the file is on (a nested task may hold a file of
        // a mount its own namespace no longer has: zdtm's mntns_link_remap).
        let root = match mnt_id.and_then(|m| self.mount_owner.get(&(m as u32))) {
            Some(pid) => Some(format!("/proc/{pid}/root")),
            None => self.path_root.clone(),
        };
        let (name, here) = ghost::make_link_remap(open, orig, root.as_deref(), link_id)?;
        self.made_links.push(PathBuf::from(&here));
        let got = self.push_reg(&name, libc::O_RDONLY as u32, 0, mnt_id, Some(md));
        debug_assert_eq!(got, link_id);
        self.links_by_inode
            .insert((md.dev(), md.ino(), mnt_id), link_id);
        self.linked.push((id, link_id));
        Ok(())
    }

    /// The dump succeeded: the links made for files deleted while open stay, for the restore
    /// (which removes them).
    pub fn keep_links(&mut self) {
        self.made_links.clear();
    }

    /// The file id of the packet socket with inode `ino`, if an fd of the tree holds it.
    pub fn packet_socket_id(&self, ino: u64) -> Option<u32> {
        self.seen
            .iter()
            .filter(|s| s.3 == ino)
            .map(|s| s.4)
            .find(|id| self.entries.iter().any(|e| e.id == *id && e.psk.is_some()))
    }

    /// The id and fd type of the file already recorded that `fd` of `pid` shares, if any.
    pub fn known(&self, pid: u32, fd: i32) -> Option<(u32, pb::FdTypes)> {
        let md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}")).ok()?;
        let id = self.shared_with(pid, fd, md.dev(), md.ino())?;
        let e = self.entries.iter().find(|e| e.id == id)?;
        Some((
            id,
            pb::FdTypes::try_from(e.r#type).unwrap_or(pb::FdTypes::Und),
        ))
    }

    /// Saves the content of a deleted file once per inode; returns its ghost id.
    pub(crate) fn ghost(
        &mut self,
        open: &str,
        orig: &str,
        md: &std::fs::Metadata,
    ) -> Result<u32, FilesError> {
        if let Some(g) = self
            .ghosts
            .iter()
            .find(|g| g.dev == md.dev() && g.ino == md.ino())
        {
            return Ok(g.id);
        }
        // A dead process's /proc dir in a tree with pids of its own (see `dead_proc`): an empty
        // directory made in its place would fail only at restore.
        if md.is_dir() && orig.starts_with("/proc/") {
            return Err(FilesError::DeadProcDir {
                path: orig.to_string(),
            });
        }
        // What the image will hold: the blocks in use (only data is saved, holes are not), as
        // CRIU counts; a sparse 2 GiB file with a few pages of data is a small ghost.
        let stored = md.blocks() * 512;
        if stored > self.ghost_limit {
            return Err(FilesError::GhostTooBig {
                path: orig.to_string(),
                size: stored,
                limit: self.ghost_limit,
            });
        }
        use std::os::unix::fs::FileTypeExt;
        // A device node has no content: it is made again from its number (rdev).
        let device = md.file_type().is_char_device() || md.file_type().is_block_device();
        // A directory has none either: it is made again empty, as CRIU's ghost directories.
        // A symlink has its target instead.
        let symlnk_target = if md.is_symlink() {
            Some(symlink_target(open).map_err(|source| FilesError::Ghost {
                path: orig.to_string(),
                source,
            })?)
        } else {
            None
        };
        let chunks = if device || md.is_dir() || md.is_symlink() {
            Vec::new()
        } else {
            data_chunks(open).map_err(|source| FilesError::Ghost {
                path: orig.to_string(),
                source,
            })?
        };
        let size = if device || md.is_dir() || md.is_symlink() {
            0
        } else {
            md.size()
        };
        let id = self.ghosts.len() as u32 + 1;
        let tv = |sec: i64, nsec: i64| pb::Timeval {
            tv_sec: sec as u64,
            tv_usec: (nsec / 1000) as u64,
        };
        self.ghosts.push(Ghost {
            id,
            dev: md.dev(),
            ino: md.ino(),
            entry: pb::GhostFileEntry {
                uid: md.uid(),
                gid: md.gid(),
                mode: md.mode(),
                // As CRIU: found by them at restore (an inotify watch on the deleted inode);
                // the device in the kernel's encoding, as fdinfo shows it.
                dev: Some(kernel_dev(md.dev())),
                ino: Some(md.ino()),
                rdev: device.then_some(md.rdev() as u32),
                atim: Some(tv(md.atime(), md.atime_nsec())),
                mtim: Some(tv(md.mtime(), md.mtime_nsec())),
                chunks: Some(false),
                size: Some(size),
                symlnk_target,
            },
            chunks,
        });
        Ok(id)
    }

    /// A task's cwd that was deleted (`open` reaches it, `orig` is its path): an empty
    /// ghost directory, made again for the task to change into and removed once it has.
    pub fn add_deleted_dir(&mut self, open: &str, orig: &str) -> Result<u32, FilesError> {
        let md = std::fs::metadata(open).map_err(|source| FilesError::Ghost {
            path: orig.to_string(),
            source,
        })?;
        let id = self.push_reg(
            orig,
            libc::O_DIRECTORY as u32,
            0,
            self.mount_of(Some(open)),
            Some(&md),
        );
        self.deleted(id, open, orig, &md, None)?;
        Ok(id)
    }

    /// The pid whose `/proc/<pid>` directory `orig` was, when the restore can make it again
    /// (the tree's pids are ours).
    fn dead_proc(&self, orig: &str, md: &std::fs::Metadata) -> Option<u32> {
        let pid = orig.strip_prefix("/proc/")?.parse().ok()?;
        (md.is_dir() && self.dead_procs_ok).then_some(pid)
    }

    pub(crate) fn push_reg(
        &mut self,
        name: &str,
        flags: u32,
        pos: u64,
        mnt_id: Option<i32>,
        md: Option<&std::fs::Metadata>,
    ) -> u32 {
        let id = self.next_id();
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Reg as i32,
            id,
            reg: Some(pb::RegFileEntry {
                id,
                flags,
                pos,
                fown: pb::FownEntry::default(),
                name: name.to_string(),
                mnt_id,
                // A directory's size is its filesystem's business (a deleted one reads 0): none.
                size: md.filter(|m| !m.is_dir()).map(|m| m.size()),
                ext: None,
                mode: md.map(|m| m.mode()),
                build_id: Vec::new(),
                checksum: None,
                checksum_config: None,
                checksum_parameter: None,
            }),
            ..Default::default()
        });
        id
    }

    /// Drops the mount ids of the file entries: a tree in the dumper's mount namespace has
    /// no mountpoints image for them to name, and CRIU's restore then fails to place ghost
    /// files ("Can't link ... .cr.N.ghost").
    pub fn forget_mount_ids(&mut self) {
        for reg in self.entries.iter_mut().filter_map(|e| e.reg.as_mut()) {
            reg.mnt_id = None;
        }
    }

    /// Writes `files.img`, the ghost files and every kind's own images.
    pub fn write(&self, dir: &Path) -> Result<(), FilesError> {
        let mut w = ImageWriter::new(ImageKind::Normal, magic::FILES);
        for e in servers_first(&self.entries) {
            match (&e.reg, &e.tunf) {
                // CRIU's form: the device node's regular-file entry, then the tun file's.
                (Some(reg), Some(_)) => {
                    w.push(&pb::FileEntry {
                        r#type: pb::FdTypes::Reg as i32,
                        id: e.id,
                        reg: Some(reg.clone()),
                        ..Default::default()
                    });
                    w.push(&pb::FileEntry {
                        reg: None,
                        ..e.clone()
                    });
                }
                _ => w.push(e),
            }
        }
        write(&dir.join(names::FILES), &w.into_bytes())?;
        // Always written, even empty: a stale one from an older dump must not apply.
        let mut w = ImageWriter::new(ImageKind::Normal, magic::REMAP_FPATH);
        for &(orig_id, remap_id) in &self.remaps {
            w.push(&pb::RemapFilePathEntry {
                orig_id,
                remap_id,
                remap_type: Some(pb::RemapType::Ghost as i32),
            });
        }
        for &(orig_id, pid) in &self.dead_procs {
            w.push(&pb::RemapFilePathEntry {
                orig_id,
                remap_id: pid,
                remap_type: Some(pb::RemapType::Procfs as i32),
            });
        }
        for &(orig_id, remap_id) in &self.linked {
            w.push(&pb::RemapFilePathEntry {
                orig_id,
                remap_id,
                remap_type: Some(pb::RemapType::Linked as i32),
            });
        }
        write(&dir.join(names::REMAP_FPATH), &w.into_bytes())?;
        for g in &self.ghosts {
            let mut w = ImageWriter::new(ImageKind::Normal, magic::GHOST_FILE);
            let size = g.entry.size.unwrap_or(0);
            // One chunk from 0 to the end is the whole file: written flat, as CRIU does for a
            // file without holes; otherwise each piece of data with its place (CRIU's chunks).
            let flat = match g.chunks.as_slice() {
                [] => size == 0,
                [(0, d)] => d.len() as u64 == size,
                _ => false,
            };
            if flat {
                w.push(&g.entry);
                if let Some((_, d)) = g.chunks.first() {
                    w.push_raw(d);
                }
            } else {
                w.push(&pb::GhostFileEntry {
                    chunks: Some(true),
                    ..g.entry.clone()
                });
                for (off, d) in &g.chunks {
                    w.push(&pb::GhostChunkEntry {
                        len: d.len() as u64,
                        off: *off,
                    });
                    w.push_raw(d);
                }
            }
            write(&dir.join(names::ghost_file(g.id)), &w.into_bytes())?;
        }
        for k in kind::KINDS {
            k.write_images(self, dir)?;
        }
        Ok(())
    }
}

pub(crate) fn write(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    crate::private::write_private(path, bytes).map_err(|source| FilesError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// The data of the file at `path`, as (offset, bytes) pieces with its holes left out
/// (SEEK_DATA/SEEK_HOLE; a filesystem without holes gives one piece).
fn data_chunks(path: &str) -> std::io::Result<Vec<(u64, Vec<u8>)>> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::fd::AsRawFd;
    let mut f = std::fs::File::open(path)?;
    let size = f.metadata()?.len();
    let mut out = Vec::new();
    let mut off = 0u64;
    while off < size {
        // SAFETY: lseek on our own open file.
        let data = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, libc::SEEK_DATA) };
        if data < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENXIO) {
                break; // only a hole up to the end
            }
            return Err(e);
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(f.as_raw_fd(), data, libc::SEEK_HOLE) };
        if hole < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let (start, end) = (data as u64, (hole as u64).min(size));
        let mut buf = vec![0u8; (end - start) as usize];
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut buf)?;
        out.push((start, buf));
        off = end;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datagram_servers_come_before_their_clients() {
        let usk = |id: u32, ino: u32, peer: u32| pb::FileEntry {
            id,
            usk: Some(pb::UnixSkEntry {
                ino,
                peer,
                ..Default::default()
            }),
            ..Default::default()
        };
        // A client, the server it connected to, a pair, a socket connected to itself.
        let entries = [
            usk(1, 10, 20),
            usk(2, 20, 0),
            usk(3, 30, 31),
            usk(4, 31, 30),
            usk(5, 40, 40),
        ];
        let ids: Vec<u32> = servers_first(&entries).iter().map(|e| e.id).collect();
        assert_eq!(ids, [2, 1, 3, 4, 5]);
    }
}
