//! A cgroup's properties (its controllers' settings) as CRIU saves them in cgroup.img, and
//! writing them back.
//!
//! Which properties: CRIU's built-in lists (criu/cgroup-props.c), per v1 controller, in the
//! order they must be written back (`memory.limit_in_bytes` before
//! `memory.memsw.limit_in_bytes`; `cpuset.cpus` and `cpuset.mems` before anything can join a
//! new cpuset cgroup), and the global ones of every v1 directory. For cgroup2, CRIU keeps
//! only its global ones; stasis adds the limits of the enabled controllers (cpu.weight,
//! cpu.max, memory.max...), which is what a container's cgroup2 directory is set up with.

use std::path::{Path, PathBuf};

use crate::CgroupError;

/// One saved property: its file's name, content (trimmed) and owner and mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prop {
    pub name: String,
    pub value: String,
    pub perms: Option<Perms>,
}

/// A file's or directory's mode (permission bits) and owner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perms {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
}

/// Files whose owner and mode are saved, but not their content (task lists).
const PERMS_ONLY: &[&str] = &["cgroup.procs", "tasks"];

/// The mode and owner of `path`.
pub fn perms_of(path: &Path) -> Option<Perms> {
    use std::os::unix::fs::MetadataExt;
    let md = std::fs::metadata(path).ok()?;
    Some(Perms {
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
    })
}

/// Gives `path` the saved mode and owner (the owner first: a chown clears set-ID bits).
pub fn set_perms(path: &Path, p: Perms) -> Result<(), CgroupError> {
    use std::os::unix::fs::PermissionsExt;
    if perms_of(path) == Some(p) {
        return Ok(());
    }
    let io = |what, source| CgroupError::Io {
        path: path.to_path_buf(),
        what,
        source,
    };
    std::os::unix::fs::chown(path, Some(p.uid), Some(p.gid)).map_err(|e| io("chown", e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(p.mode))
        .map_err(|e| io("chmod", e))
}

/// CRIU's built-in properties of a v1 controller, in write order.
fn v1_controller(controller: &str) -> &'static [&'static str] {
    match controller {
        "cpu" => &[
            "cpu.shares",
            "cpu.cfs_period_us",
            "cpu.cfs_quota_us",
            "cpu.rt_period_us",
            "cpu.rt_runtime_us",
        ],
        "memory" => &[
            "memory.limit_in_bytes",
            "memory.memsw.limit_in_bytes",
            "memory.swappiness",
            "memory.soft_limit_in_bytes",
            "memory.move_charge_at_immigrate",
            "memory.oom_control",
            "memory.use_hierarchy",
            "memory.kmem.limit_in_bytes",
            "memory.kmem.tcp.limit_in_bytes",
        ],
        "cpuset" => &[
            "cpuset.cpus",
            "cpuset.mems",
            "cpuset.memory_migrate",
            "cpuset.cpu_exclusive",
            "cpuset.mem_exclusive",
            "cpuset.mem_hardwall",
            "cpuset.memory_spread_page",
            "cpuset.memory_spread_slab",
            "cpuset.sched_load_balance",
            "cpuset.sched_relax_domain_level",
        ],
        "blkio" => &["blkio.weight"],
        "net_cls" => &["net_cls.classid"],
        "net_prio" => &["net_prio.ifpriomap"],
        "pids" => &["pids.max"],
        "devices" => &["devices.list"],
        _ => &[],
    }
}

/// Every v1 directory's own (CRIU's "global" ones; of the task lists only owner and mode).
const V1_GLOBAL: &[&str] = &[
    "cgroup.clone_children",
    "notify_on_release",
    "cgroup.procs",
    "tasks",
];

/// cgroup2: CRIU's global ones, then the enabled controllers' limits. cgroup.freeze is left
/// out: freezing is the dump's business, and a restored cgroup starts thawed.
const V2_GLOBAL: &[&str] = &[
    "cgroup.procs",
    "cgroup.type",
    "cgroup.subtree_control",
    "cgroup.max.descendants",
    "cgroup.max.depth",
];
const V2_LIMITS: &[&str] = &[
    "cpuset.cpus",
    "cpuset.mems",
    "cpu.weight",
    "cpu.max",
    "memory.min",
    "memory.low",
    "memory.high",
    "memory.max",
    "memory.swap.max",
    "pids.max",
];

