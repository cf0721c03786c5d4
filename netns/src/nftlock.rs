//! The network lock for dumped TCP connections: an nftables table that drops the peer's packets
//! to each connection while its socket does not exist (between the kill after a dump and the
//! restore). Without it the peer's retransmissions reach a closed port, the kernel answers with
//! RST and the connection is lost. Built as raw nf_tables netlink messages in one batch.
//!
//! For a tree in a network namespace of its own the lock goes inside that namespace
//! ([`lock_in`], [`add_in`], [`unlock_in`]): that is where its connections' packets arrive.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{
    recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType,
};

/// Setting or removing the lock failed.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("nftables netlink {what} failed")]
    Netlink {
        what: &'static str,
        #[source]
        source: io::Error,
    },
}

impl LockError {
    /// The table (or what was asked of it) does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            LockError::Netlink { source, .. } => source.raw_os_error() == Some(libc::ENOENT),
        }
    }
}

/// One TCP connection to lock, ports in host order (local = the dumped socket's side).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Conn {
    pub local_port: u16,
    pub remote_port: u16,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_NEWRULE: u16 = 6;
const NFPROTO_INET: u8 = 1;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_CREATE: u16 = 0x400;
const NLA_F_NESTED: u16 = 0x8000;
const NLMSG_ERROR: u16 = 2;
const NF_INET_LOCAL_IN: u32 = 1;
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NFT_META_MARK: u32 = 3;
const NLM_F_APPEND: u16 = 0x800;
/// The mark of the segments a restore injects into its own stack to put a half-closed
/// connection's FINs back; CRIU's mark (SOCCR_MARK), which its own locks let through too.
pub const INJECTED_MARK: u32 = 0xC114;
const NFT_META_L4PROTO: u32 = 16;
const NFT_PAYLOAD_TRANSPORT_HEADER: u32 = 2;
const NFT_REG_1: u32 = 1;
const NFT_REG_VERDICT: u32 = 0;
const NFT_CMP_EQ: u32 = 0;

/// A growing netlink message (pure encoding, unit-tested without privileges).
#[derive(Default)]
struct Msg {
    buf: Vec<u8>,
    nests: Vec<usize>,
}

