//! The freezer of one cgroup, v1 or v2, through its files.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::parse::{self, FreezerState};
use crate::CgroupError;

/// Which freezer a cgroup has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// `freezer.state` (the v1 freezer controller); threads are listed in `tasks`.
    V1,
    /// `cgroup.freeze` and `cgroup.events` (cgroup2); threads are in `cgroup.threads`.
    V2,
}

/// The freezer of the cgroup at a path. Freezing and thawing act on the cgroup and every
/// cgroup below it, and so does listing its tasks.
#[derive(Debug, Clone)]
pub struct Freezer {
    path: PathBuf,
    version: Version,
}

/// The first wait between two looks at a freezing cgroup, and the longest: a freeze takes
/// about a millisecond, so the waits start short and double.
const FIRST_NAP: Duration = Duration::from_micros(50);
const LONGEST_NAP: Duration = Duration::from_millis(5);

impl Freezer {
    /// The freezer of the cgroup directory `path`: v1 if it has `freezer.state`, v2 if it has
    /// `cgroup.freeze` and `cgroup.events`. The root of a hierarchy has neither (it cannot be
    /// frozen) and is refused.
    pub fn open(path: impl Into<PathBuf>) -> Result<Freezer, CgroupError> {
        let path = path.into();
        let md = std::fs::metadata(&path).map_err(io(&path, "open the cgroup"))?;
        if !md.is_dir() {
            return Err(CgroupError::NotFreezer { path });
        }
        let version = if path.join("freezer.state").exists() {
            Version::V1
        } else if path.join("cgroup.freeze").exists() && path.join("cgroup.events").exists() {
            Version::V2
        } else {
            return Err(CgroupError::NotFreezer { path });
        };
        Ok(Freezer { path, version })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn version(&self) -> Version {
        self.version
    }

    /// FROZEN once every task is frozen: v1's `freezer.state`, or v2's `frozen 1` in
    /// `cgroup.events` (FREEZING while `cgroup.freeze` is 1 and that is not there yet).
    /// FROZEN needs every cgroup below to say so too: on Linux 6.18 a v2 cgroup whose own
    /// tasks froze first reads `frozen 1` while a task in a cgroup below it still runs.
    pub fn state(&self) -> Result<FreezerState, CgroupError> {
        let top = self.state_of(&self.path)?;
        if top != FreezerState::Frozen {
            return Ok(top);
        }
        let mut below = Vec::new();
        subdirs(&self.path, true, &mut below)?;
        for dir in below {
            match self.state_of(&dir) {
                Ok(FreezerState::Frozen) => {}
                Ok(_) => return Ok(FreezerState::Freezing),
                // Removed while we look: it holds no task.
                Err(CgroupError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(FreezerState::Frozen)
    }

    /// The state the files of the cgroup at `dir` give, alone.
    fn state_of(&self, dir: &Path) -> Result<FreezerState, CgroupError> {
        match self.version {
            Version::V1 => {
                let text = read(dir, "freezer.state")?;
                parse::v1_state(&text).ok_or_else(|| bad_state(dir, "freezer.state", text))
            }
            Version::V2 => {
                let asked = read(dir, "cgroup.freeze")?;
                let events = read(dir, "cgroup.events")?;
                parse::v2_state(&asked, &events).ok_or_else(|| {
                    bad_state(
                        dir,
                        "cgroup.events",
                        format!("{}; {}", asked.trim(), events),
                    )
                })
            }
        }
    }

    /// Freezes the cgroup and waits until every task in it is frozen, looking with short
    /// sleeps; returns how long that took. v1 may stay FREEZING when a task could not be
    /// frozen at the first try: FROZEN is written again at each look, as CRIU does, which
    /// tries those tasks again. Past `timeout` the cgroup is thawed (as far as it can be)
    /// and the error names it and the state it was stuck in.
    pub fn freeze(&self, timeout: Duration) -> Result<Duration, CgroupError> {
        let start = Instant::now();
        self.request(true)?;
        let mut nap = FIRST_NAP;
        loop {
            let state = match self.state() {
                Ok(s) => s,
                Err(e) => {
                    let _ = self.thaw();
                    return Err(e);
                }
            };
            if state == FreezerState::Frozen {
                return Ok(start.elapsed());
            }
            if start.elapsed() >= timeout {
                // Best effort: a cgroup left frozen would stop the tasks for good.
                let _ = self.thaw();
                return Err(CgroupError::FreezeTimeout {
                    path: self.path.clone(),
                    state,
                    waited_ms: start.elapsed().as_millis(),
                });
            }
            std::thread::sleep(nap);
            nap = (nap * 2).min(LONGEST_NAP);
            if self.version == Version::V1 {
                self.request(true)?;
            }
        }
    }

    /// Thaws the cgroup. Both versions take effect on the write; a cgroup whose ancestor is
    /// frozen stays frozen.
    pub fn thaw(&self) -> Result<(), CgroupError> {
        self.request(false)
    }

    fn request(&self, frozen: bool) -> Result<(), CgroupError> {
        let (file, value, what) = match (self.version, frozen) {
            (Version::V1, true) => ("freezer.state", "FROZEN", "write FROZEN to"),
            (Version::V1, false) => ("freezer.state", "THAWED", "write THAWED to"),
            (Version::V2, true) => ("cgroup.freeze", "1", "write 1 to"),
            (Version::V2, false) => ("cgroup.freeze", "0", "write 0 to"),
        };
        let path = self.path.join(file);
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .and_then(|mut f| f.write_all(value.as_bytes()))
            .map_err(io(&path, what))
    }

    /// The processes (thread group ids) in the cgroup and the cgroups below it, sorted.
    pub fn procs(&self) -> Result<Vec<u32>, CgroupError> {
        self.list("cgroup.procs")
    }

    /// The threads in the cgroup and the cgroups below it, sorted. (A v1 process may have
    /// threads in several cgroups.)
    pub fn tasks(&self) -> Result<Vec<u32>, CgroupError> {
        self.list(match self.version {
            Version::V1 => "tasks",
            Version::V2 => "cgroup.threads",
        })
    }

    fn list(&self, file: &str) -> Result<Vec<u32>, CgroupError> {
        let mut out = Vec::new();
        collect(&self.path, file, true, &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }
}

/// Adds the pids of `dir/file` and of every cgroup below `dir`. A child cgroup removed while
/// we look holds no task: it is skipped, not an error.
fn collect(dir: &Path, file: &str, top: bool, out: &mut Vec<u32>) -> Result<(), CgroupError> {
    let path = dir.join(file);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if !top && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(&path, "read")(e)),
    };
    out.extend(parse::pid_list(&text).map_err(|source| CgroupError::Parse {
        path: path.clone(),
        source,
    })?);
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if !top && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir, "list")(e)),
    };
    for e in entries {
        let e = e.map_err(io(dir, "list"))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            collect(&e.path(), file, false, out)?;
        }
    }
    Ok(())
}

