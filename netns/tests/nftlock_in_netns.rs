//! Privileged: the TCP network lock set inside another network namespace holds the packets of
//! that namespace's connection (a SYN between two fixed ports on its loopback is dropped), is
//! not in the caller's namespace, and is gone after `unlock_in`. Needs root and nf_tables:
//! prints SKIP otherwise.

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};
use std::process::Command;
use std::time::Duration;

use stasis_netns::nftlock::{self, Conn, LockError};

struct DelNetns(String);

impl Drop for DelNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Inside `ns`: can a socket bound to `from_port` connect to a listener on `to_port`?
fn connects(ns: BorrowedFd<'_>, from_port: u16, to_port: u16) -> bool {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let listener = TcpListener::bind(("127.0.0.1", to_port)).unwrap();
            let sock = nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::SOCK_CLOEXEC,
                None,
            )
            .unwrap();
            nix::sys::socket::setsockopt(&sock, nix::sys::socket::sockopt::ReuseAddr, &true)
                .unwrap();
            let from: SocketAddr = ([127, 0, 0, 1], from_port).into();
            nix::sys::socket::bind(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                &nix::sys::socket::SockaddrIn::from(match from {
                    SocketAddr::V4(v4) => v4,
                    SocketAddr::V6(_) => unreachable!(),
                }),
            )
            .unwrap();
            let stream = std::net::TcpStream::from(sock);
            // A blocking connect to a dropped SYN retries for minutes: time it out by hand.
            stream
                .set_write_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            let to = nix::sys::socket::SockaddrIn::from(std::net::SocketAddrV4::new(
                [127, 0, 0, 1].into(),
                to_port,
            ));
            let fd = std::os::fd::AsRawFd::as_raw_fd(&stream);
            let ok = nix::sys::socket::connect(fd, &to).is_ok();
            drop(listener);
            ok
        })
        .join()
        .unwrap()
    })
}

#[test]
fn lock_inside_a_namespace_drops_its_packets_and_only_there() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP lock_inside_a_namespace_drops_its_packets_and_only_there: not root");
        return;
    }
    let name = format!("stasis-nt-lock-{}", std::process::id() % 100_000);
    let out = Command::new("ip").args(["netns", "add", &name]).output();
    if !out.is_ok_and(|o| o.status.success()) {
        eprintln!("SKIP lock_inside_a_namespace_drops_its_packets_and_only_there: no ip netns");
        return;
    }
    let _guard = DelNetns(name.clone());
    let ns = File::open(format!("/run/netns/{name}")).unwrap();
    Command::new("ip")
        .args(["-n", &name, "link", "set", "lo", "up"])
        .status()
        .unwrap();
    let (server, client) = (47_311, 47_312);
    assert!(connects(ns.as_fd(), client, server), "before the lock");

    let table = "stasis-test-lock";
    let conn = Conn {
        local_port: server,
        remote_port: client,
    };
    if let Err(e) = nftlock::lock_in(ns.as_fd(), table, &[conn]) {
        eprintln!("SKIP lock_inside_a_namespace_drops_its_packets_and_only_there: {e}");
        return;
    }
    assert!(!connects(ns.as_fd(), client, server), "under the lock");
    // Another port pair passes.
    assert!(connects(ns.as_fd(), client + 2, server), "other ports");
    // Not in the caller's namespace.
    let LockError::Netlink { source, .. } = nftlock::unlock(table).unwrap_err();
    assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
    nftlock::unlock_in(ns.as_fd(), table).expect("unlock inside");
    assert!(connects(ns.as_fd(), client + 4, server), "after the lock");
}
