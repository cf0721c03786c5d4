//! `stasis check` and `stasis check --feature NAME`.

use std::path::Path;
use std::process::ExitCode;

/// CRIU's feature names (criu/cr-check.c). `Some((major, minor))`: stasis supports it and needs
/// that kernel; `None`: stasis does not support it yet.
const FEATURES: &[(&str, Option<(u32, u32)>)] = &[
    ("mnt_id", Some((3, 15))),
    ("mem_dirty_track", None),
    ("aio_remap", None),
    ("timerfd", Some((3, 17))),
    ("tun", Some((4, 15))),
    ("tun_ns", None),
    ("userns", Some((3, 8))),
    ("fdinfo_lock", Some((4, 1))),
    ("seccomp_suspend", Some((4, 3))),
    ("seccomp_filters", Some((4, 4))),
    ("loginuid", None),
    ("cgroupns", Some((4, 6))),
    ("autofs", None),
    ("tcp_half_closed", Some((4, 11))),
    ("compat_cr", None),
    ("uffd", None),
    ("uffd-noncoop", None),
    ("can_map_vdso", None),
    ("sk_ns", None),
    ("sk_unix_file", None),
    ("net_diag_raw", Some((4, 14))),
    ("nsid", None),
    ("link_nsid", None),
    ("kcmp_epoll", Some((4, 13))),
    ("timens", Some((5, 6))),
    ("external_net_ns", None),
    ("clone3_set_tid", Some((5, 5))),
    ("newifindex", None),
    ("nftables", Some((3, 13))),
    ("has_ipt_legacy", Some((2, 6))),
    ("pidfd_store", None),
    ("ns_pid", Some((4, 1))),
    ("apparmor_stacking", None),
    ("network_lock_nftables", Some((3, 13))),
    ("sockopt_buf_lock", Some((5, 14))),
    ("memfd_hugetlb", Some((4, 14))),
    ("move_mount_set_group", Some((5, 15))),
    ("openat2", None),
    ("get_rseq_conf", Some((5, 13))),
    ("ipv6_freebind", Some((4, 15))),
    ("pagemap_scan", None),
    ("timer_cr_ids", Some((6, 16))),
    ("overlayfs_maps", None),
    ("breakpoints", None),
    ("pagemap_scan_guard_pages", None),
];

/// The running kernel's (major, minor), from uname.
fn kernel_version() -> Option<(u32, u32)> {
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").ok()?;
    let mut it = release
        .trim()
        .split(|c: char| !c.is_ascii_digit())
        .map(str::parse::<u32>);
    Some((it.next()?.ok()?, it.next()?.ok()?))
}

/// Whether stasis on a kernel of version `have` supports `name`: Ok(()) or why not.
pub fn feature(name: &str, have: Option<(u32, u32)>) -> Result<(), String> {
    let Some(&(_, need)) = FEATURES.iter().find(|(n, _)| *n == name) else {
        return Err(format!(
            "unknown feature '{name}' (see 'stasis check --feature list')"
        ));
    };
    let Some((maj, min)) = need else {
        return Err(format!("{name} is not supported by stasis yet"));
    };
    match have {
        Some(v) if v >= (maj, min) => Ok(()),
        Some((a, b)) => Err(format!(
            "{name} is not supported: it needs Linux {maj}.{min} or later, this is {a}.{b}"
        )),
        None => Err(format!("{name}: cannot read the kernel version")),
    }
}

/// `check --feature NAME...`: exit 0 if stasis and this kernel support every one of them.
fn check_features(names: &[String]) -> ExitCode {
    if names.iter().any(|n| n == "list") {
        let all: Vec<&str> = FEATURES.iter().map(|(n, _)| *n).collect();
        println!("{}", all.join(" "));
        return ExitCode::SUCCESS;
    }
    let have = kernel_version();
    let mut ok = true;
    for n in names {
        match feature(n, have) {
            Ok(()) => println!("{n} is supported"),
            Err(e) => {
                eprintln!("Error: {e}");
                ok = false;
            }
        }
    }
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `check`: what stasis needs from this kernel and its own privileges.
pub fn run(features: &[String]) -> ExitCode {
    if !features.is_empty() {
        return check_features(features);
    }
    let problems = problems();
    if problems.is_empty() {
        println!("Looks good.");
        ExitCode::SUCCESS
    } else {
        for p in problems {
            eprintln!("Error: {p}");
        }
        ExitCode::FAILURE
    }
}

/// What keeps stasis from working here (CRIU's `check`); empty when all is well.
pub fn problems() -> Vec<&'static str> {
    let mut problems = Vec::new();
    if std::fs::File::open("/proc/self/pagemap").is_err() {
        problems.push("/proc/self/pagemap is not readable");
    }
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        problems.push("stasis needs root (CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_CHECKPOINT_RESTORE)");
    }
    if !Path::new("/proc/self/map_files").exists() {
        problems.push("/proc/<pid>/map_files is missing (CONFIG_CHECKPOINT_RESTORE)");
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn features_answer_by_name_and_kernel() {
        assert_eq!(feature("clone3_set_tid", Some((6, 1))), Ok(()));
        assert!(feature("clone3_set_tid", Some((5, 4)))
            .unwrap_err()
            .contains("needs Linux 5.5"));
        assert!(feature("uffd", Some((6, 1)))
            .unwrap_err()
            .contains("not supported by stasis yet"));
        assert!(feature("nope", Some((6, 1)))
            .unwrap_err()
            .contains("unknown feature 'nope'"));
        assert!(kernel_version().is_some());
    }
}
