//! A network namespace's nftables ruleset (iptables-nft's rules included): read over
//! nf_tables netlink as the kernel dumps it, and made again in a new namespace in one
//! transaction, from the same messages (no `nft` or `iptables` binary is run).
//!
//! A dump answer of nf_tables is, attribute for attribute, the request that makes the object,
//! but for what only the kernel sets: only the attributes a request carries are kept, so
//! handles (which in a request mean "change the object of this handle"), use counts, rule
//! positions and a newer kernel's read-only attributes go; a table's owner flag (tying it to
//! the netlink socket that made it) too. Tables, chains, stateful objects, flowtables,
//! sets, their elements and rules are replayed in that order, each rule appended, so jumps,
//! set lookups, maps and object references find what they name in the same transaction;
//! counters and quotas come back with their values.
//!
//! CRIU saves the ruleset as `nft list ruleset` text in `nftables-<id>.img`, through
//! libnftables; this is saved in a file of its own instead ([`to_image`]), which CRIU does not
//! read. The framing and the message building are pure and unit-tested; [`dump`] and
//! [`restore`] do the netlink round trips.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::sys::socket::{recv, sendto, setsockopt, sockopt, MsgFlags, NetlinkAddr};

use crate::rtnl::{self, Raw, RtnlError};

/// Reading or restoring a ruleset failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    #[error("nftables netlink: {what}")]
    Netlink {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request, or answered what does not parse.
    #[error("nftables netlink: {what}")]
    Refused {
        what: String,
        #[source]
        source: RtnlError,
    },
    #[error("nftables image: {0}")]
    Image(String),
    #[error("nftables: the ruleset kept changing while it was read")]
    Unstable,
}

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLA_TYPE_MASK: u16 = 0x3fff;

const NEWTABLE: u16 = 0;
const NEWCHAIN: u16 = 3;
const NEWRULE: u16 = 6;
const NEWSET: u16 = 9;
const NEWSETELEM: u16 = 12;
const NEWGEN: u16 = 15;
const NEWOBJ: u16 = 18;
const NEWFLOWTABLE: u16 = 22;
/// Each kind's GET is its NEW plus one.
const GET: u16 = 1;

/// The order a ruleset is made in: what a later kind names exists before it.
const ORDER: [u16; 7] = [
    NEWTABLE,
    NEWCHAIN,
    NEWOBJ,
    NEWFLOWTABLE,
    NEWSET,
    NEWSETELEM,
    NEWRULE,
];

/// One object of the ruleset: its NEW message type, family (nfgenmsg) and attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NftObject {
    pub msg: u16,
    pub family: u8,
    pub attrs: Vec<u8>,
}

/// The attributes a request making an object of this kind carries (linux/netfilter/
/// nf_tables.h); the rest of a dump answer is the kernel's own (handles, use counts,
/// positions, padding, a table's owner, a set's backend and element count): left out, as a
/// newer kernel's read-only attributes are.
fn settable(msg: u16) -> &'static [u16] {
    match msg {
        // NAME, FLAGS, USERDATA.
        NEWTABLE => &[1, 2, 6],
        // TABLE, NAME, HOOK, POLICY, TYPE, COUNTERS, FLAGS, USERDATA.
        NEWCHAIN => &[1, 3, 4, 5, 7, 8, 10, 12],
        // TABLE, CHAIN, EXPRESSIONS, COMPAT, USERDATA.
        NEWRULE => &[1, 2, 4, 5, 7],
        // TABLE, NAME, FLAGS, KEY_TYPE, KEY_LEN, DATA_TYPE, DATA_LEN, POLICY, DESC, TIMEOUT,
        // GC_INTERVAL, USERDATA, OBJ_TYPE, EXPR, EXPRESSIONS.
        NEWSET => &[1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 15, 17, 18],
        // LIST_TABLE, LIST_SET, LIST_ELEMENTS.
        NEWSETELEM => &[1, 2, 3],
        // TABLE, NAME, TYPE, DATA, USERDATA.
        NEWOBJ => &[1, 2, 3, 4, 8],
        // TABLE, NAME, HOOK, FLAGS.
        NEWFLOWTABLE => &[1, 2, 3, 7],
        _ => &[],
    }
}

const NFTA_TABLE_FLAGS: u16 = 2;
const NFT_TABLE_F_OWNER: u32 = 0x2;

/// The attributes of a netlink payload: (type without flags, whole attribute bytes). A
/// malformed one ends the walk.
fn attributes(mut b: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while b.len() >= 4 {
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            break;
        }
        out.push((ty, &b[..len]));
        let step = (len + 3) & !3;
        b = &b[step.min(b.len())..];
    }
    out
}

