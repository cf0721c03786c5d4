//! Debian's LXC 5.0 drives CRIU on its command line (`lxc-checkpoint`), not through the RPC,
//! with options no other client sends: `--ext-mount-map auto` with external sharing and
//! masters, `--enable-fs hugetlbfs,tracefs`, a `--cgroup-root` per hierarchy,
//! `--restore-sibling`, `--external veth[eth0]:HOST@BRIDGE`, `--lsm-profile` and
//! `--external apparmor:unconfined`, and its console handed over as `--external tty[RDEV:DEV]`
//! then `--inherit-fd fd[N]:tty[RDEV:DEV]`. A busybox container from LXC's own template, on a
//! bridge of the test's own, serves a count; its ttys are off (ptys LXC holds and does not
//! hand over: the dump names them).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stasis::images::{magic, pb, ImageKind, ImageReader};
use stasis_tests::containers::*;
use stasis_tests::*;

const NAME: &str = "stasis-lxc";
const BRIDGE: &str = "stasislxc0";
const SUBNET: &str = "10.79.252";

/// A container of our own under a temp dir; stopped and destroyed whatever happens.
struct Lxc {
    dir: PathBuf,
    path: String,
}

impl Drop for Lxc {
    fn drop(&mut self) {
        let _ = self.lxc("lxc-stop", &["-k"]);
        let _ = self.lxc("lxc-destroy", &["-f"]);
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    }
}

impl Lxc {
    /// None (after saying why) when LXC, its busybox template or ip is missing.
    fn create(test: &str) -> Option<Lxc> {
        if missing_tools(
            test,
            &[
                "lxc-create",
                "lxc-start",
                "lxc-checkpoint",
                "lxc-attach",
                "ip",
            ],
        ) {
            return None;
        }
        if !std::path::Path::new("/usr/share/lxc/templates/lxc-busybox").exists() {
            skip(test, "LXC's busybox template is not installed");
            return None;
        }
        let dir = temp_dir("lxc");
        let path = path_with_stasis_as_criu(&dir);
        let lxc = Lxc { dir, path };
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
        for args in [
            vec!["link", "add", BRIDGE, "type", "bridge"],
            vec!["addr", "add", &format!("{SUBNET}.1/24"), "dev", BRIDGE],
            vec!["link", "set", BRIDGE, "up"],
        ] {
            let out = Command::new("ip").args(&args).output().expect("ip");
            assert!(out.status.success(), "ip {args:?}: {out:?}");
        }
        lxc.ok("lxc-create", &["-t", "busybox"]);
        let config = lxc.dir.join(NAME).join("config");
        let text = std::fs::read_to_string(&config).expect("config");
        let mut kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                !l.starts_with("lxc.net.")
                    && !l.starts_with("lxc.apparmor.")
                    && !l.starts_with("lxc.tty.max")
            })
            .collect();
        let net = format!(
            "lxc.net.0.type = veth\nlxc.net.0.link = {BRIDGE}\nlxc.net.0.flags = up\n\
             lxc.apparmor.profile = unconfined\nlxc.tty.max = 0"
        );
        kept.push(&net);
        std::fs::write(&config, kept.join("\n") + "\n").expect("config");
        Some(lxc)
    }

    /// Runs an LXC tool; its output goes to a file, not a pipe: the monitor `lxc-checkpoint
    /// -r` leaves behind as the container's parent keeps its stdio open.
    fn lxc(&self, tool: &str, args: &[&str]) -> (bool, String) {
        let file = self.dir.join("tool.out");
        let out = std::fs::File::create(&file).expect("tool.out");
        let status = Command::new(tool)
            .arg("-P")
            .arg(&self.dir)
            .args(["-n", NAME])
            .args(args)
            .env("PATH", &self.path)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("dup"))
            .stderr(out)
            .status()
            .expect("run lxc");
        (
            status.success(),
            std::fs::read_to_string(&file).unwrap_or_default(),
        )
    }

    fn ok(&self, tool: &str, args: &[&str]) -> String {
        let (ok, text) = self.lxc(tool, args);
        assert!(ok, "{tool} {args:?}: {text}");
        text
    }

    /// The container's init, as the host sees it.
    fn pid(&self) -> u32 {
        self.ok("lxc-info", &["-p", "-H"])
            .trim()
            .parse()
            .expect("pid")
    }

    fn state(&self) -> String {
        self.ok("lxc-info", &["-s"])
    }
}

#[test]
fn lxc_checkpoint_and_restore_of_a_busybox_container() {
    let _g = serial_root!();
    let Some(lxc) = Lxc::create(test_name!()) else {
        return;
    };
    lxc.ok("lxc-start", &[]);
    let end = Instant::now() + Duration::from_secs(10);
    while !lxc.state().contains("RUNNING") {
        assert!(Instant::now() < end, "the container did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The template's DHCP client would take the address away again.
    lxc.ok(
        "lxc-attach",
        &[
            "--",
            "sh",
            "-c",
            &format!("killall udhcpc; ip addr add {SUBNET}.2/24 dev eth0"),
        ],
    );
    lxc.ok(
        "lxc-attach",
        &[
            "--",
            "sh",
            "-c",
            "sh -c 'i=0; while true; do i=$((i+1)); echo n=$i | nc -l -p 8080; done' \
             </dev/null >/dev/null 2>&1 &",
        ],
    );
    assert_eq!(
        ask_count(&format!("{SUBNET}.2:8080")),
        Some(1),
        "the server answers before"
    );
    wait_connections_closed(lxc.pid());
    let live = lxc.dir.join("live");
    lxc.ok("lxc-checkpoint", &["-D", live.to_str().expect("utf8")]);
    assert!(lxc.state().contains("RUNNING"), "left running");
    assert_eq!(
        ask_count(&format!("{SUBNET}.2:8080")),
        Some(2),
        "left running, it answers on"
    );
    wait_connections_closed(lxc.pid());
    let images = lxc.dir.join("stopped");
    let images_s = images.to_str().expect("utf8");
    lxc.ok("lxc-checkpoint", &["-s", "-D", images_s]);
    let bytes = std::fs::read(images.join("tty-info.img")).expect("tty-info.img");
    let infos: Vec<pb::TtyInfoEntry> =
        ImageReader::new("tty-info.img", &bytes, ImageKind::Normal, magic::TTY_INFO)
            .and_then(|mut r| r.all())
            .expect("tty-info.img decodes");
    assert!(
        infos.iter().any(|i| i.r#type == pb::TtyType::ExtTty as i32),
        "the console is saved as an external terminal: {infos:?}"
    );
    assert!(lxc.state().contains("STOPPED"), "stopped by the checkpoint");
    lxc.ok("lxc-checkpoint", &["-r", "-D", images_s]);
    assert!(lxc.state().contains("RUNNING"), "restored");
    assert_eq!(
        ask_count(&format!("{SUBNET}.2:8080")),
        Some(3),
        "restored, its count goes on"
    );
}
