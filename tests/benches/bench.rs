//! `stasis-bench`: how fast stasis dumps and restores, against what this machine can do.
//!
//! ```text
//! cargo build --release -p stasis-cli
//! cargo run --release -p stasis-tests --bin stasis-bench [-- --sizes 64,256,1024 --runs 3]
//! ```
//!
//! Not a test: it is a binary with `test = false`, so `cargo test` never runs it. It needs
//! root; without it, it says why and exits 0.
//!
//! 1. Machine limits, measured in the same run for each size: first touch of an anonymous
//!    mapping (one byte written per 4 KiB page) and `process_vm_readv` of a child's touched
//!    memory in 4 MiB chunks (into one reused, pre-faulted 4 MiB buffer).
//! 2. For each size, `memhog <MiB>` (and a small process, `counter`): start it, wait until it
//!    runs, `stasis dump` it (which kills it), `stasis restore -d` it, check that it carries
//!    on, kill it. Wall times and peak RSS (`wait4`'s `ru_maxrss`) of each stasis run;
//!    frozen time from the dump's `stats-dump`.
//! 3. A table of medians, ratios to the machine limits, and the targets with PASS/MISS.
//!
//! The stasis binary is `$STASIS_BIN`, else the `stasis` next to this binary (the same cargo
//! profile), else what [`stasis_tests::stasis_bin`] finds. The whole run keeps to a time
//! budget (`--budget`, default 150 s): a workload gets fewer runs than `--runs` when another
//! one would not fit. Exits 1 if a dump or restore failed or a restored program did not carry
//! on; missed targets do not change the exit code.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use stasis::images::{magic, names, pb, ImageKind, ImageReader};
use stasis_tests::{kill_tree, reap, session_pids, skip_unless_root, workload, Workload};

const PAGE: usize = 4096;
const CHUNK: usize = 4 << 20;
const MIB: f64 = (1u64 << 20) as f64;

/// Targets from the performance issue.
const BIG_MIB: u64 = 1024;
mod containers;
mod servers;

const MAX_RATIO_TO_TOUCH: f64 = 1.25;
const SMALL_MAX: Duration = Duration::from_millis(20);
const MAX_RSS_MIB: f64 = 64.0;

const USAGE: &str =
    "usage: stasis-bench [--sizes MiB,MiB,...] [--runs N] [--budget SECONDS] [--criu PATH]
  --sizes   memhog sizes in MiB (default 64,256,1024)
  --runs    runs per workload; medians are reported (default 3)
  --budget  time budget for the whole run in seconds (default 150)
  --criu    a CRIU binary to time beside stasis on the same runc container";

struct Args {
    sizes: Vec<u64>,
    runs: usize,
    budget: Duration,
    /// A CRIU to compare with on the container.
    criu: Option<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args {
        sizes: vec![64, 256, 1024],
        runs: 3,
        budget: Duration::from_secs(150),
        criu: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let (key, inline) = match arg.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (arg.clone(), None),
        };
        if key == "-h" || key == "--help" {
            return Err(String::new());
        }
        let mut value = || {
            inline
                .clone()
                .or_else(|| it.next())
                .ok_or_else(|| format!("{key} needs a value"))
        };
        match key.as_str() {
            "--sizes" => {
                a.sizes = value()?
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| match s.trim().parse::<u64>() {
                        Ok(n) if n > 0 => Ok(n),
                        _ => Err(format!("bad size '{s}' (MiB, > 0)")),
                    })
                    .collect::<Result<_, _>>()?;
            }
            "--runs" => {
                a.runs = match value()?.parse() {
                    Ok(n) if n > 0 => n,
                    _ => return Err("--runs needs a number > 0".into()),
                };
            }
            "--budget" => {
                let s: u64 = value()?
                    .parse()
                    .map_err(|_| "--budget needs seconds".to_string())?;
                a.budget = Duration::from_secs(s);
            }
            "--criu" => {
                let v = value()?;
                a.criu = Some(
                    containers::criu_to_compare(Some(&v))
                        .ok_or_else(|| format!("--criu {v}: no such file"))?,
                );
            }
            _ => return Err(format!("unknown argument '{arg}'")),
        }
    }
    Ok(a)
}

