//! Kill safety (docs/kill-safety.md): a dumper killed at any moment leaves the tree running,
//! untraced, with its signal masks, memory map and memory intact, or (killed after a complete
//! dump without -R) a restorable image; SIGTERM and SIGINT make a failed dump; a killed
//! restorer leaves no task stopped or traced.
//!
//! Kill points are random, from a seed printed by each test (set STASIS_KILL_SEED to replay),
//! spread over the time a whole dump or restore of the workload takes.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stasis_tests::*;

/// xorshift64*, seeded from $STASIS_KILL_SEED or the clock.
struct Rng(u64);

impl Rng {
    fn new(test: &str) -> Rng {
        let seed = std::env::var("STASIS_KILL_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(1)
            });
        eprintln!("{test}: STASIS_KILL_SEED={seed}");
        Rng(seed | 1)
    }
    /// Uniform in 0..max.
    fn below(&mut self, max: Duration) -> Duration {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        let x = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d);
        Duration::from_nanos(x % (max.as_nanos() as u64).max(1))
    }
}

/// What a killed dump must leave as it was: each thread's signal mask, and the memory map.
#[derive(Debug, PartialEq)]
struct Snapshot {
    masks: Vec<(u32, String)>,
    maps: Vec<String>,
}

fn snapshot(pid: u32) -> Snapshot {
    let masks = thread_ids(pid)
        .into_iter()
        .map(|t| {
            let blk = status_field(&format!("/proc/{pid}/task/{t}/status"), "SigBlk:");
            (t, blk)
        })
        .collect();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect();
    Snapshot { masks, maps }
}

/// Spawns `stasis dump` of `w` into `img` (no -o: errors go to its stderr).
fn spawn_dump(w: &Workload, img: &Path, leave_running: bool) -> Child {
    let _ = std::fs::remove_dir_all(img);
    std::fs::create_dir_all(img).expect("images dir");
    let pid = w.pid.to_string();
    let mut cmd = Command::new(stasis_bin());
    cmd.args(["dump", "-t", &pid, "-D"]).arg(img);
    if leave_running {
        cmd.arg("-R");
    }
    cmd.stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn stasis dump")
}

/// How long a whole `dump -R` of `w` takes, from spawn to exit.
fn dump_duration(w: &Workload, img: &Path) -> Duration {
    let t0 = Instant::now();
    let out = spawn_dump(w, img, true).wait_with_output().expect("dump");
    check_ok("timing dump", &out);
    t0.elapsed()
}

/// The workload runs on as `before`: alive, every thread untraced and not stopped, the same
/// signal masks and memory map, and it still prints good lines.
fn assert_untouched(w: &Workload, before: &Snapshot, what: &str) {
    let pid = w.pid;
    assert!(alive(pid), "{what}: the workload died");
    assert_threads_free(pid, what);
    let now = snapshot(pid);
    assert_eq!(now.masks, before.masks, "{what}: signal masks changed");
    let gone: Vec<&String> = before
        .maps
        .iter()
        .filter(|l| !now.maps.contains(l))
        .collect();
    let new: Vec<&String> = now
        .maps
        .iter()
        .filter(|l| !before.maps.contains(l))
        .collect();
    assert!(
        gone.is_empty() && new.is_empty(),
        "{what}: memory map changed: gone {gone:#?}, new {new:#?}"
    );
    assert_prints_on(w, what);
}

/// New lines come, and all of them are good: memhog's checksums verify, the threads' sum grows.
fn assert_prints_on(w: &Workload, what: &str) {
    let n = w.lines().len();
    let after = w.wait_lines(n + 3, Duration::from_secs(10));
    assert!(
        after.len() >= n + 3,
        "{what}: the workload stopped printing"
    );
    for l in &after[n.saturating_sub(1)..] {
        assert!(!l.contains("BAD"), "{what}: memory changed: {l}");
    }
    if w.out.to_string_lossy().contains("threads") {
        let sum = |l: &String| nums(l).get(1).copied().unwrap_or(0);
        let last = &after[after.len() - 1];
        let earlier = &after[after.len() - 3];
        assert!(
            sum(last) > sum(earlier),
            "{what}: the threads stopped counting"
        );
    }
}

