//! Open files: classifying a task's fds, and the shared table of file objects (`files.img`).
//!
//! Two fds (in one task or in several) that share an open file description get one file id, as
//! in CRIU; `kcmp(KCMP_FILE)` tells whether they do.

pub mod anon;
pub mod tty;

use crate::sys::cvt;
use std::collections::HashMap;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
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
    #[error("{path} was deleted while open and is {size} bytes, over the ghost limit of {limit} bytes: raise it with --ghost-limit")]
    GhostTooBig { path: String, size: u64, limit: u64 },
    #[error("cannot save the content of deleted file {path}")]
    Ghost {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the state of fd {fd} of pid {pid}")]
    Anon {
        pid: u32,
        fd: i32,
        #[source]
        source: crate::files::anon::AnonFdError,
    },
    #[error("pid {pid} fd {fd}: the file watched by inotify watch {wd} cannot be found again")]
    InotifyPath { pid: u32, fd: i32, wd: u32 },
    #[error("pid {pid} fd {fd}: epoll target {tfd} was closed or replaced after it was added, which is not supported")]
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
    Memfd,
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
    if let Some(rest) = link.strip_prefix("pipe:[") {
        let ino = rest.trim_end_matches(']').parse().unwrap_or(0);
        return Ok(FdKind::Pipe(ino));
    }
    if let Some(rest) = link.strip_prefix("socket:[") {
        return Ok(FdKind::Socket(
            rest.trim_end_matches(']').parse().unwrap_or(0),
        ));
    }
    if let Some(what) = link.strip_prefix("anon_inode:") {
        return Ok(match what {
            "[eventfd]" => FdKind::EventFd,
            "[timerfd]" => FdKind::TimerFd,
            "[signalfd]" => FdKind::SignalFd,
            "[eventpoll]" => FdKind::EventPoll,
            "inotify" => FdKind::Inotify,
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
        libc::S_IFDIR if link.ends_with(" (deleted)") => {
            FdKind::Unsupported(format!("directory deleted while open ({link})"))
        }
        // Files of these filesystems look regular but cannot be opened again by their path: a
        // POSIX message queue's link is "/name", a namespace file's is "net:[ino]".
        libc::S_IFREG => match special_fs_kind(pid, fd) {
            Some(MQUEUE) if !link.ends_with(" (deleted)") => FdKind::Mqueue,
            Some(MQUEUE) => {
                FdKind::Unsupported(format!("POSIX message queue unlinked while open ({link})"))
            }
            Some(kind) => FdKind::Unsupported(format!("{kind} ({link})")),
            None => FdKind::Regular,
        },
        libc::S_IFDIR => FdKind::Directory,
        libc::S_IFCHR => {
            let (major, minor) = (libc::major(md.rdev()), libc::minor(md.rdev()));
            if is_tty_major(major) {
                FdKind::Tty
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

/// /dev/null, /dev/zero, /dev/full, /dev/random and /dev/urandom: a reopen is as good as the
/// original.
fn is_stateless_char_device(major: u32, minor: u32) -> bool {
    major == 1 && matches!(minor, 3 | 5 | 7 | 8 | 9)
}

const MQUEUE: &str = "POSIX message queue";

/// The kind of object behind `fd` when it lives on a filesystem whose files are not reopened by
/// path, from `statfs(2)` through the fd link (which it follows).
fn special_fs_kind(pid: u32, fd: i32) -> Option<&'static str> {
    const MQUEUE_MAGIC: i64 = 0x1980_0202;
    const NSFS_MAGIC: i64 = 0x6e73_6673;
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}")).ok()?;
    // SAFETY: statfs writes one struct statfs into our zeroed buffer; path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::statfs(path.as_ptr(), &mut st) } != 0 {
        return None;
    }
    match st.f_type as i64 {
        MQUEUE_MAGIC => Some(MQUEUE),
        NSFS_MAGIC => Some("namespace file"),
        BPF_FS_MAGIC => Some("bpf filesystem object"),
        _ => None,
    }
}

/// True when `path` names a terminal device (used by `--shell-job` on restore).
pub fn is_tty_path(path: &str) -> bool {
    std::fs::metadata(path)
        .map(|m| m.mode() & libc::S_IFMT == libc::S_IFCHR && is_tty_major(libc::major(m.rdev())))
        .unwrap_or(false)
        || path.starts_with("/dev/pts/")
        || path == "/dev/tty"
        || path == "/dev/console"
}

fn kcmp_file(pid1: u32, fd1: i32, pid2: u32, fd2: i32) -> bool {
    kcmp_file_order(pid1, fd1, pid2, fd2) == Some(std::cmp::Ordering::Equal)
}

/// How the open file at `fd1` of `pid1` orders against `fd2` of `pid2` in kcmp's (stable,
/// obfuscated) order; None if kcmp cannot tell.
fn kcmp_file_order(pid1: u32, fd1: i32, pid2: u32, fd2: i32) -> Option<std::cmp::Ordering> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp only compares kernel objects; no memory is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1 as libc::c_long,
            pid2 as libc::c_long,
            KCMP_FILE,
            fd1 as libc::c_long,
            fd2 as libc::c_long,
        )
    };
    match r {
        0 => Some(std::cmp::Ordering::Equal),
        1 => Some(std::cmp::Ordering::Less),
        2 => Some(std::cmp::Ordering::Greater),
        _ => None,
    }
}

