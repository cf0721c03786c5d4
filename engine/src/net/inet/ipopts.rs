//! IP-level socket options, the ones CRIU keeps and as it keeps them (`ip_opts_entry`, a field
//! only when set): freebind and packet info in both families, TOS and TTL in IPv4, and for a
//! raw socket its header inclusion, IPv4's no-defragment flag and its ICMP type filter.

use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::sockopt::IpFreebind;
use nix::sys::socket::{getsockopt, setsockopt};

use super::{sys, InetError};
use crate::images::pb;
use crate::sys::socket::{IpPktInfo, IpTos, IpTtl, Ipv6Freebind, Ipv6RecvPktInfo};

const IP_HDRINCL: i32 = libc::IP_HDRINCL;
const IP_NODEFRAG: i32 = 22;
const IPV6_HDRINCL: i32 = 36;
const SOL_RAW: i32 = 255;
const ICMP_FILTER: i32 = 1;
const SOL_ICMPV6: i32 = 58;
const ICMPV6_FILTER: i32 = 1;

fn get_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> Option<i32> {
    crate::sys::socket::get_struct::<libc::c_int>(fd, level, name).ok()
}

/// The ICMP type filter of a raw ICMP (one word) or ICMPv6 (eight words) socket.
fn icmp_filter(fd: BorrowedFd<'_>, family: i32, proto: i32) -> Vec<u32> {
    let (level, name, words) = match (family, proto) {
        (libc::AF_INET, libc::IPPROTO_ICMP) => (SOL_RAW, ICMP_FILTER, 1),
        (libc::AF_INET6, libc::IPPROTO_ICMPV6) => (SOL_ICMPV6, ICMPV6_FILTER, 8),
        _ => return Vec::new(),
    };
    let mut buf = [0u32; 8];
    let mut len = (words * 4) as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes (at most 32) into `buf`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            buf.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Vec::new();
    }
    buf[..(len as usize / 4).min(words)].to_vec()
}

/// The options of socket `fd` (of `family`, `ty`, `proto`) worth keeping; None when none is.
pub(super) fn read(
    fd: BorrowedFd<'_>,
    family: u32,
    ty: u32,
    proto: u32,
) -> Option<pb::IpOptsEntry> {
    let (family, ty, proto) = (family as i32, ty as i32, proto as i32);
    let on = |v: nix::Result<libc::c_int>| v.unwrap_or(0) != 0;
    let nonzero = |v: nix::Result<libc::c_int>| v.ok().filter(|v| *v != 0).map(|v| v as u32);
    let v6 = family == libc::AF_INET6;
    let raw = (ty == libc::SOCK_RAW).then(|| {
        let (hdrincl, nodefrag) = if v6 {
            (get_int(fd, libc::IPPROTO_IPV6, IPV6_HDRINCL), None)
        } else {
            (
                get_int(fd, libc::IPPROTO_IP, IP_HDRINCL),
                get_int(fd, libc::IPPROTO_IP, IP_NODEFRAG),
            )
        };
        pb::IpOptsRawEntry {
            hdrincl: hdrincl.filter(|v| *v != 0).map(|_| true),
            nodefrag: nodefrag.filter(|v| *v != 0).map(|_| true),
            checksum: None,
            icmpv_filter: icmp_filter(fd, family, proto),
        }
    });
    let freebind = if v6 {
        on(getsockopt(&fd, Ipv6Freebind)) || getsockopt(&fd, IpFreebind).unwrap_or(false)
    } else {
        getsockopt(&fd, IpFreebind).unwrap_or(false)
    };
    let o = pb::IpOptsEntry {
        freebind: freebind.then_some(true),
        raw,
        pktinfo: if v6 {
            on(getsockopt(&fd, Ipv6RecvPktInfo))
        } else {
            on(getsockopt(&fd, IpPktInfo))
        }
        .then_some(true),
        tos: nonzero(getsockopt(&fd, IpTos)).filter(|_| !v6),
        ttl: nonzero(getsockopt(&fd, IpTtl)).filter(|_| !v6),
    };
    (o != pb::IpOptsEntry::default()).then_some(o)
}

/// IP_FREEBIND, through IPV6_FREEBIND on an IPv6 socket (a raw one refuses the IPv4 name);
/// a kernel before 4.15 has only the IPv4 name, which its IPv6 TCP and UDP sockets take.
pub(super) fn set_freebind(fd: BorrowedFd<'_>, family: u32, on: bool) -> nix::Result<()> {
    if family as i32 == libc::AF_INET6 {
        match setsockopt(&fd, Ipv6Freebind, &(on as i32)) {
            Err(nix::Error::ENOPROTOOPT) => {}
            r => return r,
        }
    }
    setsockopt(&fd, IpFreebind, &on)
}

fn set_int(fd: BorrowedFd<'_>, level: i32, name: i32, v: i32, what: &str) -> Result<(), InetError> {
    crate::sys::socket::set_struct(fd, level, name, &v).map_err(sys(what))
}

/// Sets the options of `ip` on a new socket of `family` and `proto` (freebind is the bind's
/// business, see `restore`).
pub(super) fn apply(
    fd: BorrowedFd<'_>,
    family: u32,
    proto: u32,
    ip: &pb::IpOptsEntry,
) -> Result<(), InetError> {
    let v6 = family as i32 == libc::AF_INET6;
    if ip.pktinfo == Some(true) {
        if v6 {
            setsockopt(&fd, Ipv6RecvPktInfo, &1).map_err(sys("IPV6_RECVPKTINFO"))?;
        } else {
            setsockopt(&fd, IpPktInfo, &1).map_err(sys("IP_PKTINFO"))?;
        }
    }
    if let Some(tos) = ip.tos.filter(|_| !v6) {
        setsockopt(&fd, IpTos, &(tos as i32)).map_err(sys("IP_TOS"))?;
    }
    if let Some(ttl) = ip.ttl.filter(|_| !v6) {
        setsockopt(&fd, IpTtl, &(ttl as i32)).map_err(sys("IP_TTL"))?;
    }
    let Some(raw) = &ip.raw else {
        return Ok(());
    };
    let (level, name) = match (v6, proto as i32) {
        (false, libc::IPPROTO_ICMP) => (SOL_RAW, ICMP_FILTER),
        (true, libc::IPPROTO_ICMPV6) => (SOL_ICMPV6, ICMPV6_FILTER),
        _ => (0, 0),
    };
    if !raw.icmpv_filter.is_empty() && level != 0 {
        crate::sys::socket::set_array(fd, level, name, &raw.icmpv_filter)
            .map_err(sys("ICMP_FILTER"))?;
    }
    if raw.nodefrag == Some(true) && !v6 {
        set_int(fd, libc::IPPROTO_IP, IP_NODEFRAG, 1, "IP_NODEFRAG")?;
    }
    if raw.hdrincl == Some(true) {
        let (level, name) = if v6 {
            (libc::IPPROTO_IPV6, IPV6_HDRINCL)
        } else {
            (libc::IPPROTO_IP, IP_HDRINCL)
        };
        set_int(fd, level, name, 1, "IP_HDRINCL")?;
    }
    Ok(())
}
