//! The command line, without root: CRIU's option set parses, and each option does what its
//! table entry says.

use crate::cli::{self, Command, Config};
use crate::opts::{self, HasArg, Support};

fn ok(args: &[&str]) -> Config {
    cli::parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

fn err(args: &[&str]) -> String {
    match cli::parse(args) {
        Ok(c) => panic!("{args:?} parsed: {c:?}"),
        Err(e) => e,
    }
}

/// A value each option with an argument accepts (for those stasis takes by value).
fn sample(long: &str) -> &'static str {
    match long {
        "tree" | "timeout" | "status-fd" | "port" => "12",
        "close" => "987",
        "inherit-fd" => "fd[3]:/a",
        "ghost-limit" => "2M",
        "ext-unix-sk" => "12",
        "verbosity" => "4",
        "manage-cgroups" => "ignore",
        "pre-dump-mode" => "splice",
        "file-validation" => "filesize",
        "network-lock" => "nftables",
        "cpu-cap" => "fpu",
        "feature" => "timerfd",
        "veth-pair" => "eth0=veth0",
        "join-ns" => "net:/run/netns/x",
        "external" => "net[4026532177]:extRootNetNS",
        "ext-mount-map" => "/proc/keys:/dev/null",
        "cgroup-root" => "cpu:/x",
        "empty-ns" => "net",
        "lsm-profile" => "apparmor:unconfined",
        _ => "x",
    }
}

#[test]
fn every_criu_option_parses_and_refusals_name_the_option() {
    for sp in opts::OPTIONS {
        if matches!(sp.long, "help" | "version") {
            continue;
        }
        let forms: Vec<Vec<String>> = match sp.arg {
            HasArg::No => vec![vec![format!("--{}", sp.long)]],
            HasArg::Optional => vec![vec![format!("--{}={}", sp.long, sample(sp.long))]],
            HasArg::Required => vec![
                vec![format!("--{}={}", sp.long, sample(sp.long))],
                vec![format!("--{}", sp.long), sample(sp.long).to_string()],
            ],
        };
        for form in forms {
            let mut args: Vec<String> = match sp.long {
                "inherit-fd" => vec!["restore".into()],
                _ => vec!["dump".into(), "-t".into(), "1".into()],
            };
            args.extend(form);
            let r = cli::parse(&args);
            match sp.support {
                Support::No => {
                    assert_eq!(
                        r.unwrap_err(),
                        format!("--{} is not supported yet", sp.long),
                        "{args:?}"
                    );
                    if sp.negatable {
                        let neg = ["dump", "-t", "1", &format!("--no-{}", sp.long)];
                        cli::parse(&neg).unwrap_or_else(|e| panic!("{neg:?}: {e}"));
                    }
                }
                _ => {
                    r.unwrap_or_else(|e| panic!("{args:?}: {e}"));
                }
            }
        }
    }
}

#[test]
fn short_options_and_their_long_names_agree() {
    for sp in opts::OPTIONS.iter().filter(|s| s.short.is_some()) {
        let c = sp.short.unwrap();
        if matches!(c, 'h' | 'V') {
            continue;
        }
        let args: Vec<String> = match sp.arg {
            HasArg::No | HasArg::Optional => vec![format!("-{c}")],
            HasArg::Required => vec![format!("-{c}"), sample(sp.long).into()],
        };
        let mut all = vec!["dump".to_string(), "-t".into(), "1".into()];
        all.extend(args);
        match (sp.support, cli::parse(&all)) {
            (Support::No, Err(e)) => assert_eq!(e, format!("--{} is not supported yet", sp.long)),
            (Support::No, Ok(_)) => panic!("{all:?} accepted"),
            (_, r) => {
                r.unwrap_or_else(|e| panic!("{all:?}: {e}"));
            }
        }
    }
}