/// True if target `tfd` registered in epoll `epfd` is the file now open at `tfd` (an epoll keeps a
/// target whose fd number was closed and reused; restoring by number would then be wrong).
fn kcmp_epoll_target(pid: u32, epfd: i32, tfd: u32) -> bool {
    const KCMP_EPOLL_TFD: libc::c_long = 7;
    #[repr(C)]
    struct Slot {
        efd: u32,
        tfd: u32,
        toff: u32,
    }
    let slot = Slot {
        efd: epfd as u32,
        tfd,
        toff: 0,
    };
    // SAFETY: kcmp reads the slot struct from our memory; no other memory is touched.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid as libc::c_long,
            pid as libc::c_long,
            KCMP_EPOLL_TFD,
            tfd as libc::c_long,
            &slot as *const Slot,
        )
    };
    r == 0
}

/// CRIU's lock kinds in file_lock_entry.flag.
pub const FL_POSIX: u32 = 1;
pub const FL_FLOCK: u32 = 2;
pub const FL_OFDLCK: u32 = 1024;

/// The locks an fd's fdinfo lists: (flag, type F_RDLCK/F_WRLCK, start, len with 0 = to EOF).
/// Leases and other kinds are returned as `Err(kind)`.
pub fn parse_locks(fdinfo: &str) -> Vec<Result<(u32, u32, i64, i64), String>> {
    let mut out = Vec::new();
    for line in fdinfo.lines().filter_map(|l| l.strip_prefix("lock:")) {
        // "1: POSIX  ADVISORY  WRITE 6660 fe:00:10010757 5 14"
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.len() < 8 {
            continue;
        }
        let flag = match w[1] {
            "POSIX" => FL_POSIX,
            "FLOCK" => FL_FLOCK,
            "OFDLCK" => FL_OFDLCK,
            other => {
                out.push(Err(other.to_string()));
                continue;
            }
        };
        let ty = if w[3] == "WRITE" {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        } as u32;
        let start: i64 = w[6].parse().unwrap_or(0);
        let len = if w[7] == "EOF" {
            0
        } else {
            w[7].parse::<i64>().unwrap_or(start) - start + 1
        };
        out.push(Ok((flag, ty, start, len)));
    }
    out
}

/// The default size limit for files deleted while open, whose content goes into the images
/// (CRIU's `--ghost-limit` default).
pub const DEFAULT_GHOST_LIMIT: u64 = 1 << 20;

struct Ghost {
    id: u32,
    dev: u64,
    ino: u64,
    entry: pb::GhostFileEntry,
    content: Vec<u8>,
}

