//! The loop as a ladder diagram in text: one socket on both sides, each
//! segment an arrow from the socket as it sends (in the state it is in) to
//! the socket as the segment arrives back (in the state it moves to), so
//! the state on the right of one row is the state on the left of the next.
//!
//! ```text
//!           127.0.0.1:40004                                  127.0.0.1:40004
//!           sends, in state                                  receives, then is
//!           CLOSED
//!   0.0 µs  SYN-SENT      ── SYN      seq=x ───────────────▶ SYN-RECEIVED
//!   4.6 µs  SYN-RECEIVED  ── SYN-ACK  seq=x ack=x+1 ───────▶ ESTABLISHED
//!  13.8 µs  ESTABLISHED   ── ACK      seq=x+1 ack=x+1 ─────▶ ESTABLISHED
//! ```
//!
//! Sequence numbers are shown relative to the initial sequence number x.

use std::time::Duration;

use super::segment::{Flags, Segment};
use super::story::{since, Loop, Step};

/// A timestamp relative to the loop's SYN: `6.9 µs`, `1.25 ms`.
pub fn fmt_time(d: Duration) -> String {
    let us = d.as_secs_f64() * 1e6;
    if us < 999.95 {
        format!("{us:.1} µs")
    } else {
        format!("{:.2} ms", us / 1000.0)
    }
}

/// A sequence number relative to the ISN: `x`, `x+1`.
pub fn rel(n: u32, isn: u32) -> String {
    match n.wrapping_sub(isn) {
        0 => "x".into(),
        d if d < 1 << 31 => format!("x+{d}"),
        d => format!("x-{}", d.wrapping_neg()),
    }
}

/// The label on a segment's arrow: flags, seq, ack (with ACK), length.
pub fn label(seg: &Segment, isn: u32) -> String {
    let mut s = format!("{:<8} seq={}", seg.flags.name(), rel(seg.seq, isn));
    if seg.flags.has(Flags::ACK) {
        s.push_str(&format!(" ack={}", rel(seg.ack, isn)));
    }
    if seg.len > 0 {
        s.push_str(&format!(" len={}", seg.len));
    }
    s
}

/// What a segment of a loop means, in a few words.
pub fn meaning(step: &Step) -> String {
    let f = step.seg.flags;
    if f.is(Flags::SYN) {
        "its own SYN arrives: simultaneous open".into()
    } else if f.is(Flags::SYN | Flags::ACK) {
        "same ISN: it acknowledges its own SYN".into()
    } else if step.seg.len > 0 {
        let text: String = step
            .seg
            .payload
            .iter()
            .map(|&b| {
                if b.is_ascii_graphic() || b == b' ' {
                    b as char
                } else {
                    '.'
                }
            })
            .collect();
        format!("{:?}: it reads its own bytes", text)
    } else if f.has(Flags::RST) {
        "released with RST (SO_LINGER 0)".into()
    } else if f.has(Flags::FIN) {
        "close(): its own FIN comes back".into()
    } else if step.seg.sack.is_some() {
        "D-SACK: the SYN in its SYN-ACK was a duplicate".into()
    } else {
        "acknowledges itself".into()
    }
}

const STATE_W: usize = 12; // "SYN-RECEIVED"
const TIME_W: usize = 8;

/// The ladder's lines (no trailing newlines).
pub fn render(l: &Loop) -> Vec<String> {
    let start = l.start();
    let labels: Vec<String> = l.steps.iter().map(|s| label(&s.seg, l.isn)).collect();
    let label_w = labels.iter().map(|s| s.chars().count()).max().unwrap_or(0);
    let arrow_w = label_w + 6; // "── " + label + " ─▶"
    let addr = l.socket.to_string();
    let mut out = vec![];
    let left = TIME_W + 2;
    let right_col = left + STATE_W + 2 + arrow_w + 1;
    out.push(format!(
        "{:left$}{addr:<w$}{addr}",
        "",
        w = right_col - left
    ));
    out.push(format!(
        "{:left$}{:<w$}{}",
        "",
        "sends, in state",
        "receives, then is",
        w = right_col - left
    ));
    out.push(format!("{:left$}{}", "", "CLOSED"));
    for (step, lab) in l.steps.iter().zip(&labels) {
        let t = fmt_time(since(step.seg.ts, start));
        let pad = label_w - lab.chars().count();
        let line = format!(
            "{t:>TIME_W$}  {:<STATE_W$}  ── {lab} {}▶ {}",
            step.sent_in.as_str(),
            "─".repeat(pad + 1),
            step.then.as_str()
        );
        out.push(line.trim_end().to_string());
    }
    out
}

/// The notes under the ladder: the ISN, and why there are three handshake
/// segments.
pub fn notes(l: &Loop) -> Vec<String> {
    let mut v = vec![];
    if l.same_isn() {
        v.push(format!(
            "x = {}: SYN and SYN-ACK carry the same initial sequence number.",
            l.isn
        ));
    }
    let hs = l.handshake();
    let names: Vec<String> = hs.iter().map(|s| s.seg.flags.name()).collect();
    let count = match hs.len() {
        3 => "three".to_string(),
        n => n.to_string(),
    };
    v.push(format!(
        "Its own SYN reached it in SYN-SENT: the Simultaneous Open path of the TCP \
         state diagram, with one socket at both ends, so {count} handshake segments \
         ({}), not four.",
        names.join(", ")
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::story::{tell, tests::demo_run};

    #[test]
    fn relative_sequence_numbers() {
        assert_eq!(rel(100, 100), "x");
        assert_eq!(rel(101, 100), "x+1");
        assert_eq!(rel(3, u32::MAX), "x+4");
        assert_eq!(rel(99, 100), "x-1");
    }

    #[test]
    fn times() {
        assert_eq!(fmt_time(Duration::from_nanos(6_940)), "6.9 µs");
        assert_eq!(fmt_time(Duration::from_micros(12_500)), "12.50 ms");
        assert_eq!(fmt_time(Duration::from_micros(1_234)), "1.23 ms");
    }

    #[test]
    fn ladder_of_a_loop() {
        let (segs, target) = demo_run(false);
        let l = tell(&segs, target).0.looped.unwrap();
        let text = render(&l).join("\n");
        let expected = r#"          127.0.0.1:40004                                    127.0.0.1:40004
          sends, in state                                    receives, then is
          CLOSED
  0.0 µs  SYN-SENT      ── SYN      seq=x ─────────────────▶ SYN-RECEIVED
  6.0 µs  SYN-RECEIVED  ── SYN-ACK  seq=x ack=x+1 ─────────▶ ESTABLISHED
 15.0 µs  ESTABLISHED   ── ACK      seq=x+1 ack=x+1 ───────▶ ESTABLISHED
 80.0 µs  ESTABLISHED   ── PSH-ACK  seq=x+1 ack=x+1 len=7 ─▶ ESTABLISHED
 90.0 µs  ESTABLISHED   ── ACK      seq=x+8 ack=x+8 ───────▶ ESTABLISHED
240.0 µs  ESTABLISHED   ── RST-ACK  seq=x+8 ack=x+8 ───────▶ CLOSED"#;
        assert_eq!(text, expected, "\n{text}");
        assert_eq!(
            notes(&l),
            [
                "x = 1088729886: SYN and SYN-ACK carry the same initial sequence number.",
                "Its own SYN reached it in SYN-SENT: the Simultaneous Open path of the TCP \
                 state diagram, with one socket at both ends, so three handshake segments \
                 (SYN, SYN-ACK, ACK), not four."
            ]
        );
    }
}
