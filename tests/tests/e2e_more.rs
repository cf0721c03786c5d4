//! End-to-end: credentials, deleted files, stopped tasks, terminals, inherited fds, refusals.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stasis_tests::*;

const T: Duration = Duration::from_secs(10);

fn counter_is_continuous(lines: &[String]) {
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(nums(l)[0], i as u64, "line {i}: {l}");
    }
}

#[test]
fn unprivileged_task_keeps_its_credentials_and_limits() {
    let Some(_g) = serial_root("unprivileged_task_keeps_its_credentials_and_limits") else {
        return;
    };
    let w = Workload::start("creds", &workload("creds"), &[]);
    w.wait_lines(5, T);
    // dump_kill_restore compares uids, gids, groups, capabilities, no_new_privs, umask,
    // limits, personality and oom_score_adj before and after.
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    kill_tree(&pids);
    counter_is_continuous(&after);
    assert!(
        after.iter().all(|l| l.ends_with(" 65534 65534")),
        "still nobody"
    );
}

#[test]
fn deleted_file_and_its_mapping_come_back() {
    let Some(_g) = serial_root("deleted_file_and_its_mapping_come_back") else {
        return;
    };
    let w = Workload::start("ghost", &workload("ghost"), &[]);
    let first = w.wait_lines(3, T);
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    let link = std::fs::read_link(format!("/proc/{}/fd/3", w.pid)).unwrap();
    kill_tree(&pids);
    counter_is_continuous(&after);
    let want: Vec<&str> = first[0].split_whitespace().skip(1).collect();
    for l in &after {
        let got: Vec<&str> = l.split_whitespace().skip(1).collect();
        assert_eq!(
            got, want,
            "content through fd and mapping, and offset, kept"
        );
    }
    assert!(
        link.to_string_lossy().ends_with("ghost.dat (deleted)"),
        "{link:?}"
    );
    assert!(
        !w.dir.join("ghost.dat").exists(),
        "the ghost file is unlinked again"
    );
}

#[test]
fn stopped_task_stays_stopped_until_sigcont() {
    let Some(_g) = serial_root("stopped_task_stays_stopped_until_sigcont") else {
        return;
    };
    let w = Workload::start("stopped", &workload("counter"), &[]);
    w.wait_lines(3, T);
    // SAFETY: kill(2) to our workload.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGSTOP) };
    let end = Instant::now() + T;
    while state_of(w.pid) != 'T' && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    let pids = dump_kill_restore(&w);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(state_of(w.pid), 'T', "restored stopped");
    let n = w.lines().len();
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(w.lines().len(), n, "a stopped task prints nothing");
    // SAFETY: kill(2) to the restored task.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGCONT) };
    let after = w.wait_lines(n + 5, T);
    kill_tree(&pids);
    counter_is_continuous(&after);
}

#[test]
fn shared_fd_table_between_processes_is_refused_and_tree_runs_on() {
    let Some(_g) = serial_root("shared_fd_table_between_processes_is_refused_and_tree_runs_on")
    else {
        return;
    };
    let w = Workload::start("clonefiles", &workload("clonefiles"), &[]);
    w.wait_lines(3, T);
    let e = dump_must_fail(&w);
    assert!(e.contains("file descriptor table"), "{e}");
    let n = w.lines().len();
    assert!(w.wait_lines(n + 5, T).len() >= n + 5, "tree runs on");
}

#[test]
fn namespace_fds_are_refused_by_name_and_tree_runs_on() {
    let Some(_g) = serial_root("namespace_fds_are_refused_by_name_and_tree_runs_on") else {
        return;
    };
    // A namespace file looks like a regular file to stat(2), but reopening its link
    // ("net:[ino]") would open nothing: the dump must refuse it.
    let script = r#"
import os, time
fd = os.open('/proc/self/ns/net', os.O_RDONLY)
i = 0
while True:
    print(i, fd, flush=True); i += 1; time.sleep(0.01)
"#;
    let w = Workload::python("nsfd", script);
    let first = w.wait_lines(3, T);
    let fd = first[0].split(' ').nth(1).unwrap().to_string();
    let e = dump_must_fail(&w);
    assert!(
        e.contains("namespace file") && e.contains(&format!("fd {fd}")),
        "{e}"
    );
    let n = w.lines().len();
    assert!(w.wait_lines(n + 5, T).len() >= n + 5, "tree runs on");
}

