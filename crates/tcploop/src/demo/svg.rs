//! The loop as an SVG ladder diagram: the same picture as [`super::ladder`],
//! drawn. Two lifelines carry the same address (one socket, both ends);
//! each segment is an arrow from the socket as it sends, in the state it is
//! in (left), to the socket as the segment arrives back, in the state it
//! moves to (right). Times are relative to the SYN, sequence numbers to the
//! initial sequence number x.
//!
//! Plain SVG 1.1 with inline styles, no scripts and no external fonts, so
//! any browser, image viewer or `rsvg-convert` shows it the same.

use std::fmt::Write as _;

use super::ladder::{fmt_time, label, meaning, notes};
use super::segment::Flags;
use super::story::{since, Loop, Step, TcpState};

const W: i32 = 900;
const LEFT: i32 = 270; // left lifeline
const RIGHT: i32 = 650; // right lifeline
const BOX_W: i32 = 128;
const ROW: i32 = 70;
const TOP: i32 = 172; // first row
const SLANT: i32 = 24; // how far an arrow drops while it crosses

/// Characters of a note line (13 px text across the 900 px picture).
const NOTE_CHARS: usize = 110;

/// Splits text into lines of at most `width` characters, at spaces.
fn wrap(text: &str, width: usize) -> Vec<String> {
    let mut lines: Vec<String> = vec![];
    let mut cur = String::new();
    for word in text.split_whitespace() {
        if !cur.is_empty() && cur.chars().count() + 1 + word.chars().count() > width {
            lines.push(std::mem::take(&mut cur));
        }
        if !cur.is_empty() {
            cur.push(' ');
        }
        cur.push_str(word);
    }
    if !cur.is_empty() {
        lines.push(cur);
    }
    lines
}

/// Escapes text for XML.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            c => o.push(c),
        }
    }
    o
}

/// Fill and stroke colours of a state's box.
fn state_colors(s: TcpState) -> (&'static str, &'static str) {
    match s {
        TcpState::Closed => ("#eceff1", "#78909c"),
        TcpState::SynSent => ("#fff3e0", "#ef6c00"),
        TcpState::SynReceived => ("#fce4ec", "#c2185b"),
        TcpState::Established => ("#e8f5e9", "#2e7d32"),
        _ => ("#ede7f6", "#5e35b1"),
    }
}

/// The colour of a segment's arrow: the handshake blue, data green, RST red.
fn arrow_color(step: &Step) -> &'static str {
    let f = step.seg.flags;
    if f.has(Flags::RST) {
        "#c62828"
    } else if f.has(Flags::SYN) {
        "#1565c0"
    } else if step.seg.len > 0 {
        "#2e7d32"
    } else {
        "#455a64"
    }
}

fn state_box(svg: &mut String, cx: i32, cy: i32, s: TcpState) {
    let (fill, stroke) = state_colors(s);
    let _ = write!(
        svg,
        r##"<rect x="{}" y="{}" width="{BOX_W}" height="26" rx="6" fill="{fill}" stroke="{stroke}" stroke-width="1.5"/><text x="{cx}" y="{}" text-anchor="middle" class="state" fill="{stroke}">{}</text>"##,
        cx - BOX_W / 2,
        cy - 13,
        cy + 5,
        s.as_str()
    );
    svg.push('\n');
}

