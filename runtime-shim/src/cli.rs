//! From CRIU's command line (see `opts`) to what stasis will do.

use std::path::PathBuf;

use stasis::restore::InheritFd;

use crate::opts::{self, Given, Support};

/// CRIU's commands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    Dump,
    Restore,
    Check,
    /// `swrk FD`: CRIU's RPC service on a socket fd.
    Swrk(i32),
    Help,
    Version,
}

/// Every CRIU command stasis does not run yet; named in the error.
const UNSUPPORTED_COMMANDS: &[&str] = &[
    "pre-dump",
    "lazy-pages",
    "page-server",
    "service",
    "dedup",
    "cpuinfo",
];

/// What the command line asks for, options folded in.
#[derive(Debug, Clone)]
pub struct Config {
    pub command: Command,
    pub pid: Option<u32>,
    pub images_dir: PathBuf,
    pub work_dir: Option<PathBuf>,
    pub log_file: Option<PathBuf>,
    /// 0 none, 1 errors, 2 warnings (default), 3 info, 4 debug.
    pub verbosity: u8,
    pub leave_running: bool,
    pub detach: bool,
    pub shell_job: bool,
    pub file_locks: bool,
    pub link_remap: bool,
    pub tcp_established: bool,
    pub tcp_close: bool,
    /// `--cpu-cap`: whether the restore checks that this CPU has the register state the
    /// images use (CRIU's `fpu` capability, on by default).
    pub cpu_cap_fpu: bool,
    /// `--ext-unix-sk[=INODE,...]`: None if not given.
    pub ext_unix_sk: Option<Vec<u32>>,
    pub ghost_limit: Option<u64>,
    /// `--freeze-cgroup PATH`.
    pub freeze_cgroup: Option<PathBuf>,
    pub pidfile: Option<PathBuf>,
    pub inherit_fds: Vec<InheritFd>,
    /// `--join-ns NS:PID|PATH`: (kind, the namespace file).
    pub join_ns: Vec<(String, PathBuf)>,
    /// `--external net[INODE]:KEY`: (inode, key).
    pub external_netns: Vec<(u64, String)>,
    /// `--external pid[INODE]:KEY`: (inode, key).
    pub external_pidns: Vec<(u64, String)>,
    /// `--external mnt[KEY]:VAL`, `--ext-mount-map KEY:VAL`.
    pub ext_mounts: Vec<(String, String)>,
    /// `--ext-mount-map auto`, `--external mnt[]`: mounts from outside found by themselves.
    pub auto_ext_mounts: bool,
    /// `--enable-external-sharing`, `mnt[]:s`.
    pub ext_sharing: bool,
    /// `--enable-external-masters`, `mnt[]:m`.
    pub ext_masters: bool,
    /// `--empty-ns net`.
    pub empty_netns: bool,
    /// `--enable-fs FSNAMES`.
    pub enable_fs: Vec<String>,
    /// `--restore-sibling`.
    pub restore_sibling: bool,
    /// `--external tty[RDEV:DEV]`.
    pub external_ttys: Vec<String>,
    /// `--root DIR`.
    pub root: Option<PathBuf>,
    /// `--manage-cgroups[=MODE]`.
    pub manage_cgroups: Option<stasis::cgroup::CgMode>,
    /// `--cgroup-root [CONTROLLER:]PATH`.
    pub cgroup_roots: Vec<(Option<String>, String)>,
    /// `--veth-pair IN=OUT[@BRIDGE]`.
    pub veth_pairs: Vec<stasis_netns::VethPair>,
    pub macvlan_parents: Vec<(String, String)>,
    /// `--timeout SECONDS`: how long a thread may take to stop when seized.
    pub timeout: Option<u64>,
    /// `--close FD`: fds of ours to close before anything else.
    pub close_fds: Vec<i32>,
    pub display_stats: bool,
    /// `check --feature NAME`, in order.
    pub features: Vec<String>,
    /// Options accepted without effect, and why: logged once the log is open.
    pub notes: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            command: Command::Help,
            pid: None,
            images_dir: PathBuf::from("."),
            work_dir: None,
            log_file: None,
            verbosity: 2,
            leave_running: false,
            detach: false,
            shell_job: false,
            file_locks: false,
            link_remap: false,
            tcp_established: false,
            tcp_close: false,
            cpu_cap_fpu: true,
            ext_unix_sk: None,
            ghost_limit: None,
            freeze_cgroup: None,
            pidfile: None,
            inherit_fds: Vec::new(),
            veth_pairs: Vec::new(),
            macvlan_parents: Vec::new(),
            external_netns: Vec::new(),
            external_pidns: Vec::new(),
            ext_mounts: Vec::new(),
            auto_ext_mounts: false,
            ext_sharing: false,
            ext_masters: false,
            empty_netns: false,
            enable_fs: Vec::new(),
            restore_sibling: false,
            external_ttys: Vec::new(),
            root: None,
            manage_cgroups: None,
            cgroup_roots: Vec::new(),
            join_ns: Vec::new(),
            close_fds: Vec::new(),
            timeout: None,
            display_stats: false,
            features: Vec::new(),
            notes: Vec::new(),
        }
    }
}

