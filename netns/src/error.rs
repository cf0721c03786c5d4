//! Errors of dumping and restoring a namespace's network.

use std::io;

use crate::ipdump::IpDumpError;
use crate::rtnl::RtnlError;

/// A dump or restore of a namespace's network failed. Each names the link, address or route.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A macvlan's lower device is outside the namespace: the caller names it.
    #[error(
        "macvlan {link} needs its lower device: restore with --external macvlan[{link}]:HOSTDEV"
    )]
    NoMacvlanParent { link: String },
    /// No route netlink socket could be had in `ns` (entering it needs `CAP_SYS_ADMIN`; a file
    /// that is no network namespace is `EINVAL`).
    #[error("cannot open a route netlink socket in {ns}")]
    Open {
        ns: &'static str,
        #[source]
        source: io::Error,
    },
    /// The kernel refused a request, or the socket failed. `op` is what was asked ("create",
    /// "dump"...), `object` what of ("link eth0 (ifindex 3)").
    #[error("{op} {object}")]
    Netlink {
        op: &'static str,
        object: String,
        #[source]
        source: RtnlError,
    },
    /// A link of a kind stasis cannot recreate.
    #[error("link {link} (ifindex {ifindex}) is of kind {kind}, which is not supported (only loopback, veth, bridge, macvlan and tun/tap are)")]
    UnsupportedLink {
        link: String,
        ifindex: u32,
        kind: String,
    },
    /// Making a tun/tap device through /dev/net/tun failed.
    #[error("making tun device {link}")]
    Tun {
        link: String,
        #[source]
        source: std::io::Error,
    },
    /// An address or route uses something stasis cannot recreate (multipath, encapsulation...).
    #[error("{object}: {what} is not supported")]
    Unsupported { object: String, what: String },
    /// A netlink message (from the kernel or an image) that does not parse.
    #[error("{what}: malformed netlink message: {reason}")]
    Malformed { what: String, reason: String },
    /// An address or route names an ifindex that no link of the state has.
    #[error("{object} is on ifindex {ifindex}, which is no link of the namespace")]
    NoSuchLink { object: String, ifindex: u32 },
    /// A link looked up by name is not there.
    #[error("no link named {name} in {place}")]
    NoLinkNamed { name: String, place: &'static str },
    /// Two veths whose peers are each other's are not both in the state, or a veth names
    /// itself.
    #[error(
        "link {link}: its veth peer (ifindex {peer}) is in the same namespace but not in the dump"
    )]
    LostPeer { link: String, peer: u32 },
    #[error(transparent)]
    Image(#[from] IpDumpError),
}

impl NetnsError {
    /// The kernel's errno, when the kernel refused a request or a socket call failed.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetnsError::Open { source, .. } => source.raw_os_error(),
            NetnsError::Netlink { source, .. } => source.errno(),
            _ => None,
        }
    }
}
