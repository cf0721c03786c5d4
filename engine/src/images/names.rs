//! Image file names, exactly as CRIU names them (`criu/image-desc.c`).
//!
//! Per-task images take the task's pid (or tid for `core-*`) in the dump's
//! pid namespace; per-object images take the object id (`%u` decimal, except
//! `ghost-file-%x` and `tcp-stream-%x`, which are hexadecimal).

// Global (one per dump) images.
pub const INVENTORY: &str = "inventory.img";
pub const PSTREE: &str = "pstree.img";
/// All file descriptions (`file_entry`) of the dump. Modern CRIU keeps regular
/// files, pipes, sockets, ... in here rather than in per-type images.
pub const FILES: &str = "files.img";
/// stasis's own: POSIX message queues, in the format of `ipcns-msg` (see `mqueue`).
pub const POSIX_MQUEUE: &str = "posix-mqueue.img";
/// Legacy per-type image for regular files (CRIU now uses [`FILES`]).
pub const REG_FILES: &str = "reg-files.img";
pub const EXT_FILES: &str = "ext-files.img";
pub const NS_FILES: &str = "ns-files.img";
pub const EVENTFD_FILE: &str = "eventfd.img";
pub const EVENTPOLL_FILE: &str = "eventpoll.img";
pub const EVENTPOLL_TFD: &str = "eventpoll-tfd.img";
pub const SIGNALFD: &str = "signalfd.img";
pub const INOTIFY_FILE: &str = "inotify.img";
pub const INOTIFY_WD: &str = "inotify-wd.img";
pub const FANOTIFY_FILE: &str = "fanotify.img";
pub const FANOTIFY_MARK: &str = "fanotify-mark.img";
pub const PIPES: &str = "pipes.img";
pub const PIPES_DATA: &str = "pipes-data.img";
pub const FIFO: &str = "fifo.img";
pub const FIFO_DATA: &str = "fifo-data.img";
pub const UNIXSK: &str = "unixsk.img";
pub const INETSK: &str = "inetsk.img";
pub const PACKETSK: &str = "packetsk.img";
pub const NETLINK_SK: &str = "netlinksk.img";
pub const SK_QUEUES: &str = "sk-queues.img";
pub const REMAP_FPATH: &str = "remap-fpath.img";
pub const MEMFD_INODE: &str = "memfd.img";
pub const BINFMT_MISC: &str = "binfmt-misc.img";
pub const TTY_FILES: &str = "tty.img";
pub const TTY_INFO: &str = "tty-info.img";
pub const TTY_DATA: &str = "tty-data.img";
pub const FILE_LOCKS: &str = "filelocks.img";
pub const TUNFILE: &str = "tunfile.img";
pub const CGROUP: &str = "cgroup.img";
pub const TIMERFD: &str = "timerfd.img";
pub const CPUINFO: &str = "cpuinfo.img";
pub const SECCOMP: &str = "seccomp.img";
pub const BPFMAP_FILE: &str = "bpfmap-file.img";
pub const BPFMAP_DATA: &str = "bpfmap-data.img";
pub const APPARMOR: &str = "apparmor.img";
pub const PIDFD: &str = "pidfd.img";

// Service files: no ".img" suffix, IMG_SERVICE header.
pub const STATS_DUMP: &str = "stats-dump";
pub const STATS_RESTORE: &str = "stats-restore";
pub const IRMAP_CACHE: &str = "irmap-cache";

/// Same as [`PIPES_DATA`].
pub fn pipes_data() -> String {
    PIPES_DATA.to_string()
}

/// `stats-<what>`; CRIU uses `what` = "dump" or "restore".
pub fn stats(what: &str) -> String {
    format!("stats-{what}")
}

// Per task / per thread.

/// `core-<tid>.img`, one per thread.
pub fn core(tid: u32) -> String {
    format!("core-{tid}.img")
}
pub fn ids(pid: u32) -> String {
    format!("ids-{pid}.img")
}
pub fn mm(pid: u32) -> String {
    format!("mm-{pid}.img")
}
/// Legacy per-task VMA image (VMAs now live in `mm-<pid>.img`).
pub fn vmas(pid: u32) -> String {
    format!("vmas-{pid}.img")
}
/// `pagemap-<id>.img`; CRIU uses the pid for private memory.
pub fn pagemap(id: u64) -> String {
    format!("pagemap-{id}.img")
}
/// `pagemap-shmem-<shmid>.img` for shared anonymous memory.
pub fn pagemap_shmem(shmid: u64) -> String {
    format!("pagemap-shmem-{shmid}.img")
}
/// `pages-<pages_id>.img` (raw page contents, no header); `pages_id` comes
/// from the `pagemap_head` entry of the matching pagemap image.
pub fn pages(id: u32) -> String {
    format!("pages-{id}.img")
}
/// `fdinfo-<files_id>.img`; `files_id` is `task_kobj_ids_entry.files_id`.
pub fn fdinfo(files_id: u32) -> String {
    format!("fdinfo-{files_id}.img")
}
pub fn fs(pid: u32) -> String {
    format!("fs-{pid}.img")
}
pub fn creds(pid: u32) -> String {
    format!("creds-{pid}.img")
}
pub fn sigacts(pid: u32) -> String {
    format!("sigacts-{pid}.img")
}
pub fn itimers(pid: u32) -> String {
    format!("itimers-{pid}.img")
}
pub fn posix_timers(pid: u32) -> String {
    format!("posix-timers-{pid}.img")
}
pub fn rlimit(pid: u32) -> String {
    format!("rlimit-{pid}.img")
}
/// Shared (process-wide) pending signals.
pub fn signal_s(pid: u32) -> String {
    format!("signal-s-{pid}.img")
}
/// Private (per-thread) pending signals.
pub fn signal_p(tid: u32) -> String {
    format!("signal-p-{tid}.img")
}

