//! End-to-end: IPC and namespaces of the tree: POSIX and System V queues, shared memory and
//! semaphores, and IPC and UTS namespaces of its own.

use std::process::Command;
use std::time::{Duration, Instant};

/// A process outside the tree that has joined the IPC namespace of `pid`, until dropped.
struct Intruder(std::process::Child);

impl Intruder {
    fn join(pid: u32) -> Intruder {
        let child = Command::new("nsenter")
            .arg(format!("--ipc=/proc/{pid}/ns/ipc"))
            .args(["sleep", "60"])
            .spawn()
            .expect("nsenter");
        let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/ipc")).ok();
        let end = Instant::now() + T;
        while ns(child.id()) != ns(pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(10));
        }
        Intruder(child)
    }
}

impl Drop for Intruder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

use stasis_tests::*;

#[test]
fn posix_message_queue_keeps_its_messages_and_attributes() {
    let _g = serial_root!();
    let name = format!("/stasis-test-{}", std::process::id());
    let cname = std::ffi::CString::new(name.clone()).unwrap();
    // SAFETY: mq_unlink(3) reads one NUL-terminated name.
    unsafe { libc::mq_unlink(cname.as_ptr()) };
    // Three messages, two of them with the same priority, so both the priority order and the
    // FIFO order within a priority must come back.
    let script = format!(
        r#"
import ctypes, os, time, fcntl
libc = ctypes.CDLL(None, use_errno=True)
class Attr(ctypes.Structure): _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long), ("cur", ctypes.c_long), ("pad", ctypes.c_long * 4)]
os.umask(0)
q = libc.mq_open(b"{name}", os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o640, ctypes.byref(Attr(0, 7, 100, 0)))
assert q >= 0, ctypes.get_errno()
for text, prio in ((b"a1", 1), (b"b5", 5), (b"c1", 1)):
    assert libc.mq_send(q, text, len(text), prio) == 0
print("fd", q, flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
a = Attr(); libc.mq_getattr(q, ctypes.byref(a))
got = []
buf = ctypes.create_string_buffer(100); prio = ctypes.c_uint()
while True:
    n = libc.mq_receive(q, buf, 100, ctypes.byref(prio))
    if n < 0: break
    got.append((buf.raw[:n].decode(), prio.value))
nb = bool(fcntl.fcntl(q, fcntl.F_GETFL) & os.O_NONBLOCK)
print("got", got, a.maxmsg, a.msgsize, a.cur, nb, oct(os.fstat(q).st_mode & 0o777), flush=True)
while True: time.sleep(1)
"#
    );
    let w = Workload::python("mqueue", &script);
    w.wait_lines(1, T);

    // Open outside the tree (here, by the test): refused by name, and the tree runs on.
    // SAFETY: mq_open(3) without O_CREAT.
    let outside = unsafe { libc::mq_open(cname.as_ptr(), libc::O_RDONLY) };
    assert!(outside >= 0);
    let e = dump_must_fail(&w);
    // SAFETY: our own descriptor.
    unsafe { libc::mq_close(outside) };
    assert!(
        e.contains(&format!(
            "POSIX message queue {name} is also open in pid {}",
            std::process::id()
        )),
        "{e}"
    );

    // The queue is removed between dump and restore, as on another host: it is made again.
    let pids = dump_kill_then_restore(&w, &[], &[], || {
        // SAFETY: as above.
        assert_eq!(unsafe { libc::mq_unlink(cname.as_ptr()) }, 0);
    });
    let lines = w.go_and_collect(&pids, 2);
    // SAFETY: as above.
    unsafe { libc::mq_unlink(cname.as_ptr()) };
    assert_eq!(
        lines[1],
        "got [('b5', 5), ('a1', 1), ('c1', 1)] 7 100 3 True 0o640"
    );
}

/// A tree in a UTS namespace of its own (`unshare --uts`, every container) comes back in a new
/// one with its host and domain names, and the host's names are untouched.
#[test]
fn uts_namespace_of_the_tree_keeps_its_names() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, socket, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x04000000) == 0, ctypes.get_errno()  # CLONE_NEWUTS
socket.sethostname("stasis-box")
assert libc.setdomainname(b"stasis.test", 11) == 0
if os.fork() == 0:
    time.sleep(1e6)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("got", socket.gethostname(), os.uname().nodename, open("/proc/sys/kernel/domainname").read().strip(), flush=True)
