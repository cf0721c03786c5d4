//! Helpers for the end-to-end tests: build the C workloads, run them as children of a
//! subreaper (this test process), drive the `stasis` binary, and read what the programs print.
//!
//! Restoring at the same PID right after a kill needs the PID free at once; PID 1 on CI
//! machines reaps late, so the test process makes itself a child subreaper and reaps every
//! task it started or that was reparented to it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

pub mod containers;
pub mod fuzz;
pub mod runc;
mod servers;
pub use servers::{redis_server, start_redis, Postgres, Redis};

/// End-to-end tests share the PID space and the subreaper: run them one at a time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Root is required to checkpoint; without it the test prints why and is skipped. cargo
/// counts a returning test as passed, so skips are also appended to $STASIS_SKIP_LOG, from
/// which scripts/test.sh reports them as skipped.
pub fn skip_unless_root(test: &str) -> bool {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        skip(test, "needs root (ptrace of any task, clone3 with set_tid)");
        return true;
    }
    // SAFETY: prctl with integer arguments; makes orphaned restored tasks our children.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    false
}

/// One at a time, and as root (else skipped, with why). None means skip. Tests start with
/// [`serial_root!`], which calls this with their name.
pub fn serial_root(test: &str) -> Option<MutexGuard<'static, ()>> {
    let g = serial();
    (!skip_unless_root(test)).then_some(g)
}

/// The start of every end-to-end test, `let _g = serial_root!();`: holds the lock that runs
/// them one at a time until the test ends, or, when not root, records the test (by its
/// function's name) as skipped and returns from it.
#[macro_export]
macro_rules! serial_root {
    () => {
        match $crate::serial_root($crate::test_name!()) {
            Some(guard) => guard,
            None => return,
        }
    };
}

/// The name of the function it is used in (the test's name, as cargo prints it), for
/// [`skip`] and [`serial_root`].
#[macro_export]
macro_rules! test_name {
    () => {{
        fn here() {}
        fn path_of<F>(_: F) -> &'static str {
            ::std::any::type_name::<F>()
        }
        $crate::fn_name(path_of(here))
    }};
}

