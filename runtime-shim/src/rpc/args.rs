//! From the options of a CRIU RPC request to the command line stasis already reads.
//!
//! CRIU's RPC options are its command-line options in protobuf form, and CRIU itself folds
//! both (and the config file) into one set. Doing the same here keeps one policy: an RPC option
//! stasis does not support is refused by the same name and in the same words as on the command
//! line. What only the RPC has (fds of the caller, notify scripts, rst_sibling) is handled here.

use stasis::images::pb::{CriuCgMode, CriuNetworkLockMethod, CriuOpts, CriuPreDumpMode};

/// A request's options, as arguments for `cli::parse` plus what only the RPC carries.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Mapped {
    pub args: Vec<String>,
    /// Accepted options with no effect, and why (logged).
    pub notes: Vec<String>,
    /// Tell the caller at each action-script point (`notify_scripts`).
    pub notify: bool,
    /// Restore the root as the caller's child (`rst_sibling`).
    pub sibling: bool,
    /// A terminal whose master is the caller's (`orphan_pts_master`).
    pub orphan_pts_master: bool,
}

impl Mapped {
    fn flag(&mut self, on: bool, name: &str) {
        if on {
            self.args.push(format!("--{name}"));
        }
    }
    fn opt(&mut self, name: &str, value: impl Into<String>) {
        self.args.push(format!("--{name}"));
        self.args.push(value.into());
    }
}

/// A path by which we reach fd `fd` of the caller `peer`, as CRIU opens images_dir_fd.
pub fn caller_fd_path(peer: i32, fd: i32) -> String {
    format!("/proc/{peer}/fd/{fd}")
}

