//! What is kept of a network namespace: its links, addresses and routes, as plain data, and its
//! mapping to CRIU's images (`netdev-<id>.img` entries as [`NetDevice`], the raw `ip ... save`
//! images through [`crate::ipdump`]). Pure code.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use crate::error::NetnsError;
use crate::ipdump::{self, IpImage};
use crate::wire;

/// `IFF_UP`.
pub const IFF_UP: u32 = libc::IFF_UP as u32;
/// Link flags a restore sets as they were (the rest is kernel state: running, lower up...).
pub const SETTABLE_FLAGS: u32 = (libc::IFF_UP
    | libc::IFF_NOARP
    | libc::IFF_PROMISC
    | libc::IFF_ALLMULTI
    | libc::IFF_MULTICAST
    | libc::IFF_DEBUG) as u32;

/// The main routing table (`RT_TABLE_MAIN`): the one `ip route save` dumps and CRIU restores.
pub const RT_TABLE_MAIN: u32 = 254;
/// The local table (`RT_TABLE_LOCAL`): the kernel's, made from the addresses.
pub const RT_TABLE_LOCAL: u32 = 255;
/// The default table (`RT_TABLE_DEFAULT`).
pub const RT_TABLE_DEFAULT: u32 = 253;
/// `RTPROT_KERNEL`: a route the kernel made itself (the prefix route of an address).
pub const RTPROT_KERNEL: u8 = 2;

/// A link's kind, as far as stasis can restore it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkKind {
    /// The namespace's `lo`, made by the kernel with the namespace.
    Loopback,
    /// One end of a veth pair. `peer_netnsid` is the id of the peer's namespace as this
    /// namespace knows it (`IFLA_LINK_NETNSID`); `None` when both ends are in this namespace.
    Veth {
        peer_ifindex: u32,
        peer_netnsid: Option<i32>,
    },
    /// A bridge; its ports name it as their `master`. Its own settings (STP, forwarding
    /// delay, VLAN filtering) are not kept, as CRIU keeps none.
    Bridge,
    /// A macvlan whose lower device is outside the namespace (given at restore as
    /// `--external macvlan[NAME]:HOSTDEV`, as CRIU takes it): its mode and flags.
    Macvlan { mode: u32, flags: Option<u32> },
    /// A tun or tap device (`crate::tun`): its `IFF_*` flags (`IFF_PERSIST` among them), owner
    /// and group. The queues are the tree's open files of `/dev/net/tun`.
    Tun {
        flags: u32,
        owner: Option<u32>,
        group: Option<u32>,
    },
}

impl LinkKind {
    pub fn name(&self) -> &'static str {
        match self {
            LinkKind::Loopback => "loopback",
            LinkKind::Veth { .. } => "veth",
            LinkKind::Bridge => "bridge",
            LinkKind::Macvlan { .. } => "macvlan",
            LinkKind::Tun { .. } => "tun",
        }
    }
}

/// A network device of the namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub ifindex: u32,
    pub name: String,
    pub kind: LinkKind,
    pub mtu: u32,
    /// Hardware address (`IFLA_ADDRESS`), when the link has one.
    pub mac: Option<Vec<u8>>,
    /// `ifi_flags` as dumped; a restore sets the [`SETTABLE_FLAGS`] among them.
    pub flags: u32,
    /// `IFLA_MASTER`: the bridge or bond the link is enslaved to.
    pub master: Option<u32>,
}

impl Link {
    pub fn is_up(&self) -> bool {
        self.flags & IFF_UP != 0
    }
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "link {} (ifindex {})", self.name, self.ifindex)
    }
}