time.sleep(1e6)
"#;
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let w = Workload::python("uts", script);
    w.wait_lines(1, T);
    let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/uts")).unwrap();
    let pids = dump_kill_restore(&w);
    assert_eq!(pids.len(), 2);
    assert_ne!(
        ns_of(w.pid),
        ns_of(std::process::id()),
        "in a namespace of its own"
    );
    assert_eq!(ns_of(pids[1]), ns_of(w.pid), "the child shares it");
    assert!(w.images().join("utsns-4.img").exists());
    if have_crit() {
        crit_decode_all(&w.images());
    }
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines[1], "got stasis-box stasis-box stasis.test");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap(),
        host,
        "the host keeps its name"
    );
}

/// A tree that owns its IPC namespace (as in a container) gets a new one at restore, holding
/// every object the old one had, used or not: an attached and an idle System V segment, a
/// message queue, a semaphore set, a POSIX queue held open and one nobody holds, and the
/// namespace's sysctls.
#[test]
fn ipc_namespace_of_the_tree_comes_back_with_all_its_objects() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
libc.shmdt.argtypes = [ctypes.c_void_p]
class Attr(ctypes.Structure): _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long), ("cur", ctypes.c_long), ("pad", ctypes.c_long * 4)]
class Msg(ctypes.Structure): _fields_ = [("mtype", ctypes.c_long), ("text", ctypes.c_char * 64)]
class Sembuf(ctypes.Structure): _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]
assert libc.unshare(0x08000000) == 0, ctypes.get_errno()
open("/proc/sys/kernel/msgmnb", "w").write("32768")
open("/proc/sys/fs/mqueue/msg_max", "w").write("20")
shm = libc.shmget(0x5151, 8192, 0o1000 | 0o600)
a = libc.shmat(shm, None, 0); ctypes.memmove(a + 5000, b"attached", 8)
idle = libc.shmget(0x5152, 4096, 0o1000 | 0o640)
b = libc.shmat(idle, None, 0); ctypes.memmove(b, b"idle", 4); libc.shmdt(b)
q = libc.msgget(0x5153, 0o1000 | 0o600)
m = Msg(4, b"queued"); assert libc.msgsnd(q, ctypes.byref(m), 6, 0) == 0
sem = libc.semget(0x5154, 2, 0o1000 | 0o600)
assert libc.semop(sem, (Sembuf * 1)(Sembuf(1, 9, 0)), 1) == 0
held = libc.mq_open(b"/held", os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600, ctypes.byref(Attr(0, 15, 64, 0)))
assert held >= 0, ctypes.get_errno()
assert libc.mq_send(held, b"h1", 2, 3) == 0
loose = libc.mq_open(b"/loose", os.O_RDWR | os.O_CREAT, 0o640, None)
assert libc.mq_send(loose, b"kept", 4, 1) == 0
libc.mq_close(loose)
print("ids", shm, idle, q, sem, flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
out = [open("/proc/sys/kernel/msgmnb").read().strip()]
out.append(open("/proc/sys/fs/mqueue/msg_max").read().strip())
out.append(ctypes.string_at(a + 5000, 8).decode())
out.append(libc.shmget(0x5152, 0, 0) == idle)
b = libc.shmat(idle, None, 0); out.append(ctypes.string_at(b, 4).decode())
m = Msg(); n = libc.msgrcv(q, ctypes.byref(m), 64, 0, 0o4000); out.append((m.mtype, m.text[:n].decode()))
out.append(libc.semctl(sem, 1, 12))
buf = ctypes.create_string_buffer(8192); prio = ctypes.c_uint()
n = libc.mq_receive(held, buf, 64, ctypes.byref(prio)); out.append((buf.raw[:n].decode(), prio.value))
at = Attr(); libc.mq_getattr(held, ctypes.byref(at)); out.append(at.maxmsg)
l = libc.mq_open(b"/loose", os.O_RDWR | os.O_NONBLOCK)
n = libc.mq_receive(l, buf, 8192, ctypes.byref(prio)); out.append((buf.raw[:n].decode(), prio.value))
out.append(oct(os.fstat(l).st_mode & 0o777))
print("got", out, flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("ipcns", script);
    w.wait_lines(1, T);
    let ns_of = |pid: u32| std::fs::read_link(format!("/proc/{pid}/ns/ipc")).unwrap();
    assert_ne!(ns_of(w.pid), ns_of(std::process::id()));

    let pids = dump_kill_restore(&w);
    assert!(w.images().join("ipcns-var-2.img").exists());
    if have_crit() {
        crit_decode_all(&w.images());
    } else {
        println!("crit is not installed: the images of this test are not decoded");
    }
    assert_ne!(
        ns_of(w.pid),
        ns_of(std::process::id()),
        "restored in its own namespace"
    );
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(
        lines[1],
        "got ['32768', '20', 'attached', True, 'idle', (4, 'queued'), 9, ('h1', 3), 15, ('kept', 1), '0o640']"
    );
    // Nothing leaked into the host's namespace.
    let host = std::fs::read_to_string("/proc/sysvipc/msg").unwrap();
    assert!(!host.contains(&format!(" {} ", 0x5153)), "{host}");
}

#[test]
fn sysv_shared_memory_used_only_by_the_tree_survives() {
    let _g = serial_root!();
    // Parent and child share a SysV segment in the host's IPC namespace: the child counts in
    // it, the parent prints what it sees, and the pattern written at the start must hold.
    let key = 0x5a5a_0000u32 + (std::process::id() & 0xffff);
    let script = format!(
        r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
shmid = libc.shmget({key}, 65536, 0o1000 | 0o600)
base = libc.shmat(shmid, None, 0)
buf = (ctypes.c_ubyte * 65536).from_address(base)
for i in range(1000, 65536): buf[i] = (i * 7) & 0xff
cnt = ctypes.c_uint64.from_address(base)
if os.fork() == 0:
    while True:
        cnt.value += 1; time.sleep(0.005)
print("shmid", shmid, flush=True)
while True:
    ok = all(buf[i] == (i * 7) & 0xff for i in range(1000, 65536, 97))
    print(cnt.value, ok, flush=True); time.sleep(0.05)
"#
    );
    let w = Workload::python("sysvshm", &script);
    let first = w.wait_lines(3, T);
    let shmid: i32 = first[0].strip_prefix("shmid ").unwrap().parse().unwrap();
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let before: u64 = w.lines()[n - 1]
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let after = w.wait_lines(n + 5, T);
    kill_tree(&pids);
    // SAFETY: shmctl(IPC_RMID): clean up the host segment.
    unsafe { libc::shmctl(shmid, libc::IPC_RMID, std::ptr::null_mut()) };
    remove_sysv_by_key(key);
    let last: Vec<&str> = after.last().unwrap().split_whitespace().collect();
    assert!(
        last[0].parse::<u64>().unwrap() > before,
        "the child's increments are seen after restore"
    );
    assert!(
        after.iter().skip(1).all(|l| l.ends_with(" True")),
        "content intact: {after:?}"
    );

    // A segment also attached outside the tree is refused by name.
    let key2 = key + 0x10000;
    // SAFETY: shmget/shmat on a new segment of ours.
    let (id2, addr) = unsafe {
        let id = libc::shmget(key2 as libc::key_t, 4096, libc::IPC_CREAT | 0o600);
        (id, libc::shmat(id, std::ptr::null(), 0))
    };
    let script2 = format!(
        "import ctypes, time\nlibc = ctypes.CDLL(None)\nlibc.shmat.restype = ctypes.c_void_p\nlibc.shmat(libc.shmget({key2}, 4096, 0), None, 0)\nprint('up', flush=True)\nwhile True: time.sleep(1)\n"
    );
    let w2 = Workload::python("sysvshm2", &script2);
    w2.wait_lines(1, T);
    let img = w2.images();
    let o = stasis(&[
        "dump",
        "-t",
        &w2.pid.to_string(),
        "-D",
        img.to_str().unwrap(),
    ]);
    // SAFETY: detach and remove our segment.
    unsafe {
        libc::shmdt(addr);
        libc::shmctl(id2, libc::IPC_RMID, std::ptr::null_mut());
    }
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains(&format!("segment {id2}")) && e.contains("outside the tree"),
        "{e}"
    );
    assert!(alive(w2.pid));
}