/// The value of attribute `ty` (without its header).
fn attr(b: &[u8], ty: u16) -> Option<&[u8]> {
    attributes(b)
        .into_iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, a)| &a[4..])
}

/// A NUL-terminated string attribute.
fn attr_str(b: &[u8], ty: u16) -> Option<String> {
    let v = attr(b, ty)?;
    let v = v.split(|c| *c == 0).next().unwrap_or(v);
    Some(String::from_utf8_lossy(v).into_owned())
}

/// The table an object belongs to (attribute 1 of every kind names it).
pub fn table_of(o: &NftObject) -> Option<String> {
    attr_str(&o.attrs, 1)
}

/// `o`'s attributes as a request may carry them.
fn request_attrs(o: &NftObject) -> Vec<u8> {
    let keep = settable(o.msg);
    let mut out = Vec::with_capacity(o.attrs.len());
    for (ty, a) in attributes(&o.attrs) {
        // An empty one (a set's description without size or fields) is refused (EINVAL).
        if !keep.contains(&ty) || a.len() == 4 {
            continue;
        }
        let start = out.len();
        out.extend_from_slice(a);
        if o.msg == NEWTABLE && ty == NFTA_TABLE_FLAGS && a.len() == 8 {
            let flags = u32::from_be_bytes([a[4], a[5], a[6], a[7]]) & !NFT_TABLE_F_OWNER;
            out[start + 4..start + 8].copy_from_slice(&flags.to_be_bytes());
        }
        out.resize((out.len() + 3) & !3, 0);
    }
    out
}

/// NFTA_SET_ID, which the kernel requires of a new set (a transaction's own name for it).
const NFTA_SET_ID: u16 = 10;

fn header(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) {
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(&[family, 0]);
    buf.extend_from_slice(&res_id.to_be_bytes());
}

fn finish(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

/// One batch making every object of `objects` in [`ORDER`], each acknowledged; message `i + 2`
/// (its sequence number) is `objects`' `order[i]`. Returns the batch and that order.
pub fn restore_batch(objects: &[NftObject]) -> (Vec<u8>, Vec<usize>) {
    let mut order = Vec::with_capacity(objects.len());
    for kind in ORDER {
        order.extend((0..objects.len()).filter(|&i| objects[i].msg == kind));
    }
    let mut buf = Vec::new();
    header(
        &mut buf,
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        1,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    finish(&mut buf, 0);
    for (n, &i) in order.iter().enumerate() {
        let o = &objects[i];
        let start = buf.len();
        let mut flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_ACK;
        if o.msg == NEWRULE {
            flags |= NLM_F_APPEND;
        }
        let ty = (NFNL_SUBSYS_NFTABLES << 8) | o.msg;
        header(&mut buf, ty, flags, n as u32 + 2, o.family, 0);
        buf.extend_from_slice(&request_attrs(o));
        if o.msg == NEWSET {
            buf.extend_from_slice(&8u16.to_ne_bytes());
            buf.extend_from_slice(&NFTA_SET_ID.to_ne_bytes());
            buf.extend_from_slice(&(n as u32 + 1).to_be_bytes());
        }
        finish(&mut buf, start);
    }
    let start = buf.len();
    let end_seq = order.len() as u32 + 2;
    header(
        &mut buf,
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        end_seq,
        0,
        NFNL_SUBSYS_NFTABLES,
    );
    finish(&mut buf, start);
    (buf, order)
}

const IMAGE_MAGIC: &[u8; 8] = b"STNFT01\n";

/// The image of a ruleset: a magic, then per object its message type (u16), family (u8), a
/// zero byte, its attributes' length (u32) and the attributes, little-endian.
pub fn to_image(objects: &[NftObject]) -> Vec<u8> {
    let mut out = IMAGE_MAGIC.to_vec();
    for o in objects {
        out.extend_from_slice(&o.msg.to_le_bytes());
        out.extend_from_slice(&[o.family, 0]);
        out.extend_from_slice(&(o.attrs.len() as u32).to_le_bytes());
        out.extend_from_slice(&o.attrs);
    }
    out
}

/// The objects of an image made by [`to_image`]; a truncated or foreign one is an error.
pub fn from_image(mut b: &[u8]) -> Result<Vec<NftObject>, NftError> {
    if !b.starts_with(IMAGE_MAGIC) {
        return Err(NftError::Image("not a stasis nftables image".into()));
    }
    b = &b[IMAGE_MAGIC.len()..];
    let mut out = Vec::new();
    while !b.is_empty() {
        if b.len() < 8 {
            return Err(NftError::Image("truncated object header".into()));
        }
        let msg = u16::from_le_bytes([b[0], b[1]]);
        let family = b[2];
        let len = u32::from_le_bytes([b[4], b[5], b[6], b[7]]) as usize;
        if !ORDER.contains(&msg) {
            return Err(NftError::Image(format!("unknown object kind {msg}")));
        }
        let Some(attrs) = b.get(8..8 + len) else {
            return Err(NftError::Image(format!(
                "an object of {len} bytes past the end"
            )));
        };
        out.push(NftObject {
            msg,
            family,
            attrs: attrs.to_vec(),
        });
        b = &b[8 + len..];
    }
    Ok(out)
}

fn nl_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> NftError {
    let what = what.into();
    move |source| NftError::Netlink { what, source }
}

fn refused(what: impl Into<String>) -> impl FnOnce(RtnlError) -> NftError {
    let what = what.into();
    move |source| NftError::Refused { what, source }
}

/// A netlink message's payload, after its header.
fn payload<'a>(m: &Raw<'a>) -> &'a [u8] {
    m.bytes.get(16..).unwrap_or_default()
}