/// The function's name in the path `type_name` gives a function `here` defined in it
/// (`crate::test::here`, or `crate::test::{{closure}}::here` in a closure).
pub fn fn_name(path: &'static str) -> &'static str {
    path.strip_suffix("::here")
        .unwrap_or(path)
        .rsplit("::")
        .find(|s| !s.starts_with('{'))
        .unwrap_or(path)
}

/// How long a test waits for the lines it expects of a program.
pub const T: Duration = Duration::from_secs(10);

/// Records a skipped test and why.
pub fn skip(test: &str, why: &str) {
    use std::io::Write;
    println!("SKIP {test}: {why}");
    if let Ok(log) = std::env::var("STASIS_SKIP_LOG") {
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
        {
            let _ = writeln!(f, "SKIP {test}: {why}");
        }
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The `stasis` binary: $STASIS_BIN, or the workspace's target dir (the README's test
/// command builds it first).
pub fn stasis_bin() -> PathBuf {
    if let Ok(p) = std::env::var("STASIS_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| workspace_root().join("target"));
    for profile in ["debug", "release"] {
        let p = target.join(profile).join("stasis");
        if p.exists() {
            return p;
        }
    }
    panic!(
        "stasis binary not found under {}: run `cargo build` first",
        target.display()
    );
}

/// A fresh directory under the system temp dir, removed when the test binary exits (image
/// sets run to hundreds of MiB; left behind, repeated runs fill the disk). Set
/// STASIS_KEEP_TEMP=1 to keep them for a post-mortem.
pub fn temp_dir(name: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    // One directory, whatever the name holds (a '/' would nest it under one left behind).
    let name = name.replace('/', "_");
    let d = std::env::temp_dir().join(format!("stasis-test-{}-{name}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("temp dir");
    remove_at_exit(&d);
    d
}

static TEMP_DIRS: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn remove_at_exit(dir: &Path) {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        // SAFETY: atexit takes a plain extern "C" fn with no captured state.
        unsafe { libc::atexit(remove_temp_dirs) };
    });
    TEMP_DIRS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(dir.to_path_buf());
}

extern "C" fn remove_temp_dirs() {
    if std::env::var_os("STASIS_KEEP_TEMP").is_some() {
        return;
    }
    let dirs = std::mem::take(&mut *TEMP_DIRS.lock().unwrap_or_else(|e| e.into_inner()));
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for dir in dirs {
        // A mount left under it (a failed test's container rootfs with host binds) would
        // have its contents deleted too: leave that directory alone.
        let prefix = dir.to_string_lossy().into_owned();
        let mounted = mountinfo.lines().any(|l| {
            l.split(' ')
                .nth(4)
                .is_some_and(|m| m == prefix || m.starts_with(&format!("{prefix}/")))
        });
        if mounted {
            eprintln!("left {} in place: a mount is still under it", dir.display());
        } else {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

/// Compiles `tests/workloads/<name>.c` once per test run; returns the binary.
pub fn workload(name: &str) -> PathBuf {
    workload_with(name, &[])
}

/// Like [`workload`], with extra compiler flags (e.g. `-mavx512f`).
pub fn workload_with(name: &str, flags: &[&str]) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| temp_dir("workloads"));
    let bin = dir.join(name);
    if !bin.exists() {
        let src = workspace_root()
            .join("tests/workloads")
            .join(format!("{name}.c"));
        let out = Command::new("gcc")
            .args(["-O2", "-pthread"])
            .args(flags)
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .output()
            .expect("gcc runs");
        assert!(
            out.status.success(),
            "gcc {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    bin
}

/// A program under test, started in its own session with stdout/stderr to a file.
pub struct Workload {
    pub pid: u32,
    pub out: PathBuf,
    pub dir: PathBuf,
}

impl Workload {
    pub fn start(name: &str, program: &Path, args: &[&str]) -> Workload {
        Workload::start_as(name, program, args, None)
    }

    /// [`Workload::start`], running as `user` (uid, gid) when given.
    pub fn start_as(
        name: &str,
        program: &Path,
        args: &[&str],
        user: Option<(u32, u32)>,
    ) -> Workload {
        use std::os::unix::process::CommandExt;
        let dir = temp_dir(name);
        let out = dir.join("out.txt");
        let f = std::fs::File::create(&out).expect("out file");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(std::process::Stdio::null())
            .stdout(f.try_clone().expect("dup"))
            .stderr(f)
            .current_dir(&dir);
        if let Some((uid, gid)) = user {
            // std also drops root's supplementary groups (setgroups(0)).
            cmd.uid(uid).gid(gid);
        }
        // SAFETY: setsid in the child before exec is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn workload");
        let pid = child.id();
        std::mem::forget(child); // reaped by pid in kill_and_reap
        Workload { pid, out, dir }
    }

    /// A python3 program given as source.
    pub fn python(name: &str, script: &str) -> Workload {
        Workload::start(name, Path::new("/usr/bin/python3"), &["-c", script])
    }

    /// The complete lines the program has printed (a line still being written, with no
    /// newline yet, is left out: reading it half-written made tests flaky).
    pub fn lines(&self) -> Vec<String> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
        complete.lines().map(str::to_string).collect()
    }

    /// Waits until the program has printed at least `n` lines.
    pub fn wait_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let end = Instant::now() + timeout;
        loop {
            let l = self.lines();
            if l.len() >= n || Instant::now() > end {
                return l;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Creates the file `go` the program waits for after the restore, waits for its first `n`
    /// lines, kills the restored tree (`pids`) and returns the lines.
    pub fn go_and_collect(&self, pids: &[u32], n: usize) -> Vec<String> {
        std::fs::write(self.dir.join("go"), b"").expect("write go");
        let lines = self.wait_lines(n, Duration::from_secs(10));
        kill_tree(pids);
        lines
    }

    /// The images dir, 0700 whatever the umask (a restore refuses one others can write).
    pub fn images(&self) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let d = self.dir.join("images");
        std::fs::create_dir_all(&d).expect("images dir");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).expect("chmod");
        d
    }
}

impl Drop for Workload {
    /// A failed assertion must not leak the workload: kill its whole session.
    fn drop(&mut self) {
        let mut pids = session_pids(self.pid);
        pids.push(self.pid);
        kill_tree(&pids);
    }
}

/// Runs the stasis binary.
pub fn stasis(args: &[&str]) -> Output {
    Command::new(stasis_bin())
        .args(args)
        .output()
        .expect("run stasis")
}

pub fn check_ok(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Reaps `pid` if it is our child (or was reparented to us).
pub fn reap(pid: u32) {
    let mut st = 0;
    // SAFETY: waitpid for a specific pid with a local status.
    unsafe { libc::waitpid(pid as libc::pid_t, &mut st, libc::__WALL) };
}

pub fn alive(pid: u32) -> bool {
    // A zombie still has /proc/<pid>; look at its state.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => !s
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Kills a whole restored or running tree (by session) and reaps what it can.
pub fn kill_tree(pids: &[u32]) {
    for &p in pids {
        // SAFETY: plain kill(2).
        unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) };
    }
    for &p in pids {
        reap(p);
    }
    // Reap anything else reparented to us.
    loop {
        let mut st = 0;
        // SAFETY: non-blocking waitpid for any child.
        let r = unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL) };
        if r <= 0 {
            break;
        }
    }
}

/// Pids of the session led by `sid` (the workload's tree).
pub fn session_pids(sid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                let f: Vec<&str> = s
                    .rsplit(')')
                    .next()
                    .unwrap_or("")
                    .split_whitespace()
                    .collect();
                if f.get(3).and_then(|x| x.parse::<u32>().ok()) == Some(sid) {
                    out.push(pid);
                }
            }
        }
    }
    out.sort_unstable();
    out
}

/// What a task looks like from outside: its mappings (ranges, protections, offsets, paths and
/// VmFlags), exe, cmdline, cwd, credentials, signal dispositions and mask, limits, umask,
/// personality and oom_score_adj. A restore must give back the same.
/// A fingerprint's SigBlk line while the task waits in a syscall that swaps its mask.
const SIGBLK_IN_WAIT: &str = "SigBlk: (a waiting syscall's own mask)";

/// Whether `pid` (its main thread) is in rt_sigtimedwait, rt_sigsuspend, ppoll or pselect6.
fn in_mask_swapping_wait(pid: u32) -> bool {
    let sc = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
    let nr = sc
        .split_whitespace()
        .next()
        .and_then(|n| n.parse::<i64>().ok());
    matches!(
        nr,
        Some(
            libc::SYS_rt_sigtimedwait
                | libc::SYS_rt_sigsuspend
                | libc::SYS_ppoll
                | libc::SYS_pselect6
        )
    )
}

pub fn fingerprint(pid: u32) -> Vec<String> {
    let read = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/{f}")).unwrap_or_default();
    let link = |f: &str| {
        std::fs::read_link(format!("/proc/{pid}/{f}"))
            .map(|p| p.display().to_string())
            .unwrap_or_default()
    };
    // (start, end, perms, offset, path, VmFlags) per mapping.
    let mut vmas: Vec<(u64, u64, String, String, String, String)> = Vec::new();
    for l in read("smaps").lines() {
        let f: Vec<&str> = l.split_whitespace().collect();
        if l.starts_with("VmFlags:") {
            if let Some(v) = vmas.last_mut() {
                v.5 = l.to_string();
            }
        } else if f.first().is_some_and(|r| {
            r.contains('-') && r.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
        }) {
            let (a, b) = f[0].split_once('-').unwrap();
            vmas.push((
                u64::from_str_radix(a, 16).unwrap(),
                u64::from_str_radix(b, 16).unwrap(),
                f[1].to_string(),
                f[2].to_string(),
                // A mapped socket (a packet ring) is a new socket: its inode differs.
                f.get(5..)
                    .map(|p| p.join(" "))
                    .map(|p| {
                        if p.starts_with("socket:[") {
                            "socket:[…]".into()
                        } else {
                            p
                        }
                    })
                    .unwrap_or_default(),
                String::new(),
            ));
        }
    }
    // Adjacent anonymous mappings alike in all but their anon_vma (a heap grown after fork()
    // shows as two) are one mapping to a new mm: compare them merged.
    let mut merged: Vec<(u64, u64, String, String, String, String)> = Vec::new();
    for v in vmas {
        let anon = v.4.is_empty() || v.4.starts_with('[');
        match merged.last_mut() {
            Some(m) if anon && m.1 == v.0 && m.2 == v.2 && m.4 == v.4 && m.5 == v.5 => m.1 = v.1,
            _ => merged.push(v),
        }
    }
    let mut out = Vec::new();
    for (start, end, perms, offset, path, flags) in merged {
        out.push(format!("{start:08x}-{end:08x} {perms} {offset} {path}"));
        out.push(flags);
    }
    out.push(format!("exe {}", link("exe")));
    out.push(format!("cwd {}", link("cwd")));
    out.push(format!("cmdline {:?}", read("cmdline")));
    out.push(format!("comm {}", read("comm").trim()));
    for l in read("status").lines() {
        let keep = [
            "Umask",
            "Uid",
            "Gid",
            "Groups",
            "SigBlk",
            "SigIgn",
            "SigCgt",
            "CapInh",
            "CapPrm",
            "CapEff",
            "CapBnd",
            "CapAmb",
            "NoNewPrivs",
            "Threads",
        ];
        if l.starts_with("SigBlk:") && in_mask_swapping_wait(pid) {
            // rt_sigtimedwait, rt_sigsuspend, ppoll and pselect run with a mask of their own:
            // what /proc shows then is not the task's.
            out.push(SIGBLK_IN_WAIT.into());
        } else if keep.iter().any(|k| l.starts_with(&format!("{k}:"))) {
            out.push(l.to_string());
        }
    }
    out.push(format!("limits {}", read("limits")));
    // mm boundaries: start/end code, start stack, data, brk start, args, env; and the
    // scheduling policy with its real-time priority.
    let stat = read("stat");
    let f: Vec<&str> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .collect();
    for (name, field) in [
        ("start_code", 26),
        ("end_code", 27),
        ("start_stack", 28),
        ("start_data", 45),
        ("end_data", 46),
        ("start_brk", 47),
        ("rt_priority", 40),
        ("policy", 41),
        ("arg_start", 48),
        ("arg_end", 49),
        ("env_start", 50),
        ("env_end", 51),
    ] {
        out.push(format!("{name} {}", f.get(field - 3).unwrap_or(&"?")));
    }
    out.push(format!(
        "auxv {:?}",
        std::fs::read(format!("/proc/{pid}/auxv")).unwrap_or_default()
    ));
    out.push(format!("personality {}", read("personality").trim()));
    out.push(format!("oom_score_adj {}", read("oom_score_adj").trim()));
    out
}

/// Asserts two fingerprints match, naming the first difference.
pub fn assert_same_fingerprint(pid: u32, before: &[String], after: &[String]) {
    for (b, a) in before.iter().zip(after) {
        if (b == SIGBLK_IN_WAIT && a.starts_with("SigBlk:"))
            || (a == SIGBLK_IN_WAIT && b.starts_with("SigBlk:"))
        {
            continue;
        }
        assert_eq!(b, a, "pid {pid}: differs after restore");
    }
    assert_eq!(
        before.len(),
        after.len(),
        "pid {pid}: number of mappings/lines differs"
    );
}

/// The pids of `root`'s session and of all its descendants (some may lead sessions of their
/// own), sorted.
pub fn tree_and_session(root: u32) -> Vec<u32> {
    let mut pids = session_pids(root);
    pids.extend(tree_ids(root).iter().map(|t| t.0));
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// (pid, ppid, pgid, sid) of `root` and all its descendants, sorted by pid.
pub fn tree_ids(root: u32) -> Vec<(u32, u32, u32, u32)> {
    let mut out = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let f: Vec<u32> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .skip(1)
            .take(3)
            .filter_map(|x| x.parse().ok())
            .collect();
        if f.len() == 3 {
            out.push((p, f[0], f[1], f[2]));
        }
        if let Ok(rd) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in rd.flatten() {
                let c = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                todo.extend(c.split_whitespace().filter_map(|x| x.parse::<u32>().ok()));
            }
        }
    }
    out.sort_unstable();
    out
}

