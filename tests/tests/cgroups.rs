//! `--freeze-cgroup`: the tree is in a cgroup that the dump freezes while it seizes the tree,
//! under the v1 freezer hierarchy (what runc hands over on a hybrid machine) and under the
//! unified one. A dump that leaves the tree running must leave the cgroup thawed and the tasks
//! untraced; so must every dump that fails, at any point. Each test removes its cgroup.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use stasis_tests::*;

const V1: &str = "/sys/fs/cgroup/freezer";
const V2: &str = "/sys/fs/cgroup/unified";

/// A cgroup made for one test; on drop it is thawed, emptied (its tasks killed) and removed.
struct TestCgroup {
    path: PathBuf,
}

impl TestCgroup {
    /// None (the test recorded as skipped) when the hierarchy is not mounted here.
    fn new(hierarchy: &str, test: &str) -> Option<TestCgroup> {
        if !Path::new(hierarchy).join("cgroup.procs").exists() {
            skip(test, &format!("no cgroup hierarchy at {hierarchy}"));
            return None;
        }
        let path = Path::new(hierarchy).join(format!("stasis-test-{}-{test}", std::process::id()));
        std::fs::create_dir(&path).expect("mkdir cgroup");
        Some(TestCgroup { path })
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("utf8")
    }

    /// Moves process `pid`, all its threads, into the cgroup.
    fn add(&self, pid: u32) {
        std::fs::write(self.path.join("cgroup.procs"), pid.to_string()).expect("join cgroup");
    }

