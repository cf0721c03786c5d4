//! Half-closed TCP connections: one side or both sent FIN and the socket is still open
//! (CLOSE_WAIT after the peer's FIN, FIN_WAIT1/FIN_WAIT2 after ours, LAST_ACK and CLOSING
//! with both). An HTTP client that shuts its side after the request, or a server's lingering
//! close, leaves such sockets all the time; CRIU keeps them (its "tcp_half_closed" feature),
//! and so do we, the same way and in the same images:
//!
//! - the dump reads them as established ones (repair mode); the sequence numbers it saves count
//!   a FIN (rcv_nxt counts the peer's, write_seq ours), the queues it saves hold data only;
//! - the restore rebuilds an established connection at the sequence numbers without the FINs,
//!   then puts each FIN back as the kernel would have seen it: ours with shutdown(SHUT_WR)
//!   (marked sent through the repair send queue when the peer had acknowledged it), the peer's
//!   as a FIN segment injected into our own stack through a raw socket, and the peer's
//!   acknowledgement of our FIN as an ACK segment. The segments carry CRIU's mark (0xC114),
//!   which the network lock lets through.
//!
//! A connection closed both ways whose socket is still open (TCP_CLOSE, unhashed, its peer's
//! address still answering SO_PEERNAME) is rebuilt the same way, through every step.
//!
//! This file is the pure part: which steps a state needs, at which sequence numbers, and the
//! bytes of an injected segment (IPv4 or IPv6 with its TCP header and checksums).

use std::net::IpAddr;

pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_SENT: u8 = 2;
pub const TCP_FIN_WAIT1: u8 = 4;
pub const TCP_FIN_WAIT2: u8 = 5;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_CLOSE_WAIT: u8 = 8;
pub const TCP_LAST_ACK: u8 = 9;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_CLOSING: u8 = 11;

/// The mark CRIU gives its injected segments and both network locks let through.
pub use stasis_netns::nftlock::INJECTED_MARK;

/// A state whose connection the dump reads through repair mode and the restore rebuilds:
/// established, half closed, or connecting (SYN sent, not answered yet).
pub fn is_connection(state: u32) -> bool {
    matches!(
        u8::try_from(state),
        Ok(TCP_ESTABLISHED
            | TCP_SYN_SENT
            | TCP_FIN_WAIT1
            | TCP_FIN_WAIT2
            | TCP_CLOSE_WAIT
            | TCP_LAST_ACK
            | TCP_CLOSING)
    )
}

/// Where a connection's FINs stand in a given state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Fins {
    /// We sent FIN: write_seq counts it.
    pub ours: bool,
    /// ... and the peer acknowledged it (FIN_WAIT2).
    pub ours_acked: bool,
    /// The peer's FIN came in: rcv_nxt counts it.
    pub peers: bool,
    /// Ours went after the peer's (LAST_ACK): shut down after the peer's FIN is put back, or
    /// the state would be CLOSING.
    pub ours_last: bool,
}

/// The FINs of `state` (none for an established connection or a state we do not rebuild).
pub fn fins(state: u8) -> Fins {
    let (ours, ours_acked, peers, ours_last) = match state {
        TCP_FIN_WAIT1 => (true, false, false, false),
        TCP_FIN_WAIT2 => (true, true, false, false),
        TCP_CLOSE_WAIT => (false, false, true, false),
        TCP_LAST_ACK => (true, false, true, true),
        TCP_CLOSING => (true, false, true, false),
        // Closed after both FINs: rebuilt through LAST_ACK, whose FIN is then acknowledged.
        TCP_CLOSE => (true, true, true, true),
        _ => (false, false, false, false),
    };
    Fins {
        ours,
        ours_acked,
        peers,
        ours_last,
    }
}

/// One step of a restore once the queues and the window are in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// shutdown(SHUT_WR): queues our FIN. `acked`: through the repair send queue, so the FIN
    /// counts as sent and the peer's ACK of it is accepted.
    ShutWrite { acked: bool },
    /// A segment from the peer to us: FIN+ACK when `fin`, else a bare ACK.
    Inject { fin: bool, seq: u32, ack: u32 },
}

