//! `stasis swrk FD`: CRIU's RPC service, the way runc, crun, youki, podman and go-criu reach
//! CRIU. FD is a SOCK_SEQPACKET socket; one datagram is one packed `criu_req` (from the
//! caller) or `criu_resp` (from us), with no length prefix.
//!
//! One request is served, more while the caller sets `keep_open`, as CRIU does. DUMP and
//! RESTORE may exchange NOTIFY messages before their answer: we send `criu_resp{NOTIFY,
//! notify{script, pid}}` at each action-script point and wait for `criu_req{NOTIFY,
//! notify_success}`; a failure answer fails the dump or restore, which is undone as any other.
//! The options are folded into the command line's (see `args`), so both refuse the same things
//! by the same names. Errors go back in `cr_errmsg` (one line) and to the log.

mod args;

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::process::ExitCode;
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{self, MsgFlags};
use prost::Message;
use stasis::images::pb::{
    CriuDumpResp, CriuFeatures, CriuNotify, CriuReq, CriuReqType, CriuResp, CriuRestoreResp,
    CriuVersion,
};
use stasis::notify::{Notifier, Notify, Script};

use crate::cli::{self, Config};

/// Largest request we take: runc's own reply buffer is 40 KiB, and requests are smaller.
const MAX_MSG: usize = 1 << 20;

/// The socket to the caller.
struct Channel {
    sock: OwnedFd,
}

impl Channel {
    /// The next request, or None once the caller has closed its end.
    fn recv(&self) -> Result<Option<CriuReq>> {
        let fd = self.sock.as_raw_fd();
        let mut probe = [0u8; 1];
        let len = socket::recv(fd, &mut probe, MsgFlags::MSG_PEEK | MsgFlags::MSG_TRUNC)
            .context("cannot read the RPC socket")?;
        if len == 0 {
            // Eat the empty datagram, or EOF: either way nothing more comes.
            let _ = socket::recv(fd, &mut probe, MsgFlags::empty());
            return Ok(None);
        }
        if len > MAX_MSG {
            bail!("RPC request of {len} bytes is larger than {MAX_MSG}");
        }
        let mut buf = vec![0u8; len];
        let n =
            socket::recv(fd, &mut buf, MsgFlags::empty()).context("cannot read the RPC socket")?;
        let req = CriuReq::decode(&buf[..n]).context("the RPC request is not a criu_req")?;
        Ok(Some(req))
    }

    fn send(&self, resp: &CriuResp) -> Result<()> {
        let buf = resp.encode_to_vec();
        socket::send(self.sock.as_raw_fd(), &buf, MsgFlags::MSG_NOSIGNAL)
            .context("cannot answer on the RPC socket")?;
        Ok(())
    }

