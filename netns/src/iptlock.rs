//! CRIU's iptables network lock, taken away after a restore on the host that dumped. CRIU
//! (without its nftables build) locks each dumped TCP connection with two rules made by the
//! iptables binary, in INPUT and in OUTPUT of table filter: `-p tcp -m mark ! --mark 0xC114
//! --source A --sport P --destination B --dport Q -j DROP`. They stay until its restore deletes
//! them; a restore by stasis must do the same, or the connections' packets stay dropped. With
//! iptables' nf_tables backend (Debian's default) those rules are nftables rules: listed and
//! deleted here over nf_tables netlink (no iptables binary is run). Rules of the legacy backend
//! are out of reach.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use nix::sys::socket::{recv, sendto, MsgFlags, NetlinkAddr};

use crate::nftlock::LockError;

const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_DUMP: u16 = 0x300;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_IPV6: u8 = 10;
const NF_DROP: u32 = 0;

/// One locked connection, as CRIU's rules name it: addresses (4 or 16 bytes) and ports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockedConn {
    pub local: Vec<u8>,
    pub local_port: u16,
    pub remote: Vec<u8>,
    pub remote_port: u16,
}

/// A rule of table filter, as far as CRIU's lock rules need: its chain and handle, the values
/// its comparisons hold, and whether it drops.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Rule {
    pub chain: String,
    pub handle: u64,
    pub values: Vec<Vec<u8>>,
    pub drops: bool,
}

impl Rule {
    /// Whether this is one of CRIU's two lock rules of `c` (INPUT or OUTPUT: both compare
    /// the same four values, the other way round).
    pub fn locks(&self, c: &LockedConn) -> bool {
        let has = |v: &[u8]| self.values.iter().any(|x| x == v);
        let (lp, rp) = (c.local_port.to_be_bytes(), c.remote_port.to_be_bytes());
        // iptables-nft compares both ports at once (4 bytes: source, then destination).
        let ports = (has(&lp) && has(&rp))
            || has(&[rp[0], rp[1], lp[0], lp[1]])
            || has(&[lp[0], lp[1], rp[0], rp[1]]);
        self.drops
            && matches!(self.chain.as_str(), "INPUT" | "OUTPUT")
            && has(&c.local)
            && has(&c.remote)
            && ports
    }
}

/// A netlink header and nfgenmsg for message type `ty` (an nf_tables one is
/// `(NFNL_SUBSYS_NFTABLES << 8) | msg`, see [`nft`]).
fn header(ty: u16, flags: u16, seq: u32, family: u8) -> Vec<u8> {
    let mut m = Vec::with_capacity(64);
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&seq.to_ne_bytes());
    m.extend_from_slice(&0u32.to_ne_bytes());
    m.extend_from_slice(&[family, 0, 0, 0]);
    m
}

