//! Two stasis runs on one tree or one image set at once: the second dump of a tree being
//! dumped is refused and names the first dumper; of two restores of one image set, exactly
//! one wins and the other leaves nothing behind.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stasis_tests::*;

#[test]
fn second_dump_of_a_tree_being_dumped_is_refused_naming_the_first() {
    let _g = serial_root!();
    // Big enough that the first dump is still running when the second starts.
    let w = Workload::start("memhog", &workload("memhog"), &["768"]);
    w.wait_lines(2, Duration::from_secs(30));
    let first_dir = temp_dir("first-dump");
    let pid = w.pid.to_string();
    let mut first = Command::new(stasis_bin())
        .args([
            "dump",
            "-R",
            "-t",
            &pid,
            "-D",
            first_dir.to_str().expect("utf8"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("first dump");
    // Wait until the first dumper holds the tree.
    let end = Instant::now() + Duration::from_secs(10);
    while tracer_of(w.pid) == 0 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(1));
    }
    let tracer = tracer_of(w.pid);
    // `stasis dump` traces through a child of its own (see dump/abort.rs).
    let tracer_parent = std::fs::read_to_string(format!("/proc/{tracer}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse::<u32>()
                .ok()
        });
    assert!(
        tracer == first.id() || tracer_parent == Some(first.id()),
        "the first dumper traces the tree (tracer {tracer}, its parent {tracer_parent:?})"
    );
    let second = dump_workload(&w, &["-R"]);
    let err = String::from_utf8_lossy(&second.stderr).into_owned();
    let status = first.wait().expect("first dump");
    assert!(!second.status.success(), "the second dump must fail");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(&format!("already traced by pid {tracer} (stasis")),
        "names the first dumper: {err}"
    );
    assert!(status.success(), "the first dump still succeeds");
    assert!(
        first_dir.join("inventory.img").exists(),
        "the first dump is complete"
    );
    assert_runs_on(&w);
    let last = w.lines().last().cloned().unwrap_or_default();
    assert!(last.ends_with(" ok"), "checksum holds: {last}");
}

#[test]
fn two_restores_of_one_image_set_cannot_both_win() {
    let _g = serial_root!();
    let w = Workload::start("counter", &workload("counter"), &[]);
    w.wait_lines(5, T);
    let img = w.images();
    let img_s = img.to_str().expect("utf8").to_string();
    let out = dump_workload(&w, &[]);
    check_ok("dump", &out);
    reap(w.pid);
    let end = Instant::now() + Duration::from_secs(5);
    while alive(w.pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
        reap(w.pid);
    }
    let before = image_bytes(&img);
    // Both start together; each gets its own pidfile.
    let restores: Vec<_> = (0..2)
        .map(|i| {
            let pidfile = w.dir.join(format!("restored-{i}.pid"));
            Command::new(stasis_bin())
                .args(["restore", "-d", "-D", &img_s, "--pidfile"])
                .arg(&pidfile)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .expect("restore")
        })
        .collect();
    let outs: Vec<_> = restores
        .into_iter()
        .map(|c| c.wait_with_output().expect("restore"))
        .collect();
    let won: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
    let lost: Vec<_> = outs.iter().filter(|o| !o.status.success()).collect();
    assert_eq!(won.len(), 1, "exactly one restore wins: {outs:?}");
    let err = String::from_utf8_lossy(&lost[0].stderr).into_owned();
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(&w.pid.to_string()), "names the pid: {err}");
    let pids = tree_and_session(w.pid);
    assert_eq!(pids, vec![w.pid], "one tree, with the dumped pid");
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    kill_tree(&pids);
    counter_is_continuous(&after);
    assert_eq!(before, image_bytes(&img), "the images are untouched");
}

/// Every `*.img` of `dir`, by name, with its bytes.
fn image_bytes(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .expect("images dir")
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            name.ends_with(".img")
                .then(|| (name, std::fs::read(e.path()).expect("read image")))
        })
        .collect();
    v.sort();
    v
}
