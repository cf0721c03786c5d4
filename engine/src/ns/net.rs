//! A tree that owns its network namespace (as a container does): its links, addresses and
//! routes are saved in CRIU's images (`netdev-<id>.img`, `ifaddr-<id>.img`, `route-<id>.img`,
//! `route6-<id>.img`, `rule-<id>.img`, `netns-<id>.img`) through `stasis_netns`, and the restore makes a new
//! namespace holding them before it forks the root, as for UTS and IPC. A veth's outer end is
//! made in the restorer's namespace under the name `--veth-pair IN=OUT` gives.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use super::netconf::{self, Family};
use crate::images::{magic, names, pb, ImageKind, ImageReader, ImageWriter};

/// Image ids: the dumper's network namespace and one the tree owns (after IPC's and UTS's).
pub const HOST_NS_ID: u32 = 5;
pub const TREE_NS_ID: u32 = 6;

#[derive(Debug, thiserror::Error)]
pub enum NetNsError {
    #[error("process {pid} is in another network namespace than the root of the tree, which is not supported")]
    Mixed { pid: u32 },
    #[error("reading {path} failed")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the tree's network namespace")]
    Net(#[source] stasis_netns::NetnsError),
    #[error("writing {path} failed")]
    Write {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}")]
    Image {
        file: String,
        #[source]
        source: crate::images::ImageError,
    },
    #[error("setting {path} to {value} in the tree's network namespace failed")]
    Sysctl {
        path: String,
        value: String,
        #[source]
        source: std::io::Error,
    },
    #[error("netdev entry {name:?} has an unknown type {kind}")]
    UnknownType { name: String, kind: i32 },
    #[error("the nftables ruleset of the tree's network namespace")]
    Nft(#[source] stasis_netns::nftables::NftError),
    #[error("the iptables-legacy tables of the tree's network namespace")]
    Xtables(#[source] stasis_netns::xtables::XtError),
}

/// The tree's network namespace when it is not ours, open; every live task must be in it.
pub fn tree_ns(root: u32, tasks: &[u32]) -> Result<Option<OwnedFd>, NetNsError> {
    super::tree_ns_fd("net", root, tasks).map_err(|e| match e {
        super::OwnsError::Mixed { pid } => NetNsError::Mixed { pid },
        super::OwnsError::Read { path, source } => NetNsError::Read { path, source },
    })
}

fn write(dir: &Path, file: &str, bytes: &[u8]) -> Result<(), NetNsError> {
    let path = dir.join(file);
    crate::private::create_private(&path)
        .and_then(|mut f| std::io::Write::write_all(&mut f, bytes))
        .map_err(|source| NetNsError::Write {
            path: path.display().to_string(),
            source,
        })
}

/// The key the caller gave the namespace `ns` as external (`--external net[INODE]:KEY`).
pub fn external_key<'a>(
    ns: &OwnedFd,
    external: &'a [(u64, String)],
) -> Result<Option<&'a str>, NetNsError> {
    let ino = nix::sys::stat::fstat(ns.as_fd())
        .map_err(|e| NetNsError::Read {
            path: "the tree's network namespace".into(),
            source: e.into(),
        })?
        .st_ino;
    Ok(external
        .iter()
        .find(|(i, _)| *i == ino)
        .map(|(_, k)| k.as_str()))
}

/// An external namespace is not saved: `netns-<id>.img` names its key (CRIU's `ext_key`),
/// and the restore joins the namespace the caller hands over under that key.
pub fn dump_external(dir: &Path, key: &str) -> Result<(), NetNsError> {
    let mut w = ImageWriter::new(ImageKind::Normal, magic::NETNS);
    w.push(&pb::NetnsEntry {
        ext_key: Some(key.to_string()),
        ..Default::default()
    });
    write(dir, &names::netns(TREE_NS_ID), &w.into_bytes())?;
    log::info!("network namespace: external, key {key}");
    Ok(())
}

/// A network namespace as the images hold it.
#[derive(Debug)]
pub enum Saved {
    /// Made anew from these.
    Own(stasis_netns::NetState),
    /// The caller's: joined through the inherited fd of this key.
    External(String),
}

/// Reads the namespace of id `id` back from `dir`: external (a key) or its state.
pub fn load_saved(dir: &Path, id: u32) -> Result<Saved, NetNsError> {
    let file = names::netns(id);
    let path = dir.join(&file);
    let bytes = std::fs::read(&path).map_err(|source| NetNsError::Read {
        path: path.display().to_string(),
        source,
    })?;
    let img_err = |source| NetNsError::Image {
        file: file.clone(),
        source,
    };
    let mut r =
        ImageReader::new(&file, &bytes, ImageKind::Normal, magic::NETNS).map_err(img_err)?;
    let e: pb::NetnsEntry = r.next_required().map_err(img_err)?;
    match e.ext_key {
        Some(key) => Ok(Saved::External(key)),
        None => Ok(Saved::Own(load(dir, id)?)),
    }
}

/// Saves the namespace `ns` as CRIU's images of id [`TREE_NS_ID`] in `dir`.
pub fn dump(ns: &OwnedFd, dir: &Path, empty: bool) -> Result<(), NetNsError> {
    // The caller manages its contents (`--empty-ns net`): links it made are not ours to save
    // (nor to refuse), as CRIU saves none then.
    let state = if empty {
        stasis_netns::NetState::default()
    } else {
        stasis_netns::dump(ns.as_fd()).map_err(NetNsError::Net)?
    };
    let images = state.to_images();
    let id = TREE_NS_ID;
    let mut targets: Vec<&str> = vec!["all", "default"];
    targets.extend(images.netdev.iter().map(|d| d.name.as_str()));
    let confs = if empty {
        Vec::new()
    } else {
        device_confs(ns, &targets)
    };
    let conf_of = |name: &str, family: Family| {
        confs
            .iter()
            .find(|(t, f, _)| t == name && *f == family)
            .map(|(_, _, e)| e.clone())
            .unwrap_or_default()
    };
    let mut w = ImageWriter::new(ImageKind::Normal, magic::NETDEV);
    for d in &images.netdev {
        w.push(&pb::NetDeviceEntry {
            conf4: conf_of(&d.name, Family::V4),
            conf6: conf_of(&d.name, Family::V6),
            r#type: d.kind as i32,
            ifindex: d.ifindex,
            mtu: d.mtu,
            flags: d.flags,
            name: d.name.clone(),
            address: d.address.clone(),
            peer_ifindex: d.peer_ifindex,
            peer_nsid: d.peer_nsid,
            master: d.master,
            macvlan: d
                .macvlan
                .map(|(mode, flags)| pb::MacvlanLinkEntry { mode, flags }),
            // The header size and send buffer are the kernel's defaults (not read: they need
            // a queue of the device).
            tun: d.tun.map(|(flags, owner, group)| pb::TunLinkEntry {
                flags,
                owner,
                group,
                vnethdr: TUN_VNET_HDR_DEFAULT,
                sndbuf: i32::MAX as u32,
            }),
            ..Default::default()
        });
    }
    write(dir, &names::netdev(id), &w.into_bytes())?;
    write(dir, &names::ifaddr(id), &images.ifaddr)?;
    write(dir, &names::route(id), &images.route)?;
    write(dir, &names::route6(id), &images.route6)?;
    write(dir, &names::rule(id), &images.rule)?;
    if !images.neigh.is_empty() {
        write(dir, &names::neigh(id), &images.neigh)?;
    }
    let mut w = ImageWriter::new(ImageKind::Normal, magic::NETNS);
    w.push(&pb::NetnsEntry {
        ipv4_sysctl: if empty { Vec::new() } else { ipv4_sysctls(ns) },
        def_conf4: conf_of("default", Family::V4),
        all_conf4: conf_of("all", Family::V4),
        def_conf6: conf_of("default", Family::V6),
        all_conf6: conf_of("all", Family::V6),
        unix_conf: conf_of("", Family::Unix),
        ..Default::default()
    });
    write(dir, &names::netns(id), &w.into_bytes())?;
    // Its firewall (nftables, and iptables-nft's rules, which are nftables): the network
    // lock's own tables left out.
    let rules = if empty {
        Vec::new()
    } else {
        let lock = |t: &str| {
            t.starts_with(crate::dump::NET_LOCK_TABLE_PREFIX)
                || t.starts_with(crate::dump::OLD_NET_LOCK_TABLE_PREFIX)
        };
        stasis_netns::nftables::dump(ns.as_fd(), &lock).map_err(NetNsError::Nft)?
    };
    if !rules.is_empty() {
        let image = stasis_netns::nftables::to_image(&rules);
        write(dir, &names::nft_netlink(id), &image)?;
    }
    // And iptables-legacy's (x_tables), which nf_tables does not show.
    let legacy = if empty {
        Vec::new()
    } else {
        stasis_netns::xtables::dump(ns.as_fd()).map_err(NetNsError::Xtables)?
    };
    if !legacy.is_empty() {
        let image = stasis_netns::xtables::to_image(&legacy);
        write(dir, &names::xtables(id), &image)?;
    }
    log::info!(
        "network namespace: {} links, {} addresses, {} routes, {} nftables objects, {} \
         iptables-legacy tables",
        state.links.len(),
        state.addrs.len(),
        state.routes.len(),
        rules.len(),
        legacy.len()
    );
    Ok(())
}

/// Makes the namespace's saved nftables ruleset again in the namespace of the calling thread
/// (the tree's new one), in one transaction. Images without one (CRIU's, ours of a namespace
/// without tables) have nothing to make.
pub fn restore_nftables(dir: &Path, id: u32) -> Result<(), NetNsError> {
    let Some(bytes) = read_if_there(&dir.join(names::nft_netlink(id)))? else {
        return Ok(());
    };
    let rules = stasis_netns::nftables::from_image(&bytes).map_err(NetNsError::Nft)?;
    stasis_netns::nftables::restore(this_netns()?.as_fd(), &rules).map_err(NetNsError::Nft)?;
    log::info!("network namespace: {} nftables objects made", rules.len());
    Ok(())
}

/// Makes the namespace's saved iptables-legacy tables again in the namespace of the calling
/// thread (the tree's new one). Images without them (CRIU's, ours of a namespace without
/// any) have nothing to make.
pub fn restore_xtables(dir: &Path, id: u32) -> Result<(), NetNsError> {
    let Some(bytes) = read_if_there(&dir.join(names::xtables(id)))? else {
        return Ok(());
    };
    let tables = stasis_netns::xtables::from_image(&bytes).map_err(NetNsError::Xtables)?;
    stasis_netns::xtables::restore(this_netns()?.as_fd(), &tables).map_err(NetNsError::Xtables)?;
    log::info!(
        "network namespace: {} iptables-legacy tables made",
        tables.len()
    );
    Ok(())
}

/// The bytes of an image the images may not have (None then).
fn read_if_there(path: &Path) -> Result<Option<Vec<u8>>, NetNsError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(NetNsError::Read {
            path: path.display().to_string(),
            source,
        }),
    }
}