/// Maps `o` for `command` ("dump" or "restore"; the words of the command line), the caller
/// being pid `peer` (from SO_PEERCRED). An unsupported option is an error naming it.
pub fn map(command: &str, o: &CriuOpts, peer: i32) -> Result<Mapped, String> {
    let mut m = Mapped {
        args: vec![command.to_string()],
        notify: o.notify_scripts(),
        sibling: o.rst_sibling(),
        orphan_pts_master: o.orphan_pts_master(),
        ..Default::default()
    };
    let images = if o.images_dir_fd >= 0 {
        caller_fd_path(peer, o.images_dir_fd)
    } else if let Some(d) = &o.images_dir {
        d.clone()
    } else {
        return Err("the request gives no images directory (images_dir_fd)".into());
    };
    m.opt("images-dir", images);
    if let Some(fd) = o.work_dir_fd.filter(|&fd| fd >= 0) {
        m.opt("work-dir", caller_fd_path(peer, fd));
    }
    if let Some(f) = &o.log_file {
        m.opt("log-file", f.clone());
    }
    m.args.push(format!("-v{}", o.log_level().clamp(0, 4)));
    if command == "dump" {
        let pid = o
            .pid
            .ok_or("dump needs the pid of the tree's root (dumping the caller itself is not supported yet)")?;
        m.opt("tree", pid.to_string());
    }
    m.flag(o.leave_running(), "leave-running");
    m.flag(o.leave_stopped(), "leave-stopped");
    if o.ext_unix_sk() || !o.unix_sk_ino.is_empty() {
        let inodes: Vec<String> = o.unix_sk_ino.iter().map(|u| u.inode.to_string()).collect();
        m.args.push(format!("--ext-unix-sk={}", inodes.join(",")));
    }
    m.flag(o.tcp_established(), "tcp-established");
    m.flag(o.tcp_close(), "tcp-close");
    m.flag(o.tcp_skip_in_flight(), "skip-in-flight");
    m.flag(o.shell_job(), "shell-job");
    m.flag(o.file_locks(), "file-locks");
    m.flag(o.link_remap(), "link-remap");
    m.flag(o.force_irmap(), "force-irmap");
    m.flag(o.auto_dedup(), "auto-dedup");
    m.flag(o.track_mem(), "track-mem");
    m.flag(o.lazy_pages(), "lazy-pages");
    m.flag(o.weak_sysctls(), "weak-sysctls");
    m.flag(o.tls(), "tls");
    m.flag(o.mntns_compat_mode(), "mntns-compat-mode");
    m.flag(o.skip_file_rwx_check(), "skip-file-rwx-check");
    m.flag(o.unprivileged(), "unprivileged");
    m.flag(o.display_stats(), "display-stats");
    m.flag(o.auto_ext_mnt(), "ext-mount-map=auto");
    m.flag(o.ext_sharing(), "enable-external-sharing");
    m.flag(o.ext_masters(), "enable-external-masters");
    if o.evasive_devices() {
        // runc asks for it on every restore; it changes nothing unless a device path is gone.
        m.notes.push(
            "evasive_devices: accepted; device files are reopened by their path, and one that is gone fails the restore by name"
                .into(),
        );
    }

    if let Some(root) = o.root.as_deref().filter(|r| *r != "/") {
        m.opt("root", root);
    }
    if let Some(p) = &o.parent_img {
        m.opt("prev-images-dir", p.clone());
    }
    if o.ps.is_some() {
        m.args.push("--page-server".into());
    }
    if !o.exec_cmd.is_empty() {
        m.args.push("--exec-cmd".into());
    }
    for v in &o.veths {
        m.opt("veth-pair", format!("{}={}", v.if_in, v.if_out));
    }
    for e in &o.ext_mnt {
        m.opt("ext-mount-map", format!("{}:{}", e.key, e.val));
    }
    for e in &o.external {
        m.opt("external", e.clone());
    }
    for j in &o.join_ns {
        let mut v = format!("{}:{}", j.ns, j.ns_file);
        if let Some(x) = &j.extra_opt {
            v = format!("{v},{x}");
        }
        m.opt("join-ns", v);
    }
    for c in &o.cg_root {
        let v = match &c.ctrl {
            Some(ctrl) if !ctrl.is_empty() => format!("{ctrl}:{}", c.path),
            _ => c.path.clone(),
        };
        m.opt("cgroup-root", v);
    }
    for i in &o.inherit_fd {
        m.opt("inherit-fd", format!("fd[{}]:{}", i.fd, i.key));
    }
    for s in &o.skip_mnt {
        m.opt("skip-mnt", s.clone());
    }
    for s in &o.enable_fs {
        m.opt("enable-fs", s.clone());
    }
    for s in &o.irmap_scan_paths {
        m.opt("irmap-scan-path", s.clone());
    }
    for s in &o.cgroup_dump_controller {
        m.opt("cgroup-dump-controller", s.clone());
    }
    map_strings(&mut m, o);
    map_numbers(&mut m, o)?;
    Ok(m)
}

fn map_strings(m: &mut Mapped, o: &CriuOpts) {
    let strings = [
        ("freeze-cgroup", &o.freeze_cgroup),
        ("cgroup-props", &o.cgroup_props),
        ("cgroup-props-file", &o.cgroup_props_file),
        ("cgroup-yard", &o.cgroup_yard),
        ("lsm-profile", &o.lsm_profile),
        ("lsm-mount-context", &o.lsm_mount_context),
        ("tls-cacert", &o.tls_cacert),
        ("tls-cacrl", &o.tls_cacrl),
        ("tls-cert", &o.tls_cert),
        ("tls-key", &o.tls_key),
    ];
    for (name, v) in strings {
        if let Some(v) = v {
            m.opt(name, v.clone());
        }
    }
}