/// Reads the command line (without the program name) as CRIU would. An error is one line.
pub fn parse<S: AsRef<str>>(args: &[S]) -> Result<Config, String> {
    let p = opts::parse(args)?;
    let mut c = Config::default();
    let asked = |l: &str| p.given.iter().any(|g| g.spec.long == l && !g.negated);
    // Like CRIU, -h and -V win over everything else.
    if asked("help") {
        return Ok(c);
    }
    if asked("version") {
        c.command = Command::Version;
        return Ok(c);
    }
    for g in &p.given {
        apply(&mut c, g)?;
    }
    c.command = command(&p.words)?;
    if !c.inherit_fds.is_empty() && c.command != Command::Restore {
        return Err("--inherit-fd is a restore-only option".into());
    }
    if c.command == Command::Dump && c.pid.is_none() {
        return Err("dump needs the root of the tree: -t|--tree PID".into());
    }
    Ok(c)
}

fn command(words: &[String]) -> Result<Command, String> {
    let Some((cmd, operands)) = words.split_first() else {
        return Err("no command given; try 'stasis --help'".into());
    };
    let none = |c: Command| match operands.first() {
        Some(w) => Err(format!("unexpected argument '{w}' after '{cmd}'")),
        None => Ok(c),
    };
    match cmd.as_str() {
        "dump" => none(Command::Dump),
        "restore" => none(Command::Restore),
        "check" => none(Command::Check),
        "swrk" => match operands {
            [fd] => fd
                .parse()
                .map(Command::Swrk)
                .map_err(|_| format!("bad fd '{fd}' for swrk")),
            _ => Err("swrk needs one argument: the fd of its socket".into()),
        },
        "exec" => Err("the exec command is gone from CRIU (it is the compel library now)".into()),
        "show" => Err("show is not a command: decode images with crit".into()),
        c if UNSUPPORTED_COMMANDS.contains(&c) => Err(format!("{c} is not supported yet")),
        c => Err(format!("unknown command '{c}' (see 'stasis --help')")),
    }
}

/// CRIU's `--cpu-cap[=CAP,...]`: whether `fpu` (register state) is among the capabilities
/// checked. No value is CRIU's default (fpu).
fn parse_cpu_cap(v: &str) -> Result<bool, String> {
    let mut fpu = v.is_empty();
    for cap in v.split(',').filter(|c| !c.is_empty()) {
        match cap {
            "fpu" | "all" => fpu = true,
            "none" | "cpu" | "ins" | "img" => {}
            other => {
                return Err(format!(
                    "bad value '{other}' for --cpu-cap: expected fpu, cpu, ins, img, all or none"
                ))
            }
        }
    }
    Ok(fpu)
}

fn value(g: &Given) -> &str {
    g.value.as_deref().unwrap_or("")
}

fn number<T: std::str::FromStr>(g: &Given) -> Result<T, String> {
    value(g).parse().map_err(|_| {
        format!(
            "bad value '{}' for --{}: expected a number",
            value(g),
            g.spec.long
        )
    })
}

