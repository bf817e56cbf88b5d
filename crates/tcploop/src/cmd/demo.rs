//! `tcploop demo [PORT]`: a socket connects to itself, in a throwaway
//! namespace, drawn packet by packet from a capture on `lo`.
//!
//! The process enters a fresh user+net namespace first thing (before any
//! thread exists), sets a narrow port range, then runs the reproducer of
//! `tcploop connect` while a capture thread reads every frame on `lo`.
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

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use serde::Serialize;
use tcploop::demo::segment::{self, Segment};
use tcploop::demo::session::{self, Captured};
use tcploop::demo::story::{self, Loop, Role, Story};
use tcploop::demo::{ladder, pcap, svg};
use tcploop::ports::{Parity, PortRange};
use tcploop::predict::{self, Client, Prediction, Verdict};
use tcploop::report;
use tcploop::repro::{self, Outcome, Progress, SocketMode};
use tcploop::sandbox::{Entered, Isolation, Sandbox, SandboxError};
use tcploop::survey::Survey;

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
Everything happens in a fresh user+net namespace (no root needed; as root
without user namespaces, a plain network namespace): lo up, a narrow
ip_local_port_range, nothing listening. The host's ports are never touched and
the namespace ends with the process.

The demo tries connect() to PORT until the kernel picks PORT itself as the
source port, captures every segment on lo meanwhile (AF_PACKET), and draws the
loop: one socket, both ends, through the Simultaneous Open path of the TCP
state diagram (CLOSED, SYN-SENT, SYN-RECEIVED, ESTABLISHED). Then it proves the
loop (its own bytes come back; a server gets EADDRINUSE) and releases it.

Exit codes: 0 loop shown, 1 no loop (the port cannot loop, or the try limit),
2 bad usage or an error.

Examples:
  tcploop demo                      the loop on 127.0.0.1:40004
  tcploop demo -6 --svg loop.svg    over IPv6, and the ladder as a picture
  tcploop demo --odd                the parity rule: why 40005 never loops, until...
  tcploop demo --pcap loop.pcap && tcpdump -nr loop.pcap";

/// Arguments of `tcploop demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Target port (default: the middle candidate of the parity connect()
    /// uses, 40004 for 40000-40009; with --odd, of the other parity, 40005)
    #[arg(value_parser = super::parse_port)]
    pub port: Option<u16>,
    /// ip_local_port_range inside the sandbox
    #[arg(long, default_value = "40000-40009", value_name = "LO-HI")]
    pub range: String,
    /// The parity lesson: an odd port never loops, until every even port is held by bind()
    #[arg(long)]
    pub odd: bool,
    /// IPv6: connect to [::1] instead of 127.0.0.1
    #[arg(long, short = '6')]
    pub ipv6: bool,
    /// With --odd: how many tries show that the odd port does not loop
    #[arg(long, default_value_t = 2000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub tries: u64,
    /// Give up after this many tries (a loop takes about as many tries as
    /// there are ports of the right parity)
    #[arg(long, default_value_t = 100_000, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub max_tries: u64,
    /// Write the captured segments to FILE (pcap: tcpdump -r, Wireshark)
    #[arg(long, value_name = "FILE")]
    pub pcap: Option<PathBuf>,
    /// Draw the loop's ladder diagram to FILE (SVG)
    #[arg(long, value_name = "FILE")]
    pub svg: Option<PathBuf>,
    /// Use a plain network namespace (root) instead of a user+net namespace
    #[arg(long)]
    pub netns_only: bool,
    /// JSON Lines output (packet, state, result)
    #[arg(long)]
    pub json: bool,
}

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
    reasons: &'a [String],
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

/// What the demo's outputs go to.
struct Out<'a> {
    w: &'a mut dyn Write,
    json: bool,
    namespace: &'static str,
    range: PortRange,
    /// Every frame of every phase, for --pcap.
    frames: Vec<tcploop::sys::packet::Frame>,
    /// The first loop, for --svg.
    first_loop: Option<Loop>,
}

/// The result of one phase.
struct Phase {
    looped: bool,
}

