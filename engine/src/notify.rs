//! CRIU's action scripts: the points of a dump and of a restore where the caller is told what
//! is about to happen, and may refuse it. runc answers them over CRIU's RPC (it locks its
//! network on `network-lock`, runs OCI hooks on `setup-namespaces`, learns the restored init's
//! pid on `post-restore`); the engine only says when, through [`Notify`].
//!
//! When each comes (CRIU's order, criu/action-scripts.c and cr-dump.c / cr-restore.c):
//! - dump: `pre-dump` before the tree is seized; `network-lock` once it is frozen, before any
//!   socket is read; `post-dump` once every image is written, before the tree is killed or
//!   let go; `network-unlock` when the tree runs on (`-R`, or the dump failed).
//! - restore: `pre-restore` before anything is made; `setup-namespaces` (with the root's pid)
//!   once the root task exists in its namespaces; `post-setup-namespaces` right after;
//!   `post-restore` (root pid) once every task is rebuilt, still stopped; `network-unlock`;
//!   `pre-resume` just before the tasks run; `post-resume` once they do. `orphan-pts-master`
//!   (with the fd) when the restore makes a pty whose master was outside the tree: the caller
//!   (runc) hands it to the container's console socket.

use std::sync::Arc;

/// One of CRIU's action scripts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Script {
    PreDump,
    NetworkLock,
    PostDump,
    NetworkUnlock,
    PreRestore,
    SetupNamespaces,
    PostSetupNamespaces,
    PostRestore,
    PreResume,
    PostResume,
    OrphanPtsMaster,
}

impl Script {
    /// The name CRIU gives it (the RPC's `notify.script`, the `CRTOOLS_SCRIPT_ACTION` value).
    pub fn name(self) -> &'static str {
        match self {
            Script::PreDump => "pre-dump",
            Script::NetworkLock => "network-lock",
            Script::PostDump => "post-dump",
            Script::NetworkUnlock => "network-unlock",
            Script::PreRestore => "pre-restore",
            Script::SetupNamespaces => "setup-namespaces",
            Script::PostSetupNamespaces => "post-setup-namespaces",
            Script::PostRestore => "post-restore",
            Script::PreResume => "pre-resume",
            Script::PostResume => "post-resume",
            Script::OrphanPtsMaster => "orphan-pts-master",
        }
    }
}

impl std::fmt::Display for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Whoever wants to be told: `Err(reason)` refuses, and the dump or restore fails (and is
/// undone) as CRIU's does when a script fails.
pub trait Notify {
    fn notify(&self, script: Script, pid: Option<u32>) -> Result<(), String>;

    /// A notification that hands the caller an fd (`orphan-pts-master`). Callers that
    /// cannot take one are told without it.
    fn notify_fd(&self, script: Script, fd: std::os::fd::BorrowedFd<'_>) -> Result<(), String> {
        let _ = fd;
        self.notify(script, None)
    }
}

/// An optional [`Notify`], cheap to clone into the options.
#[derive(Clone, Default)]
pub struct Notifier(Option<Arc<dyn Notify + Send + Sync>>);

impl std::fmt::Debug for Notifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Notifier(set)"
        } else {
            "Notifier(none)"
        })
    }
}

/// The caller refused an action script.
#[derive(Debug, thiserror::Error)]
#[error("the {script} notification failed: {reason}")]
pub struct NotifyError {
    pub script: Script,
    pub reason: String,
}

impl Notifier {
    pub fn new(n: Arc<dyn Notify + Send + Sync>) -> Self {
        Notifier(Some(n))
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    /// Tells the caller, if there is one; logs either way.
    pub fn run(&self, script: Script, pid: Option<u32>) -> Result<(), NotifyError> {
        let Some(n) = &self.0 else {
            return Ok(());
        };
        log::debug!("notify {script} (pid {pid:?})");
        n.notify(script, pid)
            .map_err(|reason| NotifyError { script, reason })
    }

    /// [`Notifier::run`] with an fd for the caller (`orphan-pts-master`).
    pub fn run_with_fd(
        &self,
        script: Script,
        fd: std::os::fd::BorrowedFd<'_>,
    ) -> Result<(), NotifyError> {
        let Some(n) = &self.0 else {
            return Ok(());
        };
        log::debug!("notify {script} with fd {fd:?}");
        n.notify_fd(script, fd)
            .map_err(|reason| NotifyError { script, reason })
    }

    /// For points past which nothing can be undone (the tasks already run): a refusal is
    /// logged, not returned, as CRIU does for post-resume.
    pub fn run_late(&self, script: Script, pid: Option<u32>) {
        if let Err(e) = self.run(script, pid) {
            log::warn!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Record(Mutex<Vec<String>>);
    impl Notify for Record {
        fn notify(&self, s: Script, pid: Option<u32>) -> Result<(), String> {
            self.0.lock().unwrap().push(format!("{s}:{pid:?}"));
            if s == Script::PostDump {
                return Err("no".into());
            }
            Ok(())
        }
    }

    #[test]
    fn unset_notifier_says_yes() {
        assert!(Notifier::default().run(Script::PreDump, None).is_ok());
    }

    #[test]
    fn refusal_names_the_script() {
        let r = Arc::new(Record(Mutex::new(Vec::new())));
        let n = Notifier::new(r.clone());
        n.run(Script::PreRestore, Some(7)).unwrap();
        let e = n.run(Script::PostDump, None).unwrap_err();
        assert_eq!(e.to_string(), "the post-dump notification failed: no");
        assert_eq!(
            *r.0.lock().unwrap(),
            ["pre-restore:Some(7)", "post-dump:None"]
        );
    }
}
