//! Loading and checking a dump's images before anything is created: a corrupt, truncated or
//! missing image fails here, with its file name, and no task is ever forked for it.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use crate::images::{self, magic, names, pb, ImageError, ImageKind, ImageReader};

mod pages;
mod tasks;

pub use pages::nr_pages;
use pages::{check_object_pages, pagemap};
use tasks::{load_pstree, load_tasks};

/// The images do not describe something we can restore.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    NetNs(#[from] crate::ns::net::NetNsError),
    #[error("{file}: missing from {dir}")]
    Missing { dir: PathBuf, file: String },
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("{file}: {what}")]
    Invalid { file: String, what: String },
}

fn invalid(file: &str, what: impl Into<String>) -> LoadError {
    LoadError::Invalid {
        file: file.to_string(),
        what: what.into(),
    }
}

/// One thread's images.
pub struct ThreadImage {
    pub tid: u32,
    pub core: pb::CoreEntry,
}

/// One process's images.
pub struct TaskImage {
    pub pstree: pb::PstreeEntry,
    pub threads: Vec<ThreadImage>,
    pub mm: pb::MmEntry,
    pub pagemap: Vec<pb::PagemapEntry>,
    pub pages_file: String,
    pub fds: Vec<pb::FdinfoEntry>,
    pub fs: pb::FsEntry,
    /// A zombie: only its exit status (wait status as /proc/<pid>/stat gives it) is restored.
    pub zombie_exit: Option<u32>,
    /// The id of its fd table (0 for a zombie).
    pub files_id: u32,
    /// It uses its parent's fd table (forked with `CLONE_FILES`): `fds` is empty, the
    /// parent's are its own.
    pub shares_parent_files: bool,
}

impl TaskImage {
    pub fn pid(&self) -> u32 {
        self.pstree.pid
    }
    pub fn tc(&self) -> &pb::TaskCoreEntry {
        self.threads[0].core.tc.as_ref().expect("checked at load")
    }
    /// The process's cgroup set: its main thread's (where CRIU writes it), else the task
    /// core's (where stasis does), as CRIU's restore reads it.
    pub fn cg_set(&self) -> Option<u32> {
        let main = self.threads[0].core.thread_core.as_ref();
        main.and_then(|c| c.cg_set).or(self.tc().cg_set)
    }
}

/// A piece of a ghost file's data: its offset and bytes.
pub type DataChunk = (u64, Vec<u8>);

