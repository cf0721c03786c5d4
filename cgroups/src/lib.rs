//! cgroups for stasis: the freezer (v1 `freezer.state`, v2 `cgroup.freeze`), the tasks a
//! cgroup holds, and pure parsers of `/proc/PID/cgroup` and of the cgroup mounts in
//! `/proc/PID/mountinfo`.
//!
//! Written by hand rather than on cgroups-rs (0.5.1), which was weighed first. It does not fit:
//! - it pulls in nix 0.25 (the workspace is on 0.30) and zbus (a D-Bus stack), neither
//!   optional, for what is a few file reads and writes here;
//! - its v2 freezer state reads `cgroup.freeze`, the state asked for, not `cgroup.events`'
//!   `frozen 1`, which is the only sign that every task has stopped;
//! - its v2 hierarchy is fixed at `/sys/fs/cgroup`, and `auto()` picks v1 on a hybrid machine,
//!   so the unified hierarchy at `/sys/fs/cgroup/unified` cannot be reached. runc and podman
//!   hand us a path (`--freeze-cgroup`), which may be either kind.
//!
//! So [`Freezer`] takes the path it is given and tells v1 from v2 by the files in it.

mod freezer;
pub mod membership;
pub mod parse;
pub mod props;

use std::path::PathBuf;

pub use freezer::{Freezer, Version};
pub use parse::FreezerState;

/// What went wrong with a cgroup; every variant names the cgroup or file.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot {what} {path}")]
    Io {
        path: PathBuf,
        /// What was being done: "read", "write FROZEN to", "list"...
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a freezer cgroup: it has neither freezer.state (v1) nor cgroup.freeze and cgroup.events (v2)")]
    NotFreezer { path: PathBuf },
    #[error("cannot parse {path}")]
    Parse {
        path: PathBuf,
        #[source]
        source: parse::ParseError,
    },
    #[error("{path}: unexpected content {text:?}")]
    BadState { path: PathBuf, text: String },
    #[error("cgroup {path} did not freeze within {waited_ms} ms: it is {state} (thawed again)")]
    FreezeTimeout {
        path: PathBuf,
        state: FreezerState,
        waited_ms: u128,
    },
}
