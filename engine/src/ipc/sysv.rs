//! System V semaphore sets and message queues in the host's IPC namespace that only the tree
//! uses. Use is seen through the last pids the kernel keeps (a message queue's last sender and
//! receiver, each semaphore's last operator): an object the tree touched is dumped, unless a
//! live process outside the tree touched it too, which is refused by name. Objects nobody in
//! the tree touched are left alone. Semaphore undo values (SEM_UNDO) are not kept.

use std::collections::HashSet;

use crate::images::pb;

/// A SysV object could not be read, is shared, or could not be made again.
#[derive(Debug, thiserror::Error)]
pub enum IpcError {
    #[error("System V {kind} {id} (key {key:#x}) is also used by pid {pid}, outside the tree")]
    Shared {
        kind: &'static str,
        id: i32,
        key: i32,
        pid: u32,
    },
    #[error("{what}")]
    Sys {
        what: String,
        #[source]
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> IpcError {
    let what = what.into();
    move |source| IpcError::Sys { what, source }
}

/// One row of /proc/sysvipc/msg or /proc/sysvipc/sem: the columns we use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub key: i32,
    pub id: i32,
    pub perms: u32,
    /// msg: qnum; sem: nsems
    pub count: u64,
    /// msg: lspid, lrpid; sem: none
    pub pids: Vec<u32>,
    pub uid: u32,
    pub gid: u32,
    pub cuid: u32,
    pub cgid: u32,
}

/// Parses /proc/sysvipc/msg (`msg`) or /proc/sysvipc/sem (pure; unit-tested).
pub fn parse(text: &str, msg: bool) -> Vec<Row> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let n = |i: usize| f.get(i).and_then(|v| v.parse::<i64>().ok());
            let (count, pids, owner) = if msg {
                (n(4)?, vec![n(5)? as u32, n(6)? as u32], 7)
            } else {
                (n(3)?, Vec::new(), 4)
            };
            Some(Row {
                key: n(0)? as i32,
                id: n(1)? as i32,
                perms: u32::from_str_radix(f.get(2)?, 8).ok()?,
                count: count as u64,
                pids,
                uid: n(owner)? as u32,
                gid: n(owner + 1)? as u32,
                cuid: n(owner + 2)? as u32,
                cgid: n(owner + 3)? as u32,
            })
        })
        .collect()
}

fn desc(r: &Row) -> pb::IpcDescEntry {
    pb::IpcDescEntry {
        key: r.key as u32,
        uid: r.uid,
        gid: r.gid,
        cuid: r.cuid,
        cgid: r.cgid,
        mode: r.perms,
        id: r.id as u32,
    }
}

/// Decides from the last-user pids whether the tree uses an object; errors if someone alive
/// outside the tree does too.
fn used_by_tree(
    kind: &'static str,
    r: &Row,
    pids: &[u32],
    tree: &HashSet<u32>,
) -> Result<bool, IpcError> {
    let mut ours = false;
    for &p in pids.iter().filter(|p| **p != 0) {
        if tree.contains(&p) {
            ours = true;
        } else if std::path::Path::new(&format!("/proc/{p}")).exists() {
            return Err(IpcError::Shared {
                kind,
                id: r.id,
                key: r.key,
                pid: p,
            });
        }
    }
    Ok(ours)
}

fn pad8(v: &mut Vec<u8>) {
    while !v.len().is_multiple_of(8) {
        v.push(0);
    }
}

/// The message queues the tree uses: (entry, messages as (type, text)).
pub type Queue = (pb::IpcMsgEntry, Vec<(u64, Vec<u8>)>);

/// The message queues the tree uses, or with `tree` None (a namespace the tree owns) all the
/// calling thread's namespace has.
pub fn dump_msg(tree: Option<&HashSet<u32>>) -> Result<Vec<Queue>, IpcError> {
    let text = std::fs::read_to_string("/proc/sysvipc/msg").unwrap_or_default();
    let mut out = Vec::new();
    for r in parse(&text, true) {
        if let Some(tree) = tree {
            if !used_by_tree("message queue", &r, &r.pids, tree)? {
                continue;
            }
        }
        let mut ds: libc::msqid_ds = unsafe_zeroed();
        // SAFETY: IPC_STAT fills our struct.
        if unsafe { libc::msgctl(r.id, libc::IPC_STAT, &mut ds) } < 0 {
            return Err(sys(format!("reading message queue {}", r.id))(
                std::io::Error::last_os_error(),
            ));
        }
        let mut msgs = Vec::new();
        let mut buf = vec![0u8; 8 + 65536];
        for i in 0..r.count {
            const MSG_COPY: libc::c_int = 0o40000;
            // SAFETY: msgrcv copies (MSG_COPY: without removing) message number i into our buffer.
            let n = unsafe {
                libc::msgrcv(
                    r.id,
                    buf.as_mut_ptr().cast(),
                    buf.len() - 8,
                    i as libc::c_long,
                    libc::IPC_NOWAIT | MSG_COPY,
                )
            };
            if n < 0 {
                return Err(sys(format!("copying message {i} of queue {}", r.id))(
                    std::io::Error::last_os_error(),
                ));
            }
            let mtype = u64::from_ne_bytes(buf[..8].try_into().expect("8"));
            msgs.push((mtype, buf[8..8 + n as usize].to_vec()));
        }
        let e = pb::IpcMsgEntry {
            desc: desc(&r),
            qbytes: ds.msg_qbytes as u32,
            qnum: msgs.len() as u32,
        };
        out.push((e, msgs));
    }
    Ok(out)
}