/// Everything a restore needs, read and checked.
#[derive(Default)]
pub struct DumpImage {
    pub dir: PathBuf,
    pub tasks: Vec<TaskImage>,
    pub files: HashMap<u32, pb::FileEntry>,
    /// pipe_id → (pipe size, buffered bytes)
    pub pipes_data: HashMap<u32, (u32, Vec<u8>)>,
    /// FIFO pipe_id (inode) → (pipe size, buffered bytes)
    pub fifo_data: HashMap<u32, (u32, Vec<u8>)>,
    /// shmid → (pagemap entries with offsets as vaddr, pages file name)
    pub shmem: HashMap<u64, (Vec<pb::PagemapEntry>, String)>,
    /// memfd inode id → (inode, its pages as a shmem pagemap, pages file)
    pub memfds: HashMap<u64, (pb::MemfdInodeEntry, Vec<pb::PagemapEntry>, String)>,
    /// socket inode → established TCP connection state, receive queue, send queue
    pub tcp_streams: HashMap<u32, (pb::TcpStreamEntry, Vec<u8>, Vec<u8>)>,
    /// System V shared memory segments: (entry, content pagemap, pages file).
    pub sysv_shm: Vec<(pb::IpcShmEntry, Vec<pb::PagemapEntry>, String)>,
    /// SysV message queues and semaphore sets the tree used.
    pub sysv_msg: Vec<crate::ipc::sysv::Queue>,
    pub sysv_sem: Vec<(pb::IpcSemEntry, Vec<u16>)>,
    /// POSIX message queues (see `mqueue`).
    pub posix_mqueues: Vec<crate::ipc::mqueue::Queue>,
    /// The IPC sysctls of the namespace the tree owned; None when it used the host's.
    pub ipc_vars: Option<pb::IpcVarEntry>,
    /// The names of the UTS namespace the tree owned; None when it used the host's.
    pub uts: Option<pb::UtsnsEntry>,
    /// The network namespace the tree owned: links, addresses, routes; or the key of the
    /// caller's namespace to join.
    pub net: Option<crate::ns::net::Saved>,
    /// The image id of the tree's network namespace, when [`Self::net`] is set.
    pub net_ns_id: u32,
    /// The netns image that is missing when the dump saved none of the namespace's contents
    /// (`--empty-ns net`); [`Self::net`] is then a namespace with nothing in it.
    pub net_unsaved: Option<String>,
    /// The clocks of the time namespace the tree owned, as they read at dump.
    pub time: Option<pb::TimensEntry>,
    /// tty_info id → the state of one end of a pty.
    pub tty_infos: HashMap<u32, pb::TtyInfoEntry>,
    /// tty_info id → bytes waiting to be read on that end of its pty.
    pub tty_data: HashMap<u32, Vec<u8>>,
    /// File locks to take again.
    pub locks: Vec<pb::FileLockEntry>,
    /// unix socket file id → messages queued for it to read
    pub sk_queues: HashMap<u32, Vec<crate::net::unix::Queued>>,
    /// Files in flight on unix sockets (SCM_RIGHTS), in the order their messages come.
    pub in_flight: Vec<u32>,
    /// Seccomp filters (`seccomp.img`); thread cores name the last of their chain.
    pub seccomp: Vec<pb::SeccompFilter>,
    /// The nftables table that locks the dumped connections, to remove once they are back.
    pub net_lock: Option<String>,
    /// CRIU locked the dumped connections with iptables rules (its default), to remove once
    /// they are back.
    pub iptables_lock: bool,
    /// file id → ghost id, for files that were deleted while open.
    pub remaps: HashMap<u32, u32>,
    /// file id → id of the file entry naming a link to it: deleted while open but linked
    /// elsewhere, kept by a link the dump made (`--link-remap`, CRIU's linked remap).
    pub linked: HashMap<u32, u32>,
    /// file id → pid: the `/proc/<pid>` directory of a process that had exited (CRIU's
    /// procfs remap).
    pub dead_procs: HashMap<u32, u32>,
    /// ghost id → (attributes, content)
    /// Each ghost file's entry and its data, holes left out.
    pub ghosts: HashMap<u32, (pb::GhostFileEntry, Vec<DataChunk>)>,
    /// The mount table of the mount namespace the tree owned (`mountpoints-<id>.img`).
    pub mounts: Option<Vec<crate::ns::mnt::MountInfo>>,
    /// Ids of the tree's mounts its init makes once it has pivoted (a proc, what lies under
    /// one, cgroup filesystems), in its own namespace or a nested one: their files are opened
    /// by the tasks themselves (see files::procfile).
    pub late_mounts: std::collections::HashSet<u32>,
    /// Mount namespaces nested in the tree's (see ns::mnt_nested): (id, table).
    pub nested_mounts: Vec<(u32, Vec<crate::ns::mnt::MountInfo>)>,
    /// TCP connections the restore rebuilt, still in repair mode until the network lock is
    /// gone (a dup of each, and its file id; see net::inet::leave_repair).
    pub in_repair: std::sync::Mutex<Vec<(std::os::fd::OwnedFd, u32)>>,
    /// Set by the restore once they are made: where each nested namespace's root is reached
    /// from the restorer, by namespace id.
    pub nested_roots: HashMap<u32, String>,
    /// Set by the restore with the tree's mounts: where the host's files (on mounts of no
    /// table of the tree) are reached from the restorer.
    pub host_root: Option<String>,
    /// The links of `--link-remap` as the pool found them: their directory (an O_PATH fd,
    /// which reaches it in whatever mount namespace it is) and name, removed once the restore
    /// succeeded (see files::reg::remove_links).
    pub link_dirs: std::sync::Mutex<Vec<(std::os::fd::OwnedFd, std::ffi::CString)>>,
    /// Set by the restore once the tree's mounts are made under its root: where a file of
    /// the tree is reached from the restorer (see [`DumpImage::path_of`]).
    pub fs_root: Option<String>,
    /// The tree owned its cgroup namespace: its init makes a new one.
    pub own_cgroupns: bool,
    /// The tree's pid namespace was external (`pidns-<id>.img`'s key): the restore joins the
    /// namespace the caller hands over under that key (`--inherit-fd`).
    pub pidns_ext_key: Option<String>,
    /// `cgroup.img`: each task's cgroups, by its `cg_set`.
    pub cgroups: Option<pb::CgroupEntry>,
    /// The uid and gid maps of the user namespace the tree owned.
    pub userns: Option<pb::UsernsEntry>,
}