#[test]
fn posix_message_queue_keeps_its_messages_and_attributes() {
    let Some(_g) = serial_root("posix_message_queue_keeps_its_messages_and_attributes") else {
        return;
    };
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

/// Files sent with SCM_RIGHTS and not yet received are dumped with the message that carries
/// them, and the receiver gets working descriptors after restore: a regular file at its
/// offset, a pipe with its bytes, one end of a socketpair (the other held by the task), an
/// eventfd on a datagram socket. A socket sent over its own connection is refused by name.
#[test]
fn file_descriptors_in_flight_on_unix_sockets_arrive_after_restore() {
    let Some(_g) = serial_root("file_descriptors_in_flight_on_unix_sockets_arrive_after_restore")
    else {
        return;
    };
    let script = r#"
import os, socket, time
a, b = socket.socketpair()
c, d = socket.socketpair()
e, g = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
with open("data.txt", "w") as f:
    f.write("0123456789")
f = os.open("data.txt", os.O_RDWR)
os.lseek(f, 3, os.SEEK_SET)
r, w = os.pipe()
os.write(w, b"piped")
efd = os.eventfd(5)
socket.send_fds(a, [b"hdr"], [f, r, c.fileno()])
a.send(b"tail")
socket.send_fds(e, [b"dg1"], [efd])
e.send(b"dg2")
os.close(f); os.close(r); c.close(); os.close(efd)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
out = []
msg, fds, _, _ = socket.recv_fds(b, 100, 10)
out.append((msg.decode(), len(fds)))
f, r, cfd = fds
out.append(os.read(f, 100).decode())
out.append(os.read(r, 100).decode())
c = socket.socket(fileno=cfd)
d.send(b"ping"); out.append(c.recv(10).decode())
c.send(b"pong"); out.append(d.recv(10).decode())
out.append(b.recv(100).decode())
msg, fds, _, _ = socket.recv_fds(g, 100, 10)
out.append((msg.decode(), len(fds)))
out.append(int.from_bytes(os.read(fds[0], 8), "little"))
out.append(g.recv(100).decode())
print("got", out, flush=True)
while True: time.sleep(1)
"#;
    let (w, lines) = python_across_restore("inflight", script, 2);
    assert_eq!(
        lines[1],
        "got [('hdr', 3), '3456789', 'piped', 'ping', 'pong', 'tail', ('dg1', 1), 5, 'dg2']"
    );
    if have_crit() {
        let o = Command::new("crit")
            .args(["decode", "-i"])
            .arg(w.images().join("sk-queues.img"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("\"rights\""), "{text}");
    }

    // One end of a socketpair sent over that same connection: refused, and the tree runs on.
    let script = r#"
import socket, time
a, b = socket.socketpair()
socket.send_fds(a, [b"x"], [a.fileno()])
print("ready", flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("inflight-self", script);
    w.wait_lines(1, T);
    let e = dump_must_fail(&w);
    assert!(
        e.contains("in flight (SCM_RIGHTS) on its own connection"),
        "{e}"
    );
    kill_tree(&[w.pid]);

    // A socket in flight that itself has a file in flight: refused.
    let script = r#"
import os, socket, time
a, b = socket.socketpair()
c, d = socket.socketpair()
socket.send_fds(d, [b"x"], [0])
socket.send_fds(a, [b"y"], [c.fileno()])
c.close()
print("ready", flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("inflight-nested", script);
    w.wait_lines(1, T);
    let e = dump_must_fail(&w);
    assert!(e.contains("is itself in flight"), "{e}");
    kill_tree(&[w.pid]);
}

/// Files of /proc/<pid>/ of the tree held open (a program watching its own stat): they cannot
/// be opened before the tasks exist, so each task reopens its own, at the same fd, offset and
/// close-on-exec flag; a /proc file of no task (uptime) is opened as usual.
#[test]
fn proc_files_of_the_tree_are_reopened_by_their_task() {
    let Some(_g) = serial_root("proc_files_of_the_tree_are_reopened_by_their_task") else {
        return;
    };
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

/// A file deleted while open, in a directory deleted too: the ghost is made in a directory
/// made for it, and both are gone again once the task holds the file.
#[test]
fn file_deleted_with_its_directory_comes_back() {
    let Some(_g) = serial_root("file_deleted_with_its_directory_comes_back") else {
        return;
    };
    let script = r#"
import os, time
os.makedirs("a/b")
f = open("a/b/file", "w+"); f.write("kept content"); f.flush()
os.unlink("a/b/file"); os.rmdir("a/b"); os.rmdir("a")
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
f.seek(0)
print("after", f.read(), os.readlink(f"/proc/self/fd/{f.fileno()}").endswith("a/b/file (deleted)"), os.path.exists("a"), flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("ghostdir", script);
    w.wait_lines(1, T);
    let pids = dump_kill_restore(&w);
    assert!(
        !w.dir.join("a").exists(),
        "the directory made for the ghost is removed"
    );
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines[1], "after kept content True False");
}

/// An O_TMPFILE file (never named) and a FIFO unlinked while open come back with their bytes,
/// and leave no name behind.
#[test]
fn tmpfile_and_unlinked_fifo_come_back() {
    let Some(_g) = serial_root("tmpfile_and_unlinked_fifo_come_back") else {
        return;
    };
    let script = r#"
import os, time
t = os.open(".", os.O_TMPFILE | os.O_RDWR, 0o600); os.write(t, b"tmpfile data")
os.mkfifo("fifo"); r = os.open("fifo", os.O_RDONLY | os.O_NONBLOCK); w = os.open("fifo", os.O_WRONLY)
os.write(w, b"fifo data"); os.unlink("fifo")
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
os.lseek(t, 0, 0)
names = sorted(n for n in os.listdir(".") if n not in ("go", "out.txt", "images", "restored.pid"))
print("after", os.read(t, 100), os.read(r, 100), os.readlink(f"/proc/self/fd/{r}").endswith("fifo (deleted)"), names, flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("tmpfile-fifo", script, 2);
    assert_eq!(lines[1], "after b'tmpfile data' b'fifo data' True []");
}

/// A socketpair end shut for writing, with bytes still queued: after restore the reader gets
/// the bytes, then EOF, and the writer gets EPIPE.
#[test]
fn unix_shutdown_still_gives_eof_after_restore() {
    let Some(_g) = serial_root("unix_shutdown_still_gives_eof_after_restore") else {
        return;
    };
    let script = r#"
import os, socket, time
a, b = socket.socketpair()
a.send(b"last words"); a.shutdown(socket.SHUT_WR)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
b.settimeout(5)
got = [b.recv(100), b.recv(100)]
try:
    a.send(b"x"); sent = "sent"
except BrokenPipeError:
    sent = "EPIPE"
print("after", got, sent, flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("shutdown", script, 2);
    assert_eq!(lines[1], "after [b'last words', b''] EPIPE");
}

/// Peeking a unix queue during the dump leaves the task's own SO_PEEK_OFF as it was.
#[test]
fn task_peek_offset_survives_a_dump() {
    let Some(_g) = serial_root("task_peek_offset_survives_a_dump") else {
        return;
    };
    let script = r#"
import os, socket, time
a, b = socket.socketpair()
a.send(b"0123456789")
b.setsockopt(socket.SOL_SOCKET, 42, 3)  # SO_PEEK_OFF
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", b.getsockopt(socket.SOL_SOCKET, 42), b.recv(4, socket.MSG_PEEK), flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("peekoff", script);
    w.wait_lines(1, T);
    check_ok("dump -R", &dump_workload(&w, &["-R"]));
    let lines = w.go_and_collect(&[w.pid], 2);
    assert_eq!(lines[1], "after 3 b'3456'");
}

/// Unix sockets whose files were unlinked (one in a directory deleted too) keep their names
/// and stay unlinked; a datagram queued on one of them still arrives.
#[test]
fn unix_sockets_with_unlinked_files_keep_their_names() {
    let Some(_g) = serial_root("unix_sockets_with_unlinked_files_keep_their_names") else {
        return;
    };
    let script = r#"
import os, socket, time
os.mkdir("d")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind("d/listen"); s.listen(1)
t = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); t.bind("dgram")
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"queued", "dgram")
os.unlink("d/listen"); os.rmdir("d"); os.unlink("dgram")
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", s.getsockname(), t.getsockname(), os.path.exists("dgram"), os.path.exists("d"), t.recv(100), flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("unlinked-sockets", script, 2);
    assert_eq!(lines[1], "after d/listen dgram False False b'queued'");
}

/// A task that a debugger of the tree already traces is refused naming the tracer, and both
/// run on.
#[test]
fn task_traced_by_a_debugger_is_refused_by_name() {
    let Some(_g) = serial_root("task_traced_by_a_debugger_is_refused_by_name") else {
        return;
    };
    let script = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptrace.argtypes = [ctypes.c_long, ctypes.c_long, ctypes.c_void_p, ctypes.c_void_p]
child = os.fork()
if child == 0:
    while True: time.sleep(1)
assert libc.ptrace(0x4206, child, None, None) == 0, ctypes.get_errno()  # PTRACE_SEIZE
print("child", child, flush=True)
n = 0
while True:
    print(n, flush=True); n += 1; time.sleep(0.02)
"#;
    let w = Workload::python("traced", script);
    let first = w.wait_lines(2, T);
    let child: u32 = first[0].split_whitespace().nth(1).unwrap().parse().unwrap();
    // Not dump_must_fail: the child keeps its own tracer, the parent.
    let o = dump_workload(&w, &[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && e.trim().lines().count() == 1, "{e}");
    assert!(
        e.contains(&format!("is already traced by pid {}", w.pid)),
        "{e}"
    );
    assert_runs_on(&w);
    assert_eq!(tracer_of(child), w.pid, "the child keeps its tracer");
    kill_tree(&[w.pid, child]);
}

/// A working directory deleted while in use cannot be reopened at restore: the dump is
/// refused by name, before the task is killed, and it runs on.
#[test]
fn deleted_working_directory_is_refused_and_task_runs_on() {
    let Some(_g) = serial_root("deleted_working_directory_is_refused_and_task_runs_on") else {
        return;
    };
    let script = r#"
import os, time
os.mkdir("gone"); os.chdir("gone"); os.rmdir("../gone")
n = 0
while True:
    print(n, flush=True); n += 1; time.sleep(0.02)
"#;
    let w = Workload::python("deleted-cwd", script);
    w.wait_lines(2, T);
    let e = dump_must_fail(&w);
    assert!(e.contains("a cwd directory deleted while in use"), "{e}");
    assert_runs_on(&w);
    kill_tree(&[w.pid]);
}

/// A task in a namespace of its own that stasis does not handle yet (here a network
/// namespace) is refused by name instead of coming back silently in the restorer's; the tree
/// runs on.
#[test]
fn other_namespaces_are_refused_by_name_and_tree_runs_on() {
    let Some(_g) = serial_root("other_namespaces_are_refused_by_name_and_tree_runs_on") else {
        return;
    };
    let script = r#"
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x40000000) == 0, ctypes.get_errno()  # CLONE_NEWNET
n = 0
while True:
    print(n, flush=True); n += 1; time.sleep(0.02)
"#;
    let w = Workload::python("netns", script);
    w.wait_lines(2, T);
    let e = dump_must_fail(&w);
    assert!(
        e.contains(&format!(
            "process {} is in a net namespace of its own",
            w.pid
        )),
        "{e}"
    );
    assert_runs_on(&w);
    kill_tree(&[w.pid]);
}

/// A tree in a UTS namespace of its own (`unshare --uts`, every container) comes back in a new
/// one with its host and domain names, and the host's names are untouched.
#[test]
fn uts_namespace_of_the_tree_keeps_its_names() {
    let Some(_g) = serial_root("uts_namespace_of_the_tree_keeps_its_names") else {
        return;
    };
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

/// Seccomp filters (as every container and many services have): a process with a thread
/// shares a filter (TSYNC), and its child stacks one more. After restore the same syscalls
/// are refused with the same errors in every task, and the filter counts are the same.
#[test]
fn seccomp_filters_still_apply_after_restore() {
    let Some(_g) = serial_root("seccomp_filters_still_apply_after_restore") else {
        return;
    };
    let script = r#"
import ctypes, os, struct, threading, time
libc = ctypes.CDLL(None, use_errno=True)
def install(nr, err, flags):
    ins = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050000 | err), (0x06, 0, 0, 0x7fff0000)]
    raw = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in ins))
    fprog = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", len(ins), ctypes.addressof(raw)))
    assert libc.syscall(317, 1, flags, fprog) == 0, ctypes.get_errno()
libc.prctl(38, 1, 0, 0, 0)      # no_new_privs
threading.Thread(target=lambda: time.sleep(1e6), daemon=True).start()
install(63, 1, 1)               # uname -> EPERM, for every thread (TSYNC)
def probe(who):
    out = [who]
    for f in (os.uname, os.getcwd):
        try:
            f(); out.append("ok")
        except OSError as e:
            out.append(e.errno)
    n = [l.split()[1] for l in open("/proc/self/status") if l.startswith("Seccomp_filters")]
    return " ".join(map(str, out + n))
if os.fork() == 0:
    install(79, 13, 0)          # and getcwd -> EACCES in the child
    print("before", probe("child"), flush=True)
    while not os.path.exists("go"): time.sleep(0.02)
    print("after", probe("child"), flush=True)
    time.sleep(1e6)
time.sleep(0.2)
print("before", probe("parent"), flush=True)
while not os.path.exists("go"): time.sleep(0.02)
time.sleep(0.2)
print("after", probe("parent"), flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("seccomp", script);
    w.wait_lines(2, T);
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 4);
    let mut after: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("after "))
        .collect();
    after.sort();
    let mut before: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("before "))
        .collect();
    before.sort();
    assert_eq!(before, ["child 1 13 2", "parent 1 ok 1"], "{lines:?}");
    assert_eq!(after, before, "{lines:?}");
}

