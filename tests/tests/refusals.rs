//! End-to-end: what stasis cannot restore yet is refused by name, before any task is killed,
//! and the tree runs on, neither stopped nor traced.

use stasis_tests::*;

#[test]
fn shared_fs_struct_between_processes_is_refused_and_tree_runs_on() {
    let _g = serial_root!();
    let w = Workload::start("clonefs", &workload("clonefiles"), &["fs"]);
    w.wait_lines(3, T);
    let e = dump_must_fail(&w);
    assert!(e.contains("fs information"), "{e}");
    let n = w.lines().len();
    assert!(w.wait_lines(n + 5, T).len() >= n + 5, "tree runs on");
}

#[test]
fn namespace_fds_are_refused_by_name_and_tree_runs_on() {
    let _g = serial_root!();
    // A namespace file of a namespace its task is not in (here a child's own UTS namespace)
    // cannot be opened again from inside the task: the dump must refuse it.
    let script = r#"
import ctypes, os, time
r, w = os.pipe()
c = os.fork()
if c == 0:
    ctypes.CDLL(None).unshare(0x04000000); os.write(w, b"x")  # CLONE_NEWUTS
    while True: time.sleep(1)
os.read(r, 1)
fd = os.open(f'/proc/{c}/ns/uts', os.O_RDONLY)
i = 0
while True:
    print(i, fd, flush=True); i += 1; time.sleep(0.01)
"#;
    let w = Workload::python("nsfd", script);
    let first = w.wait_lines(3, T);
    let fd = first[0].split(' ').nth(1).unwrap().to_string();
    let e = dump_must_fail(&w);
    assert!(
        e.contains("not a namespace its task is in") && e.contains(&format!("fd {fd}")),
        "{e}"
    );
    let n = w.lines().len();
    assert!(w.wait_lines(n + 5, T).len() >= n + 5, "tree runs on");
    kill_tree(&tree_and_session(w.pid));
}

/// A task that a debugger of the tree already traces is refused naming the tracer, and both
/// run on.
#[test]
fn task_traced_by_a_debugger_is_refused_by_name() {
    let _g = serial_root!();
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
/// A mount namespace stasis cannot make again (here a copy of the host's, with the host's
/// cgroup hierarchies nobody declared) is refused naming the mount, instead of coming back
/// silently in the restorer's; the tree runs on.
#[test]
fn other_namespaces_are_refused_by_name_and_tree_runs_on() {
    let _g = serial_root!();
    let script = r#"
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x00020000) == 0, ctypes.get_errno()  # CLONE_NEWNS
n = 0
while True:
    print(n, flush=True); n += 1; time.sleep(0.02)
"#;
    let w = Workload::python("mntns", script);
    w.wait_lines(2, T);
    // A copy of the host's mount table: its cgroup hierarchies (and devtmpfs, the host's
    // other disks...) are the host's, which only a caller can declare (runc does).
    let e = dump_must_fail(&w);
    assert!(
        e.contains("mount")
            && (e.contains("not supported yet") || e.contains("declare it external")),
        "{e}"
    );
    assert_runs_on(&w);
    kill_tree(&[w.pid]);
}

#[test]
fn exited_main_thread_is_refused_and_threads_run_on() {
    let _g = serial_root!();
    let w = Workload::start("leaderexit", &workload("leaderexit"), &[]);
    w.wait_lines(3, T);
    let e = dump_must_fail(&w);
    assert!(e.contains("main thread"), "{e}");
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    counter_is_continuous(&after);
}

/// A parent in vfork cannot stop until its child execs or exits: the dump fails once
/// --timeout has passed, naming the thread, instead of waiting forever, and both run on.
#[test]
fn parent_in_vfork_fails_the_dump_after_the_timeout() {
    let _g = serial_root!();
    let w = Workload::start("vforker", &workload("vforker"), &[]);
    w.wait_lines(2, T);
    let t0 = std::time::Instant::now();
    let out = dump_workload(&w, &["--timeout", "1"]);
    let took = t0.elapsed();
    assert!(!out.status.success(), "refused");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("did not stop within 1 s"), "{e}");
    assert!(
        took < std::time::Duration::from_secs(8),
        "bounded: {took:?}"
    );
    assert_eq!(tracer_of(w.pid), 0, "the parent is let go");
    assert!(alive(w.pid), "the parent runs on");
}

/// A unix connection waiting in its listener's queue with data sent on it is refused by name
/// (the data sits in the end nobody accepted yet, which nothing can read; CRIU refuses it
/// too); the tree runs on.
#[test]
fn queued_unix_connection_with_data_is_refused_and_tree_runs_on() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
l = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); l.bind("l"); l.listen(4)
c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); c.connect("l"); c.send(b"unread")
n = 0
while True:
    print(n, flush=True); n += 1; time.sleep(0.02)
"#;
    let w = Workload::python("queued-with-data", script);
    w.wait_lines(2, T);
    let e = dump_must_fail(&w);
    assert!(e.contains("queue with data sent on it"), "{e}");
    assert_runs_on(&w);
    kill_tree(&[w.pid]);
}

/// A pidfd of a process outside the tree is refused by name (that process may not exist at
/// restore, as CRIU refuses it); the tree runs on.
#[test]
fn pidfd_of_a_process_outside_the_tree_is_refused_and_tree_runs_on() {
    let _g = serial_root!();
    let script = r#"
import os, time
fd = os.pidfd_open(os.getppid())
n = 0
while True:
    print(n, flush=True); n += 1; time.sleep(0.02)
"#;
    let w = Workload::python("pidfd-outside", script);
    w.wait_lines(2, T);
    let e = dump_must_fail(&w);
    assert!(e.contains("outside the tree"), "{e}");
    assert_runs_on(&w);
    kill_tree(&[w.pid]);
}
