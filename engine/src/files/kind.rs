//! The one interface every kind of open file implements, and the registry of kinds.
//!
//! A kind (regular file, pipe, eventfd, unix socket...) lives in one file that holds both of
//! its directions: [`FileKind::dump`] records an fd of a frozen task in the images, and
//! [`FileKind::open`] makes the same file again in the restorer, which hands it to the tasks.
//! A kind keeps whatever state it needs across fds (pipes made so far, ptys...) in the
//! context's [`Slots`], under a type of its own, so neither orchestration knows of it.
//!
//! Adding a kind: one new file implementing [`FileKind`], and one line in the `file_kinds!`
//! list of files/mod.rs, which declares its module and registers it.

use std::any::{Any, TypeId};
use std::collections::{HashMap, HashSet};
use std::os::fd::{OwnedFd, RawFd};
use std::path::Path;

use super::{FdKind, FileTable, FilesError};
use crate::dump::fds::DumpCx;
use crate::images::pb;
use crate::proc::FdInfo;
use crate::restore::{DumpImage, RestoreError, RestoreOptions};

/// One fd of a frozen task, as the dump sees it.
pub(crate) struct Fd<'a> {
    pub pid: u32,
    pub fd: i32,
    /// Its `/proc/<pid>/fd/<fd>` link.
    pub link: &'a str,
    pub info: &'a FdInfo,
    /// What [`super::classify`] made of it.
    pub class: &'a FdKind,
    /// For a socket: our own copy (pidfd_getfd) and its address family.
    pub socket: Option<(&'a OwnedFd, i32)>,
}

impl Fd<'_> {
    /// The open flags to save (fdinfo's, less O_CLOEXEC, which belongs to the fd).
    pub fn flags(&self) -> u32 {
        self.info.flags & !(libc::O_CLOEXEC as u32)
    }

    /// A path that reaches the open file itself.
    pub fn proc_path(&self) -> String {
        format!("/proc/{}/fd/{}", self.pid, self.fd)
    }
}

/// What the restore of one task's files needs beyond the task's images.
pub(crate) struct TaskCx<'a> {
    pub img: &'a DumpImage,
    /// Kind state kept across the tasks (e.g. epolls whose targets were added already).
    pub slots: &'a mut Slots,
}

/// The restore side's context: files are made in the restorer, once each, before any task
/// exists; the pool then places them above every target fd number.
pub(crate) struct OpenCx<'a> {
    pub img: &'a DumpImage,
    pub opts: &'a RestoreOptions,
    /// File id → the restorer's fd for every file made so far.
    pub made: HashMap<u32, RawFd>,
    /// Ids of every file the restore makes (a unix peer among them is made as a pair).
    pub used: HashSet<u32>,
    /// The restorer's own terminal, given to `--shell-job` terminals.
    pub terminal: Option<RawFd>,
    /// Each kind's own state, dropped (and cleaned up) once the pool is built.
    pub slots: Slots,
}

/// A kind of open file: both directions of it.
pub(crate) trait FileKind: Sync {
    /// A short name, for logs and errors.
    fn name(&self) -> &'static str;

    /// Dump: whether this kind takes `fd`.
    fn claims(&self, fd: &Fd, cx: &DumpCx) -> bool;

    /// Dump: records the file behind `fd` (once per open file description: the table finds
    /// fds that share one) and returns its fdinfo type and file id.
    fn dump(&self, cx: &mut DumpCx, fd: &Fd) -> Result<(pb::FdTypes, u32), crate::dump::DumpError>;

    /// Dump: writes this kind's own images once every fd is recorded (files.img is common).
    fn write_images(&self, _table: &FileTable, _dir: &Path) -> Result<(), FilesError> {
        Ok(())
    }

    /// Restore: whether this kind makes the file of `entry`.
    fn owns(&self, entry: &pb::FileEntry, img: &DumpImage) -> bool;

    /// Restore: makes the file of `entry` in the restorer. `None` when the task makes it
    /// itself (see [`FileKind::in_task`]).
    fn open(&self, cx: &mut OpenCx, entry: &pb::FileEntry)
        -> Result<Option<OwnedFd>, RestoreError>;

    /// Restore: what must be done inside a task once its fds are in place (an epoll's
    /// targets, a controlling terminal...).
    fn in_task(
        &self,
        _r: &crate::task::remote::Remote,
        _t: &crate::restore::load::TaskImage,
        _cx: &mut TaskCx,
    ) -> Result<(), RestoreError> {
        Ok(())
    }
}

