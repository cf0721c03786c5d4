//! CRIU image format: protobuf schema, file framing, names and constants.
//!
//! An image file is
//!
//! ```text
//! IMAGE  ::= [IMG_COMMON | IMG_SERVICE] TYPE_MAGIC { ENTRY }
//! ENTRY  ::= LEN:u32le PAYLOAD[LEN] [EXTRA]
//! ```
//!
//! `inventory.img` has only its type magic; `stats-*` and `irmap-cache`
//! start with `IMG_SERVICE`; raw images (magic [`magic::RAW_IMAGE`], e.g.
//! `pages-*.img`) have no header at all. `EXTRA` is image specific raw data
//! following an entry (pipe contents after a `pipe_data_entry`, ...).
//!
//! Everything here is pure in-memory code: callers do the file I/O.

pub mod magic;
pub mod names;

#[cfg(test)]
mod tests;

/// Generated protobuf types (package `criu`, from `engine/proto/*.proto`).
#[allow(
    clippy::all,
    clippy::pedantic,
    clippy::nursery,
    missing_docs,
    non_camel_case_types,
    rustdoc::all
)]
pub mod pb {
    include!(concat!(env!("OUT_DIR"), "/criu.rs"));
}

/// Largest entry payload accepted by [`ImageReader`] (64 MiB).
pub const MAX_ENTRY_SIZE: u64 = 64 << 20;

/// Most memory [`ImageReader::all`] gives the decoded entries of one image (1 GiB). An entry
/// takes at least 4 bytes of image (its length prefix) but a whole message in memory, up to a
/// few KiB (`FileEntry`, `CoreEntry`): without a limit, an image of empty entries would ask for
/// hundreds of times its size.
pub const MAX_DECODED: u64 = 1 << 30;

/// `inventory_entry.img_version` of images v1 (no common magic; obsolete).
pub const CRTOOLS_IMAGES_V1: u32 = 1;
/// `inventory_entry.img_version` written by current CRIU (images v1.1).
pub const CRTOOLS_IMAGES_V1_1: u32 = 2;

/// `user_x86_regs_entry.mode`: 64-bit register set.
pub const X86_MODE_NATIVE: i32 = pb::UserX86RegsMode::Native as i32;
/// `user_x86_regs_entry.mode`: 32-bit (ia32 compat) register set.
pub const X86_MODE_COMPAT: i32 = pb::UserX86RegsMode::Compat as i32;

/// Bits of `vma_entry.status` (CRIU's `criu/include/image.h`).
pub mod vma_status {
    pub const VMA_AREA_NONE: u32 = 0;
    pub const VMA_AREA_REGULAR: u32 = 1 << 0;
    pub const VMA_AREA_STACK: u32 = 1 << 1;
    pub const VMA_AREA_VSYSCALL: u32 = 1 << 2;
    pub const VMA_AREA_VDSO: u32 = 1 << 3;
    pub const VMA_AREA_HEAP: u32 = 1 << 5;

    pub const VMA_FILE_PRIVATE: u32 = 1 << 6;
    pub const VMA_FILE_SHARED: u32 = 1 << 7;
    pub const VMA_ANON_SHARED: u32 = 1 << 8;
    pub const VMA_ANON_PRIVATE: u32 = 1 << 9;

    pub const VMA_AREA_SYSVIPC: u32 = 1 << 10;
    pub const VMA_AREA_SOCKET: u32 = 1 << 11;
    pub const VMA_AREA_VVAR: u32 = 1 << 12;
    pub const VMA_AREA_AIORING: u32 = 1 << 13;
    pub const VMA_AREA_MEMFD: u32 = 1 << 14;
    /// x86 CET shadow stack.
    pub const VMA_AREA_SHSTK: u32 = 1 << 15;
    /// Fake VMA describing MADV_GUARD_INSTALL guard ranges.
    pub const VMA_AREA_GUARD: u32 = 1 << 16;
    /// The kernel's `[uprobes]` area (contents never dumped).
    pub const VMA_AREA_UPROBES: u32 = 1 << 17;

    pub const VMA_EXT_PLUGIN: u32 = 1 << 27;
    pub const VMA_CLOSE: u32 = 1 << 28;
    pub const VMA_NO_PROT_WRITE: u32 = 1 << 29;
    pub const VMA_PREMMAPED: u32 = 1 << 30;
    /// Must never appear in an image.
    pub const VMA_UNSUPP: u32 = 1 << 31;
}

/// Bits of `pagemap_entry.flags` (CRIU's `criu/include/pagemap.h`).
pub mod pagemap_flags {
    /// Pages are in the parent snapshot.
    pub const PE_PARENT: u32 = 1 << 0;
    /// Pages may be restored lazily.
    pub const PE_LAZY: u32 = 1 << 1;
    /// Pages are present in the `pages-*.img` file.
    pub const PE_PRESENT: u32 = 1 << 2;
}
pub use pagemap_flags::{PE_LAZY, PE_PARENT, PE_PRESENT};

