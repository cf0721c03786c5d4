//! Files known by path only: a task's cwd and root, its executable and mapped files (their
//! `/proc` links reach them even once deleted), each recorded once per path, open flags and
//! mount.

use std::os::unix::fs::MetadataExt;

use super::{FileTable, FilesError};

impl FileTable {
    /// A file mapped by `pid` at `start-end`; a deleted one is saved as a ghost.
    pub fn add_mapping(
        &mut self,
        pid: u32,
        start: u64,
        end: u64,
        path: &str,
        flags: u32,
    ) -> Result<u32, FilesError> {
        self.add_by_path(
            &format!("/proc/{pid}/map_files/{start:x}-{end:x}"),
            path,
            flags,
        )
    }

    /// The executable of `pid` (which may have been deleted or replaced since it started).
    pub fn add_exe(&mut self, pid: u32, path: &str) -> Result<u32, FilesError> {
        self.add_by_path(&format!("/proc/{pid}/exe"), path, libc::O_RDONLY as u32)
    }

    /// A file known by the path the kernel shows; `open` reaches the same inode even when that
    /// path ends in " (deleted)", whose content is then saved as a ghost.
    fn add_by_path(&mut self, open: &str, path: &str, flags: u32) -> Result<u32, FilesError> {
        let Some(orig) = path.strip_suffix(" (deleted)") else {
            return self.add_path_at(path, flags, Some(open));
        };
        let md = std::fs::metadata(open).map_err(|source| FilesError::Ghost {
            path: orig.to_string(),
            source,
        })?;
        if let Some(&id) = self.by_inode.get(&(md.dev(), md.ino(), flags)) {
            return Ok(id);
        }
        let id = self.push_reg(orig, flags, 0, self.mount_of(Some(open)), Some(&md));
        self.deleted(id, open, orig, &md, None)?;
        self.by_inode.insert((md.dev(), md.ino(), flags), id);
        Ok(id)
    }

    /// A file known by path only (cwd, root, exe, mapped files), opened with `flags`.
    pub fn add_path(&mut self, path: &str, flags: u32) -> Result<u32, FilesError> {
        self.add_path_at(path, flags, None)
    }

    /// [`Self::add_path`], with `open` reaching the file itself (`/proc/<pid>/cwd`).
    pub fn add_path_at(
        &mut self,
        path: &str,
        flags: u32,
        open: Option<&str>,
    ) -> Result<u32, FilesError> {
        let mnt = self.mount_of(open);
        if let Some(&id) = self.by_path.get(&(path.to_string(), flags, mnt)) {
            return Ok(id);
        }
        // Without a size (it cannot be stat'ed now) the restore skips the changed-file check;
        // opening it will fail there anyway if it is gone.
        let md = match (&self.path_root, open) {
            (_, Some(open)) if self.path_mnt.is_some() => std::fs::metadata(open).ok(),
            (Some(root), _) => std::fs::metadata(crate::ns::mnt::under(root, path)).ok(),
            (None, _) => std::fs::metadata(path).ok(),
        };
        let id = self.push_reg(path, flags, 0, mnt, md.as_ref());
        self.by_path.insert((path.to_string(), flags, mnt), id);
        Ok(id)
    }

    /// The mount id a file known by path gets: for a task of a nested mount namespace, the
    /// mount `open` reaches when it is one of the tree's (a task that pivoted elsewhere still
    /// maps libraries of the tree's root, and the kernel shows their paths from there), else
    /// its namespace's root mount; none for the tree's own namespace.
    pub(super) fn mount_of(&self, open: Option<&str>) -> Option<i32> {
        let nested = self.path_mnt?;
        let real = open
            .and_then(|p| crate::ns::mount_id_of(p).ok())
            .filter(|id| self.mount_owner.contains_key(&(*id as u32)));
        Some(real.map_or(nested, |id| id as i32))
    }
}
