//! End-to-end: sockets: unix streams and datagrams (queued bytes, fds in flight, unlinked
//! names, shutdown, peek offsets), listeners, UDP, netlink and packet sockets, an epoll in
//! flight. TCP connections are in tcp.rs.

use std::io::Read;
use std::process::Command;
use std::time::Duration;

use stasis_tests::*;

/// Files sent with SCM_RIGHTS and not yet received are dumped with the message that carries
/// them, and the receiver gets working descriptors after restore: a regular file at its
/// offset, a pipe with its bytes, one end of a socketpair (the other held by the task), an
/// eventfd on a datagram socket. A socket sent over its own connection is refused by name.
#[test]
fn file_descriptors_in_flight_on_unix_sockets_arrive_after_restore() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
a, b = socket.socketpair()
c, d = socket.socketpair()
e, g = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
with open("data.txt", "w") as f:
    f.write("0123456789")
f = os.open("data.txt", os.O_RDWR)
os.lseek(f, 3, os.SEEK_SET)
r, w = os.pipe()
os.write(w, b"piped")
efd = os.eventfd(5)
socket.send_fds(a, [b"hdr"], [f, r, c.fileno()])
a.send(b"tail")
socket.send_fds(e, [b"dg1"], [efd])
e.send(b"dg2")
os.close(f); os.close(r); c.close(); os.close(efd)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
out = []
msg, fds, _, _ = socket.recv_fds(b, 100, 10)
out.append((msg.decode(), len(fds)))
f, r, cfd = fds
out.append(os.read(f, 100).decode())
out.append(os.read(r, 100).decode())
c = socket.socket(fileno=cfd)
d.send(b"ping"); out.append(c.recv(10).decode())
c.send(b"pong"); out.append(d.recv(10).decode())
out.append(b.recv(100).decode())
msg, fds, _, _ = socket.recv_fds(g, 100, 10)
out.append((msg.decode(), len(fds)))
out.append(int.from_bytes(os.read(fds[0], 8), "little"))
out.append(g.recv(100).decode())
print("got", out, flush=True)
while True: time.sleep(1)
"#;
    let (w, lines) = python_across_restore("inflight", script, 2);
    assert_eq!(
        lines[1],
        "got [('hdr', 3), '3456789', 'piped', 'ping', 'pong', 'tail', ('dg1', 1), 5, 'dg2']"
    );
    if have_crit() {
        let o = Command::new("crit")
            .args(["decode", "-i"])
            .arg(w.images().join("sk-queues.img"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&o.stdout);
        assert!(text.contains("\"rights\""), "{text}");
    }

    // One end of a socketpair sent over that same connection: refused, and the tree runs on.
    let script = r#"
import socket, time
a, b = socket.socketpair()
socket.send_fds(a, [b"x"], [a.fileno()])
print("ready", flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("inflight-self", script);
    w.wait_lines(1, T);
    let e = dump_must_fail(&w);
    assert!(
        e.contains("in flight (SCM_RIGHTS) on its own connection"),
        "{e}"
    );
    kill_tree(&[w.pid]);

    // A socket in flight that itself has a file in flight: refused.
    let script = r#"
import os, socket, time
a, b = socket.socketpair()
c, d = socket.socketpair()
socket.send_fds(d, [b"x"], [0])
socket.send_fds(a, [b"y"], [c.fileno()])
c.close()
print("ready", flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("inflight-nested", script);
    w.wait_lines(1, T);
    let e = dump_must_fail(&w);
    assert!(e.contains("is itself in flight"), "{e}");
    kill_tree(&[w.pid]);
}

/// A socketpair end shut for writing, with bytes still queued: after restore the reader gets
/// the bytes, then EOF, and the writer gets EPIPE.
#[test]
fn unix_shutdown_still_gives_eof_after_restore() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
a, b = socket.socketpair()
a.send(b"last words"); a.shutdown(socket.SHUT_WR)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
b.settimeout(5)
got = [b.recv(100), b.recv(100)]
try:
    a.send(b"x"); sent = "sent"
except BrokenPipeError:
    sent = "EPIPE"
print("after", got, sent, flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("shutdown", script, 2);
    assert_eq!(lines[1], "after [b'last words', b''] EPIPE");
}

/// Peeking a unix queue during the dump leaves the task's own SO_PEEK_OFF as it was.
#[test]
fn task_peek_offset_survives_a_dump() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
a, b = socket.socketpair()
a.send(b"0123456789")
b.setsockopt(socket.SOL_SOCKET, 42, 3)  # SO_PEEK_OFF
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", b.getsockopt(socket.SOL_SOCKET, 42), b.recv(4, socket.MSG_PEEK), flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("peekoff", script);
    w.wait_lines(1, T);
    check_ok("dump -R", &dump_workload(&w, &["-R"]));
    let lines = w.go_and_collect(&[w.pid], 2);
    assert_eq!(lines[1], "after 3 b'3456'");
}

/// Unix sockets whose files were unlinked (one in a directory deleted too) keep their names
/// and stay unlinked; a datagram queued on one of them still arrives.
#[test]
fn unix_sockets_with_unlinked_files_keep_their_names() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
os.mkdir("d")
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM); s.bind("d/listen"); s.listen(1)
t = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); t.bind("dgram")
socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM).sendto(b"queued", "dgram")
os.unlink("d/listen"); os.rmdir("d"); os.unlink("dgram")
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", s.getsockname(), t.getsockname(), os.path.exists("dgram"), os.path.exists("d"), t.recv(100), flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("unlinked-sockets", script, 2);
    assert_eq!(lines[1], "after d/listen dgram False False b'queued'");
}