/// Every file object of the dumped tree.
pub struct FileTable {
    /// Largest deleted file whose content is saved.
    pub ghost_limit: u64,
    ghosts: Vec<Ghost>,
    /// (file id, ghost id): the file is a deleted one, recreated from the ghost.
    remaps: Vec<(u32, u32)>,
    by_inode: HashMap<(u64, u64, u32), u32>,
    /// pty ends of the tree: ((index, is master), info).
    tty_infos: Vec<((u32, bool), pb::TtyInfoEntry)>,
    /// Bytes buffered in ptys: (tty_info id of the end they wait on, bytes).
    tty_data: Vec<(u32, Vec<u8>)>,
    /// Messages queued on unix sockets: (socket file id, bytes and files in flight).
    sk_queues: Vec<(u32, crate::net::unix::Queued)>,
    /// memfd inodes: (dev, ino) → entry.
    memfd_inodes: Vec<((u64, u64), pb::MemfdInodeEntry)>,
    entries: Vec<pb::FileEntry>,
    /// (pid, fd, dev, ino, id) of fds seen so far, to find shared open file descriptions.
    seen: Vec<(u32, i32, u64, u64, u32)>,
    /// Indexes into `seen` by (dev, inode), each list in kcmp order: finding whether an fd
    /// shares an open file with one seen before takes a binary search, not a kcmp per fd (a
    /// task with 5000 fds on /dev/null took 25 s).
    seen_by_inode: HashMap<(u64, u64), Vec<usize>>,
    by_path: HashMap<(String, u32), u32>,
    pipes_data: Vec<(u32, u32, Vec<u8>)>,
    fifo_data: Vec<(u32, u32, Vec<u8>)>,
}

impl FdKind {
    /// The fdinfo type of the anon-inode kinds that [`FileTable::add_anon`] handles.
    pub fn anon_fd_type(&self) -> Option<pb::FdTypes> {
        Some(match self {
            FdKind::EventFd => pb::FdTypes::Eventfd,
            FdKind::TimerFd => pb::FdTypes::Timerfd,
            FdKind::SignalFd => pb::FdTypes::Signalfd,
            FdKind::Inotify => pb::FdTypes::Inotify,
            FdKind::EventPoll => pb::FdTypes::Eventpoll,
            _ => return None,
        })
    }
}

impl FileTable {
    pub fn new(ghost_limit: u64) -> Self {
        FileTable {
            ghost_limit,
            ghosts: Vec::new(),
            remaps: Vec::new(),
            by_inode: HashMap::new(),
            memfd_inodes: Vec::new(),
            sk_queues: Vec::new(),
            tty_infos: Vec::new(),
            tty_data: Vec::new(),
            entries: Vec::new(),
            seen: Vec::new(),
            seen_by_inode: HashMap::new(),
            by_path: HashMap::new(),
            pipes_data: Vec::new(),
            fifo_data: Vec::new(),
        }
    }

    fn next_id(&self) -> u32 {
        self.entries.len() as u32 + 1
    }

    /// The inode behind `fd` of `pid`, and the id of a file already recorded that shares its
    /// open file description, if any.
    fn existing(&self, pid: u32, fd: i32) -> Result<(std::fs::Metadata, Option<u32>), FilesError> {
        let md = std::fs::metadata(format!("/proc/{pid}/fd/{fd}"))
            .map_err(|source| FilesError::Inspect { pid, fd, source })?;
        let shared = self.shared_with(pid, fd, md.dev(), md.ino());
        Ok((md, shared))
    }

    fn shared_with(&self, pid: u32, fd: i32, dev: u64, ino: u64) -> Option<u32> {
        let group = self.seen_by_inode.get(&(dev, ino))?;
        match self.search(group, pid, fd) {
            Some(Ok(at)) => Some(self.seen[group[at]].4),
            Some(Err(_)) => None,
            // kcmp could not order them: compare one by one.
            None => group
                .iter()
                .map(|&i| &self.seen[i])
                .find(|s| kcmp_file(s.0, s.1, pid, fd))
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
    fn remember(&mut self, pid: u32, fd: i32, dev: u64, ino: u64, id: u32) {
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
        let name = match link.strip_suffix(" (deleted)") {
            Some(orig) if md.is_file() => orig,
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
            let ghost = self.ghost(&format!("/proc/{pid}/fd/{fd}"), name, &md)?;
            self.remaps.push((id, ghost));
        }
        Ok(id)
    }

    /// Marks pty `index` as the controlling terminal of session `sid` with foreground group
    /// `pgrp`, when the tree holds its slave.
    pub fn set_pty_session(&mut self, index: u32, sid: u32, pgrp: u32) {
        for (_, info) in self
            .tty_infos
            .iter_mut()
            .filter(|(k, _)| *k == (index, false))
        {
            info.sid = sid;
            info.pgrp = pgrp;
        }
    }

    /// Records the bytes buffered in pty `index`, on the ends the tree holds (CRIU's tty_data:
    /// keyed by the tty_info of the end they wait to be read on).
    pub fn set_pty_queues(&mut self, index: u32, q: &crate::files::tty::Queues) {
        for (master, data) in [(true, &q.master), (false, &q.slave)] {
            if data.is_empty() {
                continue;
            }
            if let Some((_, info)) = self.tty_infos.iter().find(|(k, _)| *k == (index, master)) {
                self.tty_data.push((info.id, data.clone()));
            }
        }
    }

    /// A POSIX message queue open at `fd` of `pid` (link "/name", or its path where the mqueue
    /// filesystem is mounted): a regular-file entry named `/dev/mqueue/<name>`. Returns the id
    /// and whether this is the first fd seen on the queue (its content is then to be saved).
    pub fn add_mqueue(
        &mut self,
        pid: u32,
        fd: i32,
        link: &str,
        info: &FdInfo,
    ) -> Result<(u32, bool), FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok((id, false));
        }
        let first = !self.seen.iter().any(|s| s.2 == md.dev() && s.3 == md.ino());
        let id = self.push_reg(
            &format!(
                "{}{}",
                crate::ipc::mqueue::PATH_PREFIX,
                crate::ipc::mqueue::queue_name(link)
            ),
            info.flags & !(libc::O_CLOEXEC as u32),
            0,
            None,
            Some(&md),
        );
        self.remember(pid, fd, md.dev(), md.ino(), id);
        Ok((id, first))
    }