impl DumpImage {
    /// Where the restorer opens the file `reg` names: under the tree's root for a file on
    /// one of the tree's mounts (or on no mount the images name: a path from a mapping or a
    /// cwd), as it is for a file of ours (a host file the caller's runtime gave the
    /// container, such as its stdout log).
    pub fn path_of<'a>(&self, reg: &'a pb::RegFileEntry) -> std::borrow::Cow<'a, str> {
        match self.root_for(reg) {
            Some(root) => crate::ns::mnt::under(root, &reg.name).into(),
            None => reg.name.as_str().into(),
        }
    }

    /// [`Self::path_of`] for another name of the same file (its name before " (deleted)").
    pub fn path_of_name(&self, reg: &pb::RegFileEntry, name: &str) -> String {
        match self.root_for(reg) {
            Some(root) => crate::ns::mnt::under(root, name),
            None => name.to_string(),
        }
    }

    /// `path` as the restorer reaches it when it is on the tree's mount `mnt_id` (of its own
    /// namespace or a nested one); as it is otherwise.
    pub fn path_on_mount(&self, mnt_id: u32, path: &str) -> String {
        let reg = pb::RegFileEntry {
            mnt_id: Some(mnt_id as i32),
            ..Default::default()
        };
        self.path_of_name(&reg, path)
    }

    /// The tree's root, a nested namespace's, or for a host file ours as the restore reaches
    /// it (None: the path as it is).
    fn root_for(&self, reg: &pb::RegFileEntry) -> Option<&str> {
        if self.fs_root.is_some() {
            self.tree_root_for(reg).or(self.host_root.as_deref())
        } else {
            None
        }
    }

    fn tree_root_for(&self, reg: &pb::RegFileEntry) -> Option<&str> {
        let root = self.fs_root.as_deref()?;
        let mounts = self.mounts.as_ref()?;
        let id = match reg.mnt_id {
            Some(id) if id >= 0 => id as u32,
            _ => return Some(root),
        };
        if mounts.iter().any(|m| m.id == id) {
            return Some(root);
        }
        let (ns, _) = self
            .nested_mounts
            .iter()
            .find(|(_, t)| t.iter().any(|m| m.id == id))?;
        self.nested_roots.get(ns).map(String::as_str)
    }
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, LoadError> {
    let path = dir.join(file);
    match std::fs::read(&path) {
        Ok(b) => Ok(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(LoadError::Missing {
            dir: dir.to_path_buf(),
            file: file.to_string(),
        }),
        Err(source) => Err(LoadError::Read { path, source }),
    }
}

fn read_optional(dir: &Path, file: &str) -> Result<Option<Vec<u8>>, LoadError> {
    match read(dir, file) {
        Ok(b) => Ok(Some(b)),
        Err(LoadError::Missing { .. }) => Ok(None),
        Err(e) => Err(e),
    }
}

fn one<M: prost::Message + Default>(
    dir: &Path,
    file: &str,
    kind: ImageKind,
    m: u32,
) -> Result<M, LoadError> {
    let bytes = read(dir, file)?;
    let mut r = ImageReader::new(file, &bytes, kind, m)?;
    Ok(r.next_required()?)
}

fn all<M: prost::Message + Default>(dir: &Path, file: &str, m: u32) -> Result<Vec<M>, LoadError> {
    let bytes = read(dir, file)?;
    let mut r = ImageReader::new(file, &bytes, ImageKind::Normal, m)?;
    Ok(r.all()?)
}

/// Reads every image of a dump and checks that it is consistent.
pub fn load(dir: &Path) -> Result<DumpImage, LoadError> {
    let inv: pb::InventoryEntry = one(
        dir,
        names::INVENTORY,
        ImageKind::Inventory,
        magic::INVENTORY,
    )?;
    if inv.img_version != images::CRTOOLS_IMAGES_V1_1 || inv.fdinfo_per_id != Some(true) {
        return Err(invalid(
            names::INVENTORY,
            format!("unsupported image version {}", inv.img_version),
        ));
    }
    let mut img = DumpImage {
        dir: dir.to_path_buf(),
        tasks: load_tasks(dir, load_pstree(dir)?)?,
        net_lock: inv
            .dump_criu_run_id
            .clone()
            .filter(|_| {
                // A table that was never made (CRIU's "skip") is just not found at unlock.
                matches!(
                    inv.network_lock_method,
                    Some(
                        crate::dump::NETWORK_LOCK_NFTABLES | crate::dump::OLD_NETWORK_LOCK_NFTABLES
                    )
                )
            })
            .map(|id| crate::dump::net_lock_table(&id)),
        ..Default::default()
    };
    load_files(dir, &mut img)?;
    open_mapped_files_as_their_mappings_need(&mut img);
    load_ghosts(dir, &mut img)?;
    load_tcp(dir, &mut img)?;
    let lock = inv.network_lock_method.unwrap_or(NETWORK_LOCK_IPTABLES);
    // CRIU's iptables lock: rules the restore takes away where they are (see
    // stasis_netns::iptlock).
    img.iptables_lock = lock == NETWORK_LOCK_IPTABLES && !img.tcp_streams.is_empty();
    load_ipc(dir, &mut img, &inv)?;
    load_ttys_and_locks(dir, &mut img)?;
    load_queues_and_memfds(dir, &mut img)?;
    load_seccomp(dir, &mut img)?;
    Ok(img)
}

/// A file only mapped (no fd holds it) is opened with the access its mappings need: CRIU
/// writes such files' entries read-only and puts the mode in each VMA's `fdflags` (a shared
/// writable mapping, such as a JVM's hsperfdata file, needs O_RDWR).
fn open_mapped_files_as_their_mappings_need(img: &mut DumpImage) {
    use crate::images::vma_status::{VMA_FILE_PRIVATE, VMA_FILE_SHARED};
    let held_by_fds: HashSet<u32> = img
        .tasks
        .iter()
        .flat_map(|t| t.fds.iter().map(|f| f.id))
        .collect();
    for v in img.tasks.iter().flat_map(|t| &t.mm.vmas) {
        let Some(want) = v.fdflags.map(|f| f as libc::c_int & libc::O_ACCMODE) else {
            continue;
        };
        if v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED) == 0
            || want == libc::O_RDONLY
            || held_by_fds.contains(&(v.shmid as u32))
        {
            continue;
        }
        let Ok(id) = u32::try_from(v.shmid) else {
            continue;
        };
        // A regular file, or a memfd (CRIU 4.2 dumps shared anonymous memory as one).
        let flags = img
            .files
            .get_mut(&id)
            .and_then(|f| match (f.reg.as_mut(), f.memfd.as_mut()) {
                (Some(reg), _) => Some(&mut reg.flags),
                (None, Some(memfd)) => Some(&mut memfd.flags),
                _ => None,
            });
        if let Some(flags) = flags {
            if *flags as libc::c_int & libc::O_ACCMODE == libc::O_RDONLY {
                *flags = (*flags & !(libc::O_ACCMODE as u32)) | libc::O_RDWR as u32;
            }
        }
    }
}

