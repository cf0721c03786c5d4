//! `stasis`: checkpoint/restore with CRIU's command line, so tools that run `criu` can run us.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use stasis::dump::{self, DumpOptions};
use stasis::restore::{self, InheritFd, RestoreOptions};

/// The CRIU release whose command line, images and RPC stasis follows.
const CRIU_COMPAT_VERSION: &str = "4.2";

#[derive(Parser)]
#[command(
    name = "stasis",
    about = "Checkpoint/restore of Linux process trees, compatible with CRIU",
    disable_version_flag = true
)]
struct Cli {
    /// Print the version (CRIU-compatible output) and exit.
    #[arg(short = 'V', long = "version", global = true)]
    version: bool,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Checkpoint a process tree into image files.
    Dump(DumpArgs),
    /// Restore a process tree from image files.
    Restore(RestoreArgs),
    /// Check that this kernel has what stasis needs.
    Check(CommonArgs),
    /// CRIU's RPC service mode (`criu swrk <fd>`), used by runc and podman.
    Swrk { fd: i32 },
}

#[derive(Args, Clone)]
struct CommonArgs {
    /// Images directory.
    #[arg(short = 'D', long = "images-dir", default_value = ".")]
    images_dir: PathBuf,
    /// Working directory for logs and stats (default: the images directory).
    #[arg(short = 'W', long = "work-dir")]
    work_dir: Option<PathBuf>,
    /// Log file, relative to the work directory (default: standard error).
    #[arg(short = 'o', long = "log-file")]
    log_file: Option<PathBuf>,
    /// Verbosity: -v[NUM] (0 none, 1 errors, 2 warnings, 3 info, 4 debug) or -vvv.
    #[arg(short = 'v', long = "verbosity", num_args = 0..=1, default_missing_value = "v")]
    verbosity: Vec<String>,
    /// Allow a terminal and session that lead outside the tree.
    #[arg(short = 'j', long = "shell-job")]
    shell_job: bool,
    /// Checkpoint/restore file locks (flock, POSIX, OFD).
    #[arg(short = 'l', long = "file-locks")]
    file_locks: bool,
    /// Checkpoint/restore established TCP connections (TCP_REPAIR).
    #[arg(long = "tcp-established")]
    tcp_established: bool,
    /// Unix sockets with a peer outside the tree: datagram sockets connected to a named peer;
    /// with =INODE[,INODE...], also those sockets whatever their type (restore them with
    /// --inherit-fd fd[N]:socket:[INODE]).
    #[arg(
        long = "ext-unix-sk",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "",
        value_parser = parse_inodes
    )]
    ext_unix_sk: Option<SocketInodes>,
}

#[derive(Args)]
struct DumpArgs {
    /// PID of the root of the tree.
    #[arg(short = 't', long = "tree")]
    pid: u32,
    /// Leave the tree running after the dump.
    #[arg(short = 'R', long = "leave-running", action = clap::ArgAction::Count)]
    leave_running: u8,
    /// Largest file deleted while open whose content is saved (SIZE[K|M|G]; default 1M).
    #[arg(long = "ghost-limit", value_parser = parse_size)]
    ghost_limit: Option<u64>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Args)]
struct RestoreArgs {
    /// Detach after restore instead of waiting for the root task.
    #[arg(short = 'd', long = "restore-detached")]
    detach: bool,
    /// Write the root task's PID to this file.
    #[arg(long = "pidfile")]
    pidfile: Option<PathBuf>,
    /// Use our fd N for the file the images call KEY: fd[N]:KEY.
    #[arg(long = "inherit-fd")]
    inherit_fd: Vec<InheritFd>,
    /// Restore established TCP connections as closed sockets.
    #[arg(long = "tcp-close")]
    tcp_close: bool,
    #[command(flatten)]
    common: CommonArgs,
}

/// Socket inodes given to `--ext-unix-sk=` (a newtype: clap would take a Vec as many values).
#[derive(Clone, Debug, Default)]
struct SocketInodes(Vec<u32>);

