//! Trees that own namespaces the way a container's do: restored into new ones of their own,
//! with what they saw inside unchanged.

use std::path::Path;
use std::time::{Duration, Instant};

use stasis_tests::containers::{ip_in, missing_tools};
use stasis_tests::*;

fn nspid(pid: u32) -> Vec<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .map(|v| {
            v.split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The last counter each of "init", "child" and "thread" printed, with the pids they saw.
fn last_of(lines: &[String], who: &str) -> Option<Vec<u64>> {
    lines
        .iter()
        .rev()
        .find(|l| l.starts_with(who))
        .map(|l| nums(l))
}

#[test]
fn pid_namespace_init_comes_back_as_pid_1_with_its_children() {
    let _g = serial_root!();
    if !Path::new("/usr/bin/unshare").exists() {
        skip(test_name!(), "no /usr/bin/unshare (util-linux)");
        return;
    }
    let w = Workload::start(
        "pidns",
        Path::new("/usr/bin/unshare"),
        &["--pid", "--fork", workload("pidns").to_str().expect("utf8")],
    );
    let init = init_of(w.pid);
    w.wait_lines(9, T);
    assert_eq!(
        nspid(init),
        [init, 1],
        "the workload is its namespace's init"
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
    // The init died with the dump; unshare, its parent, follows.
    reap(w.pid);
    let before = w.lines();
    let (init_n, child_n, thread_n) = (
        last_of(&before, "init").expect("init line"),
        last_of(&before, "child").expect("child line"),
        last_of(&before, "thread").expect("thread line"),
    );
    assert!(
        img.join("core-1.img").exists(),
        "images hold the pids the tree sees"
    );
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
    let root: u32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(nspid(root).last(), Some(&1), "pid 1 in a new namespace");
    let n = before.len();
    let after = w.wait_lines(n + 9, T);
    kill_tree(&[root]);
    let new = &after[n..];
    let i = last_of(new, "init").expect("init runs on");
    let c = last_of(new, "child").expect("child runs on");
    let t = last_of(new, "thread").expect("thread runs on");
    assert_eq!(i[0], 1, "init still sees itself as pid 1: {new:?}");
    assert_eq!((c[0], c[1]), (2, 1), "child keeps pid 2 and parent 1");
    assert_eq!(t[0], thread_n[0], "thread keeps its tid");
    assert!(i[1] > init_n[1] && c[2] > child_n[2] && t[1] > thread_n[1]);
    // Each counter, over the whole run, goes 0, 1, 2...: nothing lost or repeated across the
    // checkpoint.
    for who in ["init", "child", "thread"] {
        let seq: Vec<u64> = after
            .iter()
            .filter(|l| l.starts_with(who))
            .filter_map(|l| nums(l).last().copied())
            .collect();
        let want: Vec<u64> = (0..seq.len() as u64).collect();
        assert_eq!(seq, want, "{who}'s count");
    }
}

/// Runs `ip` (a test fixture: the product never shells out), asserting success.
fn ip(args: &[&str]) -> String {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Asks the server at `addr` for its next count.
fn ask(addr: &str) -> Option<u64> {
    use std::io::Read;
    let a: std::net::SocketAddr = addr.parse().ok()?;
    let mut s = std::net::TcpStream::connect_timeout(&a, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.trim().strip_prefix("count ")?.parse().ok()
}

/// Deletes the host end of the test's veth whatever happens.
struct HostLink(&'static str);
impl Drop for HostLink {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", self.0])
            .output();
    }
}

/// A python `script` in a network namespace of its own (`unshare --net`), with `lo` up and a
/// veth whose inner end `inside` has `subnet`.2/24 and outer end `outside` (in ours)
/// `subnet`.1/24. None (after saying SKIP) when a tool is missing. The guard deletes the outer
/// end.
fn server_behind_veth(
    test: &str,
    name: &str,
    script: &str,
    (inside, outside): (&str, &'static str),
    subnet: &str,
) -> Option<(Workload, HostLink)> {
    for tool in ["/usr/bin/unshare", "/usr/bin/nsenter", "/usr/bin/python3"] {
        if !Path::new(tool).exists() {
            skip(test, &format!("no {tool}"));
            return None;
        }
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        skip(test, "no ip (iproute2) to build the fixture");
        return None;
    }
    let host = HostLink(outside);
    let _ = std::process::Command::new("ip")
        .args(["link", "del", outside])
        .output();
    let w = Workload::start(
        name,
        Path::new("/usr/bin/unshare"),
        &["--net", "/usr/bin/python3", "-c", script],
    );
    w.wait_lines(1, T);
    let pid = w.pid.to_string();
    ip(&[
        "link", "add", inside, "type", "veth", "peer", "name", outside,
    ]);
    ip(&["link", "set", inside, "netns", &pid]);
    ip_in(w.pid, &["link", "set", "lo", "up"]);
    ip_in(
        w.pid,
        &["addr", "add", &format!("{subnet}.2/24"), "dev", inside],
    );
    ip_in(w.pid, &["link", "set", inside, "up"]);
    outer_end_up(outside, subnet);
    Some((w, host))
}

/// Gives the outer end of the test's veth its address and brings it up (again after a
/// restore, which makes it anew).
fn outer_end_up(outside: &str, subnet: &str) {
    ip(&["addr", "add", &format!("{subnet}.1/24"), "dev", outside]);
    ip(&["link", "set", outside, "up"]);
}

/// Waits until the kernel has cleaned up a dead namespace, and the veth with it.
fn wait_link_gone(link: &str) {
    let end = Instant::now() + T;
    while Path::new(&format!("/sys/class/net/{link}")).exists() && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
}

const COUNT_SERVER: &str = r#"
import socket, sys
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7079))
s.listen(8)
# The count goes through a unix socketpair: sock_diag must find it inside the namespace.
a, b = socket.socketpair()
print("ready", flush=True)
n = 0
while True:
    c, _ = s.accept()
    n += 1
    a.send(b"%d" % n)
    c.sendall(b"count %s\n" % b.recv(16))
    c.close()
    print("served", n, flush=True)
"#;

#[test]
fn network_namespace_with_a_veth_comes_back_and_its_server_answers() {
    let _g = serial_root!();
    let (inside, outside) = ("stv0", "sth0");
    let Some((w, _host)) = server_behind_veth(
        test_name!(),
        "netns",
        COUNT_SERVER,
        (inside, outside),
        "10.79.0",
    ) else {
        return;
    };
    let pid = w.pid.to_string();
    // More than the defaults: MTU and MAC (a link's MAC is set while it is down), a route.
    ip_in(w.pid, &["link", "set", inside, "down"]);
    ip_in(
        w.pid,
        &[
            "link",
            "set",
            inside,
            "mtu",
            "1400",
            "address",
            "02:00:00:00:79:02",
        ],
    );
    ip_in(w.pid, &["link", "set", inside, "up"]);
    ip_in(
        w.pid,
        &[
            "route",
            "add",
            "10.80.0.0/16",
            "via",
            "10.79.0.1",
            "metric",
            "50",
        ],
    );
    // Policy routing, as a VPN client sets it up: a table of its own and a rule into it.
    ip_in(
        w.pid,
        &[
            "route",
            "add",
            "10.81.0.0/16",
            "via",
            "10.79.0.1",
            "table",
            "100",
        ],
    );
    ip_in(
        w.pid,
        &[
            "rule", "add", "fwmark", "0x9", "lookup", "100", "priority", "1000",
        ],
    );
    // A static neighbour entry, as some CNI plugins set a gateway's.
    let neigh = "neigh add 10.79.0.9 lladdr 02:00:00:00:79:09 dev stv0 nud permanent";
    ip_in(w.pid, &neigh.split(' ').collect::<Vec<_>>());
    let neigh_before = ip_in(w.pid, &["neigh", "show", "nud", "permanent"]);
    assert!(neigh_before.contains("10.79.0.9"), "{neigh_before}");
    assert_eq!(ask("10.79.0.2:7079"), Some(1), "the server answers before");
    let routes_before = ip_in(w.pid, &["-4", "route", "show", "table", "all"]);
    let rules_before = ip_in(w.pid, &["rule", "show"]);
    assert!(rules_before.contains("lookup 100"), "{rules_before}");
    // Device sysctls off their defaults (of `all`, `default`, the veth and lo) and a unix one.
    let mut sysctls = vec![
        ("ipv4/conf/all/log_martians", "1"),
        ("ipv4/conf/default/arp_ignore", "2"),
        ("ipv4/conf/stv0/rp_filter", "2"),
        ("ipv4/conf/stv0/forwarding", "1"),
        ("ipv4/conf/lo/route_localnet", "1"),
        ("unix/max_dgram_qlen", "77"),
    ];
    if Path::new("/proc/sys/net/ipv6").exists() {
        sysctls.push(("ipv6/conf/stv0/hop_limit", "33"));
    }
    for (key, value) in &sysctls {
        assert_eq!(net_sysctl(w.pid, key, Some(value)), *value, "{key} set");
    }

    let img = w.images();
    dump_to(&img, &pid, &[]);
    reap(w.pid);
    for f in [
        "netdev-6.img",
        "ifaddr-6.img",
        "route-6.img",
        "rule-6.img",
        "neigh-6.img",
        "netns-6.img",
    ] {
        assert!(img.join(f).exists(), "{f} written");
    }
    // The namespace died with the tree, and the veth pair with it.
    wait_link_gone(outside);
    wait_pid_gone(w.pid);

    let pair = format!("{inside}={outside}");
    restore_from(&img, &["--veth-pair", &pair]);
    outer_end_up(outside, "10.79.0");
    let link = ip_in(w.pid, &["-o", "link", "show", inside]);
    kill_on_panic(w.pid, || {
        assert!(link.contains("mtu 1400"), "{link}");
        assert!(link.contains("02:00:00:00:79:02"), "{link}");
        assert!(ip_in(w.pid, &["-o", "-4", "addr"]).contains("10.79.0.2/24"));
        assert_eq!(
            ip_in(w.pid, &["-4", "route", "show", "table", "all"]),
            routes_before
        );
        assert_eq!(ip_in(w.pid, &["rule", "show"]), rules_before);
        assert_eq!(
            ip_in(w.pid, &["neigh", "show", "nud", "permanent"]),
            neigh_before
        );
        for (key, value) in &sysctls {
            assert_eq!(net_sysctl(w.pid, key, None), *value, "{key} after restore");
        }
        // The same process, its count carried on, answering through the restored veth.
        assert_eq!(ask("10.79.0.2:7079"), Some(2));
    });
    kill_tree(&[w.pid]);
}

/// /proc/sys/net/`key` in `pid`'s network namespace, written first when a value is given.
fn net_sysctl(pid: u32, key: &str, value: Option<&str>) -> String {
    let path = format!("/proc/sys/net/{key}");
    let script = match value {
        Some(v) => format!("echo {v} > {path} && cat {path}"),
        None => format!("cat {path}"),
    };
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "sh", "-c", &script])
        .output()
        .expect("nsenter");
    assert!(out.status.success(), "{script}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `stasis dump -t PID -D IMG -o dump.log -v4 EXTRA...`, which must succeed.
fn dump_to(img: &Path, pid: &str, extra: &[&str]) {
    let mut args = vec!["dump", "-t", pid, "-D", img.to_str().expect("utf8")];
    args.extend_from_slice(&["-o", "dump.log", "-v4"]);
    args.extend_from_slice(extra);
    check_ok("dump", &stasis(&args));
}

/// `stasis restore -D IMG -d -o restore.log -v4 EXTRA...`, which must succeed.
fn restore_from(img: &Path, extra: &[&str]) {
    let mut args = vec!["restore", "-D", img.to_str().expect("utf8"), "-d"];
    args.extend_from_slice(&["-o", "restore.log", "-v4"]);
    args.extend_from_slice(extra);
    check_ok("restore", &stasis(&args));
}

fn wait_pid_gone(pid: u32) {
    let end = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < end {
        reap(pid);
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs the checks; a failure kills the restored tree before it propagates.
fn kill_on_panic(pid: u32, f: impl FnOnce()) {
    if let Err(p) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        kill_tree(&[pid]);
        std::panic::resume_unwind(p);
    }
}

/// Deletes a named network namespace (`ip netns add`) whatever happens.
struct NamedNetns(&'static str);
impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", self.0])
            .output();
    }
}

#[test]
fn external_network_namespace_is_joined_through_inherit_fd() {
    let _g = serial_root!();
    for tool in ["/usr/bin/nsenter", "/usr/bin/python3"] {
        if !Path::new(tool).exists() {
            skip(test_name!(), &format!("no {tool}"));
            return;
        }
    }
    if std::process::Command::new("ip").arg("-V").output().is_err() {
        skip(test_name!(), "no ip (iproute2) to make the namespace");
        return;
    }
    let name = "stasis-ext-test";
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", name])
        .output();
    ip(&["netns", "add", name]);
    let _ns = NamedNetns(name);
    let ns_path = format!("/run/netns/{name}");
    let ino = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&ns_path).expect("netns file").ino()
    };
    let w = Workload::start(
        "extnet",
        Path::new("/usr/bin/nsenter"),
        &[
            &format!("--net={ns_path}"),
            "/usr/bin/python3",
            "-c",
            "import time\nn = 0\nwhile True:\n    print(n, flush=True); n += 1; time.sleep(0.05)",
        ],
    );
    w.wait_lines(3, T);
    let img = w.images();
    let img_s = img.to_str().expect("utf8");
    let pid = w.pid.to_string();
    // Without --external the tree's namespace would be saved and made anew; runc names the
    // one it manages instead.
    let ext = format!("net[{ino}]:extRootNetNS");
    dump_to(&img, &pid, &["--external", &ext]);
    reap(w.pid);
    wait_pid_gone(w.pid);
    assert!(
        !img.join("netdev-6.img").exists(),
        "an external namespace is not saved"
    );
    let refused = stasis(&["restore", "-D", img_s, "-d", "-o", "restore-1.log"]);
    assert!(!refused.status.success());
    let e = String::from_utf8_lossy(&refused.stderr);
    assert!(e.contains("--inherit-fd fd[N]:extRootNetNS"), "{e}");
    // The namespace handed over as fd 5 of stasis, as runc hands it as one of criu's.
    let cmd = format!(
        "exec 5<{ns_path}; exec {} restore -D {img_s} -d -o restore.log -v4 --inherit-fd 'fd[5]:extRootNetNS'",
        stasis_bin().display()
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &cmd])
        .output()
        .expect("bash");
    check_ok("restore", &out);
    let now = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{}/ns/net", w.pid)).map(|m| m.ino())
    };
    let n = w.lines().len();
    let after = w.wait_lines(n + 3, T);
    kill_tree(&[w.pid]);
    assert_eq!(now.ok(), Some(ino), "back in the same namespace");
    counter_is_continuous(&after);
}

