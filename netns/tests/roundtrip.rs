//! Privileged: a namespace with a veth (MTU, MAC, IPv4 and IPv6 addresses, default and metric
//! routes) is dumped, its images written and read back, the namespace deleted, a fresh one
//! restored from the images, compared with the original through `ip`, and TCP carried across
//! the veth both ways, over IPv4 and IPv6, through the restored gateway routes. The fixture is
//! built and checked with `ip` (only the product code must not run it). Needs root: prints
//! SKIP otherwise.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use stasis_netns::{dump, restore, Family, LinkKind, NetImages, NetState, Restored, VethPair};

/// Deletes what the test made, on every path (the guard outlives any failed assert).
#[derive(Default)]
struct Cleanup {
    netns: Vec<String>,
    links: Vec<String>,
    dirs: Vec<PathBuf>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for l in &self.links {
            let _ = Command::new("ip").args(["link", "del", l]).output();
        }
        for n in &self.netns {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
        for d in &self.dirs {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn skip() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root");
    }
    if Command::new("ip").arg("-V").output().is_err() {
        return Some("no ip binary for the fixture");
    }
    None
}

/// What `ip` shows of a namespace, with what legitimately differs after a restore taken out:
/// interface indexes (`N:`, `@ifN`: the host end is a new link), the netnsid of the peer, and
/// whether the link-local address is still tentative.
fn snapshot(ns: &str) -> Vec<String> {
    let mut out = Vec::new();
    for line in ip(&["-n", ns, "-o", "link", "show"]).lines() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        let name = toks[1].trim_end_matches(':');
        let name = name.split('@').next().unwrap_or(name);
        let mut keep = vec![format!("link {name}"), toks[2].to_string()];
        for key in ["mtu", "master", "state", "link/ether", "link/loopback"] {
            if let Some(i) = toks.iter().position(|t| *t == key) {
                keep.push(format!("{key} {}", toks.get(i + 1).unwrap_or(&"")));
            }
        }
        out.push(keep.join(" "));
    }
    for line in ip(&["-n", ns, "-o", "addr", "show"]).lines() {
        // Duplicate address detection of the kernel's link-local address may still run.
        let toks: Vec<&str> = line
            .split_whitespace()
            .skip(1)
            .filter(|t| *t != "tentative")
            .collect();
        out.push(format!("addr {}", toks.join(" ").replace('\\', "")));
    }
    for fam in ["-4", "-6"] {
        for line in ip(&["-n", ns, fam, "route", "show", "table", "all"]).lines() {
            // The local table is the kernel's, made again from the addresses, in its own
            // order; multicast routes likewise.
            if !line.contains("table local") && !line.starts_with("multicast") {
                out.push(format!("route{fam} {line}"));
            }
        }
        for line in ip(&["-n", ns, fam, "rule", "show"]).lines() {
            out.push(format!("rule{fam} {line}"));
        }
        for line in ip(&["-n", ns, fam, "neigh", "show", "nud", "permanent"]).lines() {
            out.push(format!("neigh{fam} {line}"));
        }
    }
    out.sort();
    out
}

fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Connects from inside `ns` to `to` (a listener in this namespace) and checks a byte
/// exchange both ways.
fn tcp_from_inside(ns: BorrowedFd<'_>, to: SocketAddr, listener: &TcpListener) {
    std::thread::scope(|s| {
        let client = s.spawn(move || {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).expect("setns");
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(5))
                .unwrap_or_else(|e| panic!("connect to {to} from the restored namespace: {e}"));
            c.write_all(b"ping").unwrap();
            let mut buf = [0u8; 4];
            c.read_exact(&mut buf).unwrap();
            assert_eq!(&buf, b"pong");
            c.local_addr().unwrap()
        });
        listener.set_nonblocking(false).unwrap();
        let (mut conn, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 4];
        conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        conn.write_all(b"pong").unwrap();
        assert_eq!(client.join().unwrap(), peer);
    });
}

/// `ip -n NS ARGS...`, the arguments given as one line.
fn ipn(ns: &str, line: &str) -> String {
    let mut a = vec!["-n", ns];
    a.extend(line.split_whitespace());
    ip(&a)
}