/// Address family of a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub fn of(ip: &IpAddr) -> Family {
        if ip.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// An address of a link (`RTM_NEWADDR`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Addr {
    pub ifindex: u32,
    /// The link's own address (`IFA_LOCAL`, or `IFA_ADDRESS` when there is no local one).
    pub address: IpAddr,
    /// The other end of a point-to-point address (`IFA_ADDRESS` when it differs from
    /// `IFA_LOCAL`).
    pub peer: Option<IpAddr>,
    pub prefix_len: u8,
    /// `ifa_scope` (`RT_SCOPE_*`).
    pub scope: u8,
    /// `IFA_FLAGS` (or `ifa_flags` when absent): `IFA_F_*`.
    pub flags: u32,
    /// `IFA_LABEL` (IPv4).
    pub label: Option<String>,
    pub broadcast: Option<Ipv4Addr>,
    /// `IFA_RT_PRIORITY`: metric of the prefix route.
    pub metric: Option<u32>,
    /// `IFA_PROTO`: who added it.
    pub proto: Option<u8>,
    /// Remaining preferred and valid lifetimes in seconds (`u32::MAX`: forever).
    pub preferred_lft: u32,
    pub valid_lft: u32,
    /// The message as the kernel sent it, for the image; empty when the address was built
    /// otherwise (the image then holds a message made from the fields).
    pub raw: Vec<u8>,
}

/// `IFA_PROTO_KERNEL_LO`: `lo`'s addresses, made when it goes up.
pub const IFA_PROTO_KERNEL_LO: u8 = 1;
/// `IFA_PROTO_KERNEL_LL`: an IPv6 link-local address the kernel generated.
pub const IFA_PROTO_KERNEL_LL: u8 = 3;

impl Addr {
    pub fn family(&self) -> Family {
        Family::of(&self.address)
    }

    /// Made by the kernel when `link` goes up, and made again the same after a restore: `lo`'s
    /// addresses and the IPv6 link-local address derived from the MAC (the restore sets the
    /// MAC before the link is up). Linux 6.3 and later say so in `IFA_PROTO`; before, a
    /// link-local address equal to the EUI-64 of the link's MAC is taken for the kernel's.
    /// Re-adding such an address by hand would make it a static one.
    pub fn is_kernel_made(&self, link: Option<&Link>) -> bool {
        match self.proto {
            Some(IFA_PROTO_KERNEL_LO | IFA_PROTO_KERNEL_LL) => return true,
            Some(_) => return false,
            None => {}
        }
        let Some(link) = link else { return false };
        match self.address {
            IpAddr::V4(v4) => link.kind == LinkKind::Loopback && v4 == Ipv4Addr::LOCALHOST,
            IpAddr::V6(v6) if link.kind == LinkKind::Loopback => v6.is_loopback(),
            IpAddr::V6(v6) => {
                self.prefix_len == 64 && link.mac.as_deref().and_then(eui64_link_local) == Some(v6)
            }
        }
    }
}

/// The `fe80::/64` address with the modified EUI-64 interface id of a 6-byte MAC (RFC 4291).
pub fn eui64_link_local(mac: &[u8]) -> Option<std::net::Ipv6Addr> {
    let m: &[u8; 6] = mac.try_into().ok()?;
    let mut b = [0u8; 16];
    b[0] = 0xfe;
    b[1] = 0x80;
    b[8..16].copy_from_slice(&[m[0] ^ 2, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]]);
    Some(std::net::Ipv6Addr::from(b))
}

impl fmt::Display for Addr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "address {}/{} on ifindex {}",
            self.address, self.prefix_len, self.ifindex
        )
    }
}

/// A route of the main table (`RTM_NEWROUTE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub family: Family,
    /// `None`: the default route.
    pub dst: Option<IpAddr>,
    pub dst_len: u8,
    /// Source prefix (`RTA_SRC`, IPv6 source routing).
    pub src: Option<IpAddr>,
    pub src_len: u8,
    pub gateway: Option<IpAddr>,
    pub oif: Option<u32>,
    /// Metric (`RTA_PRIORITY`).
    pub priority: Option<u32>,
    pub prefsrc: Option<IpAddr>,
    pub table: u32,
    pub tos: u8,
    /// `rtm_protocol` (`RTPROT_*`).
    pub protocol: u8,
    /// `rtm_scope` (`RT_SCOPE_*`).
    pub scope: u8,
    /// `rtm_type` (`RTN_*`).
    pub kind: u8,
    /// `rtm_flags` (`RTNH_F_*`, `RTM_F_*`).
    pub flags: u32,
    /// IPv6 router preference (`RTA_PREF`).
    pub pref: Option<u8>,
    /// `RTA_METRICS`: (`RTAX_*`, value), e.g. `(2, 1400)` for `mtu 1400`.
    pub metrics: Vec<(u16, u32)>,
    /// As for [`Addr::raw`].
    pub raw: Vec<u8>,
}

