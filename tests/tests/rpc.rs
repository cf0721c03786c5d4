//! CRIU's RPC (`stasis swrk FD`) driven the way runc and go-criu drive it: a SOCK_SEQPACKET
//! socketpair, one packed criu_req per datagram, NOTIFY messages answered before the final
//! reply, the images dir passed as an fd of ours.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use prost::Message;
use stasis::images::pb::{CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp};
use stasis_tests::*;

/// A running `stasis swrk 3` and our end of its socket.
struct Swrk {
    child: Child,
    sock: OwnedFd,
}

impl Swrk {
    fn start() -> Swrk {
        let mut sv = [0; 2];
        // SAFETY: socketpair into a local array of two ints.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                sv.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0, "socketpair");
        // SAFETY: both fds were just made and are ours alone.
        let (ours, theirs) = unsafe { (OwnedFd::from_raw_fd(sv[0]), OwnedFd::from_raw_fd(sv[1])) };
        let fd = theirs.as_raw_fd();
        let mut cmd = Command::new(stasis_bin());
        cmd.args(["swrk", "3"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        // SAFETY: dup2 in the child before exec is async-signal-safe; fd 3 loses CLOEXEC.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn stasis swrk");
        drop(theirs);
        Swrk { child, sock: ours }
    }

    fn send(&self, req: &CriuReq) {
        let buf = req.encode_to_vec();
        // SAFETY: send(2) of a local buffer.
        let n = unsafe {
            libc::send(
                self.sock.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL,
            )
        };
        assert_eq!(n, buf.len() as isize, "send request");
    }

    fn recv(&self) -> CriuResp {
        let mut buf = vec![0u8; 64 << 10];
        // SAFETY: recv(2) into a local buffer of the given length.
        let n = unsafe { libc::recv(self.sock.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        assert!(n > 0, "swrk closed the socket without an answer");
        CriuResp::decode(&buf[..n as usize]).expect("criu_resp")
    }

    /// Sends `req`, answers each notification with `answer(script)`, and returns the final
    /// reply with the notifications seen (script, pid).
    fn call(
        mut self,
        req: CriuReq,
        mut answer: impl FnMut(&str) -> bool,
    ) -> (CriuResp, Vec<(String, Option<i32>)>) {
        self.send(&req);
        let mut seen = Vec::new();
        loop {
            let resp = self.recv();
            if resp.r#type != CriuReqType::Notify as i32 {
                let status = self.child.wait().expect("wait swrk");
                assert_eq!(
                    status.success(),
                    resp.success,
                    "exit status and reply disagree: {resp:?}"
                );
                return (resp, seen);
            }
            let n = resp.notify.expect("notify");
            let script = n.script.clone().unwrap_or_default();
            let ok = answer(&script);
            seen.push((script, n.pid));
            self.send(&CriuReq {
                r#type: CriuReqType::Notify as i32,
                notify_success: Some(ok),
                ..Default::default()
            });
        }
    }
}

fn req(t: CriuReqType, opts: Option<CriuOpts>) -> CriuReq {
    CriuReq {
        r#type: t as i32,
        opts,
        ..Default::default()
    }
}

/// A DUMP request's options: our fd of the images dir, the tree's root.
fn dump_opts(images: &std::fs::File, pid: i32) -> CriuOpts {
    CriuOpts {
        images_dir_fd: images.as_raw_fd(),
        pid: Some(pid),
        ..Default::default()
    }
}

fn dump_req(opts: CriuOpts) -> CriuReq {
    req(CriuReqType::Dump, Some(opts))
}

/// An fd of ours for `dir`, as runc passes images_dir_fd and work_dir_fd.
fn dir_fd(dir: &Path) -> std::fs::File {
    std::fs::File::open(dir).expect("open images dir")
}

fn scripts(seen: &[(String, Option<i32>)]) -> Vec<&str> {
    seen.iter().map(|(s, _)| s.as_str()).collect()
}

#[test]
fn rpc_version_check_and_features() {
    let _g = serial_root!();
    let (v, _) = Swrk::start().call(req(CriuReqType::Version, None), |_| true);
    assert!(v.success, "{v:?}");
    let ver = v.version.expect("version");
    // runc and podman compute major*10000+minor*100+sublevel and need at least 31100.
    assert!(ver.major_number * 10000 + ver.minor_number * 100 + ver.sublevel.unwrap_or(0) >= 31100);
    assert!(ver.name.unwrap_or_default().contains("stasis"));

    let mut fc = req(CriuReqType::FeatureCheck, None);
    fc.features = Some(CriuFeatures {
        mem_track: Some(true),
        ..Default::default()
    });
    let (f, _) = Swrk::start().call(fc, |_| true);
    assert!(f.success, "{f:?}");
    let feats = f.features.expect("features");
    assert_eq!(
        feats.mem_track,
        Some(false),
        "soft-dirty tracking is not offered"
    );
    assert_eq!(feats.lazy_pages, None, "only what was asked is answered");

    let (c, _) = Swrk::start().call(req(CriuReqType::Check, None), |_| true);
    assert!(c.success, "{c:?}");

    let (p, _) = Swrk::start().call(req(CriuReqType::PreDump, Some(CriuOpts::default())), |_| {
        true
    });
    assert!(!p.success);
    assert_eq!(
        p.cr_errmsg.as_deref(),
        Some("pre-dump requests are not supported yet")
    );
}

#[test]
fn rpc_dump_and_restore_notify_in_criu_order() {
    let _g = serial_root!();
    let w = Workload::start("rpc-counter", &workload("counter"), &[]);
    w.wait_lines(5, T);
    let img = w.images();
    let d = dir_fd(&img);
    let dump = dump_req(CriuOpts {
        log_file: Some("dump.log".into()),
        log_level: Some(4),
        notify_scripts: Some(true),
        ..dump_opts(&d, w.pid as i32)
    });
    let (r, seen) = Swrk::start().call(dump, |_| true);
    assert!(r.success, "dump: {r:?}");
    assert_eq!(r.dump.and_then(|d| d.restored), Some(false));
    assert_eq!(scripts(&seen), ["pre-dump", "network-lock", "post-dump"]);
    assert!(
        img.join("dump.log").exists(),
        "log_file lands in the images dir"
    );
    reap(w.pid);
    let end = Instant::now() + Duration::from_secs(5);
    while alive(w.pid) && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(
        !alive(w.pid),
        "the tree is killed by a dump without leave_running"
    );
    let n = w.lines().len();

    let restore = req(
        CriuReqType::Restore,
        Some(CriuOpts {
            images_dir_fd: d.as_raw_fd(),
            log_file: Some("restore.log".into()),
            log_level: Some(4),
            notify_scripts: Some(true),
            rst_sibling: Some(true),
            evasive_devices: Some(true),
            orphan_pts_master: Some(true),
            manage_cgroups: Some(true),
            empty_ns: Some(libc::CLONE_NEWNET as u32),
            // runc names this file whether it exists or not.
            config_file: Some("/etc/criu/stasis-test-absent.conf".into()),
            ..Default::default()
        }),
    );
    let (r, seen) = Swrk::start().call(restore, |_| true);
    assert!(r.success, "restore: {r:?}");
    assert_eq!(r.restore.map(|x| x.pid), Some(w.pid as i32), "same pid");
    let pid = Some(w.pid as i32);
    assert_eq!(
        seen,
        [
            ("pre-restore".to_string(), None),
            ("setup-namespaces".to_string(), pid),
            ("post-setup-namespaces".to_string(), None),
            ("post-restore".to_string(), pid),
            ("network-unlock".to_string(), None),
            ("pre-resume".to_string(), None),
            ("post-resume".to_string(), None),
        ]
    );
    // rst_sibling: the restored root is our child, as runc's container init is runc's.
    let ppid = std::fs::read_to_string(format!("/proc/{}/status", w.pid))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("PPid:").map(|v| v.trim().to_string()))
        .unwrap_or_default();
    assert_eq!(
        ppid,
        std::process::id().to_string(),
        "restored as a sibling"
    );
    let after = w.wait_lines(n + 10, T);
    kill_tree(&[w.pid]);
    counter_is_continuous(&after);
}

#[test]
fn rpc_refused_notification_fails_the_dump_and_the_tree_runs_on() {
    let _g = serial_root!();
    let w = Workload::start("rpc-refused", &workload("counter"), &[]);
    w.wait_lines(5, T);
    let img = w.images();
    let d = dir_fd(&img);
    let dump = dump_req(CriuOpts {
        notify_scripts: Some(true),
        ..dump_opts(&d, w.pid as i32)
    });
    let (r, seen) = Swrk::start().call(dump, |s| s != "post-dump");
    assert!(!r.success);
    let msg = r.cr_errmsg.unwrap_or_default();
    assert!(msg.contains("post-dump"), "{msg}");
    assert!(!msg.contains('\n'), "one line: {msg}");
    assert_eq!(
        scripts(&seen),
        ["pre-dump", "network-lock", "post-dump", "network-unlock"]
    );
    assert!(
        !img.join("inventory.img").exists(),
        "no complete-looking image"
    );
    assert_runs_on(&w);
    assert_eq!(tracer_of(w.pid), 0, "detached");
}

#[test]
fn rpc_unsupported_option_is_refused_by_name() {
    let _g = serial_root!();
    let w = Workload::start("rpc-lazy", &workload("counter"), &[]);
    w.wait_lines(3, T);
    let img = w.images();
    let d = dir_fd(&img);
    let dump = dump_req(CriuOpts {
        lazy_pages: Some(true),
        ..dump_opts(&d, w.pid as i32)
    });
    let (r, _) = Swrk::start().call(dump, |_| true);
    assert!(!r.success);
    assert_eq!(
        r.cr_errmsg.as_deref(),
        Some("--lazy-pages is not supported yet"),
        "{r:?}"
    );
    assert_runs_on(&w);

    let (r, _) = Swrk::start().call(dump_req(dump_opts(&d, 999_999)), |_| true);
    assert!(!r.success);
    assert!(
        r.cr_errmsg.unwrap_or_default().contains("999999"),
        "a missing pid is named"
    );
}

#[test]
fn swrk_on_a_non_socket_fails_in_one_line() {
    let out = stasis(&["swrk", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("not a socket"), "{err}");
}
