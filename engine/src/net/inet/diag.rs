//! inet_diag (NETLINK_SOCK_DIAG for AF_INET/AF_INET6): what no socket option tells, here the
//! shutdown state of a socket (`sk_shutdown`, the `INET_DIAG_SHUTDOWN` attribute). The request
//! and the reply parser are pure; [`shutdown_of`] does the netlink round trips.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;

use nix::sys::socket::{recv, send, MsgFlags};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const INET_DIAG_SHUTDOWN: u16 = 8;
/// Header of a netlink message, then the fixed part of `struct inet_diag_msg` (family, state,
/// timer, retrans, the 48-byte socket id, expires, rqueue, wqueue, uid, inode).
const NLMSG_HDR: usize = 16;
const INET_DIAG_MSG: usize = 72;
const INODE_AT: usize = 68;

/// A dump request (`struct inet_diag_req_v2`) for every socket of `family` and `proto`.
pub fn dump_request(family: u8, proto: u8, seq: u32) -> Vec<u8> {
    let len = NLMSG_HDR + 56;
    let mut r = Vec::with_capacity(len);
    r.extend_from_slice(&(len as u32).to_ne_bytes());
    r.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    r.extend_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    r.extend_from_slice(&seq.to_ne_bytes());
    r.extend_from_slice(&0u32.to_ne_bytes());
    // sdiag_family, sdiag_protocol, idiag_ext, pad, idiag_states (all), then a zero socket id.
    r.extend_from_slice(&[family, proto, 0, 0]);
    r.extend_from_slice(&u32::MAX.to_ne_bytes());
    r.resize(len, 0);
    r
}

/// What one reply buffer holds: (inode, sk_shutdown) per socket, whether the dump is done,
/// and the errno of an error message. Malformed messages end the parse.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reply {
    pub sockets: Vec<(u32, u8)>,
    pub done: bool,
    pub errno: Option<i32>,
}

/// Parses one buffer of inet_diag replies.
pub fn parse(buf: &[u8]) -> Reply {
    let mut out = Reply::default();
    let mut off = 0;
    while off + NLMSG_HDR <= buf.len() {
        let word = |at: usize| u32::from_ne_bytes(buf[at..at + 4].try_into().expect("4 bytes"));
        let len = word(off) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2 bytes"));
        if len < NLMSG_HDR || off + len > buf.len() {
            break;
        }
        match ty {
            NLMSG_DONE => out.done = true,
            NLMSG_ERROR if len >= NLMSG_HDR + 4 => {
                let e = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4 bytes"));
                out.errno = Some(-e);
                out.done = true;
            }
            SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDR + INET_DIAG_MSG => {
                let m = &buf[off + NLMSG_HDR..off + len];
                let inode = u32::from_ne_bytes(m[INODE_AT..INODE_AT + 4].try_into().expect("4"));
                let mut shutdown = 0;
                let mut a = INET_DIAG_MSG;
                while a + 4 <= m.len() {
                    let alen = u16::from_ne_bytes(m[a..a + 2].try_into().expect("2")) as usize;
                    let aty = u16::from_ne_bytes(m[a + 2..a + 4].try_into().expect("2"));
                    if alen < 4 || a + alen > m.len() {
                        break;
                    }
                    if aty & 0x3fff == INET_DIAG_SHUTDOWN && alen > 4 {
                        shutdown = m[a + 4] & 3;
                    }
                    a += (alen + 3) & !3;
                }
                out.sockets.push((inode, shutdown));
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    out
}

/// The shutdown states of the sockets of one dump, read once per family and protocol (one
/// netlink dump of them all, not one per socket).
#[derive(Default)]
pub struct Shutdowns(HashMap<(u8, u8), HashMap<u32, u8>>);

impl Shutdowns {
    /// The shutdown state (1 receive side, 2 send side, 3 both) of the socket with inode
    /// `ino`, of `family` and `proto`, in the namespace sock_diag looks in (the tree's own
    /// network namespace when it has one); None if sock_diag does not list it.
    pub fn of(&mut self, family: u8, proto: u8, ino: u32) -> io::Result<Option<u8>> {
        let all = match self.0.entry((family, proto)) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => v.insert(dump_all(family, proto)?),
        };
        Ok(all.get(&ino).copied())
    }
}

/// Every socket of `family` and `proto` that sock_diag lists: inode → shutdown state.
fn dump_all(family: u8, proto: u8) -> io::Result<HashMap<u32, u8>> {
    let sock = crate::net::unix::diag_socket()?;
    send(
        sock.as_raw_fd(),
        &dump_request(family, proto, 1),
        MsgFlags::empty(),
    )?;
    let mut buf = vec![0u8; 32 << 10];
    let mut found = HashMap::new();
    loop {
        let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
        if n == 0 {
            return Ok(found);
        }
        let r = parse(&buf[..n]);
        if let Some(errno) = r.errno.filter(|&e| e != 0) {
            return Err(io::Error::from_raw_os_error(errno));
        }
        found.extend(r.sockets);
        if r.done {
            return Ok(found);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend_from_slice(&((NLMSG_HDR + payload.len()) as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        while m.len() % 4 != 0 {
            m.push(0);
        }
        m
    }

    fn sock(inode: u32, shutdown: Option<u8>) -> Vec<u8> {
        let mut p = vec![0u8; INET_DIAG_MSG];
        p[INODE_AT..INODE_AT + 4].copy_from_slice(&inode.to_ne_bytes());
        // Another attribute first (INET_DIAG_TOS), as the kernel puts several.
        p.extend_from_slice(&5u16.to_ne_bytes());
        p.extend_from_slice(&5u16.to_ne_bytes());
        p.extend_from_slice(&[0, 0, 0, 0]);
        if let Some(s) = shutdown {
            p.extend_from_slice(&5u16.to_ne_bytes());
            p.extend_from_slice(&INET_DIAG_SHUTDOWN.to_ne_bytes());
            p.extend_from_slice(&[s, 0, 0, 0]);
        }
        msg(SOCK_DIAG_BY_FAMILY, &p)
    }

    #[test]
    fn request_asks_for_every_state_of_one_family_and_protocol() {
        let r = dump_request(libc::AF_INET as u8, libc::IPPROTO_UDP as u8, 7);
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(r[16], libc::AF_INET as u8);
        assert_eq!(r[17], libc::IPPROTO_UDP as u8);
        assert_eq!(&r[20..24], &u32::MAX.to_ne_bytes());
    }

    #[test]
    fn replies_give_each_socket_s_shutdown_state() {
        let mut buf = sock(41, Some(2));
        buf.extend(sock(42, None));
        buf.extend(msg(NLMSG_DONE, &[0, 0, 0, 0]));
        let r = parse(&buf);
        assert_eq!(r.sockets, vec![(41, 2), (42, 0)]);
        assert!(r.done);
        assert_eq!(r.errno, None);
        let e = parse(&msg(NLMSG_ERROR, &(-libc::EINVAL).to_ne_bytes()));
        assert_eq!(e.errno, Some(libc::EINVAL));
        // Truncated input parses to nothing rather than panicking.
        assert_eq!(parse(&buf[..20]).sockets, vec![]);
    }
}