/// Runs the command. Called from `main` before any thread exists: the
/// process enters its sandbox first.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let start = Instant::now();
    let range = super::check::parse_range(&args.range)?;
    anyhow::ensure!(
        range.connect_high() > range.low,
        "the range {range} is too narrow: connect() needs at least two ports"
    );
    let ip: IpAddr = if args.ipv6 {
        Ipv6Addr::LOCALHOST.into()
    } else {
        Ipv4Addr::LOCALHOST.into()
    };
    let port = match args.port {
        Some(p) => p,
        None => default_target(range, args.odd),
    };
    anyhow::ensure!(
        range.contains(port),
        "port {port} is outside the range {range}: choose a port inside it (or another --range)"
    );
    let pref = range.connect_parity();
    anyhow::ensure!(
        !args.odd || Parity::of(port) != pref,
        "--odd needs a target of the parity connect() does not try first: {} here, since \
         the range starts at {}; {port} is {}",
        pref.other(),
        range.low,
        pref
    );
    let target = SocketAddr::new(ip, port);
    // Check the output files first, so that errors come before any work;
    // they are written at the end through safefile (never through a
    // symlink, atomically).
    for p in [&args.pcap, &args.svg].into_iter().flatten() {
        tcploop::safefile::check_writable(p)?;
    }

    anyhow::ensure!(
        !args.netns_only || tcploop::sys::ns::euid() == 0,
        "--netns-only needs root (a plain network namespace needs CAP_SYS_ADMIN); \
         without it the demo uses a user+net namespace, which needs no privilege"
    );
    let sandbox = Sandbox {
        range: Some(range),
        reserved: None,
        isolation: if args.netns_only {
            Isolation::NetNsOnly
        } else {
            Isolation::Auto
        },
    };
    let entered = match sandbox.enter() {
        Ok(e) => e,
        Err(e @ SandboxError::NoUserNs(_)) => {
            anyhow::bail!("the demo runs in a throwaway namespace, and {e}")
        }
        Err(e) => return Err(e).context("entering the demo's sandbox"),
    };
    let mut o = Out {
        w: out,
        json: args.json,
        namespace: match entered {
            Entered::UserAndNet => "user+net",
            Entered::NetOnly => "net",
        },
        range,
        frames: vec![],
        first_loop: None,
    };
    if !o.json {
        intro(&mut o, entered, target, args.odd)?;
    }

    let code = if args.odd {
        odd_lesson(&mut o, &args, target)?
    } else {
        let sit = Survey::take().context("reading the sandbox's port facts")?;
        let pred = predict_here(&sit, target);
        if !o.json {
            reasons(&mut o, &pred)?;
        }
        if pred.verdict != Verdict::Possible {
            if !o.json {
                writeln!(o.w, "\nNo loop can happen on port {port} here.")?;
                if Parity::of(port) != range.connect_parity() {
                    writeln!(
                        o.w,
                        "`tcploop demo --odd {port}` shows why, and how it loops all the same."
                    )?;
                }
            }
            result_only(&mut o, "loop", target, &pred)?;
            return Ok(Exit::Found);
        }
        let phase = attempt(&mut o, "loop", target, &pred, &[], args.max_tries, true)?;
        if phase.looped {
            Exit::Ok
        } else {
            Exit::Found
        }
    };

    if let Some(p) = &args.pcap {
        let mut buf = vec![];
        pcap::write(
            &mut buf,
            o.frames
                .iter()
                .map(|fr| (fr.ts, fr.data.as_slice(), fr.wire_len)),
        )
        .with_context(|| format!("writing {}", p.display()))?;
        tcploop::safefile::write(p, &buf, 0o644)?;
    }
    if let (Some(p), Some(l)) = (&args.svg, &o.first_loop) {
        tcploop::safefile::write(p, svg::render(l).as_bytes(), 0o644)?;
    }
    if !o.json {
        let mut files = vec![];
        if let Some(p) = &args.pcap {
            files.push(format!(
                "{} ({} frames: tcpdump -nr {0})",
                p.display(),
                o.frames.len()
            ));
        }
        if let (Some(p), Some(_)) = (&args.svg, &o.first_loop) {
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
                start.elapsed().as_millis()
            ),
        )?;
    }
    Ok(code)
}

/// The middle candidate of the parity connect() uses (or, for `odd`, of the
/// other parity).
fn default_target(range: PortRange, odd: bool) -> u16 {
    let par = if odd {
        range.connect_parity().other()
    } else {
        range.connect_parity()
    };
    let c: Vec<u16> = range
        .connect_candidates()
        .filter(|&p| Parity::of(p) == par)
        .collect();
    c.get(c.len() / 2).copied().unwrap_or(range.low)
}

fn predict_here(survey: &Survey, target: SocketAddr) -> Prediction {
    let host = survey.host(target.ip(), 0);
    let sit = survey.situation(&host, Client::Connect);
    predict::predict(&sit, target.port())
}

fn intro(o: &mut Out<'_>, entered: Entered, target: SocketAddr, odd: bool) -> anyhow::Result<()> {
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
        &format!("{}, nothing listening there", report::addr(target)),
    )?;
    Ok(())
}

