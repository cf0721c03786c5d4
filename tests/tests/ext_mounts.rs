//! Mounts bound in from the host, found external by themselves at dump (`--ext-mount-map
//! auto`, CRIU's `--external mnt[]`): stasis driven on its own command line, as LXC and scripts
//! drive CRIU, on a runc container with two host directories bound in, one private, one a
//! slave of a shared host mount (engine/src/ns/mnt_ext.rs).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use stasis_tests::containers::BUSYBOX;
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

/// Waits until `pid` runs `comm`: a script that says ready then execs is dumped once it has
/// (before, the fingerprint of the shell would be compared with the program's).
fn wait_exec(pid: u32, comm: &str) {
    let t0 = Instant::now();
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        != comm
        && t0.elapsed() < T
    {
        std::thread::sleep(Duration::from_millis(10));
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
    c.run_detached(true);
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

/// CRIU's options for a host process in a mount namespace of its own: the host's mounts
/// (its namespace is a copy of ours, made slave) are taken as external, slaves and shared.
const HOST_MOUNTS_EXTERNAL: [&str; 4] = [
    "--ext-mount-map",
    "auto",
    "--enable-external-masters",
    "--enable-external-sharing",
];

/// `cmd` in a mount namespace of its own whose mounts are slaves of ours, as systemd makes a
/// service's with PrivateTmp (`unshare -m --propagation slave`).
fn in_own_mount_namespace(name: &str, cmd: &[&str]) -> Workload {
    let mut args = vec!["-m", "--propagation", "slave"];
    args.extend_from_slice(cmd);
    Workload::start(name, Path::new("/usr/bin/unshare"), &args)
}

/// Dumps `w` with the host's mounts external, kills it and restores it with `--root /`.
fn dump_kill_restore_at_root(w: &Workload) -> Vec<u32> {
    let mut restore = HOST_MOUNTS_EXTERNAL.to_vec();
    restore.extend(["--root", "/"]);
    dump_kill_restore_with(w, &HOST_MOUNTS_EXTERNAL, &restore)
}

/// A host process in a mount namespace of its own, a copy of the host's made slave (as
/// systemd makes a service's with PrivateTmp), with a tmpfs of its own holding a file and a
/// shared bind of it: dumped with the host's mounts taken as external, killed, restored with
/// `--root /`. Same pid, same mounts with the same propagation, the file, a mount inside
/// still propagating to the bind, and a host mount still reaching it.
#[test]
fn host_process_in_a_mount_namespace_of_its_own_comes_back() {
    let _g = serial_root!();
    let probe = Path::new("/run/stasis-probe");
    let _cleanup = Unmount(vec![probe.to_path_buf()]);
    sh("mkdir -p /run/stasis-probe && mount -t tmpfs probe-host /run/stasis-probe && mount --make-shared /run/stasis-probe");
    let script = "mount -t tmpfs own /mnt && echo kept > /mnt/f && mount --make-shared /mnt \
                  && mkdir /mnt/sub && mount --bind /mnt /mnt/sub && echo ready && exec sleep 1000";
    let w = in_own_mount_namespace("own-mntns", &["sh", "-c", script]);
    w.wait_lines(1, T);
    wait_exec(w.pid, "sleep");
    let pid = w.pid;
    let before = mounts_of(pid);
    assert!(
        before
            .iter()
            .any(|m| m.starts_with("/mnt/sub / tmpfs own shared")),
        "{before:?}"
    );
    let img = w.images();
    let plain = stasis(&[
        "dump",
        "-t",
        &pid.to_string(),
        "-D",
        img.to_str().unwrap(),
        "-R",
    ]);
    let err = String::from_utf8_lossy(&plain.stderr);
    assert!(
        !plain.status.success() && err.contains("--ext-mount-map auto"),
        "{err}"
    );
    let pids = dump_kill_restore_at_root(&w);
    let after = mounts_of(pid);
    let file = read_in(pid, "/mnt/f");
    sh(&format!(
        "nsenter -t {pid} -m sh -c 'mkdir -p /mnt/x && mount -t tmpfs inner /mnt/x'"
    ));
    sh("mkdir -p /run/stasis-probe/host && mount -t tmpfs host-late /run/stasis-probe/host");
    let later = mounts_of(pid);
    kill_tree(&pids);
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
    let script = r#"
import os, time
assert os.system("mount -t tmpfs ro-later /mnt") == 0
with open("/mnt/ghost", "w") as w:
    w.write("kept")
f = open("/mnt/ghost")  # read-only: one open for writing keeps the mount from going read-only
os.unlink("/mnt/ghost")
assert os.system("mount -o remount,bind,ro /mnt") == 0
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
f.seek(0)
try:
    open("/mnt/new", "w"); w = "written"
except OSError as e:
    w = type(e).__name__
print("after", f.read(), w, flush=True)
time.sleep(1e6)
"#;
    let w = in_own_mount_namespace("ghost-rofs", &["/usr/bin/python3", "-c", script]);
    assert_eq!(
        w.wait_lines(1, T).first().map(String::as_str),
        Some("ready")
    );
    let pids = dump_kill_restore_at_root(&w);
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(
        lines.get(1).map(String::as_str),
        Some("after kept OSError"),
        "{lines:?}"
    );
}

/// Files of the proc filesystem held open by a tree with a mount namespace of its own: on
/// /proc and on a second proc mounted elsewhere (zdtm's mountpoints; a monitor keeping
/// /proc/stat open), and a child's working directory in /proc. The proc mounts are made by the
/// tree's init once it has pivoted, so the task opens its files again itself: same paths,
/// offsets and flags, and they read the kernel's figures again; the child is in /proc/tty.
#[test]
fn proc_files_held_open_on_proc_mounts_come_back() {
    let _g = serial_root!();
    let script = r#"
import os, time
os.makedirs("/run/stasis-proc2", exist_ok=True)
assert os.system("mount -t proc none /run/stasis-proc2") == 0
a = open("/proc/meminfo")
b = open("/run/stasis-proc2/uptime")
a.readline()
here = os.getcwd()
if os.fork() == 0:
    os.chdir("/proc/tty")
    while not os.path.exists(f"{here}/go"):
        time.sleep(0.02)
    print("child", os.getcwd(), "drivers" in os.listdir("."), flush=True)
    time.sleep(1e6)
print("ready", flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
time.sleep(0.2)
links = [os.readlink(f"/proc/self/fd/{f.fileno()}") for f in (a, b)]
second = a.readline().split(":")[0]
b.seek(0)
up = float(b.read().split()[0])
print("after", *links, second, up > 0, flush=True)
time.sleep(1e6)
"#;
    let w = in_own_mount_namespace("proc-files", &["/usr/bin/python3", "-c", script]);
    assert_eq!(
        w.wait_lines(1, T).first().map(String::as_str),
        Some("ready")
    );
    let pids = dump_kill_restore_at_root(&w);
    let lines = w.go_and_collect(&pids, 3);
    let _ = std::fs::remove_dir("/run/stasis-proc2");
    assert_eq!(
        lines.get(1..3),
        Some(
            &[
                "child /proc/tty True".to_string(),
                "after /proc/meminfo /run/stasis-proc2/uptime MemFree True".into()
            ][..]
        ),
        "{lines:?}"
    );
}

/// zdtm's mntns_remap on a host process: a tmpfs moved onto a bind's parent covers the bind's
/// children, whose copies (propagation) lie on both stacks, and a child in a mount namespace
/// of its own holds copies of all of it. Binds are taken through the mount they come from,
/// not its covered path; each namespace comes back with the same mounts and peer groups, and
/// the two namespaces' copies are still peers (a mount made in one shows in the other).
#[test]
fn mounts_under_a_moved_mount_come_back_in_both_namespaces() {
    let _g = serial_root!();
    let dir = Path::new("/run/stasis-remap");
    let _cleanup = Unmount(vec![dir.to_path_buf()]);
    sh("mkdir -p /run/stasis-remap");
    let script = "cd /run/stasis-remap && mount -t tmpfs remap . && cd /run/stasis-remap && \
                  mkdir 1 2 && mount --bind 1 1 && mount --make-private 1 && \
                  mount -t tmpfs moved 2 && mkdir 1/a 2/a && mount --bind 1/a 1/a && \
                  mount --make-shared 1/a && mount --bind 1/a 2/a && mkdir 1/a/c && \
                  mount -t tmpfs inner 1/a/c && mount --move 2 1 && cd / && \
                  unshare -m --propagation unchanged sleep 1000 & sleep 0.5; echo ready; \
                  exec sleep 1000";
    let w = in_own_mount_namespace("remap", &["sh", "-c", script]);
    w.wait_lines(1, T);
    wait_exec(w.pid, "sleep");
    let child = || *children_of(w.pid).first().expect("the nested child");
    let nested = child();
    let (root_before, nested_before) = (mounts_of(w.pid), mounts_of(nested));
    assert!(
        nested_before
            .iter()
            .any(|m| m.contains("remap/1/a/c / tmpfs inner shared")),
        "{nested_before:?}"
    );
    let pids = dump_kill_restore_at_root(&w);
    let (root_after, nested_after) = (mounts_of(w.pid), mounts_of(child()));
    sh(&format!(
        "nsenter -t {} -m mount -t tmpfs late /run/stasis-remap/1/a/c",
        w.pid
    ));
    let nested_later = mounts_of(child());
    kill_tree(&pids);
    assert_eq!(root_after, root_before);
    assert_eq!(nested_after, nested_before);
    assert!(
        nested_later
            .iter()
            .any(|m| m.contains("remap/1/a/c / tmpfs late")),
        "a mount made on the tree's peer shows in the nested copy: {nested_later:?}"
    );
}

/// A child in a mount namespace of its own that pivoted into a tmpfs it mounted (a sandbox,
/// a nested container): its namespace comes back rooted at that tmpfs, with its file, its
/// open fd and its counter going on.
#[test]
fn child_pivoted_into_a_tmpfs_of_its_own_comes_back() {
    let _g = serial_root!();
    let dir = std::env::temp_dir().join(format!("stasis-jail-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("script dir");
    let inner = dir.join("inner.sh");
    std::fs::write(
        &inner,
        // No command forked in the loop (a short-lived one would be in the dump).
        "/busybox umount -l /old\n/busybox rmdir /old\n/busybox mkfifo /tick\nexec 4<>/tick\n\
         echo kept > /f\nexec 3</f\n\
         i=0\nwhile true; do echo $i > /count; i=$((i+1)); read -t 0.1 x <&4; done\n",
    )
    .expect("inner script");
    let outer = dir.join("outer.sh");
    std::fs::write(
        &outer,
        format!(
            "set -e\nmount -t tmpfs jail /run/stasis-jail\ncp {BUSYBOX} /run/stasis-jail/busybox\n\
             cp {} /run/stasis-jail/inner.sh\nmkdir /run/stasis-jail/old\ncd /run/stasis-jail\n\
             /run/stasis-jail/busybox pivot_root . old\nexec /busybox sh /inner.sh\n",
            inner.display()
        ),
    )
    .expect("outer script");
    let script = format!(
        "mkdir -p /run/stasis-jail && unshare -m --propagation private sh {} & \
         sleep 0.5; echo ready; exec sleep 1000",
        outer.display()
    );
    let w = in_own_mount_namespace("jail", &["sh", "-c", &script]);
    w.wait_lines(1, T);
    wait_exec(w.pid, "sleep");
    let child = || *children_of(w.pid).first().expect("the pivoted child");
    let count = |pid: u32| read_in(pid, "/count").trim().parse::<u64>().unwrap_or(0);
    let wait_count = |pid: u32, above: u64| {
        let t0 = Instant::now();
        while count(pid) <= above && t0.elapsed() < T {
            std::thread::sleep(Duration::from_millis(50));
        }
        count(pid)
    };
    let c = child();
    let first = wait_count(c, 0);
    assert_eq!(read_in(c, "/f").trim(), "kept");
    let before = mounts_of(c);
    assert!(
        before.iter().any(|m| m.starts_with("/ / tmpfs jail")),
        "{before:?}"
    );
    let pids = dump_kill_restore_at_root(&w);
    let c = child();
    let after = mounts_of(c);
    let dumped = count(c);
    let later = wait_count(c, dumped);
    let fd = std::fs::read_link(format!("/proc/{c}/fd/3")).map(|l| l.display().to_string());
    let file = read_in(c, "/f");
    kill_tree(&pids);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(after, before, "the same mounts, rooted at its tmpfs");
    assert_eq!(file.trim(), "kept");
    assert_eq!(fd.ok().as_deref(), Some("/f"));
    assert!(
        dumped >= first && later > dumped,
        "the counter goes on: {first} {dumped} {later}"
    );
}

/// An inotify watch on a tmpfs only the tree mounts (a service watching its private /run):
/// the watched directory is found through the tree's own mount of it, and after the restore
/// the process still reads the events of files created there.
#[test]
fn inotify_watch_on_a_tmpfs_only_the_tree_mounts_still_reports() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, struct
libc = ctypes.CDLL(None, use_errno=True)
assert os.system("mount -t tmpfs watched /mnt") == 0
fd = libc.inotify_init1(0)
assert libc.inotify_add_watch(fd, b"/mnt", 0x100) >= 0, ctypes.get_errno()
print("ready", flush=True)
while True:
    buf = os.read(fd, 4096)
    off = 0
    while off < len(buf):
        wd, mask, cookie, ln = struct.unpack_from("iIII", buf, off)
        print("created", buf[off + 16:off + 16 + ln].rstrip(b"\0").decode(), flush=True)
        off += 16 + ln
"#;
    let w = in_own_mount_namespace("inotify-tmpfs", &["python3", "-c", script]);
    w.wait_lines(1, T);
    let create = |name: &str| {
        std::fs::write(format!("/proc/{}/root/mnt/{name}", w.pid), "x").expect("create");
    };
    create("before");
    assert_eq!(
        w.wait_lines(2, T).get(1).map(String::as_str),
        Some("created before")
    );
    let pids = dump_kill_restore_at_root(&w);
    create("after");
    let lines = w.wait_lines(3, T);
    kill_tree(&pids);
    assert_eq!(
        lines.get(2).map(String::as_str),
        Some("created after"),
        "{lines:?}"
    );
}

/// A tmpfs only the tree mounts, holding a file with two names and a file deleted while open
/// but linked elsewhere (`--link-remap`): the two names are one file again (a write through
/// one shows through the other), the deleted file's fd reads it, and the link the dump made
/// for it is gone once the restore succeeded (it is in no namespace but the tree's).
#[test]
fn hard_links_and_remap_links_on_the_trees_own_tmpfs() {
    let _g = serial_root!();
    let script = r#"
import os, time
assert os.system("mount -t tmpfs own /mnt") == 0
with open("/mnt/f", "w") as w:
    w.write("one")
os.link("/mnt/f", "/mnt/g")
with open("/mnt/gone", "w") as w:
    w.write("kept")
os.link("/mnt/gone", "/mnt/elsewhere")
f = open("/mnt/gone")
os.unlink("/mnt/gone")
print("ready", flush=True)
while not os.path.exists("/mnt/go"):
    time.sleep(0.05)
print("read", f.read(), flush=True)
time.sleep(1e6)
"#;
    let w = in_own_mount_namespace("tmpfs-links", &["python3", "-c", script]);
    w.wait_lines(1, T);
    let mut dump = HOST_MOUNTS_EXTERNAL.to_vec();
    dump.push("--link-remap");
    let mut restore = HOST_MOUNTS_EXTERNAL.to_vec();
    restore.extend(["--root", "/"]);
    let pids = dump_kill_restore_with(&w, &dump, &restore);
    let at = |name: &str| format!("/proc/{}/root/mnt/{name}", w.pid);
    use std::os::unix::fs::MetadataExt;
    let ino = |name: &str| std::fs::metadata(at(name)).map(|m| m.ino()).unwrap_or(0);
    let same = ino("f") != 0 && ino("f") == ino("g");
    std::fs::write(at("g"), "two").expect("write through g");
    let through_f = std::fs::read_to_string(at("f")).unwrap_or_default();
    let leftovers: Vec<String> = std::fs::read_dir(at(""))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains("link_remap"))
                .collect()
        })
        .unwrap_or_default();
    std::fs::write(at("go"), "").expect("go");
    let lines = w.wait_lines(2, T);
    kill_tree(&pids);
    assert!(same, "f and g are one file");
    assert_eq!(through_f, "two");
    assert!(
        leftovers.is_empty(),
        "the remap link is removed: {leftovers:?}"
    );
    assert_eq!(lines.get(1).map(String::as_str), Some("read kept"));
}

/// Binds whose source was deleted since (a directory and a file: mountinfo shows their roots
/// as `//deleted`) come back the same, their sources made for the moment and removed again.
#[test]
fn binds_of_deleted_sources_come_back() {
    let _g = serial_root!();
    let script = "mount -t tmpfs own /mnt && mkdir /mnt/src /mnt/dst && echo in > /mnt/src/f && \
                  touch /mnt/fsrc /mnt/fdst && mount --bind /mnt/src /mnt/dst && \
                  mount --bind /mnt/fsrc /mnt/fdst && rm /mnt/src/f && rmdir /mnt/src && \
                  rm /mnt/fsrc && echo ready && exec sleep 1000";
    let w = in_own_mount_namespace("deleted-binds", &["sh", "-c", script]);
    w.wait_lines(1, T);
    wait_exec(w.pid, "sleep");
    let before = mounts_of(w.pid);
    assert!(
        before
            .iter()
            .any(|m| m.starts_with("/mnt/dst /src//deleted tmpfs")),
        "{before:?}"
    );
    let pids = dump_kill_restore_at_root(&w);
    let after = mounts_of(w.pid);
    let gone = |p: &str| !Path::new(&format!("/proc/{}/root/mnt/{p}", w.pid)).exists();
    let (src_gone, fsrc_gone) = (gone("src"), gone("fsrc"));
    kill_tree(&pids);
    assert_eq!(after, before);
    assert!(
        src_gone && fsrc_gone,
        "the sources made for the binds are removed again"
    );
}

/// A file deleted while open through two mounts of one tmpfs in two mount namespaces (the
/// tree's, and a child's bind of one of its directories): one ghost serves both, and each fd
/// is again on its own mount (its link names the path its namespace saw), with the same inode
/// and content.
#[test]
fn ghost_file_open_through_mounts_of_two_namespaces() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
assert os.system("mount -t tmpfs shared /mnt && mkdir /mnt/a /mnt/b") == 0
with open("/mnt/a/f", "w") as w:
    w.write("ghost")
r, wr = os.pipe()
def report(who, f):
    while not os.path.exists("/mnt/go"):
        time.sleep(0.05)
    st = os.fstat(f.fileno())
    # One write: the two processes share the output.
    line = f"{who} {os.readlink(f'/proc/self/fd/{f.fileno()}')} {st.st_ino} {f.read()}\n"
    os.write(1, line.encode())
    time.sleep(1e6)
if os.fork() == 0:
    assert libc.unshare(0x20000) == 0, ctypes.get_errno()
    assert os.system("mount --bind /mnt/a /mnt/b") == 0
    f2 = open("/mnt/b/f")
    os.write(wr, b"x")
    report("child", f2)
f1 = open("/mnt/a/f")
os.read(r, 1)
os.unlink("/mnt/a/f")
print("ready", flush=True)
report("parent", f1)
"#;
    let w = in_own_mount_namespace("ghost-2ns", &["python3", "-c", script]);
    w.wait_lines(1, T);
    let pids = dump_kill_restore_at_root(&w);
    std::fs::write(format!("/proc/{}/root/mnt/go", w.pid), "").expect("go");
    let lines = w.wait_lines(3, T);
    kill_tree(&pids);
    let of = |who: &str| {
        lines
            .iter()
            .find(|l| l.starts_with(who))
            .map(|l| l.split(' ').map(str::to_string).collect::<Vec<_>>())
            .unwrap_or_default()
    };
    let (parent, child) = (of("parent "), of("child "));
    assert_eq!(
        parent.get(1..3),
        Some(&["/mnt/a/f".to_string(), "(deleted)".into()][..]),
        "{lines:?}"
    );
    assert_eq!(
        child.get(1..3),
        Some(&["/mnt/b/f".to_string(), "(deleted)".into()][..]),
        "{lines:?}"
    );
    assert_eq!(parent.get(3), child.get(3), "one inode");
    assert_eq!(
        (parent.get(4), child.get(4)),
        (Some(&"ghost".to_string()), Some(&"ghost".to_string()))
    );
}