impl Route {
    /// Made by the kernel for an address (its prefix route): comes back with the address.
    pub fn is_kernel(&self) -> bool {
        self.protocol == RTPROT_KERNEL
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("route ")?;
        match self.dst {
            Some(d) => write!(f, "{d}/{}", self.dst_len)?,
            None if self.family == Family::V6 => f.write_str("default (v6)")?,
            None => f.write_str("default")?,
        }
        if let Some(g) = self.gateway {
            write!(f, " via {g}")?;
        }
        if let Some(o) = self.oif {
            write!(f, " oif {o}")?;
        }
        if let Some(p) = self.priority {
            write!(f, " metric {p}")?;
        }
        Ok(())
    }
}

/// A policy routing rule (`RTM_NEWRULE`, `ip rule`), kept as the kernel sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub family: Family,
    pub priority: u32,
    pub table: u32,
    /// Its action is a table lookup (`FR_ACT_TO_TBL`).
    pub to_table: bool,
    /// How many selectors it has (addresses, marks, interfaces, ports...).
    pub selectors: usize,
    /// The whole message, header included: written to the image and sent back as it is.
    pub raw: Vec<u8>,
}

impl Rule {
    /// One of the rules every new namespace has (`0: lookup local`, `32766: lookup main`,
    /// and for IPv4 `32767: lookup default`): there already, not added again.
    pub fn is_default(&self) -> bool {
        self.to_table
            && self.selectors == 0
            && matches!(
                (self.priority, self.table, self.family),
                (0, RT_TABLE_LOCAL, _)
                    | (32766, RT_TABLE_MAIN, _)
                    | (32767, RT_TABLE_DEFAULT, Family::V4)
            )
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "rule {}: {:?} lookup table {}",
            self.priority, self.family, self.table
        )
    }
}

/// A permanent neighbour entry (`ip neigh add ... nud permanent`: a static ARP or NDP entry,
/// as some CNI plugins put in a container's namespace), kept as the kernel sent it. Entries
/// the kernel learns are a cache, not kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub dst: std::net::IpAddr,
    /// The whole message, header included: written to the image and sent back, its link's
    /// new index put in.
    pub raw: Vec<u8>,
}

impl fmt::Display for Neighbour {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "neighbour {} (link {})", self.dst, self.ifindex)
    }
}

/// A namespace's network configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetState {
    pub links: Vec<Link>,
    /// Every address, kernel-made ones included (`lo`'s, IPv6 link-local), in dump order.
    pub addrs: Vec<Addr>,
    /// The routes of every table but the local one, the kernel's prefix routes included (as
    /// `ip route save` keeps them; a restore skips them, the addresses bring them back).
    pub routes: Vec<Route>,
    /// The policy routing rules, the defaults included (as `ip rule save` keeps them; a
    /// restore adds only the others).
    pub rules: Vec<Rule>,
    /// The permanent neighbour entries.
    pub neighbours: Vec<Neighbour>,
}

/// CRIU's `nd_type` values (`netdev.proto`).
pub mod nd_type {
    pub const LOOPBACK: u32 = 1;
    pub const VETH: u32 = 2;
    pub const TUN: u32 = 3;
    pub const EXTLINK: u32 = 4;
    pub const VENET: u32 = 5;
    pub const BRIDGE: u32 = 6;
    pub const MACVLAN: u32 = 7;
    pub const SIT: u32 = 8;

    /// Name of a type, for errors.
    pub fn name(t: u32) -> &'static str {
        match t {
            LOOPBACK => "loopback",
            VETH => "veth",
            TUN => "tun",
            EXTLINK => "external link",
            VENET => "venet",
            BRIDGE => "bridge",
            MACVLAN => "macvlan",
            SIT => "sit",
            _ => "unknown",
        }
    }
}