/// A bound datagram server with several connected clients (one made before the server, one
/// whose server's name was then deleted) and a socket connected to itself: each client's
/// datagrams reach the one server after the restore, behind the one still queued.
#[test]
fn datagram_server_keeps_its_clients_and_a_socket_its_own_connection() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
D = socket.SOCK_DGRAM
early = socket.socket(socket.AF_UNIX, D)
srv = socket.socket(socket.AF_UNIX, D); srv.bind("srv")
ghost = socket.socket(socket.AF_UNIX, D); ghost.bind("ghost")
c1 = socket.socket(socket.AF_UNIX, D); c1.connect("srv")
c2 = socket.socket(socket.AF_UNIX, D); c2.connect("srv")
early.connect("srv")
g1 = socket.socket(socket.AF_UNIX, D); g1.connect("ghost")
g2 = socket.socket(socket.AF_UNIX, D); g2.connect("ghost")
os.unlink("ghost")
me = socket.socket(socket.AF_UNIX, D); me.bind("me"); me.connect("me")
c2.send(b"queued")
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
srv.settimeout(2); ghost.settimeout(2); me.settimeout(2)
got = []
for c in (c1, c2, early):
    c.send(b"x"); got.append(srv.recv(10))
for c in (g1, g2):
    c.send(b"g"); got.append(ghost.recv(10))
me.send(b"self"); got.append(me.recv(10))
print("after", *[g.decode() for g in got], os.path.exists("ghost"), flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("dgram-server", script, 2);
    assert_eq!(lines[1], "after queued x x g g self False");
}

/// A datagram socketpair end whose peer was closed with a message queued: the task still
/// reads the message after the restore, and a send is refused as before.
#[test]
fn datagram_socket_whose_peer_closed_keeps_its_message() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
b.send(b"left behind"); b.close()
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
a.settimeout(2)
got = a.recv(100)
try:
    a.send(b"x"); sent = "sent"
except OSError as e:
    sent = type(e).__name__
print("after", got.decode(), sent, flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("dgram-orphan", script, 2);
    assert_eq!(lines[1], "after left behind ConnectionRefusedError");
}

/// UDP-Lite sockets (protocol 136) come back as UDP-Lite, bound and connected.
#[test]
fn udp_lite_sockets_come_back() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
L = 136  # IPPROTO_UDPLITE
a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, L); a.bind(("127.0.0.1", 0))
b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, L); b.bind(("127.0.0.1", 0))
b.connect(a.getsockname())
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
a.settimeout(2)
b.send(b"lite")
got, frm = a.recvfrom(10)
print("after", got.decode(), frm == b.getsockname(), a.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL), flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("udp-lite", script, 2);
    assert_eq!(lines[1], "after lite True 136");
}