/// Values of `task_core_entry.task_state` (compel's task-state.h / CRIU's
/// pid.h). Note: crit 3.17's pretty printer mislabels 3 and 6.
pub mod task_state {
    pub const TASK_ALIVE: u32 = 0x01;
    pub const TASK_DEAD: u32 = 0x02;
    pub const TASK_STOPPED: u32 = 0x03;
    pub const TASK_ZOMBIE: u32 = 0x06;
    /// CRIU-internal (never in images): helper task.
    pub const TASK_HELPER: u32 = 0x80;
    /// CRIU-internal (never in images): thread.
    pub const TASK_THREAD: u32 = 0x81;
}
pub use task_state::{TASK_ALIVE, TASK_DEAD, TASK_STOPPED, TASK_ZOMBIE};

/// Which header(s) an image file starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// `IMG_COMMON`, then the type magic (almost every image).
    Normal,
    /// Only the type magic (`inventory.img`).
    Inventory,
    /// `IMG_SERVICE`, then the type magic (`stats-dump`, `stats-restore`,
    /// `irmap-cache`).
    Service,
}

impl ImageKind {
    fn lead_magic(self) -> Option<u32> {
        match self {
            ImageKind::Normal => Some(magic::IMG_COMMON),
            ImageKind::Inventory => None,
            ImageKind::Service => Some(magic::IMG_SERVICE),
        }
    }
}

/// Errors from parsing an image. Every message is one line naming the file.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{file}: bad magic at start of image: expected {}, found {}", show_magic(*.expected), show_magic(*.found))]
    BadMagic {
        file: String,
        expected: u32,
        found: u32,
    },
    /// Fewer bytes left than a length prefix, header word, entry body or raw
    /// payload needs. `offset` is where the incomplete item starts.
    #[error("{file}: truncated at byte {offset}: entry needs {needed} bytes, {left} left")]
    Truncated {
        file: String,
        offset: u64,
        needed: u64,
        left: u64,
    },
    /// The entry body starting at `offset` is not a valid protobuf message.
    #[error("{file}: cannot decode entry at byte {offset}: {source}")]
    Decode {
        file: String,
        offset: u64,
        #[source]
        source: prost::DecodeError,
    },
    /// The length prefix at `offset` exceeds [`MAX_ENTRY_SIZE`].
    #[error("{file}: entry at byte {offset} claims {len} bytes (limit {MAX_ENTRY_SIZE})")]
    TooLarge { file: String, offset: u64, len: u64 },
    /// [`ImageReader::all`]: the image frames more entries than [`MAX_DECODED`] holds.
    #[error("{file}: {entries} entries would take {bytes} bytes of memory decoded (limit {MAX_DECODED})")]
    TooMany {
        file: String,
        entries: u64,
        bytes: u64,
    },
    #[error("{file}: image file is missing")]
    Missing { file: String },
    #[error("{file}: image has no entry where one is required")]
    Empty { file: String },
}

impl ImageError {
    /// The image file the error is about.
    pub fn file(&self) -> &str {
        match self {
            ImageError::BadMagic { file, .. }
            | ImageError::Truncated { file, .. }
            | ImageError::Decode { file, .. }
            | ImageError::TooLarge { file, .. }
            | ImageError::TooMany { file, .. }
            | ImageError::Missing { file }
            | ImageError::Empty { file } => file,
        }
    }
}

fn show_magic(m: u32) -> String {
    match magic::name(m) {
        Some(name) => format!("{m:#010x} ({name})"),
        None => format!("{m:#010x}"),
    }
}

/// Builds an image file in memory; the caller writes [`into_bytes`] to disk.
///
/// [`into_bytes`]: ImageWriter::into_bytes
#[derive(Debug, Clone)]
pub struct ImageWriter {
    buf: Vec<u8>,
}

impl ImageWriter {
    /// Starts an image with the header(s) for `kind`. A `type_magic` of
    /// [`magic::RAW_IMAGE`] writes no header (as CRIU does).
    pub fn new(kind: ImageKind, type_magic: u32) -> Self {
        let mut buf = Vec::with_capacity(256);
        if type_magic != magic::RAW_IMAGE {
            if let Some(lead) = kind.lead_magic() {
                buf.extend_from_slice(&lead.to_le_bytes());
            }
            buf.extend_from_slice(&type_magic.to_le_bytes());
        }
        ImageWriter { buf }
    }

    /// Appends one entry: `u32` little-endian length, then the encoded message.
    ///
    /// # Panics
    /// If the encoded message does not fit the 32-bit length prefix (4 GiB).
    pub fn push<M: prost::Message>(&mut self, msg: &M) {
        let len = msg.encoded_len();
        let len32 = u32::try_from(len).expect("CRIU image entry larger than 4 GiB");
        self.buf.reserve(4 + len);
        self.buf.extend_from_slice(&len32.to_le_bytes());
        msg.encode_raw(&mut self.buf);
    }

    /// Appends raw bytes (the payload that follows e.g. a `pipe_data_entry`).
    pub fn push_raw(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// Bytes written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.buf
    }
}

