//! `tcploop free-port [--count N] [--host ADDR] [--json]`: ports a test
//! server can listen on without any risk of a client looping into them
//! (see [`tcploop::freeport`]).
//!
//! Text output: one port a line, so that `PORT=$(tcploop free-port)` works.
//!
//! JSON Lines: one line of type `free_port` a port, data
//! `{"port": 23817, "host": "127.0.0.1", "why": "below_range"|"above_range"|"reserved"}`,
//! then one of type `summary`, data
//! `{"count": 1, "host": "127.0.0.1", "range": {"low": 32768, "high": 60999},
//!   "reserved": "8080,9000-9010", "candidates": 36280, "in_use": 0, "unbindable": 0,
//!   "dump_error": null|string}`.

use std::io::Write;
use std::net::IpAddr;

use serde::Serialize;
use tcploop::freeport;
use tcploop::report;

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

#[derive(Debug, Serialize)]
struct PortLine {
    port: u16,
    host: String,
    why: &'static str,
}

#[derive(Debug, Serialize)]
struct Range {
    low: u16,
    high: u16,
}

#[derive(Debug, Serialize)]
struct Summary {
    count: usize,
    host: String,
    range: Range,
    reserved: String,
    candidates: usize,
    in_use: u32,
    unbindable: u32,
    dump_error: Option<String>,
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let found = freeport::free_ports(usize::from(args.count), args.host)?;
    if let Some(e) = &found.dump_error {
        eprintln!(
            "tcploop: warning: the socket dump failed ({e}); ports were checked by binding only"
        );
    }
    if !args.json {
        for p in &found.ports {
            writeln!(out, "{}", p.port)?;
        }
        return Ok(Exit::Ok);
    }
    let host = found.host.to_string();
    for p in &found.ports {
        report::json_line(
            out,
            "free_port",
            &PortLine {
                port: p.port,
                host: host.clone(),
                why: p.why.as_str(),
            },
        )?;
    }
    report::json_line(
        out,
        "summary",
        &Summary {
            count: found.ports.len(),
            host,
            range: Range {
                low: found.range.low,
                high: found.range.high,
            },
            reserved: found.reserved.to_string(),
            candidates: found.candidates,
            in_use: found.in_use,
            unbindable: found.unbindable,
            dump_error: found.dump_error.as_ref().map(|e| e.to_string()),
        },
    )?;
    Ok(Exit::Ok)
}
