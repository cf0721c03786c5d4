//! End-to-end: terminals: a shell job on the restorer's terminal, pty pairs with bytes
//! buffered, and a session with its controlling terminal and foreground group.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stasis_tests::*;

#[test]
fn shell_job_gets_the_restorers_terminal() {
    let _g = serial_root!();
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
fn pty_pair_inside_the_tree_echoes_after_restore() {
    let _g = serial_root!();
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
    let _g = serial_root!();
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

#[test]
fn pty_session_keeps_its_controlling_terminal_and_foreground_group() {
    let _g = serial_root!();
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

/// A pty slave chowned by the program keeps its owner (zdtm's pty01): the new pair's slave is
/// given the dumped one's uid and gid.
#[test]
fn pty_slave_keeps_its_owner() {
    let _g = serial_root!();
    let script = r#"
import os, time
m, s = os.openpty()
os.fchown(s, 13333, 44444)
while True:
    st = os.fstat(s)
    print("owner", st.st_uid, st.st_gid, flush=True)
    time.sleep(0.05)
"#;
    let (before, after) = python_line_before_and_after("pty-owner", script);
    assert_eq!(before, "owner 13333 44444", "set up as planned");
    assert_eq!(after, before);
}

/// A task that opened `/dev/tty`, its session's terminal being a pty of the tree (zdtm's
/// pty00): no --shell-job is needed, and after the restore that fd is the new terminal (the
/// task opens it itself once its session has the terminal again).
#[test]
fn dev_tty_of_the_trees_own_terminal_comes_back() {
    let _g = serial_root!();
    let script = r#"
import os, pty, select, time
pid, master = pty.fork()
if pid == 0:
    fd = os.open("/dev/tty", os.O_RDWR)
    n = 0
    while True:
        os.write(fd, b"tty %d\n" % n); n += 1
        time.sleep(0.05)
buf = b""
while True:
    r, _, _ = select.select([master], [], [], 1)
    if r:
        buf += os.read(master, 1024)
        *lines, buf = buf.split(b"\n")
        for l in lines:
            if l.strip():
                print("got", l.strip().decode(), flush=True)
"#;
    let after = python_lines_after_restore("dev-tty", script, 3, 3);
    assert!(
        after.len() >= 3 && after.iter().all(|l| l.starts_with("got tty ")),
        "the child writes on through its /dev/tty: {after:?}"
    );
}

/// A pty's locked termios (TIOCSLCKTRMIOS) comes back, and tty-info.img numbers the pair as
/// CRIU does (index * 2 for the slave, + 1 for the master) and holds termios, locked termios
/// and window size for each end: CRIU's restore pairs the ends by these ids and refuses an
/// end without all three.
#[test]
fn pty_locked_termios_and_criu_s_ids() {
    use stasis::images::{magic, pb, ImageKind, ImageReader};
    let _g = serial_root!();
    let script = r#"
import os, pty, termios, fcntl, struct, time
m, s = pty.openpty()
TIOCGLCKTRMIOS, TIOCSLCKTRMIOS = 0x5456, 0x5457
# Lock ECHO (c_lflag bit 0o10) on the slave: a program may no longer change it.
lk = bytearray(fcntl.ioctl(s, TIOCGLCKTRMIOS, bytes(60)))
struct.pack_into("I", lk, 12, termios.ECHO)
fcntl.ioctl(s, TIOCSLCKTRMIOS, bytes(lk))
print("ready", os.ttyname(s), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
lflag = struct.unpack_from("I", fcntl.ioctl(s, TIOCGLCKTRMIOS, bytes(60)), 12)[0]
print("locked", lflag == termios.ECHO, flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("pty-locked", script);
    let first = w.wait_lines(1, Duration::from_secs(10));
    let index: u32 = first[0]
        .rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .expect("pts index");
    let pids = dump_kill_restore(&w);
    let bytes = std::fs::read(w.images().join("tty-info.img")).expect("tty-info.img");
    let mut r = ImageReader::new("tty-info.img", &bytes, ImageKind::Normal, magic::TTY_INFO)
        .expect("reader");
    let mut ids = Vec::new();
    while let Some(e) = r.next::<pb::TtyInfoEntry>().expect("entry") {
        assert!(
            e.termios.is_some() && e.termios_locked.is_some() && e.winsize.is_some(),
            "tty_info {} lacks termios, locked termios or window size",
            e.id
        );
        ids.push(e.id);
    }
    ids.sort();
    assert_eq!(ids, [index * 2, index * 2 + 1]);
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines[1], "locked True");
}

/// A session leader whose controlling terminal is a pty of the tree that it holds no fd of (it
/// closed the slave after acquiring it): the terminal is its controlling one again, so closing
/// the master after the restore hangs it up (SIGHUP).
#[test]
fn controlling_pty_held_by_no_fd_comes_back() {
    let _g = serial_root!();
    let script = r#"
import os, signal, sys, time
m, s = os.openpty()
name = os.ttyname(s)
c = os.fork()
if c == 0:
    os.close(m); os.close(s)
    signal.signal(signal.SIGHUP, lambda *a: (print("hup", flush=True), os._exit(0)))
    os.setsid()
    fd = os.open(name, os.O_RDWR)  # a leader without a terminal acquires it
    os.close(fd)
    while True: time.sleep(1)
os.close(s)
go = []
signal.signal(signal.SIGUSR1, lambda *a: go.append(1))
print("child", c, flush=True)
i = 0
while True:
    if go and m >= 0:
        os.close(m); m = -1
    print(i, flush=True); i += 1; time.sleep(0.01)
"#;
    let w = Workload::python("ctty-unheld", script);
    let first = w.wait_lines(3, T);
    let child: u32 = first[0]
        .strip_prefix("child ")
        .expect("child line")
        .parse()
        .unwrap();
    let tty_nr = |pid: u32| -> i64 {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        stat.rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .nth(4)
            .unwrap()
            .parse()
            .unwrap()
    };
    let before = tty_nr(child);
    assert_ne!(before, 0, "the child has a controlling terminal");
    let pids = dump_kill_restore(&w);
    let after = tty_nr(child);
    // SAFETY: kill(2) of the restored parent, whose SIGUSR1 handler only sets a flag.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGUSR1) };
    let end = std::time::Instant::now() + T;
    while !w.lines().iter().any(|l| l == "hup") && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let hup = w.lines().iter().any(|l| l == "hup");
    kill_tree(&pids);
    assert_ne!(after, 0, "a controlling terminal again");
    assert!(hup, "closing the master hangs the leader up");
}

/// A pty slave whose master was closed (hung up: a job left behind by a closed terminal)
/// comes back hung up, without --shell-job: it reads end of file, answers EIO to ioctls, and
/// its link reads deleted as before.
#[test]
fn hung_up_pty_slave_comes_back_hung_up() {
    let _g = serial_root!();
    let script = r#"
import os, termios, time
m, s = os.openpty()
os.close(m)
def state():
    r = "eof" if os.read(s, 1) == b"" else "data"
    try:
        termios.tcgetattr(s); r += " termios"
    except termios.error as e:
        r += f" errno{e.args[0]}"
    return r, os.readlink(f"/proc/self/fd/{s}").endswith(" (deleted)")
i = 0
while True:
    r, deleted = state()
    print(i, r, deleted, flush=True); i += 1; time.sleep(0.01)
"#;
    let w = Workload::python("hung-up-pty", script);
    let first = w.wait_lines(3, T);
    assert!(first[0].ends_with("eof errno5 True"), "{}", first[0]);
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 3, T);
    kill_tree(&pids);
    counter_is_continuous(&after);
    let last = after.last().unwrap();
    assert!(last.ends_with("eof errno5 True"), "{last}");
}

/// A virtual terminal that is its session's controlling terminal (a login on a console) comes
/// back as that session's controlling terminal, without --shell-job.
#[test]
fn virtual_terminal_stays_the_sessions_controlling_terminal() {
    let _g = serial_root!();
    let script = r#"
import os, time
os.mknod("vt5", 0o600 | 0o020000, os.makedev(4, 5))
if os.fork() == 0:
    os.setsid()
    try:
        fd = os.open("vt5", os.O_RDWR)  # a session leader without a terminal acquires it
    except OSError as e:
        print("novt", e.errno, flush=True); time.sleep(1e6)
    i = 0
    while True:
        nr = open("/proc/self/stat").read().rsplit(")", 1)[1].split()[4]
        print(i, nr, flush=True); i += 1; time.sleep(0.02)
while True:
    time.sleep(1)
"#;
    let w = Workload::python("vt-ctty", script);
    let first = w.wait_lines(1, T);
    if first[0].starts_with("novt") {
        kill_tree(&tree_and_session(w.pid));
        skip(
            test_name!(),
            &format!("no virtual terminal here ({})", first[0]),
        );
        return;
    }
    let first = w.wait_lines(3, T);
    let nr = |l: &str| l.split_whitespace().nth(1).unwrap().to_string();
    assert_ne!(nr(&first[2]), "0", "{first:?}");
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 3, T);
    kill_tree(&pids);
    let last = after.last().unwrap();
    assert_eq!(
        nr(last),
        nr(&first[2]),
        "the same controlling terminal: {last}"
    );
}