// Per object.

/// `ghost-file-<id>.img`, id in hexadecimal.
pub fn ghost_file(id: u32) -> String {
    format!("ghost-file-{id:x}.img")
}
/// `tcp-stream-<inode>.img`, inode in hexadecimal.
pub fn tcp_stream(ino: u32) -> String {
    format!("tcp-stream-{ino:x}.img")
}

// Per namespace (argument: the namespace id from `task_kobj_ids_entry`).

pub fn utsns(id: u32) -> String {
    format!("utsns-{id}.img")
}
pub fn ipcns_var(id: u32) -> String {
    format!("ipcns-var-{id}.img")
}
pub fn ipcns_shm(id: u32) -> String {
    format!("ipcns-shm-{id}.img")
}
pub fn ipcns_msg(id: u32) -> String {
    format!("ipcns-msg-{id}.img")
}
pub fn ipcns_sem(id: u32) -> String {
    format!("ipcns-sem-{id}.img")
}
pub fn mountpoints(id: u32) -> String {
    format!("mountpoints-{id}.img")
}
pub fn netdev(id: u32) -> String {
    format!("netdev-{id}.img")
}
pub fn netns(id: u32) -> String {
    format!("netns-{id}.img")
}
/// The nftables ruleset of network namespace `id`, as nf_tables netlink objects (stasis's own
/// file: CRIU saves `nft list ruleset` text in `nftables-<id>.img`, which it alone reads).
pub fn nft_netlink(id: u32) -> String {
    format!("nft-netlink-{id}.img")
}
/// The iptables-legacy tables (x_tables) of network namespace `id`, as the kernel hands them
/// out (stasis's own file: CRIU saves `iptables-save` text in `iptables-<id>.img`).
pub fn xtables(id: u32) -> String {
    format!("xtables-{id}.img")
}
pub fn ifaddr(id: u32) -> String {
    format!("ifaddr-{id}.img")
}
pub fn route(id: u32) -> String {
    format!("route-{id}.img")
}
pub fn route6(id: u32) -> String {
    format!("route6-{id}.img")
}
pub fn rule(id: u32) -> String {
    format!("rule-{id}.img")
}
/// The permanent neighbour entries of network namespace `id`, as `RTM_NEWNEIGH` messages
/// behind a magic of ours (stasis's own file: CRIU keeps none).
pub fn neigh(id: u32) -> String {
    format!("neigh-{id}.img")
}
pub fn iptables(id: u32) -> String {
    format!("iptables-{id}.img")
}
pub fn ip6tables(id: u32) -> String {
    format!("ip6tables-{id}.img")
}
pub fn nftables(id: u32) -> String {
    format!("nftables-{id}.img")
}
pub fn netns_ct(id: u32) -> String {
    format!("netns-ct-{id}.img")
}
pub fn netns_exp(id: u32) -> String {
    format!("netns-exp-{id}.img")
}
pub fn userns(id: u32) -> String {
    format!("userns-{id}.img")
}
pub fn timens(id: u32) -> String {
    format!("timens-{id}.img")
}
pub fn pidns(id: u32) -> String {
    format!("pidns-{id}.img")
}
/// `tmpfs-<mnt_id>.tar.gz.img` (CRIU appends `.img` to every name template).
pub fn tmpfs_img(mnt_id: u32) -> String {
    format!("tmpfs-{mnt_id}.tar.gz.img")
}
pub fn tmpfs_dev(dev: u32) -> String {
    format!("tmpfs-dev-{dev}.tar.gz.img")
}
pub fn autofs(id: u32) -> String {
    format!("autofs-{id}.img")
}
/// Legacy per-namespace binfmt_misc image (now [`BINFMT_MISC`]).
pub fn binfmt_misc_old(id: u32) -> String {
    format!("binfmt-misc-{id}.img")
}