#[test]
fn join_ns_restores_into_an_existing_uts_namespace() {
    let _g = serial_root!();
    if !Path::new("/usr/bin/unshare").exists() {
        skip(test_name!(), "no /usr/bin/unshare (util-linux)");
        return;
    }
    // A namespace to join, held by a sleeper, named "joined".
    let holder = Workload::start(
        "uts-holder",
        Path::new("/usr/bin/unshare"),
        &[
            "--uts",
            "/bin/sh",
            "-c",
            "hostname joined && echo up && exec sleep 1000",
        ],
    );
    holder.wait_lines(1, T);
    let ns_ino = |pid: u32| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/{pid}/ns/uts"))
            .map(|m| m.ino())
            .ok()
    };
    let w = Workload::start(
        "uts-own",
        Path::new("/usr/bin/unshare"),
        &[
            "--uts",
            "/bin/sh",
            "-c",
            "hostname own && exec /usr/bin/python3 -c 'import socket,time\nn=0\nwhile True:\n    print(n, socket.gethostname(), flush=True); n+=1; time.sleep(0.05)'",
        ],
    );
    w.wait_lines(3, T);
    assert!(w.lines()[0].ends_with(" own"));
    let img = w.images();
    let pid = w.pid.to_string();
    dump_to(&img, &pid, &[]);
    reap(w.pid);
    wait_pid_gone(w.pid);
    let join = format!("uts:{}", holder.pid);
    restore_from(&img, &["--join-ns", &join]);
    let n = w.lines().len();
    let after = w.wait_lines(n + 3, T);
    let (mine, theirs) = (ns_ino(w.pid), ns_ino(holder.pid));
    kill_tree(&[w.pid]);
    assert_eq!(mine, theirs, "restored into the joined namespace");
    let last = after.last().expect("a line");
    assert!(
        last.ends_with(" joined"),
        "the joined namespace's name: {last}"
    );
    let counts: Vec<String> = after
        .iter()
        .map(|l| l.split_whitespace().next().unwrap_or("").to_string())
        .collect();
    counter_is_continuous(&counts);
}

