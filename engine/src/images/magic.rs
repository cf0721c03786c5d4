//! Image magic numbers, as in CRIU's `criu/include/magic.h` (names without
//! the `_MAGIC` suffix).
//!
//! Every image except `inventory.img` starts with [`IMG_COMMON`] (or
//! [`IMG_SERVICE`] for `stats-*` and `irmap-cache`) followed by the type magic.
//! Images whose type magic is [`RAW_IMAGE`] (pages, ip/nft dumps, tmpfs
//! tarballs) carry no header at all.

/// Raw images have no magic header at all.
pub const RAW_IMAGE: u32 = 0x0;
/// First word of every regular image (images v1.1).
pub const IMG_COMMON: u32 = 0x54564319;
/// First word of service files (`stats-*`, `irmap-cache`).
pub const IMG_SERVICE: u32 = 0x55105940;

/// The only image without the common magic in front.
pub const INVENTORY: u32 = 0x58313116;
pub const PSTREE: u32 = 0x50273030;
pub const FDINFO: u32 = 0x56213732;
pub const PAGEMAP: u32 = 0x56084025;
pub const SHMEM_PAGEMAP: u32 = PAGEMAP;
pub const PAGES: u32 = RAW_IMAGE;
pub const CORE: u32 = 0x55053847;
pub const IDS: u32 = 0x54432030;
pub const VMAS: u32 = 0x54123737;
pub const PIPES: u32 = 0x56513555;
pub const PIPES_DATA: u32 = 0x56453709;
pub const FIFO: u32 = 0x58364939;
pub const FIFO_DATA: u32 = 0x59333054;
pub const SIGACT: u32 = 0x55344201;
pub const UNIXSK: u32 = 0x54373943;
pub const INETSK: u32 = 0x56443851;
pub const PACKETSK: u32 = 0x60454618;
pub const ITIMERS: u32 = 0x57464056;
pub const POSIX_TIMERS: u32 = 0x52603957;
pub const SK_QUEUES: u32 = 0x56264026;
pub const UTSNS: u32 = 0x54473203;
pub const CREDS: u32 = 0x54023547;
pub const IPC_VAR: u32 = 0x53115007;
pub const IPCNS_SHM: u32 = 0x46283044;
pub const IPCNS_MSG: u32 = 0x55453737;
pub const IPCNS_SEM: u32 = 0x59573019;
pub const REG_FILES: u32 = 0x50363636;
pub const EXT_FILES: u32 = 0x59255641;
pub const FS: u32 = 0x51403912;
pub const MM: u32 = 0x57492820;
pub const REMAP_FPATH: u32 = 0x59133954;
pub const GHOST_FILE: u32 = 0x52583605;
pub const TCP_STREAM: u32 = 0x51465506;
pub const EVENTFD_FILE: u32 = 0x44523722;
pub const EVENTPOLL_FILE: u32 = 0x45023858;
pub const EVENTPOLL_TFD: u32 = 0x44433746;
pub const SIGNALFD: u32 = 0x57323820;
pub const INOTIFY_FILE: u32 = 0x48424431;
pub const INOTIFY_WD: u32 = 0x54562009;
pub const MNTS: u32 = 0x55563928;
pub const NETDEV: u32 = 0x57373951;
pub const NETNS: u32 = 0x55933752;
pub const TTY_FILES: u32 = 0x59433025;
pub const TTY_INFO: u32 = 0x59453036;
pub const TTY_DATA: u32 = 0x59413026;
pub const FILE_LOCKS: u32 = 0x54323616;
pub const RLIMIT: u32 = 0x57113925;
pub const FANOTIFY_FILE: u32 = 0x55096122;
pub const FANOTIFY_MARK: u32 = 0x56506035;
pub const SIGNAL: u32 = 0x59255647;
pub const PSIGNAL: u32 = SIGNAL;
pub const NETLINK_SK: u32 = 0x58005614;
pub const NS_FILES: u32 = 0x61394011;
pub const TUNFILE: u32 = 0x57143751;
pub const CGROUP: u32 = 0x59383330;
pub const TIMERFD: u32 = 0x50493712;
pub const CPUINFO: u32 = 0x61404013;
pub const USERNS: u32 = 0x55474906;
pub const SECCOMP: u32 = 0x64413049;
pub const BINFMT_MISC: u32 = 0x67343323;
pub const AUTOFS: u32 = 0x49353943;
pub const FILES: u32 = 0x56303138;
pub const MEMFD_INODE: u32 = 0x48453499;
pub const TIMENS: u32 = 0x43114433;
pub const PIDNS: u32 = 0x61157326;
pub const BPFMAP_FILE: u32 = 0x57506142;
pub const BPFMAP_DATA: u32 = 0x64324033;
pub const APPARMOR: u32 = 0x59423047;
pub const PIDFD: u32 = 0x54435556;

// Raw images (no header).
pub const IFADDR: u32 = RAW_IMAGE;
pub const ROUTE: u32 = RAW_IMAGE;
pub const ROUTE6: u32 = RAW_IMAGE;
pub const RULE: u32 = RAW_IMAGE;
pub const TMPFS_IMG: u32 = RAW_IMAGE;
pub const TMPFS_DEV: u32 = RAW_IMAGE;
pub const IPTABLES: u32 = RAW_IMAGE;
pub const IP6TABLES: u32 = RAW_IMAGE;
pub const NFTABLES: u32 = RAW_IMAGE;
pub const NETNF_CT: u32 = RAW_IMAGE;
pub const NETNF_EXP: u32 = RAW_IMAGE;

