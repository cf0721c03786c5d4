//! End-to-end: files a tree holds open: /proc files, pipes and FIFOs with bytes buffered,
//! locks and leases, inotify and fanotify, pidfds, shared fd tables, and every fd kind at once.
//! Files deleted while open are in deleted.rs.

use std::time::{Duration, Instant};

use stasis_tests::*;

/// Files of /proc/<pid>/ of the tree held open (a program watching its own stat): they cannot
/// be opened before the tasks exist, so each task reopens its own, at the same fd, offset and
/// close-on-exec flag; a /proc file of no task (uptime) is opened as usual.
#[test]
fn proc_files_of_the_tree_are_reopened_by_their_task() {
    let _g = serial_root!();
    let script = r#"
import os, threading, time
f = open("/proc/self/stat")
f.read(3)
h = os.open(f"/proc/self/task/{threading.get_native_id()}/comm", os.O_RDONLY)
os.set_inheritable(h, True)
u = open("/proc/uptime")
def state():
    pos = f.tell(); f.seek(0); pid = f.read().split()[0]; f.seek(pos)
    os.lseek(h, 0, 0); u.seek(0)
    return f"{pid} {pos} {os.read(h, 50).decode().strip()} {os.get_inheritable(h)} {os.get_inheritable(f.fileno())} {float(u.read().split()[0]) > 0}"
print("ready", state(), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", state(), flush=True)
time.sleep(1e6)
"#;
    let (w, lines) = python_across_restore("procfiles", script, 2);
    let ready = lines[0].strip_prefix("ready ").unwrap().to_string();
    assert_eq!(ready, format!("{} 3 python3 True False True", w.pid));
    assert_eq!(lines[1], format!("after {ready}"));
}

#[test]
fn bytes_buffered_in_a_pipe_survive() {
    let _g = serial_root!();
    let w = Workload::start("pipebuf", &workload("pipebuf"), &[]);
    let lines = w.wait_lines(4, T);
    let want = lines[0]
        .strip_prefix("want ")
        .expect("want line")
        .to_string();
    let child: i32 = lines
        .iter()
        .find_map(|l| l.strip_prefix("child-pid "))
        .expect("child pid")
        .parse()
        .unwrap();
    let pids = dump_kill_restore(&w);
    // SAFETY: kill(2): the child now reads what the pipe held.
    unsafe { libc::kill(child, libc::SIGUSR1) };
    let end = Instant::now() + T;
    while !w.lines().iter().any(|l| l.starts_with("child ")) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_tree(&pids);
    let got = w
        .lines()
        .into_iter()
        .find(|l| l.starts_with("child "))
        .expect("child read");
    assert_eq!(got, format!("child 30000 {want}"));
}

#[test]
fn every_fd_kind_keeps_working_in_one_program() {
    let _g = serial_root!();
    let w = Workload::start("fdkinds", &workload("fdkinds"), &[]);
    let lines = w.wait_lines(5, T);
    let expect = lines[0]
        .strip_prefix("expect ")
        .expect("expect line")
        .to_string();
    let ticks = |w: &Workload| -> u64 {
        w.lines()
            .iter()
            .filter_map(|l| l.strip_prefix("tick ")?.parse().ok())
            .max()
            .unwrap_or(0)
    };
    let pids = dump_kill_restore_with(&w, &["--file-locks"], &["--file-locks"]);
    let before = ticks(&w);
    let end = Instant::now() + T;
    while ticks(&w) < before + 10 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let after = ticks(&w);
    // inotify: a file created now is seen by the restored watch.
    std::fs::write(w.dir.join("created-after-restore"), b"").unwrap();
    // SAFETY: kill(2): read through the signalfd, it makes the task check every object.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGUSR1) };
    let end = Instant::now() + T;
    while !(w.lines().iter().any(|l| l.starts_with("check "))
        && w.lines()
            .iter()
            .any(|l| l == "inotify created-after-restore"))
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    // Locks: still held by the restored task.
    let got_flock = !flock_taken(&w.dir.join("flock"));
    // /proc/locks names the pid that took a flock lock (zdtm's file_locks01 checks it).
    let flock_owner = flock_owner(&w.dir.join("flock"));
    let posix = lock_probe(&w.dir.join("posix"), libc::F_GETLK, 12, 1);
    let lines = w.lines();
    kill_tree(&pids);
    assert!(
        after >= before + 10,
        "the timerfd keeps firing through epoll: {before} -> {after}"
    );
    let check = lines
        .iter()
        .find(|l| l.starts_with("check "))
        .expect("signalfd delivered");
    assert_eq!(
        check.strip_prefix("check ").unwrap(),
        expect,
        "eventfd count, memfd content, mappings, seals, offset, pty echo, fifo, pipe, unix"
    );
    assert!(
        lines.iter().any(|l| l == "inotify created-after-restore"),
        "inotify sees new files"
    );
    assert!(!got_flock, "flock is held by the restored task");
    assert_eq!(
        flock_owner,
        Some(w.pid.to_string()),
        "taken by the task itself"
    );
    assert_eq!(
        posix,
        (libc::F_WRLCK as i16, w.pid as i32),
        "POSIX lock held by the restored pid"
    );
}

#[test]
fn fifo_with_buffered_data_survives() {
    let _g = serial_root!();
    let script = r#"
import os, time
os.mkfifo("f")
r = os.open("f", os.O_RDONLY | os.O_NONBLOCK)
w = os.open("f", os.O_WRONLY)
os.write(w, b"fifo data " * 100)
print("ready", r, w, flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("read", os.read(r, 5000) == b"fifo data " * 100, flush=True)
os.write(w, b"more")
print("again", os.read(r, 10), flush=True)
while True: time.sleep(1)
"#;
    let (_w, lines) = python_across_restore("fifo", script, 3);
    assert_eq!(
        &lines[1..3],
        &["read True".to_string(), "again b'more'".to_string()]
    );
}

#[test]
fn file_locks_are_held_again_after_restore() {
    let _g = serial_root!();
    let script = r#"
import fcntl, os, struct, time
f = open("flock", "w"); fcntl.flock(f, fcntl.LOCK_EX)
g = open("posix", "w"); fcntl.lockf(g, fcntl.LOCK_EX, 10, 5)
h = os.open("ofd", os.O_RDWR | os.O_CREAT)
fcntl.fcntl(h, 37, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 100, 0))  # F_OFD_SETLK
n = 0
while True:
    print(n, flush=True); n += 1; time.sleep(0.02)
"#;
    let w = Workload::python("locks", script);
    w.wait_lines(3, T);
    let o = dump_workload(&w, &[]);
    assert!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("--file-locks"));
    let pids = dump_kill_restore_with(&w, &["--file-locks"], &["--file-locks"]);
    let got_flock = !flock_taken(&w.dir.join("flock"));
    // /proc/locks names the pid that took a flock lock (zdtm's file_locks01 checks it).
    let flock_owner = flock_owner(&w.dir.join("flock"));
    let posix = lock_probe(&w.dir.join("posix"), libc::F_GETLK, 12, 1);
    let ofd = lock_probe(&w.dir.join("ofd"), libc::F_OFD_GETLK, 50, 1);
    let outside = lock_probe(&w.dir.join("posix"), libc::F_GETLK, 0, 5);
    kill_tree(&pids);
    assert!(!got_flock, "flock is held by the restored task");
    assert_eq!(
        flock_owner,
        Some(w.pid.to_string()),
        "taken by the task itself"
    );
    assert_eq!(
        posix,
        (libc::F_WRLCK as i16, w.pid as i32),
        "POSIX lock held, by the restored pid"
    );
    assert_eq!(ofd.0, libc::F_WRLCK as i16, "OFD lock held");
    assert_eq!(outside.0, libc::F_UNLCK as i16, "only the locked range");
}