const ECHO_SERVER: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 7078))
s.listen(1)
print("ready", flush=True)
c, _ = s.accept()
n = 0
f = c.makefile("rb")
for line in f:
    n += 1
    c.sendall(b"%d %s" % (n, line))
"#;

#[test]
fn tcp_connection_into_a_network_namespace_survives() {
    use std::io::{BufRead, Write};
    let _g = serial_root!();
    let (inside, outside) = ("stt0", "sth1");
    let Some((w, _host)) = server_behind_veth(
        test_name!(),
        "netns-tcp",
        ECHO_SERVER,
        (inside, outside),
        "10.81.0",
    ) else {
        return;
    };
    let pid = w.pid.to_string();
    let addr: std::net::SocketAddr = "10.81.0.2:7078".parse().expect("addr");
    let mut conn = std::net::TcpStream::connect_timeout(&addr, T).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(15)))
        .expect("timeout");
    let mut rd = std::io::BufReader::new(conn.try_clone().expect("dup"));
    let mut exchange = |what: &str| -> String {
        conn.write_all(format!("{what}\n").as_bytes())
            .expect("send");
        let mut line = String::new();
        rd.read_line(&mut line).expect("answer");
        line.trim().to_string()
    };
    assert_eq!(exchange("a"), "1 a");

    let img = w.images();
    dump_to(&img, &pid, &["--tcp-established"]);
    reap(w.pid);
    wait_pid_gone(w.pid);
    wait_link_gone(outside);
    let pair = format!("{inside}={outside}");
    restore_from(&img, &["--tcp-established", "--veth-pair", &pair]);
    outer_end_up(outside, "10.81.0");
    let answer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| exchange("b")));
    kill_tree(&[w.pid]);
    assert_eq!(
        answer.expect("the connection answers"),
        "2 b",
        "same connection, same count"
    );
}

