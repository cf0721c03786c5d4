//! Files deleted while open, restore side: each is made again from its ghost image (or, for
//! a FIFO, made anew) for as long as the restorer opens it, then unlinked.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};

/// Files deleted while open, recreated for as long as the restorer opens them, then unlinked.
#[derive(Default)]
pub struct GhostFiles {
    made: HashMap<u32, String>,
    /// Directories made for ghosts whose directory was deleted too, deepest last.
    dirs: Vec<PathBuf>,
    /// Ghost directories (a deleted cwd or directory fd), removed before `dirs`.
    ghost_dirs: Vec<String>,
}

impl GhostFiles {
    /// Creates ghost `id` at its old path (or beside it if that name is taken); returns the path.
    pub fn create(&mut self, id: u32, orig: &str, img: &DumpImage) -> Result<String, RestoreError> {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        if let Some(p) = self.made.get(&id) {
            return Ok(p.clone());
        }
        let (entry, chunks) = &img.ghosts[&id];
        let kind = entry.mode & libc::S_IFMT;
        if kind == libc::S_IFCHR || kind == libc::S_IFBLK {
            return self.device(id, orig, entry);
        }
        if kind == libc::S_IFDIR {
            return self.directory(id, orig, entry);
        }
        if kind == libc::S_IFLNK {
            return self.symlink(id, orig, entry);
        }
        let err = |path: &str| {
            let path = path.to_string();
            move |source| RestoreError::Open { id, path, source }
        };
        let mut path = orig.to_string();
        let mut n = 0;
        let f = loop {
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
            {
                Ok(f) => break f,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && n < 100 => {
                    n += 1;
                    path = format!("{orig}.stasis-ghost-{id}-{n}");
                }
                // Its directory was deleted too: make it for as long as the ghost lives.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && n < 100 => {
                    n += 1;
                    self.make_parents(Path::new(&path)).map_err(err(&path))?;
                }
                Err(e) => return Err(err(&path)(e)),
            }
        };
        // Registered first, so a failure below still unlinks it.
        self.made.insert(id, path.clone());
        // The size first (holes stay holes), then each piece of data at its place.
        f.set_len(entry.size.unwrap_or(0)).map_err(err(&path))?;
        for (off, data) in chunks {
            std::os::unix::fs::FileExt::write_all_at(&f, data, *off).map_err(err(&path))?;
        }
        // Owned as it was where we may (we are root); a failure leaves it ours, which only
        // matters to the restorer, since the ghost is unlinked before any task runs. Before
        // the mode: a change of owner clears the set-user-ID and set-group-ID bits.
        if let Err(e) = std::os::unix::fs::fchown(&f, Some(entry.uid), Some(entry.gid)) {
            log::warn!("ghost file {path}: cannot give it back its owner: {e}");
        }
        f.set_permissions(std::fs::Permissions::from_mode(entry.mode & 0o7777))
            .map_err(err(&path))?;
        // Its times last, as the writes above moved them.
        let ts = |t: Option<&pb::Timeval>| {
            t.map(|t| {
                nix::sys::time::TimeSpec::new(t.tv_sec as libc::time_t, (t.tv_usec * 1000) as _)
            })
            .unwrap_or(nix::sys::time::TimeSpec::UTIME_OMIT)
        };
        nix::sys::stat::futimens(&f, &ts(entry.atim.as_ref()), &ts(entry.mtim.as_ref()))
            .map_err(|e| err(&path)(e.into()))?;
        Ok(path)
    }
}

