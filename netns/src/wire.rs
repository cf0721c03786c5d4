//! Between route netlink messages (netlink-packet-route's types, the bytes the kernel sends)
//! and the plain model ([`crate::NetState`] and its parts): parsing what a dump returns or an
//! image holds, and building the requests of a restore. Pure code, no socket.

use std::net::IpAddr;
use std::os::fd::RawFd;

use netlink_packet_core::{NetlinkHeader, NetlinkMessage, NetlinkPayload, Nla};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope, CacheInfo,
};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoMacVlan, InfoTun, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkLayerType, LinkMessage, MacVlanFlags,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric,
    RoutePreference, RouteProtocol, RouteScope, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::NetnsError;
use crate::model::{Addr, Family, Link, LinkKind, Neighbour, Route, Rule, RT_TABLE_LOCAL};

const IFA_F_NODAD: u32 = 0x02;
const IFA_F_PERMANENT: u32 = 0x80;
/// Address flags a restore passes on: the ones a user sets (the rest is kernel state:
/// tentative, deprecated, secondary, permanent...).
const IFA_USER_FLAGS: u32 = IFA_F_NODAD
    | 0x10 // IFA_F_HOMEADDRESS
    | 0x100 // IFA_F_MANAGETEMPADDR
    | 0x200 // IFA_F_NOPREFIXROUTE
    | 0x400; // IFA_F_MCAUTOJOIN
const RTNH_F_ONLINK: u32 = 4;
const RTM_F_CLONED: u32 = 0x200;

/// A whole netlink message (header included) for `msg`.
pub(crate) fn serialize(msg: RouteNetlinkMessage, flags: u16, seq: u32) -> Vec<u8> {
    let mut header = NetlinkHeader::default();
    header.flags = flags;
    header.sequence_number = seq;
    let mut m = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(msg));
    m.finalize();
    let mut buf = vec![0u8; m.buffer_len()];
    m.serialize(&mut buf);
    buf
}

/// The route netlink message in `bytes` (a whole message, header included), or `None` for
/// `NLMSG_DONE`/`NLMSG_NOOP`.
fn deserialize(bytes: &[u8], what: &str) -> Result<Option<RouteNetlinkMessage>, NetnsError> {
    let m = NetlinkMessage::<RouteNetlinkMessage>::deserialize(bytes).map_err(|e| {
        NetnsError::Malformed {
            what: what.to_string(),
            reason: e.to_string(),
        }
    })?;
    match m.payload {
        NetlinkPayload::InnerMessage(inner) => Ok(Some(inner)),
        NetlinkPayload::Done(_) | NetlinkPayload::Noop => Ok(None),
        _ => Err(NetnsError::Malformed {
            what: what.to_string(),
            reason: format!("unexpected message type {}", m.header.message_type),
        }),
    }
}

/// Sets `slot` to an IPv4 or IPv6 route address; MPLS and other addresses make the route
/// unsupported.
fn set_ip(slot: &mut Option<IpAddr>, a: &RouteAddress, unsupported: &mut Option<&'static str>) {
    match a {
        RouteAddress::Inet(v4) => *slot = Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => *slot = Some(IpAddr::V6(*v6)),
        _ => *unsupported = Some("a non-IP address"),
    }
}

fn route_addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(v4) => RouteAddress::Inet(v4),
        IpAddr::V6(v6) => RouteAddress::Inet6(v6),
    }
}

// ---- links ----

/// A link of a `RTM_NEWLINK` dump answer. Kinds other than loopback, veth and bridge are
/// refused.
pub(crate) fn link_from_raw(bytes: &[u8]) -> Result<Option<Link>, NetnsError> {
    match deserialize(bytes, "link dump")? {
        Some(RouteNetlinkMessage::NewLink(m)) => parse_link(&m).map(Some),
        _ => Ok(None),
    }
}