fn map_numbers(m: &mut Mapped, o: &CriuOpts) -> Result<(), String> {
    // CRIU's CPU_CAP_FPU is bit 0; unset is CRIU's default, which has it.
    if o.cpu_cap.is_some_and(|c| c & 1 == 0) {
        m.args.push("--cpu-cap=none".into());
    }
    if let Some(t) = o.timeout {
        m.opt("timeout", t.to_string());
    }
    if let Some(g) = o.ghost_limit {
        m.opt("ghost-limit", g.to_string());
    }
    if o.manage_cgroups() || o.manage_cgroups_mode.is_some() {
        // Unset is CRIU's DEFAULT, not the enum's first value (IGNORE).
        let mode = match o.manage_cgroups_mode {
            Some(_) => o.manage_cgroups_mode(),
            None => CriuCgMode::Default,
        };
        // runc's default (manage_cgroups with no mode, or DEFAULT) is CRIU's: soft.
        let name = match mode {
            CriuCgMode::Default | CriuCgMode::Soft => "soft",
            CriuCgMode::CgNone => "none",
            CriuCgMode::Ignore => "ignore",
            CriuCgMode::Props => "props",
            CriuCgMode::Full => "full",
            CriuCgMode::Strict => "strict",
        };
        m.args.push(format!("--manage-cgroups={name}"));
    }
    if let Some(ns) = o.empty_ns.filter(|&n| n != 0) {
        if ns & !(libc::CLONE_NEWNET as u32) != 0 {
            return Err(format!(
                "empty_ns {ns:#x}: only the network namespace (CLONE_NEWNET) can be left empty"
            ));
        }
        // runc sets it on every request: the network namespace's contents are the caller's.
        m.opt("empty-ns", "net");
    }
    if o.pre_dump_mode.is_some() && o.pre_dump_mode() == CriuPreDumpMode::VmRead {
        m.args.push("--pre-dump-mode=read".into());
    }
    if o.network_lock.is_some() {
        m.args.push(match o.network_lock() {
            CriuNetworkLockMethod::Iptables => "--network-lock=iptables".into(),
            CriuNetworkLockMethod::Nftables => "--network-lock=nftables".into(),
            CriuNetworkLockMethod::Skip => "--network-lock=skip".into(),
        });
    }
    if let Some(fd) = o.status_fd.filter(|&fd| fd >= 0) {
        m.opt("status-fd", fd.to_string());
    }
    if let Some(fd) = o.pidfd_store_sk.filter(|&fd| fd >= 0) {
        return Err(format!(
            "pidfd_store_sk (fd {fd}) is not supported yet: pre-dumps are not"
        ));
    }
    if o.log_to_stderr() {
        m.opt("log-file", "-");
    }
    Ok(())
}

/// The lines of a CRIU config file (`config_file`, runc's /etc/criu/runc.conf) as arguments:
/// one option per line, without the leading `--`, its value after a blank or `=`; `#` starts
/// a comment. CRIU lets the file override the RPC options, so its arguments go last.
pub fn config_args(text: &str) -> Vec<String> {
    let mut args = Vec::new();
    for line in text.lines() {
        let line = match line.find('#') {
            Some(i) => &line[..i],
            None => line,
        }
        .trim();
        if line.is_empty() {
            continue;
        }
        let split = line
            .find(|c: char| c.is_whitespace() || c == '=')
            .map(|i| (&line[..i], line[i + 1..].trim()));
        match split {
            Some((name, value)) if !value.is_empty() => {
                args.push(format!("--{name}"));
                args.push(value.trim_matches('"').to_string());
            }
            _ => args.push(format!("--{}", line.trim_end_matches('='))),
        }
    }
    args
}

#[cfg(test)]
mod tests {
    use super::*;
    use stasis::images::pb::{ExtMountMap, InheritFd, UnixSk};

    fn dump_opts() -> CriuOpts {
        CriuOpts {
            images_dir_fd: 7,
            pid: Some(42),
            ..Default::default()
        }
    }

