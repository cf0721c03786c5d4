//! Debian's podman 4.3.1 (conmon, netavark, runc) with stasis as the `criu` first in PATH,
//! set up as on a machine of this kind (cgroupfs, file events, the rlimits runc may set), on a
//! busybox image the test imports: checkpoint and restore on the default bridge network,
//! `--leave-running`, `--print-stats`, `--export`/`--import` into a new container, and an
//! established TCP connection from the host kept across (`--tcp-established`).

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use stasis_tests::containers::*;
use stasis_tests::*;

const COUNTER: &str = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done";

/// A podman of its own: storage, run dir and config under a temp dir; removed with it.
struct Podman {
    dir: PathBuf,
    path: String,
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.run(&["rm", "-a", "-f", "-t", "0"]);
        let _ = self.run(&["system", "reset", "--force"]);
    }
}

impl Podman {
    /// None (after saying why) when podman or busybox is missing.
    fn new(test: &str) -> Option<Podman> {
        if missing_tools(test, &["podman"]) {
            return None;
        }
        let dir = temp_dir("podman");
        // runc execs `criu` through the PATH podman passes on.
        let path = path_with_stasis_as_criu(&dir);
        std::fs::write(
            dir.join("containers.conf"),
            "[engine]\ncgroup_manager = \"cgroupfs\"\nevents_logger = \"file\"\nruntime = \"runc\"\n\
             [containers]\ndefault_ulimits = [\"nofile=20000:20000\", \"nproc=32768:32768\"]\n",
        )
        .expect("containers.conf");
        let p = Podman { dir, path };
        let rootfs = p.dir.join("rootfs");
        busybox_rootfs(&rootfs, &["sh", "sleep", "echo", "nc", "cat"]);
        let tar = p.dir.join("rootfs.tar");
        let out = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .output()
            .expect("tar");
        assert!(out.status.success(), "tar of the rootfs");
        p.ok(&[
            "import",
            "--change",
            "CMD [\"/bin/sh\"]",
            tar.to_str().expect("utf8"),
            "localhost/bb:latest",
        ]);
        Some(p)
    }

    fn run(&self, args: &[&str]) -> Output {
        Command::new("podman")
            .arg("--root")
            .arg(self.dir.join("storage"))
            .arg("--runroot")
            .arg(self.dir.join("run"))
            .args(args)
            .env("CONTAINERS_CONF", self.dir.join("containers.conf"))
            .env("PATH", &self.path)
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run podman")
    }