#[test]
fn inotify_watches_see_new_files_after_restore() {
    let _g = serial_root!();
    // Three watches, the middle one removed (wd 1 and 3 remain): events must come with them.
    let script = r#"
import ctypes, os, struct, time, select
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
os.makedirs("a", exist_ok=True); os.makedirs("b", exist_ok=True); os.makedirs("c", exist_ok=True)
IN_CREATE = 0x100
wa = libc.inotify_add_watch(fd, b"a", IN_CREATE)
wb = libc.inotify_add_watch(fd, b"b", IN_CREATE)
wc = libc.inotify_add_watch(fd, b"c", IN_CREATE)
libc.inotify_rm_watch(fd, wb)
os.read(fd, 4096)  # the IN_IGNORED of b
print("watches", wa, wc, flush=True)
while True:
    r, _, _ = select.select([fd], [], [], 0.05)
    if r:
        buf = os.read(fd, 4096)
        off = 0
        while off < len(buf):
            wd, mask, cookie, n = struct.unpack_from("iIII", buf, off)
            name = buf[off + 16: off + 16 + n].rstrip(b"\0").decode()
            print("event", wd, hex(mask), name, flush=True)
            off += 16 + n
"#;
    let w = Workload::python("inotify", script);
    let first = w.wait_lines(1, T);
    assert_eq!(first[0], "watches 1 3");
    let pids = dump_kill_restore(&w);
    std::fs::write(w.dir.join("a/new-in-a"), b"").unwrap();
    std::fs::write(w.dir.join("c/new-in-c"), b"").unwrap();
    std::fs::write(w.dir.join("b/not-watched"), b"").unwrap();
    let lines = w.wait_lines(3, T);
    kill_tree(&pids);
    assert_eq!(
        &lines[1..3],
        &[
            "event 1 0x100 new-in-a".to_string(),
            "event 3 0x100 new-in-c".to_string()
        ]
    );
    assert_eq!(lines.len(), 3, "no other event: {lines:?}");
}

