//! Memory: VMAs, page images and shared memory objects, each file holding both the dump and
//! the restore of its part.

pub mod pages;
pub(crate) mod premap;
pub(crate) mod shmem;
pub(crate) mod vma;

use std::path::PathBuf;

/// Why an address space or a shared memory object could not be dumped or restored (what is
/// not supported is [`crate::dump::DumpError::UnsupportedVma`]).
#[derive(Debug, thiserror::Error)]
pub enum MmError {
    #[error("cannot read the size of {path}")]
    Size {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: pages beyond the object")]
    PagesBeyondObject { path: PathBuf },
    #[error("task {pid}: cannot list its mappings")]
    Maps {
        pid: u32,
        #[source]
        source: crate::proc::ProcError,
    },
    #[error("task {pid}: file id {id} was not opened")]
    FileNotOpened { pid: u32, id: u32 },
    #[error("task {pid}: shared memory {shmid} was not prepared")]
    ShmemNotPrepared { pid: u32, shmid: u64 },
    #[error("task {pid}: the vdso/vvar layout of this kernel ({here} areas) differs from the dumped one ({dumped} areas)")]
    VdsoLayout {
        pid: u32,
        here: usize,
        dumped: usize,
    },
    #[error("task {pid}: no vdso in the image")]
    NoVdso { pid: u32 },
    #[error("task {pid}: no syscall instruction in the vdso")]
    NoVdsoSyscall { pid: u32 },
    #[error("task {pid}: {call} at {want:#x} landed at {got:#x}")]
    Landed {
        pid: u32,
        call: &'static str,
        want: u64,
        got: u64,
    },
}