/// The calling thread's network namespace, open.
fn this_netns() -> Result<std::fs::File, NetNsError> {
    let here = "/proc/thread-self/ns/net";
    std::fs::File::open(here).map_err(|source| NetNsError::Read {
        path: here.into(),
        source,
    })
}

/// CRIU keeps a namespace's firewall as text for its iptables and nft binaries
/// (`iptables-<id>.img`, `ip6tables-<id>.img`, `nftables-<id>.img`), which stasis does not
/// run: rules found there are lost with its images, and the log says so.
pub fn warn_criu_firewall_text(dir: &Path, id: u32) {
    for file in [names::iptables(id), names::ip6tables(id)] {
        let text = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
        if iptables_text_has_rules(&text) {
            log::warn!(
                "{file}: CRIU's iptables-save text of the network namespace holds rules \
                 stasis does not restore (it runs no iptables): the namespace comes back \
                 without them"
            );
        }
    }
    let file = names::nftables(id);
    let text = std::fs::read_to_string(dir.join(&file)).unwrap_or_default();
    if nft_text_has_tables(&text) {
        log::warn!(
            "{file}: CRIU's nft ruleset text of the network namespace holds tables stasis does \
             not restore (it runs no nft): the namespace comes back without them"
        );
    }
}

/// Whether `iptables-save` text holds a rule, a chain of its own or a policy other than
/// ACCEPT (a table of built-in chains that accept everything is no firewall).
fn iptables_text_has_rules(text: &str) -> bool {
    text.lines().any(|l| {
        l.starts_with("-A ")
            || l.strip_prefix(':').is_some_and(|c| {
                let mut f = c.split_whitespace();
                f.next();
                f.next() != Some("ACCEPT")
            })
    })
}

