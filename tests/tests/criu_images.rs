//! Images written by CRIU 4.2 itself (tests/fixtures/criu-4.2-counter, see its README) restore
//! with stasis, and the program carries on.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use stasis_tests::*;

/// Where the fixture's program lived when CRIU dumped it: the images name these paths.
const HOME: &str = "/tmp/stasis-criu-fixture";
const PID: u32 = 31338;

#[test]
fn criu_4_2_images_of_a_static_counter_restore() {
    let _g = serial_root!();
    if Path::new(&format!("/proc/{PID}")).exists() {
        skip(
            test_name!(),
            "pid 31338, which the fixture's images hold, is in use on this machine",
        );
        return;
    }
    let fixture = workspace_root().join("tests/fixtures/criu-4.2-counter");
    std::fs::create_dir_all(HOME).expect("fixture home");
    let program = Path::new(HOME).join("counter");
    std::fs::copy(fixture.join("counter"), &program).expect("copy program");
    std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let out = Path::new(HOME).join("out.txt");
    std::fs::copy(fixture.join("out.txt"), &out).expect("copy out.txt");
    // A private copy: the restore writes stats-restore beside the images.
    let images = temp_dir("criu-4.2-images");
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
    assert_eq!(root, PID, "the dumped pid");
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
    while lines(&out).len() < before + 20 && std::time::Instant::now() < end {
        std::thread::sleep(Duration::from_millis(20));
    }
    let after = lines(&out);
    let state = state_of(PID);
    kill_tree(&[PID]);
    assert!(
        after.len() >= before + 20,
        "the counter carried on: {} lines, {} before (state {state})",
        after.len(),
        before
    );
    counter_is_continuous(&after);
}