/// How a connection in `state` is rebuilt from its saved sequence numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// rcv_nxt without the peer's FIN: where the receive queue ends.
    pub rcv_nxt: u32,
    /// write_seq without our FIN (or SYN): where the send queue ends. For a connection in
    /// SYN_SENT, the initial sequence number its SYN is sent again with.
    pub write_seq: u32,
    /// How much the saved rcv_wup counts the peer's FIN (taken off it, added to rcv_wnd, so
    /// the window's right edge stays): the kernel refuses a rcv_wup past rcv_nxt.
    pub wup_back: u32,
    pub steps: Vec<Step>,
}

/// The plan for a connection dumped in `state` with the saved `inq_seq` (rcv_nxt), `outq_seq`
/// (write_seq) and `outq_len` (bytes sent and not acknowledged, plus those not sent yet).
pub fn plan(state: u8, inq_seq: u32, outq_seq: u32, outq_len: u32) -> Plan {
    let f = fins(state);
    let rcv_nxt = inq_seq.wrapping_sub(f.peers as u32);
    let syn = state == TCP_SYN_SENT;
    let write_seq = outq_seq.wrapping_sub(f.ours as u32 + syn as u32);
    let snd_una = write_seq.wrapping_sub(outq_len);
    let mut steps = Vec::new();
    if f.ours && !f.ours_last {
        steps.push(Step::ShutWrite {
            acked: f.ours_acked,
        });
    }
    if f.peers {
        steps.push(Step::Inject {
            fin: true,
            seq: rcv_nxt,
            ack: snd_una,
        });
    }
    if f.ours && f.ours_last {
        steps.push(Step::ShutWrite {
            acked: f.ours_acked,
        });
    }
    if f.ours_acked {
        // Acknowledges everything, our FIN included: a FIN is acknowledged after all data.
        steps.push(Step::Inject {
            fin: false,
            seq: rcv_nxt.wrapping_add(f.peers as u32),
            ack: write_seq.wrapping_add(1),
        });
    }
    Plan {
        rcv_nxt,
        write_seq,
        wup_back: f.peers as u32,
        steps,
    }
}

/// The addresses and ports of an injected segment, as the peer sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Segment {
    pub from: IpAddr,
    pub from_port: u16,
    pub to: IpAddr,
    pub to_port: u16,
    pub seq: u32,
    pub ack: u32,
    pub fin: bool,
    /// The window field, scaled as the peer scales it.
    pub window: u16,
}

const TCP_HEADER: usize = 20;
const TH_FIN: u8 = 0x01;
const TH_ACK: u8 = 0x10;

/// The one's complement sum of `data` as 16-bit big-endian words, folded.
fn ones_sum(mut acc: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u32::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u32::from(*last) << 8;
    }
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc
}

fn checksum(parts: &[&[u8]]) -> u16 {
    !(parts.iter().fold(0, |acc, p| ones_sum(acc, p)) as u16)
}

/// An IPv4-mapped IPv6 address as the IPv4 one (a v4 connection on a v6 socket goes as v4).
pub fn unmapped(a: IpAddr) -> IpAddr {
    match a {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(a, IpAddr::V4),
        v4 => v4,
    }
}