/// Whether `nft list ruleset` text holds a table other than CRIU's network lock (whose tables
/// hold a chain named CRIU).
fn nft_text_has_tables(text: &str) -> bool {
    let mut tables = Vec::new();
    for l in text.lines() {
        if l.starts_with("table ") {
            tables.push(String::new());
        } else if let Some(t) = tables.last_mut() {
            t.push_str(l.trim());
            t.push('\n');
        }
    }
    tables.iter().any(|t| !t.contains("chain CRIU {"))
}

/// Reads the namespace of id `id` back from `dir`.
pub fn load(dir: &Path, id: u32) -> Result<stasis_netns::NetState, NetNsError> {
    let read = |file: String| {
        let path = dir.join(&file);
        std::fs::read(&path).map_err(|source| NetNsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let optional = |file: String| read_if_there(&dir.join(file)).map(Option::unwrap_or_default);
    let file = names::netdev(id);
    let bytes = read(file.clone())?;
    let img_err = |source| NetNsError::Image {
        file: file.clone(),
        source,
    };
    let mut r =
        ImageReader::new(&file, &bytes, ImageKind::Normal, magic::NETDEV).map_err(img_err)?;
    let entries: Vec<pb::NetDeviceEntry> = r.all().map_err(img_err)?;
    let netdev = entries
        .into_iter()
        .map(|e| {
            Ok(stasis_netns::NetDevice {
                kind: u32::try_from(e.r#type).map_err(|_| NetNsError::UnknownType {
                    name: e.name.clone(),
                    kind: e.r#type,
                })?,
                ifindex: e.ifindex,
                mtu: e.mtu,
                flags: e.flags,
                name: e.name,
                address: e.address,
                peer_ifindex: e.peer_ifindex,
                peer_nsid: e.peer_nsid,
                master: e.master,
                macvlan: e.macvlan.map(|m| (m.mode, m.flags)),
                tun: e.tun.map(|t| (t.flags, t.owner, t.group)),
            })
        })
        .collect::<Result<Vec<_>, NetNsError>>()?;
    let images = stasis_netns::NetImages {
        netdev,
        ifaddr: read(names::ifaddr(id))?,
        route: read(names::route(id))?,
        route6: read(names::route6(id))?,
        // Older images of ours have none; CRIU's may not (its `ip rule save` may fail).
        rule: optional(names::rule(id))?,
        // Ours only, when the namespace had permanent entries.
        neigh: optional(names::neigh(id))?,
    };
    stasis_netns::NetState::from_images(&images).map_err(NetNsError::Net)
}

/// `sizeof(struct virtio_net_hdr)`, a tun device's header size unless set.
const TUN_VNET_HDR_DEFAULT: u32 = 10;

/// The `IFF_*` flags of the tun device `name` of the tree's network namespace, from its
/// `netdev-<id>.img` (the tree's tun files attach with them).
pub fn tun_link(dir: &Path, name: &str) -> Result<u32, NetNsError> {
    let state = load(dir, TREE_NS_ID)?;
    state
        .links
        .iter()
        .find_map(|l| match l.kind {
            stasis_netns::LinkKind::Tun { flags, .. } if l.name == name => Some(flags),
            _ => None,
        })
        .ok_or_else(|| NetNsError::Read {
            path: format!("{} (no tun device {name} in it)", names::netdev(TREE_NS_ID)),
            source: std::io::Error::from_raw_os_error(libc::ENOENT),
        })
}

/// A new network namespace holding `state`, made from a short-lived thread (the caller
/// stays where it is, so the veths' outer ends, named by `veth_pairs`, land in the caller's
/// namespace). The caller then enters it to fork the root there.
pub fn make(
    state: &stasis_netns::NetState,
    veth_pairs: &[stasis_netns::VethPair],
    macvlan_parents: &[(String, String)],
) -> Result<OwnedFd, NetNsError> {
    let ns = std::thread::scope(|s| {
        s.spawn(|| -> Result<OwnedFd, NetNsError> {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| {
                NetNsError::Read {
                    path: "unshare(CLONE_NEWNET)".into(),
                    source: e.into(),
                }
            })?;
            let path = "/proc/thread-self/ns/net".to_string();
            Ok(std::fs::File::open(&path)
                .map_err(|source| NetNsError::Read { path, source })?
                .into())
        })
        .join()
        .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })?;
    stasis_netns::restore(ns.as_fd(), state, veth_pairs, macvlan_parents)
        .map_err(NetNsError::Net)?;
    Ok(ns)
}