#[test]
fn time_namespace_clocks_read_on_from_the_dump() {
    let _g = serial_root!();
    if !Path::new("/proc/self/ns/time").exists() {
        skip(test_name!(), "no time namespaces in this kernel");
        return;
    }
    let script = "import time\nwhile True:\n    print('%.3f %.3f' % (time.clock_gettime(time.CLOCK_MONOTONIC), time.clock_gettime(time.CLOCK_BOOTTIME)), flush=True)\n    time.sleep(0.05)";
    let w = Workload::start(
        "timens",
        Path::new("/usr/bin/unshare"),
        &[
            "--time",
            "--fork",
            "--monotonic",
            "100000",
            "--boottime",
            "50000",
            "/usr/bin/python3",
            "-c",
            script,
        ],
    );
    w.wait_lines(3, T);
    let init = init_of(w.pid);
    let img = w.images();
    dump_to(&img, &init.to_string(), &[]);
    reap(w.pid);
    wait_pid_gone(init);
    let before = w.lines();
    // Lines of two clocks (unshare, the parent, may print its own when its child dies).
    let clocks = |l: &String| -> Option<(f64, f64)> {
        let v: Vec<f64> = l
            .split_whitespace()
            .filter_map(|x| x.parse().ok())
            .collect();
        (v.len() == 2).then(|| (v[0], v[1]))
    };
    let (mono0, boot0) = before.iter().rev().find_map(clocks).expect("a clock line");
    // Time spent checkpointed must not show.
    std::thread::sleep(Duration::from_secs(2));
    restore_from(&img, &[]);
    let after = w.wait_lines(before.len() + 3, T);
    let host_mono = nix_mono();
    let in_own_ns = {
        use std::os::unix::fs::MetadataExt;
        let ino = |p: &str| std::fs::metadata(p).map(|m| m.ino()).ok();
        ino(&format!("/proc/{init}/ns/time")) != ino("/proc/self/ns/time")
    };
    kill_tree(&[init]);
    let (mono1, boot1) = after[before.len()..]
        .iter()
        .find_map(clocks)
        .expect("a clock line after the restore");
    assert!(in_own_ns, "restored into a time namespace of its own");
    assert!(
        mono1 - mono0 < 1.0 && mono1 > mono0,
        "monotonic reads on: {mono0} then {mono1}"
    );
    assert!(
        boot1 - boot0 < 1.0 && boot1 > boot0,
        "boottime: {boot0} then {boot1}"
    );
    assert!(
        mono1 > host_mono + 90_000.0,
        "the offset is kept: {mono1} vs host {host_mono}"
    );
}

