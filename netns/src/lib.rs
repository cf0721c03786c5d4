//! Network namespaces for stasis: a namespace's links, addresses and routes dumped and restored
//! over route netlink (netlink-packet-route messages on a blocking netlink-sys socket; no `ip`
//! binary is run), their CRIU images, and the TCP network lock as nftables rules set over
//! netlink (no `nft` or `iptables` binary either).
//!
//! - [`dump`] reads a namespace, [`restore`] rebuilds it in a fresh one; both take the
//!   namespace as an nsfs file descriptor and leave the caller in its own namespace.
//! - [`NetState::to_images`] / [`NetState::from_images`]: CRIU's `netdev-<id>.img` entries (as
//!   [`NetDevice`], for the engine to frame), `ifaddr-<id>.img`, `route-<id>.img` and
//!   `route6-<id>.img` (raw `ip ... save` output, [`ipdump`]).
//!
//! Everything but the socket code (`rtnl`, `nsenter`, `ops`, `tun`'s ioctls, and the sending
//! part of [`nftlock`]) is pure and tested without privileges; `netns/tests/` has the
//! privileged tests.

mod error;
pub mod ipdump;
pub mod iptlock;
pub mod iptlock_legacy;
mod model;
pub mod nftables;
pub mod nftlock;
mod nsenter;
pub use nsenter::in_netns;
mod ops;
mod rtnl;
pub mod tun;
pub mod wire;
pub mod xtables;

pub use error::NetnsError;
pub use model::{
    eui64_link_local, nd_type, Addr, Family, Link, LinkKind, NetDevice, NetImages, NetState, Route,
    Rule, VethPair, VethPairError, IFA_PROTO_KERNEL_LL, IFA_PROTO_KERNEL_LO, IFF_UP, RTPROT_KERNEL,
    RT_TABLE_MAIN, SETTABLE_FLAGS,
};
pub use ops::{dump, restore, Restored};
pub use rtnl::RtnlError;
