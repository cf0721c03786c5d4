//! youki 0.7 (crates.io; `scripts/setup.sh` installs it) driving stasis as the `criu` first in
//! PATH, through CRIU's RPC as rust-criu speaks it: a busybox container whose stdout is a host
//! file (CRIU 4.2 refuses to dump that one: "Can't lookup mount"), checkpointed with youki's
//! `checkpointt` (sic: 0.7.0's spelling), running on with `--leave-running`. youki 0.7 has no
//! restore: its images are restored by runc, which reads the same descriptors.json.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use stasis_tests::containers::*;
use stasis_tests::*;

const SCRIPT: &str = "i=0; while true; do echo $i; i=$((i+1)); sleep 0.1; done";

/// A youki container; deleted (by youki, and by runc once restored) whatever happens.
struct Youki {
    id: &'static str,
    dir: PathBuf,
    path: String,
}

impl Drop for Youki {
    fn drop(&mut self) {
        let _ = self.youki(&["delete", "-f", self.id]);
        let _ = Command::new("runc")
            .args(["delete", "-f", self.id])
            .output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Youki {
    /// Runs the counter in a new container; None (after saying why) when youki, runc or
    /// busybox is missing.
    fn start(test: &str, id: &'static str) -> Option<Youki> {
        if missing_tools(test, &["youki", "runc"]) {
            return None;
        }
        let dir = temp_dir("youki");
        let path = path_with_stasis_as_criu(&dir);
        let y = Youki { id, dir, path };
        y.bundle();
        let out = std::fs::File::create(y.out()).expect("stdout file");
        let status = Command::new("youki")
            .args(["run", "-d", "-b"])
            .arg(y.dir.join("bundle"))
            .arg("--pid-file")
            .arg(y.dir.join("pid"))
            .arg(id)
            .env("PATH", &y.path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("stdout"))
            .stderr(out)
            .status()
            .expect("youki run");
        assert!(status.success(), "youki run -d");
        y.wait_counts(5);
        Some(y)
    }

    fn bundle(&self) {
        let b = self.dir.join("bundle");
        busybox_rootfs(&b.join("rootfs"), &["sh", "sleep", "echo"]);
        let out = Command::new("runc")
            .arg("spec")
            .current_dir(&b)
            .output()
            .expect("runc spec");
        assert!(out.status.success(), "runc spec");
        let spec = std::fs::read_to_string(b.join("config.json")).expect("config.json");
        let spec = spec
            .replacen("\"terminal\": true", "\"terminal\": false", 1)
            .replacen("\"sh\"\n", &format!("\"sh\", \"-c\", \"{SCRIPT}\"\n"), 1)
            .replacen("\"readonly\": true", "\"readonly\": false", 1);
        assert!(spec.contains(SCRIPT), "config.json changed shape: {spec}");
        std::fs::write(b.join("config.json"), spec).expect("config.json");
    }

    fn out(&self) -> PathBuf {
        self.dir.join("out.txt")
    }

    fn youki(&self, args: &[&str]) -> Output {
        Command::new("youki")
            .args(args)
            .env("PATH", &self.path)
            .stdin(Stdio::null())
            .output()
            .expect("run youki")
    }

    fn counts(&self) -> Vec<u64> {
        std::fs::read_to_string(self.out())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Waits until the container has counted past `n`; the counts.
    fn wait_counts(&self, n: u64) -> Vec<u64> {
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let c = self.counts();
            if c.last().is_some_and(|&l| l >= n) || Instant::now() > end {
                return c;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn pid(&self) -> u32 {
        std::fs::read_to_string(self.dir.join("pid"))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    /// `youki checkpointt` into `images` (work dir beside it), with `extra` flags; the logs
    /// on failure.
    fn checkpoint(&self, images: &Path, extra: &[&str]) {
        std::fs::create_dir_all(images).expect("images dir");
        let work = images.with_extension("work");
        std::fs::create_dir_all(&work).expect("work dir");
        let mut args = vec![
            "checkpointt",
            "--image-path",
            images.to_str().expect("utf8"),
            "--work-path",
            work.to_str().expect("utf8"),
        ];
        args.extend_from_slice(extra);
        args.push(self.id);
        let out = self.youki(&args);
        assert!(
            out.status.success(),
            "youki {args:?}: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(work.join("dump.log")).unwrap_or_default()
        );
    }
}

/// `youki checkpointt --leave-running`: the images are written, the container runs on.
#[test]
fn youki_checkpoint_leave_running() {
    let _g = serial_root!();
    let Some(y) = Youki::start(test_name!(), "yk-live") else {
        return;
    };
    let pid = y.pid();
    let images = y.dir.join("images");
    y.checkpoint(&images, &["--leave-running"]);
    assert!(images.join("inventory.img").exists(), "the images");
    assert!(
        images.join("descriptors.json").exists(),
        "youki's descriptors.json"
    );
    assert!(alive(pid), "the container's init runs on");
    let last = y.counts().last().copied().unwrap_or(0);
    let counts = y.wait_counts(last + 5);
    assert!(
        counts.last().is_some_and(|&l| l >= last + 5),
        "it counts on: {counts:?}"
    );
    assert_consecutive(&counts, "the counter across the checkpoint");
    let state = y.youki(&["state", y.id]);
    assert!(
        String::from_utf8_lossy(&state.stdout).contains("\"running\""),
        "youki state: {}",
        String::from_utf8_lossy(&state.stdout)
    );
}

/// `youki checkpointt` (the container is gone after it), then `runc restore` of youki's images
/// from the same bundle: the counter goes on in the same host file.
#[test]
fn youki_checkpoint_restored_by_runc() {
    let _g = serial_root!();
    let Some(y) = Youki::start(test_name!(), "yk-ckpt") else {
        return;
    };
    let pid = y.pid();
    let images = y.dir.join("images");
    y.checkpoint(&images, &[]);
    let end = Instant::now() + Duration::from_secs(5);
    while alive(pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid), "the checkpoint ends the container");
    let at_checkpoint = y.counts();
    let last = *at_checkpoint.last().expect("counted");
    let work = y.dir.join("restore.work");
    let out = Command::new("runc")
        .arg("--criu")
        .arg(stasis_bin())
        .args(["restore", "-d", "--image-path"])
        .arg(&images)
        .arg("--work-path")
        .arg(&work)
        .arg("-b")
        .arg(y.dir.join("bundle"))
        .arg(y.id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .expect("runc restore");
    assert!(
        out.status.success(),
        "runc restore of youki's images: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(work.join("restore.log")).unwrap_or_default()
    );
    let counts = y.wait_counts(last + 10);
    assert!(
        counts.last().is_some_and(|&l| l >= last + 10),
        "the restored container counts on from {last}: {counts:?}"
    );
    assert_consecutive(&counts, "the counter across checkpoint and restore");
}
