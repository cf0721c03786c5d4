//! Checkpoint a child process to a directory and restore it, with the engine as a library.
//!
//! Run as root: `cargo run -p stasis-examples --example checkpoint_child`.
//! (It is compiled by `cargo test`, so it cannot rot.)

use std::process::{Command, Stdio};
use std::time::Duration;

use stasis::dump::{dump, DumpOptions};
use stasis::restore::{restore, RestoreOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: geteuid has no arguments.
    if unsafe { libc::geteuid() } != 0 {
        println!("this example needs root (ptrace and clone3 with set_tid)");
        return Ok(());
    }
    let dir = std::env::temp_dir().join(format!("stasis-example-{}", std::process::id()));
    // 0700: the images hold the child's memory (see docs/security.md).
    stasis::private::create_private_dir(&dir)?;
    let out = dir.join("out.txt");

    // 1. A child that counts, printing to a file.
    let mut child = Command::new("python3")
        .args([
            "-u",
            "-c",
            "import time\ni = 0\nwhile True:\n    i += 1\n    print(i)\n    time.sleep(0.05)",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out)?)
        .spawn()?;
    let pid = child.id();
    std::thread::sleep(Duration::from_millis(300));

    // 2. Checkpoint it: the dump kills the tree once the images are complete.
    let images = dir.join("images");
    stasis::private::create_private_dir(&images)?;
    let stats = dump(&DumpOptions::new(pid, &images))?;
    // Frees the pid. When the caller is the parent, the dump (as tracer) may have reaped it.
    let _ = child.wait();
    println!(
        "dumped pid {pid}: {} pages, frozen {} us",
        stats.pages_written, stats.frozen_time_us
    );

    // 3. Restore it: same pid, it carries on counting. The restorer must be single-threaded.
    let restored = restore(&RestoreOptions {
        images_dir: images,
        ..Default::default()
    })?;
    println!(
        "restored pid {} in {} us",
        restored.root_pid, restored.restore_time_us
    );
    std::thread::sleep(Duration::from_millis(300));
    let text = std::fs::read_to_string(&out)?;
    println!(
        "last lines: {:?}",
        text.lines().rev().take(3).collect::<Vec<_>>()
    );

    // SAFETY: kill(2) and waitpid(2) on our own child.
    unsafe {
        libc::kill(restored.root_pid as libc::pid_t, libc::SIGKILL);
        libc::waitpid(restored.root_pid as libc::pid_t, std::ptr::null_mut(), 0);
    }
    std::fs::remove_dir_all(&dir)?;
    Ok(())
}