impl GhostFiles {
    /// A symlink deleted while an O_PATH fd held it, made again at its old path (or beside
    /// it) with its target and owner.
    fn symlink(
        &mut self,
        id: u32,
        orig: &str,
        entry: &pb::GhostFileEntry,
    ) -> Result<String, RestoreError> {
        let target = entry.symlnk_target.as_deref().unwrap_or_default();
        let mut path = orig.to_string();
        for n in 1..=100 {
            match std::os::unix::fs::symlink(target, &path) {
                Ok(()) => {
                    self.made.insert(id, path.clone());
                    if let Err(e) =
                        std::os::unix::fs::lchown(&path, Some(entry.uid), Some(entry.gid))
                    {
                        log::warn!("ghost symlink {path}: cannot give it back its owner: {e}");
                    }
                    return Ok(path);
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    path = format!("{orig}.stasis-ghost-{id}-{n}");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.make_parents(Path::new(&path))
                        .map_err(|source| RestoreError::Open {
                            id,
                            path: path.clone(),
                            source,
                        })?;
                }
                Err(source) => return Err(RestoreError::Open { id, path, source }),
            }
        }
        Err(RestoreError::Open {
            id,
            path,
            source: std::io::Error::from_raw_os_error(libc::EEXIST),
        })
    }

    /// A directory deleted while in use, made again empty at its old path or beside it, with
    /// its owner and mode.
    fn directory(
        &mut self,
        id: u32,
        orig: &str,
        entry: &pb::GhostFileEntry,
    ) -> Result<String, RestoreError> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let err = |path: &str| {
            let path = path.to_string();
            move |source| RestoreError::Open { id, path, source }
        };
        let mut path = orig.to_string();
        let mut made = false;
        for n in 1..=100 {
            match std::fs::DirBuilder::new().mode(0o700).create(&path) {
                Ok(()) => {
                    self.ghost_dirs.push(path.clone());
                    made = true;
                    break;
                }
                // Made already as the parent of another ghost (a deleted cwd above a
                // deleted directory fd): that is this one; it goes when its children have.
                Err(e)
                    if e.kind() == std::io::ErrorKind::AlreadyExists
                        && self.dirs.iter().any(|d| d.as_os_str() == path.as_str()) =>
                {
                    made = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    path = format!("{orig}.stasis-ghost-{id}-{n}");
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    self.make_parents(Path::new(&path)).map_err(err(&path))?;
                }
                Err(e) => return Err(err(&path)(e)),
            }
        }
        if !made {
            return Err(err(&path)(std::io::Error::from_raw_os_error(libc::EEXIST)));
        }
        self.made.insert(id, path.clone());
        if let Err(e) = std::os::unix::fs::chown(&path, Some(entry.uid), Some(entry.gid)) {
            log::warn!("ghost directory {path}: cannot give it back its owner: {e}");
        }
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(entry.mode & 0o7777))
            .map_err(err(&path))?;
        Ok(path)
    }

    /// A device node deleted while open, made again (mknod) at its old path or beside it.
    fn device(
        &mut self,
        id: u32,
        orig: &str,
        entry: &pb::GhostFileEntry,
    ) -> Result<String, RestoreError> {
        let err = |path: &str| {
            let path = path.to_string();
            move |source| RestoreError::Open { id, path, source }
        };
        let rdev = entry.rdev.unwrap_or(0) as libc::dev_t;
        let mut path = orig.to_string();
        for n in 1..=100 {
            let c = std::ffi::CString::new(path.as_str())
                .map_err(|_| err(&path)(std::io::Error::from_raw_os_error(libc::EINVAL)))?;
            // SAFETY: mknod with a NUL-terminated path of ours and plain integers.
            if unsafe { libc::mknod(c.as_ptr(), entry.mode, rdev) } == 0 {
                self.made.insert(id, path.clone());
                if let Err(e) = std::os::unix::fs::chown(&path, Some(entry.uid), Some(entry.gid)) {
                    log::warn!("ghost device {path}: cannot give it back its owner: {e}");
                }
                // mknod's mode went through the umask.
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(
                    &path,
                    std::fs::Permissions::from_mode(entry.mode & 0o7777),
                )
                .map_err(err(&path))?;
                return Ok(path);
            }
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::AlreadyExists => path = format!("{orig}.stasis-ghost-{id}-{n}"),
                std::io::ErrorKind::NotFound => {
                    self.make_parents(Path::new(&path)).map_err(err(&path))?
                }
                _ => return Err(err(&path)(e)),
            }
        }
        Err(err(&path)(std::io::Error::from_raw_os_error(libc::EEXIST)))
    }

    /// Makes a FIFO for FIFO `id`, unlinked while open, at its old path (or beside it if that
    /// name is taken); returns the path, unlinked again with the ghosts.
    pub fn fifo(&mut self, id: u32, orig: &str, mode: u32) -> Result<String, RestoreError> {
        let mut path = orig.to_string();
        for n in 1..=100 {
            let perms = nix::sys::stat::Mode::from_bits_truncate(mode & 0o7777);
            // A path with a NUL byte is refused with EINVAL, as before.
            let e = match nix::unistd::mkfifo(path.as_str(), perms) {
                Ok(()) => {
                    self.made.insert(id, path.clone());
                    return Ok(path);
                }
                Err(e) => std::io::Error::from(e),
            };
            match e.kind() {
                std::io::ErrorKind::AlreadyExists => {
                    path = format!("{orig}.stasis-ghost-{id}-{n}");
                }
                std::io::ErrorKind::NotFound => {
                    self.make_parents(Path::new(&path))
                        .map_err(|source| RestoreError::Open {
                            id,
                            path: path.clone(),
                            source,
                        })?;
                }
                _ => {
                    return Err(RestoreError::Open {
                        id,
                        path,
                        source: e,
                    })
                }
            }
        }
        Err(RestoreError::Open {
            id,
            path,
            source: std::io::Error::from_raw_os_error(libc::EEXIST),
        })
    }

    /// Makes the missing directories above `path`, remembering them to remove them later.
    fn make_parents(&mut self, path: &Path) -> std::io::Result<()> {
        let mut missing = Vec::new();
        let mut dir = path.parent();
        while let Some(d) = dir.filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
            missing.push(d.to_path_buf());
            dir = d.parent();
        }
        for d in missing.into_iter().rev() {
            std::fs::create_dir(&d)?;
            self.dirs.push(d);
        }
        Ok(())
    }
}

