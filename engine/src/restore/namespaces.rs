//! The namespaces a restore makes or joins before it builds anything: joined ones (`--join-ns`),
//! the user namespace holder's, and new network (its links, its ping sysctl and the lock on its
//! connections), time, IPC and UTS namespaces the restoring thread moves into.

use std::os::fd::{AsFd, BorrowedFd};

use super::{setup_err, DumpImage, RestoreError, RestoreOptions};

/// The namespaces this thread moved into, and the user namespace holder, if any.
pub(super) type Entered = (
    Vec<crate::ns::ipc::Unshared>,
    Option<crate::ns::user::Holder>,
);

/// A tree that owned its IPC or UTS namespace gets a new one, holding its sysctls or names:
/// this thread moves into it until the restore ends, so the objects made next and the root
/// task (forked from here) are made there. A tree that owned a user namespace gets its
/// others from the holder (see ns::user), owned by its new user namespace.
pub(super) fn enter_tree_namespaces(
    img: &DumpImage,
    opts: &RestoreOptions,
) -> Result<Entered, RestoreError> {
    // Images with no contents of the namespace need the caller to manage it: said before
    // anything is joined or made.
    let joins_net = opts.join_ns.iter().any(|(kind, _)| kind == "net");
    if let Some(file) = img.net_unsaved.as_ref() {
        if !opts.empty_netns && !joins_net {
            return Err(RestoreError::UnsavedNetNs { file: file.clone() });
        }
    }
    let mut entered = Vec::new();
    let mut joined = Vec::new();
    for (kind, file) in &opts.join_ns {
        let flag = match kind.as_str() {
            "net" => libc::CLONE_NEWNET,
            "uts" => libc::CLONE_NEWUTS,
            "ipc" => libc::CLONE_NEWIPC,
            _ => {
                return Err(RestoreError::Setup {
                    what: format!("joining a {kind} namespace"),
                    source: std::io::Error::from_raw_os_error(libc::EOPNOTSUPP),
                })
            }
        };
        let ns = std::fs::File::open(file).map_err(setup_err(format!(
            "opening the {kind} namespace to join ({})",
            file.display()
        )))?;
        entered.push(crate::ns::ipc::Unshared::enter(ns.as_fd(), flag, kind)?);
        joined.push(kind.as_str());
    }
    let holder = match &img.userns {
        Some(maps) => {
            let mut kinds = Vec::new();
            if matches!(img.net, Some(crate::ns::net::Saved::Own(_))) && !joined.contains(&"net") {
                kinds.push(("net", libc::CLONE_NEWNET));
            }
            if img.ipc_vars.is_some() && !joined.contains(&"ipc") {
                kinds.push(("ipc", libc::CLONE_NEWIPC));
            }
            if img.uts.is_some() && !joined.contains(&"uts") {
                kinds.push(("uts", libc::CLONE_NEWUTS));
            }
            if img.mounts.is_some() {
                kinds.push(("mnt", libc::CLONE_NEWNS));
            }
            Some(crate::ns::user::spawn(maps, &kinds)?)
        }
        None => None,
    };
    // A namespace of the holder's, entered by this thread instead of a new one.
    let held = |kind: &str| holder.as_ref().and_then(|h| h.get(kind));
    // The caller manages the namespace's contents (`--empty-ns net`): only loopback here.
    let lo_only;
    let net = match &img.net {
        Some(crate::ns::net::Saved::Own(state)) if opts.empty_netns => {
            lo_only = crate::ns::net::Saved::Own(state.loopback_only());
            Some(&lo_only)
        }
        other => other.as_ref(),
    };
    match net {
        _ if joined.contains(&"net") => {}
        Some(crate::ns::net::Saved::Own(state)) => match held("net") {
            Some(ns) => {
                stasis_netns::restore(ns, state, &opts.veth_pairs, &opts.macvlan_parents)
                    .map_err(|e| RestoreError::from(crate::ns::net::NetNsError::Net(e)))?;
                entered.push(crate::ns::ipc::Unshared::enter(
                    ns,
                    libc::CLONE_NEWNET,
                    "net",
                )?);
            }
            None => {
                let ns = crate::ns::net::make(state, &opts.veth_pairs, &opts.macvlan_parents)?;
                entered.push(crate::ns::ipc::Unshared::enter(
                    ns.as_fd(),
                    libc::CLONE_NEWNET,
                    "net",
                )?);
            }
        },
        Some(crate::ns::net::Saved::External(key)) => {
            let fd = opts
                .inherit_fds
                .iter()
                .find(|i| &i.key == key)
                .ok_or_else(|| RestoreError::ExternalNetNs { key: key.clone() })?;
            // SAFETY: the caller handed us this fd for the namespace (--inherit-fd); it stays
            // open for the whole restore.
            let ns = unsafe { BorrowedFd::borrow_raw(fd.fd) };
            entered.push(crate::ns::ipc::Unshared::enter(
                ns,
                libc::CLONE_NEWNET,
                "net",
            )?);
        }
        None => {}
    }
    if matches!(img.net, Some(crate::ns::net::Saved::Own(_))) && !joined.contains(&"net") {
        if !opts.empty_netns {
            crate::ns::net::restore_sysctls(&img.dir, img.net_ns_id)?;
        }
        lock_new_netns(img)?;
    }
    if let Some(clocks) = &img.time {
        // Children only (the root is forked next): held by them once they exist.
        drop(crate::ns::time::make_for_children(clocks)?);
    }
    if let Some(vars) = img.ipc_vars.as_ref().filter(|_| !joined.contains(&"ipc")) {
        entered.push(match held("ipc") {
            Some(ns) => crate::ns::ipc::Unshared::enter(ns, libc::CLONE_NEWIPC, "ipc")?,
            None => crate::ns::ipc::Unshared::new()?,
        });
        match &img.userns {
            Some(maps) => crate::ns::user::as_ns_root(maps, || crate::ns::ipc::write_limits(vars))?,
            None => crate::ns::ipc::write_limits(vars)?,
        }
    }
    if let Some(names) = img.uts.as_ref().filter(|_| !joined.contains(&"uts")) {
        entered.push(match held("uts") {
            Some(ns) => crate::ns::ipc::Unshared::enter(ns, libc::CLONE_NEWUTS, "uts")?,
            None => crate::ns::ipc::Unshared::new_of(libc::CLONE_NEWUTS, "uts")?,
        });
        crate::ns::uts::set_names(names)?;
    }
    Ok((entered, holder))
}

