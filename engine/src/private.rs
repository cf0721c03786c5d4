//! Images are secrets: they hold the tree's memory, environment and credentials. Every file
//! stasis writes (images, page files, stats, the log, the pidfile) is created here, mode 0600
//! whatever the umask (a umask only removes bits), and a restore refuses an images dir that
//! others could have written to. See docs/security.md.
//!
//! Two ways to create a file:
//! - [`create_private`], for the files stasis names in the images or work dir: symlinks are not
//!   followed, and an existing entry (an older dump's image, someone else's file, a symlink
//!   planted in a shared dir) is unlinked and created anew rather than reused, so no reader
//!   holding the old file sees the new content.
//! - [`create_private_named`], for paths the user names (`-o`, `--pidfile`): these may be
//!   symlinks (`/dev/stderr`) or devices (`/dev/null`) and are opened as given; a regular file
//!   there is made 0600 before anything is written to it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode of every file stasis writes.
pub const FILE_MODE: u32 = 0o600;

/// Bits that let a user other than the owner write: group and other write.
const OTHERS_WRITE: u32 = 0o022;

fn open_no_follow(path: &Path, create_new: bool) -> io::Result<File> {
    let mut o = OpenOptions::new();
    o.write(true)
        .mode(FILE_MODE)
        // std adds O_CLOEXEC itself. O_NOFOLLOW: a symlink in the dir is not ours to follow;
        // O_NONBLOCK: a FIFO planted there fails with ENXIO instead of blocking the dump (no
        // effect on the regular file we write).
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    if create_new {
        o.create_new(true);
    } else {
        o.create(true);
    }
    o.open(path)
}

/// Creates a file stasis names in the images or work dir, mode 0600.
///
/// Always a new inode: an existing entry (an older dump's image, a symlink, a hard link, a
/// FIFO) is unlinked and the file created anew, so neither the target of a planted link nor a
/// file linked elsewhere is written, and no reader of the old file sees the new content. Never
/// a truncation either: ext4 flushes a file truncated to 0 when it is closed (auto_da_alloc),
/// which made closing a 256 MiB pages image take over 100 ms of the frozen time.
pub fn create_private(path: &Path) -> io::Result<File> {
    match open_no_follow(path, true) {
        Ok(f) => Ok(f),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => replace(path),
        Err(e) => Err(e),
    }
}

fn replace(path: &Path) -> io::Result<File> {
    std::fs::remove_file(path)?;
    // O_EXCL: if someone recreated the name in between, fail rather than write into theirs.
    open_no_follow(path, true)
}

/// Opens a path the user named (`-o`, `--pidfile`) for writing, as `File::create` does, but
/// a regular file is created 0600, or made 0600 if it existed, before it is truncated.
pub fn create_private_named(path: &Path) -> io::Result<File> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .mode(FILE_MODE)
        .open(path)?;
    let md = f.metadata()?;
    if md.file_type().is_file() {
        if md.mode() & 0o7777 != FILE_MODE {
            f.set_permissions(std::fs::Permissions::from_mode(FILE_MODE))?;
        }
        f.set_len(0)?;
    }
    Ok(f)
}

/// Creates the log file or pidfile the user gave as `given`, at `path` (a relative `given`
/// joined to the work dir), 0600 (see docs/security.md): a relative name lands among stasis's own files and is created like
/// them ([`create_private`]), never through a link; an absolute one is the user's path, opened
/// as given ([`create_private_named`]: `/dev/stderr`, `/dev/null`).
pub fn create_output(given: &Path, path: &Path) -> io::Result<File> {
    if given.is_absolute() {
        create_private_named(path)
    } else {
        create_private(path)
    }
}

/// Writes `bytes` to a new private file (see [`create_private`]).
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let mut f = create_private(path)?;
    // The fault point (tests only) fails as a full disk would: the file made, its content not.
    // A write that fails leaves no partial file, which a reader could take for a whole one.
    crate::fault::write_point(path)
        .and_then(|()| f.write_all(bytes))
        .inspect_err(|_| {
            let _ = std::fs::remove_file(path);
        })
}

/// Mode of a directory stasis creates.
pub const DIR_MODE: u32 = 0o700;

/// Creates a directory for images, mode 0700 whatever the umask. One that exists already is
/// the user's and is left as it is (a restore checks it, see [`dir_trust`]).
pub fn create_private_dir(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        r => r,
    }
}