    fn procs(&self) -> Vec<u32> {
        std::fs::read_to_string(self.path.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// What the kernel says: v1 `freezer.state`, v2 the `frozen` line of `cgroup.events`.
    fn state(&self) -> String {
        let read = |f: &str| std::fs::read_to_string(self.path.join(f)).unwrap_or_default();
        if self.path.starts_with(V1) {
            read("freezer.state").trim().to_string()
        } else {
            read("cgroup.events")
                .lines()
                .find(|l| l.starts_with("frozen "))
                .unwrap_or("")
                .to_string()
        }
    }

    fn assert_thawed(&self) {
        let s = self.state();
        assert!(s == "THAWED" || s == "frozen 0", "cgroup left {s}");
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Thawed first: a v1-frozen task does not die of SIGKILL until it thaws.
        let _ = std::fs::write(self.path.join("freezer.state"), "THAWED");
        let _ = std::fs::write(self.path.join("cgroup.freeze"), "0");
        let end = Instant::now() + Duration::from_secs(5);
        loop {
            let procs = self.procs();
            kill_tree(&procs);
            // Sub-cgroups a test made (and could not remove while its tasks died) first.
            remove_subdirs(&self.path);
            if std::fs::remove_dir(&self.path).is_ok() || Instant::now() > end {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Removes the cgroup directories below `dir`, deepest first (their tasks killed).
fn remove_subdirs(dir: &Path) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            remove_subdirs(&p);
            let procs: Vec<u32> = std::fs::read_to_string(p.join("cgroup.procs"))
                .unwrap_or_default()
                .lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect();
            kill_tree(&procs);
            let _ = std::fs::remove_dir(&p);
        }
    }
}

/// The threads workload: "<total> <per thread x4>" every 20 ms, four counting threads.
fn start_threads(cg: &TestCgroup, name: &str) -> Workload {
    let w = Workload::start(name, &workload("threads"), &[]);
    cg.add(w.pid);
    w.wait_lines(3, T);
    w
}

/// The last line's numbers, once `more` lines have come after what there is now.
fn counts_after(w: &Workload, more: usize) -> Vec<u64> {
    let n = w.lines().len();
    let l = w.wait_lines(n + more, T);
    assert!(l.len() >= n + more, "the workload stopped printing");
    nums(l.last().expect("lines"))
}

/// Dump with -R: the tree goes on, every thread counting, untraced, its cgroup thawed.
fn leave_running(hierarchy: &str, test: &str) {
    let Some(cg) = TestCgroup::new(hierarchy, test) else {
        return;
    };
    let w = start_threads(&cg, test);
    let before = counts_after(&w, 1);
    let out = dump_workload(
        &w,
        &["-R", "--freeze-cgroup", cg.arg(), "-o", "dump.log", "-v4"],
    );
    check_ok("dump -R --freeze-cgroup", &out);
    cg.assert_thawed();
    assert_eq!(cg.procs(), [w.pid], "the tree stays in its cgroup");
    assert_eq!(tracer_of(w.pid), 0, "left traced");
    let after = counts_after(&w, 10);
    for i in 0..5 {
        assert!(
            after[i] > before[i],
            "counter {i} stopped: {before:?} {after:?}"
        );
    }
    let log = std::fs::read_to_string(w.images().join("dump.log")).unwrap_or_default();
    assert!(
        log.contains("frozen in"),
        "the log tells the cgroup's freeze:\n{log}"
    );
}

/// Dump (the tree is killed), restore detached: every thread counts on from where it was.
fn dump_and_restore(hierarchy: &str, test: &str) {
    let Some(cg) = TestCgroup::new(hierarchy, test) else {
        return;
    };
    let w = start_threads(&cg, test);
    let pids = dump_kill_restore_with(&w, &["--freeze-cgroup", cg.arg()], &[]);
    assert!(
        cg.procs().is_empty(),
        "the dumped tree is gone from the cgroup"
    );
    cg.assert_thawed();
    let n = w.lines().len();
    let last_before = nums(&w.lines()[n - 1]);
    let after = w.wait_lines(n + 10, T);
    kill_tree(&pids);
    assert!(after.len() >= n + 10, "the restored tree does not print");
    let first = nums(&after[n]);
    let last = nums(after.last().expect("lines"));
    assert!(
        first[0] >= last_before[0],
        "the counter went back: {first:?} after {last_before:?}"
    );
    for i in 0..5 {
        assert!(
            last[i] > first[i],
            "counter {i} did not run after the restore"
        );
    }
}

#[test]
fn leave_running_in_a_v1_freezer_cgroup() {
    let _g = serial_root!();
    leave_running(V1, test_name!());
}

#[test]
fn leave_running_in_a_unified_cgroup() {
    let _g = serial_root!();
    leave_running(V2, test_name!());
}

#[test]
fn dump_and_restore_from_a_v1_freezer_cgroup() {
    let _g = serial_root!();
    dump_and_restore(V1, test_name!());
}

#[test]
fn dump_and_restore_from_a_unified_cgroup() {
    let _g = serial_root!();
    dump_and_restore(V2, test_name!());
}

/// A cgroup that holds a process outside the tree is refused by name; everything runs on.
#[test]
fn a_process_outside_the_tree_is_refused_and_all_thawed() {
    let _g = serial_root!();
    for hierarchy in [V1, V2] {
        let Some(cg) = TestCgroup::new(hierarchy, test_name!()) else {
            continue;
        };
        let w = start_threads(&cg, "outside");
        let mut other = Command::new("sleep").arg("1000").spawn().expect("sleep");
        cg.add(other.id());
        let out = dump_workload(&w, &["--freeze-cgroup", cg.arg()]);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{hierarchy}: the dump must fail");
        assert!(
            e.contains("outside the tree") && e.contains(&other.id().to_string()),
            "{hierarchy}: {e}"
        );
        cg.assert_thawed();
        assert_eq!(tracer_of(other.id()), 0);
        assert_runs_on(&w);
        let _ = other.kill();
        let _ = other.wait();
    }
}

/// A dump that fails once the tree is seized (a refusal) leaves the cgroup thawed.
#[test]
fn a_refusal_after_the_freeze_leaves_all_thawed() {
    let _g = serial_root!();
    for hierarchy in [V1, V2] {
        let Some(cg) = TestCgroup::new(hierarchy, test_name!()) else {
            continue;
        };
        let w = Workload::start("cg-clonefs", &workload("clonefiles"), &["fs"]);
        // Printing, it has made its child: both go in.
        w.wait_lines(3, T);
        for p in tree_and_session(w.pid) {
            cg.add(p);
        }
        assert_eq!(cg.procs().len(), 2, "parent and child in the cgroup");
        let out = dump_workload(&w, &["--freeze-cgroup", cg.arg()]);
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{hierarchy}: the dump must fail");
        assert!(e.contains("fs information"), "{hierarchy}: {e}");
        cg.assert_thawed();
        for p in tree_and_session(w.pid) {
            assert_eq!(tracer_of(p), 0, "{hierarchy}: {p} left traced");
        }
        let n = w.lines().len();
        assert!(
            w.wait_lines(n + 5, T).len() >= n + 5,
            "{hierarchy}: tree runs on"
        );
    }
}

/// The wrong cgroup (the tree is not in it) and a path that is no freezer are refused.
#[test]
fn a_cgroup_without_the_tree_or_no_freezer_is_refused() {
    let _g = serial_root!();
    let Some(cg) = TestCgroup::new(V1, test_name!()) else {
        return;
    };
    let w = Workload::start("cg-elsewhere", &workload("counter"), &[]);
    w.wait_lines(2, T);
    let out = dump_workload(&w, &["--freeze-cgroup", cg.arg()]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(
        e.contains(&format!("process {} is not in the cgroup", w.pid)),
        "{e}"
    );
    cg.assert_thawed();
    let out = dump_workload(&w, &["--freeze-cgroup", "/tmp"]);
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("/tmp is not a freezer cgroup"), "{e}");
    assert_runs_on(&w);
}

/// SIGTERM in the middle of the dump: it is abandoned, the cgroup thawed, the tree let go.
#[test]
fn sigterm_during_the_dump_leaves_all_thawed() {
    let _g = serial_root!();
    for hierarchy in [V1, V2] {
        let Some(cg) = TestCgroup::new(hierarchy, test_name!()) else {
            continue;
        };
        let w = Workload::start("cg-term", &workload("memhog"), &["192"]);
        cg.add(w.pid);
        w.wait_lines(2, Duration::from_secs(20));
        let img = w.images();
        let child: Child = Command::new(stasis_bin())
            .args(["dump", "-t", &w.pid.to_string(), "-D"])
            .arg(&img)
            .args(["--freeze-cgroup", cg.arg()])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("stasis dump");
        // Once seized, the 192 MiB still take a while to dump.
        let end = Instant::now() + Duration::from_secs(10);
        while tracer_of(w.pid) == 0 && Instant::now() < end {
            std::thread::sleep(Duration::from_micros(200));
        }
        // SAFETY: kill(2) of our own child, not yet reaped.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let out = child.wait_with_output().expect("wait for stasis");
        let e = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{hierarchy}: the dump must fail");
        assert!(e.contains("interrupted by signal"), "{hierarchy}: {e}");
        cg.assert_thawed();
        assert_runs_on(&w);
    }
}

/// A stopped task (SIGSTOP) in the cgroup: v1 cannot seize it frozen (PTRACE_SEIZE would wait
/// forever), so the dump seizes one by one there; either way it is dumped and stays stopped.
#[test]
fn a_stopped_task_in_the_cgroup_is_dumped_and_stays_stopped() {
    let _g = serial_root!();
    for hierarchy in [V1, V2] {
        let Some(cg) = TestCgroup::new(hierarchy, test_name!()) else {
            continue;
        };
        let w = start_threads(&cg, "cg-stopped");
        // SAFETY: kill(2) of our workload.
        unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGSTOP) };
        let end = Instant::now() + T;
        while state_of(w.pid) != 'T' && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(5));
        }
        let img = w.images();
        let mut child = Command::new(stasis_bin())
            .args(["dump", "-R", "-t", &w.pid.to_string(), "-D"])
            .arg(&img)
            .args(["--freeze-cgroup", cg.arg(), "-o", "dump.log", "-v4"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("stasis dump");
        // A hang here is the bug this test is for: bounded, then killed.
        let end = Instant::now() + Duration::from_secs(20);
        let status = loop {
            if let Some(st) = child.try_wait().expect("wait") {
                break Some(st);
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let log = std::fs::read_to_string(img.join("dump.log")).unwrap_or_default();
        assert!(
            status.is_some_and(|s| s.success()),
            "{hierarchy}: dump {status:?}:\n{log}"
        );
        cg.assert_thawed();
        assert_eq!(tracer_of(w.pid), 0, "{hierarchy}: left traced");
        assert_eq!(state_of(w.pid), 'T', "{hierarchy}: stays stopped");
        let n = w.lines().len();
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(w.lines().len(), n, "{hierarchy}: printed while stopped");
        // SAFETY: kill(2) of our workload.
        unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGCONT) };
        assert!(
            w.wait_lines(n + 5, T).len() >= n + 5,
            "{hierarchy}: runs once continued"
        );
    }
}

const PIDS_V1: &str = "/sys/fs/cgroup/pids";

/// The cgroup (in the hierarchy mounted at `hierarchy`) process `pid` is in.
fn cgroup_of(pid: u32, hierarchy: &str) -> String {
    let ctrl = Path::new(hierarchy)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_string();
    std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, c, p) = (f.next()?, f.next()?, f.next()?);
            c.split(',').any(|x| x == ctrl).then(|| p.to_string())
        })
        .unwrap_or_default()
}