// Legacy aliases.
pub const PAGES_OLD: u32 = PAGEMAP;
pub const SHM_PAGES_OLD: u32 = PAGEMAP;
pub const BINFMT_MISC_OLD: u32 = BINFMT_MISC;

// Service files (preceded by IMG_SERVICE).
pub const STATS: u32 = 0x57093306;
pub const IRMAP_CACHE: u32 = 0x57004059;
/// Magic of CRIU's cached kernel-features file (not an image).
pub const KDAT: u32 = 0x57023458;

/// Every name/value pair above, in `magic.h` order (aliases included).
pub const ALL: &[(&str, u32)] = &[
    ("RAW_IMAGE", RAW_IMAGE),
    ("IMG_COMMON", IMG_COMMON),
    ("IMG_SERVICE", IMG_SERVICE),
    ("INVENTORY", INVENTORY),
    ("PSTREE", PSTREE),
    ("FDINFO", FDINFO),
    ("PAGEMAP", PAGEMAP),
    ("SHMEM_PAGEMAP", SHMEM_PAGEMAP),
    ("PAGES", PAGES),
    ("CORE", CORE),
    ("IDS", IDS),
    ("VMAS", VMAS),
    ("PIPES", PIPES),
    ("PIPES_DATA", PIPES_DATA),
    ("FIFO", FIFO),
    ("FIFO_DATA", FIFO_DATA),
    ("SIGACT", SIGACT),
    ("UNIXSK", UNIXSK),
    ("INETSK", INETSK),
    ("PACKETSK", PACKETSK),
    ("ITIMERS", ITIMERS),
    ("POSIX_TIMERS", POSIX_TIMERS),
    ("SK_QUEUES", SK_QUEUES),
    ("UTSNS", UTSNS),
    ("CREDS", CREDS),
    ("IPC_VAR", IPC_VAR),
    ("IPCNS_SHM", IPCNS_SHM),
    ("IPCNS_MSG", IPCNS_MSG),
    ("IPCNS_SEM", IPCNS_SEM),
    ("REG_FILES", REG_FILES),
    ("EXT_FILES", EXT_FILES),
    ("FS", FS),
    ("MM", MM),
    ("REMAP_FPATH", REMAP_FPATH),
    ("GHOST_FILE", GHOST_FILE),
    ("TCP_STREAM", TCP_STREAM),
    ("EVENTFD_FILE", EVENTFD_FILE),
    ("EVENTPOLL_FILE", EVENTPOLL_FILE),
    ("EVENTPOLL_TFD", EVENTPOLL_TFD),
    ("SIGNALFD", SIGNALFD),
    ("INOTIFY_FILE", INOTIFY_FILE),
    ("INOTIFY_WD", INOTIFY_WD),
    ("MNTS", MNTS),
    ("NETDEV", NETDEV),
    ("NETNS", NETNS),
    ("TTY_FILES", TTY_FILES),
    ("TTY_INFO", TTY_INFO),
    ("TTY_DATA", TTY_DATA),
    ("FILE_LOCKS", FILE_LOCKS),
    ("RLIMIT", RLIMIT),
    ("FANOTIFY_FILE", FANOTIFY_FILE),
    ("FANOTIFY_MARK", FANOTIFY_MARK),
    ("SIGNAL", SIGNAL),
    ("PSIGNAL", PSIGNAL),
    ("NETLINK_SK", NETLINK_SK),
    ("NS_FILES", NS_FILES),
    ("TUNFILE", TUNFILE),
    ("CGROUP", CGROUP),
    ("TIMERFD", TIMERFD),
    ("CPUINFO", CPUINFO),
    ("USERNS", USERNS),
    ("SECCOMP", SECCOMP),
    ("BINFMT_MISC", BINFMT_MISC),
    ("AUTOFS", AUTOFS),
    ("FILES", FILES),
    ("MEMFD_INODE", MEMFD_INODE),
    ("TIMENS", TIMENS),
    ("PIDNS", PIDNS),
    ("BPFMAP_FILE", BPFMAP_FILE),
    ("BPFMAP_DATA", BPFMAP_DATA),
    ("APPARMOR", APPARMOR),
    ("PIDFD", PIDFD),
    ("IFADDR", IFADDR),
    ("ROUTE", ROUTE),
    ("ROUTE6", ROUTE6),
    ("RULE", RULE),
    ("TMPFS_IMG", TMPFS_IMG),
    ("TMPFS_DEV", TMPFS_DEV),
    ("IPTABLES", IPTABLES),
    ("IP6TABLES", IP6TABLES),
    ("NFTABLES", NFTABLES),
    ("NETNF_CT", NETNF_CT),
    ("NETNF_EXP", NETNF_EXP),
    ("PAGES_OLD", PAGES_OLD),
    ("SHM_PAGES_OLD", SHM_PAGES_OLD),
    ("BINFMT_MISC_OLD", BINFMT_MISC_OLD),
    ("STATS", STATS),
    ("IRMAP_CACHE", IRMAP_CACHE),
    ("KDAT", KDAT),
];

/// CRIU's name for a magic value (the first name in [`ALL`] with that value;
/// `RAW_IMAGE` for 0). Header magics are included.
pub fn name(magic: u32) -> Option<&'static str> {
    ALL.iter().find(|(_, v)| *v == magic).map(|(n, _)| *n)
}
