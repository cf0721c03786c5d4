//! Debian's containerd 1.6 (its runc v2 shim, runc) with stasis as the `criu` first in PATH: a
//! containerd of the test's own (config, state and socket under a temp dir, beside any system
//! one), a busybox image the test builds and imports, a container counting into a file of its
//! rootfs. `ctr task checkpoint` leaves it running; `ctr container checkpoint --task --rw`, a
//! kill and delete, then `ctr container restore --live --rw` bring it back where it was.
//!
//! containerd pauses the task (the cgroup freezer) before runc's checkpoint and resumes it
//! after: the dump must leave a cgroup it found frozen frozen, as CRIU does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use stasis_tests::containers::*;
use stasis_tests::*;

const IMAGE: &str = "docker.io/library/stasis-bb:latest";
const NS: &str = "stasis";

/// The container's shell: appends 0, 1, 2... to /count in its rootfs, ten a second.
const SCRIPT: &str = "i=0; while true; do echo $i >> /count; i=$((i+1)); sleep 0.1; done";

/// A containerd of our own; stopped and cleaned up whatever happens.
struct Containerd {
    dir: PathBuf,
    daemon: Child,
}

impl Drop for Containerd {
    fn drop(&mut self) {
        for id in ["cd-ckpt", "cd-live"] {
            let _ = self.ctr(&["task", "kill", "-s", "9", id]);
        }
        std::thread::sleep(Duration::from_millis(300));
        for id in ["cd-ckpt", "cd-live"] {
            let _ = self.ctr(&["task", "rm", "-f", id]);
            let _ = self.ctr(&["container", "rm", id]);
        }
        // SAFETY: kill(2) of the daemon we started.
        unsafe { libc::kill(self.daemon.id() as libc::pid_t, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.daemon.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.daemon.kill();
        let _ = self.daemon.wait();
        unmount_below(&self.dir);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Containerd {
    /// None (after saying why) when containerd, its shim, runc or busybox is missing.
    fn start(test: &str) -> Option<Containerd> {
        if missing_tools(
            test,
            &[
                "containerd",
                "ctr",
                "containerd-shim-runc-v2",
                "runc",
                "sha256sum",
            ],
        ) {
            return None;
        }
        let dir = temp_dir("containerd");
        // The shim, then runc, inherit containerd's PATH: runc execs this `criu`.
        let path = path_with_stasis_as_criu(&dir);
        let config = dir.join("config.toml");
        std::fs::write(
            &config,
            format!(
                "version = 2\nroot = \"{d}/root\"\nstate = \"{d}/state\"\n\
                 [grpc]\n  address = \"{d}/ctd.sock\"\n\
                 [plugins.\"io.containerd.grpc.v1.cri\"]\n  disable_cgroup = true\n",
                d = dir.display()
            ),
        )
        .expect("config.toml");
        let log = std::fs::File::create(dir.join("containerd.log")).expect("log");
        // Its shim makes checkpoint dirs under TMPDIR and leaves them: keep them in ours.
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).expect("tmp");
        let daemon = Command::new("containerd")
            .arg("--config")
            .arg(&config)
            .env("PATH", &path)
            .env("TMPDIR", &tmp)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let c = Containerd { dir, daemon };
        let end = Instant::now() + Duration::from_secs(20);
        while !c.ctr(&["version"]).status.success() {
            assert!(
                Instant::now() < end,
                "containerd did not come up: {}",
                std::fs::read_to_string(c.dir.join("containerd.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let tar = c.dir.join("image.tar");
        oci_image(&c.dir.join("image"), &tar);
        c.ok(&["images", "import", tar.to_str().expect("utf8")]);
        Some(c)
    }

    fn ctr(&self, args: &[&str]) -> Output {
        Command::new("ctr")
            .arg("-a")
            .arg(self.dir.join("ctd.sock"))
            .args(["-n", NS])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// Runs ctr, which must succeed; its stdout.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.ctr(args);
        assert!(
            out.status.success(),
            "ctr {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.criu_logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The dump and restore logs runc had stasis write, for a failure's message.
    fn criu_logs(&self) -> String {
        let mut out = String::new();
        let find = Command::new("find")
            .arg(&self.dir)
            .args(["-name", "dump.log", "-o", "-name", "restore.log"])
            .output();
        if let Ok(f) = find {
            for p in String::from_utf8_lossy(&f.stdout).lines() {
                let text = std::fs::read_to_string(p).unwrap_or_default();
                let tail: Vec<&str> = text.lines().rev().take(15).collect();
                out += &format!("--- {p}\n");
                for l in tail.iter().rev() {
                    out += l;
                    out += "\n";
                }
            }
        }
        out
    }

    /// The task's (host) pid and status, as `ctr task ls` gives them.
    fn task(&self, id: &str) -> Option<(u32, String)> {
        let ls = self.ok(&["task", "ls"]);
        ls.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.first() == Some(&id)).then(|| (f[1].parse().unwrap_or(0), f[2].to_string()))
        })
    }

    /// The counts the container wrote to /count, through its task's root.
    fn counts(&self, pid: u32) -> Vec<u64> {
        std::fs::read_to_string(format!("/proc/{pid}/root/count"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    fn run_counter(&self, id: &str) -> u32 {
        self.ok(&["run", "-d", IMAGE, id, "sh", "-c", SCRIPT]);
        let (pid, status) = self.task(id).expect("the task is listed");
        assert_eq!(status, "RUNNING");
        self.wait_counts(pid, 5);
        pid
    }

    /// Waits until the container has counted past `n`; the counts.
    fn wait_counts(&self, pid: u32, n: u64) -> Vec<u64> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.counts(pid);
            if c.last().is_some_and(|&l| l >= n) || Instant::now() > end {
                return c;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Writes an OCI image layout tar of a busybox rootfs (one uncompressed layer) whose index
/// names it IMAGE, as `ctr images import` takes it.
fn oci_image(dir: &Path, tar: &Path) {
    let rootfs = dir.join("rootfs");
    busybox_rootfs(&rootfs, &["sh", "sleep", "echo", "cat"]);
    let blobs = dir.join("layout/blobs/sha256");
    std::fs::create_dir_all(&blobs).expect("blobs dir");
    let layer = dir.join("layer.tar");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .args(["--owner=0", "--group=0", "-cf"])
        .arg(&layer)
        .arg(".")
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar of the rootfs");
    let add = |path: &Path| -> (String, u64) {
        let out = Command::new("sha256sum")
            .arg(path)
            .output()
            .expect("sha256sum");
        let digest = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .next()
            .expect("a digest")
            .to_string();
        let size = std::fs::metadata(path).expect("blob").len();
        std::fs::copy(path, blobs.join(&digest)).expect("blob");
        (format!("sha256:{digest}"), size)
    };
    let (layer_digest, layer_size) = add(&layer);
    let write = |name: &str, text: String| -> (String, u64) {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("json");
        add(&p)
    };
    let (config, config_size) = write(
        "config.json",
        format!(
            "{{\"architecture\":\"amd64\",\"os\":\"linux\",\"config\":{{\"Env\":[\"PATH=/bin\"],\
             \"Cmd\":[\"/bin/sh\"]}},\"rootfs\":{{\"type\":\"layers\",\"diff_ids\":[\"{layer_digest}\"]}}}}"
        ),
    );
    let (manifest, manifest_size) = write(
        "manifest.json",
        format!(
            "{{\"schemaVersion\":2,\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\
             \"config\":{{\"mediaType\":\"application/vnd.oci.image.config.v1+json\",\
             \"digest\":\"{config}\",\"size\":{config_size}}},\
             \"layers\":[{{\"mediaType\":\"application/vnd.oci.image.layer.v1.tar\",\
             \"digest\":\"{layer_digest}\",\"size\":{layer_size}}}]}}"
        ),
    );
    let layout = dir.join("layout");
    std::fs::write(
        layout.join("oci-layout"),
        "{\"imageLayoutVersion\":\"1.0.0\"}",
    )
    .expect("oci-layout");
    std::fs::write(
        layout.join("index.json"),
        format!(
            "{{\"schemaVersion\":2,\"manifests\":[{{\"mediaType\":\
             \"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"{manifest}\",\
             \"size\":{manifest_size},\"annotations\":\
             {{\"org.opencontainers.image.ref.name\":\"{IMAGE}\"}}}}]}}"
        ),
    )
    .expect("index.json");
    let out = Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(tar)
        .args(["oci-layout", "index.json", "blobs"])
        .output()
        .expect("tar");
    assert!(out.status.success(), "tar of the image layout");
}

/// `ctr task checkpoint`: containerd pauses the task, runc dumps it with stasis leaving it
/// running, containerd resumes it. It counts on without a gap, and the checkpoint is an image.
#[test]
fn containerd_task_checkpoint_leaves_it_running() {
    let _g = serial_root!();
    let Some(cd) = Containerd::start(test_name!()) else {
        return;
    };
    let pid = cd.run_counter("cd-live");
    cd.ok(&["task", "checkpoint", "cd-live"]);
    let (after, status) = cd.task("cd-live").expect("still listed");
    assert_eq!(
        (after, status.as_str()),
        (pid, "RUNNING"),
        "the same task runs"
    );
    // Not left frozen: it counts on.
    let before = cd.counts(pid).last().copied().unwrap_or(0);
    let counts = cd.wait_counts(pid, before + 5);
    assert!(
        counts.last().is_some_and(|&l| l >= before + 5),
        "it counts on after the checkpoint: {counts:?}"
    );
    assert_consecutive(&counts, "the counter across the checkpoint");
    let images = cd.ok(&["images", "ls", "-q"]);
    assert!(
        images.lines().any(|l| l.contains("checkpoint")),
        "a checkpoint image: {images}"
    );
}

/// `ctr container checkpoint --task --rw`, the container killed and deleted, then `ctr
/// container restore --live --rw`: the task runs again and counts on from where it was, in a
/// rootfs holding what it had written.
#[test]
fn containerd_container_checkpoint_and_restore() {
    let _g = serial_root!();
    let Some(cd) = Containerd::start(test_name!()) else {
        return;
    };
    let id = "cd-ckpt";
    let reference = "stasis/cd-ckpt:checkpoint";
    let pid = cd.run_counter(id);
    cd.ok(&["container", "checkpoint", "--task", "--rw", id, reference]);
    let at_checkpoint = cd.counts(pid);
    cd.ok(&["task", "kill", "-s", "9", id]);
    let end = Instant::now() + Duration::from_secs(10);
    while cd.task(id).is_some_and(|(_, s)| s != "STOPPED") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    cd.ok(&["task", "rm", "-f", id]);
    cd.ok(&["container", "rm", id]);
    cd.ok(&["container", "restore", "--live", "--rw", id, reference]);
    let (restored, status) = cd.task(id).expect("the restored task is listed");
    assert_eq!(status, "RUNNING");
    let last = *at_checkpoint.last().expect("counted before the checkpoint");
    let counts = cd.wait_counts(restored, last + 10);
    assert!(
        counts.last().is_some_and(|&l| l >= last + 10),
        "the restored container counts on from {last}: {counts:?}"
    );
    assert_consecutive(&counts, "the counter across checkpoint and restore");
}
