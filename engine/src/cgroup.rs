//! A tree's cgroups: each task's membership saved in CRIU's `cgroup.img` (sets of
//! controller → path, named by each task's `cg_set`), and put back at restore as
//! `--manage-cgroups` asks, below the roots `--cgroup-root` gives (runc sends the container's).
//! The file work (reading /proc/<pid>/cgroup, locating a hierarchy, writing cgroup.procs) is
//! the cgroups crate's.

use std::collections::BTreeMap;

use stasis_cgroups::membership;
use stasis_cgroups::parse::Membership;

use crate::images::pb;
use crate::restore::{DumpImage, RestoreError};

/// CRIU's `--manage-cgroups` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgMode {
    /// Leave cgroups alone (also stasis's default when the option is not given).
    Ignore,
    /// Put the tasks into their cgroups, which must exist.
    None,
    /// Put the tasks into their cgroups, which must exist, and set the saved properties.
    Props,
    /// Put the tasks into their cgroups, making the missing ones with the saved properties
    /// (CRIU's default mode); existing ones are left as they are.
    Soft,
    /// Put the tasks into their cgroups, making the missing ones, and set the saved properties
    /// of all of them.
    Full,
    /// As `Full`.
    Strict,
}

impl std::str::FromStr for CgMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "ignore" => CgMode::Ignore,
            "none" => CgMode::None,
            "props" => CgMode::Props,
            "soft" | "" => CgMode::Soft,
            "full" => CgMode::Full,
            "strict" => CgMode::Strict,
            _ => return Err(format!("bad value '{s}' for --manage-cgroups")),
        })
    }
}

impl CgMode {
    fn creates(self) -> bool {
        matches!(self, CgMode::Soft | CgMode::Full | CgMode::Strict)
    }

    /// Whether the saved properties go to a cgroup that `existed` before the restore.
    fn sets_properties(self, existed: bool) -> bool {
        match self {
            CgMode::Ignore | CgMode::None => false,
            CgMode::Soft => !existed,
            CgMode::Props | CgMode::Full | CgMode::Strict => true,
        }
    }
}

/// CRIU's name of a hierarchy in a set: its controllers, comma-joined ("" for cgroup2).
fn name_of(m: &Membership) -> String {
    m.controllers.join(",")
}

/// CRIU's `cnames` of a hierarchy: its controllers, or one empty name for cgroup2 (CRIU's
/// restore refuses a controller entry without names).
fn cnames_of(controllers: Vec<String>) -> Vec<String> {
    if controllers.is_empty() {
        vec![String::new()]
    } else {
        controllers
    }
}

/// The controllers a `cnames` list names (none for cgroup2's empty name).
fn controllers_in(cnames: &[String]) -> Vec<String> {
    cnames.iter().filter(|c| !c.is_empty()).cloned().collect()
}

/// The distinct memberships of the dumped tasks; a task's `cg_set` is its index + 1.
#[derive(Default)]
pub(crate) struct Sets {
    sets: Vec<Vec<Membership>>,
}

impl Sets {
    /// The set id of process `pid` (our pid), read from /proc.
    pub(crate) fn of_pid(&mut self, pid: u32) -> Result<u32, stasis_cgroups::CgroupError> {
        let m = membership::of_pid(pid)?;
        Ok(self.intern(m))
    }

    /// The set id of thread `tid` of `pid`.
    pub(crate) fn of_thread(
        &mut self,
        pid: u32,
        tid: u32,
    ) -> Result<u32, stasis_cgroups::CgroupError> {
        let m = membership::of_thread(pid, tid)?;
        Ok(self.intern(m))
    }

    fn intern(&mut self, m: Vec<Membership>) -> u32 {
        match self.sets.iter().position(|s| *s == m) {
            Some(i) => i as u32 + 1,
            None => {
                self.sets.push(m);
                self.sets.len() as u32
            }
        }
    }

