//! Forking the tree: the root with its pid (in a new pid namespace, an external one, or ours),
//! each stub forking its children (see `stub`), and the wait until every task reports ready.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use super::pool::Pool;
use super::sessions::{self, Child, Forker, Member, RootKind, SessionPlan};
use super::{setup_err, stub, Created, DumpImage, PoolFds, RestoreError, RestoreOptions};
use crate::mm::premap::Premap;
use crate::proc;

/// The external pid namespace the caller handed over as `key` (`--inherit-fd fd[N]:KEY`, the
/// RPC's inherit_fd), as a new fd of ours.
pub(super) fn external_pidns(opts: &RestoreOptions, key: &str) -> Result<OwnedFd, RestoreError> {
    let Some(given) = opts.inherit_fds.iter().find(|i| i.key == key) else {
        return Err(RestoreError::ExternalPidNs {
            key: key.to_string(),
        });
    };
    // SAFETY: the caller's inherited fd, open for the whole restore; we dup it to own a copy.
    let fd = unsafe { BorrowedFd::borrow_raw(given.fd) };
    fd.try_clone_to_owned()
        .map_err(setup_err(format!("fd {} given for {key}", given.fd)))
}

/// How the root is forked.
pub(super) struct Fork {
    pub(super) trampoline: u64,
    /// As the caller's sibling (see [`RestoreOptions::sibling`]).
    pub(super) sibling: bool,
    /// As the init of a new pid namespace.
    pub(super) own_pidns: bool,
    /// Into this existing pid namespace (an nsfs fd).
    pub(super) ext_pidns: Option<RawFd>,
    /// Into the tree's mount namespace (see ns::mnt_sys).
    pub(super) mounts: Option<crate::ns::mnt_sys::StubMounts>,
    /// In a new cgroup namespace, rooted at our cgroup (where runc placed us).
    pub(super) new_cgroupns: bool,
    /// What the root joins first, so that the namespace is rooted at its dumped cgroups.
    pub(super) cgroupns_procs: Vec<std::ffi::CString>,
    /// The holder's user namespace (see ns::user), when the tree owned one.
    pub(super) userns: Option<RawFd>,
    /// Per task, its areas mapped before its children are forked (see mm::premap).
    pub(super) premaps: Vec<Vec<Premap>>,
    /// Who forks whom, and when, for the sessions to come back (see restore::sessions).
    pub(super) sessions: SessionPlan,
}

/// The tree's tasks as the session plan sees them.
pub(super) fn members(img: &DumpImage) -> Vec<Member> {
    img.tasks
        .iter()
        .map(|t| Member {
            pid: t.pid(),
            ppid: t.pstree.ppid,
            sid: t.pstree.sid,
            shares_parent_files: t.shares_parent_files,
        })
        .collect()
}

/// What the root is to orphans: a new pid namespace's init, a child subreaper, or neither.
fn root_kind(img: &DumpImage, own_pidns: bool) -> RootKind {
    if own_pidns {
        RootKind::PidNsInit
    } else if img.tasks[0].tc().child_subreaper == Some(true) {
        RootKind::Subreaper
    } else {
        RootKind::Plain
    }
}

/// Per task, its premapped areas (see mm::premap), for the tree forked as `sessions` says.
pub(super) fn premaps(
    img: &DumpImage,
    trampoline: u64,
    sessions: &SessionPlan,
) -> Vec<Vec<Premap>> {
    let parents = sessions::memory_parents(&members(img), sessions);
    crate::mm::premap::for_tree(img, trampoline, &parents)
}

/// The forks that bring every task back in its session (see restore::sessions).
pub(super) fn plan_sessions(img: &DumpImage, own_pidns: bool) -> Result<SessionPlan, RestoreError> {
    Ok(sessions::plan(&members(img), root_kind(img, own_pidns))?)
}

/// The stubs' gate words (see `stub::StubShared::gate`): a shared anonymous page, which the
/// stubs inherit at fork.
struct Gate {
    addr: *mut libc::c_void,
    len: usize,
}

impl Gate {
    fn new(tasks: usize) -> Result<Gate, RestoreError> {
        let len = (tasks * 4).div_ceil(4096) * 4096;
        // SAFETY: a fresh anonymous shared mapping, owned by the Gate and unmapped in Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(setup_err("the stubs' gate page")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Gate { addr, len })
    }