fn nft(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

fn attr(m: &mut Vec<u8>, ty: u16, data: &[u8]) {
    m.extend_from_slice(&((4 + data.len()) as u16).to_ne_bytes());
    m.extend_from_slice(&ty.to_ne_bytes());
    m.extend_from_slice(data);
    while !m.len().is_multiple_of(4) {
        m.push(0);
    }
}

fn finish(mut m: Vec<u8>) -> Vec<u8> {
    let len = m.len() as u32;
    m[0..4].copy_from_slice(&len.to_ne_bytes());
    m
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// A dump request for the rules of table filter of `family`.
pub fn list_request(family: u8, seq: u32) -> Vec<u8> {
    let mut m = header(
        nft(NFT_MSG_GETRULE),
        NLM_F_REQUEST | NLM_F_DUMP,
        seq,
        family,
    );
    attr(&mut m, 1, &cstr("filter")); // NFTA_RULE_TABLE
    finish(m)
}

/// The attributes of `buf` as (type without flags, payload); stops at a malformed one.
fn attrs(buf: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut off = 0;
    while off + 4 <= buf.len() {
        let len = u16::from_ne_bytes([buf[off], buf[off + 1]]) as usize;
        let ty = u16::from_ne_bytes([buf[off + 2], buf[off + 3]]) & 0x3fff;
        if len < 4 || off + len > buf.len() {
            break;
        }
        out.push((ty, &buf[off + 4..off + len]));
        off += (len + 3) & !3;
    }
    out
}

fn nested(buf: &[u8], ty: u16) -> Option<&[u8]> {
    attrs(buf)
        .into_iter()
        .find(|(t, _)| *t == ty)
        .map(|(_, v)| v)
}

/// One rule message's payload (after the nfgenmsg header).
fn parse_rule(body: &[u8]) -> Rule {
    let mut r = Rule::default();
    for (ty, v) in attrs(body) {
        match ty {
            2 => {
                r.chain = String::from_utf8_lossy(v)
                    .trim_end_matches('\0')
                    .to_string()
            }
            3 if v.len() == 8 => r.handle = u64::from_be_bytes(v.try_into().expect("8 bytes")),
            4 => {
                for (_, elem) in attrs(v) {
                    let name = nested(elem, 1)
                        .map(|n| {
                            String::from_utf8_lossy(n)
                                .trim_end_matches('\0')
                                .to_string()
                        })
                        .unwrap_or_default();
                    let Some(data) = nested(elem, 2) else {
                        continue;
                    };
                    match name.as_str() {
                        // NFTA_CMP_DATA, NFTA_DATA_VALUE
                        "cmp" => {
                            if let Some(value) = nested(data, 3).and_then(|d| nested(d, 1)) {
                                r.values.push(value.to_vec());
                            }
                        }
                        // NFTA_IMMEDIATE_DATA, NFTA_DATA_VERDICT, NFTA_VERDICT_CODE
                        "immediate" => {
                            let code = nested(data, 2)
                                .and_then(|d| nested(d, 2))
                                .and_then(|d| nested(d, 1))
                                .filter(|c| c.len() == 4)
                                .map(|c| u32::from_be_bytes(c.try_into().expect("4 bytes")));
                            if code == Some(NF_DROP) {
                                r.drops = true;
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    r
}

/// Parses one buffer of a rule dump: the rules, whether the dump is done, an errno.
pub fn parse_rules(buf: &[u8]) -> (Vec<Rule>, bool, Option<i32>) {
    let (mut rules, mut done, mut errno) = (Vec::new(), false, None);
    let mut off = 0;
    while off + 16 <= buf.len() {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().expect("4")) as usize;
        let ty = u16::from_ne_bytes(buf[off + 4..off + 6].try_into().expect("2"));
        if len < 16 || off + len > buf.len() {
            break;
        }
        match ty {
            NLMSG_DONE => done = true,
            NLMSG_ERROR if len >= 20 => {
                let code = i32::from_ne_bytes(buf[off + 16..off + 20].try_into().expect("4"));
                errno = Some(-code);
                done = true;
            }
            t if t == nft(NFT_MSG_NEWRULE) && len >= 20 => {
                rules.push(parse_rule(&buf[off + 20..off + len]));
            }
            _ => {}
        }
        off += (len + 3) & !3;
    }
    (rules, done, errno)
}

/// A batch deleting `rules` (by handle) from table filter of `family`.
pub fn delete_batch(family: u8, rules: &[&Rule]) -> Vec<u8> {
    let mut out = finish(header(0x10, NLM_F_REQUEST, 1, 0)); // NFNL_MSG_BATCH_BEGIN
    out[16 + 2..16 + 4].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    let mut seq = 1;
    for r in rules {
        seq += 1;
        let mut m = header(nft(NFT_MSG_DELRULE), NLM_F_REQUEST | NLM_F_ACK, seq, family);
        attr(&mut m, 1, &cstr("filter"));
        attr(&mut m, 2, &cstr(&r.chain));
        attr(&mut m, 3, &r.handle.to_be_bytes());
        out.extend(finish(m));
    }
    let mut end = finish(header(0x11, NLM_F_REQUEST, seq + 1, 0)); // NFNL_MSG_BATCH_END
    end[16 + 2..16 + 4].copy_from_slice(&NFNL_SUBSYS_NFTABLES.to_be_bytes());
    out.extend(end);
    out
}

fn nf_socket(ns: Option<BorrowedFd<'_>>) -> io::Result<std::os::fd::OwnedFd> {
    let make = || {
        nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Netlink,
            nix::sys::socket::SockType::Raw,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            nix::sys::socket::SockProtocol::NetlinkNetFilter,
        )
        .map_err(io::Error::from)
    };
    match ns {
        Some(ns) => crate::nsenter::in_netns(ns, make),
        None => make(),
    }
}

/// Deletes CRIU's iptables lock rules of `conns` (see the module), in the network namespace
/// `ns` or ours; returns how many it deleted. A missing table filter is no rule.
pub fn remove_criu_lock_rules(
    ns: Option<BorrowedFd<'_>>,
    conns: &[LockedConn],
) -> Result<usize, LockError> {
    let err = |what| move |source| LockError::Netlink { what, source };
    let mut removed = 0;
    for family in [NFPROTO_IPV4, NFPROTO_IPV6] {
        let width = if family == NFPROTO_IPV4 { 4 } else { 16 };
        let mine: Vec<&LockedConn> = conns.iter().filter(|c| c.local.len() == width).collect();
        if mine.is_empty() {
            continue;
        }
        let sock = nf_socket(ns).map_err(err("iptables rules socket"))?;
        sendto(
            sock.as_raw_fd(),
            &list_request(family, 1),
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|e| err("listing iptables rules")(e.into()))?;
        let mut rules = Vec::new();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| err("listing iptables rules")(e.into()))?;
            let (got, done, errno) = parse_rules(&buf[..n]);
            rules.extend(got);
            match errno {
                Some(0) | None => {}
                // No table filter (or no nf_tables at all): no rule of CRIU's.
                Some(libc::ENOENT) | Some(libc::EAFNOSUPPORT) => break,
                Some(e) => {
                    return Err(err("listing iptables rules")(io::Error::from_raw_os_error(
                        e,
                    )))
                }
            }
            if done || n == 0 {
                break;
            }
        }
        let doomed: Vec<&Rule> = rules
            .iter()
            .filter(|r| mine.iter().any(|c| r.locks(c)))
            .collect();
        if doomed.is_empty() {
            continue;
        }
        let batch = delete_batch(family, &doomed);
        sendto(
            sock.as_raw_fd(),
            &batch,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )
        .map_err(|e| err("deleting iptables rules")(e.into()))?;
        let mut acks = 0;
        while acks < doomed.len() {
            let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())
                .map_err(|e| err("deleting iptables rules")(e.into()))?;
            let (_, _, errno) = parse_rules(&buf[..n]);
            match errno {
                Some(0) => acks += 1,
                Some(e) => {
                    return Err(err("deleting iptables rules")(
                        io::Error::from_raw_os_error(e),
                    ))
                }
                None => break,
            }
        }
        removed += doomed.len();
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nest(ty: u16, inner: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        attr(&mut m, ty | 0x8000, inner);
        m
    }

    fn expr(name: &str, data: Vec<u8>) -> Vec<u8> {
        let mut e = Vec::new();
        attr(&mut e, 1, &cstr(name));
        e.extend(nest(2, &data));
        nest(1, &e)
    }

    fn cmp(value: &[u8]) -> Vec<u8> {
        let mut d = Vec::new();
        attr(&mut d, 1, &1u32.to_be_bytes());
        attr(&mut d, 2, &0u32.to_be_bytes());
        let mut v = Vec::new();
        attr(&mut v, 1, value);
        d.extend(nest(3, &v));
        expr("cmp", d)
    }

    fn rule_msg(chain: &str, handle: u64, exprs: &[Vec<u8>], verdict: u32) -> Vec<u8> {
        let mut m = header(nft(NFT_MSG_NEWRULE), 0, 1, NFPROTO_IPV4);
        attr(&mut m, 1, &cstr("filter"));
        attr(&mut m, 2, &cstr(chain));
        attr(&mut m, 3, &handle.to_be_bytes());
        let mut list: Vec<u8> = exprs.concat();
        let mut code = Vec::new();
        attr(&mut code, 1, &verdict.to_be_bytes());
        let mut imm = Vec::new();
        attr(&mut imm, 1, &0u32.to_be_bytes());
        imm.extend(nest(2, &nest(2, &code)));
        list.extend(expr("immediate", imm));
        m.extend(nest(4, &list));
        finish(m)
    }

    #[test]
    fn criu_lock_rules_are_found_and_others_left() {
        let c = LockedConn {
            local: vec![127, 0, 0, 1],
            local_port: 6390,
            remote: vec![127, 0, 0, 1],
            remote_port: 41000,
        };
        let lock = rule_msg(
            "INPUT",
            7,
            &[
                cmp(&[6]),
                cmp(&0xc114u32.to_ne_bytes()),
                cmp(&c.remote),
                cmp(&c.remote_port.to_be_bytes()),
                cmp(&c.local),
                cmp(&c.local_port.to_be_bytes()),
            ],
            NF_DROP,
        );
        let accept = rule_msg(
            "INPUT",
            8,
            &[cmp(&c.remote), cmp(&c.local_port.to_be_bytes())],
            1, // NF_ACCEPT
        );
        // As iptables-nft writes them: both ports in one comparison.
        let mut both = c.local_port.to_be_bytes().to_vec();
        both.extend_from_slice(&c.remote_port.to_be_bytes());
        let output = rule_msg(
            "OUTPUT",
            9,
            &[cmp(&[6]), cmp(&c.local), cmp(&c.remote), cmp(&both)],
            NF_DROP,
        );
        assert!(
            parse_rules(&output).0[0].locks(&c),
            "ports compared at once"
        );
        let mut buf = lock.clone();
        buf.extend(accept);
        let (rules, done, errno) = parse_rules(&buf);
        assert!(!done && errno.is_none());
        assert_eq!(rules.len(), 2);
        assert_eq!((rules[0].chain.as_str(), rules[0].handle), ("INPUT", 7));
        assert!(rules[0].locks(&c), "{:?}", rules[0]);
        assert!(!rules[1].locks(&c), "not a drop rule");
        let other = LockedConn {
            local_port: 6391,
            ..c.clone()
        };
        assert!(!rules[0].locks(&other), "another connection's");
        let batch = delete_batch(NFPROTO_IPV4, &[&rules[0]]);
        let types: Vec<u16> = {
            let mut t = Vec::new();
            let mut off = 0;
            while off < batch.len() {
                let len = u32::from_ne_bytes(batch[off..off + 4].try_into().unwrap()) as usize;
                t.push(u16::from_ne_bytes(
                    batch[off + 4..off + 6].try_into().unwrap(),
                ));
                off += len;
            }
            t
        };
        assert_eq!(types, vec![0x10, 0x0a08, 0x11]);
    }

    #[test]
    fn broken_replies_end_the_parse() {
        assert!(parse_rules(&[1, 2, 3]).0.is_empty());
        let mut m = 200u32.to_ne_bytes().to_vec();
        m.extend_from_slice(&[0u8; 20]);
        assert!(parse_rules(&m).0.is_empty());
    }
}