    /// CRIU's `cgroup_entry`: the sets, and per hierarchy the directories they name (as a
    /// tree of relative names, without properties).
    pub(crate) fn entry(&self) -> pb::CgroupEntry {
        let sets = self
            .sets
            .iter()
            .enumerate()
            .map(|(i, s)| pb::CgSetEntry {
                id: i as u32 + 1,
                ctls: s
                    .iter()
                    .map(|m| pb::CgMemberEntry {
                        name: name_of(m),
                        path: m.path.clone(),
                        cgns_prefix: None,
                    })
                    .collect(),
            })
            .collect();
        let mut paths: BTreeMap<String, (Vec<String>, Vec<String>)> = BTreeMap::new();
        for m in self.sets.iter().flatten() {
            let e = paths
                .entry(name_of(m))
                .or_insert_with(|| (m.controllers.clone(), Vec::new()));
            if !e.1.contains(&m.path) {
                e.1.push(m.path.clone());
            }
        }
        let controllers = paths
            .into_values()
            .map(|(controllers, ps)| pb::CgControllerEntry {
                cnames: cnames_of(controllers),
                dirs: dir_tree(&ps, ""),
                is_threaded: None,
            })
            .collect();
        pb::CgroupEntry { sets, controllers }
    }

    /// Fills in the properties and permissions of the directories of `entry` (as
    /// [`Sets::entry`] made it) that lie at or below the root task's cgroup in their
    /// hierarchy: the tree's own cgroups, not those of the host above it. A hierarchy not
    /// mounted here gets none.
    pub(crate) fn add_properties(
        &self,
        entry: &mut pb::CgroupEntry,
    ) -> Result<(), stasis_cgroups::CgroupError> {
        let Some(root_set) = self.sets.first() else {
            return Ok(());
        };
        let mounts = membership::our_mounts()?;
        for c in &mut entry.controllers {
            let name = c.cnames.join(",");
            let Some(root) = root_set.iter().find(|m| name_of(m) == name) else {
                continue;
            };
            let controllers = controllers_in(&c.cnames);
            let names = stasis_cgroups::props::names_for(&controllers);
            let task_paths = self
                .sets
                .iter()
                .flatten()
                .filter(|m| name_of(m) == name)
                .map(|m| m.path.clone())
                .collect();
            let mut walk = DirWalk {
                root: &root.path,
                task_paths,
                controllers: &controllers,
                mounts: &mounts,
                names: &names,
            };
            walk.fill(&mut c.dirs, "")?;
        }
        Ok(())
    }
}

/// What [`Sets::add_properties`] needs while it walks a hierarchy's directories.
struct DirWalk<'a> {
    root: &'a str,
    /// The cgroups of the tasks in this hierarchy.
    task_paths: Vec<String>,
    controllers: &'a [String],
    mounts: &'a [stasis_cgroups::parse::CgroupMount],
    names: &'a [&'static str],
}

impl DirWalk<'_> {
    fn fill(
        &mut self,
        dirs: &mut [pb::CgroupDirEntry],
        prefix: &str,
    ) -> Result<(), stasis_cgroups::CgroupError> {
        for d in dirs {
            let path = format!("{prefix}/{}", d.dir_name);
            if below(&path, self.root) {
                let m = Membership {
                    hierarchy: u32::from(!self.controllers.is_empty()),
                    controllers: self.controllers.to_vec(),
                    path: path.clone(),
                };
                if let Some(dir) = stasis_cgroups::parse::locate(&m, self.mounts) {
                    d.properties = stasis_cgroups::props::read(&dir, self.names)?
                        .into_iter()
                        .map(|p| pb::CgroupPropEntry {
                            name: p.name,
                            value: p.value,
                            perms: p.perms.map(perms_to_pb),
                        })
                        .collect();
                    d.dir_perms = stasis_cgroups::props::perms_of(&dir).map(perms_to_pb);
                    // Below a task's cgroup, the cgroups no task is in are the tree's too
                    // (CRIU saves the whole subtree): made again empty.
                    if self.task_paths.iter().any(|t| t != "/" && below(&path, t)) {
                        add_empty_children(&mut d.children, &dir);
                    }
                }
            }
            self.fill(&mut d.children, &path)?;
        }
        Ok(())
    }
}

fn perms_to_pb(p: stasis_cgroups::props::Perms) -> pb::CgroupPerms {
    pb::CgroupPerms {
        mode: p.mode,
        uid: p.uid,
        gid: p.gid,
    }
}

/// Adds to `children` the subdirectories of the cgroup directory `dir` they lack.
fn add_empty_children(children: &mut Vec<pb::CgroupDirEntry>, dir: &std::path::Path) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut names: Vec<String> = rd
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| !children.iter().any(|c| &c.dir_name == n))
        .collect();
    names.sort();
    children.extend(names.into_iter().map(|dir_name| pb::CgroupDirEntry {
        dir_name,
        children: Vec::new(),
        properties: Vec::new(),
        dir_perms: None,
    }));
}