pub(crate) fn parse_link(m: &LinkMessage) -> Result<Link, NetnsError> {
    let mut name = None;
    let mut mtu = 0;
    let mut mac = None;
    let mut peer = None;
    let mut netnsid = None;
    let mut master = None;
    let mut kind: Option<String> = None;
    let mut macvlan = (0u32, None);
    let mut tun_attrs: Vec<(u16, Vec<u8>)> = Vec::new();
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => name = Some(n.clone()),
            LinkAttribute::Mtu(v) => mtu = *v,
            LinkAttribute::Address(v) => mac = Some(v.clone()),
            LinkAttribute::Link(v) => peer = Some(*v),
            LinkAttribute::LinkNetNsId(v) => netnsid = Some(*v),
            LinkAttribute::Controller(v) => master = Some(*v),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => kind = Some(k.to_string()),
                        LinkInfo::Data(InfoData::Tun(d)) => {
                            for x in d {
                                let InfoTun::Other(nla) = x else { continue };
                                let mut v = vec![0u8; nla.value_len()];
                                nla.emit_value(&mut v);
                                tun_attrs.push((nla.kind(), v));
                            }
                        }
                        LinkInfo::Data(InfoData::MacVlan(d)) => {
                            for x in d {
                                match x {
                                    InfoMacVlan::Mode(m) => macvlan.0 = u32::from(*m),
                                    InfoMacVlan::Flags(f) => macvlan.1 = Some(f.bits() as u32),
                                    _ => {}
                                }
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let ifindex = m.header.index;
    let name = name.unwrap_or_else(|| format!("if{ifindex}"));
    let is_loopback = m.header.link_layer_type == LinkLayerType::Loopback
        || m.header.flags.contains(LinkFlags::Loopback);
    let kind = match kind.as_deref() {
        None if is_loopback => LinkKind::Loopback,
        Some("veth") => LinkKind::Veth {
            peer_ifindex: peer.unwrap_or(0),
            peer_netnsid: netnsid,
        },
        Some("bridge") => LinkKind::Bridge,
        Some("macvlan") => LinkKind::Macvlan {
            mode: macvlan.0,
            flags: macvlan.1,
        },
        Some("tun") => crate::tun::kind_from_attrs(&tun_attrs),
        other => {
            return Err(NetnsError::UnsupportedLink {
                link: name,
                ifindex,
                kind: other
                    .map(str::to_string)
                    .unwrap_or_else(|| format!("{:?} (no link kind)", m.header.link_layer_type)),
            })
        }
    };
    Ok(Link {
        ifindex,
        name,
        kind,
        mtu,
        mac,
        flags: m.header.flags.bits(),
        master,
    })
}

/// What a restore needs to know of a link that is already there, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LinkBrief {
    pub ifindex: u32,
    pub name: String,
    /// `IFLA_LINK`: a veth's peer.
    pub peer: Option<u32>,
}

pub(crate) fn link_brief(bytes: &[u8]) -> Result<Option<LinkBrief>, NetnsError> {
    let Some(RouteNetlinkMessage::NewLink(m)) = deserialize(bytes, "link dump")? else {
        return Ok(None);
    };
    let mut b = LinkBrief {
        ifindex: m.header.index,
        name: String::new(),
        peer: None,
    };
    for a in &m.attributes {
        match a {
            LinkAttribute::IfName(n) => b.name = n.clone(),
            LinkAttribute::Link(p) => b.peer = Some(*p),
            _ => {}
        }
    }
    Ok(Some(b))
}

/// `RTM_NEWLINK` for a veth named `link.name`, with the link's MAC and MTU (set at creation,
/// so before the link is ever up: the MAC drives the IPv6 link-local address), at `ifindex`
/// (0: the kernel chooses). Sent on a socket in the caller's namespace with `netns` set, the
/// veth goes into that namespace and its peer stays with the caller, named `peer_name` (the
/// kernel names it when `None`). With `netns` unset and
/// `peer` set, both ends are made where the socket is (a pair inside the namespace).
pub(crate) struct VethRequest<'a> {
    pub link: &'a Link,
    pub ifindex: u32,
    pub netns: Option<RawFd>,
    pub peer_name: Option<&'a str>,
    pub peer_ifindex: u32,
    pub peer_mac: Option<&'a [u8]>,
}