/// Every cgroup below `dir`, at any depth. One removed while we look is skipped.
fn subdirs(dir: &Path, top: bool, out: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if !top && e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(dir, "list")(e)),
    };
    for e in entries {
        let e = e.map_err(io(dir, "list"))?;
        if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            out.push(e.path());
            subdirs(&e.path(), false, out)?;
        }
    }
    Ok(())
}

fn read(dir: &Path, file: &str) -> Result<String, CgroupError> {
    let path = dir.join(file);
    std::fs::read_to_string(&path).map_err(io(&path, "read"))
}

fn bad_state(dir: &Path, file: &str, text: String) -> CgroupError {
    CgroupError::BadState {
        path: dir.join(file),
        text,
    }
}

fn io(path: &Path, what: &'static str) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { path, what, source }
}

#[cfg(test)]
mod tests {
    //! The loop's logic on plain files (a directory that looks like a cgroup to `open`). What
    //! the kernel does is tested as root in tests/freezer.rs.
    use super::*;

    fn fake(files: &[(&str, &str)]) -> PathBuf {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let d = std::env::temp_dir().join(format!("stasis-cg-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        for (f, text) in files {
            std::fs::write(d.join(f), text).unwrap();
        }
        d
    }

    #[test]
    fn open_tells_the_versions_apart() {
        let v1 = fake(&[("freezer.state", "THAWED\n")]);
        assert_eq!(Freezer::open(&v1).unwrap().version(), Version::V1);
        let v2 = fake(&[("cgroup.freeze", "0\n"), ("cgroup.events", "frozen 0\n")]);
        assert_eq!(Freezer::open(&v2).unwrap().version(), Version::V2);
        let none = fake(&[("cgroup.freeze", "0\n")]);
        let e = Freezer::open(&none).unwrap_err();
        assert!(matches!(e, CgroupError::NotFreezer { .. }), "{e}");
        let gone = none.join("nope");
        let e = Freezer::open(&gone).unwrap_err().to_string();
        assert!(e.contains("nope"), "{e}");
        for d in [v1, v2, none] {
            std::fs::remove_dir_all(d).unwrap();
        }
    }

    #[test]
    fn a_freeze_that_never_comes_times_out_naming_cgroup_and_state() {
        let d = fake(&[("cgroup.freeze", "0\n"), ("cgroup.events", "frozen 0\n")]);
        let f = Freezer::open(&d).unwrap();
        let e = f.freeze(Duration::from_millis(30)).unwrap_err();
        let text = e.to_string();
        assert!(
            matches!(
                e,
                CgroupError::FreezeTimeout {
                    state: FreezerState::Freezing,
                    ..
                }
            ),
            "{text}"
        );
        assert!(
            text.contains(d.to_str().unwrap()) && text.contains("FREEZING"),
            "{text}"
        );
        let asked = std::fs::read_to_string(d.join("cgroup.freeze")).unwrap();
        assert_eq!(asked.trim(), "0", "thawed");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn frozen_needs_every_cgroup_below_frozen() {
        let d = fake(&[("cgroup.freeze", "1\n"), ("cgroup.events", "frozen 1\n")]);
        std::fs::create_dir_all(d.join("a/b")).unwrap();
        for sub in ["a", "a/b"] {
            std::fs::write(d.join(sub).join("cgroup.freeze"), "0\n").unwrap();
            std::fs::write(d.join(sub).join("cgroup.events"), "frozen 1\n").unwrap();
        }
        let f = Freezer::open(&d).unwrap();
        assert_eq!(f.state().unwrap(), FreezerState::Frozen);
        std::fs::write(d.join("a/b/cgroup.events"), "frozen 0\n").unwrap();
        assert_eq!(f.state().unwrap(), FreezerState::Freezing);
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn bad_state_text_is_an_error_not_a_panic() {
        let d = fake(&[("freezer.state", "SLUSHY\n")]);
        let e = Freezer::open(&d).unwrap().state().unwrap_err();
        assert!(matches!(e, CgroupError::BadState { .. }), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }

    #[test]
    fn lists_are_recursive_and_sorted() {
        let d = fake(&[
            ("freezer.state", "THAWED\n"),
            ("cgroup.procs", "9\n3\n"),
            ("tasks", ""),
        ]);
        std::fs::create_dir(d.join("sub")).unwrap();
        std::fs::write(d.join("sub/cgroup.procs"), "5\n3\n").unwrap();
        std::fs::write(d.join("sub/tasks"), "7\n").unwrap();
        let f = Freezer::open(&d).unwrap();
        assert_eq!(f.procs().unwrap(), [3, 5, 9]);
        assert_eq!(f.tasks().unwrap(), [7]);
        std::fs::write(d.join("sub/cgroup.procs"), "5\nfive\n").unwrap();
        let e = f.procs().unwrap_err().to_string();
        assert!(e.contains("sub/cgroup.procs"), "{e}");
        std::fs::remove_dir_all(d).unwrap();
    }
}
