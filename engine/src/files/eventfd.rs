//! eventfd: its counter and semaphore mode from fdinfo, and a new one with the same count.

use std::collections::HashMap;
use std::os::fd::OwnedFd;

use nix::sys::eventfd::{EfdFlags, EventFd as NixEventFd};

use super::anon::{self, AnonFdError};
use crate::images::pb;

/// eventfd: the counter (printed in hex) and semaphore mode. CRIU's entry has no field for
/// EFD_SEMAPHORE; it is kept in bit 0 of `flags`, which is free for an O_RDWR file.
pub fn eventfd_entry(
    id: u32,
    flags: u32,
    extra: &HashMap<String, String>,
) -> Result<pb::EventfdFileEntry, AnonFdError> {
    let count =
        u64::from_str_radix(anon::field(extra, "eventfd", "eventfd-count")?, 16).map_err(|_| {
            AnonFdError::Field {
                kind: "eventfd",
                field: "eventfd-count",
            }
        })?;
    let sem = extra
        .get("eventfd-semaphore")
        .map(|s| s.trim() == "1")
        .unwrap_or(false);
    Ok(pb::EventfdFileEntry {
        id,
        flags: flags | sem as u32,
        fown: pb::FownEntry::default(),
        counter: count,
    })
}

/// A new eventfd with the dumped count and mode.
pub fn create_eventfd(e: &pb::EventfdFileEntry) -> Result<OwnedFd, AnonFdError> {
    let mut flags = EfdFlags::EFD_CLOEXEC;
    if e.flags & libc::O_NONBLOCK as u32 != 0 {
        flags |= EfdFlags::EFD_NONBLOCK;
    }
    if e.flags & 1 != 0 {
        flags |= EfdFlags::EFD_SEMAPHORE;
    }
    let fd = NixEventFd::from_value_and_flags(0, flags).map_err(anon::create_err("eventfd"))?;
    if e.counter > 0 {
        // The initial value argument is 32-bit; a write adds any 64-bit count.
        fd.write(e.counter).map_err(anon::create_err("eventfd"))?;
    }
    Ok(fd.into())
}

anon::fdinfo_kind!(EventFd, "eventfd", EventFd, Eventfd, efd, eventfd_entry, create_eventfd);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::anon::fdinfo_keys as map;


    #[test]
    fn eventfd_fdinfo() {
        let e = eventfd_entry(
            3,
            0o4002,
            &map(&[
                ("eventfd-count", "               1f"),
                ("eventfd-semaphore", "1"),
            ]),
        )
        .unwrap();
        assert_eq!((e.counter, e.flags), (0x1f, 0o4003));
        assert!(eventfd_entry(3, 2, &map(&[])).is_err());
    }
}
