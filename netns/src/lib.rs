//! Network namespaces and network state for stasis. Today: the TCP network lock, as nftables
//! rules set over netlink (no `nft` or `iptables` binary is run).

pub mod nftlock;
