//! Namespace files (`/proc/<pid>/ns/<type>` opened): CRIU's `ns_file_entry`. Handled when the
//! file names a namespace its task is in (a program holding `/proc/self/ns/net`, as
//! `ip netns identify` or a container tool does): the task opens its own namespace file
//! again once it is in its restored namespaces, which works whether the tree owned them or
//! shared ours. A namespace file of another namespace is refused by name.

use std::os::fd::OwnedFd;

use super::kind::{Fd, FileKind, OpenCx, TaskCx};
use super::FdKind;
use crate::dump::fds::DumpCx;
use crate::dump::DumpError;
use crate::images::pb;
use crate::restore::load::TaskImage;
use crate::restore::{DumpImage, RestoreError};
use crate::task::remote::Remote;

/// The namespace types, by their name in `/proc/<pid>/ns` and their `CLONE_NEW*` flag.
const TYPES: [(&str, i32); 8] = [
    ("net", libc::CLONE_NEWNET),
    ("uts", libc::CLONE_NEWUTS),
    ("ipc", libc::CLONE_NEWIPC),
    ("pid", libc::CLONE_NEWPID),
    ("mnt", libc::CLONE_NEWNS),
    ("user", libc::CLONE_NEWUSER),
    ("cgroup", libc::CLONE_NEWCGROUP),
    ("time", libc::CLONE_NEWTIME),
];

/// A namespace file's link, "net:[4026531840]": its type's name and flag, and its inode
/// (pure; unit-tested).
pub fn parse_link(link: &str) -> Option<(&'static str, i32, u64)> {
    let (name, rest) = link.split_once(":[")?;
    let ino = rest.strip_suffix(']')?.parse().ok()?;
    let &(name, flag) = TYPES.iter().find(|(n, _)| *n == name)?;
    Some((name, flag, ino))
}

/// The name of the `CLONE_NEW*` flag `flag`.
fn name_of(flag: u32) -> Option<&'static str> {
    TYPES
        .iter()
        .find(|(_, f)| *f as u32 == flag)
        .map(|(n, _)| *n)
}

/// The namespace-file kind.
pub struct NsFile;

impl FileKind for NsFile {
    fn name(&self) -> &'static str {
        "namespace-file"
    }

    fn claims(&self, fd: &Fd, _cx: &DumpCx) -> bool {
        *fd.class == FdKind::NsFile
    }

    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), DumpError> {
        let unsupported = |what: String| DumpError::UnsupportedFd {
            pid: fd.pid,
            fd: fd.fd,
            what,
        };
        let Some((name, flag, ino)) = parse_link(fd.link) else {
            return Err(unsupported(format!("namespace file {}", fd.link)));
        };
        // The namespace its task is in: only that one can be opened again from inside.
        let own = std::fs::read_link(format!("/proc/{}/ns/{name}", fd.pid))
            .ok()
            .and_then(|l| parse_link(&l.to_string_lossy()).map(|(_, _, i)| i));
        if own != Some(ino) {
            return Err(unsupported(format!(
                "namespace file {} (not a namespace its task is in)",
                fd.link
            )));
        }
        let ids = &cx.img.ns_ids;
        let ns_id = match name {
            "net" => ids.net,
            "uts" => ids.uts,
            "ipc" => ids.ipc,
            "pid" => ids.pid,
            "time" => ids.time,
            "mnt" => ids.mnt.unwrap_or(0),
            "cgroup" => ids.cgroup.unwrap_or(0),
            _ => ids.user.unwrap_or(0),
        };
        let flags = fd.flags();
        let (id, _) = cx.img.files.add_entry(fd.pid, fd.fd, |_, id| {
            Ok(pb::FileEntry {
                r#type: pb::FdTypes::Ns as i32,
                id,
                nsf: Some(pb::NsFileEntry {
                    id,
                    ns_id,
                    ns_cflag: flag as u32,
                    flags,
                }),
                ..Default::default()
            })
        })?;
        Ok((pb::FdTypes::Ns, id))
    }

    fn owns(&self, entry: &pb::FileEntry, _img: &DumpImage) -> bool {
        entry.nsf.is_some()
    }

    fn open(
        &self,
        _cx: &mut OpenCx,
        entry: &pb::FileEntry,
    ) -> Result<Option<OwnedFd>, RestoreError> {
        let e = entry.nsf.as_ref().expect("owned: nsf is set");
        let name = name_of(e.ns_cflag).ok_or_else(|| RestoreError::Setup {
            what: format!("namespace file {}: unknown type {:#x}", entry.id, e.ns_cflag),
            source: std::io::Error::from_raw_os_error(libc::EINVAL),
        })?;
        // A stand-in until the task opens its own (`in_task`): it is not in its namespaces yet.
        let path = format!("/proc/self/ns/{name}");
        std::fs::File::open(&path)
            .map(|f| Some(OwnedFd::from(f)))
            .map_err(|source| RestoreError::Open {
                id: entry.id,
                path,
                source,
            })
    }

    fn in_task(&self, r: &Remote, t: &TaskImage, cx: &mut TaskCx) -> Result<(), RestoreError> {
        for fd in &t.fds {
            let Some(e) = cx.img.files.get(&fd.id).and_then(|f| f.nsf.as_ref()) else {
                continue;
            };
            let Some(name) = name_of(e.ns_cflag) else {
                continue;
            };
            let path = format!("/proc/self/ns/{name}\0");
            let at = r.put(0, path.as_bytes())?;
            let new = r.call(
                libc::SYS_openat,
                &[
                    libc::AT_FDCWD as u64,
                    at,
                    (libc::O_RDONLY | libc::O_CLOEXEC) as u64,
                    0,
                ],
            )?;
            r.place_fd(new, fd.fd as i32, fd.flags & 1 != 0)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_file_links() {
        assert_eq!(
            parse_link("net:[4026531840]"),
            Some(("net", libc::CLONE_NEWNET, 4026531840))
        );
        assert_eq!(
            parse_link("time:[4026531834]").map(|(n, ..)| n),
            Some("time")
        );
        assert_eq!(parse_link("pipe:[12]"), None);
        assert_eq!(parse_link("net:[x]"), None);
        assert_eq!(name_of(libc::CLONE_NEWUTS as u32), Some("uts"));
    }
}
