//! Packet sockets (AF_PACKET: DHCP clients, keepalived, capture tools), CRIU's
//! `packet_sock_entry`: type and protocol, the interface bound, the packet socket options, the
//! memberships, the fanout group and the rx/tx ring layouts. What no socket option tells
//! (memberships, rings, copy threshold) comes from packet_diag (NETLINK_SOCK_DIAG). Packets
//! queued for reading are not kept, as in CRIU. A ring the task has mapped is refused by the
//! memory dump (a mapping of the socket).

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::files::kind::{Fd, FileKind, OpenCx};
use crate::files::FdKind;
use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};

/// Reading or making a packet socket failed.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    #[error("packet socket (file id {id}): {what}")]
    Sys {
        id: u32,
        what: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("packet socket (inode {ino}): packet_diag does not list it")]
    NotListed { ino: u32 },
}

const SOL_PACKET: libc::c_int = 263;
const PACKET_ADD_MEMBERSHIP: libc::c_int = 1;
const PACKET_RX_RING: libc::c_int = 5;
const PACKET_COPY_THRESH: libc::c_int = 7;
const PACKET_AUXDATA: libc::c_int = 8;
const PACKET_ORIGDEV: libc::c_int = 9;
const PACKET_VERSION: libc::c_int = 10;
const PACKET_RESERVE: libc::c_int = 12;
const PACKET_TX_RING: libc::c_int = 13;
const PACKET_LOSS: libc::c_int = 14;
const PACKET_VNET_HDR: libc::c_int = 15;
const PACKET_TIMESTAMP: libc::c_int = 17;
const PACKET_FANOUT: libc::c_int = 18;
const TPACKET_V3: u32 = 2;
/// The old SOCK_PACKET type (libc deprecates its constant; the kernel still takes it).
const SOCK_PACKET: u32 = 10;
/// CRIU's "no fanout".
const NO_FANOUT: u32 = 0xffff_ffff;

/// What packet_diag says of one socket (pure parse of its reply; unit-tested).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diag {
    pub ino: u32,
    pub ty: u8,
    pub protocol: u16,
    /// index, version, reserve, copy_thresh, tstamp, flags (`packet_diag_info`).
    pub info: Option<[u32; 6]>,
    pub mclist: Vec<pb::PacketMclist>,
    pub rx_ring: Option<pb::PacketRing>,
    pub tx_ring: Option<pb::PacketRing>,
    pub fanout: Option<u32>,
}

const PDI_AUXDATA: u32 = 0x2;
const PDI_ORIGDEV: u32 = 0x4;
const PDI_VNETHDR: u32 = 0x8;
const PDI_LOSS: u32 = 0x10;

/// A packet_diag dump request for every packet socket, with info, memberships, rings and
/// fanout.
pub fn diag_request(seq: u32) -> Vec<u8> {
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    let len = 16 + 20;
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(&(len as u32).to_ne_bytes());
    r.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    r.extend_from_slice(&seq.to_ne_bytes());
    r.extend_from_slice(&0u32.to_ne_bytes());
    // sdiag_family, sdiag_protocol, pad, pdiag_ino, pdiag_show (INFO|MCLIST|RING_CFG|FANOUT),
    // pdiag_cookie.
    r.extend_from_slice(&[libc::AF_PACKET as u8, 0, 0, 0]);
    r.extend_from_slice(&0u32.to_ne_bytes());
    r.extend_from_slice(&(1u32 | 2 | 4 | 8).to_ne_bytes());
    r.resize(len, 0);
    r
}

