//! End-to-end: a tree connected to the outside: its stdout is a pipe or a unix socket held by
//! another process, replaced at restore through --inherit-fd.

use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::Instant;

use stasis_tests::*;

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
    let _g = serial_root!();
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
    let _g = serial_root!();
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
