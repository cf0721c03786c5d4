//! Reading `/proc/<pid>/...`: thin I/O over the pure parsers in [`parse`].

pub mod parse;

use std::path::PathBuf;

pub use parse::{FdInfo, Mapping, ParseError, Stat, Status};

/// Reading a proc file failed.
#[derive(Debug, thiserror::Error)]
pub enum ProcError {
    #[error("cannot read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("process {pid} does not exist")]
    NoProcess { pid: u32 },
    #[error(transparent)]
    Parse(#[from] ParseError),
}

fn read_string(path: PathBuf) -> Result<String, ProcError> {
    std::fs::read_to_string(&path).map_err(|source| ProcError::Read { path, source })
}

fn proc_path(pid: u32, rest: &str) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}/{rest}"))
}

/// True if `/proc/<pid>` exists.
pub fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

pub fn stat(pid: u32) -> Result<Stat, ProcError> {
    if !exists(pid) {
        return Err(ProcError::NoProcess { pid });
    }
    Ok(parse::parse_stat(&read_string(proc_path(pid, "stat"))?)?)
}

pub fn thread_stat(pid: u32, tid: u32) -> Result<Stat, ProcError> {
    Ok(parse::parse_stat(&read_string(proc_path(
        pid,
        &format!("task/{tid}/stat"),
    ))?)?)
}

pub fn status(pid: u32) -> Result<Status, ProcError> {
    Ok(parse::parse_status(&read_string(proc_path(
        pid, "status",
    ))?)?)
}

pub fn thread_status(pid: u32, tid: u32) -> Result<Status, ProcError> {
    Ok(parse::parse_status(&read_string(proc_path(
        pid,
        &format!("task/{tid}/status"),
    ))?)?)
}

pub fn smaps(pid: u32) -> Result<Vec<Mapping>, ProcError> {
    Ok(parse::parse_maps(&read_string(proc_path(pid, "smaps"))?)?)
}

pub fn maps(pid: u32) -> Result<Vec<Mapping>, ProcError> {
    Ok(parse::parse_maps(&read_string(proc_path(pid, "maps"))?)?)
}

pub fn limits(pid: u32) -> Result<Vec<(u64, u64)>, ProcError> {
    Ok(parse::parse_limits(&read_string(proc_path(
        pid, "limits",
    ))?)?)
}

pub fn fdinfo(pid: u32, fd: i32) -> Result<FdInfo, ProcError> {
    Ok(parse::parse_fdinfo(&read_string(proc_path(
        pid,
        &format!("fdinfo/{fd}"),
    ))?)?)
}

pub fn auxv(pid: u32) -> Result<Vec<u64>, ProcError> {
    let path = proc_path(pid, "auxv");
    let b = std::fs::read(&path).map_err(|source| ProcError::Read { path, source })?;
    Ok(parse::parse_auxv(&b))
}

/// The numeric names in directory `path` (every name of /proc/<pid>/task and /fd is one), sorted.
/// A failure while listing is an error: a silently shortened list would lose threads or fds.
fn numbered<T: std::str::FromStr + Ord>(path: PathBuf) -> Result<Vec<T>, ProcError> {
    let rd = std::fs::read_dir(&path).map_err(|source| ProcError::Read {
        path: path.clone(),
        source,
    })?;
    let mut v = Vec::new();
    for e in rd {
        let e = e.map_err(|source| ProcError::Read {
            path: path.clone(),
            source,
        })?;
        if let Some(n) = e.file_name().to_str().and_then(|s| s.parse().ok()) {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// Thread ids of a process, sorted, the leader first.
pub fn tids(pid: u32) -> Result<Vec<u32>, ProcError> {
    let mut v: Vec<u32> = numbered(proc_path(pid, "task"))?;
    if let Some(i) = v.iter().position(|&t| t == pid) {
        v.remove(i);
        v.insert(0, pid);
    }
    Ok(v)
}

/// Children of every thread of `pid`.
pub fn children(pid: u32) -> Result<Vec<u32>, ProcError> {
    let mut out = Vec::new();
    for tid in tids(pid)? {
        let text = read_string(proc_path(pid, &format!("task/{tid}/children")))?;
        out.extend(parse::parse_children(&text)?);
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// Open fd numbers of a process, sorted.
pub fn fds(pid: u32) -> Result<Vec<i32>, ProcError> {
    numbered(proc_path(pid, "fd"))
}

/// The POSIX timers of `pid` (/proc/<pid>/timers), every field parsed.
pub fn timers(pid: u32) -> Result<Vec<parse::PosixTimer>, ProcError> {
    Ok(parse::parse_timers(&read_string(proc_path(
        pid, "timers",
    ))?)?)
}

pub fn readlink(pid: u32, rest: &str) -> Result<String, ProcError> {
    let path = proc_path(pid, rest);
    let t = std::fs::read_link(&path).map_err(|source| ProcError::Read { path, source })?;
    Ok(t.to_string_lossy().into_owned())
}

pub fn read_trimmed(pid: u32, rest: &str) -> Result<String, ProcError> {
    Ok(read_string(proc_path(pid, rest))?.trim().to_string())
}