/// Parses an image held in memory. Never panics on malformed input.
#[derive(Debug, Clone)]
pub struct ImageReader<'a> {
    file: String,
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> ImageReader<'a> {
    /// Checks the header(s) for `kind` and `type_magic` (none for
    /// [`magic::RAW_IMAGE`]). `file` is used in error messages only.
    pub fn new(
        file: &str,
        bytes: &'a [u8],
        kind: ImageKind,
        type_magic: u32,
    ) -> Result<Self, ImageError> {
        let mut r = ImageReader {
            file: file.to_string(),
            bytes,
            pos: 0,
        };
        if type_magic != magic::RAW_IMAGE {
            if let Some(lead) = kind.lead_magic() {
                r.expect_magic(lead)?;
            }
            r.expect_magic(type_magic)?;
        }
        Ok(r)
    }

    fn expect_magic(&mut self, expected: u32) -> Result<(), ImageError> {
        let found = self.read_u32()?;
        if found != expected {
            return Err(ImageError::BadMagic {
                file: self.file.clone(),
                expected,
                found,
            });
        }
        Ok(())
    }

    fn left(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn truncated(&self, offset: usize, needed: u64) -> ImageError {
        ImageError::Truncated {
            file: self.file.clone(),
            offset: offset as u64,
            needed,
            left: (self.bytes.len() - offset) as u64,
        }
    }

    fn read_u32(&mut self) -> Result<u32, ImageError> {
        let word = self
            .bytes
            .get(self.pos..self.pos + 4)
            .ok_or_else(|| self.truncated(self.pos, 4))?;
        self.pos += 4;
        Ok(u32::from_le_bytes([word[0], word[1], word[2], word[3]]))
    }

    /// Next entry, or `None` at a clean end of file. On error the position
    /// is left at the start of the bad entry.
    #[allow(clippy::should_implement_trait)] // generic over M, not an Iterator
    pub fn next<M: prost::Message + Default>(&mut self) -> Result<Option<M>, ImageError> {
        if self.left() == 0 {
            return Ok(None);
        }
        let start = self.pos;
        let len = u64::from(self.read_u32()?);
        self.pos = start;
        if len > MAX_ENTRY_SIZE {
            return Err(ImageError::TooLarge {
                file: self.file.clone(),
                offset: start as u64,
                len,
            });
        }
        let body_at = start + 4;
        // len <= 64 MiB, so this fits usize on every supported target.
        let body_len = len as usize;
        let body = self
            .bytes
            .get(body_at..body_at + body_len)
            .ok_or_else(|| self.truncated(body_at, len))?;
        let msg = M::decode(body).map_err(|source| ImageError::Decode {
            file: self.file.clone(),
            offset: body_at as u64,
            source,
        })?;
        self.pos = body_at + body_len;
        Ok(Some(msg))
    }

    /// Next entry; [`ImageError::Empty`] at end of file.
    pub fn next_required<M: prost::Message + Default>(&mut self) -> Result<M, ImageError> {
        match self.next()? {
            Some(m) => Ok(m),
            None => Err(ImageError::Empty {
                file: self.file.clone(),
            }),
        }
    }

    /// All remaining entries (all of type `M`). Their vector is reserved once, exactly, for
    /// the entries the length prefixes frame: [`ImageError::TooMany`] when that is more than
    /// [`MAX_DECODED`] bytes or more than the allocator gives.
    pub fn all<M: prost::Message + Default>(&mut self) -> Result<Vec<M>, ImageError> {
        let entries = self.count_frames();
        let bytes = (entries as u64).saturating_mul(std::mem::size_of::<M>() as u64);
        let too_many = || ImageError::TooMany {
            file: self.file.clone(),
            entries: entries as u64,
            bytes,
        };
        if bytes > MAX_DECODED {
            return Err(too_many());
        }
        let mut out = Vec::new();
        out.try_reserve_exact(entries).map_err(|_| too_many())?;
        while let Some(m) = self.next()? {
            out.push(m);
        }
        Ok(out)
    }

    /// How many entries follow, by their length prefixes alone (nothing is decoded), up to
    /// the first one that is truncated or too large.
    fn count_frames(&self) -> usize {
        let mut pos = self.pos;
        let mut n = 0;
        while let Some(w) = self.bytes.get(pos..pos + 4) {
            let len = u64::from(u32::from_le_bytes([w[0], w[1], w[2], w[3]]));
            if len > MAX_ENTRY_SIZE || len > (self.bytes.len() - pos - 4) as u64 {
                break;
            }
            // len <= 64 MiB: fits usize.
            pos += 4 + len as usize;
            n += 1;
        }
        n
    }

    /// The next `len` raw bytes (extra payload after an entry).
    pub fn raw(&mut self, len: u64) -> Result<&'a [u8], ImageError> {
        if len > self.left() as u64 {
            return Err(self.truncated(self.pos, len));
        }
        let n = len as usize;
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// Current byte offset in the file (headers included).
    pub fn offset(&self) -> u64 {
        self.pos as u64
    }

    /// Bytes not consumed yet.
    pub fn remaining(&self) -> u64 {
        self.left() as u64
    }

    /// True when every byte has been consumed.
    pub fn is_eof(&self) -> bool {
        self.left() == 0
    }

    /// The file name given to [`ImageReader::new`].
    pub fn file(&self) -> &str {
        &self.file
    }
}
