//! Privileged: a network namespace's nftables ruleset (two tables, base and regular chains, a
//! named interval set, a verdict map, a named counter, anonymous sets, counters with values,
//! a comment, NAT) read over netlink and made again in a fresh namespace reads back the same
//! in `nft list ruleset`; a network lock's table is left out. Needs root, nf_tables and the
//! `nft` binary (package nftables, to write and list the fixture): prints SKIP otherwise.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::process::{Command, Stdio};

use stasis_netns::nftables;

struct DelNetns(Vec<String>);

impl Drop for DelNetns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).output();
        }
    }
}

fn skip() -> Option<&'static str> {
    if !nix::unistd::geteuid().is_root() {
        return Some("needs root");
    }
    if Command::new("nft").arg("--version").output().is_err() {
        return Some("no nft binary (package nftables) to write the fixture");
    }
    None
}

fn nft_in(ns: &str, args: &[&str], input: Option<&str>) -> String {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", ns, "nft"]).args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("nft");
    if let Some(i) = input {
        child.stdin.take().unwrap().write_all(i.as_bytes()).unwrap();
    }
    drop(child.stdin.take());
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "nft {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

const RULESET: &str = r#"
table inet filter {
    set blocked {
        type ipv4_addr
        flags interval
        elements = { 10.1.0.0/16, 192.168.9.9 }
    }
    map ports {
        type inet_service : verdict
        elements = { 8080 : jump web }
    }
    counter hits {
        packets 5 bytes 300
    }
    chain web {
        counter packets 0 bytes 0 accept
    }
    chain input {
        type filter hook input priority filter; policy accept;
        ip saddr @blocked drop
        tcp dport { 22, 2222 } counter packets 3 bytes 180 accept comment "ssh"
        tcp dport vmap @ports
        counter name "hits"
        meta l4proto udp limit rate 10/second accept
    }
}
table ip nat {
    chain post {
        type nat hook postrouting priority srcnat; policy accept;
        oifname "eth0" masquerade
    }
}
table inet CRIU-lock-test {
    chain input {
        type filter hook input priority -300; policy accept;
    }
}
"#;

#[test]
fn ruleset_is_read_and_made_again_the_same() {
    if let Some(why) = skip() {
        eprintln!("SKIP ruleset_is_read_and_made_again_the_same: {why}");
        return;
    }
    let tag = std::process::id() % 100_000;
    let (src, dst) = (format!("stasis-nft-a-{tag}"), format!("stasis-nft-b-{tag}"));
    let _del = DelNetns(vec![src.clone(), dst.clone()]);
    for n in [&src, &dst] {
        let out = Command::new("ip")
            .args(["netns", "add", n])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    nft_in(&src, &["-f", "-"], Some(RULESET));
    let before = nft_in(&src, &["list", "ruleset"], None);
    assert!(before.contains("packets 3 bytes 180"), "{before}");

    let a = File::open(format!("/run/netns/{src}")).unwrap();
    let objects = nftables::dump(a.as_fd(), &|t| t.starts_with("CRIU-")).expect("dump");
    assert!(!objects
        .iter()
        .any(|o| nftables::table_of(o).is_some_and(|t| t.starts_with("CRIU-"))));
    let back = nftables::from_image(&nftables::to_image(&objects)).unwrap();
    assert_eq!(back, objects);

    let b = File::open(format!("/run/netns/{dst}")).unwrap();
    nftables::restore(b.as_fd(), &back).expect("restore");
    let after = nft_in(&dst, &["list", "ruleset"], None);
    let expected: String = {
        // The lock's table is not carried over.
        let i = before
            .find("table inet CRIU-lock-test")
            .expect("lock table listed");
        let rest = &before[i..];
        let end = rest.find("\n}\n").map_or(rest.len(), |e| e + 3);
        format!("{}{}", &before[..i], &rest[end..])
    };
    assert_eq!(after, expected);

    // Made again where it already is: refused as a whole, naming the first object.
    let err = nftables::restore(b.as_fd(), &back).unwrap_err().to_string();
    assert!(err.contains("table"), "{err}");
    assert_eq!(nft_in(&dst, &["list", "ruleset"], None), after);
}

/// A namespace without any table: nothing to save, nothing made.
#[test]
fn empty_ruleset_is_empty() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP empty_ruleset_is_empty: needs root");
        return;
    }
    let tag = std::process::id() % 100_000;
    let n = format!("stasis-nft-e-{tag}");
    let _del = DelNetns(vec![n.clone()]);
    let out = Command::new("ip")
        .args(["netns", "add", &n])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let ns = File::open(format!("/run/netns/{n}")).unwrap();
    let objects = nftables::dump(ns.as_fd(), &|_| false).expect("dump");
    assert!(objects.is_empty(), "{objects:?}");
    nftables::restore(ns.as_fd(), &objects).expect("nothing to make");
}
