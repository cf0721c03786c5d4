//! Mounts bound in from the host, found external by themselves at dump (`--ext-mount-map
//! auto`, CRIU's `--external mnt[]`): stasis driven on its own command line, as LXC and scripts
//! drive CRIU, on a runc container with two host directories bound in, one private, one a
//! slave of a shared host mount (engine/src/ns/mnt_ext.rs).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stasis_tests::runc::*;
use stasis_tests::*;

const T: Duration = Duration::from_secs(20);

/// Unmounts what the test mounted on the host, whatever happens.
struct Unmount(Vec<std::path::PathBuf>);

impl Drop for Unmount {
    fn drop(&mut self) {
        for p in self.0.iter().rev() {
            let _ = Command::new("umount").arg("-l").arg(p).output();
        }
    }
}

fn sh(cmd: &str) {
    let out = Command::new("sh").args(["-c", cmd]).output().expect("sh");
    assert!(out.status.success(), "{cmd}: {out:?}");
}

/// The count the container's shell last wrote into its /tmp, as task `pid` sees it.
fn count_in(pid: u32) -> u64 {
    read_in(pid, "/tmp/count").trim().parse().unwrap_or(0)
}

#[test]
fn host_binds_found_external_by_themselves_come_back_bound() {
    let _g = serial_root!();
    let Some(c) = Container::create(test_name!(), "stasis-autoext", COUNTER) else {
        return;
    };
    let data = c.dir.join("hostdata");
    let shared = c.dir.join("hostshared");
    std::fs::create_dir_all(&data).expect("data dir");
    std::fs::create_dir_all(&shared).expect("shared dir");
    std::fs::write(data.join("f"), "from the host").expect("file");
    let mut mounted = Unmount(Vec::new());
    sh(&format!(
        "mount -t tmpfs stasis-autoext {0} && mount --make-shared {0}",
        shared.display()
    ));
    mounted.0.push(shared.clone());
    let config = c.dir.join("config.json");
    let spec = std::fs::read_to_string(&config).expect("config.json");
    let mounts = format!(
        r#"{{"destination": "/hostdata", "type": "bind", "source": "{}", "options": ["rbind", "rprivate"]}},
		{{"destination": "/hostslave", "type": "bind", "source": "{}", "options": ["rbind", "rslave"]}},
		{{
			"destination": "/proc","#,
        data.display(),
        shared.display()
    );
    let spec = spec.replacen("{\n\t\t\t\"destination\": \"/proc\",", &mounts, 1);
    assert!(spec.contains("/hostslave"), "config.json changed shape");
    std::fs::write(&config, spec).expect("config.json");
    let status = c
        .runc_cmd(&["run", "-d", "--pid-file", "pid", c.id])
        .status()
        .expect("runc run");
    assert!(status.success(), "runc run -d");
    c.wait_lines(3, T);
    let init = c.pid("pid");
    let img = c.dir.join("img");
    std::fs::create_dir_all(&img).expect("images dir");
    let img_s = img.to_str().expect("utf8");
    // Left running: the copy restored next binds the container's cgroup directories too
    // (found external as well), which runc removes with the container.
    let out = stasis(&[
        "dump",
        "-t",
        &init.to_string(),
        "-D",
        img_s,
        "-o",
        "dump.log",
        "-v4",
        "-R",
        "--ext-mount-map",
        "auto",
        "--enable-external-masters",
    ]);
    check_ok("dump", &out);
    let rootfs = c.dir.join("rootfs");
    let rootfs_s = rootfs.to_str().expect("utf8");
    let pidfile = img.join("restored.pid");
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "-D",
            img_s,
            "-o",
            "restore.log",
            "-v4",
            "-d",
            "--root",
            rootfs_s,
            "--pidfile",
            pidfile.to_str().expect("utf8"),
        ];
        args.extend_from_slice(extra);
        stasis(&args)
    };
    // Without auto, the restore does not guess: it names the mount and the option.
    let out = restore(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "restore without auto must fail");
    assert!(
        err.contains("found external at dump") && err.contains("--ext-mount-map auto"),
        "{err}"
    );
    check_ok("restore", &restore(&["--ext-mount-map", "auto"]));
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    let restored = scopeguard(pid);
    assert_eq!(read_in(pid, "/hostdata/f"), "from the host");
    // The same directory, not a copy: what the host writes shows inside.
    std::fs::write(data.join("g"), "later").expect("file");
    assert_eq!(read_in(pid, "/hostdata/g"), "later");
    // A slave of the host's shared mount again: a mount made there on the host propagates.
    sh(&format!(
        "mkdir -p {0}/sub && mount -t tmpfs stasis-autoext-sub {0}/sub && echo propagated > {0}/sub/h",
        shared.display()
    ));
    mounted.0.push(shared.join("sub"));
    assert_eq!(read_in(pid, "/hostslave/sub/h").trim(), "propagated");
    // And the restored copy runs on: its own count goes up.
    let first = count_in(pid);
    let end = Instant::now() + T;
    while count_in(pid) <= first && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(count_in(pid) > first, "the restored counter goes on");
    drop(restored);
    assert!(Path::new(&data).exists());
}

/// Kills the restored tree (its init: the whole pid namespace) when dropped.
struct Restored(u32);

impl Drop for Restored {
    fn drop(&mut self) {
        kill_tree(&[self.0]);
    }
}

fn scopeguard(pid: u32) -> Restored {
    Restored(pid)
}
