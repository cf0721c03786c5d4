//! CRIU's command line as zdtm drives it (`zdtm.py --criu-bin stasis`): the options it passes
//! are accepted, what stasis does not do yet is refused by name, and `stats-dump` has the
//! counters zdtm reads.

use stasis::images::{magic, names, pb, ImageKind, ImageReader};
use stasis_tests::*;

fn one_line_error(o: &std::process::Output, want: &str) {
    assert_eq!(o.status.code(), Some(1), "exit code 1");
    let e = String::from_utf8_lossy(&o.stderr);
    assert_eq!(e.trim().lines().count(), 1, "one line: {e}");
    assert_eq!(e.trim(), format!("Error: {want}"));
}

#[test]
fn unsupported_options_are_refused_by_name_before_anything_is_done() {
    one_line_error(
        &stasis(&["dump", "--no-default-config", "-t", "1", "--lazy-pages"]),
        "--lazy-pages is not supported yet",
    );
    one_line_error(
        &stasis(&["dump", "-t", "1", "--pre-dump-mode=read"]),
        "--pre-dump-mode=read is not supported yet",
    );
    one_line_error(
        &stasis(&["pre-dump", "-t", "1"]),
        "pre-dump is not supported yet",
    );
    one_line_error(
        &stasis(&["restore", "--frobnicate"]),
        "unknown option --frobnicate",
    );
    // zdtm's feature probe: exit 0 for what stasis supports, 1 with a reason otherwise.
    let o = stasis(&[
        "check",
        "--no-default-config",
        "-v0",
        "--feature",
        "seccomp_filters",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    one_line_error(
        &stasis(&["check", "--no-default-config", "-v0", "--feature", "uffd"]),
        "uffd is not supported by stasis yet",
    );
}

fn dump_stats(dir: &std::path::Path) -> pb::DumpStatsEntry {
    let bytes = std::fs::read(dir.join(names::STATS_DUMP)).expect("stats-dump");
    ImageReader::new(names::STATS_DUMP, &bytes, ImageKind::Service, magic::STATS)
        .and_then(|mut r| r.next_required::<pb::StatsEntry>())
        .expect("stats entry")
        .dump
        .expect("dump stats")
}

/// zdtm's dump line, and its page count check: pages_written + shpages_written is the size of
/// the pages images.
#[test]
fn zdtm_dump_line_and_its_page_counts() {
    let _g = serial_root!();
    let w = Workload::start("zdtm-line", &workload("shmem"), &[]);
    w.wait_lines(3, T);
    let pids = tree_and_session(w.pid);
    let img = w.images();
    let pid = w.pid.to_string();
    let pidfile = img.join("dump.pid");
    let o = stasis(&[
        "dump",
        "--no-default-config",
        "-o",
        "dump.log",
        "-D",
        img.to_str().expect("utf8"),
        "-v4",
        "-t",
        &pid,
        "--pidfile",
        pidfile.to_str().expect("utf8"),
        "--timeout",
        "10",
        "--pre-dump-mode",
        "splice",
        "--leave-running",
    ]);
    check_ok("dump", &o);
    kill_tree(&pids);
    let s = dump_stats(&img);
    let mut bytes = 0;
    for e in std::fs::read_dir(&img).expect("images").flatten() {
        if e.file_name().to_string_lossy().starts_with("pages-") {
            bytes += e.metadata().expect("stat").len();
        }
    }
    let written = s.pages_written + s.shpages_written.expect("shpages_written");
    assert_eq!(written * 4096, bytes, "{s:?}");
    assert!(
        s.shpages_written > Some(0),
        "the shared page is counted: {s:?}"
    );
    assert_eq!(s.shpages_skipped_parent, Some(0));
}
