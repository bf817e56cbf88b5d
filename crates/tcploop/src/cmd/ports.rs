//! `tcploop ports`: this network namespace's ephemeral-port facts.
//!
//! JSON Lines: one line of type `ports`, data
//! `{"kernel": "6.18.44-fc-v657" (the release as `uname -r` prints it), "range": {"low": 32768, "high": 60999}, "reserved": "8080,9000-9010",
//!   "parity_split": true, "connect_parity": "even"|"odd"|null, "bind_parity": "odd"|"even"|null,
//!   "candidates": {"even": 14116, "odd": 14116}, "top_port_unused": null|60999,
//!   "listening_in_range": [{"port": 40000, "addrs": ["0.0.0.0:40000"]}], "advice": [string]}`.

use std::io::Write;

use anyhow::Context;
use serde::Serialize;
use tcploop::ports::Parity;
use tcploop::report;
use tcploop::survey::Survey;

use crate::exit::Exit;

/// Arguments of `tcploop ports`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// JSON Lines output
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Range {
    low: u16,
    high: u16,
}

#[derive(Debug, Serialize)]
struct Candidates {
    even: usize,
    odd: usize,
}

#[derive(Debug, Serialize)]
struct Listening {
    port: u16,
    addrs: Vec<String>,
}

#[derive(Debug, Serialize)]
struct PortsLine {
    kernel: String,
    range: Range,
    reserved: String,
    parity_split: bool,
    connect_parity: Option<&'static str>,
    bind_parity: Option<&'static str>,
    candidates: Candidates,
    top_port_unused: Option<u16>,
    listening_in_range: Vec<Listening>,
    advice: Vec<String>,
}

/// Runs the command.
pub fn run(args: Args, out: &mut dyn Write) -> anyhow::Result<Exit> {
    let s = Survey::take().context("reading the ephemeral-port facts")?;
    let f = &s.facts;
    let r = f.range;
    let split = f.kernel.is_some_and(|k| k.has_parity_split());
    let cp = r.connect_parity();
    let even = f.connect_candidates(Parity::Even).count();
    let odd = f.connect_candidates(Parity::Odd).count();
    let top_unused = (r.connect_high() < r.high).then_some(r.high);
    let mut listening: Vec<Listening> = match &s.inventory {
        Ok(inv) => inv
            .listeners()
            .filter(|(p, _)| r.contains(*p) && !f.reserved.contains(*p))
            .map(|(port, addrs)| Listening {
                port,
                addrs: addrs.iter().map(|a| a.to_string()).collect(),
            })
            .collect(),
        Err(_) => vec![],
    };
    listening.sort_by_key(|l| l.port);

    let mut advice = vec![];
    if split {
        advice.push(format!(
            "plain connect() uses {cp} source ports here: a client can loop into a closed {cp} port of {r}; \
             {} ports are safe from plain connect() unless every {cp} port is taken (bind(0) and \
             IP_LOCAL_PORT_RANGE clients use them, though)",
            cp.other()
        ));
    } else {
        advice.push(format!(
            "this kernel has no parity rule: a client can loop into any closed port of {r}"
        ));
    }
    advice.push(format!(
        "give services ports below {} or above {}, or list them in net.ipv4.ip_local_reserved_ports",
        r.low, r.high
    ));
    if !listening.is_empty() {
        let ports: Vec<String> = listening.iter().map(|l| l.port.to_string()).collect();
        advice.push(format!(
            "{} listening port(s) lie in the range unreserved: {}; while such a service is down its clients \
             may loop and steal the port (see `tcploop audit`)",
            listening.len(),
            ports.join(", ")
        ));
    }
    if let Some(top) = top_unused {
        advice.push(format!(
            "the range has an odd number of ports, so connect() never uses its top port {top} \
             (the kernel warns: prefer different parity for start/end values)"
        ));
    }

    if args.json {
        report::json_line(
            out,
            "ports",
            &PortsLine {
                kernel: f.release.clone(),
                range: Range {
                    low: r.low,
                    high: r.high,
                },
                reserved: f.reserved.to_string(),
                parity_split: split,
                connect_parity: split.then_some(cp.as_str()),
                bind_parity: split.then_some(cp.other().as_str()),
                candidates: Candidates { even, odd },
                top_port_unused: top_unused,
                listening_in_range: listening,
                advice,
            },
        )?;
        return Ok(Exit::Ok);
    }
    writeln!(
        out,
        "Ephemeral ports of this network namespace (kernel {})",
        f.release
    )?;
    writeln!(
        out,
        "  ip_local_port_range      {r} ({} ports)",
        report::thousands(u64::from(r.len()))
    )?;
    let reserved = if f.reserved.is_empty() {
        "(none)".to_string()
    } else {
        f.reserved.to_string()
    };
    writeln!(out, "  ip_local_reserved_ports  {reserved}")?;
    if split {
        writeln!(
            out,
            "  connect() prefers        {cp} ports (the parity of {}; Linux 4.6+), {} of them usable;",
            r.low,
            report::thousands(if cp == Parity::Even { even } else { odd } as u64)
        )?;
        writeln!(
            out,
            "                           {} {} ports only when all {cp} ones are taken",
            report::thousands(if cp == Parity::Even { odd } else { even } as u64),
            cp.other()
        )?;
        writeln!(
            out,
            "  bind(0) prefers          {} ports (the opposite, to spare connect())",
            cp.other()
        )?;
    } else {
        writeln!(
            out,
            "  connect() parity         none (kernel before 4.6): {} candidates",
            even + odd
        )?;
    }
    match &s.inventory {
        Ok(_) if listening.is_empty() => writeln!(out, "  listening in the range   none")?,
        Ok(_) => {
            let v: Vec<String> = listening
                .iter()
                .map(|l| format!("{} ({})", l.port, l.addrs.join(" ")))
                .collect();
            writeln!(out, "  listening in the range   {}", v.join(", "))?
        }
        Err(e) => writeln!(out, "  listening in the range   unknown ({e})")?,
    }
    writeln!(out, "Advice:")?;
    for a in &advice {
        writeln!(out, "  - {a}")?;
    }
    Ok(Exit::Ok)
}
