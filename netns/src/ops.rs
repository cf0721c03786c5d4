//! Dumping a namespace's network configuration and restoring it into a fresh namespace, over
//! route netlink sockets opened inside it (see [`crate::rtnl`]).

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, BorrowedFd};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};

use crate::error::NetnsError;
use crate::model::{Link, LinkKind, NetState, VethPair, IFF_UP, SETTABLE_FLAGS};
use crate::rtnl::{Rtnl, RtnlError};
use crate::wire::{self, LinkBrief, VethRequest};

fn netlink(op: &'static str, object: impl ToString) -> impl FnOnce(RtnlError) -> NetnsError {
    let object = object.to_string();
    move |source| NetnsError::Netlink { op, object, source }
}

/// Dumps the network configuration of the namespace `ns` (an nsfs file: `/proc/PID/ns/net`,
/// `/run/netns/NAME`): its links (loopback and veth; any other kind is an error naming it),
/// every address, and the routes of the main table. The caller stays in its own namespace.
pub fn dump(ns: BorrowedFd<'_>) -> Result<NetState, NetnsError> {
    let mut sock = Rtnl::in_netns(ns).map_err(|source| NetnsError::Open {
        ns: "the namespace to dump",
        source,
    })?;
    dump_with(&mut sock)
}

fn dump_with(sock: &mut Rtnl) -> Result<NetState, NetnsError> {
    let mut state = NetState::default();
    for raw in sock
        .dump(wire::get_links())
        .map_err(netlink("dump", "links"))?
    {
        state.links.extend(wire::link_from_raw(&raw)?);
    }
    for raw in sock
        .dump(wire::get_addrs())
        .map_err(netlink("dump", "addresses"))?
    {
        state.addrs.extend(wire::addr_from_raw(&raw)?);
    }
    for raw in sock
        .dump(wire::get_routes())
        .map_err(netlink("dump", "routes"))?
    {
        state.routes.extend(wire::route_from_raw(&raw)?);
    }
    for raw in sock
        .dump(wire::get_rules())
        .map_err(netlink("dump", "policy routing rules"))?
    {
        state.rules.extend(wire::rule_from_raw(&raw)?);
    }
    for raw in sock
        .dump(wire::get_neighbours())
        .map_err(netlink("dump", "neighbour entries"))?
    {
        state.neighbours.extend(wire::neighbour_from_raw(&raw)?);
    }
    check(&state)?;
    Ok(state)
}

/// Every address and route is on a link of the state, every veth whose peer is in the same
/// namespace has it there too.
fn check(state: &NetState) -> Result<(), NetnsError> {
    let has = |i: u32| state.link(i).is_some();
    for a in &state.addrs {
        if !has(a.ifindex) {
            return Err(NetnsError::NoSuchLink {
                object: a.to_string(),
                ifindex: a.ifindex,
            });
        }
    }
    for r in &state.routes {
        if let Some(oif) = r.oif.filter(|&o| !has(o)) {
            return Err(NetnsError::NoSuchLink {
                object: r.to_string(),
                ifindex: oif,
            });
        }
    }
    if let Some(n) = state.neighbours.iter().find(|n| !has(n.ifindex)) {
        return Err(NetnsError::NoSuchLink {
            object: n.to_string(),
            ifindex: n.ifindex,
        });
    }
    for l in &state.links {
        if let LinkKind::Veth {
            peer_ifindex,
            peer_netnsid: None,
        } = l.kind
        {
            let peer_ok = peer_ifindex != l.ifindex
                && matches!(
                    state.link(peer_ifindex).map(|p| &p.kind),
                    Some(LinkKind::Veth { peer_ifindex: back, peer_netnsid: None }) if *back == l.ifindex
                );
            if !peer_ok {
                return Err(NetnsError::LostPeer {
                    link: l.name.clone(),
                    peer: peer_ifindex,
                });
            }
        }
    }
    Ok(())
}

/// What [`restore`] made.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restored {
    /// For each link: (ifindex in the state, ifindex now). They differ only where the old one
    /// was taken.
    pub ifindexes: Vec<(u32, u32)>,
    /// For each veth whose peer was outside the namespace: (its name, the name of the peer
    /// made in the caller's namespace). The peer is left down, for the caller (or its
    /// network scripts) to configure, as CRIU leaves it.
    pub host_ends: Vec<(String, String)>,
}

