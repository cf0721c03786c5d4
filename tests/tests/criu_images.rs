//! Images written by CRIU 4.2 itself (tests/fixtures/criu-4.2-*, see their READMEs) restore with
//! stasis, and the program carries on.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use stasis_tests::*;

/// A fixture: where its program lived when CRIU dumped it (the images name these paths), the
/// program's file name, the root's pid, and how to tell its output carries on.
struct Fixture {
    dir: &'static str,
    home: &'static str,
    program: &'static str,
    pid: u32,
    /// Every pid and tid the images hold: all must be free.
    tids: &'static [u32],
    /// Checks the whole output after the restore: it went on from where it was.
    carried_on: fn(&[String]),
    /// The tree had a time namespace of its own, which the restore must make again.
    own_timens: bool,
}

#[test]
fn criu_4_2_images_of_a_static_counter_restore() {
    restore_fixture(
        test_name!(),
        &Fixture {
            dir: "criu-4.2-counter",
            home: "/tmp/stasis-criu-fixture",
            program: "counter",
            pid: 31338,
            tids: &[31338],
            carried_on: counter_is_continuous,
            own_timens: false,
        },
    );
}

/// A Go program: no glibc, its own runtime threads (CRIU writes an rseq entry of zeros for each),
/// in a time namespace of its own whose clocks read about a minute at the dump: Go's timers
/// are deadlines on CLOCK_MONOTONIC, which the restore must carry on from there, whatever this
/// machine's uptime.
#[test]
fn criu_4_2_images_of_a_go_program_restore() {
    restore_fixture(
        test_name!(),
        &Fixture {
            dir: "criu-4.2-gocounter",
            home: "/tmp/stasis-criu-fixture-go",
            program: "gocounter",
            pid: 31438,
            tids: &[31438, 31440, 31441, 31442],
            carried_on: |lines| {
                // "go <i> true <len>": i counts up by one, the goroutines run.
                for (k, l) in lines.iter().enumerate() {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    assert_eq!(f.first(), Some(&"go"), "{l}");
                    assert_eq!(f.get(1), Some(&k.to_string().as_str()), "line {k}: {l}");
                    if k > 0 {
                        assert_eq!(f.get(2), Some(&"true"), "{l}");
                    }
                }
            },
            own_timens: true,
        },
    );
}

/// A parent and child sharing a file they deleted, mapped shared, with a process-shared
/// semaphore in it (python's multiprocessing holds its locks so): CRIU writes a ghost file
/// under 12 KiB with no size, its contents to the end of the image. Read as empty, the
/// mapping lay past the end of the file and the first sem_wait failed (EFAULT from futex).
#[test]
fn criu_4_2_images_of_a_shared_semaphore_in_a_deleted_file_restore() {
    restore_fixture(
        test_name!(),
        &Fixture {
            dir: "criu-4.2-semghost",
            home: "/tmp/stasis-criu-fixture-semghost",
            program: "semghost",
            pid: 31537,
            tids: &[31537, 31539],
            carried_on: |lines| {
                // "<i> <count> <checksum>": i counts up by one; the shared count grows as
                // both processes bump it; the file read through the fd is the same.
                let mut last = 0;
                for (k, l) in lines.iter().enumerate() {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    assert_eq!(f.len(), 3, "line {k}: {l}");
                    assert_eq!(f[0], k.to_string(), "line {k}: {l}");
                    let count: u64 = f[1].parse().expect("count");
                    assert!(count > last, "line {k}: the shared count went on: {l}");
                    last = count;
                    assert_eq!(f[2], "1624d44faff37383", "line {k}: the file's contents");
                }
            },
            own_timens: false,
        },
    );
}

