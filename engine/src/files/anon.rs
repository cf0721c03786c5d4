//! What the anon-inode kinds (eventfd, timerfd, signalfd, epoll, inotify) and memfd share:
//! their error, fdinfo field lookup, and taking ownership of a new fd.

use std::collections::HashMap;

/// fdinfo of a special fd did not have what we need.
#[derive(Debug, thiserror::Error)]
pub enum AnonFdError {
    #[error("fdinfo of {kind} fd: missing or bad '{field}'")]
    Field {
        kind: &'static str,
        field: &'static str,
    },
    #[error("cannot create {kind}")]
    Create {
        kind: &'static str,
        #[source]
        source: std::io::Error,
    },
}

pub(crate) fn field<'a>(
    extra: &'a HashMap<String, String>,
    kind: &'static str,
    name: &'static str,
) -> Result<&'a str, AnonFdError> {
    extra
        .get(name)
        .map(|s| s.trim())
        .ok_or(AnonFdError::Field { kind, field: name })
}

/// The error of making (or setting up) a `kind` fd.
pub(crate) fn create_err<E: Into<std::io::Error>>(
    kind: &'static str,
) -> impl FnOnce(E) -> AnonFdError {
    move |source| AnonFdError::Create {
        kind,
        source: source.into(),
    }
}

/// The restore error of an anon-inode kind's file `id`.
pub(crate) fn restore_err(id: u32) -> impl FnOnce(AnonFdError) -> crate::restore::RestoreError {
    move |source| crate::restore::RestoreError::AnonFd { id, source }
}

/// The dump error of an anon-inode fd whose fdinfo cannot be read.
pub(crate) fn dump_err(pid: u32, fd: i32) -> impl FnOnce(AnonFdError) -> super::FilesError {
    move |source| super::FilesError::Anon { pid, fd, source }
}
