//! `tcploop check PORT...`: for each port, can a client's connect() to
//! host:port end in a self-connect here, now, and why.
//!
//! JSON Lines: one line of type `check` per port, data
//! `{"host": "127.0.0.1", "port": 40004, "verdict": "possible"|"impossible"|"listening"|"prevented"|"unknown",
//!   "reasons": [string], "expected_tries": number|null}`.

use std::io::Write;

use anyhow::Context;
use serde::Serialize;
use tcploop::predict::{self, Client, Verdict};
use tcploop::report;
use tcploop::survey::Survey;

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
Verdicts: possible (with the expected number of tries), impossible (with the
reason), listening (something listens: connects succeed but are no loops),
prevented (it could loop, but `tcploop shield` is on here and turns the
self-connect into ECONNREFUSED), unknown (a fact is missing, and which). Exit code 1 when any port is possible
or unknown, 0 when none can loop.

Examples:
  tcploop check 33333             the article's port (odd: never loops on Linux 4.6+)
  tcploop check 40000-40010 --host ::1
  tcploop check 40005 --client bind-reuseaddr";

/// Arguments of `tcploop check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Ports or ranges: 40004, 40000-40010, 80,443
    #[arg(required = true, value_name = "PORT", allow_negative_numbers = true)]
    pub ports: Vec<String>,
    /// Destination address or name
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub host: String,
    /// How the client gets its source port
    #[arg(long, value_enum, default_value_t = ClientKind::Connect)]
    pub client: ClientKind,
    /// The client sets IP_LOCAL_PORT_RANGE to LO-HI (Linux 6.3+; from 6.8 without parity preference)
    #[arg(long, value_name = "LO-HI")]
    pub local_range: Option<String>,
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

/// How the client picks its source port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientKind {
    /// plain connect(), the usual client
    Connect,
    /// bind(addr, 0) then connect()
    Bind,
    /// SO_REUSEADDR, bind(addr, 0), then connect()
    BindReuseaddr,
}

/// One `check` line.
#[derive(Debug, Serialize)]
pub struct CheckLine<'a> {
    pub host: String,
    pub port: u16,
    pub verdict: &'a str,
    pub reasons: &'a [String],
    pub expected_tries: Option<f64>,
}

/// Parses `40004`, `40000-40010` and comma lists into ports, in order.
pub fn parse_port_list(items: &[String]) -> anyhow::Result<Vec<u16>> {
    let mut out = vec![];
    for item in items {
        let set = tcploop::ports::PortSet::parse(item).map_err(anyhow::Error::msg)?;
        if set.is_empty() {
            anyhow::bail!("empty port");
        }
        out.extend(set.iter());
    }
    Ok(out)
}

/// Parses `LO-HI`.
pub fn parse_range(s: &str) -> anyhow::Result<tcploop::ports::PortRange> {
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| anyhow::anyhow!("{s:?} is not a port range LO-HI"))?;
    let low = tcploop::ports::parse_port(a).map_err(anyhow::Error::msg)?;
    let high = tcploop::ports::parse_port(b).map_err(anyhow::Error::msg)?;
    anyhow::ensure!(low <= high, "backwards port range {s:?}");
    Ok(tcploop::ports::PortRange { low, high })
}

impl Args {
    fn client(&self) -> anyhow::Result<Client> {
        if let Some(r) = &self.local_range {
            return Ok(Client::LocalRange(parse_range(r)?));
        }
        Ok(match self.client {
            ClientKind::Connect => Client::Connect,
            ClientKind::Bind => Client::Bind { reuseaddr: false },
            ClientKind::BindReuseaddr => Client::Bind { reuseaddr: true },
        })
    }
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let ports = parse_port_list(&args.ports)?;
    let client = args.client()?;
    let resolved = tcploop::host::resolve(&args.host).map_err(anyhow::Error::msg)?;
    let survey = Survey::take().context("reading the ephemeral-port facts")?;
    if !args.json {
        note_resolution(out, &args.host, &resolved)?;
        if let Err(e) = &survey.inventory {
            writeln!(out, "warning: {e}: listeners and bound ports are unknown")?;
        }
    }
    let host = survey.host(resolved.addr, resolved.scope_id);
    let sit = survey.situation(&host, client);
    let shield = tcploop::shield::protection_here();
    let mut any = false;
    for port in ports {
        let mut p = predict::predict(&sit, port);
        if let Some(how) = &shield {
            predict::shielded(&mut p, how);
        }
        any |= matches!(p.verdict, Verdict::Possible | Verdict::Unknown);
        let hostport = report::addr(std::net::SocketAddr::new(host.effective, port));
        if args.json {
            report::json_line(
                out,
                "check",
                &CheckLine {
                    host: host.addr.to_string(),
                    port,
                    verdict: p.verdict.as_str(),
                    reasons: &p.reasons,
                    expected_tries: p.expected_tries,
                },
            )?;
        } else {
            let tries = p
                .expected_tries
                .map(|t| format!("  about {} tries", report::thousands(t.round() as u64)))
                .unwrap_or_default();
            writeln!(out, "{hostport}  {}{tries}", p.verdict)?;
            for r in &p.reasons {
                writeln!(out, "  - {r}")?;
            }
        }
    }
    Ok(if any { Exit::Found } else { Exit::Ok })
}

/// Says which address a name resolved to, when there was a choice.
pub fn note_resolution(
    out: &mut dyn Write,
    given: &str,
    r: &tcploop::host::Resolved,
) -> std::io::Result<()> {
    if r.all.len() > 1 {
        let others: Vec<String> = r.all[1..].iter().map(|a| a.to_string()).collect();
        writeln!(
            out,
            "{given} resolves to {} addresses; using {} (also: {})",
            r.all.len(),
            r.addr,
            others.join(", ")
        )?;
    } else if given.parse::<std::net::IpAddr>().is_err() && !given.starts_with('[') {
        writeln!(out, "{given} is {}", r.addr)?;
    }
    Ok(())
}