pub(crate) fn new_veth(r: &VethRequest<'_>) -> RouteNetlinkMessage {
    let mut peer = LinkMessage::default();
    peer.header.index = r.peer_ifindex;
    if let Some(n) = r.peer_name {
        peer.attributes.push(LinkAttribute::IfName(n.to_string()));
    }
    // Both ends get the MTU: a smaller peer would drop what this end may send.
    peer.attributes.push(LinkAttribute::Mtu(r.link.mtu));
    if let Some(mac) = r.peer_mac {
        peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    let mut m = LinkMessage::default();
    m.header.index = r.ifindex;
    m.attributes
        .push(LinkAttribute::IfName(r.link.name.clone()));
    m.attributes.push(LinkAttribute::Mtu(r.link.mtu));
    if let Some(mac) = &r.link.mac {
        m.attributes.push(LinkAttribute::Address(mac.clone()));
    }
    if let Some(fd) = r.netns {
        m.attributes.push(LinkAttribute::NetNsFd(fd));
    }
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    RouteNetlinkMessage::NewLink(m)
}

/// `RTM_NEWLINK` for a bridge named as `link`, with its MAC and MTU, at `ifindex` (0: the
/// kernel chooses), where the socket is.
pub(crate) fn new_bridge(link: &Link, ifindex: u32) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes.push(LinkAttribute::IfName(link.name.clone()));
    m.attributes.push(LinkAttribute::Mtu(link.mtu));
    if let Some(mac) = &link.mac {
        m.attributes.push(LinkAttribute::Address(mac.clone()));
    }
    m.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    RouteNetlinkMessage::NewLink(m)
}

/// `RTM_NEWLINK` for a macvlan named as `link` on the caller's device `lower`, made in the
/// namespace `netns` at `ifindex` (0: the kernel chooses), with its MAC, MTU, mode and flags.
pub(crate) fn new_macvlan(
    link: &Link,
    lower: u32,
    netns: RawFd,
    ifindex: u32,
) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes.push(LinkAttribute::IfName(link.name.clone()));
    m.attributes.push(LinkAttribute::Link(lower));
    m.attributes.push(LinkAttribute::Mtu(link.mtu));
    if let Some(mac) = &link.mac {
        m.attributes.push(LinkAttribute::Address(mac.clone()));
    }
    m.attributes.push(LinkAttribute::NetNsFd(netns));
    let mut data = Vec::new();
    if let LinkKind::Macvlan { mode, flags } = link.kind {
        data.push(InfoMacVlan::Mode(mode.into()));
        if let Some(f) = flags {
            data.push(InfoMacVlan::Flags(MacVlanFlags::from_bits_retain(f as u16)));
        }
    }
    m.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::MacVlan),
        LinkInfo::Data(InfoData::MacVlan(data)),
    ]));
    RouteNetlinkMessage::NewLink(m)
}

/// `RTM_NEWLINK` changing an existing link: its MTU when given, and the flags in `mask` to
/// those of `flags`.
pub(crate) fn set_link(
    ifindex: u32,
    mtu: Option<u32>,
    flags: u32,
    mask: u32,
) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.header.flags = LinkFlags::from_bits_retain(flags & mask);
    m.header.change_mask = LinkFlags::from_bits_retain(mask);
    if let Some(mtu) = mtu {
        m.attributes.push(LinkAttribute::Mtu(mtu));
    }
    RouteNetlinkMessage::NewLink(m)
}

/// `RTM_NEWLINK` giving an existing link its MTU and hardware address (a tap device, made
/// through /dev/net/tun with neither).
pub(crate) fn set_mtu_and_mac(ifindex: u32, mtu: u32, mac: Option<&[u8]>) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes.push(LinkAttribute::Mtu(mtu));
    if let Some(mac) = mac {
        m.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    RouteNetlinkMessage::NewLink(m)
}

