//! Messages built as the kernel sends them, parsed into the model, and the restore requests
//! built from it parsed back. No socket, no privilege.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::NLM_F_MULTIPART;
use netlink_packet_route::address::{AddressFlags, AddressMessage, AddressScope};
use netlink_packet_route::link::LinkFlags;
use netlink_packet_route::route::{RouteNextHop, RouteProtocol, RouteScope, RouteType};

use super::*;
use crate::model::NetState;

fn kernel_msg(m: RouteNetlinkMessage) -> Vec<u8> {
    serialize(m, NLM_F_MULTIPART, 42)
}

fn parse_back(bytes: &[u8]) -> RouteNetlinkMessage {
    deserialize(bytes, "test").unwrap().unwrap()
}

fn veth_msg() -> LinkMessage {
    let mut m = LinkMessage::default();
    m.header.index = 3;
    m.header.link_layer_type = LinkLayerType::Ether;
    m.header.flags = LinkFlags::Up | LinkFlags::Broadcast | LinkFlags::Multicast;
    m.attributes = vec![
        LinkAttribute::IfName("eth0".into()),
        LinkAttribute::Mtu(1400),
        LinkAttribute::Address(vec![2, 0x77, 0, 0, 0, 2]),
        LinkAttribute::Link(7),
        LinkAttribute::LinkNetNsId(0),
        LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Veth)]),
    ];
    m
}

