//! `tcploop demo`'s output: the story of each phase in words and a ladder,
//! or JSON Lines.
//!
//! JSON Lines (`--json`), in this order for each phase (one phase, `loop`;
//! with `--odd` two: `parity`, then `held`):
//! - `packet`: every TCP segment captured, data `{"phase", "t_us" (since
//!   the phase's first segment), "src", "dst", "flags" ("SYN", "SYN-ACK",
//!   "RST-ACK"...), "seq", "ack", "len", "win", "options", "role"
//!   ("refused"|"loop"|"other"), "try" (the try's number, for refused
//!   tries; null otherwise)}`;
//! - `state`: each state change of the looped socket, right after the
//!   segment that caused it, data `{"phase", "t_us", "socket", "from", "to",
//!   "why"}` (CLOSED, SYN-SENT, SYN-RECEIVED, ESTABLISHED, ...);
//! - `result`: data `{"phase", "outcome" ("self-connect"|"no-loop"),
//!   "namespace" ("user+net"|"net"), "range", "target", "verdict",
//!   "reasons", "held" (ports held by bind()), "tries", "refused",
//!   "source_ports" (distinct, sorted), "isn", "same_isn", "handshake"
//!   (flags of the handshake segments), "echo", "port_stolen",
//!   "port_free_after", "captured", "dropped", "elapsed_s"}`; fields that do
//!   not apply are null.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use super::Format;
use crate::demo::ladder;
use crate::demo::phase::{PhaseConfig, PhaseReport};
use crate::demo::segment::Segment;
use crate::demo::story::{self, Loop, Role, Story};
use crate::ports::{Parity, PortRange};
use crate::predict::Prediction;
use crate::repro;
use crate::sandbox::Entered;

/// A `packet` line.
#[derive(Debug, Serialize)]
struct PacketLine<'a> {
    phase: &'a str,
    t_us: f64,
    src: String,
    dst: String,
    flags: String,
    seq: u32,
    ack: u32,
    len: u32,
    win: u16,
    options: &'a str,
    role: &'static str,
    #[serde(rename = "try")]
    try_: Option<usize>,
}

/// A `state` line.
#[derive(Debug, Serialize)]
struct StateLine<'a> {
    phase: &'a str,
    t_us: f64,
    socket: String,
    from: &'static str,
    to: &'static str,
    why: &'static str,
}

/// A `result` line.
#[derive(Debug, Serialize)]
struct ResultLine<'a> {
    phase: &'a str,
    outcome: &'static str,
    namespace: &'static str,
    range: String,
    target: String,
    verdict: &'static str,
    #[serde(serialize_with = "super::predict::serialize")]
    reasons: &'a [crate::predict::Reason],
    held: Vec<u16>,
    tries: u64,
    refused: usize,
    source_ports: Vec<u16>,
    isn: Option<u32>,
    same_isn: Option<bool>,
    handshake: Option<Vec<String>>,
    echo: Option<bool>,
    port_stolen: Option<bool>,
    port_free_after: Option<bool>,
    captured: usize,
    dropped: u64,
    elapsed_s: f64,
}

/// Where the demo's output goes, and what every `result` line repeats.
#[allow(missing_debug_implementations)] // a `dyn Write` has no Debug
pub struct Out<'a> {
    /// The output.
    pub w: &'a mut dyn Write,
    /// Human text or JSON Lines.
    pub format: Format,
    /// The sandbox: `user+net` or `net`.
    pub namespace: &'static str,
    /// The sandbox's port range.
    pub range: PortRange,
}

impl Out<'_> {
    fn json(&self) -> bool {
        self.format == Format::Json
    }
}

/// The opening lines: the sandbox, the range, the target (human only).
pub fn intro(o: &mut Out<'_>, entered: Entered, target: SocketAddr, odd: bool) -> io::Result<()> {
    if o.json() {
        return Ok(());
    }
    let r = o.range;
    writeln!(
        o.w,
        "tcploop demo: a TCP socket connects to itself{}\n",
        if odd { " (the parity lesson)" } else { "" }
    )?;
    let ns = match entered {
        Entered::UserAndNet => "a fresh user+net namespace with lo up (no root needed)",
        Entered::NetOnly => {
            "a fresh network namespace with lo up (as root: user namespaces are \
             unavailable here, or --netns-only)"
        }
    };
    say(o.w, "  sandbox  ", ns)?;
    say(o.w, "  range    ", &format!("ip_local_port_range {r}"))?;
    say(
        o.w,
        "  target   ",
        &format!("{}, nothing listening there", super::addr(target)),
    )?;
    Ok(())
}

