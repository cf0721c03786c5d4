//! A tmpfs's content, saved as CRIU saves it: a gzipped tar (`tmpfs-dev-<dev>.tar.gz.img`),
//! which GNU tar (CRIU's restore) reads as well as we do. The `tar` crate writes and reads
//! the archive; what it leaves out is done here: device nodes and FIFOs are made with mknod
//! (the crate would unpack them as empty files, and a container's /dev is a tmpfs full of
//! them), the walk stays on the one filesystem (a mount inside the tmpfs is saved as its
//! empty mountpoint), and the root directory's own mode and owner are kept.

use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TmpfsError {
    #[error("saving the tmpfs at {dir}: {what}")]
    Save {
        dir: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("restoring {archive} into {dir}: {what}")]
    Load {
        archive: PathBuf,
        dir: PathBuf,
        what: String,
        #[source]
        source: std::io::Error,
    },
}

/// Saves the tree under `dir` (a tmpfs whose device is `dev`) into `out`, created 0600.
pub fn save(dir: &Path, dev: u64, out: &Path) -> Result<(), TmpfsError> {
    let err = |what: String| {
        let dir = dir.to_path_buf();
        move |source| TmpfsError::Save { dir, what, source }
    };
    let file =
        crate::private::create_private(out).map_err(err(format!("creating {}", out.display())))?;
    let gz = flate2::write::GzEncoder::new(file, flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    let md = std::fs::symlink_metadata(dir).map_err(err("stat".into()))?;
    append_dir(&mut b, &md, Path::new(".")).map_err(err("adding the root directory".into()))?;
    let mut seen = std::collections::HashMap::new();
    walk(&mut b, dir, Path::new(""), dev, &mut seen).map_err(err("adding its files".into()))?;
    let gz = b
        .into_inner()
        .map_err(err("finishing the archive".into()))?;
    let mut file = gz.finish().map_err(err("finishing the archive".into()))?;
    file.flush().map_err(err("writing the archive".into()))?;
    Ok(())
}

fn append_dir<W: Write>(
    b: &mut tar::Builder<W>,
    md: &std::fs::Metadata,
    name: &Path,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_metadata_in_mode(md, tar::HeaderMode::Complete);
    h.set_entry_type(tar::EntryType::Directory);
    h.set_size(0);
    b.append_data(&mut h, name, std::io::empty())
}

/// `seen`: the first name of each file with several links, so that its other names are saved
/// as hard links to it (as GNU tar does), not as copies that part at the first write.
fn walk<W: Write>(
    b: &mut tar::Builder<W>,
    dir: &Path,
    rel: &Path,
    dev: u64,
    seen: &mut std::collections::HashMap<u64, PathBuf>,
) -> std::io::Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()?;
    // Sorted: the same content makes the same archive.
    names.sort();
    for name in names {
        let path = dir.join(&name);
        let rel = rel.join(&name);
        let md = std::fs::symlink_metadata(&path)?;
        let ft = md.file_type();
        if md.dev() != dev {
            // A mount inside the tmpfs: only its mountpoint is ours.
            if ft.is_dir() {
                append_dir(b, &md, &rel)?;
            } else {
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
                h.set_entry_type(tar::EntryType::Regular);
                h.set_size(0);
                b.append_data(&mut h, &rel, std::io::empty())?;
            }
            continue;
        }
        if ft.is_socket() {
            // As GNU tar: a socket file cannot be archived (its listener makes it again).
            log::warn!("tmpfs: socket {} not saved", path.display());
            continue;
        }
        let special = if ft.is_char_device() {
            Some(tar::EntryType::Char)
        } else if ft.is_block_device() {
            Some(tar::EntryType::Block)
        } else if ft.is_fifo() {
            Some(tar::EntryType::Fifo)
        } else {
            None
        };
        if ft.is_dir() {
            append_dir(b, &md, &rel)?;
            walk(b, &path, &rel, dev, seen)?;
        } else if let Some(kind) = special {
            // By hand: the crate names a device entry by its path here, not by `rel`.
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
            h.set_entry_type(kind);
            h.set_size(0);
            let rdev = md.rdev();
            h.set_device_major(libc::major(rdev))?;
            h.set_device_minor(libc::minor(rdev))?;
            b.append_data(&mut h, &rel, std::io::empty())?;
        } else if let Some(first) = seen.get(&md.ino()).filter(|_| ft.is_file()) {
            let mut h = tar::Header::new_gnu();
            h.set_metadata_in_mode(&md, tar::HeaderMode::Complete);
            h.set_entry_type(tar::EntryType::Link);
            h.set_size(0);
            b.append_link(&mut h, &rel, first)?;
        } else {
            if ft.is_file() && md.nlink() > 1 {
                seen.insert(md.ino(), rel.clone());
            }
            b.append_path_with_name(&path, &rel)?;
        }
    }
    Ok(())
}

