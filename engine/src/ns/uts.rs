//! A tree that owns its UTS namespace: its host and domain names are saved
//! (`utsns-<id>.img`, CRIU's entry) and the root is forked into a new namespace holding them.
//! As for IPC (see `ipcns`), the namespace is per thread: the dump reads the names on a thread
//! that joined the tree's namespace, and the restoring thread unshares before it forks the root.

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;

use crate::images::pb;
use crate::ns::ipc::IpcNsError;

/// Image ids: the dumper's UTS namespace and one the tree owns (after the IPC ones).
pub const HOST_NS_ID: u32 = 3;
pub const TREE_NS_ID: u32 = 4;

/// The tree's UTS namespace when it is not ours, open; every live task must be in it.
pub fn tree_ns(root: u32, tasks: &[u32]) -> Result<Option<OwnedFd>, UtsError> {
    let id = |pid: &str| {
        std::fs::metadata(format!("/proc/{pid}/ns/uts"))
            .map(|m| (m.dev(), m.ino()))
            .map_err(|source| UtsError::Read {
                what: format!("/proc/{pid}/ns/uts"),
                source,
            })
    };
    let root_ns = id(&root.to_string())?;
    if root_ns == id("thread-self")? {
        return Ok(None);
    }
    for &pid in tasks {
        if id(&pid.to_string())? != root_ns {
            return Err(UtsError::Mixed { pid });
        }
    }
    let path = format!("/proc/{root}/ns/uts");
    let f = std::fs::File::open(&path).map_err(|source| UtsError::Read { what: path, source })?;
    Ok(Some(f.into()))
}

/// The calling thread's host and domain names.
pub fn names() -> Result<pb::UtsnsEntry, UtsError> {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::uname(&mut u) } < 0 {
        return Err(UtsError::Read {
            what: "uname".into(),
            source: std::io::Error::last_os_error(),
        });
    }
    let field = |f: &[libc::c_char]| {
        let bytes: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok(pb::UtsnsEntry {
        nodename: field(&u.nodename),
        domainname: field(&u.domainname),
    })
}

/// Sets the calling thread's (new) namespace's names.
pub fn set_names(e: &pb::UtsnsEntry) -> Result<(), UtsError> {
    // SAFETY: sethostname/setdomainname read len bytes of our strings.
    let r = unsafe {
        if libc::sethostname(e.nodename.as_ptr().cast(), e.nodename.len()) < 0 {
            -1
        } else {
            libc::setdomainname(e.domainname.as_ptr().cast(), e.domainname.len())
        }
    };
    if r < 0 {
        return Err(UtsError::Read {
            what: "setting the host and domain names".into(),
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
    #[error("{what}")]
    Read {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Ns(#[from] IpcNsError),
}