fn make_fixture(src: &str, host_end: &str) {
    ip(&["netns", "add", src]);
    ip(
        &format!("link add {host_end} type veth peer name eth0 netns {src}")
            .split_whitespace()
            .collect::<Vec<_>>(),
    );
    ip(&["link", "set", host_end, "up"]);
    for line in [
        "link set lo up",
        "link set eth0 address 02:77:00:00:00:02 mtu 1400",
        "addr add 10.77.0.2/24 dev eth0",
        "addr add fd77::2/64 dev eth0 nodad",
        "link set eth0 up",
        "route add default via 10.77.0.1",
        "route add 10.78.0.0/16 via 10.77.0.1 metric 50",
        "route add 10.81.0.0/16 via 10.77.0.1 mtu 1300 advmss 1200",
        "-6 route add default via fd77::1",
        // A pair with both ends inside, of its own MTU, one end with an address and a device
        // route.
        "link add inA mtu 1300 type veth peer name inB mtu 1300",
        "link set inB address 02:79:00:00:00:0b",
        "addr add 10.79.0.1/24 dev inA",
        "link set inA up",
        "link set inB up",
        "route add 10.80.0.0/16 dev inA metric 7",
        // Policy routing, as a VPN client sets it up: a rule and a table of its own.
        "route add 10.90.0.0/16 via 10.77.0.1 table 100",
        "-6 route add fd90::/64 via fd77::1 table 100",
        "rule add fwmark 0x9 lookup 100 priority 1000",
        "-6 rule add from fd77::/64 lookup 100 priority 1001",
        // A bridge with an address, and inB its port.
        "link add br9 type bridge",
        "link set inB master br9",
        "addr add 10.82.0.1/24 dev br9",
        "link set br9 up",
        // Static neighbour entries, as some CNI plugins set a gateway's.
        "neigh add 10.77.0.9 lladdr 02:77:00:00:00:09 dev eth0 nud permanent",
        "-6 neigh add fd77::9 lladdr 02:77:00:00:00:09 dev eth0 nud permanent",
    ] {
        ipn(src, line);
    }
}

fn check_dump(state: &NetState) {
    let eth0 = state.links.iter().find(|l| l.name == "eth0").expect("eth0");
    assert!(matches!(
        eth0.kind,
        LinkKind::Veth {
            peer_netnsid: Some(_),
            ..
        }
    ));
    assert_eq!(eth0.mtu, 1400);
    // The two static entries, none the kernel learned.
    let mut neigh: Vec<String> = state.neighbours.iter().map(|n| n.dst.to_string()).collect();
    neigh.sort();
    assert_eq!(neigh, ["10.77.0.9", "fd77::9"], "{:?}", state.neighbours);
    assert!(state.neighbours.iter().all(|n| n.ifindex == eth0.ifindex));
    assert_eq!(eth0.mac.as_deref(), Some(&[2, 0x77, 0, 0, 0, 2][..]));
    assert!(eth0.is_up());
    let lo = state.links.iter().find(|l| l.name == "lo").expect("lo");
    assert_eq!(lo.kind, LinkKind::Loopback);
    let has_addr = |a: &str, p: u8| {
        state
            .addrs
            .iter()
            .any(|x| x.address.to_string() == a && x.prefix_len == p && x.ifindex == eth0.ifindex)
    };
    assert!(
        has_addr("10.77.0.2", 24) && has_addr("fd77::2", 64),
        "{:#?}",
        state.addrs
    );
    // The two rules the fixture added, the namespace's defaults told apart from them.
    let added: Vec<(u32, u32)> = state
        .rules
        .iter()
        .filter(|r| !r.is_default())
        .map(|r| (r.priority, r.table))
        .collect();
    assert_eq!(added, vec![(1000, 100), (1001, 100)], "{:#?}", state.rules);
    assert_eq!(
        state.rules.len(),
        2 + 3 + 2,
        "the defaults: 3 for IPv4, 2 for IPv6"
    );
    assert!(state.routes.iter().any(|r| r.table == 100));
    let gw4 = "10.77.0.1".parse().ok();
    let defaults: Vec<_> = state.routes.iter().filter(|r| r.dst.is_none()).collect();
    assert!(defaults
        .iter()
        .any(|r| r.family == Family::V4 && r.gateway == gw4));
    assert!(defaults
        .iter()
        .any(|r| r.family == Family::V6 && r.gateway == "fd77::1".parse().ok()));
    assert!(state
        .routes
        .iter()
        .any(|r| r.dst == "10.78.0.0".parse().ok()
            && r.dst_len == 16
            && r.priority == Some(50)
            && r.gateway == gw4
            && r.oif == Some(eth0.ifindex)));
    let in_a = state.links.iter().find(|l| l.name == "inA").expect("inA");
    let in_b = state.links.iter().find(|l| l.name == "inB").expect("inB");
    assert_eq!(
        in_a.kind,
        LinkKind::Veth {
            peer_ifindex: in_b.ifindex,
            peer_netnsid: None
        }
    );
    let br9 = state.links.iter().find(|l| l.name == "br9").expect("br9");
    assert_eq!(br9.kind, LinkKind::Bridge);
    assert_eq!(in_b.master, Some(br9.ifindex));
    // The kernel's prefix routes are kept (as `ip route save` keeps them), marked as such.
    assert!(state.routes.iter().any(|r| r.is_kernel()));
}

