//! Failure rules: bad input gets a clear one-line error and a non-zero exit; a failed dump
//! leaves the tree running, untraced; a failed restore leaves no task and no changed image.

use std::collections::BTreeMap;
use std::path::Path;

use stasis_tests::*;

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn one_line_error(o: &std::process::Output, must_contain: &str) {
    assert!(!o.status.success(), "expected failure");
    let e = stderr(o);
    let lines: Vec<&str> = e.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one-line error expected, got:\n{e}");
    assert!(lines[0].starts_with("Error: "), "{e}");
    assert!(
        lines[0].contains(must_contain),
        "error should mention {must_contain:?}: {e}"
    );
    assert!(!e.contains("panicked"), "{e}");
}

fn snapshot(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    std::fs::read_dir(dir)
        .expect("images dir")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap_or_default(),
            )
        })
        .collect()
}

#[test]
fn unknown_pid_is_a_clear_error() {
    let _g = serial_root!();
    let d = temp_dir("nopid");
    let o = stasis(&["dump", "-t", "4194000", "-D", d.to_str().unwrap()]);
    one_line_error(&o, "4194000 does not exist");
}

#[test]
fn unknown_flag_or_missing_pid_is_rejected_in_one_line() {
    one_line_error(&stasis(&["dump", "--no-such-flag"]), "--no-such-flag");
    one_line_error(&stasis(&["dump", "-D", "/tmp"]), "--tree");
    one_line_error(&stasis(&["dump", "-t", "notapid", "-D", "/tmp"]), "notapid");
    one_line_error(&stasis(&["restore", "--inherit-fd", "bogus"]), "fd[N]:KEY");
}

#[test]
fn unwritable_images_dir_leaves_tree_running() {
    let _g = serial_root!();
    let w = Workload::start("ro", &workload("counter"), &[]);
    w.wait_lines(3, T);
    let o = stasis(&["dump", "-t", &w.pid.to_string(), "-D", "/proc/1"]);
    one_line_error(&o, "images dir");
    assert_runs_on(&w);
    kill_tree(&[w.pid]);
}

#[test]
fn disk_full_in_the_middle_of_a_dump_leaves_tree_running() {
    let _g = serial_root!();
    let w = Workload::start("full", &workload("memhog"), &["32"]);
    w.wait_lines(2, T);
    let small = w.dir.join("small");
    std::fs::create_dir_all(&small).unwrap();
    let m = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small)
        .output()
        .expect("mount");
    if !m.status.success() {
        let why = format!("cannot mount tmpfs: {}", String::from_utf8_lossy(&m.stderr));
        skip(test_name!(), &why);
        kill_tree(&[w.pid]);
        return;
    }
    let o = stasis(&[
        "dump",
        "-t",
        &w.pid.to_string(),
        "-D",
        small.to_str().unwrap(),
    ]);
    let _ = std::process::Command::new("umount").arg(&small).status();
    one_line_error(&o, "No space left on device");
    assert_runs_on(&w);
    assert!(
        w.lines().iter().all(|l| !l.contains("BAD")),
        "memory intact"
    );
    kill_tree(&[w.pid]);
}