/// The dumper of `w` killed (`sig`) after `delay`; returns whether it had finished first, and
/// its status.
fn dump_and_signal(
    w: &Workload,
    img: &Path,
    leave_running: bool,
    delay: Duration,
    sig: i32,
) -> (bool, std::process::Output) {
    let child = spawn_dump(w, img, leave_running);
    std::thread::sleep(delay);
    // SAFETY: kill(2) of our own child, not yet reaped (so its pid is still its own).
    unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    // Its stderr reaches EOF once the tracer it forked (see stasis::dump::abort) is gone too,
    // reparented to us (the tests' subreaper): reap it.
    let out = child.wait_with_output().expect("wait for stasis");
    reap_orphans();
    (out.status.success(), out)
}

fn reap_orphans() {
    loop {
        let mut st = 0;
        // SAFETY: non-blocking waitpid for any child, status into a local.
        if unsafe { libc::waitpid(-1, &mut st, libc::WNOHANG | libc::__WALL) } <= 0 {
            break;
        }
    }
}

/// After a dump without -R that completed: the tree is gone and its image restores.
fn restore_completed(w: &Workload, img: &Path, what: &str) {
    let end = Instant::now() + Duration::from_secs(5);
    while alive(w.pid) && Instant::now() < end {
        reap(w.pid);
        std::thread::sleep(Duration::from_millis(5));
    }
    reap(w.pid);
    assert!(
        !alive(w.pid),
        "{what}: dump completed without -R, tree alive"
    );
    assert!(
        img.join("inventory.img").exists(),
        "{what}: no inventory.img"
    );
    let out = stasis(&["restore", "-D", img.to_str().expect("utf8"), "-d"]);
    check_ok(&format!("{what}: restore of the completed dump"), &out);
    assert_prints_on(w, what);
}

/// Kills (SIGKILL) the dumper of `w` at `trials` random points, half with -R, and checks each
/// time that the workload runs on untouched (or, dumped completely without -R, restores).
fn kill_dumper_at_random_points(w: &Workload, rng: &mut Rng, trials: usize) {
    let img = w.dir.join("killed-images");
    let dur = dump_duration(w, &img);
    eprintln!("{}: a whole dump takes {dur:?}", w.out.display());
    let mut before = snapshot(w.pid);
    for i in 0..trials {
        let leave_running = i % 2 == 0;
        let delay = rng.below(dur + dur / 10);
        let what = format!(
            "trial {i} (kill after {delay:?} of {dur:?}, {})",
            if leave_running { "-R" } else { "no -R" }
        );
        let (finished, out) = dump_and_signal(w, &img, leave_running, delay, libc::SIGKILL);
        let complete = img.join("inventory.img").exists();
        if !leave_running && !alive(w.pid) {
            assert!(complete, "{what}: tree killed without a complete image");
            restore_completed(w, &img, &what);
            before = snapshot(w.pid);
            continue;
        }
        if finished {
            assert!(complete, "{what}: dump succeeded without inventory.img");
        }
        let _ = out;
        assert_untouched(w, &before, &what);
    }
}

#[test]
fn killed_dumper_leaves_the_checksummer_running() {
    let _g = serial_root!();
    let mut rng = Rng::new(test_name!());
    let w = Workload::start("killed-memhog", &workload("memhog"), &["64"]);
    w.wait_lines(2, Duration::from_secs(20));
    kill_dumper_at_random_points(&w, &mut rng, 12);
}

#[test]
fn killed_dumper_leaves_the_threads_running() {
    let _g = serial_root!();
    let mut rng = Rng::new(test_name!());
    let w = Workload::start("killed-threads", &workload("manythreads"), &["8"]);
    w.wait_lines(3, Duration::from_secs(10));
    kill_dumper_at_random_points(&w, &mut rng, 16);
}