    /// [`Channel::send`] with `fd` passed along (SCM_RIGHTS), as CRIU sends the
    /// orphan-pts-master notification.
    fn send_with_fd(&self, resp: &CriuResp, fd: std::os::fd::BorrowedFd<'_>) -> Result<()> {
        let buf = resp.encode_to_vec();
        let fds = [fd.as_raw_fd()];
        let cmsg = [socket::ControlMessage::ScmRights(&fds)];
        socket::sendmsg::<()>(
            self.sock.as_raw_fd(),
            &[std::io::IoSlice::new(&buf)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .context("cannot send on the RPC socket")?;
        Ok(())
    }
}

/// Tells the caller at each action-script point and waits for its answer.
struct RpcNotify {
    ch: Mutex<Channel>,
}

impl Notify for RpcNotify {
    fn notify(&self, script: Script, pid: Option<u32>) -> Result<(), String> {
        self.exchange(script, pid, None)
    }

    fn notify_fd(&self, script: Script, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
        self.exchange(script, None, Some(fd))
    }
}

impl RpcNotify {
    /// One notification and the caller's answer.
    fn exchange(
        &self,
        script: Script,
        pid: Option<u32>,
        fd: Option<std::os::fd::BorrowedFd<'_>>,
    ) -> Result<(), String> {
        let ch = self
            .ch
            .lock()
            .map_err(|_| "RPC channel poisoned".to_string())?;
        let resp = CriuResp {
            r#type: CriuReqType::Notify as i32,
            success: true,
            notify: Some(CriuNotify {
                script: Some(script.name().to_string()),
                pid: pid.map(|p| p as i32),
            }),
            ..Default::default()
        };
        match fd {
            Some(fd) => ch.send_with_fd(&resp, fd),
            None => ch.send(&resp),
        }
        .map_err(|e| format!("{e:#}"))?;
        match ch.recv().map_err(|e| format!("{e:#}"))? {
            Some(r) if r.r#type == CriuReqType::Notify as i32 => {
                if r.notify_success() {
                    Ok(())
                } else {
                    Err("the caller answered with a failure".into())
                }
            }
            Some(r) => Err(format!(
                "the caller answered a notification with a request of type {}",
                type_name(r.r#type)
            )),
            None => Err("the caller closed the RPC socket".into()),
        }
    }
}

fn type_name(t: i32) -> String {
    CriuReqType::try_from(t)
        .map(|t| t.as_str_name().to_string())
        .unwrap_or_else(|_| format!("#{t}"))
}

/// Serves requests on `fd` until the caller is done; our exit status is the last request's.
pub fn serve(fd: i32) -> Result<ExitCode> {
    // SAFETY: fstat of an fd number into a local buffer; no memory is shared.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    if unsafe { libc::fstat(fd, &mut st) } != 0 || st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        bail!("swrk: fd {fd} is not a socket");
    }
    // SAFETY: the caller handed us this fd (CRIU's swrk contract); it is ours from here on.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let peer = socket::getsockopt(&sock, socket::sockopt::PeerCredentials)
        .context("swrk: cannot tell who is on the other end of the socket")?
        .pid();
    let ch = Channel { sock };
    let mut logging = false;
    let mut ok = true;
    while let Some(req) = ch.recv()? {
        let keep_open = req.keep_open();
        let resp = answer(&ch, &req, peer, &mut logging);
        ok = resp.success;
        if !ok {
            log::error!("{}", resp.cr_errmsg());
        }
        ch.send(&resp)?;
        if !keep_open {
            break;
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn failure(t: i32, errno: i32, msg: String) -> CriuResp {
    CriuResp {
        r#type: t,
        success: false,
        cr_errno: Some(errno),
        cr_errmsg: Some(msg),
        ..Default::default()
    }
}

/// The errno a failure carries, if an OS error is among its causes.
fn errno_of(e: &anyhow::Error) -> i32 {
    e.chain()
        .find_map(|c| c.downcast_ref::<std::io::Error>()?.raw_os_error())
        .unwrap_or(0)
}

fn answer(ch: &Channel, req: &CriuReq, peer: i32, logging: &mut bool) -> CriuResp {
    let t = req.r#type;
    let ok = |r: CriuResp| CriuResp {
        r#type: t,
        success: true,
        ..r
    };
    match CriuReqType::try_from(t) {
        Ok(CriuReqType::Version) => ok(CriuResp {
            version: Some(version()),
            ..Default::default()
        }),
        Ok(CriuReqType::FeatureCheck) => {
            // Only what was asked is answered; none of these is supported yet.
            let asked = req.features.unwrap_or_default();
            ok(CriuResp {
                features: Some(CriuFeatures {
                    mem_track: asked.mem_track.map(|_| false),
                    lazy_pages: asked.lazy_pages.map(|_| false),
                    pidfd_store: asked.pidfd_store.map(|_| false),
                }),
                ..Default::default()
            })
        }
        Ok(CriuReqType::Check) => {
            let problems = crate::check::problems();
            if problems.is_empty() {
                ok(CriuResp::default())
            } else {
                failure(t, 0, problems.join("; "))
            }
        }
        Ok(kind @ (CriuReqType::Dump | CriuReqType::Restore)) => {
            match dump_or_restore(ch, req, kind, peer, logging) {
                Ok(r) => ok(r),
                Err(e) => failure(t, errno_of(&e), format!("{e:#}")),
            }
        }
        Ok(other) => failure(
            t,
            libc::EOPNOTSUPP,
            format!(
                "{} requests are not supported yet",
                other.as_str_name().to_lowercase().replace('_', "-")
            ),
        ),
        Err(_) => failure(t, libc::EINVAL, format!("unknown RPC request type {t}")),
    }
}

/// CRIU's version as runc and podman read it (they check major*10000+minor*100+sublevel); the
/// name says who answers.
fn version() -> CriuVersion {
    let (major, minor) = crate::CRIU_COMPAT_VERSION
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .unwrap_or((4, 2));
    CriuVersion {
        major_number: major,
        minor_number: minor,
        sublevel: Some(0),
        name: Some(format!("stasis {}", env!("CARGO_PKG_VERSION"))),
        ..Default::default()
    }
}

/// The request's options as a parsed command line, plus what only the RPC carries.
fn config_of(req: &CriuReq, command: &str, peer: i32) -> Result<(Config, args::Mapped)> {
    let opts = req
        .opts
        .as_ref()
        .context("the request carries no options")?;
    let mut mapped = args::map(command, opts, peer).map_err(anyhow::Error::msg)?;
    let mut args = mapped.args.clone();
    if let Some(path) = opts.config_file.as_deref().filter(|p| !p.is_empty()) {
        match std::fs::read_to_string(path) {
            Ok(text) => {
                mapped
                    .notes
                    .push(format!("options in {path} override the RPC's"));
                args.extend(args::config_args(&text));
            }
            // runc names /etc/criu/runc.conf whether it exists or not.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read config file {path}")),
        }
    }
    let mut cfg = cli::parse(&args).map_err(anyhow::Error::msg)?;
    cfg.notes.extend(mapped.notes.iter().cloned());
    Ok((cfg, mapped))
}

/// Where the request's log goes and how much, before the rest of its options are read.
fn log_config(o: &stasis::images::pb::CriuOpts, peer: i32) -> Option<Config> {
    let images = if o.images_dir_fd >= 0 {
        args::caller_fd_path(peer, o.images_dir_fd)
    } else {
        o.images_dir.clone()?
    };
    let mut c = Config {
        images_dir: images.into(),
        work_dir: o
            .work_dir_fd
            .filter(|&fd| fd >= 0)
            .map(|fd| args::caller_fd_path(peer, fd).into()),
        log_file: o.log_file.as_ref().map(Into::into),
        verbosity: o.log_level().clamp(0, 4) as u8,
        ..Default::default()
    };
    if o.log_to_stderr() {
        c.log_file = None;
    }
    Some(c)
}

fn notifier(ch: &Channel, on: bool) -> Result<Notifier> {
    if !on {
        return Ok(Notifier::default());
    }
    let sock = ch
        .sock
        .as_fd()
        .try_clone_to_owned()
        .context("cannot dup the RPC socket")?;
    Ok(Notifier::new(Arc::new(RpcNotify {
        ch: Mutex::new(Channel { sock }),
    })))
}

fn dump_or_restore(
    ch: &Channel,
    req: &CriuReq,
    kind: CriuReqType,
    peer: i32,
    logging: &mut bool,
) -> Result<CriuResp> {
    let dumping = kind == CriuReqType::Dump;
    if !*logging {
        // Single-threaded until here: a dump's tracer is split off now (see dump::abort).
        stasis::dump::abort::install(dumping);
        // The log first, so that a refused option is in it too: runc shows the caller the
        // log's error lines, not cr_errmsg.
        if let Some(early) = req.opts.as_ref().and_then(|o| log_config(o, peer)) {
            if !dumping {
                crate::check_restore_dir(&early)?;
            }
            crate::setup_log(&early)?;
            *logging = true;
        }
    }
    log::debug!("RPC {} options: {:?}", kind.as_str_name(), req.opts);
    let (cfg, mapped) = config_of(req, if dumping { "dump" } else { "restore" }, peer)?;
    for n in &cfg.notes {
        log::info!("{n}");
    }
    if !dumping {
        crate::check_restore_dir(&cfg)?;
    }
    log::info!("RPC {} from pid {peer}", kind.as_str_name());
    let notify = notifier(ch, mapped.notify)?;
    if dumping {
        let mut opts = crate::dump_options(&cfg)?;
        opts.notify = notify;
        opts.orphan_pts_master = mapped.orphan_pts_master;
        let pid = opts.pid;
        stasis::dump::dump(&opts).with_context(|| format!("dump of pid {pid} failed"))?;
        Ok(CriuResp {
            dump: Some(CriuDumpResp {
                restored: Some(false),
            }),
            ..Default::default()
        })
    } else {
        let mut opts = crate::restore_options(&cfg);
        opts.notify = notify;
        opts.sibling = mapped.sibling;
        opts.orphan_pts_master = mapped.orphan_pts_master;
        let r = stasis::restore::restore(&opts)
            .with_context(|| format!("restore from {} failed", cfg.images_dir.display()))?;
        Ok(CriuResp {
            restore: Some(CriuRestoreResp {
                pid: r.root_pid as i32,
            }),
            ..Default::default()
        })
    }
}
