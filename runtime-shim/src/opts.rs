//! CRIU's option table and a getopt_long-style parser for it.
//!
//! CRIU has one option table for every command (criu/config.c): any command accepts any option,
//! options may come before or after the command word, and getopt_long rules apply:
//! `--opt=value` and `--opt value` for a required argument, `--opt=value` only for an optional
//! one, `-tPID` or `-t PID`, clustered short flags (`-jl`), `-v4` and `-vvvv`, unambiguous
//! prefixes of long names, `--` to end the options. Boolean options also have a `--no-NAME`
//! form. Each option says here whether stasis implements it, accepts it as having no effect
//! (and why), or refuses it by name.

/// Whether an option takes an argument.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HasArg {
    No,
    Required,
    /// Only as `--opt=value` or, for a short option, `-oVALUE`.
    Optional,
}

/// What stasis does with an option.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Implemented: stasis does what CRIU does with it (the text says what).
    Yes(&'static str),
    /// Accepted without effect, because stasis already behaves as the option asks or the
    /// option does not apply to it; the text says why.
    NoOp(&'static str),
    /// Refused by name: "--NAME is not supported yet". The `--no-NAME` form (CRIU's default)
    /// is accepted.
    No,
    /// Depends on the value: the text says which values are accepted.
    Some(&'static str),
}

/// One option of CRIU's table.
#[derive(Debug, PartialEq, Eq)]
pub struct Spec {
    pub long: &'static str,
    pub short: Option<char>,
    pub arg: HasArg,
    /// CRIU's BOOL_OPT: also accepted as `--no-NAME`.
    pub negatable: bool,
    pub support: Support,
}

const fn o(long: &'static str, short: Option<char>, arg: HasArg, support: Support) -> Spec {
    Spec {
        long,
        short,
        arg,
        negatable: false,
        support,
    }
}

/// A CRIU BOOL_OPT: no argument, and a `--no-` form.
const fn b(long: &'static str, support: Support) -> Spec {
    Spec {
        long,
        short: None,
        arg: HasArg::No,
        negatable: true,
        support,
    }
}

use HasArg::{No as N, Optional as Opt, Required as Req};
use Support::{No as Refused, NoOp, Some as Values, Yes};

/// CRIU 4.x's options (criu/config.c, parse_options), in its order.
pub static OPTIONS: &[Spec] = &[
    o("tree", Some('t'), Req, Yes("PID of the root of the tree to dump")),
    o("leave-stopped", Some('s'), N, Refused),
    o("leave-running", Some('R'), N, Yes("leave the tree running after the dump")),
    Spec {
        short: Some('d'),
        ..b(
            "restore-detached",
            Yes("detach after restore instead of waiting for the root task"),
        )
    },
    Spec {
        short: Some('S'),
        ..b("restore-sibling", Yes("restore the root as a child of our parent rather than ours (with --restore-detached; LXC's monitor waits for it)"))
    },
    b("daemon", Yes("same as --restore-detached")),
    o("images-dir", Some('D'), Req, Yes("images directory (default: .)")),
    o("work-dir", Some('W'), Req, Yes("directory for logs, stats and pidfile (default: the images directory)")),
    o("log-file", Some('o'), Req, Yes("log file, relative to the work directory; '-' for stderr")),
    o("verbosity", Some('v'), Opt, Yes("-v[NUM] (0 none .. 4 debug) or -vvv; default 2")),
    o(
        "join-ns",
        Some('J'),
        Req,
        Yes("restore into an existing net, uts or ipc namespace (NS:PID or NS:PATH) instead of a new one"),
    ),
    o("root", Some('r'), Req, Yes("restore: the directory that becomes the root of a tree that had its own mount namespace (runc's criu-root)")),
    o("ext-unix-sk", Some('x'), Opt, Yes("unix sockets with a peer outside the tree; =INODE[,INODE...] for those sockets whatever their type")),
    o("help", Some('h'), N, Yes("print the usage and exit")),
    b("tcp-established", Yes("checkpoint/restore established TCP connections")),
    o(
        "close",
        None,
        Req,
        Yes("close this fd of ours before doing anything"),
    ),
    b("log-pid", NoOp("stasis is one process: its log is one file")),
    o("version", Some('V'), N, Yes("print the version and exit")),
    b("evasive-devices", Refused),
    o("pidfile", None, Req, Yes("restore: write the root task's PID here (relative to the work dir); dump: no effect, as in CRIU")),
    o(
        "veth-pair",
        None,
        Req,
        Yes("restore: name the outer end of a veth of the tree's network namespace (IN=OUT[@BRIDGE])"),
    ),
    o("action-script", None, Req, Refused),
    b("link-remap", Yes("dump: a file deleted while open that has other names is kept by a hard link made beside it (link_remap.N), which the restore opens and removes; without it such a file is refused")),
    Spec {
        short: Some('j'),
        ..b("shell-job", Yes("allow a terminal and session that lead outside the tree"))
    },
    Spec {
        short: Some('l'),
        ..b("file-locks", Yes("checkpoint/restore file locks (flock, POSIX, OFD)"))
    },
    b("page-server", Refused),
    o("address", None, Req, Refused),
    o("port", None, Req, Refused),
    o("prev-images-dir", None, Req, Refused),
    o("ms", None, N, NoOp("stasis does not check for kernel features that are not merged yet")),
    b("track-mem", Refused),
    b("auto-dedup", NoOp("there are no parent images to deduplicate; images are left whole")),
    o("libdir", Some('L'), Req, NoOp("stasis has no plugins")),
    o("cpu-cap", None, Opt, Yes("restore: with fpu (the default, or all) refuse images whose register state needs XSAVE components this CPU lacks, such as AVX-512; =none restores without them")),
    b("force-irmap", NoOp("stasis always resolves an inotify watch to a path at dump, from its file handle")),
    o("ext-mount-map", Some('M'), Req, Yes("KEY:VAL, the old form of --external mnt[KEY]:VAL; auto: a mount the dumper's own namespace shows too (a bind from the host) is external by itself, its host path saved and bound again at restore (--external mnt[] likewise)")),
    o("exec-cmd", None, N, Refused),
    o("manage-cgroups", None, Opt, Yes("restore: put the tasks back into their dumped cgroups and set their saved properties; =MODE: soft (the default: missing ones made with their properties), full and strict (properties set on all), props (they must exist; properties set), none (they must exist; no properties), ignore")),
    o("cgroup-root", None, Req, Yes("restore: [CONTROLLER:]PATH, where the root task's cgroup goes (in every hierarchy without a controller)")),
    o("inherit-fd", None, Req, Yes("restore: use our fd N for the file the images call KEY: fd[N]:KEY")),
    o("feature", None, Req, Yes("check: whether stasis and this kernel support a CRIU feature; 'list' lists them")),
    o("skip-mnt", None, Req, Refused),
    o("enable-fs", None, Req, Yes("FSNAMES (comma-separated, or all): whole mounts of these filesystem types are mounted anew at restore by type, source and options (LXC passes hugetlbfs and tracefs)")),
    o("enable-external-sharing", None, N, Yes("with --ext-mount-map auto: a shared mount may be found external too (it joins its host mount's peer group again at restore); --external mnt[]:s likewise")),
    o("enable-external-masters", None, N, Yes("with --ext-mount-map auto: a slave of its host mount's group may be found external too; --external mnt[]:m likewise")),
    o("freeze-cgroup", None, Req, Yes("freeze this cgroup (v1 freezer or cgroup2 dir) while the tree is seized; all of its processes must be in the tree")),
    o("ghost-limit", None, Req, Yes("largest file deleted while open whose content is saved (SIZE[K|M|G]; default 1M)")),
    o("irmap-scan-path", None, Req, NoOp("no scan: a watch's path comes from its file handle")),
    o("lsm-profile", None, Req, Values("TYPE:unconfined (LXC's apparmor:unconfined): the tasks keep the restorer's unconfined profile; other profiles are refused")),
    o(
        "timeout",
        None,
        Req,
        Yes("how long, in seconds, a thread may take to stop when the tree is seized (default 10)"),
    ),
    o(
        "external",
        None,
        Req,
        Values("net[INODE]:KEY or pid[INODE]:KEY: the tree's network or pid namespace is the caller's, joined at restore through --inherit-fd fd[N]:KEY; mnt[MOUNTPOINT]:KEY at dump, mnt[KEY]:PATH at restore: a mount from outside the tree; mnt[], mnt[]:s, mnt[]:m: as --ext-mount-map auto (with external sharing, masters); macvlan[NAME]:HOSTDEV at restore: the caller's device the tree's macvlan NAME is made on"),
    ),
    o("empty-ns", None, Req, Yes("net: the caller manages the network namespace's contents (runc sends it always): a namespace the tree owns is saved without its links, and made again with only its loopback, up, for the caller's hooks to fill")),
    o("lazy-pages", None, N, Refused),
    b("extra", NoOp("check: stasis checks what it needs whatever the level")),
    b("experimental", NoOp("check: stasis checks what it needs whatever the level")),
    o("all", None, N, NoOp("check: stasis checks what it needs whatever the level")),
    o("cgroup-props", None, Req, Refused),
    o("cgroup-props-file", None, Req, Refused),
    o("cgroup-dump-controller", None, Req, Refused),
    b("skip-in-flight", NoOp("connections not yet accepted are always left out (and logged)")),
    b("tcp-close", Yes("restore established TCP connections as closed sockets; at dump, without --tcp-established, record them without reading or locking them")),
    o("config", None, Req, Refused),
    o("no-default-config", None, N, NoOp("stasis reads no configuration file")),
    o(
        "status-fd",
        None,
        Req,
        NoOp("CRIU writes it only from page-server, lazy-pages and service; the number is checked"),
    ),
    o("ps-socket", None, Req, Refused),
    b("display-stats", Yes("print the dump or restore statistics to stdout at the end")),
    b("weak-sysctls", Refused),
    b("deprecated", NoOp("stasis has no deprecated features to allow")),
    o("tls-cacert", None, Req, Refused),
    o("tls-cacrl", None, Req, Refused),
    o("tls-cert", None, Req, Refused),
    o("tls-key", None, Req, Refused),
    b("tls", Refused),
    o("tls-no-cn-verify", None, N, Refused),
    o("cgroup-yard", None, Req, NoOp("stasis mounts no cgroup hierarchies: it finds each where it is mounted in its mount table, a yard's included")),
    o("pre-dump-mode", None, Req, Values("only splice (CRIU's default): pre-dump itself is not supported yet")),
    o("file-validation", None, Req, Values("only filesize: a mapped or executable file's size is compared at restore")),
    b("skip-file-rwx-check", Refused),
    o("lsm-mount-context", None, Req, Refused),
    o("network-lock", None, Req, Values("iptables or nftables: stasis always locks with nftables")),
    b("mntns-compat-mode", Refused),
    b("unprivileged", Refused),
    b("ghost-fiemap", NoOp("ghost files are saved whole")),
    b("allow-uprobes", Refused),
    b("stream", Refused),
];

/// One option as given on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Given {
    pub spec: &'static Spec,
    pub value: Option<String>,
    /// Given as `--no-NAME`.
    pub negated: bool,
}

/// The command line split into options and words (the command and its operands).
#[derive(Debug, Default)]
pub struct Parsed {
    pub given: Vec<Given>,
    pub words: Vec<String>,
}

fn by_short(c: char) -> Option<&'static Spec> {
    OPTIONS.iter().find(|s| s.short == Some(c))
}