#[test]
fn zdtm_dump_and_restore_lines_parse() {
    let d = ok(&[
        "dump",
        "--no-default-config",
        "-o",
        "dump.log",
        "-D",
        "dump/zdtm/static/env00/41/1",
        "-v4",
        "-t",
        "41",
        "--pidfile",
        "/tmp/p",
        "--timeout",
        "10",
        "--pre-dump-mode",
        "splice",
    ]);
    assert_eq!(d.command, Command::Dump);
    assert_eq!(d.pid, Some(41));
    assert_eq!(d.verbosity, 4);
    assert_eq!(d.log_file.as_deref(), Some("dump.log".as_ref()));
    assert!(d.pidfile.is_some());
    let r = ok(&[
        "restore",
        "--no-default-config",
        "-o",
        "restore.log",
        "-D",
        "d",
        "-v4",
        "--restore-detached",
        "--pidfile",
        "p",
        "--status-fd",
        "7",
    ]);
    assert_eq!(r.command, Command::Restore);
    assert!(r.detach);
    let c = ok(&[
        "check",
        "--no-default-config",
        "-v0",
        "--feature",
        "timerfd",
    ]);
    assert_eq!(c.command, Command::Check);
    assert_eq!(c.verbosity, 0);
    assert_eq!(c.features, ["timerfd"]);
    ok(&["check", "--all"]);
    ok(&["check", "--extra", "--experimental"]);
}

#[test]
fn values_come_with_equals_or_as_the_next_word() {
    for args in [
        &["dump", "--tree=5", "--images-dir=/x", "--ghost-limit=1K"][..],
        &[
            "dump",
            "--tree",
            "5",
            "--images-dir",
            "/x",
            "--ghost-limit",
            "1K",
        ],
        &["dump", "-t5", "-D/x", "--ghost-limit", "1k"],
        &["-t", "5", "-D", "/x", "dump", "--ghost-limit=1024"],
    ] {
        let c = ok(args);
        assert_eq!((c.pid, c.ghost_limit), (Some(5), Some(1024)), "{args:?}");
        assert_eq!(c.images_dir, std::path::Path::new("/x"), "{args:?}");
    }
    // An optional value only follows '=': the next word is an operand.
    assert_eq!(
        err(&["dump", "-t", "1", "--ext-unix-sk", "12"]),
        "unexpected argument '12' after 'dump'"
    );
    assert_eq!(
        err(&["dump", "-t", "1", "--leave-running=yes"]),
        "option --leave-running takes no value"
    );
    assert_eq!(err(&["dump", "--tree"]), "option --tree needs a value");
}

#[test]
fn verbosity_as_criu_counts_it() {
    let v = |args: &[&str]| {
        let mut a = vec!["check"];
        a.extend_from_slice(args);
        ok(&a).verbosity
    };
    assert_eq!(v(&[]), 2);
    assert_eq!(v(&["-v"]), 3);
    assert_eq!(v(&["-vv"]), 4);
    assert_eq!(v(&["-vvvv"]), 4);
    assert_eq!(v(&["-v4"]), 4);
    assert_eq!(v(&["-v0"]), 0);
    assert_eq!(v(&["-v1"]), 1);
    assert_eq!(v(&["--verbosity=3"]), 3);
    assert_eq!(v(&["--verbosity"]), 3);
    assert_eq!(v(&["-v0", "-v"]), 1);
    // Other values as C's atoi reads them, zdtm's "-verbosity=0" among them.
    assert_eq!(v(&["-verbosity=0"]), 0);
    assert_eq!(v(&["-vx"]), 0);
}

#[test]
fn short_flags_cluster() {
    let c = ok(&["dump", "-jlRt", "9"]);
    assert!(c.shell_job && c.file_locks && c.leave_running);
    assert_eq!(c.pid, Some(9));
    let c = ok(&["restore", "-djlv4"]);
    assert!(c.detach && c.shell_job && c.file_locks);
    assert_eq!(c.verbosity, 4);
    let c = ok(&["dump", "-Rt9", "-x12,13"]);
    assert_eq!(c.ext_unix_sk, Some(vec![12, 13]));
    let c = ok(&["restore", "-jdS"]);
    assert!(c.shell_job && c.detach && c.restore_sibling);
    assert_eq!(err(&["dump", "-t1", "-jM"]), "option -M needs a value");
    assert_eq!(err(&["dump", "-t1", "-q"]), "unknown option -q");
}