/// The tracer itself killed in the middle of each injected syscall in turn (through the
/// test-only seam `STASIS_TRACER_DIE_AT`, both after the syscall ran and before), as `pkill -9
/// stasis` or the OOM killer could: every thread runs on untraced, with its own registers
/// (the busy threads' XMM values hold), signal masks and memory. Only the scratch pages stay
/// mapped, as docs/kill-safety.md says.
fn kill_tracer_in_each_injected_syscall(test: &str, w: &Workload, stride: usize) {
    let img = w.dir.join("tracer-killed-images");
    // The net needs this kernel's vdso and the task's code to offer what it uses; without it
    // a dying tracer still hurts a thread (docs/kill-safety.md), which this test would report
    // as a failure of the net rather than its absence.
    let _ = std::fs::remove_dir_all(&img);
    std::fs::create_dir_all(&img).expect("images dir");
    let log = img.join("net.log");
    let out = Command::new(stasis_bin())
        .args(["dump", "-R", "-v4", "-t", &w.pid.to_string(), "-D"])
        .arg(&img)
        .arg("-o")
        .arg(&log)
        .output()
        .expect("stasis dump");
    check_ok("a dump with the net", &out);
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    if let Some(why) = text.lines().find(|l| l.contains("injecting without a net")) {
        skip(test, &format!("no safety net here: {why}"));
        return;
    }
    let before = snapshot(w.pid);
    let mut n = 1;
    let mut tried = 0;
    loop {
        let at = if tried % 2 == 0 {
            n.to_string()
        } else {
            format!("{n}:loaded")
        };
        let what = format!("the tracer killed in injected syscall {at}");
        let _ = std::fs::remove_dir_all(&img);
        std::fs::create_dir_all(&img).expect("images dir");
        let out = Command::new(stasis_bin())
            .args(["dump", "-R", "-t", &w.pid.to_string(), "-D"])
            .arg(&img)
            .env("STASIS_TRACER_DIE_AT", &at)
            .stdout(Stdio::null())
            .output()
            .expect("stasis dump");
        reap_orphans();
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.contains("the tracer dies") {
            // Past the last injected syscall: the dump ran to its end.
            check_ok(&what, &out);
            assert!(tried > 2, "{what}: the seam was never reached: {stderr}");
            eprintln!("{}: {tried} tracer deaths tried", w.out.display());
            return;
        }
        assert!(!out.status.success(), "{what}: the dump reported success");
        assert!(alive(w.pid), "{what}: the workload died");
        assert_threads_free(w.pid, &what);
        // A thread the dying tracer left in its injected syscall puts its mask back when it
        // next runs (the net's rt_sigreturn): on a busy machine that may take a moment.
        let end = Instant::now() + Duration::from_secs(2);
        let mut masks = snapshot(w.pid).masks;
        while masks != before.masks && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
            masks = snapshot(w.pid).masks;
        }
        assert_eq!(masks, before.masks, "{what}: signal masks changed");
        assert_prints_on(w, &what);
        tried += 1;
        if tried % 2 == 0 {
            n += stride;
        }
    }
}

#[test]
fn killed_tracer_leaves_busy_threads_their_registers() {
    let _g = serial_root!();
    let w = Workload::start("tracer-killed-threads", &workload("threads"), &[]);
    w.wait_lines(3, Duration::from_secs(10));
    kill_tracer_in_each_injected_syscall(test_name!(), &w, 1);
}

#[test]
fn killed_tracer_leaves_the_checksummer_running() {
    let _g = serial_root!();
    let w = Workload::start("tracer-killed-memhog", &workload("memhog"), &["32"]);
    w.wait_lines(2, Duration::from_secs(20));
    kill_tracer_in_each_injected_syscall(test_name!(), &w, 1);
}

