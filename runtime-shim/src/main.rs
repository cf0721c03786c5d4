//! `stasis`: checkpoint/restore with CRIU's command line, so tools that run `criu` can run us.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Mutex;

use anyhow::{Context, Result};
use stasis::dump::{self, DumpOptions};
use stasis::restore::{self, RestoreOptions};

mod check;
mod cli;
mod opts;
mod rpc;
#[cfg(test)]
mod tests;

use cli::{Command, Config};

/// The CRIU release whose command line, images and RPC stasis follows.
const CRIU_COMPAT_VERSION: &str = "4.2";

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
                // CRIU's level words: runc and podman pick a failed dump's cause out of the
                // log by the lines that contain "Error".
                let level = match r.level() {
                    log::Level::Error => "Error",
                    log::Level::Warn => "Warn",
                    log::Level::Info => "Info",
                    log::Level::Debug => "Debug",
                    log::Level::Trace => "Trace",
                };
                let _ = writeln!(o, "({}) {level}: {}", std::process::id(), r.args());
            }
        }
    }
    fn flush(&self) {
        if let Ok(mut o) = self.out.lock() {
            let _ = o.flush();
        }
    }
}

fn setup_log(c: &Config) -> Result<()> {
    let level = match c.verbosity {
        0 => log::LevelFilter::Off,
        1 => log::LevelFilter::Error,
        2 => log::LevelFilter::Warn,
        3 => log::LevelFilter::Info,
        _ => log::LevelFilter::Debug,
    };
    let out: Box<dyn Write + Send> = match &c.log_file {
        Some(f) if f.as_os_str() == "-" => Box::new(std::io::stderr()),
        Some(f) => {
            let path = work_path(c, f);
            LOG_TO_FILE.store(true, std::sync::atomic::Ordering::Relaxed);
            Box::new(
                stasis::private::create_output(f, &path)
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
    for n in &c.notes {
        log::info!("{n}");
    }
    if let Ok(mut v) = PENDING_WARNINGS.lock() {
        for w in v.drain(..) {
            log::warn!("{w}");
        }
    }
    Ok(())
}

/// A path given relative to the work directory (default: the images directory), as CRIU
/// takes the log file and pidfile.
fn work_path(c: &Config, f: &Path) -> PathBuf {
    let work = c.work_dir.as_deref().unwrap_or(&c.images_dir);
    if f.is_absolute() {
        f.to_path_buf()
    } else {
        work.join(f)
    }
}

/// The environment variable that lets a restore use an images dir others can write (CRIU's
/// zdtm makes them 0777 for its unprivileged tests); see docs/security.md.
const ALLOW_SHARED: &str = "STASIS_ALLOW_SHARED_IMAGES_DIR";

fn allow_shared_images_dir() -> bool {
    std::env::var_os(ALLOW_SHARED).is_some_and(|v| v == "1")
}

/// A warning for the log, which does not exist yet when it is decided.
fn log_later(msg: String) {
    if let Ok(mut v) = PENDING_WARNINGS.lock() {
        v.push(msg);
    }
}

static PENDING_WARNINGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// A page count as CRIU's --display-stats prints it: "N (0xN)".
fn count(n: u64) -> String {
    format!("{n} ({n:#x})")
}

/// The engine's options for the dump `c` asks for.
fn dump_options(c: &Config) -> Result<DumpOptions> {
    let pid = c
        .pid
        .context("dump needs the root of the tree: -t|--tree PID")?;
    let mut opts = DumpOptions::new(pid, &c.images_dir);
    opts.work_dir = c.work_dir.clone();
    opts.leave_running = c.leave_running;
    opts.shell_job = c.shell_job;
    opts.tcp_established = c.tcp_established;
    opts.tcp_close = c.tcp_close;
    opts.ext_unix_sk = c.ext_unix_sk.is_some();
    opts.ext_unix_sk_inodes = c.ext_unix_sk.clone().unwrap_or_default();
    opts.file_locks = c.file_locks;
    opts.link_remap = c.link_remap;
    opts.freeze_cgroup = c.freeze_cgroup.clone();
    if let Some(limit) = c.ghost_limit {
        opts.ghost_limit = limit;
    }
    opts.external_netns = c.external_netns.clone();
    opts.external_pidns = c.external_pidns.clone();
    opts.ext_mounts = c.ext_mounts.clone();
    opts.empty_netns = c.empty_netns;
    opts.enable_fs = c.enable_fs.clone();
    opts.external_ttys = c.external_ttys.clone();
    opts.auto_ext_mounts = c
        .auto_ext_mounts
        .then_some(stasis::ns::mnt_ext::AutoExternal {
            sharing: c.ext_sharing,
            masters: c.ext_masters,
        });
    if let Some(secs) = c.timeout {
        stasis::sys::ptrace::set_stop_timeout(std::time::Duration::from_secs(secs));
    }
    Ok(opts)
}

fn run_dump(c: &Config) -> Result<ExitCode> {
    let opts = dump_options(c)?;
    let pid = opts.pid;
    let stats = dump::dump(&opts).with_context(|| format!("dump of pid {pid} failed"))?;
    log::info!(
        "dumped {} tasks ({} threads): frozen {} us, {} pages, {} shared pages",
        stats.tasks,
        stats.threads,
        stats.frozen_time_us,
        stats.pages_written,
        stats.shpages_written
    );
    if c.display_stats {
        // CRIU's display_stats() layout (it leaves the shared pages out too).
        println!("Displaying dump stats:");
        println!("Freezing time: {} us", stats.freezing_time_us);
        println!("Frozen time: {} us", stats.frozen_time_us);
        println!("Memory dump time: {} us", stats.memdump_time_us);
        println!("Memory write time: {} us", stats.memwrite_time_us);
        println!("Memory pages scanned: {}", count(stats.pages_scanned));
        println!("Memory pages skipped from parent: {}", count(0));
        println!("Memory pages written: {}", count(stats.pages_written));
        println!("Lazy memory pages: {}", count(0));
    }
    Ok(ExitCode::SUCCESS)
}

/// The engine's options for the restore `c` asks for.
fn restore_options(c: &Config) -> RestoreOptions {
    RestoreOptions {
        images_dir: c.images_dir.clone(),
        work_dir: c.work_dir.clone(),
        shell_job: c.shell_job,
        inherit_fds: c.inherit_fds.clone(),
        tcp_established: c.tcp_established,
        tcp_close: c.tcp_close,
        skip_cpu_check: !c.cpu_cap_fpu,
        allow_shared_images_dir: allow_shared_images_dir(),
        veth_pairs: c.veth_pairs.clone(),
        macvlan_parents: c.macvlan_parents.clone(),
        join_ns: c.join_ns.clone(),
        // Relative to the work directory, where CRIU has already chdir'ed.
        pidfile: c.pidfile.clone(),
        root: c.root.clone(),
        ext_mounts: c.ext_mounts.clone(),
        auto_ext_mounts: c.auto_ext_mounts,
        empty_netns: c.empty_netns,
        enable_fs: c.enable_fs.clone(),
        sibling: c.restore_sibling,
        manage_cgroups: c
            .manage_cgroups
            .filter(|m| *m != stasis::cgroup::CgMode::Ignore),
        cgroup_roots: c.cgroup_roots.clone(),
        ..Default::default()
    }
}

/// Before the log file, which goes to the images dir by default: nothing is created in a
/// dir others can write to.
fn check_restore_dir(c: &Config) -> Result<()> {
    if allow_shared_images_dir() {
        log_later(format!(
            "{ALLOW_SHARED}=1: not checking who can write {}",
            c.images_dir.display()
        ));
    } else {
        restore::check_images_dir(&c.images_dir)?;
    }
    Ok(())
}

fn run_restore(c: &Config) -> Result<ExitCode> {
    let opts = restore_options(c);
    let r = restore::restore(&opts)
        .with_context(|| format!("restore from {} failed", c.images_dir.display()))?;
    log::info!(
        "restored tree rooted at {} in {} us",
        r.root_pid,
        r.restore_time_us
    );
    if c.display_stats {
        println!("Displaying restore stats:");
        println!("Pages compared: {}", count(0));
        println!("Pages skipped COW: {}", count(0));
        println!("Pages restored: {}", count(r.pages_restored));
        println!("Restore time: {} us", r.restore_time_us);
        println!("Forking time: {} us", r.forking_time_us);
    }
    if c.detach {
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

fn run(c: &Config) -> Result<ExitCode> {
    match c.command {
        Command::Help => {
            print!("{}", cli::usage());
            Ok(ExitCode::SUCCESS)
        }
        Command::Version => {
            println!("Version: {CRIU_COMPAT_VERSION}");
            println!("stasis {}", env!("CARGO_PKG_VERSION"));
            Ok(ExitCode::SUCCESS)
        }
        Command::Dump => {
            setup_log(c)?;
            run_dump(c)
        }
        Command::Restore => {
            check_restore_dir(c)?;
            setup_log(c)?;
            run_restore(c)
        }
        Command::Check => {
            setup_log(c)?;
            Ok(check::run(&c.features))
        }
        Command::Swrk(fd) => rpc::serve(fd),
    }
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cfg = match cli::parse(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("Error: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Before any thread (parsing starts none): SIGTERM/SIGINT abort a dump cleanly, and a
    // dump's tracer is split off from the process the caller may kill (stasis::dump::abort).
    // swrk installs it once it knows what it is asked (rpc::serve).
    if !matches!(cfg.command, Command::Swrk(_)) {
        stasis::dump::abort::install(matches!(cfg.command, Command::Dump));
    }
    for &fd in &cfg.close_fds {
        // SAFETY: the caller asked us to close this fd of ours (CRIU's --close).
        unsafe { libc::close(fd) };
    }
    let result = run(&cfg);
    // Tests only: how many fault points this run reached (see stasis::fault).
    stasis::fault::report();
    match result {
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