// ---------------------------------------------------------------------------------------
// Machine limits.

/// An anonymous private read-write mapping, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

impl Mapping {
    fn new(len: usize) -> Result<Mapping, String> {
        // SAFETY: a fresh anonymous mapping with no fd; the result is checked below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!("mmap {len}: {}", std::io::Error::last_os_error()));
        }
        Ok(Mapping { ptr: p.cast(), len })
    }

    /// Writes one byte in every page: the kernel allocates and zeroes each page.
    fn touch(&self) {
        for off in (0..self.len).step_by(PAGE) {
            // SAFETY: off < len, so the byte is inside this read-write mapping.
            unsafe { std::ptr::write_volatile(self.ptr.add(off), 1) };
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range mapped in `new`; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

fn first_touch(mib: u64) -> Result<Duration, String> {
    let m = Mapping::new((mib as usize) << 20)?;
    let t = Instant::now();
    m.touch();
    Ok(t.elapsed())
}

/// Time to read all of a child's `mib` MiB of touched memory with `process_vm_readv`.
fn vm_readv(mib: u64) -> Result<Duration, String> {
    let len = (mib as usize) << 20;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills the two-element local array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe2: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: this process has a single thread here; the child only makes raw system calls
    // (prctl, mmap, write, pause, _exit) and stores to its own mapping, never allocates.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: as above, raw system calls and stores to the child's own fresh mapping.
        unsafe {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            let p = libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            if p == libc::MAP_FAILED {
                libc::_exit(1);
            }
            let mut off = 0;
            while off < len {
                std::ptr::write_volatile(p.cast::<u8>().add(off), (off / PAGE) as u8 | 1);
                off += PAGE;
            }
            let addr = p as usize;
            libc::write(
                fds[1],
                (&addr as *const usize).cast(),
                std::mem::size_of::<usize>(),
            );
            loop {
                libc::pause();
            }
        }
    }
    // SAFETY: closes our copy of the pipe's write end, which we own.
    unsafe { libc::close(fds[1]) };
    let mut addr = 0usize;
    // SAFETY: reads at most size_of::<usize>() bytes into the local `addr`.
    let n = unsafe {
        libc::read(
            fds[0],
            (&mut addr as *mut usize).cast(),
            std::mem::size_of::<usize>(),
        )
    };
    // SAFETY: closes the pipe's read end, which we own.
    unsafe { libc::close(fds[0]) };
    let result = if n != std::mem::size_of::<usize>() as isize {
        Err("process_vm_readv child did not start".to_string())
    } else {
        let mut buf = vec![1u8; CHUNK]; // written, so its pages are present before timing
        let t = Instant::now();
        let mut off = 0;
        let mut err = None;
        while off < len {
            let n = CHUNK.min(len - off);
            let local = libc::iovec {
                iov_base: buf.as_mut_ptr().cast(),
                iov_len: n,
            };
            let remote = libc::iovec {
                iov_base: (addr + off) as *mut libc::c_void,
                iov_len: n,
            };
            // SAFETY: `local` is n bytes of our own buffer; the remote range is the child's.
            let r = unsafe { libc::process_vm_readv(pid, &local, 1, &remote, 1, 0) };
            if r != n as isize {
                err = Some(format!(
                    "process_vm_readv at {off}: {r} ({})",
                    std::io::Error::last_os_error()
                ));
                break;
            }
            off += n;
        }
        let d = t.elapsed();
        std::hint::black_box(&buf);
        err.map_or(Ok(d), Err)
    };
    // SAFETY: kill(2) and waitpid(2) of the child we forked.
    unsafe {
        libc::kill(pid, libc::SIGKILL);
        libc::waitpid(pid, std::ptr::null_mut(), 0);
    }
    result
}

// ---------------------------------------------------------------------------------------
// Dump and restore runs.

/// One run of the stasis binary: wall time, peak RSS, how it ended.
struct StasisRun {
    wall: Duration,
    maxrss_kib: i64,
    ok: bool,
    status: String,
}

/// Our own resident set size in KiB (`VmRSS`).
fn own_rss_kib() -> Option<i64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let l = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    l.split_whitespace().nth(1)?.parse().ok()
}