/// The properties saved for a directory of the hierarchy with `controllers` (empty: cgroup2),
/// in write order.
pub fn names_for(controllers: &[String]) -> Vec<&'static str> {
    if controllers.is_empty() {
        return V2_GLOBAL.iter().chain(V2_LIMITS).copied().collect();
    }
    let mut names: Vec<&'static str> = V1_GLOBAL.to_vec();
    for c in controllers {
        names.extend_from_slice(v1_controller(c));
    }
    names
}

/// Reads `names` in the cgroup directory `dir`. A property the kernel does not have here (no
/// such file, or one that cannot be read, as memory.kmem.* on recent kernels) is left out.
pub fn read(dir: &Path, names: &[&str]) -> Result<Vec<Prop>, CgroupError> {
    let mut out = Vec::new();
    for name in names {
        let path = dir.join(name);
        if PERMS_ONLY.contains(name) {
            if let Some(perms) = perms_of(&path) {
                out.push(Prop {
                    name: name.to_string(),
                    value: String::new(),
                    perms: Some(perms),
                });
            }
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(text) => out.push(Prop {
                name: name.to_string(),
                value: saved_form(name, &text),
                perms: perms_of(&path),
            }),
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT | libc::EINVAL | libc::EOPNOTSUPP | libc::EACCES)
                ) => {}
            Err(source) => {
                return Err(CgroupError::Io {
                    path,
                    what: "read",
                    source,
                })
            }
        }
    }
    Ok(out)
}

/// A property's file content as cgroup.img holds it: trimmed, and for memory.oom_control
/// only the setting, `oom_kill_disable`'s value, as CRIU saves it (CRIU writes the saved
/// value back as it is, and the file takes "0" or "1", not what it reads).
pub fn saved_form(name: &str, text: &str) -> String {
    if name == "memory.oom_control" {
        if let Some(v) = text
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill_disable "))
        {
            return v.trim().to_string();
        }
    }
    text.trim_end().to_string()
}

/// What to write to a property's file to set it to `saved`, the file's content when dumped;
/// each line is one write. None for a saved value that is not written back as such.
pub fn writes_for(name: &str, saved: &str) -> Vec<String> {
    match name {
        // CRIU's "0" or "1", or the whole file as older stasis images hold it
        // ("oom_kill_disable 0\nunder_oom 0\n..."): only the first line is a setting.
        "memory.oom_control" => vec![saved_form(name, saved)],
        // "cpu memory pids" enables with "+cpu +memory +pids".
        "cgroup.subtree_control" => {
            let on: Vec<String> = saved.split_whitespace().map(|c| format!("+{c}")).collect();
            if on.is_empty() {
                Vec::new()
            } else {
                vec![on.join(" ")]
            }
        }
        // Only a threaded cgroup needs telling; "domain" is what a new one is.
        "cgroup.type" => match saved.trim() {
            "threaded" => vec!["threaded".into()],
            _ => Vec::new(),
        },
        // A whitelist: everything denied, then each line allowed (see `write`).
        "devices.list" => saved.lines().map(str::to_string).collect(),
        // "eth0 1\nlo 0": one interface a write.
        "net_prio.ifpriomap" => saved.lines().map(str::to_string).collect(),
        _ => vec![saved.trim().to_string()],
    }
}

