//! End-to-end: real programs are started, dumped (which kills them), restored with the same
//! PIDs, and must carry on from where they were.

use std::time::Duration;

use stasis_tests::*;

#[test]
fn counter_continues_with_same_pid() {
    let _g = serial_root!();
    let w = Workload::start("counter", &workload("counter"), &[]);
    w.wait_lines(5, T);
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 10, T);
    kill_tree(&pids);
    // Every line is the previous one plus one: nothing lost, nothing repeated.
    let v: Vec<u64> = after
        .iter()
        .map(|l| l.trim().parse().expect("number"))
        .collect();
    assert!(
        v.len() >= n + 10,
        "counter did not continue: {} lines",
        v.len()
    );
    for (i, x) in v.iter().enumerate() {
        assert_eq!(*x, i as u64, "line {i}");
    }
}

#[test]
fn memory_checksum_holds() {
    let _g = serial_root!();
    let w = Workload::start("memhog", &workload("memhog"), &["64"]);
    w.wait_lines(3, T);
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 3, T);
    kill_tree(&pids);
    let want = after[0]
        .split_whitespace()
        .nth(1)
        .expect("checksum")
        .to_string();
    assert!(after.len() >= n + 3, "memhog did not continue");
    for l in &after[1..] {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f[1], want, "checksum changed: {l}");
        assert_eq!(f[2], "ok", "{l}");
    }
}

#[test]
fn threads_keep_running_with_their_tids() {
    let _g = serial_root!();
    let w = Workload::start("threads", &workload("threads"), &[]);
    w.wait_lines(5, T);
    let tids = |pid: u32| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let before = tids(w.pid);
    assert_eq!(before.len(), 5);
    let pids = dump_kill_restore(&w);
    assert_eq!(tids(w.pid), before, "same thread ids");
    let n = w.lines().len();
    let last_before = nums(&w.lines()[n - 1]);
    let after = w.wait_lines(n + 10, T);
    kill_tree(&pids);
    assert!(
        after.iter().all(|l| !l.contains("BAD")),
        "an xmm register was lost"
    );
    let last = nums(after.last().expect("lines"));
    assert!(
        last[0] > last_before[0] + 20,
        "threads did not run: {last:?} vs {last_before:?}"
    );
    for i in 1..5 {
        assert!(
            last[i] > last_before[i],
            "thread {i} did not run after restore"
        );
    }
}

#[test]
fn pipe_ring_tree_keeps_passing_tokens() {
    let _g = serial_root!();
    let w = Workload::start("pipetree", &workload("pipetree"), &[]);
    w.wait_lines(5, T);
    let pids = dump_kill_restore(&w);
    assert_eq!(pids.len(), 5, "root, three ring members and a grandchild");
    let n = w.lines().len();
    let after = w.wait_lines(n + 10, T);
    kill_tree(&pids);
    let v: Vec<u64> = after
        .iter()
        .map(|l| l.trim().parse().expect("number"))
        .collect();
    assert!(v.len() >= n + 10, "ring stopped");
    // Each round adds 1 at the root and 1 per ring member: +4 per line.
    for w2 in v.windows(2) {
        assert_eq!(w2[1], w2[0] + 4, "token sequence broken: {w2:?}");
    }
}

#[test]
fn shared_memory_between_parent_and_child() {
    let _g = serial_root!();
    let w = Workload::start("shmem", &workload("shmem"), &[]);
    w.wait_lines(5, T);
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let before = nums(&w.lines()[n - 1]);
    let after = w.wait_lines(n + 10, T);
    kill_tree(&pids);
    let last = nums(after.last().expect("lines"));
    assert_eq!(
        after.len(),
        last[0] as usize + 1,
        "parent counter continuous"
    );
    assert!(
        last[1] > before[1],
        "child's increments are seen by the parent after restore"
    );
}

#[test]
fn signal_handlers_and_timers_fire_after_restore() {
    let _g = serial_root!();
    let w = Workload::start("signals", &workload("signals"), &[]);
    w.wait_lines(5, T);
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let before = nums(&w.lines()[n - 1]);
    // SAFETY: kill(2) to the restored task: its SIGUSR1 handler must run.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGUSR1) };
    let after = w.wait_lines(n + 10, T);
    std::thread::sleep(Duration::from_millis(100));
    let last = nums(w.lines().last().expect("lines"));
    kill_tree(&pids);
    assert!(after.len() >= n + 10, "itimer stopped firing");
    assert!(last[0] > before[0], "SIGALRM handler counts on");
    assert!(last[1] > before[1], "POSIX timer keeps firing");
    assert_eq!(last[2], before[2] + 1, "SIGUSR1 handler ran once");
}

#[test]
fn python_interpreter_keeps_its_state() {
    let _g = serial_root!();
    let script = r#"
import time, hashlib
state = {'n': 0, 'log': []}
while True:
    state['n'] += 1
    state['log'].append(state['n'])
    h = hashlib.sha256(repr(state['log']).encode()).hexdigest()[:12]
    print(state['n'], len(state['log']), h, flush=True)
    time.sleep(0.02)
"#;
    let w = Workload::python("python", script);
    w.wait_lines(10, T);
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 10, T);
    kill_tree(&pids);
    for (i, l) in after.iter().enumerate() {
        let f: Vec<&str> = l.split_whitespace().collect();
        assert_eq!(f[0], (i + 1).to_string(), "python counter continuous: {l}");
        assert_eq!(f[1], (i + 1).to_string(), "python list kept: {l}");
    }
    assert!(after.len() >= n + 10);
}

#[test]
fn images_decode_with_crit() {
    let _g = serial_root!();
    if !have_crit() {
        skip(test_name!(), "crit (Debian package criu) is not installed");
        return;
    }
    let w = Workload::start("crit", &workload("pipetree"), &[]);
    w.wait_lines(3, T);
    let before = session_pids(w.pid);
    let img = w.images();
    let o = dump_workload(&w, &["-R"]);
    check_ok("dump -R", &o);
    kill_tree(&before);
    let decoded = crit_decode_all(&img);
    assert!(decoded >= 10, "only {decoded} images decoded");
    let o = std::process::Command::new("crit")
        .arg("x")
        .arg(&img)
        .arg("ps")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "crit x ps: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let ps = String::from_utf8_lossy(&o.stdout);
    for p in &before {
        assert!(ps.contains(&p.to_string()), "crit x ps lists {p}:\n{ps}");
    }
}

#[test]
fn zombie_child_stays_a_zombie_with_its_exit_code() {
    let _g = serial_root!();
    let w = Workload::start("zombie", &workload("zombie"), &[]);
    let lines = w.wait_lines(5, T);
    let child: u32 = lines[0]
        .strip_prefix("child ")
        .expect("child line")
        .parse()
        .unwrap();
    let pids = dump_kill_restore(&w);
    assert!(pids.contains(&child), "zombie restored with its pid");
    let state = std::fs::read_to_string(format!("/proc/{child}/stat")).unwrap();
    assert!(
        state
            .rsplit(')')
            .next()
            .unwrap()
            .trim_start()
            .starts_with('Z'),
        "{state}"
    );
    // SAFETY: kill(2): the parent reaps the zombie on SIGUSR1.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGUSR1) };
    let end = std::time::Instant::now() + T;
    while !w.lines().iter().any(|l| l.starts_with("reaped")) && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_tree(&pids);
    let reaped = w
        .lines()
        .into_iter()
        .find(|l| l.starts_with("reaped"))
        .expect("parent reaped it");
    assert_eq!(reaped, format!("reaped {child} status 7"));
}