/// Dumps `w` (killing it), checks every task is gone, restores detached and returns the pids.
/// Every task must come back looking the same from outside (see [`fingerprint`]).
pub fn dump_kill_restore(w: &Workload) -> Vec<u32> {
    dump_kill_restore_with(w, &[], &[])
}

/// [`dump_kill_restore`] with extra flags for the dump and for the restore.
pub fn dump_kill_restore_with(
    w: &Workload,
    dump_flags: &[&str],
    restore_flags: &[&str],
) -> Vec<u32> {
    dump_kill_then_restore(w, dump_flags, restore_flags, || {})
}

/// [`dump_kill_restore_with`], running `between` once the tree is gone and before the restore
/// (to change the host as moving to another would).
pub fn dump_kill_then_restore(
    w: &Workload,
    dump_flags: &[&str],
    restore_flags: &[&str],
    between: impl FnOnce(),
) -> Vec<u32> {
    let before = tree_and_session(w.pid);
    let prints: Vec<(u32, Vec<String>)> = before.iter().map(|&p| (p, fingerprint(p))).collect();
    let img = w.images();
    let img_s = img.to_str().expect("utf8");
    let pid = w.pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "-D", img_s, "-o", "dump.log", "-v4"];
    args.extend_from_slice(dump_flags);
    let out = stasis(&args);
    check_ok("dump", &out);
    reap(w.pid);
    for &p in &before {
        reap(p);
        let end = Instant::now() + Duration::from_secs(5);
        while alive(p) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
            reap(p);
        }
        assert!(!alive(p), "task {p} still alive after dump");
    }
    between();
    let pidfile = w.dir.join("restored.pid");
    let mut args = vec![
        "restore",
        "-D",
        img_s,
        "-d",
        "-o",
        "restore.log",
        "-v4",
        "--pidfile",
        pidfile.to_str().expect("utf8"),
    ];
    args.extend_from_slice(restore_flags);
    let out = stasis(&args);
    check_ok("restore", &out);
    let root: u32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(root, w.pid, "restored root has the dumped pid");
    let after = tree_and_session(w.pid);
    assert_eq!(before, after, "every task is back with its pid");
    for (p, fp) in &prints {
        if fp.iter().any(|l| l.starts_with("exe ") && l.len() > 4) {
            assert_same_fingerprint(*p, fp, &fingerprint(*p));
        }
    }
    after
}