/// files.img, pipe and FIFO data, and the shared memory every task maps; every file a task
/// refers to must exist.
fn load_files(dir: &Path, img: &mut DumpImage) -> Result<(), LoadError> {
    let mut files: HashMap<u32, pb::FileEntry> = HashMap::new();
    for f in all::<pb::FileEntry>(dir, names::FILES, magic::FILES)? {
        match files.get_mut(&f.id) {
            // A tun file comes as two entries of one id (CRIU's form): the device node's
            // regular file, then the tun file. Kept as one.
            Some(e) if f.tunf.is_some() && e.reg.is_some() && e.tunf.is_none() => {
                e.r#type = f.r#type;
                e.tunf = f.tunf;
            }
            Some(e) if f.reg.is_some() && e.tunf.is_some() && e.reg.is_none() => e.reg = f.reg,
            _ => {
                files.insert(f.id, f);
            }
        }
    }
    let mut pipes_data = HashMap::new();
    if let Some(bytes) = read_optional(dir, &names::pipes_data())? {
        let file = names::pipes_data();
        let mut r = ImageReader::new(&file, &bytes, ImageKind::Normal, magic::PIPES_DATA)?;
        while let Some(e) = r.next::<pb::PipeDataEntry>()? {
            let data = r.raw(e.bytes as u64)?.to_vec();
            pipes_data.insert(e.pipe_id, (e.size.unwrap_or(0), data));
        }
    }
    let mut fifo_data = HashMap::new();
    if let Some(bytes) = read_optional(dir, names::FIFO_DATA)? {
        let mut r = ImageReader::new(
            names::FIFO_DATA,
            &bytes,
            ImageKind::Normal,
            magic::FIFO_DATA,
        )?;
        while let Some(e) = r.next::<pb::PipeDataEntry>()? {
            let data = r.raw(e.bytes as u64)?.to_vec();
            fifo_data.insert(e.pipe_id, (e.size.unwrap_or(0), data));
        }
    }
    let mut shmem = HashMap::new();
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
        // Every file a task refers to must exist in files.img.
        let mut refs: Vec<(u32, String)> =
            t.fds.iter().map(|f| (f.id, names::fdinfo(f.id))).collect();
        refs.push((t.fs.cwd_id, names::fs(t.pid())));
        refs.push((t.fs.root_id, names::fs(t.pid())));
        refs.push((t.mm.exe_file_id, names::mm(t.pid())));
        for v in &t.mm.vmas {
            if v.status
                & (images::vma_status::VMA_FILE_PRIVATE | images::vma_status::VMA_FILE_SHARED)
                != 0
            {
                refs.push((v.shmid as u32, names::mm(t.pid())));
            }
            if v.status & images::vma_status::VMA_ANON_SHARED != 0 && !shmem.contains_key(&v.shmid)
            {
                shmem.insert(v.shmid, pagemap(dir, &names::pagemap_shmem(v.shmid))?);
            }
        }
        for (id, file) in refs {
            if !files.contains_key(&id) {
                return Err(invalid(
                    &file,
                    format!("refers to file id {id}, which files.img lacks"),
                ));
            }
        }
    }
    // A shared anonymous object is as large as the largest window a task maps of it (what
    // the restore makes); its pages must lie inside.
    for (shmid, (entries, _)) in &shmem {
        let size = img
            .tasks
            .iter()
            .flat_map(|t| t.mm.vmas.iter())
            .filter(|v| v.status & images::vma_status::VMA_ANON_SHARED != 0 && v.shmid == *shmid)
            .map(|v| v.pgoff + (v.end - v.start))
            .max()
            .unwrap_or(0);
        check_object_pages(&names::pagemap_shmem(*shmid), entries, size)?;
    }
    img.files = files;
    img.pipes_data = pipes_data;
    img.fifo_data = fifo_data;
    img.shmem = shmem;
    Ok(())
}