/// The semaphore sets the tree uses (all of them with `tree` None), with their values.
pub fn dump_sem(tree: Option<&HashSet<u32>>) -> Result<Vec<(pb::IpcSemEntry, Vec<u16>)>, IpcError> {
    let text = std::fs::read_to_string("/proc/sysvipc/sem").unwrap_or_default();
    let mut out = Vec::new();
    for r in parse(&text, false) {
        let n = r.count as usize;
        // SAFETY: GETPID takes no buffer.
        let pids: Vec<u32> = (0..n)
            .map(|i| unsafe { libc::semctl(r.id, i as i32, libc::GETPID) }.max(0) as u32)
            .collect();
        if let Some(tree) = tree {
            if !used_by_tree("semaphore set", &r, &pids, tree)? {
                continue;
            }
        }
        let mut vals = vec![0u16; n];
        // SAFETY: GETALL writes nsems unsigned shorts into our vector.
        if unsafe { libc::semctl(r.id, 0, libc::GETALL, vals.as_mut_ptr()) } < 0 {
            return Err(sys(format!("reading semaphore set {}", r.id))(
                std::io::Error::last_os_error(),
            ));
        }
        out.push((
            pb::IpcSemEntry {
                desc: desc(&r),
                nsems: n as u32,
            },
            vals,
        ));
    }
    Ok(out)
}

fn unsafe_zeroed<T>() -> T {
    // SAFETY: only used for C structs of plain integers, for which all-zero is valid.
    unsafe { std::mem::zeroed() }
}

/// Serializes the queues as CRIU does: each entry, then each message's header and its text
/// padded to 8 bytes.
pub fn write_msg(queues: &[Queue]) -> Vec<u8> {
    let mut w = crate::images::ImageWriter::new(
        crate::images::ImageKind::Normal,
        crate::images::magic::IPCNS_MSG,
    );
    for (e, msgs) in queues {
        w.push(e);
        for (mtype, text) in msgs {
            w.push(&pb::IpcMsg {
                mtype: *mtype,
                msize: text.len() as u32,
            });
            let mut t = text.clone();
            pad8(&mut t);
            w.push_raw(&t);
        }
    }
    w.into_bytes()
}

/// Serializes the sets as CRIU does: each entry, then its values (u16) padded to 8 bytes.
pub fn write_sem(sets: &[(pb::IpcSemEntry, Vec<u16>)]) -> Vec<u8> {
    let mut w = crate::images::ImageWriter::new(
        crate::images::ImageKind::Normal,
        crate::images::magic::IPCNS_SEM,
    );
    for (e, vals) in sets {
        w.push(e);
        let mut b: Vec<u8> = vals.iter().flat_map(|v| v.to_ne_bytes()).collect();
        pad8(&mut b);
        w.push_raw(&b);
    }
    w.into_bytes()
}

/// Reads `write_msg`'s format back.
pub fn read_msg(file: &str, bytes: &[u8]) -> Result<Vec<Queue>, crate::images::ImageError> {
    let mut r = crate::images::ImageReader::new(
        file,
        bytes,
        crate::images::ImageKind::Normal,
        crate::images::magic::IPCNS_MSG,
    )?;
    let mut out = Vec::new();
    while let Some(e) = r.next::<pb::IpcMsgEntry>()? {
        let mut msgs = Vec::new();
        for _ in 0..e.qnum {
            let m: pb::IpcMsg = r.next_required()?;
            let padded = (m.msize as u64).div_ceil(8) * 8;
            let t = r.raw(padded)?;
            msgs.push((m.mtype, t[..m.msize as usize].to_vec()));
        }
        out.push((e, msgs));
    }
    Ok(out)
}

/// Reads `write_sem`'s format back.
pub fn read_sem(
    file: &str,
    bytes: &[u8],
) -> Result<Vec<(pb::IpcSemEntry, Vec<u16>)>, crate::images::ImageError> {
    let mut r = crate::images::ImageReader::new(
        file,
        bytes,
        crate::images::ImageKind::Normal,
        crate::images::magic::IPCNS_SEM,
    )?;
    let mut out = Vec::new();
    while let Some(e) = r.next::<pb::IpcSemEntry>()? {
        let padded = (e.nsems as u64 * 2).div_ceil(8) * 8;
        let b = r.raw(padded)?;
        let vals = b[..e.nsems as usize * 2]
            .chunks_exact(2)
            .map(|c| u16::from_ne_bytes([c[0], c[1]]))
            .collect();
        out.push((e, vals));
    }
    Ok(out)
}

