//! System V semaphore sets and message queues in the host's IPC namespace that only the tree
//! uses. Use is seen through the last pids the kernel keeps (a message queue's last sender and
//! receiver, each semaphore's last operator): an object the tree touched is dumped, unless a
//! live process outside the tree touched it too, which is refused by name. Objects nobody in
//! the tree touched are left alone. Semaphore undo values (SEM_UNDO) are not kept.
//!
//! The msg*/sem* calls are libc's: nix has no System V IPC wrappers.

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
    #[error("reading {path} (the System V objects of the namespace) failed")]
    ReadTable {
        path: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} line {line}: unexpected format: {text:?}")]
    BadRow {
        path: &'static str,
        line: usize,
        text: String,
    },
    #[error("reading System V {kind} {id} failed")]
    Stat {
        kind: &'static str,
        id: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("reading the last pid of semaphore {num} of set {id} failed")]
    SemPid {
        id: i32,
        num: usize,
        #[source]
        source: std::io::Error,
    },
    #[error("copying message {index} of message queue {id} failed")]
    CopyMessage {
        id: i32,
        index: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("setting kernel.{knob} to {value} failed")]
    NextId {
        knob: &'static str,
        value: i64,
        #[source]
        source: std::io::Error,
    },
    #[error("creating System V {kind} {id} (key {key:#x}) failed")]
    Create {
        kind: &'static str,
        id: u32,
        key: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("creating System V {kind} {id} (key {key:#x}) gave id {got}")]
    WrongId {
        kind: &'static str,
        id: u32,
        key: u32,
        got: i32,
    },
    #[error("attaching System V shared memory {shmid} failed")]
    Attach {
        shmid: i32,
        #[source]
        source: std::io::Error,
    },
    #[error("refilling message queue {id} failed")]
    Refill {
        id: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("giving System V {kind} {id} its owner and mode failed")]
    Owner {
        kind: &'static str,
        id: u32,
        #[source]
        source: std::io::Error,
    },
    #[error("setting the values of semaphore set {id} failed")]
    SetValues {
        id: u32,
        #[source]
        source: std::io::Error,
    },
}

/// The tables of /proc/sysvipc this module reads.
pub const MSG_TABLE: &str = "/proc/sysvipc/msg";
pub const SEM_TABLE: &str = "/proc/sysvipc/sem";
pub const SHM_TABLE: &str = "/proc/sysvipc/shm";

/// The text of one /proc/sysvipc table. A table that does not exist is empty: the kernel has
/// no System V IPC (CONFIG_SYSVIPC off, or no procfs support for it), so there are no objects
/// to list, and making one fails on its own (msgget/semget: ENOSYS). Any other failure is an
/// error: objects would otherwise be silently left out of the dump.
pub fn read_table(path: &'static str) -> Result<String, IpcError> {
    match std::fs::read_to_string(path) {
        Ok(text) => Ok(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(source) => Err(IpcError::ReadTable { path, source }),
    }
}

/// The System V shared memory segments of the calling thread's namespace
/// (/proc/sysvipc/shm, see [`read_table`]), every row parsed.
pub fn shm_segments() -> Result<Vec<crate::proc::parse::ShmSegment>, IpcError> {
    let text = read_table(SHM_TABLE)?;
    text.lines()
        .enumerate()
        .skip(1)
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            crate::proc::parse::parse_sysvipc_shm_row(l).ok_or_else(|| IpcError::BadRow {
                path: SHM_TABLE,
                line: i + 1,
                text: l.to_string(),
            })
        })
        .collect()
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

/// Parses /proc/sysvipc/msg (`msg`) or /proc/sysvipc/sem (pure; unit-tested). A row that
/// does not parse is an error: its object would otherwise be left out.
pub fn parse(text: &str, msg: bool) -> Result<Vec<Row>, IpcError> {
    let path = if msg { MSG_TABLE } else { SEM_TABLE };
    text.lines()
        .enumerate()
        .skip(1)
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            parse_row(l, msg).ok_or_else(|| IpcError::BadRow {
                path,
                line: i + 1,
                text: l.to_string(),
            })
        })
        .collect()
}