impl Drop for GhostFiles {
    fn drop(&mut self) {
        for p in self.made.values().filter(|p| !self.ghost_dirs.contains(p)) {
            let _ = std::fs::remove_file(p);
        }
        for d in self.ghost_dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
        for d in self.dirs.iter().rev() {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Links the open inode behind `open` (a `/proc/<pid>/fd/N` link) as `link_remap.<link_id>`
/// beside `orig`, its old name; its directory may be gone too (zdtm's unlink_regular00): then
/// in the nearest directory above that is still there, as CRIU does. Paths are the tree's,
/// reached under `root` when it has a mount namespace of its own. Returns (the link's name
/// as the tree sees it, its path here).
pub(crate) fn make_link_remap(
    open: &str,
    orig: &str,
    root: Option<&str>,
    link_id: u32,
) -> Result<(String, String), super::FilesError> {
    let mut dir = Path::new(orig).parent().unwrap_or(Path::new("/"));
    loop {
        let name = dir.join(format!("link_remap.{link_id}"));
        let name = name.to_string_lossy().into_owned();
        let here = match root {
            Some(root) => crate::ns::mnt::under(root, &name),
            None => name.clone(),
        };
        // linkat of a /proc fd link (AT_SYMLINK_FOLLOW) names the open inode itself.
        let made = nix::unistd::linkat(
            nix::fcntl::AT_FDCWD,
            open,
            nix::fcntl::AT_FDCWD,
            here.as_str(),
            nix::fcntl::AtFlags::AT_SYMLINK_FOLLOW,
        );
        match (made, dir.parent()) {
            (Ok(()), _) => return Ok((name, here)),
            (Err(nix::errno::Errno::ENOENT), Some(up)) => dir = up,
            (Err(e), _) => {
                return Err(super::FilesError::LinkRemap {
                    path: orig.to_string(),
                    link: name,
                    source: e.into(),
                })
            }
        }
    }
}
