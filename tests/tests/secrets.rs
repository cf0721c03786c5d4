//! Images are secrets: every file a dump or restore writes (images, pages, stats, the log, the
//! pidfile) is 0600 whatever the umask, and a restore refuses an images dir others can write.

use std::collections::BTreeMap;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output};

use stasis_tests::*;

/// Runs the stasis binary under `umask`.
fn stasis_umask(umask: u32, args: &[&str]) -> Output {
    let mut cmd = Command::new(stasis_bin());
    cmd.args(args);
    // SAFETY: umask(2) in the child before exec is async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::umask(umask as libc::mode_t);
            Ok(())
        });
    }
    cmd.output().expect("run stasis")
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).expect("stat").mode() & 0o7777
}

fn chmod(p: &Path, m: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).expect("chmod");
}

/// Every entry of `dir` whose mode is not `want`, with its mode.
fn not_mode(dir: &Path, want: u32) -> Vec<(String, u32)> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                mode(&e.path()),
            )
        })
        .filter(|&(_, m)| m != want)
        .collect()
}

/// Name → (mode, content) of every file in `dir`.
fn snapshot(dir: &Path) -> BTreeMap<String, (u32, Vec<u8>)> {
    std::fs::read_dir(dir)
        .expect("dir")
        .flatten()
        .map(|e| {
            let p = e.path();
            let name = e.file_name().to_string_lossy().into_owned();
            (name, (mode(&p), std::fs::read(&p).unwrap_or_default()))
        })
        .collect()
}

fn wait_gone(pid: u32) {
    reap(pid);
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while alive(pid) && std::time::Instant::now() < end {
        std::thread::sleep(std::time::Duration::from_millis(5));
        reap(pid);
    }
    assert!(!alive(pid), "{pid} still alive");
}

/// Dumps (killing it) and restores a counter under `umask`, the work dir apart from the images
/// when `work` is set; checks the modes of everything both wrote.
fn dump_restore_under(umask: u32, work: bool) {
    let w = Workload::start("secret", &workload("counter"), &[]);
    w.wait_lines(3, T);
    let img = w.images();
    chmod(&img, 0o700);
    // An older dump's images, readable by all: the new dump must not leave them so.
    for old in [format!("core-{}.img", w.pid), "pages-1.img".into()] {
        std::fs::write(img.join(&old), b"an older dump").unwrap();
        chmod(&img.join(old), 0o644);
    }
    let work_dir = w.dir.join("work");
    std::fs::create_dir_all(&work_dir).unwrap();
    let (img_s, work_s) = (img.to_str().unwrap(), work_dir.to_str().unwrap());
    let pid = w.pid.to_string();
    let mut args = vec!["dump", "-t", &pid, "-D", img_s, "-o", "dump.log", "-v4"];
    if work {
        args.extend(["-W", work_s]);
    }
    check_ok("dump", &stasis_umask(umask, &args));
    wait_gone(w.pid);
    // A link planted where the relative log goes is replaced, not followed.
    let victim = w.dir.join("victim");
    std::fs::write(&victim, b"keep").unwrap();
    let logs = if work { &work_dir } else { &img };
    std::os::unix::fs::symlink(&victim, logs.join("restore.log")).unwrap();
    let pidfile = w.dir.join("restored.pid");
    let mut args = vec!["restore", "-D", img_s, "-d", "-o", "restore.log", "-v4"];
    args.extend(["--pidfile", pidfile.to_str().unwrap()]);
    if work {
        args.extend(["-W", work_s]);
    }
    check_ok("restore", &stasis_umask(umask, &args));
    let pids = tree_and_session(w.pid);
    assert!(alive(w.pid), "restored");
    kill_tree(&pids);
    assert_eq!(
        std::fs::read(&victim).unwrap(),
        b"keep",
        "link not followed"
    );
    for f in ["dump.log", "stats-dump", "restore.log", "stats-restore"] {
        assert_eq!(mode(&logs.join(f)), 0o600, "{f} (umask {umask:03o})");
    }
    assert_eq!(mode(&pidfile), 0o600, "pidfile (umask {umask:03o})");
    assert_eq!(not_mode(&img, 0o600), vec![], "umask {umask:03o}");
    assert!(img.join("pages-1.img").metadata().unwrap().len() > 4096);
    assert_eq!(mode(&img), 0o700, "the user's images dir is left as it was");
}

#[test]
fn dump_and_restore_write_every_file_0600_under_umask_022() {
    let _g = serial_root!();
    dump_restore_under(0o022, false);
}

#[test]
fn dump_and_restore_write_every_file_0600_under_umask_000() {
    let _g = serial_root!();
    dump_restore_under(0o000, true);
}

#[test]
fn restore_refuses_an_images_dir_others_can_write_then_works_once_fixed() {
    let _g = serial_root!();
    let w = Workload::start("shared", &workload("counter"), &[]);
    w.wait_lines(3, T);
    let img = w.images();
    check_ok("dump", &dump_workload(&w, &[]));
    wait_gone(w.pid);
    let img_s = img.to_str().unwrap();
    let restore = || stasis(&["restore", "-D", img_s, "-d", "-o", "restore.log", "-v4"]);
    for m in [0o777, 0o775, 0o1777] {
        chmod(&img, m);
        let before = snapshot(&img);
        let o = restore();
        let e = String::from_utf8_lossy(&o.stderr).into_owned();
        assert!(!o.status.success(), "restore from a {m:o} dir must fail");
        assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
        let want = format!("images dir {img_s} is writable by others (mode {m:04o})");
        assert!(e.starts_with("Error: ") && e.contains(&want), "{e}");
        assert!(e.contains(&format!("chmod go-w {img_s}")), "{e}");
        assert!(!alive(w.pid), "no task left behind ({m:o})");
        assert_eq!(
            before,
            snapshot(&img),
            "images (and modes) unchanged, no log"
        );
    }
    // Owned by someone else, even private to them.
    chmod(&img, 0o700);
    std::os::unix::fs::chown(&img, Some(65534), None).unwrap();
    let o = restore();
    let e = String::from_utf8_lossy(&o.stderr).into_owned();
    assert!(!o.status.success(), "{e}");
    assert!(e.contains("is owned by uid 65534"), "{e}");
    assert!(!alive(w.pid));
    std::os::unix::fs::chown(&img, Some(0), None).unwrap();
    check_ok("restore from the fixed dir", &restore());
    let pids = tree_and_session(w.pid);
    assert!(alive(w.pid), "restored");
    let n = w.lines().len();
    assert!(w.wait_lines(n + 3, T).len() >= n + 3, "counts on");
    kill_tree(&pids);
}