/// "" or "INODE[,INODE...]" (socket inodes, as `ls -l /proc/PID/fd` shows them).
fn parse_inodes(s: &str) -> Result<SocketInodes, String> {
    s.split(',')
        .filter(|v| !v.is_empty())
        .map(|v| {
            v.parse()
                .map_err(|_| format!("bad socket inode '{v}': expected a number"))
        })
        .collect::<Result<Vec<u32>, String>>()
        .map(SocketInodes)
}

fn parse_size(s: &str) -> Result<u64, String> {
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

fn parse_level(v: &[String]) -> Result<u8> {
    let mut level = 2u8;
    for s in v {
        if let Ok(n) = s.parse::<u8>() {
            level = n;
        } else if !s.is_empty() && s.chars().all(|c| c == 'v') {
            level = level.max(2) + s.len() as u8;
        } else {
            bail!("bad verbosity '{s}': use -v[NUM] or -vvv");
        }
    }
    Ok(level.min(4))
}

/// Set when the log goes to a file, so errors are written there and to stderr once each.
static LOG_TO_FILE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

struct Logger {
    out: Mutex<Box<dyn Write + Send>>,
    level: log::LevelFilter,
}

impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }
    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            if let Ok(mut o) = self.out.lock() {
                let _ = writeln!(o, "({}) {}: {}", std::process::id(), r.level(), r.args());
            }
        }
    }
    fn flush(&self) {
        if let Ok(mut o) = self.out.lock() {
            let _ = o.flush();
        }
    }
}

fn setup_log(c: &CommonArgs) -> Result<()> {
    let level = match parse_level(&c.verbosity)? {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let out: Box<dyn Write + Send> = match &c.log_file {
        Some(f) if f.as_os_str() == "-" => Box::new(std::io::stderr()),
        Some(f) => {
            let work = c.work_dir.as_deref().unwrap_or(&c.images_dir);
            let path = if f.is_absolute() {
                f.clone()
            } else {
                work.join(f)
            };
            LOG_TO_FILE.store(true, std::sync::atomic::Ordering::Relaxed);
            Box::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("cannot create log file {}", path.display()))?,
            )
        }
        None => Box::new(std::io::stderr()),
    };
    let logger = Box::leak(Box::new(Logger {
        out: Mutex::new(out),
        level,
    }));
    log::set_logger(logger).map_err(|e| anyhow::anyhow!("{e}"))?;
    log::set_max_level(level);
    Ok(())
}

fn run_dump(a: DumpArgs) -> Result<ExitCode> {
    setup_log(&a.common)?;
    let mut opts = DumpOptions::new(a.pid, &a.common.images_dir);
    opts.work_dir = a.common.work_dir.clone();
    opts.leave_running = a.leave_running > 0;
    opts.shell_job = a.common.shell_job;
    opts.tcp_established = a.common.tcp_established;
    opts.ext_unix_sk = a.common.ext_unix_sk.is_some();
    opts.ext_unix_sk_inodes = a.common.ext_unix_sk.clone().unwrap_or_default().0;
    opts.file_locks = a.common.file_locks;
    if let Some(limit) = a.ghost_limit {
        opts.ghost_limit = limit;
    }
    let stats = dump::dump(&opts).with_context(|| format!("dump of pid {} failed", a.pid))?;
    log::info!(
        "dumped {} tasks ({} threads): frozen {} us, {} pages",
        stats.tasks,
        stats.threads,
        stats.frozen_time_us,
        stats.pages_written
    );
    Ok(ExitCode::SUCCESS)
}

