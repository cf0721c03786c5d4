//! What the container tests (runc, podman, containerd, youki) share: the tools they need, a
//! busybox rootfs, stasis as the `criu` first in a PATH, and the counter's check.

use std::path::Path;

use crate::{skip, stasis_bin};

/// Debian's busybox-static.
pub const BUSYBOX: &str = "/bin/busybox";

/// True (after saying which is missing, so the test counts as skipped) when one of `tools` is
/// not in PATH or busybox-static is not installed.
pub fn missing_tools(test: &str, tools: &[&str]) -> bool {
    let path = std::env::var("PATH").unwrap_or_default();
    for tool in tools {
        if !path.split(':').any(|d| Path::new(d).join(tool).exists()) {
            skip(test, &format!("{tool} is not installed"));
            return true;
        }
    }
    if !Path::new(BUSYBOX).exists() {
        skip(test, "no static busybox (busybox-static)");
        return true;
    }
    false
}

/// A busybox rootfs at `rootfs`: the usual top directories, busybox and its `applets` as
/// links.
pub fn busybox_rootfs(rootfs: &Path, applets: &[&str]) {
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in applets {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet");
    }
}

/// A PATH whose first directory (`dir`/bin, made here) holds stasis as `criu`: what a runtime
/// started with it execs.
pub fn path_with_stasis_as_criu(dir: &Path) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    std::os::unix::fs::symlink(stasis_bin(), bin.join("criu")).expect("criu link");
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

/// 0, 1, 2... with no gap and no repeat.
pub fn assert_consecutive(counts: &[u64], what: &str) {
    for (i, c) in counts.iter().enumerate() {
        assert_eq!(*c, i as u64, "{what}: count {i} is {c} ({counts:?})");
    }
}

/// The container's mounts as (mountpoint, per-mount options, propagation), sorted: what must
/// survive. Propagation is "shared", "slave", both or "private" (group numbers differ).
pub fn mounts(pid: u32) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let mut v: Vec<(String, String, String)> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let tags: Vec<&str> = f[6..].iter().take_while(|t| **t != "-").copied().collect();
            let kind: Vec<&str> = [("shared:", "shared"), ("master:", "slave")]
                .iter()
                .filter(|(tag, _)| tags.iter().any(|t| t.starts_with(tag)))
                .map(|(_, k)| *k)
                .collect();
            let kind = if kind.is_empty() {
                "private".to_string()
            } else {
                kind.join(",")
            };
            (f[4].to_string(), f[5].to_string(), kind)
        })
        .collect();
    v.sort();
    v
}

/// Waits (up to 5 s) until the network namespace of `pid` holds no TCP connection but
/// listening sockets and TIME_WAIT leftovers: a server that has just answered (busybox `nc`
/// closing after its reply) is not caught mid-close by a dump that is not asked to keep
/// established connections, as docker and LXC checkpoint without `--tcp-established`.
pub fn wait_connections_closed(pid: u32) {
    let end = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let busy = ["tcp", "tcp6"].iter().any(|f| {
            std::fs::read_to_string(format!("/proc/{pid}/net/{f}"))
                .unwrap_or_default()
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(3))
                .any(|st| st != "0A" && st != "06")
        });
        if !busy || std::time::Instant::now() > end {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// The count a container's busybox server (`echo n=$i | nc -l -p PORT`) answers at `addr`,
/// retried (10 s) while it re-listens between connections.
pub fn ask_count(addr: &str) -> Option<u64> {
    use std::io::Read;
    let addr: std::net::SocketAddr = addr.parse().expect("address");
    let end = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < end {
        if let Ok(mut s) =
            std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_secs(2))
        {
            let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(3)));
            let mut text = String::new();
            let _ = s.read_to_string(&mut text);
            if let Some(n) = text.trim().strip_prefix("n=") {
                return n.parse().ok();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    None
}

/// Lazily unmounts whatever a daemon left mounted below `dir` (snapshots, shm), deepest
/// first.
pub fn unmount_below(dir: &Path) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| Path::new(p).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(p)
            .output();
    }
}

/// `ip` inside the network namespace of `pid` (through nsenter); its output.
pub fn ip_in(pid: u32, args: &[&str]) -> String {
    let out = std::process::Command::new("nsenter")
        .args(["-t", &pid.to_string(), "-n", "ip"])
        .args(args)
        .output()
        .expect("run nsenter");
    assert!(
        out.status.success(),
        "nsenter ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