/// The firewall of a network namespace the restore made anew (nftables, iptables-legacy),
/// made once the tree's sockets are: the segments a restore injects to put a half-closed
/// connection's FINs back must reach their socket whatever the tree's own rules drop (a
/// default-drop policy, a rule on the port). CRIU gets the same by its lock chain, which its
/// images carry first in the same INPUT chain. This thread is in the new namespace.
pub(super) fn restore_firewall(img: &DumpImage, opts: &RestoreOptions) -> Result<(), RestoreError> {
    let joins_net = opts.join_ns.iter().any(|(kind, _)| kind == "net");
    if matches!(img.net, Some(crate::ns::net::Saved::Own(_))) && !joins_net && !opts.empty_netns {
        crate::ns::net::restore_nftables(&img.dir, img.net_ns_id)?;
        crate::ns::net::restore_xtables(&img.dir, img.net_ns_id)?;
        crate::ns::net::warn_criu_firewall_text(&img.dir, img.net_ns_id);
    }
    Ok(())
}

/// A network namespace made anew has none of the dump's lock: its connections are locked
/// again until the restore ends (network-unlock), or the first end out of repair mode would
/// talk to a peer not made yet and be reset (both ends of a loopback connection). This thread
/// is in the new namespace.
fn lock_new_netns(img: &DumpImage) -> Result<(), RestoreError> {
    let Some(table) = &img.net_lock else {
        return Ok(());
    };
    let conns: Vec<stasis_netns::nftlock::Conn> = img
        .files
        .values()
        .filter_map(|f| f.isk.as_ref())
        .filter(|e| img.tcp_streams.contains_key(&e.ino))
        .map(|e| stasis_netns::nftlock::Conn {
            local_port: e.src_port as u16,
            remote_port: e.dst_port as u16,
        })
        .collect();
    if conns.is_empty() {
        return Ok(());
    }
    stasis_netns::nftlock::add(table, &conns, true).map_err(|e| RestoreError::Setup {
        what: "locking the connections in the new network namespace".into(),
        source: std::io::Error::other(e),
    })
}
