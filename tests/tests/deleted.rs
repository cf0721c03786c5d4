//! End-to-end: files deleted while open: ghost files (sparse ones, device nodes, directories,
//! the executable, O_TMPFILE, FIFOs), files still linked elsewhere (`--link-remap`), inotify
//! watches and O_PATH fds on them, and a dead process's /proc directory.

use std::time::{Duration, Instant};

use stasis_tests::*;

#[test]
fn deleted_file_and_its_mapping_come_back() {
    let _g = serial_root!();
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

/// A file deleted while open, in a directory deleted too: the ghost is made in a directory
/// made for it, and both are gone again once the task holds the file.
#[test]
fn file_deleted_with_its_directory_comes_back() {
    let _g = serial_root!();
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
    let _g = serial_root!();
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

#[test]
fn deleted_executable_comes_back() {
    let _g = serial_root!();
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

/// A sparse file deleted while open keeps its holes (zdtm's ghost_holes tests): only its data
/// is saved, and the restored file has the same holes, size, content, mode and mtime
/// (zdtm's file_attr).
#[test]
fn deleted_sparse_file_keeps_its_holes() {
    let _g = serial_root!();
    let script = r#"
import os, time
fd = os.open("sparse", os.O_RDWR | os.O_CREAT, 0o600)
os.pwrite(fd, b"a" * 4096, 0)
os.pwrite(fd, b"b" * 4096, 256 * 1024)
os.ftruncate(fd, 512 * 1024)
os.utime("sparse", (0, 1234567))
os.fchmod(fd, 0o6604)
os.unlink("sparse")
while True:
    hole = os.lseek(fd, 0, os.SEEK_HOLE)
    data = os.lseek(fd, hole, os.SEEK_DATA)
    st = os.fstat(fd)
    ok = os.pread(fd, 4, 0) == b"aaaa" and os.pread(fd, 4, 256 * 1024) == b"bbbb" and os.pread(fd, 4, 8192) == b"\0" * 4
    print("holes", hole, data, st.st_size, ok, oct(st.st_mode & 0o7777), int(st.st_mtime), flush=True)
    time.sleep(0.05)
"#;
    let (before, after) = python_line_before_and_after("sparse", script);
    let want = "holes 4096 262144 524288 True 0o6604 1234567";
    assert_eq!(before, want, "set up as planned");
    // Its mode (set-ID bits too, which a later chown would clear) and times as well.
    assert_eq!(after, want);
}

/// A device node deleted while open (zdtm's deleted_dev) is made again with mknod for the
/// restore, reopened and unlinked: the task's fd is the same device.
#[test]
fn deleted_device_node_is_made_again() {
    let _g = serial_root!();
    let script = r#"
import os, stat, time
os.mknod("mynull", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
fd = os.open("mynull", os.O_RDWR)
os.unlink("mynull")
while True:
    st = os.fstat(fd)
    print("dev", stat.S_ISCHR(st.st_mode), os.major(st.st_rdev), os.minor(st.st_rdev), os.write(fd, b"x"), os.path.exists("mynull"), flush=True)
    time.sleep(0.05)
"#;
    let (before, after) = python_line_before_and_after("deldev", script);
    assert_eq!(before, "dev True 1 3 1 False");
    assert_eq!(after, "dev True 1 3 1 False");
}

/// The ghost limit counts the data a deleted file holds, not its size (as CRIU counts): a
/// sparse 1 GiB file with a page of data is dumped under the default 1 MiB limit (zdtm's
/// unlink_largefile), while 2 MiB of data are refused by name until `--ghost-limit` allows it.
#[test]
fn ghost_limit_counts_data_not_size() {
    let _g = serial_root!();
    let script = |data: usize| {
        format!(
            r#"
import os, time
fd = os.open("big", os.O_RDWR | os.O_CREAT, 0o600)
os.pwrite(fd, b"x" * {data}, 0)
os.ftruncate(fd, 1 << 30)
os.fsync(fd)
os.unlink("big")
n = 0
while True:
    print("tick", n, os.fstat(fd).st_size, os.pread(fd, 1, 0), flush=True); n += 1
    time.sleep(0.05)
"#
        )
    };
    let after = python_lines_after_restore("ghost-sparse", &script(4096), 2, 2);
    assert!(
        after.iter().any(|l| l.ends_with("1073741824 b'x'")),
        "the sparse ghost came back: {after:?}"
    );

    let w = Workload::python("ghost-data", &script(2 << 20));
    w.wait_lines(2, T);
    let e = dump_must_fail(&w);
    assert!(
        e.contains("holds") && e.contains("over the ghost limit of 1048576 bytes"),
        "{e}"
    );
    assert_runs_on(&w);
    let pids = dump_kill_restore_with(&w, &["--ghost-limit", "4M"], &[]);
    kill_tree(&pids);
}

/// A cwd and a directory fd whose directories were deleted come back deleted (CRIU's ghost
/// directories): the task is still in a removed directory named as before, the fd reads an
/// empty directory, and nothing is left at the old paths.
#[test]
fn deleted_cwd_and_directory_fds_come_back_deleted() {
    let _g = serial_root!();
    let script = r#"
import os, time
top = os.getcwd()
os.mkdir("gone"); os.mkdir("gone/sub")
d = os.open("gone/sub", os.O_RDONLY | os.O_DIRECTORY)
os.chdir("gone"); os.rmdir("sub"); os.rmdir("../gone")
print("ready", flush=True)
while not os.path.exists(top + "/go"):
    time.sleep(0.02)
cwd = os.readlink("/proc/self/cwd")
fdl = os.readlink(f"/proc/self/fd/{d}")
print("after", cwd == top + "/gone (deleted)", fdl == top + "/gone/sub (deleted)",
      os.listdir(d), os.path.exists(top + "/gone"), flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("deleted-dirs", script, 2);
    assert_eq!(lines[1], "after True True [] False");
}

/// A file deleted while open that still has another name: refused without --link-remap (a
/// copy would split it from that name); with it, kept by a link the dump makes beside it, so
/// the restored fd is the same inode, and what the task appends shows under the other name.
#[test]
fn file_deleted_but_linked_elsewhere_keeps_its_inode_with_link_remap() {
    let _g = serial_root!();
    let script = r#"
import os, time
fd = os.open("data", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
os.link("data", "data.link"); os.unlink("data")
i = 0
while True:
    os.write(fd, b"x")
    st = os.fstat(fd)
    print(i, st.st_ino, st.st_nlink, os.readlink(f"/proc/self/fd/{fd}"), flush=True)
    i += 1; time.sleep(0.01)
"#;
    let w = Workload::python("linkremap", script);
    let first = w.wait_lines(3, T);
    let e = dump_must_fail(&w);
    assert!(e.contains("--link-remap") && e.contains("data"), "{e}");
    let pids = dump_kill_restore_with(&w, &["--link-remap"], &[]);
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    let size = std::fs::metadata(w.dir.join("data.link")).unwrap().len();
    kill_tree(&pids);
    counter_is_continuous(&after);
    let field = |l: &str, i: usize| l.split_whitespace().nth(i).unwrap().to_string();
    let last = after.last().unwrap();
    assert_eq!(field(last, 1), field(&first[0], 1), "same inode");
    assert_eq!(field(last, 2), "1", "one name again: the link is gone");
    assert!(last.ends_with("/data (deleted)"), "{last}");
    assert!(
        size >= after.len() as u64,
        "appends reach data.link: {size}"
    );
    let left: Vec<_> = std::fs::read_dir(&w.dir)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("link_remap"))
        .collect();
    assert!(left.is_empty(), "link remaps left: {left:?}");
}

/// The same, with the file's directory removed too (zdtm's unlink_regular00): the link goes
/// into the nearest directory still there, and the restore opens the file through it.
#[test]
fn file_linked_elsewhere_whose_directory_is_gone_comes_back_with_link_remap() {
    let _g = serial_root!();
    let script = r#"
import os, time
os.mkdir("sub")
fd = os.open("sub/data", os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
os.link("sub/data", "data.link"); os.unlink("sub/data"); os.rmdir("sub")
i = 0
while True:
    os.write(fd, b"x")
    print(i, os.fstat(fd).st_ino, flush=True)
    i += 1; time.sleep(0.01)
"#;
    let w = Workload::python("linkremap-dir", script);
    let first = w.wait_lines(3, T);
    let pids = dump_kill_restore_with(&w, &["--link-remap"], &[]);
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    let size = std::fs::metadata(w.dir.join("data.link")).unwrap().len();
    kill_tree(&pids);
    counter_is_continuous(&after);
    let ino = |l: &str| l.split_whitespace().nth(1).unwrap().to_string();
    assert_eq!(ino(after.last().unwrap()), ino(&first[0]), "same inode");
    assert!(
        size >= after.len() as u64,
        "appends reach data.link: {size}"
    );
    assert!(!w.dir.join("sub").exists(), "its directory stays gone");
}

/// An inotify watch on a file deleted while open (held by an fd): the watch comes back on the
/// same inode as the fd, so closing the fd after the restore is seen.
#[test]
fn inotify_watch_on_a_deleted_open_file_sees_its_close() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, signal, struct, time
libc = ctypes.CDLL(None, use_errno=True)
real = os.open("watched", os.O_RDWR | os.O_CREAT, 0o644)
ino = libc.inotify_init1(os.O_NONBLOCK)
assert libc.inotify_add_watch(ino, b"watched", 0x8) == 1  # IN_CLOSE_WRITE
os.unlink("watched")
go = []
signal.signal(signal.SIGUSR1, lambda *a: go.append(1))
i = 0
while True:
    if go and real >= 0:
        os.close(real); real = -1
        time.sleep(0.05)
        wd, mask, _, _ = struct.unpack("iIII", os.read(ino, 4096)[:16])
        print("event", wd, hex(mask), flush=True)
    print(i, flush=True); i += 1; time.sleep(0.01)
"#;
    let w = Workload::python("inotify-deleted", script);
    w.wait_lines(3, T);
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    w.wait_lines(n + 3, T);
    // SAFETY: kill(2) of the restored task, whose SIGUSR1 handler only sets a flag.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGUSR1) };
    let end = Instant::now() + T;
    while !w.lines().iter().any(|l| l.starts_with("event")) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let event = w.lines().into_iter().find(|l| l.starts_with("event"));
    kill_tree(&pids);
    assert_eq!(
        event.as_deref(),
        Some("event 1 0x8"),
        "IN_CLOSE_WRITE on watch 1"
    );
}

/// O_PATH|O_NOFOLLOW fds on symlinks, one of them deleted since: both come back on a symlink
/// with its target (the deleted one made again for the moment, then removed).
#[test]
fn o_path_fds_on_symlinks_come_back_deleted_one_too() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, stat, time
libc = ctypes.CDLL(None)
os.symlink("/etc/hostname", "kept"); os.symlink("some/where", "gone")
a = os.open("kept", os.O_PATH | os.O_NOFOLLOW)
b = os.open("gone", os.O_PATH | os.O_NOFOLLOW)
os.unlink("gone")
def target(fd):
    buf = ctypes.create_string_buffer(256)
    n = libc.readlinkat(fd, b"", buf, 256)
    return buf.value[:n].decode() if n >= 0 else "ERR"
i = 0
while True:
    links = all(stat.S_ISLNK(os.fstat(fd).st_mode) for fd in (a, b))
    print(i, links, target(a), target(b), os.readlink(f"/proc/self/fd/{b}").endswith("/gone (deleted)"), flush=True)
    i += 1; time.sleep(0.01)
"#;
    let w = Workload::python("symlinks", script);
    let first = w.wait_lines(3, T);
    assert!(
        first[0].ends_with("True /etc/hostname some/where True"),
        "{}",
        first[0]
    );
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 3, T);
    kill_tree(&pids);
    counter_is_continuous(&after);
    let last = after.last().unwrap();
    assert!(
        last.ends_with("True /etc/hostname some/where True"),
        "{last}"
    );
    assert!(
        std::fs::symlink_metadata(w.dir.join("gone")).is_err(),
        "the deleted symlink is gone again"
    );
}

/// A cwd and an fd on the /proc directory of a process that has exited since (CRIU's procfs
/// remap): both come back on such a directory, which still reads as deleted.
#[test]
fn a_dead_processes_proc_directory_stays_the_cwd_and_an_fd() {
    let _g = serial_root!();
    let script = r#"
import os, time
c = os.fork()
if c == 0:
    time.sleep(1e6)
os.chdir(f"/proc/{c}")
fd = os.open(f"/proc/{c}", os.O_RDONLY | os.O_DIRECTORY)
os.kill(c, 9); os.waitpid(c, 0)
def state():
    try:
        os.getcwd(); cwd = "getcwd-ok"
    except FileNotFoundError:
        cwd = "ENOENT"
    return f"{os.readlink('/proc/self/cwd')} {os.readlink(f'/proc/self/fd/{fd}')} {cwd}"
i = 0
while True:
    print(i, state(), flush=True); i += 1; time.sleep(0.02)
"#;
    let w = Workload::python("dead-proc-dir", script);
    let first = w.wait_lines(3, T);
    let tail = |l: &str| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
    assert!(first[2].ends_with("ENOENT"), "{first:?}");
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 3, T);
    kill_tree(&pids);
    counter_is_continuous(&after);
    assert_eq!(tail(after.last().unwrap()), tail(&first[2]), "{after:?}");
}
