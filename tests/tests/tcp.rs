//! End-to-end: TCP connections: a byte stream with data in flight both ways through the network
//! lock, a connection with both ends in the tree, `--tcp-close` at dump and at restore, and a
//! socket closed both ways.

use std::io::Read;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use stasis_tests::*;

/// `--tcp-close`: an established connection comes back as a closed socket, shut both ways
/// (end of file on read, EPIPE on write), as CRIU makes it.
#[test]
fn tcp_close_restores_connections_as_closed_sockets() {
    let _g = serial_root!();
    let script = r#"
import os, signal, socket, time
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname()); s, _ = l.accept()
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
try:
    c.send(b"x"); sent = "sent"
except OSError as e:
    sent = type(e).__name__
print("after", c.recv(10), sent, flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("tcp-close", script);
    w.wait_lines(1, T);
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-close"]);
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines[1], "after b'' BrokenPipeError");
    // Dumped with --tcp-close (no --tcp-established): recorded without being read or locked,
    // it can only come back closed, which a restore without the flag says. The killed tree
    // closes it for real, leaving a TIME_WAIT on the listener's port: a server sets
    // SO_REUSEADDR to bind again over it, as this one now does.
    let script = script.replace(
        "l = socket.socket();",
        "l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1);",
    );
    let w = Workload::python("tcp-close-dump", &script);
    w.wait_lines(1, T);
    let img = w.images();
    let pids = dump_kill_then_restore(&w, &["--tcp-close"], &["--tcp-close"], || {
        let o = stasis(&["restore", "-D", img.to_str().unwrap(), "-d"]);
        let e = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success(),
            "a restore without --tcp-close must fail"
        );
        assert!(e.contains("--tcp-close"), "{e}");
    });
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines[1], "after b'' BrokenPipeError");
}

/// The byte at offset `i` of the stream each side sends.
fn pattern(i: u64) -> u8 {
    (i.wrapping_mul(7).wrapping_add(i / 251)) as u8
}

/// Bytes the network lock drops come back on this (the peer's) retransmission timer, which
/// doubles through the downtime; on a loaded machine it can reach minutes. Cap it at 1 s
/// (TCP_RTO_MAX_MS, Linux 6.15+), as a latency-sensitive peer would; older kernels ignore it.
fn cap_retransmission_timeout(conn: &std::net::TcpStream) {
    use std::os::fd::AsRawFd;
    let cap_ms: libc::c_int = 1000;
    // SAFETY: setsockopt reads one int from our local.
    unsafe {
        libc::setsockopt(
            conn.as_raw_fd(),
            libc::IPPROTO_TCP,
            44,
            (&cap_ms as *const libc::c_int).cast(),
            4,
        );
    }
}