/// Starts python `script`, waits for its first line, dumps, kills and restores it (see
/// [`dump_kill_restore`]), then lets it go (see [`Workload::go_and_collect`]) and returns it
/// with its first `n` lines.
pub fn python_across_restore(name: &str, script: &str, n: usize) -> (Workload, Vec<String>) {
    let w = Workload::python(name, script);
    w.wait_lines(1, Duration::from_secs(10));
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, n);
    (w, lines)
}

/// Runs a python program until it has printed `ready` lines; dumps, kills and restores it;
/// returns what it printed after the restore once `more` lines have come (or the timeout), the
/// tree killed.
pub fn python_lines_after_restore(
    name: &str,
    script: &str,
    ready: usize,
    more: usize,
) -> Vec<String> {
    let w = Workload::python(name, script);
    w.wait_lines(ready, T);
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let lines = w.wait_lines(n + more, T);
    kill_tree(&pids);
    lines[n..].to_vec()
}

/// Runs a python program that prints a line of its state again and again; dumps, kills and
/// restores it; returns its first line and its first line after the restore.
pub fn python_line_before_and_after(name: &str, script: &str) -> (String, String) {
    let w = Workload::python(name, script);
    let before = w.wait_lines(1, T).first().cloned().unwrap_or_default();
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 1, T).get(n).cloned().unwrap_or_default();
    kill_tree(&pids);
    (before, after)
}