/// The namespace's IPv4 sysctls CRIU saves (`ipv4_sysctl`, in its order): who may open ICMP
/// echo ("ping") sockets, which a new namespace forbids everyone. /proc/sys/net shows the
/// reading thread's namespace: read from a thread that joined `ns`. Best effort: what cannot
/// be read is left out, and the restore keeps the new namespace's default.
fn ipv4_sysctls(ns: &OwnedFd) -> Vec<pb::SysctlEntry> {
    let read = || std::fs::read_to_string(PING_GROUP_RANGE);
    match crate::ns::ipc::in_ns_of(ns, libc::CLONE_NEWNET, read) {
        Ok(Ok(v)) => vec![pb::SysctlEntry {
            r#type: pb::SysctlType::CtlStr as i32,
            iarg: None,
            sarg: Some(v.trim().to_string()),
        }],
        Ok(Err(e)) => {
            log::warn!("{PING_GROUP_RANGE} of the tree's network namespace: {e}");
            Vec::new()
        }
        Err(e) => {
            log::warn!("{PING_GROUP_RANGE} of the tree's network namespace: {e}");
            Vec::new()
        }
    }
}

const PING_GROUP_RANGE: &str = "/proc/sys/net/ipv4/ping_group_range";

/// The device sysctls (see ns::netconf) of each of `targets` ("all", "default", link names)
/// in `ns`, and its unix ones (target ""), read from a thread that joined it: (target, family,
/// entries). Best effort, as
/// CRIU's: a file that cannot be read is an entry without a value.
fn device_confs(ns: &OwnedFd, targets: &[&str]) -> Vec<(String, Family, Vec<pb::SysctlEntry>)> {
    let read_all = || {
        let mut out = Vec::new();
        for t in targets {
            for family in [Family::V4, Family::V6] {
                let e = netconf::entries(family, |name| {
                    std::fs::read_to_string(family.path(t, name)).ok()
                });
                out.push((t.to_string(), family, e));
            }
        }
        let unix = netconf::entries(Family::Unix, |name| {
            std::fs::read_to_string(Family::Unix.path("", name)).ok()
        });
        out.push((String::new(), Family::Unix, unix));
        out
    };
    crate::ns::ipc::in_ns_of(ns, libc::CLONE_NEWNET, read_all).unwrap_or_else(|e| {
        log::warn!("device sysctls of the tree's network namespace: {e}");
        Vec::new()
    })
}