/// Whether cgroup `path` is `root` or below it.
fn below(path: &str, root: &str) -> bool {
    root == "/"
        || path == root
        || path
            .strip_prefix(root)
            .is_some_and(|rest| rest.starts_with('/'))
}

/// The directories below `prefix` that `paths` name, nested.
fn dir_tree(paths: &[String], prefix: &str) -> Vec<pb::CgroupDirEntry> {
    let mut names: Vec<String> = paths
        .iter()
        .filter_map(|p| p.strip_prefix(prefix)?.strip_prefix('/'))
        .filter_map(|rest| rest.split('/').next())
        .filter(|n| !n.is_empty())
        .map(str::to_string)
        .collect();
    names.sort();
    names.dedup();
    names
        .into_iter()
        .map(|n| {
            let full = format!("{prefix}/{n}");
            pb::CgroupDirEntry {
                children: dir_tree(paths, &full),
                dir_name: n,
                properties: Vec::new(),
                dir_perms: None,
            }
        })
        .collect()
}

/// What the restore passes read of cgroup.img: the entry, and the root task's set (whose
/// paths `--cgroup-root` moves).
struct Saved<'a> {
    entry: &'a pb::CgroupEntry,
    root_set: Option<&'a pb::CgSetEntry>,
}

impl<'a> Saved<'a> {
    /// None when there is nothing to do: no cgroup.img, or `mode` ignores it.
    fn of(img: &'a DumpImage, mode: CgMode) -> Option<Saved<'a>> {
        let entry = img.cgroups.as_ref().filter(|_| mode != CgMode::Ignore)?;
        let mut saved = Saved {
            entry,
            root_set: None,
        };
        saved.root_set = saved.set(img.tasks[0].cg_set());
        Some(saved)
    }

    fn set(&self, id: Option<u32>) -> Option<&'a pb::CgSetEntry> {
        id.and_then(|id| self.entry.sets.iter().find(|s| s.id == id))
    }
}

fn cg_err(e: stasis_cgroups::CgroupError) -> RestoreError {
    RestoreError::Cgroup(Box::new(e))
}

/// Puts every live task of `img` into its dumped cgroups, as `mode` says, each hierarchy's
/// dumped root (the root task's cgroup there) moved to the root `roots` give for it, if any
/// (`(controller or None for all, path)`, CRIU's `--cgroup-root`). Pids are as the images
/// and our pid namespace number them. A hierarchy not mounted here is skipped, and logged.
/// Makes the dumped cgroups as `mode` allows and sets their properties, before any file is
/// opened: a task may hold a cgroup directory open (zdtm's cgroup02).
pub fn prepare_cgroups(
    img: &DumpImage,
    mode: Option<CgMode>,
    roots: &[(Option<String>, String)],
) -> Result<(), RestoreError> {
    let Some(mode) = mode else {
        return Ok(());
    };
    crate::restore::step("cgroups")?;
    let Some(saved) = Saved::of(img, mode) else {
        return Ok(());
    };
    let mounts = membership::our_mounts().map_err(cg_err)?;
    restore_properties(saved.entry, mode, roots, saved.root_set, &mounts).map_err(cg_err)
}

/// The `cgroup.procs` files (as C strings, for the root's stub) the root must join before it
/// unshares the tree's cgroup namespace,
/// whose root is where the root task was (its dumped cgroups, moved as `roots` say): those
/// of hierarchies where we are elsewhere. None when the tree owns no cgroup namespace, or the
/// restore leaves cgroups alone; runc places us in the container's cgroups, so none then.
pub fn cgroupns_root_procs(
    img: &DumpImage,
    mode: Option<CgMode>,
    roots: &[(Option<String>, String)],
) -> Result<Vec<std::ffi::CString>, RestoreError> {
    use std::os::unix::ffi::OsStringExt;
    let Some(saved) = mode
        .filter(|_| img.own_cgroupns)
        .and_then(|m| Saved::of(img, m))
    else {
        return Ok(Vec::new());
    };
    let Some(root_set) = saved.root_set else {
        return Ok(Vec::new());
    };
    let mounts = membership::our_mounts().map_err(cg_err)?;
    let ours = membership::of_pid(std::process::id()).map_err(cg_err)?;
    let mut out = Vec::new();
    for m in &root_set.ctls {
        let target = target_of(&m.name, &m.path, Some(root_set), roots);
        if ours
            .iter()
            .any(|o| name_of(o) == m.name && o.path == target.path)
        {
            continue;
        }
        if let Some(dir) = stasis_cgroups::parse::locate(&target, &mounts) {
            let procs = dir.join("cgroup.procs").into_os_string().into_vec();
            // A path from mountinfo and cgroup.img holds no NUL; one that did is skipped.
            out.extend(std::ffi::CString::new(procs).ok());
        }
    }
    Ok(out)
}