fn reasons(o: &mut Out<'_>, pred: &Prediction) -> anyhow::Result<()> {
    // The first reason is about the address (it is this host's): the
    // intro said so already.
    for (i, r) in pred.reasons.iter().skip(1).enumerate() {
        say(o.w, if i == 0 { "  why      " } else { "           " }, r)?;
    }
    Ok(())
}

/// The parity lesson: the odd target with even ports free (no loop within
/// `--tries`), then with every even port held by bind() (a loop).
fn odd_lesson(o: &mut Out<'_>, args: &Args, target: SocketAddr) -> anyhow::Result<Exit> {
    let r = o.range;
    let pref = r.connect_parity();
    let port = target.port();
    let survey = Survey::take().context("reading the sandbox's port facts")?;
    let pred = predict_here(&survey, target);
    if !o.json {
        writeln!(
            o.w,
            "\n1. With the {pref} ports free, {port} does not loop:"
        )?;
        for reason in pred.reasons.iter().skip(1) {
            say(o.w, "     ", reason)?;
        }
    }
    attempt(o, "parity", target, &pred, &[], args.tries, false)?;

    let evens: Vec<u16> = r
        .connect_candidates()
        .filter(|&p| Parity::of(p) == pref)
        .collect();
    let holders = session::hold(target.ip(), evens.iter().copied())
        .context("holding the ports with bind()")?;
    let survey = Survey::take().context("reading the sandbox's port facts")?;
    let pred = predict_here(&survey, target);
    if !o.json {
        writeln!(
            o.w,
            "\n2. Now every {pref} port is held by bind() ({}):",
            join(&evens)
        )?;
        for reason in pred.reasons.iter().skip(1) {
            say(o.w, "     ", reason)?;
        }
    }
    let phase = attempt(o, "held", target, &pred, &evens, args.max_tries, true)?;
    drop(holders);
    Ok(if phase.looped { Exit::Ok } else { Exit::Found })
}

/// How the reproducer ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Got {
    Loop,
    NoLoop,
    Listener,
}

/// What the work inside the capture found.
struct Work {
    got: Got,
    tries: u64,
    elapsed: Duration,
    echo: Option<Vec<u8>>,
    stolen: Option<bool>,
    freed: Option<bool>,
}

/// One phase: the reproducer with a capture, then its story.
fn attempt(
    o: &mut Out<'_>,
    phase: &str,
    target: SocketAddr,
    pred: &Prediction,
    held: &[u16],
    max_tries: u64,
    expect_loop: bool,
) -> anyhow::Result<Phase> {
    let cfg = repro::Config {
        target,
        mode: SocketMode::Reuse,
        jobs: 1,
        max_tries: Some(max_tries),
        timeout: Some(Duration::from_secs(10)),
        reuseaddr: false,
        sample_port: false,
    };
    let (work, cap) = session::capture_while(|| -> Result<Work, repro::ReproError> {
        let rep = repro::run(&cfg, &Progress::default())?;
        let mut w = Work {
            got: Got::NoLoop,
            tries: rep.tries,
            elapsed: rep.elapsed,
            echo: None,
            stolen: None,
            freed: None,
        };
        match rep.outcome {
            Outcome::SelfConnect(sock) => {
                w.got = Got::Loop;
                w.echo = session::echo(&sock, b"tcploop").ok();
                w.stolen = Some(matches!(session::try_bind(target),
                    Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE)));
                repro::release(sock, true);
                w.freed = Some(session::try_bind(target).is_ok());
            }
            Outcome::Listener(sock) => {
                w.got = Got::Listener;
                repro::release(sock, true);
            }
            _ => {}
        }
        Ok(w)
    })
    .context("capturing on lo")?;
    let work = work?;
    let looped = work.got == Got::Loop;
    if work.got == Got::Listener {
        anyhow::bail!(
            "something answered on {} inside the sandbox: not a loop",
            report::addr(target)
        );
    }

    let segs = decode_all(&cap);
    let (story, roles) = story::tell(&segs, target);
    let origin = segs.first().map_or(SystemTime::UNIX_EPOCH, |s| s.ts);
    if o.json {
        emit_json(o, phase, &segs, &roles, &story, origin)?;
    } else if expect_loop {
        show_tries(o, &story, target, work.tries, looped)?;
        if let Some(l) = &story.looped {
            show_loop(o, l)?;
        }
        if looped {
            show_proof(o, target, &work)?;
        }
    } else {
        show_no_loop(o, &story, work.tries, looped)?;
    }
    if cap.stats.drops > 0 && !o.json {
        writeln!(
            o.w,
            "  (the capture missed {} frames: the buffer was full; the counts above are low)",
            cap.stats.drops
        )?;
    }
    let mut ports: Vec<u16> = story.refused.iter().map(|r| r.port).collect();
    if let Some(l) = &story.looped {
        ports.push(l.socket.port());
    }
    ports.sort_unstable();
    ports.dedup();
    let l = story.looped.as_ref();
    let result = ResultLine {
        phase,
        outcome: if looped { "self-connect" } else { "no-loop" },
        namespace: o.namespace,
        range: o.range.to_string(),
        target: report::addr(target),
        verdict: pred.verdict.as_str(),
        reasons: &pred.reasons,
        held: held.to_vec(),
        tries: work.tries,
        refused: story.refused.len(),
        source_ports: ports,
        isn: l.map(|l| l.isn),
        same_isn: l.map(Loop::same_isn),
        handshake: l.map(|l| l.handshake().iter().map(|s| s.seg.flags.name()).collect()),
        echo: looped.then(|| work.echo.as_deref() == Some(b"tcploop".as_slice())),
        port_stolen: work.stolen,
        port_free_after: work.freed,
        captured: segs.len(),
        dropped: cap.stats.drops,
        elapsed_s: work.elapsed.as_secs_f64(),
    };
    if o.json {
        report::json_line(o.w, "result", &result)?;
    }
    if o.first_loop.is_none() {
        o.first_loop = story.looped.clone();
    }
    o.frames.extend(cap.frames);
    Ok(Phase { looped })
}

