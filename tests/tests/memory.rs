//! End-to-end: memory and CPU state: shared file mappings with madvise state, locked memory,
//! AVX-512 registers, and many fds, threads and shared mappings at once.

use std::time::{Duration, Instant};

use stasis_tests::*;

#[test]
fn shared_file_mapping_and_madvise_state_survive() {
    let _g = serial_root!();
    let w = Workload::start("filemap", &workload("filemap"), &[]);
    w.wait_lines(5, T);
    // The fingerprint check in dump_kill_restore compares VmFlags (dc, dd, hg, wf, rr).
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    let on_disk = std::fs::read(w.dir.join("counter.dat")).unwrap();
    kill_tree(&pids);
    let v: Vec<u64> = after.iter().map(|l| l.trim().parse().unwrap()).collect();
    for (i, x) in v.iter().enumerate() {
        assert_eq!(*x, i as u64 + 1, "counter in the shared mapping continues");
    }
    let file_value = u64::from_ne_bytes(on_disk[..8].try_into().unwrap());
    assert!(
        file_value >= v[n + 4],
        "the file sees the restored task's writes: {file_value}"
    );
}

#[test]
fn avx512_registers_survive() {
    let _g = serial_root!();
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    if !cpu.split_whitespace().any(|f| f == "avx512f") {
        skip(test_name!(), "this CPU has no AVX-512");
        return;
    }
    let w = Workload::start("avx512", &workload_with("avx512", &["-mavx512f"]), &[]);
    let dots = |w: &Workload| std::fs::read_to_string(&w.out).unwrap_or_default();
    let end = Instant::now() + T;
    while dots(&w).len() < 5 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pids = dump_kill_restore(&w);
    let n = dots(&w).len();
    let end = Instant::now() + T;
    while dots(&w).len() < n + 10 && Instant::now() < end {
        std::thread::sleep(Duration::from_millis(10));
    }
    kill_tree(&pids);
    let out = dots(&w);
    assert!(
        !out.contains('X'),
        "a zmm or opmask register changed: {out}"
    );
    assert!(out.len() >= n + 10, "the loop stopped: {out}");
}