#[test]
fn long_names_negate_and_abbreviate_as_getopt_long() {
    let c = ok(&[
        "restore",
        "--tcp-established",
        "--no-tcp-established",
        "--daemon",
    ]);
    assert!(!c.tcp_established && c.detach);
    let c = ok(&["restore", "--tcp-est", "--restore-d"]);
    assert!(c.tcp_established && c.detach);
    assert!(err(&["restore", "--tcp"]).starts_with("option --tcp is ambiguous"));
    ok(&[
        "dump",
        "-t1",
        "--no-page-server",
        "--no-track-mem",
        "--no-stream",
    ]);
}

#[test]
fn unsupported_options_and_values_are_refused_by_name() {
    for (args, want) in [
        (
            &["dump", "-t1", "--lazy-pages"][..],
            "--lazy-pages is not supported yet",
        ),
        (
            &["dump", "-t1", "--page-server"],
            "--page-server is not supported yet",
        ),
        (
            &["dump", "-t1", "--track-mem"],
            "--track-mem is not supported yet",
        ),
        (
            &["dump", "-t1", "--prev-images-dir", "../1"],
            "--prev-images-dir is not supported yet",
        ),
        (
            &["dump", "-t1", "--stream"],
            "--stream is not supported yet",
        ),
        (
            &["dump", "-t1", "--pre-dump-mode=read"],
            "--pre-dump-mode=read is not supported yet",
        ),
        (
            &["restore", "--manage-cgroups=sloppy"],
            "bad value 'sloppy' for --manage-cgroups",
        ),
        (
            &["restore", "--cgroup-root", "cpu:rel"],
            "bad --cgroup-root 'cpu:rel': expected [CONTROLLER:]/PATH",
        ),
        (
            &["dump", "-t1", "--network-lock", "skip"],
            "--network-lock=skip is not supported yet",
        ),
        (
            &["dump", "-t1", "--network-lock", "pf"],
            "bad value 'pf' for --network-lock",
        ),
        (
            &["dump", "-t1", "--timeout", "soon"],
            "bad value 'soon' for --timeout: expected a number",
        ),
        (
            &["restore", "--ext-mount-map", "nocolon"],
            "bad --ext-mount-map 'nocolon': expected KEY:VAL",
        ),
        (
            &["dump", "-t1", "--no-such-flag"],
            "unknown option --no-such-flag",
        ),
    ] {
        assert_eq!(err(args), want, "{args:?}");
    }
}

#[test]
fn commands_as_criu_names_them() {
    assert_eq!(ok(&["swrk", "3"]).command, Command::Swrk(3));
    assert_eq!(ok(&["-V"]).command, Command::Version);
    assert_eq!(ok(&["dump", "--version"]).command, Command::Version);
    assert_eq!(ok(&["--help"]).command, Command::Help);
    assert_eq!(
        ok(&["restore", "-h", "--lazy-pages"]).command,
        Command::Help
    );
    for c in [
        "pre-dump",
        "lazy-pages",
        "page-server",
        "service",
        "dedup",
        "cpuinfo",
    ] {
        assert_eq!(err(&[c]), format!("{c} is not supported yet"));
    }
    assert!(err(&["frobnicate"]).starts_with("unknown command 'frobnicate'"));
    assert!(err(&[]).starts_with("no command given"));
    assert!(err(&["dump", "-D", "/tmp"]).contains("--tree"));
    assert!(err(&["dump", "-t", "notapid"]).contains("notapid"));
    assert_eq!(err(&["dump", "-t", "0"]), "bad pid '0' for --tree");
    assert!(err(&["restore", "--inherit-fd", "bogus"]).contains("fd[N]:KEY"));
    assert_eq!(
        err(&["dump", "-t1", "--inherit-fd", "fd[3]:/a"]),
        "--inherit-fd is a restore-only option"
    );
    // Operands after the options, as getopt permutes them.
    assert_eq!(ok(&["-v4", "check"]).command, Command::Check);
    assert_eq!(ok(&["-D", "x", "--", "restore"]).command, Command::Restore);
}

