//! Credentials: ids, groups, capabilities and securebits, read from /proc at dump and set by
//! injected syscalls at restore (in the order that keeps the rights to set the rest).

use super::remote::Remote;
use super::TaskError;
use crate::images::pb;
use crate::proc;
use crate::restore::RestoreError;

/// The credentials of a thread, from its /proc status and its securebits (`PR_GET_SECUREBITS`).
pub(crate) fn dump_creds(tstatus: &proc::Status, secbits: u32) -> pb::CredsEntry {
    pb::CredsEntry {
        uid: tstatus.uids[0],
        gid: tstatus.gids[0],
        euid: tstatus.uids[1],
        egid: tstatus.gids[1],
        suid: tstatus.uids[2],
        sgid: tstatus.gids[2],
        fsuid: tstatus.uids[3],
        fsgid: tstatus.gids[3],
        cap_inh: cap_words(tstatus.cap_inh),
        cap_prm: cap_words(tstatus.cap_prm),
        cap_eff: cap_words(tstatus.cap_eff),
        cap_bnd: cap_words(tstatus.cap_bnd),
        secbits,
        groups: tstatus.groups.clone(),
        lsm_profile: None,
        lsm_sockcreate: None,
        apparmor_data: None,
        no_new_privs: Some(tstatus.no_new_privs as u32),
        cap_amb: cap_words(tstatus.cap_amb),
    }
}

fn cap_words(v: u64) -> Vec<u32> {
    vec![v as u32, (v >> 32) as u32]
}

pub(crate) fn caps(words: &[u32]) -> u64 {
    words.first().copied().unwrap_or(0) as u64 | (words.get(1).copied().unwrap_or(0) as u64) << 32
}

/// The highest capability this kernel knows. Unreadable, we could not tell which bounding-set
/// and ambient capabilities to drop or raise: fail rather than guess.
fn cap_last_cap() -> Result<u64, TaskError> {
    const PATH: &str = "/proc/sys/kernel/cap_last_cap";
    let s = std::fs::read_to_string(PATH)
        .map_err(|source| TaskError::CapLastCap { path: PATH, source })?;
    s.trim().parse().map_err(|_| TaskError::CapLastCap {
        path: PATH,
        source: std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{:?} is not a number", s.trim()),
        ),
    })
}

pub(crate) fn restore_creds(r: &Remote, c: &pb::CredsEntry) -> Result<(), RestoreError> {
    let (eff, prm, inh, bnd, amb) = (
        caps(&c.cap_eff),
        caps(&c.cap_prm),
        caps(&c.cap_inh),
        caps(&c.cap_bnd),
        caps(&c.cap_amb),
    );
    let me = proc::thread_status(r.pid, r.inj.tid).map_err(|source| TaskError::ThreadStatus {
        pid: r.pid,
        tid: r.inj.tid,
        source,
    })?;
    let same = me.uids == [c.uid, c.euid, c.suid, c.fsuid]
        && me.gids == [c.gid, c.egid, c.sgid, c.fsgid]
        && me.groups == c.groups
        && me.cap_eff == eff
        && me.cap_prm == prm
        && me.cap_inh == inh
        && me.cap_bnd == bnd
        && me.cap_amb == amb
        && c.secbits == 0;
    if !same {
        let g: Vec<u8> = c.groups.iter().flat_map(|g| g.to_ne_bytes()).collect();
        let ga = if g.is_empty() { 0 } else { r.put(0, &g)? };
        r.call(libc::SYS_setgroups, &[c.groups.len() as u64, ga])?;
        r.call(
            libc::SYS_setresgid,
            &[c.gid as u64, c.egid as u64, c.sgid as u64],
        )?;
        r.call(libc::SYS_setfsgid, &[c.fsgid as u64])?;
        let last_cap = cap_last_cap()?;
        for cap in 0..=last_cap {
            if bnd & (1 << cap) == 0 && me.cap_bnd & (1 << cap) != 0 {
                r.call(libc::SYS_prctl, &[libc::PR_CAPBSET_DROP as u64, cap])?;
            }
        }
        const SECBIT_KEEP_CAPS: u64 = 1 << 4;
        r.call(
            libc::SYS_prctl,
            &[
                libc::PR_SET_SECUREBITS as u64,
                c.secbits as u64 | SECBIT_KEEP_CAPS,
            ],
        )?;
        r.call(
            libc::SYS_setresuid,
            &[c.uid as u64, c.euid as u64, c.suid as u64],
        )?;
        r.call(libc::SYS_setfsuid, &[c.fsuid as u64])?;
        // capset(v3): header {version, pid}, then two {effective, permitted, inheritable} words.
        let hdr = r.put(
            0,
            &[0x20080522u32.to_ne_bytes(), 0u32.to_ne_bytes()].concat(),
        )?;
        let data: Vec<u8> = [
            eff as u32,
            prm as u32,
            inh as u32,
            (eff >> 32) as u32,
            (prm >> 32) as u32,
            (inh >> 32) as u32,
        ]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect();
        let da = r.put(64, &data)?;
        r.call(libc::SYS_capset, &[hdr, da])?;
        let keep = c.secbits as u64 & SECBIT_KEEP_CAPS != 0;
        r.call(
            libc::SYS_prctl,
            &[libc::PR_SET_KEEPCAPS as u64, keep as u64],
        )?;
        for cap in 0..=last_cap {
            if amb & (1 << cap) != 0 {
                r.call(
                    libc::SYS_prctl,
                    &[
                        libc::PR_CAP_AMBIENT as u64,
                        libc::PR_CAP_AMBIENT_RAISE as u64,
                        cap,
                        0,
                        0,
                    ],
                )?;
            }
        }
    }
    if c.no_new_privs == Some(1) {
        r.call(
            libc::SYS_prctl,
            &[libc::PR_SET_NO_NEW_PRIVS as u64, 1, 0, 0, 0],
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_words_round_trip() {
        for v in [0, 1, 0x1ff_ffff_ffff, u64::MAX, 1 << 40] {
            assert_eq!(caps(&cap_words(v)), v);
        }
        // Missing words read as no capability.
        assert_eq!(caps(&[]), 0);
        assert_eq!(caps(&[7]), 7);
    }
}
