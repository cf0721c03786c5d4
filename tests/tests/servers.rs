//! End-to-end: real servers with clients outside the tree: redis, memcached, tmux, PostgreSQL
//! and nginx serve the same clients after a restore.

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use stasis_tests::*;

#[test]
fn redis_with_100k_keys_keeps_its_client_connection() {
    let _g = serial_root!();
    let Some(redis) = redis_server() else {
        skip(test_name!(), "redis-server is not installed");
        return;
    };
    let port = free_port();
    let (w, mut loader) = start_redis("redis", redis, port, &[]).unwrap();
    for i in 0..100_000 {
        loader
            .send(&["SET", &format!("key:{i}"), &format!("value-{i}")])
            .unwrap();
    }
    for _ in 0..100_000 {
        assert_eq!(loader.reply().unwrap(), "+OK");
    }
    drop(loader);
    // The client under test: one connection, used before and after.
    let mut c = Redis::connect(port).unwrap();
    assert_eq!(c.cmd(&["DBSIZE"]).unwrap(), ":100000");
    assert_eq!(c.cmd(&["GET", "key:4242"]).unwrap(), "value-4242");
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    assert_eq!(
        c.cmd(&["GET", "key:99999"]).unwrap(),
        "value-99999",
        "same connection, same data"
    );
    assert_eq!(c.cmd(&["DBSIZE"]).unwrap(), ":100000");
    assert_eq!(c.cmd(&["SET", "after", "restore"]).unwrap(), "+OK");
    assert_eq!(c.cmd(&["GET", "after"]).unwrap(), "restore");
    // And new clients are served too.
    let mut d = Redis::connect(port).expect("listener restored");
    assert_eq!(d.cmd(&["GET", "after"]).unwrap(), "restore");
    kill_tree(&pids);
}

fn http_get(port: u16) -> Option<String> {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    c.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n").ok()?;
    let mut s = String::new();
    c.read_to_string(&mut s).ok()?;
    Some(s)
}

fn children(pid: u32) -> Vec<u32> {
    let mut v: Vec<u32> = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .unwrap_or_default()
        .split_whitespace()
        .filter_map(|x| x.parse().ok())
        .collect();
    v.sort_unstable();
    v
}