/// Finds a long option by name, a `--no-` form or an unambiguous prefix, as getopt_long does.
fn by_long(name: &str) -> Result<(&'static Spec, bool), String> {
    let forms = || {
        OPTIONS.iter().flat_map(|s| {
            let no = s.negatable.then_some((s, true));
            std::iter::once((s, false)).chain(no)
        })
    };
    let full = |s: &Spec, neg: bool| {
        if neg {
            format!("no-{}", s.long)
        } else {
            s.long.to_string()
        }
    };
    if let Some(hit) = forms().find(|&(s, neg)| full(s, neg) == name) {
        return Ok(hit);
    }
    let hits: Vec<_> = forms()
        .filter(|&(s, neg)| full(s, neg).starts_with(name))
        .collect();
    match hits.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!("unknown option --{name}")),
        many => {
            let names: Vec<String> = many
                .iter()
                .map(|&(s, n)| format!("--{}", full(s, n)))
                .collect();
            Err(format!(
                "option --{name} is ambiguous: {}",
                names.join(", ")
            ))
        }
    }
}

/// Splits `args` (without the program name) into options and words.
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Parsed, String> {
    let mut p = Parsed::default();
    let mut it = args.iter().map(|a| a.as_ref().to_string());
    while let Some(a) = it.next() {
        if a == "--" {
            p.words.extend(it.by_ref());
        } else if let Some(body) = a.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_string())),
                None => (body, None),
            };
            let (spec, negated) = by_long(name)?;
            let shown = if negated {
                format!("--no-{}", spec.long)
            } else {
                format!("--{}", spec.long)
            };
            let value = match (spec.arg, inline) {
                (HasArg::No, Some(_)) => return Err(format!("option {shown} takes no value")),
                (HasArg::Required, None) => Some(
                    it.next()
                        .ok_or_else(|| format!("option {shown} needs a value"))?,
                ),
                (_, v) => v,
            };
            p.given.push(Given {
                spec,
                value,
                negated,
            });
        } else if a.len() > 1 && a.starts_with('-') {
            parse_shorts(&a[1..], &mut it, &mut p.given)?;
        } else {
            p.words.push(a);
        }
    }
    Ok(p)
}

/// A cluster of short options: `-jl`, `-t123`, `-t 123`, `-v4`, `-vvv`.
fn parse_shorts(
    cluster: &str,
    rest: &mut impl Iterator<Item = String>,
    given: &mut Vec<Given>,
) -> Result<(), String> {
    for (i, c) in cluster.char_indices() {
        let spec = by_short(c).ok_or_else(|| format!("unknown option -{c}"))?;
        let tail = &cluster[i + c.len_utf8()..];
        let value = match spec.arg {
            HasArg::No => None,
            HasArg::Optional => (!tail.is_empty()).then(|| tail.to_string()),
            HasArg::Required if !tail.is_empty() => Some(tail.to_string()),
            HasArg::Required => Some(
                rest.next()
                    .ok_or_else(|| format!("option -{c} needs a value"))?,
            ),
        };
        let done = value.is_some();
        given.push(Given {
            spec,
            value,
            negated: false,
        });
        if done {
            break;
        }
    }
    Ok(())
}
