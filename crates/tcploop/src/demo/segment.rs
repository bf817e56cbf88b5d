//! One captured TCP segment, decoded from an Ethernet frame with
//! `etherparse` (on `lo` the Ethernet header is 14 zero bytes but for its
//! EtherType).

use std::fmt;
use std::net::SocketAddr;
use std::time::SystemTime;

use etherparse::{NetSlice, SlicedPacket, TcpOptionElement, TransportSlice};

/// TCP control flags, as in the header's flags byte (RFC 9293, 3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(pub u8);

impl Flags {
    /// FIN: no more data from the sender.
    pub const FIN: u8 = 0x01;
    /// SYN: synchronize sequence numbers (opening).
    pub const SYN: u8 = 0x02;
    /// RST: reset the connection.
    pub const RST: u8 = 0x04;
    /// PSH: push.
    pub const PSH: u8 = 0x08;
    /// ACK: the acknowledgment field is significant.
    pub const ACK: u8 = 0x10;

    /// Whether all of `bits` are set.
    pub fn has(self, bits: u8) -> bool {
        self.0 & bits == bits
    }
    /// The set flags only (no others).
    pub fn is(self, bits: u8) -> bool {
        self.0 & (Self::FIN | Self::SYN | Self::RST | Self::PSH | Self::ACK) == bits
    }
    /// `SYN`, `SYN-ACK`, `ACK`, `PSH-ACK`, `RST-ACK`, `FIN-ACK`...
    pub fn name(self) -> String {
        let mut parts = vec![];
        for (bit, name) in [
            (Self::SYN, "SYN"),
            (Self::FIN, "FIN"),
            (Self::RST, "RST"),
            (Self::PSH, "PSH"),
            (Self::ACK, "ACK"),
        ] {
            if self.has(bit) {
                parts.push(name);
            }
        }
        if parts.is_empty() {
            "none".into()
        } else {
            parts.join("-")
        }
    }
}

impl fmt::Display for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// A TCP segment seen on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    /// Capture timestamp.
    pub ts: SystemTime,
    /// Source address and port.
    pub src: SocketAddr,
    /// Destination address and port.
    pub dst: SocketAddr,
    /// Control flags.
    pub flags: Flags,
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (meaningful with ACK).
    pub ack: u32,
    /// Receive window (unscaled).
    pub win: u16,
    /// Payload length in bytes.
    pub len: u32,
    /// The first bytes of the payload (at most [`PAYLOAD_KEPT`]).
    pub payload: Vec<u8>,
    /// The options, tcpdump style: `mss 65495,sackOK,TS val 1 ecr 0,nop,wscale 7`.
    pub options: String,
    /// The first SACK block, if any (a D-SACK on a loop's handshake ACK).
    pub sack: Option<(u32, u32)>,
}

/// How many payload bytes a [`Segment`] keeps for display.
pub const PAYLOAD_KEPT: usize = 32;

impl Segment {
    /// Whether this segment goes from an address and port to the same
    /// address and port: a loop's segment (`tcploop_guard::is_loop`).
    pub fn is_loop(&self) -> bool {
        tcploop_guard::is_loop(self.src, self.dst)
    }
}