/// A task that chroot'ed keeps its root and its cwd inside it (zdtm's chroot tests): the
/// restore changes to the cwd before the chroot, both being paths as the dumper sees them.
#[test]
fn chrooted_task_keeps_its_root_and_cwd() {
    let _g = serial_root!();
    let script = r#"
import os, time
os.makedirs("jail/inside/sub", exist_ok=True)
open("jail/inside/sub/marker", "w").write("here")
os.chroot("jail")
os.chdir("/inside/sub")
while True:
    print("at", os.getcwd(), open("marker").read(), os.path.exists("/inside"), flush=True)
    time.sleep(0.05)
"#;
    let (before, after) = python_line_before_and_after("chroot", script);
    assert_eq!(before, "at /inside/sub here True");
    assert_eq!(after, "at /inside/sub here True");
}

/// An epoll whose target was registered under an fd number since closed (epoll keeps the
/// file): the dump registers it again under the number the task still holds that file at, as
/// CRIU does, and after the restore a write into the pipe still wakes the epoll with the
/// target's data. (zdtm's epoll and epoll01.)
#[test]
fn epoll_target_whose_fd_was_closed_still_fires() {
    let _g = serial_root!();
    let script = r#"
import os, select, time
r, w = os.pipe()
ep = select.epoll()
dup = os.dup(r)
ep.register(dup, select.EPOLLIN)
os.close(dup)
n = 0
while True:
    ev = ep.poll(0.05)
    if ev:
        os.read(r, 1)
        print("fired", n, flush=True)
    else:
        print("idle", n, flush=True)
    n += 1
    if n % 5 == 0:
        os.write(w, b"x")
"#;
    let after = python_lines_after_restore("epoll-closed-target", script, 6, 12);
    assert!(
        after.iter().any(|l| l.starts_with("fired")),
        "the restored epoll fires for the pipe: {after:?}"
    );
}

/// Watch descriptors past 9 (fdinfo prints them in hex: wd:11 is 17) come back with their
/// numbers, all of them (zdtm's inotify02).
#[test]
fn many_inotify_watches_keep_their_numbers() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, struct, select
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
wds = []
for i in range(20):
    os.makedirs("d%d" % i, exist_ok=True)
    wds.append(libc.inotify_add_watch(fd, b"d%d" % i, 0x100))
print("watches", wds[0], wds[-1], flush=True)
while True:
    r, _, _ = select.select([fd], [], [], 0.05)
    if r:
        buf = os.read(fd, 4096)
        wd, mask, cookie, n = struct.unpack_from("iIII", buf, 0)
        print("event", wd, buf[16:16 + n].rstrip(b"\0").decode(), flush=True)