/// Asserts `w` runs on after a refused dump: not traced, not stopped, still printing.
pub fn assert_runs_on(w: &Workload) {
    assert_eq!(tracer_of(w.pid), 0, "task left traced");
    assert!(
        matches!(state_of(w.pid), 'S' | 'R'),
        "task state {}",
        state_of(w.pid)
    );
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, Duration::from_secs(10));
    assert!(after.len() >= n + 5, "task did not keep running");
}

/// Runs `stasis dump -t <w> -D <w's images>` with `extra` flags.
pub fn dump_workload(w: &Workload, extra: &[&str]) -> Output {
    let img = w.images();
    let pid = w.pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "-D", img.to_str().expect("utf8")];
    args.extend_from_slice(extra);
    stasis(&args)
}

/// Runs `stasis dump` of `w`, which must fail with a one-line error and leave no task of the
/// tree traced. Returns the error text.
pub fn dump_must_fail(w: &Workload) -> String {
    let pids = tree_and_session(w.pid);
    let o = dump_workload(w, &[]);
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "the dump must fail");
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    for p in &pids {
        assert_eq!(tracer_of(*p), 0, "{p} left traced");
    }
    e
}

/// The state letter of `/proc/<pid>/stat` ('?' if gone).
pub fn state_of(pid: u32) -> char {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit(')').next()?.trim_start().chars().next())
        .unwrap_or('?')
}