/// Folds one option into `c`, or refuses it.
fn apply(c: &mut Config, g: &Given) -> Result<(), String> {
    let on = !g.negated;
    match g.spec.support {
        // --no-NAME is CRIU's default for every option stasis refuses.
        Support::No if on => return Err(format!("--{} is not supported yet", g.spec.long)),
        Support::No => return Ok(()),
        Support::Some(_) if g.spec.long == "lsm-profile" => {
            let v = value(g);
            if on && !v.ends_with(":unconfined") {
                return Err(format!(
                    "--lsm-profile {v} is not supported yet (only TYPE:unconfined)"
                ));
            }
            c.notes.push(format!(
                "--lsm-profile={v}: accepted; the tasks keep the restorer's unconfined profile"
            ));
            return Ok(());
        }
        Support::Some(_) if g.spec.long == "external" => {
            if on {
                match parse_external(value(g))? {
                    External::Net(ino, key) => c.external_netns.push((ino, key)),
                    External::Pid(ino, key) => c.external_pidns.push((ino, key)),
                    External::Mnt(key, val) => c.ext_mounts.push((key, val)),
                    External::Veth(pair) => c.veth_pairs.push(pair),
                    External::Macvlan(inside, outside) => c.macvlan_parents.push((inside, outside)),
                    External::Tty(key) => c.external_ttys.push(key),
                    External::Other(v) => c.notes.push(format!(
                        "--external {v}: matches nothing; ignored, as CRIU does"
                    )),
                    External::MntAuto { sharing, masters } => {
                        c.auto_ext_mounts = true;
                        c.ext_sharing |= sharing;
                        c.ext_masters |= masters;
                    }
                }
            }
            return Ok(());
        }
        Support::Some(_) => {
            check_value(g)?;
            c.notes
                .push(format!("--{}={}: accepted", g.spec.long, value(g)));
            return Ok(());
        }
        Support::NoOp(why) => {
            // A number is still a number, as CRIU would check.
            if matches!(g.spec.long, "status-fd") {
                number::<u32>(g)?;
            }
            c.notes
                .push(format!("--{}: accepted without effect: {why}", g.spec.long));
            return Ok(());
        }
        Support::Yes(_) => {}
    }
    match g.spec.long {
        "tree" => {
            let bad = || format!("bad pid '{}' for --tree", value(g));
            let pid = number::<u32>(g).map_err(|_| bad())?;
            // CRIU refuses a tree id <= 0 the same way.
            c.pid = Some(Some(pid).filter(|&p| p > 0).ok_or_else(bad)?);
        }
        "leave-running" => c.leave_running = true,
        "restore-detached" | "daemon" => c.detach = on,
        "images-dir" => c.images_dir = PathBuf::from(value(g)),
        "work-dir" => c.work_dir = Some(PathBuf::from(value(g))),
        "log-file" => c.log_file = Some(PathBuf::from(value(g))),
        "verbosity" => c.verbosity = verbosity(c.verbosity, g.value.as_deref()),
        "ext-unix-sk" => c
            .ext_unix_sk
            .get_or_insert_with(Vec::new)
            .extend(parse_inodes(value(g))?),
        "tcp-established" => c.tcp_established = on,
        "pidfile" => c.pidfile = Some(PathBuf::from(value(g))),
        "shell-job" => c.shell_job = on,
        "file-locks" => c.file_locks = on,
        "link-remap" => c.link_remap = on,
        "inherit-fd" => c.inherit_fds.push(value(g).parse()?),
        "join-ns" => c.join_ns.push(parse_join_ns(value(g))?),
        "veth-pair" => c.veth_pairs.push(
            value(g)
                .parse()
                .map_err(|e: stasis_netns::VethPairError| e.to_string())?,
        ),
        "feature" => c.features.push(value(g).to_string()),
        "ghost-limit" => c.ghost_limit = Some(parse_size(value(g))?),
        "freeze-cgroup" => c.freeze_cgroup = Some(PathBuf::from(value(g))),
        "root" => c.root = Some(PathBuf::from(value(g))),
        "manage-cgroups" => c.manage_cgroups = Some(value(g).parse()?),
        "cgroup-root" => c.cgroup_roots.push(parse_cgroup_root(value(g))?),
        "ext-mount-map" if value(g) == "auto" => c.auto_ext_mounts = on,
        "ext-mount-map" => c.ext_mounts.push(parse_ext_mount_map(value(g))?),
        "empty-ns" => match value(g) {
            "net" | "network" => c.empty_netns = true,
            v => {
                return Err(format!(
                    "--empty-ns {v} is not supported (only net: the network namespace)"
                ))
            }
        },
        "enable-fs" => c.enable_fs.extend(
            value(g)
                .split(',')
                .filter(|f| !f.is_empty())
                .map(str::to_string),
        ),
        "restore-sibling" => c.restore_sibling = on,
        "enable-external-sharing" => c.ext_sharing = on,
        "enable-external-masters" => c.ext_masters = on,
        "tcp-close" => c.tcp_close = on,
        "cpu-cap" => c.cpu_cap_fpu = parse_cpu_cap(value(g))?,
        "close" => c.close_fds.push(number(g)?),
        "timeout" => c.timeout = Some(number(g)?),
        "display-stats" => c.display_stats = on,
        // help, version: handled before.
        _ => {}
    }
    Ok(())
}

