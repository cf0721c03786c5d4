//! Copying memory out of and into another process. The loops (as few syscalls as the kernel
//! allows, resuming after a partial transfer) are ours; each transfer goes through nix's
//! process_vm_readv/writev, which pass our slices to the kernel as they are (IoSlice is an
//! iovec): no copy, no allocation.

use std::io::{self, IoSlice, IoSliceMut};

use nix::sys::uio::{process_vm_readv, process_vm_writev, RemoteIoVec};
use nix::unistd::Pid;

/// A memory transfer with another process failed.
#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("process_vm_readv from pid {pid} at {addr:#x} (+{len}) failed")]
    Read {
        pid: u32,
        addr: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("reading pid {pid} memory at {addr:#x} (+{len}) through /proc failed")]
    ReadProc {
        pid: u32,
        addr: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("writing pid {pid} memory at {addr:#x} (+{len}) failed")]
    Write {
        pid: u32,
        addr: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("reading /proc/{pid}/pagemap failed")]
    Pagemap {
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// Reads `buf.len()` bytes at `addr` of `pid`, in as few syscalls as the kernel allows.
pub fn read(pid: u32, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
    let mut done = 0usize;
    while done < buf.len() {
        let len = buf.len() - done;
        let remote = RemoteIoVec {
            base: (addr + done as u64) as usize,
            len,
        };
        let n = process_vm_readv(
            Pid::from_raw(pid as libc::pid_t),
            &mut [IoSliceMut::new(&mut buf[done..])],
            &[remote],
        );
        match n {
            Ok(n) if n > 0 => done += n,
            // Pages of an area the task may not read itself (PROT_NONE, or write-only): the
            // debugger's path, /proc/<pid>/mem, reads them (FOLL_FORCE).
            Err(nix::errno::Errno::EFAULT) => {
                return read_forced(pid, addr + done as u64, &mut buf[done..]);
            }
            other => {
                return Err(MemError::Read {
                    pid,
                    addr: addr + done as u64,
                    len,
                    source: transfer_error(other),
                })
            }
        }
    }
    Ok(())
}

/// Reads through `/proc/<pid>/mem`, which the kernel serves as it serves a debugger: also
/// from areas the task itself may not read.
fn read_forced(pid: u32, addr: u64, buf: &mut [u8]) -> Result<(), MemError> {
    use std::os::unix::fs::FileExt;
    let err = |source| MemError::Read {
        pid,
        addr,
        len: buf.len(),
        source,
    };
    let mem = std::fs::File::open(format!("/proc/{pid}/mem")).map_err(err)?;
    mem.read_exact_at(buf, addr)
        .map_err(|source| MemError::Read {
            pid,
            addr,
            len: buf.len(),
            source,
        })
}

/// The error of a transfer that moved nothing: errno, or end of file for 0 bytes.
fn transfer_error(r: nix::Result<usize>) -> io::Error {
    match r {
        Err(e) => e.into(),
        Ok(_) => io::Error::from(io::ErrorKind::UnexpectedEof),
    }
}

/// Writes `data` at `addr` of `pid` with process_vm_writev (needs a writable mapping there).
pub fn write(pid: u32, addr: u64, data: &[u8]) -> Result<(), MemError> {
    let mut done = 0usize;
    while done < data.len() {
        let len = data.len() - done;
        let remote = RemoteIoVec {
            base: (addr + done as u64) as usize,
            len,
        };
        let n = process_vm_writev(
            Pid::from_raw(pid as libc::pid_t),
            &[IoSlice::new(&data[done..])],
            &[remote],
        );
        match n {
            Ok(n) if n > 0 => done += n,
            other => {
                return Err(MemError::Write {
                    pid,
                    addr: addr + done as u64,
                    len,
                    source: transfer_error(other),
                })
            }
        }
    }
    Ok(())
}

/// Writes through `/proc/<pid>/mem`, which also works on read-only mappings.
pub fn write_via_proc(pid: u32, addr: u64, data: &[u8]) -> Result<(), MemError> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .map_err(|source| MemError::Write {
            pid,
            addr,
            len: data.len(),
            source,
        })?;
    f.write_all_at(data, addr)
        .map_err(|source| MemError::Write {
            pid,
            addr,
            len: data.len(),
            source,
        })
}

pub const PAGE_SIZE: u64 = 4096;
const PM_PRESENT: u64 = 1 << 63;
const PM_SWAP: u64 = 1 << 62;
const PM_FILE: u64 = 1 << 61;

/// Which pages of a range hold data that must go into the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageSelect {
    /// Anonymous memory: every present or swapped page.
    Anon,
    /// Private file mappings: only pages that were copied on write (not page-cache pages).
    PrivateFile,
}

/// Returns runs `(start, npages)` of pages to dump in `[start, end)`, from `/proc/<pid>/pagemap`.
pub fn dirty_runs(
    pagemap: &std::fs::File,
    pid: u32,
    start: u64,
    end: u64,
    select: PageSelect,
) -> Result<Vec<(u64, u64)>, MemError> {
    use std::os::unix::fs::FileExt;
    let mut runs: Vec<(u64, u64)> = Vec::new();
    let mut addr = start;
    let chunk_pages = 64 * 1024u64; // 512 KiB of entries per pread
    let mut buf = vec![0u8; (chunk_pages * 8) as usize];
    while addr < end {
        let n = ((end - addr) / PAGE_SIZE).min(chunk_pages);
        let bytes = &mut buf[..(n * 8) as usize];
        pagemap
            .read_exact_at(bytes, addr / PAGE_SIZE * 8)
            .map_err(|source| MemError::Pagemap { pid, source })?;
        for (i, e) in bytes.chunks_exact(8).enumerate() {
            let e = u64::from_ne_bytes(e.try_into().expect("chunks_exact(8)"));
            let keep = match select {
                PageSelect::Anon => e & (PM_PRESENT | PM_SWAP) != 0,
                PageSelect::PrivateFile => {
                    (e & PM_PRESENT != 0 && e & PM_FILE == 0) || e & PM_SWAP != 0
                }
            };
            if keep {
                let a = addr + i as u64 * PAGE_SIZE;
                match runs.last_mut() {
                    Some((s, c)) if *s + *c * PAGE_SIZE == a => *c += 1,
                    _ => runs.push((a, 1)),
                }
            }
        }
        addr += n * PAGE_SIZE;
    }
    Ok(runs)
}