fn run_restore(a: RestoreArgs) -> Result<ExitCode> {
    setup_log(&a.common)?;
    let opts = RestoreOptions {
        images_dir: a.common.images_dir.clone(),
        work_dir: a.common.work_dir.clone(),
        shell_job: a.common.shell_job,
        inherit_fds: a.inherit_fd.clone(),
        tcp_established: a.common.tcp_established,
        tcp_close: a.tcp_close,
    };
    let r = restore::restore(&opts)
        .with_context(|| format!("restore from {} failed", a.common.images_dir.display()))?;
    if let Some(p) = &a.pidfile {
        let path = if p.is_absolute() {
            p.clone()
        } else {
            a.common
                .work_dir
                .as_deref()
                .unwrap_or(Path::new("."))
                .join(p)
        };
        std::fs::write(&path, format!("{}", r.root_pid))
            .with_context(|| format!("cannot write pidfile {}", path.display()))?;
    }
    log::info!(
        "restored tree rooted at {} in {} us",
        r.root_pid,
        r.restore_time_us
    );
    if a.detach {
        return Ok(ExitCode::SUCCESS);
    }
    // Like CRIU without -d: stay the parent and exit as the root task does.
    let mut status = 0;
    // SAFETY: waitpid on our own child.
    unsafe { libc::waitpid(r.root_pid as libc::pid_t, &mut status, 0) };
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok(ExitCode::from(code as u8))
}

fn run_check(c: CommonArgs) -> Result<ExitCode> {
    setup_log(&c)?;
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
    if problems.is_empty() {
        println!("Looks good.");
        Ok(ExitCode::SUCCESS)
    } else {
        for p in problems {
            eprintln!("Error: {p}");
        }
        Ok(ExitCode::FAILURE)
    }
}

fn main() -> ExitCode {
    // First, before any thread: SIGTERM/SIGINT abort a dump cleanly (see stasis::dump::abort).
    stasis::dump::abort::install();
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            e.exit()
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        Err(e) => {
            // One line, like every other error: clap's first paragraph, joined.
            let text = e.render().to_string();
            let para: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let msg = para.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            eprintln!("Error: {msg} (see 'stasis --help')");
            return ExitCode::FAILURE;
        }
    };
    if cli.version {
        println!("Version: {CRIU_COMPAT_VERSION}");
        println!("stasis {}", env!("CARGO_PKG_VERSION"));
        return ExitCode::SUCCESS;
    }
    let res = match cli.cmd {
        Some(Cmd::Dump(a)) => run_dump(a),
        Some(Cmd::Restore(a)) => run_restore(a),
        Some(Cmd::Check(c)) => run_check(c),
        Some(Cmd::Swrk { fd }) => Err(anyhow::anyhow!(
            "swrk (RPC on fd {fd}) is not implemented yet; use the command line"
        )),
        None => Err(anyhow::anyhow!("no command given; try 'stasis --help'")),
    };
    match res {
        Ok(code) => code,
        Err(e) => {
            if LOG_TO_FILE.load(std::sync::atomic::Ordering::Relaxed) {
                log::error!("{e:#}");
            }
            eprintln!("Error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(args: &[&str]) -> Result<Option<Vec<u32>>, String> {
        let mut argv = vec!["stasis", "dump", "-t", "1"];
        argv.extend_from_slice(args);
        match Cli::try_parse_from(argv).map_err(|e| e.to_string())?.cmd {
            Some(Cmd::Dump(d)) => Ok(d.common.ext_unix_sk.map(|s| s.0)),
            _ => Err("not a dump".into()),
        }
    }

    #[test]
    fn ext_unix_sk_takes_an_optional_list_of_inodes() {
        assert_eq!(ext(&[]), Ok(None));
        assert_eq!(ext(&["--ext-unix-sk"]), Ok(Some(vec![])));
        assert_eq!(ext(&["--ext-unix-sk=12,34"]), Ok(Some(vec![12, 34])));
        assert!(ext(&["--ext-unix-sk=x"])
            .unwrap_err()
            .contains("bad socket inode 'x'"));
        // Without '=', the next word is not taken as inodes.
        assert!(ext(&["--ext-unix-sk", "12"]).is_err());
    }
}