/// Decodes an Ethernet frame holding IPv4 or IPv6 and TCP. `None` for
/// anything else (or a frame cut too short to hold the TCP header).
pub fn decode(frame: &[u8], ts: SystemTime) -> Option<Segment> {
    let p = SlicedPacket::from_ethernet(frame).ok()?;
    let (sip, dip) = match p.net? {
        NetSlice::Ipv4(v4) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
        ),
        NetSlice::Ipv6(v6) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
        ),
        NetSlice::Arp(_) => return None,
    };
    let TransportSlice::Tcp(tcp) = p.transport? else {
        return None;
    };
    let mut flags = 0u8;
    for (set, bit) in [
        (tcp.fin(), Flags::FIN),
        (tcp.syn(), Flags::SYN),
        (tcp.rst(), Flags::RST),
        (tcp.psh(), Flags::PSH),
        (tcp.ack(), Flags::ACK),
    ] {
        if set {
            flags |= bit;
        }
    }
    let mut opts = vec![];
    let mut sack = None;
    for o in tcp.options_iterator() {
        match o {
            Ok(TcpOptionElement::Noop) => opts.push("nop".to_string()),
            Ok(TcpOptionElement::MaximumSegmentSize(m)) => opts.push(format!("mss {m}")),
            Ok(TcpOptionElement::WindowScale(w)) => opts.push(format!("wscale {w}")),
            Ok(TcpOptionElement::SelectiveAcknowledgementPermitted) => opts.push("sackOK".into()),
            Ok(TcpOptionElement::SelectiveAcknowledgement(first, rest)) => {
                sack.get_or_insert(first);
                let mut s = format!("sack {}:{}", first.0, first.1);
                for (a, b) in rest.iter().flatten() {
                    s.push_str(&format!(" {a}:{b}"));
                }
                opts.push(s);
            }
            Ok(TcpOptionElement::Timestamp(v, e)) => opts.push(format!("TS val {v} ecr {e}")),
            Err(_) => {
                opts.push("bad-opt".into());
                break;
            }
        }
    }
    let payload = tcp.payload();
    Some(Segment {
        ts,
        src: SocketAddr::new(sip, tcp.source_port()),
        dst: SocketAddr::new(dip, tcp.destination_port()),
        flags: Flags(flags),
        seq: tcp.sequence_number(),
        ack: tcp.acknowledgment_number(),
        win: tcp.window_size(),
        len: payload.len() as u32,
        payload: payload[..payload.len().min(PAYLOAD_KEPT)].to_vec(),
        options: opts.join(","),
        sack,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// The SYN of a loop on 127.0.0.1:40004, as `tcploop demo` captured it
    /// on `lo` in a sandbox (Linux 6.18; `testdata/loop_v4.pcap`, frame 11).
    #[rustfmt::skip]
    const SYN_V4: [u8; 74] = [
        // Ethernet: lo has no addresses, all zeros; EtherType 0x0800 (IPv4)
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x08, 0x00,
        // IPv4: version 4, IHL 5, DSCP 0, total length 60
        0x45, 0x00, 0x00, 0x3c,
        // identification, flags DF, fragment offset 0
        0x9f, 0x3b, 0x40, 0x00,
        // TTL 64, protocol 6 (TCP), header checksum
        0x40, 0x06, 0x9d, 0x7e,
        // source 127.0.0.1, destination 127.0.0.1
        127, 0, 0, 1, 127, 0, 0, 1,
        // TCP: source port 40004 (0x9c44), destination port 40004
        0x9c, 0x44, 0x9c, 0x44,
        // sequence number 3987996664 (0xedb3_fff8)
        0xed, 0xb3, 0xff, 0xf8,
        // acknowledgment number 0
        0x00, 0x00, 0x00, 0x00,
        // data offset 10 words (40 bytes), flags SYN; window 65495
        0xa0, 0x02, 0xff, 0xd7,
        // checksum (left to the NIC on lo), urgent pointer
        0xfe, 0x30, 0x00, 0x00,
        // options: MSS 65495
        0x02, 0x04, 0xff, 0xd7,
        // SACK permitted; timestamps val 1223264438 ecr 0
        0x04, 0x02, 0x08, 0x0a, 0x48, 0xe9, 0x88, 0xb6, 0x00, 0x00, 0x00, 0x00,
        // NOP, window scale 10
        0x01, 0x03, 0x03, 0x0a,
    ];

    #[test]
    fn decodes_a_captured_syn() {
        let s = decode(&SYN_V4, UNIX_EPOCH).expect("a TCP segment");
        assert_eq!(s.src, "127.0.0.1:40004".parse().unwrap());
        assert_eq!(s.dst, s.src);
        assert!(s.is_loop());
        assert!(s.flags.is(Flags::SYN));
        assert_eq!(s.flags.name(), "SYN");
        assert_eq!(s.seq, 3_987_996_664);
        assert_eq!(s.win, 65495);
        assert_eq!(s.len, 0);
        assert_eq!(
            s.options,
            "mss 65495,sackOK,TS val 1223264438 ecr 0,nop,wscale 10"
        );
    }

    #[test]
    fn not_tcp_is_none() {
        let mut udp = SYN_V4;
        udp[14 + 9] = 17; // IP protocol: UDP
        assert!(decode(&udp, UNIX_EPOCH).is_none());
        let mut arp = SYN_V4;
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert!(decode(&arp, UNIX_EPOCH).is_none());
        assert!(decode(&SYN_V4[..40], UNIX_EPOCH).is_none(), "cut short");
    }

    #[test]
    fn flag_names() {
        assert_eq!(Flags(Flags::SYN | Flags::ACK).name(), "SYN-ACK");
        assert_eq!(Flags(Flags::RST | Flags::ACK).name(), "RST-ACK");
        assert_eq!(Flags(Flags::PSH | Flags::ACK).name(), "PSH-ACK");
        assert_eq!(Flags(Flags::FIN | Flags::ACK).name(), "FIN-ACK");
        assert!(Flags(Flags::SYN | Flags::ACK).is(Flags::SYN | Flags::ACK));
        assert!(!Flags(Flags::SYN | Flags::ACK).is(Flags::SYN));
    }
}
