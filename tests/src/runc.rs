//! runc driving stasis as its `criu`: a busybox bundle the tests build (its own namespaces, a
//! tmpfs, a counter on stdout, a host file) and the container's life through runc.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::containers::*;
use crate::*;

/// The container's shell: counts on stdout and into a file of its /tmp tmpfs, after leaving a
/// file in /dev/shm.
pub const SCRIPT: &str = "mkdir -p /dev/shm/x; echo kept > /dev/shm/x/f; \
                      i=0; while true; do echo $i; echo $i > /tmp/count; i=$((i+1)); sleep 0.1; done";

/// What a test's container is beside the defaults of `runc spec`.
#[derive(Clone, Copy)]
pub struct Shape<'a> {
    /// The shell's script (the counter unless told).
    pub script: &'a str,
    /// The network namespace by path.
    pub netns: Option<&'a str>,
    /// The pid namespace by path (another process's: the container does not own it).
    pub pidns: Option<&'a str>,
    /// A cgroup namespace of its own.
    pub cgroupns: bool,
    /// A user namespace of its own: 0-65535 mapped to 100000-165535.
    pub userns: bool,
    /// The process may mount and unshare (CAP_SYS_ADMIN).
    pub admin: bool,
}

pub const COUNTER: Shape<'static> = Shape {
    script: SCRIPT,
    netns: None,
    pidns: None,
    cgroupns: false,
    userns: false,
    admin: false,
};

/// The host uid and gid of root in a user namespace container.
pub const USERNS_ROOT: u32 = 100_000;