    /// The file entry of queue `name` ("/name") of a namespace the tree owns: the entry of an
    /// fd the tree holds on it, else a new one that no fd uses (it carries the queue's name).
    pub fn mqueue_file(&mut self, name: &str, md: &std::fs::Metadata) -> u32 {
        if let Some(s) = self
            .seen
            .iter()
            .find(|s| s.2 == md.dev() && s.3 == md.ino())
        {
            return s.4;
        }
        self.push_reg(
            &format!("{}{name}", crate::ipc::mqueue::PATH_PREFIX),
            libc::O_RDWR as u32,
            0,
            None,
            Some(md),
        )
    }

    /// eventfd, timerfd, signalfd or epoll at `fd` of `pid`, from its fdinfo.
    pub fn add_anon(
        &mut self,
        pid: u32,
        fd: i32,
        kind: &FdKind,
        info: &FdInfo,
    ) -> Result<u32, FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok(id);
        }
        let id = self.next_id();
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let bad = |source| FilesError::Anon { pid, fd, source };
        let mut e = pb::FileEntry {
            id,
            ..Default::default()
        };
        match kind {
            FdKind::EventFd => {
                e.r#type = pb::FdTypes::Eventfd as i32;
                e.efd =
                    Some(crate::files::anon::eventfd_entry(id, flags, &info.extra).map_err(bad)?);
            }
            FdKind::TimerFd => {
                e.r#type = pb::FdTypes::Timerfd as i32;
                e.tfd =
                    Some(crate::files::anon::timerfd_entry(id, flags, &info.extra).map_err(bad)?);
            }
            FdKind::SignalFd => {
                e.r#type = pb::FdTypes::Signalfd as i32;
                e.sgfd =
                    Some(crate::files::anon::signalfd_entry(id, flags, &info.extra).map_err(bad)?);
            }
            FdKind::EventPoll => {
                let tfd = crate::files::anon::epoll_targets(&info.raw, id);
                for t in &tfd {
                    if !kcmp_epoll_target(pid, fd, t.tfd) {
                        return Err(FilesError::EpollStale {
                            pid,
                            fd,
                            tfd: t.tfd,
                        });
                    }
                }
                e.r#type = pb::FdTypes::Eventpoll as i32;
                e.epfd = Some(pb::EventpollFileEntry {
                    id,
                    flags,
                    fown: pb::FownEntry::default(),
                    tfd,
                });
            }
            FdKind::Inotify => {
                let mut wd = crate::files::anon::inotify_watches(&info.raw, id);
                for w in &mut wd {
                    match crate::files::anon::path_of_handle(w.s_dev, &w.f_handle) {
                        Some(p) => w.f_handle.path = Some(p),
                        None => return Err(FilesError::InotifyPath { pid, fd, wd: w.wd }),
                    }
                }
                e.r#type = pb::FdTypes::Inotify as i32;
                e.ify = Some(pb::InotifyFileEntry {
                    id,
                    flags,
                    fown: pb::FownEntry::default(),
                    wd,
                });
            }
            _ => unreachable!("add_anon is called for anon-inode kinds only"),
        }
        self.remember(pid, fd, md.dev(), md.ino(), id);
        self.entries.push(e);
        Ok(id)
    }

    /// An inet socket (its entry already read), shared by kcmp like any open file.
    pub fn add_inet(
        &mut self,
        pid: u32,
        fd: i32,
        make: impl FnOnce(u32) -> Result<pb::InetSkEntry, FilesError>,
    ) -> Result<(u32, bool), FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok((id, false));
        }
        let id = self.next_id();
        let entry = make(id)?;
        self.remember(pid, fd, md.dev(), md.ino(), id);
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Inetsk as i32,
            id,
            isk: Some(entry),
            ..Default::default()
        });
        Ok((id, true))
    }

    /// A unix socket (its state already read), shared by kcmp like any open file. Its queued
    /// messages go to sk-queues.img; an external peer gets an entry of its own, as in CRIU.
    pub fn add_unix(
        &mut self,
        pid: u32,
        fd: i32,
        dumped: crate::net::unix::Dumped,
        queued: Vec<crate::net::unix::Queued>,
    ) -> Result<u32, FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok(id);
        }
        let id = self.next_id();
        let mut entry = dumped.entry;
        entry.id = id;
        self.remember(pid, fd, md.dev(), md.ino(), id);
        for m in queued {
            self.sk_queues.push((id, m));
        }
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Unixsk as i32,
            id,
            usk: Some(entry.clone()),
            ..Default::default()
        });
        if let Some(peer) = dumped.external_peer {
            if !self
                .entries
                .iter()
                .any(|e| e.usk.as_ref().is_some_and(|u| u.ino == peer.ino))
            {
                let pid_ = self.next_id();
                self.entries.push(pb::FileEntry {
                    r#type: pb::FdTypes::Unixsk as i32,
                    id: pid_,
                    usk: Some(pb::UnixSkEntry {
                        id: pid_,
                        ino: peer.ino,
                        r#type: peer.ty as u32,
                        state: peer.state as u32,
                        name: peer.name,
                        peer: 0,
                        ..entry
                    }),
                    ..Default::default()
                });
            }
        }
        Ok(id)
    }

    /// One end of a pty of the tree: a TTY entry pointing at its tty_info (saved once per end).
    pub fn add_pty(
        &mut self,
        pid: u32,
        fd: i32,
        link: &str,
        flags: u32,
        info: impl FnOnce(u32) -> Result<pb::TtyInfoEntry, FilesError>,
        end_key: (u32, bool),
    ) -> Result<u32, FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok(id);
        }
        let info_id = match self.tty_infos.iter().find(|(k, _)| *k == end_key) {
            Some((_, i)) => i.id,
            None => {
                let i = info(self.tty_infos.len() as u32 + 1)?;
                let id = i.id;
                self.tty_infos.push((end_key, i));
                id
            }
        };
        let regf_id = self.push_reg(link, flags, 0, None, Some(&md));
        let id = self.next_id();
        self.remember(pid, fd, md.dev(), md.ino(), id);
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Tty as i32,
            id,
            tty: Some(pb::TtyFileEntry {
                id,
                tty_info_id: info_id,
                flags,
                fown: pb::FownEntry::default(),
                regf_id: Some(regf_id),
            }),
            ..Default::default()
        });
        Ok(id)
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
        let fresh = !self.memfd_inodes.iter().any(|(k, _)| *k == key);
        if fresh {
            let seals = std::fs::File::open(open)
                .map(|f| {
                    // SAFETY: F_GET_SEALS on an fd we own.
                    unsafe { libc::fcntl(f.as_raw_fd(), libc::F_GET_SEALS) }
                })
                .unwrap_or(0)
                .max(0) as u32;
            let name = link
                .trim_start_matches("/memfd:")
                .trim_end_matches(" (deleted)")
                .to_string();
            self.memfd_inodes.push((
                key,
                pb::MemfdInodeEntry {
                    name,
                    uid: md.uid(),
                    gid: md.gid(),
                    size: md.size(),
                    shmid: md.ino() as u32,
                    seals,
                    inode_id: md.ino(),
                    hugetlb_flag: None,
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

    /// Saves the content of a deleted file once per inode; returns its ghost id.
    fn ghost(&mut self, open: &str, orig: &str, md: &std::fs::Metadata) -> Result<u32, FilesError> {
        if let Some(g) = self
            .ghosts
            .iter()
            .find(|g| g.dev == md.dev() && g.ino == md.ino())
        {
            return Ok(g.id);
        }
        if md.size() > self.ghost_limit {
            return Err(FilesError::GhostTooBig {
                path: orig.to_string(),
                size: md.size(),
                limit: self.ghost_limit,
            });
        }
        let content = std::fs::read(open).map_err(|source| FilesError::Ghost {
            path: orig.to_string(),
            source,
        })?;
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
                dev: None,
                ino: None,
                rdev: None,
                atim: Some(tv(md.atime(), md.atime_nsec())),
                mtim: Some(tv(md.mtime(), md.mtime_nsec())),
                chunks: Some(false),
                size: Some(content.len() as u64),
                symlnk_target: None,
            },
            content,
        });
        Ok(id)
    }

    /// A file mapped by `pid` at `start-end`; a deleted one is saved as a ghost.
    pub fn add_mapping(
        &mut self,
        pid: u32,
        start: u64,
        end: u64,
        path: &str,
        flags: u32,
    ) -> Result<u32, FilesError> {
        self.add_by_path(
            &format!("/proc/{pid}/map_files/{start:x}-{end:x}"),
            path,
            flags,
        )
    }

    /// The executable of `pid` (which may have been deleted or replaced since it started).
    pub fn add_exe(&mut self, pid: u32, path: &str) -> Result<u32, FilesError> {
        self.add_by_path(&format!("/proc/{pid}/exe"), path, libc::O_RDONLY as u32)
    }

    /// A file known by the path the kernel shows; `open` reaches the same inode even when that
    /// path ends in " (deleted)", whose content is then saved as a ghost.
    fn add_by_path(&mut self, open: &str, path: &str, flags: u32) -> Result<u32, FilesError> {
        let Some(orig) = path.strip_suffix(" (deleted)") else {
            return self.add_path(path, flags);
        };
        let md = std::fs::metadata(open).map_err(|source| FilesError::Ghost {
            path: orig.to_string(),
            source,
        })?;
        if let Some(&id) = self.by_inode.get(&(md.dev(), md.ino(), flags)) {
            return Ok(id);
        }
        let ghost = self.ghost(open, orig, &md)?;
        let id = self.push_reg(orig, flags, 0, None, Some(&md));
        self.remaps.push((id, ghost));
        self.by_inode.insert((md.dev(), md.ino(), flags), id);
        Ok(id)
    }

    /// A file known by path only (cwd, root, exe, mapped files), opened with `flags`.
    pub fn add_path(&mut self, path: &str, flags: u32) -> Result<u32, FilesError> {
        if let Some(&id) = self.by_path.get(&(path.to_string(), flags)) {
            return Ok(id);
        }
        let md = std::fs::metadata(path).ok();
        let id = self.push_reg(path, flags, 0, None, md.as_ref());
        self.by_path.insert((path.to_string(), flags), id);
        Ok(id)
    }

    fn push_reg(
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
                size: md.map(|m| m.size()),
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
        save_pipe_data(&mut self.pipes_data, pid, fd, ino)?;
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

    /// A named pipe: a regular-file entry for its path and a FIFO entry; its buffered bytes go
    /// to fifo-data.img the first time the FIFO is seen.
    pub fn add_fifo(
        &mut self,
        pid: u32,
        fd: i32,
        link: &str,
        ino: u64,
        info: &FdInfo,
    ) -> Result<u32, FilesError> {
        let (md, shared) = self.existing(pid, fd)?;
        if let Some(id) = shared {
            return Ok(id);
        }
        let pipe_id = ino as u32;
        save_pipe_data(&mut self.fifo_data, pid, fd, ino)?;
        let flags = info.flags & !(libc::O_CLOEXEC as u32);
        let regf_id = self.push_reg(link, flags, 0, Some(info.mnt_id as i32), Some(&md));
        let id = self.next_id();
        self.remember(pid, fd, md.dev(), md.ino(), id);
        self.entries.push(pb::FileEntry {
            r#type: pb::FdTypes::Fifo as i32,
            id,
            fifo: Some(pb::FifoEntry {
                id,
                pipe_id,
                regf_id: Some(regf_id),
            }),
            ..Default::default()
        });
        Ok(id)
    }

    /// Writes `files.img` and `pipes-data.img`.
    pub fn write(&self, dir: &Path) -> Result<(), FilesError> {
        let mut w = ImageWriter::new(ImageKind::Normal, magic::FILES);
        for e in &self.entries {
            w.push(e);
        }
        write(&dir.join(names::FILES), &w.into_bytes())?;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::PIPES_DATA);
        for (pipe_id, size, data) in &self.pipes_data {
            if data.is_empty() {
                continue;
            }
            w.push(&pb::PipeDataEntry {
                pipe_id: *pipe_id,
                bytes: data.len() as u32,
                size: Some(*size),
            });
            w.push_raw(data);
        }
        write(&dir.join(names::pipes_data()), &w.into_bytes())?;
        // Always written, even empty: a stale one from an older dump must not apply.
        let mut w = ImageWriter::new(ImageKind::Normal, magic::REMAP_FPATH);
        for &(orig_id, remap_id) in &self.remaps {
            w.push(&pb::RemapFilePathEntry {
                orig_id,
                remap_id,
                remap_type: Some(pb::RemapType::Ghost as i32),
            });
        }
        write(&dir.join(names::REMAP_FPATH), &w.into_bytes())?;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::TTY_INFO);
        for (_, i) in &self.tty_infos {
            w.push(i);
        }
        write(&dir.join(names::TTY_INFO), &w.into_bytes())?;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::TTY_DATA);
        for (tty_id, data) in &self.tty_data {
            w.push(&pb::TtyDataEntry {
                tty_id: *tty_id,
                data: data.clone(),
            });
        }
        write(&dir.join(names::TTY_DATA), &w.into_bytes())?;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::FIFO_DATA);
        for (pipe_id, size, data) in self.fifo_data.iter().filter(|f| !f.2.is_empty()) {
            w.push(&pb::PipeDataEntry {
                pipe_id: *pipe_id,
                bytes: data.len() as u32,
                size: Some(*size),
            });
            w.push_raw(data);
        }
        write(&dir.join(names::FIFO_DATA), &w.into_bytes())?;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::SK_QUEUES);
        for (id, m) in &self.sk_queues {
            let scm = (!m.files.is_empty())
                .then(|| pb::ScmEntry {
                    r#type: libc::SCM_RIGHTS as u32,
                    rights: m.files.clone(),
                })
                .into_iter()
                .collect();
            w.push(&pb::SkPacketEntry {
                id_for: *id,
                length: m.data.len() as u32,
                scm,
            });
            w.push_raw(&m.data);
        }
        write(&dir.join(names::SK_QUEUES), &w.into_bytes())?;
        let mut w = ImageWriter::new(ImageKind::Normal, magic::MEMFD_INODE);
        for (_, m) in &self.memfd_inodes {
            w.push(m);
        }
        write(&dir.join(names::MEMFD_INODE), &w.into_bytes())?;
        for g in &self.ghosts {
            let mut w = ImageWriter::new(ImageKind::Normal, magic::GHOST_FILE);
            w.push(&g.entry);
            w.push_raw(&g.content);
            write(&dir.join(names::ghost_file(g.id)), &w.into_bytes())?;
        }
        Ok(())
    }
}

