//! What each mutant is fed to: the image reader as every message type, the engine's own
//! image decoders, and (for a share of them) the loader on a whole dump directory.

use std::path::{Path, PathBuf};

use prost::Message;
use stasis::images::{magic, pb, ImageKind, ImageReader};

use super::corpus::{Corpus, Image};
use super::mutate::Rng;

/// Reads entries of one message type from a reader, the ways the engine does.
pub type Drain = fn(&mut ImageReader<'_>, &mut Rng);

/// Entries as `M`, by `next`, `next_required` or `all`, with raw payloads taken between
/// them now and then; errors are formatted (their messages must not panic either).
fn drain<M: Message + Default>(r: &mut ImageReader<'_>, rng: &mut Rng) {
    let shown = |e: stasis::images::ImageError| std::hint::black_box(e.to_string());
    match rng.below(4) {
        0 => {
            if let Err(e) = r.all::<M>() {
                shown(e);
            }
        }
        1 => {
            if let Err(e) = r.next_required::<M>() {
                shown(e);
            }
        }
        _ => {
            for _ in 0..10_000 {
                match r.next::<M>() {
                    Ok(Some(m)) => {
                        std::hint::black_box(m.encoded_len());
                        if rng.one_in(4) {
                            let _ = r.raw(rng.below(64) as u64);
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        shown(e);
                        break;
                    }
                }
            }
        }
    }
    std::hint::black_box((r.offset(), r.remaining(), r.is_eof()));
}

macro_rules! every_type {
    ($($t:ident),* $(,)?) => {
        /// Every message type of the schema, with its drain.
        pub const ALL_TYPES: &[(&str, Drain)] = &[$((stringify!($t), drain::<pb::$t>)),*];
    };
}

every_type!(
    AaPolicy,
    AaNamespace,
    ApparmorEntry,
    AutofsEntry,
    BinfmtMiscEntry,
    BpfmapDataEntry,
    FownEntry,
    BpfmapFileEntry,
    CgroupPerms,
    CgroupPropEntry,
    CgroupDirEntry,
    CgControllerEntry,
    CgMemberEntry,
    CgSetEntry,
    CgroupEntry,
    UserAarch64RegsEntry,
    UserAarch64FpsimdContextEntry,
    PacAddressKeys,
    PacGenericKeys,
    PacKeys,
    ThreadInfoAarch64,
    UserArmRegsEntry,
    UserArmVfpstateEntry,
    ThreadInfoArm,
    UserLoongarch64GpregsEntry,
    UserLoongarch64FpregsEntry,
    ThreadInfoLoongarch64,
    UserMipsRegsEntry,
    UserMipsFpregsEntry,
    ThreadInfoMips,
    UserPpc64RegsEntry,
    UserPpc64FpstateEntry,
    UserPpc64VrstateEntry,
    UserPpc64VsxstateEntry,
    UserPpc64TmRegsEntry,
    ThreadInfoPpc64,
    UserRiscv64RegsEntry,
    UserRiscv64DExtEntry,
    ThreadInfoRiscv64,
    UserS390RegsEntry,
    UserS390VxrsLowEntry,
    UserS390VxrsHighEntry,
    UserS390FpregsEntry,
    UserS390GsCbEntry,
    UserS390RiEntry,
    ThreadInfoS390,
    UserX86RegsEntry,
    UserX86CetEntry,
    UserX86XsaveEntry,
    UserX86FpregsEntry,
    UserDescT,
    ThreadInfoX86,
    RlimitEntry,
    ItimerEntry,
    PosixTimerEntry,
    TaskTimersEntry,
    CredsEntry,
    SaEntry,
    SiginfoEntry,
    SignalQueueEntry,
    RseqEntry,
    TaskCoreEntry,
    TaskKobjIdsEntry,
    ThreadSasEntry,
    ThreadCoreEntry,
    TaskRlimitsEntry,
    CoreEntry,
    CpuinfoX86Entry,
    CpuinfoPpc64Entry,
    CpuinfoS390Entry,
    CpuinfoEntry,
    EventfdFileEntry,
    EventpollTfdEntry,
    EventpollFileEntry,
    ExtFileEntry,
    RegFileEntry,
    SkOptsEntry,
    TcpOptsEntry,
    TcpStreamEntry,
    IpOptsRawEntry,
    IpOptsEntry,
    InetSkEntry,
    NsFileEntry,
    PacketMclist,
    PacketRing,
    PacketSockEntry,
    NetlinkSkEntry,
    SignalfdEntry,
    TunfileEntry,
    TunLinkEntry,
    TimerfdEntry,
    FhEntry,
    IrmapCacheEntry,
    InotifyWdEntry,
    InotifyFileEntry,
    FanotifyInodeMarkEntry,
    FanotifyMountMarkEntry,
    FanotifyMarkEntry,
    FanotifyFileEntry,
    FilePermsEntry,
    UnixSkEntry,
    FifoEntry,
    PipeEntry,
    PidfdEntry,
    WinsizeEntry,
    TermiosEntry,
    TtyPtyEntry,
    TtyDataEntry,
    TtyInfoEntry,
    TtyFileEntry,
    MemfdFileEntry,
    MemfdInodeEntry,
    FdinfoEntry,
    FileEntry,
    FileLockEntry,
    FsEntry,
    Timeval,
    GhostFileEntry,
    GhostChunkEntry,
    ImgStreamerRequestEntry,
    ImgStreamerReplyEntry,
    PluginsEntry,
    InventoryEntry,
    IpcDescEntry,
    IpcMsg,
    IpcMsgEntry,
    IpcSemEntry,
    IpcShmEntry,
    IpcVarEntry,
    MacvlanLinkEntry,
    VmaEntry,
    AioRingEntry,
    MmEntry,
    MntEntry,
    SysctlEntry,
    SitEntry,
    NetDeviceEntry,
    NetnsId,
    NetnsEntry,
    PagemapHead,
    PagemapEntry,
    PidnsEntry,
    PipeDataEntry,
    PstreeEntry,
    RemapFilePathEntry,
    CriuPageServerInfo,
    CriuVethPair,
    ExtMountMap,
    JoinNamespace,
    InheritFd,
    CgroupRoot,
    UnixSk,
    CriuOpts,
    CriuDumpResp,
    CriuRestoreResp,
    CriuNotify,
    CriuFeatures,
    CriuReq,
    CriuResp,
    CriuVersion,
    SeccompFilter,
    SeccompEntry,
    ScmEntry,
    SkPacketEntry,
    DumpStatsEntry,
    RestoreStatsEntry,
    StatsEntry,
    Timespec,
    TimensEntry,
    UidGidExtent,
    UsernsEntry,
    UtsnsEntry
);

/// The message type the engine reads an image of type magic `m` as (None: read with a
/// payload, see [`loader_decode`], or not read by the engine).
fn type_of(m: u32) -> Option<Drain> {
    Some(match m {
        magic::INVENTORY => drain::<pb::InventoryEntry>,
        magic::PSTREE => drain::<pb::PstreeEntry>,
        magic::CORE => drain::<pb::CoreEntry>,
        magic::MM => drain::<pb::MmEntry>,
        magic::FDINFO => drain::<pb::FdinfoEntry>,
        magic::FS => drain::<pb::FsEntry>,
        magic::FILES => drain::<pb::FileEntry>,
        magic::SECCOMP => drain::<pb::SeccompEntry>,
        magic::TTY_INFO => drain::<pb::TtyInfoEntry>,
        magic::TTY_DATA => drain::<pb::TtyDataEntry>,
        magic::FILE_LOCKS => drain::<pb::FileLockEntry>,
        magic::MEMFD_INODE => drain::<pb::MemfdInodeEntry>,
        magic::IPCNS_SHM => drain::<pb::IpcShmEntry>,
        magic::IPC_VAR => drain::<pb::IpcVarEntry>,
        magic::UTSNS => drain::<pb::UtsnsEntry>,
        magic::REMAP_FPATH => drain::<pb::RemapFilePathEntry>,
        magic::STATS => drain::<pb::StatsEntry>,
        magic::IDS => drain::<pb::TaskKobjIdsEntry>,
        magic::CREDS => drain::<pb::CredsEntry>,
        _ => return None,
    })
}

/// Entries of `M`, each followed by the raw payload `payload` says it has.
fn with_payload<M: Message + Default>(
    r: &mut ImageReader<'_>,
    payload: impl Fn(&M) -> Vec<u64>,
) -> Result<(), stasis::images::ImageError> {
    for _ in 0..10_000 {
        let Some(e) = r.next::<M>()? else { break };
        for len in payload(&e) {
            std::hint::black_box(r.raw(len)?.to_vec());
        }
    }
    Ok(())
}

/// The image as the engine reads an image of its type: header checked, entries decoded,
/// payloads taken (pagemap head and entries, pipe and queue data, ghost contents, SysV
/// queues and semaphores).
pub fn loader_decode(file: &str, bytes: &[u8], kind: ImageKind, m: u32, rng: &mut Rng) {
    let result = (|| -> Result<(), stasis::images::ImageError> {
        match m {
            magic::IPCNS_MSG => return stasis::ipc::sysv::read_msg(file, bytes).map(|_| ()),
            magic::IPCNS_SEM => return stasis::ipc::sysv::read_sem(file, bytes).map(|_| ()),
            _ => {}
        }
        let mut r = ImageReader::new(file, bytes, kind, m)?;
        match m {
            magic::PAGEMAP => {
                r.next_required::<pb::PagemapHead>()?;
                for e in r.all::<pb::PagemapEntry>()? {
                    std::hint::black_box(stasis::restore::load::nr_pages(&e));
                }
            }
            magic::PIPES_DATA | magic::FIFO_DATA => {
                with_payload(&mut r, |e: &pb::PipeDataEntry| vec![e.bytes.into()])?
            }
            magic::SK_QUEUES => {
                with_payload(&mut r, |e: &pb::SkPacketEntry| vec![e.length.into()])?
            }
            magic::TCP_STREAM => with_payload(&mut r, |e: &pb::TcpStreamEntry| {
                vec![e.inq_len.into(), e.outq_len.into()]
            })?,
            magic::GHOST_FILE => {
                with_payload(&mut r, |e: &pb::GhostFileEntry| vec![e.size.unwrap_or(0)])?
            }
            m => match type_of(m) {
                Some(d) => d(&mut r, rng),
                None => ALL_TYPES[rng.below(ALL_TYPES.len())].1(&mut r, rng),
            },
        }
        Ok(())
    })();
    if let Err(e) = result {
        std::hint::black_box(e.to_string());
    }
}

/// Type magics the engine has its own reading for (see [`loader_decode`]).
const LOADER_MAGICS: &[u32] = &[
    magic::PAGEMAP,
    magic::PIPES_DATA,
    magic::FIFO_DATA,
    magic::SK_QUEUES,
    magic::TCP_STREAM,
    magic::GHOST_FILE,
    magic::IPCNS_MSG,
    magic::IPCNS_SEM,
    magic::PSTREE,
    magic::CORE,
    magic::MM,
    magic::FILES,
    magic::SECCOMP,
];

const KINDS: [ImageKind; 3] = [ImageKind::Normal, ImageKind::Inventory, ImageKind::Service];

/// Everything in memory one mutant of `img` goes through: the reading of its own type, the
/// headers of every kind and of a random type, its entries as another type the engine reads
/// with payloads (by giving it that type's header), and its body as three random message
/// types.
pub fn decode_mutant(img: &Image, bytes: &[u8], rng: &mut Rng) {
    let file = img.name.as_str();
    loader_decode(file, bytes, img.kind, img.magic, rng);
    for kind in KINDS {
        let _ = ImageReader::new(file, bytes, kind, img.magic);
    }
    let (_, m) = magic::ALL[rng.below(magic::ALL.len())];
    if let Ok(mut r) = ImageReader::new(file, bytes, KINDS[rng.below(3)], m) {
        ALL_TYPES[rng.below(ALL_TYPES.len())].1(&mut r, rng);
    }
    let body = bytes.get(img.header..).unwrap_or(&[]);
    // The nftables ruleset decoder, behind its own magic.
    let _ = stasis_netns::nftables::from_image(bytes);
    let mut nft = b"STNFT01\n".to_vec();
    nft.extend_from_slice(body);
    let _ = stasis_netns::nftables::from_image(&nft);
    // The iptables-legacy decoder likewise.
    let _ = stasis_netns::xtables::from_image(bytes);
    let mut xt = b"STXTBL01".to_vec();
    xt.extend_from_slice(body);
    let _ = stasis_netns::xtables::from_image(&xt);
    let other = LOADER_MAGICS[rng.below(LOADER_MAGICS.len())];
    let mut reheaded = Vec::with_capacity(8 + body.len());
    reheaded.extend_from_slice(&magic::IMG_COMMON.to_le_bytes());
    reheaded.extend_from_slice(&other.to_le_bytes());
    reheaded.extend_from_slice(body);
    loader_decode(file, &reheaded, ImageKind::Normal, other, rng);
    for _ in 0..3 {
        if let Ok(mut r) = ImageReader::new(file, body, ImageKind::Normal, magic::RAW_IMAGE) {
            ALL_TYPES[rng.below(ALL_TYPES.len())].1(&mut r, rng);
        }
    }
}

/// The corpus's dumps as directories (in /dev/shm when there is one), for the loader.
pub struct LoadBed {
    root: PathBuf,
    pub dirs: Vec<PathBuf>,
}

impl LoadBed {
    pub fn new(corpus: &Corpus, scratch: &Path) -> std::io::Result<LoadBed> {
        let root = scratch.join(format!("stasis-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        let dirs = corpus.materialize(&root)?;
        Ok(LoadBed { root, dirs })
    }

    /// `load` of dump `d` with image `i` replaced by `mutant` (None: the image removed), then
    /// the image put back; what the loader made of it (see [`load_outcome`]). Only a panic or
    /// an allocation over the budget is a finding.
    pub fn load_with(
        &self,
        corpus: &Corpus,
        d: usize,
        i: usize,
        mutant: Option<&[u8]>,
    ) -> std::io::Result<String> {
        let img = &corpus.dumps[d].images[i];
        let path = self.dirs[d].join(&img.name);
        match mutant {
            Some(bytes) => std::fs::write(&path, bytes)?,
            None => std::fs::remove_file(&path)?,
        }
        let out = std::panic::catch_unwind(|| load_outcome(&self.dirs[d]));
        std::fs::write(&path, &img.bytes)?;
        match out {
            Ok(outcome) => Ok(outcome),
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

/// `load(dir)`: "loaded", or the kind of error and the image it names (numbers as N), its
/// message formatted on the way.
pub fn load_outcome(dir: &Path) -> String {
    use stasis::images::ImageError as I;
    use stasis::restore::load::LoadError as L;
    // Ids in names as N: "core-1234.img" -> "core-N.img", "tcp-stream-3fa.img" too.
    let norm = |f: &str| {
        f.split_inclusive(['-', '.'])
            .map(|part| {
                let id = part.trim_end_matches(['-', '.']);
                if !id.is_empty()
                    && id.chars().all(|c| c.is_ascii_hexdigit())
                    && id.chars().any(|c| c.is_ascii_digit())
                {
                    part.replacen(id, "N", 1)
                } else {
                    part.to_string()
                }
            })
            .collect::<String>()
    };
    match stasis::restore::load::load(dir) {
        Ok(img) => {
            std::hint::black_box(img.tasks.len());
            "loaded".into()
        }
        Err(e) => {
            std::hint::black_box(e.to_string());
            match &e {
                L::Missing { file, .. } => format!("missing {}", norm(file)),
                L::Read { .. } => "unreadable".into(),
                L::Invalid { file, .. } => format!("invalid {}", norm(file)),
                L::NetNs(_) => "bad network namespace images".into(),
                L::Image(i) => {
                    let kind = match i {
                        I::BadMagic { .. } => "bad magic",
                        I::Truncated { .. } => "truncated",
                        I::Decode { .. } => "undecodable",
                        I::TooLarge { .. } => "entry too large",
                        I::TooMany { .. } => "too many entries",
                        I::Missing { .. } => "missing",
                        I::Empty { .. } => "empty",
                    };
                    format!("{kind} {}", norm(i.file()))
                }
            }
        }
    }
}

impl Drop for LoadBed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.root);
    }
}
