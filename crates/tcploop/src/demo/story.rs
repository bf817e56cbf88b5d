//! From captured segments to what happened: the refused tries, then the
//! loop, segment by segment, with the TCP state each one moves the socket
//! to.
//!
//! A refused try is a SYN from some source port to the target, answered by
//! an RST from the target (nothing listens). The loop is the segments whose
//! source equals their destination (`tcploop_guard::is_loop`): one socket is
//! both ends, so each segment is sent and received by the same socket, and
//! the handshake is the Simultaneous Open of the TCP state diagram (RFC 9293,
//! 3.5, figure 8) folded onto itself:
//!
//! ```text
//! connect()        CLOSED       -> SYN-SENT      sends SYN, seq = x
//! SYN arrives      SYN-SENT     -> SYN-RECEIVED  its own SYN: answers SYN-ACK, seq = x, ack = x+1
//! SYN-ACK arrives  SYN-RECEIVED -> ESTABLISHED   its own SYN-ACK: answers ACK
//! ```
//!
//! The SYN and the SYN-ACK carry the same initial sequence number x, and
//! there are exactly three handshake segments (two distinct sockets opening
//! simultaneously would exchange two SYNs and two SYN-ACKs).

use std::fmt;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::segment::{Flags, Segment};

/// A TCP connection state (RFC 9293, 3.3.2), as the diagram names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpState {
    /// No connection.
    Closed,
    /// SYN sent, waiting for a matching SYN or SYN-ACK.
    SynSent,
    /// SYN received (here: its own), SYN-ACK sent.
    SynReceived,
    /// Open.
    Established,
    /// FIN sent.
    FinWait1,
    /// FIN sent and a FIN received (here: its own) before its ACK.
    Closing,
    /// Waiting out old segments after a close.
    TimeWait,
}

impl TcpState {
    /// The name used in the TCP state diagram: `SYN-SENT`, `ESTABLISHED`...
    pub fn as_str(self) -> &'static str {
        match self {
            TcpState::Closed => "CLOSED",
            TcpState::SynSent => "SYN-SENT",
            TcpState::SynReceived => "SYN-RECEIVED",
            TcpState::Established => "ESTABLISHED",
            TcpState::FinWait1 => "FIN-WAIT-1",
            TcpState::Closing => "CLOSING",
            TcpState::TimeWait => "TIME-WAIT",
        }
    }
}

impl fmt::Display for TcpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One state change of the looped socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// When (the timestamp of the segment that caused it).
    pub ts: SystemTime,
    /// Before.
    pub from: TcpState,
    /// After.
    pub to: TcpState,
    /// What caused it, in a few words.
    pub why: &'static str,
}

/// One segment of the loop, with the socket's state when it sent it and
/// after it received it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The segment.
    pub seg: Segment,
    /// The socket's state as it sent the segment.
    pub sent_in: TcpState,
    /// The socket's state once the segment arrived back at it.
    pub then: TcpState,
    /// The state changes this segment caused (sending, then arriving).
    pub transitions: Vec<Transition>,
}

/// The loop: every segment from the socket to itself, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loop {
    /// The one socket's address (both ends).
    pub socket: SocketAddr,
    /// The segments, in capture order.
    pub steps: Vec<Step>,
    /// The initial sequence number: the SYN's `seq`.
    pub isn: u32,
}

impl Loop {
    /// When the loop's first segment (its SYN) was seen.
    pub fn start(&self) -> SystemTime {
        self.steps
            .first()
            .map_or(SystemTime::UNIX_EPOCH, |s| s.seg.ts)
    }

    /// The handshake segments: those up to the first pure ACK after the
    /// SYN-ACK (SYN, SYN-ACK, ACK for a loop).
    pub fn handshake(&self) -> &[Step] {
        let end = self
            .steps
            .iter()
            .position(|s| s.sent_in == TcpState::Established)
            .map_or(self.steps.len(), |i| i + 1);
        &self.steps[..end]
    }

    /// Whether the SYN and the SYN-ACK carry the same initial sequence
    /// number (true for a loop: the socket answers its own SYN with its own
    /// sequence number).
    pub fn same_isn(&self) -> bool {
        let syn = self.steps.iter().find(|s| s.seg.flags.is(Flags::SYN));
        let synack = self
            .steps
            .iter()
            .find(|s| s.seg.flags.is(Flags::SYN | Flags::ACK));
        matches!((syn, synack), (Some(a), Some(b)) if a.seg.seq == b.seg.seq)
    }

    /// Every state change, in order.
    pub fn transitions(&self) -> impl Iterator<Item = &Transition> {
        self.steps.iter().flat_map(|s| &s.transitions)
    }

    /// The socket's state after the last captured segment.
    pub fn final_state(&self) -> TcpState {
        self.steps.last().map_or(TcpState::Closed, |s| s.then)
    }
}