/// `RTM_NEWLINK` enslaving a link to `master` (a bridge). The kernel ignores `IFLA_MASTER` in
/// a veth's peer info, so the peer is enslaved by a request of its own once it exists.
pub(crate) fn set_master(ifindex: u32, master: u32) -> RouteNetlinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = ifindex;
    m.attributes.push(LinkAttribute::Controller(master));
    RouteNetlinkMessage::NewLink(m)
}

/// `RTM_GETLINK` for a dump of every link.
pub(crate) fn get_links() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetLink(LinkMessage::default())
}

// ---- addresses ----

/// An address of a `RTM_NEWADDR` message (a dump answer or an `ifaddr` image entry), `raw`
/// kept for the image. `None` for `NLMSG_DONE`; addresses of families other than IPv4 and
/// IPv6 are refused.
pub fn addr_from_raw(raw: &[u8]) -> Result<Option<Addr>, NetnsError> {
    match deserialize(raw, "address message")? {
        Some(RouteNetlinkMessage::NewAddress(m)) => parse_addr(&m, raw).map(Some),
        None => Ok(None),
        Some(other) => Err(NetnsError::Malformed {
            what: "address message".into(),
            reason: format!("not an address but message type {}", other.message_type()),
        }),
    }
}

fn parse_addr(m: &AddressMessage, raw: &[u8]) -> Result<Addr, NetnsError> {
    let h = &m.header;
    let object = || {
        format!(
            "address of family {} on ifindex {}",
            u8::from(h.family),
            h.index
        )
    };
    if !matches!(h.family, AddressFamily::Inet | AddressFamily::Inet6) {
        return Err(NetnsError::Unsupported {
            object: object(),
            what: "that address family".into(),
        });
    }
    let (mut address, mut local, mut label, mut broadcast) = (None, None, None, None);
    let (mut flags, mut metric, mut proto) = (u32::from(h.flags.bits()), None, None);
    let (mut preferred_lft, mut valid_lft) = (u32::MAX, u32::MAX);
    for a in &m.attributes {
        match a {
            AddressAttribute::Address(ip) => address = Some(*ip),
            AddressAttribute::Local(ip) => local = Some(*ip),
            AddressAttribute::Label(l) => label = Some(l.clone()),
            AddressAttribute::Broadcast(b) => broadcast = Some(*b),
            AddressAttribute::Flags(f) => flags = f.bits(),
            AddressAttribute::RoutePriority(p) => metric = Some(*p),
            AddressAttribute::Protocol(p) => proto = Some(u8::from(*p)),
            AddressAttribute::CacheInfo(c) => {
                preferred_lft = c.ifa_preferred;
                valid_lft = c.ifa_valid;
            }
            _ => {}
        }
    }
    let (address, peer) = match (local, address) {
        (Some(l), Some(a)) if l != a => (l, Some(a)),
        (Some(l), _) => (l, None),
        (None, Some(a)) => (a, None),
        (None, None) => {
            return Err(NetnsError::Malformed {
                what: object(),
                reason: "no IFA_ADDRESS nor IFA_LOCAL".into(),
            })
        }
    };
    Ok(Addr {
        ifindex: h.index,
        address,
        peer,
        prefix_len: h.prefix_len,
        scope: u8::from(h.scope),
        flags,
        label,
        broadcast,
        metric,
        proto,
        preferred_lft,
        valid_lft,
        raw: raw.to_vec(),
    })
}

fn addr_message(a: &Addr, ifindex: u32, flags: u32) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = match a.family() {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    };
    m.header.prefix_len = a.prefix_len;
    m.header.scope = AddressScope::from(a.scope);
    m.header.index = ifindex;
    m.header.flags = AddressHeaderFlags::from_bits_retain(flags as u8);
    let at = &mut m.attributes;
    // IPv4 names the link's own address IFA_LOCAL (IFA_ADDRESS is the peer's, or the same).
    if a.family() == Family::V4 || a.peer.is_some() {
        at.push(AddressAttribute::Local(a.address));
    }
    at.push(AddressAttribute::Address(a.peer.unwrap_or(a.address)));
    if let Some(l) = &a.label {
        at.push(AddressAttribute::Label(l.clone()));
    }
    if let Some(b) = a.broadcast {
        at.push(AddressAttribute::Broadcast(b));
    }
    at.push(AddressAttribute::Flags(AddressFlags::from_bits_retain(
        flags,
    )));
    if let Some(p) = a.metric {
        at.push(AddressAttribute::RoutePriority(p));
    }
    if let Some(p) = a.proto {
        at.push(AddressAttribute::Protocol(p.into()));
    }
    m
}