/// Restores the archive `archive` into `dir` (an empty tmpfs just mounted).
pub fn load(archive: &Path, dir: &Path) -> Result<(), TmpfsError> {
    let err = |what: String| {
        let (archive, dir) = (archive.to_path_buf(), dir.to_path_buf());
        move |source| TmpfsError::Load {
            archive,
            dir,
            what,
            source,
        }
    };
    let file = std::fs::File::open(archive).map_err(err("opening it".into()))?;
    let mut a = tar::Archive::new(flate2::read::GzDecoder::new(file));
    a.set_preserve_permissions(true);
    a.set_preserve_ownerships(true);
    a.set_preserve_mtime(true);
    a.set_unpack_xattrs(false);
    let mut dirs = Vec::new();
    for entry in a.entries().map_err(err("reading it".into()))? {
        let mut entry = entry.map_err(err("reading an entry".into()))?;
        let path = entry
            .path()
            .map_err(err("an entry's name".into()))?
            .into_owned();
        let what = || format!("entry {}", path.display());
        let rel = relative(&path).ok_or_else(|| {
            err(what())(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "its name leaves the directory",
            ))
        })?;
        let h = entry.header();
        let mode = h.mode().map_err(err(what()))?;
        let owner = (
            h.uid().map_err(err(what()))? as u32,
            h.gid().map_err(err(what()))? as u32,
        );
        let kind = h.entry_type();
        if rel.as_os_str().is_empty() {
            set_owner_mode(dir, owner, mode).map_err(err(what()))?;
            continue;
        }
        let node = match kind {
            tar::EntryType::Char => Some(libc::S_IFCHR),
            tar::EntryType::Block => Some(libc::S_IFBLK),
            tar::EntryType::Fifo => Some(libc::S_IFIFO),
            _ => None,
        };
        if let Some(fmt) = node {
            let major = h.device_major().ok().flatten().unwrap_or(0);
            let minor = h.device_minor().ok().flatten().unwrap_or(0);
            let target = dir.join(&rel);
            nix::sys::stat::mknod(
                &target,
                nix::sys::stat::SFlag::from_bits_truncate(fmt),
                nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777),
                libc::makedev(major, minor),
            )
            .map_err(|e| err(what())(e.into()))?;
            set_owner_mode(&target, owner, mode).map_err(err(what()))?;
            continue;
        }
        if kind == tar::EntryType::Directory {
            dirs.push((dir.join(&rel), h.mtime().unwrap_or(0)));
        }
        entry.unpack_in(dir).map_err(err(what()))?;
    }
    // Directories' times last: filling a directory changes its mtime.
    for (d, mtime) in dirs.into_iter().rev() {
        let t = nix::sys::time::TimeSpec::new(mtime as i64, 0);
        let _ = nix::sys::stat::utimensat(
            nix::fcntl::AT_FDCWD,
            &d,
            &t,
            &t,
            nix::sys::stat::UtimensatFlags::NoFollowSymlink,
        );
    }
    Ok(())
}

/// `path` as a path inside the directory (`./a/b` → `a/b`, `.` → empty), or None if it
/// would leave it (`..`, an absolute name).
fn relative(path: &Path) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::Normal(n) => out.push(n),
            Component::CurDir => {}
            _ => return None,
        }
    }
    Some(out)
}

fn set_owner_mode(path: &Path, (uid, gid): (u32, u32), mode: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode & 0o7777))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_leave_the_directory_are_refused() {
        assert_eq!(relative(Path::new("./a/b")), Some(PathBuf::from("a/b")));
        assert_eq!(relative(Path::new(".")), Some(PathBuf::new()));
        assert_eq!(relative(Path::new("a/../../b")), None);
        assert_eq!(relative(Path::new("/etc/passwd")), None);
    }

    #[test]
    fn files_links_and_modes_come_back() {
        let base = std::env::temp_dir().join(format!("stasis-tmpfs-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let src = base.join("src");
        std::fs::create_dir_all(src.join("d/e")).unwrap();
        std::fs::write(src.join("d/f"), b"hello").unwrap();
        std::fs::hard_link(src.join("d/f"), src.join("d/e/hard")).unwrap();
        std::os::unix::fs::symlink("d/f", src.join("link")).unwrap();
        std::os::unix::fs::symlink("/proc/self/fd", src.join("fd")).unwrap();
        nix::unistd::mkfifo(
            &src.join("fifo"),
            nix::sys::stat::Mode::from_bits_truncate(0o640),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let dev = std::fs::metadata(&src).unwrap().dev();
        let img = base.join("t.tar.gz.img");
        save(&src, dev, &img).unwrap();
        assert_eq!(
            std::fs::metadata(&img).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let dst = base.join("dst");
        std::fs::create_dir_all(&dst).unwrap();
        load(&img, &dst).unwrap();
        assert_eq!(std::fs::read(dst.join("d/f")).unwrap(), b"hello");
        let ino = |p: &str| std::fs::metadata(dst.join(p)).unwrap().ino();
        assert_eq!(ino("d/f"), ino("d/e/hard"), "a hard link stays one file");
        assert_eq!(
            std::fs::metadata(dst.join("d/f")).unwrap().nlink(),
            2,
            "with both names"
        );
        assert_eq!(
            std::fs::read_link(dst.join("link")).unwrap(),
            PathBuf::from("d/f")
        );
        assert!(dst.join("d/e").is_dir());
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::metadata(dst.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
        assert_eq!(
            std::fs::read_link(dst.join("fd")).unwrap(),
            PathBuf::from("/proc/self/fd")
        );
        assert_eq!(
            std::fs::metadata(&dst).unwrap().permissions().mode() & 0o7777,
            0o1777
        );
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_corrupt_archive_is_an_error() {
        let base = std::env::temp_dir().join(format!("stasis-tmpfs-bad-{}", std::process::id()));
        std::fs::create_dir_all(&base).unwrap();
        let img = base.join("bad.tar.gz.img");
        std::fs::write(&img, b"\x1f\x8b not really gzip").unwrap();
        assert!(load(&img, &base).is_err());
        let _ = std::fs::remove_dir_all(&base);
    }
}