/// Writes the raw images to `dir` and reads them back (the netdev entries are the engine's
/// to frame; they go through as values).
fn images_round_trip(state: &NetState, dir: &std::path::Path) -> NetState {
    let images = state.to_images();
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in [
        ("ifaddr-9.img", &images.ifaddr),
        ("route-9.img", &images.route),
        ("route6-9.img", &images.route6),
        ("rule-9.img", &images.rule),
        ("neigh-9.img", &images.neigh),
    ] {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
    let read = |n: &str| std::fs::read(dir.join(n)).unwrap();
    let back = NetImages {
        netdev: images.netdev.clone(),
        ifaddr: read("ifaddr-9.img"),
        route: read("route-9.img"),
        route6: read("route6-9.img"),
        rule: read("rule-9.img"),
        neigh: read("neigh-9.img"),
    };
    assert_eq!(back, images);
    NetState::from_images(&back).expect("images read back")
}

/// Runs `ip ARGS` with `input` as its standard input.
fn ip_stdin(args: &[&str], input: &[u8]) -> String {
    use std::process::Stdio;
    let mut child = Command::new("ip")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run ip");
    child.stdin.take().unwrap().write_all(input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `ip ARGS` and returns its standard output as bytes (`ip ... save` writes binary).
fn ip_bytes(args: &[&str]) -> Vec<u8> {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(out.status.success(), "ip {}", args.join(" "));
    out.stdout
}

/// The images are iproute2's format both ways: `ip ... showdump` reads ours, and what
/// `ip ... save` writes (as CRIU stores it) reads back as the same state.
fn images_match_iproute2(src: &str, state: &NetState) {
    let images = state.to_images();
    let shown = ip_stdin(&["addr", "showdump"], &images.ifaddr);
    assert!(
        shown.contains("10.77.0.2/24") && shown.contains("fd77::2/64"),
        "{shown}"
    );
    let shown = ip_stdin(&["route", "showdump"], &images.route);
    assert!(shown.contains("10.78.0.0/16 via 10.77.0.1"), "{shown}");
    let shown = ip_stdin(&["-6", "route", "showdump"], &images.route6);
    assert!(shown.contains("default via fd77::1"), "{shown}");

    let theirs = NetImages {
        netdev: images.netdev.clone(),
        ifaddr: ip_bytes(&["-n", src, "addr", "save"]),
        route: ip_bytes(&["-n", src, "-4", "route", "save", "table", "all"]),
        route6: ip_bytes(&["-n", src, "-6", "route", "save", "table", "all"]),
        // `ip rule save` saves IPv4 rules only (as CRIU's image holds them): ours has both.
        rule: ip_bytes(&["-n", src, "-4", "rule", "save"]),
        // No `ip neigh save`: the neighbour entries are checked against `ip neigh` after
        // the restore.
        neigh: Vec::new(),
    };
    let mut theirs = NetState::from_images(&theirs).expect("ip's images");
    let mut ours = state.clone();
    // The headers differ (ip's own sequence numbers and port); the contents must not.
    for s in [&mut theirs, &mut ours] {
        s.addrs.iter_mut().for_each(|a| a.raw.clear());
        s.routes.iter_mut().for_each(|r| r.raw.clear());
        s.rules.iter_mut().for_each(|r| r.raw.clear());
        s.routes
            .sort_by_key(|r| (r.family == Family::V6, r.table, format!("{r}")));
    }
    ours.rules.retain(|r| r.family == Family::V4);
    ours.neighbours.clear();
    assert_eq!(theirs, ours, "ip addr/route/rule save read back");
}

#[test]
fn veth_namespace_is_dumped_and_restored_with_addresses_and_routes() {
    if let Some(why) = skip() {
        eprintln!("SKIP veth_namespace_is_dumped_and_restored: {why}");
        return;
    }
    let tag = std::process::id() % 100_000;
    let (src, dst) = (
        format!("stasis-nt-src-{tag}"),
        format!("stasis-nt-dst-{tag}"),
    );
    let (old_host, new_host) = (format!("snt{tag}a"), format!("snt{tag}b"));
    let mut cleanup = Cleanup::default();
    cleanup.netns = vec![src.clone(), dst.clone()];
    cleanup.links = vec![old_host.clone(), new_host.clone()];
    let dir = std::env::temp_dir().join(format!("stasis-netns-test-{tag}"));
    cleanup.dirs.push(dir.clone());

    make_fixture(&src, &old_host);
    // A macvlan on the host end of the veth, moved in: made again on the new host end.
    let mv = format!("snt{tag}m");
    ip(&[
        "link", "add", &mv, "link", &old_host, "mtu", "1400", "type", "macvlan", "mode", "bridge",
    ]);
    ip(&["link", "set", &mv, "netns", &src]);
    for line in [
        format!("link set {mv} name mv0"),
        "link set mv0 address 02:7a:00:00:00:05".to_string(),
        "addr add 10.83.0.2/24 dev mv0".to_string(),
        "link set mv0 up".to_string(),
    ] {
        ipn(&src, &line);
    }
    let link_locals = |ns: &str| {
        ip(&["-n", ns, "-6", "-o", "addr", "show", "scope", "link"])
            .lines()
            .count()
    };
    wait_for("the original's link-local addresses", || {
        link_locals(&src) == 5
    });
    wait_for("the original's br9 up", || {
        ip(&["-n", &src, "-o", "link", "show", "br9"]).contains("state UP")
    });
    let before = snapshot(&src);

    let state = {
        let ns = File::open(format!("/run/netns/{src}")).unwrap();
        dump(ns.as_fd()).expect("dump")
    };
    check_dump(&state);
    let back = images_round_trip(&state, &dir);
    let mut kept = state.clone();
    // The IPv6 defaults are not written: every namespace has them.
    kept.rules
        .retain(|r| r.family == Family::V4 || !r.is_default());
    assert_eq!(back, kept, "images round trip");
    images_match_iproute2(&src, &state);

    // The original goes (its host end with it), a fresh namespace takes its place.
    ip(&["netns", "del", &src]);
    ip(&["netns", "add", &dst]);
    let ns = File::open(format!("/run/netns/{dst}")).unwrap();
    let pairs = [format!("eth0={new_host}").parse::<VethPair>().unwrap()];
    let parents = [("mv0".to_string(), new_host.clone())];
    let done: Restored = restore(ns.as_fd(), &back, &pairs, &parents).expect("restore");
    assert_eq!(done.host_ends, vec![("eth0".to_string(), new_host.clone())]);
    let eth0 = state.links.iter().find(|l| l.name == "eth0").unwrap();
    assert!(
        done.ifindexes.contains(&(eth0.ifindex, eth0.ifindex)),
        "{done:?}"
    );

    // The host end, as a network script would set it up.
    ip(&["addr", "add", "10.77.0.1/24", "dev", &new_host]);
    ip(&["addr", "add", "10.78.0.9/32", "dev", &new_host]);
    ip(&["-6", "addr", "add", "fd77::1/64", "dev", &new_host, "nodad"]);
    ip(&[
        "-6",
        "addr",
        "add",
        "fd78::9/128",
        "dev",
        &new_host,
        "nodad",
    ]);
    ip(&["link", "set", &new_host, "up"]);
    wait_for("eth0 carrier", || {
        ip(&["-n", &dst, "-o", "link", "show", "eth0"]).contains("LOWER_UP")
    });
    // The kernel's link-local addresses are back (left to it, not re-added).
    wait_for("link-local addresses", || link_locals(&dst) == 5);
    // A bridge's operational state follows its ports' a moment after it is up.
    wait_for("br9 up", || {
        ip(&["-n", &dst, "-o", "link", "show", "br9"]).contains("state UP")
    });
    let after = snapshot(&dst);
    assert_eq!(
        before, after,
        "the restored namespace differs from the original"
    );

    // Through the gateway routes: 10.78.0.0/16 via 10.77.0.1 and the IPv6 default route.
    for to in ["10.78.0.9:0", "[fd78::9]:0"] {
        let listener = TcpListener::bind(to).unwrap();
        let addr = listener.local_addr().unwrap();
        tcp_from_inside(ns.as_fd(), addr, &listener);
    }
    // And towards the namespace from the host side: a listener inside, connected from here.
    let inside = std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            TcpListener::bind("10.77.0.2:0").unwrap()
        })
        .join()
        .unwrap()
    });
    let mut c = TcpStream::connect_timeout(&inside.local_addr().unwrap(), Duration::from_secs(5))
        .expect("connect into the restored namespace");
    let (mut conn, _) = inside.accept().unwrap();
    c.write_all(b"x").unwrap();
    let mut b = [0u8; 1];
    conn.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"x");
}