/// mlock()ed memory stays locked (VmFlags `lo`, VmLck), with its content.
#[test]
fn locked_memory_stays_locked() {
    let _g = serial_root!();
    let script = r#"
import ctypes, os, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
a = libc.mmap(None, 1 << 20, 3, 0x22, -1, 0)
ctypes.memmove(a + 12345, b"locked bytes", 12)
assert libc.mlock(ctypes.c_void_p(a), 1 << 20) == 0, ctypes.get_errno()
lck = lambda: [l.split()[1] for l in open("/proc/self/status") if l.startswith("VmLck")][0]
print("ready", lck(), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
print("after", lck(), ctypes.string_at(a + 12345, 12).decode(), flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("mlock", script);
    w.wait_lines(1, T);
    // The fingerprint compares VmFlags, `lo` included.
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 2);
    assert_eq!(lines, ["ready 1024", "after 1024 locked bytes"]);
}

/// Scale: 2000 fds on one file, 1000 small shared mappings and 50 threads all come back
/// (these used to cost a kcmp per pair of fds and a writer thread per mapping).
#[test]
fn many_fds_threads_and_shared_mappings_come_back() {
    let _g = serial_root!();
    let script = r#"
import mmap, os, threading, time
fds = [os.open("/dev/null", os.O_RDONLY) for _ in range(2000)]
maps = []
for i in range(1000):
    m = mmap.mmap(-1, 4096); m[0] = i % 251; maps.append(m)
ticks = [0] * 50
def work(k):
    while True:
        ticks[k] += 1; time.sleep(0.02)
for k in range(50):
    threading.Thread(target=work, args=(k,), daemon=True).start()
state = lambda: f"{len(os.listdir('/proc/self/fd'))} {sum(m[0] for m in maps)} {threading.active_count()}"
print("ready", state(), flush=True)
while not os.path.exists("go"):
    time.sleep(0.02)
before = sum(ticks); time.sleep(0.3)
print("after", state(), sum(ticks) > before, flush=True)
time.sleep(1e6)
"#;
    let w = Workload::python("many", script);
    w.wait_lines(1, Duration::from_secs(30));
    let pids = dump_kill_restore(&w);
    let lines = w.go_and_collect(&pids, 2);
    let ready = lines[0].strip_prefix("ready ").unwrap().to_string();
    assert_eq!(lines[1], format!("after {ready} True"));
}

/// A private mapping of a shared anonymous object (opened again through
/// /proc/self/map_files; zdtm's shmemfd-priv): after the restore its untouched pages still show
/// the object, including what the object gets written later, and its copied-on-write page
/// keeps its own value.
#[test]
fn private_mapping_of_shared_anonymous_memory_still_sees_the_object() {
    let _g = serial_root!();
    let script = r#"
import mmap, os, struct, time
page = mmap.PAGESIZE
shared = mmap.mmap(-1, 4 * page, flags=mmap.MAP_SHARED)
for i in range(4):
    shared[i * page:i * page + 4] = struct.pack("i", 10 + i)
import ctypes
addr = ctypes.addressof(ctypes.c_char.from_buffer(shared))
fd = os.open("/proc/self/map_files/%x-%x" % (addr, addr + 4 * page), os.O_RDWR)
priv = mmap.mmap(fd, 3 * page, flags=mmap.MAP_PRIVATE, offset=page)
priv[page:page + 4] = struct.pack("i", 99)
n = 0
while True:
    shared[3 * page:3 * page + 4] = struct.pack("i", 1000 + n)
    vals = [struct.unpack("i", priv[i * page:i * page + 4])[0] for i in range(3)]
    print("priv", vals[0], vals[1], vals[2] - n, flush=True)
    n += 1
    time.sleep(0.05)
"#;
    let (before, after) = python_line_before_and_after("shmem-priv", script);
    assert_eq!(before, "priv 11 99 1000", "set up as planned");
    assert_eq!(
        after, before,
        "the object seen through, the copied page kept"
    );
}

/// MAP_DROPPABLE memory (Linux 6.11; glibc's vgetrandom state) is not saved, as CRIU does: the
/// area comes back, reading zeros as after a drop by the kernel (zdtm's maps11).
#[test]
fn droppable_memory_comes_back_empty() {
    let _g = serial_root!();
    let script = r#"
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
MAP_DROPPABLE, MAP_ANONYMOUS = 0x08, 0x20
p = libc.mmap(None, 4096, 3, MAP_DROPPABLE | MAP_ANONYMOUS, -1, 0)
if p in (None, ctypes.c_void_p(-1).value):
    print("unsupported", flush=True)
    while True:
        time.sleep(1)
ctypes.memmove(p, b"secret", 6)
while True:
    print("droppable", ctypes.string_at(p, 6), flush=True)
    time.sleep(0.05)
"#;
    let (before, after) = python_line_before_and_after("droppable", script);
    if before == "unsupported" {
        skip(test_name!(), "this kernel has no MAP_DROPPABLE");
        return;
    }
    assert_eq!(before, "droppable b'secret'", "set up as planned");
    assert_eq!(after, "droppable b'\\x00\\x00\\x00\\x00\\x00\\x00'");
}

/// Memory a parent shares copy-on-write with its child (32 MiB, as after a fork) is shared
/// again after the restore, not copied: the child's proportional share of its anonymous memory
/// stays about half of what it maps, and both still read what they had.
#[test]
fn memory_shared_copy_on_write_with_a_child_stays_shared() {
    let _g = serial_root!();
    let w = Workload::start("cowtree", &workload("cowtree"), &[]);
    let first = w.wait_lines(3, T);
    let child: u32 = first[0]
        .strip_prefix("child ")
        .expect("child line")
        .parse()
        .unwrap();
    let sums = |w: &Workload| {
        let before = w.lines().len();
        for p in [w.pid, child] {
            // SAFETY: kill(2) of the workload's processes, whose SIGUSR1 handler sets a flag.
            unsafe { libc::kill(p as libc::pid_t, libc::SIGUSR1) };
        }
        let end = std::time::Instant::now() + T;
        loop {
            let got: Vec<String> = w.lines()[before..]
                .iter()
                .filter(|l| l.starts_with("sum "))
                .cloned()
                .collect();
            if got.len() == 2 || std::time::Instant::now() > end {
                let mut got = got;
                got.sort();
                return got;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    };
    let anon = |pid: u32| {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
        let kb = |key: &str| -> u64 {
            text.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        (kb("Pss_Anon:"), kb("Anonymous:"))
    };
    let before = sums(&w);
    assert_eq!(before.len(), 2, "{before:?}");
    let (pss0, rss0) = anon(child);
    assert!(
        pss0 * 10 < rss0 * 7,
        "shared before the dump: {pss0} of {rss0} kB"
    );
    let pids = dump_kill_restore(&w);
    assert!(pids.contains(&child), "{pids:?}");
    let (pss, rss) = anon(child);
    let after = sums(&w);
    kill_tree(&pids);
    assert_eq!(after, before, "both read what they had");
    assert!(rss >= 32 << 10, "the child maps its 32 MiB: {rss} kB");
    assert!(
        pss * 10 < rss * 7,
        "shared after the restore: {pss} of {rss} kB"
    );
}

/// hugetlb memory, private and shared (a child writes the shared one), comes back as hugetlb
/// with its content. Needs huge pages: reserved for the test if none are (and given back).
#[test]
fn hugetlb_memory_private_and_shared_comes_back() {
    let _g = serial_root!();
    let knob = "/proc/sys/vm/nr_hugepages";
    let had: u64 = std::fs::read_to_string(knob)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    if had < 8 && std::fs::write(knob, "8").is_err() {
        skip(test_name!(), "cannot reserve huge pages");
        return;
    }
    let free: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("HugePages_Free:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    if free < 8 {
        let _ = std::fs::write(knob, had.to_string());
        skip(
            test_name!(),
            &format!("only {free} free huge pages (8 needed)"),
        );
        return;
    }
    let script = r#"
import hashlib, mmap, os, time
HUGE = 0x40000
priv = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | HUGE)
shared = mmap.mmap(-1, 4 << 20, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS | HUGE)
for i in range(0, 4 << 20, 4096):
    priv[i:i + 8] = i.to_bytes(8, "little")
if os.fork() == 0:
    shared[0:5] = b"child"
    while True: time.sleep(1)
time.sleep(0.2)
i = 0
while True:
    print(i, hashlib.sha1(priv[:]).hexdigest()[:12], bytes(shared[0:5]).decode(), flush=True)
    i += 1; time.sleep(0.02)
"#;
    let w = Workload::python("hugetlb", script);
    let first = w.wait_lines(3, T);
    let huge_areas = |pid: u32| {
        std::fs::read_to_string(format!("/proc/{pid}/smaps"))
            .unwrap_or_default()
            .lines()
            .filter(|l| l.starts_with("KernelPageSize:") && l.contains("2048 kB"))
            .count()
    };
    let before = huge_areas(w.pid);
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 3, T);
    let areas = huge_areas(w.pid);
    kill_tree(&pids);
    let _ = std::fs::write(knob, had.to_string());
    counter_is_continuous(&after);
    let tail = |l: &str| l.split_whitespace().skip(1).collect::<Vec<_>>().join(" ");
    assert_eq!(tail(after.last().unwrap()), tail(&first[2]), "content kept");
    assert!(first[2].ends_with("child"), "{}", first[2]);
    assert_eq!(
        (before, areas),
        (2, 2),
        "both areas hugetlb before and after"
    );
}

/// A task that unmapped its vdso (as on a kernel booted with vdso=0): the dump injects through
/// a syscall instruction of its own code, and the restore gives it no vdso either.
#[test]
fn task_without_a_vdso_comes_back_without_one() {
    let _g = serial_root!();
    let w = Workload::start("novdso", &workload("novdso"), &[]);
    w.wait_lines(3, T);
    let maps = |pid: u32| std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    assert!(!maps(w.pid).contains("[vdso]"), "unmapped before the dump");
    let pids = dump_kill_restore(&w);
    let n = w.lines().len();
    let after = w.wait_lines(n + 5, T);
    let restored = maps(w.pid);
    kill_tree(&pids);
    counter_is_continuous(&after);
    assert!(
        !restored.contains("[vdso]") && !restored.contains("[vvar"),
        "{restored}"
    );
}