/// `--manage-cgroups`: a parent in a cgroup and its child in a cgroup below it come back in
/// them, made again after they were removed (soft, CRIU's default mode); with `--cgroup-root`
/// the parent's cgroup moves there and the child's keeps its place below it. Without the
/// option, the restored tasks stay in the restorer's cgroups.
#[test]
fn manage_cgroups_puts_tasks_back_and_cgroup_root_moves_them() {
    let _g = serial_root!();
    let Some(cg) = TestCgroup::new(PIDS_V1, test_name!()) else {
        return;
    };
    let script = r#"
import os, time
pid = os.fork()
who = "child" if pid == 0 else "parent"
n = 0
while True:
    print(who, os.getpid(), n, flush=True); n += 1; time.sleep(0.05)
"#;
    let run = |restore: &[&str], remove: bool| {
        let w = Workload::python("cgmember", script);
        // The parent may print several lines before the child is first scheduled.
        let end = Instant::now() + T;
        let child_line = || {
            w.lines()
                .iter()
                .find(|l| l.starts_with("child "))
                .and_then(|l| nums(l).first().copied())
        };
        while child_line().is_none() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        let child = child_line().expect("the child's line") as u32;
        let sub = cg.path.join("sub");
        let _ = std::fs::create_dir(&sub);
        cg.add(w.pid);
        std::fs::write(sub.join("cgroup.procs"), child.to_string()).expect("child into sub");
        let pids = dump_kill_then_restore(&w, &[], restore, || {
            if remove {
                std::fs::remove_dir(&sub).expect("rmdir sub");
            }
        });
        let got = (cgroup_of(w.pid, PIDS_V1), cgroup_of(child, PIDS_V1));
        kill_tree(&pids);
        let end = Instant::now() + Duration::from_secs(5);
        while (alive(w.pid) || alive(child)) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = std::fs::remove_dir(&sub);
        got
    };
    let base = format!("/{}", cg.path.file_name().unwrap().to_string_lossy());
    let mine = cgroup_of(std::process::id(), PIDS_V1);

    let (parent, child) = run(&["--manage-cgroups"], true);
    assert_eq!(parent, base, "the parent is back in its cgroup");
    assert_eq!(
        child,
        format!("{base}/sub"),
        "the child's cgroup was made again"
    );

    let moved = cg.path.join("moved");
    std::fs::create_dir(&moved).expect("mkdir");
    let root = format!("pids:{base}/moved");
    let (parent, child) = run(&["--manage-cgroups=soft", "--cgroup-root", &root], false);
    assert_eq!(
        parent,
        format!("{base}/moved"),
        "--cgroup-root moves the root's cgroup"
    );
    assert_eq!(
        child,
        format!("{base}/moved/sub"),
        "and the child keeps its place below"
    );
    let _ = std::fs::remove_dir(moved.join("sub"));
    let _ = std::fs::remove_dir(&moved);

    let (parent, child) = run(&[], false);
    assert_eq!(
        (parent, child),
        (mine.clone(), mine),
        "without it, where the restorer is"
    );
}