/// The fields of CRIU's `net_device_entry` (one per link in `netdev-<id>.img`) that stasis
/// fills. The engine maps it to its protobuf type; this crate cannot depend on the engine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetDevice {
    /// `nd_type` ([`nd_type`]).
    pub kind: u32,
    pub ifindex: u32,
    pub mtu: u32,
    pub flags: u32,
    pub name: String,
    pub address: Option<Vec<u8>>,
    pub peer_ifindex: Option<u32>,
    /// The peer's netnsid, as `uint32` in CRIU's entry (the `i32` bit pattern).
    pub peer_nsid: Option<u32>,
    pub master: Option<u32>,
    /// A macvlan's mode and flags (CRIU's `macvlan_link_entry`).
    pub macvlan: Option<(u32, Option<u32>)>,
    /// A tun device's `IFF_*` flags, owner and group, -1 for none (CRIU's `tun_link_entry`).
    pub tun: Option<(u32, i32, i32)>,
}

impl From<&Link> for NetDevice {
    fn from(l: &Link) -> NetDevice {
        let (kind, peer_ifindex, peer_nsid) = match l.kind {
            LinkKind::Loopback => (nd_type::LOOPBACK, None, None),
            LinkKind::Veth {
                peer_ifindex,
                peer_netnsid,
            } => (
                nd_type::VETH,
                Some(peer_ifindex),
                peer_netnsid.map(|n| n as u32),
            ),
            LinkKind::Bridge => (nd_type::BRIDGE, None, None),
            LinkKind::Macvlan { .. } => (nd_type::MACVLAN, None, None),
            LinkKind::Tun { .. } => (nd_type::TUN, None, None),
        };
        let tun = match l.kind {
            LinkKind::Tun {
                flags,
                owner,
                group,
            } => Some((
                flags,
                owner.map_or(-1, |o| o as i32),
                group.map_or(-1, |g| g as i32),
            )),
            _ => None,
        };
        let macvlan = match l.kind {
            LinkKind::Macvlan { mode, flags } => Some((mode, flags)),
            _ => None,
        };
        NetDevice {
            kind,
            ifindex: l.ifindex,
            mtu: l.mtu,
            flags: l.flags,
            name: l.name.clone(),
            address: l.mac.clone(),
            peer_ifindex,
            peer_nsid,
            master: l.master,
            macvlan,
            tun,
        }
    }
}

impl TryFrom<&NetDevice> for Link {
    type Error = NetnsError;
    fn try_from(d: &NetDevice) -> Result<Link, NetnsError> {
        let kind = match d.kind {
            nd_type::LOOPBACK => LinkKind::Loopback,
            nd_type::VETH => LinkKind::Veth {
                peer_ifindex: d.peer_ifindex.unwrap_or(0),
                peer_netnsid: d.peer_nsid.map(|n| n as i32),
            },
            nd_type::BRIDGE => LinkKind::Bridge,
            nd_type::MACVLAN => {
                let (mode, flags) = d.macvlan.ok_or_else(|| NetnsError::UnsupportedLink {
                    link: d.name.clone(),
                    ifindex: d.ifindex,
                    kind: "macvlan without its mode".into(),
                })?;
                LinkKind::Macvlan { mode, flags }
            }
            nd_type::TUN => {
                let (flags, owner, group) = d.tun.ok_or_else(|| NetnsError::UnsupportedLink {
                    link: d.name.clone(),
                    ifindex: d.ifindex,
                    kind: "tun without its flags".into(),
                })?;
                LinkKind::Tun {
                    flags,
                    owner: (owner >= 0).then_some(owner as u32),
                    group: (group >= 0).then_some(group as u32),
                }
            }
            other => {
                return Err(NetnsError::UnsupportedLink {
                    link: d.name.clone(),
                    ifindex: d.ifindex,
                    kind: format!("{} (netdev type {other})", nd_type::name(other)),
                })
            }
        };
        Ok(Link {
            ifindex: d.ifindex,
            name: d.name.clone(),
            kind,
            mtu: d.mtu,
            mac: d.address.clone(),
            flags: d.flags,
            master: d.master,
        })
    }
}