/// IP-level options come back, as CRIU keeps them (and a raw socket of protocol TCP, which
/// has no TCP state to read, is kept as the raw socket it is): a UDP server that asked for packet info
/// (as DNS servers do, to answer from the address asked) still gets it with each datagram,
/// in IPv4 and IPv6; TOS and TTL; a raw ICMP socket's type filter and header inclusion. And a
/// TCP connection the kernel autotunes stays autotuned (no buffer locked, SO_BUF_LOCK 0),
/// while one whose sizes the program set keeps them locked.
#[test]
fn ip_options_and_buffer_autotuning_survive() {
    let _g = serial_root!();
    let script = r#"
import os, socket, struct, time
u4 = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u4.bind(("127.0.0.1", 0))
u4.setsockopt(socket.IPPROTO_IP, 8, 1)  # IP_PKTINFO
u4.setsockopt(socket.IPPROTO_IP, socket.IP_TOS, 0x08)
u4.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, 33)
u6 = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM); u6.bind(("::1", 0))
u6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
icmp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
icmp.setsockopt(255, 1, struct.pack("I", 0xfffffff7))  # ICMP_FILTER: echo replies only
icmp.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
rawtcp = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP)  # no TCP state
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen(2)
auto = socket.create_connection(l.getsockname())
fixed = socket.create_connection(l.getsockname())
fixed.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
def opts():
    return (u4.getsockopt(socket.IPPROTO_IP, 8),
        u4.getsockopt(socket.IPPROTO_IP, socket.IP_TOS),
        u4.getsockopt(socket.IPPROTO_IP, socket.IP_TTL),
        u6.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO),
        hex(struct.unpack("I", icmp.getsockopt(255, 1, 4))[0]),
        icmp.getsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL),
        auto.getsockopt(socket.SOL_SOCKET, 72), fixed.getsockopt(socket.SOL_SOCKET, 72),
        rawtcp.getsockopt(socket.SOL_SOCKET, socket.SO_PROTOCOL))
def pktinfo(srv, fam):
    c = socket.socket(fam, socket.SOCK_DGRAM); c.sendto(b"q", srv.getsockname())
    srv.settimeout(2)
    _, anc, _, _ = srv.recvmsg(10, 256)
    return len(anc)
print("before", *opts(), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", *opts(), flush=True)
print("pktinfo", pktinfo(u4, socket.AF_INET), pktinfo(u6, socket.AF_INET6), flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("ip-opts", script);
    let before = w.wait_lines(1, T)[0].replacen("before", "after", 1);
    assert_eq!(before, "after 1 8 33 1 0xfffffff7 1 0 1 6");
    let flags = ["--tcp-established"];
    let pids = dump_kill_restore_with(&w, &flags, &flags);
    let lines = w.go_and_collect(&pids, 3);
    assert_eq!(lines[1], before);
    assert_eq!(lines[2], "pktinfo 1 1");
}

/// A unix socket whose name now holds another file (unlinked, then a file made there): the
/// restore binds the socket to its name with the file moved aside, then puts the file back.
#[test]
fn unix_socket_whose_name_holds_another_file_keeps_both() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM); s.bind("name")
os.unlink("name"); os.mkfifo("name")
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
import stat
print("after", s.getsockname(), stat.S_ISFIFO(os.stat("name").st_mode), os.listdir(".").count("name.stasis-sk-ghost"), flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("sk-name-taken", script, 2);
    assert_eq!(lines[1], "after name True 0");
}

/// A UDP socket's shutdown state (read from inet_diag) comes back: sending on a socket shut
/// for writing fails, while its twin that was not shut still sends.
#[test]
fn udp_socket_shutdown_state_survives() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
def pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); a.bind(("127.0.0.1", 0))
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); b.bind(("127.0.0.1", 0))
    a.connect(b.getsockname()); b.connect(a.getsockname())
    return a, b
w, _ = pair(); w.shutdown(socket.SHUT_WR)
ok, _ = pair()
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
try:
    w.send(b"x"); sent = "sent"
except OSError as e:
    sent = type(e).__name__
print("after", sent, ok.send(b"y"), flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("udp-shutdown", script, 2);
    assert_eq!(lines[1], "after BrokenPipeError 1");
}

