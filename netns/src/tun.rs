//! tun/tap devices: made through `/dev/net/tun` (the kernel makes none over route netlink),
//! from a thread inside the namespace they belong to (a tun device lands in the namespace of
//! whoever opened `/dev/net/tun`). Their flags between netlink's `IFLA_TUN_*` attributes and
//! the `IFF_*` flags `TUNSETIFF` takes (and CRIU's `tun_link_entry` keeps) are pure.

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use crate::error::NetnsError;
use crate::model::{Link, LinkKind};

pub const IFF_TUN: u32 = 0x0001;
pub const IFF_TAP: u32 = 0x0002;
pub const IFF_MULTI_QUEUE: u32 = 0x0100;
/// In `TUNGETIFF`'s answer: this queue of a multiqueue device is detached (`TUNSETQUEUE`).
pub const IFF_DETACH_QUEUE: u32 = 0x0400;
pub const IFF_PERSIST: u32 = 0x0800;
pub const IFF_NO_PI: u32 = 0x1000;
pub const IFF_VNET_HDR: u32 = 0x4000;
/// The flags `TUNSETIFF` takes to make or attach to a device.
pub const SETIFF_FLAGS: u32 = IFF_TUN | IFF_TAP | IFF_MULTI_QUEUE | IFF_NO_PI | IFF_VNET_HDR;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETPERSIST: libc::c_ulong = 0x4004_54cb;
const TUNSETOWNER: libc::c_ulong = 0x4004_54cc;
const TUNSETGROUP: libc::c_ulong = 0x4004_54ce;
const TUNSETIFINDEX: libc::c_ulong = 0x4004_54da;
const TUNGETIFF: libc::c_ulong = 0x8004_54d2;
const TUNSETQUEUE: libc::c_ulong = 0x4004_54d9;

// IFLA_TUN_* (linux/if_link.h).
const IFLA_TUN_OWNER: u16 = 1;
const IFLA_TUN_GROUP: u16 = 2;
const IFLA_TUN_TYPE: u16 = 3;
const IFLA_TUN_PI: u16 = 4;
const IFLA_TUN_VNET_HDR: u16 = 5;
const IFLA_TUN_PERSIST: u16 = 6;
const IFLA_TUN_MULTI_QUEUE: u16 = 7;

/// A tun link's kind from its `IFLA_INFO_DATA` attributes, (type, value) pairs.
pub fn kind_from_attrs(attrs: &[(u16, Vec<u8>)]) -> LinkKind {
    let byte = |t| {
        attrs
            .iter()
            .find(|(k, _)| *k == t)
            .and_then(|(_, v)| v.first().copied())
    };
    let word = |t| {
        attrs
            .iter()
            .find(|(k, _)| *k == t)
            .and_then(|(_, v)| Some(u32::from_ne_bytes(v.get(..4)?.try_into().ok()?)))
    };
    let mut flags = match byte(IFLA_TUN_TYPE) {
        Some(2) => IFF_TAP,
        _ => IFF_TUN,
    };
    if byte(IFLA_TUN_PI) == Some(0) {
        flags |= IFF_NO_PI;
    }
    for (attr, flag) in [
        (IFLA_TUN_VNET_HDR, IFF_VNET_HDR),
        (IFLA_TUN_PERSIST, IFF_PERSIST),
        (IFLA_TUN_MULTI_QUEUE, IFF_MULTI_QUEUE),
    ] {
        if byte(attr).is_some_and(|b| b != 0) {
            flags |= flag;
        }
    }
    LinkKind::Tun {
        flags,
        owner: word(IFLA_TUN_OWNER),
        group: word(IFLA_TUN_GROUP),
    }
}

/// An `ifreq` naming `name` with `flags`, as `TUNSETIFF` takes it.
pub fn ifreq(name: &str, flags: u32) -> [u8; 40] {
    let mut req = [0u8; 40];
    let n = name.len().min(15);
    req[..n].copy_from_slice(&name.as_bytes()[..n]);
    req[16..18].copy_from_slice(&(flags as u16).to_ne_bytes());
    req
}

