//! Faults at every step (docs/fault-injection.md): each write of a dump failing in turn with
//! ENOSPC and with EIO must leave the tree running, untraced, unchanged, with no inventory.img;
//! each step of a restore failing in turn must leave no task of the tree (not even a zombie)
//! and the images dir byte for byte as it was. The fault points come from the engine's test
//! seam (`STASIS_FAULT`): a run with `count` lists them, then each is made to fail.

use std::collections::BTreeMap;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use stasis_tests::*;

/// Each point fails once with each: a full disk, and a failing disk.
const ERRNOS: [(&str, &str); 2] = [
    ("ENOSPC", "No space left on device"),
    ("EIO", "Input/output error"),
];

/// The only points whose failure does not fail the run: written once the work is done.
const TOLERATED: [&str; 2] = ["write stats-dump", "write stats-restore"];

/// `stasis` with `STASIS_FAULT=plan`.
fn stasis_faulty(plan: &str, args: &[&str]) -> Output {
    Command::new(stasis_bin())
        .env("STASIS_FAULT", plan)
        .args(args)
        .output()
        .expect("run stasis")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The points a `STASIS_FAULT=count` run reached, by name, in order.
fn points(what: &str, o: &Output) -> Vec<String> {
    check_ok(what, o);
    let e = stderr(o);
    let names: Vec<String> = e
        .lines()
        .filter_map(|l| l.strip_prefix("stasis: fault point "))
        .filter_map(|l| l.split_once(": ").map(|(_, name)| name.to_string()))
        .collect();
    let k = e
        .lines()
        .find_map(|l| l.strip_prefix("fault points reached: "))
        .and_then(|k| k.parse::<usize>().ok());
    assert_eq!(
        k,
        Some(names.len()),
        "{what}: count and names disagree:\n{e}"
    );
    names
}

/// The point that failed in a run (its name, from the engine's line saying so).
fn failed_point(o: &Output, n: usize) -> Option<String> {
    let prefix = format!("stasis: fault point {n} (");
    stderr(o).lines().find_map(|l| {
        let rest = l.strip_prefix(&prefix)?;
        rest.split_once(") fails with ")
            .map(|(name, _)| name.to_string())
    })
}

/// Every file of the images dir, by name, with a hash of its content.
fn snapshot(dir: &Path) -> BTreeMap<String, u64> {
    std::fs::read_dir(dir)
        .expect("images dir")
        .flatten()
        .map(|e| {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            std::fs::read(e.path()).unwrap_or_default().hash(&mut h);
            (e.file_name().to_string_lossy().into_owned(), h.finish())
        })
        .collect()
}

/// (threads' total, token) of a line of the workload, which must say its memory is intact.
fn numbers(l: &str, what: &str) -> (u64, u64) {
    assert!(
        l.ends_with(" ok"),
        "{what}: memory changed, or a bad line: {l:?}"
    );
    let n = nums(l);
    (
        n.get(1).copied().unwrap_or(0),
        n.get(2).copied().unwrap_or(0),
    )
}

/// Every task of the tree runs on: no thread traced or stopped, and the tree goes on
/// counting (threads), passing its token (the child, over the pipes) and checking its memory.
fn assert_runs_on(w: &Workload, pids: &[u32], what: &str) {
    for &p in pids {
        assert!(alive(p), "{what}: task {p} died");
        assert_threads_free(p, what);
    }
    // Lines past the file's end now are new (a restored tree writes over what an earlier
    // restore of the same images wrote, from the dumped offset on).
    // The last line read may be partly written: compare two before it.
    let n = w.lines().len();
    let after = w.wait_lines(n + 4, T);
    assert!(after.len() >= n + 4, "{what}: the tree stopped printing");
    let (total, token) = numbers(&after[after.len() - 4], what);
    let (total2, token2) = numbers(&after[after.len() - 2], what);
    assert!(total2 > total, "{what}: the threads stopped counting");
    assert!(token2 > token, "{what}: the token stopped going round");
}

/// Kills `pids` if they live, and waits until none exists, reaping those that are ours.
fn kill_and_wait_gone(pids: &[u32]) {
    kill_tree(pids);
    let end = Instant::now() + Duration::from_secs(10);
    while pids
        .iter()
        .any(|p| Path::new(&format!("/proc/{p}")).exists())
    {
        assert!(Instant::now() < end, "tasks {pids:?} do not go away");
        kill_tree(pids);
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// After a dump that failed at a point it tolerates (its stats): the images are complete
/// and the tree is gone; it restores, and goes on.
fn restore_after_complete_dump(w: &Workload, pids: &[u32], img: &str, what: &str) {
    assert!(
        Path::new(img).join("inventory.img").exists(),
        "{what}: no inventory.img"
    );
    kill_and_wait_gone(pids);
    check_ok(what, &stasis(&["restore", "-D", img, "-d"]));
    assert_runs_on(w, pids, what);
}

/// The dump's points for `w` as it is now, from a `count` dump that leaves it running.
fn dump_points(w: &Workload, pids: &[u32], img: &str) -> Vec<String> {
    let pid = w.pid.to_string();
    let count = stasis_faulty("count", &["dump", "-t", &pid, "-D", img, "-R"]);
    let names = points("counting dump", &count);
    assert!(names.len() > 20, "too few dump points: {names:?}");
    assert_runs_on(w, pids, "counting dump");
    names
}

/// A dump of `w` with point `n` failing with `errno`, checked: it fails with the errno's text,
/// leaves no inventory.img and the tree running as it was; or, failing a point it tolerates
/// (or reaching fewer points), it completes, and the tree is restored. Returns the point that
/// failed.
fn dump_trial(
    w: &Workload,
    pids: &[u32],
    img: &str,
    n: usize,
    errno: &str,
    what: &str,
) -> Option<String> {
    let pid = w.pid.to_string();
    let o = stasis_faulty(&format!("{n}:{errno}"), &["dump", "-t", &pid, "-D", img]);
    let e = stderr(&o);
    assert!(!e.contains("panicked"), "{what}: {e}");
    let failed = failed_point(&o, n);
    if o.status.success() {
        let tolerated = failed.as_deref().is_none_or(|f| TOLERATED.contains(&f));
        assert!(tolerated, "{what}: succeeded: {e}");
        restore_after_complete_dump(w, pids, img, what);
        return failed;
    }
    let text = ERRNOS.iter().find(|(name, _)| *name == errno).map(|e| e.1);
    assert!(
        e.lines()
            .any(|l| l.starts_with("Error: dump of pid") && text.is_some_and(|t| l.contains(t))),
        "{what}: the error does not say {text:?}: {e}"
    );
    assert!(
        !Path::new(img).join("inventory.img").exists(),
        "{what}: a failed dump left inventory.img"
    );
    assert_runs_on(w, pids, what);
    failed
}

/// Each point of a dump of `w` failing with each errno. Returns the number of points. Runs of
/// dirty pages are written one chunk each, so the count moves a little as the tree runs: when
/// the point that failed is not the one counted, the points are counted again and the trial
/// made again, so that every point fails once by name.
fn dump_faults(w: &Workload, pids: &[u32], img: &str) -> usize {
    let mut names = dump_points(w, pids, img);
    let mut n = 1;
    while n <= names.len() {
        for (errno, _) in ERRNOS {
            for attempt in 1.. {
                let what = format!("dump point {n} ({}) {errno}", names[n - 1]);
                let failed = dump_trial(w, pids, img, n, errno, &what);
                if failed.as_ref() == Some(&names[n - 1]) {
                    break;
                }
                assert!(
                    attempt < 5,
                    "{what}: the points keep moving (failed {failed:?})"
                );
                eprintln!("{what}: {failed:?} failed, not the point counted: counting again");
                names = dump_points(w, pids, img);
                if n > names.len() {
                    return names.len();
                }
            }
        }
        n += 1;
    }
    names.len()
}

/// Each point of a restore from `img` failing with each errno: no task of the tree may be left
/// (the pids free at once), nor any change in the images dir. Returns the number of points.
fn restore_faults(w: &Workload, pids: &[u32], img: &str) -> usize {
    let restore = ["restore", "-D", img, "-d", "--pidfile", "restored.pid"];
    // A successful restore writes its stats and the pidfile (relative) in the images dir.
    let forget = |img: &str| {
        for f in ["stats-restore", "restored.pid"] {
            let _ = std::fs::remove_file(Path::new(img).join(f));
        }
    };
    forget(img);
    let before = snapshot(Path::new(img));
    let count = stasis_faulty("count", &restore);
    let names = points("counting restore", &count);
    assert!(names.len() > 10, "too few restore points: {names:?}");
    assert_runs_on(w, pids, "counting restore");
    kill_and_wait_gone(pids);
    forget(img);
    assert_eq!(before, snapshot(Path::new(img)), "the counting restore");
    for n in 1..=names.len() {
        for (errno, text) in ERRNOS {
            let what = format!("restore point {n} ({}) {errno}", names[n - 1]);
            let o = stasis_faulty(&format!("{n}:{errno}"), &restore);
            let e = stderr(&o);
            assert!(!e.contains("panicked"), "{what}: {e}");
            let failed = failed_point(&o, n).unwrap_or_else(|| panic!("{what}: not reached: {e}"));
            if o.status.success() {
                assert!(TOLERATED.contains(&failed.as_str()), "{what}: succeeded");
                assert_runs_on(w, pids, &what);
                kill_and_wait_gone(pids);
                forget(img);
            } else {
                assert!(
                    e.lines()
                        .any(|l| l.starts_with("Error: restore from") && l.contains(text)),
                    "{what}: the error does not say {text:?}: {e}"
                );
                let left: Vec<u32> = pids
                    .iter()
                    .copied()
                    .filter(|p| Path::new(&format!("/proc/{p}")).exists())
                    .collect();
                assert!(left.is_empty(), "{what}: tasks {left:?} left behind");
            }
            assert_eq!(
                before,
                snapshot(Path::new(img)),
                "{what}: the images dir changed"
            );
        }
    }
    names.len()
}

#[test]
fn every_write_of_a_dump_and_every_step_of_a_restore_fail_cleanly() {
    let _g = serial_root!();
    let w = Workload::start("faults", &workload("faults"), &[]);
    w.wait_lines(5, T);
    let pids = tree_and_session(w.pid);
    assert_eq!(pids.len(), 2, "the workload is a parent and a child");
    let img = w.images();
    let img_s = img.to_str().expect("utf8");
    let t0 = Instant::now();
    let dump_points = dump_faults(&w, &pids, img_s);
    let dump_time = t0.elapsed();

    // A good image set, then every step of its restore failing in turn.
    check_ok(
        "dump",
        &stasis(&["dump", "-t", &w.pid.to_string(), "-D", img_s]),
    );
    kill_and_wait_gone(&pids);
    let t0 = Instant::now();
    let restore_points = restore_faults(&w, &pids, img_s);
    let restore_time = t0.elapsed();

    // The images still restore, and the tree goes on where it was.
    check_ok(
        "final restore",
        &stasis(&["restore", "-D", img_s, "-d", "--pidfile", "restored.pid"]),
    );
    let root = std::fs::read_to_string(img.join("restored.pid")).expect("pidfile");
    assert_eq!(root.trim(), w.pid.to_string(), "the pidfile names the root");
    assert_eq!(tree_and_session(w.pid), pids, "every task is back");
    assert_runs_on(&w, &pids, "final restore");
    kill_and_wait_gone(&pids);
    println!(
        "faults: dump {dump_points} points x {} errnos ({dump_time:.1?}), restore \
         {restore_points} points x {} errnos ({restore_time:.1?}): all held",
        ERRNOS.len(),
        ERRNOS.len()
    );
}

/// The host's IPC objects of `key` and the POSIX queue `name`, removed when dropped (and on
/// demand): what a test makes must not outlive it.
struct HostIpc {
    key: libc::key_t,
    name: std::ffi::CString,
}

impl HostIpc {
    /// Which of them exist: message queue, semaphore set, segment, POSIX queue.
    fn present(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        // SAFETY: lookups without IPC_CREAT or O_CREAT; a POSIX queue found is closed at once.
        unsafe {
            if libc::msgget(self.key, 0) >= 0 {
                out.push("message queue");
            }
            if libc::semget(self.key, 0, 0) >= 0 {
                out.push("semaphore set");
            }
            if libc::shmget(self.key, 0, 0) >= 0 {
                out.push("shared memory segment");
            }
            let q = libc::mq_open(self.name.as_ptr(), libc::O_RDONLY);
            if q >= 0 {
                libc::mq_close(q);
                out.push("POSIX message queue");
            }
        }
        out
    }

    fn remove(&self) {
        // SAFETY: lookups by key, then IPC_RMID of what they found; mq_unlink of our name.
        unsafe {
            let q = libc::msgget(self.key, 0);
            if q >= 0 {
                libc::msgctl(q, libc::IPC_RMID, std::ptr::null_mut());
            }
            let s = libc::semget(self.key, 0, 0);
            if s >= 0 {
                libc::semctl(s, 0, libc::IPC_RMID);
            }
            let m = libc::shmget(self.key, 0, 0);
            if m >= 0 {
                libc::shmctl(m, libc::IPC_RMID, std::ptr::null_mut());
            }
            libc::mq_unlink(self.name.as_ptr());
        }
    }
}

impl Drop for HostIpc {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The IPC objects a restore has to make (they are gone, as on another host) are removed
/// again by a restore that fails at any step after making them.
#[test]
fn ipc_objects_a_failed_restore_made_are_removed() {
    let _g = serial_root!();
    let key = 0x7f7f_0000 + (std::process::id() & 0xffff) as libc::key_t;
    let name = format!("/stasis-faults-{}", std::process::id());
    let ipc = HostIpc {
        key,
        name: std::ffi::CString::new(name.clone()).expect("no NUL"),
    };
    ipc.remove();
    let script = format!(
        r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
class Attr(ctypes.Structure): _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long), ("cur", ctypes.c_long), ("pad", ctypes.c_long * 4)]
class Msg(ctypes.Structure): _fields_ = [("mtype", ctypes.c_long), ("text", ctypes.c_char * 64)]
class Sembuf(ctypes.Structure): _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]
mq = libc.mq_open(b"{name}", os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600, ctypes.byref(Attr(0, 4, 64, 0)))
assert mq >= 0, ctypes.get_errno()
assert libc.mq_send(mq, b"posix", 5, 1) == 0
q = libc.msgget({key}, 0o1000 | 0o600)
m = Msg(3, b"sysv"); assert libc.msgsnd(q, ctypes.byref(m), 4, 0) == 0
sem = libc.semget({key}, 2, 0o1000 | 0o600)
assert libc.semop(sem, (Sembuf * 1)(Sembuf(1, 4, 0)), 1) == 0
base = libc.shmat(libc.shmget({key}, 4096, 0o1000 | 0o600), None, 0)
ctypes.memmove(base, b"shared", 6)
print("ready", flush=True)
n = 0
while not os.path.exists("go"):
    n += 1; print(n, flush=True); time.sleep(0.02)
buf = ctypes.create_string_buffer(64); prio = ctypes.c_uint()
k = libc.mq_receive(mq, buf, 64, ctypes.byref(prio))
m = Msg(); j = libc.msgrcv(q, ctypes.byref(m), 64, 0, 0o4000)
print("got", buf.raw[:k].decode(), m.text[:j].decode(), libc.semctl(sem, 1, 12), ctypes.string_at(base, 6).decode(), flush=True)
while True: time.sleep(1)
"#
    );
    let w = Workload::python("faults-ipc", &script);
    w.wait_lines(2, T);
    let pids = tree_and_session(w.pid);
    let img = w.images();
    let img_s = img.to_str().expect("utf8");
    check_ok(
        "dump",
        &stasis(&["dump", "-t", &w.pid.to_string(), "-D", img_s]),
    );
    kill_and_wait_gone(&pids);
    assert_eq!(ipc.present().len(), 4, "the objects outlive the tree");
    ipc.remove();
    let restore = ["restore", "-D", img_s, "-d"];
    let names = points("counting restore", &stasis_faulty("count", &restore));
    assert_eq!(ipc.present().len(), 4, "the restore made them all again");
    kill_and_wait_gone(&pids);
    ipc.remove();
    for n in 1..=names.len() {
        let what = format!("restore point {n} ({})", names[n - 1]);
        let o = stasis_faulty(&format!("{n}:EIO"), &restore);
        if o.status.success() {
            kill_and_wait_gone(&pids);
            ipc.remove();
            continue;
        }
        assert!(
            pids.iter()
                .all(|p| !Path::new(&format!("/proc/{p}")).exists()),
            "{what}: a task was left behind"
        );
        assert_eq!(ipc.present(), Vec::<&str>::new(), "{what}: left behind");
    }
    check_ok("final restore", &stasis(&restore));
    std::fs::write(w.dir.join("go"), b"").expect("go");
    let end = Instant::now() + T;
    let got = loop {
        let got = w.lines().into_iter().find(|l| l.starts_with("got "));
        if got.is_some() || Instant::now() > end {
            break got;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    kill_and_wait_gone(&pids);
    assert_eq!(got.as_deref(), Some("got posix sysv 4 shared"));
    println!(
        "faults: restore {} points with IPC objects to make: none left behind",
        names.len()
    );
}