#[test]
fn ext_unix_sk_takes_an_optional_list_of_inodes() {
    let ext = |args: &[&str]| {
        let mut a = vec!["dump", "-t", "1"];
        a.extend_from_slice(args);
        cli::parse(&a).map(|c| c.ext_unix_sk)
    };
    assert_eq!(ext(&[]), Ok(None));
    assert_eq!(ext(&["--ext-unix-sk"]), Ok(Some(vec![])));
    assert_eq!(ext(&["--ext-unix-sk=12,34"]), Ok(Some(vec![12, 34])));
    assert_eq!(ext(&["-x12", "--ext-unix-sk=34"]), Ok(Some(vec![12, 34])));
    assert!(ext(&["--ext-unix-sk=x"])
        .unwrap_err()
        .contains("bad socket inode 'x'"));
}

#[test]
fn freeze_cgroup_takes_a_path() {
    let c = ok(&[
        "dump",
        "-t1",
        "--freeze-cgroup",
        "/sys/fs/cgroup/freezer/ctr",
    ]);
    assert_eq!(
        c.freeze_cgroup.as_deref(),
        Some(std::path::Path::new("/sys/fs/cgroup/freezer/ctr"))
    );
    assert_eq!(ok(&["dump", "-t1"]).freeze_cgroup, None);
}

#[test]
fn accepted_options_leave_a_note_for_the_log() {
    let c = ok(&[
        "dump",
        "-t1",
        "--no-default-config",
        "--log-pid",
        "--network-lock=iptables",
    ]);
    assert_eq!(c.notes.len(), 3, "{:?}", c.notes);
    assert!(c.notes[0].contains("--no-default-config: accepted without effect"));
}

#[test]
fn usage_and_docs_name_every_option() {
    let u = cli::usage();
    let doc = include_str!("../../docs/cli-options.md");
    for sp in opts::OPTIONS {
        let name = format!("--{}", sp.long);
        assert!(u.contains(&name), "usage lacks {name}");
        assert!(
            doc.contains(&format!("`{name}")),
            "docs/cli-options.md lacks {name}"
        );
    }
}

/// Prints the option table of docs/cli-options.md: `cargo test -p stasis-cli -- --ignored
/// --nocapture print_doc_table`.
#[test]
#[ignore]
fn print_doc_table() {
    println!("| Option | stasis |\n|---|---|");
    for sp in opts::OPTIONS {
        let mut name = match sp.short {
            Some(c) => format!("`-{c}`, `--{}", sp.long),
            None => format!("`--{}", sp.long),
        };
        name.push_str(match sp.arg {
            HasArg::Required => " ARG`",
            HasArg::Optional => "[=ARG]`",
            HasArg::No => "`",
        });
        let what = match sp.support {
            Support::Yes(t) => format!("implemented: {t}"),
            Support::Some(t) => format!("accepted for some values: {t}"),
            Support::NoOp(t) => format!("accepted without effect: {t}"),
            Support::No => "not supported yet (refused by name)".to_string(),
        };
        println!("| {name} | {what} |");
    }
}