/// Files deleted while open: their remaps and ghost contents.
fn load_ghosts(dir: &Path, img: &mut DumpImage) -> Result<(), LoadError> {
    let mut remaps = HashMap::new();
    let mut linked = HashMap::new();
    let mut dead_procs = HashMap::new();
    let mut ghosts = HashMap::new();
    if let Some(bytes) = read_optional(dir, names::REMAP_FPATH)? {
        let mut r = ImageReader::new(
            names::REMAP_FPATH,
            &bytes,
            ImageKind::Normal,
            magic::REMAP_FPATH,
        )?;
        for e in r.all::<pb::RemapFilePathEntry>()? {
            if !img.files.contains_key(&e.orig_id) {
                return Err(invalid(
                    names::REMAP_FPATH,
                    format!("file id {} is not in files.img", e.orig_id),
                ));
            }
            // CRIU writes no type for a linked remap (LINKED is 0, its default).
            if e.remap_type.unwrap_or(0) == pb::RemapType::Linked as i32 {
                let named = img.files.get(&e.remap_id).and_then(|f| f.reg.as_ref());
                if named.is_none() {
                    return Err(invalid(
                        names::REMAP_FPATH,
                        format!("link of file id {} is no file in files.img", e.orig_id),
                    ));
                }
                linked.insert(e.orig_id, e.remap_id);
                continue;
            }
            if e.remap_type == Some(pb::RemapType::Procfs as i32) {
                if e.remap_id == 0 {
                    return Err(invalid(names::REMAP_FPATH, "a procfs remap of pid 0"));
                }
                dead_procs.insert(e.orig_id, e.remap_id);
                continue;
            }
            if e.remap_type != Some(pb::RemapType::Ghost as i32) {
                return Err(invalid(
                    names::REMAP_FPATH,
                    "only ghost, linked and procfs remaps are supported",
                ));
            }
            if let std::collections::hash_map::Entry::Vacant(slot) = ghosts.entry(e.remap_id) {
                let file = names::ghost_file(e.remap_id);
                let bytes = read(dir, &file)?;
                let mut r = ImageReader::new(&file, &bytes, ImageKind::Normal, magic::GHOST_FILE)?;
                let mut g: pb::GhostFileEntry = r.next_required()?;
                let size = g.size.unwrap_or(0);
                let mut chunks = Vec::new();
                if g.chunks == Some(true) {
                    while let Some(c) = r.next::<pb::GhostChunkEntry>()? {
                        let end = c.off.checked_add(c.len).filter(|&e| e <= size);
                        if end.is_none() {
                            return Err(invalid(&file, "a chunk lies past the file's size"));
                        }
                        chunks.push((c.off, r.raw(c.len)?.to_vec()));
                    }
                } else {
                    // CRIU writes no size for a file under its chunk threshold (12 KiB):
                    // the contents are the rest of the image.
                    let len = *g.size.get_or_insert(r.remaining());
                    chunks.push((0, r.raw(len)?.to_vec()));
                }
                slot.insert((g, chunks));
            }
            remaps.insert(e.orig_id, e.remap_id);
        }
    }
    img.remaps = remaps;
    img.linked = linked;
    img.dead_procs = dead_procs;
    img.ghosts = ghosts;
    Ok(())
}

/// The state and queues of every TCP connection, established or half closed.
fn load_tcp(dir: &Path, img: &mut DumpImage) -> Result<(), LoadError> {
    let mut tcp_streams = HashMap::new();
    for f in img.files.values() {
        let Some(isk) = &f.isk else { continue };
        let closed_connection =
            isk.state == crate::net::inet::halfclose::TCP_CLOSE as u32 && isk.dst_port != 0;
        if isk.proto != libc::IPPROTO_TCP as u32
            || !(crate::net::inet::halfclose::is_connection(isk.state) || closed_connection)
        {
            continue;
        }
        let file = names::tcp_stream(isk.ino);
        // None: dumped with --tcp-close, to come back closed (the restore checks the flag),
        // or a closed socket CRIU dumped without its queues.
        let Some(bytes) = read_optional(dir, &file)? else {
            continue;
        };
        let mut r = ImageReader::new(&file, &bytes, ImageKind::Normal, magic::TCP_STREAM)?;
        let e: pb::TcpStreamEntry = r.next_required()?;
        let inq = r.raw(e.inq_len as u64)?.to_vec();
        let outq = r.raw(e.outq_len as u64)?.to_vec();
        tcp_streams.insert(isk.ino, (e, inq, outq));
    }
    img.tcp_streams = tcp_streams;
    Ok(())
}

/// CRIU's `network_lock_method` value for its iptables lock (images without the field too).
const NETWORK_LOCK_IPTABLES: u32 = 0;