/// A namespace's state in CRIU's image form: the `netdev` entries and the three raw images.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetImages {
    pub netdev: Vec<NetDevice>,
    /// `ifaddr-<id>.img`.
    pub ifaddr: Vec<u8>,
    /// `route-<id>.img` (IPv4).
    pub route: Vec<u8>,
    /// `route6-<id>.img`.
    pub route6: Vec<u8>,
    /// `rule-<id>.img`; empty when the images have none (CRIU's `ip rule save` may fail).
    pub rule: Vec<u8>,
    /// `neigh-<id>.img` (stasis's own); empty when the images have none (CRIU's, older ones).
    pub neigh: Vec<u8>,
}

impl NetState {
    /// The images of this state.
    pub fn to_images(&self) -> NetImages {
        let addrs: Vec<Vec<u8>> = self.addrs.iter().map(wire::addr_image_msg).collect();
        let routes = |fam| -> Vec<u8> {
            let msgs: Vec<Vec<u8>> = self
                .routes
                .iter()
                .filter(|r| r.family == fam)
                .map(wire::route_image_msg)
                .collect();
            let image = if fam == Family::V4 {
                IpImage::Route
            } else {
                IpImage::Route6
            };
            ipdump::encode(image, msgs.iter().map(Vec::as_slice))
        };
        NetImages {
            netdev: self.links.iter().map(NetDevice::from).collect(),
            ifaddr: ipdump::encode(IpImage::Ifaddr, addrs.iter().map(Vec::as_slice)),
            route: routes(Family::V4),
            route6: routes(Family::V6),
            // All IPv4 rules, as `ip rule save` writes them (`ip rule restore` skips the
            // defaults), and the IPv6 ones but the defaults, which `ip rule restore` (CRIU's
            // restore) would add a second time.
            rule: ipdump::encode(
                IpImage::Rule,
                self.rules
                    .iter()
                    .filter(|r| r.family == Family::V4 || !r.is_default())
                    .map(|r| r.raw.as_slice()),
            ),
            neigh: if self.neighbours.is_empty() {
                Vec::new()
            } else {
                ipdump::encode(
                    IpImage::Neigh,
                    self.neighbours.iter().map(|n| n.raw.as_slice()),
                )
            },
        }
    }

    /// The state back from its images. Routes of the local table and cached clones are
    /// dropped (CRIU's images hold none, but a hand-made one might). A link kind or route
    /// feature that cannot be restored is an error naming it.
    pub fn from_images(images: &NetImages) -> Result<NetState, NetnsError> {
        let links = images
            .netdev
            .iter()
            .map(Link::try_from)
            .collect::<Result<Vec<_>, _>>()?;
        let addrs = ipdump::decode(IpImage::Ifaddr, &images.ifaddr)?
            .into_iter()
            .filter_map(|m| wire::addr_from_raw(m).transpose())
            .collect::<Result<Vec<_>, _>>()?;
        let mut routes = Vec::new();
        for (image, bytes, fam) in [
            (IpImage::Route, &images.route, Family::V4),
            (IpImage::Route6, &images.route6, Family::V6),
        ] {
            for m in ipdump::decode(image, bytes)? {
                if let Some(r) = wire::route_from_raw(m)? {
                    if r.family != fam {
                        return Err(NetnsError::Malformed {
                            what: format!("{r} in the {fam:?} route image"),
                            reason: "wrong address family".into(),
                        });
                    }
                    routes.push(r);
                }
            }
        }
        let rules = if images.rule.is_empty() {
            Vec::new()
        } else {
            ipdump::decode(IpImage::Rule, &images.rule)?
                .into_iter()
                .filter_map(|m| wire::rule_from_raw(m).transpose())
                .collect::<Result<Vec<_>, _>>()?
        };
        let neighbours = if images.neigh.is_empty() {
            Vec::new()
        } else {
            ipdump::decode(IpImage::Neigh, &images.neigh)?
                .into_iter()
                .filter_map(|m| wire::neighbour_from_raw(m).transpose())
                .collect::<Result<Vec<_>, _>>()?
        };
        Ok(NetState {
            links,
            addrs,
            routes,
            rules,
            neighbours,
        })
    }

    /// The link with this ifindex.
    pub fn link(&self, ifindex: u32) -> Option<&Link> {
        self.links.iter().find(|l| l.ifindex == ifindex)
    }

