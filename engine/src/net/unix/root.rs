//! Socket names of a tree with a mount namespace of its own are paths of that tree (`/run/x.sock`
//! inside the container): binds, connects and the name's file are done with this thread's root
//! moved to the tree's root for the moment, so the kernel records the name exactly as dumped
//! (getsockname in the restored tree reads `/run/x.sock`, not a host path).
//!
//! The thread restoring a tree with its own mount namespace has its own fs struct (it unshared
//! CLONE_NEWNS, which implies CLONE_FS), so chroot here moves no other thread's root.

use std::cell::RefCell;
use std::os::fd::{AsFd, OwnedFd};

use nix::fcntl::{open, OFlag};
use nix::sys::stat::Mode;

use super::{sys, UnixError};

thread_local! {
    /// The tree's root on this host, while its sockets are made (see [`TreeRoot`]).
    static ROOT: RefCell<Option<String>> = const { RefCell::new(None) };
    /// Inside [`in_tree`] already (a connection made from its listener's directory binds its
    /// own name): the root is the tree's, only the directory changes.
    static INSIDE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Names are the tree's under `root` until dropped.
pub struct TreeRoot(());

impl TreeRoot {
    pub fn set(root: Option<&str>) -> TreeRoot {
        ROOT.with(|r| *r.borrow_mut() = root.map(str::to_string));
        TreeRoot(())
    }
}

impl Drop for TreeRoot {
    fn drop(&mut self) {
        ROOT.with(|r| *r.borrow_mut() = None);
    }
}

/// Runs `f` with the names resolved as the tree sees them: from `dir` (a relative name's
/// directory, as the tree saw it) or the current directory, under the tree's root when one
/// is set; our root and directory come back afterwards, whatever `f` returned.
pub fn in_tree<T>(
    dir: Option<&str>,
    f: impl FnOnce() -> Result<T, UnixError>,
) -> Result<T, UnixError> {
    let inside = INSIDE.with(|i| i.get());
    let root = ROOT.with(|r| r.borrow().clone()).filter(|_| !inside);
    if root.is_none() && dir.is_none() {
        return f();
    }
    let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
    let back_root: OwnedFd = open("/", flags, Mode::empty()).map_err(sys("opening /"))?;
    let back_cwd: OwnedFd = open(".", flags, Mode::empty()).map_err(sys("opening ."))?;
    if let Some(r) = &root {
        nix::unistd::chroot(r.as_str()).map_err(sys("chroot to the tree's root"))?;
    }
    let to = dir.unwrap_or(if root.is_some() { "/" } else { "." });
    INSIDE.with(|i| i.set(true));
    let r = nix::unistd::chdir(to)
        .map_err(sys(format!("chdir {to}")))
        .and_then(|()| f());
    INSIDE.with(|i| i.set(inside));
    // Back: our root first (through its fd, from inside the tree's), then our directory. A
    // thread left in the tree's root would open every later file at the wrong path: that
    // fails the restore.
    if root.is_some() {
        nix::unistd::fchdir(back_root.as_fd())
            .and_then(|()| nix::unistd::chroot("."))
            .map_err(sys("returning to our root after a socket's name"))?;
    }
    nix::unistd::fchdir(back_cwd.as_fd())
        .map_err(sys("returning to our directory after a socket's name"))?;
    r
}