/// The pid tracing `pid` (0: none).
pub fn tracer_of(pid: u32) -> u32 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            l.strip_prefix("TracerPid:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

/// The numbers of a line, in order.
pub fn nums(line: &str) -> Vec<u64> {
    line.split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect()
}

/// Asserts the counter workload's lines count up from 0, none lost or repeated.
pub fn counter_is_continuous(lines: &[String]) {
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(nums(l)[0], i as u64, "line {i}: {l}");
    }
}

/// Whether Debian's `crit` (package criu) is installed.
pub fn have_crit() -> bool {
    Command::new("crit")
        .arg("--help")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// Decodes every image of `dir` with crit, failing on the first it rejects; returns how many.
pub fn crit_decode_all(dir: &Path) -> usize {
    let mut decoded = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("pages-") || !(name.ends_with(".img") || name.starts_with("stats-")) {
            continue;
        }
        let o = Command::new("crit")
            .args(["decode", "-i"])
            .arg(e.path())
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "crit decode {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        decoded += 1;
    }
    decoded
}

/// Whether someone else holds a flock on `path` (ours cannot be taken).
pub fn flock_taken(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: flock(2) on our own fd.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) != 0 }
}

/// Who blocks a write lock on `len` bytes at `start` of `path`: (lock type, owner pid) from
/// `cmd` (`F_GETLK` for POSIX locks, `F_OFD_GETLK` for OFD ones). `F_UNLCK` if nobody.
pub fn lock_probe(path: &Path, cmd: libc::c_int, start: i64, len: i64) -> (i16, i32) {
    use std::os::fd::AsRawFd;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    // SAFETY: struct flock is plain data; fcntl fills it.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = libc::F_WRLCK as i16;
    fl.l_start = start;
    fl.l_len = len;
    // SAFETY: F_GETLK / F_OFD_GETLK read and write our struct.
    unsafe { libc::fcntl(f.as_raw_fd(), cmd, &mut fl) };
    (fl.l_type, fl.l_pid)
}

/// A TCP port on 127.0.0.1 that nothing uses right now, for a server a test starts. Fixed
/// formulas collided between tests; the ports come from below the kernel's ephemeral range
/// (32768 and up), so no client connection can take one before the server binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    for _ in 0..12_000 {
        let k = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((std::process::id() * 7 + k) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in 20000-31999");
}

/// The threads of `pid`, sorted.
pub fn thread_ids(pid: u32) -> Vec<u32> {
    let mut t: Vec<u32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    t.sort_unstable();
    t
}

/// A field of a `status` file (`TracerPid:`, `State:`), trimmed; empty if absent.
pub fn status_field(path: &str, key: &str) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()))
        .unwrap_or_default()
}

/// Asserts every thread of `pid` is untraced and not stopped (what a failed or killed dump
/// must leave).
pub fn assert_threads_free(pid: u32, what: &str) {
    for t in thread_ids(pid) {
        let status = format!("/proc/{pid}/task/{t}/status");
        assert_eq!(
            status_field(&status, "TracerPid:"),
            "0",
            "{what}: {pid}/{t} left traced"
        );
        let state = status_field(&status, "State:");
        assert!(
            !state.starts_with('t') && !state.starts_with('T'),
            "{what}: {pid}/{t} left {state}"
        );
    }
}

/// The pid /proc/locks gives as the owner of the flock lock on `path`, if there is one.
pub fn flock_owner(path: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let ino = std::fs::metadata(path).ok()?.ino().to_string();
    std::fs::read_to_string("/proc/locks")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(" FLOCK "))
        .find(|l| {
            l.split_whitespace()
                .nth(5)
                .and_then(|f| f.rsplit(':').next())
                == Some(ino.as_str())
        })
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_string))
}

/// The children of `pid` (its main thread's).
pub fn children_of(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// The pid namespace's init under `unshare --pid --fork` (its only child), waited for (10 s).
pub fn init_of(unshare: u32) -> u32 {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(&p) = children_of(unshare).first() {
            return p;
        }
        assert!(Instant::now() < end, "unshare started no init");
        std::thread::sleep(Duration::from_millis(10));
    }
}