/// Puts every task into its dumped cgroups (made by [`prepare_cgroups`], or now as `mode`
/// allows).
pub fn restore_membership(
    img: &DumpImage,
    mode: CgMode,
    roots: &[(Option<String>, String)],
) -> Result<(), RestoreError> {
    let Some(saved) = Saved::of(img, mode) else {
        return Ok(());
    };
    let (root_set, set) = (saved.root_set, |id| saved.set(id));
    let mounts = membership::our_mounts().map_err(cg_err)?;
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
        let Some(s) = set(t.cg_set()) else {
            continue;
        };
        for m in &s.ctls {
            let target = target_of(&m.name, &m.path, root_set, roots);
            let Some(dir) = stasis_cgroups::parse::locate(&target, &mounts) else {
                // Its root is where every task is unless moved: nothing is lost then.
                let level = if target.path == "/" {
                    log::Level::Debug
                } else {
                    log::Level::Warn
                };
                log::log!(
                    level,
                    "cgroup hierarchy '{}' is not mounted here: task {} is left where it is in it",
                    m.name,
                    t.pid()
                );
                continue;
            };
            membership::enter(&dir, t.pid(), mode.creates()).map_err(cg_err)?;
        }
    }
    Ok(())
}

/// Puts every thread saved in other cgroups than its process (its own `cg_set`) into them,
/// once the threads exist. The cgroups were made with the tasks'.
pub fn restore_thread_cgroups(
    img: &DumpImage,
    mode: CgMode,
    roots: &[(Option<String>, String)],
) -> Result<(), RestoreError> {
    let Some(saved) = Saved::of(img, mode) else {
        return Ok(());
    };
    let (root_set, set) = (saved.root_set, |id| saved.set(id));
    let mut mounts = None;
    for t in img.tasks.iter().filter(|t| t.zombie_exit.is_none()) {
        let own = t.cg_set();
        for th in t.threads.iter().skip(1) {
            let id = th.core.thread_core.as_ref().and_then(|c| c.cg_set);
            let Some(s) = set(id).filter(|_| id != own) else {
                continue;
            };
            let mounts = match &mounts {
                Some(m) => m,
                None => mounts.insert(membership::our_mounts().map_err(cg_err)?),
            };
            for m in &s.ctls {
                let target = target_of(&m.name, &m.path, root_set, roots);
                if let Some(dir) = stasis_cgroups::parse::locate(&target, mounts) {
                    membership::enter_thread(&dir, th.tid).map_err(cg_err)?;
                }
            }
        }
    }
    Ok(())
}

/// Where the dumped cgroup `path` of hierarchy `name` goes here: below the root
/// `--cgroup-root` gives for that hierarchy (or for all), in place of the root task's dumped
/// cgroup.
fn target_of(
    name: &str,
    path: &str,
    root_set: Option<&pb::CgSetEntry>,
    roots: &[(Option<String>, String)],
) -> Membership {
    let dumped_root = root_set
        .and_then(|r| r.ctls.iter().find(|c| c.name == name))
        .map_or("/", |c| c.path.as_str());
    let controllers: Vec<String> = name
        .split(',')
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect();
    let new_root = roots
        .iter()
        .find(|(c, _)| {
            c.as_deref()
                .is_some_and(|c| c == name || controllers.iter().any(|x| x == c))
        })
        .or_else(|| {
            roots
                .iter()
                .find(|(c, _)| c.as_deref().is_none_or(str::is_empty))
        })
        .map(|(_, p)| p.as_str());
    Membership {
        hierarchy: if controllers.is_empty() { 0 } else { 1 },
        controllers,
        path: membership::relocate(path, dumped_root, new_root),
    }
}