#[test]
fn sysv_message_queue_and_semaphores_used_by_the_tree_survive() {
    let _g = serial_root!();
    let key = 0x6b6b_0000u32 + (std::process::id() & 0xffff);
    let script = format!(
        r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
class Msg(ctypes.Structure): _fields_ = [("mtype", ctypes.c_long), ("text", ctypes.c_char * 64)]
class Sembuf(ctypes.Structure): _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]
q = libc.msgget({key}, 0o1000 | 0o600)
for t, s in ((3, b"first"), (5, b"second")):
    m = Msg(t, s); libc.msgsnd(q, ctypes.byref(m), len(s), 0)
sem = libc.semget({key}, 3, 0o1000 | 0o600)
ops = (Sembuf * 2)(Sembuf(0, 5, 0), Sembuf(2, 2, 0))
libc.semop(sem, ops, 2)
print("ids", q, sem, flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
got = []
for _ in range(2):
    m = Msg(); n = libc.msgrcv(q, ctypes.byref(m), 64, 0, 0o4000); got.append((m.mtype, m.text[:n].decode()))
vals = [libc.semctl(sem, i, 12) for i in range(3)]  # GETVAL
print("got", got, vals, flush=True)
while True: time.sleep(1)
"#
    );
    let w = Workload::python("sysvmsg", &script);
    let first = w.wait_lines(1, T);
    let ids = nums(&first[0]);
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 2);
    // SAFETY: remove the host objects the test made.
    unsafe {
        libc::msgctl(ids[0] as i32, libc::IPC_RMID, std::ptr::null_mut());
        libc::semctl(ids[1] as i32, 0, libc::IPC_RMID);
    }
    remove_sysv_by_key(key);
    assert_eq!(lines[1], "got [(3, 'first'), (5, 'second')] [5, 0, 2]");
}

