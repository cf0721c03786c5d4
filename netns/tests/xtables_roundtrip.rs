//! Privileged: a network namespace's iptables-legacy and ip6tables-legacy tables (filter with
//! a user chain, jumps, matches with options, a comment, a reject with its option; nat with
//! masquerade and a DNAT; mangle) read with the kernel's socket options and made again in a
//! fresh namespace read back the same in `iptables-legacy-save -c`, counters included; a namespace without tables
//! gets none. Needs root, x_tables in the kernel and the iptables package's legacy binaries
//! (to write and list the fixture): prints SKIP otherwise.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use stasis_netns::xtables;

struct DelNetns(Vec<String>);

impl Drop for DelNetns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

/// New network namespaces named `stasis-xt-<kind>-<tag>`, deleted when the guard drops.
fn fresh_netns(kinds: &[&str]) -> (Vec<String>, DelNetns) {
    let tag = std::process::id() % 100_000;
    let names: Vec<String> = kinds
        .iter()
        .map(|k| format!("stasis-xt-{k}-{tag}"))
        .collect();
    let guard = DelNetns(names.clone());
    for n in &names {
        let out = Command::new("ip")
            .args(["netns", "add", n])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    (names, guard)
}

fn skip() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root");
    }
    if Command::new("iptables-legacy-save")
        .arg("--version")
        .output()
        .is_err()
    {
        return Some("no iptables-legacy binaries (package iptables) to write the fixture");
    }
    None
}