/// `RTM_NEWADDR` re-adding `a` on `ifindex`. IPv6 addresses get `IFA_F_NODAD`: after a
/// restore they must be usable at once, not tentative for a second of duplicate detection
/// (they were valid when dumped). Lifetimes are passed on when finite.
pub(crate) fn new_addr(a: &Addr, ifindex: u32) -> RouteNetlinkMessage {
    new_addr_dad(a, ifindex, false)
}

/// [`new_addr`], with duplicate address detection when `dad` (an address the kernel would
/// have made tentative: a port-less bridge's link-local one, which stays so without carrier).
pub(crate) fn new_addr_dad(a: &Addr, ifindex: u32, dad: bool) -> RouteNetlinkMessage {
    let mut flags = a.flags & IFA_USER_FLAGS;
    if a.family() == Family::V6 && !dad {
        flags |= IFA_F_NODAD;
    }
    let mut m = addr_message(a, ifindex, flags);
    if a.flags & IFA_F_PERMANENT == 0 && a.valid_lft != u32::MAX {
        let mut c = CacheInfo::default();
        c.ifa_preferred = a.preferred_lft;
        c.ifa_valid = a.valid_lft;
        m.attributes.push(AddressAttribute::CacheInfo(c));
    }
    RouteNetlinkMessage::NewAddress(m)
}

/// The image message of `a`: as the kernel sent it, or made from the fields.
pub(crate) fn addr_image_msg(a: &Addr) -> Vec<u8> {
    if !a.raw.is_empty() {
        return a.raw.clone();
    }
    let m = addr_message(a, a.ifindex, a.flags);
    serialize(RouteNetlinkMessage::NewAddress(m), 0, 0)
}

/// `RTM_GETADDR` for a dump of every address of every family.
pub(crate) fn get_addrs() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetAddress(AddressMessage::default())
}

// ---- routes ----

/// A route of a `RTM_NEWROUTE` message (a dump answer or a `route`/`route6` image entry),
/// `raw` kept for the image. `None` for the local table's routes, cached clones, and
/// `NLMSG_DONE`. Multipath, encapsulated or MPLS routes are refused.
pub fn route_from_raw(raw: &[u8]) -> Result<Option<Route>, NetnsError> {
    match deserialize(raw, "route message")? {
        Some(RouteNetlinkMessage::NewRoute(m)) => parse_route(&m, raw),
        None => Ok(None),
        Some(other) => Err(NetnsError::Malformed {
            what: "route message".into(),
            reason: format!("not a route but message type {}", other.message_type()),
        }),
    }
}

fn metric_of(m: &RouteMetric) -> Option<(u16, u32)> {
    Some(match *m {
        RouteMetric::Lock(v) => (1, v),
        RouteMetric::Mtu(v) => (2, v),
        RouteMetric::Window(v) => (3, v),
        RouteMetric::Rtt(v) => (4, v),
        RouteMetric::RttVar(v) => (5, v),
        RouteMetric::SsThresh(v) => (6, v),
        RouteMetric::Cwnd(v) => (7, v),
        RouteMetric::Advmss(v) => (8, v),
        RouteMetric::Reordering(v) => (9, v),
        RouteMetric::Hoplimit(v) => (10, v),
        RouteMetric::InitCwnd(v) => (11, v),
        RouteMetric::Features(v) => (12, v),
        RouteMetric::RtoMin(v) => (13, v),
        RouteMetric::InitRwnd(v) => (14, v),
        RouteMetric::QuickAck(v) => (15, v),
        RouteMetric::FastopenNoCookie(v) => (17, v),
        _ => return None,
    })
}