/// A try that was refused: a SYN to the target, answered by RST.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    /// The source port the kernel picked for this try.
    pub port: u16,
    /// When the SYN was seen.
    pub ts: SystemTime,
    /// Whether its RST was captured too.
    pub answered: bool,
}

/// What the capture shows, sorted out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Story {
    /// The refused tries, in order.
    pub refused: Vec<Refused>,
    /// The loop, if one happened.
    pub looped: Option<Loop>,
    /// Segments that are neither (none in a sandbox of our own).
    pub other: usize,
}

/// What role a segment plays in the story.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A SYN or RST of a refused try (the try's number, from 1).
    Refused(usize),
    /// A segment of the loop.
    Loop,
    /// Something else.
    Other,
}

impl Role {
    /// `refused`, `loop` or `other`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Refused(_) => "refused",
            Role::Loop => "loop",
            Role::Other => "other",
        }
    }
}

/// Sorts the segments of a run against `target` into refused tries and the
/// loop; also returns each segment's role, in input order.
pub fn tell(segments: &[Segment], target: SocketAddr) -> (Story, Vec<Role>) {
    let mut story = Story::default();
    let mut roles = Vec::with_capacity(segments.len());
    let mut steps: Vec<Step> = vec![];
    let mut state = TcpState::Closed;
    for seg in segments {
        let to_target = seg.dst == target && seg.src.ip() == target.ip();
        let from_target = seg.src == target && seg.dst.ip() == target.ip();
        if seg.is_loop() && seg.src == target {
            let step = step(seg, &mut state);
            steps.push(step);
            roles.push(Role::Loop);
        } else if to_target && seg.flags.is(Flags::SYN) {
            story.refused.push(Refused {
                port: seg.src.port(),
                ts: seg.ts,
                answered: false,
            });
            roles.push(Role::Refused(story.refused.len()));
        } else if from_target && seg.flags.has(Flags::RST) {
            // the RST answers the latest unanswered SYN from that port
            let port = seg.dst.port();
            match story
                .refused
                .iter_mut()
                .enumerate()
                .rev()
                .find(|(_, r)| r.port == port && !r.answered)
            {
                Some((i, r)) => {
                    r.answered = true;
                    roles.push(Role::Refused(i + 1));
                }
                None => {
                    story.other += 1;
                    roles.push(Role::Other);
                }
            }
        } else {
            story.other += 1;
            roles.push(Role::Other);
        }
    }
    if let Some(first) = steps.first() {
        story.looped = Some(Loop {
            socket: first.seg.src,
            isn: first.seg.seq,
            steps,
        });
    }
    (story, roles)
}

/// Applies one looped segment: the socket sends it in `state`, then
/// receives it.
fn step(seg: &Segment, state: &mut TcpState) -> Step {
    use TcpState::*;
    let sent_in_before = *state;
    let mut transitions = vec![];
    let mut go = |from: &mut TcpState, to: TcpState, why: &'static str| {
        if *from != to {
            transitions.push(Transition {
                ts: seg.ts,
                from: *from,
                to,
                why,
            });
            *from = to;
        }
    };
    let f = seg.flags;
    // Sending.
    if f.is(Flags::SYN) && *state == Closed {
        go(state, SynSent, "connect() sends a SYN");
    } else if f.has(Flags::RST) {
        go(state, Closed, "close() with SO_LINGER 0 sends RST");
    } else if f.has(Flags::FIN) && *state == Established {
        go(state, FinWait1, "close() sends FIN");
    }
    let sent_in = if f.has(Flags::RST) {
        sent_in_before
    } else {
        *state
    };
    // Arriving back at the same socket.
    if f.is(Flags::SYN) && *state == SynSent {
        go(
            state,
            SynReceived,
            "its own SYN arrives in SYN-SENT: simultaneous open",
        );
    } else if f.is(Flags::SYN | Flags::ACK) && *state == SynReceived {
        go(state, Established, "its own SYN-ACK arrives");
    } else if f.has(Flags::FIN) && *state == FinWait1 {
        go(state, Closing, "its own FIN arrives: simultaneous close");
    } else if f.is(Flags::ACK) && *state == Closing {
        go(state, TimeWait, "its own ACK of the FIN arrives");
    }
    Step {
        seg: seg.clone(),
        sent_in,
        then: *state,
        transitions,
    }
}