    #[test]
    fn runc_dump_request_maps_to_the_command_line() {
        let o = CriuOpts {
            leave_running: Some(true),
            tcp_established: Some(true),
            log_level: Some(4),
            log_file: Some("dump.log".into()),
            work_dir_fd: Some(8),
            notify_scripts: Some(true),
            orphan_pts_master: Some(true),
            manage_cgroups: Some(true),
            empty_ns: Some(libc::CLONE_NEWNET as u32),
            root: Some("/".into()),
            ..dump_opts()
        };
        let m = map("dump", &o, 100).unwrap();
        assert_eq!(
            m.args,
            [
                "dump",
                "--images-dir",
                "/proc/100/fd/7",
                "--work-dir",
                "/proc/100/fd/8",
                "--log-file",
                "dump.log",
                "-v4",
                "--tree",
                "42",
                "--leave-running",
                "--tcp-established",
                "--manage-cgroups=soft",
                "--empty-ns",
                "net"
            ]
        );
        assert!(m.notify);
        assert!(m.orphan_pts_master);
        assert_eq!(m.notes.len(), 0, "{:?}", m.notes);
    }

    #[test]
    fn restore_request_carries_inherit_fds_and_sibling() {
        let o = CriuOpts {
            images_dir_fd: 5,
            rst_sibling: Some(true),
            inherit_fd: vec![InheritFd {
                key: "pipe:[19627]".into(),
                fd: 1,
            }],
            ..Default::default()
        };
        let m = map("restore", &o, 9).unwrap();
        assert!(m.sibling);
        assert!(m
            .args
            .windows(2)
            .any(|w| w == ["--inherit-fd", "fd[1]:pipe:[19627]"]));
        assert!(!m.args.iter().any(|a| a == "--tree"));
    }

    #[test]
    fn unsupported_options_become_the_flags_the_cli_refuses() {
        let o = CriuOpts {
            root: Some("/var/lib/x/merged".into()),
            ext_mnt: vec![ExtMountMap {
                key: "/etc/hosts".into(),
                val: "/etc/hosts".into(),
            }],
            unix_sk_ino: vec![UnixSk { inode: 5 }],
            manage_cgroups_mode: Some(CriuCgMode::Full as i32),
            ..dump_opts()
        };
        let a = map("dump", &o, 1).unwrap().args;
        for want in [
            "--root",
            "--ext-mount-map",
            "--ext-unix-sk=5",
            "--manage-cgroups=full",
        ] {
            assert!(a.iter().any(|x| x == want), "{want} missing from {a:?}");
        }
    }

    #[test]
    fn auto_external_mounts_reach_the_cli_and_are_taken() {
        let o = CriuOpts {
            auto_ext_mnt: Some(true),
            ext_masters: Some(true),
            ..dump_opts()
        };
        let a = map("dump", &o, 1).unwrap().args;
        assert!(a.iter().any(|x| x == "--ext-mount-map=auto"), "{a:?}");
        let argv: Vec<&str> = a.iter().map(String::as_str).collect();
        let c = crate::cli::parse(&argv).unwrap();
        assert!(c.auto_ext_mounts && c.ext_masters && !c.ext_sharing);
    }

    #[test]
    fn missing_pid_or_images_dir_is_a_clear_error() {
        let o = CriuOpts {
            pid: None,
            ..dump_opts()
        };
        assert!(map("dump", &o, 1).unwrap_err().contains("pid"));
        let o = CriuOpts {
            images_dir_fd: -1,
            ..dump_opts()
        };
        assert!(map("dump", &o, 1).unwrap_err().contains("images"));
        let o = CriuOpts {
            empty_ns: Some(libc::CLONE_NEWPID as u32),
            ..dump_opts()
        };
        assert!(map("dump", &o, 1).unwrap_err().contains("empty_ns"));
    }

    #[test]
    fn config_file_lines() {
        let text = "# runc's config\ntcp-established\nlog-file /tmp/x.log # here\n\nghost-limit=2M\nroot \"/a b\"\n";
        assert_eq!(
            config_args(text),
            [
                "--tcp-established",
                "--log-file",
                "/tmp/x.log",
                "--ghost-limit",
                "2M",
                "--root",
                "/a b"
            ]
        );
    }
}