    /// Lets task `idx`'s stub go on.
    fn open(&self, idx: usize) {
        // SAFETY: idx < tasks (the page holds one u32 each); the word is only accessed
        // atomically, here and in the stubs.
        unsafe {
            let word = &*((self.addr as *const std::sync::atomic::AtomicU32).add(idx));
            word.store(1, std::sync::atomic::Ordering::Release);
            libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, 1);
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        // SAFETY: our own mapping, of this length; the stubs keep their copies.
        unsafe { libc::munmap(self.addr, self.len) };
    }
}

/// Forks the root with its pid (each stub then forks its own children), closes the pool the
/// stubs inherited, and waits until every task reports ready, zombies dead, filling premapped
/// memory on the way. Also returns the pages written into premapped areas.
pub(super) fn fork_tree(
    img: &DumpImage,
    pool: Pool,
    fork: Fork,
) -> Result<(Created, PoolFds, u64), RestoreError> {
    let Fork {
        trampoline,
        sibling,
        own_pidns,
        ext_pidns,
        mounts,
        new_cgroupns,
        cgroupns_procs,
        userns,
        premaps,
        sessions,
    } = fork;
    let gate = if premaps.iter().any(|p| !p.is_empty()) {
        Some(Gate::new(img.tasks.len())?)
    } else {
        None
    };
    let (ready_r, ready_w0) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| setup_err("pipe")(e.into()))?;
    // The stubs inherit the write end above the pool so that no target fd collides with it.
    let ready_w = crate::sys::fd::dup_above_inheritable(ready_w0.as_fd(), pool.top)
        .map_err(setup_err("dup of the ready pipe"))?;
    drop(ready_w0);
    // Everything the stubs read is made before the fork: after it they allocate nothing.
    let shared = stub::StubShared {
        tasks: stub_plans(img, &pool, &premaps, &sessions, own_pidns)?,
        ready_fd: ready_w.as_raw_fd(),
        pool_base: pool.base,
        trampoline,
        mounts,
        new_cgroupns,
        cgroupns_procs,
        gate: gate.as_ref().map_or(0, |g| g.addr as u64),
    };
    let mut created = Created {
        root: None,
        root_is_child: !sibling,
        pids: Vec::new(),
        traced: Vec::new(),
        armed: true,
        tree: img.tasks.iter().map(|t| t.pid()).collect(),
    };
    let root_pid = img.tasks[0].pid();
    // A sibling's parent is ours: its stub's parent-death signal follows the caller, who
    // waits for us (runc), rather than us.
    let (mut parent, mut flags) = if sibling {
        (nix::unistd::getppid().as_raw(), libc::CLONE_PARENT as u64)
    } else {
        (nix::unistd::getpid().as_raw(), 0)
    };
    if own_pidns {
        // pid 1 of a new namespace; its parent, outside, reads as pid 0 there.
        flags |= libc::CLONE_NEWPID as u64;
        parent = 0;
    }
    if ext_pidns.is_some() {
        // Its parent is outside the namespace it joins.
        parent = 0;
    }
    let forked = match (userns, ext_pidns) {
        (None, None) => stub::fork_with_pid(root_pid, flags),
        (None, Some(ns)) => {
            // The dumped root, killed after the dump, may not be reaped yet (its parent
            // outside the namespace reaps late, as PID 1 does): its pid frees up within
            // seconds, as wait_pid_free waits for one in ours.
            let end = Instant::now() + PID_FREE_WAIT;
            loop {
                let r = crate::ns::pid::fork_in(ns, || stub::fork_with_pid(root_pid, flags))
                    .map_err(setup_err("joining the tree's external pid namespace"))?;
                if r != -(libc::EEXIST as i64) || Instant::now() >= end {
                    break r;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        (Some(user), None) => stub::fork_in_userns(user, root_pid, flags)
            .map_err(setup_err("forking the root in the tree's user namespace"))?,
        (Some(_), Some(_)) => {
            return Err(setup_err(
                "a tree with a user namespace of its own and an external pid namespace",
            )(std::io::Error::from_raw_os_error(
                libc::EOPNOTSUPP,
            )))
        }
    };
    match forked {
        0 => stub::run(&shared, 0, parent),
        r if r < 0 => {
            let errno = (-r) as u32;
            if errno == libc::EEXIST as u32 {
                return Err(RestoreError::PidTaken { pid: root_pid });
            }
            return Err(RestoreError::Stub {
                pid: root_pid,
                what: "clone3",
                errno,
            });
        }
        // The host's pid: the one we can kill it by (for a namespace's init, not 1).
        r => created.root = Some(r as u32),
    }
    drop(ready_w);
    let files = PoolFds {
        by_file: pool.by_file.clone(),
        by_shmid: pool.by_shmid.clone(),
        base: pool.base,
    };
    drop(pool);
    // In a pid namespace the stubs report the pids they see there.
    let ns_root = (own_pidns || ext_pidns.is_some())
        .then_some(created.root)
        .flatten();
    let premapped = wait_ready(
        &ready_r,
        img,
        &mut created,
        &premaps,
        gate.as_ref(),
        ns_root,
    )?;
    Ok((created, files, premapped))
}

/// How long a dumped pid may stay taken by the dumped task's unreaped zombie (its parent, or
/// an init that reaps late, waits for it).
const PID_FREE_WAIT: Duration = Duration::from_secs(5);

/// Waits until `pid` is free in our namespace: a zombie gets [`PID_FREE_WAIT`].
pub(super) fn wait_pid_free(pid: u32) -> Result<(), RestoreError> {
    let end = Instant::now() + PID_FREE_WAIT;
    loop {
        match proc::stat(pid) {
            Err(_) => return Ok(()),
            Ok(s) if s.state == 'Z' && Instant::now() < end => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Ok(_) => return Err(RestoreError::PidTaken { pid }),
        }
    }
}

fn wait_ready(
    ready: &OwnedFd,
    img: &DumpImage,
    created: &mut Created,
    premaps: &[Vec<Premap>],
    gate: Option<&Gate>,
    ns_root: Option<u32>,
) -> Result<u64, RestoreError> {
    let mut deadline = Instant::now() + Duration::from_secs(30);
    let mut premapped = 0;
    let mut ready_count = 0;
    let mut buf = Vec::new();
    while ready_count < img.tasks.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(RestoreError::Timeout);
        }
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let timeout = PollTimeout::try_from(left.as_millis().min(i32::MAX as u128) as i32)
            .unwrap_or(PollTimeout::MAX);
        if poll(
            &mut [PollFd::new(ready.as_fd(), PollFlags::POLLIN)],
            timeout,
        )
        .is_err()
        {
            continue;
        }
        let mut chunk = [0u8; 1200];
        let got = match nix::unistd::read(ready, &mut chunk) {
            Ok(0) => {
                return Err(RestoreError::ExitedBeforeReady {
                    pid: img.tasks[0].pid(),
                })
            }
            Ok(n) => n,
            Err(_) => continue,
        };
        buf.extend_from_slice(&chunk[..got]);
        while buf.len() >= 12 {
            let rec: Vec<u8> = buf.drain(..12).collect();
            let word =
                |i: usize| u32::from_ne_bytes(rec[i * 4..i * 4 + 4].try_into().expect("4 bytes"));
            let (pid, code, errno) = (word(0), word(1), word(2));
            if code == 0 {
                ready_count += 1;
                if Some(pid) != created.root {
                    created.pids.push(pid);
                }
                continue;
            }
            if code == stub::STUB_PREMAPPED {
                super::step(format_args!("premapped memory of task {pid}"))?;
                let idx =
                    img.tasks
                        .iter()
                        .position(|t| t.pid() == pid)
                        .ok_or(RestoreError::Stub {
                            pid,
                            what: "premapping (an unknown pid)",
                            errno: libc::ESRCH as u32,
                        })?;
                let here = match ns_root {
                    Some(root) => {
                        crate::mm::premap::host_pid(root, pid).ok_or(RestoreError::Stub {
                            pid,
                            what: "premapping (its pid here not found)",
                            errno: libc::ESRCH as u32,
                        })?
                    }
                    None => pid,
                };
                let (written, shared) =
                    crate::mm::premap::fill(&img.dir, &img.tasks[idx], here, &premaps[idx])?;
                log::debug!(
                    "task {pid}: premapped {written} pages, {shared} left shared with its parent"
                );
                premapped += written;
                if let Some(g) = gate {
                    g.open(idx);
                }
                // Filling takes as long as the memory is large: the stubs' time starts again.
                deadline = Instant::now() + Duration::from_secs(30);
                continue;
            }
            if code == stub::STUB_CLONE && errno == libc::EEXIST as u32 {
                return Err(RestoreError::PidTaken { pid });
            }
            if code & 0xff == stub::STUB_MOUNT {
                return Err(RestoreError::StubMount {
                    pid,
                    step: match code >> 8 {
                        1 => "entering the tree's mount namespace".into(),
                        2 => "chdir to the new root".into(),
                        3 => "pivot_root into the new root".into(),
                        4 => "detaching the old root".into(),
                        5 => "unsharing a cgroup namespace".into(),
                        10 => "joining its dumped cgroups before its cgroup namespace".into(),
                        6 => "making a mount shared again".into(),
                        7 => "making a mount a slave again".into(),
                        8 => "joining a mount to its peer group (MOVE_MOUNT_SET_GROUP)".into(),
                        9 => "entering its nested mount namespace".into(),
                        n if n >= 1 << 16 => format!(
                            "propagation step #{} ({}; see the debug log's list)",
                            (n >> 4) & 0xfff,
                            match n & 0xf {
                                6 => "making a mount shared again",
                                7 => "making a mount a slave again",
                                _ => "joining a mount to its peer group (MOVE_MOUNT_SET_GROUP)",
                            }
                        ),
                        n if n >= 256 + 16 => format!(
                            "nested mount namespace {}'s mount #{} (see the debug log's list)",
                            (n - 16) >> 8,
                            (n - 16) & 0xff
                        ),
                        n => format!("the init's mount #{} (see the debug log's list)", n - 16),
                    },
                    errno,
                });
            }
            let what = match code {
                stub::STUB_CLONE => "clone3 with the dumped pid",
                stub::STUB_CHDIR => "chdir to the dumped cwd",
                stub::STUB_CHROOT => "chroot to the dumped root",
                stub::STUB_MOUNT => "entering the tree's mount namespace and making its proc",
                stub::STUB_TRAMPOLINE => "mapping the trampoline page",
                stub::STUB_DUP => "placing an fd",
                stub::STUB_SESSION => "joining the dumped session or process group",
                stub::STUB_PREMAP => "mapping memory to share with its children",
                _ => "setup",
            };
            return Err(RestoreError::Stub { pid, what, errno });
        }
    }
    Ok(premapped)
}