#[test]
fn external_takes_network_and_pid_namespaces_and_mounts() {
    assert_eq!(
        cli::parse_external("net[4026532177]:extRootNetNS"),
        Ok(cli::External::Net(4026532177, "extRootNetNS".to_string()))
    );
    assert_eq!(
        cli::parse_external("mnt[/proc/keys]:/dev/null"),
        Ok(cli::External::Mnt("/proc/keys".into(), "/dev/null".into()))
    );
    assert_eq!(
        cli::parse_external("pid[4026532175]:extRootPidNS"),
        Ok(cli::External::Pid(4026532175, "extRootPidNS".to_string()))
    );
    assert_eq!(
        cli::parse_external("ipc[1]:x").unwrap_err(),
        "--external ipc[1]:x is not supported yet (only net[INODE]:KEY, pid[INODE]:KEY, mnt[KEY]:VAL, mnt[][:s|:m], veth[IN]:OUT[@BRIDGE], macvlan[NAME]:HOSTDEV and tty[RDEV:DEV])"
    );
    assert_eq!(
        cli::parse_external("macvlan[zdtmmvlan0]:zdtmbr0"),
        Ok(cli::External::Macvlan(
            "zdtmmvlan0".into(),
            "zdtmbr0".into()
        ))
    );
    assert!(cli::parse_external("macvlan[]:zdtmbr0").is_err());
    let c = cli::parse(&["restore", "--external", "macvlan[mv0]:eth1"]).unwrap();
    assert_eq!(
        c.macvlan_parents,
        vec![("mv0".to_string(), "eth1".to_string())]
    );
    assert_eq!(
        cli::parse_external("mnt[]:s"),
        Ok(cli::External::MntAuto {
            sharing: true,
            masters: false
        })
    );
    assert!(cli::parse_external("mnt[]:x").is_err());
    match cli::parse_external("veth[eth0]:vethAB12@lxcbr0") {
        Ok(cli::External::Veth(p)) => {
            assert_eq!(
                (p.inside.as_str(), p.outside.as_str()),
                ("eth0", "vethAB12")
            );
            assert_eq!(p.bridge.as_deref(), Some("lxcbr0"));
        }
        other => panic!("{other:?}"),
    }
    let c = cli::parse(&["restore", "--lsm-profile", "apparmor:unconfined"]).unwrap();
    assert_eq!(c.notes.len(), 1);
    assert!(cli::parse(&["restore", "--lsm-profile", "apparmor:lxc-default"]).is_err());
    assert_eq!(
        cli::parse_external("tty[8800:1a]"),
        Ok(cli::External::Tty("tty[8800:1a]".into()))
    );
    assert!(cli::parse_external("tty[zz:1]").is_err());
    assert_eq!(
        cli::parse_external("apparmor:unconfined"),
        Ok(cli::External::Other("apparmor:unconfined".into()))
    );
    // CRIU's three spellings of auto-detected external mounts, and the two permissions.
    for args in [
        &[
            "dump",
            "-t1",
            "--ext-mount-map",
            "auto",
            "--enable-external-masters",
        ][..],
        &["dump", "-t1", "--external", "mnt[]:m"][..],
    ] {
        let c = cli::parse(args).unwrap();
        assert!(
            c.auto_ext_mounts && c.ext_masters && !c.ext_sharing,
            "{args:?}"
        );
    }
    let c = cli::parse(&[
        "restore",
        "--external",
        "mnt[]",
        "--enable-external-sharing",
    ])
    .unwrap();
    assert!(c.auto_ext_mounts && c.ext_sharing);
    let c = cli::parse(&[
        "restore",
        "--root",
        "/r",
        "-M",
        "/sys/fs/cgroup/cpu:/sys/fs/cgroup/cpu/x",
        "--manage-cgroups",
        "--cgroup-root",
        "/a",
        "--cgroup-root",
        "name=systemd:/b",
    ])
    .unwrap();
    assert_eq!(c.manage_cgroups, Some(stasis::cgroup::CgMode::Soft));
    assert_eq!(
        c.cgroup_roots,
        [
            (None, "/a".to_string()),
            (Some("name=systemd".to_string()), "/b".to_string())
        ]
    );
    assert_eq!(c.root, Some(std::path::PathBuf::from("/r")));
    assert_eq!(
        c.ext_mounts,
        [(
            "/sys/fs/cgroup/cpu".to_string(),
            "/sys/fs/cgroup/cpu/x".to_string()
        )]
    );
    assert!(cli::parse_external("net[x]:k").is_err());
    assert!(cli::parse_external("net[1]:").is_err());
}

#[test]
fn join_ns_takes_the_kinds_a_thread_can_enter() {
    assert_eq!(
        cli::parse_join_ns("uts:123"),
        Ok(("uts".to_string(), "/proc/123/ns/uts".into()))
    );
    assert_eq!(
        cli::parse_join_ns("net:/run/netns/a"),
        Ok(("net".to_string(), "/run/netns/a".into()))
    );
    assert_eq!(
        cli::parse_join_ns("mnt:1").unwrap_err(),
        "--join-ns mnt is not supported yet (net, uts and ipc are)"
    );
    assert!(cli::parse_join_ns("user:1,0,0").is_err());
    assert!(cli::parse_join_ns("net").is_err());
}
