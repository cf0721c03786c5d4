//! End-to-end: what a task is besides its memory and files: credentials and limits, signals
//! (pending, handled, ignored, stopped), seccomp filters, scheduling, process groups and
//! sessions, and a restore that waits for the task to exit.

use std::path::Path;
use std::time::{Duration, Instant};

use stasis_tests::*;

#[test]
fn unprivileged_task_keeps_its_credentials_and_limits() {
    let _g = serial_root!();
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
fn stopped_task_stays_stopped_until_sigcont() {
    let _g = serial_root!();
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

/// Seccomp filters (as every container and many services have): a process with a thread
/// shares a filter (TSYNC), and its child stacks one more. After restore the same syscalls
/// are refused with the same errors in every task, and the filter counts are the same.
#[test]
fn seccomp_filters_still_apply_after_restore() {
    let _g = serial_root!();
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

/// Threads that shared one seccomp filter tree share one again: a filter added afterwards with
/// TSYNC, which the kernel refuses (returning a thread id) when a thread's filters diverge,
/// succeeds after the restore (zdtm seccomp_filter_tsync).
#[test]
fn threads_sharing_seccomp_filters_can_tsync_after_restore() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, struct, threading, time
libc = ctypes.CDLL(None, use_errno=True)
def install(nr, flags):
    ins = [(0x20, 0, 0, 0), (0x15, 0, 1, nr), (0x06, 0, 0, 0x00050001), (0x06, 0, 0, 0x7fff0000)]
    raw = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in ins))
    fprog = ctypes.create_string_buffer(struct.pack("HxxxxxxQ", len(ins), ctypes.addressof(raw)))
    return libc.syscall(317, 1, flags, fprog)
libc.prctl(38, 1, 0, 0, 0)      # no_new_privs
assert install(999, 0) == 0      # before the thread: both threads in one tree
threading.Thread(target=lambda: time.sleep(1e6), daemon=True).start()
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("tsync", install(998, 1), flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("seccomp-tsync", script, 2);
    assert_eq!(lines[1], "tsync 0");
}

#[test]
fn restore_without_detach_exits_as_the_task_does() {
    let _g = serial_root!();
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
fn pending_signals_are_still_pending_after_restore() {
    let _g = serial_root!();
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
fn process_groups_and_sessions_inside_the_tree() {
    let _g = serial_root!();
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

/// A process group whose leader died before the dump (its member reparented to the root, a
/// subreaper) is made again: the member is still in it, the group answers killpg, and no task
/// is left with the dead leader's pid (the restore leads it with a helper it then reaps).
#[test]
fn process_group_whose_leader_died_is_made_again() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
r, w = os.pipe()
a = os.fork()
if a == 0:
    os.setpgid(0, 0)
    b = os.fork()
    if b == 0:
        while True: time.sleep(1)
    os.write(w, str(b).encode()); os._exit(0)
os.waitpid(a, 0)
b = int(os.read(r, 20))
print("ready", os.getpgid(b) == a, os.path.exists(f"/proc/{a}"), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
os.killpg(a, 0)
print("after", os.getpgid(b) == a, os.path.exists(f"/proc/{a}"), flush=True)
while True: time.sleep(1)
"#;
    let (_w, lines) = python_across_restore("leaderless-group", script, 2);
    assert_eq!(lines, ["ready True False", "after True False"]);
}

/// SIGTRAP dispositions survive our single steps, which force a SIGTRAP after every injected
/// syscall (the kernel resets a forced signal that is blocked or ignored to SIG_DFL): a
/// handler (bash and python install one), an ignored SIGTRAP, and a blocked SIGTRAP that is
/// pending all come back, after a dump that leaves the tree running and after a restore.
#[test]
fn sigtrap_handler_and_ignored_sigtrap_survive() {
    let _g = serial_root!();
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
    let _g = serial_root!();
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

#[test]
fn python_signal_handler_runs_after_restore() {
    let _g = serial_root!();
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

/// What a change of credentials resets must be set after the restore has changed them: the
/// parent-death signal and the dumpable flag of a task running as nobody; and the scheduler's
/// SCHED_RESET_ON_FORK flag, which /proc does not show (zdtm: pdeath_sig, dumpable01,
/// sched_policy00).
#[test]
fn pdeath_signal_dumpable_and_reset_on_fork_survive_a_change_of_credentials() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG, PR_GET_PDEATHSIG, PR_SET_DUMPABLE, PR_GET_DUMPABLE = 1, 2, 4, 3
# A child, whose parent stays in the tree (the root's parent-death signal is not restored:
# its parent becomes the restorer, which exits).
if os.fork():
    while True:
        time.sleep(1)
assert libc.prctl(PR_SET_PDEATHSIG, 10) == 0
assert libc.prctl(PR_SET_DUMPABLE, 1) == 0
os.sched_setscheduler(0, os.SCHED_BATCH | os.SCHED_RESET_ON_FORK, os.sched_param(0))
while True:
    sig = ctypes.c_int()
    libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(sig))
    print("state", sig.value, libc.prctl(PR_GET_DUMPABLE), os.sched_getscheduler(0), flush=True)
    time.sleep(0.05)
"#;
    let w = Workload::start_as(
        "credreset",
        Path::new("/usr/bin/python3"),
        &["-c", script],
        Some((65534, 65534)),
    );
    let before = w.wait_lines(2, T);
    let want = format!(
        "state 10 1 {}",
        libc::SCHED_BATCH | libc::SCHED_RESET_ON_FORK
    );
    assert_eq!(before[0], want, "set up as planned");
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 2, T);
    kill_tree(&pids);
    assert_eq!(
        after.get(n).map(String::as_str),
        Some(want.as_str()),
        "after the restore"
    );
}

/// A process registered for private expedited membarriers (MEMBARRIER_CMD_REGISTER_*, kept in
/// the task core's `membarrier_registration_mask`) may still issue them after the restore; an
/// unregistered one gets EPERM (zdtm's membarrier).
#[test]
fn membarrier_registration_survives() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
SYS_membarrier = 324
PRIVATE_EXPEDITED, REGISTER_PRIVATE_EXPEDITED = 1 << 3, 1 << 4
assert libc.syscall(SYS_membarrier, REGISTER_PRIVATE_EXPEDITED, 0, 0) == 0
while True:
    r = libc.syscall(SYS_membarrier, PRIVATE_EXPEDITED, 0, 0)
    print("barrier", r, ctypes.get_errno() if r else 0, flush=True)
    time.sleep(0.05)
"#;
    let (before, after) = python_line_before_and_after("membarrier", script);
    assert_eq!(before, "barrier 0 0", "registered before");
    assert_eq!(after, before, "and after the restore");
}

/// A child in seccomp strict mode comes back in it (set last, after every injected syscall)
/// and still answers over its pipe.
#[test]
fn seccomp_strict_child_stays_strict_and_answers() {
    let _g = serial_root!();
    let w = Workload::start("strict", &workload("strict"), &[]);
    let first = w.wait_lines(3, T);
    let child: u32 = first
        .iter()
        .find_map(|l| l.strip_prefix("child "))
        .expect("child line")
        .parse()
        .unwrap();
    let pids = dump_kill_restore(&w);
    assert!(pids.contains(&child), "child restored: {pids:?}");
    let status = std::fs::read_to_string(format!("/proc/{child}/status")).unwrap();
    let mode = status
        .lines()
        .find_map(|l| l.strip_prefix("Seccomp:"))
        .map(str::trim)
        .map(str::to_string);
    // SAFETY: kill(2) of the restored parent, whose SIGUSR1 handler writes to the child's pipe.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGUSR1) };
    let end = std::time::Instant::now() + T;
    while !w.lines().iter().any(|l| l == "strict 1") && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let answered = w.lines().iter().any(|l| l == "strict 1");
    kill_tree(&pids);
    assert_eq!(mode.as_deref(), Some("1"), "strict mode kept");
    assert!(
        answered,
        "the strict child reads and writes after the restore"
    );
}