fn stub_plans(
    img: &DumpImage,
    pool: &Pool,
    premaps: &[Vec<Premap>],
    sessions: &SessionPlan,
    own_pidns: bool,
) -> Result<Vec<stub::StubPlan>, RestoreError> {
    let mut plans = Vec::new();
    let no_premaps = Vec::new();
    let pids: std::collections::HashSet<u32> = img.tasks.iter().map(|t| t.pid()).collect();
    let in_tree = |pid: u32| pids.contains(&pid);
    let helper_led = |sid: u32| sessions.helpers.iter().any(|h| h.pid == Some(sid));
    let root_pgid = img.tasks.first().map_or(0, |r| r.pstree.pgid);
    let members = members(img);
    let n = img.tasks.len();
    let pgids: std::collections::HashSet<u32> = img.tasks.iter().map(|t| t.pstree.pgid).collect();
    let orders = sessions::fork_orders(&members, sessions, |i| pgids.contains(&img.tasks[i].pid()));
    // Plan indices: the tasks, then the helpers.
    let children = |f: Forker| {
        let (kids, before) = orders.of(f);
        let kids: Vec<usize> = kids
            .iter()
            .map(|c| match *c {
                Child::Task(i) => i,
                Child::Helper(h) => n + h,
            })
            .collect();
        (kids, *before)
    };
    let subreaper_root = root_kind(img, own_pidns) == RootKind::Subreaper;
    // With nested mount namespaces every task but the root (which enters the tree's) enters
    // its own: a task of the tree's may be the child of a nested one's.
    let mntns = |i: usize, t: &crate::restore::load::TaskImage| {
        (!img.nested_mounts.is_empty() && i > 0 && t.zombie_exit.is_none()).then(|| {
            let id = t.threads[0].core.ids.as_ref().and_then(|ids| ids.mnt_ns_id);
            crate::ns::mnt_nested_sys::index_of(&img.nested_mounts, id).map_or(0, |k| k + 1)
        })
    };
    for (i, t) in img.tasks.iter().enumerate() {
        let mine = premaps.get(i).unwrap_or(&no_premaps);
        let name = |id: u32| {
            img.files
                .get(&id)
                .and_then(|f| f.reg.as_ref())
                .map(|r| r.name.clone())
                .unwrap_or_else(|| "/".to_string())
        };
        let cstr = |s: String| {
            std::ffi::CString::new(s).map_err(|_| RestoreError::NulInPath { pid: t.pid() })
        };
        let root = name(t.fs.root_id);
        let comm = t.tc().comm.as_bytes();
        let mut c = [0u8; 16];
        let n = comm.len().min(15);
        c[..n].copy_from_slice(&comm[..n]);
        let (kids, before_setsid) = children(Forker::Task(i));
        plans.push(stub::StubPlan {
            pid: t.pid(),
            pgid: t.pstree.pgid,
            pgid_in_tree: in_tree(t.pstree.pgid),
            // Not the group the root was in outside the tree (a shell's), in a session of
            // the tree's own.
            pgid_leaderless: !in_tree(t.pstree.pgid)
                && t.pstree.pgid != root_pgid
                && (in_tree(t.pstree.sid) || helper_led(t.pstree.sid)),
            sid: t.pstree.sid,
            children: kids,
            before_setsid,
            role: stub::Role::Task,
            reparented: sessions.via_helper.get(i).copied().flatten().is_some(),
            subreaper: i == 0 && subreaper_root,
            fds: t
                .fds
                .iter()
                .filter_map(|f| Some((f.fd as RawFd, *pool.by_file.get(&f.id)?, f.flags & 1 != 0)))
                .collect(),
            ctty: crate::files::tty::controlling_slave(t, img)
                .map(|(fd, _)| {
                    let id = t
                        .fds
                        .iter()
                        .find(|f| f.fd as RawFd == fd)
                        .expect("from t.fds")
                        .id;
                    pool.by_file[&id]
                })
                .or_else(|| pool.ctty_by_pid.get(&t.pid()).copied()),
            cwd: cstr(name(t.fs.cwd_id))?,
            cwd_fd: (img.remaps.contains_key(&t.fs.cwd_id)
                || img.dead_procs.contains_key(&t.fs.cwd_id))
            .then(|| pool.by_file.get(&t.fs.cwd_id).copied())
            .flatten(),
            root: if root == "/" || root.is_empty() {
                None
            } else {
                Some(cstr(root)?)
            },
            umask: t.fs.umask.unwrap_or(0o022),
            comm: c,
            zombie_exit: t.zombie_exit,
            clone_files: t.shares_parent_files,
            premap: mine
                .iter()
                .filter(|p| p.own)
                .map(|p| {
                    let file = match p.file {
                        Some((id, off)) => Some((
                            *pool.by_file.get(&id).ok_or(RestoreError::Mm(
                                crate::mm::MmError::FileNotOpened { pid: t.pid(), id },
                            ))?,
                            off,
                        )),
                        None => None,
                    };
                    Ok(stub::StubPremap {
                        at: p.at,
                        len: p.len,
                        prot: p.prot,
                        flags: p.flags,
                        file,
                    })
                })
                .collect::<Result<_, RestoreError>>()?,
            premap_wait: !mine.is_empty(),
            mntns: mntns(i, t),
            table_shared: t.zombie_exit.is_none()
                && img.tasks.iter().any(|o| {
                    o.pid() != t.pid() && o.zombie_exit.is_none() && o.files_id == t.files_id
                }),
        });
    }
    plans.extend(helper_plans(img, sessions, children));
    Ok(plans)
}