fn in_ns(ns: &str, cmd: &[&str], input: Option<&str>) -> String {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns]).args(cmd);
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("ip netns exec");
    if let Some(i) = input {
        child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `*-save -c` output (counters included) without its comment lines (they carry the time).
fn saved(ns: &str, cmd: &str) -> String {
    in_ns(ns, &[cmd, "-c"], None)
        .lines()
        .filter(|l| !l.starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
}

const V4: &str = "*filter
:INPUT DROP [12:720]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:web - [0:0]
[40:2400] -A INPUT -i lo -j ACCEPT
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A INPUT -p tcp -m tcp --dport 8080 -m comment --comment \"web traffic\" -j web
-A INPUT -s 10.9.0.0/16 -p udp -m multiport --dports 53,5353 -j REJECT --reject-with icmp-port-unreachable
-A web -m limit --limit 10/sec -j ACCEPT
[7:420] -A web -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -p tcp -m tcp --dport 80 -j DNAT --to-destination 10.0.0.2:8080
-A POSTROUTING -o eth0 -j MASQUERADE
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A OUTPUT -p tcp -j MARK --set-xmark 0x2a/0xffffffff
COMMIT
";

const V6: &str = "*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
-A INPUT -s fd00::/8 -p tcp -m tcp --dport 22 -j ACCEPT
-A INPUT -p ipv6-icmp -j ACCEPT
COMMIT
";

#[test]
fn legacy_tables_are_read_and_made_again_the_same() {
    if let Some(why) = skip() {
        eprintln!("SKIP legacy_tables_are_read_and_made_again_the_same: {why}");
        return;
    }
    let (names, _del) = fresh_netns(&["a", "b"]);
    let (src, dst) = (names[0].clone(), names[1].clone());
    // Counters as given (-c), kept through the round trip.
    in_ns(&src, &["iptables-legacy-restore", "-c"], Some(V4));
    in_ns(&src, &["ip6tables-legacy-restore", "-c"], Some(V6));
    let before4 = saved(&src, "iptables-legacy-save");
    let before6 = saved(&src, "ip6tables-legacy-save");
    assert!(before4.contains("--comment \"web traffic\""), "{before4}");
    assert!(before4.contains("[7:420] -A web -j DROP"), "{before4}");

    let a = File::open(format!("/run/netns/{src}")).unwrap();
    let tables = xtables::dump(a.as_fd()).expect("dump");
    let mut names: Vec<_> = tables.iter().map(|t| (t.family, t.name.as_str())).collect();
    names.sort_by_key(|(f, n)| (*f == xtables::XtFamily::V6, n.to_string()));
    assert_eq!(
        names,
        [
            (xtables::XtFamily::V4, "filter"),
            (xtables::XtFamily::V4, "mangle"),
            (xtables::XtFamily::V4, "nat"),
            (xtables::XtFamily::V6, "filter"),
        ]
    );
    let back = xtables::from_image(&xtables::to_image(&tables)).unwrap();
    assert_eq!(back, tables);

    let b = File::open(format!("/run/netns/{dst}")).unwrap();
    xtables::restore(b.as_fd(), &back).expect("restore");
    assert_eq!(saved(&dst, "iptables-legacy-save"), before4);
    assert_eq!(saved(&dst, "ip6tables-legacy-save"), before6);
}

/// A namespace where no legacy table was ever made: none read, and reading makes none.
#[test]
fn namespace_without_legacy_tables_has_none() {
    if let Some(why) = skip() {
        eprintln!("SKIP namespace_without_legacy_tables_has_none: {why}");
        return;
    }
    let (names, _del) = fresh_netns(&["e"]);
    let n = names[0].clone();
    let ns = File::open(format!("/run/netns/{n}")).unwrap();
    assert_eq!(xtables::dump(ns.as_fd()).expect("dump"), vec![]);
    let names = Command::new("ip")
        .args(["netns", "exec", &n, "cat", "/proc/net/ip_tables_names"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&names.stdout), "");
    xtables::restore(ns.as_fd(), &[]).expect("nothing to make");
}

/// CRIU's legacy iptables lock (its `iptables -I INPUT/OUTPUT --protocol tcp -m mark ! --mark
/// 0xC114 --source ... -j DROP` per connection, here for a v4 and a v6 connection) among a
/// firewall of its own (a user chain, a jump to it, counters): the lock rules go, every other
/// rule stays where it was with its counters, and the jump still reaches its chain.
#[test]
fn criu_legacy_lock_rules_are_removed_and_the_rest_kept() {
    if let Some(why) = skip() {
        eprintln!("SKIP criu_legacy_lock_rules_are_removed_and_the_rest_kept: {why}");
        return;
    }
    use stasis_netns::iptlock::LockedConn;
    let (names, _del) = fresh_netns(&["l"]);
    let n = names[0].clone();
    let firewall = "*filter
:INPUT ACCEPT [12:720]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [3:180]
:web - [0:0]
[40:2400] -A INPUT -i lo -j ACCEPT
[5:300] -A INPUT -p tcp -m tcp --dport 8080 -j web
[7:420] -A OUTPUT -p udp -j ACCEPT
[2:120] -A web -j DROP
COMMIT
";
    in_ns(&n, &["iptables-legacy-restore", "-c"], Some(firewall));
    in_ns(
        &n,
        &["ip6tables-legacy-restore", "-c"],
        Some("*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n[9:540] -A INPUT -p ipv6-icmp -j ACCEPT\nCOMMIT\n"),
    );
    // CRIU's commands, for connection local:port -> remote:port (input, then output).
    let lock = |cmd: &str, (l, lp): (&str, u16), (r, rp): (&str, u16)| {
        for (chain, (s, sp), (d, dp)) in [("INPUT", (r, rp), (l, lp)), ("OUTPUT", (l, lp), (r, rp))]
        {
            let rule = format!(
                "-w -t filter -I {chain} --protocol tcp -m mark ! --mark 0xC114 --source {s} \
                 --sport {sp} --destination {d} --dport {dp} -j DROP"
            );
            let mut args = vec![cmd];
            args.extend(rule.split(' '));
            in_ns(&n, &args, None);
        }
    };
    lock("iptables-legacy", ("10.0.0.1", 80), ("10.0.0.2", 5555));
    lock("ip6tables-legacy", ("fd00::1", 443), ("fd00::2", 6666));
    // What must stay: all but the lock rules, as they are now (iptables' own insert has reset
    // the policies' counters, not us).
    let unlocked = |cmd: &str| -> String {
        let all = saved(&n, cmd);
        assert!(all.contains("--mark 0xc114"), "{all}");
        let kept: Vec<&str> = all
            .lines()
            .filter(|l| !l.contains("--mark 0xc114"))
            .collect();
        kept.join("\n")
    };
    let (before4, before6) = (
        unlocked("iptables-legacy-save"),
        unlocked("ip6tables-legacy-save"),
    );
    let conns = [
        LockedConn {
            local: vec![10, 0, 0, 1],
            local_port: 80,
            remote: vec![10, 0, 0, 2],
            remote_port: 5555,
        },
        LockedConn {
            local: "fd00::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec(),
            local_port: 443,
            remote: "fd00::2"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets()
                .to_vec(),
            remote_port: 6666,
        },
    ];
    let ns = File::open(format!("/run/netns/{n}")).unwrap();
    let removed = stasis_netns::in_netns(ns.as_fd(), || {
        Ok(stasis_netns::iptlock_legacy::remove_criu_lock_rules(&conns))
    })
    .unwrap()
    .expect("remove");
    assert_eq!(removed, 4);
    assert_eq!(saved(&n, "iptables-legacy-save"), before4);
    assert_eq!(saved(&n, "ip6tables-legacy-save"), before6);
    // Nothing left to remove.
    let again = stasis_netns::in_netns(ns.as_fd(), || {
        Ok(stasis_netns::iptlock_legacy::remove_criu_lock_rules(&conns))
    })
    .unwrap()
    .expect("remove");
    assert_eq!(again, 0);
}
