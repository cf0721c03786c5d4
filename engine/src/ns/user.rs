//! User namespaces a tree owns (a runc container with uidMappings, podman's --userns).
//!
//! The dump saves the root's uid and gid maps (CRIU's `userns-<id>.img`) and writes every
//! thread's credentials as the tree sees them (the host's ids mapped back into the namespace),
//! since the restore sets them from inside.
//!
//! The restore needs every other namespace of the tree to be owned by the new user namespace,
//! or root in the container could not, say, configure its own network. A multi-threaded
//! restorer can neither create nor enter a user namespace, so a *holder* does it: a process
//! forked with `CLONE_NEWUSER` (raw syscalls only: fork safety), whose maps the restorer
//! writes, and which then unshares the tree's other namespaces, owned by that user namespace,
//! and waits. The restoring thread enters those (host root may enter namespaces its descendants
//! own) and fills them as it fills new ones. The root's stub, still host root, enters the
//! mount namespace, mounts its proc and pivots, and only then joins the user namespace (see
//! `restore/stub.rs`): the pid namespace is the one the restorer forks it into, owned by the
//! host's user namespace (a fresh pid namespace cannot be entered before its init exists, and
//! the init is what we fork), so only host root may mount its proc. That ownership is the one
//! difference from the dumped tree.

use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crate::images::pb;

/// Image ids of user namespaces: the dumper's, the tree's own.
pub const HOST_NS_ID: u32 = 15;
pub const TREE_NS_ID: u32 = 16;

#[derive(Debug, thiserror::Error)]
pub enum UserNsError {
    #[error("{path} line {line}: expected three numbers, got {text:?}")]
    BadMap {
        path: String,
        line: usize,
        text: String,
    },
    #[error("reading {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}")]
    Holder {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Parses a `uid_map`/`gid_map` file: "inside outside count" lines.
pub fn parse_map(path: &str, text: &str) -> Result<Vec<pb::UidGidExtent>, UserNsError> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(n, l)| {
            let v: Vec<u32> = l
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            match v.as_slice() {
                [first, lower_first, count] => Ok(pb::UidGidExtent {
                    first: *first,
                    lower_first: *lower_first,
                    count: *count,
                }),
                _ => Err(UserNsError::BadMap {
                    path: path.to_string(),
                    line: n + 1,
                    text: l.to_string(),
                }),
            }
        })
        .collect()
}

/// A map as the kernel takes it in `/proc/<pid>/uid_map`.
pub fn map_text(map: &[pb::UidGidExtent]) -> String {
    map.iter()
        .map(|e| format!("{} {} {}\n", e.first, e.lower_first, e.count))
        .collect()
}

/// An id as we see it, as the namespace sees it; the overflow id (65534) when it has none
/// there, as the kernel shows such ids.
pub fn to_ns(id: u32, map: &[pb::UidGidExtent]) -> u32 {
    map.iter()
        .find(|e| id >= e.lower_first && id - e.lower_first < e.count)
        .map_or(65534, |e| e.first + (id - e.lower_first))
}