fn ioctl(fd: BorrowedFd<'_>, req: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<()> {
    // SAFETY: the tun ioctls used here take an integer or a pointer to a live 40-byte ifreq.
    if unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Opens `/dev/net/tun` and attaches to (or makes) the device `name` with `flags`
/// ([`SETIFF_FLAGS`] of them), asking for `ifindex` when not 0.
pub fn attach(name: &str, flags: u32, ifindex: u32) -> std::io::Result<OwnedFd> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")?;
    let fd = OwnedFd::from(f);
    use std::os::fd::AsFd;
    if ifindex != 0 {
        ioctl(
            fd.as_fd(),
            TUNSETIFINDEX,
            &ifindex as *const u32 as libc::c_ulong,
        )?;
    }
    let req = ifreq(name, flags & SETIFF_FLAGS);
    ioctl(fd.as_fd(), TUNSETIFF, req.as_ptr() as libc::c_ulong)?;
    Ok(fd)
}

/// Whether `fd`, a file attached to a tun device, is a queue of it that was detached
/// (`TUNSETQUEUE` with `IFF_DETACH_QUEUE`: a multiqueue device's spare queue). fdinfo does
/// not show it; `TUNGETIFF` does.
pub fn is_detached_queue(fd: BorrowedFd<'_>) -> std::io::Result<bool> {
    let mut req = [0u8; 40];
    ioctl(fd, TUNGETIFF, req.as_mut_ptr() as libc::c_ulong)?;
    let flags = u16::from_ne_bytes([req[16], req[17]]) as u32;
    Ok(flags & IFF_DETACH_QUEUE != 0)
}

/// Detaches the queue `fd` from its multiqueue device (it stays the device's, unused).
pub fn detach_queue(fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let req = ifreq("", IFF_DETACH_QUEUE);
    ioctl(fd, TUNSETQUEUE, req.as_ptr() as libc::c_ulong)
}

/// Makes the device `fd` is attached to persistent (it outlives its files) or not.
pub fn set_persist(fd: BorrowedFd<'_>, persist: bool) -> std::io::Result<()> {
    ioctl(fd, TUNSETPERSIST, persist as libc::c_ulong)
}

/// Makes the tun link `l` in namespace `ns`, persistent until the tree's own fds are
/// attached (the engine then takes persistence back if it was not set).
pub(crate) fn create(ns: BorrowedFd<'_>, l: &Link, ifindex: u32) -> Result<(), NetnsError> {
    let LinkKind::Tun {
        flags,
        owner,
        group,
    } = l.kind
    else {
        return Ok(());
    };
    let made = crate::nsenter::in_netns(ns, || {
        let fd = attach(&l.name, flags, ifindex)?;
        use std::os::fd::AsFd;
        set_persist(fd.as_fd(), true)?;
        if let Some(uid) = owner {
            ioctl(fd.as_fd(), TUNSETOWNER, uid as libc::c_ulong)?;
        }
        if let Some(gid) = group {
            ioctl(fd.as_fd(), TUNSETGROUP, gid as libc::c_ulong)?;
        }
        Ok(())
    });
    made.map_err(|source| NetnsError::Tun {
        link: l.name.clone(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_from_netlink_attributes() {
        let attrs = vec![
            (IFLA_TUN_TYPE, vec![2]),
            (IFLA_TUN_PI, vec![0]),
            (IFLA_TUN_VNET_HDR, vec![1]),
            (IFLA_TUN_PERSIST, vec![0]),
            (IFLA_TUN_MULTI_QUEUE, vec![0]),
            (IFLA_TUN_OWNER, 1000u32.to_ne_bytes().to_vec()),
        ];
        assert_eq!(
            kind_from_attrs(&attrs),
            LinkKind::Tun {
                flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
                owner: Some(1000),
                group: None
            }
        );
        let tun = vec![(IFLA_TUN_TYPE, vec![1]), (IFLA_TUN_PI, vec![1])];
        assert!(matches!(
            kind_from_attrs(&tun),
            LinkKind::Tun { flags: IFF_TUN, .. }
        ));
        let req = ifreq("stun0", IFF_TUN | IFF_NO_PI);
        assert_eq!(&req[..6], b"stun0\0");
        assert_eq!(u16::from_ne_bytes([req[16], req[17]]), 0x1001);
    }
}