fn nf_socket(ns: BorrowedFd<'_>, room: usize) -> Result<OwnedFd, NftError> {
    let sock = crate::nsenter::in_netns(ns, crate::nftlock::nf_socket)
        .map_err(nl_err("socket in the namespace"))?;
    // A whole ruleset goes in one datagram, and every object is acknowledged.
    let _ = setsockopt(&sock, sockopt::SndBufForce, &room);
    let _ = setsockopt(&sock, sockopt::RcvBufForce, &room);
    Ok(sock)
}

fn send(sock: &OwnedFd, bytes: &[u8], what: &str) -> Result<(), NftError> {
    sendto(
        sock.as_raw_fd(),
        bytes,
        &NetlinkAddr::new(0, 0),
        MsgFlags::empty(),
    )
    .map(drop)
    .map_err(|e| nl_err(format!("sending {what}"))(e.into()))
}

/// The messages of the next datagram of the answer.
fn receive<'a>(sock: &OwnedFd, buf: &'a mut [u8], what: &str) -> Result<Vec<Raw<'a>>, NftError> {
    let n = recv(sock.as_raw_fd(), buf, MsgFlags::empty())
        .map_err(|e| nl_err(format!("reading the answer to {what}"))(e.into()))?;
    rtnl::split(&buf[..n]).map_err(refused(format!("reading the answer to {what}")))
}

/// Sends `req` and collects the payloads of the answer's messages up to NLMSG_DONE: the
/// objects of a dump, with their NEW type.
fn dump_request(sock: &OwnedFd, req: &[u8], what: &str) -> Result<Vec<(u16, Vec<u8>)>, NftError> {
    send(sock, req, what)?;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        for m in receive(sock, &mut buf, what)? {
            match m.ty {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => rtnl::ack(m).map_err(refused(what))?,
                t if t >> 8 == NFNL_SUBSYS_NFTABLES => out.push((t & 0xff, payload(&m).to_vec())),
                _ => {}
            }
        }
    }
}

fn get(msg: u16, family: u8, attrs: &[u8], seq: u32) -> Vec<u8> {
    let mut buf = Vec::new();
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | (msg + GET);
    header(&mut buf, ty, NLM_F_REQUEST | NLM_F_DUMP, seq, family, 0);
    buf.extend_from_slice(attrs);
    finish(&mut buf, 0);
    buf
}

fn str_attr(ty: u16, s: &str) -> Vec<u8> {
    let len = 4 + s.len() + 1;
    let mut a = Vec::with_capacity((len + 3) & !3);
    a.extend_from_slice(&(len as u16).to_ne_bytes());
    a.extend_from_slice(&ty.to_ne_bytes());
    a.extend_from_slice(s.as_bytes());
    a.push(0);
    a.resize((len + 3) & !3, 0);
    a
}