/// A tree that owns its IPC namespace (as in a container) gets a new one at restore, holding
/// every object the old one had, used or not: an attached and an idle System V segment, a
/// message queue, a semaphore set, a POSIX queue held open and one nobody holds, and the
/// namespace's sysctls.
#[test]
fn ipc_namespace_of_the_tree_comes_back_with_all_its_objects() {
    let Some(_g) = serial_root("ipc_namespace_of_the_tree_comes_back_with_all_its_objects") else {
        return;
    };
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

    // Another process in the namespace, outside the tree: refused, and the tree runs on.
    let mut intruder = Command::new("nsenter")
        .arg(format!("--ipc=/proc/{}/ns/ipc", w.pid))
        .args(["sleep", "60"])
        .spawn()
        .expect("nsenter");
    let end = Instant::now() + T;
    while std::fs::read_link(format!("/proc/{}/ns/ipc", intruder.id())).ok() != Some(ns_of(w.pid))
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let e = dump_must_fail(&w);
    let _ = intruder.kill();
    let _ = intruder.wait();
    assert!(
        e.contains(&format!(
            "is also used by pid {}, outside the tree",
            intruder.id()
        )),
        "{e}"
    );

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
fn listening_sockets_answer_after_restore() {
    let Some(_g) = serial_root("listening_sockets_answer_after_restore") else {
        return;
    };
    // A server on IPv4 and IPv6 (v6only), options set, answering "hello <n>" on each connection.
    let script = r#"
import socket, sys, time, select
s4 = socket.socket()
s4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s4.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s4.bind(("127.0.0.1", 0)); s4.listen(16)
s6 = socket.socket(socket.AF_INET6)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s6.bind(("::1", 0)); s6.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
print("ports", s4.getsockname()[1], s6.getsockname()[1], u.getsockname()[1], flush=True)
n = 0
while True:
    r, _, _ = select.select([s4, s6, u], [], [], 0.05)
    for s in r:
        if s is u:
            data, peer = u.recvfrom(100); u.sendto(b"udp " + data, peer); continue
        c, _ = s.accept(); n += 1
        c.sendall(b"hello %d %d\n" % (n, s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))); c.close()
    print("tick", flush=True)
"#;
    let w = Workload::python("listen", script);
    let first = w.wait_lines(2, T);
    let ports: Vec<u16> = first[0]
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    let hello = |addr: &str, port: u16| -> String {
        let mut c = std::net::TcpStream::connect((addr, port)).expect("connect");
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    };
    assert_eq!(hello("127.0.0.1", ports[0]), "hello 1 1\n");
    let pids = dump_kill_restore(&w);
    assert_eq!(
        hello("127.0.0.1", ports[0]),
        "hello 2 1\n",
        "IPv4 listener, state and SO_REUSEADDR kept"
    );
    assert_eq!(hello("::1", ports[1]), "hello 3 0\n", "IPv6 listener");
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(T)).unwrap();
    u.send_to(b"ping", ("127.0.0.1", ports[2])).unwrap();
    let mut b = [0u8; 64];
    let (n, _) = u.recv_from(&mut b).expect("udp answer");
    kill_tree(&pids);
    assert_eq!(&b[..n], b"udp ping");
}

#[test]
fn datagrams_queued_on_a_bound_unix_socket_and_its_file_mode_survive() {
    let Some(_g) = serial_root("datagrams_queued_on_a_bound_unix_socket_and_its_file_mode_survive")
    else {
        return;
    };
    // A syslog-like receiver: bound by path, unconnected, with datagrams from unnamed senders
    // (one inside the tree, the others from the test) waiting to be read.
    let script = r#"
import os, socket, time
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind("log.sock")
os.chmod("log.sock", 0o620); os.chown("log.sock", 65534, 65534)
c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
c.sendto(b"from-tree", "log.sock")
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
srv.setblocking(False)
got = []
while True:
    try: got.append(srv.recv(100).decode())
    except BlockingIOError: break
print("got", got, flush=True)
c.sendto(b"after", "log.sock")
print("then", srv.recv(100).decode(), flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("dgramq", script);
    w.wait_lines(1, T);
    let outside = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for m in ["one", "two", "three"] {
        outside
            .send_to(m.as_bytes(), w.dir.join("log.sock"))
            .unwrap();
    }
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 3);
    assert_eq!(lines[1], "got ['from-tree', 'one', 'two', 'three']");
    assert_eq!(lines[2], "then after");
    // The socket file keeps its mode and owner, not the restorer's umask and uid.
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(w.dir.join("log.sock")).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o620, 65534, 65534)
    );
}