/// The predictor's reasons (human only).
pub fn reasons(o: &mut Out<'_>, pred: &Prediction) -> io::Result<()> {
    if o.json() {
        return Ok(());
    }
    // The first reason is about the address (it is this host's): the
    // intro said so already.
    for (i, r) in pred.reasons.iter().skip(1).enumerate() {
        say(
            o.w,
            if i == 0 { "  why      " } else { "           " },
            &r.to_string(),
        )?;
    }
    Ok(())
}

/// The target cannot loop: said in words, or a `result` line with no tries.
pub fn cannot_loop(
    o: &mut Out<'_>,
    phase: &str,
    target: SocketAddr,
    pred: &Prediction,
) -> io::Result<()> {
    let port = target.port();
    if !o.json() {
        writeln!(o.w, "\nNo loop can happen on port {port} here.")?;
        if Parity::of(port) != o.range.connect_parity() {
            writeln!(
                o.w,
                "`tcploop demo --odd {port}` shows why, and how it loops all the same."
            )?;
        }
    }
    result_only(o, phase, target, pred)
}

/// The heading of a step of the parity lesson: 1 (the preferred parity's
/// ports free), 2 (all of them held by bind()), with the reasons.
pub fn lesson_step(
    o: &mut Out<'_>,
    step: u8,
    cfg: &PhaseConfig,
    pred: &Prediction,
) -> io::Result<()> {
    if o.json() {
        return Ok(());
    }
    let pref = o.range.connect_parity();
    let port = cfg.target.port();
    if step == 1 {
        writeln!(
            o.w,
            "\n1. With the {pref} ports free, {port} does not loop:"
        )?;
    } else {
        writeln!(
            o.w,
            "\n2. Now every {pref} port is held by bind() ({}):",
            join(&cfg.hold)
        )?;
    }
    for reason in pred.reasons.iter().skip(1) {
        say(o.w, "     ", &reason.to_string())?;
    }
    Ok(())
}

/// The closing lines: the files written (`pcap`: the file and its frame
/// count; `svg`: the file, when a loop was drawn) and the time taken
/// (human only).
pub fn done(
    o: &mut Out<'_>,
    pcap: Option<(&Path, usize)>,
    svg: Option<&Path>,
    elapsed: Duration,
) -> io::Result<()> {
    if o.json() {
        return Ok(());
    }
    let mut files = vec![];
    if let Some((p, n)) = pcap {
        files.push(format!("{} ({n} frames: tcpdump -nr {0})", p.display()));
    }
    if let Some(p) = svg {
        files.push(format!("{} (the ladder)", p.display()));
    }
    if !files.is_empty() {
        writeln!(o.w)?;
        say(o.w, "", &format!("Wrote {}.", files.join(" and ")))?;
    }
    writeln!(o.w)?;
    say(
        o.w,
        "",
        &format!(
            "Done in {} ms, namespace set-up included. The namespace ends with this \
             process: nothing is left on the host.",
            elapsed.as_millis()
        ),
    )
}

/// Renders one phase's report: its packets, states and `result` line, or
/// its story in words (`expect_loop`: the phase is meant to loop, so its
/// tries, ladder and proof are drawn; else why it did not loop).
pub fn phase(
    o: &mut Out<'_>,
    phase: &str,
    cfg: &PhaseConfig,
    rep: &PhaseReport,
    expect_loop: bool,
) -> io::Result<()> {
    let target = cfg.target;
    let held = &cfg.hold;
    let pred = &rep.prediction;
    let looped = rep.looped;
    let segs = &rep.segments;
    let (story, roles) = (&rep.story, &rep.roles);
    let cap = &rep.captured;
    let origin = segs.first().map_or(SystemTime::UNIX_EPOCH, |s| s.ts);
    if o.json() {
        emit_json(o, phase, segs, roles, story, origin)?;
    } else if expect_loop {
        show_tries(o, story, target, rep.tries, looped)?;
        if let Some(l) = &story.looped {
            show_loop(o, l)?;
        }
        if looped {
            show_proof(o, target, rep.proof)?;
        }
    } else {
        show_no_loop(o, story, rep.tries, looped)?;
    }
    if cap.stats.drops > 0 && !o.json() {
        writeln!(
            o.w,
            "  (the capture missed {} frames: the buffer was full; the counts above are low)",
            cap.stats.drops
        )?;
    }
    let ports = rep.source_ports();
    let l = story.looped.as_ref();
    let result = ResultLine {
        phase,
        outcome: if looped { "self-connect" } else { "no-loop" },
        namespace: o.namespace,
        range: o.range.to_string(),
        target: super::addr(target),
        verdict: pred.verdict.as_str(),
        reasons: &pred.reasons,
        held: held.to_vec(),
        tries: rep.tries,
        refused: story.refused.len(),
        source_ports: ports,
        isn: l.map(|l| l.isn),
        same_isn: l.map(Loop::same_isn),
        handshake: l.map(|l| l.handshake().iter().map(|s| s.seg.flags.name()).collect()),
        echo: looped.then(|| rep.proof.is_some_and(|p| p.echo)),
        port_stolen: rep.proof.map(|p| p.stolen),
        port_free_after: rep.proof.map(|p| p.freed),
        captured: segs.len(),
        dropped: cap.stats.drops,
        elapsed_s: rep.elapsed.as_secs_f64(),
    };
    if o.json() {
        super::json_line(o.w, "result", &result)?;
    }
    Ok(())
}