/// Netlink sockets: a uevent monitor bound to a multicast group, an rtnetlink socket bound to
/// a port id of its choosing (and in group 33, past the first 32), and an autobound one come
/// back with their port ids and groups, and rtnetlink still answers a link dump.
#[test]
fn netlink_sockets_keep_their_port_ids_and_groups() {
    let _g = serial_root!();
    let script = r#"
import os, socket, struct, time
NL = socket.AF_NETLINK
ue = socket.socket(NL, socket.SOCK_RAW, 15); ue.bind((0, 1))          # KOBJECT_UEVENT, group 1
rt = socket.socket(NL, socket.SOCK_RAW, 0); rt.bind((os.getpid() + 7777, 0))
rt.setsockopt(270, 1, 33)                                              # NETLINK_ADD_MEMBERSHIP
auto = socket.socket(NL, socket.SOCK_RAW, 0); auto.bind((0, 0))
def state():
    groups = rt.getsockopt(270, 9, 8)                                  # NETLINK_LIST_MEMBERSHIPS
    return ue.getsockname(), rt.getsockname()[0], auto.getsockname()[0], groups.hex()
before = state()
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
# RTM_GETLINK, NLM_F_REQUEST | NLM_F_DUMP: the first answer is a RTM_NEWLINK (16).
rt.send(struct.pack("=IHHII", 32, 18, 0x301, 1, 0) + bytes(16))
rt.settimeout(2)
answer = struct.unpack("=IH", rt.recv(65536)[:6])[1]
print("after", state() == before, answer, flush=True)
time.sleep(1e6)
"#;
    let (_w, lines) = python_across_restore("netlink", script, 2);
    assert_eq!(lines[1], "after True 16");
}

#[test]
fn listening_sockets_answer_after_restore() {
    let _g = serial_root!();
    // A server on IPv4 and IPv6 (v6only), options set, answering "hello <n>" on each connection.
    let script = r#"
import socket, sys, time, select
s4 = socket.socket()
s4.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s4.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s4.bind(("127.0.0.1", 0)); s4.listen(16)
s6 = socket.socket(socket.AF_INET6)
s6.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
s6.bind(("::1", 0)); s6.listen(16)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind(("127.0.0.1", 0))
print("ports", s4.getsockname()[1], s6.getsockname()[1], u.getsockname()[1], flush=True)
n = 0
while True:
    r, _, _ = select.select([s4, s6, u], [], [], 0.05)
    for s in r:
        if s is u:
            data, peer = u.recvfrom(100); u.sendto(b"udp " + data, peer); continue
        c, _ = s.accept(); n += 1
        c.sendall(b"hello %d %d\n" % (n, s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR))); c.close()
    print("tick", flush=True)
"#;
    let w = Workload::python("listen", script);
    let first = w.wait_lines(2, T);
    let ports: Vec<u16> = first[0]
        .split_whitespace()
        .skip(1)
        .map(|p| p.parse().unwrap())
        .collect();
    let hello = |addr: &str, port: u16| -> String {
        let mut c = std::net::TcpStream::connect((addr, port)).expect("connect");
        let mut s = String::new();
        c.read_to_string(&mut s).unwrap();
        s
    };
    assert_eq!(hello("127.0.0.1", ports[0]), "hello 1 1\n");
    let pids = dump_kill_restore(&w);
    assert_eq!(
        hello("127.0.0.1", ports[0]),
        "hello 2 1\n",
        "IPv4 listener, state and SO_REUSEADDR kept"
    );
    assert_eq!(hello("::1", ports[1]), "hello 3 0\n", "IPv6 listener");
    let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    u.set_read_timeout(Some(T)).unwrap();
    u.send_to(b"ping", ("127.0.0.1", ports[2])).unwrap();
    let mut b = [0u8; 64];
    let (n, _) = u.recv_from(&mut b).expect("udp answer");
    kill_tree(&pids);
    assert_eq!(&b[..n], b"udp ping");
}