/// Runs stasis with stdout and stderr to `out`, waits for it with `wait4` for its rusage.
///
/// A child's `ru_maxrss` starts from the peak RSS of the memory it had before `exec`, which
/// is ours (posix_spawn shares our mm; fork copies its counters). So our peak is first reset
/// to our current RSS (`clear_refs` 5): the child's figure is then at least our few MiB, not
/// the GiB the first-touch measurement left as our peak.
fn run_stasis(bin: &Path, args: &[&str], out: &Path) -> Result<StasisRun, String> {
    std::fs::write("/proc/self/clear_refs", "5")
        .map_err(|e| format!("reset peak RSS (/proc/self/clear_refs): {e}"))?;
    let f = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let err = f.try_clone().map_err(|e| e.to_string())?;
    let t = Instant::now();
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: waits for our own child into local status and rusage.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut ru) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(format!("wait4 stasis: {e}"));
        }
    }
    let wall = t.elapsed();
    drop(child); // already reaped above; dropping a Child neither waits nor kills
    let ok = libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0;
    let status = if libc::WIFEXITED(status) {
        format!("exit {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("signal {}", libc::WTERMSIG(status))
    } else {
        format!("status {status:#x}")
    };
    Ok(StasisRun {
        wall,
        maxrss_kib: ru.ru_maxrss,
        ok,
        status,
    })
}