/// `t - origin`, or zero if `t` is earlier.
pub fn since(t: SystemTime, origin: SystemTime) -> Duration {
    t.duration_since(origin).unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    /// A segment for the tests: `src -> dst`, flags, seq, ack, len, at `us`.
    pub(crate) fn seg(
        us: u64,
        src: &str,
        dst: &str,
        flags: u8,
        seq: u32,
        ack: u32,
        len: u32,
    ) -> Segment {
        Segment {
            ts: UNIX_EPOCH + Duration::from_secs(1_700_000_000) + Duration::from_micros(us),
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            flags: Flags(flags),
            seq,
            ack,
            win: 65483,
            len,
            payload: b"tcploop"[..len.min(7) as usize].to_vec(),
            options: String::new(),
            sack: None,
        }
    }

    const S: u8 = Flags::SYN;
    const A: u8 = Flags::ACK;
    const R: u8 = Flags::RST;
    const P: u8 = Flags::PSH;

    /// What a demo run on 127.0.0.1:40004 captures: two refused tries,
    /// then the loop, its data, and the RST that releases it.
    pub(crate) fn demo_run(v6: bool) -> (Vec<Segment>, SocketAddr) {
        let ip = if v6 { "[::1]" } else { "127.0.0.1" };
        let a = |p: u16| format!("{ip}:{p}");
        let t = a(40004);
        let x = 1_088_729_886u32;
        let segs = vec![
            seg(0, &a(40006), &t, S, 11, 0, 0),
            seg(9, &t, &a(40006), R | A, 0, 12, 0),
            seg(30, &a(40000), &t, S, 22, 0, 0),
            seg(38, &t, &a(40000), R | A, 0, 23, 0),
            seg(60, &t, &t, S, x, 0, 0),
            seg(66, &t, &t, S | A, x, x + 1, 0),
            seg(75, &t, &t, A, x + 1, x + 1, 0),
            seg(140, &t, &t, P | A, x + 1, x + 1, 7),
            seg(150, &t, &t, A, x + 8, x + 8, 0),
            seg(300, &t, &t, R | A, x + 8, x + 8, 0),
        ];
        (segs, t.parse().unwrap())
    }

    #[test]
    fn sorts_refused_tries_and_the_loop() {
        for v6 in [false, true] {
            let (segs, target) = demo_run(v6);
            let (story, roles) = tell(&segs, target);
            assert_eq!(story.other, 0);
            assert_eq!(
                story
                    .refused
                    .iter()
                    .map(|r| (r.port, r.answered))
                    .collect::<Vec<_>>(),
                [(40006, true), (40000, true)]
            );
            assert_eq!(
                roles[..4],
                [
                    Role::Refused(1),
                    Role::Refused(1),
                    Role::Refused(2),
                    Role::Refused(2)
                ]
            );
            assert!(roles[4..].iter().all(|r| *r == Role::Loop));
            let l = story.looped.expect("a loop");
            assert_eq!(l.socket, target);
            assert_eq!(l.isn, 1_088_729_886);
            assert!(l.same_isn());
            let hs: Vec<String> = l.handshake().iter().map(|s| s.seg.flags.name()).collect();
            assert_eq!(hs, ["SYN", "SYN-ACK", "ACK"]);
        }
    }

    #[test]
    fn walks_the_simultaneous_open_path() {
        use TcpState::*;
        let (segs, target) = demo_run(false);
        let l = tell(&segs, target).0.looped.unwrap();
        let path: Vec<(TcpState, TcpState)> = l.transitions().map(|t| (t.from, t.to)).collect();
        assert_eq!(
            path,
            [
                (Closed, SynSent),
                (SynSent, SynReceived),
                (SynReceived, Established),
                (Established, Closed)
            ]
        );
        let sent: Vec<(TcpState, TcpState)> = l.steps.iter().map(|s| (s.sent_in, s.then)).collect();
        assert_eq!(
            sent,
            [
                (SynSent, SynReceived),
                (SynReceived, Established),
                (Established, Established),
                (Established, Established),
                (Established, Established),
                (Established, Closed),
            ]
        );
        assert_eq!(l.final_state(), Closed);
    }

    #[test]
    fn two_sockets_are_no_loop() {
        // a normal connection to a listener: no segment has src == dst
        let segs = vec![
            seg(0, "127.0.0.1:40006", "127.0.0.1:40004", S, 1, 0, 0),
            seg(5, "127.0.0.1:40004", "127.0.0.1:40006", S | A, 9, 2, 0),
            seg(9, "127.0.0.1:40006", "127.0.0.1:40004", A, 2, 10, 0),
        ];
        let (story, _) = tell(&segs, "127.0.0.1:40004".parse().unwrap());
        assert!(story.looped.is_none());
        assert_eq!(story.refused.len(), 1);
        assert!(!story.refused[0].answered);
        assert_eq!(story.other, 2);
    }

    #[test]
    fn a_graceful_close_is_a_simultaneous_close() {
        use TcpState::*;
        let t = "127.0.0.1:40004";
        let x = 5u32;
        let segs = vec![
            seg(0, t, t, S, x, 0, 0),
            seg(1, t, t, S | A, x, x + 1, 0),
            seg(2, t, t, A, x + 1, x + 1, 0),
            seg(3, t, t, Flags::FIN | A, x + 1, x + 1, 0),
            seg(4, t, t, A, x + 2, x + 2, 0),
        ];
        let l = tell(&segs, t.parse().unwrap()).0.looped.unwrap();
        let tail: Vec<TcpState> = l.transitions().map(|t| t.to).skip(3).collect();
        assert_eq!(tail, [FinWait1, Closing, TimeWait]);
    }
}