/// Why an images dir is not trusted for a restore.
#[derive(Debug, PartialEq, Eq)]
pub enum Untrusted {
    /// Group or others can write to it (`mode & 0o022`): anyone could have replaced an image.
    WritableByOthers { mode: u32 },
    /// Owned by a user who is neither root nor the caller.
    Owner { uid: u32 },
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Untrusted::WritableByOthers { mode } => {
                write!(f, "writable by others (mode {mode:04o})")
            }
            Untrusted::Owner { uid } => write!(f, "owned by uid {uid}, neither root nor us"),
        }
    }
}

/// Whether a directory with this mode and owner may hold images to restore from, for a caller
/// of effective uid `euid`.
pub fn dir_trust(mode: u32, uid: u32, euid: u32) -> Result<(), Untrusted> {
    if mode & OTHERS_WRITE != 0 {
        return Err(Untrusted::WritableByOthers {
            mode: mode & 0o7777,
        });
    }
    if uid != 0 && uid != euid {
        return Err(Untrusted::Owner { uid });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("stasis-private-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    #[test]
    fn others_writable_dirs_are_refused_whatever_else() {
        let me = 1000;
        assert_eq!(dir_trust(0o40700, me, me), Ok(()));
        assert_eq!(dir_trust(0o40755, 0, me), Ok(()));
        assert_eq!(dir_trust(0o40750, me, 0), Err(Untrusted::Owner { uid: me }));
        for m in [0o777, 0o775, 0o757, 0o1777, 0o720, 0o702] {
            assert_eq!(
                dir_trust(0o40000 | m, me, me),
                Err(Untrusted::WritableByOthers { mode: m }),
                "{m:o}"
            );
        }
    }

    #[test]
    fn new_and_old_files_end_up_0600_with_the_new_content() {
        let d = temp("files");
        let fresh = d.join("fresh.img");
        write_private(&fresh, b"new").unwrap();
        assert_eq!(mode(&fresh), 0o600);
        let old = d.join("old.img");
        std::fs::write(&old, b"an older, longer dump").unwrap();
        std::fs::set_permissions(&old, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&old, b"new").unwrap();
        assert_eq!(mode(&old), 0o600);
        assert_eq!(std::fs::read(&old).unwrap(), b"new");
        // Already private: truncated in place.
        write_private(&old, b"x").unwrap();
        assert_eq!(std::fs::read(&old).unwrap(), b"x");
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_planted_symlink_or_hard_link_is_replaced_not_followed() {
        let d = temp("links");
        let target = d.join("target");
        std::fs::write(&target, b"keep").unwrap();
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o600)).unwrap();
        let sym = d.join("pages-1.img");
        std::os::unix::fs::symlink(&target, &sym).unwrap();
        write_private(&sym, b"secret").unwrap();
        let hard = d.join("core-1.img");
        std::fs::hard_link(&target, &hard).unwrap();
        write_private(&hard, b"secret").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"keep");
        for p in [&sym, &hard] {
            assert!(std::fs::symlink_metadata(p).unwrap().file_type().is_file());
            assert_eq!(mode(p), 0o600);
            assert_eq!(std::fs::read(p).unwrap(), b"secret");
        }
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn dirs_are_made_0700_and_existing_ones_left_alone() {
        let d = temp("dirs");
        let made = d.join("images");
        create_private_dir(&made).unwrap();
        assert_eq!(mode(&made), 0o700);
        std::fs::set_permissions(&made, std::fs::Permissions::from_mode(0o750)).unwrap();
        create_private_dir(&made).unwrap();
        assert_eq!(mode(&made), 0o750);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn named_paths_follow_links_and_leave_devices_alone() {
        let d = temp("named");
        let log = d.join("dump.log");
        std::fs::write(&log, b"old log").unwrap();
        std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o664)).unwrap();
        let link = d.join("via-link.log");
        std::os::unix::fs::symlink(&log, &link).unwrap();
        std::io::Write::write_all(&mut create_private_named(&link).unwrap(), b"new").unwrap();
        assert_eq!(mode(&log), 0o600);
        assert_eq!(std::fs::read(&log).unwrap(), b"new");
        let null = Path::new("/dev/null");
        let before = mode(null);
        create_private_named(null).unwrap();
        assert_eq!(mode(null), before);
        std::fs::remove_dir_all(&d).unwrap();
    }
}