fn dump_briefs(sock: &mut Rtnl, whose: &'static str) -> Result<Vec<LinkBrief>, NetnsError> {
    let mut out = Vec::new();
    for raw in sock
        .dump(wire::get_links())
        .map_err(netlink("dump", whose))?
    {
        out.extend(wire::link_brief(&raw)?);
    }
    Ok(out)
}

/// Restores `state` into the namespace `ns`, which should be fresh (only `lo`). In order:
/// `lo` up (with its MTU); each veth created with its MAC and MTU (so the MAC is there before
/// the link is ever up: the IPv6 link-local address derives from it), at its old ifindex when
/// free, its peer put in the caller's namespace under the name `veth_pairs` gives
/// (`--veth-pair IN=OUT[@BRIDGE]`; without one the kernel names it) or, for a pair inside the
/// namespace, both ends there; then the addresses (IPv6 with `nodad`, usable at once); then the
/// links' flags (up); then the routes, device routes before gateway routes (a gateway must be
/// reachable when its route is added), the kernel's own prefix routes left to the addresses.
/// An address or route already there (`lo`'s, the kernel's link-local) is not an error.
///
/// On failure what was made stays: the caller deletes the namespace, and the host ends of its
/// veths go with it (a veth pair dies with either end).
pub fn restore(
    ns: BorrowedFd<'_>,
    state: &NetState,
    veth_pairs: &[VethPair],
    macvlan_parents: &[(String, String)],
) -> Result<Restored, NetnsError> {
    check(state)?;
    let mut target = Rtnl::in_netns(ns).map_err(|source| NetnsError::Open {
        ns: "the namespace to restore",
        source,
    })?;
    let mut host = Rtnl::here().map_err(|source| NetnsError::Open {
        ns: "the caller's namespace",
        source,
    })?;
    create_links(
        &mut target,
        &mut host,
        ns,
        state,
        (veth_pairs, macvlan_parents),
    )?;

    // The ifindexes now, by name.
    let now = dump_briefs(&mut target, "links of the restored namespace")?;
    let mut map = BTreeMap::new();
    for l in &state.links {
        let b = now
            .iter()
            .find(|b| b.name == l.name)
            .ok_or_else(|| NetnsError::NoSuchLink {
                object: format!("{l}, just created,"),
                ifindex: l.ifindex,
            })?;
        map.insert(l.ifindex, b.ifindex);
    }
    let new_index = |old: u32, object: &dyn Fn() -> String| {
        map.get(&old)
            .copied()
            .ok_or_else(|| NetnsError::NoSuchLink {
                object: object(),
                ifindex: old,
            })
    };

    // Ports into their bridges, every link being there, before any is up.
    for l in &state.links {
        let Some(master) = l.master.filter(|m| state.link(*m).is_some()) else {
            continue;
        };
        target
            .call(wire::set_master(map[&l.ifindex], map[&master]), 0)
            .map_err(netlink("enslave", format!("{l} to its bridge")))?;
    }

    for a in &state.addrs {
        if a.is_kernel_made(state.link(a.ifindex)) {
            continue;
        }
        let idx = new_index(a.ifindex, &|| a.to_string())?;
        let link = state.link(a.ifindex).map_or("?", |l| l.name.as_str());
        let object = format!("address {}/{} on {link}", a.address, a.prefix_len);
        tolerate_exists(target.call(wire::new_addr(a, idx), NLM_F_CREATE | NLM_F_EXCL))
            .map_err(netlink("add", object))?;
    }

    for l in &state.links {
        let idx = map[&l.ifindex];
        target
            .call(wire::set_link(idx, None, l.flags, SETTABLE_FLAGS), 0)
            .map_err(netlink("set the flags of", l))?;
    }

    // A bridge without ports has no carrier, and the kernel then makes no IPv6 link-local
    // address for it when it comes up (it does once a port brings the carrier): the dumped
    // one is put back, as CRIU's `ip addr restore` puts back every address.
    let portless = |l: &Link| {
        l.kind == LinkKind::Bridge && !state.links.iter().any(|p| p.master == Some(l.ifindex))
    };
    for a in &state.addrs {
        let link = state.link(a.ifindex);
        let ll =
            matches!(a.address, std::net::IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
        if !(ll && a.is_kernel_made(link) && link.is_some_and(portless)) {
            continue;
        }
        let object = format!(
            "link-local address {} of bridge {}",
            a.address,
            link.map_or("?", |l| l.name.as_str())
        );
        tolerate_exists(target.call(
            wire::new_addr_dad(a, map[&a.ifindex], true),
            NLM_F_CREATE | NLM_F_EXCL,
        ))
        .map_err(netlink("add", object))?;
    }

    // Device routes first, then those through a gateway.
    let mut routes: Vec<_> = state.routes.iter().filter(|r| !r.is_kernel()).collect();
    routes.sort_by_key(|r| r.gateway.is_some());
    for r in routes {
        let oif = r.oif.map(|o| new_index(o, &|| r.to_string())).transpose()?;
        let dev = r.oif.and_then(|o| state.link(o)).map(|l| l.name.as_str());
        let object = match dev {
            Some(d) => format!("{r} ({d})"),
            None => r.to_string(),
        };
        tolerate_exists(target.call(wire::new_route(r, oif), NLM_F_CREATE | NLM_F_EXCL))
            .map_err(netlink("add", object))?;
    }

    // Policy routing rules; the defaults every namespace has are there already.
    for r in state.rules.iter().filter(|r| !r.is_default()) {
        tolerate_exists(target.call(wire::new_rule(r)?, NLM_F_CREATE | NLM_F_EXCL))
            .map_err(netlink("add", r))?;
    }

    // Permanent neighbour entries, on their links' new indexes.
    for n in &state.neighbours {
        let idx = new_index(n.ifindex, &|| n.to_string())?;
        tolerate_exists(target.call(wire::new_neighbour(n, idx)?, NLM_F_CREATE | NLM_F_EXCL))
            .map_err(netlink("add", n))?;
    }

    host_ends(&mut host, state, &now, map)
}

fn tolerate_exists(r: Result<(), RtnlError>) -> Result<(), RtnlError> {
    match r {
        Err(e) if e.errno() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

/// `lo` set up, the veths created (down).
fn create_links(
    target: &mut Rtnl,
    host: &mut Rtnl,
    ns: BorrowedFd<'_>,
    state: &NetState,
    (veth_pairs, macvlan_parents): (&[VethPair], &[(String, String)]),
) -> Result<(), NetnsError> {
    let existing = dump_briefs(target, "links of the namespace to restore")?;
    let mut taken: BTreeSet<u32> = existing.iter().map(|b| b.ifindex).collect();
    let mut want = |i: u32| if taken.insert(i) { i } else { 0 };
    let mut host_links: Option<Vec<LinkBrief>> = None;

    let mut links: Vec<&Link> = state.links.iter().collect();
    links.sort_by_key(|l| l.ifindex);
    for l in links {
        match l.kind {
            LinkKind::Loopback => {
                let lo = existing.iter().find(|b| b.name == l.name).ok_or_else(|| {
                    NetnsError::NoSuchLink {
                        object: format!("loopback {l}"),
                        ifindex: l.ifindex,
                    }
                })?;
                target
                    .call(
                        wire::set_link(lo.ifindex, Some(l.mtu), l.flags, SETTABLE_FLAGS),
                        0,
                    )
                    .map_err(netlink("set up", l))?;
            }
            LinkKind::Veth {
                peer_ifindex,
                peer_netnsid: None,
            } => {
                // Both ends inside: made together, by the end with the lower ifindex.
                if peer_ifindex < l.ifindex {
                    continue;
                }
                let peer = state.link(peer_ifindex).ok_or(NetnsError::LostPeer {
                    link: l.name.clone(),
                    peer: peer_ifindex,
                })?;
                let req = VethRequest {
                    link: l,
                    ifindex: want(l.ifindex),
                    netns: None,
                    peer_name: Some(&peer.name),
                    peer_ifindex: want(peer.ifindex),
                    peer_mac: peer.mac.as_deref(),
                };
                target
                    .call(wire::new_veth(&req), NLM_F_CREATE | NLM_F_EXCL)
                    .map_err(netlink("create", format!("veth pair {l} / {}", peer.name)))?;
                if peer.mtu != l.mtu {
                    let idx = if req.peer_ifindex != 0 {
                        req.peer_ifindex
                    } else {
                        find(
                            &dump_briefs(target, "links")?,
                            &peer.name,
                            "the restored namespace",
                        )?
                    };
                    target
                        .call(wire::set_link(idx, Some(peer.mtu), 0, 0), 0)
                        .map_err(netlink("set the MTU of", peer))?;
                }
            }
            LinkKind::Macvlan { .. } => {
                // Made on its lower device, which the caller names, right into the namespace.
                let lower = macvlan_parents
                    .iter()
                    .find(|(inside, _)| *inside == l.name)
                    .map(|(_, outside)| outside.as_str())
                    .ok_or_else(|| NetnsError::NoMacvlanParent {
                        link: l.name.clone(),
                    })?;
                if host_links.is_none() {
                    host_links = Some(dump_briefs(host, "links of the caller")?);
                }
                let lower = find(
                    host_links.as_deref().unwrap_or_default(),
                    lower,
                    "the caller's namespace",
                )?;
                let req = wire::new_macvlan(l, lower, ns.as_raw_fd(), want(l.ifindex));
                host.call(req, NLM_F_CREATE | NLM_F_EXCL)
                    .map_err(netlink("create", format!("macvlan {l}")))?;
            }
            LinkKind::Tun { flags, .. } => {
                crate::tun::create(ns, l, want(l.ifindex))?;
                let idx = find(
                    &dump_briefs(target, "links of the restored namespace")?,
                    &l.name,
                    "the restored namespace",
                )?;
                // A tun device has no hardware address; a tap's is random unless set.
                let mac = l
                    .mac
                    .as_deref()
                    .filter(|_| flags & crate::tun::IFF_TAP != 0);
                target
                    .call(wire::set_mtu_and_mac(idx, l.mtu, mac), 0)
                    .map_err(netlink("set the MTU and address of", l))?;
            }
            LinkKind::Bridge => {
                target
                    .call(
                        wire::new_bridge(l, want(l.ifindex)),
                        NLM_F_CREATE | NLM_F_EXCL,
                    )
                    .map_err(netlink("create", format!("bridge {l}")))?;
            }
            LinkKind::Veth { .. } => {
                let pair = veth_pairs.iter().find(|p| p.inside == l.name);
                let master = match pair.and_then(|p| p.bridge.as_deref()) {
                    Some(bridge) => {
                        if host_links.is_none() {
                            host_links = Some(dump_briefs(host, "links of the caller")?);
                        }
                        Some(find(
                            host_links.as_deref().unwrap_or_default(),
                            bridge,
                            "the caller's namespace",
                        )?)
                    }
                    None => None,
                };
                let req = VethRequest {
                    link: l,
                    ifindex: want(l.ifindex),
                    netns: Some(ns.as_raw_fd()),
                    peer_name: pair.map(|p| p.outside.as_str()),
                    peer_ifindex: 0,
                    peer_mac: None,
                };
                let object = match pair {
                    Some(p) => format!("veth {l} with host end {}", p.outside),
                    None => format!("veth {l}"),
                };
                host.call(wire::new_veth(&req), NLM_F_CREATE | NLM_F_EXCL)
                    .map_err(netlink("create", &object))?;
                if let (Some(master), Some(p)) = (master, pair) {
                    let place = "the caller's namespace";
                    let idx = find(
                        &dump_briefs(host, "links of the caller")?,
                        &p.outside,
                        place,
                    )?;
                    host.call(wire::set_master(idx, master), 0)
                        .map_err(netlink("enslave the host end of", &object))?;
                    // Enslaved to the caller's bridge, the end is brought up too, as CRIU
                    // does (LXC configures nothing after a restore): without a bridge it is
                    // left down for the caller's scripts.
                    host.call(wire::set_link(idx, None, IFF_UP, IFF_UP), 0)
                        .map_err(netlink("bring up the host end of", &object))?;
                }
            }
        }
    }
    Ok(())
}

fn find(links: &[LinkBrief], name: &str, place: &'static str) -> Result<u32, NetnsError> {
    links
        .iter()
        .find(|b| b.name == name)
        .map(|b| b.ifindex)
        .ok_or_else(|| NetnsError::NoLinkNamed {
            name: name.to_string(),
            place,
        })
}

/// The names of the peers made in the caller's namespace.
fn host_ends(
    host: &mut Rtnl,
    state: &NetState,
    now: &[LinkBrief],
    map: BTreeMap<u32, u32>,
) -> Result<Restored, NetnsError> {
    let outside: Vec<&Link> = state
        .links
        .iter()
        .filter(|l| {
            matches!(
                l.kind,
                LinkKind::Veth {
                    peer_netnsid: Some(_),
                    ..
                }
            )
        })
        .collect();
    let mut host_ends = Vec::new();
    if !outside.is_empty() {
        let host_links = dump_briefs(host, "links of the caller")?;
        for l in outside {
            let peer = now.iter().find(|b| b.name == l.name).and_then(|b| b.peer);
            let name = peer
                .and_then(|p| host_links.iter().find(|h| h.ifindex == p))
                .map(|h| h.name.clone())
                .unwrap_or_default();
            host_ends.push((l.name.clone(), name));
        }
    }
    Ok(Restored {
        ifindexes: map.into_iter().collect(),
        host_ends,
    })
}
