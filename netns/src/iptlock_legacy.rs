//! CRIU's iptables network lock on a host whose iptables is the legacy backend (x_tables):
//! the two DROP rules per connection its `iptables -I INPUT/OUTPUT --protocol tcp -m mark !
//! --mark 0xC114 --source A --sport P --destination B --dport Q -j DROP` made in table filter
//! (see [`crate::iptlock`] for the nf_tables backend's). They are found in the table's entries
//! as the kernel hands them out ([`crate::xtables`]) and the table is replaced without them,
//! under iptables' own lock file so that no iptables command changes it meanwhile; every other
//! entry keeps its counters. Finding and cutting entries is pure and unit-tested.

use std::os::fd::AsRawFd;

use crate::iptlock::LockedConn;
use crate::xtables::{entries, Entry, XtTable, HOOKS};

/// `xt_entry_match` / `xt_entry_target`: size (u16), name (29 bytes), revision, then data.
const XT_HEAD: usize = 32;
const NF_INET_LOCAL_IN: usize = 1;
const NF_INET_LOCAL_OUT: usize = 3;
/// A standard target's verdict for DROP (`-NF_DROP - 1`).
const VERDICT_DROP: i32 = -1;
const SOCCR_MARK: u32 = 0xC114;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn i32_at(b: &[u8], at: usize) -> Option<i32> {
    Some(i32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// The name of a match or target at `b` (NUL-terminated within 29 bytes).
fn xt_name(b: &[u8]) -> &[u8] {
    let name = b.get(2..31).unwrap_or(&[]);
    let end = name.iter().position(|c| *c == 0).unwrap_or(name.len());
    &name[..end]
}

/// Whether entry `e` of `t` is one of CRIU's lock rules of `c`, in either direction.
fn is_lock_rule(t: &XtTable, e: Entry, c: &LockedConn) -> Option<bool> {
    let l = t.family.layout();
    let b = t.entries.get(e.at..e.at + e.len)?;
    let (src, dst, smsk, dmsk, w) = l.addrs;
    if c.local.len() != w || c.remote.len() != w {
        return Some(false);
    }
    let full = |at: usize| b[at..at + w].iter().all(|x| *x == 0xff);
    if u16_at(b, l.proto_at)? != libc::IPPROTO_TCP as u16 || b[l.invflags_at] != 0 {
        return Some(false);
    }
    if !full(smsk) || !full(dmsk) {
        return Some(false);
    }
    let target_at = u16_at(b, l.target_at)? as usize;
    let target = b.get(target_at..)?;
    if !xt_name(target).is_empty() || i32_at(target, XT_HEAD)? != VERDICT_DROP {
        return Some(false);
    }
    // The matches: a tcp one with single ports, and the mark one CRIU's packets pass.
    let (mut ports, mut mark) = (None, false);
    let mut at = l.head;
    while at < target_at {
        let m = b.get(at..target_at)?;
        let size = u16_at(m, 0)? as usize;
        if size < XT_HEAD {
            return None;
        }
        match xt_name(m) {
            b"tcp" => {
                let (s0, s1) = (u16_at(m, XT_HEAD)?, u16_at(m, XT_HEAD + 2)?);
                let (d0, d1) = (u16_at(m, XT_HEAD + 4)?, u16_at(m, XT_HEAD + 6)?);
                if s0 == s1 && d0 == d1 {
                    ports = Some((s0, d0));
                }
            }
            b"mark" => mark = u32_at(m, XT_HEAD)? == SOCCR_MARK,
            _ => return Some(false),
        }
        at += size;
    }
    let Some((sport, dport)) = ports else {
        return Some(false);
    };
    let ends = (&b[src..src + w], sport, &b[dst..dst + w], dport);
    let inbound = (&c.remote[..], c.remote_port, &c.local[..], c.local_port);
    let outbound = (&c.local[..], c.local_port, &c.remote[..], c.remote_port);
    Some(mark && (ends == inbound || ends == outbound))
}

/// The entries of `t`'s INPUT and OUTPUT chains that lock one of `conns` (never a chain's
/// policy).
fn lock_entries(t: &XtTable, conns: &[LockedConn]) -> Option<Vec<Entry>> {
    let all = entries(t)?;
    let mut out = Vec::new();
    for hook in [NF_INET_LOCAL_IN, NF_INET_LOCAL_OUT] {
        if t.valid_hooks & (1 << hook) == 0 {
            continue;
        }
        let (first, policy) = (t.hook_entry[hook] as usize, t.underflow[hook] as usize);
        for e in all.iter().filter(|e| e.at >= first && e.at < policy) {
            let mut hit = false;
            for c in conns {
                hit |= is_lock_rule(t, *e, c)?;
            }
            if hit {
                out.push(*e);
            }
        }
    }
    Some(out)
}

/// `t` without the entries `cut`, with every offset into it (hook entries, underflows, jumps)
/// moved to the same entry's new place (one that pointed at a cut entry points at the entry
/// after it), and the indexes of the entries kept, in order.
fn without(t: &XtTable, cut: &[Entry]) -> Option<(XtTable, Vec<usize>)> {
    let all = entries(t)?;
    let l = t.family.layout();
    let removed = |e: &Entry| cut.contains(e);
    // Old offset → new one, for every entry start and for the table's end.
    let mut moved = std::collections::BTreeMap::new();
    let mut new_at = 0usize;
    for e in &all {
        moved.insert(e.at, new_at);
        if !removed(e) {
            new_at += e.len;
        }
    }
    moved.insert(t.entries.len(), new_at);
    let map = |old: u32| moved.get(&(old as usize)).map(|n| *n as u32);
    let mut entries = Vec::with_capacity(t.entries.len());
    let mut kept = Vec::new();
    for (i, e) in all.iter().enumerate().filter(|(_, e)| !removed(e)) {
        let mut b = t.entries[e.at..e.at + e.len].to_vec();
        let target_at = u16_at(&b, l.target_at)? as usize;
        // A standard target's verdict of 0 or more is a jump: an offset into the table.
        if xt_name(b.get(target_at..)?).is_empty() {
            let v = i32_at(&b, target_at + XT_HEAD)?;
            if v >= 0 {
                let to = map(v as u32)?;
                b[target_at + XT_HEAD..target_at + XT_HEAD + 4]
                    .copy_from_slice(&(to as i32).to_ne_bytes());
            }
        }
        entries.extend_from_slice(&b);
        kept.push(i);
    }
    let mut hook_entry = [0u32; HOOKS];
    let mut underflow = [0u32; HOOKS];
    for h in 0..HOOKS {
        if t.valid_hooks & (1 << h) != 0 {
            hook_entry[h] = map(t.hook_entry[h])?;
            underflow[h] = map(t.underflow[h])?;
        }
    }
    let out = XtTable {
        num_entries: kept.len() as u32,
        entries,
        hook_entry,
        underflow,
        ..t.clone()
    };
    Some((out, kept))
}

/// Holds iptables' lock file (`/run/xtables.lock`, which every `iptables -w` takes) while
/// the table is read and replaced; released when dropped.
struct XtablesLock {
    _held: Option<std::fs::File>,
}

impl XtablesLock {
    fn take() -> XtablesLock {
        let Ok(f) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open("/run/xtables.lock")
        else {
            return XtablesLock { _held: None };
        };
        // Waits at most 5 s, as iptables -w would wait, then goes on without it (the kernel
        // still refuses a replace whose entry count no longer matches).
        for _ in 0..500 {
            // SAFETY: flock(2) on an fd we own.
            if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return XtablesLock { _held: Some(f) };
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        XtablesLock { _held: None }
    }
}

/// Removes CRIU's legacy iptables lock rules of `conns` from table filter of the calling
/// thread's network namespace, in both families; returns how many. A namespace without
/// legacy tables has none.
pub fn remove_criu_lock_rules(conns: &[LockedConn]) -> Result<usize, crate::xtables::XtError> {
    if conns.is_empty() {
        return Ok(0);
    }
    let _lock = XtablesLock::take();
    let mut removed = 0;
    for table in crate::xtables::read_filter()? {
        let Some(cut) = lock_entries(&table, conns) else {
            return Err(unparsable(&table));
        };
        if cut.is_empty() {
            continue;
        }
        let (new, kept) = without(&table, &cut).ok_or_else(|| unparsable(&table))?;
        crate::xtables::replace_keeping_counters(&table, &new, &kept)?;
        removed += cut.len();
    }
    Ok(removed)
}

fn unparsable(t: &XtTable) -> crate::xtables::XtError {
    crate::xtables::XtError::Image(format!(
        "table {} ({:?}) as the kernel hands it out does not parse",
        t.name, t.family
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xtables::XtFamily;

    /// A v4 entry: addresses, ports and mark as CRIU's lock writes them when `lock`, a plain
    /// ACCEPT otherwise; `verdict` for the standard target.
    fn entry(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, verdict: i32) -> Vec<u8> {
        let mut e = vec![0u8; 112];
        e[0..4].copy_from_slice(&src);
        e[4..8].copy_from_slice(&dst);
        e[8..16].fill(0xff);
        e[80..82].copy_from_slice(&6u16.to_ne_bytes());
        let mut mark = vec![0u8; 32 + 16];
        mark[0..2].copy_from_slice(&48u16.to_ne_bytes());
        mark[2..6].copy_from_slice(b"mark");
        mark[32..36].copy_from_slice(&SOCCR_MARK.to_ne_bytes());
        mark[36..40].copy_from_slice(&u32::MAX.to_ne_bytes());
        mark[40] = 1;
        let mut tcp = vec![0u8; 32 + 16];
        tcp[0..2].copy_from_slice(&48u16.to_ne_bytes());
        tcp[2..5].copy_from_slice(b"tcp");
        for (i, p) in [sport, sport, dport, dport].iter().enumerate() {
            tcp[32 + 2 * i..34 + 2 * i].copy_from_slice(&p.to_ne_bytes());
        }
        e.extend_from_slice(&mark);
        e.extend_from_slice(&tcp);
        let target_at = e.len() as u16;
        let mut target = vec![0u8; 40];
        target[0..2].copy_from_slice(&40u16.to_ne_bytes());
        target[32..36].copy_from_slice(&verdict.to_ne_bytes());
        e.extend_from_slice(&target);
        let len = e.len() as u16;
        e[88..90].copy_from_slice(&target_at.to_ne_bytes());
        e[90..92].copy_from_slice(&len.to_ne_bytes());
        e
    }

    fn conn() -> LockedConn {
        LockedConn {
            local: vec![10, 0, 0, 1],
            local_port: 80,
            remote: vec![10, 0, 0, 2],
            remote_port: 5555,
        }
    }

    /// INPUT: a lock rule, an accept, the policy; OUTPUT: the other lock rule, a jump to the
    /// accept's place... then the policy.
    fn table() -> XtTable {
        let lock_in = entry([10, 0, 0, 2], 5555, [10, 0, 0, 1], 80, VERDICT_DROP);
        let other = entry([10, 0, 0, 9], 1, [10, 0, 0, 1], 80, VERDICT_DROP);
        let policy = entry([0; 4], 0, [0; 4], 0, -2);
        let lock_out = entry([10, 0, 0, 1], 80, [10, 0, 0, 2], 5555, VERDICT_DROP);
        let n = lock_in.len();
        // A jump to `other`'s place (offset n): it must follow it to its new one (0).
        let jump = entry([1, 1, 1, 1], 2, [1, 1, 1, 1], 3, n as i32);
        let mut entries = Vec::new();
        for e in [&lock_in, &other, &policy, &lock_out, &jump, &policy] {
            entries.extend_from_slice(e);
        }
        XtTable {
            family: XtFamily::V4,
            name: "filter".into(),
            valid_hooks: (1 << 1) | (1 << 3),
            hook_entry: [0, 0, 0, 3 * n as u32, 0],
            underflow: [0, 2 * n as u32, 0, 5 * n as u32, 0],
            num_entries: 6,
            entries,
        }
    }

    #[test]
    fn criu_lock_rules_are_found_in_both_chains_and_nothing_else() {
        let t = table();
        let n = entry([0; 4], 0, [0; 4], 0, 0).len();
        let found = lock_entries(&t, &[conn()]).unwrap();
        assert_eq!(
            found,
            vec![Entry { at: 0, len: n }, Entry { at: 3 * n, len: n }]
        );
        let other = LockedConn {
            local_port: 81,
            ..conn()
        };
        assert_eq!(lock_entries(&t, &[other]).unwrap(), vec![]);
    }

    #[test]
    fn cutting_entries_moves_hooks_underflows_and_jumps() {
        let t = table();
        let n = entry([0; 4], 0, [0; 4], 0, 0).len() as u32;
        let cut = lock_entries(&t, &[conn()]).unwrap();
        let (new, kept) = without(&t, &cut).unwrap();
        assert_eq!(kept, vec![1, 2, 4, 5]);
        assert_eq!(new.num_entries, 4);
        assert_eq!(new.entries.len() as u32, 4 * n);
        // INPUT now starts at `other` (0), its policy at n; OUTPUT at the jump (2n).
        assert_eq!((new.hook_entry[1], new.underflow[1]), (0, n));
        assert_eq!((new.hook_entry[3], new.underflow[3]), (2 * n, 3 * n));
        let jump_verdict = i32_at(&new.entries, (2 * n) as usize + 112 + 96 + 32).unwrap();
        assert_eq!(jump_verdict, 0, "the jump follows its target");
        assert_eq!(lock_entries(&new, &[conn()]).unwrap(), vec![]);
    }

    #[test]
    fn a_broken_table_is_none() {
        let mut t = table();
        t.entries[90..92].copy_from_slice(&5000u16.to_ne_bytes());
        assert!(lock_entries(&t, &[conn()]).is_none());
    }
}