const CPU_V1: &str = "/sys/fs/cgroup/cpu";

/// cgroup.img holds the properties of the tree's cgroups (here pids.max, cpu.shares and
/// cpu.cfs_quota_us of v1 cgroups): `--manage-cgroups` (soft) makes a removed cgroup again with
/// them, and `--manage-cgroups=full` sets them again on one that exists, while soft leaves an
/// existing one as it is.
#[test]
fn cgroup_properties_are_saved_and_set_again() {
    use stasis::images::{magic, pb, ImageKind, ImageReader};
    let _g = serial_root!();
    let (Some(pids), Some(cpu)) = (
        TestCgroup::new(PIDS_V1, test_name!()),
        TestCgroup::new(CPU_V1, test_name!()),
    ) else {
        return;
    };
    let set = |cg: &TestCgroup, file: &str, v: &str| {
        std::fs::write(cg.path.join(file), v).unwrap_or_else(|e| panic!("write {file}: {e}"))
    };
    let get = |cg: &TestCgroup, file: &str| {
        std::fs::read_to_string(cg.path.join(file))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let configure = || {
        set(&pids, "pids.max", "77");
        set(&cpu, "cpu.shares", "512");
        set(&cpu, "cpu.cfs_quota_us", "50000");
    };
    let saved = |img: &Path| -> Vec<(String, String)> {
        let bytes = std::fs::read(img.join("cgroup.img")).expect("cgroup.img");
        let mut r = ImageReader::new("cgroup.img", &bytes, ImageKind::Normal, magic::CGROUP)
            .expect("reader");
        let e: pb::CgroupEntry = r.next_required().expect("entry");
        fn all(d: &[pb::CgroupDirEntry], out: &mut Vec<(String, String)>) {
            for d in d {
                out.extend(
                    d.properties
                        .iter()
                        .map(|p| (p.name.clone(), p.value.clone())),
                );
                all(&d.children, out);
            }
        }
        let mut out = Vec::new();
        for c in &e.controllers {
            all(&c.dirs, &mut out);
        }
        out
    };
    configure();
    let run = |restore: &[&str], between: &dyn Fn()| {
        let w = Workload::start("cgprops", &workload("counter"), &[]);
        w.wait_lines(2, T);
        pids.add(w.pid);
        cpu.add(w.pid);
        let pids_after = dump_kill_then_restore(&w, &[], restore, between);
        let img = w.images();
        let props = saved(&img);
        let got = (cgroup_of(w.pid, PIDS_V1), cgroup_of(w.pid, CPU_V1));
        assert_runs_on(&w);
        kill_tree(&pids_after);
        let end = Instant::now() + Duration::from_secs(5);
        while alive(w.pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        (props, got)
    };
    let base = |cg: &TestCgroup| format!("/{}", cg.path.file_name().unwrap().to_string_lossy());

    // Removed after the dump, made again by soft with the saved values.
    let (props, got) = run(&["--manage-cgroups"], &|| {
        std::fs::remove_dir(&pids.path).expect("rmdir pids cgroup");
        std::fs::remove_dir(&cpu.path).expect("rmdir cpu cgroup");
    });
    for (name, value) in [
        ("pids.max", "77"),
        ("cpu.shares", "512"),
        ("cpu.cfs_quota_us", "50000"),
    ] {
        assert!(
            props.iter().any(|(n, v)| n == name && v == value),
            "cgroup.img holds {name} = {value}: {props:?}"
        );
    }
    assert_eq!(got, (base(&pids), base(&cpu)), "back in its cgroups");
    assert_eq!(get(&pids, "pids.max"), "77", "made again with its pids.max");
    assert_eq!(get(&cpu, "cpu.shares"), "512");
    assert_eq!(get(&cpu, "cpu.cfs_quota_us"), "50000");

    // Changed after the dump: soft leaves an existing cgroup alone, full sets it back.
    let change = || {
        set(&pids, "pids.max", "55");
        set(&cpu, "cpu.shares", "256");
    };
    run(&["--manage-cgroups=soft"], &change);
    assert_eq!(
        get(&pids, "pids.max"),
        "55",
        "soft: an existing cgroup is left"
    );
    configure();
    run(&["--manage-cgroups=full"], &change);
    assert_eq!(get(&pids, "pids.max"), "77", "full: set again");
    assert_eq!(get(&cpu, "cpu.shares"), "512", "full: set again");
}

/// A thread in another cgroup than its process (v1's `tasks` file; zdtm's cgroup_threads)
/// comes back there with `--manage-cgroups`: it has a `cg_set` of its own.
#[test]
fn a_thread_in_its_own_cgroup_comes_back_there() {
    let _g = serial_root!();
    let Some(cg) = TestCgroup::new(PIDS_V1, test_name!()) else {
        return;
    };
    let sub = cg.path.join("thread");
    std::fs::create_dir(&sub).expect("mkdir thread cgroup");
    let script = format!(
        r#"
import threading, time
def worker():
    open("{tasks}", "w").write(str(threading.get_native_id()))
    n = 0
    while True:
        print("thread", threading.get_native_id(), n, flush=True); n += 1; time.sleep(0.05)
threading.Thread(target=worker, daemon=True).start()
while True:
    time.sleep(1)
"#,
        tasks = sub.join("tasks").display()
    );
    let w = Workload::python("cgthread", &script);
    let lines = w.wait_lines(3, T);
    cg.add(w.pid);
    // Moving the process moves every thread: the worker goes back to its own cgroup.
    let tid = lines
        .iter()
        .find_map(|l| nums(l).first().copied())
        .expect("the thread's line") as u32;
    std::fs::write(sub.join("tasks"), tid.to_string()).expect("thread into its cgroup");
    let in_cg = |pid: u32, t: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/task/{t}/cgroup"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.contains(":pids:"))
            .map(|l| l.rsplit(':').next().unwrap_or("").to_string())
            .unwrap_or_default()
    };
    let base = format!("/{}", cg.path.file_name().unwrap().to_string_lossy());
    assert_eq!(
        in_cg(w.pid, tid),
        format!("{base}/thread"),
        "set up as planned"
    );
    let pids = dump_kill_then_restore(&w, &[], &["--manage-cgroups"], || {});
    let (leader, thread) = (in_cg(w.pid, w.pid), in_cg(w.pid, tid));
    kill_tree(&pids);
    let end = Instant::now() + Duration::from_secs(5);
    while alive(w.pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(&sub);
    assert_eq!(leader, base, "the process is back in its cgroup");
    assert_eq!(
        thread,
        format!("{base}/thread"),
        "and the thread in its own"
    );
}

/// With `--manage-cgroups` the cgroups are made before any file is opened, so a task holding
/// its own cgroup directory open gets it back after that cgroup was removed (zdtm cgroup02);
/// and a v1 cpuset made anew for `--cgroup-root` gets its parent's cpus and mems, without
/// which no task could join it.
#[test]
fn cgroup_dirs_held_open_and_new_cpusets_are_made_in_time() {
    let _g = serial_root!();
    let (Some(pids), Some(cpuset)) = (
        TestCgroup::new(PIDS_V1, test_name!()),
        TestCgroup::new("/sys/fs/cgroup/cpuset", test_name!()),
    ) else {
        return;
    };
    for f in ["cpuset.cpus", "cpuset.mems"] {
        let v = std::fs::read_to_string(Path::new("/sys/fs/cgroup/cpuset").join(f)).unwrap();
        std::fs::write(cpuset.path.join(f), v.trim()).expect("cpuset setup");
    }
    let sub = pids.path.join("sub");
    std::fs::create_dir(&sub).expect("mkdir sub");
    let script = format!(
        r#"
import os, time
d = os.open("{}", os.O_RDONLY | os.O_DIRECTORY)
n = 0
while True:
    print(n, os.path.exists(f"/proc/self/fd/{{d}}"), flush=True); n += 1; time.sleep(0.05)
"#,
        sub.display()
    );
    let w = Workload::python("cgheld", &script);
    std::fs::write(sub.join("cgroup.procs"), w.pid.to_string()).expect("into sub");
    cpuset.add(w.pid);
    w.wait_lines(2, T);
    let base = |cg: &TestCgroup| format!("/{}", cg.path.file_name().unwrap().to_string_lossy());
    let new_root = format!("cpuset:{}/new", base(&cpuset));
    let pids_list = dump_kill_then_restore(
        &w,
        &[],
        &["--manage-cgroups", "--cgroup-root", &new_root],
        || std::fs::remove_dir(&sub).expect("rmdir sub"),
    );
    let got = (
        cgroup_of(w.pid, PIDS_V1),
        cgroup_of(w.pid, "/sys/fs/cgroup/cpuset"),
    );
    let n = w.lines().len();
    let more = w.wait_lines(n + 2, T);
    kill_tree(&pids_list);
    let end = Instant::now() + Duration::from_secs(5);
    while alive(w.pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(&sub);
    let _ = std::fs::remove_dir(cpuset.path.join("new"));
    assert_eq!(
        got.0,
        format!("{}/sub", base(&pids)),
        "the held cgroup made again"
    );
    assert_eq!(got.1, format!("{}/new", base(&cpuset)), "in the new cpuset");
    assert!(more.last().is_some_and(|l| l.ends_with("True")), "{more:?}");
}

/// A process that moved into a cgroup and unshared a cgroup namespace there (`unshare -C`
/// after joining a cgroup; zdtm's cgroupns; LXC's containers) comes back, with
/// `--manage-cgroups`, in a namespace rooted at that cgroup again: it still reads `/` for its
/// cgroup, and the host sees it in the test's cgroup. The restorer is elsewhere (at the
/// hierarchy's root), where the new namespace was rooted before.
#[test]
fn a_cgroup_namespace_is_rooted_at_the_dumped_cgroup_again() {
    let _g = serial_root!();
    let Some(cg) = TestCgroup::new(V1, test_name!()) else {
        return;
    };
    let script = format!(
        r#"
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
open("{}/cgroup.procs", "w").write("0")
assert libc.unshare(0x02000000) == 0, ctypes.get_errno()
n = 0
while True:
    own = [l for l in open("/proc/self/cgroup").read().splitlines() if ":freezer:" in l][0]
    print(n, own.split(":", 2)[2], flush=True)
    n += 1
    time.sleep(0.02)
"#,
        cg.arg()
    );
    let w = Workload::python("cgns-root", &script);
    w.wait_lines(3, T);
    let host_view = format!(
        "/{}",
        cg.path.file_name().and_then(|n| n.to_str()).unwrap_or("")
    );
    assert_eq!(cgroup_of(w.pid, V1), host_view, "in the test's cgroup");
    let pids = dump_kill_restore_with(&w, &[], &["--manage-cgroups"]);
    let n = w.lines().len();
    let lines = w.wait_lines(n + 5, T);
    let host_after = cgroup_of(w.pid, V1);
    kill_tree(&pids);
    assert!(lines.len() >= n + 5, "it counts on");
    for l in &lines {
        assert!(
            l.ends_with(" /"),
            "its cgroup namespace is rooted at its cgroup: {l}"
        );
    }
    assert_eq!(host_after, host_view, "back in the test's cgroup");
}