fn result_only(
    o: &mut Out<'_>,
    phase: &str,
    target: SocketAddr,
    pred: &Prediction,
) -> io::Result<()> {
    if !o.json() {
        return Ok(());
    }
    let r = ResultLine {
        phase,
        outcome: "no-loop",
        namespace: o.namespace,
        range: o.range.to_string(),
        target: super::addr(target),
        verdict: pred.verdict.as_str(),
        reasons: &pred.reasons,
        held: vec![],
        tries: 0,
        refused: 0,
        source_ports: vec![],
        isn: None,
        same_isn: None,
        handshake: None,
        echo: None,
        port_stolen: None,
        port_free_after: None,
        captured: 0,
        dropped: 0,
        elapsed_s: 0.0,
    };
    super::json_line(o.w, "result", &r)?;
    Ok(())
}

fn us(t: SystemTime, origin: SystemTime) -> f64 {
    (story::since(t, origin).as_secs_f64() * 1e7).round() / 10.0
}

fn emit_json(
    o: &mut Out<'_>,
    phase: &str,
    segs: &[Segment],
    roles: &[Role],
    story: &Story,
    origin: SystemTime,
) -> io::Result<()> {
    let mut steps = story.looped.iter().flat_map(|l| l.steps.iter());
    for (seg, role) in segs.iter().zip(roles) {
        super::json_line(
            o.w,
            "packet",
            &PacketLine {
                phase,
                t_us: us(seg.ts, origin),
                src: super::addr(seg.src),
                dst: super::addr(seg.dst),
                flags: seg.flags.name(),
                seq: seg.seq,
                ack: seg.ack,
                len: seg.len,
                win: seg.win,
                options: &seg.options,
                role: role.as_str(),
                try_: match role {
                    Role::Refused(n) => Some(*n),
                    _ => None,
                },
            },
        )?;
        if *role == Role::Loop {
            if let Some(step) = steps.next() {
                for t in &step.transitions {
                    super::json_line(
                        o.w,
                        "state",
                        &StateLine {
                            phase,
                            t_us: us(t.ts, origin),
                            socket: super::addr(seg.src),
                            from: t.from.as_str(),
                            to: t.to.as_str(),
                            why: t.why,
                        },
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// How many refused tries are drawn before the rest is summed up.
const SHOWN_TRIES: usize = 3;

fn show_tries(
    o: &mut Out<'_>,
    story: &Story,
    target: SocketAddr,
    tries: u64,
    looped: bool,
) -> io::Result<()> {
    let p = target.port();
    writeln!(
        o.w,
        "\nConnecting to {} until the kernel picks {p} as the source port:",
        super::addr(target)
    )?;
    let n = story.refused.len();
    for (i, r) in story.refused.iter().enumerate().take(SHOWN_TRIES) {
        let rst = if r.answered {
            format!(" ──RST──▶ {}", r.port)
        } else {
            "   (its RST was not captured)".into()
        };
        writeln!(
            o.w,
            "  try {:<4} {} ──SYN──▶ {p}{rst}   refused",
            i + 1,
            r.port
        )?;
    }
    if n > SHOWN_TRIES {
        let mut rest: Vec<u16> = story.refused[SHOWN_TRIES..]
            .iter()
            .map(|r| r.port)
            .collect();
        rest.sort_unstable();
        rest.dedup();
        writeln!(
            o.w,
            "  ... {} more refused the same way, from source port{} {}",
            n - SHOWN_TRIES,
            if rest.len() == 1 { "" } else { "s" },
            join(&rest)
        )?;
    }
    if looped {
        writeln!(
            o.w,
            "  try {tries:<4} {p} ──SYN──▶ {p}   the same port: it connects to itself"
        )?;
    } else {
        writeln!(o.w, "  No loop after {} tries.", super::thousands(tries))?;
    }
    Ok(())
}

fn show_no_loop(o: &mut Out<'_>, story: &Story, tries: u64, looped: bool) -> io::Result<()> {
    let mut ports: Vec<u16> = story.refused.iter().map(|r| r.port).collect();
    ports.sort_unstable();
    ports.dedup();
    let parities: Vec<Parity> = {
        let mut v: Vec<Parity> = ports.iter().map(|&p| Parity::of(p)).collect();
        v.dedup();
        v.sort_by_key(|p| p.as_str());
        v.dedup();
        v
    };
    let all = match parities.as_slice() {
        [one] => format!(" (all {one})"),
        _ => String::new(),
    };
    if looped {
        writeln!(o.w, "   It looped after {tries} tries (unexpected).")?;
    } else {
        say(
            o.w,
            "   ",
            &format!(
                "{} tries, all refused. Source ports the kernel picked: {}{all}.",
                super::thousands(tries),
                join(&ports)
            ),
        )?;
    }
    Ok(())
}

fn show_loop(o: &mut Out<'_>, l: &Loop) -> io::Result<()> {
    writeln!(
        o.w,
        "\nThe loop, as captured on lo: one socket, {}, is both ends.\n",
        super::addr(l.socket)
    )?;
    for line in ladder::render(l) {
        writeln!(o.w, "  {line}")?;
    }
    writeln!(o.w)?;
    for n in ladder::notes(l) {
        say(o.w, "  ", &n)?;
    }
    Ok(())
}

fn show_proof(o: &mut Out<'_>, target: SocketAddr, p: Option<repro::Proof>) -> io::Result<()> {
    let a = super::addr(target);
    writeln!(o.w, "\nProof that it is a loop:")?;
    match p.map(|p| p.echo) {
        Some(true) => writeln!(
            o.w,
            "  - it wrote \"tcploop\" and read \"tcploop\" back, on the same socket"
        )?,
        _ => writeln!(o.w, "  - it wrote \"tcploop\" but did not read it back")?,
    }
    match p.map(|p| p.stolen) {
        Some(true) => writeln!(
            o.w,
            "  - a server binding {a} gets EADDRINUSE: the port is stolen"
        )?,
        _ => writeln!(o.w, "  - a server could bind {a} (unexpected)")?,
    }
    match p.map(|p| p.freed) {
        Some(true) => writeln!(
            o.w,
            "  - released with RST (SO_LINGER 0): a server can bind {a} again"
        )?,
        _ => writeln!(o.w, "  - released, but {a} is still busy")?,
    }
    Ok(())
}

/// The width human output wraps at.
const WIDTH: usize = 78;

/// Writes `text` after `prefix`, wrapped at [`WIDTH`] with later lines
/// indented as deep as the prefix.
fn say(w: &mut dyn Write, prefix: &str, text: &str) -> std::io::Result<()> {
    let indent = prefix.chars().count();
    let mut line = prefix.to_string();
    let mut len = indent;
    let mut empty = true;
    for word in text.split_whitespace() {
        let wl = word.chars().count();
        if !empty && len + 1 + wl > WIDTH {
            writeln!(w, "{line}")?;
            line = " ".repeat(indent);
            len = indent;
            empty = true;
        }
        if !empty {
            line.push(' ');
            len += 1;
        }
        line.push_str(word);
        len += wl;
        empty = false;
    }
    writeln!(w, "{line}")
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(u16::to_string)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wraps_with_a_hanging_indent() {
        let mut v = vec![];
        let text = "word ".repeat(30);
        say(&mut v, "  why      ", &text).unwrap();
        let out = String::from_utf8(v).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines.len() > 1);
        assert!(lines.iter().all(|l| l.chars().count() <= WIDTH));
        assert!(lines[0].starts_with("  why      word"));
        assert!(lines[1].starts_with("           word"));
        assert_eq!(out.matches("word").count(), 30);
    }
}
