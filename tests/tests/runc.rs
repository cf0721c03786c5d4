//! Debian's runc driving stasis as its `criu` (through CRIU's RPC), on a busybox container the
//! test builds: its own pid, mount, uts, ipc and network namespaces, a tmpfs holding a file,
//! a counter on stdout (a host file: CRIU 4.2 refuses such a container), checkpointed and
//! restored by runc.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use stasis_tests::containers::*;
use stasis_tests::runc::*;
use stasis_tests::*;

#[test]
fn runc_checkpoints_and_restores_a_busybox_container() {
    let _g = serial_root!();
    let Some(c) = Container::start(test_name!(), "stasis-runc-cr") else {
        return;
    };
    let pid = c.pid("pid");
    let before_mounts = mounts(pid);
    assert_eq!(read_in(pid, "/dev/shm/x/f"), "kept");

    c.checkpoint(&[]);
    assert!(
        !alive(pid),
        "checkpoint without --leave-running ends the container"
    );
    let dumped = c.lines().len();
    assert!(c.dir.join("ckpt/inventory.img").exists());
    assert!(
        std::fs::read_dir(c.dir.join("ckpt"))
            .expect("images")
            .filter_map(|e| e.ok())
            .any(|e| e.file_name().to_string_lossy().starts_with("tmpfs-dev-")),
        "tmpfs contents saved"
    );

    let pid2 = c.restore(&[]);
    let lines = c.wait_lines(dumped + 5, T);
    assert!(
        lines.len() >= dumped + 5,
        "the counter runs on after the restore"
    );
    counter_is_continuous(&lines);

    // Its namespaces, mounts and files came back.
    assert_eq!(read_in(pid2, "/dev/shm/x/f"), "kept", "tmpfs content");
    let count: u64 = read_in(pid2, "/tmp/count")
        .parse()
        .expect("a count in /tmp");
    assert!(
        count as usize >= dumped,
        "the /tmp tmpfs is the one it writes"
    );
    assert_eq!(
        mounts(pid2),
        before_mounts,
        "the same mounts, the same options"
    );
    let state = c.state();
    assert!(state.contains("\"running\""), "runc state: {state}");
    assert!(
        state.contains(&format!("\"pid\": {pid2}")),
        "runc state: {state}"
    );
    let host = c.runc(&["exec", c.id, "hostname"]);
    assert_eq!(String::from_utf8_lossy(&host.stdout).trim(), "runc", "uts");
    let init = c.runc(&["exec", c.id, "cat", "/proc/1/cmdline"]);
    assert!(
        String::from_utf8_lossy(&init.stdout).contains("while true"),
        "the counter is pid 1 of its own /proc"
    );

    // runc manages the restored container as its own.
    assert!(
        c.runc(&["kill", c.id, "KILL"]).status.success(),
        "runc kill"
    );
    let end = Instant::now() + T;
    while alive(pid2) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!alive(pid2), "killed through runc");
    assert!(c.runc(&["delete", c.id]).status.success(), "runc delete");
}

/// On a host whose mounts are shared (systemd makes them so), runc's rslave root makes the
/// container's mounts slaves of the host's peer groups: they come back slaves (of the groups
/// of their sources here), the bundle's private ones private. The test runs in a mount
/// namespace of its own whose mounts it makes shared, so the host is left as it is.
#[test]
fn runc_container_on_a_host_whose_mounts_are_shared() {
    let _g = serial_root!();
    // This thread only (unshare implies CLONE_FS): runc and stasis are started from it.
    // SAFETY: unshare(2) of this thread's mount namespace; no memory is passed.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        let e = std::io::Error::last_os_error();
        skip(test_name!(), &format!("unshare(CLONE_NEWNS): {e}"));
        return;
    }
    // SAFETY: mount(2) with a NUL-terminated target and null source, type and data.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            c"/".as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_SHARED,
            std::ptr::null(),
        )
    };
    assert_eq!(
        r,
        0,
        "making our mounts shared: {}",
        std::io::Error::last_os_error()
    );
    let Some(c) = Container::start(test_name!(), "stasis-runc-shared-host") else {
        return;
    };
    let pid = c.pid("pid");
    let before = mounts(pid);
    assert!(
        before.iter().any(|m| m.2 == "slave"),
        "runc made slaves of the host's mounts: {before:?}"
    );
    c.checkpoint(&[]);
    let dumped = c.lines().len();
    let pid2 = c.restore(&[]);
    let lines = c.wait_lines(dumped + 3, T);
    counter_is_continuous(&lines);
    assert_eq!(
        mounts(pid2),
        before,
        "the same mounts, options and propagation"
    );
    assert!(
        c.runc(&["kill", c.id, "KILL"]).status.success(),
        "runc kill"
    );
}