/// Options stasis accepts with some values only.
fn check_value(g: &Given) -> Result<(), String> {
    let v = value(g);
    let (ok, known): (&[&str], &[&str]) = match g.spec.long {
        "manage-cgroups" => (
            &["ignore"],
            &["none", "props", "soft", "full", "strict", ""],
        ),
        "pre-dump-mode" => (&["splice"], &["read"]),
        "file-validation" => (&["filesize"], &["buildid"]),
        "network-lock" => (&["iptables", "nftables"], &["skip", "none"]),
        other => unreachable!("--{other} has no value table"),
    };
    if ok.contains(&v) {
        Ok(())
    } else if known.contains(&v) {
        let shown = if v.is_empty() {
            format!("--{}", g.spec.long)
        } else {
            format!("--{}={v}", g.spec.long)
        };
        Err(format!("{shown} is not supported yet"))
    } else {
        Err(format!("bad value '{v}' for --{}", g.spec.long))
    }
}

/// CRIU's -v: `-v` adds one, `-vvv` (value "vv") adds three, `-vN` sets N. Any other value
/// is read as C's atoi reads it, as CRIU does: zdtm's `-verbosity=0` is `-v` with the value
/// "erbosity=0", which is 0.
pub fn verbosity(level: u8, v: Option<&str>) -> u8 {
    let level = match v {
        None => level.saturating_add(1),
        Some(s) if s.starts_with('v') => level.saturating_add(s.len().min(255) as u8 + 1),
        Some(s) => atoi(s).clamp(0, 255) as u8,
    };
    level.min(4)
}

/// C's atoi: leading blanks, a sign, digits; 0 if there are none.
fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let n = digits
        .chars()
        .map_while(|c| c.to_digit(10))
        .fold(0i64, |n, d| n.saturating_mul(10).saturating_add(d as i64));
    if neg {
        -n
    } else {
        n
    }
}

/// `--join-ns NS:PID|PATH[,EXTRA]` (CRIU's form): the namespace kind and its file. Only the
/// kinds a restoring thread can enter on its own (net, uts, ipc) are taken.
pub fn parse_join_ns(s: &str) -> Result<(String, PathBuf), String> {
    let (kind, target) = s
        .split_once(':')
        .filter(|(k, t)| !k.is_empty() && !t.is_empty())
        .ok_or_else(|| format!("bad --join-ns '{s}': expected NS:PID or NS:PATH"))?;
    if !matches!(kind, "net" | "uts" | "ipc") {
        return Err(format!(
            "--join-ns {kind} is not supported yet (net, uts and ipc are)"
        ));
    }
    if target.contains(',') {
        return Err(format!(
            "--join-ns {s}: extra options are for user namespaces, which are not supported yet"
        ));
    }
    let file = match target.parse::<u32>() {
        Ok(pid) => PathBuf::from(format!("/proc/{pid}/ns/{kind}")),
        Err(_) => PathBuf::from(target),
    };
    Ok((kind.to_string(), file))
}

