//! Which cgroups a process is in, and putting one into a cgroup (CRIU's cgroup.img and its
//! `--manage-cgroups` modes are built on these in the engine).

use std::path::{Path, PathBuf};

use crate::parse::{self, CgroupMount, Membership};
use crate::CgroupError;

/// The cgroups of `pid`, from `/proc/<pid>/cgroup` (paths as we see them).
pub fn of_pid(pid: u32) -> Result<Vec<Membership>, CgroupError> {
    read_memberships(&PathBuf::from(format!("/proc/{pid}/cgroup")))
}

fn read_memberships(path: &Path) -> Result<Vec<Membership>, CgroupError> {
    let text = std::fs::read_to_string(path).map_err(|source| CgroupError::Io {
        path: path.to_path_buf(),
        what: "read",
        source,
    })?;
    parse::proc_cgroup(&text).map_err(|source| CgroupError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// The cgroups of thread `tid` of `pid` (a thread may be in other cgroups than its process:
/// v1's `tasks`, v2's threaded cgroups).
pub fn of_thread(pid: u32, tid: u32) -> Result<Vec<Membership>, CgroupError> {
    read_memberships(&PathBuf::from(format!("/proc/{pid}/task/{tid}/cgroup")))
}

/// Moves thread `tid` (as our pid namespace numbers it) into the cgroup directory `dir`: its
/// `tasks` file (v1) or `cgroup.threads` (a threaded v2 cgroup).
pub fn enter_thread(dir: &Path, tid: u32) -> Result<(), CgroupError> {
    let file = if dir.join("tasks").exists() {
        dir.join("tasks")
    } else {
        dir.join("cgroup.threads")
    };
    std::fs::write(&file, tid.to_string()).map_err(|source| CgroupError::Io {
        path: file,
        what: "write a thread id to",
        source,
    })
}

/// The cgroup mounts we see.
pub fn our_mounts() -> Result<Vec<CgroupMount>, CgroupError> {
    let path = PathBuf::from("/proc/self/mountinfo");
    let text = std::fs::read_to_string(&path).map_err(|source| CgroupError::Io {
        path: path.clone(),
        what: "read",
        source,
    })?;
    parse::cgroup_mounts(&text).map_err(|source| CgroupError::Parse { path, source })
}

/// Where `path` (a dumped task's cgroup) goes when the dumped root's cgroup in the same
/// hierarchy was `dumped_root` and the caller moves that root to `new_root` (CRIU's
/// `--cgroup-root`): what lies below the dumped root keeps its place below the new one. A path
/// outside the dumped root stays as it was.
pub fn relocate(path: &str, dumped_root: &str, new_root: Option<&str>) -> String {
    let Some(new_root) = new_root else {
        return path.to_string();
    };
    let rest = if dumped_root == "/" {
        Some(path)
    } else {
        path.strip_prefix(dumped_root)
            .filter(|r| r.is_empty() || r.starts_with('/'))
    };
    match rest {
        Some(rest) => {
            let joined = format!(
                "{}/{}",
                new_root.trim_end_matches('/'),
                rest.trim_start_matches('/')
            );
            let trimmed = joined.trim_end_matches('/');
            if trimmed.is_empty() {
                "/".to_string()
            } else {
                trimmed.to_string()
            }
        }
        None => path.to_string(),
    }
}

/// Moves process `pid` (as our pid namespace numbers it) into the cgroup directory `dir`,
/// made first when `create` allows and it is missing.
pub fn enter(dir: &Path, pid: u32, create: bool) -> Result<(), CgroupError> {
    if !dir.is_dir() {
        if !create {
            return Err(CgroupError::Io {
                path: dir.to_path_buf(),
                what: "find",
                source: std::io::Error::from(std::io::ErrorKind::NotFound),
            });
        }
        let mut missing = Vec::new();
        let mut d = Some(dir);
        while let Some(m) = d.filter(|m| !m.is_dir()) {
            missing.push(m.to_path_buf());
            d = m.parent();
        }
        std::fs::create_dir_all(dir).map_err(|source| CgroupError::Io {
            path: dir.to_path_buf(),
            what: "create",
            source,
        })?;
        // A new v1 cpuset takes no task until it has cpus and mems: its parent's, as a
        // cgroup made by hand would be given (or cgroup.clone_children would copy).
        for m in missing.iter().rev() {
            inherit_cpuset(m)?;
        }
    }
    let procs = dir.join("cgroup.procs");
    std::fs::write(&procs, pid.to_string()).map_err(|source| CgroupError::Io {
        path: procs,
        what: "write a pid to",
        source,
    })
}

/// Gives a new v1 cpuset cgroup `dir` its parent's `cpuset.cpus` and `cpuset.mems` (nothing
/// for other controllers, or when they are set already).
fn inherit_cpuset(dir: &Path) -> Result<(), CgroupError> {
    let Some(parent) = dir.parent() else {
        return Ok(());
    };
    for name in ["cpuset.cpus", "cpuset.mems"] {
        let file = dir.join(name);
        let Ok(now) = std::fs::read_to_string(&file) else {
            continue;
        };
        if !now.trim().is_empty() {
            continue;
        }
        let from = parent.join(name);
        let value = std::fs::read_to_string(&from).map_err(|source| CgroupError::Io {
            path: from,
            what: "read",
            source,
        })?;
        std::fs::write(&file, value.trim()).map_err(|source| CgroupError::Io {
            path: file,
            what: "write",
            source,
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relocation_keeps_what_lies_below_the_root() {
        assert_eq!(relocate("/rx", "/rx", Some("/new/rx")), "/new/rx");
        assert_eq!(relocate("/rx/sub", "/rx", Some("/new")), "/new/sub");
        assert_eq!(relocate("/rx", "/rx", None), "/rx");
        assert_eq!(relocate("/a/b", "/", Some("/c")), "/c/a/b");
        assert_eq!(relocate("/", "/", Some("/")), "/");
        // Not below the dumped root (a sibling whose name starts alike): left alone.
        assert_eq!(relocate("/rxy", "/rx", Some("/new")), "/rxy");
    }
}
