//! `tcploop demo [PORT]`: a socket connects to itself, in a throwaway
//! namespace, drawn packet by packet from a capture on `lo`.
//!
//! The process enters a fresh user+net namespace first thing (before any
//! thread exists), sets a narrow port range, then runs the reproducer of
//! `tcploop connect` while a capture thread reads every frame on `lo`.
//!
//! The engine is [`tcploop::demo::phase::run_phase`]; the output (and its
//! JSON schema) is [`tcploop::report::demo`].

use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use tcploop::demo::phase::{run_phase, PhaseConfig, PhaseReport};
use tcploop::demo::story::Loop;
use tcploop::demo::{pcap, svg};
use tcploop::ports::{Parity, PortRange};
use tcploop::report::demo::Out;
use tcploop::report::{self, Format};
use tcploop::sandbox::{Entered, Isolation, Sandbox, SandboxError};

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
    pub range: PortRange,
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

impl Args {
    /// Parse, then resolve: the target, checked against the range (and
    /// `--odd`), the output files checked writable before any work.
    fn target(&self) -> anyhow::Result<SocketAddr> {
        let range = self.range;
        anyhow::ensure!(
            range.connect_high() > range.low,
            "the range {range} is too narrow: connect() needs at least two ports"
        );
        let ip: IpAddr = if self.ipv6 {
            Ipv6Addr::LOCALHOST.into()
        } else {
            Ipv4Addr::LOCALHOST.into()
        };
        let port = self.port.unwrap_or_else(|| default_target(range, self.odd));
        anyhow::ensure!(
            range.contains(port),
            "port {port} is outside the range {range}: choose a port inside it (or another --range)"
        );
        let pref = range.connect_parity();
        anyhow::ensure!(
            !self.odd || Parity::of(port) != pref,
            "--odd needs a target of the parity connect() does not try first: {} here, since \
             the range starts at {}; {port} is {}",
            pref.other(),
            range.low,
            pref
        );
        // Check the output files first, so that errors come before any work;
        // they are written at the end through safefile (never through a
        // symlink, atomically).
        for p in [&self.pcap, &self.svg].into_iter().flatten() {
            tcploop::safefile::check_writable(p)?;
        }
        anyhow::ensure!(
            !self.netns_only || tcploop::sandbox::is_root(),
            "--netns-only needs root (a plain network namespace needs CAP_SYS_ADMIN); \
             without it the demo uses a user+net namespace, which needs no privilege"
        );
        Ok(SocketAddr::new(ip, port))
    }

    /// Enters the demo's sandbox (this process, before any thread exists).
    fn enter(&self) -> anyhow::Result<Entered> {
        let sandbox = Sandbox {
            range: Some(self.range),
            reserved: None,
            isolation: if self.netns_only {
                Isolation::NetNsOnly
            } else {
                Isolation::Auto
            },
        };
        match sandbox.enter() {
            Ok(e) => Ok(e),
            Err(e @ SandboxError::NoUserNs(_)) => {
                anyhow::bail!("the demo runs in a throwaway namespace, and {e}")
            }
            Err(e) => Err(e).context("entering the demo's sandbox"),
        }
    }
}

/// Runs the command. Called from `main` before any thread exists: the
/// process enters its sandbox first.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let start = Instant::now();
    let target = args.target()?;
    let entered = args.enter()?;
    let range = args.range;
    let mut o = Out {
        w: out,
        format: Format::json_if(args.json),
        namespace: match entered {
            Entered::UserAndNet => "user+net",
            Entered::NetOnly => "net",
        },
        range,
    };
    report::demo::intro(&mut o, entered, target, args.odd)?;
    let mut kept = Kept::default();
    let code = if args.odd {
        odd_lesson(&mut o, &mut kept, &args, target)?
    } else {
        let cfg = PhaseConfig {
            target,
            hold: vec![],
            max_tries: args.max_tries,
            only_if_possible: true,
        };
        let rep = run_phase(&cfg)?;
        report::demo::reasons(&mut o, &rep.prediction)?;
        if !rep.tried {
            report::demo::cannot_loop(&mut o, "loop", target, &rep.prediction)?;
            return Ok(Exit::Found);
        }
        report::demo::phase(&mut o, "loop", &cfg, &rep, true)?;
        kept.keep(rep)
    };
    let svg = write_files(&args, &kept)?;
    report::demo::done(
        &mut o,
        args.pcap.as_deref().map(|p| (p, kept.frames.len())),
        svg,
        start.elapsed(),
    )?;
    Ok(code)
}

/// Writes `--pcap` and `--svg` (the first loop, if one was drawn) through
/// safefile; the SVG's path when it was written.
fn write_files<'a>(args: &'a Args, kept: &Kept) -> anyhow::Result<Option<&'a std::path::Path>> {
    if let Some(p) = &args.pcap {
        let mut buf = vec![];
        pcap::write(
            &mut buf,
            kept.frames
                .iter()
                .map(|fr| (fr.ts, fr.data.as_slice(), fr.wire_len)),
        )
        .with_context(|| format!("writing {}", p.display()))?;
        tcploop::safefile::write(p, &buf, 0o644)?;
    }
    let svg = match (&args.svg, &kept.first_loop) {
        (Some(p), Some(l)) => {
            tcploop::safefile::write(p, svg::render(l).as_bytes(), 0o644)?;
            Some(p.as_path())
        }
        _ => None,
    };
    Ok(svg)
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

/// The parity lesson: the odd target with even ports free (no loop within
/// `--tries`), then with every even port held by bind() (a loop).
fn odd_lesson(
    o: &mut Out<'_>,
    acc: &mut Kept,
    args: &Args,
    target: SocketAddr,
) -> anyhow::Result<Exit> {
    let pref = o.range.connect_parity();
    let cfg = PhaseConfig {
        target,
        hold: vec![],
        max_tries: args.tries,
        only_if_possible: false,
    };
    let rep = run_phase(&cfg)?;
    report::demo::lesson_step(o, 1, &cfg, &rep.prediction)?;
    report::demo::phase(o, "parity", &cfg, &rep, false)?;
    acc.keep(rep);
    let cfg = PhaseConfig {
        target,
        hold: o
            .range
            .connect_candidates()
            .filter(|&p| Parity::of(p) == pref)
            .collect(),
        max_tries: args.max_tries,
        only_if_possible: false,
    };
    let rep = run_phase(&cfg)?;
    report::demo::lesson_step(o, 2, &cfg, &rep.prediction)?;
    report::demo::phase(o, "held", &cfg, &rep, true)?;
    Ok(acc.keep(rep))
}

/// What the phases leave for the files: every frame (--pcap), the first
/// loop (--svg).
#[derive(Default)]
struct Kept {
    frames: Vec<tcploop::demo::session::Frame>,
    first_loop: Option<Loop>,
}

impl Kept {
    /// Keeps a phase's frames and loop; its exit code.
    fn keep(&mut self, rep: PhaseReport) -> Exit {
        if self.first_loop.is_none() {
            self.first_loop = rep.story.looped.clone();
        }
        self.frames.extend(rep.captured.frames);
        if rep.looped {
            Exit::Ok
        } else {
            Exit::Found
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