/// Parses one buffer of packet_diag replies: the sockets, whether the dump is done, an errno.
pub fn parse_diag(buf: &[u8]) -> (Vec<Diag>, bool, Option<i32>) {
    const NLMSG_ERROR: u16 = 2;
    const NLMSG_DONE: u16 = 3;
    let mut out = Vec::new();
    let (mut done, mut errno) = (false, None);
    let u32_at = |b: &[u8], at: usize| u32::from_ne_bytes(b[at..at + 4].try_into().expect("4"));
    let u16_at = |b: &[u8], at: usize| u16::from_ne_bytes(b[at..at + 2].try_into().expect("2"));
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32_at(buf, off) as usize;
        let ty = u16_at(buf, off + 4);
        if len < 16 || off + len > buf.len() {
            break;
        }
        match ty {
            NLMSG_DONE => done = true,
            NLMSG_ERROR if len >= 20 => {
                errno = Some(-(u32_at(buf, off + 16) as i32));
                done = true;
            }
            _ if len >= 16 + 16 => {
                let m = &buf[off + 16..off + len];
                let mut d = Diag {
                    ty: m[1],
                    protocol: u16_at(m, 2),
                    ino: u32_at(m, 4),
                    ..Default::default()
                };
                let mut a = 16;
                while a + 4 <= m.len() {
                    let alen = u16_at(m, a) as usize;
                    let aty = u16_at(m, a + 2) & 0x3fff;
                    if alen < 4 || a + alen > m.len() {
                        break;
                    }
                    let v = &m[a + 4..a + alen];
                    match aty {
                        0 if v.len() >= 24 => {
                            let mut info = [0u32; 6];
                            for (i, w) in info.iter_mut().enumerate() {
                                *w = u32_at(v, i * 4);
                            }
                            d.info = Some(info);
                        }
                        1 => {
                            for mc in v.chunks_exact(44) {
                                let alen = (u16_at(mc, 10) as usize).min(32);
                                let entry = pb::PacketMclist {
                                    index: u32_at(mc, 0),
                                    r#type: u16_at(mc, 8) as u32,
                                    addr: mc[12..12 + alen].to_vec(),
                                };
                                // Added `count` times: each is dropped once.
                                for _ in 0..u32_at(mc, 4).max(1) {
                                    d.mclist.push(entry.clone());
                                }
                            }
                        }
                        2 | 3 if v.len() >= 28 => {
                            let ring = pb::PacketRing {
                                block_size: u32_at(v, 0),
                                block_nr: u32_at(v, 4),
                                frame_size: u32_at(v, 8),
                                frame_nr: u32_at(v, 12),
                                retire_tmo: u32_at(v, 16),
                                sizeof_priv: u32_at(v, 20),
                                features: u32_at(v, 24),
                            };
                            if aty == 2 {
                                d.rx_ring = Some(ring);
                            } else {
                                d.tx_ring = Some(ring);
                            }
                        }
                        4 if v.len() >= 4 => d.fanout = Some(u32_at(v, 0)),
                        _ => {}
                    }
                    a += (alen + 3) & !3;
                }
                out.push(d);
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    (out, done, errno)
}

/// packet_diag's view of the packet socket with inode `ino`.
fn diag_of(ino: u32) -> Result<Diag, PacketError> {
    let err = |what| {
        move |source| PacketError::Sys {
            id: 0,
            what,
            source,
        }
    };
    // In the tree's network namespace when it owns one (as unix sockets are looked up).
    let nl = crate::net::unix::diag_socket().map_err(err("packet_diag socket"))?;
    nix::sys::socket::send(
        nl.as_raw_fd(),
        &diag_request(1),
        nix::sys::socket::MsgFlags::empty(),
    )
    .map_err(|e| err("packet_diag request")(e.into()))?;
    let mut buf = vec![0u8; 64 << 10];
    let mut found = None;
    loop {
        let n = nix::sys::socket::recv(
            nl.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        )
        .map_err(|e| err("packet_diag reply")(e.into()))?;
        let (socks, done, errno) = parse_diag(&buf[..n]);
        if let Some(e) = errno.filter(|&e| e != 0) {
            return Err(err("packet_diag")(io::Error::from_raw_os_error(e)));
        }
        if found.is_none() {
            found = socks.into_iter().find(|d| d.ino == ino);
        }
        if done || n == 0 {
            break;
        }
    }
    found.ok_or(PacketError::NotListed { ino })
}

fn get_int(fd: BorrowedFd<'_>, opt: libc::c_int) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    let mut len = 4 as libc::socklen_t;
    // SAFETY: the kernel writes at most one int into `v`.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v as u32)
}

fn set_raw(fd: BorrowedFd<'_>, opt: libc::c_int, val: &[u8]) -> io::Result<()> {
    // SAFETY: setsockopt(2) reads `val.len()` bytes from `val`.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            SOL_PACKET,
            opt,
            val.as_ptr().cast(),
            val.len() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The entry of packet socket `sock` (our copy of the task's fd), inode `ino`.
pub fn dump(
    sock: BorrowedFd<'_>,
    id: u32,
    ino: u32,
    flags: u32,
) -> Result<pb::PacketSockEntry, PacketError> {
    let err = |what| move |source| PacketError::Sys { id, what, source };
    let d = diag_of(ino)?;
    let [ifindex, version, reserve, copy_thresh, tstamp, pflags] = d.info.unwrap_or_default();
    Ok(pb::PacketSockEntry {
        id,
        r#type: d.ty as u32,
        // As CRIU keeps it: in network byte order, as socket(2) takes it.
        protocol: d.protocol.to_be() as u32,
        flags,
        ifindex,
        fown: pb::FownEntry::default(),
        opts: super::buffer_opts(sock),
        version,
        reserve,
        aux_data: pflags & PDI_AUXDATA != 0,
        orig_dev: pflags & PDI_ORIGDEV != 0,
        vnet_hdr: pflags & PDI_VNETHDR != 0,
        loss: pflags & PDI_LOSS != 0,
        timestamp: if d.info.is_some() {
            tstamp
        } else {
            get_int(sock, PACKET_TIMESTAMP).map_err(err("PACKET_TIMESTAMP"))?
        },
        copy_thresh,
        mclist: d.mclist,
        // Left out without a group, as CRIU writes it (its restore sets whatever is there).
        fanout: d.fanout,
        rx_ring: d.rx_ring,
        tx_ring: d.tx_ring,
        ns_id: None,
    })
}

fn ring_bytes(r: &pb::PacketRing, v3: bool) -> Vec<u8> {
    let mut words = vec![r.block_size, r.block_nr, r.frame_size, r.frame_nr];
    if v3 {
        words.extend([r.retire_tmo, r.sizeof_priv, r.features]);
    }
    words.iter().flat_map(|w| w.to_ne_bytes()).collect()
}

/// A new packet socket like `e`: its options, rings, memberships, binding and fanout.
pub fn restore(e: &pb::PacketSockEntry) -> Result<OwnedFd, PacketError> {
    let err = |what| {
        move |source| PacketError::Sys {
            id: e.id,
            what,
            source,
        }
    };
    // In network byte order already (see `dump`).
    let proto = e.protocol as u16;
    // SAFETY: socket(2) takes integers only; a non-negative result is a new fd we own.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            e.r#type as libc::c_int | libc::SOCK_CLOEXEC,
            proto as libc::c_int,
        )
    };
    if fd < 0 {
        return Err(err("socket")(io::Error::last_os_error()));
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let s = std::os::fd::AsFd::as_fd(&sock);
    let int = |v: u32| (v as libc::c_int).to_ne_bytes();
    // The version and reserve before the rings, which they shape.
    if e.version != 0 {
        set_raw(s, PACKET_VERSION, &int(e.version)).map_err(err("PACKET_VERSION"))?;
    }
    if e.reserve != 0 {
        set_raw(s, PACKET_RESERVE, &int(e.reserve)).map_err(err("PACKET_RESERVE"))?;
    }
    for (on, opt, what) in [
        (e.aux_data, PACKET_AUXDATA, "PACKET_AUXDATA"),
        (e.orig_dev, PACKET_ORIGDEV, "PACKET_ORIGDEV"),
        (e.vnet_hdr, PACKET_VNET_HDR, "PACKET_VNET_HDR"),
        (e.loss, PACKET_LOSS, "PACKET_LOSS"),
    ] {
        if on {
            set_raw(s, opt, &int(1)).map_err(err(what))?;
        }
    }
    if e.timestamp != 0 {
        set_raw(s, PACKET_TIMESTAMP, &int(e.timestamp)).map_err(err("PACKET_TIMESTAMP"))?;
    }
    if e.copy_thresh != 0 {
        set_raw(s, PACKET_COPY_THRESH, &int(e.copy_thresh)).map_err(err("PACKET_COPY_THRESH"))?;
    }
    let v3 = e.version == TPACKET_V3;
    if let Some(r) = &e.rx_ring {
        set_raw(s, PACKET_RX_RING, &ring_bytes(r, v3)).map_err(err("PACKET_RX_RING"))?;
    }
    if let Some(r) = &e.tx_ring {
        set_raw(s, PACKET_TX_RING, &ring_bytes(r, v3)).map_err(err("PACKET_TX_RING"))?;
    }
    for mc in &e.mclist {
        // struct packet_mreq: ifindex, type, alen, address[8].
        let mut m = Vec::with_capacity(16);
        m.extend_from_slice(&(mc.index as i32).to_ne_bytes());
        m.extend_from_slice(&(mc.r#type as u16).to_ne_bytes());
        m.extend_from_slice(&(mc.addr.len().min(8) as u16).to_ne_bytes());
        let mut addr = [0u8; 8];
        let n = mc.addr.len().min(8);
        addr[..n].copy_from_slice(&mc.addr[..n]);
        m.extend_from_slice(&addr);
        set_raw(s, PACKET_ADD_MEMBERSHIP, &m).map_err(err("PACKET_ADD_MEMBERSHIP"))?;
    }
    if e.ifindex != 0 {
        bind(s, e, proto).map_err(err("bind"))?;
    }
    if let Some(f) = e.fanout.filter(|&f| f != NO_FANOUT) {
        set_raw(s, PACKET_FANOUT, &int(f)).map_err(err("PACKET_FANOUT"))?;
    }
    super::set_buffers_and_mode(&sock, &e.opts, e.flags)
        .map_err(|e| err("O_NONBLOCK")(e.into()))?;
    Ok(sock)
}

/// Binds to interface `e.ifindex`: by index (`sockaddr_ll`), or, for an old SOCK_PACKET
/// socket, by the interface's name (`struct sockaddr` with the name in `sa_data`).
fn bind(s: BorrowedFd<'_>, e: &pb::PacketSockEntry, proto: u16) -> io::Result<()> {
    let r = if e.r#type == SOCK_PACKET {
        let mut name = [0u8; libc::IF_NAMESIZE];
        // SAFETY: if_indextoname writes at most IF_NAMESIZE bytes into `name`.
        if unsafe { libc::if_indextoname(e.ifindex, name.as_mut_ptr().cast()) }.is_null() {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr is plain integers; all zeroes is a valid value.
        let mut a: libc::sockaddr = unsafe { std::mem::zeroed() };
        a.sa_family = libc::AF_PACKET as u16;
        for (d, c) in a.sa_data.iter_mut().zip(name.iter().take(13)) {
            *d = *c as libc::c_char;
        }
        // SAFETY: bind(2) reads a sockaddr of the given size from `a`.
        unsafe {
            libc::bind(
                s.as_raw_fd(),
                &a,
                std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
            )
        }
    } else {
        // SAFETY: sockaddr_ll is plain integers; all zeroes is a valid value.
        let mut a: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        a.sll_family = libc::AF_PACKET as u16;
        a.sll_protocol = proto;
        a.sll_ifindex = e.ifindex as i32;
        // SAFETY: bind(2) reads a sockaddr_ll of the given size from `a`.
        unsafe {
            libc::bind(
                s.as_raw_fd(),
                (&a as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The packet socket kind.
pub struct PacketSocket;

impl FileKind for PacketSocket {
    fn name(&self) -> &'static str {
        "packet-socket"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        matches!(fd.class, FdKind::Socket(_))
            && fd.socket.is_some_and(|(_, f)| f == libc::AF_PACKET)
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let FdKind::Socket(ino) = *fd.class else {
            unreachable!("claimed sockets only")
        };
        let (sock, _) = fd.socket.expect("claimed with a copy");
        let flags = fd.flags();
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
            let e =
                dump(std::os::fd::AsFd::as_fd(sock), id, ino as u32, flags).map_err(|source| {
                    crate::files::FilesError::Packet {
                        pid: fd.pid,
                        fd: fd.fd,
                        source,
                    }
                })?;
            Ok(pb::FileEntry {
                r#type: pb::FdTypes::Packetsk as i32,
                id,
                psk: Some(e),
                ..Default::default()
            })
        })?;
        Ok((pb::FdTypes::Packetsk, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.psk.is_some()
    }

    fn open(
        &self,
        _cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let e = entry.psk.as_ref().expect("owned: psk is set");
        Ok(Some(restore(e)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diag_reply_gives_info_memberships_rings_and_fanout() {
        let mut m = vec![libc::AF_PACKET as u8, 2];
        m.extend_from_slice(&0x0800u16.to_ne_bytes());
        m.extend_from_slice(&4242u32.to_ne_bytes());
        m.extend_from_slice(&[0u8; 8]);
        let mut attr = |ty: u16, v: &[u8]| {
            m.extend_from_slice(&((4 + v.len()) as u16).to_ne_bytes());
            m.extend_from_slice(&ty.to_ne_bytes());
            m.extend_from_slice(v);
            while m.len() % 4 != 0 {
                m.push(0);
            }
        };
        let words = |w: &[u32]| w.iter().flat_map(|x| x.to_ne_bytes()).collect::<Vec<u8>>();
        attr(0, &words(&[1, 1, 8, 0, 0, PDI_ORIGDEV]));
        let mut mc = words(&[1, 2]);
        mc.extend_from_slice(&1u16.to_ne_bytes());
        mc.extend_from_slice(&6u16.to_ne_bytes());
        mc.extend_from_slice(&[0xaa; 32]);
        attr(1, &mc);
        attr(3, &words(&[4096, 1, 1024, 4, 0, 0, 0]));
        attr(4, &words(&[13]));
        let mut msg = ((16 + m.len()) as u32).to_ne_bytes().to_vec();
        msg.extend_from_slice(&20u16.to_ne_bytes());
        msg.extend_from_slice(&[0u8; 10]);
        msg.extend_from_slice(&m);
        let (socks, done, errno) = parse_diag(&msg);
        assert!(!done && errno.is_none());
        let d = &socks[0];
        assert_eq!((d.ino, d.ty, d.protocol), (4242, 2, 0x0800));
        assert_eq!(d.info, Some([1, 1, 8, 0, 0, PDI_ORIGDEV]));
        assert_eq!(d.mclist.len(), 2, "a membership added twice is kept twice");
        assert_eq!(d.mclist[0].addr, vec![0xaa; 6]);
        assert_eq!(d.tx_ring.as_ref().map(|r| r.frame_nr), Some(4));
        assert!(d.rx_ring.is_none());
        assert_eq!(d.fanout, Some(13));
    }

    #[test]
    fn truncated_diag_replies_end_the_parse() {
        let (socks, done, _) = parse_diag(&[1, 2, 3]);
        assert!(socks.is_empty() && !done);
        let mut msg = 100u32.to_ne_bytes().to_vec();
        msg.extend_from_slice(&[0u8; 20]);
        assert!(parse_diag(&msg).0.is_empty());
    }
}