"#;
    let w = Workload::python("inotify-many", script);
    assert_eq!(w.wait_lines(1, T)[0], "watches 1 20");
    let pids = dump_kill_restore(&w);
    std::fs::write(w.dir.join("d16/new"), b"").unwrap();
    let end = Instant::now() + T;
    while !w.lines().iter().any(|l| l.starts_with("event")) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = w.lines();
    kill_tree(&pids);
    assert!(
        lines.iter().any(|l| l == "event 17 new"),
        "the watch on d16 is still wd 17: {lines:?}"
    );
}

/// A pipe in O_ASYNC mode with an owner and a signal (F_SETOWN, F_SETSIG; zdtm's file_fown):
/// after the restore, data arriving still signals the owner, and the end's status flags are
/// the dumped ones (no O_LARGEFILE from reopening it).
#[test]
fn async_pipe_keeps_its_owner_and_signal() {
    let _g = serial_root!();
    let script = r#"
import fcntl, os, signal, time
F_SETSIG, F_GETSIG = 10, 11
got = [0]
signal.signal(signal.SIGUSR1, lambda *a: got.__setitem__(0, got[0] + 1))
r, w = os.pipe()
fcntl.fcntl(r, fcntl.F_SETOWN, os.getpid())
fcntl.fcntl(r, F_SETSIG, signal.SIGUSR1)
fcntl.fcntl(r, fcntl.F_SETFL, fcntl.fcntl(r, fcntl.F_GETFL) | os.O_ASYNC)
n = 0
while True:
    os.write(w, b"x"); os.read(r, 1)
    time.sleep(0.05)
    own = fcntl.fcntl(r, fcntl.F_GETOWN) == os.getpid()
    sig = fcntl.fcntl(r, F_GETSIG)
    print("async", own, sig, oct(fcntl.fcntl(r, fcntl.F_GETFL)), got[0] > n, flush=True)
    n = got[0]
"#;
    let after = python_lines_after_restore("async-pipe", script, 3, 3);
    let want = format!("async True {} 0o20000 True", libc::SIGUSR1);
    assert!(
        after.len() >= 3 && after[1..].iter().all(|l| *l == want),
        "the owner, the signal and the flags are back, and signals come: {after:?}"
    );
}

/// An fd on the system console (a 5:1 node the program made) is not a shell's terminal: it
/// is reopened by its path, as CRIU's console tty type is, with no --shell-job.
#[test]
fn console_device_is_reopened_by_its_path() {
    let _g = serial_root!();
    let script = r#"
import os, time
os.mknod("console", 0o600 | 0o020000, os.makedev(5, 1))
fd = os.open("console", os.O_RDONLY | os.O_NOCTTY)
before = os.fstat(fd).st_rdev
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", os.fstat(fd).st_rdev == before, os.major(before), os.minor(before), flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("console", script, 2);
    assert_eq!(lines[1], "after True 5 1");
}

/// A tree in the dumper's mount namespace gets no mount ids in files.img: there is no
/// mountpoints image for them to name, and CRIU's restore then cannot place ghost files.
#[test]
fn host_tree_files_carry_no_mount_ids() {
    use stasis::images::{magic, names, pb, ImageKind, ImageReader};
    let _g = serial_root!();
    let w = Workload::start("counter", &workload("counter"), &[]);
    w.wait_lines(2, T);
    check_ok("dump", &dump_workload(&w, &["-R"]));
    let bytes = std::fs::read(w.images().join(names::FILES)).expect("files.img");
    let mut r =
        ImageReader::new(names::FILES, &bytes, ImageKind::Normal, magic::FILES).expect("reader");
    let mut regs = 0;
    while let Some(e) = r.next::<pb::FileEntry>().expect("entry") {
        if let Some(reg) = e.reg {
            regs += 1;
            assert_eq!(reg.mnt_id, None, "{}", reg.name);
        }
    }
    assert!(regs > 0);
    kill_tree(&[w.pid]);
}

