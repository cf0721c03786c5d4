//! What a network namespace of the tree's own holds beyond its links, addresses and routes:
//! its firewall (nftables and iptables-legacy), its tun devices, or nothing when the caller
//! manages it (`--empty-ns net`).

use std::path::Path;

use stasis_tests::containers::{ip_in, missing_tools};
use stasis_tests::*;

/// The firewall of a network namespace of the tree's own (nftables; iptables-nft's rules are
/// nftables too; and iptables-legacy's tables) comes back: the same ruleset, counters
/// included, the same legacy tables, and both still act: a port nftables drops stays
/// unreachable from inside, one iptables-legacy rejects is refused, while another answers.
/// The firewall is made once the sockets are: a half-closed connection on a port it drops
/// gets its peer's FIN back (zdtm socket-tcp-closed-last-ack).
#[test]
fn firewall_of_the_trees_network_namespace_comes_back() {
    let _g = serial_root!();
    if missing_tools(test_name!(), &["ip", "nft", "nsenter", "iptables-legacy"]) {
        return;
    }
    let script = r#"
import ctypes, os, socket, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x40000000) == 0, ctypes.get_errno()
assert os.system("ip link set lo up") == 0
open_srv = socket.socket(); open_srv.bind(("127.0.0.1", 7091)); open_srv.listen(4)
shut_srv = socket.socket(); shut_srv.bind(("127.0.0.1", 7092)); shut_srv.listen(4)
rej_srv = socket.socket(); rej_srv.bind(("127.0.0.1", 7093)); rej_srv.listen(4)
# A half-closed connection whose server port the firewall (made afterwards) drops: the
# peer's FIN put back at restore must reach it all the same.
half_srv = socket.socket(); half_srv.bind(("127.0.0.1", 7095)); half_srv.listen(1)
half_cli = socket.create_connection(("127.0.0.1", 7095)); half, _ = half_srv.accept()
half_cli.shutdown(socket.SHUT_WR)
time.sleep(0.1)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
def reach(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return "open"
    except OSError as e:
        return type(e).__name__
print("after", reach(7091), reach(7092), reach(7093), half.recv(10) == b"", flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("netns-nft", script);
    w.wait_lines(1, T);
    let pid = w.pid.to_string();
    let tool = |pid: &str, tool: &str, args: &[&str], input: Option<&str>| -> String {
        use std::io::Write;
        let mut cmd = std::process::Command::new("nsenter");
        cmd.args(["-t", pid, "-n", tool]).args(args);
        cmd.stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped());
        let mut child = cmd.spawn().expect("nsenter nft");
        if let Some(i) = input {
            child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
        }
        drop(child.stdin.take());
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{tool} {args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    tool(
        &pid,
        "nft",
        &["-f", "-"],
        Some(
            "table inet guard {\n\
             set shut { type inet_service; elements = { 7092, 7095, 9999 } }\n\
             chain input { type filter hook input priority 0; policy accept;\n\
             tcp dport @shut counter packets 7 bytes 420 drop comment \"closed\"\n\
             }\n\
             }\n",
        ),
    );
    let reject = "-A INPUT -p tcp --dport 7093 -c 5 300 -j REJECT --reject-with tcp-reset";
    tool(
        &pid,
        "iptables-legacy",
        &reject.split(' ').collect::<Vec<_>>(),
        None,
    );
    let legacy = |pid: &str| -> Vec<String> {
        let saved = tool(pid, "iptables-legacy-save", &["-c"], None);
        saved
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(str::to_string)
            .collect()
    };
    let (before, legacy_before) = (tool(&pid, "nft", &["list", "ruleset"], None), legacy(&pid));
    let flags = ["--tcp-established"];
    let pids = dump_kill_restore_with(&w, &flags, &flags);
    let pid = pids[0].to_string();
    let (after, legacy_after) = (tool(&pid, "nft", &["list", "ruleset"], None), legacy(&pid));
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(after, before, "the same ruleset, counters included");
    assert_eq!(legacy_after, legacy_before, "the same legacy tables");
    assert_eq!(
        lines[1], "after open TimeoutError ConnectionRefusedError True",
        "the half-closed connection's end of file came back through the firewall"
    );
}

/// A VPN client's tun device (openvpn, wireguard-go, tailscale) in the tree's network
/// namespace, multiqueue with a spare queue detached: the device comes back with its flags,
/// address and route, not persistent, the spare queue still detached, and the restored
/// process reads from its attached queue the packets routed into it (zdtm tun).
#[test]
fn tun_device_of_the_trees_network_namespace_keeps_delivering_packets() {
    let _g = serial_root!();
    if missing_tools(test_name!(), &["ip", "nsenter"]) {
        return;
    }
    if !Path::new("/dev/net/tun").exists() {
        skip(test_name!(), "no /dev/net/tun");
        return;
    }
    let script = r#"
import ctypes, fcntl, os, struct
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x40000000) == 0, ctypes.get_errno()
# A multiqueue tun device (IFF_TUN | IFF_NO_PI | IFF_MULTI_QUEUE) with two queues, the second
# detached (TUNSETQUEUE with IFF_DETACH_QUEUE), as a VPN client keeps spare queues.
ifr = lambda flags: struct.pack("16sH22x", b"stun0", flags)
fd, spare = os.open("/dev/net/tun", os.O_RDWR), os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, ifr(0x0001 | 0x1000 | 0x0100))
fcntl.ioctl(spare, 0x400454ca, ifr(0x0001 | 0x1000 | 0x0100))
fcntl.ioctl(spare, 0x400454d9, ifr(0x0400))
def detached(f):  # TUNGETIFF's flags
    return bool(struct.unpack("16sH22x", fcntl.ioctl(f, 0x800454d2, bytes(40)))[1] & 0x0400)
assert os.system("ip link set lo up && ip addr add 10.77.0.1/24 dev stun0 && ip link set stun0 up") == 0
print("ready", detached(fd), detached(spare), flush=True)
while True:
    pkt = os.read(fd, 4096)
    if len(pkt) >= 28 and pkt[0] >> 4 == 4 and pkt[9] == 17:
        ihl = (pkt[0] & 15) * 4
        print(pkt[ihl + 8:].decode(errors="replace"), detached(fd), detached(spare), flush=True)
"#;
    let w = Workload::python("tun", script);
    assert_eq!(
        w.wait_lines(1, T).first().map(String::as_str),
        Some("ready False True")
    );
    let send = |pid: u32, what: &str| {
        let code = format!(
            "import socket; socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'{what}', ('10.77.0.2', 9999))"
        );
        let out = std::process::Command::new("nsenter")
            .args(["-t", &pid.to_string(), "-n", "python3", "-c", &code])
            .output()
            .expect("nsenter python3");
        assert!(out.status.success(), "sending into the tun: {out:?}");
    };
    send(w.pid, "before");
    assert_eq!(
        w.wait_lines(2, T).get(1).map(String::as_str),
        Some("before False True")
    );
    let kind = |pid: u32| {
        let text = ip_in(pid, &["-d", "link", "show", "stun0"]);
        text.lines()
            .find_map(|l| l.trim().strip_prefix("tun "))
            .map(|l| l.split(" addrgenmode").next().unwrap_or(l).to_string())
            .unwrap_or_default()
    };
    let addrs = |pid: u32| ip_in(pid, &["-4", "-o", "addr", "show", "stun0"]);
    let (kind_before, addrs_before) = (kind(w.pid), addrs(w.pid));
    assert_eq!(
        kind_before,
        "type tun pi off vnet_hdr off multi_queue numqueues 1 numdisabled 1 persist off"
    );
    let pids = dump_kill_restore(&w);
    let restored = pids[0];
    let (kind_after, addrs_after) = (kind(restored), addrs(restored));
    send(restored, "after");
    let lines = w.wait_lines(3, T);
    kill_tree(&pids);
    assert_eq!(
        kind_after, kind_before,
        "the same kind of device, not persistent"
    );
    assert_eq!(addrs_after, addrs_before);
    assert_eq!(
        lines.get(2).map(String::as_str),
        Some("after False True"),
        "the packet on the attached queue, the spare one still detached: {lines:?}"
    );
}

