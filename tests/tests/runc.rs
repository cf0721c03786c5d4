//! Debian's runc driving stasis as its `criu` (through CRIU's RPC), on a busybox container the
//! test builds. What a container needs that stasis does not do yet (its mount namespace, the
//! `root` runc passes) must be refused in the log runc points to, with the container left
//! running, as it was.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use stasis_tests::*;

const BUSYBOX: &str = "/bin/busybox";

/// A bundle: busybox rootfs and a config whose process counts on stdout.
fn bundle(dir: &Path) {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).expect("rootfs dir");
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).expect("copy busybox");
    for applet in ["sh", "sleep", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet)).expect("applet");
    }
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .output()
        .expect("runc spec");
    assert!(out.status.success(), "runc spec");
    let spec = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    let spec = spec
        .replace("\"terminal\": true", "\"terminal\": false")
        .replace("\"readonly\": true", "\"readonly\": false")
        .replace(
            "\"sh\"\n",
            "\"sh\", \"-c\", \"i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done\"\n",
        );
    assert!(
        spec.contains("while true"),
        "config.json changed shape: {spec}"
    );
    std::fs::write(dir.join("config.json"), spec).expect("write config.json");
}

fn runc(args: &[&str], dir: &Path) -> Output {
    Command::new("runc")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run runc")
}

/// Deletes the container whatever happens.
struct Container(&'static str, PathBuf);
impl Drop for Container {
    fn drop(&mut self) {
        let _ = runc(&["delete", "-f", self.0], &self.1);
    }
}

#[test]
fn runc_checkpoint_is_refused_in_its_log_and_the_container_runs_on() {
    let _g = serial_root!();
    if Command::new("runc").arg("--version").output().is_err() {
        skip(test_name!(), "runc is not installed");
        return;
    }
    if !Path::new(BUSYBOX).exists() {
        skip(test_name!(), "no static busybox (busybox-static)");
        return;
    }
    let dir = temp_dir("runc");
    bundle(&dir);
    // runc looks for `criu` in PATH; --criu names it outright.
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    let criu = bin.join("criu");
    std::os::unix::fs::symlink(stasis_bin(), &criu).expect("criu link");
    let id = "stasis-runc-test";
    let _ = runc(&["delete", "-f", id], &dir);
    let c = Container(id, dir.clone());
    let out = std::fs::File::create(dir.join("out.log")).expect("out.log");
    let status = Command::new("runc")
        .args(["run", "-d", "--pid-file", "pid", id])
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().expect("dup"))
        .stderr(out)
        .status()
        .expect("runc run");
    assert!(status.success(), "runc run -d");
    let w = Workload {
        pid: std::fs::read_to_string(dir.join("pid"))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid"),
        out: dir.join("out.log"),
        dir: dir.clone(),
    };
    w.wait_lines(3, T);

    let out = runc(
        &[
            "--criu",
            criu.to_str().expect("utf8"),
            "checkpoint",
            "--image-path",
            "ckpt",
            "--work-path",
            "work",
            id,
        ],
        &dir,
    );
    assert!(
        !out.status.success(),
        "not supported yet: runc checkpoint fails"
    );
    let log = std::fs::read_to_string(dir.join("work/dump.log")).expect("dump.log");
    assert!(
        log.lines()
            .any(|l| l.contains("Error") && l.contains("not supported yet")),
        "the cause is in the log runc names: {log}"
    );
    let state = runc(&["state", id], &dir);
    assert!(
        String::from_utf8_lossy(&state.stdout).contains("\"running\""),
        "the container still runs"
    );
    assert_eq!(tracer_of(w.pid), 0, "untraced");
    let n = w.lines().len();
    let after = w.wait_lines(n + 3, Duration::from_secs(5));
    assert!(after.len() >= n + 3, "the container's process counts on");
    drop(c);
    // The workload is the container's: runc delete -f ended it; don't kill by pid again.
    std::mem::forget(w);
}