fn metric_from((ty, v): (u16, u32)) -> Option<RouteMetric> {
    Some(match ty {
        1 => RouteMetric::Lock(v),
        2 => RouteMetric::Mtu(v),
        3 => RouteMetric::Window(v),
        4 => RouteMetric::Rtt(v),
        5 => RouteMetric::RttVar(v),
        6 => RouteMetric::SsThresh(v),
        7 => RouteMetric::Cwnd(v),
        8 => RouteMetric::Advmss(v),
        9 => RouteMetric::Reordering(v),
        10 => RouteMetric::Hoplimit(v),
        11 => RouteMetric::InitCwnd(v),
        12 => RouteMetric::Features(v),
        13 => RouteMetric::RtoMin(v),
        14 => RouteMetric::InitRwnd(v),
        15 => RouteMetric::QuickAck(v),
        17 => RouteMetric::FastopenNoCookie(v),
        _ => return None,
    })
}

fn parse_route(m: &RouteMessage, raw: &[u8]) -> Result<Option<Route>, NetnsError> {
    let h = &m.header;
    let family = match h.address_family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        // Only IPv4 and IPv6 are asked for; MPLS and the like are not kept by `ip route save`.
        _ => return Ok(None),
    };
    let mut r = Route {
        family,
        dst: None,
        dst_len: h.destination_prefix_length,
        src: None,
        src_len: h.source_prefix_length,
        gateway: None,
        oif: None,
        priority: None,
        prefsrc: None,
        table: u32::from(h.table),
        tos: h.tos,
        protocol: u8::from(h.protocol),
        scope: u8::from(h.scope),
        kind: u8::from(h.kind),
        flags: h.flags.bits(),
        pref: None,
        metrics: Vec::new(),
        raw: raw.to_vec(),
    };
    let mut unsupported: Option<&'static str> = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(d) => set_ip(&mut r.dst, d, &mut unsupported),
            RouteAttribute::Source(s) => set_ip(&mut r.src, s, &mut unsupported),
            RouteAttribute::Gateway(g) => set_ip(&mut r.gateway, g, &mut unsupported),
            RouteAttribute::PrefSource(p) => set_ip(&mut r.prefsrc, p, &mut unsupported),
            RouteAttribute::Oif(o) => r.oif = Some(*o),
            RouteAttribute::Priority(p) => r.priority = Some(*p),
            RouteAttribute::Table(t) => r.table = *t,
            RouteAttribute::Preference(p) => r.pref = Some(u8::from(*p)),
            RouteAttribute::Metrics(ms) => {
                for metric in ms {
                    match metric_of(metric) {
                        Some(v) => r.metrics.push(v),
                        None => unsupported = Some("a congestion control or unknown metric"),
                    }
                }
            }
            RouteAttribute::MultiPath(_) => unsupported = Some("multipath"),
            RouteAttribute::Encap(_) | RouteAttribute::EncapType(_) => {
                unsupported = Some("encapsulation")
            }
            RouteAttribute::Via(_) => unsupported = Some("a gateway of another family (via)"),
            RouteAttribute::NhId(_) => unsupported = Some("a nexthop object"),
            RouteAttribute::Realm(_) => unsupported = Some("a realm"),
            // Statistics and lookup keys: not part of the route.
            _ => {}
        }
    }
    // The kernel's own (the local table, rebuilt from the addresses), the unspecified table
    // and cached clones are not looked at further. Every other table is kept: `ip route
    // save` keeps the main one only, but a VPN client's policy routing (tailscale's table
    // 52, wg-quick's 51820) lives in others, and CRIU's `ip route restore` takes them too.
    if r.table == RT_TABLE_LOCAL || r.table == 0 || r.flags & RTM_F_CLONED != 0 {
        return Ok(None);
    }
    let bad_addr = |a: &Option<IpAddr>| a.is_some_and(|a| Family::of(&a) != family);
    if unsupported.is_none()
        && [&r.dst, &r.src, &r.gateway, &r.prefsrc]
            .into_iter()
            .any(bad_addr)
    {
        unsupported = Some("an address of another family");
    }
    if let Some(what) = unsupported {
        return Err(NetnsError::Unsupported {
            object: r.to_string(),
            what: what.to_string(),
        });
    }
    Ok(Some(r))
}