/// The IPC objects and the IPC and UTS namespaces the tree owned.
fn load_ipc(dir: &Path, img: &mut DumpImage, inv: &pb::InventoryEntry) -> Result<(), LoadError> {
    // CRIU's root_ids are the dumper's namespaces: a root whose namespace id differs owned
    // its namespace, and that namespace's images carry the id.
    let (root_ipc, own_ipc_ns) = tree_ns_id(&img.tasks, inv, "IPC", |i| i.ipc_ns_id)?;
    let ipc_ns_id = root_ipc.unwrap_or(crate::ns::ipc::HOST_NS_ID);
    let ipc_vars = if own_ipc_ns {
        let file = names::ipcns_var(ipc_ns_id);
        Some(one::<pb::IpcVarEntry>(
            dir,
            &file,
            ImageKind::Normal,
            magic::IPC_VAR,
        )?)
    } else {
        None
    };
    let uts = match tree_ns_id(&img.tasks, inv, "UTS", |i| i.uts_ns_id)? {
        (Some(id), true) => Some(one::<pb::UtsnsEntry>(
            dir,
            &names::utsns(id),
            ImageKind::Normal,
            magic::UTSNS,
        )?),
        _ => None,
    };
    let mut sysv_shm = Vec::new();
    if let Some(bytes) = read_optional(dir, &names::ipcns_shm(ipc_ns_id))? {
        let file = names::ipcns_shm(ipc_ns_id);
        let mut r = ImageReader::new(&file, &bytes, ImageKind::Normal, magic::IPCNS_SHM)?;
        for e in r.all::<pb::IpcShmEntry>()? {
            let pm_file = names::pagemap_shmem(e.desc.id as u64);
            let (pm, pages) = pagemap(dir, &pm_file)?;
            check_object_pages(&pm_file, &pm, e.size)?;
            sysv_shm.push((e, pm, pages));
        }
    }
    let sysv_msg = match read_optional(dir, &names::ipcns_msg(ipc_ns_id))? {
        Some(b) => crate::ipc::sysv::read_msg(&names::ipcns_msg(ipc_ns_id), &b)?,
        None => Vec::new(),
    };
    let posix_mqueues = match read_optional(dir, names::POSIX_MQUEUE)? {
        Some(b) => crate::ipc::sysv::read_msg(names::POSIX_MQUEUE, &b)?,
        None => Vec::new(),
    };
    let sysv_sem = match read_optional(dir, &names::ipcns_sem(ipc_ns_id))? {
        Some(b) => crate::ipc::sysv::read_sem(&names::ipcns_sem(ipc_ns_id), &b)?,
        None => Vec::new(),
    };
    img.ipc_vars = ipc_vars;
    img.uts = uts;
    img.net = match tree_ns_id(&img.tasks, inv, "network", |i| i.net_ns_id)? {
        // CRIU writes no netns image when the caller manages the namespace's contents
        // (runc's empty_ns): a new namespace with loopback alone, if the restore says so too.
        (Some(id), true) if !dir.join(names::netns(id)).exists() => {
            img.net_ns_id = id;
            img.net_unsaved = Some(names::netns(id));
            Some(crate::ns::net::Saved::Own(Default::default()))
        }
        (Some(id), true) => {
            img.net_ns_id = id;
            Some(crate::ns::net::load_saved(dir, id)?)
        }
        _ => None,
    };
    img.time = match tree_ns_id(&img.tasks, inv, "time", |i| i.time_ns_id)? {
        (Some(id), true) => Some(one::<pb::TimensEntry>(
            dir,
            &names::timens(id),
            ImageKind::Normal,
            magic::TIMENS,
        )?),
        _ => None,
    };
    img.cgroups = match read_optional(dir, names::CGROUP)? {
        Some(b) => {
            let mut r = ImageReader::new(names::CGROUP, &b, ImageKind::Normal, magic::CGROUP)?;
            let e = r.next_required::<pb::CgroupEntry>()?;
            for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
                if let Some(id) = t.cg_set() {
                    if !e.sets.iter().any(|s| s.id == id) {
                        return Err(invalid(
                            &names::core(t.pid()),
                            format!("cg_set {id} is not in cgroup.img"),
                        ));
                    }
                }
            }
            Some(e)
        }
        None => None,
    };
    img.userns = match tree_ns_id(&img.tasks, inv, "user", |i| i.user_ns_id)? {
        (Some(id), true) => Some(one::<pb::UsernsEntry>(
            dir,
            &names::userns(id),
            ImageKind::Normal,
            magic::USERNS,
        )?),
        _ => None,
    };
    img.own_cgroupns = tree_ns_id(&img.tasks, inv, "cgroup", |i| i.cgroup_ns_id)?.1;
    // pidns-<id>.img exists only for an external namespace (as CRIU writes it).
    img.pidns_ext_key = match tree_ns_id(&img.tasks, inv, "pid", |i| i.pid_ns_id)? {
        (Some(id), true) if dir.join(names::pidns(id)).exists() => {
            let e: pb::PidnsEntry = one(dir, &names::pidns(id), ImageKind::Normal, magic::PIDNS)?;
            e.ext_key
        }
        _ => None,
    };
    let (root_mnt, nested) = mount_namespaces(&img.tasks, inv)?;
    img.mounts = match root_mnt {
        Some(id) => {
            let file = names::mountpoints(id);
            let table = mount_table(dir, &file)?;
            // A table the restore could not make fails here, before anything is made.
            let plan = crate::ns::mnt::plan(&table).map_err(|e| invalid(&file, e.to_string()))?;
            let phases =
                crate::ns::mnt::phases(&plan).map_err(|e| invalid(&file, e.to_string()))?;
            img.late_mounts = crate::ns::mnt_nested::late_ids(&plan, &phases);
            for id in nested {
                let file = names::mountpoints(id);
                img.nested_mounts.push((id, mount_table(dir, &file)?));
            }
            if !img.nested_mounts.is_empty() {
                if img.userns.is_some() {
                    return Err(invalid(
                        &file,
                        "mount namespaces nested in a tree with a user namespace of its own \
                         are not supported yet",
                    ));
                }
                let plans = crate::ns::mnt_nested::plan_all(&table, &img.nested_mounts)
                    .map_err(|e| invalid(&file, e.to_string()))?;
                for p in plans {
                    img.late_mounts
                        .extend(crate::ns::mnt_nested::late_ids(&p.plan, &p.phases));
                }
            }
            Some(table)
        }
        None => None,
    };
    img.sysv_shm = sysv_shm;
    img.sysv_msg = sysv_msg;
    img.posix_mqueues = posix_mqueues;
    img.sysv_sem = sysv_sem;
    Ok(())
}