/// Removes every host System V object with `key` the test may have left: a queue or segment
/// left behind keeps the pids of its last users, and a later task given one of those pids
/// would be taken for a user of it.
fn remove_sysv_by_key(key: u32) {
    let key = key as libc::key_t;
    // SAFETY: msgget/semget/shmget without IPC_CREAT only look the key up; *ctl(IPC_RMID)
    // removes what they found. Each loop ends when the key is gone.
    unsafe {
        for _ in 0..8 {
            let q = libc::msgget(key, 0);
            if q < 0 || libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut()) < 0 {
                break;
            }
        }
        for _ in 0..8 {
            let s = libc::semget(key, 0, 0);
            if s < 0 || libc::semctl(s, 0, libc::IPC_RMID) < 0 {
                break;
            }
        }
        for _ in 0..8 {
            let m = libc::shmget(key, 0, 0);
            if m < 0 || libc::shmctl(m, libc::IPC_RMID, std::ptr::null_mut()) < 0 {
                break;
            }
        }
    }
}

/// A tree sharing its IPC namespace with a process outside it (a podman pod's container and the
/// pod's infra container): dumped with a warning naming that process, as CRIU dumps it, and
/// restored into that namespace again with --join-ns (runc's join_ns for a pod), where the
/// objects that outlived the tree are found as they were.
#[test]
fn ipc_namespace_shared_with_a_process_outside_is_joined_again() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
class Msg(ctypes.Structure): _fields_ = [("mtype", ctypes.c_long), ("text", ctypes.c_char * 64)]
assert libc.unshare(0x08000000) == 0, ctypes.get_errno()
shm = libc.shmget(0x5161, 4096, 0o1000 | 0o600)
a = libc.shmat(shm, None, 0); ctypes.memmove(a, b"pod", 3)
q = libc.msgget(0x5162, 0o1000 | 0o600)
m = Msg(7, b"left"); assert libc.msgsnd(q, ctypes.byref(m), 4, 0) == 0
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
m = Msg(); n = libc.msgrcv(q, ctypes.byref(m), 64, 0, 0o4000)
print("got", ctypes.string_at(a, 3).decode(), m.mtype, m.text[:n].decode(), flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("ipc-shared", script);
    w.wait_lines(1, T);
    let infra = Intruder::join(w.pid);
    let ns = |p: u32| std::fs::read_link(format!("/proc/{p}/ns/ipc")).expect("ns link");
    let join = format!("ipc:/proc/{}/ns/ipc", infra.0.id());
    let pids = dump_kill_restore_with(&w, &[], &["--join-ns", &join]);
    let log = std::fs::read_to_string(w.images().join("dump.log")).expect("dump.log");
    assert!(
        log.contains(&format!(
            "is also used by pid {}, outside the tree",
            infra.0.id()
        )),
        "the dump names the process it shares the namespace with"
    );
    assert_eq!(
        ns(w.pid),
        ns(infra.0.id()),
        "restored into the namespace it shared"
    );
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines[1], "got pod 7 left");
}

/// System V objects of the tree's own IPC namespace keep their owner: made again by the
/// restore (as root), they are given the dumped owner and mode, so a task of the tree running
/// as that user can still remove them.
#[test]
fn sysv_objects_of_a_tree_namespace_keep_their_owner() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x08000000) == 0, ctypes.get_errno()
def as_user(f):
    pid = os.fork()
    if pid == 0:
        os.setgid(4321); os.setuid(4321)
        os._exit(0 if f() >= 0 else 1)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
assert as_user(lambda: libc.msgget(0x5171, 0o1000 | 0o600)) == 0
assert as_user(lambda: libc.semget(0x5172, 1, 0o1000 | 0o600)) == 0
assert as_user(lambda: libc.shmget(0x5173, 4096, 0o1000 | 0o600)) == 0
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
ids = [libc.msgget(0x5171, 0), libc.semget(0x5172, 0, 0), libc.shmget(0x5173, 0, 0)]
rm = [lambda i=ids[0]: libc.msgctl(i, 0, None), lambda i=ids[1]: libc.semctl(i, 0, 0),
      lambda i=ids[2]: libc.shmctl(i, 0, None)]
print("got", [as_user(f) for f in rm], flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("ipc-owner", script);
    w.wait_lines(1, T);
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines[1], "got [0, 0, 0]", "the owner removes each object");
}
