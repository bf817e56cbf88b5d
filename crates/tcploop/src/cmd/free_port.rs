//! `tcploop free-port [--count N] [--host ADDR] [--json]`: ports a test
//! server can listen on without any risk of a client looping into them
//! (see [`tcploop::freeport`]).
//!
//! The output (and its JSON schema) is [`tcploop::report::free_port`].

use std::io::Write;
use std::net::IpAddr;

use tcploop::freeport;
use tcploop::report::{self, Format};

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
Why not bind(0)? A port from bind(0) lies in the ephemeral range by
definition: while the server is down (restarting between tests), a client
that reconnects can get that very port as its source port and connect to
itself, and the restarted server then fails with EADDRINUSE. These ports lie
outside net.ipv4.ip_local_port_range (or are listed in
ip_local_reserved_ports), so no connect() and no bind(0) is ever given them.

Each port is drawn at random among the safe ones, is not used by any socket
of this network namespace, and could be bound on --host when checked.

Examples:
  PORT=$(tcploop free-port)
  tcploop free-port --count 3 --json";

/// Arguments of `tcploop free-port`.
#[derive(Debug, clap::Args)]
#[command(after_help = AFTER_HELP)]
pub struct Args {
    /// How many distinct ports
    #[arg(long, short = 'n', default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=10000))]
    pub count: u16,
    /// The address the server will listen on (each port is checked by binding it)
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: IpAddr,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let found = freeport::free_ports(usize::from(args.count), args.host)?;
    report::free_port::warning(&mut std::io::stderr(), &found)?;
    report::free_port::render(out, Format::json_if(args.json), &found)?;
    Ok(Exit::Ok)
}
