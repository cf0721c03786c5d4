//! Namespaces the tree owns (IPC, UTS, PID, network, time, mount).

pub mod ipc;
pub mod mnt;
mod mnt_cover;
pub mod mnt_dump;
pub mod mnt_ext;
pub mod mnt_nested;
pub mod mnt_nested_sys;
mod mnt_stage;
pub(crate) use mnt_stage::mount_id_of;
pub mod mnt_sys;
pub mod net;
pub mod netconf;
pub mod pid;
pub mod propagation;
pub mod time;
pub mod tmpfs;
pub mod user;
pub mod uts;

/// Why [`tree_owns`] could not tell.
#[derive(Debug)]
pub enum OwnsError {
    /// A live task of the tree is in another namespace of the kind than the root.
    Mixed { pid: u32 },
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// Whether the tree rooted at `root` owns a namespace of `kind` (as named in /proc/PID/ns):
/// the root's differs from ours, and every live task in `tasks` shares the root's. A kind
/// this kernel lacks is never owned.
pub fn tree_owns(kind: &str, root: u32, tasks: &[u32]) -> Result<bool, OwnsError> {
    use std::os::unix::fs::MetadataExt;
    if !std::path::Path::new(&format!("/proc/thread-self/ns/{kind}")).exists() {
        return Ok(false);
    }
    let id = |pid: &str| {
        let path = format!("/proc/{pid}/ns/{kind}");
        std::fs::metadata(&path)
            .map(|m| (m.dev(), m.ino()))
            .map_err(|source| OwnsError::Read { path, source })
    };
    let root_ns = id(&root.to_string())?;
    if root_ns == id("thread-self")? {
        return Ok(false);
    }
    for &pid in tasks {
        if id(&pid.to_string())? != root_ns {
            return Err(OwnsError::Mixed { pid });
        }
    }
    Ok(true)
}

/// The root's namespace of `kind`, open, when the tree owns it (see [`tree_owns`]).
pub fn tree_ns_fd(
    kind: &str,
    root: u32,
    tasks: &[u32],
) -> Result<Option<std::os::fd::OwnedFd>, OwnsError> {
    if !tree_owns(kind, root, tasks)? {
        return Ok(None);
    }
    let path = format!("/proc/{root}/ns/{kind}");
    let f = std::fs::File::open(&path).map_err(|source| OwnsError::Read { path, source })?;
    Ok(Some(f.into()))
}