/// As CRIU's zdtm socket-tcp and sk-freebind-false: a connection accepted on a listener's
/// port is made again before the listener (its fd, so its file id, comes first), and a socket
/// bound to a non-local address with IP_FREEBIND, then cleared, binds there again.
#[test]
fn listener_sharing_a_port_with_its_connection_and_a_freebind_socket_come_back() {
    use std::io::{BufRead, Write};
    let _g = serial_root!();
    let script = r#"
import os, socket, select
IP_FREEBIND = 15
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", 0)); ls.listen(4)
port = ls.getsockname()[1]
# The listener moves above fds 3 and 4, which the accepted connection and the free bind take.
os.dup2(ls.fileno(), 20); ls.close()
ls = socket.socket(fileno=20)
fb = socket.socket()
fb.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 1)
fb.bind(("10.254.254.254", 0))
fb.setsockopt(socket.IPPROTO_IP, IP_FREEBIND, 0)
print("port", port, flush=True)
c, _ = ls.accept()
n = 0
while True:
    r, _, _ = select.select([ls, c], [], [], 0.05)
    for s in r:
        if s is ls:
            d, _ = ls.accept(); d.sendall(b"new\n"); d.close(); continue
        line = c.recv(100)
        if not line: raise SystemExit
        n += 1
        c.sendall(b"%d %d %d %s %d\n" % (n, c.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
            fb.getsockopt(socket.IPPROTO_IP, IP_FREEBIND), fb.getsockname()[0].encode(), c.fileno()))
"#;
    let w = Workload::python("portshare", script);
    let first = w.wait_lines(1, T);
    let port: u16 = first[0]
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("port");
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    conn.set_read_timeout(Some(T)).expect("timeout");
    let mut rd = std::io::BufReader::new(conn.try_clone().expect("dup"));
    let mut ask = || -> String {
        conn.write_all(b"?\n").expect("send");
        let mut l = String::new();
        rd.read_line(&mut l).expect("answer");
        l.trim().to_string()
    };
    let before = ask();
    assert!(before.starts_with("1 1 0 10.254.254.254 "), "{before}");
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    let after = ask();
    let new = std::net::TcpStream::connect(("127.0.0.1", port)).map(|mut c| {
        let mut s = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut s);
        s
    });
    kill_tree(&pids);
    let fd = before.rsplit(' ').next().unwrap_or("");
    assert_eq!(
        after,
        format!("2 1 0 10.254.254.254 {fd}"),
        "same connection, SO_REUSEADDR kept, IP_FREEBIND cleared, same bind"
    );
    assert_eq!(new.expect("the listener accepts"), "new\n");
}

/// A classic BPF socket filter (SO_ATTACH_FILTER) comes back on the restored socket: a UDP
/// socket that keeps only 3-byte datagrams (zdtm's sock_filter tests check the same).
#[test]
fn socket_filter_is_attached_again() {
    let _g = serial_root!();
    let script = r#"
import ctypes, socket, struct, time
SO_ATTACH_FILTER = SO_GET_FILTER = 26
# ldw len (A = packet length); jeq #3+8 (UDP header + 3) ? accept : drop
insns = [(0x80, 0, 0, 0), (0x15, 0, 1, 11), (0x06, 0, 0, 0xffff), (0x06, 0, 0, 0)]
buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
prog = struct.pack("HL", len(insns), ctypes.addressof(buf))
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog)
u.bind(("127.0.0.1", 0))
print("port", u.getsockname()[1], flush=True)
while True:
    d, peer = u.recvfrom(100)
    # The kernel gives the length in instructions, which python takes as the byte count.
    n = len(u.getsockopt(socket.SOL_SOCKET, SO_GET_FILTER, 64 * 8))
    u.sendto(b"got %s %d" % (d, n), peer)
"#;
    let w = Workload::python("sockfilter", script);
    let first = w.wait_lines(1, T);
    let port: u16 = first[0]
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.parse().ok())
        .expect("port");
    let c = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let ask = |what: &[u8]| -> Option<String> {
        c.send_to(what, ("127.0.0.1", port)).ok()?;
        let mut b = [0u8; 64];
        let (n, _) = c.recv_from(&mut b).ok()?;
        Some(String::from_utf8_lossy(&b[..n]).into_owned())
    };
    assert_eq!(ask(b"abc").as_deref(), Some("got abc 4"));
    let pids = dump_kill_restore(&w);
    let dropped = ask(b"abcd");
    let kept = ask(b"xyz");
    kill_tree(&pids);
    assert_eq!(dropped, None, "a 4-byte datagram is filtered out");
    assert_eq!(
        kept.as_deref(),
        Some("got xyz 4"),
        "the same 4-instruction filter"
    );
}