/// Writes `props` (as [`read`] gave them) into the cgroup directory `dir`, in their order. A
/// property whose file is not there is skipped; one already holding the saved value is not
/// written (some cannot be written at all, e.g. a parent's limit under use_hierarchy).
pub fn write(dir: &Path, props: &[Prop]) -> Result<(), CgroupError> {
    for p in props {
        let path = dir.join(&p.name);
        if !path.exists() {
            continue;
        }
        if let Some(perms) = p.perms {
            set_perms(&path, perms)?;
        }
        if PERMS_ONLY.contains(&p.name.as_str())
            || std::fs::read_to_string(&path)
                .is_ok_and(|now| saved_form(&p.name, &now) == saved_form(&p.name, &p.value))
        {
            continue;
        }
        if p.name == "devices.list" {
            write_one(&dir.join("devices.deny"), "a")?;
            for line in writes_for(&p.name, &p.value) {
                write_one(&dir.join("devices.allow"), &line)?;
            }
            continue;
        }
        for line in writes_for(&p.name, &p.value) {
            write_one(&path, &line)?;
        }
    }
    Ok(())
}

fn write_one(path: &PathBuf, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(|source| CgroupError::Io {
        path: path.clone(),
        what: "write the saved value to",
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_criu_and_write_order() {
        let n = names_for(&["cpu".into(), "cpuacct".into()]);
        assert_eq!(
            n[..5],
            [
                "cgroup.clone_children",
                "notify_on_release",
                "cgroup.procs",
                "tasks",
                "cpu.shares"
            ]
        );
        let m = names_for(&["memory".into()]);
        let at = |x| m.iter().position(|n| *n == x).unwrap();
        assert!(at("memory.limit_in_bytes") < at("memory.memsw.limit_in_bytes"));
        let v2 = names_for(&[]);
        assert!(v2.contains(&"cgroup.subtree_control") && v2.contains(&"memory.max"));
        assert!(!v2.contains(&"cgroup.freeze"));
        assert!(names_for(&["freezer".into()]).len() == 4);
    }

    #[test]
    fn saved_values_become_writes() {
        assert_eq!(
            writes_for(
                "memory.oom_control",
                "oom_kill_disable 1\nunder_oom 0\noom_kill 0"
            ),
            ["1"]
        );
        // CRIU's form, which stasis writes too.
        assert_eq!(writes_for("memory.oom_control", "1"), ["1"]);
        assert_eq!(
            saved_form(
                "memory.oom_control",
                "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n"
            ),
            "0"
        );
        assert_eq!(saved_form("pids.max", "max\n"), "max");
        assert_eq!(
            writes_for("cgroup.subtree_control", "cpu memory"),
            ["+cpu +memory"]
        );
        assert!(writes_for("cgroup.subtree_control", "").is_empty());
        assert!(writes_for("cgroup.type", "domain").is_empty());
        assert_eq!(writes_for("cgroup.type", "threaded"), ["threaded"]);
        assert_eq!(
            writes_for("devices.list", "c 1:3 rwm\nc 1:5 rwm"),
            ["c 1:3 rwm", "c 1:5 rwm"]
        );
        assert_eq!(writes_for("pids.max", "max"), ["max"]);
    }

    #[test]
    fn read_and_write_a_directory() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("stasis-cg-props-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("pids.max"), "max\n").unwrap();
        std::fs::write(dir.join("cpu.max"), "50000 100000\n").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "1\n2\n").unwrap();
        let got = read(&dir, &["pids.max", "cpu.max", "memory.max", "cgroup.procs"]).unwrap();
        let nv: Vec<(&str, &str)> = got
            .iter()
            .map(|p| (p.name.as_str(), p.value.as_str()))
            .collect();
        assert_eq!(
            nv,
            [
                ("pids.max", "max"),
                ("cpu.max", "50000 100000"),
                ("cgroup.procs", "")
            ]
        );
        assert!(got.iter().all(|p| p.perms.is_some()));
        std::fs::write(dir.join("pids.max"), "10\n").unwrap();
        std::fs::set_permissions(dir.join("pids.max"), std::fs::Permissions::from_mode(0o600))
            .unwrap();
        write(&dir, &got).unwrap();
        assert_eq!(
            std::fs::read_to_string(dir.join("pids.max")).unwrap(),
            "max"
        );
        assert_eq!(perms_of(&dir.join("pids.max")), got[0].perms);
        assert_eq!(
            std::fs::read_to_string(dir.join("cgroup.procs")).unwrap(),
            "1\n2\n",
            "a task list is not written"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