#[test]
fn runc_checkpoint_leave_running_keeps_the_container() {
    let _g = serial_root!();
    let Some(c) = Container::start(test_name!(), "stasis-runc-lr") else {
        return;
    };
    let pid = c.pid("pid");
    let out = c.runc(&[
        "checkpoint",
        "--leave-running",
        "--image-path",
        "ckpt",
        "--work-path",
        "work",
        c.id,
    ]);
    ok(
        "runc checkpoint --leave-running",
        &out,
        &c.dir.join("work/dump.log"),
    );
    assert!(
        c.dir.join("ckpt/inventory.img").exists(),
        "a complete image set"
    );
    assert!(
        c.state().contains("\"running\""),
        "the container still runs"
    );
    assert_eq!(tracer_of(pid), 0, "untraced");
    let n = c.lines().len();
    let after = c.wait_lines(n + 3, Duration::from_secs(5));
    assert!(after.len() >= n + 3, "the container's process counts on");
    counter_is_continuous(&after);
}

/// A network namespace made by the test (as podman's netavark makes one), with a veth to the
/// host; removed when dropped.
struct NetNs(&'static str);

impl NetNs {
    fn new(name: &'static str, host_ip: &str, ns_ip: &str) -> NetNs {
        let ip = |args: &[&str]| {
            let out = Command::new("ip").args(args).output().expect("ip");
            assert!(
                out.status.success(),
                "ip {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let _ = Command::new("ip").args(["netns", "del", name]).output();
        let _ = Command::new("ip")
            .args(["link", "del", "vstasis0"])
            .output();
        let ns = NetNs(name);
        ip(&["netns", "add", name]);
        ip(&[
            "link", "add", "vstasis0", "type", "veth", "peer", "name", "vstasis1",
        ]);
        ip(&["link", "set", "vstasis1", "netns", name]);
        ip(&["addr", "add", &format!("{host_ip}/24"), "dev", "vstasis0"]);
        ip(&["link", "set", "vstasis0", "up"]);
        ip(&[
            "-n",
            name,
            "addr",
            "add",
            &format!("{ns_ip}/24"),
            "dev",
            "vstasis1",
        ]);
        ip(&["-n", name, "link", "set", "vstasis1", "up"]);
        ip(&["-n", name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", self.0]).output();
        let _ = Command::new("ip")
            .args(["link", "del", "vstasis0"])
            .output();
    }
}

/// runc's external network namespace: the bundle names it by path, runc declares it
/// (extRootNetNS) and hands it back at restore; a connection from the host through the veth
/// survives (--tcp-established, the lock inside the namespace), and new ones are answered.
#[test]
fn runc_container_in_a_netns_by_path_keeps_its_connection() {
    let _g = serial_root!();
    if Command::new("ip").arg("-V").output().is_err() {
        skip(test_name!(), "no ip (iproute2) to make the namespace");
        return;
    }
    let _ns = NetNs::new("stasis-runc-net", "10.231.7.1", "10.231.7.2");
    let Some(c) = Container::start_with(
        test_name!(),
        "stasis-runc-net",
        Shape {
            script: "nc -ll -p 7000 -e /bin/cat",
            netns: Some("/var/run/netns/stasis-runc-net"),
            ..COUNTER
        },
    ) else {
        return;
    };
    let end = Instant::now() + T;
    let conn = loop {
        match std::net::TcpStream::connect(("10.231.7.2", 7000)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > end => panic!("connect: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    conn.set_read_timeout(Some(T)).expect("timeout");
    let echo = |mut s: &std::net::TcpStream, msg: &str| {
        use std::io::{Read, Write};
        s.write_all(msg.as_bytes()).expect("send");
        let mut buf = vec![0u8; msg.len()];
        s.read_exact(&mut buf).expect("the echo");
        String::from_utf8_lossy(&buf).into_owned()
    };
    assert_eq!(echo(&conn, "before\n"), "before\n");
    c.checkpoint(&["--tcp-established"]);
    c.restore(&["--tcp-established"]);
    assert_eq!(echo(&conn, "after\n"), "after\n", "the same connection");
    let fresh = std::net::TcpStream::connect(("10.231.7.2", 7000)).expect("a new connection");
    fresh.set_read_timeout(Some(T)).expect("timeout");
    assert_eq!(
        echo(&fresh, "new\n"),
        "new\n",
        "the server answers new clients"
    );
}

/// The pid namespace of a process that reaps its children, as a pod's pause container
/// is; killed on drop.
struct PidNsHolder(std::process::Child);

impl PidNsHolder {
    fn start() -> PidNsHolder {
        let child = Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc", "python3", "-c"])
            .arg(
                "import os, time\nwhile True:\n    try:\n        os.wait()\n    except ChildProcessError:\n        time.sleep(0.05)\n",
            )
            .spawn()
            .expect("unshare");
        PidNsHolder(child)
    }

    /// The namespace's init (the python under unshare), once there.
    fn init(&self) -> u32 {
        let end = Instant::now() + T;
        loop {
            let kids = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", self.0.id()))
                .unwrap_or_default();
            if let Some(p) = kids.split_whitespace().next().and_then(|p| p.parse().ok()) {
                return p;
            }
            assert!(Instant::now() < end, "the namespace's init did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PidNsHolder {
    fn drop(&mut self) {
        let init = self.init();
        kill_tree(&[init]);
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A container that joins another's pid namespace (the bundle names it by path, as a pod's
/// containers share the pause container's): runc declares it external (extRootPidNS), the
/// container's init is not pid 1 there, and the restore joins the namespace runc hands back:
/// the same pid inside, the counter goes on, `runc exec` works.
#[test]
fn runc_container_in_an_external_pid_namespace() {
    let _g = serial_root!();
    if Command::new("unshare").arg("--version").output().is_err() {
        skip(
            test_name!(),
            "no unshare (util-linux) to make the namespace",
        );
        return;
    }
    let holder = PidNsHolder::start();
    let path = format!("/proc/{}/ns/pid", holder.init());
    let Some(c) = Container::start_with(
        test_name!(),
        "stasis-runc-extpid",
        Shape {
            pidns: Some(&path),
            ..COUNTER
        },
    ) else {
        return;
    };
    let nspid = |pid: u32| status_field(&format!("/proc/{pid}/status"), "NSpid:");
    let inner = |pid: u32| {
        nspid(pid)
            .split_whitespace()
            .last()
            .unwrap_or("")
            .to_string()
    };
    let pid = c.pid("pid");
    let before = inner(pid);
    assert_ne!(
        before, "1",
        "the container's init is not the namespace's init"
    );
    let (dumped, restored) = c.checkpoint_then_restore();
    assert_eq!(inner(restored), before, "the same pid in the namespace");
    let ns = |p: &str| std::fs::read_link(p).expect("ns link");
    assert_eq!(
        ns(&format!("/proc/{restored}/ns/pid")),
        ns(&path),
        "in the namespace it joined"
    );
    let after = c.wait_lines(dumped + 5, T);
    assert!(after.len() >= dumped + 5, "the counter goes on");
    let out = c.runc(&["exec", c.id, "echo", "exec-ok"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("exec-ok"),
        "runc exec: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(c);
    drop(holder);
}

/// A container with a cgroup namespace of its own (what runc and podman give containers on
/// cgroup v2 hosts): runc declares no cgroup mount then; the init makes a new namespace,
/// rooted at the container's cgroup, and mounts the hierarchies in it.
#[test]
fn runc_container_with_its_own_cgroup_namespace() {
    let _g = serial_root!();
    let Some(c) = Container::start_with(
        test_name!(),
        "stasis-runc-cgns",
        Shape {
            cgroupns: true,
            ..COUNTER
        },
    ) else {
        return;
    };
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/cgroup")).expect("ns link");
    let pid = c.pid("pid");
    assert_ne!(
        ns(&pid.to_string()),
        ns("self"),
        "a cgroup namespace of its own"
    );
    // Roots as we see them: the container's cgroup, the same before and after.
    let before = mounts_with_roots(pid);
    let (dumped, pid2) = c.checkpoint_then_restore();
    assert_ne!(
        ns(&pid2.to_string()),
        ns("self"),
        "still a cgroup namespace of its own"
    );
    assert_eq!(
        mounts_with_roots(pid2),
        before,
        "the same hierarchies, the same roots"
    );
    let own = c.runc(&["exec", c.id, "cat", "/proc/1/cgroup"]);
    let own = String::from_utf8_lossy(&own.stdout).into_owned();
    assert!(
        own.lines().any(|l| l.ends_with(":cpu:/")),
        "the init's cgroup is its namespace's root: {own}"
    );
    let lines = c.wait_lines(dumped + 5, T);
    assert!(lines.len() >= dumped + 5, "the counter runs on");
    counter_is_continuous(&lines);
}

/// (mountpoint, root, per-mount options) of every mount, sorted.
fn mounts_with_roots(pid: u32) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let mut v: Vec<_> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[4].to_string(), f[3].to_string(), f[5].to_string())
        })
        .collect();
    v.sort();
    v
}

/// A console socket as runc's callers (conmon) hold one: takes the pty master runc sends, then
/// copies what the container writes on its terminal into `out` until the terminal closes.
fn console_socket(path: &Path, out: PathBuf) -> std::thread::JoinHandle<()> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    let _ = std::fs::remove_file(path);
    let l = std::os::unix::net::UnixListener::bind(path).expect("console socket");
    std::thread::spawn(move || {
        let (c, _) = l.accept().expect("runc connects");
        let mut data = [0u8; 256];
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut cbuf = [0u64; 8];
        // SAFETY: a zeroed msghdr pointing at our buffers; recvmsg fills them.
        let master = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = cbuf.as_mut_ptr().cast();
            msg.msg_controllen = std::mem::size_of_val(&cbuf);
            assert!(libc::recvmsg(c.as_raw_fd(), &mut msg, 0) >= 0, "recvmsg");
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            assert!(!cmsg.is_null(), "an fd comes with the message");
            OwnedFd::from_raw_fd(std::ptr::read_unaligned(
                libc::CMSG_DATA(cmsg).cast::<libc::c_int>(),
            ))
        };
        let mut master = std::fs::File::from(master);
        let mut f = std::fs::File::create(&out).expect("tty output");
        let mut buf = [0u8; 4096];
        use std::io::{Read, Write};
        while let Ok(n) = master.read(&mut buf) {
            if n == 0 || f.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    })
}

/// The counts the container wrote on its terminal, from `file`.
fn tty_counts(file: &Path) -> Vec<u64> {
    std::fs::read_to_string(file)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

fn wait_tty_counts(file: &Path, n: usize) -> Vec<u64> {
    let end = Instant::now() + T;
    loop {
        let c = tty_counts(file);
        if c.len() >= n || Instant::now() > end {
            return c;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A container with a terminal (`runc run -t`, `podman run -t`): its master is the caller's
/// console socket's, outside the tree. The restore makes a new pty in the container's devpts
/// (/dev/console binds its slave) and hands the master to runc (orphan-pts-master), which
/// passes it to the new console socket; the counter goes on there, on its controlling
/// terminal.
#[test]
fn runc_container_with_a_terminal_gets_a_new_one_through_the_console_socket() {
    let _g = serial_root!();
    let Some(c) = Container::create(test_name!(), "stasis-runc-tty", COUNTER) else {
        return;
    };
    let config = c.dir.join("config.json");
    let spec = std::fs::read_to_string(&config).expect("config.json");
    std::fs::write(
        &config,
        spec.replace("\"terminal\": false", "\"terminal\": true"),
    )
    .expect("config.json");
    let sock1 = c.dir.join("console1.sock");
    let tty1 = c.dir.join("tty1.out");
    let reader = console_socket(&sock1, tty1.clone());
    let status = c
        .runc_cmd(&[
            "run",
            "-d",
            "--console-socket",
            sock1.to_str().expect("utf8"),
            "--pid-file",
            "pid",
            c.id,
        ])
        .status()
        .expect("runc run");
    assert!(status.success(), "runc run -d -t");
    assert!(
        wait_tty_counts(&tty1, 3).len() >= 3,
        "the container counts on its terminal"
    );
    c.checkpoint(&[]);
    reader
        .join()
        .expect("the first terminal closes with the container");
    let dumped = *tty_counts(&tty1).last().expect("counts");

    let sock2 = c.dir.join("console2.sock");
    let tty2 = c.dir.join("tty2.out");
    let _reader2 = console_socket(&sock2, tty2.clone());
    let pid2 = c.restore(&["--console-socket", sock2.to_str().expect("utf8")]);
    let after = wait_tty_counts(&tty2, 3);
    assert!(
        after.len() >= 3,
        "the restored container counts on the new terminal"
    );
    assert!(
        after[0] <= dumped + 2 && after[0] + 1 >= dumped,
        "it goes on from {dumped}: {after:?}"
    );
    for w in after.windows(2) {
        assert_eq!(w[1], w[0] + 1, "{after:?}");
    }
    // Its controlling terminal is the new pty's slave, /dev/pts/0 in its devpts.
    let stat = std::fs::read_to_string(format!("/proc/{pid2}/stat")).expect("stat");
    let tty_nr: u64 = stat
        .rsplit(')')
        .next()
        .and_then(|r| r.split_whitespace().nth(4))
        .and_then(|v| v.parse().ok())
        .expect("tty_nr");
    assert_eq!(tty_nr, 136 << 8, "pts/0 is its controlling terminal");
    let _ = c.runc(&["kill", c.id, "KILL"]);
}

/// A container with a user namespace of its own (runc's uidMappings, podman's --userns): root
/// inside is host uid 100000. It comes back in a user namespace with the same maps that owns
/// its other namespaces (so `runc exec`, which enters them from inside, works), its processes
/// with their ids and capabilities as they were, and the counter goes on.
#[test]
fn runc_container_with_its_own_user_namespace() {
    let _g = serial_root!();
    let Some(c) = Container::start_with(
        test_name!(),
        "stasis-runc-userns",
        Shape {
            userns: true,
            ..COUNTER
        },
    ) else {
        return;
    };
    let status = |pid: u32, key: &str| status_field(&format!("/proc/{pid}/status"), key);
    let pid = c.pid("pid");
    let map =
        |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap_or_default();
    let (uid, caps, uid_map) = (status(pid, "Uid:"), status(pid, "CapEff:"), map(pid));
    assert!(
        uid.starts_with(&USERNS_ROOT.to_string()),
        "root inside is {USERNS_ROOT}: {uid}"
    );
    let (dumped, pid2) = c.checkpoint_then_restore();
    assert_eq!(map(pid2), uid_map, "the same uid map");
    assert_eq!(status(pid2, "Uid:"), uid, "the same ids");
    assert_eq!(status(pid2, "CapEff:"), caps, "the same capabilities");
    let ns = |pid: &str| std::fs::read_link(format!("/proc/{pid}/ns/user")).expect("ns link");
    assert_ne!(
        ns(&pid2.to_string()),
        ns("self"),
        "a user namespace of its own"
    );
    let id = c.runc(&[
        "exec",
        c.id,
        "sh",
        "-c",
        "echo $(id -u) $(cat /proc/1/cmdline)",
    ]);
    let id = String::from_utf8_lossy(&id.stdout).into_owned();
    assert!(
        id.starts_with("0 ") && id.contains("while true"),
        "runc exec enters it as root and sees the counter as pid 1: {id:?}"
    );
    let lines = c.wait_lines(dumped + 5, T);
    assert!(lines.len() >= dumped + 5, "the counter runs on");
    counter_is_continuous(&lines);
}

/// A bind mount the bundle asks to be shared (`rshared`), alone in its peer group on a host
/// whose mounts are private: it comes back shared, made so once every mount is there.
#[test]
fn runc_container_with_a_shared_bind_mount() {
    let _g = serial_root!();
    let Some(c) = Container::create(test_name!(), "stasis-runc-shared", COUNTER) else {
        return;
    };
    let source = c.dir.join("shared-src");
    std::fs::create_dir_all(&source).expect("bind source");
    std::fs::write(source.join("f"), "in the bind").expect("file");
    let config = c.dir.join("config.json");
    let spec = std::fs::read_to_string(&config).expect("config.json");
    let mount = format!(
        r#"{{"destination": "/shared", "type": "bind", "source": "{}", "options": ["rbind", "rshared"]}},
		{{
			"destination": "/proc","#,
        source.display()
    );
    let spec = spec.replacen("{\n\t\t\t\"destination\": \"/proc\",", &mount, 1);
    assert!(spec.contains("rshared"), "config.json changed shape");
    std::fs::write(&config, spec).expect("config.json");
    c.run_detached(true);
    let tags = |pid: u32| -> String {
        let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
        text.lines()
            .find(|l| l.split(' ').nth(4) == Some("/shared"))
            .map(|l| {
                let left = l.split(" - ").next().unwrap_or("");
                let f: Vec<&str> = left.split(' ').collect();
                f[6..]
                    .iter()
                    .map(|t| t.split(':').next().unwrap_or(""))
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .unwrap_or_else(|| "no /shared mount".into())
    };
    let pid = c.pid("pid");
    if tags(pid) != "shared" {
        skip(
            test_name!(),
            &format!("runc made /shared {:?}, not shared alone", tags(pid)),
        );
        return;
    }
    let (dumped, restored) = c.checkpoint_then_restore();
    assert_eq!(tags(restored), "shared", "the bind is shared again");
    assert_eq!(read_in(restored, "/shared/f"), "in the bind");
    let after = c.wait_lines(dumped + 5, T);
    assert!(after.len() >= dumped + 5, "the counter goes on");
}

/// The propagation of the mounts at /pa to /pe, by mountpoint: each peer group named by the
/// first mountpoint (in order) that is shared in it, so that two tables compare.
fn peer_groups(pid: u32) -> Vec<(String, String, String)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).expect("mountinfo");
    let mut rows: Vec<(String, Option<String>, Option<String>)> = text
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            let tag = |p: &str| {
                f[6..]
                    .iter()
                    .take_while(|t| **t != "-")
                    .find_map(|t| t.strip_prefix(p).map(str::to_string))
            };
            ["/pa", "/pb", "/pc", "/pd", "/pe"]
                .contains(&f[4])
                .then(|| (f[4].to_string(), tag("shared:"), tag("master:")))
        })
        .collect();
    rows.sort();
    let name = |g: &Option<String>| -> String {
        g.as_ref().map_or("-".into(), |g| {
            rows.iter()
                .find(|r| r.1.as_ref() == Some(g))
                .map_or("outside".into(), |r| r.0.clone())
        })
    };
    rows.iter()
        .map(|r| (r.0.clone(), name(&r.1), name(&r.2)))
        .collect()
}

/// Peer groups of several mounts and slaves of them, made inside the container (a tmpfs made
/// shared, binds of it, a slave, a slave that is shared in a group of its own): they come
/// back with the same groups and masters, and a mount made afterwards propagates as before.
#[test]
fn runc_container_with_peer_groups_and_slaves_of_its_own() {
    let _g = serial_root!();
    let Some(c) = Container::start(test_name!(), "stasis-runc-peers") else {
        return;
    };
    let script = "mkdir -p /pa /pb /pc /pd /pe && mount -t tmpfs pg /pa && mkdir /pa/sub && \
                  echo kept > /pa/sub/f && mount --make-shared /pa && mount --bind /pa /pb && \
                  mount --bind /pa /pc && mount --make-slave /pc && \
                  mount --bind /pa/sub /pd && mount --make-slave /pd && \
                  mount --make-shared /pd && mount --bind /pd /pe";
    let out = c.runc(&["exec", "--cap", "CAP_SYS_ADMIN", c.id, "sh", "-c", script]);
    assert!(
        out.status.success(),
        "mounting inside: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pid = c.pid("pid");
    let before = peer_groups(pid);
    let expected: Vec<(String, String, String)> = [
        ("/pa", "/pa", "-"),
        ("/pb", "/pa", "-"),
        ("/pc", "-", "/pa"),
        ("/pd", "/pd", "/pa"),
        ("/pe", "/pd", "/pa"),
    ]
    .iter()
    .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
    .collect();
    assert_eq!(before, expected, "the kernel made the groups asked for");
    let (dumped, restored) = c.checkpoint_then_restore();
    assert_eq!(peer_groups(restored), before, "the same groups and masters");
    assert_eq!(read_in(restored, "/pe/f"), "kept");
    // Propagation works as it did: into peers and slaves, not back from a slave.
    let script = "mkdir /pa/new /pa/sub/new /pc/own && mount -t tmpfs n /pa/new && \
                  mount -t tmpfs s /pa/sub/new && mount -t tmpfs o /pc/own";
    let out = c.runc(&["exec", "--cap", "CAP_SYS_ADMIN", c.id, "sh", "-c", script]);
    assert!(
        out.status.success(),
        "mounting after restore: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(format!("/proc/{restored}/mountinfo")).expect("mountinfo");
    let at: Vec<&str> = text.lines().filter_map(|l| l.split(' ').nth(4)).collect();
    for mp in ["/pb/new", "/pc/new", "/pd/new", "/pe/new"] {
        assert!(at.contains(&mp), "propagated to {mp}: {at:?}");
    }
    for mp in ["/pa/own", "/pb/own"] {
        assert!(!at.contains(&mp), "nothing comes back from a slave: {mp}");
    }
    let lines = c.wait_lines(dumped + 5, T);
    assert!(lines.len() >= dumped + 5, "the counter goes on");
    counter_is_continuous(&lines);
}

/// A file of the container's /tmp tmpfs hidden under a mount made on its directory: saved
/// through a copy of the tmpfs without its submounts, it is there again once that mount goes.
#[test]
fn runc_container_keeps_tmpfs_files_hidden_under_a_mount() {
    let _g = serial_root!();
    let Some(c) = Container::start(test_name!(), "stasis-runc-hidden") else {
        return;
    };
    let script = "mkdir -p /tmp/under && echo hidden > /tmp/under/f && \
                  mount -t tmpfs over /tmp/under && echo top > /tmp/under/g";
    let out = c.runc(&["exec", "--cap", "CAP_SYS_ADMIN", c.id, "sh", "-c", script]);
    assert!(
        out.status.success(),
        "mounting inside: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (dumped, restored) = c.checkpoint_then_restore();
    assert_eq!(read_in(restored, "/tmp/under/g"), "top", "the mount on top");
    // Unmounted from the host, in the container's mount namespace.
    let out = std::process::Command::new("nsenter")
        .args([
            "-t",
            &restored.to_string(),
            "-m",
            "/bin/busybox",
            "umount",
            "/tmp/under",
        ])
        .output()
        .expect("nsenter");
    assert!(out.status.success(), "umount: {out:?}");
    assert_eq!(
        read_in(restored, "/tmp/under/f"),
        "hidden",
        "the file under it"
    );
    let lines = c.wait_lines(dumped + 5, T);
    assert!(lines.len() >= dumped + 5, "the counter goes on");
}

fn mnt_ns(pid: u32) -> String {
    std::fs::read_link(format!("/proc/{pid}/ns/mnt"))
        .map(|l| l.display().to_string())
        .unwrap_or_default()
}

/// A task of the container in a mount namespace of its own (`unshare -m`, as systemd makes a
/// service's PrivateTmp), with a tmpfs only it sees, a file of it open, and a copy of the
/// container's /tmp: through two checkpoints and restores it keeps its namespace, its tmpfs
/// and its open file, and its /tmp is still the container's (a file the container's /tmp gets
/// after the restore is what it copies into its own tmpfs).
#[test]
fn runc_container_with_a_task_in_a_mount_namespace_of_its_own() {
    let _g = serial_root!();
    let Some(c) = Container::start_with(
        test_name!(),
        "stasis-runc-nested",
        Shape {
            script:
                "echo first > /tmp/t; mkdir -p /tmp/p; \
                     unshare -m sh -c 'mount -t tmpfs own /tmp/p && echo mine > /tmp/p/f && \
                     exec 3</tmp/p/f; while true; do cat /tmp/t > /tmp/p/seen; sleep 0.1; done' & \
                     i=0; while true; do echo $i; echo $i > /tmp/count; i=$((i+1)); sleep 0.1; done",
            admin: true,
            ..COUNTER
        },
    ) else {
        return;
    };
    let wait_seen = |child: u32, want: &str| {
        let t0 = Instant::now();
        while read_in(child, "/tmp/p/seen").trim() != want && t0.elapsed() < T {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(
            read_in(child, "/tmp/p/seen").trim(),
            want,
            "the nested task copies /tmp/t"
        );
    };
    // The init's child in a mount namespace of its own, with its tmpfs.
    let nested_child = |init: u32| {
        let t0 = Instant::now();
        loop {
            let nested: Vec<u32> = children_of(init)
                .into_iter()
                .filter(|&p| mnt_ns(p) != mnt_ns(init) && read_in(p, "/tmp/p/f") == "mine")
                .collect();
            if let [p] = nested[..] {
                return p;
            }
            assert!(t0.elapsed() < T, "no task in a mount namespace of its own");
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    let child = nested_child(c.pid("pid"));
    let vpid = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap_or_default()
            .lines()
            .find(|l| l.starts_with("NSpid:"))
            .and_then(|l| l.split_whitespace().last().map(str::to_string))
            .unwrap_or_default()
    };
    let inner = vpid(child);
    wait_seen(child, "first");
    let mut dumped = 0;
    for round in ["second", "third"] {
        let (d, init) = c.checkpoint_then_restore();
        dumped = d;
        let child = nested_child(init);
        assert_eq!(vpid(child), inner, "the same nested task");
        assert_eq!(
            std::fs::read_link(format!("/proc/{child}/fd/3"))
                .map(|l| l.display().to_string())
                .unwrap_or_default(),
            "/tmp/p/f",
            "its open file, on its own tmpfs"
        );
        assert!(
            !Path::new(&format!("/proc/{init}/root/tmp/p/f")).exists(),
            "the container does not see the nested tmpfs"
        );
        std::fs::write(format!("/proc/{init}/root/tmp/t"), round).expect("write /tmp/t");
        wait_seen(child, round);
    }
    let lines = c.wait_lines(dumped + 5, T);
    assert!(lines.len() >= dumped + 5, "the counter goes on");
    counter_is_continuous(&lines);
}

/// A container whose init (pid 1 of its namespace) has threads, as a JVM, node, Go or a
/// python with a pool has. Killing it after the dump: its last thread to die waits in the
/// kernel (`zap_pid_ns_processes`) for every other pid of the namespace to be freed, its own
/// dead threads included, which only their tracer frees by reaping them; a dumper waiting on
/// that last thread first hung runc's checkpoint for ever. Two checkpoints and restores: the
/// count goes on, and all five threads are back each time.
#[test]
fn runc_container_whose_init_has_threads() {
    let _g = serial_root!();
    let shape = Shape {
        script: "exec /threadcounter",
        ..COUNTER
    };
    let Some(c) = Container::create(test_name!(), "stasis-runc-thr", shape) else {
        return;
    };
    let prog = workload_with("threadcounter", &["-static"]);
    std::fs::copy(&prog, c.dir.join("rootfs/threadcounter")).expect("copy the program");
    c.run_detached(true);
    let mut pid = c.pid("pid");
    let threads = |p: u32| {
        std::fs::read_dir(format!("/proc/{p}/task"))
            .map(|d| d.count())
            .unwrap_or(0)
    };
    let end = Instant::now() + T;
    while threads(pid) < 5 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        threads(pid),
        5,
        "the init runs four threads beside its main one"
    );
    for round in 0..2 {
        checkpoint_within(&c, pid, Duration::from_secs(60));
        assert!(
            !alive(pid),
            "round {round}: the checkpoint ends the container"
        );
        let dumped = c.lines().len();
        pid = c.restore(&[]);
        std::fs::rename(c.dir.join("pid2"), c.dir.join("pid")).expect("pid file");
        let lines = c.wait_lines(dumped + 5, T);
        assert!(
            lines.len() >= dumped + 5,
            "round {round}: the counter runs on after the restore"
        );
        counter_is_continuous(&lines);
        assert_eq!(threads(pid), 5, "round {round}: all threads are back");
    }
    let out = std::fs::read_to_string(c.dir.join("out.log")).unwrap_or_default();
    assert!(!out.contains("BAD"), "the workers' counts held: {out}");
}

/// [`Container::checkpoint`] that fails rather than hangs: after `limit`, runc and the dumper
/// tracing `pid` are killed (the tree is let go) and the test fails saying so.
fn checkpoint_within(c: &Container, pid: u32, limit: Duration) {
    let args = [
        "checkpoint",
        "--image-path",
        "ckpt",
        "--work-path",
        "work",
        c.id,
    ];
    let mut runc = c.runc_cmd(&args).spawn().expect("runc checkpoint");
    let end = Instant::now() + limit;
    loop {
        if let Some(st) = runc.try_wait().expect("wait for runc") {
            assert!(
                st.success(),
                "runc checkpoint: {}",
                std::fs::read_to_string(c.dir.join("work/dump.log")).unwrap_or_default()
            );
            reap(pid);
            return;
        }
        if Instant::now() > end {
            let _ = runc.kill();
            let _ = runc.wait();
            let tracer = std::fs::read_to_string(format!("/proc/{pid}/status"))
                .unwrap_or_default()
                .lines()
                .find_map(|l| l.strip_prefix("TracerPid:").map(|v| v.trim().to_string()))
                .unwrap_or_default();
            if let Ok(t) = tracer.parse::<i32>() {
                if t > 0 {
                    // SAFETY: plain kill(2) of the hung dumper.
                    unsafe { libc::kill(t, libc::SIGKILL) };
                }
            }
            panic!("runc checkpoint hung for {limit:?} (the dumper, pid {tracer}, was killed)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