/// A bundle: busybox rootfs and a config whose process runs the shape's script, with a
/// tmpfs at /tmp, in the namespaces it asks for.
pub fn bundle(dir: &Path, shape: Shape<'_>) {
    let Shape {
        script,
        netns,
        pidns,
        cgroupns,
        userns,
        admin,
    } = shape;
    let rootfs = dir.join("rootfs");
    busybox_rootfs(
        &rootfs,
        &[
            "sh", "sleep", "echo", "mkdir", "hostname", "cat", "nc", "id", "mount", "unshare",
        ],
    );
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .output()
        .expect("runc spec");
    assert!(out.status.success(), "runc spec");
    let spec = std::fs::read_to_string(dir.join("config.json")).expect("config.json");
    let tmpfs = r#"{"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "size=1m"]},
		{
			"destination": "/proc","#;
    let spec = spec
        .replace("\"terminal\": true", "\"terminal\": false")
        .replace("\"readonly\": true", "\"readonly\": false")
        .replace(
            "\"sh\"\n",
            &format!("\"sh\", \"-c\", \"{}\"\n", script.replace('"', "\\\"")),
        )
        .replacen("{\n\t\t\t\"destination\": \"/proc\",", tmpfs, 1);
    let spec = match netns {
        Some(path) => spec.replacen(
            "\"type\": \"network\"",
            &format!("\"type\": \"network\", \"path\": \"{path}\""),
            1,
        ),
        None => spec,
    };
    let spec = match pidns {
        Some(path) => spec.replacen(
            "\"type\": \"pid\"",
            &format!("\"type\": \"pid\", \"path\": \"{path}\""),
            1,
        ),
        None => spec,
    };
    let spec = if cgroupns {
        spec.replacen(
            "\"type\": \"mount\"",
            "\"type\": \"mount\"\n\t\t\t},\n\t\t\t{\n\t\t\t\t\"type\": \"cgroup\"",
            1,
        )
    } else {
        spec
    };
    let spec = if userns {
        let map = format!("[{{\"containerID\": 0, \"hostID\": {USERNS_ROOT}, \"size\": 65536}}]");
        spec.replacen(
            "\"type\": \"mount\"",
            "\"type\": \"mount\"\n\t\t\t},\n\t\t\t{\n\t\t\t\t\"type\": \"user\"",
            1,
        )
        .replacen(
            "\"linux\": {",
            &format!("\"linux\": {{\n\t\t\"uidMappings\": {map},\n\t\t\"gidMappings\": {map},"),
            1,
        )
    } else {
        spec
    };
    let spec = if admin {
        spec.replace("\"CAP_KILL\",", "\"CAP_KILL\",\n\t\t\t\t\"CAP_SYS_ADMIN\",")
    } else {
        spec
    };
    assert!(
        spec.contains(script.split(' ').next().unwrap_or("sh"))
            && (!admin || spec.contains("CAP_SYS_ADMIN"))
            && spec.contains("\"/tmp\"")
            && netns.is_none_or(|p| spec.contains(p))
            && pidns.is_none_or(|p| spec.contains(p))
            && (!cgroupns || spec.contains("\"cgroup\""))
            && (!userns || spec.contains("uidMappings")),
        "config.json changed shape: {spec}"
    );
    std::fs::write(dir.join("config.json"), spec).expect("write config.json");
    if userns {
        // Root inside owns the rootfs, as runc expects of a user namespace container.
        let out = Command::new("chown")
            .args(["-R", &format!("{USERNS_ROOT}:{USERNS_ROOT}")])
            .arg(&rootfs)
            .output()
            .expect("chown");
        assert!(out.status.success(), "chown of the rootfs");
    }
}

pub fn runc(args: &[&str], dir: &Path) -> Output {
    Command::new("runc")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run runc")
}

pub fn ok(what: &str, out: &Output, log: &Path) {
    assert!(
        out.status.success(),
        "{what}: {}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A running container; deleted whatever happens.
pub struct Container {
    pub id: &'static str,
    pub dir: PathBuf,
    pub criu: PathBuf,
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = runc(&["delete", "-f", self.id], &self.dir);
    }
}

impl Container {
    /// None (after saying why) when runc or busybox is missing.
    pub fn start(test: &str, id: &'static str) -> Option<Container> {
        Container::start_with(test, id, COUNTER)
    }

    /// [`Container::start`] of another shape.
    pub fn start_with(test: &str, id: &'static str, shape: Shape<'_>) -> Option<Container> {
        let c = Container::create(test, id, shape)?;
        c.run_detached(shape.script == SCRIPT);
        Some(c)
    }

    /// `runc run -d` of the bundle, its init's pid in `pid`, stdout a host file (as a
    /// runtime's log is); with `counting`, until the counter has printed three lines.
    pub fn run_detached(&self, counting: bool) {
        let status = self
            .runc_cmd(&["run", "-d", "--pid-file", "pid", self.id])
            .status()
            .expect("runc run");
        assert!(status.success(), "runc run -d");
        if counting {
            self.wait_lines(3, T);
        }
    }

    /// The bundle and our `criu`, the container not started.
    pub fn create(test: &str, id: &'static str, shape: Shape<'_>) -> Option<Container> {
        if missing_tools(test, &["runc"]) {
            return None;
        }
        let dir = temp_dir(id);
        bundle(&dir, shape);
        // runc looks for `criu` in PATH; --criu names it outright.
        let bin = dir.join("bin");
        std::fs::create_dir_all(&bin).expect("bin dir");
        let criu = bin.join("criu");
        std::os::unix::fs::symlink(stasis_bin(), &criu).expect("criu link");
        let _ = runc(&["delete", "-f", id], &dir);
        Some(Container { id, dir, criu })
    }

    pub fn runc_cmd(&self, args: &[&str]) -> Command {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("out.log"))
            .expect("out.log");
        let mut cmd = Command::new("runc");
        cmd.arg("--criu")
            .arg(&self.criu)
            .args(args)
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out);
        cmd
    }

    pub fn runc(&self, args: &[&str]) -> Output {
        let mut all = vec!["--criu", self.criu.to_str().expect("utf8")];
        all.extend_from_slice(args);
        runc(&all, &self.dir)
    }

    pub fn pid(&self, file: &str) -> u32 {
        std::fs::read_to_string(self.dir.join(file))
            .expect("pid file")
            .trim()
            .parse()
            .expect("pid")
    }

    pub fn lines(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("out.log"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.parse::<u64>().is_ok())
            .map(str::to_string)
            .collect()
    }

    pub fn wait_lines(&self, n: usize, timeout: Duration) -> Vec<String> {
        let end = Instant::now() + timeout;
        loop {
            let l = self.lines();
            if l.len() >= n || Instant::now() > end {
                return l;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `runc checkpoint` into ckpt (work dir work), with `extra` flags; the old init reaped.
    pub fn checkpoint(&self, extra: &[&str]) {
        let mut args = vec!["checkpoint"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--image-path", "ckpt", "--work-path", "work", self.id]);
        let out = self.runc(&args);
        ok("runc checkpoint", &out, &self.dir.join("work/dump.log"));
        // Reparented to us (the tests' subreaper) when `runc run` exited: its zombie holds
        // its pid (in a namespace the restore may join) until reaped.
        reap(self.pid("pid"));
    }

    /// `runc restore -d` of ckpt, with `extra` flags, its pid in `pid2`; that pid.
    pub fn restore(&self, extra: &[&str]) -> u32 {
        let mut args = vec!["restore", "-d"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[
            "--image-path",
            "ckpt",
            "--work-path",
            "work",
            "--pid-file",
            "pid2",
            self.id,
        ]);
        let status = self.runc_cmd(&args).status().expect("runc restore");
        assert!(
            status.success(),
            "runc restore: {}",
            std::fs::read_to_string(self.dir.join("work/restore.log")).unwrap_or_default()
        );
        self.pid("pid2")
    }

    /// [`Container::checkpoint`] then [`Container::restore`]: the lines counted at the
    /// checkpoint and the restored init's pid.
    pub fn checkpoint_then_restore(&self) -> (usize, u32) {
        self.checkpoint(&[]);
        let dumped = self.lines().len();
        (dumped, self.restore(&[]))
    }

    pub fn state(&self) -> String {
        String::from_utf8_lossy(&self.runc(&["state", self.id]).stdout).into_owned()
    }
}

pub fn read_in(pid: u32, path: &str) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/root{path}"))
        .unwrap_or_default()
        .trim()
        .to_string()
}