/// pidfds: of a child (a signal sent through it after the restore arrives), of the process
/// itself (non-blocking), and two of a child that died and was reaped (still readable, the
/// same inode, as the kernel gives pidfds of one process).
#[test]
fn pidfds_of_live_dead_and_own_processes_come_back() {
    let _g = serial_root!();
    let script = r#"
import os, select, signal, time
def pid_of(fd):
    for l in open(f"/proc/self/fdinfo/{fd}"):
        if l.startswith("Pid:"): return int(l.split()[1])
r, w = os.pipe()
c = os.fork()
if c == 0:
    signal.signal(signal.SIGUSR1, lambda *a: os.write(w, b"u"))
    while True: time.sleep(1)
d = os.fork()
if d == 0: os._exit(3)
dead1 = os.pidfd_open(d); dead2 = os.pidfd_open(d); os.waitpid(d, 0)
child = os.pidfd_open(c)
me = os.pidfd_open(os.getpid(), os.O_NONBLOCK)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
signal.pidfd_send_signal(child, signal.SIGUSR1)
got = os.read(r, 1).decode()
readable = bool(select.select([dead1], [], [], 0)[0])
same = os.fstat(dead1).st_ino == os.fstat(dead2).st_ino
print("after", pid_of(child) == c, got, pid_of(me) == os.getpid(), pid_of(dead1), readable, same, flush=True)
while True: time.sleep(1)
"#;
    let (_w, lines) = python_across_restore("pidfds", script, 2);
    assert_eq!(lines[1], "after True u True -1 True True");
}

