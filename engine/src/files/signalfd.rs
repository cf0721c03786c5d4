//! signalfd: its mask from fdinfo, and a new one with the same mask.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use super::anon::{self, AnonFdError};
use crate::images::pb;

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

anon::fdinfo_kind!(SignalFd, "signalfd", SignalFd, Signalfd, sgfd, signalfd_entry, create_signalfd);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::anon::fdinfo_keys as map;


    #[test]
    fn signalfd_fdinfo() {
        let s = signalfd_entry(5, 2, &map(&[("sigmask", "0000000000000200")])).unwrap();
        assert_eq!(s.sigmask, 0x200);
    }
}