/// What `--external` declares.
#[derive(Debug, PartialEq, Eq)]
pub enum External {
    /// `net[INODE]:KEY`: the tree's network namespace is the caller's.
    Net(u64, String),
    /// `pid[INODE]:KEY`: the tree's pid namespace is the caller's (runc's extRootPidNS, a
    /// container joining another's pid namespace).
    Pid(u64, String),
    /// `mnt[KEY]:VAL`: at dump, the mount at KEY is external under the name VAL; at restore,
    /// the mount named KEY comes from VAL.
    Mnt(String, String),
    /// `mnt[]`, `mnt[]:s`, `mnt[]:m`: CRIU's auto-detected external mounts, with external
    /// sharing or masters allowed.
    MntAuto { sharing: bool, masters: bool },
    /// `macvlan[NAME]:HOSTDEV`: the macvlan NAME of the tree's network namespace is made again
    /// on the caller's device HOSTDEV.
    Macvlan(String, String),
    /// Not of CRIU's `KIND[ID]:VALUE` form (LXC 5 sends `apparmor:unconfined` beside
    /// `--lsm-profile`): CRIU keeps such a string and nothing ever matches it; so do we.
    Other(String),
    /// `veth[IN]:OUT[@BRIDGE]`: CRIU's newer spelling of `--veth-pair IN=OUT[@BRIDGE]`.
    Veth(stasis_netns::VethPair),
    /// `tty[RDEV:DEV]` (hex): a terminal the caller hands over again at restore
    /// (`--inherit-fd fd[N]:tty[RDEV:DEV]`), as LXC does with its console.
    Tty(String),
}

/// `--external net[INODE]:KEY` or `mnt[KEY]:VAL`; CRIU's other external kinds are refused by
/// name.
pub fn parse_external(s: &str) -> Result<External, String> {
    let split = |prefix: &str| {
        s.strip_prefix(prefix)
            .and_then(|r| r.split_once("]:"))
            .filter(|(a, k)| !a.is_empty() && !k.is_empty())
    };
    if let Some((ino, key)) = split("net[") {
        return ino
            .parse()
            .map(|i| External::Net(i, key.to_string()))
            .map_err(|_| format!("bad inode in --external {s}"));
    }
    if let Some((ino, key)) = split("pid[") {
        return ino
            .parse()
            .map(|i| External::Pid(i, key.to_string()))
            .map_err(|_| format!("bad inode in --external {s}"));
    }
    match s {
        "mnt[]" => {
            return Ok(External::MntAuto {
                sharing: false,
                masters: false,
            })
        }
        "mnt[]:s" => {
            return Ok(External::MntAuto {
                sharing: true,
                masters: false,
            })
        }
        "mnt[]:m" => {
            return Ok(External::MntAuto {
                sharing: false,
                masters: true,
            })
        }
        _ => {}
    }
    if let Some(ids) = s.strip_prefix("tty[").and_then(|r| r.strip_suffix(']')) {
        let hex = |x: &str| !x.is_empty() && x.chars().all(|c| c.is_ascii_hexdigit());
        return match ids.split_once(':') {
            Some((rdev, dev)) if hex(rdev) && hex(dev) => Ok(External::Tty(s.to_string())),
            _ => Err(format!("bad --external {s}: expected tty[RDEV:DEV] in hex")),
        };
    }
    if let Some((inside, outside)) = split("veth[") {
        return format!("{inside}={outside}")
            .parse()
            .map(External::Veth)
            .map_err(|e: stasis_netns::VethPairError| e.to_string());
    }
    if let Some((inside, outside)) = split("macvlan[") {
        if inside.is_empty() || outside.is_empty() {
            return Err(format!(
                "bad --external {s}: expected macvlan[NAME]:HOSTDEV"
            ));
        }
        return Ok(External::Macvlan(inside.to_string(), outside.to_string()));
    }
    if let Some((key, val)) = split("mnt[") {
        return Ok(External::Mnt(key.to_string(), val.to_string()));
    }
    if !s.contains('[') {
        return Ok(External::Other(s.to_string()));
    }
    Err(format!(
        "--external {s} is not supported yet (only net[INODE]:KEY, pid[INODE]:KEY, mnt[KEY]:VAL, mnt[][:s|:m], veth[IN]:OUT[@BRIDGE], macvlan[NAME]:HOSTDEV and tty[RDEV:DEV])"
    ))
}