/// A tun device of a network namespace the tree does not own (the host's) is refused by name,
/// and the process runs on: nothing would make the device again.
#[test]
fn tun_device_outside_the_tree_is_refused_by_name() {
    let _g = serial_root!();
    if !Path::new("/dev/net/tun").exists() {
        skip(test_name!(), "no /dev/net/tun");
        return;
    }
    let script = r#"
import fcntl, os, struct, time
fd = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(fd, 0x400454ca, struct.pack("16sH22x", b"stunhost9", 0x0001 | 0x1000))
print("ready", flush=True)
while True:
    time.sleep(0.05)
    print("tick", flush=True)
"#;
    let w = Workload::python("tun-host", script);
    w.wait_lines(1, T);
    let img = w.images();
    let out = stasis(&[
        "dump",
        "-t",
        &w.pid.to_string(),
        "-D",
        img.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("tun device stunhost9 of a network namespace the tree does not own"),
        "{err}"
    );
    let n = w.lines().len();
    assert!(w.wait_lines(n + 2, T).len() >= n + 2, "the process runs on");
    kill_tree(&[w.pid]);
}

/// runc asks for `empty_ns` (the network namespace) when hooks set the container's network
/// up (podman's `--network none`, docker): the namespace's contents are the caller's, and
/// CRIU writes no netns image at all. Such images restore with `--empty-ns net` into a new
/// namespace with loopback alone; without it the restore fails naming the option, and leaves
/// nothing behind. (Images of stasis's own had a netns image of nothing: taken away here, as
/// CRIU 4.2 leaves it out; a podman archive CRIU made failed "netns-10.img: No such file".)
#[test]
fn network_namespace_left_to_the_caller_comes_back_empty() {
    let _g = serial_root!();
    if missing_tools(test_name!(), &["ip"]) {
        return;
    }
    let script = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x40000000) == 0, ctypes.get_errno()
assert os.system("ip link set lo up && ip link add vx0 type vxlan id 42 dstport 4789") == 0
n = 0
while True:
    print(n, flush=True); n += 1
    time.sleep(0.02)
"#;
    let w = Workload::python("netns-empty", script);
    w.wait_lines(5, T);
    let img = w.images();
    let pids = dump_kill_then_restore(&w, &["--empty-ns", "net"], &["--empty-ns", "net"], || {
        for e in std::fs::read_dir(&img).expect("images").flatten() {
            if e.file_name().to_string_lossy().starts_with("netns-") {
                std::fs::remove_file(e.path()).expect("remove the netns image");
            }
        }
        let out = stasis(&["restore", "-D", img.to_str().expect("utf8"), "-d"]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "restored without --empty-ns net");
        assert!(err.contains("restore with --empty-ns net"), "{err}");
        assert!(!alive(w.pid), "the failed restore left the root behind");
    });
    let n = w.lines().len();
    let lines = w.wait_lines(n + 10, T);
    let links = ip_in(w.pid, &["-o", "link"]);
    let own = std::fs::read_link(format!("/proc/{}/ns/net", w.pid)).ok()
        != std::fs::read_link("/proc/self/ns/net").ok();
    kill_tree(&pids);
    assert!(lines.len() >= n + 10, "the counter goes on");
    counter_is_continuous(&lines);
    assert!(own, "a network namespace of its own");
    assert!(links.contains("lo:"), "loopback: {links}");
    assert!(
        !links.contains("vx0"),
        "the caller's links are the caller's: {links}"
    );
}