/// The last `n` lines of a text file, for error messages.
fn tail(path: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    if lines.is_empty() {
        return "    (empty)".into();
    }
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| format!("    | {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn proc_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Reaps `pid` and waits until `/proc/<pid>` is gone (up to 5 s), so its PID is free.
fn wait_gone(pid: u32) -> bool {
    let end = Instant::now() + Duration::from_secs(5);
    loop {
        reap(pid);
        if !proc_exists(pid) {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Complete lines (ending in '\n') the program has written so far.
fn complete_lines(w: &Workload) -> Vec<String> {
    let s = std::fs::read_to_string(&w.out).unwrap_or_default();
    let end = s.rfind('\n').map_or(0, |i| i + 1);
    s[..end].lines().map(str::to_string).collect()
}

/// Waits until `pred` holds for the program's complete lines.
fn wait_for(w: &Workload, timeout: Duration, pred: impl Fn(&[String]) -> bool) -> Vec<String> {
    let end = Instant::now() + timeout;
    loop {
        let l = complete_lines(w);
        if pred(&l) || Instant::now() > end {
            return l;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[derive(Clone, Copy)]
enum Kind {
    /// `counter`: a small process.
    Small,
    /// `memhog <MiB>`.
    Memhog(u64),
    /// `counter` as the init of pid, network, UTS and IPC namespaces of its own (`unshare`):
    /// a container's namespaces but its mounts.
    Namespaced,
}

impl Kind {
    fn label(self) -> String {
        match self {
            Kind::Small => "counter (small)".into(),
            Kind::Namespaced => "counter (ns)".into(),
            Kind::Memhog(m) => format!("memhog {m} MiB"),
        }
    }
    fn mib(self) -> Option<u64> {
        match self {
            Kind::Small | Kind::Namespaced => None,
            Kind::Memhog(m) => Some(m),
        }
    }
    /// Generous time for a start-up step: filling and summing memory at ≥ ~100 MiB/s.
    fn timeout(self) -> Duration {
        Duration::from_secs(10 + self.mib().unwrap_or(0) / 100)
    }
}

struct Sample {
    dump: StasisRun,
    restore: StasisRun,
    frozen_us: u32,
    pages_written: u64,
}

fn read_dump_stats(images: &Path) -> Result<pb::DumpStatsEntry, String> {
    let path = images.join(names::STATS_DUMP);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let entry = ImageReader::new(names::STATS_DUMP, &bytes, ImageKind::Service, magic::STATS)
        .and_then(|mut r| r.next_required::<pb::StatsEntry>())
        .map_err(|e| e.to_string())?;
    entry
        .dump
        .ok_or_else(|| format!("{}: no dump entry", path.display()))
}

/// One start / dump / restore / check / kill cycle.
fn bench_once(bin: &Path, kind: Kind) -> Result<Sample, String> {
    let w = match kind {
        Kind::Small => Workload::start("counter", &workload("counter"), &[]),
        Kind::Memhog(m) => Workload::start("memhog", &workload("memhog"), &[&m.to_string()]),
        Kind::Namespaced => {
            let counter = workload("counter");
            let counter = counter.to_str().ok_or("non-UTF-8 temp dir")?;
            // The init leads its own session and unshares the rest itself, as a runc init
            // does (CRIU refuses an init whose session leader is outside), so that its
            // parent shares none of them; unshare's own complaints when its child is killed
            // go to /dev/null, not into the counter's output.
            let cmd = format!(
                "exec 2>/dev/null; exec /usr/bin/unshare --pid --fork /usr/bin/setsid /usr/bin/unshare --net --uts --ipc {counter}"
            );
            Workload::start("counter-ns", Path::new("/bin/sh"), &["-c", &cmd])
        }
    };
    let r = cycle(bin, kind, &w);
    // Whatever happened, nothing of this run may outlive it.
    let mut left = session_pids(w.pid);
    left.push(w.pid);
    kill_tree(&left);
    for p in left {
        wait_gone(p);
    }
    let _ = std::fs::remove_dir_all(&w.dir);
    r
}

/// Kills a pid when dropped.
struct KillOnDrop(Option<u32>);
impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0 {
            kill_tree(&[p]);
            wait_gone(p);
        }
    }
}

fn cycle(bin: &Path, kind: Kind, w: &Workload) -> Result<Sample, String> {
    // Running: memhog has printed "ready <sum>" and one verified line; counter a few lines.
    let want = match kind {
        Kind::Small | Kind::Namespaced => 3,
        Kind::Memhog(_) => 2,
    };
    let lines = wait_for(w, kind.timeout(), |l| l.len() >= want);
    if lines.len() < want {
        return Err(format!("{} did not start: {lines:?}", kind.label()));
    }
    let checksum = match kind {
        Kind::Small | Kind::Namespaced => String::new(),
        Kind::Memhog(_) => match lines[0].strip_prefix("ready ") {
            Some(s) => s.trim().to_string(),
            None => return Err(format!("memhog: unexpected first line {:?}", lines[0])),
        },
    };

    let before = session_pids(w.pid);
    let images = w.images();
    let img = images.to_str().ok_or("non-UTF-8 temp dir")?;
    // The tree's root: the workload, or the namespace's init under unshare.
    let root = match kind {
        Kind::Namespaced => std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", w.pid))
            .ok()
            .and_then(|c| c.split_whitespace().next()?.parse::<u32>().ok())
            .ok_or("unshare started no init")?,
        _ => w.pid,
    };
    let pid = root.to_string();
    // Earlier runs' images are still being written back; let that finish so it does not
    // throttle this dump's writes (the disk is shared by every run).
    // SAFETY: sync(2) has no arguments.
    unsafe { libc::sync() };
    let dump = run_stasis(
        bin,
        &["dump", "-t", &pid, "-D", img, "-o", "dump.log"],
        &w.dir.join("dump.out"),
    )?;
    if !dump.ok {
        return Err(format!(
            "dump failed ({}):\n{}\n  dump.log:\n{}",
            dump.status,
            tail(&w.dir.join("dump.out"), 10),
            tail(&images.join("dump.log"), 20)
        ));
    }
    for &p in before.iter().chain([&root]) {
        if !wait_gone(p) {
            return Err(format!("pid {p} still exists 5 s after the dump"));
        }
    }
    let stats = read_dump_stats(&images)?;
    let n = complete_lines(w).len();
    let last = complete_lines(w).last().cloned().unwrap_or_default();

    let pidfile = w.dir.join("restored.pid");
    let restore = run_stasis(
        bin,
        &[
            "restore",
            "-D",
            img,
            "-d",
            "--pidfile",
            pidfile.to_str().ok_or("non-UTF-8 temp dir")?,
            "-o",
            "restore.log",
        ],
        &w.dir.join("restore.out"),
    )?;
    if !restore.ok {
        return Err(format!(
            "restore failed ({}):\n{}\n  restore.log:\n{}",
            restore.status,
            tail(&w.dir.join("restore.out"), 10),
            tail(&images.join("restore.log"), 20)
        ));
    }
    let root_after: u32 = std::fs::read_to_string(&pidfile)
        .map_err(|e| format!("pidfile: {e}"))?
        .trim()
        .parse()
        .map_err(|e| format!("pidfile: {e}"))?;
    let restored = root_after;
    // A restored namespace init is no longer in the workload's session: end it (and its
    // namespace) with this run.
    let _end = KillOnDrop(match kind {
        Kind::Namespaced => Some(restored),
        _ => None,
    });
    let same = match kind {
        // A new namespace, where it is pid 1 again.
        Kind::Namespaced => std::fs::read_to_string(format!("/proc/{restored}/status"))
            .map(|s| {
                s.lines()
                    .any(|l| l.starts_with("NSpid:") && l.trim_end().ends_with("\t1"))
            })
            .unwrap_or(false),
        _ => restored == root,
    };
    if !same {
        return Err(format!(
            "restored root is {restored}, dumped pid was {root}"
        ));
    }

    // Carries on: a new line, and the right one.
    let after = wait_for(w, kind.timeout(), |l| l.len() > n);
    let Some(next) = after.get(n) else {
        return Err(format!(
            "{} printed nothing after restore (last line {last:?})",
            kind.label()
        ));
    };
    let good = match kind {
        Kind::Small | Kind::Namespaced => {
            match (last.trim().parse::<u64>(), next.trim().parse::<u64>()) {
                (Ok(a), Ok(b)) => b == a + 1,
                _ => false,
            }
        }
        Kind::Memhog(_) => {
            let f: Vec<&str> = next.split_whitespace().collect();
            f.len() == 3 && f[1] == checksum && f[2] == "ok"
        }
    };
    if !good {
        return Err(format!(
            "{} after restore: {next:?} does not follow {last:?}",
            kind.label()
        ));
    }
    Ok(Sample {
        dump,
        restore,
        frozen_us: stats.frozen_time,
        pages_written: stats.pages_written,
    })
}

// ---------------------------------------------------------------------------------------
// Report.

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn gbps(mib: u64, secs: f64) -> f64 {
    mib as f64 * MIB / secs / 1e9
}

fn opt(v: Option<f64>, prec: usize) -> String {
    v.map_or("-".into(), |x| format!("{x:.prec$}"))
}

struct Limits {
    mib: u64,
    touch_s: f64,
    readv_s: f64,
}

struct Row {
    kind: Kind,
    runs: usize,
    failed: usize,
    dump_s: Option<f64>,
    frozen_ms: Option<f64>,
    restore_s: Option<f64>,
    dump_rss: Option<f64>,
    restore_rss: Option<f64>,
    max_rss: Option<f64>,
    pages_mib: Option<f64>,
}

impl Row {
    fn new(kind: Kind, samples: &[Sample], failed: usize) -> Row {
        let col = |f: &dyn Fn(&Sample) -> f64| median(samples.iter().map(f).collect());
        let rss = |r: &StasisRun| r.maxrss_kib as f64 / 1024.0;
        Row {
            kind,
            runs: samples.len(),
            failed,
            dump_s: col(&|s| s.dump.wall.as_secs_f64()),
            frozen_ms: col(&|s| s.frozen_us as f64 / 1000.0),
            restore_s: col(&|s| s.restore.wall.as_secs_f64()),
            dump_rss: col(&|s| rss(&s.dump)),
            restore_rss: col(&|s| rss(&s.restore)),
            max_rss: samples
                .iter()
                .flat_map(|s| [rss(&s.dump), rss(&s.restore)])
                .max_by(f64::total_cmp),
            pages_mib: col(&|s| (s.pages_written as usize * PAGE) as f64 / MIB),
        }
    }
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "MISS",
        None => "n/a",
    }
}

fn print_report(bin: &Path, limits: &[Limits], rows: &[Row]) {
    let limit = |mib: u64| limits.iter().find(|l| l.mib == mib);
    println!();
    println!("stasis: {}", bin.display());
    if let Ok(thp) = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled") {
        println!("transparent hugepages: {}", thp.trim());
    }
    println!("GB/s = 10^9 bytes/s; times are medians over the runs");
    if let Some(kib) = own_rss_kib() {
        println!(
            "stasis RSS figures include this bench's own RSS, {:.1} MiB (kernel accounting)",
            kib as f64 / 1024.0
        );
    }
    println!();
    println!("Machine limits");
    println!(
        "{:>8} {:>10} {:>10} {:>10} {:>10}",
        "MiB", "touch s", "touch GB/s", "readv s", "readv GB/s"
    );
    for l in limits {
        println!(
            "{:>8} {:>10.4} {:>10.2} {:>10.4} {:>10.2}",
            l.mib,
            l.touch_s,
            gbps(l.mib, l.touch_s),
            l.readv_s,
            gbps(l.mib, l.readv_s)
        );
    }
    println!();
    println!("Dump and restore");
    println!(
        "{:<16} {:>4} {:>9} {:>8} {:>9} {:>10} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9}",
        "workload",
        "runs",
        "dump s",
        "dump GB/s",
        "frozen ms",
        "restore s",
        "rest GB/s",
        "dump RSS",
        "rest RSS",
        "img MiB",
        "dump/tch",
        "rest/tch",
        "dump/rdv"
    );
    for r in rows {
        let per_s = |t: Option<f64>| r.kind.mib().zip(t).map(|(m, t)| gbps(m, t));
        let lim = r.kind.mib().and_then(limit);
        let runs = if r.failed > 0 {
            format!("{}+{}F", r.runs, r.failed)
        } else {
            r.runs.to_string()
        };
        println!(
            "{:<16} {:>4} {:>9} {:>8} {:>9} {:>10} {:>9} {:>9} {:>8} {:>8} {:>9} {:>9} {:>9}",
            r.kind.label(),
            runs,
            opt(r.dump_s, 4),
            opt(per_s(r.dump_s), 2),
            opt(r.frozen_ms, 1),
            opt(r.restore_s, 4),
            opt(per_s(r.restore_s), 2),
            opt(r.dump_rss, 1),
            opt(r.restore_rss, 1),
            opt(r.pages_mib, 1),
            opt(lim.zip(r.dump_s).map(|(l, d)| d / l.touch_s), 2),
            opt(lim.zip(r.restore_s).map(|(l, d)| d / l.touch_s), 2),
            opt(lim.zip(r.dump_s).map(|(l, d)| l.readv_s / d), 2),
        );
    }
    println!("(RSS in MiB: peak RSS of the stasis process; img MiB: pages written by the dump;");
    println!(" dump/tch, rest/tch: time / first-touch time of the same size;");
    println!(" dump/rdv: dump throughput / process_vm_readv throughput;");
    println!(
        " counter (ns): the counter as the init of pid, net, uts and ipc namespaces of its own)"
    );

    println!();
    println!("Targets");
    let big = rows.iter().find(|r| r.kind.mib() == Some(BIG_MIB));
    let big_touch = limit(BIG_MIB).map(|l| l.touch_s);
    let small = rows.iter().find(|r| matches!(r.kind, Kind::Small));
    let ratio = |t: Option<f64>| big_touch.zip(t).map(|(l, t)| t / l);
    let dump_ratio = ratio(big.and_then(|r| r.dump_s));
    let rest_ratio = ratio(big.and_then(|r| r.restore_s));
    let small_ms = |t: Option<f64>| t.map(|t| t * 1000.0);
    let small_dump = small_ms(small.and_then(|r| r.dump_s));
    let small_rest = small_ms(small.and_then(|r| r.restore_s));
    let max_rss = rows.iter().filter_map(|r| r.max_rss).max_by(f64::total_cmp);
    let line = |what: &str, got: String, pass: Option<bool>| {
        println!("  {:<4} {what:<52} {got}", verdict(pass));
    };
    line(
        "1 GiB dump    <= 1.25 x first touch",
        format!("{}x", opt(dump_ratio, 2)),
        dump_ratio.map(|x| x <= MAX_RATIO_TO_TOUCH),
    );
    line(
        "1 GiB restore <= 1.25 x first touch",
        format!("{}x", opt(rest_ratio, 2)),
        rest_ratio.map(|x| x <= MAX_RATIO_TO_TOUCH),
    );
    let small_max_ms = SMALL_MAX.as_secs_f64() * 1000.0;
    line(
        "small process dump    <= 20 ms",
        format!("{} ms", opt(small_dump, 1)),
        small_dump.map(|x| x <= small_max_ms),
    );
    line(
        "small process restore <= 20 ms",
        format!("{} ms", opt(small_rest, 1)),
        small_rest.map(|x| x <= small_max_ms),
    );
    line(
        "stasis peak RSS <= 64 MiB (worst of every run)",
        format!("{} MiB", opt(max_rss, 1)),
        max_rss.map(|x| x <= MAX_RSS_MIB),
    );
}

// ---------------------------------------------------------------------------------------

/// `$STASIS_BIN`, else the `stasis` built in the same profile as this binary.
fn stasis_binary() -> PathBuf {
    if std::env::var_os("STASIS_BIN").is_none() {
        if let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|e| e.parent().map(Path::to_path_buf))
        {
            let p = dir.join("stasis");
            if p.exists() {
                return p;
            }
        }
    }
    stasis_tests::stasis_bin()
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("stasis-bench: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    if skip_unless_root("stasis-bench") {
        return ExitCode::SUCCESS;
    }
    let start = Instant::now();
    let bin = stasis_binary();
    if bin.components().any(|c| c.as_os_str() == "debug") {
        eprintln!(
            "warning: {} is a debug build; build with `cargo build --release -p stasis-cli`",
            bin.display()
        );
    }
    let mut errors = Vec::new();

    eprintln!("machine limits ...");
    let mut limits = Vec::new();
    for &mib in &args.sizes {
        let mut touch = Vec::new();
        let mut readv = Vec::new();
        for _ in 0..args.runs {
            match first_touch(mib).and_then(|t| Ok((t, vm_readv(mib)?))) {
                Ok((t, r)) => {
                    touch.push(t.as_secs_f64());
                    readv.push(r.as_secs_f64());
                }
                Err(e) => errors.push(format!("machine limits, {mib} MiB: {e}")),
            }
        }
        if let (Some(touch_s), Some(readv_s)) = (median(touch), median(readv)) {
            limits.push(Limits {
                mib,
                touch_s,
                readv_s,
            });
        }
    }

    let kinds: Vec<Kind> = [Kind::Small, Kind::Namespaced]
        .into_iter()
        .chain(args.sizes.iter().map(|&m| Kind::Memhog(m)))
        .collect();
    let mut rows = Vec::new();
    for kind in kinds {
        let mut samples = Vec::new();
        let mut failed = 0;
        for i in 0..args.runs {
            let t = Instant::now();
            eprintln!("{} run {} ...", kind.label(), i + 1);
            match bench_once(&bin, kind) {
                Ok(s) => samples.push(s),
                Err(e) => {
                    failed += 1;
                    errors.push(format!("{} run {}: {e}", kind.label(), i + 1));
                }
            }
            // Another run only if it fits in the budget (at the pace of this one).
            let next = t.elapsed().mul_f64(1.2);
            if i + 1 < args.runs && start.elapsed() + next > args.budget {
                eprintln!(
                    "{}: stopping after {} run(s) to stay within the {} s budget",
                    kind.label(),
                    i + 1,
                    args.budget.as_secs()
                );
                break;
            }
        }
        rows.push(Row::new(kind, &samples, failed));
    }
    if let Some(dir) = workload("counter").parent() {
        let _ = std::fs::remove_dir_all(dir);
    }

    print_report(&bin, &limits, &rows);
    let servers = servers::bench(&mut errors);
    servers::print(&servers);
    let mut ctr = Vec::new();
    ctr.extend(containers::bench("stasis", &bin, args.runs, &mut errors));
    if let Some(criu) = &args.criu {
        println!("\n(--criu: {})", criu.display());
        ctr.extend(containers::bench("--criu", criu, args.runs, &mut errors));
    }
    containers::print(&ctr);
    println!("\ntotal bench time: {:.1} s", start.elapsed().as_secs_f64());
    if errors.is_empty() {
        ExitCode::SUCCESS
    } else {
        println!("\nErrors:");
        for e in &errors {
            println!("  {e}");
        }
        ExitCode::FAILURE
    }
}