/// The session helpers' plans (see restore::sessions), after the tasks': `children` gives a
/// forker's children in plan indices.
fn helper_plans(
    img: &DumpImage,
    sessions: &SessionPlan,
    children: impl Fn(Forker) -> (Vec<usize>, usize),
) -> Vec<stub::StubPlan> {
    let mut plans = Vec::new();
    // A free pid for a helper that needs none in particular: above every pid of the tree, so
    // that it takes none a task is forked with later.
    let mut free = img
        .tasks
        .iter()
        .flat_map(|t| t.threads.iter().map(|th| th.tid))
        .max()
        .unwrap_or(0)
        + 1;
    for (h, helper) in sessions.helpers.iter().enumerate() {
        let (kids, _) = children(Forker::Helper(h));
        let pid = helper.pid.unwrap_or_else(|| {
            free += 1;
            free - 1
        });
        plans.push(stub::StubPlan {
            pid,
            pgid: 0,
            pgid_in_tree: false,
            pgid_leaderless: false,
            sid: helper.sid,
            children: kids,
            before_setsid: 0,
            role: stub::Role::Helper {
                any_pid: helper.pid.is_none(),
            },
            reparented: false,
            subreaper: false,
            fds: Vec::new(),
            ctty: None,
            cwd: c"/".to_owned(),
            cwd_fd: None,
            root: None,
            umask: 0o022,
            comm: *b"stasis-helper\0\0\0",
            zombie_exit: None,
            clone_files: helper.clone_files,
            premap: Vec::new(),
            premap_wait: false,
            mntns: None,
            table_shared: false,
        });
    }
    plans
}