/// The ptys' states and the bytes buffered in them, and file locks.
fn load_ttys_and_locks(dir: &Path, img: &mut DumpImage) -> Result<(), LoadError> {
    let mut tty_infos = HashMap::new();
    if let Some(bytes) = read_optional(dir, names::TTY_INFO)? {
        let mut r = ImageReader::new(names::TTY_INFO, &bytes, ImageKind::Normal, magic::TTY_INFO)?;
        for i in r.all::<pb::TtyInfoEntry>()? {
            tty_infos.insert(i.id, i);
        }
    }
    // Bytes buffered in ptys, keyed by the tty_info of the end they wait on.
    let mut tty_data: HashMap<u32, Vec<u8>> = HashMap::new();
    if let Some(bytes) = read_optional(dir, names::TTY_DATA)? {
        let mut r = ImageReader::new(names::TTY_DATA, &bytes, ImageKind::Normal, magic::TTY_DATA)?;
        for d in r.all::<pb::TtyDataEntry>()? {
            if !tty_infos.contains_key(&d.tty_id) {
                return Err(invalid(
                    names::TTY_DATA,
                    format!("data for tty {} that tty-info.img lacks", d.tty_id),
                ));
            }
            tty_data
                .entry(d.tty_id)
                .or_default()
                .extend_from_slice(&d.data);
        }
    }
    for f in img.files.values() {
        if let Some(t) = &f.tty {
            if !tty_infos.contains_key(&t.tty_info_id) {
                return Err(invalid(
                    names::TTY_INFO,
                    format!("tty file {} has no tty_info {}", f.id, t.tty_info_id),
                ));
            }
        }
    }
    let locks = match read_optional(dir, names::FILE_LOCKS)? {
        Some(bytes) => ImageReader::new(
            names::FILE_LOCKS,
            &bytes,
            ImageKind::Normal,
            magic::FILE_LOCKS,
        )?
        .all()?,
        None => Vec::new(),
    };
    img.tty_infos = tty_infos;
    img.tty_data = tty_data;
    img.locks = locks;
    Ok(())
}