#[test]
fn sigterm_and_sigint_make_a_failed_dump() {
    let _g = serial_root!();
    let w = Workload::start("killed-term", &workload("memhog"), &["192"]);
    w.wait_lines(2, Duration::from_secs(20));
    let img = w.dir.join("term-images");
    let before = snapshot(w.pid);
    let pages = |img: &Path| -> u64 {
        std::fs::read_dir(img)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("pages-"))
                    .filter_map(|e| e.metadata().ok())
                    .map(|m| m.len())
                    .sum()
            })
            .unwrap_or(0)
    };
    for (sig, leave_running, copying) in [
        (libc::SIGTERM, true, false),
        (libc::SIGTERM, false, false),
        (libc::SIGINT, false, false),
        (libc::SIGTERM, true, true),
    ] {
        let when = if copying { "copying memory" } else { "seized" };
        let what = format!("signal {sig}, -R {leave_running}, once {when}");
        let child = spawn_dump(&w, &img, leave_running);
        // Once the tree is seized, the 192 MiB of memory still take a while to dump.
        let end = Instant::now() + Duration::from_secs(10);
        while (tracer_of(w.pid) == 0 || (copying && pages(&img) == 0)) && Instant::now() < end {
            std::thread::sleep(Duration::from_micros(200));
        }
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        let out = child.wait_with_output().expect("wait for stasis");
        reap_orphans();
        let finished = out.status.success();
        assert!(!finished, "{what}: the dump must fail (or take longer)");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("interrupted by signal"),
            "{what}: stderr {err}"
        );
        assert!(!img.join("inventory.img").exists(), "{what}: inventory.img");
        // The copy of the task's memory stops within a buffer, not at the end of the task.
        let copied = pages(&img);
        eprintln!("{what}: {copied} bytes of pages written");
        assert!(
            copied < 160 << 20,
            "{what}: {copied} bytes of the 192 MiB copied: the signal did not stop the copy"
        );
        assert_untouched(&w, &before, &what);
    }
}

/// Processes named `comm` (restored tasks, or stubs before they are named).
fn named(comm: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| {
                    std::fs::read_to_string(format!("/proc/{p}/comm"))
                        .is_ok_and(|c| c.trim() == comm)
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn killed_restorer_leaves_nothing_stopped_or_traced() {
    let _g = serial_root!();
    let mut rng = Rng::new(test_name!());
    let w = Workload::start("killed-restorer", &workload("manythreads"), &["4"]);
    w.wait_lines(3, Duration::from_secs(10));
    let img = w.images();
    let img_s = img.to_str().expect("utf8").to_string();
    let pid = w.pid.to_string();
    check_ok("dump", &stasis(&["dump", "-t", &pid, "-D", &img_s]));
    reap(w.pid);
    // A whole restore, timed, then killed.
    let t0 = Instant::now();
    check_ok("restore", &stasis(&["restore", "-D", &img_s, "-d"]));
    let dur = t0.elapsed();
    kill_tree(&[w.pid]);
    for i in 0..24 {
        let delay = rng.below(dur + dur / 10);
        let what = format!("trial {i} (kill after {delay:?} of {dur:?})");
        let end = Instant::now() + Duration::from_secs(5);
        while alive(w.pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        let mut child = Command::new(stasis_bin())
            .args(["restore", "-D", &img_s, "-d"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn restore");
        std::thread::sleep(delay);
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
        let _ = child.wait();
        // Tasks it made die with it (or, restored completely, run): none may stay stopped or
        // traced. Stubs are the stasis binary until named.
        std::thread::sleep(Duration::from_millis(50));
        let mut left = named("manythreads");
        left.extend(named("stasis"));
        left.push(w.pid);
        for p in left {
            if !alive(p) {
                continue;
            }
            for t in thread_ids(p) {
                let status = format!("/proc/{p}/task/{t}/status");
                let state = status_field(&status, "State:");
                assert!(
                    !state.starts_with('t') && !state.starts_with('T'),
                    "{what}: {p}/{t} left {state}"
                );
                assert_eq!(
                    status_field(&status, "TracerPid:"),
                    "0",
                    "{what}: {p}/{t} left traced"
                );
            }
        }
        if alive(w.pid) {
            // Restored completely before the kill: it runs, as any restored tree. (Its output
            // goes on at the dumped offset, over what earlier restores wrote: watch the offset.)
            let pos = || status_field(&format!("/proc/{}/fdinfo/1", w.pid), "pos:");
            let (p0, end) = (pos(), Instant::now() + Duration::from_secs(10));
            while pos() == p0 && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
            let wchan = std::fs::read_to_string(format!("/proc/{}/wchan", w.pid));
            let ppid = status_field(&format!("/proc/{}/status", w.pid), "PPid:");
            assert_ne!(
                pos(),
                p0,
                "{what}: the restored tree does not run (wchan {wchan:?}, ppid {ppid})"
            );
        }
        kill_tree(&[w.pid]);
    }
}
