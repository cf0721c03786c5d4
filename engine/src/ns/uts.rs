//! A tree that owns its UTS namespace: its host and domain names are saved
//! (`utsns-<id>.img`, CRIU's entry) and the root is forked into a new namespace holding them.
//! As for IPC (see `ipcns`), the namespace is per thread: the dump reads the names on a thread
//! that joined the tree's namespace, and the restoring thread unshares before it forks the root.

use std::os::fd::OwnedFd;

use crate::images::pb;
use crate::ns::ipc::IpcNsError;

/// Image ids: the dumper's UTS namespace and one the tree owns (after the IPC ones).
pub const HOST_NS_ID: u32 = 3;
pub const TREE_NS_ID: u32 = 4;

/// The tree's UTS namespace when it is not ours, open; every live task must be in it.
pub fn tree_ns(root: u32, tasks: &[u32]) -> Result<Option<OwnedFd>, UtsError> {
    super::tree_ns_fd("uts", root, tasks).map_err(|e| match e {
        super::OwnsError::Mixed { pid } => UtsError::Mixed { pid },
        super::OwnsError::Read { path, source } => UtsError::Read { path, source },
    })
}

/// The calling thread's host and domain names.
pub fn names() -> Result<pb::UtsnsEntry, UtsError> {
    let u = nix::sys::utsname::uname().map_err(|e| UtsError::Uname { source: e.into() })?;
    Ok(pb::UtsnsEntry {
        nodename: u.nodename().to_string_lossy().into_owned(),
        domainname: u.domainname().to_string_lossy().into_owned(),
    })
}

/// Sets the calling thread's (new) namespace's names: the host name through nix, the domain
/// name by hand (nix has no setdomainname).
pub fn set_names(e: &pb::UtsnsEntry) -> Result<(), UtsError> {
    nix::unistd::sethostname(&e.nodename).map_err(|err| UtsError::SetName {
        which: "host",
        name: e.nodename.clone(),
        source: err.into(),
    })?;
    // SAFETY: setdomainname reads len bytes of our string.
    let r = unsafe { libc::setdomainname(e.domainname.as_ptr().cast(), e.domainname.len()) };
    if r < 0 {
        return Err(UtsError::SetName {
            which: "domain",
            name: e.domainname.clone(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The UTS namespace could not be read or made again.
#[derive(Debug, thiserror::Error)]
pub enum UtsError {
    #[error("process {pid} is in another UTS namespace than the root of the tree, which is not supported")]
    Mixed { pid: u32 },
    #[error("reading {path} failed")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("uname failed")]
    Uname {
        #[source]
        source: std::io::Error,
    },
    #[error("setting the {which} name to {name:?} failed")]
    SetName {
        which: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ns(#[from] IpcNsError),
}