fn with_next_id<T>(knob: &str, id: u32, f: impl FnOnce() -> T) -> Result<T, IpcError> {
    let path = format!("/proc/sys/kernel/{knob}");
    std::fs::write(&path, id.to_string()).map_err(sys(format!("setting kernel.{knob}")))?;
    let r = f();
    let _ = std::fs::write(&path, "-1");
    Ok(r)
}

/// Makes every queue exist with its id and messages: one that outlived the tree (same host)
/// is left as it is (nobody else used it); a missing one is created with its id and refilled.
pub fn restore_msg(queues: &[Queue]) -> Result<(), IpcError> {
    let current = parse(
        &std::fs::read_to_string("/proc/sysvipc/msg").unwrap_or_default(),
        true,
    );
    for (e, msgs) in queues {
        let d = &e.desc;
        if current
            .iter()
            .any(|r| r.id as u32 == d.id && r.key as u32 == d.key)
        {
            continue;
        }
        let flags = libc::IPC_CREAT | libc::IPC_EXCL | (d.mode & 0o777) as i32;
        // SAFETY: msgget(2) with integers.
        let got = with_next_id("msg_next_id", d.id, || unsafe {
            libc::msgget(d.key as libc::key_t, flags)
        })?;
        if got < 0 || got as u32 != d.id {
            return Err(sys(format!(
                "creating message queue {} (key {:#x})",
                d.id, d.key
            ))(std::io::Error::last_os_error()));
        }
        for (mtype, text) in msgs {
            let mut b = mtype.to_ne_bytes().to_vec();
            b.extend_from_slice(text);
            // SAFETY: msgsnd reads the type and text from our buffer.
            if unsafe { libc::msgsnd(got, b.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) } < 0 {
                return Err(sys(format!("refilling message queue {}", d.id))(
                    std::io::Error::last_os_error(),
                ));
            }
        }
    }
    Ok(())
}

/// Makes every semaphore set exist with its id and values.
pub fn restore_sem(sets: &[(pb::IpcSemEntry, Vec<u16>)]) -> Result<(), IpcError> {
    let current = parse(
        &std::fs::read_to_string("/proc/sysvipc/sem").unwrap_or_default(),
        false,
    );
    for (e, vals) in sets {
        let d = &e.desc;
        let id = if current
            .iter()
            .any(|r| r.id as u32 == d.id && r.key as u32 == d.key)
        {
            d.id as i32
        } else {
            let flags = libc::IPC_CREAT | libc::IPC_EXCL | (d.mode & 0o777) as i32;
            // SAFETY: semget(2) with integers.
            let got = with_next_id("sem_next_id", d.id, || unsafe {
                libc::semget(d.key as libc::key_t, e.nsems as i32, flags)
            })?;
            if got < 0 || got as u32 != d.id {
                return Err(sys(format!(
                    "creating semaphore set {} (key {:#x})",
                    d.id, d.key
                ))(std::io::Error::last_os_error()));
            }
            got
        };
        let mut v = vals.clone();
        // SAFETY: SETALL reads nsems unsigned shorts from our vector.
        if unsafe { libc::semctl(id, 0, libc::SETALL, v.as_mut_ptr()) } < 0 {
            return Err(sys(format!("setting semaphore set {}", d.id))(
                std::io::Error::last_os_error(),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_and_images() {
        let msg = "       key      msqid perms      cbytes       qnum lspid lrpid   uid   gid  cuid  cgid      stime      rtime      ctime\n\
         1234          5   600          10          2   77    0     0     0     0     0 1 0 1\n";
        let r = parse(msg, true);
        assert_eq!(
            (r[0].key, r[0].id, r[0].perms, r[0].count, r[0].pids.clone()),
            (1234, 5, 0o600, 2, vec![77, 0])
        );
        let sem = "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n\
         99          3   666          4     0     0     0     0          0 1\n";
        let s = parse(sem, false);
        assert_eq!(
            (s[0].key, s[0].id, s[0].perms, s[0].count),
            (99, 3, 0o666, 4)
        );
        let q = vec![(
            pb::IpcMsgEntry {
                desc: desc(&r[0]),
                qbytes: 16384,
                qnum: 2,
            },
            vec![(1, b"abc".to_vec()), (7, b"0123456789".to_vec())],
        )];
        assert_eq!(read_msg("m", &write_msg(&q)).unwrap(), q);
        let sets = vec![(
            pb::IpcSemEntry {
                desc: desc(&s[0]),
                nsems: 3,
            },
            vec![1, 0, 65535],
        )];
        assert_eq!(read_sem("s", &write_sem(&sets)).unwrap(), sets);
    }
}
