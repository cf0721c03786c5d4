//! Moving page contents between a task and a `pages-*.img` file, pipelined: one thread copies
//! memory (process_vm_readv / process_vm_writev) while another does the file I/O, through a
//! few fixed buffers. Memory use stays bounded (NBUF × BUF) whatever the image size, and the
//! two copies overlap instead of adding up.

use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

const BUF: usize = 4 << 20;
const NBUF: usize = 4;
/// One page, the unit a parent and child share.
const PAGE: usize = 4096;

/// A page stream failed.
#[derive(Debug, thiserror::Error)]
pub enum PagesError {
    #[error("cannot write image {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read image {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path}: ends before the pages its pagemap lists")]
    Short { path: PathBuf },
    #[error(transparent)]
    Mem(#[from] crate::sys::mem::MemError),
    #[error("copying memory stopped: the dump was asked to stop")]
    Aborted,
}

/// A page-aligned buffer (whole pages in, whole pages out).
pub struct AlignedBuf {
    ptr: std::ptr::NonNull<u8>,
    len: usize,
}

// SAFETY: the buffer is plain memory owned by this value; moving it between threads is fine.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, 4096).expect("valid layout")
    }
    pub fn new(len: usize) -> Self {
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { std::alloc::alloc_zeroed(Self::layout(len)) };
        let ptr = std::ptr::NonNull::new(p)
            .unwrap_or_else(|| std::alloc::handle_alloc_error(Self::layout(len)));
        AlignedBuf { ptr, len }
    }
}

impl std::ops::Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr is valid for len bytes for the life of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl std::ops::DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for len bytes and uniquely borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new() with the same layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), Self::layout(self.len)) };
    }
}

/// (buffer, bytes used, file offset, the error its write gets instead: a fault for tests)
type Chunk = (AlignedBuf, usize, u64, Option<io::Error>);

/// Writes pages to a file on writer threads.
pub struct PageSink {
    path: PathBuf,
    file: std::sync::Arc<File>,
    to_writer: Option<mpsc::SyncSender<Chunk>>,
    free: Option<mpsc::Receiver<AlignedBuf>>,
    writers: Vec<thread::JoinHandle<io::Result<Duration>>>,
    allocated: usize,
    offset: u64,
    /// Time spent in process_vm_readv.
    pub read_time: Duration,
    /// Time spent writing small pieces on the caller's thread.
    direct_write_time: Duration,
    pub bytes: u64,
}

/// Pieces up to this size, written before any writer thread exists, are written directly: a
/// task with thousands of small shared mappings cost a thread and 4 MiB buffers each.
const DIRECT_WRITE_MAX: usize = 256 << 10;