fn generation(sock: &OwnedFd) -> Result<Option<u32>, NftError> {
    let mut req = Vec::new();
    let ty = (NFNL_SUBSYS_NFTABLES << 8) | (NEWGEN + GET);
    header(&mut req, ty, NLM_F_REQUEST | NLM_F_ACK, 1, 0, 0);
    finish(&mut req, 0);
    let what = "the ruleset's generation";
    send(sock, &req, what)?;
    let mut buf = vec![0u8; 4096];
    let mut gen = None;
    loop {
        for m in receive(sock, &mut buf, what)? {
            if m.ty == (NFNL_SUBSYS_NFTABLES << 8) | NEWGEN {
                gen = attr(payload(&m).get(4..).unwrap_or_default(), 1)
                    .and_then(|v| v.get(..4))
                    .map(|v| u32::from_be_bytes([v[0], v[1], v[2], v[3]]));
            } else if m.ty == NLMSG_ERROR {
                rtnl::ack(m).map_err(refused(what))?;
                return Ok(gen);
            }
        }
    }
}

/// The ruleset of the network namespace `ns`, without the tables `skip` names (a network
/// lock's). A kernel without nf_tables has none.
pub fn dump(ns: BorrowedFd<'_>, skip: &dyn Fn(&str) -> bool) -> Result<Vec<NftObject>, NftError> {
    let sock = nf_socket(ns, 1 << 20)?;
    for _ in 0..3 {
        let before = match generation(&sock) {
            Ok(g) => g,
            // No nf_tables in this kernel (nfnetlink answers that no subsystem takes it).
            Err(NftError::Refused { source, .. })
                if matches!(
                    source.errno(),
                    Some(libc::EPROTONOSUPPORT | libc::EOPNOTSUPP | libc::ENOENT)
                ) =>
            {
                return Ok(Vec::new())
            }
            Err(e) => return Err(e),
        };
        let mut objects = Vec::new();
        let mut seq = 2;
        for kind in [NEWTABLE, NEWCHAIN, NEWOBJ, NEWFLOWTABLE, NEWSET, NEWRULE] {
            seq += 1;
            let what = format!("the ruleset (kind {kind})");
            for (ty, payload) in dump_request(&sock, &get(kind, 0, &[], seq), &what)? {
                let (Some(&family), Some(attrs)) = (payload.first(), payload.get(4..)) else {
                    continue;
                };
                objects.push(NftObject {
                    msg: ty,
                    family,
                    attrs: attrs.to_vec(),
                });
            }
        }
        objects.retain(|o| !table_of(o).is_some_and(|t| skip(&t)));
        // Each set's elements, asked for by table and set name.
        let sets: Vec<(u8, String, String)> = objects
            .iter()
            .filter(|o| o.msg == NEWSET)
            .filter_map(|o| Some((o.family, table_of(o)?, attr_str(&o.attrs, 2)?)))
            .collect();
        for (family, table, set) in sets {
            seq += 1;
            let mut attrs = str_attr(1, &table);
            attrs.extend(str_attr(2, &set));
            let what = format!("the elements of set {set} of table {table}");
            for (ty, payload) in dump_request(&sock, &get(NEWSETELEM, family, &attrs, seq), &what)?
            {
                if ty != NEWSETELEM {
                    continue;
                }
                // A dump may end with a message of no elements: nothing to make.
                let Some(attrs) = payload
                    .get(4..)
                    .filter(|a| attr(a, 3).is_some_and(|l| !l.is_empty()))
                else {
                    continue;
                };
                objects.push(NftObject {
                    msg: ty,
                    family,
                    attrs: attrs.to_vec(),
                });
            }
        }
        if generation(&sock)? == before {
            return Ok(objects);
        }
    }
    Err(NftError::Unstable)
}

/// Makes `objects` in the network namespace `ns` (a new one, where none of its tables is), in
/// one transaction: all or nothing.
pub fn restore(ns: BorrowedFd<'_>, objects: &[NftObject]) -> Result<(), NftError> {
    if objects.is_empty() {
        return Ok(());
    }
    let (batch, order) = restore_batch(objects);
    let sock = nf_socket(ns, batch.len() * 2 + (1 << 20))?;
    let what = "the ruleset";
    send(&sock, &batch, what)?;
    let mut acked = 0;
    let mut buf = vec![0u8; 1 << 16];
    while acked < order.len() {
        for m in receive(&sock, &mut buf, what)? {
            if m.ty != NLMSG_ERROR {
                continue;
            }
            let seq = m.seq;
            rtnl::ack(m).map_err(|e| {
                let object = (seq as usize)
                    .checked_sub(2)
                    .and_then(|k| order.get(k))
                    .map(|&i| describe(&objects[i]))
                    .unwrap_or_else(|| format!("message {seq}"));
                refused(format!("making {object}"))(e)
            })?;
            acked += 1;
        }
    }
    Ok(())
}