/// Declares the kinds' modules and the registry, [`KINDS`], from one list (see files/mod.rs).
macro_rules! file_kinds {
    (here { $($module:ident => $kind:ident,)* } elsewhere { $($path:path,)* }) => {
        $(pub mod $module;)*

        /// Every kind, in the order they are asked.
        pub(crate) static KINDS: &[&dyn kind::FileKind] = &[$(&$module::$kind,)* $(&$path,)*];
    };
}
pub(crate) use file_kinds;

pub(crate) use super::KINDS;

/// The kind that owns a restored file entry.
pub(crate) fn owner(entry: &pb::FileEntry, img: &DumpImage) -> Option<&'static dyn FileKind> {
    KINDS.iter().copied().find(|k| k.owns(entry, img))
}

/// State kept by kinds across the fds of one dump or one restore, one value per type.
#[derive(Default)]
pub struct Slots(HashMap<TypeId, Box<dyn Any + Send>>);

impl Slots {
    /// The value of type `T`, made with its default the first time.
    pub fn get<T: Default + Send + 'static>(&mut self) -> &mut T {
        self.0
            .entry(TypeId::of::<T>())
            .or_insert_with(|| Box::<T>::default())
            .downcast_mut()
            .expect("slots are keyed by their type")
    }

    /// The value of type `T`, if a kind made one.
    pub fn peek<T: 'static>(&self) -> Option<&T> {
        self.0.get(&TypeId::of::<T>())?.downcast_ref()
    }
}

impl std::fmt::Debug for Slots {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Slots({} kinds)", self.0.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(f: impl FnOnce(&mut pb::FileEntry)) -> pb::FileEntry {
        let mut e = pb::FileEntry::default();
        f(&mut e);
        e
    }

    fn reg(name: &str) -> pb::RegFileEntry {
        pb::RegFileEntry {
            name: name.into(),
            ..Default::default()
        }
    }

    #[test]
    fn kind_names_are_unique() {
        let mut names: Vec<&str> = KINDS.iter().map(|k| k.name()).collect();
        names.sort_unstable();
        let n = names.len();
        names.dedup();
        assert_eq!(names.len(), n, "two kinds share a name");
    }

    #[test]
    fn every_entry_kind_has_exactly_the_owner_it_should() {
        let img = DumpImage::default();
        let cases: Vec<(pb::FileEntry, &str)> = vec![
            (entry(|e| e.reg = Some(reg("/etc/hostname"))), "regular"),
            (
                entry(|e| e.reg = Some(reg("/dev/mqueue/q"))),
                "posix-mqueue",
            ),
            (entry(|e| e.pipe = Some(Default::default())), "pipe"),
            (entry(|e| e.fifo = Some(Default::default())), "fifo"),
            (entry(|e| e.efd = Some(Default::default())), "eventfd"),
            (entry(|e| e.tfd = Some(Default::default())), "timerfd"),
            (entry(|e| e.sgfd = Some(Default::default())), "signalfd"),
            (entry(|e| e.ify = Some(Default::default())), "inotify"),
            (entry(|e| e.epfd = Some(Default::default())), "epoll"),
            (entry(|e| e.memfd = Some(Default::default())), "memfd"),
            (entry(|e| e.tty = Some(Default::default())), "pty"),
            (entry(|e| e.usk = Some(Default::default())), "unix-socket"),
            (entry(|e| e.isk = Some(Default::default())), "inet-socket"),
        ];
        for (e, want) in cases {
            let got = owner(&e, &img).map(|k| k.name());
            assert_eq!(got, Some(want), "entry {e:?}");
        }
        assert!(owner(&pb::FileEntry::default(), &img).is_none());
    }

    #[test]
    fn slots_keep_one_value_per_type() {
        #[derive(Default)]
        struct A(u32);
        #[derive(Default)]
        struct B(&'static str);
        let mut s = Slots::default();
        assert!(s.peek::<A>().is_none());
        s.get::<A>().0 = 7;
        s.get::<B>().0 = "b";
        s.get::<A>().0 += 1;
        assert_eq!(s.peek::<A>().map(|a| a.0), Some(8));
        assert_eq!(s.peek::<B>().map(|b| b.0), Some("b"));
    }
}
