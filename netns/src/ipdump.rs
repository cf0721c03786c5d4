//! The raw images CRIU keeps for addresses and routes: `ifaddr-<id>.img` is what `ip addr save`
//! writes, `route-<id>.img` and `route6-<id>.img` what `ip -4 route save` / `ip -6 route save`
//! write. Each is a 4-byte magic (iproute2's `ipadd_dump_magic` / `route_dump_magic`, written by
//! `ip` as a host-order `__u32`) followed by the netlink messages as the kernel sent them, each
//! `nlmsg_len` bytes long. `ip addr restore` / `ip route restore` read the header, then the
//! payload rounded up to 4 bytes, so a message is padded to 4 here (kernel messages already are).
//!
//! Pure byte handling; no socket.

/// First word of `ifaddr-<id>.img` (iproute2 `ip/ipaddress.c`, `ipadd_dump_magic`).
pub const IFADDR_MAGIC: u32 = 0x4736_1222;
/// First word of `route-<id>.img` and `route6-<id>.img` (iproute2 `ip/iproute.c`,
/// `route_dump_magic`).
pub const ROUTE_MAGIC: u32 = 0x4531_1224;

/// First word of `rule-<id>.img` (iproute2 `ip/iprule.c`, `rule_dump_magic`).
pub const RULE_MAGIC: u32 = 0x7170_6986;

/// First word of `neigh-<id>.img`, stasis's own file of permanent neighbour entries (iproute2
/// has no `ip neigh save`, CRIU keeps none): "STNG".
pub const NEIGH_MAGIC: u32 = 0x5354_4e47;

/// Length of `struct nlmsghdr`.
pub const NLMSG_HDRLEN: usize = 16;

/// Largest message accepted from an image: `ip`'s restore reads into a 32 KiB buffer, and no
/// address or route message comes near it.
pub const MAX_MESSAGE: usize = 32 * 1024;

/// A raw image could not be read.
#[derive(Debug, thiserror::Error)]
pub enum IpDumpError {
    #[error("{image}: too short for its magic ({len} bytes)")]
    NoMagic { image: &'static str, len: usize },
    #[error("{image}: bad magic {found:#010x} (expected {expected:#010x})")]
    BadMagic {
        image: &'static str,
        expected: u32,
        found: u32,
    },
    /// The message at `offset` is cut short or claims an impossible length.
    #[error(
        "{image}: malformed netlink message at byte {offset}: length {len}, {left} bytes left"
    )]
    BadMessage {
        image: &'static str,
        offset: usize,
        len: usize,
        left: usize,
    },
}

/// Which raw image: names the file in errors and picks the magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IpImage {
    Ifaddr,
    Route,
    Route6,
    Rule,
    Neigh,
}

impl IpImage {
    pub fn magic(self) -> u32 {
        match self {
            IpImage::Ifaddr => IFADDR_MAGIC,
            IpImage::Route | IpImage::Route6 => ROUTE_MAGIC,
            IpImage::Rule => RULE_MAGIC,
            IpImage::Neigh => NEIGH_MAGIC,
        }
    }
    fn name(self) -> &'static str {
        match self {
            IpImage::Ifaddr => "ifaddr image",
            IpImage::Route => "route image",
            IpImage::Route6 => "route6 image",
            IpImage::Rule => "rule image",
            IpImage::Neigh => "neigh image",
        }
    }
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// The image bytes: the magic, then each message (each a whole netlink message, header
/// included), padded to 4 bytes.
pub fn encode<'a>(image: IpImage, messages: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = image.magic().to_ne_bytes().to_vec();
    for m in messages {
        out.extend_from_slice(m);
        out.resize(align4(out.len()), 0);
    }
    out
}

/// The messages of an image, each exactly `nlmsg_len` bytes (header included), in order.
pub fn decode(image: IpImage, bytes: &[u8]) -> Result<Vec<&[u8]>, IpDumpError> {
    let name = image.name();
    let Some(head) = bytes.get(..4) else {
        return Err(IpDumpError::NoMagic {
            image: name,
            len: bytes.len(),
        });
    };
    let found = u32::from_ne_bytes([head[0], head[1], head[2], head[3]]);
    if found != image.magic() {
        return Err(IpDumpError::BadMagic {
            image: name,
            expected: image.magic(),
            found,
        });
    }
    let mut out = Vec::new();
    let mut off = 4;
    while off < bytes.len() {
        let left = bytes.len() - off;
        let len = match bytes.get(off..off + 4) {
            Some(b) => u32::from_ne_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => 0,
        };
        if len < NLMSG_HDRLEN || len > left || len > MAX_MESSAGE {
            return Err(IpDumpError::BadMessage {
                image: name,
                offset: off,
                len,
                left,
            });
        }
        out.push(&bytes[off..off + len]);
        // The last message may come unpadded.
        off = (off + align4(len)).min(bytes.len());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut m = ((NLMSG_HDRLEN + payload.len()) as u32)
            .to_ne_bytes()
            .to_vec();
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&[0; 10]);
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn round_trip_keeps_messages_and_pads() {
        let a = msg(20, &[1, 2, 3, 4, 5, 6, 7, 8]);
        let b = msg(24, &[9, 9, 9]); // unaligned: padded in the image
        let img = encode(IpImage::Route, [a.as_slice(), b.as_slice()]);
        assert_eq!(&img[..4], &ROUTE_MAGIC.to_ne_bytes());
        assert_eq!(img.len(), 4 + a.len() + 20);
        let back = decode(IpImage::Route, &img).unwrap();
        assert_eq!(back, vec![a.as_slice(), b.as_slice()]);
        // Unpadded last message (as `ip` writes a message whose length is not aligned).
        let short = &img[..img.len() - 1];
        assert_eq!(decode(IpImage::Route, short).unwrap().len(), 2);
    }

    #[test]
    fn empty_image_is_just_the_magic() {
        let img = encode(IpImage::Ifaddr, std::iter::empty());
        assert_eq!(img, IFADDR_MAGIC.to_ne_bytes());
        assert!(decode(IpImage::Ifaddr, &img).unwrap().is_empty());
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(matches!(
            decode(IpImage::Ifaddr, &[1, 2]),
            Err(IpDumpError::NoMagic { len: 2, .. })
        ));
        let route = encode(IpImage::Route, std::iter::empty());
        assert!(matches!(
            decode(IpImage::Ifaddr, &route),
            Err(IpDumpError::BadMagic { found, .. }) if found == ROUTE_MAGIC
        ));
        let m = msg(20, &[0; 8]);
        let img = encode(IpImage::Route6, [m.as_slice()]);
        for cut in 5..img.len() {
            assert!(
                decode(IpImage::Route6, &img[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        let mut tiny = img.clone();
        tiny[4..8].copy_from_slice(&8u32.to_ne_bytes());
        assert!(matches!(
            decode(IpImage::Route6, &tiny),
            Err(IpDumpError::BadMessage {
                offset: 4,
                len: 8,
                ..
            })
        ));
        let mut huge = img;
        huge[4..8].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert!(decode(IpImage::Route6, &huge).is_err());
    }
}