    /// Only the loopback of this state, with its addresses and routes; `lo` up when the state
    /// has none (a namespace whose contents the caller manages, CRIU's `--empty-ns net`:
    /// what it adds comes later, but the tree's own localhost works from the start).
    pub fn loopback_only(&self) -> NetState {
        let lo: Vec<Link> = self
            .links
            .iter()
            .filter(|l| l.kind == LinkKind::Loopback)
            .cloned()
            .collect();
        if lo.is_empty() {
            return NetState {
                links: vec![Link {
                    ifindex: 1,
                    name: "lo".into(),
                    kind: LinkKind::Loopback,
                    mtu: 65536,
                    mac: None,
                    flags: IFF_UP | libc::IFF_LOOPBACK as u32 | libc::IFF_RUNNING as u32,
                    master: None,
                }],
                ..Default::default()
            };
        }
        let on_lo = |i: Option<u32>| i.is_some_and(|i| lo.iter().any(|l| l.ifindex == i));
        NetState {
            addrs: self
                .addrs
                .iter()
                .filter(|a| on_lo(Some(a.ifindex)))
                .cloned()
                .collect(),
            routes: self
                .routes
                .iter()
                .filter(|r| on_lo(r.oif))
                .cloned()
                .collect(),
            // The caller's, as the links are.
            rules: Vec::new(),
            neighbours: self
                .neighbours
                .iter()
                .filter(|n| on_lo(Some(n.ifindex)))
                .cloned()
                .collect(),
            links: lo,
        }
    }
}

/// CRIU's `--veth-pair IN=OUT[@BRIDGE]`: the veth named `inside` in the namespace gets its
/// peer, in the caller's namespace, named `outside`, enslaved to `bridge` when given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethPair {
    pub inside: String,
    pub outside: String,
    pub bridge: Option<String>,
}

/// `--veth-pair` text that is not `IN=OUT[@BRIDGE]`.
#[derive(Debug, thiserror::Error)]
#[error("--veth-pair {text:?}: {reason} (expected IN=OUT or IN=OUT@BRIDGE)")]
pub struct VethPairError {
    pub text: String,
    pub reason: &'static str,
}