/// A unix connection still waiting in its listener's queue (not yet accepted) waits there
/// again after the restore (zdtm's sockets00): the accept that follows gets it.
#[test]
fn queued_unix_connection_is_accepted_after_restore() {
    let _g = serial_root!();
    let script = r#"
import os, socket, time
out = []
for ty, name in ((socket.SOCK_STREAM, "stream.sock"), (socket.SOCK_SEQPACKET, "seqpacket.sock")):
    srv = socket.socket(socket.AF_UNIX, ty)
    srv.bind(os.path.abspath(name)); srv.listen(4)
    cli = socket.socket(socket.AF_UNIX, ty)
    cli.connect(os.path.abspath(name))
    out.append((srv, cli))
print("queued", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
got = []
for srv, cli in out:
    c, _ = srv.accept()
    cli.sendall(b"ping")
    got.append(c.recv(10).decode())
print("accepted", *got, flush=True)
"#;
    let (_w, lines) = python_across_restore("unixqueue", script, 2);
    assert_eq!(
        lines.get(1).map(String::as_str),
        Some("accepted ping ping"),
        "{lines:?}"
    );
}

#[test]
fn datagrams_queued_on_a_bound_unix_socket_and_its_file_mode_survive() {
    let _g = serial_root!();
    // A syslog-like receiver: bound by path, unconnected, with datagrams from unnamed senders
    // (one inside the tree, the others from the test) waiting to be read.
    let script = r#"
import os, socket, time
srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
srv.bind("log.sock")
os.chmod("log.sock", 0o620); os.chown("log.sock", 65534, 65534)
c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
c.sendto(b"from-tree", "log.sock")
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
srv.setblocking(False)
got = []
while True:
    try: got.append(srv.recv(100).decode())
    except BlockingIOError: break
print("got", got, flush=True)
c.sendto(b"after", "log.sock")
print("then", srv.recv(100).decode(), flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("dgramq", script);
    w.wait_lines(1, T);
    let outside = std::os::unix::net::UnixDatagram::unbound().unwrap();
    for m in ["one", "two", "three"] {
        outside
            .send_to(m.as_bytes(), w.dir.join("log.sock"))
            .unwrap();
    }
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 3);
    assert_eq!(lines[1], "got ['from-tree', 'one', 'two', 'three']");
    assert_eq!(lines[2], "then after");
    // The socket file keeps its mode and owner, not the restorer's umask and uid.
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::symlink_metadata(w.dir.join("log.sock")).unwrap();
    assert_eq!(
        (md.mode() & 0o7777, md.uid(), md.gid()),
        (0o620, 65534, 65534)
    );
}

#[test]
fn unix_sockets_with_queued_data_and_listeners_survive() {
    let _g = serial_root!();
    // Stream and datagram socketpairs with bytes queued both ways, a listener on a path and one
    // on an abstract name. On "go" (a file appearing) it reads everything and answers clients.
    let script = r#"
import os, socket, time
a, b = socket.socketpair()
c, d = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
a.sendall(b"to-b " * 1000); b.sendall(b"to-a " * 700)
c.send(b"dgram one"); c.send(b"dgram two"); d.send(b"dgram back")
l = socket.socket(socket.AF_UNIX); l.bind("sock"); l.listen(4)
ab = socket.socket(socket.AF_UNIX); ab.bind("\0stasis-test-abstract-%d" % os.getpid()); ab.listen(4)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
def take(s, n):
    got = b""
    while len(got) < n: got += s.recv(n - len(got))
    return got
print("b got", take(b, 5000) == b"to-b " * 1000, flush=True)
print("a got", take(a, 3500) == b"to-a " * 700, flush=True)
print("d got", d.recv(100), d.recv(100), flush=True)
print("c got", c.recv(100), flush=True)
for s in (l, ab):
    x, _ = s.accept(); x.sendall(b"hi"); x.close()
print("served", flush=True)
while True: time.sleep(1)
"#;
    let w = Workload::python("unixsk", script);
    w.wait_lines(1, T);
    let pids = dump_kill_restore(&w);
    std::fs::write(w.dir.join("go"), b"").unwrap();
    let hi = |addr: std::os::unix::net::SocketAddr| {
        let mut s = std::os::unix::net::UnixStream::connect_addr(&addr).unwrap_or_else(|e| {
            let ss = std::process::Command::new("ss")
                .arg("-xlp")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            panic!("connect {addr:?}: {e}; listeners: {ss:?}")
        });
        let mut v = String::new();
        s.read_to_string(&mut v).unwrap();
        v
    };
    std::thread::sleep(Duration::from_millis(200));
    let path = std::os::unix::net::SocketAddr::from_pathname(w.dir.join("sock")).unwrap();
    assert_eq!(hi(path), "hi", "path listener");
    use std::os::linux::net::SocketAddrExt;
    let abs = std::os::unix::net::SocketAddr::from_abstract_name(format!(
        "stasis-test-abstract-{}",
        w.pid
    ))
    .unwrap();
    assert_eq!(hi(abs), "hi", "abstract listener");
    let lines = w.wait_lines(6, T);
    kill_tree(&pids);
    assert_eq!(
        &lines[1..6],
        &[
            "b got True".to_string(),
            "a got True".to_string(),
            "d got b'dgram one' b'dgram two'".to_string(),
            "c got b'dgram back'".to_string(),
            "served".to_string(),
        ]
    );
}

/// Packet sockets: one bound to lo for IP with a fanout group and a membership, one raw with
/// TPACKET_V2 and a mapped rx ring, come back with their binding and options, and the bound one
/// still receives what is sent on lo.
#[test]
fn packet_sockets_keep_binding_options_and_ring() {
    let _g = serial_root!();
    let script = r#"
import mmap, os, socket, struct, time
SOL_PACKET, ADD_MEMBERSHIP, RX_RING, AUXDATA, VERSION, FANOUT = 263, 1, 5, 8, 10, 18
ip = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))
ip.bind(("lo", 0x0800))
ip.setsockopt(SOL_PACKET, AUXDATA, 1)
ip.setsockopt(SOL_PACKET, ADD_MEMBERSHIP, struct.pack("iHH8s", socket.if_nametoindex("lo"), 1, 0, b""))  # PACKET_MR_PROMISC
ip.setsockopt(SOL_PACKET, FANOUT, 7)
raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
raw.setsockopt(SOL_PACKET, VERSION, 1)  # TPACKET_V2
raw.setsockopt(SOL_PACKET, RX_RING, struct.pack("IIII", 4096, 1, 1024, 4))
ring = mmap.mmap(raw.fileno(), 4096)
ip.settimeout(5)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
def state():
    name = ip.getsockname()
    return (name[0], hex(name[1]), ip.getsockopt(SOL_PACKET, AUXDATA),
            ip.getsockopt(SOL_PACKET, FANOUT), raw.getsockopt(SOL_PACKET, VERSION), len(ring))