#[test]
fn leave_running_then_restore_refuses_taken_pid() {
    let _g = serial_root!();
    let w = Workload::start("leave", &workload("counter"), &[]);
    w.wait_lines(3, T);
    let img = w.images();
    let o = dump_workload(&w, &["-R"]);
    check_ok("dump -R", &o);
    assert_runs_on(&w);
    let before = snapshot(&img);
    let o = stasis(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    one_line_error(&o, &format!("pid {} is already in use", w.pid));
    assert_eq!(before, snapshot(&img), "images unchanged");
    assert_runs_on(&w);
    kill_tree(&[w.pid]);
}

#[test]
fn corrupt_truncated_or_missing_images_fail_cleanly() {
    let _g = serial_root!();
    let w = Workload::start("corrupt", &workload("counter"), &[]);
    w.wait_lines(3, T);
    let img = w.images();
    check_ok("dump", &dump_workload(&w, &[]));
    reap(w.pid);
    let pid = w.pid;
    type Damage = fn(&Path, u32);
    let cases: Vec<(&str, Damage, String)> = vec![
        (
            "missing pstree",
            |d, _| std::fs::remove_file(d.join("pstree.img")).unwrap(),
            "pstree.img".into(),
        ),
        (
            "truncated core",
            |d, p| {
                let f = d.join(format!("core-{p}.img"));
                let b = std::fs::read(&f).unwrap();
                std::fs::write(&f, &b[..b.len() / 2]).unwrap();
            },
            format!("core-{pid}.img"),
        ),
        (
            "garbage mm",
            |d, p| {
                let f = d.join(format!("mm-{p}.img"));
                let mut b = std::fs::read(&f).unwrap();
                for x in b.iter_mut().skip(12) {
                    *x = 0xff;
                }
                std::fs::write(&f, &b).unwrap();
            },
            format!("mm-{pid}.img"),
        ),
        (
            "bad magic inventory",
            |d, _| std::fs::write(d.join("inventory.img"), b"not an image").unwrap(),
            "inventory.img".into(),
        ),
        (
            "truncated pages",
            |d, _| {
                let f = d.join("pages-1.img");
                let b = std::fs::read(&f).unwrap();
                std::fs::write(&f, &b[..b.len() / 2]).unwrap();
            },
            "pages-1.img".into(),
        ),
    ];
    for (name, damage, mention) in cases {
        let d = w.dir.join(name.replace(' ', "-"));
        std::fs::create_dir_all(&d).unwrap();
        for (f, b) in snapshot(&img) {
            std::fs::write(d.join(f), b).unwrap();
        }
        damage(&d, pid);
        let before = snapshot(&d);
        let o = stasis(&["restore", "-D", d.to_str().unwrap(), "-d"]);
        one_line_error(&o, &mention);
        assert!(!alive(pid), "{name}: a task was left behind");
        assert_eq!(before, snapshot(&d), "{name}: images changed");
    }
    // The intact images still restore.
    let o = stasis(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    check_ok("restore", &o);
    let n = w.lines().len();
    assert!(w.wait_lines(n + 3, T).len() >= n + 3);
    kill_tree(&[pid]);
}

#[test]
fn program_replaced_since_the_dump_is_refused() {
    let _g = serial_root!();
    let dir = temp_dir("replaced");
    let exe = dir.join("counter-copy");
    std::fs::copy(workload("counter"), &exe).unwrap();
    let w = Workload::start("replaced", &exe, &[]);
    w.wait_lines(3, T);
    let img = w.images();
    check_ok("dump", &dump_workload(&w, &[]));
    reap(w.pid);
    // An "upgrade": the file at the same path is now different. (Appending keeps the inode.)
    let mut f = std::fs::OpenOptions::new().append(true).open(&exe).unwrap();
    std::io::Write::write_all(&mut f, b"upgraded").unwrap();
    drop(f);
    let o = stasis(&["restore", "-D", img.to_str().unwrap(), "-d"]);
    one_line_error(&o, "changed since the dump");
    assert!(!alive(w.pid), "no task left behind");
}

#[test]
fn version_and_check_answer_like_criu() {
    let o = stasis(&["--version"]);
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.starts_with("Version: 4.2\n"), "{out}");
    assert!(out.contains("stasis"), "{out}");
    if skip_unless_root("version_and_check_answer_like_criu (check)") {
        return;
    }
    let o = stasis(&["check"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "Looks good.\n");
}

/// io_uring, bpf maps, perf events and stateful character devices are refused by pid, fd and
/// kind; the task runs on, neither stopped nor traced.
#[test]
fn io_uring_bpf_map_and_perf_event_are_refused_by_name() {
    let _g = serial_root!();
    // (kind as the error names it, the syscall that makes one, as Python ctypes code)
    let kinds = [
        ("io_uring", "libc.syscall(425, 4, ctypes.byref(ctypes.create_string_buffer(120)))"),
        (
            "bpf-map",
            // BPF_MAP_CREATE of an array: map_type 2, key 4 bytes, value 4 bytes, 1 entry.
            "libc.syscall(321, 0, ctypes.byref(ctypes.create_string_buffer(struct.pack('IIII', 2, 4, 4, 1), 128)), 128)",
        ),
        (
            // A device whose state a reopen would lose (the messages already read).
            "character device /dev/kmsg (major 1, minor 11)",
            "os.open('/dev/kmsg', os.O_RDONLY)",
        ),
        (
            "perf_event",
            // PERF_TYPE_SOFTWARE, attr size 128, PERF_COUNT_SW_CPU_CLOCK, this task, any cpu.
            "libc.syscall(298, ctypes.byref(ctypes.create_string_buffer(struct.pack('II', 1, 128), 128)), 0, -1, -1, 0)",
        ),
    ];
    for (kind, make) in kinds {
        let script = format!(
            r#"
import ctypes, os, struct, time
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = {make}
print("fd", fd, ctypes.get_errno(), flush=True)
n = 0
while True:
    print(n, flush=True); n += 1; time.sleep(0.02)
"#
        );
        let w = Workload::python(&format!("refuse-{kind}"), &script);
        let first = w.wait_lines(1, T);
        let fd: i64 = first[0].split_whitespace().nth(1).unwrap().parse().unwrap();
        if fd < 0 {
            skip(
                test_name!(),
                &format!("this kernel would not make a {kind} fd ({})", first[0]),
            );
            kill_tree(&[w.pid]);
            continue;
        }
        let e = dump_must_fail(&w);
        assert!(
            e.contains(&format!("pid {} fd {fd}: {kind}", w.pid)),
            "{kind}: {e}"
        );
        assert_runs_on(&w);
        kill_tree(&[w.pid]);
    }
}

/// Every image file of a dump, truncated to half or filled with garbage after its magic: the
/// restore either fails with one clear line and leaves no task, or works; it never panics.
#[test]
fn every_image_damaged_in_turn_never_panics() {
    let _g = serial_root!();
    // Sockets, pipes, a pty and a timer: many kinds of images.
    let script = r#"
import os, pty, signal, socket, time
a, b = socket.socketpair(); a.send(b"queued")
r, w = os.pipe(); os.write(w, b"piped")
m, s = pty.openpty(); os.write(m, b"typed")
signal.setitimer(signal.ITIMER_REAL, 100, 100)
signal.signal(signal.SIGALRM, lambda *x: None)
n = 0
while True:
    print(n, flush=True); n += 1; time.sleep(0.05)
"#;
    let w = Workload::python("damage", script);
    w.wait_lines(2, T);
    check_ok("dump", &dump_workload(&w, &[]));
    reap(w.pid);
    let img = w.images();
    let mut names: Vec<String> = std::fs::read_dir(&img)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".img"))
        .collect();
    names.sort();
    assert!(names.len() >= 15, "{names:?}");
    let copy = w.dir.join("damaged");
    for name in &names {
        for garbage in [false, true] {
            let _ = std::fs::remove_dir_all(&copy);
            std::fs::create_dir_all(&copy).unwrap();
            for n in &names {
                std::fs::copy(img.join(n), copy.join(n)).unwrap();
            }
            let f = copy.join(name);
            let mut bytes = std::fs::read(&f).unwrap();
            if garbage {
                for x in bytes.iter_mut().skip(8) {
                    *x = 0xff;
                }
            } else {
                bytes.truncate(bytes.len() / 2);
            }
            std::fs::write(&f, &bytes).unwrap();
            let o = stasis(&["restore", "-D", copy.to_str().unwrap(), "-d"]);
            let e = stderr(&o);
            let what = format!("{name} ({})", if garbage { "garbage" } else { "truncated" });
            assert!(!e.contains("panicked"), "{what}: {e}");
            if o.status.success() {
                kill_tree(&[w.pid]);
            } else {
                assert_eq!(e.trim().lines().count(), 1, "{what}: one line: {e}");
                reap(w.pid);
                assert!(!alive(w.pid), "{what}: a failed restore leaves no task");
            }
        }
    }
}