/// The SVG document for a loop.
pub fn render(l: &Loop) -> String {
    let n = l.steps.len() as i32;
    let foot = TOP + n * ROW + 10;
    let note_lines: usize = notes(l).iter().map(|n| wrap(n, NOTE_CHARS).len()).sum();
    let h = foot + 40 + 20 * note_lines as i32;
    let addr = esc(&l.socket.to_string());
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r##"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="DejaVu Sans, Helvetica, Arial, sans-serif">
<title>A TCP socket connected to itself: {addr}</title>
<style>
  .title {{ font-size: 20px; font-weight: bold; fill: #212121; }}
  .sub {{ font-size: 13px; fill: #616161; }}
  .addr {{ font-size: 15px; font-weight: bold; fill: #212121; font-family: DejaVu Sans Mono, Menlo, Consolas, monospace; }}
  .role {{ font-size: 12px; fill: #757575; }}
  .state {{ font-size: 12px; font-weight: bold; font-family: DejaVu Sans Mono, Menlo, Consolas, monospace; }}
  .seg {{ font-size: 13px; font-family: DejaVu Sans Mono, Menlo, Consolas, monospace; }}
  .why {{ font-size: 11.5px; fill: #616161; font-style: italic; }}
  .time {{ font-size: 12px; fill: #616161; font-family: DejaVu Sans Mono, Menlo, Consolas, monospace; }}
  .note {{ font-size: 13px; fill: #37474f; }}
</style>
<defs>
  <marker id="head" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="8" markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" fill="context-stroke"/></marker>
</defs>
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="24" y="36" class="title">A TCP socket connected to itself</text>
<text x="24" y="58" class="sub">Captured on lo by tcploop demo: the Simultaneous Open path, one socket at both ends ({addr}).</text>"##
    );
    // Lifeline heads: the same socket twice, joined by a brace.
    for (x, role) in [(LEFT, "sends, in state"), (RIGHT, "receives, then is")] {
        let _ = writeln!(
            svg,
            r##"<rect x="{}" y="82" width="170" height="30" rx="4" fill="#fafafa" stroke="#424242" stroke-width="1.5"/><text x="{x}" y="102" text-anchor="middle" class="addr">{addr}</text><text x="{x}" y="128" text-anchor="middle" class="role">{role}</text>"##,
            x - 85
        );
    }
    let mid = (LEFT + RIGHT) / 2;
    let _ = writeln!(
        svg,
        r##"<path d="M{},97 L{},97" stroke="#9e9e9e" stroke-width="1.2" stroke-dasharray="4 4" fill="none"/><text x="{mid}" y="92" text-anchor="middle" class="role">the same socket</text>"##,
        LEFT + 85 + 8,
        RIGHT - 85 - 8
    );
    // Lifelines.
    for x in [LEFT, RIGHT] {
        let _ = writeln!(
            svg,
            r##"<line x1="{x}" y1="{}" x2="{x}" y2="{}" stroke="#424242" stroke-width="2"/>"##,
            138,
            foot - 14
        );
    }
    let start = l.start();
    state_box(&mut svg, LEFT - BOX_W / 2 - 14, TOP - 12, TcpState::Closed);
    for (i, step) in l.steps.iter().enumerate() {
        let y = TOP + i as i32 * ROW + 20;
        let y2 = y + SLANT;
        let color = arrow_color(step);
        let _ = writeln!(
            svg,
            r##"<text x="24" y="{}" class="time">{}</text>"##,
            y + 4,
            esc(&fmt_time(since(step.seg.ts, start)))
        );
        state_box(&mut svg, LEFT - BOX_W / 2 - 14, y, step.sent_in);
        state_box(&mut svg, RIGHT + BOX_W / 2 + 14, y2, step.then);
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{y}" x2="{}" y2="{y2}" stroke="{color}" stroke-width="2.2" marker-end="url(#head)"/>"##,
            RIGHT - 2
        );
        let my = (y + y2) / 2;
        let _ = writeln!(
            svg,
            r##"<text x="{mid}" y="{}" text-anchor="middle" class="seg" fill="{color}">{}</text><text x="{mid}" y="{}" text-anchor="middle" class="why">{}</text>"##,
            my - 8,
            esc(&label(&step.seg, l.isn)
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")),
            my + 20,
            esc(&meaning(step))
        );
    }
    let lines: Vec<String> = notes(l).iter().flat_map(|n| wrap(n, NOTE_CHARS)).collect();
    for (i, line) in lines.iter().enumerate() {
        let _ = writeln!(
            svg,
            r##"<text x="24" y="{}" class="note">{}</text>"##,
            foot + 22 + i as i32 * 20,
            esc(line)
        );
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::story::{tell, tests::demo_run};

    #[test]
    fn one_arrow_and_two_state_boxes_per_segment() {
        let (segs, target) = demo_run(true);
        let l = tell(&segs, target).0.looped.unwrap();
        let svg = render(&l);
        assert!(svg.starts_with("<?xml"));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("marker-end=").count(), l.steps.len());
        // one CLOSED box at the top, then two boxes a segment
        assert_eq!(svg.matches("<rect x=").count(), 2 + 1 + 2 * l.steps.len());
        for s in [
            "SYN-SENT",
            "SYN-RECEIVED",
            "ESTABLISHED",
            "CLOSED",
            "[::1]:40004",
        ] {
            assert!(svg.contains(s), "{s}");
        }
        // text is escaped: the payload's quotes
        assert!(svg.contains("&quot;tcploop&quot;"));
        assert!(!svg.contains("\"tcploop\""));
    }

    #[test]
    fn notes_wrap_to_the_picture() {
        let w = wrap("aaa bbb ccc", 7);
        assert_eq!(w, ["aaa bbb", "ccc"]);
        let (segs, target) = demo_run(false);
        let l = tell(&segs, target).0.looped.unwrap();
        for line in notes(&l).iter().flat_map(|n| wrap(n, NOTE_CHARS)) {
            assert!(line.chars().count() <= NOTE_CHARS, "{line}");
        }
    }

    #[test]
    fn escapes() {
        assert_eq!(esc(r#"<a & "b">"#), "&lt;a &amp; &quot;b&quot;&gt;");
    }
}
