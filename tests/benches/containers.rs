//! A container's checkpoint and restore through Debian's runc, with stasis as its criu and,
//! when given (`--criu PATH`, a CRIU 4.2 built by hand), with CRIU on the same container:
//! `runc checkpoint` and `runc restore -d` wall time, and the frozen time runc's criu wrote
//! into `stats-dump` (what `podman container checkpoint --print-stats` shows). The container is
//! a busybox shell counting on a pipe (CRIU refuses a host file as stdout) in its own pid,
//! mount, network, UTS and IPC namespaces, with a tmpfs.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use stasis::images::{magic, names, pb, ImageKind, ImageReader};
use stasis_tests::*;

const BUSYBOX: &str = "/bin/busybox";
const ID: &str = "stasis-bench-ctr";

/// The medians of one criu's runs.
pub struct Figures {
    pub who: String,
    pub runs: usize,
    pub checkpoint_s: Option<f64>,
    pub frozen_ms: Option<f64>,
    pub restore_s: Option<f64>,
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied()
}

fn bundle(dir: &Path) -> Result<(), String> {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "proc", "dev", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).map_err(|e| e.to_string())?;
    }
    std::fs::copy(BUSYBOX, rootfs.join("bin/busybox")).map_err(|e| e.to_string())?;
    for a in ["sh", "sleep", "echo"] {
        std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(a))
            .map_err(|e| e.to_string())?;
    }
    let out = Command::new("runc")
        .arg("spec")
        .current_dir(dir)
        .output()
        .map_err(|e| format!("runc spec: {e}"))?;
    if !out.status.success() {
        return Err("runc spec failed".into());
    }
    let spec = std::fs::read_to_string(dir.join("config.json")).map_err(|e| e.to_string())?;
    let spec = spec
        .replace("\"terminal\": true", "\"terminal\": false")
        .replace("\"readonly\": true", "\"readonly\": false")
        .replace(
            "\"sh\"\n",
            "\"sh\", \"-c\", \"i=0; while true; do echo $i; i=$((i+1)); sleep 0.01; done\"\n",
        );
    std::fs::write(dir.join("config.json"), spec).map_err(|e| e.to_string())
}

/// `runc` with stdio on a pipe drained by a thread, as conmon holds a container's.
fn runc(dir: &Path, criu: &Path, args: &[&str]) -> Result<Duration, String> {
    let t = Instant::now();
    let mut child = Command::new("runc")
        .arg("--criu")
        .arg(criu)
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("runc: {e}"))?;
    let mut out = child.stdout.take().ok_or("no pipe")?;
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while matches!(out.read(&mut buf), Ok(n) if n > 0) {}
    });
    let st = child.wait().map_err(|e| e.to_string())?;
    if !st.success() {
        return Err(format!("runc {} failed", args[0]));
    }
    Ok(t.elapsed())
}

fn frozen_ms(work: &Path) -> Result<f64, String> {
    let path = work.join(names::STATS_DUMP);
    let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let e = ImageReader::new(names::STATS_DUMP, &bytes, ImageKind::Service, magic::STATS)
        .and_then(|mut r| r.next_required::<pb::StatsEntry>())
        .map_err(|e| e.to_string())?;
    Ok(e.dump.ok_or("no dump stats")?.frozen_time as f64 / 1000.0)
}

/// `runs` checkpoint/restore cycles of one container with `criu` as runc's criu.
pub fn bench(who: &str, criu: &Path, runs: usize, errors: &mut Vec<String>) -> Option<Figures> {
    if Command::new("runc").arg("--version").output().is_err() || !Path::new(BUSYBOX).exists() {
        eprintln!("containers: no runc or static busybox, skipped");
        return None;
    }
    let dir = temp_dir("bench-runc");
    if let Err(e) = bundle(&dir) {
        errors.push(format!("containers: {e}"));
        return None;
    }
    let _ = Command::new("runc").args(["delete", "-f", ID]).output();
    let (mut ck, mut fr, mut rs) = (Vec::new(), Vec::new(), Vec::new());
    let mut run = || -> Result<(), String> {
        runc(&dir, criu, &["run", "-d", ID])?;
        std::thread::sleep(Duration::from_millis(200));
        for i in 0..runs {
            eprintln!("container ({who}) run {} ...", i + 1);
            let images = format!("ckpt{i}");
            let work = format!("work{i}");
            let c = runc(
                &dir,
                criu,
                &[
                    "checkpoint",
                    "--image-path",
                    &images,
                    "--work-path",
                    &work,
                    ID,
                ],
            )?;
            ck.push(c.as_secs_f64());
            fr.push(frozen_ms(&dir.join(&work))?);
            let r = runc(
                &dir,
                criu,
                &[
                    "restore",
                    "-d",
                    "--image-path",
                    &images,
                    "--work-path",
                    &work,
                    ID,
                ],
            )?;
            rs.push(r.as_secs_f64());
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
    if let Err(e) = run() {
        errors.push(format!("container ({who}): {e}"));
    }
    let _ = Command::new("runc").args(["delete", "-f", ID]).output();
    let _ = std::fs::remove_dir_all(&dir);
    Some(Figures {
        who: who.to_string(),
        runs: ck.len(),
        checkpoint_s: median(ck),
        frozen_ms: median(fr),
        restore_s: median(rs),
    })
}

pub fn print(rows: &[Figures]) {
    if rows.is_empty() {
        return;
    }
    println!();
    println!("Container (runc 1.1.5, busybox counter; its own pid/mnt/net/uts/ipc namespaces)");
    println!(
        "{:<28} {:>4} {:>14} {:>10} {:>11}",
        "criu", "runs", "checkpoint s", "frozen ms", "restore s"
    );
    let f = |v: Option<f64>, p: usize| v.map_or("-".to_string(), |v| format!("{v:.p$}"));
    for r in rows {
        println!(
            "{:<28} {:>4} {:>14} {:>10} {:>11}",
            r.who,
            r.runs,
            f(r.checkpoint_s, 3),
            f(r.frozen_ms, 1),
            f(r.restore_s, 3)
        );
    }
    println!("(checkpoint and restore: wall time of the runc command; frozen: stats-dump)");
}

/// `--criu PATH`, if given: a CRIU to compare with.
pub fn criu_to_compare(arg: Option<&str>) -> Option<PathBuf> {
    arg.map(PathBuf::from).filter(|p| p.exists())
}