print("before", *state(), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
udp.sendto(b"ping-after-restore", ("127.0.0.1", 9))
got = b""
while b"ping-after-restore" not in got:
    got = ip.recv(2048)
print("after", *state(), "received", flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("packet", script);
    let first = w.wait_lines(1, T);
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 2);
    let tail = |l: &str| {
        l.split_whitespace()
            .skip(1)
            .take(6)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(first[0], "before lo 0x800 1 7 1 4096", "{first:?}");
    assert_eq!(tail(&lines[1]), tail(&first[0]), "{lines:?}");
    assert!(lines[1].ends_with("received"), "{lines:?}");
}

/// An epoll sent over a unix socket and still in flight (no task holds it) keeps its target: once
/// received after the restore, it reports the target ready.
#[test]
fn epoll_in_flight_keeps_its_targets() {
    let _g = serial_root!();
    let script = r#"
import os, select, socket, time
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
ep = select.epoll()
ep.register(b.fileno(), select.EPOLLIN)
socket.send_fds(a, [b"ep"], [ep.fileno()])
ep.close()
a.send(b"data")  # b is readable: the epoll in flight must say so
print("sent", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
msg, fds, _, _ = socket.recv_fds(b, 16, 1)
got = select.epoll.fromfd(fds[0]).poll(0)
print("after", msg, [(fd == b.fileno(), ev) for fd, ev in got], flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("epoll-in-flight", script);
    w.wait_lines(1, T);
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines[1], "after b'ep' [(True, 1)]", "{lines:?}");
}
