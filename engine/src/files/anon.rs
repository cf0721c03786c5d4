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

/// The [`FileKind`](super::kind::FileKind) of an anon-inode file whose whole state is one
/// entry read from fdinfo (`$entry(id, flags, fdinfo's keys)`) and made again by `$create`:
/// eventfd, timerfd, signalfd. One line declares such a kind.
macro_rules! fdinfo_kind {
    ($kind:ident, $name:literal, $class:ident, $ty:ident, $field:ident, $entry:path, $create:path) => {
        #[doc = concat!("The ", $name, " kind.")]
        pub struct $kind;

        impl super::kind::FileKind for $kind {
            fn name(&self) -> &'static str {
                $name
            }

            fn claims(&self, fd: &super::kind::Fd, _cx: &crate::dump::fds::DumpCx) -> bool {
                *fd.class == super::FdKind::$class
            }

            fn dump(
                &self,
                cx: &mut crate::dump::fds::DumpCx,
                fd: &super::kind::Fd,
            ) -> Result<(crate::images::pb::FdTypes, u32), crate::dump::DumpError> {
                use crate::images::pb;
                let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
                    let e = $entry(id, fd.flags(), &fd.info.extra)
                        .map_err(super::anon::dump_err(fd.pid, fd.fd))?;
                    Ok(pb::FileEntry {
                        r#type: pb::FdTypes::$ty as i32,
                        id,
                        $field: Some(e),
                        ..Default::default()
                    })
                })?;
                Ok((pb::FdTypes::$ty, id))
            }

            fn owns(
                &self,
                entry: &crate::images::pb::FileEntry,
                _img: &crate::restore::DumpImage,
            ) -> bool {
                entry.$field.is_some()
            }

            fn open(
                &self,
                _cx: &mut super::kind::OpenCx,
                entry: &crate::images::pb::FileEntry,
            ) -> Result<Option<std::os::fd::OwnedFd>, crate::restore::RestoreError> {
                let e = entry
                    .$field
                    .as_ref()
                    .expect(concat!("owned: ", $name, " is set"));
                $create(e)
                    .map(Some)
                    .map_err(super::anon::restore_err(entry.id))
            }
        }
    };
}
pub(crate) use fdinfo_kind;

/// fdinfo's keys as the parsers get them, for the kinds' unit tests.
#[cfg(test)]
pub(crate) fn fdinfo_keys(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}