fn nix_mono() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime into a local timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// Both ends of a loopback connection in the tree's own network namespace (an app and its
/// database in one container): the namespace is made anew at restore, locked again while the
/// connections are rebuilt (else the first end out of repair mode talks to a peer not made
/// yet and is reset), and the two go on exchanging lines.
#[test]
fn loopback_connection_inside_a_network_namespace_of_its_own_survives() {
    let _g = serial_root!();
    if missing_tools(test_name!(), &["ip"]) {
        return;
    }
    let script = r#"
import ctypes, os, socket, time
libc = ctypes.CDLL(None, use_errno=True)
assert libc.unshare(0x40000000) == 0, ctypes.get_errno()
assert os.system("ip link set lo up") == 0
srv = socket.socket(); srv.bind(("127.0.0.1", 7090)); srv.listen(1)
if os.fork() == 0:
    c, _ = srv.accept(); srv.close()
    for line in c.makefile("rb"): c.sendall(b"echo " + line)
    os._exit(0)
cl = socket.create_connection(("127.0.0.1", 7090))
f = cl.makefile("rb")
n = 0
while True:
    n += 1
    cl.sendall(b"%d\n" % n)
    print(f.readline().decode().strip(), flush=True)
    time.sleep(0.02)
"#;
    let w = Workload::python("netns-loopback", script);
    w.wait_lines(5, T);
    let pids = dump_kill_restore_with(&w, &["--tcp-established"], &["--tcp-established"]);
    let n = w.lines().len();
    let lines = w.wait_lines(n + 20, T);
    kill_tree(&pids);
    assert!(
        lines.len() >= n + 20,
        "the exchange goes on: {:?}",
        &lines[n.saturating_sub(3)..]
    );
    for (i, l) in lines.iter().enumerate() {
        assert_eq!(
            l,
            &format!("echo {}", i + 1),
            "line {i}, no reset, nothing lost"
        );
    }
}