/// Sets the saved properties of the dumped cgroups, parents first, making missing ones as
/// `mode` allows (before any task joins: a new v1 cpuset takes no task until its cpus and
/// mems are set).
fn restore_properties(
    entry: &pb::CgroupEntry,
    mode: CgMode,
    roots: &[(Option<String>, String)],
    root_set: Option<&pb::CgSetEntry>,
    mounts: &[stasis_cgroups::parse::CgroupMount],
) -> Result<(), stasis_cgroups::CgroupError> {
    fn walk(
        dirs: &[pb::CgroupDirEntry],
        prefix: &str,
        f: &mut dyn FnMut(&str, &pb::CgroupDirEntry) -> Result<(), stasis_cgroups::CgroupError>,
    ) -> Result<(), stasis_cgroups::CgroupError> {
        for d in dirs {
            let path = format!("{prefix}/{}", d.dir_name);
            f(&path, d)?;
            walk(&d.children, &path, f)?;
        }
        Ok(())
    }
    for c in &entry.controllers {
        let name = c.cnames.join(",");
        walk(&c.dirs, "", &mut |path, d| {
            // Only the tree's own cgroups (at or below the root task's) carry properties.
            if d.properties.is_empty() && d.dir_perms.is_none() {
                return Ok(());
            }
            let target = target_of(&name, path, root_set, roots);
            let Some(dir) = stasis_cgroups::parse::locate(&target, mounts) else {
                return Ok(());
            };
            let existed = dir.is_dir();
            if !existed {
                if !mode.creates() {
                    return Ok(());
                }
                std::fs::create_dir_all(&dir).map_err(|source| {
                    stasis_cgroups::CgroupError::Io {
                        path: dir.clone(),
                        what: "create",
                        source,
                    }
                })?;
            }
            if mode.sets_properties(existed) {
                let perms = |p: &pb::CgroupPerms| stasis_cgroups::props::Perms {
                    mode: p.mode,
                    uid: p.uid,
                    gid: p.gid,
                };
                if let Some(p) = &d.dir_perms {
                    stasis_cgroups::props::set_perms(&dir, perms(p))?;
                }
                let props: Vec<stasis_cgroups::props::Prop> = d
                    .properties
                    .iter()
                    .map(|p| stasis_cgroups::props::Prop {
                        name: p.name.clone(),
                        value: p.value.clone(),
                        perms: p.perms.as_ref().map(perms),
                    })
                    .collect();
                stasis_cgroups::props::write(&dir, &props)?;
            }
            Ok(())
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(ctrl: &str, path: &str) -> Membership {
        Membership {
            hierarchy: u32::from(!ctrl.is_empty()),
            controllers: ctrl
                .split(',')
                .filter(|c| !c.is_empty())
                .map(str::to_string)
                .collect(),
            path: path.into(),
        }
    }

    #[test]
    fn sets_are_shared_and_dirs_nested() {
        let mut s = Sets::default();
        let a = s.intern(vec![m("cpu,cpuacct", "/rx"), m("", "/rx")]);
        let b = s.intern(vec![m("cpu,cpuacct", "/rx/sub"), m("", "/rx")]);
        assert_eq!((a, b), (1, 2));
        assert_eq!(s.intern(vec![m("cpu,cpuacct", "/rx"), m("", "/rx")]), 1);
        let e = s.entry();
        assert_eq!(e.sets.len(), 2);
        assert_eq!(e.sets[1].ctls[0].name, "cpu,cpuacct");
        assert_eq!(e.sets[1].ctls[0].path, "/rx/sub");
        let cpu = e
            .controllers
            .iter()
            .find(|c| c.cnames == ["cpu", "cpuacct"])
            .unwrap();
        assert_eq!(cpu.dirs.len(), 1);
        assert_eq!(cpu.dirs[0].dir_name, "rx");
        assert_eq!(cpu.dirs[0].children[0].dir_name, "sub");
        // cgroup2 is named by one empty name, as CRIU writes it and its restore requires.
        assert!(e.controllers.iter().any(|c| c.cnames == [""]));
        assert!(e.controllers.iter().all(|c| !c.cnames.is_empty()));
    }

    #[test]
    fn modes_parse_as_criu_names_them() {
        assert_eq!("soft".parse::<CgMode>(), Ok(CgMode::Soft));
        assert_eq!("".parse::<CgMode>(), Ok(CgMode::Soft));
        assert_eq!("ignore".parse::<CgMode>(), Ok(CgMode::Ignore));
        assert!("sloppy".parse::<CgMode>().is_err());
        assert!(CgMode::Full.creates() && !CgMode::None.creates());
    }
}