/// A filesystem's options (`uid=100000,gid=100000,mode=755`, as the host reads them) as a
/// mounter inside the namespace must give them.
pub fn fs_opts_to_ns(data: &str, maps: &pb::UsernsEntry) -> String {
    data.split(',')
        .map(|o| match o.split_once('=') {
            Some(("uid", v)) => match v.parse() {
                Ok(id) => format!("uid={}", to_ns(id, &maps.uid_map)),
                Err(_) => o.to_string(),
            },
            Some(("gid", v)) => match v.parse() {
                Ok(id) => format!("gid={}", to_ns(id, &maps.gid_map)),
                Err(_) => o.to_string(),
            },
            _ => o.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The tree's uid and gid maps, as its root's /proc shows them.
pub fn read_maps(root: u32) -> Result<pb::UsernsEntry, UserNsError> {
    let read = |what: &str| {
        let path = format!("/proc/{root}/{what}");
        let text = std::fs::read_to_string(&path).map_err(|source| UserNsError::Read {
            path: path.clone(),
            source,
        })?;
        parse_map(&path, &text)
    };
    Ok(pb::UsernsEntry {
        uid_map: read("uid_map")?,
        gid_map: read("gid_map")?,
    })
}

/// A thread's credentials, read from outside, as the tree's namespace sees them.
pub fn creds_to_ns(c: &mut pb::CredsEntry, maps: &pb::UsernsEntry) {
    let (u, g) = (&maps.uid_map, &maps.gid_map);
    for id in [&mut c.uid, &mut c.euid, &mut c.suid, &mut c.fsuid] {
        *id = to_ns(*id, u);
    }
    for id in [&mut c.gid, &mut c.egid, &mut c.sgid, &mut c.fsgid] {
        *id = to_ns(*id, g);
    }
    for id in c.groups.iter_mut() {
        *id = to_ns(*id, g);
    }
}

/// Runs `f` on this thread with its effective uid the namespace's root's (as the host knows
/// it), capabilities kept. An IPC namespace's limits (`kernel.sem`, `fs.mqueue.*`...) are
/// writable by its user namespace's root only, whatever host root's capabilities. The change
/// is this thread's alone: raw syscalls, not glibc's, which would apply it to every thread.
pub fn as_ns_root<T>(maps: &pb::UsernsEntry, f: impl FnOnce() -> T) -> T {
    let Some(root) = maps
        .uid_map
        .iter()
        .find(|e| e.first == 0 && e.count > 0)
        .map(|e| e.lower_first)
    else {
        return f();
    };
    const SECBIT_NO_SETUID_FIXUP: libc::c_long = 1 << 2;
    // SAFETY: per-thread credential syscalls on integers; each is undone below.
    let old = unsafe { libc::syscall(libc::SYS_prctl, libc::PR_GET_SECUREBITS as libc::c_long) };
    // SAFETY: as above.
    let switched = unsafe {
        old >= 0
            && libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_SECUREBITS as libc::c_long,
                old | SECBIT_NO_SETUID_FIXUP,
            ) == 0
            && libc::syscall(
                libc::SYS_setresuid,
                -1 as libc::c_long,
                root as libc::c_long,
                -1 as libc::c_long,
            ) == 0
    };
    let r = f();
    if switched {
        // SAFETY: as above: back to euid 0 and the securebits we had.
        unsafe {
            libc::syscall(
                libc::SYS_setresuid,
                -1 as libc::c_long,
                0 as libc::c_long,
                -1 as libc::c_long,
            );
            libc::syscall(
                libc::SYS_prctl,
                libc::PR_SET_SECUREBITS as libc::c_long,
                old,
            );
        }
    }
    r
}

/// The holder (see the module comment) and its namespaces, open; it is killed when dropped.
pub struct Holder {
    pid: libc::pid_t,
    pub user: OwnedFd,
    /// The namespaces it unshared, by their /proc/<pid>/ns names.
    pub others: Vec<(&'static str, OwnedFd)>,
}

impl Drop for Holder {
    fn drop(&mut self) {
        // SAFETY: kill and waitpid of our own child, by pid, into a local.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(self.pid, &mut st, libc::__WALL);
        }
    }
}

impl Holder {
    pub fn get(&self, kind: &str) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        self.others
            .iter()
            .find(|(k, _)| *k == kind)
            .map(|(_, f)| f.as_fd())
    }
}

/// Forks the holder: a new user namespace with `maps`, then the namespaces `kinds` names
/// (`("net", CLONE_NEWNET)`...).
pub fn spawn(
    maps: &pb::UsernsEntry,
    kinds: &[(&'static str, libc::c_int)],
) -> Result<Holder, UserNsError> {
    let err = |what: &str| {
        let what = what.to_string();
        move |source: std::io::Error| UserNsError::Holder { what, source }
    };
    let pipe = || {
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| err("pipe")(std::io::Error::from(e)))
    };
    let (go_r, go_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let flags = kinds.iter().fold(0, |f, (_, k)| f | k);
    let (go_fd, ready_fd) = (go_r.as_raw_fd(), ready_w.as_raw_fd());
    let args = crate::sys::clone::CloneArgs {
        flags: libc::CLONE_NEWUSER as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..Default::default()
    };
    // SAFETY: clone3 without CLONE_VM is a fork. The child runs raw syscalls only, on
    // integers computed before the fork (the restorer may be multi-threaded), and never
    // returns.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &args as *const crate::sys::clone::CloneArgs,
            std::mem::size_of::<crate::sys::clone::CloneArgs>(),
        )
    };
    if pid == 0 {
        holder_main(go_fd, ready_fd, flags);
    }
    if pid < 0 {
        return Err(err("clone3(CLONE_NEWUSER) of the namespace holder")(
            std::io::Error::last_os_error(),
        ));
    }
    let pid = pid as libc::pid_t;
    // Killed and reaped from here on, whatever fails.
    let guard = Reaper(pid);
    drop((go_r, ready_w));
    for (file, map) in [("uid_map", &maps.uid_map), ("gid_map", &maps.gid_map)] {
        let path = format!("/proc/{pid}/{file}");
        std::fs::write(&path, map_text(map)).map_err(err(&format!("writing {path}")))?;
    }
    nix::unistd::write(&go_w, b"g").map_err(|e| err("starting the holder")(e.into()))?;
    let mut b = [0u8; 1];
    match nix::unistd::read(&ready_r, &mut b) {
        Ok(1) => {}
        Ok(_) => {
            return Err(
                err("the namespace holder could not unshare its namespaces")(
                    std::io::Error::from_raw_os_error(libc::EPERM),
                ),
            )
        }
        Err(e) => return Err(err("waiting for the namespace holder")(e.into())),
    }
    let mut others = Vec::new();
    for (name, _) in kinds {
        others.push((*name, open_ns(pid, name)?));
    }
    let holder = Holder {
        pid,
        user: open_ns(pid, "user")?,
        others,
    };
    std::mem::forget(guard);
    Ok(holder)
}

/// Kills and reaps a holder that never became a [`Holder`].
struct Reaper(libc::pid_t);

impl Drop for Reaper {
    fn drop(&mut self) {
        // SAFETY: kill and waitpid of our own child, by pid, into a local.
        unsafe {
            libc::kill(self.0, libc::SIGKILL);
            let mut st = 0;
            libc::waitpid(self.0, &mut st, libc::__WALL);
        }
    }
}

fn open_ns(pid: libc::pid_t, kind: &str) -> Result<OwnedFd, UserNsError> {
    let path = format!("/proc/{pid}/ns/{kind}");
    std::fs::File::open(&path)
        .map(OwnedFd::from)
        .map_err(|source| UserNsError::Read { path, source })
}

/// The holder's life: wait for its maps, unshare the namespaces, say so, wait to be killed.
fn holder_main(go: RawFd, ready: RawFd, flags: libc::c_int) -> ! {
    // SAFETY: raw syscalls on integers and a local buffer in a single-threaded child.
    unsafe {
        libc::syscall(
            libc::SYS_prctl,
            libc::PR_SET_PDEATHSIG as libc::c_long,
            libc::SIGKILL as libc::c_long,
        );
        let mut b = [0u8; 1];
        if libc::syscall(libc::SYS_read, go, b.as_mut_ptr(), 1) != 1 {
            libc::_exit(1);
        }
        if libc::syscall(libc::SYS_unshare, flags) != 0 {
            libc::_exit(1);
        }
        libc::syscall(libc::SYS_write, ready, b.as_ptr(), 1);
        libc::syscall(libc::SYS_close, ready);
        loop {
            libc::syscall(libc::SYS_pause);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(first: u32, lower_first: u32, count: u32) -> pb::UidGidExtent {
        pb::UidGidExtent {
            first,
            lower_first,
            count,
        }
    }

    #[test]
    fn maps_parse_and_ids_map_back_into_the_namespace() {
        let m = parse_map("m", "         0     100000      65536\n").unwrap();
        assert_eq!(m, [ext(0, 100000, 65536)]);
        assert_eq!(map_text(&m), "0 100000 65536\n");
        assert_eq!(to_ns(100000, &m), 0);
        assert_eq!(to_ns(100005, &m), 5);
        assert_eq!(to_ns(0, &m), 65534, "unmapped shows as the overflow id");
        assert!(parse_map("m", "0 1\n").is_err());
        let mut c = pb::CredsEntry {
            uid: 100000,
            euid: 100000,
            gid: 100001,
            groups: vec![100005],
            ..Default::default()
        };
        creds_to_ns(
            &mut c,
            &pb::UsernsEntry {
                uid_map: m.clone(),
                gid_map: m,
            },
        );
        assert_eq!((c.uid, c.euid, c.gid, c.groups[0]), (0, 0, 1, 5));
        let maps = pb::UsernsEntry {
            uid_map: vec![ext(0, 100000, 65536)],
            gid_map: vec![ext(0, 100000, 65536)],
        };
        assert_eq!(
            fs_opts_to_ns("size=1k,uid=100000,gid=100005,mode=755", &maps),
            "size=1k,uid=0,gid=5,mode=755"
        );
    }
}
