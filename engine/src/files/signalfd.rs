//! signalfd: its mask from fdinfo, and a new one with the same mask.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use super::anon::{self, AnonFdError};
use super::kind::{Fd, FileKind, OpenCx};
use super::FdKind;
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};

/// signalfd: the signal mask.
pub fn signalfd_entry(
    id: u32,
    flags: u32,
    extra: &HashMap<String, String>,
) -> Result<pb::SignalfdEntry, AnonFdError> {
    let mask =
        u64::from_str_radix(anon::field(extra, "signalfd", "sigmask")?, 16).map_err(|_| {
            AnonFdError::Field {
                kind: "signalfd",
                field: "sigmask",
            }
        })?;
    Ok(pb::SignalfdEntry {
        id,
        flags,
        fown: pb::FownEntry::default(),
        sigmask: mask,
    })
}

/// A new signalfd with the dumped mask.
pub fn create_signalfd(e: &pb::SignalfdEntry) -> Result<OwnedFd, AnonFdError> {
    use nix::sys::signalfd::SfdFlags;
    let mut flags = SfdFlags::SFD_CLOEXEC;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= SfdFlags::SFD_NONBLOCK;
    }
    crate::sys::anon::signalfd(e.sigmask, flags).map_err(anon::create_err("signalfd"))
}

/// The signalfd kind.
pub struct SignalFd;

impl FileKind for SignalFd {
    fn name(&self) -> &'static str {
        "signalfd"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::SignalFd
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
            Ok(pb::FileEntry {
                r#type: pb::FdTypes::Signalfd as i32,
                id,
                sgfd: Some(
                    signalfd_entry(id, fd.flags(), &fd.info.extra)
                        .map_err(anon::dump_err(fd.pid, fd.fd))?,
                ),
                ..Default::default()
            })
        })?;
        Ok((pb::FdTypes::Signalfd, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.sgfd.is_some()
    }

    fn open(
        &self,
        _cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let e = entry.sgfd.as_ref().expect("owned: sgfd is set");
        create_signalfd(e)
            .map(Some)
            .map_err(anon::restore_err(entry.id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn signalfd_fdinfo() {
        let s = signalfd_entry(5, 2, &map(&[("sigmask", "0000000000000200")])).unwrap();
        assert_eq!(s.sigmask, 0x200);
    }
}