impl Msg {
    fn new(ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> Msg {
        let mut m = Msg::default();
        m.buf.extend_from_slice(&0u32.to_ne_bytes()); // length, fixed in finish
        m.buf.extend_from_slice(&ty.to_ne_bytes());
        m.buf.extend_from_slice(&flags.to_ne_bytes());
        m.buf.extend_from_slice(&seq.to_ne_bytes());
        m.buf.extend_from_slice(&0u32.to_ne_bytes());
        m.buf.push(family);
        m.buf.push(0); // NFNETLINK_V0
        m.buf.extend_from_slice(&res_id.to_be_bytes());
        m
    }
    fn attr(&mut self, ty: u16, data: &[u8]) -> &mut Self {
        let len = 4 + data.len();
        self.buf.extend_from_slice(&(len as u16).to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(data);
        while !self.buf.len().is_multiple_of(4) {
            self.buf.push(0);
        }
        self
    }
    fn str(&mut self, ty: u16, s: &str) -> &mut Self {
        let mut d = s.as_bytes().to_vec();
        d.push(0);
        self.attr(ty, &d)
    }
    fn u32be(&mut self, ty: u16, v: u32) -> &mut Self {
        self.attr(ty, &v.to_be_bytes())
    }
    fn begin(&mut self, ty: u16) -> &mut Self {
        self.nests.push(self.buf.len());
        self.buf.extend_from_slice(&0u16.to_ne_bytes());
        self.buf
            .extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
        self
    }
    fn end(&mut self) -> &mut Self {
        let at = self.nests.pop().expect("balanced nests");
        let len = (self.buf.len() - at) as u16;
        self.buf[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf
    }
}

fn nft(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

/// One expression of a rule: its name and its (nested) data, built by `data`.
fn expr(m: &mut Msg, name: &str, data: impl FnOnce(&mut Msg)) {
    m.begin(1); // NFTA_LIST_ELEM
    m.str(1, name); // NFTA_EXPR_NAME
    m.begin(2); // NFTA_EXPR_DATA
    data(m);
    m.end();
    m.end();
}

fn cmp_eq(m: &mut Msg, value: &[u8]) {
    expr(m, "cmp", |m| {
        m.u32be(1, NFT_REG_1); // NFTA_CMP_SREG
        m.u32be(2, NFT_CMP_EQ); // NFTA_CMP_OP
        m.begin(3); // NFTA_CMP_DATA
        m.attr(1, value); // NFTA_DATA_VALUE
        m.end();
    });
}

fn batch_begin() -> Vec<u8> {
    Msg::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        1,
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish()
}

fn batch_end(seq: u32) -> Vec<u8> {
    Msg::new(
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish()
}

/// A batch of lock rules, creating table `table` (family inet) with its input chain first when
/// `with_table`; each rule drops the peer's packets of one connection in `conns`.
fn lock_batch(table: &str, conns: &[Conn], with_table: bool) -> Vec<u8> {
    let flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;
    let mut seq = 1;
    let mut out = batch_begin();
    if with_table {
        seq += 1;
        let mut m = Msg::new(nft(NFT_MSG_NEWTABLE), flags, seq, NFPROTO_INET, 0);
        m.str(1, table); // NFTA_TABLE_NAME
        out.extend(m.finish());
        seq += 1;
        let mut m = Msg::new(nft(NFT_MSG_NEWCHAIN), flags, seq, NFPROTO_INET, 0);
        m.str(1, table).str(3, "input"); // NFTA_CHAIN_TABLE, NFTA_CHAIN_NAME
        m.begin(4); // NFTA_CHAIN_HOOK
        m.u32be(1, NF_INET_LOCAL_IN); // NFTA_HOOK_HOOKNUM
        m.u32be(2, (-300i32) as u32); // NFTA_HOOK_PRIORITY: before conntrack and filter
        m.end();
        m.str(7, "filter"); // NFTA_CHAIN_TYPE
        out.extend(m.finish());
        seq += 1;
        out.extend(accept_marked(table, seq, flags));
    }
    // Appended: after the rule letting injected segments through.
    for c in conns {
        seq += 1;
        out.extend(rule(table, c, seq, flags | NLM_F_APPEND));
    }
    out.extend(batch_end(seq + 1));
    out
}

/// The chain's first rule: segments marked [`INJECTED_MARK`] pass.
fn accept_marked(table: &str, seq: u32, flags: u16) -> Vec<u8> {
    let mut m = Msg::new(nft(NFT_MSG_NEWRULE), flags, seq, NFPROTO_INET, 0);
    m.str(1, table).str(2, "input"); // NFTA_RULE_TABLE, NFTA_RULE_CHAIN
    m.begin(4); // NFTA_RULE_EXPRESSIONS
    expr(&mut m, "meta", |m| {
        m.u32be(2, NFT_META_MARK); // NFTA_META_KEY
        m.u32be(1, NFT_REG_1); // NFTA_META_DREG
    });
    // The mark sits in the register in host order.
    cmp_eq(&mut m, &INJECTED_MARK.to_ne_bytes());
    verdict(&mut m, NF_ACCEPT);
    m.end();
    m.finish()
}

fn verdict(m: &mut Msg, code: u32) {
    expr(m, "immediate", |m| {
        m.u32be(1, NFT_REG_VERDICT); // NFTA_IMMEDIATE_DREG
        m.begin(2); // NFTA_IMMEDIATE_DATA
        m.begin(2); // NFTA_DATA_VERDICT
        m.u32be(1, code); // NFTA_VERDICT_CODE
        m.end();
        m.end();
    });
}

/// A rule dropping the peer's packets of one connection.
fn rule(table: &str, c: &Conn, seq: u32, flags: u16) -> Vec<u8> {
    let mut m = Msg::new(nft(NFT_MSG_NEWRULE), flags, seq, NFPROTO_INET, 0);
    m.str(1, table).str(2, "input"); // NFTA_RULE_TABLE, NFTA_RULE_CHAIN
    m.begin(4); // NFTA_RULE_EXPRESSIONS
    expr(&mut m, "meta", |m| {
        m.u32be(2, NFT_META_L4PROTO); // NFTA_META_KEY
        m.u32be(1, NFT_REG_1); // NFTA_META_DREG
    });
    cmp_eq(&mut m, &[libc::IPPROTO_TCP as u8]);
    // Source port (the peer's), then destination port (ours): 4 bytes at offset 0.
    expr(&mut m, "payload", |m| {
        m.u32be(1, NFT_REG_1); // NFTA_PAYLOAD_DREG
        m.u32be(2, NFT_PAYLOAD_TRANSPORT_HEADER); // NFTA_PAYLOAD_BASE
        m.u32be(3, 0); // NFTA_PAYLOAD_OFFSET
        m.u32be(4, 4); // NFTA_PAYLOAD_LEN
    });
    let mut ports = c.remote_port.to_be_bytes().to_vec();
    ports.extend_from_slice(&c.local_port.to_be_bytes());
    cmp_eq(&mut m, &ports);
    verdict(&mut m, NF_DROP);
    m.end();
    m.finish()
}

fn unlock_batch(table: &str) -> Vec<u8> {
    let mut out = Msg::new(
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        1,
        0,
        NFNL_SUBSYS_NFTABLES,
    )
    .finish();
    let mut m = Msg::new(
        nft(NFT_MSG_DELTABLE),
        NLM_F_REQUEST | NLM_F_ACK,
        2,
        NFPROTO_INET,
        0,
    );
    m.str(1, table);
    out.extend(m.finish());
    out.extend(
        Msg::new(
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            3,
            0,
            NFNL_SUBSYS_NFTABLES,
        )
        .finish(),
    );
    out
}

/// A NETLINK_NETFILTER socket, in the calling thread's network namespace.
pub(crate) fn nf_socket() -> io::Result<OwnedFd> {
    socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkNetFilter,
    )
    .map_err(io::Error::from)
}

/// Sends a batch and reads one ack per acked message; the first error wins. The socket is made
/// in the network namespace `ns`, or the caller's when `None`.
fn send(
    ns: Option<BorrowedFd<'_>>,
    batch: &[u8],
    acks: usize,
    what: &'static str,
) -> Result<(), LockError> {
    let err = |source| LockError::Netlink { what, source };
    let sock = match ns {
        Some(ns) => crate::nsenter::in_netns(ns, nf_socket),
        None => nf_socket(),
    }
    .map_err(err)?;
    // The kernel's address (port 0). A netlink datagram is sent whole or not at all.
    sendto(
        sock.as_raw_fd(),
        batch,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map_err(|e| err(e.into()))?;
    let mut seen = 0;
    let mut buf = vec![0u8; 65536];
    while seen < acks {
        let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(|e| err(e.into()))?;
        let mut off = 0usize;
        while off + 16 <= n {
            let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
            let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
            if len < 16 {
                break;
            }
            if ty == NLMSG_ERROR && off + 20 <= n {
                let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                if code != 0 {
                    return Err(err(io::Error::from_raw_os_error(-code)));
                }
                seen += 1;
            }
            off += (len + 3) & !3;
        }
    }
    Ok(())
}

/// Rules per batch: a netlink message must fit the socket's buffers.
const RULES_PER_BATCH: usize = 200;

/// Locks `conns` under table `table` (created; it must not exist yet).
pub fn lock(table: &str, conns: &[Conn]) -> Result<(), LockError> {
    add(table, conns, true)
}

/// Adds rules for `conns` to lock table `table`, creating the table (and its chain) first when
/// `create`. On failure a table this call created is removed again.
pub fn add(table: &str, conns: &[Conn], create: bool) -> Result<(), LockError> {
    add_at(None, table, conns, create)
}

/// Removes the lock table `table`.
pub fn unlock(table: &str) -> Result<(), LockError> {
    unlock_at(None, table)
}

/// [`lock`] in the network namespace `ns` (a container's, whose connections the lock holds),
/// the caller staying in its own.
pub fn lock_in(ns: BorrowedFd<'_>, table: &str, conns: &[Conn]) -> Result<(), LockError> {
    add_at(Some(ns), table, conns, true)
}

/// [`add`] in the network namespace `ns`.
pub fn add_in(
    ns: BorrowedFd<'_>,
    table: &str,
    conns: &[Conn],
    create: bool,
) -> Result<(), LockError> {
    add_at(Some(ns), table, conns, create)
}

/// [`unlock`] in the network namespace `ns`.
pub fn unlock_in(ns: BorrowedFd<'_>, table: &str) -> Result<(), LockError> {
    unlock_at(Some(ns), table)
}

fn add_at(
    ns: Option<BorrowedFd<'_>>,
    table: &str,
    conns: &[Conn],
    create: bool,
) -> Result<(), LockError> {
    let mut first = create;
    for chunk in conns.chunks(RULES_PER_BATCH) {
        let acks = chunk.len() + if first { 2 } else { 0 };
        if let Err(e) = send(ns, &lock_batch(table, chunk, first), acks, "lock") {
            if create && !first {
                // Best effort: the lock error is the one reported, and a table left behind
                // is named in it by the caller's next attempt (it must not exist yet).
                let _ = unlock_at(ns, table);
            }
            return Err(e);
        }
        first = false;
    }
    Ok(())
}

fn unlock_at(ns: Option<BorrowedFd<'_>>, table: &str) -> Result<(), LockError> {
    send(ns, &unlock_batch(table), 1, "unlock")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_well_formed() {
        let b = lock_batch(
            "t",
            &[Conn {
                local_port: 80,
                remote_port: 5555,
            }],
            true,
        );
        // Walk the messages: lengths add up, every one is 4-aligned, begin and end frame it.
        let mut off = 0;
        let mut types = Vec::new();
        while off < b.len() {
            let len = u32::from_ne_bytes(b[off..off + 4].try_into().unwrap()) as usize;
            assert!(len >= 20 && len.is_multiple_of(4), "message length {len}");
            types.push(u16::from_ne_bytes(b[off + 4..off + 6].try_into().unwrap()));
            off += len;
        }
        assert_eq!(off, b.len());
        assert_eq!(types, vec![0x10, 0x0a00, 0x0a03, 0x0a06, 0x0a06, 0x11]);
        // The first rule accepts CRIU's mark (in host order); the drop rule is appended after.
        assert!(b.windows(4).any(|w| w == 0xC114u32.to_ne_bytes()));
        let flags: Vec<u16> = {
            let mut off = 0;
            let mut f = Vec::new();
            while off < b.len() {
                let len = u32::from_ne_bytes(b[off..off + 4].try_into().unwrap()) as usize;
                f.push(u16::from_ne_bytes(b[off + 6..off + 8].try_into().unwrap()));
                off += len;
            }
            f
        };
        assert_eq!(flags[3] & NLM_F_APPEND, 0);
        assert_ne!(flags[4] & NLM_F_APPEND, 0);
        // The rule carries the ports, peer's first, in network order.
        let needle = [0x15, 0xb3, 0x00, 0x50];
        assert!(b.windows(4).any(|w| w == needle));
        let u = unlock_batch("t");
        assert_eq!(
            u16::from_ne_bytes(u[20 + 4..20 + 6].try_into().unwrap()),
            0x0a02
        );
    }
}