/// `--cgroup-root [CONTROLLER:]PATH` (CRIU's form): a path alone is every hierarchy's root.
pub fn parse_cgroup_root(s: &str) -> Result<(Option<String>, String), String> {
    let (ctrl, path) = match s.split_once(':') {
        Some((c, p)) if !c.starts_with('/') => (Some(c.to_string()), p),
        _ => (None, s),
    };
    if !path.starts_with('/') {
        return Err(format!(
            "bad --cgroup-root '{s}': expected [CONTROLLER:]/PATH"
        ));
    }
    Ok((ctrl.filter(|c| !c.is_empty()), path.to_string()))
}

/// `--ext-mount-map KEY:VAL` (`auto` is taken apart).
/// An empty VAL is taken, as CRIU takes it (LXC sends `console:` for a container without a
/// console); a mount that needs it then finds no mapping.
pub fn parse_ext_mount_map(s: &str) -> Result<(String, String), String> {
    s.split_once(':')
        .filter(|(k, _)| !k.is_empty())
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("bad --ext-mount-map '{s}': expected KEY:VAL"))
}

/// "" or "INODE[,INODE...]" (socket inodes, as `ls -l /proc/PID/fd` shows them).
pub fn parse_inodes(s: &str) -> Result<Vec<u32>, String> {
    s.split(',')
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| format!("bad socket inode '{v}': expected a number"))
        })
        .collect()
}

/// SIZE[K|M|G], as CRIU's --ghost-limit.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'K' | 'k')) => (&s[..i], 1u64 << 10),
        Some((i, 'M' | 'm')) => (&s[..i], 1 << 20),
        Some((i, 'G' | 'g')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("bad size '{s}': expected a number with an optional K, M or G"))
}

/// `stasis --help`: the commands, then the options by what stasis does with them.
pub fn usage() -> String {
    let mut s = String::from(
        "Usage:\n  stasis dump -t PID [-D DIR] [OPTIONS]\n  stasis restore [-D DIR] [OPTIONS]\n  \
         stasis check [--feature NAME]\n  stasis swrk FD   (CRIU's RPC on a SOCK_SEQPACKET fd, as runc and podman use it)\n  \
         stasis -V|--version\n\nCheckpoint/restore of Linux process trees with CRIU's command \
         line. Every CRIU option is\nread; options may come before or after the command.\n",
    );
    let name = |sp: &opts::Spec| {
        let mut n = match sp.short {
            Some(c) => format!("-{c}|--{}", sp.long),
            None => format!("--{}", sp.long),
        };
        match sp.arg {
            opts::HasArg::Required => n.push_str(" ARG"),
            opts::HasArg::Optional => n.push_str("[=ARG]"),
            opts::HasArg::No => {}
        }
        n
    };
    let section = |title: &str, pick: &dyn Fn(&Support) -> Option<&'static str>| {
        let mut out = format!("\n{title}:\n");
        for sp in opts::OPTIONS {
            if let Some(text) = pick(&sp.support) {
                out.push_str(&format!("  {:<28} {text}\n", name(sp)));
            }
        }
        out
    };
    s += &section("Implemented", &|s| match s {
        Support::Yes(t) => Some(t),
        _ => None,
    });
    s += &section("Accepted for some values", &|s| match s {
        Support::Some(t) => Some(t),
        _ => None,
    });
    s += &section("Accepted without effect", &|s| match s {
        Support::NoOp(t) => Some(t),
        _ => None,
    });
    let refused: Vec<String> = opts::OPTIONS
        .iter()
        .filter(|sp| sp.support == Support::No)
        .map(|sp| format!("--{}", sp.long))
        .collect();
    s += "\nNot supported yet (refused by name; the --no- form of a boolean is accepted):\n";
    for line in refused.chunks(5) {
        s += &format!("  {}\n", line.join(" "));
    }
    s
}