impl PageSink {
    pub fn create(path: &Path) -> Result<Self, PagesError> {
        // Buffered writes, as CRIU does: the page cache absorbs the burst while the tree is
        // frozen, and a restore on this host reads the images back from memory. (O_DIRECT was
        // tried: durable images, but restore then reads from disk, 2.6x slower here.)
        let file = crate::private::create_private(path)
            .and_then(|f| crate::fault::write_point(path).map(|()| f))
            .map_err(|source| PagesError::Write {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(PageSink {
            path: path.to_path_buf(),
            file: std::sync::Arc::new(file),
            to_writer: None,
            free: None,
            writers: Vec::new(),
            allocated: 0,
            offset: 0,
            read_time: Duration::ZERO,
            direct_write_time: Duration::ZERO,
            bytes: 0,
        })
    }

    /// Starts the writer thread, on the first large piece.
    fn start_writers(&mut self) -> Result<(), PagesError> {
        if self.to_writer.is_some() {
            return Ok(());
        }
        let (to_writer, from_reader) = mpsc::sync_channel::<Chunk>(NBUF);
        let (free_tx, free) = mpsc::channel::<AlignedBuf>();
        let file = self.file.clone();
        let h = thread::Builder::new()
            .name("stasis-pages-w".into())
            .spawn(move || -> io::Result<Duration> {
                use std::os::unix::fs::FileExt;
                let mut busy = Duration::ZERO;
                for (buf, n, off, fault) in from_reader {
                    let t = Instant::now();
                    if let Some(e) = fault {
                        return Err(e);
                    }
                    file.write_all_at(&buf[..n], off)?;
                    busy += t.elapsed();
                    let _ = free_tx.send(buf);
                }
                Ok(busy)
            })
            .map_err(|source| PagesError::Write {
                path: self.path.clone(),
                source,
            })?;
        self.writers.push(h);
        self.to_writer = Some(to_writer);
        self.free = Some(free);
        Ok(())
    }

    fn join_writers(&mut self) -> io::Result<Duration> {
        self.to_writer = None;
        let mut busy = Duration::ZERO;
        let mut first_err = None;
        for h in self.writers.drain(..) {
            match h.join() {
                Ok(Ok(d)) => busy = busy.max(d),
                Ok(Err(e)) => first_err = first_err.or(Some(e)),
                Err(_) => first_err = first_err.or(Some(io::Error::other("page writer panicked"))),
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(busy),
        }
    }

    fn writer_error(&mut self) -> PagesError {
        let source = match self.join_writers() {
            Err(e) => e,
            Ok(_) => io::Error::other("page writer stopped"),
        };
        PagesError::Write {
            path: self.path.clone(),
            source,
        }
    }

    fn buffer(&mut self) -> Result<AlignedBuf, PagesError> {
        self.start_writers()?;
        let free = self.free.as_ref().expect("started above");
        if let Ok(b) = free.try_recv() {
            return Ok(b);
        }
        if self.allocated < NBUF + self.writers.len() {
            self.allocated += 1;
            return Ok(AlignedBuf::new(BUF));
        }
        loop {
            let free = self.free.as_ref().expect("started above");
            match free.recv_timeout(Duration::from_millis(50)) {
                Ok(b) => return Ok(b),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if self.writers.iter().any(|h| h.is_finished()) {
                        return Err(self.writer_error());
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => return Err(self.writer_error()),
            }
        }
    }

    fn send(&mut self, buf: AlignedBuf, n: usize) -> Result<(), PagesError> {
        let off = self.offset;
        self.offset += n as u64;
        self.bytes += n as u64;
        // Reached here, on the caller's thread, so the points keep their order; the writer
        // thread fails the chunk as its write would have failed.
        let fault = crate::fault::write_point(&self.path).err();
        let sent = self
            .to_writer
            .as_ref()
            .map(|tx| tx.send((buf, n, off, fault)).is_ok())
            .unwrap_or(false);
        if !sent {
            return Err(self.writer_error());
        }
        Ok(())
    }

    /// Copies `len` bytes at `addr` of `pid` into the file.
    pub fn copy_from(&mut self, pid: u32, addr: u64, len: u64) -> Result<(), PagesError> {
        let mut done = 0u64;
        while done < len {
            // A dumper asked to stop lets the tree go within one buffer, not one task.
            if crate::dump::abort::requested() {
                return Err(PagesError::Aborted);
            }
            let n = (len - done).min(BUF as u64) as usize;
            let mut buf = self.buffer()?;
            let t = Instant::now();
            crate::sys::mem::read(pid, addr + done, &mut buf[..n])?;
            self.read_time += t.elapsed();
            self.send(buf, n)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Appends bytes we already hold (whole pages).
    pub fn write_bytes(&mut self, data: &[u8]) -> Result<(), PagesError> {
        if crate::dump::abort::requested() {
            return Err(PagesError::Aborted);
        }
        if self.to_writer.is_none() && data.len() <= DIRECT_WRITE_MAX {
            use std::os::unix::fs::FileExt;
            let t = Instant::now();
            crate::fault::write_point(&self.path)
                .and_then(|()| self.file.write_all_at(data, self.offset))
                .map_err(|source| PagesError::Write {
                    path: self.path.clone(),
                    source,
                })?;
            self.direct_write_time += t.elapsed();
            self.offset += data.len() as u64;
            self.bytes += data.len() as u64;
            return Ok(());
        }
        for part in data.chunks(BUF) {
            let mut buf = self.buffer()?;
            buf[..part.len()].copy_from_slice(part);
            self.send(buf, part.len())?;
        }
        Ok(())
    }

    /// Waits for the writer; returns the time it spent writing.
    pub fn finish(mut self) -> Result<Duration, PagesError> {
        let direct = self.direct_write_time;
        self.join_writers()
            .map(|threaded| threaded + direct)
            .map_err(|source| PagesError::Write {
                path: self.path.clone(),
                source,
            })
    }
}

/// (buffer, bytes used)
type ReadChunk = (Vec<u8>, usize);

/// Reads a pages file sequentially on a reader thread; the caller takes the bytes in order.
pub struct PageSource {
    path: PathBuf,
    chunks: mpsc::Receiver<io::Result<ReadChunk>>,
    give_back: mpsc::SyncSender<Vec<u8>>,
    reader: Option<thread::JoinHandle<()>>,
    cur: Option<(Vec<u8>, usize, usize)>,
}

impl PageSource {
    pub fn open(path: &Path) -> Result<Self, PagesError> {
        let mut file = File::open(path).map_err(|source| PagesError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let (tx, chunks) = mpsc::sync_channel::<io::Result<ReadChunk>>(NBUF);
        let (give_back, returned) = mpsc::sync_channel::<Vec<u8>>(NBUF);
        let reader = thread::Builder::new()
            .name("stasis-pages-r".into())
            .spawn(move || {
                let mut allocated = 0;
                loop {
                    let mut buf = match returned.try_recv() {
                        Ok(b) => b,
                        Err(_) if allocated < NBUF => {
                            allocated += 1;
                            vec![0u8; BUF]
                        }
                        Err(_) => match returned.recv() {
                            Ok(b) => b,
                            Err(_) => return,
                        },
                    };
                    let mut n = 0;
                    while n < BUF {
                        match file.read(&mut buf[n..]) {
                            Ok(0) => break,
                            Ok(k) => n += k,
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => {
                                let _ = tx.send(Err(e));
                                return;
                            }
                        }
                    }
                    if n == 0 || tx.send(Ok((buf, n))).is_err() {
                        return;
                    }
                }
            })
            .map_err(|source| PagesError::Read {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(PageSource {
            path: path.to_path_buf(),
            chunks,
            give_back,
            reader: Some(reader),
            cur: None,
        })
    }

    /// Writes the next `len` bytes of the stream at `addr` of the task whose `/proc/<pid>/mem`
    /// is `mem` (which also writes read-only private mappings, copying on write).
    pub fn copy_to(&mut self, mem: &File, pid: u32, addr: u64, len: u64) -> Result<(), PagesError> {
        use std::os::unix::fs::FileExt;
        self.take(len, |chunk, done| {
            mem.write_all_at(chunk, addr + done).map_err(|source| {
                crate::sys::mem::MemError::Write {
                    pid,
                    addr: addr + done,
                    len: chunk.len(),
                    source,
                }
                .into()
            })
        })
    }

    /// Like [`PageSource::copy_to`], but writes only the pages that differ from what the task
    /// holds there now: a page it inherited from its parent and that its image agrees with
    /// stays shared (copy-on-write) with the parent's. Returns the pages written.
    pub fn copy_changed_to(
        &mut self,
        mem: &File,
        pid: u32,
        addr: u64,
        len: u64,
    ) -> Result<u64, PagesError> {
        use std::os::unix::fs::FileExt;
        let mut now = Vec::new();
        let mut written = 0;
        self.take(len, |chunk, done| {
            let at = addr + done;
            now.resize(chunk.len(), 0);
            let read_err = |source| crate::sys::mem::MemError::ReadProc {
                pid,
                addr: at,
                len: chunk.len(),
                source,
            };
            mem.read_exact_at(&mut now, at).map_err(read_err)?;
            for (i, (want, have)) in chunk.chunks(PAGE).zip(now.chunks(PAGE)).enumerate() {
                if want != have {
                    let page_at = at + (i * PAGE) as u64;
                    mem.write_all_at(want, page_at).map_err(|source| {
                        crate::sys::mem::MemError::Write {
                            pid,
                            addr: page_at,
                            len: want.len(),
                            source,
                        }
                    })?;
                    written += 1;
                }
            }
            Ok(())
        })?;
        Ok(written)
    }

    /// Passes over the next `len` bytes of the stream (pages the restore does not put back,
    /// such as a dumped vdso: the running kernel's own stays).
    pub fn skip(&mut self, len: u64) -> Result<(), PagesError> {
        self.take(len, |_, _| Ok(()))
    }

    /// Hands the next `len` bytes of the stream to `f`, chunk by chunk, with their offset.
    fn take(
        &mut self,
        len: u64,
        mut f: impl FnMut(&[u8], u64) -> Result<(), PagesError>,
    ) -> Result<(), PagesError> {
        let mut done = 0u64;
        while done < len {
            if self.cur.is_none() {
                match self.chunks.recv() {
                    Ok(Ok((buf, n))) => self.cur = Some((buf, n, 0)),
                    Ok(Err(source)) => {
                        return Err(PagesError::Read {
                            path: self.path.clone(),
                            source,
                        })
                    }
                    Err(_) => {
                        return Err(PagesError::Short {
                            path: self.path.clone(),
                        })
                    }
                }
            }
            let (buf, n, off) = self.cur.as_mut().expect("set above");
            let take = ((*n - *off) as u64).min(len - done) as usize;
            f(&buf[*off..*off + take], done)?;
            *off += take;
            done += take as u64;
            if *off == *n {
                let (buf, _, _) = self.cur.take().expect("set above");
                // The reader allocates anew when no buffer comes back: nothing is lost.
                let _ = self.give_back.try_send(buf);
            }
        }
        Ok(())
    }
}

impl Drop for PageSource {
    fn drop(&mut self) {
        // Unblock and stop the reader: drop our ends, then join.
        let (tx, _) = mpsc::sync_channel(1);
        self.give_back = tx;
        let (_, rx) = mpsc::sync_channel(1);
        self.chunks = rx;
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}
