//! Many dumps with `-R` of a server with live clients: nothing drifts (memory, fds, maps,
//! timers, dump time) and the clients never see an error or a lost update.
//!
//! `STASIS_SOAK_DUMPS` sets the number of dumps (default 1000).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use stasis_tests::*;

/// What must not drift in a task across dumps.
#[derive(Debug, PartialEq, Eq, Clone)]
struct Shape {
    fds: usize,
    maps: usize,
    timers: usize,
    threads: usize,
}

fn shape(pid: u32) -> Shape {
    let count = |p: String| std::fs::read_dir(p).map(|d| d.count()).unwrap_or(0);
    let lines = |p: String| {
        std::fs::read_to_string(p)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    Shape {
        fds: count(format!("/proc/{pid}/fd")),
        maps: lines(format!("/proc/{pid}/maps")),
        timers: lines(format!("/proc/{pid}/timers")),
        threads: count(format!("/proc/{pid}/task")),
    }
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A client that INCRs its own key as fast as it can until told to stop: every reply must be
/// the previous one plus one. Returns the count and the slowest reply.
fn hammer(
    port: u16,
    key: String,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(u64, Duration)> {
    std::thread::spawn(move || {
        let mut c = Redis::connect(port).expect("client connects");
        let (mut n, mut slowest) = (0u64, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            let r = c
                .cmd(&["INCR", &key])
                .expect("the client never sees an error");
            slowest = slowest.max(t.elapsed());
            n += 1;
            assert_eq!(r, format!(":{n}"), "no update lost or repeated");
        }
        (n, slowest)
    })
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn many_dumps_of_a_live_server_leave_no_drift() {
    let _g = serial_root!();
    let Some(redis) = redis_server() else {
        skip(test_name!(), "redis-server is not installed");
        return;
    };
    let dumps: usize = std::env::var("STASIS_SOAK_DUMPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let port = free_port();
    let (w, mut c) = start_redis("soak", redis, port, &[]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..2)
        .map(|i| hammer(port, format!("soak:{i}"), stop.clone()))
        .collect();
    // A few round trips first, so both clients are connected and warm.
    std::thread::sleep(Duration::from_millis(200));
    let (shape0, rss0) = (shape(w.pid), rss_kib(w.pid));
    let mut took = Vec::with_capacity(dumps);
    for i in 0..dumps {
        let t = Instant::now();
        let out = dump_workload(&w, &["-R", "--tcp-established"]);
        took.push(t.elapsed());
        check_ok(&format!("dump {i}"), &out);
        assert_eq!(tracer_of(w.pid), 0, "dump {i} left the server traced");
    }
    std::thread::sleep(Duration::from_millis(200));
    // Measured while the clients are still connected, as before the dumps.
    let (shape1, rss1) = (shape(w.pid), rss_kib(w.pid));
    stop.store(true, Ordering::Relaxed);
    let served: Vec<(u64, Duration)> = clients
        .into_iter()
        .map(|h| h.join().expect("a client failed"))
        .collect();
    let total: u64 = served.iter().map(|s| s.0).sum();
    assert!(served.iter().all(|s| s.0 > 0), "every client was served");
    assert_eq!(shape0, shape1, "fds, maps, timers and threads do not drift");
    assert!(
        rss1 <= rss0 + 4096,
        "memory does not drift: {rss0} KiB before, {rss1} KiB after {dumps} dumps"
    );
    let tenth = (dumps / 10).max(1);
    let (first, last) = (median(&mut took[..tenth].to_vec()), {
        let n = took.len();
        median(&mut took[n - tenth..].to_vec())
    });
    assert!(
        last <= first * 3 + Duration::from_millis(20),
        "dump time does not drift: first tenth {first:?}, last tenth {last:?}"
    );
    println!(
        "{dumps} dumps: median {first:?} first tenth, {last:?} last tenth; {total} INCRs, \
         slowest reply {:?}; RSS {rss0} -> {rss1} KiB",
        served.iter().map(|s| s.1).max().unwrap_or_default()
    );
    // The server holds exactly what each client counted.
    for (i, (n, _)) in served.iter().enumerate() {
        assert_eq!(
            c.cmd(&["GET", &format!("soak:{i}")]).unwrap(),
            n.to_string()
        );
    }
}