/// memcached with four worker threads (each with its own epoll, eventfd and notification
/// pipe) running as nobody, its client outside the tree: the same connection reads the value
/// stored before the checkpoint, and new clients are served.
#[test]
fn memcached_with_worker_threads_keeps_its_client() {
    let name = test_name!();
    let _g = serial_root!();
    let bin = std::path::Path::new("/usr/bin/memcached");
    if !bin.exists() {
        skip(
            name,
            "memcached (Debian package memcached) is not installed",
        );
        return;
    }
    let port = free_port();
    let w = Workload::start(
        "memcached",
        bin,
        &[
            "-u",
            "nobody",
            "-l",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-t",
            "4",
        ],
    );
    let end = Instant::now() + T;
    let connect = || std::net::TcpStream::connect(("127.0.0.1", port));
    let mut c = loop {
        match connect() {
            Ok(c) => break c,
            Err(e) if Instant::now() > end => panic!("memcached does not answer: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    c.set_read_timeout(Some(T)).unwrap();
    let cmd = |c: &mut std::net::TcpStream, req: &str, until: &str| -> String {
        use std::io::Write;
        c.write_all(req.as_bytes()).unwrap();
        let mut got = Vec::new();
        while !String::from_utf8_lossy(&got).ends_with(until) {
            let mut b = [0u8; 512];
            match c.read(&mut b) {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&b[..n]),
            }
        }
        String::from_utf8_lossy(&got).into_owned()
    };
    assert_eq!(
        cmd(&mut c, "set k 0 0 5\r\nhello\r\n", "\r\n"),
        "STORED\r\n"
    );
    assert_eq!(cmd(&mut c, "set n 0 0 1\r\n5\r\n", "\r\n"), "STORED\r\n");
    let threads = std::fs::read_dir(format!("/proc/{}/task", w.pid))
        .unwrap()
        .count();
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    let get = cmd(&mut c, "get k\r\n", "END\r\n");
    let incr = cmd(&mut c, "incr n 1\r\n", "\r\n");
    let mut c2 = connect().expect("new clients are served");
    c2.set_read_timeout(Some(T)).unwrap();
    let get2 = cmd(&mut c2, "get k\r\n", "END\r\n");
    let threads_after = std::fs::read_dir(format!("/proc/{}/task", w.pid))
        .unwrap()
        .count();
    kill_tree(&pids);
    assert!(threads >= 5, "memcached runs worker threads: {threads}");
    assert_eq!(threads_after, threads, "every thread is back");
    assert_eq!(get, "VALUE k 0 5\r\nhello\r\nEND\r\n");
    assert_eq!(incr, "6\r\n");
    assert_eq!(get2, "VALUE k 0 5\r\nhello\r\nEND\r\n");
}

/// tmux: its server (ptys it holds the masters of, a bash session leader on each slave, a unix
/// listener its clients connect to from outside) is dumped and restored; the same bash then
/// takes keys sent by a new client and still has its shell variable.
#[test]
fn tmux_session_keeps_its_shell_and_answers_new_clients() {
    let name = test_name!();
    let _g = serial_root!();
    if !std::path::Path::new("/usr/bin/tmux").exists() {
        skip(name, "tmux (Debian package tmux) is not installed");
        return;
    }
    let dir = temp_dir("tmux");
    let sock = dir.join("tmux.sock");
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .arg("-S")
            .arg(&sock)
            .args(args)
            .env("TERM", "xterm")
            .output()
            .unwrap()
    };
    let pane_has = |text: &str| {
        let end = Instant::now() + T;
        loop {
            let o = tmux(&["capture-pane", "-p", "-t", "s1"]);
            let screen = String::from_utf8_lossy(&o.stdout).into_owned();
            if screen.contains(text) || Instant::now() > end {
                return screen;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    check_ok(
        "tmux new-session",
        &tmux(&["new-session", "-d", "-s", "s1", "bash --norc --noprofile"]),
    );
    check_ok(
        "send-keys",
        &tmux(&["send-keys", "-t", "s1", "X=41; echo before$X", "Enter"]),
    );
    assert!(pane_has("before41").contains("before41"));
    let pid: u32 = String::from_utf8_lossy(&tmux(&["display", "-p", "#{pid}"]).stdout)
        .trim()
        .parse()
        .unwrap();
    let w = Workload {
        pid,
        out: dir.join("none"),
        dir: dir.clone(),
    };
    let pids = dump_kill_restore(&w);
    assert!(pids.len() >= 2, "the server and its shell: {pids:?}");
    check_ok(
        "send-keys after restore",
        &tmux(&["send-keys", "-t", "s1", "echo after$((X+1))", "Enter"]),
    );
    let screen = pane_has("after42");
    let _ = tmux(&["kill-server"]);
    kill_tree(&pids);
    assert!(screen.contains("after42"), "{screen}");
}

/// The newest installed PostgreSQL server binary (Debian's postgresql-NN), if any.
fn postgres_bin() -> Option<std::path::PathBuf> {
    let mut found: Vec<std::path::PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .flatten()
        .map(|e| e.path().join("bin/postgres"))
        .filter(|p| p.exists())
        .collect();
    found.sort();
    found.pop()
}

/// PostgreSQL (postmaster, its background processes and a backend, all as `postgres`; SysV
/// and shared anonymous memory, signalfd, epoll, pipes, a TCP and a unix listener) with a
/// client outside the tree in the middle of a transaction: after dump and restore with
/// --tcp-established, the same session commits it, and new clients are served.
#[test]
fn postgres_keeps_its_client_in_the_middle_of_a_transaction() {
    let name = test_name!();
    let _g = serial_root!();
    let Some(bin) = postgres_bin() else {
        skip(
            name,
            "PostgreSQL (Debian package postgresql) is not installed",
        );
        return;
    };
    let pw = std::ffi::CString::new("postgres").unwrap();
    // SAFETY: getpwnam returns a pointer to static storage or null; read at once.
    let (uid, gid) = unsafe {
        let p = libc::getpwnam(pw.as_ptr());
        if p.is_null() {
            skip(name, "there is no postgres user");
            return;
        }
        ((*p).pw_uid, (*p).pw_gid)
    };
    let dir = temp_dir("postgres-data");
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).unwrap();
    std::os::unix::fs::chown(&data, Some(uid), Some(gid)).unwrap();
    use std::os::unix::process::CommandExt;
    let o = Command::new(bin.with_file_name("initdb"))
        .args([
            "-D",
            data.to_str().unwrap(),
            "-A",
            "trust",
            "-U",
            "postgres",
        ])
        .uid(uid)
        .gid(gid)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "initdb: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    let port = free_port();
    let w = Workload::start_as(
        "postgres",
        &bin,
        &[
            "-D",
            data.to_str().unwrap(),
            "-p",
            &port.to_string(),
            "-k",
            dir.to_str().unwrap(),
            "-c",
            "listen_addresses=127.0.0.1",
        ],
        Some((uid, gid)),
    );
    let end = Instant::now() + T;
    let mut client = loop {
        match Postgres::connect(port, "postgres") {
            Ok(c) => break c,
            Err(e) if Instant::now() > end => {
                panic!("postgres does not answer: {e} {:?}", w.lines())
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    client
        .query("create table t (x int); insert into t select generate_series(1, 1000)")
        .unwrap();
    client
        .query("begin; insert into t select generate_series(1001, 1500)")
        .unwrap();
    // Inside the transaction its rows are seen; from another session they are not.
    assert_eq!(client.query("select count(*) from t").unwrap(), ["1500"]);
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    assert!(
        pids.len() >= 6,
        "postmaster, background processes and a backend: {pids:?}"
    );
    let mut other = Postgres::connect(port, "postgres").expect("new clients are served");
    assert_eq!(other.query("select count(*) from t").unwrap(), ["1000"]);
    let inside = client.query("select count(*) from t");
    let commit = client.query("insert into t values (1501); commit");
    let after = other.query("select count(*) from t");
    drop((client, other));
    // A fast shutdown (SIGINT), so that postgres removes its System V segment itself.
    // SAFETY: kill(2) of the restored postmaster.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGINT) };
    let end = Instant::now() + T;
    while alive(w.pid) && Instant::now() < end {
        reap(w.pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    kill_tree(&pids);
    assert_eq!(
        inside.unwrap(),
        ["1500"],
        "the session keeps its transaction"
    );
    commit.unwrap();
    assert_eq!(
        after.unwrap(),
        ["1501"],
        "the transaction commits after restore"
    );
}

#[test]
fn nginx_master_and_workers_as_nobody_serve_before_and_after() {
    let _g = serial_root!();
    if !std::path::Path::new("/usr/sbin/nginx").exists() {
        skip(test_name!(), "nginx is not installed");
        return;
    }
    let dir = temp_dir("nginx-conf");
    std::fs::create_dir_all(dir.join("logs")).unwrap();
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let port = free_port();
    let d = dir.display();
    let conf = format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\nuser nobody nogroup;\npid {d}/nginx.pid;\n\
error_log {d}/logs/error.log;\nevents {{ worker_connections 64; }}\nhttp {{\n  access_log off;\n\
  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n\
  uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n\
  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello from nginx\\n\"; }} }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let conf_path = dir.join("nginx.conf");
    let w = Workload::start(
        "nginx",
        std::path::Path::new("/usr/sbin/nginx"),
        &[
            "-c",
            conf_path.to_str().unwrap(),
            "-p",
            dir.to_str().unwrap(),
        ],
    );
    let end = Instant::now() + T;
    while http_get(port).is_none() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        http_get(port)
            .unwrap_or_default()
            .contains("hello from nginx"),
        "nginx serves: {:?}",
        w.lines()
    );
    let workers = children(w.pid);
    assert_eq!(workers.len(), 2);
    let uid = |p: u32| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| {
                l.strip_prefix("Uid:")
                    .map(|v| v.split_whitespace().next().unwrap_or("").to_string())
            })
            .unwrap_or_default()
    };
    assert!(
        workers.iter().all(|p| uid(*p) == "65534"),
        "workers run as nobody"
    );
    // Fingerprints of master and workers (credentials included) are compared by the helper.
    let pids = dump_kill_restore(&w);
    assert_eq!(children(w.pid), workers, "the same workers are back");
    for _ in 0..5 {
        assert!(
            http_get(port)
                .unwrap_or_default()
                .contains("hello from nginx"),
            "served after restore"
        );
    }
    // The master still drives its workers over their socketpairs: reload, then quit.
    // SAFETY: kill(2) to the restored master.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGHUP) };
    let end = Instant::now() + T;
    while children(w.pid).iter().any(|p| workers.contains(p)) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !children(w.pid).iter().any(|p| workers.contains(p)),
        "old workers left on reload"
    );
    assert!(
        http_get(port)
            .unwrap_or_default()
            .contains("hello from nginx"),
        "new workers serve"
    );
    // SAFETY: kill(2): graceful quit, passed to the workers over the channels.
    unsafe { libc::kill(w.pid as libc::pid_t, libc::SIGQUIT) };
    let end = Instant::now() + T;
    while alive(w.pid) && Instant::now() < end {
        reap(w.pid);
        std::thread::sleep(Duration::from_millis(20));
    }
    let quit = !alive(w.pid);
    kill_tree(&pids);
    assert!(quit, "nginx quits gracefully");
}
