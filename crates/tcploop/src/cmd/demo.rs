//! `tcploop demo [PORT]`: a socket connects to itself, in a throwaway
//! namespace, drawn packet by packet from a capture on `lo`.
//!
//! The engine is [`tcploop::demo::run`] (the sandbox entered first thing,
//! before any thread exists; then each phase, [`tcploop::demo::phase`]);
//! the output (and its JSON schema) is [`tcploop::report::demo`].

use std::io::Write;
use std::path::PathBuf;

use tcploop::demo::{self, DemoConfig};
use tcploop::ports::PortRange;
use tcploop::report::demo::{step, Out};
use tcploop::report::Format;

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

/// Runs the command. Called from `main` before any thread exists: the
/// process enters its sandbox first.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let cfg = DemoConfig {
        range: args.range,
        port: args.port,
        ipv6: args.ipv6,
        odd: args.odd,
        tries: args.tries,
        max_tries: args.max_tries,
        pcap: args.pcap,
        svg: args.svg,
        netns_only: args.netns_only,
    };
    let mut o = Out::new(out, Format::json_if(args.json), args.range);
    let looped = demo::run(&cfg, &mut |s| step(&mut o, &s))?;
    Ok(if looped { Exit::Ok } else { Exit::Found })
}
