//! A blocking route netlink socket, in the caller's network namespace or in another one (made
//! there by [`crate::nsenter::in_netns`]).

use std::io;
use std::os::fd::BorrowedFd;

use netlink_packet_core::{NLM_F_ACK, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

use crate::ipdump::NLMSG_HDRLEN;
use crate::wire;

const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;

/// How often a dump the kernel marks as interrupted (the tables changed under it) is retried.
const DUMP_TRIES: usize = 5;

/// A request over the socket failed.
#[derive(Debug, thiserror::Error)]
pub enum RtnlError {
    /// The kernel answered with an error; `message` is its extended ack text, if any.
    #[error("{source}{}", message.as_ref().map(|m| format!(" ({m})")).unwrap_or_default())]
    Kernel {
        #[source]
        source: io::Error,
        message: Option<String>,
    },
    /// `send`/`recv` failed.
    #[error("netlink {what} failed")]
    Io {
        what: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel's answer does not parse as netlink.
    #[error("malformed answer: {reason}")]
    Malformed { reason: String },
    /// Every try of a dump was interrupted by concurrent changes.
    #[error("dump interrupted by concurrent changes {DUMP_TRIES} times")]
    Interrupted,
}

impl RtnlError {
    pub fn errno(&self) -> Option<i32> {
        match self {
            RtnlError::Kernel { source, .. } | RtnlError::Io { source, .. } => {
                source.raw_os_error()
            }
            _ => None,
        }
    }
}

/// A connected route netlink socket and its sequence counter.
pub(crate) struct Rtnl {
    sock: Socket,
    seq: u32,
}

impl Rtnl {
    /// A socket in the calling thread's network namespace.
    pub(crate) fn here() -> io::Result<Rtnl> {
        Self::setup(Socket::new(NETLINK_ROUTE)?)
    }

    /// A socket in the network namespace `ns` (an nsfs file: `/proc/PID/ns/net`,
    /// `/run/netns/NAME`), the caller staying where it is (see the module documentation).
    pub(crate) fn in_netns(ns: BorrowedFd<'_>) -> io::Result<Rtnl> {
        Self::setup(crate::nsenter::in_netns(ns, || Socket::new(NETLINK_ROUTE))?)
    }

    fn setup(mut sock: Socket) -> io::Result<Rtnl> {
        sock.bind_auto()?;
        sock.connect(&SocketAddr::new(0, 0))?;
        // Best effort: without them errors only lose their text, acks get longer.
        let _ = sock.set_ext_ack(true);
        let _ = sock.set_cap_ack(true);
        Ok(Rtnl { sock, seq: 0 })
    }

    fn send(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<u32, RtnlError> {
        self.seq = self.seq.wrapping_add(1);
        let bytes = wire::serialize(msg, flags, self.seq);
        self.sock.send(&bytes, 0).map_err(|source| RtnlError::Io {
            what: "send",
            source,
        })?;
        Ok(self.seq)
    }

    fn recv(&self) -> Result<Vec<u8>, RtnlError> {
        self.sock
            .recv_from_full()
            .map(|(b, _)| b)
            .map_err(|source| RtnlError::Io {
                what: "recv",
                source,
            })
    }

    /// Sends a request (`NLM_F_REQUEST | NLM_F_ACK | flags`) and waits for its ack.
    pub(crate) fn call(&mut self, msg: RouteNetlinkMessage, flags: u16) -> Result<(), RtnlError> {
        let seq = self.send(msg, NLM_F_REQUEST | NLM_F_ACK | flags)?;
        loop {
            let buf = self.recv()?;
            for m in split(&buf)? {
                if m.seq != seq {
                    continue; // a late answer to an earlier request
                }
                if m.ty == NLMSG_ERROR {
                    return ack(m);
                }
            }
        }
    }

    /// Dumps with `msg` as the request: every answer message, whole (header included), as the
    /// kernel sent it. A dump the kernel marks interrupted is done again.
    pub(crate) fn dump(&mut self, msg: RouteNetlinkMessage) -> Result<Vec<Vec<u8>>, RtnlError> {
        for _ in 0..DUMP_TRIES {
            let seq = self.send(msg.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let mut out = Vec::new();
            let mut interrupted = false;
            'recv: loop {
                let buf = self.recv()?;
                for m in split(&buf)? {
                    if m.seq != seq {
                        continue;
                    }
                    interrupted |= m.flags & NLM_F_DUMP_INTR != 0;
                    match m.ty {
                        NLMSG_DONE => break 'recv,
                        NLMSG_ERROR => {
                            ack(m)?;
                            break 'recv;
                        }
                        NLMSG_NOOP => {}
                        _ => out.push(m.bytes.to_vec()),
                    }
                }
            }
            if !interrupted {
                return Ok(out);
            }
        }
        Err(RtnlError::Interrupted)
    }
}

/// One message of a datagram.
pub(crate) struct Raw<'a> {
    pub ty: u16,
    pub flags: u16,
    pub seq: u32,
    /// The whole message, header included.
    pub bytes: &'a [u8],
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    b.get(at..at + 2)
        .map_or(0, |s| u16::from_ne_bytes([s[0], s[1]]))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    b.get(at..at + 4)
        .map_or(0, |s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
}

/// The messages of one datagram. Pure.
pub(crate) fn split(buf: &[u8]) -> Result<Vec<Raw<'_>>, RtnlError> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + NLMSG_HDRLEN <= buf.len() {
        let len = u32_at(buf, off) as usize;
        if len < NLMSG_HDRLEN || len > buf.len() - off {
            return Err(RtnlError::Malformed {
                reason: format!("message at byte {off} claims {len} bytes of {}", buf.len()),
            });
        }
        let bytes = &buf[off..off + len];
        out.push(Raw {
            ty: u16_at(bytes, 4),
            flags: u16_at(bytes, 6),
            seq: u32_at(bytes, 8),
            bytes,
        });
        off += (len + 3) & !3;
    }
    Ok(out)
}

/// The outcome carried by an `NLMSG_ERROR` message: `Ok` for an ack (code 0), else the errno
/// with the kernel's extended ack text when it sent one. Pure.
pub(crate) fn ack(m: Raw<'_>) -> Result<(), RtnlError> {
    let b = m.bytes;
    if b.len() < NLMSG_HDRLEN + 4 {
        return Err(RtnlError::Malformed {
            reason: "error message without its code".into(),
        });
    }
    let code = u32_at(b, NLMSG_HDRLEN) as i32;
    if code == 0 {
        return Ok(());
    }
    let mut message = None;
    if m.flags & NLM_F_ACK_TLVS != 0 {
        // After the code: the request's header, then (unless capped) its payload.
        let orig = NLMSG_HDRLEN + 4;
        let mut at = if m.flags & NLM_F_CAPPED != 0 {
            orig + NLMSG_HDRLEN
        } else {
            orig + ((u32_at(b, orig) as usize + 3) & !3)
        };
        while at + 4 <= b.len() {
            let len = u16_at(b, at) as usize;
            let ty = u16_at(b, at + 2) & 0x3fff;
            if len < 4 || at + len > b.len() {
                break;
            }
            if ty == NLMSGERR_ATTR_MSG {
                let text = &b[at + 4..at + len];
                let text = text.split(|&c| c == 0).next().unwrap_or_default();
                message = Some(String::from_utf8_lossy(text).into_owned());
            }
            at += (len + 3) & !3;
        }
    }
    Err(RtnlError::Kernel {
        source: io::Error::from_raw_os_error(code.wrapping_neg()),
        message,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_msg(code: i32, flags: u16, tlvs: &[(u16, &[u8])]) -> Vec<u8> {
        let mut b = vec![0u8; 16];
        b[4..6].copy_from_slice(&NLMSG_ERROR.to_ne_bytes());
        b[6..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..12].copy_from_slice(&7u32.to_ne_bytes());
        b.extend_from_slice(&code.to_ne_bytes());
        let mut orig = vec![0u8; 16];
        orig[0..4].copy_from_slice(&40u32.to_ne_bytes());
        b.extend_from_slice(&orig);
        for (ty, data) in tlvs {
            b.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
            b.extend_from_slice(&ty.to_ne_bytes());
            b.extend_from_slice(data);
            b.resize((b.len() + 3) & !3, 0);
        }
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    #[test]
    fn acks_and_errors_with_extack_text() {
        let ok = err_msg(0, 0, &[]);
        let m = split(&ok).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].seq, 7);
        assert!(ack(split(&ok).unwrap().remove(0)).is_ok());

        let e = err_msg(
            -libc::EEXIST,
            NLM_F_CAPPED | NLM_F_ACK_TLVS,
            &[(NLMSGERR_ATTR_MSG, b"Link already exists\0")],
        );
        let err = ack(split(&e).unwrap().remove(0)).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EEXIST));
        assert!(err.to_string().contains("Link already exists"), "{err}");
    }

    #[test]
    fn malformed_datagrams_are_errors() {
        let mut e = err_msg(-1, 0, &[]);
        e[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        assert!(split(&e).is_err());
        e[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert!(split(&e).is_err());
        // A TLV claiming more than there is: no panic, still the errno.
        let mut t = err_msg(-libc::EPERM, NLM_F_CAPPED | NLM_F_ACK_TLVS, &[]);
        t.extend_from_slice(&[0xff, 0xff, 1, 0]);
        let len = t.len() as u32;
        t[0..4].copy_from_slice(&len.to_ne_bytes());
        let err = ack(split(&t).unwrap().remove(0)).unwrap_err();
        assert_eq!(err.errno(), Some(libc::EPERM));
        // Shorter than an error code.
        let short = &err_msg(0, 0, &[])[..16];
        let mut s = short.to_vec();
        s[0..4].copy_from_slice(&16u32.to_ne_bytes());
        assert!(ack(split(&s).unwrap().remove(0)).is_err());
    }
}