/// Sets the saved sysctls in the network namespace of the calling thread, made anew for the
/// tree with its links. The IPv4 ones (see [`ipv4_sysctls`]) best effort, logged: a namespace
/// without them still works, as it did before they were saved. Then the device ones (see
/// ns::netconf): `all`, then `default`, then each link; a value already in place is not
/// written (some are read-only in a namespace), one that cannot be written fails the restore,
/// naming it.
pub fn restore_sysctls(dir: &Path, id: u32) -> Result<(), NetNsError> {
    let read_image = |file: &str| -> Result<Vec<u8>, NetNsError> {
        let path = dir.join(file);
        std::fs::read(&path).map_err(|source| NetNsError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let img_err = |file: &str| {
        let file = file.to_string();
        move |source| NetNsError::Image { file, source }
    };
    let file = names::netns(id);
    let bytes = read_image(&file)?;
    let ns: pb::NetnsEntry = ImageReader::new(&file, &bytes, ImageKind::Normal, magic::NETNS)
        .and_then(|mut r| r.next_required())
        .map_err(img_err(&file))?;
    if let Some(v) = ns.ipv4_sysctl.first().and_then(|s| s.sarg.as_deref()) {
        if let Err(err) = std::fs::write(PING_GROUP_RANGE, v) {
            log::warn!("setting {PING_GROUP_RANGE} to {v:?}: {err}");
        }
    }
    let file = names::netdev(id);
    let bytes = read_image(&file)?;
    let devices: Vec<pb::NetDeviceEntry> =
        ImageReader::new(&file, &bytes, ImageKind::Normal, magic::NETDEV)
            .and_then(|mut r| r.all())
            .map_err(img_err(&file))?;
    let mut plan: Vec<(&str, Family, &[pb::SysctlEntry])> = vec![
        ("all", Family::V4, &ns.all_conf4),
        ("default", Family::V4, &ns.def_conf4),
        ("all", Family::V6, &ns.all_conf6),
        ("default", Family::V6, &ns.def_conf6),
        ("", Family::Unix, &ns.unix_conf),
    ];
    for d in &devices {
        plan.push((&d.name, Family::V4, &d.conf4));
        plan.push((&d.name, Family::V6, &d.conf6));
    }
    for (target, family, entries) in plan {
        for (name, value) in netconf::writes(family, entries) {
            let path = family.path(target, name);
            let now = std::fs::read_to_string(&path).unwrap_or_default();
            if now.trim() == value {
                continue;
            }
            std::fs::write(&path, &value).map_err(|source| NetNsError::Sysctl {
                path: path.clone(),
                value: value.clone(),
                source,
            })?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn criu_firewall_text_with_rules_is_told_from_empty_tables_and_the_lock() {
        let empty = "# Generated by iptables-save\n*filter\n:INPUT ACCEPT [0:0]\n\
                     :OUTPUT ACCEPT [3:180]\nCOMMIT\n";
        assert!(!iptables_text_has_rules(empty));
        assert!(!iptables_text_has_rules(""));
        assert!(iptables_text_has_rules(
            &empty.replace("INPUT ACCEPT", "INPUT DROP")
        ));
        assert!(iptables_text_has_rules("*filter\n:web - [0:0]\nCOMMIT\n"));
        assert!(iptables_text_has_rules(
            "*filter\n:INPUT ACCEPT [0:0]\n-A INPUT -p tcp -j REJECT\nCOMMIT\n"
        ));
        let lock = "table ip filter {\n\tchain CRIU {\n\t\tcounter packets 0 bytes 0 drop\n\t}\n\
                    \tchain INPUT {\n\t\tcounter packets 0 bytes 0 jump CRIU\n\t}\n}\n";
        assert!(!nft_text_has_tables(lock));
        assert!(!nft_text_has_tables(""));
        let user = "table inet t {\n\tchain c {\n\t\ttcp dport 9 drop\n\t}\n}\n";
        assert!(nft_text_has_tables(&format!("{user}{lock}")));
    }
}