/// A thread writing [`pattern`] to `conn` in 1000-byte steps until `stop`, counting in `sent`
/// what it wrote.
fn pattern_writer(
    conn: &std::net::TcpStream,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Result<(), String>> {
    use std::io::Write;
    let mut wr = conn.try_clone().unwrap();
    std::thread::spawn(move || {
        let mut off = 0u64;
        let mut buf = [0u8; 1000];
        while !stop.load(Ordering::Relaxed) {
            for (k, b) in buf.iter_mut().enumerate() {
                *b = pattern(off + k as u64);
            }
            if wr.write_all(&buf).is_err() {
                return Err(format!("write failed at {off}"));
            }
            off += buf.len() as u64;
            sent.store(off, Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    })
}

/// A thread reading `conn` until `stop` (not while `paused`), checking every byte is the
/// [`pattern`] and counting in `got` what it read.
fn pattern_reader(
    conn: &std::net::TcpStream,
    got: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
) -> JoinHandle<Result<(), String>> {
    let mut rd = conn.try_clone().unwrap();
    rd.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    std::thread::spawn(move || {
        let mut off = 0u64;
        let mut buf = [0u8; 8192];
        while !stop.load(Ordering::Relaxed) {
            if paused.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
                continue;
            }
            match rd.read(&mut buf) {
                Ok(0) => return Err(format!("eof at {off}")),
                Ok(n) => {
                    for (k, b) in buf[..n].iter().enumerate() {
                        if *b != pattern(off + k as u64) {
                            return Err(format!("bad byte at {}", off + k as u64));
                        }
                    }
                    off += n as u64;
                    got.store(off, Ordering::Relaxed);
                }
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(format!("read: {e} at {off}")),
            }
        }
        Ok(())
    })
}

/// How many bytes the tcpserver workload says it received (its last `rx N` line).
fn server_rx(w: &Workload) -> u64 {
    w.lines()
        .iter()
        .rev()
        .find_map(|l| {
            l.strip_prefix("rx ")
                .and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
        })
        .unwrap_or(0)
}

#[test]
fn tcp_stream_survives_with_data_in_flight_both_ways() {
    let _g = serial_root!();
    let port = free_port();
    let w = Workload::start("tcpserver", &workload("tcpserver"), &[&port.to_string()]);
    w.wait_lines(1, T);
    let conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_nodelay(true).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let paused = Arc::new(AtomicBool::new(false));
    let (sent, got) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    // A stalled connection must fail the test, not hang it.
    conn.set_write_timeout(Some(Duration::from_secs(70)))
        .unwrap();
    cap_retransmission_timeout(&conn);
    let writer = pattern_writer(&conn, sent.clone(), stop.clone());
    let reader = pattern_reader(&conn, got.clone(), stop.clone(), paused.clone());
    std::thread::sleep(Duration::from_millis(300));
    // Stop reading for a while: the server's send queue fills, so bytes are in flight both ways.
    paused.store(true, Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(200));
    let img = w.images();
    let pid = w.pid.to_string();
    let o = stasis(&["dump", "-t", &pid, "-D", img.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "an established connection needs --tcp-established"
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("--tcp-established"));
    check_ok(
        "dump",
        &stasis(&[
            "dump",
            "-t",
            &pid,
            "-D",
            img.to_str().unwrap(),
            "--tcp-established",
            "-o",
            "dump.log",
            "-v4",
        ]),
    );
    reap(w.pid);
    let (s_at_dump, g_at_dump) = (sent.load(Ordering::Relaxed), got.load(Ordering::Relaxed));
    std::thread::sleep(Duration::from_millis(300));
    check_ok(
        "restore",
        &stasis(&[
            "restore",
            "-D",
            img.to_str().unwrap(),
            "-d",
            "--tcp-established",
            "-o",
            "restore.log",
            "-v4",
        ]),
    );
    paused.store(false, Ordering::Relaxed);
    // The peer's bytes dropped by the network lock come back by retransmission, on the peer's
    // backed-off timer (it grows with the downtime): wait for them rather than a fixed time.
    let end = Instant::now() + Duration::from_secs(60);
    while (got.load(Ordering::Relaxed) < g_at_dump + 200_000 || server_rx(&w) < s_at_dump + 100_000)
        && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let wres = writer.join().unwrap();
    let rres = reader.join().unwrap();
    let server_rx = server_rx(&w);
    let bad = w
        .lines()
        .into_iter()
        .find(|l| l.starts_with("BAD") || l.starts_with("write error") || l == "eof");
    kill_tree(&[w.pid]);
    assert_eq!(bad, None, "server side");
    wres.expect("client writer");
    rres.expect("client reader");
    assert!(
        got.load(Ordering::Relaxed) >= g_at_dump + 200_000,
        "client kept receiving the server's stream"
    );
    assert!(
        server_rx >= s_at_dump,
        "server received everything sent before the dump: {server_rx} < {s_at_dump}"
    );
}

/// Both ends of a TCP connection inside the tree (a parent serving its child), each with
/// lines sent ahead and not yet read: the stream goes on in order in both directions.
#[test]
fn tcp_connection_with_both_ends_in_the_tree_goes_on() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
ls = socket.socket(); ls.bind(("127.0.0.1", 0)); ls.listen(1)
port = ls.getsockname()[1]
if os.fork() == 0:
    role, s = "client", socket.create_connection(("127.0.0.1", port))
else:
    role, s = "server", ls.accept()[0]
sent, expect, buf = 0, 0, b""
for _ in range(3):  # always three lines ahead, unread by the other side
    s.sendall(b"%d\n" % sent); sent += 1
while True:
    s.sendall(b"%d\n" % sent); sent += 1
    while b"\n" not in buf:
        buf += s.recv(4096)
    line, buf = buf.split(b"\n", 1)
    if int(line) != expect:
        print(role, "BAD", line, expect, flush=True)
    expect += 1
    if expect % 20 == 0:
        print(role, expect, flush=True)
    time.sleep(0.005)
"#;
    let w = Workload::python("tcp-both-ends", script);
    let count = |w: &Workload, role: &str| -> u64 {
        w.lines()
            .iter()
            .filter_map(|l| l.strip_prefix(role)?.trim().parse().ok())
            .max()
            .unwrap_or(0)
    };
    let end = Instant::now() + T;
    // Past warm-up, so the heap no longer grows between the fingerprint and the freeze.
    while (count(&w, "server") < 200 || count(&w, "client") < 200) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    let (s0, c0) = (count(&w, "server"), count(&w, "client"));
    let end = Instant::now() + T;
    while (count(&w, "server") < s0 + 100 || count(&w, "client") < c0 + 100) && Instant::now() < end
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = w.lines();
    kill_tree(&pids);
    assert_eq!(pids.len(), 2, "server and client");
    assert!(!lines.iter().any(|l| l.contains("BAD")), "{lines:?}");
    assert!(
        count(&w, "server") >= s0 + 100 && count(&w, "client") >= c0 + 100,
        "both ends go on: {lines:?}"
    );
}

/// A TCP connection both sides shut down for writing is closed, and unhashed (sock_diag no
/// longer lists it): it still reads end of file and refuses writes after the restore. With
/// --tcp-established it is rebuilt through its FINs, as CRIU does, and keeps its peer's
/// address (SO_PEERNAME); without, it comes back a closed socket without one.
#[test]
fn tcp_socket_closed_both_ways_still_reads_end_of_file() {
    let _g = serial_root!();
    let script = r#"
import os, signal, socket, time
signal.signal(signal.SIGPIPE, signal.SIG_IGN)
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(1)
c = socket.create_connection(l.getsockname()); s, _ = l.accept(); l.close()
c.shutdown(socket.SHUT_WR); s.shutdown(socket.SHUT_WR)
time.sleep(0.2)
def state(k):
    try:
        r = repr(k.recv(1))
    except OSError as e:
        r = type(e).__name__
    try:
        k.send(b"x"); w = "sent"
    except OSError as e:
        w = type(e).__name__
    return r + "/" + w
def peer(k):
    try:
        return k.getsockopt(socket.SOL_SOCKET, 28, 16)[:8].hex()  # SO_PEERNAME
    except OSError as e:
        return type(e).__name__
print("before", state(c), state(s), peer(c), peer(s), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", state(c), state(s), peer(c), peer(s), flush=True)
time.sleep(1e6)
"#;
    for flags in [&[][..], &["--tcp-established"]] {
        let w = Workload::python("tcp-closed-both", script);
        let first = w.wait_lines(1, T);
        let before: Vec<&str> = first[0].split(' ').collect();
        assert_eq!(
            before[..3],
            ["before", "b''/BrokenPipeError", "b''/BrokenPipeError"]
        );
        let pids = dump_kill_restore_with(&w, flags, flags);
        let lines = w.go_and_collect(&pids, 2);
        let after: Vec<&str> = lines[1].split(' ').collect();
        assert_eq!(
            after[..3],
            ["after", "b''/BrokenPipeError", "b''/BrokenPipeError"],
            "{flags:?}"
        );
        if flags.is_empty() {
            assert_eq!(after[3..], ["OSError", "OSError"]);
        } else {
            assert_eq!(after[3..], before[3..], "the peers' addresses are kept");
        }
    }
}

/// Half-closed connections, the most common kind a server holds: a client that shut its side
/// after its request (the server's socket in CLOSE_WAIT, request and end of file unread) and
/// a server that shut its side after answering (FIN_WAIT2, the client may still send), with
/// the test as the remote peer, and the same pair with both ends inside the tree. After the
/// restore the states are the same, the server reads the request then end of file and
/// answers, and the client's late bytes arrive.
#[test]
fn half_closed_tcp_connections_keep_their_state_and_data() {
    use std::io::Write;
    let _g = serial_root!();
    let port = free_port();
    let script = format!(
        r#"
import os, socket, struct, time
def st(k): return struct.unpack("B", k.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]
l = socket.socket(); l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("127.0.0.1", {port})); l.listen(4)
print("listening", flush=True)
a = l.accept()[0]; b = l.accept()[0]
b.sendall(b"bye"); b.shutdown(socket.SHUT_WR)
lc = socket.create_connection(("127.0.0.1", {port})); ls = l.accept()[0]
lc.sendall(b"inner"); lc.shutdown(socket.SHUT_WR)
while (st(a), st(b), st(ls), st(lc)) != (8, 5, 8, 5):
    time.sleep(0.01)
print("before", st(a), st(b), st(ls), st(lc), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", st(a), st(b), st(ls), st(lc), flush=True)
def drain(k):
    got = b""
    while True:
        d = k.recv(100)
        if not d: return got
        got += d
print("a", drain(a), flush=True)
a.sendall(b"response"); a.close()
print("b", b.recv(100), flush=True)
print("inner", drain(ls), flush=True)
ls.sendall(b"late"); print("lc", lc.recv(100), flush=True)
time.sleep(1e6)
"#
    );
    let w = Workload::python("tcp-half-closed", &script);
    w.wait_lines(1, T);
    let mut ca = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect a");
    let mut cb = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect b");
    for c in [&ca, &cb] {
        c.set_read_timeout(Some(Duration::from_secs(70))).unwrap();
        cap_retransmission_timeout(c);
    }
    ca.write_all(b"request").unwrap();
    ca.shutdown(std::net::Shutdown::Write).unwrap();
    let mut bye = Vec::new();
    cb.read_to_end(&mut bye).unwrap();
    assert_eq!(bye, b"bye");
    let before = w.wait_lines(2, T);
    assert_eq!(before.get(1).map(String::as_str), Some("before 8 5 8 5"));
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    // The restored server may still send to B's client, and B's client to it.
    cb.write_all(b"more").unwrap();
    std::fs::write(w.dir.join("go"), b"").expect("write go");
    let lines = w.wait_lines(7, T);
    let mut response = Vec::new();
    let got = ca.read_to_end(&mut response);
    kill_tree(&pids);
    assert_eq!(
        lines[2..],
        [
            "after 8 5 8 5",
            "a b'request'",
            "b b'more'",
            "inner b'inner'",
            "lc b'late'"
        ],
        "{lines:?}"
    );
    got.expect("the client of a reads the response and end of file");
    assert_eq!(response, b"response");
}

/// A connection whose SYN was not answered at the dump (the server's accept queue full): it
/// is still connecting after the restore, from its own port, and completes (the queued
/// connection that filled the queue is not kept, as with CRIU: its client is reset); its
/// bytes arrive.
#[test]
fn connecting_tcp_socket_completes_after_restore() {
    let _g = serial_root!();
    let script = r#"
import os, select, socket, struct, time
def st(k): return struct.unpack("B", k.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1))[0]
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(0)
first = socket.create_connection(l.getsockname())
c = socket.socket(); c.setblocking(False)
try:
    c.connect(l.getsockname())
except BlockingIOError:
    pass
time.sleep(0.2)
port = c.getsockname()[1]
print("before", st(first), st(c), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", st(first), st(c), c.getsockname()[1] == port, flush=True)
# The queued connection of `first` is not kept (as with CRIU): first's window probe, sent
# once the lock is gone, is answered with a reset (state 7), and c's SYN, sent again, is the
# one the listener takes.
s, peer = l.accept()
_, w, _ = select.select([], [c], [], 30)
print("connected", bool(w), c.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR), flush=True)
c.setblocking(True); c.sendall(b"late hello")
print("got", s.recv(20), peer[1] == port, flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("tcp-syn-sent", script);
    let first = w.wait_lines(1, T);
    assert_eq!(first[0], "before 1 2");
    let flags = ["--tcp-established"];
    let pids = dump_kill_restore_with(&w, &flags, &flags);
    std::fs::write(w.dir.join("go"), b"").expect("write go");
    let lines = w.wait_lines(4, Duration::from_secs(40));
    kill_tree(&pids);
    assert_eq!(
        lines[1..],
        [
            "after 7 2 True",
            "connected True 0",
            "got b'late hello' True"
        ],
        "{lines:?}"
    );
}