/// File leases (F_SETLEASE) come back on their own open file descriptions (two read leases on
/// one file, a third description without), taken by the task: a write open by another process
/// breaks the write lease and signals the task (SIGIO), as before the dump.
#[test]
fn file_leases_come_back_and_their_break_signals_the_task() {
    let _g = serial_root!();
    let script = r#"
import fcntl, os, signal, time
F_SETLEASE, F_GETLEASE = 1024, 1025
broken = []
signal.signal(signal.SIGIO, lambda *a: broken.append(1))
for n in ("r", "w"):
    open(n, "w").close()
r1, r2, free = (os.open("r", os.O_RDONLY) for _ in range(3))
fcntl.fcntl(r1, F_SETLEASE, fcntl.F_RDLCK); fcntl.fcntl(r2, F_SETLEASE, fcntl.F_RDLCK)
w = os.open("w", os.O_WRONLY)
fcntl.fcntl(w, F_SETLEASE, fcntl.F_WRLCK)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
leases = [fcntl.fcntl(fd, F_GETLEASE) for fd in (r1, r2, free, w)]
if os.fork() == 0:
    try:
        os.open("w", os.O_RDONLY | os.O_NONBLOCK)  # breaks the write lease
    except BlockingIOError:
        pass  # as it should: the lease holder has a while to give it up
    os._exit(0)
for _ in range(100):
    if broken: break
    time.sleep(0.02)
print("after", leases, bool(broken), flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("leases", script);
    w.wait_lines(1, T);
    let pids = dump_kill_restore_with(&w, &["--file-locks"], &["--file-locks"]);
    let lines = w.go_and_collect(&pids, 2);
    // F_RDLCK 0, F_WRLCK 1, F_UNLCK 2.
    assert_eq!(lines[1], "after [0, 0, 2, 1] True");
}

/// Namespace files of the task's own namespaces (`/proc/self/ns/net`, `uts`) are opened again
/// by the task: after the restore they name the namespaces it is in.
#[test]
fn own_namespace_files_come_back() {
    let _g = serial_root!();
    let script = r#"
import os, time
fds = {n: os.open(f"/proc/self/ns/{n}", os.O_RDONLY) for n in ("net", "uts", "ipc")}
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
same = all(os.readlink(f"/proc/self/fd/{fd}") == os.readlink(f"/proc/self/ns/{n}") for n, fd in fds.items())
print("after", same, flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("nsfiles", script, 2);
    assert_eq!(lines[1], "after True");
}

/// A child forked with CLONE_FILES shares its parent's fd table: restored that way, an fd the
/// child opens after the restore is one the parent sees.
#[test]
fn fd_table_shared_with_a_child_is_shared_again() {
    let _g = serial_root!();
    let w = Workload::start("clonefiles", &workload("clonefiles"), &[]);
    let first = w.wait_lines(3, T);
    let child: u32 = first[0]
        .strip_prefix("child ")
        .expect("child line")
        .parse()
        .unwrap();
    let pids = dump_kill_restore(&w);
    assert!(
        pids.contains(&child),
        "child restored with its pid: {pids:?}"
    );
    let n = w.lines().len();
    assert!(w.wait_lines(n + 3, T).len() >= n + 3, "counter continues");
    assert!(
        !w.lines().iter().any(|l| l.ends_with("fd100")),
        "fd 100 open before the child opened it"
    );
    // SAFETY: kill(2) of the restored child, whose SIGUSR1 handler opens fd 100.
    unsafe { libc::kill(child as libc::pid_t, libc::SIGUSR1) };
    let end = Instant::now() + T;
    while !w.lines().iter().any(|l| l.ends_with("fd100")) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let seen = w.lines().iter().any(|l| l.ends_with("fd100"));
    kill_tree(&pids);
    assert!(seen, "the parent sees the fd its child opened: one table");
}

/// A fanotify group with an inode mark and a mount mark (with an ignored mask) comes back with
/// both: closing a written file after the restore is reported on the inode mark.
#[test]
fn fanotify_marks_come_back_and_report_events() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, struct, time
libc = ctypes.CDLL(None, use_errno=True)
libc.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
FAN_NONBLOCK, FAN_CLOSE_WRITE, FAN_OPEN, FAN_ACCESS = 0x2, 0x8, 0x20, 0x1
FAN_MARK_ADD, FAN_MARK_MOUNT, FAN_MARK_IGNORED_MASK = 0x1, 0x10, 0x20
open("watched", "w").close()
fa = libc.fanotify_init(FAN_NONBLOCK, os.O_RDONLY)
assert fa >= 0, ctypes.get_errno()
assert libc.fanotify_mark(fa, FAN_MARK_ADD, FAN_CLOSE_WRITE, -100, b"watched") == 0
assert libc.fanotify_mark(fa, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN, -100, b".") == 0
assert libc.fanotify_mark(fa, FAN_MARK_ADD | FAN_MARK_MOUNT | FAN_MARK_IGNORED_MASK, FAN_ACCESS, -100, b".") == 0
def drain():
    try:
        while os.read(fa, 4096): pass
    except BlockingIOError:
        pass
drain()
print("marks", len(list(l for l in open(f"/proc/self/fdinfo/{fa}") if l.startswith("fanotify ino") or l.startswith("fanotify mnt_id"))), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
drain()
with open("watched", "w") as f:
    f.write("x")
time.sleep(0.1)
seen = set()
try:
    buf = os.read(fa, 4096)
    off = 0
    while off + 24 <= len(buf):
        ln, _, _, _, mask, efd, pid = struct.unpack_from("IBBHQii", buf, off)
        if mask & FAN_CLOSE_WRITE and efd >= 0 and os.readlink(f"/proc/self/fd/{efd}").endswith("/watched"):
            seen.add("close_write")
        if mask & FAN_OPEN:
            seen.add("open")
        if efd >= 0: os.close(efd)
        off += ln
except BlockingIOError:
    pass
print("after", " ".join(sorted(seen)), flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("fanotify", script);
    let first = w.wait_lines(1, T);
    assert_eq!(first[0], "marks 2", "{first:?}");
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines[1], "after close_write open", "{lines:?}");
}

/// A lease being broken (a conflicting open came, the holder was signalled) is still being
/// broken after the restore, toward the same type, and the holder is not signalled twice.
#[test]
fn a_lease_being_broken_is_still_breaking_without_a_second_signal() {
    let _g = serial_root!();
    let script = r#"
import fcntl, os, signal, time
got = []
signal.signal(signal.SIGIO, lambda *a: got.append(1))
fd = os.open("leased", os.O_RDWR | os.O_CREAT, 0o644)
fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
try:
    os.open("leased", os.O_RDONLY | os.O_NONBLOCK)  # a reader: the lease is to become a read lease
except BlockingIOError:
    pass
time.sleep(0.05)
i = 0
while True:
    print(i, fcntl.fcntl(fd, fcntl.F_GETLEASE), len(got), flush=True); i += 1; time.sleep(0.02)
"#;
    let w = Workload::python("lease-breaking", script);
    let first = w.wait_lines(3, T);
    let tail = |l: &str| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
    // F_RDLCK is 0: the break leads to a read lease; one signal so far.
    assert_eq!(tail(&first[2]), "0 1", "{first:?}");
    let pids = dump_kill_restore_with(&w, &["--file-locks"], &["--file-locks"]);
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    kill_tree(&pids);
    counter_is_continuous(&after);
    assert_eq!(tail(after.last().unwrap()), "0 1", "{after:?}");
}