fn write(path: &Path, bytes: &[u8]) -> Result<(), FilesError> {
    std::fs::write(path, bytes).map_err(|source| FilesError::Write {
        path: path.to_path_buf(),
        source,
    })
}

/// Saves the bytes buffered in pipe (or FIFO) `ino` the first time it is seen.
fn save_pipe_data(
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
    let path = std::ffi::CString::new(format!("/proc/{pid}/fd/{fd}")).expect("no NUL");
    // SAFETY: open(2) of a NUL-terminated path; the result is owned below.
    let src = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: `src` was just returned by open and is owned by nobody else.
    let src = unsafe { OwnedFd::from_raw_fd(src) };
    // SAFETY: fcntl F_GETPIPE_SZ takes no pointer.
    let size = cvt(unsafe { libc::fcntl(src.as_raw_fd(), libc::F_GETPIPE_SZ) })?;
    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fds into `p`.
    cvt(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: both fds were just created by pipe2 and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // SAFETY: F_SETPIPE_SZ takes an integer.
    cvt(unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size) })?;
    // SAFETY: tee(2) between two pipe fds we hold.
    let n = unsafe {
        libc::tee(
            src.as_raw_fd(),
            wr.as_raw_fd(),
            size as usize,
            libc::SPLICE_F_NONBLOCK,
        )
    };
    let mut data = Vec::new();
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EAGAIN) {
            return Err(e);
        }
        return Ok((size as u32, data));
    }
    drop(wr);
    std::fs::File::from(rd).read_to_end(&mut data)?;
    Ok((size as u32, data))
}