    /// Runs podman, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "podman {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn inspect(&self, name: &str, format: &str) -> String {
        self.ok(&["inspect", "-f", format, name]).trim().to_string()
    }

    /// The counter lines of `name`'s log.
    fn counts(&self, name: &str) -> Vec<String> {
        let out = self.run(&["logs", name]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| l.parse::<u64>().is_ok())
            .map(str::to_string)
            .collect()
    }

    fn wait_counts(&self, name: &str, n: usize) -> Vec<String> {
        let end = Instant::now() + T;
        loop {
            let l = self.counts(name);
            if l.len() >= n || Instant::now() > end {
                return l;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start_counter(&self, name: &str) {
        self.start_counter_with(name, &[]);
    }

    fn start_counter_with(&self, name: &str, extra: &[&str]) {
        let mut args = vec!["run", "-d", "--name", name];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["localhost/bb", "sh", "-c", COUNTER]);
        self.ok(&args);
        self.wait_counts(name, 3);
    }
}

#[test]
fn podman_checkpoints_and_restores_a_container_on_the_bridge() {
    let _g = serial_root!();
    let Some(p) = Podman::new(test_name!()) else {
        return;
    };
    p.start_counter("c1");
    let ip = p.inspect("c1", "{{.NetworkSettings.IPAddress}}");
    assert!(!ip.is_empty(), "on podman's bridge network");
    p.ok(&["container", "checkpoint", "c1"]);
    assert_eq!(p.inspect("c1", "{{.State.Status}}"), "exited");
    assert_eq!(p.inspect("c1", "{{.State.Checkpointed}}"), "true");
    let dumped = p.counts("c1").len();
    p.ok(&["container", "restore", "c1"]);
    assert_eq!(p.inspect("c1", "{{.State.Status}}"), "running");
    assert_eq!(p.inspect("c1", "{{.State.Restored}}"), "true");
    let lines = p.wait_counts("c1", dumped + 5);
    assert!(lines.len() >= dumped + 5, "the counter runs on");
    counter_is_continuous(&lines);
    assert_eq!(
        p.inspect("c1", "{{.NetworkSettings.IPAddress}}"),
        ip,
        "the same address"
    );
    // podman manages the restored container as its own.
    p.ok(&["stop", "-t", "0", "c1"]);
    assert_eq!(p.inspect("c1", "{{.State.Status}}"), "exited");
}

#[test]
fn podman_checkpoint_leave_running_and_print_stats() {
    let _g = serial_root!();
    let Some(p) = Podman::new(test_name!()) else {
        return;
    };
    p.start_counter("c2");
    let pid: u32 = p.inspect("c2", "{{.State.Pid}}").parse().expect("pid");
    let stats = p.ok(&[
        "container",
        "checkpoint",
        "--leave-running",
        "--print-stats",
        "c2",
    ]);
    for field in [
        "runtime_checkpoint_duration",
        "freezing_time",
        "frozen_time",
        "pages_written",
    ] {
        assert!(
            stats.contains(field),
            "--print-stats shows {field}: {stats}"
        );
    }
    assert_eq!(p.inspect("c2", "{{.State.Status}}"), "running");
    assert!(alive(pid), "the same process runs on");
    assert_eq!(tracer_of(pid), 0, "untraced");
    let n = p.counts("c2").len();
    let after = p.wait_counts("c2", n + 3);
    assert!(after.len() >= n + 3, "and counts on");
    counter_is_continuous(&after);
    // A restore's figures too.
    p.ok(&["container", "checkpoint", "c2"]);
    let stats = p.ok(&["container", "restore", "--print-stats", "c2"]);
    for field in ["runtime_restore_duration", "forking_time", "restore_time"] {
        assert!(
            stats.contains(field),
            "--print-stats shows {field}: {stats}"
        );
    }
}

#[test]
fn podman_export_and_import_into_a_new_container() {
    let _g = serial_root!();
    let Some(p) = Podman::new(test_name!()) else {
        return;
    };
    p.start_counter("c3");
    let archive = p.dir.join("c3.tar.gz");
    let a = archive.to_str().expect("utf8");
    p.ok(&["container", "checkpoint", "--export", a, "c3"]);
    let dumped = p.counts("c3").len();
    p.ok(&["rm", "-f", "-t", "0", "c3"]);
    p.ok(&["container", "restore", "--import", a, "--name", "c3b"]);
    assert_eq!(p.inspect("c3b", "{{.State.Status}}"), "running");
    // The archive carries the log (ctr.log): the new container's log holds the old lines,
    // then the restored process's, which count on without starting again from 0.
    let lines = p.wait_counts("c3b", dumped + 5);
    assert!(
        lines.len() >= dumped + 5,
        "the imported container counts on"
    );
    counter_is_continuous(&lines);
}

#[test]
fn podman_tcp_established_keeps_a_connection_from_the_host() {
    let _g = serial_root!();
    let Some(p) = Podman::new(test_name!()) else {
        return;
    };
    p.ok(&[
        "run",
        "-d",
        "--name",
        "c4",
        "localhost/bb",
        "nc",
        "-ll",
        "-p",
        "7000",
        "-e",
        "/bin/cat",
    ]);
    let ip = p.inspect("c4", "{{.NetworkSettings.IPAddress}}");
    let end = Instant::now() + T;
    let conn = loop {
        match std::net::TcpStream::connect((ip.as_str(), 7000)) {
            Ok(c) => break c,
            Err(e) if Instant::now() > end => panic!("connect to {ip}:7000: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    };
    conn.set_read_timeout(Some(T)).expect("timeout");
    let mut reader = BufReader::new(conn.try_clone().expect("clone"));
    let mut w = conn;
    let mut echo = |msg: &str| {
        w.write_all(format!("{msg}\n").as_bytes()).expect("send");
        let mut line = String::new();
        reader.read_line(&mut line).expect("the echo");
        line.trim().to_string()
    };
    assert_eq!(echo("before"), "before");
    p.ok(&["container", "checkpoint", "--tcp-established", "c4"]);
    p.ok(&["container", "restore", "--tcp-established", "c4"]);
    assert_eq!(echo("after"), "after", "the same connection answers");
}

/// `podman run -t`: conmon holds the terminal's master; the restore makes a new pty and hands
/// its master to runc (orphan-pts-master), which gives it to conmon, and the log goes on.
#[test]
fn podman_container_with_a_terminal() {
    let _g = serial_root!();
    let Some(p) = Podman::new(test_name!()) else {
        return;
    };
    p.start_counter_with("t1", &["-t"]);
    p.ok(&["container", "checkpoint", "t1"]);
    let dumped = p.counts("t1").len();
    p.ok(&["container", "restore", "t1"]);
    assert_eq!(p.inspect("t1", "{{.State.Status}}"), "running");
    let lines = p.wait_counts("t1", dumped + 5);
    assert!(
        lines.len() >= dumped + 5,
        "the counter runs on, on its new terminal"
    );
    counter_is_continuous(&lines);
}

/// A container in a user namespace of its own (`--uidmap`/`--gidmap`): checkpointed and
/// restored with its maps, the counter running on as root inside and 100000 outside.
#[test]
fn podman_container_in_a_user_namespace() {
    let _g = serial_root!();
    let Some(p) = Podman::new(test_name!()) else {
        return;
    };
    p.start_counter_with(
        "cu",
        &["--uidmap", "0:100000:65536", "--gidmap", "0:100000:65536"],
    );
    let pid: u32 = p.inspect("cu", "{{.State.Pid}}").parse().expect("pid");
    let maps = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/uid_map"))
            .unwrap_or_default()
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    let before = maps(pid);
    assert_eq!(before, "0 100000 65536", "mapped");
    p.ok(&["container", "checkpoint", "cu"]);
    let dumped = p.counts("cu").len();
    p.ok(&["container", "restore", "cu"]);
    let pid2: u32 = p.inspect("cu", "{{.State.Pid}}").parse().expect("pid");
    assert_eq!(maps(pid2), before, "the same maps");
    let status = std::fs::read_to_string(format!("/proc/{pid2}/status")).unwrap_or_default();
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("Uid:") && l.contains("100000")),
        "runs as 100000 outside: {status}"
    );
    let lines = p.wait_counts("cu", dumped + 5);
    assert!(lines.len() >= dumped + 5, "the counter runs on");
    counter_is_continuous(&lines);
    p.ok(&["stop", "-t", "0", "cu"]);
}

/// A container in a pod shares the IPC, UTS and network namespaces of the pod's infra
/// container: the dump keeps them as CRIU does (the network as external), runc has the restore
/// join them again, and the restored container is back in the pod's namespaces.
#[test]
fn podman_container_in_a_pod() {
    let _g = serial_root!();
    let Some(p) = Podman::new(test_name!()) else {
        return;
    };
    if missing_tools(test_name!(), &["catatonit"]) {
        return;
    }
    p.ok(&["pod", "create", "--name", "pod1"]);
    p.start_counter_with("inpod", &["--pod", "pod1"]);
    let infra = p.ok(&["pod", "inspect", "-f", "{{.InfraContainerID}}", "pod1"]);
    let infra_pid: u32 = p
        .inspect(infra.trim(), "{{.State.Pid}}")
        .parse()
        .expect("infra pid");
    let ns = |pid: u32, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok();
    p.ok(&["container", "checkpoint", "inpod"]);
    let dumped = p.counts("inpod").len();
    p.ok(&["container", "restore", "inpod"]);
    let lines = p.wait_counts("inpod", dumped + 5);
    assert!(lines.len() >= dumped + 5, "the counter runs on");
    counter_is_continuous(&lines);
    let pid: u32 = p.inspect("inpod", "{{.State.Pid}}").parse().expect("pid");
    for kind in ["ipc", "uts", "net"] {
        assert_eq!(
            ns(pid, kind),
            ns(infra_pid, kind),
            "back in the pod's {kind} namespace"
        );
    }
    p.ok(&["pod", "rm", "-f", "pod1"]);
}