fn parse_row(l: &str, msg: bool) -> Option<Row> {
    {
        {
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
        }
    }
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
    let text = read_table(MSG_TABLE)?;
    let mut out = Vec::new();
    for r in parse(&text, true)? {
        if let Some(tree) = tree {
            if !used_by_tree("message queue", &r, &r.pids, tree)? {
                continue;
            }
        }
        let mut ds: libc::msqid_ds = unsafe_zeroed();
        // SAFETY: IPC_STAT fills our struct.
        if unsafe { libc::msgctl(r.id, libc::IPC_STAT, &mut ds) } < 0 {
            return Err(IpcError::Stat {
                kind: "message queue",
                id: r.id,
                source: std::io::Error::last_os_error(),
            });
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
                return Err(IpcError::CopyMessage {
                    id: r.id,
                    index: i,
                    source: std::io::Error::last_os_error(),
                });
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
    let text = read_table(SEM_TABLE)?;
    let mut out = Vec::new();
    for r in parse(&text, false)? {
        let n = r.count as usize;
        let pids = (0..n)
            .map(|num| {
                // SAFETY: GETPID takes no buffer.
                let p = unsafe { libc::semctl(r.id, num as i32, libc::GETPID) };
                if p < 0 {
                    return Err(IpcError::SemPid {
                        id: r.id,
                        num,
                        source: std::io::Error::last_os_error(),
                    });
                }
                Ok(p as u32)
            })
            .collect::<Result<Vec<u32>, IpcError>>()?;
        if let Some(tree) = tree {
            if !used_by_tree("semaphore set", &r, &pids, tree)? {
                continue;
            }
        }
        let mut vals = vec![0u16; n];
        // SAFETY: GETALL writes nsems unsigned shorts into our vector.
        if unsafe { libc::semctl(r.id, 0, libc::GETALL, vals.as_mut_ptr()) } < 0 {
            return Err(IpcError::Stat {
                kind: "semaphore set",
                id: r.id,
                source: std::io::Error::last_os_error(),
            });
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

/// Runs `f` (which creates one object) with kernel.`knob` set to `id`. The kernel puts the
/// knob back to -1 itself once the id is used. It cannot be written back by hand: the knob's
/// minimum is 0 (the reset this code used to make failed with EINVAL, unnoticed), so when the
/// creation fails the knob keeps `id`, and the restore stops on that failure anyway.
fn with_next_id<T>(knob: &'static str, id: u32, f: impl FnOnce() -> T) -> Result<T, IpcError> {
    let path = format!("/proc/sys/kernel/{knob}");
    std::fs::write(&path, id.to_string()).map_err(|source| IpcError::NextId {
        knob,
        value: id.into(),
        source,
    })?;
    Ok(f())
}

/// The error for an object that could not be made with its id: `got` is what the call returned.
fn create_error(kind: &'static str, id: u32, key: u32, got: i32) -> IpcError {
    if got < 0 {
        IpcError::Create {
            kind,
            id,
            key,
            source: std::io::Error::last_os_error(),
        }
    } else {
        IpcError::WrongId { kind, id, key, got }
    }
}

/// Makes every queue exist with its id and messages: one that outlived the tree (same host)
/// is left as it is (nobody else used it); a missing one is created with its id and refilled,
/// and listed in `made`.
pub fn restore_msg(queues: &[Queue], made: &mut crate::ipc::Made) -> Result<(), IpcError> {
    if queues.is_empty() {
        return Ok(());
    }
    let current = parse(&read_table(MSG_TABLE)?, true)?;
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
        if got >= 0 {
            made.msg.push(got);
        }
        if got < 0 || got as u32 != d.id {
            return Err(create_error("message queue", d.id, d.key, got));
        }
        set_owner(Object::Msg, got, d)?;
        for (mtype, text) in msgs {
            let mut b = mtype.to_ne_bytes().to_vec();
            b.extend_from_slice(text);
            // SAFETY: msgsnd reads the type and text from our buffer.
            if unsafe { libc::msgsnd(got, b.as_ptr().cast(), text.len(), libc::IPC_NOWAIT) } < 0 {
                return Err(IpcError::Refill {
                    id: d.id,
                    source: std::io::Error::last_os_error(),
                });
            }
        }
    }
    Ok(())
}

/// Makes every semaphore set exist with its id and values; those created are listed in `made`.
pub fn restore_sem(
    sets: &[(pb::IpcSemEntry, Vec<u16>)],
    made: &mut crate::ipc::Made,
) -> Result<(), IpcError> {
    if sets.is_empty() {
        return Ok(());
    }
    let current = parse(&read_table(SEM_TABLE)?, false)?;
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
            if got >= 0 {
                made.sem.push(got);
            }
            if got < 0 || got as u32 != d.id {
                return Err(create_error("semaphore set", d.id, d.key, got));
            }
            set_owner(Object::Sem, got, d)?;
            got
        };
        let mut v = vals.clone();
        // SAFETY: SETALL reads nsems unsigned shorts from our vector.
        if unsafe { libc::semctl(id, 0, libc::SETALL, v.as_mut_ptr()) } < 0 {
            return Err(IpcError::SetValues {
                id: d.id,
                source: std::io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// A kind of System V object, for [`set_owner`].
#[derive(Clone, Copy)]
pub(crate) enum Object {
    Msg,
    Sem,
    Shm,
}

/// Gives an object the restore made the dumped owner and mode (IPC_SET): made by us, it was
/// root's, and a task of the tree running as another user could not remove it (zdtm's msgque,
/// sem, shm in a container). The creator (cuid, cgid) cannot be set and stays ours, as CRIU
/// leaves it.
pub(crate) fn set_owner(kind: Object, id: i32, d: &pb::IpcDescEntry) -> Result<(), IpcError> {
    let fail = |name: &'static str| IpcError::Owner {
        kind: name,
        id: d.id,
        source: std::io::Error::last_os_error(),
    };
    let fill = |p: &mut libc::ipc_perm| {
        p.uid = d.uid;
        p.gid = d.gid;
        p.mode = (d.mode & 0o777) as _;
    };
    // SAFETY: each *ctl(2) call reads or writes the one kernel structure of its kind, a local
    // zeroed (plain integers) then filled by IPC_STAT.
    unsafe {
        match kind {
            Object::Msg => {
                let mut ds: libc::msqid_ds = std::mem::zeroed();
                if libc::msgctl(id, libc::IPC_STAT, &mut ds) < 0 {
                    return Err(fail("message queue"));
                }
                fill(&mut ds.msg_perm);
                if libc::msgctl(id, libc::IPC_SET, &mut ds) < 0 {
                    return Err(fail("message queue"));
                }
            }
            Object::Sem => {
                let mut ds: libc::semid_ds = std::mem::zeroed();
                if libc::semctl(id, 0, libc::IPC_STAT, &mut ds as *mut libc::semid_ds) < 0 {
                    return Err(fail("semaphore set"));
                }
                fill(&mut ds.sem_perm);
                if libc::semctl(id, 0, libc::IPC_SET, &mut ds as *mut libc::semid_ds) < 0 {
                    return Err(fail("semaphore set"));
                }
            }
            Object::Shm => {
                let mut ds: libc::shmid_ds = std::mem::zeroed();
                if libc::shmctl(id, libc::IPC_STAT, &mut ds) < 0 {
                    return Err(fail("shared memory"));
                }
                fill(&mut ds.shm_perm);
                if libc::shmctl(id, libc::IPC_SET, &mut ds) < 0 {
                    return Err(fail("shared memory"));
                }
            }
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
        let r = parse(msg, true).unwrap();
        assert_eq!(
            (r[0].key, r[0].id, r[0].perms, r[0].count, r[0].pids.clone()),
            (1234, 5, 0o600, 2, vec![77, 0])
        );
        let sem = "       key      semid perms      nsems   uid   gid  cuid  cgid      otime      ctime\n\
         99          3   666          4     0     0     0     0          0 1\n";
        let s = parse(sem, false).unwrap();
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
        let bad = "key msqid\n 1 2 x\n";
        assert!(matches!(
            parse(bad, true),
            Err(IpcError::BadRow { line: 2, .. })
        ));
    }
}
