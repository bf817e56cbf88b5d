//! `tcploop check PORT...`: for each port, can a client's connect() to
//! host:port end in a self-connect here, now, and why.
//!
//! JSON Lines: one line of type `check` per port, data
//! `{"host": "127.0.0.1", "port": 40004,
//!   "verdict": "possible"|"impossible"|"listening"|"prevented"|"unknown"|"stolen",
//!   "reasons": [string], "expected_tries": number|null,
//!   "holders": [{"kind": "self-connected"|"self-connected-time-wait"|"source-port",
//!                "local": "127.0.0.1:40004", "sockets": 1,
//!                "owners": [{"pid": 31201, "command": "redis-cli", "fd": 3}], "peers": [string]}],
//!   "when_down": null|{"verdict": "possible"|..., "reasons": [string], "expected_tries": number|null}}`.
//!
//! `stolen` is the state *now*: self-connected sockets, or connections that
//! use the port as their source port, hold it, and a server's bind of
//! host:port fails (checked with a real bind, released at once). `holders`
//! names them; `when_down` is the prediction for a client while the service
//! is down and those holders are gone, kept apart. For the other verdicts
//! `holders` is empty and `when_down` null.

use std::io::Write;

use anyhow::Context;
use serde::Serialize;
use tcploop::doctor;
use tcploop::holders::Kind;
use tcploop::predict::{self, Client, Verdict};
use tcploop::report;
use tcploop::survey::Survey;

use crate::exit::Exit;

pub const AFTER_HELP: &str = "\
Verdicts: possible (with the expected number of tries), impossible (with the
reason), listening (something listens: connects succeed but are no loops),
prevented (it could loop, but `tcploop shield` is on here and turns the
self-connect into ECONNREFUSED), unknown (a fact is missing, and which),
stolen (held now by a self-connected socket or by connections using it as
their source port, so that a server's bind fails: the holders are named, and
the prediction for while the service is down is given apart). Exit code 1
when any port is possible, unknown or stolen, 0 when none can loop.

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
    pub holders: Vec<HolderOut>,
    pub when_down: Option<WhenDownOut<'a>>,
}

/// A holder of a stolen port.
#[derive(Debug, Serialize)]
pub struct HolderOut {
    pub kind: &'static str,
    pub local: String,
    pub sockets: usize,
    pub owners: Vec<OwnerOut>,
    pub peers: Vec<String>,
}

/// One process holding a socket.
#[derive(Debug, Serialize)]
pub struct OwnerOut {
    pub pid: u32,
    pub command: String,
    pub fd: i32,
}

/// The prediction while the service is down.
#[derive(Debug, Serialize)]
pub struct WhenDownOut<'a> {
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
    let keep = tcploop::ports::PortSet::from_ports(ports.iter().copied());
    let survey = Survey::take_keeping(&keep).context("reading the ephemeral-port facts")?;
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
        let mut theft = doctor::theft(&survey, &host, client, port);
        if let (Some(t), Some(how)) = (&mut theft, &shield) {
            predict::shielded(&mut t.when_down, how);
        }
        any |= matches!(p.verdict, Verdict::Possible | Verdict::Unknown) || theft.is_some();
        let hostport = report::addr(std::net::SocketAddr::new(host.effective, port));
        let mut reasons = p.reasons.clone();
        if let Some(t) = &theft {
            reasons = stolen_reasons(t, &hostport, port);
        }
        let verdict = if theft.is_some() {
            "stolen"
        } else {
            p.verdict.as_str()
        };
        let expected = if theft.is_some() {
            None
        } else {
            p.expected_tries
        };
        if args.json {
            report::json_line(
                out,
                "check",
                &CheckLine {
                    host: host.addr.to_string(),
                    port,
                    verdict,
                    reasons: &reasons,
                    expected_tries: expected,
                    holders: theft
                        .iter()
                        .flat_map(|t| t.holders.iter())
                        .map(|h| HolderOut {
                            kind: h.holder.kind.as_str(),
                            local: report::addr(h.holder.local()),
                            sockets: h.holder.sockets.len(),
                            owners: h
                                .owners
                                .iter()
                                .map(|o| OwnerOut {
                                    pid: o.pid,
                                    command: o.comm.clone(),
                                    fd: o.fd,
                                })
                                .collect(),
                            peers: h
                                .holder
                                .peers()
                                .iter()
                                .take(10)
                                .map(|a| a.to_string())
                                .collect(),
                        })
                        .collect(),
                    when_down: theft.as_ref().map(|t| WhenDownOut {
                        verdict: t.when_down.verdict.as_str(),
                        reasons: &t.when_down.reasons,
                        expected_tries: t.when_down.expected_tries,
                    }),
                },
            )?;
        } else {
            let tries = |t: Option<f64>| {
                t.map(|t| format!("  about {} tries", report::thousands(t.round() as u64)))
                    .unwrap_or_default()
            };
            writeln!(out, "{hostport}  {verdict}{}", tries(expected))?;
            for r in &reasons {
                writeln!(out, "  - {}", report::escape(r))?;
            }
            if let Some(t) = &theft {
                writeln!(
                    out,
                    "  while the service is down (these holders gone): {}{}",
                    t.when_down.verdict,
                    tries(t.when_down.expected_tries)
                )?;
                for r in &t.when_down.reasons {
                    writeln!(out, "    - {r}")?;
                }
            }
        }
    }
    Ok(if any { Exit::Found } else { Exit::Ok })
}

/// The reasons of a `stolen` verdict: who holds the port, and what a
/// server's bind says (not escaped: the text renderer escapes).
fn stolen_reasons(t: &doctor::Theft, hostport: &str, port: u16) -> Vec<String> {
    let mut v = vec![];
    for h in &t.holders {
        let who = doctor::who(&h.owners);
        let n = h.holder.sockets.len();
        v.push(match h.holder.kind {
            Kind::Loop => format!(
                "held now by a self-connected socket {} of {who}: the port is stolen",
                h.holder.local()
            ),
            Kind::LoopTimeWait => format!(
                "held now by a closed loop in TIME-WAIT on {} ({} s more)",
                h.holder.local(),
                h.holder.time_wait_left_ms().unwrap_or(0).div_ceil(1000)
            ),
            _ => format!(
                "held now by {n} connection{} of {who} using {port} as {} source port (to {})",
                if n == 1 { "" } else { "s" },
                if n == 1 { "its" } else { "their" },
                h.holder
                    .peers()
                    .iter()
                    .take(3)
                    .map(|a| a.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    let with = match t.probe.reuseaddr {
        Ok(true) => "a server that sets SO_REUSEADDR can bind it all the same",
        Ok(false) => "with SO_REUSEADDR too",
        Err(_) => "with SO_REUSEADDR: could not check",
    };
    v.push(format!(
        "a server binding {hostport} gets EADDRINUSE now ({with}); `tcploop doctor {port}` gives the fix"
    ));
    v
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