/// Messages queued on unix sockets with the files in flight on them, and memfd inodes.
fn load_queues_and_memfds(dir: &Path, img: &mut DumpImage) -> Result<(), LoadError> {
    let mut sk_queues: HashMap<u32, Vec<crate::net::unix::Queued>> = HashMap::new();
    let mut in_flight: Vec<u32> = Vec::new();
    if let Some(bytes) = read_optional(dir, names::SK_QUEUES)? {
        let mut r = ImageReader::new(
            names::SK_QUEUES,
            &bytes,
            ImageKind::Normal,
            magic::SK_QUEUES,
        )?;
        while let Some(e) = r.next::<pb::SkPacketEntry>()? {
            let data = r.raw(e.length as u64)?.to_vec();
            let rights: Vec<u32> = e
                .scm
                .iter()
                .filter(|c| c.r#type == libc::SCM_RIGHTS as u32)
                .flat_map(|c| c.rights.iter().copied())
                .collect();
            for id in &rights {
                if !img.files.contains_key(id) {
                    return Err(invalid(
                        names::SK_QUEUES,
                        format!(
                            "a message for socket {} carries file id {id}, which files.img lacks",
                            e.id_for
                        ),
                    ));
                }
                if !in_flight.contains(id) {
                    in_flight.push(*id);
                }
            }
            sk_queues
                .entry(e.id_for)
                .or_default()
                .push(crate::net::unix::Queued {
                    data,
                    files: rights,
                });
        }
    }
    let mut memfds = HashMap::new();
    if let Some(bytes) = read_optional(dir, names::MEMFD_INODE)? {
        let mut r = ImageReader::new(
            names::MEMFD_INODE,
            &bytes,
            ImageKind::Normal,
            magic::MEMFD_INODE,
        )?;
        for m in r.all::<pb::MemfdInodeEntry>()? {
            let pm_file = names::pagemap_shmem(m.shmid as u64);
            let (pm, pages) = pagemap(dir, &pm_file)?;
            check_object_pages(&pm_file, &pm, m.size)?;
            memfds.insert(m.inode_id, (m, pm, pages));
        }
    }
    for f in img.files.values() {
        if let Some(m) = &f.memfd {
            if !memfds.contains_key(&(m.inode_id as u64)) {
                return Err(invalid(
                    names::FILES,
                    format!("memfd file {} has no inode in memfd.img", f.id),
                ));
            }
        }
    }
    img.in_flight = in_flight_order(in_flight, &img.files, &sk_queues);
    img.sk_queues = sk_queues;
    img.memfds = memfds;
    Ok(())
}

/// seccomp.img, and every thread's filter chain checked against it.
fn load_seccomp(dir: &Path, img: &mut DumpImage) -> Result<(), LoadError> {
    let seccomp: Vec<pb::SeccompFilter> = match read_optional(dir, names::SECCOMP)? {
        Some(bytes) => {
            let mut r =
                ImageReader::new(names::SECCOMP, &bytes, ImageKind::Normal, magic::SECCOMP)?;
            r.all::<pb::SeccompEntry>()?
                .into_iter()
                .flat_map(|e| e.seccomp_filters)
                .collect()
        }
        None => Vec::new(),
    };
    for t in &img.tasks {
        for th in &t.threads {
            let Some(tc) = th.core.thread_core.as_ref() else {
                continue;
            };
            match tc.seccomp_mode.unwrap_or(0) as u32 {
                0 | crate::task::seccomp::MODE_STRICT => {}
                crate::task::seccomp::MODE_FILTER => {
                    let last = tc.seccomp_filter.ok_or_else(|| {
                        invalid(&names::core(th.tid), "seccomp filter mode without a filter")
                    })?;
                    crate::task::seccomp::chain(&seccomp, last)
                        .map_err(|e| invalid(names::SECCOMP, e.to_string()))?;
                }
                m => {
                    return Err(invalid(
                        &names::core(th.tid),
                        format!("seccomp mode {m} is not supported"),
                    ))
                }
            }
        }
    }
    img.seccomp = seccomp;
    Ok(())
}

/// Files in flight, each after those its making needs: a unix socket in flight whose peer is
/// a socket of the tree is made as a pair with it, which fills the peer's queue, so the files
/// in flight on that queue come first. Anything circular keeps its order (and fails cleanly
/// when its queue is filled).
fn in_flight_order(
    mut pending: Vec<u32>,
    files: &HashMap<u32, pb::FileEntry>,
    sk_queues: &HashMap<u32, Vec<crate::net::unix::Queued>>,
) -> Vec<u32> {
    let needs = |id: u32| -> Vec<u32> {
        let Some(peer) = files.get(&id).and_then(|f| f.usk.as_ref()).map(|u| u.peer) else {
            return Vec::new();
        };
        let peer_id = files
            .values()
            .find(|f| peer != 0 && f.usk.as_ref().is_some_and(|u| u.ino == peer))
            .map(|f| f.id);
        peer_id
            .and_then(|p| sk_queues.get(&p))
            .map(|q| q.iter().flat_map(|m| m.files.iter().copied()).collect())
            .unwrap_or_default()
    };
    let mut out: Vec<u32> = Vec::new();
    while !pending.is_empty() {
        let before = pending.len();
        let mut i = 0;
        while i < pending.len() {
            let id = pending[i];
            if needs(id)
                .iter()
                .all(|n| *n == id || out.contains(n) || !pending.contains(n))
            {
                out.push(id);
                pending.remove(i);
            } else {
                i += 1;
            }
        }
        if pending.len() == before {
            out.append(&mut pending);
        }
    }
    out
}

/// The root's namespace id of one kind (`get` picks it from the ids), and whether the tree
/// owned that namespace (its id differs from the dumper's in `root_ids`). Every live process
/// must share the root's.
/// The root's mount namespace id when the tree owned it, and the ids of the namespaces
/// nested in it (other tasks' namespaces, in tree order); tasks in other namespaces than the
/// root's when it owned none are refused.
fn mount_namespaces(
    tasks: &[TaskImage],
    inv: &pb::InventoryEntry,
) -> Result<(Option<u32>, Vec<u32>), LoadError> {
    let of = |t: &TaskImage| t.threads[0].core.ids.as_ref().and_then(|i| i.mnt_ns_id);
    let root = of(&tasks[0]);
    let host = inv.root_ids.as_ref().and_then(|i| i.mnt_ns_id);
    let owned = matches!((root, host), (Some(a), Some(b)) if a != b);
    let mut nested = Vec::new();
    for t in tasks.iter().filter(|t| t.zombie_exit.is_none()) {
        let id = of(t);
        if id == root {
            continue;
        }
        match id {
            Some(id) if owned && Some(id) != host => {
                if !nested.contains(&id) {
                    nested.push(id);
                }
            }
            _ => {
                return Err(invalid(
                    &names::core(t.pid()),
                    "the process is in another mount namespace than the root",
                ))
            }
        }
    }
    Ok((root.filter(|_| owned), nested))
}

fn mount_table(dir: &Path, file: &str) -> Result<Vec<crate::ns::mnt::MountInfo>, LoadError> {
    let bytes = read(dir, file)?;
    let mut r = ImageReader::new(file, &bytes, ImageKind::Normal, magic::MNTS)?;
    Ok(r.all::<pb::MntEntry>()?
        .iter()
        .map(crate::ns::mnt::from_entry)
        .collect())
}

fn tree_ns_id(
    tasks: &[TaskImage],
    inv: &pb::InventoryEntry,
    kind: &str,
    get: fn(&pb::TaskKobjIdsEntry) -> Option<u32>,
) -> Result<(Option<u32>, bool), LoadError> {
    let of = |t: &TaskImage| t.threads[0].core.ids.as_ref().and_then(get);
    let root = of(&tasks[0]);
    if let Some(t) = tasks
        .iter()
        .find(|t| t.zombie_exit.is_none() && of(t) != root)
    {
        return Err(invalid(
            &names::core(t.pid()),
            format!("the process is in another {kind} namespace than the root"),
        ));
    }
    let host = inv.root_ids.as_ref().and_then(get);
    Ok((root, matches!((root, host), (Some(a), Some(b)) if a != b)))
}

#[cfg(test)]
mod tests;