fn route_message(r: &Route, oif: Option<u32>, flags: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    let h: &mut RouteHeader = &mut m.header;
    h.address_family = match r.family {
        Family::V4 => AddressFamily::Inet,
        Family::V6 => AddressFamily::Inet6,
    };
    h.destination_prefix_length = r.dst_len;
    h.source_prefix_length = r.src_len;
    h.tos = r.tos;
    h.table = u8::try_from(r.table).unwrap_or(252); // RT_TABLE_COMPAT: see RTA_TABLE
    h.protocol = RouteProtocol::from(r.protocol);
    h.scope = RouteScope::from(r.scope);
    h.kind = RouteType::from(r.kind);
    h.flags = RouteFlags::from_bits_retain(flags);
    let at = &mut m.attributes;
    at.push(RouteAttribute::Table(r.table));
    if let Some(d) = r.dst {
        at.push(RouteAttribute::Destination(route_addr(d)));
    }
    if let Some(s) = r.src {
        at.push(RouteAttribute::Source(route_addr(s)));
    }
    if let Some(g) = r.gateway {
        at.push(RouteAttribute::Gateway(route_addr(g)));
    }
    if let Some(p) = r.prefsrc {
        at.push(RouteAttribute::PrefSource(route_addr(p)));
    }
    if let Some(o) = oif {
        at.push(RouteAttribute::Oif(o));
    }
    if let Some(p) = r.priority {
        at.push(RouteAttribute::Priority(p));
    }
    if let Some(p) = r.pref {
        at.push(RouteAttribute::Preference(RoutePreference::from(p)));
    }
    let metrics: Vec<RouteMetric> = r.metrics.iter().filter_map(|m| metric_from(*m)).collect();
    if !metrics.is_empty() {
        at.push(RouteAttribute::Metrics(metrics));
    }
    m
}

/// `RTM_NEWROUTE` re-adding `r` through `oif` (the link's ifindex in the restored namespace).
/// Of the flags only `onlink` is a request; the rest is kernel state.
pub(crate) fn new_route(r: &Route, oif: Option<u32>) -> RouteNetlinkMessage {
    RouteNetlinkMessage::NewRoute(route_message(r, oif, r.flags & RTNH_F_ONLINK))
}

/// The image message of `r`: as the kernel sent it, or made from the fields.
pub(crate) fn route_image_msg(r: &Route) -> Vec<u8> {
    if !r.raw.is_empty() {
        return r.raw.clone();
    }
    serialize(
        RouteNetlinkMessage::NewRoute(route_message(r, r.oif, r.flags)),
        0,
        0,
    )
}

/// `RTM_GETROUTE` for a dump of every route of every family.
pub(crate) fn get_routes() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetRoute(RouteMessage::default())
}

/// `RTM_GETRULE` for a dump of every policy routing rule of every family.
pub(crate) fn get_rules() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetRule(RuleMessage::default())
}