/// What an object is, for errors: its kind, name and table.
pub fn describe(o: &NftObject) -> String {
    let kind = match o.msg {
        NEWTABLE => "table",
        NEWCHAIN => "chain",
        NEWRULE => "rule",
        NEWSET => "set",
        NEWSETELEM => "elements of set",
        NEWOBJ => "object",
        NEWFLOWTABLE => "flowtable",
        _ => "object",
    };
    let table = table_of(o).unwrap_or_default();
    let name = match o.msg {
        NEWTABLE => None,
        NEWRULE => attr_str(&o.attrs, 2).map(|c| format!("in chain {c}")),
        _ => attr_str(&o.attrs, 2),
    };
    match name {
        Some(n) => format!("{kind} {n} of table {table}"),
        None => format!("{kind} {table}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(name: &str, flags: u32) -> NftObject {
        let mut attrs = str_attr(1, name);
        let mut f = vec![8, 0, 2, 0];
        f.extend_from_slice(&flags.to_be_bytes());
        attrs.extend(f);
        // NFTA_TABLE_USE and NFTA_TABLE_HANDLE (u64, with its 4-byte header).
        attrs.extend([8, 0, 3, 0, 0, 0, 0, 1]);
        attrs.extend([12, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 7]);
        NftObject {
            msg: NEWTABLE,
            family: 1,
            attrs,
        }
    }

    fn rule(tab: &str, chain: &str) -> NftObject {
        let mut attrs = str_attr(1, tab);
        attrs.extend(str_attr(2, chain));
        attrs.extend([12, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 9]); // handle
        attrs.extend([8, 0, 4, 0x80, 4, 0, 0, 0]); // a nested list (type 4 | NLA_F_NESTED)
        NftObject {
            msg: NEWRULE,
            family: 1,
            attrs,
        }
    }

    #[test]
    fn kernel_only_attributes_are_taken_out_and_the_owner_flag_cleared() {
        let t = table("filter", NFT_TABLE_F_OWNER | 1);
        let r = request_attrs(&t);
        let kept: Vec<u16> = attributes(&r).iter().map(|(ty, _)| *ty).collect();
        assert_eq!(kept, vec![1, 2]);
        assert_eq!(attr(&r, 2), Some(&1u32.to_be_bytes()[..]));
        let r = request_attrs(&rule("filter", "input"));
        let kept: Vec<u16> = attributes(&r).iter().map(|(ty, _)| *ty).collect();
        assert_eq!(kept, vec![1, 2, 4]);
    }

    #[test]
    fn batch_makes_tables_before_rules_and_appends_rules() {
        let objects = vec![rule("filter", "input"), table("filter", 0)];
        let (batch, order) = restore_batch(&objects);
        assert_eq!(order, vec![1, 0]);
        let msgs = rtnl::split(&batch).unwrap();
        let types: Vec<u16> = msgs.iter().map(|m| m.ty).collect();
        assert_eq!(types, vec![0x10, 0x0a00, 0x0a06, 0x11]);
        assert_ne!(msgs[2].flags & NLM_F_APPEND, 0);
        assert_eq!(msgs[1].flags & NLM_F_APPEND, 0);
        let seqs: Vec<u32> = msgs.iter().map(|m| m.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4]);
        // The batch header names nf_tables (res_id, big-endian).
        assert_eq!(
            &payload(&msgs[0])[2..4],
            &NFNL_SUBSYS_NFTABLES.to_be_bytes()
        );
        assert_eq!(payload(&msgs[1])[0], 1, "the object's family");
    }

    #[test]
    fn images_round_trip_and_bad_ones_are_refused() {
        let objects = vec![table("t", 0), rule("t", "c")];
        let img = to_image(&objects);
        assert_eq!(from_image(&img).unwrap(), objects);
        assert!(from_image(b"nonsense").is_err());
        assert!(from_image(&img[..img.len() - 3]).is_err());
        let mut bad = img.clone();
        bad[8] = 99; // an unknown kind
        assert!(from_image(&bad).is_err());
        // A length claiming far more than there is: refused, nothing allocated for it.
        let mut huge = IMAGE_MAGIC.to_vec();
        huge.extend([0, 0, 1, 0, 0xff, 0xff, 0xff, 0xff]);
        assert!(from_image(&huge).is_err());
        assert_eq!(from_image(IMAGE_MAGIC).unwrap(), vec![]);
    }

    #[test]
    fn objects_are_described_by_kind_name_and_table() {
        assert_eq!(describe(&table("filter", 0)), "table filter");
        assert_eq!(
            describe(&rule("filter", "input")),
            "rule in chain input of table filter"
        );
    }
}