#[test]
fn unix_sockets_with_queued_data_and_listeners_survive() {
    let Some(_g) = serial_root("unix_sockets_with_queued_data_and_listeners_survive") else {
        return;
    };
    // Stream and datagram socketpairs with bytes queued both ways, a listener on a path and one
    // on an abstract name. On "go" (a file appearing) it reads everything and answers clients.
    let script = r#"
import os, socket, time
a, b = socket.socketpair()
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.sendall(b"to-b " * 1000); b.sendall(b"to-a " * 700)
c.send(b"dgram one"); c.send(b"dgram two"); d.send(b"dgram back")
l = socket.socket(socket.AF_UNIX); l.bind("sock"); l.listen(4)
ab = socket.socket(socket.AF_UNIX); ab.bind("\0stasis-test-abstract-%d" % os.getpid()); ab.listen(4)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
def take(s, n):
    got = b""
    while len(got) < n: got += s.recv(n - len(got))
    return got
print("b got", take(b, 5000) == b"to-b " * 1000, flush=True)
print("a got", take(a, 3500) == b"to-a " * 700, flush=True)
print("d got", d.recv(100), d.recv(100), flush=True)
print("c got", c.recv(100), flush=True)
for s in (l, ab):
    x, _ = s.accept(); x.sendall(b"hi"); x.close()
print("served", flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("unixsk", script);
    w.wait_lines(1, T);
    let pids = dump_kill_restore(&w);
    std::fs::write(w.dir.join("go"), b"").unwrap();
    let hi = |addr: std::os::unix::net::SocketAddr| {
        let mut s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap_or_else(|e| {
            let ss = std::process::Command::new("ss")
                .arg("-xlp")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            panic!("connect {addr:?}: {e}; listeners: {ss:?}")
        });
        let mut v = String::new();
        s.read_to_string(&mut v).unwrap();
        v
    };
    std::thread::sleep(Duration::from_millis(200));
    let path = std::os::unix::net::SocketAddr::from_pathname(w.dir.join("sock")).unwrap();
    assert_eq!(hi(path), "hi", "path listener");
    use std::os::linux::net::SocketAddrExt;
    let abs = std::os::unix::net::SocketAddr::from_abstract_name(format!(
        "stasis-test-abstract-{}",
        w.pid
    ))
    .unwrap();
    assert_eq!(hi(abs), "hi", "abstract listener");
    let lines = w.wait_lines(6, T);
    kill_tree(&pids);
    assert_eq!(
        &lines[1..6],
        &[
            "b got True".to_string(),
            "a got True".to_string(),
            "d got b'dgram one' b'dgram two'".to_string(),
            "c got b'dgram back'".to_string(),
            "served".to_string(),
        ]
    );
}

/// Starts the counter in a session of its own with `stdout`; returns it, its pid and the link
/// of its fd 1 (the --inherit-fd key).
fn spawn_counter(stdout: Stdio) -> (std::process::Child, u32, String) {
    use std::os::unix::process::CommandExt;
    let mut cmd = Command::new(workload("counter"));
    cmd.stdin(Stdio::null())
        .stdout(stdout)
        .stderr(Stdio::null());
    // SAFETY: setsid in the child before exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    // The command keeps its copy of the child's stdout until dropped: we must see EOF.
    drop(cmd);
    let pid = child.id();
    let key = std::fs::read_link(format!("/proc/{pid}/fd/1"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    (child, pid, key)
}

/// The last number the counter wrote before its output ended.
fn last_count(out: &mut impl Read) -> u64 {
    let mut all = Vec::new();
    out.read_to_end(&mut all).unwrap();
    String::from_utf8_lossy(&all)
        .lines()
        .last()
        .and_then(|l| l.parse().ok())
        .unwrap_or(0)
}

/// Restores `img` detached, giving our `stdout` for the file the images call `key`.
fn restore_with_stdout(img: &std::path::Path, key: &str, stdout: OwnedFd) -> std::process::Output {
    Command::new(stasis_bin())
        .args([
            "restore",
            "-D",
            img.to_str().unwrap(),
            "-d",
            "--inherit-fd",
            &format!("fd[1]:{key}"),
        ])
        .stdout(Stdio::from(stdout))
        .output()
        .unwrap()
}

/// The first number the counter writes to `out` (after five lines came, or 10 s).
fn first_count(out: &mut impl Read) -> u64 {
    let mut got = Vec::new();
    let end = Instant::now() + T;
    while String::from_utf8_lossy(&got).lines().count() < 5 && Instant::now() < end {
        let mut b = [0u8; 256];
        let k = out.read(&mut b).unwrap();
        got.extend_from_slice(&b[..k]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn inherit_fd_reconnects_a_pipe_to_the_outside() {
    let Some(_g) = serial_root("inherit_fd_reconnects_a_pipe_to_the_outside") else {
        return;
    };
    let dir = temp_dir("inherit");
    let (mut child, pid, key) = spawn_counter(Stdio::piped());
    let mut out = child.stdout.take().unwrap();
    assert!(key.starts_with("pipe:["), "{key}");
    let mut buf = [0u8; 64];
    let _ = out.read(&mut buf).unwrap();
    let img = dir.join("images");
    std::fs::create_dir_all(&img).unwrap();
    check_ok(
        "dump",
        &stasis(&["dump", "-t", &pid.to_string(), "-D", img.to_str().unwrap()]),
    );
    let _ = child.wait();
    let last_before = last_count(&mut out);

    let mut p = [0; 2];
    // SAFETY: pipe2 writes two fds into p.
    assert_eq!(unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: fresh fds owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    check_ok("restore --inherit-fd", &restore_with_stdout(&img, &key, w));
    let first_after = first_count(&mut std::fs::File::from(r));
    kill_tree(&[pid]);
    assert_eq!(
        first_after,
        last_before + 1,
        "counter continues on the new pipe"
    );
}

/// A counter whose stdout is a unix stream socket connected outside the tree (as a service's
/// stdout is connected to journald): refused by default; with --ext-unix-sk=INODE it is
/// dumped as external, the restore asks for a replacement, and with --inherit-fd
/// fd[1]:socket:[INODE] the counter carries on writing to the new socket.
#[test]
fn unix_stream_connected_outside_is_replaced_through_inherit_fd() {
    let Some(_g) = serial_root("unix_stream_connected_outside_is_replaced_through_inherit_fd")
    else {
        return;
    };
    use std::os::unix::net::UnixStream;
    let dir = temp_dir("ext-unix-stream");
    let (mut ours, theirs) = UnixStream::pair().unwrap();
    let (mut child, pid, key) = spawn_counter(Stdio::from(OwnedFd::from(theirs)));
    let ino: u32 = key
        .strip_prefix("socket:[")
        .and_then(|r| r.strip_suffix(']'))
        .unwrap()
        .parse()
        .unwrap();
    let mut buf = [0u8; 64];
    let _ = ours.read(&mut buf).unwrap();
    let img = dir.join("images");
    std::fs::create_dir_all(&img).unwrap();
    let dump = |extra: &[&str]| {
        let pid = pid.to_string();
        let mut args = vec!["dump", "-t", &pid, "-D", img.to_str().unwrap()];
        args.extend_from_slice(extra);
        stasis(&args)
    };
    let o = dump(&[]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains(&format!("--ext-unix-sk={ino}")),
        "{e}"
    );
    assert_eq!(tracer_of(pid), 0);
    check_ok(
        "dump --ext-unix-sk=INO",
        &dump(&[&format!("--ext-unix-sk={ino}")]),
    );
    let _ = child.wait();
    let last_before = last_count(&mut ours);

    // Without a replacement: one clear line, and nothing left behind.
    let o = stasis(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains(&format!("--inherit-fd fd[N]:socket:[{ino}]")),
        "{e}"
    );
    assert!(!alive(pid), "no task left by the failed restore");

    let (mut new_ours, new_theirs) = UnixStream::pair().unwrap();
    check_ok(
        "restore --inherit-fd socket",
        &restore_with_stdout(&img, &key, OwnedFd::from(new_theirs)),
    );
    let first_after = first_count(&mut new_ours);
    kill_tree(&[pid]);
    assert_eq!(
        first_after,
        last_before + 1,
        "the counter continues on the new socket"
    );
}

#[test]
fn shell_job_gets_the_restorers_terminal() {
    let Some(_g) = serial_root("shell_job_gets_the_restorers_terminal") else {
        return;
    };
    use std::os::unix::process::CommandExt;
    let (mut master, mut slave) = (0, 0);
    // SAFETY: openpty writes two fds; no name, termios or winsize requested.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0);
    // SAFETY: fresh fds owned here.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    // openpty's fds are inheritable: without this the workload would hold the master too, and
    // the pty would be inside the tree.
    for fd in [&master, &slave] {
        // SAFETY: F_SETFD on our own fd.
        unsafe {
            libc::fcntl(
                std::os::fd::AsRawFd::as_raw_fd(fd),
                libc::F_SETFD,
                libc::FD_CLOEXEC,
            )
        };
    }
    let child = Command::new(workload("counter"))
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave.try_clone().unwrap()))
        .process_group(0)
        .spawn()
        .unwrap();
    let pid = child.id();
    std::mem::forget(child); // reaped by pid below: the dump kills it
                             // SAFETY: F_SETFL on our fd: reads return at once when there is nothing to read.
    unsafe {
        libc::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&master),
            libc::F_SETFL,
            libc::O_NONBLOCK,
        )
    };
    let mut m = std::fs::File::from(master);
    // Everything the terminal shows, appended as it comes.
    let mut seen = Vec::new();
    let mut pump = |want_lines: usize, wait: Duration, seen: &mut Vec<u8>| {
        let end = Instant::now() + wait;
        while seen.iter().filter(|&&b| b == b'\n').count() < want_lines && Instant::now() < end {
            let mut b = [0u8; 256];
            match m.read(&mut b) {
                Ok(k) => seen.extend_from_slice(&b[..k]),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
    };
    pump(3, T, &mut seen);
    let dir = temp_dir("shelljob");
    let img = dir.join("images");
    std::fs::create_dir_all(&img).unwrap();
    let o = stasis(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        img.to_str().unwrap(),
        "-R",
    ]);
    assert!(
        !o.status.success(),
        "a terminal outside the tree needs --shell-job"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--shell-job"));
    check_ok(
        "dump -j",
        &stasis(&[
            "dump",
            "-t",
            &pid.to_string(),
            "-D",
            img.to_str().unwrap(),
            "-j",
        ]),
    );
    reap(pid);
    pump(usize::MAX, Duration::from_millis(200), &mut seen);
    let before = seen.iter().filter(|&&b| b == b'\n').count();
    let o = Command::new(stasis_bin())
        .args(["restore", "-D", img.to_str().unwrap(), "-d", "-j"])
        .stdin(Stdio::from(slave.try_clone().unwrap()))
        .stdout(Stdio::from(slave.try_clone().unwrap()))
        .stderr(Stdio::from(slave))
        .output()
        .unwrap();
    check_ok("restore -j", &o);
    pump(before + 5, T, &mut seen);
    kill_tree(&[pid]);
    let text = String::from_utf8_lossy(&seen);
    let numbers: Vec<u64> = text.lines().filter_map(|l| l.trim().parse().ok()).collect();
    assert!(
        numbers.len() >= before + 5,
        "output continues on the terminal: {text:?}"
    );
    for (i, n) in numbers.iter().enumerate() {
        assert_eq!(
            *n, i as u64,
            "terminal output is one unbroken count: {text:?}"
        );
    }
}

#[test]
fn restore_without_detach_exits_as_the_task_does() {
    let Some(_g) = serial_root("restore_without_detach_exits_as_the_task_does") else {
        return;
    };
    let w = Workload::start("exits", &workload("exits"), &[]);
    w.wait_lines(5, T);
    let img = w.images();
    check_ok("dump", &dump_workload(&w, &[]));
    reap(w.pid);
    let o = stasis(&["restore", "-D", img.to_str().unwrap()]);
    assert_eq!(
        o.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let lines = w.lines();
    assert_eq!(lines.len(), 40);
    counter_is_continuous(&lines);
}

#[test]
fn shared_file_mapping_and_madvise_state_survive() {
    let Some(_g) = serial_root("shared_file_mapping_and_madvise_state_survive") else {
        return;
    };
    let w = Workload::start("filemap", &workload("filemap"), &[]);
    w.wait_lines(5, T);
    // The fingerprint check in dump_kill_restore compares VmFlags (dc, dd, hg, wf, rr).
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    let on_disk = std::fs::read(w.dir.join("counter.dat")).unwrap();
    kill_tree(&pids);
    let v: Vec<u64> = after.iter().map(|l| l.trim().parse().unwrap()).collect();
    for (i, x) in v.iter().enumerate() {
        assert_eq!(*x, i as u64 + 1, "counter in the shared mapping continues");
    }
    let file_value = u64::from_ne_bytes(on_disk[..8].try_into().unwrap());
    assert!(
        file_value >= v[n + 4],
        "the file sees the restored task's writes: {file_value}"
    );
}

#[test]
fn pending_signals_are_still_pending_after_restore() {
    let Some(_g) = serial_root("pending_signals_are_still_pending_after_restore") else {
        return;
    };
    let w = Workload::start("pending", &workload("pending"), &[]);
    w.wait_lines(3, T);
    // SAFETY: kill(2) and sigqueue(3) to our workload; both signals are blocked there.
    unsafe {
        libc::kill(w.pid as libc::pid_t, libc::SIGUSR1);
        let v = libc::sigval {
            sival_ptr: 42usize as *mut libc::c_void,
        };
        libc::sigqueue(w.pid as libc::pid_t, libc::SIGRTMIN() + 1, v);
    }
    std::thread::sleep(Duration::from_millis(50));
    let pids = dump_kill_restore(&w);
    // SAFETY: kill(2): SIGUSR2 makes the task collect what is pending.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGUSR2) };
    let end = Instant::now() + T;
    while !w.lines().iter().any(|l| l == "done") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_tree(&pids);
    let got: Vec<String> = w
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("got "))
        .collect();
    assert_eq!(
        got,
        vec![
            format!("got {} 0", libc::SIGUSR1),
            format!("got {} 42", libc::SIGRTMIN() + 1)
        ],
        "both signals, with the queued value"
    );
}

#[test]
fn avx512_registers_survive() {
    let Some(_g) = serial_root("avx512_registers_survive") else {
        return;
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpu.split_whitespace().any(|f| f == "avx512f") {
        skip("avx512_registers_survive", "this CPU has no AVX-512");
        return;
    }
    let w = Workload::start("avx512", &workload_with("avx512", &["-mavx512f"]), &[]);
    let dots = |w: &Workload| std::fs::read_to_string(&w.out).unwrap_or_default();
    let end = Instant::now() + T;
    while dots(&w).len() < 5 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = dump_kill_restore(&w);
    let n = dots(&w).len();
    let end = Instant::now() + T;
    while dots(&w).len() < n + 10 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_tree(&pids);
    let out = dots(&w);
    assert!(
        !out.contains('X'),
        "a zmm or opmask register changed: {out}"
    );
    assert!(out.len() >= n + 10, "the loop stopped: {out}");
}

#[test]
fn process_groups_and_sessions_inside_the_tree() {
    let Some(_g) = serial_root("process_groups_and_sessions_inside_the_tree") else {
        return;
    };
    let w = Workload::start("groups", &workload("groups"), &[]);
    w.wait_lines(5, T);
    let before = tree_ids(w.pid);
    assert_eq!(before.len(), 5, "{before:?}");
    let img = w.images();
    check_ok("dump", &dump_workload(&w, &[]));
    for (p, ..) in &before {
        reap(*p);
    }
    // Orphans of the killed tree are reparented to us (subreaper): reap them all.
    kill_tree(&[]);
    check_ok(
        "restore",
        &stasis(&["restore", "-D", img.to_str().unwrap(), "-d"]),
    );
    let mut after = tree_ids(w.pid);
    // The root's parent is whoever reaps for us now; everything else must match.
    after[0].1 = before[0].1;
    let pids: Vec<u32> = after.iter().map(|t| t.0).collect();
    let n = w.lines().len();
    let lines = w.wait_lines(n + 5, T);
    kill_tree(&pids);
    assert_eq!(before, after, "pids, parents, groups and sessions");
    counter_is_continuous(&lines);
}

#[test]
fn deleted_executable_comes_back() {
    let Some(_g) = serial_root("deleted_executable_comes_back") else {
        return;
    };
    let dir = temp_dir("deleted-exe");
    let exe = dir.join("counter-gone");
    std::fs::copy(workload("counter"), &exe).unwrap();
    let w = Workload::start("deleted-exe", &exe, &[]);
    w.wait_lines(3, T);
    std::fs::remove_file(&exe).unwrap();
    // The fingerprint compares /proc/<pid>/exe, which reads "... (deleted)" before and after.
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    kill_tree(&pids);
    counter_is_continuous(&after);
    assert!(!exe.exists(), "the recreated executable is unlinked again");
}

#[test]
fn exited_main_thread_is_refused_and_threads_run_on() {
    let Some(_g) = serial_root("exited_main_thread_is_refused_and_threads_run_on") else {
        return;
    };
    let w = Workload::start("leaderexit", &workload("leaderexit"), &[]);
    w.wait_lines(3, T);
    let e = dump_must_fail(&w);
    assert!(e.contains("main thread"), "{e}");
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    counter_is_continuous(&after);
}

#[test]
fn bytes_buffered_in_a_pipe_survive() {
    let Some(_g) = serial_root("bytes_buffered_in_a_pipe_survive") else {
        return;
    };
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
    let Some(_g) = serial_root("every_fd_kind_keeps_working_in_one_program") else {
        return;
    };
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
        posix,
        (libc::F_WRLCK as i16, w.pid as i32),
        "POSIX lock held by the restored pid"
    );
}

fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(i / 251)) as u8
}

#[test]
fn tcp_stream_survives_with_data_in_flight_both_ways() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    let Some(_g) = serial_root("tcp_stream_survives_with_data_in_flight_both_ways") else {
        return;
    };
    let port = free_port();
    let w = Workload::start("tcpserver", &workload("tcpserver"), &[&port.to_string()]);
    w.wait_lines(1, T);
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_nodelay(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let (sent, got) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // A stalled connection must fail the test, not hang it.
    conn.set_write_timeout(Some(Duration::from_secs(70)))
        .unwrap();
    // Bytes the network lock drops come back on this (the peer's) retransmission timer, which
    // doubles through the downtime; on a loaded machine it can reach minutes. Cap it at 1 s
    // (TCP_RTO_MAX_MS, Linux 6.15+), as a latency-sensitive peer would; older kernels ignore it.
    {
        use std::os::fd::AsRawFd;
        let cap_ms: libc::c_int = 1000;
        // SAFETY: setsockopt reads one int from our local.
        unsafe {
            libc::setsockopt(
                conn.as_raw_fd(),
                libc::IPPROTO_TCP,
                44,
                (&cap_ms as *const libc::c_int).cast(),
                4,
            );
        }
    }
    let mut wr = conn.try_clone().unwrap();
    let (s2, st2) = (sent.clone(), stop.clone());
    let writer = std::thread::spawn(move || {
        let mut off = 0u64;
        let mut buf = [0u8; 1000];
        while !st2.load(Ordering::Relaxed) {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = pattern(off + k as u64);
            }
            if wr.write_all(&buf).is_err() {
                return Err(format!("write failed at {off}"));
            }
            off += buf.len() as u64;
            s2.store(off, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    });
    let mut rd = conn.try_clone().unwrap();
    rd.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let (g2, st3, p2) = (got.clone(), stop.clone(), paused.clone());
    let reader = std::thread::spawn(move || {
        let mut off = 0u64;
        let mut buf = [0u8; 8192];
        while !st3.load(Ordering::Relaxed) {
            if p2.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            match rd.read(&mut buf) {
                Ok(0) => return Err(format!("eof at {off}")),
                Ok(n) => {
                    for (k, b) in buf[..n].iter().enumerate() {
                        if *b != pattern(off + k as u64) {
                            return Err(format!("bad byte at {}", off + k as u64));
                        }
                    }
                    off += n as u64;
                    g2.store(off, Ordering::Relaxed);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(format!("read: {e} at {off}")),
            }
        }
        Ok(())
    });
    std::thread::sleep(Duration::from_millis(300));
    // Stop reading for a while: the server's send queue fills, so bytes are in flight both ways.
    paused.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    let img = w.images();
    let pid = w.pid.to_string();
    let o = stasis(&["dump", "-t", &pid, "-D", img.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "an established connection needs --tcp-established"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tcp-established"));
    check_ok(
        "dump",
        &stasis(&[
            "dump",
            "-t",
            &pid,
            "-D",
            img.to_str().unwrap(),
            "--tcp-established",
            "-o",
            "dump.log",
            "-v4",
        ]),
    );
    reap(w.pid);
    let (s_at_dump, g_at_dump) = (sent.load(Ordering::Relaxed), got.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_millis(300));
    check_ok(
        "restore",
        &stasis(&[
            "restore",
            "-D",
            img.to_str().unwrap(),
            "-d",
            "--tcp-established",
            "-o",
            "restore.log",
            "-v4",
        ]),
    );
    paused.store(false, Ordering::Relaxed);
    let server_rx_now = |w: &Workload| {
        w.lines()
            .iter()
            .rev()
            .find_map(|l| {
                l.strip_prefix("rx ")
                    .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    // The peer's bytes dropped by the network lock come back by retransmission, on the peer's
    // backed-off timer (it grows with the downtime): wait for them rather than a fixed time.
    let end = Instant::now() + Duration::from_secs(60);
    while (got.load(Ordering::Relaxed) < g_at_dump + 200_000
        || server_rx_now(&w) < s_at_dump + 100_000)
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let wres = writer.join().unwrap();
    let rres = reader.join().unwrap();
    let server_rx = w
        .lines()
        .iter()
        .rev()
        .find_map(|l| {
            l.strip_prefix("rx ")
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0);
    let bad = w
        .lines()
        .into_iter()
        .find(|l| l.starts_with("BAD") || l.starts_with("write error") || l == "eof");
    kill_tree(&[w.pid]);
    assert_eq!(bad, None, "server side");
    wres.expect("client writer");
    rres.expect("client reader");
    assert!(
        got.load(Ordering::Relaxed) >= g_at_dump + 200_000,
        "client kept receiving the server's stream"
    );
    assert!(
        server_rx >= s_at_dump,
        "server received everything sent before the dump: {server_rx} < {s_at_dump}"
    );
}

/// Both ends of a TCP connection inside the tree (a parent serving its child), each with
/// lines sent ahead and not yet read: the stream goes on in order in both directions.
#[test]
fn tcp_connection_with_both_ends_in_the_tree_goes_on() {
    let Some(_g) = serial_root("tcp_connection_with_both_ends_in_the_tree_goes_on") else {
        return;
    };
    let script = r#"
import os, socket, time
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
port = ls.getsockname()[1]
if os.fork() == 0:
    role, s = "client", socket.create_connection(("127.0.0.1", port))
else:
    role, s = "server", ls.accept()[0]
sent, expect, buf = 0, 0, b""
for _ in range(3):  # always three lines ahead, unread by the other side
    s.sendall(b"%d\n" % sent); sent += 1
while True:
    s.sendall(b"%d\n" % sent); sent += 1
    while b"\n" not in buf:
        buf += s.recv(4096)
    line, buf = buf.split(b"\n", 1)
    if int(line) != expect:
        print(role, "BAD", line, expect, flush=True)
    expect += 1
    if expect % 20 == 0:
        print(role, expect, flush=True)
    time.sleep(0.005)
"#;
    let w = Workload::python("tcp-both-ends", script);
    let count = |w: &Workload, role: &str| -> u64 {
        w.lines()
            .iter()
            .filter_map(|l| l.strip_prefix(role)?.trim().parse().ok())
            .max()
            .unwrap_or(0)
    };
    let end = Instant::now() + T;
    // Past warm-up, so the heap no longer grows between the fingerprint and the freeze.
    while (count(&w, "server") < 200 || count(&w, "client") < 200) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    let (s0, c0) = (count(&w, "server"), count(&w, "client"));
    let end = Instant::now() + T;
    while (count(&w, "server") < s0 + 100 || count(&w, "client") < c0 + 100) && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = w.lines();
    kill_tree(&pids);
    assert_eq!(pids.len(), 2, "server and client");
    assert!(!lines.iter().any(|l| l.contains("BAD")), "{lines:?}");
    assert!(
        count(&w, "server") >= s0 + 100 && count(&w, "client") >= c0 + 100,
        "both ends go on: {lines:?}"
    );
}

#[test]
fn redis_with_100k_keys_keeps_its_client_connection() {
    let Some(_g) = serial_root("redis_with_100k_keys_keeps_its_client_connection") else {
        return;
    };
    let Some(redis) = redis_server() else {
        skip(
            "redis_with_100k_keys_keeps_its_client_connection",
            "redis-server is not installed",
        );
        return;
    };
    let port = free_port();
    let (w, mut loader) = start_redis("redis", redis, port, &[]).unwrap();
    for i in 0..100_000 {
        loader
            .send(&["SET", &format!("key:{i}"), &format!("value-{i}")])
            .unwrap();
    }
    for _ in 0..100_000 {
        assert_eq!(loader.reply().unwrap(), "+OK");
    }
    drop(loader);
    // The client under test: one connection, used before and after.
    let mut c = Redis::connect(port).unwrap();
    assert_eq!(c.cmd(&["DBSIZE"]).unwrap(), ":100000");
    assert_eq!(c.cmd(&["GET", "key:4242"]).unwrap(), "value-4242");
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    assert_eq!(
        c.cmd(&["GET", "key:99999"]).unwrap(),
        "value-99999",
        "same connection, same data"
    );
    assert_eq!(c.cmd(&["DBSIZE"]).unwrap(), ":100000");
    assert_eq!(c.cmd(&["SET", "after", "restore"]).unwrap(), "+OK");
    assert_eq!(c.cmd(&["GET", "after"]).unwrap(), "restore");
    // And new clients are served too.
    let mut d = Redis::connect(port).expect("listener restored");
    assert_eq!(d.cmd(&["GET", "after"]).unwrap(), "restore");
    kill_tree(&pids);
}

fn http_get(port: u16) -> Option<String> {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

fn children(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// memcached with four worker threads (each with its own epoll, eventfd and notification
/// pipe) running as nobody, its client outside the tree: the same connection reads the value
/// stored before the checkpoint, and new clients are served.
#[test]
fn memcached_with_worker_threads_keeps_its_client() {
    let name = "memcached_with_worker_threads_keeps_its_client";
    let Some(_g) = serial_root(name) else {
        return;
    };
    let bin = std::path::Path::new("/usr/bin/memcached");
    if !bin.exists() {
        skip(
            name,
            "memcached (Debian package memcached) is not installed",
        );
        return;
    }
    let port = free_port();
    let w = Workload::start(
        "memcached",
        bin,
        &[
            "-u",
            "nobody",
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "4",
        ],
    );
    let end = Instant::now() + T;
    let connect = || std::net::TcpStream::connect(("127.0.0.1", port));
    let mut c = loop {
        match connect() {
            Ok(c) => break c,
            Err(e) if Instant::now() > end => panic!("memcached does not answer: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    c.set_read_timeout(Some(T)).unwrap();
    let cmd = |c: &mut std::net::TcpStream, req: &str, until: &str| -> String {
        use std::io::Write;
        c.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).ends_with(until) {
            let mut b = [0u8; 512];
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    assert_eq!(
        cmd(&mut c, "set k 0 0 5\r\nhello\r\n", "\r\n"),
        "STORED\r\n"
    );
    assert_eq!(cmd(&mut c, "set n 0 0 1\r\n5\r\n", "\r\n"), "STORED\r\n");
    let threads = std::fs::read_dir(format!("/proc/{}/task", w.pid))
        .unwrap()
        .count();
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    let get = cmd(&mut c, "get k\r\n", "END\r\n");
    let incr = cmd(&mut c, "incr n 1\r\n", "\r\n");
    let mut c2 = connect().expect("new clients are served");
    c2.set_read_timeout(Some(T)).unwrap();
    let get2 = cmd(&mut c2, "get k\r\n", "END\r\n");
    let threads_after = std::fs::read_dir(format!("/proc/{}/task", w.pid))
        .unwrap()
        .count();
    kill_tree(&pids);
    assert!(threads >= 5, "memcached runs worker threads: {threads}");
    assert_eq!(threads_after, threads, "every thread is back");
    assert_eq!(get, "VALUE k 0 5\r\nhello\r\nEND\r\n");
    assert_eq!(incr, "6\r\n");
    assert_eq!(get2, "VALUE k 0 5\r\nhello\r\nEND\r\n");
}

/// tmux: its server (ptys it holds the masters of, a bash session leader on each slave, a unix
/// listener its clients connect to from outside) is dumped and restored; the same bash then
/// takes keys sent by a new client and still has its shell variable.
#[test]
fn tmux_session_keeps_its_shell_and_answers_new_clients() {
    let name = "tmux_session_keeps_its_shell_and_answers_new_clients";
    let Some(_g) = serial_root(name) else {
        return;
    };
    if !std::path::Path::new("/usr/bin/tmux").exists() {
        skip(name, "tmux (Debian package tmux) is not installed");
        return;
    }
    let dir = temp_dir("tmux");
    let sock = dir.join("tmux.sock");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(args)
            .env("TERM", "xterm")
            .output()
            .unwrap()
    };
    let pane_has = |text: &str| {
        let end = Instant::now() + T;
        loop {
            let o = tmux(&["capture-pane", "-p", "-t", "s1"]);
            let screen = String::from_utf8_lossy(&o.stdout).into_owned();
            if screen.contains(text) || Instant::now() > end {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    check_ok(
        "tmux new-session",
        &tmux(&["new-session", "-d", "-s", "s1", "bash --norc --noprofile"]),
    );
    check_ok(
        "send-keys",
        &tmux(&["send-keys", "-t", "s1", "X=41; echo before$X", "Enter"]),
    );
    assert!(pane_has("before41").contains("before41"));
    let pid: u32 = String::from_utf8_lossy(&tmux(&["display", "-p", "#{pid}"]).stdout)
        .trim()
        .parse()
        .unwrap();
    let w = Workload {
        pid,
        out: dir.join("none"),
        dir: dir.clone(),
    };
    let pids = dump_kill_restore(&w);
    assert!(pids.len() >= 2, "the server and its shell: {pids:?}");
    check_ok(
        "send-keys after restore",
        &tmux(&["send-keys", "-t", "s1", "echo after$((X+1))", "Enter"]),
    );
    let screen = pane_has("after42");
    let _ = tmux(&["kill-server"]);
    kill_tree(&pids);
    assert!(screen.contains("after42"), "{screen}");
}

/// The newest installed PostgreSQL server binary (Debian's postgresql-NN), if any.
fn postgres_bin() -> Option<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin/postgres"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// PostgreSQL (postmaster, its background processes and a backend, all as `postgres`; SysV
/// and shared anonymous memory, signalfd, epoll, pipes, a TCP and a unix listener) with a
/// client outside the tree in the middle of a transaction: after dump and restore with
/// --tcp-established, the same session commits it, and new clients are served.
#[test]
fn postgres_keeps_its_client_in_the_middle_of_a_transaction() {
    let name = "postgres_keeps_its_client_in_the_middle_of_a_transaction";
    let Some(_g) = serial_root(name) else {
        return;
    };
    let Some(bin) = postgres_bin() else {
        skip(
            name,
            "PostgreSQL (Debian package postgresql) is not installed",
        );
        return;
    };
    let pw = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let (uid, gid) = unsafe {
        let p = libc::getpwnam(pw.as_ptr());
        if p.is_null() {
            skip(name, "there is no postgres user");
            return;
        }
        ((*p).pw_uid, (*p).pw_gid)
    };
    let dir = temp_dir("postgres-data");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
    use std::os::unix::process::CommandExt;
    let o = Command::new(bin.with_file_name("initdb"))
        .args([
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ])
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let port = free_port();
    let w = Workload::start_as(
        "postgres",
        &bin,
        &[
            "-D",
            data.to_str().unwrap(),
            "-p",
            &port.to_string(),
            "-k",
            dir.to_str().unwrap(),
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        Some((uid, gid)),
    );
    let end = Instant::now() + T;
    let mut client = loop {
        match Postgres::connect(port, "postgres") {
            Ok(c) => break c,
            Err(e) if Instant::now() > end => {
                panic!("postgres does not answer: {e} {:?}", w.lines())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    client
        .query("create table t (x int); insert into t select generate_series(1, 1000)")
        .unwrap();
    client
        .query("begin; insert into t select generate_series(1001, 1500)")
        .unwrap();
    // Inside the transaction its rows are seen; from another session they are not.
    assert_eq!(client.query("select count(*) from t").unwrap(), ["1500"]);
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    assert!(
        pids.len() >= 6,
        "postmaster, background processes and a backend: {pids:?}"
    );
    let mut other = Postgres::connect(port, "postgres").expect("new clients are served");
    assert_eq!(other.query("select count(*) from t").unwrap(), ["1000"]);
    let inside = client.query("select count(*) from t");
    let commit = client.query("insert into t values (1501); commit");
    let after = other.query("select count(*) from t");
    drop((client, other));
    // A fast shutdown (SIGINT), so that postgres removes its System V segment itself.
    // SAFETY: kill(2) of the restored postmaster.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGINT) };
    let end = Instant::now() + T;
    while alive(w.pid) && Instant::now() < end {
        reap(w.pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_tree(&pids);
    assert_eq!(
        inside.unwrap(),
        ["1500"],
        "the session keeps its transaction"
    );
    commit.unwrap();
    assert_eq!(
        after.unwrap(),
        ["1501"],
        "the transaction commits after restore"
    );
}

#[test]
fn nginx_master_and_workers_as_nobody_serve_before_and_after() {
    let Some(_g) = serial_root("nginx_master_and_workers_as_nobody_serve_before_and_after") else {
        return;
    };
    if !std::path::Path::new("/usr/sbin/nginx").exists() {
        skip(
            "nginx_master_and_workers_as_nobody_serve_before_and_after",
            "nginx is not installed",
        );
        return;
    }
    let dir = temp_dir("nginx-conf");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\nuser nobody nogroup;\npid {d}/nginx.pid;\n\
error_log {d}/logs/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n\
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello from nginx\\n\"; }} }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let conf_path = dir.join("nginx.conf");
    let w = Workload::start(
        "nginx",
        std::path::Path::new("/usr/sbin/nginx"),
        &[
            "-c",
            conf_path.to_str().unwrap(),
            "-p",
            dir.to_str().unwrap(),
        ],
    );
    let end = Instant::now() + T;
    while http_get(port).is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        http_get(port)
            .unwrap_or_default()
            .contains("hello from nginx"),
        "nginx serves: {:?}",
        w.lines()
    );
    let workers = children(w.pid);
    assert_eq!(workers.len(), 2);
    let uid = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            })
            .unwrap_or_default()
    };
    assert!(
        workers.iter().all(|p| uid(*p) == "65534"),
        "workers run as nobody"
    );
    // Fingerprints of master and workers (credentials included) are compared by the helper.
    let pids = dump_kill_restore(&w);
    assert_eq!(children(w.pid), workers, "the same workers are back");
    for _ in 0..5 {
        assert!(
            http_get(port)
                .unwrap_or_default()
                .contains("hello from nginx"),
            "served after restore"
        );
    }
    // The master still drives its workers over their socketpairs: reload, then quit.
    // SAFETY: kill(2) to the restored master.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGHUP) };
    let end = Instant::now() + T;
    while children(w.pid).iter().any(|p| workers.contains(p)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !children(w.pid).iter().any(|p| workers.contains(p)),
        "old workers left on reload"
    );
    assert!(
        http_get(port)
            .unwrap_or_default()
            .contains("hello from nginx"),
        "new workers serve"
    );
    // SAFETY: kill(2): graceful quit, passed to the workers over the channels.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGQUIT) };
    let end = Instant::now() + T;
    while alive(w.pid) && Instant::now() < end {
        reap(w.pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    let quit = !alive(w.pid);
    kill_tree(&pids);
    assert!(quit, "nginx quits gracefully");
}

#[test]
fn fifo_with_buffered_data_survives() {
    let Some(_g) = serial_root("fifo_with_buffered_data_survives") else {
        return;
    };
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
    let Some(_g) = serial_root("file_locks_are_held_again_after_restore") else {
        return;
    };
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
    let posix = lock_probe(&w.dir.join("posix"), libc::F_GETLK, 12, 1);
    let ofd = lock_probe(&w.dir.join("ofd"), libc::F_OFD_GETLK, 50, 1);
    let outside = lock_probe(&w.dir.join("posix"), libc::F_GETLK, 0, 5);
    kill_tree(&pids);
    assert!(!got_flock, "flock is held by the restored task");
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
    let Some(_g) = serial_root("inotify_watches_see_new_files_after_restore") else {
        return;
    };
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

#[test]
fn pty_pair_inside_the_tree_echoes_after_restore() {
    let Some(_g) = serial_root("pty_pair_inside_the_tree_echoes_after_restore") else {
        return;
    };
    // Both ends of a pty in one process, with a window size and raw-ish settings on the slave.
    let script = r#"
import os, pty, termios, struct, fcntl, time
m, s = pty.openpty()
fcntl.ioctl(m, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 99, 0, 0))
attrs = termios.tcgetattr(s); attrs[3] &= ~termios.ICANON; termios.tcsetattr(s, termios.TCSANOW, attrs)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
os.write(m, b"ping\n")
time.sleep(0.1)
got = os.read(s, 100)
echo = os.read(m, 100)
ws = struct.unpack("HHHH", fcntl.ioctl(s, termios.TIOCGWINSZ, b"\0" * 8))
canon = bool(termios.tcgetattr(s)[3] & termios.ICANON)
print("slave", got, "echo", echo, "ws", ws[0], ws[1], "canon", canon, flush=True)
while True: time.sleep(1)
"#;
    let (_w, lines) = python_across_restore("pty", script, 2);
    // Non-canonical with ECHOCTL: the newline echoes as ^J, as it did before the dump.
    assert_eq!(
        lines[1],
        "slave b'ping\\n' echo b'ping^J' ws 33 99 canon False"
    );
}

/// Bytes buffered in a pty pair survive in both directions: a complete line and a partial
/// one typed into the master and not yet read on the slave (canonical mode), and output the
/// slave wrote (with NL turned into CR NL) not yet read on the master, neither lost nor
/// processed twice.
#[test]
fn pty_keeps_bytes_buffered_in_both_directions() {
    let Some(_g) = serial_root("pty_keeps_bytes_buffered_in_both_directions") else {
        return;
    };
    let script = r#"
import os, pty, termios, time
m, s = pty.openpty()
t = termios.tcgetattr(s)
t[3] &= ~termios.ECHO
termios.tcsetattr(s, termios.TCSANOW, t)
os.write(m, b"line1\npart")
os.write(s, b"out\nbytes")
time.sleep(0.2)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
os.set_blocking(m, False)
first = os.read(s, 100)
os.write(m, b"ial\n")
second = os.read(s, 100)
time.sleep(0.1)
master = os.read(m, 100)
print("got", first, second, master, flush=True)
while True: time.sleep(1)
"#;
    let (_w, lines) = python_across_restore("ptyq", script, 2);
    assert_eq!(lines[1], r"got b'line1\n' b'partial\n' b'out\r\nbytes'");
}

/// SIGTRAP dispositions survive our single steps, which force a SIGTRAP after every injected
/// syscall (the kernel resets a forced signal that is blocked or ignored to SIG_DFL): a
/// handler (bash and python install one), an ignored SIGTRAP, and a blocked SIGTRAP that is
/// pending all come back, after a dump that leaves the tree running and after a restore.
#[test]
fn sigtrap_handler_and_ignored_sigtrap_survive() {
    let Some(_g) = serial_root("sigtrap_handler_and_ignored_sigtrap_survive") else {
        return;
    };
    let script = r#"
import os, signal, time
if os.fork() == 0:
    signal.signal(signal.SIGTRAP, signal.SIG_IGN)
    who = "ignoring"
elif os.fork() == 0:
    # Blocked, with one pending: it must still be pending after the dump and the restore.
    signal.signal(signal.SIGTRAP, lambda *a: os.write(1, b"pending delivered\n"))
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTRAP})
    os.kill(os.getpid(), signal.SIGTRAP)
    who = "blocking"
else:
    signal.signal(signal.SIGTRAP, lambda *a: os.write(1, b"handled\n"))
    who = "handling"
time.sleep(0.2)
os.write(1, f"ready {who}\n".encode())  # one write: three processes share the file
while not os.path.exists("go"):
    time.sleep(0.02)
if who == "blocking":
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTRAP})
else:
    os.kill(os.getpid(), signal.SIGTRAP)
time.sleep(0.2)
os.write(1, f"alive {who}\n".encode())
time.sleep(1e6)
"#;
    let w = Workload::python("sigtrap", script);
    w.wait_lines(3, T);
    let dispositions = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("SigIgn") || l.starts_with("SigCgt"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let pids = tree_and_session(w.pid);
    let before: Vec<_> = pids.iter().map(|&p| dispositions(p)).collect();
    check_ok("dump -R", &dump_workload(&w, &["-R"]));
    let after_r: Vec<_> = pids.iter().map(|&p| dispositions(p)).collect();
    assert_eq!(
        after_r, before,
        "a dump that leaves the tree running changes nothing"
    );
    // dump_kill_restore compares SigIgn and SigCgt of every task before and after.
    let pids = dump_kill_restore(&w);
    let mut lines = w.go_and_collect(&pids, 8);
    lines.sort();
    assert_eq!(
        lines,
        [
            "alive blocking",
            "alive handling",
            "alive ignoring",
            "handled",
            "pending delivered",
            "ready blocking",
            "ready handling",
            "ready ignoring"
        ]
    );
}

/// Scheduling policies come back: a real-time (SCHED_RR, priority 10) parent and a
/// SCHED_BATCH child with nice 5 (the fingerprint compares policy, priority and nice).
#[test]
fn scheduling_policy_and_priority_survive() {
    let Some(_g) = serial_root("scheduling_policy_and_priority_survive") else {
        return;
    };
    let script = r#"
import os, time
if os.fork() == 0:
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    os.nice(5)
else:
    os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
time.sleep(0.2)
os.write(1, f"ready {os.sched_getscheduler(0)} {os.sched_getparam(0).sched_priority}\n".encode())
while not os.path.exists("go"):
    time.sleep(0.02)
os.write(1, f"after {os.sched_getscheduler(0)} {os.sched_getparam(0).sched_priority} {os.nice(0)}\n".encode())
time.sleep(1e6)
"#;
    let w = Workload::python("sched", script);
    w.wait_lines(2, T);
    // dump_kill_restore compares the policy, priority and nice of both tasks.
    let pids = dump_kill_restore(&w);
    let mut lines = w.go_and_collect(&pids, 4);
    lines.sort();
    assert_eq!(
        lines,
        ["after 2 10 0", "after 3 0 5", "ready 2 10", "ready 3 0"]
    );
}

/// mlock()ed memory stays locked (VmFlags `lo`, VmLck), with its content.
#[test]
fn locked_memory_stays_locked() {
    let Some(_g) = serial_root("locked_memory_stays_locked") else {
        return;
    };
    let script = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
a = libc.mmap(None, 1 << 20, 3, 0x22, -1, 0)
ctypes.memmove(a + 12345, b"locked bytes", 12)
assert libc.mlock(ctypes.c_void_p(a), 1 << 20) == 0, ctypes.get_errno()
lck = lambda: [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmLck")][0]
print("ready", lck(), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", lck(), ctypes.string_at(a + 12345, 12).decode(), flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("mlock", script);
    w.wait_lines(1, T);
    // The fingerprint compares VmFlags, `lo` included.
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines, ["ready 1024", "after 1024 locked bytes"]);
}

/// Scale: 2000 fds on one file, 1000 small shared mappings and 50 threads all come back
/// (these used to cost a kcmp per pair of fds and a writer thread per mapping).
#[test]
fn many_fds_threads_and_shared_mappings_come_back() {
    let Some(_g) = serial_root("many_fds_threads_and_shared_mappings_come_back") else {
        return;
    };
    let script = r#"
import mmap, os, threading, time
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(2000)]
maps = []
for i in range(1000):
    m = mmap.mmap(-1, 4096); m[0] = i % 251; maps.append(m)
ticks = [0] * 50
def work(k):
    while True:
        ticks[k] += 1; time.sleep(0.02)
for k in range(50):
    threading.Thread(target=work, args=(k,), daemon=True).start()
state = lambda: f"{len(os.listdir('/proc/self/fd'))} {sum(m[0] for m in maps)} {threading.active_count()}"
print("ready", state(), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
before = sum(ticks); time.sleep(0.3)
print("after", state(), sum(ticks) > before, flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("many", script);
    w.wait_lines(1, Duration::from_secs(30));
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 2);
    let ready = lines[0].strip_prefix("ready ").unwrap().to_string();
    assert_eq!(lines[1], format!("after {ready} True"));
}

#[test]
fn python_signal_handler_runs_after_restore() {
    let Some(_g) = serial_root("python_signal_handler_runs_after_restore") else {
        return;
    };
    // Python installs its handlers with SA_ONSTACK and has no alternate stack. A restored task
    // once kept the restorer's alternate stack, and died with SIGSEGV at the first signal.
    let script = r#"
import signal, time
got = []
signal.signal(signal.SIGUSR1, lambda *a: got.append(1))
print("ready", flush=True)
while not got:
    time.sleep(0.01)
print("handled", flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("pysig", script);
    w.wait_lines(1, T);
    let pids = dump_kill_restore(&w);
    // SAFETY: kill(2) to the restored task.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGUSR1) };
    let lines = w.wait_lines(2, T);
    let alive = alive(w.pid);
    kill_tree(&pids);
    assert!(alive, "the task died from the signal");
    assert_eq!(lines.get(1).map(String::as_str), Some("handled"));
}

#[test]
fn pty_session_keeps_its_controlling_terminal_and_foreground_group() {
    let Some(_g) = serial_root("pty_session_keeps_its_controlling_terminal_and_foreground_group")
    else {
        return;
    };
    // pty.fork(): the child leads a session whose controlling terminal is the slave. It puts a
    // child of its own in the foreground; after restore, ^C typed on the master must reach that
    // foreground group only, and /dev/tty must open.
    let script = r#"
import os, pty, signal, sys, time
pid, m = pty.fork()
if pid == 0:
    fg = os.fork()
    if fg == 0:
        os.setpgid(0, 0)
        signal.signal(signal.SIGINT, lambda *a: (os.write(1, b"fg got SIGINT\r\n"), os._exit(0)))
        while True: time.sleep(0.05)
    os.setpgid(fg, fg)
    signal.signal(signal.SIGTTOU, signal.SIG_IGN)
    os.tcsetpgrp(0, fg)
    signal.signal(signal.SIGINT, lambda *a: os.write(1, b"leader got SIGINT\r\n"))
    while not os.path.exists("go"):
        time.sleep(0.02)
    ok = os.tcgetpgrp(0) == fg
    try:
        os.close(os.open("/dev/tty", os.O_RDWR)); tty = "tty ok"
    except OSError as e:
        tty = "tty " + e.strerror
    os.write(1, ("leader fg %s %s\r\n" % (ok, tty)).encode())
    os.waitpid(fg, 0)
    os.write(1, b"leader done\r\n")
    while True: time.sleep(1)
print("ready", flush=True)
buf = b""
while not os.path.exists("go"):
    time.sleep(0.02)
time.sleep(0.3)
os.write(m, b"\x03")
end = time.time() + 5
while b"leader done" not in buf and time.time() < end:
    try: buf += os.read(m, 1000)
    except OSError: break
for line in buf.decode().splitlines():
    line = line.replace("^C", "").strip()
    if line: print(line, flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("ctty", script);
    w.wait_lines(1, T);
    std::thread::sleep(Duration::from_millis(200));
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 4);
    assert!(lines.len() >= 4, "{lines:?}");
    assert_eq!(
        lines[1..4],
        ["leader fg True tty ok", "fg got SIGINT", "leader done"]
    );
}

#[test]
fn sysv_shared_memory_used_only_by_the_tree_survives() {
    let Some(_g) = serial_root("sysv_shared_memory_used_only_by_the_tree_survives") else {
        return;
    };
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
    let Some(_g) = serial_root("sysv_message_queue_and_semaphores_used_by_the_tree_survive") else {
        return;
    };
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
    assert_eq!(lines[1], "got [(3, 'first'), (5, 'second')] [5, 0, 2]");
}
