//! Sessions and process groups come back as they were, including the ones a plain "fork the
//! children, leaders call setsid" cannot make: a child forked before its parent's setsid, a
//! double-forked daemon whose session leader is gone, an orphan whose session leader lives on
//! (engine/src/restore/sessions.rs).

use std::path::Path;
use std::time::{Duration, Instant};

use stasis_tests::*;

const T: Duration = Duration::from_secs(20);

/// The last "<name> pid ppid pgid sid n" line of `name`.
fn last(lines: &[String], name: &str) -> Option<Vec<u64>> {
    lines
        .iter()
        .rev()
        .find(|l| l.split_whitespace().next() == Some(name))
        .map(|l| nums(l))
        .filter(|v| v.len() == 5)
}

/// Waits until every one of `names` has printed a line; returns them all.
fn wait_for(w: &Workload, names: &[&str]) -> Vec<String> {
    let end = Instant::now() + T;
    loop {
        let lines = w.lines();
        if names.iter().all(|n| last(&lines, n).is_some()) {
            return lines;
        }
        assert!(
            Instant::now() < end,
            "not every task printed: {:?}",
            lines.iter().rev().take(10).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Each task's (pid, ppid, pgid, sid) after the restore is the one before, and its counter
/// went on.
fn same_ids(before: &[String], after: &[String], names: &[&str]) {
    for name in names {
        let b = last(before, name).expect("before");
        let a = last(after, name).unwrap_or_else(|| panic!("{name} runs on: {after:?}"));
        assert_eq!(
            a[..4],
            b[..4],
            "{name}: (pid, ppid, pgid, sid) after the restore (before: {b:?})"
        );
        assert!(a[4] > b[4], "{name} counts on: {b:?} then {a:?}");
    }
}

#[test]
fn a_child_forked_before_its_parents_setsid_stays_in_the_older_session() {
    let _g = serial_root!();
    let w = Workload::start("sessions", &workload("sessions"), &[]);
    let names = ["root", "early", "leader", "born"];
    let before = wait_for(&w, &names);
    let (root, leader, born) = (
        last(&before, "root").expect("root"),
        last(&before, "leader").expect("leader"),
        last(&before, "born").expect("born"),
    );
    assert_eq!(leader[3], leader[0], "leader leads its session");
    assert_eq!(
        (born[1], born[3]),
        (leader[0], root[0]),
        "born is leader's child in the root's session"
    );
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let end = Instant::now() + T;
    let after = loop {
        let l = w.lines();
        let fresh = &l[n.min(l.len())..];
        if names.iter().all(|x| last(fresh, x).is_some()) || Instant::now() > end {
            break fresh.to_vec();
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    kill_tree(&pids);
    same_ids(&before, &after, &names);
}

#[test]
fn sessions_of_a_pid_namespace_come_back_with_their_daemons_and_orphans() {
    let _g = serial_root!();
    if !Path::new("/usr/bin/unshare").exists() {
        skip(test_name!(), "no /usr/bin/unshare (util-linux)");
        return;
    }
    let w = Workload::start(
        "sessions-ns",
        Path::new("/usr/bin/unshare"),
        &[
            "--pid",
            "--fork",
            workload("sessions").to_str().expect("utf8"),
            "ns",
        ],
    );
    let names = [
        "root", "early", "leader", "born", "daemon", "keeper", "orphan",
    ];
    // Killed if the test fails before the dump: unshare's death leaves it running.
    let init = init_of(w.pid);
    let guard = KillOnDrop(init);
    let before = wait_for(&w, &names);
    let id = |name: &str| last(&before, name).expect("printed");
    let (root, keeper, daemon, orphan, early) = (
        id("root"),
        id("keeper"),
        id("daemon"),
        id("orphan"),
        id("early"),
    );
    assert_eq!(root[0], 1, "the root is the namespace's init");
    assert_eq!(early[3], 0, "early's session is led outside the namespace");
    assert_eq!(daemon[1], 1, "the daemon was reparented to the init");
    assert!(
        names.iter().all(|n| id(n)[0] != daemon[3]),
        "the daemon's session leader is gone"
    );
    assert_eq!(
        (orphan[1], orphan[3]),
        (1, keeper[0]),
        "the orphan went to the init and stays in keeper's session"
    );
    let img = w.images();
    let img_s = img.to_str().expect("utf8");
    let out = stasis(&[
        "dump",
        "-t",
        &init.to_string(),
        "-D",
        img_s,
        "-o",
        "dump.log",
        "-v4",
    ]);
    check_ok("dump", &out);
    // Dumped, it is gone, and its pid may be anyone's next.
    std::mem::forget(guard);
    reap(w.pid);
    let n = w.lines().len();
    let pidfile = img.join("restored.pid");
    let out = stasis(&[
        "restore",
        "-D",
        img_s,
        "-d",
        "-o",
        "restore.log",
        "-v4",
        "--pidfile",
        pidfile.to_str().expect("utf8"),
    ]);
    check_ok("restore", &out);
    let restored: u32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    let _restored = KillOnDrop(restored);
    let end = Instant::now() + T;
    let after = loop {
        let l = w.lines();
        let fresh = l[n.min(l.len())..].to_vec();
        if names.iter().all(|x| last(&fresh, x).is_some()) || Instant::now() > end {
            break fresh;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    same_ids(&before, &after, &names);
}

/// Kills a pid namespace's init (and so all of it) when dropped, test failed or not.
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        kill_tree(&[self.0]);
    }
}
