//! `tcploop demo`: a loop reproduced in a sandbox and drawn from the packets
//! the kernel really exchanged.
//!
//! The pieces, from the wire up:
//! - [`phase`]: one phase, `run_phase(PhaseConfig) -> PhaseReport`: ports
//!   held, the prediction, the reproducer inside a capture, the loop's proof
//!   ([`crate::repro::prove`]: echo, stolen port, release), the story;
//! - [`session`]: captures every frame on `lo` (an `AF_PACKET` socket, see
//!   [`crate::sys::packet`]) on a thread of its own while the caller runs the
//!   reproducer, and holds ports with `bind()`;
//! - [`segment`]: decodes a frame into a TCP [`segment::Segment`];
//! - [`story`]: sorts the segments into refused tries (SYN, then RST) and the
//!   loop, and walks the loop through the TCP states: CLOSED, SYN-SENT,
//!   SYN-RECEIVED, ESTABLISHED, the Simultaneous Open path;
//! - [`ladder`] and [`svg`]: draw the loop as a ladder diagram, in text and
//!   as an SVG picture;
//! - [`pcap`]: writes the capture as a pcap file for tcpdump and Wireshark;
//! - [`show`]: the whole demo, `run(DemoConfig, on_step)`: the target
//!   checked, the sandbox entered, one phase or the parity lesson's two,
//!   the files written.
//!
//! Everything but [`session`], [`phase`] and [`show`] is pure and tested from fixtures.

pub mod ladder;
pub mod pcap;
pub mod phase;
pub mod segment;
pub mod session;
pub mod show;
pub mod story;
pub mod svg;

pub use show::{default_target, run, DemoConfig, DemoError, PhaseName, Step};

#[cfg(test)]
mod tests {
    //! The whole chain on real captures: `testdata/loop_v{4,6}.pcap` are
    //! what `tcploop demo --pcap` wrote on Linux 6.18 (five refused tries,
    //! then the loop on port 40004, its echo and its release).

    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use super::segment::{decode, Segment};
    use super::story::{tell, TcpState};
    use super::{ladder, pcap};

    /// Reads a little-endian microsecond pcap file (what [`pcap::write`] writes).
    fn read_pcap(bytes: &[u8]) -> Vec<(SystemTime, Vec<u8>)> {
        assert_eq!(bytes[..4], pcap::MAGIC_MICROS.to_le_bytes());
        assert_eq!(bytes[20..24], pcap::LINKTYPE_ETHERNET.to_le_bytes());
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().unwrap());
        let mut i = 24;
        let mut v = vec![];
        while i < bytes.len() {
            let ts = UNIX_EPOCH + Duration::new(u64::from(u32_at(i)), u32_at(i + 4) * 1000);
            let n = u32_at(i + 8) as usize;
            v.push((ts, bytes[i + 16..i + 16 + n].to_vec()));
            i += 16 + n;
        }
        v
    }

    fn segments(bytes: &[u8]) -> Vec<Segment> {
        read_pcap(bytes)
            .iter()
            .map(|(ts, f)| decode(f, *ts).expect("every frame is TCP"))
            .collect()
    }

    #[test]
    fn real_captures_tell_the_loop() {
        for (file, target) in [
            (
                &include_bytes!("testdata/loop_v4.pcap")[..],
                "127.0.0.1:40004",
            ),
            (&include_bytes!("testdata/loop_v6.pcap")[..], "[::1]:40004"),
        ] {
            let target = target.parse().unwrap();
            let segs = segments(file);
            let (story, _) = tell(&segs, target);
            assert_eq!(story.other, 0, "{target}");
            assert!(story.refused.iter().all(|r| r.answered && r.port != 40004));
            let l = story.looped.expect("a loop");
            assert_eq!(l.socket, target);
            assert!(l
                .steps
                .iter()
                .all(|s| s.seg.src == target && s.seg.dst == target));
            let hs: Vec<String> = l.handshake().iter().map(|s| s.seg.flags.name()).collect();
            assert_eq!(hs, ["SYN", "SYN-ACK", "ACK"], "{target}");
            assert!(l.same_isn());
            assert_eq!(l.handshake()[1].seg.ack, l.isn.wrapping_add(1));
            // the third segment is the D-SACK of the duplicate SYN (x:x+1)
            assert_eq!(
                l.handshake()[2].seg.sack,
                Some((l.isn, l.isn.wrapping_add(1)))
            );
            let path: Vec<TcpState> = l.transitions().map(|t| t.to).collect();
            assert_eq!(
                path,
                [
                    TcpState::SynSent,
                    TcpState::SynReceived,
                    TcpState::Established,
                    TcpState::Closed
                ]
            );
            let text = ladder::render(&l).join("\n");
            assert_eq!(
                text.matches('▶').count(),
                l.steps.len(),
                "one arrow a segment"
            );
        }
    }
}