/// The bytes of `s` as an IP packet for a raw socket with the IP header included. None if the
/// two addresses are not of one family.
pub fn packet(s: &Segment) -> Option<Vec<u8>> {
    let mut tcp = [0u8; TCP_HEADER];
    tcp[0..2].copy_from_slice(&s.from_port.to_be_bytes());
    tcp[2..4].copy_from_slice(&s.to_port.to_be_bytes());
    tcp[4..8].copy_from_slice(&s.seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&s.ack.to_be_bytes());
    tcp[12] = ((TCP_HEADER / 4) as u8) << 4;
    tcp[13] = TH_ACK | if s.fin { TH_FIN } else { 0 };
    tcp[14..16].copy_from_slice(&s.window.to_be_bytes());
    let len = (TCP_HEADER as u16).to_be_bytes();
    match (unmapped(s.from), unmapped(s.to)) {
        (IpAddr::V4(from), IpAddr::V4(to)) => {
            let pseudo = [&from.octets()[..], &to.octets(), &[0, 6], &len];
            let sum = checksum(&[pseudo.concat().as_slice(), &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            let mut ip = [0u8; 20];
            ip[0] = 0x45;
            ip[2..4].copy_from_slice(&((20 + TCP_HEADER) as u16).to_be_bytes());
            ip[8] = 64; // TTL
            ip[9] = 6; // TCP
            ip[12..16].copy_from_slice(&from.octets());
            ip[16..20].copy_from_slice(&to.octets());
            let sum = checksum(&[&ip]);
            ip[10..12].copy_from_slice(&sum.to_be_bytes());
            Some([&ip[..], &tcp].concat())
        }
        (IpAddr::V6(from), IpAddr::V6(to)) => {
            let upper = (TCP_HEADER as u32).to_be_bytes();
            let pseudo = [&from.octets()[..], &to.octets(), &upper, &[0, 0, 0, 6]];
            let sum = checksum(&[pseudo.concat().as_slice(), &tcp]);
            tcp[16..18].copy_from_slice(&sum.to_be_bytes());
            let mut ip = [0u8; 40];
            ip[0] = 0x60;
            ip[4..6].copy_from_slice(&len);
            ip[6] = 6; // next header: TCP
            ip[7] = 64; // hop limit
            ip[8..24].copy_from_slice(&from.octets());
            ip[24..40].copy_from_slice(&to.octets());
            Some([&ip[..], &tcp].concat())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn connection_states_are_established_and_the_half_closed_ones() {
        for s in [1, 2, 4, 5, 8, 9, 11] {
            assert!(is_connection(s), "{s}");
        }
        for s in [0, 3, 6, 7, 10, 12, 300] {
            assert!(!is_connection(s), "{s}");
        }
    }

    #[test]
    fn established_needs_no_step() {
        let p = plan(TCP_ESTABLISHED, 1000, 2000, 10);
        assert_eq!((p.rcv_nxt, p.write_seq, p.wup_back), (1000, 2000, 0));
        assert!(p.steps.is_empty());
    }

    #[test]
    fn close_wait_gets_the_peers_fin_at_the_end_of_the_received_data() {
        let p = plan(TCP_CLOSE_WAIT, 1001, 2000, 10);
        assert_eq!((p.rcv_nxt, p.write_seq, p.wup_back), (1000, 2000, 1));
        assert_eq!(
            p.steps,
            vec![Step::Inject {
                fin: true,
                seq: 1000,
                ack: 1990
            }]
        );
    }

    #[test]
    fn fin_wait2_shuts_down_as_sent_then_gets_the_ack_of_our_fin() {
        let p = plan(TCP_FIN_WAIT2, 1000, 2001, 0);
        assert_eq!((p.rcv_nxt, p.write_seq, p.wup_back), (1000, 2000, 0));
        assert_eq!(
            p.steps,
            vec![
                Step::ShutWrite { acked: true },
                Step::Inject {
                    fin: false,
                    seq: 1000,
                    ack: 2001
                }
            ]
        );
    }

    #[test]
    fn syn_sent_starts_again_from_its_initial_sequence_number() {
        let p = plan(TCP_SYN_SENT, 0, 5001, 0);
        assert_eq!((p.write_seq, p.wup_back), (5000, 0));
        assert!(p.steps.is_empty());
    }

    #[test]
    fn fin_wait1_only_shuts_down() {
        let p = plan(TCP_FIN_WAIT1, 1000, 2001, 5);
        assert_eq!(p.write_seq, 2000);
        assert_eq!(p.steps, vec![Step::ShutWrite { acked: false }]);
    }

    #[test]
    fn last_ack_takes_the_peers_fin_before_ours_and_closing_after() {
        let last_ack = plan(TCP_LAST_ACK, 1001, 2001, 0);
        assert_eq!(
            last_ack.steps,
            vec![
                Step::Inject {
                    fin: true,
                    seq: 1000,
                    ack: 2000
                },
                Step::ShutWrite { acked: false }
            ]
        );
        let closing = plan(TCP_CLOSING, 1001, 2001, 0);
        assert_eq!(
            closing.steps,
            vec![
                Step::ShutWrite { acked: false },
                Step::Inject {
                    fin: true,
                    seq: 1000,
                    ack: 2000
                }
            ]
        );
    }

    #[test]
    fn closed_goes_through_last_ack_to_the_ack_of_our_fin() {
        let p = plan(TCP_CLOSE, 1001, 2001, 0);
        assert_eq!((p.rcv_nxt, p.write_seq, p.wup_back), (1000, 2000, 1));
        assert_eq!(
            p.steps,
            vec![
                Step::Inject {
                    fin: true,
                    seq: 1000,
                    ack: 2000
                },
                Step::ShutWrite { acked: true },
                Step::Inject {
                    fin: false,
                    seq: 1001,
                    ack: 2001
                }
            ]
        );
    }

    #[test]
    fn sequence_numbers_wrap() {
        let p = plan(TCP_CLOSE_WAIT, 0, 0, 1);
        assert_eq!(p.rcv_nxt, u32::MAX);
        assert_eq!(
            p.steps,
            vec![Step::Inject {
                fin: true,
                seq: u32::MAX,
                ack: u32::MAX
            }]
        );
    }

    fn seg(from: IpAddr, to: IpAddr) -> Segment {
        Segment {
            from,
            from_port: 40000,
            to,
            to_port: 80,
            seq: 0x01020304,
            ack: 0x0a0b0c0d,
            fin: true,
            window: 512,
        }
    }

    /// A header whose checksum field is filled sums to 0xffff (RFC 1071).
    fn verifies(parts: &[&[u8]]) -> bool {
        parts.iter().fold(0, |acc, p| ones_sum(acc, p)) == 0xffff
    }

    #[test]
    fn ipv4_segment_has_valid_checksums_and_fields() {
        let from = Ipv4Addr::new(10, 0, 0, 1);
        let to = Ipv4Addr::new(10, 0, 0, 2);
        let p = packet(&seg(from.into(), to.into())).unwrap();
        assert_eq!(p.len(), 40);
        assert!(verifies(&[&p[..20]]), "IP header checksum");
        let pseudo = [&from.octets()[..], &to.octets(), &[0, 6, 0, 20]].concat();
        assert!(verifies(&[&pseudo, &p[20..]]), "TCP checksum");
        assert_eq!(&p[20..24], &[0x9c, 0x40, 0, 80]);
        assert_eq!(&p[24..32], &[1, 2, 3, 4, 0xa, 0xb, 0xc, 0xd]);
        assert_eq!(p[32], 0x50);
        assert_eq!(p[33], TH_ACK | TH_FIN);
        assert_eq!(&p[34..36], &[2, 0]);
    }

    #[test]
    fn ipv6_segment_has_a_valid_tcp_checksum() {
        let from: Ipv6Addr = "fd00::1".parse().unwrap();
        let to: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut s = seg(from.into(), to.into());
        s.fin = false;
        let p = packet(&s).unwrap();
        assert_eq!(p.len(), 60);
        assert_eq!(p[0] >> 4, 6);
        assert_eq!(&p[4..8], &[0, 20, 6, 64]);
        let pseudo = [&from.octets()[..], &to.octets(), &[0, 0, 0, 20, 0, 0, 0, 6]].concat();
        assert!(verifies(&[&pseudo, &p[40..]]));
        assert_eq!(p[53], TH_ACK);
    }

    #[test]
    fn a_v4_connection_on_a_v6_socket_goes_as_ipv4() {
        let from: Ipv6Addr = "::ffff:127.0.0.1".parse().unwrap();
        let to: Ipv6Addr = "::ffff:127.0.0.2".parse().unwrap();
        let p = packet(&seg(from.into(), to.into())).unwrap();
        assert_eq!(p.len(), 40);
        assert_eq!(p[0], 0x45);
        assert_eq!(&p[12..20], &[127, 0, 0, 1, 127, 0, 0, 2]);
        let mixed = seg(
            Ipv4Addr::LOCALHOST.into(),
            "fd00::2".parse::<Ipv6Addr>().unwrap().into(),
        );
        assert_eq!(packet(&mixed), None);
    }
}