/// A policy routing rule of a `RTM_NEWRULE` message (a dump answer or a `rule` image entry),
/// `raw` kept for the image and the restore. `None` for `NLMSG_DONE`.
pub fn rule_from_raw(raw: &[u8]) -> Result<Option<Rule>, NetnsError> {
    let m = match deserialize(raw, "rule message")? {
        Some(RouteNetlinkMessage::NewRule(m)) => m,
        None => return Ok(None),
        Some(other) => {
            return Err(NetnsError::Malformed {
                what: "rule message".into(),
                reason: format!("not a rule but message type {}", other.message_type()),
            })
        }
    };
    let family = match m.header.family {
        AddressFamily::Inet => Family::V4,
        AddressFamily::Inet6 => Family::V6,
        other => {
            return Err(NetnsError::Unsupported {
                object: "a policy routing rule".into(),
                what: format!("address family {other:?}"),
            })
        }
    };
    let mut rule = Rule {
        family,
        priority: 0,
        table: u32::from(m.header.table),
        to_table: m.header.action == RuleAction::ToTable,
        selectors: 0,
        raw: raw.to_vec(),
    };
    for a in &m.attributes {
        match a {
            RuleAttribute::Priority(p) => rule.priority = *p,
            RuleAttribute::Table(t) => rule.table = *t,
            // What the kernel reports of every rule: not a selector.
            RuleAttribute::Protocol(_) | RuleAttribute::SuppressPrefixLen(_) => {}
            _ => rule.selectors += 1,
        }
    }
    if m.header.src_len != 0 || m.header.dst_len != 0 || m.header.tos != 0 {
        rule.selectors += 1;
    }
    Ok(Some(rule))
}

/// `RTM_NEWRULE` adding `r` again, as it was dumped.
pub(crate) fn new_rule(r: &Rule) -> Result<RouteNetlinkMessage, NetnsError> {
    match deserialize(&r.raw, "rule message")? {
        Some(RouteNetlinkMessage::NewRule(m)) => Ok(RouteNetlinkMessage::NewRule(m)),
        _ => Err(NetnsError::Malformed {
            what: r.to_string(),
            reason: "not a rule message".into(),
        }),
    }
}

/// `RTM_GETNEIGH` for a dump of every neighbour entry of every family.
pub(crate) fn get_neighbours() -> RouteNetlinkMessage {
    RouteNetlinkMessage::GetNeighbour(NeighbourMessage::default())
}

/// A permanent IPv4 or IPv6 neighbour entry of a `RTM_NEWNEIGH` message (a dump answer or a
/// `neigh` image entry), `raw` kept; `None` for `NLMSG_DONE` and for what is not kept
/// (learned entries, proxies, other families).
pub fn neighbour_from_raw(raw: &[u8]) -> Result<Option<Neighbour>, NetnsError> {
    let m = match deserialize(raw, "neighbour message")? {
        Some(RouteNetlinkMessage::NewNeighbour(m)) => m,
        None => return Ok(None),
        Some(other) => {
            return Err(NetnsError::Malformed {
                what: "neighbour message".into(),
                reason: format!("not a neighbour but message type {}", other.message_type()),
            })
        }
    };
    let kept = m.header.state == NeighbourState::Permanent
        && !m.header.flags.contains(NeighbourFlags::Proxy)
        && matches!(m.header.family, AddressFamily::Inet | AddressFamily::Inet6);
    if !kept {
        return Ok(None);
    }
    let dst = m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(v4)) => Some(IpAddr::V4(*v4)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(v6)) => Some(IpAddr::V6(*v6)),
        _ => None,
    });
    Ok(dst.map(|dst| Neighbour {
        ifindex: m.header.ifindex,
        dst,
        raw: raw.to_vec(),
    }))
}

/// `RTM_NEWNEIGH` adding `n` again on link `ifindex`: its address, link-layer address, state
/// and flags (what the kernel keeps of its own, such as cache times, left out).
pub(crate) fn new_neighbour(
    n: &Neighbour,
    ifindex: u32,
) -> Result<RouteNetlinkMessage, NetnsError> {
    match deserialize(&n.raw, "neighbour message")? {
        Some(RouteNetlinkMessage::NewNeighbour(mut m)) => {
            m.header.ifindex = ifindex;
            m.attributes.retain(|a| {
                matches!(
                    a,
                    NeighbourAttribute::Destination(_) | NeighbourAttribute::LinkLayerAddress(_)
                )
            });
            Ok(RouteNetlinkMessage::NewNeighbour(m))
        }
        _ => Err(NetnsError::Malformed {
            what: n.to_string(),
            reason: "not a neighbour message".into(),
        }),
    }
}

#[cfg(test)]
mod tests;
