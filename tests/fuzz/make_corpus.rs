//! `stasis-fuzz --make-corpus DIR`: dumps small test workloads with the stasis binary and
//! keeps their images as the seed corpus (needs root; run it under the end-to-end lock).

use std::path::Path;
use std::time::Duration;

use stasis_tests::fuzz::corpus::Corpus;
use stasis_tests::{dump_workload, workload, Workload};

/// A TCP connection inside the tree, bytes queued both ways.
const TCP: &str = r#"
import socket, time
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
c = socket.create_connection(s.getsockname()); a, _ = s.accept()
c.sendall(b"hello from the client"); a.sendall(b"a reply waiting to be read")
print("ready", flush=True)
while True: time.sleep(1)
"#;

/// An IPC namespace of its own with SysV shared memory, a queue with a message and a
/// semaphore set (trimmed from tests/ipc.rs).
const IPC: &str = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.shmat.restype = ctypes.c_void_p
libc.shmat.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_int]
class Msg(ctypes.Structure): _fields_ = [("mtype", ctypes.c_long), ("text", ctypes.c_char * 64)]
class Sembuf(ctypes.Structure): _fields_ = [("num", ctypes.c_ushort), ("op", ctypes.c_short), ("flg", ctypes.c_short)]
assert libc.unshare(0x08000000) == 0, ctypes.get_errno()
shm = libc.shmget(0x5151, 8192, 0o1000 | 0o600)
a = libc.shmat(shm, None, 0); ctypes.memmove(a + 5000, b"attached", 8)
q = libc.msgget(0x5153, 0o1000 | 0o600)
m = Msg(4, b"queued"); assert libc.msgsnd(q, ctypes.byref(m), 6, 0) == 0
sem = libc.semget(0x5154, 3, 0o1000 | 0o600)
assert libc.semop(sem, (Sembuf * 1)(Sembuf(1, 9, 0)), 1) == 0
print("ready", flush=True)
while True: time.sleep(1)
"#;

/// A small file deleted while open (the C workload's is 64 KiB, all payload).
const GHOST: &str = r#"
import os, time
f = open("ghost", "w+b"); f.write(b"deleted but open"); f.flush(); os.unlink("ghost")
print("ready", flush=True)
while True: time.sleep(1)
"#;

/// Name, program (a C workload, or python source), arguments, dump flags.
const WORKLOADS: &[(&str, &str, &[&str])] = &[
    ("counter", "", &[]),
    ("shmem", "", &[]),
    ("pipetree", "", &[]),
    ("threads", "", &[]),
    ("signals", "", &[]),
    ("zombie", "", &[]),
    ("ghost", GHOST, &[]),
    ("fdkinds", "", &["--file-locks"]),
    ("tcp", TCP, &["--tcp-established"]),
    ("ipc", IPC, &[]),
];

/// Dumps every workload into `out/<name>/`; a workload whose dump fails is left out (said
/// on standard error).
pub fn make_corpus(out: &Path) -> Result<(), String> {
    if stasis_tests::skip_unless_root("make-corpus") {
        return Err("--make-corpus needs root (stasis dump)".into());
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for &(name, python, flags) in WORKLOADS {
        let w = if python.is_empty() {
            Workload::start(name, &workload(name), &[])
        } else {
            Workload::python(name, python)
        };
        w.wait_lines(1, Duration::from_secs(10));
        // Let it run a little (threads started, data queued).
        std::thread::sleep(Duration::from_millis(300));
        let o = dump_workload(&w, flags);
        if !o.status.success() {
            eprintln!(
                "make-corpus: {name} left out: {}",
                String::from_utf8_lossy(&o.stderr).trim()
            );
            continue;
        }
        Corpus::import(&w.images(), out, name).map_err(|e| format!("{name}: {e}"))?;
        eprintln!("make-corpus: {name} dumped");
    }
    Ok(())
}