fn restore_fixture(test: &str, fx: &Fixture) {
    let _g = serial_root!();
    let (pid, home) = (fx.pid, fx.home);
    if let Some(t) = fx
        .tids
        .iter()
        .find(|t| Path::new(&format!("/proc/{t}")).exists())
    {
        skip(
            test,
            &format!("pid {t}, which the fixture's images hold, is in use on this machine"),
        );
        return;
    }
    let fixture = workspace_root().join("tests/fixtures").join(fx.dir);
    std::fs::create_dir_all(home).expect("fixture home");
    let program = Path::new(home).join(fx.program);
    std::fs::copy(fixture.join(fx.program), &program).expect("copy program");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Path::new(home).join("out.txt");
    std::fs::copy(fixture.join("out.txt"), &out).expect("copy out.txt");
    // A private copy: the restore writes stats-restore beside the images.
    let images = temp_dir(fx.dir);
    std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    for e in std::fs::read_dir(fixture.join("images")).expect("fixture images") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), images.join(e.file_name())).expect("copy image");
    }
    let pidfile = images.join("restored.pid");
    let r = stasis(&[
        "restore",
        "-D",
        images.to_str().expect("utf8"),
        "-d",
        "--pidfile",
        pidfile.to_str().expect("utf8"),
    ]);
    check_ok("restore of CRIU 4.2's images", &r);
    let root: u32 = std::fs::read_to_string(&pidfile)
        .expect("pidfile")
        .trim()
        .parse()
        .expect("pid");
    assert_eq!(root, pid, "the dumped pid");
    let before = std::fs::read_to_string(fixture.join("out.txt"))
        .expect("fixture out")
        .lines()
        .count();
    let lines = |p: &Path| -> Vec<String> {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    };
    let end = std::time::Instant::now() + T;
    let want = before + 10;
    while lines(&out).len() < want && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = lines(&out);
    let state = state_of(pid);
    let timens = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/time")).ok();
    let in_own_timens = timens(&pid.to_string()) != timens("self");
    let offsets =
        std::fs::read_to_string(format!("/proc/{pid}/timens_offsets")).unwrap_or_default();
    kill_tree(fx.tids);
    assert!(
        after.len() >= want,
        "the program carried on: {} lines, {} before (state {state})",
        after.len(),
        before
    );
    assert_eq!(
        in_own_timens, fx.own_timens,
        "a time namespace of its own (offsets: {offsets})"
    );
    (fx.carried_on)(&after);
}

/// Images saved with register state this CPU cannot hold (an XSAVE component it lacks in use)
/// are refused by name before anything is made, as CRIU's default `--cpu-cap=fpu` does; with
/// `--cpu-cap=none` the check is skipped (and the images' pid is then all that stops it).
#[test]
fn images_needing_cpu_state_this_cpu_lacks_are_refused() {
    use stasis::images::{magic, pb, ImageKind, ImageReader, ImageWriter};
    let _g = serial_root!();
    let host = stasis::task::arch::host_xfeatures();
    // The AMX tile data or, on a CPU with AMX, any component above it that it lacks.
    let Some(bit) = (18..63).find(|b| host & (1u64 << b) == 0) else {
        skip(test_name!(), "this CPU has every XSAVE component");
        return;
    };
    let images = temp_dir("cpu-cap");
    std::fs::set_permissions(&images, std::fs::Permissions::from_mode(0o700)).expect("chmod");
    let fixture = workspace_root().join("tests/fixtures/criu-4.2-counter/images");
    for e in std::fs::read_dir(&fixture).expect("fixture images") {
        let e = e.expect("entry");
        std::fs::copy(e.path(), images.join(e.file_name())).expect("copy image");
    }
    let name = "core-31338.img";
    let bytes = std::fs::read(images.join(name)).expect("core");
    let mut r = ImageReader::new(name, &bytes, ImageKind::Normal, magic::CORE).expect("reader");
    let mut core: pb::CoreEntry = r.next_required().expect("core entry");
    let fp = &mut core.thread_info.as_mut().expect("x86 thread info").fpregs;
    fp.xsave.get_or_insert_with(Default::default).xstate_bv |= 1 << bit;
    let mut w = ImageWriter::new(ImageKind::Normal, magic::CORE);
    w.push(&core);
    std::fs::write(images.join(name), w.into_bytes()).expect("write core");
    let dir = images.to_str().expect("utf8");
    let r = stasis(&["restore", "-D", dir, "-d"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!r.status.success(), "refused");
    assert!(
        err.contains("thread 31338: the images hold")
            && err.contains(&format!("component {bit}"))
            && err.contains("--cpu-cap=none"),
        "{err}"
    );
    // Through the refusal with --cpu-cap=none: what stops it now is whatever comes next (its
    // program is not where the images say), not the CPU check.
    let r = stasis(&["restore", "-D", dir, "-d", "--cpu-cap=none"]);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(!err.contains("the images hold"), "{err}");
    kill_tree(&[31338]);
    std::fs::remove_dir_all(&images).expect("clean up");
}
