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

/// Mount info of task `pid` as it can be compared across a restore: mountpoint, root, type,
/// source and the kinds of its propagation fields (shared, master), sorted.
fn mounts_of(pid: u32) -> Vec<String> {
    let info = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap_or_default();
    let mut out: Vec<String> = info
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let sep = f.iter().position(|x| *x == "-").unwrap_or(f.len() - 1);
            let kinds: Vec<&str> = f[6..sep]
                .iter()
                .map(|o| o.split(':').next().unwrap_or(""))
                .collect();
            format!(
                "{} {} {} {} {}",
                f[4],
                f[3],
                f.get(sep + 1).unwrap_or(&""),
                f.get(sep + 2).unwrap_or(&""),
                kinds.join(",")
            )
        })
        .collect();
    out.sort();
    out
}

/// A host process in a mount namespace of its own, a copy of the host's made slave (as
/// systemd makes a service's with PrivateTmp), with a tmpfs of its own holding a file and a
/// shared bind of it: dumped with the host's mounts taken as external, killed, restored with
/// `--root /`. Same pid, same mounts with the same propagation, the file, a mount inside
/// still propagating to the bind, and a host mount still reaching it.
#[test]
fn host_process_in_a_mount_namespace_of_its_own_comes_back() {
    let _g = serial_root!();
    let dir = temp_dir("own-mntns");
    let probe = Path::new("/run/stasis-probe");
    let _cleanup = Unmount(vec![probe.to_path_buf()]);
    sh("mkdir -p /run/stasis-probe && mount -t tmpfs probe-host /run/stasis-probe && mount --make-shared /run/stasis-probe");
    let script = "mount -t tmpfs own /mnt && echo kept > /mnt/f && mount --make-shared /mnt \
                  && mkdir /mnt/sub && mount --bind /mnt /mnt/sub && exec sleep 1000";
    let mut child = Command::new("setsid")
        .args([
            "unshare",
            "-m",
            "--propagation",
            "slave",
            "sh",
            "-c",
            script,
        ])
        .spawn()
        .expect("unshare");
    let pid = child.id();
    // A failed assertion must not leave it running.
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            kill_tree(&[self.0]);
        }
    }
    let _kill = Kill(pid);
    let end = Instant::now() + T;
    let cmdline = || std::fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    while !cmdline().starts_with("sleep") && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let before = mounts_of(pid);
    assert!(
        before
            .iter()
            .any(|m| m.starts_with("/mnt/sub / tmpfs own shared")),
        "{before:?}"
    );
    let img = dir.join("images");
    std::fs::create_dir(&img).unwrap();
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let img_s = img.to_str().unwrap();
    let ext = [
        "--ext-mount-map",
        "auto",
        "--enable-external-masters",
        "--enable-external-sharing",
    ];
    let pid_s = pid.to_string();
    let plain = stasis(&["dump", "-t", &pid_s, "-D", img_s, "-R"]);
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && err.contains("--ext-mount-map auto"),
        "{err}"
    );
    let mut args = vec!["dump", "-t", &pid_s, "-D", img_s];
    args.extend(ext);
    check_ok("dump", &stasis(&args));
    let _ = child.wait();
    let mut args = vec!["restore", "-D", img_s, "-d", "--root", "/"];
    args.extend(ext);
    check_ok("restore", &stasis(&args));
    let after = mounts_of(pid);
    let file = read_in(pid, "/mnt/f");
    sh(&format!(
        "nsenter -t {pid} -m sh -c 'mkdir -p /mnt/x && mount -t tmpfs inner /mnt/x'"
    ));
    sh("mkdir -p /run/stasis-probe/host && mount -t tmpfs host-late /run/stasis-probe/host");
    let later = mounts_of(pid);
    drop(_kill);
    let leftovers: Vec<_> = std::fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(".stasis-root"))
        .collect();
    assert_eq!(after, before);
    assert_eq!(file.trim(), "kept");
    assert!(
        later
            .iter()
            .any(|m| m.starts_with("/mnt/sub/x / tmpfs inner")),
        "{later:?}"
    );
    assert!(
        later
            .iter()
            .any(|m| m.starts_with("/run/stasis-probe/host / tmpfs host-late")),
        "{later:?}"
    );
    assert!(
        leftovers.is_empty(),
        "the restore's yard is removed: {leftovers:?}"
    );
}

/// A file deleted while open on a tmpfs mount made read-only after it (a ghost on a read-only
/// mount, zdtm's ghost_on_rofs), in a host process's mount namespace of its own: the restore
/// makes the ghost before it makes the mount read-only again. The fd reads the file's bytes,
/// the mount is still read-only.
#[test]
fn file_deleted_on_a_mount_made_read_only_after_it_comes_back() {
    let _g = serial_root!();
    let dir = temp_dir("ghost-rofs");
    let go = dir.join("go");
    let script = format!(
        r#"
import os, time
assert os.system("mount -t tmpfs ro-later /mnt") == 0
with open("/mnt/ghost", "w") as w:
    w.write("kept")
f = open("/mnt/ghost")  # read-only: one open for writing keeps the mount from going read-only
os.unlink("/mnt/ghost")
assert os.system("mount -o remount,bind,ro /mnt") == 0
print("ready", flush=True)
while not os.path.exists("{go}"):
    time.sleep(0.02)
f.seek(0)
try:
    open("/mnt/new", "w"); w = "written"
except OSError as e:
    w = type(e).__name__
print("after", f.read(), w, flush=True)
time.sleep(1e6)
"#,
        go = go.display()
    );
    let out = dir.join("out.txt");
    let child = Command::new("setsid")
        .args([
            "unshare",
            "-m",
            "--propagation",
            "slave",
            "/usr/bin/python3",
            "-c",
        ])
        .arg(&script)
        .stdout(std::fs::File::create(&out).unwrap())
        .spawn()
        .expect("unshare");
    let pid = child.id();
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            kill_tree(&[self.0]);
        }
    }
    let _kill = Kill(pid);
    let lines = |n: usize| {
        let end = Instant::now() + T;
        loop {
            let text = std::fs::read_to_string(&out).unwrap_or_default();
            let l: Vec<String> = text.lines().map(str::to_string).collect();
            if l.len() >= n || Instant::now() > end {
                return l;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    assert_eq!(lines(1).first().map(String::as_str), Some("ready"));
    let img = dir.join("images");
    std::fs::create_dir(&img).unwrap();
    std::fs::set_permissions(&img, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    let img_s = img.to_str().unwrap();
    let ext = [
        "--ext-mount-map",
        "auto",
        "--enable-external-masters",
        "--enable-external-sharing",
    ];
    let pid_s = pid.to_string();
    let mut args = vec!["dump", "-t", &pid_s, "-D", img_s];
    args.extend(ext);
    check_ok("dump", &stasis(&args));
    let mut child = child;
    let _ = child.wait();
    let mut args = vec!["restore", "-D", img_s, "-d", "--root", "/"];
    args.extend(ext);
    check_ok("restore", &stasis(&args));
    std::fs::write(&go, b"").unwrap();
    let l = lines(2);
    assert_eq!(
        l.get(1).map(String::as_str),
        Some("after kept OSError"),
        "{l:?}"
    );
}