impl std::str::FromStr for VethPair {
    type Err = VethPairError;
    fn from_str(s: &str) -> Result<VethPair, VethPairError> {
        let err = |reason| VethPairError {
            text: s.to_string(),
            reason,
        };
        let (inside, rest) = s.split_once('=').ok_or_else(|| err("no '='"))?;
        let (outside, bridge) = match rest.split_once('@') {
            Some((o, b)) => (o, Some(b)),
            None => (rest, None),
        };
        for name in [Some(inside), Some(outside), bridge].into_iter().flatten() {
            if name.is_empty() {
                return Err(err("empty name"));
            }
            // IFNAMSIZ is 16 with the NUL; '/' and whitespace the kernel refuses too.
            if name.len() > 15 || name.contains(['/', ' ', '\t', '\n', ':']) {
                return Err(err("not a valid interface name"));
            }
        }
        Ok(VethPair {
            inside: inside.to_string(),
            outside: outside.to_string(),
            bridge: bridge.map(str::to_string),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str, prefix_len: u8, proto: Option<u8>) -> Addr {
        Addr {
            ifindex: 2,
            address: ip.parse().unwrap(),
            peer: None,
            prefix_len,
            scope: 0,
            flags: 0,
            label: None,
            broadcast: None,
            metric: None,
            proto,
            preferred_lft: u32::MAX,
            valid_lft: u32::MAX,
            raw: Vec::new(),
        }
    }

    #[test]
    fn kernel_made_addresses_are_recognised() {
        let veth = Link {
            ifindex: 2,
            name: "eth0".into(),
            kind: LinkKind::Veth {
                peer_ifindex: 3,
                peer_netnsid: Some(0),
            },
            mtu: 1500,
            mac: Some(vec![0x02, 0x77, 0, 0, 0, 0x02]),
            flags: 0,
            master: None,
        };
        let lo = Link {
            kind: LinkKind::Loopback,
            mac: Some(vec![0; 6]),
            ..veth.clone()
        };
        assert_eq!(
            eui64_link_local(&[0x02, 0x77, 0, 0, 0, 0x02]),
            Some("fe80::77:ff:fe00:2".parse().unwrap())
        );
        assert!(addr("fe80::77:ff:fe00:2", 64, None).is_kernel_made(Some(&veth)));
        assert!(!addr("fe80::1", 64, None).is_kernel_made(Some(&veth)));
        assert!(addr("fe80::1", 64, Some(IFA_PROTO_KERNEL_LL)).is_kernel_made(Some(&veth)));
        assert!(!addr("fe80::77:ff:fe00:2", 64, Some(0)).is_kernel_made(Some(&veth)));
        assert!(!addr("fd77::2", 64, None).is_kernel_made(Some(&veth)));
        assert!(addr("127.0.0.1", 8, None).is_kernel_made(Some(&lo)));
        assert!(addr("::1", 128, None).is_kernel_made(Some(&lo)));
        assert!(!addr("127.0.0.2", 8, None).is_kernel_made(Some(&lo)));
        assert!(!addr("10.0.0.1", 8, None).is_kernel_made(None));
        assert_eq!(eui64_link_local(&[1, 2, 3]), None);
    }

    #[test]
    fn loopback_only_keeps_lo_and_its_addresses_or_makes_lo_up() {
        let veth = Link {
            ifindex: 2,
            name: "eth0".into(),
            kind: LinkKind::Veth {
                peer_ifindex: 3,
                peer_netnsid: Some(0),
            },
            mtu: 1500,
            mac: None,
            flags: IFF_UP,
            master: None,
        };
        let lo = Link {
            ifindex: 1,
            name: "lo".into(),
            kind: LinkKind::Loopback,
            ..veth.clone()
        };
        let mut a2 = addr("127.0.0.2", 8, None);
        a2.ifindex = 1;
        let mut a3 = addr("10.0.0.2", 24, None);
        a3.ifindex = 2;
        let state = NetState {
            links: vec![lo.clone(), veth],
            addrs: vec![a2.clone(), a3],
            routes: Vec::new(),
            rules: Vec::new(),
            neighbours: Vec::new(),
        };
        let only = state.loopback_only();
        assert_eq!(only.links, vec![lo]);
        assert_eq!(only.addrs, vec![a2]);
        let made = NetState::default().loopback_only();
        assert_eq!(made.links.len(), 1);
        assert!(made.links[0].is_up() && made.links[0].kind == LinkKind::Loopback);
    }

    #[test]
    fn veth_pair_parses_criu_syntax() {
        let p: VethPair = "eth0=veth123".parse().unwrap();
        assert_eq!(
            p,
            VethPair {
                inside: "eth0".into(),
                outside: "veth123".into(),
                bridge: None
            }
        );
        let p: VethPair = "eth0=v1@br0".parse().unwrap();
        assert_eq!(p.bridge.as_deref(), Some("br0"));
        for bad in [
            "eth0",
            "=x",
            "eth0=",
            "a=b@",
            "a=averyveryverylongname",
            "a/b=c",
        ] {
            assert!(bad.parse::<VethPair>().is_err(), "{bad}");
        }
    }

    #[test]
    fn netdev_mapping_round_trips_and_refuses_other_kinds() {
        let l = Link {
            ifindex: 7,
            name: "eth0".into(),
            kind: LinkKind::Veth {
                peer_ifindex: 8,
                peer_netnsid: Some(0),
            },
            mtu: 1400,
            mac: Some(vec![2, 0, 0, 0, 0, 1]),
            flags: IFF_UP,
            master: None,
        };
        let d = NetDevice::from(&l);
        assert_eq!(d.kind, nd_type::VETH);
        assert_eq!(d.peer_nsid, Some(0));
        assert_eq!(Link::try_from(&d).unwrap(), l);
        let bridge = NetDevice {
            kind: nd_type::BRIDGE,
            peer_ifindex: None,
            peer_nsid: None,
            ..d.clone()
        };
        let b = Link::try_from(&bridge).unwrap();
        assert_eq!(b.kind, LinkKind::Bridge);
        assert_eq!(NetDevice::from(&b), bridge);
        let macvlan = NetDevice {
            kind: nd_type::MACVLAN,
            ..d
        };
        let e = Link::try_from(&macvlan).unwrap_err().to_string();
        assert!(e.contains("eth0") && e.contains("macvlan"), "{e}");
    }
}