#[test]
fn unsupported_links_and_taken_names_are_errors_naming_them() {
    if let Some(why) = skip() {
        eprintln!("SKIP unsupported_links_and_taken_names_are_errors_naming_them: {why}");
        return;
    }
    let tag = std::process::id() % 100_000;
    let (a, b) = (
        format!("stasis-nt-br-{tag}"),
        format!("stasis-nt-new-{tag}"),
    );
    let (out, taken) = (format!("snt{tag}o"), format!("snt{tag}t"));
    let (bridge, out2) = (format!("snt{tag}br"), format!("snt{tag}q"));
    let mut cleanup = Cleanup::default();
    cleanup.netns = vec![a.clone(), b.clone()];
    cleanup.links = vec![out.clone(), taken.clone(), bridge.clone(), out2.clone()];
    let host = |line: String| ip(&line.split_whitespace().collect::<Vec<_>>());

    ip(&["netns", "add", &a]);
    ipn(&a, "link add vx9 type vxlan id 9 dstport 4789");
    let ns = File::open(format!("/run/netns/{a}")).unwrap();
    let e = dump(ns.as_fd()).unwrap_err().to_string();
    assert!(e.contains("vx9") && e.contains("vxlan"), "{e}");
    ipn(&a, "link del vx9");

    // A host-side name already in use: the kernel's EEXIST, with the link named.
    host(format!("link add {out} type veth peer name eth0 netns {a}"));
    let state = dump(ns.as_fd()).expect("dump");
    host(format!("link add {taken} type veth peer name {taken}p"));
    ip(&["netns", "add", &b]);
    let fresh = File::open(format!("/run/netns/{b}")).unwrap();
    let pairs = [VethPair {
        inside: "eth0".into(),
        outside: taken.clone(),
        bridge: None,
    }];
    let err = restore(fresh.as_fd(), &state, &pairs, &[]).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EEXIST), "{err}");
    let text = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(text.contains("eth0") && text.contains(&taken), "{text}");

    // IN=OUT@BRIDGE: the host end is enslaved to the bridge.
    host(format!("link add {bridge} type bridge"));
    let pairs = [format!("eth0={out2}@{bridge}").parse::<VethPair>().unwrap()];
    let done = restore(fresh.as_fd(), &state, &pairs, &[]).expect("restore with a bridge");
    assert_eq!(done.host_ends, vec![("eth0".to_string(), out2.clone())]);
    let shown = ip(&["-o", "link", "show", &out2]);
    assert!(shown.contains(&format!("master {bridge}")), "{shown}");

    // Not a network namespace.
    let not_ns = File::open("/proc/self/ns/uts").unwrap();
    let err = dump(not_ns.as_fd()).unwrap_err();
    assert_eq!(err.errno(), Some(libc::EINVAL), "{err}");
}
