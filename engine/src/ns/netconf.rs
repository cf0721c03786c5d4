//! Per-device network sysctls (`/proc/sys/net/ipv{4,6}/conf/<dev>/<name>`) as CRIU's images
//! hold them: a list of entries per device (`conf4`, `conf6` of a netdev entry) and for `all`
//! and `default` (`all_conf4`, `def_conf4`... of the netns entry), positional: entry i is the
//! i-th name of the lists below, in CRIU's order. Pure: the reading and writing is
//! `ns::net`'s.

use crate::images::pb;

/// The IPv4 device sysctls, in the images' order.
pub const CONF4: [&str; 30] = [
    "accept_local",
    "accept_redirects",
    "accept_source_route",
    "arp_accept",
    "arp_announce",
    "arp_filter",
    "arp_ignore",
    "arp_notify",
    "bootp_relay",
    "disable_policy",
    "disable_xfrm",
    "force_igmp_version",
    "forwarding",
    "igmpv2_unsolicited_report_interval",
    "igmpv3_unsolicited_report_interval",
    "log_martians",
    "medium_id",
    "promote_secondaries",
    "proxy_arp",
    "proxy_arp_pvlan",
    "route_localnet",
    "rp_filter",
    "secure_redirects",
    "send_redirects",
    "shared_media",
    "src_valid_mark",
    "tag",
    "ignore_routes_with_linkdown",
    "drop_gratuitous_arp",
    "drop_unicast_in_l2_multicast",
];

/// The IPv6 device sysctls, in the images' order.
pub const CONF6: [&str; 42] = [
    "accept_dad",
    "accept_ra",
    "accept_ra_defrtr",
    "accept_ra_from_local",
    "accept_ra_min_hop_limit",
    "accept_ra_mtu",
    "accept_ra_pinfo",
    "accept_ra_rt_info_max_plen",
    "accept_ra_rtr_pref",
    "accept_redirects",
    "accept_source_route",
    "autoconf",
    "dad_transmits",
    "disable_ipv6",
    "drop_unicast_in_l2_multicast",
    "drop_unsolicited_na",
    "force_mld_version",
    "force_tllao",
    "forwarding",
    "hop_limit",
    "ignore_routes_with_linkdown",
    "keep_addr_on_down",
    "max_addresses",
    "max_desync_factor",
    "mldv1_unsolicited_report_interval",
    "mldv2_unsolicited_report_interval",
    "mtu",
    "ndisc_notify",
    "optimistic_dad",
    "proxy_ndp",
    "regen_max_retry",
    "router_probe_interval",
    "router_solicitation_delay",
    "router_solicitation_interval",
    "router_solicitations",
    "stable_secret",
    "suppress_frag_ndisc",
    "temp_prefered_lft",
    "temp_valid_lft",
    "use_oif_addrs_only",
    "use_optimistic",
    "use_tempaddr",
];

/// The unix sockets' sysctls of a namespace (`unix_conf` of the netns entry).
pub const UNIX_CONF: [&str; 1] = ["max_dgram_qlen"];

/// IPv4 or IPv6 device sysctls, or the namespace's unix ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    V4,
    V6,
    Unix,
}

impl Family {
    pub fn names(self) -> &'static [&'static str] {
        match self {
            Family::V4 => &CONF4,
            Family::V6 => &CONF6,
            Family::Unix => &UNIX_CONF,
        }
    }

    /// The file of sysctl `name` of device `target` (`all`, `default` or a link; none for
    /// unix).
    pub fn path(self, target: &str, name: &str) -> String {
        match self {
            Family::V4 => format!("/proc/sys/net/ipv4/conf/{target}/{name}"),
            Family::V6 => format!("/proc/sys/net/ipv6/conf/{target}/{name}"),
            Family::Unix => format!("/proc/sys/net/unix/{name}"),
        }
    }
}

/// A string sysctl (the others are integers).
fn is_string(name: &str) -> bool {
    name == "stable_secret"
}

/// The entries of one device from `read(name)` (its file's text; None when it cannot be read:
/// an unset stable_secret reads EIO). Empty when nothing could be read (no IPv6, say).
pub fn entries(family: Family, read: impl Fn(&str) -> Option<String>) -> Vec<pb::SysctlEntry> {
    let out: Vec<pb::SysctlEntry> = family
        .names()
        .iter()
        .map(|name| {
            let text = read(name);
            let text = text.as_deref().map(str::trim);
            if is_string(name) {
                pb::SysctlEntry {
                    r#type: pb::SysctlType::CtlStr as i32,
                    iarg: None,
                    sarg: text.map(str::to_string),
                }
            } else {
                pb::SysctlEntry {
                    r#type: pb::SysctlType::Ctl32 as i32,
                    iarg: text.and_then(|t| t.parse::<i64>().ok()).map(|v| v as i32),
                    sarg: None,
                }
            }
        })
        .collect();
    if out.iter().all(|e| e.iarg.is_none() && e.sarg.is_none()) {
        Vec::new()
    } else {
        out
    }
}

/// What to write back, in order: (name, text) for each entry holding a value, with
/// `accept_redirects` last (forwarding, written before, resets it). Entries past the known
/// names (a newer writer's) are left out.
pub fn writes(family: Family, entries: &[pb::SysctlEntry]) -> Vec<(&'static str, String)> {
    let mut out: Vec<(&'static str, String)> = family
        .names()
        .iter()
        .zip(entries)
        .filter_map(|(name, e)| {
            let text = if e.r#type == pb::SysctlType::CtlStr as i32 {
                e.sarg.clone()?
            } else {
                e.iarg?.to_string()
            };
            Some((*name, text))
        })
        .collect();
    out.sort_by_key(|(name, _)| *name == "accept_redirects");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_follow_the_list_and_missing_values_stay_empty() {
        let e = entries(Family::V4, |n| match n {
            "forwarding" => Some("1\n".into()),
            "rp_filter" => Some("2".into()),
            _ => None,
        });
        assert_eq!(e.len(), CONF4.len());
        assert_eq!(e[12].iarg, Some(1), "forwarding is 13th");
        assert_eq!(e[21].iarg, Some(2), "rp_filter is 22nd");
        assert_eq!(e[0].iarg, None);
        assert!(e.iter().all(|x| x.r#type == pb::SysctlType::Ctl32 as i32));
        assert!(entries(Family::V6, |_| None).is_empty());
    }

    #[test]
    fn stable_secret_is_a_string_and_accept_redirects_is_written_last() {
        let e = entries(Family::V6, |n| match n {
            "stable_secret" => Some("::1".into()),
            "accept_redirects" | "forwarding" | "mtu" => Some("1".into()),
            "hop_limit" => Some("-1".into()),
            _ => None,
        });
        assert_eq!(e[35].sarg.as_deref(), Some("::1"));
        let w = writes(Family::V6, &e);
        let names: Vec<&str> = w.iter().map(|(n, _)| *n).collect();
        assert_eq!(
            names,
            [
                "forwarding",
                "hop_limit",
                "mtu",
                "stable_secret",
                "accept_redirects"
            ]
        );
        assert_eq!(w[1].1, "-1");
    }

    #[test]
    fn a_shorter_list_from_an_older_writer_is_read_by_position() {
        let e = entries(Family::V4, |_| Some("0".into()));
        let w = writes(Family::V4, &e[..3]);
        assert_eq!(
            w.iter().map(|(n, _)| *n).collect::<Vec<_>>(),
            ["accept_local", "accept_source_route", "accept_redirects"]
        );
    }
}