#[test]
fn links_parse_and_other_kinds_are_refused_by_name() {
    let raw = kernel_msg(RouteNetlinkMessage::NewLink(veth_msg()));
    let l = link_from_raw(&raw).unwrap().unwrap();
    assert_eq!(l.ifindex, 3);
    assert_eq!(l.name, "eth0");
    assert_eq!(
        l.kind,
        LinkKind::Veth {
            peer_ifindex: 7,
            peer_netnsid: Some(0)
        }
    );
    assert_eq!((l.mtu, l.is_up()), (1400, true));
    assert_eq!(l.mac.as_deref(), Some(&[2, 0x77, 0, 0, 0, 2][..]));

    let mut lo = LinkMessage::default();
    lo.header.index = 1;
    lo.header.link_layer_type = LinkLayerType::Loopback;
    lo.header.flags = LinkFlags::Loopback;
    lo.attributes = vec![
        LinkAttribute::IfName("lo".into()),
        LinkAttribute::Mtu(65536),
    ];
    let l = link_from_raw(&kernel_msg(RouteNetlinkMessage::NewLink(lo))).unwrap();
    assert_eq!(l.unwrap().kind, LinkKind::Loopback);

    let mut br = veth_msg();
    br.attributes
        .retain(|a| !matches!(a, LinkAttribute::LinkInfo(_)));
    br.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(
            InfoKind::Bridge,
        )]));
    let b = link_from_raw(&kernel_msg(RouteNetlinkMessage::NewLink(br.clone())))
        .unwrap()
        .unwrap();
    assert_eq!(b.kind, LinkKind::Bridge);
    // A macvlan: its mode and flags from its link info data.
    let with_info = |info: Vec<LinkInfo>| {
        let mut m = br.clone();
        m.attributes
            .retain(|a| !matches!(a, LinkAttribute::LinkInfo(_)));
        m.attributes.push(LinkAttribute::LinkInfo(info));
        m
    };
    let mv = with_info(vec![
        LinkInfo::Kind(InfoKind::MacVlan),
        LinkInfo::Data(InfoData::MacVlan(vec![
            InfoMacVlan::Mode(4u32.into()),
            InfoMacVlan::Flags(MacVlanFlags::from_bits_retain(1)),
        ])),
    ]);
    let m = link_from_raw(&kernel_msg(RouteNetlinkMessage::NewLink(mv)))
        .unwrap()
        .unwrap();
    assert_eq!(
        m.kind,
        LinkKind::Macvlan {
            mode: 4,
            flags: Some(1)
        }
    );
    let vx = with_info(vec![LinkInfo::Kind(InfoKind::Vxlan)]);
    let e = link_from_raw(&kernel_msg(RouteNetlinkMessage::NewLink(vx)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("eth0") && e.contains("vxlan"), "{e}");
    // A physical device: no link kind at all.
    br.attributes
        .retain(|a| !matches!(a, LinkAttribute::LinkInfo(_)));
    let e = link_from_raw(&kernel_msg(RouteNetlinkMessage::NewLink(br)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no link kind"), "{e}");
}

#[test]
fn veth_request_carries_mac_mtu_netns_and_peer_name() {
    let l = link_from_raw(&kernel_msg(RouteNetlinkMessage::NewLink(veth_msg())))
        .unwrap()
        .unwrap();
    let req = VethRequest {
        link: &l,
        ifindex: 3,
        netns: Some(9),
        peer_name: Some("host0"),
        peer_ifindex: 0,
        peer_mac: None,
    };
    let RouteNetlinkMessage::NewLink(m) = parse_back(&serialize(new_veth(&req), 0, 1)) else {
        panic!("not a link")
    };
    assert_eq!(m.header.index, 3);
    let at = &m.attributes;
    assert!(at.contains(&LinkAttribute::IfName("eth0".into())));
    assert!(at.contains(&LinkAttribute::Mtu(1400)));
    assert!(at.contains(&LinkAttribute::Address(vec![2, 0x77, 0, 0, 0, 2])));
    assert!(at.contains(&LinkAttribute::NetNsFd(9)));
    let peer = at
        .iter()
        .find_map(|a| match a {
            LinkAttribute::LinkInfo(i) => i.iter().find_map(|i| match i {
                LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                _ => None,
            }),
            _ => None,
        })
        .expect("peer");
    assert!(peer
        .attributes
        .contains(&LinkAttribute::IfName("host0".into())));
    assert!(peer.attributes.contains(&LinkAttribute::Mtu(1400)));

    let RouteNetlinkMessage::NewLink(b) = parse_back(&serialize(set_master(8, 5), 0, 1)) else {
        panic!("not a link")
    };
    assert_eq!(b.header.index, 8);
    assert_eq!(b.attributes, vec![LinkAttribute::Controller(5)]);

    let RouteNetlinkMessage::NewLink(s) = parse_back(&serialize(
        set_link(4, Some(1300), LinkFlags::Up.bits(), SETTABLE),
        0,
        1,
    )) else {
        panic!("not a link")
    };
    assert_eq!(s.header.index, 4);
    assert_eq!(s.header.flags, LinkFlags::Up);
    assert_eq!(s.header.change_mask.bits(), SETTABLE);
    assert_eq!(s.attributes, vec![LinkAttribute::Mtu(1300)]);
}

const SETTABLE: u32 = crate::model::SETTABLE_FLAGS;

fn addr_msg(ip: IpAddr, prefix: u8, flags: AddressFlags) -> AddressMessage {
    let mut m = AddressMessage::default();
    m.header.family = if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.prefix_len = prefix;
    m.header.index = 3;
    m.header.scope = AddressScope::Universe;
    m.attributes.push(AddressAttribute::Address(ip));
    if ip.is_ipv4() {
        m.attributes.push(AddressAttribute::Local(ip));
        m.attributes.push(AddressAttribute::Label("eth0".into()));
        m.attributes
            .push(AddressAttribute::Broadcast(Ipv4Addr::new(10, 77, 0, 255)));
    }
    m.attributes.push(AddressAttribute::Flags(flags));
    let mut c = CacheInfo::default();
    c.ifa_preferred = u32::MAX;
    c.ifa_valid = u32::MAX;
    m.attributes.push(AddressAttribute::CacheInfo(c));
    m
}

#[test]
fn addresses_parse_and_come_back_with_nodad() {
    let v4 = IpAddr::V4(Ipv4Addr::new(10, 77, 0, 2));
    let raw = kernel_msg(RouteNetlinkMessage::NewAddress(addr_msg(
        v4,
        24,
        AddressFlags::Permanent,
    )));
    let a = addr_from_raw(&raw).unwrap().unwrap();
    assert_eq!(
        (a.address, a.peer, a.prefix_len, a.ifindex),
        (v4, None, 24, 3)
    );
    assert_eq!(a.label.as_deref(), Some("eth0"));
    assert_eq!(a.broadcast, Some(Ipv4Addr::new(10, 77, 0, 255)));
    assert_eq!(a.valid_lft, u32::MAX);
    assert_eq!(a.raw, raw);

    let v6 = IpAddr::V6("fd77::2".parse::<Ipv6Addr>().unwrap());
    let raw = kernel_msg(RouteNetlinkMessage::NewAddress(addr_msg(
        v6,
        64,
        AddressFlags::Permanent | AddressFlags::Tentative,
    )));
    let a = addr_from_raw(&raw).unwrap().unwrap();
    let RouteNetlinkMessage::NewAddress(req) = parse_back(&serialize(new_addr(&a, 9), 0, 1)) else {
        panic!("not an address")
    };
    assert_eq!(req.header.index, 9);
    assert_eq!(req.header.prefix_len, 64);
    let flags = req
        .attributes
        .iter()
        .find_map(|x| match x {
            AddressAttribute::Flags(f) => Some(*f),
            _ => None,
        })
        .unwrap();
    // Usable at once; the kernel's state flags are not asked for.
    assert_eq!(flags, AddressFlags::Nodad);
    assert!(req.attributes.contains(&AddressAttribute::Address(v6)));
    assert!(!req.attributes.iter().any(|x| matches!(
        x,
        AddressAttribute::CacheInfo(_) | AddressAttribute::Local(_)
    )));

    // A dynamic address keeps its remaining lifetimes.
    let mut dynamic = a.clone();
    dynamic.flags = 0;
    dynamic.valid_lft = 600;
    dynamic.preferred_lft = 300;
    let RouteNetlinkMessage::NewAddress(req) = parse_back(&serialize(new_addr(&dynamic, 9), 0, 1))
    else {
        panic!("not an address")
    };
    assert!(req.attributes.iter().any(|x| matches!(x,
        AddressAttribute::CacheInfo(c) if c.ifa_valid == 600 && c.ifa_preferred == 300)));
}

fn route_msg(dst: Option<(IpAddr, u8)>, gw: Option<IpAddr>, table: u32) -> RouteMessage {
    let mut m = RouteMessage::default();
    let v4 = dst.is_none_or(|(d, _)| d.is_ipv4());
    m.header.address_family = if v4 {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    m.header.destination_prefix_length = dst.map_or(0, |d| d.1);
    m.header.table = u8::try_from(table).unwrap_or(252);
    m.header.protocol = RouteProtocol::Boot;
    m.header.scope = RouteScope::Universe;
    m.header.kind = RouteType::Unicast;
    m.attributes.push(RouteAttribute::Table(table));
    if let Some((d, _)) = dst {
        m.attributes
            .push(RouteAttribute::Destination(route_addr(d)));
    }
    if let Some(g) = gw {
        m.attributes.push(RouteAttribute::Gateway(route_addr(g)));
    }
    m.attributes.push(RouteAttribute::Oif(3));
    m
}

#[test]
fn routes_parse_filter_and_come_back_through_the_new_oif() {
    let gw: IpAddr = "10.77.0.1".parse().unwrap();
    let mut m = route_msg(Some(("10.78.0.0".parse().unwrap(), 16)), Some(gw), 254);
    m.attributes.push(RouteAttribute::Priority(50));
    m.attributes
        .push(RouteAttribute::Metrics(vec![RouteMetric::Mtu(1400)]));
    m.header.flags = RouteFlags::Onlink | RouteFlags::Linkdown;
    let raw = kernel_msg(RouteNetlinkMessage::NewRoute(m.clone()));
    let r = route_from_raw(&raw).unwrap().unwrap();
    assert_eq!(r.family, Family::V4);
    assert_eq!((r.dst, r.dst_len), (Some("10.78.0.0".parse().unwrap()), 16));
    assert_eq!(
        (r.gateway, r.oif, r.priority),
        (Some(gw), Some(3), Some(50))
    );
    assert_eq!(r.metrics, vec![(2, 1400)]);
    assert_eq!(r.protocol, u8::from(RouteProtocol::Boot));
    assert!(!r.is_kernel());

    let RouteNetlinkMessage::NewRoute(req) = parse_back(&serialize(new_route(&r, Some(9)), 0, 1))
    else {
        panic!("not a route")
    };
    assert!(req.attributes.contains(&RouteAttribute::Oif(9)));
    assert!(req.attributes.contains(&RouteAttribute::Priority(50)));
    assert!(req
        .attributes
        .contains(&RouteAttribute::Metrics(vec![RouteMetric::Mtu(1400)])));
    // Only onlink is asked for; linkdown is the kernel's.
    assert_eq!(req.header.flags, RouteFlags::Onlink);

    // What `ip route save` leaves out.
    let local = route_msg(Some(("10.77.0.2".parse().unwrap(), 32)), None, 255);
    assert!(
        route_from_raw(&kernel_msg(RouteNetlinkMessage::NewRoute(local)))
            .unwrap()
            .is_none()
    );
    let mut cloned = m.clone();
    cloned.header.flags = RouteFlags::Cloned;
    assert!(
        route_from_raw(&kernel_msg(RouteNetlinkMessage::NewRoute(cloned)))
            .unwrap()
            .is_none()
    );

    // What cannot be restored is named.
    let mut multi = route_msg(None, None, 254);
    multi
        .attributes
        .push(RouteAttribute::MultiPath(vec![RouteNextHop::default()]));
    let e = route_from_raw(&kernel_msg(RouteNetlinkMessage::NewRoute(multi)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("multipath") && e.contains("default"), "{e}");
    let mut mixed = route_msg(None, Some("fd77::1".parse().unwrap()), 254);
    mixed.header.address_family = AddressFamily::Inet;
    assert!(route_from_raw(&kernel_msg(RouteNetlinkMessage::NewRoute(mixed))).is_err());
}

#[test]
fn state_round_trips_through_images_built_from_fields() {
    let link = link_from_raw(&kernel_msg(RouteNetlinkMessage::NewLink(veth_msg())))
        .unwrap()
        .unwrap();
    let addr = addr_from_raw(&kernel_msg(RouteNetlinkMessage::NewAddress(addr_msg(
        "10.77.0.2".parse().unwrap(),
        24,
        AddressFlags::Permanent,
    ))))
    .unwrap()
    .unwrap();
    let v4 = route_from_raw(&kernel_msg(RouteNetlinkMessage::NewRoute(route_msg(
        None,
        Some("10.77.0.1".parse().unwrap()),
        254,
    ))))
    .unwrap()
    .unwrap();
    let v6 = route_from_raw(&kernel_msg(RouteNetlinkMessage::NewRoute(route_msg(
        Some(("fd78::".parse().unwrap(), 64)),
        Some("fd77::1".parse().unwrap()),
        254,
    ))))
    .unwrap()
    .unwrap();
    let state = NetState {
        links: vec![link],
        addrs: vec![addr],
        routes: vec![v4, v6],
        rules: Vec::new(),
        neighbours: Vec::new(),
    };
    // Raw messages are kept byte for byte.
    assert_eq!(NetState::from_images(&state.to_images()).unwrap(), state);
    // Without them, messages are made from the fields and read back the same.
    let mut bare = state.clone();
    bare.addrs.iter_mut().for_each(|a| a.raw.clear());
    bare.routes.iter_mut().for_each(|r| r.raw.clear());
    let mut back = NetState::from_images(&bare.to_images()).unwrap();
    back.addrs.iter_mut().for_each(|a| a.raw.clear());
    back.routes.iter_mut().for_each(|r| r.raw.clear());
    assert_eq!(back, bare);
    // An IPv6 route in the IPv4 image is refused.
    let mut wrong = state.to_images();
    std::mem::swap(&mut wrong.route, &mut wrong.route6);
    assert!(NetState::from_images(&wrong).is_err());
}

#[test]
fn damaged_messages_are_errors_not_panics() {
    let msgs = [
        kernel_msg(RouteNetlinkMessage::NewLink(veth_msg())),
        kernel_msg(RouteNetlinkMessage::NewAddress(addr_msg(
            "fd77::2".parse().unwrap(),
            64,
            AddressFlags::Permanent,
        ))),
        kernel_msg(RouteNetlinkMessage::NewRoute(route_msg(
            Some(("10.78.0.0".parse().unwrap(), 16)),
            Some("10.77.0.1".parse().unwrap()),
            254,
        ))),
    ];
    for m in &msgs {
        for cut in 0..m.len() {
            let mut short = m[..cut].to_vec();
            if cut >= 4 {
                // Keep the header's length consistent so the payload parsers see the cut.
                short[0..4].copy_from_slice(&(cut as u32).to_ne_bytes());
            }
            let _ = link_from_raw(&short);
            let _ = addr_from_raw(&short);
            let _ = route_from_raw(&short);
        }
        for at in 0..m.len() {
            for v in [0x00, 0x01, 0x7f, 0xff] {
                let mut bad = m.clone();
                bad[at] = v;
                let _ = link_from_raw(&bad);
                let _ = addr_from_raw(&bad);
                let _ = route_from_raw(&bad);
            }
        }
    }
    assert!(route_from_raw(&[0; 3]).is_err());
    assert!(addr_from_raw(&msgs[0]).is_err(), "a link is no address");
}

fn neigh_msg(dst: IpAddr, state: NeighbourState, flags: NeighbourFlags) -> Vec<u8> {
    let mut m = NeighbourMessage::default();
    m.header.family = match dst {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    m.header.ifindex = 3;
    m.header.state = state;
    m.header.flags = flags;
    m.attributes = vec![
        NeighbourAttribute::Destination(match dst {
            IpAddr::V4(v4) => NeighbourAddress::Inet(v4),
            IpAddr::V6(v6) => NeighbourAddress::Inet6(v6),
        }),
        NeighbourAttribute::LinkLayerAddress(vec![2, 0, 0, 0, 0, 9]),
        NeighbourAttribute::Probes(0),
    ];
    kernel_msg(RouteNetlinkMessage::NewNeighbour(m))
}

#[test]
fn permanent_neighbours_are_kept_and_made_again_on_their_new_link() {
    let v4: IpAddr = "10.0.0.9".parse().unwrap();
    let v6: IpAddr = "fd00::9".parse().unwrap();
    for dst in [v4, v6] {
        let raw = neigh_msg(dst, NeighbourState::Permanent, NeighbourFlags::empty());
        let n = neighbour_from_raw(&raw).unwrap().expect("permanent: kept");
        assert_eq!((n.ifindex, n.dst), (3, dst));
        let RouteNetlinkMessage::NewNeighbour(m) = new_neighbour(&n, 7).unwrap() else {
            panic!("not a neighbour message");
        };
        assert_eq!(m.header.ifindex, 7);
        assert_eq!(m.header.state, NeighbourState::Permanent);
        assert!(m.attributes.iter().all(|a| matches!(
            a,
            NeighbourAttribute::Destination(_) | NeighbourAttribute::LinkLayerAddress(_)
        )));
        assert_eq!(m.attributes.len(), 2);
    }
    // Learned entries and proxies are not kept.
    let learned = neigh_msg(v4, NeighbourState::Reachable, NeighbourFlags::empty());
    assert_eq!(neighbour_from_raw(&learned).unwrap(), None);
    let proxy = neigh_msg(v4, NeighbourState::Permanent, NeighbourFlags::Proxy);
    assert_eq!(neighbour_from_raw(&proxy).unwrap(), None);
    // Through the image and back.
    let n = neighbour_from_raw(&neigh_msg(
        v6,
        NeighbourState::Permanent,
        NeighbourFlags::empty(),
    ))
    .unwrap()
    .unwrap();
    let state = NetState {
        neighbours: vec![n],
        ..Default::default()
    };
    let images = state.to_images();
    assert_eq!(
        NetState::from_images(&images).unwrap().neighbours,
        state.neighbours
    );
}
