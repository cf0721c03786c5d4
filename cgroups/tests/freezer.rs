//! The freezer against the kernel, as root: a cgroup made under the v1 freezer hierarchy and
//! one under the unified (cgroup2) one, each with a spinning process in it and one in a
//! cgroup below it. Skipped, saying why, when not root or when the hierarchy is not mounted.
//! Every cgroup made is removed, even when an assertion fails.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use stasis_cgroups::{Freezer, FreezerState, Version};

const V1_ROOT: &str = "/sys/fs/cgroup/freezer";
const V2_ROOT: &str = "/sys/fs/cgroup/unified";

/// A cgroup made for one test, with the processes started in it; all undone on drop.
struct TestCgroup {
    path: PathBuf,
    children: Vec<Child>,
}

impl TestCgroup {
    /// None (and the reason printed) when the test cannot run here.
    fn new(hierarchy: &str, name: &str) -> Option<TestCgroup> {
        // SAFETY: geteuid has no arguments.
        if unsafe { libc::geteuid() } != 0 {
            println!("SKIP {name}: needs root to make cgroups");
            return None;
        }
        if !Path::new(hierarchy).join("cgroup.procs").exists() {
            println!("SKIP {name}: no cgroup hierarchy mounted at {hierarchy}");
            return None;
        }
        let path = Path::new(hierarchy).join(format!("stasis-test-{}-{name}", std::process::id()));
        std::fs::create_dir(&path).expect("mkdir cgroup");
        Some(TestCgroup {
            path,
            children: Vec::new(),
        })
    }

    /// A cgroup below this one.
    fn sub(&self, name: &str) -> PathBuf {
        let p = self.path.join(name);
        std::fs::create_dir(&p).expect("mkdir sub-cgroup");
        p
    }

    /// Starts a process that spins on the CPU and moves it into `cgroup`.
    fn spin_in(&mut self, cgroup: &Path) -> u32 {
        let child = Command::new("sh")
            .args(["-c", "while :; do :; done"])
            .spawn()
            .expect("spawn sh");
        let pid = child.id();
        self.children.push(child);
        std::fs::write(cgroup.join("cgroup.procs"), pid.to_string()).expect("move into cgroup");
        pid
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        // Thawed first: a v1-frozen task does not die of SIGKILL until it thaws.
        let _ = std::fs::write(self.path.join("freezer.state"), "THAWED");
        let _ = std::fs::write(self.path.join("cgroup.freeze"), "0");
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Deepest first; an exited task may take a moment to leave the cgroup.
        let mut dirs = vec![self.path.clone()];
        if let Ok(rd) = std::fs::read_dir(&self.path) {
            dirs.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
        }
        for d in dirs.iter().rev() {
            let end = Instant::now() + Duration::from_secs(5);
            while std::fs::remove_dir(d).is_err() && Instant::now() < end {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if self.path.exists() {
            eprintln!("could not remove the test cgroup {}", self.path.display());
        }
    }
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let f: Vec<u64> = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|x| x.parse().expect("ticks"))
        .collect();
    f.iter().sum()
}

/// Whether `pid` gets CPU time within a few seconds (the machine is shared).
fn runs(pid: u32) -> bool {
    let before = cpu_ticks(pid);
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
        if cpu_ticks(pid) > before {
            return true;
        }
    }
    false
}

/// Whether `pid` gets no CPU time for 300 ms.
fn stays_still(pid: u32) -> bool {
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_millis(300));
    cpu_ticks(pid) == before
}

fn freeze_and_thaw(hierarchy: &str, name: &str, version: Version) {
    let Some(mut cg) = TestCgroup::new(hierarchy, name) else {
        return;
    };
    let inner = cg.sub("inner");
    let top = cg.path.clone();
    let a = cg.spin_in(&top);
    let b = cg.spin_in(&inner);
    let f = Freezer::open(&cg.path).expect("open");
    assert_eq!(f.version(), version);
    assert_eq!(f.state().unwrap(), FreezerState::Thawed);
    assert_eq!(f.procs().unwrap(), {
        let mut v = vec![a, b];
        v.sort_unstable();
        v
    });
    let tasks = f.tasks().unwrap();
    assert!(tasks.contains(&a) && tasks.contains(&b), "{tasks:?}");
    assert!(runs(a) && runs(b), "spinning before the freeze");

    let took = f.freeze(Duration::from_secs(5)).expect("freeze");
    println!("{name}: frozen in {took:?}");
    assert_eq!(f.state().unwrap(), FreezerState::Frozen);
    let below = Freezer::open(&inner).unwrap();
    assert_eq!(
        below.state().unwrap(),
        FreezerState::Frozen,
        "the cgroup below too"
    );
    assert!(stays_still(a), "{a} frozen");
    assert!(stays_still(b), "{b} frozen in the cgroup below");
    // Freezing a frozen cgroup again is immediate.
    f.freeze(Duration::from_secs(1)).expect("freeze again");

    f.thaw().expect("thaw");
    assert_eq!(f.state().unwrap(), FreezerState::Thawed);
    assert!(runs(a) && runs(b), "spinning after the thaw");
}

#[test]
fn v1_freezer_freezes_and_thaws() {
    freeze_and_thaw(V1_ROOT, "v1", Version::V1);
}

#[test]
fn v2_freezer_freezes_and_thaws() {
    freeze_and_thaw(V2_ROOT, "v2", Version::V2);
}

#[test]
fn the_hierarchy_roots_are_not_freezers() {
    for root in [V1_ROOT, V2_ROOT] {
        if Path::new(root).exists() {
            let e = Freezer::open(root).unwrap_err().to_string();
            assert!(e.contains("not a freezer cgroup"), "{e}");
        }
    }
}