fn decode_all(cap: &Captured) -> Vec<Segment> {
    cap.frames
        .iter()
        .filter_map(|f| segment::decode(&f.data, f.ts))
        .collect()
}

fn result_only(
    o: &mut Out<'_>,
    phase: &str,
    target: SocketAddr,
    pred: &Prediction,
) -> anyhow::Result<()> {
    if !o.json {
        return Ok(());
    }
    let r = ResultLine {
        phase,
        outcome: "no-loop",
        namespace: o.namespace,
        range: o.range.to_string(),
        target: report::addr(target),
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
    report::json_line(o.w, "result", &r)?;
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
) -> anyhow::Result<()> {
    let mut steps = story.looped.iter().flat_map(|l| l.steps.iter());
    for (seg, role) in segs.iter().zip(roles) {
        report::json_line(
            o.w,
            "packet",
            &PacketLine {
                phase,
                t_us: us(seg.ts, origin),
                src: report::addr(seg.src),
                dst: report::addr(seg.dst),
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
                    report::json_line(
                        o.w,
                        "state",
                        &StateLine {
                            phase,
                            t_us: us(t.ts, origin),
                            socket: report::addr(seg.src),
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
) -> anyhow::Result<()> {
    let p = target.port();
    writeln!(
        o.w,
        "\nConnecting to {} until the kernel picks {p} as the source port:",
        report::addr(target)
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
        writeln!(o.w, "  No loop after {} tries.", report::thousands(tries))?;
    }
    Ok(())
}

fn show_no_loop(o: &mut Out<'_>, story: &Story, tries: u64, looped: bool) -> anyhow::Result<()> {
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
                report::thousands(tries),
                join(&ports)
            ),
        )?;
    }
    Ok(())
}

fn show_loop(o: &mut Out<'_>, l: &Loop) -> anyhow::Result<()> {
    writeln!(
        o.w,
        "\nThe loop, as captured on lo: one socket, {}, is both ends.\n",
        report::addr(l.socket)
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

fn show_proof(o: &mut Out<'_>, target: SocketAddr, w: &Work) -> anyhow::Result<()> {
    let a = report::addr(target);
    writeln!(o.w, "\nProof that it is a loop:")?;
    match &w.echo {
        Some(b) if b == b"tcploop" => writeln!(
            o.w,
            "  - it wrote \"tcploop\" and read \"tcploop\" back, on the same socket"
        )?,
        Some(b) => writeln!(
            o.w,
            "  - it wrote \"tcploop\" and read {:?} back",
            String::from_utf8_lossy(b)
        )?,
        None => writeln!(o.w, "  - it wrote \"tcploop\" but read nothing back")?,
    }
    match w.stolen {
        Some(true) => writeln!(
            o.w,
            "  - a server binding {a} gets EADDRINUSE: the port is stolen"
        )?,
        _ => writeln!(o.w, "  - a server could bind {a} (unexpected)")?,
    }
    match w.freed {
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

    #[test]
    fn default_targets() {
        let r = PortRange {
            low: 40000,
            high: 40009,
        };
        assert_eq!(default_target(r, false), 40004);
        assert_eq!(default_target(r, true), 40005);
        let odd_low = PortRange {
            low: 40001,
            high: 40010,
        };
        assert_eq!(Parity::of(default_target(odd_low, false)), Parity::Odd);
    }
}
